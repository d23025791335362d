"""One call for clean and robust accuracy of a model on a dataset, with per-example results."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rtlkit.measure.attacks import PGD, FoolboxPGD, attack_mode
from rtlkit.core.data import ImageData, Loader, pad_rows
from rtlkit.core.runtime import Runtime
from rtlkit.core import distributed


@dataclass
class EvalResult:
    clean_acc: float
    robust_acc: float                  # minimum over the attacks, per example (worst case)
    per_attack: dict[str, float]       # robust accuracy of each attack alone
    examples: pd.DataFrame             # index, label, clean_correct, <attack>_correct..., robust_correct

    def summary(self) -> dict:
        return {"clean_acc": self.clean_acc, "robust_acc": self.robust_acc,
                **{f"robust_acc[{k}]": v for k, v in self.per_attack.items()}}


def evaluate(model: torch.nn.Module, data: ImageData, attacks: list[PGD | FoolboxPGD] | PGD | FoolboxPGD,
             runtime: Runtime | None = None, batch_size: int = 500, progress: bool = True,
             prune: bool = True) -> EvalResult:
    """Clean accuracy and robust accuracy (an example counts as robust only if it survives every
    attack given) on all of ``data``.

    Each attack runs on every example, so each attack's own column is that attack alone (03 and
    06 compare PGD-CE with PGD-CW). ``prune``: our PGD drops an example from its batch once it is
    fooled (every step on the CPU, every 5 on a GPU, where each pruning is a host sync; a compiled
    model runs the survivors at a bucketed batch size, ``runtime.batch_bucket``) and ends the batch
    when all are: an example's result is the one the whole batch gives it (its random
    start is drawn with the batch's; tests/measure/test_attacks checks the per-example identity).
    foolbox's PGD runs the whole batch (its random start is drawn per call). Every attack runs in
    the runtime's numerics (bf16 autocast on a GPU, float32 logits)."""
    runtime = runtime or Runtime()
    attacks = [attacks] if hasattr(attacks, "label") else list(attacks)   # one attack, or several
    names = [a.label for a in attacks]
    distributed.check_shards(len(data))
    loader = Loader(data, batch_size, device=runtime.device)
    every = (5 if runtime.is_cuda else 1) if prune else 0
    done: dict[int, dict[str, torch.Tensor]] = {}   # batch -> columns; under torchrun, this rank's batches
    with attack_mode(model):
        fwd = runtime.compiled(model)
        for b, (x, y, idx) in enumerate(tqdm(loader, desc="evaluate", leave=False, disable=not progress)):
            n = len(y)
            if runtime.compile and n < batch_size:
                x, y = pad_rows(x, batch_size), pad_rows(y, batch_size)  # one graph: no tail-batch recompile
            x = runtime.inputs(x)
            if not distributed.owns(b):   # another rank's batch: keep the random stream, skip the work
                for a in attacks:
                    a.skip(x)
                continue
            with torch.no_grad(), runtime.autocast():
                clean = fwd(x).argmax(1) == y
            cols = done[b] = {"index": idx, "label": y[:n], "clean_correct": clean[:n]}
            for a, name in zip(attacks, names):
                if isinstance(a, PGD):   # compiled calls bucket the pruned batch's size (runtime.batch_bucket)
                    x_adv = a.perturb(fwd, x, y, runtime.autocast, prune_every=every)
                else:   # foolbox's PGD, APGD, Square: their own loops, in the runtime's numerics
                    x_adv = a.perturb(fwd, x, y, runtime.autocast)
                with torch.no_grad(), runtime.autocast():
                    cols[name] = ((fwd(runtime.inputs(x_adv)).argmax(1) == y) & clean)[:n]
    done = {b: {k: v.cpu().numpy() for k, v in cols.items()} for b, cols in done.items()}   # one sync, at the end
    parts = distributed.gathered(done)
    df = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in ["index", "label", "clean_correct", *names]})
    df["robust_correct"] = df[names].all(axis=1) if names else df["clean_correct"]
    return EvalResult(float(df.clean_correct.mean()), float(df.robust_correct.mean()),
                      {n: float(df[n].mean()) for n in names}, df)


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of the summed cross-entropy at the true labels with respect to the input
    pixels (Shafahi et al. Fig. 5), in eval mode with the weights fixed (modes and flags restored)."""
    with attack_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        grad, = torch.autograd.grad(loss, xg)
    return grad
