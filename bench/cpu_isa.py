"""What the pinned CPU mode costs: the `quick` profile's workloads (PGD-5 AT of its WRN-16-1-s2
source, fine-tuning k = all, PGD-20 evaluation) in images per second, unpinned (the host's own
ISA) against RTLKIT_CPU_ISA=avx2, each mode in a fresh process (the libraries read the pin at
their first kernel), on the same weights and batches.

    python -m bench.cpu_isa                  # 2 threads, 3 repeats per mode, interleaved
    python -m bench.cpu_isa --repeats 5 --threads 2
    python -m bench.cpu_isa --modes native avx2 avx2-compat portable
    python -m bench.cpu_isa --fingerprint    # the pinned smoke source's weight hash on this CPU, against
                                             # every CPU in bench/reference/cpu-fingerprints.json (--record adds it)
    python -m bench.cpu_isa --fingerprint --mode portable --record
    python -m bench.cpu_isa --fingerprint --emulate EPYC-Milan   # the same child on an emulated CPU
                                             # (qemu-user, Debian's qemu-user): another vendor's bits on this host

Results go to bench/results/cpu-isa-*.json; the table to paste into BENCHMARKS.md is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from rtlkit.core.runtime import CPU_LIB_VARS

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time, torch
from rtlkit.core.runtime import Runtime, cpu_record, pin_cpu_isa, seed_all
pin_cpu_isa()
torch.set_num_threads(int(sys.argv[1]))
from rtlkit.measure.attacks import PGD
from rtlkit.measure.evaluate import evaluate
from rtlkit.core.models import WRNSpec, build
from rtlkit.core.data import DatasetInfo, ImageData
from rtlkit.train.loop import AdversarialTraining, StandardTraining, make_optimizer, train_step
rt = Runtime("cpu")
seed_all(0)
model = build(WRNSpec(16, 1, stem_stride=2), 10, 1, (0.5,), (0.25,))
x = torch.rand(128, 1, 28, 28); y = torch.randint(0, 10, (128,))
eps = 0.1
at = AdversarialTraining(attack=PGD(eps, 5, 0.05)); ft = StandardTraining()
out = {}
def rate(fn, n, steps=8):
    fn(); t = time.perf_counter()
    for _ in range(steps):
        fn()
    return n * steps / (time.perf_counter() - t)
for name, method in (("PGD-5 AT (source)", at), ("fine-tune k=all", ft)):
    opt = make_optimizer(model.parameters(), method, rt)
    out[name] = rate(lambda: train_step(method, model, model, opt, x, y, rt), 128)
data = ImageData((x[:64] * 255).to(torch.uint8), y[:64], DatasetInfo("bench", tuple(map(str, range(10))), 1, 28, "mnist"))
out["PGD-20 eval"] = rate(lambda: evaluate(model, data, [PGD(eps, 20, 0.025)], rt, 64, False), 64, 3)
print(json.dumps({"img_s": out, **cpu_record()}))
"""


def run(mode: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in (*CPU_LIB_VARS, "RTLKIT_CPU_ISA")}
    env.update(RTLKIT_CPU_ISA=mode, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", CHILD, str(threads)], env=env, capture_output=True, text=True,
                       timeout=1200)
    if p.returncode:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


FINGERPRINT = r"""
import hashlib, json, sys, tempfile, os, torch
from rtlkit.core.runtime import Runtime, cpu_record, pin_cpu_isa
pin_cpu_isa()
torch.set_num_threads(int(sys.argv[1]))
os.environ["RTLKIT_RUNS"] = tempfile.mkdtemp()
from rtlkit.studies import profiles
from rtlkit.runs import cache as runs
run = profiles.get("smoke", gpu=False).source_run()
model = runs.get_or_train(run, Runtime(device="cpu"), progress=False)
blob = b"".join(v.numpy().tobytes() for _, v in sorted(model.state_dict().items()))
print(json.dumps({"sha256": hashlib.sha256(blob).hexdigest(), "torch": torch.__version__, **cpu_record()}))
"""
FINGERPRINTS = ROOT / "bench" / "reference" / "cpu-fingerprints.json"


def emulator(cpu: str) -> list[str]:
    """The command prefix that runs a child on an emulated x86 CPU: qemu-user's ``-cpu`` model
    (``qemu-x86_64 -cpu help`` lists them). The libraries then see that model's CPUID: its vendor
    (MKL's branch), its instruction sets (ATen, oneDNN) and its cache sizes (oneDNN's blocking);
    QEMU's softfloat gives IEEE results bit for bit, so the bits are that CPU's own (checked: an
    emulated EPYC-Milan gives the real AMD EPYC host's recorded fingerprint)."""
    import shutil
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate needs qemu-user (Debian: apt-get install qemu-user)")
    known = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout.split()
    if cpu not in known:
        raise SystemExit(f"--emulate {cpu}: not a CPU model of {qemu} (qemu-x86_64 -cpu help)")
    return [qemu, "-cpu", cpu]


