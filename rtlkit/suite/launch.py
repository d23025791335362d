"""A suite on many GPUs and nodes: every uncached training and evaluation that ``rtlkit.suite.plan``
lists becomes a submitit job (Slurm through ``AutoExecutor``, or local processes).

    rtlkit launch --profile paper [--only 03] --executor slurm --gpus-per-job 1 [--partition P]
    rtlkit launch --profile full --executor local --jobs 8     # one job per GPU on one node
    rtlkit launch --profile full --status                       # done / running / queued / failed

Dependencies run in waves: every source first, then every fine-tune and head (each needs its
source), then every evaluation (each needs its run). Waves, not Slurm job dependencies: a wave
needs no knowledge of which run feeds which, a failed source never leaves a queue of jobs waiting
on it, and the local executor (which has no dependencies) runs the same code. The run cache is the
contract between workers: each job calls ``runs.get_or_train`` / ``get_or_evaluate`` (or the
other ``get_or_*``), whose per-run file lock makes a second worker on the same run wait for the
first and then load its result. A failed job is retried once; a second failure is reported with
its log. Rerunning ``launch`` submits only what is not cached. When the jobs are done, ``make
figures`` renders every notebook from the cache without training anything.

Nothing here schedules: Slurm queues the jobs; locally, at most ``--jobs`` jobs run at once, each
pinned to its own GPUs (``CUDA_VISIBLE_DEVICES``) when there are GPUs. A job of ``--gpus-per-job``
G > 1 is G tasks, one per GPU, joined into one torch.distributed group: its training runs under
DDP and its evaluation is sharded (``rtlkit.core.distributed``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rtlkit.core.errors import check, check_int, check_notebooks, cli
from rtlkit.core.io import atomic_write_json
from rtlkit.studies.profiles import PROFILES, get
from rtlkit.runs.store import MARKER, check_environment, is_cached, run_dir, runs_root
from rtlkit.runs.specs import SourceRun
from rtlkit.runs.cache import get_or_certify, get_or_evaluate, get_or_train
from rtlkit.measure.smoothing import Smoothing
from rtlkit.suite import plan as P
from rtlkit.core import distributed
from rtlkit.core.runtime import configure_threads, default_cpu_isa, default_device, pin_cpu_isa
from rtlkit.suite.session import probe_datasets
from rtlkit.suite import registry

EXECUTORS = ("local", "slurm")
WAVES = ("sources", "fine-tunes and heads", "evaluations")


@dataclass
class Item:
    """One unit of work: the file it leaves when done (its key), its wave, what it is, and the
    call that does it (picklable: submitit sends it to the worker)."""
    key: str
    wave: int
    what: str
    call: object
    training: bool = False
    state: dict = field(default_factory=dict)
    run: object = None   # a training's run config
    n: int = 0           # an evaluation's test examples (what torchrun's ranks share)


def _evaluation_call(run, attacks, test_n, path=None, redo=None):
    if redo is not None:
        return redo
    if attacks and isinstance(attacks[0], Smoothing):
        return functools.partial(get_or_certify, run, attacks[0], 0.0, None, False, test_n)
    return functools.partial(get_or_evaluate, run, list(attacks), None, False, 500, test_n)


def items(profile, notebooks: list[str] | None = None, include_cached: bool = False) -> tuple[list[Item], list[str]]:
    """The suite's work, deduplicated and ordered in waves; cached items left out unless asked."""
    p = P.Plan(profile.name, profile.model.name)
    rec, skipped = P.record(profile, notebooks)
    out: dict[str, Item] = {}

    def add_training(run) -> None:   # a transfer's or a head's source too
        if hasattr(run, "source"):
            add_training(run.source)
        key = str(run_dir(run) / MARKER)
        if key not in out:
            out[key] = Item(key, 0 if isinstance(run, SourceRun) else 1, f"{run.kind} {run.data.label}",
                            functools.partial(_train, run), training=True, run=run)
    for run in rec.trainings:
        add_training(run)
    for entry in rec.evaluations:
        run, attacks, test_n, *rest = entry
        row = p.add_evaluation(run, attacks, test_n, *rest[:1])
        key = row["path"]
        if key not in out:
            out[key] = Item(key, 2, f"{', '.join(row['attacks'])} on {run.kind} {run.data.label}",
                            _evaluation_call(run, attacks, test_n, *rest), n=row["n_test"] or 0)
        add_training(run)
    work = sorted(out.values(), key=lambda i: i.wave)
    if not include_cached:
        work = [i for i in work if not Path(i.key).is_file()]
    return work, skipped


def _train(run) -> bool:
    """Train (or load) a run; True when this call trained it (it was not cached before)."""
    before = is_cached(run)
    get_or_train(run, progress=False)
    return not before


