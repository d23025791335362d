"""Every notebook executes headless through papermill at the `smoke` profile, writes its
figure + CSV + manifest, and is committed without outputs with a `parameters` cell."""
import json

import nbformat
import pandas as pd
import pytest

from rtlkit.suite import figures

BOOKS = figures.notebooks()

# the rates in [0, 1] of each table that is not a clean / robust pair, declared per table (a renamed
# or dropped column fails): 05's head accuracies, search rates and verified accuracies, 06's train
# fit and stroke share, 07's cascade accuracies and masking warnings
RATES = {"05_radius": ("a_v",), "05_table1_lipschitz": ("acc",), "05_table2_search": ("acc", "p_z", "p_x"),
         "05_table3_smoothing": ("a_b", "label_a_v", "rep_a_v", "logit_a_v"),
         "05_table4_smoothing_pairs": ("a_b", "label_a_v", "rep_a_v", "logit_a_v"),
         "06_fig3_low_data": ("clean_acc", "robust_acc"), "06_fig4_mlp_depth": ("clean_acc", "robust_acc", "train_acc"),
         "06_fig5_gradients": ("stroke_share",), "06_tables1_3_probes": ("clean_acc", "robust_acc", "train_acc"),
         "06_tables4_7_lwf": ("clean_acc", "robust_acc"), "07_cards": ("accuracy",), "07_masking_checks": ("warn",),
         "07_report_cards": ("accuracy",)}


def test_there_are_notebooks():
    assert [b.name[:2] for b in BOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_committed_clean_with_parameters(book):
    nb = nbformat.read(book, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), "notebooks are committed without outputs"
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def test_notebooks_execute_at_smoke(smoke_suite, monkeypatch):
    runs, figs, times = smoke_suite["runs"], smoke_suite["figs"], smoke_suite["times"]
    monkeypatch.setenv("RTLKIT_RUNS", str(runs))
    assert set(times) == {b.name for b in BOOKS}
    manifests = {p: json.loads(p.read_text()) for p in figs.glob("*.json")}
    for book in BOOKS:
        mine = [p for p, m in manifests.items() if m["notebook"] == book.stem]
        assert mine, f"{book.name} saved no figure"
        for path in mine:
            manifest = manifests[path]
            assert (figs / manifest["figure"]).stat().st_size > 10_000
            table = pd.read_csv(figs / manifest["table"])
            shares = list(RATES.get(manifest["table"][:-4], ("clean_acc", "robust_acc")))
            assert set(shares) <= set(table.columns), f"{manifest['table']}: no column {set(shares) - set(table.columns)}"
            assert len(table) > 0
            # the paper's rows, as printed, are marked in column origin (06) or source (03-05)
            ours = table[table.origin != "paper"] if "origin" in table else \
                table[table.source != "paper"] if "source" in table else table
            assert len(ours) > 0
            if book.stem in ("06_shafahi", "07_report_cards"):   # a combined table: train_acc is blank on Table 1's source rows
                assert ours[shares].apply(lambda s: s.notna().any() and s.dropna().between(0, 1).all()).all()
            else:
                assert ours[shares].apply(lambda s: s.between(0, 1)).all().all()
            assert manifest["profile"] == "smoke"
            assert manifest["wall_seconds_since_notebook_start"] > 0
            assert manifest["device"] and manifest["commit"]
    assert {m["figure"] for m in manifests.values()} >= {
        "01_layer_freezing.png", "02_bn_ablation.png", "03_table2_grid.png", "03_table3_ablation.png",
        "03_fig4_tradeoff.png", "03_fig5_low_data.png", "03_table4_pairs.png",
        "04_table2_noise.png", "04_table3_certified_sources.png", "04_table4_empirical.png", "04_fig2_empirical_gains.png",
        "04_table5_certified.png", "04_fig3_certified_gains.png", "04_certified_curves.png", "04_table6_empirical.png",
        "04_table6_certified.png", "04_table7_standard_finetuning.png",
        "05_table1_lipschitz.png", "05_table2_search.png", "05_table3_smoothing.png", "05_table4_smoothing_pairs.png",
        "05_radius.png", "06_tables1_3_probes.png", "06_fig3_low_data.png", "06_fig4_mlp_depth.png",
        "06_fig5_gradients.png", "06_tables4_7_lwf.png", "07_report_cards.png", "07_masking_checks.png", "07_cards.png"}
    for m in manifests.values():   # notebook 04's manifests say how every number was measured
        if m["notebook"] == "04_pretraining":
            assert {"N0", "N", "alpha", "sigma", "apgd_restarts", "square_queries", "cert_images", "eps_rule"} <= set(m)
    # every source is trained once and shared: the AT source (01, 02, 03), one FDM source per
    # (lambda, k) of the smoke grid (2), the extra pair's own AT + FDM sources (2), and 04's four
    # pre-trainings (AT, CR, SimCLR, ST), which its tables share; 05's normal, noise, adv-d, adv-s and the
    # split pair's normal (its adv modes are 01's and 03's sources); 06's two natural sources and Fig. 3's
    # AT from scratch at each N; 03's replicated claims add their seed-1 AT and FDM (k = 2, 3) sources
    sources = list(runs.glob("source-*"))
    assert len(sources) == 5 + 3 + 4 + 5 + 2 + 3
    # rtlkit.suite.plan, without running anything, names exactly the runs and evaluations the notebooks made
    from rtlkit.suite import plan
    from rtlkit.studies import profiles
    p = plan.plan(profiles.get("smoke"))
    made = {d.name for d in runs.iterdir() if d.name not in ("notebooks", ".locks")}
    assert set(p.trainings) == made
    assert len(p.evaluations) == sum(len(list(runs.glob(f"*/{kind}-*.{ext}"))) for kind, ext in (
        ("eval", "json"), ("cert", "json"), ("noisy", "pt"), ("search", "json"), ("bn-swap", "json"), ("card", "json")))
    assert p.totals(include_cached=False)["evaluations"] == 0 and not any(r["cached"] is False for r in p.trainings.values())
    # the suite's progress bar counted exactly these files, and they are all there now
    suite, _ = figures.suite_plan("smoke")
    assert sorted(suite.paths()) == sorted(p.paths()) and figures.suite_status(p.paths()) == len(p.paths())


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(figures.ConfigError, match="unknown profile"):
        figures.run("enormous")


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import papermill

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        figures.run("smoke", figures_dir=str(tmp_path / "figs"), out_dir=str(tmp_path / "x"), only=["02"], progress=False)
    out = capsys.readouterr()
    assert "0 cached, 22 to run" in out.out   # 02 at smoke: 18 runs and evaluations, 4 statistics swaps
    assert "stopped: 0 of 22" in out.err and "--profile smoke --only 02" in out.err
