"""Adversarial representations of a one-layer head (Provably Robust Transfer, Sec. 4, Eqs. 3-4).

For features z of a correctly classified input (class i) and a linear head (W, b), the nearest
representation in L2 that the head misclassifies is found in closed form: crossing the boundary
with class j needs a step of delta_j / ||w_j||_2 along -w_j, where w_j = W_i - W_j and
delta_j = w_j . z + b_i - b_j > 0; the nearest boundary is the j minimising that distance. No
solver: this is the exact minimiser of Problem 4 (a minimum over j of one-constraint problems).
"""
from __future__ import annotations

import torch

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
