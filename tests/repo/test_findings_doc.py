"""The committed findings are the ones the code computes from the committed CSVs, the documents say
what findings.csv says, and no verdict is typed by hand (issue 21)."""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtlkit.measure import verdicts as V
from rtlkit.suite import findings as F
from rtlkit.suite import registry
from rtlkit.studies import plots
from rtlkit.studies import bn_ablation

ROOT = Path(__file__).resolve().parents[2]
FIG = ROOT / "figures"


def test_findings_csv_is_what_the_code_computes_from_the_committed_figures():
    committed = pd.read_csv(FIG / "findings.csv")
    fresh = pd.read_csv(__import__("io").BytesIO(F.collect(FIG).to_csv(index=False).encode()))
    assert list(committed.columns) == F.COLUMNS
    assert len(committed) == len(fresh) > 50
    for col in F.COLUMNS:
        a, b = committed[col], fresh[col]
        if pd.api.types.is_numeric_dtype(a):
            assert np.allclose(a.to_numpy(float), b.to_numpy(float), equal_nan=True, rtol=0, atol=1e-12), col
        else:
            assert a.fillna("").astype(str).tolist() == b.fillna("").astype(str).tolist(), col


def test_findings_md_and_the_readme_block_are_generated_from_the_csv():
    df = pd.read_csv(FIG / "findings.csv")
    prov = pd.read_csv(FIG / "provenance.csv")
    assert (FIG / "findings.md").read_text() == F.render(df, pd.read_csv(FIG / "findings_calibration.csv"), prov)
    fresh = pd.read_csv(__import__("io").BytesIO(F.provenance(FIG).to_csv(index=False).encode()))
    pd.testing.assert_frame_equal(prov, fresh)
    assert set(prov.notebook) >= {p.stem for p in (ROOT / "notebooks").glob("0[1-7]_*.ipynb")}
    readme = (ROOT / "README.md").read_text()
    assert F.readme_with(readme, df) == readme, "README's findings block is stale: rtlkit findings --readme README.md"
    assert "figures/findings.md" in readme


def test_the_calibration_is_what_the_code_computes_and_the_seed_aware_rule_passes_it():
    """findings_calibration.csv: every pair of one configuration and another seed in the committed
    run, judged by the verdicts' rule (at most 5 % resolved, on at least 20 pairs of each measure)
    and by the former 2-SE rule of unpaired binomial SEs (which resolves more: it leaves the seeds out)."""
    committed = pd.read_csv(FIG / "findings_calibration.csv")
    fresh = pd.read_csv(__import__("io").BytesIO(F.calibration(FIG).to_csv(index=False).encode()))
    assert list(committed.columns) == F.CALIBRATION_COLUMNS
    pd.testing.assert_frame_equal(committed, fresh)
    for measure, part in committed.groupby("measure"):
        assert len(part) >= 20 and part.resolved.mean() <= 0.05, measure
    robust = committed[committed.measure == "robust_acc"]
    assert robust.resolved_2se_rule.mean() > 0.05   # the rule of unpaired binomial SEs fails the same pairs
    assert (committed.floor_sd > 0).all()


def test_every_counted_disagreement_carries_its_measured_note():
    """A "disagrees" or "different" of the scorecard says beside it what we measured about why."""
    df = F.standing(pd.read_csv(FIG / "findings.csv"))
    bare = df[df.verdict.isin(["disagrees", "different"]) & df.note.fillna("").str.strip().eq("")]
    assert bare.empty, "disagreements without a note:\n" + "\n".join(f"  {r.notebook} {r.where}: {r.claim}"
                                                                      for r in bare.itertuples())


def test_no_counted_row_rests_on_the_test_images_alone():
    """Every verdict of the paper scorecard carries a training-seed part, measured or floored."""
    df = F.standing(pd.read_csv(FIG / "findings.csv"))
    assert len(df) and set(df.seed_source) <= {"measured", "floored"}, set(df.seed_source)
    assert (df.se_seed > 0).all() and (df.seed_df >= 1).all()
    floored = df[df.seed_source == "floored"]
    assert floored.floor_from.str.len().gt(0).all()


