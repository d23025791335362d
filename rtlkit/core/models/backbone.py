"""The Backbone protocol every method works through (``rtlkit.core.models``): the input
normalisation inside the model, the ordered blocks, the replaceable head."""
from __future__ import annotations


import torch
import torch.nn as nn

from rtlkit.core.errors import check, check_int, is_real


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
