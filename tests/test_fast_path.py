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
