"""A finding: one claim of a paper as one row, the paper's effect against ours, with its
interval and its verdict by the rule of ``rtlkit.measure.stats``; and the helpers every study's
``findings()`` builds its rows with (ours, theirs, pick, contrast, average, paired cells)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from rtlkit.measure import stats
from rtlkit.core.errors import check, check_int, is_real


SIGN = ("agrees", "disagrees")
EQUIVALENCE = ("equivalent", "different")
VERDICTS = SIGN + EQUIVALENCE + ("unresolved",)
# a row tests a claim of the four papers with the paper's method ("paper": counted in the scorecard);
# or the claim with a variant of ours ("variant": beside it, never counted); or is a measurement or a
# hypothesis of ours ("beyond": shown in its own section, never counted): 07's AutoAttack-against-PGD
# gaps (a cascade that starts from PGD's survivors can only lower it) and 04's scarcity explanation
SCOPES = ("paper", "variant", "beyond")
# where a row's training-seed part comes from: its own replicates, its notebook's floor, not yet
# applied (a study's findings before rtlkit.suite.findings applies the floor), or none (a fixed model's
# measurement, or a measure in other units than accuracy, which no accuracy floor can bound)
SEED_SOURCES = stats.SEED_SOURCES + ("pending", "none")
# the equivalence margin of a "no difference" claim, unless it declares its own: 5 points of accuracy,
# set while the committed run was being regenerated, before any of its no-difference rows was read.
# The papers' own spreads sit inside it: CARTL Table 1's four scenarios span -1.6 to +2.2, Shafahi
# Tables 5/7's CIFAR-100 LwF rows stay within 1 point of the source's robustness.
MARGIN = 0.05
Z = 2.0   # the 2-SE rule the calibration compares against (unpaired binomial SEs, no seeds)


def binomial_se(p: float, n: int) -> float:
    """The SE of an accuracy ``p`` measured on ``n`` independent test images: sqrt(p(1-p)/n)."""
    check(is_real(p) and 0 <= p <= 1, f"an accuracy is in [0, 1], not {p!r}")
    check_int("n", n, 1)
    return math.sqrt(p * (1 - p) / n)


@dataclass(frozen=True)
class Finding:
    """One claim: where it comes from, the paper's effect and ours with both parts of its SE, and the
    verdict (module docstring).

    Effects are differences of accuracies (fractions). ``paper_effect`` None: the paper states only
    the direction (``direction`` +1 or -1); 0: it claims no difference (tested for equivalence
    within ``margin``, :data:`MARGIN` when None). ``se_test``: the test images' part of the SE;
    ``se_seed``, ``seed_df``, ``seed_source``, ``floor_from``: the training seeds' part (None while
    "pending": :func:`with_floor` applies the notebook's floor). ``comparable``: the row's dataset,
    eps unit and threat model are the paper's, so its size can be compared. ``testable`` False marks
    a row whose setting cannot show the effect: "not a test". ``ours`` and ``paper_numbers`` hold
    the numbers behind each effect."""
    notebook: str
    paper: str
    where: str            # table or figure
    claim: str            # one line
    paper_effect: float | None
    effect: float         # ours
    se_test: float
    n: int                # test images
    seeds: int
    direction: int = 0
    ours: str = ""
    paper_numbers: str = ""
    note: str = ""
    testable: bool = True
    scope: str = "paper"
    se_seed: float | None = None
    seed_df: int = 0
    seed_source: str = "pending"
    floor_from: str = ""
    margin: float | None = None
    comparable: bool = False
    unit: str = "accuracy"   # what the effect is a difference of: "accuracy" takes the notebook's floor

    def __post_init__(self):
        for name in ("effect", "se_test") + (("paper_effect",) if self.paper_effect is not None else ()):
            check(is_real(getattr(self, name)) and math.isfinite(getattr(self, name)),
                  f"{name} must be a finite number, not {getattr(self, name)!r}")
        check(self.se_test >= 0, f"se_test must be >= 0, not {self.se_test}")
        check_int("n", self.n, 1)
        check_int("seeds", self.seeds, 1)
        if self.paper_effect is None:
            check(self.direction in (-1, 1), f"a direction-only claim needs direction +1 or -1, not {self.direction!r}")
        check(self.scope in SCOPES, f"scope must be one of {SCOPES}, not {self.scope!r}")
        check(self.seed_source in SEED_SOURCES, f"seed_source must be one of {SEED_SOURCES}, not {self.seed_source!r}")
        if self.seed_source in stats.SEED_SOURCES:
            check(is_real(self.se_seed) and math.isfinite(self.se_seed) and self.se_seed > 0,
                  f"a {self.seed_source} seed part must be > 0, not {self.se_seed!r}")
            check_int("seed_df", self.seed_df, 1)
        if self.margin is not None:
            check(is_real(self.margin) and self.margin > 0, f"an equivalence margin is > 0, not {self.margin!r}")

    @property
    def claims_no_difference(self) -> bool:
        return self.paper_effect is not None and self.paper_effect == 0

    @property
    def sign(self) -> int:
        return self.direction if self.paper_effect is None else int(np.sign(self.paper_effect))

    def measure(self) -> stats.Effect | None:
        """Our effect with both parts of its SE, or None where the seed part is missing."""
        if self.seed_source not in stats.SEED_SOURCES:
            return None
        return stats.Effect(self.effect, self.se_test, float(self.se_seed), self.seed_df, self.seed_source,
                            self.seeds, self.floor_from)

    @property
    def se(self) -> float:
        """The SE of our effect: both parts, or the test part alone where no seed part is known."""
        return math.sqrt(self.se_test ** 2 + (self.se_seed or 0.0) ** 2)

    def interval(self, level: float = stats.LEVEL) -> tuple[float, float]:
        """Our effect's interval: the t quantile with a seed part, the normal one without."""
        e = self.measure()
        if e is not None:
            return e.interval(level)
        h = float(sps.norm.ppf(0.5 + level / 2)) * self.se
        return self.effect - h, self.effect + h

    @property
    def verdict(self) -> str:
        if not self.testable:
            return "not a test"
        if self.measure() is None and (self.scope != "beyond" or self.seed_source == "pending"):
            return "unresolved"   # a claim about trained models without its training noise resolves nothing
        # (beyond the papers, a measurement on one fixed model may rest on its test images alone)
        if self.claims_no_difference:
            return stats.equivalence_of(self.interval(2 * stats.LEVEL - 1), self.interval(), self.margin or MARGIN)
        return stats.sign_of(self.interval(), self.sign)

    @property
    def size(self) -> str:
        if self.claims_no_difference:
            return "no size"
        e = self.measure()
        if e is None:
            return "not comparable" if self.paper_effect is not None and not self.comparable else "no size"
        return stats.size_verdict(e, self.paper_effect, self.comparable)

    def row(self) -> dict:
        lo, hi = self.interval()
        return {"notebook": self.notebook, "paper": self.paper, "where": self.where, "claim": self.claim,
                "paper_effect": self.paper_effect if self.paper_effect is not None else float("nan"),
                "direction": self.sign, "effect": self.effect, "se": self.se, "se_test": self.se_test,
                "se_seed": self.se_seed if self.se_seed is not None else float("nan"), "seed_source": self.seed_source,
                "seed_df": self.seed_df, "low": lo, "high": hi,
                "margin": (self.margin or MARGIN) if self.claims_no_difference else float("nan"),
                "n": self.n, "seeds": self.seeds, "verdict": self.verdict, "size": self.size, "ours": self.ours,
                "paper_numbers": self.paper_numbers, "note": self.note, "floor_from": self.floor_from,
                "scope": self.scope}


