"""The forward-model contract: parameters (B, *param_shape) -> observations (B, n_obs).

A forward model is differentiable by torch autograd (autograd through torch code, or an
explicit adjoint inside an ``autograd.Function``) unless it says ``gradient = False`` (then
gradient kernels are refused, with ``gradient_reason``), and counts its cost in ``solves``:
every parameter set it maps adds ``forward_solves`` and every gradient it back-propagates adds
``adjoint_solves``, so samplers report PDE solves, not draws.

Built in: :class:`DarcyForward` (``darcy``, the case of the latent-MCMC authors' released code,
spec 3.2) and :class:`~autovae.inverse.aristoff_bangerth.AristoffBangerthForward`
(``aristoff-bangerth``). From the user: a class by import path (``package.module:Class``, see
:func:`load_forward`) or any UM-Bridge model over HTTP (``umbridge:http://host:port/name``,
:class:`~autovae.inverse.umbridge.UMBridgeForward`).
"""

from __future__ import annotations

import abc
import importlib
import math
from typing import Any

import numpy as np
import torch

from .darcy import darcy_pressure

__all__ = ["FORWARDS", "AristoffBangerthForward", "DarcyForward", "ForwardModel", "load_forward",
           "regular_points"]


class ForwardModel(abc.ABC):
    """Parameters (B, *param_shape) float64 -> observations (B, n_obs) float64.

    Subclasses set ``param_shape`` and ``n_obs`` and implement :meth:`evaluate`; calling the
    model checks the input (shape, finiteness, ``positive`` parameters), counts solves and
    checks the output. ``describe()`` is what a chain folder records of the model.
    """

    name = "forward"
    param_shape: tuple[int, ...] = ()
    n_obs: int = 0
    positive = False          # parameters must be > 0 (e.g. coefficients, not their logs)
    gradient = True
    gradient_reason = ""
    forward_solves = 1        # PDE solves per parameter set mapped
    adjoint_solves = 1        # PDE solves per parameter set back-propagated

    def __init__(self):
        self.solves = 0

    @abc.abstractmethod
    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        """(B, *param_shape) -> (B, n_obs); the model's own computation."""

    def describe(self) -> dict[str, Any]:
        """Settings that identify the model (stored in problem.json, compared on resume)."""
        return {"forward": self.name, "param_shape": list(self.param_shape),
                "n_obs": self.n_obs}

    def check(self, params) -> torch.Tensor:
        """The parameters as a (B, *param_shape) float64 tensor, or a ValueError saying why."""
        if not torch.is_tensor(params):
            try:
                params = torch.as_tensor(np.asarray(params, dtype=np.float64))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{self.name}: parameters must be an array of numbers "
                                 f"({err})") from None
        shape = tuple(self.param_shape)
        if tuple(params.shape[params.ndim - len(shape):]) != shape or params.ndim <= len(shape):
            dims = ", ".join(map(str, shape))
            raise ValueError(f"{self.name}: parameters must have shape (B, {dims}), got "
                             f"{tuple(params.shape)}")
        if not params.is_floating_point():
            params = params.double()
        bad = ~torch.isfinite(params.detach())
        if bad.any():
            raise ValueError(f"{self.name}: parameters hold NaN or inf ({int(bad.sum())} "
                             "values); give finite parameters")
        if self.positive and (params.detach() <= 0).any():
            raise ValueError(f"{self.name}: parameters must be > 0 (coefficients, not their "
                             f"logs); the smallest given is {float(params.detach().min()):g}")
        return params

    def __call__(self, params) -> torch.Tensor:
        params = self.check(params)
        batch = params.shape[0]
        out = self.evaluate(params)
        self.solves += batch * self.forward_solves
        if not torch.is_tensor(out) or tuple(out.shape) != (batch, self.n_obs):
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"{self.name}: the model returned {shape} for {batch} parameter "
                             f"sets; it must return (B, n_obs) = ({batch}, {self.n_obs})")
        if out.requires_grad:
            out.register_hook(self._count_adjoint(batch))
        return out

    def _count_adjoint(self, batch: int):
        def hook(grad):
            self.solves += batch * self.adjoint_solves
        return hook

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def regular_points(count: int) -> torch.Tensor:
    """(m^2, 2) interior points ((k + 1/2) / m) of a regular m x m grid, count = m^2 (64: the
    Darcy case's 8 x 8 at 1/16, 3/16, ..., 15/16)."""
    m = math.isqrt(count) if isinstance(count, int) and count > 0 else 0
    if m * m != count or m < 1:
        raise ValueError(f"--points {count!r} is not a square number of observation points; give "
                         "m*m (e.g. 64 = 8x8) or a file of (x, y) rows")
    c = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], 1)


