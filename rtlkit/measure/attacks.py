"""Attacks: our own batched PGD (L-inf / L2, random start, CE or CW-margin loss) for training
and fast evaluation, and foolbox 3's PGD for reported robustness. Epsilon is in [0, 1] pixels.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtlkit.core.errors import check, check_int, check_real
from rtlkit.core.runtime import memory_format_of


@contextlib.contextmanager
def attack_mode(model: nn.Module):
    """Model in eval mode (BN uses running stats: Madry's and CARTL's practice) with parameters
    not requiring grad; the prior mode and flags are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t
        for p, r in flags:
            p.requires_grad_(r)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: max_{j != y} z_j - z_y, per example (positive means misclassified)."""
    zy = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - zy


def _loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    return margin_loss(logits, y).sum()


def _l2_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent (Madry et al. 2018). Defaults: CARTL App. C PGD-7, eps 8/255, step 2/255."""
    eps: float = 8 / 255
    steps: int = 7
    step_size: float = 2 / 255
    norm: str = "linf"        # "linf" or "l2"
    loss: str = "ce"          # "ce" (cross-entropy) or "cw" (Carlini-Wagner margin)
    random_start: bool = True

    def __post_init__(self):
        check(self.norm in ("linf", "l2"), f"PGD norm must be 'linf' or 'l2', not {self.norm!r}")
        check_real("PGD eps", self.eps, 0, 1 if self.norm == "linf" else None)  # [0,1] pixels
        check_int("PGD steps", self.steps, 0)
        check_real("PGD step size", self.step_size, 0, low_open=True)
        check(self.loss in ("ce", "cw"), f"PGD loss must be 'ce' or 'cw', not {self.loss!r}")

    @property
    def label(self) -> str:
        """Names every setting that changes the result (two attacks of one evaluation never collide)."""
        return (f"PGD-{self.steps} {self.norm} {self.loss} eps={self.eps:.4g} step={self.step_size:.4g}"
                + ("" if self.random_start else " no-restart"))

    def perturb(self, forward, x: torch.Tensor, y: torch.Tensor, autocast=contextlib.nullcontext,
                worst: bool = True, start: torch.Tensor | None = None, prune_every: int = 0,
                compact: bool = True) -> torch.Tensor:
        """Adversarial examples for ``forward`` (a callable on [0,1] images). No host sync in the loop
        unless ``prune_every`` asks for one.

        ``worst`` (evaluation): each example's first iterate that fooled the model, else the last
        one; an example that a middle step fooled and a later step did not is not robust. The loop
        already has each iterate's logits, so this costs a compare and a select per step.
        ``worst=False`` (adversarial training, as in Madry et al.): the last iterate.
        ``prune_every`` (evaluation only, with ``worst``): every that many steps, drop the examples
        already fooled from the batch (their answer, the first fooling iterate, is fixed) and stop
        once none is left. Each example's gradient is its own (the model is in eval mode and the
        loss a sum over examples), so every example gets the iterates it gets in the whole batch;
        it costs one host sync per pruning. ``compact=False`` keeps the batch's shape and only ends
        the batch once every example is fooled (a compiled model buckets the compacted sizes itself:
        ``runtime.BucketedCall``).
        The caller puts the model in :func:`attack_mode`; :meth:`__call__` does it for you.
        ``start``: the random start's offsets (inside the ball), instead of a draw from the global
        RNG: ``rtlkit.measure.card`` gives each example its own, so an example's result does not depend on
        which others share its batch.
        """
        check_int("PGD prune_every", prune_every, 0)
        if self.eps == 0 or self.steps == 0:
            return x.detach()
        x = x.detach()
        if self.random_start:
            x_adv = (x + (self._start(x) if start is None else start.to(x.dtype))).clamp_(0, 1)
        else:
            x_adv = x.clone()
        if not worst:
            for _ in range(self.steps):
                x_adv = self._step(forward, x_adv, x, y, autocast)[0]
            return x_adv.detach()
        out = torch.empty_like(x_adv) if prune_every and compact else None   # every row is written: pruned or last
        act = torch.arange(len(y), device=x.device)    # the batch rows still attacked
        keep = FirstFooling(y)
        for i in range(self.steps):
            x_adv, logits, iterate = self._step(forward, x_adv, x, y, autocast)
            keep.update(iterate, logits)   # this iterate's logits are the ones the step used
            if prune_every and (i + 1) % prune_every == 0 and i + 1 < self.steps:
                done = keep.fooled
                if not compact:
                    if bool(done.all()):   # the sync
                        return keep.worst(x_adv.detach())
                elif bool(done.any()):     # the sync
                    out[act[done]] = keep.found[done]
                    live = ~done
                    if not bool(live.any()):
                        return out
                    act, x, y, x_adv = act[live], x[live], y[live], x_adv[live]
                    keep = FirstFooling(y)
        last = keep.worst(x_adv.detach())
        if out is None:
            return last
        out[act] = last
        return out

    def _step(self, forward, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, autocast):
        """One PGD step from ``x_adv``: (the next iterate, this iterate's logits, this iterate)."""
        x_adv.requires_grad_(True)
        with autocast():
            logits = forward(x_adv)
        grad, = torch.autograd.grad(_loss(self.loss, logits, y), x_adv)
        with torch.no_grad():
            here = x_adv.detach()
            if self.norm == "linf":
                nxt = here + self.step_size * grad.sign()
                nxt = torch.min(torch.max(nxt, x - self.eps), x + self.eps)
            else:
                nxt = here + self.step_size * grad / _l2_norm(grad)
                delta = nxt - x
                delta = delta * (self.eps / _l2_norm(delta)).clamp(max=1.0)
                nxt = x + delta
            return nxt.clamp_(0, 1), logits.detach(), here

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """The random start, uniform in the eps-ball, from the global RNG."""
        if self.norm == "linf":
            return torch.empty_like(x).uniform_(-self.eps, self.eps)
        d = torch.randn_like(x)
        r = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) ** (1 / x[0].numel())
        return d / _l2_norm(d) * r * self.eps

    def skip(self, x: torch.Tensor) -> None:
        """Draw from the global RNG what :meth:`perturb` draws for a batch shaped like ``x``, and drop
        it: a rank that leaves a batch to another keeps the one-process random stream."""
        if self.random_start and self.eps != 0 and self.steps != 0:
            self._start(x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with attack_mode(model):
            return self.perturb(model, x, y)


def pgd_eval(eps: float, steps: int = 20, norm: str = "linf", loss: str = "ce", step_size: float | None = None) -> PGD:
    """An evaluation PGD; by default step = 2.5 * eps / steps (Madry), at least eps/steps*2 for few steps."""
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1) if eps > 0 else 1.0
    return PGD(eps=eps, steps=steps, step_size=step_size, norm=norm, loss=loss)


