"""The rows of a batch on N workers (``--jobs N``), with results independent of N.

A batch of parameter sets (one row per chain, or per chain and leapfrog step) is cut into N
contiguous chunks, each evaluated by one worker, and put back in order; every row is computed
by the same code whatever chunk it falls in, so the draws do not depend on N.

* :func:`run_rows` -- threads, for work that releases the GIL: the built-in models' LAPACK
  (:func:`banded_cholesky`, called through ctypes, which releases the GIL where scipy's
  wrappers do not) and sparse LU (SuperLU releases it), a UM-Bridge model's HTTP requests.
* :class:`ProcessRows` -- worker processes, each with its own copy of a user's model (for a
  :class:`~autovae.inverse.forward.ForwardModel` with ``parallel_rows = "processes"``),
  gradients included: the worker that evaluated a chunk keeps its autograd graph for the
  backward pass.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["MAX_JOBS", "ProcessRows", "banded_cholesky", "check_jobs", "chunks", "run_rows"]

MAX_JOBS = 256
"""The most workers: threads are cheap, but each is a stack and, for UM-Bridge, a connection."""


def check_jobs(jobs, processes: bool = False, name: str = "--jobs") -> int:
    """``jobs`` as an int in [1, MAX_JOBS] (processes: at most the cores present), or a
    ValueError naming the limit and the input (``name``)."""
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number of workers >= 1, got {jobs!r}")
    jobs = int(jobs)
    if jobs < 1:
        raise ValueError(f"{name} must be >= 1 (1: one worker, no parallelism), got {jobs}")
    if jobs > MAX_JOBS:
        raise ValueError(f"{name} {jobs} is more than autovae runs at once (at most "
                         f"{MAX_JOBS} workers); give {name} <= {MAX_JOBS}")
    cores = os.cpu_count() or 1
    if processes and jobs > cores:
        raise ValueError(f"{name} {jobs}: this model runs its rows in processes, and this "
                         f"machine has {cores} cores; give {name} <= {cores}")
    return jobs


def chunks(n: int, jobs: int) -> list[tuple[int, int]]:
    """At most ``jobs`` contiguous (start, stop) ranges covering 0..n, sizes within one."""
    k = max(1, min(jobs, n))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


@functools.cache
def _pool(jobs: int) -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="autovae-rows")
    atexit.register(pool.shutdown, wait=False)
    return pool


def run_rows(fn: Callable[[int, int], object], n: int, jobs: int) -> list:
    """``fn(start, stop)`` on each chunk of 0..n, on ``jobs`` threads; results in order (an
    exception in any chunk is raised here)."""
    parts = chunks(n, jobs)
    if len(parts) <= 1:
        return [fn(a, b) for a, b in parts]
    futures = [_pool(jobs).submit(fn, a, b) for a, b in parts]
    return [f.result() for f in futures]


# -- LAPACK without the GIL ---------------------------------------------------------------------
_INT = ctypes.POINTER(ctypes.c_int)
_DBL = ctypes.POINTER(ctypes.c_double)


@functools.cache
def _lapack(name: str, *argtypes):
    """A LAPACK routine from scipy's ``cython_lapack`` as a ctypes function (ctypes releases
    the GIL for the call), or None where the pointer cannot be had."""
    try:
        from scipy.linalg import cython_lapack

        capsule = cython_lapack.__pyx_capi__[name]
        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        return ctypes.CFUNCTYPE(None, *argtypes)(get_ptr(capsule, get_name(capsule)))
    except Exception:  # pragma: no cover (an unusual scipy build: fall back to its wrappers)
        return None


class banded_cholesky:  # noqa: N801 (a namespace of two functions)
    """LAPACK's ``dpbtrf`` / ``dpbtrs`` for a lower band matrix (kd + 1, n), releasing the GIL
    (through ctypes); the same routines, bit for bit, as ``scipy.linalg.lapack``'s."""

    @staticmethod
    def factor(ab: np.ndarray) -> tuple[np.ndarray, int]:
        """The Cholesky factor of ``ab`` (Fortran-ordered, overwritten) and LAPACK's info."""
        f = _lapack("dpbtrf", ctypes.c_char_p, _INT, _INT, _DBL, _INT, _INT)
        if f is None:  # pragma: no cover
            from scipy.linalg import lapack

            c, info = lapack.dpbtrf(ab, lower=1, overwrite_ab=1)
            return c, info
        ab = np.asfortranarray(ab)
        kd1, n = ab.shape
        info = ctypes.c_int(0)
        f(b"L", ctypes.byref(ctypes.c_int(n)), ctypes.byref(ctypes.c_int(kd1 - 1)),
          ab.ctypes.data_as(_DBL), ctypes.byref(ctypes.c_int(kd1)), ctypes.byref(info))
        return ab, info.value

    @staticmethod
    def solve(c: np.ndarray, b: np.ndarray) -> np.ndarray:
        """x with A x = b, A = L L^T from :meth:`factor`'s ``c`` (b is not changed)."""
        f = _lapack("dpbtrs", ctypes.c_char_p, _INT, _INT, _INT, _DBL, _INT, _DBL, _INT, _INT)
        if f is None:  # pragma: no cover
            from scipy.linalg import lapack

            return lapack.dpbtrs(c, b, lower=1)[0]
        x = np.array(b, dtype=np.float64, order="F", copy=True)
        kd1, n = c.shape
        info = ctypes.c_int(0)
        f(b"L", ctypes.byref(ctypes.c_int(n)), ctypes.byref(ctypes.c_int(kd1 - 1)),
          ctypes.byref(ctypes.c_int(1)), c.ctypes.data_as(_DBL), ctypes.byref(ctypes.c_int(kd1)),
          x.ctypes.data_as(_DBL), ctypes.byref(ctypes.c_int(n)), ctypes.byref(info))
        return x


