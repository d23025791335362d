"""Notebook 05 (Provably Robust Transfer): settings, cached noisy features and per-example tables,
and the certification pieces the study composes, each checked against what it must equal."""
import dataclasses

import pandas as pd
import pytest
import torch

from rtlkit.studies import profiles
from rtlkit.suite import session as report
from rtlkit.runs import cache as runs
from rtlkit import ConfigError
from rtlkit.train.methods.lipschitz import HeadSpec, HeadTraining, train_head
from rtlkit.runs.specs import DataSpec, HeadRun, NoisyDraws, SourceRun, tapped
from rtlkit.runs.cache import get_or_features, get_or_noisy_features, get_or_table, get_or_train, noisy_features_path, table_path
from rtlkit.measure.smoothing import median_certify_logits, median_certify_representation, median_radius_limit, sorted_draws
from rtlkit.studies import provable as S
from rtlkit.train.loop import StandardTraining

from conftest import TINY

SRC = SourceRun(DataSpec("synthetic-a"), TINY, StandardTraining(epochs=1, batch_size=64, lr=0.05))
TARGET = DataSpec("synthetic-b", train_n=128, test_n=64)


BAD = {
    "unknown mode": lambda: profiles.get("smoke", pv_modes=["normal", "fgsm"]),
    "unknown constraint": lambda: HeadSpec(constraint="spectral"),
    "unknown tap": lambda: profiles.get("smoke", tap=9),
    "tap zero": lambda: profiles.get("smoke", tap=0),
    "tap not a number": lambda: profiles.get("smoke", tap="last"),
    "layers 0": lambda: HeadSpec(layers=0),
    "hidden not divisible by the group": lambda: HeadSpec(layers=4, hidden=7, group=2),
    "k zero": lambda: HeadSpec(k=0),
    "sigma zero": lambda: profiles.get("quick", pv_sigma=0),
    "alpha one": lambda: profiles.get("quick", pv_alpha=1.0),
    "alpha zero": lambda: profiles.get("quick", pv_alpha=0),
    "negative r": lambda: profiles.get("quick", pv_r=-0.1),
    "negative radius in the grid": lambda: profiles.get("quick", pv_radii=[0.0, -0.05]),
    "search steps 0": lambda: profiles.get("quick", search_steps=0),
    "empty modes": lambda: profiles.get("quick", pv_modes=[]),
    "smoothed images 0": lambda: profiles.get("quick", smooth_images=0),
    "notebook parameter": lambda: report.start("05_provable", "smoke", pv_modes=["nope"]),
    "a tapped head": lambda: HeadRun(SRC, TARGET, HeadSpec(), HeadTraining(), tap=5),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_notebook_05_settings_are_config_errors_before_compute(name, no_compute):
    with pytest.raises(ConfigError):
        BAD[name]()


def test_a_radius_beyond_what_s_draws_certify_names_the_limit_and_the_draws_that_would():
    limit = median_radius_limit(0.1, 1e-4, 64, 500)
    assert 0.19 < limit < 0.192
    with pytest.raises(ConfigError, match=r"0\.1915.*S = \d+ draws would certify it"):
        profiles.get("quick", pv_r=0.2)
    with pytest.raises(ConfigError, match="largest radius"):
        profiles.get("quick", pv_radii=[0.0, 0.19, 0.25])
    profiles.get("quick", pv_r=0.19)   # just below: fine
    with pytest.raises(ConfigError, match="S = "):
        profiles.get("quick", pv_samples=50)   # r = 0.1 needs more than 50 draws over 64 dimensions


def test_every_profile_has_notebook_05_settings_and_quick_reuses_the_shared_sources():
    for name in profiles.PROFILES:
        assert profiles.get(name, gpu=False).provable is not None
    P = profiles.get("quick", gpu=False)
    # adv is the paper's L2 PGD-10 at eps (Sec. 5, App. A.1); shared_adv=True, the variant, is 01-03's L-inf source
    adv = S.source_run(P, "adv", P.provable.main_pair)
    assert adv.method.attack.norm == "l2" and adv.method.attack.steps == 10 and adv != P.source_run()
    shared = dataclasses.replace(P, provable=dataclasses.replace(P.provable, shared_adv=True))
    assert S.source_run(shared, "adv", shared.provable.main_pair) == P.source_run()
    split = P.provable.table1_pairs[1]
    from rtlkit.studies import pretraining
    assert S.source_run(P, "normal", split) == pretraining.source_run(P, "ST")      # 04's standard source
    with pytest.raises(ConfigError, match="unknown training mode"):
        S.mode_method(P, "fgsm")


def test_adv_d_and_adv_s_train_with_advs_attack_and_schedule():
    P = profiles.get("quick", gpu=False)
    adv, d, s = (S.mode_method(P, m) for m in ("adv", "adv-d", "adv-s"))
    assert d.attack == adv.attack and d.k == 1 and d.lam == 0.005 and d.epochs == adv.epochs
    assert s.attack.norm == "l2" and s.attack.eps == pytest.approx(0.1) and s.attack.steps == adv.attack.steps
    assert s.sigma == pytest.approx(0.1) and s.m == 1 and s.epochs == adv.epochs
    paper = profiles.get("paper", gpu=False)
    assert S.mode_method(paper, "adv").attack.norm == "l2"
    assert S.mode_method(paper, "adv").attack.eps == pytest.approx(0.1 * 0.3081)   # normalised eps in pixels


def test_noisy_features_are_the_tapped_features_of_seeded_noisy_copies_and_cached(runs_root):
    draws = NoisyDraws(sigma=0.1, draws=3, images=16, seed=4)
    noisy, clean, y = get_or_noisy_features(SRC, TARGET, draws, progress=False)
    model = get_or_train(SRC, progress=False).eval()
    d = runs.shaped_for(SRC, runs.test_images(TARGET, 16, TARGET.seed))
    x = d.x.float() / 255
    g = torch.Generator().manual_seed(4)
    owner = torch.arange(len(x)).repeat(3)
    with torch.no_grad():
        want = tapped(model, x[owner] + 0.1 * torch.randn(x[owner].shape, generator=g)).view(3, len(x), -1)
        assert torch.equal(clean, model.penultimate(x))
    assert torch.allclose(noisy, want, atol=1e-6) and torch.equal(y, d.y)
    assert len(set(y.tolist())) == d.info.num_classes                    # a balanced subset
    again = get_or_noisy_features(SRC, TARGET, draws, progress=False)
    assert torch.equal(again[0], noisy)
    path = noisy_features_path(SRC, TARGET, draws)
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    with pytest.warns(UserWarning, match="sha256"):
        rebuilt = get_or_noisy_features(SRC, TARGET, draws, progress=False)
    assert torch.equal(rebuilt[0], noisy)


def test_a_tap_pools_the_first_blocks_and_keeps_the_penultimate_files(runs_root):
    z, _ = get_or_features(SRC, TARGET, "test", progress=False, tap=2)
    model = get_or_train(SRC, progress=False).eval()
    x = runs.shaped_for(SRC, TARGET.test()).x.float() / 255
    with torch.no_grad():
        assert torch.allclose(z, model.features(x, 2).mean((2, 3)), atol=1e-6)
    assert runs.features_path(SRC, TARGET, "test", tap=2) != runs.features_path(SRC, TARGET, "test")
    P = profiles.get("smoke", tap=2)
    assert P.provable.feature_dim(P.provable.pv_model) == z.shape[1]
    run = HeadRun(SRC, TARGET, HeadSpec(), HeadTraining(max_epochs=2), tap=2)
    with pytest.raises(ConfigError, match="tap"):
        runs.get_or_evaluate(run, [runs.PGD(eps=0.1, steps=1, step_size=0.1)], progress=False)


def test_per_example_tables_are_cached_checked_and_rebuilt(runs_root):
    calls = []

    def compute(model):
        calls.append(1)
        return pd.DataFrame({"index": range(4), "ok": [True, False, True, True], "d": [0.1, 0.2, 0.3, 0.4]})
    t = get_or_table(SRC, "demo", {"a": 1}, compute, progress=False)
    assert t.ok.mean() == 0.75 and len(calls) == 1
    assert get_or_table(SRC, "demo", {"a": 1}, compute, progress=False).equals(t) and len(calls) == 1
    csv = table_path(SRC, "demo", {"a": 1}).with_suffix(".csv")
    csv.write_text(csv.read_text().replace("0.40000000000000002", "0.5"))
    with pytest.warns(UserWarning):
        again = get_or_table(SRC, "demo", {"a": 1}, compute, progress=False)
    assert len(calls) == 2 and again.equals(t)


def test_temperature_one_is_plain_training_bit_for_bit():
    z, y = torch.randn(200, 8), torch.randint(0, 3, (200,))
    a, b = HeadSpec(layers=4, hidden=8).build(8, 3, 1), HeadSpec(layers=4, hidden=8).build(8, 3, 1)
    train_head(a, z, y, HeadTraining(max_epochs=4))
    train_head(b, z, y, HeadTraining(max_epochs=4, temperature=1.0))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert runs.stable_hash(HeadTraining()) != runs.stable_hash(HeadTraining(temperature=100.0))


def test_presorted_median_certificates_equal_the_plain_ones():
    torch.manual_seed(0)
    z = torch.randn(500, 20, 16) * 0.05 + torch.randn(1, 20, 16)
    head = HeadSpec(layers=4, hidden=16).build(16, 5, 0)
    from rtlkit.train.methods.lipschitz import lipschitz_bound
    a = median_certify_representation(head, z, lipschitz_bound(head), 0.05, 0.1, 1e-3)
    b = median_certify_representation(head, sorted_draws(z), lipschitz_bound(head), 0.05, 0.1, 1e-3, presorted=True)
    assert all((a[k] == b[k]).all() for k in a)
    with torch.no_grad():
        logits = head(z.flatten(0, 1)).view(500, 20, -1)
    c, d = median_certify_logits(logits, 0.05, 0.1, 1e-3), median_certify_logits(sorted_draws(logits), 0.05, 0.1,
                                                                                1e-3, presorted=True)
    assert all((c[k] == d[k]).all() for k in c)
    # without Bonferroni the box is narrower, so at least as many are verified
    e = median_certify_representation(head, z, lipschitz_bound(head), 0.05, 0.1, 1e-3, bonferroni=False)
    assert (e["delta"] <= a["delta"] + 1e-12).all() and e["verified"].sum() >= a["verified"].sum()


def test_the_smoke_study_gives_every_table_with_the_papers_rows_beside(runs_root):
    P = profiles.get("smoke")
    t1 = S.lipschitz_table(P, None, False)
    assert set(t1.constraint) == {"none", "wn", "wn T=1", "wn-l2"} and set(t1.layers) == {1, 4}
    assert (t1[t1.constraint == "wn"].lipschitz_bound <= 1 + 1e-5).all()
    t2 = S.search_table(P, None, False)
    assert (t2.p_z == 1).all()                                     # the closed form always crosses the boundary
    t3 = S.smoothing_table(P, None, False)
    assert len(t3) == 5 * 2 * 3 * 2 + 2 * 2 * 2 and t3[["label_a_v", "rep_a_v", "logit_a_v"]].le(t3.a_b.max() + 1).all().all()
    assert (t3.rep_a_v <= t3.rep_a_m).all() and (t3.logit_a_v <= t3.logit_a_m).all()
    assert (t3.rep_a_v <= t3.rep_a_v_no_bonferroni).all() and (t3.rep_a_v_bound1 <= t3.rep_a_v_bound1_no_bonferroni).all()
    noisy_h = t3[t3.head_sigma.notna()]
    assert set(noisy_h["mode"]) == {"adv-s"} and set(noisy_h.constraint) == {"none", "wn"}   # head_sigma heads
    wn = t3[t3.constraint == "wn"]
    assert (abs(wn.rep_a_v - wn.rep_a_v_bound1) < 1e-9).all()          # a wn head's bound is 1 (to rounding)
    curves = S.radius_curves(P, None, False)
    for _, part in curves.groupby(["mode", "split", "constraint", "method"]):
        assert part.sort_values("r").a_v.is_monotonic_decreasing   # a larger radius verifies no more
    both = S.with_paper(t3, "table3", "smoke")
    assert set(both.source) == {"rtlkit", "paper"} and len(both[both.source == "paper"]) == 40
