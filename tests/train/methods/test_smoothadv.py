"""SmoothAdv (adv-s): at eps = 0 it is Gaussian-noise training on the same draws; its attack
raises the soft smoothed classifier's loss; it trains and resumes to the same bits."""
import math

import pytest
import torch

from rtlkit import ConfigError
from rtlkit.measure.attacks import PGD
from rtlkit.train.methods.consistency import gaussian_training
from rtlkit.train.methods.smoothadv import SmoothAdvTraining
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import train

from conftest import tiny_model


def _loss(method, model, x, y, seed):
    torch.manual_seed(seed)
    model.train()
    return float(method.batch_loss(model, model, x, y, Runtime(device="cpu"))[0].detach())


def test_adv_s_at_eps_zero_is_noise_training_on_a_fixed_batch_and_seed(syn):
    model = tiny_model(seed=2)
    x, y = syn.x[:32].float() / 255, syn.y[:32]
    zero = SmoothAdvTraining(sigma=0.1, attack=PGD(eps=0.0, steps=10, step_size=0.025, norm="l2"))
    assert _loss(zero, model, x, y, 7) == pytest.approx(_loss(gaussian_training(0.1), model, x, y, 7), rel=1e-6)
    attacked = _loss(SmoothAdvTraining(sigma=0.1, attack=PGD(eps=1.0, steps=10, step_size=0.25, norm="l2")), model, x, y, 7)
    assert attacked > _loss(zero, model, x, y, 7)           # the attack raises the loss on the same draws


def test_adv_s_trains_and_resumes_bits(syn):
    method = SmoothAdvTraining(epochs=1, batch_size=64, lr=0.05, attack=PGD(eps=0.1, steps=2, step_size=0.05, norm="l2"))
    a, b = tiny_model(seed=1), tiny_model(seed=1)
    ha, hb = train(a, syn, method, seed=3, progress=False), train(b, syn, method, seed=3, progress=False)
    assert ha[0]["loss"] == hb[0]["loss"] and math.isfinite(ha[0]["loss"])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("bad", [dict(sigma=0), dict(m=0), dict(attack=PGD(eps=0.1, norm="linf"))])
def test_bad_smoothadv_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        SmoothAdvTraining(**bad)
