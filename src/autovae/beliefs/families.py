"""Location-scale families for latent posteriors and priors.

Every family is a reparameterizable :class:`torch.distributions.Distribution` with a ``loc`` and a
``scale``; a sample is ``loc + scale * eps`` with ``eps`` drawn from the standard member. The
conventions follow ``gvi-math.md`` section 1:

========== ================ ======================== ==================================
family     loc              scale                    support
========== ================ ======================== ==================================
normal     mean             standard deviation       real line
laplace    median           b                        real line
cauchy     median           half width at half max   real line
logistic   mean             s (variance pi^2 s^2/3)  real line
uniform    centre           half-width               [loc - scale, loc + scale]
gumbel     mode (max-type)  beta                     real line
exponential start           1 / rate                 [loc, inf)
========== ================ ======================== ==================================

Log-densities are written in their numerically stable forms and return ``-inf`` outside the
support (they never raise for a value outside it: a support mismatch is information, not an error).

>>> q = family("logistic", torch.zeros(3), torch.ones(3))
>>> q.rsample((5,)).shape
torch.Size([5, 3])
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all

from ._math import EULER_GAMMA, HALF_LOG_2PI

__all__ = [
    "FAMILIES",
    "Cauchy",
    "Exponential",
    "Gumbel",
    "Laplace",
    "LocationScale",
    "Logistic",
    "Normal",
    "Uniform",
    "family",
    "family_class",
]


def _check_params(name: str, loc: torch.Tensor, scale: torch.Tensor) -> None:
    if not torch.isfinite(loc).all():
        raise ValueError(f"{name}: loc must be finite, got {loc.detach().flatten()[:6].tolist()}")
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        bad = scale[~(torch.isfinite(scale) & (scale > 0))].detach().flatten()[:6].tolist()
        raise ValueError(
            f"{name}: scale must be positive and finite, got {bad}; map an unconstrained output "
            "through softplus (plus a small floor) to get a valid scale"
        )


class LocationScale(Distribution):
    """Base class: ``X = loc + scale * E`` where ``E`` follows the standard member.

    Subclasses define the standard member through ``_log_prob_std``, ``_icdf_std``, ``_cdf_std``
    and the constants ``_entropy_std``, ``_mean_std``, ``_variance_std``.
    """

    name: str = ""
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True
    _entropy_std: float
    _mean_std: float = 0.0
    _variance_std: float

    def __init__(self, loc, scale, validate_args: bool | None = None):
        self.loc, self.scale = broadcast_all(loc, scale)
        validate = Distribution._validate_args if validate_args is None else validate_args
        if validate:
            _check_params(self.name, self.loc, self.scale)
        super().__init__(self.loc.shape, validate_args=False)
        self._validate_args = validate

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @classmethod
    def _icdf_upper_std(cls, v: torch.Tensor) -> torch.Tensor:
        """The standard quantile at 1 - v, accurate for tiny v (symmetric families)."""
        return -cls._icdf_std(v)

    def _sample_std(self, shape: torch.Size) -> torch.Tensor:
        """Standard draws; uniforms are kept inside the open interval (eps, 1 - eps)."""
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        eps = torch.finfo(u.dtype).eps
        return self._icdf_std(u.clamp(eps, 1 - eps))

    # -- the Distribution interface ----------------------------------------------------------
    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return self.loc + self.scale * self._sample_std(shape)

    def log_prob(self, value) -> torch.Tensor:
        return self._log_prob_std((value - self.loc) / self.scale) - self.scale.log()

    def cdf(self, value) -> torch.Tensor:
        return self._cdf_std((value - self.loc) / self.scale)

    def icdf(self, value) -> torch.Tensor:
        return self.loc + self.scale * self._icdf_std(value)

    def entropy(self) -> torch.Tensor:
        return self._entropy_std + self.scale.log()

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self._mean_std * self.scale

    @property
    def variance(self) -> torch.Tensor:
        return self._variance_std * self.scale.pow(2)

    @property
    def stddev(self) -> torch.Tensor:
        return self.variance.sqrt()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(loc: {self.loc.size()}, scale: {self.scale.size()})"


class Normal(LocationScale):
    """Normal(mean=loc, std=scale)."""

    name = "normal"
    _entropy_std = 0.5 + HALF_LOG_2PI
    _variance_std = 1.0

    @staticmethod
    def _log_prob_std(z):
        return -0.5 * z * z - HALF_LOG_2PI

    @staticmethod
    def _icdf_std(u):
        return torch.special.ndtri(u)

    @staticmethod
    def _cdf_std(z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))

    def _sample_std(self, shape):
        return torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)


class Laplace(LocationScale):
    """Laplace(median=loc, b=scale): density exp(-|x - loc| / b) / (2b)."""

    name = "laplace"
    _entropy_std = 1 + math.log(2)
    _variance_std = 2.0

    @staticmethod
    def _log_prob_std(z):
        return -z.abs() - math.log(2)

    @staticmethod
    def _icdf_std(u):
        lower = u < 0.5
        half = torch.full_like(u, 0.5)
        return torch.where(lower, torch.log(2 * torch.where(lower, u, half)),
                           -torch.log(2 - 2 * torch.where(lower, half, u)))

    @staticmethod
    def _cdf_std(z):
        neg = z < 0
        zero = torch.zeros_like(z)
        lower = 0.5 * torch.exp(torch.where(neg, z, zero))
        upper = 1 - 0.5 * torch.exp(-torch.where(neg, zero, z))
        return torch.where(neg, lower, upper)


class Cauchy(LocationScale):
    """Cauchy(median=loc, half width at half maximum=scale); no mean, infinite variance."""

    name = "cauchy"
    _entropy_std = math.log(4 * math.pi)
    _mean_std = math.nan
    _variance_std = math.inf

    @staticmethod
    def _log_prob_std(z):
        az = z.abs()
        big = az > 1
        # log1p(z^2) overflows for |z| > 1.8e19 in float32: use 2 log|z| + log1p(1/z^2) there.
        az_big = torch.where(big, az, torch.ones_like(az))
        z_small = torch.where(big, torch.zeros_like(z), z)
        log_tail = torch.where(big, 2 * az_big.log() + torch.log1p(az_big.pow(-2)),
                               torch.log1p(z_small * z_small))
        return -math.log(math.pi) - log_tail

    @staticmethod
    def _icdf_std(u):
        return -1 / torch.tan(math.pi * u)  # = tan(pi (u - 1/2)), accurate as u -> 0

    @staticmethod
    def _cdf_std(z):
        return 0.5 + torch.atan(z) / math.pi

    @property
    def mean(self):
        return torch.full_like(self.loc, math.nan)

    @property
    def variance(self):
        return torch.full_like(self.loc, math.inf)


class Logistic(LocationScale):
    """Logistic(mean=loc, s=scale); torch has no Logistic, so it is written from its density."""

    name = "logistic"
    _entropy_std = 2.0
    _variance_std = math.pi**2 / 3

    @staticmethod
    def _log_prob_std(z):
        az = z.abs()
        return -az - 2 * torch.log1p(torch.exp(-az))

    @staticmethod
    def _icdf_std(u):
        return u.log() - torch.log1p(-u)

    @staticmethod
    def _cdf_std(z):
        return torch.sigmoid(z)


class Uniform(LocationScale):
    """Uniform on [loc - scale, loc + scale]: loc is the centre, scale the HALF-width."""

    name = "uniform"
    _entropy_std = math.log(2)
    _variance_std = 1 / 3

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.loc - self.scale, self.loc + self.scale)

    @property
    def low(self) -> torch.Tensor:
        return self.loc - self.scale

    @property
    def high(self) -> torch.Tensor:
        return self.loc + self.scale

    @staticmethod
    def _log_prob_std(z):
        inside = z.abs() <= 1
        return torch.where(inside, torch.full_like(z, -math.log(2)), torch.full_like(z, -math.inf))

    @staticmethod
    def _icdf_std(u):
        return 2 * u - 1

    @staticmethod
    def _cdf_std(z):
        return ((z + 1) / 2).clamp(0, 1)


class Gumbel(LocationScale):
    """Max-Gumbel(mode=loc, beta=scale), as torch.distributions.Gumbel and scipy's gumbel_r."""

    name = "gumbel"
    _entropy_std = 1 + EULER_GAMMA
    _mean_std = EULER_GAMMA
    _variance_std = math.pi**2 / 6

    @staticmethod
    def _log_prob_std(z):
        return -z - torch.exp(-z)

    @staticmethod
    def _icdf_std(u):
        return -torch.log(-torch.log(u))

    @classmethod
    def _icdf_upper_std(cls, v):
        return -torch.log(-torch.log1p(-v))

    @staticmethod
    def _cdf_std(z):
        return torch.exp(-torch.exp(-z))


