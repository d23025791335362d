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


# --------------------------------------------------------------------------- CARTL (notebook 03)

METHOD_COLORS = {"vanilla": "tab:gray", "AT + NEFT": "tab:orange", "CARTL": "tab:red", "LwF": "tab:blue"}


def cartl_heatmaps(grid: pd.DataFrame, title: str = ""):
    """CARTL Table 2 as heat maps: rows (k, lambda), columns beta; mean over seeds, in %."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.6 * grid[["k", "lam"]].drop_duplicates().shape[0] + 2))
    for ax, col, name in zip(axes, ["clean_acc", "robust_acc"], ["accuracy", "robustness (min CE, CW)"]):
        t = grid.groupby(["k", "lam", "beta"])[col].mean().mul(100).unstack("beta")
        t.index = [f"k={k}, λ={lam:g}" for k, lam in t.index]
        sns.heatmap(t, annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar=False)
        ax.set_xlabel("NEFT β")
        ax.set_title(f"target {name} %")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def method_bars(df: pd.DataFrame, x: str, title: str = "", order: list[str] | None = None):
    """Accuracy and robustness bars of the methods at each ``x`` (k or pair), sd over seeds."""
    d = df.assign(accuracy=df.clean_acc * 100, robustness=df.robust_acc * 100, **{x: df[x].astype(str)})
    long = d.melt(id_vars=[x, "method"], value_vars=["accuracy", "robustness"], var_name="metric", value_name="%")
    hue_order = order or [m for m in METHOD_COLORS if m in set(df.method)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ["accuracy", "robustness"]):
        sns.barplot(data=long[long.metric == metric], x=x, y="%", hue="method", hue_order=hue_order, ax=ax,
                    errorbar="sd", palette=METHOD_COLORS, capsize=0.1)
        ax.set_title(f"target {metric}" + (" (min CE, CW)" if metric == "robustness" else ""))
        ax.tick_params(axis="x", labelsize=8)
        if metric == "accuracy":
            ax.get_legend().remove()
        else:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tradeoff(ablation: pd.DataFrame, lwf: pd.DataFrame, title: str = ""):
    """CARTL Fig. 4: robustness against accuracy; vanilla and CARTL one point per k, LwF one per
    lambda_d; error bars are the sd over fine-tuning seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    parts = [(ablation[ablation.method == m], m, "k") for m in ("vanilla", "CARTL")] + [(lwf, "LwF", "lam_d")]
    for df, method, key in parts:
        g = df.groupby(key)[["clean_acc", "robust_acc"]].agg(["mean", "std"]).fillna(0) * 100
        ax.errorbar(g[("clean_acc", "mean")], g[("robust_acc", "mean")], xerr=g[("clean_acc", "std")],
                    yerr=g[("robust_acc", "std")], fmt="o-" if method != "LwF" else "s--", capsize=3,
                    color=METHOD_COLORS[method], label=method)
        for v, row in g.iterrows():
            ax.annotate(f"{'k' if key == 'k' else 'λd'}={v:g}" if key != "k" else f"k={v}",
                        (row[("clean_acc", "mean")], row[("robust_acc", "mean")]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("target accuracy %")
    ax.set_ylabel("target robustness % (min CE, CW)")
    ax.legend()
    ax.set_title(title or "accuracy-robustness trade-off", fontsize=10)
    fig.tight_layout()
    return fig


def low_data(df: pd.DataFrame, title: str = ""):
    """CARTL Fig. 5: accuracy and robustness against the fraction of target training data."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, name in zip(axes, ["clean_acc", "robust_acc"], ["accuracy", "robustness (min CE, CW)"]):
        for m, sub in df.groupby("method", sort=False):
            g = sub.groupby("fraction")[col].agg(["mean", "std"]).fillna(0).sort_index() * 100
            ax.errorbar([f"{f:.0%}" for f in g.index], g["mean"], yerr=g["std"], marker="o", capsize=3,
                        color=METHOD_COLORS.get(m), label=m)
        ax.set_xlabel("fraction of target training set (class-balanced)")
        ax.set_ylabel("%")
        ax.set_title(f"target {name}")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
