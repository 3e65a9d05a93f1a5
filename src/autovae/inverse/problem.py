"""A Bayesian inverse problem: y = F(T(z)) + noise, z ~ prior.

A :class:`~autovae.inverse.priors.Prior` maps the sampled coordinates z to the forward model's
parameters T(z) and gives their density; a :class:`~autovae.inverse.forward.ForwardModel` F
maps parameters to observations; the noise is Gaussian with standard deviations sigma_i
(``noise_kind="absolute"``) or sigma_i = noise |y_i| (``"relative"``, Xia & Zabaras use 5%).
The misfit is phi(z) = 1/2 sum_i ((F(T(z))_i - y_i) / sigma_i)^2.

Metrics against a known truth (parameters): the relative L2 error of the posterior mean,
SSR of parameters and observations, NSSWR (weighted SSR over the truth's, near 1 when the
posterior fits as well as the truth), and calibration: the fraction of parameters whose truth
lies within 1 and 2 posterior sd, and within the central 50/90/95% credible bands. For a
forward model of positive parameters (``positive``: coefficients theta, not their logs) the
same error and calibration are also reported in ln theta (``log_rel_l2_mean``,
``log_coverage_2sd``, ...), the scale on which such priors are Gaussian: the 2-sd coverage and
the relative error in theta are dominated by a few large coefficients, while the quantile bands
are the same on either scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .forward import ForwardModel
from .kernels import Target
from .priors import Prior

__all__ = ["InverseProblem"]

BANDS = (0.5, 0.9, 0.95)


def _as_tensor(name: str, value, dtype=torch.float64) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value, dtype=float) if not torch.is_tensor(value)
                               else value.detach(), dtype=dtype).clone()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of numbers: {e}") from None


def noise_sigma(data: torch.Tensor, noise, noise_kind: str) -> torch.Tensor:
    """Per-observation sigma (P,) from ``noise`` (a fraction, or a std: scalar or (P,))."""
    if noise_kind not in ("relative", "absolute"):
        raise ValueError(f"noise_kind must be 'relative' or 'absolute', got {noise_kind!r}")
    noise_t = _as_tensor("noise", noise)
    if not (torch.isfinite(noise_t).all() and (noise_t > 0).all()):
        raise ValueError(f"noise must be positive and finite, got {noise!r}")
    if noise_kind == "relative":
        if noise_t.numel() != 1:
            raise ValueError("relative noise is one fraction (e.g. 0.05), got an array; use "
                             "noise_kind='absolute' for per-point standard deviations")
        sigma = noise_t.reshape(()) * data.abs()
        if (sigma == 0).any():
            raise ValueError("data has zero observations, where relative noise gives sigma = 0;"
                             " use noise_kind='absolute'")
        return sigma
    if noise_t.numel() not in (1, data.shape[0]):
        raise ValueError(f"absolute noise must be a number or one per observation "
                         f"({data.shape[0]}), got {noise_t.numel()} values")
    return noise_t.reshape(-1).expand(data.shape[0]).clone()


class InverseProblem:
    """The posterior of a prior's parameters given data y of a forward model.

    ``data`` (P,) with P = ``forward.n_obs``; ``noise``/``noise_kind`` as in
    :func:`noise_sigma`. The prior's parameters must have the forward model's shape, or the
    same number of values (they are then reshaped: a field (n, n) for a model that takes n^2).
    """

    def __init__(self, prior: Prior, forward: ForwardModel, data, noise,
                 noise_kind: str = "absolute"):
        if not isinstance(prior, Prior):
            raise ValueError(f"prior must be an autovae.inverse Prior, got {type(prior).__name__}")
        if not isinstance(forward, ForwardModel):
            raise ValueError(f"forward must be an autovae.inverse ForwardModel, got "
                             f"{type(forward).__name__}")
        data = _as_tensor("data", data)
        if data.ndim != 1:
            raise ValueError(f"data must have shape (P,), got {tuple(data.shape)}")
        if data.shape[0] != forward.n_obs:
            raise ValueError(f"data has {data.shape[0]} values but the forward model "
                             f"{forward.name} gives {forward.n_obs} observations; give one "
                             "value per observation")
        if not torch.isfinite(data).all():
            raise ValueError("data holds NaN or infinite values")
        have = int(np.prod(prior.param_shape))
        want = int(np.prod(forward.param_shape))
        if have != want:
            raise ValueError(f"the prior's parameters have shape {tuple(prior.param_shape)} "
                             f"({have} values) but the forward model {forward.name} takes "
                             f"{tuple(forward.param_shape)} ({want}); use a prior trained on "
                             "data of the forward model's parameter shape")
        self.prior, self.forward = prior, forward
        self.data, self.sigma = data, noise_sigma(data, noise, noise_kind)
        self.noise, self.noise_kind = noise, noise_kind
        self.dim = prior.dim

    def __repr__(self) -> str:
        return (f"InverseProblem(dim={self.dim}, forward={self.forward.name}, "
                f"observations={self.data.shape[0]}, noise={self.noise!r} {self.noise_kind})")

    # -- potential ------------------------------------------------------------------------------
    def params(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's parameters T(z), (B, d) -> (B, *param_shape), float64."""
        return self.prior.params(z).to(torch.float64)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted observations F(T(z)), (B, d) -> (B, P), float64."""
        p = self.params(z)
        p = p.reshape(p.shape[0], *self.forward.param_shape)
        flat = p.detach().reshape(len(p), -1)
        bad = ~torch.isfinite(flat).all(1)
        if getattr(self.forward, "positive", False):
            bad |= (flat <= 0).any(1)
        if not bad.any():
            return self.forward(p).to(torch.float64)
        # a sampler's proposal outside the parameters' range (exp overflowing to inf or
        # underflowing to 0): the forward model fails there, so its observations are NaN
        out = torch.full((len(p), self.forward.n_obs), math.nan, dtype=torch.float64)
        if (~bad).any():
            out = out.index_put((torch.nonzero(~bad).flatten(),),
                                self.forward(p[~bad]).to(torch.float64))
        return out

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Misfit 1/2 sum ((F(T(z)) - y) / sigma)^2, (B, d) -> (B,).

        Where a gradient will be taken and the forward model has a fused misfit and gradient
        (:meth:`~autovae.inverse.forward.ForwardModel.misfit_and_grad`), that one call gives
        both: autograd then runs only through the prior's map T."""
        if torch.is_grad_enabled() and z.requires_grad:
            p = self.params(z)
            fused = self._fused_phi(p)
            if fused is not None:
                return fused
        r = (self.predict(z) - self.data) / self.sigma
        return 0.5 * (r * r).sum(-1)

    def _fused_phi(self, p: torch.Tensor) -> torch.Tensor | None:
        """phi from the model's fused misfit and gradient (None where it has none), as a
        function of the parameters p (B, ...) whose backward is the saved gradient."""
        shape = (len(p), *self.forward.param_shape)
        flat = p.detach().reshape(shape)
        low = 0.0 if getattr(self.forward, "positive", False) else -math.inf
        ok = ((flat > low) & (flat < math.inf)).reshape(len(p), -1).all(1)  # NaN fails both
        if not ok.any():
            return None
        fused = self.forward.misfit_and_grad(flat if bool(ok.all()) else flat[ok], self.data,
                                             self.sigma)
        if fused is None:
            return None
        value, grad = fused[0].to(torch.float64), fused[1].to(torch.float64)
        if not bool(ok.all()):
            value = torch.full((len(p),), math.nan, dtype=torch.float64).index_put((ok,), value)
            grad = torch.zeros(shape, dtype=torch.float64).index_put((ok,), grad)
        return _Misfit.apply(p.reshape(shape), value, grad)

    def grad_phi(self, z: torch.Tensor) -> torch.Tensor:
        """Gradient of phi by autograd, (B, d) -> (B, d)."""
        z = torch.as_tensor(z, dtype=torch.float64).detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.phi(z).sum(), z)
        return g

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prior(z)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """U(z) = phi(z) - log p0(z), (B, d) -> (B,)."""
        return self.phi(z) - self.log_prior(z)

    def target(self) -> Target:
        """The sampler's target; its solves are the forward model's counter."""
        return Target(self.phi, self.dim,
                      prior="normal" if self.prior.normal else self.prior.log_prior,
                      dtype=torch.float64, solves=lambda: self.forward.solves,
                      gradient=self.forward.gradient,
                      gradient_reason=self.forward.gradient_reason,
                      residuals=self.residuals)

    def residuals(self, z: torch.Tensor) -> torch.Tensor:
        """Whitened residuals (F(T(z)) - y) / sigma, (B, d) -> (B, P); phi = |r|^2 / 2."""
        return (self.predict(z) - self.data) / self.sigma

    # -- metrics --------------------------------------------------------------------------------
    def weighted_ssr(self, predictions: torch.Tensor) -> torch.Tensor:
        """sum ((y - F) / sigma)^2 of predictions (B, P) -> (B,)."""
        return (((self.data - predictions.to(torch.float64)) / self.sigma) ** 2).sum(-1)

    def posterior_params(self, draws, batch: int = 512, quantiles=(), log: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Pointwise posterior mean and sd of the parameters, each (*param_shape), and their
        ``quantiles`` (Q, *param_shape) when asked, from draws (..., d); with ``log``, of
        the parameters' logs (positive parameters)."""
        z = _as_tensor("draws", draws).reshape(-1, self.dim)
        with torch.no_grad():
            p = torch.cat([self.params(z[i:i + batch]) for i in range(0, z.shape[0], batch)])
        if log:
            p = p.log()
        q = torch.quantile(p, torch.tensor(quantiles, dtype=p.dtype), dim=0) \
            if len(quantiles) else None
        return p.mean(0), p.std(0, correction=0), q

    @staticmethod
    def relative_l2(value, truth) -> float:
        """||value - truth|| / ||truth||."""
        f, t = _as_tensor("value", value), _as_tensor("truth", truth)
        if f.shape != t.shape:
            raise ValueError(f"value {tuple(f.shape)} and truth {tuple(t.shape)} differ in shape")
        return float(torch.linalg.vector_norm(f - t) / torch.linalg.vector_norm(t))

    def calibration(self, draws, truth, log: bool = False) -> dict[str, float]:
        """Coverage of the truth (parameters): within 1 and 2 posterior sd, and within the
        central 50/90/95% credible bands, as fractions of the parameters; with ``log``, of
        the parameters' logs (positive parameters and truth)."""
        t = _as_tensor("truth", truth).reshape(self.prior.param_shape)
        if log:
            t = t.log()
        lo = [(1 - b) / 2 for b in BANDS]
        hi = [(1 + b) / 2 for b in BANDS]
        mean, sd, q = self.posterior_params(draws, quantiles=lo + hi, log=log)
        out = {"coverage_1sd": float(((mean - t).abs() <= sd).double().mean()),
               "coverage_2sd": float(((mean - t).abs() <= 2 * sd).double().mean())}
        for i, b in enumerate(BANDS):
            inside = (q[i] <= t) & (t <= q[len(BANDS) + i])
            out[f"coverage_{round(100 * b)}"] = float(inside.double().mean())
        return out

    def coverage_curve(self, draws, truth, levels=None) -> tuple[np.ndarray, np.ndarray]:
        """(nominal levels, empirical coverage): the fraction of parameters whose truth lies in
        the central posterior interval of each level; a calibrated posterior follows the
        diagonal, an overconfident one falls below it."""
        levels = np.asarray(np.linspace(0.05, 0.95, 19) if levels is None else levels)
        t = _as_tensor("truth", truth).reshape(self.prior.param_shape)
        q = [(1 - lv) / 2 for lv in levels] + [(1 + lv) / 2 for lv in levels]
        _, _, bands = self.posterior_params(draws, quantiles=q)
        k = len(levels)
        cover = [float(((bands[i] <= t) & (t <= bands[k + i])).double().mean())
                 for i in range(k)]
        return levels, np.asarray(cover)

    def metrics(self, draws, truth=None, truth_observations=None, metric_draws: int = 400
                ) -> dict[str, Any]:
        """Posterior metrics over draws (..., d): weighted and plain SSR of observations
        (``metric_draws`` evenly spaced draws) and, with a ``truth`` (parameters), the relative
        L2 error of the posterior mean, its RMSE, the SSR of parameters, calibration and NSSWR
        (``truth_observations``: the truth's predictions, default F(truth))."""
        z = _as_tensor("draws", draws).reshape(-1, self.dim)
        pick = z[np.linspace(0, len(z) - 1, min(metric_draws, len(z))).round().astype(int)]
        with torch.no_grad():
            pred = self.predict(pick)
        wssr = self.weighted_ssr(pred)
        mean, sd, _ = self.posterior_params(z)
        out: dict[str, Any] = {"weighted_ssr_mean": float(wssr.mean()),
                               "ssr_obs_mean": float(((self.data - pred) ** 2).sum(-1).mean()),
                               "misfit_draws": len(pick),
                               "posterior_sd_mean": float(sd.mean())}
        if truth is not None:
            t = _as_tensor("truth", truth).reshape(self.prior.param_shape)
            if truth_observations is None:
                with torch.no_grad():
                    truth_observations = self.forward(
                        t.reshape(1, *self.forward.param_shape))
            ref = self.weighted_ssr(_as_tensor("truth_observations", truth_observations)
                                    .reshape(1, -1))
            with torch.no_grad():
                ssr_params = ((self.params(pick) - t) ** 2).reshape(len(pick), -1).sum(-1)
            out.update(nsswr=float((wssr / ref).mean()), weighted_ssr_truth=float(ref[0]),
                       rel_l2_mean=self.relative_l2(mean, t),
                       rmse_mean=float(((mean - t) ** 2).mean().sqrt()),
                       ssr_params_mean=float(ssr_params.mean()),
                       **self.calibration(z, t))
            if getattr(self.forward, "positive", False) and bool((t > 0).all()):
                log_mean, _, _ = self.posterior_params(z, log=True)
                out["log_rel_l2_mean"] = self.relative_l2(log_mean, t.log())
                out.update({f"log_{k}": v for k, v in self.calibration(z, t, log=True).items()})
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                for k, v in out.items()}


class _Misfit(torch.autograd.Function):
    """phi (B,) of parameters p (B, ...), value and gradient computed together by the model."""

    @staticmethod
    def forward(ctx, p, value, grad):
        ctx.grad = grad
        return value

    @staticmethod
    def backward(ctx, grad_out):
        g = ctx.grad
        return grad_out.reshape(-1, *([1] * (g.ndim - 1))) * g, None, None
