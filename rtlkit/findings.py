"""Verdicts computed from the numbers: one rule for every claim a notebook tests, and its A/A calibration.

An *effect* is a difference the paper reports a sign for (robustness with minus without a method,
say), ours a difference of two accuracies. The rule is ``rtlkit.stats``'s, and every counted verdict
about trained models carries both parts of its SE:

- **the test images' part**: each arm's binomial SE on the shared test images (Agresti-Coull's);
- **the training seeds' part**, said which in ``seed_source``: ``measured`` from the claim's own
  replicates (>= 3, the arms paired by seed: the SD of the per-seed differences over sqrt(seeds)),
  or ``floored`` by the notebook's seed floor (:func:`floors`: the largest SD of a paired difference
  among >= 2 of its replicated claim cells; ``floor_from`` names them). A notebook whose run holds no
  replicated cells borrows the largest floor of the run and says so (``floor_from``).

The interval is effect +- t * SE at the Welch-Satterthwaite degrees of freedom (95 %, two-sided).
The **sign** and the **size** are separate questions:

- **agrees** / **disagrees**: the interval excludes zero on the paper's side / the other;
  **unresolved**: it holds zero. A claim the paper states as a direction only is judged the same way;
- ``size``: is the paper's effect **inside** our interval, **outside** it, or **not comparable**
  (another dataset, eps unit or threat model: every row of the offline profiles), or does the paper
  print **no size**;
- a claim of **no difference** is tested for equivalence (two one-sided tests) against a margin
  declared in code before the data (:data:`MARGIN` unless the claim declares its own): **equivalent**
  / **different** / **unresolved**;
- **not a test**: the setting cannot show the effect at all.

A row about one fixed model (07's attack gaps) or beyond the papers may carry no seed part
(``seed_source`` "none"); a counted row of the papers never does: without a floor it stays
unresolved. :func:`calibration` judges every pair of one configuration and another seed that the
run offers, as if it were a claim: the rule may resolve at most 5 % of them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats
from .errors import ConfigError, check, check_int, is_real

SIGN = ("agrees", "disagrees")
EQUIVALENCE = ("equivalent", "different")
VERDICTS = SIGN + EQUIVALENCE + ("unresolved",)
# a row tests a claim of the four papers with the paper's method ("paper": counted in the scorecard);
# or the claim with a variant of ours ("variant": beside it, never counted); or is a measurement or a
# hypothesis of ours ("beyond": shown in its own section, never counted): 07's AutoAttack-against-PGD
# gaps (a cascade that starts from PGD's survivors can only lower it) and 04's scarcity explanation
SCOPES = ("paper", "variant", "beyond")
# where a row's training-seed part comes from: its own replicates, its notebook's floor, not yet
# applied (a study's findings before rtlkit.findings applies the floor), or none (a fixed model's
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


# --------------------------------------------------------------------------- every notebook's findings

NOTEBOOKS = {"01": "layer_freezing", "02": "bn_ablation", "03": "cartl", "04": "pretraining", "05": "provable",
             "06": "shafahi", "07": "report_cards"}
COLUMNS = ["notebook", "paper", "where", "claim", "paper_effect", "direction", "effect", "se", "se_test", "se_seed",
           "seed_source", "seed_df", "low", "high", "margin", "n", "seeds", "verdict", "size", "ours", "paper_numbers",
           "note", "floor_from", "scope", "superseded_by"]


def _base(where: str) -> str:
    """"Table 2 (3 seeds)" -> "Table 2": the paper's table or figure a row tests."""
    return str(where).split(" (")[0].strip()


def supersede(df: pd.DataFrame) -> pd.DataFrame:
    """Mark the rows that a stronger test of the same claim replaces (``superseded_by``: that
    row's ``where``; empty for the rows that stand).

    One claim (same notebook, paper, table or figure, and claim text) may be tested twice: once on
    one seed and 500 images, once on 3 source and fine-tuning seeds and 1,000 images (notebook
    03's replicated cells). Two verdicts for one claim would let a reader pick the one they like,
    and the counts would count the claim twice. The row with the most seeds, then the most test
    images, stands; a row with less evidence in that order is superseded (a tie supersedes
    nothing). Its numbers and verdict stay in the table, but the verdict counts leave it out."""
    out = df.copy()
    out["superseded_by"] = ""
    strength = pd.Series(list(zip(out["seeds"].astype(int), out["n"].astype(int))), index=out.index)
    key = [out["notebook"].astype(str).str.zfill(2), out["paper"].astype(str), out["where"].map(_base), out["claim"].astype(str)]
    for idx in out.groupby(key, sort=False).groups.values():
        best = max(idx, key=strength.get)
        weaker = [i for i in idx if strength[i] < strength[best]]
        out.loc[weaker, "superseded_by"] = out.at[best, "where"]
    return out


