"""The inverse-problem experiment of docs/inverse.md (spec section 3.2), resumable.

    OMP_NUM_THREADS=1 nice -n 10 sh -c \
        'experiments/train_inverse_vaes.sh && python experiments/inverse.py'

Stages (``--stage``, default all): ``tierA`` (linear-Gaussian problem with an analytic
posterior, VAE prior fidelity), ``pcn`` and ``nuts`` (Tier B Darcy chains through
``autovae.inverse.invert``, one chain folder each, resumed when re-run), ``tables``
(docs/results/inverse_tierB.json from the folders, when there are any, and
docs/results/inverse_tables.md from that JSON: runs offline from the stored JSON alone).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import inverse_costs
import numpy as np
import torch

from autovae.inverse import (
    ChainFolder,
    DecoderPrior,
    ForwardModel,
    InverseConfig,
    InverseProblem,
    KarhunenLoeve,
    observation_operator,
    regular_points,
    run_chains,
)
from autovae.inverse import ess as ess_of
from autovae.inverse.grf import sample_grf
from autovae.inverse.inversion import invert
from autovae.inverse.problems import TRUTH_SEED_OFFSET

ROOT = Path("runs/inverse")
RESULTS = Path("docs/results")
N, DIM = 16, 16
PRIORS = {"vae": "vae-beta1", "beta-vae 0.5": "vae-beta0.5", "beta-vae 2": "vae-beta2",
          "fisher-ae": "fae-w0.1-t5", "kl": None}
SEEDS = (0, 1, 2)
PCN = {"chains": 4, "warmup": 1000, "draws": 2000}
NUTS = {"chains": 2, "warmup": 150, "draws": 250}
NUTS_JOBS = [(prior, seed) for seed in SEEDS for prior in PRIORS]


def _ready(prior: str) -> bool:
    """The prior's VAE has finished training (the KL prior needs none)."""
    if PRIORS[prior] is None:
        return (ROOT / "vae-beta1" / "checkpoint.pt").is_file()
    history = ROOT / PRIORS[prior] / "metrics.jsonl"
    return history.is_file() and len(history.read_text().splitlines()) >= 15


def _prior(prior: str):
    if PRIORS[prior] is None:
        return KarhunenLoeve(N, dim=DIM, length_scale_range=(0.1, 0.5))
    return DecoderPrior.from_run(ROOT / PRIORS[prior])


class LinearObservation(ForwardModel):
    """y = H u: the bilinear read-out of a field at the points (Tier A's linear model)."""

    name = "linear-observation"

    def __init__(self, H: torch.Tensor):
        super().__init__()
        self.H, self.param_shape, self.n_obs = H, (N, N), H.shape[0]

    def evaluate(self, params):
        return params.reshape(params.shape[0], -1) @ self.H.T.to(params.dtype)