def test_no_verdict_is_typed_by_hand():
    for doc in ("README.md", "BENCHMARKS.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))):
        text = (ROOT / doc).read_text()
        head, _, rest = text.partition(F.BEGIN)
        text = head + rest.partition(F.END)[2]
        typed = re.findall(r"\*\*[^*\n]*\b(agrees|disagrees|unresolved)\b[^*\n]*\*\*", text)
        assert not typed, f"{doc}: a verdict in bold is typed by hand: {typed}"
        assert "| verdict |" not in text, f"{doc}: a hand-written verdict column"


def test_every_notebook_ends_with_its_findings_cell():
    for nb in registry.with_findings():
        path = next((ROOT / "notebooks").glob(f"{nb}_*.ipynb"))
        cells = json.loads(path.read_text())["cells"]
        assert f'findings.table("{nb}", session.figures_dir)' in "".join(cells[-1]["source"]), path.name


def test_a_verdict_follows_the_numbers(tmp_path):
    """Change a 02 table's numbers and the verdict changes with them: it is computed. Three seeds a
    cell, so the claim's seed part is measured from its own paired differences."""
    claim = "freezing the fine-tuned BN affine raises robustness (reuse statistics, k = 4)"
    jitter = (0.0, 0.01, -0.01)

    def verdict_with(freeze_minus_train: float) -> V.Finding:
        rows = [dict(model=None, dataset="mnist-5k", seed=s, clean_acc=0.9, n_test=1000, k=4, bn_stats=st, bn_affine=af,
                     robust_acc=0.5 + jitter[s] * (af == "freeze") + (freeze_minus_train if af == "freeze" else 0)
                     + 0.02 * (st == "update"), source="rtlkit")
                for s in range(3) for st in ("reuse", "update") for af in ("freeze", "train")]
        pd.DataFrame(rows).to_csv(tmp_path / "02_bn_ablation.csv", index=False)
        return next(f for f in F.of_notebook("02", tmp_path) if f.claim == claim)
    base = verdict_with(0.0)
    assert base.seed_source == "measured" and base.verdict == "unresolved"
    assert verdict_with(0.14).verdict == "agrees" and verdict_with(-0.14).verdict == "disagrees"
    assert verdict_with(0.14).paper_effect == base.paper_effect


def test_cartl_table1_paper_rows_are_the_printed_numbers():
    rows = bn_ablation.paper_rows()
    cell = lambda sc, k, a, s, col: float(rows[(rows.dataset == sc) & (rows.k == k) & (rows.bn_affine == a)   # noqa: E731
                                               & (rows.bn_stats == s)][col].iloc[0])
    assert len(rows) == 16
    assert math.isclose(cell("CIFAR-100 -> CIFAR-10", 8, "train", "update", "robust_acc"), 0.1436)
    assert math.isclose(cell("CIFAR-100 -> CIFAR-10", 8, "freeze", "reuse", "robust_acc"), 0.1854)
    assert math.isclose(cell("CIFAR-10 -> GTSRB", 6, "freeze", "update", "clean_acc"), 0.9213)
    assert math.isclose(cell("CIFAR-10 -> SVHN", 6, "train", "reuse", "robust_acc"), 0.0922)
    assert math.isclose(cell("CIFAR-10 -> SVHN", 5, "freeze", "reuse", "robust_acc"), 0.1416)
    assert math.isclose(cell("CIFAR-10 -> SVHN", 5, "train", "update", "clean_acc"), 0.9347)


def test_one_seed_draws_no_bar_and_says_so():
    one = pd.DataFrame({"k": [1, 2], "seed": [0, 0], "clean_acc": [0.5, 0.6], "robust_acc": [0.3, 0.4]})
    g = plots.seed_bars(one, "k", ["clean_acc", "robust_acc"])
    assert g[("robust_acc", "err")].isna().all() and plots.seeds_note(one) == "1 seed, no error bars"
    three = pd.DataFrame({"k": [1, 1, 1], "seed": [0, 1, 2], "clean_acc": [0.5, 0.6, 0.7], "robust_acc": [0.3] * 3})
    g = plots.seed_bars(three, "k", ["clean_acc", "robust_acc"])
    assert math.isclose(g[("clean_acc", "err")].iloc[0], 100 * 2 * 0.1 / math.sqrt(3))   # +- 2 SE, in %
    assert plots.seeds_note(three) == "3 seeds, bars +- 2 SE over seeds"


@pytest.mark.parametrize("p, n", [(0.0, 1000), (1.0, 500), (0.5, 100)])
def test_an_accuracy_at_the_floor_still_has_an_se(p, n):
    rows = pd.DataFrame({"acc": [p], "n_test": [n]})
    mean, se, nn, seeds = V.mean_se(rows, "acc")
    assert mean == p and nn == n and seeds == 1 and se > 0
    q = (p * n + 2) / (n + 4)
    assert math.isclose(se, math.sqrt(q * (1 - q) / (n + 4)))


def test_new_transcriptions_are_the_printed_numbers():
    """Issue 21 point 11: Shafahi Tables 2-3, Table 5's CW-20 column, Table 7's CIFAR-10 rows,
    Fig. 4's natural-MLP PGD as fractions; Provably Robust Transfer Table 4's MNIST -> KMNIST half."""
    from rtlkit.studies import provable
    from rtlkit.studies import shafahi
    t23 = shafahi.PAPER["tables2_3"]
    r = t23[(t23.pair == "CIFAR-10 -> CIFAR-100") & (t23.source == "robust")].iloc[0]
    assert np.allclose([r.clean_acc, r.robust_ce, r.robust_cw, r.robust_acc], [0.4159, 0.1163, 0.0968, 0.0968])
    r = t23[(t23.pair == "ImageNet -> CIFAR-10+") & (t23.source == "robust")].iloc[0]
    assert r.table == "Table 3" and np.allclose([r.clean_acc, r.robust_ce, r.robust_cw], [0.8833, 0.2266, 0.2601])
    assert len(t23) == 12
    lwf = shafahi.PAPER["lwf"]
    t5 = lwf[(lwf.table == "Tables 5/7") & (lwf.target == "CIFAR-100") & (lwf.lam_d == 0.001)].iloc[0]
    assert math.isclose(t5.robust_cw, 0.2317) and math.isclose(t5.robust_ce, 0.2431) and math.isclose(t5.robust_acc, 0.2317)
    t7 = lwf[(lwf.table == "Tables 5/7") & (lwf.target == "CIFAR-10")]
    assert len(t7) == 8
    r = t7[t7.lam_d == 1e-4].iloc[0]
    assert (round(r.clean_acc, 4), round(r.robust_ce, 4), round(r.robust_cw, 4)) == (0.8781, 0.4654, 0.4729)
    assert shafahi.PAPER["fig4_natural_pgd"][5] == 0.0661 and max(shafahi.PAPER["fig4_natural_pgd"].values()) < 1
    t4 = provable.PAPER["table4"]
    m = t4[(t4.pair == "MNIST -> KMNIST") & (t4.split == "target") & (t4.constraint == "wn") & (t4["mode"] == "adv-d")].iloc[0]
    assert [round(float(m[c]), 4) for c in ("a_b", "label_a_v", "label_rad", "rep_a_m", "rep_a_v", "logit_a_m", "logit_a_v")] \
        == [0.923, 0.896, 0.191, 0.913, 0.911, 0.913, 0.896]
    assert len(t4) == 40 and set(t4.pair) == {"MNIST -> KMNIST", "FMNIST -> KMNIST"}
