"""SimCLR's contrastive loss (Chen et al., ICML 2020): NT-Xent over two views of each image.

Vaishnavi et al. use public SimCLR weights and give no settings; rtlkit takes Chen et al.'s
CIFAR-10 ones (App. B.9): temperature 0.5, a 2-layer MLP projection head to 128-d. The training
method (two device-side views, the head kept apart from ``model.penultimate``) is issue 11's
next step; this module holds the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(NT-Xent loss, positive-pair top-1 accuracy) for projections z1, z2 of shape (N, D): each of
    the 2N views must pick its partner among the other 2N - 1 by cosine similarity / tau. Float32."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target), (sim.argmax(1) == target).float().mean()
