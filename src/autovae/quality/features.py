"""Feature extractors for FID, KID and IS: named, so that scores say what they were computed on.

Two extractors exist, and scores from different extractors are not comparable:

* :func:`domain_classifier` (offline, for labelled image datasets): a small CNN trained once per
  dataset by autovae, cached in ``$AUTOVAE_CACHE/classifiers/<dataset>.pt`` (default
  ``~/.cache/autovae/classifiers``) with its test accuracy and the sha256 of its weights. FID and
  KID use its 128-d penultimate layer, IS its class probabilities. Name:
  ``autovae-classifier:<dataset>:<sha256[:12]>``. Its KID is on unscaled features, so it is
  orders of magnitude larger than an Inception KID.
* :func:`inception_features`: the standard InceptionV3 of torch-fidelity (pool features for
  FID/KID, ``logits_unbiased`` for IS, TF1-compatible resize to 299), from a local weights file
  given as ``weights_path`` or ``$AUTOVAE_INCEPTION_WEIGHTS``. Nothing is ever downloaded.
  Name: ``inception-v3-compat:<file name>:<sha256[:12]>``.
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._files import atomic_write
from .._images import checked_images
from ..data import DATASETS, DataSplits, load_data

__all__ = [
    "CACHE_ENV",
    "INCEPTION_ENV",
    "DomainClassifier",
    "DomainFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "classifier_cache_dir",
    "domain_classifier",
    "inception_features",
    "train_domain_classifier",
]

CACHE_ENV = "AUTOVAE_CACHE"
INCEPTION_ENV = "AUTOVAE_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_FORMAT = 1  # version of the classifier cache file layout


# --------------------------------------------------------------------------- feature extractors


class FeatureExtractor(abc.ABC):
    """Images in [0, 1] to (features for FID and KID, logits for IS), under a ``name``.

    ``input_shape`` is the (C, H, W) the extractor takes (``None``: any size), ``batch_size``
    the images per forward pass. Subclasses implement :meth:`extract` for one batch.
    """

    name: str = "feature-extractor"
    sha256: str | None = None  # of the weights, recorded beside every score
    input_shape: tuple[int, int, int] | None = None
    batch_size: int = 500

    @abc.abstractmethod
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(features, logits) of one batch of checked float images (N, C, H, W) in [0, 1]."""

    @torch.no_grad()
    def features(self, images: Any, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """(features, logits) of all ``images`` (checked), computed in batches, on the CPU."""
        x = checked_images(images, "images", self.input_shape).float()
        step = batch_size or self.batch_size
        parts = [self.extract(x[i:i + step]) for i in range(0, len(x), step)]
        if not parts:
            raise ValueError("images: got none; give at least one image")
        return (torch.cat([p[0].float().cpu() for p in parts]),
                torch.cat([p[1].float().cpu() for p in parts]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DomainClassifier(nn.Module):
    """A small CNN for (C, H, W) images in [0, 1]: two conv blocks, a 128-d feature layer, logits.

    ``features(x)`` is the penultimate layer (after its ReLU), ``forward(x)`` the class logits.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 feature_dim: int = 128):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        if h < 4 or w < 4:
            raise ValueError(f"DomainClassifier needs images of at least 4x4, got {h}x{w}")
        self.input_shape = (c, h, w)
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class DomainFeatures(FeatureExtractor):
    """A trained :class:`DomainClassifier` as a feature extractor; ``metadata`` says how it was
    trained (dataset, accuracy, test images, epochs, sha256, ...); ``from_cache`` whether it was
    loaded rather than trained by this call."""

    batch_size = 1000

    def __init__(self, model: DomainClassifier, metadata: dict, from_cache: bool = False):
        self.model = model.eval()
        self.metadata = dict(metadata)
        self.from_cache = from_cache
        self.input_shape = model.input_shape
        self.name = f"autovae-classifier:{metadata['dataset']}:{metadata['sha256'][:12]}"
        self.sha256 = metadata["sha256"]

    @property
    def accuracy(self) -> float:
        return float(self.metadata["accuracy"])

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        features = self.model.features(images.to(device))
        return features, self.model.head(features)


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's InceptionV3 (``inception-v3-compat``) from a local weights file: 2048-d
    pool features for FID/KID, ``logits_unbiased`` for IS. Greyscale is repeated to 3 channels,
    [0, 1] is rounded to uint8, and torch-fidelity resizes to 299x299 (TF1-compatible bilinear,
    as torch-fidelity and torchmetrics with ``antialias=False`` do)."""

    batch_size = 32

    def __init__(self, weights_path: str | os.PathLike, device: torch.device | str = "cpu"):
        path = Path(weights_path).expanduser()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise ImportError("Inception features need torch-fidelity: "
                              "pip install 'torch-fidelity>=0.3,<0.5'") from err
        try:  # refuse pickled code before torch-fidelity loads the file with weights_only=False
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means: not a plain state_dict
            raise ValueError(f"{path}: not a PyTorch state_dict of plain tensors ({err}); give "
                             f"torch-fidelity's {INCEPTION_FILE}") from err
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise ValueError(f"{path}: not torch-fidelity's InceptionV3 state_dict (no fc.weight); "
                             f"give {INCEPTION_FILE}")
        del state
        try:
            self.model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(path)).to(device)
        except RuntimeError as err:  # load_state_dict: missing / unexpected keys, wrong shapes
            reason = str(err).splitlines()[0]
            raise ValueError(f"{path}: not torch-fidelity's InceptionV3 weights ({reason}); give "
                             f"{INCEPTION_FILE}") from err
        self.weights_path = path
        self.sha256 = _file_sha256(path)
        self.name = f"inception-v3-compat:{path.name}:{self.sha256[:12]}"

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1] not in (1, 3):
            raise ValueError(f"Inception takes 1- or 3-channel images, got {images.shape[1]}")
        device = next(self.model.parameters()).device
        x = (images * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).to(device)
        return self.model(x)


def inception_features(weights_path: str | os.PathLike | None = None,
                       device: torch.device | str = "cpu") -> InceptionFeatures:
    """The standard InceptionV3 features from a local file (``weights_path`` or
    ``$AUTOVAE_INCEPTION_WEIGHTS``); never downloads. Without a file: a ValueError saying where
    to put it."""
    source = "weights_path"
    if weights_path is None:
        weights_path, source = os.environ.get(INCEPTION_ENV) or None, f"${INCEPTION_ENV}"
    if weights_path is None:
        raise ValueError(
            f"Inception features need torch-fidelity's InceptionV3 weights as a local file, and "
            f"autovae never downloads them: fetch {INCEPTION_FILE} (torch-fidelity's GitHub "
            f"release v0.2.0) on a machine with internet, then pass weights_path=FILE or set "
            f"{INCEPTION_ENV}=FILE; or use domain_classifier(dataset) for offline domain features")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path} (from {source}): no such file; point it at torch-fidelity's "
                         f"{INCEPTION_FILE}")
    return InceptionFeatures(path, device)


