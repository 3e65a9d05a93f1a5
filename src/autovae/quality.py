"""Sample quality: FID, KID and IS on named features, the AVA balance metric, reconstruction.

FID, KID and IS are torchmetrics' (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``); autovae only chooses the features. Two feature extractors exist, and scores
from different extractors are not comparable, so every result names its extractor and its sample
counts:

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

For example (Fashion-MNIST, training images with Gaussian noise of sd 0.1 as "generated")::

    data = load_data("fashion-mnist")
    extractor = domain_classifier("fashion-mnist")  # trains once (about a minute), then loads
    noisy = (data.train[:10000] + 0.1 * torch.randn(10000, 1, 28, 28)).clamp(0, 1)
    sample_quality(data.test, noisy, extractor)
    # {'fid': 104.0, 'kid_mean': 65.3, 'kid_std': 5.46, 'is_mean': 6.51, 'is_std': 0.11,
    #  'is_real_mean': 7.91, ..., 'real_images': 10000, 'fake_images': 10000,
    #  'feature_extractor': 'autovae-classifier:fashion-mnist:9570a6f70247', ...}

:func:`balance_metric` is the AVA paper's BM (eq. 17 of the AVA notes), and
:func:`reconstruction_metrics` gives MSE, PSNR and SSIM of reconstructions.
"""

from __future__ import annotations

import abc
import hashlib
import io
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DATASETS, DataSplits, load_data
from .run import atomic_write

__all__ = [
    "CACHE_ENV",
    "INCEPTION_ENV",
    "DomainClassifier",
    "DomainFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "balance_metric",
    "balance_metric_images",
    "classifier_cache_dir",
    "domain_classifier",
    "inception_features",
    "reconstruction_metrics",
    "sample_quality",
    "train_domain_classifier",
]

CACHE_ENV = "AUTOVAE_CACHE"
INCEPTION_ENV = "AUTOVAE_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_FORMAT = 1  # version of the classifier cache file layout


# --------------------------------------------------------------------------- checks


def _as_images(x: Any, what: str, shape: tuple[int, ...] | None = None) -> Tensor:
    """``x`` as a float tensor (N, C, H, W) in [0, 1]; uint8 is divided by 255; flat (N, D) is
    reshaped to ``shape`` when D matches it."""
    x = torch.as_tensor(x).detach()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif not torch.is_floating_point(x):
        raise ValueError(f"{what}: dtype {x.dtype} is not float or uint8; give floats in [0, 1]")
    if shape is not None and x.dim() == 2 and x.shape[1] == math.prod(shape):
        x = x.reshape(len(x), *shape)
    if x.dim() != 4:
        flat = f", or flat (N, {math.prod(shape)})" if shape is not None else ""
        raise ValueError(f"{what}: shape {tuple(x.shape)}; give images (N, C, H, W){flat}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{what}: images are {tuple(x.shape[1:])} but the feature extractor "
                         f"takes {tuple(shape)}; use the extractor of this dataset")
    if len(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: has NaN or infinite values; remove or replace them first")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what}: values must be in [0, 1], got min {x.min().item():.4g} and max "
                         f"{x.max().item():.4g}; clamp them first (x.clamp(0, 1))")
    return x


# --------------------------------------------------------------------------- feature extractors


