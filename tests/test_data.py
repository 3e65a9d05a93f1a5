"""Tests for autovae.data: real Fashion-MNIST (Debian), tiny files in every torchvision format,
digits, user arrays and image folders, binarize, and every bad-input error. Nothing downloads."""

from __future__ import annotations

import gzip
import math
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from autovae import data
from autovae.data import DATASETS, DataSplits, binarize, load_data, read_idx

torchvision = pytest.importorskip("torchvision")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- helpers


def pattern(n: int, *shape: int) -> np.ndarray:
    """uint8 samples whose first element (C-order) is their index, so splits can be undone."""
    size = int(np.prod(shape))
    x = (np.arange(n)[:, None] * 31 + np.arange(size)[None] * 7) % 256
    x[:, 0] = np.arange(n)
    return x.astype(np.uint8).reshape(n, *shape)


def to01(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32) / 255)


def by_index(x: torch.Tensor, *labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Samples (and labels) sorted by the index stored in their first element."""
    order = (x.reshape(len(x), -1)[:, 0] * 255).round().argsort()
    return (x[order], *(y[order] for y in labels))


def assert_round_trip(d: DataSplits, x_train, y_train, x_test, y_test) -> None:
    """train + val are x_train exactly (in some order), test is x_test exactly, in order."""
    x, y = by_index(torch.cat([d.train, d.val]), torch.cat([d.train_labels, d.val_labels]))
    assert torch.equal(x, to01(x_train))
    assert torch.equal(y, torch.as_tensor(y_train, dtype=torch.int64))
    assert torch.equal(d.test, to01(x_test))
    assert torch.equal(d.test_labels, torch.as_tensor(y_test, dtype=torch.int64))
    assert d.train.dtype == torch.float32 and d.train_labels.dtype == torch.int64


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (big-endian uint8, magic 0x0803 / 0x0801), gzipped if path ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def idx_arrays():
    x, xt = pattern(12, 28, 28), pattern(5, 28, 28)
    return x, np.arange(12) % 10, xt, np.arange(5)[::-1].copy()


def write_idx_set(folder: Path, arrays, suffix: str = "") -> None:
    for name, a in zip(IDX_FILES, arrays, strict=True):
        write_idx(folder / f"{name}{suffix}", a)


def save_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture
def no_md5(monkeypatch):
    """The tiny CIFAR / SVHN files cannot match the MD5s of the real ones, and torchvision checks
    them even with download=False (CIFAR: every batch and the meta file; SVHN: the .mat). This
    is unavoidable, so the check becomes existence-only, as torchvision's MNIST check already is."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(cifar, "check_integrity", exists)
    monkeypatch.setattr(svhn, "check_integrity", exists)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-here")


# --------------------------------------------------------------------------- Fashion-MNIST (real)

needs_debian = pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed "
           "(apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> DataSplits:
    return load_data("fashion-mnist", tmp_path_factory.mktemp("empty-root"))


@needs_debian
def test_fashion_mnist_from_debian(fashion):
    d = fashion
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.event_shape == (1, 28, 28) and d.train.dtype == torch.float32
    for t in (d.train, d.val, d.test):
        assert 0 <= t.min() and t.max() <= 1
    assert torch.cat([d.train, d.val]).mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert torch.equal(torch.bincount(d.test_labels), torch.full((10,), 1000))
    assert d.train_labels.min() == 0 and d.train_labels.max() == 9
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"


@needs_debian
def test_fashion_mnist_val_split_is_seeded_and_a_partition(fashion, tmp_path):
    again = load_data("fashion_MNIST", tmp_path, seed=0)
    assert torch.equal(again.val, fashion.val) and torch.equal(again.train, fashion.train)
    other = load_data("Fashion-MNIST", tmp_path, seed=1)
    assert not torch.equal(other.val, fashion.val)
    # train + val is exactly the original training set, as a multiset of images.
    original = read_idx(data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").reshape(60000, -1)
    split = (torch.cat([fashion.train, fashion.val]) * 255).round().to(torch.uint8)
    assert Counter(map(bytes, split.reshape(60000, -1).numpy())) == Counter(map(bytes, original))


# --------------------------------------------------------------------------- torchvision formats


@pytest.mark.parametrize("name, cls", [("mnist", "MNIST"), ("kmnist", "KMNIST"),
                                       ("fashion-mnist", "FashionMNIST")])
def test_idx_in_torchvision_layout(tmp_path, name, cls):
    arrays = idx_arrays()
    write_idx_set(tmp_path / cls / "raw", arrays)
    d = load_data(name, tmp_path, val_size=3)
    assert (len(d.train), len(d.val), len(d.test)) == (9, 3, 5)
    assert d.event_shape == (1, 28, 28) and len(d.classes) == 10
    assert_round_trip(d, arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3])
    # The tiny files are exactly what torchvision itself reads.
    tv = getattr(torchvision.datasets, cls)(str(tmp_path), train=True)
    assert torch.equal(tv.data, torch.from_numpy(arrays[0]))
    assert torch.equal(tv.targets, torch.from_numpy(arrays[1]).long())


def test_fashion_mnist_gz_files_directly_in_root(tmp_path):
    arrays = idx_arrays()
    write_idx_set(tmp_path, arrays, suffix=".gz")  # found before the Debian folder
    d = load_data("fashion-mnist", tmp_path, val_size=0.25)
    assert (len(d.train), len(d.val), len(d.test)) == (9, 3, 5)
    assert_round_trip(d, arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3])


