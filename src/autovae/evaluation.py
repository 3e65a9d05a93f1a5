"""Evaluation of a trained model: bounds, importance-sampled NLL, reconstruction, sample quality.

:func:`evaluate` computes what the model's capabilities allow, on any split: a model with a
bound gets its ELBO, its own bound and the NLL; a model with an encoder gets the reconstruction
error. Keys are unprefixed (``elbo``, ``nll``, ...): callers name the split
(:func:`prefixed` gives ``test_elbo``, ``test_nll``, ... as ``metrics.json`` holds them).

A model whose posterior families have a location Fisher information also gets ``fisher`` (its
mean per latent dim) and ``entropy_power``: its point in the Fisher-Shannon plane.

All values are in nats per data point, averaged over the data. ``nll`` is ``-log p(x)``
estimated by the IWAE bound with K = ``nll_samples`` draws, so it sits at or below ``-elbo`` and
falls (towards the true NLL) as K grows. NLLs of different likelihood beliefs are not
comparable: Bernoulli is a pmf, the others are densities. ``data`` says what the NLL is on
(:mod:`autovae.scoring`): a Bernoulli NLL on grey levels has a floor, the data's own entropy.
"""

from __future__ import annotations

import time

import torch

from ._checks import check
from .models import Model, evaluation_mode
from .scoring import bernoulli_entropy_floor, describe_test_data

__all__ = ["active_units", "evaluate", "evaluate_quality", "prefixed", "sample_quality_of"]

# keys that describe the evaluation rather than measure the split
_DESCRIPTIVE = ("nll_samples", "bound_name", "likelihood", "latent", "model", "evaluate_seconds",
                "active_units")  # (``data`` is prefixed: ``test_data`` says what the test set is)


def prefixed(metrics: dict, split: str) -> dict:
    """``metrics`` with measured keys renamed ``{split}_{key}``; ``images`` becomes
    ``{split}_images``; ``recon_mse``, ``active_units`` and the descriptive keys keep their
    names.

    >>> prefixed({"elbo": -250.0, "nll": 245.1, "nll_samples": 1000, "images": 10000}, "test")
    {'test_elbo': -250.0, 'test_nll': 245.1, 'nll_samples': 1000, 'test_images': 10000}
    """
    return {k if k in _DESCRIPTIVE or k == "recon_mse" else f"{split}_{k}": v
            for k, v in metrics.items()}


def evaluate(model: Model, x: torch.Tensor, nll_samples: int | None = None,
             batch_size: int = 500, nll_batch_size: int = 100, progress: bool = False,
             data_label: str | None = None) -> dict:
    """Metrics of ``model`` on ``x`` (shape (N, *event_shape)), as a dict (see the module).

    ``nll_samples`` is K of the importance-sampled NLL (default 1000); only a model with a
    bound has one, so giving it for another model is refused. ``data`` says what ``x`` is
    (``data_label``, else :func:`~autovae.scoring.describe_test_data` of ``x``); a Bernoulli
    model scored on grey levels also gets ``bernoulli_entropy_floor``, the NLL no model can
    pass on ``x``, and ``nll_above_floor``, the part of its NLL that is reducible."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be an autovae Model (train(...).model, or load_trained), "
                        f"got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor of data points (N, *event_shape), got "
                        f"{type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one data point, got shape {tuple(x.shape)}")
    if nll_samples is not None and not model.has_bound:
        raise ValueError(f"nll_samples: model {model.name} has no bound, so no "
                         "importance-sampled NLL; leave nll_samples out")
    nll_samples = check("nll_samples", 1000 if nll_samples is None else nll_samples, "count")
    batch_size = check("batch_size", batch_size, "count")
    nll_batch_size = check("nll_batch_size", nll_batch_size, "count")
    started = time.perf_counter()
    n = x.shape[0]
    metrics: dict = {}
    label = data_label or describe_test_data(x)  # (scans x: once)
    with evaluation_mode(model):
        if model.has_bound:
            sums = {"elbo": 0.0, "bound": 0.0, "log_lik": 0.0, "kl": 0.0}
            for start in range(0, n, batch_size):
                e, bound = model.elbo_and_bound(x[start:start + batch_size])
                sums["elbo"] += e.value.sum().item()
                sums["log_lik"] += e.log_lik.sum().item()
                sums["kl"] += e.kl.sum().item()
                sums["bound"] += bound.sum().item()
            metrics.update({k: v / n for k, v in sums.items()})
        if model.has_encoder:
            err = sum((model.reconstruct(x[i:i + batch_size]) - x[i:i + batch_size])
                      .pow(2).flatten(1).mean(1).sum().item() for i in range(0, n, batch_size))
            metrics["recon_mse"] = err / n
            metrics["active_units"] = active_units(model, x, batch_size)
            if hasattr(model, "fisher_shannon"):  # the Fisher-Shannon plane (Stam: J N >= 1)
                metrics.update(model.fisher_shannon(x, batch_size))
        if model.has_bound:
            chunks = range(0, n, nll_batch_size)
            if progress:
                from tqdm.auto import tqdm

                chunks = tqdm(chunks, desc=f"NLL (K={nll_samples})", leave=False)
            nll = -sum(model.log_likelihood(x[i:i + nll_batch_size], nll_samples).sum().item()
                       for i in chunks)
            metrics.update(nll=nll / n, nll_samples=nll_samples, bound_name=model.bound.name,
                           likelihood=model.likelihood.name, latent=str(model.latent))
            if model.likelihood.name == "bernoulli" and label.startswith("grey"):
                floor = bernoulli_entropy_floor(x)
                metrics.update(bernoulli_entropy_floor=floor, nll_above_floor=nll / n - floor)
    metrics.update(data=label, images=n, model=model.name,
                   evaluate_seconds=time.perf_counter() - started)
    return metrics


def active_units(model: Model, x: torch.Tensor, batch_size: int = 500,
                 threshold: float = 0.01) -> int:
    """Latent dims whose point code varies over the data: ``Var_x(code_u) > threshold``
    (Burda et al. 2016, with the posterior median as the code, which every family has)."""
    with evaluation_mode(model):
        codes = _in_batches(lambda i, k: model.embed(x[i:i + k]), x.shape[0], batch_size)
    if codes.shape[0] < 2:
        return 0
    return int((codes.double().var(0) > threshold).sum())


def _in_batches(make, n: int, batch_size: int) -> torch.Tensor:
    return torch.cat([make(start, min(batch_size, n - start)).cpu()
                      for start in range(0, n, batch_size)])


def sample_quality_of(model: Model, real: torch.Tensor, extractor, batch_size: int = 1000,
                      **options) -> dict:
    """FID, KID and IS of ``len(real)`` images generated by ``model`` against ``real`` on the
    features of ``extractor`` (see :func:`autovae.quality.sample_quality`). Likelihood means
    of Gaussian or Laplace beliefs may leave [0, 1]: they are clamped, as pixels would be."""
    from .quality import sample_quality

    with evaluation_mode(model):
        fake = _in_batches(lambda _, k: model.generate(k), len(real), batch_size).clamp(0, 1)
    options.setdefault("kid_subset_size", min(1000, len(real)))
    return sample_quality(real.cpu(), fake, extractor, **options)


def best_images(model: Model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The AVA paper's "best" image of ``model`` for each image of ``x`` (AVA notes 1.8),
    clamped to [0, 1]: a model with an encoder decodes the point code of each image (z = the
    posterior median, r = 0); a generator without one gives its image at the prior's median
    (z = 0, ``best_image()``), the one image compared with every image of ``x``."""
    with evaluation_mode(model):
        if model.has_encoder:
            best = _in_batches(lambda i, k: model.reconstruct(x[i:i + k]), len(x), batch_size)
        elif hasattr(model, "best_image"):
            best = model.best_image().cpu().expand(len(x), *x.shape[1:])
        else:
            raise ValueError(f"model {model.name} has no encoder and no best_image(); its "
                             "best images are undefined")
    return best.clamp(0, 1)


