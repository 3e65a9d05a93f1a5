"""Likelihood beliefs p(x | decoder output) for VAEs (spec ``gvi-math.md`` section 5).

Every belief is a :class:`torch.nn.Module` (Gaussian/Laplace with a learned scale hold
parameters) built by name::

    lik = likelihood("continuous-bernoulli", event_shape=(1, 28, 28))
    log_px = lik.log_prob(x, decoder_out)          # summed over the event dims

Layout contract with the decoder
--------------------------------
``lik.num_params`` is 1 for every belief except ``beta`` (2). The decoder output ``out`` has
shape ``(*batch, num_params * event_shape[0], *event_shape[1:])`` (see ``lik.out_event_shape``):
the parameters are stacked *in blocks* along the first event axis (channels of an image, features
of a flat vector), i.e. for beta ``out[..., :C, ...]`` is the raw alpha and ``out[..., C:, ...]``
the raw beta (not interleaved). ``x`` has shape ``(*batch_x, *event_shape)`` where ``batch_x``
broadcasts against ``batch`` (e.g. ``out`` is ``(K, B, ...)`` for K importance samples and ``x``
is ``(B, ...)``); ``log_prob`` returns shape ``broadcast(batch, batch_x)``.

Numerical decisions
-------------------
* Bernoulli / continuous Bernoulli work in logit space. The continuous-Bernoulli normaliser uses
  the stable logit form of the spec (:func:`continuous_bernoulli_log_norm`), which is finite and
  has finite gradients for every finite logit, so **no clamp** is applied to the logits (the spec's
  "clamp to +-15..20" advice is for the lambda-space formula, where lambda rounds to 0 or 1).
* Learned Gaussian/Laplace scales are ``min_scale + softplus(raw)``: a smooth floor, the gradient
  never vanishes and the scale is always ``>= min_scale``.
* Beta clamps ``x`` to ``[eps, 1 - eps]`` inside ``log_prob``; ``eps`` is part of the reported
  likelihood and is kept as the attribute ``eps``.

Data outside the support
------------------------
One policy, torch's: ``log_prob`` validates ``x`` by default (shape, NaN/inf and the belief's
support, e.g. [0, 1] for Bernoulli, continuous Bernoulli and beta) and raises ``ValueError``
with :meth:`Likelihood.validate`'s message, rather than return a meaningless number (Bernoulli
at x = 2 is not a probability). For speed, once the data are known to be valid, switch it off per
instance (``lik.validate_args = False``) or for all
(``Likelihood.set_default_validate_args(False)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._math import HALF_LOG_2PI, LOG2, inverse_softplus, softplus

__all__ = [
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "continuous_bernoulli_log_norm",
    "continuous_bernoulli_mean",
    "likelihood",
    "likelihood_class",
    "likelihood_names",
]

_CB_SERIES_LOGNORM = 1e-2  # |logit| below which log C uses its Taylor series (spec section 5)
_CB_SERIES_MEAN = 1e-1  # |logit| below which the CB mean uses its Taylor series
_CB_SERIES_SAMPLE = 1e-3  # |logit| below which the CB sampler uses a first-order expansion


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(eta) of the continuous Bernoulli in logit space, C(eta) = eta / tanh(eta / 2).

    Stable form (spec section 5): ``log 2 + eta^2/12 - 7 eta^4/1440`` for ``|eta| < 1e-2``, else
    ``log|eta| - log(-expm1(-|eta|)) + log1p(exp(-|eta|))``. Finite with finite gradients for every
    finite logit (including exactly 0); even in ``eta``.
    """
    a = logits.abs()
    small = a < _CB_SERIES_LOGNORM
    a_safe = torch.where(small, torch.ones_like(a), a)  # keeps log(0) out of the unused branch
    large = torch.log(a_safe) - torch.log(-torch.expm1(-a_safe)) + torch.log1p(torch.exp(-a_safe))
    e2 = logits * logits
    series = LOG2 + e2 / 12.0 - 7.0 * e2 * e2 / 1440.0
    return torch.where(small, series, large)


