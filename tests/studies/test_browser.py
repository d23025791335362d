"""The notebooks as a person meets them: JupyterLab in a real (headless) Chromium, every notebook at
`smoke` run from the Run menu, then its widget panel used control by control.

Debian's chromium (`make setup` installs it when root) driven by playwright (pinned); playwright's
own browser download is never used. Skipped, with the reason, where either is missing. JupyterLab
runs from the project's venv on 127.0.0.1, a free port and a token, with its own copy of the smoke
suite's run cache (what `make figures` leaves a person: the cells read it), its own figures
and Jupyter folders under the test's tmp dir, and is stopped by its pid, pass or fail. Screenshots
of every panel are saved under the tmp dir (and, with RTLKIT_SCREENSHOTS=<dir>, copied there: how
docs/ got its pictures).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from rtlkit.suite import figures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JUPYTER = Path(sys.executable).with_name("jupyter")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (make setup does, as root)"),
    pytest.mark.skipif(not JUPYTER.exists(), reason="no jupyter beside this python (make setup installs jupyterlab)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt pins it)")

BOOKS = figures.notebooks(["00"]) + figures.notebooks()   # 00 on its defaults: the smoke source and target
BROKEN = '''import ipywidgets as W
out = W.Output()
pick = W.SelectMultiple(options=["a", "b"], value=("a", "b"), rows=2)
def redraw(*_):
    with out:
        out.clear_output()
        if len(pick.value) < 2:
            raise IndexError("a panel callback that raises")
        print("both picked")
pick.observe(redraw, "value")
redraw()
W.VBox([W.HBox([pick]), out])'''


NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"   # the notebook in view


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _smoke_copy(book: Path, dest: Path) -> None:
    """The notebook with `profile = "smoke"` injected after its parameters cell, as papermill does."""
    nb = nbformat.read(book, as_version=4)
    i = next(k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell('profile = "smoke"  # injected by the browser test'))
    nbformat.write(nb, dest)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, smoke_suite):
    tmp = tmp_path_factory.mktemp("lab")
    # the smoke suite's run cache (tests/studies/conftest.py): the kernels find every run trained
    shutil.copytree(smoke_suite["runs"], tmp / "runs", ignore=shutil.ignore_patterns(".locks", "notebooks"))
    nbdir = tmp / "notebooks"
    nbdir.mkdir()
    for book in BOOKS:
        _smoke_copy(book, nbdir / book.name)
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(BROKEN)], metadata=kernel),
                   nbdir / "99_broken_self_check.ipynb")
    settings = tmp / "jupyter-config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)   # no "news?" pop-up over the panels
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), "rtlkit-browser-test"
    env = dict(os.environ, RTLKIT_RUNS=str(tmp / "runs"), RTLKIT_FIGURES=str(tmp / "figures"),
               JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"), JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"), IPYTHONDIR=str(tmp / "ipython"),
               RTLKIT_THREADS=os.environ.get("RTLKIT_THREADS", "1"))
    env.pop("MPLBACKEND", None)   # CI sets Agg for headless tests; a person's JupyterLab draws inline
    log = open(tmp / "jupyterlab.log", "w")
    proc = subprocess.Popen([str(JUPYTER), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}", "--allow-root"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: see {tmp / 'jupyterlab.log'}")
                time.sleep(0.5)
        with playwright.sync_playwright() as pw:
            args = ["--disable-dev-shm-usage"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
            yield {"browser": browser, "url": f"http://127.0.0.1:{port}/lab", "token": token, "tmp": tmp}
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)    # JupyterLab and its kernels, by the process group of its pid
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _errors(page) -> list[str]:
    """Tracebacks shown anywhere in the notebook, widget outputs included."""
    texts = page.eval_on_selector_all(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                      "els => els.map(e => e.textContent)")
    return [t for t in texts if "Traceback (most recent call last)" in t]


def _open_and_run_all(lab, name: str, timeout_s: float = 240):
    page = lab["browser"].new_page(viewport={"width": 1400, "height": 2200})   # tall: whole panels in view
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(str(e)))
    # a fresh workspace per notebook: JupyterLab would otherwise reopen the last one's tabs beside it
    page.goto(f"{lab['url']}/workspaces/{Path(name).stem}/tree/{name}?token={lab['token']}&reset")
    page.wait_for_selector(f"{NB} .jp-Cell", timeout=60_000)
    page.wait_for_function("() => document.querySelector('.jp-StatusBar-Widget') && "
                           "document.querySelector('#jp-main-statusbar').innerText.includes('Idle')", timeout=90_000)

    def prompts():
        return page.eval_on_selector_all(f"{NB} .jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent)")
    for _ in range(3):    # the Run menu, as a person would; again if the click landed before the page settled
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        started = time.time()
        while time.time() - started < 20 and all(p.strip() in ("", "[ ]:") for p in prompts()):
            time.sleep(0.5)
        if not all(p.strip() in ("", "[ ]:") for p in prompts()):
            break
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = prompts()
        if now and all(p.strip().startswith("[") and p.strip()[1:-2].isdigit() for p in now):
            break
        time.sleep(1)
    else:
        pytest.fail(f"{name}: not every cell ran within {timeout_s:.0f} s: {now}")
    return page, console


def _plot_state(panel) -> str:
    """What the panel's plot shows now: its images' sources, or its text."""
    return panel.evaluate("el => Array.from(el.querySelectorAll('img')).map(i => i.src.slice(-200)).join('|')"
                          " + el.innerText")   # one read: the plot may be redrawing


def _wait_change(panel, before: str, what: str, timeout_s: float = 90) -> str:
    """The panel's new state once it differs from ``before``; a traceback anywhere fails at once."""
    deadline, last = time.time() + timeout_s, before
    while time.time() < deadline:
        errors = _errors(panel.page)
        if errors:
            pytest.fail(f"a traceback after {what}: {errors[0][-400:]}")
        now = _plot_state(panel)
        if now != before and now == last:   # changed, and settled for one more read
            return now
        last = now
        time.sleep(0.5)
    pytest.fail(f"the plot did not change within {timeout_s:.0f} s after {what}; the panel reads: "
                f"{panel.inner_text()[-600:]!r}")