# sample_quality's is_splits: the Inception score is a mean over 10 splits of the images
QUALITY_MIN_IMAGES = 10


def evaluate_quality(model: Model, data, images: int = 10000, weights_path=None,
                     batch_size: int = 1000) -> dict:
    """Sample quality of ``model`` against the first ``images`` of ``data.test``: FID, KID and
    IS on named features (the domain classifier of a labelled dataset, or Inception from a
    local ``weights_path``; skipped, with ``sample_quality`` saying why, for unlabelled data
    without weights); PSNR, SSIM and the AVA balance metric BM of the model's best images
    (:func:`best_images`) as ``best_psnr``, ``best_ssim``, ``balance_metric``; for a model
    with an encoder, those best images are its reconstructions, also given as ``recon_psnr``
    and ``recon_ssim``. ``recon_mse`` is :func:`evaluate`'s."""
    from .quality import (
        balance_metric_images,
        domain_classifier,
        inception_features,
        reconstruction_metrics,
    )

    images = check("images", images, "count")
    real = data.test[:images]
    if len(real) < QUALITY_MIN_IMAGES:
        short = (f" ({data.name}'s test split has {len(data.test)})"
                 if len(data.test) < images else "")
        raise ValueError(f"sample quality needs at least {QUALITY_MIN_IMAGES} images (the "
                         f"Inception score is a mean over {QUALITY_MIN_IMAGES} splits), got "
                         f"{len(real)}{short}; ask for images={QUALITY_MIN_IMAGES} or more "
                         f"(--quality-images)")
    if weights_path is not None:
        metrics = sample_quality_of(model, real, inception_features(weights_path), batch_size)
    elif data.train_labels is not None:
        # trained once on the whole named dataset (not this run's subset) and cached
        metrics = sample_quality_of(model, real, domain_classifier(data.name), batch_size)
    else:
        metrics = {"sample_quality": f"skipped: {data.name} has no labels for a domain "
                                     "classifier; pass Inception weights (--inception-weights)"}
    best = best_images(model, real, batch_size)
    real = real.cpu()
    scores = reconstruction_metrics(real, best)
    metrics.update(best_psnr=scores["psnr"], best_ssim=scores["ssim"],
                   balance_metric=balance_metric_images(best, real))
    if model.has_encoder:
        metrics.update(recon_psnr=scores["psnr"], recon_ssim=scores["ssim"])
    return metrics
