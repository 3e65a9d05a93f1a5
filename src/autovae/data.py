"""Datasets by name, offline sources first.

``load_data(name)`` returns a :class:`DataSplits`: float32 samples shaped (N, C, H, W) (or (N, D)
for vector data, or with ``flatten=True``), split into train / val / test, with int64 labels and
class names when the source has them. Images are in [0, 1] (uint8 is divided by 255); other
numbers are kept as they are: whether they fit is the likelihood's to judge (a Bernoulli needs
[0, 1], a Gaussian takes any real value, e.g. log-permeability fields).

Names (case-insensitive, ``_`` and ``-`` interchangeable), see :data:`DATASETS`:

* ``fashion-mnist``: IDX files (raw or .gz) in ``<root>/FashionMNIST/raw/`` or ``<root>``, then
  Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), then
  torchvision (``download=True`` fetches it).
* ``mnist``, ``kmnist``: IDX files in ``<root>/<MNIST|KMNIST>/raw/``, else torchvision.
* ``cifar10``, ``cifar100``, ``svhn``: torchvision's classes and on-disk layouts (SVHN needs scipy).
* ``digits``: scikit-learn's 1797 8x8 handwritten digits (values 0..16 divided by 16).
* ``darcy-grf`` (16x16), ``darcy-grf-8``, ``darcy-grf-32``, ``darcy-grf-64``: real-valued
  log-permeability Gaussian random fields, registered by :mod:`autovae.inverse.datasets`
  (:func:`register_dataset`); train on them with ``--likelihood gaussian``.
* ``aristoff-bangerth-prior``: 22,000 draws of the Aristoff-Bangerth benchmark's prior as 8x8
  images of ln theta (iid N(4, 2^2)), registered there too; ``--likelihood gaussian``.
* ``control-cauchy``, ``control-laplace``, ``control-mixed`` and ``control:SPEC``: binary
  8x8 images decoded by a known decoder from latents of known beliefs (the control where the
  best pairing is known), registered by :mod:`autovae.control`.
* ``test-subset:N:NAME``: dataset NAME with N of its test images, equal per label (a cheaper
  test NLL; e.g. ``test-subset:1000:fashion-mnist``).
* ``dequantized:L:NAME``: dataset NAME, whose values are the L levels 0, 1/(L-1), ..., 1,
  uniformly dequantised into (0, 1) for a density likelihood (:func:`dequantize`; e.g.
  ``dequantized:17:digits``, ``dequantized:256:fashion-mnist``): the test set is one fixed
  draw, the same for every run; training draws fresh noise for every batch.
* ``orbit``: the AVA paper's 36 RGB images of 64x100 (shipped in ``autovae/datasets/orbit``,
  MIT licence; 21 distinct, all 36 kept as the paper's BM averages over them). Their alpha is
  opaque everywhere and is dropped. As in the paper, ``train`` and ``test`` are the same 36
  images and ``val`` is empty.
* a path to your own data:

  - ``.npy``: one array of samples (no labels); the test set is carved from it;
  - ``.npz``: key ``x`` (optional ``y``: int labels), test carved from it; or keys ``x_train``
    and ``x_test`` (optional ``y_train`` and ``y_test``, both or neither) for your own test set;
    optional ``classes`` (array of names) in either case;
  - a folder of 8-bit images (PNG, JPEG, BMP, GIF, TIFF, WebP), all the same size and all
    greyscale or all colour (RGB; an alpha channel is dropped, not composited), either all
    directly in the folder (no labels) or in class subfolders (labels = sorted subfolder names).

  Array layouts: (N, D) vectors; (N, H, W) greyscale images (a channel axis is added);
  (N, C, H, W); or (N, H, W, C), which is assumed when the last axis is 1 or 3 and the second
  is not, and transposed to (N, C, H, W). Values: uint8 (divided by 255), bool, or any finite
  numbers (kept as they are).

``root`` defaults to ``$AUTOVAE_DATA`` or ``~/.cache/autovae/data``. Nothing is downloaded
unless ``download=True``.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DATASETS", "DATASET_FAMILIES", "DEQUANTIZE_MARGIN", "DataSplits", "DatasetInfo",
           "binarize", "default_root", "dequantize", "dequantized_levels", "load_data",
           "read_idx", "register_dataset", "register_dataset_family", "requantize"]

ROOT_ENV = "AUTOVAE_DATA"
DEFAULT_ROOT = "~/.cache/autovae/data"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_TEST_SEED = 0  # carving a test set from data without one does not depend on `seed`
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TRAIN_TEST = [{"train": True}, {"train": False}]
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class DataSplits:
    """Train / val / test float32 tensors with int64 labels when known."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    classes: list[str] | None = None
    dequantized: int | None = None  # L: the values are a dequantisation of L levels (the
    # training loop draws fresh noise for every batch)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28), or (784,) when flattened."""
        return tuple(self.train.shape[1:])

    def to(self, device: torch.device | str) -> DataSplits:
        """A copy with every tensor on ``device`` (MNIST-size data fit on a GPU as one tensor)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            train_labels=move(self.train_labels),
            val_labels=move(self.val_labels),
            test_labels=move(self.test_labels),
        )

    def __repr__(self) -> str:
        labels = "yes" if self.train_labels is not None else "no"
        classes = len(self.classes) if self.classes else None
        return (
            f"DataSplits(name={self.name!r}, event_shape={self.event_shape}, "
            f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"labels={labels}, classes={classes}, device={self.train.device})"
        )


class _Source(NamedTuple):
    """What a loader returns: raw arrays before validation, scaling and splitting."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None  # None: carve the test set from x_train
    y_test: np.ndarray | None
    classes: list[str] | None
    channels_last: bool | None = None  # None: guess from the shape (see the module docstring)


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: how to load the dataset and its default split sizes."""

    name: str
    description: str
    load: Callable[[Path, bool], _Source] = field(repr=False)
    val_size: int | float = 5000  # default val_size
    test_size: int | float = 0.1  # used only when the source has no test set of its own
    dequantized: int | None = None  # L: the loader returns a dequantisation of L levels


def default_root() -> Path:
    """``$AUTOVAE_DATA`` if set, else ``~/.cache/autovae/data``."""
    from ._env import env_folder

    return env_folder(ROOT_ENV, DEFAULT_ROOT)


# --------------------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (raw or .gz) as a read-only numpy array; cached while the file is unchanged."""
    st = os.stat(path)
    return _read_idx_cached(os.fspath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    code, ndim = (data[2], data[3]) if len(data) >= 4 and data[:2] == b"\0\0" else (0, 0)
    if code not in _IDX_DTYPES or ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()}); re-download it")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims) * dtype.itemsize:
        raise ValueError(f"{path}: truncated or corrupt IDX file (shape {dims}); re-download it")
    array = np.frombuffer(data, dtype, offset=offset).reshape(dims)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    array.flags.writeable = False  # shared by every caller through the cache
    return array


