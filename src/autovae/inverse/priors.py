"""Priors of an inverse problem: a density on the sampled coordinates z and the map z -> the
forward model's parameters.

* :class:`DecoderPrior` -- a trained run: its decoder (a VAE's likelihood mean, a GAN's
  generator) and its latent prior; every model with a decoder or generator and a latent
  prior can serve.
* :class:`~autovae.inverse.grf.KarhunenLoeve` -- the truncated Karhunen-Loeve expansion of a GRF
  (``kle``), N(0, I) coefficients.
* :class:`LogDensityPrior` -- an explicit prior on positive parameters theta, sampled in
  z = ln theta with the Jacobian added (the Aristoff-Bangerth benchmark's).
* :class:`ResidualFieldPrior` -- a decoder prior plus a Gaussian residual field carrying the
  covariance that the decoder's draws miss (calibrated uncertainty from a VAE prior).
* :class:`ExpPrior` -- a prior on log-parameters (a decoder trained on ln theta, with or
  without a residual) mapped to positive parameters theta = exp(.).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["DecoderPrior", "ExpPrior", "LogDensityPrior", "Prior", "ResidualFieldPrior"]


class Prior(abc.ABC):
    """z (B, dim) -> parameters (B, *param_shape), with a log density on z.

    ``normal``: the density on z is N(0, I) (what pCN needs); else :meth:`log_prior` gives it.
    """

    dim: int
    param_shape: tuple[int, ...]
    normal = True

    @abc.abstractmethod
    def params(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> (B, *param_shape), float64."""

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of z up to a constant, (B, dim) -> (B,)."""
        return -0.5 * (z * z).sum(-1)

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Settings that identify the prior (problem.json)."""

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n draws of z from the prior, (n, dim) float64 (N(0, I) unless overridden)."""
        if not self.normal:
            raise ValueError(f"{type(self).__name__} cannot draw from its prior")
        return torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)

    def probe(self) -> list[list[float]]:
        """16 values of the parameters at three fixed codes: a chain's draws mean these."""
        z = torch.randn(3, self.dim, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
        with torch.no_grad():
            p = self.params(z).reshape(3, -1).double()
        return p[:, :: max(1, p.shape[1] // 16)][:, :16].tolist()


class DecoderPrior(Prior):
    """A trained model as a prior: z ~ its latent prior, parameters = its decoder's output.

    A float64 frozen copy of the model (the original is untouched); a VAE's ``latent_clip``
    applies. One-channel outputs (1, n, n) become fields (n, n).
    """

    def __init__(self, model, description: str = ""):
        if not getattr(model, "can_be_prior", False):
            raise ValueError(f"a {type(model).__name__} has no decoder or generator with a "
                             "latent prior; it cannot serve as a prior")
        self.model = copy.deepcopy(model).double().eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        latent = self.model.latent
        self.dim = int(latent.dim)
        with torch.no_grad():
            shape = tuple(self._decode(torch.zeros(1, self.dim, dtype=torch.float64)).shape[1:])
        self.param_shape = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
        self.normal = all(b.prior == "normal" for b in latent.blocks) and all(
            bool((loc == 0).all() and (scale == 1).all())
            for loc, scale in (latent.prior_params(i) for i in range(len(latent.blocks))))
        self.description = description or str(latent)

    @classmethod
    def from_run(cls, folder, device: str | None = "cpu") -> DecoderPrior:
        from ..run import load_trained

        _, config, model, _ = load_trained(Path(folder), device or "cpu")
        prior = cls(model.cpu(), f"{config.model} {model.latent}")
        prior.config = config
        return prior

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.generate_from(z).double()  # the Generating protocol (can_be_prior)

    def params(self, z: torch.Tensor) -> torch.Tensor:
        out = self._decode(z.to(torch.float64))
        return out.reshape(out.shape[0], *self.param_shape)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        if self.normal:
            return super().log_prior(z)
        return self.model.latent.log_p(z.to(torch.float64))

    def describe(self) -> dict[str, Any]:
        return {"prior": "run", "prior_description": self.description, "dim": self.dim}

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        if self.normal:
            return super().sample(n, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model.latent.sample_prior(n).to(torch.float64)


class LogDensityPrior(Prior):
    """A prior density on positive parameters theta (w.r.t. d theta), sampled in z = ln theta.

    ``log_density(theta)`` (B, *shape) -> (B,); the density of z is then
    log_density(e^z) + sum z (the Jacobian of theta = e^z), so a sampler in z targets the same
    posterior in theta.
    """

    normal = False

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor],
                 param_shape: tuple[int, ...], name: str):
        self._log_density = log_density
        self.param_shape = tuple(param_shape)
        self.dim = int(torch.tensor(self.param_shape).prod())
        self.name = name

    def params(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(torch.float64).exp().reshape(z.shape[0], *self.param_shape)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log_density(e^z) + sum z; -inf where e^z overflows or underflows (a sampler's wild
        proposal: it is then rejected, as where the forward model fails)."""
        theta = self.params(z)
        flat = theta.detach().reshape(len(theta), -1)
        ok = ((flat > 0) & (flat < math.inf)).all(1)  # NaN fails both
        if bool(ok.all()):
            return self._log_density(theta) + z.sum(-1)
        # -inf, still a function of z (autograd takes the gradient of the other rows)
        out = torch.full((len(z),), -math.inf, dtype=torch.float64) + 0.0 * z.sum(-1)
        if ok.any():
            out = out.index_put((ok.nonzero().flatten(),),
                                (self._log_density(theta[ok]) + z[ok].sum(-1)).to(out.dtype))
        return out

    def describe(self) -> dict[str, Any]:
        return {"prior": self.name, "dim": self.dim}


class ResidualFieldPrior(Prior):
    """A base prior plus a Gaussian residual: u = T(z) + sum_k sqrt(mu_k) psi_k r_k, with
    (z, r) ~ p(z) x N(0, I_terms), sampled jointly (dim = base dim + terms).

    The residual carries what the base prior's draws miss of a target covariance C (the
    covariance of the data the base was trained on, e.g. the GRF's): (mu_k, psi_k) are the
    top ``terms`` eigenpairs of C - Cov(T(z)) (negative ones dropped), Cov(T(z)) from
    ``draws`` prior draws. The prior's marginal covariance is then close to C, so fields off
    the decoder's manifold keep prior mass. ``variance_ratio``: trace of the new covariance
    over trace C (1 is matched); ``base_variance_ratio`` the base prior's alone.
    """

    def __init__(self, base: Prior, target_cov, terms: int = 32, draws: int = 20000,
                 seed: int = 0):
        shape = tuple(base.param_shape)
        size = int(torch.tensor(shape).prod())
        C = torch.as_tensor(target_cov, dtype=torch.float64)
        if C.shape != (size, size):
            raise ValueError(f"target_cov must be ({size}, {size}) for parameters of shape "
                             f"{shape}, got {tuple(C.shape)}")
        if isinstance(terms, bool) or not isinstance(terms, int) or not 1 <= terms <= size:
            raise ValueError(f"residual terms must be an integer in [1, {size}], got {terms!r}")
        z = base.sample(draws, seed)
        with torch.no_grad():
            u = torch.cat([base.params(z[i:i + 4096]).reshape(-1, size)
                           for i in range(0, draws, 4096)])
        cov_base = torch.cov(u.T)
        lam, vec = torch.linalg.eigh(C - cov_base)
        lam, vec = lam.flip(0)[:terms].clamp(min=0), vec.flip(1)[:, :terms]
        self.base, self.terms = base, terms
        self.param_shape, self.dim, self.normal = shape, base.dim + terms, base.normal
        self._basis = (vec * lam.sqrt()).T.contiguous()  # (terms, size)
        trace = float(C.diagonal().sum())
        self.base_variance_ratio = float(cov_base.diagonal().sum()) / trace
        self.variance_ratio = self.base_variance_ratio + float(lam.sum()) / trace
        self.mean_abs = float(u.mean(0).abs().mean())

    def params(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(torch.float64)
        d = self.base.dim
        u = self.base.params(z[:, :d]).reshape(z.shape[0], -1) + z[:, d:] @ self._basis
        return u.reshape(z.shape[0], *self.param_shape)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        d = self.base.dim
        r = z[:, d:]
        return self.base.log_prior(z[:, :d]) - 0.5 * (r * r).sum(-1)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        r = torch.randn(n, self.terms, generator=torch.Generator().manual_seed(seed + 1),
                        dtype=torch.float64)
        return torch.cat([self.base.sample(n, seed), r], 1)

    def describe(self) -> dict[str, Any]:
        base = self.base.describe()
        return {**base, "prior": f"{base['prior']}+residual", "dim": self.dim,
                "residual_terms": self.terms, "variance_ratio": self.variance_ratio,
                "base_variance_ratio": self.base_variance_ratio}


class ExpPrior(Prior):
    """Positive parameters theta = exp(base.params(z)): a prior built on log-parameters (a
    decoder trained on ln theta, plus a residual field there) for a forward model that takes
    theta itself. Same coordinates, density and draws as ``base``; no Jacobian enters, because
    the density is on z, not on theta."""

    def __init__(self, base: Prior):
        self.base = base
        self.dim, self.param_shape, self.normal = base.dim, tuple(base.param_shape), base.normal

    def log_params(self, z: torch.Tensor) -> torch.Tensor:
        """ln theta = base.params(z), (B, dim) -> (B, *param_shape)."""
        return self.base.params(z)

    def params(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.params(z).to(torch.float64).exp()

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.log_prior(z)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.base.sample(n, seed)

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "transform": "exp"}
