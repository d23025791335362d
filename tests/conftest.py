import json
import os

import pytest
import torch
from filelock import FileLock

from rtlkit.core import data as D
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.core.models import build

TINY = WRNSpec(10, 1, stem_stride=2)  # 5 blocks

# The tests' models are tiny: one intra-op thread is fastest, and on a shared CPU it avoids
# OpenMP threads spinning while a sibling thread waits for a core (20-50x slower under load).
torch.set_num_threads(int(os.environ.get("RTLKIT_TEST_THREADS", "1")))


# The longest files first, so that pytest-xdist (make test: -n auto --dist loadfile
# --no-loadscope-reorder) starts them while the short ones fill the other workers. xdist hands each
# worker one file, then a second: worker 1 gets the paper dry run (one test, minutes) and a short
# file, worker 2 the smoke suite's notebooks and then the browser test, which reads the smoke
# suite's cache (smoke_suite below) and so would only wait for it on another worker.
# Without xdist the order changes nothing.
LONGEST_FIRST = ("tests/studies/test_paper_dry.py", "tests/studies/test_notebooks.py", "tests/repo/test_lock.py",
                 "tests/studies/test_browser.py")


def pytest_collection_modifyitems(config, items):
    rank = {f: i for i, f in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(it.nodeid.split("::")[0], len(rank)))   # stable: the rest keep their order


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own run cache and figures folder; nothing touches runs/ or figures/,
    and nothing downloads."""
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RTLKIT_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("RTLKIT_DOWNLOAD", raising=False)
    # a command's CPU-ISA pin (runtime.pin_cpu_isa writes os.environ, for the processes it starts)
    # must not leak into later tests' subprocesses
    from rtlkit.core.runtime import CPU_ISA_ENV, CPU_ISA_PINS
    for var in {CPU_ISA_ENV, *(k for pins in CPU_ISA_PINS.values() for k in pins)}:
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])   # recorded: restored after the test
        else:
            monkeypatch.setenv(var, "")                # recorded as absent, so removed after the test
            monkeypatch.delenv(var)
    # the portable mode switches oneDNN off in-process: restored for the next test
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)
    torch.manual_seed(0)


@pytest.fixture
def runs_root(tmp_path):
    """The run cache of this test (what RTLKIT_RUNS points at)."""
    return tmp_path / "runs"


@pytest.fixture
def syn():
    return D.synthetic("train", seed=3, n_train=256, size=12, noise=0.3)


def tiny_model(classes=4, seed=0):
    torch.manual_seed(seed)
    return build(TINY, classes, 1, (0.5,), (0.25,))


def state_of(module):
    """A detached copy of a module's state_dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture
def no_compute(monkeypatch):
    """Any compute fails the test: a bad setting must be reported before it. Not a list of entry
    points that a new code path could go round: every forward pass of any module (torch's own
    ``Module.__call__``), every optimizer step, every training and evaluation loop, every model
    built from a spec and every dataset loaded."""
    from rtlkit.measure import evaluate as E
    from rtlkit.runs import cache as runs
    from rtlkit.runs import specs
    from rtlkit.train import loop as T

    def started(*a, **k):
        raise AssertionError("compute started before the bad setting was reported")
    for mod, name in ((T, "train"), (runs, "train"), (specs, "build"), (runs, "evaluate"), (E, "evaluate"),
                      (D, "load"), (torch.nn.Module, "__call__"), (torch.optim.Optimizer, "step")):
        monkeypatch.setattr(mod, name, started)


# ---------------------------------------------------------------- the smoke suite, once per session
# The smoke suite, executed once per test session and shared: test_notebooks checks what it wrote,
# and the browser test starts JupyterLab on a copy of its run cache (it tests the notebooks as a
# person meets them, not the training a second time). Under pytest-xdist the workers share one
# folder and a file lock: the first to ask runs the suite, the others wait for it and read it.


@pytest.fixture(scope="session")
def smoke_suite(tmp_path_factory, worker_id):   # worker_id: pytest-xdist's ("master" without -n)
    from rtlkit.suite import figures
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent            # the folder every xdist worker's basetemp lies in
    root = shared / "smoke-suite"
    done = root / "times.json"
    with FileLock(str(shared / "smoke-suite.lock")):
        if not done.exists():
            root.mkdir(parents=True, exist_ok=True)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("RTLKIT_RUNS", str(root / "runs"))
                mp.setenv("RTLKIT_FIGURES", str(root / "figs"))
                mp.delenv("RTLKIT_DOWNLOAD", raising=False)
                times = figures.run("smoke", figures_dir=str(root / "figs"), out_dir=str(root / "executed"))
            done.write_text(json.dumps(times))
    return {"runs": root / "runs", "figs": root / "figs", "times": json.loads(done.read_text())}
