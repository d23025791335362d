"""Figures from the tidy result tables (never from anything else)."""
from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _kcode(k):
    return 10 ** 6 if k == "all" else int(k)


def _by_k(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("k", sort=False)[["clean_acc", "robust_acc"]].agg(["mean", "std"]).fillna(0) * 100
    return g.iloc[sorted(range(len(g)), key=lambda i: _kcode(g.index[i]))]


def layer_freezing(ft: pd.DataFrame, source: pd.DataFrame, reinit: pd.DataFrame | None = None, title: str = ""):
    """CARTL Fig. 3 (target accuracy and robustness against k, source robustness dashed) and,
    beside it, Shafahi Fig. 1 (re-initialised last k retrained on the source)."""
    panels = [(ft, "Fine-tune last k blocks on target (CARTL Fig. 3)")]
    if reinit is not None and len(reinit):
        panels.append((reinit, "Re-init last k, retrain on source (Shafahi Fig. 1)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    src_rob = source["robust_acc"].mean() * 100
    for ax, (df, name) in zip(axes[0], panels):
        g = _by_k(df)
        xs = [str(k) for k in g.index]
        for col, color, lab in (("clean_acc", "tab:blue", "accuracy"), ("robust_acc", "tab:red", "robustness")):
            ax.errorbar(xs, g[(col, "mean")], yerr=g[(col, "std")], marker="o", color=color, label=lab, capsize=3)
        ax.axhline(src_rob, ls="--", color="tab:red", alpha=0.6, label="source robustness")
        ax.set_xlabel("k (number of last blocks trained)")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"{name}\n{df['dataset'].iloc[0]}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bn_ablation(df: pd.DataFrame, title: str = ""):
    """CARTL Table 1 as grouped bars: the four BN cases at each k, accuracy and robustness."""
    d = df.assign(**{"accuracy": df.clean_acc * 100, "robustness": df.robust_acc * 100, "k": df.k.astype(str)})
    long = d.melt(id_vars=["k", "case"], value_vars=["accuracy", "robustness"], var_name="metric", value_name="%")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ["accuracy", "robustness"]):
        sns.barplot(data=long[long.metric == metric], x="k", y="%", hue="case", ax=ax, errorbar="sd")
        ax.set_title(f"target {metric}")
        ax.set_xlabel("k (number of last blocks trained)")
        if metric == "accuracy":
            ax.get_legend().remove()
        else:
            ax.legend(fontsize=7, title="frozen extractor stats / fine-tuned BN affine", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
