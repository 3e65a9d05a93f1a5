"""The built-in forward models and ``--forward``'s loader.

* :class:`DarcyForward` (``darcy``): the Darcy case of the latent-MCMC authors' released code
  (spec 3.2; their report has no Darcy section).
* :class:`AristoffBangerthForward` (``aristoff-bangerth``): the SIAM Review 2023 benchmark.
* :func:`load_forward`: a built-in by name, a user's class by import path
  (``package.module:Class``), or a UM-Bridge model over HTTP (``umbridge:http://host:port/name``,
  :class:`~autovae.inverse.umbridge.UMBridgeForward`).
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
import torch

from .boundary import BoundaryConditions
from .darcy import darcy_pressure
from .forward import ForwardModel, _said, regular_points

__all__ = ["FORWARDS", "AristoffBangerthForward", "DarcyForward", "load_forward"]


class DarcyForward(ForwardModel):
    """Darcy pressures at observation points from a log-permeability field (n, n).

    -div(k grad p) = ``source`` on [0, 1]^2 (a number or an (n, n) array of cell values),
    boundary conditions ``bc`` (:class:`~autovae.inverse.boundary.BoundaryConditions` or its
    string, e.g. ``"left=dirichlet:1,right=neumann:0.5"``: per side a Dirichlet pressure or a
    Neumann outward flux -k dp/dn; default p = 0 on x = 0, 1, no flux on y = 0, 1),
    cell-centred finite volumes on the ``grid`` x ``grid`` mesh (:mod:`autovae.inverse.darcy`),
    observed at ``points`` (P, 2) in [0, 1]^2 (or a square count: a regular interior grid).
    Adjoint gradients. The case comes from the
    latent-MCMC authors' released code (spec 3.2), not from their report. A failing solve gives
    NaN observations (a chain then stops with that reason) instead of aborting the batch.
    """

    name = "darcy"
    parameter_label = "log k"
    signed = True

    def __init__(self, grid: int = 16, points=64, source=3.0, bc=None):
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"--grid must be an integer >= 2, got {grid!r}")
        pts = regular_points(points) if isinstance(points, int) else torch.as_tensor(
            np.asarray(points, dtype=np.float64))
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 1:
            raise ValueError(f"observation points must be (P, 2) rows of (x, y), got shape "
                             f"{tuple(pts.shape)}")
        bad = ~(torch.isfinite(pts).all(1) & (pts >= 0).all(1) & (pts <= 1).all(1))
        if bad.any():
            row = int(bad.nonzero()[0])
            raise ValueError(f"observation point {row} {pts[row].tolist()} lies outside the "
                             f"domain [0, 1]^2 ({int(bad.sum())} such points); give points in "
                             "the unit square")
        src = np.asarray(source, dtype=np.float64)
        if not (src.ndim == 0 or src.shape == (grid, grid)) or not np.isfinite(src).all():
            raise ValueError(f"--source must be a finite number or a ({grid}, {grid}) array, "
                             f"got shape {src.shape}")
        self.bc = BoundaryConditions.parse(bc)
        self.grid, self.points, self.source = grid, pts, src
        self.param_shape, self.n_obs = (grid, grid), int(pts.shape[0])

    def describe(self) -> dict[str, Any]:
        src = float(self.source) if self.source.ndim == 0 else self.source.tolist()
        # the default conditions are not recorded, so that chain folders written before they
        # were a setting still resume
        bc = {} if self.bc.default else {"bc": str(self.bc)}
        return {**super().describe(), "grid": self.grid, "points": self.points.tolist(),
                "source": src, **bc}

    def set_jobs(self, jobs: int) -> None:
        """Solve the chunks of a batch on ``jobs`` workers (processes forked from this one,
        so at most the cores present; :class:`~autovae.inverse.parallel.ChunkWorkers`)."""
        from .parallel import WORKERS, check_jobs

        self.jobs = check_jobs(jobs, processes=WORKERS == "processes")

    def close_workers(self) -> None:
        """Stop the worker processes of the solvers this model ran with ``jobs`` > 1."""
        super().close_workers()
        if self.jobs > 1:
            from .darcy import _solver

            solver = self.__dict__.get("_field_solver")  # a source field's, or the shared one
            if solver is None and self.source.ndim == 0:
                solver = _solver(self.grid, float(self.source), self.bc)
            if solver is not None:
                solver.close_workers()
        self.jobs = 1

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        return self.pressure(params, self.points)

    def pressure(self, log_k: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Pressures of fields of any grid (a finer truth, say) at ``points``."""
        f = float(self.source) if self.source.ndim == 0 else None
        try:
            if f is None:
                from .darcy import DarcySolver, observe
                n = log_k.shape[-1]
                solver = self.__dict__.get("_field_solver")
                if solver is None or solver.n != n:  # kept: its workers start once
                    solver = self._field_solver = DarcySolver(n, self.source, self.bc)
                return observe(solver, log_k, points, jobs=self.jobs)
            return darcy_pressure(log_k, points, f, self.bc, jobs=self.jobs)
        except ValueError:
            if log_k.shape[0] == 1:
                return torch.full((1, points.shape[0]), math.nan, dtype=log_k.dtype)
        return torch.cat([self.pressure(f_[None], points) for f_ in log_k])