class DarcyForward(ForwardModel):
    """Darcy pressures at observation points from a log-permeability field (n, n).

    -div(k grad p) = ``source`` on [0, 1]^2 (a number or an (n, n) array of cell values),
    p = 0 on x = 0, 1, no flux on y = 0, 1, cell-centred finite volumes on the ``grid`` x
    ``grid`` mesh (:mod:`autovae.inverse.darcy`), observed at ``points`` (P, 2) in [0, 1]^2 (or
    a square count: a regular interior grid). Adjoint gradients. The case comes from the
    latent-MCMC authors' released code (spec 3.2), not from their report. A failing solve gives
    NaN observations (a chain then stops with that reason) instead of aborting the batch.
    """

    name = "darcy"

    def __init__(self, grid: int = 16, points=64, source=3.0):
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
        self.grid, self.points, self.source = grid, pts, src
        self.param_shape, self.n_obs = (grid, grid), int(pts.shape[0])

    def describe(self) -> dict[str, Any]:
        src = float(self.source) if self.source.ndim == 0 else self.source.tolist()
        return {**super().describe(), "grid": self.grid, "points": self.points.tolist(),
                "source": src}

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        return self.pressure(params, self.points)

    def pressure(self, log_k: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Pressures of fields of any grid (a finer truth, say) at ``points``."""
        f = float(self.source) if self.source.ndim == 0 else None
        try:
            if f is None:
                from .darcy import DarcySolver
                return _pressure_with(DarcySolver(log_k.shape[-1], self.source), log_k, points)
            return darcy_pressure(log_k, points, f)
        except ValueError:
            if log_k.shape[0] == 1:
                return torch.full((1, points.shape[0]), math.nan, dtype=log_k.dtype)
        return torch.cat([self.pressure(f_[None], points) for f_ in log_k])


def _pressure_with(solver, log_k, points) -> torch.Tensor:
    from .darcy import observation_operator

    n = log_k.shape[-1]
    H = torch.from_numpy(observation_operator(n, points).toarray()).to(log_k.dtype)
    return solver.solve(log_k).reshape(len(log_k), n * n) @ H.T


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
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--forward {spec}: cannot import {module_name} ({err}); is it on "
                         "PYTHONPATH or installed?") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"--forward {spec}: {module_name} has no {attr}")
    if not (isinstance(cls, type) and issubclass(cls, ForwardModel)):
        raise ValueError(f"--forward {spec}: {attr} is not a subclass of "
                         "autovae.inverse.ForwardModel; subclass it (set param_shape, n_obs, "
                         "define evaluate)")
    try:
        model = cls(**options)
    except TypeError as err:
        raise ValueError(f"--forward {spec}: cannot build {attr} ({err})") from None
    if not model.param_shape or not model.n_obs:
        raise ValueError(f"--forward {spec}: {attr} must set param_shape and n_obs")
    return model


class AristoffBangerthForward(ForwardModel):
    """The Aristoff-Bangerth benchmark's forward model: 64 coefficients theta > 0 (the
    benchmark's order) -> the 169 point values of u (its order); adjoint gradients."""

    name = "aristoff-bangerth"
    param_shape, n_obs = (64,), 169
    positive = True

    def __init__(self):
        super().__init__()
        from .aristoff_bangerth import AristoffBangerth

        self.benchmark = AristoffBangerth()

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        return self.benchmark.forward(params.to(torch.float64))


FORWARDS = {"darcy": DarcyForward, "aristoff-bangerth": AristoffBangerthForward}
