"""What a figure suite will train and evaluate, without running it.

    rtlkit plan --profile full
    rtlkit plan --profile full --bench bench/results/<run>.json   # + a time estimate

The notebooks' experiment steps run with the run cache in recording mode (``runs.recording``):
nothing trains, nothing is written. It lists every
unique source training, fine-tune and evaluation, with its work in image passes:

- A: one attack step on one image (forward + input gradient);
- T: one training step on one image (forward + backward + SGD);
- F: one forward pass on one image (Square's queries, randomized smoothing's noisy samples).

With a benchmark JSON from ``python -m bench.throughput`` on the profile's model and input, these
counts become seconds. T = 1 / (fine-tune k=all img/s). A = (1 / PGD-7 AT img/s - T) / 7. The
evaluation step costs come from the PGD-100 rows, ours and foolbox's. The estimate leaves out
compilation, data loading and Python overhead. It also charges every fine-tune as k = all, so it is
an upper bound there.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path


from rtlkit.measure.attacks import APGD, FoolboxPGD, Square
from rtlkit.core.errors import ConfigError, DatasetNotFound, check, check_notebooks, cli
from rtlkit.core.io import atomic_write_json
from rtlkit.train.methods.fdm import FDMTraining
from rtlkit.studies.profiles import PROFILES, Profile, default_name, get
from rtlkit.runs.store import MARKER, check_environment, is_cached, run_dir, runs_root
from rtlkit.runs.specs import DataSpec, ExternalSource, TransferRun, input_shape_of
from rtlkit.runs.cache import cert_path, eval_path, recording
from rtlkit.train.loop import AdversarialTraining
from rtlkit.measure.smoothing import Smoothing
from rtlkit.core.data import REPO_ROOT
from rtlkit.core.models import build
from rtlkit.core import data as D
from rtlkit.suite import registry
from rtlkit.suite.session import optional_datasets, probe_folder, required_datasets
from rtlkit.core.runtime import configure_threads, default_cpu_isa, pin_cpu_isa

# Each notebook's study module and the experiment steps it calls, in order (tests/suite/test_plan.py
# checks them against the notebooks).


@functools.lru_cache(maxsize=None)
def _n_train(spec: DataSpec) -> int:
    return len(spec.train())


@functools.lru_cache(maxsize=None)
def _n_test(spec: DataSpec) -> int:
    return len(spec.test())


def _attack_steps(a) -> int:
    """Gradient steps per image of one of our attacks (APGD: every restart, an upper bound, since
    restarts attack only the survivors); Square's queries are forward passes, counted apart."""
    if isinstance(a, APGD):
        return a.n_iter * a.n_restarts
    if isinstance(a, Square):
        return 0
    return a.steps


