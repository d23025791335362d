"""Profiles: the same experiments at four scales.

| profile | data | model | where |
| smoke | synthetic templates (12x12) | WRN-10-1, early downsampling | tests, CI: seconds |
| quick | Fashion-MNIST (subset on CPU) -> MNIST-5k | WRN-16-1, early downsampling, PGD-20 eval | CPU default |
| full  | Fashion-MNIST -> MNIST-5k | WRN-16-4, PGD-100 through foolbox | GPU default: minutes |
| paper | CIFAR-100 -> CIFAR-10, WRN-34-10, 100 epochs (CARTL App. C) | | GPU: hours |

Epsilon by family: 8/255 for CIFAR-like images (CARTL/Madry); 0.1 for the near-binary
28x28 MNIST family, where 8/255 barely moves a pixel of ink and Madry's 0.3 leaves small
transferred models with no robustness to measure.
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, replace

from .attacks import PGD, FoolboxPGD
from .errors import ConfigError, check, check_int, check_real, is_int, is_real
from .models import WRNSpec
from .runs import DataSpec, SourceRun, TransferRun
from .training import AdversarialTraining, StandardTraining
from .transfer import TransferPolicy

EPS = {"mnist": 0.1, "cifar": 8 / 255}


def step_size(eps: float, steps: int) -> float:
    """CARTL's 2/255 for eps 8/255 is eps/4; few-step attacks need at least 2.5 eps / steps (Madry)."""
    return max(eps / 4, 2.5 * eps / steps)


def pgd(eps: float, steps: int, loss: str = "ce") -> PGD:
    return PGD(eps=eps, steps=steps, step_size=step_size(eps, steps), loss=loss)


