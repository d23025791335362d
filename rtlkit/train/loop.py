"""Training methods (each a dataclass of the paper's defaults) and one training loop that
checkpoints every epoch and resumes after a kill.
"""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rtlkit.measure.attacks import PGD, attack_mode
from rtlkit.core.data import ImageData, Loader
from rtlkit.core.errors import check, check_int, check_real, is_real
from rtlkit.core.io import atomic_write_bytes, fault_point, set_aside, sha256_bytes, torch_bytes
from rtlkit.core import distributed
from rtlkit.core.runtime import Runtime, keep_batch_size, seed_all
from rtlkit.train.transfer import TransferPolicy


@dataclass(frozen=True)
class StandardTraining:
    """Natural training. CARTL App. C: SGD momentum 0.9, lr 0.1 decayed x0.2 at epochs 40/70/90 of
    100, batch 128 (weight decay 5e-4 is not in App. C; it is the WRN/Madry-code default)."""
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    milestones: tuple[float, ...] = (0.4, 0.7, 0.9)  # fractions of `epochs` (of `steps` when set)
    gamma: float = 0.2
    augment: bool = True  # the dataset's standard augmentation (DatasetInfo.augment)
    steps: int | None = None  # a budget in optimizer steps instead of epochs: every data size gets the
                              # same number of updates (epochs is then unused; None keeps old cache keys)

    def __post_init__(self):
        check_int("epochs", self.epochs, 1)
        check_real("learning rate", self.lr, 0, low_open=True)
        check_int("batch size", self.batch_size, 1)
        check(is_real(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), not {self.momentum!r}")
        check_real("weight decay", self.weight_decay, 0)
        check_real("gamma", self.gamma, 0, low_open=True)
        check(isinstance(self.milestones, tuple) and all(is_real(m) and 0 < m <= 1 for m in self.milestones),
              f"milestones are a tuple of fractions of the epochs in (0, 1]: {self.milestones!r}")
        if self.steps is not None:
            check_int("steps", self.steps, 1)

    kind = "standard"

    def setup(self, model, data: ImageData, runtime: Runtime):
        """Called once before the first epoch; returns state handed to the hooks below."""
        return None

    def on_epoch_start(self, model, epoch: int, state) -> None:
        pass

    def epoch_record(self, state) -> dict:
        """Called after each epoch: what the method adds to that epoch's history record (LwF: its
        feature distance and penalty / cross-entropy ratio)."""
        return {}

    def prepare_model(self, model):
        """Called once when a source model is built, before training (under the run's seed): a
        method that needs extra modules (SimCLR's projection head) adds them here."""
        return model

    def correct(self, logits, y) -> torch.Tensor:
        """How many of the batch the step got right (the history's train_acc)."""
        return (logits.argmax(1) == y).sum()

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        with runtime.autocast():
            logits = fwd(x)
        return F.cross_entropy(logits.float(), y), logits


@dataclass(frozen=True)
class AdversarialTraining(StandardTraining):
    """PGD adversarial training (Madry et al. 2018; CARTL App. C: PGD-7, eps 8/255, step 2/255).
    Adversarial examples are made with BN in eval mode and the weights fixed."""
    attack: PGD = field(default_factory=PGD)

    kind = "adversarial"

    def adversarial(self, model, fwd, x, y, runtime: Runtime):
        """The PGD examples of this batch (BN in eval mode, weights fixed)."""
        with attack_mode(model):
            return runtime.inputs(self.attack.perturb(fwd, x, y, runtime.autocast, worst=False))  # Madry: last iterate

    def batch_loss(self, model, fwd, x, y, runtime: Runtime, idx=None, state=None):
        return super().batch_loss(model, fwd, self.adversarial(model, fwd, x, y, runtime), y, runtime)


def milestone_epochs(method: StandardTraining) -> list[int]:
    """Milestones in epochs, or in steps for a step budget."""
    total = method.epochs if method.steps is None else method.steps
    return sorted({max(1, round(m * total)) for m in method.milestones})


def make_optimizer(params, method: StandardTraining, runtime: Runtime) -> torch.optim.Optimizer:
    """SGD as the method says; the fused CUDA kernel on the GPU, foreach elsewhere."""
    opt_kw = {"fused": True} if runtime.is_cuda else {"foreach": True}
    return torch.optim.SGD(params, lr=method.lr, momentum=method.momentum,
                           weight_decay=method.weight_decay, **opt_kw)


def train_step(method: StandardTraining, model, fwd, opt, x, y, runtime: Runtime, idx=None, state=None,
               parallel: distributed.DataParallel | None = None):
    """One optimisation step on a batch (the attack, if the method has one, included); with
    ``parallel`` (under torchrun), through DistributedDataParallel, whose backward averages the
    gradients over the ranks. Returns the detached loss and logits; nothing here waits for the device."""
    x = runtime.inputs(x)
    if parallel is not None:
        loss, logits = parallel(x, y, idx)
    else:
        loss, logits = method.batch_loss(model, fwd, x, y, runtime, idx, state)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


class Checkpoints:
    """Epoch checkpoints of one training run, each named by its content hash:
    ``<stem>-e0003-<sha256[:16]>.pt`` beside ``path``. A new one is written (atomically) before the
    older ones are deleted, so a kill at any moment leaves at least one whole checkpoint; one whose
    bytes do not match its name is set aside as ``.corrupt`` and the next older one is used."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.folder, self.stem = path.parent, path.stem

    def files(self) -> list[Path]:
        """Checkpoint files, newest epoch first."""
        def epoch(p: Path) -> int:
            try:
                return int(p.stem.split("-")[-2][1:])
            except (IndexError, ValueError):
                return -1
        return sorted((p for p in self.folder.glob(f"{self.stem}-e*-*.pt") if epoch(p) >= 0), key=epoch, reverse=True)

    def latest(self, map_location) -> dict | None:
        """The newest whole checkpoint (older ones are then deleted), or None."""
        files = self.files()
        for i, p in enumerate(files):
            data = p.read_bytes()
            if sha256_bytes(data)[:16] != p.stem.split("-")[-1]:
                set_aside(p, "checkpoint content does not match the hash in its name")
                continue
            try:
                saved = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
            except Exception as e:  # whole by its hash, so written broken: never use it
                set_aside(p, f"checkpoint unreadable ({type(e).__name__})")
                continue
            for old in files[i + 1:]:
                old.unlink(missing_ok=True)
            return saved
        return None

    def save(self, state: dict, epoch: int) -> Path:
        data = torch_bytes(state)
        path = self.folder / f"{self.stem}-e{epoch:04d}-{sha256_bytes(data)[:16]}.pt"
        atomic_write_bytes(path, data)
        for old in self.files():
            if old != path:
                old.unlink(missing_ok=True)
        return path


def train(model: torch.nn.Module, data: ImageData, method: StandardTraining, runtime: Runtime | None = None,
          policy: TransferPolicy | None = None, checkpoint: str | Path | None = None, seed: int = 0,
          progress: bool = True, desc: str = "train",
          on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train ``model`` in place; returns the per-epoch history.

    With ``policy``, only its trainable parameters move and its BN modes hold. With
    ``checkpoint`` (a path whose folder and stem name the :class:`Checkpoints`), state is saved
    atomically after every epoch and an interrupted run resumes from the newest whole checkpoint;
    per-epoch seeding makes the resumed run bit-identical on the CPU.
    """
    runtime = runtime or Runtime()
    model = runtime.prepare(model)
    synced = distributed.active() and distributed.sync_bn()
    if synced:
        distributed.convert_sync_bn(model, runtime.device)
    params = [p for p in model.parameters() if p.requires_grad]
    check(len(params) > 0, "nothing to train: every parameter is frozen")
    opt = make_optimizer(params, method, runtime)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestone_epochs(method), method.gamma)
    drop_last = len(data) >= method.batch_size
    distributed.check_batch(method.batch_size, len(data))
    loader = Loader(data, method.batch_size, shuffle=True, augment=data.info.augment if method.augment else None,
                    drop_last=drop_last, device=runtime.device, seed=seed, shard=distributed.world_size() > 1)
    budget = method.steps   # a step budget runs the epochs it spans, the last one cut short, and
    if budget is not None:  # steps the learning rate per step; hooks see those epochs in method.epochs
        method = dataclasses.replace(method, epochs=-(-budget // len(loader)))
    state = method.setup(model, data, runtime)  # before a resume: it may read the starting weights
    history: list[dict] = []
    start = 0
    ckpt = Checkpoints(checkpoint) if checkpoint else None
    saved = ckpt.latest(runtime.device) if ckpt is not None else None  # not `state`: that is the method's
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        start, history = saved["epoch"], saved["history"]
    fwd = runtime.compiled(model)
    keep_batch_size(model, (method.batch_size if drop_last else len(data)) // distributed.world_size())
    parallel = distributed.DataParallel(model, fwd, method, runtime, state) if distributed.active() else None
    bar = tqdm(range(start, method.epochs), desc=desc, disable=not progress, initial=start, total=method.epochs)
    for epoch in bar:
        t0 = time.time()
        seed_all(seed * 1000 + epoch)
        loader.set_epoch(epoch)
        if policy is not None:
            policy.set_modes(model)
        else:
            model.train()
        method.on_epoch_start(model, epoch, state)
        tot_loss = torch.zeros((), device=runtime.device)
        tot_correct = torch.zeros((), device=runtime.device)
        n = 0
        for i, (x, y, idx) in enumerate(loader):
            if budget is not None and epoch * len(loader) + i >= budget:
                break
            loss, logits = train_step(method, model, fwd, opt, x, y, runtime, idx, state, parallel)
            tot_loss += loss * len(y)
            tot_correct += method.correct(logits, y)
            n += len(y)
            if budget is not None:
                sched.step()
            fault_point("step")
        if budget is None:
            sched.step()
        tot_loss, tot_correct, n = distributed.all_sum(tot_loss, tot_correct,
                                                       torch.tensor(float(n), device=runtime.device))
        n = int(n)
        rec = {"epoch": epoch + 1, "loss": float(tot_loss) / max(n, 1), "train_acc": float(tot_correct) / max(n, 1),
               "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0, "images": n,
               **method.epoch_record(state)}
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_acc']:.3f}")
        if ckpt is not None and distributed.is_main():
            # wall times stay out of the checkpoint, so that identical runs write identical bytes
            # (a resumed run's train.json has "seconds" for the epochs it ran itself)
            ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "epoch": epoch + 1, "history": [{k: v for k, v in h.items() if k != "seconds"} for h in history]},
                      epoch + 1)
        distributed.barrier()   # the checkpoint is whole before any rank goes on
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rec)
    if synced:
        distributed.revert_bn(model)
    model.eval()
    return history
