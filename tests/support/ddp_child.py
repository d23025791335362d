"""A torchrun child for tests/core/test_distributed.py: train one small run (RTLKIT_RUNS) data-parallel,
or evaluate / certify the source run sharded over the ranks. RTLKIT_FAULT kills every rank at a
chosen step (rtlkit.core.io.fault_point).

    torchrun --nproc_per_node=2 tests/support/ddp_child.py source|neft|fdm|lwf|simclr|evaluate|certify|nt_xent
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rtlkit.core import distributed   # noqa: E402
from rtlkit.measure.attacks import APGD, PGD, FoolboxPGD   # noqa: E402
from rtlkit.train.methods.fdm import FDMTraining   # noqa: E402
from rtlkit.train.methods.lwf import LwFTraining   # noqa: E402
from rtlkit.train.methods.neft import NEFT   # noqa: E402
from rtlkit.train.methods.simclr import SimCLRTraining   # noqa: E402
from rtlkit.core.models.wrn import WRNSpec   # noqa: E402
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_certify, get_or_evaluate, get_or_train   # noqa: E402
from rtlkit.measure.smoothing import Smoothing   # noqa: E402
from rtlkit.core.runtime import Runtime   # noqa: E402
from rtlkit.train.loop import StandardTraining   # noqa: E402
from rtlkit.train.transfer import TransferPolicy   # noqa: E402


def source() -> SourceRun:
    # plain SGD-momentum with augmentation: no PGD random start, so one process and two agree in bits' reach
    return SourceRun(DataSpec("synthetic-a", train_n=128), WRNSpec(10, 1, stem_stride=2),
                     StandardTraining(epochs=3, lr=0.05, batch_size=32), 0)


# every attack that draws random numbers (PGD and foolbox from the global RNG, APGD its own seed)
ATTACKS = [PGD(eps=0.1, steps=3, step_size=0.04), FoolboxPGD(eps=0.5, steps=3, step_size=0.2, norm="l2"),
           APGD(eps=0.5, n_iter=3, n_restarts=1)]
SMOOTHING = Smoothing(sigma=0.25, n0=8, n=64, batch=50)


def evaluate(runtime=None):   # 5 batches of 16 (the last of 8): uneven over 2 ranks
    return get_or_evaluate(source(), ATTACKS, runtime, progress=False, batch_size=16, test_n=72)


def certify(runtime=None):    # 4 groups of 3 images (the last of 1)
    return get_or_certify(source(), SMOOTHING, 0.1, runtime, progress=False, test_n=10, images_per_call=3)


def run_of(kind: str):
    if kind == "source":
        return source()
    if kind == "fdm":   # PGD without a random start: the attack on a rank's rows is one process's on them
        return SourceRun(DataSpec("synthetic-a", train_n=128), WRNSpec(10, 1, stem_stride=2),
                         FDMTraining(epochs=2, lr=0.05, batch_size=32, lam=0.05, k=1,
                                     attack=PGD(eps=0.1, steps=2, step_size=0.05, random_start=False)), 0)
    if kind == "simclr":   # its NT-Xent gathers every rank's projections (with gradients)
        return SourceRun(DataSpec("synthetic-a", train_n=64), WRNSpec(10, 1, stem_stride=2),
                         SimCLRTraining(epochs=2, lr=0.05, batch_size=16), 0)
    if kind == "lwf":   # a warm epoch (head only), then the whole network: DDP is built again
        return TransferRun(source(), DataSpec("synthetic-b", train_n=64), TransferPolicy(k="all", bn_affine="freeze"),
                           LwFTraining(epochs=2, batch_size=16, lam_d=0.1, warm_fraction=0.5), 0)
    return TransferRun(source(), DataSpec("synthetic-b", train_n=64), TransferPolicy(k=3),
                       StandardTraining(epochs=2, lr=0.05, batch_size=16), 0, NEFT(0.6))


def nt_xent_check() -> None:
    """SimCLR's loss on 2 ranks (each with its rows r, r + W of the global batch, as the Loader
    deals them): DDP's average of the gradients, the loss and the count of correct partners must
    be one process's on the whole batch. Exits non-zero otherwise."""
    import torch
    from rtlkit.train.methods.simclr import SimCLRTraining, contrastive_loss, nt_xent
    torch.manual_seed(0)
    x1, x2, w = torch.randn(8, 5), torch.randn(8, 5), torch.randn(5, 4, requires_grad=True)
    whole, _ = nt_xent(x1 @ w, x2 @ w, 0.5)
    g_whole, = torch.autograd.grad(whole, w)
    r, n = distributed.rank(), distributed.world_size()
    loss, logits = contrastive_loss(x1[r::n] @ w, x2[r::n] @ w, 0.5)
    loss.backward()
    g = w.grad.clone()
    torch.distributed.all_reduce(g)
    mean_loss, correct = distributed.all_sum(loss.detach(), SimCLRTraining().correct(logits, None))
    sim = torch.nn.functional.normalize(torch.cat([x1 @ w, x2 @ w]), dim=1) @ \
        torch.nn.functional.normalize(torch.cat([x1 @ w, x2 @ w]), dim=1).T
    sim.fill_diagonal_(-2)
    right = int((sim[:8].argmax(1) == torch.arange(8, 16)).sum())
    ok = (torch.allclose(g / n, g_whole, atol=1e-6) and abs(float(mean_loss) / n - float(whole)) < 1e-6
          and int(correct) == right)
    if not ok:
        raise SystemExit(f"rank {r}: grad {(g / n - g_whole).abs().max():.3g}, loss {float(mean_loss) / n} vs "
                         f"{float(whole)}, correct {int(correct)} vs {right}")


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    distributed.init("cpu")
    for kind in sys.argv[1:]:
        if kind in ("evaluate", "certify"):
            globals()[kind](Runtime(device="cpu"))
        elif kind == "nt_xent":
            nt_xent_check()
        else:
            get_or_train(run_of(kind), Runtime(device="cpu"), progress=False)
    distributed.finish()
