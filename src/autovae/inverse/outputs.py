"""What an inversion writes beside its chains: summary.json (diagnostics, costs, errors and
calibration against a truth or a reference posterior, the settings the problem reads, an ArviZ
table of the first and worst parameters), posterior.nc (ArviZ) and pictures
(:mod:`autovae.inverse.figures`), and the terminal summary.

Problem-specific pictures ask the forward model (``points``: observation points to mark;
``parameter_label``, ``signed`` and ``positive``: how its parameters are named, coloured and
scaled), never its type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .chains import ChainFolder, ChainResult
from .config import InverseConfig
from .diagnostics import save_netcdf, summary
from .problem import InverseProblem
from .problems import Built

__all__ = ["format_summary", "reference_error", "summarise", "write_outputs"]


def summarise(problem: InverseProblem, result: ChainResult, built: Built,
              cfg: InverseConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"status": result.status, "reason": result.reason,
                           "problem": cfg.problem}
    settings = read_settings(cfg)
    if result.draws.shape[1] == 0:
        return {**out, "draws": 0, "settings": settings}
    out.update(summary(result))
    total = result.draws.shape[0] * result.draws.shape[1]
    for key in ("ess_bulk_min", "ess_bulk_median", "ess_tail_min"):
        if out.get(key) is not None:
            out[f"{key}_per_2000"] = out[key] * 2000 / total
    out.update(problem.metrics(result.draws, built.truth, built.truth_observations))
    if built.truth is not None:
        out["rel_l2_prior_mean"] = _prior_mean_error(problem, built.truth)
    if built.reference is not None:
        out["reference"] = reference_error(problem, result, built.reference)
    out["parameters"] = _parameters(problem, result, built.truth)
    out["settings"] = settings
    return out


def read_settings(cfg: InverseConfig) -> dict[str, Any]:
    """The settings the problem reads (:data:`~autovae.inverse.problems.COMMON` and its
    ``reads``): another problem's (Darcy's grid, points, ...) are not this run's."""
    from .problems import COMMON, PROBLEMS

    reads = COMMON | PROBLEMS[cfg.problem].reads
    return {k: v for k, v in cfg.to_dict().items() if k in reads}


def _parameter_draws(problem: InverseProblem, draws: np.ndarray, log: bool,
                     batch: int = 512) -> np.ndarray:
    """The parameters of every draw (chains, draws, n), in their logs with ``log``."""
    z = torch.from_numpy(np.ascontiguousarray(draws)).reshape(-1, problem.dim)
    with torch.no_grad():
        p = torch.cat([problem.params(z[i:i + batch]) for i in range(0, len(z), batch)])
    p = p.reshape(len(z), -1)
    return (p.log() if log else p).reshape(*draws.shape[:2], -1).numpy()


def _parameters(problem: InverseProblem, result: ChainResult, truth) -> dict[str, Any]:
    """The ArviZ table of the first and worst parameters in the problem's scale (ln theta for
    positive parameters), with the truth beside them where known."""
    from .figures import index_names, scale_of
    from .report import parameter_table

    scale = scale_of(problem)
    values = _parameter_draws(problem, result.draws, scale.log)
    t = None
    if truth is not None:
        t = torch.as_tensor(truth, dtype=torch.float64).reshape(-1)
        t = (t.log() if scale.log else t).numpy()
    shape = tuple(problem.prior.param_shape)
    names = index_names(shape, range(values.shape[-1]))
    return parameter_table(values, scale.label, t, names)


def reference_error(problem: InverseProblem, result: ChainResult, reference: dict[str, Any],
                    points: int = 20) -> dict[str, Any]:
    """The posterior mean's relative L2 error against a reference posterior mean, for the
    parameters and their logs, after all draws and against the solves spent per chain
    (``curve``: the running mean of every chain's first draws, at ``points`` counts).

    ``reference_rel_mcse`` is the reference's own Monte-Carlo error in the same norm: an
    error below it is not resolved."""
    params = _parameter_draws(problem, result.draws, log=False)
    n_chains, n = params.shape[:2]
    ref = {k: np.asarray(reference[k]["mean"]) for k in ("theta", "log_theta")}

    def errors(prefix: int) -> dict[str, float]:
        x = params[:, :prefix]
        means = {"theta": x.mean((0, 1)), "log_theta": np.log(x).mean((0, 1))}
        return {f"rel_l2_mean_{k}": float(np.linalg.norm(means[k] - ref[k])
                                          / np.linalg.norm(ref[k])) for k in ref}

    out: dict[str, Any] = {"source": reference["source"], **errors(n)}
    for k in ref:
        out[f"reference_rel_mcse_{k}"] = float(np.linalg.norm(reference[k]["mcse"])
                                               / np.linalg.norm(ref[k]))
    spent = result.stats.get("solves")
    if spent is not None and spent.shape[1] == n:
        counts = np.unique(np.geomspace(min(10, n), n, points).astype(int))
        out["curve"] = [{"draws_per_chain": int(c),
                         "solves_per_chain": float(spent[0, c - 1]) / n_chains, **errors(c)}
                        for c in counts]
    return out


