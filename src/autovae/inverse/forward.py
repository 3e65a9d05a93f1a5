"""The forward-model contract: parameters (B, *param_shape) -> observations (B, n_obs).

A forward model is differentiable by torch autograd (autograd through torch code, or an
explicit adjoint inside an ``autograd.Function``) unless it says ``gradient = False`` (then
gradient kernels are refused, with ``gradient_reason``), and counts its cost in ``solves``:
every parameter set it maps adds ``forward_solves`` and every gradient it back-propagates adds
``adjoint_solves``, so samplers report PDE solves, not draws.

The built-in models and :func:`~autovae.inverse.forward_models.load_forward` (``--forward``)
are in :mod:`autovae.inverse.forward_models`.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch

__all__ = ["ForwardModel", "regular_points"]


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
    parallel_rows: str | None = None  # "threads" or "processes": rows may run in parallel
    jobs = 1                  # workers for the rows of a batch (set_jobs)
    # what pictures and posterior.nc show of the model (optional): the observation points
    # (P, 2) in [0, 1]^2 to mark on parameter fields, the parameters' name, and whether they
    # take both signs (a diverging colour map centred at 0)
    points: torch.Tensor | None = None
    parameter_label = "parameter"
    signed = False

    def __init__(self):
        self.solves = 0

    def set_jobs(self, jobs: int) -> None:
        """Evaluate the rows of a batch on ``jobs`` workers (``--jobs``).

        A model whose rows are independent says so with the class attribute
        ``parallel_rows = "threads"`` (its ``evaluate`` releases the GIL: numpy, scipy, torch,
        I/O) or ``"processes"`` (pure Python; the model is pickled to each worker, and refused
        here, before any sampling, if it cannot be). ``evaluate`` then gets contiguous chunks
        of the batch; each row must not depend on the chunk it comes in, so the draws do not
        depend on ``jobs``. Built-in models and UM-Bridge override this. Without
        ``parallel_rows`` the rows stay on one worker (jobs is accepted and unused)."""
        from .parallel import ProcessRows, check_jobs

        if self.parallel_rows not in (None, "threads", "processes"):
            raise ValueError(f"{self.name}: parallel_rows must be None, 'threads' or "
                             f"'processes', got {self.parallel_rows!r}")
        jobs = check_jobs(jobs, processes=self.parallel_rows == "processes")
        self.close_workers()
        self._processes = ProcessRows(self, jobs) \
            if self.parallel_rows == "processes" and jobs > 1 else None
        self.jobs = jobs

    def close_workers(self) -> None:
        """Stop the worker processes :meth:`set_jobs` started, if any (the rows then run on
        one worker; the values do not depend on it)."""
        processes = getattr(self, "_processes", None)
        if processes is not None:
            processes.close()
            self._processes, self.jobs = None, 1

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_processes", None)  # a worker's copy evaluates its rows itself
        state["jobs"] = 1
        return state

    def _evaluate_batch(self, params: torch.Tensor) -> torch.Tensor:
        """``evaluate`` on the batch, split over the workers where the model allows it."""
        if self.jobs <= 1 or self.parallel_rows is None or params.shape[0] < 2:
            return self.evaluate(params)
        processes = getattr(self, "_processes", None)
        if processes is not None:
            return processes.evaluate(params)
        from .parallel import run_rows

        grad = torch.is_grad_enabled()  # grad mode is per thread

        def rows(a, b):
            with torch.set_grad_enabled(grad):
                return self.evaluate(params[a:b])

        return torch.cat(run_rows(rows, params.shape[0], self.jobs))

    @abc.abstractmethod
    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        """(B, *param_shape) -> (B, n_obs); the model's own computation."""

    def misfit_and_grad(self, params: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The misfit 1/2 |(F(params) - data) / sigma|^2 (B,) and its gradient in the
        parameters (B, *param_shape) from one forward and one adjoint solve per row, or None
        (the default): then the inverse problem differentiates ``evaluate`` by autograd.

        A model whose solver can run the adjoint solve right after the forward one overrides
        this: no autograd graph through the model, the factorisation still in cache. It gets
        finite (and, for ``positive`` models, positive) parameters, counts its solves, and
        returns NaN misfit and zero gradient for the rows it cannot evaluate."""
        return None

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
        if not hasattr(self, "solves"):
            raise ValueError(f"the forward model {self.name}: {type(self).__name__}.__init__ "
                             "does not call super().__init__() (ForwardModel's, which starts "
                             "the solve counter); add it as its first line")
        try:
            out = self._evaluate_batch(params)
        except ValueError as err:
            if self.name in str(err):  # already says which model
                raise
            raise ValueError(f"the forward model {self.name} failed in evaluate: "
                             f"{_said(err)}") from err
        except Exception as err:  # the model's own code: its message, naming the model
            raise ValueError(f"the forward model {self.name} failed in evaluate: "
                             f"{_said(err)}") from err
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


def _said(err: BaseException) -> str:
    """An exception as one line: its type and its own message."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
