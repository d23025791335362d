"""Runs and the cache. A run is a frozen config dataclass; its stable hash (with the numerics,
off the CPU's fp32 eager default) names a folder under ``RTLKIT_RUNS`` (default ``runs/``):

    config.json                     the run's config
    checkpoint-e0003-<sha16>.pt     the newest epoch checkpoint (resumable), named by its hash
    model.pt, train.json            the trained weights and the training history
    complete.json                   written last: every artefact above with its sha256
    eval-<hash>.json / .csv         an evaluation, with the model sha256 it measured and the
                                    sha256 of its per-example table

``get_or_train(run)`` returns the cached model or trains it; one robust source thus serves
every k, every BN case and every notebook. What the cache guarantees (docs/reliability.md):
a run counts as cached only once complete.json is written; every artefact is checked against
its hash on load, and a broken one is set aside as ``*.corrupt`` and rebuilt (from the last
checkpoint when there is one); a per-run lock (``runs/.locks``) makes a second process wait
for the first and then load its result; a kill at any moment resumes to the same bits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from . import data as D
from . import distributed
from .attacks import PGD, FoolboxPGD
from .errors import ConfigError, check, check_int, check_real, is_int
from .evaluate import evaluate
from .io import (atomic_torch_save, atomic_write_bytes, atomic_write_json, csv_bytes, fault_point, read_json,
                 set_aside, sha256_bytes, sha256_file, sweep_tmp)
from .models import Backbone, ResNetSpec, WRNSpec, build
from .runtime import cpu_isa_mode, cpu_record, Runtime, seed_all, thread_setting
from .methods.neft import NEFT, settle
from .training import AdversarialTraining, Checkpoints, StandardTraining, train
from .transfer import TransferPolicy, prepare_target

if TYPE_CHECKING:   # heads: notebook 05's Lipschitz heads, notebook 06's probes
    from .methods.lipschitz import HeadSpec, HeadTraining
    from .methods.probes import ProbeHead, ProbeTraining


def runs_root() -> Path:
    return Path(os.environ.get("RTLKIT_RUNS", D.REPO_ROOT / "runs"))


def to_jsonable(obj):
    """JSON for a config. A field left at a None default is omitted, so adding an optional field
    to a config class keeps every existing run's hash (and cache entry). A class attribute
    ``cache_version`` enters the JSON as "_v": raising it invalidates every result of the class."""
    if dataclasses.is_dataclass(obj):
        version = getattr(type(obj), "cache_version", None)
        return {"_type": type(obj).__name__, **({"_v": version} if version is not None else {}),
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
    per_class: int | None = None   # then exactly this many training examples of every class (nested in N)

    def __post_init__(self):
        check(isinstance(self.name, str), f"dataset name must be a string, not {self.name!r}")
        D.check_name(self.name)
        check_real("fraction", self.fraction, 0, 1, low_open=True)
        if self.train_n is not None:
            check_int("train_n", self.train_n, 1)
        if self.per_class is not None:
            check_int("per_class", self.per_class, 1)
        if self.test_n is not None:
            check_int("test_n", self.test_n, 1)
        check_int("data seed", self.seed, 0)

    def _base(self, split: str) -> D.ImageData:
        d = D.load(self.name, split)
        return D.class_split(d, self.classes) if self.classes is not None else d

    def train(self) -> D.ImageData:
        d = D.subset(self._base("train"), self.train_n, self.seed)
        d = D.balanced_fraction(d, self.fraction, self.seed)
        if self.per_class is not None:
            counts = torch.bincount(d.y.cpu(), minlength=d.info.num_classes)
            for c, n in enumerate(counts.tolist()):
                check(n >= self.per_class, f"per_class={self.per_class} but class {c} ({d.info.classes[c]}) of "
                      f"{self.label} has only {n} training examples")
            d = D.n_per_class(d, self.per_class, self.seed)   # the same draws at every N: N=10 within N=25
        return d

    def test(self) -> D.ImageData:
        return D.subset(self._base("test"), self.test_n, self.seed)

    @property
    def label(self) -> str:
        s = self.name + (f"[{self.classes[0]}-{self.classes[-1]}]" if self.classes else "")
        return s + (f" {self.fraction:.0%}" if self.fraction < 1 else "") + \
            (f" {self.per_class}/class" if self.per_class is not None else "")


@dataclass(frozen=True)
class SourceRun:
    """A source model trained from scratch (adversarially, for a robust source)."""
    data: DataSpec
    model: WRNSpec | ResNetSpec
    method: StandardTraining
    seed: int = 0
    kind = "source"

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        from .methods.fdm import FDMTraining
        if isinstance(self.method, FDMTraining):
            self.method.check_model(self.model.n_blocks)
            if self.method.lam == 0:  # lambda = 0 is plain AT: the same run, the same cache entry
                plain = {f.name: getattr(self.method, f.name) for f in dataclasses.fields(AdversarialTraining)}
                object.__setattr__(self, "method", AdversarialTraining(**plain))

    def build_model(self) -> Backbone:
        """The initial weights, drawn from the run's own seed (whatever the global RNG's state)."""
        d = self.data.train()
        mean, std = d.mean_std()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.method.prepare_model(build(self.model, d.info.num_classes, d.info.channels, mean, std))

    def train_data(self) -> D.ImageData:
        return self.data.train()

    def test_data(self) -> D.ImageData:
        return self.data.test()


def _checked_checkpoint(source: "ExternalSource") -> None:
    """Build ``source``'s model once per file content and settings in this process: every fault of
    the file (unreadable, not finite, keys or shapes that do not fit, a half normalisation) is one
    ConfigError now, when the checkpoint is named, not when the first run needs it."""
    key = (source.path, source.sha256, source.model, source.format, source.allow_pickle, source.num_classes,
           source.channels, source.mean, source.std)
    if key not in _CHECKED:
        source.build_model()
        _CHECKED.add(key)


_CHECKED: set = set()   # the checkpoints _checked_checkpoint has built in this process


@dataclass(frozen=True)
class ExternalSource:
    """A source model from a checkpoint file a researcher already has, instead of one trained here:
    ``model`` (e.g. ``ResNetSpec(50)``), ``path``, ``format`` (``models.CHECKPOINT_FORMATS``:
    a torchvision state dict, a MadryLab ``robustness`` checkpoint, a RobustBench / TRADES
    WideResNet, an rtlkit ``model.pt``). The checkpoint's normalisation goes inside the model
    (``mean`` / ``std``; None: the file's own where it records one (robustness), ImageNet's for a
    ResNet, none (0 / 1) for a WideResNet), so eps stays in [0, 1] pixels. The file's sha256 is part
    of the cache key: a changed file is another run, never the old results. ``data``: its own test
    data, to evaluate or card the source itself (optional); the inputs a target is adapted to are
    ``channels`` x ``size`` (from ``data`` when given). Nothing is downloaded."""
    model: WRNSpec | ResNetSpec
    path: str
    format: str = "torchvision"
    num_classes: int | None = None     # None: the checkpoint's classifier's
    data: DataSpec | None = None
    channels: int = 3
    size: int = 224
    mean: tuple | None = None
    std: tuple | None = None
    allow_pickle: bool = False         # robustness checkpoints from old torch versions pickle more than tensors
    sha256: str | None = None          # filled in from the file; given (a config read back), it must match
    seed: int = 0
    kind = "source"
    method = None

    def __post_init__(self):
        from .models import CHECKPOINT_FORMATS, parse_spec
        object.__setattr__(self, "model", parse_spec(self.model))
        check(self.format in CHECKPOINT_FORMATS, f"checkpoint format {self.format!r}: one of {', '.join(CHECKPOINT_FORMATS)}")
        path = Path(self.path).expanduser().absolute()
        check(path.is_file(), f"checkpoint {path}: no such file")
        object.__setattr__(self, "path", str(path))
        sha = sha256_file(path)
        check(self.sha256 in (None, sha), f"checkpoint {path} has changed since this run was made (sha256 {sha[:12]}, "
              f"recorded {str(self.sha256)[:12]})")
        object.__setattr__(self, "sha256", sha)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 2)
        check(self.channels in (1, 3), f"channels: 1 or 3, not {self.channels!r}")
        check_int("size", self.size, 8)
        check((self.mean is None) == (self.std is None), "mean and std: give both or neither")
        if self.data is not None:
            info = D.load(self.data.name, "train").info
            object.__setattr__(self, "channels", info.channels)
            object.__setattr__(self, "size", info.size)
        _checked_checkpoint(self)   # the file, read and checked once where it enters (finite, fits the model)

    def build_model(self) -> Backbone:
        """The checkpoint's weights in rtlkit's partition (ConfigError naming the file and the
        first mismatched keys where they do not fit ``model``)."""
        from .models import IMAGENET_MEAN, IMAGENET_STD, ResNetSpec, load_weights, read_checkpoint
        state, mean, std = read_checkpoint(self.path, self.model, self.format, self.allow_pickle)
        fc = f"blocks.{self.model.n_blocks - 1}.fc.weight"
        check(fc in state or self.num_classes is not None,
              f"checkpoint {self.path}: no classifier ({fc}) to count its classes by; give num_classes")
        classes = self.num_classes or int(state[fc].shape[0])
        if self.mean is not None:
            mean, std = self.mean, self.std
        elif mean is None:
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if isinstance(self.model, ResNetSpec) else ((0.0,), (1.0,))
        if len(mean) == 3 and self.channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        model = build(self.model, classes, self.channels, mean, std)
        load_weights(model, state, self.path)
        return model

    def input_shape(self) -> tuple[int, int]:
        return self.channels, self.size

    def num_outputs(self) -> int:
        """Its classifier's classes (num_classes, else read from the file)."""
        if self.num_classes is not None:
            return self.num_classes
        from .models import read_checkpoint
        state, _, _ = read_checkpoint(self.path, self.model, self.format, self.allow_pickle)
        fc = state.get(f"blocks.{self.model.n_blocks - 1}.fc.weight")
        check(fc is not None, f"checkpoint {self.path}: no classifier to count its classes by; give num_classes")
        return int(fc.shape[0])

    def train_data(self) -> D.ImageData:
        raise ConfigError(f"the external source {Path(self.path).name} is not trained here")

    def test_data(self) -> D.ImageData:
        check(self.data is not None, f"the external source {Path(self.path).name} has no data: give "
              "ExternalSource(data=DataSpec(...)) to evaluate the source itself")
        return D.adapt(self.data.test(), self.channels, self.size)


