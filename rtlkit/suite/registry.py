"""The one registry of studies: every notebook's study module, in notebook order. Each study
declares itself once, as its module's ``STUDY`` (``rtlkit.studies.common.Study``: its notebook,
title and the steps that ask the run cache), beside its ``findings(read)`` and, where it has
replicated cells, ``replicated(read)``. ``rtlkit plan``, ``rtlkit findings``, ``rtlkit launch``,
``rtlkit run`` and the tests read this list.

A new study is a module (or package) in ``rtlkit/studies/``, its notebook in ``notebooks/``, and
one entry below.
"""
from __future__ import annotations

from types import ModuleType

from rtlkit.core.errors import check
from rtlkit.studies import (bn_ablation, cartl, layer_freezing, pretraining, provable, report_cards, shafahi,
                            your_transfer)
from rtlkit.studies.common import Study

MODULES: tuple[ModuleType, ...] = (
    your_transfer,    # 00 your checkpoint and images
    layer_freezing,   # 01 CARTL Fig. 3, Shafahi Fig. 1
    bn_ablation,      # 02 CARTL Table 1
    cartl,            # 03 CARTL Tables 2-5, Figs. 4-5
    pretraining,      # 04 Vaishnavi et al.
    provable,         # 05 Provably Robust Transfer
    shafahi,          # 06 Shafahi et al.
    report_cards,     # 07 report cards
)

STUDIES: dict[str, Study] = {m.STUDY.id: m.STUDY for m in MODULES}
_BY_ID = {m.STUDY.id: m for m in MODULES}


def module(notebook: str) -> ModuleType:
    """The study module of a notebook, by its id (``"01"``) or its stem (``"01_layer_freezing"``)."""
    nb = str(notebook)[:2]
    check(nb in _BY_ID and (len(str(notebook)) <= 2 or STUDIES[nb].notebook == str(notebook)),
          f"unknown notebook {notebook!r}; one of {', '.join(s.notebook for s in STUDIES.values())}")
    return _BY_ID[nb]


def with_steps() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{notebook stem: (study module name, its cache-asking steps)} of every study a suite runs
    (notebook 00 needs your files and is planned by its own ``planned(setup)``)."""
    return {s.notebook: (_BY_ID[nb].__name__.rsplit(".", 1)[1], s.steps) for nb, s in STUDIES.items() if s.steps}


def with_findings() -> dict[str, str]:
    """{notebook id: study name} of every study whose notebook computes findings, in notebook order."""
    return {nb: _BY_ID[nb].__name__.rsplit(".", 1)[1] for nb in STUDIES if hasattr(_BY_ID[nb], "findings")}
