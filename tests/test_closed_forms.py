"""Attacks against answers known in closed form, and own PGD against foolbox."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.attacks import PGD, FoolboxPGD, attack_mode
from rtlkit.data import ImageData, DatasetInfo
from rtlkit.evaluate import evaluate
from rtlkit.training import StandardTraining, train

from conftest import tiny_model


class Linear2(nn.Module):
    def __init__(self, d, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, d, generator=g))
            self.fc.bias.copy_(torch.randn(2, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(x.flatten(1))


def linear_case(seed, norm, eps):
    """Points whose pixels lie in [0.3, 0.7] (so the [0,1] box never binds for these eps)."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = 600, 4, 5
    x8 = (0.3 * 255 + torch.rand(n, 1, h, w, generator=g) * 0.4 * 255).round().to(torch.uint8)
    model = Linear2(h * w, seed).eval()
    x = x8.float() / 255
    with torch.no_grad():
        z = model(x)
    y = torch.randint(0, 2, (n,), generator=g)
    W = model.fc.weight.detach()
    b = model.fc.bias.detach()
    dw = W[y] - W[1 - y]                     # (n, d): w_y - w_other
    margin = (dw * x.flatten(1)).sum(1) + b[y] - b[1 - y]
    dual = dw.abs().sum(1) if norm == "linf" else dw.norm(dim=1)
    slack = margin - eps * dual
    keep = slack.abs() > 1e-3 * dual          # drop ties at the threshold
    info = DatasetInfo("linear", ("a", "b"), 1, 4, "mnist")
    data = ImageData(x8[keep], y[keep], info)
    exact_clean = float((margin[keep] > 0).float().mean())
    exact_robust = float((slack[keep] > 0).float().mean())
    return model, data, exact_clean, exact_robust


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("seed", [0, 3])
def test_linf_pgd_equals_exact_robust_accuracy_of_linear_model(loss, seed):
    eps = 0.05
    model, data, clean, robust = linear_case(seed, "linf", eps)
    assert 0.05 < robust < clean  # the case is not degenerate
    res = evaluate(model, data, PGD(eps=eps, steps=10, step_size=eps / 4, norm="linf", loss=loss), progress=False)
    assert res.clean_acc == pytest.approx(clean, abs=1e-6)
    assert res.robust_acc == pytest.approx(robust, abs=1e-6)


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("seed", [0, 3])
def test_l2_pgd_equals_exact_robust_accuracy_of_linear_model(loss, seed):
    eps = 0.2
    model, data, clean, robust = linear_case(seed, "l2", eps)
    assert 0.05 < robust < clean
    res = evaluate(model, data, PGD(eps=eps, steps=20, step_size=eps / 3, norm="l2", loss=loss), progress=False)
    assert res.robust_acc == pytest.approx(robust, abs=1e-6)


def test_pgd_stays_in_the_ball_and_the_box():
    model, data, _, _ = linear_case(0, "linf", 0.05)
    x = data.x.float() / 255
    for norm, eps in (("linf", 0.05), ("l2", 0.3)):
        xa = PGD(eps=eps, steps=5, step_size=eps / 2, norm=norm)(model, x, data.y)
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5 and float(xa.min()) >= 0 and float(xa.max()) <= 1


def test_attack_mode_is_eval_without_param_grads_and_restores():
    model = tiny_model()
    model.train()
    model.blocks[0].eval()                    # a mixed prior mode must come back as it was
    model.blocks[-1].fc.weight.requires_grad_(False)
    seen = []
    hook = model.blocks[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = [(n, m.training) for n, m in model.named_modules()]
    grads = [(n, p.requires_grad) for n, p in model.named_parameters()]
    x = torch.rand(8, 1, 12, 12)
    y = torch.randint(0, 4, (8,))
    with attack_mode(model):
        assert all(not p.requires_grad for p in model.parameters())
        PGD(0.1, 2, 0.05).perturb(model, x, y)
    hook.remove()
    assert seen and not any(seen)
    assert [(n, m.training) for n, m in model.named_modules()] == before
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == grads


def test_own_pgd_agrees_with_foolbox_on_a_trained_cnn():
    from rtlkit.data import synthetic
    tr = synthetic("train", seed=5, n_train=512, size=12, noise=0.45)
    te = synthetic("test", seed=5, n_test=400, size=12, noise=0.45)
    model = tiny_model(seed=1)
    train(model, tr, StandardTraining(epochs=3, lr=0.05, batch_size=64), progress=False)
    eps = 0.06
    torch.manual_seed(0)
    own = evaluate(model, te, PGD(eps=eps, steps=20, step_size=eps / 4), progress=False)
    torch.manual_seed(0)
    fb = evaluate(model, te, FoolboxPGD(eps=eps, steps=20, step_size=eps / 4), progress=False)
    assert own.clean_acc == fb.clean_acc
    assert 0.05 < fb.robust_acc < own.clean_acc   # the attack does something, not everything
    assert abs(own.robust_acc - fb.robust_acc) <= 0.01


@pytest.mark.parametrize("kw", [dict(eps=-1), dict(norm="l3"), dict(loss="hinge"), dict(steps=-1), dict(step_size=0)])
def test_bad_attack_settings_are_clear_errors(kw):
    with pytest.raises(ConfigError):
        PGD(**kw)
