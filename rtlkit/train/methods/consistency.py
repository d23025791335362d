"""Consistency regularisation for randomized smoothing (Jeong & Shin, NeurIPS 2020), and plain
Gaussian-noise training (Cohen et al. 2019) as its special case lam = eta = 0, m = 1.

loss = mean_i CE(f(x + sigma e_i), y) + lam * mean_i KL(p_hat || p_i) + eta * H(p_hat),
p_i = softmax(f(x + sigma e_i)), p_hat = mean_i p_i, e_i ~ N(0, I), i = 1..m; the noisy copies
are not clipped (sigma in [0,1] pixel units, as certification uses them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rtlkit.core.errors import check_int, check_real
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining


def consistency_loss(logits: torch.Tensor, y: torch.Tensor, lam: float, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the m copies, lam * mean KL(p_hat || p_i) + eta * H(p_hat)) for
    logits of shape (m, B, C), in float32; both terms are means over the batch."""
    logits = logits.float()
    m = logits.shape[0]
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(m))
    logp = logits.log_softmax(-1)                       # (m, B, C)
    p_hat = logp.exp().mean(0)                          # (B, C)
    log_p_hat = p_hat.clamp_min(1e-12).log()
    kl = (p_hat * (log_p_hat - logp)).sum(-1).mean()    # mean over copies and batch
    entropy = -(p_hat * log_p_hat).sum(-1).mean()
    return ce, lam * kl + eta * entropy


@dataclass(frozen=True)
class ConsistencyTraining(StandardTraining):
    """Vaishnavi et al. Sec. 4.1 (Jeong & Shin's settings): sigma 0.5, m = 2 noisy copies,
    lam = 5, eta = 0.5. ``batch_size`` counts images; each step runs one forward pass over
    m x batch_size noisy copies."""
    sigma: float = 0.5
    m: int = 2
    lam: float = 5.0
    eta: float = 0.5

    kind = "consistency"

    def __post_init__(self):
        super().__post_init__()
        check_real("noise sigma", self.sigma, 0, low_open=True)
        check_int("noisy copies m", self.m, 1)
        check_real("consistency lam", self.lam, 0)
        check_real("consistency eta", self.eta, 0)

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        noisy = x.repeat(self.m, *([1] * (x.ndim - 1)))
        noisy = runtime.inputs(noisy + self.sigma * torch.randn_like(noisy))   # the loop seeds each epoch
        with runtime.autocast():
            logits = fwd(noisy).view(self.m, len(x), -1)
        ce, reg = consistency_loss(logits, y, self.lam, self.eta)
        return ce + reg, logits[0]


def gaussian_training(sigma: float = 0.5, **kw) -> ConsistencyTraining:
    """Cohen et al.'s Gaussian data augmentation: one noisy copy, no consistency term."""
    return ConsistencyTraining(sigma=sigma, m=1, lam=0.0, eta=0.0, **kw)


def clipped_noise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Provably Robust Transfer Sec. 4's training noise for ``x``: e ~ N(0, I) per image, scaled
    down to L2 norm eps where it is longer (e * min(1, eps / ||e||_2)), so ||e||_2 <= eps always."""
    e = torch.randn_like(x, dtype=torch.float32)
    norm = e.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (e * (eps / norm).clamp(max=1.0).view(-1, *([1] * (x.ndim - 1)))).to(x.dtype)


@dataclass(frozen=True)
class ClippedNoiseTraining(StandardTraining):
    """Provably Robust Transfer Sec. 4, mode "noise": train on x + e, with e ~ N(0, I) clipped to
    L2 <= eps (:func:`clipped_noise`; eps = 0.1 in [0,1] pixels, App. A.1). In 784 dimensions
    ||e|| is about 28, so e is in effect a random direction of length eps."""
    eps: float = 0.1

    kind = "clipped-noise"

    def __post_init__(self):
        super().__post_init__()
        check_real("noise eps", self.eps, 0, low_open=True)

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        with runtime.autocast():
            logits = fwd(runtime.inputs(x + clipped_noise(x, self.eps)))   # the loop seeds each epoch
        return F.cross_entropy(logits.float(), y), logits
