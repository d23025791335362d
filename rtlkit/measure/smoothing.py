"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): certify and predict with the
Gaussian-smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), sigma in [0,1]
pixel units (normalisation lives inside the model; the noisy images are not clipped).

The pieces are kept apart as in Cohen's code, so another smoothing (median smoothing, issue 12)
reuses them: :func:`sample_counts` draws the noise and counts classes on the device;
:func:`lower_confidence_bound` and :func:`radius` are the statistics; :func:`certify` and
:func:`predict` are Cohen's CERTIFY and PREDICT.

Guarantees (Cohen et al. Thm. 1, Prop. 2): with probability at least 1 - alpha over the noise,
a non-abstaining ``certify`` returns the smoothed classifier's class and g is constant on the
L2 ball of the returned radius; a non-abstaining ``predict`` returns g(x).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from rtlkit.measure.attacks import attack_mode
from rtlkit.core.errors import check, check_int, check_real

ABSTAIN = -1


@dataclass(frozen=True)
class Smoothing:
    """Vaishnavi et al. App. A (Cohen et al.'s settings): sigma 0.5, N0 = 100 selection draws,
    N = 100,000 estimation draws, alpha = 0.001 (a one-sided 1 - alpha Clopper-Pearson bound).
    ``batch``: noisy samples per forward pass (they span several images); ``seed`` seeds a
    generator of the smoothing's own, never the global RNG."""
    sigma: float = 0.5
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    batch: int = 4096

    def __post_init__(self):
        check_real("smoothing sigma", self.sigma, 0, low_open=True)
        check_int("smoothing N0", self.n0, 1)
        check_int("smoothing N", self.n, 1)
        check(self.n0 <= self.n, f"smoothing N0 ({self.n0}) must not exceed N ({self.n})")
        check_real("smoothing alpha", self.alpha, 0, 1, low_open=True)
        check(self.alpha < 1, f"smoothing alpha must be in (0, 1), not {self.alpha!r}")
        check_int("smoothing seed", self.seed, 0)
        check_int("smoothing batch", self.batch, 1)

    @property
    def label(self) -> str:
        return f"smoothing sigma={self.sigma:g} N0={self.n0} N={self.n} alpha={self.alpha:g} seed={self.seed}"

    @property
    def max_radius(self) -> float:
        """The largest radius N draws can certify: every draw the top class gives p_lower = alpha^(1/N)."""
        return radius(self.sigma, float(self.alpha ** (1 / self.n)))


def sample_counts(forward, x: torch.Tensor, num: int, sigma: float, num_classes: int, batch: int,
                  generator: torch.Generator, autocast=contextlib.nullcontext) -> torch.Tensor:
    """(B, C) int64 class counts of ``forward`` on ``num`` noisy copies x + sigma * N(0, I) of each
    of the B images. Batches span images (no per-image loop); counts accumulate on the device with
    no host sync."""
    b = len(x)
    counts = torch.zeros(b * num_classes, dtype=torch.long, device=x.device)
    owner = torch.arange(b, device=x.device).repeat_interleave(num)
    for start in range(0, b * num, batch):
        idx = owner[start:start + batch]
        xb = x[idx]
        noise = torch.randn(xb.shape, generator=generator, device=x.device, dtype=xb.dtype)
        with torch.no_grad(), autocast():
            pred = forward(xb + sigma * noise).argmax(1)
        counts.index_add_(0, idx * num_classes + pred, torch.ones_like(pred))
    return counts.view(b, num_classes)


def lower_confidence_bound(na, n: int, alpha: float) -> np.ndarray:
    """One-sided 1 - alpha Clopper-Pearson lower bound on a binomial proportion from na of n
    successes: Beta(alpha; na, n - na + 1), and 0 where na = 0."""
    na = np.asarray(na, dtype=np.int64)
    out = beta.ppf(alpha, np.maximum(na, 1), n - na + 1)
    return np.where(na > 0, out, 0.0)


def radius(sigma: float, p_lower) -> np.ndarray:
    """Cohen's certified L2 radius sigma * Phi^-1(p_lower) (meaningful where p_lower > 1/2)."""
    return sigma * norm.ppf(p_lower)


def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(seed)


def certify(model: torch.nn.Module, x: torch.Tensor, s: Smoothing, num_classes: int,
            autocast=contextlib.nullcontext) -> dict[str, np.ndarray]:
    """Cohen's CERTIFY for a batch: the class from N0 draws, its count in N fresh draws, the
    lower bound p_lower and the radius; ``predict`` is ABSTAIN (-1) and the radius 0 where
    p_lower <= 1/2. The model runs in eval mode (restored afterwards)."""
    g = _generator(x, s.seed)
    with attack_mode(model):
        selection = sample_counts(model, x, s.n0, s.sigma, num_classes, s.batch, g, autocast)
        counts = sample_counts(model, x, s.n, s.sigma, num_classes, s.batch, g, autocast)
    return certify_counts(selection, counts, s)