class Exponential(LocationScale):
    """Exponential shifted to start at loc, with scale = 1 / rate (torch's is loc = 0)."""

    name = "exponential"
    _entropy_std = 1.0
    _mean_std = 1.0
    _variance_std = 1.0

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.greater_than_eq(self.loc)

    @property
    def rate(self) -> torch.Tensor:
        return self.scale.reciprocal()

    @staticmethod
    def _log_prob_std(z):
        return torch.where(z >= 0, -z, torch.full_like(z, -math.inf))

    @staticmethod
    def _icdf_std(u):
        return -torch.log1p(-u)

    @classmethod
    def _icdf_upper_std(cls, v):
        return -torch.log(v)

    @staticmethod
    def _cdf_std(z):
        return torch.where(z >= 0, -torch.expm1(-z.clamp(min=0)), torch.zeros_like(z))


FAMILIES: dict[str, type[LocationScale]] = {
    cls.name: cls for cls in (Normal, Laplace, Cauchy, Logistic, Uniform, Gumbel, Exponential)
}


def family_class(name: str) -> type[LocationScale]:
    """The family class for a name (case-insensitive); ValueError lists the valid names."""
    key = str(name).strip().lower()
    if key not in FAMILIES:
        raise ValueError(
            f"unknown family {name!r}; valid families are: {', '.join(FAMILIES)}"
        )
    return FAMILIES[key]


def family(name: str, loc, scale, validate_args: bool | None = None) -> LocationScale:
    """Build the named family with ``loc`` and ``scale`` (tensors or numbers, broadcast).

    Raises ValueError for an unknown name, a non-finite loc, or a scale that is not positive and
    finite.
    """
    cls = family_class(name)
    loc = torch.as_tensor(loc, dtype=torch.get_default_dtype()) if not torch.is_tensor(loc) else loc
    if not torch.is_tensor(scale):
        scale = torch.as_tensor(scale, dtype=loc.dtype)
    try:
        torch.broadcast_shapes(loc.shape, scale.shape)
    except RuntimeError:
        raise ValueError(f"{cls.name}: loc of shape {tuple(loc.shape)} and scale of shape "
                         f"{tuple(scale.shape)} do not broadcast") from None
    return cls(loc, scale, validate_args=True if validate_args is None else validate_args)