def with_floor(f: Finding, floor: stats.SeedFloor | None, borrowed_from: str = "") -> Finding:
    """``f`` with its pending seed part floored by ``floor`` (a single-seed difference carries the
    whole SD; an average of several, :func:`average`, too: their training noise may be shared). A row
    without a floor, or whose measure is not an accuracy, keeps no seed part and says why."""
    if f.seed_source != "pending":
        return f
    if f.unit != "accuracy":
        return dataclasses.replace(f, seed_source="none", floor_from=f"no seed floor in {f.unit} units")
    if floor is None:
        return dataclasses.replace(f, seed_source="none", floor_from="no replicated cells in this run")
    where = floor.source if not borrowed_from else f"borrowed from notebook {borrowed_from} (no replicated cells of " \
        f"this notebook in this run): {floor.source}"
    return dataclasses.replace(f, se_seed=floor.sd, seed_df=floor.df, seed_source="floored",
                               floor_from=f"SD {100 * floor.sd:.1f} pts, {where}")


# --------------------------------------------------------------------------- from a study's tidy tables

def _origin(df: pd.DataFrame) -> str | None:
    for col in ("origin", "source"):
        if col in df and df[col].isin(["paper"]).any() | df[col].isin(["rtlkit"]).any():
            return col
    return None


