"""The Aristoff-Bangerth benchmark: 64 coefficients of a Poisson problem from 169 measurements.

D. Aristoff and W. Bangerth, "A benchmark for the Bayesian inversion of coefficients in partial
differential equations", SIAM Review 65(4), 2023 (arXiv:2102.07263); data and test vectors
from ``dealii/code-gallery``, folder ``MCMC-Laplace`` (see ``data/aristoff_bangerth/README.md``).

-div(a grad u) = 10 on (0, 1)^2, u = 0 on the boundary, with a = theta_k on the k-th of
8 x 8 square blocks, block (bx, by) having index ``k = bx + 8 * by`` (x fastest). Q1 elements
on a uniform 32 x 32 mesh; z holds u at the 13 x 13 points (i/14, j/14), i, j = 1..13, with
index ``13 * (i - 1) + (j - 1)`` (x slowest) -- the benchmark's own orderings.

    log L(theta)     = -|z(theta) - z_hat|^2 / (2 * 0.05^2)
    log prior(theta) = -sum(ln(theta)^2) / (2 * 2^2)

exactly as the benchmark writes them: no constants, no Jacobian. The posterior density is
exp(log L + log prior) with respect to d theta; a sampler in phi = ln theta must add the
Jacobian sum(phi) (``log_density_phi``), under which each phi_k is N(4, 4) under the prior.

The solver: the 961 interior unknowns in natural order (x fastest) give a band matrix with
half-bandwidth 32. A(theta) = sum_k theta_k A_k is assembled for a chunk of the batch by one
sparse product with the precomputed A_k in LAPACK's lower band storage, the chunk's matrices
factorised by one banded Cholesky call (``dpbtrf`` on a
:class:`~autovae.inverse.parallel.BandStack`) and solved by one ``dpbtrs`` call; the gradient
reuses the factors for the adjoint solves. With ``jobs`` > 1 the chunks run on worker
processes (:class:`~autovae.inverse.parallel.ChunkWorkers`), the values bit for bit those of one
chunk.

>>> import torch
>>> p = AristoffBangerth()
>>> theta = torch.ones(64, dtype=torch.float64)
>>> round(p.log_likelihood(theta).item(), 6), p.log_prior(theta).item() == 0
(-228.510844, True)
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import scipy.sparse as sp
import torch

from .parallel import BandStack, ChunkWorkers, on_chunks, on_kept, row_sum

__all__ = ["AristoffBangerth", "BandedPoissonQ1", "published_test_cases", "reference_posterior"]

_DATA = "data/aristoff_bangerth"


def _data_file(name: str):
    return resources.files("autovae.inverse").joinpath(f"{_DATA}/{name}")


def _load(name: str) -> np.ndarray:
    return np.loadtxt(_data_file(name).open("r"), dtype=np.float64, ndmin=1)


def published_test_cases() -> list[dict[str, np.ndarray | float]]:
    """The ten published test vectors: dicts with theta (64), z (169), log_likelihood,
    log_prior, as stored in code-gallery's ``MCMC-Laplace/testing`` (input.N/output.N)."""
    cases = []
    for i in range(10):
        cases.append({
            "theta": _load(f"testing/input.{i}.txt"),
            "z": _load(f"testing/output.{i}.z.txt"),
            "log_likelihood": float(_load(f"testing/output.{i}.loglikelihood.txt")[0]),
            "log_prior": float(_load(f"testing/output.{i}.logprior.txt")[0]),
        })
    return cases


def reference_posterior() -> dict:
    """Our reference posterior of the benchmark (its published data, its own prior): the mean
    and Monte-Carlo standard error of every theta_k and ln theta_k, with its ``source`` (the
    kernels, their R-hat, the command: ``experiments/aristoff_bangerth_reference.py``)."""
    import json

    return json.loads(_data_file("reference_posterior.json").read_text())


