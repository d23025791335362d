"""Learning without forgetting (rtlkit.train.methods.lwf; CARTL Eq. 14, Shafahi Sec. 6, App. A.1): warm
start trains the head only, then everything but BN; a huge lambda_d keeps the source features."""
import torch
import torch.nn as nn

from rtlkit.train.methods.lwf import LwFTraining
from rtlkit.train.loop import train
from rtlkit.train.transfer import TransferPolicy, prepare_target

from conftest import tiny_model


def sd(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


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


def test_the_released_codes_lwf_trains_bn_gamma_and_beta_and_keeps_the_sources_statistics(syn):
    """The paper's LwF (ashafahi/RobustTransferLWF: a mode='eval' model, every variable trained after
    the warm start): TransferPolicy(k="all", bn_affine="train"). After the warm start BN's weight and
    bias move; its running statistics never do."""
    src = tiny_model().eval()
    pol = TransferPolicy(k="all", bn_affine="train")
    model = prepare_target(src, 4, pol)
    start = sd(model)
    snaps = {}
    train(model, syn, LwFTraining(epochs=2, batch_size=64, lam_d=0.1), policy=pol, progress=False,
          on_epoch_end=lambda e, r: snaps.__setitem__(e, sd(model)))
    head = {f"blocks.{model.n_blocks - 1}.fc.weight", f"blocks.{model.n_blocks - 1}.fc.bias"}
    assert {k for k in start if not torch.equal(start[k], snaps[1][k])} == head   # the warm start as before
    bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    changed = {k for k in start if not torch.equal(snaps[1][k], snaps[2][k])}
    affine = {k for k in changed if k.rsplit(".", 1)[0] in bn}
    assert affine and {k.rsplit(".", 1)[1] for k in affine} == {"weight", "bias"}   # gamma and beta train
    for name in bn:   # the source's statistics, untouched
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(start[f"{name}.{buf}"], snaps[2][f"{name}.{buf}"]), (name, buf)
