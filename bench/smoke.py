"""The GPU smoke stage: every GPU code path once, in a few minutes, before any benchmark.

    bench/device.sh smoke          # on a GPU: the fast path (bf16, channels_last, inductor per block)
    bench/device.sh smoke --dry    # on the CPU, the same phases with the aot_eager backend (CI runs it)

On random 3 x 32 x 32 images and a WRN-10-2 it runs one step each of PGD-7 AT, FDM and NEFT fine-tuning on the
fast path against the same step in eager fp32 (TF32 off); ``evaluate`` with PGD-CE, PGD-CW,
foolbox's PGD, APGD-CE L2, APGD-T and Square L2 on 64 images; ``certify`` with N = 2,000; and, where
two GPUs exist (always in the dry run, on gloo), a two-rank ``all_sum`` of the epoch-end totals and
a synced-BN training step. Each phase prints its compiled-graph count against a stated bound, its
peak memory and its wall time. The exit status is non-zero on any crash, on a graph count beyond
its bound, or on a fast-path loss off the fp32 one by more than ``LOSS_TOL``.

The bounds: a compiled block meets a fixed set of batch sizes (``runtime.batch_bucket``: the
powers of two from 16) in a fixed set of modes, so a phase compiles at most
``blocks x buckets x modes`` graphs, whatever its survivor counts and tails.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import torch

from rtlkit.measure.attacks import APGD, APGDT, PGD, FoolboxPGD, Square
from rtlkit.core.data import DatasetInfo, ImageData
from rtlkit.measure.evaluate import evaluate
from rtlkit.train.methods.fdm import FDMTraining
from rtlkit.train.methods.neft import NEFT
from rtlkit.core.models import build, parse_spec
from rtlkit.core.runtime import Runtime, batch_bucket, seed_all, strict_fp32
from rtlkit.measure.smoothing import Smoothing, certify
from rtlkit.train.loop import AdversarialTraining, StandardTraining, make_optimizer, train_step
from rtlkit.train.transfer import TransferPolicy, prepare_target

LOSS_TOL = 0.05        # a step's loss, fast path against eager fp32: relative
SHAPE, CLASSES = (3, 32, 32), 10


def settings(dry: bool) -> dict:
    """The stage's sizes: the GPU's, or the dry run's (a tiny model, few iterations)."""
    if dry:
        return dict(model="wrn-10-1-s2", batch=32, eval_n=64, eval_batch=64, apgd_iters=3, square=20,
                    cert_n=200, cert_images=4, cert_batch=256)
    # a small WRN (5 blocks): every path once, with few inductor compiles (the throughput stages time WRN-34-10)
    return dict(model="wrn-10-2", batch=128, eval_n=64, eval_batch=64, apgd_iters=100, square=1000,
                cert_n=2000, cert_images=8, cert_batch=4096)


def random_data(n: int, seed: int) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return ImageData(x, y, DatasetInfo("smoke-random", tuple(map(str, range(CLASSES))), SHAPE[0], SHAPE[1], "cifar"))


def graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def peak_reset(rt: Runtime) -> None:
    if rt.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(rt: Runtime) -> float:
    if rt.is_cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # the process's, KiB -> GiB


def step_loss(method, model, rt: Runtime, x, y, policy=None) -> float:
    """One training step's loss (the method's attack included), from seed 0."""
    model = rt.prepare(model)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], method, rt)
    policy.set_modes(model) if policy is not None else model.train()
    seed_all(0)
    return float(train_step(method, model, rt.compiled(model), opt, x.to(rt.device), y.to(rt.device), rt)[0])


