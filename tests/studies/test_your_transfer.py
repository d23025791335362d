"""Notebook 00 on your model and data: a generated ImageFolder of PNGs and a ResNet-18 checkpoint
written here (MadryLab robustness format), run headless by papermill at smoke; its settings'
errors come before anything is written."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from rtlkit.studies import profiles
from rtlkit import ConfigError
from rtlkit.studies import your_transfer as S
from rtlkit.suite import plan

NOTEBOOK = S.REPO_ROOT / "notebooks" / "00_your_transfer.ipynb"


def _image_folder(root, classes=3, per_split=(18, 9), size=16, seed=0):
    """train/<class>/*.png and test/<class>/*.png: each class a colour bar at its own rows, plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_split):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                img[c * size // classes:(c + 1) * size // classes, :, c] = 230
                Image.fromarray(img).save(root / split / f"class{c}" / f"{i}.png")
    return root


def _robustness_checkpoint(path, classes=1000):
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(num_classes=classes).state_dict()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    state = {**{f"module.model.{k}": v for k, v in sd.items()}, **{f"module.attacker.model.{k}": v for k, v in sd.items()},
             "module.normalizer.new_mean": mean, "module.normalizer.new_std": std}
    torch.save({"model": state, "epoch": 1}, path)
    return path


def test_notebook_00_runs_on_a_folder_and_a_checkpoint(tmp_path):
    import papermill
    target = _image_folder(tmp_path / "my_images")
    ckpt = _robustness_checkpoint(tmp_path / "robust_resnet18.ckpt")
    figs = tmp_path / "figs"
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                               parameters=dict(profile="smoke", figures_dir=str(figs), interactive=False,
                                               source_arch="resnet18", source_path=str(ckpt),
                                               source_format="robustness", target_dir=str(target), ks=[1, 5, "all"]))
    for name in ("00_last_k", "00_bn_policies", "00_methods"):
        assert (figs / f"{name}.png").stat().st_size > 10_000
        m = json.loads((figs / f"{name}.json").read_text())
        assert m["profile"] == "smoke" and m["notebook"] == "00_your_transfer"
    lastk = pd.read_csv(figs / "00_last_k.csv", dtype={"k": str})
    assert lastk["k"].tolist() == ["1", "5", "all"]
    assert all(0 <= a <= 1 for a in lastk["clean_acc"])
    meth = pd.read_csv(figs / "00_methods.csv")
    assert max(meth["clean_acc"]) > 0.5   # it learnt the coloured bars (chance: 1/3)
    assert not (figs / "00_source_card.png").exists()   # no source data given: no source card
    out = (tmp_path / "out.ipynb").read_text()
    assert "plan:" in out and "GPU-" in out


def test_the_profiles_own_source_and_target_plan_before_running(tmp_path):
    s = S.setup(profiles.get("smoke"))
    assert s.source == profiles.get("smoke").source_run(0) and s.k in s.ks
    assert "not cached" in plan.cost(*S.planned(s))
    assert not (tmp_path / "runs").exists()   # the plan ran nothing


@pytest.mark.parametrize("kw,match", [
    (dict(source_path="x.ckpt"), "needs source_arch"),
    (dict(source_arch="resnet18"), "without source_path"),
    (dict(source_arch="resnet18", source_path="missing.ckpt"), "no such file"),
    (dict(norm="l3"), "norm"),
    (dict(eps=-0.1), "eps"),
    (dict(ks=[99]), "k=99"),
    (dict(ks=["all"]), "at least one k below"),
    (dict(target_dir="nowhere/"), "not a folder"),
])
def test_bad_settings_are_one_error_before_anything_is_written(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        S.setup(profiles.get("smoke"), **kw)
    assert not (tmp_path / "runs").exists()
