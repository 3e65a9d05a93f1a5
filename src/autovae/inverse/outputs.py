"""What an inversion writes beside its chains: summary.json (diagnostics, costs, errors and
calibration against a truth or a reference posterior), posterior.nc (ArviZ) and pictures
(fields, traces, error bars, calibration, reference error), and the terminal summary.

Problem-specific pictures ask the forward model (``points``: observation points to mark;
``parameter_label`` and ``signed``: how its parameters are named and coloured), never its
type.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._files import atomic_path
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
    if result.draws.shape[1] == 0:
        return {**out, "draws": 0, "settings": cfg.to_dict()}
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
    out["settings"] = cfg.to_dict()
    return out


def reference_error(problem: InverseProblem, result: ChainResult, reference: dict[str, Any],
                    points: int = 20) -> dict[str, Any]:
    """The posterior mean's relative L2 error against a reference posterior mean, for the
    parameters and their logs, after all draws and against the solves spent per chain
    (``curve``: the running mean of every chain's first draws, at ``points`` counts).

    ``reference_rel_mcse`` is the reference's own Monte-Carlo error in the same norm: an
    error below it is not resolved."""
    with torch.no_grad():
        params = problem.params(torch.from_numpy(result.draws).reshape(-1, problem.dim))
    params = params.reshape(*result.draws.shape[:2], -1).numpy()
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
    z = torch.randn(2000, problem.dim, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    if not problem.prior.normal:
        return None
    mean, _, _ = problem.posterior_params(z)
    return problem.relative_l2(mean, torch.as_tensor(truth).reshape(mean.shape))


def write_outputs(cf: ChainFolder, problem: InverseProblem, result: ChainResult,
                   out: dict[str, Any], built: Built) -> None:
    if result.draws.shape[1] > 0:
        import arviz as az

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
        save_netcdf(idata, cf.posterior)
        _pictures(cf, problem, result, built.truth, out.get("reference"))
    cf.write_json(cf.summary, out)


def _as_image(t: torch.Tensor) -> torch.Tensor | None:
    """Parameters as a 2-D picture: a field as it is, a square count as a square."""
    t = t.reshape(-1) if t.ndim != 2 else t
    if t.ndim == 2:
        return t
    m = math.isqrt(t.numel())
    return t.reshape(m, m) if m * m == t.numel() else None


def _pictures(cf: ChainFolder, problem: InverseProblem, result: ChainResult, truth,
              reference: dict[str, Any] | None = None) -> None:
    """fields.png (parameters as images: truth, mean, sd, error), traces.png, error_bars.png,
    calibration.png (against a truth), reference_error.png (against a reference posterior)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name):
        with atomic_path(cf.path / name) as tmp:
            fig.savefig(tmp, dpi=80, format="png")

    mean, std, _ = problem.posterior_params(result.draws)
    label = problem.forward.parameter_label
    t = None if truth is None else torch.as_tensor(truth, dtype=torch.float64).reshape(mean.shape)
    images = [("posterior mean", mean), ("posterior sd", std)]
    if t is not None:
        images = [("truth", t)] + images + [("|mean - truth|", (mean - t).abs())]
    images = [(title, _as_image(v)) for title, v in images]
    if all(img is not None for _, img in images):
        pts = None if problem.forward.points is None else problem.forward.points.numpy()
        fig = Figure(figsize=(3.2 * len(images), 3.2))
        FigureCanvasAgg(fig)
        lim = max(float(img.abs().max()) for title, img in images
                  if title in ("truth", "posterior mean"))
        for i, (title, img) in enumerate(images):
            ax = fig.add_subplot(1, len(images), i + 1)
            signed = title in ("truth", "posterior mean") and problem.forward.signed
            im = ax.imshow(img.numpy(), origin="lower", extent=(0, 1, 0, 1),
                           cmap="RdBu_r" if signed else "viridis",
                           vmin=-lim if signed else None, vmax=lim if signed else None)
            if pts is not None:
                ax.scatter(pts[:, 0], pts[:, 1], s=4, c="k")
            ax.set_title(f"{title} ({label})", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        save(fig, "fields.png")

    draws = result.draws
    k = min(4, problem.dim)
    fig = Figure(figsize=(8, 1.6 * k))
    FigureCanvasAgg(fig)
    for j in range(k):
        ax = fig.add_subplot(k, 1, j + 1)
        for c in range(draws.shape[0]):
            ax.plot(draws[c, :, j], lw=0.5, label=f"chain {c}")
        ax.set_ylabel(f"z[{j}]")
    fig.axes[0].set_title(f"{result.kernel} traces after warm-up (acceptance "
                          f"{float(np.mean(result.acceptance)):.2f})", fontsize=9)
    fig.axes[-1].set_xlabel("kept draw")
    fig.tight_layout()
    save(fig, "traces.png")

    flat_mean, flat_sd = mean.reshape(-1), std.reshape(-1)
    if mean.ndim == 2:  # a field: cells on the diagonal
        n = mean.shape[0]
        cells = [int(i) * n + int(i) for i in np.linspace(0, n - 1, 8).round()]
        names = [f"({int(i)},{int(i)})" for i in np.linspace(0, n - 1, 8).round()]
    else:
        cells = list(np.linspace(0, flat_mean.numel() - 1, min(16, flat_mean.numel()))
                     .round().astype(int))
        names = [str(c) for c in cells]
    fig = Figure(figsize=(7, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(cells))
    ax.errorbar(x, [float(flat_mean[c]) for c in cells],
                yerr=[2 * float(flat_sd[c]) for c in cells], fmt="o", capsize=3,
                label="posterior mean +- 2 sd")
    if t is not None:
        ax.plot(x, [float(t.reshape(-1)[c]) for c in cells], "rx", label="truth")
    ax.set_xticks(x, names, fontsize=7)
    ax.set_xlabel("cell (row, column)" if mean.ndim == 2 else "parameter index")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "error_bars.png")

    if t is not None:
        levels, cover = problem.coverage_curve(result.draws, t)
        fig = Figure(figsize=(3.6, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
        ax.plot(levels, cover, "o-", ms=3, label="this posterior")
        ax.set_xlabel("nominal level of the central interval")
        ax.set_ylabel("fraction of parameters covered")
        ax.set_title("calibration against the truth", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, "calibration.png")

    if reference is not None and "curve" in reference:
        fig = Figure(figsize=(4.4, 3.4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        spent = [c["solves_per_chain"] for c in reference["curve"]]
        for key, name, colour in (("log_theta", "ln theta", "C0"), ("theta", "theta", "C1")):
            ax.loglog(spent, [c[f"rel_l2_mean_{key}"] for c in reference["curve"]], "o-",
                      ms=3, color=colour, label=f"{name}: this run")
            ax.axhline(reference[f"reference_rel_mcse_{key}"], color=colour, ls=":", lw=1,
                       label=f"{name}: the reference's own MC error")
        ax.set_xlabel("PDE solves per chain (warm-up included)")
        ax.set_ylabel("relative L2 error of the posterior mean")
        ax.set_title("against the reference posterior", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "reference_error.png")


def format_summary(s: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def f(key, fmt="{:.3g}"):
        v = s.get(key)
        return "n/a" if v is None else fmt.format(v)

    lines = [f"status {s['status']}" + (f": {s['reason']}" if s.get("reason") else "")]
    if s.get("draws"):
        lines += [
            f"{s.get('kernel')}: {s['chains']} chains x {s['draws']} draws, acceptance "
            f"{f('acceptance')}, R-hat max {f('rhat_max')}",
            f"ESS bulk min/median {f('ess_bulk_min')}/{f('ess_bulk_median')}, tail min "
            f"{f('ess_tail_min')}; per draw {f('ess_per_draw')}, per 1000 solves "
            f"{f('ess_per_1000_solves')}, per second {f('ess_per_second')}",
            f"{s.get('solves', 0):,} PDE solves (forward and adjoint) in "
            f"{f('seconds', '{:.1f}')} s",
        ]
        if s.get("note"):
            lines.append(s["note"])
        if s.get("rel_l2_mean") is not None:
            lines.append(f"relative L2 error of the posterior mean {f('rel_l2_mean')}, truth "
                         f"within 2 sd for {f('coverage_2sd', '{:.0%}')} of the parameters, "
                         f"NSSWR {f('nsswr')}")
        ref = s.get("reference")
        if ref:
            lines.append(
                f"posterior mean against the reference posterior: relative L2 error "
                f"{ref['rel_l2_mean_log_theta']:.3g} in ln theta (the reference's own MC error "
                f"{ref['reference_rel_mcse_log_theta']:.2g}), {ref['rel_l2_mean_theta']:.3g} "
                f"in theta (its own {ref['reference_rel_mcse_theta']:.2g})")
    return "\n".join(lines)
