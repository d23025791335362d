"""A notebook session: profile + runtime + clock, and saving each figure with the tidy CSV
behind it and a manifest (profile, device, git commit, wall time)."""
from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from rtlkit.core import data as D
from rtlkit.studies import profiles
from rtlkit.core.data import REPO_ROOT
from rtlkit.core.errors import ConfigError
from rtlkit.core.io import atomic_write, atomic_write_csv, atomic_write_json, sweep_tmp
from rtlkit.studies.profiles import Profile
from rtlkit.runs.store import check_environment, runs_root
from rtlkit.runs.specs import to_jsonable
from rtlkit.core.runtime import Runtime, configure_threads, cpu_record, default_cpu_isa, pin_cpu_isa_if_possible


# Columns a figure CSV may hold that measure the machine, not the config's result (a wall time):
# a rerun reproduces every other byte of a pinned CPU run's CSV (bench/reproduce.py; docs/reliability.md).
MEASURED_COLUMNS = ("train_seconds",)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        sha = out.stdout.strip()
        # dirty = code or notebooks changed; figures/ itself is what a run rewrites, so it does not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)figures"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Session:
    notebook: str
    profile: Profile
    runtime: Runtime
    figures_dir: Path
    params: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.time)
    progress: bool = True

    def save(self, fig, name: str, table: pd.DataFrame, extra: dict | None = None) -> Path:
        """Write ``<name>.png``, ``<name>.csv`` and ``<name>.json`` (the manifest) to the figures folder."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        sweep_tmp(self.figures_dir, dead_only=True)   # a save killed mid-write left its temp file here
        png = self.figures_dir / f"{name}.png"
        atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
        atomic_write_csv(self.figures_dir / f"{name}.csv", table)
        atomic_write_json(self.figures_dir / f"{name}.json", {
            "figure": png.name, "table": f"{name}.csv", "notebook": self.notebook,
            "profile": self.profile.name, "device": self.runtime.describe(),
            "commit": git_commit(), "wall_seconds_since_notebook_start": round(time.time() - self.t0, 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "numerics": self.runtime.numerics(), "cpu": cpu_record(),
            **({"dry_run": True} if self.profile.name.endswith("-dry") else {}),
            "parameters": self.params, "settings": to_jsonable(self.profile), **(extra or {})})
        return png

    def elapsed(self) -> float:
        return time.time() - self.t0


def probe_folder(path: Path, what: str, env: str) -> None:
    """Check that ``path`` is (or can be made) a writable folder, writing nothing that stays: a
    ConfigError now instead of a failed write after the compute."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"the {what} {path} cannot be made: {existing} is a file, not a folder (set {env})")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".rtlkit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"the {what} {path} is not writable ({e.strerror or e}); "
                          f"make {existing} writable or set {env} to another folder") from e


def required_datasets(profile: Profile) -> list[str]:
    """The datasets the notebooks cannot run without: source, target, re-init source and
    notebook 04's source. (Table 4's extra pairs, 04's targets and 05's pairs are optional: a
    missing one is skipped with a message.)"""
    specs = [profile.source, profile.target, profile.reinit_source]
    if profile.pretraining is not None:
        specs.append(profile.pretraining.pt_source)
    return list(dict.fromkeys(s.name for s in specs))


def optional_datasets(profile: Profile) -> list[str]:
    """The datasets of the steps that are skipped, with a message, when their data is missing."""
    specs = [d for pair in profile.pairs for d in pair if d is not None]
    if profile.pretraining is not None:
        specs += list(profile.pretraining.pt_targets)
    if profile.provable is not None:
        pv = profile.provable
        specs += [d for pair in (pv.main_pair,) + tuple(pv.table1_pairs) + tuple(pv.table4_pairs) for d in pair
                  if d is not None]
    req = set(required_datasets(profile))
    return [n for n in dict.fromkeys(s.name for s in specs) if n not in req]