class FeatureExtractor(abc.ABC):
    """Images in [0, 1] to (features for FID and KID, logits for IS), under a ``name``.

    ``input_shape`` is the (C, H, W) the extractor takes (``None``: any size), ``batch_size``
    the images per forward pass. Subclasses implement :meth:`extract` for one batch.
    """

    name: str = "feature-extractor"
    input_shape: tuple[int, int, int] | None = None
    batch_size: int = 500

    @abc.abstractmethod
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(features, logits) of one batch of checked float images (N, C, H, W) in [0, 1]."""

    @torch.no_grad()
    def features(self, images: Any, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """(features, logits) of all ``images`` (checked), computed in batches, on the CPU."""
        x = _as_images(images, "images", self.input_shape).float()
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
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/autovae").expanduser() / "classifiers"


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

    Fashion-MNIST, 2 epochs: about 91% test accuracy in under a minute on 2 CPU cores.
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
        "sha256": _weights_sha256(state),
    }
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "metadata": meta}, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return DomainFeatures(model.cpu(), meta, from_cache=False)


# --------------------------------------------------------------------------- FID, KID, IS


class _Precomputed(nn.Module):
    """torchmetrics' ``feature=`` module for features extracted beforehand (each image is run
    through the extractor once, not once per metric)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def sample_quality(real: Any, fake: Any, extractor: FeatureExtractor, *,
                   kid_subset_size: int = 1000, kid_subsets: int = 100, is_splits: int = 10,
                   batch_size: int | None = None, seed: int = 0) -> dict:
    """FID, KID and IS of ``fake`` against ``real`` images (N, C, H, W) in [0, 1] on the
    features of ``extractor``, with torchmetrics.

    KID is the unbiased MMD^2 with the cubic polynomial kernel, averaged over ``kid_subsets``
    random subsets of ``kid_subset_size`` images per side; ``kid_std`` is its spread over subsets
    (not the standard error of the mean). IS is of ``fake`` over ``is_splits`` splits (mean and
    std over splits); ``is_real_*`` is the IS of ``real``, the reference a model could reach.
    Random subsets and splits are drawn from ``seed``; the global RNG is left untouched. Each
    image passes through the extractor once (``batch_size`` at a time, default the extractor's).

    Returns ``fid``, ``kid_mean``, ``kid_std``, ``is_mean``, ``is_std``, ``is_real_mean``,
    ``is_real_std``, ``feature_extractor`` (its name), ``real_images``, ``fake_images``,
    ``kid_subset_size``, ``kid_subsets`` and ``is_splits``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(f"extractor: got {type(extractor).__name__}; give "
                        f"domain_classifier(dataset) or inception_features(weights_path)")
    real = _as_images(real, "real", extractor.input_shape)
    fake = _as_images(fake, "fake", extractor.input_shape)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images are {tuple(real.shape[1:])} but fake ones are "
                         f"{tuple(fake.shape[1:])}; give both the same shape")
    n_real, n_fake = len(real), len(fake)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {n_real} real and {n_fake} "
                         f"fake")
    if not 2 <= kid_subset_size <= min(n_real, n_fake):
        raise ValueError(f"kid_subset_size={kid_subset_size} needs 2 to min(real, fake) = "
                         f"{min(n_real, n_fake)} images; pass a smaller kid_subset_size or give "
                         f"more images")
    if not 2 <= is_splits <= min(n_real, n_fake):
        raise ValueError(f"is_splits={is_splits} must be between 2 and min(real, fake) = "
                         f"{min(n_real, n_fake)} images")
    f_real, l_real = extractor.features(real, batch_size)
    f_fake, l_fake = extractor.features(fake, batch_size)
    f_real, f_fake = f_real.double(), f_fake.double()
    dim = f_real.shape[1]

    with warnings.catch_warnings():  # "will save all extracted features": they are small here
        warnings.filterwarnings("ignore", message=".*save all extracted features")
        fid = FrechetInceptionDistance(feature=_Precomputed(dim))
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=kid_subsets,
                                      subset_size=kid_subset_size)
        inception = {which: InceptionScore(feature=_Precomputed(l_fake.shape[1]), splits=is_splits)
                     for which in ("is", "is_real")}
    for metric in (fid, kid):
        metric.update(f_real, real=True)
        metric.update(f_fake, real=False)
    inception["is"].update(l_fake.double())
    inception["is_real"].update(l_real.double())
    scores = {"fid": float(fid.compute())}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
        is_values = {k: [float(v) for v in m.compute()] for k, m in inception.items()}
    scores.update(kid_mean=float(kid_mean), kid_std=float(kid_std),
                  is_mean=is_values["is"][0], is_std=is_values["is"][1],
                  is_real_mean=is_values["is_real"][0], is_real_std=is_values["is_real"][1],
                  feature_extractor=extractor.name, real_images=n_real, fake_images=n_fake,
                  kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, is_splits=is_splits)
    return scores


# --------------------------------------------------------------------------- AVA balance metric


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def balance_metric(d: Any, absolute: bool = True) -> float:
    """The AVA balance metric BM from per-pixel distances ``d`` (eq. 17 of the AVA notes):

        BM = (1/N) sum_i (1/n_i) sum_j |d_ij (1 - d_ij)|

    ``d`` is (N, pixels...) (every image the same size: any trailing axes are the pixels j) or a
    sequence of N arrays (n_i pixels each). d_ij >= 0 is the distance between pixel j of the
    generated image and of dataset image i (:func:`balance_metric_images` computes it).
    ``absolute=True`` takes |d(1 - d)| as the author's code does (it differs from the printed
    equation only where d > 1, e.g. RGB distances up to sqrt(3)). BM <= 0.25 when d <= 1; larger
    is "balance", smaller "similarity".
    """
    if isinstance(d, (list, tuple)):
        rows = [_numpy(r).ravel() for r in d]
    else:
        array = _numpy(d)
        if array.ndim < 2:
            raise ValueError(f"d: shape {array.shape}; give (N, pixels...) or a list of N arrays")
        rows = list(array.reshape(len(array), -1))
    if not rows or any(r.size == 0 for r in rows):
        raise ValueError("d: give at least one image with at least one pixel")
    total = 0.0
    for r in rows:
        if not np.isfinite(r).all() or (r < 0).any():
            raise ValueError("d: distances must be finite and non-negative")
        terms = r * (1 - r)
        total += float(np.mean(np.abs(terms) if absolute else terms))
    return total / len(rows)


def balance_metric_images(generated: Any, images: Any, absolute: bool = True) -> float:
    """BM of ``generated`` against dataset ``images`` (N, C, H, W), pixel values in [0, 1].

    ``generated`` is one image (C, H, W), the model's "best" image compared with every dataset
    image (the AVA paper), or (N, C, H, W), one generated image per dataset image (e.g. its
    recovery; repeat the dataset images to average several recoveries). d_ij is the Euclidean
    norm over channels of the pixel difference (sqrt(dr^2 + dg^2 + db^2) for RGB, |dx| for
    greyscale); see :func:`balance_metric`.
    """
    g, x = _numpy(generated), _numpy(images)
    if x.ndim != 4:
        raise ValueError(f"images: shape {x.shape}; give (N, C, H, W)")
    if g.shape != x.shape[1:] and g.shape != x.shape:
        raise ValueError(f"generated: shape {g.shape}; give one image {x.shape[1:]} or one per "
                         f"dataset image {x.shape}")
    for what, a in (("generated", g), ("images", x)):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"{what}: pixel values must be finite and in [0, 1]; scale them first")
    d = np.sqrt(((g - x) ** 2).sum(axis=1))  # (N, H, W)
    return balance_metric(d, absolute=absolute)


# --------------------------------------------------------------------------- reconstructions


def reconstruction_metrics(x: Any, x_hat: Any,
                           image_shape: Sequence[int] | None = None) -> dict[str, float]:
    """MSE (per pixel), PSNR (dB, of that MSE, data range 1) and SSIM (torchmetrics' defaults:
    Gaussian window 11, sigma 1.5; data range 1) of reconstructions ``x_hat`` of images ``x``:
    (N, C, H, W) in [0, 1], or flat (N, D) with ``image_shape`` (C, H, W). Identical images give
    mse 0, psnr inf and ssim 1."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    shape = tuple(image_shape) if image_shape is not None else None
    x = _as_images(x, "x", shape).double()
    x_hat = _as_images(x_hat, "x_hat", shape).double()
    if x.shape != x_hat.shape:
        raise ValueError(f"x is {tuple(x.shape)} but x_hat is {tuple(x_hat.shape)}; give one "
                         f"reconstruction per image")
    if len(x) == 0:
        raise ValueError("x: got no images")
    mse = float(F.mse_loss(x_hat, x))
    psnr = math.inf if mse == 0 else float(peak_signal_noise_ratio(x_hat, x, data_range=1.0))
    if min(x.shape[2:]) < 6:
        raise ValueError(f"SSIM's 11x11 Gaussian window (reflect-padded by 5) needs images of at "
                         f"least 6x6, got {tuple(x.shape[2:])}")
    ssim = float(structural_similarity_index_measure(x_hat, x, data_range=1.0))
    return {"mse": mse, "psnr": psnr, "ssim": ssim}
