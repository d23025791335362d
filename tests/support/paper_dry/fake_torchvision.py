"""Datasets written in torchvision's own on-disk formats, at the true image shapes and class counts
and a few images per class, so the paper profile's loaders (``rtlkit.core.data._torchvision``,
``download=False``) run on a machine without the real sets:

| set | files (under the data root) | shape, classes |
| CIFAR-10 | cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickles) | 3x32x32, 10 |
| CIFAR-100 | cifar-100-python/train, test, meta (pickles, fine labels) | 3x32x32, 100 |
| SVHN | train_32x32.mat, test_32x32.mat (X: 32x32x3xN, y: 1..10 with 10 for digit 0) | 3x32x32, 10 |
| GTSRB | gtsrb/GTSRB/Training/000NN/*.ppm, gtsrb/GTSRB/Final_Test/Images/*.ppm + gtsrb/GT-final_test.csv | RGB PPMs, 43 |
| STL-10 | stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt (column-major 3x96x96, labels 1..10) | 3x96x96, 10 |
| MNIST, KMNIST | MNIST/raw, KMNIST/raw: {train,t10k}-{images-idx3,labels-idx1}-ubyte | 1x28x28, 10 |

Each image is a pure function of (set, split, index), and :func:`expected` gives the tensors the
loader must return. torchvision checks the MD5 of the real archives' files for CIFAR, SVHN and
STL-10; ``sitecustomize.py`` beside this file accepts these files instead, in the processes that
put this folder on their PYTHONPATH, and changes nothing else."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

# name -> (classes, channels, size, train images per class, test images per class)
SETS = {"cifar10": (10, 3, 32, 6, 3), "cifar100": (100, 3, 32, 2, 1), "svhn": (10, 3, 32, 6, 3),
        "gtsrb": (43, 3, 32, 2, 1), "stl10": (10, 3, 96, 6, 3), "mnist": (10, 1, 28, 6, 3),
        "kmnist": (10, 1, 28, 6, 3)}


def images(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (N, C, H, W), y int64 (N,)): class-coloured noise, labels cycling through the classes."""
    classes, c, s, n_train, n_test = SETS[name]
    n = classes * (n_train if split == "train" else n_test)
    rng = np.random.default_rng(_seed(name, split))
    y = np.arange(n) % classes
    base = (y * 37 % 200 + 20).astype(np.int64)[:, None, None, None]
    x = np.clip(base + rng.integers(-20, 21, size=(n, c, s, s)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def _seed(name: str, split: str) -> int:
    return sum(ord(ch) * 31 ** i for i, ch in enumerate(f"{name}/{split}")) % 2 ** 32


def expected(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """What rtlkit.core.data.load(name, split) must return (GTSRB's PPMs are written at 32x32, the size
    the loader resizes the real ones to, and its training images come folder by folder, i.e. by class)."""
    x, y = images(name, split)
    if name == "gtsrb" and split == "train":
        order = np.argsort(y, kind="stable")
        return x[order], y[order]
    return x, y


def write_all(root: Path, names=tuple(SETS)) -> Path:
    root = Path(root)
    for name in names:
        globals()[f"_write_{name}"](root)
    return root


def _write_cifar(root: Path, folder: str, batches: list[str], test: str, meta: str, key: str, label_key: str,
                 name: str) -> None:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    classes = SETS[name][0]
    x, y = images(name, "train")
    for i, part in enumerate(np.array_split(np.arange(len(y)), len(batches))):
        with open(d / batches[i], "wb") as f:
            pickle.dump({"data": x[part].reshape(len(part), -1), label_key: y[part].tolist()}, f)
    x, y = images(name, "test")
    with open(d / test, "wb") as f:
        pickle.dump({"data": x.reshape(len(y), -1), label_key: y.tolist()}, f)
    with open(d / meta, "wb") as f:
        pickle.dump({key: [f"{name}-class-{i}" for i in range(classes)]}, f)


def _write_cifar10(root: Path) -> None:
    _write_cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                 "label_names", "labels", "cifar10")


def _write_cifar100(root: Path) -> None:
    _write_cifar(root, "cifar-100-python", ["train"], "test", "meta", "fine_label_names", "fine_labels", "cifar100")


def _write_svhn(root: Path) -> None:
    from scipy.io import savemat
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x, y = images("svhn", split)
        savemat(root / f"{split}_32x32.mat", {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)),   # H, W, C, N
                                               "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)})


def _ppm(path: Path, img: np.ndarray) -> None:
    """A binary PPM (P6) of an (H, W, 3) uint8 image."""
    h, w, _ = img.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(img).tobytes())


def _write_gtsrb(root: Path) -> None:
    base = root / "gtsrb" / "GTSRB"
    x, y = images("gtsrb", "train")
    for i, (img, lab) in enumerate(zip(x, y)):
        folder = base / "Training" / f"{lab:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        _ppm(folder / f"00000_{i:05d}.ppm", img.transpose(1, 2, 0))
    x, y = images("gtsrb", "test")
    test = base / "Final_Test" / "Images"
    test.mkdir(parents=True, exist_ok=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, (img, lab) in enumerate(zip(x, y)):
        _ppm(test / f"{i:05d}.ppm", img.transpose(1, 2, 0))
        rows.append(f"{i:05d}.ppm;32;32;0;0;31;31;{lab}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def _write_stl10(root: Path) -> None:
    d = root / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x, y = images("stl10", split)
        x.transpose(0, 1, 3, 2).tofile(d / f"{split}_X.bin")   # torchvision reads (N, 3, 96, 96) then swaps H, W
        (y + 1).astype(np.uint8).tofile(d / f"{split}_y.bin")
    images("stl10", "test")[0][:2].transpose(0, 1, 3, 2).tofile(d / "unlabeled_X.bin")
    (d / "class_names.txt").write_text("\n".join(f"stl10-class-{i}" for i in range(10)) + "\n")


def _idx(path: Path, arr: np.ndarray) -> None:
    dims = arr.shape
    magic = (0x08 << 8) | len(dims)   # 0x00 0x00, dtype 0x08 (uint8), number of dimensions
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in dims)
                     + arr.astype(np.uint8).tobytes())


def _write_mnist_like(root: Path, folder: str, name: str) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = images(name, split)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)


def _write_mnist(root: Path) -> None:
    _write_mnist_like(root, "MNIST", "mnist")


def _write_kmnist(root: Path) -> None:
    _write_mnist_like(root, "KMNIST", "kmnist")
