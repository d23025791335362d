"""Notebook 04 · Vaishnavi et al. (TMLR): pre-training (standard, adversarial, SimCLR, consistency
regularisation) x robust fine-tuning, measured empirically (APGD-CE, Square) and with
randomized-smoothing certificates. Tables 2-7 and Figs. 2-3: steps, plots and the widget panel.

Every L2 number (AT and attack eps, sigma, the RA-CT radius, Table 3's radii, Table 2's noise)
follows one rule: the paper's [0,1]-pixel values, eps = sigma = 0.5 (``profiles.L2_EPS``).
The methods live in ``rtlkit.train.methods`` (consistency, simclr) and ``rtlkit.train.loop``; attacks in
``rtlkit.measure.attacks`` (APGD, Square); certificates in ``rtlkit.measure.smoothing``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rtlkit.core import data as D
from rtlkit.studies import plots, widgets
from rtlkit.measure.attacks import APGD, PGD, Square
from rtlkit.core.errors import ConfigError, DatasetNotFound
from rtlkit.train.methods.consistency import ConsistencyTraining
from rtlkit.train.methods.probes import ProbeHead, ProbeTraining
from rtlkit.train.methods.simclr import SimCLRTraining
from rtlkit.studies.profiles import Pretraining, Profile
from rtlkit.runs.specs import HeadRun, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_certify, get_or_evaluate, get_or_train
from rtlkit.core.runtime import Runtime
from rtlkit.measure.smoothing import Smoothing, certified_curve, noisy_correct
from rtlkit.train.loop import AdversarialTraining, StandardTraining
from rtlkit.train.transfer import TransferPolicy
from rtlkit.measure.verdicts import Finding, average, contrast, mean_se, ours, paired_cells, pick, theirs
from rtlkit.studies.common import Study

STUDY = Study("04_pretraining", "04 pre-training (Vaishnavi et al.)",
              steps=("noise_table", "certified_sources", "empirical_transfer", "certified_transfer",
                                     "certified_curves", "pretraining_ablation", "robust_finetuning_needed",
                                     "seed_floor_cells"))

__all__ = ["noise_table", "certified_sources", "empirical_transfer", "robust_train_gap", "certified_transfer",
           "certified_curves", "pretraining_ablation", "robust_finetuning_needed", "relative_change", "regressions", "panel"]

PRETRAININGS = ("Random", "AT", "CR", "SimCLR", "ST")
FINE_TUNE_ALL = TransferPolicy(k="all", bn_affine="train")             # Tables 4-6: the whole network
RANDOM_INIT = TransferPolicy(k="all", reinit=True, bn_affine="train")  # same adapted inputs, no source weight
LAST_LAYER = TransferPolicy(k=1)                                       # Table 7: the classifier alone


def _pt(profile: Profile) -> Pretraining:
    if profile.pretraining is None:
        raise ConfigError(f"profile {profile.name} has no notebook-04 settings (Profile.pretraining)")
    return profile.pretraining


def l2_pgd(eps: float) -> PGD:
    """Sec. 4.1's training attack: L2 PGD, 3 steps of 2 eps / 3 (not ``profiles.pgd``'s step rule)."""
    return PGD(eps=eps, steps=3, step_size=2 * eps / 3, norm="l2")


def pretrain_method(pt: Pretraining, name: str) -> StandardTraining:
    """The source-training method of a pre-training (Sec. 4.1; SimCLR: Chen et al. App. B.9)."""
    kw = dict(epochs=pt.pretrain_epochs)
    methods = {"AT": lambda: AdversarialTraining(attack=l2_pgd(pt.l2_eps), **kw),
               "CR": lambda: ConsistencyTraining(sigma=pt.l2_eps, **kw),
               "SimCLR": lambda: SimCLRTraining(**kw),
               "ST": lambda: StandardTraining(**kw)}
    if name not in methods:
        raise ConfigError(f"unknown pre-training {name!r}; one of {', '.join(methods)} (or Random)")
    return methods[name]()


def finetune_method(pt: Pretraining, name: str) -> StandardTraining:
    """Robust fine-tuning by AT or CR, or standard (ST, Table 7), for ``pt_finetune_steps`` SGD
    steps on every target (App. A's grid search and plateau decay are not reproduced)."""
    kw = dict(steps=pt.pt_finetune_steps, lr=pt.pt_lr)
    methods = {"AT": lambda: AdversarialTraining(attack=l2_pgd(pt.l2_eps), **kw),
               "CR": lambda: ConsistencyTraining(sigma=pt.l2_eps, **kw),
               "ST": lambda: StandardTraining(**kw)}
    if name not in methods:
        raise ConfigError(f"unknown fine-tuning {name!r}; one of {', '.join(methods)}")
    return methods[name]()


def source_run(profile: Profile, pretraining: str, seed: int = 0) -> SourceRun:
    pt = _pt(profile)
    return SourceRun(pt.pt_source, pt.pt_model or profile.model, pretrain_method(pt, pretraining), seed)


def transfer_run(profile: Profile, pretraining: str, finetune: str, target, seed: int = 0) -> TransferRun:
    """Fine-tune a pre-trained source on ``target``: the whole network (Tables 4-6), or the last
    layer for ``finetune="ST"`` (Table 7). "Random" re-initialises every block of the ST source
    (the same model and adapted inputs, no source weight)."""
    pt = _pt(profile)
    if pretraining == "Random":
        src, policy = source_run(profile, "ST", seed), RANDOM_INIT
    else:
        src, policy = source_run(profile, pretraining, seed), (LAST_LAYER if finetune == "ST" else FINE_TUNE_ALL)
    return TransferRun(src, target, policy, finetune_method(pt, finetune), seed)


def attacks(pt: Pretraining) -> tuple[APGD, Square]:
    """RA-WB and RA-BB (Sec. 4.1): APGD-CE and Square, L2, at the training eps."""
    return (APGD(eps=pt.l2_eps, n_iter=pt.apgd_iters, n_restarts=pt.apgd_restarts),
            Square(eps=pt.l2_eps, n_queries=pt.square_queries))


def smoothing(pt: Pretraining, sigma: float | None = None) -> Smoothing:
    return Smoothing(sigma=pt.l2_eps if sigma is None else sigma, n0=pt.smoothing_n0, n=pt.smoothing_n,
                     alpha=pt.smoothing_alpha)


def record(profile: Profile) -> dict:
    """What a manifest records of notebook 04's measurement settings."""
    pt = _pt(profile)
    s = smoothing(pt)
    return {"eps_rule": f"L2 eps = sigma = {pt.l2_eps:g} in [0,1] pixels at every input size (profiles.L2_EPS)",
            "N0": s.n0, "N": s.n, "alpha": s.alpha, "sigma": s.sigma, "max_certifiable_radius": s.max_radius,
            "apgd_iters": pt.apgd_iters, "apgd_restarts": pt.apgd_restarts, "square_queries": pt.square_queries,
            "attack_images": pt.attack_images, "cert_images": pt.cert_images, "noise_images": pt.noise_images,
            "pretrain_epochs": pt.pretrain_epochs, "finetune_steps": pt.pt_finetune_steps, "seeds": list(pt.pt_seeds),
            "floor_seeds": list(pt.pt_floor_seeds)}


def setting(profile: Profile) -> str:
    pt = _pt(profile)
    s = smoothing(pt)
    return (f"{pt.pt_source.label} -> {len(pt.pt_targets)} targets, {(pt.pt_model or profile.model).name}, "
            f"L2 eps = sigma = {pt.l2_eps:g}, N={s.n} on {pt.cert_images} images, {len(pt.pt_seeds)} seed(s) "
            f"({profile.name})")


def target_label(t) -> str:
    """A target's name in tables: the DataSpec's label, with its training-set size when capped
    (Fashion-MNIST 5-9 at 50 and at 2,000 images are different targets)."""
    return t.label + (f" n={t.train_n}" if t.train_n is not None else "")


def targets(pt: Pretraining) -> list:
    """The targets whose data is on disk (a missing one is skipped with a line, as Table 4 pairs)."""
    out = []
    for t in pt.pt_targets:
        try:
            D.load(t.name, "train")
            out.append(t)
        except DatasetNotFound as e:
            print(f"skipped target {t.label}: {str(e).splitlines()[0]}")
    return out


def _images(run, n: int | None, runtime: Runtime):
    test = D.evenly_spaced(run.test_data(), n)
    return runtime.inputs(test.x.float().div(255).to(runtime.device)), test.y.to(runtime.device)


# --------------------------------------------------------------------------- steps (one per table)

def noise_table(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 2: the AT and CR sources' accuracy on x + N(0, sigma^2 I) (one seeded draw per image);
    ours beside: the ST source too (``noise_sources``) and larger sigmas (``noise_sigmas_ours``), to
    measure how much of the AT source's resistance comes from adversarial training at all."""
    pt, runtime = _pt(profile), runtime or Runtime()
    rows = []
    for seed in pt.pt_seeds:
        for name in pt.noise_sources:
            run = source_run(profile, name, seed)
            model = get_or_train(run, runtime, progress)
            if model is None:   # rtlkit.suite.plan's recording mode: nothing runs
                continue
            x, y = _images(run, pt.noise_images, runtime)
            clean = noisy_correct(model, x, y, 0.0, seed, autocast=runtime.autocast).mean()
            for sigma in tuple(pt.noise_sigmas) + tuple(s for s in pt.noise_sigmas_ours if s not in pt.noise_sigmas):
                acc = noisy_correct(model, x, y, sigma, seed, autocast=runtime.autocast).mean()
                rows.append(dict(pretraining=name, sigma=sigma, seed=seed, clean_acc=float(clean),
                                 robust_acc=float(acc), n_test=len(y), dataset=run.data.label,
                                 noise_l2=sigma * float(x[0].numel()) ** 0.5, paper_sigma=sigma in pt.noise_sigmas))
    return pd.DataFrame(rows)


def certified_sources(profile: Profile, runtime: Runtime | None = None, progress: bool = True,
                      grid: int = 41) -> pd.DataFrame:
    """Table 3: certified accuracy of the smoothed AT source (sigma = at_sigma) and CR source (sigma =
    eps) at the table's radii (``table3`` rows) and on a grid for the curve. A radius above
    sigma * Phi^-1(alpha^(1/N)) cannot be certified with N draws: ``certifiable`` is False there."""
    pt = _pt(profile)
    rows = []
    for seed in pt.pt_seeds:
        for name, sigma in (("AT", pt.at_sigma), ("CR", pt.l2_eps)):
            s = smoothing(pt, sigma)
            m = get_or_certify(source_run(profile, name, seed), s, pt.l2_eps, runtime, progress, test_n=pt.cert_images)
            rows += _curve_rows(m, s, pt.radii, grid, pretraining=name, seed=seed)
    return pd.DataFrame(rows)


def _curve_rows(m: dict, s: Smoothing, radii, grid: int, **keys) -> list[dict]:
    t = m["table"]
    top = max(max(radii), s.max_radius * 1.05)
    rs = sorted(set(float(r) for r in radii) | set(np.linspace(0, top, grid).round(4).tolist()))
    acc = certified_curve(t.label.to_numpy(), t.predict.to_numpy(), t.radius.to_numpy(), rs) if len(t) else \
        np.zeros(len(rs))
    return [dict(**keys, sigma=s.sigma, r=r, table3=r in radii, certifiable=r <= s.max_radius,
                 clean_acc=m["smoothed_acc"], robust_acc=float(a), acr=m["acr"], abstain=m["abstain"],
                 n_test=m["n_test"], N=s.n) for r, a in zip(rs, acc)]


def _empirical_row(profile, runtime, progress, pretraining: str, target, seed: int) -> dict:
    pt = _pt(profile)
    wb, bb = attacks(pt)
    m = get_or_evaluate(transfer_run(profile, pretraining, "AT", target, seed), [wb, bb], runtime, progress,
                        test_n=pt.attack_images)
    ra_wb, ra_bb = m[f"robust_acc[{wb.label}]"], m[f"robust_acc[{bb.label}]"]
    return dict(target=target_label(target), pretraining=pretraining, finetune="AT", seed=seed, sa=m["clean_acc"],
                ra_wb=ra_wb, ra_bb=ra_bb, clean_acc=m["clean_acc"], robust_acc=ra_wb, ra_min=m["robust_acc"],
                n_test=m["n_test"])


def _certified_row(profile, runtime, progress, pretraining: str, finetune: str, target, seed: int, run=None) -> dict:
    """SA, RA-CT and ACR of ``run`` (default: the fine-tune of ``pretraining`` by ``finetune``) smoothed at eps."""
    pt = _pt(profile)
    run = run or transfer_run(profile, pretraining, finetune, target, seed)
    m = get_or_certify(run, smoothing(pt), pt.l2_eps, runtime, progress, test_n=pt.cert_images)
    return dict(target=target_label(target), pretraining=pretraining, finetune=finetune, seed=seed, sigma=pt.l2_eps,
                sa=m["smoothed_acc"], ra_ct=m["certified_acc"], acr=m["acr"], abstain=m["abstain"],
                clean_acc=m["smoothed_acc"], robust_acc=m["certified_acc"], n_test=m["n_test"])


def _sigma_pair(profile, runtime, progress, run, row: dict) -> list[dict]:
    """``row`` (the model smoothed at eps) and the same model at sigma = 0: its base accuracy on the
    certified images (RA-CT = ACR = 0 by Eq. 2); the second row is left out while recording."""
    pt = _pt(profile)
    model = get_or_train(run, runtime, progress)
    if model is None:   # rtlkit.suite.plan's recording mode
        return [row]
    x, y = _images(run, pt.cert_images, runtime)
    base = float(noisy_correct(model, x, y, 0.0, row["seed"], autocast=runtime.autocast).mean())
    return [row, dict(row, sigma=0.0, sa=base, ra_ct=0.0, acr=0.0, abstain=0.0, clean_acc=base, robust_acc=0.0)]


FLOOR_CELLS = (("Table 4", "AT", "Random"), ("Table 5", "CR", "Random"))   # (table, arm a, arm b)


def floor_seeds(pt: Pretraining) -> tuple[int, ...]:
    """The seeds of the seed floor's cells: ``pt_seeds`` then ``pt_floor_seeds`` (in order, once each)."""
    return tuple(dict.fromkeys(tuple(pt.pt_seeds) + tuple(pt.pt_floor_seeds)))


def seed_floor_cells(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """(ours) The cells notebook 04's seed floor is measured on (``rtlkit.measure.stats.seed_floor``): on the
    first target, Table 4's AT against Random pre-training (AT fine-tuning, RA-WB) and Table 5's CR
    against Random (CR fine-tuning, RA-CT), each at every seed of :func:`floor_seeds`, each seed
    training its own sources. Seed-0 cells are Table 4's and 5's own (cached). Empty where fewer
    than 3 seeds are asked for (the floor then comes from elsewhere: the findings say where)."""
    pt = _pt(profile)
    ts, seeds = targets(pt), floor_seeds(pt)
    if not ts or len(seeds) < 3:
        return pd.DataFrame()
    rows = []
    for s in seeds:
        rows += [dict(_empirical_row(profile, runtime, progress, pre, ts[0], s), table="Table 4") for pre in ("AT", "Random")]
        rows += [dict(_certified_row(profile, runtime, progress, pre, "CR", ts[0], s), table="Table 5")
                 for pre in ("CR", "Random")]
    return pd.DataFrame(rows)


def empirical_transfer(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 4: Random / AT / SimCLR pre-training, whole network fine-tuned by AT; SA, RA-WB
    (APGD-CE), RA-BB (Square), each attack's own column (``ra_min``: an example must survive both)."""
    pt = _pt(profile)
    return pd.DataFrame([_empirical_row(profile, runtime, progress, pre, t, s)
                         for t in targets(pt) for pre in ("Random", "AT", "SimCLR") for s in pt.pt_seeds])


def robust_train_gap(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Does robust fine-tuning over-fit a scarce target? For every Table 4 model (Random / AT /
    SimCLR pre-training, the whole network fine-tuned by AT): RA-WB (the same APGD-CE) on the
    training images it was fine-tuned on (a class-balanced ``attack_images`` of them, all where
    there are fewer) beside RA-WB on its test images (Table 4's cached evaluation). ``gap_ra_wb``,
    train minus test, is the robust generalisation gap: a model that memorised its few images
    robustly, and nothing beyond them, has a large one."""
    pt = _pt(profile)
    wb, _ = attacks(pt)
    rows = []
    for t in targets(pt):
        for pre in ("Random", "AT", "SimCLR"):
            for s in pt.pt_seeds:
                test = _empirical_row(profile, runtime, progress, pre, t, s)
                m = get_or_evaluate(transfer_run(profile, pre, "AT", t, s), [wb], runtime, progress,
                                    test_n=pt.attack_images, split="train")
                rows.append(dict(target=target_label(t), pretraining=pre, finetune="AT", seed=s,
                                 train_sa=m["clean_acc"], train_ra_wb=m["robust_acc"], train_n=m["n_test"],
                                 sa=test["sa"], ra_wb=test["ra_wb"], n_test=test["n_test"],
                                 gap_ra_wb=m["robust_acc"] - test["ra_wb"]))
    return pd.DataFrame(rows)


def certified_transfer(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 5: Random / CR / SimCLR pre-training, whole network fine-tuned by CR; the smoothed
    classifier's SA, RA-CT (certified at R >= eps) and ACR."""
    pt = _pt(profile)
    return pd.DataFrame([_certified_row(profile, runtime, progress, pre, "CR", t, s)
                         for t in targets(pt) for pre in ("Random", "CR", "SimCLR") for s in pt.pt_seeds])


def certified_curves(profile: Profile, runtime: Runtime | None = None, progress: bool = True,
                     grid: int = 41) -> pd.DataFrame:
    """Certified accuracy against the radius for every Table 5 model (from the cached certificates)."""
    pt = _pt(profile)
    rows = []
    for t in targets(pt):
        for pre in ("Random", "CR", "SimCLR"):
            for seed in pt.pt_seeds:
                s = smoothing(pt)
                m = get_or_certify(transfer_run(profile, pre, "CR", t, seed), s, pt.l2_eps, runtime, progress,
                                   test_n=pt.cert_images)
                rows += _curve_rows(m, s, pt.radii, grid, target=target_label(t), pretraining=pre, seed=seed)
    return pd.DataFrame(rows)


def pretraining_ablation(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 6: is robust pre-training needed? AT / ST / SimCLR + AT fine-tuning (empirical) and
    CR / ST / SimCLR + CR fine-tuning (certified) on the Table 6 targets."""
    pt = _pt(profile)
    rows = []
    for t in _table6(pt):
        for s in pt.pt_seeds:
            rows += [dict(_empirical_row(profile, runtime, progress, pre, t, s), kind="empirical")
                     for pre in ("AT", "ST", "SimCLR")]
            rows += [dict(_certified_row(profile, runtime, progress, pre, "CR", t, s), kind="certified")
                     for pre in ("CR", "ST", "SimCLR")]
    return pd.DataFrame(rows)


def robust_finetuning_needed(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 7: the CR source with only its last layer fine-tuned by standard training, smoothed
    at sigma = eps and at sigma = 0 (the base classifier: RA-CT = ACR = 0 by Eq. 2, never certified)."""
    pt, runtime = _pt(profile), runtime or Runtime()
    rows = []
    for t in _table6(pt):
        for s in pt.pt_seeds:
            run = transfer_run(profile, "CR", "ST", t, s)
            row = dict(_certified_row(profile, runtime, progress, "CR", "ST", t, s, run), finetune="ST (last layer)")
            rows += _sigma_pair(profile, runtime, progress, run, row)
            # the same comparison with the last layer trained to convergence: a linear probe on the CR
            # source's cached clean features (methods.probes, App. A.2's schedule), so that an
            # under-trained classifier does not confound sigma = 0.5 against sigma = 0
            probe = probe_run(profile, t, s)
            row = dict(_certified_row(profile, runtime, progress, "CR", "ST", t, s, probe), finetune=PROBE)
            rows += _sigma_pair(profile, runtime, progress, probe, row)
    return pd.DataFrame(rows)


PROBE = "ST probe (last layer, converged)"


def probe_run(profile: Profile, target, seed: int = 0) -> HeadRun:
    """Table 7's last layer trained to convergence: a linear probe on the CR source's frozen
    features of the target's clean training images."""
    return HeadRun(source_run(profile, "CR", seed), target, ProbeHead(), ProbeTraining(), seed)


def _table6(pt: Pretraining) -> list:
    have = targets(pt)
    return [pt.pt_targets[i] for i in pt.table6_targets if pt.pt_targets[i] in have]


# --------------------------------------------------------------------------- analysis

METRICS = {"empirical": ("sa", "ra_wb", "ra_bb"), "certified": ("sa", "ra_ct", "acr")}
NAMES = {"sa": "SA", "ra_wb": "RA-WB", "ra_bb": "RA-BB", "ra_ct": "RA-CT", "acr": "ACR"}


def relative_change(df: pd.DataFrame, baseline: str | dict = "Random") -> pd.DataFrame:
    """Relative change in % of each metric against the ``baseline`` pre-training (a name, or one per
    fine-tuning: Table 6 compares with AT under AT fine-tuning, CR under CR) on the same target and
    fine-tuning (Tables 4-6's superscripts), means over seeds; a ``mean`` target row per method.
    ``clean_acc`` and ``robust_acc`` carry the pre-trained model's SA and RA-WB (or RA-CT)."""
    metrics = [m for m in NAMES if m in df.columns and df[m].notna().any()]
    g = df.groupby(["target", "finetune", "pretraining"], sort=False)[metrics + ["clean_acc", "robust_acc"]]
    g = g.mean().reset_index()
    out = []
    for (target, ft), part in g.groupby(["target", "finetune"], sort=False):
        name = baseline.get(ft) if isinstance(baseline, dict) else baseline
        base = part[part.pretraining == name]
        if base.empty:
            continue
        for _, r in part[part.pretraining != name].iterrows():
            row = dict(target=target, finetune=ft, pretraining=r.pretraining, baseline=name,
                       clean_acc=r.clean_acc, robust_acc=r.robust_acc)
            for m in metrics:
                b = base[m].iloc[0]
                row[m] = r[m]
                row[f"{m}_base"] = b
                row[f"d_{m}"] = 100 * (r[m] - b) / b if b > 0 else np.nan
            out.append(row)
    res = pd.DataFrame(out)
    if res.empty:
        return res
    cols = [c for c in res.columns if c.startswith("d_")] + ["clean_acc", "robust_acc"]
    means = res.groupby(["finetune", "pretraining", "baseline"], sort=False)[cols].mean()
    means = means.reset_index().assign(target="mean")
    return pd.concat([res, means], ignore_index=True)


def regressions(changes: pd.DataFrame, y: str, x: str = "d_sa") -> pd.DataFrame:
    """Figs. 2-3: per pre-training method, the OLS line of the relative change in ``y`` against the
    change in SA over targets (the mean row left out): slope, intercept, R^2 and n."""
    rows = []
    pts = changes[changes.target != "mean"]
    for pre, part in pts.groupby("pretraining", sort=False):
        p = part[[x, y]].dropna()
        n = len(p)
        if n >= 2 and p[x].var() > 0:
            slope, icept = np.polyfit(p[x], p[y], 1)
            r2 = float(np.corrcoef(p[x], p[y])[0, 1] ** 2) if p[y].var() > 0 else np.nan
        else:
            slope = icept = r2 = np.nan
        rows.append(dict(pretraining=pre, x=x, y=y, slope=float(slope), intercept=float(icept), r2=r2, n=n))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the paper's numbers

PAPER_SETTING = "paper: ImageNet -> 12 targets, ResNet-50, 224 px, L2 eps = sigma = 0.5 (Vaishnavi et al.)"
PAPER = {
    # Table 2: accuracy (%) under Gaussian noise of the ImageNet AT and CR classifiers
    "table2": {"AT": {0.001: 54.5, 0.01: 54.5, 0.1: 28.5, 0.5: 0.1},
               "CR": {0.001: 19.0, 0.01: 19.1, 0.1: 21.8, 0.5: 60.5}},
    # Table 3: certified accuracy (%) at L2 radius r (AT smoothed at sigma 0.01, CR at 0.5)
    "table3": {"AT": {0.0: 49.6, 0.5: 0.0, 1.0: 0.0, 1.5: 0.0}, "CR": {0.0: 54.8, 0.5: 50.1, 1.0: 43.8, 1.5: 33.5}},
    # Sec. 4.2-4.3: mean relative change (%) over 12 targets against random initialisation
    "mean_change": {("AT", "AT"): {"d_sa": 11.4, "d_ra_wb": 12.6, "d_ra_bb": 13.0},
                    ("AT", "SimCLR"): {"d_sa": 14.1, "d_ra_wb": 9.9, "d_ra_bb": 15.5},
                    ("CR", "CR"): {"d_sa": 7.1, "d_ra_ct": 7.5, "d_acr": 7.3},
                    ("CR", "SimCLR"): {"d_sa": 9.9, "d_ra_ct": 9.1, "d_acr": 6.9}},
    # Figs. 2-3: R^2 of the change in robustness against the change in SA (n = 12 targets)
    "r2": {("d_ra_wb", "AT"): 0.98, ("d_ra_wb", "SimCLR"): 0.94, ("d_ra_ct", "CR"): 0.92,
           ("d_ra_ct", "SimCLR"): 0.89, ("d_acr", "CR"): 0.94, ("d_acr", "SimCLR"): 0.86},
    # Table 4 (%): target, then SA / RA-WB / RA-BB after AT fine-tuning for Random, AT, SimCLR
    "table4": [("Food", (74.5, 62.3, 69.5), (81.6, 69.2, 77.7), (82.2, 68.6, 78.3)),
               ("CIFAR-100", (71.8, 62.5, 67.4), (80.1, 70.6, 75.1), (80.9, 70.3, 75.8)),
               ("CIFAR-10", (93.3, 88.8, 90.2), (95.8, 91.7, 94.0), (95.9, 91.2, 93.8)),
               ("Birdsnap", (65.2, 50.8, 59.7), (61.8, 48.3, 57.1), (60.4, 44.4, 55.5)),
               ("SUN397", (51.0, 41.7, 46.5), (55.5, 44.4, 52.0), (59.0, 44.3, 55.7)),
               ("Caltech-256", (61.4, 54.4, 58.0), (70.6, 62.5, 67.4), (76.8, 65.4, 73.4)),
               ("Cars", (88.3, 83.0, 86.9), (87.9, 82.2, 86.4), (85.8, 76.1, 83.9)),
               ("Aircraft", (76.4, 68.6, 71.6), (77.9, 69.6, 74.8), (76.3, 64.6, 74.3)),
               ("DTD", (54.3, 48.1, 52.4), (65.8, 59.7, 64.0), (72.6, 58.9, 70.3)),
               ("Pets", (73.2, 63.3, 70.0), (86.9, 78.4, 83.9), (88.6, 74.5, 85.8)),
               ("Caltech-101", (66.7, 61.5, 63.8), (88.5, 83.1, 86.1), (91.9, 83.6, 87.8)),
               ("Flowers", (78.0, 72.6, 75.2), (93.7, 90.1, 92.7), (93.7, 86.1, 92.4))],
    # Table 5: target, then SA % / RA-CT % / ACR after CR fine-tuning for Random, CR, SimCLR
    "table5": [("Food", (63.0, 53.9, 0.891), (63.2, 53.5, 0.874), (64.4, 57.6, 0.923)),
               ("CIFAR-100", (70.0, 62.8, 1.075), (70.8, 65.2, 1.101), (72.8, 65.0, 1.089)),
               ("CIFAR-10", (89.6, 86.0, 1.508), (93.4, 89.2, 1.601), (93.2, 90.4, 1.619)),
               ("Birdsnap", (42.0, 34.7, 0.538), (41.6, 32.4, 0.504), (41.0, 35.3, 0.541)),
               ("SUN397", (37.0, 32.5, 0.519), (42.3, 37.4, 0.586), (44.1, 36.2, 0.585)),
               ("Caltech-256", (54.0, 47.4, 0.835), (60.9, 57.3, 1.001), (65.4, 58.5, 1.000)),
               ("Cars", (81.9, 77.5, 1.358), (79.1, 73.9, 1.285), (77.7, 70.1, 1.158)),
               ("Aircraft", (70.1, 63.4, 1.065), (68.1, 60.9, 1.022), (69.0, 61.4, 0.991)),
               ("DTD", (44.9, 39.4, 0.699), (50.2, 45.3, 0.790), (55.5, 49.8, 0.849)),
               ("Pets", (66.7, 61.8, 1.068), (70.8, 64.5, 1.088), (75.2, 67.2, 1.089)),
               ("Caltech-101", (62.8, 58.3, 1.019), (78.6, 76.0, 1.339), (80.3, 73.7, 1.300)),
               ("Flowers", (75.2, 72.7, 1.306), (87.5, 82.0, 1.538), (84.6, 78.7, 1.407))],
    # Table 6 (%; ACR in L2 units)
    "table6": [("CIFAR-10", "empirical", "AT", 95.8, 91.7, 94.0), ("CIFAR-10", "empirical", "ST", 95.4, 91.2, 91.4),
               ("CIFAR-10", "empirical", "SimCLR", 95.9, 91.2, 93.8),
               ("CIFAR-100", "empirical", "AT", 80.1, 70.6, 75.1), ("CIFAR-100", "empirical", "ST", 78.5, 68.1, 73.5),
               ("CIFAR-100", "empirical", "SimCLR", 80.9, 70.3, 75.8),
               ("CIFAR-10", "certified", "CR", 93.4, 89.2, 1.601), ("CIFAR-10", "certified", "ST", 93.0, 88.6, 1.584),
               ("CIFAR-10", "certified", "SimCLR", 93.2, 90.4, 1.619),
               ("CIFAR-100", "certified", "CR", 70.8, 65.2, 1.101), ("CIFAR-100", "certified", "ST", 70.2, 60.6, 1.050),
               ("CIFAR-100", "certified", "SimCLR", 72.8, 65.0, 1.089)],
    # Table 7: CR source, last layer fine-tuned by ST; (target, sigma, SA %, RA-CT %, ACR)
    "table7": [("CIFAR-10", 0.5, 8.4, 5.4, 0.073), ("CIFAR-10", 0.0, 91.0, 0.0, 0.0),
               ("CIFAR-100", 0.5, 0.4, 0.4, 0.008), ("CIFAR-100", 0.0, 75.6, 0.0, 0.0)],
}


def paper_rows(table: str) -> pd.DataFrame:
    """The paper's rows of a table in our columns (fractions), ``source`` = paper."""
    rows = []
    if table == "table2":
        for pre, accs in PAPER["table2"].items():
            rows += [dict(pretraining=pre, sigma=s, robust_acc=a / 100) for s, a in accs.items()]
    elif table == "table3":
        for pre, accs in PAPER["table3"].items():
            rows += [dict(pretraining=pre, r=r, table3=True, sigma=0.01 if pre == "AT" else 0.5,
                          clean_acc=accs[0.0] / 100, robust_acc=a / 100) for r, a in accs.items()]
    elif table in ("table4", "table5"):
        ft, names, cols = ("AT", ("Random", "AT", "SimCLR"), ("sa", "ra_wb", "ra_bb")) if table == "table4" else \
            ("CR", ("Random", "CR", "SimCLR"), ("sa", "ra_ct", "acr"))
        for target, *by_method in PAPER[table]:
            for pre, vals in zip(names, by_method):
                row = {c: v / 100 if c != "acr" else v for c, v in zip(cols, vals)}
                rows.append(dict(target=target, pretraining=pre, finetune=ft, **row, clean_acc=row["sa"],
                                 robust_acc=row[cols[1]]))
    elif table == "table6":
        for target, kind, pre, sa, ra, third in PAPER["table6"]:
            rob = dict(ra_wb=ra / 100, ra_bb=third / 100) if kind == "empirical" else dict(ra_ct=ra / 100, acr=third)
            rows.append(dict(target=target, kind=kind, pretraining=pre, sa=sa / 100, clean_acc=sa / 100,
                             robust_acc=ra / 100, **rob))
    elif table == "table7":
        rows = [dict(target=t, pretraining="CR", finetune="ST (last layer)", sigma=s, sa=sa / 100, ra_ct=ra / 100,
                     acr=acr, clean_acc=sa / 100, robust_acc=ra / 100) for t, s, sa, ra, acr in PAPER["table7"]]
    else:
        raise ConfigError(f"no paper table {table!r}")
    return pd.DataFrame(rows).assign(source="paper", setting=PAPER_SETTING)


def with_paper(ours: pd.DataFrame, table: str, setting: str = "") -> pd.DataFrame:
    return pd.concat([ours.assign(source="rtlkit", setting=setting), paper_rows(table)], ignore_index=True)


def changes_with_paper(changes: pd.DataFrame, table: str, setting: str = "") -> pd.DataFrame:
    """Our relative changes (``source`` = rtlkit) and the paper's, computed the same way from its
    Table 4 or 5 (``source`` = paper): the CSV behind Figs. 2-3."""
    paper = relative_change(paper_rows(table)).assign(source="paper", setting=PAPER_SETTING)
    return pd.concat([changes.assign(source="rtlkit", setting=setting), paper], ignore_index=True)


def changes_vs_paper(changes: pd.DataFrame, fits: list[pd.DataFrame]) -> pd.DataFrame:
    """Our mean relative changes, R^2 and slopes beside the paper's (Secs. 4.2-4.3, Figs. 2-3); the
    paper's slope is fitted to its own Tables 4-5 by :func:`regressions`, which reproduces its R^2."""
    rows = []
    for (ft, pre), paper in PAPER["mean_change"].items():
        ours = changes[(changes.target == "mean") & (changes.finetune == ft) & (changes.pretraining == pre)]
        for k, v in paper.items():
            rows.append(dict(quantity=f"mean {NAMES[k[2:]]} change %", finetune=ft, pretraining=pre, paper=v,
                             rtlkit=float(ours[k].iloc[0]) if len(ours) and k in ours else np.nan))
    fit = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame(columns=["y", "pretraining"])
    paper_changes = {"AT": relative_change(paper_rows("table4")), "CR": relative_change(paper_rows("table5"))}
    for (y, pre), v in PAPER["r2"].items():
        f = fit[(fit.y == y) & (fit.pretraining == pre)]
        pc = paper_changes["AT" if y in ("d_ra_wb", "d_ra_bb") else "CR"]
        pf = regressions(pc, y).set_index("pretraining").loc[pre]
        rows.append(dict(quantity=f"R^2 of {NAMES[y[2:]]} change on SA change", pretraining=pre, paper=v,
                         rtlkit=float(f.r2.iloc[0]) if len(f) else np.nan,
                         slope=float(f.slope.iloc[0]) if len(f) else np.nan, n=int(f.n.iloc[0]) if len(f) else 0,
                         slope_paper=float(pf.slope), n_paper=int(pf.n)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plots

_COLOURS = {"Random": "tab:gray", "AT": "tab:red", "CR": "tab:purple", "SimCLR": "tab:green", "ST": "tab:blue"}


def plot_noise(t2: pd.DataFrame, title: str = ""):
    """Table 2: accuracy against the noise sigma (log axis), ours solid, the paper's dashed."""
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    for (src, pre), part in t2.groupby(["source", "pretraining"], sort=False):
        part = part.groupby("sigma").robust_acc.mean()
        ax.plot(part.index, part.values * 100, marker="o", ls="-" if src == "rtlkit" else "--",
                color=_COLOURS.get(pre), label=f"{pre} ({src})", alpha=1 if src == "rtlkit" else 0.6)
    ax.set_xscale("log")
    ax.set_xlabel("noise sigma (L2, [0,1] pixels)")
    ax.set_ylabel("accuracy on x + N(0, sigma^2 I) (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return plots.finish(fig, title)


def plot_certified(curves: pd.DataFrame, by: str | None = "target", title: str = ""):
    """Certified accuracy against the radius, one panel per ``by`` value (or one panel), one line
    per pre-training with its ACR, dots at Table 3's radii; radii above what N draws can certify
    at that sigma are drawn thick and faint."""
    ours = curves[curves.get("source", "rtlkit") == "rtlkit"] if "source" in curves else curves
    groups = list(ours.groupby(by, sort=False)) if by else [("", ours)]
    fig, axes = plots.plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, (name, part) in zip(axes[0], groups):
        marked = False
        for pre, c in part.groupby("pretraining", sort=False):
            c = c.groupby("r", sort=True).agg(acc=("robust_acc", "mean"), acr=("acr", "mean"), sigma=("sigma", "first"),
                                              ok=("certifiable", "all"), table3=("table3", "any"))
            colour = _COLOURS.get(pre)
            ax.plot(c.index, c.acc * 100, color=colour, label=f"{pre} (σ={c.sigma.iloc[0]:g}, ACR {c.acr.iloc[0]:.3f})")
            t3 = c[c.table3.astype(bool)]
            ax.scatter(t3.index, t3.acc * 100, color=colour, s=18, zorder=3)
            beyond = c[~c.ok.astype(bool)]
            if len(beyond):   # radii N draws cannot certify at this sigma: drawn thick and faint
                ax.plot(beyond.index, beyond.acc * 100, color=colour, lw=5, alpha=0.25,
                        label=None if marked else "beyond what N draws can certify")
                marked = True
        ax.set_xlabel("L2 radius r")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(str(name), fontsize=9)
        ax.legend(fontsize=7)
    return plots.finish(fig, title)


def plot_bars(df: pd.DataFrame, metrics: tuple[str, ...], title: str = "", by: str = "target"):
    """Grouped bars: one panel per metric, groups by ``by``, one bar per pre-training (mean over seeds)."""
    ours = df[df.source == "rtlkit"] if "source" in df else df
    n_groups = ours[by].nunique()
    fig, axes = plots.plt.subplots(1, len(metrics), figsize=(max(4.6, 1.25 * n_groups) * len(metrics), 3.8),
                                   squeeze=False)
    order = [p for p in PRETRAININGS if p in set(ours.pretraining)]
    order += [p for p in dict.fromkeys(ours.pretraining) if p not in order]
    groups = list(dict.fromkeys(ours[by]))
    width = 0.8 / max(1, len(order))
    for ax, m in zip(axes[0], metrics):
        g = ours.groupby([by, "pretraining"], sort=False)[m].mean()
        scale = 1 if m == "acr" else 100
        for i, pre in enumerate(order):
            vals = [g.get((t, pre), np.nan) * scale for t in groups]
            ax.bar(np.arange(len(groups)) + (i - (len(order) - 1) / 2) * width, vals, width,
                   color=_COLOURS.get(pre), label=pre)
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels([str(g).replace(" ", "\n") for g in groups], fontsize=7)   # wrapped, never overlapping
        ax.set_ylabel(NAMES[m] + (" (L2)" if m == "acr" else " (%)"))
        if m != "acr":
            ax.set_ylim(0, 100)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))   # beside the bars, never on them
    return plots.finish(fig, title)


def plot_seed_floor(t: pd.DataFrame, title: str = ""):
    """The seed floor's cells: each arm's robust accuracy at every seed (one panel per table), so the
    spread of the paired differences that the floor takes is seen."""
    tables = list(dict.fromkeys(t.table)) if len(t) else []
    fig, axes = plots.plt.subplots(1, max(1, len(tables)), figsize=(4.6 * max(1, len(tables)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], tables):
        part = t[t.table == name]
        for pre, arm in part.groupby("pretraining", sort=False):
            arm = arm.sort_values("seed")
            ax.plot(arm.seed, 100 * arm.robust_acc, "o-", color=_COLOURS.get(pre), label=f"{pre} pre-training")
        ax.set_xticks(sorted(part.seed.unique()))
        ax.set_xlabel("seed (sources and fine-tuning)")
        ax.set_ylabel(("RA-WB" if name == "Table 4" else "RA-CT") + " (%)")
        ax.set_title(f"{name}, {part.target.iloc[0]}", fontsize=9)
        ax.legend(fontsize=8)
    return plots.finish(fig, title)


def _regression_panel(ax, changes: pd.DataFrame, y: str, annotate: bool = True) -> None:
    pts = changes[changes.target != "mean"]
    fit = regressions(changes, y).set_index("pretraining")
    for pre, part in pts.groupby("pretraining", sort=False):
        p = part[["d_sa", y, "target"]].dropna()
        if p.empty:
            continue
        f = fit.loc[pre]
        ax.scatter(p.d_sa, p[y], color=_COLOURS.get(pre), label=f"{pre}: R²={f.r2:.2f}, slope {f.slope:.2f}, n={int(f.n)}")
        if annotate:
            for _, r in p.iterrows():
                ax.annotate(r.target, (r.d_sa, r[y]), fontsize=6, alpha=0.7, xytext=(3, 2), textcoords="offset points")
        if np.isfinite(f.slope):
            xs = np.linspace(p.d_sa.min(), p.d_sa.max(), 10)
            ax.plot(xs, f.slope * xs + f.intercept, color=_COLOURS.get(pre), alpha=0.6)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("improvement in SA (%)")
    ax.set_ylabel(f"improvement in {NAMES[y[2:]]} (%)")
    ax.legend(fontsize=7)


def plot_regressions(changes: pd.DataFrame, ys: tuple[str, ...], title: str = ""):
    """Figs. 2-3: relative change in robustness against relative change in SA, a point per target,
    an OLS line per pre-training method, R^2, slope and n in the legend."""
    fig, axes = plots.plt.subplots(1, len(ys), figsize=(5.2 * len(ys), 4.2), squeeze=False)
    for ax, y in zip(axes[0], ys):
        _regression_panel(ax, changes, y)
    return plots.finish(fig, title)


def plot_scarcity(changes: pd.DataFrame, title: str = "", gap: pd.DataFrame | None = None):
    """bench/pretraining_scarcity: Figs. 2-3 over many target sizes (AT fine-tuning: RA-WB; CR
    fine-tuning: RA-CT), the RA-WB and SA gains against the target's training-set size, and (with
    ``gap``, from :func:`robust_train_gap` with ``train_images``) the robust train-test gap."""
    fig, axes = plots.plt.subplots(1, 3 if gap is None else 4, figsize=(16 if gap is None else 21, 4.4))
    _regression_panel(axes[0], changes[changes.finetune == "AT"], "d_ra_wb", annotate=False)
    axes[0].set_title("AT fine-tuning", fontsize=9)
    _regression_panel(axes[1], changes[changes.finetune == "CR"], "d_ra_ct", annotate=False)
    axes[1].set_title("CR fine-tuning", fontsize=9)
    ax = axes[2]
    pts = changes[(changes.target != "mean") & (changes.finetune == "AT")]
    for pre, part in pts.groupby("pretraining", sort=False):
        ax.scatter(part.train_images, part.d_ra_wb, color=_COLOURS.get(pre), marker="o", label=f"{pre}: RA-WB gain")
        ax.scatter(part.train_images, part.d_sa, color=_COLOURS.get(pre), marker="x", label=f"{pre}: SA gain")
    ax.set_xscale("log")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("target training images")
    ax.set_ylabel("improvement over random init (%)")
    ax.set_title("AT fine-tuning, by target size", fontsize=9)
    ax.legend(fontsize=7)
    if gap is not None:
        ax = axes[3]
        for pre, part in gap.groupby("pretraining", sort=False):   # points, not lines: the targets are 3 datasets
            ax.scatter(part.train_images, 100 * part.gap_ra_wb, color=_COLOURS.get(pre), label=pre)
        ax.set_xscale("log")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("target training images")
        ax.set_ylabel("RA-WB: training minus test images (points)")
        seeds = gap.seed.nunique()
        ax.set_title(f"AT fine-tuning: robust generalisation gap ({seeds} seed{'s' if seeds > 1 else ''}, "
                     "no error bars)", fontsize=9)
        ax.legend(fontsize=7)
    return plots.finish(fig, title)


# --------------------------------------------------------------------------- widget panel

PANEL_METRICS = {"SA": "sa", "RA-WB": "ra_wb", "RA-BB": "ra_bb", "RA-CT": "ra_ct", "ACR": "acr",
                 "certified curve": None}


def panel(empirical: pd.DataFrame, certified: pd.DataFrame, curves: pd.DataFrame, interactive: bool = True):
    """Pick a target, pre-training methods and a metric; re-plots the cached tables."""
    if not interactive:
        return None
    import ipywidgets as W
    both = pd.concat([empirical, certified], ignore_index=True)
    targets = list(dict.fromkeys(both.target))
    target = W.Dropdown(options=["every target"] + targets, description="target")
    methods = widgets.multi([p for p in PRETRAININGS if p in set(both.pretraining)], "method")
    metric = W.Dropdown(options=list(PANEL_METRICS), value="RA-WB", description="metric")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            picked = set(methods.value)
            key = PANEL_METRICS[metric.value]
            src = curves if key is None else (certified if key in ("ra_ct", "acr") else empirical)
            if metric.value == "SA":   # SA after AT fine-tuning and (smoothed) after CR fine-tuning
                src = both.assign(pretraining=both.pretraining, label=both.pretraining + " / " + both.finetune)
            rows = src[src.pretraining.isin(picked)]
            if target.value != "every target":
                rows = rows[rows.target == target.value]
            if key is not None:
                rows = rows[rows[key].notna()] if key in rows else rows.iloc[0:0]
            if rows.empty:
                widgets.nothing_selected("method that has this metric (RA-WB/RA-BB: Random, AT, SimCLR; "
                                         "RA-CT/ACR and curves: Random, CR, SimCLR)")
                return
            if key is None:
                plot_certified(rows, "target")
            else:
                rows = rows.assign(pretraining=rows["label"]) if "label" in rows else rows
                plot_bars(rows.assign(source="rtlkit"), (key,), "")
            plots.plt.show()

    for w in (target, methods, metric):
        w.observe(redraw, "value")
    redraw()
    return widgets.arrange([target, metric, methods], out)


# --------------------------------------------------------------------------- findings

def replicated(read) -> list[tuple]:
    """The notebook's replicated table for the seed floor and the A/A calibration
    (``rtlkit.suite.findings.floors``): :func:`seed_floor_cells`' rows, each seed training its own
    sources; the claim cells are Table 4's AT against Random (RA-WB) and Table 5's CR against Random
    (RA-CT) on the first target."""
    t = read("04_seed_floor")
    if t is None or not len(t):
        return []
    us = ours(t)
    specs = {f"{table} on {pick(us, table=table).target.iloc[0]}: {a} against {b} pre-training": (
        pick(us, table=table, pretraining=a), pick(us, table=table, pretraining=b), "robust_acc")
        for table, a, b in FLOOR_CELLS if len(pick(us, table=table))}
    return [("04_seed_floor", us, ["table", "target", "pretraining"], paired_cells(specs), "seed")]


def findings(read) -> list:
    """Vaishnavi et al. Tables 2-7 as findings, from notebook 04's CSVs. Tables 4-5 average the
    pre-training gain over our targets (the paper's are relative changes over its 12 targets, so
    their direction is the claim); Table 7 compares what the paper compares: the same model smoothed
    at sigma = 0.5 against sigma = 0."""
    out = []
    t = read("04_table2_noise")
    if t is not None:
        us, pp = ours(t), theirs(t)
        for pre, where in (("AT", "collapses under noise it was not trained for"), ("CR", "works only at its own sigma")):
            sig = sorted(pick(us, pretraining=pre).sigma.dropna().unique())
            paper_sig = sorted(pick(pp, pretraining=pre).sigma.dropna().unique())
            if not sig or not paper_sig:
                continue
            lo, hi = min(sig), max(s for s in sig if s in paper_sig) if set(sig) & set(paper_sig) else max(sig)
            pv = lambda s: (float(pick(pp, pretraining=pre, sigma=s).robust_acc.iloc[0])   # noqa: E731
                            if len(pick(pp, pretraining=pre, sigma=s)) else None)
            note = ""
            if pre == "AT":
                extra = [f"{name} {100 * float(pick(us, pretraining=name, sigma=s).robust_acc.mean()):.1f} % at {s:g}"
                         for name in ("AT", "ST") for s in sig if s > hi and len(pick(us, pretraining=name, sigma=s))]
                st = pick(us, pretraining="ST", sigma=hi)
                if len(st):
                    note = (f"The ST source, never trained on noise, keeps {100 * float(st.robust_acc.mean()):.1f} % at "
                            f"sigma = {hi:g} (noise L2 {float(st.noise_l2.iloc[0]):.0f} at this size)" +
                            (f"; beyond the paper's sigmas: {', '.join(extra)}" if extra else "") + ".")
            out.append(contrast("04", "Vaishnavi et al.", "Table 2", f"the {pre} source {where} (sigma {hi:g} against {lo:g})",
                                pick(us, pretraining=pre, sigma=hi), pick(us, pretraining=pre, sigma=lo),
                                paper_a=pv(hi), paper_b=pv(lo), direction=-1 if pre == "AT" else 1, note=note))
    t = read("04_table3_certified_sources")
    if t is not None:
        us = ours(t)
        at = pick(us, pretraining="AT")
        if len(at) and "certifiable" in at:
            far = at[(at.r > 0) & (at.table3.astype(str) == "True")]
            if len(far):
                r = float(far.r.min())
                out.append(contrast("04", "Vaishnavi et al.", "Table 3", f"the AT source smoothed at sigma = "
                                    f"{float(at.sigma.iloc[0]):g} certifies nothing at r = {r:g}", pick(far, r=r),
                                    pick(at, r=0.0), direction=-1, testable=bool(far.certifiable.astype(str).eq("True").any()),
                                    note=f"At sigma = {float(at.sigma.iloc[0]):g} and this N no radius above "
                                         f"{float(at[at.certifiable.astype(str) == 'True'].r.max()):g} can be certified, "
                                         f"whatever the model: the row cannot show the claim."))
    for name, where, pres, cols in (("04_table4_empirical", "Table 4", ("AT", "SimCLR"), (("clean_acc", "SA"), ("robust_acc", "RA-WB"))),
                                    ("04_table5_certified", "Table 5", ("CR", "SimCLR"), (("clean_acc", "SA"), ("robust_acc", "RA-CT")))):
        t = read(name)
        if t is None:
            continue
        us = ours(t)
        for pre in pres:
            for col, label in cols:
                parts = [contrast("04", "Vaishnavi et al.", where, "", pick(us, target=tg, pretraining=pre),
                                  pick(us, target=tg, pretraining="Random"), col, direction=1)
                         for tg in us.target.dropna().unique()
                         if len(pick(us, target=tg, pretraining=pre)) and len(pick(us, target=tg, pretraining="Random"))]
                if parts:
                    out.append(average("04", "Vaishnavi et al.", where, f"{pre} pre-training raises {label} over random "
                                       f"initialisation (mean over {len(parts)} targets)", parts, direction=1))
    for name, robust, col, label in (("04_table6_empirical", "AT", "robust_acc", "RA-WB"),
                                     ("04_table6_certified", "CR", "robust_acc", "RA-CT")):
        t = read(name)
        if t is None:
            continue
        us = ours(t)
        parts = [contrast("04", "Vaishnavi et al.", "Table 6", "", pick(us, target=tg, pretraining="ST"),
                          pick(us, target=tg, pretraining=robust), col, paper_a=0.0, paper_b=0.0)
                 for tg in us.target.dropna().unique()
                 if len(pick(us, target=tg, pretraining="ST")) and len(pick(us, target=tg, pretraining=robust))]
        if parts:
            out.append(average("04", "Vaishnavi et al.", "Table 6", f"ST pre-training does as well as {robust} "
                               f"pre-training ({label}, mean over {len(parts)} targets)", parts, paper_effect=0.0))
    t = read("04_scarcity")
    if t is not None and "train_ra_wb" in t:   # bench/pretraining_scarcity: ours, beyond the paper (issue 21, point 10)
        us = ours(t)
        at = us[(us.finetune == "AT") & us.train_ra_wb.notna()]
        scarce = at[pd.to_numeric(at.train_images, errors="coerce") <= SCARCE_IMAGES]
        for pre in ("AT", "SimCLR"):
            parts = [_gap_contrast(pick(scarce, target=tg, pretraining="Random"), pick(scarce, target=tg, pretraining=pre))
                     for tg in scarce.target.dropna().unique()
                     if len(pick(scarce, target=tg, pretraining="Random")) and len(pick(scarce, target=tg, pretraining=pre))]
            if parts:
                out.append(average("04", "Vaishnavi et al.", "scarcity (ours)",
                                   f"robust fine-tuning from random init over-fits a scarce target more than from {pre} "
                                   f"pre-training: a larger robust train-test gap (RA-WB, mean over {len(parts)} targets "
                                   f"of <= {SCARCE_IMAGES} images)", parts, direction=1,
                                   note="Our explanation of the scarcity sweep (docs/committed-run.md), not a claim of the paper: "
                                        "RA-WB on the fine-tuning images minus RA-WB on test images, Random's gap "
                                        f"minus {pre}'s, each side's train and test accuracies binomial (Agresti-Coull), "
                                        "independent.", scope="beyond"))
    t = read("04_table7_standard_finetuning")
    if t is not None:
        us, pp = ours(t), theirs(t)
        p5, p0 = (float(pick(pp, target="CIFAR-10", sigma=s).sa.iloc[0]) for s in (0.5, 0.0))
        for ft in (PROBE, "ST (last layer)"):
            for tg in pick(us, finetune=ft).target.dropna().unique():
                a, b = pick(us, finetune=ft, target=tg, sigma=0.5), pick(us, finetune=ft, target=tg, sigma=0.0)
                if len(a) and len(b):
                    out.append(contrast("04", "Vaishnavi et al.", "Table 7", f"smoothing at sigma = 0.5 loses the "
                                        f"accuracy of a CR source whose last layer is trained by ST ({ft}, {tg})",
                                        a, b, "sa", paper_a=p5, paper_b=p0, direction=-1))
    return out


SCARCE_IMAGES = 250   # the scarcity sweep's "scarce" targets: the six of 50 to 250 training images


def _gap_contrast(random: pd.DataFrame, pre: pd.DataFrame):
    """Random's robust train-test gap minus ``pre``'s on one target, with its SE: four accuracies
    (train and test, each side) combined as independent, each with mean_se's Agresti-Coull SE."""
    import math

    def gap(rows):
        tr, se_tr, n_tr, k = mean_se(rows.assign(n_test=rows.train_n), "train_ra_wb")
        te, se_te, n_te, _ = mean_se(rows, "ra_wb")
        return tr - te, se_tr ** 2 + se_te ** 2, min(n_tr, n_te), k, f"{100 * tr:.1f}/{100 * te:.1f}"
    (gr, vr, nr, kr, sr), (gp, vp, np_, kp, sp) = gap(random), gap(pre)
    return Finding("04", "Vaishnavi et al.", "scarcity (ours)", "", None, gr - gp, math.sqrt(vr + vp),
                   min(nr, np_), min(kr, kp), 1, ours=f"{random.target.iloc[0]}: {sr} vs {sp}")
