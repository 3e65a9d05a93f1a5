r"""Location Fisher information, entropy power and the Fisher-autoencoder penalty.

For a location-scale density ``q(z) = f((z - mu) / s) / s`` the Fisher information about the
location is ``J = E_q[(d/dz log q(z))^2] = I_f / s^2`` with ``I_f = E[psi(E)^2]``,
``psi = (log f)'`` and ``E`` the standard member (``d/dmu log q = -d/dz log q``, so either
derivative gives J). Per family (the parameterisation of :mod:`autovae.beliefs.families`):

* normal: ``psi = -e``, ``I_f = E[E^2] = 1``, so ``J = 1 / sigma^2``;
* laplace: ``psi = -sign(e)`` (``f`` is absolutely continuous, the kink is a null set),
  ``psi^2 = 1``, so ``J = 1 / b^2``;
* cauchy: ``psi = -2e / (1 + e^2)``,
  ``I_f = (4 / pi) int e^2 / (1 + e^2)^3 de = (4 / pi)(pi / 8) = 1/2``, so ``J = 1 / (2 gamma^2)``;
* logistic: ``psi = 1 - 2 sigmoid(e)`` and ``sigmoid(E) ~ U(0, 1)`` (it is the CDF), so
  ``I_f = E[(1 - 2U)^2] = 1/3`` and ``J = 1 / (3 s^2)``;
* gumbel (max-type): ``psi = e^{-e} - 1`` and ``W = e^{-E} ~ Exp(1)``, so ``I_f = Var W = 1`` and
  ``J = 1 / beta^2``;
* uniform and exponential: refused. Their densities jump at an edge of the support, and the support
  moves with the location, so the model is not differentiable in quadratic mean (the regularity
  behind ``J``): the squared Hellinger distance between shifts by ``h`` grows like ``|h|``, not
  ``h^2`` (uniform, half-width s: ``H^2 = |h| / (2s)``; exponential:
  ``H^2 = 1 - exp(-|h| / (2s))``), so ``lim 8 H^2 / h^2 = +inf``. The pointwise score misses the
  moving edge: it is 0 a.e. for the uniform and ``-1/s`` for the exponential, whose mean
  ``1/s != 0`` shows that ``d/dmu`` and ``int dz`` do not commute. Their ``E[(d/dz log q)^2]``
  (0 and ``1/s^2``) is no Fisher information.

The score estimator (Zheng et al. 2019, ``models/convVAE.py``) averages ``(d/dz log q(z))^2`` over
reparameterised draws ``z = mu + s E``; here the derivative is taken by autograd, for any family,
and it stays differentiable in the encoder's outputs (``psi(E)^2 / s^2``, unbiased for ``I_f/s^2``).

Entropy power ``N = exp(2 h) / (2 pi e)`` per dimension (``h`` the differential entropy). Stam's
inequality ``J N >= 1`` holds with equality iff Gaussian; the products per family are normal 1,
logistic ``e^3 / (6 pi) = 1.0656``, gumbel ``e^{1 + 2 gamma_E} / (2 pi) = 1.3724``, laplace
``2e / pi = 1.7305``, cauchy ``4 pi / e = 4.6229``. For an n-dimensional product posterior,
``J = sum_j J_j`` (the trace of the Fisher matrix) and ``N = exp(2 h / n) / (2 pi e)`` (the
geometric mean of the ``N_j``) satisfy ``J N / n >= 1`` (AM-GM, then Stam per dimension).

>>> from autovae.beliefs.families import family
>>> location_fisher(family("logistic", 0.0, 2.0))
tensor(0.0833)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .families import FAMILIES, LocationScale

__all__ = [
    "AUTHORS_SCORE_CLAMP",
    "ESTIMATORS",
    "LOCATION_FISHER",
    "check_fisher",
    "entropy_power",
    "fisher_information_available",
    "fisher_penalty",
    "fisher_shannon",
    "location_fisher",
    "posterior_fisher",
    "posterior_fisher_shannon",
    "score_fisher",
    "score_squared",
]

_TWO_PI_E = 2 * math.pi * math.e

#: Fisher information of the standard member, ``I_f`` (so ``J = I_f / scale^2``), or the reason
#: a family has no finite location Fisher information.
LOCATION_FISHER: dict[str, float | str] = {
    "normal": 1.0,
    "laplace": 1.0,
    "cauchy": 0.5,
    "logistic": 1.0 / 3.0,
    "gumbel": 1.0,
    "uniform": (
        "the uniform density jumps from 0 to 1/(2 scale) at both ends of its support "
        "[loc - scale, loc + scale], which moves with loc: the model is not differentiable in "
        "quadratic mean (squared Hellinger distance |h| / (2 scale) for a shift h, linear instead "
        "of quadratic), so the location Fisher information is +inf; the pointwise score "
        "d/dz log q is 0 inside the support and misses the moving edges"
    ),
    "exponential": (
        "the exponential density jumps from 0 to 1/scale at its start loc, which moves with loc: "
        "the model is not differentiable in quadratic mean (squared Hellinger distance "
        "1 - exp(-|h| / (2 scale)) for a shift h, linear instead of quadratic), so the location "
        "Fisher information is +inf; the pointwise score -1/scale has mean 1/scale != 0, so "
        "E[(d/dz log q)^2] = 1/scale^2 is not a Fisher information"
    ),
}
assert set(LOCATION_FISHER) == set(FAMILIES)

#: The estimators of the penalty's Fisher information.
ESTIMATORS = ("closed_form", "score")
_ALIASES = {"closed_form": "closed_form", "closed": "closed_form", "score": "score",
            "mc_score": "score"}

#: The authors' clamp on each squared score before averaging (``torch.clamp(FI, max=88.)``).
AUTHORS_SCORE_CLAMP = 88.0


def fisher_information_available(name: str) -> tuple[bool, str]:
    """``(True, "")`` if the family has a finite location Fisher information, else
    ``(False, reason)``; ValueError for an unknown family name."""
    key = str(name).strip().lower()
    if key not in LOCATION_FISHER:
        raise ValueError(f"unknown family {name!r}; valid families are: {', '.join(FAMILIES)}")
    value = LOCATION_FISHER[key]
    return (True, "") if isinstance(value, float) else (False, value)


def _constant(q) -> float:
    if not isinstance(q, LocationScale):
        raise ValueError(f"expected an autovae location-scale family, got {type(q).__name__}")
    ok, reason = fisher_information_available(q.name)
    if not ok:
        raise ValueError(f"{q.name} posterior has no finite location Fisher information: {reason}")
    return LOCATION_FISHER[q.name]


def location_fisher(q: LocationScale) -> torch.Tensor:
    """Closed-form location Fisher information ``I_f / scale^2``, shape ``q.loc.shape``.

    Differentiable in ``q.scale``. ValueError (with the failing regularity condition) for the
    uniform and exponential families.
    """
    return _constant(q) / q.scale.pow(2)


def score_squared(q: LocationScale, z: torch.Tensor) -> torch.Tensor:
    """``(d/dz log q(z))^2`` elementwise by autograd; shape of ``z``, ``(*sample, *batch)``.

    When gradients are enabled and ``z`` or the parameters carry a graph (a reparameterised
    draw), the result stays differentiable in them; otherwise it is detached. Works in
    ``torch.no_grad()`` too.
    """
    _constant(q)
    outer = torch.is_grad_enabled()
    track = outer and (z.requires_grad or q.loc.requires_grad or q.scale.requires_grad)
    with torch.enable_grad():
        if not z.requires_grad:
            z = z.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(q.log_prob(z).sum(), z, create_graph=track)
    return score.pow(2) if track else score.detach().pow(2)


def score_fisher(q: LocationScale, samples: int = 1, clamp: float | None = None,
                 z: torch.Tensor | None = None) -> torch.Tensor:
    """Monte-Carlo (score) estimate of the location Fisher information, shape ``q.loc.shape``.

    Averages :func:`score_squared` over ``samples`` reparameterised draws (or over the given
    draws ``z`` of shape ``(samples, *q.batch_shape)``). ``clamp`` caps each squared score before
    the average, as the authors do with 88 (:data:`AUTHORS_SCORE_CLAMP`; biased downward when
    ``I_f / scale^2`` is not small against it); the default ``None`` keeps the estimate unbiased.
    """
    _constant(q)
    if z is None:
        if int(samples) != samples or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        z = q.rsample((int(samples),))
    s2 = score_squared(q, z)
    if clamp is not None:
        s2 = s2.clamp(max=float(clamp))
    return s2.mean(0)


def entropy_power(q: LocationScale) -> torch.Tensor:
    """Entropy power ``exp(2 h) / (2 pi e)`` per element (every family), shape ``q.loc.shape``;
    equals the variance for a normal."""
    return torch.exp(2 * q.entropy()) / _TWO_PI_E


def fisher_shannon(q: LocationScale) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J, N)`` per element: closed-form location Fisher information and entropy power.

    Stam's inequality ``J * N >= 1`` holds elementwise, with equality iff q is normal.
    """
    return location_fisher(q), entropy_power(q)