# -- Tier A ---------------------------------------------------------------------------------------
def tier_a() -> dict:
    """y = H u + eta with u ~ GRF (the dataset's covariance C), H the bilinear read-out at the 64
    points, sigma = 0.1: exact posterior in field space and, for the 16-term KL prior, in the
    latent space, against pCN and NUTS; VAE priors' covariance against C."""
    kl_full = _prior("kl")
    C = kl_full.full_covariance()
    pts = regular_points(64)
    H = torch.from_numpy(observation_operator(N, pts).toarray())
    truth = sample_grf(1, N, seed=TRUTH_SEED_OFFSET)[0].double().reshape(-1)
    sigma = 0.1
    y = H @ truth + sigma * torch.randn(64, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64)
    K = H @ C @ H.T + sigma**2 * torch.eye(64, dtype=torch.float64)
    m_exact = C @ H.T @ torch.linalg.solve(K, y)
    C_post = C - C @ H.T @ torch.linalg.solve(K, H @ C)
    sd_exact = C_post.diagonal().clamp_min(0).sqrt()

    forward = LinearObservation(H)

    out: dict = {"sigma": sigma, "observations": 64, "grid": N}
    # latent-exact check with the KL-16 prior: z | y ~ N(m_z, S_z)
    B = kl_full.params(torch.eye(DIM, dtype=torch.float64)).reshape(DIM, -1)  # field = z @ B
    G = H @ B.T
    S_z = torch.linalg.inv(torch.eye(DIM, dtype=torch.float64) + G.T @ G / sigma**2)
    m_z = S_z @ G.T @ y / sigma**2
    out["kl16_truncation"] = {
        "energy": kl_full.energy,
        "rel_l2_exact_kl16_mean_vs_exact_grf_mean":
            InverseProblem.relative_l2((m_z @ B), m_exact)}
    for sampler, opts in (("pcn", PCN), ("nuts", {"chains": 2, "warmup": 300, "draws": 1000})):
        problem = InverseProblem(kl_full, forward, y, sigma, "absolute")
        t0 = time.perf_counter()
        res = run_chains(problem.target(), sampler, ROOT / "tierA" / f"kl16-{sampler}", seed=0,
                         **opts)
        draws = torch.from_numpy(res.draws.reshape(-1, DIM))
        ess = ess_of(res)
        mean, cov = draws.mean(0), torch.cov(draws.T)
        z = (mean - m_z) / (S_z.diagonal().sqrt() / torch.from_numpy(ess).sqrt())
        out[f"kl16_{sampler}"] = {
            **{k: opts[k] for k in opts}, "acceptance": float(np.mean(res.acceptance)),
            "ess_bulk_min": float(ess.min()), "seconds": time.perf_counter() - t0,
            "max_abs_z_mean": float(z.abs().max()),
            "rel_frobenius_cov": float(torch.linalg.norm(cov - S_z) / torch.linalg.norm(S_z)),
            "expected_rel_frobenius_mc": float(math.sqrt(
                ((S_z**2).sum() + S_z.diagonal().sum() ** 2) / float(ess.mean()))
                / torch.linalg.norm(S_z)),
            "sd_ratio_min_max": [float(r) for r in
                                 (cov.diagonal() / S_z.diagonal()).sqrt().aminmax()]}
    # the VAE priors: covariance of decoded N(0, I) draws against C; posterior against exact
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(20000, DIM, generator=g, dtype=torch.float64)
    cn = torch.linalg.norm(C)
    out["kl16_prior"] = {"rel_frobenius_cov": float(torch.linalg.norm(kl_full.covariance() - C)
                                                     / cn),
                         "mean_variance_ratio": float(kl_full.covariance().diagonal().mean()
                                                      / C.diagonal().mean())}
    for name in ("vae", "beta-vae 0.5", "beta-vae 2", "fisher-ae"):
        if not _ready(name):
            continue
        dec = _prior(name)
        with torch.no_grad():
            f = torch.cat([dec.params(zs[i:i + 5000]) for i in range(0, len(zs), 5000)]
                          ).reshape(len(zs), -1)
        cov = torch.cov(f.T)
        problem = InverseProblem(dec, forward, y, sigma, "absolute")
        res = run_chains(problem.target(), "pcn", ROOT / "tierA" / f"{PRIORS[name]}-pcn",
                         seed=0, **PCN)
        pm, psd, _ = problem.posterior_params(res.draws)
        draws = res.draws.reshape(-1, DIM)
        pick = torch.from_numpy(draws[np.linspace(0, len(draws) - 1, 2000).astype(int)])
        with torch.no_grad():
            fields = dec.params(pick).reshape(len(pick), -1)
        lo, hi = torch.quantile(fields, 0.05, 0), torch.quantile(fields, 0.95, 0)
        out[name] = {
            "prior_rel_frobenius_cov": float(torch.linalg.norm(cov - C) / cn),
            "prior_mean_variance_ratio": float(cov.diagonal().mean() / C.diagonal().mean()),
            "prior_mean_abs": float(f.mean(0).abs().mean()),
            "posterior_rel_l2_vs_exact_mean": InverseProblem.relative_l2(pm.reshape(-1),
                                                                         m_exact),
            "posterior_rel_l2_vs_truth": InverseProblem.relative_l2(pm.reshape(-1), truth),
            "posterior_sd_ratio_mean": float((psd.reshape(-1) / sd_exact).mean()),
            "coverage_90_truth": float(((truth >= lo) & (truth <= hi)).double().mean()),
            "acceptance": float(np.mean(res.acceptance)),
            "ess_bulk_min": float(ess_of(res).min())}
    out["exact_rel_l2_vs_truth"] = InverseProblem.relative_l2(m_exact, truth)
    out["exact_coverage_90_truth"] = float(((truth - m_exact).abs() <= 1.645 * sd_exact)
                                           .double().mean())
    _save("inverse_tierA.json", out)
    return out


