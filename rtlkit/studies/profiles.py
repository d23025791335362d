"""Profiles: the same experiments at four scales.

| profile | data | model | where |
| smoke | synthetic templates (12x12) | WRN-10-1, early downsampling | tests, CI: seconds |
| quick | Fashion-MNIST (subset on CPU) -> MNIST-5k | WRN-16-1, early downsampling, PGD-20 eval | CPU default |
| full  | Fashion-MNIST -> MNIST-5k | WRN-16-4, PGD-100 through foolbox | GPU default: minutes |
| paper | CIFAR-100 -> CIFAR-10, WRN-34-10, 100 epochs (CARTL App. C) | | GPU: hours |

Epsilon by family: 8/255 for CIFAR-like images (CARTL/Madry); 0.1 for the near-binary
28x28 MNIST family, where 8/255 barely moves a pixel of ink and Madry's 0.3 leaves small
transferred models with no robustness to measure.

Notebook 04 (Vaishnavi et al.) is L2 only, with one rule for every L2 number (the AT and
attack eps, the smoothing sigma, the RA-CT radius, Table 3's radii, Table 2's noise): the
paper's [0,1]-pixel values, eps = sigma = 0.5, kept at 28x28 (:data:`L2_EPS`). Smoothing
papers use sigma = 0.5 at 32 and 224 px alike; scaling by sqrt(d) (0.5 * sqrt(784/150528)
= 0.036) would leave RA ~ SA, and so R^2 ~ 1 trivially.
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field, replace

from rtlkit.measure.attacks import PGD, FoolboxPGD
from rtlkit.measure.card import Card
from rtlkit.core.errors import ConfigError, check, check_int, check_real, is_int, is_real
from rtlkit.core.models.resnet import ResNetSpec
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.core.models import parse_spec
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun, check_tap
from rtlkit.train.loop import AdversarialTraining, StandardTraining
from rtlkit.train.transfer import TransferPolicy
from rtlkit.measure.smoothing import median_radius_limit, median_samples_needed
from rtlkit.core.data import KNOWN_SIZES
from rtlkit.core.runtime import default_device

EPS = {"mnist": 0.1, "cifar": 8 / 255}
L2_EPS = 0.5   # notebook 04: eps = sigma = 0.5 in [0,1] pixels at every input size (module docstring)


def step_size(eps: float, steps: int) -> float:
    """CARTL's 2/255 for eps 8/255 is eps/4; few-step attacks need at least 2.5 eps / steps (Madry)."""
    return max(eps / 4, 2.5 * eps / steps)


def pgd(eps: float, steps: int, loss: str = "ce") -> PGD:
    return PGD(eps=eps, steps=steps, step_size=step_size(eps, steps), loss=loss)


@dataclass(frozen=True)
class Pretraining:
    """Notebook 04 (Vaishnavi et al., TMLR): pre-training x robust fine-tuning, at one scale.
    Defaults are the paper's settings (Sec. 4.1, App. A): L2 eps = sigma = 0.5, APGD-CE 100
    iterations x 5 restarts, Square 5,000 queries, Cohen's N0 = 100, N = 100,000, alpha = 0.001
    on ~500 evenly spaced test images. Each field is also a notebook parameter."""
    pt_source: DataSpec                       # all four pre-trainings (AT, CR, SimCLR, ST) use it
    pt_targets: tuple[DataSpec, ...]          # Tables 4-5, Figs. 2-3
    table6_targets: tuple[int, ...] = (0, 1)  # Tables 6-7: indices into pt_targets
    pt_model: WRNSpec | ResNetSpec | None = None           # None: the profile's model
    l2_eps: float = L2_EPS
    pretrain_epochs: int = 100
    pt_finetune_steps: int = 10_000           # every target, every method: the same optimizer steps
    pt_lr: float = 0.05                       # fine-tuning lr (pre-training: the method's 0.1)
    attack_images: int | None = None          # class-balanced test subset for APGD / Square (None: all)
    apgd_iters: int = 100
    apgd_restarts: int = 5
    square_queries: int = 5000
    cert_images: int = 500                    # evenly spaced test images certified (Table 8)
    smoothing_n0: int = 100
    smoothing_n: int = 100_000
    smoothing_alpha: float = 0.001
    noise_sigmas: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5)   # Table 2
    noise_sigmas_ours: tuple[float, ...] = (1.0, 2.0)           # (ours) Table 2 beyond the paper's sigmas
    noise_sources: tuple[str, ...] = ("AT", "CR", "ST")         # Table 2's AT and CR, and (ours) the ST source
    noise_images: int = 1000
    radii: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)             # Table 3
    at_sigma: float = 0.01                    # Table 3: the AT source is smoothed at sigma = 0.01
    pt_seeds: tuple[int, ...] = (0,)
    # (ours) more seeds for the first target's Table 4 (AT against Random) and Table 5 (CR against
    # Random) cells, each training its own sources: the two claim cells notebook 04's seed floor is
    # measured on where pt_seeds has fewer than 3 (rtlkit.measure.stats.seed_floor)
    pt_floor_seeds: tuple[int, ...] = ()

    def __post_init__(self):
        check(len(self.pt_targets) >= 2, "pt_targets: give at least two targets (Figs. 2-3 fit a line)")
        check(all(is_int(i) and 0 <= i < len(self.pt_targets) for i in self.table6_targets),
              f"table6_targets are indices into pt_targets (0..{len(self.pt_targets) - 1}): {self.table6_targets}")
        check_real("l2_eps", self.l2_eps, 0, low_open=True)
        for name in ("pretrain_epochs", "pt_finetune_steps", "apgd_iters", "apgd_restarts", "square_queries",
                     "cert_images", "smoothing_n0", "smoothing_n", "noise_images"):
            check_int(name, getattr(self, name), 1)
        if self.attack_images is not None:
            check_int("attack_images", self.attack_images, 1)
        check(self.smoothing_n0 <= self.smoothing_n, f"smoothing_n0 ({self.smoothing_n0}) must not exceed "
              f"smoothing_n ({self.smoothing_n})")
        check_real("pt_lr", self.pt_lr, 0, low_open=True)
        check(0 < self.smoothing_alpha < 1, f"smoothing_alpha must be in (0, 1), not {self.smoothing_alpha!r}")
        check_real("at_sigma", self.at_sigma, 0, low_open=True)
        for name in ("noise_sigmas", "radii", "pt_seeds"):
            check(len(getattr(self, name)) >= 1, f"{name} is empty: give at least one value")
        check(all(is_real(v) and v > 0 for v in self.noise_sigmas), f"noise_sigmas must be > 0: {self.noise_sigmas}")
        check(all(is_real(v) and v > 0 for v in self.noise_sigmas_ours),
              f"noise_sigmas_ours must be > 0: {self.noise_sigmas_ours}")
        check(len(self.noise_sources) >= 1 and set(self.noise_sources) <= {"AT", "CR", "ST", "SimCLR"},
              f"noise_sources are pre-trainings of AT, CR, ST, SimCLR, not {self.noise_sources!r}")
        check(all(is_real(v) and v >= 0 for v in self.radii), f"radii must be >= 0: {self.radii}")
        for name in ("pt_seeds", "pt_floor_seeds"):
            for v in getattr(self, name):
                check_int(f"{name} entry", v, 0)


