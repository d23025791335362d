"""``rtlkit card``: the report card of any model on any images, printed and written as CSV.

    rtlkit card RUN                          # a cached run (a folder of runs/), at its training eps
    rtlkit card --arch resnet18 --checkpoint my.pt --format robustness --data my_images/ --eps 8/255

A cached run's card rebuilds the run from its folder's config.json and checks it hashes back to
the folder. A checkpoint's card reads the file where it enters (``rtlkit.runs.specs.ExternalSource``:
finite, fits the architecture, its normalisation inside the model) and the images as a folder
(ImageFolder), an ``.npz`` or a registered dataset's name. Every bad input (a missing or foreign
checkpoint, a folder without images, an eps that is not a number or lies outside (0, 1]) is one
line naming it and exit status 2, before any compute. Without ``--profile`` the card is
AutoAttack's standard version (``rtlkit.measure.card.Card``'s defaults)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import pandas as pd

from rtlkit.core import data as D
from rtlkit.core.errors import ConfigError, DatasetNotFound, check, check_int
from rtlkit.core.io import atomic_write_csv
from rtlkit.core.models.checkpoints import CHECKPOINT_FORMATS
from rtlkit.core.models import parse_spec
from rtlkit.core.runtime import Runtime, configure_threads, default_cpu_isa, pin_cpu_isa
from rtlkit.measure.card import Card, NORMS
from rtlkit.runs.card import get_or_card
from rtlkit.runs.specs import DataSpec, ExternalSource
from rtlkit.runs.store import check_environment, read_marker, run_dir, runs_root
from rtlkit.studies.profiles import PROFILES, get


def run_from_config(cfg):
    """A run (or any config) rebuilt from its config.json: every ``_type`` is a rtlkit config class."""
    reg = _config_classes()
    if isinstance(cfg, dict) and "_type" in cfg:
        check(cfg["_type"] in reg, f"config.json names an unknown class {cfg['_type']!r}")
        cls = reg[cfg["_type"]]
        return cls(**{k: run_from_config(v) for k, v in cfg.items() if k not in ("_type", "_v")})
    if isinstance(cfg, list):
        return tuple(run_from_config(v) for v in cfg)
    if isinstance(cfg, dict):
        return {k: run_from_config(v) for k, v in cfg.items()}
    return cfg


def _config_classes() -> dict:
    import importlib
    import pkgutil

    import rtlkit
    reg = {}
    names = [m.name for m in pkgutil.walk_packages(rtlkit.__path__, "rtlkit.") if not m.ispkg]
    for name in names:
        if name in ("rtlkit.suite.launch", "rtlkit.suite.figures", "rtlkit.studies.widgets", "rtlkit.cli"):
            continue
        mod = importlib.import_module(name)
        for k, v in vars(mod).items():
            if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == name:
                reg[k] = v
    return reg


def load_run(name: str, runtime: Runtime | None = None):
    """The run of a folder of the run cache, by its name (``transfer-013745c4a3df``) or path; its
    config rebuilt, and checked to hash back to the folder."""
    folder = Path(name) if ("/" in name or Path(name).is_dir()) and Path(name).is_dir() else runs_root() / name
    check(folder.is_dir(), f"no cached run {name!r} in {runs_root()} (rtlkit card --list names them)")
    check(read_marker(folder, repair=False) is not None, f"run {folder.name} is not complete (no {folder.name}/complete.json)")
    try:
        cfg = json.loads((folder / "config.json").read_text())
        run = run_from_config(cfg)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{folder / 'config.json'} cannot be read as a run config ({type(e).__name__}: {e})") from None
    check(run_dir(run, runtime).name == folder.name,
          f"{folder.name}'s config hashes to {run_dir(run, runtime).name} under this runtime's numerics "
          f"({(runtime or Runtime()).numerics()}): it was made under other numerics (device, bf16, compile, CPU ISA pin)")
    return run


def default_eps(run) -> tuple[str, float] | None:
    """The threat model a run was trained for: its training attack's norm and eps (its source's for a
    transfer or a head), or None."""
    for r in (run, getattr(run, "source", None)):
        a = getattr(getattr(r, "method", None), "attack", None)
        if a is not None and getattr(a, "eps", 0) > 0:
            return a.norm, a.eps
    return None


def parse_eps(text: str, norm: str) -> float:
    """``--eps``: a number or a fraction of two (``8/255``), in (0, 1] for L-inf, positive for L2."""
    num, _, den = str(text).partition("/")
    try:
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--eps {text}: not a number or a fraction like 8/255") from None
    check(math.isfinite(value) and value > 0 and (norm != "linf" or value <= 1),
          f"--eps {text} = {value:.6g}: outside (0, 1] for {norm} (eps is in [0, 1] pixels)"
          if norm == "linf" else f"--eps {text} = {value:.6g}: must be positive")
    return value


def dataset_of(data: str, size: int | None) -> str:
    """``--data``: an ImageFolder directory, an ``.npz``, or a registered dataset's name; its name."""
    path = Path(data).expanduser()
    if path.exists():
        check(path.is_dir() or path.suffix == ".npz", f"--data {data}: neither a folder of images nor an .npz")
        return D.your_files(path, size)
    try:
        D.load(data, "test")
    except (DatasetNotFound, ConfigError) as e:
        raise ConfigError(f"--data {data}: no such folder or file, and not a dataset rtlkit knows "
                          f"({str(e).splitlines()[0]})") from None
    return data


