"""Verdicts computed from the numbers: one rule for every claim a notebook tests, and its A/A calibration.

An *effect* is a difference the paper reports a sign for (robustness with minus without a method,
say), ours a difference of two accuracies. The rule is ``rtlkit.measure.stats``'s, and every counted verdict
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
run offers, as if it were a claim: the rule may resolve at most 5 % of them."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rtlkit.measure import stats
from rtlkit.suite import registry
from rtlkit.core.errors import ConfigError, check, cli
from rtlkit.measure.verdicts import Finding, MARGIN, VERDICTS, Z, binomial_se, with_floor
from rtlkit.core.io import atomic_write_bytes, atomic_write_csv


# --------------------------------------------------------------------------- every notebook's findings

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


def replicated(notebook: str, read) -> list[tuple]:
    """A notebook's replicated tables (its study's ``replicated(read)``): (name, our rows, the
    columns of one configuration, the claim cells a floor is measured on, the seed column)."""
    out = []
    for t in getattr(registry.module(notebook), "replicated", lambda r: [])(read):
        name, rows, config, cells, *seed = t
        out.append((name, rows, config, cells, seed[0] if seed else "replicate"))
    return out


def floors(figures_dir) -> dict:
    """Each notebook's seed floor (``rtlkit.measure.stats.seed_floor``) from its replicated claim cells in
    ``figures_dir``: the largest SD of a paired difference among >= 2 cells of >= 3 replicates
    (its tables' cells pooled); None where the run holds fewer."""
    read = reader(figures_dir)
    out = {}
    for nb in registry.with_findings():
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
    found = list(registry.module(notebook).findings(reader(figures_dir)))
    floor, borrowed = floor_of(notebook, floors(figures_dir) if all_floors is None else all_floors)
    return [with_floor(f, floor, borrowed) for f in found]


CALIBRATION_COLUMNS = ["notebook", "table", "measure", "config", "seed_a", "seed_b", "a", "b", "n", "effect", "se",
                       "low", "high", "resolved", "resolved_2se_rule", "floor_sd", "floor_df", "floor_source"]
CALIBRATION_MEASURES = ("robust_acc", "clean_acc")


def calibration(figures_dir, all_floors: dict | None = None) -> pd.DataFrame:
    """The A/A calibration (``findings_calibration.csv``): every pair of cells the run offers that
    share a configuration and an arm and differ only in their seed, in every notebook whose study
    has replicated tables, on robust and clean accuracy. Each pair is judged by the rule as if it
    were a claim, floored by its notebook's seed floor (``resolved``), and by the 2-SE rule of
    unpaired binomial SEs without the seeds (``resolved_2se_rule``, the rule verdicts used before).
    Both count false resolutions: the two cells are one configuration. ``all_floors``: :func:`floors`,
    computed when not given."""
    read = reader(figures_dir)
    all_floors = floors(figures_dir) if all_floors is None else all_floors
    parts = []
    for nb in registry.with_findings():
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


def collect(figures_dir, all_floors: dict | None = None) -> pd.DataFrame:
    """Every notebook's findings as one table (``figures/findings.csv``'s rows); ``all_floors``:
    :func:`floors`, computed when not given."""
    all_floors = floors(figures_dir) if all_floors is None else all_floors
    return _frame([f for nb in registry.with_findings() for f in of_notebook(nb, figures_dir, all_floors)])


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
    provenance ``prov`` (``provenance.csv``) (never edited by hand; ``tests/repo/test_findings_doc.py``
    holds them equal)."""
    lines = ["# Findings", "",
             "Generated by `rtlkit findings` from `findings.csv`, which the notebooks' own code computes from",
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
    sections = [(registry.STUDIES[nb].title, paper_rows[paper_rows.notebook.astype(str).str.zfill(2) == nb]) for nb in registry.with_findings()]
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
    for nb, name in registry.with_findings().items():
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
    folder = Path(figures_dir)
    all_floors = floors(folder)   # one pass over the replicated tables serves the findings and the calibration
    df = collect(folder, all_floors)
    atomic_write_csv(folder / "findings.csv", df)
    atomic_write_csv(folder / "findings_calibration.csv", calibration(folder, all_floors))
    atomic_write_csv(folder / "provenance.csv", provenance(folder))
    df = pd.read_csv(folder / "findings.csv")   # render what a reader of the CSV sees
    cal = pd.read_csv(folder / "findings_calibration.csv")
    prov = pd.read_csv(folder / "provenance.csv")
    atomic_write_bytes(folder / "findings.md", render(df, cal, prov).encode())
    return df


def _main(argv=None) -> int:
    """rtlkit findings [--figures-dir DIR] [--readme README.md]: rewrite DIR's findings.csv,
    findings_calibration.csv, provenance.csv and findings.md from the figure CSVs and manifests there
    (what `make figures` does after the last notebook), and the README's generated block, and print
    the verdicts."""
    import argparse
    import os
    from pathlib import Path
    ap = argparse.ArgumentParser(prog="rtlkit findings", description=_main.__doc__)
    ap.add_argument("--figures-dir", default=os.environ.get("RTLKIT_FIGURES", "figures"))
    ap.add_argument("--readme", default=None, help="also rewrite this README's generated findings block")
    args = ap.parse_args(argv)
    folder = Path(args.figures_dir)
    check(folder.is_dir(), f"--figures-dir {folder}: not a folder of figures")
    if args.readme:
        check(Path(args.readme).is_file(), f"--readme {args.readme}: no such file")
    df = write(folder)
    if args.readme:
        atomic_write_bytes(Path(args.readme), readme_with(Path(args.readme).read_text(), df).encode())
    print(standing(df).verdict.value_counts().to_string())
    return 0


def main(argv=None) -> int:
    return cli("rtlkit.suite.findings", _main)(argv)


if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    import sys
    from rtlkit.suite import findings as _package_module
    sys.exit(_package_module.main())
