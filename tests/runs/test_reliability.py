"""Reliability, by injected faults (issue 9): kill -9 at random training steps and at every
artefact-write boundary; truncated, zeroed, flipped and deleted artefacts; two processes on one
run; a lock holder that dies; determinism across caches and call orders; a full disk; and every
bad input one clear error before any file is written."""
import dataclasses
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import fault_child as FC
from rtlkit.studies import profiles
from rtlkit.suite import session as report
from rtlkit.runs import cache as runs
from rtlkit import ConfigError, DatasetNotFound
from rtlkit.core import io as rtlkit_io
from rtlkit.core.errors import NoSpace
from rtlkit.runs.cache import get_or_evaluate, get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.runs.specs import stable_hash
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import Checkpoints, StandardTraining

CPU = Runtime("cpu")
REPO = Path(__file__).resolve().parents[2]
KILLED = -signal.SIGKILL


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RTLKIT_FAULT", "RTLKIT_TRAIN_LOG")}
    env.update(RTLKIT_THREADS="1", OMP_NUM_THREADS="1")
    return env


_ZYGOTE: list = []   # this module's fork server while its tests run


@pytest.fixture(scope="module", autouse=True)
def zygote():
    """One fork server for this file's children (tests/support/zygote.py): a fault chain is ten processes,
    and a fork starts in milliseconds where a new interpreter takes 2-3 s to import torch."""
    from zygote import Zygote
    z = Zygote(_base_env())
    _ZYGOTE.append(z)
    yield z
    _ZYGOTE.remove(z)
    z.close()


def child(kinds, root, fault=None, log=None, **extra):
    """fault_child.py as a process of its own: a fork of the module's fork server."""
    env = _base_env()
    env.update(RTLKIT_RUNS=str(root), **extra)
    if fault:
        env["RTLKIT_FAULT"] = fault
    if log:
        env["RTLKIT_TRAIN_LOG"] = str(log)
    return _ZYGOTE[-1].spawn(FC.__file__, list(kinds), env)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def snapshot(root: Path) -> dict:
    """Per run folder: the model.pt bytes and the training history without its timings."""
    snap = {}
    for folder in sorted(root.glob("*-*")):
        if (folder / "model.pt").is_file():
            hist = json.loads((folder / "train.json").read_text())["history"]
            snap[folder.name] = {"model": (folder / "model.pt").read_bytes(),
                                 "history": [{k: v for k, v in h.items() if k != "seconds"} for h in hist]}
    return snap


