"""The findings rule on constructed cases: both parts of the SE, measured or floored, the sign and
the size apart, equivalence for "no difference", and the standard errors against closed forms."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rtlkit.measure import stats
from rtlkit import ConfigError
from rtlkit.measure import verdicts as V
from rtlkit.suite import findings as F
from rtlkit.measure.verdicts import Finding, binomial_se

FLOOR = stats.SeedFloor(0.02, 4, 2, "two constructed cells")


def floored(paper, effect, se_test=0.01, sd=0.02, df=4, **kw) -> Finding:
    """A single-seed row floored by a seed SD ``sd`` measured with ``df`` degrees of freedom."""
    return Finding("02", "CARTL", "Table 1", "a claim", paper, effect, se_test, 1000, 1, se_seed=sd, seed_df=df,
                   seed_source="floored", **kw)


def test_the_interval_holds_both_parts_with_the_welch_satterthwaite_t_quantile():
    f = floored(0.031, 0.05, se_test=0.01, sd=0.02, df=4)
    se = math.sqrt(0.01 ** 2 + 0.02 ** 2)
    df = 4 * (se / 0.02) ** 4
    lo, hi = f.interval()
    assert f.se == pytest.approx(se) and hi - 0.05 == pytest.approx(sps.t.ppf(0.975, df) * se)
    assert lo == pytest.approx(0.05 - (hi - 0.05))


@pytest.mark.parametrize("paper, ours, expected", [
    (0.031, 0.15, "agrees"),        # the paper's sign, the interval (about +- 0.07) clear of zero
    (0.031, 0.03, "unresolved"),    # the sign, but the interval holds zero
    (0.031, -0.15, "disagrees"),    # the opposite sign, clear of zero
    (0.031, -0.03, "unresolved"),   # the opposite sign inside the interval: no longer "disagrees" by the size
    (-0.826, -0.15, "agrees"),      # far smaller than the paper's: the sign agrees, the size is its own column
    (-0.826, -0.03, "unresolved"),  # once "disagrees" because -82.6 lay outside it: the sign cannot tell
])
def test_the_verdict_is_about_the_sign(paper, ours, expected):
    assert floored(paper, ours).verdict == expected
    assert floored(-paper, -ours).verdict == expected   # the rule does not care which way the claim points


def test_the_size_is_a_separate_column():
    assert floored(-0.826, -0.15).size == "not comparable"            # another dataset: the default
    assert floored(-0.826, -0.15, comparable=True).size == "outside"
    assert floored(0.10, 0.12, comparable=True).size == "inside"
    assert floored(None, 0.12, direction=1).size == "no size"


@pytest.mark.parametrize("ours, sd, expected", [(0.005, 0.004, "equivalent"), (0.12, 0.01, "different"),
                                                (0.02, 0.05, "unresolved")])
def test_a_claim_of_no_difference_is_an_equivalence_test_within_its_margin(ours, sd, expected):
    f = floored(0.0, ours, se_test=0.005, sd=sd, df=20)
    assert f.verdict == expected and f.size == "no size" and f.row()["margin"] == V.MARGIN
    assert floored(0.0, 0.04, se_test=0.002, sd=0.002, df=20).verdict == "equivalent"
    assert floored(0.0, 0.04, se_test=0.002, sd=0.002, df=20, margin=0.01).verdict == "different"   # its own margin


def test_a_counted_row_without_its_training_noise_resolves_nothing():
    pending = Finding("02", "CARTL", "Table 1", "a claim", 0.031, 0.30, 0.001, 1000, 1)
    assert pending.seed_source == "pending" and pending.verdict == "unresolved"
    floored_row = V.with_floor(pending, FLOOR)
    assert floored_row.seed_source == "floored" and floored_row.se_seed == 0.02 and floored_row.seed_df == 4
    assert floored_row.verdict == "agrees" and "two constructed cells" in floored_row.floor_from
    borrowed = V.with_floor(pending, FLOOR, borrowed_from="03")
    assert "borrowed from notebook 03" in borrowed.floor_from
    none = V.with_floor(pending, None)
    assert none.seed_source == "none" and none.verdict == "unresolved"
    share = V.with_floor(V.samples("06", "S", "Fig. 5", "c", [0.5, 0.6, 0.7], [0.1, 0.2, 0.3], 1), FLOOR)
    assert share.seed_source == "none" and share.verdict == "unresolved"   # no accuracy floor bounds a share
    with pytest.raises(ConfigError, match="seed part must be > 0"):
        Finding("02", "CARTL", "Table 1", "x", 0.03, 0.01, 0.01, 1000, 1, se_seed=0.0, seed_df=2, seed_source="floored")


def test_three_paired_seeds_measure_the_seed_part_with_their_t_quantile():
    a = pd.DataFrame({"seed": [0, 1, 2], "robust_acc": [0.80, 0.83, 0.84], "n_test": 1000})
    b = pd.DataFrame({"seed": [0, 1, 2], "robust_acc": [0.70, 0.72, 0.75], "n_test": 1000})
    f = V.contrast("01", "CARTL", "Fig. 3", "c", a, b, direction=1)
    d = np.array([0.10, 0.11, 0.09])
    assert f.seed_source == "measured" and f.seeds == 3 and f.seed_df == 2
    assert f.se_seed == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    assert f.se_test == pytest.approx(stats.images_se(a.robust_acc.mean(), b.robust_acc.mean(), 1000))
    assert f.measure().quantile() > 1.96 and f.verdict == "agrees"
    # unpaired seeds, or one side a single model: pending the notebook's floor
    assert V.contrast("01", "C", "F", "c", a, b.assign(seed=[0, 1, 3]), direction=1).seed_source == "pending"
    assert V.contrast("01", "C", "F", "c", a, b.iloc[:1], direction=1).seed_source == "pending"
    # equal differences measure no spread: the floor, never a seed part of zero
    assert V.contrast("01", "C", "F", "c", a, a.assign(robust_acc=a.robust_acc - 0.1), direction=1).seed_source == "pending"


def test_binomial_se_closed_form():
    assert binomial_se(0.5, 100) == 0.05
    assert math.isclose(binomial_se(0.9, 500), math.sqrt(0.09 / 500))


def test_a_finding_row_carries_both_parts_and_its_verdict():
    f = floored(0.031, -0.002, se_test=0.012)
    row = f.row()
    assert row["verdict"] == "unresolved" and row["n"] == 1000 and row["seeds"] == 1
    assert row["seed_source"] == "floored" and row["se_seed"] == 0.02 and row["se_test"] == 0.012
    assert row["low"] < -0.002 < row["high"] and set(row) | {"superseded_by"} == set(F.COLUMNS)
    with pytest.raises(ConfigError, match="se_test must be"):
        Finding("02", "CARTL", "Table 1", "x", 0.03, 0.01, float("nan"), 1000, 1)
    with pytest.raises(ConfigError, match="seeds"):
        Finding("02", "CARTL", "Table 1", "x", 0.03, 0.01, 0.01, 1000, 0)


def _scarcity(gaps: dict, n: int = 200, train_n: int = 50) -> "pd.DataFrame":
    """A constructed 04_scarcity table: per pre-training, train RA-WB = test RA-WB + its gap, 6 targets."""
    import pandas as pd
    rows = []
    for i in range(6):
        for pre, g in gaps.items():
            rows.append(dict(target=f"t{i}", pretraining=pre, finetune="AT", seed=0, sa=0.9, ra_wb=0.5,
                             n_test=n, train_ra_wb=0.5 + g, train_n=train_n, train_images=train_n, source="rtlkit"))
    rows.append(dict(target="big", pretraining="Random", finetune="AT", seed=0, sa=0.9, ra_wb=0.1, n_test=n,
                     train_ra_wb=1.0, train_n=n, train_images=4000, source="rtlkit"))   # not scarce: left out
    return pd.DataFrame(rows)


@pytest.mark.parametrize("gaps, expected", [({"Random": 0.45, "AT": 0.05, "SimCLR": 0.05}, "agrees"),
                                            ({"Random": 0.05, "AT": 0.45, "SimCLR": 0.45}, "disagrees"),
                                            ({"Random": 0.10, "AT": 0.08, "SimCLR": 0.09}, "unresolved")])
def test_the_scarcity_over_fitting_claim_is_computed_from_the_train_test_gap(gaps, expected):
    """Issue 21 point 10: 'random init over-fits its few images' is Random's robust train-test gap
    minus pre-training's, over the scarce targets only, by the one rule."""
    from rtlkit.studies import pretraining as S
    table = _scarcity(gaps)
    rows = [V.with_floor(f, FLOOR) for f in S.findings(lambda name: table if name == "04_scarcity" else None)]
    pre = lambda f: f.claim.split(" pre-training")[0].split()[-1]   # noqa: E731
    assert [pre(f) for f in rows] == ["AT", "SimCLR"]
    for f in rows:
        assert f.verdict == expected and f.direction == 1 and f.where == "scarcity (ours)"
        assert "6 targets" in f.claim and "big" not in f.ours
        assert f.effect == pytest.approx(gaps["Random"] - gaps[pre(f)])
        # four accuracies (train and test of each side), Agresti-Coull, averaged over 6 independent targets
        ac = lambda p, n: ((p * n + 2) / (n + 4)) * (1 - (p * n + 2) / (n + 4)) / (n + 4)   # noqa: E731
        one = math.sqrt(ac(0.5 + gaps["Random"], 50) + ac(0.5, 200) + ac(0.5 + gaps["AT"], 50) + ac(0.5, 200))
        if pre(f) == "AT":
            assert f.se_test == pytest.approx(one / math.sqrt(6)) and f.se_seed == FLOOR.sd


