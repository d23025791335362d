"""SimCLR pre-training (Chen et al., ICML 2020): two augmented views of each image, a projection
head, and the NT-Xent contrastive loss.

Vaishnavi et al. use public SimCLR weights and give no settings; rtlkit takes Chen et al.'s
CIFAR-10 ones (App. B.9), labelled so: temperature 0.5; a 2-layer MLP projection head to 128-d;
views by random resized crop (scale 0.08-1, aspect 3/4-4/3) and horizontal flip, plus, on
3-channel data only, colour jitter of strength 0.5 (p = 0.8; brightness, contrast, saturation;
hue is left out) and random grey (p = 0.2). Views are made on the device, a whole batch at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rtlkit.core.errors import check_int, check_real
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining
from rtlkit.core import distributed


def nt_xent_logits(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2N, 2N) cosine-similarity / tau logits of the 2N views (self-pairs masked out) and
    each view's partner index, in float32."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    sim = (z @ z.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return sim, target


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(NT-Xent loss, positive-pair top-1 accuracy) for projections z1, z2 of shape (N, D): each of
    the 2N views must pick its partner among the other 2N - 1 by cosine similarity / tau."""
    sim, target = nt_xent_logits(z1, z2, tau)
    return F.cross_entropy(sim, target), (sim.argmax(1) == target).float().mean()


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's training loss on a batch's projections: the NT-Xent, and the first views' logits
    with each one's partner at column n + i (:meth:`SimCLRTraining.correct`). Under torchrun the
    negatives are the global batch's (every rank's projections gathered, with gradients) and the
    loss is the mean over this rank's own 2n views, so DDP's average of the gradients is one
    process's on the same global batch."""
    if not distributed.active():
        sim, target = nt_xent_logits(z1, z2, tau)
        return F.cross_entropy(sim, target), sim[:len(z1)]
    n, big = len(z1), distributed.world_size() * len(z1)
    sim, target = nt_xent_logits(distributed.all_gather_rows(z1), distributed.all_gather_rows(z2), tau)
    first = torch.arange(n, device=sim.device) + distributed.rank() * n
    mine = torch.cat([first, first + big])              # this rank's views among the 2N
    rest = torch.ones(2 * big, dtype=torch.bool, device=sim.device)
    rest[mine] = False
    cols = torch.cat([mine, rest.nonzero().squeeze(1)])  # own views first: partner of i at n + i
    return F.cross_entropy(sim[mine], target[mine]), sim[first][:, cols]


def random_resized_crop(x: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """A random resized crop (and h-flip) of every image of a (B, C, H, W) batch, by one affine
    grid sample: the crop covers a random share of the area in ``scale`` with an aspect ratio in
    ``ratio``, resized back to H x W."""
    b, dev = len(x), x.device
    area = torch.empty(b, device=dev).uniform_(*scale)
    logr = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    sw = (area * logr.exp()).sqrt().clamp(max=1.0)          # crop width and height as shares of the image
    sh = (area / logr.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - sw)      # centre, keeping the crop inside
    cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - sh)
    sx = sw * torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0) if flip else sw
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_distort(x: torch.Tensor, strength: float = 0.5, p_jitter: float = 0.8, p_grey: float = 0.2) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation by factors in 1 +- 0.8 * strength) with
    probability ``p_jitter`` and greyscale with ``p_grey``, per image; for 3-channel batches."""
    b, dev = len(x), x.device
    s = 0.8 * strength
    f = lambda: torch.empty(b, 1, 1, 1, device=dev).uniform_(1 - s, 1 + s)   # noqa: E731
    j = x * f()                                                              # brightness
    j = (j - j.mean((1, 2, 3), keepdim=True)) * f() + j.mean((1, 2, 3), keepdim=True)   # contrast
    g = 0.299 * j[:, 0:1] + 0.587 * j[:, 1:2] + 0.114 * j[:, 2:3]
    j = (j - g) * f() + g                                                    # saturation
    x = torch.where(torch.rand(b, 1, 1, 1, device=dev) < p_jitter, j, x)
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = torch.where(torch.rand(b, 1, 1, 1, device=dev) < p_grey, grey.expand_as(x), x)
    return x.clamp(0, 1)


@dataclass(frozen=True)
class SimCLRTraining(StandardTraining):
    """Chen et al. App. B.9's CIFAR-10 settings (Vaishnavi et al. give none): tau 0.5, a 128-d
    projection head; SGD as rtlkit's other methods (Chen et al. use LARS at batch 4,096, which a
    2-core CPU cannot). ``batch_size`` counts images; each step forwards 2 x batch_size views.
    The loader's own augmentation is off: the views replace it. train_acc in the history is the
    positive-pair top-1 accuracy, not the labels'."""
    tau: float = 0.5
    proj_dim: int = 128
    augment: bool = False

    kind = "simclr"

    def __post_init__(self):
        super().__post_init__()
        check_real("SimCLR temperature", self.tau, 0, low_open=True)
        check_int("SimCLR projection dim", self.proj_dim, 1)

    def prepare_model(self, model):
        return model.add_projection(self.proj_dim)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        v = random_resized_crop(x)
        return colour_distort(v) if x.shape[1] == 3 else v

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        both = runtime.inputs(torch.cat([self.views(x), self.views(x)]))   # the loop seeds each epoch
        with runtime.autocast():
            z = model.projection(model.penultimate(both))
        return contrastive_loss(z[:len(x)], z[len(x):], self.tau)

    def correct(self, logits, y) -> torch.Tensor:
        """Views of the first half that pick their partner (index + batch) among the others."""
        n = len(logits)
        return (logits.argmax(1) == torch.arange(n, 2 * n, device=logits.device)).sum()
