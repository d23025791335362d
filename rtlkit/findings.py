"""Verdicts computed from the numbers: the rule and its uncertainty, and the A/A calibration.

One rule for every claim a notebook tests. An *effect* is a difference the paper reports a sign
for (robustness with minus without a method, say); ours comes with its standard error:

- **agrees**: our effect has the paper's sign and lies outside 2 SE of zero;
- **disagrees**: the opposite sign outside 2 SE; or the paper reports an effect that lies inside
  2 SE of zero here while our SE is small enough to see it: the paper's effect lies outside our
  effect +- 2 SE (an effect consistent with both zero and the paper's is unresolved);
- **unresolved**: neither. The data cannot tell, however good the point estimate looks.

The SE of a difference (:func:`contrast`) combines each side's binomial SE on its test images
(Agresti-Coull's) and, where a side has several seeds, their variance over the seeds, as
independent. A single-seed row's SE therefore holds the test images' noise alone, not the
training seeds'. :func:`calibration` measures what that costs: on pairs of one configuration and
another seed it resolves far more than 5 %. ``rtlkit.stats`` holds the seed-aware rule (a test
part and a seed part, measured or floored, with a t quantile) that the verdicts move to once each
notebook has its replicates; its calibration is in the same table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import ConfigError, check, check_int, is_real

VERDICTS = ("agrees", "disagrees", "unresolved")
# a row tests a claim of the four papers with the paper's method ("paper": counted in the scorecard);
# or the claim with a variant of ours ("variant": beside it, never counted); or is a measurement or a
# hypothesis of ours ("beyond": shown in its own section, never counted): 07's AutoAttack-against-PGD
# gaps (a cascade that starts from PGD's survivors can only lower it) and 04's scarcity explanation
SCOPES = ("paper", "variant", "beyond")
Z = 2.0   # "outside 2 SE"


def binomial_se(p: float, n: int) -> float:
    """The SE of an accuracy ``p`` measured on ``n`` independent test images: sqrt(p(1-p)/n)."""
    check(is_real(p) and 0 <= p <= 1, f"an accuracy is in [0, 1], not {p!r}")
    check_int("n", n, 1)
    return math.sqrt(p * (1 - p) / n)


@dataclass(frozen=True)
class Finding:
    """One claim: where it comes from, the paper's effect and ours with its SE, and the verdict.

    Effects are differences of accuracies (fractions). ``paper_effect`` None: the paper states only
    the direction (``direction`` +1 or -1: a figure without printed numbers); the rule then cannot
    test a size, and an effect inside 2 SE is unresolved. ``testable`` False marks a row whose
    setting cannot show the effect at all (say, a radius no certificate at that N reaches): its
    verdict is "not a test". ``ours`` and ``paper_numbers`` hold the numbers behind each effect."""
    notebook: str
    paper: str
    where: str            # table or figure
    claim: str            # one line
    paper_effect: float | None   # the paper's difference (its sign is the claim); None: direction only
    effect: float         # ours
    se: float
    n: int                # test images
    seeds: int
    direction: int = 0
    ours: str = ""
    paper_numbers: str = ""
    note: str = ""
    testable: bool = True
    scope: str = "paper"   # "paper": the paper's claim by its method (the scorecard); "variant", "beyond": SCOPES

    def __post_init__(self):
        for name in ("effect", "se") + (("paper_effect",) if self.paper_effect is not None else ()):
            check(is_real(getattr(self, name)) and math.isfinite(getattr(self, name)),
                  f"{name} must be a finite number, not {getattr(self, name)!r}")
        check(self.se >= 0, f"se must be >= 0, not {self.se}")
        check_int("n", self.n, 1)
        check_int("seeds", self.seeds, 1)
        if self.paper_effect is None:
            check(self.direction in (-1, 1), f"a direction-only claim needs direction +1 or -1, not {self.direction!r}")
        check(self.scope in SCOPES, f"scope must be one of {SCOPES}, not {self.scope!r}")

    @property
    def verdict(self) -> str:
        if not self.testable:
            return "not a test"
        if self.paper_effect is None:
            outside = abs(self.effect) > Z * self.se
            if not outside:
                return "unresolved"
            return "agrees" if math.copysign(1, self.effect) == self.direction else "disagrees"
        return verdict(self.paper_effect, self.effect, self.se)

    def row(self) -> dict:
        lo, hi = self.effect - Z * self.se, self.effect + Z * self.se
        return {"notebook": self.notebook, "paper": self.paper, "where": self.where, "claim": self.claim,
                "paper_effect": self.paper_effect if self.paper_effect is not None else float("nan"),
                "direction": self.direction if self.paper_effect is None else int(np.sign(self.paper_effect)),
                "effect": self.effect, "se": self.se, "low_2se": lo, "high_2se": hi, "n": self.n,
                "seeds": self.seeds, "verdict": self.verdict, "ours": self.ours, "paper_numbers": self.paper_numbers,
                "note": self.note, "scope": self.scope}


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


def contrast(notebook: str, paper: str, where: str, claim: str, a: pd.DataFrame, b: pd.DataFrame,
             col: str = "robust_acc", paper_a: float | None = None, paper_b: float | None = None,
             direction: int = 0, note: str = "", testable: bool = True, se_floor: float = 0.0) -> Finding:
    """The effect mean(a) - mean(b) of ``col`` with its SE (the two sides' SEs combined as
    independent: conservative for two models judged on one test set, whose results correlate);
    the paper's effect ``paper_a - paper_b`` (None: ``direction`` only)."""
    pa, sa, na, ka = mean_se(a, col)
    pb, sb, nb, kb = mean_se(b, col)
    pe = None if paper_a is None or paper_b is None else float(paper_a - paper_b)
    return Finding(notebook, paper, where, claim, pe, pa - pb, math.sqrt(sa ** 2 + sb ** 2 + se_floor ** 2),
                   min(na, nb), min(ka, kb), direction if pe is None else 0,
                   ours=f"{_pct(pa)} vs {_pct(pb)}", note=note, testable=testable,
                   paper_numbers="" if pe is None else "no difference" if paper_a == paper_b == 0 else
                   f"{_pct(paper_a)} vs {_pct(paper_b)}")


