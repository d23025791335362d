"""Notebook 04's study module: relative changes and regressions by hand, the runs each
pre-training and fine-tuning make (recorded, not trained), the paper's numbers, the settings
a manifest records, and its notebook parameters checked before compute."""
import numpy as np
import pandas as pd
import pytest

from rtlkit.studies import profiles
from rtlkit import ConfigError
from rtlkit.measure.attacks import APGD, PGD, Square
from rtlkit.train.methods.consistency import ConsistencyTraining
from rtlkit.train.methods.simclr import SimCLRTraining
from rtlkit.runs.cache import recording
from rtlkit.studies import pretraining as S
from rtlkit.train.loop import AdversarialTraining, StandardTraining


def table(rows):
    return pd.DataFrame([dict(target=t, finetune="AT", pretraining=p, seed=0, sa=sa, ra_wb=ra, ra_bb=ra,
                              clean_acc=sa, robust_acc=ra) for t, p, sa, ra in rows])


def test_relative_change_and_its_mean_row_by_hand():
    c = S.relative_change(table([("a", "Random", 0.50, 0.20), ("a", "AT", 0.60, 0.30),
                                 ("b", "Random", 0.80, 0.40), ("b", "AT", 0.72, 0.30)]))
    a, b, mean = (c[c.target == t].iloc[0] for t in ("a", "b", "mean"))
    assert (a.d_sa, a.d_ra_wb) == pytest.approx((20.0, 50.0))
    assert (b.d_sa, b.d_ra_wb) == pytest.approx((-10.0, -25.0))
    assert (mean.d_sa, mean.d_ra_wb) == pytest.approx((5.0, 12.5))
    assert (a.clean_acc, a.robust_acc) == pytest.approx((0.60, 0.30))     # the pre-trained model's own


def test_relative_change_against_a_baseline_per_fine_tuning():
    df = pd.concat([table([("a", "AT", 0.5, 0.2), ("a", "ST", 0.55, 0.1)]),
                    table([("a", "CR", 0.4, 0.2), ("a", "ST", 0.2, 0.1)]).assign(finetune="CR")])
    c = S.relative_change(df, baseline={"AT": "AT", "CR": "CR"})
    st = c[(c.target == "a") & (c.pretraining == "ST")].set_index("finetune")
    assert st.loc["AT", "d_sa"] == pytest.approx(10.0) and st.loc["CR", "d_sa"] == pytest.approx(-50.0)


def test_regression_recovers_an_exact_line_and_refuses_one_point():
    ch = pd.DataFrame(dict(target=["a", "b", "c", "mean"], pretraining="AT", d_sa=[1.0, 2.0, 4.0, 99.0],
                           d_ra_wb=[3.0, 5.0, 9.0, -99.0]))
    f = S.regressions(ch, "d_ra_wb").iloc[0]
    assert (f.slope, f.intercept, f.r2, f.n) == pytest.approx((2.0, 1.0, 1.0, 3))   # the mean row is no point
    noisy = ch.assign(d_ra_wb=[3.0, 6.0, 8.0, 0.0])
    r = np.corrcoef([1, 2, 4], [3, 6, 8])[0, 1] ** 2
    assert S.regressions(noisy, "d_ra_wb").iloc[0].r2 == pytest.approx(r)
    one = S.regressions(ch[ch.target.isin(["a", "mean"])], "d_ra_wb").iloc[0]
    assert one.n == 1 and np.isnan(one.r2) and np.isnan(one.slope)


def test_each_pre_training_and_fine_tuning_is_the_papers_method():
    p = profiles.get("smoke")
    pt = p.pretraining
    at = S.pretrain_method(pt, "AT")
    assert isinstance(at, AdversarialTraining) and at.attack == PGD(eps=0.5, steps=3, step_size=1 / 3, norm="l2")
    cr = S.pretrain_method(pt, "CR")
    assert isinstance(cr, ConsistencyTraining) and (cr.sigma, cr.m, cr.lam, cr.eta) == (0.5, 2, 5.0, 0.5)
    assert isinstance(S.pretrain_method(pt, "SimCLR"), SimCLRTraining)
    assert type(S.pretrain_method(pt, "ST")) is StandardTraining
    t = pt.pt_targets[0]
    rnd = S.transfer_run(p, "Random", "AT", t)
    assert rnd.policy == S.RANDOM_INIT and type(rnd.source.method) is StandardTraining
    assert S.transfer_run(p, "SimCLR", "CR", t).policy == S.FINE_TUNE_ALL
    last = S.transfer_run(p, "CR", "ST", t)
    assert last.policy.k == 1 and type(last.method) is StandardTraining and last.method.steps == pt.pt_finetune_steps
    wb, bb = S.attacks(pt)
    assert isinstance(wb, APGD) and isinstance(bb, Square) and wb.eps == bb.eps == 0.5 and wb.norm == bb.norm == "l2"
    assert S.smoothing(pt).sigma == 0.5 and S.smoothing(pt, 0.01).sigma == 0.01
    with pytest.raises(ConfigError, match="unknown pre-training"):
        S.pretrain_method(pt, "MAE")


