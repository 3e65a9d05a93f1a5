"""Targets with exact answers, to check samplers against.

Ports from the published definitions (not the code) of

* the UM-Bridge benchmark library's analytic posteriors (``um-banana``, ``um-donut``,
  ``um-funnel``, ``um-mixture``) -- each reproduces the upstream test values
  (``benchmarks/analytic-*/test_output.py``) to 1e-10, see :data:`UPSTREAM`;
* its linear-Gaussian problems ``heat-1d`` (CUQIpy heat equation, 20 Karhunen-Loeve
  coefficients; the KL map reproduces upstream's norm 0.44245082047274725 at
  ``np.random.seed(0); np.random.rand(20)``) and ``deconvolution-1d`` (CUQIpy's periodic
  Gaussian blur, 128 unknowns, Gaussian prior of variance delta = 0.01). Upstream's data
  files are not published beside the definitions, so our data are synthetic (a seeded truth
  and noise, same operators and noise levels): the posterior is then exact by linear
  algebra, but upstream's log-density values at its data cannot be reproduced;
* Inference Gym's ``banana`` (2-D, curvature 0.03) and the 10-D standard Gaussian
  (``gaussian-10``), the targets of the sampler efficiency protocol (gradient evaluations
  until the second moments' squared bias b^2 < 0.01, :func:`second_moment_bias`): the
  published NUTS and MCLMC costs (sampler-benchmarks README, January 2025) were measured on
  its ``Gaussian(ndims=10)``, whose covariance is the identity; plus an ill-conditioned 10-D
  Gaussian (``icg-10``, the later ``Gaussian(ndims=10, condition_number=100)``, eigenvalues
  linear in [0.01, 1]), a harder instance with no published cost beside it.

Every target is an :class:`ExactTarget`: its log density on z (C, d), the exact mean, sd,
E[z^2] and Var[z^2], and a :class:`~autovae.inverse.kernels.Target` for the runner built in the
user's form ``Target(phi, dim, prior=log_prior)``. A linear-Gaussian problem
(:class:`LinearGaussian`) samples whitened coordinates with a N(0, I) prior, so pCN applies,
and gives its forward model and prior for SBC; the analytic densities have no Gaussian prior
(pCN refuses them) and ``gradient=False`` targets refuse gradient kernels, as upstream declares
(the banana server offers no gradient; the heat-1d server offers none either, but our port is
linear algebra, differentiable, and its posterior -- condition number about 4e6 in the
large-noise case -- is one for a preconditioned gradient kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import integrate

from .forward import ForwardModel
from .kernels import Target
from .priors import Prior

__all__ = ["TARGETS", "UPSTREAM", "ExactTarget", "LinearGaussian", "MatrixForward",
           "deconvolution_1d", "gym_banana", "heat_1d", "heat_kl_map", "ill_conditioned_gaussian",
           "protocol_bias", "protocol_crossing", "standard_gaussian", "um_banana", "um_donut",
           "um_funnel", "um_mixture", "StandardNormalPrior", "make_target", "second_moment_bias"]

_LOG_2PI = math.log(2 * math.pi)


def _zero_prior(z: torch.Tensor) -> torch.Tensor:
    return torch.zeros(z.shape[0], dtype=z.dtype)


class ExactTarget:
    """A density on z (C, dim) with known moments.

    ``log_density(z)``: (C, d) -> (C,), up to a constant. ``mean``, ``sd``, ``second_moment``
    (E[z^2]) and ``second_moment_var`` (Var[z^2]) are (d,) arrays. ``gradient``: whether the
    target offers gradients (upstream's declaration). ``gaussian_prior``: a N(0, I) prior
    factor exists (pCN applies).
    """

    gaussian_prior = False

    def __init__(self, name: str, dim: int, log_density: Callable[[torch.Tensor], torch.Tensor],
                 mean, sd, second_moment=None, second_moment_var=None, gradient: bool = True,
                 sampler: Callable[[int, np.random.Generator], np.ndarray] | None = None):
        self.name, self.dim = name, int(dim)
        self._log_density = log_density
        self.mean = np.asarray(mean, dtype=np.float64)
        self.sd = np.asarray(sd, dtype=np.float64)
        self.second_moment = (self.sd ** 2 + self.mean ** 2 if second_moment is None
                              else np.asarray(second_moment, dtype=np.float64))
        self.second_moment_var = (None if second_moment_var is None
                                  else np.asarray(second_moment_var, dtype=np.float64))
        self.gradient = bool(gradient)
        self._sampler = sampler

    def __repr__(self) -> str:
        return f"ExactTarget({self.name!r}, dim={self.dim})"

    def log_density(self, z) -> torch.Tensor:
        """Log density (up to a constant), (C, d) -> (C,) float64."""
        z = torch.as_tensor(z, dtype=torch.float64)
        return self._log_density(z.reshape(-1, self.dim))

    def target(self, gradient: bool | None = None) -> Target:
        """The sampler's target, ``Target(phi, dim, prior=log_prior)`` (phi = -log density,
        a flat prior); ``gradient=False`` declares it gradient-free."""
        grad = self.gradient if gradient is None else gradient
        return Target(lambda z: -self._log_density(z), self.dim, prior=_zero_prior,
                      gradient=grad, gradient_reason=f"the target {self.name} offers no "
                      "gradient (as upstream declares)")

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n exact draws (n, d)."""
        if self._sampler is None:
            raise ValueError(f"the target {self.name} has no exact sampler")
        return self._sampler(n, np.random.default_rng(seed))


