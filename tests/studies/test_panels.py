"""Every notebook's widget panel as a person uses it (issue 14's defects): returned once and never
displayed by itself, controls above the plot, every option visible, an empty selection answered by
a line instead of a traceback; and the figures keep their reference lines and labels readable."""
import matplotlib
import pandas as pd
import pytest

import numpy as np

from rtlkit.studies import bn_ablation
from rtlkit.studies import cartl
from rtlkit.studies import layer_freezing
from rtlkit.studies import pretraining
from rtlkit.studies import provable
from rtlkit.studies import shafahi

W = pytest.importorskip("ipywidgets")


@pytest.fixture(autouse=True)
def no_self_display(monkeypatch):
    import IPython.display
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: pytest.fail("a panel displayed itself"))


def rows(**cols):
    n = max(len(v) for v in cols.values() if isinstance(v, list))
    return pd.DataFrame({k: (v if isinstance(v, list) else [v] * n) for k, v in cols.items()})


def _ft():
    return rows(k=[1, 2, 4], clean_acc=[0.5, 0.7, 0.9], robust_acc=[0.3, 0.5, 0.6], seed=0, dataset="t")


def panels():
    ft, src = _ft(), rows(clean_acc=[0.9], robust_acc=[1.0])
    bn = rows(k=[4, 4, 6, 6], case=["a", "b", "a", "b"], clean_acc=0.9, robust_acc=0.5, seed=0, bn_stats="reuse",
              bn_affine="train", dataset="t")
    grid = rows(k=[4, 4, 6, 6], lam=0.005, beta=[1.0, 0.4, 1.0, 0.4], clean_acc=0.9, robust_acc=0.5, seed=0)
    abl = rows(k=[4, 4, 6, 6], method=["vanilla", "CARTL"] * 2, clean_acc=0.9, robust_acc=0.5, seed=0)
    lwf = rows(lam_d=[0.1, 0.01], method="LwF", clean_acc=0.9, robust_acc=0.4, seed=0)
    t4 = rows(target="a", finetune="AT", pretraining=["Random", "AT"], sa=0.9, ra_wb=0.5, ra_bb=0.6, clean_acc=0.9,
              robust_acc=0.5, seed=0)
    t5 = rows(target="a", finetune="CR", pretraining=["Random", "CR"], sa=0.9, ra_ct=0.5, acr=0.6, clean_acc=0.9,
              robust_acc=0.5, seed=0)
    curves = rows(target="a", pretraining="CR", r=[0.0, 0.5], sigma=0.5, certifiable=True, table3=True, robust_acc=0.5,
                  acr=0.6)
    t1 = rows(pair=["p", "p", "q", "q"], mode=["normal", "adv"] * 2, constraint="wn", layers=4, split="target",
              seed=0, acc=0.8, lipschitz_bound=1.0)
    st = rows(pair="p", mode=["normal", "adv"], split="target", constraint="wn", layers=4, seed=0, a_b=0.9)
    rc = pd.concat([rows(pair="p", mode=m, split="target", constraint="wn", layers=4, seed=0, r=[0.0, 0.1],
                         method=meth, a_v=[0.8, 0.5]) for m in ("normal", "adv") for meth in provable.SMOOTHINGS])
    return {"01": layer_freezing.panel(ft, src, ft), "02": bn_ablation.panel(bn), "03": cartl.panel(grid, abl, lwf),
            "04": pretraining.panel(t4, t5, curves), "05": provable.panel(t1, st, rc), "06": _shafahi_panel()}


def _shafahi_panel():
    t23 = rows(pair=["p", "p", "q", "q"], source=["robust", "natural"] * 2, clean_acc=0.8, robust_acc=0.4)
    f3 = rows(arm=list(shafahi.ARMS) * 2, per_class=["10"] * 3 + ["all"] * 3, clean_acc=0.8, robust_acc=0.4,
              mean_acc=0.6, train_seconds=1.0)
    f4 = rows(source=["robust", "robust", "natural", "natural"], hidden=[0, 1, 0, 1], bn_dropout=False, train_acc=0.9,
              val_acc=0.8, robust_ce=0.4, robust_cw=0.3, robust_acc=0.3)
    grads = pd.DataFrame([dict(model=f"{k} linear", source=k, image=i, label=i, stroke_share=0.3,
                               grad=np.random.default_rng(i).normal(size=(4, 4)), image_pixels=np.ones((4, 4)) / 2)
                          for k in ("robust", "natural") for i in range(3)])
    return shafahi.panel(t23, f3, f4, grads)


def test_panels_are_returned_with_controls_above_the_plot_and_every_option_shown():
    for name, box in panels().items():
        assert isinstance(box, W.VBox) and len(box.children) == 2, name
        controls, out = box.children
        assert isinstance(controls, W.HBox) and isinstance(out, W.Output), name
        for c in controls.children:
            if isinstance(c, W.SelectMultiple):
                assert c.rows >= len(c.options), f"{name}: {c.description} hides options"


def test_selecting_nothing_prints_a_line_not_a_traceback(capsys):
    for name, box in panels().items():
        for c in box.children[0].children:
            if isinstance(c, W.SelectMultiple):
                c.value = ()
        assert "Nothing selected" in capsys.readouterr().out, name
    matplotlib.pyplot.close("all")


def test_a_source_robustness_of_100_percent_stays_inside_the_axes():
    fig = layer_freezing.plot_layer_freezing(_ft(), rows(clean_acc=[1.0], robust_acc=[1.0]))
    ax = fig.axes[0]
    line = [ln for ln in ax.get_lines() if ln.get_label() == "source robustness"][0]
    assert line.get_ydata()[0] == 100 and ax.get_ylim()[1] > 100


def _overlaps(fig) -> list:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        boxes = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()]
        bad += [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    return bad


def test_long_pair_names_and_target_names_never_overlap():
    pairs = ["fashion-mnist -> mnist-5k", "fashion-mnist[0-4] -> fashion-mnist[5-9]", "fashion-mnist -> digits-8x8"]
    df = rows(pair=[p for p in pairs for _ in range(3)], method=["vanilla", "CARTL", "LwF"] * 3, clean_acc=0.9,
              robust_acc=0.5, seed=0)
    assert not _overlaps(cartl.plot_method_bars(df, "pair"))
    targets = ["fashion-mnist[5-9] n=2000", "mnist-5k", "mnist-5k 20%", "digits-8x8", "fashion-mnist[5-9] n=50"]
    t4 = rows(target=[t for t in targets for _ in range(3)], pretraining=["Random", "AT", "SimCLR"] * 5, finetune="AT",
              sa=0.9, ra_wb=0.5, ra_bb=0.6, clean_acc=0.9, robust_acc=0.5, seed=0)
    assert not _overlaps(pretraining.plot_bars(t4, ("sa", "ra_wb", "ra_bb")))
    matplotlib.pyplot.close("all")