def _find_idx(dirs: Sequence[Path]) -> list[Path] | None:
    """The four IDX files (each raw or .gz) from the first folder that has them all."""
    for folder in dirs:
        found = [
            next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
            for stem in _IDX_FILES
        ]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _load_idx(
    cls_name: str,
    label: str,
    classes: list[str],
    root: Path,
    download: bool,
    extra_dirs: Sequence[Path] = (),
    apt: str | None = None,
) -> _Source:
    """MNIST-format data: read offline IDX files with :func:`read_idx`, else ask torchvision."""
    raw = root / cls_name / "raw"
    dirs = [raw, *extra_dirs]
    files = _find_idx(dirs)
    if files is not None:
        x_train, y_train, x_test, y_test = (read_idx(p) for p in files)
        return _Source(x_train, y_train, x_test, y_test, list(classes))
    if apt:
        missing = (f"{label} not found offline (looked in {', '.join(map(str, dirs))}): run "
                   f"`apt-get install {apt}`, put the 4 IDX files in {raw}{os.sep},")
    else:
        missing = (f"{label} not found offline: torchvision expects {raw / _IDX_FILES[0]}, with "
                   f"{', '.join(_IDX_FILES[1:])} beside it (raw or .gz); put the files there")
    train, test = _torchvision(cls_name, label, root, download, missing, _TRAIN_TEST)
    return _Source(train.data.numpy(), train.targets.numpy(), test.data.numpy(),
                   test.targets.numpy(), list(classes))