def check_fisher(spec) -> None:
    """ValueError naming every block of a LatentSpec whose posterior has no finite location
    Fisher information (with the reason); returns None when all have one."""
    bad = []
    for block in spec.blocks:
        ok, reason = fisher_information_available(block.posterior)
        if not ok:
            bad.append(f"block {block}: {reason}")
    if bad:
        raise ValueError("a Fisher penalty needs every posterior's location Fisher information; "
                         + "; ".join(bad))


def _estimator(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _ALIASES:
        raise ValueError(f"unknown Fisher estimator {name!r}; valid: {', '.join(ESTIMATORS)}")
    return _ALIASES[key]


def posterior_fisher(spec, q: Sequence[LocationScale], estimator: str = "closed_form",
                     samples: int = 1, clamp: float | None = None,
                     z: torch.Tensor | None = None) -> torch.Tensor:
    """Location Fisher information of every latent dimension, shape ``(*batch, dim)``.

    Args:
        spec: the LatentSpec; checked up front with :func:`check_fisher`.
        q: its Posterior (one family per block, in block order).
        estimator: ``"closed_form"`` or ``"score"`` (``"closed-form"``, ``"mc_score"`` accepted).
        samples, clamp: for the score estimator (see :func:`score_fisher`).
        z: optional draws ``(samples, *batch, dim)`` to reuse for the score estimator.
    """
    kind = _estimator(estimator)
    check_fisher(spec)
    if len(q) != len(spec.blocks):
        raise ValueError(f"posterior has {len(q)} blocks, the spec ({spec}) has "
                         f"{len(spec.blocks)}")
    out = []
    for qi, sl in zip(q, spec.slices, strict=True):
        if kind == "closed_form":
            out.append(location_fisher(qi))
        else:
            out.append(score_fisher(qi, samples, clamp, None if z is None else z[..., sl]))
    return torch.cat(out, dim=-1)


def posterior_fisher_shannon(spec, q: Sequence[LocationScale]) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """The posterior's point in the Fisher-Shannon plane, ``(J, N)`` each of shape ``(*batch,)``.

    ``J = sum_j J_j`` (closed form, the trace of the Fisher matrix of the product density) and
    ``N = exp(2 h / dim) / (2 pi e)`` with ``h = sum_j h_j``; Stam: ``J * N / dim >= 1``.
    """
    check_fisher(spec)
    J = posterior_fisher(spec, q).sum(-1)
    h = torch.cat([qi.entropy() for qi in q], dim=-1).sum(-1)
    return J, torch.exp(2 * h / spec.dim) / _TWO_PI_E


def _nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fisher {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"fisher {name} must be finite and >= 0, got {value!r}")
    return float(value)


def fisher_penalty(J: torch.Tensor | Sequence[torch.Tensor], target: float,
                   weight: float) -> torch.Tensor:
    """The Fisher-autoencoder penalty ``weight * |mean(J) - target|``, a scalar tensor.

    Following the authors' code (``loss += ksi * (FI - F).abs()`` with ``FI`` the mean of the
    squared scores over the batch AND the latent dimensions), ``mean(J)`` is the mean over every
    element of ``J`` (e.g. ``(B, dim)`` from :func:`posterior_fisher`, or a list of per-block
    tensors, pooled by element), so ``target`` is on the per-dimension scale: a posterior with
    the standard normal prior's width has ``J = 1``. The penalty is added once per batch to the
    batch-mean loss. ``weight`` and ``target`` must be finite and >= 0 (authors' defaults: 0.1, 5).
    """
    target = _nonnegative("target", target)
    weight = _nonnegative("weight", weight)
    if torch.is_tensor(J):
        mean = J.mean()
    else:
        parts = [j.reshape(-1) for j in J]
        if not parts:
            raise ValueError("fisher_penalty needs at least one Fisher information tensor")
        mean = torch.cat(parts).mean()
    return weight * (mean - target).abs()