PV_MODES = ("normal", "noise", "adv", "adv-d", "adv-s", "gauss")   # gauss: ours (unclipped sigma noise), not in the default grid


def _pv_radii() -> tuple[float, ...]:
    return tuple(round(0.01 * i, 2) for i in range(19))   # 0 .. 0.18, below the 0.185 limit at dim 640


@dataclass(frozen=True)
class Provable:
    """Notebook 05 (Provably Robust Transfer, ICLR 2022 sub.): Lipschitz heads on frozen features,
    representation search and median smoothing, at one scale. Defaults are App. A.1's: sigma =
    eps = r = 0.1, S = 500 draws, alpha = 1e-4, Cohen N0 = 100 / N = 500, balanced 1,000 test
    images, input search 1,000 steps, 3 head seeds, Adam lr 1e-4. Each field is also a notebook
    parameter. Pairs are (source DataSpec or None for the profile's source, target DataSpec)."""
    main_pair: tuple                          # Tables 2-3 and the radius figure
    table1_pairs: tuple                       # Table 1 (the main pair first)
    table4_pairs: tuple                       # Table 4: 4-layer heads on a distant pair
    pv_model: WRNSpec | ResNetSpec | None = None           # None: the profile's model
    pv_modes: tuple[str, ...] = PV_MODES[:5]
    pv_sigma: float = 0.1                     # smoothing sigma and the noise / adv-s training sigma
    pv_eps: float = 0.1                       # adv (paper) and adv-s: L2 PGD radius
    pv_r: float = 0.1                         # the radius A_V is read at
    pv_radii: tuple[float, ...] = field(default_factory=_pv_radii)
    pv_samples: int = 500                     # S: median smoothing draws = Cohen's N
    pv_n0: int = 100                          # Cohen's selection draws (label smoothing)
    pv_alpha: float = 1e-4
    pv_scale: float = 1.0                     # eps, sigma, r in pixels = the paper's (normalised) x this
    smooth_images: int = 1000
    search_images: int = 1000
    search_steps: int = 1000
    head_seeds: tuple[int, ...] = (0, 1, 2)
    table1_head_seeds: tuple[int, ...] | None = None   # Table 1's head seeds (None: head_seeds)
    head_lr: float = 1e-4
    head_max_epochs: int = 200
    wn_temperature: float = 100.0             # CE(T h(z)) for wn heads (HeadTraining.temperature)
    normal_epochs: int = 100                  # normal and noise sources (notebook 04's ST config)
    shared_adv: bool = False                  # adv = the profile's robust source (01-03's, L-inf), not L2 PGD-10
    tap: int | None = None                    # None: the penultimate feature

    def __post_init__(self):
        for name in ("main_pair", "table1_pairs", "table4_pairs"):
            pairs = (getattr(self, name),) if name == "main_pair" else getattr(self, name)
            check(len(pairs) >= 1, f"{name} is empty: give at least one (source, target) pair")
            for pair in pairs:
                check(isinstance(pair, tuple) and len(pair) == 2 and (pair[0] is None or isinstance(pair[0], DataSpec))
                      and isinstance(pair[1], DataSpec), f"{name}: a pair is (source DataSpec or None, target DataSpec), "
                      f"not {pair!r}")
        check(len(self.pv_modes) >= 1, "pv_modes is empty: give at least one training mode")
        for m in self.pv_modes:
            check(m in PV_MODES, f"unknown training mode {m!r}; one of {', '.join(PV_MODES)}")
        check_real("pv_sigma", self.pv_sigma, 0, low_open=True)
        check_real("pv_eps", self.pv_eps, 0)
        check_real("pv_r", self.pv_r, 0)
        check(0 < self.pv_alpha < 1 if is_real(self.pv_alpha) else False,
              f"pv_alpha must be in (0, 1), not {self.pv_alpha!r}")
        check_real("pv_scale", self.pv_scale, 0, low_open=True)
        for name in ("pv_samples", "pv_n0", "smooth_images", "search_images", "search_steps", "head_max_epochs",
                     "normal_epochs"):
            check_int(name, getattr(self, name), 1)
        check_real("head_lr", self.head_lr, 0, low_open=True)
        check_real("wn_temperature", self.wn_temperature, 0, low_open=True)
        check(len(self.head_seeds) >= 1, "head_seeds is empty: give at least one seed")
        for v in self.head_seeds:
            check_int("head_seeds entry", v, 0)
        if self.table1_head_seeds is not None:
            check(len(self.table1_head_seeds) >= 1, "table1_head_seeds is empty: give at least one seed, or None")
            for v in self.table1_head_seeds:
                check_int("table1_head_seeds entry", v, 0)
        check(len(self.pv_radii) >= 1, "pv_radii is empty: give at least one radius")
        for r in self.pv_radii:
            check_real("pv_radii entry", r, 0)
        if self.tap is not None:
            check_int("tap", self.tap, 1)
        check(self.tap is None or is_int(self.tap), f"tap must be a block count or None, not {self.tap!r}")
        if self.pv_model is not None:
            self.check_model(self.pv_model)

    def check_model(self, spec: WRNSpec | ResNetSpec) -> None:
        """What depends on the extractor: the tap names one of its blocks, and every radius is below
        the largest one S draws can certify over its feature width D (Bonferroni over D)."""
        check_tap(self.tap, spec.n_blocks)
        dim = self.feature_dim(spec)
        limit = median_radius_limit(self.sigma, self.pv_alpha, dim, self.pv_samples)
        where = f"with S = {self.pv_samples} draws over {dim} dimensions at sigma = {self.pv_sigma:g}, alpha = " \
            f"{self.pv_alpha:g}"
        for name, r in [("pv_r", self.pv_r)] + [("pv_radii entry", r) for r in self.pv_radii]:
            need = median_samples_needed(r * self.pv_scale, self.sigma, self.pv_alpha, dim)
            if limit <= 0:   # S too small for even the median itself: no radius at all, not a negative one
                check(False, f"pv_samples = {self.pv_samples} is too few draws for median smoothing to certify any "
                      f"radius {where}: S >= {median_samples_needed(0.0, self.sigma, self.pv_alpha, dim)} draws "
                      f"certify r = 0, and S = {need} would certify {name} = {r:g}")
            check(r * self.pv_scale < limit, f"{name} = {r:g} is at or above the largest radius median smoothing can "
                  f"certify {where}: {limit / self.pv_scale:.4g}; S = {need} draws would certify it")

    def feature_dim(self, spec: WRNSpec | ResNetSpec) -> int:
        """D, the width of f's output: the penultimate feature's, or at a tap, the channel width
        after that many blocks."""
        return spec.feature_dim if self.tap is None else spec.widths[self.tap - 1]

    @property
    def sigma(self) -> float:
        return self.pv_sigma * self.pv_scale

    @property
    def eps(self) -> float:
        return self.pv_eps * self.pv_scale

    @property
    def r(self) -> float:
        return self.pv_r * self.pv_scale