# --------------------------------------------------------------------------- torchvision


def _torchvision(cls_name: str, label: str, root: Path, download: bool, missing: str,
                 splits: list[dict]) -> list:
    """torchvision datasets ``cls_name(root, **split)``; a failure becomes one ValueError.

    ``missing`` says where the files belong; it is the message when they are not found offline.
    """
    if find_spec("torchvision") is None:
        raise ImportError(f"{label} needs torchvision: pip install torchvision")
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    try:
        return [cls(str(root), download=download, **split) for split in splits]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise ValueError(f"{missing} or pass download=True (--download)") from None
        raise ValueError(f"{label}: download into {root} failed: {err}") from err
    except OSError as err:  # network errors while downloading
        if not download:
            raise
        raise ValueError(f"{label}: download into {root} failed: {err}") from err


def _load_cifar(cls_name: str, label: str, folder: str, files: str, root: Path,
                download: bool) -> _Source:
    missing = (f"{label} not found (or corrupt) offline: torchvision expects {root / folder}"
               f"{os.sep} ({files}); put the files there")
    train, test = _torchvision(cls_name, label, root, download, missing, _TRAIN_TEST)
    return _Source(train.data, np.asarray(train.targets), test.data, np.asarray(test.targets),
                   list(train.classes), channels_last=True)


def _load_svhn(root: Path, download: bool) -> _Source:
    if find_spec("scipy") is None:
        raise ImportError("svhn needs scipy (torchvision reads .mat with it): pip install scipy")
    missing = (f"SVHN not found (or corrupt) offline: torchvision expects "
               f"{root / 'train_32x32.mat'} and {root / 'test_32x32.mat'}; put the files there")
    train, test = _torchvision("SVHN", "SVHN", root, download, missing,
                               [{"split": "train"}, {"split": "test"}])
    return _Source(train.data, train.labels, test.data, test.labels,
                   [str(i) for i in range(10)], channels_last=False)


def _load_fashion_mnist(root: Path, download: bool) -> _Source:
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    return _load_idx("FashionMNIST", "Fashion-MNIST", classes, root, download,
                     extra_dirs=[root, DEBIAN_FASHION_MNIST], apt="dataset-fashion-mnist")


ORBIT_DIR = Path(__file__).resolve().parent / "datasets" / "orbit"


def _load_orbit(root: Path, download: bool) -> _Source:
    """The 36 orbit PNGs, RGB (alpha is 255 everywhere in them, so dropping it loses nothing);
    the test set is the training set, the paper's protocol."""
    x = _read_image_folder(ORBIT_DIR).x_train
    return _Source(x, None, x, None, None, channels_last=True)


def _load_digits(root: Path, download: bool) -> _Source:
    return _Source(*_digits_arrays(), None, None, [str(i) for i in range(10)])


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    if find_spec("sklearn") is None:
        raise ImportError("digits needs scikit-learn: pip install scikit-learn")
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16).astype(np.float32), d.target.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False  # shared by every caller through the cache
    return x, y


