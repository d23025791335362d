"""Data parallelism under torchrun (gloo, 2 CPU processes): with synced BN statistics the same
weights as one process; a kill between epochs resumes to an uninterrupted run's weights; only
rank 0 writes. (CI has no GPU: NCCL and SyncBatchNorm proper are exercised by bench/device.sh.)"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtlkit.core import distributed
from rtlkit import ConfigError
from rtlkit.runs.cache import get_or_train
from rtlkit.runs.store import is_cached, run_dir

import ddp_child  # noqa: E402

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
pytestmark = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not found")


RENDEZVOUS = ("DistNetworkError", "Address already in use", "EADDRINUSE", "RendezvousConnectionError")


def launch(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """torchrun, once more if its rendezvous (a free local port) failed: that is the launcher's
    luck, not rtlkit's result."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and any(m in r.stderr for m in RENDEZVOUS) and "RTLKIT_FAULT" not in env:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return r


def torchrun(runs: Path, *kinds: str, n: int = 2, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "RTLKIT_RUNS": str(runs), "OMP_NUM_THREADS": "1", **env}
    return launch([TORCHRUN, f"--nproc_per_node={n}", "--standalone", str(Path(__file__).resolve().parents[1] / "support" / "ddp_child.py"),
                   *kinds], e)


def weights(runs: Path, run) -> dict:
    return torch.load(runs / run_dir(run).name / "model.pt", weights_only=True)


