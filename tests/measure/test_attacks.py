"""Attacks: own PGD against answers known in closed form (linear models), attack_mode, own PGD
against foolbox on a trained CNN, and clear errors for bad settings."""
import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.measure.attacks import PGD, FoolboxPGD, attack_mode, pgd_eval
from rtlkit.core.data import DatasetInfo, ImageData, synthetic
from rtlkit.measure.evaluate import evaluate
from rtlkit.core.models import build
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining, train

from conftest import TINY, tiny_model

CPU = Runtime("cpu")  # fp32 eager: the closed forms are exact only without bf16 autocast
H, W = 4, 5           # inputs (N, 1, 4, 5): d = 20


class LinearTwoClass(nn.Module):
    """flatten + Linear(d, 2), with logits z_c = w_c . (x - 1/2) (the boundary runs through the
    centre of the input box)."""

    def __init__(self, d, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, d, generator=g))
            self.fc.bias.copy_(-0.5 * self.fc.weight.sum(1))

    def forward(self, x):
        return self.fc(x.flatten(1))


def linear_case(norm, eps, seed=0, n=400, shift=None):
    """A linear model, uint8 data whose pixels (x_uint8 / 255) lie in [0.3, 0.7], and per example
    the exact clean and robust correctness.

    For two classes the worst case of an L-inf (L2) ball of radius eps moves the margin
    m = (w_y - w_o) . x + (b_y - b_o) down by exactly eps * ||w_y - w_o||_1 (_2): the point is robust
    iff m > eps * dual norm. The [0, 1] box never binds: every pixel stays within 0.3 +- eps."""
    g = torch.Generator().manual_seed(100 + seed)
    model = LinearTwoClass(H * W, seed).eval()
    Wt, b = model.fc.weight.detach(), model.fc.bias.detach()
    y = torch.randint(0, 2, (n,), generator=g)
    dw = Wt[y] - Wt[1 - y]                                    # (n, d): w_y - w_other
    # two clusters, pushed along +-sign(dw) so margins straddle the robustness threshold
    shift = shift if shift is not None else (0.06 if norm == "linf" else 0.03)
    x = 0.5 + shift * dw.sign() + (torch.rand(n, H * W, generator=g) * 0.3 - 0.15)
    x8 = (x * 255).round().clamp(77, 178).to(torch.uint8).view(n, 1, H, W)   # 77/255 > 0.3, 178/255 < 0.7
    xf = x8.float() / 255                                      # exactly what the model sees
    margin = (dw * xf.flatten(1)).sum(1) + b[y] - b[1 - y]
    dual = dw.abs().sum(1) if norm == "linf" else dw.norm(dim=1)
    slack = margin - eps * dual
    keep = (slack.abs() > 1e-3 * dual) & (margin.abs() > 1e-3 * dual)   # no ties at either threshold
    data = ImageData(x8[keep], y[keep], DatasetInfo("linear", ("a", "b"), 1, H, "mnist"))
    return model, data, (margin[keep] > 0), (slack[keep] > 0)


def check_exact(model, data, clean, robust, attack):
    assert robust.sum() >= 40 and (clean & ~robust).sum() >= 40, "the case must not be degenerate"
    res = evaluate(model, data, attack, CPU, batch_size=128, progress=False)
    ex = res.examples.sort_values("index")
    assert ex["clean_correct"].tolist() == clean.tolist()
    assert ex["robust_correct"].tolist() == robust.tolist()  # example by example, not just the mean
    assert res.robust_acc == int(robust.sum()) / len(robust)


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("seed", [0, 1])
def test_linf_pgd_finds_the_exact_robust_accuracy_of_a_linear_model(loss, seed):
    eps = 0.05
    model, data, clean, robust = linear_case("linf", eps, seed)
    check_exact(model, data, clean, robust, PGD(eps=eps, steps=10, step_size=eps / 4, norm="linf", loss=loss))


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("seed", [0, 1])
def test_l2_pgd_finds_the_exact_robust_accuracy_of_a_linear_model(loss, seed):
    eps = 0.1
    model, data, clean, robust = linear_case("l2", eps, seed)
    check_exact(model, data, clean, robust, PGD(eps=eps, steps=20, step_size=eps / 3, norm="l2", loss=loss))