_DIGIT_NAMES = [str(i) for i in range(10)]
_KMNIST_NAMES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("fashion-mnist", "Zalando Fashion-MNIST, 60k+10k 28x28 greyscale",
                    _load_fashion_mnist),
        DatasetInfo("mnist", "MNIST handwritten digits, 60k+10k 28x28 greyscale",
                    functools.partial(_load_idx, "MNIST", "MNIST", _DIGIT_NAMES)),
        DatasetInfo("kmnist", "Kuzushiji-MNIST, 60k+10k 28x28 greyscale",
                    functools.partial(_load_idx, "KMNIST", "KMNIST", _KMNIST_NAMES)),
        DatasetInfo("cifar10", "CIFAR-10, 50k+10k 32x32 colour",
                    functools.partial(_load_cifar, "CIFAR10", "CIFAR-10", "cifar-10-batches-py",
                                      "data_batch_1..5, test_batch, batches.meta")),
        DatasetInfo("cifar100", "CIFAR-100 (fine labels), 50k+10k 32x32 colour",
                    functools.partial(_load_cifar, "CIFAR100", "CIFAR-100", "cifar-100-python",
                                      "train, test, meta")),
        DatasetInfo("svhn", "SVHN cropped digits, 73k+26k 32x32 colour", _load_svhn),
        DatasetInfo("digits", "scikit-learn 8x8 digits, 1797 greyscale (1197/300/300)",
                    _load_digits, val_size=300, test_size=300),
        DatasetInfo("orbit", "the AVA paper's 36 RGB 64x100 images (21 distinct); test = train",
                    _load_orbit, val_size=0),
    ]
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def register_dataset(info: DatasetInfo) -> None:
    """Make a dataset known to ``--data`` by name (``autovae.inverse`` registers its GRFs)."""
    DATASETS[info.name] = info


# prefix -> make(rest): datasets named ``prefix:rest`` (``control:cauchy/cauchy:2``)
DATASET_FAMILIES: dict[str, Callable[[str], DatasetInfo]] = {}


def register_dataset_family(prefix: str, make: Callable[[str], DatasetInfo]) -> None:
    """Make ``--data PREFIX:ARGS`` known: ``make(ARGS)`` gives the dataset's entry
    (:mod:`autovae.control` registers ``control:SPEC``)."""
    DATASET_FAMILIES[prefix] = make


