"""Throughput of rtlkit's own training and attack code: the fast path against plain eager fp32.

    python -m bench.throughput --model wrn-34-10                 # the issue's table (GPU)
    python -m bench.throughput --model wrn-16-1-s2 --input 1x28x28 --batch 128   # a CPU-sized run

Each workload calls the library itself (``training.train_step``, ``evaluate.evaluate``), never a
copy of it: PGD-7 AT of a source (plain, and with FDM's extra clean forward), natural fine-tuning
of the last k = 1 and k = all blocks, and PGD-100 evaluation by our PGD and by foolbox's. Both
paths run in the same process on the same weights; the speed-up column is their ratio (absolute
times drift between machines, ratios taken in one run do not). Every timing warms up first
(compiles included), synchronises the device before reading the clock and is the median of
several repeats. Peak memory is the device's (CUDA only). Numerics, as labelled: "eager fp32" is
float32 with TF32 off (``runtime.strict_fp32``; cuDNN would otherwise run its convolutions in TF32
on an H100); "fast" is bf16 autocast with float32 logits, and foolbox's PGD runs in the same
numerics as our PGD on each path, so the own / foolbox ratio compares the attacks' loops alone.

``--accuracy quick`` then trains the `quick` profile's source on each path (same seed) and checks
that accuracy does not pay for speed: PGD-20 robust accuracy within 1.5 points between the paths,
our PGD-100 within 0.5 points of foolbox's. Results go to ``bench/results/*.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from rtlkit.measure.attacks import PGD, FoolboxPGD
from rtlkit.core.data import DatasetInfo, ImageData
from rtlkit.measure.evaluate import evaluate
from rtlkit.train.methods.fdm import FDMTraining
from rtlkit.core.models import build
from rtlkit.core.runtime import Runtime, seed_all, strict_fp32
from rtlkit.train.loop import AdversarialTraining, StandardTraining, make_optimizer, train, train_step
from rtlkit.train.transfer import TransferPolicy, prepare_target

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Issue 3's targets (WRN-34-10, batch 256, one H100)
TARGETS = {"at_img_s": 1800, "at_speedup": 2.5, "own_vs_foolbox": 1.5, "pgd100_gap": 0.5, "paths_gap": 1.5}


def parse_model(name: str):
    """A backbone by rtlkit's names (``models.parse_spec``): wrn-34-10, wrn-16-1-s2, resnet50,
    resnet18-small (the CIFAR stem)."""
    from rtlkit.core.errors import ConfigError
    from rtlkit.core.models import parse_spec
    try:
        return parse_spec(name)
    except ConfigError as e:
        raise SystemExit(f"--model: {e}") from None


def paths(device: str, mode: str | None = None) -> dict[str, Runtime]:
    """The fast path (forced on, also on the CPU, where it is off by default), plain eager fp32, and
    (on request) the fast path with the whole model compiled as one graph instead of per block."""
    return {"fast": Runtime(device, amp=True, channels_last=True, compile=True, compile_mode=mode),
            "eager fp32": Runtime(device, amp=False, channels_last=False, compile=False),
            "fast, model graph": Runtime(device, amp=True, channels_last=True, compile=True, compile_scope="model",
                                         compile_mode=mode)}


def numerics(path: str):
    """What a path's rows run under: "eager fp32" with TF32 off (an H100 runs "fp32" convolutions in
    TF32 by default), the others as configured."""
    return strict_fp32() if path == "eager fp32" else contextlib.nullcontext()


def sync(rt: Runtime) -> None:
    if rt.is_cuda:
        torch.cuda.synchronize()


def timed(rt: Runtime, step, images: int, warmup: int, repeats: int, steps: int) -> dict:
    """Median images/s of ``repeats`` timings of ``steps`` calls of ``step`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        step()
    sync(rt)
    if rt.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        sync(rt)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(rt)
        rates.append(images * steps / (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if rt.is_cuda else None
    return {"img_s": statistics.median(rates), "repeats": rates, "peak_gib": peak}


def random_data(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    info = DatasetInfo("bench-random", tuple(map(str, range(classes))), shape[0], shape[1], "cifar")
    return ImageData(x, y, info)


def workloads(a, spec, shape, classes: int) -> dict:
    """name -> (builder(rt) -> (step, images per step)); each builder makes a fresh model."""
    eps = a.eps
    at = AdversarialTraining(batch_size=a.batch, attack=PGD(eps, 7, eps / 4))   # CARTL App. C PGD-7
    fdm = FDMTraining(batch_size=a.batch, attack=at.attack, k=a.fdm_k)
    ft = StandardTraining(batch_size=a.batch)

    def model(rt, seed=0):
        seed_all(seed)
        return rt.prepare(build(spec, classes, shape[0], (0.5,), (0.25,)))

    def batch(rt):
        d = random_data(a.batch, shape, classes)
        return d.x.to(rt.device).float().div_(255), d.y.to(rt.device)

    def training(method, policy=None):
        def make(rt):
            m = model(rt)
            if policy is not None:
                m = rt.prepare(prepare_target(m, classes, policy, seed=1))
            params = [p for p in m.parameters() if p.requires_grad]
            opt = make_optimizer(params, method, rt)
            x, y = batch(rt)
            policy.set_modes(m) if policy is not None else m.train()  # once: attacks restore the modes

            def step():
                train_step(method, m, m, opt, x, y, rt)
            return step, a.batch
        return make

    def evaluation(attack):
        def make(rt):
            m = model(rt).eval()
            d = random_data(a.eval_batch, shape, classes, seed=1)

            def step():
                evaluate(m, d, attack, rt, batch_size=a.eval_batch, progress=False)
            return step, a.eval_batch
        return make

    pgd100 = PGD(eps, 100, eps / 4)  # CARTL App. C: PGD-100, step 2/255 at eps 8/255
    return {
        "PGD-7 AT (source)": training(at),
        f"PGD-7 AT + FDM (k={a.fdm_k})": training(fdm),
        "fine-tune k=1": training(ft, TransferPolicy(k=1)),
        "fine-tune k=all": training(ft, TransferPolicy(k="all")),
        "PGD-100 eval, own": evaluation(pgd100),
        "PGD-100 eval, foolbox": evaluation(FoolboxPGD(eps, 100, eps / 4)),
    }


def throughput(a, spec, shape, classes) -> list[dict]:
    rows = []
    for name, make in workloads(a, spec, shape, classes).items():
        if a.only and not any(o.lower() in name.lower() for o in a.only):
            continue
        for path, rt in paths(a.device, a.compile_mode).items():
            if path not in a.paths:
                continue
            with numerics(path):
                step, images = make(rt)
                evals = name.startswith("PGD-100")
                r = timed(rt, step, images, warmup=1 if evals else a.warmup,
                          repeats=a.eval_repeats if evals else a.repeats, steps=1 if evals else a.steps)
            rows.append({"workload": name, "path": path, **r})
            peak = f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
            print(f"  {name:<28} {path:<11} {r['img_s']:>10.1f} img/s{peak}", flush=True)
            del step
            if rt.is_cuda:
                torch.cuda.empty_cache()
    return rows


def sync_check(a, spec, shape, classes) -> str:
    """CUDA only: a PGD-7 AT step on the fast path under torch's sync debug mode "error", which
    raises on any host synchronisation (an ``.item()``, a data-dependent shape, a CPU copy)."""
    rt = paths(a.device, a.compile_mode)["fast"]
    make = workloads(a, spec, shape, classes)["PGD-7 AT (source)"]
    step, _ = make(rt)
    step()  # compile first: compilation itself may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        verdict = "no host synchronisation inside a PGD-7 AT step (attack loop + SGD step)"
    except RuntimeError as e:
        verdict = f"host synchronisation inside a PGD-7 AT step: {e}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    print("  " + verdict, flush=True)
    return verdict


def accuracy(a) -> dict:
    """Train the quick profile's source on both paths (same seed) and compare robust accuracies."""
    from rtlkit.studies import profiles
    P = profiles.get("quick", gpu=a.device.startswith("cuda"))
    run = P.source_run()
    train_data, test_data = run.train_data(), run.test_data()
    out = {"profile": "quick", "source": P.source.label, "model": P.model.name,
           "method": asdict(P.source_method), "n_test": len(test_data), "paths": {}}
    models = {}
    for path, rt in paths(a.device, a.compile_mode).items():
        if path not in ("fast", "eager fp32"):
            continue
        seed_all(0)
        m = run.build_model()
        with numerics(path):
            t0 = time.perf_counter()
            train(m, train_data, P.source_method, rt, seed=0, progress=False)
            sync(rt)
            secs = time.perf_counter() - t0
            r = evaluate(m, test_data, list(P.eval_attacks), rt, progress=False)
        out["paths"][path] = {"train_seconds": secs, "clean_acc": r.clean_acc, "robust_acc_pgd20": r.robust_acc}
        models[path] = (m, rt)
        print(f"  quick source, {path:<11} trained in {secs:6.1f} s: clean {r.clean_acc:.2%}, PGD-20 {r.robust_acc:.2%}",
              flush=True)
    f, e = out["paths"]["fast"], out["paths"]["eager fp32"]
    out["paths_gap_points"] = abs(f["robust_acc_pgd20"] - e["robust_acc_pgd20"]) * 100
    m, rt = models["fast"]
    steps = 100
    own = evaluate(m, test_data, replace(P.eval_attacks[0], steps=steps, step_size=P.eps / 4), rt, progress=False)
    fb = evaluate(m, test_data, FoolboxPGD(P.eps, steps, P.eps / 4), rt, progress=False)
    out["pgd100_own"], out["pgd100_foolbox"] = own.robust_acc, fb.robust_acc
    out["pgd100_gap_points"] = abs(own.robust_acc - fb.robust_acc) * 100
    print(f"  fast-path model, PGD-100: own {own.robust_acc:.2%}, foolbox {fb.robust_acc:.2%}", flush=True)
    return out


def trained(a) -> dict:
    """PGD-100 evaluation of a trained model on real test images: the quick profile's robust source
    (from the run cache, or trained) on its 1,000 Fashion-MNIST test images, by our PGD with
    pruning (what ``evaluate`` runs), our PGD without it, and foolbox's PGD, at one eps, step and
    step count. On random weights and images nearly every example falls at the first step, which
    flatters pruning; a trained robust model is what the suite evaluates."""
    from rtlkit.studies import profiles
    from rtlkit.runs.cache import get_or_train
    from rtlkit.runs.store import run_key
    P = profiles.get("quick", gpu=a.device.startswith("cuda"))
    rt = Runtime(a.device)
    run = P.source_run()
    model = get_or_train(run, rt, progress=False).eval()
    test = run.test_data()
    steps, rows = 100, {}
    own = replace(P.eval_attacks[0], steps=steps, step_size=P.eps / 4)
    for name, attack, prune in (("own, pruned", own, True), ("own, whole batch", own, False),
                                ("foolbox", FoolboxPGD(P.eps, steps, P.eps / 4), True)):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        r = evaluate(model, test, attack, rt, batch_size=a.eval_batch, progress=False, prune=prune)
        sync(rt)
        secs = time.perf_counter() - t0
        rows[name] = {"seconds": secs, "img_s": len(test) / secs, "clean_acc": r.clean_acc, "robust_acc": r.robust_acc}
        print(f"  trained quick source, PGD-100 {name:<17} {secs:7.1f} s: robust {r.robust_acc:.2%}", flush=True)
    fb = rows["foolbox"]
    return {"run": run_key(run, rt), "n_test": len(test), "runtime": rt.describe(),
            "eps": P.eps, "steps": steps, "step_size": P.eps / 4, "paths": rows,
            "own_vs_foolbox": fb["seconds"] / rows["own, pruned"]["seconds"],
            "whole_batch_vs_foolbox": fb["seconds"] / rows["own, whole batch"]["seconds"],
            "gap_points": abs(rows["own, pruned"]["robust_acc"] - fb["robust_acc"]) * 100}


def ratios(rows: list[dict]) -> dict:
    get = {(r["workload"], r["path"]): r["img_s"] for r in rows}
    out = {}
    for w in dict.fromkeys(r["workload"] for r in rows):
        if (w, "fast") in get and (w, "eager fp32") in get:
            out[f"speed-up {w}"] = get[(w, "fast")] / get[(w, "eager fp32")]
        if (w, "fast") in get and (w, "fast, model graph") in get:
            out[f"per-block / whole-model compile {w}"] = get[(w, "fast")] / get[(w, "fast, model graph")]
    for p in ("fast", "eager fp32"):
        own, fb = get.get(("PGD-100 eval, own", p)), get.get(("PGD-100 eval, foolbox", p))
        if own and fb:
            out[f"own / foolbox PGD-100 ({p})"] = own / fb
    return out


def table(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {})[r["path"]] = r
    lines = ["| workload | fast img/s | eager fp32 img/s | speed-up | fast peak GiB | eager peak GiB |",
             "|---|---:|---:|---:|---:|---:|"]

    def cell(r, key, fmt):
        return fmt.format(r[key]) if r is not None and r.get(key) is not None else "–"
    for w, d in by.items():
        f, e = d.get("fast"), d.get("eager fp32")
        sp = f"{f['img_s'] / e['img_s']:.2f}×" if f and e else "–"
        lines.append(f"| {w} | {cell(f, 'img_s', '{:,.0f}')} | {cell(e, 'img_s', '{:,.0f}')} | {sp} | "
                     f"{cell(f, 'peak_gib', '{:.2f}')} | {cell(e, 'peak_gib', '{:.2f}')} |")
    graph = [(w, d["fast, model graph"], d.get("fast")) for w, d in by.items() if "fast, model graph" in d]
    if graph:
        lines += ["", "| workload | fast, whole-model graph img/s | per-block / whole-model |", "|---|---:|---:|"]
        for w, g, f in graph:
            ratio = f"{f['img_s'] / g['img_s']:.2f}×" if f else "–"
            lines.append(f"| {w} | {g['img_s']:,.0f} | {ratio} |")
    return "\n".join(lines)


def verdicts(res: dict) -> list[str]:
    """The issue's targets, met or not, from this run's numbers."""
    out = []
    get = {(r["workload"], r["path"]): r["img_s"] for r in res["throughput"]}
    at = get.get(("PGD-7 AT (source)", "fast"))
    sp = res["ratios"].get("speed-up PGD-7 AT (source)")
    if at is not None:
        scope = "" if res["model"] == "wrn-34-10" and res["batch"] == 256 else " (target is for WRN-34-10, batch 256, H100)"
        out.append(f"PGD-7 AT: {at:,.0f} img/s (target >= {TARGETS['at_img_s']:,}){scope}: "
                   f"{'met' if at >= TARGETS['at_img_s'] else 'missed'}")
    if sp is not None:
        out.append(f"PGD-7 AT speed-up over eager fp32: {sp:.2f}x (target >= {TARGETS['at_speedup']}x): "
                   f"{'met' if sp >= TARGETS['at_speedup'] else 'missed'}")
    r = res["ratios"].get("own / foolbox PGD-100 (fast)")
    if r is not None:
        out.append(f"own PGD-100 / foolbox PGD-100: {r:.2f}x (target >= {TARGETS['own_vs_foolbox']}x): "
                   f"{'met' if r >= TARGETS['own_vs_foolbox'] else 'missed'}")
    tr = res.get("trained")
    if tr:
        r, g = tr["own_vs_foolbox"], tr["gap_points"]
        ok = r >= TARGETS["own_vs_foolbox"] and g <= TARGETS["pgd100_gap"]
        out.append(f"trained quick source, own PGD-100 (pruned) / foolbox PGD-100: {r:.2f}x "
                   f"(whole batch {tr['whole_batch_vs_foolbox']:.2f}x), robust accuracy {g:.2f} points apart "
                   f"(target >= {TARGETS['own_vs_foolbox']}x within {TARGETS['pgd100_gap']}): {'met' if ok else 'missed'}")
    if "sync_check" in res:
        out.append(res["sync_check"])
    acc = res.get("accuracy")
    if acc:
        g = acc["paths_gap_points"]
        out.append(f"quick source PGD-20 robust accuracy, fast vs fp32: {g:.2f} points apart "
                   f"(target <= {TARGETS['paths_gap']}): {'met' if g <= TARGETS['paths_gap'] else 'missed'}")
        g = acc["pgd100_gap_points"]
        out.append(f"PGD-100 robust accuracy, own vs foolbox: {g:.2f} points apart "
                   f"(target <= {TARGETS['pgd100_gap']}): {'met' if g <= TARGETS['pgd100_gap'] else 'missed'}")
    return out


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wrn-34-10",
                    help="wrn-DEPTH-WIDTH[-s2] or resnet18|34|50[-small] (default wrn-34-10)")
    ap.add_argument("--input", default="3x32x32", help="C x H x W (default 3x32x32)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256, help="training batch (default 256)")
    ap.add_argument("--eval-batch", type=int, default=512, help="evaluation batch (default 512)")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--fdm-k", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first (compiles happen here)")
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eval-repeats", type=int, default=3, help="timed PGD-100 evaluations of one batch")
    ap.add_argument("--paths", nargs="*", default=["fast", "eager fp32"],
                    choices=["fast", "eager fp32", "fast, model graph"],
                    help="'fast, model graph' adds whole-model compilation, to price the per-block graph breaks")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode for the fast path, e.g. max-autotune-no-cudagraphs (default: torch's)")
    ap.add_argument("--only", nargs="*", default=None, help="workload name fragments, e.g. AT foolbox")
    ap.add_argument("--accuracy", choices=["quick", "none"], default="quick",
                    help="train the quick source on both paths and compare robust accuracy (default quick)")
    ap.add_argument("--trained", choices=["quick", "none"], default="quick",
                    help="time PGD-100 (own pruned, own whole batch, foolbox) on the quick robust source (default quick)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    a.device = Runtime(a.device).device
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model == "wrn-34-10" and not Runtime(a.device).is_cuda:
        print("note: WRN-34-10 on the CPU takes hours; the CPU-sized run is\n"
              "  python -m bench.throughput --model wrn-16-1-s2 --input 1x28x28 --classes 10 --batch 128 --eval-batch 256",
              file=sys.stderr, flush=True)
    spec = parse_model(a.model)
    try:
        shape = tuple(int(v) for v in a.input.lower().split("x"))
        assert len(shape) == 3
    except (ValueError, AssertionError):
        raise SystemExit(f"--input must be CxHxW, e.g. 3x32x32, not {a.input!r}")
    device_name = Runtime(a.device).describe().split(" [")[0]
    print(f"rtlkit throughput: {spec.name}, input {a.input}, batch {a.batch} (eval {a.eval_batch}), "
          f"{device_name}, torch {torch.__version__}", flush=True)
    t0 = time.time()
    res = {"model": spec.name, "input": a.input, "classes": a.classes, "batch": a.batch, "eval_batch": a.eval_batch,
           "eps": a.eps, "device": device_name, "torch": torch.__version__, "python": platform.python_version(),
           "commit": commit(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "settings": {k: v for k, v in vars(a).items() if k != "out"}}
    res["throughput"] = throughput(a, spec, shape, a.classes)
    if Runtime(a.device).is_cuda and any(r["workload"] == "PGD-7 AT (source)" and r["path"] == "fast"
                                         for r in res["throughput"]):
        res["sync_check"] = sync_check(a, spec, shape, a.classes)
    res["ratios"] = ratios(res["throughput"])
    if a.accuracy == "quick":
        res["accuracy"] = accuracy(a)
    if a.trained == "quick":
        res["trained"] = trained(a)
    res["wall_seconds"] = time.time() - t0
    res["verdicts"] = verdicts(res)
    res["table"] = table(res["throughput"])
    print()
    print(res["table"])
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}x")
    for v in res["verdicts"]:
        print("-", v)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")[:40]
    path = out / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{spec.name}-{tag}.json"
    path.write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({res['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
