"""The sampler-efficiency protocol on targets with exact answers: gradient evaluations per chain
until the squared bias of the second moments, b^2 = mean_i (E_n[x_i^2] - E[x_i^2])^2 /
Var[x_i^2], averaged over the chains, stays below 0.01 (32 chains), beside NUTS's published
1,419 (10-D Gaussian) and 84,266 (Inference Gym's Banana).

    nice -n 10 python benchmarks/bench_protocol.py --target icg-10 --kernel mala
    nice -n 10 python benchmarks/bench_protocol.py --target banana --kernel nuts --chains 8

Costs per chain: post-warm-up gradient evaluations (MALA one per iteration, NUTS its leapfrog
steps; RWM has none and counts potential evaluations instead), with the warm-up's cost
reported beside it; each chain's b^2 is put on a common cost grid and averaged over chains.
Writes one JSON line per run to ``--out`` (appending).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from autovae.inverse.chains import run_chains
from autovae.inverse.targets import make_target, second_moment_bias

PUBLISHED = {"icg-10": {"nuts": 1419, "mclmc (unadjusted)": 266},
             "banana": {"nuts": 84266, "mclmc (unadjusted)": 5092}}


def costs(result, kernel: str):
    """Per chain: cumulative cost after each kept post-warm-up draw (chains, n), warm-up cost
    (chains,), and the cost's unit."""
    c, n = result.draws.shape[:2]
    if kernel == "nuts":
        return (np.cumsum(result.stats["n_steps"], 1).astype(float),
                result.warmup_stats["n_steps"].sum(1).astype(float), "gradients")
    per = np.ones((c, n))
    warm = np.full(c, float(result.config["warmup"]))
    return np.cumsum(per, 1), warm, "gradients" if kernel in ("mala",) else "evaluations"


def first_below(cost, b2, level=0.01):
    """The smallest cost after which the chains' mean b^2 stays below ``level`` (None if never),
    on a common grid of costs (each chain's b^2 held at its last value between draws)."""
    grid = np.linspace(cost[:, 0].max(), cost[:, -1].min(), 4000)
    mean = np.mean([b[np.searchsorted(c, grid, side="right") - 1]
                    for c, b in zip(cost, b2, strict=True)], 0)
    above = np.nonzero(mean >= level)[0]
    if len(above) == 0:
        return float(grid[0]), mean
    if above[-1] == len(grid) - 1:
        return None, mean
    return float(grid[above[-1] + 1]), mean


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="icg-10")
    ap.add_argument("--kernel", default="mala")
    ap.add_argument("--chains", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/protocol.jsonl")
    a = ap.parse_args()
    t = make_target(a.target)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        r = run_chains(t.target(), a.kernel, Path(d) / "c", chains=a.chains, warmup=a.warmup,
                       draws=a.draws, seed=a.seed)
    seconds = time.perf_counter() - t0
    cost, warm, unit = costs(r, a.kernel)
    b2 = second_moment_bias(r.draws, t)
    reached, mean = first_below(cost, b2)
    row = {"target": a.target, "kernel": a.kernel, "chains": a.chains, "warmup": a.warmup,
           "draws": a.draws, "seed": a.seed, "unit": unit,
           "cost_to_b2_below_0.01": reached, "warmup_cost_per_chain": float(warm.mean()),
           "final_mean_b2": float(mean[-1]), "max_cost_per_chain": float(cost[:, -1].min()),
           "published": PUBLISHED.get(a.target, {}), "seconds": round(seconds, 1),
           "note": "machine shared by 9 sessions on 2 cores: seconds are not comparable"}
    print(json.dumps(row))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