SOURCE_KINDS = ("robust", "natural")


@dataclass(frozen=True)
class Shafahi:
    """Notebook 06 (Shafahi et al., ICLR 2020): frozen robust features, N per class, MLP heads,
    input gradients, LwF tables. Defaults are the paper's (Fig. 3 arms, Fig. 4 depths, Tables 4-7's
    lambda_d grids; Sec. 4.2's arm 2, fine-tuned on App. A.2's PGD-3 at the training eps, step 3/5
    of it), with ours marked; each field is a notebook parameter. ``per_class`` None means every
    training image."""
    per_class: tuple = (10, 25, 100, None)              # Fig. 3's N per class
    arm_steps: int = 1000                               # Fig. 3 arms 1-2: one optimizer-step budget at every N
    probe_min_steps: int = 500                          # (ours) Fig. 3's probe: at least this many SGD steps
    depths: tuple[int, ...] = (0, 1, 2, 3, 5)            # Fig. 4: hidden layers
    bn_dropout_depth: int = 2                           # Fig. 4's BN + dropout variant
    dropout: float = 0.25
    table4_extra_lams: tuple[float, ...] = (1e-7, 0.0025, 0.0, 1.0, 10.0)   # Table 4 beside 03's grid; 0, 1, 10 ours
    lwf_seed_lams: tuple[float, ...] = (0.1, 0.001)      # (ours) Table 4 cells fine-tuned with every seed of lwf_seeds
    lwf_seeds: tuple[int, ...] = (0, 1, 2)
    lwf_bn_update: bool = True                          # (ours) Table 4's lambda_d = 0 with BN statistics updated
    lwf_frozen_bn_lams: tuple[float, ...] = (0.1, 0.001)  # (ours) Table 4's LwF with BN gamma / beta frozen too
    wide_heads: tuple = ((5, 512),)                     # (ours) Fig. 4: (hidden layers, width) heads beside depths
    same_lams: tuple[float, ...] = (1e-5, 5e-5, 1e-4, 0.001, 0.01, 0.1)   # Tables 5 / 7
    split_lams: tuple[float, ...] = (0.001, 0.005, 0.01, 0.1)             # Table 6
    grad_images: int = 8                                # Fig. 5
    grad_percentile: float = 99.0                       # pictures clip |g| at this percentile
    stroke_threshold: float = 0.3                       # (ours) the share of |g| on pixels brighter than this

    def __post_init__(self):
        for name in ("per_class", "depths", "same_lams", "split_lams"):
            check(len(getattr(self, name)) >= 1, f"{name} is empty: give at least one value")
        for n in self.per_class:
            check(n is None or (is_int(n) and n >= 1), f"per_class entries are counts >= 1 or None (all), not {n!r}")
        for d in self.depths:
            check_int("depths entry", d, 0)
        check_int("bn_dropout_depth", self.bn_dropout_depth, 1)
        check(is_real(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), not {self.dropout!r}")
        check_int("arm_steps", self.arm_steps, 1)
        check_int("probe_min_steps", self.probe_min_steps, 1)
        check_int("grad_images", self.grad_images, 1)
        check_real("grad_percentile", self.grad_percentile, 0, 100, low_open=True)
        check_real("stroke_threshold", self.stroke_threshold, 0, 1)
        for name in ("table4_extra_lams", "same_lams", "split_lams", "lwf_seed_lams", "lwf_frozen_bn_lams"):
            for v in getattr(self, name):
                check_real(f"{name} entry", v, 0)
        check(len(self.lwf_seeds) >= 1, "lwf_seeds is empty: give at least one seed")
        for v in self.lwf_seeds:
            check_int("lwf_seeds entry", v, 0)
        for h in self.wide_heads:
            check(isinstance(h, (tuple, list)) and len(h) == 2 and is_int(h[0]) and h[0] >= 1 and is_int(h[1])
                  and h[1] >= 1, f"wide_heads entries are (hidden layers >= 1, width >= 1), not {h!r}")

    def check_data(self, target: DataSpec) -> None:
        """What needs the target's data (loaded, nothing trained): every N per class (a ConfigError
        naming a class too small) and the gradient images against its test set."""
        for n in self.per_class:
            if n is not None:
                replace(target, per_class=n).train()
        n_test = len(target.test())
        check(self.grad_images <= n_test, f"grad_images = {self.grad_images} is more than the {n_test} test images "
              f"of {target.label}")


@dataclass(frozen=True)
class Profile:
    name: str
    source: DataSpec
    target: DataSpec
    model: WRNSpec | ResNetSpec
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
    lwf_lr: float = 0.001                                # Shafahi Sec. 6 (LwFTraining's default)
    lwf_weight_decay: float = 2e-4                       # Shafahi's released code
    fractions: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1)  # CARTL Fig. 5
    cartl_seeds: tuple[int, ...] = (0, 1, 2)
    cartl_test_n: int | None = None                      # evaluate notebook 03 on a class-balanced subset
    cartl_finetune_epochs: int | None = None             # notebook 03's fine-tuning budget (None: finetune.epochs)
    # notebook 03's claim-carrying cells, replicated (studies.cartl.seeded_claims): replicate r trains
    # its own sources with seed r and fine-tunes with seed r, evaluated on claim_test_n test images
    claim_seeds: tuple[int, ...] = (0, 1, 2)
    claim_test_n: int | None = 1000                      # None: the whole test set
    claim_fractions: tuple[float, ...] = (0.5, 0.2)      # Fig. 5's fractions that carry a claim
    pairs: tuple = ()      # Table 4: extra (source DataSpec or None for the profile's source, target DataSpec)
    pretraining: Pretraining | None = None   # notebook 04 (Vaishnavi et al.)
    provable: Provable | None = None         # notebook 05 (Provably Robust Transfer)
    shafahi: Shafahi | None = None           # notebook 06 (Shafahi et al.)
    # notebook 07's report cards (rtlkit.measure.card): eps and norm are each model's own; None is AutoAttack's
    # standard version and the checks' defaults (what full and paper run)
    card: Card | None = None
    card_test_n: int | None = 1000   # class-balanced test images per card; None: the whole test set

    def __post_init__(self):
        for name in _GRIDS:
            check(len(getattr(self, name)) >= 1, f"{name} is empty: give at least one value")
        for name in ("seeds", "source_seeds", "cartl_seeds", "claim_seeds"):
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
        check(all(0 < f <= 1 for f in self.claim_fractions), f"claim_fractions must be in (0, 1]: {self.claim_fractions}")
        for name in ("cartl_test_n", "claim_test_n"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        check_real("eps", self.eps, 0, 1)   # an L-inf radius in [0, 1] pixel units
        if self.provable is not None:
            self.provable.check_model(self.provable.pv_model or self.model)

    def with_(self, **changes) -> "Profile":
        """A copy with notebook parameters applied (None leaves a field as it is)."""
        changes = {k: parameter(k, v) for k, v in changes.items() if v is not None}
        if "eps" in changes:
            e = changes["eps"]
            sm = self.source_method
            changes.setdefault("source_method", replace(sm, attack=pgd(e, sm.attack.steps)))
            changes.setdefault("eval_attacks", tuple(_rescale(a, e) for a in self.eval_attacks))
        if "model" in changes:   # the user's backbone for every notebook (04's and 05's own models follow it)
            if self.pretraining is not None:
                changes.setdefault("pretraining", replace(self.pretraining, pt_model=None))
            if self.provable is not None:
                changes.setdefault("provable", replace(self.provable, pv_model=None))
        if "source_epochs" in changes:
            changes["source_method"] = replace(changes.get("source_method", self.source_method),
                                               epochs=changes.pop("source_epochs"))
        if "finetune_epochs" in changes:
            changes["finetune"] = replace(self.finetune, epochs=changes.pop("finetune_epochs"))
        if "source_name" in changes:
            changes["source"] = replace(self.source, name=changes.pop("source_name"))
        if "target_name" in changes:
            changes["target"] = replace(self.target, name=changes.pop("target_name"))
        pt = {k: changes.pop(k) for k in list(changes) if k in _PT_FIELDS}
        if pt:
            check(self.pretraining is not None, f"profile {self.name} has no notebook-04 settings for {sorted(pt)}")
            changes["pretraining"] = replace(self.pretraining, **pt)
        sh = {k: changes.pop(k) for k in list(changes) if k in _SH_FIELDS}
        if sh:
            check(self.shafahi is not None, f"profile {self.name} has no notebook-06 settings for {sorted(sh)}")
            changes["shafahi"] = replace(self.shafahi, **sh)
        pv = {k: changes.pop(k) for k in list(changes) if k in _PV_FIELDS}
        if pv:
            check(self.provable is not None, f"profile {self.name} has no notebook-05 settings for {sorted(pv)}")
            changes["provable"] = replace(self.provable, **pv)
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
          "fractions", "cartl_seeds", "claim_seeds", "claim_fractions")
