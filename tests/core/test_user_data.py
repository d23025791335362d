"""Your own data: an ImageFolder directory of images or an .npz of arrays becomes a dataset that
every DataSpec option works on; its tensors are exactly the files' pixels; every bad input is one
ConfigError naming the problem before any compute, with no file written."""
import numpy as np
import pytest
import torch
from PIL import Image

from rtlkit import ConfigError
from rtlkit.core import data as D
from rtlkit.runs.specs import DataSpec

CLASSES = ("cat", "dog", "eel")


def pixels(c: int, i: int, size: int = 16, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(100 * c + i)
    a = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    return a[..., 0] if channels == 1 else a


def write_folder(root, per_class=(4, 2), channels=3, size=16, split=True):
    """root/train/<class>/<i>.png and root/test/<class>/<i>.png (or root/<class>/ without split)."""
    parts = {"train": per_class[0], "test": per_class[1]} if split else {"": sum(per_class)}
    for part, n in parts.items():
        for c, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pixels(c, i + (100 if part == "test" else 0), size, channels)).save(folder / f"{i:03d}.png")
    return root


def test_an_image_folder_loads_to_the_exact_pixels_with_folder_class_names(tmp_path):
    name = D.image_folder(write_folder(tmp_path / "imgs"))
    tr, te = D.load(name, "train"), D.load(name, "test")
    assert tr.info.classes == CLASSES and tr.info.channels == 3 and tr.info.size == 16 and tr.info.family == "cifar"
    assert len(tr) == 12 and len(te) == 6
    for c in range(3):
        for i in range(4):
            assert torch.equal(tr.x[4 * c + i], torch.from_numpy(pixels(c, i)).permute(2, 0, 1))
        assert (tr.y[4 * c:4 * c + 4] == c).all()
    assert torch.equal(te.x[2], torch.from_numpy(pixels(1, 100)).permute(2, 0, 1))


def test_every_dataspec_option_works_on_a_folder(tmp_path):
    name = D.image_folder(write_folder(tmp_path / "imgs", per_class=(6, 3)))
    assert len(DataSpec(name, classes=(0, 2)).train()) == 12
    assert DataSpec(name, classes=(0, 2)).test().info.classes == ("cat", "eel")
    assert len(DataSpec(name, fraction=0.5).train()) == 9
    assert len(DataSpec(name, per_class=2).train()) == 6
    assert len(DataSpec(name, test_n=3).test()) == 3
    assert len(D.evenly_spaced(DataSpec(name).test(), 4)) == 4


def test_a_declared_size_resizes_the_shorter_side_and_centre_crops(tmp_path):
    root = tmp_path / "wide"
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 40, 3), 40 * c + i, np.uint8)).save(root / cls / f"{i}.png")
    name = D.image_folder(root, size=10, split_seed=1)
    d = D.load(name, "train")
    assert d.x.shape[1:] == (3, 10, 10) and d.info.size == 10
    assert (d.x[d.y == 2] >= 80).all()   # a constant image stays constant through resize and crop
    again = D.image_folder(root, size=10, split_seed=1)
    assert again == name and torch.equal(D.load(again, "test").x, D.load(name, "test").x)
    assert len(D.load(name, "train")) + len(D.load(name, "test")) == 9   # the seeded split keeps every image


def test_grey_images_are_mnist_like_and_a_changed_file_gets_another_name(tmp_path):
    root = write_folder(tmp_path / "grey", channels=1)
    name = D.image_folder(root)
    d = D.load(name, "train")
    assert d.info.channels == 1 and d.info.family == "mnist"
    assert torch.equal(d.x[0, 0], torch.from_numpy(pixels(0, 0, channels=1)))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "train" / "cat" / "000.png")
    assert D.image_folder(root) != name   # the name carries the files' sha256: no cached result is shared


@pytest.mark.parametrize("case, message", [
    ("empty class", "empty class folder"),
    ("corrupt image", "001.png: not a readable image"),
    ("test class not in train", r"class\(es\) fox not in"),
    ("mixed modes", "mixed image modes"),
    ("no class folders", "no class folders"),
    ("mixed sizes without a size", "shapes"),
])
def test_bad_folders_are_one_error_before_any_compute(case, message, tmp_path, no_compute_but_images):
    root = write_folder(tmp_path / "imgs")
    if case == "empty class":
        (root / "train" / "fox").mkdir()
    elif case == "corrupt image":
        (root / "train" / "dog" / "001.png").write_bytes(b"\x89PNG not really")
    elif case == "test class not in train":
        (root / "test" / "fox").mkdir()
        Image.fromarray(pixels(0, 0)).save(root / "test" / "fox" / "0.png")
    elif case == "mixed modes":
        Image.fromarray(pixels(0, 0, channels=1)).save(root / "train" / "cat" / "000.png")
    elif case == "no class folders":
        root = tmp_path / "flat"
        root.mkdir()
        Image.fromarray(pixels(0, 0)).save(root / "0.png")
    elif case == "mixed sizes without a size":
        Image.fromarray(pixels(0, 0, size=20)).save(root / "train" / "cat" / "000.png")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=message):
        D.image_folder(root)
    assert sorted(p for p in tmp_path.rglob("*")) == before   # nothing written


@pytest.fixture
def no_compute_but_images(monkeypatch):
    from rtlkit.runs import cache as runs
    from rtlkit.runs import specs
    from rtlkit.train import loop as T
    for mod, name in ((T, "train"), (runs, "train"), (specs, "build"), (runs, "evaluate")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("compute started"))


def test_an_npz_loads_to_the_exact_arrays(tmp_path):
    x = np.stack([pixels(c, i, channels=1) for c in range(3) for i in range(5)])
    y = np.repeat(np.arange(3), 5)
    xt = np.stack([pixels(c, 50, channels=3) for c in range(3)])
    np.savez(tmp_path / "grey.npz", x=x, y=y, classes=np.array(CLASSES))
    np.savez(tmp_path / "rgb.npz", x=np.stack([pixels(c, i) for c in range(3) for i in range(5)]), y=y,
             x_test=xt, y_test=np.arange(3))
    g = D.array_file(tmp_path / "grey.npz", split_seed=3)
    tr, te = D.load(g, "train"), D.load(g, "test")
    assert tr.info.classes == CLASSES and len(tr) + len(te) == 15 and (torch.bincount(te.y) == 1).all()
    for d in (tr, te):
        assert all(torch.equal(d.x[j, 0], torch.from_numpy(x[d.index[j]])) for j in range(len(d)))
    r = D.array_file(tmp_path / "rgb.npz")
    assert torch.equal(D.load(r, "test").x, torch.from_numpy(xt).permute(0, 3, 1, 2))
    assert len(D.load(r, "train")) == 15 and D.load(r, "train").info.channels == 3


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((4, 8, 8), np.float32), y=np.arange(4)), "x must be uint8"),
    (dict(x=np.zeros((4, 8, 8), np.uint8), y=np.arange(3)), "y must be 4 integer labels"),
    (dict(x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 0, 2, 2])), "empty class"),
    (dict(x=np.zeros((4, 8, 8), np.uint8)), "needs arrays x and y"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 0, 1, 1]), x_test=np.zeros((2, 8, 8, 3), np.uint8),
          y_test=np.array([0, 5])), "y_test has a class that y lacks"),
])
def test_bad_npz_files_are_one_error(arrays, message, tmp_path):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message):
        D.array_file(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a readable .npz"):
        D.array_file(tmp_path / "junk.npz")
