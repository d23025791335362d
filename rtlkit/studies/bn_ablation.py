"""Notebook 02 · BatchNorm in transfer: CARTL Table 1, the four BN cases (extractor statistics
reused or updated on the target x fine-tuned BN affine trained or frozen) at two k. Steps, the
table, the figure, and the widget panel.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pandas as pd
import torch

from rtlkit.studies import plots, widgets
from rtlkit.core.data import Loader
from rtlkit.measure.evaluate import evaluate
from rtlkit.studies.profiles import Profile
from rtlkit.runs.cache import get_or_evaluate, get_or_table, get_or_train
from rtlkit.core.runtime import Runtime
from rtlkit.train.transfer import BN_CASES, TransferPolicy
from rtlkit.studies.common import Study, row, source_robustness
from rtlkit.measure.verdicts import binomial_se, contrast, ours, paired_cells, pick

STUDY = Study("02_bn_ablation", "02 BN ablation",
              steps=("source_robustness", "bn_ablation", "bn_stats_swap"))

__all__ = ["source_robustness", "bn_ablation", "bn_table", "bn_stats_swap", "paper_rows", "plot_bn_ablation",
           "panel", "PAPER"]

# CARTL Table 1 as printed: (scenario, k, fine-tuned BN affine, extractor statistics, acc %, rob %).
# Its columns "W, b" (extractor affine frozen, statistics updated on the target) and "mu, sigma, W, b"
# (statistics reused too); its rows "-" (the fine-tuned part trains its affine) and "W, b" (frozen).
PAPER = [(scenario, k, affine, stats, acc, rob)
         for scenario, k, cells in (
             ("CIFAR-100 -> CIFAR-10", 8, ((91.17, 14.36, 90.86, 14.89), (90.70, 17.41, 90.84, 18.54))),
             ("CIFAR-10 -> GTSRB", 6, ((93.02, 30.22, 89.29, 32.22), (92.13, 32.22, 88.94, 34.53))),
             ("CIFAR-10 -> SVHN", 6, ((95.29, 3.88, 95.24, 9.22), (95.16, 4.90, 94.86, 11.52))),
             ("CIFAR-10 -> SVHN", 5, ((93.47, 4.71, 92.92, 12.45), (93.41, 5.64, 92.10, 14.16))))
         for affine, (a_u, r_u, a_r, r_r) in zip(("train", "freeze"), cells)
         for stats, acc, rob in (("update", a_u, r_u), ("reuse", a_r, r_r))]


def paper_rows() -> pd.DataFrame:
    """CARTL Table 1's sixteen cells as rows of :func:`bn_ablation`'s table (fractions; ``source`` = paper)."""
    rows = [dict(model="", dataset=scenario, k=k, case=f"{stats} stats, {affine} affine", bn_stats=stats,
                 bn_affine=affine, clean_acc=round(acc / 100, 6), robust_acc=round(rob / 100, 6), source="paper")
            for scenario, k, affine, stats, acc, rob in PAPER]
    return pd.DataFrame(rows)


def bn_ablation(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 1: the four BN cases at each k of ``profile.bn_ks``."""
    rows = []
    for seed in profile.seeds:
        for k in profile.bn_ks:
            for case in BN_CASES:
                pol = TransferPolicy.bn_case(case, k)
                m = get_or_evaluate(profile.transfer_run(pol, seed), profile.eval_attacks, runtime, progress)
                rows.append(row(m, k=k, case=case, bn_stats=pol.bn_stats, bn_affine=pol.bn_affine, seed=seed,
                                dataset=profile.target.label))
    return pd.DataFrame(rows)


SWAPS = {   # the fine-tuned model whose weights are kept -> what happens to its frozen extractor's BN statistics
    "reuse stats, freeze affine": "re-estimated on the target (no weight update)",
    "update stats, freeze affine": "the source's restored (no weight update)",
}