def _use_panel(page, name: str, shots: Path) -> None:
    cells = page.locator(f"{NB} .jp-CodeCell")
    calls = cells.filter(has=page.locator(".jp-InputArea", has_text="panel("))   # the cell that calls the panel
    last = calls.last if calls.count() else cells.last   # (the findings cell comes after it in the studies)
    outputs = last.locator(".jp-Cell-outputArea > .jp-OutputArea-child")   # the cell's own outputs, not the panel's
    assert outputs.count() == 1, f"{name}: the panel is shown {outputs.count()} times"
    panel = outputs.first
    panel.scroll_into_view_if_needed()
    shots.mkdir(parents=True, exist_ok=True)
    panel.screenshot(path=str(shots / f"{Path(name).stem}_panel.png"))
    if not name.startswith("99_"):
        assert panel.locator("img").count() >= 1, f"{name}: the panel shows no plot (is the kernel drawing inline?)"
    state = _plot_state(panel)
    multis = panel.locator("select[multiple]")
    singles = panel.locator("select:not([multiple])")
    boxes = panel.locator("input[type=checkbox]")
    for i in range(singles.count()):       # dropdowns: pick another option
        sel = singles.nth(i)
        n, now = sel.evaluate("s => [s.options.length, s.selectedIndex]")
        if n > 1:
            sel.select_option(index=(now + 1) % n)
            state = _wait_change(panel, state, f"{name}: dropdown {i} -> option {(now + 1) % n}")
    for i in range(boxes.count()):
        if boxes.nth(i).is_enabled():
            boxes.nth(i).click()
            state = _wait_change(panel, state, f"{name}: checkbox {i}")
    for i in range(multis.count()):        # multi-selects: keep one option, then none
        sel = multis.nth(i)
        first = sel.locator("option").first.get_attribute("value")
        if sel.locator("option").count() > 1:
            sel.select_option([first])
            state = _wait_change(panel, state, f"{name}: multi-select {i} -> one option")
        sel.select_option([])
        deadline = time.time() + 30
        while "Nothing selected" not in _plot_state(panel) and time.time() < deadline and not _errors(page):
            time.sleep(0.3)
        if _errors(page):
            pytest.fail(f"a traceback after {name}: multi-select {i} -> nothing: {_errors(page)[0][-400:]}")
        assert "Nothing selected" in _plot_state(panel), f"{name}: an empty selection gave no readable line"
        state = _plot_state(panel)
        assert not _errors(page), f"{name}: {_errors(page)[0][:400]}"
        options = sel.locator("option").evaluate_all("os => os.map(o => o.value)")
        sel.select_option(options)
        state = _wait_change(panel, state, f"{name}: multi-select {i} -> everything")
    panel.screenshot(path=str(shots / f"{Path(name).stem}_panel_used.png"))
    keep = os.environ.get("RTLKIT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / f"{Path(name).stem}_panel.png", Path(keep) / f"{Path(name).stem}_panel.png")


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_each_notebook_runs_from_the_run_menu_and_its_panel_works(lab, book):
    page, console = _open_and_run_all(lab, book.name)
    try:
        assert not _errors(page), f"{book.name}: {_errors(page)[0][:600]}"
        _use_panel(page, book.name, lab["tmp"] / "screenshots")
        assert not _errors(page), f"{book.name}: {_errors(page)[0][:600]}"
        assert not console, f"{book.name}: browser console errors: {console[:3]}"
    finally:
        page.close()


def test_the_checker_catches_a_panel_callback_that_raises(lab):
    """Self-check: the same checks fail on a panel whose callback raises (the traceback lands inside
    the panel, where the 01 IndexError used to)."""
    page, _ = _open_and_run_all(lab, "99_broken_self_check.ipynb", timeout_s=60)
    try:
        assert not _errors(page)
        with pytest.raises(pytest.fail.Exception, match="a traceback after"):
            _use_panel(page, "99_broken_self_check.ipynb", lab["tmp"] / "screenshots")
        assert _errors(page) and "a panel callback that raises" in _errors(page)[0]
    finally:
        page.close()
