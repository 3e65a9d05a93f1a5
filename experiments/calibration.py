"""Calibrated uncertainty from VAE priors (issue 18): SBC on the linear-Gaussian problem, and
NUTS on the Darcy case with the residual-field prior beside today's priors. Resumable.

    OMP_NUM_THREADS=1 python experiments/calibration.py --stage sbc     # a few minutes
    OMP_NUM_THREADS=1 python experiments/calibration.py --stage nuts    # about 5 min a chain
    OMP_NUM_THREADS=1 python experiments/calibration.py --stage tables

``sbc``: the linear-Gaussian problem of docs/inverse.md's Tier A (the 16x16 GRF read out at the
64 points, sigma 0.1), 100 truths drawn from the GRF itself (the data distribution), each
prior's posterior by MALA with a Gauss-Newton preconditioner (2 chains per truth, all
truths in one batch); the ranks of 16 cells,
their coverage, and the posterior sd against the exact one (the posterior covariance of a
linear-Gaussian problem does not depend on the data). A Karhunen-Loeve prior with a quarter of
the GRF's variance is the deliberately overconfident control. Writes
docs/results/calibration_sbc.json and docs/calibration/ranks.png.
``nuts``: Tier B (the Darcy case of the latent-MCMC authors' released code, spec 3.2; coarse
data, seeds 0-2) with the residual-field priors, rows appended to
docs/results/inverse_tierB.json (the folders are runs/inverse/tierB/PRIOR-coarse-nuts-sS).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from autovae.inverse import (
    ChainFolder,
    DecoderPrior,
    ForwardModel,
    InverseConfig,
    KarhunenLoeve,
    ResidualFieldPrior,
    invert,
    observation_operator,
    regular_points,
    sbc,
)
from autovae.inverse.grf import sample_grf

ROOT = Path("runs/inverse")
RESULTS = Path("docs/results")
FIGURES = Path("docs/calibration")
N, DIM, SIGMA, TRUTHS = 16, 16, 0.1, 100
CELLS = [i * N + j for i in range(2, N, 4) for j in range(1, N, 4)]  # 16 cells on a lattice
RESIDUAL = 112  # a 16-dim VAE plus 112 residual terms: 128 dims, as many as the KLE needs
RUNS = {"vae": "vae-beta1", "beta-vae 0.5": "vae-beta0.5"}


class ReadOut(ForwardModel):
    """The bilinear read-out of a 16x16 field at the 64 points (Tier A's linear model)."""

    name = "linear-observation"

    def __init__(self):
        super().__init__()
        H = observation_operator(N, regular_points(64)).toarray()
        self.H, self.param_shape, self.n_obs = torch.from_numpy(H), (N, N), 64

    def evaluate(self, params):
        return params.reshape(params.shape[0], -1) @ self.H.T


def _grf() -> torch.Tensor:
    return KarhunenLoeve(N, dim=1, length_scale_range=(0.1, 0.5)).full_covariance()


def priors() -> dict:
    C = _grf()
    kle = {"length_scale_range": (0.1, 0.5)}
    out = {"kle-128 (the GRF, 99.9%)": KarhunenLoeve(N, dim=128, **kle),
           "kle-128 sd/2 (control)": KarhunenLoeve(N, dim=128, variance=0.25, **kle),
           "kle-16": KarhunenLoeve(N, dim=DIM, **kle)}
    for name, folder in RUNS.items():
        if (ROOT / folder / "checkpoint.pt").is_file():
            base = DecoderPrior.from_run(ROOT / folder)
            out[name] = base
            for terms in (32, RESIDUAL) if name == "vae" else (RESIDUAL,):
                out[f"{name} + residual {terms}"] = ResidualFieldPrior(base, C, terms)
    return out


def stage_sbc() -> dict:
    C = _grf()
    forward = ReadOut()
    H = forward.H
    K = H @ C @ H.T + SIGMA**2 * torch.eye(64, dtype=torch.float64)
    sd_exact = (C - C @ H.T @ torch.linalg.solve(K, H @ C)).diagonal().clamp_min(0).sqrt()
    truths = sample_grf(TRUTHS, N, seed=300_000).double()
    rows, ranks = {}, {}
    for name, prior in priors().items():
        tag = name.replace(" ", "").replace("/", "").replace("(", "").replace(")", "")
        r = sbc(prior, forward, truths, SIGMA, ROOT / "sbc" / tag, quantities=CELLS,
                kernel="mala", chains=2, warmup=600, draws=300, thin=1, seed=0)
        ratio = r.sd / sd_exact[CELLS].numpy()
        rows[name] = {"p_value": r.p_value, "coverage_90": r.coverage_90,
                      "coverage_2sd": r.coverage_2sd, "sd_ratio_mean": float(ratio.mean()),
                      "sd_ratio_range": [float(ratio.min()), float(ratio.max())],
                      "rhat_max": r.rhat_max, "histogram": r.histogram().tolist(),
                      "draws_per_truth": r.draws, "truths": TRUTHS}
        ranks[name] = r
        print(f"{name:28s} p {r.p_value:.2g}  cover90 {r.coverage_90:.3f}  2sd "
              f"{r.coverage_2sd:.3f}  sd/exact {ratio.mean():.2f}  R-hat max {r.rhat_max:.3f}",
              flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration_sbc.json").write_text(json.dumps(
        {"problem": "linear-Gaussian (Tier A): 16x16 GRF, 64 points, sigma 0.1",
         "cells": CELLS, "rows": rows}, indent=1) + "\n")
    _figure(ranks)
    return rows