def samples(notebook: str, paper: str, where: str, claim: str, a, b, direction: int, note: str = "") -> Finding:
    """The effect mean(a) - mean(b) of two sets of per-example measurements that are not accuracies
    (a share of the gradient, say): the SE of a difference of means, sqrt(var_a / n_a + var_b / n_b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    check(len(a) >= 2 and len(b) >= 2, f"{where}: need >= 2 measurements a side, not {len(a)} and {len(b)}")
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return Finding(notebook, paper, where, claim, None, float(a.mean() - b.mean()), se, min(len(a), len(b)), 1,
                   direction, ours=f"{a.mean():.3g} vs {b.mean():.3g}", note=note)


def average(notebook: str, paper: str, where: str, claim: str, parts: list[Finding], direction: int = 0,
            paper_effect: float | None = None, paper_numbers: str = "", note: str = "", scope: str = "paper") -> Finding:
    """The mean of several findings' effects (one per target, say), its SE from theirs as independent."""
    check(len(parts) >= 1, f"{where}: nothing to average")
    k = len(parts)
    eff = sum(f.effect for f in parts) / k
    se = math.sqrt(sum(f.se ** 2 for f in parts)) / k
    return Finding(notebook, paper, where, claim, paper_effect, eff, se, min(f.n for f in parts),
                   min(f.seeds for f in parts), direction if paper_effect is None else 0,
                   ours="; ".join(f.ours for f in parts), paper_numbers=paper_numbers, note=note, scope=scope)


# --------------------------------------------------------------------------- every notebook's findings

NOTEBOOKS = {"01": "layer_freezing", "02": "bn_ablation", "03": "cartl", "04": "pretraining", "05": "provable",
             "06": "shafahi", "07": "report_cards"}
COLUMNS = ["notebook", "paper", "where", "claim", "paper_effect", "direction", "effect", "se", "low_2se", "high_2se",
           "n", "seeds", "verdict", "ours", "paper_numbers", "note", "scope", "superseded_by"]


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
    """How many claims the scorecard tests, and how many verdicts chance alone would give: at a
    calibrated 5 % level, and at the A/A rate this rule shows on the run's replicated cells (robust
    accuracy), were no claim true."""
    n = len(standing(df)[lambda d: d.verdict.isin(VERDICTS)])
    out = (f"Multiplicity: the scorecard tests {n} claims. Were none of them true, a rule that resolves 5 % of A/A "
           f"pairs would still give about {0.05 * n:.0f} verdicts by chance ({0.025 * n:.0f} agrees, "
           f"{0.025 * n:.0f} disagrees)")
    robust = cal[cal.measure == "robust_acc"] if cal is not None and len(cal) else None
    if robust is not None and len(robust):
        rate = float(robust.resolved_2se_rule.astype(bool).mean())
        out += (f"; at the {100 * rate:.1f} % this 2-SE rule resolves on A/A pairs of robust accuracy, about "
                f"{rate * n:.0f} ({rate * n / 2:.0f} each way). The counts below are not evidence by themselves")
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