def debris(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".corrupt"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Every kind trained and evaluated once, uninterrupted, in a child process."""
    root = tmp_path_factory.mktemp("reference")
    rc, out, err = finish(child(FC.KINDS, root))
    assert rc == 0, err
    return root, json.loads(out), snapshot(root)


# Kill points, in the order a run meets them (counts restart in every process): a random step of
# epoch 1; epoch 1's checkpoint temp-written (the 2nd write, after config.json) and renamed; a
# random step of epoch 2 (resumed); then, in a run resumed from its last checkpoint, model.pt
# temp-written and renamed (3rd write: model.pt there, train.json not), complete.json
# temp-written (4th) and written; the evaluation CSV temp-written and renamed (its JSON not).
def chain(steps_per_epoch: int, rng: random.Random) -> list[str]:
    return [f"step:{rng.randint(1, steps_per_epoch)}", "temp-written:2", "renamed:2",
            f"step:{rng.randint(1, steps_per_epoch)}", "temp-written:3", "renamed:3", "temp-written:4",
            "marker-written:1", "temp-written:1", "renamed:1"]


@pytest.mark.parametrize("kind,steps", [("source", 4), ("plain", 3), ("neft", 3), ("lwf", 3)])
def test_kill_9_anywhere_resumes_to_the_same_bits(kind, steps, reference, tmp_path):
    ref_root, ref_metrics, ref_snap = reference
    root = tmp_path / "faulted"
    root.mkdir()
    if kind != "source":   # the source comes from the reference: the faults hit the fine-tune
        src = run_dir(FC.source(), CPU).name
        shutil.copytree(ref_root / src, root / src)
    seed = int(os.environ.get("RTLKIT_FAULT_SEED", "0"))
    faults = chain(steps, random.Random(f"{seed}-{kind}"))
    for fault in faults:
        rc, out, err = finish(child([kind], root, fault))
        assert rc == KILLED, f"{fault}: the process was not killed there (rc {rc})\n{err[-2000:]}"
    rc, out, err = finish(child([kind], root))
    assert rc == 0, err[-3000:]
    assert json.loads(out)[kind] == ref_metrics[kind]
    snap = snapshot(root)
    for name, ref in ref_snap.items():
        if name in snap:
            assert snap[name]["model"] == ref["model"], f"{name}: model.pt differs from an uninterrupted run"
            assert snap[name]["history"] == ref["history"]
    assert len(snap) == (1 if kind == "source" else 2)
    assert not debris(root), debris(root)


def test_two_processes_on_one_run_train_it_once(reference, tmp_path):
    _, ref_metrics, ref_snap = reference
    log = tmp_path / "trained.log"
    procs = [child(["source"], tmp_path / "runs", log=log) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    assert len(log.read_text().split()) == 1, "both processes trained the run"
    assert all(json.loads(out)["source"] == ref_metrics["source"] for _, out, _ in results)
    name = run_dir(FC.source(), CPU).name
    assert (tmp_path / "runs" / name / "model.pt").read_bytes() == ref_snap[name]["model"]


def _training_started(proc, log):
    t0 = time.time()
    while not (log.exists() and log.read_text().strip()):
        assert time.time() - t0 < 120 and proc.poll() is None, "it never started training"
        time.sleep(0.05)


@pytest.mark.parametrize("lock", ["flock", "lease"])
def test_a_dead_lock_holder_does_not_block_the_next_process(lock, reference, tmp_path):
    """A holds the run's lock and is killed mid-training; B, waiting on the lock, takes over,
    resumes A's checkpoint and finishes with the uninterrupted bits. flock: the kernel frees the
    lock; lease (file systems without flock): B finds the pid in the lock file dead on this host."""
    _, ref_metrics, ref_snap = reference
    log, root = tmp_path / "trained.log", tmp_path / "runs"
    a = child(["source"], root, fault="step:6", log=log, RTLKIT_LOCK=lock)
    _training_started(a, log)
    b = child(["source"], root, log=log, RTLKIT_LOCK=lock)
    rc_a, _, _ = finish(a)
    rc_b, out_b, err_b = finish(b)
    assert rc_a == KILLED and rc_b == 0, err_b[-2000:]
    assert len(log.read_text().split()) == 2            # A trained, died; B trained (resumed)
    assert json.loads(out_b)["source"] == ref_metrics["source"]
    name = run_dir(FC.source(), CPU).name
    assert (root / name / "model.pt").read_bytes() == ref_snap[name]["model"]
    left = [p.suffix for p in (root / ".locks").iterdir()]   # flock keeps its file; a lease, broken and released, none
    assert left == ([".lock"] if lock == "flock" else [])


def test_a_lease_nobody_renews_is_broken_when_it_runs_out(reference, tmp_path):
    """A holder whose pid cannot be judged dead (here: stopped, as a node that vanished looks from
    another host) stops renewing its lease; B waits out the lease, takes the run over and
    finishes it with the uninterrupted bits."""
    _, ref_metrics, ref_snap = reference
    log, root = tmp_path / "trained.log", tmp_path / "runs"
    a = child(["source"], root, log=log, RTLKIT_LOCK="lease", RTLKIT_LOCK_LEASE_S="3")
    try:
        _training_started(a, log)
        os.kill(a.pid, signal.SIGSTOP)
        t0 = time.time()
        rc_b, out_b, err_b = finish(child(["source"], root, log=log, RTLKIT_LOCK="lease", RTLKIT_LOCK_LEASE_S="3"))
        assert rc_b == 0, err_b[-2000:]
        assert "waiting for" in err_b and time.time() - t0 >= 3   # it waited for the lease, then broke it
    finally:
        a.kill()
        a.communicate()
    assert json.loads(out_b)["source"] == ref_metrics["source"]
    name = run_dir(FC.source(), CPU).name
    assert (root / name / "model.pt").read_bytes() == ref_snap[name]["model"]


@pytest.mark.parametrize("env, message", [(dict(RTLKIT_LOCK="nfs"), "RTLKIT_LOCK must be one of auto, flock, lease"),
                                          (dict(RTLKIT_LOCK="lease", RTLKIT_LOCK_LEASE_S="soon"), "positive number"),
                                          (dict(RTLKIT_LOCK="lease", RTLKIT_LOCK_LEASE_S="0"), "positive number")])
def test_a_bad_lock_setting_is_a_config_error_before_any_file(env, message, monkeypatch, runs_root):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        get_or_train(FC.source(), CPU, progress=False)
    assert not list(runs_root.glob("source-*"))


# --------------------------------------------------------------------------- corrupt artefacts

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A source and a NEFT fine-tune, trained and evaluated in this process, in a cache copied
    into each test."""
    root = tmp_path_factory.mktemp("built")
    old = os.environ.get("RTLKIT_RUNS")
    os.environ["RTLKIT_RUNS"] = str(root)
    try:
        out = {}
        for kind in ("source", "neft"):
            run = FC.run_of(kind)
            m = get_or_evaluate(run, FC.ATTACKS, CPU, progress=False, test_n=FC.TEST_N)
            out[kind] = (run, _numbers(m), {k: v.clone() for k, v in get_or_train(run, CPU, False).state_dict().items()})
    finally:
        if old is None:
            os.environ.pop("RTLKIT_RUNS")
        else:
            os.environ["RTLKIT_RUNS"] = old
    return root, out


def _numbers(m: dict) -> dict:
    return {k: v for k, v in m.items() if k.startswith(("clean_acc", "robust_acc"))}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero":
        path.write_bytes(bytes(len(data)))
    elif how == "flip":
        i = len(data) // 2
        junk = bytes(random.Random(0).randrange(256) for _ in range(64))
        path.write_bytes(data[:i] + junk + data[i + 64:])
    elif how == "delete":
        path.unlink()


def _artefact(folder: Path, which: str) -> Path:
    if which.startswith("eval"):
        return next(folder.glob("eval-*.json")).with_suffix(which[4:])
    if which == "checkpoint":
        return Checkpoints(folder / "checkpoint.pt").files()[0]
    return folder / which


@pytest.mark.parametrize("how", ["empty", "truncate", "zero", "flip", "delete"])
@pytest.mark.parametrize("which", ["model.pt", "train.json", "config.json", "complete.json", "checkpoint",
                                   "eval.json", "eval.csv"])
@pytest.mark.parametrize("kind", ["source", "neft"])
def test_a_broken_artefact_is_rebuilt_never_served(kind, which, how, built, runs_root, monkeypatch):
    root, out = built
    shutil.copytree(root, runs_root)
    run, numbers, state = out[kind]
    folder = run_dir(run, CPU)
    if which == "checkpoint":   # matters only to an unfinished run: make it one
        for name in ("complete.json", "model.pt"):
            (folder / name).unlink()
    target = _artefact(folder, which)
    _damage(target, how)
    with pytest.warns(UserWarning, match=re.escape(target.name)) if how != "delete" else warnings.catch_warnings():
        if how == "delete":   # a deleted artefact the marker lists warns; a deleted marker or evaluation need not
            warnings.simplefilter("ignore")
        m = get_or_evaluate(run, FC.ATTACKS, CPU, progress=False, test_n=FC.TEST_N)
        rebuilt = get_or_train(run, CPU, False).state_dict()
    assert _numbers(m) == numbers
    assert all(torch.equal(rebuilt[k], v) for k, v in state.items())
    if how != "delete":
        assert (target.parent / (target.name + ".corrupt")).is_file()
    assert not [p for p in runs_root.rglob("*.tmp")]


def test_an_edited_or_shortened_evaluation_is_recomputed(built, runs_root):
    root, out = built
    shutil.copytree(root, runs_root)
    run, numbers, _ = out["source"]
    path = next(run_dir(run, CPU).glob("eval-*.json"))
    m = json.loads(path.read_text())
    m["robust_acc"] = 0.99                                    # an edited number
    path.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="robust_acc"):
        assert _numbers(get_or_evaluate(run, FC.ATTACKS, CPU, progress=False, test_n=FC.TEST_N)) == numbers
    csv = path.with_suffix(".csv")                            # rows dropped, hash updated to match
    rows = pd.read_csv(csv).iloc[:40]
    rows.to_csv(csv, index=False)
    m = json.loads(path.read_text())
    m["csv_sha256"] = rtlkit_io.sha256_bytes(csv.read_bytes())
    path.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="40 rows"):
        assert _numbers(get_or_evaluate(run, FC.ATTACKS, CPU, progress=False, test_n=FC.TEST_N)) == numbers


