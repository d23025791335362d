"""Shafahi et al. groundwork (issue 13): N-per-class subsets, MLP heads inside head.fc, and the
input gradient, against hand computations."""
import pytest
import torch

from rtlkit import ConfigError
from rtlkit.measure.attacks import attack_mode
from rtlkit.measure.evaluate import input_gradient
from rtlkit.core.models.backbone import Normalize
from rtlkit.runs.specs import DataSpec

from conftest import tiny_model


def test_per_class_subsets_are_balanced_and_nested():
    ten, twenty = DataSpec("synthetic-a", per_class=10).train(), DataSpec("synthetic-a", per_class=20).train()
    assert torch.bincount(ten.y).tolist() == [10] * 4 and torch.bincount(twenty.y).tolist() == [20] * 4
    assert set(ten.index.tolist()) < set(twenty.index.tolist())
    assert DataSpec("synthetic-a", per_class=10).label == "synthetic-a 10/class"


def test_per_class_above_a_class_count_names_the_class():
    with pytest.raises(ConfigError, match=r"class 0 \(c0\).*has only"):
        DataSpec("synthetic-a", train_n=40, per_class=11).train()
    with pytest.raises(ConfigError):
        DataSpec("synthetic-a", per_class=0)


def test_a_per_class_field_left_at_none_keeps_every_cache_key():
    from rtlkit.runs.specs import stable_hash, to_jsonable
    assert stable_hash(DataSpec("synthetic-a")) == stable_hash(DataSpec("synthetic-a", per_class=None))
    assert "per_class" not in str(to_jsonable(DataSpec("synthetic-a")))


def test_hidden_zero_is_the_plain_linear_head_and_mlps_live_in_head_fc():
    a, b = tiny_model(seed=1), tiny_model(seed=1)
    a.replace_head(3, seed=5)
    b.replace_head(3, seed=5, hidden=0)
    assert isinstance(b.head.fc, torch.nn.Linear) and torch.equal(a.head.fc.weight, b.head.fc.weight)
    m = tiny_model(seed=1).replace_head(3, seed=5, hidden=2, width=8, bn=True, dropout=0.25)
    kinds = [type(x).__name__ for x in m.head.fc]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    x = torch.rand(6, 1, 12, 12)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))                                 # dropout is off in evaluation
        assert m.head.fc(m.penultimate(x)).shape == (6, 3)
    for bad in (dict(hidden=-1), dict(hidden=1, width=0), dict(dropout=1.0), dict(dropout=-0.1)):
        with pytest.raises(ConfigError):
            tiny_model().replace_head(3, **bad)


def test_input_gradient_is_autograds_and_restores_modes_and_flags():
    model = tiny_model(seed=2).train()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    g = input_gradient(model, x, y)
    assert model.training and all(p.requires_grad for p in model.parameters())
    with attack_mode(model):
        xr = x.clone().requires_grad_(True)
        ref, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
    assert torch.allclose(g, ref)


def test_input_gradient_of_a_normalised_linear_model_in_closed_form():
    torch.manual_seed(0)
    sigma = 0.25
    lin = torch.nn.Linear(16, 3)
    model = torch.nn.Sequential(Normalize((0.5,), (sigma,)), torch.nn.Flatten(), lin)
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    p = model(x).softmax(1).detach()
    expected = ((p - torch.nn.functional.one_hot(y, 3).float()) @ lin.weight.detach()) / sigma
    assert torch.allclose(input_gradient(model, x, y).flatten(1), expected, atol=1e-6)