def _entry(name: str) -> DatasetInfo | None:
    """The registry entry of a dataset name (``NAME`` or ``PREFIX:ARGS``), None if unknown."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    prefix, _, rest = key.partition(":")
    if key in DATASETS:
        return DATASETS[key]
    if rest and prefix in DATASET_FAMILIES:
        return DATASET_FAMILIES[prefix](name.strip().partition(":")[2])
    return None


def _test_subset(rest: str) -> DatasetInfo:
    """``test-subset:N:NAME``: dataset NAME with its test set cut to N images, the same number
    of each label (the first of each in the file's order), for a costly test NLL."""
    count, _, name = rest.partition(":")
    inner = _entry(name)
    if not count.strip().isdigit() or int(count) < 1 or inner is None:
        raise ValueError(f"test-subset:{rest}: give test-subset:N:NAME, N a positive count and "
                         f"NAME a named dataset with its own test set (e.g. "
                         "test-subset:1000:fashion-mnist)")
    n = int(count)

    def load(root: Path, download: bool) -> _Source:
        src = inner.load(root, download)
        if src.x_test is None or src.y_test is None:
            raise ValueError(f"test-subset:{rest}: {inner.name} has no labelled test set of its "
                             "own to take a subset of")
        if n > len(src.x_test):
            raise ValueError(f"test-subset:{rest}: {inner.name} has {len(src.x_test)} test "
                             f"images, fewer than {n}; pass a smaller N")
        labels, counts = np.unique(src.y_test, return_counts=True)
        per, extra = divmod(n, len(labels))
        if counts.min() < per + (extra > 0):  # else fewer than n, silently
            raise ValueError(f"test-subset:{rest}: {inner.name}'s label "
                             f"{labels[counts.argmin()]} has {counts.min()} test images, "
                             f"fewer than the {per + (extra > 0)} that N = {n} needs of each "
                             f"label; pass N <= {counts.min() * len(labels)}")
        keep = np.sort(np.concatenate([np.flatnonzero(src.y_test == c)[:per + (i < extra)]
                                       for i, c in enumerate(labels)]))
        return src._replace(x_test=src.x_test[keep], y_test=src.y_test[keep])

    return DatasetInfo(f"test-subset:{n}:{inner.name}",
                       f"{inner.name} with {n} of its test images (equal per label)", load,
                       inner.val_size, inner.test_size, inner.dequantized)


register_dataset_family("test-subset", _test_subset)


def _dequantized(rest: str) -> DatasetInfo:
    """``dequantized:L:NAME``: dataset NAME, on the L levels 0, 1/(L-1), ..., 1, dequantised
    (:func:`dequantize`) with fixed noise: the test set's is the same for every run (the
    training loop redraws the training set's every batch)."""
    count, _, name = rest.partition(":")
    inner = _entry(name)
    if not count.strip().isdigit() or int(count) < 2 or inner is None:
        raise ValueError(f"dequantized:{rest}: give dequantized:L:NAME, L >= 2 the number of "
                         "levels of the values of NAME, a named dataset (e.g. "
                         "dequantized:17:digits, dequantized:256:fashion-mnist)")
    if inner.dequantized:
        raise ValueError(f"dequantized:{rest}: {inner.name} is dequantised already; give it once")
    levels = int(count)
    label = f"dequantized:{levels}:{inner.name}"

    def noisy(x: np.ndarray, seed: int) -> np.ndarray:
        x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
        g = torch.Generator().manual_seed(seed)
        return dequantize(torch.from_numpy(x), levels, g, label).numpy()

    def load(root: Path, download: bool) -> _Source:
        src = inner.load(root, download)
        return src._replace(x_train=noisy(src.x_train, _TEST_SEED + 1),
                            x_test=None if src.x_test is None else noisy(src.x_test, _TEST_SEED))

    return DatasetInfo(label, f"{inner.name} dequantised from {levels} levels", load,
                       inner.val_size, inner.test_size, levels)


register_dataset_family("dequantized", _dequantized)


def dequantized_levels(name: str | os.PathLike) -> int | None:
    """L for a dataset named ``dequantized:L:...`` (or a test subset of one), else None."""
    entry = _entry(os.fspath(name)) if isinstance(name, (str, os.PathLike)) else None
    return entry.dequantized if entry is not None else None


# --------------------------------------------------------------------------- user data


def _read_npy(path: Path) -> _Source:
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path}: cannot read ({err}); save a numeric array with np.save") from err
    return _Source(x, None, None, None, None)


def _read_npz(path: Path) -> _Source:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as err:
        raise ValueError(f"{path}: cannot read ({err}); save numeric arrays with np.savez") from err
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    if "x" in arrays and "x_train" not in arrays and "x_test" not in arrays:
        return _Source(arrays["x"], arrays.get("y"), None, None, classes)
    if "x" not in arrays and "x_train" in arrays and "x_test" in arrays:
        y_train, y_test = arrays.get("y_train"), arrays.get("y_test")
        if (y_train is None) != (y_test is None):
            raise ValueError(f"{path}: has only one of y_train / y_test; store both or neither")
        return _Source(arrays["x_train"], y_train, arrays["x_test"], y_test, classes)
    raise ValueError(
        f"{path}: found keys {sorted(arrays)}; an .npz needs 'x' (optional 'y') or 'x_train' and "
        f"'x_test' (optional 'y_train', 'y_test'), and optionally 'classes'"
    )


