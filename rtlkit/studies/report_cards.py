"""Notebook 07 · report cards: AutoAttack's standard suite, certified radius and gradient-masking
checks for the headline model of each study (01-06), next to the PGD-20 numbers those studies rest
on. The card itself (the cascade, the checks) lives in ``rtlkit.measure.card``, its cache in ``rtlkit.runs.card``.
"""
from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtlkit.studies import cartl, plots, pretraining, provable, shafahi, widgets
from rtlkit.measure.card import CHECKS, Card
from rtlkit.runs.card import get_or_card
from rtlkit.studies.profiles import Profile
from rtlkit.runs.store import run_dir
from rtlkit.core.runtime import Runtime
from rtlkit.train.transfer import TransferPolicy
from rtlkit.measure.verdicts import Finding
from rtlkit.studies.common import Study

STUDY = Study("07_report_cards", "07 report cards (AutoAttack against PGD-20)",
              steps=("report_cards", "masking_checks", "cards"))


@dataclass(frozen=True)
class Headline:
    """One study's headline model: the cached run, the threat model its study measures it in
    (norm, eps in [0, 1] pixels), the study's own attack label, and the surrogate source for the
    transfer check (None where the model has no separate source, or shares its extractor)."""
    name: str
    study: str
    run: object
    norm: str
    eps: float
    smoothing: object | None = None
    source: object | None = None


def headline(profile: Profile, runtime=None, progress: bool = True) -> list[Headline]:
    """The headline models of 01-06, built by each study's own run builder (so that after 01-06 every
    one is a cache hit): the robust source; 01's fine-tune, 03's AT + NEFT and CARTL, all at 03's
    largest k (one k, so the three cards compare; fixed by the profile, not picked from 01's
    results, so that rtlkit.suite.plan names the card before anything has run); 03's LwF; 06's linear
    probe; 05's 1-layer wn Lipschitz head (adv mode, main pair); and 04's CR-pre-trained,
    CR-fine-tuned model."""
    src = profile.source_run(0)
    ck = profile.cartl_ks[-1]
    ft = profile.transfer_run(TransferPolicy(k=ck, bn_stats="reuse", bn_affine="freeze"), 0)
    neft, _ = cartl.method_run(profile, "AT + NEFT", ck, 0)
    cart, _ = cartl.method_run(profile, "CARTL", ck, 0)
    lwf, _ = cartl.method_run(profile, "LwF", "all", 0)
    out = [Headline("robust source", "01", src, "linf", profile.eps),
           Headline(f"fine-tune last {ck}", "01", ft, "linf", profile.eps, source=src),
           Headline(f"AT + NEFT k={ck}", "03", neft, "linf", profile.eps, source=neft.source),
           Headline(f"CARTL k={ck}", "03", cart, "linf", profile.eps, source=cart.source),
           Headline("LwF", "03", lwf, "linf", profile.eps, source=lwf.source)]
    if profile.shafahi is not None:
        probe = shafahi.probe_run(profile, "robust", profile.target)
        out.append(Headline("linear probe", "06", probe, "linf", profile.eps))
    if profile.provable is not None:
        pv = profile.provable
        if pv.tap is None and "adv" in pv.pv_modes:
            head = provable.head_run(profile, "adv", pv.main_pair, "target", "wn", 1, pv.head_seeds[0])
            out.append(Headline("wn Lipschitz head", "05", head, "linf", pv.pv_eps))
    if profile.pretraining is not None:
        pt = profile.pretraining
        tgt = pt.pt_targets[0]
        cr = pretraining.transfer_run(profile, "CR", "CR", tgt, 0)
        out.append(Headline("CR pre-train + CR fine-tune", "04", cr, "l2", pt.l2_eps,
                            smoothing=pretraining.smoothing(pt), source=cr.source))
    return out


def card_of(profile: Profile, h: Headline) -> Card:
    """The profile's card settings at the model's own threat model."""
    return dataclasses.replace(profile.card or Card(eps=h.eps), eps=h.eps, norm=h.norm)


def _measure(profile: Profile, runtime, progress) -> list[tuple[Headline, dict]]:
    out = []
    for h in headline(profile, runtime, progress):
        res = get_or_card(h.run, card_of(profile, h), runtime, progress, test_n=profile.card_test_n,
                          surrogate_run=h.source, smoothing=h.smoothing)
        out.append((h, res))
    return out


def _keys(h: Headline, runtime) -> dict:
    return dict(model=h.name, study=h.study, run=run_dir(h.run, runtime).name, norm=h.norm, eps=h.eps)


