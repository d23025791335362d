"""Wide-ResNets with the input normalisation inside the model (so epsilon and sigma are in
[0, 1] pixel units) and an explicit, ordered block partition for "fine-tune the last k blocks".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import check, check_int, is_real


class Normalize(nn.Module):
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
    """Global average pool + the linear classifier (the penultimate feature is the pooled one)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(c, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def features(self, x):
        return self.pool(x).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


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


class WideResNet(nn.Module):
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
        mean = tuple(mean) * (in_channels // len(mean)) if len(mean) == 1 else tuple(mean)
        std = tuple(std) * (in_channels // len(std)) if len(std) == 1 else tuple(std)
        self.normalize = Normalize(mean, std)
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

    def add_projection(self, out_dim: int = 128) -> "WideResNet":
        """A 2-layer MLP projection head on the penultimate feature (SimCLR pre-training; Chen et
        al. App. B.9: feature_dim -> feature_dim -> out_dim). It is part of the model, so the
        optimiser and checkpoints carry it; :meth:`replace_head` drops it."""
        d = self.feature_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, out_dim))
        return self

    def replace_head(self, num_classes: int, seed: int | None = None, hidden: int = 0, width: int | None = None,
                     bn: bool = False, dropout: float = 0.0) -> "WideResNet":
        """A fresh classifier for ``num_classes`` classes (in place; returns self); a pre-training
        projection head, if any, is dropped. ``hidden`` = 0: one linear layer. Otherwise an MLP
        inside ``head.fc`` (Shafahi et al. Fig. 4): ``hidden`` x (Linear to ``width`` (default the
        feature width) [+ BatchNorm] + ReLU [+ Dropout]), then the linear classifier."""
        fc = mlp_head(self.feature_dim, num_classes, seed, hidden, width, bn, dropout)   # checks first
        if "projection" in self._modules:
            del self.projection
        self.head.fc = fc.to(next(self.parameters()).device)
        return self


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


def reinit_blocks(model: WideResNet, blocks: list[nn.Module], seed: int = 0) -> None:
    """Re-initialise the given blocks (Shafahi Fig. 1), deterministically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for blk in blocks:
            for m in blk.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    m.reset_parameters()
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build(spec: WRNSpec, num_classes: int, in_channels: int, mean, std) -> WideResNet:
    return WideResNet(spec, num_classes, in_channels, mean, std)
