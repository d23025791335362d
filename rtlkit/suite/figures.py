"""Regenerate the figures: execute every notebook headless with papermill at one profile.

    rtlkit figures                      # all notebooks: profile `full` on a GPU, `quick` on the CPU
    rtlkit figures --profile smoke --figures-dir /tmp/figs --only 01
    rtlkit figures --profile paper --dry-run   # every paper code path, one step each (figures/dry-run/)

Executed copies go to runs/notebooks/ (out of git); figures, CSVs and manifests to figures/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from rtlkit.core.data import REPO_ROOT
from rtlkit.core.errors import ConfigError, check, cli
from rtlkit.studies.profiles import PROFILES, default_name
from rtlkit.studies import profiles
from rtlkit.core.runtime import Runtime, configure_threads, default_cpu_isa, pin_cpu_isa
from rtlkit.suite.session import default_figures_dir, probe_datasets, probe_folder
from rtlkit.runs.store import check_environment
from rtlkit.suite import findings, plan

NOTEBOOKS = REPO_ROOT / "notebooks"


YOURS = "00_"   # notebook 00 runs your model and data: by name only (--only 00), never in the suite


def notebooks(only: list[str] | None = None) -> list[Path]:
    books = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not (only and any(o.startswith("00") for o in only)):
        books = [b for b in books if not b.name.startswith(YOURS)]
    if only:
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
        if not books:
            raise ConfigError(f"no notebook matches {only}; have {[b.name for b in sorted(NOTEBOOKS.glob('*.ipynb'))]}")
    return books


def ipc_kernel_manager():
    """The kernel manager class papermill starts each notebook's kernel with: jupyter_client's,
    talking to the kernel over IPC (Unix sockets under the temp folder, removed with the kernel)
    rather than TCP. On one machine TCP buys nothing, and an unencrypted TCP kernel warns on every
    notebook ("Kernel is running over TCP without encryption")."""
    import tempfile
    import uuid

    from jupyter_client.manager import KernelManager

    class IPCKernelManager(KernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
            self.ip = str(Path(tempfile.gettempdir()) / f"rtlkit-kernel-{uuid.uuid4().hex[:12]}")
    return IPCKernelManager


def suite_plan(profile: str, device: str | None = None, only: list[str] | None = None):
    """The plan (``rtlkit.suite.plan``) of the notebooks about to run, for the profile as the notebooks
    will resolve it on ``device``."""
    runtime = Runtime(device=device)
    return plan.plan(profiles.get(profile, gpu=runtime.is_cuda), [b.name[:2] for b in notebooks(only)]), runtime


def suite_status(paths: list[str]) -> int:
    """How many of the plan's runs and evaluations are done (their files exist)."""
    return sum(Path(p).is_file() for p in paths)


def _current_run(paths: list[str]) -> str:
    """What is being trained now: of the suite's own run folders (those of the plan's ``paths``), the
    most recently touched one that exists without its completion marker, described; "" when none is
    (a folder of another suite, or notebook 00's, is never named)."""
    try:
        folders = {Path(p).parent for p in paths}
        training = [d for d in folders if d.is_dir() and not (d / "complete.json").exists()]
        if not training:
            return ""
        newest = max(training, key=lambda d: d.stat().st_mtime)
        cfg = json.loads((newest / "config.json").read_text())
        data = cfg.get("data", {})
        return f"{newest.name.split('-')[0]} {data.get('name', '')}" + (f" [{data['classes'][0]}-{data['classes'][-1]}]"
                                                                          if data.get("classes") else "")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""


class _Monitor(threading.Thread):
    """Moves the suite's progress bar as the notebooks' runs and evaluations land in the cache."""

    def __init__(self, bar, paths: list[str], every: float = 2.0):
        super().__init__(daemon=True)
        self.bar, self.paths, self.every = bar, paths, every
        self.stop = threading.Event()
        self.notebook = ""

    def poll(self) -> None:
        done = suite_status(self.paths)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        now = _current_run(self.paths)
        self.bar.set_postfix_str(f"{self.notebook} | {now}" if now else self.notebook, refresh=True)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.poll()