@dataclass(frozen=True)
class FoolboxPGD:
    """Reported robustness through foolbox 3 (CARTL App. C: PGD-100, step 2/255, eps 8/255)."""
    eps: float = 8 / 255
    steps: int = 100
    step_size: float = 2 / 255
    norm: str = "linf"

    def __post_init__(self):
        check(self.norm in ("linf", "l2"), f"foolbox PGD norm must be 'linf' or 'l2', not {self.norm!r}")
        check_real("foolbox PGD eps", self.eps, 0, 1 if self.norm == "linf" else None)
        check_int("foolbox PGD steps", self.steps, 1)
        check_real("foolbox PGD step size", self.step_size, 0, low_open=True)

    @property
    def label(self) -> str:
        return f"foolbox PGD-{self.steps} {self.norm} eps={self.eps:.4g} step={self.step_size:.4g}"

    def _attack(self):
        try:
            import foolbox as fb
        except ImportError as e:  # pragma: no cover
            raise ImportError("foolbox evaluation needs foolbox 3: pip install foolbox==3.3.4") from e
        cls = fb.attacks.LinfPGD if self.norm == "linf" else fb.attacks.L2PGD
        return fb, cls(abs_stepsize=self.step_size, steps=self.steps, random_start=True)

    def skip(self, x: torch.Tensor) -> None:
        """Draw what foolbox draws from the global RNG for a batch like ``x`` (its random start,
        the only draw its PGD makes), and drop it; see :meth:`PGD.skip`."""
        import eagerpy as ep
        self._attack()[1].get_random_start(ep.astensor(x.detach()), self.eps)

    def perturb(self, forward: nn.Module, x: torch.Tensor, y: torch.Tensor,
                autocast=contextlib.nullcontext) -> torch.Tensor:
        """foolbox's PGD on ``forward`` (a model in :func:`attack_mode`), each forward under
        ``autocast`` with float32 logits: the numerics our PGD runs in, so that a comparison of
        the two measures the attacks, not the precision."""
        fb, attack = self._attack()
        keep = FirstFooling(y)   # foolbox returns its last iterate: keep each example's first fooling one
        fmodel = fb.PyTorchModel(_Watched(forward, keep, autocast).eval(), bounds=(0, 1), device=x.device)
        _, clipped, _ = attack(fmodel, x, y, epsilons=self.eps)
        return keep.worst(clipped.detach())

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with attack_mode(model):
            return self.perturb(model, x, y)