def test_two_processes_with_synced_bn_train_the_weights_of_one(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("RTLKIT_RUNS", str(one))
    get_or_train(ddp_child.source(), progress=False)
    r = torchrun(two, "source", RTLKIT_SYNC_BN="1")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = weights(one, ddp_child.source()), weights(two, ddp_child.source())
    assert set(a) == set(b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    import json
    tj = json.loads((two / run_dir(ddp_child.source()).name / "train.json").read_text())
    assert tj["processes"] == 2 and tj["sync_bn"] is True
    assert not list(two.glob("*/*.tmp*"))                       # one writer: nothing half-written


def test_methods_that_reach_past_forward_or_change_what_trains_match_one_process(tmp_path, monkeypatch):
    """Under DistributedDataParallel: FDM (its attack, adversarial and clean ``features`` and
    ``forward_from`` in one step) and LwF (a head-only warm epoch, then the whole network: the DDP
    wrapper is built again) train the one-process weights; SimCLR's loss, gradient and accuracy on
    2 ranks are one process's on the global batch, and SimCLR trains through the gathered loss."""
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("RTLKIT_RUNS", str(one))
    for kind in ("fdm", "lwf"):
        get_or_train(ddp_child.run_of(kind), progress=False)
    r = torchrun(two, "fdm", "lwf", "nt_xent", "simclr", RTLKIT_SYNC_BN="1")
    assert r.returncode == 0, r.stderr[-2000:]
    for kind in ("fdm", "lwf"):
        run = ddp_child.run_of(kind)
        a, b = weights(one, run), weights(two, run)
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert worst < 1e-5, (kind, worst)
    simclr = weights(two, ddp_child.run_of("simclr"))
    init = ddp_child.run_of("simclr").build_model().state_dict()
    assert not torch.equal(simclr["blocks.0.0.conv.weight"], init["blocks.0.0.conv.weight"])
    lwf = weights(two, ddp_child.run_of("lwf"))
    src = weights(two, ddp_child.source())
    body = [k for k in src if k.startswith("blocks.0.") and "conv" in k]   # BN affine frozen: convs only
    assert body and all(not torch.equal(lwf[k], src[k]) for k in body)   # the body trained after the warm epoch


def test_a_kill_between_epochs_resumes_to_the_uninterrupted_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert torchrun(whole, "source").returncode == 0
    r = torchrun(killed, "source", RTLKIT_FAULT="step:6")       # 4 steps an epoch: dies in epoch 2
    assert r.returncode != 0
    folder = killed / run_dir(ddp_child.source()).name
    assert list(folder.glob("checkpoint-e0001-*.pt")) and not (folder / "complete.json").exists()
    assert torchrun(killed, "source").returncode == 0            # resumes from epoch 1's checkpoint
    a, b = weights(whole, ddp_child.source()), weights(killed, ddp_child.source())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_two_process_run_killed_mid_way_resumes_in_one_process(tmp_path, monkeypatch):
    """A checkpoint holds no trace of the world size: a synced-BN 2-process run killed in epoch 2
    finishes in one process with the one-process run's weights (within 1e-5)."""
    one, killed = tmp_path / "one", tmp_path / "killed"
    monkeypatch.setenv("RTLKIT_RUNS", str(one))
    get_or_train(ddp_child.source(), progress=False)
    r = torchrun(killed, "source", RTLKIT_SYNC_BN="1", RTLKIT_FAULT="step:6")
    assert r.returncode != 0
    folder = killed / run_dir(ddp_child.source()).name
    assert list(folder.glob("checkpoint-e0001-*.pt")) and not (folder / "complete.json").exists()
    monkeypatch.setenv("RTLKIT_RUNS", str(killed))
    get_or_train(ddp_child.source(), progress=False)   # resumes epoch 1's checkpoint, alone
    a, b = weights(one, ddp_child.source()), weights(killed, ddp_child.source())
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst


def test_two_processes_evaluate_and_certify_to_the_one_process_tables(tmp_path, monkeypatch):
    """The test set's batches (certification: its groups of images) dealt out to 2 ranks, the rows
    gathered: the per-example CSV and TSV are the one-process files, byte for byte (the TSV's
    timing column aside), though PGD and foolbox draw their random starts from one stream."""
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("RTLKIT_RUNS", str(one))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as each torchrun child: the same kernels
    try:
        ddp_child.evaluate(), ddp_child.certify()
    finally:
        torch.set_num_threads(threads)
    folder = run_dir(ddp_child.source()).name
    (two / folder).mkdir(parents=True)
    for f in (one / folder).iterdir():   # the same trained model; no evaluation
        if f.name.split("-")[0] not in ("eval", "cert"):
            shutil.copy(f, two / folder / f.name)
    r = torchrun(two, "evaluate", "certify")
    assert r.returncode == 0, r.stderr[-2000:]
    for pattern in ("eval-*.csv", "cert-*.tsv"):
        a, = (one / folder).glob(pattern)
        b = two / folder / a.name
        cut = (lambda t: [line.rsplit("\t", 1)[0] for line in t.splitlines()]) if pattern.endswith("tsv") else str
        assert cut(a.read_text()) == cut(b.read_text()), pattern
    import json
    assert json.loads(next((two / folder).glob("eval-*.json")).read_text())["processes"] == 2
    assert not list(two.glob("*/*.tmp*"))


def test_more_processes_than_test_examples_is_one_error_before_any_work(monkeypatch, runs_root):
    from rtlkit.runs.cache import get_or_certify, get_or_evaluate
    monkeypatch.setattr(distributed, "world_size", lambda: 100)
    with pytest.raises(ConfigError, match="100 processes but only 72 test examples"):
        get_or_evaluate(ddp_child.source(), ddp_child.ATTACKS, test_n=72)
    with pytest.raises(ConfigError, match="100 processes but only 10 test examples"):
        get_or_certify(ddp_child.source(), ddp_child.SMOOTHING, 0.1, test_n=10)
    assert not is_cached(ddp_child.source())   # nothing trained


def test_a_global_batch_must_split_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.world_size() == 1          # an environment alone shards nothing: no group, no all-reduce
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match="does not split over 3"):
        distributed.check_batch(32, 128)
    with pytest.raises(ConfigError, match="only 2 training examples"):
        distributed.check_batch(3, 2)


def test_rtlkit_run_trains_and_evaluates_a_suite_by_name_under_torchrun(tmp_path, capsys, monkeypatch):
    from rtlkit.suite import plan
    from rtlkit.studies import profiles
    from rtlkit.suite import run as cli
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "runs"))
    assert cli.main(["--profile", "smoke", "--only", "01", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    trainings, evaluations = [n for n in names if "/" not in n], [n for n in names if "/" in n]
    assert trainings[0].startswith("source-") and len(trainings) == 7
    assert evaluations and all(n.split("/")[1].startswith("eval-") for n in evaluations)
    assert cli.main(["not-a-run", "--profile", "smoke"]) == 2
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = launch([TORCHRUN, "--nproc_per_node=2", "--standalone", "-m", "rtlkit.suite.run", "--profile", "smoke",
                "--only", "01", "--all"], e)
    assert r.returncode == 0, r.stderr[-3000:]
    p = plan.plan(profiles.get("smoke"), ["01"])
    missing = [row["what"] for row in p.trainings.values() if not row["cached"]]
    missing += [row["path"] for row in p.evaluations.values() if not row["cached"]]
    assert not missing, (missing, r.stdout[-1500:], r.stderr[-1500:])   # all done, by 2 processes


def test_rtlkit_run_with_more_processes_than_test_examples_fails_before_any_training(tmp_path, capsys, monkeypatch):
    from rtlkit.suite import run as cli
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "runs"))
    assert cli.main(["--profile", "smoke", "--only", "01", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    monkeypatch.setattr(distributed, "world_size", lambda: 10 ** 6)
    assert cli.main([names[0], names[-1], "--profile", "smoke", "--only", "01"]) == 2
    assert "1000000 processes but only" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("source-*"))   # the source was named first, and not trained