def report_cards(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """One card per headline model, as tidy rows: model, study, run, threat model, then each step of
    the cascade (clean, PGD-CE, PGD-CW, APGD-CE, APGD-T, FAB-T, Square) with how many examples that
    attack alone took and the accuracy after it (+- its binomial SE); then, per model, the studies'
    PGD-20 (CE and CW) against AutoAttack's whole cascade with the paired SE of their difference
    (the same images: SE of the per-example difference; on the PGD-20 row), and where the model was trained for
    smoothing its certified accuracy at eps and ACR."""
    runtime = runtime or Runtime()
    rows = []
    for h, res in _measure(profile, runtime, progress):
        if not res:   # rtlkit.suite.plan's recording mode
            continue
        t = res["table"]
        pgd, aa = t.pgd_correct.astype(float), t.robust_correct.astype(float)
        d = (pgd - aa).to_numpy()
        paired = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        keys = _keys(h, runtime)
        for r in res["summary"].itertuples():
            rows.append(dict(**keys, step=r.step, took=r.took, accuracy=r.accuracy, se=r.se, n_test=r.n_test))
        rows.append(dict(**keys, step="PGD-20 (CE, CW)", took=np.nan, accuracy=float(pgd.mean()),
                         se=float(np.sqrt(pgd.mean() * (1 - pgd.mean()) / len(t))), n_test=len(t),
                         autoattack_minus_pgd=float(aa.mean() - pgd.mean()), paired_se=paired))
        if "certified" in res:
            c = res["certified"]
            rows.append(dict(**keys, step="certified (smoothing)", took=np.nan, accuracy=c["certified_acc"],
                             se=float(np.sqrt(c["certified_acc"] * (1 - c["certified_acc"]) / c["n_test"])),
                             n_test=c["n_test"], acr=c["acr"], smoothed_acc=c["smoothed_acc"]))
    return pd.DataFrame(rows)


def masking_checks(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """The six gradient-masking checks of every headline model (from the same cached cards):
    model, check, status (pass / warn / none), value, threshold, detail."""
    runtime = runtime or Runtime()
    rows = []
    for h, res in _measure(profile, runtime, progress):
        if not res:
            continue
        for r in res["checks"].itertuples(index=False):
            rows.append(dict(**_keys(h, runtime), **r._asdict(), warn=int(r.status == "warn"), n_test=res["n_test"]))
    return pd.DataFrame(rows)


def cards(profile: Profile, runtime: Runtime | None = None, progress: bool = True) -> dict:
    """name -> the whole card result of each headline model (for the per-model figures and the panel)."""
    return {h.name: res for h, res in _measure(profile, runtime, progress or False) if res}


def overstatement(cards_df: pd.DataFrame) -> pd.DataFrame:
    """Per model: clean, the studies' PGD-20 (CE and CW), AutoAttack's cascade, the difference with
    its paired SE, and whether AutoAttack lowers PGD-20 by more than 2 SE."""
    rows = []
    for (model, study), g in cards_df.groupby(["model", "study"], sort=False):
        s = g.set_index("step")
        diff, se = s.loc["PGD-20 (CE, CW)", "autoattack_minus_pgd"], s.loc["PGD-20 (CE, CW)", "paired_se"]
        rows.append(dict(model=model, study=study, clean=s.loc["clean", "accuracy"], pgd20=s.loc["PGD-20 (CE, CW)", "accuracy"],
                         autoattack=s.loc["PGD-20 (CE, CW)", "accuracy"] + diff, aa_minus_pgd=diff, paired_se=se,
                         lowered=bool(-diff > 2 * se) if se == se else bool(diff < 0), n_test=int(s.loc["clean", "n_test"])))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plots

def plot_pgd_vs_autoattack(cards_df: pd.DataFrame, title: str = ""):
    """Per model: clean, the studies' PGD-20 (CE and CW) and AutoAttack's cascade, +- 2 SE (binomial,
    over the test images; one seed)."""
    import matplotlib.pyplot as plt
    o = overstatement(cards_df)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(o)), 3.8))
    x = np.arange(len(o))
    n = o.n_test.to_numpy()
    for i, (col, label, color) in enumerate((("clean", "clean", "tab:gray"), ("pgd20", "PGD-20 (CE, CW)", "tab:blue"),
                                              ("autoattack", "AutoAttack cascade", "tab:red"))):
        v = o[col].to_numpy()
        ax.bar(x + (i - 1) * 0.27, 100 * v, 0.27, yerr=200 * np.sqrt(v * (1 - v) / n), capsize=2, label=label, color=color)
    for i, r in enumerate(o.itertuples()):
        ax.text(i + 0.27, 100 * r.autoattack + 3, f"{100 * r.aa_minus_pgd:+.1f}\n+-{200 * r.paired_se:.1f}", ha="center", fontsize=7)
    ax.set_xticks(x, [textwrap.fill(m, 14) + f"\n({s})" for m, s in zip(o.model, o.study)], fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 125)   # the legend in one row above the bars and their labels (it hid the last model's)
    ax.legend(fontsize=7, loc="upper left", ncol=3, frameon=False)
    return plots.finish(fig, title, "1 seed; bars +- 2 SE over the test images; label: AutoAttack - PGD-20 in points, +- 2 paired SE")


