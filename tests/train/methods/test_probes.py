"""Probes and MLP heads on a frozen extractor (Shafahi et al.; methods.probes, runs.HeadRun): the
extractor never moves, a probe on cached features is k = 1 fine-tuning on images, the fold of a
standardisation is exact, and every bad setting is a ConfigError before compute."""
import dataclasses

import pytest
import torch

from rtlkit.studies import profiles
from rtlkit.suite import session as report
from rtlkit.runs import cache as runs
from rtlkit import ConfigError
from rtlkit.train.methods.lwf import LwFTraining, lwf_distance
from rtlkit.train.methods.probes import ProbeHead, ProbeTraining, fold
from rtlkit.runs.specs import DataSpec, HeadRun, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_features, get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.studies import shafahi as S
from rtlkit.train.loop import StandardTraining
from rtlkit.train.transfer import TransferPolicy

from conftest import TINY

SRC = SourceRun(DataSpec("synthetic-a"), TINY, StandardTraining(epochs=1, batch_size=64, lr=0.05))
TARGET = DataSpec("synthetic-b", train_n=160, test_n=64)


@pytest.mark.parametrize("head", [ProbeHead(), ProbeHead(hidden=2), ProbeHead(hidden=2, bn=True, dropout=0.25)])
def test_probe_training_leaves_every_tensor_outside_the_head_bit_identical(runs_root, head):
    run = HeadRun(SRC, TARGET, head, ProbeTraining(epochs=3, batch_size=32))
    model, src = get_or_train(run, progress=False), get_or_train(SRC, progress=False)
    s0, s1 = src.state_dict(), model.state_dict()
    outside = [k for k in s0 if not k.startswith("blocks.4.fc")]
    assert outside and all(torch.equal(s0[k], s1[k]) for k in outside)      # BN buffers included
    moved = [k for k in s1 if k.startswith("blocks.4.fc") and "running" not in k and "num_batches" not in k]
    fresh = head.build(model.feature_dim, 4, 0).state_dict()
    assert any(not torch.equal(s1[k], fresh[k[len("blocks.4.fc."):]]) for k in moved)   # the head trained
    if head.bn:   # the head's own BatchNorm trained (its running statistics moved)
        assert any("running_mean" in k and not torch.equal(s1[k], torch.zeros_like(s1[k])) for k in s1)
    x = run.test_data().x[:8].float() / 255
    with torch.no_grad():
        assert torch.equal(model(x), model(x))                              # dropout is off in evaluation
        assert torch.allclose(model(x), model.head.fc(src.penultimate(x)), atol=1e-6)


def test_cached_features_of_a_per_class_subset_follow_its_index_map(runs_root):
    spec = dataclasses.replace(TARGET, per_class=10)
    z, y = get_or_features(SRC, spec, "train", progress=False)
    d = runs.shaped_for(SRC, spec.train())
    model = get_or_train(SRC, progress=False).eval()
    with torch.no_grad():
        assert torch.equal(z, model.penultimate(d.x.float() / 255))
    assert torch.equal(y, d.y) and torch.bincount(y).tolist() == [10] * 4
    full, _ = get_or_features(SRC, TARGET, "train", progress=False)
    pos = {int(i): k for k, i in enumerate(runs.shaped_for(SRC, TARGET.train()).index)}
    rows = torch.tensor([pos[int(i)] for i in d.index])
    assert torch.allclose(z, full[rows], atol=1e-6)                            # the same images' features


def test_a_probe_on_cached_features_is_k1_fine_tuning_on_images(runs_root):
    method = ProbeTraining(epochs=3, batch_size=32, standardise=False)
    probe = get_or_train(HeadRun(SRC, TARGET, ProbeHead(), method, seed=5), progress=False)
    plain = StandardTraining(**{f.name: getattr(method, f.name) for f in dataclasses.fields(StandardTraining)})
    ft = get_or_train(TransferRun(SRC, TARGET, TransferPolicy(k=1), plain, seed=5), progress=False)
    a, b = probe.head.fc.state_dict(), ft.head.fc.state_dict()
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not torch.equal(a["weight"], ProbeHead().build(probe.feature_dim, 4, 5).weight)


