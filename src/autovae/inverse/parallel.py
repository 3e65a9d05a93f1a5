"""The rows of a batch on N workers (``--jobs N``), with results independent of N.

A batch of parameter sets (one row per chain, or per chain and leapfrog step) is cut into N
contiguous chunks, each evaluated by one worker, and put back in order; every row is computed
by the same arithmetic whatever chunk it falls in, so the draws do not depend on N.

* :func:`run_rows` -- threads, for work that releases the GIL: a UM-Bridge model's HTTP
  requests, a user's model declared ``parallel_rows = "threads"``, and the built-in models,
  whose whole chunk (assembly, factorisation, forward and adjoint solves, gradient) is a few
  numpy operations on whole arrays and one LAPACK call per step on a :class:`BandStack`
  (called through ctypes, which releases the GIL where scipy's wrappers do not).
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
import signal
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_JOBS", "WORKERS", "BandStack", "ChunkWorkers", "ProcessRows", "check_jobs",
           "chunks", "on_chunks", "on_kept", "row_sum", "run_rows"]

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


def run_rows(fn: Callable[[int, int], object], n: int, jobs: int, each: bool = False) -> list:
    """``fn(start, stop)`` on each chunk of 0..n (``each``: on each row, ``stop = start + 1``,
    up to ``jobs`` at once, e.g. one request per row) on ``jobs`` threads; the results in order.
    Every chunk is waited for (none is left running, writing into shared arrays, behind an
    error) before the first error is raised."""
    parts = [(i, i + 1) for i in range(n)] if each else chunks(n, jobs)
    if jobs <= 1 or len(parts) <= 1:
        return [fn(a, b) for a, b in parts]
    futures = [_pool(jobs).submit(fn, a, b) for a, b in parts]
    out, first = [], None
    for f in futures:
        try:
            out.append(f.result())
        except Exception as err:  # noqa: BLE001 (re-raised below, once every chunk is done)
            first = first or err
    if first is not None:
        raise first
    return out


def row_sum(x: np.ndarray) -> np.ndarray:
    """The sum over the last axis by a fixed pairwise tree: numpy's own reduction may add a
    row's terms in another order depending on how many rows there are, and a row's value must
    not depend on the chunk it comes in."""
    n = x.shape[-1]
    width = 1 << max(0, n - 1).bit_length()
    if width != n:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], width - n))], axis=-1)
    while width > 1:
        width //= 2
        x = x[..., :width] + x[..., width:]
    return x[..., 0]


# -- LAPACK without the GIL ---------------------------------------------------------------------
_INT = ctypes.POINTER(ctypes.c_int)
_PTR = ctypes.c_void_p  # a double array, passed as its address (arr.ctypes.data)


@functools.cache
def _lapack(name: str):
    """``dpbtrf`` or ``dpbtrs`` from scipy's ``cython_lapack`` as a ctypes function (ctypes
    releases the GIL for the call)."""
    from scipy.linalg import cython_lapack

    argtypes = {"dpbtrf": (ctypes.c_char_p, _INT, _INT, _PTR, _INT, _INT),
                "dpbtrs": (ctypes.c_char_p, _INT, _INT, _INT, _PTR, _INT, _PTR, _INT, _INT)}
    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return ctypes.CFUNCTYPE(None, *argtypes[name])(get_ptr(capsule, get_name(capsule)))


def _aligned(shape: tuple[int, ...]) -> np.ndarray:
    """Zeros of ``shape`` starting on a 64-byte boundary (so that every stack has the same
    alignment, whatever the allocator gives)."""
    size = int(np.prod(shape))
    buf = np.zeros(size + 8)
    start = (-buf.ctypes.data % 64) // 8
    return buf[start:start + size].reshape(shape)


class BandStack:
    """``rows`` symmetric positive-definite band matrices (order n, half-bandwidth kd), all
    factorised by one LAPACK ``dpbtrf`` call and solved by one ``dpbtrs`` call, without the
    GIL (ctypes): a whole chunk of rows is one call, so threads run it in parallel.

    The matrices sit on the diagonal of one band matrix, uncoupled, each padded to a multiple
    of 64 columns with the identity and the stack led and ended by an identity block at least
    kd wide. Every matrix then meets the same arithmetic wherever it sits (the same panels of
    the blocked factorisation, the same full-length windows of the triangular solves, the
    same 64-byte alignment, exact zeros from its neighbours), so a row's factor and solutions
    are bit for bit the same in a stack of one or of a hundred -- the draws do not depend on
    ``--jobs``. A matrix that is not numerically positive definite, or whose factor is not
    finite, is replaced by the identity and the rest refactorised, so it cannot spoil its
    neighbours; :attr:`status` says which (LAPACK's info; -1: a non-finite factor).
    """

    unit = 64  # columns per panel of dpbtrf (32) or twice that

    def __init__(self, n: int, kd: int, rows: int):
        self.n, self.kd, self.rows = n, kd, rows
        self.width = -(-n // self.unit) * self.unit
        self.lead = max(1, -(-kd // self.unit)) * self.unit
        self.size = 2 * self.lead + rows * self.width
        # lower band storage, Fortran (kd + 1, size) = C (size, kd + 1): ab[j, d] = A[j + d, j]
        self.ab = _aligned((self.size, kd + 1))
        self.ab[:, 0] = 1.0
        self.status = np.zeros(rows, dtype=np.int64)
        #: (rows, n, kd + 1) view: ``blocks[b, j, d] = A_b[j + d, j]`` (zero where j + d >= n)
        self.blocks = self.ab[self.lead:self.lead + rows * self.width].reshape(
            rows, self.width, kd + 1)[:, :n]

    def _block(self, b: int) -> np.ndarray:
        """Rows of :attr:`ab` holding matrix b, its padding included."""
        return self.ab[self.lead + b * self.width:self.lead + (b + 1) * self.width]

    def factor(self, assemble: Callable[[np.ndarray, int, int], None]) -> np.ndarray:
        """Factorise the matrices that ``assemble(blocks, lo, hi)`` writes into ``blocks[lo:hi]``
        (called again for the rows after a failed one); returns :attr:`status`."""
        first = 0
        while first < self.rows:
            if first:  # what the failed call left behind: back to the identity
                rest = self.ab[self.lead + first * self.width:]
                rest[:] = 0.0
                rest[:, 0] = 1.0
            assemble(self.blocks, first, self.rows)
            # from the identity block before ``first`` (the lead, or the failed matrix)
            col = 0 if first == 0 else self.lead + (first - 1) * self.width
            info = ctypes.c_int(0)
            _lapack("dpbtrf")(b"L", ctypes.byref(ctypes.c_int(self.size - col)),
                              ctypes.byref(ctypes.c_int(self.kd)),
                              self.ab.ctypes.data + col * (self.kd + 1) * 8,
                              ctypes.byref(ctypes.c_int(self.kd + 1)), ctypes.byref(info))
            stop = self.rows
            if info.value > 0:
                stop = (col + info.value - 1 - self.lead) // self.width
            finite = np.isfinite(self.blocks[first:stop]).all(axis=(1, 2))
            bad = first + int(np.argmin(finite)) if not finite.all() else stop
            if bad >= self.rows:
                break
            # LAPACK's info within the matrix (its failing column, from 1); -1: not finite
            self.status[bad] = (col + info.value - self.lead - bad * self.width
                                if bad == stop and info.value > 0 else -1)
            block = self._block(bad)
            block[:] = 0.0
            block[:, 0] = 1.0
            first = bad + 1
        return self.status

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """(rows, n) right-hand sides -> (rows, n) solutions (NaN for a failed matrix).

        One call for the stack; where a solution is not finite (a right-hand side with NaN,
        say), its zero coupling could carry NaN (0 * inf) into a neighbour, so every row is
        then solved again in a stack of its own (the same arithmetic: same values)."""
        x = _aligned((self.size,))
        inner = x[self.lead:self.lead + self.rows * self.width].reshape(self.rows, self.width)
        inner[:, :self.n] = rhs
        failed = self.status.any()
        if failed:
            inner[self.status != 0] = 0.0
        size, info = ctypes.c_int(self.size), ctypes.c_int(0)
        _lapack("dpbtrs")(b"L", ctypes.byref(size), ctypes.byref(ctypes.c_int(self.kd)),
                          ctypes.byref(ctypes.c_int(1)), self.ab.ctypes.data,
                          ctypes.byref(ctypes.c_int(self.kd + 1)), x.ctypes.data,
                          ctypes.byref(size), ctypes.byref(info))
        out = inner[:, :self.n].copy()
        if self.rows > 1 and not np.isfinite(out).all():
            for b in range(self.rows):
                one = BandStack(self.n, self.kd, 1)
                one._block(0)[:] = self._block(b)
                out[b] = one.solve(rhs[b:b + 1])[0]
        if failed:
            out[self.status != 0] = np.nan
        return out

# -- a built-in solver's chunks on forked workers --------------------------------------------
WORKERS = "processes" if "fork" in __import__("multiprocessing").get_all_start_methods() \
    else "threads"
"""How the built-in solvers run a batch's chunks with ``jobs`` > 1: in processes forked from
this one (nothing pickled but each call's arrays; where ``fork`` is missing, threads)."""

_KEEP = 16  # states a worker keeps for a backward pass that may not come

MIN_SPLIT_S = 0.003
"""A batch is split over the workers only if this process's own estimate of its serial time
(rows x the measured seconds per row of the same method, :meth:`ChunkWorkers.parts`) is at
least this; below it, sending the chunks and reading the answers back costs more than the
work they save (measured idle on 2 cores: a Darcy 16 x 16 batch of 16 rows, ~0.5 ms a call,
ran 0.59x as fast on 2 processes as here; an Aristoff-Bangerth one, ~4 ms, 1.45x). Rows give
the same bits in any chunk, so this choice changes the time, never the values. 0: always
split (tests set it to exercise the workers)."""

SPLIT_TRIALS = 3
"""Split calls measured before split is judged slower than one chunk: a freshly forked
worker's first calls pay its copy-on-write page faults and cold caches. Idle, 2026-12-07: the
rule that judged from one split call kept an Aristoff-Bangerth batch of 64 rows in one process
(1.05x, where split calls ran 1.76x, in a benchmark of ~6 calls); with 3, and the benchmark's
cases warmed up with 10 calls, --jobs 2 matched every-batch-split (1.77x-1.90x)."""
PROBE = 100
"""Every PROBE-th batch above :data:`MIN_SPLIT_S` is run the way that measured slower, to
follow the load (:meth:`ChunkWorkers.parts`). Each probe costs a call at the slower speed:
where splitting runs r times as fast, (r - 1) / PROBE of the run's time (3.5% at r = 1.7 for
PROBE = 20); at 100 the probes come every 0.3-3 s of an AB batch of 16-64 rows."""


class _Pipe:
    """One end of a :class:`ChunkWorkers` pipe: ``send``/``recv`` of pickled messages, as a
    multiprocessing Connection's but with plain pickle, one write a message and reads of
    whatever has arrived (a Connection pickles through ForkingPickler, which copies its table
    of reducers each time, and reads a message's length and body in two system calls:
    ~60 us more per message here, measured). A message read in part (Ctrl-C) is kept."""

    def __init__(self, conn):
        self.conn, self.fd, self._rest = conn, conn.fileno(), bytearray()

    def send(self, obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[os.write(self.fd, view):]

    def recv(self):
        while True:
            if len(self._rest) >= 8:
                end = 8 + int.from_bytes(self._rest[:8], "little")
                if len(self._rest) >= end:
                    msg = self._rest[8:end]
                    del self._rest[:end]
                    return pickle.loads(msg)
            more = os.read(self.fd, 1 << 20)
            if not more:
                raise EOFError
            self._rest += more

    def close(self) -> None:
        self.conn.close()


def _chunk_worker(conn, owner) -> None:  # pragma: no cover (runs in the worker process)
    # Ctrl-C reaches the whole process group: the parent stops the run and then its workers
    # (close, or None on the pipe at exit); a worker killed by it would print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    conn = _Pipe(conn)
    kept: OrderedDict[int, Any] = OrderedDict()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:  # close()
            return
        key, method, args, keep = msg
        try:
            if key is not None and not keep:  # a kept state's second half
                out = getattr(owner, method)(kept.pop(key), *args)
            else:
                out = getattr(owner, method)(*args)
                if keep:
                    out, kept[key] = out
                    while len(kept) > _KEEP:
                        kept.popitem(last=False)
            conn.send(("ok", out))
        except Exception as err:  # noqa: BLE001 (sent to the parent, raised there)
            conn.send(("value" if isinstance(err, ValueError) else "error",
                       str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"))


class ChunkWorkers:
    """A solver's chunks of rows on ``jobs`` workers: ``owner.METHOD(*args)`` per chunk, one
    chunk per worker, results in order. In processes (:data:`WORKERS`): this process runs the
    first chunk and ``jobs - 1`` processes forked from it the others, each having inherited
    ``owner`` (a built-in solver: its arrays, no pickling) and running with its own GIL; in
    threads otherwise. ``keep``: the method returns (result, state) and the state stays with
    the worker that made it (a factorisation, for the adjoint solves), passed back as the
    first argument of :meth:`call_kept`. Every worker's answer is read before an error is
    raised, so none is left in a pipe for the next call.

    :meth:`parts` says how to cut a batch: into ``jobs`` chunks only when its serial time
    would be at least :data:`MIN_SPLIT_S`, else one chunk, run here (see there)."""

    def __init__(self, owner, jobs: int, workers: str | None = None):
        self.owner, self.jobs, self._key = owner, jobs, 0
        self._per_row: dict[tuple[str, bool], list[float]] = {}  # (method, split) -> recent
        self._calls: dict[str, int] = {}  # seconds per row of whole calls; calls split or not
        self._owed: set[int] = set()  # workers whose reply has not been read yet
        self.processes = (workers or WORKERS) == "processes"
        self._conns, self._procs = [], []
        if self.processes:
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            for _ in range(jobs - 1):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_chunk_worker, args=(child, owner), daemon=True)
                proc.start()
                child.close()
                self._conns.append(_Pipe(parent))
                self._procs.append(proc)
        # stopped by close(), when this pool is collected, or at exit (no strong reference
        # kept, as atexit.register would: a dropped solver's workers would live on)
        self._stop = weakref.finalize(self, _stop_workers, self._conns, self._procs,
                                      os.getpid())

    def parts(self, method: str, n: int) -> list[tuple[int, int]]:
        """The chunks for a batch of ``n`` rows given to ``method``: one, ``[(0, n)]``, run in
        this process, when n x its seconds per row unsplit (the least of the last 5 calls
        here: a pause for other work, or a first call's setup, is not the cost) is under
        :data:`MIN_SPLIT_S` or measured fewer than twice; else ``chunks(n, jobs)``,
        unless :data:`SPLIT_TRIALS` split calls were measured slower per row than unsplit
        ones (a loaded machine: no free core). Every :data:`PROBE`-th such call tries the
        other way, so that both measurements follow the load. ``MIN_SPLIT_S = 0``: always
        ``jobs`` chunks."""
        if MIN_SPLIT_S <= 0:
            return chunks(n, self.jobs)
        serial, split = self._per_row.get((method, False), []), self._per_row.get((method, True))
        if len(serial) < 2 or n * min(serial) < MIN_SPLIT_S:
            return [(0, n)]
        self._calls[method] = self._calls.get(method, 0) + 1
        faster = len(split or ()) < SPLIT_TRIALS or min(split) <= min(serial)
        return chunks(n, self.jobs) if faster != (self._calls[method] % PROBE == 0) else [(0, n)]

    def _note(self, method: str, args: list[tuple], start: float) -> None:
        """Seconds per row of a whole call (rows: each chunk's first argument, an array)."""
        rows = sum(len(a[0]) if a and hasattr(a[0], "__len__") else 1 for a in args)
        times = self._per_row.setdefault((method, len(args) > 1), [])
        times.append((time.perf_counter() - start) / max(1, rows))
        del times[:-5]

    def call(self, method: str, args: list[tuple], keep: bool = False) -> list:
        """``owner.method(*a)`` for each a in ``args`` (at most ``jobs``; each a's first item
        the chunk's rows; the call timed for :meth:`parts`); with ``keep``, [(result, handle)]
        where handle is what :meth:`call_kept` takes (one chunk: run here, its state kept
        here)."""
        start = time.perf_counter()
        if len(args) == 1:
            outs = [getattr(self.owner, method)(*args[0])]
            self._note(method, args, start)
            return outs
        if not self.processes:
            outs = run_rows(lambda i, _: getattr(self.owner, method)(*args[i]), len(args),
                            self.jobs, each=True)
            self._note(method, args, start)
            return outs
        self._key += 1
        key = self._key if keep else None
        outs = self._exchange(lambda: getattr(self.owner, method)(*args[0]),
                              [(i, (key, method, a, keep)) for i, a in enumerate(args[1:])])
        self._note(method, args, start)
        if not keep:
            return outs
        return [outs[0]] + [(out, (i, self._key)) for i, out in enumerate(outs[1:])]

    def call_kept(self, method: str, handles: list, args: list[tuple]) -> list:
        """``owner.method(state, *a)`` with each state that :meth:`call` kept."""
        if not self.processes:
            return run_rows(lambda i, _: getattr(self.owner, method)(handles[i], *args[i]),
                            len(args), self.jobs, each=True)
        return self._exchange(lambda: getattr(self.owner, method)(handles[0], *args[0]),
                              [(w, (key, method, a, False))
                               for (w, key), a in zip(handles[1:], args[1:], strict=True)])

    def _exchange(self, local: Callable[[], Any], messages: list) -> list:
        """Send ``messages`` to the workers, run ``local()`` here meanwhile, and read
        every reply; the results in order, or the first error once all are in."""
        died = "a worker process died (killed, or out of memory)"
        for w in sorted(self._owed):  # a call interrupted (Ctrl-C) before it read them: the
            try:  # replies would be taken for this call's
                self._conns[w].recv()
            except (EOFError, OSError):
                pass
        self._owed.clear()
        sent = set()
        for w, msg in messages:
            try:
                self._conns[w].send(msg)
                sent.add(w)
                self._owed.add(w)
            except OSError:  # its process is gone: no reply to wait for
                pass
        outs, first = [None], None
        try:
            outs[0] = local()
        except Exception as err:  # noqa: BLE001 (raised below, once every reply is read)
            first = err
        for w, _ in messages:
            if w not in sent:
                status, value = "error", died
            else:
                try:
                    status, value = self._conns[w].recv()
                except (EOFError, OSError):
                    status, value = "error", died
                self._owed.discard(w)
            if status != "ok":
                first = first or ValueError(value if status == "value" else
                                            f"{type(self.owner).__name__} failed in a worker "
                                            f"process: {value}")
            outs.append(value)
        if first is not None:
            raise first
        return outs

    def close(self) -> None:
        self._stop()


def on_chunks(workers: ChunkWorkers | None, owner, method: str, n: int,
              args: Callable[[int, int], tuple], keep: bool = False) -> tuple[list, list]:
    """``owner.method(*args(a, b))`` on chunks (a, b) of rows 0..n: on ``workers`` (cut only
    where that pays, :meth:`ChunkWorkers.parts`; ``keep`` as in :meth:`ChunkWorkers.call`),
    or, without workers, as one chunk here. Returns the chunks and their results in order."""
    if workers is None:
        return [(0, n)], [getattr(owner, method)(*args(0, n))]
    parts = workers.parts(method, n)
    return parts, workers.call(method, [args(a, b) for a, b in parts], keep=keep)


def on_kept(workers: ChunkWorkers | None, owner, method: str, parts: list, states: list,
            args: Callable[[int, int], tuple]) -> list:
    """``owner.method(state, *args(a, b))`` for each chunk (a, b) of :func:`on_chunks` with
    ``keep`` and the state kept for it, each run where its state is."""
    if workers is None:
        return [getattr(owner, method)(s, *args(a, b)) for s, (a, b) in zip(states, parts,
                                                                           strict=True)]
    return workers.call_kept(method, states, [args(a, b) for a, b in parts])


def _stop_workers(conns: list, procs: list, pid: int) -> None:
    """Stop a :class:`ChunkWorkers`' processes (a straggler after 5 s is killed); only from
    the process that started them (a forked copy of the pool must not stop them)."""
    if os.getpid() != pid:
        return
    for conn in conns:
        try:
            conn.send(None)  # not EOF alone: workers forked later hold this end too
            conn.close()
        except OSError:
            pass
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    conns.clear()
    procs.clear()


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