def _read_image_folder(folder: Path) -> _Source:
    if find_spec("PIL") is None:
        raise ImportError("reading a folder of images needs Pillow: pip install pillow")
    from PIL import Image

    def images_in(d: Path, recursive: bool) -> list[Path]:
        paths = d.rglob("*") if recursive else d.iterdir()
        return sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    top = images_in(folder, recursive=False)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, imgs) for d in subdirs if (imgs := images_in(d, recursive=True))]
    if top and per_class:
        raise ValueError(f"{folder}: has images both at the top and in subfolders; "
                         f"move the top-level ones into a class subfolder (or out)")
    if not top and not per_class:
        raise ValueError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)}); "
                         f"put images in it, or in one subfolder per class")
    files = top or [p for _, imgs in per_class for p in imgs]
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arrays.append(np.asarray(im.convert("L" if grey else "RGB")))
        except OSError as err:
            raise ValueError(f"{p}: not a readable image ({err}); fix or remove it") from err
        if arrays[-1].shape[:2] != arrays[0].shape[:2]:
            h, w = arrays[0].shape[:2]
            raise ValueError(f"{p}: is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but {files[0]} "
                             f"is {w}x{h}; resize all images to one size")
    colour = [p for p, a in zip(files, arrays, strict=True) if a.ndim == 3]
    if colour and len(colour) < len(files):
        grey = next(p for p, a in zip(files, arrays, strict=True) if a.ndim == 2)
        raise ValueError(f"{folder}: mixes greyscale ({grey.name}) and colour ({colour[0].name}) "
                         f"images; convert them all to one mode (e.g. PIL's "
                         f"Image.convert('RGB')) first")
    x = np.stack(arrays)
    if not per_class:
        return _Source(x, None, None, None, None, channels_last=True)
    labels = np.concatenate([np.full(len(imgs), i) for i, (_, imgs) in enumerate(per_class)])
    return _Source(x, labels.astype(np.int64), None, None, [name for name, _ in per_class],
                   channels_last=True)


def _read_path(path: Path) -> _Source:
    if path.is_dir():
        return _read_image_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".npz":
        return _read_npz(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .npy, .npz or a folder of "
                     f"images")


# --------------------------------------------------------------------------- checks and splits


