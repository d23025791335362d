"""Consistency regularisation (rtlkit.train.methods.consistency) against a hand computation."""
import math

import pytest
import torch

from rtlkit import ConfigError
from rtlkit.train.methods.consistency import ConsistencyTraining, consistency_loss, gaussian_training
from rtlkit.train.loop import train

from conftest import tiny_model


def test_consistency_loss_by_hand():
    # m = 2 copies, one image, two classes: p_1 = (1/2, 1/2), p_2 = softmax(0, ln 3) = (1/4, 3/4)
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3)]]])
    y = torch.tensor([1])
    ce, reg = consistency_loss(logits, y, lam=5.0, eta=0.5)
    assert float(ce) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    p_hat = (3 / 8, 5 / 8)
    kl1 = sum(p * math.log(p / q) for p, q in zip(p_hat, (1 / 2, 1 / 2)))
    kl2 = sum(p * math.log(p / q) for p, q in zip(p_hat, (1 / 4, 3 / 4)))
    h = -sum(p * math.log(p) for p in p_hat)
    assert float(reg) == pytest.approx(5.0 * (kl1 + kl2) / 2 + 0.5 * h)
    same = torch.zeros(3, 4, 5)                      # identical copies: no consistency term but entropy
    ce, reg = consistency_loss(same, torch.zeros(4, dtype=torch.long), lam=5.0, eta=0.0)
    assert float(reg) == pytest.approx(0.0, abs=1e-7) and float(ce) == pytest.approx(math.log(5))


def test_consistency_and_gaussian_training_run_and_resume_bits(syn):
    for method in (ConsistencyTraining(epochs=1, batch_size=64, lr=0.05), gaussian_training(epochs=1, batch_size=64)):
        a, b = tiny_model(seed=1), tiny_model(seed=1)
        ha = train(a, syn, method, seed=3, progress=False)
        hb = train(b, syn, method, seed=3, progress=False)
        assert ha[0]["loss"] == hb[0]["loss"] and math.isfinite(ha[0]["loss"])
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    g = gaussian_training(0.25)
    assert (g.m, g.lam, g.eta, g.sigma) == (1, 0.0, 0.0, 0.25)


@pytest.mark.parametrize("bad", [dict(sigma=0), dict(m=0), dict(lam=-1), dict(eta=-0.5), dict(m=1.5)])
def test_bad_consistency_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        ConsistencyTraining(**bad)
