"""ipywidgets panels that re-plot from cached result tables (nothing is recomputed).
Shown in JupyterLab; skipped when a notebook runs headless (papermill passes interactive=False)."""
from __future__ import annotations

import pandas as pd

from . import plots


def _display(panel):
    from IPython.display import display
    display(panel)
    return panel


def freezing_panel(ft: pd.DataFrame, source: pd.DataFrame, reinit: pd.DataFrame | None = None,
                   interactive: bool = True):
    """Pick which k to show and whether to show the re-initialised variant."""
    if not interactive:
        return None
    import ipywidgets as W
    import matplotlib.pyplot as plt
    ks = [str(k) for k in ft["k"].unique()]
    pick = W.SelectMultiple(options=ks, value=tuple(ks), description="k", rows=min(len(ks), 8))
    show_reinit = W.Checkbox(value=reinit is not None, description="Shafahi re-init", disabled=reinit is None)
    out = W.Output()

    def redraw(*_):
        sel = set(pick.value)
        with out:
            out.clear_output(wait=True)
            r = reinit[reinit.k.astype(str).isin(sel)] if (reinit is not None and show_reinit.value) else None
            plots.layer_freezing(ft[ft.k.astype(str).isin(sel)], source, r)
            plt.show()

    pick.observe(redraw, "value")
    show_reinit.observe(redraw, "value")
    redraw()
    return _display(W.HBox([W.VBox([pick, show_reinit]), out]))


def bn_panel(df: pd.DataFrame, interactive: bool = True):
    """Pick the k values and the BN cases to compare."""
    if not interactive:
        return None
    import ipywidgets as W
    import matplotlib.pyplot as plt
    ks = [str(k) for k in df["k"].unique()]
    cases = list(df["case"].unique())
    pick_k = W.SelectMultiple(options=ks, value=tuple(ks), description="k")
    pick_c = W.SelectMultiple(options=cases, value=tuple(cases), description="BN case", rows=4,
                              layout=W.Layout(width="360px"))
    out = W.Output()

    def redraw(*_):
        sub = df[df.k.astype(str).isin(pick_k.value) & df.case.isin(pick_c.value)]
        with out:
            out.clear_output(wait=True)
            if len(sub):
                plots.bn_ablation(sub)
                plt.show()

    pick_k.observe(redraw, "value")
    pick_c.observe(redraw, "value")
    redraw()
    return _display(W.VBox([W.HBox([pick_k, pick_c]), out]))


def cartl_panel(grid: pd.DataFrame, ablation: pd.DataFrame, lwf: pd.DataFrame, interactive: bool = True):
    """Pick lambda, beta, k and method; re-plot the trade-off and the grid from cached results."""
    if not interactive:
        return None
    import ipywidgets as W
    import matplotlib.pyplot as plt
    lam = W.SelectMultiple(options=sorted(grid.lam.unique()), value=tuple(sorted(grid.lam.unique())), description="λ")
    beta = W.SelectMultiple(options=sorted(grid.beta.unique()), value=tuple(sorted(grid.beta.unique())), description="β")
    ks = W.SelectMultiple(options=sorted(grid.k.unique()), value=tuple(sorted(grid.k.unique())), description="k")
    methods = W.SelectMultiple(options=["vanilla", "AT + NEFT", "CARTL"], value=("vanilla", "AT + NEFT", "CARTL"),
                               description="method")
    out = W.Output()

    def redraw(*_):
        g = grid[grid.lam.isin(lam.value) & grid.beta.isin(beta.value) & grid.k.isin(ks.value)]
        a = ablation[ablation.k.isin(ks.value) & ablation.method.isin(methods.value)]
        with out:
            out.clear_output(wait=True)
            if len(g):
                plots.cartl_heatmaps(g)
            if len(a):
                plots.method_bars(a, "k")
                plots.tradeoff(a, lwf)
            plt.show()

    for w in (lam, beta, ks, methods):
        w.observe(redraw, "value")
    redraw()
    return _display(W.VBox([W.HBox([lam, beta, ks, methods]), out]))
