"""Notebook 03's study module: the paper's numbers beside ours, the budget sweep's verdicts and
its runs (recorded, not trained)."""
import pandas as pd
import pytest

from rtlkit.studies import profiles
from rtlkit.runs.cache import recording
from rtlkit.studies import cartl as S


def test_the_papers_numbers_face_ours_with_their_setting():
    ours = pd.DataFrame([dict(k=6, method="CARTL", clean_acc=0.9, robust_acc=0.8)])
    t = S.with_paper(ours, "table3", "table5", setting="quick")
    assert list(t.source.unique()) == ["rtlkit", "paper"]
    paper = t[t.source == "paper"]
    assert len(paper) == 9 + 4 and paper.setting.str.contains("CIFAR-100 -> CIFAR-10, WRN-34-10").all()
    row = paper[(paper.method == "CARTL") & (paper.k == 6)].iloc[0]
    assert (row.clean_acc, row.robust_acc) == pytest.approx((0.8779, 0.3094))      # CARTL Table 3, Case-6
    assert len(S.PAPER["table2"]) == 18 and len(S.PAPER["table4"]) == 12
    assert paper[paper.lam_d == 0.001].robust_acc.item() == pytest.approx(0.0022)  # Table 5


def test_budget_verdicts_count_a_gap_only_beyond_the_seed_spread():
    rows = []
    for method, robs in (("vanilla", (0.80, 0.82)), ("AT + NEFT", (0.84, 0.86)), ("CARTL", (0.80, 0.84))):
        rows += [dict(pair="a -> b", budget_epochs=6, method=method, seed=s, clean_acc=0.9, robust_acc=r)
                 for s, r in enumerate(robs)]
    v = S.budget_verdicts(pd.DataFrame(rows)).set_index("method")
    sd = pd.Series([0.80, 0.82]).std() * 100
    assert v.loc["AT + NEFT", "rob_gap_vs_vanilla"] == pytest.approx(4.0)
    assert v.loc["AT + NEFT", "seed_spread"] == pytest.approx(round(sd, 2))
    assert v.loc["AT + NEFT", "gap_exceeds_spread"]               # 4 points > 1.41
    assert not v.loc["CARTL", "gap_exceeds_spread"]               # 1 point < 2.83
    assert not v.loc["vanilla", "gap_exceeds_spread"]


def test_the_budget_sweep_gives_each_budget_its_steps_on_both_pairs():
    p = profiles.get("smoke")
    with recording() as rec:
        df = S.budget_sweep(p, None, False, budgets=(1, 3), seeds=(0,), test_n=64)
    assert len(df) == 2 * 2 * 3 and df.pair.nunique() == 2
    per_epoch = p.finetune_steps(p.target) // p.finetune.epochs
    steps = {run.method.steps for run, _, _ in rec.evaluations if run.data == p.target}
    assert steps == {per_epoch, 3 * per_epoch}
    assert {t for _, _, t in rec.evaluations} == {64}


def test_the_claims_replicate_the_source_as_well_as_the_fine_tune():
    """Replicate r starts from sources trained with seed r and fine-tunes with seed r; replicate 0
    is the cells the other figures trained (the same runs, a larger evaluation)."""
    p = profiles.get("smoke")
    with recording() as rec:
        df = S.seeded_claims(p, None, False)
        S.cartl_grid(p, None, False)
    assert set(df.replicate) == set(p.claim_seeds) == {0, 1}
    assert (df.seed == df.replicate).all() and (df.source_seed == df.replicate).all()
    runs = {run for run, _, _ in rec.evaluations}
    sources = {(type(r.source.method).__name__, r.source.seed) for r in runs if hasattr(r, "source")}
    assert {("AdversarialTraining", 0), ("AdversarialTraining", 1), ("FDMTraining", 0), ("FDMTraining", 1)} <= sources
    grid_runs = {run for run, _, t in rec.evaluations if t == p.cartl_test_n and run.seed == 0}
    seeded0 = {run for run, _, t in rec.evaluations if t == p.claim_test_n and run.seed == 0}
    assert grid_runs & seeded0, "replicate 0 must reuse the grid's trained models"
    frac = df[df.fraction < 1]
    assert set(frac.method) == {"vanilla", "CARTL"} and set(frac.fraction) == set(p.claim_fractions)


