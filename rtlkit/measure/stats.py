"""The verdict rule: an effect's interval with the training noise in it, the sign and the size
judged apart, and an equivalence test for claims of no difference.

An *effect* is a difference of two accuracies (fractions), arm a minus arm b. Its standard error
has two parts, and every verdict about trained models carries both:

- **the test images' part** (``se_test``): the binomial SE of each arm's accuracy on the ``n``
  shared test images (Agresti-Coull's, never 0 at 0 % or 100 %), combined as independent. The
  test set is shared by every replicate, so this part does not average out over seeds;
- **the training seeds' part** (``se_seed``), obtained one of two ways, and said which:

  - ``measured``: the claim's own replicates, at least 3, paired by replicate (replicate r of
    each arm trains with seed r, its own source where the claim involves the source). The part is
    the SD of the per-replicate differences over sqrt(replicates);
  - ``floored``: a cell the budget cannot replicate gets its notebook's floor (:class:`SeedFloor`):
    the largest SD of a paired difference measured on >= 3 replicates of at least two of that
    notebook's claim cells. A single-seed difference carries the whole SD.

The interval is effect +- q * SE with q the t quantile at the Welch-Satterthwaite degrees of
freedom of the two parts (the seed part has replicates - 1 of them; the test part is treated as
known). With 3 replicates q is about 4.3, not 2: z = 2 would be anti-conservative.

Verdicts, from the interval at ``LEVEL`` (95 %, two-sided):

- **the sign** (:func:`sign_verdict`): *agrees* / *disagrees* when the interval excludes zero on
  the paper's side / the other side; *unresolved* when it holds zero;
- **the size** (:func:`size_verdict`), a separate question: is the paper's effect *inside* our
  interval or *outside* it, or is it *not comparable* (another dataset, eps unit or threat model);
- **no difference** claims (:func:`equivalence_verdict`), two one-sided tests against a margin
  declared in code before the data: *equivalent* when the 90 % interval lies inside +- margin,
  *different* when it does not and the 95 % interval excludes zero, *unresolved* otherwise.

The rule is calibrated on A/A pairs (:func:`aa_pairs`): two cells of one configuration that differ
only in their seed, judged as if they were a claim, may resolve at most 5 % of the time.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from rtlkit.core.errors import check, check_int, is_real

LEVEL = 0.95                       # two-sided interval of every verdict
SEED_SOURCES = ("measured", "floored")
SIGN_VERDICTS = ("agrees", "disagrees", "unresolved")
SIZE_VERDICTS = ("inside", "outside", "not comparable", "no size")
EQUIVALENCE_VERDICTS = ("equivalent", "different", "unresolved")
MIN_REPLICATES = 3                 # a measured seed part, and each cell of a floor


def accuracy_se(p: float, n: int) -> float:
    """The SE of an accuracy ``p`` on ``n`` test images, Agresti-Coull's ((p n + 2) / (n + 4)): never
    0 at 0 % or 100 %."""
    check(is_real(p) and 0 <= p <= 1, f"an accuracy is in [0, 1], not {p!r}")
    check_int("n", n, 1)
    q = (p * n + 2) / (n + 4)
    return math.sqrt(q * (1 - q) / (n + 4))


def images_se(pa: float, pb: float, n: int) -> float:
    """The test images' part of the SE of ``pa - pb`` (two accuracies on ``n`` shared images), the
    two binomial SEs combined as independent: conservative, since two models judged on one test
    set agree on many images."""
    return math.sqrt(accuracy_se(pa, n) ** 2 + accuracy_se(pb, n) ** 2)


@dataclass(frozen=True)
class SeedFloor:
    """A notebook's seed-variance floor: ``sd``, the largest SD of a paired difference among
    ``cells`` claim cells of >= 3 replicates each; ``df``, their pooled degrees of freedom (the sum
    of replicates - 1: the largest of several SDs already errs high, so the t quantile need not
    treat it as one cell's); ``source`` names the cells."""
    sd: float
    df: int
    cells: int
    source: str

    def __post_init__(self):
        check(is_real(self.sd) and math.isfinite(self.sd) and self.sd > 0, f"a seed floor is a positive SD, not {self.sd!r}")
        check_int("floor cells", self.cells, 2)
        check_int("floor degrees of freedom", self.df, self.cells * (MIN_REPLICATES - 1))


def paired_differences(a, b) -> np.ndarray:
    """Per-replicate differences a_r - b_r of two arms' accuracies, paired by replicate."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    check(a.shape == b.shape and a.ndim == 1, f"paired arms need one value per replicate each, not {a.shape} and {b.shape}")
    return a - b


def seed_floor(cells: dict[str, tuple], source: str = "") -> SeedFloor:
    """The floor from ``cells`` (name -> (arm a, arm b), per-replicate accuracies paired by
    replicate): at least two cells of at least 3 replicates each; the largest SD of their paired
    differences, with the cells' pooled degrees of freedom."""
    check(len(cells) >= 2, f"a seed floor needs at least two claim cells, not {len(cells)}")
    sds = {}
    for name, (a, b) in cells.items():
        d = paired_differences(a, b)
        check(len(d) >= MIN_REPLICATES, f"seed floor: cell {name!r} has {len(d)} replicates, not >= {MIN_REPLICATES}")
        sds[name] = (float(d.std(ddof=1)), len(d))
    worst = max(sds, key=lambda k: sds[k][0])
    sd = sds[worst][0]
    check(sd > 0, "seed floor: every cell's paired differences are equal; no spread was measured")
    df = sum(r - 1 for _, r in sds.values())
    return SeedFloor(sd, df, len(cells), source or f"the largest SD of {len(cells)} claim cells' paired differences: {worst}")


@dataclass(frozen=True)
class Effect:
    """An effect with both parts of its SE (module docstring). ``seed_df``: the degrees of freedom
    of the seed part (the replicates behind it, minus one); ``replicates``: the claim's own (1 when
    floored); ``floor_from``: where a floor was measured."""
    effect: float
    se_test: float
    se_seed: float
    seed_df: int
    seed_source: str
    replicates: int = 1
    floor_from: str = ""

    def __post_init__(self):
        for name in ("effect", "se_test", "se_seed"):
            v = getattr(self, name)
            check(is_real(v) and math.isfinite(v), f"{name} must be a finite number, not {v!r}")
        check(self.se_test >= 0, f"se_test must be >= 0, not {self.se_test}")
        check(self.se_seed > 0, f"se_seed must be > 0: a verdict about trained models needs its training noise, "
              f"not {self.se_seed}")
        check_int("seed degrees of freedom", self.seed_df, 1)
        check(self.seed_source in SEED_SOURCES, f"seed_source must be one of {SEED_SOURCES}, not {self.seed_source!r}")

    @property
    def se(self) -> float:
        return math.sqrt(self.se_test ** 2 + self.se_seed ** 2)

    @property
    def df(self) -> float:
        """Welch-Satterthwaite's degrees of freedom: the seed part's, grown by the test part's share."""
        return self.seed_df * (self.se / self.se_seed) ** 4

    def quantile(self, level: float = LEVEL) -> float:
        """The two-sided t quantile at this effect's degrees of freedom."""
        check(is_real(level) and 0 < level < 1, f"level must be in (0, 1), not {level!r}")
        return float(sps.t.ppf(0.5 + level / 2, self.df))

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        h = self.quantile(level) * self.se
        return self.effect - h, self.effect + h


def measured(a, b, n: int) -> Effect:
    """The effect mean(a) - mean(b) of two arms' per-replicate accuracies paired by replicate (>= 3),
    on ``n`` shared test images: the seed part from the paired differences' spread."""
    d = paired_differences(a, b)
    check(len(d) >= MIN_REPLICATES, f"a measured seed part needs >= {MIN_REPLICATES} replicates, not {len(d)}")
    sd = float(d.std(ddof=1))
    check(sd > 0, f"the {len(d)} replicates' differences are all equal: no seed spread measured")
    pa, pb = float(np.mean(a)), float(np.mean(b))
    return Effect(pa - pb, images_se(pa, pb, n), sd / math.sqrt(len(d)), len(d) - 1, "measured", len(d))


def floored(pa: float, pb: float, n: int, floor: SeedFloor) -> Effect:
    """The effect pa - pb of two single-seed accuracies on ``n`` shared test images, its seed part
    the notebook's floor (one paired difference carries the whole SD)."""
    check(isinstance(floor, SeedFloor), f"a floored effect needs a SeedFloor, not {type(floor).__name__}")
    return Effect(float(pa - pb), images_se(pa, pb, n), floor.sd, floor.df, "floored", 1, floor.source)


def sign_verdict(e: Effect, direction: int, level: float = LEVEL) -> str:
    """The sign: "agrees" / "disagrees" when the interval excludes zero on the claimed side
    (``direction`` +1: a rises, -1: a falls) / the other; "unresolved" when it holds zero."""
    return sign_of(e.interval(level), direction)


def sign_of(interval: tuple[float, float], direction: int) -> str:
    """:func:`sign_verdict` of an interval (low, high)."""
    check(direction in (-1, 1), f"direction must be +1 or -1, not {direction!r}")
    lo, hi = interval
    if lo > 0 or hi < 0:
        return "agrees" if (1 if lo > 0 else -1) == direction else "disagrees"
    return "unresolved"


def size_verdict(e: Effect, paper_effect: float | None, comparable: bool, level: float = LEVEL) -> str:
    """The size: "inside" / "outside" (the paper's effect against our interval), "not comparable"
    (another dataset, eps unit or threat model), "no size" (the paper prints none)."""
    if paper_effect is None or (isinstance(paper_effect, float) and math.isnan(paper_effect)):
        return "no size"
    if not comparable:
        return "not comparable"
    lo, hi = e.interval(level)
    return "inside" if lo <= paper_effect <= hi else "outside"


def equivalence_verdict(e: Effect, margin: float, level: float = LEVEL) -> str:
    """A claim of no difference, by two one-sided tests at 1 - level over 2 each side: "equivalent"
    when the (2 level - 1) interval (90 % at the default) lies inside +- ``margin``; otherwise
    "different" when the ``level`` interval excludes zero, "unresolved" when it does not. ``margin``
    is declared before the data (in the code that states the claim)."""
    return equivalence_of(e.interval(2 * level - 1), e.interval(level), margin)


def equivalence_of(inner: tuple[float, float], outer: tuple[float, float], margin: float) -> str:
    """:func:`equivalence_verdict` of the (2 level - 1) interval ``inner`` and the ``level`` one ``outer``."""
    check(is_real(margin) and math.isfinite(margin) and margin > 0, f"an equivalence margin is > 0, not {margin!r}")
    if -margin < inner[0] and inner[1] < margin:
        return "equivalent"
    return "different" if outer[0] > 0 or outer[1] < 0 else "unresolved"


# --------------------------------------------------------------------------- A/A calibration

def aa_pairs(table: pd.DataFrame, config: list[str], col: str, floor: SeedFloor, seed: str = "replicate") -> pd.DataFrame:
    """Every pair of ``table``'s rows that share each ``config`` column (one arm of one
    configuration) and differ only in ``seed``, judged by the rule as if it were a claim: the effect
    of one seed's ``col`` over the other's, floored (a single seed a side), its sign against zero.
    Columns: the config, ``seed_a``, ``seed_b``, ``a``, ``b``, ``effect``, ``se``, ``low``, ``high``,
    ``resolved`` (the interval excludes zero: a false resolution, since the two are one config)."""
    missing = [c for c in [*config, col, seed, "n_test"] if c not in table]
    check(not missing, f"A/A pairs: the table has no column {missing}")
    rows = []
    for key, part in table.groupby(config, dropna=False, sort=False):
        part = part.sort_values(seed)
        check(part[seed].is_unique, f"A/A pairs: config {key} has two rows of one {seed}")
        for (_, ra), (_, rb) in itertools.combinations(part.iterrows(), 2):
            n = int(min(ra.n_test, rb.n_test))
            e = floored(float(ra[col]), float(rb[col]), n, floor)
            lo, hi = e.interval()
            rows.append({**dict(zip(config, key if isinstance(key, tuple) else (key,))), "seed_a": ra[seed],
                         "seed_b": rb[seed], "a": float(ra[col]), "b": float(rb[col]), "n": n, "effect": e.effect,
                         "se": e.se, "low": lo, "high": hi, "resolved": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows)
