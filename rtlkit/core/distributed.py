"""One run on several GPUs (or CPU processes): data parallelism under ``torchrun``.

    torchrun --nproc_per_node=8 -m rtlkit.suite.run --profile paper source-<hash>

With ``WORLD_SIZE`` > 1 every training method trains data-parallel; with one process nothing
here does anything, so the same code runs on one device unchanged.

- Batches: the device-resident ``Loader`` draws each epoch's permutation from the run's seed, the
  same on every rank, makes each *global* batch of the method's ``batch_size`` exactly as one
  process would (augmentation included), and gives rank r the rows r, r + W, ... of it. The
  global batch, the config and the cache key do not depend on the number of processes.
- Gradients: ``torch.nn.parallel.DistributedDataParallel`` averages them in the backward. It
  wraps the method's whole batch loss (:class:`DataParallel`), not the model's ``forward``: so
  methods that reach past ``model.forward`` (FDM's adversarial and clean ``model.features`` and
  ``forward_from``, LwF's ``penultimate``, SimCLR's projection) are one DDP forward per step, the
  attack inside it runs with the weights' ``requires_grad`` off (no gradient reaches DDP's hooks),
  and LwF's warm start, which changes ``requires_grad`` mid-run, rebuilds the wrapper.
- BatchNorm: per-rank batch statistics by default, as the reference AT code (Madry et al.) and
  DDP do; ``RTLKIT_SYNC_BN=1`` computes them over the global batch (``torch.nn.SyncBatchNorm`` on
  GPUs; :class:`GroupBatchNorm`, an all-reduce of sums and squares, on gloo / the CPU, where
  SyncBatchNorm cannot run). Only synced statistics reproduce one-process training.
- Losses that couple a batch's examples: SimCLR's NT-Xent gathers every rank's projections
  (:func:`all_gather_rows`), so each view's negatives are the global batch's, as in one process.
  Every other method's loss is a mean of per-example terms.
- Per-rank work that must agree: LwF's precomputed source features are computed by every rank
  for its own shard rows (it computes them for the whole training set, the same on each rank);
  NEFT's spectral-norm power iteration runs on each rank from the same seed on the same
  (averaged) weights, so it stays identical; ``torch.compile`` compiles each rank's blocks for
  its per-rank batch shape.
- Evaluation and certification: the test set's batches (certification: its groups of images)
  are dealt out to the ranks, r, r + W, ..., and the per-example rows are gathered back in order,
  so the CSV is a one-process run's. A batch keeps the one-process RNG stream: a rank draws and
  drops the random starts of the batches it leaves to others (``PGD.skip``); APGD, Square and the
  smoothing noise seed their own generators per batch. More ranks than batches leaves some idle;
  more ranks than test examples is an error before any compute.
- Other cached per-image work (frozen features, notebook 05's noisy features and input search):
  every rank computes the same tensors, rank 0 alone verifies and writes.
- Collectives: every value reduced is moved to the group's device first (:func:`all_sum`); the
  group's timeout is :func:`timeout_seconds` (12 hours by default, ``RTLKIT_DIST_TIMEOUT_S``), since
  rank 0 may wait for another process's run lock while the others sit in a broadcast. A synced BN
  runs eagerly inside a compiled block (:class:`EagerSyncBatchNorm`).
- Files: rank 0 alone holds the run's lock and writes checkpoints, model.pt, train.json and the
  completion marker; the others wait at a barrier. A checkpoint holds no trace of the world size,
  so a run resumes under any number of processes.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

from rtlkit.core.errors import check


def active() -> bool:
    """Whether this process trains as one rank of several (after :func:`init`)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The ranks training together: 1 unless :func:`init` joined a group (a WORLD_SIZE in the
    environment alone never shards a batch that no all-reduce would put back together)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


# How long a rank waits in a collective before the group aborts: NCCL's own default is 10 minutes,
# but rank 0 may wait on another process's run lock (that process training the same run: hours at the
# paper's scale) while the others sit in a broadcast, and uneven evaluation shards leave ranks in a
# gather for up to a shard's time. So the default is 12 hours, set by RTLKIT_DIST_TIMEOUT_S.
TIMEOUT_ENV = "RTLKIT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 12 * 3600


