"""The paper profile runs end to end before anyone spends GPU hours on it: every notebook at
``paper-dry`` (the paper's datasets by name, WRN-34 / WRN-28 depths and block partitions, ks,
pairs, grids and attack types, shrunk in counts only) on datasets generated in torchvision's own
on-disk formats at the true shapes and class counts, loaded through ``rtlkit.core.data._torchvision``
with download=False."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from rtlkit.core import data as D
from rtlkit.suite import figures
from rtlkit.studies import profiles

HERE = Path(__file__).resolve().parents[1] / "support" / "paper_dry"
sys.path.insert(0, str(HERE))
import fake_torchvision as F  # noqa: E402


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """The paper's datasets, generated, as RTLKIT_DATA; Fashion-MNIST too (so Debian's full copy,
    which the loader prefers, is not used: the dry run stays small)."""
    root = F.write_all(tmp_path / "data")
    F._write_mnist_like(root, "FashionMNIST", "mnist")
    monkeypatch.setenv("RTLKIT_DATA", str(root))
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", root / "no-debian-copy")
    monkeypatch.setattr(D, "_CACHE", {})
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn
    for m in (cifar, stl10, svhn):   # what sitecustomize.py does in the dry run's kernels
        monkeypatch.setattr(m, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    return root


@pytest.mark.parametrize("name", list(F.SETS))
def test_generated_files_load_to_the_exact_tensors_written(name, generated):
    classes, channels, size, _, _ = F.SETS[name]
    for split in ("train", "test"):
        d = D.load(name, split, download=False)
        x, y = F.expected(name, split)
        assert np.array_equal(d.x.numpy(), x) and np.array_equal(d.y.numpy(), y), (name, split)
        assert d.info.num_classes == classes and d.info.channels == channels and d.info.size == size


def test_the_dry_profile_keeps_the_papers_code_paths():
    paper, dry = profiles.get("paper", gpu=True), profiles.get("paper-dry", gpu=True)
    assert dry.model.depth == paper.model.depth and dry.model.n_blocks == paper.model.n_blocks == 17
    assert dry.pretraining.pt_model.depth == paper.pretraining.pt_model.depth == 28
    assert dry.provable.pv_model.n_blocks == paper.provable.pv_model.n_blocks
    assert dry.ks == paper.ks and dry.bn_ks == paper.bn_ks and dry.cartl_ks == paper.cartl_ks
    assert [type(a) for a in dry.eval_attacks] == [type(a) for a in paper.eval_attacks]
    assert [(a.name, b.name) for a, b in dry.pairs] == [(a.name, b.name) for a, b in paper.pairs]
    for field in ("lwf_lams", "cartl_lams", "cartl_betas", "fractions"):
        assert getattr(dry, field) == getattr(paper, field)
    assert dry.provable.pv_modes == paper.provable.pv_modes and dry.provable.pv_r == paper.provable.pv_r
    assert set(dry.provable.pv_radii) <= set(paper.provable.pv_radii) | {paper.provable.pv_r / 2}
    assert dry.provable.pv_scale == paper.provable.pv_scale   # radii x 0.3081 in pixels, as at paper
    assert dry.shafahi.depths == paper.shafahi.depths and dry.pretraining.noise_sigmas == paper.pretraining.noise_sigmas


def test_every_notebook_runs_at_the_paper_dry_profile(generated, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setenv("RTLKIT_RUNS", str(tmp_path / "runs"))
    repo_figures = {p: p.stat().st_mtime_ns for p in (Path(figures.REPO_ROOT) / "figures").glob("*.*")}
    figs = tmp_path / "figs"
    times = figures.run("paper-dry", figures_dir=str(figs), out_dir=str(tmp_path / "executed"), progress=False,
                        extra={"interactive": False})
    assert set(times) == {b.name for b in figures.notebooks()}
    manifests = [json.loads(p.read_text()) for p in figs.glob("*.json")]
    assert {m["notebook"] for m in manifests} == {b.stem for b in figures.notebooks()}
    assert all(m["dry_run"] is True and m["profile"] == "paper-dry" for m in manifests)
    assert {p: p.stat().st_mtime_ns for p in (Path(figures.REPO_ROOT) / "figures").glob("*.*")} == repo_figures
    print({k: round(v) for k, v in times.items()})
