"""A VAE prior on the Aristoff-Bangerth benchmark (issue 18's last item). Resumable.

    OMP_NUM_THREADS=1 AUTOVAE="python -m autovae" sh experiments/train_ab_vae.sh  # ~1 min
    OMP_NUM_THREADS=1 python experiments/ab_vae_prior.py --stage nuts              # ~40 min
    OMP_NUM_THREADS=1 python experiments/ab_vae_prior.py --stage table

``nuts``: NUTS (4 chains, 300 warm-up, 600 draws each: the reference NUTS run's settings in
docs/aristoff-bangerth.md) on the benchmark's published data with (a) the benchmark's own prior,
(b) the VAE trained on its prior's draws (runs/inverse/ab-vae: theta = exp(decoder(z))), (c)
the same VAE plus a residual field of 48 terms (64 coordinates in all, the benchmark's own
count), its variance fitted to what the decoder misses of the prior's 2^2 I in ln theta.
Folders runs/inverse/ab/PRIOR-nuts-s0. ``table``: their rows into
docs/results/aristoff_bangerth_vae_prior.json. Coverage and error are read in ln theta (the
scale on which the prior is Gaussian); the theta-scale figures are kept beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from autovae.inverse import ChainFolder, InverseConfig, invert

RUN = "runs/inverse/ab-vae"
ROOT = Path("runs/inverse/ab")
OUT = Path("docs/results/aristoff_bangerth_vae_prior.json")
RESIDUAL = 48
SETTINGS = {"chains": 4, "warmup": 300, "draws": 600}
PRIORS = {"benchmark": {"prior": "benchmark"}, "vae": {"run": RUN},
          f"vae+res{RESIDUAL}": {"run": RUN, "residual": RESIDUAL}}
PROBLEM_KEYS = ("prior", "prior_description", "dim", "residual_terms", "variance_ratio",
                "base_variance_ratio", "transform")
SUMMARY_KEYS = ("status", "reason", "log_coverage_2sd", "log_coverage_1sd", "log_coverage_50",
                "log_coverage_90", "log_coverage_95", "log_rel_l2_mean", "coverage_2sd",
                "coverage_90", "rel_l2_mean", "posterior_sd_mean", "nsswr",
                "ess_bulk_min", "ess_bulk_min_per_2000", "ess_bulk_median", "ess_tail_min",
                "rhat_max", "converged", "note", "solves", "seconds", "ess_per_1000_solves",
                "ess_per_second", "acceptance", "divergences", "chains", "draws")


def folder(name: str, seed: int = 0) -> Path:
    return ROOT / f"{name}-nuts-s{seed}"


def stage_nuts(names=None, seed: int = 0) -> None:
    for name, kw in PRIORS.items():
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        r = invert(InverseConfig(problem="aristoff-bangerth", kernel="nuts", seed=seed,
                                 out=str(folder(name, seed)), **SETTINGS, **kw))
        s = r.summary
        print(f"{name}: {s['status']}, ln-theta 2-sd coverage {s.get('log_coverage_2sd')}, "
              f"90% {s.get('log_coverage_90')}, rel L2 {s.get('log_rel_l2_mean')}, ESS/2000 "
              f"{s.get('ess_bulk_min_per_2000')}, R-hat {s.get('rhat_max')}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


def row(name: str, seed: int = 0) -> dict:
    path = folder(name, seed)
    chain = ChainFolder(path)
    s, p = chain.read_json(chain.summary), chain.read_json(chain.problem)
    out = {"folder": str(path), "prior": name, "data": "published z_hat (theta_true known)",
           "sampler": "nuts", "seed": seed}
    out.update({k: s.get(k) for k in SUMMARY_KEYS if k in s})
    # the headline fields in ln theta; the theta-scale ones keep a theta_ prefix
    for k in ("coverage_2sd", "coverage_90", "rel_l2_mean"):
        out[f"theta_{k}"] = out.pop(k, None)
        out[k] = out.pop(f"log_{k}", None)
    out.update({("prior_kind" if k == "prior" else f"prior_{k}"): p[k]
                for k in PROBLEM_KEYS if k in p})
    # the benchmark prior's posterior of the same seed; for its own rows another seed's (the
    # Monte Carlo floor of the comparison)
    ref = folder("benchmark", seed if name != "benchmark" else (seed + 1) % 3)
    out.update(blocks(name, path, ref))
    return out


LOW, HIGH = [9, 10, 17, 18], [45, 46, 53, 54]  # theta_true 0.1 and 10 there, 1 elsewhere


def _log_moments(name: str, path: Path):
    import torch

    from autovae.inverse import PROBLEMS, load_chains

    problem = PROBLEMS["aristoff-bangerth"](InverseConfig(problem="aristoff-bangerth",
                                                          **PRIORS[name])).problem
    z = torch.as_tensor(load_chains(path).draws)
    mean, sd, _ = problem.posterior_params(z, log=True)
    return mean.reshape(64), sd.reshape(64)


def blocks(name: str, path: Path, reference: Path) -> dict:
    """Posterior mean and sd of ln theta on the two anomalies and the rest (block means), and
    against the benchmark prior's posterior (``reference``): the relative L2 distance of the
    means and the ratio of the sds (its median over the 64 blocks)."""
    import torch

    mean, sd = _log_moments(name, path)
    rest = [k for k in range(64) if k not in LOW + HIGH]
    out = {}
    for label, idx in (("low", LOW), ("high", HIGH), ("rest", rest)):
        out[f"ln_theta_mean_{label}"] = float(mean[idx].mean())
        out[f"ln_theta_sd_{label}"] = float(sd[idx].mean())
    if ChainFolder(reference).summary.is_file():
        ref_mean, ref_sd = _log_moments("benchmark", reference)
        out["rel_l2_to_benchmark_posterior_mean"] = float(
            torch.linalg.norm(mean - ref_mean) / torch.linalg.norm(ref_mean))
        out["sd_ratio_to_benchmark_posterior_median"] = float((sd / ref_sd).median())
    return out


def vae_draws(n: int = 20000) -> dict:
    """What the VAE's decoded prior draws look like next to the data's law (phi iid N(4, 4)),
    and the spread of its encoder means over the training data (holes in the latent space)."""
    import torch

    from autovae.data import load_data
    from autovae.inverse import DecoderPrior

    if not (Path(RUN) / "checkpoint.pt").is_file():
        return {}
    prior = DecoderPrior.from_run(RUN)
    with torch.no_grad():
        u = prior.params(prior.sample(n, seed=0)).reshape(n, 64)
        x = load_data("aristoff-bangerth-prior").train[:5000].double()
        mu = prior.model.encoder(x)[:, :prior.dim]
    eig = torch.linalg.eigvalsh(torch.cov(u.T)).flip(0)
    return {"draws": n, "mean": float(u.mean()), "sd_per_block": float(u.std(0).mean()),
            "sd_of_field_mean": float(u.mean(1).std()), "data_sd_of_field_mean": 2.0 / 8,
            "top_covariance_eigenvalues": [float(v) for v in eig[:3]],
            "rank_16_eigenvalues_min": float(eig[15]), "target_eigenvalue": 4.0,
            "encoder_mean_covariance_eigenvalues": sorted(
                float(v) for v in torch.linalg.eigvalsh(torch.cov(mu.T)))}


def stage_table() -> None:
    rows = [row(name, seed) for name in PRIORS for seed in range(10)
            if ChainFolder(folder(name, seed)).summary.is_file()]
    summary = {}
    for name in PRIORS:
        mine = [r for r in rows if r["prior"] == name]
        if mine:
            summary[name] = {"seeds": [r["seed"] for r in mine]}
            for k in ("coverage_2sd", "coverage_90", "rel_l2_mean", "ess_bulk_min_per_2000",
                      "rhat_max", "solves", "seconds", "rel_l2_to_benchmark_posterior_mean",
                      "sd_ratio_to_benchmark_posterior_median"):
                v = [r[k] for r in mine if r.get(k) is not None]
                if v:
                    summary[name][k] = {"mean": float(np.mean(v)), "sd": float(np.std(v)),
                                        "min": float(np.min(v)), "max": float(np.max(v))}
    vae = json.loads((Path(RUN) / "metrics.json").read_text()) \
        if (Path(RUN) / "metrics.json").is_file() else {}
    OUT.write_text(json.dumps({
        "problem": "Aristoff-Bangerth benchmark (issue 17), published data, sigma 0.05; "
                   "coverage_* and rel_l2_mean in ln theta, theta_* in theta",
        "command": "OMP_NUM_THREADS=1 AUTOVAE='python -m autovae' sh "
                   "experiments/train_ab_vae.sh && OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src "
                   "python experiments/ab_vae_prior.py --stage nuts && ... --stage table",
        "machine": "2 shared CPU cores (other jobs running), one process, one thread",
        "settings": {**SETTINGS, "kernel": "nuts", "residual_terms": RESIDUAL, "run": RUN},
        "vae": {"data": "aristoff-bangerth-prior (20,000 train draws, phi iid N(4, 2^2))",
                "recipe": "experiments/train_ab_vae.sh (the Darcy VAEs' recipe)",
                **{k: vae.get(k) for k in ("test_elbo", "test_kl", "recon_mse",
                                           "active_units", "test_nll")}},
        "vae_prior_draws": vae_draws(), "summary": summary, "rows": rows}, indent=1) + "\n")
    for r in rows:
        print(json.dumps({k: r.get(k) for k in (
            "prior", "seed", "status", "coverage_2sd", "coverage_90", "rel_l2_mean",
            "ess_bulk_min_per_2000", "rhat_max", "solves", "seconds",
            "rel_l2_to_benchmark_posterior_mean", "sd_ratio_to_benchmark_posterior_median")}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("nuts", "table"), required=True)
    parser.add_argument("--prior", action="append", choices=list(PRIORS),
                        help="nuts: only these priors")
    parser.add_argument("--seeds", default="0", help="nuts: chain seeds, e.g. 0,1,2")
    args = parser.parse_args(argv)
    if args.stage == "nuts":
        for seed in (int(x) for x in args.seeds.split(",")):
            stage_nuts(args.prior, seed)
    else:
        stage_table()


if __name__ == "__main__":
    main(sys.argv[1:])