# -- worker processes ---------------------------------------------------------------------------
def _serve(conn, payload: bytes) -> None:  # pragma: no cover (runs in the worker process)
    torch.set_num_threads(1)
    try:
        model = pickle.loads(payload)
    except Exception as err:
        conn.send(("error", f"cannot rebuild the model in a worker ({type(err).__name__}: "
                            f"{err})"))
        return
    conn.send(("ok", None))
    graphs: OrderedDict[int, tuple] = OrderedDict()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        try:
            if msg[0] == "stop":
                return
            if msg[0] == "eval":
                _, key, x, grad = msg
                if grad:
                    x = x.requires_grad_(True)
                    with torch.enable_grad():
                        y = model.evaluate(x)
                    graphs[key] = (x, y)
                    while len(graphs) > 8:
                        graphs.popitem(last=False)
                else:
                    with torch.no_grad():
                        y = model.evaluate(x)
                conn.send(("ok", y.detach()))
            elif msg[0] == "vjp":
                _, key, g = msg
                x, y = graphs.pop(key)
                (gx,) = torch.autograd.grad(y, x, g)
                conn.send(("ok", gx))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


class ProcessRows:
    """``jobs`` worker processes, each holding a copy of ``model`` (pickled; refused here, with
    the reason, if it cannot be). :meth:`evaluate` sends one chunk of rows to each and is
    differentiable: the backward pass goes to the worker that holds the chunk's graph."""

    def __init__(self, model, jobs: int):
        import multiprocessing as mp

        try:
            payload = pickle.dumps(model)
        except Exception as err:
            raise ValueError(f"{model.name} declares parallel_rows = 'processes', but it cannot "
                             f"be pickled to send to worker processes ({type(err).__name__}: "
                             f"{err}); make it picklable (no open files, locks or lambdas "
                             "as attributes) or use parallel_rows = 'threads'") from None
        ctx = mp.get_context("spawn")
        self.name, self.jobs, self._key = model.name, jobs, 0
        self._conns, self._procs = [], []
        for _ in range(jobs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(child, payload), daemon=True)
            p.start()
            self._conns.append(parent)
            self._procs.append(p)
        try:
            for conn in self._conns:
                self._reply(conn)
        except ValueError:
            self.close()  # no worker left running behind a model that cannot be rebuilt
            raise
        atexit.register(self.close)

    def _reply(self, conn):
        try:
            status, value = conn.recv()
        except (EOFError, OSError):
            raise ValueError(f"{self.name}: a worker process died (killed, or out of memory)") \
                from None
        if status != "ok":
            raise ValueError(f"{self.name} failed in a worker process: {value}")
        return value

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, n_obs), the chunks on the workers, differentiable."""
        return _Scattered.apply(params, self)

    def _map(self, op: str, parts: list, extra) -> list:
        for conn, part in zip(self._conns, parts, strict=False):
            conn.send((op, *extra(part)))
        out, first = [], None
        for conn, _ in zip(self._conns, parts, strict=False):
            try:  # read every reply, so that none is left in a pipe for the next call
                out.append(self._reply(conn))
            except ValueError as err:
                first = first or err
        if first is not None:
            raise first
        return out

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for p in self._procs:
            p.join(timeout=5)
        self._conns, self._procs = [], []


class _Scattered(torch.autograd.Function):
    @staticmethod
    def forward(ctx, params, pool):
        pool._key += 1
        key, grad = pool._key, params.requires_grad
        bounds = chunks(len(params), pool.jobs)
        parts = [params.detach()[a:b].clone() for a, b in bounds]
        outs = pool._map("eval", parts, lambda x: (key, x, grad))
        ctx.pool, ctx.key, ctx.bounds = pool, key, bounds
        return torch.cat(outs)

    @staticmethod
    def backward(ctx, grad_out):
        parts = [grad_out[a:b].contiguous() for a, b in ctx.bounds]
        grads = ctx.pool._map("vjp", parts, lambda g: (ctx.key, g))
        return torch.cat(grads), None
