"""rtlkit.suite.plan: the notebooks' experiment steps, and work counts known in closed form."""
import re

import nbformat
import pytest

from rtlkit.suite import figures
from rtlkit.suite import plan, registry
from rtlkit.studies import profiles
from rtlkit.measure.attacks import PGD
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun
from rtlkit.train.loop import AdversarialTraining, StandardTraining
from rtlkit.train.transfer import TransferPolicy

from conftest import TINY

NOT_STEPS = {"summarise", "bn_table", "attack_disagreements", "with_paper",   # table helpers: they run nothing
             "setting", "record", "relative_change", "regressions", "changes_vs_paper", "changes_with_paper",
             "gradient_summary", "split_vs_whole", "paper_rows", "overstatement"}


@pytest.mark.parametrize("book", figures.notebooks(), ids=lambda b: b.stem)
def test_plan_knows_each_notebooks_steps(book):
    code = "\n".join(c.source for c in nbformat.read(book, as_version=4).cells if c.cell_type == "code")
    study, steps = registry.with_steps()[book.stem]
    assert re.search(rf"from rtlkit\.studies import {study} as S\b", code)
    calls = [f for f in re.findall(r"\bS\.(\w+)\(", code) if f not in NOT_STEPS and not f.startswith(("plot_", "panel"))]
    assert tuple(dict.fromkeys(calls)) == steps


def test_work_counts_in_closed_form():
    at = AdversarialTraining(epochs=3, batch_size=64, attack=PGD(0.1, 5, 0.05))
    src = SourceRun(DataSpec("synthetic-a"), TINY, at)               # 512 images: 8 full batches
    p = plan.Plan("t")
    p.add_training(src)
    row = p.trainings[next(iter(p.trainings))]
    assert (row["images"], row["A"], row["T"]) == (512 * 3, 512 * 3 * 5, 512 * 3)
    ft = TransferRun(src, DataSpec("synthetic-b", train_n=100), TransferPolicy(k=2),
                     StandardTraining(epochs=2, batch_size=64))       # 100 images: one batch of 64 per epoch
    p.add_evaluation(ft, [PGD(0.1, 7, 0.03), PGD(0.1, 3, 0.05)], test_n=None)
    assert len(p.trainings) == 2                                      # the source counted once
    t = p.totals()
    assert (t["sources"], t["transfers"], t["A_train"], t["T"]) == (1, 1, 512 * 3 * 5, 512 * 3 + 64 * 2)
    assert t["A_eval_own"] == 256 * 10                                # 256 test images x (7 + 3) steps


def test_estimate_from_benchmark_rates():
    bench = {"throughput": [
        {"workload": "fine-tune k=all", "path": "fast", "img_s": 1000.0},
        {"workload": "PGD-7 AT (source)", "path": "fast", "img_s": 100.0},
        {"workload": "PGD-100 eval, own", "path": "fast", "img_s": 20.0},
        {"workload": "PGD-100 eval, foolbox", "path": "fast", "img_s": 10.0}]}
    r = plan.rates(bench)
    assert r["T"] == pytest.approx(1e-3) and r["A_train"] == pytest.approx((1e-2 - 1e-3) / 7)
    assert r["A_eval_own"] == pytest.approx(1 / 2000) and r["A_eval_foolbox"] == pytest.approx(1 / 1000)
    est = plan.estimate({"A_train": 7000, "T": 1000, "A_eval_own": 2000, "A_eval_foolbox": 1000}, r)
    assert est["total"] == pytest.approx(9.0 + 1.0 + 1.0 + 1.0)
    with pytest.raises(plan.ConfigError, match="no 'fine-tune k=all' row"):
        plan.rates(bench, "eager fp32")


def test_plan_of_the_smoke_profile_runs_nothing(runs_root):
    p = plan.plan(profiles.get("smoke"))
    # 01-03: 5, and 03's replicated claims' seed-1 AT and FDM (k = 2, 3) sources: 3; 04: AT, CR, SimCLR, ST;
    # 05: normal, noise, adv-d, adv-s and the split pair's normal (adv is 01's);
    # 06: two natural sources and AT from scratch at each of Fig. 3's three N
    assert p.totals()["sources"] == 5 + 3 + 4 + 5 + 2 + 3 and not runs_root.exists()
    assert p.totals()["heads"] > 0


