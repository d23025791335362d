"""Shared ipywidgets helpers for every study's panel (each study's own panel lives in
``rtlkit.studies.<study>``). Panels re-plot from cached result tables (nothing is recomputed).

The convention, in every notebook: a panel function builds its widgets and *returns* the panel; it
never displays it. A notebook's last cell evaluates to the panel, so JupyterLab shows it exactly
once; papermill passes ``interactive=False`` and gets None. The controls sit above the plot (never
beside it, where a wide figure squeezes them), every multi-select shows all its options, and a
selection that leaves nothing to plot prints a line saying so instead of raising.
"""
from __future__ import annotations


def multi(options, description: str, value=None, width: str | None = None):
    """A multi-select that shows every option (all selected unless ``value`` says otherwise)."""
    import ipywidgets as W
    options = list(options)
    layout = W.Layout(width=width) if width else W.Layout()
    return W.SelectMultiple(options=options, value=tuple(options if value is None else value),
                            description=description, rows=max(2, len(options)), layout=layout,
                            style={"description_width": "initial"})


def arrange(controls: list, out):
    """The panel: the controls in a wrapping row above the plot output."""
    import ipywidgets as W
    row = W.HBox(controls, layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))
    return W.VBox([row, out])


def nothing_selected(what: str) -> None:
    print(f"Nothing selected: pick at least one {what} to plot.")