def test_a_scarcity_table_without_train_accuracies_gives_no_row():
    from rtlkit.studies import pretraining as S
    table = _scarcity({"Random": 0.4, "AT": 0.0}).drop(columns=["train_ra_wb"])
    assert S.findings(lambda name: table if name == "04_scarcity" else None) == []


def row(nb, where, claim, paper, effect, n, seeds, **kw) -> dict:
    """A findings.csv row of a claim floored by a 2-point seed SD (4 df), 1-point test part."""
    return Finding(nb, "a paper", where, claim, paper, effect, 0.01, n, seeds, se_seed=0.02, seed_df=4,
                   seed_source="floored", **kw).row()


def test_a_claim_tested_twice_counts_once_by_its_stronger_test():
    """Notebook 03 tests a claim on 1 seed x 500 images and again on 3 seeds x 1,000: the weaker
    row is marked superseded (kept, shown, not counted), whatever its verdict says."""
    claim = "NEFT raises the robustness of plain fine-tuning (k = 4)"
    rows = [row("03", "Table 3", claim, 0.011, 0.146, 500, 1),             # agrees
            row("03", "Table 3 (3 seeds)", claim, 0.011, 0.01, 1000, 3),   # unresolved
            row("03", "Table 3", "another claim", 0.011, 0.146, 500, 1),
            row("06", "Table 3", claim, 0.011, 0.146, 500, 1)]              # another notebook
    df = F.supersede(pd.DataFrame(rows, columns=F.COLUMNS[:-1]))
    assert df.superseded_by.tolist() == ["Table 3 (3 seeds)", "", "", ""]
    assert F.standing(df).verdict.tolist() == ["unresolved", "agrees", "agrees"]
    # claims, agrees, disagrees, equivalent, different, unresolved, not a test, superseded
    assert "| **all** | 3 | 2 | 0 | 0 | 0 | 1 | 0 | 1 |" in F.summary(df)
    md = F.render(df)
    assert "agrees, superseded by Table 3 (3 seeds)" in md
    assert "Verdicts: 2 agrees, 0 disagrees, 0 equivalent, 0 different, 1 unresolved" in md
    # two tests of equal strength both stand: neither may silence the other
    tie = F.supersede(pd.DataFrame(rows[:1] * 2, columns=F.COLUMNS[:-1]))
    assert tie.superseded_by.tolist() == ["", ""]


