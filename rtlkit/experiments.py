"""The experiment steps the notebooks call, one per step; each returns a tidy DataFrame whose
rows come from cached runs (so widgets can re-plot without recomputing)."""
from __future__ import annotations

import pandas as pd

from .profiles import Profile
from .runs import get_or_evaluate
from .runtime import Runtime
from .transfer import BN_CASES, TransferPolicy


def _row(metrics: dict, **keys) -> dict:
    return {**keys, "clean_acc": metrics["clean_acc"], "robust_acc": metrics["robust_acc"],
            "attacks": "; ".join(metrics["attacks"]), "n_test": metrics["n_test"]}


def source_robustness(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Train (or load) the robust source and measure it on its own test set."""
    rows = []
    for seed in profile.seeds:
        m = get_or_evaluate(profile.source_run(seed), profile.eval_attacks, runtime, progress)
        rows.append(_row(m, model="source", dataset=profile.source.label, seed=seed))
    return pd.DataFrame(rows)


def layer_freezing(profile: Profile, runtime: Runtime | None = None, progress: bool = True,
                   bn_stats: str = "reuse", bn_affine: str = "freeze") -> pd.DataFrame:
    """CARTL Fig. 3: fine-tune the last k blocks on the target, for each k of the profile."""
    rows = []
    for seed in profile.seeds:
        for k in profile.ks:
            pol = TransferPolicy(k=k, bn_stats=bn_stats, bn_affine=bn_affine)
            m = get_or_evaluate(profile.transfer_run(pol, seed), profile.eval_attacks, runtime, progress)
            rows.append(_row(m, variant="fine-tune last k (target)", k=k, seed=seed, dataset=profile.target.label,
                             bn_stats=bn_stats, bn_affine=bn_affine))
    return pd.DataFrame(rows)


def reinit_sweep(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Shafahi Fig. 1: re-initialise the last k blocks, retrain them on natural source images,
    and measure robustness on the source test set."""
    rows = []
    for seed in profile.seeds:
        for k in profile.ks:
            m = get_or_evaluate(profile.reinit_run(k, seed), profile.eval_attacks, runtime, progress)
            rows.append(_row(m, variant="re-init last k, retrain (source)", k=k, seed=seed,
                             dataset=profile.reinit_source.label, bn_stats="reuse", bn_affine="train"))
    return pd.DataFrame(rows)


def bn_ablation(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 1: the four BN cases at each k of ``profile.bn_ks``."""
    rows = []
    for seed in profile.seeds:
        for k in profile.bn_ks:
            for case in BN_CASES:
                pol = TransferPolicy.bn_case(case, k)
                m = get_or_evaluate(profile.transfer_run(pol, seed), profile.eval_attacks, runtime, progress)
                rows.append(_row(m, k=k, case=case, bn_stats=pol.bn_stats, bn_affine=pol.bn_affine, seed=seed,
                                 dataset=profile.target.label))
    return pd.DataFrame(rows)


def bn_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1's layout: rows (k, affine of the fine-tuned part), columns (extractor stats) x (acc, rob), in %."""
    t = df.groupby(["k", "bn_affine", "bn_stats"])[["clean_acc", "robust_acc"]].mean().mul(100).round(2)
    return t.unstack("bn_stats").swaplevel(0, 1, axis=1).sort_index(axis=1)