def _frozen_bns(model, policy: TransferPolicy) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for blk in policy.split(model)[0] for m in blk.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def reestimate_bn(model, policy: TransferPolicy, data, runtime: Runtime, batch_size: int = 500) -> None:
    """Replace the frozen extractor's BN running statistics by their exact average over ``data``
    (no augmentation, no weight update): cumulative moving averages (momentum None) over one pass
    with those BN layers in train mode and every other layer in eval mode."""
    bns = _frozen_bns(model, policy)
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for x, _, _ in Loader(data, batch_size, device=runtime.device):
            model(runtime.inputs(x))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def bn_stats_swap(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Why updating the extractor's statistics costs robustness (issue 21, point 2): the same
    fine-tuned weights with only the frozen extractor's BN statistics swapped. The model fine-tuned
    with the source's statistics gets statistics re-estimated on the target's training images; the
    model fine-tuned with updated statistics gets the source's back. Each is evaluated by the
    profile's attacks on the whole test set, per example, cached beside its run."""
    runtime = runtime or Runtime()
    attacks = list(profile.eval_attacks)
    rows = []
    for seed in profile.seeds:
        for k in profile.bn_ks:
            for case, swap in SWAPS.items():
                pol = TransferPolicy.bn_case(case, k)
                run = profile.transfer_run(pol, seed)

                def compute(model, run=run, pol=pol, case=case):
                    model = copy.deepcopy(model)
                    if case.startswith("reuse"):
                        reestimate_bn(model, pol, run.train_data(), runtime)
                    else:
                        src = get_or_train(profile.source_run(seed), runtime, progress)
                        for m, s in zip(_frozen_bns(model, pol), _frozen_bns(src, pol)):
                            m.running_mean.copy_(s.running_mean)
                            m.running_var.copy_(s.running_var)
                            m.num_batches_tracked.copy_(s.num_batches_tracked)
                    return evaluate(model, run.test_data(), attacks, runtime, progress=progress).examples

                n = len(run.data.test())
                work = SimpleNamespace(label=f"BN statistics {swap}; " + "; ".join(a.label for a in attacks),
                                       attack_steps=sum(a.steps for a in attacks),   # rtlkit.suite.plan, per test image
                                       forward_passes=1 + len(attacks) + -(-len(run.data.train()) // n))
                ex = get_or_table(run, "bn-swap", {"swap": swap, "attacks": [a.label for a in attacks]}, compute,
                                  runtime, progress, work=work, n=n)
                if not len(ex):   # rtlkit.suite.plan's recording mode
                    continue
                rows.append(dict(model="", dataset=profile.target.label, k=k, case=f"{case}, then statistics {swap}",
                                 trained_as=case, swap=swap, bn_stats=pol.bn_stats, bn_affine=pol.bn_affine, seed=seed,
                                 clean_acc=float(ex.clean_correct.mean()), robust_acc=float(ex.robust_correct.mean()),
                                 attacks="; ".join(a.label for a in attacks), n_test=len(ex)))
    return pd.DataFrame(rows)


def bn_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1's layout: rows (k, affine of the fine-tuned part), columns (extractor stats) x (acc, rob), in %."""
    t = df.groupby(["k", "bn_affine", "bn_stats"])[["clean_acc", "robust_acc"]].mean().mul(100).round(2)
    return t.unstack("bn_stats").swaplevel(0, 1, axis=1).sort_index(axis=1)


def plot_bn_ablation(df: pd.DataFrame, title: str = ""):
    """CARTL Table 1 as grouped bars: the four BN cases at each k, accuracy and robustness."""
    d = df.assign(**{"accuracy": df.clean_acc * 100, "robustness": df.robust_acc * 100, "k": df.k.astype(str)})
    long = d.melt(id_vars=["k", "case"], value_vars=["accuracy", "robustness"], var_name="metric", value_name="%")
    fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ["accuracy", "robustness"]):
        plots.sns.barplot(data=long[long.metric == metric], x="k", y="%", hue="case", ax=ax, errorbar=plots.ERRORBAR)
        ax.set_title(f"target {metric}")
        ax.set_xlabel("k (number of last blocks trained)")
        if metric == "accuracy":
            ax.get_legend().remove()
        else:
            ax.legend(fontsize=7, title="frozen extractor stats / fine-tuned BN affine", title_fontsize=7)
    return plots.finish(fig, title, plots.seeds_note(df))


def panel(df: pd.DataFrame, interactive: bool = True):
    """Pick the k values and the BN cases to compare."""
    if not interactive:
        return None
    import ipywidgets as W
    pick_k = widgets.multi([str(k) for k in df["k"].unique()], "k")
    pick_c = widgets.multi(df["case"].unique(), "BN case", width="360px")
    out = W.Output()

    def redraw(*_):
        sub = df[df.k.astype(str).isin(pick_k.value) & df.case.isin(pick_c.value)]
        with out:
            out.clear_output(wait=True)
            if not len(sub):
                widgets.nothing_selected("k and one BN case")
                return
            plot_bn_ablation(sub)
            plots.plt.show()

    pick_k.observe(redraw, "value")
    pick_c.observe(redraw, "value")
    redraw()
    return widgets.arrange([pick_k, pick_c], out)


# --------------------------------------------------------------------------- findings

def findings(read) -> list:
    """CARTL Table 1 as findings from ``02_bn_ablation.csv``: freezing the fine-tuned part's BN
    affine raises robustness (both statistics settings), and reusing the source's statistics in
    the frozen extractor raises it; the paper's effect is its mean over its four scenarios. Where
    both sides sit at 0 % robustness, no affine effect can show: "not a test"."""
    import dataclasses

    t = read("02_bn_ablation")
    if t is None:
        return []
    every = ours(t)
    us = _fine_tunes(every)
    out = []
    for k in sorted(us.k.dropna().unique()):
        at = pick(us, k=k)
        for stats in ("reuse", "update"):
            a, b = pick(at, bn_stats=stats, bn_affine="freeze"), pick(at, bn_stats=stats, bn_affine="train")
            if len(a) and len(b):
                pairs = _paper_pairs(("freeze", stats), ("train", stats))
                floor = max(a.robust_acc.max(), b.robust_acc.max()) <= 0.005
                f = contrast("02", "CARTL", "Table 1", f"freezing the fine-tuned BN affine raises robustness ({stats} "
                             f"statistics, k = {k:g})", a, b, paper_a=sum(x - y for x, y in pairs) / len(pairs), paper_b=0.0,
                             testable=not floor,
                             note="Both sides are at 0 % robustness: none is left for the affine to change."
                             if floor else "")
                out.append(dataclasses.replace(f, paper_numbers=_scenarios(pairs)))
        a, b = pick(at, bn_stats="reuse", bn_affine="freeze"), pick(at, bn_stats="update", bn_affine="freeze")
        if len(a) and len(b):
            pairs = _paper_pairs(("freeze", "reuse"), ("freeze", "update"))
            f = contrast("02", "CARTL", "Table 1", f"reusing the source's BN statistics in the frozen extractor raises "
                         f"robustness (frozen affine, k = {k:g})", a, b, paper_a=sum(x - y for x, y in pairs) / len(pairs),
                         paper_b=0.0, note=_swap_note(every, k))
            out.append(dataclasses.replace(f, paper_numbers=_scenarios(pairs)))
    return out


def _fine_tunes(us: pd.DataFrame) -> pd.DataFrame:
    """Our fine-tuned cells of ``02_bn_ablation``: neither the statistics swaps nor the source row."""
    us = us[us.swap.isna()] if "swap" in us else us
    return us[us.model.isna()] if "model" in us else us


def replicated(read) -> list[tuple]:
    """The notebook's replicated table for the seed floor and the A/A calibration
    (``rtlkit.suite.findings.floors``): fine-tuning seeds of every (k, statistics, affine) cell; the claim
    cells are the findings' pairs (frozen against trained affine, reused against updated statistics)."""
    t = read("02_bn_ablation")
    if t is None:
        return []
    us = _fine_tunes(ours(t))
    specs = {}
    for k in sorted(us.k.dropna().unique()):
        at = pick(us, k=k)
        for stats in ("reuse", "update"):
            specs[f"k = {k:g}, {stats} statistics: frozen against trained affine"] = (
                pick(at, bn_stats=stats, bn_affine="freeze"), pick(at, bn_stats=stats, bn_affine="train"), "robust_acc")
        specs[f"k = {k:g}, frozen affine: reused against updated statistics"] = (
            pick(at, bn_stats="reuse", bn_affine="freeze"), pick(at, bn_stats="update", bn_affine="freeze"), "robust_acc")
    return [("02_bn_ablation", us, ["k", "bn_stats", "bn_affine"], paired_cells(specs), "seed")]


def _scenarios(pairs) -> str:
    return "mean of its 4 scenarios: " + ", ".join(f"{100 * (x - y):+.1f}" for x, y in pairs)


def _paper_pairs(hi: tuple[str, str], lo: tuple[str, str]) -> list[tuple[float, float]]:
    """(robustness of cell ``hi``, of cell ``lo``) in each of Table 1's scenarios, as fractions; a
    cell is (fine-tuned BN affine, extractor statistics)."""
    cells = {(sc, k, a, s): rob / 100 for sc, k, a, s, _, rob in PAPER}
    return [(cells[(sc, k, *hi)], cells[(sc, k, *lo)]) for sc, k in dict.fromkeys((sc, k) for sc, k, *_ in PAPER)]


def _swap_note(us: pd.DataFrame, k) -> str:
    """What the statistics swap measured at this k (empty where it did not run); its reading is
    computed: a change counts only outside 2 binomial SEs of the difference."""
    if "swap" not in us:
        return ""
    sw = _swaps(us, k)
    base = {s: _case(us, k, s) for s in ("reuse", "update")}
    if not {"reuse", "update"} <= set(sw) or any(v is None for v in base.values()):
        return ""

    def moved(after, before, n):
        se = (binomial_se(after, n) ** 2 + binomial_se(before, n) ** 2) ** 0.5
        return abs(after - before) > 2 * se
    n = sw["n"]
    re_, back = sw["reuse"], sw["update"]
    text = (f"The same weights with only the frozen extractor's BN statistics swapped (k = {k:g}, n = {n}): "
            f"the reused-statistics model with statistics re-estimated on the target is {100 * re_[1]:.1f} % robust "
            f"(from {100 * base['reuse'][1]:.1f} %), the updated-statistics model with the source's statistics "
            f"restored {100 * back[1]:.1f} % (from {100 * base['update'][1]:.1f} %).")
    gap = base["reuse"][1] - base["update"][1]
    if moved(re_[1], base["reuse"][1], n) and moved(back[1], base["update"][1], n) and gap > 0 and \
            re_[1] < base["reuse"][1] and back[1] > base["update"][1]:
        text += (f" Both moves are outside 2 binomial SEs of the test images (the same weights: no training noise "
                 f"enters): the statistics alone remove {100 * (base['reuse'][1] - re_[1]) / gap:.0f} % "
                 f"of the {100 * gap:.1f}-point gap one way and restore {100 * (back[1] - base['update'][1]) / gap:.0f} % "
                 f"of it the other; the rest is the weights fine-tuned under those statistics.")
    else:
        text += (" At least one move is inside 2 binomial SEs of the test images: the statistics alone do not explain "
                 "the difference.")
    return text


def _case(us: pd.DataFrame, k, stats: str):
    r = pick(us, k=k, bn_stats=stats, bn_affine="freeze")
    r = r[r.swap.isna()] if "swap" in r else r
    return None if not len(r) else (float(r.clean_acc.mean()), float(r.robust_acc.mean()))


def _swaps(us: pd.DataFrame, k) -> dict:
    sw = pick(us, k=k)
    sw = sw[sw.swap.notna()]
    out = {}
    for r in sw.itertuples():
        out[r.bn_stats] = (float(r.clean_acc), float(r.robust_acc))
        out["n"] = int(r.n_test)
    return out