def _check_image_counts(profile: Profile) -> None:
    """The class-balanced test subsets of notebooks 04 and 05 hold at least one image per class of
    every target that is on this machine: a ConfigError naming the parameter, before any training."""
    checks = []
    if profile.pretraining is not None and profile.pretraining.attack_images is not None:
        checks += [("attack_images", profile.pretraining.attack_images, t) for t in profile.pretraining.pt_targets]
    if profile.provable is not None:
        pv = profile.provable
        targets = [pair[1] for pair in (pv.main_pair,) + tuple(pv.table1_pairs) + tuple(pv.table4_pairs)]
        checks += [(name, getattr(pv, name), t) for name in ("smooth_images", "search_images") for t in targets]
    for name, n, spec in checks:
        try:
            classes = D.load(spec.name, "test").info.num_classes if spec.classes is None else len(spec.classes)
        except D.DatasetNotFound:
            continue   # an optional target that is missing: its step is skipped
        if n < classes:
            raise ConfigError(f"{name} = {n} is fewer than the {classes} classes of {spec.label}: the class-balanced "
                              f"test subset needs at least one image per class (give {name} >= {classes})")


def probe_datasets(profile: Profile) -> None:
    """Load every dataset the notebooks need: the missing ones are one DatasetNotFound naming
    all of them, now, before the source trains; then the settings that depend on the data."""
    D.require(required_datasets(profile))
    _check_image_counts(profile)
    if profile.shafahi is not None:   # notebook 06: every N per class and the gradient images fit the target
        profile.shafahi.check_data(profile.target)


def default_figures_dir(profile: str) -> Path:
    """figures/, where the committed figures live; figures/smoke/ and figures/dry-run/ for the smoke
    and paper-dry profiles, so that a plumbing run never replaces them ($RTLKIT_FIGURES or ``figures_dir`` override both)."""
    if profile in ("smoke", "paper-dry"):
        return REPO_ROOT / "figures" / ("smoke" if profile == "smoke" else "dry-run")
    return REPO_ROOT / "figures"


def notebook_parameters(notebook: str) -> list[str] | None:
    """The names a notebook's parameters cell (the cell tagged "parameters") assigns: what papermill
    may set; None where ``notebooks/`` has no such notebook."""
    path = REPO_ROOT / "notebooks" / f"{notebook}.ipynb"
    if not path.is_file():
        return None
    cells = json.loads(path.read_text())["cells"]
    src = next(("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    return _assigned(ast.parse(src))


def _assigned(tree) -> list[str]:
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


def injected_parameters() -> list[str]:
    """The names papermill set in this kernel (its injected cell, "# Parameters" and assignments, is in
    the kernel's input history); [] outside a papermill run."""
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    history = shell.user_ns.get("In", []) if shell is not None else []
    for src in history:
        if isinstance(src, str) and src.startswith("# Parameters\n"):
            try:
                return _assigned(ast.parse(src))
            except SyntaxError:
                return []
    return []


def check_parameters(notebook: str) -> None:
    """A parameter papermill set that the notebook does not have (a misspelling: ``-p source_name``)
    is a ConfigError naming the notebook's parameters, not papermill's warning and a run on the
    defaults."""
    given = injected_parameters()
    known = notebook_parameters(notebook) if given else None
    if known is None:   # not a papermill run, or a copy of the notebook elsewhere: papermill's own warning
        return
    unknown = [p for p in given if p not in known]
    if unknown:
        raise ConfigError(f"notebook {notebook} has no parameter {', '.join(unknown)}; its parameters are "
                          f"{', '.join(known)}")


def start(notebook: str, profile: str = "quick", figures_dir: str | None = None, device: str | None = None,
          progress: bool = True, **overrides) -> Session:
    """Resolve the notebook's parameters into a profile and a runtime, and probe every dataset and
    folder they need: every error comes here, before compute and before any file is written."""
    check_environment()
    check_parameters(notebook)
    threads = configure_threads()
    # the committed figures' profile runs pinned (runtime.default_cpu_isa), in JupyterLab as under make figures
    pin_cpu_isa_if_possible(default_cpu_isa(profile, device))
    runtime = Runtime(device=device)
    prof = profiles.get(profile, gpu=runtime.is_cuda, **overrides)
    fig_dir = Path(figures_dir) if figures_dir else Path(os.environ.get("RTLKIT_FIGURES", default_figures_dir(profile)))
    probe_folder(fig_dir, "figures folder", "figures_dir or RTLKIT_FIGURES")
    probe_folder(runs_root(), "run cache", "RTLKIT_RUNS")
    probe_datasets(prof)
    print(f"rtlkit: {threads} CPU thread(s) (RTLKIT_THREADS / OMP_NUM_THREADS); runs in {runs_root()}")
    return Session(notebook, prof, runtime, fig_dir,
                   {"profile": profile, "device": device, **{k: v for k, v in overrides.items()}},
                   progress=progress)
