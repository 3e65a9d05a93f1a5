"""MCMC kernels behind one contract, and the target they sample.

Every kernel advances all chains of a (C, d) batch by one iteration per :meth:`MCMCKernel.sample`
call; the runner (:func:`autovae.inverse.chains.run_chains`) owns warm-up, thinning,
checkpoints and resume, the shape of Pyro's ``MCMCKernel`` / ``_gen_samples`` split.

* :class:`PCNKernel` -- preconditioned Crank-Nicolson for a N(0, I) prior; accepts on phi alone.
* :class:`RWMKernel` -- random-walk Metropolis on the potential U = phi - log p0.
* :class:`MALAKernel` -- Metropolis-adjusted Langevin on U (gradients by autograd).
* :class:`NUTSKernel` -- Pyro's NUTS on U, one Pyro kernel per chain, through Pyro's public API.

pCN, RWM and MALA adapt each chain's log step (Robbins-Monro toward a target acceptance, as
``pyro.infer.mcmc.RandomWalkKernel``) during warm-up only. NUTS adapts step size and mass
matrix in Pyro; its state (dual averaging, Welford mass-matrix estimate, adaptation window,
iteration counters) is read from and written back to Pyro's kernel, so every kernel checkpoints
during warm-up and resumes bit-identically there too.
"""

from __future__ import annotations

import abc
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..settings import Spec, option, specs_of_signature

__all__ = ["KERNELS", "MALAKernel", "MCMCKernel", "NUTSKernel", "PCNKernel", "RWMKernel",
           "Target", "kernel_options", "make_kernel", "option_readers"]


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
        self._solves = solves
        self.gradient = bool(gradient)
        self.gradient_reason = gradient_reason
        self.residuals = residuals

    @property
    def solves(self) -> int:
        """PDE solves so far (forward and adjoint)."""
        return int(self._solves()) if self._solves is not None else self.evals + self.gradients

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