def test_the_steps_record_every_run_they_need():
    p = profiles.get("smoke")
    with recording() as rec:
        for step in ("noise_table", "certified_sources", "empirical_transfer", "certified_transfer",
                     "certified_curves", "pretraining_ablation", "robust_finetuning_needed"):
            getattr(S, step)(p, None, False)
    sources = {type(r.method).__name__ for r in rec.trainings if r.kind == "source"}
    assert sources >= {"AdversarialTraining", "ConsistencyTraining"}
    evaluated = {(r.source.method.kind, r.policy.reinit, r.method.kind) for r, a, n in rec.evaluations
                 if r.kind == "transfer"}
    assert ("standard", True, "adversarial") in evaluated and ("simclr", False, "consistency") in evaluated
    assert ("standard", False, "adversarial") in evaluated and ("consistency", False, "standard") in evaluated


def test_a_missing_target_is_skipped_with_a_line(monkeypatch, capsys):
    from rtlkit.core import data as D
    from rtlkit.core.errors import DatasetNotFound
    real = D.load

    def load(name, split="train", download=None):
        if name == "synthetic-d":
            raise DatasetNotFound("synthetic-d is not here\nmore")
        return real(name, split, download)
    monkeypatch.setattr(D, "load", load)
    kept = S.targets(profiles.get("smoke").pretraining)
    assert [t.name for t in kept] == ["synthetic-c"] and "skipped target synthetic-d" in capsys.readouterr().out


def test_the_papers_numbers_in_our_columns():
    t6 = S.paper_rows("table6")
    row = t6[(t6.target == "CIFAR-100") & (t6.kind == "certified") & (t6.pretraining == "ST")].iloc[0]
    assert (row.sa, row.ra_ct, row.acr) == pytest.approx((0.702, 0.606, 1.050))
    t3 = S.paper_rows("table3")
    assert t3[(t3.pretraining == "CR") & (t3.r == 1.5)].robust_acc.item() == pytest.approx(0.335)
    t7 = S.paper_rows("table7")
    assert t7[(t7.target == "CIFAR-10") & (t7.sigma == 0)].sa.item() == pytest.approx(0.91)
    both = S.with_paper(pd.DataFrame([dict(pretraining="AT", sigma=0.5, robust_acc=0.2)]), "table2", "x")
    assert list(both.source.unique()) == ["rtlkit", "paper"] and len(both) == 1 + 8


def test_the_manifest_records_the_measurement_settings():
    r = S.record(profiles.get("quick", gpu=False))
    assert (r["N0"], r["N"], r["alpha"], r["sigma"]) == (100, 1000, 0.001, 0.5)
    assert (r["apgd_restarts"], r["square_queries"], r["attack_images"], r["cert_images"]) == (1, 1000, 200, 100)
    assert r["max_certifiable_radius"] == pytest.approx(0.5 * 2.4617, abs=1e-3)   # sigma Phi^-1(0.001^(1/1000))
    assert "eps = sigma = 0.5" in r["eps_rule"]


def test_notebook_parameters_are_parsed_and_checked_before_compute():
    p = profiles.get("smoke", l2_eps="0.25", cert_images="8", radii="[0, 0.25]", pt_seeds="1")
    pt = p.pretraining
    assert (pt.l2_eps, pt.cert_images, pt.radii, pt.pt_seeds) == (0.25, 8, (0, 0.25), (1,))
    assert S.attacks(pt)[0].eps == 0.25 and S.smoothing(pt).sigma == 0.25
    for bad in (dict(cert_images=0), dict(l2_eps=-1), dict(smoothing_n="ten"), dict(pt_seeds="[]"),
                dict(smoothing_n0=10 ** 6), dict(table6_targets="[5]")):
        with pytest.raises(ConfigError):
            profiles.get("smoke", **bad)


