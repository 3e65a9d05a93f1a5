"""A reference posterior of our own for the Aristoff-Bangerth benchmark (issue 17, part 4).

Two independent kernels on the benchmark's posterior (density exp(log L + log prior) w.r.t.
d theta, as the paper defines it):

* MH: the benchmark's own sampler, theta' = theta * exp(xi), xi ~ N(0, s^2 I), s = 0.09, with
  the Hastings factor prod(theta' / theta); many chains advanced together by the batched solver.
* NUTS: Pyro's NUTS on phi = ln theta with the Jacobian (``AristoffBangerth.log_density_phi``),
  diagonal mass matrix, chains run one after another (the machine is shared).

ArviZ gives R-hat, bulk ESS and the MCSE of every coordinate's mean, for theta and for phi; the
two kernels agree on a coordinate when their means differ by at most 3 combined MCSEs
(sqrt(mcse_MH^2 + mcse_NUTS^2)). Everything goes to docs/results/aristoff_bangerth_reference.json.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src nohup python experiments/aristoff_bangerth_reference.py \
        > runs/ab_reference.log 2>&1 &

``--pilot`` runs a few seconds of each kernel and prints the cost per step.

The long MH run (issue 17: the first run's MH stopped at R-hat 1.30) has its own stages, so that
it can run where there are many cores and be judged here:

    # one MH chain per process, ``--workers`` processes, ``--mh-minutes`` of wall clock
    python experiments/aristoff_bangerth_reference.py --stage mh --workers 16 --mh-minutes 8 \
        --mh-thin 1000 --mh-out runs/ab_mh_long.npz
    # R-hat, ESS, MCSE of those chains (second half of each) against the NUTS reference
    # already recorded in --out, which gains an "mh_long" entry and a new verdict
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python experiments/aristoff_bangerth_reference.py \
        --stage combine --mh-out runs/ab_mh_long.npz
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from autovae.inverse.aristoff_bangerth import AristoffBangerth


def _arviz():
    """ArviZ, imported on use (the ``mh`` stage runs on machines without it)."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # ArviZ's refactor notice
    import arviz as az

    return az