STATUS_COLOR = {"pass": 0.0, "warn": 1.0, "none": 0.5}


def plot_masking(checks_df: pd.DataFrame, title: str = ""):
    """The masking-check grid: models down, checks across; green pass, red warn, grey none (the
    check does not apply), with the value."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    models = list(dict.fromkeys(checks_df.model))
    grid = np.full((len(models), len(CHECKS)), np.nan)
    text = [["" for _ in CHECKS] for _ in models]
    for r in checks_df.itertuples():
        i, j = models.index(r.model), CHECKS.index(r.check)
        grid[i, j] = STATUS_COLOR[r.status]
        text[i][j] = r.status + ("" if r.value != r.value else f"\n{r.value:.3f}")
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(models) + 1.6))
    ax.grid(False)
    ax.imshow(grid, cmap=ListedColormap(["#8fd18f", "#cccccc", "#f08080"]), vmin=0, vmax=1, aspect="auto")
    for i in range(len(models)):
        for j in range(len(CHECKS)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(CHECKS)), [c.replace(" ", "\n", 2) for c in CHECKS], fontsize=7)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    return plots.finish(fig, title, "value: the check's number (rise, accuracy, share or drop); thresholds in the CSV")


def plot_cards(results: dict, title: str = ""):
    """Every model's cascade in one figure: accuracy after each attack, +- 2 SE."""
    import matplotlib.pyplot as plt
    names = list(results)
    cols = min(4, len(names))
    rows_ = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.8 * rows_), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        s = results[name]["summary"]
        ax.bar(range(len(s)), 100 * s.accuracy, yerr=200 * s.se, capsize=2,
               color=["tab:gray"] + ["tab:red"] * (len(s) - 1))
        for i, r in s.iterrows():
            if i:
                ax.text(i, 100 * r.accuracy + 2, f"-{r.took}", ha="center", fontsize=6)
        ax.set_xticks(range(len(s)), s.step, rotation=45, fontsize=6)
        warns = [c.split(" ")[0] for c, st in zip(results[name]["checks"].check, results[name]["checks"].status) if st == "warn"]
        ax.set_title(f"{name}\n{results[name]['card'].label}" + (f"; warns {','.join(warns)}" if warns else ""), fontsize=7)
        ax.set_ylim(0, 110)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("accuracy after each attack (%)")
    return plots.finish(fig, title, "survivors-only cascade; -n: examples that attack alone took; bars +- 2 SE over the test images")


def panel(results: dict, interactive: bool = True):
    """Pick a model: its card (the cascade and the checks)."""
    if not interactive:
        return None
    import ipywidgets as W
    if not results:
        print("No cards to show.")
        return None
    pick = W.Dropdown(options=list(results), description="model", layout=W.Layout(width="auto"))
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            if pick.value not in results:
                widgets.nothing_selected("model")
                return
            plots.plot_card(results[pick.value], title=pick.value)
            plots.plt.show()
            print(results[pick.value]["checks"][["check", "status", "detail"]].to_string(index=False))

    pick.observe(redraw, "value")
    redraw()
    return widgets.arrange([pick], out)


# --------------------------------------------------------------------------- findings

def findings(read) -> list:
    """Per headline model: does AutoAttack's cascade lower the studies' PGD-20 (Croce & Hein 2020:
    PGD overstates robustness)? The paired SE over the same test images; one seed, and no seed part:
    the question is about the model at hand, not its training."""
    t = read("07_report_cards")
    if t is None:
        return []
    t = t[t.step == "PGD-20 (CE, CW)"]
    out = []
    for r in t.itertuples():
        model, d, pgd = r.model, float(r.autoattack_minus_pgd), float(r.accuracy)
        se = float(r.paired_se) if r.paired_se == r.paired_se else 0.0
        out.append(Finding("07", "Croce & Hein 2020", "AutoAttack vs PGD-20",
                           f"AutoAttack's standard suite lowers the PGD-20 robust accuracy of {model} ({r.study})",
                           None, d, se, int(r.n_test), 1, direction=-1,
                           ours=f"PGD-20 {pgd:.3f}, AutoAttack {pgd + d:.3f}",
                           note="paired SE over the same test images; an unresolved row means PGD-20 stands here. "
                                "A measurement, not a test: the cascade starts from PGD-20's survivors, so it can "
                                "only lower PGD-20's accuracy", scope="beyond",
                           seed_source="none"))   # one fixed model's two attacks: no training noise enters
    return out
