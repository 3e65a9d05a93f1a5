"""Inference at the speed of the forward model (issue 24): one run prints every figure.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src nice -n 5 python benchmarks/bench_inverse_parallel.py

1. **Share of the time inside the forward model** (the banded solver's forward and adjoint
   solves, timed around ``BandedPoissonQ1.solve``/``vjp``) for ChEES (16 chains, one batched
   call per leapfrog step) and today's NUTS (one chain, one row at a time), Aristoff-Bangerth,
   one thread.
2. **ESS per 1000 solves and per CPU second** (CPU time of the sampling, so that a machine
   shared with other work compares fairly; one thread), ChEES against NUTS on
   Aristoff-Bangerth at about the same solve budget (warm-up included), with each one's error
   against the packaged reference posterior mean (relative L2, theta and ln theta).
3. **Solves per second against --jobs** (1, 2, ... the cores) for a batch of ``--batch`` rows,
   forward + adjoint solves as the sampler calls them (the forward's factors kept for the
   adjoint), Aristoff-Bangerth and Darcy (16 x 16), best of ``--repeats``, the --jobs
   interleaved (one timing of each in turn) so that a burst of other work on the machine
   spoils all of them alike rather than one; then Pyro's NUTS with its chains in --jobs
   processes (solves per wall second of sampling).
4. **UM-Bridge throughput against requests in flight**: a real ``autovae serve-forward`` server
   with 8 workers of a model that sleeps a fixed 50 ms per evaluation, ``--rows`` rows per
   batch, 1, 2, 4, 8 requests in flight.

Timings depend on the machine and its load; ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autovae.inverse import ForwardModel

HERE = Path(__file__).resolve().parent


class Sleep50(ForwardModel):
    """50 ms per evaluation, whatever the input: a stand-in for an expensive simulation."""

    name = "sleep50"
    param_shape, n_obs = (4,), 4
    gradient = False
    gradient_reason = "no gradient"

    def evaluate(self, params):
        time.sleep(0.05 * len(params))
        return torch.tanh(params.reshape(len(params), 4))


class _Timed:
    """CPU seconds spent in a solver's solve and vjp (the forward model's own work; one
    thread, so the process's CPU time is this thread's)."""

    def __init__(self, solver):
        self.seconds, self.solver = 0.0, solver
        for name in ("solve", "vjp", "log_likelihood_and_grad"):
            setattr(solver, name, self._wrap(getattr(solver, name)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - t
        return timed


def _invert(kernel, chains, warmup, draws, out, jobs=1):
    """One Aristoff-Bangerth inversion with the solver timed: (summary, solver CPU seconds,
    sampling CPU seconds, sampling wall seconds). CPU time, not wall time, is what compares
    fairly on a machine that other work shares."""
    import autovae.inverse.inversion as inversion
    from autovae.inverse.forward_models import AristoffBangerthForward

    timers, cpu = [], {}
    original, run_chains = AristoffBangerthForward.__init__, inversion.run_chains

    def init(self):
        original(self)
        timers.append(_Timed(self.benchmark._solver))

    def timed_run(*a, **k):
        t = time.process_time()
        try:
            return run_chains(*a, **k)
        finally:
            cpu["run"] = time.process_time() - t

    AristoffBangerthForward.__init__, inversion.run_chains = init, timed_run
    try:
        r = inversion.invert(problem="aristoff-bangerth", kernel=kernel, chains=chains,
                             warmup=warmup, draws=draws, out=str(out), checkpoint_every=10**6,
                             jobs=jobs)
    finally:
        AristoffBangerthForward.__init__, inversion.run_chains = original, run_chains
    return r.summary, sum(t.seconds for t in timers), cpu["run"], r.chains.seconds


def kernels(args, tmp: Path) -> None:
    print("\n== 1-2. ChEES against NUTS on Aristoff-Bangerth, one thread, each one's solves "
          "printed ==")
    runs = {
        # ChEES: ~45 leapfrog steps an iteration once adapted, 2 solves each, per chain
        "chees": ("chees", 16, args.chees_warmup, args.chees_draws),
        # NUTS: ~190 solves an iteration per chain (tree depth 6-7)
        "nuts": ("nuts", 2, args.nuts_warmup, args.nuts_draws),
    }
    rows = {}
    for name, (kernel, chains, warmup, draws) in runs.items():
        if args.only and name != args.only:
            continue
        s, solver_s, cpu, wall = _invert(kernel, chains, warmup, draws, tmp / name)
        ref = s.get("reference", {})
        rows[name] = dict(chains=chains, warmup=warmup, draws=draws, solves=s["solves"],
                          seconds=cpu, share=solver_s / cpu, ess=s["ess_bulk_min"],
                          ess_med=s["ess_bulk_median"], rhat=s["rhat_max"],
                          per_1000=1000 * s["ess_bulk_min"] / s["solves"],
                          per_s=s["ess_bulk_min"] / cpu,
                          err_log=ref.get("rel_l2_mean_log_theta", float("nan")),
                          err=ref.get("rel_l2_mean_theta", float("nan")),
                          solves_s=s["solves"] / cpu)
        r = rows[name]
        print(f"{name:5s} {chains:2d} chains x ({warmup} + {draws}): {r['solves']:,} solves in "
              f"{cpu:.1f} CPU s ({wall:.0f} s wall; {r['solves_s']:.0f} solves per CPU s); "
              f"forward model {100 * r['share']:.0f}% of the CPU time; ESS bulk min "
              f"{r['ess']:.0f} (median {r['ess_med']:.0f}), R-hat {r['rhat']:.3f}; ESS/1000 "
              f"solves {r['per_1000']:.2f}, ESS per CPU s {r['per_s']:.3f}; error vs "
              f"reference: ln theta {r['err_log']:.4f}, theta {r['err']:.3f}", flush=True)
    if len(rows) < 2:
        return
    c, n = rows["chees"], rows["nuts"]
    print(f"ratio chees/nuts: ESS per CPU s {c['per_s'] / n['per_s']:.1f}x, ESS/1000 solves "
          f"{c['per_1000'] / n['per_1000']:.1f}x, solves/s {c['solves_s'] / n['solves_s']:.1f}x")


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def jobs(args) -> None:
    from autovae.inverse import parallel
    from autovae.inverse.aristoff_bangerth import BandedPoissonQ1
    from autovae.inverse.darcy import DarcySolver

    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    print(f"\n== 3. Solves/s against --jobs, batch of {args.batch} rows, forward + adjoint, "
          f"{cores} cores present; the chunks in processes (what --jobs uses) and, for "
          "comparison, in threads ==")
    rng = np.random.default_rng(0)
    theta = np.exp(rng.normal(0, 0.5, (args.batch, 64)))
    g_z = rng.normal(0, 1, (args.batch, 169))
    log_k = rng.normal(0, 1, (args.batch, 256))
    g = rng.normal(0, 1, (args.batch, 256))

    def ab_solver(j):
        ab = BandedPoissonQ1()
        ab.set_jobs(j)
        return ab

    def ab_run(ab, j):  # as the sampler runs it: forward solves kept for the adjoint ones
        _, state = ab.solve(theta, keep=True)
        ab.vjp(state, g_z)

    def darcy_run(darcy, j):
        k, factors, p = darcy._forward(log_k, j)
        darcy._adjoint(k, factors, p, g, j)

    default = parallel.WORKERS
    for name, make, run in (("aristoff-bangerth", ab_solver, ab_run),
                            ("darcy 16x16", lambda j: DarcySolver(16), darcy_run)):
        cases = {(1, "-"): make(1)}  # one worker: neither processes nor threads
        for kind in ("processes", "threads"):
            parallel.WORKERS = kind  # the workers start with the solver's first use
            for j in counts[1:]:
                cases[(j, kind)] = make(j)
                run(cases[(j, kind)], j)
        parallel.WORKERS = default
        best = dict.fromkeys(cases, math.inf)
        for _ in range(args.repeats):  # interleaved: a burst of other work spoils all alike
            for key, solver in cases.items():
                best[key] = min(best[key], _best(lambda s=solver, j=key[0], r=run: r(s, j), 1))
        for (j, kind), t in best.items():
            rate = 2 * args.batch / t
            print(f"{name:18s} --jobs {j:2d} {kind:9s}: {rate:8.0f} solves/s "
                  f"({best[(1, '-')] / t:.2f}x --jobs 1)", flush=True)
    nuts_jobs(args, counts)


def nuts_jobs(args, counts) -> None:
    """Pyro's NUTS with its chains in --jobs processes: solves per wall second of sampling."""
    from autovae.inverse import invert

    chains = max(counts)
    print(f"\n   NUTS, Aristoff-Bangerth, {chains} chains x ({args.nuts_jobs_warmup} + "
          f"{args.nuts_jobs_draws}), its chains in --jobs processes:")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for j in counts:
            r = invert(problem="aristoff-bangerth", kernel="nuts", chains=chains,
                       warmup=args.nuts_jobs_warmup, draws=args.nuts_jobs_draws, seed=0,
                       out=f"{tmp}/nuts{j}", checkpoint_every=10**6, jobs=j)
            rate = r.summary["solves"] / r.chains.seconds
            base = base or rate
            print(f"nuts               --jobs {j:2d}: {rate:8.0f} solves/s ({rate / base:.2f}x "
                  f"--jobs 1; {r.summary['solves']:,} solves, the same draws for every --jobs)",
                  flush=True)