def test_folding_a_standardisation_into_the_first_layer_is_exact():
    torch.manual_seed(0)
    z = torch.randn(50, 6) * 3 + 2
    head = ProbeHead(hidden=1, width=5).build(6, 3, 1)
    mu, sd = z.mean(0), z.std(0)
    with torch.no_grad():
        want = head((z - mu) / sd)
        fold(head, mu, sd)
        assert torch.allclose(head(z), want, atol=1e-5)


def test_a_repeated_config_is_a_cache_hit_and_n_depth_and_source_kind_are_new_runs(runs_root):
    P = profiles.get("smoke")
    a, b = S.probe_run(P, "robust", P.target), S.probe_run(P, "robust", P.target)
    assert a == b and run_dir(a) == run_dir(b)
    keys = {run_dir(r).name for r in (a, S.probe_run(P, "natural", P.target), S.probe_run(P, "robust", P.target, hidden=1),
                                      S.probe_run(P, "robust", dataclasses.replace(P.target, per_class=4)))}
    assert len(keys) == 4
    get_or_train(a, progress=False)
    marker = run_dir(a) / "complete.json"
    stamp = marker.stat().st_mtime_ns
    get_or_train(b, progress=False)
    assert marker.stat().st_mtime_ns == stamp                                  # served, not retrained
    assert S.source_run(P, "robust") == P.source_run()                         # 01-03's source
    nat = S.source_run(P, "natural")
    assert type(nat.method) is StandardTraining and nat.method.epochs == P.source_method.epochs


def test_lwf_l1_distance_by_hand_and_the_new_defaults_keep_notebook_03s_runs():
    z, z0 = torch.tensor([[1.0, -2.0], [0.5, 0.5]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert float(lwf_distance(z, z0, "l1")) == pytest.approx(((1 + 2) + (0.5 + 0.5)) / 2)
    assert float(lwf_distance(z, z0)) == pytest.approx((5 ** 0.5 + 0.5 ** 0.5) / 2)
    assert LwFTraining().lr == 0.001 and LwFTraining().weight_decay == 2e-4
    P = profiles.get("quick", gpu=False)
    from rtlkit.studies.cartl import method_run
    run, _ = method_run(P, "LwF", "all", 0, lam_d=0.01)
    assert run.method.lr == 0.01 and run.method.weight_decay == 5e-4         # what 03 always ran
    with pytest.raises(ConfigError, match="distance"):
        LwFTraining(distance="l3")


BAD = {
    "hidden < 0": lambda: ProbeHead(hidden=-1),
    "width 0": lambda: ProbeHead(hidden=1, width=0),
    "dropout 1": lambda: ProbeHead(dropout=1.0),
    "per_class 0": lambda: DataSpec("synthetic-a", per_class=0),
    "per_class 0 in the grid": lambda: profiles.get("smoke", per_class=[0, 4]),
    "empty N list": lambda: profiles.get("smoke", per_class=[]),
    "empty depth list": lambda: profiles.get("smoke", depths=[]),
    "negative depth": lambda: profiles.get("smoke", depths=[0, -1]),
    "unknown source kind": lambda: S.source_run(profiles.get("smoke"), "adversarial"),
    "a probe with augmentation": lambda: ProbeTraining(augment=True),
    "a probe with k = 2": lambda: ProbeTraining(k=2),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_notebook_06_settings_are_config_errors_before_compute(name, no_compute):
    with pytest.raises(ConfigError):
        BAD[name]()


def test_data_dependent_settings_fail_at_start_before_any_training(monkeypatch):
    def started(*a, **k):
        raise AssertionError("training started before the bad setting was reported")
    monkeypatch.setattr(runs, "train", started)
    with pytest.raises(ConfigError, match=r"class \d+ .* has only 64"):
        report.start("06_shafahi", "smoke", per_class=[4, 500])
    with pytest.raises(ConfigError, match="grad_images"):
        report.start("06_shafahi", "smoke", grad_images=10 ** 6)
