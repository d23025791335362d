"""Shared plotting set-up for every study's figures (each study's own plots live in
``rtlkit.studies.<study>``): a headless backend unless a notebook chose one, one seaborn theme,
and the small helpers the studies share. Figures come from tidy result tables, never from
anything else."""
from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (studies draw with plots.plt too)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402,F401

sns.set_theme(style="whitegrid", context="notebook")


def kcode(k):
    """Sort key of a block count k, with "all" last."""
    return 10 ** 6 if k == "all" else int(k)


ERRORBAR = ("se", 2)   # seaborn's bars: +- 2 SE over seeds (the findings' interval); none with one seed


def _two_se(x) -> float:
    """Half-width of a +- 2 SE interval over seeds; NaN (no bar drawn) with fewer than 2 seeds."""
    x = pd.Series(x).dropna()
    return float(2 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) >= 2 else float("nan")


def seed_bars(df: pd.DataFrame, by, cols) -> pd.DataFrame:
    """Per group: each column's mean over seeds and ``err``, the half-width of +- 2 SE over seeds
    (NaN with one seed, so that no zero-width bar is drawn), in %."""
    g = df.groupby(by, sort=False)[cols].agg(["mean", _two_se]) * 100
    return g.rename(columns={"_two_se": "err"}, level=1)


def seeds_note(df: pd.DataFrame, seed_col: str = "seed") -> str:
    """What a figure's error bars are: "1 seed, no error bars" or "N seeds, bars +- 2 SE"."""
    n = int(df[seed_col].nunique()) if seed_col in df and df[seed_col].notna().any() else 1
    return "1 seed, no error bars" if n <= 1 else f"{n} seeds, bars +- 2 SE over seeds"


def by_k(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and +- 2 SE half-width (``err``; NaN with one seed) over seeds of accuracy and robustness
    per k, in %, k in order ("all" last)."""
    g = seed_bars(df, "k", ["clean_acc", "robust_acc"])
    return g.iloc[sorted(range(len(g)), key=lambda i: kcode(g.index[i]))]


def finish(fig, title: str = "", note: str = ""):
    """Title (and a second line ``note``: what the error bars are) and tight layout; returns the figure."""
    title = "\n".join(t for t in (title, note) if t)
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


def plot_card(result: dict, title: str = ""):
    """The cascade as bars (robust accuracy after each attack, +- 2 SE), and the checks beside it."""
    s, ch = result["summary"], result["checks"]
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
    ax.bar(s.step, s.accuracy, yerr=2 * s.se, capsize=3, color=["tab:gray"] + ["tab:red"] * (len(s) - 1))
    for i, r in s.iterrows():
        ax.text(i, r.accuracy + 0.02, f"{r.accuracy:.3f}\n-{r.took}" if i else f"{r.accuracy:.3f}", ha="center",
                fontsize=7, va="bottom")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accuracy (after each attack)")
    ax.tick_params(axis="x", rotation=30)
    tx.axis("off")
    lines = [f"{'PASS' if r.status == 'pass' else r.status.upper():>4}  {r.check}" for r in ch.itertuples()]
    if "certified" in result:
        c = result["certified"]
        lines += ["", f"smoothed {c['smoothed_acc']:.3f}, certified {c['certified_acc']:.3f} at eps, ACR {c['acr']:.3f}"]
    tx.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.suptitle(title or f"report card: {result['card'].label}, n = {result['n_test']}", fontsize=10)
    fig.tight_layout()
    return fig
