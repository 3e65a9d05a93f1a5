"""The VAE: encoder -> LatentSpec -> decoder -> likelihood, trained with a Bound.

Every choice is an object: the networks are any ``nn.Module`` with the right shapes, the latent
space a :class:`~autovae.beliefs.LatentSpec`, the likelihood a
:class:`~autovae.beliefs.Likelihood`, the objective a :class:`~autovae.bounds.Bound`.
:func:`build_model` makes all of them from a :class:`~autovae.config.Config` by name.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .beliefs import LatentSpec, Likelihood, likelihood
from .bounds import Bound, BoundEstimate
from .nets import build_networks

__all__ = ["VAE", "NonFiniteLossError", "build_model"]


class NonFiniteLossError(RuntimeError):
    """The loss went non-finite; the message names the terms (see :meth:`VAE.diagnose`)."""


class VAE(nn.Module):
    """A variational autoencoder with free posterior, prior and likelihood beliefs.

    Args:
        encoder: data (B, *event_shape) -> (B, latent.encoder_outputs).
        decoder: latent draws (N, latent.dim) -> (N, *likelihood.out_event_shape).
        latent: the latent blocks of (posterior, prior) pairs.
        likelihood: the likelihood belief p(x | decoder output).
        bound: the training objective (ELBO, beta-ELBO, VR, IWAE, ...).
        latent_clip: clamp draws to [-c, c] before the decoder (heavy-tailed posteriors).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: LatentSpec,
                 likelihood: Likelihood, bound: Bound | None = None,
                 latent_clip: float | None = None):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent, self.likelihood = latent, likelihood
        self.bound = bound or Bound()
        self.latent_clip = latent_clip

    # -- the generative path --------------------------------------------------------------------
    def posterior(self, x: torch.Tensor):
        """q(z | x) per latent block. Encoder outputs are taken in float32 even under AMP."""
        return self.latent.posterior(self.encoder(x).float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for draws of any leading shape: (..., dim) -> (..., *out_event)."""
        lead = z.shape[:-1]
        if self.latent_clip is not None:
            z = z.clamp(-self.latent_clip, self.latent_clip)
        out = self.decoder(z.reshape(-1, z.shape[-1])).float()
        return out.reshape(*lead, *out.shape[1:])

    def terms(self, x: torch.Tensor, samples: int):
        """(q, log p(x|z), log p(z), log q(z|x)), the last three of shape (samples, B)."""
        q = self.posterior(x)
        z = self.latent.rsample(q, samples)
        log_lik = self.likelihood.log_prob(x, self.decode(z))
        return q, log_lik, self.latent.log_p(z), self.latent.log_q(q, z)

    def estimate(self, x: torch.Tensor, bound: Bound | None = None,
                 beta: float | None = None) -> BoundEstimate:
        """The bound per data point (value and gradient surrogate); ``beta`` overrides the
        bound's (KL warm-up)."""
        bound = bound or self.bound
        if beta is not None and beta != bound.beta:
            bound = dataclasses.replace(bound, beta=beta)
        q, log_lik, log_p, log_q = self.terms(x, bound.samples)
        analytic = bound.is_elbo and bound.analytic_kl and self.latent.all_closed_form
        return bound.estimate(log_lik, log_p, log_q, self.latent.kl(q) if analytic else None)

    forward = estimate

    def diagnose(self, x: torch.Tensor) -> list[str]:
        """Name every term that is non-finite on this batch (empty if all are finite)."""
        problems = []
        with torch.no_grad():
            h = self.encoder(x).float()
            if not torch.isfinite(h).all():
                return ["the encoder output is non-finite (the weights have diverged; lower the "
                        "learning rate or set clip_grad)"]
            q = self.latent.posterior(h)
            for block, kl in zip(self.latent.blocks, self.latent.kl_blocks(q), strict=True):
                if not torch.isfinite(kl).all():
                    problems.append(f"the KL of block {block} is non-finite")
            z = self.latent.rsample(q, 1)
            for block, sl, qi in zip(self.latent.blocks, self.latent.slices, q, strict=True):
                if not torch.isfinite(qi.log_prob(z[..., sl])).all():
                    problems.append(f"log q(z|x) of block {block} is non-finite")
            out = self.decode(z)
            if not torch.isfinite(out).all():
                problems.append("the decoder output is non-finite (try latent_clip for "
                                "heavy-tailed posteriors)")
            elif not torch.isfinite(self.likelihood.log_prob(x, out)).all():
                problems.append(f"the {self.likelihood.name} log-likelihood is non-finite")
        return problems

    # -- evaluation and use ---------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, samples: int = 1000,
                       budget: int = 2**20) -> torch.Tensor:
        """Importance-sampled log p(x) (the IWAE bound with K = ``samples``), per data point.

        Batched over samples and data: draws are decoded about ``budget`` output elements at a
        time (small enough to stay in cache) and combined with a running logsumexp, so K = 5000
        needs no more memory than K = 50.
        """
        q = self.posterior(x)
        per_draw = x.shape[0] * math.prod(self.likelihood.out_event_shape)
        chunk = max(1, min(samples, budget // max(per_draw, 1)))
        total = torch.full((x.shape[0],), -math.inf, device=x.device)
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            z = self.latent.rsample(q, k)
            log_w = (self.likelihood.log_prob(x, self.decode(z)) + self.latent.log_p(z)
                     - self.latent.log_q(q, z))
            total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
        return total - math.log(samples)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes: the posterior median of every dim, (B, dim)."""
        return self.latent.median(self.posterior(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood mean decoded from each image's code."""
        return self.likelihood.mean(self.decode(self.embed(x)))

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """The likelihood mean decoded from n draws of the prior."""
        device = next(self.parameters()).device
        return self.likelihood.mean(self.decode(self.latent.sample_prior(n).to(device)))


def build_model(config, event_shape) -> VAE:
    """A VAE from a :class:`~autovae.config.Config` and the data's event shape."""
    latent = LatentSpec.parse(config.latent, dim=config.latent_dim,
                              learn_prior=config.learn_prior)
    options = {}
    if config.likelihood.replace("_", "-").lower() in ("gaussian", "normal", "laplace"):
        options = {"sigma": config.sigma, "learn_sigma": config.learn_sigma}
    lik = likelihood(config.likelihood, tuple(event_shape), **options)
    encoder, decoder = build_networks(config.network, event_shape, latent.encoder_outputs,
                                      latent.dim, lik.out_event_shape, config.hidden,
                                      config.depth)
    bound = Bound(alpha=config.alpha, samples=config.samples, beta=config.beta,
                  analytic_kl=config.analytic_kl)
    return VAE(encoder, decoder, latent, lik, bound, config.latent_clip)