def test_default_profile_is_full_on_a_gpu_and_quick_on_the_cpu():
    assert profiles.default_name("cuda") == "full" and profiles.default_name("cuda:1") == "full"
    assert profiles.default_name("cpu") == "quick"
    full = profiles.get("full")
    assert full.model.name == "wrn-16-4" and full.eval_attacks[0].label.startswith("foolbox PGD-100")


def test_recording_mode_sees_steps_that_imported_the_cache_functions_by_name(runs_root):
    """The plan needs no monkeypatching: get_or_train / get_or_evaluate honour recording() themselves,
    whichever module imported them."""
    from rtlkit.runs.cache import get_or_evaluate as imported, get_or_train as imported_train, recording
    run = SourceRun(DataSpec("synthetic-a"), TINY, AdversarialTraining(epochs=1, attack=PGD(0.1, 2, 0.05)))
    attacks = [PGD(0.1, 3, 0.05)]
    with recording() as rec:
        m = imported(run, attacks, test_n=8)
        assert imported_train(run) is None
    assert rec.evaluations == [(run, attacks, 8)] and rec.trainings == [run]
    assert m["robust_acc"] == 0.0 and m[f"robust_acc[{attacks[0].label}]"] == 0.0 and m["n_test"] == 8
    assert not runs_root.exists()                      # nothing trained, nothing written


def test_work_counts_of_apgd_square_and_certification_in_closed_form(runs_root):
    from rtlkit.measure.attacks import APGD, Square
    from rtlkit.runs.cache import get_or_certify, get_or_evaluate, recording
    from rtlkit.measure.smoothing import Smoothing
    src = SourceRun(DataSpec("synthetic-a"), TINY, AdversarialTraining(epochs=1, attack=PGD(0.1, 2, 0.05)))
    with recording() as rec:
        get_or_evaluate(src, [APGD(eps=0.5, n_iter=10, n_restarts=3), Square(eps=0.5, n_queries=50)], test_n=16)
        get_or_certify(src, Smoothing(0.5, 10, 90), eps=0.5, test_n=20)
    p = plan.Plan("t")
    for run, attacks, test_n in rec.evaluations:
        p.add_evaluation(run, attacks, test_n)
    t = p.totals()
    assert t["evaluations"] == 2 and t["A_eval_own"] == 16 * 30          # APGD: iterations x restarts
    assert t["F_eval"] == 16 * 50 + 20 * (10 + 90)                        # Square queries + noisy samples
    assert not runs_root.exists()


def test_work_counts_of_noisy_features_and_input_search_in_closed_form(runs_root):
    from rtlkit.train.methods.lipschitz import HeadSpec, HeadTraining
    from rtlkit.train.methods.search import InputSearch
    from rtlkit.runs.specs import HeadRun, NoisyDraws
    from rtlkit.runs.cache import get_or_noisy_features, get_or_table, recording
    src = SourceRun(DataSpec("synthetic-a"), TINY, AdversarialTraining(epochs=1, attack=PGD(0.1, 2, 0.05)))
    head = HeadRun(src, DataSpec("synthetic-b"), HeadSpec(), HeadTraining())
    with recording() as rec:
        get_or_noisy_features(src, DataSpec("synthetic-b"), NoisyDraws(0.1, 30, images=16))
        get_or_table(head, "search", {"k": 1}, None, work=InputSearch(steps=7), n=12)
    p = plan.Plan("t")
    for run in rec.trainings:
        p.add_training(run)
    for run, attacks, test_n, *rest in rec.evaluations:
        p.add_evaluation(run, attacks, test_n, *rest)
    t = p.totals()
    assert t["evaluations"] == 2 and t["heads"] == 1 and t["F_eval"] == 16 * 30 + 12 * 7 and t["A_eval_own"] == 12 * 7
    assert not runs_root.exists()
