"""The findings rule on constructed cases, and its standard errors against closed forms."""
import math

import numpy as np
import pytest

from rtlkit import ConfigError
from rtlkit.findings import Finding, binomial_se, bootstrap_se, paired_se, verdict


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


def test_binomial_and_paired_se_closed_forms():
    assert binomial_se(0.5, 100) == 0.05
    assert math.isclose(binomial_se(0.9, 500), math.sqrt(0.09 / 500))
    a = np.array([1, 1, 0, 0] * 25)
    assert paired_se(a, a) == 0.0                       # the same results: no uncertainty in the difference
    b = 1 - a                                           # every example flips: d = +-1, sd 1.005, SE 0.1005
    assert math.isclose(paired_se(a, b), np.std(a - b, ddof=1) / 10)


def test_bootstrap_se_of_one_seed_matches_the_binomial_se():
    rng = np.random.default_rng(0)
    r = (rng.random(1000) < 0.7).astype(float)
    assert abs(bootstrap_se(r, draws=4000) - binomial_se(r.mean(), 1000)) < 0.0015


def test_seeds_that_disagree_widen_the_bootstrap_se():
    rng = np.random.default_rng(1)
    base = (rng.random(500) < 0.7).astype(float)
    same = np.stack([base, base, base])
    spread = np.stack([base, np.roll(base, 1) * 0, np.ones(500)])   # seeds at 0.7, 0.0 and 1.0
    assert bootstrap_se(spread) > 5 * bootstrap_se(same)


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