def _input_shape(source) -> tuple[int, int]:
    if isinstance(source, ExternalSource):
        return source.input_shape()
    info = D.load(source.data.name, "train").info
    return info.channels, info.size


def shaped_for(source: SourceRun | ExternalSource, d: D.ImageData) -> D.ImageData:
    """``d`` adapted to the source's input channels and size (a transfer's or a head's data)."""
    return D.adapt(d, *_input_shape(source))


class _OnSourceInputs:
    """Runs that feed their ``data`` to a source's model: the data adapted to its inputs."""

    def train_data(self) -> D.ImageData:
        return shaped_for(self.source, self.data.train())

    def test_data(self) -> D.ImageData:
        return shaped_for(self.source, self.data.test())


@dataclass(frozen=True)
class TransferRun(_OnSourceInputs):
    """Fine-tune a copy of a source model on a target under a transfer policy."""
    source: SourceRun
    data: DataSpec
    policy: TransferPolicy
    method: StandardTraining
    seed: int = 0
    neft: NEFT | None = None
    kind = "transfer"

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        self.policy.check_model(self.source.model.n_blocks)


@dataclass(frozen=True)
class HeadRun(_OnSourceInputs):
    """A classifier head trained on the frozen penultimate features of a cached source (Provably
    Robust Transfer Sec. 3 and App. A.1): ``model(x)`` = h(f(x)), with h in ``model.head.fc`` and
    every tensor of f bit-identical to the source's, so attacks, ``evaluate`` and ``certify`` work
    unchanged. Features come from :func:`get_or_features` (computed once per source and data);
    ``head_sigma`` trains h on the features of one noisy copy x + sigma N(0, I) of each image.
    ``tap = n`` trains h on the pooled output of the first n blocks instead of the penultimate
    feature; ``model(x)`` is then not h(f(x)), so such a head is measured on features only."""
    source: SourceRun
    data: DataSpec
    head: "HeadSpec | ProbeHead"          # a Lipschitz head (notebook 05) or a probe / MLP (notebook 06)
    method: "HeadTraining | ProbeTraining"
    seed: int = 0
    head_sigma: float | None = None
    tap: int | None = None
    kind = "head"

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        if self.head_sigma is not None:
            check_real("head_sigma", self.head_sigma, 0, low_open=True)
        check_tap(self.tap, self.source.model.n_blocks)


