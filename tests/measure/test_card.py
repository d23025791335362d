"""The report card (rtlkit.measure.card): the cascade against a linear model's exact robust accuracy,
survivors-only against every attack on every example, the masking checks on masked and honest
models, one error before any attack, and the new attacks' adapters leaving modes, flags and the
RNG as they were."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.measure.attacks import APGDT, FABT
from rtlkit.measure.card import Card, cascade, checks, masking, summary
from rtlkit.runs.card import get_or_card
from rtlkit.suite.card import load_run, run_from_config
from rtlkit.core.data import DatasetInfo, ImageData
from rtlkit.core.runtime import Runtime

CPU = Runtime("cpu")
C, H, W = 4, 4, 5     # four classes (APGD-T's targeted DLR loss needs four), inputs (N, 1, 4, 5)
EPS = 0.05


class Linear(nn.Module):
    """flatten + Linear(d, C), logits z_c = w_c . x + b_c."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(H * W, C)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(C, H * W, generator=g))
            self.fc.bias.copy_(-0.5 * self.fc.weight.sum(1))

    def forward(self, x):
        return self.fc(x.flatten(1))


def linear_case(seed=0, n=600, eps=EPS):
    """uint8 data in [0.3, 0.7] (the [0, 1] box never binds at eps <= 0.3) and per example the
    exact L-inf robustness of a C-class linear model: robust iff every pair's margin
    (w_y - w_j) . x + b_y - b_j exceeds eps ||w_y - w_j||_1 (each pair's worst case is its own
    corner of the ball; the example is fooled iff some pair can be flipped)."""
    model = Linear(seed).eval()
    Wt, b = model.fc.weight.detach(), model.fc.bias.detach()
    g = torch.Generator().manual_seed(100 + seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = 0.5 + 0.08 * (Wt[y] - Wt.mean(0)).sign() + (torch.rand(n, H * W, generator=g) * 0.3 - 0.15)
    x8 = (x * 255).round().clamp(77, 178).to(torch.uint8).view(n, 1, H, W)
    xf = x8.float().flatten(1) / 255
    z = xf @ Wt.T + b
    margin = z.gather(1, y[:, None]) - z                          # (n, C): m_j, zero at j = y
    dual = (Wt[y][:, None, :] - Wt[None]).abs().sum(2)            # ||w_y - w_j||_1
    slack = (margin - eps * dual).masked_fill(torch.nn.functional.one_hot(y, C).bool(), float("inf"))
    mm = margin.masked_fill(torch.nn.functional.one_hot(y, C).bool(), float("inf"))
    keep = (slack.abs().amin(1) > 1e-3) & (mm.abs().amin(1) > 1e-3)   # no ties at either threshold
    data = ImageData(x8[keep], y[keep], DatasetInfo("linear4", tuple("abcd"), 1, H, "mnist"))
    return model, data, (mm.amin(1) > 0)[keep], (slack.amin(1) > 0)[keep]


def small_card(**kw):
    return Card(eps=kw.pop("eps", EPS), pgd_steps=kw.pop("pgd_steps", 10), apgd_iters=20, fab_iters=20, square_queries=200,
                targets=3, strong_factor=2, strong_restarts=2, large_eps=0.5, **kw)


def test_the_cascade_reaches_the_exact_robust_accuracy_of_a_linear_model():
    model, data, clean, robust = linear_case()
    assert robust.sum() >= 40 and (clean & ~robust).sum() >= 40, "the case must not be degenerate"
    t = cascade(model, data, small_card(), CPU)
    assert t.clean_correct.tolist() == clean.tolist()
    assert t.robust_correct.tolist() == robust.tolist()          # example by example
    s = summary(t)
    assert s.step.tolist() == ["clean", "PGD-CE", "PGD-CW", "APGD-CE", "APGD-T", "FAB-T", "Square"]
    assert s.accuracy.iloc[-1] == pytest.approx(float(robust.float().mean()))
    assert s.took.iloc[1:].sum() == int((clean & ~robust).sum())   # every non-robust example taken once
    assert set(t.fooled_by) <= {"clean", "none", *s.step[1:]}
    assert (t.fooled_by == "none").tolist() == robust.tolist()


def test_one_weak_attack_is_not_exact_on_the_same_case():
    """The check can fail: a 1-step PGD-CE alone misses non-robust examples that the cascade takes,
    and the cascade's later attacks take them (each column counts what it alone took)."""
    model, data, clean, robust = linear_case()
    t = cascade(model, data, small_card(pgd_steps=1), CPU)
    assert t.pgd_ce_correct.mean() > robust.float().mean() + 0.05
    assert t.robust_correct.tolist() == robust.tolist()
    assert t["took[PGD-CW]"].sum() + t["took[APGD-CE]"].sum() + t["took[APGD-T]"].sum() > 0.05 * len(t)


def test_survivors_only_gives_the_per_example_minimum_of_every_attack_on_every_example():
    model, data, _, _ = linear_case(seed=1)
    card = small_card()
    a = cascade(model, data, card, CPU, batch_size=64)
    b = cascade(model, data, card, CPU, batch_size=64, survivors=False)
    pd.testing.assert_frame_equal(a, b)


class MLP(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 32), nn.ReLU(), nn.Linear(32, C))

    def forward(self, x):
        return self.net(x)


