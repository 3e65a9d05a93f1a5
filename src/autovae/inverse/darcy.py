"""Darcy flow forward model of the inverse-problem benchmark, with adjoint gradients.

-div(k grad p) = f on [0, 1]^2 with boundary conditions ``bc``
(:class:`~autovae.inverse.boundary.BoundaryConditions`: per side a Dirichlet pressure or a
Neumann outward flux -k dp/dn; default p = 0 on x = 0 and x = 1, no flux on y = 0 and y = 1),
with k = exp(log k) constant on each cell of an n x n grid (row i = y, column j = x, cell (i, j)
covering [j/n, (j+1)/n] x [i/n, (i+1)/n]). Cell-centred finite volumes: two-point fluxes with
harmonic-mean face transmissibilities, the Dirichlet faces at half a cell from the centre
(transmissibility 2 k, the pressure P entering the right-hand side as 2 k P), a Neumann face's
flux Q h moved to the right-hand side; the system A(k) p = b(k) = f h^2 - Q h + 2 k P is
factorised once per field: by banded Cholesky (LAPACK ``dpbtrf`` on a
:class:`~autovae.inverse.parallel.BandStack`, a chunk of fields in one call without the GIL) up
to ``BANDED_MAX`` cells a side, by SuperLU (``scipy.sparse.linalg.splu``) beyond. The gradient
of a loss J(p) with respect to log k is the adjoint one: solve A^T lambda = dJ/dp with the same
factors, then dJ/dlog k_c = lambda^T (db/dlog k_c - dA/dlog k_c p).

``darcy_pressure(log_k, points)`` is the public contract: (B, n, n) log-permeabilities and
(P, 2) points (x, y) -> (B, P) pressures, bilinear between cell centres and extended to the
edges: to the pressure P of a Dirichlet side, and with the normal gradient -Q / k of a Neumann
side (constant for no flux); differentiable in log_k.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .boundary import SIDES, BoundaryConditions
from .parallel import BandStack, ChunkWorkers, on_chunks, on_kept

__all__ = ["BANDED_MAX", "DarcySolver", "darcy_pressure", "observation_operator"]

BANDED_MAX = 64
"""Grids up to this many cells a side are solved by banded Cholesky (its n^4 cost is below
SuperLU's there, and a chunk of fields is one LAPACK call); larger by SuperLU."""


def _grid_size(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n (grid size) must be an integer >= 2; got {n!r}")
    return int(n)


def observation_operator(n: int, points, bc=None) -> sp.csr_matrix:
    """(P, n^2) sparse matrix H: H @ p.ravel() interpolates cell pressures p (n, n) at points.

    Bilinear between cell centres; within half a cell of a Dirichlet side the boundary node
    carries the side's pressure (default: p = 0 on x = 0 and 1), within half a cell of a Neumann
    side the value is the nearest centre's (zero normal gradient). With a non-zero Dirichlet
    pressure or Neumann flux the observation also has an affine part (see
    :func:`_observation`); H is its linear part.
    """
    return _observation(n, points, BoundaryConditions.parse(bc))[0]


def _axis(u: np.ndarray, n: int, lo_dirichlet: bool, hi_dirichlet: bool):
    """1-D interpolation weights along one axis: [(index, weight), (index, weight)] with index
    -1 (the low side's node), 0..n-1 (cell centres) or n (the high side's node)."""
    h = 1.0 / n
    if not (lo_dirichlet or hi_dirichlet):
        # centres only, clamped (constant extension to the Neumann edges)
        t = np.clip(u / h - 0.5, 0.0, n - 1.0)
        i = np.clip(np.floor(t).astype(np.int64), 0, n - 2)
        w = t - i
        return [(i, 1 - w), (i + 1, w)]
    # nodes at 0, centres (j + 1/2) h, 1; node index t in [0, n + 1], centres t = 1..n
    t = np.where(u < h / 2, u / (h / 2), np.where(u > 1 - h / 2, n + (u - (1 - h / 2)) /
                                                  (h / 2), u / h + 0.5))
    if not lo_dirichlet:
        t = np.maximum(t, 1.0)
    if not hi_dirichlet:
        t = np.minimum(t, float(n))
    j = np.clip(np.floor(t).astype(np.int64), 0, n)
    w = t - j
    return [(j - 1, 1 - w), (j, w)]


def _observation(n: int, points, bc: BoundaryConditions):
    """(H, offset, N): the observation of cell pressures p (B, n^2) with log-permeability
    log_k is H p + offset - exp(-log_k) N^T. ``offset`` (P,) carries the Dirichlet pressures of
    the boundary nodes, N (P, n^2) the Neumann fluxes (the extension beyond the last centre by
    the normal gradient -Q / k over the distance d: -Q d / k); each None when zero."""
    n = _grid_size(n)
    pts = np.asarray(points.detach().cpu() if torch.is_tensor(points) else points,
                     dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (P, 2) of (x, y); got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points must be finite")
    outside = (pts < 0) | (pts > 1)
    if outside.any():
        bad = pts[outside.any(axis=1)][0]
        raise ValueError(f"points must lie in [0, 1]^2; got ({bad[0]:g}, {bad[1]:g}) "
                         f"({int(outside.any(axis=1).sum())} outside): the domain is the unit "
                         "square")
    h = 1.0 / n
    x, y = pts[:, 0], pts[:, 1]
    (lk, lv), (rk, rv), (bk, bv), (tk, tv) = (getattr(bc, side) for side in SIDES)
    xs = _axis(x, n, lk == "dirichlet", rk == "dirichlet")
    ys = _axis(y, n, bk == "dirichlet", tk == "dirichlet")

    def node_value(kind, value):
        return value if kind == "dirichlet" else 0.0

    # Dirichlet pressures of the boundary nodes (-1: low side, n: high side); a corner node of
    # two Dirichlet sides takes their mean
    gx = {-1: node_value(lk, lv), n: node_value(rk, rv)}
    gy = {-1: node_value(bk, bv), n: node_value(tk, tv)}
    # Neumann: Q d, d the distance beyond the last centre towards that side
    ax = ((0.0 if lk == "dirichlet" else lv) * np.maximum(h / 2 - x, 0.0)
          + (0.0 if rk == "dirichlet" else rv) * np.maximum(x - (1 - h / 2), 0.0))
    ay = ((0.0 if bk == "dirichlet" else bv) * np.maximum(h / 2 - y, 0.0)
          + (0.0 if tk == "dirichlet" else tv) * np.maximum(y - (1 - h / 2), 0.0))
    rows, cols, vals, nvals = [], [], [], []
    offset = np.zeros(len(pts))
    for jx, wx in xs:
        for iy, wy in ys:
            inx, iny = (jx >= 0) & (jx < n), (iy >= 0) & (iy < n)
            r = np.nonzero(inx & iny)[0]
            rows.append(r)
            cols.append(iy[r] * n + jx[r])
            vals.append(wx[r] * wy[r])
            nvals.append(wx[r] * wy[r] * (ax[r] + ay[r]))
            # a boundary node: its pressure
            px = np.where(jx < 0, gx[-1], np.where(jx >= n, gx[n], 0.0))
            py = np.where(iy < 0, gy[-1], np.where(iy >= n, gy[n], 0.0))
            node = np.where(inx, py, np.where(iny, px, 0.5 * (px + py)))
            offset += np.where(inx & iny, 0.0, wx * wy * node)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    H = sp.csr_matrix((np.concatenate(vals), (rows, cols)), shape=(len(pts), n * n))
    H.sum_duplicates()
    H.eliminate_zeros()
    N = None
    if ax.any() or ay.any():
        N = sp.csr_matrix((np.concatenate(nvals), (rows, cols)), shape=(len(pts), n * n))
        N.sum_duplicates()
        N.eliminate_zeros()
    return H, (offset if offset.any() else None), N


class DarcySolver:
    """Finite-volume Darcy solver on an n x n grid: ``solve(log_k)`` -> (B, n, n) pressures.

    ``f``: the source, a number or an (n, n) array of cell values (default 3, the benchmark);
    ``bc``: the boundary conditions (a :class:`~autovae.inverse.boundary.BoundaryConditions`,
    its string ``"left=dirichlet:1,right=neumann:0.5"`` or None for the default).
    ``solve`` is differentiable in log_k (torch autograd, adjoint solve with the forward's LU
    factors); ``solve_permeability(k)`` takes k itself (numpy, no gradient).
    """

    def __init__(self, n: int, f=3.0, bc=None):
        n = _grid_size(n)
        self.bc = BoundaryConditions.parse(bc)
        self.n, self.h = n, 1.0 / n
        f = np.asarray(f, dtype=np.float64)
        if f.ndim == 0:
            f = np.full((n, n), float(f))
        if f.shape != (n, n):
            raise ValueError(f"f must be a number or an (n, n) = ({n}, {n}) array of cell "
                             f"values; got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("f must be finite")
        self.f = f
        self._rhs = (f * self.h**2).ravel()
        idx = np.arange(n * n).reshape(n, n)
        # interior faces: x-faces between (i, j) and (i, j+1), y-faces between (i, j), (i+1, j)
        self._a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
        self._b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
        # boundary cells of each side; Dirichlet faces enter A (2 k) and b (2 k P), Neumann
        # faces b alone (-Q h: the outward flux through the face)
        edge = {"left": idx[:, 0], "right": idx[:, -1], "bottom": idx[0, :], "top": idx[-1, :]}
        dirichlet = [s for s in SIDES if getattr(self.bc, s)[0] == "dirichlet"]
        self._dir = np.concatenate([edge[s] for s in dirichlet])  # default: x = 0 and x = 1
        self._dir_p = np.concatenate([np.full(n, getattr(self.bc, s)[1]) for s in dirichlet])
        neumann = np.zeros(n * n)
        for s in SIDES:
            kind, value = getattr(self.bc, s)
            if kind == "neumann" and value != 0:
                np.add.at(neumann, edge[s], value * self.h)
        if neumann.any():
            self._rhs = self._rhs - neumann
        nf = len(self._a)
        rows = np.concatenate([self._a, self._b, self._a, self._b, self._dir])
        cols = np.concatenate([self._b, self._a, self._a, self._b, self._dir])
        # CSC pattern once; assembly then only scatters the data vector
        pattern = sp.csc_matrix((np.arange(1, len(rows) + 1, dtype=np.float64), (rows, cols)),
                                shape=(n * n, n * n))
        pattern.sort_indices()
        self._indices, self._indptr = pattern.indices.copy(), pattern.indptr.copy()
        # position of each contribution in the data array (duplicates summed by bincount)
        csr_pos = sp.csc_matrix((np.arange(len(pattern.data), dtype=np.float64),
                                 pattern.indices, pattern.indptr), shape=pattern.shape)
        self._slot = np.asarray(csr_pos[rows, cols]).ravel().astype(np.int64)
        self._nnz = len(pattern.data)
        self._nf = nf

    def _rhs_for(self, k: np.ndarray) -> np.ndarray:
        """b(k): the source and Neumann part, plus 2 k P on the Dirichlet faces (k flat)."""
        if not self._dir_p.any():
            return self._rhs
        rhs = self._rhs.copy()
        np.add.at(rhs, self._dir, 2.0 * k[self._dir] * self._dir_p)
        return rhs

    def _transmissibilities(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # harmonic mean 2 / (1/k_a + 1/k_b): the two half-cells in series, no overflow
        return 2.0 / (1.0 / k[self._a] + 1.0 / k[self._b]), 2.0 * k[self._dir]

    def matrix(self, k: np.ndarray) -> sp.csc_matrix:
        """The (n^2, n^2) finite-volume matrix A(k) for cell permeabilities k (n, n)."""
        t, td = self._transmissibilities(np.asarray(k, dtype=np.float64).ravel())
        contrib = np.concatenate([-t, -t, t, t, td])
        data = np.bincount(self._slot, weights=contrib, minlength=self._nnz)
        return sp.csc_matrix((data, self._indices, self._indptr), shape=(self.n**2,) * 2)

    def _factor(self, k: np.ndarray):
        try:
            return spla.splu(self.matrix(k), permc_spec="MMD_AT_PLUS_A",
                             diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        except RuntimeError as err:
            raise ValueError(f"the Darcy matrix could not be factorised ({err}): the "
                             "permeability contrast is too extreme for double precision; "
                             "bound log_k (e.g. clip it to [-30, 30])") from err

    def _check_k(self, k: np.ndarray, name: str) -> np.ndarray:
        if k.ndim != 3 or k.shape[1:] != (self.n, self.n):
            raise ValueError(f"{name} must have shape (B, {self.n}, {self.n}); got {k.shape}")
        if not np.isfinite(k).all():
            raise ValueError(f"{name} must be finite (found NaN or inf)")
        return k

    def solve_permeability(self, k) -> np.ndarray:
        """(B, n, n) (or (n, n)) permeabilities k > 0 -> float64 cell pressures, same shape."""
        k = np.asarray(k, dtype=np.float64)
        single = k.ndim == 2
        k = self._check_k(k[None] if single else k, "k")
        if (k <= 0).any():
            raise ValueError("k (permeability) must be positive everywhere; found "
                             f"min(k) = {k.min():g}")
        p = np.stack([self._factor(ki).solve(self._rhs_for(ki.ravel())).reshape(self.n, self.n)
                      for ki in k])
        return p[0] if single else p

    def solve(self, log_k, jobs: int = 1) -> torch.Tensor:
        """(B, n, n) log-permeabilities -> (B, n, n) cell pressures, log_k's dtype, with grad;
        the rows factorised (and back-propagated) on ``jobs`` workers."""
        log_k = _as_field(log_k, "log_k")
        if log_k.shape[1:] != (self.n, self.n):
            raise ValueError(f"log_k must have shape (B, {self.n}, {self.n}) for this "
                             f"solver; got {tuple(log_k.shape)}")
        return _DarcySolve.apply(log_k, self, jobs)

    # numpy cores of the autograd function
    @property
    def banded(self) -> bool:
        """Banded Cholesky (natural order, half-bandwidth n: cost n^4 per solve, no GIL) up
        to ``BANDED_MAX`` cells a side; SuperLU (cheaper for large grids, holds the GIL) beyond."""
        return self.n <= BANDED_MAX

    def _sides(self, k: np.ndarray):
        """The cells (views of a (B, n, n) array) of each Dirichlet side and its pressure."""
        cells = {"left": (slice(None), slice(None), 0), "right": (slice(None), slice(None), -1),
                 "bottom": (slice(None), 0, slice(None)), "top": (slice(None), -1, slice(None))}
        return [(cells[s], getattr(self.bc, s)[1]) for s in SIDES
                if getattr(self.bc, s)[0] == "dirichlet"]

    def _assemble(self, k: np.ndarray, blocks: np.ndarray) -> None:
        """A(k) of (B, n, n) fields k into ``blocks`` (B, n^2, n + 1), lower band storage
        ``[b, j, d] = A_b[j + d, j]`` (cell j = i n + jx: x neighbours at d = 1, y at d = n)."""
        n = self.n
        tx = 2.0 / (1.0 / k[:, :, :-1] + 1.0 / k[:, :, 1:])  # faces (i, j)-(i, j+1)
        ty = 2.0 / (1.0 / k[:, :-1, :] + 1.0 / k[:, 1:, :])  # faces (i, j)-(i+1, j)
        diag = np.zeros_like(k)
        diag[:, :, :-1] += tx
        diag[:, :, 1:] += tx
        diag[:, :-1, :] += ty
        diag[:, 1:, :] += ty
        for cells, _ in self._sides(k):
            diag[cells] += 2.0 * k[cells]
        sub_x, sub_y = np.zeros_like(k), np.zeros_like(k)  # none across a row's end
        sub_x[:, :, :-1] = -tx
        sub_y[:, :-1, :] = -ty
        blocks[:] = 0.0
        blocks[:, :, 0] = diag.reshape(len(k), -1)
        blocks[:, :, 1] = sub_x.reshape(len(k), -1)
        blocks[:, :, n] = sub_y.reshape(len(k), -1)

    def _rhs_batch(self, k: np.ndarray) -> np.ndarray:
        """b(k) for (B, n, n) fields: the source and Neumann part, plus 2 k P on the
        Dirichlet faces; (B, n^2)."""
        rhs = np.repeat(self._rhs.reshape(1, self.n, self.n), len(k), axis=0)
        for cells, pressure in self._sides(k):
            if pressure:
                rhs[cells] += 2.0 * k[cells] * pressure
        return rhs.reshape(len(k), -1)

    def _workers(self, jobs: int):
        """The :class:`~autovae.inverse.parallel.ChunkWorkers` for ``jobs`` (started once,
        kept with this solver), or None for one."""
        if jobs <= 1:
            return None
        pools = self.__dict__.setdefault("_pools", {})
        if jobs not in pools:
            pools[jobs] = ChunkWorkers(self, jobs)
        return pools[jobs]

    def close_workers(self) -> None:
        """Stop the worker processes of every ``jobs`` used, if any (started again on demand)."""
        for pool in self.__dict__.pop("_pools", {}).values():
            pool.close()

    def _forward(self, log_k: np.ndarray, jobs: int = 1):
        """(B, n^2) log k -> (k (B, n^2), the factors by chunk, p (B, n^2)); each chunk of rows
        on its own worker (banded: one LAPACK call); a row's values do not depend on its
        chunk."""
        with np.errstate(over="ignore", under="ignore"):
            k = np.exp(log_k)
        if not np.isfinite(k).all() or (k <= 0).any():
            raise ValueError("exp(log_k) overflows or underflows (|log_k| > ~700): the "
                             "permeability must be positive and finite; bound log_k")
        workers = self._workers(jobs)  # cuts the batch only where that pays (its .parts)
        parts, outs = on_chunks(workers, self, "_forward_chunk", len(k), lambda a, b: (k[a:b],),
                                keep=True)
        return k, (parts, [f for _, f in outs], workers), np.concatenate([p for p, _ in outs])

    def _forward_chunk(self, k: np.ndarray):
        """(pressures, factors) of a chunk of (R, n^2) permeabilities."""
        kg = k.reshape(len(k), self.n, self.n)
        if not self.banded:
            lus = [self._factor(kb) for kb in k]
            return np.stack([lu.solve(r) for lu, r in zip(lus, self._rhs_batch(kg),
                                                          strict=True)]), lus
        stack = BandStack(self.n * self.n, self.n, len(k))
        status = stack.factor(lambda blocks, a, b: self._assemble(kg[a:b], blocks[a:b]))
        if status.any():
            raise ValueError(f"the Darcy matrix is not numerically positive definite (LAPACK "
                             f"dpbtrf info = {status[status != 0][0]}): the permeability "
                             "contrast is too extreme for double precision; bound log_k "
                             "(e.g. clip it to [-30, 30])")
        return stack.solve(self._rhs_batch(kg)), stack

    def _adjoint(self, k: np.ndarray, factors, p: np.ndarray, g: np.ndarray, jobs: int = 1
                 ) -> np.ndarray:
        """dJ/dlog k (B, n, n) from dJ/dp = g (B, n^2), for the factors of the forward solve
        (as :meth:`_forward` returns them: on the workers that made them)."""
        parts, states, workers = factors
        outs = on_kept(workers, self, "_adjoint_chunk", parts, states,
                       lambda a, b: (k[a:b], p[a:b], g[a:b]))
        return np.concatenate(outs).reshape(len(p), self.n, self.n)

    def _adjoint_chunk(self, factor, k, p, g) -> np.ndarray:
        if self.banded:  # A is symmetric: A^T lambda = g with the same factor
            lam = factor.solve(g)
        else:
            lam = np.stack([lu.solve(gb, trans="T") for lu, gb in zip(factor, g, strict=True)])
        return self._gradient(k, p, lam)

    @np.errstate(over="ignore", invalid="ignore")
    def _gradient(self, k: np.ndarray, p: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """lambda^T (db/dlog k - dA/dlog k p) for (B, n^2) k, p and adjoints lambda.

        At extreme fields (k ratios beyond ~1e150, as NUTS's first trial steps can reach) the
        products overflow: the gradient is then inf or NaN, returned as is without a warning,
        and the sampler rejects the step (Pyro's NUTS counts it as divergent)."""
        shape = (len(k), self.n, self.n)
        k, p, lam = k.reshape(shape), p.reshape(shape), lam.reshape(shape)
        grad = np.zeros(shape)
        # dA/dT_face has +1 on the diagonal, -1 off it: lambda^T dA p = (dl)(dp) per face, and
        # dT/dlog k_a = T^2 / (2 k_a), dT/dlog k_b = T^2 / (2 k_b)
        for lo, hi in (((slice(None), slice(None), slice(None, -1)),
                        (slice(None), slice(None), slice(1, None))),
                       ((slice(None), slice(None, -1), slice(None)),
                        (slice(None), slice(1, None), slice(None)))):
            t = 2.0 / (1.0 / k[lo] + 1.0 / k[hi])
            w = (lam[lo] - lam[hi]) * (p[lo] - p[hi])
            grad[lo] += w * t * (t / (2.0 * k[lo]))
            grad[hi] += w * t * (t / (2.0 * k[hi]))
        # a Dirichlet face: A has 2 k, b has 2 k P, so lambda (dA p - db) = lambda 2 k (p - P)
        for cells, pressure in self._sides(k):
            grad[cells] += lam[cells] * (p[cells] - pressure) * 2.0 * k[cells]
        return -grad.reshape(len(k), -1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_pools", None)  # worker processes stay with this process
        return state

    def __repr__(self) -> str:
        f = f"{self.f.flat[0]:g}" if np.all(self.f == self.f.flat[0]) else "field"
        bc = "" if self.bc.default else f", bc='{self.bc}'"
        return f"DarcySolver(n={self.n}, f={f}{bc})"


def _as_field(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (B, n, n) (row i = y, column j = x); got "
                         f"{x.ndim} dimension(s), shape {tuple(x.shape)}")
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"{name} must be a square n x n grid; got {x.shape[1]} x {x.shape[2]}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no fields (B = 0)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return x


class _DarcySolve(torch.autograd.Function):
    """log_k (B, n, n) -> p (B, n, n); backward by the adjoint solve with the saved LU."""

    @staticmethod
    def forward(ctx, log_k, solver, jobs):
        lk = log_k.detach().cpu().double().numpy().reshape(len(log_k), -1)
        k, factors, p = solver._forward(lk, jobs)
        ctx.solver, ctx.state, ctx.jobs = solver, (k, factors, p), jobs
        return torch.from_numpy(p.reshape(log_k.shape)).to(log_k.dtype).to(log_k.device)

    @staticmethod
    def backward(ctx, grad_p):
        k, factors, p = ctx.state
        g = grad_p.detach().cpu().double().numpy().reshape(len(p), -1)
        grad = ctx.solver._adjoint(k, factors, p, g, ctx.jobs)
        return torch.from_numpy(grad).to(grad_p.dtype).to(grad_p.device), None, None


@functools.lru_cache(maxsize=8)
def _solver(n: int, f: float, bc: BoundaryConditions) -> DarcySolver:
    return DarcySolver(n, f, bc)


def observe(solver: DarcySolver, log_k: torch.Tensor, points, jobs: int = 1) -> torch.Tensor:
    """(B, P) pressures at ``points`` of the fields log_k (B, n, n) solved by ``solver`` (its
    source and boundary conditions), differentiable in log_k; dense H (any source field)."""
    n = log_k.shape[-1]
    H, offset, N = _observation(n, points, solver.bc)
    p = solver.solve(log_k, jobs).reshape(len(log_k), n * n)
    return _affine(p @ torch.from_numpy(H.toarray()).to(log_k.dtype).T, log_k, offset, N)


def _affine(obs: torch.Tensor, log_k: torch.Tensor, offset, N) -> torch.Tensor:
    """obs + offset - exp(-log_k) N^T: the Dirichlet and Neumann parts of the observation
    (nothing added for the default conditions, so their results are unchanged)."""
    if offset is not None:
        obs = obs + torch.from_numpy(offset).to(obs.dtype).to(obs.device)
    if N is not None:
        inv_k = torch.exp(-log_k).reshape(len(log_k), -1)
        obs = obs - inv_k @ torch.from_numpy(N.toarray()).to(obs.dtype).to(obs.device).T
    return obs


def darcy_pressure(log_k, points, f: float = 3.0, bc=None, jobs: int = 1) -> torch.Tensor:
    """(B, n, n) log-permeabilities, (P, 2) points (x, y) in [0, 1]^2 -> (B, P) pressures.

    ``f``: the source; ``bc``: the boundary conditions (default: p = 0 on x = 0, 1, no flux on
    y = 0, 1). Differentiable in log_k (adjoint gradients); returns log_k's floating dtype.
    """
    log_k = _as_field(log_k, "log_k")
    pts = torch.as_tensor(points)
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise ValueError(f"points must have shape (P, 2) of (x, y); got {tuple(pts.shape)}")
    n = log_k.shape[-1]
    bc = BoundaryConditions.parse(bc)
    H, offset, N = _observation(n, pts, bc)
    H = H.tocoo()
    p = _solver(n, float(f), bc).solve(log_k, jobs).reshape(len(log_k), n * n)
    Hs = torch.sparse_coo_tensor(torch.from_numpy(np.stack([H.row, H.col]).astype(np.int64)),
                                 torch.from_numpy(H.data), H.shape, dtype=p.dtype,
                                 device=p.device, check_invariants=True)
    return _affine(torch.sparse.mm(Hs, p.T).T, log_k, offset, N)
