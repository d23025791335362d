"""Run cache (hit/miss, shared source), per-example results, and resume after a kill."""
import dataclasses

import pandas as pd
import pytest
import torch

from rtlkit import runs
from rtlkit.attacks import PGD
from rtlkit.models import WRNSpec
from rtlkit.runs import DataSpec, SourceRun, TransferRun, get_or_evaluate, get_or_train, is_cached, run_dir, stable_hash
from rtlkit.training import AdversarialTraining, StandardTraining, train
from rtlkit.transfer import TransferPolicy

from conftest import TINY, tiny_model


def source(seed=0, epochs=1):
    return SourceRun(DataSpec("synthetic-a", train_n=128), TINY,
                     AdversarialTraining(epochs=epochs, batch_size=64, attack=PGD(0.1, 2, 0.05)), seed)


def test_cache_miss_then_hit(monkeypatch):
    run = source()
    assert not is_cached(run)
    m1 = get_or_train(run, progress=False)
    assert is_cached(run)
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("a cached run was trained again"))
    m2 = get_or_train(run, progress=False)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    folder = run_dir(run)
    assert {"config.json", "model.pt", "train.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.tmp"))


def test_hash_is_stable_and_settings_make_new_runs():
    assert stable_hash(source()) == stable_hash(source())
    assert run_dir(source()) != run_dir(source(seed=1)) != run_dir(source(epochs=2))
    t1 = TransferRun(source(), DataSpec("synthetic-b"), TransferPolicy(k=2), StandardTraining(epochs=1))
    t2 = dataclasses.replace(t1, policy=TransferPolicy(k=3))
    assert run_dir(t1) != run_dir(t2)


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
        get_or_train(t, progress=False)
    assert calls == ["AdversarialTraining", "StandardTraining", "StandardTraining", "StandardTraining"]


def test_evaluation_is_cached_with_per_example_rows():
    run = source()
    atk = [PGD(0.1, 3, 0.05)]
    m = get_or_evaluate(run, atk, progress=False)
    assert 0 <= m["robust_acc"] <= m["clean_acc"] <= 1
    csv = list(run_dir(run).glob("eval-*.csv"))
    assert len(csv) == 1
    rows = pd.read_csv(csv[0])
    assert len(rows) == len(run.test_data()) == m["n_test"]
    assert rows["robust_correct"].mean() == pytest.approx(m["robust_acc"])
    assert get_or_evaluate(run, atk, progress=False) == m


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, syn):
    method = AdversarialTraining(epochs=3, lr=0.05, batch_size=64, attack=PGD(0.1, 2, 0.05))
    straight = tiny_model(seed=3)
    train(straight, syn, method, checkpoint=tmp_path / "a.pt", seed=7, progress=False)

    def kill(epoch, rec):
        if epoch == 1:
            raise KeyboardInterrupt

    killed = tiny_model(seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(killed, syn, method, checkpoint=tmp_path / "b.pt", seed=7, progress=False, on_epoch_end=kill)
    resumed = tiny_model(seed=99)  # whatever it starts from, the checkpoint wins
    hist = train(resumed, syn, method, checkpoint=tmp_path / "b.pt", seed=7, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("*.tmp"))
