"""Notebook 03's study module: the paper's numbers beside ours, the budget sweep's verdicts and
its runs (recorded, not trained)."""
import pandas as pd
import pytest

from rtlkit import profiles
from rtlkit.runs import recording
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