def phases(s: dict, fast: Runtime) -> list[tuple[str, object, int]]:
    """(name, run() -> detail, graph bound) for each phase."""
    spec = parse_spec(s["model"])
    n_blocks = spec.n_blocks
    eps = 8 / 255
    eager = Runtime(fast.device, amp=False, channels_last=False, compile=False)

    def source(seed=0):
        seed_all(seed)
        return build(spec, CLASSES, SHAPE[0], (0.5,) * 3, (0.25,) * 3)

    batch = random_data(s["batch"], 1)
    x, y = batch.x.float().div(255), batch.y
    at = AdversarialTraining(batch_size=s["batch"], attack=PGD(eps, 7, eps / 4))
    fdm = FDMTraining(batch_size=s["batch"], attack=at.attack, k=2)
    policy = TransferPolicy(k=2)

    def training(method, make, pol=None):
        def run():
            f = step_loss(method, make(), fast, x, y, pol)
            with strict_fp32():
                e = step_loss(method, make(), eager, x, y, pol)
            gap = abs(f - e) / max(abs(e), 1e-6)
            if not gap <= LOSS_TOL:
                raise AssertionError(f"fast-path loss {f:.5f} vs eager fp32 {e:.5f}: {gap:.1%} apart (tolerance {LOSS_TOL:.0%})")
            return f"loss fast {f:.4f}, eager fp32 {e:.4f} ({gap:.2%} apart)"
        return run

    def neft_target():
        return prepare_target(source(), CLASSES, policy, seed=1, neft=NEFT(0.6))

    test = random_data(s["eval_n"], 2)
    attacks = [PGD(eps, 10, eps / 4), PGD(eps, 10, eps / 4, loss="cw"), FoolboxPGD(eps, 10, eps / 4),
               APGD(eps=0.5, n_iter=s["apgd_iters"], n_restarts=1, norm="l2"),
               APGDT(eps=eps, n_iter=s["apgd_iters"], n_target_classes=3),
               Square(eps=0.5, n_queries=s["square"], norm="l2")]

    def evaluation():
        model = fast.prepare(source()).eval()
        with torch.no_grad(), fast.autocast():   # labelled by the model itself: every attack attacks every image
            own = model(fast.inputs(test.x.float().div(255).to(fast.device))).argmax(1).cpu()
        r = evaluate(model, ImageData(test.x, own, test.info), attacks, fast, batch_size=s["eval_batch"],
                     progress=False)
        return f"clean {r.clean_acc:.3f}, " + ", ".join(f"{k.split(' eps')[0]} {v:.3f}" for k, v in r.per_attack.items())

    sm = Smoothing(sigma=0.25, n0=100, n=s["cert_n"], batch=s["cert_batch"])

    def certification():
        model = fast.prepare(source()).eval()
        xs = fast.inputs(test.x[:s["cert_images"]].float().div(255).to(fast.device))
        c = certify(model, xs, sm, CLASSES, fast.autocast)
        return f"{len(c['predict'])} images, {int((c['predict'] >= 0).sum())} certified, N = {sm.n}"

    evb = len({batch_bucket(n) for n in range(1, s["eval_batch"] + 1)})   # survivors: every size up to the batch
    total = s["cert_images"] * sm.n
    certb = len({batch_bucket(min(sm.batch, total)), batch_bucket(total % sm.batch or sm.batch),
                 batch_bucket(min(sm.batch, s["cert_images"] * sm.n0))})
    return [
        # training: the attack (eval, input gradient) and the step (train) at one batch size
        ("PGD-7 AT step", training(at, source), n_blocks * 2),
        ("FDM step", training(fdm, source), n_blocks * 4),   # + the clean forward with BN statistics thrown away
        ("NEFT fine-tuning step", training(StandardTraining(batch_size=s["batch"]), neft_target, policy),
         n_blocks * 3),   # frozen (eval), tuned and parametrised, the new head
        # evaluate: clean and adversarial predictions (no grad) and the attacks (input gradient), each at
        # the buckets up to the batch; foolbox and pyautoattack call the same compiled blocks
        ("evaluate (PGD-CE/CW, foolbox, APGD-L2, APGD-T, Square-L2)", evaluation, n_blocks * evb * 2),
        ("certify", certification, n_blocks * certb),
    ]


