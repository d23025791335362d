"""Transfer policies, proven by which parameters and BN buffers must or must not change."""
import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.models import WRNSpec, build
from rtlkit.training import StandardTraining, train
from rtlkit.transfer import BN_CASES, TransferPolicy, prepare_target

from conftest import tiny_model


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fine_tune(policy, syn, epochs=1):
    src = tiny_model().eval()
    model = prepare_target(src, 3, policy, seed=0)
    tgt = syn.take(torch.nonzero(syn.y < 3).squeeze(1))
    train(model, tgt, StandardTraining(epochs=epochs, lr=0.1, batch_size=64), policy=policy, progress=False)
    return src, model


def same(a, b):
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("case", list(BN_CASES))
def test_bn_cases_freeze_exactly_what_they_say(case, k, syn):
    pol = TransferPolicy.bn_case(case, k)
    src, model = fine_tune(pol, syn)
    n_frozen = model.n_blocks - k
    s0, s1 = state(src), state(model)
    assert same(s0["normalize.mean"], s1["normalize.mean"])
    for name, v in s1.items():
        if not name.startswith("blocks."):
            continue
        block = int(name.split(".")[1])
        is_bn = name.rsplit(".", 1)[-1] in ("weight", "bias") and isinstance(
            model.get_submodule(name.rsplit(".", 1)[0]), nn.BatchNorm2d)
        is_stat = name.endswith(("running_mean", "running_var"))
        if block < n_frozen:
            if is_stat:
                # frozen extractor: running statistics reused (bit-identical) or updated on the target
                assert same(s0[name], v) == (pol.bn_stats == "reuse"), name
            elif not name.endswith("num_batches_tracked"):
                assert same(s0[name], v), f"frozen parameter changed: {name}"
        elif is_bn:
            assert same(s0[name], v) == (pol.bn_affine == "freeze"), name
        elif name.endswith("weight") and "fc" not in name:
            assert not same(s0[name], v), f"trainable weight did not change: {name}"
    assert not same(model.head.fc.weight, torch.zeros_like(model.head.fc.weight))


def test_k_all_trains_the_stem_and_k1_only_the_head(syn):
    src, model = fine_tune(TransferPolicy(k="all", bn_affine="train"), syn)
    assert not same(src.blocks[0][0].conv.weight, model.blocks[0][0].conv.weight)
    pol = TransferPolicy(k=1)
    model = prepare_target(tiny_model().eval(), 4, pol)
    s0 = state(model)
    train(model, syn, StandardTraining(epochs=1, lr=0.1, batch_size=64), policy=pol, progress=False)
    s1 = state(model)
    changed = {n for n in s1 if not torch.equal(s0[n], s1[n])}
    assert changed == {f"blocks.{model.n_blocks - 1}.fc.weight", f"blocks.{model.n_blocks - 1}.fc.bias"}


def test_trainable_parameters_match_the_policy():
    m = tiny_model()
    pol = TransferPolicy(k=3, bn_affine="freeze")
    params = pol.apply(m)
    frozen, tuned = pol.split(m)
    assert len(frozen) == 2 and len(tuned) == 3
    ids = set(map(id, params))
    for b in tuned:
        for mod in b.modules():
            for p in mod.parameters(recurse=False):
                assert (id(p) in ids) == (not isinstance(mod, nn.BatchNorm2d))
    assert not any(id(p) in ids for b in frozen for p in b.parameters())


def test_reinit_changes_only_the_fine_tuned_blocks():
    src = tiny_model()
    model = prepare_target(src, 4, TransferPolicy(k=2, reinit=True), seed=1)
    s0, s1 = state(src), state(model)
    n_frozen = model.n_blocks - 2
    for name in s1:
        if name.startswith("blocks.") and int(name.split(".")[1]) < n_frozen:
            assert torch.equal(s0[name], s1[name])
    assert not torch.equal(src.blocks[-2].bn.weight, torch.zeros(1)) and \
        not torch.equal(src.blocks[-1].fc.weight, model.blocks[-1].fc.weight)


def test_block_partition_counts():
    assert WRNSpec(34, 10).n_blocks == 17
    assert len(build(WRNSpec(34, 10), 10, 3, (0.5,), (0.5,)).blocks) == 17
    assert WRNSpec(28, 4).n_blocks == 14
    assert len(build(WRNSpec(16, 1, stem_stride=2), 10, 1, (0.5,), (0.5,)).blocks) == 8


def test_normalisation_is_inside_the_model():
    m = tiny_model().eval()
    x = torch.rand(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(m(x), m.forward_from((x - 0.5) / 0.25, 0))
    m.replace_head(7)
    assert m(x).shape == (4, 7)


@pytest.mark.parametrize("kw", [dict(k=0), dict(k=-1), dict(k="most"), dict(bn_stats="keep"), dict(bn_affine="x")])
def test_bad_policies_are_clear_errors(kw):
    with pytest.raises(ConfigError):
        TransferPolicy(**kw)


def test_k_beyond_the_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="only 5 blocks"):
        prepare_target(tiny_model(), 4, TransferPolicy(k=6))
    with pytest.raises(ConfigError):
        WRNSpec(12, 1)