def _prior_mean_error(problem: InverseProblem, truth) -> float | None:
    """Relative L2 error of the prior mean (a chain's error means something next to it)."""
    if not problem.prior.normal:
        return None
    z = torch.randn(2000, problem.dim, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    mean, _, _ = problem.posterior_params(z)
    return problem.relative_l2(mean, torch.as_tensor(truth).reshape(mean.shape))


# posterior.nc keeps every draw's parameters (``params``) up to this many values (8 bytes each)
PARAMS_IN_NETCDF = 4_000_000


def write_outputs(cf: ChainFolder, problem: InverseProblem, result: ChainResult,
                  out: dict[str, Any], built: Built,
                  error_bars: list[int] | None = None) -> None:
    """posterior.nc (the draws z and, when not too large, the parameters ``params`` as the
    forward model takes them: theta, not ln theta), the pictures
    (:func:`~autovae.inverse.figures.draw_pictures`) and summary.json."""
    if result.draws.shape[1] > 0:
        import arviz as az

        from .figures import draw_pictures

        idata = result.to_inference_data()
        const = {"sigma": problem.sigma.numpy()}
        dims = {"y": ["obs"], "sigma": ["obs"]}
        if built.truth is not None:
            const["truth"] = torch.as_tensor(built.truth).reshape(-1).numpy()
            dims["truth"] = ["param"]
        points = getattr(problem.forward, "points", None)
        if points is not None:
            const["points"] = points.numpy()
            dims["points"] = ["obs", "xy"]
        idata.extend(az.from_dict(observed_data={"y": problem.data.numpy()},
                                  constant_data=const, dims=dims))
        n_params = int(np.prod(problem.prior.param_shape))
        if result.draws.shape[0] * result.draws.shape[1] * n_params <= PARAMS_IN_NETCDF:
            params = _parameter_draws(problem, result.draws, log=False)
            idata.posterior["params"] = (("chain", "draw", "param"), params)
            idata.posterior.attrs["params"] = (
                f"the forward model's parameters ({problem.forward.parameter_label}) of each "
                "draw, flattened row-major")
        save_netcdf(idata, cf.posterior)
        draw_pictures(cf.path, problem, result, built.truth, out.get("reference"),
                      error_bars=error_bars)
    cf.write_json(cf.summary, out)


def format_summary(s: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def f(key, fmt="{:.3g}"):
        v = s.get(key)
        return "n/a" if v is None else fmt.format(v)

    lines = [f"status {s['status']}" + (f": {s['reason']}" if s.get("reason") else "")]
    if s.get("draws"):
        lines += [
            f"{s.get('kernel')}: {s['chains']} chains x {s['draws']} draws, mean acceptance "
            f"probability {f('mean_accept_prob', '{:.2f}')}, R-hat max {f('rhat_max')}"
            + (f", {s['divergences']} divergences" if s.get("divergences") else ""),
            f"ESS bulk min/median {f('ess_bulk_min')}/{f('ess_bulk_median')}, tail min "
            f"{f('ess_tail_min')}; per draw {f('ess_per_draw')}, per 1000 solves "
            f"{f('ess_per_1000_solves')}, per second {f('ess_per_second')}",
            f"{s.get('solves', 0):,} PDE solves (forward and adjoint) in "
            f"{f('seconds', '{:.1f}')} s",
        ]
        if s.get("fine_solves") is not None:  # delayed acceptance
            lines.append(
                f"delayed acceptance: {s['fine_solves']:,} fine solves (ESS per 1000 "
                f"{f('ess_per_1000_fine_solves')}), {s.get('coarse_solves', 0):,} cheap solves, "
                f"{s.get('cheap_fallbacks', 0):,} cheap fallbacks (points where the cheap "
                "model failed, valued by the fine model)")
        if s.get("note"):
            lines.append(s["note"])
        log = s.get("log_rel_l2_mean") is not None  # positive parameters: read in their logs
        if s.get("rel_l2_mean") is not None:
            pre, scale = ("log_", " in ln θ") if log else ("", "")
            lines.append(f"relative L2 error of the posterior mean{scale} "
                         f"{f(pre + 'rel_l2_mean')}, truth within 2 sd for "
                         f"{f(pre + 'coverage_2sd', '{:.0%}')} of the parameters, NSSWR "
                         f"{f('nsswr')}")
        ref = s.get("reference")
        if ref:
            lines.append(
                f"posterior mean against the reference posterior: relative L2 error "
                f"{ref['rel_l2_mean_log_theta']:.3g} in ln θ (the reference's own MC error "
                f"{ref['reference_rel_mcse_log_theta']:.2g}), {ref['rel_l2_mean_theta']:.3g} "
                f"in θ (its own {ref['reference_rel_mcse_theta']:.2g})")
    return "\n".join(lines)