_ALIASES = ("source_name", "target_name", "source_epochs", "finetune_epochs")
# notebook 04's settings: every field of Pretraining is a parameter of its own name
_PT_FIELDS = tuple(f.name for f in dataclasses.fields(Pretraining) if f.name not in ("pt_source", "pt_targets", "pt_model"))
_PT_GRIDS = ("noise_sigmas", "noise_sigmas_ours", "noise_sources", "radii", "pt_seeds", "pt_floor_seeds",
             "table6_targets")
# notebook 05's settings: every field of Provable but its pairs and model is a parameter of its own name
_PV_FIELDS = tuple(f.name for f in dataclasses.fields(Provable)
                   if f.name not in ("main_pair", "table1_pairs", "table4_pairs", "pv_model"))
_PV_GRIDS = ("pv_modes", "pv_radii", "head_seeds", "table1_head_seeds")
_SH_FIELDS = tuple(f.name for f in dataclasses.fields(Shafahi))
_SH_GRIDS = ("per_class", "depths", "table4_extra_lams", "same_lams", "split_lams", "lwf_seed_lams", "lwf_seeds",
             "lwf_frozen_bn_lams")


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
    known = {f.name for f in dataclasses.fields(Profile)} | set(_ALIASES) | set(_PT_FIELDS) | set(_PV_FIELDS) | \
        set(_SH_FIELDS)
    check(name in known, f"unknown parameter {name!r}; one of {', '.join(sorted(known))}")
    value = _literal(value)
    if name in _SH_FIELDS:
        if name in _SH_GRIDS:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            check(len(value) >= 1, f"{name} is empty: give at least one value")
        return value   # Shafahi's own checks name every bad entry
    if name in _PV_FIELDS:
        return _pv_parameter(name, value)
    if name in _GRIDS + _PT_GRIDS:
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        check(len(values) >= 1 or name == "pt_floor_seeds", f"{name} is empty: give at least one value")
        for v in values:
            if name == "ks":
                check(v == "all" or is_int(v), f"ks entries are block counts or 'all', not {v!r}")
            elif name in ("bn_ks", "cartl_ks"):
                check_int(f"{name} entry", v, 1)
            elif name.endswith("seeds") or name == "table6_targets":
                check_int(f"{name} entry", v, 0)
            else:
                check_real(f"{name} entry", v, 0 if name in _PT_GRIDS else None)
        return values
    if name in _PT_FIELDS:
        if name in ("l2_eps", "pt_lr", "smoothing_alpha", "at_sigma"):
            check_real(name, value, 0, low_open=True)
        elif not (name == "attack_images" and value is None):
            check_int(name, value, 1)
        return value
    if name == "cartl_choice":
        check(isinstance(value, (list, tuple)) and len(value) == 2 and all(is_real(v) for v in value),
              f"cartl_choice is a (lambda, beta) pair of numbers, not {value!r}")
        return tuple(value)
    if name == "model":
        return parse_spec(value)
    if name == "eps":
        check_real("eps", value, 0, 1)
    elif name in ("source_epochs", "finetune_epochs", "cartl_finetune_epochs"):
        check_int(name, value, 1)
    elif name in ("cartl_test_n", "claim_test_n"):
        check_int(name, value, 1)
    elif name in ("source_name", "target_name"):
        check(isinstance(value, str), f"{name} must be a dataset name, not {value!r}")
    return value