def run(profile: str | None = None, figures_dir: str | None = None, only: list[str] | None = None,
        device: str | None = None, out_dir: str | None = None, extra: dict | None = None,
        progress: bool = True) -> dict[str, float]:
    """Execute the notebooks; returns each one's wall time in seconds. Before the first, prints how
    many of the suite's runs are cached and how many will run (with a time estimate where a
    benchmark of this model on this kind of device exists); while they run, one progress bar counts
    the suite's runs and evaluations done, with an ETA and the current run. Ctrl-C stops cleanly:
    every finished run and checkpoint stays, and rerunning the same command resumes from the cache."""
    # every setting is checked before any folder is made or any tensor maths runs
    check_environment()
    if device is not None:
        Runtime(device=device)   # an unknown device (or 'cuda' without one) is a ConfigError here
    profile = profile or default_name(device)
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    books = notebooks(only)
    isa = pin_cpu_isa(default_cpu_isa(profile, device))   # before the first CPU kernel; the kernels inherit it
    configure_threads()   # as each kernel will (report.start): the plan's cache keys are theirs
    fig_dir = Path(figures_dir) if figures_dir else Path(os.environ.get("RTLKIT_FIGURES", default_figures_dir(profile)))
    probe_folder(fig_dir, "figures folder", "--figures-dir or RTLKIT_FIGURES")
    out = Path(out_dir or Path(os.environ.get("RTLKIT_RUNS", REPO_ROOT / "runs")) / "notebooks")
    probe_folder(out, "folder for executed notebooks", "RTLKIT_RUNS")
    if not (len(books) == 1 and books[0].name.startswith(YOURS)):   # 00 runs on the user's data: it checks its own
        probe_datasets(profiles.get(profile, gpu=Runtime(device=device).is_cuda))   # every missing set named at once
    import papermill as pm
    from tqdm.auto import tqdm
    out.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "interactive": False, **(extra or {})}
    if figures_dir:
        params["figures_dir"] = str(Path(figures_dir).resolve())
    if device:
        params["device"] = device
    p, runtime = suite_plan(profile, device, only)
    paths = p.paths()
    cached = suite_status(paths)
    print(f"[rtlkit] {len(books)} notebook(s) at {profile}: {len(p.trainings)} trainings + {len(p.evaluations)} "
          f"evaluations; {cached} cached, {len(paths) - cached} to run"
          + ("" if runtime.is_cuda else f"; CPU instruction set: {isa}" + (" (pinned)" if isa != "native" else "")),
          flush=True)
    if cached < len(paths):
        _print_estimate(p, runtime)
    bar = tqdm(total=len(paths), initial=cached, desc="[rtlkit] suite", unit="run", file=sys.stderr,
               disable=not progress, smoothing=0.1, dynamic_ncols=True)
    monitor = _Monitor(bar, paths)
    if progress:
        monitor.start()
    times = {}
    try:
        for book in books:
            t0 = time.time()
            monitor.notebook = book.stem
            bar.write(f"[rtlkit] {book.name} (profile {profile}) ...")
            pm.execute_notebook(str(book), str(out / f"{book.stem}-{profile}.ipynb"), parameters=params,
                                kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
                                kernel_manager_class=ipc_kernel_manager())
            times[book.name] = time.time() - t0
            monitor.poll()
            bar.write(f"[rtlkit] {book.name}: {times[book.name]:.0f} s")
    except KeyboardInterrupt:
        monitor.stop.set()
        bar.close()
        done = suite_status(paths)
        rest = [b.name for b in books if b.name not in times]
        print(f"\n[rtlkit] stopped: {done} of {len(paths)} runs and evaluations are done and cached (finished "
              f"runs and their checkpoints are kept). To resume: rtlkit figures --profile {profile} "
              f"--only {' '.join(r[:2] for r in rest)}", file=sys.stderr, flush=True)
        raise
    finally:
        monitor.stop.set()
        bar.close()
    print(f"[rtlkit] all notebooks: {sum(times.values()):.0f} s", flush=True)
    table = findings.write(fig_dir)   # every notebook's claims, from the CSVs now in the figures folder
    stand = findings.standing(table)
    counts = stand.verdict.value_counts()
    var, extra = len(findings.variants(table)), len(findings.beyond(table))
    print(f"[rtlkit] findings: {len(stand)} claims ({', '.join(f'{n} {v}' for v, n in counts.items())}; "
          f"{len(table) - len(stand) - var - extra} rows superseded, {var} variants, {extra} beyond the papers) in "
          f"{fig_dir / 'findings.csv'} and findings.md", flush=True)
    return times


def _print_estimate(p, runtime) -> None:
    bench = plan.find_bench(p.model, runtime.describe())
    if bench is None:
        return
    try:
        fast = runtime.amp or runtime.channels_last or runtime.compile   # not numerics(): a pinned CPU has some
        est = plan.estimate(p.totals(include_cached=False), plan.rates(bench, "fast" if fast else "eager fp32"))
    except ConfigError:
        return
    print(f"[rtlkit] estimate from {bench.get('device')}'s benchmark: {est['total'] / 60:.0f} min of training and "
          f"attacks (Square queries and certification samples not included)", flush=True)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("RTLKIT_PROFILE", "auto"), choices=PROFILES + ("auto",),
                    help="auto (default): full on a GPU, quick on the CPU")
    ap.add_argument("--figures-dir", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 02")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dry-run", action="store_true", help="the paper profile's every code path, shrunk in counts "
                    "(profile paper-dry): figures marked dry_run, in figures/dry-run/")
    a = ap.parse_args(argv)
    profile = None if a.profile == "auto" else a.profile
    if a.dry_run:
        check(profile in (None, "paper", "paper-dry"), f"--dry-run is the paper profile's (paper-dry), not {profile}'s")
        profile = "paper-dry"
    run(profile, a.figures_dir, a.only, a.device)
    return 0


main = cli("rtlkit.suite.figures", _main)

if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    from rtlkit.suite import figures as _package_module
    sys.exit(_package_module.main())
