"""The training loop's step budget: ``steps=`` instead of epochs gives every data size the same
number of updates (CARTL Fig. 5, Shafahi Fig. 3), with milestones as fractions of the steps."""
import pytest
import torch

from rtlkit.studies import profiles
from rtlkit.runs.cache import recording
from rtlkit.runs.specs import to_jsonable
from rtlkit.core.runtime import Runtime
from rtlkit.studies import cartl
from rtlkit.train.loop import Checkpoints, StandardTraining, train

from conftest import tiny_model

CPU = Runtime("cpu")


def test_a_step_budget_runs_exactly_that_many_steps_with_milestones_in_steps(syn):
    # 256 images, batch 64: 4 steps an epoch; 10 steps span 3 epochs, the last cut to 2 steps
    method = StandardTraining(epochs=99, lr=0.1, batch_size=64, steps=10, milestones=(0.5,), gamma=0.1)
    lrs = []
    hist = train(tiny_model(), syn, method, CPU, progress=False, on_epoch_end=lambda e, r: lrs.append(r["lr"]))
    assert [h["images"] for h in hist] == [256, 256, 128]
    assert lrs == pytest.approx([0.1, 0.01, 0.01])       # decayed after step 5, within epoch 2


def test_an_epoch_budget_keeps_its_cache_key():
    assert "steps" not in to_jsonable(StandardTraining(epochs=6))
    assert to_jsonable(StandardTraining(epochs=6, steps=100))["steps"] == 100


def test_a_step_budget_resumes_to_the_same_bits(syn, tmp_path):
    method = StandardTraining(lr=0.05, batch_size=64, steps=7)
    straight = tiny_model(seed=4)
    train(straight, syn, method, CPU, checkpoint=tmp_path / "a.pt", progress=False)

    def kill(epoch, rec):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(seed=4), syn, method, CPU, checkpoint=tmp_path / "b.pt", progress=False, on_epoch_end=kill)
    assert Checkpoints(tmp_path / "b.pt").latest("cpu")["epoch"] == 1
    resumed = tiny_model(seed=4)
    train(resumed, syn, method, CPU, checkpoint=tmp_path / "b.pt", progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())


def test_every_data_fraction_gets_the_same_number_of_updates():
    p = profiles.get("smoke", cartl_finetune_epochs=3)
    budget = p.finetune_steps(p.target, 3)
    assert budget == 3 * (256 // p.finetune.batch_size)
    with recording() as rec:
        df = cartl.low_data(p, None, False)
    assert set(df.steps) == {budget}
    for run, _, _ in rec.evaluations:
        frac = run.data.fraction
        if frac == 1:
            assert run.method.steps is None and run.method.epochs == 3
        else:
            assert run.method.steps == budget
