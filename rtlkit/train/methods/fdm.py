"""Feature-distance minimisation while adversarially training the source (CARTL Sec. 5.1, Eq. 10).

loss = L_AT + lambda / sqrt(d) * sum_batch || f^(L-k)(x) - f^(L-k)(x_adv) ||_2

f^(L-k) is the output of the first L-k blocks (the part a transfer with this k freezes), d the
number of its elements per example, x_adv the PGD example of the AT loss. The sum runs over the
batch, not a mean, as in the paper and the authors' code: lambda's scale depends on the batch
size (CARTL's 0.01 / 0.005 are for batch 128).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rtlkit.core import distributed
from rtlkit.core.errors import check
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import AdversarialTraining


def fdm_penalty(f_clean: torch.Tensor, f_adv: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda / sqrt(d) * sum over the batch of the per-example L2 distance."""
    diff = (f_clean.float() - f_adv.float()).flatten(1)
    return lam / diff.shape[1] ** 0.5 * diff.norm(dim=1).sum()


@dataclass(frozen=True)
class FDMTraining(AdversarialTraining):
    """CARTL: lambda in {0.01, 0.005} (Table 2); k is the number of blocks transfer will fine-tune."""
    lam: float = 0.01
    k: int = 4

    kind = "fdm"

    def __post_init__(self):
        super().__post_init__()
        check(self.lam >= 0, f"FDM lambda must be >= 0, not {self.lam}")
        check(isinstance(self.k, int) and self.k >= 1, f"FDM k must be a positive number of blocks, not {self.k!r}")

    def check_model(self, n_blocks: int) -> None:
        check(self.k < n_blocks, f"FDM k={self.k} leaves no frozen part in a model of {n_blocks} blocks (k = 1..{n_blocks - 1})")

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        if self.lam == 0:
            return super().batch_loss(model, fwd, x, y, runtime)
        n_first = model.n_blocks - self.k
        x_adv = self.adversarial(model, fwd, x, y, runtime)
        with runtime.autocast():
            h_adv = model.features(x_adv, n_first)
            logits = model.forward_from(h_adv, n_first)
            # The clean forward uses batch statistics like the adversarial forward it is compared
            # with, but leaves the running statistics those of the adversarial data (plain AT):
            # it updates throw-away copies. (Not momentum 0, which would be a new compiled graph;
            # not a copy back, which would modify tensors autograd saved for the backward.)
            bns = [m for m in model.blocks[:n_first].modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
            kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in bns]
            for m in bns:
                m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
                m.num_batches_tracked = m.num_batches_tracked.clone()
            try:
                h_clean = model.features(x, n_first)
            finally:
                for m, (mean, var, nbt) in zip(bns, kept):
                    m.running_mean, m.running_var, m.num_batches_tracked = mean, var, nbt
        # The penalty sums over the batch; under torchrun each rank sums its shard and DDP averages
        # the ranks' gradients, so x W gives the global batch's sum (one process's loss)
        loss = F.cross_entropy(logits.float(), y) + fdm_penalty(h_clean, h_adv, self.lam) * distributed.world_size()
        return loss, logits
