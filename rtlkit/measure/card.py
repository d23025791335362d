"""A robustness report card for any model: clean accuracy, AutoAttack's standard suite as a
survivors-only cascade after our own PGD, the certified radius where the model was trained for
smoothing, and six gradient-masking checks, each a pass or a warn with its numbers.

- The cascade runs in the order of AutoAttack's standard version (Croce & Hein, ICML 2020:
  APGD-CE, APGD-T, FAB-T, Square), after our PGD with cross-entropy and with the CW margin (the
  studies' own attacks). Each attack sees only the examples the previous ones did not fool; an
  example's robust accuracy is the minimum over all of them, and ``fooled_by`` names the attack
  that took it first.
- The checks follow Carlini et al. 2019 ("On Evaluating Adversarial Robustness", Sec. 5) and
  Athalye et al. 2018: robustness non-increasing in eps; at or below chance at a large eps; a
  black-box attack never stronger than the white-box ones; more steps and restarts change little;
  a transfer attack from the source not stronger than the white-box attack; input gradients not
  vanishing.

Our PGD draws each example's random start from a generator of its own (seeded by the card's
seed, the attack and the example's index), so an example's PGD result does not depend on which
others share its batch: survivors-only gives the same per-example minimum as running every attack
on every example. pyautoattack's attacks draw one start per batch, so for them the identity holds
up to that draw (exactly where the attack finds the optimum from any start, as on a linear model).

A run's card, cached beside it, is ``rtlkit.runs.card.get_or_card``; ``rtlkit card`` prints one
(``rtlkit.suite.card``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from rtlkit.measure.attacks import APGD, APGDT, FABT, PGD, Square, attack_mode, margin_loss
from rtlkit.core.errors import check, check_int, check_real
from rtlkit.core.runtime import Runtime


NORMS = ("linf", "l2")
LARGE_EPS = {"linf": 0.5, "l2": 5.0}   # check 2's default (in [0, 1] pixels)


@dataclass(frozen=True)
class Card:
    """What a card runs. Defaults are AutoAttack's standard version (Croce & Hein 2020, Sec. 4 and
    its code's ``version="standard"``: APGD-CE 100 iterations 1 restart, APGD-T and FAB-T 100
    iterations 9 targets, Square 5,000 queries) after our PGD-20 (CE and CW margin, step 2.5 eps /
    steps), and the checks' thresholds: 1 point, a 5-value eps grid, 10x steps with 5 restarts."""
    eps: float
    norm: str = "linf"
    pgd_steps: int = 20
    apgd_iters: int = 100
    apgd_restarts: int = 1
    targets: int = 9                 # APGD-T and FAB-T target classes (at most C - 1)
    fab_iters: int = 100
    square_queries: int = 5000
    seed: int = 0
    grid: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)   # check 1: multiples of eps; the large eps ends the grid
    large_eps: float | None = None   # check 2: None is L-inf 0.5 / L2 5
    strong_factor: int = 10          # check 4: this many times the PGD steps ...
    strong_restarts: int = 5         # ... and restarts
    tol: float = 0.01                # checks 1, 3, 4, 5: 1 point
    grad_floor: float = 1e-8         # check 6: an input gradient below this L2 norm has vanished ...
    grad_share: float = 0.01         # ... and more than this share of examples with one warns

    def __post_init__(self):
        check(self.norm in NORMS, f"card norm must be 'linf' or 'l2', not {self.norm!r}")
        check_real("card eps", self.eps, 0, 1 if self.norm == "linf" else None, low_open=True)
        for name in ("pgd_steps", "apgd_iters", "apgd_restarts", "targets", "fab_iters", "square_queries",
                     "strong_factor", "strong_restarts"):
            check_int(f"card {name}", getattr(self, name), 1)
        check_int("card seed", self.seed, 0)
        check(isinstance(self.grid, tuple) and len(self.grid) >= 1, f"card grid must be a tuple of eps multiples, not {self.grid!r}")
        for g in self.grid:
            check_real("card grid multiple", g, 0, low_open=True)
        check(list(self.grid) == sorted(self.grid), f"card grid must increase, not {self.grid}")
        big = self.big_eps
        check_real("card large_eps", big, self.eps * self.grid[-1], 1 if self.norm == "linf" else None, low_open=True)
        check_real("card tol", self.tol, 0, 1)
        check_real("card grad_floor", self.grad_floor, 0)
        check_real("card grad_share", self.grad_share, 0, 1)

    @property
    def big_eps(self) -> float:
        return LARGE_EPS[self.norm] if self.large_eps is None else self.large_eps

    @property
    def grid_eps(self) -> list[float]:
        """Check 1's eps values: the grid's multiples of eps (capped at 1 for L-inf), then the large eps."""
        cap = 1.0 if self.norm == "linf" else math.inf
        return [min(self.eps * g, cap) for g in self.grid] + [self.big_eps]

    def pgd(self, loss: str, eps: float | None = None, steps: int | None = None) -> PGD:
        eps = self.eps if eps is None else eps
        steps = self.pgd_steps if steps is None else steps
        return PGD(eps=eps, steps=steps, step_size=2.5 * eps / steps, norm=self.norm, loss=loss)

    def attacks(self, num_classes: int) -> list[tuple[str, object]]:
        """The cascade, in order: (column name, attack). APGD-T needs 4 classes (the targeted DLR
        loss); with fewer it is left out, and the card says so."""
        check_int("num_classes", num_classes, 2)
        t = min(self.targets, num_classes - 1)
        out = [("PGD-CE", self.pgd("ce")), ("PGD-CW", self.pgd("cw")),
               ("APGD-CE", APGD(eps=self.eps, n_iter=self.apgd_iters, n_restarts=self.apgd_restarts, norm=self.norm,
                                seed=self.seed))]
        if num_classes >= 4:
            out.append(("APGD-T", APGDT(eps=self.eps, n_iter=self.apgd_iters, n_target_classes=t, norm=self.norm,
                                        seed=self.seed)))
        out.append(("FAB-T", FABT(eps=self.eps, n_iter=self.fab_iters, n_target_classes=t, norm=self.norm,
                                  seed=self.seed)))
        out.append(("Square", Square(eps=self.eps, n_queries=self.square_queries, norm=self.norm, seed=self.seed)))
        return out

    def work(self, num_classes: int) -> SimpleNamespace:
        """The cascade's gradient steps and forward passes per test image (an upper bound: every
        attack on every image), for ``rtlkit.suite.plan``."""
        t = min(self.targets, num_classes - 1)
        steps = 2 * self.pgd_steps + self.apgd_iters * self.apgd_restarts + \
            (self.apgd_iters * t if num_classes >= 4 else 0) + self.fab_iters * t
        return SimpleNamespace(label=f"report card {self.label} cascade", attack_steps=steps,
                               forward_passes=self.square_queries + 1)

    @property
    def masking_steps(self) -> int:
        """The checks' gradient steps per test image: the eps grid, the stronger PGD, the transfer
        PGD (on the surrogate) and one input gradient."""
        return self.pgd_steps * (len(self.grid_eps) + self.strong_factor * self.strong_restarts + 1) + 1

    @property
    def label(self) -> str:
        return f"{self.norm} eps={self.eps:.4g}"

    def reduced(self) -> list[str]:
        """What this card reduces from AutoAttack's standard settings and the checks' defaults (the
        notebook states it)."""
        std = Card(eps=self.eps, norm=self.norm)
        return [f"{f.name} {getattr(self, f.name)} (standard {getattr(std, f.name)})" for f in dataclasses.fields(self)
                if f.name not in ("eps", "norm", "seed") and getattr(self, f.name) != getattr(std, f.name)]


