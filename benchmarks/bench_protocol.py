"""The sampler-efficiency protocol on targets with exact answers: gradient evaluations per chain
until the squared bias of the second moments stays below 0.01, beside the published NUTS and
unadjusted MCLMC costs.

    nice -n 5 python benchmarks/bench_protocol.py --target gaussian-10 --kernel chees --seeds 0 1 2
    nice -n 5 python benchmarks/bench_protocol.py --target banana --kernel nuts --opt full_mass=true

The published figures (reubenharry/sampler-benchmarks, README of January 2025, commit 637f0bb:
NUTS 1,419.3 and 84,265.6, MCLMC 266 and 5,092) come from ``evaluate_sampler`` there, and this
script counts the same way:

* each chain's E_n[x_i^2] is the running mean over its own post-warm-up draws, and its
  b^2(n) = mean_i (E_n[x_i^2] - E[x_i^2])^2 / Var[x_i^2] (the "avg" statistic; the "max" over
  coordinates is reported beside it);
* the 32 chains are combined by the **median** of their b^2 at each iteration (not pooled, not
  averaged);
* the cost is (the last iteration at which that median is >= 0.01) + 1, times the gradients
  per iteration averaged over chains and iterations (NUTS and ChEES: leapfrog steps; MALA: 1);
  warm-up is **not** counted there (it is reported beside it, and a "with warm-up" figure);
* the chains start at x = (1, ..., 1) (``--init ones``); upstream's NUTS warms up for 2,000
  iterations (Blackjax window adaptation, diagonal mass matrix) and then samples 50,000.
  Upstream's 10-D Gaussian is the identity-covariance ``Gaussian(ndims=10)`` (our
  ``gaussian-10``); ``icg-10`` (condition number 100) is a harder instance without a
  published cost.

Gradient-free kernels (rwm) count potential evaluations instead. Kernel options as a user gives
them (``--opt key=value``, the flags of ``autovae invert``). One JSON line per run (per-seed
figures and their median) is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autovae.inverse.chains import run_chains
from autovae.inverse.kernels import make_kernel
from autovae.inverse.targets import make_target, protocol_bias, protocol_crossing

PUBLISHED = {"gaussian-10": {"nuts": 1419.3, "mclmc (unadjusted)": 266},
             "banana": {"nuts": 84265.6, "mclmc (unadjusted)": 5092}}
LEVEL = 0.01


def per_iteration_cost(result) -> tuple[float, float, str]:
    """Mean gradients (potential evaluations for a gradient-free kernel) per post-warm-up
    iteration over chains and iterations, the warm-up's mean total per chain, and the unit."""
    kernel = result.config["kernel"]
    steps = result.stats.get("n_steps")
    if steps is not None:
        warm = result.warmup_stats.get("n_steps")
        return (float(np.mean(steps)), float(warm.sum(1).mean()) if warm is not None else 0.0,
                "gradients")
    unit = "evaluations" if kernel in ("rwm", "pcn") else "gradients"
    return 1.0, float(result.config["warmup"]), unit


def measure(target_name, kernel, options, chains, warmup, draws, seed, init):
    t = make_target(target_name)
    z0 = (torch.ones(chains, t.dim, dtype=torch.float64) if init == "ones" else None)
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as d:
        r = run_chains(t.target(), make_kernel(kernel, **options), Path(d) / "c", chains=chains,
                       warmup=warmup, draws=draws, seed=seed, init=z0,
                       checkpoint_every=max(draws + warmup, 1))
    cpu = time.process_time() - t0
    per, warm, unit = per_iteration_cost(r)
    curves = protocol_bias(r.draws, t)
    out = {"seed": seed, "status": r.status, "cost_per_iteration": round(per, 3),
           "warmup_cost": warm, "cpu_seconds": round(cpu, 1)}
    for stat, curve in curves.items():
        n = protocol_crossing(curve, LEVEL)
        out[f"cost_{stat}"] = None if n is None else round(n * per, 1)
        out[f"final_b2_{stat}"] = float(curve[-1])
    out["cost_avg_with_warmup"] = None if out["cost_avg"] is None else \
        round(out["cost_avg"] + warm, 1)
    return out, unit


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="gaussian-10")
    ap.add_argument("--kernel", default="mala")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a kernel option, e.g. full_mass=true (repeatable)")
    ap.add_argument("--chains", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=5000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--init", choices=("ones", "normal"), default="ones",
                    help="start points: upstream's x = 1, or z ~ N(0, I) from the seed")
    ap.add_argument("--out", default="docs/results/sampler_protocol.jsonl")
    a = ap.parse_args()
    options = {}
    for item in a.opt:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--opt {item!r}: give KEY=VALUE")
        options[key.replace("-", "_")] = _value(value)
    runs, unit = [], "gradients"
    for seed in a.seeds:
        row, unit = measure(a.target, a.kernel, options, a.chains, a.warmup, a.draws, seed,
                            a.init)
        runs.append(row)
        print(json.dumps(row), flush=True)

    def median(key):
        vals = [r[key] for r in runs]
        if any(v is None for v in vals):  # an unreached seed counts as infinite
            vals = [np.inf if v is None else v for v in vals]
        m = float(np.median(vals))
        return None if not np.isfinite(m) else round(m, 1)

    row = {"target": a.target, "kernel": a.kernel, "options": options, "chains": a.chains,
           "warmup": a.warmup, "draws": a.draws, "init": a.init, "unit": unit,
           "median_cost_avg": median("cost_avg"), "median_cost_max": median("cost_max"),
           "median_cost_avg_with_warmup": median("cost_avg_with_warmup"),
           "reached": sum(r["cost_avg"] is not None for r in runs), "runs": runs,
           "published": PUBLISHED.get(a.target, {}),
           "load_average": round(os.getloadavg()[0], 2)}
    print(json.dumps(row))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
