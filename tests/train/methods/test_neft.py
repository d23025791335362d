"""CARTL's non-expansive fine-tuning (rtlkit.train.methods.neft, Eq. 11, App. A): every normalised layer
at spectral norm beta, convex residuals only in the tuned blocks, reload from the cache."""
import pytest
import torch

from rtlkit.measure.attacks import PGD
from rtlkit.train.methods.neft import NEFT, largest_singular_value, normalised_layers, settle, spectral_normed
from rtlkit.core.models.wrn import BasicBlock, WRNSpec
from rtlkit.core.models import build
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.train.loop import AdversarialTraining, StandardTraining, train
from rtlkit.train.transfer import TransferPolicy, prepare_target

from conftest import TINY, tiny_model


AT = dict(epochs=2, lr=0.05, batch_size=64, attack=PGD(0.1, 2, 0.05))


def sd(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


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
        assert sigma == pytest.approx(beta, rel=0.005)
        assert largest_singular_value(layer) == pytest.approx(sigma)
    # frozen part bit-identical, with no parametrisation
    s0, s1 = sd(src), sd(model)
    n_frozen = len(frozen)
    for name, v in s1.items():
        if name.startswith("blocks.") and int(name.split(".")[1]) < n_frozen:
            assert torch.equal(s0[name], v), name
    assert not any(hasattr(m, "parametrizations") for b in frozen for m in b.modules())


@pytest.mark.parametrize("trained", [False, True])
def test_settle_makes_every_layer_exactly_beta_even_a_fresh_wide_short_head(syn, trained):
    """A fresh 4 x 128 classifier has nearly equal top singular values: power iteration converges
    slowly there (30 iterations left it 2.3 % over beta); the SVD settle is exact."""
    torch.manual_seed(0)
    src = build(WRNSpec(10, 2, stem_stride=2), 4, 1, (0.5,), (0.25,)).eval()   # 128 features
    pol = TransferPolicy(k=2)
    model = prepare_target(src, 4, pol, seed=3, neft=NEFT(0.6))
    if trained:
        train(model, syn, StandardTraining(epochs=1, lr=0.05, batch_size=32), policy=pol, progress=False)
    settle(model)
    layers = [layer for layer, _ in spectral_normed(model)]
    assert model.head.fc in layers and model.head.fc.weight.shape == (4, 128)
    assert layers == normalised_layers(pol.split(model)[1])
    for layer in layers:
        for mode in (False, True):          # eval reads the settled vectors; a train-mode step keeps them
            layer.train(mode)
            assert largest_singular_value(layer) == pytest.approx(0.6, rel=0.005)
        layer.eval()


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