# -- Metropolis kernels -------------------------------------------------------------------------
class MetropolisKernel(MCMCKernel):
    """Metropolis-Hastings with a per-chain step adapted on its log; subclasses define the
    proposal, the energy that the acceptance compares and any proposal correction."""

    options = {
        "adapt": option("adapt each chain's step toward target_accept during warm-up"),
        "shared_step": option("one step size for all chains (their mean log step)"),
        "adapt_rate": option("Robbins-Monro rate of the step adaptation", domain="positive"),
    }

    def __init__(self, step_size: float, target_accept: float, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5):
        self.step_size = _check_step("step_size", step_size, self._max_step)
        self.target_accept = _check_target_accept(target_accept)
        if not (isinstance(adapt_rate, (int, float)) and adapt_rate > 0):
            raise ValueError(f"adapt_rate must be positive, got {adapt_rate!r}")
        self.adapt = bool(adapt)
        self.shared_step = bool(shared_step)
        self.adapt_rate = float(adapt_rate)
        self.state: dict[str, Any] = {}

    _max_step = math.inf

    def config(self) -> dict[str, Any]:
        return {"kernel": self.name, "step_size": self.step_size,
                "target_accept": self.target_accept, "adapt": self.adapt,
                "shared_step": self.shared_step, "adapt_rate": self.adapt_rate}

    @abc.abstractmethod
    def _propose(self, z, step, gen, grad):
        """A proposal for each chain of z (C, d), with step sizes ``step`` (C, 1)."""

    @abc.abstractmethod
    def _energy(self, phi, log_prior):
        """The part of the potential that the acceptance ratio compares."""

    def _correction(self, z, z_new, grad, grad_new, step):
        """log q(z | z') - log q(z' | z) (0 for symmetric proposals)."""
        return 0.0

    def _evaluate(self, target: Target, z: torch.Tensor):
        """(phi, log p0, grad U or None) at z."""
        if self.needs_gradient:
            u, g = target.potential_and_grad(z)
            lp = target.log_prior(z).detach()
            return (u + lp), lp, g
        with torch.no_grad():
            return target.phi(z), target.log_prior(z), None

    def setup(self, target: Target, z0: torch.Tensor, seed: int, warmup: int) -> torch.Tensor:
        phi, lp0, grad = self._evaluate(target, z0)
        log_step = math.log(self.step_size)
        self.state = {"z": z0.clone(), "phi": phi, "log_prior": lp0, "grad": grad,
                      "log_step": torch.full((z0.shape[0],), log_step, dtype=z0.dtype),
                      "t": 0}
        return phi - lp0

    @property
    def z(self) -> torch.Tensor:
        return self.state["z"]

    def step_sizes(self) -> torch.Tensor:
        return self.state["log_step"].exp().to(torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def sample(self, target: Target, gen: torch.Generator, adapting: bool
               ) -> dict[str, torch.Tensor]:
        s = self.state
        z, step = s["z"], s["log_step"].exp().unsqueeze(-1)
        z_new = self._propose(z, step, gen, s["grad"])
        u = torch.rand(z.shape[0], generator=gen, dtype=z.dtype)
        phi_new, lp0_new, grad_new = self._evaluate(target, z_new)
        e_old = self._energy(s["phi"], s["log_prior"])
        e_new = self._energy(phi_new, lp0_new)
        bad = torch.isnan(e_new) | (e_new == -math.inf)
        log_ratio = e_old - e_new + self._correction(z, z_new, s["grad"], grad_new, step)
        log_ratio = torch.where(bad | torch.isnan(log_ratio), -math.inf, log_ratio)
        accept_prob = torch.exp(torch.clamp(log_ratio, max=0.0))
        accepted = u < accept_prob
        acc = accepted.unsqueeze(-1)
        s["z"] = torch.where(acc, z_new, z)
        s["phi"] = torch.where(accepted, phi_new, s["phi"])
        s["log_prior"] = torch.where(accepted, lp0_new, s["log_prior"])
        if grad_new is not None:
            s["grad"] = torch.where(acc, grad_new, s["grad"])
        if adapting and self.adapt:
            gain = max(0.001, self.adapt_rate / math.sqrt(1 + s["t"]))
            err = accept_prob - self.target_accept
            if self.shared_step:
                err = err.mean().expand_as(err)
            s["log_step"] = torch.clamp(s["log_step"] + gain * err, max=math.log(self._max_step))
            s["t"] += 1
        return {"accept_prob": accept_prob, "accepted": accepted, "nonfinite": bad,
                "step_size": s["log_step"].exp(), "lp": s["log_prior"] - s["phi"]}


class PCNKernel(MetropolisKernel):
    """Preconditioned Crank-Nicolson for a N(0, I) prior.

    z' = sqrt(1 - s^2) z + s xi, xi ~ N(0, I), accepted with min(1, exp(phi(z) - phi(z')))
    (the prior cancels). The step s (in (0, 1]) is adapted on log s toward ``target_accept``
    during warm-up, per chain unless ``shared_step`` (then by the chains' mean acceptance).
    """

    name = "pcn"
    _max_step = 1.0

    def __init__(self, step_size: float = 0.1, target_accept: float = 0.27, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5):
        super().__init__(step_size, target_accept, adapt, shared_step, adapt_rate)

    def validate(self, target: Target) -> None:
        if not target.normal_prior:
            raise ValueError("pCN needs a N(0, I) prior on the sampled coordinates; this prior "
                             "is not N(0, I): use --kernel rwm, mala or nuts")

    def _propose(self, z, step, gen, grad):
        xi = torch.randn(z.shape, generator=gen, dtype=z.dtype)
        return torch.sqrt(1 - step * step) * z + step * xi

    def _energy(self, phi, log_prior):
        return phi


class RWMKernel(MetropolisKernel):
    """Random-walk Metropolis z' = z + s xi on the full potential U = phi - log p0; the step s
    is adapted on log s toward ``target_accept`` during warm-up (0.234, Roberts et al.)."""

    name = "rwm"

    def __init__(self, step_size: float = 0.1, target_accept: float = 0.234, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5):
        super().__init__(step_size, target_accept, adapt, shared_step, adapt_rate)

    def _propose(self, z, step, gen, grad):
        return z + step * torch.randn(z.shape, generator=gen, dtype=z.dtype)

    def _energy(self, phi, log_prior):
        return phi - log_prior


class MALAKernel(MetropolisKernel):
    """Metropolis-adjusted Langevin, preconditioned: z' = z - s^2/2 M grad U(z) + s L xi with
    M = L L^T, and the Hastings correction of that asymmetric proposal. One gradient (a
    forward and an adjoint solve for a PDE) per iteration.

    Warm-up adapts each chain's step s toward ``target_accept`` (0.574, Roberts & Rosenthal
    1998) and, with ``precondition``, its own M at 15%, 40% and 75% of warm-up, the step
    adapting on for each new M: ``"gauss-newton"`` (the default when the target knows its
    residuals) inverts the Gauss-Newton Hessian I + J^T J at the chain's current point, which
    is the exact posterior covariance of a linear-Gaussian problem; ``"covariance"`` takes
    the covariance of the chain's draws since the previous update (plus 1e-6 I), the windowed
    scheme of Stan. ``"none"``: M = I.
    """

    name = "mala"
    needs_gradient = True

    options = {
        **MetropolisKernel.options,
        "precondition": option("MALA's preconditioner M: auto (gauss-newton where the target "
                               "knows its residuals, else covariance), gauss-newton, covariance "
                               "(the warm-up draws') or none",
                               choices=("auto", "gauss-newton", "covariance", "none")),
    }

    def __init__(self, step_size: float = 0.05, target_accept: float = 0.574, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5, precondition: str = "auto"):
        super().__init__(step_size, target_accept, adapt, shared_step, adapt_rate)
        if precondition not in ("auto", "gauss-newton", "covariance", "none"):
            raise ValueError(f"precondition must be auto, gauss-newton, covariance or none, got "
                             f"{precondition!r}")
        self.precondition = precondition

    def config(self) -> dict[str, Any]:
        return {**super().config(), "precondition": self.precondition}

    def _scheme(self, target: Target) -> str:
        if self.precondition == "auto":
            return "gauss-newton" if target.residuals is not None else "covariance"
        if self.precondition == "gauss-newton" and target.residuals is None:
            raise ValueError("precondition='gauss-newton' needs a target that knows its "
                             "residuals (an InverseProblem's target does)")
        return self.precondition

    def setup(self, target: Target, z0: torch.Tensor, seed: int, warmup: int) -> torch.Tensor:
        self._scheme(target)
        u0 = super().setup(target, z0, seed, warmup)
        c, d = z0.shape
        eye = torch.eye(d, dtype=z0.dtype).expand(c, d, d).clone()
        self.state.update(L=eye, windows=[int(f * warmup) for f in (0.15, 0.4, 0.75)], seen=0,
                          mean=torch.zeros(c, d, dtype=z0.dtype),
                          m2=torch.zeros(c, d, d, dtype=z0.dtype))
        return u0

    def sample(self, target: Target, gen: torch.Generator, adapting: bool
               ) -> dict[str, torch.Tensor]:
        out = super().sample(target, gen, adapting)
        s = self.state
        w, scheme = s["windows"], self._scheme(target)
        if not (adapting and self.adapt and scheme != "none" and s["t"] <= w[-1]):
            return out
        d = s["z"].shape[1]
        if scheme == "covariance" and s["t"] >= w[0]:
            s["seen"] += 1  # Welford since the previous update
            delta = s["z"] - s["mean"]
            s["mean"] = s["mean"] + delta / s["seen"]
            s["m2"] = s["m2"] + delta[:, :, None] * (s["z"] - s["mean"])[:, None, :]
        if s["t"] in w and (scheme == "gauss-newton" or (s["t"] > w[0] and s["seen"] > 2)):
            if scheme == "gauss-newton":
                cov = torch.linalg.inv(target.gauss_newton(s["z"]))
            else:
                cov = s["m2"] / (s["seen"] - 1)
            cov = 0.5 * (cov + cov.transpose(1, 2)) + 1e-6 * torch.eye(d, dtype=cov.dtype)
            s["L"] = torch.linalg.cholesky(cov)
            s["log_step"] = torch.full_like(s["log_step"], math.log(1.0 / d ** (1 / 6)))
            s.update(seen=0, mean=torch.zeros_like(s["mean"]), m2=torch.zeros_like(s["m2"]))
        return out

    def _propose(self, z, step, gen, grad):
        L = self.state["L"]
        drift = torch.einsum("cij,cj->ci", L, torch.einsum("cji,cj->ci", L, grad))
        xi = torch.randn(z.shape, generator=gen, dtype=z.dtype)
        return z - 0.5 * step * step * drift + step * torch.einsum("cij,cj->ci", L, xi)

    def _energy(self, phi, log_prior):
        return phi - log_prior

    def _correction(self, z, z_new, grad, grad_new, step):
        L = self.state["L"]

        def log_q(to, frm, g):  # log N(to; frm - s^2/2 M g, s^2 M) up to a shared constant
            drift = torch.einsum("cij,cj->ci", L, torch.einsum("cji,cj->ci", L, g))
            d = (to - frm + 0.5 * step * step * drift).unsqueeze(-1)
            w = torch.linalg.solve_triangular(L, d, upper=False).squeeze(-1)
            return -(w * w).sum(-1) / (2 * step[:, 0] ** 2)

        return log_q(z, z_new, grad_new) - log_q(z_new, z, grad)


# -- NUTS ---------------------------------------------------------------------------------------
class NUTSKernel(MCMCKernel):
    """Pyro's NUTS (``pyro.infer.mcmc.NUTS(potential_fn=...)``) on U, one Pyro kernel per chain.

    Step size (dual averaging toward ``target_accept``) and a diagonal (``full_mass``: dense)
    mass matrix are adapted by Pyro during warm-up; give it 50 steps or more. After warm-up the
    kernels are rebuilt with the adapted step and mass matrix frozen. Each chain keeps its own
    RNG stream. A run stops when one chain has ``max_divergent_run`` divergent post-warm-up
    iterations in a row.

    Checkpoints hold each Pyro kernel's state (:func:`_pyro_state`: iteration and acceptance
    counters, step size, dual-averaging state, adaptation window, mass matrix and its Welford
    estimate); resume rebuilds the kernel through Pyro's ``setup`` and writes that state back,
    so a kill in warm-up or after it continues bit-identically. Those are Pyro's private
    attributes (checked against pyro-ppl 1.9; a Pyro without them is refused on resume, naming
    the attribute).
    """

    name = "nuts"
    needs_gradient = True

    options = {
        "max_tree_depth": option("NUTS: the most doublings of a trajectory (1 to 20)",
                                 domain="count"),
        "full_mass": option("NUTS: adapt a dense mass matrix (default diagonal)"),
        "max_divergent_run": option("NUTS: stop after this many divergent iterations in a row",
                                    domain="count"),
    }

    def __init__(self, target_accept: float = 0.8, max_tree_depth: int = 10,
                 full_mass: bool = False, step_size: float = 1.0, max_divergent_run: int = 50):
        self.target_accept = _check_target_accept(target_accept)
        if isinstance(max_tree_depth, bool) or int(max_tree_depth) != max_tree_depth \
                or not 1 <= max_tree_depth <= 20:
            raise ValueError(f"max_tree_depth must be an integer in [1, 20], got "
                             f"{max_tree_depth!r}")
        self.max_tree_depth = int(max_tree_depth)
        self.full_mass = bool(full_mass)
        self.step_size = _check_step("step_size", step_size)
        self.max_divergent_run = int(max_divergent_run)
        self._chains: list[dict[str, Any]] = []
        self._pyro: list[Any] = []
        self._target: Target | None = None
        self._memo: OrderedDict[bytes, float] = OrderedDict()

    def config(self) -> dict[str, Any]:
        return {"kernel": self.name, "target_accept": self.target_accept,
                "max_tree_depth": self.max_tree_depth, "full_mass": self.full_mass,
                "step_size": self.step_size, "max_divergent_run": self.max_divergent_run}

    def validate(self, target: Target) -> None:
        super().validate(target)
        self._target = target  # the potential that load_state_dict's kernels are built on

    def _potential_fn(self, params):
        z = params["z"]
        u = self._target.potential(z.unsqueeze(0)).squeeze(0)
        if z.requires_grad:  # Pyro takes the gradient of this value
            self._target.gradients += 1
        key = z.detach().numpy().tobytes()
        self._memo[key] = float(u.detach())
        if len(self._memo) > 4096:
            self._memo.popitem(last=False)
        return u

    def _make(self, step_size: float | None):
        from pyro.infer.mcmc import NUTS

        if step_size is None:
            return NUTS(potential_fn=self._potential_fn, step_size=self.step_size,
                        adapt_step_size=True, adapt_mass_matrix=True, full_mass=self.full_mass,
                        target_accept_prob=self.target_accept,
                        max_tree_depth=self.max_tree_depth)
        return NUTS(potential_fn=self._potential_fn, step_size=step_size, adapt_step_size=False,
                    adapt_mass_matrix=False, full_mass=self.full_mass,
                    max_tree_depth=self.max_tree_depth)

    def _start(self, c: int, warmup: int | None, saved: dict[str, Any] | None = None) -> None:
        """(Re)build chain c's Pyro kernel: adapting over ``warmup`` steps, or frozen; with
        ``saved`` (:func:`_pyro_state`), continue exactly where that kernel was."""
        cs = self._chains[c]
        frozen = warmup is None
        pk = self._make(cs["step_size"] if frozen else None)
        pk.initial_params = {"z": cs["z"].clone()}
        if saved is not None and not frozen:  # no step-size search: the saved state has one
            pk._find_reasonable_step_size = lambda z: pk._adapter.step_size
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(cs["rng"])
            pk.setup(0 if frozen else warmup)
            if not frozen and saved is None:  # a rebuild leaves the chain's stream as it is
                cs["rng"] = torch.get_rng_state()
        if saved is not None and not frozen:
            del pk._find_reasonable_step_size
            pk._adapter._find_reasonable_step_size = pk._find_reasonable_step_size
        if frozen:
            pk.mass_matrix_adapter.inverse_mass_matrix = {("z",): cs["imm"].clone()}
        if saved is not None:
            _load_pyro_state(pk, saved, adapting=not frozen)
        self._pyro[c] = pk

    def setup(self, target: Target, z0: torch.Tensor, seed: int, warmup: int) -> torch.Tensor:
        self._target = target
        self._chains = []
        for c in range(z0.shape[0]):
            rng = torch.Generator().manual_seed(_chain_seed(seed, c)).get_state()
            self._chains.append({"z": z0[c].clone(), "rng": rng, "div_run": 0,
                                 "divergences": 0, "step_size": self.step_size,
                                 "imm": None, "frozen": False, "warmup": int(warmup)})
        self._pyro = [None] * len(self._chains)
        with torch.no_grad():
            u0 = target.potential(z0)
        if torch.isfinite(u0).all():
            for c in range(len(self._chains)):
                self._start(c, warmup)
        return u0

    @property
    def z(self) -> torch.Tensor:
        return torch.stack([cs["z"] for cs in self._chains])

    def sample(self, target: Target, gen: torch.Generator, adapting: bool
               ) -> dict[str, torch.Tensor]:
        self._target = target
        out: dict[str, list] = {k: [] for k in ("accepted", "accept_prob", "diverging",
                                                "n_steps", "step_size", "lp", "nonfinite")}
        for cs, pk in zip(self._chains, self._pyro, strict=True):
            calls0 = target.evals
            div0 = _divergences(pk, 0)
            mean0 = pk._mean_accept_prob
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(cs["rng"])
                params = pk.sample({"z": cs["z"]})
                cs["rng"] = torch.get_rng_state()
            # this iteration's acceptance probability, from Pyro's running mean over the phase
            n = pk._t - (pk._warmup_steps if pk._t > pk._warmup_steps else 0)
            out["accept_prob"].append(min(1.0, max(0.0, mean0 + n * (pk._mean_accept_prob
                                                                      - mean0))))
            z = params["z"].detach().clone()
            diverging = _divergences(pk, div0) > div0
            accepted = not torch.equal(z, cs["z"])
            cs["z"] = z
            lp = -self._memo.get(z.numpy().tobytes(), math.nan)
            if not adapting:
                cs["div_run"] = cs["div_run"] + 1 if diverging else 0
                cs["divergences"] += int(diverging)
            out["accepted"].append(accepted)
            out["diverging"].append(diverging)
            out["n_steps"].append(target.evals - calls0)
            out["step_size"].append(float(pk.step_size))
            out["lp"].append(lp)
            out["nonfinite"].append(False)
        stats = {k: torch.tensor(v) for k, v in out.items()}
        for k in ("lp", "step_size", "accept_prob"):
            stats[k] = stats[k].to(torch.float64)
        stats["tree_depth"] = torch.ceil(torch.log2(stats["n_steps"].double() + 1)).long()
        return stats

    def stop_reason(self) -> str:
        for c, cs in enumerate(self._chains):
            if cs["div_run"] >= self.max_divergent_run:
                return (f"NUTS chain {c}: {cs['div_run']} iterations in a row diverged (step "
                        f"size {cs['step_size']:.3g}); the potential is too stiff or not "
                        "smooth here: try pCN, or a higher --target-accept")
        return ""

    def mean_accept_prob(self) -> torch.Tensor:
        """Pyro's running mean acceptance probability per chain, over the current phase (warm-up,
        or sampling after it)."""
        return torch.tensor([float(pk._mean_accept_prob) for pk in self._pyro],
                            dtype=torch.float64)

    def step_sizes(self) -> torch.Tensor:
        return torch.tensor([cs["step_size"] if cs["frozen"] else float(pk.step_size)
                             for cs, pk in zip(self._chains, self._pyro, strict=True)],
                            dtype=torch.float64)

    def end_warmup(self, target: Target) -> None:
        self._target = target
        for c, (cs, pk) in enumerate(zip(self._chains, self._pyro, strict=True)):
            cs["step_size"] = float(pk.step_size)
            cs["imm"] = pk.inverse_mass_matrix[("z",)].detach().clone()
            cs["frozen"] = True
            self._start(c, None)

    def state_dict(self) -> dict[str, Any]:
        return {"chains": [dict(cs, pyro=None if pk is None else _pyro_state(pk))
                           for cs, pk in zip(self._chains, self._pyro, strict=True)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._chains = [{k: v for k, v in cs.items() if k != "pyro"} for cs in state["chains"]]
        self._pyro = [None] * len(self._chains)
        for c, cs in enumerate(state["chains"]):
            # a state without a warm-up count or Pyro state (written before they were kept)
            # was saved after warm-up: a frozen rebuild, as then
            warmup = None if cs["frozen"] else cs["warmup"]
            self._start(c, warmup, cs.get("pyro"))


# Pyro's kernel state that a checkpoint keeps: (object path, attribute) -> state key. Private
# attributes of pyro-ppl 1.9's HMC/NUTS, WarmupAdapter, DualAveraging and WelfordCovariance.
_PYRO_COUNTERS = {"t": "_t", "accept_cnt": "_accept_cnt",
                  "mean_accept_prob": "_mean_accept_prob", "divergences": "_divergences"}
_PYRO_ADAPTER = {"step_size": "step_size", "window": "_current_window"}
_PYRO_DUAL_AVERAGING = {"prox_center": "prox_center", "x_avg": "_x_avg", "g_avg": "_g_avg",
                        "da_t": "_t", "x_t": "_x_t"}
_PYRO_WELFORD = {"mean": "_mean", "m2": "_m2", "n_samples": "n_samples"}


def _attr(obj, name: str, default=None, required: bool = True):
    if hasattr(obj, name):
        value = getattr(obj, name)
        return value.detach().clone() if isinstance(value, torch.Tensor) else \
            (list(value) if isinstance(value, list) else value)
    if required:
        raise ValueError(f"this Pyro ({type(obj).__name__}) has no attribute {name}; the NUTS "
                         "checkpoint needs pyro-ppl 1.9 (pip install 'pyro-ppl>=1.9,<1.10')")
    return default


def _pyro_state(pk) -> dict[str, Any]:
    """What a Pyro HMC/NUTS kernel needs to continue exactly: counters, step size, dual
    averaging, adaptation window, inverse mass matrix and its Welford estimate."""
    a = pk._adapter
    state = {k: _attr(pk, v) for k, v in _PYRO_COUNTERS.items()}
    state.update({k: _attr(a, v) for k, v in _PYRO_ADAPTER.items()})
    state["imm"] = pk.inverse_mass_matrix[("z",)].detach().clone()
    if a.adapt_step_size:
        da = a._step_size_adapt_scheme
        state.update({k: _attr(da, v, required=v != "_x_t")
                      for k, v in _PYRO_DUAL_AVERAGING.items()})
    welford = a.mass_matrix_adapter._adapt_scheme.get(("z",))
    if welford is not None:
        state.update({k: _attr(welford, v) for k, v in _PYRO_WELFORD.items()})
    return state


def _load_pyro_state(pk, state: dict[str, Any], adapting: bool) -> None:
    """Write :func:`_pyro_state` back into a kernel just built by ``setup``."""
    a = pk._adapter
    for k, v in _PYRO_COUNTERS.items():
        _attr(pk, v)  # refuses a Pyro without it
        setattr(pk, v, list(state[k]) if k == "divergences" else state[k])
    if not adapting:
        return
    pk.mass_matrix_adapter.inverse_mass_matrix = {("z",): state["imm"].clone()}  # resets Welford
    for k, v in _PYRO_ADAPTER.items():
        _attr(a, v)
        setattr(a, v, state[k])
    if a.adapt_step_size:
        da = a._step_size_adapt_scheme
        for k, v in _PYRO_DUAL_AVERAGING.items():
            if k == "x_t" and state.get(k) is None:
                continue
            _attr(da, v, required=v != "_x_t")
            setattr(da, v, state[k])
    welford = a.mass_matrix_adapter._adapt_scheme.get(("z",))
    if welford is not None:
        for k, v in _PYRO_WELFORD.items():
            _attr(welford, v)
            value = state[k]
            setattr(welford, v, value.clone() if isinstance(value, torch.Tensor) else value)


def _divergences(pk, fallback: int) -> int:
    """Divergent iterations so far, from Pyro's public ``diagnostics()``. That call divides by
    the post-warm-up iteration count, so it fails when that count is 0 (before the first
    draw, or right after the last warm-up iteration): ``fallback`` then."""
    try:
        return len(pk.diagnostics()["divergences"])
    except ZeroDivisionError:
        return fallback


def _chain_seed(seed: int, chain: int) -> int:
    return int(np.random.SeedSequence([int(seed), chain]).generate_state(1)[0])


KERNELS: dict[str, type[MCMCKernel]] = {
    "pcn": PCNKernel, "rwm": RWMKernel, "mala": MALAKernel, "nuts": NUTSKernel}


def kernel_options(name: str | None = None) -> dict[str, Spec]:
    """The options kernel ``name`` declares (``options``, typed and defaulted by its
    constructor), or those of every kernel (flags and config keys are made from these)."""
    if name is not None:
        return specs_of_signature(KERNELS[name], KERNELS[name].options)
    out: dict[str, Spec] = {}
    for kernel in KERNELS:
        for key, spec in kernel_options(kernel).items():
            out.setdefault(key, spec)
    return out


def option_readers(key: str) -> list[str]:
    """The kernels that read option ``key``."""
    return [name for name, cls in KERNELS.items() if key in cls.options]


def make_kernel(kernel: str | MCMCKernel, **options) -> MCMCKernel:
    """A kernel from its name (one of :data:`KERNELS`) and options (``step_size``,
    ``target_accept`` and what the kernel declares in ``options``), or the kernel itself."""
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        for key in options:
            if key not in ("step_size", "target_accept") and key not in KERNELS[kernel].options:
                readers = option_readers(key)
                raise ValueError(f"kernel option {key!r} does not apply to {kernel}; it is read "
                                 f"by {', '.join(readers) or 'no kernel'}")
        return KERNELS[kernel](**options)
    if options:
        raise ValueError("options go with a kernel name, not with a kernel instance")
    if not isinstance(kernel, MCMCKernel):
        raise ValueError(f"kernel must be a name or an MCMCKernel, got {type(kernel).__name__}")
    return kernel
