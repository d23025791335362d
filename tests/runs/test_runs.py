"""The run cache (miss, hit, one source for every transfer), cached evaluations with per-example
rows, resume after a kill, and atomic writes."""
import dataclasses
import errno
import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from rtlkit.core import io as rtlkit_io
from rtlkit.runs import cache as runs
from rtlkit.measure.attacks import PGD
from rtlkit.core.io import atomic_write_json
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun, stable_hash, to_jsonable
from rtlkit.runs.cache import get_or_evaluate, get_or_train
from rtlkit.runs.store import is_cached, run_dir
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import AdversarialTraining, Checkpoints, StandardTraining, train
from rtlkit.train.transfer import TransferPolicy

from conftest import state_of, tiny_model

CPU = Runtime("cpu")   # bit-identical resumes are promised on the CPU


def source(seed=0, epochs=1):
    return SourceRun(DataSpec("synthetic-a"), WRNSpec(10, 1, stem_stride=2),
                     AdversarialTraining(epochs=epochs, batch_size=64, attack=PGD(0.1, 2, 0.05)), seed)


def tmp_files(folder):
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".tmp")]


def no_training(*a, **k):
    raise AssertionError("a cached run was trained again")


def test_cache_miss_then_hit(monkeypatch, runs_root):
    run = source()
    assert not is_cached(run)
    m1 = get_or_train(run, CPU, progress=False)
    assert is_cached(run)
    assert run_dir(run).parent == runs_root and run_dir(run).name.startswith("source-")
    names = {p.name for p in run_dir(run).iterdir()}
    assert {"config.json", "model.pt", "train.json", "complete.json"} <= names
    assert [n for n in names if n.startswith("checkpoint-e0001-")] == [n for n in names if n.startswith("checkpoint")]
    assert json.loads((run_dir(run) / "config.json").read_text()) == json.loads(json.dumps(to_jsonable(run)))
    assert [h["epoch"] for h in json.loads((run_dir(run) / "train.json").read_text())["history"]] == [1]

    monkeypatch.setattr(runs, "train", no_training)
    m2 = get_or_train(run, CPU, progress=False)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not m2.training
    assert not tmp_files(runs_root)


def test_the_cached_model_is_the_trained_one_not_a_fresh_one(monkeypatch):
    run = source()
    trained = state_of(get_or_train(run, CPU, progress=False))
    monkeypatch.setattr(runs, "train", no_training)
    fresh = state_of(runs._initial_model(run, CPU, False))
    assert not torch.equal(fresh["blocks.0.0.conv.weight"], trained["blocks.0.0.conv.weight"])


