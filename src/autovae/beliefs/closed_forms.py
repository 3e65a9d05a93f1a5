"""Elementary closed forms of KL(q || p) for location-scale pairs (gvi-math.md section 4).

Every function takes the posterior's ``(m, s)`` and the prior's ``(mu, sigma)`` as broadcastable
tensors and returns the elementwise KL. Notation: ``d = m - mu``, ``delta = d / sigma``,
``r = s / sigma``. Pairs that are finite only under a condition return ``+inf`` outside it, with
the unused branch evaluated at a safe point so that no NaN leaks into the gradient.

Pairs that need special functions (E1, complex E1, the dilogarithm) live in ``special.py``.
"""

from __future__ import annotations

import math

import torch

from ._math import EULER_GAMMA, HALF_LOG_2PI

_LOG_2 = math.log(2.0)
_HALF_LOG_PI_2 = 0.5 * math.log(math.pi / 2)
_SQRT_2_PI = math.sqrt(2 / math.pi)


def _common(m, s, mu, sigma):
    """d, delta, r and log(sigma / s)."""
    d = m - mu
    return d, d / sigma, s / sigma, sigma.log() - s.log()


def _inf_where(finite: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.where(finite, value, torch.full_like(value, math.inf))


# -- prior: Normal ------------------------------------------------------------------------------
def kl_normal_normal(m, s, mu, sigma):
    """log(sigma/s) + (s^2 + d^2) / (2 sigma^2) - 1/2."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + 0.5 * (r * r + delta * delta) - 0.5


def kl_laplace_normal(m, s, mu, sigma):
    """log(sigma/s) + log(pi/2)/2 + r^2 + delta^2/2 - 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + _HALF_LOG_PI_2 + r * r + 0.5 * delta * delta - 1


def kl_logistic_normal(m, s, mu, sigma):
    """log(sigma/s) + log(2 pi)/2 + pi^2 r^2 / 6 + delta^2/2 - 2."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + HALF_LOG_2PI + (math.pi**2 / 6) * r * r + 0.5 * delta * delta - 2


def kl_uniform_normal(m, s, mu, sigma):
    """log(sigma/s) + log(pi/2)/2 + r^2/6 + delta^2/2."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + _HALF_LOG_PI_2 + r * r / 6 + 0.5 * delta * delta


def kl_gumbel_normal(m, s, mu, sigma):
    """log(sigma/s) + log(2 pi)/2 + pi^2 r^2 / 12 + (delta + gamma r)^2 / 2 - gamma - 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    shift = delta + EULER_GAMMA * r
    return (log_ratio + HALF_LOG_2PI + (math.pi**2 / 12) * r * r + 0.5 * shift * shift
            - EULER_GAMMA - 1)


def kl_exponential_normal(m, s, mu, sigma):
    """log(sigma/s) + log(2 pi)/2 + r^2/2 + (delta + r)^2/2 - 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    shift = delta + r
    return log_ratio + HALF_LOG_2PI + 0.5 * r * r + 0.5 * shift * shift - 1


# -- prior: Laplace -----------------------------------------------------------------------------
def kl_normal_laplace(m, s, mu, sigma):
    """log(sigma/s) + log(2/pi)/2 - 1/2 + r sqrt(2/pi) exp(-d^2/2s^2) + delta erf(d / s sqrt 2)."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    t = d / s
    return (log_ratio - _HALF_LOG_PI_2 - 0.5 + r * _SQRT_2_PI * torch.exp(-0.5 * t * t)
            + delta * torch.erf(t / math.sqrt(2)))


def kl_laplace_laplace(m, s, mu, sigma):
    """log(sigma/s) + |delta| + r exp(-|d|/s) - 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + delta.abs() + r * torch.exp(-d.abs() / s) - 1


def kl_logistic_laplace(m, s, mu, sigma):
    """log(sigma/s) + log 2 - 2 + |delta| + 2 r log1p(exp(-|d|/s))."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + _LOG_2 - 2 + delta.abs() + 2 * r * torch.log1p(torch.exp(-d.abs() / s))


def kl_uniform_laplace(m, s, mu, sigma):
    """log(sigma/s) + |delta| if |d| >= s, else log(sigma/s) + (s^2 + d^2) / (2 s sigma)."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    outside = d.abs() >= s
    return log_ratio + torch.where(outside, delta.abs(), (s * s + d * d) / (2 * s * sigma))


def kl_exponential_laplace(m, s, mu, sigma):
    """log(sigma/s) + log 2 - 1 + (E|X - mu|) / sigma, E|X - mu| piecewise in the sign of d."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    t = (-d / s).clamp(min=0)  # only used where d < 0
    mean_abs = torch.where(d >= 0, delta + r, r * (t - 1 + 2 * torch.exp(-t)))
    return log_ratio + _LOG_2 - 1 + mean_abs


# -- prior: Cauchy ------------------------------------------------------------------------------
def kl_cauchy_cauchy(m, s, mu, sigma):
    """log[((s + sigma)^2 + d^2) / (4 s sigma)] (Chyzak & Nielsen 2019)."""
    d = m - mu
    return torch.log((s + sigma).pow(2) + d * d) - _LOG_2 * 2 - s.log() - sigma.log()


def kl_uniform_cauchy(m, s, mu, sigma):
    """log(pi / (2 s sigma)) + mean of log(sigma^2 + y^2) over y in [d - s, d + s].

    The mean is [F(d+s) - F(d-s)] / 2s with F(y) = y log(sigma^2+y^2) - 2y + 2 sigma atan(y/sigma);
    when s is small against sqrt(sigma^2 + d^2) the difference cancels, and a Taylor series of the
    mean in s is used instead.
    """
    d = m - mu
    rho2 = sigma * sigma + d * d
    small = s * s < 1e-4 * rho2

    def antiderivative(y):
        return y * torch.log(sigma * sigma + y * y) - 2 * y + 2 * sigma * torch.atan(y / sigma)

    s_direct = torch.where(small, torch.ones_like(s), s)
    direct = (antiderivative(d + s_direct) - antiderivative(d - s_direct)) / (2 * s_direct)
    # mean of g over [d-s, d+s] = g(d) + g''(d) s^2/6 + g''''(d) s^4/120, g(y) = log(sigma^2+y^2)
    d2, sg2 = d * d, sigma * sigma
    g2 = 2 * (sg2 - d2) / rho2.pow(2)
    g4 = -12 * (d2 * d2 - 6 * d2 * sg2 + sg2 * sg2) / rho2.pow(4)
    s_series = torch.where(small, s, torch.zeros_like(s))
    series = rho2.log() + g2 * s_series.pow(2) / 6 + g4 * s_series.pow(4) / 120
    return math.log(math.pi / 2) - s.log() - sigma.log() + torch.where(small, series, direct)


# -- prior: Gumbel (max) ------------------------------------------------------------------------
# KL = log(sigma/s) + delta + E[z] ... written per posterior; the exponential term is exp(log_term)
# so that it stays finite as long as the KL itself is representable.
def kl_normal_gumbel(m, s, mu, sigma):
    """log(sigma/s) + delta + exp(-delta + r^2/2) - log(2 pi)/2 - 1/2."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + delta + torch.exp(-delta + 0.5 * r * r) - HALF_LOG_2PI - 0.5


def kl_laplace_gumbel(m, s, mu, sigma):
    """log(sigma/s) + delta + exp(-delta) / (1 - r^2) - log 2 - 1 for r < 1; +inf for r >= 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    finite = r < 1
    r_safe = torch.where(finite, r, torch.zeros_like(r))
    value = log_ratio + delta + torch.exp(-delta - torch.log1p(-r_safe * r_safe)) - _LOG_2 - 1
    return _inf_where(finite, value)


def kl_logistic_gumbel(m, s, mu, sigma):
    """log(sigma/s) + delta + exp(-delta) pi r / sin(pi r) - 2 for r < 1; +inf for r >= 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    finite = r < 1
    r_safe = torch.where(finite, r, torch.zeros_like(r))
    value = log_ratio + delta + torch.exp(-delta - torch.log(torch.sinc(r_safe))) - 2
    return _inf_where(finite, value)


def _log_sinhc(r):
    """log(sinh(r) / r) for r > 0, stable at both ends."""
    small = r < 1e-2
    r_big = torch.where(small, torch.ones_like(r), r)
    big = r_big + torch.log1p(-torch.exp(-2 * r_big)) - torch.log(2 * r_big)
    r2 = r * r
    return torch.where(small, r2 / 6 - r2 * r2 / 180, big)


def kl_uniform_gumbel(m, s, mu, sigma):
    """log(sigma / 2s) + delta + exp(-delta) sinh(r) / r."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio - _LOG_2 + delta + torch.exp(-delta + _log_sinhc(r))


def kl_gumbel_gumbel(m, s, mu, sigma):
    """log(sigma/s) + delta + gamma r + exp(-delta) Gamma(1 + r) - gamma - 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return (log_ratio + delta + EULER_GAMMA * r + torch.exp(-delta + torch.lgamma(1 + r))
            - EULER_GAMMA - 1)


def kl_exponential_gumbel(m, s, mu, sigma):
    """log(sigma/s) + delta + r + exp(-delta) / (1 + r) - 1."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return log_ratio + delta + r + torch.exp(-delta - torch.log1p(r)) - 1


# -- priors with bounded support ----------------------------------------------------------------
def kl_uniform_uniform(m, s, mu, sigma):
    """log(sigma/s) if [m-s, m+s] lies inside [mu-sigma, mu+sigma], else +inf."""
    nested = (m - s >= mu - sigma) & (m + s <= mu + sigma)
    return _inf_where(nested, sigma.log() - s.log() + torch.zeros_like(m))


def kl_uniform_exponential(m, s, mu, sigma):
    """log(sigma / 2s) + delta if m - s >= mu, else +inf."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return _inf_where(m - s >= mu, log_ratio - _LOG_2 + delta)


def kl_exponential_exponential(m, s, mu, sigma):
    """log(sigma/s) + delta + r - 1 if m >= mu, else +inf."""
    d, delta, r, log_ratio = _common(m, s, mu, sigma)
    return _inf_where(m >= mu, log_ratio + delta + r - 1)
