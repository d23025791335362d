"""Randomized smoothing against closed forms: a linear binary classifier's exact radius
|w.x + b| / ||w||, a constant classifier's largest certifiable radius sigma * Phi^-1(alpha^(1/N)),
and a point on the decision boundary, where certify and predict abstain."""
import numpy as np
import pytest
import torch
from scipy.stats import norm

from rtlkit import ConfigError
from rtlkit.measure.smoothing import ABSTAIN, Smoothing, certified_curve, certify, lower_confidence_bound, predict, summary

SIGMA = 0.5


class Linear(torch.nn.Module):
    """Class 1 where w.x + b > 0: the smoothed classifier's exact radius is |w.x + b| / ||w||."""

    def __init__(self, d=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(d, generator=g))
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def points(model, margins):
    """Images at signed distance ``margins`` from the hyperplane through the all-0.5 image."""
    u = (model.w / model.w.norm()).detach()
    x0 = torch.full((16,), 0.5)
    with torch.no_grad():
        model.b.fill_(-float(model.w @ x0))
    return torch.stack([x0 + m * u for m in margins]).view(-1, 1, 4, 4)


MARGINS = np.array([0.25, 0.5, 1.0, 2.0]) * SIGMA


def test_the_certified_radius_never_exceeds_the_exact_one_and_nears_it_with_many_draws():
    model = Linear()
    x = points(model, MARGINS)
    gaps = {}
    for n in (1_000, 10_000, 100_000):
        for seed in range(3):
            c = certify(model, x, Smoothing(SIGMA, 100, n, 0.001, seed), 2)
            assert (c["predict"] == 1).all()
            assert (c["radius"] <= MARGINS + 1e-9).all(), (n, seed, c["radius"], MARGINS)
            gaps.setdefault(n, []).append(float((MARGINS - c["radius"]).mean()))
        if n == 100_000:
            assert (c["radius"] >= 0.9 * MARGINS).all(), c["radius"] / MARGINS
    assert np.mean(gaps[1_000]) > np.mean(gaps[10_000]) > np.mean(gaps[100_000]) > 0


def test_a_constant_classifier_gets_the_largest_radius_n_draws_can_certify():
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1) + 0 * x.flatten(1)[:, :1]
    for n, alpha in ((1_000, 0.001), (5_000, 0.01)):
        s = Smoothing(SIGMA, 10, n, alpha)
        c = certify(Constant(), torch.rand(3, 1, 4, 4), s, 2)
        exact = SIGMA * norm.ppf(alpha ** (1 / n))
        assert c["radius"] == pytest.approx([exact] * 3, rel=1e-9) and s.max_radius == pytest.approx(exact)
        assert (c["count"] == n).all() and (c["predict"] == 0).all()


def test_a_point_on_the_boundary_makes_certify_and_predict_abstain():
    model = Linear(seed=1)
    x = points(model, [0.0, 0.0])
    s = Smoothing(SIGMA, 100, 20_000, 0.001)
    c = certify(model, x, s, 2)
    assert (c["predict"] == ABSTAIN).all() and (c["radius"] == 0).all()
    assert (predict(model, x, s, 2) == ABSTAIN).all()
    far = points(model, [SIGMA])                       # and a clear point is predicted
    assert predict(model, far, s, 2).tolist() == [1]


def test_clopper_pearson_lower_bound_closed_forms():
    assert lower_confidence_bound([0], 100, 0.001)[0] == 0.0
    assert lower_confidence_bound([100], 100, 0.001)[0] == pytest.approx(0.001 ** (1 / 100))
    # one-sided: P(Bin(n, p_lower) >= na) = alpha at the bound
    from scipy.stats import binom
    p = lower_confidence_bound([60], 100, 0.05)[0]
    assert binom.sf(59, 100, p) == pytest.approx(0.05, rel=1e-6)


def test_certify_restores_modes_and_leaves_the_global_rng_alone():
    model = Linear()
    model.train()
    x = points(model, MARGINS)
    state = torch.random.get_rng_state()
    a = certify(model, x, Smoothing(SIGMA, 10, 500), 2)
    assert model.training and model.w.requires_grad
    assert torch.equal(torch.random.get_rng_state(), state)
    b = certify(model, x, Smoothing(SIGMA, 10, 500), 2)          # seeded: the same numbers again
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sa_ra_ct_acr_and_the_curve_by_hand():
    label = np.array([0, 1, 1, 0])
    pred = np.array([0, 1, ABSTAIN, 1])
    rad = np.array([0.6, 0.2, 0.0, 0.9])
    s = summary(label, pred, rad, eps=0.5)
    assert s == {"smoothed_acc": 0.5, "certified_acc": 0.25, "acr": pytest.approx(0.2), "abstain": 0.25}
    assert certified_curve(label, pred, rad, [0, 0.5, 1.0]).tolist() == [0.5, 0.25, 0.0]


