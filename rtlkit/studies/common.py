"""What every study shares: the robust source's own robustness, and one row of a result table."""
from __future__ import annotations

import pandas as pd

from rtlkit.studies.profiles import Profile
from rtlkit.runs.cache import get_or_evaluate
from rtlkit.core.runtime import Runtime


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