def checkpoint_source(arch: str, checkpoint: str, fmt: str, data: str, size: int | None) -> ExternalSource:
    """The checkpoint as a source with its own test data: every fault of the file or the images is
    a ConfigError here, before any attack."""
    check(Path(checkpoint).expanduser().is_file(), f"--checkpoint {checkpoint}: no such file")
    return ExternalSource(parse_spec(arch), checkpoint, fmt, data=DataSpec(dataset_of(data, size)))


def write_card(res: dict, out: Path) -> list[Path]:
    """The card as two tidy CSVs: ``out`` (each attack's accuracy, its SE and n) and
    ``<out>-checks.csv`` (each masking check, its status and numbers)."""
    checks = out.with_name(out.stem + "-checks.csv")
    atomic_write_csv(out, res["summary"])
    atomic_write_csv(checks, res["checks"])
    return [out, checks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rtlkit card", description=__doc__.splitlines()[0],
                                 epilog="A checkpoint's card needs --arch, --checkpoint, --data and --eps.")
    ap.add_argument("run", nargs="?", help="a run folder's name in runs/ (or its path)")
    ap.add_argument("--list", action="store_true", help="list the complete runs in the cache")
    ap.add_argument("--arch", help="the checkpoint's architecture: resnet18|34|50, wrn-28-10, ...")
    ap.add_argument("--checkpoint", help="a checkpoint file (.pt, .pth)")
    ap.add_argument("--format", default="torchvision", choices=CHECKPOINT_FORMATS, help="the checkpoint's key layout")
    ap.add_argument("--data", help="the images: an ImageFolder directory, an .npz, or a dataset name (mnist-5k, ...)")
    ap.add_argument("--size", type=int, help="resize and centre-crop the images to this many pixels")
    ap.add_argument("--eps", help="eps in [0, 1] pixels: a number or a fraction (8/255); default: a run's training eps")
    ap.add_argument("--norm", choices=NORMS, help="linf or l2 (default: the run's training norm; linf for a checkpoint)")
    ap.add_argument("--test-n", type=int, default=500, help="class-balanced test images (default 500)")
    ap.add_argument("--profile", help="a profile's card settings (quick reduces AutoAttack's); default: AutoAttack's standard")
    ap.add_argument("--out", help="the card's CSV (default: card-<run or checkpoint>.csv here; checks beside it)")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    try:
        check(a.profile is None or a.profile in PROFILES, f"unknown profile {a.profile!r}; one of {', '.join(PROFILES)}")
        check(not (a.run and a.checkpoint), "name a cached run or give --checkpoint, not both")
        if a.checkpoint or a.arch or a.data:
            for flag in ("arch", "checkpoint", "data", "eps"):
                check(getattr(a, flag) is not None, f"a checkpoint's card needs --{flag} (rtlkit card --help)")
        if a.device:
            Runtime(a.device)   # an unknown device: one error before anything
        check_environment()
        pin_cpu_isa(default_cpu_isa(a.profile or "quick", a.device))
        configure_threads()
        if a.list:
            root = runs_root()
            for f in sorted(root.iterdir()) if root.is_dir() else []:
                if f.is_dir() and read_marker(f, repair=False) is not None:
                    print(f.name)
            return 0
        check(a.run is not None or a.checkpoint is not None,
              "name a run (rtlkit card --list names the cached ones) or give --checkpoint")
        check_int("--test-n", a.test_n, 1)
        check(a.size is None or a.size >= 8, f"--size {a.size}: at least 8 pixels")
        runtime = Runtime(a.device) if a.device else Runtime()
        if a.checkpoint:
            norm = a.norm or "linf"
            eps = parse_eps(a.eps, norm)
            run, name = checkpoint_source(a.arch, a.checkpoint, a.format, a.data, a.size), Path(a.checkpoint).stem
        else:
            run, name = load_run(a.run, runtime), Path(a.run).name
            threat = default_eps(run)
            norm = a.norm or (threat[0] if threat else None)
            eps = parse_eps(a.eps, norm or "linf") if a.eps is not None else \
                (threat[1] if threat and threat[0] == norm else None)
            check(norm is not None and eps is not None, f"{a.run} was not trained against an attack: give --eps and --norm")
        base = get(a.profile).card if a.profile else None
        card = dataclasses.replace(base, eps=eps, norm=norm) if base is not None else Card(eps=eps, norm=norm)
        out = Path(a.out) if a.out else Path(f"card-{name}.csv")
        check(out.suffix == ".csv" and out.parent.is_dir(), f"--out {out}: a .csv in an existing folder")
        res = get_or_card(run, card, runtime, progress=True, test_n=a.test_n)
        written = write_card(res, out)
    except ConfigError as e:
        print(f"rtlkit card: {e}", file=sys.stderr)
        return 2
    pd.set_option("display.width", 160)
    print(f"report card of {name}: {card.label}, n = {res['n_test']}")
    print(res["summary"].to_string(index=False))
    print(res["checks"][["check", "status", "detail"]].to_string(index=False))
    print("written:", ", ".join(str(p) for p in written))
    return 0

if __name__ == "__main__":
    sys.exit(main())