def _job(call, runs: str, threads: int | None) -> dict:
    """What a worker runs: the cache root of the launcher, then the item's call. A job of several
    tasks (``--gpus-per-job`` > 1: one task per GPU) joins them into one torch.distributed group
    first, so its training is data-parallel and its evaluation sharded (``rtlkit.core.distributed``)."""
    os.environ["RTLKIT_RUNS"] = runs
    if threads:
        os.environ["RTLKIT_THREADS"] = str(threads)
    configure_threads()
    import submitit
    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:   # called outside a submitit job (a test, a debugger)
        tasks = 1
    if tasks > 1:
        from submitit.helpers import TorchDistributedEnvironment
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        distributed.init(default_device())
    t0 = time.time()
    try:
        out = call()
    except BaseException:
        distributed.finish(wait=False)
        raise
    distributed.finish()
    return {"trained": bool(out) if isinstance(out, bool) else False, "seconds": time.time() - t0,
            "host": os.uname().nodename, "pid": os.getpid(), "processes": tasks}


def status_path() -> Path:
    return runs_root() / "launch" / "status.json"


def _write_status(work: list[Item]) -> None:
    path = status_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_status()
    old.update({i.key: {"what": i.what, **i.state} for i in work if i.state})
    atomic_write_json(path, old)


def read_status() -> dict:
    try:
        return json.loads(status_path().read_text())
    except (OSError, ValueError):
        return {}


def executor(kind: str, folder: Path, gpus_per_job: int, partition: str | None, timeout_min: int):
    import submitit
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=timeout_min, tasks_per_node=gpus_per_job)
        return ex
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    ex.update_parameters(timeout_min=timeout_min, gpus_per_node=gpus_per_job, tasks_per_node=gpus_per_job, nodes=1,
                         **({"slurm_partition": partition} if partition else {}))
    return ex


def run_waves(work: list[Item], ex, kind: str, jobs: int, gpus: list[int], gpus_per_job: int,
              threads: int | None = None, poll_s: float = 0.5, log=print) -> dict:
    """Submit each wave's items, at most ``jobs`` at once locally (each on its own GPUs), wait for
    the wave, retry a failed item once, and report a second failure with its log."""
    runs = str(runs_root())
    summary = {"done": 0, "failed": [], "trained": 0}
    for wave, name in enumerate(WAVES):
        todo = [i for i in work if i.wave == wave and not Path(i.key).is_file()]
        if not todo:
            continue
        log(f"[rtlkit.suite.launch] wave {wave + 1}/{len(WAVES)}: {len(todo)} {name}")
        for i in todo:
            i.state = {"state": "queued", "attempts": 0}
        _write_status(work)
        running: dict[int, tuple[Item, object, int]] = {}
        slots = list(range(jobs)) if kind == "local" else []
        queue = list(todo)
        while queue or running:
            while queue and (kind != "local" or slots):
                item = queue.pop(0)
                slot = slots.pop(0) if kind == "local" else -1
                if kind == "local" and gpus:
                    ex.update_parameters(gpus_per_node=gpus_per_job,
                                         visible_gpus=tuple(gpus[(slot * gpus_per_job + k) % len(gpus)]
                                                            for k in range(gpus_per_job)))
                job = ex.submit(_job, item.call, runs, threads)
                item.state = {"state": "running", "attempts": item.state.get("attempts", 0) + 1, "job": str(job.job_id),
                              "log": str(job.paths.stderr)}
                running[id(item)] = (item, job, slot)
                _write_status(work)
            time.sleep(poll_s)
            for key, (item, job, slot) in list(running.items()):
                if not job.done():
                    continue
                del running[key]
                if kind == "local":
                    slots.append(slot)
                try:
                    res = job.results()[0]   # a job of several tasks: task 0 speaks for it
                    item.state.update(state="done", seconds=res["seconds"], host=res["host"])
                    summary["done"] += 1
                    summary["trained"] += int(res["trained"])
                except Exception as e:   # the job failed: once more, then report it with its log
                    if item.state["attempts"] < 2:
                        item.state.update(state="queued", error=str(e).splitlines()[-1][:300] if str(e) else type(e).__name__)
                        queue.append(item)
                    else:
                        item.state.update(state="failed", error=str(e).splitlines()[-1][:300] if str(e) else type(e).__name__)
                        summary["failed"].append((item.what, item.state["log"]))
                _write_status(work)
        if summary["failed"]:
            break   # a later wave would wait on what failed
    return summary


