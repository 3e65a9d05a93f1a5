"""Latent-space MCMC benchmark: pCN throughput and NUTS against pCN in ESS per second.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_mcmc.py [--repeats 3] [--quick]

1. pCN chain-steps per second on a 16-dim linear-Gaussian target, 8 chains: ``run_chains``
   (kernel, adaptation, bookkeeping, checkpoints every 500 steps), the kernel alone, and plain
   hand-written numpy pCN loops (all chains at once; one chain at a time) in the same process.
2. ESS per second of Pyro NUTS against pCN on a correlated 16-dim Gaussian posterior (condition
   number of the posterior covariance printed): smallest bulk ESS over coordinates divided by the
   whole run's time, warm-up included; also ESS per potential evaluation.
3. (``--pyro-parallel``) Pyro's own multi-chain mode (one process per chain) against our
   sequential in-process NUTS chains, same kernel settings.

Medians over ``--repeats``; timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autovae.inverse import NUTSKernel, PCNKernel, Target, run_chains
from autovae.inverse.diagnostics import ess

DIM = 16


def gaussian_target(seed: int = 0, noise: float = 0.3):
    """phi(z) = 1/2 |(A z - y)/noise|^2 with A (24, 16) of decaying column scales: a correlated
    posterior; returns phi (torch), (A, y, noise) for numpy loops and the exact covariance."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(24, DIM)) * np.geomspace(1.0, 0.05, DIM)[None, :]
    A = A @ np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]  # rotate: correlations in z
    y = A @ rng.normal(size=DIM) + noise * rng.normal(size=24)
    At, yt = torch.as_tensor(A), torch.as_tensor(y)

    def phi(z):
        r = (z @ At.T - yt) / noise
        return 0.5 * (r * r).sum(-1)

    cov = np.linalg.inv(np.eye(DIM) + A.T @ A / noise**2)
    return phi, (A, y, noise), cov