def ours(df: pd.DataFrame) -> pd.DataFrame:
    """Our rows of a figure's CSV (the paper's, ``source`` or ``origin`` = paper, left out)."""
    col = _origin(df)
    return df if col is None else df[df[col] != "paper"]


def theirs(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows of a figure's CSV."""
    col = _origin(df)
    return df.iloc[:0] if col is None else df[df[col] == "paper"]


def pick(df: pd.DataFrame, **eq) -> pd.DataFrame:
    """Rows whose columns equal the given values (numbers compared as numbers: k 6 matches 6.0 and
    "6"; None matches an empty cell)."""
    keep = np.ones(len(df), dtype=bool)
    for col, want in eq.items():
        if col not in df:
            return df.iloc[:0]
        v = df[col]
        if want is None:
            keep &= v.isna().to_numpy()
        elif isinstance(want, (int, float, np.integer, np.floating)) and not isinstance(want, (bool, np.bool_)):
            num = pd.to_numeric(v, errors="coerce")
            keep &= np.isclose(num.to_numpy(dtype=float), float(want), rtol=0, atol=1e-12)
        else:
            keep &= (v.astype(str) == str(want)).to_numpy()
    return df[keep]


def mean_se(rows: pd.DataFrame, col: str) -> tuple[float, float, int, int]:
    """(mean, SE, n, seeds) of an accuracy over the rows (one per seed) of a table: the binomial SE
    of the mean accuracy on n test images (Agresti-Coull's, never 0 at 0 % or 100 %), plus the seeds' spread (variance / seeds) where there are
    several. The test set is shared by the seeds, so its sampling error does not average out."""
    check(len(rows) >= 1, f"no rows to measure {col} on")
    v = rows[col].astype(float).to_numpy()
    n = int(pd.to_numeric(rows["n_test"], errors="coerce").min()) if "n_test" in rows else 0
    check(n >= 1, f"rows without n_test cannot give an SE for {col}")
    p = float(v.mean())
    q = (p * n + 2) / (n + 4)   # Agresti-Coull: at 0 % or 100 % the plain binomial SE would be 0
    var = q * (1 - q) / (n + 4) + (float(v.var(ddof=1)) / len(v) if len(v) > 1 else 0.0)
    return p, math.sqrt(var), n, len(v)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


SEED_COLUMNS = ("replicate", "seed")   # what pairs two arms' rows: notebook 03's replicate, else the run's seed


def per_seed(rows: pd.DataFrame, col: str) -> pd.Series | None:
    """``col`` of ``rows`` by seed (the mean of a seed's rows), or None where the rows name no seed."""
    for s in SEED_COLUMNS:
        if s in rows and rows[s].notna().all() and len(rows):
            return rows.groupby(pd.to_numeric(rows[s]), sort=True)[col].mean().astype(float)
    return None


def paired_cell(a: pd.DataFrame, b: pd.DataFrame, col: str) -> tuple | None:
    """Two arms' ``col`` per seed, paired by seed, (a values, b values), where both hold the same
    >= 3 seeds, one row a seed: a claim cell a seed floor can be measured on; else None."""
    sa, sb = per_seed(a, col), per_seed(b, col)
    if sa is None or sb is None or list(sa.index) != list(sb.index) or len(sa) < stats.MIN_REPLICATES:
        return None
    if len(sa) != len(a) or len(sb) != len(b):   # several rows a seed: not one replicate a seed
        return None
    return sa.to_numpy(), sb.to_numpy()


def paired_cells(specs: dict) -> dict:
    """{claim: (a rows, b rows, col)} -> {claim: (a values, b values)} of the cells :func:`paired_cell` pairs."""
    out = {}
    for name, (a, b, col) in specs.items():
        cell = paired_cell(a, b, col)
        if cell is not None:
            out[name] = cell
    return out


def seed_part(a: pd.DataFrame, b: pd.DataFrame, col: str) -> tuple[float, int] | None:
    """The measured seed part of mean(a) - mean(b): (SD of the per-seed differences / sqrt(seeds),
    seeds - 1) where :func:`paired_cell` pairs the arms and their differences vary; else None."""
    cell = paired_cell(a, b, col)
    if cell is None:
        return None
    d = cell[0] - cell[1]
    sd = float(d.std(ddof=1))
    return (sd / math.sqrt(len(d)), len(d) - 1) if sd > 0 else None


def contrast(notebook: str, paper: str, where: str, claim: str, a: pd.DataFrame, b: pd.DataFrame,
             col: str = "robust_acc", paper_a: float | None = None, paper_b: float | None = None,
             direction: int = 0, note: str = "", testable: bool = True, margin: float | None = None,
             scope: str = "paper") -> Finding:
    """The effect mean(a) - mean(b) of ``col``: its test images' part (both arms' binomial SEs as
    independent: conservative for two models judged on one test set), and its seed part measured
    where both arms hold the same >= 3 seeds (paired by seed), else pending the notebook's floor;
    the paper's effect ``paper_a - paper_b`` (None: ``direction`` only; 0: no difference, within
    ``margin``)."""
    pa, _, na, ka = mean_se(a, col)
    pb, _, nb, kb = mean_se(b, col)
    n = min(na, nb)
    pe = None if paper_a is None or paper_b is None else float(paper_a - paper_b)
    seed = seed_part(a, b, col)
    extra = dict(se_seed=seed[0], seed_df=seed[1], seed_source="measured") if seed else {}
    return Finding(notebook, paper, where, claim, pe, pa - pb, stats.images_se(pa, pb, n), n, min(ka, kb),
                   direction if pe is None else 0, ours=f"{_pct(pa)} vs {_pct(pb)}", note=note, testable=testable,
                   paper_numbers="" if pe is None else "no difference" if paper_a == paper_b == 0 else
                   f"{_pct(paper_a)} vs {_pct(paper_b)}", margin=margin, scope=scope, **extra)


def samples(notebook: str, paper: str, where: str, claim: str, a, b, direction: int, note: str = "",
            unit: str = "per-image share") -> Finding:
    """The effect mean(a) - mean(b) of two sets of per-example measurements that are not accuracies
    (a share of the gradient, say): the SE of a difference of means, sqrt(var_a / n_a + var_b / n_b).
    No accuracy floor bounds its training noise (``unit``), so a counted row stays unresolved."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    check(len(a) >= 2 and len(b) >= 2, f"{where}: need >= 2 measurements a side, not {len(a)} and {len(b)}")
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return Finding(notebook, paper, where, claim, None, float(a.mean() - b.mean()), se, min(len(a), len(b)), 1,
                   direction, ours=f"{a.mean():.3g} vs {b.mean():.3g}", note=note, unit=unit)


def average(notebook: str, paper: str, where: str, claim: str, parts: list[Finding], direction: int = 0,
            paper_effect: float | None = None, paper_numbers: str = "", note: str = "", scope: str = "paper",
            margin: float | None = None) -> Finding:
    """The mean of several findings' effects (one per target, say): its test part from theirs as
    independent; its seed part the mean of theirs (their training noise may be shared, a source
    say, so it is not divided down), measured only where every part's is, else pending the floor."""
    check(len(parts) >= 1, f"{where}: nothing to average")
    k = len(parts)
    eff = sum(f.effect for f in parts) / k
    se = math.sqrt(sum(f.se_test ** 2 for f in parts)) / k
    extra = {}
    if all(f.seed_source == "measured" for f in parts):
        extra = dict(se_seed=sum(f.se_seed for f in parts) / k, seed_df=min(f.seed_df for f in parts),
                     seed_source="measured")
    return Finding(notebook, paper, where, claim, paper_effect, eff, se, min(f.n for f in parts),
                   min(f.seeds for f in parts), direction if paper_effect is None else 0,
                   ours="; ".join(f.ours for f in parts), paper_numbers=paper_numbers, note=note, scope=scope,
                   margin=margin, **extra)