def check_args(profile: str, executor_kind: str, gpus_per_job: int, jobs: int, timeout_min: int = 24 * 60,
               threads: int | None = None, notebooks: list[str] | None = None) -> None:
    """Every bad setting, before any job is submitted or any folder made."""
    import shutil

    check(executor_kind in EXECUTORS, f"unknown executor {executor_kind!r}; one of {', '.join(EXECUTORS)}")
    check_int("--gpus-per-job", gpus_per_job, 1)
    check_int("--jobs", jobs, 1)
    check_int("--timeout-min", timeout_min, 1)
    if threads is not None:   # 0 used to mean "the default" silently
        check_int("--threads", threads, 1)
    check(profile in PROFILES, f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    check_notebooks(notebooks, registry.with_steps())
    if executor_kind == "slurm":
        check(shutil.which("sbatch") is not None and shutil.which("srun") is not None,
              "--executor slurm: this machine has no Slurm (sbatch / srun are not on PATH); run on a login node "
              "of the cluster, or use --executor local")


def launch(profile_name: str, notebooks: list[str] | None = None, executor_kind: str = "local", jobs: int = 1,
           gpus_per_job: int = 1, partition: str | None = None, timeout_min: int = 24 * 60,
           threads: int | None = None, poll_s: float = 0.5, log=print) -> dict:
    """Submit the suite's uncached work and wait for it; returns what ran, trained and failed."""
    check_args(profile_name, executor_kind, gpus_per_job, jobs, timeout_min, threads, notebooks)
    pin_cpu_isa(default_cpu_isa(profile_name, None if executor_kind == "local" else "cuda"))   # jobs inherit it
    if threads:   # the jobs' thread count, here too: a pinned run's cache key holds it
        os.environ["RTLKIT_THREADS"] = str(threads)
    configure_threads()
    import torch
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    profile = get(profile_name, gpu=bool(gpus) if executor_kind == "local" else True)
    probe_datasets(profile)   # missing data: one error here, not in 200 failed jobs
    work, skipped = items(profile, notebooks)
    for s in skipped:
        log(f"[rtlkit.suite.launch] skipped {s}")
    log(f"[rtlkit.suite.launch] {profile_name}: {len(work)} uncached item(s) "
        f"({', '.join(f'{sum(i.wave == w for i in work)} {n}' for w, n in enumerate(WAVES))})")
    if not work:
        return {"done": 0, "failed": [], "trained": 0}
    folder = runs_root() / "launch" / "jobs"
    ex = executor(executor_kind, folder, gpus_per_job, partition, timeout_min)
    summary = run_waves(work, ex, executor_kind, jobs, gpus, gpus_per_job, threads, poll_s, log)
    for what, path in summary["failed"]:
        log(f"[rtlkit.suite.launch] FAILED twice: {what}; log: {path}")
    return summary


def status(profile_name: str, notebooks: list[str] | None = None) -> list[dict]:
    """Every item of the suite: done (cached), or what the launcher last recorded (running,
    queued, failed), or "not submitted"."""
    check(profile_name in PROFILES, f"unknown profile {profile_name!r}; one of {', '.join(PROFILES)}")
    check_notebooks(notebooks, registry.with_steps())
    pin_cpu_isa(default_cpu_isa(profile_name))   # the cache keys the jobs use
    profile = get(profile_name)
    work, _ = items(profile, notebooks, include_cached=True)
    seen = read_status()
    rows = []
    for i in work:
        st = "done" if Path(i.key).is_file() else seen.get(i.key, {}).get("state", "not submitted")
        rows.append({"what": i.what, "wave": WAVES[i.wave], "state": st, "log": seen.get(i.key, {}).get("log", ""),
                     "file": i.key})
    return rows


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="full")
    ap.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 03")
    ap.add_argument("--executor", default="local", help=f"one of {', '.join(EXECUTORS)}")
    ap.add_argument("--jobs", type=int, default=1, help="local: processes at once (one per GPU)")
    ap.add_argument("--gpus-per-job", type=int, default=1)
    ap.add_argument("--partition", default=None, help="Slurm partition")
    ap.add_argument("--timeout-min", type=int, default=24 * 60)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per job")
    ap.add_argument("--status", action="store_true", help="show done / running / queued / failed per item and exit")
    a = ap.parse_args(argv)
    check_environment()
    if a.status:
        rows = status(a.profile, a.only)
        counts = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
            print(f"{r['state']:>13}  {r['wave']:<20}  {r['what']}" + (f"  ({r['log']})" if r["state"] == "failed" else ""))
        print(f"[rtlkit.suite.launch] {len(rows)} item(s): " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        return 0
    s = launch(a.profile, a.only, a.executor, a.jobs, a.gpus_per_job, a.partition, a.timeout_min, a.threads)
    print(f"[rtlkit.suite.launch] {s['done']} done ({s['trained']} trained), {len(s['failed'])} failed")
    return 1 if s["failed"] else 0


main = cli("rtlkit.suite.launch", _main)

if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    from rtlkit.suite import launch as _package_module
    sys.exit(_package_module.main())