# --------------------------------------------------------------------------- domain classifier


def classifier_cache_dir() -> Path:
    """``$AUTOVAE_CACHE/classifiers``, default ``~/.cache/autovae/classifiers``."""
    from .._env import env_folder

    return env_folder(CACHE_ENV, "~/.cache/autovae") / "classifiers"


def _weights_sha256(state_dict: dict[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state_dict, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train_domain_classifier(data: DataSplits, epochs: int = 2, seed: int = 0,
                            batch_size: int = 128, lr: float = 3e-3,
                            ) -> tuple[DomainClassifier, float]:
    """Train a :class:`DomainClassifier` on ``data.train`` (Adam, one-cycle schedule); return it
    (in eval mode) and its accuracy on ``data.test``. Needs labelled images (N, C, H, W).

    Fashion-MNIST, 2 epochs: about 91% test accuracy in about a minute. Trained seeded on one
    thread, so that the weights (and their sha256) do not depend on the caller's thread count.
    """
    if data.train_labels is None or data.test_labels is None:
        raise ValueError(f"{data.name}: has no labels; a domain classifier needs labelled data "
                         f"(use Inception features for unlabelled data)")
    if data.train.dim() != 4:
        raise ValueError(f"{data.name}: samples are {tuple(data.train.shape[1:])}; a domain "
                         f"classifier needs images, load them without flatten=True")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    x, y = data.train, data.train_labels
    num_classes = len(data.classes) if data.classes else int(y.max()) + 1
    threads = torch.get_num_threads()
    # one thread: parallel reductions sum in an order that depends on the thread count, so a
    # classifier trained on 2 threads differs from one trained on 1 (other weights, another
    # sha256, FIDs that differ by ~1 in the third digit); seeded and single-threaded, the first
    # use on a fresh machine gives the classifier that every later use loads from the cache
    torch.set_num_threads(_TRAIN_THREADS)
    try:
        return _train_classifier(data, x, y, num_classes, epochs, seed, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


_TRAIN_THREADS = 1


def _train_classifier(data, x, y, num_classes, epochs, seed, batch_size, lr):
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(tuple(x.shape[1:]), num_classes).to(x.device)
    steps = max(1, len(x) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                   total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval(), _accuracy(model, data.test, data.test_labels)


def _cache_key(dataset: str) -> str:
    key = os.fspath(dataset).strip().lower().replace("_", "-")
    if key in DATASETS:
        return key
    slug = re.sub(r"[^a-z0-9.-]+", "-", Path(key).name).strip("-.") or "data"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _load_cached(path: Path, key: str) -> DomainFeatures:
    """The cached classifier at ``path``; ValueError if it is unreadable or fails its checksum."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state, meta = blob["state_dict"], blob["metadata"]
    except Exception as err:  # noqa: BLE001 - any failure to read means a corrupt cache
        raise ValueError(f"unreadable ({type(err).__name__}: {err})") from err
    if meta.get("format") != _FORMAT or meta.get("dataset") != key:
        raise ValueError(f"written for {meta.get('dataset')!r}, format {meta.get('format')}")
    digest = _weights_sha256(state)
    if digest != meta.get("sha256"):
        raise ValueError(f"sha256 of the weights is {digest[:12]}..., the file records "
                         f"{str(meta.get('sha256'))[:12]}...")
    model = DomainClassifier(meta["input_shape"], meta["num_classes"])
    model.load_state_dict(state)
    return DomainFeatures(model, meta, from_cache=True)


def domain_classifier(dataset: str, data: DataSplits | None = None,
                      cache_dir: str | os.PathLike | None = None, *, epochs: int = 2,
                      seed: int = 0, retrain: bool = False) -> DomainFeatures:
    """The domain-feature extractor of ``dataset``: loaded from ``cache_dir/<dataset>.pt``
    (default :func:`classifier_cache_dir`), else trained once on ``data`` (default
    ``load_data(dataset)``) and saved atomically with its metadata and weight checksum.

    A cache file that cannot be read or fails its sha256 is retrained, with a warning. The file
    holds only tensors and plain containers and loads with ``weights_only=True``.
    """
    key = _cache_key(dataset)
    path = Path(cache_dir).expanduser() if cache_dir is not None else classifier_cache_dir()
    path = path / f"{key}.pt"
    if path.is_file() and not retrain:
        try:
            return _load_cached(path, key)
        except ValueError as err:
            warnings.warn(f"{path}: corrupt classifier cache ({err}); retraining it", stacklevel=2)
    if data is None:
        data = load_data(dataset)
    started = time.perf_counter()
    model, accuracy = train_domain_classifier(data, epochs=epochs, seed=seed)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": _FORMAT,
        "dataset": key,
        "accuracy": accuracy,
        "test_images": len(data.test),
        "train_images": len(data.train),
        "epochs": epochs,
        "seed": seed,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "classes": list(data.classes) if data.classes else None,
        "train_seconds": time.perf_counter() - started,
        "torch": str(torch.__version__),
        "train_threads": _TRAIN_THREADS,
        "sha256": _weights_sha256(state),
    }
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "metadata": meta}, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return DomainFeatures(model.cpu(), meta, from_cache=False)