def test_stale_temp_files_are_swept(built, runs_root):
    root, out = built
    shutil.copytree(root, runs_root)
    run = out["source"][0]
    folder = run_dir(run, CPU)
    orphan = folder / ".model.pt.abc123.tmp"
    orphan.write_bytes(b"x" * 1000)
    (folder / "complete.json").unlink()             # an unfinished run: its next training sweeps
    get_or_train(run, CPU, False)
    assert not orphan.exists()


# --------------------------------------------------------------------------- determinism

def test_the_same_run_in_two_empty_caches_writes_the_same_bytes(tmp_path, monkeypatch):
    blobs = []
    for name in ("a", "b"):
        monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / name))
        torch.manual_seed(len(name) * 99 + ord(name))        # a different global RNG state each time
        get_or_train(FC.source(), CPU, False)
        folder = run_dir(FC.source(), CPU)
        blobs.append([(folder / "model.pt").read_bytes(), Checkpoints(folder / "checkpoint.pt").files()[0].read_bytes()])
    assert blobs[0] == blobs[1]


def test_neft_does_not_depend_on_call_order_or_cache_history(tmp_path, monkeypatch):
    run = FC.run_of("neft")
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "fresh"))
    get_or_train(run, CPU, False)                       # source trained just before, in this process
    fresh = (run_dir(run, CPU) / "model.pt").read_bytes()
    src = run_dir(run.source, CPU)
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "history"))
    shutil.copytree(src, run_dir(run.source, CPU))      # source loaded from the cache instead
    torch.rand(12345)                                   # and other draws before it
    get_or_train(FC.run_of("plain"), CPU, False)        # and another fine-tune first
    get_or_train(run, CPU, False)
    assert (run_dir(run, CPU) / "model.pt").read_bytes() == fresh


