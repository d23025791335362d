"""Notebook 01 · layer freezing: how much robustness survives fine-tuning the last k blocks.

CARTL Fig. 3 (Chen et al. 2021, Sec. 4): fine-tune the last k blocks of a robust source on the
target. Shafahi et al. Fig. 1 (2020, Sec. 3): re-initialise the last k blocks and retrain them on
natural source images. Steps (one per notebook section), the figure, and the widget panel.
"""
from __future__ import annotations

import pandas as pd

from rtlkit.studies import plots, widgets
from rtlkit.studies.profiles import Profile
from rtlkit.runs.cache import get_or_evaluate
from rtlkit.core.runtime import Runtime
from rtlkit.train.transfer import TransferPolicy
from rtlkit.studies.common import Study, row, source_robustness
from rtlkit.measure.verdicts import contrast, ours, paired_cells, pick

STUDY = Study("01_layer_freezing", "01 layer freezing",
              steps=("source_robustness", "layer_freezing", "reinit_sweep"))

__all__ = ["source_robustness", "layer_freezing", "reinit_sweep", "plot_layer_freezing", "panel"]


VARIANTS = ("fine-tune last k (target)", "re-init last k, retrain (source)")


def layer_freezing(profile: Profile, runtime: Runtime | None = None, progress: bool = True,
                   bn_stats: str = "reuse", bn_affine: str = "freeze") -> pd.DataFrame:
    """CARTL Fig. 3: fine-tune the last k blocks on the target, for each k of the profile."""
    rows = []
    for seed in profile.seeds:
        for k in profile.ks:
            pol = TransferPolicy(k=k, bn_stats=bn_stats, bn_affine=bn_affine)
            m = get_or_evaluate(profile.transfer_run(pol, seed), profile.eval_attacks, runtime, progress)
            rows.append(row(m, variant=VARIANTS[0], k=k, seed=seed, dataset=profile.target.label,
                            bn_stats=bn_stats, bn_affine=bn_affine))
    return pd.DataFrame(rows)


