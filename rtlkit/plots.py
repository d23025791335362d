"""Shared plotting set-up for every study's figures (each study's own plots live in
``rtlkit.studies.<study>``): a headless backend unless a notebook chose one, one seaborn theme,
and the small helpers the studies share. Figures come from tidy result tables, never from
anything else."""
from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported: studies draw with plots.plt)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402,F401

sns.set_theme(style="whitegrid", context="notebook")


def kcode(k):
    """Sort key of a block count k, with "all" last."""
    return 10 ** 6 if k == "all" else int(k)


def by_k(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of accuracy and robustness per k, in %, k in order ("all" last)."""
    g = df.groupby("k", sort=False)[["clean_acc", "robust_acc"]].agg(["mean", "std"]).fillna(0) * 100
    return g.iloc[sorted(range(len(g)), key=lambda i: kcode(g.index[i]))]


def finish(fig, title: str = ""):
    """Title and tight layout; returns the figure."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def grouped_bars(ax, df: pd.DataFrame, group: str, hue: str, value: str, order=None, colours=None) -> None:
    """Bars of ``value`` (a share, drawn in %) per ``group``, one per ``hue`` (in ``order``), mean
    over the other columns; pair names wrap at their arrow."""
    groups = list(dict.fromkeys(df[group]))
    hues = order or list(dict.fromkeys(df[hue]))
    g = df.groupby([group, hue], sort=False)[value].mean()
    w = 0.8 / max(1, len(hues))
    for i, h in enumerate(hues):
        ax.bar(np.arange(len(groups)) + (i - (len(hues) - 1) / 2) * w, [g.get((x, h), np.nan) * 100 for x in groups],
               w, label=str(h), color=(colours or {}).get(h))
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([str(x).replace(" -> ", "\n-> ") for x in groups], fontsize=7)
    ax.set_ylim(0, 100)
