"""Notebook 02 · BatchNorm in transfer: CARTL Table 1, the four BN cases (extractor statistics
reused or updated on the target x fine-tuned BN affine trained or frozen) at two k. Steps, the
table, the figure, and the widget panel.
"""
from __future__ import annotations

import pandas as pd

from .. import plots, widgets
from ..profiles import Profile
from ..runs import get_or_evaluate
from ..runtime import Runtime
from ..transfer import BN_CASES, TransferPolicy
from .common import row, source_robustness

__all__ = ["source_robustness", "bn_ablation", "bn_table", "plot_bn_ablation", "panel"]


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
        plots.sns.barplot(data=long[long.metric == metric], x="k", y="%", hue="case", ax=ax, errorbar="sd")
        ax.set_title(f"target {metric}")
        ax.set_xlabel("k (number of last blocks trained)")
        if metric == "accuracy":
            ax.get_legend().remove()
        else:
            ax.legend(fontsize=7, title="frozen extractor stats / fine-tuned BN affine", title_fontsize=7)
    return plots.finish(fig, title)


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