def _figure(ranks) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    FIGURES.mkdir(parents=True, exist_ok=True)
    names = list(ranks)
    cols = (len(names) + 1) // 2
    fig = Figure(figsize=(3 * cols, 5.6))
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        r = ranks[name]
        ax = fig.add_subplot(2, cols, i + 1)
        h = r.histogram()
        ax.bar(np.arange(len(h)), h, width=0.9)
        expected = h.sum() / len(h)
        ax.axhline(expected, color="k", lw=0.8)
        band = 2 * np.sqrt(expected * (1 - 1 / len(h)))
        ax.axhspan(expected - band, expected + band, color="0.85", zorder=0)
        ax.set_title(f"{name}\np {r.p_value:.2g}, 90% band covers {r.coverage_90:.2f}",
                     fontsize=8)
        ax.set_xticks([])
        ax.set_xlabel("rank of the truth (bins)", fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "ranks.png", dpi=90)


def _tag(folder: str, residual: int) -> str:
    """vae1+res112 (a residual prior) or vae1-rerun (the same VAE alone, re-run here)."""
    base = folder.replace("vae-beta", "vae")
    return f"{base}+res{residual}" if residual else f"{base}-rerun"


def stage_nuts(seeds=(0, 1, 2), names=None, residual: int = RESIDUAL) -> list[dict]:
    """NUTS on the Darcy case (coarse data), Tier B's settings, with the residual prior or,
    with ``residual=0``, the VAE alone (the baseline on the same trained VAE)."""
    rows = []
    for name, folder in RUNS.items():
        if names and name not in names:
            continue
        for seed in seeds:
            tag = _tag(folder, residual)
            out = ROOT / "tierB" / f"{tag}-coarse-nuts-s{seed}"
            t0 = time.perf_counter()
            r = invert(InverseConfig(run=str(ROOT / folder), residual=residual, kernel="nuts",
                                     chains=2, warmup=150, draws=250, truth_seed=seed,
                                     seed=seed, out=str(out)))
            s = r.summary
            print(f"{tag} seed {seed}: coverage_2sd {s.get('coverage_2sd')}, rel_l2 "
                  f"{s.get('rel_l2_mean')}, ESS/2000 {s.get('ess_bulk_min_per_2000')}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            rows.append({"folder": out.name, "prior": _prior_name(name, residual),
                         "data": "coarse", "sampler": "nuts", "seed": seed, **s})
    return rows


def _prior_name(name: str, residual: int) -> str:
    """Row names in the style of inverse_tierB.json's: vae+res112, vae-rerun."""
    base = name.replace(" ", "")
    return f"{base}+res{residual}" if residual else f"{base}-rerun"


def stage_tables(new_rows: list[dict]) -> None:
    path = RESULTS / "inverse_tierB.json"
    old = json.loads(path.read_text())
    keep = [r for r in old if r["folder"] not in {n["folder"] for n in new_rows}]
    path.write_text(json.dumps(keep + new_rows, indent=1) + "\n")


def collect() -> list[dict]:
    """This experiment's Tier B rows, from their chain folders."""
    rows = []
    for name, folder in RUNS.items():
        for residual in (RESIDUAL, 0):
            pattern = f"{_tag(folder, residual)}-coarse-nuts-s*"
            for chain in map(ChainFolder, sorted((ROOT / "tierB").glob(pattern))):
                if not chain.summary.is_file():
                    continue
                rows.append({"folder": chain.path.name, "prior": _prior_name(name, residual),
                             "data": "coarse", "sampler": "nuts",
                             "seed": int(chain.path.name.rsplit("-s", 1)[1]),
                             **chain.read_json(chain.summary)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("sbc", "nuts", "tables"), required=True)
    parser.add_argument("--prior", action="append", help="nuts: only these priors (by name)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--residual", type=int, default=RESIDUAL,
                        help="nuts: residual terms (0: the VAE alone, the baseline)")
    args = parser.parse_args()
    if args.stage == "sbc":
        stage_sbc()
    elif args.stage == "nuts":
        stage_nuts(tuple(int(s) for s in args.seeds.split(",")), args.prior, args.residual)
    else:
        stage_tables(collect())


if __name__ == "__main__":
    main()