class FirstFooling:
    """Per example, the first input seen that the model misclassified; no host sync."""

    def __init__(self, y: torch.Tensor):
        self.y = y
        self.found: torch.Tensor | None = None
        self.fooled: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        wrong = logits.argmax(1) != self.y
        if self.found is None:
            self.found, self.fooled = x.detach().clone(), wrong
        else:
            new = (wrong & ~self.fooled).view(-1, *([1] * (x.ndim - 1)))
            self.found = torch.where(new, x.detach(), self.found)
            self.fooled = self.fooled | wrong

    def worst(self, last: torch.Tensor) -> torch.Tensor:
        """The first fooling input of each example, else ``last``."""
        if self.fooled is None:
            return last
        return torch.where(self.fooled.view(-1, *([1] * (last.ndim - 1))), self.found, last)


class _Watched(nn.Module):
    """A model that shows every input an attack feeds it (foolbox's iterates) to a FirstFooling.
    Each such input lies in the attack's threat model, so each is a valid adversarial example."""

    def __init__(self, model: nn.Module, keep: FirstFooling, autocast=contextlib.nullcontext):
        super().__init__()
        self.model, self.keep, self.autocast = model, keep, autocast

    def forward(self, x):
        with self.autocast():
            logits = self.model(x).float()
        self.keep.update(x, logits)
        return logits


# --------------------------------------------------------------------------- AutoAttack's APGD and Square

_AA_NORM = {"linf": "Linf", "l2": "L2"}


