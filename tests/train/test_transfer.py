"""Transfer policies, proven by which parameters and BatchNorm buffers must and must not move
when a copy of a source model is fine-tuned (CARTL Sec. 4 and Table 1; Shafahi Fig. 1)."""
import pytest
import torch
import torch.nn as nn

from rtlkit import ConfigError
from rtlkit.core.data import synthetic
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining, train
from rtlkit.train.transfer import BN_CASES, TransferPolicy, prepare_target

from conftest import state_of, tiny_model

CPU = Runtime("cpu")
FINETUNE = StandardTraining(epochs=1, lr=0.1, batch_size=64)
BN = nn.modules.batchnorm._BatchNorm


@pytest.fixture(scope="module")
def source():
    """A WRN-10-1-s2 (5 blocks) trained for one epoch, so that its BN statistics and affine
    parameters are not at their initial values."""
    torch.manual_seed(0)
    model = tiny_model(4, seed=0)
    train(model, synthetic("train", seed=0, n_train=256, size=12), FINETUNE, CPU, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def target():
    return synthetic("train", seed=7, n_train=192, size=12, classes=3)


def fine_tune(source, target, policy):
    model = prepare_target(source, 3, policy, seed=0)
    prepared = state_of(model)
    train(model, target, FINETUNE, CPU, policy=policy, progress=False)
    return model, prepared


def block_entries(model, blk):
    """(name in the model's state_dict, owning module, short name) for one block's params and buffers."""
    prefix = next(n for n, m in model.named_modules() if m is blk)
    out = []
    for mname, m in blk.named_modules():
        full = f"{prefix}.{mname}" if mname else prefix
        for short, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            out.append((f"{full}.{short}", m, short))
    return out


def same(a, b):
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("case", list(BN_CASES))
def test_bn_cases_freeze_exactly_what_they_say(case, k, source, target):
    pol = TransferPolicy.bn_case(case, k)
    model, prepared = fine_tune(source, target, pol)
    s0, s1 = state_of(source), state_of(model)
    frozen, tuned = pol.split(model)
    assert len(frozen) == 5 - k and len(tuned) == k

    # the input normalisation is the source's, bit for bit
    for name in ("normalize.mean", "normalize.std"):
        assert same(s0[name], s1[name])

    # the frozen extractor: every parameter bit-identical; BN statistics reused or updated
    n_stats = 0
    for blk in frozen:
        for name, m, short in block_entries(model, blk):
            if short in ("running_mean", "running_var", "num_batches_tracked"):
                n_stats += 1
                assert same(s0[name], s1[name]) == (pol.bn_stats == "reuse"), name
            else:
                assert same(s0[name], s1[name]), f"frozen {name} changed"
    assert n_stats > 0

    # the fine-tuned part starts from the source (except the new head) ...
    for blk in tuned:
        for name, m, short in block_entries(model, blk):
            if not isinstance(m, nn.Linear):
                assert same(s0[name], prepared[name]), f"{name} did not start from the source"
    # ... then BN affine trains or stays; every other weight trains; BN statistics always update
    n_bn = n_other = 0
    for blk in tuned:
        for name, m, short in block_entries(model, blk):
            if short == "num_batches_tracked":
                continue
            if isinstance(m, BN) and short in ("weight", "bias"):
                n_bn += 1
                assert same(prepared[name], s1[name]) == (pol.bn_affine == "freeze"), name
            elif isinstance(m, BN):
                assert not same(prepared[name], s1[name]), f"fine-tuned BN statistic {name} did not update"
            else:
                n_other += 1
                assert not same(prepared[name], s1[name]), f"trainable {name} did not change"
    assert n_bn == 2 * (1 if k == 2 else 3)        # final BN (+ bn1, bn2 of the last residual block)
    assert n_other == (2 if k == 2 else 5)         # fc weight and bias (+ conv1, conv2, shortcut conv)


def test_k_all_trains_the_stem(source, target):
    pol = TransferPolicy(k="all", bn_affine="train")
    model, prepared = fine_tune(source, target, pol)
    assert pol.split(model)[0] == []
    assert torch.equal(prepared["blocks.0.0.conv.weight"], source.blocks[0][0].conv.weight)
    assert not torch.equal(model.blocks[0][0].conv.weight, source.blocks[0][0].conv.weight)


def test_k1_trains_only_the_classifier(source, target):
    pol = TransferPolicy(k=1)
    model, prepared = fine_tune(source, target, pol)
    after = state_of(model)
    changed = {n for n in after if not torch.equal(prepared[n], after[n])}
    assert changed == {"blocks.4.fc.weight", "blocks.4.fc.bias"}


def test_the_classifier_is_new_and_sized_for_the_target(source):
    model = prepare_target(source, 3, TransferPolicy(k=2))
    assert model.head.fc.out_features == 3 and source.head.fc.out_features == 4
    assert model.head.fc is not source.head.fc and model.blocks[0] is not source.blocks[0]


def test_trainable_parameters_match_the_policy(source):
    pol = TransferPolicy(k=3, bn_affine="freeze")
    model = prepare_target(source, 3, pol)
    frozen, tuned = pol.split(model)
    assert not any(p.requires_grad for b in frozen for p in b.parameters())
    for b in tuned:
        for m in b.modules():
            for p in m.parameters(recurse=False):
                assert p.requires_grad == (not isinstance(m, BN))
    assert all(p.requires_grad for p in source.parameters())   # the source is left alone


@pytest.mark.parametrize("stats", ["reuse", "update"])
def test_set_modes(stats, source):
    pol = TransferPolicy(k=2, bn_stats=stats)
    model = prepare_target(source, 3, pol)
    pol.set_modes(model)
    frozen, tuned = pol.split(model)
    assert all(m.training == (stats == "update") for b in frozen for m in b.modules())
    assert all(m.training for b in tuned for m in b.modules())


def test_reinit_changes_the_fine_tuned_blocks_only(source):
    pol = TransferPolicy(k=3, reinit=True)
    model = prepare_target(source, 3, pol, seed=1)
    s0, s1 = state_of(source), state_of(model)
    frozen, tuned = pol.split(model)
    for blk in frozen:
        for name, _, _ in block_entries(model, blk):
            assert same(s0[name], s1[name]), name
    for blk in tuned[:-1]:                           # the head is replaced anyway
        for name, m, short in block_entries(model, blk):
            if short == "num_batches_tracked":
                continue
            assert not same(s0[name], s1[name]), f"{name} was not re-initialised"
            if isinstance(m, BN):                    # back to a fresh BN
                fresh = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}[short]
                assert torch.all(s1[name] == fresh), name
    again = prepare_target(source, 3, pol, seed=1)   # deterministic for a seed
    assert torch.equal(again.blocks[2].conv1.weight, model.blocks[2].conv1.weight)
    other = prepare_target(source, 3, pol, seed=2)
    assert not torch.equal(other.blocks[2].conv1.weight, model.blocks[2].conv1.weight)