# --------------------------------------------------------------------------- per-example starts

def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def starts(pgd: PGD, shape, index: torch.Tensor, salt) -> torch.Tensor:
    """PGD's random start for each example, from a generator seeded by (``salt``, the example's
    index): uniform in the L-inf ball, or uniform in the L2 ball (direction and radius)."""
    out = torch.empty((len(index), *shape))
    d = math.prod(shape)
    for i, j in enumerate(index.tolist()):
        g = torch.Generator().manual_seed(_seed_of(salt, pgd.label, int(j)))
        if pgd.norm == "linf":
            out[i].uniform_(-pgd.eps, pgd.eps, generator=g)
        else:
            v = torch.randn(shape, generator=g)
            r = float(torch.rand(1, generator=g)) ** (1 / d)
            out[i] = v / v.norm().clamp_min(1e-12) * r * pgd.eps
    return out


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, name: str) -> None:
    """An attack's output must lie in the threat model: the eps-ball around x and the [0, 1] box."""
    d = (x_adv.float() - x.float()).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    worst = float(size.max()) if len(size) else 0.0
    if worst > eps * (1 + 1e-4) + 1e-6 or (len(x_adv) and (float(x_adv.min()) < -1e-6 or float(x_adv.max()) > 1 + 1e-6)):
        raise RuntimeError(f"{name} returned a point outside the threat model ({norm} size {worst:.6g} > eps {eps:.6g}, "
                           f"or outside [0, 1]): a bug in the attack, not a robustness result")


