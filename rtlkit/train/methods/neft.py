"""Non-expansive fine-tuning (CARTL Sec. 5.2, Eq. 11, App. A).

Every conv and linear layer in the fine-tuned last k blocks uses W* = beta * W / sigma(W), with
sigma estimated by one power iteration per training step on the weight flattened to
C_out x (C_in * K * K) (torch's spectral-norm parametrization, followed by a beta scale), and
every residual sum inside those blocks becomes the convex combination (a + b) / 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from rtlkit.core.errors import check, check_int, check_real


class SpectralNormFP32(_SpectralNorm):
    """torch's spectral-norm parametrisation (``torch.nn.utils.parametrizations.spectral_norm``: the
    same power iteration, buffers and state-dict keys) with its power iteration and sigma = u^T W v in
    float32 whatever autocast is in force: on CUDA, bf16 autocast runs ``torch.mv`` in bf16, which
    puts sigma off by ~0.1-0.4 % and the layer's norm off beta. Outside autocast nothing changes."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float()).to(weight.dtype)


class BetaScale(nn.Module):
    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, w):
        return self.beta * w


@dataclass(frozen=True)
class NEFT:
    """CARTL Table 2 grid: beta in {1.0, 0.6, 0.4}; App. C: one power iteration."""
    beta: float = 1.0
    power_iterations: int = 1

    # 2: spectral-norm vectors drawn from the run's seed (1: from the global RNG); 3: exact SVD settle
    cache_version = 3

    def __post_init__(self):
        check_real("NEFT beta", self.beta, 0, 1, low_open=True)
        check_int("NEFT power iterations", self.power_iterations, 1)


def normalised_layers(blocks: list[nn.Module]) -> list[nn.Module]:
    return [m for b in blocks for m in b.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def apply_neft(model: nn.Module, tuned_blocks: list[nn.Module], neft: NEFT) -> list[nn.Module]:
    """Parametrise the fine-tuned blocks in place; returns the normalised layers. Any backbone's
    residual blocks that carry a ``convex_sum`` flag (rtlkit's WRN blocks, torchvision's basic and
    bottleneck blocks: the sum before their last ReLU) become convex; a tuned block with a residual
    sum that cannot be made convex is an error rather than a silently expansive sum."""
    for b in tuned_blocks:
        for m in b.modules():
            check(not (hasattr(m, "downsample") or hasattr(m, "shortcut")) or hasattr(m, "convex_sum"),
                  f"NEFT: the residual block {type(m).__name__} has no convex_sum flag, so its sum (a + b) "
                  "cannot be made the convex (a + b) / 2 that NEFT needs")
    layers = normalised_layers(tuned_blocks)
    for m in layers:
        if parametrize.is_parametrized(m, "weight"):
            continue
        # what spectral_norm(m, "weight", n_power_iterations, dim=0) registers, in float32 under autocast
        parametrize.register_parametrization(m, "weight", SpectralNormFP32(m.weight, neft.power_iterations, dim=0))
        parametrize.register_parametrization(m, "weight", BetaScale(neft.beta))
    for b in tuned_blocks:
        for m in b.modules():
            if hasattr(m, "convex_sum"):
                m.convex_sum = True
    return layers


def largest_singular_value(layer: nn.Module) -> float:
    """sigma_max of the layer's effective weight flattened to C_out x (C_in*K*K)."""
    with torch.no_grad():
        w = layer.weight
        return float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).float(), ord=2))


def spectral_normed(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(layer, its spectral-norm parametrisation) for every layer :func:`apply_neft` normalised:
    those whose parametrisations end with our BetaScale, after torch's spectral norm."""
    out = []
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            chain = list(m.parametrizations["weight"])
            if len(chain) == 2 and isinstance(chain[1], BetaScale):
                out.append((m, chain[0]))
    return out


def settle(model: nn.Module) -> None:
    """Set each normalised layer's power-iteration vectors to the exact top singular pair of its
    weight (an SVD), so the saved model is non-expansive at exactly beta: sigma = u^T W v is then
    sigma_max(W). The last optimizer step moves W after the last training-step iteration, and one
    iteration per step converges slowly where the top singular values are close (a fresh, wide
    and short head). Training keeps the paper's one power iteration per step; this runs once,
    before saving, and changes no weight."""
    with torch.no_grad():
        for layer, sn in spectral_normed(model):
            w = layer.parametrizations["weight"].original
            mat = w.flatten(1).double() if sn.dim == 0 else torch.movedim(w, sn.dim, 0).flatten(1).double()
            u, _, vh = torch.linalg.svd(mat, full_matrices=False)
            sn._u.copy_(u[:, 0].to(sn._u.dtype))
            sn._v.copy_(vh[0].to(sn._v.dtype))