def test_numerics_are_part_of_the_cache_key(monkeypatch):
    run = FC.source()
    assert run_dir(run, CPU).name == f"source-{stable_hash(run)}"          # fp32 CPU keys unchanged
    bf16 = Runtime("cpu", amp=True)
    assert run_dir(run, bf16) != run_dir(run, CPU)
    assert run_dir(run, Runtime("cpu", channels_last=True)) not in (run_dir(run, CPU), run_dir(run, bf16))
    trained = []
    real = runs.train
    monkeypatch.setattr(runs, "train", lambda *a, **k: trained.append(1) or real(*a, **k))
    get_or_evaluate(run, FC.ATTACKS, CPU, progress=False, test_n=16)
    m = get_or_evaluate(run, FC.ATTACKS, bf16, progress=False, test_n=16)   # not served the fp32 result
    assert len(trained) == 2 and m["numerics"]["autocast"] == "bfloat16"
    assert json.loads((run_dir(run, bf16) / "train.json").read_text())["numerics"]["autocast"] == "bfloat16"


# --------------------------------------------------------------------------- errors before compute

def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    rtlkit_io.atomic_torch_save({"w": torch.ones(3)}, path)
    old = path.read_bytes()
    monkeypatch.setattr(rtlkit_io, "_open_for_write", lambda tmp: open("/dev/full", "wb"))
    with pytest.raises(NoSpace, match=f"no space left on {re.escape(str(tmp_path))}"):
        rtlkit_io.atomic_torch_save({"w": torch.zeros(100_000)}, path)
    assert path.read_bytes() == old and not list(tmp_path.glob("*.tmp"))


def test_a_training_that_fails_before_its_first_checkpoint_leaves_no_run_folder(monkeypatch, runs_root):
    @dataclasses.dataclass(frozen=True)
    class Broken(StandardTraining):
        def batch_loss(self, *a, **k):
            raise RuntimeError("boom")

    run = dataclasses.replace(FC.source(), method=Broken(epochs=1, batch_size=32))
    with pytest.raises(RuntimeError, match="boom"):
        get_or_train(run, CPU, False)
    assert not run_dir(run, CPU).exists()