def certify_counts(selection: torch.Tensor, counts: torch.Tensor, s: Smoothing) -> dict[str, np.ndarray]:
    """CERTIFY from class counts already drawn: ``selection`` (B, C) from N0 draws picks the class,
    ``counts`` (B, C) from N fresh draws bounds its probability. The entry for predictions made
    elsewhere (a head on cached noisy features: Provably Robust Transfer's label smoothing)."""
    c0 = selection.argmax(1)
    na = counts.gather(1, c0[:, None]).squeeze(1).cpu().numpy()
    p_lower = lower_confidence_bound(na, s.n, s.alpha)
    ok = p_lower > 0.5
    c0 = c0.cpu().numpy()
    return {"predict": np.where(ok, c0, ABSTAIN), "count": na, "p_lower": p_lower,
            "radius": np.where(ok, radius(s.sigma, np.where(ok, p_lower, 0.75)), 0.0)}


def predict(model: torch.nn.Module, x: torch.Tensor, s: Smoothing, num_classes: int,
            autocast=contextlib.nullcontext) -> np.ndarray:
    """Cohen's PREDICT: the top class of N draws, or ABSTAIN unless a two-sided binomial test of
    the top two counts gives p <= alpha."""
    g = _generator(x, s.seed)
    with attack_mode(model):
        counts = sample_counts(model, x, s.n, s.sigma, num_classes, s.batch, g, autocast)
    top2 = counts.topk(2, dim=1)
    na, nb = top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy()
    cls = top2.indices[:, 0].cpu().numpy()
    pvals = np.array([binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in zip(na, nb)])
    return np.where(pvals <= s.alpha, cls, ABSTAIN)


def summary(label: np.ndarray, predict: np.ndarray, rad: np.ndarray, eps: float) -> dict:
    """Vaishnavi et al. Sec. 4.1: SA (smoothed) = certified correct at R >= 0; RA-CT = correct with
    R >= eps; ACR = mean of R * 1[correct] (an abstention counts 0)."""
    correct = (predict == label) & (predict != ABSTAIN)
    return {"smoothed_acc": float(correct.mean()), "certified_acc": float((correct & (rad >= eps)).mean()),
            "acr": float(np.where(correct, rad, 0.0).mean()), "abstain": float((predict == ABSTAIN).mean())}


def certified_curve(label: np.ndarray, predict: np.ndarray, rad: np.ndarray, radii) -> np.ndarray:
    """Certified accuracy at each radius r: the share certified correct with R >= r."""
    correct = (predict == label) & (predict != ABSTAIN)
    return np.array([float((correct & (rad >= r)).mean()) for r in radii])


