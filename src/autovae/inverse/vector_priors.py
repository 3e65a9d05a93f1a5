"""Priors on a parameter vector (any ``param_shape``), from numbers or files.

* :class:`GaussianPrior` -- theta = mean + L z, z ~ N(0, I): L = diag(sd) or the Cholesky
  factor of a covariance. The density on z is N(0, I), so pCN applies.
* :class:`LogNormalPrior` -- theta = exp(mean + L z): ln theta Gaussian (positive
  coefficients; the Aristoff-Bangerth prior is ln theta_k ~ N(4, 2^2)). pCN applies too.
* :class:`UniformPrior` -- theta_k uniform on (low_k, high_k), sampled in z = logit((theta -
  low) / (high - low)): the density of z is the logit map's Jacobian,
  sum log s(z) + log s(-z) (s the logistic function), so a sampler in z targets the uniform
  prior in theta exactly.

:func:`vector_prior` builds one from ``--prior gaussian|lognormal|uniform`` and its values:
a number (the same for every parameter), a list (or comma-separated text), or a file of
numbers (whitespace, comma or newline separated; ``.npy`` too), each of the parameters' size
(a covariance: size x size).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .priors import Prior

__all__ = ["VECTOR_PRIORS", "GaussianPrior", "LogNormalPrior", "UniformPrior", "read_values",
           "vector_prior"]


def read_values(name: str, value, size: int, matrix: bool = False) -> np.ndarray:
    """``value`` (a number, a sequence, or a path to a file of numbers) as ``size`` float64
    values (or a (size, size) matrix with ``matrix``), or a ValueError naming ``name``."""
    source = ""
    if isinstance(value, str) and "," in value and all(_is_number(v) for v in value.split(",")):
        value = [float(v) for v in value.split(",")]
    if isinstance(value, (str, Path)) and not _is_number(value):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"{name}: no file {path}; give a number or a file of numbers")
        try:
            arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(
                path, dtype=np.float64, delimiter="," if path.suffix == ".csv" else None,
                ndmin=1)
        except (ValueError, OSError) as err:
            raise ValueError(f"{name}: {path} does not hold numbers ({err})") from None
        source = f" (file {path})"
    else:
        try:
            arr = np.asarray(float(value) if isinstance(value, str) else value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, a list of numbers or a file, got "
                             f"{value!r}") from None
    arr = np.asarray(arr, dtype=np.float64)
    if matrix:
        if arr.size != size * size:
            raise ValueError(f"{name}{source} holds {arr.size} values; a covariance of {size} "
                             f"parameters needs {size} x {size} = {size * size}")
        arr = arr.reshape(size, size)
    elif arr.ndim == 0:
        arr = np.full(size, float(arr))
    else:
        arr = arr.reshape(-1)
        if arr.size != size:
            raise ValueError(f"{name}{source} holds {arr.size} values; the forward model takes "
                             f"{size} parameters: give one number or {size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}{source} holds NaN or infinite values; give finite numbers")
    return arr


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _factor(size: int, sd=None, cov=None) -> tuple[np.ndarray, str]:
    """The factor L (size, size) of the covariance, and how it was given."""
    if sd is not None and cov is not None:
        raise ValueError("give the prior's sd or its covariance (--prior-cov), not both")
    if cov is not None:
        C = read_values("--prior-cov", cov, size, matrix=True)
        if not np.allclose(C, C.T, rtol=1e-10, atol=1e-12 * np.abs(C).max()):
            raise ValueError("--prior-cov is not symmetric; give a symmetric positive-definite "
                             "covariance")
        try:
            return np.linalg.cholesky(0.5 * (C + C.T)), "covariance"
        except np.linalg.LinAlgError:
            low = float(np.linalg.eigvalsh(0.5 * (C + C.T)).min())
            raise ValueError(f"--prior-cov is not positive definite (smallest eigenvalue "
                             f"{low:.3g}); give a positive-definite covariance") from None
    s = read_values("--prior-sd", 1.0 if sd is None else sd, size)
    if (s <= 0).any():
        raise ValueError(f"--prior-sd must be > 0 for every parameter; the smallest given is "
                         f"{float(s.min()):g}")
    return np.diag(s), "sd"


class GaussianPrior(Prior):
    """theta = mean + L z, z ~ N(0, I) (``sd``: L = diag(sd); ``cov``: its Cholesky factor)."""

    name = "gaussian"

    def __init__(self, param_shape, mean=0.0, sd=None, cov=None):
        self.param_shape = tuple(int(s) for s in param_shape)
        self.dim = int(np.prod(self.param_shape))
        self.mean = torch.as_tensor(read_values("--prior-mean", mean, self.dim))
        L, self.given = _factor(self.dim, sd, cov)
        self.L = torch.as_tensor(L)
        self.diagonal = self.given == "sd"

    def affine(self, z: torch.Tensor) -> torch.Tensor:
        """mean + L z, (B, dim) -> (B, dim)."""
        z = z.to(torch.float64)
        lz = z * self.L.diagonal() if self.diagonal else z @ self.L.T
        return self.mean + lz

    def params(self, z: torch.Tensor) -> torch.Tensor:
        return self.affine(z).reshape(z.shape[0], *self.param_shape)

    def describe(self) -> dict[str, Any]:
        sd = self.L.diagonal() if self.diagonal else (self.L ** 2).sum(1).sqrt()
        return {"prior": self.name, "dim": self.dim, "prior_given": self.given,
                "prior_mean_mean": float(self.mean.mean()), "prior_sd_mean": float(sd.mean())}


class LogNormalPrior(GaussianPrior):
    """theta = exp(mean + L z): ln theta ~ N(mean, L L^T); z ~ N(0, I), so pCN applies."""

    name = "lognormal"

    def log_params(self, z: torch.Tensor) -> torch.Tensor:
        """ln theta, (B, dim) -> (B, *param_shape)."""
        return super().params(z)

    def params(self, z: torch.Tensor) -> torch.Tensor:
        return super().params(z).exp()


class UniformPrior(Prior):
    """theta_k ~ U(low_k, high_k) independently, sampled in z = logit((theta - low) /
    (high - low)); the density of z is sum log s(z) + log s(-z) (the Jacobian)."""

    name = "uniform"
    normal = False

    def __init__(self, param_shape, low, high):
        self.param_shape = tuple(int(s) for s in param_shape)
        self.dim = int(np.prod(self.param_shape))
        lo = read_values("--prior-low", low, self.dim)
        hi = read_values("--prior-high", high, self.dim)
        bad = np.nonzero(hi <= lo)[0]
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"uniform prior bounds reversed or empty at parameter {k}: low "
                             f"{lo[k]:g} >= high {hi[k]:g} ({bad.size} such); give low < high")
        self.low, self.high = torch.as_tensor(lo), torch.as_tensor(hi)

    def params(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.sigmoid(z.to(torch.float64))
        return (self.low + (self.high - self.low) * u).reshape(z.shape[0], *self.param_shape)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(torch.float64)
        return (F.logsigmoid(z) + F.logsigmoid(-z)).sum(-1)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        u = torch.rand(n, self.dim, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        return torch.log(u) - torch.log1p(-u)

    def describe(self) -> dict[str, Any]:
        return {"prior": self.name, "dim": self.dim, "prior_low_min": float(self.low.min()),
                "prior_high_max": float(self.high.max())}


VECTOR_PRIORS = {"gaussian": GaussianPrior, "lognormal": LogNormalPrior, "uniform": UniformPrior}


def vector_prior(kind: str, param_shape, mean=None, sd=None, cov=None, low=None,
                 high=None) -> Prior:
    """``--prior gaussian|lognormal`` (mean, and sd or cov; default N(0, 1) per parameter,
    of ln theta for lognormal) or ``--prior uniform`` (low and high, both required) for
    parameters of ``param_shape``."""
    if kind not in VECTOR_PRIORS:
        raise ValueError(f"unknown vector prior {kind!r}; choose one of "
                         f"{', '.join(VECTOR_PRIORS)}")
    if kind == "uniform":
        if low is None or high is None:
            raise ValueError("--prior uniform needs its bounds: --prior-low and --prior-high "
                             "(numbers or files)")
        for name, v in (("--prior-low", low), ("--prior-high", high)):
            if _is_number(v) and not math.isfinite(float(v)):
                raise ValueError(f"{name} must be finite for --prior uniform, got {v!r}; a "
                                 "uniform prior needs finite bounds")
        if mean is not None or sd is not None or cov is not None:
            raise ValueError("--prior uniform takes --prior-low/--prior-high, not a mean, sd "
                             "or covariance")
        return UniformPrior(param_shape, low, high)
    if low is not None or high is not None:
        raise ValueError(f"--prior {kind} takes --prior-mean and --prior-sd (or --prior-cov), "
                         "not bounds")
    return VECTOR_PRIORS[kind](param_shape, 0.0 if mean is None else mean, sd, cov)