@pytest.mark.parametrize("bad", [dict(sigma=0), dict(sigma=-1), dict(n0=0), dict(n=0), dict(n0=200, n=100),
                                 dict(alpha=0), dict(alpha=1), dict(alpha=1.5), dict(n=2.5)])
def test_bad_smoothing_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        Smoothing(**bad)


# --------------------------------------------------------------------------- cached certificates

def test_certificates_are_cached_with_a_per_example_tsv_that_recomputes_the_summary(monkeypatch, runs_root):
    import pandas as pd

    import fault_child as FC
    from rtlkit.runs import cache as runs
    from rtlkit.core.runtime import Runtime
    cpu, s = Runtime("cpu"), Smoothing(SIGMA, 10, 200, 0.01)
    run = FC.source()
    m = runs.get_or_certify(run, s, eps=0.25, runtime=cpu, progress=False, test_n=20)
    path = runs.cert_path(run, s, 20, cpu)
    tsv = pd.read_csv(path.with_suffix(".tsv"), sep="\t")
    assert list(tsv.columns) == ["index", "label", "predict", "count", "p_lower", "radius", "correct", "seconds"]
    assert len(tsv) == m["n_test"] == 20 and tsv["index"].is_monotonic_increasing
    again = summary(tsv.label.to_numpy(), tsv.predict.to_numpy(), tsv.radius.to_numpy(), 0.25)
    assert {k: m[k] for k in again} == again
    assert (tsv.radius[tsv.predict == ABSTAIN] == 0).all() and (tsv.radius <= s.max_radius + 1e-12).all()

    real = runs.get_or_train
    monkeypatch.setattr(runs, "get_or_train", lambda *a, **k: pytest.fail("certified again"))
    for eps in (0.0, 0.25, 1.0):                  # one certificate serves every eps
        hit = runs.get_or_certify(run, s, eps=eps, runtime=cpu, progress=False, test_n=20)
        assert hit["certified_acc"] == summary(tsv.label.to_numpy(), tsv.predict.to_numpy(),
                                               tsv.radius.to_numpy(), eps)["certified_acc"]
    monkeypatch.setattr(runs, "get_or_train", real)
    path.with_suffix(".tsv").write_text("index\tlabel\n1\t2\n")        # a broken table is rebuilt, not served
    with pytest.warns(UserWarning, match="tsv"):
        rebuilt = runs.get_or_certify(run, s, eps=0.25, runtime=cpu, progress=False, test_n=20)
    cols = ["index", "label", "predict", "count", "p_lower", "radius", "correct"]   # not the timings
    assert rebuilt["table"][cols].equals(m["table"][cols])


def test_accuracy_under_noise_is_phi_of_the_margin_for_a_linear_classifier():
    """Table 2's measure: a linear classifier at signed distance m from its boundary is right on
    x + sigma N(0, I) with probability Phi(m / sigma); sigma = 0 is the clean accuracy."""
    from rtlkit.measure.smoothing import noisy_correct
    model = Linear()
    x = points(model, [0.5 * SIGMA]).repeat(20_000, 1, 1, 1)
    y = torch.ones(len(x), dtype=torch.long)
    acc = noisy_correct(model, x, y, SIGMA, seed=3).mean()
    p = norm.cdf(0.5)
    assert abs(acc - p) < 4 * np.sqrt(p * (1 - p) / len(x))
    assert noisy_correct(model, x[:10], y[:10], 0.0).all()
    again = noisy_correct(model, x[:500], y[:500], SIGMA, seed=3)
    assert (again == noisy_correct(model, x[:500], y[:500], SIGMA, seed=3)).all()   # its own seeded generator
    with pytest.raises(ConfigError):
        noisy_correct(model, x[:2], y[:2], -0.1)


# ----------------------------------------------------------------------------- median smoothing

def test_median_bounds_cover_a_gaussians_percentiles():
    """For N(0, 1) outputs the Phi(-+r/sigma) percentiles are -+r/sigma: one coordinate's bounds
    hold in at least 1 - alpha of trials."""
    from rtlkit.measure.smoothing import median_bounds
    g = torch.Generator().manual_seed(0)
    alpha, trials, r, sigma = 0.1, 2000, 0.05, 0.1
    lo, hi = median_bounds(torch.randn(500, trials, 1, generator=g), r, sigma, alpha)
    covered = ((lo[:, 0] <= -r / sigma) & (hi[:, 0] >= r / sigma)).float().mean()
    assert covered >= 1 - alpha - 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert (lo <= hi).all()


