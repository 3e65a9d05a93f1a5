"""The VAE: encoder -> LatentSpec -> decoder -> likelihood, trained with a Bound.

Every choice is an object: the networks are any ``nn.Module`` with the right shapes, the latent
space a :class:`~autovae.beliefs.LatentSpec`, the likelihood a
:class:`~autovae.beliefs.Likelihood`, the objective a :class:`~autovae.bounds.Bound`.
:meth:`VAE.from_config` makes all of them from a :class:`~autovae.config.Config` by name.

The beta-VAE (Higgins et al. 2017) is this model with ``beta != 1`` (``--model beta-vae``
names it, and refuses ``beta = 1``); a KL warm-up ramps beta up from 0 over ``warmup_epochs``.
The Fisher autoencoder (Zheng et al. 2019) is this model with a :class:`FisherPenalty`
``xi |J - J_c|`` on the posterior's location Fisher information J, for any posterior family
that has one. beta and the penalty change the gradient surrogate only: the logged bound is
always the true bound. The posterior's J (mean per latent dim) and entropy power N are logged
every epoch (``train_fisher``, ``val_fisher``, ...): Stam's inequality says ``J N >= 1``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check
from .._cpu import keep_freed_memory, ordered_map
from ..beliefs import (
    LatentSpec,
    Likelihood,
    fisher_information_available,
    fisher_penalty,
    likelihood,
    likelihood_class,
    posterior_fisher,
    posterior_fisher_shannon,
)
from ..beliefs.fisher import check_fisher
from ..bounds import Bound, BoundEstimate
from ..nets import NETWORK_KEYS, build_networks, inference_forward
from .base import Model, StepContext

__all__ = ["VAE", "FisherPenalty"]

_ELBO = Bound(alpha=1.0, samples=1)

LIKELIHOOD_KEYS = frozenset({"likelihood", "sigma", "learn_sigma"})
BOUND_KEYS = frozenset({"alpha", "samples", "beta", "analytic_kl"})
FISHER_KEYS = frozenset({"fisher_weight", "fisher_target", "fisher_estimator"})


@dataclass(frozen=True)
class FisherPenalty:
    """``weight * |mean J - target|`` added to the loss (Zheng et al. 2019), J the posterior's
    location Fisher information per latent dim, by ``estimator`` ("closed-form" or "score")."""

    weight: float = 0.1
    target: float = 5.0
    estimator: str = "closed-form"

    def __call__(self, latent: LatentSpec, q) -> torch.Tensor:
        return fisher_penalty(posterior_fisher(latent, q, self.estimator), self.target,
                              self.weight)


class VAE(Model):
    """A variational autoencoder with free posterior, prior and likelihood beliefs.

    Args:
        encoder: data (B, *event_shape) -> (B, latent.encoder_outputs).
        decoder: latent draws (N, latent.dim) -> (N, *likelihood.out_event_shape).
        latent: the latent blocks of (posterior, prior) pairs.
        likelihood: the likelihood belief p(x | decoder output).
        bound: the training objective (ELBO, beta-ELBO, VR, IWAE, ...).
        latent_clip: clamp draws to [-c, c] before the decoder (heavy-tailed posteriors).
        warmup_epochs: KL warm-up, beta ramps up linearly from 0 over this many epochs.
        fisher: a Fisher-autoencoder penalty (None: none).
    """

    name = "vae"
    has_bound = has_encoder = has_likelihood = can_be_prior = True
    validation_keys = ("val_elbo", "val_bound")
    # the Config keys from_config, the bound, the warm-up, the penalty and evaluate read
    reads = Model.reads | NETWORK_KEYS | LIKELIHOOD_KEYS | BOUND_KEYS | FISHER_KEYS | {
        "latent_clip", "warmup_epochs", "nll_samples"}

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: LatentSpec,
                 likelihood: Likelihood, bound: Bound | None = None,
                 latent_clip: float | None = None, warmup_epochs: float = 0.0,
                 fisher: FisherPenalty | None = None):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent, self.likelihood = latent, likelihood
        self.bound = bound or Bound()
        self.latent_clip = latent_clip
        self.warmup_epochs = warmup_epochs
        if fisher is not None:
            check_fisher(latent)  # refuses posteriors without a location Fisher information
        self.fisher = fisher
        self.measures_fisher = all(fisher_information_available(b.posterior)[0]
                                   for b in latent.blocks)

    @classmethod
    def from_config(cls, config, event_shape) -> VAE:
        """A VAE from a :class:`~autovae.config.Config` and the data's event shape."""
        return cls(**cls.vae_parts(config, event_shape))

    @staticmethod
    def vae_parts(config, event_shape) -> dict:
        """The VAE's constructor arguments from a config: the networks, latent space,
        likelihood, bound, clip, warm-up and Fisher penalty (subclasses add their own parts)."""
        latent = LatentSpec.parse(config.latent, dim=config.latent_dim,
                                  learn_prior=config.learn_prior)
        lik_class = likelihood_class(config.likelihood)
        options = ({"sigma": config.sigma, "learn_sigma": config.learn_sigma}
                   if lik_class.takes_scale else {})
        lik = likelihood(config.likelihood, tuple(event_shape), **options)
        encoder, decoder = build_networks(config.network, event_shape, latent.encoder_outputs,
                                          latent.dim, lik.out_event_shape, config.hidden,
                                          config.depth)
        bound = Bound(alpha=config.alpha, samples=config.samples, beta=config.beta,
                      analytic_kl=config.analytic_kl)
        fisher = (FisherPenalty(config.fisher_weight, config.fisher_target,
                                config.fisher_estimator) if config.fisher_weight > 0 else None)
        return dict(encoder=encoder, decoder=decoder, latent=latent, likelihood=lik, bound=bound,
                    latent_clip=config.latent_clip, warmup_epochs=config.warmup_epochs,
                    fisher=fisher)

    # -- training (the loop's contract, see autovae.models.base) --------------------------------
    def configure_optimizers(self, config) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=config.lr)}

    def beta_at(self, progress: float) -> float:
        """The KL weight after ``progress`` epochs (the warm-up ramp, then the bound's beta)."""
        if self.warmup_epochs > 0:
            return self.bound.beta * min(1.0, progress / self.warmup_epochs)
        return self.bound.beta

    def kl_per_point(self, q, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per data point, shape (B,): the closed form when every block has
        one and the bound allows it, else the one-draw estimate log q(z|x) - log p(z) at the
        draws ``z`` of shape (B, dim)."""
        if self.latent.all_closed_form and self.bound.analytic_kl:
            return self.latent.kl(q)
        return self.latent.log_q(q, z[None])[0] - self.latent.log_p(z[None])[0]

    def training_step(self, x: torch.Tensor, ctx: StepContext):
        beta = self.beta_at(ctx.progress)
        q, est = self.posterior_and_estimate(x, beta=beta)
        ctx.log("train_bound", est.value)
        ctx.log("train_log_lik", est.log_lik)
        ctx.log("train_kl", est.kl)
        ctx.set("beta", beta)
        loss = -est.surrogate.mean()
        if self.fisher is not None:
            loss = loss + self.fisher(self.latent, q)
        if self.measures_fisher:
            for name, value in zip(("train_fisher", "train_entropy_power"),
                                   self._fisher_shannon(q), strict=True):
                ctx.log(name, value)
        yield "model", loss

    def validation_metrics(self, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        """Mean bound (the run's) and ELBO over ``x``, and the posterior's Fisher information
        and entropy power where its families have them."""
        totals = {"bound": 0.0, "elbo": 0.0}
        for start in range(0, x.shape[0], batch_size):
            elbo, bound = self.elbo_and_bound(x[start:start + batch_size])
            totals["bound"] += bound.sum().item()
            totals["elbo"] += elbo.value.sum().item()
        totals.update(self.fisher_shannon(x, batch_size))
        return {k: v / x.shape[0] if k in ("bound", "elbo") else v for k, v in totals.items()}

    def _fisher_shannon(self, q) -> tuple[torch.Tensor, torch.Tensor]:
        """(J per latent dim, entropy power N) per data point, detached."""
        with torch.no_grad():
            J, N = posterior_fisher_shannon(self.latent, q)
        return J / self.latent.dim, N

    def fisher_shannon(self, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
        """Means over ``x`` of the posterior's location Fisher information per latent dim
        (``fisher``) and entropy power (``entropy_power``): the model's point in the
        Fisher-Shannon plane (Stam: ``fisher * entropy_power >= 1``). Empty when a posterior
        family has no location Fisher information."""
        if not self.measures_fisher:
            return {}
        sums = torch.zeros(2, dtype=torch.float64)
        for start in range(0, x.shape[0], batch_size):
            J, N = self._fisher_shannon(self.posterior(x[start:start + batch_size]))
            sums += torch.stack([J.double().sum(), N.double().sum()]).cpu()
        return {"fisher": sums[0].item() / x.shape[0],
                "entropy_power": sums[1].item() / x.shape[0]}

    # -- the generative path --------------------------------------------------------------------
    def posterior(self, x: torch.Tensor):
        """q(z | x) per latent block. Encoder outputs are taken in float32 even under AMP."""
        return self.latent.posterior(self.encoder(x).float())

    def decode(self, z: torch.Tensor, inference: bool = False) -> torch.Tensor:
        """Decoder output for draws of any leading shape: (..., dim) -> (..., *out_event).
        ``inference`` (no autograd): through :func:`autovae.nets.inference_forward`."""
        lead = z.shape[:-1]
        if self.latent_clip is not None:
            z = z.clamp(-self.latent_clip, self.latent_clip)
        flat = z.reshape(-1, z.shape[-1])
        out = (inference_forward(self.decoder, flat) if inference else self.decoder(flat)).float()
        return out.reshape(*lead, *out.shape[1:])

    def generate_from(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood mean decoded from codes z (B, dim) (``latent_clip`` applied), in the
        decoder's dtype: a float64 copy gives float64 (the inverse problems' prior)."""
        if self.latent_clip is not None:
            z = z.clamp(-self.latent_clip, self.latent_clip)
        return self.likelihood.mean(self.decoder(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood mean decoded from codes of any leading shape: (..., dim) ->
        (..., *event) (data points, as :meth:`reconstruct` and :meth:`generate` give)."""
        return self.likelihood.mean(self.decode(z))

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
        return self.posterior_and_estimate(x, bound, beta)[1]

    def posterior_and_estimate(self, x: torch.Tensor, bound: Bound | None = None,
                               beta: float | None = None):
        """(q(z | x), :meth:`estimate`) from one encoder pass."""
        bound = bound or self.bound
        if beta is not None and beta != bound.beta:
            bound = dataclasses.replace(bound, beta=beta)
        q, log_lik, log_p, log_q = self.terms(x, bound.samples)
        analytic = bound.is_elbo and bound.analytic_kl and self.latent.all_closed_form
        return q, bound.estimate(log_lik, log_p, log_q,
                                 self.latent.kl(q) if analytic else None)

    forward = estimate

    def elbo_and_bound(self, x: torch.Tensor) -> tuple[BoundEstimate, torch.Tensor]:
        """(the single-sample ELBO estimate, the model's own bound per data point) on ``x``;
        one pass when the model's bound is that ELBO (beta only changes the surrogate)."""
        elbo = self.estimate(x, _ELBO)
        if self.bound.samples == 1 and self.bound.analytic_kl:
            return elbo, elbo.value
        return elbo, self.estimate(x).value

    def diagnose(self, x: torch.Tensor, term: str = "model") -> list[str]:
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
                    problems.append(f"the KL of block {block} is non-finite (try a smaller lr "
                                    "or set clip_grad)")
            z = self.latent.rsample(q, 1)
            for block, sl, qi in zip(self.latent.blocks, self.latent.slices, q, strict=True):
                if not torch.isfinite(qi.log_prob(z[..., sl])).all():
                    problems.append(f"log q(z|x) of block {block} is non-finite (try a "
                                    "smaller lr or set clip_grad)")
            out = self.decode(z)
            if not torch.isfinite(out).all():
                problems.append("the decoder output is non-finite (try latent_clip for "
                                "heavy-tailed posteriors)")
            elif not torch.isfinite(self.likelihood.log_prob(x, out)).all():
                problems.append(f"the {self.likelihood.name} log-likelihood is non-finite "
                                "(try a smaller lr or set clip_grad; a tiny fixed sigma makes it "
                                "overflow: raise --sigma or set --learn-sigma)")
        return problems

    # -- evaluation and use ---------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, samples: int = 1000, budget: int = 2**20,
                       workers: int | None = None) -> torch.Tensor:
        """Importance-sampled log p(x) (the IWAE bound with K = ``samples``), per data point.

        Batched over samples and data: draws are decoded about ``budget`` output elements at a
        time (small enough to stay in cache) and combined with a running logsumexp, so K = 5000
        needs no more memory than K = 50. On the CPU, ``workers`` threads (default: torch's
        thread count) each decode whole chunks of draws on one core, which keeps all cores near
        the matmul peak; the draws are made in order by the calling thread, so the estimate is
        the same for any ``workers``. With ``workers`` > 1, glibc's malloc is set to keep freed
        memory for the rest of the process (:func:`autovae._cpu.keep_freed_memory`; not done
        where a ``MALLOC_*_`` environment variable is set): else the workers' chunks page-fault
        their blocks in anew (one worker does not).
        """
        if workers is None:
            workers = torch.get_num_threads() if x.device.type == "cpu" else 1
        workers = check("workers", workers, "count")
        if x.device.type == "cpu" and workers > 1:
            keep_freed_memory()  # (else 170 to 390 page faults per chunk, 3 to 8% of its time)
        q = self.posterior(x)
        per_draw = x.shape[0] * math.prod(self.likelihood.out_event_shape)
        chunk = max(1, min(samples, budget // max(per_draw, 1)))

        def log_weights_logsumexp(z: torch.Tensor) -> torch.Tensor:
            log_w = (self.likelihood.log_prob(x, self.decode(z, inference=True))
                     + self.latent.log_p(z)
                     - self.latent.log_q(q, z))
            return torch.logsumexp(log_w, 0)

        draws = (self.latent.rsample(q, min(chunk, samples - start))
                 for start in range(0, samples, chunk))
        total = torch.full((x.shape[0],), -math.inf, device=x.device)
        for part in ordered_map(log_weights_logsumexp, draws, workers):
            total = torch.logaddexp(total, part)
        return total - math.log(samples)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Latent codes: the posterior median of every dim, (B, dim), ``batch_size`` at a
        time."""
        return torch.cat([self.latent.median(self.posterior(x[i:i + batch_size]))
                          for i in range(0, x.shape[0], batch_size)])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood mean decoded from each image's code."""
        return self.decode_mean(self.embed(x))

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """The likelihood mean decoded from n draws of the prior."""
        n = check("n", n, "count")
        return self.decode_mean(self.latent.sample_prior(n).to(self.device))