def test_our_pgd_gives_an_example_the_same_result_whatever_shares_its_batch():
    """Per-example starts: on a non-linear model, PGD's survivors-only run equals its run on all
    examples, example by example (pyautoattack's attacks draw a start per batch: not checked here)."""
    model, data, _, _ = linear_case(seed=2)
    model = MLP()
    card = dataclasses.replace(small_card(), pgd_steps=3)
    ce = card.attacks(C)[:2]
    x, y = data.x.float() / 255, data.y
    from rtlkit.measure.card import _attack
    full = _attack(model, "PGD-CE", ce[0][1], x, y, data.index, CPU, 50, (0, "PGD-CE"), card.eps, card.norm)
    part = torch.arange(len(y))[::3]
    sub = _attack(model, "PGD-CE", ce[0][1], x[part], y[part], data.index[part], CPU, 7, (0, "PGD-CE"), card.eps, card.norm)
    assert torch.equal(full[part], sub)


class Rounded(nn.Module):
    """A masked model: the inputs quantised to 5 levels before the logits (round() has a zero gradient)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    """A masked model: a saturating softmax before the logits (its gradient underflows to zero)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(200 * self.model(x), dim=1)


def _checks(model, data, card):
    t = cascade(model, data, card, CPU)
    m = masking(model, data, card, t, None, CPU)
    return checks(card, t, m, C).set_index("check").status


def test_every_check_passes_on_an_honest_model():
    model, data, _, _ = linear_case()
    card = small_card()
    t = cascade(model, data, card, CPU)
    ch = checks(card, t, masking(model, data, card, t, None, CPU), C).set_index("check")
    st = ch.status
    assert (st.drop("5 transfer not stronger") == "pass").all(), st.to_dict()
    assert st["5 transfer not stronger"] == "none"
    assert ch.value["4 more steps and restarts"] == 0   # the cascade is exact here: nothing is left to find


def test_check_4_warns_when_a_stronger_pgd_fools_what_the_cascade_left_robust():
    """The rule on hand-made tables: 5 of 100 examples that survived the whole cascade fall to the
    stronger PGD-CE (beyond tol = 0.01: warn); 1 of 100 is within tol (pass); and PGD-CE's own
    drop, which the cascade's later attacks covered, does not count."""
    def tables(k):
        n = 100
        robust = np.r_[np.ones(50), np.zeros(50)].astype(int)
        pgd_ce = np.ones(n, int)                                  # PGD-CE alone missed half the fooled ones
        strong = robust.copy()
        strong[:k] = 0
        t = pd.DataFrame({"robust_correct": robust, "pgd_ce_correct": pgd_ce, "white_box_correct": robust,
                          "took[Square]": np.zeros(n, int)})
        m = pd.DataFrame({"grid[0.05]": robust, "grid[0.5]": np.zeros(n, int), "strong_correct": strong,
                          "transfer_correct": np.full(n, np.nan), "grad_norm": np.ones(n)})
        return checks(small_card(), t, m, C).set_index("check").loc["4 more steps and restarts"]
    assert tables(5).status == "warn" and tables(5).value == pytest.approx(0.05)
    assert tables(1).status == "pass" and tables(0).value == 0
    assert "0.500" in tables(0).detail   # PGD-CE's own drop is reported, not judged


