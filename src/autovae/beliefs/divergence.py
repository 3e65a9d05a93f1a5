"""KL(q || p) between any two location-scale families.

``kl(q, p)`` is elementwise over broadcast batch shapes and picks, per ordered pair of families:

* the closed form, where one exists (elementary ones in ``closed_forms.py``, special-function ones
  in ``special.py``);
* ``+inf``, where the KL is infinite for every parameter (support mismatch or a divergent moment),
  or outside the parameter region of a *conditional* pair;
* otherwise a deterministic tanh-sinh quadrature estimate in the posterior's quantile space,
  ``sum_i w_i [log q(F_q^-1(u_i)) - log p(F_q^-1(u_i))]``, whose gradients flow through the
  quantile function.

``PAIRS`` is the queryable table behind that choice: the search uses it to keep impossible pairs
out, and each conditional pair carries the rule (``constrain``) that a :class:`LatentSpec` uses
to keep it finite. Every pair is also registered with
:func:`torch.distributions.kl.register_kl`, so ``torch.distributions.kl_divergence`` works on
autovae's families, and between them and torch's own ``Normal``, ``Laplace``, ``Cauchy``,
``Uniform``, ``Gumbel`` and ``Exponential`` (in both directions); :func:`kl` accepts those too.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributions as td
from torch.distributions.kl import register_kl

from . import closed_forms as cf
from . import special as sf
from .families import FAMILIES, LocationScale, family, family_class

__all__ = ["PAIRS", "PairInfo", "PairKind", "as_family", "kl", "numerical_kl", "pair_info",
           "pair_table"]

KLFormula = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (raw_loc, raw_scale, softplus scale, prior loc, prior scale, min_scale) -> (loc, scale)
Constraint = Callable[..., tuple[torch.Tensor, torch.Tensor]]
MARGIN = 1e-3  # conditional pairs keep this relative distance from the edge of finiteness


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
    condition under which a conditional pair is finite; ``constrain`` (conditional pairs only)
    maps raw encoder outputs to a posterior (loc, scale) inside that region.
    """

    posterior: str
    prior: str
    kind: PairKind
    formula: KLFormula | None = None
    equal_scale: bool = False
    note: str = ""
    constrain: Constraint | None = None

    def __post_init__(self):
        if (self.kind is PairKind.CONDITIONAL) != (self.constrain is not None):
            raise ValueError(f"{self.posterior}/{self.prior}: a conditional pair needs a "
                             "constrain rule, and only a conditional pair has one")

    @property
    def finite(self) -> bool:
        """Whether some parameters give a finite KL (everything but INFINITE)."""
        return self.kind is not PairKind.INFINITE


_SUPPORT = "support mismatch: the posterior puts mass outside the prior's bounded support"
_CAUCHY_TAIL = ("divergent moment: a Cauchy posterior's tails make E_q[-log p] infinite; "
                "pair a Cauchy posterior with a Cauchy prior")


def _below(sigma: torch.Tensor, raw: torch.Tensor, min_scale: float) -> torch.Tensor:
    """A scale in [min_scale, (1 - MARGIN) * sigma): strictly below the prior's."""
    return (sigma * (1 - MARGIN) * torch.sigmoid(raw)).clamp(min=min_scale)


def _narrower(raw_loc, raw_scale, scale, mu, sigma, min_scale):
    """Scale below the prior's (Laplace or logistic posterior, Gumbel prior)."""
    return raw_loc, _below(sigma, raw_scale, min_scale)


def _nested(raw_loc, raw_scale, scale, mu, sigma, min_scale):
    """The posterior interval nested in the prior's (uniform/uniform)."""
    half = _below(sigma, raw_scale, min_scale)
    return mu + (sigma - half) * torch.tanh(raw_loc), half


def _start_after(raw_loc, raw_scale, scale, mu, sigma, min_scale):
    """The posterior starts after the prior's start (exponential/exponential)."""
    return mu + F.softplus(raw_loc), scale


def _interval_after(raw_loc, raw_scale, scale, mu, sigma, min_scale):
    """The whole posterior interval after the prior's start (uniform/exponential)."""
    return mu + scale + F.softplus(raw_loc), scale


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
        ("laplace", "gumbel"): (cf.kl_laplace_gumbel, "finite only when scale < prior scale",
                                _narrower),
        ("logistic", "gumbel"): (cf.kl_logistic_gumbel, "finite only when scale < prior scale",
                                 _narrower),
        ("uniform", "uniform"): (cf.kl_uniform_uniform,
                                 "finite only when [loc-scale, loc+scale] lies inside the prior's",
                                 _nested),
        ("uniform", "exponential"): (cf.kl_uniform_exponential,
                                     "finite only when loc - scale >= prior loc",
                                     _interval_after),
        ("exponential", "exponential"): (cf.kl_exponential_exponential,
                                         "finite only when loc >= prior loc", _start_after),
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
                formula, note, constrain = conditional[key]
                info = PairInfo(q, p, PairKind.CONDITIONAL, formula, note=note,
                                constrain=constrain)
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
# torch's own families, as autovae's (loc, scale): same densities, autovae's parameterisation
_TORCH_FAMILIES = {
    td.Normal: ("normal", lambda d: (d.loc, d.scale)),
    td.Laplace: ("laplace", lambda d: (d.loc, d.scale)),
    td.Cauchy: ("cauchy", lambda d: (d.loc, d.scale)),
    td.Gumbel: ("gumbel", lambda d: (d.loc, d.scale)),
    td.Uniform: ("uniform", lambda d: ((d.low + d.high) / 2, (d.high - d.low) / 2)),
    td.Exponential: ("exponential", lambda d: (torch.zeros_like(d.rate), 1 / d.rate)),
}


