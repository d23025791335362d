"""Transfer policies: which blocks fine-tune, what happens to BatchNorm, optional re-init.

CARTL Sec. 4 fine-tunes the last k blocks; Table 1 / Sec. 6 crosses the running statistics
of the frozen extractor (reused or updated on the target) with the BN affine W, b of the
fine-tuned part (trained or frozen); Shafahi Fig. 1 re-initialises the last k blocks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from rtlkit.core.errors import ConfigError, check, is_int
from rtlkit.core.models.backbone import Backbone, reinit_blocks
from rtlkit.train.methods.neft import apply_neft

BN_CASES = {  # CARTL Table 1, in the order of its rows and columns
    "update stats, train affine": ("update", "train"),
    "update stats, freeze affine": ("update", "freeze"),
    "reuse stats, train affine": ("reuse", "train"),
    "reuse stats, freeze affine": ("reuse", "freeze"),
}


@dataclass(frozen=True)
class TransferPolicy:
    """Fine-tune the last ``k`` blocks (an int, or "all").

    bn_stats:  running mean/var of BN in the frozen extractor: "reuse" the source's (those
               blocks run in eval mode) or "update" them on target batches (train mode).
    bn_affine: W, b of BN layers in the fine-tuned part: "train" or "freeze". BN affine in
               the frozen extractor is always frozen. CARTL App. C default: freeze.
    reinit:    re-initialise the fine-tuned blocks first (Shafahi Fig. 1).
    The classifier is always replaced by a fresh one for the target's classes.
    """
    k: int | str = "all"
    bn_stats: str = "reuse"
    bn_affine: str = "freeze"
    reinit: bool = False

    def __post_init__(self):
        check(self.k == "all" or (is_int(self.k) and self.k >= 1),
              f"k must be a positive number of blocks or 'all', not {self.k!r}")
        check(self.bn_stats in ("reuse", "update"), f"bn_stats must be 'reuse' or 'update', not {self.bn_stats!r}")
        check(self.bn_affine in ("train", "freeze"), f"bn_affine must be 'train' or 'freeze', not {self.bn_affine!r}")

    @classmethod
    def bn_case(cls, case: str, k: int | str, **kw) -> "TransferPolicy":
        if case not in BN_CASES:
            raise ConfigError(f"unknown BN case {case!r}; one of {list(BN_CASES)}")
        stats, affine = BN_CASES[case]
        return cls(k=k, bn_stats=stats, bn_affine=affine, **kw)

    @property
    def bn_label(self) -> str:
        return f"{self.bn_stats} stats, {self.bn_affine} affine"

    def check_model(self, n_blocks: int) -> int:
        """The number of fine-tuned blocks for a model of ``n_blocks`` blocks."""
        if self.k == "all":
            return n_blocks
        if self.k > n_blocks:
            raise ConfigError(f"k={self.k} but the model has only {n_blocks} blocks (k = 1..{n_blocks} or 'all')")
        return self.k

    def split(self, model: Backbone) -> tuple[list[nn.Module], list[nn.Module]]:
        """(frozen blocks, fine-tuned blocks)."""
        k = self.check_model(model.n_blocks)
        blocks = list(model.blocks)
        return blocks[:len(blocks) - k], blocks[len(blocks) - k:]

    def apply(self, model: Backbone) -> list[nn.Parameter]:
        """Set requires_grad per the policy; return the trainable parameters."""
        frozen, tuned = self.split(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for blk in tuned:
            for m in blk.modules():
                train_me = not (isinstance(m, nn.modules.batchnorm._BatchNorm) and self.bn_affine == "freeze")
                for p in m.parameters(recurse=False):
                    p.requires_grad_(train_me)
        return [p for p in model.parameters() if p.requires_grad]

    def set_modes(self, model: Backbone) -> None:
        """Training modes for a fine-tuning step: fine-tuned blocks train (their BN statistics
        always update: freezing them stops convergence, CARTL Sec. 6); the frozen extractor runs
        in eval mode when its statistics are reused."""
        model.train()
        if self.bn_stats == "reuse":
            for blk in self.split(model)[0]:
                blk.eval()


def prepare_target(source: Backbone, num_classes: int, policy: TransferPolicy, seed: int = 0,
                   neft=None) -> Backbone:
    """A copy of the source model ready for fine-tuning under ``policy``: new head, optional re-init,
    optional non-expansive parametrisation of the fine-tuned blocks (``neft``), requires_grad set."""
    model = copy.deepcopy(source)  # blocks compiled in place come out uncompiled (nn.Module drops it)
    policy.check_model(model.n_blocks)
    if policy.reinit:
        reinit_blocks(model, policy.split(model)[1], seed)
    model.replace_head(num_classes, seed)
    if neft is not None:
        with torch.random.fork_rng(devices=[]):   # spectral_norm draws u, v: from the run's seed, not
            torch.manual_seed(seed)               # whatever the global RNG holds after a source run
            apply_neft(model, policy.split(model)[1], neft)
    policy.apply(model)
    return model
