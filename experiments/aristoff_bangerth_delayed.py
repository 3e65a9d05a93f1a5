"""Delayed acceptance on Aristoff-Bangerth: the table of docs/inverse.md from chain folders.

Each folder is an ``autovae invert --problem aristoff-bangerth --prior lognormal --subchain J
...`` run; its summary.json gives fine and cheap solves, R-hat, ESS per 1000 fine solves and
the error of the ln theta mean against the packaged reference. Beside it, whether that error
is what Monte Carlo error explains: the rms over the 64 parameters of (mean - reference) /
sqrt(mcse^2 + reference mcse^2), about 1 without bias.

    python experiments/aristoff_bangerth_delayed.py FOLDER... [--json docs/results/X.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def row(folder: Path) -> dict:
    import arviz as az

    from autovae.inverse.aristoff_bangerth import reference_posterior

    s = json.loads((folder / "summary.json").read_text())
    chain = json.loads((folder / "chain.json").read_text())["settings"]
    ref = reference_posterior()["log_theta"]
    idata = az.from_netcdf(folder / "posterior.nc")
    z = np.asarray(idata.posterior["z"])  # (chains, draws, 64); ln theta = 4 + 2 z
    lt = 4.0 + 2.0 * z
    mcse = np.asarray(az.mcse(az.convert_to_dataset(lt), method="mean")["x"])
    mean, rmean, rmcse = lt.reshape(-1, lt.shape[-1]).mean(0), np.asarray(ref["mean"]), \
        np.asarray(ref["mcse"])
    zscore = (mean - rmean) / np.sqrt(mcse ** 2 + rmcse ** 2)
    keys = ("fine_solves", "setup_fine_solves", "coarse_solves", "fine_acceptance_of_moved",
            "rhat_max", "ess_bulk_min", "ess_per_1000_fine_solves", "seconds",
            "surrogate_kind", "surrogate_heldout_rmse")
    return {"run": folder.name, "kernel": chain["kernel"], "chains": chain["chains"],
            "warmup": chain["warmup"], "draws": chain["draws"], "seed": chain["seed"],
            **{k: s[k] for k in keys if k in s},
            "rel_l2_mean_log_theta": s["reference"]["rel_l2_mean_log_theta"],
            "fine_solves_per_chain": s["fine_solves"] / chain["chains"],
            "rel_l2_own_mcse_log_theta": float(np.linalg.norm(mcse) / np.linalg.norm(rmean)),
            "rms_zscore_vs_reference": float(np.sqrt((zscore ** 2).mean()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    rows = [row(f) for f in args.folders]
    for r in rows:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
