"""A child process for tests/runs/test_reliability.py: train and evaluate one small run of each kind
(source, plain fine-tune, NEFT fine-tune, LwF fine-tune) in the cache that RTLKIT_RUNS names,
and print the metrics as JSON. RTLKIT_FAULT kills it at a chosen point (rtlkit.core.io.fault_point);
RTLKIT_TRAIN_LOG, if set, gets one line per training actually run (not loaded from the cache).

    python tests/support/fault_child.py source|plain|neft|lwf [...]
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rtlkit.runs import cache as runs   # noqa: E402
from rtlkit.measure.attacks import PGD   # noqa: E402
from rtlkit.train.methods.lwf import LwFTraining   # noqa: E402
from rtlkit.core.models.wrn import WRNSpec   # noqa: E402
from rtlkit.train.methods.neft import NEFT   # noqa: E402
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun   # noqa: E402
from rtlkit.core.runtime import Runtime, configure_threads   # noqa: E402
from rtlkit.train.loop import AdversarialTraining, StandardTraining   # noqa: E402
from rtlkit.train.transfer import TransferPolicy   # noqa: E402

KINDS = ("source", "plain", "neft", "lwf")
ATTACKS = [PGD(0.1, 2, 0.05)]
TEST_N = 64


def source() -> SourceRun:
    return SourceRun(DataSpec("synthetic-a", train_n=128), WRNSpec(10, 1, stem_stride=2),
                     AdversarialTraining(epochs=2, lr=0.05, batch_size=32, attack=PGD(0.1, 2, 0.05)), 0)


def run_of(kind: str):
    """Each run: 2 epochs of 3-4 steps."""
    if kind == "source":
        return source()
    target = DataSpec("synthetic-b", train_n=96)
    plain = StandardTraining(epochs=2, lr=0.05, batch_size=32)
    if kind == "plain":
        return TransferRun(source(), target, TransferPolicy(k=2), plain, 1)
    if kind == "neft":
        return TransferRun(source(), target, TransferPolicy(k=2), plain, 1, NEFT(0.5))
    if kind == "lwf":
        return TransferRun(source(), target, TransferPolicy(k="all", bn_affine="freeze"),
                           LwFTraining(epochs=2, batch_size=32, lam_d=0.1), 1)
    raise SystemExit(f"unknown kind {kind}")


def main(kinds: list[str]) -> None:
    configure_threads()   # RTLKIT_THREADS=1 from the test: the same bits as the reference
    log = os.environ.get("RTLKIT_TRAIN_LOG")
    if log:
        real = runs.train

        def logged(*a, **k):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            return real(*a, **k)
        runs.train = logged
    out = {}
    for kind in kinds:
        m = runs.get_or_evaluate(run_of(kind), ATTACKS, Runtime("cpu"), progress=False, test_n=TEST_N)
        out[kind] = {k: v for k, v in m.items() if k.startswith(("clean_acc", "robust_acc"))}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