# -- UM-Bridge analytic benchmarks --------------------------------------------------------------
def um_banana(a: float = 2.0, b: float = 0.2, scale: float = 1.0) -> ExactTarget:
    """UM-Bridge ``analytic-banana``: log pi(x) = log f_Z(T(x)), Z ~ N((0, 4), scale [[1, .5],
    [.5, 1]]), T(x) = (x1 / a, a x2 + a b (x1^2 + a^2)). det T' = 1, so pi is normalised and
    x = T^-1(Z): x1 = a z1, x2 = z2 / a - b (x1^2 + a^2), whence the exact moments."""
    cov = scale * np.array([[1.0, 0.5], [0.5, 1.0]])
    prec = torch.as_tensor(np.linalg.inv(cov))
    log_norm = -_LOG_2PI - 0.5 * math.log(np.linalg.det(cov))
    mu = torch.tensor([0.0, 4.0], dtype=torch.float64)

    def log_density(x):
        t = torch.stack([x[:, 0] / a, a * x[:, 1] + a * b * (x[:, 0] ** 2 + a * a)], 1) - mu
        return log_norm - 0.5 * ((t @ prec) * t).sum(-1)

    var1 = a * a * scale
    mean = [0.0, 4.0 / a - b * (var1 + a * a)]
    sd = [math.sqrt(var1), math.sqrt(scale / a ** 2 + 2 * b * b * var1 ** 2)]

    def sampler(n, rng):
        zz = rng.multivariate_normal([0.0, 4.0], cov, size=n)
        x1 = a * zz[:, 0]
        return np.stack([x1, zz[:, 1] / a - b * (x1 ** 2 + a * a)], 1)

    return ExactTarget("um-banana", 2, log_density, mean, sd, gradient=False, sampler=sampler)


def um_donut(radius: float = 2.6, sigma2: float = 0.033) -> ExactTarget:
    """UM-Bridge ``analytic-donut``: log pi(x) = -(|x| - r)^2 / sigma^2 (r = 2.6, sigma^2 =
    0.033, unnormalised). Uniform in angle, so the means are 0 and E[x_i^2] = E[r^2] / 2, with
    the radial density proportional to r exp(-(r - 2.6)^2 / 0.033) (integrated numerically)."""

    def log_density(x):
        return -((torch.linalg.vector_norm(x, dim=-1) - radius) ** 2) / sigma2

    def w(r):
        return r * math.exp(-((r - radius) ** 2) / sigma2)

    hi = radius + 40 * math.sqrt(sigma2)
    z0 = integrate.quad(w, 0, hi, epsabs=0, epsrel=1e-13, points=[radius])[0]
    r2 = integrate.quad(lambda r: r * r * w(r), 0, hi, epsabs=0, epsrel=1e-13,
                        points=[radius])[0] / z0
    r4 = integrate.quad(lambda r: r ** 4 * w(r), 0, hi, epsabs=0, epsrel=1e-13,
                        points=[radius])[0] / z0
    # x1^2 = r^2 cos^2: E = E[r^2] / 2, E[x1^4] = 3/8 E[r^4]
    var_sq = 3 / 8 * r4 - (r2 / 2) ** 2
    return ExactTarget("um-donut", 2, log_density, [0.0, 0.0], [math.sqrt(r2 / 2)] * 2,
                       second_moment_var=[var_sq, var_sq])