def continuous_bernoulli_mean(logits: Tensor) -> Tensor:
    """Mean of the continuous Bernoulli, ``lambda/(2 lambda - 1) + 1/(2 atanh(1 - 2 lambda))``.

    In logits this is ``1/(1 - exp(-eta)) - 1/eta``; near 0 the series
    ``1/2 + eta/12 - eta^3/720 + eta^5/30240 - eta^7/1209600`` (Bernoulli numbers; truncation
    error < 3e-17 there) is used, giving exactly 1/2 at eta = 0.
    """
    small = logits.abs() < _CB_SERIES_MEAN
    e_safe = torch.where(small, torch.ones_like(logits), logits)
    exact = -1.0 / torch.expm1(-e_safe) - 1.0 / e_safe
    e2 = logits * logits
    series = 0.5 + logits * (
        1.0 / 12.0 - e2 * (1.0 / 720.0 - e2 * (1.0 / 30240.0 - e2 / 1209600.0))
    )
    return torch.where(small, series, exact)


def _cb_sample(logits: Tensor) -> Tensor:
    """Continuous-Bernoulli samples by inverse CDF, stable for any finite logit.

    With a = -|eta| <= 0 the density is proportional to exp(a y) on [0, 1] and
    y = log1p(u expm1(a)) / a; for eta > 0 the sample is 1 - y by symmetry.
    """
    u = torch.rand_like(logits)
    a = -logits.abs()
    small = a > -_CB_SERIES_SAMPLE
    a_safe = torch.where(small, -torch.ones_like(a), a)
    y = torch.log1p(u * torch.expm1(a_safe)) / a_safe
    y = torch.where(small, u + 0.5 * a * u * (1.0 - u), y)
    return torch.where(logits > 0, 1.0 - y, y).clamp(0.0, 1.0)


