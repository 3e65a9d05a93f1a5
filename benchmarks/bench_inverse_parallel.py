"""Inference at the speed of the forward model (issue 24): one run prints every figure.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src nice -n 5 python benchmarks/bench_inverse_parallel.py

1. **Share of the time inside the forward model**: CPU and wall time inside the solver's
   methods (assembly, factorisation, forward and adjoint solves, the gradient's sums:
   ``BandedPoissonQ1.solve``/``vjp``/``log_likelihood_and_grad``, Darcy's
   ``DarcySolver._forward``/``_adjoint``) out of the chain loop's (warm-up and draws), for
   ChEES (``--chees-chains``, one batched call per leapfrog step) and today's NUTS (Pyro's,
   one chain and one row at a time), one thread.
2. **ESS per 1000 solves, per CPU second and per wall second** of the chain loop (warm-up
   included in every cost; CPU time compares fairly on a machine shared with other work),
   ChEES against NUTS on ``--problem`` (aristoff-bangerth, or darcy with its default KL
   prior) at about the same solve budget, with R-hat (max over coordinates, rank-normalised;
   above 1.01 the run is labelled unconverged) and each one's error: against the packaged
   reference posterior mean on Aristoff-Bangerth (relative L2, ln theta and theta), against
   the truth on Darcy.
3. **Solves per second against --jobs** (1, 2, ... the cores) for batches of ``--batch`` rows
   (16 and 64), forward + adjoint solves as the samplers call them: Aristoff-Bangerth fused
   (each row's adjoint right after its forward, one call: what ChEES and MALA use) and kept
   (through autograd: the forward's factors kept on their worker for the adjoint call), and
   Darcy (16 x 16, through autograd), in processes (with the rules that keep a
   batch in one process: too cheap to split, or measured slower split), threads, and
   processes with every batch split, best of ``--repeats``, the --jobs interleaved (one
   timing of each in turn) so that a burst of other work on the machine
   spoils all of them alike rather than one. Then, where the time of a call split over two
   processes goes, by CPU time (meaningful on a loaded machine too): this process's, inside
   its chunk and outside it (messages and bookkeeping), and the worker's, against one
   process's (the calls alternated); ``Nx by CPU time`` is the ratio that waiting for a
   core or a wake-up cannot spoil. Then Pyro's NUTS with its chains in --jobs
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


# the forward model's own work (assembly, factorisation, forward and adjoint solves, the
# gradient's sums): these solver methods, none of which calls another of them
_MODEL_METHODS = {"aristoff-bangerth": ("autovae.inverse.aristoff_bangerth", "BandedPoissonQ1",
                                        ("solve", "vjp", "log_likelihood_and_grad")),
                  "darcy": ("autovae.inverse.darcy", "DarcySolver", ("_forward", "_adjoint"))}


class _Clock:
    """CPU and wall seconds spent inside some methods of a class while patched (one thread,
    so the process's CPU time is this thread's)."""

    def __init__(self, cls, names):
        self.cpu = self.wall = 0.0
        self.cls, self.saved = cls, {n: getattr(cls, n) for n in names}

    def __enter__(self):
        for name, fn in self.saved.items():
            setattr(self.cls, name, self._wrap(fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.cls, name, fn)

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            c, w = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - c
                self.wall += time.perf_counter() - w
        return timed


def _invert(problem, kernel, chains, warmup, draws, out, seed):
    """One inversion, one thread: (summary, model clock, sampler clock). The sampler's time is
    the chain loop's (warm-up and draws, checkpoints included; not the summary, pictures and
    posterior.nc written after it); the model's is the time inside its solver, a part of it."""
    import importlib

    import autovae.inverse.chains as chains_module
    import autovae.inverse.inversion as inversion

    module, cls, names = _MODEL_METHODS[problem]
    with _Clock(getattr(importlib.import_module(module), cls), names) as model, \
            _Clock(chains_module._Runner, ("run",)) as sampler:
        r = inversion.invert(problem=problem, kernel=kernel, chains=chains, warmup=warmup,
                             draws=draws, out=str(out), checkpoint_every=10**6, seed=seed)
    return r.summary, model, sampler