def um_funnel() -> ExactTarget:
    """UM-Bridge ``analytic-funnel``: log N(x1; 0, 3^2) + log N(x2; 0, exp(x1 / 2)^2), so
    x1 ~ N(0, 9) and Var x2 = E[e^x1] = e^4.5."""

    def log_normal(x, s_log):
        return -0.5 * _LOG_2PI - s_log - 0.5 * (x * torch.exp(-s_log)) ** 2

    def log_density(x):
        return log_normal(x[:, 0], torch.full_like(x[:, 0], math.log(3.0))) + \
            log_normal(x[:, 1], 0.5 * x[:, 0])

    def sampler(n, rng):
        x1 = 3 * rng.standard_normal(n)
        return np.stack([x1, np.exp(x1 / 2) * rng.standard_normal(n)], 1)

    return ExactTarget("um-funnel", 2, log_density, [0.0, 0.0], [3.0, math.exp(2.25)],
                       sampler=sampler)


def um_mixture() -> ExactTarget:
    """UM-Bridge ``analytic-gaussian-mixture``: pi = sum of three normal pdfs (means (-1.5,
    -1.5), (1.5, 1.5), (-2, 2), covariances 0.8 I, 0.8 I, 0.5 I), its log by logsumexp (finite
    and exact far from the modes, where the sum of pdfs underflows)."""
    means = torch.tensor([[-1.5, -1.5], [1.5, 1.5], [-2.0, 2.0]], dtype=torch.float64)
    var = torch.tensor([0.8, 0.8, 0.5], dtype=torch.float64)

    def log_density(x):
        d2 = ((x[:, None, :] - means) ** 2).sum(-1)  # (C, 3)
        return torch.logsumexp(-_LOG_2PI - torch.log(var) - 0.5 * d2 / var, dim=1)

    m, v = means.numpy(), var.numpy()
    mean = m.mean(0)
    second = (v[:, None] + m ** 2).mean(0)
    fourth = (3 * v[:, None] ** 2 + 6 * v[:, None] * m ** 2 + m ** 4).mean(0)

    def sampler(n, rng):
        k = rng.integers(0, 3, n)
        return m[k] + np.sqrt(v[k])[:, None] * rng.standard_normal((n, 2))

    return ExactTarget("um-mixture", 2, log_density, mean, np.sqrt(second - mean ** 2),
                       second_moment=second, second_moment_var=fourth - second ** 2,
                       sampler=sampler)


# -- Inference Gym protocol targets -------------------------------------------------------------
def gym_banana(curvature: float = 0.03) -> ExactTarget:
    """Inference Gym's ``Banana`` (2-D): x0 ~ N(0, 10^2), x1 | x0 ~ N(c (x0^2 - 100), 1),
    c = 0.03. E[x^2] = (100, 1 + 2e4 c^2) and Var[x^2] in closed form (x1 = 100 c (g^2 - 1)
    + e with g, e ~ N(0, 1): the central fourth moment of chi^2_1 is 60)."""

    def log_density(x):
        return -0.5 * (x[:, 0] / 10) ** 2 - 0.5 * (x[:, 1] - curvature * (x[:, 0] ** 2 - 100)) ** 2

    k = 100 * curvature
    second = np.array([100.0, 1 + 2 * k * k])
    fourth = np.array([3e4, 60 * k ** 4 + 6 * 2 * k * k + 3])

    def sampler(n, rng):
        x0 = 10 * rng.standard_normal(n)
        return np.stack([x0, curvature * (x0 ** 2 - 100) + rng.standard_normal(n)], 1)

    return ExactTarget("banana", 2, log_density, [0.0, 0.0], np.sqrt(second),
                       second_moment=second, second_moment_var=fourth - second ** 2,
                       sampler=sampler)


