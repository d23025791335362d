"""Notebook 03 · CARTL (Chen et al., ICML 2021): FDM source training + NEFT fine-tuning against
plain fine-tuning, AT + NEFT and the LwF baseline. Tables 2-5 and Figs. 4-5: steps, plots and
the widget panel. The methods themselves live in ``rtlkit.train.methods`` (fdm, neft, lwf).
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import pandas as pd

from rtlkit.studies import plots, widgets
from rtlkit.measure.attacks import PGD
from rtlkit.core.errors import ConfigError, DatasetNotFound
from rtlkit.train.methods.fdm import FDMTraining
from rtlkit.train.methods.lwf import LwFTraining
from rtlkit.train.methods.neft import NEFT
from rtlkit.studies.profiles import Profile, pgd
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_evaluate
from rtlkit.core.runtime import Runtime
from rtlkit.train.transfer import TransferPolicy
from rtlkit.measure.verdicts import contrast, ours, pick, theirs
from rtlkit.measure.stats import MIN_REPLICATES
from rtlkit.studies.common import Study

STUDY = Study("03_cartl", "03 CARTL",
              steps=("cartl_grid", "cartl_ablation", "lwf_sweep", "low_data", "more_pairs", "seeded_claims"))


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


def method_run(profile: Profile, method: str, k, seed: int, target: DataSpec | None = None,
               source: DataSpec | None = None, lam: float | None = None, beta: float | None = None,
               lam_d: float | None = None, steps: int | None = None,
               lwf_bn_stats: str = "reuse", source_seed: int = 0,
               lwf_bn_affine: str = "train") -> tuple[TransferRun, dict]:
    """One of the methods of CARTL's comparison as a cached run, plus its describing keys.
    ``steps``: a fine-tuning budget in optimizer steps instead of the profile's epochs;
    ``lwf_bn_stats="update"``: LwF with BN running statistics following the target (ours);
    ``lwf_bn_affine``: "train" (the released code's LwF: BN gamma and beta train after the warm start,
    the statistics stay the source's) or "freeze" (ours, a variant: every BN parameter frozen);
    ``source_seed``: the seed of the AT or FDM source it starts from (0: the one every figure shares)."""
    target = target or profile.target
    epochs = profile.cartl_finetune_epochs or profile.finetune.epochs
    finetune = replace(profile.finetune, steps=steps) if steps is not None else \
        replace(profile.finetune, epochs=epochs)
    lam = profile.cartl_choice[0] if lam is None else lam
    beta = profile.cartl_choice[1] if beta is None else beta
    policy = TransferPolicy(k=k, bn_stats="reuse", bn_affine="freeze")   # CARTL App. C
    if method == "vanilla":        # AT source, plain fine-tuning of the last k blocks
        run = TransferRun(_source(profile, "at", data=source, seed=source_seed), target, policy, finetune, seed)
        keys = dict(lam=0.0, beta=None)
    elif method == "AT + NEFT":
        run = TransferRun(_source(profile, "at", data=source, seed=source_seed), target, policy, finetune, seed, NEFT(beta))
        keys = dict(lam=0.0, beta=beta)
    elif method == "CARTL":        # FDM source for this k, NEFT fine-tuning
        run = TransferRun(_source(profile, "fdm", lam, k, source, source_seed), target, policy, finetune, seed, NEFT(beta))
        keys = dict(lam=lam, beta=beta)
    elif method == "LwF":          # AT source, end-to-end with feature distillation (k = all)
        lam_d = profile.lwf_lams[0] if lam_d is None else lam_d
        lwf = LwFTraining(epochs=epochs, batch_size=profile.finetune.batch_size, lam_d=lam_d, steps=steps,
                          lr=profile.lwf_lr, weight_decay=profile.lwf_weight_decay, bn_stats=lwf_bn_stats)
        run = TransferRun(_source(profile, "at", data=source, seed=source_seed), target,
                          TransferPolicy(k="all", bn_affine=lwf_bn_affine), lwf, seed)
        keys = dict(lam_d=lam_d) if lwf_bn_stats == "reuse" else dict(lam_d=lam_d, bn_stats=lwf_bn_stats)
        if lwf_bn_affine != "train":
            keys["bn_affine"] = lwf_bn_affine
    else:
        raise ConfigError(f"unknown method {method!r}: vanilla, AT + NEFT, CARTL or LwF")
    return run, {"method": method, "k": k if method != "LwF" else "all", "seed": seed, "source_seed": source_seed,
                 "target": target.label, **keys}


def measure(profile: Profile, runtime, progress, method: str, k, seed: int, test_n: int | None = None,
             **kw) -> dict:
    run, keys = method_run(profile, method, k, seed, **kw)
    m = get_or_evaluate(run, cartl_attacks(profile), runtime, progress, test_n=test_n or profile.cartl_test_n)
    ce, cw = (m[f"robust_acc[{a.label}]"] for a in cartl_attacks(profile))
    return {**keys, "clean_acc": m["clean_acc"], "robust_acc": m["robust_acc"], "robust_ce": ce, "robust_cw": cw,
            "ce_cw_gap": abs(ce - cw), "n_test": m["n_test"]}


def cartl_grid(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 2: lambda x beta x k, FDM source + NEFT fine-tuning."""
    return pd.DataFrame([measure(profile, runtime, progress, "CARTL", k, s, lam=lam, beta=b)
                         for s in profile.cartl_seeds for k in profile.cartl_ks
                         for lam in profile.cartl_lams for b in profile.cartl_betas])


def cartl_ablation(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 3 at each k: AT + plain fine-tuning, AT + NEFT, FDM + NEFT (CARTL)."""
    return pd.DataFrame([measure(profile, runtime, progress, m, k, s)
                         for s in profile.cartl_seeds for k in profile.cartl_ks
                         for m in ("vanilla", "AT + NEFT", "CARTL")])


def lwf_sweep(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 5: LwF for each lambda_d."""
    return pd.DataFrame([measure(profile, runtime, progress, "LwF", "all", s, lam_d=ld)
                         for s in profile.cartl_seeds for ld in profile.lwf_lams])


def low_data(profile: Profile, runtime: Runtime | None = None, progress: bool = True, k: int | None = None) -> pd.DataFrame:
    """CARTL Fig. 5: class-balanced fractions of the target training set, CARTL vs vanilla vs LwF at
    one k. Every fraction gets the same number of optimizer steps (``Profile.finetune_steps`` at
    notebook 03's epochs): the 100 % point is the epoch-based fine-tune the other figures share,
    each smaller fraction a step budget equal to it, so a 10 % subset is not also given a tenth of
    the updates."""
    k = k or profile.cartl_ks[-1]
    budget = profile.finetune_steps(profile.target, profile.cartl_finetune_epochs)
    rows = []
    for frac in profile.fractions:
        tgt = replace(profile.target, fraction=frac)
        steps = None if frac == 1 else budget
        for m in ("vanilla", "CARTL", "LwF"):
            for s in profile.cartl_seeds:
                rows.append({**measure(profile, runtime, progress, m, k, s, target=tgt, steps=steps),
                             "fraction": frac, "steps": budget})
    return pd.DataFrame(rows)


def more_pairs(profile: Profile, runtime: Runtime | None = None, progress: bool = True, k: int | None = None) -> pd.DataFrame:
    """CARTL Table 4: the three methods on more source -> target pairs (skips pairs whose data are absent)."""
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
                rows.append({**measure(profile, runtime, progress, m, k, s, target=tgt, source=src),
                             "pair": f"{src_spec.label} -> {tgt.label}"})
    return pd.DataFrame(rows)


def seeded_claims(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """The cells that carry notebook 03's claims, replicated (issue 21, point 9): replicate r
    trains its own AT and FDM sources with seed r and fine-tunes from them with seed r, so the
    spread over replicates holds the source's noise as well as the fine-tune's; each is evaluated
    on ``claim_test_n`` test images. Cells: CARTL at every k for the smallest and largest beta and
    beta* (Table 2); vanilla and AT + NEFT at every k (Table 3, against CARTL's beta* cell); LwF at
    the largest and smallest lambda_d (Table 5, Fig. 4); vanilla and CARTL at each of
    ``claim_fractions`` with Fig. 5's step budget. Replicate 0 reuses the other figures' trained
    models (only its larger evaluation is new)."""
    lam, beta_star = profile.cartl_choice
    betas = sorted({min(profile.cartl_betas), max(profile.cartl_betas), beta_star})
    lams_d = sorted({min(profile.lwf_lams), max(profile.lwf_lams)})
    k_last = profile.cartl_ks[-1]
    budget = profile.finetune_steps(profile.target, profile.cartl_finetune_epochs)
    cells = []
    for k in profile.cartl_ks:
        cells += [dict(method="CARTL", k=k, lam=lam, beta=b) for b in betas]
        cells += [dict(method=m, k=k) for m in ("vanilla", "AT + NEFT")]
    cells += [dict(method="LwF", k="all", lam_d=ld) for ld in lams_d]
    cells += [dict(method=m, k=k_last, fraction=f) for f in profile.claim_fractions if f != 1
              for m in ("vanilla", "CARTL")]
    rows = []
    for r in profile.claim_seeds:
        for c in cells:
            c = dict(c)
            method, k, frac = c.pop("method"), c.pop("k"), c.pop("fraction", 1.0)
            extra = dict(target=replace(profile.target, fraction=frac), steps=budget) if frac != 1 else {}
            rows.append({**measure(profile, runtime, progress, method, k, r, test_n=profile.claim_test_n,
                                   source_seed=r, **c, **extra), "fraction": frac, "replicate": r})
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class SeededClaim:
    """One claim of ``seeded_claims``'s table: its two arms' rows (one per replicate), the column
    compared, the paper's two numbers (None: the direction only) and the claimed direction."""
    where: str
    claim: str
    a: pd.DataFrame
    b: pd.DataFrame
    col: str = "robust_acc"
    paper_a: float | None = None
    paper_b: float | None = None
    direction: int = 1


# the columns that make one configuration (one arm) of seeded_claims's table: the A/A pairs of the
# calibration share them all and differ in ``replicate`` alone
SEEDED_CONFIG = ["method", "k", "target", "lam", "beta", "lam_d", "fraction"]


def seeded_claims_of(t: pd.DataFrame) -> list[SeededClaim]:
    """Notebook 03's claims in ``seeded_claims``'s table (our rows and the paper's, whose ``table``
    column names the paper's table): each with its arms, one row per replicate."""
    us, paper = ours(t), theirs(t)
    if not len(us):
        return []
    n_rep = int(us.replicate.nunique())
    tag = f"{n_rep} seeds" if n_rep > 1 else "1 seed"

    def paper_rob(table, col="robust_acc", **eq):
        p = pick(paper, table=table, **eq) if "table" in paper else paper.iloc[:0]
        return float(p[col].iloc[0]) if len(p) else None

    out = []
    full = pick(us, fraction=1.0)
    beta_star = None
    cartl = pick(full, method="CARTL")
    for k in sorted(pd.to_numeric(cartl.k).unique()):
        at = pick(cartl, k=k)
        betas = sorted(at.beta.dropna().unique())
        if len(betas) >= 2:
            lo, hi, lam = betas[0], betas[-1], float(at.lam.iloc[0])
            out.append(SeededClaim(f"Table 2 ({tag})", f"a smaller NEFT beta raises robustness (beta {lo:g} against {hi:g}, "
                                   f"lambda {lam:g}, k = {k:g})", pick(at, beta=lo), pick(at, beta=hi),
                                   paper_a=paper_rob("table2", k=k, lam=lam, beta=lo),
                                   paper_b=paper_rob("table2", k=k, lam=lam, beta=hi)))
    for k in sorted(pd.to_numeric(pick(full, method="vanilla").k).unique()):
        neft = pick(full, method="AT + NEFT", k=k)
        beta_star = float(neft.beta.iloc[0]) if len(neft) else None
        sides = {"vanilla": pick(full, method="vanilla", k=k), "AT + NEFT": neft,
                 "CARTL": pick(full, method="CARTL", k=k, beta=beta_star) if beta_star is not None else full.iloc[:0]}
        for m1, m0, what in (("AT + NEFT", "vanilla", "NEFT raises the robustness of plain fine-tuning"),
                             ("CARTL", "AT + NEFT", "an FDM source raises NEFT's robustness further")):
            if len(sides[m1]) and len(sides[m0]):
                out.append(SeededClaim(f"Table 3 ({tag})", f"{what} (k = {k:g})", sides[m1], sides[m0],
                                       paper_a=paper_rob("table3", k=k, method=m1),
                                       paper_b=paper_rob("table3", k=k, method=m0)))
    lw = pick(full, method="LwF")
    if len(lw) and lw.lam_d.nunique() >= 2:
        lo, hi = lw.lam_d.min(), lw.lam_d.max()
        a, b = pick(lw, lam_d=lo), pick(lw, lam_d=hi)
        pl = lambda lam, col: paper_rob("table5", col, lam_d=lam)   # noqa: E731
        out += [SeededClaim(f"Table 5 ({tag})", f"LwF loses robustness as lambda_d falls ({lo:g} against {hi:g})", a, b,
                            paper_a=pl(lo, "robust_acc"), paper_b=pl(hi, "robust_acc"), direction=-1),
                SeededClaim(f"Table 5 ({tag})", f"LwF gains accuracy as lambda_d falls ({lo:g} against {hi:g})", a, b,
                            "clean_acc", paper_a=pl(lo, "clean_acc"), paper_b=pl(hi, "clean_acc"))]
        k = float(pd.to_numeric(cartl.k).max()) if len(cartl) else None
        c = pick(cartl, k=k, beta=beta_star) if k is not None and beta_star is not None else cartl.iloc[:0]
        if len(c):
            out.append(SeededClaim(f"Fig. 4 ({tag})", f"CARTL is more robust than LwF (k = {k:g} against lambda_d {hi:g})",
                                   c, b, paper_a=paper_rob("table3", k=k, method="CARTL"), paper_b=pl(hi, "robust_acc")))
    for frac in sorted(us.fraction.dropna().unique(), reverse=True):
        if frac == 1:
            continue
        a, b = pick(us, fraction=frac, method="CARTL"), pick(us, fraction=frac, method="vanilla")
        if len(a) and len(b):
            out.append(SeededClaim(f"Fig. 5 ({tag})", f"CARTL is more robust than vanilla fine-tuning with "
                                   f"{100 * frac:g} % of the target", a, b))
    return out


def seeded_findings(t: pd.DataFrame) -> list:
    """Notebook 03's claims from ``seeded_claims``'s table, one finding per claim: its SE the test
    images' binomial part plus the seed part measured from the replicates' paired differences."""
    us = ours(t)
    if not len(us):
        return []
    why = (f"{int(us.replicate.nunique())} replicates, each its own source seed and fine-tuning seed (the same r), "
           f"{int(us.n_test.min())} test images (seeded_claims)")
    return [contrast("03", "CARTL", c.where, c.claim, c.a, c.b, c.col, paper_a=c.paper_a, paper_b=c.paper_b,
                     direction=c.direction, note=why) for c in seeded_claims_of(t)]


def replicated(read) -> list[tuple]:
    """The notebook's replicated tables, for the rule's A/A calibration (``rtlkit.suite.findings.calibration``):
    (name, our rows, the columns that make one configuration, the seed cells its floor is measured on)."""
    t = read("03_seeded_claims")
    if t is None or not len(ours(t)):
        return []
    return [("03_seeded_claims", ours(t), SEEDED_CONFIG, seed_cells(t))]


def seed_cells(t: pd.DataFrame) -> dict[str, tuple]:
    """Each replicated claim's arms as per-replicate values paired by replicate (claim -> (a, b)):
    what notebook 03's seed floor is measured on (``rtlkit.measure.stats.seed_floor``). A claim with fewer
    than ``stats.MIN_REPLICATES`` replicates, or whose arms do not hold the same ones, is left out."""
    out = {}
    for c in seeded_claims_of(t):
        a, b = c.a.sort_values("replicate"), c.b.sort_values("replicate")
        if len(a) >= MIN_REPLICATES and list(a.replicate) == list(b.replicate):
            out[f"{c.where}: {c.claim}"] = (a[c.col].to_numpy(dtype=float), b[c.col].to_numpy(dtype=float))
    return out


def summarise(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and std over seeds, in %, of accuracy and (min-over-attacks) robustness."""
    cols = ["clean_acc", "robust_acc", "robust_ce", "robust_cw"]
    g = df.groupby(by, dropna=False, sort=False)[cols].agg(["mean", "std"]).mul(100).round(2)
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    return g.reset_index()


def attack_disagreements(df: pd.DataFrame, points: float = 0.02) -> pd.DataFrame:
    """Models where CE-PGD and CW-PGD robustness differ by more than ``points``."""
    return df[df.ce_cw_gap > points]


def budget_sweep(profile: Profile, runtime: Runtime | None = None, progress: bool = True,
                 budgets: tuple[int, ...] = (6, 24, 60), seeds: tuple[int, ...] = (0, 1, 2), test_n: int = 1000,
                 k: int | None = None) -> pd.DataFrame:
    """Does NEFT's advantage over plain fine-tuning appear once it has the budget? Vanilla, AT + NEFT
    and CARTL at one k, on the profile's pair and its first extra pair, each fine-tuned for every
    budget in epochs-equivalent optimizer steps (budget x the target's steps per epoch), over
    ``seeds``, evaluated on ``test_n`` test images (robustness: per-example min over CE and CW)."""
    k = k or profile.cartl_ks[-1]
    rows = []
    for src, tgt in ((None, profile.target),) + tuple(profile.pairs[:1]):
        per_epoch = profile.finetune_steps(tgt) // profile.finetune.epochs
        pair = f"{(src or profile.source).label} -> {tgt.label}"
        for b in budgets:
            for m in ("vanilla", "AT + NEFT", "CARTL"):
                for s in seeds:
                    rows.append({**measure(profile, runtime, progress, m, k, s, test_n=test_n, target=tgt, source=src,
                                            steps=b * per_epoch),
                                 "pair": pair, "budget_epochs": b, "steps": b * per_epoch})
    return pd.DataFrame(rows)


def budget_verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """Per pair and budget: each method's mean and sd over seeds (in %), and whether NEFT's and
    CARTL's robustness gap over vanilla exceeds its seed-to-seed spread (the larger sd of the two)."""
    g = df.groupby(["pair", "budget_epochs", "method"], sort=False)[["clean_acc", "robust_acc"]].agg(["mean", "std"])
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    g = (g * 100).round(2).reset_index()
    out = []
    for (pair, b), sub in g.groupby(["pair", "budget_epochs"], sort=False):
        van = sub[sub.method == "vanilla"].iloc[0]
        for _, r in sub.iterrows():
            gap = r.robust_acc_mean - van.robust_acc_mean
            spread = max(r.robust_acc_std, van.robust_acc_std)
            out.append({**r.to_dict(), "rob_gap_vs_vanilla": round(gap, 2), "seed_spread": round(spread, 2),
                        "gap_exceeds_spread": bool(r.method != "vanilla" and abs(gap) > spread)})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- the paper's numbers

PAPER_SETTING = "paper: CIFAR-100 -> CIFAR-10, WRN-34-10, eps 8/255, PGD-100 (CARTL Sec. 7, App. B)"
_P = dict(source="paper", setting=PAPER_SETTING)
PAPER = {   # CARTL Tables 2-5, accuracy and robustness as fractions
    "table2": [dict(k=k, lam=lam, beta=beta, method="CARTL", clean_acc=a / 100, robust_acc=r / 100)
               for k, lam, row in ((4, 0.01, (86.09, 25.73, 86.08, 27.17, 85.64, 28.40)),
                                   (4, 0.005, (85.41, 25.75, 85.47, 27.14, 85.51, 28.47)),
                                   (6, 0.01, (87.78, 25.58, 87.92, 27.27, 87.96, 29.60)),
                                   (6, 0.005, (87.66, 25.97, 88.07, 27.64, 87.79, 30.94)),
                                   (8, 0.01, (91.85, 16.36, 91.63, 19.22, 91.55, 27.47)),
                                   (8, 0.005, (91.71, 17.62, 91.10, 21.60, 91.30, 29.34)))
               for beta, a, r in zip((1.0, 0.6, 0.4), row[0::2], row[1::2])],
    "table3": [dict(k=k, method=m, clean_acc=a / 100, robust_acc=r / 100)
               for m, row in (("vanilla", (83.22, 25.23, 86.92, 25.38, 90.82, 18.54)),
                              ("AT + NEFT", (83.72, 26.29, 86.87, 27.95, 90.92, 29.97)),
                              ("CARTL", (85.51, 28.47, 87.79, 30.94, 91.30, 29.34)))
               for k, a, r in zip((4, 6, 8), row[0::2], row[1::2])],
    "table4": [dict(pair=pair, k=6, method=m, clean_acc=a / 100, robust_acc=r / 100)
               for pair, row in (("CIFAR-100 -> SVHN (WRN-34-10)", (85.90, 6.67, 92.83, 17.64, 93.96, 22.21)),
                                 ("CIFAR-100 -> GTSRB (WRN-34-10)", (70.34, 15.85, 80.40, 30.25, 83.07, 47.34)),
                                 ("CIFAR-10 -> SVHN (WRN-28-4)", (94.32, 4.68, 94.86, 11.52, 94.76, 21.65)),
                                 ("GTSRB -> SVHN (WRN-28-4)", (81.80, 1.08, 93.91, 6.08, 94.07, 15.26)))
               for m, a, r in zip(("LwF", "vanilla", "CARTL"), row[0::2], row[1::2])],
    "table5": [dict(method="LwF", lam_d=ld, clean_acc=a / 100, robust_acc=r / 100)
               for ld, a, r in ((0.1, 74.87, 17.59), (0.01, 81.45, 16.67), (0.005, 84.86, 8.59), (0.001, 89.87, 0.22))],
}
PAPER_FIG5 = ("CARTL Fig. 5 (plot only, no numbers): on 50/20/10 % of CIFAR-10, CARTL keeps the best accuracy "
              "everywhere and the best robustness except at 10 %, where it still edges vanilla; LwF is lowest.")


def with_paper(ours: pd.DataFrame, *tables: str, setting: str = "") -> pd.DataFrame:
    """Our rows (source "rtlkit", with our setting) and the paper's rows of ``tables`` (source
    "paper", its setting named) in one tidy table, so the numbers face each other in the CSV."""
    paper = pd.DataFrame([{**r, **_P, "table": t} for t in tables for r in PAPER[t]])
    return pd.concat([ours.assign(source="rtlkit", setting=setting), paper], ignore_index=True)


# --------------------------------------------------------------------------- plots

METHOD_COLORS = {"vanilla": "tab:gray", "AT + NEFT": "tab:orange", "CARTL": "tab:red", "LwF": "tab:blue"}


def plot_heatmaps(grid: pd.DataFrame, title: str = ""):
    """CARTL Table 2 as heat maps: rows (k, lambda), columns beta; mean over seeds, in %."""
    fig, axes = plots.plt.subplots(1, 2, figsize=(10, 0.6 * grid[["k", "lam"]].drop_duplicates().shape[0] + 2))
    for ax, col, name in zip(axes, ["clean_acc", "robust_acc"], ["accuracy", "robustness (min CE, CW)"]):
        t = grid.groupby(["k", "lam", "beta"])[col].mean().mul(100).unstack("beta")
        t.index = [f"k={k}, λ={lam:g}" for k, lam in t.index]
        plots.sns.heatmap(t, annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar=False)
        ax.set_xlabel("NEFT β")
        ax.set_title(f"target {name} %")
    return plots.finish(fig, title)


def plot_method_bars(df: pd.DataFrame, x: str, title: str = "", order: list[str] | None = None):
    """Accuracy and robustness bars of the methods at each ``x`` (k or pair), +- 2 SE over seeds
    (none with one seed; the title says which)."""
    d = df.assign(accuracy=df.clean_acc * 100, robustness=df.robust_acc * 100,   # pair names wrap at the arrow,
                  **{x: df[x].astype(str).str.replace(" -> ", " →\n", regex=False)})  # so labels never overlap
    long = d.melt(id_vars=[x, "method"], value_vars=["accuracy", "robustness"], var_name="metric", value_name="%")
    hue_order = order or [m for m in METHOD_COLORS if m in set(df.method)]
    fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ["accuracy", "robustness"]):
        plots.sns.barplot(data=long[long.metric == metric], x=x, y="%", hue="method", hue_order=hue_order, ax=ax,
                    errorbar=plots.ERRORBAR, palette=METHOD_COLORS, capsize=0.1)
        ax.set_title(f"target {metric}" + (" (min CE, CW)" if metric == "robustness" else ""))
        ax.tick_params(axis="x", labelsize=8)
        if metric == "accuracy":
            ax.get_legend().remove()
        else:
            ax.legend(fontsize=8)
    return plots.finish(fig, title, plots.seeds_note(df))


def plot_tradeoff(ablation: pd.DataFrame, lwf: pd.DataFrame, title: str = ""):
    """CARTL Fig. 4: robustness against accuracy; vanilla and CARTL one point per k, LwF one per
    lambda_d; error bars are +- 2 SE over fine-tuning seeds (none with one seed)."""
    fig, ax = plots.plt.subplots(figsize=(6.4, 4.8))
    parts = [(ablation[ablation.method == m], m, "k") for m in ("vanilla", "CARTL")] + [(lwf, "LwF", "lam_d")]
    for df, method, key in parts:
        g = plots.seed_bars(df, key, ["clean_acc", "robust_acc"])
        ax.errorbar(g[("clean_acc", "mean")], g[("robust_acc", "mean")], xerr=g[("clean_acc", "err")],
                    yerr=g[("robust_acc", "err")], fmt="o-" if method != "LwF" else "s--", capsize=3,
                    color=METHOD_COLORS[method], label=method)
        for v, row in g.iterrows():
            ax.annotate(f"{'k' if key == 'k' else 'λd'}={v:g}" if key != "k" else f"k={v}",
                        (row[("clean_acc", "mean")], row[("robust_acc", "mean")]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("target accuracy %")
    ax.set_ylabel("target robustness % (min CE, CW)")
    ax.legend()
    ax.set_title((title or "accuracy-robustness trade-off") + "\n" + plots.seeds_note(pd.concat([ablation, lwf])),
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_low_data(df: pd.DataFrame, title: str = ""):
    """CARTL Fig. 5: accuracy and robustness against the fraction of target training data."""
    fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, name in zip(axes, ["clean_acc", "robust_acc"], ["accuracy", "robustness (min CE, CW)"]):
        for m, sub in df.groupby("method", sort=False):
            g = plots.seed_bars(sub, "fraction", [col])[col].sort_index()
            ax.errorbar([f"{f:.0%}" for f in g.index], g["mean"], yerr=g["err"], marker="o", capsize=3,
                        color=METHOD_COLORS.get(m), label=m)
        ax.set_xlabel("fraction of target training set (class-balanced)")
        ax.set_ylabel("%")
        ax.set_title(f"target {name}")
        ax.legend(fontsize=8)
    return plots.finish(fig, title, plots.seeds_note(df))


def plot_budget(df: pd.DataFrame, title: str = ""):
    """Robustness and accuracy against the fine-tuning budget, one panel pair per source -> target
    pair, mean and +- 2 SE over seeds per method."""
    pairs = list(dict.fromkeys(df.pair))
    fig, axes = plots.plt.subplots(len(pairs), 2, figsize=(11, 3.8 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs):
        sub = df[df.pair == pair]
        for ax, col, name in zip(row, ["clean_acc", "robust_acc"], ["accuracy", "robustness (min CE, CW)"]):
            for m, d in sub.groupby("method", sort=False):
                g = plots.seed_bars(d, "budget_epochs", [col])[col].sort_index()
                ax.errorbar([str(b) for b in g.index], g["mean"], yerr=g["err"], marker="o", capsize=3,
                            color=METHOD_COLORS.get(m), label=m)
            ax.set_xlabel("fine-tuning budget (epochs-equivalent steps)")
            ax.set_ylabel("%")
            ax.set_title(f"{pair}: target {name}", fontsize=9)
            ax.legend(fontsize=8)
    return plots.finish(fig, title, plots.seeds_note(df))


def plot_seeded(t: pd.DataFrame, title: str = ""):
    """The replicated claims as a forest plot: each claim's effect (points) with its 95 % interval
    (test images and seeds, t quantile), the paper's effect where it prints one (a cross), and the
    verdict by the findings rule."""
    rows, us = seeded_findings(t), ours(t)
    fig, ax = plots.plt.subplots(figsize=(12, 0.42 * max(len(rows), 1) + 1.8))
    colors = {"agrees": "tab:green", "disagrees": "tab:red", "unresolved": "tab:gray", "not a test": "tab:olive",
              "equivalent": "tab:blue", "different": "tab:orange"}
    for i, f in enumerate(rows):
        lo, hi = f.interval()
        ax.errorbar(100 * f.effect, i, xerr=[[100 * (f.effect - lo)], [100 * (hi - f.effect)]], fmt="o", capsize=3,
                    color=colors[f.verdict],
                    label=f.verdict if f.verdict not in ax.get_legend_handles_labels()[1] else None)
        if f.paper_effect is not None:
            ax.plot(100 * f.paper_effect, i, "x", color="black",
                    label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{f.where}: {f.claim}" for f in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("effect, points (ours: mean over replicates, 95 % interval with the seeds' spread)")
    if rows:
        ax.legend(fontsize=7, loc="best")
    note = f"{us.replicate.nunique()} replicates (source and fine-tuning seed r), {int(us.n_test.min())} test images" \
        if len(us) else "no rows"
    return plots.finish(fig, title, note)


# --------------------------------------------------------------------------- panel

def panel(grid: pd.DataFrame, ablation: pd.DataFrame, lwf: pd.DataFrame, interactive: bool = True):
    """Pick lambda, beta, k and method; re-plot the trade-off and the grid from cached results."""
    if not interactive:
        return None
    import ipywidgets as W
    lam = widgets.multi(sorted(grid.lam.unique()), "λ")
    beta = widgets.multi(sorted(grid.beta.unique()), "β")
    ks = widgets.multi(sorted(grid.k.unique()), "k")
    methods = widgets.multi(["vanilla", "AT + NEFT", "CARTL"], "method")
    out = W.Output()

    def redraw(*_):
        g = grid[grid.lam.isin(lam.value) & grid.beta.isin(beta.value) & grid.k.isin(ks.value)]
        a = ablation[ablation.k.isin(ks.value) & ablation.method.isin(methods.value)]
        with out:
            out.clear_output(wait=True)
            if len(g):
                plot_heatmaps(g)
            else:
                widgets.nothing_selected("λ, β and k for the Table 2 grid")
            if len(a):
                plot_method_bars(a, "k")
                plot_tradeoff(a, lwf)
            else:
                widgets.nothing_selected("k and method for the Table 3 bars and the trade-off")
            plots.plt.show()

    for w in (lam, beta, ks, methods):
        w.observe(redraw, "value")
    redraw()
    return widgets.arrange([lam, beta, ks, methods], out)


# --------------------------------------------------------------------------- findings

def findings(read) -> list:
    """CARTL Tables 2-5 and Figs. 4-5 as findings, from notebook 03's CSVs (one fine-tuning seed
    at ``quick`` on the CPU, and the replicated claims of ``seeded_claims``). The paper's effects
    come from the paper's rows in the same CSVs. ``bench.budget``'s figure (03_budget) is a budget
    study made apart from ``make figures``, in another run and mode: it carries no verdict."""
    out = []

    def paper_rob(t, col="robust_acc", **eq):
        p = pick(theirs(t), **eq)
        return float(p[col].iloc[0]) if len(p) else None

    t = read("03_table2_grid")
    if t is not None:
        us = ours(t)
        for k in sorted(us.k.dropna().unique()):
            for lam in sorted(us.lam.dropna().unique()):
                betas = sorted(pick(us, k=k, lam=lam).beta.dropna().unique())
                if len(betas) < 2:
                    continue
                lo, hi = betas[0], betas[-1]
                a, b = pick(us, k=k, lam=lam, beta=lo), pick(us, k=k, lam=lam, beta=hi)
                out.append(contrast("03", "CARTL", "Table 2", f"a smaller NEFT beta raises robustness (beta {lo:g} against "
                                    f"{hi:g}, lambda {lam:g}, k = {k:g})", a, b,
                                    paper_a=paper_rob(t, k=k, lam=lam, beta=lo), paper_b=paper_rob(t, k=k, lam=lam, beta=hi),
                                    direction=1))
    t = read("03_table3_ablation")
    if t is not None:
        us = ours(t)
        for k in sorted(us.k.dropna().unique()):
            for m1, m0, what in (("AT + NEFT", "vanilla", "NEFT raises the robustness of plain fine-tuning"),
                                 ("CARTL", "AT + NEFT", "an FDM source raises NEFT's robustness further")):
                a, b = pick(us, k=k, method=m1), pick(us, k=k, method=m0)
                if len(a) and len(b):
                    out.append(contrast("03", "CARTL", "Table 3", f"{what} (k = {k:g})", a, b,
                                        paper_a=paper_rob(t, k=k, method=m1), paper_b=paper_rob(t, k=k, method=m0),
                                        direction=1))
    t = read("03_fig4_tradeoff")
    if t is not None:
        us, lw = ours(t), pick(ours(t), method="LwF")
        if len(lw) and lw.lam_d.nunique() >= 2:
            lo, hi = lw.lam_d.min(), lw.lam_d.max()
            a, b = pick(lw, lam_d=lo), pick(lw, lam_d=hi)
            pl = lambda lam, col: paper_rob(t, col, method="LwF", lam_d=lam)   # noqa: E731
            out += [contrast("03", "CARTL", "Table 5", f"LwF loses robustness as lambda_d falls ({lo:g} against {hi:g})",
                             a, b, paper_a=pl(lo, "robust_acc"), paper_b=pl(hi, "robust_acc"), direction=-1),
                    contrast("03", "CARTL", "Table 5", f"LwF gains accuracy as lambda_d falls ({lo:g} against {hi:g})",
                             a, b, "clean_acc", paper_a=pl(lo, "clean_acc"), paper_b=pl(hi, "clean_acc"), direction=1)]
            c = pick(us, method="CARTL", k=us[us.method == "CARTL"].k.max()) if (us.method == "CARTL").any() else us.iloc[:0]
            if len(c):
                k = float(c.k.iloc[0])
                out.append(contrast("03", "CARTL", "Fig. 4", f"CARTL is more robust than LwF (k = {k:g} against lambda_d {hi:g})",
                                    c, b, paper_a=paper_rob(t, method="CARTL", k=k), paper_b=pl(hi, "robust_acc"),
                                    direction=1))
    t = read("03_fig5_low_data")
    if t is not None:
        us = ours(t)
        for frac in sorted(us.fraction.dropna().unique(), reverse=True):
            a, b = pick(us, fraction=frac, method="CARTL"), pick(us, fraction=frac, method="vanilla")
            if len(a) and len(b):
                out.append(contrast("03", "CARTL", "Fig. 5", f"CARTL is more robust than vanilla fine-tuning with "
                                    f"{100 * frac:g} % of the target", a, b, direction=1))
    t = read("03_seeded_claims")
    if t is not None:
        out += seeded_findings(t)
    t = read("03_table4_pairs")
    if t is not None:   # the paper's pairs are not ours: its Table 4 gives the direction
        us = ours(t)
        for other in ("vanilla", "LwF"):
            for pair in us.pair.dropna().unique():
                a, b = pick(us, pair=pair, method="CARTL"), pick(us, pair=pair, method=other)
                if len(a) and len(b):
                    out.append(contrast("03", "CARTL", "Table 4", f"CARTL is more robust than {other} ({pair})", a, b,
                                        direction=1))
    return out