def kernels(args, tmp: Path) -> None:
    print(f"\n== 1-2. ChEES against NUTS on {args.problem}, one thread, each one's solves "
          "printed ==")
    runs = {"chees": (args.chees_chains, args.chees_warmup, args.chees_draws),
            "nuts": (args.nuts_chains, args.nuts_warmup, args.nuts_draws)}
    rows = {}
    for name, (chains, warmup, draws) in runs.items():
        if args.only and name != args.only:
            continue
        if (tmp / name).exists():
            raise SystemExit(f"{tmp / name} exists: give a new --keep folder")
        s, model, sampler = _invert(args.problem, name, chains, warmup, draws, tmp / name,
                                    args.seed)
        ref = s.get("reference")
        cpu, wall = sampler.cpu, sampler.wall
        rhat = math.nan if s["rhat_max"] is None else s["rhat_max"]  # None: one chain
        r = rows[name] = dict(solves=s["solves"], ess=s["ess_bulk_min"], rhat=rhat,
                              per_1000=1000 * s["ess_bulk_min"] / s["solves"],
                              per_cpu=s["ess_bulk_min"] / cpu, per_wall=s["ess_bulk_min"] / wall,
                              solves_s=s["solves"] / cpu)
        if ref:
            error = (f"error vs reference: ln theta {ref['rel_l2_mean_log_theta']:.4f}, theta "
                     f"{ref['rel_l2_mean_theta']:.3f}")
        else:
            error = f"error of the posterior mean vs the truth {s.get('rel_l2_mean', math.nan):.4f}"
        label = "" if r["rhat"] <= 1.01 else " (UNCONVERGED: R-hat > 1.01 or one chain)"
        print(f"{name:5s} {chains:2d} chains x ({warmup} + {draws}), seed {args.seed}: "
              f"{r['solves']:,} solves in {cpu:.1f} CPU s, {wall:.1f} wall s "
              f"({r['solves_s']:.0f} solves per CPU s); in the forward model "
              f"{100 * model.cpu / cpu:.1f}% of the CPU time, {100 * model.wall / wall:.1f}% of "
              f"the wall time; ESS bulk min {r['ess']:.0f} (median {s['ess_bulk_median']:.0f}, "
              f"tail min {s['ess_tail_min']:.0f}), "
              f"R-hat {r['rhat']:.4f}{label}; ESS per 1000 solves {r['per_1000']:.2f}, per CPU s "
              f"{r['per_cpu']:.3f}, per wall s {r['per_wall']:.3f}; {error}", flush=True)
    if len(rows) < 2:
        return
    c, n = rows["chees"], rows["nuts"]
    print(f"ratio chees/nuts: ESS per CPU s {c['per_cpu'] / n['per_cpu']:.1f}x, per wall s "
          f"{c['per_wall'] / n['per_wall']:.1f}x, ESS per 1000 solves "
          f"{c['per_1000'] / n['per_1000']:.1f}x, solves per CPU s "
          f"{c['solves_s'] / n['solves_s']:.1f}x, solves {c['solves'] / n['solves']:.2f}x")


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _worker_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_split(serial, split, pool, methods, run, calls):
    """CPU milliseconds per call of ``run`` on ``serial`` (one process) and on ``split`` (every
    batch split over ``pool``'s 2 processes), the calls alternated so that both meet the same
    load: this process's (the serial call's; the split call's in total and inside its own
    chunks' ``methods``, the rest being messages and bookkeeping) and the worker's -- where a
    split call's time goes, whatever the load."""
    inside = [0.0]

    def timed(chunk):
        def call(*a):
            t = time.thread_time()
            try:
                return chunk(*a)
            finally:
                inside[0] += time.thread_time() - t
        return call

    for m in methods:  # this process's chunks only: the worker has its own copy
        setattr(split, m, timed(getattr(split, m)))
    one = here = 0.0
    try:
        pid = pool._procs[0].pid
        there = _worker_cpu(pid)
        for _ in range(calls):
            t = time.thread_time()
            run(serial, 1)
            one += time.thread_time() - t
            t = time.thread_time()
            run(split, 2)
            here += time.thread_time() - t
        there = _worker_cpu(pid) - there
    finally:
        for m in methods:
            del split.__dict__[m]
    return [1e3 * x / calls for x in (one, here, inside[0], there)]


def jobs(args) -> None:
    from autovae.inverse import parallel
    from autovae.inverse.aristoff_bangerth import BandedPoissonQ1
    from autovae.inverse.darcy import DarcySolver

    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    print(f"\n== 3. Solves/s against --jobs, forward + adjoint, {cores} cores present; the "
          "chunks in processes (what --jobs uses: a batch under "
          f"{parallel.MIN_SPLIT_S * 1e3:g} ms of serial work, or one measured slower split, runs "
          "in one process), in threads (the same rules), and in processes with every batch "
          "split; then the CPU time of a split call (2 processes) ==")
    for batch in args.batch:
        _jobs_batch(args, batch, counts, parallel, BandedPoissonQ1, DarcySolver)
    nuts_jobs(args, counts)