def as_family(d, what: str = "distribution") -> LocationScale:
    """``d`` as an autovae family: autovae's own are returned as they are; torch's Normal,
    Laplace, Cauchy, Gumbel, Uniform and Exponential are converted (same density)."""
    if isinstance(d, LocationScale):
        return d
    converter = _TORCH_FAMILIES.get(type(d))
    if converter is None:
        torch_names = ", ".join(f"torch.distributions.{c.__name__}" for c in _TORCH_FAMILIES)
        raise ValueError(f"{what}: {type(d).__name__} is not supported; give an autovae family "
                         f"(autovae.family(name, loc, scale)) or one of {torch_names}")
    name, params = converter
    return family_class(name)(*params(d), validate_args=False)


def kl(q: LocationScale, p: LocationScale) -> torch.Tensor:
    """KL(q || p), elementwise over the broadcast batch shape of q and p.

    Closed form where one exists, +inf where the KL is infinite, a quadrature estimate otherwise.
    ``q`` and ``p`` are autovae families or torch's equivalents (see :func:`as_family`).

    >>> q = family("logistic", torch.tensor(0.3), torch.tensor(0.7))
    >>> kl(q, torch.distributions.Normal(0.0, 1.0))  # closed form
    tensor(0.1266)
    >>> kl(family("cauchy", 0.0, 1.0), family("normal", 0.0, 1.0))  # divergent moment
    tensor(inf)
    """
    q, p = as_family(q, "q (the posterior)"), as_family(p, "p (the prior)")
    info = PAIRS[(q.name, p.name)]
    try:
        torch.broadcast_shapes(q.batch_shape, p.batch_shape)
    except RuntimeError:
        raise ValueError(f"kl: q (the posterior) has batch shape {tuple(q.batch_shape)} and p "
                         f"(the prior) {tuple(p.batch_shape)}; they do not broadcast") from None
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
    """Every pair of autovae families, and each autovae family against each torch family that
    has an autovae counterpart, both ways (torch's own pairs stay torch's)."""
    ours, theirs = list(FAMILIES.values()), list(_TORCH_FAMILIES)
    for q_cls in ours:
        for p_cls in ours + theirs:
            register_kl(q_cls, p_cls)(kl)
            if p_cls in theirs:
                register_kl(p_cls, q_cls)(kl)


_register_all()


_MARK = {PairKind.CLOSED: "", PairKind.CONDITIONAL: "*", PairKind.NUMERICAL: "~",
         PairKind.INFINITE: ""}


def pair_table(loc: float = 0.3, scale: float = 0.7, prior_loc: float = 0.0,
               prior_scale: float = 1.0) -> str:
    """The 7x7 table of KL(posterior || prior) at the given parameters, as text."""
    names = list(FAMILIES)
    width = 12
    lines = [
        f"KL(q || p), q = posterior(loc={loc:g}, scale={scale:g}) in rows, "
        f"p = prior(loc={prior_loc:g}, scale={prior_scale:g}) in columns",
        "".ljust(width) + "".join(n.rjust(width) for n in names),
    ]
    for q_name in names:
        q = family(q_name, torch.tensor(loc, dtype=torch.float64),
                   torch.tensor(scale, dtype=torch.float64))
        cells = []
        for p_name in names:
            p = family(p_name, torch.tensor(prior_loc, dtype=torch.float64),
                       torch.tensor(prior_scale, dtype=torch.float64))
            info = PAIRS[(q_name, p_name)]
            value = kl(q, p).item()
            text = "inf" if math.isinf(value) else f"{value:.4f}"
            cells.append((text + _MARK[info.kind]).rjust(width))
        lines.append(q_name.ljust(width) + "".join(cells))
    lines += [
        "",
        "plain: closed form   *: closed form, finite only under a condition   "
        "~: numerical (quadrature)",
        "inf:  infinite here; pairs infinite for every parameter are refused in a LatentSpec:",
    ]
    by_reason: dict[str, list[str]] = {}
    for (q_name, p_name), info in PAIRS.items():
        if info.kind is PairKind.INFINITE:
            by_reason.setdefault(info.note, []).append(f"{q_name}/{p_name}")
    for reason, pairs in by_reason.items():
        lines.append(f"  {reason}:\n    {', '.join(pairs)}")
    for (q_name, p_name), info in PAIRS.items():
        if info.kind is PairKind.CONDITIONAL:
            lines.append(f"  {q_name}/{p_name} (conditional): {info.note}")
    return "\n".join(lines)