def _pv_parameter(name: str, value):
    """A notebook-05 parameter: grids as tuples with each entry checked, scalars checked by type
    (ranges and the certifiable radius are Provable's own checks)."""
    if name == "table1_head_seeds" and value is None:
        return None
    if name in _PV_GRIDS:
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        check(len(values) >= 1, f"{name} is empty: give at least one value")
        for v in values:
            if name == "pv_modes":
                check(v in PV_MODES, f"unknown training mode {v!r}; one of {', '.join(PV_MODES)}")
            elif name in ("head_seeds", "table1_head_seeds"):
                check_int(f"{name} entry", v, 0)
            else:
                check_real("pv_radii entry", v, 0)
        return values
    if name == "tap":
        check(value is None or is_int(value), f"tap must be a block count or None, not {value!r}")
    elif name in ("pv_samples", "pv_n0", "smooth_images", "search_images", "search_steps", "head_max_epochs",
                  "normal_epochs"):
        check_int(name, value, 1)
    else:
        check(is_real(value), f"{name} must be a number, not {value!r}")
    return value


def _rescale(attack: PGD | FoolboxPGD, eps: float) -> PGD | FoolboxPGD:
    return replace(attack, eps=eps, step_size=step_size(eps, attack.steps))


def _offline_pairs(source_n: int | None) -> tuple:
    """CARTL Table 4 on offline data: split Fashion-MNIST, and Fashion-MNIST -> sklearn 8x8 digits."""
    return ((DataSpec("fashion-mnist", classes=(0, 1, 2, 3, 4), train_n=source_n, test_n=1000),
             DataSpec("fashion-mnist", classes=(5, 6, 7, 8, 9), train_n=4000)),
            (None, DataSpec("digits-8x8")))  # None: the profile's own source


