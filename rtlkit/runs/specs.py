"""Run specs: a run is a frozen config dataclass (a source, a transfer, a head on a frozen
extractor, noisy draws), and its stable hash names its cache folder (``rtlkit.runs.store``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rtlkit.core import data as D
from rtlkit.core.errors import ConfigError, check, check_int, check_real, is_int
from rtlkit.core.io import sha256_file
from rtlkit.core.models.backbone import Backbone
from rtlkit.core.models.checkpoints import CHECKPOINT_FORMATS, load_weights, read_checkpoint
from rtlkit.core.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNetSpec
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.core.models import build, parse_spec
from rtlkit.train.methods.neft import NEFT
from rtlkit.train.loop import AdversarialTraining, StandardTraining
from rtlkit.train.transfer import TransferPolicy
from rtlkit.train.methods.fdm import FDMTraining

if TYPE_CHECKING:   # heads: notebook 05's Lipschitz heads, notebook 06's probes
    from rtlkit.train.methods.lipschitz import HeadSpec, HeadTraining
    from rtlkit.train.methods.probes import ProbeHead, ProbeTraining


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


def input_shape_of(source) -> tuple[int, int]:
    if isinstance(source, ExternalSource):
        return source.input_shape()
    info = D.load(source.data.name, "train").info
    return info.channels, info.size


def shaped_for(source: SourceRun | ExternalSource, d: D.ImageData) -> D.ImageData:
    """``d`` adapted to the source's input channels and size (a transfer's or a head's data)."""
    return D.adapt(d, *input_shape_of(source))


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

    forward_passes = property(lambda self: self.draws)   # rtlkit.suite.plan: F per image
    attack_steps = 0


def test_images(data: DataSpec, n: int | None, seed: int = 0) -> D.ImageData:
    """A class-balanced subset of ``n`` test images (all when None): what smoothing and search measure."""
    return D.subset(data.test(), n, seed)