def test_the_panel_never_raises_on_an_empty_choice():
    pytest.importorskip("ipywidgets")
    t4 = table([("a", "Random", 0.5, 0.2), ("a", "AT", 0.6, 0.3)])
    t5 = pd.DataFrame([dict(target="a", finetune="CR", pretraining=p, seed=0, sa=0.5, ra_ct=0.3, acr=0.4,
                            clean_acc=0.5, robust_acc=0.3) for p in ("Random", "CR")])
    curves = pd.DataFrame([dict(target="a", pretraining="CR", r=r, sigma=0.5, certifiable=r < 1, table3=True, robust_acc=0.3,
                                acr=0.4) for r in (0.0, 0.5, 1.5)])
    box = S.panel(t4, t5, curves)
    (target, metric, methods), out = box.children[0].children, box.children[1]
    for m in metric.options:
        metric.value = m
    target.value = "a"
    methods.value = ()
    for m in metric.options:
        metric.value = m


def test_targets_of_one_dataset_at_two_sizes_stay_apart():
    from rtlkit.runs.specs import DataSpec
    small, big = (DataSpec("fashion-mnist", classes=(5, 6, 7, 8, 9), train_n=n) for n in (50, 2000))
    assert S.target_label(small) != S.target_label(big) and S.target_label(DataSpec("mnist-5k")) == "mnist-5k"


def test_our_analysis_on_the_papers_own_tables_reproduces_its_means_and_r2():
    """relative_change and regressions, run on the transcribed Tables 4-5, give the paper's own
    mean changes (Secs. 4.2-4.3) and Figs. 2-3's R^2: the analysis is the paper's, and its lines have
    slope ~1 and intercept ~0 (robustness gains the size of accuracy gains)."""
    c4, c5 = S.relative_change(S.paper_rows("table4")), S.relative_change(S.paper_rows("table5"))
    for c, ft in ((c4, "AT"), (c5, "CR")):
        for (ft_, pre), paper in S.PAPER["mean_change"].items():
            if ft_ != ft:
                continue
            mean = c[(c.target == "mean") & (c.pretraining == pre)].iloc[0]
            for k, v in paper.items():
                assert mean[k] == pytest.approx(v, abs=0.11), (pre, k)
    for (y, pre), r2 in S.PAPER["r2"].items():
        f = S.regressions(c4 if y == "d_ra_wb" else c5, y).set_index("pretraining").loc[pre]
        assert f.r2 == pytest.approx(r2, abs=0.006) and f.n == 12 and 0.9 < f.slope < 1.3
    both = S.changes_vs_paper(pd.concat([c4.assign(finetune="AT"), c5]), [])
    assert both.slope_paper.notna().sum() == 6


def test_the_robust_train_gap_attacks_each_at_fine_tune_on_its_own_training_images():
    """bench/pretraining_scarcity's gap (issue 21, point 10): one train-split APGD evaluation per
    Table 4 model, planned apart from its test evaluation, on at most attack_images training images."""
    from rtlkit.suite import plan as PL
    from rtlkit.runs.cache import eval_path
    p = profiles.get("smoke")
    with recording() as rec:
        df = S.robust_train_gap(p, None, False)
    assert list(df.columns[:4]) == ["target", "pretraining", "finetune", "seed"]
    assert set(df.pretraining) == {"Random", "AT", "SimCLR"} and set(df.finetune) == {"AT"}
    train = [e for e in rec.evaluations if len(e) == 6]
    assert len(train) == len(df) and {e[5] for e in train} == {"train"}
    wb, _ = S.attacks(p.pretraining)
    assert all(e[1] == [wb] and e[2] == p.pretraining.attack_images for e in train)
    plan = PL._filled(PL.Plan(p.name, p.model.name), rec)
    rows = {r["path"]: r for r in plan.evaluations.values()}
    for run, attacks, n, _, _, split in train:
        row = rows[str(eval_path(run, attacks, n, split=split))]
        assert row["n_test"] == min(n, len(run.train_data()))
        assert str(eval_path(run, attacks, n)) != row["path"]
