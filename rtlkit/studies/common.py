"""What every study shares: how a study declares itself (``Study``), the robust source's own
robustness, and one row of a result table."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rtlkit.studies.profiles import Profile
from rtlkit.runs.cache import get_or_evaluate
from rtlkit.core.runtime import Runtime


@dataclass(frozen=True)
class Study:
    """A study, declared once as its module's ``STUDY`` and listed in ``rtlkit.suite.registry``.

    ``notebook``: its notebook's stem (``01_layer_freezing``), whose first two characters are its id;
    ``title``: its section in findings.md; ``steps``: the module's functions, each ``(profile, runtime,
    progress)``, that the notebook calls and that ask the run cache, in the notebook's order (what
    ``rtlkit plan`` records and ``rtlkit launch`` schedules). The module's ``findings(read)`` and
    ``replicated(read)``, where it has them, are its verdicts' rows and its seed floor's cells."""
    notebook: str
    title: str
    steps: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.notebook[:2]


def row(metrics: dict, **keys) -> dict:
    """One tidy result row: the describing keys, then accuracy, robustness and what measured them."""
    return {**keys, "clean_acc": metrics["clean_acc"], "robust_acc": metrics["robust_acc"],
            "attacks": "; ".join(metrics["attacks"]), "n_test": metrics["n_test"]}


def source_robustness(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Train (or load) the robust source and measure it on its own test set."""
    rows = []
    for seed in profile.source_seeds:
        m = get_or_evaluate(profile.source_run(seed), profile.eval_attacks, runtime, progress)
        rows.append(row(m, model="source", dataset=profile.source.label, seed=seed))
    return pd.DataFrame(rows)
