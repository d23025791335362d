"""Notebook 05 · Provably Robust Transfer (ICLR 2022 submission): Lipschitz heads on a frozen
extractor (Table 1), adversarial representations and reachable inputs (Table 2), and label,
logit and representation smoothing (Tables 3-4, the radius figure): steps, plots and the panel.

f is a cached source WRN's penultimate feature (``runs.tapped``), frozen; h is a ``HeadRun``
(``rtlkit.train.methods.lipschitz``) trained on f's cached features. One set of noisy features per
(source, data) (``runs.get_or_noisy_features``: N0 + S draws) serves all three smoothings and
every head: label smoothing is Cohen's CERTIFY on the head's votes (the first N0 draws select,
the other S estimate); logit and representation smoothing are median smoothing on the last S
draws (``rtlkit.measure.smoothing``). eps, sigma and r are in [0,1] pixels (``Provable.pv_scale``).
"""
from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pandas as pd
import torch

from rtlkit.studies import plots, widgets
from rtlkit.measure.attacks import PGD, attack_mode
from rtlkit.core.errors import ConfigError, DatasetNotFound
from rtlkit.train.methods.consistency import ClippedNoiseTraining, gaussian_training
from rtlkit.train.methods.fdm import FDMTraining
from rtlkit.train.methods.lipschitz import HeadSpec, HeadTraining, lipschitz_bound
from rtlkit.train.methods.search import InputSearch, input_search, representation_search
from rtlkit.train.methods.smoothadv import SmoothAdvTraining
from rtlkit.studies.profiles import PV_MODES, Profile, Provable
from rtlkit.runs.specs import DataSpec, HeadRun, NoisyDraws, SourceRun, shaped_for, tapped, test_images
from rtlkit.runs.cache import get_or_features, get_or_noisy_features, get_or_table, get_or_train
from rtlkit.core.runtime import Runtime
from rtlkit.measure.smoothing import Smoothing, certify_counts, median_certify_logits, median_certify_representation, median_radius_limit, sorted_draws
from rtlkit.train.loop import AdversarialTraining, StandardTraining
from rtlkit.measure.verdicts import average, contrast, ours, paired_cells, pick, theirs
from rtlkit.studies.common import Study

STUDY = Study("05_provable", "05 provably robust transfer",
              steps=("lipschitz_table", "search_table", "smoothing_table", "smoothing_pairs",
                                     "radius_curves"))

__all__ = ["lipschitz_table", "search_table", "smoothing_table", "smoothing_pairs", "radius_curves", "panel"]

CONSTRAINTS = ("none", "wn")
TABLE1_EXTRAS = ("wn T=1", "wn-l2")   # Table 1: the wn head without our loss temperature; App. A.1's L2 rows
SMOOTH_HEADS = ("none", "wn", "wn-l2")  # Tables 3-4: wn-l2 shows what the paper's bound of 1 would certify
SMOOTHINGS = ("label", "representation", "logit")
BOUND1 = "representation, bound 1 assumed"   # the certificate with lipschitz_bound(h) replaced by 1
SPLITS = ("source", "target")


def _pv(profile: Profile) -> Provable:
    if profile.provable is None:
        raise ConfigError(f"profile {profile.name} has no notebook-05 settings (Profile.provable)")
    return profile.provable


def _model(profile: Profile):
    return _pv(profile).pv_model or profile.model


def pair_source(profile: Profile, pair) -> DataSpec:
    return pair[0] or profile.source


def pair_label(profile: Profile, pair) -> str:
    return f"{pair_source(profile, pair).label} -> {pair[1].label}"


def mode_method(profile: Profile, mode: str) -> StandardTraining:
    """How f trains in each mode (Sec. 4-5, App. A.1). noise: N(0, I) clipped to L2 <= eps (Sec. 4;
    gauss, ours and not in the default grid: unclipped N(0, sigma^2 I)); adv: L2 PGD-10 at eps, or with
    ``shared_adv`` the profile's robust source method (01-03's, L-inf); adv-d: FDM (Chen et al.)
    with k = 1, lambda = 0.005 and adv's attack; adv-s: SmoothAdv with adv's steps and schedule."""
    pv = _pv(profile)
    if mode not in PV_MODES:
        raise ConfigError(f"unknown training mode {mode!r}; one of {', '.join(PV_MODES)}")
    if pv.shared_adv:
        adv = profile.source_method
    else:
        adv = AdversarialTraining(epochs=pv.normal_epochs, attack=PGD(eps=pv.eps, steps=10, step_size=0.25 * pv.eps,
                                                                      norm="l2"))
    sched = {f: getattr(adv, f) for f in ("epochs", "lr", "momentum", "weight_decay", "batch_size", "milestones",
                                         "gamma", "augment")}
    if mode == "normal":
        return StandardTraining(epochs=pv.normal_epochs)
    if mode == "noise":   # Sec. 4: N(0, I) clipped to L2 <= eps
        return ClippedNoiseTraining(epochs=pv.normal_epochs, eps=pv.eps)
    if mode == "gauss":   # (ours, the earlier "noise") unclipped N(0, sigma^2 I): Cohen et al.'s augmentation
        return gaussian_training(pv.sigma, epochs=pv.normal_epochs)
    if mode == "adv":
        return adv
    if mode == "adv-d":
        return FDMTraining(**sched, attack=adv.attack, k=1, lam=0.005)
    steps = adv.attack.steps
    return SmoothAdvTraining(**sched, sigma=pv.sigma, m=1,
                             attack=PGD(eps=pv.eps, steps=steps, step_size=2.5 * pv.eps / steps, norm="l2"))


def source_run(profile: Profile, mode: str, pair) -> SourceRun:
    return SourceRun(pair_source(profile, pair), _model(profile), mode_method(profile, mode), 0)


def head_spec(variant: str, layers: int) -> HeadSpec:
    if variant == "none":
        return HeadSpec(layers=layers, constraint="none")
    if variant in ("wn", "wn T=1"):
        return HeadSpec(layers=layers, constraint="wn")
    if variant == "wn-l2":
        return HeadSpec(layers=layers, constraint="wn", row_norm="l2")
    raise ConfigError(f"unknown head {variant!r}; one of {', '.join(CONSTRAINTS + TABLE1_EXTRAS)}")


def head_training(pv: Provable, variant: str) -> HeadTraining:
    """App. A.1's Adam training; wn heads train on CE(T h(z)) (``wn_temperature``). "wn T=1" and
    "wn-l2" train on plain CE, as App. A.1 (with L2 rows the logits are not capped, and a loss
    temperature would only shrink the margins that a bound of 1 would certify)."""
    temperature = pv.wn_temperature if variant == "wn" else None
    return HeadTraining(lr=pv.head_lr, max_epochs=pv.head_max_epochs, temperature=temperature)


def head_run(profile: Profile, mode: str, pair, split: str, variant: str, layers: int, seed: int,
             head_sigma: float | None = None) -> HeadRun:
    """h_S (``split="source"``: the source's own rows) or h_T (the target's) on a mode's frozen f;
    with ``head_sigma``, trained on the features of noisy copies x + sigma N(0, I)."""
    pv = _pv(profile)
    data = pair_source(profile, pair) if split == "source" else pair[1]
    return HeadRun(source_run(profile, mode, pair), data, head_spec(variant, layers), head_training(pv, variant), seed,
                   head_sigma, tap=pv.tap)