def _offline_pretraining(gpu: bool, quick: bool) -> Pretraining:
    """Notebook 04 offline: every pre-training on Fashion-MNIST 0-4 (a full one would contain the
    5-9 target); targets Fashion-MNIST 5-9, MNIST-5k at several fractions, sklearn's 8x8 digits."""
    source = DataSpec("fashion-mnist", classes=(0, 1, 2, 3, 4), train_n=None if gpu else 6000, test_n=1000)
    f59 = DataSpec("fashion-mnist", classes=(5, 6, 7, 8, 9), train_n=2000)
    if quick:   # 2-core CPU: 38 min (docs/committed-run.md): one seed, 200 attacked images, N = 1,000 on 100 images
        return Pretraining(
            pt_source=source, pt_targets=(f59, DataSpec("mnist-5k"), DataSpec("mnist-5k", fraction=0.2),
                                           DataSpec("digits-8x8")),
            table6_targets=(1, 0), pretrain_epochs=15 if gpu else 8, pt_finetune_steps=400,
            attack_images=200, apgd_restarts=1, square_queries=1000, cert_images=100, smoothing_n=1000,
            pt_floor_seeds=(1, 2))
    return Pretraining(
        pt_source=source, pt_targets=(f59,) + tuple(DataSpec("mnist-5k", fraction=f) for f in (1.0, 0.5, 0.2, 0.1))
        + (DataSpec("digits-8x8"),),
        table6_targets=(1, 0), pretrain_epochs=30, pt_finetune_steps=1500, attack_images=1000, cert_images=100)


def _offline_provable(gpu: bool, quick: bool, model: WRNSpec, pairs: tuple) -> Provable:
    """Notebook 05 offline: Fashion-MNIST -> MNIST-5k for Tables 2-3, the CARTL pairs too for
    Table 1 (so 03's split source is reused), Fashion-MNIST -> 8x8 digits as Table 4's distant pair.
    adv is L2 PGD-10 at eps, as the paper's Sec. 5 and App. A.1 train it (not 01-03's L-inf source,
    whose eps-ball holds L2 balls of radius 2.8); normal and noise train as notebook 04's ST source."""
    main = (None, DataSpec("mnist-5k"))
    far = tuple(p for p in pairs if p[1].name == "digits-8x8")
    pt = _offline_pretraining(gpu, quick)
    if quick:   # 2-core CPU: 21 min with 01-04 warm (the levers: 300 smoothed, 200 searched x 100 steps)
        # head lr 1e-3: MNIST-5k's 4,000 rows give 28 Adam steps an epoch, against the paper's hundreds
        return Provable(main_pair=main, table1_pairs=(main,) + tuple(pairs), table4_pairs=far, pv_model=model,
                        smooth_images=300, search_images=200, search_steps=100, head_seeds=(0,), head_lr=1e-3,
                        table1_head_seeds=(0, 1, 2),   # Table 1's heads on cached features: cheap replicates
                        normal_epochs=pt.pretrain_epochs, shared_adv=False)   # adv: L2 PGD-10 (Sec. 5, App. A.1)
    return Provable(main_pair=main, table1_pairs=(main,) + tuple(pairs), table4_pairs=far, pv_model=model,
                    normal_epochs=pt.pretrain_epochs, shared_adv=False)


def _smoke() -> Profile:
    eps = 0.1
    return Profile(
        name="smoke",
        lwf_lr=0.01, lwf_weight_decay=5e-4,   # what notebook 03 ran (its cache keys hold)
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
        claim_seeds=(0, 1), claim_test_n=None, claim_fractions=(0.5,),
        pairs=((DataSpec("synthetic-a", classes=(0, 1)), DataSpec("synthetic-a", classes=(2, 3))),),
        pretraining=Pretraining(
            pt_source=DataSpec("synthetic-c", classes=(0, 1)),
            pt_targets=(DataSpec("synthetic-c", classes=(2, 3)), DataSpec("synthetic-d", train_n=256)),
            pretrain_epochs=2, pt_finetune_steps=8, attack_images=32, apgd_iters=5, apgd_restarts=1,
            square_queries=20, cert_images=16, smoothing_n0=10, smoothing_n=100, noise_images=64),
        provable=Provable(
            main_pair=(None, DataSpec("synthetic-b", train_n=256)),
            table1_pairs=((None, DataSpec("synthetic-b", train_n=256)),
                          (DataSpec("synthetic-a", classes=(0, 1)), DataSpec("synthetic-a", classes=(2, 3)))),
            table4_pairs=((None, DataSpec("synthetic-a", classes=(2, 3), train_n=128)),),
            pv_model=WRNSpec(10, 1, stem_stride=2), smooth_images=16, search_images=16, search_steps=5,
            pv_samples=60, pv_n0=10, pv_alpha=0.01, pv_radii=(0.0, 0.02, 0.04), pv_r=0.02, head_seeds=(0,),
            head_lr=1e-2, head_max_epochs=6, normal_epochs=2, shared_adv=True),
        shafahi=Shafahi(per_class=(4, 16, None), arm_steps=6, depths=(0, 1, 2), table4_extra_lams=(1e-7, 0.0),
                        same_lams=(1e-5, 0.01), split_lams=(0.01,), grad_images=4, lwf_seed_lams=(0.1,),
                        lwf_frozen_bn_lams=(0.1,),
                        lwf_seeds=(0, 1), wide_heads=((2, 16),)),
        card=Card(eps=eps, pgd_steps=3, apgd_iters=3, targets=2, fab_iters=3, square_queries=20, strong_factor=2,
                  strong_restarts=1), card_test_n=24)