def load_forward(spec: str, **options) -> ForwardModel:
    """A forward model from ``--forward``: a built-in name (:data:`FORWARDS`),
    ``package.module:Class`` (a :class:`ForwardModel` subclass, built with ``options``), or
    ``umbridge:http://host:port/name``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--forward must be a name, package.module:Class or "
                         f"umbridge:URL, got {spec!r}")
    if spec.startswith("umbridge:"):
        from .umbridge import UMBridgeForward

        return UMBridgeForward(spec[len("umbridge:"):], **options)
    if spec in FORWARDS:
        return FORWARDS[spec](**options)
    if ":" not in spec:
        raise ValueError(f"unknown forward model {spec!r}; give one of {', '.join(FORWARDS)}, "
                         "package.module:Class, or umbridge:http://host:port/name")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--forward {spec}: give package.module:Class (a module and a class "
                         "name on each side of the colon)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--forward {spec}: cannot import {module_name} ({err}); is it on "
                         "PYTHONPATH or installed?") from None
    except SyntaxError as err:
        raise ValueError(f"--forward {spec}: {module_name} has a syntax error at "
                         f"{err.filename}:{err.lineno} ({err.msg})") from None
    except Exception as err:  # the module's own code failed: its message, not a traceback
        raise ValueError(f"--forward {spec}: importing {module_name} failed: "
                         f"{_said(err)}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"--forward {spec}: {module_name} has no {attr}")
    if not (isinstance(cls, type) and issubclass(cls, ForwardModel)):
        raise ValueError(f"--forward {spec}: {attr} is not a subclass of "
                         "autovae.inverse.ForwardModel; subclass it (set param_shape, n_obs, "
                         "define evaluate)")
    if getattr(cls, "__abstractmethods__", None):
        raise ValueError(f"--forward {spec}: {attr} does not define "
                         f"{', '.join(sorted(cls.__abstractmethods__))}; a forward model maps "
                         "parameters (B, *param_shape) to observations (B, n_obs) in evaluate")
    try:
        model = cls(**options)
    except Exception as err:
        raise ValueError(f"--forward {spec}: building {attr}({_options(options)}) failed: "
                         f"{_said(err)}") from None
    check_model(model, f"--forward {spec}: {attr}")
    return model


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


# parameters or observations beyond this many values per parameter set are refused: a
# model that declares them has a bug (a (B, n_obs) float64 batch would not fit in memory)
MAX_VALUES = 2**31


def check_model(model: ForwardModel, who: str) -> None:
    """Refuse a forward model that does not keep the contract it was built to: the base
    ``__init__`` called (it sets the solve counter), ``param_shape`` a tuple of positive
    integers and ``n_obs`` a positive integer, each within :data:`MAX_VALUES`."""
    if not hasattr(model, "solves"):
        raise ValueError(f"{who}.__init__ does not call super().__init__() (ForwardModel's, "
                         "which starts the solve counter); add it as its first line")
    shape = model.param_shape
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if (not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                            and d >= 1 for d in dims)):
        raise ValueError(f"{who} must set param_shape to a tuple of positive integers (e.g. "
                         f"(16, 16) or (64,)), got {shape!r}")
    n_obs = model.n_obs
    if isinstance(n_obs, bool) or not isinstance(n_obs, (int, np.integer)) or n_obs < 1:
        raise ValueError(f"{who} must set n_obs to a positive integer (the observations per "
                         f"parameter set), got {n_obs!r}")
    size = math.prod(int(d) for d in dims)
    if size > MAX_VALUES or n_obs > MAX_VALUES:
        raise ValueError(f"{who} declares param_shape {dims} and n_obs {n_obs}: more than "
                         f"{MAX_VALUES:,} values per parameter set; check param_shape and n_obs")
    model.param_shape, model.n_obs = tuple(int(d) for d in dims), int(n_obs)


class AristoffBangerthForward(ForwardModel):
    """The Aristoff-Bangerth benchmark's forward model: 64 coefficients theta > 0 (the
    benchmark's order) -> the 169 point values of u (its order); adjoint gradients."""

    name = "aristoff-bangerth"
    param_shape, n_obs = (64,), 169
    positive = True
    parameter_label = "θ"  # pictures show ln θ

    def __init__(self):
        super().__init__()
        from .aristoff_bangerth import AristoffBangerth

        self.benchmark = AristoffBangerth()

    def set_jobs(self, jobs: int) -> None:
        """Solve the chunks of a batch on ``jobs`` workers (processes forked from this one,
        so at most the cores present; :class:`~autovae.inverse.parallel.ChunkWorkers`)."""
        from .parallel import WORKERS, check_jobs

        self.jobs = check_jobs(jobs, processes=WORKERS == "processes")
        self.benchmark._solver.set_jobs(self.jobs)

    def close_workers(self) -> None:
        """Stop the solver's worker processes (the rows then run here; same values)."""
        super().close_workers()
        self.benchmark._solver.close_workers()
        self.jobs = 1

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        """Observations, or NaN rows where the stiffness matrix cannot be factorised (theta's
        ratios beyond double precision, as a sampler's wild proposal can reach): the sampler
        then rejects the proposal (NUTS counts a divergence) instead of the run aborting."""
        theta = params.to(torch.float64)
        try:
            return self.benchmark.forward(theta)
        except ValueError:
            if len(theta) == 1:
                return torch.full((1, self.n_obs), math.nan, dtype=torch.float64)
        return torch.cat([self.evaluate(t[None]) for t in theta])

    def misfit_and_grad(self, params, data, sigma):
        """The benchmark solver's fused call: each row's adjoint solve right after its
        forward solve, with the factor still in cache (one noise sd for every observation;
        per-observation sds go through autograd)."""
        s = sigma.reshape(-1)
        if not bool((s == s[0]).all()):
            return None
        theta = params.detach().reshape(len(params), -1).to(torch.float64).numpy()
        y, sd = data.numpy(), float(s[0])
        solver = self.benchmark._solver
        try:
            log_l, grad = solver.log_likelihood_and_grad(theta, y, sd)
        except ValueError:  # a row the banded Cholesky cannot factorise: NaN there
            log_l, grad = np.full(len(theta), math.nan), np.zeros_like(theta)
            for i in range(len(theta)):
                try:
                    log_l[i:i + 1], grad[i:i + 1] = solver.log_likelihood_and_grad(
                        theta[i:i + 1], y, sd)
                except ValueError:
                    pass
        self.solves += len(theta) * (self.forward_solves + self.adjoint_solves)
        return (torch.from_numpy(-log_l),
                torch.from_numpy(-grad).reshape(params.shape))


FORWARDS = {"darcy": DarcyForward, "aristoff-bangerth": AristoffBangerthForward}
