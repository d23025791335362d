"""Shared plotting set-up for every study's figures (each study's own plots live in
``rtlkit.studies.<study>``): a headless backend unless a notebook chose one, one seaborn theme,
and the small helpers the studies share. Figures come from tidy result tables, never from
anything else."""
from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported: studies draw with plots.plt)
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