BAD_PARAMETERS = [   # (notebook parameters, what the one error must say)
    ({"eps": "abc"}, r"eps must be a number in \[0, 1\], not 'abc'"),
    ({"eps": 5}, r"eps must be a number in \[0, 1\], not 5"),
    ({"finetune_epochs": "two"}, r"finetune_epochs must be a whole number >= 1, not 'two'"),
    ({"source_epochs": 2.5}, r"source_epochs must be a whole number >= 1, not 2.5"),
    ({"seeds": []}, r"seeds is empty"),
    ({"ks": "[]"}, r"ks is empty"),
    ({"cartl_lams": "x"}, r"cartl_lams entry must be a number, not 'x'"),
    ({"seeds": [0.5]}, r"seeds entry must be a whole number >= 0, not 0.5"),
    ({"ks": [0]}, r"k=0 is not a block count"),
    ({"batch": 3}, r"unknown parameter 'batch'"),
    ({"cartl_choice": 0.4}, r"cartl_choice is a \(lambda, beta\) pair"),
    # issue 24: caught only after training before
    ({"l2_eps": float("inf")}, r"l2_eps must be a finite number in \(0, inf\), not inf"),
    ({"l2_eps": "inf"}, r"l2_eps must be a number in \(0, inf\), not 'inf'"),
    ({"attack_images": 1}, r"attack_images = 1 is fewer than the 2 classes of synthetic-c\[2-3\]"),
    ({"smooth_images": 1}, r"smooth_images = 1 is fewer than the 4 classes of synthetic-b"),
    ({"search_images": 1}, r"search_images = 1 is fewer than the 4 classes of synthetic-b"),
    ({"pv_samples": 3}, r"pv_samples = 3 is too few draws for median smoothing to certify any radius"),
]