def run_mh(problem: AristoffBangerth, chains: int, steps: int, thin: int, scale: float,
           seed: int, start: np.ndarray, seconds: float = float("inf"),
           report_every: int = 5000) -> dict:
    """The benchmark's log-normal random walk on ``chains`` chains at once, for ``steps``
    steps or until ``seconds`` have passed (checked every ``thin`` steps).

    Returns theta draws (chains, steps_done // thin, 64) (every ``thin``-th state), the steps
    done, the acceptance rate, the solves and the seconds used."""
    rng = np.random.default_rng(seed)
    solves0, t0 = problem.solves, time.perf_counter()
    theta = start.copy()
    phi = np.log(theta)

    def log_post(phi):  # log L + log prior as the benchmark writes them: no Jacobian
        return problem.log_density_phi_numpy(phi) - phi.sum(-1)

    current = log_post(phi)
    kept = np.empty((chains, steps // thin, 64))
    accepted, done = 0, 0
    for step in range(steps):
        if step % thin == 0 and time.perf_counter() - t0 > seconds:
            break
        xi = rng.normal(0.0, scale, size=phi.shape)
        trial_phi = phi + xi
        trial = log_post(trial_phi)
        # acceptance ratio pi(theta') / pi(theta) * prod(theta' / theta)
        log_ratio = trial - current + xi.sum(-1)
        accept = np.log(rng.uniform(size=chains)) < log_ratio
        phi[accept], current[accept] = trial_phi[accept], trial[accept]
        accepted += int(accept.sum())
        done = step + 1
        if done % thin == 0:
            kept[:, done // thin - 1] = np.exp(phi)
        if report_every and (step + 1) % report_every == 0:
            print(f"  MH step {step + 1}/{steps}: acceptance {accepted / (chains * (step + 1)):.3f}"
                  f", {time.perf_counter() - t0:.0f} s", flush=True)
    return {"draws": kept[:, :done // thin], "steps": done,
            "acceptance": accepted / (chains * done),
            "solves": problem.solves - solves0, "seconds": time.perf_counter() - t0}


def _mh_worker(job: tuple) -> dict:
    """One process of the parallel MH stage: ``run_mh`` on its own chains, ln theta kept as
    float32 (a quarter of the bytes; far below the Monte-Carlo error)."""
    index, chains, steps, thin, scale, seed, start, seconds = job
    torch.set_num_threads(1)
    r = run_mh(AristoffBangerth(), chains, steps, thin, scale, seed, start, seconds,
               report_every=100_000 if index == 0 else 0)
    return {**r, "draws": np.log(r["draws"]).astype(np.float32)}


def run_mh_parallel(workers: int, chains_per_worker: int, steps: int, thin: int, scale: float,
                    seed: int, starts: np.ndarray, seconds: float) -> dict:
    """``run_mh`` in ``workers`` processes (one core each), independent seeds; ln theta draws
    (workers * chains_per_worker, kept, 64), all chains cut to the shortest."""
    import multiprocessing as mp

    jobs = [(w, chains_per_worker, steps, thin, scale, seed + 7919 * (w + 1),
             starts[w * chains_per_worker:(w + 1) * chains_per_worker], seconds)
            for w in range(workers)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_mh_worker, jobs)
    kept = min(r["draws"].shape[1] for r in parts)
    return {"log_theta": np.concatenate([r["draws"][:, :kept] for r in parts]),
            "steps": np.array([r["steps"] for r in parts]),
            "acceptance": np.array([r["acceptance"] for r in parts]),
            "solves": np.array([r["solves"] for r in parts]),
            "seconds": np.array([r["seconds"] for r in parts])}


def run_nuts(problem: AristoffBangerth, chains: int, warmup: int, samples: int, seed: int,
             starts: np.ndarray, deadline: float = float("inf")) -> dict:
    """Pyro NUTS on phi = ln theta, one chain after another (none started after ``deadline``,
    a ``time.perf_counter()`` value, once two are done); theta draws (chains, samples, 64)."""
    import pyro
    from pyro.infer import MCMC, NUTS

    def potential(params):
        phi = params["phi"]
        try:
            return -problem.log_density_phi(phi)
        except ValueError:  # the step-size search's first trials can reach |phi| > 700 or a
            # numerically indefinite matrix: an infinite energy, so NUTS rejects the point
            return (phi * 0.0).sum() + float("inf")

    solves0, t0 = problem.solves, time.perf_counter()
    draws, extras = [], []
    for c in range(chains):
        if c >= 2 and time.perf_counter() > deadline:
            print(f"  NUTS: deadline passed, stopping after {c} chains", flush=True)
            break
        pyro.set_rng_seed(seed + c)
        kernel = NUTS(potential_fn=potential, target_accept_prob=0.8, max_tree_depth=10)
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup,
                    initial_params={"phi": torch.from_numpy(np.log(starts[c]))},
                    disable_progbar=True)
        tc = time.perf_counter()
        mcmc.run()
        phi = mcmc.get_samples()["phi"].numpy()
        draws.append(np.exp(phi))
        diverging = mcmc.diagnostics()["divergences"]["chain 0"]
        extras.append({"step_size": float(kernel.step_size), "divergences": len(diverging),
                       "seconds": time.perf_counter() - tc})
        print(f"  NUTS chain {c}: {extras[-1]}, solves so far {problem.solves - solves0}",
              flush=True)
    return {"draws": np.stack(draws), "chains": extras, "solves": problem.solves - solves0,
            "seconds": time.perf_counter() - t0}


def summarise(draws: np.ndarray) -> dict:
    """Per-coordinate mean, sd, MCSE of the mean, bulk ESS and R-hat of theta and of ln theta."""
    az = _arviz()
    out = {}
    for name, x in (("theta", draws), ("log_theta", np.log(draws))):
        ds = az.convert_to_dataset({"x": x})
        out[name] = {
            "mean": x.mean(axis=(0, 1)).tolist(),
            "sd": x.std(axis=(0, 1), ddof=1).tolist(),
            "mcse_mean": az.mcse(ds, method="mean")["x"].values.tolist(),
            "ess_bulk": az.ess(ds, method="bulk")["x"].values.tolist(),
            "rhat": az.rhat(ds)["x"].values.tolist(),
        }
    return out


def compare(a: dict, b: dict) -> dict:
    """|mean_a - mean_b| / sqrt(mcse_a^2 + mcse_b^2) per coordinate, for theta and ln theta."""
    out = {}
    for name in ("theta", "log_theta"):
        ma, mb = np.array(a[name]["mean"]), np.array(b[name]["mean"])
        se = np.hypot(a[name]["mcse_mean"], b[name]["mcse_mean"])
        z = np.abs(ma - mb) / se
        out[name] = {"z": z.tolist(), "max_z": float(z.max()),
                     "n_beyond_3": int((z > 3).sum()),
                     "max_rhat_mh": float(np.max(a[name]["rhat"])),
                     "max_rhat_nuts": float(np.max(b[name]["rhat"])),
                     "agree": bool((z <= 3).all())}
    return out


def stage_mh(args, argv) -> None:
    """The benchmark's MH, one process per ``--chains-per-worker`` chains, for ``--mh-minutes``;
    starts drawn from the prior (phi ~ N(4, 2^2), overdispersed against the posterior)."""
    chains = args.workers * args.chains_per_worker
    starts = np.exp(np.random.default_rng(args.seed).normal(4.0, 2.0, size=(chains, 64)))
    if args.mh_resume:  # continue every chain from its last kept state (a valid MH path:
        # the steps after it are dropped); the new stream needs a new --seed
        starts = np.exp(np.load(args.mh_resume)["log_theta"][:, -1].astype(np.float64))
        if len(starts) != chains:
            raise SystemExit(f"--mh-resume holds {len(starts)} chains, not {chains}")
    print(f"MH: {args.workers} processes x {args.chains_per_worker} chains, "
          f"{args.mh_minutes} minutes, s = {args.mh_scale}, thin {args.mh_thin}", flush=True)
    r = run_mh_parallel(args.workers, args.chains_per_worker, args.mh_steps, args.mh_thin,
                        args.mh_scale, args.seed, starts, 60 * args.mh_minutes)
    out = args.mh_out[0]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **r, thin=args.mh_thin, scale=args.mh_scale, seed=args.seed,
             starts=np.log(starts), command=" ".join(["--stage mh", *(argv or [])]),
             resumed=str(args.mh_resume or ""),
             machine=f"{os.cpu_count()} CPU cores, {args.workers} processes x "
                     f"{args.chains_per_worker} chains")
    print(f"MH: {r['steps'].min()}-{r['steps'].max()} steps per chain, acceptance "
          f"{r['acceptance'].mean():.3f}, {r['log_theta'].shape[1]} kept per chain; "
          f"wrote {out}", flush=True)


PACKAGE_REFERENCE = "src/autovae/inverse/data/aristoff_bangerth/reference_posterior.json"


def package_reference(result: dict, path: str = PACKAGE_REFERENCE) -> None:
    """Write the reference that ``autovae invert --problem aristoff-bangerth`` measures its
    posterior mean against: the NUTS run and the long MH run pooled (precision-weighted means,
    combined MCSE) when both met the criteria, else the NUTS run alone (R-hat <= 1.01)."""
    nuts = result["nuts"]["summary"]
    runs, names = [nuts], [f"NUTS {result['nuts']['chains']} chains x "
                           f"{result['nuts']['samples']} draws"]
    if result.get("criteria_met") and "mh_long" in result:
        runs.append(result["mh_long"]["summary"])
        names.append(f"MH {result['mh_long']['chains']} chains, "
                     f"{result['mh_long']['steps_used']:,} steps after warm-up")
    out = {"source": "experiments/aristoff_bangerth_reference.py, "
                     "docs/results/aristoff_bangerth_reference.json: " + " + ".join(names)
                     + f"; R-hat max {max(max(r['log_theta']['rhat']) for r in runs):.4f}"}
    for name in ("theta", "log_theta"):
        w = np.array([1.0 / np.square(r[name]["mcse_mean"]) for r in runs])
        means = np.array([r[name]["mean"] for r in runs])
        out[name] = {"mean": ((w * means).sum(0) / w.sum(0)).tolist(),
                     "mcse": (1.0 / np.sqrt(w.sum(0))).tolist()}
    Path(path).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({out['source']})")


def coordinate_table(result: dict, mh_key: str = "mh_long") -> str:
    """The per-coordinate markdown table of docs/aristoff-bangerth.md: NUTS against an MH run
    (``mh_key``), ln theta and theta means with their MCSE, z = |difference| / combined MCSE
    (ln theta) and R-hat (rank-normalised: the same for theta and ln theta)."""
    n, m = result["nuts"]["summary"], result[mh_key]["summary"]
    z = result["agreement_long" if mh_key == "mh_long" else "agreement"]["log_theta"]["z"]
    rows = ["| k | mean ln θ (NUTS) | MCSE | sd | mean ln θ (MH) | MCSE | z | R-hat NUTS / MH "
            "| mean θ (NUTS) | MCSE | mean θ (MH) | MCSE |", "|" + "---|" * 12]
    for k in range(64):
        ln, lm, tn, tm = n["log_theta"], m["log_theta"], n["theta"], m["theta"]
        rows.append(
            f"| {k} | {ln['mean'][k]:.3f} | {ln['mcse_mean'][k]:.3f} | {ln['sd'][k]:.3f} | "
            f"{lm['mean'][k]:.3f} | {lm['mcse_mean'][k]:.3f} | {z[k]:.2f} | "
            f"{ln['rhat'][k]:.3f} / {lm['rhat'][k]:.3f} | {tn['mean'][k]:.4g} | "
            f"{tn['mcse_mean'][k]:.2g} | {tm['mean'][k]:.4g} | {tm['mcse_mean'][k]:.2g} |")
    return "\n".join(rows)


def _per_chain(per_worker: np.ndarray, part) -> np.ndarray:
    """A per-process figure of an mh part repeated for each of that process's chains."""
    return np.repeat(per_worker, len(part["log_theta"]) // len(per_worker))


def stage_combine(args) -> None:
    """R-hat, ESS and MCSE of the long MH run (second half of every chain) and its agreement
    with the NUTS reference already in ``--out``; adds ``mh_long`` and a new verdict there."""
    parts = [np.load(f) for f in args.mh_out]  # a run and its continuations, in order
    saved = parts[0]
    log_theta = np.concatenate([p["log_theta"].astype(np.float64) for p in parts], axis=1)
    warmup = int(args.mh_warmup * log_theta.shape[1])
    kept = np.exp(log_theta[:, warmup:])
    result = json.loads(Path(args.out).read_text())
    s_mh = summarise(kept)
    cmp = compare(s_mh, result["nuts"]["summary"])
    thin = int(saved["thin"])
    result["mh_long"] = {
        "commands": ["python experiments/aristoff_bangerth_reference.py " + str(p["command"])
                     for p in parts],
        "machines": [str(p["machine"]) if "machine" in p else
                     "16 CPU cores (a lent machine, Intel Xeon), 16 processes x 1 chains"
                     for p in parts],
        "chains": int(log_theta.shape[0]), "thin": thin, "scale": float(saved["scale"]),
        "starts": "phi = ln theta ~ N(4, 2^2) per coordinate (the prior): overdispersed",
        "steps_per_chain_min": int(sum(_per_chain(p["steps"], p) for p in parts).min()),
        "steps_per_chain_max": int(sum(_per_chain(p["steps"], p) for p in parts).max()),
        "acceptance": float(np.mean([p["acceptance"].mean() for p in parts])),
        "warmup": f"the first {args.mh_warmup:.0%} of each chain's kept draws "
                  f"({warmup * thin} steps)",
        "draws_used": int(np.prod(kept.shape[:2])),
        "steps_used": int(kept.shape[0] * kept.shape[1] * thin),
        "solves": int(sum(p["solves"].sum() for p in parts)),
        "seconds_per_process": float(sum(p["seconds"].max() for p in parts)),
        "summary": s_mh}
    result["agreement_long"] = cmp
    rhat = max(cmp[n][k] for n in ("theta", "log_theta") for k in ("max_rhat_mh", "max_rhat_nuts"))
    result["criteria_met"] = bool(cmp["theta"]["agree"] and cmp["log_theta"]["agree"]
                                  and rhat <= 1.01)
    result["criteria_from"] = "mh_long against nuts (the first, 16-minute MH run is kept as 'mh')"
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("theta", "log_theta"):
        c = cmp[name]
        ess = np.array(s_mh[name]["ess_bulk"])
        print(f"{name}: max |z| {c['max_z']:.2f} ({c['n_beyond_3']} beyond 3), R-hat max MH "
              f"{c['max_rhat_mh']:.4f} ({int((np.array(s_mh[name]['rhat']) > 1.01).sum())} "
              f"above 1.01), NUTS {c['max_rhat_nuts']:.4f}; MH bulk ESS min {ess.min():.0f} "
              f"median {np.median(ess):.0f}")
    print(f"criteria met: {result['criteria_met']}; wrote {args.out}")
    package_reference(result)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mh-chains", type=int, default=16)
    ap.add_argument("--mh-steps", type=int, default=200000, help="most steps per chain")
    ap.add_argument("--mh-minutes", type=float, default=16.0,
                    help="wall-clock budget of the MH run (the machine is shared)")
    ap.add_argument("--nuts-deadline-minutes", type=float, default=32.0,
                    help="no NUTS chain starts later than this after the start (two always run)")
    ap.add_argument("--mh-thin", type=int, default=20)
    ap.add_argument("--mh-scale", type=float, default=0.09)
    ap.add_argument("--nuts-chains", type=int, default=4)
    ap.add_argument("--nuts-warmup", type=int, default=300)
    ap.add_argument("--nuts-samples", type=int, default=600)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", default="docs/results/aristoff_bangerth_reference.json")
    ap.add_argument("--draws", default="runs/aristoff_bangerth_reference_draws.npz",
                    help="where the thinned theta draws of both kernels go (not committed)")
    ap.add_argument("--pilot", action="store_true", help="time a few steps of each kernel")
    ap.add_argument("--stage", choices=("all", "mh", "combine", "package", "table"),
                    default="all",
                    help="all: both kernels here; mh: only the long parallel MH run, draws to "
                         "--mh-out; combine: judge --mh-out against the NUTS reference in --out; "
                         "package: write the package's reference from --out; table: print "
                         "the per-coordinate markdown table of --out")
    ap.add_argument("--workers", type=int, default=16, help="processes of the mh stage")
    ap.add_argument("--chains-per-worker", type=int, default=1)
    ap.add_argument("--mh-out", default=["runs/ab_mh_long.npz"], nargs="+",
                    help="ln theta draws of the mh stage (float32, every --mh-thin-th step); "
                         "for combine, a run and its continuations in order")
    ap.add_argument("--mh-resume", help="mh stage: continue the chains of this file")
    ap.add_argument("--mh-warmup", type=float, default=0.5,
                    help="combine: fraction of each chain's kept draws dropped as warm-up")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.stage == "mh":
        return stage_mh(args, argv)
    if args.stage == "combine":
        return stage_combine(args)
    if args.stage == "table":
        return print(coordinate_table(json.loads(Path(args.out).read_text())))
    if args.stage == "package":
        return package_reference(json.loads(Path(args.out).read_text()))
    problem = AristoffBangerth()
    rng = np.random.default_rng(args.seed)
    n_chains = max(args.mh_chains, args.nuts_chains)
    # dispersed starts around the benchmark's theta = 1: ln theta ~ N(0, 1) per coordinate
    starts = np.exp(rng.normal(0.0, 1.0, size=(n_chains, 64)))

    if args.pilot:
        r = run_mh(problem, args.mh_chains, 200, 10, args.mh_scale, args.seed,
                   starts[:args.mh_chains])
        print(f"MH: {r['seconds'] / (200 * args.mh_chains) * 1e3:.3f} ms per chain-step, "
              f"acceptance {r['acceptance']:.3f}")
        r = run_nuts(problem, 1, 60, 20, args.seed, starts[:1])
        print(f"NUTS: {r['seconds'] / 80:.3f} s per draw, {r['solves'] / 80:.0f} solves per draw")
        return

    t0 = time.perf_counter()
    print(f"MH: {args.mh_chains} chains, at most {args.mh_steps} steps or {args.mh_minutes} "
          f"minutes, s = {args.mh_scale}", flush=True)
    mh = run_mh(problem, args.mh_chains, args.mh_steps, args.mh_thin, args.mh_scale, args.seed,
                starts[:args.mh_chains], seconds=60 * args.mh_minutes)
    print(f"MH: {mh['steps']} steps per chain in {mh['seconds']:.0f} s", flush=True)
    half = mh["draws"].shape[1] // 2  # the first half of every chain is warm-up
    mh_kept = mh["draws"][:, half:]
    print(f"NUTS: {args.nuts_chains} chains x ({args.nuts_warmup} + {args.nuts_samples})",
          flush=True)
    nuts = run_nuts(problem, args.nuts_chains, args.nuts_warmup, args.nuts_samples,
                    args.seed + 1000, starts[:args.nuts_chains],
                    deadline=t0 + 60 * args.nuts_deadline_minutes)
    Path(args.draws).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.draws, mh=mh_kept, nuts=nuts["draws"])

    s_mh, s_nuts = summarise(mh_kept), summarise(nuts["draws"])
    cmp = compare(s_mh, s_nuts)
    result = {
        "problem": "Aristoff-Bangerth benchmark, posterior exp(logL + logprior) w.r.t. d theta",
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python "
                   "experiments/aristoff_bangerth_reference.py " + " ".join(argv or []),
        "machine": "2 shared CPU cores (other jobs running), one process, one thread",
        "settings": {k: v for k, v in vars(args).items() if k not in ("pilot",)},
        "starts": "ln theta ~ N(0, 1) per coordinate, seed --seed",
        "mh": {"chains": args.mh_chains, "steps_per_chain": mh["steps"], "thin": args.mh_thin,
               "scale": args.mh_scale, "acceptance": mh["acceptance"],
               "draws_used": int(np.prod(mh_kept.shape[:2])),
               "steps_used": int(mh_kept.shape[1] * args.mh_thin * args.mh_chains),
               "warmup": "first half of each chain", "solves": mh["solves"],
               "seconds": mh["seconds"], "summary": s_mh},
        "nuts": {"chains": len(nuts["chains"]), "warmup": args.nuts_warmup,
                 "samples": args.nuts_samples,
                 "draws_used": int(np.prod(nuts["draws"].shape[:2])),
                 "per_chain": nuts["chains"], "solves": nuts["solves"],
                 "seconds": nuts["seconds"], "summary": s_nuts},
        "agreement": cmp,
        "criteria_met": bool(cmp["theta"]["agree"] and cmp["log_theta"]["agree"]
                             and max(cmp["theta"]["max_rhat_mh"], cmp["theta"]["max_rhat_nuts"],
                                     cmp["log_theta"]["max_rhat_mh"],
                                     cmp["log_theta"]["max_rhat_nuts"]) <= 1.01),
        "seconds_total": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("theta", "log_theta"):
        c = cmp[name]
        print(f"{name}: max |z| {c['max_z']:.2f} ({c['n_beyond_3']} beyond 3), R-hat max MH "
              f"{c['max_rhat_mh']:.4f}, NUTS {c['max_rhat_nuts']:.4f}")
    print(f"criteria met: {result['criteria_met']}; {result['seconds_total']:.0f} s; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
