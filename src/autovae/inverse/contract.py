"""The kernel contract and its target: what every MCMC kernel implements and samples.

:class:`Target` (a posterior exp(-phi) p0 on z of shape (C, d), with cost counters) and
:class:`MCMCKernel` (one iteration for every chain of a batch); the kernels themselves are in
:mod:`autovae.inverse.kernels` (pCN, RWM, MALA, NUTS) and :mod:`autovae.inverse.chees`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["MCMCKernel", "Target"]


# -- target -------------------------------------------------------------------------------------
def _normal_log_prior(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(-1)


class Target:
    """A posterior exp(-phi(z)) p0(z) on z of shape (C, d).

    ``phi(z)``: misfit, z (C, d) -> (C,). ``prior``: ``"normal"`` (N(0, I), the one pCN needs)
    or a callable log density z (C, d) -> (C,) (constants may be dropped). ``evals`` counts the
    rows phi has been evaluated on. ``solves``: a callable returning the PDE solves spent so far
    (forward and adjoint, e.g. a forward model's counter); without it, solves are the rows
    evaluated plus the gradients taken. ``gradient``: False when phi cannot be differentiated
    (gradient kernels are then refused, with ``gradient_reason``). ``residuals``: the whitened
    residuals r(z) (C, P) with phi = |r|^2 / 2, when known (a Gauss-Newton preconditioner
    uses their Jacobian).
    """

    def __init__(self, phi: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 prior: str | Callable[[torch.Tensor], torch.Tensor] = "normal",
                 dtype: torch.dtype = torch.float64, solves: Callable[[], int] | None = None,
                 gradient: bool = True, gradient_reason: str = "",
                 residuals: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not callable(phi):
            raise ValueError(f"phi must be a callable z (C, d) -> (C,), got {type(phi).__name__}")
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(prior, str) and prior == "normal":
            self._log_prior = _normal_log_prior
        elif callable(prior):
            self._log_prior = prior
        else:
            raise ValueError(f"prior must be 'normal' or a callable log density, got {prior!r}")
        self._phi = phi
        self.dim = int(dim)
        self.normal_prior = isinstance(prior, str)
        self.dtype = dtype
        self.evals = 0
        self.gradients = 0
        self.solves_elsewhere = 0  # spent by worker processes on copies of this target
        self._solves = solves
        self.gradient = bool(gradient)
        self.gradient_reason = gradient_reason
        self.residuals = residuals

    @property
    def solves(self) -> int:
        """PDE solves so far (forward and adjoint)."""
        if self._solves is None:  # evals and gradients include the workers' already
            return self.evals + self.gradients
        return int(self._solves()) + self.solves_elsewhere

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Misfit, (C, d) -> (C,)."""
        out = self._phi(z)
        self.evals += z.shape[0]
        if out.shape != z.shape[:1]:
            raise ValueError(f"phi returned shape {tuple(out.shape)} for z of shape "
                             f"{tuple(z.shape)}; it must return one value per row, "
                             f"({z.shape[0]},)")
        return out

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """Log prior density (up to a constant), (C, d) -> (C,)."""
        return self._log_prior(z)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """U(z) = phi(z) - log p0(z), (C, d) -> (C,)."""
        return self.phi(z) - self.log_prior(z)

    def gauss_newton(self, z: torch.Tensor) -> torch.Tensor:
        """I + J^T J at each row of z, (C, d, d), J the Jacobian of the residuals (one backward
        pass per observation, batched over rows): the Gauss-Newton Hessian of the potential
        with a N(0, I) prior's curvature (used as is for other priors)."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            r = self.residuals(z)
            self.evals += z.shape[0]
            rows = [torch.autograd.grad(r[:, k].sum(), z, retain_graph=k < r.shape[1] - 1)[0]
                    for k in range(r.shape[1])]
        self.gradients += z.shape[0] * r.shape[1]
        J = torch.stack(rows, 1)  # (C, P, d)
        eye = torch.eye(z.shape[1], dtype=z.dtype)
        return eye + J.transpose(1, 2) @ J

    def potential_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U(z) (C,) and its gradient (C, d) by autograd (rows are independent)."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            u = self.potential(z)
            finite = torch.isfinite(u)
            (g,) = torch.autograd.grad(torch.where(finite, u, 0.0).sum(), z)
        self.gradients += z.shape[0]
        return u.detach(), g


def _check_target_accept(value) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"target_accept must lie in (0, 1), got {value!r}")
    return float(value)


def _check_step(name: str, value, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)
                                       and 0 < value <= upper):
        bound = f"in (0, {upper:g}]" if math.isfinite(upper) else "positive and finite"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


# -- the contract -------------------------------------------------------------------------------
class MCMCKernel(abc.ABC):
    """One iteration for every chain of a (C, d) batch.

    ``setup(target, z0, seed, warmup)`` starts the chains; ``sample(target, gen, adapting)``
    advances them one iteration and returns per-chain statistics (C,) including ``accepted`` (bool),
    ``nonfinite`` (the chain cannot go on), ``step_size`` and, where the kernel knows it,
    ``accept_prob`` (the iteration's acceptance probability: what progress bars and summaries
    average); ``end_warmup()`` freezes adaptation; ``state_dict``/``load_state_dict`` hold what
    resume needs (with the runner's generator, an exact continuation). ``z`` is the current
    state (C, d). ``checkpoint_in_warmup`` (default True): the state can be saved during
    warm-up; a kernel that sets it False has its warm-up rerun from its seed after a kill.
    """

    name = "kernel"
    needs_gradient = False
    # constructor keywords a user may set (flags and config keys; autovae.settings.option),
    # beside step_size and target_accept, which every kernel takes
    options: dict[str, dict[str, Any]] = {}
    checkpoint_in_warmup = True

    def validate(self, target: Target) -> None:
        """Refuse a target this kernel cannot sample, saying why and what to use."""
        if self.needs_gradient and not target.gradient:
            raise ValueError(f"--kernel {self.name} needs gradients, but {target.gradient_reason}"
                             "; use a gradient-free kernel (pcn or rwm)")

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The settings that define the chain (stored, compared on resume)."""

    @abc.abstractmethod
    def setup(self, target: Target, z0: torch.Tensor, seed: int, warmup: int) -> torch.Tensor:
        """Start every chain at its row of z0 (C, d), before ``warmup`` adapting iterations;
        returns the potential there (C,) (the runner refuses a non-finite start)."""

    @abc.abstractmethod
    def sample(self, target: Target, gen: torch.Generator, adapting: bool
               ) -> dict[str, torch.Tensor]:
        """One iteration for every chain; per-chain statistics (C,)."""

    def end_warmup(self, target: Target) -> None:  # noqa: B027 (optional hook)
        """Freeze adaptation (called once, after the last warm-up iteration)."""

    def stop_reason(self) -> str:
        """Why the run must stop now ("" to go on), checked after each sampling iteration."""
        return ""

    def mean_accept_prob(self) -> torch.Tensor | None:
        """The kernel's own mean acceptance probability per chain, if it keeps one."""
        return None

    @abc.abstractmethod
    def step_sizes(self) -> torch.Tensor:
        """Current step size per chain, (C,) float64."""

    @property
    @abc.abstractmethod
    def z(self) -> torch.Tensor:
        """Current state, (C, d)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What resume needs."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
