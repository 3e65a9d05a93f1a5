"""Metric formulas: FID, KID and IS on named features, the AVA balance metric, reconstruction.

FID, KID and IS are torchmetrics' (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``); autovae only chooses the features (:mod:`autovae.quality.features`), and
every result names its extractor and its sample counts. For example (Fashion-MNIST, training
images with Gaussian noise of sd 0.1 as "generated")::

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

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._images import checked_images
from .features import FeatureExtractor

__all__ = [
    "PrecomputedFeatures",
    "balance_metric",
    "balance_metric_images",
    "reconstruction_metrics",
    "sample_quality",
]


# --------------------------------------------------------------------------- FID, KID, IS


class PrecomputedFeatures(nn.Module):
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
    ``is_real_std``, ``feature_extractor`` (its name) and ``feature_extractor_sha256`` (of its
    weights), ``real_images``, ``fake_images``,
    ``kid_subset_size``, ``kid_subsets`` and ``is_splits``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(f"extractor: got {type(extractor).__name__}; give "
                        f"domain_classifier(dataset) or inception_features(weights_path)")
    real = checked_images(real, "real", extractor.input_shape)
    fake = checked_images(fake, "fake", extractor.input_shape)
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
        fid = FrechetInceptionDistance(feature=PrecomputedFeatures(dim))
        kid = KernelInceptionDistance(feature=PrecomputedFeatures(dim), subsets=kid_subsets,
                                      subset_size=kid_subset_size)
        inception = {which: InceptionScore(feature=PrecomputedFeatures(l_fake.shape[1]),
                                           splits=is_splits)
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
                  feature_extractor=extractor.name,
                  feature_extractor_sha256=extractor.sha256, real_images=n_real,
                  fake_images=n_fake,
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
    x = checked_images(x, "x", shape).double()
    x_hat = checked_images(x_hat, "x_hat", shape).double()
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