def check_tap(tap: int | None, n_blocks: int) -> None:
    """A feature tap: the pooled output of the first ``tap`` blocks (None: the penultimate feature)."""
    if tap is not None:
        check(is_int(tap) and 1 <= tap <= n_blocks - 1,
              f"tap={tap!r} is not a block count below the head: 1..{n_blocks - 1} (None: the penultimate feature)")


def tapped(model: Backbone, x: torch.Tensor, tap: int | None = None) -> torch.Tensor:
    """The frozen feature f(x): ``model.penultimate`` or, with ``tap``, the pooled first ``tap`` blocks."""
    return model.penultimate(x) if tap is None else model.head.features(model.features(x, tap))


MARKER = "complete.json"
# 2: every attack reports each example's first fooling iterate (1: the last iterate)
EVAL_VERSION = 2


@dataclass
class Recording:
    """What a suite asked the cache for, in order, while :func:`recording` was on."""
    trainings: list = dataclasses.field(default_factory=list)     # runs
    evaluations: list = dataclasses.field(default_factory=list)   # (run, attacks, test_n)


_RECORDING: list[Recording] = []


@contextlib.contextmanager
def recording():
    """Inside, ``get_or_train`` and ``get_or_evaluate`` run nothing and touch no file: they record
    each request and return placeholders (``get_or_train``: None; ``get_or_evaluate``: zero
    metrics of the right shape). ``rtlkit.plan`` lists a suite's work this way, from every
    study module alike, and a scheduler can take the same list."""
    rec = Recording()
    _RECORDING.append(rec)
    try:
        yield rec
    finally:
        _RECORDING.remove(rec)


def _placeholder_metrics(attacks, n: int) -> dict:
    return {"clean_acc": 0.0, "robust_acc": 0.0, "attacks": [a.label for a in attacks], "n_test": n,
            **{f"robust_acc[{a.label}]": 0.0 for a in attacks}}


def run_key(run, runtime: Runtime | None = None) -> str:
    """The cache key of ``run`` computed under ``runtime``'s numerics (``Runtime.numerics``): the
    config's hash alone for fp32 eager on the CPU, the config's and the numerics' otherwise, so a
    bf16 or compiled result is never served for an fp32 request, nor the reverse."""
    num = (runtime or Runtime()).numerics()
    return stable_hash(run) if num is None else stable_hash({"run": run, "numerics": num})


def run_dir(run, runtime: Runtime | None = None) -> Path:
    return runs_root() / f"{run.kind}-{run_key(run, runtime)}"


LOCK_MODES = ("auto", "flock", "lease")


@functools.lru_cache(maxsize=None)
def _has_flock(locks: str) -> bool:
    """Whether the file system of the folder ``locks`` takes flock (NFS does, through its byte-range
    locks; some cluster file systems mounted without locking do not)."""
    import errno
    import fcntl
    probe = Path(locks) / f".flock-probe-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def lock_setting() -> str:
    """``RTLKIT_LOCK`` checked: auto (the default), flock or lease."""
    mode = os.environ.get("RTLKIT_LOCK", "auto") or "auto"
    check(mode in LOCK_MODES, f"RTLKIT_LOCK must be one of {', '.join(LOCK_MODES)}, not {mode!r}")
    return mode


def lease_seconds() -> float:
    """``RTLKIT_LOCK_LEASE_S`` checked: a positive, finite number of seconds (default 120)."""
    raw = os.environ.get("RTLKIT_LOCK_LEASE_S", "120")
    try:
        lease = float(raw)
    except ValueError:
        lease = None
    check(lease is not None and lease > 0 and lease != float("inf"),
          f"RTLKIT_LOCK_LEASE_S must be a positive number of seconds, not {raw!r}")
    return lease


def check_environment() -> None:
    """Every environment setting that changes what rtlkit does, checked at once: what each entry point
    (the CLIs, ``report.start``) calls before it makes a folder or starts a process. RTLKIT_CPU_ISA,
    RTLKIT_THREADS, RTLKIT_LOCK, RTLKIT_LOCK_LEASE_S, RTLKIT_DIST_TIMEOUT_S and RTLKIT_DEVICE."""
    cpu_isa_mode()
    thread_setting()
    lock_setting()
    lease_seconds()
    distributed.timeout_seconds()
    dev = os.environ.get("RTLKIT_DEVICE", "").strip()
    check(not dev or dev.split(":")[0] in ("cpu", "cuda", "mps"), f"RTLKIT_DEVICE must be cpu, cuda[:N] or mps, not {dev!r}")


def lock_mode(locks: Path) -> str:
    """``RTLKIT_LOCK``: flock (the kernel frees a dead holder's lock), lease (a lock file naming
    pid and host, renewed by a heartbeat: a peer breaks it at once when the holder's pid is dead on
    its own host, and after ``RTLKIT_LOCK_LEASE_S`` seconds without renewal from any host), or auto
    (flock where the file system has it, else lease). Every worker on a cache must use one mode."""
    mode = lock_setting()
    if mode == "auto":
        return "flock" if _has_flock(str(locks)) else "lease"
    return mode


