"""Wide-ResNets: the block partition that "fine-tune the last k blocks" counts in, the input
normalisation inside the model, the replaceable head, and bad specs."""
import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.core.models.wrn import BasicBlock, FinalBNReLU, Stem, WideResNet, WRNSpec
from rtlkit.core.models.backbone import Head
from rtlkit.core.models import build


def test_wrn_34_10_has_17_blocks():
    spec = WRNSpec(34, 10)
    assert spec.n_blocks == 17 and spec.name == "wrn-34-10"
    model = WideResNet(spec, 10, 3)          # 46M parameters: built, never run
    assert model.n_blocks == len(model.blocks) == 17
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(46.2e6, rel=0.01)
    # 15 residual blocks (the stem rides with the first), then final BN+ReLU, then the head
    assert isinstance(model.blocks[0], nn.Sequential) and isinstance(model.blocks[0][0], Stem)
    assert all(isinstance(b, BasicBlock) for b in model.blocks[1:15])
    assert isinstance(model.blocks[15], FinalBNReLU) and isinstance(model.blocks[16], Head)
    assert model.blocks[16].fc.in_features == 640


@pytest.mark.parametrize("depth, width, stem_stride, n", [(28, 4, 1, 14), (16, 1, 2, 8), (10, 1, 2, 5)])
def test_block_counts(depth, width, stem_stride, n):
    spec = WRNSpec(depth, width, stem_stride=stem_stride)
    assert spec.n_blocks == n
    assert build(spec, 10, 1, (0.5,), (0.5,)).n_blocks == n


def test_normalisation_is_inside_the_model():
    mean, std = (0.2, 0.5, 0.7), (0.1, 0.3, 0.25)
    torch.manual_seed(0)
    model = build(WRNSpec(10, 1, stem_stride=2), 5, 3, mean, std).eval()
    x = torch.rand(4, 3, 12, 12)
    h = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = h
        for blk in model.blocks:
            expected = blk(expected)
        out = model(x)
        unnormalised = model.forward_from(x, 0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, unnormalised, atol=1e-3)   # the normalisation does something
    assert out.shape == (4, 5)


def test_one_value_mean_std_serves_every_channel():
    model = build(WRNSpec(10, 1, stem_stride=2), 2, 3, (0.5,), (0.25,))
    assert model.normalize.mean.shape == (1, 3, 1, 1)
    assert model.normalize.mean.flatten().tolist() == [0.5] * 3
    assert model.normalize.std.flatten().tolist() == [0.25] * 3


def test_replace_head_changes_the_classes_only():
    torch.manual_seed(0)
    model = build(WRNSpec(10, 1, stem_stride=2), 4, 1, (0.5,), (0.25,)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("blocks.4.fc")}
    old_in = model.head.fc.in_features
    assert model.replace_head(7, seed=1) is model
    assert model.head.fc.out_features == 7 and model.head.fc.in_features == old_in
    assert model(torch.rand(2, 1, 12, 12)).shape == (2, 7)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    w = model.head.fc.weight.clone()
    assert torch.equal(model.replace_head(7, seed=1).head.fc.weight, w)     # seeded: deterministic
    assert not torch.equal(model.replace_head(7, seed=2).head.fc.weight, w)


def test_features_and_penultimate_match_the_forward():
    torch.manual_seed(0)
    model = build(WRNSpec(10, 1, stem_stride=2), 4, 1, (0.5,), (0.25,)).eval()
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        for n_first in range(model.n_blocks):
            torch.testing.assert_close(model.forward_from(model.features(x, n_first), n_first), model(x))
        torch.testing.assert_close(model.head.fc(model.penultimate(x)), model(x))
    assert model.penultimate(x).shape == (3, model.feature_dim)


@pytest.mark.parametrize("kw", [dict(depth=12), dict(depth=4), dict(width=0), dict(stem_stride=3)])
def test_bad_specs_are_config_errors(kw):
    with pytest.raises(ConfigError):
        WRNSpec(**{"depth": 16, "width": 1, **kw})
