"""Variational bounds: the ELBO (with a beta weight) and the Renyi VR bound / IWAE / VR-max.

With K reparameterized draws z_k ~ q(z|x) and log-weights
``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``, the VR bound of Li & Turner (2016) is

    L_{alpha,K} = 1/(1-alpha) * [logsumexp_k((1-alpha) log w_k) - log K]

alpha = 1 is the ELBO (the limit, mean_k log w_k), alpha = 0 is IWAE, alpha = -inf is VR-max.
Its gradient is sum_k w^_k grad log w_k with w^ = softmax((1-alpha) log w): autograd of the value
gives exactly that, so for beta = 1 the value is also the gradient surrogate.

>>> renyi_bound(torch.tensor([[-1.0], [-2.0]]), alpha=0.0)   # IWAE with K = 2, one data point
tensor([-1.3799])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Bound", "BoundEstimate", "renyi_bound", "renyi_weights"]


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if math.isnan(alpha):
        raise ValueError("alpha is NaN; pass a real Renyi order (1 = ELBO, 0 = IWAE, -inf = max)")
    return alpha


def _check_samples_axis(name: str, t, k: int | None = None) -> torch.Tensor:
    """Refuse what is not a (K, *batch) tensor with K >= 1: a 1-D tensor would be read as K
    samples of a single data point, which is rarely what was meant."""
    if not torch.is_tensor(t):
        raise ValueError(f"{name} must be a tensor of shape (K, *batch), got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (K, *batch) (K samples per data point), got "
                         f"shape {tuple(t.shape)}; for one data point use {name}[:, None]")
    if t.shape[0] < 1:
        raise ValueError(f"{name} has K = 0 samples (shape {tuple(t.shape)}); K must be >= 1")
    if k is not None and t.shape[0] != k:
        raise ValueError(f"{name} has K = {t.shape[0]} samples (shape {tuple(t.shape)}), but the "
                         f"bound was built with samples={k}")
    return t


def renyi_bound(log_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """The VR bound per data point from log-weights of shape (K, *batch); returns (*batch).

    Handles alpha = +-inf (min / max over the samples), -inf log-weights (samples outside the
    prior's support), and alpha near 1 without cancellation: where |1 - alpha| * |log w - mean|
    <= 1 it uses mean + log1p(mean_k expm1((1 - alpha)(log w_k - mean))) / (1 - alpha), which
    tends to mean + (1 - alpha)/2 * variance and to the ELBO as alpha -> 1.

    NaN policy: a NaN log-weight makes its data point's bound NaN, for every alpha (the other
    data points are unchanged), so that the training loop's non-finite policy sees it and
    names the term; nothing is dropped or replaced silently.
    """
    alpha = _check_alpha(alpha)
    k = _check_samples_axis("log_weights", log_weights).shape[0]
    if alpha == -math.inf:
        return log_weights.max(0).values
    if alpha == math.inf:
        return log_weights.min(0).values
    mean = log_weights.mean(0)
    if alpha == 1 or k == 1:
        return mean
    c = 1 - alpha
    general = (torch.logsumexp(c * log_weights, 0) - math.log(k)) / c
    finite = torch.isfinite(mean)
    spread = c * torch.where(finite, log_weights - mean, torch.zeros_like(log_weights))
    near = finite & (spread.abs().amax(0) <= 1)
    spread = torch.where(near, spread, torch.zeros_like(spread))
    precise = mean + torch.log1p(torch.expm1(spread).mean(0)) / c
    return torch.where(near, precise, general)


def renyi_weights(log_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """The normalized gradient weights softmax_k((1 - alpha) log w_k), shape (K, *batch); a
    NaN log-weight gives its data point NaN weights (the NaN policy of :func:`renyi_bound`)."""
    alpha = _check_alpha(alpha)
    _check_samples_axis("log_weights", log_weights)
    if math.isinf(alpha):
        pick = log_weights.argmax(0) if alpha < 0 else log_weights.argmin(0)
        weights = torch.zeros_like(log_weights).scatter_(0, pick.unsqueeze(0), 1.0)
        # the NaN policy of renyi_bound: a NaN log-weight gives its data point NaN weights
        return torch.where(log_weights.isnan().any(0), math.nan, weights)
    return torch.softmax((1 - alpha) * log_weights, dim=0)


@dataclass(frozen=True)
class BoundEstimate:
    """Per data point: ``value`` (the bound itself, beta = 1: what to log and compare),
    ``surrogate`` (maximize its mean; differs from value when beta != 1), and the two parts,
    ``log_lik`` (mean over samples of log p(x|z)) and ``kl`` (analytic or sampled)."""

    value: torch.Tensor
    surrogate: torch.Tensor
    log_lik: torch.Tensor
    kl: torch.Tensor


@dataclass(frozen=True)
class Bound:
    """A training objective.

    Args:
        alpha: Renyi order. 1 = ELBO, 0 = IWAE, -inf = VR-max; any real number.
        samples: K, importance samples per data point.
        beta: weight of the latent (KL) term in the surrogate; beta = 1 is the true bound. For
            alpha != 1 it tempers the latent term inside the log-weights.
        analytic_kl: use the closed-form KL when it is available and the bound is an ELBO
            (alpha = 1, or K = 1 where every alpha gives the ELBO): same expectation, lower
            variance.
    """

    alpha: float = 1.0
    samples: int = 1
    beta: float = 1.0
    analytic_kl: bool = True

    def __post_init__(self):
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))
        if int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples (K) must be a positive integer, got {self.samples}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")

    @property
    def is_elbo(self) -> bool:
        """Whether this bound is the ELBO (alpha = 1, or a single sample)."""
        return self.alpha == 1 or self.samples == 1

    @property
    def name(self) -> str:
        if self.is_elbo:
            return "elbo" if self.beta == 1 else f"beta-elbo({self.beta:g})"
        if self.alpha == 0:
            return f"iwae(K={self.samples})"
        if self.alpha == -math.inf:
            return f"vr-max(K={self.samples})"
        return f"vr(alpha={self.alpha:g},K={self.samples})"

    def estimate(self, log_lik: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor,
                 kl: torch.Tensor | None = None) -> BoundEstimate:
        """Combine the per-sample terms, each (K, *batch), into the bound per data point.

        ``kl`` is the analytic KL per data point (*batch), or None when the pair has no closed
        form; it is used only when ``analytic_kl`` is set and the bound is an ELBO.
        """
        terms = {"log_lik": log_lik, "log_p": log_p, "log_q": log_q}
        for name, t in terms.items():
            _check_samples_axis(name, t, self.samples)
        shapes = {tuple(t.shape) for t in terms.values()}
        if len(shapes) > 1:
            raise ValueError("log_lik, log_p and log_q must have the same shape (K, *batch), got "
                             + ", ".join(f"{n} {tuple(t.shape)}" for n, t in terms.items()))
        if kl is not None and tuple(kl.shape) != tuple(log_p.shape[1:]):
            raise ValueError(f"kl must have the batch shape {tuple(log_p.shape[1:])} of log_p, "
                             f"got {tuple(kl.shape)}")
        log_ratio = log_q - log_p
        sampled_kl = log_ratio.mean(0)
        if self.is_elbo:
            rec = log_lik.mean(0)
            kl_term = kl if (self.analytic_kl and kl is not None) else sampled_kl
            value = rec - kl_term
            surrogate = value if self.beta == 1 else rec - self.beta * kl_term
            return BoundEstimate(value, surrogate, rec, kl_term)
        value = renyi_bound(log_lik - log_ratio, self.alpha)
        surrogate = (value if self.beta == 1
                     else renyi_bound(log_lik - self.beta * log_ratio, self.alpha))
        return BoundEstimate(value, surrogate, log_lik.mean(0), sampled_kl)
