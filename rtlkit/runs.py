"""Runs and the cache. A run is a frozen config dataclass; its stable hash names a folder
under ``RTLKIT_RUNS`` (default ``runs/``) holding config.json, checkpoint.pt (resumable),
model.pt, train.json, and for each evaluation eval-<hash>.json + eval-<hash>.csv (per example).

``get_or_train(run)`` returns the cached model or trains it; one robust source thus serves
every k, every BN case and every notebook.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as D
from .attacks import PGD, FoolboxPGD
from .errors import check
from .evaluate import evaluate
from .io import atomic_torch_save, atomic_write_csv, atomic_write_json, read_json
from .models import WideResNet, WRNSpec, build
from .runtime import Runtime, seed_all
from .neft import NEFT, settle
from .training import AdversarialTraining, StandardTraining, train
from .transfer import TransferPolicy, prepare_target


def runs_root() -> Path:
    return Path(os.environ.get("RTLKIT_RUNS", D.REPO_ROOT / "runs"))


def to_jsonable(obj):
    """JSON for a config. A field left at a None default is omitted, so adding an optional field
    to a config class keeps every existing run's hash (and cache entry)."""
    if dataclasses.is_dataclass(obj):
        return {"_type": type(obj).__name__,
                **{f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                   if not (f.default is None and getattr(obj, f.name) is None)}}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    return obj


def stable_hash(obj, n: int = 12) -> str:
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class DataSpec:
    """Which examples of a registered dataset: optional class split, class-balanced train subset
    of ``train_n`` and then ``fraction``, a test subset of ``test_n``."""
    name: str
    classes: tuple[int, ...] | None = None
    train_n: int | None = None
    fraction: float = 1.0
    test_n: int | None = None
    seed: int = 0

    def __post_init__(self):
        D.check_name(self.name)
        check(0 < self.fraction <= 1, f"fraction must be in (0, 1], not {self.fraction}")
        check(self.train_n is None or self.train_n >= 1, f"train_n must be >= 1, not {self.train_n}")
        check(self.test_n is None or self.test_n >= 1, f"test_n must be >= 1, not {self.test_n}")

    def _base(self, split: str) -> D.ImageData:
        d = D.load(self.name, split)
        return D.class_split(d, self.classes) if self.classes is not None else d

    def train(self) -> D.ImageData:
        d = D.subset(self._base("train"), self.train_n, self.seed)
        return D.balanced_fraction(d, self.fraction, self.seed)

    def test(self) -> D.ImageData:
        return D.subset(self._base("test"), self.test_n, self.seed)

    @property
    def label(self) -> str:
        s = self.name + (f"[{self.classes[0]}-{self.classes[-1]}]" if self.classes else "")
        return s + (f" {self.fraction:.0%}" if self.fraction < 1 else "")


@dataclass(frozen=True)
class SourceRun:
    """A source model trained from scratch (adversarially, for a robust source)."""
    data: DataSpec
    model: WRNSpec
    method: StandardTraining
    seed: int = 0
    kind = "source"

    def __post_init__(self):
        from .fdm import FDMTraining
        if isinstance(self.method, FDMTraining):
            self.method.check_model(self.model.n_blocks)
            if self.method.lam == 0:  # lambda = 0 is plain AT: the same run, the same cache entry
                plain = {f.name: getattr(self.method, f.name) for f in dataclasses.fields(AdversarialTraining)}
                object.__setattr__(self, "method", AdversarialTraining(**plain))

    def build_model(self) -> WideResNet:
        d = self.data.train()
        mean, std = d.mean_std()
        return build(self.model, d.info.num_classes, d.info.channels, mean, std)

    def train_data(self) -> D.ImageData:
        return self.data.train()

    def test_data(self) -> D.ImageData:
        return self.data.test()


@dataclass(frozen=True)
class TransferRun:
    """Fine-tune a copy of a source model on a target under a transfer policy."""
    source: SourceRun
    data: DataSpec
    policy: TransferPolicy
    method: StandardTraining
    seed: int = 0
    neft: NEFT | None = None
    kind = "transfer"

    def __post_init__(self):
        self.policy.check_model(self.source.model.n_blocks)

    def _shape(self, d: D.ImageData) -> D.ImageData:
        src = D.load(self.source.data.name, "train").info
        return D.adapt(d, src.channels, src.size)

    def train_data(self) -> D.ImageData:
        return self._shape(self.data.train())

    def test_data(self) -> D.ImageData:
        return self._shape(self.data.test())


def run_dir(run) -> Path:
    return runs_root() / f"{run.kind}-{stable_hash(run)}"


def is_cached(run) -> bool:
    return (run_dir(run) / "model.pt").is_file()


def _initial_model(run, runtime: Runtime, progress: bool) -> WideResNet:
    seed_all(run.seed)
    if isinstance(run, SourceRun):
        return run.build_model()
    src = get_or_train(run.source, runtime, progress)
    return prepare_target(src.cpu(), run.data.train().info.num_classes, run.policy, run.seed, run.neft)


def get_or_train(run: SourceRun | TransferRun, runtime: Runtime | None = None, progress: bool = True) -> WideResNet:
    """The trained model of ``run``: from the cache, or trained now (resuming a checkpoint)."""
    runtime = runtime or Runtime()
    folder = run_dir(run)
    model = _initial_model(run, runtime, progress)
    if is_cached(run):
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        return runtime.prepare(model).eval()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", to_jsonable(run))
    t0 = time.time()
    policy = run.policy if isinstance(run, TransferRun) else None
    desc = f"{run.kind} {run.data.label}" + (f" k={run.policy.k}" if policy else "")
    history = train(model, run.train_data(), run.method, runtime, policy=policy,
                    checkpoint=folder / "checkpoint.pt", seed=run.seed, progress=progress, desc=desc)
    if getattr(run, "neft", None) is not None:
        settle(model)
    model = model.eval()
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
    atomic_write_json(folder / "train.json", {"history": history, "wall_seconds": time.time() - t0,
                                              "device": runtime.describe(), "torch": torch.__version__})
    return model


def eval_path(run: SourceRun | TransferRun, attacks, test_n: int | None = None) -> Path:
    """Where the metrics of evaluating ``run`` with ``attacks`` (on ``test_n`` test images) are cached."""
    spec = dataclasses.replace(run.data, test_n=test_n) if test_n else run.data
    return run_dir(run) / f"eval-{stable_hash({'attacks': list(attacks), 'test': spec})}.json"


def get_or_evaluate(run: SourceRun | TransferRun, attacks: list[PGD | FoolboxPGD], runtime: Runtime | None = None,
                    progress: bool = True, batch_size: int = 500, test_n: int | None = None) -> dict:
    """Clean and robust accuracy of ``run``'s model on its test set (or a class-balanced ``test_n``
    of it), cached with a per-example CSV."""
    runtime = runtime or Runtime()
    path = eval_path(run, attacks, test_n)
    if path.is_file():
        return read_json(path)
    model = get_or_train(run, runtime, progress)
    seed_all(run.seed)
    t0 = time.time()
    test = run.test_data()
    if test_n:
        test = D.subset(test, test_n, run.data.seed)
    res = evaluate(model, test, attacks, runtime, batch_size, progress)
    out = {**res.summary(), "attacks": [a.label for a in attacks], "n_test": len(res.examples),
           "eval_seconds": time.time() - t0, "device": runtime.describe()}
    atomic_write_csv(path.with_suffix(".csv"), res.examples)
    atomic_write_json(path, out)
    return out