# -- Tier B ---------------------------------------------------------------------------------------
def _job(prior: str, seed: int, data: str, sampler: str) -> dict:
    run = ROOT / PRIORS[prior] if PRIORS[prior] else ROOT / "vae-beta1"
    out = ROOT / "tierB" / f"{prior.replace(' ', '')}-{data}-{sampler}-s{seed}"
    opts = PCN if sampler == "pcn" else NUTS
    r = invert(InverseConfig(run=str(run), prior="kle" if PRIORS[prior] is None else "run",
                             truth_seed=seed, seed=seed, kernel=sampler, out=str(out),
                             truth_resolution=64 if data == "fine" else None, **opts))
    return {"prior": prior, "seed": seed, "data": data, **r.summary}


def tier_b(samplers) -> list[dict]:
    rows = []
    for sampler in samplers:
        if sampler == "pcn":
            jobs = [(p, s, "coarse") for s in SEEDS for p in PRIORS] + \
                   [(p, 0, "fine") for p in PRIORS]
        else:
            jobs = [(p, s, "coarse") for p, s in NUTS_JOBS]
        for prior, seed, data in jobs:
            if not _ready(prior):
                print(f"{sampler} {prior}: its VAE is not trained yet, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            rows.append(_job(prior, seed, data, sampler))
            print(f"{sampler} {prior} {data} seed {seed}: {time.perf_counter() - t0:.0f} s",
                  flush=True)
    return rows


# -- tables ---------------------------------------------------------------------------------------
def _save(name: str, obj) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(obj, indent=1) + "\n")


def collect() -> list[dict] | None:
    """Tier B rows from the chain folders' summary.json, saved to inverse_tierB.json; None
    when there are no chain folders (the stored JSON is then left as it is)."""
    rows = []
    for chain in map(ChainFolder, sorted((ROOT / "tierB").glob("*"))):
        if not chain.summary.is_file():
            continue
        prior, data, sampler, seed = chain.path.name.rsplit("-", 3)
        rows.append({"folder": chain.path.name, "prior": prior, "data": data,
                     "sampler": sampler, "seed": int(seed[1:]), **chain.read_json(chain.summary)})
    if not rows:
        return None
    _save("inverse_tierB.json", rows)
    return rows


def tables() -> str:
    """inverse_tables.md from the chain folders if there are any, else from the stored
    docs/results/inverse_tierB.json alone (offline: no run folders needed)."""
    rows = collect()
    if rows is None:
        stored = RESULTS / "inverse_tierB.json"
        if not stored.is_file():
            raise SystemExit(f"no chain folders under {ROOT / 'tierB'} and no {stored}")
        rows = json.loads(stored.read_text())
    tier_a = RESULTS / "inverse_tierA.json"
    return inverse_costs.write(rows, json.loads(tier_a.read_text()) if tier_a.is_file() else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="all", choices=("all", "tierA", "pcn", "nuts",
                                                           "tables"))
    stage = parser.parse_args().stage
    if stage in ("all", "tierA"):
        print(json.dumps(tier_a(), indent=1), flush=True)
    if stage in ("all", "pcn"):
        tier_b(["pcn"])
    if stage in ("all", "nuts"):
        tier_b(["nuts"])
    print(tables())


if __name__ == "__main__":
    main()