def reinit_sweep(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Shafahi Fig. 1: re-initialise the last k blocks, retrain them on natural source images,
    and measure robustness on the source test set."""
    rows = []
    for seed in profile.seeds:
        for k in profile.ks:
            m = get_or_evaluate(profile.reinit_run(k, seed), profile.eval_attacks, runtime, progress)
            rows.append(row(m, variant=VARIANTS[1], k=k, seed=seed,
                            dataset=profile.reinit_source.label, bn_stats="reuse", bn_affine="train"))
    return pd.DataFrame(rows)


def plot_layer_freezing(ft: pd.DataFrame, source: pd.DataFrame, reinit: pd.DataFrame | None = None, title: str = ""):
    """CARTL Fig. 3 (target accuracy and robustness against k, source robustness dashed) and,
    beside it, Shafahi Fig. 1 (re-initialised last k retrained on the source)."""
    panels = [(ft, "Fine-tune last k blocks on target (CARTL Fig. 3)")]
    if reinit is not None and len(reinit):
        panels.append((reinit, "Re-init last k, retrain on source (Shafahi Fig. 1)"))
    fig, axes = plots.plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    src_rob = source["robust_acc"].mean() * 100
    for ax, (df, name) in zip(axes[0], panels):
        g = plots.by_k(df)
        xs = [str(k) for k in g.index]
        for col, color, lab in (("clean_acc", "tab:blue", "accuracy"), ("robust_acc", "tab:red", "robustness")):
            ax.errorbar(xs, g[(col, "mean")], yerr=g[(col, "err")], marker="o", color=color, label=lab, capsize=3)
        ax.axhline(src_rob, ls="--", color="tab:red", alpha=0.6, label="source robustness")
        ax.set_xlabel("k (number of last blocks trained)")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)   # room above 100 %: a source robustness of 100 % stays visible
        ax.set_title(f"{name}\n{df['dataset'].iloc[0]}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    return plots.finish(fig, title, plots.seeds_note(ft))


def panel(ft: pd.DataFrame, source: pd.DataFrame, reinit: pd.DataFrame | None = None,
          interactive: bool = True):
    """Pick which k to show and whether to show the re-initialised variant."""
    if not interactive:
        return None
    import ipywidgets as W
    ks = [str(k) for k in ft["k"].unique()]
    pick = widgets.multi(ks, "k")
    show_reinit = W.Checkbox(value=reinit is not None, description="Shafahi re-init (source)", disabled=reinit is None,
                             indent=False, layout=W.Layout(width="auto"))
    out = W.Output()

    def redraw(*_):
        sel = set(pick.value)
        with out:
            out.clear_output(wait=True)
            if not sel:
                widgets.nothing_selected("k")
                return
            r = reinit[reinit.k.astype(str).isin(sel)] if (reinit is not None and show_reinit.value) else None
            plot_layer_freezing(ft[ft.k.astype(str).isin(sel)], source, r)
            plots.plt.show()

    pick.observe(redraw, "value")
    show_reinit.observe(redraw, "value")
    redraw()
    return widgets.arrange([pick, show_reinit], out)


# --------------------------------------------------------------------------- findings

def findings(read) -> list:
    """CARTL Fig. 3 and Shafahi Fig. 1 as findings, from ``01_layer_freezing.csv`` (both papers
    print these as curves, so the claims are directions)."""
    t = read("01_layer_freezing")
    if t is None:
        return []
    ft, re = pick(t, variant=VARIANTS[0]), pick(t, variant=VARIANTS[1])
    out = []
    if len(ft):
        k_lo, k_hi = ft.k.min(), ft.k.max()
        out += [contrast("01", "CARTL", "Fig. 3", f"target accuracy rises as more blocks are fine-tuned (k = {k_hi:g} against {k_lo:g})",
                         pick(ft, k=k_hi), pick(ft, k=k_lo), "clean_acc", direction=1),
                contrast("01", "CARTL", "Fig. 3", f"fine-tuning every block loses the robustness the last block keeps (k = {k_hi:g} against {k_lo:g})",
                         pick(ft, k=k_hi), pick(ft, k=k_lo), "robust_acc", direction=-1)]
    if len(re):
        k_lo, k_hi = re.k.min(), re.k.max()
        src = pick(t, model="source")
        out += [contrast("01", "Shafahi et al.", "Fig. 1", f"re-initialising more blocks and retraining them on the source loses its robustness (k = {k_hi:g} against {k_lo:g})",
                         pick(re, k=k_hi), pick(re, k=k_lo), "robust_acc", direction=-1)]
        if len(src):
            out.append(contrast("01", "Shafahi et al.", "Fig. 1", f"retraining only the last re-initialised block keeps the source's robustness (k = {k_lo:g} against the source)",
                                pick(re, k=k_lo), src, "robust_acc", paper_a=0.0, paper_b=0.0))
    return out


def replicated(read) -> list[tuple]:
    """The notebook's replicated table for the seed floor and the A/A calibration
    (``rtlkit.suite.findings.floors``): fine-tuning seeds of every (variant, k) cell; the claim cells are
    the findings' pairs (k = 8 against 1, fine-tuned and re-initialised)."""
    t = read("01_layer_freezing")
    if t is None:
        return []
    us = ours(t)
    us = us[us.variant.notna()]
    ft, re = pick(us, variant=VARIANTS[0]), pick(us, variant=VARIANTS[1])
    specs = {}
    for name, part in (("fine-tuned", ft), ("re-initialised", re)):
        if len(part):
            lo, hi = part.k.min(), part.k.max()
            for col in ("clean_acc", "robust_acc") if name == "fine-tuned" else ("robust_acc",):   # the claims' cells
                specs[f"{name} k = {hi:g} against {lo:g}, {col}"] = (pick(part, k=hi), pick(part, k=lo), col)
    return [("01_layer_freezing", us, ["variant", "k"], paired_cells(specs), "seed")]