def test_the_bonferroni_box_covers_50_dims_jointly_and_the_uncorrected_one_does_not():
    from rtlkit.measure.smoothing import median_bounds
    g = torch.Generator().manual_seed(1)
    alpha, trials, r, sigma = 0.1, 400, 0.05, 0.1
    x = torch.randn(500, trials, 50, generator=g)
    joint = {}
    for bonf in (True, False):
        lo, hi = median_bounds(x, r, sigma, alpha, bonferroni=bonf)
        joint[bonf] = ((lo <= -r / sigma) & (hi >= r / sigma)).all(-1).float().mean()
    assert joint[True] >= 1 - alpha - 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert joint[False] < 0.5


def test_the_largest_median_radius_and_the_draws_a_radius_needs():
    from rtlkit.measure.smoothing import median_bounds, median_radius_limit, median_samples_needed
    assert median_radius_limit(0.1, 1e-4, 640, 500) == pytest.approx(0.185, abs=5e-4)
    s = median_samples_needed(0.19, 0.1, 1e-4, 640)
    assert median_radius_limit(0.1, 1e-4, 640, s) > 0.19 > median_radius_limit(0.1, 1e-4, 640, s - 1)
    with pytest.raises(ConfigError, match=rf"largest r: 0.185.*S = {s} draws"):
        median_bounds(torch.zeros(500, 1, 640), 0.19, 0.1, 1e-4)
    for bad in (dict(r=-0.1), dict(sigma=0.0), dict(alpha=1.0)):
        with pytest.raises(ConfigError):
            median_bounds(torch.zeros(500, 1, 4), **{**dict(r=0.05, sigma=0.1, alpha=0.01), **bad})


def test_median_certificates_never_exceed_the_exact_radius_of_a_linear_pipeline():
    """f(x) = A x and a linear head W: the median-smoothed pipeline is the linear classifier
    itself (Gaussian noise is symmetric), whose exact L2 radius is min_j margin_j / ||(W_c - W_j) A||.
    A representation or logit certificate at r must never claim more."""
    from rtlkit.train.methods.lipschitz import lipschitz_bound
    from rtlkit.measure.smoothing import median_certify_logits, median_certify_representation
    g = torch.Generator().manual_seed(4)
    d_in, d, k, sigma, alpha, s = 6, 4, 3, 0.1, 1e-3, 2000
    a = torch.randn(d, d_in, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(d, k, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
    w = head.weight.detach()
    x = torch.randn(300, d_in, generator=g, dtype=torch.float64) * 0.3
    logits = x @ a.T @ w.T
    c = logits.argmax(1)
    wa = w @ a                                                         # (k, d_in)
    diff = wa[c][:, None, :] - wa[None]                                # (B, k, d_in)
    exact = ((logits.gather(1, c[:, None]) - logits) / diff.norm(dim=-1).clamp_min(1e-12))
    exact = exact.masked_fill(torch.nn.functional.one_hot(c, k).bool(), float("inf")).amin(1)
    noisy = x[None] + sigma * torch.randn(s, *x.shape, generator=g, dtype=torch.float64)
    z = noisy @ a.T
    certified_any = 0
    for r in (0.02, 0.05, 0.1):
        rep = median_certify_representation(head, z, lipschitz_bound(head), r, sigma, alpha)
        log = median_certify_logits(z @ w.T, r, sigma, alpha)
        for out in (rep, log):
            ok = torch.as_tensor(out["verified"])
            assert (exact[ok] >= r).all()
            assert (torch.as_tensor(out["predict"])[ok] == c[ok]).all()
            certified_any += int(ok.sum())
    assert certified_any > 0


def test_a_constant_classifier_at_500_draws_gets_tables_4_largest_radius():
    """Provably Robust Transfer Table 4's label smoothing: sigma 0.1, N = 500, alpha = 1e-4."""
    s = Smoothing(sigma=0.1, n0=100, n=500, alpha=1e-4)
    assert s.max_radius == pytest.approx(0.209, abs=5e-4)
    from rtlkit.measure.smoothing import certify_counts
    out = certify_counts(torch.tensor([[100, 0]]), torch.tensor([[500, 0]]), s)
    assert out["radius"][0] == pytest.approx(s.max_radius) and out["predict"][0] == 0