@pytest.mark.parametrize("mask", [Rounded, Saturated], ids=["round", "softmax"])
def test_checks_2_3_and_6_warn_on_a_masked_model(mask):
    model, data, _, _ = linear_case()
    st = _checks(mask(model).eval(), data, small_card(eps=0.1))
    for c in ("2 large eps at or below chance", "3 black-box not stronger", "6 gradients not vanishing"):
        assert st[c] == "warn", st.to_dict()


def test_the_transfer_check_warns_when_the_source_is_the_stronger_attack():
    """A target whose own gradient is masked, and a surrogate (the unmasked model) that fools it."""
    model, data, _, _ = linear_case()
    card = small_card(eps=0.1)
    masked = Rounded(model).eval()
    t = cascade(masked, data, card, CPU)
    m = masking(masked, data, card, t, model, CPU)
    assert checks(card, t, m, C).set_index("check").status["5 transfer not stronger"] == "warn"
    m = masking(model, data, card, cascade(model, data, card, CPU), model, CPU)   # the honest model, itself as source
    assert checks(card, cascade(model, data, card, CPU), m, C).set_index("check").status["5 transfer not stronger"] == "pass"


def test_bad_cards_are_one_error():
    for kw in (dict(eps=-0.1), dict(eps=0.1, norm="l1"), dict(eps=2.0), dict(eps=0.1, grid=(2.0, 1.0)),
               dict(eps=0.1, pgd_steps=0), dict(eps=0.1, large_eps=0.05), dict(eps=0.1, tol=-1)):
        with pytest.raises(ConfigError):
            Card(**kw)


def test_a_run_that_is_not_cached_is_one_error_naming_it(runs_root):
    with pytest.raises(ConfigError, match="no cached run 'transfer-000000000000'"):
        load_run("transfer-000000000000")


def test_the_adapters_leave_modes_flags_and_rng_as_they_were():
    from conftest import tiny_model
    model = tiny_model(classes=5)
    model.train()
    model.blocks[0].eval()
    model.head.fc.weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x, y = torch.rand(6, 1, 12, 12), torch.tensor([0, 1, 2, 3, 4, 0])
    state = torch.random.get_rng_state()
    for attack in (APGDT(eps=0.1, n_iter=3, n_target_classes=2), FABT(eps=0.1, n_iter=3, n_target_classes=2)):
        adv = attack(model, x, y)
        assert adv.shape == x.shape and ((adv - x).abs().flatten(1).amax(1) <= 0.1 + 1e-5).all()
        assert [m.training for m in model.modules()] == modes and [p.requires_grad for p in model.parameters()] == grads
        assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ConfigError, match="at least 4 classes"):
        APGDT(eps=0.1, n_target_classes=2).check_classes(3)
    with pytest.raises(ConfigError, match="only 4"):
        FABT(eps=0.1, n_target_classes=9).check_classes(5)


def test_a_cached_card_is_served_and_a_tampered_one_rebuilt(runs_root):
    """get_or_card on a smoke source: cached per-example tables with the fooled_by names, the
    same numbers on a hit, a changed CSV set aside and measured again; the CLI prints it."""
    from rtlkit.suite.card import main
    from rtlkit.studies.profiles import get
    p = get("smoke")
    run = p.source_run(0)
    card = dataclasses.replace(p.card, eps=p.eps)
    first = get_or_card(run, card, CPU, progress=False, test_n=24)
    assert first["n_test"] == 24 and len(first["checks"]) == 6
    csv = next(runs_root.glob("source-*/card-[0-9a-f]*.csv"))
    assert "fooled_by" in csv.read_text().splitlines()[0]
    again = get_or_card(run, card, CPU, progress=False, test_n=24)
    pd.testing.assert_frame_equal(first["table"], again["table"])
    text = csv.read_text().replace("none", "clean", 1) if "none" in csv.read_text() else csv.read_text() + "\n"
    csv.write_text(text)
    third = get_or_card(run, card, CPU, progress=False, test_n=24)
    pd.testing.assert_frame_equal(first["table"], third["table"])
    assert list(runs_root.glob("source-*/card-*.json.corrupt"))   # the tampered card was set aside
    assert run_from_config(json.loads((csv.parent / "config.json").read_text())) == run
    assert load_run(csv.parent.name) == run
    assert main([csv.parent.name, "--profile", "smoke", "--test-n", "24"]) == 0
    assert main(["source-000000000000", "--profile", "smoke"]) == 2