def test_a_weaker_attack_is_not_exact():
    """The closed-form check can fail: 1 step of eps/4 from a random start misses robust errors."""
    eps = 0.05
    model, data, clean, robust = linear_case("linf", eps, 0)
    res = evaluate(model, data, PGD(eps=eps, steps=1, step_size=eps / 4), CPU, progress=False)
    assert res.robust_acc > float(robust.float().mean()) + 0.05


def test_pgd_stays_in_the_ball_and_the_box():
    """Pixels at 0 and 1 and a large eps: the [0, 1] clamp binds, the eps-ball holds."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, H, W, generator=g)
    x[:, :, 0, :] = 0.0
    x[:, :, 1, :] = 1.0
    y = torch.randint(0, 2, (64,), generator=g)
    model = LinearTwoClass(H * W, 0)
    for norm, eps in (("linf", 0.3), ("l2", 0.8)):
        xa = PGD(eps=eps, steps=5, step_size=eps / 2, norm=norm)(model, x, y)
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5
        assert float(xa.min()) == 0.0 and float(xa.max()) == 1.0   # the clamp binds, and holds
        assert float(size.min()) > 0                                 # it did move every example


def test_zero_eps_or_zero_steps_return_the_inputs():
    model = LinearTwoClass(H * W, 0)
    x, y = torch.rand(8, 1, H, W), torch.randint(0, 2, (8,))
    assert torch.equal(PGD(eps=0.0)(model, x, y), x)
    assert torch.equal(PGD(eps=0.1, steps=0)(model, x, y), x)


def test_attack_mode_evaluates_during_the_attack_and_restores_modes_and_flags():
    model = tiny_model()
    model.train()
    model.blocks[0].eval()                            # a mixed prior mode must come back as it was
    model.head.fc.weight.requires_grad_(False)        # and so must a mixed requires_grad
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bn = model.blocks[2].bn1
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m.training))
             for m in (model.blocks[1], bn, model.head)]
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 4, (8,))
    with attack_mode(model):
        assert not any(p.requires_grad for p in model.parameters())
        PGD(0.1, 3, 0.05).perturb(model, x, y)
    PGD(0.1, 3, 0.05)(model, x, y)                    # __call__ enters attack_mode itself
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * 3 * 3 and not any(seen)   # every forward of both attacks was in eval mode
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_attack_mode_restores_after_an_error():
    model = tiny_model().train()
    with pytest.raises(RuntimeError):
        with attack_mode(model):
            raise RuntimeError("boom")
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_own_pgd_agrees_with_foolbox_on_a_trained_cnn():
    """Same eps, steps and step size, both with a uniform random start: own PGD and foolbox 3's
    LinfPGD must give the same robust accuracy on a small trained WRN, within 1 point on 256
    test images (they differ only in their random starts)."""
    tr = synthetic("train", seed=5, n_train=384, size=12, noise=0.45)
    te = synthetic("test", seed=5, n_test=256, size=12, noise=0.45)
    torch.manual_seed(1)
    model = build(TINY, 4, 1, *tr.mean_std())
    train(model, tr, StandardTraining(epochs=2, lr=0.05, batch_size=64), CPU, progress=False)
    eps = 0.06
    torch.manual_seed(0)
    own = evaluate(model, te, PGD(eps=eps, steps=20, step_size=eps / 4), CPU, progress=False)
    torch.manual_seed(0)
    fb = evaluate(model, te, FoolboxPGD(eps=eps, steps=20, step_size=eps / 4), CPU, progress=False)
    assert own.clean_acc == fb.clean_acc > 0.8
    assert 0.2 < fb.robust_acc < own.clean_acc - 0.1     # the attack does something, not everything
    assert abs(own.robust_acc - fb.robust_acc) <= 0.01


@pytest.mark.parametrize("kw", [dict(eps=-1), dict(norm="l3"), dict(loss="x"), dict(steps=-1), dict(step_size=0)])
def test_bad_pgd_settings_are_config_errors(kw):
    with pytest.raises(ConfigError):
        PGD(**kw)


@pytest.mark.parametrize("kw", [dict(eps=-1), dict(norm="l3"), dict(steps=0)])
def test_bad_foolbox_settings_are_config_errors(kw):
    with pytest.raises(ConfigError):
        FoolboxPGD(**kw)


class Island(torch.nn.Module):
    """A 1-pixel model whose wrong class is an island: from x = 0.5 a step of 0.1 lands on it
    (x = 0.6 is misclassified) and the next step, past its peak at 0.58, walks back off it."""

    def forward(self, x):
        z = x.flatten(1)[:, 0]
        h = torch.exp(-((z - 0.58) / 0.05) ** 2) - 0.5
        return torch.stack([torch.zeros_like(h), 10 * h], 1)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_an_example_fooled_by_a_middle_step_is_not_robust(loss):
    model, x, y = Island(), torch.full((3, 1, 2, 2), 0.5), torch.zeros(3, dtype=torch.long)
    attack = PGD(eps=0.15, steps=2, step_size=0.1, loss=loss, random_start=False)
    last = attack.perturb(model, x, y, worst=False)           # step 1 at 0.6 (fooled), step 2 back at 0.5
    assert torch.allclose(last[:, 0, 0, 0], torch.full((3,), 0.5)) and (model(last).argmax(1) == y).all()
    worst = attack.perturb(model, x, y)                       # evaluation keeps the fooling iterate
    assert torch.allclose(worst[:, 0, 0, 0], torch.full((3,), 0.6)) and (model(worst).argmax(1) != y).all()
    data = ImageData(x=torch.full((3, 1, 2, 2), 128, dtype=torch.uint8), y=y,   # 128/255: just over 0.5
                     info=DatasetInfo("island", ("right", "wrong"), 1, 2, "mnist"))
    res = evaluate(model, data, [attack], Runtime("cpu"), progress=False)
    assert res.clean_acc == 1.0 and res.robust_acc == 0.0


def test_attack_labels_name_every_setting_that_changes_the_result():
    from rtlkit.studies import profiles
    a, b = profiles.pgd(0.1, 20), pgd_eval(0.1, 20)
    assert a != b and a.label != b.label
    assert PGD(0.1, 5, 0.02).label != PGD(0.1, 5, 0.02, random_start=False).label


# --------------------------------------------------------------------------- APGD and Square (pyautoattack)

@pytest.fixture(scope="module")
def trained_tiny():
    torch.manual_seed(0)
    data = synthetic("train", seed=3, n_train=256, size=12, noise=0.3)
    model = tiny_model(seed=2)
    train(model, data, StandardTraining(epochs=2, lr=0.05, batch_size=64), progress=False)
    return model.eval(), synthetic("test", seed=3, n_test=64, size=12, noise=0.3)


def test_apgd_is_at_least_as_strong_as_pgd_on_the_same_points(trained_tiny):
    from rtlkit.measure.attacks import APGD
    model, test = trained_tiny
    pgd = PGD(eps=1.0, steps=10, step_size=0.25, norm="l2")
    apgd = APGD(eps=1.0, n_iter=50, n_restarts=1)
    res = evaluate(model, test, [pgd, apgd], Runtime("cpu"), progress=False)
    assert 0 < res.per_attack[pgd.label] < res.clean_acc      # the attack has something to do
    assert res.per_attack[apgd.label] <= res.per_attack[pgd.label]


def test_the_autoattack_adapter_leaves_modes_grads_and_the_rng_alone(trained_tiny):
    from rtlkit.measure.attacks import APGD, Square
    model, test = trained_tiny
    model.train()
    model.blocks[0].eval()
    model.head.fc.weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x = torch.nn.functional.interpolate(test.x[:16].float() / 255, size=28)   # Square's L2 squares need >= ~28 px
    y = test.y[:16]
    state = torch.random.get_rng_state()
    for attack in (APGD(eps=1.0, n_iter=5, n_restarts=2), Square(eps=1.0, n_queries=20)):
        adv = attack(model, x, y)
        assert adv.shape == x.shape and ((adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()
        assert [m.training for m in model.modules()] == modes and [p.requires_grad for p in model.parameters()] == grads
        assert torch.equal(torch.random.get_rng_state(), state)
    model.head.fc.weight.requires_grad_(True)
    model.eval()


def test_square_and_apgd_labels_name_every_setting():
    from rtlkit.measure.attacks import APGD, Square
    assert APGD().label == "APGD-CE l2 eps=0.5 iters=100 restarts=5 seed=0"
    assert Square(n_queries=1000).label == "Square l2 eps=0.5 queries=1000 restarts=1 p_init=0.8 seed=0"
    for bad in (lambda: APGD(eps=0), lambda: APGD(norm="l1"), lambda: Square(n_queries=0), lambda: Square(p_init=0)):
        with pytest.raises(ConfigError):
            bad()


def test_l2_square_on_a_size_its_start_cannot_tile_is_a_clear_error():
    from rtlkit.measure.attacks import Square
    """pyautoattack 0.2.0's L2 Square start runs past the edge of 12 x 12 images (a shape error
    deep inside it): the adapter says so first."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 2))
    x, y = torch.rand(2, 1, 12, 12), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="cannot start on 12x12"):
        Square(eps=0.5, n_queries=5)(model, x, y)
    Square(eps=0.5, n_queries=5)(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2)),
                                 torch.rand(2, 1, 16, 16), y)


