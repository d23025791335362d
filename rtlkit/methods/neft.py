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
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import check_int, check_real
from ..models import BasicBlock, WideResNet


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

    cache_version = 2   # 2: spectral-norm vectors drawn from the run's seed (1 drew from the global RNG)

    def __post_init__(self):
        check_real("NEFT beta", self.beta, 0, 1, low_open=True)
        check_int("NEFT power iterations", self.power_iterations, 1)


def normalised_layers(blocks: list[nn.Module]) -> list[nn.Module]:
    return [m for b in blocks for m in b.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def apply_neft(model: WideResNet, tuned_blocks: list[nn.Module], neft: NEFT) -> list[nn.Module]:
    """Parametrise the fine-tuned blocks in place; returns the normalised layers."""
    layers = normalised_layers(tuned_blocks)
    for m in layers:
        if parametrize.is_parametrized(m, "weight"):
            continue
        spectral_norm(m, "weight", n_power_iterations=neft.power_iterations, dim=0)
        parametrize.register_parametrization(m, "weight", BetaScale(neft.beta))
    for b in tuned_blocks:
        for m in b.modules():
            if isinstance(m, BasicBlock):
                m.convex_sum = True
    return layers


def largest_singular_value(layer: nn.Module) -> float:
    """sigma_max of the layer's effective weight flattened to C_out x (C_in*K*K)."""
    with torch.no_grad():
        w = layer.weight
        return float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).float(), ord=2))


def settle(model: nn.Module, iterations: int = 30) -> None:
    """Converge the power-iteration estimates for the final weights (no weight changes), so the
    saved model is non-expansive at exactly beta: the last optimizer step moves W after the last
    training-step iteration, and one iteration per step lags behind on short runs."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight") and any(
                type(p).__name__ == "_SpectralNorm" for p in m.parametrizations["weight"]):
            mode = m.training
            m.train()
            with torch.no_grad():
                for _ in range(iterations):
                    m.weight
            m.train(mode)