def _images(x: np.ndarray, source: str, channels_last: bool | None) -> np.ndarray:
    """Check dtype, finiteness and layout; return (N, D) or (N, C, H, W), not yet scaled. The
    range of the values is the likelihood's to judge (``Likelihood.validate``)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{source}: dtype {x.dtype} is not a real number type; "
                         f"give uint8 0..255 images or real numbers")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if channels_last is None:
            channels_last = x.shape[3] in (1, 3) and x.shape[1] not in (1, 3)
        if channels_last:
            x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 2:
        raise ValueError(f"{source}: shape {x.shape} has {x.ndim} axes; give (N, D), (N, H, W), "
                         f"(N, C, H, W) or (N, H, W, C)")
    if len(x) == 0:
        raise ValueError(f"{source}: has no samples; give at least one")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise ValueError(f"{source}: has {bad} NaN or infinite values; remove or replace them "
                         f"(e.g. np.nan_to_num) first")
    return x


def _labels(y: np.ndarray | None, n: int, source: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be a 1-D integer array, got {y.dtype} of shape "
                         f"{y.shape}; convert them with y.astype(np.int64)")
    if len(y) != n:
        raise ValueError(f"{source}: {len(y)} labels for {n} samples; give one label per sample")
    return y.astype(np.int64)


def _count(size: int | float, n: int, what: str, source: str) -> int:
    """How many of n samples `size` (a count, or a fraction in [0, 1)) takes; at least 1 left."""
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a count or a fraction in [0, 1), got {size!r}")
    if isinstance(size, (float, np.floating)):
        if not 0 <= size < 1:
            raise ValueError(f"{what}={size} as a float is a fraction and must be in [0, 1); "
                             f"pass an int for a count")
        k = max(1, round(size * n)) if size > 0 else 0
    else:
        k = int(size)
        if k < 0:
            raise ValueError(f"{what} must not be negative, got {size}")
    if k >= n:
        raise ValueError(f"{source}: {what}={size} asks for {k} of its {n} samples and leaves "
                         f"none to train on; pass a smaller {what} (e.g. 0.1) or use more data")
    return k


def _to_tensor(x: np.ndarray, flatten: bool) -> torch.Tensor:
    out = x.astype(np.float32, copy=False)  # x is a fresh copy (fancy-indexed)
    if x.dtype == np.uint8:
        out /= 255
    t = torch.from_numpy(out)
    return t.reshape(len(t), -1) if flatten else t


def _split(name: str, src: _Source, val_size: int | float, test_size: int | float, seed: int,
           limit: int | None, flatten: bool, dequantized: int | None = None) -> DataSplits:
    x = _images(src.x_train, name, src.channels_last)
    y = _labels(src.y_train, len(x), name)
    if src.x_test is None:  # carve a fixed test set (independent of `seed`)
        perm = np.random.default_rng(_TEST_SEED).permutation(len(x))
        n_test = _count(test_size, len(x), "test_size", name)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
        x_test, y_test = x, y
    else:
        x_test = _images(src.x_test, f"{name} (test)", src.channels_last)
        y_test = _labels(src.y_test, len(x_test), f"{name} (test)")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"{name}: train samples are {x.shape[1:]} but test samples are "
                             f"{x_test.shape[1:]}; give both the same shape")
        test_idx, train_idx = np.arange(len(x_test)), np.arange(len(x))
    n_val = _count(val_size, len(train_idx), "val_size", name)
    train_idx = train_idx[np.random.default_rng(seed).permutation(len(train_idx))]
    val_idx, train_idx = train_idx[:n_val], train_idx[n_val:]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"limit must be a positive int (or None for all), got {limit!r}")
        train_idx = train_idx[:limit]

    def take(labels: np.ndarray | None, idx: np.ndarray) -> torch.Tensor | None:
        return None if labels is None else torch.from_numpy(labels[idx])

    return DataSplits(
        name=name,
        train=_to_tensor(x[train_idx], flatten),
        val=_to_tensor(x[val_idx], flatten),
        test=_to_tensor(x_test[test_idx], flatten),
        train_labels=take(y, train_idx),
        val_labels=take(y, val_idx),
        test_labels=take(y_test, test_idx),
        classes=src.classes,
        dequantized=dequantized,
    )


# --------------------------------------------------------------------------- public API


def load_data(
    name: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    val_size: int | float | None = None,
    seed: int = 0,
    limit: int | None = None,
    download: bool = False,
    flatten: bool = False,
) -> DataSplits:
    """Load a dataset by name (see :data:`DATASETS`) or a path to .npy / .npz / image folder.

    The dataset's own test set is ``test``; data without one (digits, user data with no
    ``x_test``) get a fixed test set (``test_size`` of the registry entry, 10% for user data),
    whatever the seed. ``val`` is carved from the rest with a permutation seeded by ``seed``:
    ``val_size`` is a count or a fraction in [0, 1); ``None`` is the dataset's default (5000
    for the torchvision sets, 300 for digits, 0.1 for user data). ``limit`` keeps the first
    ``limit`` training samples after the split (a random subset). ``flatten`` gives (N, D).
    ``root`` is where torchvision-format files are looked for (default :func:`default_root`).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a dataset name or a path, got {type(name).__name__} "
                        f"{name!r:.60}; to train on arrays, save them with numpy.save and give "
                        "the file's path")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path, got {type(root).__name__}")
    info = _entry(os.fspath(name))
    if info is not None:
        src = info.load(Path(root).expanduser() if root is not None else default_root(), download)
        label, default_val, test_size = info.name, info.val_size, info.test_size
    else:
        path = Path(os.fspath(name)).expanduser()
        if not path.exists():
            if path.suffix.lower() in (".npy", ".npz") or os.sep in os.fspath(name):
                raise ValueError(f"{path}: no such file or folder; check the path")
            raise ValueError(f"unknown dataset {os.fspath(name)!r}: use one of "
                             f"{', '.join(DATASETS)}, or a path to a .npy file, a .npz file or a "
                             f"folder of images")
        src = _read_path(path)
        label, default_val, test_size = os.fspath(name), 0.1, 0.1
    return _split(label, src, default_val if val_size is None else val_size, test_size, seed,
                  limit, flatten, info.dequantized if info is not None else None)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli(x) sample (floats 0/1) of data in [0, 1]: stochastic binarisation.

    Call it once for a fixed binarisation, or every epoch for dynamic binarisation; pass a
    seeded ``generator`` (on x's device) to reproduce a sample.
    """
    if not torch.is_floating_point(x):
        x = x.float()
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("binarize needs probabilities in [0, 1] (NaN excluded); scale x first")
    return torch.bernoulli(x, generator=generator)


DEQUANTIZE_MARGIN = 1e-5  # u ~ U(m, 1 - m): x stays off the cells' edges in float32


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None,
               name: str = "the data") -> torch.Tensor:
    """Uniform dequantisation of data on the ``levels`` levels 0, 1/(L-1), ..., 1: level k
    becomes (k + u) / L, one u ~ U(m, 1 - m) per value (m = :data:`DEQUANTIZE_MARGIN`), inside
    (0, 1) and inside k's cell, so ``floor(L x) = k`` (:func:`requantize` undoes it).

    Units (Theis et al. 2016): a density p on the dequantised values bounds the pmf P of the
    levels, ``-log P(k) <= E_u[-log p(x)] + D log(L / (1 - 2m))`` nats per data point of D
    values; so a continuous NLL plus ``D log L`` (+ 2mD, 0.0013 nats for 8x8 images) is an
    upper bound on the discrete NLL. Pass a seeded ``generator`` (on x's device) to reproduce
    a draw. Refuses data that are not on the L levels, naming ``name``.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"dequantize: levels must be an int >= 2, got {levels!r}")
    x = x.float()
    k = torch.round(x * (levels - 1))
    off = (x * (levels - 1) - k).abs()
    if x.numel() and not bool(((x >= 0) & (x <= 1) & (off <= _on_level(levels))).all()):
        raise ValueError(f"{name}: its values are not on the {levels} levels 0, "
                         f"1/{levels - 1}, ..., 1 ({_off_levels(x, levels)}), so they cannot be "
                         f"dequantised from {levels} levels; give their number of levels "
                         "(17 for digits, 256 for 8-bit images), or use data that are not "
                         "quantised as they are (e.g. darcy-grf with --likelihood gaussian)")
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (k + DEQUANTIZE_MARGIN + (1 - 2 * DEQUANTIZE_MARGIN) * u) / levels


def _on_level(levels: int) -> float:
    """How far (in level units) a float32 value may be from its level: k / 255 * 255 is off by
    about 1e-5; NaN is on no level."""
    return 1e-4 + 1e-7 * levels


def _off_levels(x: torch.Tensor, levels: int) -> str:
    """Why ``x`` is not on the levels, and the number of levels it is on, if any up to 1024."""
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        return f"values in [{lo:.4g}, {hi:.4g}], not in [0, 1]"
    values = torch.unique(x.double())
    fits = next((n + 1 for n in range(1, 1024) if bool(
        ((values * n - torch.round(values * n)).abs() <= _on_level(n + 1)).all())), None)
    return (f"they are on {fits} levels" if fits else
            f"{len(values)} distinct values on no grid of up to 1024 levels")


def requantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The levels k / (L - 1) that a :func:`dequantize` draw ``x`` came from (k = floor(L x))."""
    return torch.floor(x * levels).clamp(0, levels - 1) / (levels - 1)
