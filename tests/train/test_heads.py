"""Heads on frozen features (runs.HeadRun, runs.get_or_features): the extractor stays bit-identical,
the cached features are model.penultimate, a broken feature file is rebuilt, and model(x) is
h(f(x)) so evaluation works unchanged."""
import pytest
import torch

from rtlkit import ConfigError
from rtlkit.measure.attacks import PGD
from rtlkit.train.methods.lipschitz import HeadSpec, HeadTraining, LipschitzHead, lipschitz_bound, train_head
from rtlkit.runs.specs import DataSpec, HeadRun, SourceRun
from rtlkit.runs.cache import features_path, get_or_evaluate, get_or_features, get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.train.loop import StandardTraining

from conftest import TINY

SRC = SourceRun(DataSpec("synthetic-a"), TINY, StandardTraining(epochs=1, batch_size=64, lr=0.05))
TARGET = DataSpec("synthetic-b", train_n=128, test_n=64)


def test_cached_features_are_the_penultimate_of_the_source(runs_root):
    z, y = get_or_features(SRC, TARGET, "train", progress=False)
    model = get_or_train(SRC, progress=False)
    x = HeadRun(SRC, TARGET, HeadSpec(), HeadTraining()).train_data().x.float() / 255
    with torch.no_grad():
        assert torch.equal(z, model.eval().penultimate(x))
    assert len(y) == 128 and z.shape[1] == model.feature_dim
    z2, _ = get_or_features(SRC, TARGET, "train", progress=False)     # from the cache, same bits
    assert torch.equal(z, z2)
    noisy, _ = get_or_features(SRC, TARGET, "train", progress=False, sigma=0.1, seed=1)
    assert not torch.equal(noisy, z) and features_path(SRC, TARGET, "train", 0.1, 1).is_file()


def test_a_corrupt_feature_file_is_set_aside_and_rebuilt(runs_root):
    z, _ = get_or_features(SRC, TARGET, "test", progress=False)
    path = features_path(SRC, TARGET, "test")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.warns(UserWarning, match="sha256"):
        z2, _ = get_or_features(SRC, TARGET, "test", progress=False)
    assert torch.equal(z, z2) and list(path.parent.glob("features-*.corrupt"))


@pytest.mark.parametrize("spec", [HeadSpec(layers=1, constraint="wn"), HeadSpec(layers=4, constraint="none")])
def test_head_training_leaves_the_extractor_bit_identical_and_model_is_h_of_f(runs_root, spec):
    run = HeadRun(SRC, TARGET, spec, HeadTraining(lr=1e-2, max_epochs=6))
    model = get_or_train(run, progress=False)
    src = get_or_train(SRC, progress=False)
    s0, s1 = src.state_dict(), model.state_dict()
    for k, v in s0.items():
        if not k.startswith("blocks.4.fc"):                          # the head's block: only fc is new
            assert torch.equal(v, s1[k]), f"{k} moved"
    assert isinstance(model.head.fc, LipschitzHead)
    x = run.test_data().x.float() / 255
    with torch.no_grad():
        assert torch.equal(model(x), model.head.fc(src.penultimate(x)))
    if spec.constraint == "wn":
        assert lipschitz_bound(model.head.fc) <= 1 + 1e-6
    again = get_or_train(run, progress=False)                        # cached: the same bits
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in s1.items())
    m = get_or_evaluate(run, [PGD(eps=0.1, steps=2, step_size=0.05)], progress=False)
    assert 0 <= m["robust_acc"] <= m["clean_acc"] <= 1 and run_dir(run).name.startswith("head-")


def test_train_head_keeps_its_best_checked_state_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(400, 8, generator=g), torch.randint(0, 3, (400,), generator=g)
    a, b = LipschitzHead(8, 3, constraint="none"), LipschitzHead(8, 3, constraint="none")
    b.load_state_dict(a.state_dict())
    ha = train_head(a, z, y, HeadTraining(lr=0.05, max_epochs=40, patience=4), seed=2)
    hb = train_head(b, z, y, HeadTraining(lr=0.05, max_epochs=40, patience=4), seed=2)
    assert ha == hb and all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert [h["epoch"] for h in ha][:3] == [2, 4, 6]
    vi = torch.randperm(400, generator=torch.Generator().manual_seed(2))[:40]   # its validation rows
    with torch.no_grad():
        kept = float(torch.nn.functional.cross_entropy(a(z[vi]), y[vi]))
    best = min(range(len(ha)), key=lambda i: ha[i]["val_loss"])
    assert kept == pytest.approx(ha[best]["val_loss"], rel=1e-6)       # the best checked state, not the last
    assert len(ha) - 1 - best <= 4 // 2 or ha[-1]["epoch"] == 40       # stopped after `patience` epochs without gain


@pytest.mark.parametrize("kw", [dict(lr=0), dict(val_fraction=1.0), dict(patience=0), dict(check_every=0)])
def test_bad_head_training_is_a_config_error(kw):
    with pytest.raises(ConfigError):
        HeadTraining(**kw)