def test_weights_verified_once_are_not_read_again_until_a_file_changes(monkeypatch):
    """A cached run's weights, verified once in this process, are served without reading or
    hashing again; a model.pt replaced since (another inode, as every rtlkit writer leaves it) is
    read and checked again, and when it is broken, set aside and retrained, never served."""
    run = source()
    trained = state_of(get_or_train(run, CPU, progress=False))
    monkeypatch.setattr(runs, "train", no_training)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    first = state_of(get_or_train(run, CPU, progress=False))
    second = state_of(get_or_train(run, CPU, progress=False))
    assert len(loads) == 1
    assert all(torch.equal(trained[k], first[k]) and torch.equal(trained[k], second[k]) for k in trained)
    # served tensors are copies into a new model: changing one model leaves the next load intact
    with torch.no_grad():
        get_or_train(run, CPU, progress=False).blocks[0][0].conv.weight.add_(1.0)
    assert torch.equal(state_of(get_or_train(run, CPU, progress=False))["blocks.0.0.conv.weight"],
                       trained["blocks.0.0.conv.weight"])
    folder = run_dir(run)
    blob = bytearray((folder / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF                      # same size, another file
    rtlkit_io.atomic_write_bytes(folder / "model.pt", bytes(blob))
    monkeypatch.setattr(runs, "train", train)         # the broken run is retrained
    with pytest.warns(UserWarning, match="does not match the sha256"):
        again = state_of(get_or_train(run, CPU, progress=False))
    assert (folder / "model.pt.corrupt").exists()
    assert all(torch.equal(trained[k], again[k]) for k in trained)   # the same bits, retrained


def test_hash_is_stable_and_every_setting_makes_a_new_run():
    assert stable_hash(source()) == stable_hash(source())
    assert run_dir(source()) == run_dir(source())
    dirs = {run_dir(source()), run_dir(source(seed=1)), run_dir(source(epochs=2)),
            run_dir(dataclasses.replace(source(), data=DataSpec("synthetic-a", train_n=128))),
            run_dir(dataclasses.replace(source(), model=WRNSpec(16, 1, stem_stride=2)))}
    assert len(dirs) == 5
    # floats: rounding noise is the same config, a real change is not
    at = source().method
    assert stable_hash(dataclasses.replace(at, lr=0.1 + 0.2)) == stable_hash(dataclasses.replace(at, lr=0.3))
    assert stable_hash(dataclasses.replace(at, lr=0.3)) != stable_hash(dataclasses.replace(at, lr=0.3001))
    t1 = TransferRun(source(), DataSpec("synthetic-b"), TransferPolicy(k=2), StandardTraining(epochs=1))
    assert run_dir(t1).name.startswith("transfer-")
    assert len({run_dir(t1), run_dir(dataclasses.replace(t1, policy=TransferPolicy(k=3))),
                run_dir(dataclasses.replace(t1, policy=TransferPolicy(k=2, bn_stats="update"))),
                run_dir(dataclasses.replace(t1, source=source(seed=1)))}) == 4


def test_hash_does_not_depend_on_the_python_process():
    code = ("from rtlkit.measure.attacks import PGD; from rtlkit.core.models.wrn import WRNSpec; "
            "from rtlkit.runs.specs import DataSpec, SourceRun, stable_hash; "
            "from rtlkit.train.loop import AdversarialTraining; "
            "print(stable_hash(SourceRun(DataSpec('synthetic-a'), WRNSpec(10, 1, stem_stride=2), "
            "AdversarialTraining(epochs=1, batch_size=64, attack=PGD(0.1, 2, 0.05)), 0)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert out.stdout.strip() == stable_hash(source())


def test_one_source_serves_every_transfer(monkeypatch):
    calls = []
    real_train = runs.train

    def counting(model, data, method, *a, **k):
        calls.append(type(method).__name__)
        return real_train(model, data, method, *a, **k)

    monkeypatch.setattr(runs, "train", counting)
    for k in (1, 2, 5):
        t = TransferRun(source(), DataSpec("synthetic-b", train_n=64), TransferPolicy(k=k),
                        StandardTraining(epochs=1, batch_size=32))
        get_or_train(t, CPU, progress=False)
    assert calls == ["AdversarialTraining", "StandardTraining", "StandardTraining", "StandardTraining"]


def test_evaluation_is_cached_with_one_row_per_test_example(monkeypatch, runs_root):
    run = source()
    attacks = [PGD(0.1, 3, 0.05)]
    m = get_or_evaluate(run, attacks, CPU, progress=False)
    assert 0 <= m["robust_acc"] <= m["clean_acc"] <= 1
    folder = run_dir(run)
    js, csv = list(folder.glob("eval-*.json")), list(folder.glob("eval-*.csv"))
    assert len(js) == 1 and len(csv) == 1 and js[0].stem == csv[0].stem
    rows = pd.read_csv(csv[0])
    test = run.test_data()
    assert len(rows) == len(test) == m["n_test"] == 256
    assert rows["index"].tolist() == test.index.tolist() and rows["label"].tolist() == test.y.tolist()
    assert rows["clean_correct"].mean() == pytest.approx(m["clean_acc"])
    assert rows["robust_correct"].mean() == pytest.approx(m["robust_acc"])
    assert (rows["robust_correct"] <= rows["clean_correct"]).all()

    # the second call reads the cache: no model, no attack
    monkeypatch.setattr(runs, "get_or_train", lambda *a, **k: pytest.fail("evaluated again"))
    monkeypatch.setattr(runs, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    assert get_or_evaluate(run, attacks, CPU, progress=False) == m
    # another attack is another evaluation
    with pytest.raises(pytest.fail.Exception):
        get_or_evaluate(run, [PGD(0.1, 4, 0.05)], CPU, progress=False)
    assert not tmp_files(runs_root)


def test_the_train_split_measures_the_images_the_model_was_trained_on_under_a_key_of_its_own(runs_root):
    """split="train" (the robust generalisation gap of bench/pretraining_scarcity): the rows are a
    class-balanced subset of the training images, cached beside the test evaluation, never for it."""
    from rtlkit import ConfigError
    run = source()
    attacks = [PGD(0.1, 3, 0.05)]
    test_path = runs.eval_path(run, attacks, 20, CPU)
    assert runs.eval_path(run, attacks, 20, CPU, "test") == test_path   # the test split keeps its old key
    train_path = runs.eval_path(run, attacks, 20, CPU, "train")
    assert train_path != test_path
    m = get_or_evaluate(run, attacks, CPU, progress=False, test_n=20, split="train")
    assert m["split"] == "train" and train_path.is_file() and not test_path.exists()
    rows = pd.read_csv(train_path.with_suffix(".csv"))
    train = runs.D.subset(run.train_data(), 20, run.data.seed)
    assert m["n_test"] == len(rows) == len(train)
    assert rows["index"].tolist() == train.index.tolist() and rows["label"].tolist() == train.y.tolist()
    assert set(rows["index"]) <= set(run.train_data().index.tolist())
    t = get_or_evaluate(run, attacks, CPU, progress=False, test_n=20)
    assert "split" not in t and test_path.is_file()
    assert get_or_evaluate(run, attacks, CPU, progress=False, test_n=20, split="train") == m   # cached
    with pytest.raises(ConfigError, match="split must be one of test, train"):
        get_or_evaluate(run, attacks, CPU, progress=False, split="validation")


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    method = AdversarialTraining(epochs=3, lr=0.05, batch_size=64, attack=PGD(0.1, 2, 0.05))
    data = runs.D.synthetic("train", seed=3, n_train=192, size=12, noise=0.3)
    straight = tiny_model(seed=3)
    hist_a = train(straight, data, method, CPU, checkpoint=tmp_path / "a.pt", seed=7, progress=False)

    def kill(epoch, rec):
        if epoch == 1:
            raise KeyboardInterrupt

    killed = tiny_model(seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(killed, data, method, CPU, checkpoint=tmp_path / "b.pt", seed=7, progress=False, on_epoch_end=kill)
    assert Checkpoints(tmp_path / "b.pt").latest("cpu")["epoch"] == 1

    resumed = tiny_model(seed=3)          # a fresh model built the same way
    epochs_run = []
    hist_b = train(resumed, data, method, CPU, checkpoint=tmp_path / "b.pt", seed=7, progress=False,
                   on_epoch_end=lambda e, r: epochs_run.append(e))
    assert epochs_run == [2, 3]           # it resumed, it did not start over
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(h["epoch"], h["loss"], h["lr"]) for h in hist_a] == [(h["epoch"], h["loss"], h["lr"]) for h in hist_b]
    assert not tmp_files(tmp_path)


@dataclasses.dataclass(frozen=True)
class WithSetupState(StandardTraining):
    """A method whose hooks need the state its setup returned (as LwF's do)."""

    def setup(self, model, data, runtime):
        return {"scale": 1.0}

    def on_epoch_start(self, model, epoch, state):
        assert set(state) == {"scale"}, f"the hooks got {sorted(state)} instead of setup's state"

    def batch_loss(self, model, fwd, x, y, runtime, idx=None, state=None):
        loss, logits = super().batch_loss(model, fwd, x, y, runtime)
        return state["scale"] * loss, logits


def test_a_resumed_method_keeps_its_setup_state(tmp_path, syn):
    method = WithSetupState(epochs=2, batch_size=64)
    straight = tiny_model(seed=1)
    train(straight, syn, method, CPU, checkpoint=tmp_path / "a.pt", progress=False)

    def kill(epoch, rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(seed=1), syn, method, CPU, checkpoint=tmp_path / "b.pt", progress=False, on_epoch_end=kill)
    resumed = tiny_model(seed=1)
    train(resumed, syn, method, CPU, checkpoint=tmp_path / "b.pt", progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())


def test_get_or_train_resumes_an_interrupted_run(monkeypatch, tmp_path, runs_root):
    run = source(epochs=2)
    real_train = runs.train

    def killed_after_epoch_1(*a, **k):
        def kill(epoch, rec):
            raise KeyboardInterrupt
        return real_train(*a, **k, on_epoch_end=kill)

    monkeypatch.setattr(runs, "train", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        get_or_train(run, CPU, progress=False)
    assert not is_cached(run) and Checkpoints(run_dir(run) / "checkpoint.pt").files()
    monkeypatch.setattr(runs, "train", real_train)
    resumed = get_or_train(run, CPU, progress=False)
    history = json.loads((run_dir(run) / "train.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]

    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "elsewhere"))   # the same run, never interrupted
    straight = get_or_train(run, CPU, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)

    class BrokenFile(io.BytesIO):
        def write(self, data):
            super().write(data[:3])
            raise OSError(errno.EIO, "input/output error")

    monkeypatch.setattr(rtlkit_io, "_open_for_write", lambda tmp: BrokenFile())
    with pytest.raises(OSError, match="input/output"):
        atomic_write_json(path, {"a": 2})          # fails while writing the temp file
    assert json.loads(path.read_text()) == {"a": 1}
    assert not tmp_files(tmp_path)
    monkeypatch.undo()
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and not tmp_files(tmp_path)