def smooth_heads(pv: Provable, mode: str, curves: bool = False) -> list[tuple[str, float | None]]:
    """The heads Tables 3-4 certify: none, wn, wn-l2 on clean features, and for adv-s also none and
    wn trained on noisy features (``head_sigma`` = sigma, as the smoothing draws them)."""
    out = [(v, None) for v in SMOOTH_HEADS]
    return out + ([("none", pv.sigma), ("wn", pv.sigma)] if mode == "adv-s" and not curves else [])


def _data(profile: Profile, pair, split: str) -> DataSpec:
    return pair_source(profile, pair) if split == "source" else pair[1]


def _present(profile: Profile, pairs) -> list:
    """The pairs whose data are on disk; a missing one is skipped with one line."""
    out = []
    for pair in pairs:
        try:
            pair_source(profile, pair).train(), pair[1].train()
            out.append(pair)
        except DatasetNotFound as e:
            print(f"skipped {pair_label(profile, pair)}: {str(e).splitlines()[0]}")
    return out


def _head(profile, runtime, progress, mode, pair, split, variant, layers, seed, head_sigma=None):
    """The trained head module (on the runtime's device) of a HeadRun; None while rtlkit.suite.plan records."""
    model = get_or_train(head_run(profile, mode, pair, split, variant, layers, seed, head_sigma), runtime, progress)
    return None if model is None else model.head.fc.eval()


def _modes(pv: Provable, want) -> list[str]:
    return [m for m in pv.pv_modes if m in want]


def setting(profile: Profile) -> str:
    pv = _pv(profile)
    main = pair_label(profile, pv.main_pair)
    return (f"{main}, {_model(profile).name}, sigma = r = {pv.sigma:g}, S = {pv.pv_samples}, alpha = {pv.pv_alpha:g}, "
            f"{pv.smooth_images} smoothed / {pv.search_images} searched images, {len(pv.head_seeds)} head seed(s)"
            + (f" ({len(table1_seeds(pv))} in Table 1)" if table1_seeds(pv) != pv.head_seeds else "") + f" ({profile.name})")


def record(profile: Profile) -> dict:
    """What a manifest records of notebook 05's settings."""
    pv = _pv(profile)
    dim = pv.feature_dim(_model(profile))
    return {"sigma": pv.sigma, "eps": pv.eps, "r": pv.r, "S": pv.pv_samples, "N0": pv.pv_n0, "alpha": pv.pv_alpha,
            "pixel_scale": pv.pv_scale, "feature_dim": dim, "tap": pv.tap,
            "largest_certifiable_r_representation": median_radius_limit(pv.sigma, pv.pv_alpha, dim, pv.pv_samples),
            "smooth_images": pv.smooth_images, "search_images": pv.search_images, "search_steps": pv.search_steps,
            "head_seeds": list(pv.head_seeds), "table1_head_seeds": list(table1_seeds(pv)), "head_lr": pv.head_lr, "head_max_epochs": pv.head_max_epochs,
            "wn_temperature": pv.wn_temperature, "adv": "profile source (L-inf)" if pv.shared_adv else "L2 PGD-10",
            "modes": list(pv.pv_modes)}


# --------------------------------------------------------------------------- Table 1

def table1_seeds(pv: Provable) -> tuple[int, ...]:
    """Table 1's head seeds: ``table1_head_seeds``, else ``head_seeds``."""
    return pv.head_seeds if pv.table1_head_seeds is None else pv.table1_head_seeds


