"""The GPU fast path (bf16 autocast, channels_last, torch.compile) runs correctly on the CPU too."""
import math

import torch

from rtlkit.attacks import PGD
from rtlkit.evaluate import evaluate
from rtlkit.runtime import Runtime
from rtlkit.training import AdversarialTraining, train

from conftest import tiny_model


def test_fast_path_trains_and_attacks_on_cpu(syn):
    from rtlkit.data import synthetic
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
        results[name] = evaluate(model, test, PGD(0.1, 5, 0.03), rt, progress=False)
    # same seed, same data: bf16 + compile must not cost accuracy
    assert abs(results["fast"].clean_acc - results["fp32"].clean_acc) <= 0.1
    assert results["fast"].clean_acc > 0.5


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def _finetune(source, data, policy, seed, rt, neft=None):
    from rtlkit.attacks import PGD
    from rtlkit.transfer import prepare_target
    model = prepare_target(source, 4, policy, seed=seed, neft=neft)
    method = AdversarialTraining(epochs=1, lr=0.05, batch_size=64, attack=PGD(0.1, 1, 0.1), augment=False)
    train(model, data, method, rt, policy=policy, seed=seed, progress=False)
    evaluate(model, data, PGD(0.1, 1, 0.1), rt, batch_size=100, progress=False)  # 256 = 2 x 100 + a tail


def test_compiled_sweep_does_not_recompile_per_k_or_bn_mode(syn):
    """Blocks compile in place; a repeat of any (k, BN mode) on a fresh copy compiles nothing new,
    and the sweep's graph count is bounded by block variants, not by the number of (k, BN) runs."""
    import torch._dynamo
    from rtlkit.transfer import BN_CASES, TransferPolicy
    torch._dynamo.reset()
    start = _graphs()
    rt = Runtime("cpu", compile=True, compile_backend="aot_eager")
    source = rt.prepare(tiny_model(seed=1))
    configs = [TransferPolicy.bn_case(case, k) for k in (1, 2, 3, 4, "all") for case in BN_CASES]
    for i, policy in enumerate(configs):
        _finetune(source, syn, policy, seed=i, rt=rt)
    after_first = _graphs() - start
    # a block meets at most 8 variants (attack; clean eval; frozen eval / train-stats; fine-tuned with
    # or without an input gradient, BN affine trained or frozen), whatever the k
    assert 0 < after_first <= 8 * source.n_blocks < 2 * len(configs) * 3, after_first
    for i, policy in enumerate(configs):
        _finetune(source, syn, policy, seed=100 + i, rt=rt)
    assert _graphs() - start == after_first, "a repeated (k, BN mode) on a new model recompiled"


def test_deep_copy_of_a_compiled_model_runs_its_own_weights():
    from rtlkit.runtime import is_compiled
    from rtlkit.transfer import TransferPolicy, prepare_target
    rt = Runtime("cpu", compile=True, compile_backend="aot_eager")
    source = rt.prepare(tiny_model(seed=1)).eval()
    target = prepare_target(source, 4, TransferPolicy(k="all"), seed=0)
    assert not any(is_compiled(b) for b in target.blocks)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(-1.0)
        x = torch.rand(8, 1, 12, 12)
        assert not torch.allclose(source(x), target.eval()(x))