def of_notebook(notebook: str, figures_dir) -> list[Finding]:
    """The findings of one notebook ("03"), computed by its study's ``findings`` from the CSVs its
    run left in ``figures_dir`` (none where they are missing)."""
    import importlib
    check(notebook in NOTEBOOKS, f"unknown notebook {notebook!r}; one of {', '.join(NOTEBOOKS)}")
    study = importlib.import_module(f"rtlkit.studies.{NOTEBOOKS[notebook]}")
    return list(study.findings(reader(figures_dir)))


CALIBRATION_COLUMNS = ["notebook", "table", "measure", "config", "seed_a", "seed_b", "a", "b", "n", "effect", "se",
                       "low", "high", "resolved", "resolved_2se_rule", "floor_sd", "floor_df", "floor_source"]
CALIBRATION_MEASURES = ("robust_acc", "clean_acc")


def calibration(figures_dir) -> pd.DataFrame:
    """The A/A calibration (``findings_calibration.csv``): every pair of cells the run offers that
    share a configuration and an arm and differ only in their seed, in every notebook whose study
    has replicated tables (``replicated(read)``), on robust and clean accuracy. Each pair is judged
    by ``rtlkit.stats``'s rule as if it were a claim (floored by that notebook's seed floor:
    ``resolved``) and by the 2-SE rule this module's verdicts use today (unpaired binomial SEs:
    ``resolved_2se_rule``). Both are false resolutions: the two cells are one configuration."""
    import importlib
    from . import stats
    read = reader(figures_dir)
    parts = []
    for nb, name in NOTEBOOKS.items():
        study = importlib.import_module(f"rtlkit.studies.{name}")
        for table, rows, config, cells in getattr(study, "replicated", lambda r: [])(read):
            if len(cells) < 2:   # a profile with fewer replicates (smoke: 2 seeds) has no floor to judge by
                continue
            floor = stats.seed_floor(cells)
            for col in CALIBRATION_MEASURES:
                p = stats.aa_pairs(rows, config, col, floor)
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


def calibration_summary(cal: pd.DataFrame) -> str:
    """The calibration in a few sentences: per measure, the pairs, and how many each rule resolves."""
    if not len(cal):
        return "A/A calibration: the run offers no pair of one configuration and another seed."

    def share(k, n):
        return f"{k} ({100 * k / n:.1f} %)"
    parts = []
    for col, part in cal.groupby("measure", sort=False):
        n = len(part)
        parts.append(f"{col.replace('_acc', ' accuracy')}: {n} pairs; the seed-aware rule resolves "
                     f"{share(int(part.resolved.astype(bool).sum()), n)}, the 2-SE rule "
                     f"{share(int(part.resolved_2se_rule.astype(bool).sum()), n)}")
    floors = cal.drop_duplicates("table")
    return ("A/A calibration (`findings_calibration.csv`): pairs of cells of one configuration and another seed, "
            f"in {', '.join(floors.table.astype(str))}, judged as if each were a claim. " + "; ".join(parts) + ". "
            "The seed-aware rule (`rtlkit/stats.py`: a test part and a seed part, here the notebook's floor, "
            "SD " + ", ".join(f"{100 * r.floor_sd:.1f} points ({r.floor_df} df)" for r in floors.itertuples()) +
            ", with a t quantile) may resolve at most 5 %; the 2-SE rule is the one of the verdicts below.")


def collect(figures_dir) -> pd.DataFrame:
    """Every notebook's findings as one table (``figures/findings.csv``'s rows)."""
    return _frame([f for nb in NOTEBOOKS for f in of_notebook(nb, figures_dir)])