def _frame(found: list[Finding]) -> pd.DataFrame:
    """Findings as rows of ``findings.csv``, the superseded ones marked."""
    return supersede(pd.DataFrame([f.row() for f in found], columns=COLUMNS[:-1]))[COLUMNS]


def _text(column: pd.Series, empty: str) -> pd.Series:
    """A text column as strings, an empty cell (NaN in a CSV read back) as ``empty``."""
    return column.astype(object).where(column.notna(), empty).astype(str)


def standing(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose verdicts count in the paper scorecard: claims of the papers (scope "paper")
    that no stronger test of the same claim supersedes."""
    if "scope" in df:
        df = df[_text(df.scope, "paper") == "paper"]
    if "superseded_by" not in df:
        return df
    return df[_text(df.superseded_by, "") == ""]


def variants(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that test a paper's claim with a variant of its method: shown beside it, never counted."""
    return df[_text(df.scope, "paper") == "variant"] if "scope" in df else df.iloc[:0]


def beyond(df: pd.DataFrame) -> pd.DataFrame:
    """The rows beyond the papers: our measurements and hypotheses, shown apart and never counted."""
    return df[_text(df.scope, "paper") == "beyond"] if "scope" in df else df.iloc[:0]


def multiplicity(df: pd.DataFrame, cal: pd.DataFrame | None = None) -> str:
    """How many claims the scorecard tests, and how many verdicts chance alone would give, were no
    claim true: at the rule's nominal 5 %, and at the rate it showed on the run's A/A pairs."""
    n = len(standing(df)[lambda d: d.verdict.isin(VERDICTS)])
    out = (f"Multiplicity: the scorecard tests {n} claims. Were none of them true, a rule that resolves 5 % of A/A "
           f"pairs would still give about {0.05 * n:.0f} verdicts by chance ({0.025 * n:.0f} agrees, "
           f"{0.025 * n:.0f} disagrees)")
    if cal is not None and len(cal):
        rate = float(cal.resolved.astype(bool).mean())
        out += f"; this rule resolved {100 * rate:.1f} % of the run's {len(cal)} A/A pairs"
    return out + "."


def reader(figures_dir):
    """read(name) -> the DataFrame of ``<figures_dir>/<name>.csv``, or None where it is missing."""
    from pathlib import Path
    folder = Path(figures_dir)

    def read(name: str) -> pd.DataFrame | None:
        path = folder / f"{name}.csv"
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ConfigError(f"{path}: not a readable CSV table ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:200]}); regenerate it (its notebook) or restore it "
                              "(git checkout)") from e
    return read


def _study(notebook: str):
    import importlib
    check(notebook in NOTEBOOKS, f"unknown notebook {notebook!r}; one of {', '.join(NOTEBOOKS)}")
    return importlib.import_module(f"rtlkit.studies.{NOTEBOOKS[notebook]}")


def replicated(notebook: str, read) -> list[tuple]:
    """A notebook's replicated tables (its study's ``replicated(read)``): (name, our rows, the
    columns of one configuration, the claim cells a floor is measured on, the seed column)."""
    out = []
    for t in getattr(_study(notebook), "replicated", lambda r: [])(read):
        name, rows, config, cells, *seed = t
        out.append((name, rows, config, cells, seed[0] if seed else "replicate"))
    return out


def floors(figures_dir) -> dict:
    """Each notebook's seed floor (``rtlkit.stats.seed_floor``) from its replicated claim cells in
    ``figures_dir``: the largest SD of a paired difference among >= 2 cells of >= 3 replicates
    (its tables' cells pooled); None where the run holds fewer."""
    read = reader(figures_dir)
    out = {}
    for nb in NOTEBOOKS:
        cells = {}
        for name, _, _, c, _ in replicated(nb, read):
            cells.update({f"{name}: {k}": v for k, v in c.items()})
        spread = any(np.std(stats.paired_differences(*ab)) > 0 for ab in cells.values())
        # fewer than two cells, or no spread at all (a tiny profile's tied cells): no floor to judge by
        out[nb] = stats.seed_floor(cells) if len(cells) >= 2 and spread else None
    return out


def floor_of(notebook: str, all_floors: dict) -> tuple:
    """(floor, borrowed from): the notebook's own floor, else the largest of the run's (named)."""
    if all_floors.get(notebook) is not None:
        return all_floors[notebook], ""
    others = {nb: f for nb, f in all_floors.items() if f is not None}
    if not others:
        return None, ""
    nb = max(others, key=lambda k: others[k].sd)
    return others[nb], nb


def of_notebook(notebook: str, figures_dir, all_floors: dict | None = None) -> list[Finding]:
    """The findings of one notebook ("03"), computed by its study's ``findings`` from the CSVs its
    run left in ``figures_dir`` (none where they are missing), each single-seed row floored by the
    notebook's seed floor (``all_floors``: :func:`floors`, computed when not given)."""
    found = list(_study(notebook).findings(reader(figures_dir)))
    floor, borrowed = floor_of(notebook, floors(figures_dir) if all_floors is None else all_floors)
    return [with_floor(f, floor, borrowed) for f in found]


CALIBRATION_COLUMNS = ["notebook", "table", "measure", "config", "seed_a", "seed_b", "a", "b", "n", "effect", "se",
                       "low", "high", "resolved", "resolved_2se_rule", "floor_sd", "floor_df", "floor_source"]
CALIBRATION_MEASURES = ("robust_acc", "clean_acc")


def calibration(figures_dir) -> pd.DataFrame:
    """The A/A calibration (``findings_calibration.csv``): every pair of cells the run offers that
    share a configuration and an arm and differ only in their seed, in every notebook whose study
    has replicated tables, on robust and clean accuracy. Each pair is judged by the rule as if it
    were a claim, floored by its notebook's seed floor (``resolved``), and by the 2-SE rule of
    unpaired binomial SEs without the seeds (``resolved_2se_rule``, the rule verdicts used before).
    Both count false resolutions: the two cells are one configuration."""
    read = reader(figures_dir)
    all_floors = floors(figures_dir)
    parts = []
    for nb in NOTEBOOKS:
        floor = all_floors[nb]
        if floor is None:   # a profile with fewer replicates (smoke: 2 seeds) has no floor to judge by
            continue
        for table, rows, config, _, seed in replicated(nb, read):
            for col in CALIBRATION_MEASURES:
                if col not in rows:
                    continue
                p = stats.aa_pairs(rows, config, col, floor, seed=seed)
                if not len(p):
                    continue
                cfg = p[config].astype(str).apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items() if v != "nan"), axis=1)
                se2 = [math.sqrt(binomial_se(a, n) ** 2 + binomial_se(b, n) ** 2) for a, b, n in zip(p.a, p.b, p.n)]
                parts.append(pd.DataFrame({"notebook": nb, "table": table, "measure": col, "config": cfg,
                                           **{c: p[c] for c in ("seed_a", "seed_b", "a", "b", "n", "effect", "se",
                                                                "low", "high", "resolved")},
                                           "resolved_2se_rule": (p.effect.abs() > Z * pd.Series(se2, index=p.index)),
                                           "floor_sd": floor.sd, "floor_df": floor.df, "floor_source": floor.source}))
    return pd.concat(parts, ignore_index=True)[CALIBRATION_COLUMNS] if parts else pd.DataFrame(columns=CALIBRATION_COLUMNS)