def _cell(method, k, r, rob, **kw):
    return dict(method=method, k=k, replicate=r, seed=r, source_seed=r, n_test=1000, clean_acc=0.9,
                robust_acc=rob, fraction=kw.pop("fraction", 1.0), **kw)


def test_the_replicated_claims_take_their_se_from_the_test_set_and_the_replicates():
    """Each replicated claim: the test images' binomial part plus the seed part measured from the
    replicates' paired differences, with the t quantile at 2 degrees of freedom."""
    import math

    from rtlkit.measure import stats
    rows = []
    for r, (lo, hi, van, neft) in enumerate(((0.80, 0.70, 0.60, 0.70), (0.83, 0.72, 0.62, 0.71), (0.84, 0.75, 0.64, 0.72))):
        rows += [_cell("CARTL", 6, r, lo, lam=0.005, beta=0.4), _cell("CARTL", 6, r, hi, lam=0.005, beta=1.0),
                 _cell("vanilla", 6, r, van), _cell("AT + NEFT", 6, r, neft, lam=0.0, beta=0.4)]
    t = S.with_paper(pd.DataFrame(rows), "table2", "table3", "table5")
    found = {(f.where, f.claim): f for f in S.seeded_findings(t)}
    beta = found[("Table 2 (3 seeds)", "a smaller NEFT beta raises robustness (beta 0.4 against 1, lambda 0.005, k = 6)")]
    assert beta.effect == pytest.approx(0.10) and beta.seeds == 3 and beta.n == 1000
    assert beta.seed_source == "measured" and beta.seed_df == 2
    assert beta.se_seed == pytest.approx(pd.Series([0.10, 0.11, 0.09]).std() / math.sqrt(3))
    assert beta.se_test == pytest.approx(stats.images_se((0.80 + 0.83 + 0.84) / 3, (0.70 + 0.72 + 0.75) / 3, 1000))
    assert beta.paper_effect == pytest.approx(0.3094 - 0.2597)   # CARTL Table 2, k = 6, lambda 0.005
    assert beta.verdict == "agrees" and beta.size == "not comparable"
    neft = found[("Table 3 (3 seeds)", "NEFT raises the robustness of plain fine-tuning (k = 6)")]
    assert neft.effect == pytest.approx(0.09) and neft.paper_effect == pytest.approx(0.2795 - 0.2538)
    fdm = found[("Table 3 (3 seeds)", "an FDM source raises NEFT's robustness further (k = 6)")]
    assert fdm.effect == pytest.approx((0.80 + 0.83 + 0.84) / 3 - 0.71) and fdm.verdict == "agrees"
    # a difference whose interval holds zero is unresolved, whether or not the paper prints an effect:
    # the sign is the verdict, and the paper's size (k = 6: +5.0 points) its own column
    for k in (5, 6):
        close = [_cell("CARTL", k, r, v, lam=0.005, beta=b) for r, (x, y) in enumerate(((0.80, 0.79), (0.82, 0.80),
                                                                                         (0.81, 0.81)))
                 for b, v in ((0.4, x), (1.0, y))]
        (f,) = S.seeded_findings(S.with_paper(pd.DataFrame(close), "table2"))
        assert f.effect == pytest.approx(0.01) and f.seed_source == "measured" and f.verdict == "unresolved"
        lo, hi = f.interval()
        assert lo < 0 < hi and hi - f.effect == pytest.approx(f.measure().quantile() * f.se)


def test_the_claim_settings_are_checked_before_any_compute():
    from rtlkit.core.errors import ConfigError
    p = profiles.get("smoke")
    for bad in (dict(claim_test_n=0), dict(claim_fractions=[0.0]), dict(claim_seeds=[-1]), dict(claim_seeds=[])):
        with pytest.raises(ConfigError):
            p.with_(**bad)