def test_download_true_goes_through_torchvision(tmp_path, monkeypatch):
    arrays = idx_arrays()

    class MNIST(torchvision.datasets.MNIST):
        def download(self):  # stands in for the network: writes what torchvision would fetch
            write_idx_set(Path(self.raw_folder), arrays)

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)
    with pytest.raises(ValueError, match="--download"):
        load_data("mnist", tmp_path)
    d = load_data("mnist", tmp_path, download=True, val_size=2)
    assert_round_trip(d, arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3])


def test_cifar10_pickle_batches(tmp_path, no_md5):
    folder = tmp_path / "cifar-10-batches-py"
    x, xt = pattern(10, 3, 32, 32), pattern(4, 3, 32, 32)
    y, yt = np.arange(10) % 10, np.array([3, 1, 4, 1])
    for k in range(5):
        rows = slice(2 * k, 2 * k + 2)
        save_pickle(folder / f"data_batch_{k + 1}",
                    {"data": x[rows].reshape(2, -1), "labels": y[rows].tolist()})
    save_pickle(folder / "test_batch", {"data": xt.reshape(4, -1), "labels": yt.tolist()})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    save_pickle(folder / "batches.meta", {"label_names": names})
    d = load_data("cifar10", tmp_path, val_size=2)
    assert d.event_shape == (3, 32, 32) and d.classes == names
    assert (len(d.train), len(d.val), len(d.test)) == (8, 2, 4)
    assert_round_trip(d, x, y, xt, yt)


