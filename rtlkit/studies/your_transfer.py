"""Notebook 00 · your transfer: your source (a checkpoint file you have, or a cached rtlkit source)
and your target (a folder of images or an ``.npz``) through the kit's studies: the source's own
report card, the last-k sweep (CARTL Fig. 3), the BN policies (CARTL Table 1), NEFT and a linear
probe against plain fine-tuning (CARTL Table 3, Shafahi Tables 2-3), and randomized smoothing's
certificate where you say the source was trained for it (Vaishnavi Table 5).

Every run is a cached rtlkit run (``runs.ExternalSource`` for a checkpoint: its sha256 keys the
cache), so a rerun is a cache hit and ``rtlkit.suite.plan`` can count the work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from rtlkit.core import data as D
from rtlkit.studies import plots, widgets
from rtlkit.measure.card import Card
from rtlkit.runs.card import get_or_card
from rtlkit.core.data import REPO_ROOT
from rtlkit.core.errors import check, check_real, is_int
from rtlkit.train.methods.neft import NEFT
from rtlkit.train.methods.probes import ProbeHead, ProbeTraining
from rtlkit.core.models import parse_spec
from rtlkit.studies.profiles import Profile, step_size
from rtlkit.runs.specs import DataSpec, ExternalSource, HeadRun, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_certify, get_or_evaluate
from rtlkit.runs.store import run_dir
from rtlkit.measure.attacks import PGD
from rtlkit.core.runtime import Runtime
from rtlkit.measure.smoothing import Smoothing
from rtlkit.train.transfer import BN_CASES, TransferPolicy
from rtlkit.studies.common import Study, row

STUDY = Study("00_your_transfer", "00 your transfer",
              steps=())

FIGURES = REPO_ROOT / "figures" / "yours"   # ignored by git: your figures never replace the committed ones


def figures_dir() -> str:
    """Where 00 writes without a ``figures_dir``: ``yours/`` under RTLKIT_FIGURES where that is set
    (the tests' and a batch run's folder), else ``figures/yours/`` (ignored by git)."""
    env = os.environ.get("RTLKIT_FIGURES")
    return str(Path(env) / "yours" if env else FIGURES)


@dataclass(frozen=True)
class Setup:
    """Your transfer as the kit's runs: the source, the target, the threat model (eps in [0, 1]
    pixels, norm), the ks to sweep (and the k the BN and method comparisons use), the profile's
    fine-tuning and PGD-20-style evaluation at your eps, and a smoothing where the source was
    trained for it (None: no certificate)."""
    profile: Profile
    source: ExternalSource | SourceRun
    target: DataSpec
    eps: float
    norm: str
    ks: tuple
    k: int
    smoothing: Smoothing | None = None

    @property
    def attacks(self) -> tuple:
        steps = self.profile.eval_attacks[0].steps
        return tuple(PGD(eps=self.eps, steps=steps, step_size=step_size(self.eps, steps), norm=self.norm, loss=loss)
                     for loss in ("ce", "cw"))

    @property
    def n_blocks(self) -> int:
        return self.source.model.n_blocks

    @property
    def label(self) -> str:
        src = Path(self.source.path).name if isinstance(self.source, ExternalSource) else self.source.data.label
        return f"{src} ({self.source.model.name}) -> {self.target.label}, {self.norm} eps = {self.eps:g}"


def _default_ks(n: int) -> tuple:
    return tuple(sorted({1, 2, max(1, n // 2), n - 1})) + ("all",)


def setup(profile: Profile, source_arch: str | None = None, source_path: str | None = None,
          source_format: str = "torchvision", source_data: str | None = None, source_size: int | None = None,
          target_dir: str | None = None, target_size: int | None = None, eps: float | None = None,
          norm: str = "linf", ks=None, smoothing_sigma: float | None = None) -> Setup:
    """The notebook's parameters as runs, every one checked before any compute: ``source_path``
    (with ``source_arch``, e.g. "resnet50", and ``source_format``) names a checkpoint, else the
    profile's own robust source is used; ``source_data``: a dataset name for the source's own card;
    ``target_dir``: an ImageFolder directory or an ``.npz`` (else the profile's target);
    ``target_size`` resizes and centre-crops it; the source sees ``source_size`` pixels (default:
    the target's size); ``ks``: block counts or "all" (default 1, 2, n/2, n - 1, all)."""
    check(norm in ("linf", "l2"), f"norm must be 'linf' or 'l2', not {norm!r}")
    eps = profile.eps if eps is None else eps
    check_real("eps", eps, 0, 1 if norm == "linf" else None, low_open=True)
    if target_dir:
        target = DataSpec(D.your_files(target_dir, size=target_size))
    else:
        target = profile.target
    check(source_size is None or (is_int(source_size) and source_size >= 8),
          f"source_size must be a whole number of pixels >= 8, not {source_size!r}")
    if source_path:
        check(source_arch is not None, "source_path needs source_arch (e.g. resnet50, resnet18, wrn-28-10)")
        info = target.train().info
        sdata = DataSpec(source_data) if source_data else None
        # an RGB checkpoint (a grey target reaches it as three equal channels); with source_data, its shape
        source = ExternalSource(parse_spec(source_arch), str(source_path), source_format, data=sdata,
                                channels=3, size=source_size or info.size)
    else:
        for name, value in (("source_arch", source_arch), ("source_size", source_size), ("source_data", source_data)):
            check(value is None, f"{name} without source_path: it describes a checkpoint; give the checkpoint's path "
                  "too, or leave it out to use the profile's robust source")
        source = profile.source_run(0)
    n = source.model.n_blocks
    ks = _default_ks(n) if ks is None else tuple(ks) if isinstance(ks, (list, tuple)) else (ks,)
    for k in ks:
        check(k == "all" or (isinstance(k, int) and 1 <= k <= n), f"k={k!r}: 1..{n} or 'all' for {source.model.name}")
    inner = [k for k in ks if k != "all" and k < n]
    check(inner, f"ks {ks}: give at least one k below {n}, for the BN and method comparisons (a frozen part)")
    k = inner[len(inner) // 2]
    sm = None
    if smoothing_sigma is not None:
        pt = profile.pretraining
        sm = Smoothing(sigma=smoothing_sigma, n0=pt.smoothing_n0, n=pt.smoothing_n, alpha=pt.smoothing_alpha) \
            if pt is not None else Smoothing(sigma=smoothing_sigma)
    return Setup(profile, source, target, eps, norm, ks, k, sm)


def _transfer(s: Setup, k, bn_stats="reuse", bn_affine="freeze", neft=None) -> TransferRun:
    return TransferRun(s.source, s.target, TransferPolicy(k=k, bn_stats=bn_stats, bn_affine=bn_affine),
                       s.profile.finetune, 0, neft)


def _evaluate(run, s: Setup, runtime, progress) -> dict:
    """PGD (CE and CW) on the whole target test set."""
    return get_or_evaluate(run, list(s.attacks), runtime, progress)


def source_card(s: Setup, runtime: Runtime | None = None, progress: bool = True) -> dict:
    """The source's own report card on its own test data (rtlkit.measure.card), or {} where the source has
    none (a checkpoint given without ``source_data``)."""
    if isinstance(s.source, ExternalSource) and s.source.data is None:
        return {}
    card = replace(s.profile.card or Card(eps=s.eps), eps=s.eps, norm=s.norm)
    return get_or_card(s.source, card, runtime, progress, test_n=s.profile.card_test_n)


def last_k(s: Setup, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Fine-tune the last k blocks on your target (BN statistics reused, affine frozen: CARTL App.
    C): clean and PGD (CE and CW, per-example minimum) accuracy on its test set, per k."""
    return pd.DataFrame([row(_evaluate(_transfer(s, k), s, runtime, progress), k=str(k),
                             run=run_dir(_transfer(s, k), runtime).name) for k in s.ks])


def bn_policies(s: Setup, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """CARTL Table 1's four BN cases at ``s.k``."""
    rows = []
    for case in BN_CASES:
        pol = TransferPolicy.bn_case(case, s.k)
        run = TransferRun(s.source, s.target, pol, s.profile.finetune, 0)
        rows.append(row(_evaluate(run, s, runtime, progress), case=case, k=s.k, bn=pol.bn_label))
    return pd.DataFrame(rows)


def methods(s: Setup, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Plain fine-tuning of the last ``s.k`` blocks against NEFT (CARTL Sec. 5.2, at the profile's
    beta) on the same blocks, and a linear probe on the frozen penultimate features (Shafahi)."""
    beta = s.profile.cartl_choice[1]
    runs = [("fine-tune", _transfer(s, s.k)), (f"NEFT (beta = {beta:g})", _transfer(s, s.k, neft=NEFT(beta))),
            ("linear probe", HeadRun(s.source, s.target, ProbeHead(), ProbeTraining(), 0))]
    return pd.DataFrame([row(_evaluate(run, s, runtime, progress), method=name, k=1 if name == "linear probe" else s.k)
                         for name, run in runs])


def certified(s: Setup, runtime: Runtime | None = None, progress: bool = True) -> pd.DataFrame:
    """Where the source was trained for smoothing (``smoothing_sigma``): Cohen's certificate of the
    fine-tuned model at ``s.k`` at radius eps (L2), else an empty table."""
    if s.smoothing is None:
        return pd.DataFrame()
    c = get_or_certify(_transfer(s, s.k), s.smoothing, s.eps, runtime, progress)
    if not c:   # rtlkit.suite.plan's recording
        return pd.DataFrame()
    return pd.DataFrame([{"k": s.k, "sigma": s.smoothing.sigma, "radius": s.eps,
                          **{k: c[k] for k in ("smoothed_acc", "certified_acc", "acr", "abstain", "n_test")}}])


def planned(s: Setup) -> tuple[str, str, list]:
    """What the notebook will train and evaluate, for ``rtlkit.suite.plan.cost``: the profile's and the
    model's names and the notebook's steps as callables (recorded there, nothing run)."""
    return s.profile.name, s.source.model.name, [lambda f=f: f(s, None, False)
                                                  for f in (source_card, last_k, bn_policies, methods, certified)]


# --------------------------------------------------------------------------- plots and the panel

def plot_last_k(df: pd.DataFrame, title: str = ""):
    fig, ax = plots.plt.subplots(figsize=(6.4, 3.6))
    ax.plot(df.k.astype(str), df.clean_acc, "o-", label="clean")
    ax.plot(df.k.astype(str), df.robust_acc, "s-", label="PGD (CE, CW)")
    ax.set_xlabel("k (last blocks fine-tuned)")
    ax.set_ylabel("target accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    return plots.finish(fig, title, f"1 seed, n = {int(df.n_test.iloc[0])} test images (binomial SE ~ "
                                    f"{(0.25 / df.n_test.iloc[0]) ** 0.5:.3f})")


def plot_bars(df: pd.DataFrame, by: str, title: str = ""):
    fig, ax = plots.plt.subplots(figsize=(6.4, 3.6))
    long = df.melt(id_vars=[by], value_vars=["clean_acc", "robust_acc"], var_name="metric", value_name="accuracy")
    plots.grouped_bars(ax, long, by, "metric", "accuracy")
    ax.set_ylabel("target accuracy %")
    ax.legend(fontsize=7)
    return plots.finish(fig, title, f"1 seed, n = {int(df.n_test.iloc[0])} test images")


def plot_source_card(result: dict, title: str = ""):
    return plots.plot_card(result, title)


def panel(tables: dict, interactive: bool = True):
    """Pick a table (last-k, BN policies, methods): re-plot it and show its numbers."""
    if not interactive:
        return None
    import ipywidgets as W
    tables = {k: v for k, v in tables.items() if isinstance(v, pd.DataFrame) and len(v)}
    if not tables:
        print("No results to show.")
        return None
    pick = W.Dropdown(options=list(tables), description="result", layout=W.Layout(width="auto"))
    out = W.Output()
    by = {"last-k": None, "BN policies": "case", "methods": "method"}

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            if pick.value not in tables:
                widgets.nothing_selected("result")
                return
            df = tables[pick.value]
            if by.get(pick.value) is None:
                plot_last_k(df, pick.value)
            else:
                plot_bars(df, by[pick.value], pick.value)
            plots.plt.show()
            print(df.drop(columns=[c for c in ("attacks", "run") if c in df]).to_string(index=False))

    pick.observe(redraw, "value")
    redraw()
    return widgets.arrange([pick], out)
