"""Does a fresh clone reproduce the committed figures?

    python -m bench.reproduce --only 01 02            # clone HEAD into a temp folder, run those notebooks at
                                                      # quick from an empty cache, compare every CSV they write
    python -m bench.reproduce --only 06 --as-avx2     # the same on this host capped as an AVX2-only CPU
    python -m bench.reproduce --compare /tmp/clone/figures --only 06   # only compare an earlier run's CSVs

A table matches when its bytes equal the committed file's. Otherwise the columns that differ are
named; a table that differs only in columns measuring the machine (``rtlkit.suite.session.MEASURED_COLUMNS``, wall
times) counts as reproduced. The committed figures are pinned to ``avx2-compat`` (``quick``'s default
on the CPU), so expect a match on any x86 CPU with AVX2, Intel or AMD, at the manifests' thread
count and torch (docs/reliability.md). Exit status 0 when every table is reproduced, 1 when one
is not, 2 on a bad setting.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from rtlkit.core.errors import ConfigError
from rtlkit.suite.session import MEASURED_COLUMNS
from rtlkit.runs.store import check_environment
from rtlkit.core.runtime import CPU_LIB_VARS

ROOT = Path(__file__).resolve().parents[1]
# what an AVX2-only CPU caps each library at (tests/core/test_cpu_isa.py's emulation)
AS_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def differing_columns(ours: Path, committed: Path) -> list[str] | None:
    """The columns whose cells differ between two figure CSVs, as text (so 0.1 and 0.10 differ,
    as their bytes do); [] when the files are byte-identical; None when the tables differ in
    shape or columns, which no column list can describe."""
    if ours.read_bytes() == committed.read_bytes():
        return []
    try:
        a, b = (pd.read_csv(p, dtype=str, keep_default_na=False) for p in (ours, committed))
    except (ValueError, UnicodeDecodeError) as e:   # an empty or torn file (pandas' EmptyDataError, ParserError)
        print(f"bench.reproduce: {ours.name}: not a readable CSV table on one side ({type(e).__name__})", file=sys.stderr)
        return None
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        return None
    return [c for c in a.columns if not a[c].equals(b[c])]


def compare(fresh_dir: Path, committed_dir: Path, only: list[str]) -> list[tuple[str, str]]:
    """(file, verdict) for every committed CSV of the notebooks ``only``: "byte-identical", "same
    results (differs only in measured column(s) ...)", "DIFFERS in ...", or "MISSING" from the run."""
    out = []
    for committed in sorted(p for nb in only for p in committed_dir.glob(f"{nb}_*.csv")):
        fresh = fresh_dir / committed.name
        if not fresh.is_file():
            out.append((committed.name, "MISSING"))
            continue
        cols = differing_columns(fresh, committed)
        if cols == []:
            out.append((committed.name, "byte-identical"))
        elif cols is None:
            out.append((committed.name, "DIFFERS in shape or columns"))
        elif set(cols) <= set(MEASURED_COLUMNS):
            out.append((committed.name, f"same results (differs only in measured column(s) {', '.join(cols)})"))
        else:
            out.append((committed.name, f"DIFFERS in {', '.join(cols)}"))
    return out


class CloneFailed(RuntimeError):
    """The clone's run of the notebooks failed; its own output names why."""


def run_clone(only: list[str], as_avx2: bool, keep: Path | None) -> Path:
    """Clone this checkout's HEAD and run ``rtlkit.suite.figures --profile quick --only ...`` there, from
    its own empty run cache; returns the clone's figures folder. A temporary clone is removed on
    every exit path but success (a failed run, Ctrl-C); a ``keep`` folder stays."""
    tmp = None if keep else Path(tempfile.mkdtemp(prefix="rtlkit-reproduce-"))
    try:
        return _run_clone(only, as_avx2, keep or tmp / "clone")
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run_clone(only: list[str], as_avx2: bool, dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RTLKIT_RUNS", "RTLKIT_FIGURES", *CPU_LIB_VARS)}
    env.update(PYTHONPATH=str(dest), MPLBACKEND="Agg", **(AS_AVX2 if as_avx2 else {}))
    head = subprocess.run(["git", "-C", str(dest), "log", "--oneline", "-1"], capture_output=True, text=True).stdout
    print(f"clone of {head.strip()} in {dest}{' (capped as an AVX2-only CPU)' if as_avx2 else ''}", flush=True)
    t = time.time()
    rc = subprocess.run([sys.executable, "-m", "rtlkit.suite.figures", "--profile", "quick", "--only", *only],
                        cwd=dest, env=env).returncode
    if rc != 0:
        raise CloneFailed(f"the clone's `rtlkit.suite.figures --only {' '.join(only)}` exited with status {rc} (its output above)")
    print(f"ran {' '.join(only)} in {time.time() - t:.0f} s", flush=True)
    return dest / "figures"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", required=True, help="notebook prefixes, e.g. 01 02")
    ap.add_argument("--as-avx2", action="store_true", help="cap each library as an AVX2-only CPU would")
    ap.add_argument("--compare", type=Path, default=None, help="a figures folder already written: compare only")
    ap.add_argument("--keep", type=Path, default=None, help="clone into this (new) folder and keep it")
    a = ap.parse_args(argv)
    try:   # the clone's settings come from this environment: a bad one is an error here, before cloning
        check_environment()
    except ConfigError as e:
        print(f"bench.reproduce: {e}", file=sys.stderr)
        return 2
    bad = [nb for nb in a.only if not any((ROOT / "figures").glob(f"{nb}_*.csv"))]
    if bad:
        print(f"bench.reproduce: no committed figure CSVs for {', '.join(bad)} in {ROOT / 'figures'}", file=sys.stderr)
        return 2
    if a.compare is not None and not a.compare.is_dir():
        print(f"bench.reproduce: --compare {a.compare}: not a folder", file=sys.stderr)
        return 2
    if a.keep is not None and a.keep.exists():
        print(f"bench.reproduce: --keep {a.keep}: already exists", file=sys.stderr)
        return 2
    try:
        fresh = a.compare if a.compare is not None else run_clone(a.only, a.as_avx2, a.keep)
    except CloneFailed as e:
        print(f"bench.reproduce: {e}", file=sys.stderr)
        return 1
    rows = compare(fresh, ROOT / "figures", a.only)
    for name, verdict in rows:
        print(f"{name}: {verdict}")
    return 0 if all(v == "byte-identical" or v.startswith("same results") for _, v in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