def _quick(gpu: bool) -> Profile:
    eps = EPS["mnist"]
    return Profile(
        name="quick",
        lwf_lr=0.01, lwf_weight_decay=5e-4,   # what notebook 03 ran (its cache keys hold)
        source=DataSpec("fashion-mnist", train_n=None if gpu else 12000, test_n=1000),
        target=DataSpec("mnist-5k"),
        model=WRNSpec(16, 1, stem_stride=2),
        eps=eps,
        source_method=AdversarialTraining(epochs=10 if gpu else 5, attack=pgd(eps, 7 if gpu else 5)),
        finetune=StandardTraining(epochs=6, lr=0.05),
        eval_attacks=(pgd(eps, 20),),
        ks=tuple(range(1, 9)), bn_ks=(4, 6),
        reinit_source=DataSpec("fashion-mnist", train_n=4000, test_n=1000),
        seeds=(0, 1, 2),   # notebooks 01-02: three fine-tuning seeds a cell, so each verdict's seed part is measured
        # On 2 CPU cores (the suite takes ~2.5 h there: docs/committed-run.md): one fine-tuning seed, and
        # only the lambda that Tables 3-4 and Figs. 4-5 use (each FDM source costs minutes there).
        cartl_ks=(4, 6), cartl_betas=(1.0, 0.4), cartl_lams=(0.01, 0.005) if gpu else (0.005,),
        cartl_seeds=(0, 1) if gpu else (0,), fractions=(1.0, 0.5, 0.2, 0.1),
        cartl_test_n=500, pairs=_offline_pairs(None if gpu else 6000),
        # bench/budget.py (figures/03_budget): at 6 epochs NEFT underfits and loses 11-14 points of
        # robustness to plain fine-tuning; from 24 the paper's order shows (CARTL > AT + NEFT > vanilla)
        cartl_finetune_epochs=24,
        pretraining=_offline_pretraining(gpu, quick=True),
        provable=_offline_provable(gpu, True, WRNSpec(16, 1, stem_stride=2), _offline_pairs(None if gpu else 6000)),
        # notebook 06 on 2 cores (19 min with 01-05 warm): N in {10, 25, 100, all}, 150 steps per arm,
        # hidden layers 0-3, Tables 5/7 without 5e-5
        shafahi=Shafahi(arm_steps=300 if gpu else 150, depths=(0, 1, 2, 3), same_lams=(1e-5, 1e-4, 0.001, 0.01, 0.1),
                        lwf_seed_lams=(0.1, 0.001, 1e-7)),   # 1e-7: Table 4's "no difference" claim, measured
        # notebook 07 on 2 cores (12 min of cards with 01-06 warm): AutoAttack's attacks at a fifth of their
        # iterations and queries, 3 targets, and check 4 at 5x steps with 2 restarts, on 500 images
        card=Card(eps=eps, apgd_iters=20, targets=3, fab_iters=20, square_queries=1000, strong_factor=5,
                  strong_restarts=2), card_test_n=500)


def _full() -> Profile:
    eps = EPS["mnist"]
    # Sized for the whole suite in 15 minutes on one H100 (`rtlkit plan --profile full`
    # counts the work): source AT is most of it (7 sources: AT, FDM at 2 lambda x 2 k, the split
    # pair's AT + FDM), then foolbox PGD-100, so sources train 15 epochs and every test set is 1,000.
    return Profile(
        name="full",
        lwf_lr=0.01, lwf_weight_decay=5e-4,   # what notebook 03 ran (its cache keys hold)
        source=DataSpec("fashion-mnist", test_n=1000),
        target=DataSpec("mnist-5k"),
        model=WRNSpec(16, 4),
        eps=eps,
        source_method=AdversarialTraining(epochs=15, attack=pgd(eps, 7)),
        finetune=StandardTraining(epochs=10, lr=0.05),
        eval_attacks=(FoolboxPGD(eps=eps, steps=100, step_size=step_size(eps, 100)),),
        ks=tuple(range(1, 9)), bn_ks=(4, 6),
        reinit_source=DataSpec("fashion-mnist", train_n=10000, test_n=1000),
        seeds=(0, 1, 2), pairs=_offline_pairs(None), pretraining=_offline_pretraining(True, quick=False),
        provable=_offline_provable(True, False, WRNSpec(16, 4), _offline_pairs(None)),
        shafahi=Shafahi(per_class=(10, 25, 50, 100, 250, None), arm_steps=1000))


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
               (DataSpec("cifar10"), DataSpec("svhn")), (DataSpec("gtsrb"), DataSpec("svhn"))),
        # Vaishnavi et al. pre-train a ResNet-50 on ImageNet for 12 targets at 224 px; offline of that,
        # CIFAR-100 -> the 32x32 sets torchvision has, WRN-28-4 (targets missing on disk are skipped)
        pretraining=Pretraining(
            pt_source=DataSpec("cifar100"),
            pt_targets=(DataSpec("cifar10"), DataSpec("svhn"), DataSpec("gtsrb"), DataSpec("stl10")),
            table6_targets=(0, 1), pt_model=WRNSpec(28, 4), attack_images=1000),
        # Provably Robust Transfer: WRN-34-10 (App. A.1 says WRN-32-10, not a 6n+4 depth), eps, sigma, r
        # perturb normalised inputs there: x 0.3081 (MNIST's std) in [0,1] pixels. SVHN is RGB here.
        provable=Provable(
            main_pair=(DataSpec("svhn"), DataSpec("mnist")),
            table1_pairs=((DataSpec("svhn"), DataSpec("mnist")), (DataSpec("fashion-mnist"), DataSpec("kmnist")),
                          (DataSpec("cifar10"), DataSpec("stl10")), (DataSpec("mnist"), DataSpec("kmnist"))),
            table4_pairs=((DataSpec("mnist"), DataSpec("kmnist")), (DataSpec("fashion-mnist"), DataSpec("kmnist"))),
            pv_model=WRNSpec(34, 10), pv_scale=0.3081),
        shafahi=Shafahi(per_class=(10, 25, 50, 100, 250, None), arm_steps=3900))