def test_cifar100_pickle_files(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    x, xt = pattern(6, 3, 32, 32), pattern(3, 3, 32, 32)
    y, yt = np.array([0, 99, 5, 7, 42, 1]), np.array([98, 0, 3])
    save_pickle(folder / "train", {"data": x.reshape(6, -1), "fine_labels": y.tolist(),
                                   "coarse_labels": (y // 5).tolist()})
    save_pickle(folder / "test", {"data": xt.reshape(3, -1), "fine_labels": yt.tolist(),
                                  "coarse_labels": (yt // 5).tolist()})
    names = [f"class{i}" for i in range(100)]
    save_pickle(folder / "meta", {"fine_label_names": names,
                                  "coarse_label_names": [f"super{i}" for i in range(20)]})
    d = load_data("CIFAR_100", tmp_path, val_size=1)
    assert d.event_shape == (3, 32, 32) and d.classes == names
    assert_round_trip(d, x, y, xt, yt)


def test_svhn_mat_files(tmp_path, no_md5):
    scipy_io = pytest.importorskip("scipy.io")
    x, xt = pattern(7, 3, 32, 32), pattern(3, 3, 32, 32)
    y, yt = np.array([0, 1, 2, 3, 9, 0, 5]), np.array([0, 7, 8])
    for fname, imgs, labels in [("train_32x32.mat", x, y), ("test_32x32.mat", xt, yt)]:
        # SVHN stores X as (32, 32, 3, N) and the digit 0 as label 10.
        scipy_io.savemat(tmp_path / fname, {"X": imgs.transpose(2, 3, 1, 0),
                                            "y": np.where(labels == 0, 10, labels)[:, None]})
    d = load_data("svhn", tmp_path, val_size=2)
    assert d.event_shape == (3, 32, 32)
    assert_round_trip(d, x, y, xt, yt)


@pytest.mark.parametrize("name, expected", [
    ("mnist", "{root}/MNIST/raw/train-images-idx3-ubyte"),
    ("kmnist", "{root}/KMNIST/raw/train-images-idx3-ubyte"),
    ("cifar10", "{root}/cifar-10-batches-py/"),
    ("cifar-10", "{root}/cifar-10-batches-py/"),
    ("cifar100", "{root}/cifar-100-python/"),
    ("svhn", "{root}/train_32x32.mat"),
    ("fashion-mnist", "{root}/FashionMNIST/raw/"),
])
def test_missing_files_offline_name_the_folder(tmp_path, no_debian, name, expected):
    with pytest.raises(ValueError) as err:
        load_data(name, tmp_path)
    message = str(err.value)
    assert expected.format(root=tmp_path).replace("/", os.sep) in message
    assert "--download" in message and "\n" not in message
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in message


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOVAE_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    with pytest.raises(ValueError, match=str(tmp_path / "MNIST" / "raw")):
        load_data("mnist")
    monkeypatch.delenv("AUTOVAE_DATA")
    assert data.default_root() == Path("~/.cache/autovae/data").expanduser()


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00\x08", "not an IDX file"),
    (bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">u4").tobytes() + b"\x00" * 10, "truncated"),
])
def test_corrupt_idx_file(tmp_path, content, message):
    write_idx_set(tmp_path / "MNIST" / "raw", idx_arrays())
    (tmp_path / "MNIST" / "raw" / IDX_FILES[0]).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_data("mnist", tmp_path)


# --------------------------------------------------------------------------- digits


def test_digits():
    d = load_data("digits")
    assert (len(d.train), len(d.val), len(d.test)) == (1197, 300, 300)
    assert d.event_shape == (1, 8, 8) and d.classes == [str(i) for i in range(10)]
    x = torch.cat([d.train, d.val, d.test])
    assert x.min() == 0 and x.max() == 1
    assert torch.equal(x * 16, (x * 16).round())  # 17 grey levels, 0..16 / 16
    assert set(torch.cat([d.train_labels, d.test_labels]).tolist()) == set(range(10))
    other = load_data("DIGITS", seed=1)
    assert torch.equal(other.test, d.test)  # the test set does not depend on the seed
    assert not torch.equal(other.val, d.val)
    flat = load_data("digits", flatten=True, limit=100)
    assert flat.train.shape == (100, 64) and flat.event_shape == (64,)
    assert flat.val.shape == (300, 64) and flat.test.shape == (300, 64)


# --------------------------------------------------------------------------- user data


@pytest.mark.parametrize("shape, event_shape, to_nchw", [
    ((20, 6), (6,), lambda a: a),
    ((20, 4, 5), (1, 4, 5), lambda a: a[:, None]),
    ((20, 3, 4, 5), (3, 4, 5), lambda a: a),
    ((20, 2, 4, 5), (2, 4, 5), lambda a: a),
    ((20, 4, 5, 3), (3, 4, 5), lambda a: a.transpose(0, 3, 1, 2)),
    ((20, 4, 5, 1), (1, 4, 5), lambda a: a.transpose(0, 3, 1, 2)),
])
def test_npy_layouts(tmp_path, shape, event_shape, to_nchw):
    x = pattern(shape[0], *shape[1:])
    np.save(tmp_path / "x.npy", x)
    d = load_data(str(tmp_path / "x.npy"))
    assert d.event_shape == event_shape and d.train_labels is None and d.classes is None
    assert (len(d.train), len(d.val), len(d.test)) == (16, 2, 2)  # 10% test, then 10% val
    everything = by_index(torch.cat([d.train, d.val, d.test]))[0]
    assert torch.equal(everything, to01(np.ascontiguousarray(to_nchw(x))))


def test_npy_float_data_limit_and_flatten(tmp_path):
    x = np.random.default_rng(0).random((50, 2, 3, 4))
    np.save(tmp_path / "x.npy", x)
    d = load_data(tmp_path / "x.npy", val_size=10, limit=7, flatten=True)
    assert d.train.shape == (7, 24) and d.val.shape == (10, 24) and d.test.shape == (5, 24)
    assert d.train.dtype == torch.float32
    assert torch.equal(load_data(tmp_path / "x.npy", val_size=10).test.reshape(5, -1), d.test)
    # val and test are disjoint from train, and the same for a seed
    rows = {tuple(r.tolist()) for r in d.train}
    assert not rows & {tuple(r.tolist()) for r in torch.cat([d.val, d.test])}
    assert torch.equal(load_data(tmp_path / "x.npy", val_size=10, flatten=True).val, d.val)
    assert load_data(tmp_path / "x.npy", val_size=0).val.shape == (0, 2, 3, 4)


def test_npz_x_and_y(tmp_path):
    x, y = pattern(30, 4, 4), np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    d = load_data(tmp_path / "d.npz", val_size=4)
    assert (len(d.train), len(d.val), len(d.test)) == (23, 4, 3)
    assert d.classes == ["a", "b", "c"]
    x_all, y_all = by_index(torch.cat([d.train, d.val, d.test]),
                            torch.cat([d.train_labels, d.val_labels, d.test_labels]))
    assert torch.equal(x_all, to01(x[:, None])) and torch.equal(y_all, torch.from_numpy(y))


def test_npz_own_test_set(tmp_path):
    x, xt = pattern(10, 5), pattern(4, 5)
    y, yt = np.arange(10) % 2, np.array([1, 0, 1, 1])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    d = load_data(tmp_path / "d.npz", val_size=2)
    assert d.classes is None and d.event_shape == (5,)
    assert_round_trip(d, x, y, xt, yt)
    np.savez(tmp_path / "u.npz", x_train=x, x_test=xt)
    assert load_data(tmp_path / "u.npz").test_labels is None


def save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    pytest.importorskip("PIL")
    x = pattern(12, 6, 5)
    names = ["cat", "dog", "emu"]
    for i, img in enumerate(x):
        save_png(tmp_path / "imgs" / names[i % 3] / f"{i:02d}.png", img)
    (tmp_path / "imgs" / "empty-class").mkdir()  # no images: not a class
    d = load_data(tmp_path / "imgs", val_size=2)
    assert d.classes == names and d.event_shape == (1, 6, 5)
    assert (len(d.train), len(d.val), len(d.test)) == (9, 2, 1)
    x_all, y_all = by_index(torch.cat([d.train, d.val, d.test]),
                            torch.cat([d.train_labels, d.val_labels, d.test_labels]))
    assert torch.equal(x_all, to01(x[:, None]))
    assert torch.equal(y_all, torch.arange(12) % 3)


def test_image_folder_flat_colour_and_jpeg(tmp_path):
    pytest.importorskip("PIL")
    rgb = pattern(5, 3, 4, 3)  # (N, H, W, C) with H = 3: the folder reader knows it is HWC
    for i, img in enumerate(rgb):
        save_png(tmp_path / f"c{i}.png", img)
    save_png(tmp_path / "grey.png", np.full((3, 4, 3), 200, np.uint8))  # (mixed: refused)
    save_png(tmp_path / "photo.jpg", np.full((3, 4, 3), 90, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    d = load_data(str(tmp_path), val_size=1)
    assert d.event_shape == (3, 3, 4) and d.train_labels is None and d.classes is None
    x = torch.cat([d.train, d.val, d.test])
    assert len(x) == 7
    assert any(torch.equal(s, torch.full((3, 3, 4), 200 / 255)) for s in x)
    pngs = by_index(x[(x.reshape(7, -1)[:, 0] * 255).round() < 5])[0]
    assert torch.equal(pngs, to01(rgb.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- DataSplits, binarize


def test_datasplits_to_and_repr():
    d = load_data("digits", limit=10)
    moved = d.to("meta")
    assert moved.train.device.type == "meta" and moved.test_labels.device.type == "meta"
    assert d.train.device.type == "cpu" and moved.classes == d.classes
    text = repr(d)
    assert "digits" in text and "train=10" in text and "(1, 8, 8)" in text and len(text) < 200


def test_registry_names():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "kmnist", "cifar10", "cifar100", "svhn",
                             "digits", "orbit", "darcy-grf", "darcy-grf-8", "darcy-grf-32",
                             "darcy-grf-64", "aristoff-bangerth-prior", "control-cauchy",
                             "control-laplace", "control-mixed", "control-gaussian-cauchy"}


def test_binarize():
    x = torch.rand(200, 1, 8, 8)
    b = binarize(x, torch.Generator().manual_seed(3))
    assert b.shape == x.shape and b.dtype == torch.float32
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert b.mean().item() == pytest.approx(x.mean().item(), abs=0.02)
    assert torch.equal(b, binarize(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(b, binarize(x, torch.Generator().manual_seed(4)))
    assert torch.equal(binarize(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(torch.tensor([float("nan")]))


# --------------------------------------------------------------------------- comparable NLLs


def test_bernoulli_entropy_floor_of_fashion_mnist_is_the_issues(fashion):
    from autovae.scoring import bernoulli_entropy_floor

    assert bernoulli_entropy_floor(fashion.test) == pytest.approx(189.86, abs=0.005)


def test_entropy_floor_by_hand_and_zero_on_binary_data():
    from autovae.scoring import bernoulli_entropy_floor

    x = torch.tensor([[0.25, 0.5, 1.0], [0.0, 0.75, 0.5]])
    h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)  # noqa: E731
    expected = (h(0.25) + h(0.5) + h(0.75) + h(0.5)) / 2
    assert bernoulli_entropy_floor(x, batch_size=1) == pytest.approx(expected, rel=1e-12)
    assert bernoulli_entropy_floor(torch.tensor([[0.0, 1.0]])) == 0.0


def test_a_fixed_binarised_test_set_is_the_same_for_every_run_seed():
    from autovae.config import Config
    from autovae.run import prepare, test_data_label

    runs = [prepare(Config(data="digits", test_binarize=5, seed=s)) for s in (0, 1)]
    assert torch.equal(runs[0].test, runs[1].test)
    assert set(runs[0].test.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(runs[0].train, runs[1].train)  # other seeds, other val/train split
    assert runs[0].train.unique().numel() > 2  # training stays on grey levels
    grey = prepare(Config(data="digits")).test
    assert runs[0].test.mean().item() == pytest.approx(grey.mean().item(), abs=0.01)
    other = prepare(Config(data="digits", test_binarize=6)).test
    assert not torch.equal(other, runs[0].test)
    assert test_data_label(Config(test_binarize=5), runs[0].test) == \
        "binarised (fixed draw, seed 5)"
    assert test_data_label(Config(), grey) == "grey levels in [0, 1]"
    assert "static, seed 8" in test_data_label(Config(binarize="static", seed=1), runs[0].test)


def test_binarised_evaluation_of_real_values_is_refused(tmp_path):
    from autovae.scoring import binarized_test_set

    with pytest.raises(ValueError, match=r"test_binarize: fields's test set has values in "
                                         r"\[-1, 2\], not grey levels"):
        binarized_test_set(torch.tensor([[-1.0, 2.0]]), 0, "fields")


def test_dequantized_digits_are_in_the_open_interval_with_a_fixed_test_draw():
    from autovae.config import Config
    from autovae.data import requantize
    from autovae.run import test_data_label

    levels = load_data("digits")
    d = load_data("dequantized:17:digits")
    assert d.name == "dequantized:17:digits" and d.dequantized == 17 and levels.dequantized is None
    for x, k in ((d.train, levels.train), (d.val, levels.val), (d.test, levels.test)):
        assert bool(((x > 0) & (x < 1)).all())
        assert torch.equal(torch.floor(17 * x), torch.round(16 * k))  # the levels recovered
        assert torch.equal(requantize(x, 17), k)
    frac = (17 * d.train - torch.floor(17 * d.train)).double()  # u: uniform in every cell
    assert frac.mean().item() == pytest.approx(0.5, abs=0.005)
    assert frac.var().item() == pytest.approx(1 / 12, abs=0.002)
    other = load_data("dequantized:17:digits", seed=1)
    assert torch.equal(other.test, d.test)  # the same test draw whatever the run's seed
    assert not torch.equal(other.train, d.train)
    assert test_data_label(Config(data="dequantized:17:digits"), d.test) == \
        "dequantised from 17 levels (fixed draw), a density on (0, 1)"


def test_dequantize_draws_inside_each_level_and_refuses_other_data():
    from autovae.data import DEQUANTIZE_MARGIN, dequantize, requantize

    x = torch.arange(5.0).repeat(2000) / 4  # 5 levels
    a = dequantize(x, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, dequantize(x, 5, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, dequantize(x, 5, torch.Generator().manual_seed(4)))
    low, high = 4 * x / 5 + DEQUANTIZE_MARGIN / 5, (4 * x + 1) / 5 - DEQUANTIZE_MARGIN / 5
    assert bool(((a >= low - 1e-7) & (a <= high + 1e-7)).all())
    assert torch.equal(requantize(a, 5), x)
    for bad, levels, match in (
            (torch.tensor([0.0, 0.5, 1.0]), 4, r"not on the 4 levels 0, 1/3, \.\.\., 1 \(they "
                                              r"are on 3 levels\)"),
            (torch.tensor([0.5, 1.5]), 3, r"values in \[0.5, 1.5\], not in \[0, 1\]"),
            (torch.tensor([0.0, float("nan")]), 2, "not on the 2 levels"),
            (torch.rand(50, generator=torch.Generator().manual_seed(0)), 2,
             "50 distinct values on no grid"),
            (torch.tensor([0.0, 1.0]), 1, "levels must be an int >= 2, got 1")):
        with pytest.raises(ValueError, match=match):
            dequantize(bad, levels)
    with pytest.raises(ValueError, match=r"dequantized:256:digits: its values are not on the "
                                         r"256 levels .* \(they are on 17 levels\)"):
        load_data("dequantized:256:digits")
    for name in ("dequantized:1:digits", "dequantized:17:nothing", "dequantized:digits"):
        with pytest.raises(ValueError, match="give dequantized:L:NAME"):
            load_data(name)
    with pytest.raises(ValueError, match="dequantised already"):
        load_data("dequantized:17:dequantized:17:digits")
    from autovae.data import DatasetInfo, _Source, register_dataset

    rng = np.random.default_rng(0)
    train, test = (rng.integers(0, 256, (n, 4, 4), dtype=np.uint8) for n in (50, 40))
    register_dataset(DatasetInfo("tiny-bytes", "test only", lambda root, download: _Source(
        train, np.arange(50) % 5, test, np.arange(40) % 4, None)))
    try:  # the families nest either way, and 8-bit images are on 256 levels
        for name in ("test-subset:8:dequantized:256:tiny-bytes",
                     "dequantized:256:test-subset:8:tiny-bytes"):
            d = load_data(name, val_size=5)
            assert d.dequantized == 256 and len(d.test) == 8
            assert torch.equal(requantize(d.test, 256), load_data("test-subset:8:tiny-bytes",
                                                                     val_size=5).test)
    finally:
        del DATASETS["tiny-bytes"]


def test_training_draws_fresh_dequantisation_noise_for_every_batch(tmp_path, monkeypatch):
    from autovae import training
    from autovae.config import Config
    from autovae.data import requantize
    from autovae.run import prepare

    drawn = []
    real = training.dequantize

    def spy(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(training, "dequantize", spy)
    config = Config(data="dequantized:17:digits", likelihood="continuous-bernoulli",
                    latent="normal/normal:2", hidden=8, depth=1, epochs=2, batch_size=600,
                    nll_samples=2)
    data = prepare(config)
    training.train(config, tmp_path / "run", data=data)
    assert len(drawn) == 4  # 2 batches an epoch, 2 epochs
    row = {requantize(x, 17).numpy().tobytes(): i for i, x in enumerate(data.train)}
    seen: dict[int, list[torch.Tensor]] = {}
    for x in torch.cat(drawn):
        seen.setdefault(row[requantize(x, 17).numpy().tobytes()], []).append(x)
    assert len(seen) == len(data.train)  # every image, once an epoch
    for i, (a, b) in seen.items():  # each epoch its own noise, neither the stored draw
        assert not torch.equal(a, b) and not torch.equal(a, data.train[i])
    with pytest.raises(ValueError, match=r"binarize / test_binarize on dequantized:17:digits"):
        prepare(config.replace(likelihood="bernoulli", binarize="dynamic"))


def test_control_data_are_binary_fixed_and_follow_their_beliefs():
    from autovae.control import control_arrays

    d = load_data("control-cauchy")
    assert d.event_shape == (1, 8, 8) and (len(d.train), len(d.val), len(d.test)) == \
        (4000, 1000, 1000)
    assert set(d.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(d.test, load_data("control-cauchy", seed=3).test)
    _, z = control_arrays("cauchy/cauchy:2")
    # a standard Cauchy: median |z| = 1, and about 6.3% of draws beyond 10
    assert np.median(np.abs(z)) == pytest.approx(1.0, abs=0.05)
    assert (np.abs(z) > 10).mean() == pytest.approx(2 / math.pi * math.atan(1 / 10), abs=0.01)
    _, z = control_arrays("laplace/laplace:2")
    assert np.abs(z).mean() == pytest.approx(1.0, abs=0.05)  # E|z| = b = 1
    mixed = load_data("control:laplace/laplace:7,cauchy/cauchy:3", val_size=100)
    assert mixed.name == "control:laplace/laplace:7,cauchy/cauchy:3" and len(mixed.val) == 100
    assert torch.equal(mixed.test, load_data("control-mixed").test)  # the same spec
    with pytest.raises(ValueError, match="cauchy/normal has KL = \\+inf"):
        load_data("control:cauchy/normal:2")


def test_gaussian_control_is_real_valued_truncated_and_its_true_nll_is_exact():
    from scipy.stats import multivariate_normal

    from autovae.control import SIGMA, TRUNCATE, control_arrays, control_decoder, true_nll

    d = load_data("control-gaussian-cauchy")
    assert (len(d.train), len(d.val), len(d.test)) == (4000, 1000, 1000)
    assert torch.equal(d.test, load_data("control-gaussian-cauchy", seed=3).test)
    x, z = control_arrays("cauchy/cauchy:2", gaussian=True)
    assert np.abs(z).max() <= TRUNCATE and np.median(np.abs(z)) == pytest.approx(1.0, abs=0.05)
    w, b = control_decoder(2)
    noise = x.reshape(len(x), -1) - (z @ w.numpy() + b.numpy())
    assert noise.std() == pytest.approx(SIGMA, rel=0.01)
    # normal latents (truncation at 50 sds is nothing): x ~ N(b, W^T W + sigma^2 I) exactly
    name = "control-gaussian:normal/normal:2"
    test = load_data(name).test.flatten(1).double().numpy()
    cov = (w.T @ w).numpy() + SIGMA ** 2 * np.eye(64)
    exact = -multivariate_normal(b.numpy(), cov).logpdf(test).mean()
    assert true_nll(name, samples=4000) == pytest.approx(exact, abs=0.01)


def test_test_subset_keeps_n_test_images_equal_per_label():
    from autovae.data import DATASETS, DatasetInfo, _Source, register_dataset

    rng = np.random.default_rng(0)
    register_dataset(DatasetInfo("tiny-labelled", "test only", lambda root, download: _Source(
        rng.random((50, 4, 4)), np.arange(50) % 5, rng.random((40, 4, 4)), np.arange(40) % 4,
        None)))
    register_dataset(DatasetInfo("tiny-unbalanced", "test only", lambda root, download: _Source(
        rng.random((50, 4, 4)), np.arange(50) % 5, rng.random((9, 4, 4)),
        np.array([0, 0, 0, 1, 1, 1, 2, 2, 3]), None)))
    try:
        d = load_data("test-subset:10:tiny-labelled", val_size=5)
        assert d.name == "test-subset:10:tiny-labelled" and len(d.train) == 45
        assert torch.bincount(d.test_labels).tolist() == [3, 3, 2, 2]
        for bad, match in (("test-subset:100:tiny-labelled", "40 test images, fewer than 100"),
                           ("test-subset:x:tiny-labelled", "give test-subset:N:NAME"),
                           ("test-subset:10:digits", "no labelled test set of its own"),
                           # 2 a label, and label 3 has 1: not 7 images named 8
                           ("test-subset:8:tiny-unbalanced", "label 3 has 1 test images.*N <= 4")):
            with pytest.raises(ValueError, match=match):
                load_data(bad)
    finally:
        del DATASETS["tiny-labelled"], DATASETS["tiny-unbalanced"]


# --------------------------------------------------------------------------- bad input


def npy(array):
    def write(tmp_path: Path) -> Path:
        np.save(tmp_path / "bad.npy", array)
        return tmp_path / "bad.npy"
    return write


def npz(**arrays):
    def write(tmp_path: Path) -> Path:
        np.savez(tmp_path / "bad.npz", **arrays)
        return tmp_path / "bad.npz"
    return write


def folder(**images):
    def write(tmp_path: Path) -> Path:
        (tmp_path / "f").mkdir()
        for name, img in images.items():
            save_png(tmp_path / "f" / name.replace("__", "/").replace("_png", ".png"), img)
        return tmp_path / "f"
    return write


GOOD = np.zeros((20, 4, 4), np.uint8)
BAD_INPUTS = {
    "1-d array": (npy(np.zeros(10)), r"shape \(10,\) has 1 axes; give \(N, D\)"),
    "5-d array": (npy(np.zeros((2, 1, 1, 1, 1))), "has 5 axes"),
    "strings": (npy(np.array(["a", "b"])), "dtype <U1 is not a real number type"),
    "complex": (npy(np.zeros((4, 2), complex)), "complex128 is not a real number type"),
    "objects": (npy(np.array([{}, 1], dtype=object)), "cannot read"),
    "NaN": (npy(np.array([[0.5, np.nan], [0.1, 0.2], [0.3, 0.3]])), "1 NaN or infinite"),
    "inf": (npy(np.array([[0.5, np.inf], [0.1, 0.2], [0.3, 0.3]])), "1 NaN or infinite"),
    "too few samples": (npy(GOOD[:2]), "leaves none to train on"),
    "label count": (npz(x=GOOD, y=np.arange(3)), "3 labels for 20 samples"),
    "float labels": (npz(x=GOOD, y=np.zeros(20)), "1-D integer array"),
    "npz keys": (npz(images=GOOD), r"found keys \['images'\]; an .npz needs 'x'"),
    "npz x and x_train": (npz(x=GOOD, x_train=GOOD, x_test=GOOD), "an .npz needs"),
    "npz one y": (npz(x_train=GOOD, y_train=np.arange(20), x_test=GOOD), "only one of"),
    "npz shapes": (npz(x_train=GOOD, x_test=np.zeros((3, 5, 5))), "give both the same shape"),
    "empty folder": (folder(), "no images found"),
    "image sizes": (folder(a_png=GOOD[0], b_png=np.zeros((5, 4), np.uint8)),
                    "is 4x5 but .* is 4x4; resize"),
    "mixed folder": (folder(a_png=GOOD[0], cls__b_png=GOOD[0]), "both at the top and in sub"),
    "not an image": (lambda p: (p / "f").mkdir() or (p / "f" / "x.png").write_text("no") and
                     p / "f", "not a readable image"),
    "csv": (lambda p: (p / "d.csv").write_text("1,2") and p / "d.csv", "unsupported file type"),
    "missing file": (lambda p: p / "missing.npy", "no such file or folder"),
}


@pytest.mark.parametrize("make, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input(tmp_path, make, message):
    pytest.importorskip("PIL")
    with pytest.raises(ValueError, match=message) as err:
        load_data(make(tmp_path))
    assert "\n" not in str(err.value)


def test_real_valued_data_load_as_they_are_and_the_likelihood_judges_them(tmp_path):
    """Values outside [0, 1] (a log-permeability field, int16 counts) load unchanged; a
    Bernoulli likelihood refuses them when training starts, a Gaussian one trains on them."""
    from autovae.config import Config
    from autovae.training import train

    fields = np.random.default_rng(0).normal(0, 2, size=(60, 4, 4)).astype(np.float32)
    data = load_data(npy(fields)(tmp_path))
    assert data.train.min() < -1 and data.train.max() > 2
    assert sorted(torch.cat([data.train, data.val, data.test]).flatten().tolist()) == \
        pytest.approx(sorted(fields.flatten().tolist()))
    counts = load_data(npy(np.full((20, 2), 300, np.int16))(tmp_path))
    assert counts.train.max().item() == 300.0
    config = Config(data="fields", epochs=1, batch_size=16, hidden=8, depth=1,
                    latent="normal/normal:2")
    with pytest.raises(ValueError, match=r"bernoulli.*\[0, 1\]"):
        train(config, tmp_path / "bernoulli", data=data, progress=False)
    result = train(config.replace(likelihood="gaussian"), tmp_path / "gaussian", data=data,
                   progress=False)
    assert math.isfinite(result.run.history()[0]["val_bound"])


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        load_data("imagenet")
    message = str(err.value)
    assert "unknown dataset 'imagenet'" in message
    assert all(name in message for name in DATASETS)
    assert ".npy" in message and ".npz" in message and "folder" in message


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_size=5000), "digits: val_size=5000 asks for 5000 of its 1497 samples"),
    (dict(val_size=1.0), r"fraction and must be in \[0, 1\)"),
    (dict(val_size=-1), "must not be negative"),
    (dict(val_size="10"), "a count or a fraction"),
    (dict(limit=0), "positive int"),
])
def test_bad_split_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_data("digits", **kwargs)
