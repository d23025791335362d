"""Each bad setting is one clear ConfigError, raised before any compute (no data loaded, no model
built, no training)."""
import pytest
import torch

from rtlkit.studies import profiles
from rtlkit.suite import session as report
from rtlkit import ConfigError
from rtlkit.core import data as D
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import AdversarialTraining, StandardTraining
from rtlkit.train.transfer import TransferPolicy


def tiny_source():
    return SourceRun(DataSpec("synthetic-a"), WRNSpec(10, 1, stem_stride=2), AdversarialTraining(epochs=1))


BAD = {
    "unknown profile": lambda: profiles.get("nope"),
    "k beyond the model": lambda: profiles.get("smoke", ks=[99]),
    "k zero": lambda: profiles.get("smoke", ks=[0]),
    "BN k beyond the model": lambda: profiles.get("quick", bn_ks=[4, 18]),
    "negative eps": lambda: profiles.get("smoke", eps=-0.1),
    "zero epochs": lambda: StandardTraining(epochs=0),
    "negative lr": lambda: StandardTraining(lr=-1),
    "zero batch": lambda: StandardTraining(batch_size=0),
    "momentum 1": lambda: StandardTraining(momentum=1.0),
    "milestone beyond training": lambda: StandardTraining(milestones=(1.5,)),
    "adversarial zero epochs": lambda: AdversarialTraining(epochs=0),
    "k = 0": lambda: TransferPolicy(k=0),
    "bn_affine": lambda: TransferPolicy(bn_affine="x"),
    "bn_stats": lambda: TransferPolicy(bn_stats="x"),
    "unknown dataset": lambda: DataSpec("nope"),
    "fraction > 1": lambda: DataSpec("synthetic-a", fraction=1.5),
    "fraction 0": lambda: DataSpec("synthetic-a", fraction=0),
    "train_n 0": lambda: DataSpec("synthetic-a", train_n=0),
    "test_n 0": lambda: DataSpec("synthetic-a", test_n=0),
    "WRN depth": lambda: WRNSpec(20, 1),
    "transfer k beyond the source": lambda: TransferRun(
        tiny_source(), DataSpec("synthetic-b"), TransferPolicy(k=6), StandardTraining()),
    "notebook parameters": lambda: report.start("x", "smoke", ks=[0]),
    "notebook profile": lambda: report.start("x", "nope"),
    "unknown device": lambda: Runtime(device="tpu"),
    "compile scope": lambda: Runtime(device="cpu", compile_scope="layers"),
    "batch size of a loader": lambda: D.Loader(D.synthetic("test", n_test=4), 0),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_setting_is_a_config_error(name, no_compute):
    with pytest.raises(ConfigError) as e:
        BAD[name]()
    assert str(e.value)                     # it says what is wrong


def test_messages_name_the_bad_value():
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        profiles.get("nope")
    with pytest.raises(ConfigError, match="k=99"):
        profiles.get("smoke", ks=[99])
    with pytest.raises(ConfigError, match="k=6 but the model has only 5 blocks"):
        BAD["transfer k beyond the source"]()
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        DataSpec("nope")


def test_good_settings_pass(no_compute):
    """The same constructors accept good values (so the errors above are about the values)."""
    profiles.get("smoke", ks=[1, 5, "all"])
    StandardTraining(epochs=1, lr=0.01)
    TransferPolicy(k=5, bn_stats="update", bn_affine="train")
    DataSpec("synthetic-a", fraction=1.0)
    TransferRun(tiny_source(), DataSpec("synthetic-b"), TransferPolicy(k=5), StandardTraining())
    Runtime(device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no GPU"):
        Runtime(device="cuda")


def test_fast_path_switches_itself_off_on_cpu():
    r = Runtime(device="cpu")
    assert not (r.amp or r.channels_last or r.compile)
    r = Runtime(device="cpu", amp=True, channels_last=True)
    assert r.amp and r.channels_last and not r.compile   # the user can still force each switch


def test_a_smoke_run_never_replaces_the_committed_figures():
    from rtlkit.suite import session as report
    from rtlkit.core.data import REPO_ROOT
    assert report.default_figures_dir("quick") == report.default_figures_dir("full") == REPO_ROOT / "figures"
    assert report.default_figures_dir("smoke") == REPO_ROOT / "figures" / "smoke"
