"""``rtlkit card RUN``: the report card of a cached run (a folder of ``runs/``), printed; the
card of a run rebuilt from its folder's config.json and checked to hash back to the folder."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from rtlkit.core.errors import ConfigError, check, check_int
from rtlkit.core.runtime import Runtime, configure_threads, default_cpu_isa, pin_cpu_isa
from rtlkit.measure.card import Card, NORMS
from rtlkit.runs.card import get_or_card
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rtlkit card", description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a run folder's name in runs/ (or its path)")
    ap.add_argument("--list", action="store_true", help="list the complete runs in the cache")
    ap.add_argument("--eps", type=float, help="eps in [0, 1] pixels (default: the run's training eps)")
    ap.add_argument("--norm", choices=NORMS, help="default: the run's training norm")
    ap.add_argument("--test-n", type=int, default=500, help="class-balanced test images (default 500)")
    ap.add_argument("--profile", default="quick", help="which profile's card settings (quick reduces AutoAttack's)")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    try:
        check(a.profile in PROFILES, f"unknown profile {a.profile!r}; one of {', '.join(PROFILES)}")
        if a.device:
            Runtime(a.device)   # an unknown device: one error before anything
        check_environment()
        pin_cpu_isa(default_cpu_isa(a.profile, a.device))
        configure_threads()
        if a.list:
            root = runs_root()
            for f in sorted(root.iterdir()) if root.is_dir() else []:
                if f.is_dir() and read_marker(f, repair=False) is not None:
                    print(f.name)
            return 0
        check(a.run is not None, "name a run (rtlkit card --list names the cached ones)")
        check_int("--test-n", a.test_n, 1)
        profile = get(a.profile)
        runtime = Runtime(a.device) if a.device else Runtime()
        run = load_run(a.run, runtime)
        threat = default_eps(run)
        norm = a.norm or (threat[0] if threat else None)
        eps = a.eps if a.eps is not None else (threat[1] if threat and threat[0] == norm else None)
        check(norm is not None and eps is not None, f"{a.run} was not trained against an attack: give --eps and --norm")
        card = dataclasses.replace(profile.card, eps=eps, norm=norm) if profile.card is not None else Card(eps=eps, norm=norm)
        res = get_or_card(run, card, runtime, progress=True, test_n=a.test_n)
    except ConfigError as e:
        print(f"rtlkit card: {e}", file=sys.stderr)
        return 2
    pd.set_option("display.width", 160)
    print(f"report card of {a.run}: {card.label}, n = {res['n_test']}")
    print(res["summary"].to_string(index=False))
    print(res["checks"][["check", "status", "detail"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
