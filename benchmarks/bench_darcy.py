"""Darcy forward solves per second: ``darcy_pressure`` against a plain scipy ``spsolve`` loop.

For each grid (16 x 16 and 64 x 64) and a batch of B GRF log-permeabilities, in the same run:

* plain: a loop assembling the 5-point finite-volume matrix with ``scipy.sparse.diags`` and
  calling ``scipy.sparse.linalg.spsolve`` per field, then the same interpolation matrix;
* ``darcy_pressure`` forward (no grad);
* ``darcy_pressure`` forward + backward (adjoint solve with the saved LU factors) of a sum of
  squares of the pressures.

Prints the median over repeats of fields per second and the ratios to the plain loop, and GRF
draws per second. Run single-threaded on a shared machine:

    OMP_NUM_THREADS=1 python benchmarks/bench_darcy.py [--batch 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from autovae.inverse import darcy_pressure, observation_operator, sample_grf


def plain_pressures(log_k: np.ndarray, H: sp.csr_matrix, f: float = 3.0) -> np.ndarray:
    """The textbook loop: assemble A(k) per field and ``spsolve`` it."""
    B, n, _ = log_k.shape
    out = np.empty((B, H.shape[0]))
    h2 = 1.0 / (n * n)
    for b in range(B):
        k = np.exp(log_k[b])
        tx = np.zeros((n, n + 1))  # x-faces, columns 0 and n on the Dirichlet boundary
        tx[:, 1:-1] = 2.0 / (1.0 / k[:, :-1] + 1.0 / k[:, 1:])
        tx[:, 0], tx[:, -1] = 2.0 * k[:, 0], 2.0 * k[:, -1]
        ty = np.zeros((n + 1, n))  # y-faces, rows 0 and n closed (no flux)
        ty[1:-1] = 2.0 / (1.0 / k[:-1] + 1.0 / k[1:])
        diag = (tx[:, :-1] + tx[:, 1:] + ty[:-1] + ty[1:]).ravel()
        east = -tx[:, 1:].copy()
        east[:, -1] = 0.0  # no coupling across rows
        east = east.ravel()[:-1]
        north = -ty[1:-1].ravel()
        A = sp.diags([diag, east, east, north, north], [0, 1, -1, n, -n], format="csc")
        p = spla.spsolve(A, np.full(n * n, f * h2))
        out[b] = H @ p
    return out


def median_rate(fn, batch: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--grids", type=int, nargs="+", default=[16, 64])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"threads: torch {torch.get_num_threads()}; batch {args.batch}; median of "
          f"{args.repeats} repeats")
    for n in args.grids:
        log_k = sample_grf(args.batch, n, seed=0).double()
        c = (np.arange(1, 16, 2) / 16.0)  # the benchmark's 8 x 8 observation points
        pts = torch.from_numpy(np.stack(np.meshgrid(c, c), -1).reshape(-1, 2))
        H = observation_operator(n, pts)
        lk_np = log_k.numpy()
        ref = plain_pressures(lk_np, H)
        got = darcy_pressure(log_k, pts).numpy()
        assert np.allclose(ref, got, rtol=1e-10, atol=1e-12), np.abs(ref - got).max()
        darcy_pressure(log_k, pts)  # warm the solver cache

        def fwd_bwd(log_k=log_k, pts=pts):
            x = log_k.clone().requires_grad_(True)
            (darcy_pressure(x, pts) ** 2).sum().backward()

        def fwd(log_k=log_k, pts=pts):
            darcy_pressure(log_k, pts)

        def plain(lk_np=lk_np, H=H):
            plain_pressures(lk_np, H)

        rates = {}
        for name, fn in (("plain spsolve loop", plain), ("darcy_pressure forward", fwd),
                         ("darcy_pressure forward+backward", fwd_bwd)):
            rates[name] = median_rate(fn, args.batch, args.repeats)
        base = rates["plain spsolve loop"]
        print(f"\n{n} x {n} grid ({n * n} unknowns), 64 observation points:")
        for name, r in rates.items():
            print(f"  {name:33s} {r:9.1f} fields/s   x{r / base:5.2f} vs plain")

    print("\nGRF draws (length scale per field uniform in [0.1, 0.5]):")
    for kernel in ("squared_exponential", "matern52"):
        for n in args.grids:
            count = 10000 if kernel == "squared_exponential" or n <= 16 else 1000
            t = time.perf_counter()
            sample_grf(count, n, kernel, (0.1, 0.5), seed=0)
            dt = time.perf_counter() - t
            print(f"  {kernel:20s} {n:3d} x {n:<3d} {count / dt:10.0f} fields/s "
                  f"({count} in {dt:.2f} s)")


if __name__ == "__main__":
    main()