class Likelihood(nn.Module):
    """Base class: a factorised likelihood over ``event_shape`` given decoder output ``out``.

    Subclasses set ``name`` / ``num_params`` and implement ``_log_prob``, ``_mean`` and
    ``_sample`` on the split, element-wise parameters; ``_check_values`` adds support checks.
    ``takes_scale`` says whether the class takes a scale (``sigma``, ``learn_sigma``).
    """

    name: str = "likelihood"
    num_params: int = 1
    takes_scale: bool = False
    _validate_default: bool = True

    #: check ``x`` in every :meth:`log_prob` (None: the class default, see
    #: :meth:`set_default_validate_args`); set False on an instance to skip the check
    validate_args: bool | None = None

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        """Whether :meth:`log_prob` validates ``x`` by default (True; as
        ``torch.distributions.Distribution.set_default_validate_args``)."""
        Likelihood._validate_default = bool(value)

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__()
        if isinstance(event_shape, int):
            event_shape = (event_shape,)
        shape = tuple(int(s) for s in event_shape)
        if len(shape) == 0 or any(s <= 0 for s in shape):
            raise ValueError(
                f"event_shape must be a non-empty tuple of positive ints, got {tuple(event_shape)}"
                " (use (1,) for scalar data)"
            )
        self.event_shape: tuple[int, ...] = shape

    # ----------------------------------------------------------------- layout helpers
    @property
    def event_dim(self) -> int:
        """Number of trailing event dimensions summed by ``log_prob``."""
        return len(self.event_shape)

    @property
    def out_event_shape(self) -> tuple[int, ...]:
        """Trailing shape the decoder output must have: ``(num_params * C, *rest)``."""
        return (self.num_params * self.event_shape[0], *self.event_shape[1:])

    def split(self, out: Tensor) -> tuple[Tensor, ...]:
        """Split ``out`` into ``num_params`` tensors of shape ``(*batch, *event_shape)``."""
        n = self.event_dim
        if out.dim() < n or tuple(out.shape[out.dim() - n :]) != self.out_event_shape:
            raise ValueError(
                f"{self.name}: decoder output has shape {tuple(out.shape)}, expected trailing "
                f"shape {self.out_event_shape} (= num_params {self.num_params} x event_shape "
                f"{self.event_shape} stacked on the first event axis); fix the decoder output size"
            )
        if self.num_params == 1:
            return (out,)
        return tuple(torch.chunk(out, self.num_params, dim=out.dim() - n))

    def _check_shape(self, x: Tensor) -> None:
        n = self.event_dim
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != self.event_shape:
            raise ValueError(
                f"{self.name}: data has shape {tuple(x.shape)} but the trailing dims must equal "
                f"event_shape {self.event_shape}; reshape x to (*batch, *event_shape)"
            )

    # ----------------------------------------------------------------- public API
    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | out) summed over the event dims; shape ``broadcast(batch, batch_x)``.

        ``x`` outside the support (or NaN/inf) is refused with :meth:`validate`'s message
        unless validation is off (``validate_args``; see the module docstring)."""
        check = self._validate_default if self.validate_args is None else self.validate_args
        if check:
            self.validate(x)
        else:
            self._check_shape(x)
        params = self.split(out)
        n = self.event_dim
        try:
            torch.broadcast_shapes(x.shape[: x.dim() - n], out.shape[: out.dim() - n])
        except RuntimeError:
            raise ValueError(f"{self.name}: the batch shapes of x {tuple(x.shape)} and out "
                             f"{tuple(out.shape)} do not broadcast (x is (*batch_x, "
                             f"*event_shape), out (*batch, *out_event_shape))") from None
        return self._log_prob_sum(x, *params)

    def _log_prob_sum(self, x: Tensor, *params: Tensor) -> Tensor:
        """``_log_prob`` summed over the event dims (a belief may sum faster, see Bernoulli)."""
        return self._log_prob(x, *params).sum(dim=tuple(range(-self.event_dim, 0)))

    def nll(self, x: Tensor, out: Tensor) -> Tensor:
        """Negative log-likelihood, ``-log_prob(x, out)``."""
        return -self.log_prob(x, out)

    def forward(self, x: Tensor, out: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, out)

    def mean(self, out: Tensor) -> Tensor:
        """Mean of p(x | out) in data space, shape ``(*batch, *event_shape)``."""
        return self._mean(*self.split(out))

    @torch.no_grad()
    def sample(self, out: Tensor) -> Tensor:
        """One sample of p(x | out) (no gradient), shape ``(*batch, *event_shape)``."""
        return self._sample(*self.split(out))

    def validate(self, x: Tensor) -> None:
        """Raise ``ValueError`` (naming the problem and the fix) if ``x`` is outside the support.

        Checks the trailing shape against ``event_shape``, NaN/inf, and belief-specific support.
        """
        x = torch.as_tensor(x)
        self._check_shape(x)
        if x.is_floating_point() and x.numel() and not all(
                math.isfinite(v) for v in torch.aminmax(x)):  # NaN and inf reach min or max
            if torch.isnan(x).any():
                raise ValueError(f"{self.name}: data contain NaN; clean or impute the data first")
            raise ValueError(f"{self.name}: data contain inf; clean or clip the data first")
        self._check_values(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, event_shape={self.event_shape}"

    # ----------------------------------------------------------------- subclass hooks
    # Every belief defines _log_prob(x, *params), _mean(*params) and _sample(*params).
    def _check_values(self, x: Tensor) -> None:
        """Belief-specific support check (default: any finite value)."""

    def _check_unit_interval(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass over the data
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{self.name}: data must lie in [0, 1] but range over [{lo:g}, {hi:g}]; scale "
                "the data to [0, 1] first (e.g. x / 255 for 8-bit pixels, or min-max scaling), "
                "or use a likelihood for real values (--likelihood gaussian or laplace)"
            )


def _product_group(d: int) -> int:
    """The largest divisor of ``d`` up to 120: a product of that many sigmoids (each >= 1/2)
    stays above 2**-120, inside float32's normal range."""
    return max(g for g in range(1, min(d, 120) + 1) if d % g == 0)