def test_without_reinit_the_fine_tuned_blocks_start_from_the_source(source):
    model = prepare_target(source, 3, TransferPolicy(k=3))
    assert torch.equal(model.blocks[2].conv1.weight, source.blocks[2].conv1.weight)


def test_k_beyond_the_model_is_a_config_error(source):
    with pytest.raises(ConfigError, match="only 5 blocks"):
        prepare_target(source, 3, TransferPolicy(k=6))
    with pytest.raises(ConfigError):
        TransferPolicy(k=6).split(source)
    assert TransferPolicy(k=5).check_model(5) == 5 and TransferPolicy(k="all").check_model(5) == 5


@pytest.mark.parametrize("kw", [dict(k=0), dict(k=-1), dict(k="most"), dict(k=2.5),
                                dict(bn_stats="keep"), dict(bn_affine="x")])
def test_bad_policies_are_config_errors(kw):
    with pytest.raises(ConfigError):
        TransferPolicy(**kw)


def test_unknown_bn_case_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown BN case"):
        TransferPolicy.bn_case("reuse everything", 2)


def test_random_init_keeps_no_source_weight():
    """Vaishnavi et al.'s Random baseline: TransferPolicy(k="all", reinit=True) re-draws every
    parameter and BN statistic; only the input normalisation (data statistics) carries over."""
    from rtlkit.train.transfer import TransferPolicy, prepare_target
    src = tiny_model(seed=5)
    with torch.no_grad():
        for t in list(src.parameters()) + [b for n, b in src.named_buffers() if "running" in n]:
            t.add_(0.123)
    fresh = prepare_target(src, 4, TransferPolicy(k="all", reinit=True, bn_affine="train"), seed=1)
    s0 = src.state_dict()
    for name, v in fresh.state_dict().items():
        if name.startswith("normalize.") or name.endswith("num_batches_tracked"):
            continue
        assert v.shape != s0[name].shape or not torch.equal(v, s0[name]), f"{name} survived the re-init"
    assert all(p.requires_grad for p in fresh.parameters())
