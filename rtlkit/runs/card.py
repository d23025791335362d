"""A run's report card, cached: the cascade's and the masking checks' per-example tables as
cached tables of the run (``get_or_table``), sha-checked, locked and resumable one table at a time;
the card itself is ``rtlkit.measure.card``."""
from __future__ import annotations

from types import SimpleNamespace

import torch.nn as nn

from rtlkit.core.errors import check
from rtlkit.core.runtime import Runtime
from rtlkit.core import data as D
from rtlkit.measure.card import Card, cascade, checks, masking, summary
from rtlkit.runs.cache import check_untapped, get_or_certify, get_or_table, get_or_train, planning


def _num_classes(run) -> int:
    return run.test_data().info.num_classes


def check_inputs(run, card: Card) -> None:
    """Every setting that can be wrong, before any attack (a run that cannot be attacked, a card
    that cannot run on the run's classes)."""
    check(isinstance(card, Card), f"card must be a rtlkit.measure.card.Card, not {type(card).__name__}")
    check_untapped(run)
    c = _num_classes(run)
    for _, a in card.attacks(c):
        if hasattr(a, "check_classes"):
            a.check_classes(c)


def get_or_card(run, card: Card, runtime: Runtime | None = None, progress: bool = True, test_n: int | None = None,
                surrogate_run=None, smoothing=None, batch_size: int = 500) -> dict:
    """The card of a cached (or trainable) run on ``test_n`` class-balanced test images: its
    per-example cascade and masking tables (each cached beside the run, sha-checked, locked,
    resumable one table at a time), the summary rows, the checks, and with ``smoothing`` the
    randomized-smoothing certificate at eps (L2: the certificate's radius). ``surrogate_run``:
    the source for the transfer check."""
    check_inputs(run, card)
    runtime = runtime or Runtime()
    test = run.test_data()
    if test_n:
        test = D.subset(test, test_n, run.data.seed)
    n, c = len(test), test.info.num_classes
    key = {"card": card, "test_n": test_n, "batch_size": batch_size}
    mkey = {**key, "surrogate": surrogate_run}

    def cascade_table():
        return get_or_table(run, "card", key, lambda m: cascade(m, test, card, runtime, batch_size, progress=progress),
                            runtime, progress, work=card.work(c), n=n)

    def masking_table(model):   # needs the cascade's table (a cache hit by then) and the surrogate
        surrogate = None
        if surrogate_run is not None:
            surrogate = _surrogate(model, get_or_train(surrogate_run, runtime, progress))
        return masking(model, test, card, cascade_table(), surrogate, runtime, batch_size, progress)

    table = cascade_table()
    mask = get_or_table(run, "card-masking", mkey, masking_table, runtime, progress, n=n, work=SimpleNamespace(
        label=f"report card {card.label} masking checks", attack_steps=card.masking_steps,
        forward_passes=len(card.grid_eps) + 2))
    if planning():   # rtlkit.suite.plan: nothing ran; the certificate and the surrogate are counted too
        if smoothing is not None:
            get_or_certify(run, smoothing, card.eps, runtime, progress, test_n=test_n)
        if surrogate_run is not None:
            get_or_train(surrogate_run, runtime, progress)
        return {}
    out = {"summary": summary(table), "checks": checks(card, table, mask, c), "table": table, "masking": mask,
           "n_test": n, "card": card}
    if smoothing is not None:
        cert = get_or_certify(run, smoothing, card.eps, runtime, progress, test_n=test_n)
        out["certified"] = {k: cert[k] for k in ("smoothed_acc", "certified_acc", "acr", "abstain", "n_test")}
    return out


def _surrogate(model: nn.Module, source: nn.Module) -> nn.Module:
    """The source model as seen through the target's labels: a copy of the source (its extractor
    and BN statistics) with the target model's last layer (``head.fc``). The transfer attack then
    asks what the source's features alone give away."""
    import copy
    check(hasattr(model, "head") and hasattr(source, "head") and hasattr(model.head, "fc"),
          "the transfer check needs a model and a source with a replaceable head (head.fc)")
    s = copy.deepcopy(source)
    s.head.fc = copy.deepcopy(model.head.fc)
    return s.eval()
