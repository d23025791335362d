"""rtlkit.suite.launch: a suite as submitit jobs (the local executor here; Slurm in the same code path).
Every run is trained by exactly one job, waves keep a fine-tune after its source, the notebook then
trains nothing, a failing job is retried once and reported with its log, and bad settings fail
before any job is submitted."""
import dataclasses
import functools
from pathlib import Path

import pytest

from rtlkit.suite import figures
from rtlkit.suite import launch
from rtlkit.suite import plan
from rtlkit.studies import profiles
from rtlkit import ConfigError
from rtlkit.core.errors import DatasetNotFound
from rtlkit.runs.specs import DataSpec

pytest.importorskip("submitit")


def test_the_local_executor_runs_notebook_01_as_parallel_jobs_each_run_trained_once(runs_root, tmp_path):
    P = profiles.get("smoke")
    planned = plan.plan(P, ["01"])
    trainings = len(planned.trainings)
    lines = []
    summary = launch.launch("smoke", ["01"], "local", jobs=2, threads=1, poll_s=0.2, log=lines.append)
    assert summary["failed"] == [] and summary["trained"] == trainings          # each run trained by one job
    assert summary["done"] == trainings + len(planned.evaluations)
    assert [l for l in lines if "wave" in l] == ["[rtlkit.suite.launch] wave 1/3: 1 sources",
                                                "[rtlkit.suite.launch] wave 2/3: 6 fine-tunes and heads",
                                                "[rtlkit.suite.launch] wave 3/3: 7 evaluations"]
    done = plan.plan(P, ["01"])
    assert done.totals(include_cached=False)["evaluations"] == 0
    assert not any(not r["cached"] for r in done.trainings.values())
    # the notebook then trains nothing: every train.json keeps its bytes and no run folder appears
    before = {p: p.read_bytes() for p in runs_root.glob("*/train.json")}
    figures.run("smoke", figures_dir=str(tmp_path / "figs"), only=["01"], out_dir=str(tmp_path / "executed"))
    after = {p: p.read_bytes() for p in runs_root.glob("*/train.json")}
    assert after == before and len(before) == trainings
    assert all(r["state"] == "done" for r in launch.status("smoke", ["01"]))
    again = launch.launch("smoke", ["01"], "local", jobs=2, log=lines.append)  # nothing left to submit
    assert again == {"done": 0, "failed": [], "trained": 0}


def test_a_failing_job_is_retried_once_then_reported_with_its_log(runs_root):
    import submitit
    item = launch.Item(str(runs_root / "never.json"), 2, "a broken item", functools.partial(int, "not a number"))
    ex = submitit.LocalExecutor(folder=str(runs_root / "launch" / "jobs"))
    summary = launch.run_waves([item], ex, "local", jobs=1, gpus=[], gpus_per_job=1, poll_s=0.2, log=lambda s: None)
    assert item.state["state"] == "failed" and item.state["attempts"] == 2
    (what, log), = summary["failed"]
    assert what == "a broken item" and Path(log).is_file()
    assert launch.read_status()[item.key]["state"] == "failed"


@pytest.mark.parametrize("kw, message", [
    (dict(executor_kind="pbs"), "unknown executor"),
    (dict(gpus_per_job=0), "gpus-per-job"),
    (dict(jobs=0), "--jobs"),
])
def test_bad_launch_settings_fail_before_any_job(kw, message, runs_root):
    with pytest.raises(ConfigError, match=message):
        launch.launch("smoke", **kw)
    assert not (runs_root / "launch").exists()


def test_missing_data_is_one_error_in_the_submitting_process(runs_root, monkeypatch, tmp_path):
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "empty"))
    smoke = profiles.get("smoke")
    monkeypatch.setattr(launch, "get", lambda name, **kw: dataclasses.replace(smoke, source=DataSpec("cifar100")))
    with pytest.raises(DatasetNotFound):
        launch.launch("smoke")
    assert not (runs_root / "launch").exists()


def test_a_job_of_two_gpus_runs_its_training_and_evaluation_on_two_processes(runs_root):
    """--gpus-per-job 2: each job is two submitit tasks joined into one torch.distributed group
    (gloo here, no GPU), so its training is data-parallel and its evaluation sharded."""
    import json
    work, _ = launch.items(profiles.get("smoke"), ["01"])
    transfer = next(i for i in work if i.wave == 1)
    folder = Path(transfer.key).parent
    mine = [i for i in work if i.wave == 0 or Path(i.key).parent == folder][:3]
    assert [i.wave for i in mine] == [0, 1, 2]
    ex = launch.executor("local", runs_root / "launch" / "jobs", 2, None, 10)
    summary = launch.run_waves(mine, ex, "local", jobs=1, gpus=[], gpus_per_job=2, threads=1, poll_s=0.2,
                               log=lambda s: None)
    assert summary["failed"] == [] and summary["done"] == 3 and summary["trained"] == 2
    source = Path(mine[0].key).parent
    for f in (source, folder):
        assert json.loads((f / "train.json").read_text())["processes"] == 2
    assert json.loads(Path(mine[2].key).read_text())["processes"] == 2
