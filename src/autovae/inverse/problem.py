"""A Bayesian inverse problem in a latent space: y = F(D(z)) + noise, z ~ prior.

``decoder`` maps latents (B, d) to fields (B, n, n) (a trained VAE decoder or a Karhunen-Loeve
expansion); ``forward`` maps fields (B, n, n) and observation points (P, 2) to predictions
(B, P) (e.g. ``autovae.inverse.darcy_pressure``). The misfit is

    phi(z) = 1/2 sum_i ((F(D(z))_i - y_i) / sigma_i)^2,

sigma_i = noise * |y_i| (``noise_kind="relative"``, Xia & Zabaras use 5%) or sigma_i = noise
(``"absolute"``). Misfit metrics follow Xia & Zabaras (spec section 3.2): SSR of parameters and
of observations, NSSWR (weighted SSR over the truth's, which should approach 1), and the
relative L2 error of the posterior mean field.

Decoders: :class:`RunDecoder` (a trained autovae run's likelihood mean, with its latent prior:
:meth:`InverseProblem.from_run`) and :class:`KLDecoder` (the truncated Karhunen-Loeve expansion
of the GRF prior, the baseline without a VAE: :meth:`InverseProblem.from_kl`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .grf import canonical_eigh, grf_covariance
from .mcmc import Target

__all__ = ["InverseProblem", "KLDecoder", "RunDecoder", "run_prior"]


class RunDecoder(torch.nn.Module):
    """A trained model's decoder as a field map: z (B, d) -> likelihood mean (B, n, n).

    A float64 copy of ``model`` (the original is untouched), frozen, in eval mode; the run's
    ``latent_clip`` applies. The model must generate one-channel square fields (1, n, n).
    """

    def __init__(self, model):
        super().__init__()
        shape = tuple(model.likelihood.event_shape)
        if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
            raise ValueError(f"the run's decoder generates data of shape {shape}, not one-channel "
                             "square fields (1, n, n); train the run on a field dataset such as "
                             "darcy-grf (N, 1, n, n)")
        self.model = copy.deepcopy(model).double().eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.latent_dim = int(model.latent.dim)
        self.n = shape[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        clip = self.model.latent_clip
        z = z.to(torch.float64)
        out = self.model.decoder(z if clip is None else z.clamp(-clip, clip))
        return self.model.likelihood.mean(out)[:, 0]


def run_prior(latent) -> str | Callable[[torch.Tensor], torch.Tensor]:
    """``"normal"`` when every latent block's prior is N(0, 1), else the float64 log density
    ``latent.log_p`` (z (B, d) -> (B,)), which RWM and NUTS accept and pCN refuses."""
    standard = all(b.prior == "normal" for b in latent.blocks) and all(
        bool((loc == 0).all() and (scale == 1).all())
        for loc, scale in (latent.prior_params(i) for i in range(len(latent.blocks))))
    if standard:
        return "normal"
    lat = copy.deepcopy(latent).double()
    for param in lat.parameters():
        param.requires_grad_(False)
    return lambda z: lat.log_p(z.to(torch.float64))


class KLDecoder:
    """Truncated Karhunen-Loeve expansion of the GRF prior: z (B, dim) ~ N(0, I) -> (B, n, n).

    The covariance is the GRF's (``grf_covariance``); with uncertain length scales (a range
    (lo, hi), uniform as in the ``darcy-grf`` dataset) it is the length-scale average of the
    kernel matrices (Gauss-Legendre, ``nodes`` points), i.e. the exact covariance of the
    dataset's fields, and the expansion is its best ``dim``-term Gaussian approximation.
    ``energy``: the kept fraction of the total variance.
    """

    def __init__(self, n: int, dim: int = 16, kernel: str = "squared_exponential",
                 length_scale=(0.1, 0.5), variance: float = 1.0, nodes: int = 24):
        if isinstance(length_scale, (int, float)):
            cov = grf_covariance(n, kernel, float(length_scale), variance)
        else:
            lo, hi = (float(v) for v in length_scale)
            if not 0 < lo <= hi:
                raise ValueError(f"length_scale range must satisfy 0 < lo <= hi, got "
                                 f"{length_scale!r}")
            x, w = np.polynomial.legendre.leggauss(nodes)
            cov = sum(wi / 2 * grf_covariance(n, kernel, lo + (hi - lo) * (xi + 1) / 2,
                                              variance) for xi, wi in zip(x, w, strict=True))
        if not (isinstance(dim, int) and 1 <= dim <= n * n):
            raise ValueError(f"dim must be an integer in [1, {n * n}], got {dim!r}")
        lam, phi = (t.numpy() for t in canonical_eigh(cov))
        self.n, self.latent_dim, self.length_scale = n, dim, length_scale
        self.energy = float(lam[:dim].sum() / lam.sum())
        self.eigenvalues = torch.from_numpy(lam[:dim].copy())
        self._basis = torch.from_numpy((phi[:, :dim] * np.sqrt(lam[:dim])).T.copy())
        self.full_covariance = torch.from_numpy(cov)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z)
        return (z @ self._basis.to(z.dtype)).reshape(-1, self.n, self.n)

    def covariance(self) -> torch.Tensor:
        """(n^2, n^2) covariance of the truncated expansion."""
        return self._basis.T @ self._basis

    def __repr__(self) -> str:
        return (f"KLDecoder(n={self.n}, dim={self.latent_dim}, "
                f"length_scale={self.length_scale}, energy={self.energy:.4f})")


def _as_tensor(name: str, value, dtype=torch.float64) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value, dtype=float) if not torch.is_tensor(value)
                               else value.detach(), dtype=dtype).clone()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of numbers: {e}") from None


class InverseProblem:
    """Latent posterior of a field from sparse noisy observations of a forward model.

    ``points`` (P, 2) in [0, 1]^2, ``data`` (P,), ``noise`` > 0 (a fraction for
    ``noise_kind="relative"``; a standard deviation, scalar or (P,), for ``"absolute"``),
    ``prior``: ``"normal"`` (N(0, I) latents) or a callable log density (B, d) -> (B,).
    ``dim``: latent dimension (default ``decoder.latent_dim``); ``grid``: the field shape the
    forward model expects, (n, n), checked against the decoder's output when given.
    """

    def __init__(self, decoder: Callable[[torch.Tensor], torch.Tensor],
                 forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 points, data, noise, noise_kind: str = "relative",
                 prior: str | Callable[[torch.Tensor], torch.Tensor] = "normal",
                 dim: int | None = None, grid: tuple[int, int] | None = None):
        if not callable(decoder):
            raise ValueError("decoder must be a callable z (B, d) -> field (B, n, n)")
        if not callable(forward):
            raise ValueError("forward must be a callable (field (B, n, n), points (P, 2)) -> "
                             "(B, P)")
        if prior != "normal" and not callable(prior):
            raise ValueError(f"prior must be 'normal' or a callable log density, got {prior!r}")
        dim = dim if dim is not None else getattr(decoder, "latent_dim", None)
        if dim is None or int(dim) != dim or dim < 1:
            raise ValueError(f"dim (the latent dimension) must be a positive integer, got {dim!r};"
                             " pass dim= when the decoder has no latent_dim attribute")
        points = _as_tensor("points", points)
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
            raise ValueError(f"points must have shape (P, 2) of (x, y), got {tuple(points.shape)}")
        outside = ~(torch.isfinite(points).all(1) & (points >= 0).all(1) & (points <= 1).all(1))
        if outside.any():
            rows = outside.nonzero().flatten().tolist()
            raise ValueError(f"points outside the domain [0, 1]^2 (rows {rows[:10]}, e.g. "
                             f"{points[rows[0]].tolist()}); observation points must lie in the "
                             "unit square")
        data = _as_tensor("data", data)
        if data.ndim != 1:
            raise ValueError(f"data must have shape (P,), got {tuple(data.shape)}")
        if data.shape[0] != points.shape[0]:
            raise ValueError(f"data has {data.shape[0]} values but points has "
                             f"{points.shape[0]} rows; give one observation per point")
        if not torch.isfinite(data).all():
            raise ValueError("data holds NaN or infinite values")
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
                raise ValueError("data has zero observations, where relative noise gives "
                                 "sigma = 0; use noise_kind='absolute'")
        else:
            if noise_t.numel() not in (1, data.shape[0]):
                raise ValueError(f"absolute noise must be a number or one per point "
                                 f"({data.shape[0]}), got {noise_t.numel()} values")
            sigma = noise_t.reshape(-1).expand(data.shape[0]).clone()
        self.decoder, self.forward = decoder, forward
        self.points, self.data, self.sigma = points, data, sigma
        self.noise, self.noise_kind, self.prior = noise, noise_kind, prior
        self.dim = int(dim)
        params = list(decoder.parameters()) if isinstance(decoder, torch.nn.Module) else []
        self.dtype = params[0].dtype if params else torch.float64
        self.grid = self._check_shapes(grid)

    def _check_shapes(self, grid) -> tuple[int, int]:
        z = torch.zeros(1, self.dim, dtype=self.dtype)
        with torch.no_grad():
            try:
                field = self.decoder(z)
            except Exception as e:
                raise ValueError(f"the decoder failed on latents of shape (1, {self.dim}): {e}; "
                                 "check dim") from e
            if not torch.is_tensor(field) or field.ndim != 3 or field.shape[0] != 1:
                shape = tuple(field.shape) if torch.is_tensor(field) else type(field).__name__
                raise ValueError(f"the decoder must return fields (B, n, n); for (1, {self.dim}) "
                                 f"latents it returned {shape} (wrap a (B, 1, n, n) decoder as "
                                 "lambda z: decoder(z)[:, 0])")
            if grid is not None and tuple(field.shape[1:]) != tuple(grid):
                raise ValueError(f"the decoder returns fields of shape {tuple(field.shape[1:])} "
                                 f"but the forward model expects {tuple(grid)}; use a decoder "
                                 "trained on that grid (or a forward model on the decoder's)")
            try:
                pred = self.forward(field, self.points.to(field.dtype))
            except Exception as e:
                raise ValueError(f"the forward model rejects the decoder's fields of shape "
                                 f"{tuple(field.shape)}: {e}") from e
        if not torch.is_tensor(pred) or tuple(pred.shape) != (1, self.points.shape[0]):
            shape = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
            raise ValueError(f"the forward model must return (B, P) = (1, {self.points.shape[0]})"
                             f" for one field, got {shape}")
        return tuple(field.shape[1:])

    @classmethod
    def from_run(cls, run_folder, forward, points, data, noise, noise_kind: str = "relative",
                 device: str | None = "cpu") -> InverseProblem:
        """The problem with a trained run's decoder (likelihood mean, reshaped to (B, n, n))
        and its latent prior (:func:`run_prior`), loaded by :func:`autovae.run.load_trained`."""
        from ..run import load_trained

        _, _, model, _ = load_trained(Path(run_folder), device)
        decoder = RunDecoder(model.cpu())
        return cls(decoder, forward, points, data, noise, noise_kind,
                   prior=run_prior(decoder.model.latent), dim=decoder.latent_dim,
                   grid=(decoder.n, decoder.n))

    @classmethod
    def from_kl(cls, n: int, dim: int, forward, points, data, noise,
                noise_kind: str = "relative", **grf) -> InverseProblem:
        """The Karhunen-Loeve baseline: :class:`KLDecoder` (options ``grf``) with a N(0, I)
        prior of the same dimension as the VAE it is compared with."""
        decoder = KLDecoder(n, dim, **grf)
        return cls(decoder, forward, points, data, noise, noise_kind, prior="normal", dim=dim,
                   grid=(n, n))

    def __repr__(self) -> str:
        return (f"InverseProblem(dim={self.dim}, grid={self.grid}, points={self.points.shape[0]}, "
                f"noise={self.noise!r} {self.noise_kind})")

    # -- potential ------------------------------------------------------------------------------
    def fields(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded fields, (B, d) -> (B, n, n)."""
        return self.decoder(z.to(self.dtype))

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted observations F(D(z)), (B, d) -> (B, P) in float64."""
        field = self.fields(z)
        return self.forward(field, self.points.to(field.dtype)).to(torch.float64)

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Misfit 1/2 sum ((F(D(z)) - y) / sigma)^2, (B, d) -> (B,)."""
        r = (self.predict(z) - self.data) / self.sigma
        return 0.5 * (r * r).sum(-1)

    def grad_phi(self, z: torch.Tensor) -> torch.Tensor:
        """Gradient of phi by autograd, (B, d) -> (B, d)."""
        z = torch.as_tensor(z, dtype=torch.float64).detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.phi(z).sum(), z)
        return g

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """Latent log prior (up to a constant), (B, d) -> (B,)."""
        return -0.5 * (z * z).sum(-1) if self.prior == "normal" else self.prior(z)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """U(z) = phi(z) - log p0(z), (B, d) -> (B,)."""
        return self.phi(z) - self.log_prior(z)

    def target(self) -> Target:
        """The sampler target (phi and prior) for :func:`autovae.inverse.mcmc.run_chains`."""
        return Target(self.phi, self.dim, prior=self.prior, dtype=torch.float64)

    # -- metrics --------------------------------------------------------------------------------
    def _truth(self, truth) -> torch.Tensor:
        t = _as_tensor("truth", truth)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] != 1:
            raise ValueError(f"truth must be one field (n, n), got shape {tuple(t.shape)}")
        return t

    def ssr_obs(self, z: torch.Tensor) -> torch.Tensor:
        """SSR of observations sum (y - F(D(z)))^2, (B, d) -> (B,)."""
        with torch.no_grad():
            return ((self.data - self.predict(z)) ** 2).sum(-1)

    def weighted_ssr(self, predictions: torch.Tensor) -> torch.Tensor:
        """sum ((y - F) / sigma)^2 of predictions (B, P) -> (B,)."""
        return (((self.data - predictions.to(torch.float64)) / self.sigma) ** 2).sum(-1)

    def nsswr(self, z: torch.Tensor, truth) -> torch.Tensor:
        """Normalised weighted SSR sum ((y - F(D(z)))/sigma)^2 / sum ((y - F(truth))/sigma)^2,
        (B, d) -> (B,); ``truth`` (n', n') is passed through the forward model as it is (a
        finer grid is allowed: that ratio then shows the model error)."""
        t = self._truth(truth)
        with torch.no_grad():
            ref = self.weighted_ssr(self.forward(t.to(self.dtype), self.points.to(self.dtype)))
            return self.weighted_ssr(self.predict(z)) / ref

    def ssr_params(self, z: torch.Tensor, truth) -> torch.Tensor:
        """SSR of parameters sum (D(z) - truth)^2 over the cells, (B, d) -> (B,)."""
        t = self._truth(truth)
        with torch.no_grad():
            f = self.fields(z).to(torch.float64)
        if tuple(t.shape[1:]) != tuple(f.shape[1:]):
            raise ValueError(f"truth has shape {tuple(t.shape[1:])} but the decoder's fields "
                             f"are {tuple(f.shape[1:])}; restrict the truth to that grid")
        return ((f - t) ** 2).sum((-2, -1))

    def posterior_fields(self, draws, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Pointwise posterior mean and std of the decoded fields, each (n, n), from draws
        (..., d) (e.g. (chains, draws, d))."""
        z = _as_tensor("draws", draws).reshape(-1, self.dim)
        total = torch.zeros(self.grid, dtype=torch.float64)
        total2 = torch.zeros(self.grid, dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, z.shape[0], batch):
                f = self.fields(z[i:i + batch]).to(torch.float64)
                total += f.sum(0)
                total2 += (f * f).sum(0)
        mean = total / z.shape[0]
        var = (total2 / z.shape[0] - mean * mean).clamp(min=0)
        return mean, var.sqrt()

    @staticmethod
    def relative_l2(field, truth) -> float:
        """||field - truth|| / ||truth|| over the cells."""
        f, t = _as_tensor("field", field), _as_tensor("truth", truth)
        if f.shape != t.shape:
            raise ValueError(f"field {tuple(f.shape)} and truth {tuple(t.shape)} differ in shape")
        return float(torch.linalg.vector_norm(f - t) / torch.linalg.vector_norm(t))

    def metrics(self, draws, truth=None, batch: int = 512) -> dict[str, Any]:
        """Posterior misfit metrics over draws (..., d): mean SSR of observations and, with a
        ``truth`` field, mean NSSWR, mean SSR of parameters and the relative L2 error of the
        posterior mean field."""
        z = _as_tensor("draws", draws).reshape(-1, self.dim)
        ssr_obs, nsswr, ssr_par = [], [], []
        for i in range(0, z.shape[0], batch):
            zb = z[i:i + batch]
            ssr_obs.append(self.ssr_obs(zb))
            if truth is not None:
                nsswr.append(self.nsswr(zb, truth))
                ssr_par.append(self.ssr_params(zb, truth))
        out: dict[str, Any] = {"draws": int(z.shape[0]),
                               "ssr_obs": float(torch.cat(ssr_obs).mean())}
        if truth is not None:
            mean, _ = self.posterior_fields(z, batch)
            out.update(nsswr=float(torch.cat(nsswr).mean()),
                       ssr_params=float(torch.cat(ssr_par).mean()),
                       rel_l2_mean=self.relative_l2(mean, self._truth(truth)[0]))
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                for k, v in out.items()}