def plain_pcn(A, y, noise, chains, steps, beta, seed=0, vectorised=True):
    """A hand-written numpy pCN loop with a fixed beta, the reference for throughput."""
    rng = np.random.default_rng(seed)

    def phi(z):
        r = (z @ A.T - y) / noise
        return 0.5 * (r * r).sum(-1)

    rows = [slice(None)] if vectorised else [slice(c, c + 1) for c in range(chains)]
    z = rng.normal(size=(chains, A.shape[1]))
    for sl in rows:
        zc, pc = z[sl], phi(z[sl])
        a = math.sqrt(1 - beta * beta)
        for _ in range(steps):
            prop = a * zc + beta * rng.normal(size=zc.shape)
            pp = phi(prop)
            acc = np.log(rng.uniform(size=len(pc))) < pc - pp
            zc = np.where(acc[:, None], prop, zc)
            pc = np.where(acc, pp, pc)
        z[sl] = zc
    return z


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_throughput(repeats: int, steps: int, chains: int = 8) -> None:
    phi, (A, y, noise), _ = gaussian_target()
    rates: dict[str, list[float]] = {k: [] for k in
                                     ("run_chains", "kernel only", "plain numpy, vectorised",
                                      "plain numpy, chain by chain")}
    for rep in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = timed(lambda tmp=tmp, rep=rep: run_chains(
                Target(phi, DIM), PCNKernel(), Path(tmp) / "c", chains=chains, warmup=steps // 4,
                draws=steps - steps // 4, seed=rep, checkpoint_every=500))
        rates["run_chains"].append(chains * steps / t)
        kernel, target = PCNKernel(), Target(phi, DIM)
        gen = torch.Generator().manual_seed(rep)
        kernel.setup(target, torch.randn(chains, DIM, generator=gen, dtype=torch.float64), rep,
                     steps // 4)
        t = timed(lambda k=kernel, tg=target, g=gen: [k.sample(tg, g, i < steps // 4)
                                                      for i in range(steps)])
        rates["kernel only"].append(chains * steps / t)
        t = timed(lambda rep=rep: plain_pcn(A, y, noise, chains, steps, 0.1, seed=rep))
        rates["plain numpy, vectorised"].append(chains * steps / t)
        t = timed(lambda rep=rep: plain_pcn(A, y, noise, chains, steps // 4, 0.1, seed=rep,
                                            vectorised=False))
        rates["plain numpy, chain by chain"].append(chains * (steps // 4) / t)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n1. pCN throughput, d={DIM}, {chains} chains, {steps} steps, median of {repeats}")
    for k, v in med.items():
        print(f"   {k:30s} {v:10.0f} chain-steps/s   ({v / med['run_chains']:.2f} x run_chains)")


def bench_ess(repeats: int, pcn_steps: int, nuts_steps: int, chains: int = 4) -> None:
    phi, _, cov = gaussian_target()
    ev = np.linalg.eigvalsh(cov)
    print(f"\n2. ESS per second, correlated Gaussian d={DIM} (posterior sd from "
          f"{math.sqrt(ev[0]):.3f} to {math.sqrt(ev[-1]):.3f}, condition number "
          f"{ev[-1] / ev[0]:.0f}), {chains} chains, median of {repeats}")
    rows: dict[str, list[tuple[float, ...]]] = {"pcn": [], "nuts": []}
    runs = {"pcn": (PCNKernel(), pcn_steps // 5, pcn_steps),
            "nuts": (NUTSKernel(), nuts_steps // 2, nuts_steps)}
    for rep in range(repeats):
        for name, (kernel, warmup, samples) in runs.items():
            with tempfile.TemporaryDirectory() as tmp:
                r = run_chains(Target(phi, DIM), kernel, Path(tmp) / "c", chains=chains,
                               warmup=warmup, draws=samples, seed=rep,
                               checkpoint_every=max(samples, warmup))
            e = ess(r.draws).min()
            err = np.abs(np.cov(r.draws.reshape(-1, DIM).T) - cov).max() / np.abs(cov).max()
            rows[name].append((e, e / r.seconds, e / r.solves, r.seconds,
                               r.acceptance.mean(), err))
    med = {k: [statistics.median(col) for col in zip(*v, strict=True)] for k, v in rows.items()}
    for name, (_, warmup, samples) in runs.items():
        e, eps, epe, sec, acc, err = med[name]
        print(f"   {name:5s} warm-up {warmup:5d}, samples {samples:5d}: ESS_min {e:7.0f}  "
              f"ESS/s {eps:8.1f}  ESS/solve {epe:.2e}  {sec:6.1f} s  acceptance {acc:.2f}  "
              f"max cov error {err:.2f}")
    print(f"   NUTS / pCN: ESS/s x{med['nuts'][1] / med['pcn'][1]:.2f}, "
          f"ESS per solve x{med['nuts'][2] / med['pcn'][2]:.1f} "
          f"(a NUTS evaluation also takes a gradient)")


def bench_pyro_parallel(nuts_steps: int, chains: int = 2) -> None:
    from pyro.infer.mcmc import MCMC, NUTS

    phi, _, _ = gaussian_target()

    def potential_fn(p):
        return phi(p["z"].unsqueeze(0)).squeeze(0) + 0.5 * (p["z"] ** 2).sum()

    warmup = nuts_steps // 2
    with tempfile.TemporaryDirectory() as tmp:
        seq = timed(lambda: run_chains(Target(phi, DIM), NUTSKernel(), Path(tmp) / "c",
                                       chains=chains, warmup=warmup, draws=nuts_steps))
    init = {"z": torch.zeros(chains, DIM, dtype=torch.float64)}
    mcmc = MCMC(NUTS(potential_fn=potential_fn), num_samples=nuts_steps, warmup_steps=warmup,
                num_chains=chains, initial_params=init, mp_context="spawn",
                disable_progbar=True)
    par = timed(mcmc.run)
    print(f"\n3. NUTS, {chains} chains x ({warmup} + {nuts_steps}) iterations: sequential in "
          f"process {seq:.1f} s; Pyro num_chains={chains} (spawned processes) {par:.1f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short chains (a smoke run)")
    ap.add_argument("--pyro-parallel", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps, pcn_steps, nuts_steps = (400, 2000, 200) if args.quick else (4000, 10000, 600)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_throughput(args.repeats, steps)
    bench_ess(args.repeats, pcn_steps, nuts_steps)
    if args.pyro_parallel:
        bench_pyro_parallel(nuts_steps // 2)


if __name__ == "__main__":
    main()
