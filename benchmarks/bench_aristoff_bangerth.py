"""PDE solves per second for the Aristoff-Bangerth benchmark on one core (issue 17 part 2).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python benchmarks/bench_aristoff_bangerth.py

Times, per batch element, the banded-Cholesky solver of ``autovae.inverse.aristoff_bangerth``
(numpy core and the torch API, forward alone and forward + adjoint gradient, batch sizes 1 and
16) against, measured in the same run:

* a plain scipy loop: assemble a CSC matrix, ``spsolve`` (forward + adjoint = two spsolves);
* scipy ``splu`` factorised once and solved twice (forward + adjoint);
* CHOLMOD (scikit-sparse, when installed: 0.4.16 builds against Debian's libsuitesparse-dev
  5.12) with the fill-reducing analysis done once and a numeric refactorisation per call;
* the reference C++ program's published rate: 10^4 Metropolis-Hastings samples, one forward
  solve each (no adjoint), in about 40 s (code-gallery MCMC-Laplace Readme): 4 ms per solve.

Each figure is the best and the median of ``--repeats`` timings of ``--number`` calls, the
repeats interleaved across methods; ratios use the best. Nothing here is asserted in the
tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from autovae.inverse.aristoff_bangerth import AristoffBangerth

REFERENCE_MS = 40.0 / 1e4 * 1e3  # 10^4 samples in about 40 s, one forward solve per sample


class ScipyBaseline:
    """A(theta) as a CSC matrix by a precomputed scatter, then spsolve or splu."""

    def __init__(self, problem: AristoffBangerth):
        s = problem._solver
        rows, cols, par, val = s.entries()
        pattern = sp.csc_matrix((np.ones(len(rows)), (rows, cols)), shape=(s.n_dofs,) * 2)
        pattern.sort_indices()
        self.indices, self.indptr, self.n = pattern.indices, pattern.indptr, s.n_dofs
        # position of every contribution in the CSC data array
        slot_of = sp.csc_matrix((np.arange(pattern.nnz, dtype=np.float64) + 1, pattern.indices,
                                 pattern.indptr), shape=pattern.shape)
        slot = np.asarray(slot_of[rows, cols]).ravel().astype(np.int64) - 1
        self.scatter = sp.csr_matrix((val, (slot, par)),
                                     shape=(pattern.nnz, 64))
        self.rhs, self.obs, self.obs_t = s.rhs, s.obs, s.obs.T.tocsr()

    def matrix(self, theta: np.ndarray) -> sp.csc_matrix:
        return sp.csc_matrix((self.scatter @ theta, self.indices, self.indptr),
                             shape=(self.n, self.n))

    def spsolve_forward(self, theta: np.ndarray) -> np.ndarray:
        return self.obs @ spla.spsolve(self.matrix(theta), self.rhs)

    def spsolve_forward_adjoint(self, theta: np.ndarray, g_z: np.ndarray):
        a = self.matrix(theta)
        u = spla.spsolve(a, self.rhs)
        lam = spla.spsolve(a, self.obs_t @ g_z)
        return self.obs @ u, lam

    def splu_forward_adjoint(self, theta: np.ndarray, g_z: np.ndarray):
        lu = spla.splu(self.matrix(theta))
        return self.obs @ lu.solve(self.rhs), lu.solve(self.obs_t @ g_z)

    def cholmod(self, theta: np.ndarray, mode: str):
        """(forward, forward + adjoint) with CHOLMOD's analysis of the fixed pattern reused,
        or None without scikit-sparse."""
        try:
            from sksparse.cholmod import analyze
        except ImportError:
            return None
        factor = analyze(self.matrix(theta), mode=mode, ordering_method="nesdis")

        def forward():
            factor.cholesky_inplace(self.matrix(theta))
            return self.obs @ factor(self.rhs)

        def forward_adjoint(g_z):
            factor.cholesky_inplace(self.matrix(theta))
            return self.obs @ factor(self.rhs), factor(self.obs_t @ g_z)

        return forward, forward_adjoint


def measure(cases, number: int, repeats: int) -> list[tuple[float, float]]:
    """(best, median) milliseconds per solve for every (fn, solves per call) in ``cases``.

    The repeats are interleaved (every case once per round), so that a change in the load of
    the machine hits all the cases alike instead of one of them."""
    for fn, _ in cases:
        fn()  # warm-up
    times = [[] for _ in cases]
    for _ in range(repeats):
        for (fn, per_call), t in zip(cases, times, strict=True):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            t.append((time.perf_counter() - t0) / (number * per_call) * 1e3)
    return [(min(t), statistics.median(t)) for t in times]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--number", type=int, default=40, help="calls per timing")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("warning: OMP_NUM_THREADS is not 1; BLAS may use several cores")
    problem = AristoffBangerth()
    solver, base = problem._solver, ScipyBaseline(problem)
    rng = np.random.default_rng(0)
    thetas = np.exp(rng.normal(0.0, 1.0, size=(max(args.batches), 64)))
    g_z = rng.normal(size=(max(args.batches), 169))
    # the baseline and the banded solver agree
    z_ref, lam = base.spsolve_forward_adjoint(thetas[0], g_z[0])
    z, state = solver.solve(thetas[:1], keep=True)
    assert np.allclose(z[0], z_ref, rtol=1e-10, atol=1e-14)

    data = problem.data.numpy()
    t0, g0 = thetas[0], g_z[0]
    # (name, batch, forward alone, forward + adjoint); functions do `batch` solves per call
    cases = [("scipy spsolve loop", 1, lambda: base.spsolve_forward(t0),
              lambda: base.spsolve_forward_adjoint(t0, g0)),
             ("scipy splu (factor once)", 1,
              lambda: base.obs @ spla.splu(base.matrix(t0)).solve(base.rhs),
              lambda: base.splu_forward_adjoint(t0, g0))]
    for mode in ("simplicial", "supernodal"):
        fns = base.cholmod(t0, mode)
        if fns is not None:
            z_c, lam_c = fns[1](g0)
            assert np.allclose(z_c, z_ref, rtol=1e-10, atol=1e-14)
            cases.append((f"CHOLMOD {mode}, analysis reused", 1, fns[0],
                          lambda fa=fns[1]: fa(g0)))
    for b in args.batches:
        th = thetas[:b]
        tt = torch.from_numpy(th)

        def fwd_adj(tt=tt):
            x = tt.clone().requires_grad_(True)
            problem.log_likelihood(x).sum().backward()

        # numpy core, forward + adjoint: log L and its gradient
        cases.append(("banded Cholesky, numpy core", b, lambda th=th: solver.solve(th),
                      lambda th=th: solver.log_likelihood_and_grad(th, data, 0.05)))
        cases.append(("AristoffBangerth.log_likelihood (torch)", b,
                      lambda tt=tt: problem.log_likelihood(tt), fwd_adj))
    n, r = args.number, args.repeats
    flat = [(fn, b) for _, b, f, fa in cases for fn in (f, fa)]
    timed = measure(flat, n, r)
    rows = [(name, b, *timed[2 * i], *timed[2 * i + 1])
            for i, (name, b, _, _) in enumerate(cases)]

    spsolve_fwd, spsolve_fa = rows[0][2], rows[0][4]
    print(f"Aristoff-Bangerth solver, one core (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}), best / median of {r} x {n} calls, "
          "ms per batch element")
    print(f"{'method':40s} {'batch':>5s} {'fwd best':>9s} {'median':>8s} {'fwd+adj':>8s} "
          f"{'median':>8s} {'fwd/s':>6s} {'x spsolve f / f+a':>17s} {'x C++ f / f+a':>13s}")
    for name, b, fb, fm, ab, am in rows:
        print(f"{name:40s} {b:5d} {fb:9.4f} {fm:8.4f} {ab:8.4f} {am:8.4f} {1e3 / fb:6.0f} "
              f"{spsolve_fwd / fb:8.1f} {spsolve_fa / ab:8.1f} {REFERENCE_MS / fb:6.1f} "
              f"{REFERENCE_MS / ab:6.1f}")
    print(f"ratios from the best times: against the spsolve loop's {spsolve_fwd:.3f} ms (forward) "
          f"and {spsolve_fa:.3f} ms (forward + adjoint, two spsolves), and against the C++ "
          f"program's {REFERENCE_MS:.1f} ms per forward-only MH sample (published, not rerun)")


if __name__ == "__main__":
    main()