class BandedPoissonQ1:
    """Batched Q1 solver for the benchmark's 32 x 32 mesh (numpy in, numpy out, no checks).

    ``solve(theta)``: (B, 64) -> z (B, 169) (and, with ``keep=True``, the Cholesky factors and
    solutions that ``vjp`` needs); ``vjp(state, g_z)``: (B, 169) -> (B, 64), one adjoint solve
    per batch element with the saved factor.
    """

    n_cells = 32  # cells per side
    n_blocks = 8  # coefficient blocks per side
    jobs = 1  # workers that solve the chunks of a batch (results independent of it)

    def __init__(self):
        m, n = self.n_cells, self.n_cells - 1  # cells, interior nodes per side
        self.n_dofs, self.kd = n * n, n + 1  # half-bandwidth: node (i, j) to (i+1, j+1)
        h = 1.0 / m
        # unit-coefficient Q1 stiffness (independent of h in 2-D); corners in the order
        # (0, 0), (1, 0), (1, 1), (0, 1) of the cell
        k_cell = np.array([[4, -1, -2, -1], [-1, 4, -1, -2], [-2, -1, 4, -1],
                           [-1, -2, -1, 4]], dtype=np.float64) / 6.0
        self.k_cell = k_cell

        def node(i, j):  # interior node number, or n_dofs for a (zero) boundary node
            inside = (i >= 1) & (i <= n) & (j >= 1) & (j <= n)
            return np.where(inside, (i - 1) + n * (j - 1), self.n_dofs)

        cx, cy = np.meshgrid(np.arange(m), np.arange(m), indexing="xy")
        cx, cy = cx.ravel(), cy.ravel()  # cell (cx, cy), x fastest
        self.cell_nodes = np.stack([node(cx, cy), node(cx + 1, cy), node(cx + 1, cy + 1),
                                    node(cx, cy + 1)], axis=1)  # (1024, 4)
        per = m // self.n_blocks
        self.cell_param = (cx // per) + self.n_blocks * (cy // per)  # theta index per cell

        # A(theta) in lower band storage [j, d] = A[j + d, j] (i = j + d >= j): its entries
        # that are not structurally zero (5 of the 33 diagonals), at (_band_j, _band_d), as a
        # sparse (entries, 64) matrix of the A_k, duplicates summed
        ei, ej, ek, ev = self.entries()
        low = ei >= ej
        coef = sp.csr_matrix((ev[low], (ej[low] * (self.kd + 1) + (ei[low] - ej[low]),
                                        ek[low])), shape=((self.kd + 1) * self.n_dofs, 64))
        coef.sum_duplicates()
        used = np.nonzero(np.diff(coef.indptr))[0]
        self._band_coef = coef[used]
        self._band_j, self._band_d = used // (self.kd + 1), used % (self.kd + 1)
        self.rhs = np.full(self.n_dofs, 10.0 * h * h)  # f = 10 times the nodal area h^2

        # point evaluation: u at (a/14, b/14), bilinear in the containing cell
        t = np.arange(1, 14) / 14.0
        px, py = np.meshgrid(t, t, indexing="ij")  # z index 13 (a-1) + (b-1): x slowest
        px, py = px.ravel(), py.ravel()
        ix = np.minimum(np.floor(px * m).astype(np.int64), m - 1)
        iy = np.minimum(np.floor(py * m).astype(np.int64), m - 1)
        sx, sy = px * m - ix, py * m - iy
        corners = [(0, 0, (1 - sx) * (1 - sy)), (1, 0, sx * (1 - sy)), (1, 1, sx * sy),
                   (0, 1, (1 - sx) * sy)]
        o_rows, o_cols, o_vals = [], [], []
        for dx, dy, w in corners:
            nd = node(ix + dx, iy + dy)
            keep = nd < self.n_dofs
            o_rows.append(np.arange(len(px))[keep])
            o_cols.append(nd[keep])
            o_vals.append(w[keep])
        self.obs = sp.csr_matrix(
            (np.concatenate(o_vals), (np.concatenate(o_rows), np.concatenate(o_cols))),
            shape=(len(px), self.n_dofs))
        self._obs_t = self.obs.T.tocsr()
        # for the gradient, lambda^T A_k u = sum over block k's cells of lambda_c^T K u_c (the
        # cell's corner values, zero at boundary nodes): cells in block order, 16 per block
        order = np.argsort(self.cell_param, kind="stable")
        self._block_nodes = self.cell_nodes[order]  # (cells, 4), block k's cells together
    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every cell's stiffness contributions between interior nodes: (row i, column j,
        coefficient index k, value) with A(theta)[i, j] = sum of theta_k * value (duplicates
        summed)."""
        rows, cols, par, val = [], [], [], []
        for a in range(4):
            for b in range(4):
                i, j = self.cell_nodes[:, a], self.cell_nodes[:, b]
                keep = (i < self.n_dofs) & (j < self.n_dofs)
                rows.append(i[keep])
                cols.append(j[keep])
                par.append(self.cell_param[keep])
                val.append(np.full(keep.sum(), self.k_cell[a, b]))
        return tuple(np.concatenate(x) for x in (rows, cols, par, val))

    def band(self, theta: np.ndarray) -> np.ndarray:
        """(B, 64) -> (B, entries): the entries of A(theta) that are not structurally zero, at
        (``_band_j``, ``_band_d``) of LAPACK's lower band storage."""
        return (self._band_coef @ theta.T).T

    def _factor(self, theta: np.ndarray) -> BandStack:
        """The Cholesky factors of A(theta) for (B, 64) theta, one LAPACK call (no GIL)."""
        stack = BandStack(self.n_dofs, self.kd, len(theta))

        def assemble(blocks, lo, hi):  # into a fresh stack: the other entries are zero
            blocks[lo:hi, self._band_j, self._band_d] = self.band(theta[lo:hi])

        status = stack.factor(assemble)
        if status.any():
            raise ValueError(f"the stiffness matrix is not numerically positive definite "
                             f"(LAPACK dpbtrf info = {status[status != 0][0]}): theta's ratios "
                             "are too extreme for double precision; keep theta within about "
                             "1e-150..1e150")
        return stack

    def set_jobs(self, jobs: int) -> None:
        """Solve the chunks of a batch on ``jobs`` workers (:class:`ChunkWorkers`: processes
        forked from this one, each inheriting this solver)."""
        old = getattr(self, "_workers", None)
        if old is not None:
            old.close()
        self._workers = ChunkWorkers(self, jobs) if jobs > 1 else None
        self.jobs = jobs

    def close_workers(self) -> None:
        """Stop the worker processes, if any (the rows then run here; same values)."""
        self.set_jobs(1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_workers", None)  # worker processes stay with this process
        state["jobs"] = 1
        return state

    def _solve_chunk(self, theta: np.ndarray, keep: bool = False):
        """z for a chunk; with ``keep``, (z, (factors, u))."""
        stack = self._factor(theta)
        u = stack.solve(np.broadcast_to(self.rhs, (len(theta), self.n_dofs)))
        z = (self.obs @ u.T).T
        return (z, (stack, u)) if keep else z

    def _vjp_chunk(self, state, g_z: np.ndarray) -> np.ndarray:
        stack, u = state
        return self._grad_theta(u, stack.solve((self._obs_t @ g_z.T).T))

    def solve(self, theta: np.ndarray, keep: bool = False):
        """(B, 64) coefficients -> z (B, 169); with ``keep``, also what ``vjp`` needs. Each
        chunk of rows is factorised and solved by one LAPACK call, on its own worker; a row's
        values do not depend on its chunk."""
        parts, outs = on_chunks(getattr(self, "_workers", None), self, "_solve_chunk",
                                len(theta), lambda a, b: (theta[a:b], keep), keep=keep)
        if not keep:
            return np.concatenate(outs)
        return np.concatenate([z for z, _ in outs]), (parts, [s for _, s in outs])

    def vjp(self, state, g_z: np.ndarray) -> np.ndarray:
        """(B, 169) cotangent dJ/dz -> (B, 64) dJ/dtheta by one adjoint solve each.

        A is symmetric, so A lambda = H^T g_z with the forward's factor, and
        dJ/dtheta_k = -lambda^T A_k u, summed over the block's 16 cells.
        """
        parts, states = state
        return np.concatenate(on_kept(getattr(self, "_workers", None), self, "_vjp_chunk",
                                      parts, states, lambda a, b: (g_z[a:b],)))

    def _grad_theta(self, u: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """-lambda^T A_k u for every k: (B, 961) solutions and adjoints -> (B, 64)."""
        pad = np.zeros((len(u), 1))
        nodes = self._block_nodes.T  # (4, 1024): corners of the cells, in block order
        ue = np.concatenate([u, pad], axis=1)[:, nodes]  # (B, 4, 1024)
        le = np.concatenate([lam, pad], axis=1)[:, nodes]
        # lambda_c^T K u_c term by term (not a matmul: BLAS may round a row differently
        # depending on the rows around it, and a row's value must not depend on its chunk)
        per_cell = sum(le[:, a] * sum(self.k_cell[a, b] * ue[:, b] for b in range(4))
                       for a in range(4))  # (B, 1024)
        return -row_sum(per_cell.reshape(len(u), 64, -1))  # the cells of each block

    def log_likelihood_and_grad(self, theta: np.ndarray, data: np.ndarray, sigma: float):
        """(B, 64) -> log L (B,) and d log L / d theta (B, 64), the adjoint solve right after
        the forward one (nothing kept between calls); each chunk of rows on its own worker."""
        _, outs = on_chunks(getattr(self, "_workers", None), self, "_llg_chunk", len(theta),
                            lambda a, b: (theta[a:b], data, sigma))
        return np.concatenate([a for a, _ in outs]), np.concatenate([g for _, g in outs])

    def _llg_chunk(self, theta, data, sigma):
        stack = self._factor(theta)
        u = stack.solve(np.broadcast_to(self.rhs, (len(theta), self.n_dofs)))
        r = (self.obs @ u.T).T - data
        lam = stack.solve((self._obs_t @ (-r / sigma**2).T).T)
        return -row_sum(r * r) / (2 * sigma**2), self._grad_theta(u, lam)


class _ForwardMap(torch.autograd.Function):
    """theta (B, 64) -> z (B, 169); backward: the adjoint solve with the saved factors."""

    @staticmethod
    def forward(ctx, theta, problem):
        z, state = problem._solver.solve(theta.detach().cpu().numpy(), keep=True)
        problem.solves += len(z)
        ctx.problem, ctx.state = problem, state
        return torch.from_numpy(z).to(theta.device)

    @staticmethod
    def backward(ctx, grad_z):
        g = grad_z.detach().cpu().double().numpy()
        grad = ctx.problem._solver.vjp(ctx.state, g)
        ctx.problem.solves += len(grad)
        return torch.from_numpy(grad).to(grad_z.device), None


class _LogLikelihood(torch.autograd.Function):
    """theta (B, 64) -> log L (B,), value and gradient computed together in the forward pass."""

    @staticmethod
    def forward(ctx, theta, problem):
        log_l, grad = problem._solver.log_likelihood_and_grad(
            theta.detach().cpu().numpy(), problem.data.numpy(), problem.sigma)
        problem.solves += 2 * len(log_l)  # forward and adjoint
        ctx.grad = torch.from_numpy(grad).to(theta.device)
        return torch.from_numpy(log_l).to(theta.device)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out[:, None] * ctx.grad, None


class AristoffBangerth:
    """The benchmark as a differentiable forward map and log densities (torch, float64).

    ``forward(theta)``: (..., 64) coefficients (not logs) -> (..., 169) observations;
    ``log_likelihood``, ``log_prior``, ``log_posterior`` (..., 64) -> (...), as the paper writes
    them (density with respect to d theta, no constants); ``log_density_phi(phi)`` the same
    posterior in phi = ln theta, Jacobian included. Gradients by autograd (adjoint solves).
    ``solves`` counts PDE solves, forward and adjoint, per batch element.
    """

    n_params = 64
    n_obs = 169
    sigma = 0.05
    prior_sd = 2.0

    def __init__(self):
        self._solver = BandedPoissonQ1()
        self.data = torch.from_numpy(_load("z_hat.txt"))
        theta_true = torch.ones(64, dtype=torch.float64)
        theta_true[[9, 10, 17, 18]] = 0.1
        theta_true[[45, 46, 53, 54]] = 10.0
        self.theta_true = theta_true
        self.solves = 0

    def _check(self, x, name: str, positive: bool) -> torch.Tensor:
        hint = " (pass torch.as_tensor(x, dtype=torch.float64))"
        if not torch.is_tensor(x):
            raise ValueError(f"{name} must be a torch.Tensor of dtype float64; got "
                             f"{type(x).__name__}{hint}")
        if x.dtype != torch.float64:
            raise ValueError(f"{name} must have dtype torch.float64 (the benchmark's values "
                             f"are checked to 1e-8); got {x.dtype}: convert with {name}.double()")
        if x.ndim == 0 or x.shape[-1] != self.n_params:
            raise ValueError(f"{name} must have shape (..., {self.n_params}) (one value per "
                             f"8 x 8 block, x fastest); got shape {tuple(x.shape)}")
        values = x.detach().cpu().numpy()  # numpy: cheaper than torch on 64 numbers
        finite = np.isfinite(values)
        if not finite.all():
            raise ValueError(f"{name} must be finite; found {int((~finite).sum())} NaN or inf "
                             "entries")
        if positive and not (values > 0).all():
            raise ValueError(f"{name} must be > 0 everywhere: it holds the coefficients "
                             f"themselves, not their logs (min {values.min():g}); "
                             "for log-coefficients phi use theta = phi.exp() or "
                             "log_density_phi(phi)")
        return x

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """(..., 64) coefficients -> (..., 169) observations z, differentiable in theta."""
        theta = self._check(theta, "theta", positive=True)
        flat = theta.reshape(-1, self.n_params)
        if len(flat) == 0:
            return theta.new_zeros((*theta.shape[:-1], self.n_obs))
        if torch.is_grad_enabled() and theta.requires_grad:
            z = _ForwardMap.apply(flat, self)
        else:  # no factors kept
            z = torch.from_numpy(self._solver.solve(flat.cpu().numpy())).to(theta.device)
            self.solves += len(flat)
        return z.reshape(*theta.shape[:-1], self.n_obs)

    __call__ = forward

    def log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        """-|z(theta) - z_hat|^2 / (2 sigma^2), sigma = 0.05; shape (...).

        With a gradient wanted, the adjoint solve runs at once (and is counted in ``solves``),
        right after the forward solve with the factor still in cache."""
        theta = self._check(theta, "theta", positive=True)
        if torch.is_grad_enabled() and theta.requires_grad and theta.numel() > 0:
            flat = theta.reshape(-1, self.n_params)
            return _LogLikelihood.apply(flat, self).reshape(theta.shape[:-1])
        z = self.forward(theta)
        return -((z - self.data.to(z.device)) ** 2).sum(-1) / (2 * self.sigma**2)

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """-sum(ln(theta)^2) / (2 * 2^2), no constant and no Jacobian; shape (...)."""
        theta = self._check(theta, "theta", positive=True)
        return -(theta.log() ** 2).sum(-1) / (2 * self.prior_sd**2)

    def log_posterior(self, theta: torch.Tensor) -> torch.Tensor:
        """log L + log prior: the benchmark's unnormalised log density w.r.t. d theta."""
        return self.log_likelihood(theta) + self.log_prior(theta)

    def log_density_phi(self, phi: torch.Tensor) -> torch.Tensor:
        """The posterior in phi = ln theta: log L(e^phi) + log prior(e^phi) + sum(phi).

        The sum(phi) is the Jacobian |d theta / d phi|, so a sampler on phi (NUTS, MALA, a
        Gaussian random walk) targets the benchmark's posterior; under the prior alone each
        phi_k is N(4, 2^2). Shape (..., 64) -> (...), differentiable.
        """
        phi = self._check(phi, "phi", positive=False)
        if (phi.abs() > 700).any():
            raise ValueError("phi = ln theta must lie within [-700, 700] (exp overflows "
                             f"beyond); got max |phi| = {phi.abs().max().item():g}")
        return self.log_posterior(phi.exp()) + phi.sum(-1)

    def log_density_phi_numpy(self, phi: np.ndarray) -> np.ndarray:
        """``log_density_phi`` for a (B, 64) numpy batch, no checks or gradient (for samplers
        that need only values, e.g. random-walk Metropolis over many chains)."""
        theta = np.exp(phi)
        z = self._solver.solve(theta)
        self.solves += len(theta)
        log_l = -((z - self.data.numpy()) ** 2).sum(-1) / (2 * self.sigma**2)
        return log_l - (phi**2).sum(-1) / (2 * self.prior_sd**2) + phi.sum(-1)

    def __repr__(self) -> str:
        return (f"AristoffBangerth(n_params=64, n_obs=169, sigma={self.sigma}, "
                f"prior_sd={self.prior_sd}, solves={self.solves})")