def bernoulli_log_prob_sum(x: Tensor, logits: Tensor) -> Tensor:
    """``sum_j x_j eta_j - softplus(eta_j)`` over the last dim, without autograd, at a fraction
    of the cost of the elementwise form (the importance-sampled NLL spends most of its
    non-matmul time here): ``softplus(eta) = (eta + |eta|) / 2 - log sigmoid(|eta|)``, so the
    sum is ``(x - 1/2).eta - |eta|/2`` plus the logs of the sigmoids, taken of products over
    groups of pixels (one log per group, not per pixel). Agrees with the elementwise BCE to
    float32 rounding (tested)."""
    d = logits.shape[-1]
    group = _product_group(d)
    dtype = torch.promote_types(logits.dtype, x.dtype)
    logits = logits.to(dtype)
    size = logits.abs()
    return (torch.linalg.vecdot(logits, (x - 0.5).to(dtype)) - 0.5 * size.sum(-1)
            + size.sigmoid_().unflatten(-1, (d // group, group)).prod(-1).log_().sum(-1))


class BernoulliLikelihood(Likelihood):
    """Bernoulli / BCE on logits: ``log p = x*eta - softplus(eta)``.

    A pmf on {0, 1}; for x in (0, 1) it is the usual (unnormalised) "BCE" objective.
    """

    name = "bernoulli"

    def _log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        # one fused, stable kernel for x * eta - softplus(eta)
        logits, x = torch.broadcast_tensors(logits, x)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def _log_prob_sum(self, x: Tensor, logits: Tensor) -> Tensor:
        if torch.is_grad_enabled() and logits.requires_grad:
            return super()._log_prob_sum(x, logits)
        return bernoulli_log_prob_sum(x.flatten(-self.event_dim), logits.flatten(-self.event_dim))

    def _mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def _sample(self, logits: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(logits))

    def _check_values(self, x: Tensor) -> None:
        self._check_unit_interval(x)


class ContinuousBernoulliLikelihood(BernoulliLikelihood):
    """Continuous Bernoulli on logits: ``log p = x*eta - softplus(eta) + log C(eta)``.

    A proper density on [0, 1] (Loaiza-Ganem & Cunningham 2019); ``log C`` is the stable
    logit-space form :func:`continuous_bernoulli_log_norm`; logits are not clamped.
    """

    name = "continuous-bernoulli"
    _log_prob_sum = Likelihood._log_prob_sum  # (its log C has no product form)

    def _log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        return super()._log_prob(x, logits) + continuous_bernoulli_log_norm(logits)

    def _mean(self, logits: Tensor) -> Tensor:
        return continuous_bernoulli_mean(logits)

    def _sample(self, logits: Tensor) -> Tensor:
        return _cb_sample(logits)


def _alias(primary: str, value: object, alias: str, alias_value: object, default: object):
    if value is not None and alias_value is not None:
        raise ValueError(f"give either {primary!r} or {alias!r}, not both")
    if value is not None:
        return value
    return default if alias_value is None else alias_value


# below this scale (x - mean)^2 / scale^2 overflows float32 for |x - mean| of order 1e7
_MIN_FIXED_SCALE = 1e-12


class _LocScaleLikelihood(Likelihood):
    """Shared fixed / learned scale handling for location-scale likelihoods.

    The decoder outputs the location. The scale is either fixed (``learn_scale=None``) or learned:
    ``"shared"`` (one scalar) or ``"pixel"`` (one per element of ``event_shape``), parameterised as
    ``min_scale + softplus(raw_scale)`` (smooth floor). When learned, ``scale`` is the initial
    value and must exceed ``min_scale``. The options are also accepted under the names ``sigma``,
    ``learn_sigma``, ``min_sigma``.
    """

    _LEARN_MODES = ("shared", "pixel")
    takes_scale = True

    def __init__(
        self,
        event_shape: Sequence[int] | int,
        scale: float | None = None,
        learn_scale: str | None = None,
        min_scale: float | None = None,
        *,
        sigma: float | None = None,
        learn_sigma: str | None = None,
        min_sigma: float | None = None,
    ) -> None:
        super().__init__(event_shape)
        scale = float(_alias("scale", scale, "sigma", sigma, 1.0))
        learn = _alias("learn_scale", learn_scale, "learn_sigma", learn_sigma, None)
        min_scale = float(_alias("min_scale", min_scale, "min_sigma", min_sigma, 1e-3))
        if isinstance(learn, str):
            learn = learn.strip().lower()
        if learn is False or learn in ("none", "fixed", ""):
            learn = None
        if learn is not None and learn not in self._LEARN_MODES:
            raise ValueError(
                f"{self.name}: learn_scale must be None, 'shared' or 'pixel', got {learn!r}"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{self.name}: scale must be a positive finite float, got {scale}")
        if scale < _MIN_FIXED_SCALE:
            raise ValueError(
                f"{self.name}: scale (sigma) {scale:g} is below {_MIN_FIXED_SCALE:g}: "
                "(x - mean)^2 / sigma^2 overflows float32 there and the log-likelihood is "
                "-inf; sigma is the noise scale in data units (e.g. --sigma 0.1), or learn it "
                "(--learn-sigma shared)"
            )
        if min_scale < 0:
            raise ValueError(f"{self.name}: min_scale must be >= 0, got {min_scale}")
        self.learn_scale: str | None = learn
        self.min_scale = min_scale
        if learn is None:
            self.fixed_scale: float | None = scale
            self.register_parameter("raw_scale", None)
        else:
            if scale <= min_scale:
                raise ValueError(
                    f"{self.name}: initial scale {scale} must exceed min_scale {min_scale}"
                )
            self.fixed_scale = None
            shape = () if learn == "shared" else self.event_shape
            self.raw_scale = nn.Parameter(torch.full(shape, inverse_softplus(scale - min_scale)))

    @property
    def scale(self) -> Tensor:
        """Current scale: shape ``()`` if fixed or shared, ``event_shape`` if per pixel."""
        if self.raw_scale is None:
            return torch.tensor(self.fixed_scale)
        return self.min_scale + softplus(self.raw_scale)

    def _scale_terms(self) -> tuple[Tensor | float, Tensor | float]:
        """(scale, log scale); python floats when fixed so float64 data keep full precision."""
        if self.raw_scale is None:
            return self.fixed_scale, math.log(self.fixed_scale)
        s = self.scale
        return s, torch.log(s)

    def _mean(self, loc: Tensor) -> Tensor:
        return loc

    def _sample(self, loc: Tensor) -> Tensor:
        s, _ = self._scale_terms()
        return loc + s * self._standard_noise(loc)  # each subclass draws its standard noise

    def extra_repr(self) -> str:
        if self.raw_scale is None:
            how = f"scale={self.fixed_scale:g}"
        else:
            how = f"learn_scale={self.learn_scale!r}, min_scale={self.min_scale:g}"
        return f"{super().extra_repr()}, {how}"


class GaussianLikelihood(_LocScaleLikelihood):
    """Normal on the decoder's mean: ``NLL = 0.5 log(2 pi sigma^2) + (x - mu)^2 / (2 sigma^2)``.

    Options ``sigma`` (default 1.0), ``learn_sigma`` (None / "shared" / "pixel"), ``min_sigma``
    (default 1e-3); aliases ``scale`` / ``learn_scale`` / ``min_scale``.
    """

    name = "gaussian"

    @property
    def sigma(self) -> Tensor:
        """Alias of :attr:`scale`."""
        return self.scale

    def _log_prob(self, x: Tensor, loc: Tensor) -> Tensor:
        s, log_s = self._scale_terms()
        z = (x - loc) / s
        return -HALF_LOG_2PI - log_s - 0.5 * z * z

    def _standard_noise(self, like: Tensor) -> Tensor:
        return torch.randn_like(like)


class LaplaceLikelihood(_LocScaleLikelihood):
    """Laplace on the decoder's location: ``NLL = log(2 b) + |x - mu| / b``.

    Options ``scale`` (default 1.0), ``learn_scale`` (None / "shared" / "pixel"), ``min_scale``
    (default 1e-3); aliases ``sigma`` / ``learn_sigma`` / ``min_sigma``.
    """

    name = "laplace"

    def _log_prob(self, x: Tensor, loc: Tensor) -> Tensor:
        s, log_s = self._scale_terms()
        return -LOG2 - log_s - (x - loc).abs() / s

    def _standard_noise(self, like: Tensor) -> Tensor:
        return torch.empty_like(like).exponential_() - torch.empty_like(like).exponential_()


class BetaLikelihood(Likelihood):
    """Beta on [0, 1]; the decoder outputs raw alpha and raw beta (2 blocks on the first axis).

    ``alpha = softplus(raw_alpha) + min_concentration`` (same for beta). Data are clamped to
    ``[eps, 1 - eps]`` inside ``log_prob`` (default ``eps=1e-3``); eps is part of the reported
    likelihood. ``validate`` rejects values outside [0, 1] always, and exact 0 or 1 only when
    ``eps == 0`` (with ``eps > 0`` such values are legal and clamped).
    """

    name = "beta"
    num_params = 2

    def __init__(
        self,
        event_shape: Sequence[int] | int,
        eps: float = 1e-3,
        min_concentration: float = 1e-4,
    ) -> None:
        super().__init__(event_shape)
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"beta: eps must be in [0, 0.5), got {eps}")
        if min_concentration < 0:
            raise ValueError(f"beta: min_concentration must be >= 0, got {min_concentration}")
        self.eps = float(eps)
        self.min_concentration = float(min_concentration)

    def concentrations(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, beta), each of shape ``(*batch, *event_shape)``."""
        raw_a, raw_b = self.split(out)
        return self._conc(raw_a), self._conc(raw_b)

    def out_from_concentrations(self, alpha: Tensor, beta: Tensor) -> Tensor:
        """Inverse of :meth:`concentrations`: the decoder output giving these (alpha, beta)."""
        n = self.event_dim
        raws = []
        for c in (alpha, beta):
            y = torch.as_tensor(c) - self.min_concentration
            raws.append(y + torch.log(-torch.expm1(-y)))
        raw_a, raw_b = torch.broadcast_tensors(*raws)
        return torch.cat([raw_a, raw_b], dim=raw_a.dim() - n)

    def _conc(self, raw: Tensor) -> Tensor:
        return softplus(raw) + self.min_concentration

    def _log_prob(self, x: Tensor, raw_a: Tensor, raw_b: Tensor) -> Tensor:
        a, b = self._conc(raw_a), self._conc(raw_b)
        if self.eps > 0:
            x = x.clamp(self.eps, 1.0 - self.eps)
        log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        return torch.xlogy(a - 1.0, x) + torch.special.xlog1py(b - 1.0, -x) - log_beta_fn

    def _mean(self, raw_a: Tensor, raw_b: Tensor) -> Tensor:
        a, b = self._conc(raw_a), self._conc(raw_b)
        return a / (a + b)

    def _sample(self, raw_a: Tensor, raw_b: Tensor) -> Tensor:
        a, b = self._conc(raw_a), self._conc(raw_b)
        return torch.distributions.Beta(a, b).sample()

    def _check_values(self, x: Tensor) -> None:
        self._check_unit_interval(x)
        if self.eps == 0 and ((x == 0).any() or (x == 1).any()):
            raise ValueError(
                "beta: data contain exact 0 or 1, where the Beta log-density is infinite; use "
                "eps > 0 (e.g. likelihood('beta', ..., eps=1e-3)) to clamp x to [eps, 1 - eps]"
            )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, eps={self.eps:g}, "
            f"min_concentration={self.min_concentration:g}"
        )


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (
        BernoulliLikelihood,
        ContinuousBernoulliLikelihood,
        GaussianLikelihood,
        LaplaceLikelihood,
        BetaLikelihood,
    )
}
_ALIASES = {"bce": "bernoulli", "cb": "continuous-bernoulli", "normal": "gaussian"}


def likelihood_names() -> list[str]:
    """Canonical likelihood names (aliases: bce, cb, normal)."""
    return list(LIKELIHOODS)


def likelihood_class(name: str) -> type[Likelihood]:
    """The likelihood class for ``name``: case-insensitive, ``-`` and ``_`` interchangeable,
    aliases bce, cb and normal. The one place likelihood names are normalised."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in LIKELIHOODS:
        valid = ", ".join(list(LIKELIHOODS) + [f"{a} (={t})" for a, t in _ALIASES.items()])
        raise ValueError(f"unknown likelihood {name!r}; valid names: {valid}")
    return LIKELIHOODS[key]


def likelihood(name: str, event_shape: Sequence[int] | int, **options) -> Likelihood:
    """Build a likelihood by name (see :func:`likelihood_class`).

    Names: bernoulli (alias bce), continuous-bernoulli (cb), gaussian (normal), laplace, beta.
    ``options`` go to the class constructor.
    """
    return likelihood_class(name)(event_shape, **options)
