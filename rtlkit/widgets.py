"""Shared ipywidgets helpers for every study's panel (each study's own panel lives in
``rtlkit.studies.<study>``). Panels re-plot from cached result tables (nothing is recomputed);
they are shown in JupyterLab and skipped when a notebook runs headless (papermill passes
interactive=False)."""
from __future__ import annotations


def display(panel):
    from IPython.display import display as show
    show(panel)
    return panel