def _lock(locks: Path, name: str):
    from filelock import FileLock, SoftFileLease
    if lock_mode(locks) == "flock":
        return FileLock(str(locks / f"{name}.lock"), is_singleton=True, thread_local=False, preserve_lock_file=True)
    return SoftFileLease(str(locks / f"{name}.lease"), lease_duration=lease_seconds(), is_singleton=True,
                         thread_local=False)


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold the per-run lock of ``folder`` (reentrant in this process). A second process asking for
    the same run waits here, then finds the first one's result. A dead holder's lock is broken
    (:func:`lock_mode`): by the kernel for flock, even after kill -9; by its pid and host, or its
    lease running out, for the lease that file systems without flock get."""
    from filelock import Timeout

    from . import distributed
    if not distributed.is_main():   # under torchrun rank 0 holds the run's lock for the whole group
        yield
        return
    lock_setting()   # a bad setting is an error before the locks folder exists
    lease_seconds()
    locks = folder.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = _lock(locks, folder.name)
    try:
        lock.acquire(timeout=2)
    except Timeout:
        print(f"rtlkit: waiting for {folder.name}: another process is training or evaluating it", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def read_marker(folder: Path, repair: bool = True) -> dict | None:
    """The completion marker of a run folder, or None when the run is not complete. An unreadable
    marker is set aside with ``repair`` (under the run's lock; the run is then rebuilt, from its
    last checkpoint)."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
        if not isinstance(marker.get("artefacts"), dict) or "model.pt" not in marker["artefacts"]:
            raise ValueError("no artefact table")
        return marker
    except (OSError, ValueError, AttributeError) as e:
        if repair:
            set_aside(path, f"unreadable completion marker ({type(e).__name__})")
        return None


def is_cached(run, runtime: Runtime | None = None) -> bool:
    return read_marker(run_dir(run, runtime), repair=False) is not None


# Weights verified in this process, most recent last: a cached transfer run loads its source every
# time it is asked for (a sweep, hundreds of times), and the weights-only unpickler and the sha256
# of every artefact are most of a cached run's cost. Keyed by each artefact's sha256 in the marker
# and its file's identity (inode, size, mtime): a file rewritten, replaced or set aside since is
# read and checked again. At most _STATES_BYTES of tensors are kept.
_STATES: dict = {}
_STATES_BYTES = 256 << 20


def _state_key(folder: Path, marker: dict) -> tuple | None:
    try:
        files = []
        for name, sha in sorted(marker["artefacts"].items()):
            st = (folder / name).stat()
            files.append((name, sha, st.st_ino, st.st_size, st.st_mtime_ns))
        return (str(folder.resolve()), tuple(files))
    except (OSError, AttributeError, TypeError):
        return None


def _remember_state(key: tuple, state: dict) -> None:
    size = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    if size > _STATES_BYTES:
        return
    _STATES[key] = (state, size)
    while sum(n for _, n in _STATES.values()) > _STATES_BYTES:
        del _STATES[next(iter(_STATES))]


def _verified_state(folder: Path, marker: dict) -> dict | None:
    """The weights of a complete run, after checking every artefact against the marker's sha256;
    None (with the broken file and the marker set aside) on any mismatch. A state verified before
    in this process, whose files have not changed since, is not read again."""
    key = _state_key(folder, marker)
    if key is not None and key in _STATES:
        _STATES[key] = _STATES.pop(key)   # most recent last
        return dict(_STATES[key][0])      # the tensors are only ever copied from (load_state_dict)
    blobs = {}
    for name, sha in marker["artefacts"].items():
        path = folder / name
        if not path.is_file():
            why = f"listed in {MARKER} but missing"
        else:
            blobs[name] = path.read_bytes()
            if sha256_bytes(blobs[name]) == sha:
                continue
            why = f"content does not match the sha256 recorded in {MARKER}"
        set_aside(path, why)
        set_aside(folder / MARKER, f"names a broken artefact ({name})")
        return None
    try:
        state = torch.load(io.BytesIO(blobs["model.pt"]), map_location="cpu", weights_only=True)
    except Exception as e:  # whole by its hash, so it was written broken: never use it
        set_aside(folder / "model.pt", f"unreadable weights ({type(e).__name__})")
        set_aside(folder / MARKER, "names a broken artefact (model.pt)")
        return None
    if key is not None:   # bytes that match the marker's sha256s, whichever file they were read from
        _remember_state(key, state)
    return dict(state)


def _initial_model(run, runtime: Runtime, progress: bool) -> Backbone:
    """The model before training: every random draw comes from the run's own seed, so it does
    not depend on what ran before in this process (a source trained or loaded, other runs)."""
    if isinstance(run, (SourceRun, ExternalSource)):
        return run.build_model()
    src = get_or_train(run.source, runtime, progress)
    if isinstance(run, HeadRun):
        return _headed(src, run)
    return prepare_target(src.cpu(), run.data.train().info.num_classes, run.policy, run.seed, run.neft)


def _headed(source: Backbone, run: HeadRun) -> Backbone:
    """A copy of the source with ``head.fc`` replaced by the run's fresh head (seeded) and every
    other parameter frozen; eval mode (f's BN uses the source's statistics)."""
    import copy
    model = copy.deepcopy(source).cpu()
    if "projection" in model._modules:
        del model.projection
    model.head.fc = run.head.build(model.feature_dim, run.data.train().info.num_classes, run.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.fc.parameters():
        p.requires_grad_(True)
    return model.eval()


def get_or_train(run: SourceRun | TransferRun, runtime: Runtime | None = None, progress: bool = True) -> Backbone:
    """The trained model of ``run``: from the cache (verified), or trained now (resuming a checkpoint)."""
    if _RECORDING:
        _RECORDING[-1].trainings.append(run)
        return None
    runtime = runtime or Runtime()
    folder = run_dir(run, runtime)
    from . import distributed
    with run_lock(folder):
        model = _initial_model(run, runtime, progress)
        if distributed.is_main():
            marker = read_marker(folder)
            state = _verified_state(folder, marker) if marker is not None else None
        if distributed.broadcast(state is not None if distributed.is_main() else None):   # rank 0 decides
            if not distributed.is_main():   # rank 0 verified these bytes
                state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return runtime.prepare(model).eval()
        return _train(run, folder, model, runtime, progress)


def _train(run, folder: Path, model: Backbone, runtime: Runtime, progress: bool) -> Backbone:
    from . import distributed
    main = distributed.is_main()   # under torchrun only rank 0 writes; the others train beside it
    if main:
        sweep_tmp(folder)   # we hold the lock: any temp file here is a dead writer's
    made = not folder.is_dir()
    distributed.barrier()
    folder.mkdir(parents=True, exist_ok=True)
    shas = {"config.json": atomic_write_json(folder / "config.json", to_jsonable(run))} if main else {}
    t0 = time.time()
    policy = run.policy if isinstance(run, TransferRun) else None
    desc = f"{run.kind} " + (Path(run.path).name if isinstance(run, ExternalSource) else run.data.label) + \
        (f" k={run.policy.k}" if policy else "")
    try:
        if isinstance(run, ExternalSource):   # nothing to train: the checkpoint's weights, cached sha-checked
            history = {"checkpoint": run.path, "format": run.format, "sha256": run.sha256}
        elif isinstance(run, HeadRun):   # cheap (features cached): no checkpoints, a killed one starts again
            z, y = get_or_features(run.source, run.data, "train", runtime, progress, run.head_sigma, run.seed,
                                   tap=run.tap)
            model = runtime.prepare(model)
            history = run.method.fit(model.head.fc, z, y, run.seed, progress, desc, runtime)   # moves them to fc
        else:
            history = train(model, run.train_data(), run.method, runtime, policy=policy,
                            checkpoint=folder / "checkpoint.pt", seed=run.seed, progress=progress, desc=desc)
    except BaseException:
        if main and made and not Checkpoints(folder / "checkpoint.pt").files():
            shutil.rmtree(folder, ignore_errors=True)   # nothing worth keeping: leave no half-made run
        raise
    if getattr(run, "neft", None) is not None:
        settle(model)
    model = model.eval()
    if main:
        shas["model.pt"] = atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                             folder / "model.pt")
        scale = {**distributed.record(), "sync_bn": distributed.sync_bn()} if distributed.world_size() > 1 else {}
        shas["train.json"] = atomic_write_json(folder / "train.json", {
            "history": history, "wall_seconds": time.time() - t0, "device": runtime.describe(),
            "numerics": runtime.numerics(), "threads": torch.get_num_threads(), "cpu": cpu_record(), "torch": torch.__version__, **scale})
        atomic_write_json(folder / MARKER, {"run": folder.name, "artefacts": shas})
        fault_point("marker-written")
    distributed.barrier()   # the run is complete on disk before any rank returns
    return model


