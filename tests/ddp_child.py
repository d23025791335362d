"""A torchrun child for tests/test_distributed.py: train one small run (RTLKIT_RUNS) data-parallel.
RTLKIT_FAULT kills every rank at a chosen step (rtlkit.io.fault_point).

    torchrun --nproc_per_node=2 tests/ddp_child.py source|neft
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rtlkit import distributed                             # noqa: E402
from rtlkit.methods.neft import NEFT                       # noqa: E402
from rtlkit.models import WRNSpec                          # noqa: E402
from rtlkit.runs import DataSpec, SourceRun, TransferRun, get_or_train  # noqa: E402
from rtlkit.runtime import Runtime                         # noqa: E402
from rtlkit.training import StandardTraining               # noqa: E402
from rtlkit.transfer import TransferPolicy                 # noqa: E402


def source() -> SourceRun:
    # plain SGD-momentum with augmentation: no PGD random start, so one process and two agree in bits' reach
    return SourceRun(DataSpec("synthetic-a", train_n=128), WRNSpec(10, 1, stem_stride=2),
                     StandardTraining(epochs=3, lr=0.05, batch_size=32), 0)


def run_of(kind: str):
    if kind == "source":
        return source()
    return TransferRun(source(), DataSpec("synthetic-b", train_n=64), TransferPolicy(k=3),
                       StandardTraining(epochs=2, lr=0.05, batch_size=16), 0, NEFT(0.6))


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    distributed.init("cpu")
    for kind in sys.argv[1:]:
        get_or_train(run_of(kind), Runtime(device="cpu"), progress=False)
    distributed.barrier()
