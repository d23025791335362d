"""L-inf Lipschitz heads (Provably Robust Transfer, ICLR 2022 submission, Sec. 3, App. A.1): a
classifier h on frozen features whose L-inf -> L-inf Lipschitz constant is known, so a bound
||z' - z||_inf <= delta on the features bounds the logits: ||h(z') - h(z)||_inf <= delta * prod k_i
(Eqs. 1-2), and a margin above 2 * delta * prod k_i proves the prediction.

- :class:`LinfLinear`: row j of W is clamp(g_j, -k, k) * V_j / ||V_j||_1. The largest row L1
  norm is exactly the L-inf operator norm, so ||W||_inf <= k holds by construction.
  ``row_norm="l2"`` is App. A.1's literal variant (V_j / ||V_j||_2), kept for Table 1 only: its
  L-inf norm can reach k * sqrt(n).
- :class:`GroupSort` (Anil et al. 2019): sorts each group of ``group`` units; 1-Lipschitz in L-inf.
- :class:`LipschitzHead`: 1 or 4 bias-free layers with GroupSort between them, every layer an
  ``LinfLinear`` under ``constraint="wn"`` or a plain ``nn.Linear`` under ``"none"`` (the same net).
- :func:`lipschitz_bound`: the product of the layers' L-inf operator norms (<= k^layers under wn);
  every certificate uses it, so unconstrained heads get one too.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import check, check_int, check_real

CONSTRAINTS = ("none", "wn")


class LinfLinear(nn.Module):
    """A bias-free linear layer whose L-inf operator norm is at most ``k`` (App. A.1's weight
    normalisation with the magnitudes g_j projected onto [-k, k])."""

    def __init__(self, n_in: int, n_out: int, k: float = 1.0, row_norm: str = "l1"):
        super().__init__()
        check_int("LinfLinear inputs", n_in, 1)
        check_int("LinfLinear outputs", n_out, 1)
        check_real("Lipschitz constant k", k, 0, low_open=True)
        check(row_norm in ("l1", "l2"), f"row_norm must be 'l1' or 'l2', not {row_norm!r}")
        self.k, self.row_norm = float(k), row_norm
        v = torch.empty(n_out, n_in)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))          # nn.Linear's initial directions
        self.v = nn.Parameter(v)
        self.g = nn.Parameter(self._norms(v).clamp(max=self.k))

    def _norms(self, v: torch.Tensor) -> torch.Tensor:
        return v.norm(p=1 if self.row_norm == "l1" else 2, dim=1)

    @property
    def weight(self) -> torch.Tensor:
        return self.g.clamp(-self.k, self.k)[:, None] * self.v / self._norms(self.v).clamp_min(1e-12)[:, None]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T

    def extra_repr(self) -> str:
        return f"{self.v.shape[1]}, {self.v.shape[0]}, k={self.k:g}, row_norm={self.row_norm}"


class GroupSort(nn.Module):
    """Sort every consecutive group of ``group`` units (group 2 = MaxMin)."""

    def __init__(self, group: int = 2):
        super().__init__()
        check_int("GroupSort group size", group, 1)
        self.group = group

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[-1]
        check(n % self.group == 0, f"GroupSort: {n} units do not split into groups of {self.group}")
        return z.unflatten(-1, (n // self.group, self.group)).sort(dim=-1).values.flatten(-2)


def operator_norm(layer: nn.Module) -> float:
    """The L-inf -> L-inf operator norm of a linear layer: its largest row L1 norm."""
    return float(layer.weight.detach().abs().sum(1).max())


class LipschitzHead(nn.Module):
    """A classifier on frozen features: ``layers`` bias-free linear layers (the hidden ones
    ``hidden`` wide, default the feature width), GroupSort between them and none after the last."""

    def __init__(self, n_in: int, num_classes: int, layers: int = 1, hidden: int | None = None,
                 constraint: str = "wn", k: float = 1.0, row_norm: str = "l1", group: int = 2):
        super().__init__()
        check(constraint in CONSTRAINTS, f"constraint must be one of {CONSTRAINTS}, not {constraint!r}")
        check_int("head layers", layers, 1)
        check_int("head inputs", n_in, 1)
        check_int("classes", num_classes, 1)
        hidden = n_in if hidden is None else hidden
        check_int("head hidden width", hidden, 1)
        check_int("GroupSort group size", group, 1)
        if layers > 1:
            check(hidden % group == 0, f"the hidden width {hidden} must be divisible by the GroupSort group {group}")
        check_real("Lipschitz constant k", k, 0, low_open=True)
        self.constraint, self.k = constraint, float(k)
        widths = [n_in] + [hidden] * (layers - 1) + [num_classes]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods.append(LinfLinear(a, b, k, row_norm) if constraint == "wn" else nn.Linear(a, b, bias=False))
            if i < layers - 1:
                mods.append(GroupSort(group))
        self.net = nn.Sequential(*mods)

    @property
    def linears(self) -> list[nn.Module]:
        return [m for m in self.net if not isinstance(m, GroupSort)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def lipschitz_bound(head: nn.Module) -> float:
    """The L-inf Lipschitz bound of a head: the product of its linear layers' operator norms
    (GroupSort is 1-Lipschitz); for a bare linear layer, its own norm."""
    layers = head.linears if isinstance(head, LipschitzHead) else [head]
    out = 1.0
    for layer in layers:
        out *= operator_norm(layer)
    return out
