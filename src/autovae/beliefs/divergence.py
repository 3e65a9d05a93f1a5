"""KL(q || p) between any two location-scale families.

``kl(q, p)`` is elementwise over broadcast batch shapes and picks, per ordered pair of families:

* the closed form, where one exists (elementary ones in ``closed_forms.py``, special-function ones
  in ``special.py``);
* ``+inf``, where the KL is infinite for every parameter (support mismatch or a divergent moment),
  or outside the parameter region of a *conditional* pair;
* otherwise a deterministic Gauss-Legendre estimate in the posterior's quantile space,
  ``sum_i w_i [log q(F_q^-1(u_i)) - log p(F_q^-1(u_i))]``, whose gradients flow through the
  quantile function.

``PAIRS`` is the queryable table behind that choice: the search uses it to keep impossible pairs
out. Every pair is also registered with :func:`torch.distributions.kl.register_kl`, so
``torch.distributions.kl_divergence`` works on autovae's families.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions.kl import register_kl

from . import closed_forms as cf
from . import special as sf
from .families import FAMILIES, LocationScale, family_class

__all__ = ["PAIRS", "PairInfo", "PairKind", "kl", "numerical_kl", "pair_info"]

KLFormula = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PairKind(str, enum.Enum):
    """How KL(q || p) is computed for an ordered pair of families."""

    CLOSED = "closed form"
    CONDITIONAL = "conditional"  # closed form, finite only inside a parameter region
    NUMERICAL = "numerical"
    INFINITE = "infinite"


@dataclass(frozen=True)
class PairInfo:
    """One cell of the pair table.

    ``formula`` is the closed form (for NUMERICAL pairs with ``equal_scale`` set, the closed form
    that holds only when the two scales are equal); ``note`` says why a pair is infinite, or the
    condition under which a conditional pair is finite.
    """

    posterior: str
    prior: str
    kind: PairKind
    formula: KLFormula | None = None
    equal_scale: bool = False
    note: str = ""

    @property
    def finite(self) -> bool:
        """Whether some parameters give a finite KL (everything but INFINITE)."""
        return self.kind is not PairKind.INFINITE


_SUPPORT = "support mismatch: the posterior puts mass outside the prior's bounded support"
_CAUCHY_TAIL = ("divergent moment: a Cauchy posterior's tails make E_q[-log p] infinite; "
                "pair a Cauchy posterior with a Cauchy prior")


def _build_table() -> dict[tuple[str, str], PairInfo]:
    closed = {
        ("normal", "normal"): cf.kl_normal_normal,
        ("laplace", "normal"): cf.kl_laplace_normal,
        ("logistic", "normal"): cf.kl_logistic_normal,
        ("uniform", "normal"): cf.kl_uniform_normal,
        ("gumbel", "normal"): cf.kl_gumbel_normal,
        ("exponential", "normal"): cf.kl_exponential_normal,
        ("normal", "laplace"): cf.kl_normal_laplace,
        ("laplace", "laplace"): cf.kl_laplace_laplace,
        ("logistic", "laplace"): cf.kl_logistic_laplace,
        ("uniform", "laplace"): cf.kl_uniform_laplace,
        ("exponential", "laplace"): cf.kl_exponential_laplace,
        ("gumbel", "laplace"): sf.kl_gumbel_laplace,
        ("cauchy", "cauchy"): cf.kl_cauchy_cauchy,
        ("uniform", "cauchy"): cf.kl_uniform_cauchy,
        ("laplace", "cauchy"): sf.kl_laplace_cauchy,
        ("exponential", "cauchy"): sf.kl_exponential_cauchy,
        ("uniform", "logistic"): sf.kl_uniform_logistic,
        ("normal", "gumbel"): cf.kl_normal_gumbel,
        ("uniform", "gumbel"): cf.kl_uniform_gumbel,
        ("gumbel", "gumbel"): cf.kl_gumbel_gumbel,
        ("exponential", "gumbel"): cf.kl_exponential_gumbel,
    }
    conditional = {
        ("laplace", "gumbel"): (cf.kl_laplace_gumbel, "finite only when scale < prior scale"),
        ("logistic", "gumbel"): (cf.kl_logistic_gumbel, "finite only when scale < prior scale"),
        ("uniform", "uniform"): (cf.kl_uniform_uniform,
                                 "finite only when [loc-scale, loc+scale] lies inside the prior's"),
        ("uniform", "exponential"): (cf.kl_uniform_exponential,
                                     "finite only when loc - scale >= prior loc"),
        ("exponential", "exponential"): (cf.kl_exponential_exponential,
                                         "finite only when loc >= prior loc"),
    }
    equal_scale = {
        ("logistic", "logistic"): sf.kl_logistic_logistic_equal_scale,
        ("exponential", "logistic"): sf.kl_exponential_logistic_equal_scale,
        ("gumbel", "logistic"): sf.kl_gumbel_logistic_equal_scale,
    }
    table = {}
    for q in FAMILIES:
        for p in FAMILIES:
            key = (q, p)
            if key in closed:
                info = PairInfo(q, p, PairKind.CLOSED, closed[key])
            elif key in conditional:
                formula, note = conditional[key]
                info = PairInfo(q, p, PairKind.CONDITIONAL, formula, note=note)
            elif p in ("uniform", "exponential") or (q == "cauchy" and p == "exponential"):
                info = PairInfo(q, p, PairKind.INFINITE, note=_SUPPORT)
            elif q == "cauchy":
                info = PairInfo(q, p, PairKind.INFINITE, note=_CAUCHY_TAIL)
            elif key in equal_scale:
                info = PairInfo(q, p, PairKind.NUMERICAL, equal_scale[key], equal_scale=True,
                                note="closed form when the two scales are equal")
            else:
                info = PairInfo(q, p, PairKind.NUMERICAL)
            table[key] = info
    return table


PAIRS: dict[tuple[str, str], PairInfo] = _build_table()


def pair_info(posterior: str, prior: str) -> PairInfo:
    """The table entry for a (posterior, prior) pair of family names (case-insensitive)."""
    return PAIRS[(family_class(posterior).name, family_class(prior).name)]


# -- numerical estimate -------------------------------------------------------------------------
# Tanh-sinh (double-exponential) quadrature over the posterior's quantiles u. The integrand has
# logarithmic singularities at u = 0 and 1 (the tails), a kink at the median for a Laplace
# posterior, and a sharp feature where the prior is centred when the prior is much narrower than
# the posterior. Tanh-sinh converges exponentially despite all three when they sit at panel ends,
# so [0, 1] is cut into four panels at 1/2 and at u0 = F_q(prior loc). Nodes are kept as tail
# masses (u for the lower half, 1 - u for the upper half) so that both tails are exact.
QUADRATURE_STEP = 1 / 4
_T_MAX = 3.2  # sigmoid(pi sinh t) < 1e-300 beyond this


@functools.lru_cache(maxsize=32)
def _tanh_sinh_rule(step: float, dtype: torch.dtype, device: str):
    """Nodes c in (0, 1) and weights for the integral over [0, 1] (c = sigmoid(pi sinh t))."""
    t = np.arange(-math.ceil(_T_MAX / step), math.ceil(_T_MAX / step) + 1) * step
    y = math.pi * np.sinh(t)
    c = 1 / (1 + np.exp(-y))
    w = step * math.pi * np.cosh(t) / (2 + np.exp(y) + np.exp(-y))
    keep = (c > 1e-300) & (w > 0)
    return (torch.tensor(c[keep], dtype=dtype, device=device),
            torch.tensor(w[keep], dtype=dtype, device=device))


def numerical_kl(q: LocationScale, p: LocationScale,
                 step: float = QUADRATURE_STEP) -> torch.Tensor:
    """Deterministic KL estimate by quadrature over the posterior's quantiles.

    ``sum_i w_i [log q(x_i) - log p(x_i)]`` with ``x_i = F_q^-1(u_i)`` on four tanh-sinh panels
    (4 x 27 nodes at the default step), differentiable in all four parameters through
    ``x_i = loc + scale * eps_i``. Relative error below 2e-5 on every reference case whose prior
    has a smooth density (the numerical pairs all do).
    """
    loc, scale, p_loc = torch.broadcast_tensors(q.loc, q.scale, p.loc)
    c, w = _tanh_sinh_rule(step, loc.dtype, str(loc.device))
    c = c.view((-1,) + (1,) * loc.dim())
    w = w.view((-1,) + (1,) * loc.dim())
    with torch.no_grad():  # the split point changes the rule, not the integral
        u0 = q._cdf_std((p_loc - loc) / scale)
        a = u0.clamp(max=0.5)            # lower half: panels [0, a] and [a, 1/2]
        b_tail = (1 - u0).clamp(max=0.5)  # upper half, as tail masses: [0, b_tail], [b_tail, 1/2]
    tiny = torch.finfo(loc.dtype).tiny
    lower = torch.cat([(a * c).clamp(min=tiny), a + (0.5 - a) * c])
    upper = torch.cat([(b_tail * c).clamp(min=tiny), b_tail + (0.5 - b_tail) * c])
    weights = torch.cat([a * w, (0.5 - a) * w, b_tail * w, (0.5 - b_tail) * w])
    eps = torch.cat([q._icdf_std(lower), q._icdf_upper_std(upper)])
    # log q from the standard draw itself: exact at the ends of a bounded support
    integrand = q._log_prob_std(eps) - scale.log() - p.log_prob(loc + scale * eps)
    return (weights * integrand).sum(0)


# -- dispatch -----------------------------------------------------------------------------------
def kl(q: LocationScale, p: LocationScale) -> torch.Tensor:
    """KL(q || p), elementwise over the broadcast batch shape of q and p.

    Closed form where one exists, +inf where the KL is infinite, a quadrature estimate otherwise.
    """
    info = PAIRS[(q.name, p.name)]
    args = torch.broadcast_tensors(q.loc, q.scale, p.loc, p.scale)
    if info.kind is PairKind.INFINITE:
        return torch.full_like(args[0], math.inf)
    if info.kind is not PairKind.NUMERICAL:
        return info.formula(*args)
    estimate = numerical_kl(q, p)
    if info.equal_scale:
        same = args[1] == args[3]
        if same.any():
            return torch.where(same, info.formula(*args), estimate)
    return estimate


def _register_all() -> None:
    for q_cls in FAMILIES.values():
        for p_cls in FAMILIES.values():
            register_kl(q_cls, p_cls)(kl)


_register_all()
