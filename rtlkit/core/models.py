"""Backbones with the input normalisation inside the model (so epsilon and sigma are in [0, 1]
pixel units) and an explicit, ordered block partition for "fine-tune the last k blocks".

:class:`Backbone` is the protocol every method uses (last-k fine-tuning, the BN policies, FDM, NEFT,
LwF, probes, heads, attacks, certification, the report card): ``normalize``; ``blocks``, in forward
order, the last one a :class:`Head` (``head.fc`` replaceable, ``head.features`` the pooled
penultimate feature); ``features(x, n)`` (the first n blocks) and ``forward_from(h, n)``;
``penultimate``; ``feature_dim``. Residual blocks that NEFT can make non-expansive carry a
``convex_sum`` flag. Two implementations: rtlkit's pre-activation :class:`WideResNet`
(:class:`WRNSpec`) and torchvision's ResNet-18/34/50 (:class:`ResNetSpec`, same parameter names
per block, so torchvision's and the robustness ecosystem's weights load: :func:`load_torchvision`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from rtlkit.core.errors import ConfigError, check, check_int, is_real


class Normalize(nn.Module):
    @classmethod
    def for_channels(cls, mean, std, channels: int) -> "Normalize":
        """One mean / std value repeated over ``channels``, or one per channel."""
        rep = lambda v: tuple(v) * (channels // len(v)) if len(v) == 1 else tuple(v)
        return cls(rep(mean), rep(std))

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Pre-activation WRN block: BN-ReLU-conv-BN-ReLU-conv plus shortcut.

    ``convex_sum`` turns the residual sum a + b into the convex combination (a + b) / 2
    (CARTL Sec. 5, NEFT; Cisse et al. 2017).
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.convex_sum = False

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        short = x if self.equal else self.shortcut(o)
        out = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return 0.5 * (out + short) if self.convex_sum else out + short


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        return self.conv(x)


class FinalBNReLU(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(x))


class Head(nn.Module):
    """Global average pool + the linear classifier (the penultimate feature is the pooled one). The
    classifier runs in float32 whatever autocast is in force: bf16 logits round near-equal classes
    to a tie, and ``argmax`` then picks the lower class (smoothing counts, first-fooled tracking and
    the card would all lean that way). The head is a tiny share of the model's work."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(c, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def features(self, x):
        return self.pool(x).flatten(1)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """The logits of pooled features ``z``, in float32 (autocast off)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.fc(z.float())

    def forward(self, x):
        return self.classify(self.features(x))


@dataclass(frozen=True)
class WRNSpec:
    """WRN-depth-width. ``stem_stride`` 2 downsamples early (cheap CPU runs on 28x28 inputs)."""
    depth: int = 34
    width: int = 10
    stem_stride: int = 1
    base: int = 16

    def __post_init__(self):
        check((self.depth - 4) % 6 == 0 and self.depth >= 10,
              f"WRN depth must be 6n+4 with n >= 1 (10, 16, 28, 34, ...), not {self.depth}")
        check(self.width >= 1, f"WRN width must be >= 1, not {self.width}")
        check(self.stem_stride in (1, 2), f"stem_stride must be 1 or 2, not {self.stem_stride}")

    @property
    def name(self) -> str:
        return f"wrn-{self.depth}-{self.width}" + ("-s2" if self.stem_stride == 2 else "")

    @property
    def n_blocks(self) -> int:
        return 3 * (self.depth - 4) // 6 + 2

    @property
    def widths(self) -> tuple[int, ...]:
        """The channel width after each block but the head (the first ``tap`` blocks end at ``widths[tap - 1]``)."""
        n = (self.depth - 4) // 6
        return tuple(self.base * self.width * m for m in (1, 2, 4) for _ in range(n)) + (4 * self.base * self.width,)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class Backbone(nn.Module):
    """The block-partitioned model every method works through (module docstring). Subclasses set
    ``spec``, ``normalize``, ``blocks`` (the last a :class:`Head`) and ``feature_dim``."""

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def head(self) -> Head:
        return self.blocks[-1]

    def forward_from(self, h: torch.Tensor, start: int) -> torch.Tensor:
        for b in self.blocks[start:]:
            h = b(h)
        return h

    def features(self, x: torch.Tensor, n_first: int) -> torch.Tensor:
        """Output of the first ``n_first`` blocks (the part a transfer with k = n_blocks - n_first freezes)."""
        h = self.normalize(x)
        for b in self.blocks[:n_first]:
            h = b(h)
        return h

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature that feeds the final linear layer."""
        return self.head.features(self.features(x, self.n_blocks - 1))

    def forward(self, x):
        return self.forward_from(self.normalize(x), 0)

    def add_projection(self, out_dim: int = 128) -> "Backbone":
        """A 2-layer MLP projection head on the penultimate feature (SimCLR pre-training; Chen et
        al. App. B.9: feature_dim -> feature_dim -> out_dim). It is part of the model, so the
        optimiser and checkpoints carry it; :meth:`replace_head` drops it."""
        d = self.feature_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, out_dim))
        return self

    def replace_head(self, num_classes: int, seed: int | None = None, hidden: int = 0, width: int | None = None,
                     bn: bool = False, dropout: float = 0.0) -> "Backbone":
        """A fresh classifier for ``num_classes`` classes (in place; returns self); a pre-training
        projection head, if any, is dropped. ``hidden`` = 0: one linear layer. Otherwise an MLP
        inside ``head.fc`` (Shafahi et al. Fig. 4): ``hidden`` x (Linear to ``width`` (default the
        feature width) [+ BatchNorm] + ReLU [+ Dropout]), then the linear classifier."""
        fc = mlp_head(self.feature_dim, num_classes, seed, hidden, width, bn, dropout)   # checks first
        if "projection" in self._modules:
            del self.projection
        self.head.fc = fc.to(next(self.parameters()).device)
        return self