def test_rows_beyond_the_papers_are_shown_apart_and_never_counted():
    """A measurement of ours (07's AutoAttack gap, which can only agree) is no claim of the papers:
    its own section, outside the counts and the multiplicity note."""
    rows = [row("06", "Table 3", "a claim", 0.011, 0.146, 500, 1),
            Finding("07", "Croce & Hein 2020", "AutoAttack vs PGD-20", "AutoAttack lowers PGD-20", None, -0.03, 0.005,
                    500, 1, direction=-1, scope="beyond", seed_source="none").row()]   # one fixed model: no seed part
    df = F.supersede(pd.DataFrame(rows, columns=F.COLUMNS[:-1]))[F.COLUMNS]
    assert F.standing(df).claim.tolist() == ["a claim"] and F.beyond(df).claim.tolist() == ["AutoAttack lowers PGD-20"]
    assert "| **all** | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |" in F.summary(df)   # ... superseded, variant, beyond
    md = F.render(df)
    assert "## Beyond the papers" in md and "agrees (not counted)" in md and "1 rows beyond the papers" in md
    assert md.index("## 06") < md.index("## Beyond the papers")
    assert "the scorecard tests 1 claims" in md
    with pytest.raises(ConfigError, match="scope"):
        Finding("07", "x", "y", "z", None, 0.1, 0.01, 10, 1, direction=1, scope="ours")


def test_a_variant_of_the_papers_method_stands_beside_its_row_and_is_not_counted():
    rows = [row("05", "Table 1", "wn claim (L2 rows, App. A.1)", 0.233, 0.274, 1000, 1),
            row("05", "Table 1", "wn claim (variant: L1 rows)", 0.233, -0.12, 1000, 1, scope="variant")]
    df = F.supersede(pd.DataFrame(rows, columns=F.COLUMNS[:-1]))[F.COLUMNS]
    assert F.standing(df).verdict.tolist() == ["agrees"] and F.variants(df).verdict.tolist() == ["disagrees"]
    assert "| **all** | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 1 | 0 |" in F.summary(df)
    md = F.render(df)
    assert "disagrees (variant, not counted)" in md and "1 rows test a claim with a variant" in md
    assert md.index("(L2 rows, App. A.1)") < md.index("(variant: L1 rows)")   # beside it, in its notebook's section