EVAL_SPLITS = ("test", "train")


def eval_path(run: SourceRun | TransferRun, attacks, test_n: int | None = None, runtime: Runtime | None = None,
              split: str = "test") -> Path:
    """Where the metrics of evaluating ``run`` with ``attacks`` (on ``test_n`` images of its
    ``split``) are cached. The test split keeps the key it always had; the train split adds itself."""
    check(split in EVAL_SPLITS, f"split must be one of {', '.join(EVAL_SPLITS)}, not {split!r}")
    spec = dataclasses.replace(run.data, test_n=test_n) if test_n else run.data
    key = {"attacks": list(attacks), "test": spec, "v": EVAL_VERSION}
    if split != "test":
        key["split"] = split
    return run_dir(run, runtime) / f"eval-{stable_hash(key)}.json"


def _cached_result(path: Path, marker: dict, table_suffix: str, sep: str, mismatches) -> tuple[dict, pd.DataFrame] | None:
    """A cached result (``path``, a JSON) and its per-example table (same stem, ``table_suffix``),
    if the JSON measured the run's current model.pt and the table matches the sha256 recorded in
    the JSON (key "<suffix>_sha256"), has its n_test rows, and ``mismatches(json, table)`` names
    no summary it fails to reproduce; None otherwise (broken files set aside, with a warning)."""
    if not path.is_file():
        return None
    table = path.with_suffix(table_suffix)
    try:
        m = read_json(path)
        if not isinstance(m, dict):
            raise ValueError(f"it holds a JSON {type(m).__name__}, not a record")
        if m.get("model_sha256") != marker["artefacts"]["model.pt"]:
            return None   # measured another model (or before integrity records): compute again
        bad = _nonfinite({k: v for k, v in m.items() if k != "column_means"})   # those: checked against the table
        if bad:
            raise ValueError(f"it records a non-finite {', '.join(bad)}")
        if not table.is_file():
            raise ValueError(f"its per-example table {table.name} is missing")
        data = table.read_bytes()
        if sha256_bytes(data) != m[f"{table_suffix[1:]}_sha256"]:
            raise ValueError(f"{table.name} does not match the sha256 recorded in it")
        df = pd.read_csv(io.BytesIO(data), sep=sep)
        if len(df) != m["n_test"]:
            raise ValueError(f"{table.name} has {len(df)} rows, not n_test={m['n_test']}")
        bad = mismatches(m, df)
        if bad:
            raise ValueError(f"its {', '.join(bad)} do not match the per-example table")
        return m, df
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pd.errors.ParserError) as e:
        why = str(e) if type(e) is ValueError else f"unreadable ({type(e).__name__}: {e})"
        set_aside(path, why)
        if table.exists():
            set_aside(table, f"belongs to the broken {path.name}")
        return None


def _nonfinite(obj, where: str = "") -> list[str]:
    """The keys (dotted) of every NaN or infinite number in a JSON record."""
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _nonfinite(v, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in _nonfinite(v, f"{where}[{i}]")]
    return [where] if isinstance(obj, float) and not math.isfinite(obj) else []


def _differs(cached, measured, tol: float) -> bool:
    """Whether a cached summary fails to reproduce what its per-example table gives: more than
    ``tol`` apart, or a non-finite number where the table gives a finite one (NaN compares False
    with everything, so ``abs(nan - v) > tol`` alone would serve a NaN as the accuracy). Both NaN
    (a column with no values, such as a blank train accuracy) is a match."""
    a, b = float(cached), float(measured)
    if math.isnan(a) and math.isnan(b):
        return False
    return not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > tol


def _eval_mismatches(m: dict, df: pd.DataFrame) -> list[str]:
    means = {"clean_acc": df["clean_correct"].mean(), "robust_acc": df["robust_correct"].mean(),
             **{f"robust_acc[{a}]": df[a].mean() for a in m["attacks"]}}
    return [k for k, v in means.items() if _differs(m[k], v, 1e-9)]


def _model_for(run, folder: Path, runtime: Runtime, progress: bool) -> tuple[Backbone, str]:
    """The run's model (cached or trained now) and the sha256 of its model.pt, with the folder's
    stale temp files swept (the caller holds the run's lock)."""
    from . import distributed
    model = get_or_train(run, runtime, progress)
    if distributed.is_main():   # the other ranks never sweep: a temp file may be rank 0's, mid-write
        sweep_tmp(folder)
    return model, read_marker(folder, repair=False)["artefacts"]["model.pt"]


