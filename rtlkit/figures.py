"""Regenerate the figures: execute every notebook headless with papermill at one profile.

    python -m rtlkit.figures                      # all notebooks: profile `full` on a GPU, `quick` on the CPU
    python -m rtlkit.figures --profile smoke --figures-dir /tmp/figs --only 01

Executed copies go to runs/notebooks/ (out of git); figures, CSVs and manifests to figures/.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .data import REPO_ROOT
from .errors import ConfigError
from .profiles import PROFILES, default_name

NOTEBOOKS = REPO_ROOT / "notebooks"


def notebooks(only: list[str] | None = None) -> list[Path]:
    books = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
        if not books:
            raise ConfigError(f"no notebook matches {only}; have {[b.name for b in sorted(NOTEBOOKS.glob('*.ipynb'))]}")
    return books


def run(profile: str | None = None, figures_dir: str | None = None, only: list[str] | None = None,
        device: str | None = None, out_dir: str | None = None, extra: dict | None = None) -> dict[str, float]:
    """Execute the notebooks; returns each one's wall time in seconds."""
    profile = profile or default_name(device)
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    import papermill as pm
    out = Path(out_dir or Path(os.environ.get("RTLKIT_RUNS", REPO_ROOT / "runs")) / "notebooks")
    out.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "interactive": False, **(extra or {})}
    if figures_dir:
        params["figures_dir"] = str(Path(figures_dir).resolve())
    if device:
        params["device"] = device
    times = {}
    for book in notebooks(only):
        t0 = time.time()
        print(f"[rtlkit] {book.name} (profile {profile}) ...", flush=True)
        pm.execute_notebook(str(book), str(out / f"{book.stem}-{profile}.ipynb"), parameters=params,
                            kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
        times[book.name] = time.time() - t0
        print(f"[rtlkit] {book.name}: {times[book.name]:.0f} s", flush=True)
    print(f"[rtlkit] all notebooks: {sum(times.values()):.0f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("RTLKIT_PROFILE", "auto"), choices=PROFILES + ("auto",),
                    help="auto (default): full on a GPU, quick on the CPU")
    ap.add_argument("--figures-dir", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 02")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    try:
        run(None if a.profile == "auto" else a.profile, a.figures_dir, a.only, a.device)
    except ConfigError as e:
        print(f"rtlkit: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