@dataclass(frozen=True)
class Profile:
    name: str
    source: DataSpec
    target: DataSpec
    model: WRNSpec
    eps: float
    source_method: AdversarialTraining
    finetune: StandardTraining
    eval_attacks: tuple
    ks: tuple[int | str, ...]
    bn_ks: tuple[int, ...]
    reinit_source: DataSpec   # source-domain data for Shafahi's re-initialise-and-retrain curve
    seeds: tuple[int, ...] = (0,)              # fine-tuning seeds of notebooks 01-02
    source_seeds: tuple[int, ...] = (0,)       # sources trained for the source's own robustness (every
                                               # transfer starts from the seed-0 source; more cost a full AT each)
    # CARTL (notebook 03): Table 2 grid, the (lambda, beta) used for Table 3/4 and Figs. 4/5, LwF grid
    cartl_ks: tuple[int, ...] = (4, 6)
    cartl_lams: tuple[float, ...] = (0.01, 0.005)        # CARTL Table 2
    cartl_betas: tuple[float, ...] = (1.0, 0.6, 0.4)     # CARTL Table 2
    cartl_choice: tuple[float, float] = (0.005, 0.4)     # best of Table 2 at Case-6
    lwf_lams: tuple[float, ...] = (0.1, 0.01, 0.005, 0.001)  # CARTL Table 5
    fractions: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1)  # CARTL Fig. 5
    cartl_seeds: tuple[int, ...] = (0, 1, 2)
    cartl_test_n: int | None = None                      # evaluate notebook 03 on a class-balanced subset
    cartl_finetune_epochs: int | None = None             # notebook 03's fine-tuning budget (None: finetune.epochs)
    pairs: tuple = ()      # Table 4: extra (source DataSpec or None for the profile's source, target DataSpec)

    def __post_init__(self):
        for name in _GRIDS:
            check(len(getattr(self, name)) >= 1, f"{name} is empty: give at least one value")
        for name in ("seeds", "source_seeds", "cartl_seeds"):
            for v in getattr(self, name):
                check_int(f"{name} entry", v, 0)
        n = self.model.n_blocks
        for k in tuple(self.ks) + tuple(self.bn_ks):
            check(k == "all" or (is_int(k) and 1 <= k <= n),
                  f"k={k!r} is not a block count of {self.model.name} (1..{n} or 'all')")
        for k in self.cartl_ks:
            check(is_int(k) and 1 <= k < n,
                  f"CARTL k={k!r} must leave a frozen part to FDM: 1..{n - 1} for {self.model.name}")
        check(all(0 < b <= 1 for b in self.cartl_betas + self.cartl_choice[1:]),
              f"NEFT beta must be in (0, 1]: {self.cartl_betas}, {self.cartl_choice}")
        check(all(v >= 0 for v in self.cartl_lams + self.lwf_lams + self.cartl_choice[:1]),
              "FDM lambda and LwF lambda_d must be >= 0")
        check(all(0 < f <= 1 for f in self.fractions), f"fractions must be in (0, 1]: {self.fractions}")
        check_real("eps", self.eps, 0, 1)   # an L-inf radius in [0, 1] pixel units

    def with_(self, **changes) -> "Profile":
        """A copy with notebook parameters applied (None leaves a field as it is)."""
        changes = {k: parameter(k, v) for k, v in changes.items() if v is not None}
        if "eps" in changes:
            e = changes["eps"]
            sm = self.source_method
            changes.setdefault("source_method", replace(sm, attack=pgd(e, sm.attack.steps)))
            changes.setdefault("eval_attacks", tuple(_rescale(a, e) for a in self.eval_attacks))
        if "source_epochs" in changes:
            changes["source_method"] = replace(changes.get("source_method", self.source_method),
                                               epochs=changes.pop("source_epochs"))
        if "finetune_epochs" in changes:
            changes["finetune"] = replace(self.finetune, epochs=changes.pop("finetune_epochs"))
        if "source_name" in changes:
            changes["source"] = replace(self.source, name=changes.pop("source_name"))
        if "target_name" in changes:
            changes["target"] = replace(self.target, name=changes.pop("target_name"))
        return replace(self, **changes)

    def finetune_steps(self, target: DataSpec, epochs: int | None = None) -> int:
        """The fine-tuning budget rule for data-fraction and N-per-class sweeps: every subset gets
        the optimizer steps the whole target training set gets in ``epochs`` (default
        ``finetune.epochs``) epochs."""
        n = len(replace(target, fraction=1.0).train())
        return (epochs or self.finetune.epochs) * max(1, n // self.finetune.batch_size)

    def source_run(self, seed: int = 0) -> SourceRun:
        return SourceRun(self.source, self.model, self.source_method, seed)

    def transfer_run(self, policy: TransferPolicy, seed: int = 0, target: DataSpec | None = None) -> TransferRun:
        return TransferRun(self.source_run(), target or self.target, policy, self.finetune, seed)

    def reinit_run(self, k: int | str, seed: int = 0) -> TransferRun:
        """Shafahi Fig. 1: re-initialise the last k blocks and retrain them on natural source data."""
        return self.transfer_run(TransferPolicy(k=k, bn_stats="reuse", bn_affine="train", reinit=True),
                                 seed, self.reinit_source)


# Notebook parameters: the Profile fields that are grids, and the names that stand for part of a field.
_GRIDS = ("ks", "bn_ks", "seeds", "source_seeds", "cartl_ks", "cartl_lams", "cartl_betas", "lwf_lams",
          "fractions", "cartl_seeds")
_ALIASES = ("source_name", "target_name", "source_epochs", "finetune_epochs")


def _literal(value):
    """papermill's ``-p ks "[1,2,4,8]"`` arrives as a string: read it as a Python literal (a string
    that is no literal, such as ``all``, stays a string)."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def parameter(name: str, value):
    """A notebook parameter parsed and checked: strings read as literals, a scalar grid as a
    one-value grid, and each value's type checked, so a bad one is a ConfigError naming it before
    any compute."""
    known = {f.name for f in dataclasses.fields(Profile)} | set(_ALIASES)
    check(name in known, f"unknown parameter {name!r}; one of {', '.join(sorted(known))}")
    value = _literal(value)
    if name in _GRIDS:
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        check(len(values) >= 1, f"{name} is empty: give at least one value")
        for v in values:
            if name == "ks":
                check(v == "all" or is_int(v), f"ks entries are block counts or 'all', not {v!r}")
            elif name in ("bn_ks", "cartl_ks"):
                check_int(f"{name} entry", v, 1)
            elif name.endswith("seeds"):
                check_int(f"{name} entry", v, 0)
            else:
                check_real(f"{name} entry", v)
        return values
    if name == "cartl_choice":
        check(isinstance(value, (list, tuple)) and len(value) == 2 and all(is_real(v) for v in value),
              f"cartl_choice is a (lambda, beta) pair of numbers, not {value!r}")
        return tuple(value)
    if name == "eps":
        check_real("eps", value, 0, 1)
    elif name in ("source_epochs", "finetune_epochs", "cartl_finetune_epochs"):
        check_int(name, value, 1)
    elif name in ("source_name", "target_name"):
        check(isinstance(value, str), f"{name} must be a dataset name, not {value!r}")
    return value


def _rescale(attack: PGD | FoolboxPGD, eps: float) -> PGD | FoolboxPGD:
    return replace(attack, eps=eps, step_size=step_size(eps, attack.steps))


def _offline_pairs(source_n: int | None) -> tuple:
    """CARTL Table 4 on offline data: split Fashion-MNIST, and Fashion-MNIST -> sklearn 8x8 digits."""
    return ((DataSpec("fashion-mnist", classes=(0, 1, 2, 3, 4), train_n=source_n, test_n=1000),
             DataSpec("fashion-mnist", classes=(5, 6, 7, 8, 9), train_n=4000)),
            (None, DataSpec("digits-8x8")))  # None: the profile's own source


def _smoke() -> Profile:
    eps = 0.1
    return Profile(
        name="smoke",
        source=DataSpec("synthetic-a"), target=DataSpec("synthetic-b", train_n=256),
        model=WRNSpec(10, 1, stem_stride=2),
        eps=eps,
        source_method=AdversarialTraining(epochs=2, lr=0.05, batch_size=64, attack=pgd(eps, 2)),
        finetune=StandardTraining(epochs=2, lr=0.05, batch_size=64),
        eval_attacks=(pgd(eps, 5),),
        ks=(1, 3, 5), bn_ks=(2, 5),
        reinit_source=DataSpec("synthetic-a", train_n=256),
        cartl_ks=(2, 3), cartl_lams=(0.01,), cartl_betas=(1.0, 0.4), cartl_choice=(0.01, 0.4),
        lwf_lams=(0.1, 0.001), fractions=(1.0, 0.5), cartl_seeds=(0, 1),
        pairs=((DataSpec("synthetic-a", classes=(0, 1)), DataSpec("synthetic-a", classes=(2, 3))),))


def _quick(gpu: bool) -> Profile:
    eps = EPS["mnist"]
    return Profile(
        name="quick",
        source=DataSpec("fashion-mnist", train_n=None if gpu else 12000, test_n=1000),
        target=DataSpec("mnist-5k"),
        model=WRNSpec(16, 1, stem_stride=2),
        eps=eps,
        source_method=AdversarialTraining(epochs=10 if gpu else 5, attack=pgd(eps, 7 if gpu else 5)),
        finetune=StandardTraining(epochs=6, lr=0.05),
        eval_attacks=(pgd(eps, 20),),
        ks=tuple(range(1, 9)), bn_ks=(4, 6),
        reinit_source=DataSpec("fashion-mnist", train_n=4000, test_n=1000),
        # On 2 CPU cores the suite must stay under 30 minutes: one fine-tuning seed, and only the
        # lambda that Tables 3-4 and Figs. 4-5 use (each FDM source costs minutes there).
        cartl_ks=(4, 6), cartl_betas=(1.0, 0.4), cartl_lams=(0.01, 0.005) if gpu else (0.005,),
        cartl_seeds=(0, 1) if gpu else (0,), fractions=(1.0, 0.5, 0.2, 0.1),
        cartl_test_n=500, pairs=_offline_pairs(None if gpu else 6000),
        # bench/budget.py (figures/03_budget): at 6 epochs NEFT underfits and loses 11-14 points of
        # robustness to plain fine-tuning; from 24 the paper's order shows (CARTL > AT + NEFT > vanilla)
        cartl_finetune_epochs=24)


def _full() -> Profile:
    eps = EPS["mnist"]
    # Sized for the whole suite in 15 minutes on one H100 (`python -m rtlkit.plan --profile full`
    # counts the work): source AT is most of it (7 sources: AT, FDM at 2 lambda x 2 k, the split
    # pair's AT + FDM), then foolbox PGD-100, so sources train 15 epochs and every test set is 1,000.
    return Profile(
        name="full",
        source=DataSpec("fashion-mnist", test_n=1000),
        target=DataSpec("mnist-5k"),
        model=WRNSpec(16, 4),
        eps=eps,
        source_method=AdversarialTraining(epochs=15, attack=pgd(eps, 7)),
        finetune=StandardTraining(epochs=10, lr=0.05),
        eval_attacks=(FoolboxPGD(eps=eps, steps=100, step_size=step_size(eps, 100)),),
        ks=tuple(range(1, 9)), bn_ks=(4, 6),
        reinit_source=DataSpec("fashion-mnist", train_n=10000, test_n=1000),
        seeds=(0, 1, 2), pairs=_offline_pairs(None))


def _paper() -> Profile:
    eps = EPS["cifar"]
    return Profile(
        name="paper",
        source=DataSpec("cifar100"), target=DataSpec("cifar10"),
        model=WRNSpec(34, 10),
        eps=eps,
        source_method=AdversarialTraining(),          # CARTL App. C: 100 epochs, PGD-7, 8/255, 2/255
        finetune=StandardTraining(),                  # "similar settings are also applied during transfer"
        eval_attacks=(FoolboxPGD(),),                 # PGD-100 via foolbox, step 2/255
        ks=tuple(range(1, 18)), bn_ks=(8, 11),       # Table 1 uses k = 8 for CIFAR-100 -> CIFAR-10
        reinit_source=DataSpec("cifar100"),
        seeds=(0, 1, 2), cartl_ks=(4, 6, 8),
        pairs=((DataSpec("cifar100"), DataSpec("svhn")), (DataSpec("cifar100"), DataSpec("gtsrb")),
               (DataSpec("cifar10"), DataSpec("svhn")), (DataSpec("gtsrb"), DataSpec("svhn"))))


PROFILES = ("smoke", "quick", "full", "paper")


def default_name(device: str | None = None) -> str:
    """The profile `make figures` runs: `full` on a GPU, `quick` on the CPU."""
    if device is None:
        from .runtime import default_device
        device = default_device()
    return "full" if device.startswith("cuda") else "quick"


def get(name: str = "quick", gpu: bool | None = None, **overrides) -> Profile:
    """A profile by name; ``gpu`` (default: whether torch sees one) lets `quick` use all the source data."""
    if gpu is None:
        from .runtime import default_device
        gpu = default_device().startswith("cuda")
    builders = {"smoke": _smoke, "quick": lambda: _quick(gpu), "full": _full, "paper": _paper}
    if name not in builders:
        raise ConfigError(f"unknown profile {name!r}; one of {', '.join(PROFILES)}")
    return builders[name]().with_(**overrides)