def fingerprint(threads: int, record: bool, mode: str = "avx2", emulate: str | None = None) -> int:
    """Issue 24: are the pinned mode's bits the same on this CPU as on the CPUs recorded so far? The
    smoke source (WRN-10-1, 2 epochs, PGD) trained pinned in a fresh process; its weights' sha256
    against bench/reference/cpu-fingerprints.json (one entry per CPU model and torch version).
    ``emulate``: run that child on a qemu-emulated CPU model instead (about 20-60x slower)."""
    env = {k: v for k, v in os.environ.items()
           if k not in CPU_LIB_VARS}
    env.update(RTLKIT_CPU_ISA=mode, PYTHONPATH=str(ROOT))
    prefix = emulator(emulate) if emulate else []
    p = subprocess.run(prefix + [sys.executable, "-c", FINGERPRINT, str(threads)], env=env, capture_output=True,
                       text=True, timeout=7200 if emulate else 1200)
    if p.returncode:
        raise SystemExit(p.stderr)
    me = json.loads(p.stdout.strip().splitlines()[-1])
    if emulate:   # /proc/cpuinfo is still the host's: name the CPU the libraries saw
        me["cpu_model"] = f"qemu {emulate} (emulated on {me['cpu_model']})"
        me["cpu_flags"] = []
    known = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.is_file() else []
    print(f"this CPU ({me['cpu_model']}, torch {me['torch']}, {threads} threads, pinned {mode}): {me['sha256'][:16]}")
    for k in known:
        if k.get("mode", "avx2") != mode:
            continue
        same = "same bits" if k["sha256"] == me["sha256"] else "different bits"
        print(f"  {k['cpu_model']} (torch {k['torch']}, {k['threads']} threads, {k['date']}): {k['sha256'][:16]}  {same}")
    if record:
        entry = {"cpu_model": me["cpu_model"], "cpu_flags": me["cpu_flags"], "torch": me["torch"], "threads": threads,
                 "mode": mode, "sha256": me["sha256"], "date": datetime.now(timezone.utc).date().isoformat()}
        if emulate:
            entry["emulated"] = emulate
        known = [k for k in known if (k["cpu_model"], k["torch"], k["threads"], k.get("mode", "avx2")) !=
                 (entry["cpu_model"], entry["torch"], entry["threads"], mode)] + [entry]
        FINGERPRINTS.write_text(json.dumps(known, indent=1) + "\n")
        print(f"recorded in {FINGERPRINTS}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fingerprint", action="store_true", help="compare this CPU's pinned bits with recorded CPUs'")
    ap.add_argument("--record", action="store_true", help="with --fingerprint: add this CPU's entry")
    ap.add_argument("--mode", default="avx2", choices=("avx2", "avx2-compat", "portable"),
                    help="with --fingerprint: the pinned mode")
    ap.add_argument("--emulate", metavar="CPU", default=None,
                    help="with --fingerprint: run the child on this qemu-user CPU model (e.g. EPYC-Milan, Haswell)")
    ap.add_argument("--modes", nargs="+", default=["native", "avx2"], choices=("native", "avx2", "avx2-compat", "portable"),
                    help="the modes to time (native first: the others are shown against it)")
    a = ap.parse_args(argv)
    if a.fingerprint:
        return fingerprint(a.threads, a.record, a.mode, a.emulate)
    runs = {m: [] for m in dict.fromkeys(["native", *a.modes])}
    for _ in range(a.repeats):   # interleaved, so drift on a shared machine hits both modes alike
        for mode in runs:
            runs[mode].append(run(mode, a.threads))
    work = list(runs["native"][0]["img_s"])
    med = {m: {w: statistics.median(r["img_s"][w] for r in rs) for w in work} for m, rs in runs.items()}
    pins = [m for m in runs if m != "native"]
    rows = ["| workload | native img/s | " + " | ".join(f"pinned {m} img/s | {m} / native" for m in pins) + " |",
            "|---|---:|" + "---:|---:|" * len(pins)]
    rows += [f"| {w} | {med['native'][w]:,.0f} | " +
             " | ".join(f"{med[m][w]:,.0f} | {med[m][w] / med['native'][w]:.2f}×" for m in pins) + " |" for w in work]
    table = "\n".join(rows)
    rec = runs["native"][0]
    out = {"bench": "cpu_isa", "threads": a.threads, "repeats": a.repeats, "cpu_model": rec["cpu_model"],
           "cpu_flags": rec["cpu_flags"], "native_capability": rec["cpu_capability"], "median_img_s": med,
           "runs": runs, "table": table, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    folder = ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cpu-isa-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(table)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
