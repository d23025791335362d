"""The GPU fast path (bf16 autocast, channels_last, torch.compile) runs correctly on the CPU too."""
import math

import pytest

import torch

from rtlkit.measure.attacks import PGD
from rtlkit.measure.evaluate import evaluate
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import AdversarialTraining, train

from conftest import tiny_model


def test_fast_path_trains_and_attacks_on_cpu(syn):
    from rtlkit.core.data import synthetic
    test = synthetic("test", seed=3, n_test=128, size=12, noise=0.3)
    method = AdversarialTraining(epochs=2, lr=0.05, batch_size=64, attack=PGD(0.1, 2, 0.05))
    results = {}
    for name, rt in {"fp32": Runtime("cpu"),
                     "fast": Runtime("cpu", amp=True, channels_last=True, compile=True)}.items():
        model = tiny_model(seed=4)
        hist = train(model, syn, method, rt, seed=0, progress=False)
        assert all(math.isfinite(h["loss"]) for h in hist)
        if rt.channels_last:
            conv = model.blocks[1].conv1.weight
            assert conv.is_contiguous(memory_format=torch.channels_last)
        # at the training batch size: the attack's graphs are training's (inductor compiles 15, not 20)
        results[name] = evaluate(model, test, PGD(0.1, 5, 0.03), rt, batch_size=64, progress=False)
    # same seed, same data: bf16 + compile must not cost accuracy
    assert abs(results["fast"].clean_acc - results["fp32"].clean_acc) <= 0.1
    assert results["fast"].clean_acc > 0.5


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def _finetune(source, data, policy, seed, rt, neft=None, lwf=False):
    from rtlkit.measure.attacks import PGD
    from rtlkit.train.methods.lwf import LwFTraining
    from rtlkit.train.transfer import prepare_target
    model = prepare_target(source, 4, policy, seed=seed, neft=neft)
    method = LwFTraining(epochs=2, batch_size=64, lam_d=0.1) if lwf else \
        AdversarialTraining(epochs=1, lr=0.05, batch_size=64, attack=PGD(0.1, 1, 0.1), augment=False)
    train(model, data, method, rt, policy=policy, seed=seed, progress=False)
    evaluate(model, data, PGD(0.1, 1, 0.1), rt, batch_size=100, progress=False)  # a tail batch: padded


def test_compiled_sweep_does_not_recompile_per_k_or_bn_mode(syn):
    """Blocks compile in place; a repeat of any (k, BN mode) on a fresh copy, with another seed and
    another dataset size (another tail batch), compiles nothing new; the sweep's graph count is
    bounded by block variants, not by the number of (k, BN) runs."""
    import torch._dynamo
    from rtlkit.train.transfer import BN_CASES, TransferPolicy
    torch._dynamo.reset()
    start = _graphs()
    rt = Runtime("cpu", compile=True, compile_backend="aot_eager")
    source = rt.prepare(tiny_model(seed=1))
    configs = [TransferPolicy.bn_case(case, k) for k in (1, 2, 3, 4, "all") for case in BN_CASES]
    lwf = TransferPolicy(k="all", bn_affine="freeze")
    for i, policy in enumerate(configs):
        _finetune(source, syn, policy, seed=i, rt=rt)
    _finetune(source, syn, lwf, seed=0, rt=rt, lwf=True)
    after_first = _graphs() - start
    # a block meets a bounded set of variants (attack; clean eval; frozen eval / train-stats; fine-tuned
    # with or without an input gradient, BN affine trained or frozen; LwF's eval-BN training and its
    # feature pass), whatever the k: here 21 (k, BN, method) runs give 45 graphs on 5 blocks
    assert 0 < after_first <= 10 * source.n_blocks, after_first
    smaller = syn.take(torch.arange(230))
    for i, policy in enumerate(configs):
        _finetune(source, smaller, policy, seed=100 + i, rt=rt)
    _finetune(source, smaller, lwf, seed=1, rt=rt, lwf=True)
    assert _graphs() - start == after_first, "a repeated (k, BN mode) on a new model or data size recompiled"


def test_deep_copy_of_a_compiled_model_runs_its_own_weights():
    from rtlkit.core.runtime import is_compiled
    from rtlkit.train.transfer import TransferPolicy, prepare_target
    rt = Runtime("cpu", compile=True, compile_backend="aot_eager")
    source = rt.prepare(tiny_model(seed=1)).eval()
    target = prepare_target(source, 4, TransferPolicy(k="all"), seed=0)
    assert not any(is_compiled(b) for b in target.blocks)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(-1.0)
        x = torch.rand(8, 1, 12, 12)
        assert not torch.allclose(source(x), target.eval()(x))


def test_compiled_evaluation_pads_the_tail_batch_without_changing_results():
    """Under compile the last, smaller batch is padded to the full batch (one graph); results per
    example must equal the eager evaluation's (deterministic PGD: no random start)."""
    from rtlkit.core.data import synthetic
    data = synthetic("test", seed=3, n_test=70, size=12, noise=0.3)      # 70 = 32 + 32 + a tail of 6
    attack = PGD(0.1, 3, 0.05, random_start=False)
    model = tiny_model(seed=2).eval()
    eager = evaluate(model, data, attack, Runtime("cpu"), batch_size=32, progress=False)
    fast = evaluate(model, data, attack, Runtime("cpu", compile=True, compile_backend="aot_eager"),
                    batch_size=32, progress=False)
    assert len(fast.examples) == 70 and fast.examples["index"].tolist() == eager.examples["index"].tolist()
    assert (fast.examples["clean_correct"] == eager.examples["clean_correct"]).all()
    assert (fast.examples["robust_correct"] == eager.examples["robust_correct"]).all()


def test_compiled_fdm_and_neft_match_eager_and_compile_once(syn):
    """FDM's clean forward (throw-away BN statistics) and NEFT's parametrised layers under compile:
    the same step as eager, and later steps add no graph (no guard on swapped buffers)."""
    import copy

    from rtlkit.measure.attacks import PGD
    from rtlkit.train.methods.fdm import FDMTraining
    from rtlkit.train.methods.neft import NEFT
    from rtlkit.train.loop import StandardTraining, make_optimizer, train_step
    from rtlkit.train.transfer import TransferPolicy, prepare_target
    x, y = syn.x[:32].float() / 255, syn.y[:32]

    def run(method, model, rt, policy=None, steps=1):
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], method, rt)
        losses = []
        for i in range(steps):
            torch.manual_seed(i)
            policy.set_modes(model) if policy else model.train()
            losses.append(float(train_step(method, model, rt.compiled(model), opt, x, y, rt)[0]))
        return losses

    fdm = FDMTraining(epochs=1, lr=0.05, batch_size=32, attack=PGD(0.1, 2, 0.05), lam=0.5, k=2)
    pol = TransferPolicy(k=3)
    eager_rt, fast_rt = Runtime("cpu"), Runtime("cpu", compile=True, compile_backend="aot_eager")
    for method, make, policy in (
            (fdm, lambda: tiny_model(seed=3), None),
            (StandardTraining(epochs=1, lr=0.05, batch_size=32),
             lambda: prepare_target(tiny_model(seed=3).eval(), 4, pol, neft=NEFT(0.6)), pol)):
        a = make()
        b = copy.deepcopy(a)
        la = run(method, a, eager_rt, policy)
        lb = run(method, fast_rt.prepare(b), fast_rt, policy)
        assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:   # weights and BN statistics (FDM's clean pass must leave them as AT's)
            assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-4), k
        before = _graphs()
        run(method, b, fast_rt, policy, steps=3)
        assert _graphs() == before, "a later step recompiled"
