"""Delayed acceptance with a cheap model (Christen & Fox 2005; the two-level MLDA of
Lykkegaard et al. 2023): expensive solves only for proposals a cheap posterior has screened.

Each fine iteration runs a subchain of ``subchain`` steps of a Metropolis kernel (pCN, RWM or
MALA) or of ChEES-HMC (gradients only on the cheap level) on the cheap posterior pi_c, started
at the current fine state theta; its end theta' is the fine proposal, accepted with

    alpha = min(1, pi_f(theta') pi_c(theta) / (pi_f(theta) pi_c(theta'))).

A Metropolis kernel with frozen settings is pi_c-reversible, so is its J-step power, and the
fine chain is then exactly pi_f-reversible whatever the cheap model is: a wrong cheap model
costs acceptance, never bias. (The subchain kernel adapts during warm-up only; ChEES holds
one jittered trajectory length for a whole subchain, so its J steps are one kernel's power.)
A subchain that never moves costs no fine solve.

Cheap models: :func:`coarse_forward` (the built-in PDEs on a coarser mesh: Aristoff-Bangerth
on 16 x 16 cells, Darcy on half the grid), a surrogate fitted to prior draws' fine outputs
(:mod:`autovae.inverse.surrogate`) or any :class:`~autovae.inverse.forward.ForwardModel`
of the same parameter and observation sizes (``--coarse-forward``, the forms of
``--forward``). :class:`ApproximationError` corrects the cheap model's bias: the mean and
covariance of fine - cheap outputs over prior draws (as tinyDA does), giving the cheap
likelihood y - F_c - mu ~ N(0, Sigma_noise + Sigma). Where the cheap misfit is NaN or
infinite, the cheap level takes the fine model's own misfit (and gradient) there instead: one
fine solve, counted in ``solves`` and as a ``cheap_fallback``. This pi_c is still a fixed
function of the point, positive wherever pi_f is, so the two-level ratio keeps pi_f exact (a
cheap density of 0 where pi_f > 0 would instead hide that region from the fine chain); a point
where the fine model fails too has pi_c = pi_f = 0 and is rejected. ``adaptive_error`` (Cui, Fox &
O'Sullivan's adaptive delayed acceptance) instead learns the offset during warm-up from the
fine and cheap outputs at the screened proposals, where the posterior is, and freezes it.

Costs: the fine target's ``solves`` are the runner's (``solves`` in summary.json); the cheap
solves are the kernel's ``coarse_solves`` (per-draw statistic ``coarse_solves``, cumulative),
reported by :func:`delayed_summary` beside ESS per 1000 fine solves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .forward import ForwardModel
from .forward_models import AristoffBangerthForward
from .kernels import MCMCKernel, MetropolisKernel, Target, make_kernel
from .problem import InverseProblem

__all__ = ["ApproximationError", "DelayedAcceptanceKernel", "coarse_forward", "coarse_target",
           "delayed_summary"]


def check_cheap_model(fine: ForwardModel, cheap: ForwardModel) -> None:
    """Refuse a cheap model of another parameter or observation size than the fine one."""
    fs, cs = tuple(fine.param_shape), tuple(cheap.param_shape)
    if int(np.prod(fs)) != int(np.prod(cs)):
        raise ValueError(f"the cheap model {cheap.name} takes parameters of shape {cs}, the "
                         f"fine model {fine.name} {fs}; a cheap model must take the fine "
                         "model's parameters")
    if int(cheap.n_obs) != int(fine.n_obs):
        raise ValueError(f"the cheap model {cheap.name} gives {cheap.n_obs} observations, the "
                         f"fine model {fine.name} {fine.n_obs}; a cheap model must predict the "
                         "same observations")


class ApproximationError:
    """Mean ``mu`` (P,) and covariance ``cov`` (P, P) of F_f(theta) - F_c(theta) over ``draws``
    prior draws (fine and cheap solves counted in the models as usual)."""

    def __init__(self, problem: InverseProblem, cheap: ForwardModel, draws: int = 200,
                 seed: int = 0, batch: int = 50):
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
            raise ValueError(f"the approximation error model needs >= 2 prior draws, got "
                             f"{draws!r}")
        z = problem.prior.sample(draws, seed)
        diffs = []
        with torch.no_grad():
            for i in range(0, draws, batch):
                p = problem.params(z[i:i + batch])
                p = p.reshape(len(p), *problem.forward.param_shape)
                diffs.append(problem.forward(p) - cheap(p.reshape(len(p), *cheap.param_shape)))
        d = torch.cat(diffs).to(torch.float64)
        ok = torch.isfinite(d).all(1)
        if int(ok.sum()) < 2:
            raise ValueError("the approximation error model: fewer than 2 prior draws where both "
                             "models give finite outputs")
        d = d[ok]
        self.draws = int(ok.sum())
        self.mu = d.mean(0)
        self.cov = torch.atleast_2d(torch.cov(d.T))

    def describe(self) -> dict[str, Any]:
        return {"error_model_draws": self.draws,
                "error_model_mean_abs": float(self.mu.abs().mean()),
                "error_model_sd_mean": float(self.cov.diagonal().clamp(min=0).sqrt().mean())}


def coarse_target(problem: InverseProblem, cheap: ForwardModel,
                  error_model: ApproximationError | None = None) -> Target:
    """The cheap posterior: the problem's prior and data, the cheap model's predictions
    (plus the error model's mean, with its covariance added to the noise's)."""
    check_cheap_model(problem.forward, cheap)
    sigma, data = problem.sigma, problem.data
    if error_model is None:
        shift = torch.zeros_like(data)
        L = None
    else:
        shift = error_model.mu.clone()
        cov = torch.diag(sigma ** 2) + error_model.cov
        cov = 0.5 * (cov + cov.T) + 1e-12 * cov.diagonal().mean() * torch.eye(len(data),
                                                                               dtype=cov.dtype)
        L = torch.linalg.cholesky(cov)

    def predict(z):
        p = problem.params(z)
        p = p.reshape(len(p), *cheap.param_shape)
        flat = p.detach().reshape(len(p), -1)
        bad = ~torch.isfinite(flat).all(1)
        if getattr(cheap, "positive", False):
            bad |= (flat <= 0).any(1)
        if bad.any():
            pred = torch.full((len(p), cheap.n_obs), math.nan, dtype=torch.float64)
            if (~bad).any():
                pred = pred.index_put((torch.nonzero(~bad).flatten(),),
                                      cheap(p[~bad]).to(torch.float64))
        else:
            pred = cheap(p).to(torch.float64)
        return pred

    def residuals(z):
        r = predict(z) + shift - data
        if L is None:
            return r / sigma
        return torch.linalg.solve_triangular(L, r.T.unsqueeze(0), upper=False)[0].T

    def phi(z):
        return 0.5 * (residuals(z) ** 2).sum(-1)

    target = Target(phi, problem.dim, prior="normal" if problem.prior.normal
                    else problem.prior.log_prior, solves=lambda: cheap.solves,
                    gradient=cheap.gradient, gradient_reason=cheap.gradient_reason,
                    residuals=residuals)
    target.predict = predict  # the cheap predictions, and the shift added to them (in place:
    target.error_shift = shift  # an adaptive error model moves it during warm-up)
    target.fine_predict = problem.predict  # the fine predictions and misfit, so that the
    target.fine_phi = lambda pred: 0.5 * (((pred - data) / sigma) ** 2).sum(-1)  # adaptive
    return target  # error model reuses the fine solve of each screened proposal


class DelayedAcceptanceKernel(MCMCKernel):
    """Two-level delayed acceptance: subchains of ``subchain`` steps of ``inner`` (a
    Metropolis kernel: pcn, rwm or mala; or chees, HMC whose trajectory length is held for
    the whole subchain after warm-up, so that the subchain is one reversible kernel's J-th
    power) on the ``coarse`` target propose fine moves."""

    name = "da"

    def __init__(self, coarse: Target, inner: str | MetropolisKernel = "rwm", subchain: int = 5,
                 adaptive_error: bool = False, **inner_options):
        if isinstance(subchain, bool) or not isinstance(subchain, int) or subchain < 1:
            raise ValueError(f"subchain must be an integer >= 1, got {subchain!r}")
        from .chees import ChEESKernel

        inner = make_kernel(inner, **inner_options)
        if not isinstance(inner, (MetropolisKernel, ChEESKernel)):
            raise ValueError(f"delayed acceptance needs a Metropolis kernel (pcn, rwm or mala) "
                             f"or chees on the cheap level, reversible with its settings "
                             f"frozen; {inner.name} is not one")
        self._hmc = isinstance(inner, ChEESKernel)  # its cheap values: u, grad
        self._keys = ("u", "grad") if self._hmc else ("phi", "log_prior", "grad")
        if not isinstance(coarse, Target):
            raise ValueError(f"coarse must be a Target, got {type(coarse).__name__}")
        if adaptive_error and getattr(coarse, "error_shift", None) is None:
            raise ValueError("an adaptive error model needs a cheap target from coarse_target()")
        self.adaptive_error = bool(adaptive_error)
        self._shift = getattr(coarse, "error_shift", None)
        self._fine_predict = coarse.fine_predict if adaptive_error else None
        self._fine_phi = getattr(coarse, "fine_phi", None)
        self._cheap_predict = getattr(coarse, "predict", None)
        self.inner, self.subchain = inner, int(subchain)
        self.state: dict[str, Any] = {}
        self._fine: Target | None = None  # the fine target, for the cheap model's fallback
        self.cheap_fallbacks = 0

        def cheap_phi(z):  # the cheap misfit; the fine one where the cheap one is not finite
            out = coarse.phi(z)
            bad = ~torch.isfinite(out)
            return self._fallback(coarse, z, out, bad) if bad.any() else out

        self.coarse = Target(cheap_phi, coarse.dim,
                             prior="normal" if coarse.normal_prior else coarse.log_prior,
                             dtype=coarse.dtype, solves=lambda: coarse.solves,
                             gradient=coarse.gradient, gradient_reason=coarse.gradient_reason,
                             residuals=coarse.residuals)

    def _fallback(self, coarse: Target, z: torch.Tensor, out: torch.Tensor,
                  bad: torch.Tensor) -> torch.Tensor:
        """The cheap misfit ``out`` at the rows of z with the ``bad`` (non-finite) ones
        replaced by the fine misfit (one fine solve each, with its gradient where the fine
        model has one; otherwise a zero gradient there, which leaves a Metropolis or HMC
        kernel exact, only slower). Under autograd the good rows are solved again without the
        bad ones, so that a failed cheap solve's backward cannot spoil the gradient."""
        fine = self._fine
        if fine is None:
            return out
        rows, good = bad.nonzero().flatten(), (~bad).nonzero().flatten()
        self.cheap_fallbacks += len(rows)
        with torch.set_grad_enabled(torch.is_grad_enabled() and fine.gradient):
            u_f = fine.phi(z[rows]).to(out.dtype)
        if not fine.gradient:
            u_f = u_f.detach()
        u_c = out[good]
        if out.requires_grad and len(good):
            u_c = coarse.phi(z[good]).to(out.dtype)
        merged = torch.zeros(len(z), dtype=out.dtype)
        return merged.index_put((good,), u_c).index_put((rows,), u_f)

    def config(self) -> dict[str, Any]:
        return {"kernel": self.name, "subchain": self.subchain, "inner": self.inner.config(),
                "adaptive_error": self.adaptive_error}

    def validate(self, target: Target) -> None:
        if target.dim != self.coarse.dim:
            raise ValueError(f"the cheap target has dimension {self.coarse.dim}, the fine one "
                             f"{target.dim}")
        if target.normal_prior != self.coarse.normal_prior:
            raise ValueError("the cheap and fine targets must share the prior")
        self.inner.validate(self.coarse)

    def _coarse_cache(self) -> dict[str, torch.Tensor]:
        """The inner kernel's cheap values at its state (its potential and gradient)."""
        s = self.inner.state
        return {k: None if s[k] is None else s[k].clone() for k in self._keys}

    def _cheap_potential(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        return values["u"] if self._hmc else values["phi"] - values["log_prior"]

    def _cheap_values(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inner kernel's cheap values at z (cheap solves counted)."""
        solves0 = self.coarse.solves
        if self._hmc:
            u, grad = self.coarse.potential_and_grad(z)
            out = {"u": u, "grad": grad}
        else:
            phi, lp, grad = self.inner._evaluate(self.coarse, z)
            out = {"phi": phi.detach(), "log_prior": lp.detach(),
                   "grad": None if grad is None else grad.detach()}
        self.state["coarse_solves"] += self.coarse.solves - solves0
        return out

    def setup(self, target: Target, z0: torch.Tensor, seed: int, warmup: int) -> torch.Tensor:
        self._fine, self.cheap_fallbacks = target, 0
        self.inner.setup(self.coarse, z0, seed, warmup * self.subchain)
        with torch.no_grad():
            phi_f, lp = target.phi(z0), target.log_prior(z0)
        u0 = phi_f - lp
        self.state = {"z": z0.clone(), "phi": phi_f, "log_prior": lp,
                      "coarse": self._coarse_cache(), "coarse_solves": 0, "bias_n": 0,
                      "cheap_fallbacks": self.cheap_fallbacks,
                      "t": 0, "restart": warmup // 2,
                      "bias_sum": None if self._shift is None else self._shift.clone() * 0}
        return u0

    def _adapt_error(self, z: torch.Tensor, fine: torch.Tensor) -> None:
        """Warm-up only: the cheap model's offset becomes the running mean of fine - cheap
        outputs at the screened proposals z (posterior locations, unlike prior draws;
        restarted halfway through warm-up, to forget the chains' approach), ``fine`` their
        fine predictions (the fine solves the two-level ratio made: no extra fine solve); the
        cheap values cached at the chains' states are recomputed with it (cheap solves).
        Frozen after warm-up, so the sampling phase is exact."""
        s = self.state
        s["t"] += 1
        if s["t"] == s["restart"]:  # forget the approach to the posterior: average the
            s["bias_sum"], s["bias_n"] = s["bias_sum"] * 0, 0  # second half of warm-up only
        with torch.no_grad():
            d = fine - self._cheap_predict(z)
        d = d[torch.isfinite(d).all(1)]
        if not len(d):
            return
        s["bias_sum"] = s["bias_sum"] + d.sum(0)
        s["bias_n"] += len(d)
        self._shift.copy_(s["bias_sum"] / s["bias_n"])
        s["coarse"] = self._cheap_values(s["z"])

    @property
    def z(self) -> torch.Tensor:
        return self.state["z"]

    def step_sizes(self) -> torch.Tensor:
        return self.inner.step_sizes()

    def state_dict(self) -> dict[str, Any]:
        return {"da": dict(self.state), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state["da"])
        self.cheap_fallbacks = int(self.state.setdefault("cheap_fallbacks", 0))
        self.inner.load_state_dict(state["inner"])
        if self.adaptive_error and self.state["bias_n"] > 0:
            self._shift.copy_(self.state["bias_sum"] / self.state["bias_n"])

    def end_warmup(self, target: Target) -> None:
        self.inner.end_warmup(self.coarse)

    def stop_reason(self) -> str:
        return self.inner.stop_reason()

    def sample(self, target: Target, gen: torch.Generator, adapting: bool
               ) -> dict[str, torch.Tensor]:
        s, inner = self.state, self.inner
        self._fine = target
        z, cache = s["z"], s["coarse"]
        # the subchain starts at the fine state, with the cheap values there
        inner.state.update(z=z.clone(), **{k: None if v is None else v.clone()
                                           for k, v in cache.items()})
        solves0 = self.coarse.solves
        t0 = inner.state["t"]
        for _ in range(self.subchain):
            if self._hmc and not adapting:  # one trajectory length for the whole subchain
                inner.state["t"] = t0
            inner.sample(self.coarse, gen, adapting)
        s["coarse_solves"] += self.coarse.solves - solves0
        z_new = inner.state["z"]
        moved = (z_new != z).any(1)
        u = torch.rand(z.shape[0], generator=gen, dtype=z.dtype)
        phi_new, lp_new = s["phi"].clone(), s["log_prior"].clone()
        learn = adapting and self._fine_predict is not None and bool(moved.any())
        if moved.any():
            rows = moved.nonzero().flatten()
            with torch.no_grad():
                if learn:  # the fine solve serves the ratio and the error model both
                    fine_pred = self._fine_predict(z_new[rows])
                    phi_new[rows] = self._fine_phi(fine_pred)
                    target.evals += len(rows)
                else:
                    phi_new[rows] = target.phi(z_new[rows])
                lp_new[rows] = target.log_prior(z_new[rows])
        u_f_old, u_f_new = s["phi"] - s["log_prior"], phi_new - lp_new
        u_c_old, u_c_new = self._cheap_potential(cache), self._cheap_potential(inner.state)
        log_ratio = (u_f_old - u_f_new) - (u_c_old - u_c_new)
        bad = torch.isnan(u_f_new) & moved
        log_ratio = torch.where(moved, log_ratio, torch.zeros_like(log_ratio))
        log_ratio = torch.where(bad | torch.isnan(log_ratio), -math.inf, log_ratio)
        accept_prob = torch.exp(torch.clamp(log_ratio, max=0.0))
        accepted = (u < accept_prob) & moved
        acc = accepted.unsqueeze(-1)
        s["z"] = torch.where(acc, z_new, z)
        s["phi"] = torch.where(accepted, phi_new, s["phi"])
        s["log_prior"] = torch.where(accepted, lp_new, s["log_prior"])
        new_cache = self._coarse_cache()
        s["coarse"] = {k: None if v is None else torch.where(
            acc if v.dim() == 2 else accepted, new_cache[k], v) for k, v in cache.items()}
        if learn:
            self._adapt_error(z_new[rows], fine_pred)
        s["cheap_fallbacks"] = self.cheap_fallbacks
        c = z.shape[0]
        return {"accept_prob": torch.where(moved, accept_prob, torch.zeros_like(accept_prob)),
                "accepted": accepted, "nonfinite": torch.zeros(c, dtype=torch.bool),
                "step_size": inner.step_sizes().to(z.dtype), "lp": s["log_prior"] - s["phi"],
                "subchain_moved": moved.to(z.dtype),
                "coarse_solves": torch.full((c,), float(s["coarse_solves"]),
                                            dtype=torch.float64),
                "cheap_fallbacks": torch.full((c,), float(self.cheap_fallbacks),
                                              dtype=torch.float64)}


# -- cheap models -------------------------------------------------------------------------------
class _CoarseAB(AristoffBangerthForward):
    """The Aristoff-Bangerth forward model on a coarser mesh (``cells`` x ``cells``)."""

    def __init__(self, cells: int = 16):
        super().__init__()
        from .aristoff_bangerth import BandedPoissonQ1

        if cells % 8 or cells < 8:
            raise ValueError(f"the Aristoff-Bangerth cheap mesh must be a multiple of 8 cells "
                             f"per side (its 8 x 8 coefficient blocks), got {cells}")

        class _Solver(BandedPoissonQ1):
            n_cells = cells

        self.cells = cells
        self.name = f"aristoff-bangerth-{cells}"
        self.benchmark._solver = _Solver()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cells": self.cells}


class _HalfGridDarcy(ForwardModel):
    """Darcy on half the grid: log k averaged over 2 x 2 cells, then the coarse solve."""

    def __init__(self, fine):
        super().__init__()
        from .forward_models import DarcyForward

        n = fine.grid
        if n % 2 or n < 4:
            raise ValueError(f"Darcy on half the grid needs an even grid >= 4, got {n}")
        if fine.source.ndim != 0:
            raise ValueError("Darcy on half the grid needs a constant --source; for a source "
                             "array give your own --coarse-forward")
        self.coarse = DarcyForward(grid=n // 2, points=fine.points, source=float(fine.source),
                                   bc=str(fine.bc) if not fine.bc.default else None)
        self.name = f"darcy-{n // 2}"
        self.param_shape, self.n_obs = (n, n), fine.n_obs

    forward_solves = adjoint_solves = 0  # the coarse model counts its own

    def set_jobs(self, jobs: int) -> None:  # --jobs: the coarse Darcy model's rows
        self.coarse.set_jobs(jobs)

    def close_workers(self) -> None:
        if "coarse" in self.__dict__:
            self.coarse.close_workers()

    @property
    def solves(self) -> int:
        return self.coarse.solves if "coarse" in self.__dict__ else 0

    @solves.setter
    def solves(self, value) -> None:
        pass

    def evaluate(self, params):
        b, n = params.shape[0], params.shape[-1]
        return self.coarse(params.reshape(b, n // 2, 2, n // 2, 2).mean((2, 4)))


def coarse_forward(fine: ForwardModel, spec: str | None = None, **options) -> ForwardModel:
    """The cheap model for ``fine``: ``spec`` as ``--coarse-forward`` (the forms of
    ``--forward``, or ``aristoff-bangerth-N``: the benchmark on N x N cells), or, without it,
    the built-in's coarser mesh (aristoff-bangerth: 16 x 16 cells; darcy: half the grid)."""
    if spec and spec.startswith("aristoff-bangerth-") and fine.name == "aristoff-bangerth":
        cells = spec.rsplit("-", 1)[1]
        if not cells.isdigit():
            raise ValueError(f"--coarse-forward {spec}: give aristoff-bangerth-N, N cells per "
                             "side (a multiple of 8, e.g. 16 or 24)")
        cheap = _CoarseAB(int(cells))
    elif spec:
        from .forward_models import load_forward

        cheap = load_forward(spec, **options)
    elif fine.name == "aristoff-bangerth":
        cheap = _CoarseAB(16)
    elif fine.name == "darcy":
        cheap = _HalfGridDarcy(fine)
    else:
        raise ValueError(f"the forward model {fine.name} has no built-in cheap model; give "
                         "--coarse-forward (a built-in name, package.module:Class or "
                         "umbridge:URL)")
    check_cheap_model(fine, cheap)
    return cheap


def delayed_summary(result, setup_fine_solves: int = 0) -> dict[str, Any]:
    """The run's summary plus the cheap solves: ``coarse_solves``, ``cheap_fallbacks`` (the
    points where the cheap model failed and the fine one valued the cheap level, over warm-up
    and sampling; their fine solves are in ``solves``), ``fine_solves`` (the
    chains' ``solves`` plus ``setup_fine_solves``, those spent before the chains: a
    surrogate's training draws, an error model's prior draws) and the headline
    ``ess_per_1000_fine_solves``."""
    out = result.summary()
    cs = result.stats.get("coarse_solves")
    coarse = int(np.max(cs)) if cs is not None and cs.size else 0
    out["coarse_solves"] = coarse
    fb = result.stats.get("cheap_fallbacks")
    out["cheap_fallbacks"] = int(np.max(fb)) if fb is not None and fb.size else 0
    fine = (out.get("solves") or 0) + int(setup_fine_solves)
    out["fine_solves"], out["setup_fine_solves"] = fine, int(setup_fine_solves)
    ess = out.get("ess_bulk_min")
    out["ess_per_1000_fine_solves"] = 1000 * ess / fine if ess is not None and fine else None
    moved = result.stats.get("subchain_moved")
    if moved is not None and moved.size:
        out["fine_acceptance_of_moved"] = float(result.acceptance.mean() / max(moved.mean(),
                                                                               1e-12))
    return out