def lipschitz_table(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 1: source and target accuracy of none / wn / "wn-l2" heads with 1 and 4 layers on frozen
    f (modes normal and adv), every pair ("wn-l2": App. A.1's L2 rows, the paper's wn, whose L-inf
    bound is reported: it is not 1); on the main pair also "wn T=1" (plain CE)."""
    pv, runtime = _pv(profile), runtime or Runtime()
    rows = []
    for pair in _present(profile, pv.table1_pairs):
        # App. A.1's L2-row heads (the paper's wn) on every pair; "wn T=1" on the main pair only
        variants = CONSTRAINTS + (TABLE1_EXTRAS if pair == pv.main_pair else ("wn-l2",))
        for mode in _modes(pv, ("normal", "adv")):
            src = source_run(profile, mode, pair)
            for split in SPLITS:
                data = _data(profile, pair, split)
                z, y = get_or_features(src, data, "test", runtime, progress, tap=pv.tap)
                z_tr, y_tr = get_or_features(src, data, "train", runtime, progress, tap=pv.tap)
                for variant in variants:
                    for layers in (1, 4):
                        for seed in table1_seeds(pv):
                            h = _head(profile, runtime, progress, mode, pair, split, variant, layers, seed)
                            if h is None:
                                continue
                            with torch.no_grad():
                                acc = float((h(z.to(runtime.device)).argmax(1).cpu() == y).float().mean())
                                train_acc = float((h(z_tr.to(runtime.device)).argmax(1).cpu() == y_tr).float().mean())
                            rows.append(dict(pair=pair_label(profile, pair), mode=mode, constraint=variant,
                                             layers=layers, split=split, seed=seed, acc=acc, train_acc=train_acc,
                                             lipschitz_bound=lipschitz_bound(h), n_test=len(y)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Table 2

def _search_rows(model, run: HeadRun, pv: Provable, runtime: Runtime) -> pd.DataFrame:
    """Per test image: the closed-form nearest adversarial representation z' of the 1-layer head,
    then the input search for an x'' with f(x'') near z' that h misclassifies."""
    d = shaped_for(run.source, test_images(run.data, pv.search_images, run.data.seed))
    x = runtime.inputs(d.x.float().div(255).to(runtime.device))
    y = d.y.to(runtime.device)
    head = model.head.fc
    feats = lambda inp: tapped(model, inp, pv.tap).float()   # noqa: E731
    with attack_mode(model), torch.no_grad():
        z = feats(x)
        correct = head(z).argmax(1) == y
    # in float64: the closed form's 1e-6 overshoot past the boundary is below float32's resolution
    # at these feature sizes, so a float32 check puts some z' back on the right side (p_z < 100 %)
    h64 = copy.deepcopy(head).double()
    lin = h64.linears[0]
    rep = representation_search(lin.weight.detach(), None if lin.bias is None else lin.bias.detach(), z.double(), y)
    with torch.no_grad():
        rep_found = (h64(rep["z"]).argmax(1) != y) & correct
    rep["z"] = rep["z"].float()
    out = pd.DataFrame({"index": d.index.numpy(), "label": d.y.numpy(), "correct": correct.cpu().numpy(),
                        "rep_found": rep_found.cpu().numpy(),
                        "rep_dist_l2": rep["distance"].float().cpu().numpy(),
                        "rep_dist_inf": (rep["z"] - z).abs().amax(1).cpu().numpy()})
    found = torch.zeros(len(x), dtype=torch.bool)
    x_inf = torch.full((len(x),), float("nan"))
    x_l2, zx_inf, zx_l2, step = x_inf.clone(), x_inf.clone(), x_inf.clone(), torch.full((len(x),), -1)
    idx = torch.nonzero(correct.cpu()).flatten()
    search = InputSearch(steps=pv.search_steps)
    for s in range(0, len(idx), 100):
        b = idx[s:s + 100]
        with attack_mode(model):
            res = input_search(feats, head, x[b], y[b], rep["z"][b].detach(), search)
        with torch.no_grad():
            zx = feats(res["x"])
        found[b] = res["success"].cpu()
        step[b] = res["step"].cpu()
        delta = (res["x"] - x[b]).flatten(1)
        x_inf[b], x_l2[b] = delta.abs().amax(1).cpu(), delta.norm(dim=1).cpu()
        zx_inf[b] = (zx - rep["z"][b]).abs().amax(1).cpu()
        zx_l2[b] = (zx - rep["z"][b]).norm(dim=1).cpu()
    return out.assign(input_found=found.numpy(), input_step=step.numpy(), x_dist_inf=x_inf.numpy(),
                      x_dist_l2=x_l2.numpy(), zx_dist_inf=zx_inf.numpy(), zx_dist_l2=zx_l2.numpy())


def _search_summary(t: pd.DataFrame, **keys) -> dict:
    c = t[t.correct.astype(bool)]
    rep = c[c.rep_found.astype(bool)]
    inp = c[c.input_found.astype(bool)]
    return dict(**keys, acc=float(t.correct.mean()), p_z=float(c.rep_found.mean()) if len(c) else np.nan,
                z_delta=float(rep.rep_dist_inf.mean()), z_delta_l2=float(rep.rep_dist_l2.mean()),
                p_x=float(c.input_found.mean()) if len(c) else np.nan, x_delta=float(inp.x_dist_inf.mean()),
                x_delta_l2=float(inp.x_dist_l2.mean()), zx_delta=float(inp.zx_dist_inf.mean()),
                zx_delta_l2=float(inp.zx_dist_l2.mean()), n_test=len(t), n_correct=len(c))


def search_table(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 2: 1-layer none / wn heads of normal, noise, adv, adv-d on the main pair's source and
    target: Acc, p_z and z_delta (representation search), p_x, x_delta and z_delta (input search),
    over the correct ones of a balanced ``search_images`` test images (L2 distances beside)."""
    pv, runtime = _pv(profile), runtime or Runtime()
    pair, rows = pv.main_pair, []
    search = InputSearch(steps=pv.search_steps)
    for mode in _modes(pv, ("normal", "noise", "adv", "adv-d")):
        for split in SPLITS:
            for variant in CONSTRAINTS:
                for seed in pv.head_seeds:
                    run = head_run(profile, mode, pair, split, variant, 1, seed)
                    key = {"search": search, "images": pv.search_images, "tap": pv.tap, "v": 2}   # 2: p_z in float64
                    n = min(pv.search_images, len(run.data.test()))
                    t = get_or_table(run, "search", key, lambda m, run=run: _search_rows(m, run, pv, runtime), runtime,
                                     progress, work=search, n=n)
                    if len(t):
                        rows.append(_search_summary(t, mode=mode, split=split, constraint=variant, seed=seed))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Tables 3-4, radius figure

def draws(pv: Provable) -> NoisyDraws:
    return NoisyDraws(sigma=pv.sigma, draws=pv.pv_n0 + pv.pv_samples, images=pv.smooth_images)


def _certify_head(h, bound: float, noisy: torch.Tensor, ordered: torch.Tensor, clean: torch.Tensor, y: torch.Tensor,
                  pv: Provable, radii) -> tuple[dict, list[dict]]:
    """A head's Table 3 row at r and its verified accuracy at each of ``radii`` by the three smoothings."""
    n0 = pv.pv_n0
    with torch.no_grad():
        base = h(clean).argmax(1)
        votes = h(noisy.flatten(0, 1)).view(noisy.shape[0], noisy.shape[1], -1)
        k = votes.shape[-1]
        pred = votes.argmax(-1)
        sel = torch.nn.functional.one_hot(pred[:n0], k).sum(0)
        counts = torch.nn.functional.one_hot(pred[n0:], k).sum(0)
        logits = votes[n0:].float()
        logits_sorted = sorted_draws(logits)
        m_logits = h(ordered[(len(ordered) - 1) // 2]).float()
    yy = y.numpy()
    label = certify_counts(sel, counts, Smoothing(sigma=pv.sigma, n0=n0, n=pv.pv_samples, alpha=pv.pv_alpha))
    label_ok = (label["predict"] == yy)

    def rep(r, bonferroni=True, b=bound):
        return median_certify_representation(h, ordered, b, r, pv.sigma, pv.pv_alpha, bonferroni, presorted=True,
                                             logits=m_logits)

    def logit(r):
        return median_certify_logits(logits_sorted, r, pv.sigma, pv.pv_alpha, presorted=True)
    r = pv.r
    rp, rp_nb, lg = rep(r), rep(r, False), logit(r)
    k1, k1_nb = rep(r, b=1.0), rep(r, False, b=1.0)   # as if h were 1-Lipschitz (the paper's WN with L2 rows)
    row = dict(a_b=float((base.cpu().numpy() == yy).mean()),
               label_a_v=float((label_ok & (label["radius"] >= r)).mean()),
               label_rad=float(label["radius"][label_ok].mean()) if label_ok.any() else 0.0,
               label_abstain=float((label["predict"] < 0).mean()),
               rep_a_m=float((rp["predict"] == yy).mean()), rep_a_v=float(((rp["predict"] == yy) & rp["verified"]).mean()),
               rep_a_v_no_bonferroni=float(((rp_nb["predict"] == yy) & rp_nb["verified"]).mean()),
               rep_a_v_bound1=float(((k1["predict"] == yy) & k1["verified"]).mean()),
               rep_a_v_bound1_no_bonferroni=float(((k1_nb["predict"] == yy) & k1_nb["verified"]).mean()),
               rep_delta=float(np.median(rp["delta"])), margin_needed=float(2 * np.median(rp["delta"]) * bound),
               median_margin=float(np.median(rp["margin"])),
               logit_a_m=float((lg["predict"] == yy).mean()),
               logit_a_v=float(((lg["predict"] == yy) & lg["verified"]).mean()),
               lipschitz_bound=bound, n_test=len(yy))
    curve = []
    for r_paper in radii:   # the curve's r is in the paper's units (pv_radii); certified at r x pv_scale pixels
        radius = r_paper * pv.pv_scale
        a, b, a1 = rep(radius), logit(radius), rep(radius, b=1.0)
        curve += [dict(r=r_paper, method="label", a_v=float((label_ok & (label["radius"] >= radius)).mean())),
                  dict(r=r_paper, method="representation", a_v=float(((a["predict"] == yy) & a["verified"]).mean())),
                  dict(r=r_paper, method="logit", a_v=float(((b["predict"] == yy) & b["verified"]).mean())),
                  dict(r=r_paper, method=BOUND1, a_v=float(((a1["predict"] == yy) & a1["verified"]).mean()))]
    return row, curve


def _smoothing(profile: Profile, runtime, progress, pairs, layer_set, keep_curves: bool = False):
    pv = _pv(profile)
    rows, curves = [], []
    for pair in _present(profile, pairs):
        for mode in pv.pv_modes:
            src = source_run(profile, mode, pair)
            for split in SPLITS:
                noisy, clean, y = get_or_noisy_features(src, _data(profile, pair, split), draws(pv), runtime, progress,
                                                        tap=pv.tap)
                heads = smooth_heads(pv, mode, keep_curves)
                if noisy.numel() == 0:
                    for variant, hs in heads:   # recording: the heads are work too
                        for layers in layer_set:
                            for seed in pv.head_seeds:
                                _head(profile, runtime, progress, mode, pair, split, variant, layers, seed, hs)
                    continue
                dev = runtime.device
                noisy, clean = noisy.to(dev), clean.to(dev)   # once per (source, data), for every head
                ordered = sorted_draws(noisy[pv.pv_n0:])
                for variant, hs in heads:
                    for layers in layer_set:
                        for seed in pv.head_seeds:
                            h = _head(profile, runtime, progress, mode, pair, split, variant, layers, seed, hs)
                            keys = dict(pair=pair_label(profile, pair), mode=mode, split=split, constraint=variant,
                                        layers=layers, seed=seed, head_sigma=hs if hs else np.nan)
                            # pv_radii are in the paper's units, like pv_r: x pv_scale in pixels (pv.r)
                            row, curve = _certify_head(h, lipschitz_bound(h), noisy, ordered, clean, y, pv,
                                                       pv.pv_radii if keep_curves else ())
                            rows.append({**keys, **row})
                            curves += [{**keys, **c} for c in curve]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def smoothing_table(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 3: every mode x 1 / 4 layers x none / wn, source and target of the main pair: A_B;
    label smoothing's A_V and radius; representation and logit smoothing's A_M and A_V at r
    (and representation A_V without the Bonferroni correction)."""
    pv = _pv(profile)
    return _smoothing(profile, runtime or Runtime(), progress, (pv.main_pair,), (1, 4))[0]


def smoothing_pairs(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Table 4: 4-layer heads on the distant pair(s), every mode, none / wn, source and target."""
    pv = _pv(profile)
    return _smoothing(profile, runtime or Runtime(), progress, pv.table4_pairs, (4,))[0]


def radius_curves(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """A_V against r (``pv_radii``) by the three smoothings, every mode, 4-layer heads, main pair."""
    pv = _pv(profile)
    return _smoothing(profile, runtime or Runtime(), progress, (pv.main_pair,), (4,), keep_curves=True)[1]


# --------------------------------------------------------------------------- the paper's numbers

# Table 1 (target pair names as the paper's): constraint, layers -> (source, target) accuracy %
PAPER_TABLE1 = {
    "SVHN -> MNIST": {("none", 1): (95.5, 96.0), ("wn", 1): (95.5, 90.2), ("none", 4): (96.0, 97.7), ("wn", 4): (95.1, 98.2)},
    "FMNIST -> KMNIST": {("none", 1): (92.8, 54.1), ("wn", 1): (92.7, 36.0), ("none", 4): (93.4, 78.8), ("wn", 4): (92.9, 77.2)},
    "CIFAR10 -> STL10": {("none", 1): (84.4, 64.1), ("wn", 1): (85.7, 62.7), ("none", 4): (83.5, 68.0), ("wn", 4): (86.2, 67.8)},
    "MNIST -> KMNIST": {("none", 1): (99.8, 71.0), ("wn", 1): (99.5, 50.6), ("none", 4): (99.6, 87.4), ("wn", 4): (99.6, 89.6)},
}

# Table 2, SVHN -> MNIST: split constraint mode acc p_z z_delta p_x x_delta zx_delta
_T2 = """source none normal 95.5 100 1.598 88.2 0.258 1.346
source none noise 94.3 100 1.543 66.7 0.374 1.243
source none adv 96.4 100 1.455 59.1 0.257 1.138
source none adv-d 96.3 100 0.375 92.9 0.540 0.440
source wn normal 95.5 100 0.046 42.0 0.082 2.034
source wn noise 93.6 100 0.036 19.1 0.274 1.538
source wn adv 96.2 100 0.059 21.0 0.102 1.641
source wn adv-d 96.4 100 0.011 22.4 0.461 0.791
target none normal 96.0 100 0.152 51.7 0.122 1.454
target none noise 95.7 100 0.152 33.4 0.265 0.732
target none adv 96.8 100 0.195 27.7 0.180 0.755
target none adv-d 95.2 100 0.084 40.3 0.504 0.278
target wn normal 90.2 100 0.207 45.7 0.127 1.692
target wn noise 90.8 100 0.034 20.4 0.247 0.921
target wn adv 91.0 100 0.141 29.6 0.152 1.241
target wn adv-d 78.9 100 0.050 36.3 0.221 0.679"""

# Tables 3 (SVHN -> MNIST, 1 and 4 layers) and 4 (FMNIST -> KMNIST, 4 layers): layers split constraint
# mode a_b label_a_v label_rad rep_a_m rep_a_v logit_a_m logit_a_v ("-": not reported for None heads)
_T3 = """1 source none normal 94.4 26.1 0.049 - - 69.4 26.1
1 source none noise 93.2 79.8 0.153 - - 93.5 79.8
1 source none adv 95.7 46.4 0.073 - - 76.9 46.4
1 source none adv-d 95.8 75.4 0.111 - - 84.7 75.4
1 source none adv-s 94.2 82.1 0.166 - - 94.6 82.1
1 source wn normal 96.5 19.6 0.055 67.3 56.9 67.3 19.6
1 source wn noise 92.9 66.0 0.152 93.3 91.0 93.3 66.0
1 source wn adv 96.7 28.5 0.079 75.7 67.5 75.7 28.5
1 source wn adv-d 96.7 57.9 0.096 83.0 80.4 83.0 57.9
1 source wn adv-s 92.2 72.5 0.165 92.2 90.6 92.2 72.5
1 target none normal 96.2 21.5 0.13 - - 83.9 21.5
1 target none noise 96.2 53.7 0.175 - - 93.4 53.7
1 target none adv 97.3 38.8 0.155 - - 92.6 38.8
1 target none adv-d 96.4 82.0 0.173 - - 91.7 82.0
1 target none adv-s 96.1 69.6 0.192 - - 95.4 69.6
1 target wn normal 89.6 5.3 0.116 83.1 63.8 83.1 5.3
1 target wn noise 91.3 26.6 0.168 89.1 82.2 89.1 26.6
1 target wn adv 89.9 11.1 0.135 83.0 68.6 83.0 11.1
1 target wn adv-d 77.5 51.6 0.148 74.3 69.9 74.3 51.6
1 target wn adv-s 90.1 36.5 0.179 89.6 83.8 89.6 36.5
4 source none normal 95.5 61.6 0.065 - - 70.0 61.6
4 source none noise 93.2 91.0 0.155 - - 93.0 91.0
4 source none adv 95.7 63.7 0.072 - - 80.0 63.7
4 source none adv-d 96.7 78.9 0.075 - - 79.9 78.9
4 source none adv-s 93.2 81.4 0.167 - - 93.6 81.4
4 source wn normal 95.4 59.7 0.054 69.3 67.2 69.3 59.7
4 source wn noise 93.0 89.8 0.153 92.9 92.5 92.9 89.8
4 source wn adv 95.8 59.2 0.062 66.2 64.9 66.2 59.2
4 source wn adv-d 96.8 78.5 0.096 79.8 79.4 79.8 78.5
4 source wn adv-s 92.3 90.9 0.165 93.7 92.9 93.7 90.9
4 target none normal 97.8 50.6 0.136 - - 88.1 50.6
4 target none noise 97.1 86.6 0.185 - - 96.2 86.6
4 target none adv 97.3 58.8 0.15 - - 87.7 58.8
4 target none adv-d 97.9 89.8 0.17 - - 91.0 89.8
4 target none adv-s 98.4 96.6 0.201 - - 98.5 96.6
4 target wn normal 98.1 64.8 0.12 80.8 77.8 80.8 64.8
4 target wn noise 97.7 90.8 0.18 96.4 95.5 96.4 90.8
4 target wn adv 98.5 71.8 0.147 89.7 88.1 89.7 71.8
4 target wn adv-d 98.6 85.8 0.168 87.9 87.5 87.9 85.8
4 target wn adv-s 97.4 95.7 0.199 97.4 97.4 97.4 95.7"""

_T4 = """4 source none normal 93.2 69.0 0.108 - - 77.5 69.0
4 source none noise 91.6 89.1 0.176 - - 91.6 89.1
4 source none adv 93.3 67.1 0.128 - - 82.6 67.1
4 source none adv-d 95.1 88.5 0.146 - - 88.6 88.5
4 source none adv-s 91.8 90.1 0.191 - - 92.2 90.1
4 source wn normal 92.7 62.8 0.092 73.0 70.8 73.0 62.8
4 source wn noise 92.7 91.2 0.181 93.0 92.2 93.0 91.2
4 source wn adv 93.2 78.4 0.126 83.9 82.5 83.9 78.4
4 source wn adv-d 94.1 90.2 0.168 90.3 90.2 90.3 90.2
4 source wn adv-s 91.8 91.0 0.19 91.8 91.4 91.8 91.0
4 target none normal 80.4 1.3 0.015 - - 34.8 1.3
4 target none noise 79.4 24.7 0.063 - - 67.8 24.7
4 target none adv 79.6 2.4 0.022 - - 44.5 2.4
4 target none adv-d 78.5 39.9 0.051 - - 49.5 39.9
4 target none adv-s 74.5 23.4 0.072 - - 64.4 23.4
4 target wn normal 77.1 0.1 0.016 31.7 17.2 31.7 0.1
4 target wn noise 83.6 25.3 0.065 68.0 61.5 68.0 25.3
4 target wn adv 77.4 2.5 0.039 51.2 35.8 51.2 2.5
4 target wn adv-d 86.4 56.6 0.087 66.6 62.9 66.6 56.6
4 target wn adv-s 80.7 46.0 0.112 78.9 74.4 78.9 46.0"""

_T4_MNIST = """4 source none normal 99.8 92.6 0.188 - - 93.6 92.6
4 source none noise 99.4 99.4 0.208 - - 99.5 99.4
4 source none adv 99.5 79.9 0.174 - - 82.2 79.9
4 source none adv-d 99.6 97.5 0.202 - - 97.9 97.5
4 source none adv-s 99.8 99.6 0.208 - - 99.7 99.6
4 source wn normal 99.6 88.3 0.193 89.8 89.2 89.8 88.3
4 source wn noise 99.7 99.6 0.208 99.7 99.6 99.7 99.6
4 source wn adv 99.9 97.6 0.196 98.3 98.2 98.3 97.6
4 source wn adv-d 99.4 98.5 0.202 99.0 99.0 99.0 98.5
4 source wn adv-s 100.0 99.9 0.209 99.9 99.9 99.9 99.9
4 target none normal 86.8 67.4 0.131 - - 77.6 67.4
4 target none noise 88.3 80.4 0.178 - - 88.4 80.4
4 target none adv 87.6 60.0 0.127 - - 71.7 60.0
4 target none adv-d 92.0 87.5 0.182 - - 90.3 87.5
4 target none adv-s 87.2 81.1 0.183 - - 87.5 81.1
4 target wn normal 88.0 65.5 0.143 80.7 78.3 80.7 65.5
4 target wn noise 91.2 82.7 0.187 90.8 89.5 90.8 82.7
4 target wn adv 87.4 63.1 0.143 75.8 73.5 75.8 63.1
4 target wn adv-d 92.3 89.6 0.191 91.3 91.1 91.3 89.6
4 target wn adv-s 88.6 80.8 0.187 88.0 87.3 88.0 80.8"""   # Table 4's first half (MNIST -> KMNIST)

_SMOOTH_COLS = ["layers", "split", "constraint", "mode", "a_b", "label_a_v", "label_rad", "rep_a_m", "rep_a_v",
                "logit_a_m", "logit_a_v"]


def _parse(text: str, cols: list[str]) -> pd.DataFrame:
    df = pd.read_csv(io.StringIO(text), sep=" ", names=cols, na_values="-")
    pct = [c for c in cols if c not in ("layers", "split", "constraint", "mode", "label_rad", "z_delta", "x_delta",
                                         "zx_delta")]
    df[pct] = df[pct] / 100
    return df


PAPER = {"table2": _parse(_T2, ["split", "constraint", "mode", "acc", "p_z", "z_delta", "p_x", "x_delta", "zx_delta"]),
         "table3": _parse(_T3, _SMOOTH_COLS),
         "table4": pd.concat([_parse(_T4_MNIST, _SMOOTH_COLS).assign(pair="MNIST -> KMNIST"),
                              _parse(_T4, _SMOOTH_COLS).assign(pair="FMNIST -> KMNIST")], ignore_index=True)}
PAPER_PAIRS = {"table1": "every pair (Table 1)", "table2": "SVHN -> MNIST", "table3": "SVHN -> MNIST",
               "table4": "MNIST / FMNIST -> KMNIST"}


def with_paper(ours: pd.DataFrame, table: str, setting_: str) -> pd.DataFrame:
    """Our rows (source "rtlkit", with the setting) and the paper's rows of ``table`` (source "paper",
    with the pair it measured), for the CSV beside a figure."""
    ours = ours.assign(source="rtlkit", setting=setting_)
    if table == "table1":
        paper = pd.DataFrame([dict(pair=p, constraint=c, layers=l, split=s, acc=v / 100, source="paper",
                                   setting="paper, Table 1")
                              for p, d in PAPER_TABLE1.items() for (c, l), accs in d.items()
                              for s, v in zip(SPLITS, accs)])
    else:
        paper = PAPER[table].assign(source="paper", setting=f"paper, {PAPER_PAIRS[table]}")
    return pd.concat([ours, paper], ignore_index=True)


# --------------------------------------------------------------------------- plots

_MODE_COLOURS = {"normal": "tab:blue", "noise": "tab:green", "gauss": "tab:olive", "adv": "tab:red", "adv-d": "tab:orange",
                 "adv-s": "tab:purple"}
_METHOD_STYLE = {"label": ("tab:gray", ":"), "logit": ("tab:blue", "--"), "representation": ("tab:red", "-"),
                 BOUND1: ("tab:pink", "-.")}


def plot_table1(t1: pd.DataFrame, title: str = ""):
    """Target and source accuracy per pair, one bar per head (constraint x layers), mean over modes and seeds."""
    t1 = t1.assign(head=t1.constraint + ", " + t1.layers.astype(str) + "-layer")
    fig, axes = plots.plt.subplots(1, 2, figsize=(13, 4), squeeze=False)
    for ax, split in zip(axes[0], SPLITS):
        plots.grouped_bars(ax, t1[t1.split == split], "pair", "head", "acc")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.set_title(f"h_{split[0].upper()} ({split} rows)", fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.finish(fig, title)


def plot_table2(t2: pd.DataFrame, title: str = ""):
    """p_z and p_x per mode, panels source / target x none / wn."""
    fig, axes = plots.plt.subplots(1, 4, figsize=(16, 3.8), squeeze=False)
    for ax, (split, c) in zip(axes[0], [(s, c) for s in SPLITS for c in CONSTRAINTS]):
        part = t2[(t2.split == split) & (t2.constraint == c)]
        long = pd.concat([part.assign(metric="p_z (rep. found)", v=part.p_z),
                          part.assign(metric="p_x (reachable)", v=part.p_x),
                          part.assign(metric="Acc", v=part.acc)])
        plots.grouped_bars(ax, long, "mode", "metric", "v")
        ax.set_title(f"{split}, {c}", fontsize=9)
        ax.set_ylabel("%")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.finish(fig, title)


def plot_smoothing(t: pd.DataFrame, title: str = ""):
    """A_V at r by the smoothings per mode (bars) and the base accuracy A_B (black ticks); one panel
    per (layers, rows, head). "bound 1 assumed" is representation smoothing with h's Lipschitz bound
    taken as 1, as the paper's WN (L2 rows) was: sound only for wn heads, where it is their bound."""
    t = t[t.head_sigma.isna()] if "head_sigma" in t else t   # heads on clean features (noisy-feature heads: CSV)
    heads = [c for c in SMOOTH_HEADS if c in set(t.constraint)]
    keys = [(l, s, c) for l in sorted(t.layers.unique()) for s in SPLITS for c in heads]
    ncol = len(SPLITS) * len(heads)
    nrow = len(t.layers.unique())
    fig, axes = plots.plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.6 * nrow), squeeze=False)
    cols = (("label", "label_a_v"), ("logit", "logit_a_v"), ("representation", "rep_a_v"), (BOUND1, "rep_a_v_bound1"))
    for ax, (l, s, c) in zip(axes.flat, keys):
        part = t[(t.layers == l) & (t.split == s) & (t.constraint == c)]
        long = pd.concat([part.assign(method=m, v=part[col]) for m, col in cols])
        plots.grouped_bars(ax, long, "mode", "method", "v", order=[m for m, _ in cols],
                           colours={m: _METHOD_STYLE[m][0] for m, _ in cols})
        base = part.groupby("mode", sort=False).a_b.mean() * 100
        ax.scatter(np.arange(len(base)), base.values, marker="_", s=300, color="k", zorder=3, label="A_B (base)")
        ax.set_title(f"{l}-layer, {s}, {c}", fontsize=9)
        ax.set_ylabel("verified accuracy A_V (%)")
    axes.flat[ncol - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.finish(fig, title)


def plot_radius(curves: pd.DataFrame, split: str = "target", heads=("wn", "wn-l2"), title: str = ""):
    """A_V against r by each smoothing, one panel per mode, one row per head (4-layer heads)."""
    heads = [h for h in ((heads,) if isinstance(heads, str) else heads) if h in set(curves.constraint)] or \
        list(dict.fromkeys(curves.constraint))
    modes = list(dict.fromkeys(curves["mode"]))
    fig, axes = plots.plt.subplots(len(heads), max(1, len(modes)), figsize=(3.6 * max(1, len(modes)), 3.4 * len(heads)),
                                   squeeze=False)
    for row, head in zip(axes, heads):
        part = curves[(curves.split == split) & (curves.constraint == head)]
        for ax, mode in zip(row, modes):
            for m in dict.fromkeys(part.method):
                c = part[(part["mode"] == mode) & (part.method == m)].groupby("r").a_v.mean()
                colour, ls = _METHOD_STYLE[m]
                ax.plot(c.index, c.values * 100, color=colour, ls=ls, label=m)
            ax.set_title(f"{mode} ({split}, {head})", fontsize=9)
            ax.set_xlabel("L2 radius r")
            ax.set_ylim(0, 100)
        row[0].set_ylabel("verified accuracy A_V (%)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.finish(fig, title)


# --------------------------------------------------------------------------- widget panel

def panel(t1: pd.DataFrame, t3: pd.DataFrame, curves: pd.DataFrame, interactive: bool = True):
    """Pick a pair, modes, head, depth, rows and smoothings; re-plots from the cached tables:
    left, A_V against r on the main pair (4-layer heads of the chosen kind); right, Table 1's
    accuracy of the chosen pair's heads at the chosen depth."""
    if not interactive:
        return None
    import ipywidgets as W
    pairs = list(dict.fromkeys(t1.pair)) if len(t1) else list(dict.fromkeys(t3.pair))
    pair = W.Dropdown(options=pairs, description="pair")
    modes = widgets.multi(list(dict.fromkeys(t3["mode"])), "mode")
    constraint = W.Dropdown(options=[c for c in SMOOTH_HEADS if c in set(curves.constraint)] or list(SMOOTH_HEADS),
                            value="wn", description="head")
    depth = W.Dropdown(options=[1, 4], value=4, description="layers")
    methods = widgets.multi(list(SMOOTHINGS) + [BOUND1], "smoothing")
    split = W.Dropdown(options=list(SPLITS), value="target", description="rows")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            picked, chosen = set(modes.value), set(methods.value)
            if not picked or not chosen:
                widgets.nothing_selected("mode and one smoothing")
                return
            c = curves[curves["mode"].isin(picked) & curves.method.isin(chosen) & (curves.constraint == constraint.value)
                       & (curves.split == split.value)]
            rows = t1[(t1.pair == pair.value) & t1["mode"].isin(picked) & (t1.layers == depth.value)
                      & (t1.split == split.value)]
            fig, axes = plots.plt.subplots(1, 2, figsize=(12, 3.8))
            for m in dict.fromkeys(c.method):
                part = c[c.method == m].groupby("r").a_v.mean()
                colour, ls = _METHOD_STYLE[m]
                axes[0].plot(part.index, part.values * 100, color=colour, ls=ls, label=m)
            axes[0].set_title(f"A_V against r: {constraint.value} heads, {split.value} rows, modes "
                              f"{', '.join(sorted(picked))}", fontsize=8)
            axes[0].set_xlabel("L2 radius r")
            axes[0].set_ylim(0, 100)
            if len(c):
                axes[0].legend(fontsize=7)
            if len(rows):
                plots.grouped_bars(axes[1], rows, "mode", "constraint", "acc")
                axes[1].legend(fontsize=7)
            axes[1].set_title(f"Table 1: {pair.value}, {depth.value}-layer heads, {split.value} rows", fontsize=8)
            axes[1].set_ylabel("accuracy (%)")
            plots.plt.show()

    for w in (pair, modes, constraint, depth, methods, split):
        w.observe(redraw, "value")
    redraw()
    return widgets.arrange([pair, constraint, depth, split, modes, methods], out)


# --------------------------------------------------------------------------- findings

def replicated(read) -> list[tuple]:
    """The notebook's replicated table for the seed floor and the A/A calibration
    (``rtlkit.suite.findings.floors``): Table 1's heads at every head seed (``table1_head_seeds``); the
    claim cells are its counted pairs on the first pair's target heads, per training mode (4 against
    1 layer, unconstrained and App. A.1's L2-row wn; unconstrained against wn at 1 layer)."""
    t = read("05_table1_lipschitz")
    if t is None:
        return []
    us = ours(t)
    us = us.assign(clean_acc=us.acc) if "acc" in us else us
    specs = {}
    for pair in us.pair.dropna().unique()[:1]:
        for m in us["mode"].dropna().unique():
            at = pick(us, pair=pair, mode=m, split="target")
            for (c1, l1), (c0, l0) in ((("none", 4), ("none", 1)), (("wn-l2", 4), ("wn-l2", 1)), (("none", 1), ("wn-l2", 1))):
                specs[f"{pair}, {m}: {c1} x {l1} against {c0} x {l0}"] = (
                    pick(at, constraint=c1, layers=l1), pick(at, constraint=c0, layers=l0), "acc")
    return [("05_table1_lipschitz", us, ["pair", "mode", "constraint", "layers", "split"], paired_cells(specs), "seed")]


def _fit_note(us: pd.DataFrame, pair, head_a: tuple, head_b: tuple) -> str:
    """How well each of two Table 1 target heads (constraint, layers) fits its own training features,
    beside how well it does on the test images (means over modes and seeds): where a constrained head
    loses on the test images, whether it already underfits."""
    if "train_acc" not in us:
        return ""
    parts = []
    for c, layers in (head_a, head_b):
        h = us[(us.pair == pair) & (us.constraint == c) & (us.layers == layers) & (us.split == "target")]
        if not len(h):
            return ""
        parts.append(f"{layers}-layer {c}: {100 * h.train_acc.mean():.1f} % of its training features, "
                     f"{100 * h.acc.mean():.1f} % of the test images")
    return ("Measured fit (mean over modes and seeds): " + "; ".join(parts) + ". A gap on the test images that "
            "the training fit shows too is a head that underfits within the profile's head budget "
            "(head_lr, head_max_epochs), not a constraint that generalises worse.")


def findings(read) -> list:
    """Provably Robust Transfer Tables 1-3 and Sec. 5 as findings, from notebook 05's CSVs. Table 1's
    paper effects are means over the paper's own pairs (its rows in the CSV); ours are per pair,
    averaged over the training modes; Tables 2-3 per mode on the main pair's target heads."""
    out = []
    t = read("05_table1_lipschitz")
    l2_bound = None   # the largest measured L-inf bound of a paper-literal (L2-row) wn head
    if t is not None:
        us, pp = ours(t), theirs(t)
        l2 = pick(us, constraint="wn-l2")
        l2_bound = float(l2.lipschitz_bound.max()) if len(l2) and "lipschitz_bound" in l2 else None
        # the paper's wn head (App. A.1) normalises its rows in L2 ("wn-l2" here); our "wn" head normalises them
        # in L1 and trains with a loss temperature: a variant, shown beside the paper's method, never counted
        claims = ((("none", 4), ("none", 1), "4-layer unconstrained heads are more accurate on the target than 1-layer"),
                  (("wn", 4), ("wn", 1), "4-layer wn heads are more accurate on the target than 1-layer wn heads"),
                  (("none", 1), ("wn", 1), "1-layer unconstrained heads are more accurate on the target than 1-layer wn"),
                  (("wn", 4), ("none", 4), "a 4-layer wn head is as accurate on the target as an unconstrained one"))
        for (c1, l1), (c0, l0), claim in claims:
            paper = [float(pick(pp, pair=p, constraint=c1, layers=l1, split="target").acc.iloc[0]) -
                     float(pick(pp, pair=p, constraint=c0, layers=l0, split="target").acc.iloc[0])
                     for p in pp.pair.dropna().unique()]
            pe = sum(paper) / len(paper) if paper else None
            wn = "wn" in (c1, c0)
            for pair in us.pair.dropna().unique():
                for ours_wn, scope, what in ((("wn-l2", "paper", "L2 rows, App. A.1"),
                                              ("wn", "variant", "variant: L1 rows and a loss temperature"))
                                             if wn else (("wn", "paper", ""),)):
                    a, b = (ours_wn if c == "wn" else c for c in (c1, c0))
                    parts = [contrast("05", "Provably Robust Transfer", "Table 1", "",
                                      pick(us, pair=pair, mode=m, constraint=a, layers=l1, split="target"),
                                      pick(us, pair=pair, mode=m, constraint=b, layers=l0, split="target"), "acc",
                                      direction=1)
                             for m in us["mode"].dropna().unique()
                             if len(pick(us, pair=pair, mode=m, constraint=a, layers=l1, split="target"))
                             and len(pick(us, pair=pair, mode=m, constraint=b, layers=l0, split="target"))]
                    if not parts:
                        continue
                    same = c1 == "wn" and c0 == "none"
                    out.append(average("05", "Provably Robust Transfer", "Table 1",
                                       f"{claim} ({pair}, mean over {len(parts)} modes{'; ' + what if what else ''})",
                                       parts, paper_effect=0.0 if same else pe, direction=1,
                                       paper_numbers="" if pe is None else f"mean over its {len(paper)} pairs: {100 * pe:+.1f}",
                                       scope=scope, note=_fit_note(us, pair, (a, l1), (b, l0)) if same else ""))
    t = read("05_table2_search")
    if t is not None:
        us, pp = ours(t), theirs(t)
        us = us.assign(n_test=us.n_correct) if "n_correct" in us else us   # p_x is a share of the correct images
        note = ("p_x comes from 100 input-search steps against the paper's 1,000, so it is a lower bound "
                "of the reachable share.")
        for split in ("source", "target"):
            for mode in us["mode"].dropna().unique():
                a, b = pick(us, split=split, mode=mode, constraint="wn"), pick(us, split=split, mode=mode, constraint="none")
                pa = pick(pp, split=split, mode=mode, constraint="wn")
                pb = pick(pp, split=split, mode=mode, constraint="none")
                if len(a) and len(b):
                    out.append(contrast("05", "Provably Robust Transfer", "Table 2", f"wn lowers the share of reachable "
                                        f"adversarial representations p_x ({mode} f, {split} head)", a, b, "p_x",
                                        paper_a=float(pa.p_x.iloc[0]) if len(pa) else None,
                                        paper_b=float(pb.p_x.iloc[0]) if len(pb) else None, direction=-1, note=note))
            a, b = pick(us, split=split, mode="adv", constraint="none"), pick(us, split=split, mode="normal", constraint="none")
            pa, pb = (pick(pp, split=split, mode=m, constraint="none") for m in ("adv", "normal"))
            if len(a) and len(b):
                out.append(contrast("05", "Provably Robust Transfer", "Table 2", f"adversarial training of f lowers p_x "
                                    f"({split} head, none)", a, b, "p_x", paper_a=float(pa.p_x.iloc[0]) if len(pa) else None,
                                    paper_b=float(pb.p_x.iloc[0]) if len(pb) else None, direction=-1, note=note))
    t = read("05_table3_smoothing")
    if t is not None:
        us, pp = ours(t), theirs(t)
        us = us[us.head_sigma.isna()] if "head_sigma" in us else us
        main = us.pair.dropna().unique()[:1]
        for pair in main:
            at = pick(us, pair=pair, split="target", constraint="wn", layers=4)
            for mode in at["mode"].dropna().unique():
                r = pick(at, mode=mode)
                p = pick(pp, mode=mode, split="target", constraint="wn", layers=4)
                pr = lambda col: float(p[col].iloc[0]) if len(p) and p[col].notna().any() else None   # noqa: E731
                out.append(_pair_contrast(r, "rep_a_v", "logit_a_v", "Table 3", f"representation smoothing verifies "
                                          f"more than logit smoothing ({mode} f, 4-layer wn target head, A_V at r = 0.1)",
                                          pr("rep_a_v"), pr("logit_a_v"),
                                          note="With the head's true L-inf bound; with the bound taken as 1 the same "
                                               f"heads verify {100 * float(r.rep_a_v_bound1.mean()):.1f} % (rep_a_v_bound1)."
                                               + ("" if l2_bound is None else
                                                  " The paper's Table 3 takes its wn heads (L2-normalised rows, App. A.1) "
                                                  "to be 1-Lipschitz in L-inf; that is false: the paper-literal heads' "
                                                  f"L-inf bound, computed layer by layer, reaches {l2_bound:,.0f} "
                                                  "(05_table1_lipschitz, "
                                                  "wn-l2), so a certificate with the bound 1 is unsound. Our wn heads "
                                                  "normalise rows in L1, whose L-inf bound is 1, and are certified "
                                                  "with it.")))
            for mode in at["mode"].dropna().unique():
                r = pick(at, mode=mode)
                p = pick(pp, mode=mode, split="target", constraint="wn", layers=4)
                pl, pg = (float(p[c].iloc[0]) if len(p) else None for c in ("label_a_v", "logit_a_v"))
                out.append(_pair_contrast(r, "label_a_v", "logit_a_v", "Table 3", f"label smoothing verifies as much as "
                                          f"logit smoothing ({mode} f, 4-layer wn target head)", pl, pg, equal=True,
                                          note=_label_logit_note(r)))
            every = pick(us, pair=pair)
            worst = None
            for with_, without, bound in (("rep_a_v", "rep_a_v_no_bonferroni", "its true bound"),
                                          ("rep_a_v_bound1", "rep_a_v_bound1_no_bonferroni", "the bound taken as 1")):
                if with_ in every and without in every and len(every):
                    gap = every[without] - every[with_]
                    i = gap.idxmax()
                    if worst is None or gap[i] > worst[0]:
                        worst = (gap[i], every.loc[[i]], with_, without, bound)
            if worst is not None:
                _, r, with_, without, bound = worst
                out.append(_pair_contrast(r, without, with_, "Table 3",
                                          "Bonferroni over the D features costs representation smoothing nothing "
                                          f"visible (the head where it costs most: {r['mode'].iloc[0]} f, "
                                          f"{r.split.iloc[0]}, {r.constraint.iloc[0]} {int(r.layers.iloc[0])}-layer, "
                                          f"{bound})", 0.0, 0.0, equal=True))
            none4 = pick(us, pair=pair, split="target", constraint="none", layers=4)
            pn = pick(pp, split="target", constraint="none", layers=4)
            for hi, lo in (("adv-s", "adv"), ("adv-s", "noise"), ("noise", "normal")):
                a, b = pick(none4, mode=hi), pick(none4, mode=lo)
                ph, plo = pick(pn, mode=hi), pick(pn, mode=lo)
                if len(a) and len(b):
                    out.append(contrast("05", "Provably Robust Transfer", "Sec. 5", f"{hi} f gives more verified label "
                                        f"smoothing than {lo} f (4-layer unconstrained target head)", a, b, "label_a_v",
                                        paper_a=float(ph.label_a_v.iloc[0]) if len(ph) else None,
                                        paper_b=float(plo.label_a_v.iloc[0]) if len(plo) else None, direction=1))
    return out


def _label_logit_note(r: pd.DataFrame) -> str:
    """What the two certificates of one head measured on the same images and draws: the share each
    verifies, the smoothed accuracy each keeps, and the label certificate's mean radius."""
    need = {"label_a_v", "logit_a_v", "logit_a_m", "label_rad", "label_abstain"}
    if not len(r) or not need <= set(r):
        return ""
    m = r[sorted(need)].mean()
    return (f"Measured on the same head, images and draws: label smoothing (Cohen's bound on the top label's "
            f"probability, one confidence level) verifies {100 * m.label_a_v:.1f} % at r = sigma, with a mean certified "
            f"radius of {m.label_rad:.3f} and {100 * m.label_abstain:.1f} % abstentions; logit smoothing (median bounds on "
            f"every logit at the Phi(+-r / sigma) percentiles, Bonferroni over the logits and both sides) verifies "
            f"{100 * m.logit_a_v:.1f} % while its smoothed prediction is right on {100 * m.logit_a_m:.1f} %. The logit "
            "certificate spends its confidence on every class's two bounds, the label one on a single probability: "
            "at S = 500 draws that makes the logit certificate the looser one here.")


def _pair_contrast(r, a: str, b: str, where: str, claim: str, paper_a, paper_b, equal: bool = False, note: str = ""):
    """Two columns of the same rows (two certificates of one head on the same images)."""
    left, right = r.assign(_v=r[a]), r.assign(_v=r[b])
    if equal:   # a claim of no difference: the paper's effect is 0 (its printed columns, where given, are equal)
        f = contrast("05", "Provably Robust Transfer", where, claim, left, right, "_v", paper_a=0.0, paper_b=0.0, note=note)
        shown = "" if paper_a is None or paper_b is None or (paper_a, paper_b) == (0.0, 0.0) else \
            f"{100 * paper_a:.1f} vs {100 * paper_b:.1f}"
        return dataclasses.replace(f, paper_numbers=shown)
    return contrast("05", "Provably Robust Transfer", where, claim, left, right, "_v", paper_a=paper_a, paper_b=paper_b,
                    direction=1, note=note)
