"""CARTL's three methods: FDM (Eq. 10), NEFT (Eq. 11, App. A), LwF (Eq. 14; Shafahi Sec. 6, A.1)."""
import math

import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.attacks import PGD
from rtlkit.fdm import FDMTraining, fdm_penalty
from rtlkit.lwf import LwFTraining
from rtlkit.models import BasicBlock
from rtlkit.neft import NEFT, largest_singular_value, normalised_layers, settle
from rtlkit.runs import DataSpec, SourceRun, TransferRun, get_or_train, run_dir
from rtlkit.training import AdversarialTraining, StandardTraining, train
from rtlkit.transfer import TransferPolicy, prepare_target

from conftest import TINY, tiny_model

AT = dict(epochs=2, lr=0.05, batch_size=64, attack=PGD(0.1, 2, 0.05))


def sd(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_fdm_with_lambda_zero_is_plain_at_bit_for_bit(syn):
    a, b = tiny_model(seed=2), tiny_model(seed=2)
    train(a, syn, AdversarialTraining(**AT), seed=5, progress=False)
    train(b, syn, FDMTraining(**AT, lam=0.0, k=2), seed=5, progress=False)
    sa, sb = sd(a), sd(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and the cache treats lambda = 0 as the same run
    plain = SourceRun(DataSpec("synthetic-a"), TINY, AdversarialTraining(**AT))
    assert run_dir(SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(**AT, lam=0.0, k=2))) == run_dir(plain)
    assert run_dir(SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(**AT, lam=0.01, k=2))) != run_dir(plain)


def test_fdm_with_lambda_changes_training(syn):
    a, b = tiny_model(seed=2), tiny_model(seed=2)
    train(a, syn, AdversarialTraining(**AT), seed=5, progress=False)
    train(b, syn, FDMTraining(**AT, lam=0.5, k=2), seed=5, progress=False)
    assert not torch.equal(a.blocks[0][0].conv.weight, b.blocks[0][0].conv.weight)


def test_fdm_penalty_closed_form():
    f1 = torch.zeros(3, 2, 2, 2)
    f2 = torch.zeros(3, 2, 2, 2)
    f2[0, 0, 0, 0] = 3.0
    f2[0, 1, 1, 1] = 4.0            # ||delta_0|| = 5
    f2[2] = 1.0                     # ||delta_2|| = sqrt(8)
    d = 8
    expect = 0.01 / math.sqrt(d) * (5.0 + math.sqrt(8))
    assert float(fdm_penalty(f1, f2, 0.01)) == pytest.approx(expect, rel=1e-6)


def neft_finetune(syn, beta, k=3, epochs=3):
    src = tiny_model().eval()
    pol = TransferPolicy(k=k)
    model = prepare_target(src, 4, pol, neft=NEFT(beta))
    train(model, syn, StandardTraining(epochs=epochs, lr=0.05, batch_size=32), policy=pol, progress=False)
    settle(model)   # what get_or_train does before saving a NEFT model
    return src, model.eval(), pol


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_neft_layers_have_spectral_norm_beta(syn, beta):
    src, model, pol = neft_finetune(syn, beta)
    frozen, tuned = pol.split(model)
    layers = normalised_layers(tuned)
    assert len(layers) == 4   # conv1, conv2 of the last residual block, and the head's fc (+ shortcut none)
    for layer in layers:
        w = layer.weight
        sigma = float(torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2))
        assert sigma == pytest.approx(beta, rel=0.05)
        assert largest_singular_value(layer) == pytest.approx(sigma)
    # frozen part bit-identical, with no parametrisation
    s0, s1 = sd(src), sd(model)
    n_frozen = len(frozen)
    for name, v in s1.items():
        if name.startswith("blocks.") and int(name.split(".")[1]) < n_frozen:
            assert torch.equal(s0[name], v), name
    assert not any(hasattr(m, "parametrizations") for b in frozen for m in b.modules())