def _main_looks(lookup):
    """What rank 0 finds in the cache (``lookup()``, under the run's lock that it alone holds),
    on every rank; ``lookup()`` itself with one process."""
    from . import distributed
    return distributed.broadcast(lookup() if distributed.is_main() else None)


def _cached_on_main(path: Path, table_suffix: str, sep: str, mismatches) -> tuple[dict, pd.DataFrame] | None:
    """:func:`_cached_result` of a run's complete folder as rank 0 finds it, on every rank (None
    while the run or the result is not cached)."""
    def lookup():
        marker = read_marker(path.parent)
        return _cached_result(path, marker, table_suffix, sep, mismatches) if marker is not None else None
    return _main_looks(lookup)


def _check_untapped(run) -> None:
    check(getattr(run, "tap", None) is None, "a head on a feature tap is measured on its features (model(x) is "
          "not h(f(x)) there): use the penultimate feature (tap=None) to attack or certify the model")


def get_or_evaluate(run: SourceRun | TransferRun, attacks: list[PGD | FoolboxPGD], runtime: Runtime | None = None,
                    progress: bool = True, batch_size: int = 500, test_n: int | None = None,
                    split: str = "test") -> dict:
    """Clean and robust accuracy of ``run``'s model on its test set (or a class-balanced ``test_n``
    of it), cached with a per-example CSV. ``split="train"`` measures the images it was trained on
    instead (the same class-balanced subset rule), for a robust generalisation gap."""
    attacks = list(attacks)
    check(len(attacks) >= 1, "attacks: give at least one attack (with none, robust accuracy would be the clean accuracy)")
    check(split in EVAL_SPLITS, f"split must be one of {', '.join(EVAL_SPLITS)}, not {split!r}")
    _check_untapped(run)
    if _RECORDING:   # (run, attacks, test_n[, path, redo, split]): rtlkit.plan's add_evaluation arguments
        _RECORDING[-1].evaluations.append((run, attacks, test_n) + ((None, None, split) if split != "test" else ()))
        return _placeholder_metrics(attacks, test_n or 0)
    from . import distributed
    runtime = runtime or Runtime()
    path = eval_path(run, attacks, test_n, runtime, split)
    with run_lock(path.parent):
        cached = _cached_on_main(path, ".csv", ",", _eval_mismatches)
        if cached is not None:
            return cached[0]
        test = run.test_data() if split == "test" else run.train_data()
        if test_n:
            test = D.subset(test, test_n, run.data.seed)
        distributed.check_shards(len(test))   # before any training or attack
        model, model_sha = _model_for(run, path.parent, runtime, progress)
        seed_all(run.seed)
        t0 = time.time()
        res = evaluate(model, test, attacks, runtime, batch_size, progress)   # under torchrun: sharded, gathered
        out = None
        if distributed.is_main():
            out = {**res.summary(), "attacks": [a.label for a in attacks], "n_test": len(res.examples),
                   **({"split": split} if split != "test" else {}),
                   "eval_seconds": time.time() - t0, "device": runtime.describe(), "numerics": runtime.numerics(),
                   "threads": torch.get_num_threads(), "cpu": cpu_record(), "model_sha256": model_sha,
                   **distributed.record(),
                   "csv_sha256": atomic_write_bytes(path.with_suffix(".csv"), csv_bytes(res.examples))}
            atomic_write_json(path, out)
        return json.loads(json.dumps(distributed.broadcast(out)))   # exactly what a later cache hit returns


# --------------------------------------------------------------------------- certificates

IMAGES_PER_CALL = 50   # certify's default grouping: each group of images draws from a generator seeded alike


def cert_path(run: SourceRun | TransferRun, smoothing, test_n: int | None = None,
              runtime: Runtime | None = None, images_per_call: int = IMAGES_PER_CALL) -> Path:
    """Where the randomized-smoothing certificates of ``run`` (on ``test_n`` evenly spaced test
    images, certified ``images_per_call`` at a time) are cached: cert-<hash>.json and a per-example
    cert-<hash>.tsv. The grouping changes the noise each image gets (a generator per group), so
    it is part of the key; the default is left out of it, so existing certificates keep their files."""
    key = {"smoothing": smoothing, "test_n": test_n, "v": 1}
    if images_per_call != IMAGES_PER_CALL:
        key["images_per_call"] = images_per_call
    return run_dir(run, runtime) / f"cert-{stable_hash(key)}.json"


def _cert_mismatches(m: dict, df: pd.DataFrame) -> list[str]:
    from .smoothing import summary
    s = summary(df.label.to_numpy(), df.predict.to_numpy(), df.radius.to_numpy(), 0.0)
    return [k for k in ("smoothed_acc", "acr", "abstain") if _differs(m[k], s[k], 1e-12)]


