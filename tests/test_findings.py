"""The findings rule on constructed cases, and its standard errors against closed forms."""
import math

import numpy as np
import pytest

from rtlkit import ConfigError
from rtlkit.findings import Finding, binomial_se, verdict


@pytest.mark.parametrize("paper, ours, se, expected", [
    (0.031, 0.030, 0.010, "agrees"),        # the paper's sign, outside 2 SE
    (0.031, 0.019, 0.010, "unresolved"),    # the sign, but inside 2 SE: consistent with 0 and with 0.031
    (0.031, -0.030, 0.010, "disagrees"),    # the opposite sign outside 2 SE
    (0.031, -0.015, 0.010, "disagrees"),    # inside 2 SE of zero, and 0.031 lies outside -0.015 +- 0.02
    (0.031, 0.002, 0.005, "disagrees"),     # inside 2 SE of zero, and 0.031 lies outside 0.002 +- 0.01
    (0.031, 0.002, 0.020, "unresolved"),    # inside 2 SE of zero, and 0.002 +- 0.04 holds 0.031 too
    (0.0, 0.001, 0.004, "agrees"),          # "no effect", confirmed within 1 point
    (0.0, 0.001, 0.023, "unresolved"),      # "no effect", but too noisy to confirm
    (0.0, 0.060, 0.010, "disagrees"),       # "no effect", and there is one
])
def test_the_rule_on_constructed_cases(paper, ours, se, expected):
    assert verdict(paper, ours, se) == expected
    assert verdict(-paper, -ours, se) == expected   # the rule does not care which way the claim points


def test_an_effect_exactly_at_2_se_is_not_outside():
    assert verdict(0.05, 0.04, 0.02) == "unresolved"
    assert verdict(0.05, 0.0401, 0.02) == "agrees"


def test_binomial_se_closed_form():
    assert binomial_se(0.5, 100) == 0.05
    assert math.isclose(binomial_se(0.9, 500), math.sqrt(0.09 / 500))


def test_a_finding_row_carries_n_seeds_se_and_its_verdict():
    f = Finding("02", "CARTL", "Table 1", "freezing BN affine raises robustness", 0.031, -0.002, 0.012, 1000, 1)
    row = f.row()
    # the CARTL Table 1 reading of issue 21: +3.1 in the paper, -0.2 +- 2.4 here: not "agrees"
    assert row["verdict"] == "disagrees" and row["n"] == 1000 and row["seeds"] == 1
    assert math.isclose(row["low_2se"], -0.026) and math.isclose(row["high_2se"], 0.022)
    with pytest.raises(ConfigError, match="se must be"):
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
    rows = [f for f in S.findings(lambda name: table if name == "04_scarcity" else None)]
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
            assert f.se == pytest.approx(one / math.sqrt(6))


def test_a_scarcity_table_without_train_accuracies_gives_no_row():
    from rtlkit.studies import pretraining as S
    table = _scarcity({"Random": 0.4, "AT": 0.0}).drop(columns=["train_ra_wb"])
    assert S.findings(lambda name: table if name == "04_scarcity" else None) == []


def test_a_claim_tested_twice_counts_once_by_its_stronger_test():
    """Notebook 03 tests a claim on 1 seed x 500 images and again on 3 seeds x 1,000: the weaker
    row is marked superseded (kept, shown, not counted), whatever its verdict says."""
    import pandas as pd
    from rtlkit import findings as F
    claim = "NEFT raises the robustness of plain fine-tuning (k = 4)"
    rows = [Finding("03", "CARTL", "Table 3", claim, 0.011, 0.046, 0.0225, 500, 1).row(),        # agrees
            Finding("03", "CARTL", "Table 3 (3 seeds)", claim, 0.011, 0.01, 0.02, 1000, 3).row(),  # unresolved
            Finding("03", "CARTL", "Table 3", "another claim", 0.011, 0.046, 0.0225, 500, 1).row(),
            Finding("06", "Shafahi et al.", "Table 3", claim, 0.011, 0.046, 0.0225, 500, 1).row()]  # another notebook
    df = F.supersede(pd.DataFrame(rows, columns=F.COLUMNS[:-1]))
    assert df.superseded_by.tolist() == ["Table 3 (3 seeds)", "", "", ""]
    assert F.standing(df).verdict.tolist() == ["unresolved", "agrees", "agrees"]
    assert "| **all** | 3 | 2 | 0 | 1 | 0 | 1 |" in F.summary(df)   # claims, agrees, disagrees, unresolved, not a test, superseded
    md = F.render(df)
    assert "agrees, superseded by Table 3 (3 seeds)" in md and "Verdicts: 2 agrees, 0 disagrees, 1 unresolved" in md
    # two tests of equal strength both stand: neither may silence the other
    tie = F.supersede(pd.DataFrame(rows[:1] * 2, columns=F.COLUMNS[:-1]))
    assert tie.superseded_by.tolist() == ["", ""]


def test_rows_beyond_the_papers_are_shown_apart_and_never_counted():
    """A measurement of ours (07's AutoAttack gap, which can only agree) is no claim of the papers:
    its own section, outside the counts and the multiplicity note."""
    import pandas as pd
    from rtlkit import findings as F
    rows = [Finding("06", "Shafahi et al.", "Table 3", "a claim", 0.011, 0.046, 0.0225, 500, 1).row(),
            Finding("07", "Croce & Hein 2020", "AutoAttack vs PGD-20", "AutoAttack lowers PGD-20", None, -0.03, 0.005,
                    500, 1, direction=-1, scope="beyond").row()]
    df = F.supersede(pd.DataFrame(rows, columns=F.COLUMNS[:-1]))[F.COLUMNS]
    assert F.standing(df).claim.tolist() == ["a claim"] and F.beyond(df).claim.tolist() == ["AutoAttack lowers PGD-20"]
    assert "| **all** | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 1 |" in F.summary(df)   # ... superseded, variant, beyond
    md = F.render(df)
    assert "## Beyond the papers" in md and "agrees (not counted)" in md and "1 rows beyond the papers" in md
    assert md.index("## 06") < md.index("## Beyond the papers")
    assert "the scorecard tests 1 claims" in md
    with pytest.raises(ConfigError, match="scope"):
        Finding("07", "x", "y", "z", None, 0.1, 0.01, 10, 1, direction=1, scope="ours")


def test_a_variant_of_the_papers_method_stands_beside_its_row_and_is_not_counted():
    import pandas as pd
    from rtlkit import findings as F
    rows = [Finding("05", "Provably Robust Transfer", "Table 1", "wn claim (L2 rows, App. A.1)", 0.233, 0.274, 0.01,
                    1000, 1).row(),
            Finding("05", "Provably Robust Transfer", "Table 1", "wn claim (variant: L1 rows)", 0.233, -0.02, 0.01,
                    1000, 1, scope="variant").row()]
    df = F.supersede(pd.DataFrame(rows, columns=F.COLUMNS[:-1]))[F.COLUMNS]
    assert F.standing(df).verdict.tolist() == ["agrees"] and F.variants(df).verdict.tolist() == ["disagrees"]
    assert "| **all** | 1 | 1 | 0 | 0 | 0 | 0 | 1 | 0 |" in F.summary(df)
    md = F.render(df)
    assert "disagrees (variant, not counted)" in md and "1 rows test a claim with a variant" in md
    assert md.index("(L2 rows, App. A.1)") < md.index("(variant: L1 rows)")   # beside it, in its notebook's section