@pytest.mark.parametrize("attack", [PGD(eps=0.1, steps=3, step_size=0.05), PGD(eps=1.0, steps=3, step_size=0.4, norm="l2"),
                                    FoolboxPGD(eps=0.1, steps=3, step_size=0.05),
                                    FoolboxPGD(eps=1.0, steps=3, step_size=0.4, norm="l2")],
                         ids=lambda a: a.label)
def test_skipping_a_batch_draws_what_attacking_it_draws(trained_tiny, attack):
    """A rank that leaves a batch to another calls ``skip``: the next batch it attacks must see the
    random start that one process, attacking both, gives it (sharded evaluation keeps its bits)."""
    model, test = trained_tiny
    xa, xb, y = test.x[:16].float() / 255, test.x[16:32].float() / 255, test.y[16:32]
    torch.manual_seed(0)
    attack(model, xa, test.y[:16])
    both = attack(model, xb, y)
    torch.manual_seed(0)
    attack.skip(xa)
    assert torch.equal(attack(model, xb, y), both)
    torch.manual_seed(0)
    assert not torch.equal(attack(model, xb, y), both)   # the stream matters: without the skip it differs


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("linf", 0.08), ("l2", 0.5)])
def test_pruning_fooled_examples_gives_every_example_its_whole_batch_result(trained_tiny, norm, eps):
    """Survivors only, step by step: dropping each example once fooled (and ending the batch when all
    are) gives every example the same adversarial input, bit for bit, as attacking the whole batch,
    on a trained CNN with BatchNorm where examples fall at different steps."""
    model, test = trained_tiny
    x, y = test.x.float().div(255), test.y
    attack = PGD(eps=eps, steps=12, step_size=eps / 4, norm=norm)
    with attack_mode(model):
        torch.manual_seed(3)
        whole = attack.perturb(model, x, y)
        with torch.no_grad():
            fooled = model(whole).argmax(1) != y
        assert 0 < fooled.sum() < len(y)          # some fall, some stand: the pruning is exercised
        for every, compact in ((1, True), (3, True), (12, True), (1, False)):
            torch.manual_seed(3)
            assert torch.equal(attack.perturb(model, x, y, prune_every=every, compact=compact), whole), every
    torch.manual_seed(4)
    a = evaluate(model, test, [attack, PGD(eps, 12, eps / 4, norm, "cw")], CPU, progress=False, prune=True)
    torch.manual_seed(4)
    b = evaluate(model, test, [attack, PGD(eps, 12, eps / 4, norm, "cw")], CPU, progress=False, prune=False)
    assert a.examples.equals(b.examples) and a.per_attack == b.per_attack


def test_pruning_ends_a_batch_that_is_all_fooled():
    """A model that is wrong everywhere: the pruned attack stops after its first step (one forward)."""
    calls = []

    class Wrong(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return torch.stack([torch.zeros(len(x)), x.flatten(1).sum(1) + 1], 1)
    x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
    for compact in (True, False):
        calls.clear()
        out = PGD(eps=0.1, steps=20, step_size=0.025).perturb(Wrong(), x, y, prune_every=1, compact=compact)
        assert calls == [8] and (out - x).abs().max() <= 0.1 + 1e-7


def test_prune_every_must_be_a_count():
    with pytest.raises(ConfigError):
        PGD(0.1, 5, 0.02).perturb(nn.Identity(), torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), prune_every=-1)
