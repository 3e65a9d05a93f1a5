"""Evaluation of a trained VAE: bounds, importance-sampled NLL, reconstruction error.

All values are in nats per data point, averaged over the test set. ``test_nll`` is
``-log p(x)`` estimated by the IWAE bound with K = ``nll_samples`` draws, so it sits at or
below ``-test_elbo`` and falls (towards the true NLL) as K grows. NLLs of different likelihood
beliefs are not comparable: Bernoulli is a pmf, the others are densities.
"""

from __future__ import annotations

import time

import torch

from .bounds import Bound
from .model import VAE

__all__ = ["elbo_and_bound", "evaluate"]

_ELBO = Bound(alpha=1.0, samples=1)


def elbo_and_bound(model: VAE, x: torch.Tensor):
    """(the single-sample ELBO estimate, the model's own bound per data point) on ``x``; one pass
    when the model's bound is that ELBO (beta only changes the surrogate, not the value)."""
    elbo = model.estimate(x, _ELBO)
    bound = model.bound
    if bound.samples == 1 and bound.analytic_kl:
        return elbo, elbo.value
    return elbo, model.estimate(x).value


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, nll_samples: int = 1000, batch_size: int = 500,
             nll_batch_size: int = 100, progress: bool = False) -> dict:
    """Test metrics of ``model`` on ``x`` (shape (N, *event_shape)), as a dict."""
    model.eval()
    started = time.perf_counter()
    sums = {"test_elbo": 0.0, "test_bound": 0.0, "recon_mse": 0.0, "test_log_lik": 0.0,
            "test_kl": 0.0}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        e, bound = elbo_and_bound(model, xb)
        sums["test_elbo"] += e.value.sum().item()
        sums["test_log_lik"] += e.log_lik.sum().item()
        sums["test_kl"] += e.kl.sum().item()
        sums["test_bound"] += bound.sum().item()
        err = (model.reconstruct(xb) - xb).pow(2).flatten(1).mean(1)
        sums["recon_mse"] += err.sum().item()
    nll = 0.0
    chunks = range(0, x.shape[0], nll_batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"NLL (K={nll_samples})", leave=False)
    for start in chunks:
        nll -= model.log_likelihood(x[start:start + nll_batch_size], nll_samples).sum().item()
    n = x.shape[0]
    metrics = {k: v / n for k, v in sums.items()}
    metrics.update({
        "test_nll": nll / n,
        "nll_samples": nll_samples,
        "test_images": n,
        "bound": model.bound.name,
        "likelihood": model.likelihood.name,
        "latent": str(model.latent),
        "evaluate_seconds": time.perf_counter() - started,
    })
    model.train()
    return metrics


def evaluate_quality(model: VAE, data, samples: int = 10000, weights_path=None,
                     batch_size: int = 1000) -> dict:
    """Sample quality of ``model`` against ``data.test``: FID, KID and IS on named features
    (the domain classifier of the dataset, or Inception from a local ``weights_path``), and
    reconstruction MSE, PSNR, SSIM and the AVA balance metric BM on the test images."""
    from .quality import (
        balance_metric_images,
        domain_classifier,
        inception_features,
        reconstruction_metrics,
        sample_quality,
    )

    model.eval()
    # the classifier is trained once on the whole named dataset (not this run's subset) and cached
    extractor = (inception_features(weights_path) if weights_path is not None
                 else domain_classifier(data.name))
    real = data.test[:samples].cpu()
    # likelihood means of gaussian/laplace beliefs may leave [0, 1]: show them as pixels would be
    fake = torch.cat([model.generate(min(batch_size, real.shape[0] - start)).cpu()
                      for start in range(0, real.shape[0], batch_size)]).clamp(0, 1)
    metrics = sample_quality(real, fake, extractor, kid_subset_size=min(1000, real.shape[0]))
    recon = torch.cat([model.reconstruct(real[i:i + batch_size].to(data.test.device)).cpu()
                       for i in range(0, real.shape[0], batch_size)]).clamp(0, 1)
    metrics.update({f"recon_{k}": v for k, v in reconstruction_metrics(real, recon).items()})
    metrics["balance_metric"] = balance_metric_images(recon, real)
    model.train()
    return metrics