def timeout_seconds() -> float:
    """The process group's collective timeout in seconds: ``$RTLKIT_DIST_TIMEOUT_S``, else 12 hours."""
    raw = (os.environ.get(TIMEOUT_ENV) or "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    check(value == value and 0 < value < float("inf"),
          f"{TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return value


def init(device: str = "cpu") -> None:
    """Join the process group torchrun describes (gloo on the CPU, nccl on GPUs), with
    :func:`timeout_seconds` as its collectives' timeout; nothing when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    from datetime import timedelta
    timeout = timedelta(seconds=timeout_seconds())   # checked before the group (or the GPU) is touched
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timeout)


def finish(wait: bool = True) -> None:
    """Leave the group, after a barrier unless ``wait`` is off (a rank that failed must not wait
    for ranks that may be blocked in a collective: leaving makes theirs fail, not hang). Without
    it gloo can abort the process at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def sync_bn() -> bool:
    return os.environ.get("RTLKIT_SYNC_BN", "0") not in ("", "0", "false", "no")


def record() -> dict:
    """What a result's JSON records of the group that made it: ``processes`` when more than one."""
    return {"processes": world_size()} if world_size() > 1 else {}


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's value of ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_batch(batch_size: int, n: int) -> None:
    """Each global batch must split evenly over the ranks (the mean of equal shards' means is the
    global mean)."""
    w = world_size()
    if w > 1:
        check(batch_size % w == 0, f"batch size {batch_size} does not split over {w} processes")
        check(n >= w, f"{w} processes but only {n} training examples: each rank needs at least one")
        if n < batch_size:
            check(n % w == 0, f"a single batch of {n} examples does not split over {w} processes")


def check_shards(n: int, what: str = "test examples") -> None:
    """Evaluation and certification shard their work by rank: more ranks than examples is an error
    (before any compute), not a rank with nothing to do."""
    w = world_size()
    if w > 1:
        check(n >= w, f"{w} processes but only {n} {what}: each rank needs at least one; run at most {n} processes")


def owns(i: int) -> bool:
    """Whether this rank does the i-th piece of sharded work (pieces r, r + W, ...)."""
    return i % world_size() == rank()


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` alone)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gathered(pieces: dict) -> list:
    """The values of every rank's ``{piece index: value}`` in piece order: the pieces a sharded
    loop did, put back in the order one process does them."""
    merged: dict = {}
    for part in gather(pieces):
        merged.update(part)
    return [merged[i] for i in sorted(merged)]


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch: r, r + W, ..."""
    return x[rank()::world_size()] if world_size() > 1 else x


class _BatchLoss(nn.Module):
    """The module DDP wraps: its forward is a method's whole batch loss (its attack, every call it
    makes into the model, its penalty). DDP then sees one forward per step, however many times and
    through whichever entry (``features``, ``penultimate``, ``forward_from``) the method uses the
    model, and each parameter's gradient is ready once, summed over those uses."""

    def __init__(self, model: nn.Module, fwd, method, runtime, state):
        super().__init__()
        self.model = model
        self._call = (fwd, method, runtime, state)

    def forward(self, x, y, idx=None):
        fwd, method, runtime, state = self._call
        return method.batch_loss(self.model, fwd, x, y, runtime, idx, state)


class DataParallel:
    """A method's batch loss under ``torch.nn.parallel.DistributedDataParallel``: calling it runs
    the loss; the backward averages the gradients over the ranks (DDP's buckets, overlapped with
    the backward). DDP averages only the parameters that required grad when it was built, so it is
    built again when that set changes (LwF's warm start unfreezes the body after its warm epochs;
    every rank changes it at the same step). Settings:

    - ``static_graph``: should a method leave a trainable parameter out of its loss, DDP finds it
      in the first step and marks it ready from then on, without the per-step graph traversal of
      ``find_unused_parameters``. What a step uses does not change within a wrapper's life (the
      warm start's change builds a new one);
    - ``forward_sync_buffers=False``: BatchNorm keeps per-rank statistics unless synced
      (``sync_bn``), as without DDP; a rebuilt wrapper skips DDP's initial broadcast
      (``init_sync``) for the same reason.
    """

    def __init__(self, model: nn.Module, fwd, method, runtime, state):
        self.loss = _BatchLoss(model, fwd, method, runtime, state)
        self.ddp, self.trainable = None, None
        self.cuda = runtime.is_cuda

    def __call__(self, x, y, idx=None):
        trainable = tuple(id(p) for p in self.loss.parameters() if p.requires_grad)
        if trainable != self.trainable:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(
                self.loss, device_ids=[torch.cuda.current_device()] if self.cuda else None,
                forward_sync_buffers=False, static_graph=True, init_sync=self.ddp is None)
            self.trainable = trainable
        return self.ddp(x, y, idx)


def group_device() -> torch.device:
    """The device the group's collectives take their tensors on: this rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sums over ranks of scalar tensors (epoch loss and accuracy totals), wherever each value lives:
    they are moved to the group's device (:func:`group_device`) first, and the sums come back there."""
    if not active():
        return list(values)
    dev = group_device()
    flat = torch.stack([v.reshape(()).to(device=dev, dtype=torch.float32) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


class _AllReduceSum(torch.autograd.Function):
    """A sum over ranks whose backward sums the gradients over ranks (each rank's loss depends on
    every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class _AllGatherRows(torch.autograd.Function):
    """Every rank's rows, in rank order; the backward gives each rank the gradient of its own rows
    summed over the ranks (each rank's loss reaches every rank's rows through the gather)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.contiguous().clone()
        dist.all_reduce(g)
        n = len(g) // world_size()
        return g[rank() * n:(rank() + 1) * n]


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` of every rank, in rank order (equal shards), with gradients; ``x`` alone.
    A loss that couples a batch's examples (SimCLR's negatives) sees the global batch: with each
    rank's loss the mean over its own rows, DDP's average of the gradients is one process's."""
    return _AllGatherRows.apply(x) if active() else x