def get_or_certify(run: SourceRun | TransferRun, smoothing, eps: float, runtime: Runtime | None = None,
                   progress: bool = True, test_n: int | None = None,
                   images_per_call: int = IMAGES_PER_CALL) -> dict:
    """Cohen's CERTIFY on ``test_n`` evenly spaced test images of ``run`` (all when None), cached
    with a per-example TSV (index, label, predict (-1 abstain), count, p_lower, radius, correct,
    seconds). Returns the summary at radius ``eps`` (SA, RA-CT, ACR, abstention) with the
    per-example table under "table"; ``eps`` is read-time only, so one certificate serves every eps."""
    from tqdm.auto import tqdm

    from .smoothing import certify, summary
    _check_untapped(run)
    if _RECORDING:
        _RECORDING[-1].evaluations.append((run, [smoothing], test_n))
        return {"smoothed_acc": 0.0, "certified_acc": 0.0, "acr": 0.0, "abstain": 0.0, "n_test": test_n or 0,
                "table": pd.DataFrame()}
    from . import distributed
    runtime = runtime or Runtime()
    check_int("images_per_call", images_per_call, 1)
    path = cert_path(run, smoothing, test_n, runtime, images_per_call)
    with run_lock(path.parent):
        cached = _cached_on_main(path, ".tsv", "\t", _cert_mismatches)
        df = cached[1] if cached is not None else None
        if df is None:
            test = D.evenly_spaced(run.test_data(), test_n)
            distributed.check_shards(len(test))   # before any training or noise
            model, model_sha = _model_for(run, path.parent, runtime, progress)
            classes = test.info.num_classes
            done, t_start = {}, time.time()   # each group of images draws from a generator of its own
            for i, start in enumerate(tqdm(range(0, len(test), images_per_call), desc="certify", leave=False,
                                           disable=not progress)):
                if not distributed.owns(i):   # under torchrun: another rank's group
                    continue
                sl = slice(start, start + images_per_call)
                x = runtime.inputs(test.x[sl].float().div(255).to(runtime.device))
                t0 = time.time()
                c = certify(model, x, smoothing, classes, runtime.autocast)
                done[i] = pd.DataFrame({"index": test.index[sl].numpy(), "label": test.y[sl].numpy(), **c,
                                        "seconds": (time.time() - t0) / len(x)})
            df = pd.concat(distributed.gathered(done), ignore_index=True)
            df["correct"] = (df.predict == df.label) & (df.predict >= 0)
            df = df[["index", "label", "predict", "count", "p_lower", "radius", "correct", "seconds"]]
            s = summary(df.label.to_numpy(), df.predict.to_numpy(), df.radius.to_numpy(), 0.0)
            tsv = df.to_csv(sep="\t", index=False, float_format="%.17g").encode()
            if distributed.is_main():
                atomic_write_json(path, {
                    **{k: s[k] for k in ("smoothed_acc", "acr", "abstain")}, "n_test": len(df),
                    "smoothing": to_jsonable(smoothing), "images_per_call": images_per_call,
                    "certify_seconds": time.time() - t_start,
                    "device": runtime.describe(), "numerics": runtime.numerics(), "threads": torch.get_num_threads(), "cpu": cpu_record(),
                    "model_sha256": model_sha,
                    **distributed.record(),
                    "tsv_sha256": atomic_write_bytes(path.with_suffix(".tsv"), tsv)})
            distributed.barrier()
            df = pd.read_csv(io.BytesIO(tsv), sep="\t")   # exactly what a later cache hit reads
    return {**summary(df.label.to_numpy(), df.predict.to_numpy(), df.radius.to_numpy(), eps),
            "n_test": len(df), "eps": eps, "table": df}


# --------------------------------------------------------------------------- frozen features

def features_path(source: SourceRun, data: DataSpec, split: str, sigma: float | None = None, seed: int = 0,
                  runtime: Runtime | None = None, tap: int | None = None) -> Path:
    key = {"data": data, "split": split, "sigma": sigma, "seed": seed if sigma else None, "v": 1}
    if tap is not None:   # added only when set: the penultimate features keep their files
        key["tap"] = tap
    return run_dir(source, runtime) / f"features-{stable_hash(key)}.pt"


def _cached_tensors(source: SourceRun, path: Path, runtime: Runtime, progress: bool, compute, about: dict):
    """Tensors computed from ``source``'s model, cached in ``path`` with a JSON beside it recording
    their sha256 and the model.pt they came from: served only when both match (a broken file is
    set aside and computed again). ``compute(model)`` returns a dict of CPU tensors."""
    from . import distributed
    meta = path.with_suffix(".json")

    def lookup():
        marker = read_marker(path.parent)
        if marker is not None and meta.is_file() and path.is_file():
            try:
                m = read_json(meta)
                if not isinstance(m, dict):   # a list, a string or null: no record of anything
                    raise ValueError(f"{meta.name} holds a JSON {type(m).__name__}, not a record")
                blob = path.read_bytes()
                if m.get("model_sha256") == marker["artefacts"]["model.pt"] and sha256_bytes(blob) == m["sha256"]:
                    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                if m.get("model_sha256") == marker["artefacts"]["model.pt"]:
                    raise ValueError(f"{path.name} does not match the sha256 recorded in {meta.name}")
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
                set_aside(path, str(e) if type(e) is ValueError else f"unreadable ({type(e).__name__})")
                set_aside(meta, f"belongs to the broken {path.name}")
        return None
    with run_lock(path.parent):
        out = lookup() if distributed.is_main() else None
        if _main_looks(lambda: out is not None):   # under torchrun the other ranks read what rank 0 verified
            return out if out is not None else torch.load(path, map_location="cpu", weights_only=True)
        model, model_sha = _model_for(source, path.parent, runtime, progress)
        t0 = time.time()
        with torch.no_grad():   # under torchrun every rank computes the same tensors; rank 0 writes them
            out = compute(model.eval())
        if distributed.is_main():
            blob = io.BytesIO()
            torch.save(out, blob)
            sha = atomic_write_bytes(path, blob.getvalue())
            atomic_write_json(meta, {"sha256": sha, "model_sha256": model_sha, **to_jsonable(about),
                                     "shapes": {k: list(v.shape) for k, v in out.items()}, "seconds": time.time() - t0,
                                     "device": runtime.describe(), "numerics": runtime.numerics(),
                                     "threads": torch.get_num_threads(), "cpu": cpu_record()})
        distributed.barrier()
        return out


