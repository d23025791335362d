"""SmoothAdv (Salman et al., NeurIPS 2019): adversarial training of the *soft* smoothed classifier,
Provably Robust Transfer's "adv-s" feature extractor (Sec. 5, App. A.1).

For each batch, m noise draws e_1..e_m ~ sigma N(0, I) are fixed; L2 PGD maximises the soft smoothed
classifier's loss -log((1/m) sum_i softmax(f(x' + e_i))_y) over ||x' - x||_2 <= eps; the model then
trains by cross-entropy on x' + e_i. With eps = 0 this is Gaussian-noise training on the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rtlkit.measure.attacks import PGD, attack_mode
from rtlkit.core.errors import check, check_int, check_real
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining


def _adv_s_attack() -> PGD:
    return PGD(eps=0.1, steps=10, step_size=0.025, norm="l2")


@dataclass(frozen=True)
class SmoothAdvTraining(StandardTraining):
    """Provably Robust Transfer App. A.1's adv-s: m = 1 draw, sigma = 0.1, L2 PGD at eps = 0.1 with
    adv's 10 steps (step 2.5 eps / 10). Noise is in [0,1] pixels, unclipped, as certification uses it."""
    sigma: float = 0.1
    m: int = 1
    attack: PGD = field(default_factory=_adv_s_attack)

    kind = "smoothadv"

    def __post_init__(self):
        super().__post_init__()
        check_real("SmoothAdv sigma", self.sigma, 0, low_open=True)
        check_int("SmoothAdv noise draws m", self.m, 1)
        check(isinstance(self.attack, PGD) and self.attack.norm == "l2",
              f"SmoothAdv attacks in L2 with rtlkit's PGD, not {self.attack!r}")

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        noise = self.sigma * torch.randn((self.m,) + tuple(x.shape), device=x.device, dtype=x.dtype)  # drawn first

        def soft_log_probs(z):   # log of the soft smoothed classifier's class probabilities
            logits = fwd((z[None] + noise).flatten(0, 1)).float().view(self.m, len(z), -1)
            return logits.softmax(-1).mean(0).clamp_min(1e-12).log()

        with attack_mode(model):
            x_adv = self.attack.perturb(soft_log_probs, x, y, runtime.autocast, worst=False)
        noisy = runtime.inputs((x_adv[None] + noise).flatten(0, 1))
        with runtime.autocast():
            logits = fwd(noisy)
        return F.cross_entropy(logits.float(), y.repeat(self.m)), logits[:len(x)]
