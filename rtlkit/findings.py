"""Verdicts computed from the numbers (issue 21, part 1: the rule and its uncertainty).

One rule for every claim a notebook tests. An *effect* is a difference the paper reports a sign
for (robustness with minus without a method, say); ours comes with its standard error:

- **agrees**: our effect has the paper's sign and lies outside 2 SE of zero;
- **disagrees**: the opposite sign outside 2 SE; or the paper reports an effect that lies inside
  2 SE of zero here while our SE is small enough to see it: the paper's effect lies outside our
  effect +- 2 SE (an effect consistent with both zero and the paper's is unresolved);
- **unresolved**: neither. The data cannot tell, however good the point estimate looks.

The SE comes from the per-example results: for one seed, the paired SE of the difference over
the same test images (:func:`paired_se`; the binomial SE for a single accuracy); for several
seeds, a bootstrap over test examples and seeds (:func:`bootstrap_se`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import check, check_int, is_real

VERDICTS = ("agrees", "disagrees", "unresolved")
Z = 2.0   # "outside 2 SE"


def binomial_se(p: float, n: int) -> float:
    """The SE of an accuracy ``p`` measured on ``n`` independent test images: sqrt(p(1-p)/n)."""
    check(is_real(p) and 0 <= p <= 1, f"an accuracy is in [0, 1], not {p!r}")
    check_int("n", n, 1)
    return math.sqrt(p * (1 - p) / n)


def paired_se(a, b) -> float:
    """The SE of mean(a) - mean(b) for per-example results ``a`` and ``b`` (0/1 or reals) on the
    same test images: the SE of the mean of the paired differences (it credits the correlation
    of two models judged on one test set, which the unpaired sqrt(se_a^2 + se_b^2) ignores)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    check(a.shape == b.shape and a.ndim == 1 and len(a) >= 2,
          f"paired results need two 1-d arrays of one length >= 2, not {a.shape} and {b.shape}")
    d = a - b
    return float(d.std(ddof=1) / math.sqrt(len(d)))


def bootstrap_se(results, draws: int = 2000, seed: int = 0) -> float:
    """The SE of the mean of ``results`` (seeds, examples) by a two-level bootstrap: seeds drawn
    with replacement, then test examples (the same draw for every seed: the test set is shared).
    With one seed this is the bootstrap of the examples alone."""
    r = np.asarray(results, dtype=np.float64)
    if r.ndim == 1:
        r = r[None]
    check(r.ndim == 2 and r.shape[1] >= 2, f"results are (seeds, examples) with >= 2 examples, not {r.shape}")
    check_int("draws", draws, 10)
    g = np.random.default_rng(seed)
    s, n = r.shape
    seeds = g.integers(0, s, size=(draws, s))
    examples = g.integers(0, n, size=(draws, n))
    means = np.array([r[seeds[i]][:, examples[i]].mean() for i in range(draws)])
    return float(means.std(ddof=1))


@dataclass(frozen=True)
class Finding:
    """One claim: where it comes from, the paper's effect and ours with its SE, and the verdict."""
    notebook: str
    paper: str
    where: str            # table or figure
    claim: str            # one line
    paper_effect: float   # the paper's difference (its sign is the claim)
    effect: float         # ours
    se: float
    n: int                # test images
    seeds: int

    def __post_init__(self):
        for name in ("paper_effect", "effect", "se"):
            check(is_real(getattr(self, name)) and math.isfinite(getattr(self, name)),
                  f"{name} must be a finite number, not {getattr(self, name)!r}")
        check(self.se >= 0, f"se must be >= 0, not {self.se}")
        check_int("n", self.n, 1)
        check_int("seeds", self.seeds, 1)

    @property
    def verdict(self) -> str:
        return verdict(self.paper_effect, self.effect, self.se)

    def row(self) -> dict:
        lo, hi = self.effect - Z * self.se, self.effect + Z * self.se
        return {"notebook": self.notebook, "paper": self.paper, "where": self.where, "claim": self.claim,
                "paper_effect": self.paper_effect, "effect": self.effect, "se": self.se, "low_2se": lo,
                "high_2se": hi, "n": self.n, "seeds": self.seeds, "verdict": self.verdict}


RESOLUTION = 0.01   # a claim of *no* effect holds only where 2 SE is within 1 point (accuracies in [0, 1])


def verdict(paper_effect: float, effect: float, se: float, resolution: float = RESOLUTION) -> str:
    """The one rule (module docstring). ``paper_effect`` 0 claims no effect (Shafahi Table 4:
    lambda_d = 1e-7 equals 0.1): an effect outside 2 SE disagrees, one inside agrees only where
    2 SE <= ``resolution``, so that a noisy measurement never confirms "no difference"."""
    check(is_real(se) and se >= 0 and math.isfinite(se), f"se must be a finite number >= 0, not {se!r}")
    check(is_real(effect) and math.isfinite(effect), f"effect must be a finite number, not {effect!r}")
    outside = abs(effect) > Z * se
    if paper_effect == 0:
        return "disagrees" if outside else ("agrees" if Z * se <= resolution else "unresolved")
    same_sign = math.copysign(1, effect) == math.copysign(1, paper_effect)
    if outside:
        return "agrees" if same_sign else "disagrees"
    return "disagrees" if abs(effect - paper_effect) > Z * se else "unresolved"