PROVENANCE_COLUMNS = ["notebook", "commit", "finished", "host", "cpu_mode", "threads", "torch", "device",
                      "wall_seconds"]


def provenance(figures_dir) -> pd.DataFrame:
    """The run behind the figures, from their manifests (``provenance.csv``): per notebook (or bench
    runner), its commit, when its last figure was written, the host's CPU, the CPU mode, threads,
    torch, the device and the wall time from the notebook's start to its last figure."""
    import json
    from pathlib import Path
    rows = {}
    for path in sorted(Path(figures_dir).glob("0[0-9]_*.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable manifest ({e}); regenerate it (its notebook)") from e
        if not isinstance(m, dict) or "notebook" not in m:
            continue
        cpu = m.get("cpu") or {}
        r = rows.setdefault(m["notebook"], {"notebook": m["notebook"], "commit": str(m.get("commit", ""))[:7] +
                                            ("-dirty" if str(m.get("commit", "")).endswith("-dirty") else ""),
                                            "finished": "", "host": cpu.get("cpu_model", ""),
                                            "cpu_mode": cpu.get("cpu_isa_pinned") or "native",
                                            "threads": m.get("threads", ""), "torch": m.get("torch", ""),
                                            "device": m.get("device", ""), "wall_seconds": 0.0})
        r["finished"] = max(r["finished"], str(m.get("created", "")))
        r["wall_seconds"] = max(r["wall_seconds"], float(m.get("wall_seconds_since_notebook_start") or 0.0))
    return pd.DataFrame(list(rows.values()), columns=PROVENANCE_COLUMNS)


def provenance_section(prov: pd.DataFrame) -> list[str]:
    """findings.md's account of the run: one line per notebook."""
    if prov is None or not len(prov):
        return []
    lines = ["## The run", "", "From each figure's manifest (`provenance.csv`); wall time from the notebook's start "
             "to its last figure, with the run cache as the notebooks before it left it.", "",
             "| notebook | commit | finished | host | CPU mode | threads | torch | wall time |",
             "|---|---|---|---|---|---:|---|---:|"]
    for r in prov.itertuples():
        wall = f"{float(r.wall_seconds):,.0f} s" if r.wall_seconds == r.wall_seconds and r.wall_seconds else ""
        lines.append(f"| {r.notebook} | {r.commit} | {r.finished} | {_cell(str(r.host))} | {r.cpu_mode} | "
                     f"{'' if r.threads != r.threads else r.threads} | {r.torch} | {wall} |")
    return lines + [""]


def calibration_summary(cal: pd.DataFrame) -> str:
    """The calibration in a few sentences: per measure, the pairs, and how many each rule resolves."""
    if not len(cal):
        return "A/A calibration: the run offers no pair of one configuration and another seed."

    def share(k, n):
        return f"{k} ({100 * k / n:.1f} %)"
    parts = []
    for col, part in cal.groupby("measure", sort=False):
        n = len(part)
        parts.append(f"{col.replace('_acc', ' accuracy')}: {n} pairs; the rule resolves "
                     f"{share(int(part.resolved.astype(bool).sum()), n)}, the 2-SE rule "
                     f"{share(int(part.resolved_2se_rule.astype(bool).sum()), n)}")
    floors = cal.drop_duplicates("table")
    return ("A/A calibration (`findings_calibration.csv`): pairs of cells of one configuration and another seed, "
            f"in {', '.join(floors.table.astype(str))}, judged as if each were a claim. " + "; ".join(parts) + ". "
            "The rule of the verdicts below (`rtlkit/stats.py`: a test part and a seed part, here each notebook's "
            "floor, SD " + ", ".join(f"{100 * r.floor_sd:.1f} points ({r.floor_df} df, notebook {str(r.notebook).zfill(2)})"
                                     for r in floors.drop_duplicates("notebook").itertuples()) +
            ", with a t quantile) may resolve at most 5 %; the 2-SE rule, which leaves the seeds out, is the one "
            "verdicts used before.")


def collect(figures_dir) -> pd.DataFrame:
    """Every notebook's findings as one table (``figures/findings.csv``'s rows)."""
    all_floors = floors(figures_dir)
    return _frame([f for nb in NOTEBOOKS for f in of_notebook(nb, figures_dir, all_floors)])


def _interval(r) -> str:
    """Our effect and its 95 % interval, in points."""
    return f"{100 * r.effect:+.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}]"


def _seed_cell(r) -> str:
    src = r.seed_source if isinstance(r.seed_source, str) else ""
    if src == "measured":
        return f"measured ({int(r.seeds)} seeds)"
    return src


def table(notebook: str, figures_dir) -> pd.DataFrame:
    """A notebook's findings cell: claim, the paper's effect and ours with its 95 % interval in
    points, where its training noise comes from, n, seeds, the verdict and the size."""
    df = _frame(of_notebook(notebook, figures_dir))
    out = df[["where", "claim", "paper_numbers", "ours", "n", "seeds", "verdict", "size", "superseded_by"]].copy()
    out.insert(3, "paper effect (pts)", [_effect(r.paper_effect, r.direction) for r in df.itertuples()])
    out.insert(5, "ours (pts, 95 % interval)", [_interval(r) for r in df.itertuples()])
    out.insert(6, "seed part", [_seed_cell(r) for r in df.itertuples()])
    return out


def _effect(paper_effect: float, direction: int) -> str:
    if paper_effect == paper_effect:   # not NaN
        return f"{100 * paper_effect:+.1f}"
    return "higher" if direction > 0 else "lower"


def render(df: pd.DataFrame, cal: pd.DataFrame | None = None, prov: pd.DataFrame | None = None) -> str:
    """``findings.md``: the findings table as markdown, one section per notebook, generated from
    ``findings.csv``, the A/A calibration ``cal`` (``findings_calibration.csv``) and the run's
    provenance ``prov`` (``provenance.csv``) (never edited by hand; ``tests/test_findings_doc.py``
    holds them equal)."""
    titles = {"01": "01 layer freezing", "02": "02 BN ablation", "03": "03 CARTL", "04": "04 pre-training (Vaishnavi et al.)",
              "05": "05 provably robust transfer", "06": "06 Shafahi et al.",
              "07": "07 report cards (AutoAttack against PGD-20)"}
    lines = ["# Findings", "",
             "Generated by `rtlkit.findings` from `findings.csv`, which the notebooks' own code computes from",
             "the CSVs beside each figure; never edited by hand. Effects are differences of accuracies in",
             "points, ours with its 95 % interval: effect +- t x SE, where the SE holds the test images' binomial",
             "part and the training seeds' part, **measured** from the claim's own seeds (>= 3, the arms paired",
             "by seed) or **floored** by its notebook's seed floor (the largest SD of a paired difference among",
             "its replicated claim cells; the row's `floor_from` in `findings.csv` names them), with the t",
             "quantile at their degrees of freedom (`rtlkit/stats.py`). The verdict is the sign: **agrees** /",
             "**disagrees** when the interval excludes zero on the paper's side / the other, **unresolved**",
             "when it holds zero. A claim of no difference is tested for equivalence (two one-sided tests)",
             f"within a margin declared before the data ({100 * MARGIN:g} points unless the claim declares its own):",
             "**equivalent** / **different** / **unresolved**. The size is its own column of `findings.csv`:",
             "the paper's effect inside or outside our interval, or not comparable (another dataset, eps or",
             "threat model). **not a test**: the setting cannot show the effect.", ""]
    if cal is not None:
        lines += [calibration_summary(cal), ""]
    stand, ours_only, var = standing(df), beyond(df), variants(df)
    counts, gone = stand.verdict.value_counts(), len(df) - len(stand) - len(ours_only) - len(var)
    lines += ["Verdicts: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS + ("not a test",)) +
              (f"; {gone} more rows are superseded by a test of the same claim on more seeds and images "
               "(their verdicts, not in bold, are shown but not counted)" if gone else "") +
              (f"; {len(var)} rows test a claim with a variant of the paper's method (marked, not counted)"
               if len(var) else "") +
              (f"; {len(ours_only)} rows beyond the papers (our own measurements, last section) are not counted"
               if len(ours_only) else ""), ""]
    lines += [multiplicity(df, cal), ""]
    paper_rows = df.drop(index=ours_only.index)
    sections = [(titles[nb], paper_rows[paper_rows.notebook.astype(str).str.zfill(2) == nb]) for nb in NOTEBOOKS]
    sections.append(("Beyond the papers (our measurements and hypotheses; not counted)", ours_only))
    for title, part in sections:
        if not len(part):
            continue
        lines += [f"## {title}", "",
                  "| where | claim | paper | paper effect | ours | ours, pts [95 %] | seed part | n x seeds | verdict "
                  "| size |", "|---|---|---|---:|---|---:|---|---|---|---|"]
        notes = []
        for r in part.itertuples():
            mark = ""
            if isinstance(r.note, str) and r.note:
                notes.append(r.note)
                mark = f" [{len(notes)}]"
            lines.append(f"| {r.paper}, {r.where} | {_cell(r.claim)}{mark} | {_cell(r.paper_numbers)} | "
                         f"{_effect(r.paper_effect, r.direction)} | {_cell(r.ours)} | {_interval(r)} | "
                         f"{_seed_cell(r)} | {int(r.n)} x {int(r.seeds)} | {_verdict_cell(r)} | {_cell(r.size)} |")
        lines.append("")
        lines += [f"[{i}] {t}" for i, t in enumerate(notes, 1)] + ([""] if notes else [])
    floors_used = df[_text(df.seed_source, "") == "floored"].drop_duplicates("notebook")
    if len(floors_used):
        lines += ["## Seed floors", "", "| notebook | floor |", "|---|---|"]
        lines += [f"| {str(r.notebook).zfill(2)} | {_cell(r.floor_from)} |" for r in floors_used.itertuples()] + [""]
    lines += provenance_section(prov)
    return "\n".join(lines).rstrip() + "\n"


def _cell(v) -> str:
    """A text cell of a markdown table ("" for an empty one)."""
    return "" if not isinstance(v, str) else v.replace("|", "/")


def _verdict_cell(r) -> str:
    by = getattr(r, "superseded_by", "")
    if isinstance(by, str) and by:
        return f"{r.verdict}, superseded by {by}"
    if getattr(r, "scope", "paper") == "beyond":
        return f"{r.verdict} (not counted)"
    if getattr(r, "scope", "paper") == "variant":
        return f"{r.verdict} (variant, not counted)"
    return f"**{r.verdict}**"


BEGIN, END = "<!-- findings:begin -->", "<!-- findings:end -->"


def summary(df: pd.DataFrame) -> str:
    """The README's generated block: verdict counts per notebook, from ``findings.csv`` (claims
    that stand; the superseded rows, the variants' and those beyond the papers are counted apart)."""
    lines = ["| notebook | claims | agrees | disagrees | equivalent | different | unresolved | not a test "
             "| superseded rows | variant rows | beyond the papers |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def line(name, part):
        stand, var, extra = standing(part), len(variants(part)), len(beyond(part))
        c = stand.verdict.value_counts()
        return (f"| {name} | {len(stand)} | " + " | ".join(str(c.get(v, 0)) for v in VERDICTS + ("not a test",))
                + f" | {len(part) - len(stand) - var - extra} | {var} | {extra} |")
    for nb, name in NOTEBOOKS.items():
        part = df[df.notebook.astype(str).str.zfill(2) == nb]
        if len(part):
            lines.append(line(f"{nb} {name.replace('_', ' ')}", part))
    lines.append(line("**all**", df))
    return "\n".join(lines)


def readme_with(text: str, df: pd.DataFrame) -> str:
    """``text`` (the README) with its generated block replaced by :func:`summary` of ``df``."""
    check(BEGIN in text and END in text, f"the README has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{summary(df)}\n{END}{tail}"


def write(figures_dir) -> pd.DataFrame:
    """``findings.csv``, ``findings_calibration.csv``, ``provenance.csv`` and ``findings.md`` in
    ``figures_dir``, from the CSVs and manifests there (atomically)."""
    from pathlib import Path
    from .io import atomic_write_bytes, atomic_write_csv
    folder = Path(figures_dir)
    df = collect(folder)
    atomic_write_csv(folder / "findings.csv", df)
    atomic_write_csv(folder / "findings_calibration.csv", calibration(folder))
    atomic_write_csv(folder / "provenance.csv", provenance(folder))
    df = pd.read_csv(folder / "findings.csv")   # render what a reader of the CSV sees
    cal = pd.read_csv(folder / "findings_calibration.csv")
    prov = pd.read_csv(folder / "provenance.csv")
    atomic_write_bytes(folder / "findings.md", render(df, cal, prov).encode())
    return df


def _main(argv=None) -> int:
    """python -m rtlkit.findings [--figures-dir DIR] [--readme README.md]: rewrite DIR's findings.csv,
    findings_calibration.csv, provenance.csv and findings.md from the figure CSVs and manifests there
    (what `make figures` does after the last notebook), and the README's generated block, and print
    the verdicts."""
    import argparse
    import os
    from pathlib import Path
    ap = argparse.ArgumentParser(prog="python -m rtlkit.findings", description=_main.__doc__)
    ap.add_argument("--figures-dir", default=os.environ.get("RTLKIT_FIGURES", "figures"))
    ap.add_argument("--readme", default=None, help="also rewrite this README's generated findings block")
    args = ap.parse_args(argv)
    folder = Path(args.figures_dir)
    check(folder.is_dir(), f"--figures-dir {folder}: not a folder of figures")
    if args.readme:
        check(Path(args.readme).is_file(), f"--readme {args.readme}: no such file")
    df = write(folder)
    if args.readme:
        from .io import atomic_write_bytes
        atomic_write_bytes(Path(args.readme), readme_with(Path(args.readme).read_text(), df).encode())
    print(standing(df).verdict.value_counts().to_string())
    return 0


def main(argv=None) -> int:
    from .errors import cli
    return cli("rtlkit.findings", _main)(argv)


if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    import sys
    from rtlkit import findings as _package_module
    sys.exit(_package_module.main())