class WideResNet(Backbone):
    """WRN with an ordered block partition, numbered as in CARTL Sec. 4 / Shafahi Fig. 2.

    ``self.blocks`` holds, in forward order: every residual block (the stem convolution rides
    with the first one, so that fine-tuning "all" blocks trains every weight), then the final
    BN+ReLU, then the classifier head. WRN-34-10 has 3*5 residual blocks + 2 = 17 blocks;
    WRN-28-4 has 14. "The last k blocks" are ``blocks[-k:]``: k=1 is the classifier alone,
    k=2 adds the final BN, k=3 adds the last residual block, and so on.
    """

    def __init__(self, spec: WRNSpec, num_classes: int, in_channels: int = 3,
                 mean=(0.5,), std=(0.5,)):
        super().__init__()
        self.spec = spec
        self.normalize = Normalize.for_channels(mean, std, in_channels)
        n = (spec.depth - 4) // 6
        widths = [spec.base, spec.base * spec.width, 2 * spec.base * spec.width, 4 * spec.base * spec.width]
        blocks: list[nn.Module] = []
        cin = widths[0]
        for g in range(3):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0) else 1
                blk = BasicBlock(cin, widths[g + 1], stride)
                if g == 0 and i == 0:
                    blk = nn.Sequential(Stem(in_channels, widths[0], spec.stem_stride), blk)
                blocks.append(blk)
                cin = widths[g + 1]
        blocks.append(FinalBNReLU(cin))
        blocks.append(Head(cin, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = cin
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

def mlp_head(d: int, num_classes: int, seed: int | None = None, hidden: int = 0, width: int | None = None,
             bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """A classifier on a ``d``-wide feature: one linear layer (``hidden`` = 0), or ``hidden`` x
    (Linear to ``width`` (default d) [+ BatchNorm] + ReLU [+ Dropout]) and then the linear layer
    (Shafahi et al. Fig. 4). Weights U(-1/sqrt(n_in), 1/sqrt(n_in)) from a generator seeded by
    ``seed``, biases zero."""
    check_int("hidden layers", hidden, 0)
    check(is_real(dropout) and 0 <= dropout < 1, f"dropout must be in [0, 1), not {dropout!r}")
    width = d if width is None else width
    check_int("hidden width", width, 1)
    g = torch.Generator().manual_seed(seed) if seed is not None else None

    def linear(n_in: int, n_out: int) -> nn.Linear:
        fc = nn.Linear(n_in, n_out)
        with torch.no_grad():
            bound = 1 / n_in ** 0.5
            fc.weight.copy_(torch.empty_like(fc.weight).uniform_(-bound, bound, generator=g))
            fc.bias.zero_()
        return fc
    layers: list[nn.Module] = []
    n_in = d
    for _ in range(hidden):
        layers += [linear(n_in, width)] + ([nn.BatchNorm1d(width)] if bn else []) + [nn.ReLU()] + \
            ([nn.Dropout(dropout)] if dropout > 0 else [])
        n_in = width
    last = linear(n_in, num_classes)
    return nn.Sequential(*layers, last) if hidden else last


def reinit_blocks(model: Backbone, blocks: list[nn.Module], seed: int = 0) -> None:
    """Re-initialise the given blocks (Shafahi Fig. 1), deterministically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for blk in blocks:
            for m in blk.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    m.reset_parameters()
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# --------------------------------------------------------------------------- torchvision's ResNets

_RESNET_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ResNetSpec:
    """torchvision's ResNet-``depth`` (18, 34, 50; He et al. 2016, v1.5: the bottleneck's stride on
    its 3x3 conv). ``width`` is the first stage's width (torchvision: 64; smaller for tests only,
    since no released weights fit it); ``small_input`` replaces the ImageNet stem (7x7 stride-2 conv
    + max-pool) by a 3x3 stride-1 conv, as CIFAR ResNets do (released ImageNet weights then do not
    fit the stem). Partition: the stem rides with layer1's first block, then every basic or
    bottleneck block of layer1-layer4 is one block, then pool + fc (``n_blocks`` = blocks + 1)."""
    depth: int = 50
    width: int = 64
    small_input: bool = False

    def __post_init__(self):
        check(self.depth in _RESNET_LAYERS, f"ResNet depth must be one of {sorted(_RESNET_LAYERS)} (torchvision's "
              f"resnet18/34/50), not {self.depth!r}")
        check_int("ResNet width", self.width, 1)

    @property
    def name(self) -> str:
        return f"resnet-{self.depth}" + (f"-w{self.width}" if self.width != 64 else "") + \
            ("-small" if self.small_input else "")

    @property
    def kind(self) -> str:
        return _RESNET_LAYERS[self.depth][0]

    @property
    def layers(self) -> tuple[int, ...]:
        return _RESNET_LAYERS[self.depth][1]

    @property
    def n_blocks(self) -> int:
        return sum(self.layers) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        e = 4 if self.kind == "bottleneck" else 1
        return tuple(self.width * 2 ** g * e for g, n in enumerate(self.layers) for _ in range(n))

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class ResNetStem(nn.Module):
    """torchvision's stem (conv1, bn1, ReLU, 3x3 stride-2 max-pool), or with ``small`` a 3x3
    stride-1 conv, BN and ReLU; the parameter names are torchvision's."""

    def __init__(self, cin: int, cout: int, small: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.pool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return self.pool(torch.relu(self.bn1(self.conv1(x))))


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetBasic(nn.Module):
    """torchvision's BasicBlock (post-activation: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut));
    ``convex_sum`` (NEFT) makes the sum before the last ReLU (a + b) / 2."""
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)
        self.convex_sum = False

    def residual(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        out, short = self.residual(x), x if self.downsample is None else self.downsample(x)
        return torch.relu(0.5 * (out + short) if self.convex_sum else out + short)


class ResNetBottleneck(ResNetBasic):
    """torchvision's Bottleneck (1x1, 3x3 with the stride, 1x1 to 4 x planes), with ``convex_sum``."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(cin, planes * 4, stride)
        self.convex_sum = False

    def residual(self, x):
        o = torch.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(o)))))


class ResNet(Backbone):
    """torchvision's ResNet-18/34/50 as a :class:`Backbone` (:class:`ResNetSpec` gives the
    partition). No final BN block: the post-activation blocks end in their own ReLU."""

    def __init__(self, spec: ResNetSpec, num_classes: int, in_channels: int = 3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.spec = spec
        self.normalize = Normalize.for_channels(mean, std, in_channels)
        block = ResNetBottleneck if spec.kind == "bottleneck" else ResNetBasic
        blocks: list[nn.Module] = []
        cin = spec.width
        for g, n in enumerate(spec.layers):
            for i in range(n):
                blk = block(cin, spec.width * 2 ** g, 2 if (g > 0 and i == 0) else 1)
                if g == 0 and i == 0:
                    blk = nn.Sequential(ResNetStem(in_channels, spec.width, spec.small_input), blk)
                blocks.append(blk)
                cin = spec.width * 2 ** g * block.expansion
        blocks.append(Head(cin, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = cin
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def torchvision_key_map(spec: ResNetSpec) -> dict[str, str]:
    """torchvision ResNet parameter-name prefixes -> ours (``conv1.`` -> ``blocks.0.0.conv1.``,
    ``layer2.0.`` -> ``blocks.<i>.``, ``fc.`` -> ``blocks.<last>.fc.``)."""
    out = {"conv1.": "blocks.0.0.conv1.", "bn1.": "blocks.0.0.bn1."}
    i = 0
    for g, n in enumerate(spec.layers):
        for j in range(n):
            out[f"layer{g + 1}.{j}."] = "blocks.0.1." if i == 0 else f"blocks.{i}."
            i += 1
    out["fc."] = f"blocks.{i}.fc."
    return out


def from_torchvision_keys(state: dict, spec: ResNetSpec) -> dict:
    """A torchvision-named ResNet state dict renamed to :class:`ResNet`'s; a key under no known
    prefix is kept as it is (load_state_dict then names it)."""
    return _renamed(state, torchvision_key_map(spec))


# --------------------------------------------------------------------------- checkpoints from elsewhere

CHECKPOINT_FORMATS = ("torchvision", "robustness", "robustbench", "rtlkit")


def robustbench_key_map(spec: WRNSpec) -> dict[str, str]:
    """RobustBench's / TRADES' WideResNet names -> ours: ``conv1.`` (the stem), ``block<g>.layer.<j>.``
    (``convShortcut.`` is our ``shortcut.``), the final ``bn1.`` and ``fc.``. The same pre-activation
    block, so the same function (``sub_block1``, unused in its forward, is dropped)."""
    n = (spec.depth - 4) // 6
    out = {"conv1.": "blocks.0.0.conv."}
    for g in range(3):
        for j in range(n):
            i = g * n + j
            out[f"block{g + 1}.layer.{j}."] = "blocks.0.1." if i == 0 else f"blocks.{i}."
    out["bn1."] = f"blocks.{3 * n}.bn."
    out["fc."] = f"blocks.{3 * n + 1}.fc."
    return out


def _renamed(state: dict, mapping: dict[str, str], drop: tuple[str, ...] = ()) -> dict:
    prefixes = sorted(mapping.items(), key=lambda kv: -len(kv[0]))
    out = {}
    for k, v in state.items():
        if k.startswith(drop):
            continue
        for a, b in prefixes:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k.replace(".convShortcut.", ".shortcut.")] = v
    return out


def read_checkpoint(path, spec: WRNSpec | ResNetSpec, fmt: str, allow_pickle: bool = False) -> tuple[dict, tuple | None, tuple | None]:
    """(state dict in rtlkit's names without the normalisation, mean, std) from a checkpoint file:
    a torchvision ResNet ``state_dict`` ("torchvision"); a MadryLab ``robustness`` checkpoint (its
    ``model`` or ``state_dict`` entry, the ``module.model.`` weights; the attacker's copy is
    dropped, the normalizer's mean / std returned); a RobustBench / TRADES WideResNet state dict
    ("robustbench"); or an rtlkit ``model.pt`` ("rtlkit"). mean / std are None where the file
    does not record them. Every problem is a ConfigError naming the file."""
    from pathlib import Path

    path = Path(path)
    check(fmt in CHECKPOINT_FORMATS, f"checkpoint format {fmt!r}: one of {', '.join(CHECKPOINT_FORMATS)}")
    check(path.is_file(), f"checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:   # noqa: BLE001 - a torn, foreign or pickled file: one clear line
        hint = " (it pickles Python objects: load it with allow_pickle=True only if you trust it)" \
            if "weights_only" in str(e) or "Unpickl" in type(e).__name__ else ""
        first = (str(e).splitlines() or ["an empty file" if path.stat().st_size == 0 else "no message"])[0]
        raise ConfigError(f"checkpoint {path}: cannot be read as a torch file ({type(e).__name__}: "
                          f"{first[:200]}){hint}") from e
    check(isinstance(obj, dict), f"checkpoint {path}: holds a {type(obj).__name__}, not a state dict")
    mean = std = None
    if fmt == "robustness":
        inner = obj.get("model", obj.get("state_dict", obj))
        check(isinstance(inner, dict), f"checkpoint {path}: its 'model' entry is not a state dict")
        for name in ("module.normalizer.new_mean", "normalizer.new_mean"):
            if name in inner or name.replace("mean", "std") in inner:
                mean, std = _normaliser(inner, name, name.replace("mean", "std"), path)
        prefix = next((p for p in ("module.model.", "model.") if any(k.startswith(p) for k in inner)), None)
        check(prefix is not None, f"checkpoint {path}: no 'module.model.' weights (not a robustness checkpoint?); "
              f"first keys: {list(inner)[:5]}")
        obj = {k[len(prefix):]: v for k, v in inner.items() if k.startswith(prefix)}
    elif isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    obj = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}   # DataParallel's prefix
    check(all(isinstance(v, torch.Tensor) for v in obj.values()), f"checkpoint {path}: not a state dict of tensors")
    if fmt in ("torchvision", "robustness"):
        check(isinstance(spec, ResNetSpec), f"checkpoint {path}: the {fmt} format holds a ResNet, not a {spec.name}")
        state = from_torchvision_keys(obj, spec)
    elif fmt == "robustbench":
        check(isinstance(spec, WRNSpec), f"checkpoint {path}: the robustbench format holds a WideResNet, not a {spec.name}")
        for name in ("mu", "sigma"):   # some RobustBench models carry their normalisation as buffers
            obj.pop(name, None)
        state = _renamed(obj, robustbench_key_map(spec), drop=("sub_block1.",))
    else:
        state = obj
        if "normalize.mean" in state or "normalize.std" in state:
            mean, std = _normaliser(state, "normalize.mean", "normalize.std", path)
    state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    check(not bad, f"checkpoint {path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[:4]}: "
          "a model with them would evaluate to a meaningless accuracy")
    return state, mean, std


def _normaliser(state: dict, mean_key: str, std_key: str, path) -> tuple[tuple, tuple]:
    """A checkpoint's input normalisation: both of mean and std, finite, std > 0, one value per channel."""
    check(mean_key in state and std_key in state, f"checkpoint {path}: it has {mean_key if mean_key in state else std_key} "
          f"but no {std_key if mean_key in state else mean_key}: a normalisation needs both")
    mean, std = (tuple(float(v) for v in state[k].flatten()) for k in (mean_key, std_key))
    check(len(mean) == len(std) >= 1 and all(math.isfinite(v) for v in mean + std) and all(v > 0 for v in std),
          f"checkpoint {path}: its normalisation mean {mean} / std {std} must be finite, of one length, std > 0")
    return mean, std


def load_weights(model: Backbone, state: dict, path) -> None:
    """``state`` (rtlkit's names, no normalisation) into ``model``; keys or shapes that do not
    match the architecture are one ConfigError naming the file and the first mismatched keys."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    check(not (missing or unexpected or shapes),
          f"checkpoint {path} does not fit {model.spec.name}: " + "; ".join(
              f"{what} {items[:4]}" + (f" and {len(items) - 4} more" if len(items) > 4 else "")
              for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])


def parse_spec(value) -> WRNSpec | ResNetSpec:
    """A backbone by name, as a notebook parameter gives it: ``wrn-16-1`` (``-s2``: early
    downsampling), ``resnet18`` / ``resnet-50`` (``-w8``: first-stage width 8, ``-small``: the
    CIFAR stem); a spec passes through. Anything else is a ConfigError naming the forms."""
    import re
    if isinstance(value, (WRNSpec, ResNetSpec)):
        return value
    forms = "wrn-<depth>-<width>[-s2] or resnet<18|34|50>[-w<width>][-small]"
    check(isinstance(value, str), f"model: a backbone name ({forms}), not {value!r}")
    v = value.strip().lower()
    m = re.fullmatch(r"wrn-(\d+)-(\d+)(-s2)?", v)
    if m:
        return WRNSpec(int(m[1]), int(m[2]), stem_stride=2 if m[3] else 1)
    m = re.fullmatch(r"resnet-?(\d+)(?:-w(\d+))?(-small)?", v)
    check(m is not None, f"unknown model {value!r}: {forms}")
    return ResNetSpec(int(m[1]), int(m[2] or 64), bool(m[3]))


def build(spec: WRNSpec | ResNetSpec, num_classes: int, in_channels: int, mean, std) -> Backbone:
    """The backbone ``spec`` names, for ``num_classes`` classes, normalising its input by mean / std."""
    check(isinstance(spec, (WRNSpec, ResNetSpec)), f"model: a WRNSpec or a ResNetSpec, not {type(spec).__name__}")
    cls = ResNet if isinstance(spec, ResNetSpec) else WideResNet
    return cls(spec, num_classes, in_channels, mean, std)
