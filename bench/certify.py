"""Randomized-smoothing certification throughput (issue 11): noisy samples per second through
``rtlkit.measure.smoothing.sample_counts`` beside the same model's plain forward rate.

    python -m bench.certify                          # WRN-28-4 at 32x32 (the issue's model), default device
    python -m bench.certify --samples 512 --images 2  # the CPU-sized run

Both rates use the model the same way (eval mode, no gradient, the Runtime's fast path on a GPU:
bf16, channels_last, compiled blocks); warm-up first, synchronise before reading the clock,
median of repeats. The ratio is the overhead of the noise, the counting and the batching across
images. Target (issue 11): >= 100,000 samples/s on one H100. JSON goes to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from rtlkit.core.models.wrn import WRNSpec
from rtlkit.core.models import build
from rtlkit.core.runtime import Runtime
from rtlkit.measure.smoothing import sample_counts


def _timed(fn, runtime: Runtime, repeats: int) -> float:
    fn()                                   # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        if runtime.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if runtime.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=28)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024, help="noisy samples per forward pass")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=10_000, help="noisy samples per image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    runtime = Runtime(device=a.device)
    torch.manual_seed(0)
    model = runtime.prepare(build(WRNSpec(a.depth, a.width), 10, 3, (0.5,), (0.25,))).eval()
    x = runtime.inputs(torch.rand(a.images, 3, a.size, a.size, device=runtime.device))
    batch = runtime.inputs(torch.rand(a.batch, 3, a.size, a.size, device=runtime.device))
    g = torch.Generator(device=runtime.device).manual_seed(0)

    def forward():
        with torch.no_grad(), runtime.autocast():
            model(batch).argmax(1)

    def certify():
        sample_counts(model, x, a.samples, 0.5, 10, a.batch, g, runtime.autocast)

    fwd_rate = a.batch / _timed(forward, runtime, a.repeats)
    cert_rate = a.images * a.samples / _timed(certify, runtime, a.repeats)
    out = {"model": f"wrn-{a.depth}-{a.width}", "input": f"3x{a.size}x{a.size}", "device": runtime.describe(),
           "torch": torch.__version__, "batch": a.batch, "images": a.images, "samples_per_image": a.samples,
           "forward_img_s": fwd_rate, "certify_samples_s": cert_rate, "certify_over_forward": cert_rate / fwd_rate}
    print(f"{out['model']} {out['input']} on {out['device']}: plain forward {fwd_rate:,.0f} img/s, "
          f"certification {cert_rate:,.0f} noisy samples/s ({cert_rate / fwd_rate:.2f} x forward)")
    folder = Path(__file__).resolve().parent / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"certify-{out['model']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