class EagerSyncBatchNorm(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm``, run eagerly inside a compiled block: its forward is a collective
    (an all-gather of every rank's statistics inside an autograd Function) that Dynamo would
    otherwise try to trace into the block's graph, with bf16 and channels_last around it. Kept out
    of the graph, each block splits at its BN layers into a fixed set of graphs, and the collective
    runs as it does without compile."""

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class GroupBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are over the global batch: the per-channel sums and
    sums of squares are all-reduced (with autograd, so gradients see the global statistics too).
    For gloo and the CPU, where ``torch.nn.SyncBatchNorm`` refuses to run. Like
    :class:`EagerSyncBatchNorm`, it runs eagerly inside a compiled block."""

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        c = x.shape[1]
        local_n = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), local_n]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def _swap_bn(model: nn.Module, swap, cls) -> nn.Module:
    """Every BatchNorm module for which ``swap(m)`` holds replaced, in place, by a ``cls`` with its
    state, mode, device and the requires_grad of its affine parameters (a transfer policy's frozen
    or trained BN carries over)."""
    for name, child in model.named_children():
        if swap(child):
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(next(child.buffers()).device)
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, new)
        else:
            _swap_bn(child, swap, cls)
    return model


def convert_sync_bn(model: nn.Module, device: str) -> nn.Module:
    """Every BatchNorm2d synced over the ranks (in place where possible); the state_dict keys and
    values are unchanged, so checkpoints and model.pt stay interchangeable."""
    cls = EagerSyncBatchNorm if device.startswith("cuda") else GroupBatchNorm
    return _swap_bn(model, lambda m: type(m) is nn.BatchNorm2d, cls)


def revert_bn(model: nn.Module) -> nn.Module:
    """Plain BatchNorm2d again (after training), with the synced statistics."""
    return _swap_bn(model, lambda m: isinstance(m, (GroupBatchNorm, nn.SyncBatchNorm)), nn.BatchNorm2d)