# --------------------------------------------------------------------------- the cascade

def _images(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x in [0, 1] float, y, index) of an ImageData (uint8 pixels) or of an (x, y) pair of floats."""
    if isinstance(data, tuple):
        x, y = data
        return x.float(), y.long(), torch.arange(len(y))
    return data.x.float().div(255), data.y.long(), data.index.long()


def _predict(model, x: torch.Tensor, runtime: Runtime, batch_size: int) -> torch.Tensor:
    out = []
    with torch.no_grad(), runtime.autocast():
        for part in x.split(batch_size):
            out.append(model(runtime.inputs(part.to(runtime.device))).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _attack(model, name: str, attack, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, runtime: Runtime,
            batch_size: int, salt, eps: float, norm: str) -> torch.Tensor:
    """Which of ``x`` the attack fools (a bool per example), in batches, our PGD with per-example starts."""
    fooled = torch.zeros(len(y), dtype=torch.bool)
    for part in torch.arange(len(y)).split(batch_size):
        xb = runtime.inputs(x[part].to(runtime.device))
        yb = y[part].to(runtime.device)
        if isinstance(attack, PGD):
            s = starts(attack, xb.shape[1:], index[part], salt).to(xb.device) if attack.random_start else None
            xa = attack.perturb(model, xb, yb, runtime.autocast, start=s)
        else:
            xa = attack.perturb(model, xb, yb, runtime.autocast)
        _in_ball(xa, xb, eps, norm, name)
        with torch.no_grad(), runtime.autocast():
            fooled[part] = (model(runtime.inputs(xa)).argmax(1) != yb).cpu()
    return fooled


def cascade(model: nn.Module, data, card: Card, runtime: Runtime | None = None, batch_size: int = 500,
            survivors: bool = True, progress: bool = False) -> pd.DataFrame:
    """The per-example cascade: index, label, clean_correct, one ``took[<attack>]`` column per
    attack (1 where that attack fooled the example first), ``fooled_by`` (the attack's name,
    "clean" for a clean error, "none" for a robust example), ``pgd_ce_correct`` (survived PGD-CE),
    ``pgd_correct`` (survived PGD-CE and CW: the studies' PGD-20), ``white_box_correct`` (survived
    every white-box attack) and ``robust_correct`` (survived them all).

    ``survivors=False`` runs every attack on every clean-correct example (the check of the
    survivors-only shortcut); each ``took`` column is then the first fooling attack all the same."""
    from tqdm.auto import tqdm
    runtime = runtime or Runtime()
    x, y, index = _images(data)
    num_classes = data.info.num_classes if hasattr(data, "info") else int(y.max()) + 1
    attacks = card.attacks(num_classes)
    with attack_mode(model):
        clean = _predict(model, x, runtime, batch_size) == y
        alive = clean.clone()
        took = {}
        for name, attack in tqdm(attacks, desc="card", leave=False, disable=not progress):
            todo = (alive if survivors else clean).nonzero().flatten()
            fooled = torch.zeros(len(y), dtype=torch.bool)
            if len(todo):
                fooled[todo] = _attack(model, name, attack, x[todo], y[todo], index[todo], runtime, batch_size,
                                       (card.seed, name), card.eps, card.norm)
            took[name] = fooled & alive
            alive &= ~fooled
    names = [n for n, _ in attacks]
    fooled_by = np.where(~clean.numpy(), "clean", "none").astype(object)
    for n in reversed(names):   # the first attack that took an example wins
        fooled_by[took[n].numpy()] = n
    df = pd.DataFrame({"index": index.numpy(), "label": y.numpy(), "clean_correct": clean.numpy()})
    for n in names:
        df[f"took[{n}]"] = took[n].numpy()
    df["fooled_by"] = fooled_by
    df["pgd_ce_correct"] = clean.numpy() & ~took["PGD-CE"].numpy()
    df["pgd_correct"] = df.pgd_ce_correct & ~took["PGD-CW"].numpy()
    df["white_box_correct"] = df.clean_correct & ~np.isin(df.fooled_by, [n for n in names if n != "Square"])
    df["robust_correct"] = alive.numpy()
    return df


# --------------------------------------------------------------------------- the masking checks' measurements

def margin_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, runtime: Runtime,
                         batch_size: int = 500) -> torch.Tensor:
    """Per example, the L2 norm of the input gradient of the CW margin max_{j != y} z_j - z_y (in
    fp32: bf16 would round small gradients to zero). The margin, not the cross-entropy: CE's
    gradient shrinks as softmax saturates on a confidently right example of an honest model,
    the margin's does not, so a vanishing margin gradient means the logits are flat in the input."""
    out = []
    with attack_mode(model):
        for part in torch.arange(len(y)).split(batch_size):
            xb = runtime.inputs(x[part].to(runtime.device)).float().requires_grad_(True)
            loss = margin_loss(model(xb).float(), y[part].to(runtime.device)).sum()
            g, = torch.autograd.grad(loss, xb)
            out.append(g.flatten(1).norm(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def masking(model: nn.Module, data, card: Card, table: pd.DataFrame, surrogate: nn.Module | None = None,
            runtime: Runtime | None = None, batch_size: int = 500, progress: bool = False) -> pd.DataFrame:
    """Per example, what the checks read beside the cascade ``table``: PGD-CE at each eps of the
    grid (``grid[<eps>]``, 1 if it survived), the stronger PGD-CE (``strong_correct``: steps x
    ``strong_factor`` and ``strong_restarts`` restarts, on PGD-CE's survivors), the transfer
    attack (``transfer_correct``: PGD-CE on ``surrogate``, NaN without one) and the margin's input
    gradient norm (``grad_norm``)."""
    from tqdm.auto import tqdm
    runtime = runtime or Runtime()
    x, y, index = _images(data)
    clean = torch.tensor(table.clean_correct.to_numpy(dtype=bool))
    df = pd.DataFrame({"index": index.numpy()})
    steps = list(enumerate(card.grid_eps)) + [("strong", None), ("transfer", None)]
    with attack_mode(model):
        for i, e in tqdm(steps, desc="masking checks", leave=False, disable=not progress):
            if i == "strong":
                ok = torch.tensor(table.pgd_ce_correct.to_numpy(dtype=bool))
                strong = card.pgd("ce", steps=card.pgd_steps * card.strong_factor)
                for r in range(card.strong_restarts):
                    todo = ok.nonzero().flatten()
                    if len(todo):
                        ok[todo] &= ~_attack(model, "strong PGD", strong, x[todo], y[todo], index[todo], runtime,
                                             batch_size, (card.seed, "strong", r), card.eps, card.norm)
                df["strong_correct"] = ok.numpy()
            elif i == "transfer":
                if surrogate is None:
                    df["transfer_correct"] = np.nan
                    continue
                df["transfer_correct"] = _transfer(model, surrogate, card, x, y, index, clean, runtime, batch_size).numpy()
            else:
                todo = clean.nonzero().flatten()
                ok = clean.clone()
                if len(todo):
                    ok[todo] = ~_attack(model, f"PGD-CE at eps {e:.4g}", card.pgd("ce", eps=e), x[todo], y[todo],
                                        index[todo], runtime, batch_size, (card.seed, "grid", i), e, card.norm)
                df[f"grid[{e:.4g}]"] = ok.numpy()
    df["grad_norm"] = margin_gradient_norm(model, x, y, runtime, batch_size).numpy()
    return df


def _transfer(model, surrogate, card, x, y, index, clean, runtime, batch_size) -> torch.Tensor:
    """Per example, whether ``model`` survives PGD-CE computed on ``surrogate`` (same per-example
    starts as the white-box PGD-CE)."""
    ok = clean.clone()
    attack = card.pgd("ce")
    with attack_mode(surrogate):
        for part in clean.nonzero().flatten().split(batch_size):
            xb = runtime.inputs(x[part].to(runtime.device))
            yb = y[part].to(runtime.device)
            s = starts(attack, xb.shape[1:], index[part], (card.seed, "PGD-CE")).to(xb.device)
            xa = attack.perturb(surrogate, xb, yb, runtime.autocast, start=s)
            _in_ball(xa, xb, card.eps, card.norm, "transfer PGD")
            with torch.no_grad(), runtime.autocast():
                ok[part] = (model(runtime.inputs(xa)).argmax(1) == yb).cpu()
    return ok


# --------------------------------------------------------------------------- the checks, from the tables

CHECKS = ("1 non-increasing in eps", "2 large eps at or below chance", "3 black-box not stronger",
          "4 more steps and restarts", "5 transfer not stronger", "6 gradients not vanishing")


def checks(card: Card, table: pd.DataFrame, mask: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """The six checks as rows: check, status ("pass", "warn", or "none" where the check does not
    apply; not "n/a", which CSV readers take for a missing value), value, threshold, detail."""
    n = len(table)
    grid = [c for c in mask.columns if c.startswith("grid[")]
    accs = [float(mask[c].mean()) for c in grid]
    rise = max([b - a for a, b in zip(accs, accs[1:])], default=0.0)
    rows = [dict(check=CHECKS[0], status="pass" if rise <= card.tol else "warn", value=rise, threshold=card.tol,
                 detail="PGD-CE robust accuracy at eps " + ", ".join(f"{c[5:-1]}: {a:.3f}" for c, a in zip(grid, accs))
                 + f"; largest rise {rise:.3f}")]
    chance = 1 / num_classes
    rows.append(dict(check=CHECKS[1], status="pass" if accs[-1] <= chance else "warn", value=accs[-1], threshold=chance,
                     detail=f"accuracy {accs[-1]:.3f} at {card.norm} eps {card.big_eps:g}; chance 1/{num_classes} = {chance:.3f}"))
    if "took[Square]" in table:
        sq = float(table["took[Square]"].mean())
        rows.append(dict(check=CHECKS[2], status="pass" if sq <= card.tol else "warn", value=sq, threshold=card.tol,
                         detail=f"Square fooled {int(table['took[Square]'].sum())} of {n} examples that every "
                                f"white-box attack missed"))
    # the card's number is converged if the stronger PGD fools nothing the whole cascade left robust;
    # how much it lowers PGD-CE's own accuracy is the detail (the cascade's later attacks may cover it)
    strong = mask.strong_correct.astype(bool)
    extra = float((table.robust_correct.astype(bool) & ~strong).mean())
    drop = float((table.pgd_ce_correct.astype(bool) & ~strong).mean())
    rows.append(dict(check=CHECKS[3], status="pass" if extra <= card.tol else "warn", value=extra, threshold=card.tol,
                     detail=f"PGD-CE at {card.pgd_steps * card.strong_factor} steps x {card.strong_restarts} restarts "
                            f"fooled {extra:.3f} of the examples the whole cascade left robust (it lowers "
                            f"{card.pgd_steps}-step PGD-CE's accuracy by {drop:.3f})"))
    if mask.transfer_correct.isna().all():
        rows.append(dict(check=CHECKS[4], status="none", value=float("nan"), threshold=card.tol,
                         detail="no separate source (a source model, or a head on the source's own extractor)"))
    else:
        extra = float((table.white_box_correct.astype(bool) & ~mask.transfer_correct.astype(bool)).mean())
        rows.append(dict(check=CHECKS[4], status="pass" if extra <= card.tol else "warn", value=extra, threshold=card.tol,
                         detail=f"PGD-CE on the source fooled {extra:.3f} of the examples every white-box attack missed; "
                                f"transfer robust accuracy {float(mask.transfer_correct.mean()):.3f}"))
    flat = float((mask.grad_norm < card.grad_floor).mean())
    rows.append(dict(check=CHECKS[5], status="pass" if flat <= card.grad_share else "warn", value=flat,
                     threshold=card.grad_share,
                     detail=f"{flat:.3f} of examples have a margin input-gradient norm < {card.grad_floor:g} "
                            f"(median {float(mask.grad_norm.median()):.3g})"))
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """The card's tidy rows: clean, then after each attack of the cascade the robust accuracy so far
    and how many examples that attack alone took; with the binomial SE of each accuracy."""
    n = len(table)
    names = names or [c[5:-1] for c in table.columns if c.startswith("took[")]
    acc = float(table.clean_correct.mean())
    rows = [dict(step="clean", took=int((~table.clean_correct.astype(bool)).sum()), accuracy=acc)]
    for name in names:
        took = int(table[f"took[{name}]"].sum())
        acc -= took / n
        rows.append(dict(step=name, took=took, accuracy=acc))
    out = pd.DataFrame(rows)
    out["accuracy"] = out.accuracy.round(12)
    out["se"] = np.sqrt(out.accuracy * (1 - out.accuracy) / n)
    out["n_test"] = n
    return out