def ill_conditioned_gaussian(dim: int = 10, condition_number: float = 100.0,
                             rotate_seed: int | None = None) -> ExactTarget:
    """A zero-mean Gaussian with eigenvalues linear from 1 / ``condition_number`` to 1: the
    sampler-comparison benchmarks' ``Gaussian(ndims=10, condition_number=100)`` (unrotated,
    diagonal). ``rotate_seed``: rotate by the Q factor of a standard normal matrix from
    ``numpy.random.RandomState(rotate_seed)``. Var[x_i^2] = 2 (E[x_i^2])^2."""
    lam = np.linspace(1.0 / condition_number, 1.0, dim)
    R = np.eye(dim) if rotate_seed is None else \
        np.linalg.qr(np.random.RandomState(rotate_seed).randn(dim, dim))[0]
    cov = R @ np.diag(lam) @ R.T
    prec = torch.as_tensor(R @ np.diag(1 / lam) @ R.T)
    second = np.diag(cov).copy()
    chol = np.linalg.cholesky(cov)

    def log_density(x):
        return -0.5 * ((x @ prec) * x).sum(-1)

    t = ExactTarget(f"icg-{dim}", dim, log_density, np.zeros(dim), np.sqrt(second),
                    second_moment=second, second_moment_var=2 * second ** 2,
                    sampler=lambda n, g: g.standard_normal((n, dim)) @ chol.T)
    t.covariance = cov
    t.condition_number = float(lam.max() / lam.min())
    return t


def standard_gaussian(dim: int = 10) -> ExactTarget:
    """N(0, I) in ``dim`` dimensions: the protocol's ``Gaussian(ndims=10)``."""
    t = ill_conditioned_gaussian(dim, condition_number=1.0)
    t.name = f"gaussian-{dim}"
    return t


# -- linear-Gaussian problems -------------------------------------------------------------------
class StandardNormalPrior(Prior):
    """z ~ N(0, I_dim), parameters = z (the whitened coordinates of a linear problem)."""

    def __init__(self, dim: int):
        self.dim, self.param_shape = int(dim), (int(dim),)

    def params(self, z):
        return z.to(torch.float64)

    def describe(self) -> dict[str, Any]:
        return {"prior": "standard-normal", "dim": self.dim}


class MatrixForward(ForwardModel):
    """A linear forward model y = G p, G (P, d): one 'solve' per parameter set."""

    def __init__(self, G, name: str = "linear"):
        super().__init__()
        self.G = torch.as_tensor(np.asarray(G, dtype=np.float64))
        self.name = name
        self.n_obs, d = self.G.shape
        self.param_shape = (d,)

    def evaluate(self, params):
        return params @ self.G.T


class LinearGaussian(ExactTarget):
    """y = G z + e, e ~ N(0, sigma^2 I), z ~ N(0, I): the posterior is N(m, S) with
    S = (I + G^T G / sigma^2)^-1 and m = S G^T y / sigma^2 (exact, by Cholesky)."""

    gaussian_prior = True

    def __init__(self, name: str, G, data, sigma: float, truth=None, params=None,
                 gradient: bool = True):
        G = np.asarray(G, dtype=np.float64)
        y = np.asarray(data, dtype=np.float64)
        d = G.shape[1]
        H = np.eye(d) + G.T @ G / sigma ** 2
        cov = np.linalg.inv(H)
        cov = 0.5 * (cov + cov.T)
        mean = cov @ (G.T @ y) / sigma ** 2
        self.G, self.data, self.sigma, self.truth = G, y, float(sigma), truth
        self.covariance, self.params_map = cov, params
        self.forward = MatrixForward(G, name)
        self.prior = StandardNormalPrior(d)
        Gt, yt = torch.as_tensor(G), torch.as_tensor(y)

        def residuals(z):
            return (z @ Gt.T - yt) / sigma

        self._residuals = residuals
        chol = np.linalg.cholesky(cov)
        sd = np.sqrt(np.diag(cov))
        super().__init__(name, d, lambda z: -0.5 * (residuals(z) ** 2).sum(-1)
                         - 0.5 * (z * z).sum(-1), mean, sd,
                         second_moment_var=2 * sd ** 4 + 4 * sd ** 2 * mean ** 2,
                         gradient=gradient,
                         sampler=lambda n, g: mean + g.standard_normal((n, d)) @ chol.T)

    def target(self, gradient: bool | None = None) -> Target:
        """``Target(phi, dim, prior="normal")`` with phi = |G z - y|^2 / (2 sigma^2), so pCN
        applies; the target knows its residuals (Gauss-Newton preconditioning)."""
        grad = self.gradient if gradient is None else gradient

        def phi(z):
            return 0.5 * (self._residuals(z) ** 2).sum(-1)

        return Target(phi, self.dim, prior="normal", gradient=grad,
                      gradient_reason=f"the target {self.name} offers no gradient (as "
                      "upstream declares)", residuals=self._residuals)