def test_neft_residual_sums_are_convex_only_in_the_tuned_blocks(syn):
    _, model, pol = neft_finetune(syn, 0.6, epochs=1)
    frozen, tuned = pol.split(model)
    blocks_f = [m for b in frozen for m in b.modules() if isinstance(m, BasicBlock)]
    blocks_t = [m for b in tuned for m in b.modules() if isinstance(m, BasicBlock)]
    assert blocks_t and all(b.convex_sum for b in blocks_t) and not any(b.convex_sum for b in blocks_f)
    blk = blocks_t[0]
    x = torch.randn(2, blk.bn1.num_features, 3, 3)
    with torch.no_grad():
        o = torch.relu(blk.bn1(x))
        short = x if blk.equal else blk.shortcut(o)
        branch = blk.conv2(torch.relu(blk.bn2(blk.conv1(o))))
        assert torch.allclose(blk(x), 0.5 * (branch + short))


def test_neft_model_reloads_from_the_cache_with_the_same_logits():
    src = SourceRun(DataSpec("synthetic-a", train_n=128), TINY, AdversarialTraining(**{**AT, "epochs": 1}))
    run = TransferRun(src, DataSpec("synthetic-b", train_n=64), TransferPolicy(k=2),
                      StandardTraining(epochs=1, batch_size=32), 0, NEFT(0.6))
    m1 = get_or_train(run, progress=False)
    m2 = get_or_train(run, progress=False)
    x = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))
    import dataclasses
    for other in (dataclasses.replace(run, neft=NEFT(0.4)), dataclasses.replace(run, policy=TransferPolicy(k=3)),
                  dataclasses.replace(run, neft=None)):
        assert run_dir(other) != run_dir(run)


def test_lwf_warm_start_trains_only_the_head_then_no_bn(syn):
    src = tiny_model().eval()
    pol = TransferPolicy(k="all", bn_affine="freeze")
    model = prepare_target(src, 4, pol)
    start = sd(model)
    snaps = {}
    method = LwFTraining(epochs=2, batch_size=64, lam_d=0.1)
    train(model, syn, method, policy=pol, progress=False, on_epoch_end=lambda e, r: snaps.__setitem__(e, sd(model)))
    head = {f"blocks.{model.n_blocks - 1}.fc.weight", f"blocks.{model.n_blocks - 1}.fc.bias"}
    changed1 = {k for k in start if not torch.equal(start[k], snaps[1][k])}
    assert changed1 == head                      # warm start: the head alone (BN statistics included)
    changed2 = {k for k in start if not torch.equal(snaps[1][k], snaps[2][k])}
    bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert any("conv" in k for k in changed2)    # then the feature extractor trains
    assert not any(k.rsplit(".", 1)[0] in bn for k in changed2)   # ... but no BN parameter or statistic


def test_lwf_with_a_huge_lambda_keeps_the_source_features(syn):
    src = tiny_model().eval()
    x = syn.x[:128].float() / 255
    with torch.no_grad():
        z0 = src.penultimate(x)
    pol = TransferPolicy(k="all", bn_affine="freeze")
    drift = {}
    for lam_d in (0.0, 5.0):
        model = prepare_target(src, 4, pol)
        train(model, syn, LwFTraining(epochs=8, batch_size=32, lam_d=lam_d, lr=0.003), policy=pol, progress=False)
        with torch.no_grad():
            drift[lam_d] = float((model.eval().penultimate(x) - z0).norm(dim=1).mean() / z0.norm(dim=1).mean())
    # the L2 (not squared) penalty is non-smooth: its pull has size lr * lambda_d, hence the small lr
    assert drift[5.0] < 0.06 and drift[5.0] < drift[0.0] / 3


@pytest.mark.parametrize("bad", [
    lambda: NEFT(beta=0), lambda: NEFT(beta=1.2), lambda: FDMTraining(lam=-0.1),
    lambda: LwFTraining(lam_d=-1), lambda: FDMTraining(k=0),
    lambda: SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(k=5)),     # TINY has 5 blocks: no frozen part
    lambda: SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(k=9)),
])
def test_bad_cartl_settings_are_clear_errors(bad):
    with pytest.raises(ConfigError):
        bad()
