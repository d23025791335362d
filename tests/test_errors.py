"""Each bad setting is one clear ConfigError, raised before any compute."""
import pytest
import torch

from rtlkit import ConfigError, profiles, report
from rtlkit.models import WRNSpec
from rtlkit.runs import DataSpec, SourceRun, TransferRun
from rtlkit.runtime import Runtime
from rtlkit.training import AdversarialTraining, StandardTraining
from rtlkit.transfer import TransferPolicy

BAD = {
    "unknown profile": lambda: profiles.get("nope"),
    "k beyond the model": lambda: profiles.get("smoke", ks=[99]),
    "BN k beyond the model": lambda: profiles.get("quick", bn_ks=[4, 18]),
    "zero epochs": lambda: StandardTraining(epochs=0),
    "negative lr": lambda: StandardTraining(lr=-1),
    "milestone beyond training": lambda: StandardTraining(milestones=(1.5,)),
    "unknown dataset": lambda: DataSpec("nope"),
    "fraction > 1": lambda: DataSpec("synthetic-a", fraction=1.5),
    "WRN depth": lambda: WRNSpec(20, 1),
    "transfer k beyond the source": lambda: TransferRun(
        SourceRun(DataSpec("synthetic-a"), WRNSpec(10, 1), AdversarialTraining()),
        DataSpec("synthetic-b"), TransferPolicy(k=6), StandardTraining()),
    "notebook parameters": lambda: report.start("x", "smoke", ks=[0]),
    "unknown device": lambda: Runtime(device="tpu"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_setting(name, monkeypatch):
    import rtlkit.training as T
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(ConfigError):
        BAD[name]()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_clear():
    with pytest.raises(ConfigError, match="no GPU"):
        Runtime(device="cuda")


def test_fast_path_switches_itself_off_on_cpu():
    r = Runtime(device="cpu")
    assert not (r.amp or r.channels_last or r.compile)
    r = Runtime(device="cpu", amp=True, channels_last=True)
    assert r.amp and r.channels_last   # the user can still force each switch