def heat_kl_map(n: int = 100, modes: int = 20, decay: float = 1.5,
                normalizer: float = 10.0) -> np.ndarray:
    """The heat-1d KL map (n, modes): g_k = sum_i x_i i^-decay / normalizer
    sin(pi (2k + 1) i / (2n)), k = 0..n-1 (a type-II inverse DST of the scaled modes, halved)."""
    k = np.arange(n)[:, None]
    i = np.arange(1, modes + 1)[None, :]
    return np.sin(np.pi * (2 * k + 1) * i / (2 * n)) * i ** -decay / normalizer


def heat_1d(case: str = "large-noise", seed: int = 0) -> LinearGaussian:
    """UM-Bridge ``heat-1d`` (CUQIpy): u_t = u_xx on (0, 1), u = 0 at both ends, u(., 0) = g,
    n = 100 nodes (dx = 1/101), forward Euler to T = 0.01 (225 time levels: dt about 5/11 dx^2),
    g = the KL map of 20 N(0, 1) coefficients (decay 1.5, normalizer 10). ``large-noise``: data
    on the left half, sigma = 5% of |y_exact| / sqrt(100); ``small-noise``: everywhere, 0.1%.
    Our truth: coefficients drawn from the prior (``seed``), and seeded noise."""
    if case not in ("large-noise", "small-noise"):
        raise ValueError(f"heat-1d case must be large-noise or small-noise, got {case!r}")
    n, T = 100, 0.01
    dx = 1.0 / (n + 1)
    steps = int(T / (5 / 11 * dx * dx)) + 1
    dt = T / (steps - 1)
    lap = (np.diag(-2 * np.ones(n)) + np.diag(np.ones(n - 1), 1)
           + np.diag(np.ones(n - 1), -1)) / dx ** 2
    step = np.linalg.matrix_power(np.eye(n) + dt * lap, steps - 1)
    obs = np.arange(n) if case == "small-noise" else np.arange(n // 2)
    kl = heat_kl_map(n)
    G = step[obs] @ kl
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(20)
    y_exact = G @ truth
    level = 0.05 if case == "large-noise" else 0.001
    sigma = level * np.linalg.norm(y_exact) / math.sqrt(n)
    data = y_exact + sigma * rng.standard_normal(len(obs))
    return LinearGaussian(f"heat-1d-{case}", G, data, sigma, truth=truth, params=kl)


def deconvolution_1d(dim: int = 128, delta: float = 0.01, noise: float = 0.01,
                     psf_sd: float = 5.0, seed: int = 0, truth: str = "square"
                     ) -> LinearGaussian:
    """UM-Bridge ``deconvolution-1d`` with its Gaussian prior (CUQIpy Deconvolution1D): x ~
    N(0, delta I), b = A x + N(0, noise^2 I), A the periodic convolution with a Gaussian PSF
    of sd ``psf_sd`` (``dim`` points at -dim/2..dim/2 - 1, normalised to sum 1). Sampled in
    whitened z = x / sqrt(delta). Our truth: ``"square"``, a pulse of height 1 on the middle
    quarter (10 prior sds: the data pull the posterior far from the prior), or ``"prior"``, a
    prior draw; seeded noise."""
    if truth not in ("square", "prior"):
        raise ValueError(f"deconvolution-1d truth must be square or prior, got {truth!r}")
    t = np.arange(-(dim // 2), dim - dim // 2, dtype=np.float64)
    psf = np.exp(-0.5 * (t / psf_sd) ** 2)
    psf /= psf.sum()
    centre = dim // 2
    A = np.zeros((dim, dim))
    for i in range(dim):  # (A x)_i = sum_j psf[centre + j - i] x_j (periodic)
        for k in range(dim):
            A[i, (i + k - centre) % dim] += psf[k]
    rng = np.random.default_rng(seed)
    if truth == "square":
        x_true = np.zeros(dim)
        x_true[3 * dim // 8: 5 * dim // 8] = 1.0
    else:
        x_true = math.sqrt(delta) * rng.standard_normal(dim)
    data = A @ x_true + noise * rng.standard_normal(dim)
    s = math.sqrt(delta)
    return LinearGaussian("deconvolution-1d", A * s, data, noise, truth=x_true / s,
                          params=s * np.eye(dim))


# -- registry and the protocol's bias -----------------------------------------------------------
TARGETS: dict[str, Callable[[], ExactTarget]] = {
    "um-banana": um_banana, "um-donut": um_donut, "um-funnel": um_funnel,
    "um-mixture": um_mixture, "heat-1d": heat_1d, "deconvolution-1d": deconvolution_1d,
    "banana": gym_banana, "gaussian-10": standard_gaussian, "icg-10": ill_conditioned_gaussian}

#: Upstream test values reproduced (tests/test_targets.py): target -> [(point, log density)],
#: from UM-Bridge ``benchmarks/analytic-*/test_output.py``.
UPSTREAM: dict[str, list[tuple[tuple[float, float], float]]] = {
    "um-banana": [((0.0, 0.0), -5.534036030183454), ((2.0, 0.0), -3.3207026968501214)],
    "um-donut": [((0.0, 0.0), -204.84848484848487), ((2.0, 2.0), -1.581180343024592)],
    "um-funnel": [((0.0, 0.0), -2.936489355077455), ((2.0, 2.0), -4.429382143772902)],
    "um-mixture": [((0.0, 0.0), -3.7296275264036907), ((2.0, 2.0), -1.9272329630852132)],
}


def make_target(name: str, **options) -> ExactTarget:
    """A target of :data:`TARGETS` by name."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name](**options)


def second_moment_bias(draws, target: ExactTarget) -> np.ndarray:
    """The protocol's squared bias of the second moments after each draw, per chain:
    b^2(n) = mean_i (E_n[x_i^2] - E[x_i^2])^2 / Var[x_i^2], E_n the running mean of a chain's
    first n draws; draws (chains, n, d) -> (chains, n)."""
    return _coordinate_bias(draws, target).mean(-1)


def _coordinate_bias(draws, target: ExactTarget) -> np.ndarray:
    """(E_n[x_i^2] - E[x_i^2])^2 / Var[x_i^2] after each draw n, per chain and coordinate
    i; draws (chains, n, d) -> (chains, n, d)."""
    x2 = np.asarray(draws, dtype=np.float64) ** 2
    running = np.cumsum(x2, 1) / np.arange(1, x2.shape[1] + 1)[None, :, None]
    return (running - target.second_moment) ** 2 / target.second_moment_var


def protocol_bias(draws, target: ExactTarget) -> dict[str, np.ndarray]:
    """The efficiency protocol's bias curves, as the published costs were computed
    (sampler-benchmarks ``evaluate_sampler``): each chain's b^2 after each of its draws,
    averaged (``"avg"``, the published statistic) or maximised (``"max"``) over coordinates,
    then the **median over chains** at each draw; draws (chains, n, d) -> {stat: (n,)}."""
    per = _coordinate_bias(draws, target)
    return {"avg": np.median(per.mean(-1), 0), "max": np.median(per.max(-1), 0)}


def protocol_crossing(curve, level: float = 0.01) -> int | None:
    """The number of draws after which ``curve`` stays below ``level`` for good (1 if it never
    reaches it; upstream's ``find_crossing``), or None if its last value is not below."""
    curve = np.asarray(curve)
    if not curve[-1] < level:
        return None
    above = np.nonzero(curve >= level)[0]
    return 1 if len(above) == 0 else int(above[-1]) + 1