def two_ranks(dry: bool) -> str:
    """torchrun-free two-rank check: each rank sums the epoch-end totals (values on its device and a
    CPU count) and takes one synced-BN AT step through DDP with compiled blocks."""
    import subprocess
    import tempfile
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "WORLD_SIZE": "2"}
    out = Path(tempfile.mkdtemp(prefix="rtlkit-smoke-"))
    procs = [subprocess.Popen([sys.executable, "-m", "bench.smoke", "--rank-child", str(r), "--child-out", str(out)]
                              + (["--dry"] if dry else []), env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    codes = [p.wait(timeout=540) for p in procs]
    if any(codes):
        raise RuntimeError(f"two-rank check: exit codes {codes}")
    res = [json.loads((out / f"{r}.json").read_text()) for r in range(2)]
    if res[0] != res[1]:
        raise AssertionError(f"the ranks disagree: {res}")
    return f"all_sum {res[0]['sums']} on both ranks; synced-BN AT step loss {res[0]['loss']:.4f} (rank 0)"


def rank_child(rank: int, out: Path, dry: bool) -> int:
    from rtlkit.core import distributed
    device = "cpu" if dry else f"cuda:{rank}"
    rt = Runtime(device, compile=True, compile_backend="aot_eager") if dry else Runtime(device)
    distributed.init(rt.device)
    dev = torch.device(device)
    sums = distributed.all_sum(torch.tensor(2.0 * (rank + 1), device=dev), torch.tensor(3.0, device=dev),
                               torch.tensor(float(10 + rank)))   # the count made on the CPU, as training did
    s = settings(dry)
    seed_all(0)
    model = rt.prepare(build(parse_spec(s["model"]), CLASSES, SHAPE[0], (0.5,) * 3, (0.25,) * 3))
    distributed.convert_sync_bn(model, rt.device)
    method = AdversarialTraining(batch_size=s["batch"], attack=PGD(8 / 255, 2, 2 / 255))
    opt = make_optimizer(list(model.parameters()), method, rt)
    data = random_data(2 * s["batch"], 3)
    x = distributed.shard(data.x[:s["batch"]].float().div(255)).to(dev)
    y = distributed.shard(data.y[:s["batch"]]).to(dev)
    model.train()
    par = distributed.DataParallel(model, rt.compiled(model), method, rt, None)
    loss = train_step(method, model, rt.compiled(model), opt, x, y, rt, parallel=par)[0]
    loss = float(distributed.all_sum(loss)[0]) / 2
    (out / f"{rank}.json").write_text(json.dumps({"sums": [float(v) for v in sums], "loss": round(loss, 6)}))
    distributed.finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="on the CPU: the fast path with the aot_eager backend, tiny sizes")
    ap.add_argument("--out", default=None, help="folder for smoke.json (default: none written)")
    ap.add_argument("--rank-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rank_child is not None:
        return rank_child(a.rank_child, Path(a.child_out), a.dry)
    if not a.dry and not torch.cuda.is_available():
        print("bench.smoke: no GPU here; the CPU check is `bench/device.sh smoke --dry`", file=sys.stderr)
        return 2
    s = settings(a.dry)
    torch.set_num_threads(min(torch.get_num_threads(), 4))   # tiny tensors: more threads only contend
    fast = (Runtime("cpu", amp=True, channels_last=True, compile=True, compile_backend="aot_eager") if a.dry
            else Runtime("cuda"))
    print(f"rtlkit smoke ({'dry, CPU' if a.dry else 'GPU'}): {fast.describe()}, {s['model']}, torch {torch.__version__}",
          flush=True)
    rows, failed, t_all = [], False, time.time()
    todo = phases(s, fast)
    if a.dry or torch.cuda.device_count() >= 2:
        todo.append(("two ranks: all_sum + synced-BN AT step", lambda: two_ranks(a.dry), None))
    for name, run, bound in todo:
        peak_reset(fast)
        g0, t0 = graphs(), time.time()
        try:
            detail, ok = run(), True
        except Exception as e:   # every phase runs; the exit status reports each failure
            traceback.print_exc()
            detail, ok = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", False
        n = graphs() - g0
        if bound is not None and n > bound:
            ok, detail = False, f"{detail}; {n} graphs exceed the bound {bound}"
        row = {"phase": name, "ok": ok, "graphs": n, "bound": bound, "seconds": round(time.time() - t0, 2),
               "peak_gib": round(peak_gib(fast), 3), "detail": detail}
        rows.append(row)
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {n} graphs (bound {bound if bound is not None else '-'}), "
              f"{row['seconds']:.1f} s, peak {row['peak_gib']:.2f} GiB; {detail}", flush=True)
    print(f"smoke: {'FAILED' if failed else 'passed'} in {time.time() - t_all:.0f} s", flush=True)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "smoke.json").write_text(json.dumps({"device": fast.describe(), "dry": a.dry, "phases": rows,
                                                            "torch": torch.__version__}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
