import os

import pytest
import torch

from rtlkit import data as D
from rtlkit.models import WRNSpec, build

TINY = WRNSpec(10, 1, stem_stride=2)  # 5 blocks

# The tests' models are tiny: one intra-op thread is fastest, and on a shared CPU it avoids
# OpenMP threads spinning while a sibling thread waits for a core (20-50x slower under load).
torch.set_num_threads(int(os.environ.get("RTLKIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own run cache and figures folder; nothing touches runs/ or figures/,
    and nothing downloads."""
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RTLKIT_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("RTLKIT_DOWNLOAD", raising=False)
    # a command's CPU-ISA pin (runtime.pin_cpu_isa writes os.environ, for the processes it starts)
    # must not leak into later tests' subprocesses
    from rtlkit.runtime import CPU_ISA_ENV, CPU_ISA_PINS
    for var in {CPU_ISA_ENV, *(k for pins in CPU_ISA_PINS.values() for k in pins)}:
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])   # recorded: restored after the test
        else:
            monkeypatch.setenv(var, "")                # recorded as absent, so removed after the test
            monkeypatch.delenv(var)
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
    """Training, model building, evaluation and data loading fail the test: a bad setting must be
    reported before any of them."""
    from rtlkit import runs
    from rtlkit import training as T

    def started(*a, **k):
        raise AssertionError("compute started before the bad setting was reported")
    for mod, name in ((T, "train"), (runs, "train"), (runs, "build"), (runs, "evaluate"), (D, "load")):
        monkeypatch.setattr(mod, name, started)
