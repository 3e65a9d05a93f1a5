"""Chain diagnostics by ArviZ: InferenceData, bulk/tail ESS, rank-normalised R-hat, a summary.

Draws are (chains, draws, d) under the posterior variable ``z`` (dimension ``z_dim``); per-draw
sampler statistics go to ``sample_stats`` under ArviZ's names (``acceptance_rate``, ``step_size``,
``lp``, ``diverging``, ``n_steps``, ``tree_depth``), warm-up to the ``warmup_*`` groups. Run facts
(kernel, seconds, evaluations and PDE solves, acceptance per chain) are attributes of ``posterior``,
so :func:`summary` works from a NetCDF file alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np

from .._files import atomic_path

__all__ = ["ess", "load_netcdf", "rhat", "save_netcdf", "summary", "to_inference_data"]

_STAT_NAMES = {"accept_prob": "acceptance_rate"}
_DROP = {"accepted"}  # per-draw accept flags are summarised by the acceptance counters


def _stats(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {_STAT_NAMES.get(k, k): np.asarray(v) for k, v in stats.items() if k not in _DROP}


def to_inference_data(source, stats: dict[str, np.ndarray] | None = None,
                      attrs: dict[str, Any] | None = None) -> az.InferenceData:
    """InferenceData from a :class:`~autovae.inverse.chains.ChainResult` or from draws
    (chains, draws, d) with optional per-draw ``stats`` name -> (chains, draws)."""
    if isinstance(source, az.InferenceData):
        return source
    if hasattr(source, "draws") and hasattr(source, "stats"):
        r = source
        kw: dict[str, Any] = {"sample_stats": _stats(r.stats) or None}
        if r.warmup_draws.shape[1] > 0:
            kw.update(warmup_posterior={"z": r.warmup_draws},
                      warmup_sample_stats=_stats(r.warmup_stats) or None, save_warmup=True)
        idata = az.from_dict(posterior={"z": r.draws}, dims={"z": ["z_dim"]}, **kw)
        facts = {"kernel": r.kernel, "status": r.status, "reason": r.reason,
                 "sampling_time": r.seconds, "warmup_time": r.warmup_seconds,
                 "sampling_only_time": r.sampling_seconds,
                 "potential_evals": r.potential_evals, "gradient_evals": r.gradient_evals,
                 "solves": r.solves,
                 "acceptance_per_chain": np.asarray(r.acceptance, dtype=float),
                 "step_size_per_chain": np.asarray(r.step_size, dtype=float),
                 "mean_accept_prob_per_chain": np.asarray(r.mean_accept_prob, dtype=float),
                 "chain_folder": str(r.folder)}
    else:
        draws = np.asarray(source, dtype=float)
        if draws.ndim != 3:
            raise ValueError(f"draws must have shape (chains, draws, d), got {draws.shape}")
        idata = az.from_dict(posterior={"z": draws}, dims={"z": ["z_dim"]},
                             sample_stats=_stats(stats) if stats else None)
        facts = {}
    facts.update(attrs or {})
    idata.posterior.attrs.update({k: v for k, v in facts.items() if v is not None})
    return idata


def ess(source, method: str = "bulk") -> np.ndarray:
    """Effective sample size per latent coordinate (``"bulk"`` or ``"tail"``), (d,)."""
    return np.asarray(az.ess(to_inference_data(source), var_names=["z"], method=method)["z"])


def rhat(source) -> np.ndarray:
    """Rank-normalised split R-hat per latent coordinate (Vehtari et al. 2021), (d,)."""
    return np.asarray(az.rhat(to_inference_data(source), var_names=["z"], method="rank")["z"])


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


RHAT_CONVERGED = 1.05


def summary(source) -> dict[str, Any]:
    """Diagnostics and costs of a chain run, in the units that compare kernels honestly.

    ESS (rank-normalised bulk and tail, min and median over parameters) per kept draw, per 1000
    PDE solves (forward and adjoint counted, warm-up included) and per second (warm-up
    included), from the smallest bulk ESS; ``rhat_max``; ``converged`` is R-hat <= 1.05, and a
    run that is not gets a ``note`` that its ESS is a floor, not a measurement."""
    idata = to_inference_data(source)
    post = idata.posterior
    chains, draws, dim = post["z"].shape
    bulk, tail, rh = ess(idata, "bulk"), ess(idata, "tail"), rhat(idata)
    a = post.attrs
    out: dict[str, Any] = {
        "kernel": a.get("kernel", a.get("sampler")), "status": a.get("status", "complete"),
        "reason": a.get("reason", ""), "chains": int(chains), "draws": int(draws),
        "dim": int(dim),
        "ess_bulk_min": _num(bulk.min()), "ess_bulk_median": _num(np.median(bulk)),
        "ess_tail_min": _num(tail.min()), "ess_tail_median": _num(np.median(tail)),
        "rhat_max": _num(rh.max()),
    }
    total = int(chains * draws)
    out["ess_per_draw"] = _num(bulk.min() / total) if total else None
    out["converged"] = bool(out["rhat_max"] is not None and out["rhat_max"] <= RHAT_CONVERGED)
    if out["rhat_max"] is None:  # one chain, or too few draws: R-hat is undefined
        out["note"] = ("R-hat undefined (one chain or too few draws): convergence unchecked; "
                       "run 2 or more chains")
    elif not out["converged"]:
        out["note"] = (f"not converged (R-hat {out['rhat_max']:.3g} > {RHAT_CONVERGED}): ESS is a "
                       "floor, not a measurement; run longer")
    acc = a.get("acceptance_per_chain")
    if acc is not None:
        acc = np.atleast_1d(np.asarray(acc, dtype=float))
        out["acceptance"] = _num(acc.mean())
        out["acceptance_per_chain"] = [float(x) for x in acc]
    map_ = a.get("mean_accept_prob_per_chain")
    if map_ is not None:
        out["mean_accept_prob"] = _num(np.mean(map_))
    elif "sample_stats" in idata.groups() and "acceptance_rate" in idata.sample_stats:
        out["mean_accept_prob"] = _num(idata.sample_stats["acceptance_rate"].mean())
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        out["divergences"] = int(idata.sample_stats["diverging"].sum())
    seconds, evals = a.get("sampling_time"), a.get("potential_evals")
    if seconds is not None:
        out["seconds"] = float(seconds)
        out["warmup_seconds"] = float(a.get("warmup_time", 0.0))
        out["ess_per_second"] = _num(bulk.min() / seconds) if seconds > 0 else None
    if evals is not None:
        out["potential_evals"] = int(evals)
        out["gradient_evals"] = int(a.get("gradient_evals", 0))
        solves = int(a.get("solves", evals))
        out["solves"] = solves
        out["ess_per_1000_solves"] = _num(1000 * bulk.min() / solves) if solves > 0 else None
        out["solves_per_second"] = _num(solves / seconds) if seconds else None
    return out


def save_netcdf(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to NetCDF (h5netcdf) atomically: a temp file, fsync, then rename."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    return Path(path)


def load_netcdf(path: str | os.PathLike) -> az.InferenceData:
    """Read an InferenceData NetCDF file written by :func:`save_netcdf` (or any ArviZ tool)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no InferenceData file at {path}")
    return az.from_netcdf(str(path), engine="h5netcdf")
