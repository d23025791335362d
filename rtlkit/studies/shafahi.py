"""Notebook 06 · Shafahi et al. (ICLR 2020), "Adversarially robust transfer learning": robust
deep features under a frozen extractor. Table 1 (robust and natural sources), Tables 2-3 (linear
probes on every pair), Fig. 3 (N per class: AT from scratch, AT fine-tuning, a probe on frozen
robust features), Fig. 4 (MLP heads), Fig. 5 (input gradients) and the LwF Tables 4-7: steps,
plots and the widget panel.

Probes and MLP heads are ``runs.HeadRun``s with ``methods.probes`` heads: they train on the
source's cached features (computed once per source and dataset), so a probe costs one feature
pass per image. Every robustness is the per-example minimum over PGD-20 with cross-entropy and
with the CW margin (``cartl.cartl_attacks``), each kept in the CSVs; LwF runs are notebook 03's
runs (cache hits where 03 ran them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from rtlkit.core import data as D
from rtlkit.studies import plots, widgets
from rtlkit.measure.attacks import PGD
from rtlkit.core.errors import ConfigError, DatasetNotFound, check
from rtlkit.measure.evaluate import input_gradient
from rtlkit.train.methods.probes import ProbeHead, ProbeTraining
from rtlkit.studies.profiles import SOURCE_KINDS, Profile, Shafahi
from rtlkit.runs.specs import DataSpec, HeadRun, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_evaluate, get_or_features, get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining
from rtlkit.train.transfer import TransferPolicy
from rtlkit.studies.cartl import method_run, cartl_attacks, measure
from rtlkit.measure.verdicts import contrast, ours, paired_cells, pick, samples, theirs
from rtlkit.studies.common import Study

STUDY = Study("06_shafahi", "06 Shafahi et al.",
              steps=("sources_table", "probe_table", "low_data", "mlp_depth", "gradients",
                                     "lwf_tables"))

__all__ = ["sources_table", "probe_table", "low_data", "mlp_depth", "gradients", "lwf_tables", "panel"]

ARMS = ("AT from scratch", "fine-tuned with AT", "transferred (probe)")


def _sh(profile: Profile) -> Shafahi:
    if profile.shafahi is None:
        raise ConfigError(f"profile {profile.name} has no notebook-06 settings (Profile.shafahi)")
    return profile.shafahi


def source_run(profile: Profile, kind: str, data: DataSpec | None = None) -> SourceRun:
    """The robust source (01-03's AT source on ``data``) or its natural twin: standard training
    with the same data, model and schedule."""
    check(kind in SOURCE_KINDS, f"unknown source kind {kind!r}; one of {', '.join(SOURCE_KINDS)}")
    at = profile.source_method
    method = at if kind == "robust" else \
        StandardTraining(**{f.name: getattr(at, f.name) for f in dataclasses.fields(StandardTraining)})
    return SourceRun(data or profile.source, profile.model, method, 0)


def probe_run(profile: Profile, kind: str, target: DataSpec, source: DataSpec | None = None, hidden: int = 0,
              bn: bool = False, seed: int = 0, epochs: int | None = None, width: int | None = None) -> HeadRun:
    """A probe (``hidden`` = 0) or MLP head on the frozen features of a robust or natural source
    (App. A.2's 50 epochs unless ``epochs`` says more)."""
    sh = _sh(profile)
    head = ProbeHead(hidden=hidden, width=width, bn=bn, dropout=sh.dropout if bn else 0.0)
    method = ProbeTraining() if epochs is None else ProbeTraining(epochs=epochs)
    return HeadRun(source_run(profile, kind, source), target, head, method, seed)


def probe_epochs(profile: Profile, target: DataSpec) -> int | None:
    """Epochs that give a probe at least ``probe_min_steps`` SGD steps (a convex probe trains to
    convergence: 50 epochs of one batch, at 10 images per class, are 50 steps); None: App. A.2's 50."""
    sh, bs = _sh(profile), ProbeTraining().batch_size
    n = len(target.train())
    per_epoch = n // bs if n >= bs else 1
    need = -(-sh.probe_min_steps // per_epoch)
    return need if need > ProbeTraining().epochs else None


def _evaluate(profile: Profile, run, runtime, progress) -> dict:
    m = get_or_evaluate(run, cartl_attacks(profile), runtime, progress, test_n=profile.cartl_test_n)
    ce, cw = (m[f"robust_acc[{a.label}]"] for a in cartl_attacks(profile))
    return {"clean_acc": m["clean_acc"], "robust_acc": m["robust_acc"], "robust_ce": ce, "robust_cw": cw,
            "n_test": m["n_test"]}


def _train_acc(run: HeadRun, runtime, progress) -> float:
    """A head's accuracy on its whole training set (eval mode), from the cached features."""
    model = get_or_train(run, runtime, progress)
    if model is None:
        return np.nan
    z, y = get_or_features(run.source, run.data, "train", runtime, progress)
    with torch.no_grad():
        return float((model.head.fc.eval()(z.to(runtime.device)).argmax(1).cpu() == y).float().mean())


def _train_record(run, runtime) -> dict:
    """A run's train.json, {} while recording or when unknown."""
    import json
    try:
        return json.loads((run_dir(run, runtime) / "train.json").read_text())
    except (OSError, ValueError):
        return {}


def _seconds(run, runtime) -> float:
    """The wall time a run's training took, NaN while recording or when unknown."""
    return float(_train_record(run, runtime).get("wall_seconds", np.nan))


def _pairs(profile: Profile) -> list:
    """(source DataSpec or None, target): the profile's own pair first, then its extra pairs."""
    out = []
    for src, tgt in ((None, profile.target),) + tuple(profile.pairs):
        try:
            (src or profile.source).train(), tgt.train()
            out.append((src, tgt))
        except DatasetNotFound as e:
            print(f"skipped {(src or profile.source).label} -> {tgt.label}: {str(e).splitlines()[0]}")
    return out


def _label(profile, src, tgt) -> str:
    return f"{(src or profile.source).label} -> {tgt.label}"


def setting(profile: Profile) -> str:
    return (f"{profile.source.label} -> {profile.target.label}, {profile.model.name}, eps = {profile.eps:g}, "
            f"PGD-{profile.eval_attacks[0].steps} CE and CW on {profile.cartl_test_n or 'all'} test images "
            f"({profile.name})")


def record(profile: Profile) -> dict:
    sh = _sh(profile)
    return {"eps": profile.eps, "attacks": [a.label for a in cartl_attacks(profile)], "test_n": profile.cartl_test_n,
            "probe": dataclasses.asdict(ProbeTraining()), "arm_steps": sh.arm_steps,
            "per_class": [n if n is not None else "all" for n in sh.per_class], "depths": list(sh.depths),
            "lwf_lr": profile.lwf_lr, "lwf_weight_decay": profile.lwf_weight_decay}


# --------------------------------------------------------------------------- Table 1, Tables 2-3

def sources_table(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 1: robust and natural sources on their own test sets (the whole source and the split
    half), clean / PGD-20 CE / CW."""
    rows = []
    for data in dict.fromkeys([profile.source] + [s for s, _ in profile.pairs if s is not None]):
        for kind in SOURCE_KINDS:
            m = _evaluate(profile, source_run(profile, kind, data), runtime, progress)
            rows.append(dict(source=kind, dataset=data.label, **m))
    return pd.DataFrame(rows)


def probe_table(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Tables 2-3: a linear probe on the frozen features of the robust and the natural source, on
    every pair: validation (test) clean / PGD-20 CE / CW, and the probe's train accuracy."""
    rows = []
    for src, tgt in _pairs(profile):
        for kind in SOURCE_KINDS:
            run = probe_run(profile, kind, tgt, src)
            rows.append(dict(pair=_label(profile, src, tgt), source=kind, train_acc=_train_acc(run, runtime, progress),
                             **_evaluate(profile, run, runtime, progress)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Fig. 3

def _n_label(n) -> str:
    return "all" if n is None else str(n)


def arm_run(profile: Profile, arm: str, n) -> SourceRun | TransferRun | HeadRun:
    """Fig. 3's three arms on ``n`` training images per class of the target (None: all), as Sec. 4.2
    lists them: (1) AT from scratch; (2) "fine-tuning using adversarial examples of the target task
    starting from the robust model, similar to Hendrycks et al. (2019)", who fine-tune every layer:
    ``k="all"``; each for ``arm_steps`` optimizer steps; (3) a probe on the frozen robust source's
    cached features (natural images, trained to convergence, 50 epochs or more). Arm 2's attack is
    App. A.2's PGD-3 with step 3 at bound 5, and 5 is the source's training eps (Sec. 4.1.1,
    App. A.3): PGD-3 at the training eps with step 0.6 eps. App. A.2's "freezing the feature
    extractor and fine-tuning on adversarial examples ... the last fully connected layer" reads as
    the last-layer variant of Sec. 4.1; Sec. 4.2 names Hendrycks et al.'s whole-network fine-tuning
    for Fig. 3, so arm 2 fine-tunes everything (an earlier reading of ours used eps 5/8, step 3/8)."""
    sh = _sh(profile)
    target = replace(profile.target, per_class=n)
    at = profile.source_method
    eps = profile.eps
    if arm == ARMS[0]:
        return SourceRun(target, profile.model, replace(at, steps=sh.arm_steps), 0)
    if arm == ARMS[1]:   # Sec. 4.2 (2): fine-tuning from the robust source on the target's PGD-3 examples
        attack = PGD(eps=eps, steps=3, step_size=0.6 * eps)   # App. A.2: step 3 at bound 5 = the training eps
        return TransferRun(source_run(profile, "robust"), target, TransferPolicy(k="all"),
                           replace(at, steps=sh.arm_steps, attack=attack), 0)
    if arm == ARMS[2]:
        return probe_run(profile, "robust", target, epochs=probe_epochs(profile, target))
    raise ConfigError(f"unknown arm {arm!r}; one of {', '.join(ARMS)}")


def low_data(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Fig. 3: clean, PGD-20 (min of CE and CW) and their mean for the three arms at each N per
    class, with each arm's training seconds (the paper's 3x cost claim)."""
    sh = _sh(profile)
    sh.check_data(profile.target)   # every N fits the target's classes, before any training
    rows = []
    for n in sh.per_class:
        for arm in ARMS:
            run = arm_run(profile, arm, n)
            m = _evaluate(profile, run, runtime, progress)
            rows.append(dict(arm=arm, per_class=_n_label(n), train_images=len(run.data.train()),
                             mean_acc=(m["clean_acc"] + m["robust_acc"]) / 2, train_seconds=_seconds(run, runtime),
                             probe_train_acc=_train_acc(run, runtime, progress) if isinstance(run, HeadRun) else np.nan,
                             **m))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Fig. 4

def mlp_depth(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Fig. 4: MLP heads with 0..k hidden layers as wide as the feature on each source, and the
    BN + dropout variant at ``bn_dropout_depth``: train and validation accuracy, PGD-20 CE and CW."""
    sh = _sh(profile)
    rows = []
    for kind in SOURCE_KINDS:
        heads = [(d, False, None) for d in sh.depths] + [(sh.bn_dropout_depth, True, None)] + \
            [(d, False, w) for d, w in sh.wide_heads]
        for hidden, bn, width in heads:
            run = probe_run(profile, kind, profile.target, hidden=hidden, bn=bn, width=width)
            m = _evaluate(profile, run, runtime, progress)
            rows.append(dict(source=kind, hidden=hidden, head=run.head.label, bn_dropout=bn, width=width or np.nan,
                             train_acc=_train_acc(run, runtime, progress), val_acc=m["clean_acc"], **m))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Fig. 5

GRADIENT_MODELS = (("natural", 0), ("robust", 0), ("robust", 1), ("robust", 2))


def gradients(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Fig. 5: the input gradient of the cross-entropy at the true label for ``grad_images`` target
    test images (evenly spaced), for the natural probe, the robust probe and robust MLP-1 / MLP-2;
    per image the share of |grad| on stroke pixels (x > ``stroke_threshold``) (ours). Column
    ``grad`` holds each gradient (H x W, channel-summed)."""
    sh = _sh(profile)
    sh.check_data(profile.target)
    runtime = runtime or Runtime()
    rows = []
    for kind, hidden in GRADIENT_MODELS:
        run = probe_run(profile, kind, profile.target, hidden=hidden)
        model = get_or_train(run, runtime, progress)
        if model is None:
            continue
        d = D.evenly_spaced(run.test_data(), sh.grad_images)
        x = d.x.float().div(255).to(runtime.device)
        g = input_gradient(model, runtime.inputs(x), d.y.to(runtime.device)).float().cpu()
        img = x.cpu().mean(1)
        for i in range(len(d)):
            a = g[i].abs().sum(0)
            stroke = img[i] > sh.stroke_threshold
            rows.append(dict(model=f"{kind} {run.head.label}", source=kind, hidden=hidden, image=i,
                             index=int(d.index[i]), label=int(d.y[i]),
                             stroke_share=float(a[stroke].sum() / a.sum().clamp_min(1e-30)),
                             stroke_pixels=float(stroke.float().mean()), grad_l1=float(a.sum()),
                             grad=g[i].sum(0).numpy(), image_pixels=img[i].numpy()))
    return pd.DataFrame(rows)


def gradient_summary(g: pd.DataFrame) -> pd.DataFrame:
    """Mean share of |grad| on stroke pixels per model, beside the share of pixels that are strokes."""
    return g.groupby("model", sort=False).agg(stroke_share=("stroke_share", "mean"),
                                              stroke_pixels=("stroke_pixels", "mean"), images=("image", "count")
                                              ).reset_index()


# --------------------------------------------------------------------------- Tables 4-7 (LwF)

LWF_FROZEN_BN = "LwF, BN affine frozen (ours)"   # the variant: gamma and beta the source's, not trained


def lwf_tables(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Tables 4-7: LwF (feature distillation from the robust source, end to end) per lambda_d:
    Table 4 on the profile's pair (03's grid and the extra lambdas, with both probes), Tables 5/7
    on natural data of the source's own domain (01's re-init subset, beside the source), Table 6
    on the split pair (with both probes)."""
    sh = _sh(profile)
    rows = []

    def lwf(table, lam, target, source=None, seed=0, bn_stats="reuse", bn_affine="train"):
        kw = dict(target=target, source=source, lam_d=lam, lwf_bn_stats=bn_stats, lwf_bn_affine=bn_affine)
        m = measure(profile, runtime, progress, "LwF", "all", seed, **kw)
        run, _ = method_run(profile, "LwF", "all", seed, **kw)
        last = _train_record(run, runtime).get("history", [])[-1:] or [{}]
        model = "LwF" if bn_stats == "reuse" else "LwF, BN statistics updated"
        rows.append(dict(table=table, model=model if bn_affine == "train" else LWF_FROZEN_BN,
                         lam_d=lam, target=target.label, seed=seed,
                         feature_distance=last[0].get("feature_distance", np.nan),
                         penalty_ce_ratio=last[0].get("penalty_ce_ratio", np.nan),
                         **{k: m[k] for k in ("clean_acc", "robust_acc", "robust_ce", "robust_cw", "n_test")}))

    def probes(table, target, source=None):
        for kind in SOURCE_KINDS:
            m = _evaluate(profile, probe_run(profile, kind, target, source), runtime, progress)
            rows.append(dict(table=table, model=f"{kind} probe", lam_d=np.nan, target=target.label, **m))

    for lam in dict.fromkeys(tuple(profile.lwf_lams) + tuple(sh.table4_extra_lams)):
        lwf("Table 4", lam, profile.target)
    for lam in sh.lwf_seed_lams:   # is LwF stable here? more fine-tuning seeds at these lambda_d
        for seed in sh.lwf_seeds:
            if seed != 0:
                lwf("Table 4", lam, profile.target, seed=seed)
    if sh.lwf_bn_update:   # distillation off, BN statistics free: what frozen BN alone does
        lwf("Table 4", 0.0, profile.target, bn_stats="update")
    for lam in sh.lwf_frozen_bn_lams:   # (ours) the variant: every BN parameter the source's
        for seed in sh.lwf_seeds if lam in sh.lwf_seed_lams else (0,):
            lwf("Table 4", lam, profile.target, seed=seed, bn_affine="freeze")
    probes("Table 4", profile.target)
    m = _evaluate(profile, source_run(profile, "robust"), runtime, progress)
    rows.append(dict(table="Tables 5/7", model="robust source", lam_d=np.nan, target=profile.source.label, **m))
    for lam in sh.same_lams:
        lwf("Tables 5/7", lam, profile.reinit_source)
    split = [(s, t) for s, t in profile.pairs if s is not None and s.name == t.name]
    for src, tgt in split[:1]:
        for lam in sh.split_lams:
            lwf("Table 6", lam, tgt, src)
        probes("Table 6", tgt, src)
    return pd.DataFrame(rows)


def split_vs_whole(sources: pd.DataFrame, lwf: pd.DataFrame, lam: float = 0.01) -> pd.DataFrame:
    """Shafahi App. D: the mean of the robust split-half source and LwF (lambda_d) on the other half,
    beside AT on the whole source (Table 1)."""
    t6 = lwf[(lwf.table == "Table 6") & (lwf.model == "LwF")]
    pick = t6.iloc[(t6.lam_d - lam).abs().argsort()[:1]] if len(t6) else t6
    half = sources[(sources.source == "robust")]
    if len(pick) == 0 or len(half) < 2:
        return pd.DataFrame()
    whole, split_src = half.iloc[0], half.iloc[1]
    return pd.DataFrame([
        dict(model=f"mean of the robust half and LwF lambda_d={float(pick.lam_d.iloc[0]):g}",
             clean_acc=(split_src.clean_acc + float(pick.clean_acc.iloc[0])) / 2,
             robust_acc=(split_src.robust_acc + float(pick.robust_acc.iloc[0])) / 2),
        dict(model=f"AT on the whole ({whole.dataset})", clean_acc=whole.clean_acc, robust_acc=whole.robust_acc)])


# --------------------------------------------------------------------------- the paper's numbers

def _lw(table, target, rows):
    """Rows (model, lambda_d, val %, PGD-20 %[, CW-20 %]); robust_acc is PGD-20 as printed, and the
    minimum over PGD-20 and CW-20 where both are (ours is the per-example minimum of the two)."""
    out = []
    for m, l, a, r, *cw in rows:
        d = dict(table=table, model=m, lam_d=l, target=target, clean_acc=a / 100, robust_ce=r / 100,
                 robust_acc=r / 100)
        if cw:
            d.update(robust_cw=cw[0] / 100, robust_acc=min(r, cw[0]) / 100)
        out.append(d)
    return out


def _probes(table, rows):
    """Tables 2-3: (pair, source kind, val %, PGD-20 %, CW-20 %)."""
    return [dict(table=table, pair=pair, source=kind, clean_acc=a / 100, robust_ce=p / 100, robust_cw=c / 100,
                 robust_acc=min(p, c) / 100) for pair, kind, a, p, c in rows]


NA = np.nan
PAPER = {   # the paper's CIFAR numbers as printed (Table 4's 1e-7 robustness is illegible in our copy)
    "table1": pd.DataFrame([dict(source=k, dataset=d, clean_acc=a / 100, robust_ce=p / 100, robust_cw=c / 100,
                                 robust_acc=min(p, c) / 100)
                            for d, k, a, p, c in (("CIFAR-10+", "natural", 95.01, 0.0, 0.0),
                                                  ("CIFAR-10+", "robust", 87.25, 45.84, 46.96),
                                                  ("CIFAR-100+", "natural", 78.84, 0.0, 0.0),
                                                  ("CIFAR-100+", "robust", 59.87, 22.76, 23.16))]),
    "lwf": pd.DataFrame(
        _lw("Table 4", "CIFAR-10", [("LwF", 1e-7, 89.07, NA), ("LwF", 0.001, 86.15, 4.70), ("LwF", 0.0025, 81.90, 15.42),
                                    ("LwF", 0.005, 79.35, 17.61), ("LwF", 0.01, 77.73, 17.55), ("LwF", 0.1, 73.39, 18.62),
                                    ("natural probe", NA, 83.05, 0.0), ("robust probe", NA, 72.05, 17.70)])
        + _lw("Tables 5/7", "CIFAR-100", [("LwF", 1e-5, 61.53, 21.83, 21.97), ("LwF", 5e-5, 61.71, 23.44, 22.94),
                                          ("LwF", 1e-4, 61.38, 23.95, 23.40), ("LwF", 0.001, 60.17, 24.31, 23.17),
                                          ("LwF", 0.01, 59.87, 24.10, 22.96), ("robust source", NA, 59.87, 22.76, 23.16)])
        + _lw("Tables 5/7", "CIFAR-10", [("LwF", 1e-5, 88.16, 45.31, 46.15), ("LwF", 5e-5, 88.08, 46.24, 47.06),
                                         ("LwF", 1e-4, 87.81, 46.54, 47.29), ("LwF", 5e-4, 87.44, 46.36, 47.16),
                                         ("LwF", 0.001, 87.31, 46.27, 47.06), ("LwF", 0.01, 87.27, 46.09, 46.92),
                                         ("LwF", 0.1, 87.49, 46.11, 46.84), ("robust source", NA, 87.25, 45.84, 46.96)])
        + _lw("Table 6", "CIFAR-100 (other half)", [("LwF", 0.001, 73.30, 1.92), ("LwF", 0.005, 66.96, 10.52),
                                                    ("LwF", 0.01, 63.32, 15.68), ("LwF", 0.1, 55.14, 17.26),
                                                    ("natural probe", NA, 71.44, 0.0), ("robust probe", NA, 58.48, 15.86)])),
    # Table 2 (eps = 8, frozen extractor, CIFAR) and Table 3 (ImageNet, eps = 5): linear probes
    "tables2_3": pd.DataFrame(_probes("Table 2", [
        ("CIFAR-100 -> CIFAR-10", "natural", 83.05, 0.00, 0.00), ("CIFAR-100 -> CIFAR-10", "robust", 72.05, 17.70, 17.43),
        ("CIFAR-100[1/2] -> CIFAR-100[other 1/2]", "natural", 71.44, 0.00, 0.00),
        ("CIFAR-100[1/2] -> CIFAR-100[other 1/2]", "robust", 58.48, 15.86, 15.30),
        ("CIFAR-100[1/2] -> CIFAR-100[same 1/2]", "natural", 80.20, 0.00, 0.00),
        ("CIFAR-100[1/2] -> CIFAR-100[same 1/2]", "robust", 64.96, 25.16, 25.56),
        ("CIFAR-10 -> CIFAR-100", "natural", 49.66, 0.00, 0.00), ("CIFAR-10 -> CIFAR-100", "robust", 41.59, 11.63, 9.68)])
        + _probes("Table 3", [
            ("ImageNet -> CIFAR-10+", "natural", 90.49, 0.01, 0.00), ("ImageNet -> CIFAR-10+", "robust", 88.33, 22.66, 26.01),
            ("ImageNet -> CIFAR-100+", "natural", 72.84, 0.05, 0.00),
            ("ImageNet -> CIFAR-100+", "robust", 68.88, 15.21, 18.34)])),
    # Sec. 4.2.1: PGD-20 accuracy (a fraction, as every accuracy here) of MLP heads on a *natural*
    # ImageNet source, by hidden layers
    "fig4_natural_pgd": {0: 0.0, 1: 0.0003, 2: 0.0009, 3: 0.0031, 5: 0.0661},
}


def with_paper(ours: pd.DataFrame, table: str, setting_: str) -> pd.DataFrame:
    """Our rows (source "rtlkit" in column ``origin``) and the paper's (``origin`` "paper")."""
    ours = ours.assign(origin="rtlkit", setting=setting_)
    if table not in PAPER or not isinstance(PAPER[table], pd.DataFrame):
        return ours
    return pd.concat([ours, PAPER[table].assign(origin="paper", setting="paper (CIFAR)")], ignore_index=True)


# --------------------------------------------------------------------------- plots

_KIND = {"robust": "tab:red", "natural": "tab:blue"}
_ARM = {ARMS[0]: "tab:gray", ARMS[1]: "tab:orange", ARMS[2]: "tab:red"}


def plot_sources_and_probes(t1: pd.DataFrame, t23: pd.DataFrame, title: str = ""):
    """Table 1 (sources on their own data) and Tables 2-3 (probes on each pair): clean and robust."""
    fig, axes = plots.plt.subplots(1, 3, figsize=(15, 4))
    long1 = pd.concat([t1.assign(m=t1.source + " clean", v=t1.clean_acc), t1.assign(m=t1.source + " PGD-20", v=t1.robust_acc)])
    plots.grouped_bars(axes[0], long1, "dataset", "m", "v")
    axes[0].set_title("Table 1: sources on their own test set", fontsize=9)
    for ax, metric, name in ((axes[1], "clean_acc", "clean"), (axes[2], "robust_acc", "PGD-20 (min CE, CW)")):
        plots.grouped_bars(ax, t23, "pair", "source", metric, colours=_KIND)
        ax.set_title(f"Tables 2-3: linear probes, {name}", fontsize=9)
    for ax in axes:
        ax.set_ylabel("%")
        ax.legend(fontsize=7)
    return plots.finish(fig, title)


def plot_low_data(f3: pd.DataFrame, title: str = ""):
    """Fig. 3: clean, PGD-20 and their mean per N per class, one bar per arm; seconds in the legend."""
    fig, axes = plots.plt.subplots(1, 3, figsize=(15, 4))
    secs = f3.groupby("arm", sort=False).train_seconds.mean()
    for ax, (metric, name) in zip(axes, (("clean_acc", "(a) clean"), ("robust_acc", "(b) PGD-20"),
                                         ("mean_acc", "(c) average"))):
        plots.grouped_bars(ax, f3, "per_class", "arm", metric, order=list(ARMS), colours=_ARM)
        ax.set_xlabel("training images per class")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("%")
    handles, labels = axes[-1].get_legend_handles_labels()
    axes[-1].legend(handles, [f"{a} ({secs.get(a, np.nan):.0f} s)" for a in labels], fontsize=7,
                    loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.finish(fig, title)


def plot_depth(f4: pd.DataFrame, title: str = ""):
    """Fig. 4: train / val accuracy and PGD-20 CE / CW against hidden layers, per source; the BN +
    dropout variant as separate markers."""
    fig, axes = plots.plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
    for ax, kind in zip(axes[0], SOURCE_KINDS):
        part = f4[f4.source == kind]
        plain, bndo = part[~part.bn_dropout.astype(bool)], part[part.bn_dropout.astype(bool)]
        for col, style, name in (("train_acc", "-o", "train"), ("val_acc", "-s", "val"), ("robust_ce", "--^", "PGD-20 CE"),
                                 ("robust_cw", ":v", "PGD-20 CW")):
            line, = ax.plot(plain.hidden, plain[col] * 100, style, label=name)
            ax.scatter(bndo.hidden, bndo[col] * 100, marker="*", s=120, color=line.get_color(),
                       label=f"{name}, BN + dropout" if len(bndo) else None)
        ax.set_xlabel("hidden layers")
        ax.set_ylabel("%")
        ax.set_ylim(0, 102)
        ax.set_title(f"{kind} source", fontsize=9)
        ax.legend(fontsize=7)
    return plots.finish(fig, title)


def plot_gradients(g: pd.DataFrame, percentile: float = 99.0, page: int = 0, per_page: int = 8, title: str = ""):
    """Fig. 5: the images and, below, each model's input gradient (|g| clipped at ``percentile``)."""
    images = sorted(g.image.unique())[page * per_page:(page + 1) * per_page]
    models = list(dict.fromkeys(g.model))
    fig, axes = plots.plt.subplots(1 + len(models), max(1, len(images)), figsize=(1.6 * max(1, len(images)),
                                   1.7 * (1 + len(models))), squeeze=False)
    for j, i in enumerate(images):
        first = g[g.image == i].iloc[0]
        axes[0][j].imshow(np.asarray(first.image_pixels), cmap="gray", vmin=0, vmax=1)
        axes[0][j].set_title(f"label {first.label}", fontsize=7)
        for r, m in enumerate(models, start=1):
            row = g[(g.image == i) & (g.model == m)].iloc[0]
            a = np.asarray(row.grad)
            lim = np.percentile(np.abs(a), percentile) or 1.0
            axes[r][j].imshow(np.clip(a, -lim, lim), cmap="seismic", vmin=-lim, vmax=lim)
            axes[r][j].set_title(f"{row.stroke_share:.0%} on strokes", fontsize=6)
    for r, m in enumerate(["image"] + models):
        axes[r][0].set_ylabel(m, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return plots.finish(fig, title + f" (|grad| clipped at its {percentile:g}th percentile)")


def plot_lwf(t: pd.DataFrame, title: str = ""):
    """Tables 4-7: clean and PGD-20 per lambda_d, one panel per table, probes / source as dashed lines."""
    tables = list(dict.fromkeys(t.table))
    fig, axes = plots.plt.subplots(1, len(tables), figsize=(5 * len(tables), 4), squeeze=False)
    for ax, name in zip(axes[0], tables):
        part = t[t.table == name]
        lw = part[part.model == "LwF"].sort_values("lam_d")
        ax.plot(lw.lam_d, lw.clean_acc * 100, "-o", color="tab:blue", label="LwF clean")
        ax.plot(lw.lam_d, lw.robust_acc * 100, "-o", color="tab:red", label="LwF PGD-20")
        for _, r in part[part.model != "LwF"].iterrows():
            style = ":" if "natural" in r.model else "--"
            ax.axhline(r.clean_acc * 100, color="tab:blue", ls=style, lw=1, label=f"{r.model} clean")
            ax.axhline(r.robust_acc * 100, color="tab:red", ls=style, lw=1, label=f"{r.model} PGD-20")
        ax.set_xscale("log")
        ax.set_xlabel("λ_d")
        ax.set_ylim(0, 100)
        ax.set_title(f"{name}: -> {lw.target.iloc[0] if len(lw) else ''}", fontsize=9)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("%")
    return plots.finish(fig, title)


# --------------------------------------------------------------------------- widget panel

def panel(t23: pd.DataFrame, f3: pd.DataFrame, f4: pd.DataFrame, grads: pd.DataFrame, interactive: bool = True):
    """Pick pairs, sources, N per class, the largest depth and a gradient page; re-plots from the
    cached tables: probes by pair, Fig. 3 at the chosen N, Fig. 4 up to the depth, and Fig. 5's page."""
    if not interactive:
        return None
    import ipywidgets as W
    pairs = widgets.multi(list(dict.fromkeys(t23.pair)), "pair")
    sources = widgets.multi(list(SOURCE_KINDS), "source")
    ns = widgets.multi(list(dict.fromkeys(f3.per_class)), "N/class")
    top = int(f4.hidden.max()) if len(f4) else 0
    depth = W.IntSlider(value=top, min=0, max=top, description="max depth")
    n_img = int(grads.image.nunique()) if len(grads) else 0
    page = W.IntSlider(value=0, min=0, max=max(0, (n_img - 1) // 4), description="gradient page")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            if not pairs.value or not sources.value or not ns.value:
                widgets.nothing_selected("pair, one source and one N per class")
                return
            probes = t23[t23.pair.isin(pairs.value) & t23.source.isin(sources.value)]
            low = f3[f3.per_class.isin(ns.value)]
            deep = f4[f4.source.isin(sources.value) & (f4.hidden <= depth.value)]
            fig, axes = plots.plt.subplots(1, 3, figsize=(15, 3.6))
            long = pd.concat([probes.assign(m=probes.source + " clean", v=probes.clean_acc),
                              probes.assign(m=probes.source + " PGD-20", v=probes.robust_acc)])
            plots.grouped_bars(axes[0], long, "pair", "m", "v")
            axes[0].set_title("linear probes", fontsize=9)
            plots.grouped_bars(axes[1], low.assign(m=low.arm), "per_class", "m", "mean_acc", order=list(ARMS),
                               colours=_ARM)
            axes[1].set_title("Fig. 3: mean of clean and PGD-20, by N per class", fontsize=9)
            for kind, part in deep.groupby("source", sort=False):
                part = part[~part.bn_dropout.astype(bool)]
                axes[2].plot(part.hidden, part.val_acc * 100, "-o", color=_KIND[kind], label=f"{kind} val")
                axes[2].plot(part.hidden, part.robust_acc * 100, "--^", color=_KIND[kind], label=f"{kind} PGD-20")
            axes[2].set_xlabel("hidden layers")
            axes[2].set_ylim(0, 100)
            axes[2].set_title("Fig. 4", fontsize=9)
            for ax in axes:
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=6)
            plots.plt.show()
            g = grads[grads.source.isin(sources.value)]
            if len(g):
                plot_gradients(g, page=page.value, per_page=4)
                plots.plt.show()

    for w in (pairs, sources, ns, depth, page):
        w.observe(redraw, "value")
    redraw()
    return widgets.arrange([depth, page, pairs, sources, ns], out)


# --------------------------------------------------------------------------- findings

def replicated(read) -> list[tuple]:
    """The notebook's replicated table for the seed floor and the A/A calibration
    (``rtlkit.suite.findings.floors``): Table 4's LwF cells fine-tuned at every seed of ``lwf_seeds``
    (``lwf_seed_lams``); the claim cells are lambda_d 0.1 against 0.001 (robust and clean accuracy,
    Table 4's two claims) and 0.1 against 1e-7."""
    t = read("06_tables4_7_lwf")
    if t is None:
        return []
    us = pick(ours(t), table="Table 4", model="LwF")
    specs = {f"Table 4, lambda_d {hi:g} against {lo:g}, {col}": (pick(us, lam_d=hi), pick(us, lam_d=lo), col)
             for hi, lo, col in ((0.1, 0.001, "robust_acc"), (0.1, 0.001, "clean_acc"), (0.1, 1e-7, "robust_acc"))}
    return [("06_tables4_7_lwf", us, ["table", "model", "lam_d", "target"], paired_cells(specs), "seed")]


def findings(read) -> list:
    """Shafahi et al. Tables 1-7 and Figs. 3-5 as findings, from notebook 06's CSVs; the paper's
    effects come from its rows there (CIFAR), a figure's claim is its direction."""
    out = []
    t = read("06_tables1_3_probes")
    if t is not None:
        us, pp = ours(t), theirs(t)
        t1, p1 = pick(us, table="Table 1"), pick(pp, table="Table 1")
        pv = lambda col, kind: float(pick(p1, source=kind).iloc[:1][col].iloc[0]) if len(pick(p1, source=kind)) else None   # noqa: E731
        for ds in t1.dataset.dropna().unique():
            a, b = pick(t1, dataset=ds, source="natural"), pick(t1, dataset=ds, source="robust")
            out += [contrast("06", "Shafahi et al.", "Table 1", f"a natural source is more accurate than a robust one ({ds})",
                             a, b, "clean_acc", paper_a=pv("clean_acc", "natural"), paper_b=pv("clean_acc", "robust"),
                             direction=1),
                    contrast("06", "Shafahi et al.", "Table 1", f"a natural source is not robust ({ds}, natural against robust)",
                             a, b, "robust_acc", paper_a=pv("robust_acc", "natural"), paper_b=pv("robust_acc", "robust"),
                             direction=-1)]
        t23 = pick(us, table="Tables 2-3")
        p2 = pick(pp, table="Table 2")

        def paper_mean(col, hi, lo):   # Table 2's effect, averaged over its four pairs
            d = [float(pick(p2, pair=q, source=hi)[col].iloc[0]) - float(pick(p2, pair=q, source=lo)[col].iloc[0])
                 for q in p2.pair.dropna().unique()] if len(p2) else []
            return (sum(d) / len(d), f"mean over its {len(d)} pairs") if d else (None, "")
        rob_pe, rob_txt = paper_mean("robust_acc", "robust", "natural")
        acc_pe, acc_txt = paper_mean("clean_acc", "natural", "robust")
        for pair in t23.pair.dropna().unique():
            a, b = pick(t23, pair=pair, source="robust"), pick(t23, pair=pair, source="natural")
            for f in (contrast("06", "Shafahi et al.", "Tables 2-3", f"a probe on robust features keeps robustness a "
                               f"natural source's probe lacks ({pair})", a, b, "robust_acc",
                               paper_a=rob_pe, paper_b=0.0 if rob_pe is not None else None, direction=1),
                      contrast("06", "Shafahi et al.", "Tables 2-3", f"a probe on natural features is more accurate ({pair})",
                               b, a, "clean_acc", paper_a=acc_pe, paper_b=0.0 if acc_pe is not None else None, direction=1)):
                txt = rob_txt if "robustness" in f.claim else acc_txt
                out.append(dataclasses.replace(f, paper_numbers=f"{txt}: {100 * f.paper_effect:+.1f}") if txt else f)
    t = read("06_fig3_low_data")
    if t is not None:
        us = ours(t)
        ns = list(dict.fromkeys(us.per_class.astype(str)))
        probe, at = ARMS[2], ARMS[1]
        if ns and all(len(pick(us, per_class=n, arm=a)) for n in (ns[0], ns[-1]) for a in (probe, at)):
            lo, hi = ns[0], ns[-1]
            side = lambda n, arm: pick(us, per_class=n, arm=arm)   # noqa: E731
            note = _probe_note(side(hi, probe), side(hi, at), hi)
            out += [contrast("06", "Shafahi et al.", "Fig. 3", f"with {lo} images per class the probe on robust features "
                             f"beats fine-tuning with AT (mean of clean and robust accuracy)",
                             side(lo, probe).assign(_m=lambda d: d.mean_acc), side(lo, at).assign(_m=lambda d: d.mean_acc),
                             "_m", direction=1, note=note),
                    contrast("06", "Shafahi et al.", "Fig. 3", f"with {hi} images per class fine-tuning with AT is more "
                             f"robust than the probe", side(hi, at), side(hi, probe), "robust_acc", direction=1)]
            for n in (lo, hi):
                out.append(contrast("06", "Shafahi et al.", "Fig. 3", f"the probe is more accurate on natural examples "
                                    f"than fine-tuning with AT ({n} images per class)", side(n, probe), side(n, at),
                                    "clean_acc", direction=1, note=note))
    t = read("06_fig4_mlp_depth")
    if t is not None:
        us = ours(t)
        plain = us[~us.bn_dropout.astype(str).eq("True")]
        if "width" in plain:
            plain = plain[plain.width.isna()]
        deep = plain.hidden.max()
        for kind in ("robust",):
            a, b = pick(plain, source=kind, hidden=deep), pick(plain, source=kind, hidden=0)
            if len(a) and len(b):
                out += [contrast("06", "Shafahi et al.", "Fig. 4", f"more hidden layers do not raise validation accuracy "
                                 f"({kind} source, {deep:g} against 0)", a, b, "clean_acc", paper_a=0.0, paper_b=0.0),
                        contrast("06", "Shafahi et al.", "Fig. 4", f"robustness comes from the extractor, not the head's "
                                 f"depth ({kind} source, {deep:g} against 0)", a, b, "robust_acc", paper_a=0.0, paper_b=0.0),
                        contrast("06", "Shafahi et al.", "Fig. 4", f"more hidden layers fit the training set better "
                                 f"({kind} source, {deep:g} against 0)", a.assign(n_test=a.n_test), b, "train_acc", direction=1)]
        wide = us[us.width.notna()] if "width" in us else us.iloc[:0]
        for r in wide[wide.source == "natural"].itertuples():
            rows = wide.loc[[r.Index]]
            out.append(contrast("06", "Shafahi et al.", "Fig. 4", f"CE-PGD over-reports the robustness of a deep natural-"
                                f"source MLP ({int(r.hidden)} hidden layers of {int(r.width)}: CE against CW)",
                                rows.assign(_c=rows.robust_ce), rows.assign(_c=rows.robust_cw), "_c", direction=1))
    t = read("06_fig5_gradients")
    if t is not None and "stroke_share" in t:
        g = ours(t)
        models = list(dict.fromkeys(g.model))
        rob = [m for m in models if m.startswith("robust")][:1]
        nat = [m for m in models if m.startswith("natural")][:1]
        if rob and nat and min((g.model == rob[0]).sum(), (g.model == nat[0]).sum()) >= 2:
            # the paper shows pictures; the share is our measure of them, on these two trained probes: beyond the
            # papers' claims, with no seed part (no accuracy floor bounds a share of the gradient)
            out.append(dataclasses.replace(
                samples("06", "Shafahi et al.", "Fig. 5", f"input gradients of the robust probe lie on the strokes "
                        f"more than the natural probe's (share of |grad| on stroke pixels, per image; ours)",
                        g[g.model == rob[0]].stroke_share, g[g.model == nat[0]].stroke_share, direction=1,
                        note="Our measure of the paper's pictures, on one robust and one natural probe: a property of "
                             "these two models (per-image SE), not a verdict on training."),
                scope="beyond", seed_source="none"))
    t = read("06_tables4_7_lwf")
    if t is not None:
        us, pp = ours(t), theirs(t)
        p4 = pick(pp, table="Table 4", model="LwF")
        pl = lambda lam, col: float(pick(p4, lam_d=lam)[col].iloc[0]) if len(pick(p4, lam_d=lam)) else None   # noqa: E731
        # the counted rows: the released code's LwF (BN gamma / beta trained, the source's statistics); beside
        # them, ours with every BN parameter frozen (a variant), and what BN alone does (the note)
        for model, scope, what in (("LwF", "paper", ""), (LWF_FROZEN_BN, "variant", " (variant: BN affine frozen too)")):
            t4 = pick(us, table="Table 4", model=model)
            lams = sorted(set(t4.lam_d.dropna()) & {0.1, 0.001})
            if len(lams) != 2:
                continue
            lo, hi = lams
            note = _lwf_note(pick(us, table="Table 4"), model)
            out += [contrast("06", "Shafahi et al.", "Table 4", f"LwF trades accuracy for robustness: more robust at "
                             f"lambda_d {hi:g} than {lo:g}{what}", pick(t4, lam_d=hi), pick(t4, lam_d=lo),
                             paper_a=pl(hi, "robust_acc"), paper_b=pl(lo, "robust_acc"), direction=1, note=note,
                             scope=scope),
                    contrast("06", "Shafahi et al.", "Table 4", f"LwF trades accuracy for robustness: more accurate at "
                             f"lambda_d {lo:g} than {hi:g}{what}", pick(t4, lam_d=lo), pick(t4, lam_d=hi), "clean_acc",
                             paper_a=pl(lo, "clean_acc"), paper_b=pl(hi, "clean_acc"), direction=1, scope=scope)]
        t5, p5 = pick(us, table="Tables 5/7"), pick(pp, table="Tables 5/7")
        src, psrc = pick(t5, model="robust source"), pick(p5, model="robust source")
        lw = pick(t5, model="LwF")
        if len(src) and len(lw):
            common = sorted(set(lw.lam_d.dropna()) & set(pick(p5, model="LwF").lam_d.dropna()))
            lam = common[0] if common else float(lw.lam_d.min())   # the paper's largest gain is at its smallest lambda_d
            a, pa = pick(lw, lam_d=lam), pick(p5, model="LwF", lam_d=lam)
            out += [contrast("06", "Shafahi et al.", "Tables 5/7", f"LwF on natural data of the source's domain raises "
                             f"validation accuracy (lambda_d {lam:g} against the robust source)", a, src, "clean_acc",
                             paper_a=float(pa.clean_acc.iloc[0]) if len(pa) else None,
                             paper_b=float(psrc.clean_acc.iloc[0]) if len(psrc) else None, direction=1),
                    contrast("06", "Shafahi et al.", "Tables 5/7", f"... and keeps the source's robustness (lambda_d {lam:g} "
                             "against the robust source)", a, src, "robust_acc", paper_a=0.0, paper_b=0.0,
                             note=_same_domain_note(lw, src))]
    return out


def _probe_note(probe: pd.DataFrame, at: pd.DataFrame, n) -> str:
    """Why the probe can lose here, measured: with every target image (``n`` per class) the linear
    probe on the frozen robust features fits only ``probe_train_acc`` of its own training images, a
    ceiling that fine-tuning the whole network with AT does not have."""
    if not len(probe) or "probe_train_acc" not in probe or probe.probe_train_acc.isna().all() or not len(at):
        return ""
    return (f"Measured: with {n} images per class the probe fits {100 * float(probe.probe_train_acc.mean()):.1f} % of its "
            f"own training images and {100 * float(probe.clean_acc.mean()):.1f} % of the test images, where fine-tuning "
            f"with AT reaches {100 * float(at.clean_acc.mean()):.1f} % on the test images: the frozen features (the "
            "64-d penultimate layer of a WRN-16-1 trained robustly on Fashion-MNIST) do not separate the target "
            "linearly, so the probe is capped below fine-tuning at every N. The paper's probes sit on 640-d features "
            "of a robust CIFAR-100 WRN-32-10 or an ImageNet ResNet-50, whose classes hold the target's.")


def _same_domain_note(lw: pd.DataFrame, src: pd.DataFrame) -> str:
    """Tables 5/7 measured: robustness and the last epoch's feature distance at every lambda_d of LwF
    on clean images of the source's own domain, beside the source's robustness."""
    if not len(lw) or not len(src) or "feature_distance" not in lw:
        return ""
    g = lw.groupby("lam_d")[["robust_acc", "feature_distance"]].mean()
    return (f"Measured: the robust source is {100 * float(src.robust_acc.mean()):.1f} % robust; LwF on clean images of "
            "its own domain keeps " + ", ".join(f"{100 * r.robust_acc:.1f} % at lambda_d {lam:g} (||z - z0|| "
                                                 f"{r.feature_distance:.2f})" for lam, r in g.iterrows()) +
            ". The penalty holds the clean features closer as lambda_d grows, yet robustness stays far below the "
            "source's at every lambda_d: holding the clean penultimate features does not hold the adversarial ones "
            "here, so distillation on clean images of the source's domain does not keep the robustness.")


def _lwf_note(t4: pd.DataFrame, model: str = "LwF") -> str:
    """What the LwF diagnostics measured on Table 4's runs of ``model``: the seeds' spread, the
    feature distance and the penalty's share of the loss at the last epoch; and, beside them, what
    BN alone does: lambda_d = 0 (no distillation) with the source's BN statistics against the same
    with the statistics following the target."""
    parts = []
    rows = t4[t4.model == model] if "model" in t4 else t4
    for lam, g in rows.groupby("lam_d"):
        if g.seed.nunique() > 1 if "seed" in g else False:
            parts.append(f"lambda_d {lam:g} over {g.seed.nunique()} seeds: robust {100 * g.robust_acc.mean():.1f} +- "
                         f"{100 * g.robust_acc.std(ddof=1):.1f} (sd)")
    if "feature_distance" in rows and rows.feature_distance.notna().any():
        d = rows.groupby("lam_d")[["feature_distance", "penalty_ce_ratio"]].mean()
        parts.append("last epoch ||z - z0|| (penalty / CE): " + ", ".join(
            f"{lam:g}: {r.feature_distance:.2f} ({r.penalty_ce_ratio:.2g})" for lam, r in d.iterrows()))
    zero = t4[(t4.model == "LwF") & (t4.lam_d == 0)] if "model" in t4 else t4.iloc[:0]
    free = t4[t4.model == "LwF, BN statistics updated"] if "model" in t4 else t4.iloc[:0]
    if len(zero) and len(free):
        parts.append(f"without distillation (lambda_d 0) LwF keeps {100 * zero.robust_acc.mean():.1f} % robust with the "
                     f"source's BN statistics and {100 * free.robust_acc.mean():.1f} % with the target's: the frozen "
                     "statistics, not the penalty, carry most of its robustness here")
    return "; ".join(parts) + ("." if parts else "")