def noisy_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, seed: int = 0,
                  batch: int = 1000, autocast=contextlib.nullcontext) -> np.ndarray:
    """Per example, whether the base classifier is right on one draw of x + sigma * N(0, I)
    (unclipped; a generator of its own, seeded): Vaishnavi et al. Table 2's accuracy under
    Gaussian noise. The model runs in eval mode (restored afterwards)."""
    check_real("noise sigma", sigma, 0)
    g = _generator(x, seed)
    out = []
    with attack_mode(model), torch.no_grad():
        for start in range(0, len(x), batch):
            xb = x[start:start + batch]
            noise = torch.randn(xb.shape, generator=g, device=x.device, dtype=xb.dtype)
            with autocast():
                out.append((model(xb + sigma * noise).argmax(1) == y[start:start + batch].to(x.device)).cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- median smoothing
# Chiang et al. (NeurIPS 2020), used by Provably Robust Transfer (Sec. 5) on features and logits:
# for ||delta||_2 <= r, each coordinate's median of F(x + delta + e) lies between the
# Phi(-r/sigma) and Phi(r/sigma) percentiles of F(x + e); order statistics of S draws bound those
# percentiles with probability 1 - alpha', and alpha' = alpha / (2 dim) (Bonferroni over the
# coordinates and both sides) makes the whole box hold jointly with probability 1 - alpha.

def median_radius_limit(sigma: float, alpha: float, dim: int, s: int, bonferroni: bool = True) -> float:
    """The largest r whose median bounds S draws can give: sigma * Phi^-1((alpha / (2 dim))^(1/S))
    (at larger r even the extreme order statistics cannot hold with probability 1 - alpha')."""
    a = alpha / (2 * dim) if bonferroni else alpha / 2
    return float(sigma * norm.ppf(a ** (1 / s)))


def median_samples_needed(r: float, sigma: float, alpha: float, dim: int, bonferroni: bool = True) -> int:
    """The fewest draws S whose median bounds reach radius r."""
    a = alpha / (2 * dim) if bonferroni else alpha / 2
    return int(np.floor(np.log(a) / np.log(norm.cdf(r / sigma)))) + 1


def median_bounds(samples: torch.Tensor, r: float, sigma: float, alpha: float,
                  bonferroni: bool = True, presorted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds, each of shape samples.shape[1:], on every coordinate's median of
    the smoothed output under any L2 perturbation up to ``r``, from ``samples`` (S, ..., dim) of
    the output on x + sigma N(0, I). They hold jointly over the last dimension with probability at
    least 1 - alpha (Bonferroni; per coordinate and side only with ``bonferroni=False``).
    ``presorted``: the samples are already sorted along the draws (one sort serves every r)."""
    check_real("median smoothing sigma", sigma, 0, low_open=True)
    check_real("median smoothing r", r, 0)
    check(0 < alpha < 1, f"median smoothing alpha must be in (0, 1), not {alpha!r}")
    s, dim = samples.shape[0], samples.shape[-1]
    limit = median_radius_limit(sigma, alpha, dim, s, bonferroni)
    check(r < limit, f"r = {r:g} is beyond what {s} draws can certify over {dim} dimensions at sigma = {sigma:g}, "
          f"alpha = {alpha:g} (largest r: {limit:.3g}); S = {median_samples_needed(r, sigma, alpha, dim, bonferroni)} "
          f"draws would reach it")
    a = alpha / (2 * dim) if bonferroni else alpha / 2
    from scipy.stats import binom
    m = np.arange(s)
    lo = int(np.nonzero(binom.cdf(m, s, norm.cdf(-r / sigma)) <= a)[0].max())     # P(X_(lo+1) <= q_lo) >= 1 - a
    hi = int(np.nonzero(binom.cdf(m, s, norm.cdf(r / sigma)) >= 1 - a)[0].min())  # P(X_(hi+1) >= q_hi) >= 1 - a
    ordered = samples if presorted else samples.sort(dim=0).values
    return ordered[lo], ordered[hi]


def sorted_draws(samples: torch.Tensor) -> torch.Tensor:
    """The draws sorted along dim 0: what ``presorted=True`` takes; row (S - 1) // 2 is the
    (lower) median, as ``torch.median`` returns it."""
    return samples.sort(dim=0).values


def _median(samples: torch.Tensor, presorted: bool) -> torch.Tensor:
    """The (lower) median over the draws (dim 0), as ``torch.median`` returns it."""
    return samples[(len(samples) - 1) // 2] if presorted else samples.median(dim=0).values


def median_certify_representation(head, z_samples: torch.Tensor, bound: float, r: float, sigma: float,
                                  alpha: float, bonferroni: bool = True, presorted: bool = False,
                                  logits: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Representation smoothing (Provably Robust Transfer Sec. 5): m = the per-dimension median of
    the noisy features ``z_samples`` (S, B, D), c = argmax h(m), delta = the larger distance in
    L-inf from m to the median bounds at ``r``; verified iff h's margin at m exceeds
    2 * delta * ``bound`` (h's L-inf Lipschitz bound). Returns the class and whether it is verified.
    ``logits``: h(m), when the caller has it (one head, many radii)."""
    lo, hi = median_bounds(z_samples, r, sigma, alpha, bonferroni, presorted)
    m = _median(z_samples, presorted)
    if logits is None:
        with torch.no_grad():
            logits = head(m).float()
    top2 = logits.topk(2, dim=1).values
    delta = torch.maximum((hi - m).amax(1), (m - lo).amax(1))
    verified = (top2[:, 0] - top2[:, 1]) > 2 * delta * bound
    return {"predict": logits.argmax(1).cpu().numpy(), "verified": verified.cpu().numpy(),
            "delta": delta.cpu().numpy(), "margin": (top2[:, 0] - top2[:, 1]).cpu().numpy()}


def median_certify_logits(logit_samples: torch.Tensor, r: float, sigma: float, alpha: float,
                          bonferroni: bool = True, presorted: bool = False) -> dict[str, np.ndarray]:
    """Logit smoothing: bounds on the K logit medians from ``logit_samples`` (S, B, K); c = argmax of
    the medians; verified iff c's lower bound exceeds every other logit's upper bound."""
    lo, hi = median_bounds(logit_samples, r, sigma, alpha, bonferroni, presorted)
    med = _median(logit_samples, presorted)
    c = med.argmax(1)
    others = hi.scatter(1, c[:, None], float("-inf")).amax(1)
    verified = lo.gather(1, c[:, None]).squeeze(1) > others
    return {"predict": c.cpu().numpy(), "verified": verified.cpu().numpy()}
