"""torchvision's ResNets as rtlkit backbones (models.Backbone): the same logits as torchvision's
own model for the same weights, the block partition, the transfer policies proven by the tensors
that must and must not move, NEFT's convex sums, and every method of notebooks 01-06 trained on a
ResNet-18 at the smoke profile."""
import pytest
import torch
import torch.nn as nn
import torchvision

from rtlkit import ConfigError
from rtlkit.core.data import synthetic
from rtlkit.train.methods.neft import NEFT, apply_neft
from rtlkit.core.models.resnet import ResNetSpec
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.core.models import build, parse_spec
from rtlkit.core.models.checkpoints import from_torchvision_keys
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining, train
from rtlkit.train.transfer import BN_CASES, TransferPolicy, prepare_target

from conftest import state_of

CPU = Runtime("cpu")
SMALL = ResNetSpec(18, width=4, small_input=True)
BN = nn.modules.batchnorm._BatchNorm


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_torchvisions_logits(depth):
    """A torchvision ResNet's state dict, renamed to the partition, gives exactly its logits."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(num_classes=7).eval()
    _randomise_bn(tv)
    spec = ResNetSpec(depth)
    ours = build(spec, 7, 3, (0.0,) * 3, (1.0,) * 3).eval()
    state = from_torchvision_keys(tv.state_dict(), spec)
    state.update({k: v for k, v in ours.state_dict().items() if k.startswith("normalize.")})
    ours.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
        # the penultimate feature is torchvision's pooled layer4 output
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        h = tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(h))))).flatten(1)
        assert torch.equal(ours.penultimate(x), h)
    assert ours.n_blocks == spec.n_blocks == {18: 9, 50: 17}[depth]
    assert ours.feature_dim == spec.feature_dim == {18: 512, 50: 2048}[depth]


@pytest.mark.parametrize("spec", [SMALL, ResNetSpec(50, width=4), WRNSpec(10, 1, stem_stride=2)], ids=str)
def test_the_partition_composes_and_its_widths_are_right(spec):
    model = build(spec, 5, 1, (0.5,), (0.25,)).eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
        for n in range(model.n_blocks + 1):
            h = model.features(x, n)
            assert torch.equal(model.forward_from(h, n), full)
            if 1 <= n < model.n_blocks:
                assert h.shape[1] == spec.widths[n - 1]
    assert model.penultimate(x).shape == (3, spec.feature_dim)


@pytest.mark.parametrize("name,spec", [
    ("resnet18", ResNetSpec(18)), ("resnet-50", ResNetSpec(50)), ("resnet18-w8-small", ResNetSpec(18, 8, True)),
    ("wrn-16-1-s2", WRNSpec(16, 1, stem_stride=2)), ("WRN-34-10", WRNSpec(34, 10))])
def test_backbones_by_name(name, spec):
    assert parse_spec(name) == spec


@pytest.mark.parametrize("bad", ["resnet19", "vgg16", "wrn-15-1", 3])
def test_an_unknown_backbone_is_one_config_error(bad):
    with pytest.raises(ConfigError):
        parse_spec(bad)


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = build(SMALL, 4, 1, (0.5,), (0.25,))
    train(model, synthetic("train", seed=0, n_train=128, size=12), StandardTraining(epochs=1, lr=0.1, batch_size=32),
          CPU, progress=False)
    return model.eval()


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("case", list(BN_CASES))
def test_transfer_policies_on_a_resnet_move_exactly_what_they_say(case, k, source):
    pol = TransferPolicy.bn_case(case, k)
    model = prepare_target(source, 3, pol, seed=0)
    prepared = state_of(model)
    train(model, synthetic("train", seed=7, n_train=96, size=12, classes=3),
          StandardTraining(epochs=1, lr=0.1, batch_size=32), CPU, policy=pol, progress=False)
    s0, s1 = state_of(source), state_of(model)
    frozen, tuned = pol.split(model)
    names = {m: n for n, m in model.named_modules()}
    n_frozen = n_tuned = 0
    for blk in frozen:
        for mname, m in blk.named_modules():
            for short, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                key = f"{names[m]}.{short}"
                if short in ("running_mean", "running_var", "num_batches_tracked"):
                    assert torch.equal(s0[key], s1[key]) == (pol.bn_stats == "reuse"), key
                else:
                    n_frozen += 1
                    assert torch.equal(s0[key], s1[key]), f"frozen {key} changed"
    for blk in tuned:
        for mname, m in blk.named_modules():
            for short, _ in m.named_parameters(recurse=False):
                key = f"{names[m]}.{short}"
                n_tuned += 1
                moved = not torch.equal(prepared[key], s1[key])
                assert moved == (not (isinstance(m, BN) and pol.bn_affine == "freeze")), key
    assert n_frozen > 0 and n_tuned > 0


def test_neft_makes_the_tuned_resnet_blocks_convex_and_non_expansive(source):
    model = prepare_target(source, 3, TransferPolicy(k=3), seed=0, neft=NEFT(0.5))
    frozen, tuned = TransferPolicy(k=3).split(model)
    flags = lambda blocks: [m.convex_sum for b in blocks for m in b.modules() if hasattr(m, "convex_sum")]
    assert flags(tuned) == [True, True] and not any(flags(frozen))
    for b in tuned:
        for m in b.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                for _ in range(50):   # power iterations settle in training mode
                    m.train()
                    m.weight
                m.eval()
                w = m.weight.detach()
                assert float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)) <= 0.5 * 1.01


def test_neft_refuses_a_residual_block_it_cannot_make_convex():
    """torchvision's own Bottleneck adds its shortcut inside forward: NEFT cannot make it convex."""
    blk = torchvision.models.resnet.Bottleneck(16, 4)
    with pytest.raises(ConfigError, match="convex"):
        apply_neft(nn.Sequential(blk), [blk], NEFT())


def test_every_method_trains_on_a_resnet18_at_smoke():
    """Notebook 07's headline models (the AT source, last-k fine-tuning, AT + NEFT, an FDM source
    with NEFT (CARTL), LwF, a probe, a Lipschitz head, CR pre-training with CR fine-tuning) on a
    ResNet-18: each trains, each frozen extractor stays bit-identical to its source, and the
    report card runs on one."""
    from rtlkit.studies import profiles
    from rtlkit.runs.card import get_or_card
    from rtlkit.runs.cache import get_or_train
    from rtlkit.studies import report_cards
    p = profiles.get("smoke", model="resnet18-w4-small")
    hs = report_cards.headline(p)
    assert len(hs) == 8
    for h in hs:
        model = get_or_train(h.run, CPU, progress=False)
        assert model.spec == SMALL and model.n_blocks == 9, h.name
        src = getattr(h.run, "source", None)
        policy = getattr(h.run, "policy", None)
        if src is not None and policy is not None and policy.k != "all":
            s0, s1 = state_of(get_or_train(src, CPU, progress=False)), state_of(model)
            frozen = [n for n in s0 if n.startswith("blocks.") and int(n.split(".")[1]) < 9 - policy.k
                      and "running_" not in n and "num_batches" not in n]
            assert frozen and all(torch.equal(s0[n], s1[n]) for n in frozen), h.name
    h = next(h for h in hs if h.name.startswith("CARTL"))
    res = get_or_card(h.run, report_cards.card_of(p, h), CPU, progress=False, test_n=p.card_test_n,
                      surrogate_run=h.source)
    assert set(res["checks"].status) <= {"pass", "warn", "none"} and len(res["summary"]) == 7
