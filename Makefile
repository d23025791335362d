# Two commands do all the set-up on a fresh machine:
#   make figures   regenerate figures/ at the default profile (full on a GPU, quick on the CPU)
#   make test      run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
STAMP := $(VENV)/.rtlkit-installed

.PHONY: setup figures test clean-runs

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@# offline Fashion-MNIST from Debian, where apt is usable (root); harmless elsewhere
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: could not apt-get install dataset-fashion-mnist; see data/README.md"; fi
	@# Debian's chromium for the JupyterLab browser test (tests/studies/test_browser.py), the same way
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "note: could not apt-get install chromium; the browser test will be skipped"; \
	elif ! command -v chromium >/dev/null; then \
	  echo "note: no chromium (apt-get install chromium as root); the browser test will be skipped"; fi
	touch $(STAMP)

figures: setup
	$(PY) -m rtlkit.figures --profile $(PROFILE)

test: setup
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing, since nothing was checked"; exit 1; fi; \
	exit $$rc

clean-runs:
	rm -rf runs/
