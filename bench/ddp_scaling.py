"""Data-parallel scaling of PGD-7 adversarial training (issue 15): images/s and efficiency from 1 to
N processes under torchrun, the global batch fixed (the method's batch_size), as `rtlkit.core.distributed`
trains. On GPUs: nccl, one process per GPU; on the CPU: gloo, a smoke figure only (processes share
the cores).

    python -m bench.ddp_scaling --model wrn-34-10 --procs 1 2 4 8          # a GPU node
    python -m bench.ddp_scaling --model wrn-10-1 --input 1x12x12 --procs 1 2 --steps 6   # the CPU smoke figure

Writes bench/results/ddp-<model>-<device>-<time>.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _worker(a) -> None:
    """One rank: time ``steps`` PGD-7 AT steps after ``warmup`` (rank 0 writes the result)."""
    import torch
    from rtlkit.core import distributed
    from rtlkit.measure.attacks import PGD
    from rtlkit.core.data import DatasetInfo, ImageData, Loader
    from rtlkit.core.models.wrn import WRNSpec
    from rtlkit.core.models import build
    from rtlkit.core.runtime import Runtime
    from rtlkit.train.loop import AdversarialTraining, make_optimizer, train_step

    cuda = torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    distributed.init(device)
    runtime = Runtime(device=device, compile=False)
    c, h, w = (int(v) for v in a.input.split("x"))
    depth, width = (int(v) for v in a.model.split("-")[1:3])
    torch.manual_seed(0)
    n = a.batch * (a.steps + a.warmup)
    data = ImageData((torch.rand(n, c, h, w) * 255).to(torch.uint8), torch.randint(0, a.classes, (n,)),
                     DatasetInfo("bench", tuple(str(i) for i in range(a.classes)), c, h, "cifar"))
    model = runtime.prepare(build(WRNSpec(depth, width, stem_stride=1 if h >= 32 else 2), a.classes, c, (0.5,), (0.25,)))
    eps = 8 / 255
    method = AdversarialTraining(batch_size=a.batch, attack=PGD(eps, 7, 2 / 255))
    opt = make_optimizer([p for p in model.parameters()], method, runtime)
    loader = Loader(data, a.batch, shuffle=True, drop_last=True, device=device, seed=0,
                    shard=distributed.world_size() > 1)
    model.train()
    parallel = distributed.DataParallel(model, model, method, runtime, None) if distributed.active() else None
    t0 = None
    for i, (x, y, idx) in enumerate(loader):
        if i == a.warmup:
            if cuda:
                torch.cuda.synchronize()
            distributed.barrier()
            t0 = time.perf_counter()
        train_step(method, model, model, opt, x, y, runtime, parallel=parallel)
    if cuda:
        torch.cuda.synchronize()
    distributed.barrier()
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        Path(a.result).write_text(json.dumps({"procs": distributed.world_size(), "seconds": seconds,
                                              "img_s": a.batch * a.steps / seconds,
                                              "numerics": runtime.numerics() or "fp32 eager (CPU)"}))
    distributed.finish()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wrn-34-10")
    ap.add_argument("--input", default="3x32x32")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256, help="the global batch (every process count)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(a)
        return 0
    import torch
    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name(0) if gpus else f"CPU ({os.cpu_count()} cores)"
    procs = [p for p in a.procs if not gpus or p <= gpus]
    rows = []
    for p in procs:
        result = Path(a.out) / f".ddp-{p}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={p}", "--standalone", "-m",
               "bench.ddp_scaling", "--worker", "--result", str(result), "--model", a.model, "--input", a.input,
               "--classes", str(a.classes), "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // p)) if not gpus else "1"}
        subprocess.run(cmd, check=True, env=env)
        rows.append(json.loads(result.read_text()))
        result.unlink()
    base = rows[0]["img_s"] / rows[0]["procs"]
    for r in rows:
        r["efficiency"] = r["img_s"] / (base * r["procs"])
    out = {"model": a.model, "input": a.input, "batch": a.batch, "steps": a.steps, "device": device,
           "torch": torch.__version__, "workload": "PGD-7 AT step (eps 8/255, step 2/255)", "numerics": rows[0]["numerics"], "rows": rows}
    path = Path(a.out) / f"ddp-{a.model}-{'gpu' if gpus else 'cpu'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"{a.model} {a.input}, global batch {a.batch}, {device}")
    print("| processes | images/s | efficiency |\n|---|---|---|")
    for r in rows:
        print(f"| {r['procs']} | {r['img_s']:.1f} | {r['efficiency']:.0%} |")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
