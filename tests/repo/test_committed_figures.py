"""The committed figures are one run's: every notebook's manifest names the same profile,
instruction-set mode, thread count and torch (docs/committed-run.md), and, in a mode whose bits
depend on the host, the same CPU (model and vector flags). "avx2-compat", quick's mode, gives one
set of bits on Intel and AMD hosts alike, so its notebooks may be regenerated one at a time on
different hosts; in any other mode a set made on two machines could not be reproduced byte for byte
anywhere, and this fails the day such a partial regeneration is committed."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("0[1-9]_*.ipynb"))


def manifests() -> dict:
    return {path.name: json.loads(path.read_text()) for path in sorted((ROOT / "figures").glob("0[1-9]_*.json"))}


HOST_FREE_MODES = ("avx2-compat",)   # the pins whose bits do not depend on the CPU's vendor or model


def what_changes_the_bits(m: dict) -> tuple:
    cpu = m.get("cpu") or {}
    pin = cpu.get("cpu_isa_pinned")
    host = (None, ()) if pin in HOST_FREE_MODES else (cpu.get("cpu_model"), tuple(cpu.get("cpu_flags") or ()))
    return (m.get("profile"), *host, pin, m.get("threads") or m.get("settings", {}).get("threads"), m.get("torch"),
            _device_class(m.get("device")))


def _device_class(device) -> str | None:
    """"CPU (2 cores, 2 threads) [fp32 eager]" -> "CPU [fp32 eager]": the numerics, not the core count
    (the thread count is its own entry)."""
    if not isinstance(device, str):
        return device
    import re
    return re.sub(r" \([^)]*cores?[^)]*\)", "", device)


# notebooks whose committed figures are still the previous run's (pinned avx2 on the Intel Xeon), each named
# in docs/committed-run.md; the next run of such a notebook in avx2-compat takes it out of this set
PREVIOUS_RUN: set[str] = set()


def test_every_notebook_figure_comes_from_one_machine_and_mode():
    ms = {name: m for name, m in manifests().items() if m.get("notebook") in NOTEBOOKS}
    assert {m["notebook"] for m in ms.values()} == set(NOTEBOOKS), "a notebook has no figure"   # 00: the user's own
    kinds = {}
    for name, m in ms.items():
        if m["notebook"] not in PREVIOUS_RUN:
            kinds.setdefault(what_changes_the_bits(m), []).append(name)
    assert len(kinds) == 1, "committed figures from several machines or modes:\n" + "\n".join(
        f"  {k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in kinds.items())
    (profile, model, flags, pin, threads, torch_version, device), = kinds
    assert profile == "quick" and pin == "avx2-compat", "the committed set is quick, pinned (docs/committed-run.md)"
    for m in ms.values():   # each manifest still names the host it ran on
        assert (m.get("cpu") or {}).get("cpu_model") and (m.get("cpu") or {}).get("cpu_flags")


@pytest.mark.parametrize("notebook", sorted(PREVIOUS_RUN))
def test_a_notebook_left_from_the_previous_run_is_one_run_and_says_so(notebook):
    """A notebook not yet regenerated in avx2-compat: all its figures from one run of the previous
    set (quick, pinned avx2, one host), at the current set's threads and torch, and named in the docs."""
    ms = [m for m in manifests().values() if m.get("notebook") == notebook]
    kinds = {what_changes_the_bits(m) for m in ms}
    assert len(kinds) == 1, kinds
    (profile, model, flags, pin, threads, torch_version, device), = kinds
    assert profile == "quick" and pin == "avx2" and model
    current = {what_changes_the_bits(m)[4:] for m in manifests().values()
               if m.get("notebook") in NOTEBOOKS and m["notebook"] not in PREVIOUS_RUN}
    assert current == {(threads, torch_version, device)}
    assert notebook in (ROOT / "docs" / "committed-run.md").read_text()


@pytest.mark.parametrize("name", ["03_budget.json", "04_scarcity.json"])
def test_a_bench_figure_beside_them_says_where_it_comes_from(name):
    """bench/budget.py and bench/pretraining_scarcity.py write beside the notebooks (not by make
    figures); their manifests name their own run, which docs/committed-run.md states."""
    m = manifests()[name]
    assert m["notebook"] == name.removesuffix(".json") and m["profile"] == "quick" and m.get("commit")


def test_a_timing_column_in_a_figure_table_is_declared_as_measured():
    """A wall time in a figure's CSV is the machine's, not the config's: a fresh clone cannot
    reproduce its bytes. report.MEASURED_COLUMNS lists each such column, so bench/reproduce.py
    counts a table that differs only there as reproduced, and nothing else."""
    import re

    import pandas as pd

    from rtlkit.suite.session import MEASURED_COLUMNS
    timing = re.compile(r"(second|wall|elapsed|duration|_time$|^time)", re.I)
    for path in sorted((ROOT / "figures").glob("0[1-9]_*.csv")):
        cols = [c for c in pd.read_csv(path, nrows=0).columns if timing.search(c)]
        assert set(cols) <= set(MEASURED_COLUMNS), f"{path.name}: timing column(s) {cols} not in report.MEASURED_COLUMNS"


def test_reproduce_names_the_columns_that_differ(tmp_path):
    """bench/reproduce.py's comparison: identical bytes, a measured column only, a result column."""
    from bench import reproduce
    (tmp_path / "fresh").mkdir()
    (tmp_path / "committed").mkdir()
    rows = {"06_a.csv": ("arm,acc,train_seconds\nx,0.5,12.1\n", "arm,acc,train_seconds\nx,0.5,12.1\n"),
            "06_b.csv": ("arm,acc,train_seconds\nx,0.5,14.0\n", "arm,acc,train_seconds\nx,0.5,12.1\n"),
            "06_c.csv": ("arm,acc,train_seconds\nx,0.51,12.1\n", "arm,acc,train_seconds\nx,0.5,12.1\n"),
            "06_d.csv": ("arm,acc\nx,0.5\n", "arm,acc,train_seconds\nx,0.5,12.1\n")}
    for name, (fresh, committed) in rows.items():
        (tmp_path / "fresh" / name).write_text(fresh)
        (tmp_path / "committed" / name).write_text(committed)
    (tmp_path / "committed" / "06_e.csv").write_text("arm\nx\n")
    got = dict(reproduce.compare(tmp_path / "fresh", tmp_path / "committed", ["06"]))
    assert got == {"06_a.csv": "byte-identical",
                   "06_b.csv": "same results (differs only in measured column(s) train_seconds)",
                   "06_c.csv": "DIFFERS in acc", "06_d.csv": "DIFFERS in shape or columns", "06_e.csv": "MISSING"}
    assert reproduce.main(["--only", "99"]) == 2