def _jobs_batch(args, batch, counts, parallel, BandedPoissonQ1, DarcySolver) -> None:
    rng = np.random.default_rng(0)
    theta = np.exp(rng.normal(0, 0.5, (batch, 64)))
    g_z = rng.normal(0, 1, (batch, 169))
    z_hat = rng.normal(0, 0.1, 169)
    log_k = rng.normal(0, 1, (batch, 256))
    g = rng.normal(0, 1, (batch, 256))

    def ab_solver(j):
        ab = BandedPoissonQ1()
        ab.set_jobs(j)
        return ab

    def ab_fused(ab, j):  # as ChEES and MALA call it: each row's adjoint right after its forward
        ab.log_likelihood_and_grad(theta, z_hat, 0.05)

    def ab_kept(ab, j):  # through autograd: the forward's factors kept for the adjoint
        _, state = ab.solve(theta, keep=True)
        ab.vjp(state, g_z)

    def darcy_run(darcy, j):  # through autograd, as every sampler calls it
        k, factors, p = darcy._forward(log_k, j)
        darcy._adjoint(k, factors, p, g, j)

    default, min_split = parallel.WORKERS, parallel.MIN_SPLIT_S
    for name, make, run, methods in (
            ("aristoff-bangerth fused", ab_solver, ab_fused, ("_llg_chunk",)),
            ("aristoff-bangerth kept", ab_solver, ab_kept, ("_solve_chunk", "_vjp_chunk")),
            ("darcy 16x16", lambda j: DarcySolver(16), darcy_run,
             ("_forward_chunk", "_adjoint_chunk"))):
        cases = {(1, "-"): make(1)}  # one worker: neither processes nor threads
        for kind in ("processes", "threads", "split"):  # split: processes, every batch split
            parallel.WORKERS = "threads" if kind == "threads" else "processes"
            for j in counts[1:]:  # the workers start with the solver's first use; then as
                cases[(j, kind)] = make(j)  # in a sampler's run of thousands of calls: past
                parallel.MIN_SPLIT_S = 0.0 if kind == "split" else min_split  # the rule's
                for _ in range(10):  # first measurements and the fresh workers' page faults
                    run(cases[(j, kind)], j)
        parallel.WORKERS = default
        best = dict.fromkeys(cases, math.inf)
        for _ in range(args.repeats):  # interleaved: a burst of other work spoils all alike
            for key, solver in cases.items():
                parallel.MIN_SPLIT_S = 0.0 if key[1] == "split" else min_split
                best[key] = min(best[key], _best(lambda s=solver, j=key[0], r=run: r(s, j), 1))
        for (j, kind), t in best.items():
            rate = 2 * batch / t
            print(f"{name:23s} batch {batch:3d} --jobs {j:2d} {kind:9s}: {rate:8.0f} solves/s "
                  f"({best[(1, '-')] / t:.2f}x --jobs 1)", flush=True)
        serial, split = cases[(1, "-")], cases[(2, "split")]
        pool = split.__dict__.get("_workers") or split.__dict__.get("_pools", {}).get(2)
        if pool is not None and pool.processes and Path("/proc/self/stat").exists():
            parallel.MIN_SPLIT_S = 0.0
            calls = max(20, int(1.0 / best[(1, "-")]))  # ~1 s serial: /proc's 10 ms ticks
            one, here, inside, there = _cpu_split(serial, split, pool, methods, run, calls)
            print(f"{'':23s} CPU ms a call: --jobs 1 {one:.2f}; split over 2 processes: here "
                  f"{here:.2f} (its chunk {inside:.2f}, messages and bookkeeping "
                  f"{here - inside:.2f}), the worker {there:.2f}; "
                  f"{one / max(here, there):.2f}x by CPU time", flush=True)
        parallel.MIN_SPLIT_S = min_split
        for solver in cases.values():
            solver.close_workers()


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
    p.add_argument("--problem", choices=tuple(_MODEL_METHODS), default="aristoff-bangerth",
                   help="the problem of parts 1-2 (darcy: its default KL prior, 16 dims)")
    p.add_argument("--seed", type=int, default=0, help="the chains' seed (parts 1-2)")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep the chain folders of parts 1-2 in DIR/chees and DIR/nuts (new "
                        "folders: a resumed run's times would be a part of its cost)")
    p.add_argument("--chees-chains", type=int, default=16)
    p.add_argument("--chees-warmup", type=int, default=300)
    # 16 x (300 + 500) and 4 x (300 + 650): both converged on Aristoff-Bangerth at seed 0 (R-hat
    # 1.0081, 1.0091) at about equal solves (587k, 542k); 150 and 400 draws did not (1.0185, 1.0157)
    p.add_argument("--chees-draws", type=int, default=500)
    p.add_argument("--nuts-chains", type=int, default=4)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-draws", type=int, default=650)
    p.add_argument("--batch", type=lambda v: [int(b) for b in v.split(",")], default=[16, 64],
                   help="rows a batch in part 3, comma-separated (default 16,64)")
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
        if args.keep:
            kernels(args, Path(args.keep))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                kernels(args, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
