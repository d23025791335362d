# Two commands do all the set-up on a fresh machine:
#   make figures   regenerate figures/ at the default profile (full on a GPU, quick on the CPU)
#   make test      run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
STAMP := $(VENV)/.rtlkit-installed

.PHONY: setup figures test lock clean-runs
UV_VERSION ?= 0.13.9

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# exact versions and sha256 hashes of every package (requirements.lock, from requirements.txt by `make lock`)
	$(PY) -m pip install -q --require-hashes -r requirements.lock
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
	$(PY) -m rtlkit.suite.figures --profile $(PROFILE)

# the test files on every core (pytest-xdist, a file per worker: a file's module fixtures stay in one
# process; the longest files first, tests/conftest.py), each worker and every notebook kernel it
# starts on one thread (no oversubscription)
TEST_JOBS ?= auto
test: setup
	@RTLKIT_THREADS=$${RTLKIT_THREADS:-1} $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder --durations=25; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing, since nothing was checked"; exit 1; fi; \
	exit $$rc

# requirements.txt -> requirements.lock: every dependency, transitive ones too, at exact versions with
# their hashes, for every platform and Python >= 3.11 (uv's universal resolution; uv itself pinned)
lock: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile requirements.txt --universal --python-version 3.11 --generate-hashes \
	  --no-header --quiet -o requirements.lock

clean-runs:
	rm -rf runs/
