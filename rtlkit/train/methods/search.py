"""Adversarial representations of a one-layer head (Provably Robust Transfer, Sec. 4, Eqs. 3-4).

For features z of a correctly classified input (class i) and a linear head (W, b), the nearest
representation in L2 that the head misclassifies is found in closed form: crossing the boundary
with class j needs a step of delta_j / ||w_j||_2 along -w_j, where w_j = W_i - W_j and
delta_j = w_j . z + b_i - b_j > 0; the nearest boundary is the j minimising that distance. No
solver: this is the exact minimiser of Problem 4 (a minimum over j of one-constraint problems).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rtlkit.core.errors import check_int, check_real

OVERSHOOT = 1e-6   # step just past the boundary, so that z' is misclassified, not on it


def representation_search(weight: torch.Tensor, bias: torch.Tensor | None, z: torch.Tensor,
                          y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The nearest misclassified representation z' for each row of ``z`` (B, D) with label ``y``:
    z' = z - (delta_j / ||w_j||^2)(1 + 1e-6) w_j at the j minimising delta_j / ||w_j||_2. Returns
    z', the class j crossed into, and the L2 distance delta_j / ||w_j||_2 (0 where z is already
    misclassified, with z' = z)."""
    w, z = weight.double(), z.double()
    b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if bias is None else bias.double()
    wi = w[y]                                            # (B, D)
    wd = wi[:, None, :] - w[None, :, :]                  # (B, C, D): w_j = W_i - W_j
    delta = (wd * z[:, None, :]).sum(-1) + (b[y][:, None] - b[None, :])   # (B, C)
    norms = wd.norm(dim=-1)
    dist = torch.where(norms > 0, delta / norms.clamp_min(1e-300), torch.full_like(delta, float("inf")))
    dist[torch.arange(len(y)), y] = float("inf")         # j != i
    d, j = dist.min(dim=1)
    wj = wd[torch.arange(len(y)), j]
    step = (delta[torch.arange(len(y)), j] / wj.pow(2).sum(-1)).clamp_min(0)[:, None] * (1 + OVERSHOOT)
    z_adv = torch.where((d > 0)[:, None], z - step * wj, z)
    return {"z": z_adv.to(weight.dtype), "j": j, "distance": d.clamp_min(0)}


@dataclass(frozen=True)
class InputSearch:
    """Sec. 4's input search for a reachable adversarial representation: minimise
    ||z' - f(x'')||_1 + weight * ||x'' - x||_2^2 over x'' in [0, 1] by Adam (lr 0.05), at most
    ``steps`` steps (the paper: 1,000); success = h(f(x'')) != y, and each example's first success
    is kept."""
    steps: int = 1000
    lr: float = 0.05
    weight: float = 0.1

    def __post_init__(self):
        check_int("input search steps", self.steps, 1)
        check_real("input search lr", self.lr, 0, low_open=True)
        check_real("input search weight", self.weight, 0)

    @property
    def label(self) -> str:
        return f"input search {self.steps} steps lr={self.lr:g} weight={self.weight:g}"

    attack_steps = property(lambda self: self.steps)     # rtlkit.suite.plan: per image, an upper bound
    forward_passes = property(lambda self: self.steps)   # the success check after each step


def input_search(features, head, x: torch.Tensor, y: torch.Tensor, z_target: torch.Tensor,
                 search: InputSearch = InputSearch()) -> dict[str, torch.Tensor]:
    """Inputs x'' near ``x`` whose features ``features(x'')`` approach ``z_target`` (the adversarial
    representations), batched; returns x'' (each example's first misclassified iterate, else the
    last), ``success`` and the step of success (-1: none). Callers hold the model in attack mode."""
    x = x.detach()
    xs = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([xs], lr=search.lr)
    best = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    at = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    for step in range(1, search.steps + 1):
        z = features(xs)
        loss = (z - z_target).abs().flatten(1).sum(1) + search.weight * (xs - x).pow(2).flatten(1).sum(1)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            xs.clamp_(0, 1)
            wrong = head(features(xs)).argmax(1) != y
            new = wrong & ~found
            best[new] = xs[new]
            at[new] = step
            found |= wrong
        if bool(found.all()):
            break
    best[~found] = xs.detach()[~found]
    return {"x": best, "success": found, "step": at}
