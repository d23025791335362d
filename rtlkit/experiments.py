"""The experiment steps the notebooks call, one per step; each returns a tidy DataFrame whose
rows come from cached runs (so widgets can re-plot without recomputing)."""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import pandas as pd

from .attacks import PGD
from .errors import ConfigError
from .fdm import FDMTraining
from .lwf import LwFTraining
from .neft import NEFT
from .profiles import Profile, pgd
from .runs import DataSpec, SourceRun, TransferRun, get_or_evaluate
from .runtime import Runtime
from .transfer import BN_CASES, TransferPolicy


def _row(metrics: dict, **keys) -> dict:
    return {**keys, "clean_acc": metrics["clean_acc"], "robust_acc": metrics["robust_acc"],
            "attacks": "; ".join(metrics["attacks"]), "n_test": metrics["n_test"]}


def source_robustness(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Train (or load) the robust source and measure it on its own test set."""
    rows = []
    for seed in profile.source_seeds:
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


# --------------------------------------------------------------------------- CARTL (notebook 03)

def cartl_attacks(profile: Profile) -> tuple:
    """Every robustness in notebook 03 is the per-example minimum over PGD with cross-entropy and
    PGD with the CW margin: NEFT shrinks logits, and CE-PGD alone can under-report through
    softmax saturation and bf16 rounding."""
    base = profile.eval_attacks[0]
    return (replace(base, loss="ce"), replace(base, loss="cw")) if isinstance(base, PGD) else \
        (base, pgd(profile.eps, base.steps, "cw"))


def _source(profile: Profile, method: str, lam: float = 0.0, k: int | None = None, data: DataSpec | None = None,
            seed: int = 0) -> SourceRun:
    at = profile.source_method
    if method == "fdm":
        at = FDMTraining(**{f.name: getattr(at, f.name) for f in dataclasses.fields(at)}, lam=lam, k=k)
    return SourceRun(data or profile.source, profile.model, at, seed)


def _transfer(profile: Profile, method: str, k, seed: int, target: DataSpec | None = None,
              source: DataSpec | None = None, lam: float | None = None, beta: float | None = None,
              lam_d: float | None = None) -> tuple[TransferRun, dict]:
    """One of the methods of CARTL's comparison as a cached run, plus its describing keys."""
    target = target or profile.target
    lam = profile.cartl_choice[0] if lam is None else lam
    beta = profile.cartl_choice[1] if beta is None else beta
    policy = TransferPolicy(k=k, bn_stats="reuse", bn_affine="freeze")   # CARTL App. C
    if method == "vanilla":        # AT source, plain fine-tuning of the last k blocks
        run = TransferRun(_source(profile, "at", data=source), target, policy, profile.finetune, seed)
        keys = dict(lam=0.0, beta=None)
    elif method == "AT + NEFT":
        run = TransferRun(_source(profile, "at", data=source), target, policy, profile.finetune, seed, NEFT(beta))
        keys = dict(lam=0.0, beta=beta)
    elif method == "CARTL":        # FDM source for this k, NEFT fine-tuning
        run = TransferRun(_source(profile, "fdm", lam, k, source), target, policy, profile.finetune, seed, NEFT(beta))
        keys = dict(lam=lam, beta=beta)
    elif method == "LwF":          # AT source, end-to-end with feature distillation (k = all)
        lam_d = profile.lwf_lams[0] if lam_d is None else lam_d
        lwf = LwFTraining(epochs=profile.finetune.epochs, batch_size=profile.finetune.batch_size, lam_d=lam_d)
        run = TransferRun(_source(profile, "at", data=source), target, TransferPolicy(k="all", bn_affine="freeze"),
                          lwf, seed)
        keys = dict(lam_d=lam_d)
    else:
        raise ConfigError(f"unknown method {method!r}: vanilla, AT + NEFT, CARTL or LwF")
    return run, {"method": method, "k": k if method != "LwF" else "all", "seed": seed,
                 "target": target.label, **keys}


def _measure(profile: Profile, runtime, progress, method: str, k, seed: int, **kw) -> dict:
    run, keys = _transfer(profile, method, k, seed, **kw)
    m = get_or_evaluate(run, cartl_attacks(profile), runtime, progress, test_n=profile.cartl_test_n)
    ce, cw = (m[f"robust_acc[{a.label}]"] for a in cartl_attacks(profile))
    return {**keys, "clean_acc": m["clean_acc"], "robust_acc": m["robust_acc"], "robust_ce": ce, "robust_cw": cw,
            "ce_cw_gap": abs(ce - cw), "n_test": m["n_test"]}


def cartl_grid(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 2: lambda x beta x k, FDM source + NEFT fine-tuning."""
    return pd.DataFrame([_measure(profile, runtime, progress, "CARTL", k, s, lam=lam, beta=b)
                         for s in profile.cartl_seeds for k in profile.cartl_ks
                         for lam in profile.cartl_lams for b in profile.cartl_betas])


def cartl_ablation(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 3 at each k: AT + plain fine-tuning, AT + NEFT, FDM + NEFT (CARTL)."""
    return pd.DataFrame([_measure(profile, runtime, progress, m, k, s)
                         for s in profile.cartl_seeds for k in profile.cartl_ks
                         for m in ("vanilla", "AT + NEFT", "CARTL")])


def lwf_sweep(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 5: LwF for each lambda_d."""
    return pd.DataFrame([_measure(profile, runtime, progress, "LwF", "all", s, lam_d=ld)
                         for s in profile.cartl_seeds for ld in profile.lwf_lams])


def low_data(profile: Profile, runtime: Runtime | None = None, progress: bool = True, k: int | None = None) -> pd.DataFrame:
    """CARTL Fig. 5: class-balanced fractions of the target training set, CARTL vs vanilla vs LwF at one k."""
    k = k or profile.cartl_ks[-1]
    rows = []
    for frac in profile.fractions:
        tgt = replace(profile.target, fraction=frac)
        for m in ("vanilla", "CARTL", "LwF"):
            for s in profile.cartl_seeds:
                rows.append({**_measure(profile, runtime, progress, m, k, s, target=tgt), "fraction": frac})
    return pd.DataFrame(rows)


def more_pairs(profile: Profile, runtime: Runtime | None = None, progress: bool = True, k: int | None = None) -> pd.DataFrame:
    """CARTL Table 4: the three methods on more source -> target pairs (skips pairs whose data are absent)."""
    from .errors import DatasetNotFound
    k = k or profile.cartl_ks[-1]
    rows = []
    for src, tgt in ((None, profile.target),) + tuple(profile.pairs):
        src_spec = src or profile.source
        try:
            src_spec.train(), tgt.train()
        except DatasetNotFound as e:
            print(f"skipping {src_spec.label} -> {tgt.label}: {str(e).splitlines()[0]}")
            continue
        for m in ("vanilla", "CARTL", "LwF"):
            for s in profile.cartl_seeds:
                rows.append({**_measure(profile, runtime, progress, m, k, s, target=tgt, source=src),
                             "pair": f"{src_spec.label} -> {tgt.label}"})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and std over seeds, in %, of accuracy and (min-over-attacks) robustness."""
    cols = ["clean_acc", "robust_acc", "robust_ce", "robust_cw"]
    g = df.groupby(by, dropna=False, sort=False)[cols].agg(["mean", "std"]).mul(100).round(2)
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    return g.reset_index()


def attack_disagreements(df: pd.DataFrame, points: float = 0.02) -> pd.DataFrame:
    """Models where CE-PGD and CW-PGD robustness differ by more than ``points``."""
    return df[df.ce_cw_gap > points]