def umbridge(args) -> None:
    from autovae.inverse import UMBridgeForward

    print(f"\n== 4. UM-Bridge throughput: a server with 8 workers, a model of a fixed 50 ms, "
          f"batches of {args.rows} rows ==")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE),
                                                       os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen([sys.executable, "-m", "autovae", "serve-forward",
                               "bench_inverse_parallel:Sleep50", "--port", str(port),
                               "--workers", "8"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.3)
        remote = UMBridgeForward(f"http://127.0.0.1:{port}/sleep50")
        x = torch.zeros(args.rows, 4, dtype=torch.float64)
        base = None
        for j in (1, 2, 4, 8):
            remote.set_jobs(j)
            remote(x[:j])  # open the connections
            t = _best(lambda: remote(x), max(1, args.repeats // 2))
            rate = args.rows / t
            base = base or rate
            print(f"{j} in flight: {rate:6.1f} evaluations/s ({rate / base:.2f}x one at a time)",
                  flush=True)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chees-warmup", type=int, default=120)
    p.add_argument("--chees-draws", type=int, default=80)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-draws", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--nuts-jobs-warmup", type=int, default=10)
    p.add_argument("--nuts-jobs-draws", type=int, default=10)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-kernels", action="store_true", help="only parts 3 and 4")
    p.add_argument("--only", choices=("chees", "nuts", "kernels"), default=None,
                   help="one kernel of parts 1-2 (run two processes side by side), or both "
                        "kernels without parts 3-4")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    if args.only is None:
        jobs(args)
        umbridge(args)
    if args.only == "kernels":
        args.only = None
    if not args.skip_kernels:
        with tempfile.TemporaryDirectory() as tmp:
            kernels(args, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