def get_or_features(source: SourceRun, data: DataSpec, split: str = "train", runtime: Runtime | None = None,
                    progress: bool = True, sigma: float | None = None, seed: int = 0,
                    batch_size: int = 1000, tap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's frozen features f(x) (``tapped``: eval mode, float32, on the CPU) and labels of
    ``data``'s ``split`` (adapted to the source's input shape), cached once per source in
    ``features-<hash>.pt``; with ``sigma``, of one noisy copy x + sigma N(0, I) of each image (a
    generator seeded by ``seed``)."""
    check(split in ("train", "test"), f"split must be 'train' or 'test', not {split!r}")
    check_tap(tap, source.model.n_blocks)
    if _RECORDING:
        _RECORDING[-1].trainings.append(source)
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    runtime = runtime or Runtime()

    def compute(model):
        d = shaped_for(source, data.train() if split == "train" else data.test())
        g = torch.Generator(device=runtime.device).manual_seed(seed)
        zs = []
        for s in range(0, len(d), batch_size):
            x = d.x[s:s + batch_size].float().div(255).to(runtime.device)
            if sigma:
                x = x + sigma * torch.randn(x.shape, generator=g, device=x.device)
            with runtime.autocast():
                zs.append(tapped(model, runtime.inputs(x), tap).float().cpu())
        return {"z": torch.cat(zs), "y": d.y.clone()}
    about = {"data": data, "split": split, "sigma": sigma, "seed": seed, "tap": tap}
    out = _cached_tensors(source, features_path(source, data, split, sigma, seed, runtime, tap), runtime, progress,
                          compute, about)
    return out["z"], out["y"]


@dataclass(frozen=True)
class NoisyDraws:
    """``draws`` noisy copies x + sigma N(0, I) of each of ``images`` class-balanced test images
    (a generator of its own, seeded): one set of noisy features serves label, logit and
    representation smoothing and every head on a source (Provably Robust Transfer Sec. 5)."""
    sigma: float
    draws: int
    images: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_real("smoothing sigma", self.sigma, 0, low_open=True)
        check_int("noise draws", self.draws, 1)
        if self.images is not None:
            check_int("smoothed images", self.images, 1)
        check_int("noise seed", self.seed, 0)

    @property
    def label(self) -> str:
        return f"{self.draws} noisy draws sigma={self.sigma:g}"

    forward_passes = property(lambda self: self.draws)   # rtlkit.plan: F per image
    attack_steps = 0


def noisy_features_path(source: SourceRun, data: DataSpec, draws: NoisyDraws, runtime: Runtime | None = None,
                        tap: int | None = None) -> Path:
    key = {"data": data, "draws": draws, "v": 1, **({"tap": tap} if tap is not None else {})}
    return run_dir(source, runtime) / f"noisy-{stable_hash(key)}.pt"


def test_images(data: DataSpec, n: int | None, seed: int = 0) -> D.ImageData:
    """A class-balanced subset of ``n`` test images (all when None): what smoothing and search measure."""
    return D.subset(data.test(), n, seed)


def get_or_noisy_features(source: SourceRun, data: DataSpec, draws: NoisyDraws, runtime: Runtime | None = None,
                          progress: bool = True, tap: int | None = None,
                          batch_size: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy features (draws, B, D), clean features (B, D), labels (B,)) of ``draws.images``
    class-balanced test images of ``data``, cached beside the source in ``noisy-<hash>.pt``."""
    check_tap(tap, source.model.n_blocks)
    if _RECORDING:
        n = len(test_images(data, draws.images, data.seed))
        redo = functools.partial(get_or_noisy_features, source, data, draws, None, False, tap)   # for rtlkit.launch
        _RECORDING[-1].evaluations.append((source, [draws], n, noisy_features_path(source, data, draws, None, tap), redo))
        return torch.zeros(0, 0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    runtime = runtime or Runtime()

    def compute(model):
        d = shaped_for(source, test_images(data, draws.images, data.seed))
        x = runtime.inputs(d.x.float().div(255).to(runtime.device))
        g = torch.Generator(device=runtime.device).manual_seed(draws.seed)
        with runtime.autocast():
            clean = tapped(model, x, tap).float().cpu()
        owner = torch.arange(len(x), device=x.device).repeat(draws.draws)   # draw-major: (draws, B)
        zs = []
        for s in tqdm_range(0, len(owner), batch_size, "noisy features", progress):
            xb = x[owner[s:s + batch_size]]
            with runtime.autocast():
                zs.append(tapped(model, xb + draws.sigma * torch.randn(xb.shape, generator=g, device=xb.device,
                                                                     dtype=xb.dtype), tap).float().cpu())
        return {"z": torch.cat(zs).view(draws.draws, len(x), -1), "clean": clean, "y": d.y.clone()}
    out = _cached_tensors(source, noisy_features_path(source, data, draws, runtime, tap), runtime, progress, compute,
                          {"data": data, "draws": draws, "tap": tap})
    return out["z"], out["clean"], out["y"]


def tqdm_range(start: int, stop: int, step: int, desc: str, progress: bool):
    from tqdm.auto import tqdm
    return tqdm(range(start, stop, step), desc=desc, leave=False, disable=not progress)


# --------------------------------------------------------------------------- other per-example tables

def table_path(run, name: str, key, runtime: Runtime | None = None) -> Path:
    return run_dir(run, runtime) / f"{name}-{stable_hash({'key': key, 'v': 1})}.json"


def _table_mismatches(m: dict, df: pd.DataFrame) -> list[str]:
    return [c for c, v in m.get("column_means", {}).items() if _differs(v, df[c].mean(), 1e-9)]


def get_or_table(run, name: str, key, compute, runtime: Runtime | None = None, progress: bool = True,
                 work=None, n: int = 0) -> pd.DataFrame:
    """A per-example table that ``compute(model)`` (a DataFrame) measures on ``run``'s model,
    cached as ``<name>-<hash of key>.json`` + ``.csv`` beside the run with the model.pt sha256 it
    measured and every numeric column's mean (checked on load, like evaluations). ``work`` (with
    ``label``, ``attack_steps``, ``forward_passes`` per image) and ``n`` are what rtlkit.plan counts."""
    if _RECORDING:
        redo = functools.partial(get_or_table, run, name, key, compute, None, False, work, n)   # for rtlkit.launch
        _RECORDING[-1].evaluations.append((run, [work], n, table_path(run, name, key), redo))
        return pd.DataFrame()
    from . import distributed
    runtime = runtime or Runtime()
    path = table_path(run, name, key, runtime)
    with run_lock(path.parent):
        cached = _cached_on_main(path, ".csv", ",", _table_mismatches)
        if cached is not None:
            return cached[1]
        model, model_sha = _model_for(run, path.parent, runtime, progress)
        t0 = time.time()
        df = compute(model)   # under torchrun every rank computes the same table; rank 0 writes it
        data = df.to_csv(index=False, float_format="%.17g").encode()
        df = pd.read_csv(io.BytesIO(data))   # exactly what a later cache hit reads
        means = {c: float(df[c].mean()) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])}
        if distributed.is_main():
            atomic_write_json(path, {"key": to_jsonable(key), "n_test": len(df), "column_means": means,
                                     "seconds": time.time() - t0, "device": runtime.describe(),
                                     "numerics": runtime.numerics(), "threads": torch.get_num_threads(), "cpu": cpu_record(),
                                     "model_sha256": model_sha,
                                     "csv_sha256": atomic_write_bytes(path.with_suffix(".csv"), data)})
        distributed.barrier()
        return df