class _InFormat(torch.autograd.Function):
    """``x`` in the model's memory format for the forward; the gradient back in ``x``'s own, contiguous
    one (pyautoattack calls ``.view(B, -1)`` on the input gradients it takes from autograd)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, memory_format) -> torch.Tensor:
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g.contiguous(), None


def _aa_predict(forward, autocast, memory_format=torch.contiguous_format, no_grad: bool = False):
    """The float32-logit callable pyautoattack expects: contiguous images in, each handed to
    ``forward`` in ``memory_format`` (the caller's: a channels_last model keeps its one graph);
    ``no_grad`` for the black-box attacks."""
    def predict(x):
        if x.ndim == 4 and memory_format is not torch.contiguous_format:
            x = _InFormat.apply(x, memory_format)
        with torch.no_grad() if no_grad else contextlib.nullcontext(), autocast():
            return forward(x).float()
    return predict


def _aa_run(make, forward, autocast, x: torch.Tensor, y: torch.Tensor, no_grad: bool = False) -> torch.Tensor:
    """Run a pyautoattack attack on contiguous clones of the inputs (it calls ``.view(B, -1)`` on
    tensors shaped like its input: a channels_last RGB batch would fail there), 1-d long labels,
    inside fork_rng (its perturb reseeds the global CPU and CUDA RNGs, which must not leak into the
    caller's). ``make(predict)`` builds the attack on a predict that hands ``forward`` ``x``'s format."""
    devices = [x.device.index or 0] if x.is_cuda else []
    predict = _aa_predict(forward, autocast, memory_format_of(x), no_grad)
    with torch.random.fork_rng(devices=devices):
        attack = make(predict)
        return attack.perturb(x.detach().clone(memory_format=torch.contiguous_format),
                              y.detach().clone().long().view(-1)).detach()


class _AutoAttackAdapter:
    """What APGD and Square share: the checks of norm, eps and seed, and ``__call__``."""

    def _check(self, name: str) -> None:
        check(self.norm in _AA_NORM, f"{name} norm must be 'linf' or 'l2', not {self.norm!r}")
        check_real(f"{name} eps", self.eps, 0, 1 if self.norm == "linf" else None, low_open=True)
        check_int(f"{name} seed", self.seed, 0)

    def skip(self, x: torch.Tensor) -> None:
        """Nothing: these attacks seed their own RNG per batch and restore the global one."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with attack_mode(model):
            return self.perturb(model, x, y)


@dataclass(frozen=True)
class APGD(_AutoAttackAdapter):
    """APGD-CE (Croce & Hein, ICML 2020) through pyautoattack 0.2.0's ``APGDAttack``. Vaishnavi et
    al. Sec. 4.1: the white-box attack (RA-WB), L2, eps = the training eps; 100 iterations and 5
    restarts (AutoAttack's standard). Restarts attack only the survivors; the result holds each
    example's first fooling point, else the clean image."""
    eps: float = 0.5
    n_iter: int = 100
    n_restarts: int = 5
    norm: str = "l2"
    seed: int = 0

    def __post_init__(self):
        self._check("APGD")
        check_int("APGD iterations", self.n_iter, 1)
        check_int("APGD restarts", self.n_restarts, 1)

    @property
    def label(self) -> str:
        return f"APGD-CE {self.norm} eps={self.eps:.4g} iters={self.n_iter} restarts={self.n_restarts} seed={self.seed}"

    def perturb(self, forward, x: torch.Tensor, y: torch.Tensor, autocast=contextlib.nullcontext) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack
        return _aa_run(lambda predict: APGDAttack(predict, n_iter=self.n_iter, norm=_AA_NORM[self.norm],
                                                  n_restarts=self.n_restarts, eps=self.eps, seed=self.seed, loss="ce",
                                                  device=x.device), forward, autocast, x, y)


@dataclass(frozen=True)
class Square(_AutoAttackAdapter):
    """Square Attack (Andriushchenko et al., ECCV 2020) through pyautoattack 0.2.0's
    ``SquareAttack``: the black-box attack of Vaishnavi et al. (RA-BB), L2, eps = the training
    eps; 5,000 queries, 1 restart, p_init 0.8 (AutoAttack's standard)."""
    eps: float = 0.5
    n_queries: int = 5000
    n_restarts: int = 1
    p_init: float = 0.8
    norm: str = "l2"
    seed: int = 0

    def __post_init__(self):
        self._check("Square")
        check_int("Square queries", self.n_queries, 1)
        check_int("Square restarts", self.n_restarts, 1)
        check_real("Square p_init", self.p_init, 0, 1, low_open=True)

    @property
    def label(self) -> str:
        return (f"Square {self.norm} eps={self.eps:.4g} queries={self.n_queries} restarts={self.n_restarts} "
                f"p_init={self.p_init:g} seed={self.seed}")

    def perturb(self, forward, x: torch.Tensor, y: torch.Tensor, autocast=contextlib.nullcontext) -> torch.Tensor:
        from pyautoattack.square import SquareAttack
        if self.norm == "l2":   # its L2 start tiles squares of side h // 5 from (h - 5 s) // 2: past the edge
            h = x.shape[-1]     # for some sizes (12 x 12: a shape error deep inside); say so plainly
            s = max(h // 5, 1)
            check((h - 5 * s) // 2 + s * (h // s) <= h,
                  f"pyautoattack 0.2.0's L2 Square cannot start on {h}x{h} images (its square tiling runs past the "
                  f"edge); use images of 16, 20, 28 or 32 pixels")
        return _aa_run(lambda predict: SquareAttack(predict, norm=_AA_NORM[self.norm], n_queries=self.n_queries,
                                                    eps=self.eps, p_init=self.p_init, n_restarts=self.n_restarts,
                                                    seed=self.seed, loss="margin", device=x.device),
                       forward, autocast, x, y, no_grad=True)


@dataclass(frozen=True)
class APGDT(_AutoAttackAdapter):
    """APGD-T (Croce & Hein, ICML 2020): APGD on the targeted DLR loss through pyautoattack 0.2.0's
    ``APGDAttack_targeted``, in AutoAttack's standard version: 100 iterations, 1 restart, the 9
    most likely wrong classes as targets in turn (at most C - 1; the targeted DLR loss needs C >= 4).
    Each target attacks only the survivors of the previous ones."""
    eps: float = 8 / 255
    n_iter: int = 100
    n_target_classes: int = 9
    n_restarts: int = 1
    norm: str = "linf"
    seed: int = 0

    def __post_init__(self):
        self._check("APGD-T")
        check_int("APGD-T iterations", self.n_iter, 1)
        check_int("APGD-T target classes", self.n_target_classes, 1)
        check_int("APGD-T restarts", self.n_restarts, 1)

    @property
    def label(self) -> str:
        return (f"APGD-T {self.norm} eps={self.eps:.4g} iters={self.n_iter} targets={self.n_target_classes} "
                f"restarts={self.n_restarts} seed={self.seed}")

    def check_classes(self, num_classes: int) -> None:
        check(num_classes >= 4, f"APGD-T's targeted DLR loss needs at least 4 classes, not {num_classes}")
        check(self.n_target_classes <= num_classes - 1,
              f"APGD-T: {self.n_target_classes} target classes, but {num_classes} classes have only {num_classes - 1}")

    def perturb(self, forward, x: torch.Tensor, y: torch.Tensor, autocast=contextlib.nullcontext) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack_targeted
        return _aa_run(lambda predict: APGDAttack_targeted(predict, n_iter=self.n_iter, norm=_AA_NORM[self.norm],
                                                           n_restarts=self.n_restarts, eps=self.eps, seed=self.seed,
                                                           n_target_classes=self.n_target_classes, device=x.device),
                       forward, autocast, x, y)


@dataclass(frozen=True)
class FABT(_AutoAttackAdapter):
    """FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive
    boundary attack") through pyautoattack 0.2.0's ``FABAttack_PT``, targeted, in AutoAttack's standard
    version: 100 iterations, 1 restart, 9 target classes (at most C - 1), alpha_max 0.1, eta 1.05,
    beta 0.9. An example counts as fooled only within eps."""
    eps: float = 8 / 255
    n_iter: int = 100
    n_target_classes: int = 9
    norm: str = "linf"
    seed: int = 0

    def __post_init__(self):
        self._check("FAB-T")
        check_int("FAB-T iterations", self.n_iter, 1)
        check_int("FAB-T target classes", self.n_target_classes, 1)

    @property
    def label(self) -> str:
        return f"FAB-T {self.norm} eps={self.eps:.4g} iters={self.n_iter} targets={self.n_target_classes} seed={self.seed}"

    def check_classes(self, num_classes: int) -> None:
        check(num_classes >= 2 and self.n_target_classes <= num_classes - 1,
              f"FAB-T: {self.n_target_classes} target classes, but {num_classes} classes have only {num_classes - 1}")

    def perturb(self, forward, x: torch.Tensor, y: torch.Tensor, autocast=contextlib.nullcontext) -> torch.Tensor:
        from pyautoattack.fab_pt import FABAttack_PT
        return _aa_run(lambda predict: FABAttack_PT(predict, norm=_AA_NORM[self.norm], n_restarts=1, n_iter=self.n_iter,
                                                    eps=self.eps, seed=self.seed, targeted=True,
                                                    n_target_classes=self.n_target_classes, device=x.device),
                       forward, autocast, x, y)