@pytest.mark.parametrize("overrides,message", BAD_PARAMETERS, ids=[str(o) for o, _ in BAD_PARAMETERS])
def test_a_bad_parameter_is_a_config_error_naming_it_before_any_file(overrides, message, tmp_path, monkeypatch):
    figs, cache = tmp_path / "figures", tmp_path / "runs"
    monkeypatch.setattr(runs, "get_or_train", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(ConfigError, match=message):
        report.start("x", "smoke", str(figs), **overrides)
    assert not figs.exists() and not cache.exists()


def test_no_attacks_is_a_config_error(runs_root):
    with pytest.raises(ConfigError, match="attack"):
        get_or_evaluate(FC.source(), [], CPU, progress=False)
    assert not runs_root.exists()


def test_papermill_strings_and_scalars_are_parsed():
    from papermill.cli import _resolve_type
    assert profiles.get("smoke", ks=_resolve_type("[1,2,4]")).ks == (1, 2, 4)
    assert profiles.get("smoke", ks=_resolve_type("all")).ks == ("all",)
    assert profiles.get("smoke", ks=_resolve_type("3")).ks == (3,)
    assert profiles.get("smoke", seeds=0).seeds == (0,)
    assert profiles.get("smoke", eps=_resolve_type("0.05")).eps == 0.05
    assert profiles.get("smoke", cartl_choice="(0.01, 0.4)").cartl_choice == (0.01, 0.4)


def test_the_readme_papermill_example_parses_as_written():
    from papermill.cli import _resolve_type
    line = next(l for l in (REPO / "README.md").read_text().splitlines() if "papermill notebooks/" in l)
    argv = shlex.split(line[line.index("papermill notebooks/"):].rstrip("`. "))
    params = {argv[i + 1]: _resolve_type(argv[i + 2]) for i, a in enumerate(argv) if a == "-p"}
    profile = params.pop("profile")
    p = profiles.get(profile, gpu=False, **params)
    assert p.ks == (1, 2, 4, 8)


def test_a_missing_dataset_is_reported_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr(runs, "get_or_train", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(DatasetNotFound):
        report.start("x", "smoke", str(tmp_path / "figures"), target_name="cifar10")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_an_unwritable_cache_or_a_file_as_figures_folder_fails_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLKIT_RUNS", "/proc/rtlkit-cache")          # read-only, even for root
    with pytest.raises(ConfigError, match="run cache .* not writable"):
        report.start("x", "smoke", str(tmp_path / "figures"))
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "runs"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        report.start("x", "smoke", str(tmp_path / "afile" / "figures"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_the_users_thread_setting_is_honoured_and_recorded(tmp_path):
    code = ("import torch; from rtlkit.suite import session as report; s = report.start('x', 'smoke', %r); "
            "print(torch.get_num_threads())") % str(tmp_path / "f")
    for env, want in (({"OMP_NUM_THREADS": "1"}, "1"), ({"OMP_NUM_THREADS": "2", "RTLKIT_THREADS": "1"}, "1")):
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RTLKIT_THREADS")}
        out = subprocess.run([sys.executable, "-c", code], env={**base, **env, "RTLKIT_RUNS": str(tmp_path / "r")},
                             capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == want
    with pytest.raises(ConfigError, match="RTLKIT_THREADS"):
        os.environ["RTLKIT_THREADS"] = "many"
        try:
            report.start("x", "smoke", str(tmp_path / "f"))
        finally:
            del os.environ["RTLKIT_THREADS"]


# --------------------------------------------------------------------------- non-finite and mis-keyed cache entries

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", ["robust_acc", "clean_acc", "eval_seconds"])
def test_a_non_finite_number_in_an_evaluation_is_rebuilt_never_served(key, value, built, runs_root):
    root, out = built
    shutil.copytree(root, runs_root)
    run, numbers, _ = out["source"]
    path = next(run_dir(run, CPU).glob("eval-*.json"))
    m = json.loads(path.read_text())
    m[key] = value          # json writes NaN / Infinity, and reads them back as floats
    path.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="non-finite"):
        again = get_or_evaluate(run, FC.ATTACKS, CPU, progress=False, test_n=FC.TEST_N)
    assert _numbers(again) == numbers
    assert (path.parent / (path.name + ".corrupt")).is_file()


def test_a_nan_in_a_certificate_or_a_table_is_rebuilt_never_served(built, runs_root):
    from rtlkit.measure.smoothing import Smoothing
    root, out = built
    shutil.copytree(root, runs_root)
    run = out["source"][0]
    s = Smoothing(0.25, 10, 50, 0.01)
    first = runs.get_or_certify(run, s, eps=0.1, runtime=CPU, progress=False, test_n=16)
    path = runs.cert_path(run, s, 16, CPU)
    m = json.loads(path.read_text())
    m["smoothed_acc"] = float("nan")
    path.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="smoothed_acc"):
        again = runs.get_or_certify(run, s, eps=0.1, runtime=CPU, progress=False, test_n=16)
    assert again["smoothed_acc"] == first["smoothed_acc"] and np_finite(again["smoothed_acc"])

    def compute(model):
        return pd.DataFrame({"a": [0.25, 0.75], "blank": [float("nan")] * 2})
    df = runs.get_or_table(run, "probe", {"t": 1}, compute, CPU, progress=False)
    tpath = runs.table_path(run, "probe", {"t": 1}, CPU)
    assert runs.get_or_table(run, "probe", {"t": 1}, lambda m: pytest.fail("recomputed"), CPU, False).equals(df)
    m = json.loads(tpath.read_text())   # an all-blank column's mean is NaN on both sides: served
    m["column_means"]["a"] = float("nan")
    tpath.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="column_means|a do not match"):
        assert runs.get_or_table(run, "probe", {"t": 1}, compute, CPU, progress=False).equals(df)


def np_finite(v) -> bool:
    import math
    return math.isfinite(v)


def test_certificates_grouped_differently_never_share_a_key(built, runs_root):
    """certify seeds its noise once per group of images, so the grouping changes the counts."""
    from rtlkit.measure.smoothing import Smoothing
    root, out = built
    shutil.copytree(root, runs_root)
    run = out["source"][0]
    s = Smoothing(0.25, 10, 50, 0.01)
    paths = {n: runs.cert_path(run, s, 16, CPU, images_per_call=n) for n in (50, 4, 1)}
    assert len(set(paths.values())) == 3
    assert paths[50] == runs.cert_path(run, s, 16, CPU)   # the default keeps the files made before
    tables = {n: runs.get_or_certify(run, s, 0.1, CPU, False, 16, images_per_call=n)["table"] for n in (50, 4)}
    cols = ["index", "label", "predict", "count", "p_lower", "radius"]
    assert not tables[50][cols].equals(tables[4][cols])   # so the key must tell them apart
    assert runs.get_or_certify(run, s, 0.1, CPU, False, 16, images_per_call=4)["table"][cols].equals(tables[4][cols])


# every keyword of a cached measurement either changes its cache key or is shown not to change its result
RESULT_FREE = {"get_or_evaluate": {"runtime", "progress", "batch_size"},
               "get_or_certify": {"runtime", "progress", "eps"}}


@pytest.mark.parametrize("fn", list(RESULT_FREE))
def test_every_setting_of_a_cached_measurement_is_in_its_key_or_does_not_change_it(fn, built, runs_root):
    import inspect
    from rtlkit.measure.smoothing import Smoothing
    root, out = built
    shutil.copytree(root, runs_root)
    run = out["source"][0]
    s = Smoothing(0.25, 10, 50, 0.01)
    params = set(inspect.signature(getattr(runs, fn)).parameters) - {"run", "attacks", "smoothing"}
    keyed = {"get_or_evaluate": {"test_n", "split"}, "get_or_certify": {"test_n", "images_per_call"}}[fn]
    assert params == RESULT_FREE[fn] | keyed, f"a new setting of {fn}: put it in the key, or show it changes nothing"
    if fn == "get_or_evaluate":   # the batch size leaves every per-example row as it is
        ex = [evaluate_rows(run, bs) for bs in (500, 7)]
        assert ex[0].equals(ex[1])
        assert runs.eval_path(run, FC.ATTACKS, 8, CPU) != runs.eval_path(run, FC.ATTACKS, 16, CPU)
        assert runs.eval_path(run, FC.ATTACKS, 8, CPU, "train") != runs.eval_path(run, FC.ATTACKS, 8, CPU)
    else:
        assert runs.cert_path(run, s, 8, CPU) != runs.cert_path(run, s, 16, CPU)
        assert runs.cert_path(run, s, 8, CPU, images_per_call=3) != runs.cert_path(run, s, 8, CPU)


def evaluate_rows(run, batch_size):
    from rtlkit.measure.evaluate import evaluate
    from rtlkit.core.runtime import seed_all
    model = get_or_train(run, CPU, False)
    test = run.test_data()
    seed_all(run.seed)
    return evaluate(model, runs.D.subset(test, FC.TEST_N, run.data.seed), FC.ATTACKS, CPU, batch_size, False).examples


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", "3.5"])
def test_a_feature_record_that_is_not_a_json_object_is_rebuilt(content, built, runs_root):
    root, out = built
    shutil.copytree(root, runs_root)
    run = out["source"][0]
    z, y = runs.get_or_features(run, run.data, "test", CPU, progress=False)
    meta = next(run_dir(run, CPU).glob("features-*.json"))
    meta.write_text(content)
    with pytest.warns(UserWarning, match="features-"):
        z2, y2 = runs.get_or_features(run, run.data, "test", CPU, progress=False)
    assert torch.equal(z, z2) and torch.equal(y, y2)
    assert isinstance(json.loads(meta.read_text()), dict)


def test_a_figure_save_killed_mid_write_leaves_no_temp_file_for_long(tmp_path):
    """A dead writer's temp file in the figures folder goes at the next save; a live one's stays."""
    figs = tmp_path / "figs"
    proc = subprocess.run([sys.executable, "-c", (
        "import os, sys; sys.argv = ['x']; os.environ['RTLKIT_FAULT'] = 'temp-written:1'\n"
        "from rtlkit.core import io\n"
        f"io.atomic_write_bytes({str(figs / '01_x.png')!r}, b'png' * 1000)")], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    dead = list(figs.glob(".*.tmp"))
    assert len(dead) == 1 and not (figs / "01_x.png").exists()
    live = figs / f".02_y.png.{rtlkit_io._HOST}-{os.getpid()}.abc.tmp"   # this process: alive
    live.write_bytes(b"x")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sess = report.Session("t", profiles.get("smoke", gpu=False), CPU, figs)
    fig = plt.figure()
    sess.save(fig, "01_x", pd.DataFrame({"a": [1]}))
    plt.close(fig)
    assert not dead[0].exists() and live.exists() and (figs / "01_x.png").is_file()