def table(notebook: str, figures_dir) -> pd.DataFrame:
    """A notebook's findings cell: claim, the paper's effect and ours +- 2 SE in points, n, seeds, verdict."""
    df = _frame(of_notebook(notebook, figures_dir))
    out = df[["where", "claim", "paper_numbers", "ours", "n", "seeds", "verdict", "superseded_by"]].copy()
    out.insert(3, "paper effect (pts)", [_effect(r.paper_effect, r.direction) for r in df.itertuples()])
    out.insert(5, "ours (pts, +- 2 SE)", [f"{100 * r.effect:+.1f} +- {200 * r.se:.1f}" for r in df.itertuples()])
    return out


def _effect(paper_effect: float, direction: int) -> str:
    if paper_effect == paper_effect:   # not NaN
        return f"{100 * paper_effect:+.1f}"
    return "higher" if direction > 0 else "lower"


def render(df: pd.DataFrame, cal: pd.DataFrame | None = None) -> str:
    """``findings.md``: the findings table as markdown, one section per notebook, generated from
    ``findings.csv`` and the A/A calibration ``cal`` (``findings_calibration.csv``) (never edited by
    hand; ``tests/test_findings_doc.py`` holds them equal)."""
    titles = {"01": "01 layer freezing", "02": "02 BN ablation", "03": "03 CARTL", "04": "04 pre-training (Vaishnavi et al.)",
              "05": "05 provably robust transfer", "06": "06 Shafahi et al.",
              "07": "07 report cards (AutoAttack against PGD-20)"}
    lines = ["# Findings", "",
             "Generated by `rtlkit.findings` from `findings.csv`, which the notebooks' own code computes from",
             "the CSVs beside each figure; never edited by hand. Effects are differences of accuracies in",
             "points. Verdicts by one rule (`rtlkit/findings.py`): **agrees** = the paper's sign, outside 2 SE;",
             "**disagrees** = the opposite sign outside 2 SE, or inside 2 SE of zero while the paper's effect",
             "lies outside ours +- 2 SE; **unresolved** = neither; **not a test** = the setting cannot show it.",
             "The SE of a difference combines both sides' binomial SEs (and, where a row has several seeds, their",
             "spread) as independent. A single-seed row's SE leaves out the training seeds' noise, so this rule is",
             "not conservative: the calibration below measures how often it calls two runs of one configuration",
             "different.", ""]
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
                  "| where | claim | paper | paper effect | ours | ours, pts +- 2 SE | n x seeds | verdict |",
                  "|---|---|---|---:|---|---:|---|---|"]
        notes = []
        for r in part.itertuples():
            mark = ""
            if isinstance(r.note, str) and r.note:
                notes.append(r.note)
                mark = f" [{len(notes)}]"
            cell = lambda v: "" if not isinstance(v, str) else v.replace("|", "/")   # noqa: E731
            lines.append(f"| {r.paper}, {r.where} | {cell(r.claim)}{mark} | {cell(r.paper_numbers)} | "
                         f"{_effect(r.paper_effect, r.direction)} | {cell(r.ours)} | "
                         f"{100 * r.effect:+.1f} +- {200 * r.se:.1f} | {int(r.n)} x {int(r.seeds)} | {_verdict_cell(r)} |")
        lines.append("")
        lines += [f"[{i}] {t}" for i, t in enumerate(notes, 1)] + ([""] if notes else [])
    return "\n".join(lines).rstrip() + "\n"


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
    lines = ["| notebook | claims | agrees | disagrees | unresolved | not a test | superseded rows | variant rows "
             "| beyond the papers |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

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
    """``findings.csv``, ``findings_calibration.csv`` and ``findings.md`` in ``figures_dir``, from the CSVs
    there (atomically)."""
    from pathlib import Path
    from .io import atomic_write_bytes, atomic_write_csv
    folder = Path(figures_dir)
    df = collect(folder)
    atomic_write_csv(folder / "findings.csv", df)
    atomic_write_csv(folder / "findings_calibration.csv", calibration(folder))
    df = pd.read_csv(folder / "findings.csv")   # render what a reader of the CSV sees
    cal = pd.read_csv(folder / "findings_calibration.csv")
    atomic_write_bytes(folder / "findings.md", render(df, cal).encode())
    return df


def _main(argv=None) -> int:
    """python -m rtlkit.findings [--figures-dir DIR] [--readme README.md]: rewrite DIR's findings.csv,
    findings_calibration.csv and findings.md from the figure CSVs there (what `make figures` does after the last notebook),
    and the README's generated block, and print the verdicts."""
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
