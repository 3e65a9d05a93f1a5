"""MCMC kernels behind one contract, and the target they sample.

Every kernel advances all chains of a (C, d) batch by one iteration per :meth:`MCMCKernel.sample`
call; the runner (:func:`autovae.inverse.chains.run_chains`) owns warm-up, thinning,
checkpoints and resume, the shape of Pyro's ``MCMCKernel`` / ``_gen_samples`` split.

* :class:`PCNKernel` -- preconditioned Crank-Nicolson for a N(0, I) prior; accepts on phi alone.
* :class:`RWMKernel` -- random-walk Metropolis on the potential U = phi - log p0.
* :class:`MALAKernel` -- Metropolis-adjusted Langevin on U (gradients by autograd).
* :class:`NUTSKernel` -- Pyro's NUTS on U, one Pyro kernel per chain, through Pyro's public API.
* :class:`~autovae.inverse.chees.ChEESKernel` -- ChEES-HMC, all chains in lockstep: one batched
  gradient per leapfrog step (:mod:`autovae.inverse.chees`).

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
from typing import Any

import numpy as np
import torch

from ..settings import Spec, option, specs_of_signature
from .chees import ChEESKernel

__all__ = ["KERNELS", "MALAKernel", "MCMCKernel", "NUTSKernel", "PCNKernel", "RWMKernel",
           "Target", "kernel_options", "make_kernel", "option_readers"]


from .contract import (  # noqa: F401 (the contract, re-exported here)
    MCMCKernel,
    Target,
    _check_step,
    _check_target_accept,
)


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
        self.jobs, self._pool, self._seen = 1, None, {}

    def set_jobs(self, jobs: int) -> None:
        """Step the chains in ``jobs`` processes (``--jobs``): this one and ``jobs - 1``
        forked from it, each stepping a contiguous group of chains with the Pyro kernels it
        inherited (nothing is pickled but each chain's state and statistics). Every chain
        owns its RNG stream, so the draws do not depend on ``jobs``."""
        from .parallel import WORKERS, check_jobs

        jobs = check_jobs(jobs, processes=True)
        if jobs > 1 and WORKERS != "processes":
            raise ValueError(f"--jobs {jobs} with NUTS forks its chains' processes, and this "
                             "platform has no fork; give --jobs 1")
        self.jobs = jobs
        self._close_pool()

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool, self._seen = None, {}

    def _groups(self) -> list[tuple[int, int]] | None:
        """The chains' groups, one a process, the processes started if need be (None: one
        process)."""
        from .parallel import ChunkWorkers, chunks

        groups = chunks(len(self._chains), self.jobs)
        if len(groups) < 2:
            return None
        if self._pool is None:  # forked now: the children inherit the current kernels
            t = self._target
            self._costs_reported = (t.evals, t.gradients, t.solves)  # the children's baseline
            self._pool = ChunkWorkers(self, len(groups), "processes")
        return groups

    def _remote(self, method: str, groups, *args) -> list:
        """``method(lo, hi, *args)`` for each group on its process; each group's chain dicts
        and Pyro values are copied back here, and the other processes' costs added to the
        target's."""
        outs = self._pool.call(method, [(lo, hi, *args) for lo, hi in groups])
        for i, ((lo, hi), (_, chains, seen, costs)) in enumerate(zip(groups, outs,
                                                                     strict=True)):
            if i == 0:  # this process's own group: counted and kept here already
                continue
            self._chains[lo:hi] = chains
            self._seen.update(seen)
            self._target.evals += costs[0]
            self._target.gradients += costs[1]
            self._target.solves_elsewhere += costs[2]
        return [result for result, *_ in outs]

    def _report(self, lo: int, hi: int, result):
        """What a group's process sends back: the result, its chain dicts, each Pyro kernel's
        step size and mean acceptance, and the costs spent since the last report."""
        t = self._target
        seen = {c: (float(self._pyro[c].step_size), float(self._pyro[c]._mean_accept_prob))
                for c in range(lo, hi) if self._pyro[c] is not None}
        costs = (t.evals, t.gradients, t.solves)
        last, self._costs_reported = getattr(self, "_costs_reported", costs), costs
        return result, self._chains[lo:hi], seen, tuple(a - b for a, b in zip(costs, last,
                                                                                strict=True))

    def _pyro_value(self, c: int, which: int) -> float:
        """Chain c's step size (0) or mean acceptance (1), from its Pyro kernel here or the
        process that steps it."""
        if c in self._seen:
            return self._seen[c][which]
        pk = self._pyro[c]
        return float(pk.step_size if which == 0 else pk._mean_accept_prob)

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
        self._close_pool()
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
        groups = self._groups()
        if groups is None:
            out = self._step(0, len(self._chains), adapting)
        else:
            parts = self._remote("_step_group", groups, adapting)
            out = {k: [v for part in parts for v in part[k]] for k in parts[0]}
        stats = {k: torch.tensor(v) for k, v in out.items()}
        for k in ("lp", "step_size", "accept_prob"):
            stats[k] = stats[k].to(torch.float64)
        stats["tree_depth"] = torch.ceil(torch.log2(stats["n_steps"].double() + 1)).long()
        return stats

    def _step_group(self, lo: int, hi: int, adapting: bool):
        """:meth:`_step` in the process that steps chains lo..hi, with its report."""
        return self._report(lo, hi, self._step(lo, hi, adapting))

    def _step(self, lo: int, hi: int, adapting: bool) -> dict[str, list]:
        """One iteration of chains lo..hi, one after another; their statistics."""
        target = self._target
        out: dict[str, list] = {k: [] for k in ("accepted", "accept_prob", "diverging",
                                                "n_steps", "step_size", "lp", "nonfinite")}
        for cs, pk in zip(self._chains[lo:hi], self._pyro[lo:hi], strict=True):
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
        return out

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
        return torch.tensor([self._pyro_value(c, 1) for c in range(len(self._chains))],
                            dtype=torch.float64)

    def step_sizes(self) -> torch.Tensor:
        return torch.tensor([cs["step_size"] if cs["frozen"] else self._pyro_value(c, 0)
                             for c, cs in enumerate(self._chains)], dtype=torch.float64)

    def end_warmup(self, target: Target) -> None:
        self._target = target
        groups = self._groups()
        if groups is None:
            self._end_warmup(0, len(self._chains))
        else:
            self._remote("_end_warmup", groups)

    def _end_warmup(self, lo: int, hi: int):
        for c in range(lo, hi):
            cs, pk = self._chains[c], self._pyro[c]
            cs["step_size"] = float(pk.step_size)
            cs["imm"] = pk.inverse_mass_matrix[("z",)].detach().clone()
            cs["frozen"] = True
            self._start(c, None)
        return self._report(lo, hi, None)

    def state_dict(self) -> dict[str, Any]:
        groups = self._groups()
        if groups is None:
            return {"chains": self._states(0, len(self._chains))[0]}
        return {"chains": [cs for part in self._remote("_states", groups) for cs in part]}

    def _states(self, lo: int, hi: int):
        return self._report(lo, hi, [dict(cs, pyro=None if pk is None else _pyro_state(pk))
                                     for cs, pk in zip(self._chains[lo:hi], self._pyro[lo:hi],
                                                       strict=True)])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._close_pool()
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


KERNELS["chees"] = ChEESKernel


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