def _paper_dry() -> Profile:
    """``paper`` shrunk in counts only, to find a crash before anyone spends GPU hours on it: the
    same datasets by name, the same architectures and depths (WRN-34's 17-block partition, WRN-28's
    14), ks, pairs, grids and attack types; width 1, one optimiser step per training, 2-step
    attacks, one seed, a handful of images and few smoothing draws. Its figures are marked
    ``dry_run`` and go to figures/dry-run/, its runs to their own cache keys (the profile differs)."""
    p = _paper()
    eps = p.eps
    pv = p.provable
    pv_model = WRNSpec(34, 1)
    # the radius curve at 0, r / 2 and r (the paper's 19 radii up to 0.18 need 386 draws, 4.6x the
    # forward passes of these 84: most of the dry run's time), with the fewest draws that certify r
    # (on 10 smoothed images, one per class: the smoothed subset is class-balanced)
    radii = (0.0, round(pv.pv_r / 2, 4), pv.pv_r)
    samples = median_samples_needed(pv.pv_r * pv.pv_scale, pv.sigma, pv.pv_alpha, pv.feature_dim(pv_model)) + 1
    def few(spec):   # a handful of images of every class (all of them when a set has fewer)
        if spec is None:
            return None
        classes = len(spec.classes) if spec.classes else KNOWN_SIZES.get(spec.name, (0, 0, 10))[2]
        return replace(spec, train_n=6 * classes, test_n=3 * classes)

    def few_pairs(pairs):
        return tuple((few(a), few(b)) for a, b in pairs)
    pv = replace(pv, main_pair=few_pairs((pv.main_pair,))[0], table1_pairs=few_pairs(pv.table1_pairs),
                 table4_pairs=few_pairs(pv.table4_pairs))
    return replace(
        p, name="paper-dry", model=WRNSpec(34, 1),
        source=few(p.source), target=few(p.target), reinit_source=few(p.reinit_source), pairs=few_pairs(p.pairs),
        source_method=replace(p.source_method, epochs=1, steps=1, attack=pgd(eps, 2)),
        finetune=replace(p.finetune, epochs=1, steps=1),
        eval_attacks=(replace(p.eval_attacks[0], steps=2, step_size=step_size(eps, 2)),),
        seeds=(0,), source_seeds=(0,), cartl_seeds=(0,), claim_seeds=(0, 1), claim_test_n=None,
        pretraining=replace(p.pretraining, pt_source=few(p.pretraining.pt_source),
                            pt_targets=tuple(few(t) for t in p.pretraining.pt_targets),
                            pt_model=WRNSpec(28, 1), pretrain_epochs=1, pt_finetune_steps=1,
                            attack_images=None, apgd_iters=2, apgd_restarts=1, square_queries=4, cert_images=4,
                            smoothing_n0=2, smoothing_n=16, noise_images=10),
        provable=replace(pv, pv_model=pv_model, pv_samples=samples, pv_radii=radii, pv_n0=2, smooth_images=10, search_images=10,
                         search_steps=2, head_seeds=(0,), head_max_epochs=2, normal_epochs=1),
        shafahi=replace(p.shafahi, per_class=(1, 2, None), arm_steps=1, probe_min_steps=1, grad_images=2),
        card=Card(eps=eps, pgd_steps=2, apgd_iters=2, targets=2, fab_iters=2, square_queries=4, strong_factor=2,
                  strong_restarts=1), card_test_n=None)   # the dry run's whole 3-per-class test sets


PROFILES = ("smoke", "quick", "full", "paper", "paper-dry")


def default_name(device: str | None = None) -> str:
    """The profile `make figures` runs: `full` on a GPU, `quick` on the CPU."""
    if device is None:
        device = default_device()
    return "full" if device.startswith("cuda") else "quick"


def get(name: str = "quick", gpu: bool | None = None, **overrides) -> Profile:
    """A profile by name; ``gpu`` (default: whether torch sees one) lets `quick` use all the source data."""
    if gpu is None:
        gpu = default_device().startswith("cuda")
    builders = {"smoke": _smoke, "quick": lambda: _quick(gpu), "full": _full, "paper": _paper,
                "paper-dry": _paper_dry}
    if name not in builders:
        raise ConfigError(f"unknown profile {name!r}; one of {', '.join(PROFILES)}")
    return builders[name]().with_(**overrides)
