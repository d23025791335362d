"""L-inf Lipschitz heads (Provably Robust Transfer, ICLR 2022 submission, Sec. 3, App. A.1): a
classifier h on frozen features whose L-inf -> L-inf Lipschitz constant is known, so a bound
||z' - z||_inf <= delta on the features bounds the logits: ||h(z') - h(z)||_inf <= delta * prod k_i
(Eqs. 1-2), and a margin above 2 * delta * prod k_i proves the prediction.

- :class:`LinfLinear`: row j of W is clamp(g_j, -k, k) * V_j / ||V_j||_1. The largest row L1
  norm is exactly the L-inf operator norm, so ||W||_inf <= k holds by construction.
  ``row_norm="l2"`` is App. A.1's literal variant (V_j / ||V_j||_2), kept for Table 1 only: its
  L-inf norm can reach k * sqrt(n).
- :class:`GroupSort` (Anil et al. 2019): sorts each group of ``group`` units; 1-Lipschitz in L-inf.
- :class:`LipschitzHead`: 1 or 4 layers with GroupSort between them, every layer an ``LinfLinear``
  under ``constraint="wn"`` or a plain ``nn.Linear`` under ``"none"`` (the same net), with a bias b
  as the paper's Eqs. 3-4 have (``bias=False``: without). A bias shifts every output alike for all
  inputs, so it leaves the Lipschitz constant, and every certificate's bound, unchanged.
- :func:`lipschitz_bound`: the product of the layers' L-inf operator norms (<= k^layers under wn);
  every certificate uses it, so unconstrained heads get one too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtlkit.core.errors import check, check_int, check_real

CONSTRAINTS = ("none", "wn")


class LinfLinear(nn.Module):
    """A linear layer whose L-inf operator norm is at most ``k`` (App. A.1's weight normalisation
    with the magnitudes g_j projected onto [-k, k]), with an unconstrained bias unless ``bias=False``."""

    def __init__(self, n_in: int, n_out: int, k: float = 1.0, row_norm: str = "l1", bias: bool = False):
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
        if bias:   # nn.Linear's initial bias
            bound = 1 / math.sqrt(n_in)
            self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def _norms(self, v: torch.Tensor) -> torch.Tensor:
        return v.norm(p=1 if self.row_norm == "l1" else 2, dim=1)

    @property
    def weight(self) -> torch.Tensor:
        return self.g.clamp(-self.k, self.k)[:, None] * self.v / self._norms(self.v).clamp_min(1e-12)[:, None]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z @ self.weight.T
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.v.shape[1]}, {self.v.shape[0]}, k={self.k:g}, row_norm={self.row_norm}, bias={self.bias is not None}"


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


def check_head(layers: int, constraint: str, hidden: int | None, k: float, row_norm: str, group: int,
               bias: bool = True) -> None:
    """The settings of a head (``LipschitzHead``, ``HeadSpec``), each bad one a ConfigError."""
    check(constraint in CONSTRAINTS, f"constraint must be one of {CONSTRAINTS}, not {constraint!r}")
    check_int("head layers", layers, 1)
    check_real("Lipschitz constant k", k, 0, low_open=True)
    check(row_norm in ("l1", "l2"), f"row_norm must be 'l1' or 'l2', not {row_norm!r}")
    check_int("GroupSort group size", group, 1)
    check(isinstance(bias, bool), f"bias must be True or False, not {bias!r}")
    if hidden is not None:
        check_int("head hidden width", hidden, 1)
        if layers > 1:
            check(hidden % group == 0, f"the hidden width {hidden} must be divisible by the GroupSort group {group}")


class LipschitzHead(nn.Module):
    """A classifier on frozen features: ``layers`` linear layers with biases (the hidden ones
    ``hidden`` wide, default the feature width), GroupSort between them and none after the last."""

    def __init__(self, n_in: int, num_classes: int, layers: int = 1, hidden: int | None = None,
                 constraint: str = "wn", k: float = 1.0, row_norm: str = "l1", group: int = 2, bias: bool = True):
        super().__init__()
        check_int("head inputs", n_in, 1)
        check_int("classes", num_classes, 1)
        hidden = n_in if hidden is None else hidden
        check_head(layers, constraint, hidden, k, row_norm, group, bias)
        self.constraint, self.k = constraint, float(k)
        widths = [n_in] + [hidden] * (layers - 1) + [num_classes]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods.append(LinfLinear(a, b, k, row_norm, bias) if constraint == "wn" else nn.Linear(a, b, bias=bias))
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


# --------------------------------------------------------------------------- heads as run configs

@dataclass(frozen=True)
class HeadSpec:
    """Which head a ``runs.HeadRun`` trains: ``layers`` (1 or 4 in the paper), ``constraint``
    "wn" (L-inf weight normalisation, Lipschitz constant k per layer) or "none"."""
    layers: int = 1
    constraint: str = "wn"
    hidden: int | None = None
    k: float = 1.0
    row_norm: str = "l1"
    group: int = 2
    bias: bool = True   # Eqs. 3-4 (False: the bias-free heads rtlkit trained before issue 21)

    def __post_init__(self):
        check_head(self.layers, self.constraint, self.hidden, self.k, self.row_norm, self.group, self.bias)

    def build(self, n_in: int, num_classes: int, seed: int = 0) -> LipschitzHead:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return LipschitzHead(n_in, num_classes, self.layers, self.hidden, self.constraint, self.k, self.row_norm,
                                 self.group, self.bias)


@dataclass(frozen=True)
class HeadTraining:
    """App. A.1: Adam at lr 1e-4 on frozen features, 10 % of the training rows held out, early
    stopping on the validation loss checked every 2 epochs with a patience of 10 epochs (the best
    checked state is kept); ``max_epochs`` caps it. ``temperature`` T (ours; None = 1, the paper)
    trains on CE(T * h(z)): under the exact L-inf constraint every logit is at most ||z||_inf, so
    plain CE saturates near log K and the head barely learns; T changes the loss only, never h, its
    Lipschitz bound or a certificate (a margin and 2 delta L scale alike)."""
    lr: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 200
    val_fraction: float = 0.1
    check_every: int = 2
    patience: int = 10
    temperature: float | None = None

    kind = "head"
    epochs = property(lambda self: self.max_epochs)   # what rtlkit.suite.plan reads of every method
    steps = None

    def __post_init__(self):
        check_real("head lr", self.lr, 0, low_open=True)
        check_int("head batch size", self.batch_size, 1)
        check_int("head max epochs", self.max_epochs, 1)
        check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), not {self.val_fraction!r}")
        check_int("early-stopping check interval", self.check_every, 1)
        check_int("early-stopping patience", self.patience, 1)
        if self.temperature is not None:
            check_real("head loss temperature", self.temperature, 0, low_open=True)

    def fit(self, head, z, y, seed: int = 0, progress: bool = False, desc: str = "head", runtime=None) -> list[dict]:
        return train_head(head, z, y, self, seed, progress, desc)


def train_head(head: nn.Module, z: torch.Tensor, y: torch.Tensor, method: HeadTraining, seed: int = 0,
               progress: bool = False, desc: str = "head") -> list[dict]:
    """Train ``head`` in place on features ``z`` (N, D) and labels ``y``; the state with the lowest
    validation loss is kept. Deterministic for a seed (its own generator). Returns the checks."""
    from tqdm.auto import tqdm
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(z), generator=g)
    n_val = max(1, int(round(method.val_fraction * len(z))))
    vi, ti = perm[:n_val], perm[n_val:]
    dev = next(head.parameters()).device
    zt, yt, zv, yv = z[ti].to(dev), y[ti].to(dev), z[vi].to(dev), y[vi].to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=method.lr)
    t = method.temperature or 1.0
    best, best_loss, since, history = None, float("inf"), 0, []
    bar = tqdm(range(1, method.max_epochs + 1), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(zt), generator=g).to(dev)
        for s in range(0, len(zt), method.batch_size):
            b = order[s:s + method.batch_size]
            loss = F.cross_entropy(t * head(zt[b]), yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % method.check_every and epoch != method.max_epochs:
            continue
        head.eval()
        with torch.no_grad():
            val_logits = head(zv)
            val_loss = float(F.cross_entropy(t * val_logits, yv))
            val_acc = float((val_logits.argmax(1) == yv).float().mean())
            train_acc = float((head(zt).argmax(1) == yt).float().mean())
        history.append({"epoch": epoch, "val_loss": val_loss, "val_acc": val_acc, "train_acc": train_acc})
        bar.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if val_loss < best_loss:
            best_loss, since = val_loss, 0
            best = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            since += method.check_every
            if since >= method.patience:
                break
    head.load_state_dict(best)
    head.eval()
    return history