@dataclass
class Plan:
    profile: str
    model: str = ""
    trainings: dict = field(default_factory=dict)     # run dir name -> row
    evaluations: dict = field(default_factory=dict)   # (run dir name, attacks, test_n) -> row
    skipped: list = field(default_factory=list)

    def add_training(self, run) -> None:
        if hasattr(run, "source"):   # a transfer or a head: its source first
            self.add_training(run.source)
        name = run_dir(run).name
        if name in self.trainings:
            return
        if isinstance(run, ExternalSource):   # loaded, not trained: its converted weights are cached
            params = _params(run.model, run.num_outputs(), run.channels)
            self.trainings[name] = {"run": name, "kind": run.kind, "method": f"checkpoint ({run.format})",
                                    "images": 0, "flops": _run_flops(run), "params": params, "bytes": params * 4,
                                    "path": str(run_dir(run) / MARKER), "A": 0, "T": 0.0, "cached": is_cached(run),
                                    "what": Path(run.path).name}
            return
        n = _n_train(run.data)
        m = run.method
        per_epoch = (n // m.batch_size) * m.batch_size if n >= m.batch_size else n
        images = per_epoch * m.epochs if m.steps is None else m.steps * min(m.batch_size, n)
        if run.kind == "head":   # trains on cached features: one feature forward of n images, no image steps
            images = 0
        steps = m.attack.steps if isinstance(m, AdversarialTraining) else 0
        t = images * (1.0 + (1 / 3 if isinstance(m, FDMTraining) and m.lam > 0 else 0.0))  # FDM: a clean forward
        classes, _, _ = _shape(run.data)
        params = _params(_spec(run), classes, _input_channels(run))
        self.trainings[name] = {"run": name, "kind": run.kind, "method": m.kind, "images": images,
                                "flops": _run_flops(run), "params": params,
                                "bytes": params * 4 * (1 if run.kind == "head" else 3),
                                **({"features": [run_dir(run.source).name, repr(run.data), n * _feature_dim(_spec(run)) * 4]}
                                   if run.kind == "head" else {}),
                                "path": str(run_dir(run) / MARKER),
                                "A": images * steps, "T": t, "cached": is_cached(run),
                                "what": f"{run.data.label}" + (f" k={run.policy.k}" if isinstance(run, TransferRun) else "")}

    def add_evaluation(self, run, attacks, test_n: int | None, path=None, redo=None, split: str = "test") -> None:
        """An evaluation by attacks (``runs.get_or_evaluate``, on its test images or, with
        ``split="train"``, its training images), a certification by one smoothing
        (``runs.get_or_certify``, recorded with ``[smoothing]``), or other per-image work recorded
        with the file it leaves (noisy features, input search: ``attack_steps`` and
        ``forward_passes`` per image)."""
        self.add_training(run)
        key = (run_dir(run).name, tuple(a.label for a in attacks), test_n) if path is None else (str(path),)
        if split != "test":
            key += (split,)
        if key in self.evaluations:
            return self.evaluations[key]
        if path is not None:
            w = attacks[0]
            stored = w.forward_passes * test_n * _feature_dim(_spec(run)) * 4 if path.name.startswith("noisy-") else 0
            self.evaluations[key] = {"flops": _run_flops(run), "bytes": stored + 100 * test_n,
                                     "run": run_dir(run).name, "attacks": [w.label], "n_test": test_n,
                                     "A_own": w.attack_steps * test_n, "A_foolbox": 0, "F": w.forward_passes * test_n,
                                     "cached": path.is_file(), "path": str(path)}
            return self.evaluations[key]
        if attacks and isinstance(attacks[0], Smoothing):
            n = min(test_n or _n_test(run.data), _n_test(run.data))
            s = attacks[0]
            path = cert_path(run, s, test_n)
            self.evaluations[key] = {"flops": _run_flops(run), "run": key[0], "attacks": list(key[1]), "n_test": n, "A_own": 0, "A_foolbox": 0,
                                     "F": (s.n0 + s.n) * n, "cached": path.is_file(), "path": str(path)}
            return self.evaluations[key]
        spec = replace(run.data, test_n=test_n) if test_n else run.data
        n = _n_test(spec) if split == "test" else min(test_n or _n_train(run.data), _n_train(run.data))
        own = sum(_attack_steps(a) for a in attacks if not isinstance(a, FoolboxPGD)) * n
        fb = sum(a.steps for a in attacks if isinstance(a, FoolboxPGD)) * n
        fwd = sum(a.n_queries * a.n_restarts for a in attacks if isinstance(a, Square)) * n
        path = eval_path(run, attacks, test_n, split=split)
        self.evaluations[key] = {"flops": _run_flops(run), "run": key[0], "attacks": list(key[1]), "n_test": n, "A_own": own, "A_foolbox": fb,
                                 "F": fwd, "cached": path.is_file(), "path": str(path)}
        return self.evaluations[key]

    def paths(self) -> list[str]:
        """The file each planned training (its completion marker) and evaluation (its JSON) leaves
        when done: what a progress bar counts."""
        return [r["path"] for r in self.trainings.values()] + [r["path"] for r in self.evaluations.values()]

    def totals(self, include_cached: bool = True) -> dict:
        tr = [r for r in self.trainings.values() if include_cached or not r["cached"]]
        ev = [r for r in self.evaluations.values() if include_cached or not r["cached"]]
        return {"sources": sum(r["kind"] == "source" for r in tr),
                "transfers": sum(r["kind"] == "transfer" for r in tr), "heads": sum(r["kind"] == "head" for r in tr),
                "evaluations": len(ev),
                "A_train": sum(r["A"] for r in tr), "T": sum(r["T"] for r in tr),
                "A_eval_own": sum(r["A_own"] for r in ev), "A_eval_foolbox": sum(r["A_foolbox"] for r in ev),
                "F_eval": sum(r.get("F", 0) for r in ev)}


def record(profile: Profile, notebooks: list[str] | None = None):
    """The notebooks' (all, or those named) requests to the cache, in order, with nothing run
    (``runs.recording``), and the steps skipped for missing data."""
    skipped = []
    with recording() as rec, contextlib.redirect_stdout(sys.stderr):
        for nb, (study, steps) in registry.with_steps().items():
            if notebooks and not any(nb.startswith(n) for n in notebooks):
                continue
            module = registry.module(nb)
            for step in steps:
                try:
                    getattr(module, step)(profile, None, False)
                except DatasetNotFound as e:
                    skipped.append(f"{nb}: {step}: {str(e).splitlines()[0]}")
    return rec, skipped


def plan(profile: Profile, notebooks: list[str] | None = None) -> Plan:
    """Every unique training and evaluation the notebooks (all, or those named) would run."""
    p = Plan(profile.name, profile.model.name)
    rec, p.skipped = record(profile, notebooks)
    return _filled(p, rec)


def plan_steps(profile_name: str, model_name: str, steps) -> Plan:
    """The plan of any steps (callables with no arguments that call the run cache), recorded with
    nothing run: notebook 00's steps on your model and data."""
    p = Plan(profile_name, model_name)
    with recording() as rec, contextlib.redirect_stdout(sys.stderr):
        for step in steps:
            step()
    return _filled(p, rec)


def _filled(p: Plan, rec) -> Plan:
    for run in rec.trainings:
        p.add_training(run)
    for run, attacks, test_n, *path in rec.evaluations:
        p.add_evaluation(run, attacks, test_n, *path)
    return p


def find_bench(model: str, device: str, anywhere: bool = False) -> dict | None:
    """A committed or local benchmark JSON (bench/reference, bench/results) measured on ``model``
    on this kind of device (the device strings' first word, e.g. "CPU" or the GPU's name; with
    ``anywhere``, ``device`` anywhere in it, e.g. "H100" in "NVIDIA H100 80GB HBM3"), or None."""
    want = device.split(" [")[0].split(" (")[0]
    for folder in ("results", "reference"):
        for f in sorted((REPO_ROOT / "bench" / folder).glob("*.json"), reverse=True):
            try:
                b = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(b, dict):
                continue
            dev = str(b.get("device", ""))
            if b.get("model") == model and (want in dev if anywhere else dev.startswith(want)) and "throughput" in b:
                return b
    return None


def rates(bench: dict, path: str = "fast") -> dict:
    """Seconds per A and T unit from a bench JSON (its rows for ``path``)."""
    get = {(r["workload"], r["path"]): r["img_s"] for r in bench["throughput"]}

    def need(w):
        if (w, path) not in get:
            raise ConfigError(f"the benchmark has no {w!r} row for path {path!r}")
        return get[(w, path)]
    t = 1 / need("fine-tune k=all")
    a = (1 / need("PGD-7 AT (source)") - t) / 7
    return {"T": t, "A_train": a, "A_eval_own": 1 / need("PGD-100 eval, own") / 100,
            "A_eval_foolbox": 1 / need("PGD-100 eval, foolbox") / 100}


def estimate(totals: dict, r: dict) -> dict:
    parts = {"training (attacks)": totals["A_train"] * r["A_train"], "training (steps)": totals["T"] * r["T"],
             "evaluation (own PGD)": totals["A_eval_own"] * r["A_eval_own"],
             "evaluation (foolbox)": totals["A_eval_foolbox"] * r["A_eval_foolbox"]}
    return {**parts, "total": sum(parts.values())}


# GPU cost where no benchmark of the model on that device exists: FLOPs at a stated utilisation.
# Per image pass: T (train step) = 3 forwards, A (attack step: forward + input gradient) = 2, F = 1.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16 tensor-core peaks (vendor sheets)
UTILISATION = 0.30
PASSES = {"T": 3.0, "A": 2.0, "F": 1.0}


@functools.lru_cache(maxsize=None)
def forward_flops(spec, classes: int, channels: int, size: int) -> float:
    """FLOPs of one forward pass of one image (torch's FLOP counter on a meta-free CPU model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build(spec, classes, channels, (0.5,) * channels, (0.5,) * channels).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    return float(fc.get_total_flops())


@functools.lru_cache(maxsize=None)
def _shape(spec: DataSpec) -> tuple[int, int, int]:
    info = D.load(spec.name, "train").info
    return (len(spec.classes) if spec.classes else info.num_classes, info.channels, info.size)


def _root(run):
    """The source at the bottom of ``run`` (itself for a source): its model and input shape."""
    while hasattr(run, "source"):
        run = run.source
    return run


def _spec(run):
    """The backbone spec of ``run``'s model: its root source's (a fine-tune or a head keeps it)."""
    return _root(run).model


def _root_input(run) -> tuple[int, int]:
    """(channels, size) of the images ``run``'s model takes: its root source's."""
    return input_shape_of(_root(run))


def _input_channels(run) -> int:
    return _root_input(run)[0]


def _run_flops(run) -> float:
    """One forward pass of ``run``'s model on one image of its input shape (a transfer's images
    are adapted to its source's shape)."""
    channels, size = _root_input(run)
    classes = run.num_outputs() if isinstance(run, ExternalSource) else _shape(run.data)[0]
    return forward_flops(_spec(run), classes, channels, size)


def cost(profile_name: str, model_name: str, steps, gpu: str = "H100") -> str:
    """What ``steps`` will train and evaluate (recorded, nothing run) and its GPU time from FLOPs at
    the plan's stated utilisation of ``gpu``'s bf16 peak: notebook 00's line
    ``plan.cost(*your_transfer.planned(setup))``."""
    p = plan_steps(profile_name, model_name, steps)
    t, todo = p.totals(), p.totals(include_cached=False)
    hours = gpu_seconds(p, gpu, include_cached=False) / 3600
    return (f"{t['sources'] + t['transfers'] + t['heads']} runs + {t['evaluations']} evaluations, "
            f"{todo['sources'] + todo['transfers'] + todo['heads'] + todo['evaluations']} not cached: about "
            + (f"{hours:.2g} GPU-hours" if hours >= 0.1 else f"{hours * 3600:.2g} GPU-seconds")
            + f" on one {gpu} at {UTILISATION:.0%} of its bf16 peak (from FLOPs)")


def gpu_seconds(p: Plan, device: str = "H100", utilisation: float = UTILISATION, include_cached: bool = True) -> float:
    """The plan's work as seconds of one ``device`` GPU at ``utilisation`` of its bf16 peak."""
    rate = PEAK_TFLOPS[device] * 1e12 * utilisation
    flops = 0.0
    for r in p.trainings.values():
        if include_cached or not r["cached"]:
            flops += r["flops"] * (PASSES["T"] * r["T"] + PASSES["A"] * r["A"])
    for r in p.evaluations.values():
        if include_cached or not r["cached"]:
            flops += r["flops"] * (PASSES["A"] * (r["A_own"] + r["A_foolbox"]) + PASSES["F"] * r.get("F", 0))
    return flops / rate


def disk_bytes(p: Plan) -> int:
    """An upper bound on the run cache the plan fills: per training its model.pt and its newest
    resumable checkpoint (weights + SGD momentum; a head: its model.pt alone), the frozen features
    its heads train on (once per source and data), per evaluation a per-example table (~100 bytes
    a row) or the noisy features it stores (notebook 05)."""
    feats = {tuple(r["features"][:2]): r["features"][2] for r in p.trainings.values() if "features" in r}
    return int(sum(r["bytes"] for r in p.trainings.values()) + sum(feats.values())
               + sum(r.get("bytes", 100 * (r["n_test"] or 0)) for r in p.evaluations.values()))


def _feature_dim(spec) -> int:
    """The width of the backbone's penultimate feature."""
    return spec.feature_dim


@functools.lru_cache(maxsize=None)
def _params(spec, classes: int, channels: int) -> int:
    return sum(t.numel() for t in build(spec, classes, channels, (0.5,) * channels, (0.5,) * channels).parameters())


def read_bench(path: str) -> dict:
    """A benchmark JSON named on the command line: a missing, unreadable or malformed file is a
    ConfigError naming it."""
    try:
        with open(path) as f:
            bench = json.load(f)
    except OSError as e:
        raise ConfigError(f"--bench {path}: cannot be read ({e.strerror or e})") from e
    except ValueError as e:
        raise ConfigError(f"--bench {path}: not JSON ({e})") from e
    check(isinstance(bench, dict) and isinstance(bench.get("throughput"), list),
          f"--bench {path}: not a benchmark of `python -m bench.throughput` (a JSON object with a 'throughput' "
          f"list), but a JSON {type(bench).__name__}")
    return bench


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="auto", choices=PROFILES + ("auto",))
    ap.add_argument("--gpu", action="store_true", help="plan the GPU variant of `quick` on any machine")
    ap.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 03")
    ap.add_argument("--bench", default=None, help="a bench/results JSON measured on the profile's model")
    ap.add_argument("--path", default="fast", choices=["fast", "eager fp32"])
    ap.add_argument("--json", default=None, help="write the plan here")
    ap.add_argument("--check", action="store_true", help="only check that every dataset the profile needs loads "
                    "(exit 2 naming each missing one, with the command that gets it)")
    ap.add_argument("--gpu-kind", default="H100", choices=sorted(PEAK_TFLOPS),
                    help="the GPU the FLOP-based estimate assumes")
    a = ap.parse_args(argv)
    # every setting before any work
    check_environment()
    check_notebooks(a.only, registry.with_steps())
    bench = read_bench(a.bench) if a.bench else None
    if a.json:   # its folder is made if need be; a file in the way is an error now, not after the plan
        check(not Path(a.json).is_dir(), f"--json {a.json} is a folder; name a file")
        probe_folder(Path(a.json).absolute().parent, "folder for --json", "--json")
    name = default_name() if a.profile == "auto" else a.profile
    pin_cpu_isa(default_cpu_isa(name, "cuda" if a.gpu else None))   # the cache keys the notebooks would use
    configure_threads()   # a pinned key holds the thread count, as the notebooks' kernels set it
    prof = get(name, gpu=True if a.gpu else None)
    if a.check:
        D.require(required_datasets(prof) + optional_datasets(prof))
        print(f"profile {prof.name}: every dataset loads ({', '.join(required_datasets(prof) + optional_datasets(prof))})")
        return 0
    with D.stand_ins() as absent:   # a missing set is counted at torchvision's size; none of it is trained on
        p = plan(prof, a.only)
        books = [nb for nb in registry.with_steps() if not a.only or any(nb.startswith(o) for o in a.only)]
        per_book = {nb: plan(prof, [nb]) for nb in books}
    tot, todo = p.totals(), p.totals(include_cached=False)
    print(f"profile {prof.name}: {prof.model.name}, {prof.source.label} -> {prof.target.label}")
    print(f"  {tot['sources']} source trainings, {tot['transfers']} fine-tunes, {tot['heads']} heads on cached features, "
          f"{tot['evaluations']} evaluations; not cached: {todo['sources'] + todo['transfers'] + todo['heads']} "
          f"trainings, {todo['evaluations']} evaluations")
    print(f"  work: {tot['A_train'] / 1e6:.1f}M attack steps + {tot['T'] / 1e6:.1f}M training steps in training; "
          f"{tot['A_eval_own'] / 1e6:.1f}M own-PGD and {tot['A_eval_foolbox'] / 1e6:.1f}M foolbox steps in "
          f"evaluation; {tot['F_eval'] / 1e6:.1f}M forward passes (Square, certification) (image passes)")
    measured = find_bench(prof.model.name, a.gpu_kind, anywhere=True)
    if measured is not None:   # a benchmark of this model on this kind of GPU: its rates, not FLOPs
        r = rates(measured, "fast")

        def cost(q, include_cached=True):
            return estimate(q.totals(include_cached=include_cached), r)["total"]
        basis = f"from the benchmark of {prof.model.name} on {measured.get('device')} ({measured.get('created', '')})"
    else:
        def cost(q, include_cached=True):
            return gpu_seconds(q, a.gpu_kind, include_cached=include_cached)
        basis = (f"from FLOPs at {UTILISATION:.0%} of the bf16 peak ({PEAK_TFLOPS[a.gpu_kind]:g} TFLOP/s; no benchmark "
                 f"of {prof.model.name} on a {a.gpu_kind} yet)")
    hours = {nb: cost(q) / 3600 for nb, q in per_book.items()}
    print(f"  {a.gpu_kind}-hours {basis}, each notebook alone from an empty cache:")
    for nb, h in hours.items():
        print(f"    {nb:<26} {h:8.1f} h")
    print(f"    {'suite (shared runs once)':<26} {cost(p) / 3600:8.1f} h; not cached: "
          f"{cost(p, include_cached=False) / 3600:.1f} h")
    print(f"  run cache: at most {disk_bytes(p) / 2 ** 30:.1f} GiB in {runs_root()}")
    for s in p.skipped:
        print("  skipped (data absent):", s)
    if absent:
        print(f"  missing on this machine (counted at torchvision's sizes): {', '.join(sorted(absent))}")
        for n in sorted(absent):
            print(f"    {n}: {D.get_command(n)}")
    out = {"profile": prof.name, "model": prof.model.name, "totals": tot, "not_cached": todo,
           "gpu_hours": {"device": a.gpu_kind, "basis": basis, "per_notebook": hours, "suite": cost(p) / 3600},
           "disk_bytes": disk_bytes(p), "missing_datasets": sorted(absent),
           "trainings": list(p.trainings.values()), "evaluations": list(p.evaluations.values()),
           "skipped": p.skipped}
    if bench is not None:
        if bench.get("model") != prof.model.name:
            print(f"  note: the benchmark ran {bench.get('model')}, the profile trains {prof.model.name}")
        est = estimate(todo, rates(bench, a.path))
        out["estimate_seconds"] = est
        out["bench"] = {k: bench.get(k) for k in ("model", "input", "device", "torch", "commit")}
        print(f"  estimate on {bench.get('device')} ({a.path} path), uncached work only:")
        for k, v in est.items():
            print(f"    {k:<22} {v / 60:7.1f} min")
    if a.json:
        atomic_write_json(a.json, out)
    return 0


main = cli("rtlkit.suite.plan", _main)

if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    from rtlkit.suite import plan as _package_module
    sys.exit(_package_module.main())
