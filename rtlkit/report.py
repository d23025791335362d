"""A notebook session: profile + runtime + clock, and saving each figure with the tidy CSV
behind it and a manifest (profile, device, git commit, wall time)."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from . import profiles
from .data import REPO_ROOT
from .io import _atomic, atomic_write_csv, atomic_write_json
from .profiles import Profile
from .runs import to_jsonable
from .runtime import Runtime


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
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
        png = self.figures_dir / f"{name}.png"
        _atomic(png, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
        atomic_write_csv(self.figures_dir / f"{name}.csv", table)
        atomic_write_json(self.figures_dir / f"{name}.json", {
            "figure": png.name, "table": f"{name}.csv", "notebook": self.notebook,
            "profile": self.profile.name, "device": self.runtime.describe(),
            "commit": git_commit(), "wall_seconds_since_notebook_start": round(time.time() - self.t0, 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(),
            "parameters": self.params, "settings": to_jsonable(self.profile), **(extra or {})})
        return png

    def elapsed(self) -> float:
        return time.time() - self.t0


def start(notebook: str, profile: str = "quick", figures_dir: str | None = None, device: str | None = None,
          progress: bool = True, **overrides) -> Session:
    """Resolve the notebook's parameters into a profile and a runtime (errors come here, before compute)."""
    runtime = Runtime(device=device)
    prof = profiles.get(profile, gpu=runtime.is_cuda, **overrides)
    fig_dir = Path(figures_dir) if figures_dir else Path(os.environ.get("RTLKIT_FIGURES", REPO_ROOT / "figures"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return Session(notebook, prof, runtime, fig_dir,
                   {"profile": profile, "device": device, **{k: v for k, v in overrides.items()}},
                   progress=progress)
