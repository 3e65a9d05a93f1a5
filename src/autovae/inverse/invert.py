"""``autovae invert``: infer a Darcy log-permeability field in a trained run's latent space.

:func:`invert` builds the benchmark problem of spec section 3.2 (pressure observations at a
regular grid of interior points, 5% relative noise, a GRF truth drawn at the inference grid or
on a finer one), samples the latent posterior with pCN, RWM or NUTS into a resumable chain
folder and writes there::

    problem.json     the problem's settings (a re-run must ask for the same problem)
    chain.json, state.pt, blocks/    the chains (:func:`autovae.inverse.mcmc.run_chains`)
    posterior.nc     ArviZ InferenceData: posterior z, sample stats, observed data, truth
    summary.json     acceptance, ESS, R-hat, ESS/s, ESS per solve, NSSWR, errors, settings
    fields.png, traces.png, error_bars.png

The truth for ``truth_seed`` s is ``sample_grf(1, R, seed=100_000 + s)`` (the same prior as
the ``darcy-grf`` datasets, which use seed 0), the noise draws come from seed s. A truth on a
finer grid R = m n is solved there and compared with the inference grid through its block
means (the arithmetic mean of log k over m x m cells).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_write
from .darcy import darcy_pressure
from .diagnostics import save_netcdf, summary
from .grf import sample_grf
from .mcmc import ChainResult, make_kernel, run_chains
from .problem import InverseProblem, KLDecoder, RunDecoder, run_prior

__all__ = ["InversionResult", "darcy_forward", "format_summary", "invert", "regular_points",
           "truth_field"]

TRUTH_SEED_OFFSET = 100_000
PICTURES = ("fields.png", "traces.png", "error_bars.png")


def regular_points(count: int) -> torch.Tensor:
    """(m^2, 2) interior points ((k + 1/2) / m) of a regular m x m grid, count = m^2 (64: the
    benchmark's 8 x 8 at 1/16, 3/16, ..., 15/16)."""
    m = math.isqrt(count) if isinstance(count, int) and count > 0 else 0
    if m * m != count or m < 1:
        raise ValueError(f"--points {count!r} is not a square number of observation points; give "
                         "m*m (e.g. 64 = 8x8) or a file of (x, y) rows")
    c = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], 1)


def _read_array(path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist; give a .npy or text file")
    try:
        arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=1)
    except ValueError as err:
        raise ValueError(f"{what} file {path} is not a numeric .npy or comma-separated text "
                         f"file ({err})") from None
    return np.asarray(arr, dtype=np.float64)


def darcy_forward(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """:func:`darcy_pressure` for the sampler: a field whose solve fails gets NaN pressures (the
    chain then stops with that reason and keeps its draws) instead of aborting the batch."""
    try:
        return darcy_pressure(field, points)
    except ValueError:
        if field.shape[0] == 1:
            return torch.full((1, points.shape[0]), math.nan, dtype=field.dtype)
    return torch.cat([darcy_forward(f[None], points) for f in field])


def truth_field(n: int, truth_seed: int = 0, resolution: int | None = None,
                truth_file=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fine truth (R, R), its block means on the inference grid (n, n)), float64 log k."""
    if truth_file is not None:
        fine = torch.from_numpy(_read_array(truth_file, "truth"))
        if fine.ndim != 2 or fine.shape[0] != fine.shape[1]:
            raise ValueError(f"the truth file holds shape {tuple(fine.shape)}; it must be one "
                             "square log-permeability field (R, R)")
        if not torch.isfinite(fine).all():
            raise ValueError("the truth file's log-permeability holds NaN or infinite values: "
                             "the permeability must be positive and finite; fix the field")
    else:
        r = n if resolution is None else resolution
        if not isinstance(r, int) or r < 2:
            raise ValueError(f"--truth-resolution must be an integer >= 2, got {r!r}")
        fine = sample_grf(1, r, seed=TRUTH_SEED_OFFSET + int(truth_seed))[0].double()
    r = fine.shape[0]
    if r % n:
        raise ValueError(f"the truth is on a {r}x{r} grid but the decoder's fields are {n}x{n}; "
                         f"use a truth resolution that is a multiple of {n} (e.g. {4 * n})")
    m = r // n
    coarse = fine.reshape(n, m, n, m).mean((1, 3))
    return fine, coarse


def _observe(fine: torch.Tensor, points: torch.Tensor, noise: float, noise_kind: str,
             seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy data, sigma, noise-free pressures) of the truth at the points."""
    try:
        p_true = darcy_pressure(fine[None], points)[0]
    except ValueError as err:
        raise ValueError(f"the Darcy solve of the truth failed: {err}") from None
    if noise_kind == "relative":
        sigma = noise * p_true.abs()
        if (sigma <= 0).any():
            raise ValueError("the truth's pressure is 0 at some observation points (on x = 0 or "
                             "x = 1), where relative noise has sigma = 0; move those points "
                             "inside or use --noise-kind absolute")
    else:
        sigma = torch.full_like(p_true, noise)
    eps = torch.randn(p_true.shape, generator=torch.Generator().manual_seed(int(seed)),
                      dtype=torch.float64)
    return p_true + sigma * eps, sigma, p_true


class InversionResult:
    """What :func:`invert` made: the problem, the chains, the summary and the folder."""

    def __init__(self, folder: Path, problem: InverseProblem, chains: ChainResult,
                 summary: dict[str, Any], new_evals: int):
        self.folder, self.problem, self.chains = folder, problem, chains
        self.summary, self.new_evals = summary, new_evals

    def __repr__(self) -> str:
        return f"InversionResult({str(self.folder)!r}, status={self.chains.status!r})"


def _load_run(run, device):
    from ..run import load_trained

    if run is None:
        raise ValueError("give a run folder (the VAE prior), or --prior kl with --grid and --dim")
    _, config, model, _ = load_trained(Path(run), device or "cpu")
    return config, model.cpu()


def invert(run=None, *, prior: str = "run", grid: int | None = None, dim: int | None = None,
           points=64, data_file=None, noise: float = 0.05, noise_kind: str = "relative",
           truth_seed: int = 0, truth_resolution: int | None = None, truth_file=None,
           sampler: str = "pcn", chains: int = 4, warmup: int = 1000, samples: int = 2000,
           seed: int = 0, thin: int = 1, step_size: float | None = None,
           target_accept: float | None = None, out=None, checkpoint_every: int = 100,
           device: str | None = None, kl_length_scale=(0.1, 0.5)) -> InversionResult:
    """Run (or resume) one inversion into ``out`` (default RUN/invert-SAMPLER-SEED, with
    ``-kl`` for the Karhunen-Loeve prior) and return its :class:`InversionResult`.

    ``prior``: ``"run"`` (the run's decoder and latent prior) or ``"kl"`` (:class:`KLDecoder`
    of the GRF with the run's grid and latent dimension, or ``grid`` and ``dim`` without a run).
    ``points``: a square count (regular interior grid) or a file of (x, y) rows. ``data_file``:
    observations (P,) instead of a synthetic truth (then ``truth_file`` is only for metrics).
    ``noise``: relative (a fraction of |p|) or absolute standard deviation.
    """
    if prior not in ("run", "kl"):
        raise ValueError(f"--prior must be 'run' or 'kl', got {prior!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
        raise ValueError(f"--noise must be a positive number (e.g. 0.05 for 5%), got {noise!r}")
    if noise_kind not in ("relative", "absolute"):
        raise ValueError(f"--noise-kind must be relative or absolute, got {noise_kind!r}")
    # the prior
    if prior == "run":
        _, model = _load_run(run, device)
        decoder = RunDecoder(model)
        latent_prior, n, d = run_prior(decoder.model.latent), decoder.n, decoder.latent_dim
        prior_text = str(model.latent)
    else:
        if run is not None:
            _, model = _load_run(run, device)
            shape = tuple(model.likelihood.event_shape)
            n = grid or shape[-1]
            d = dim or model.latent.dim
        elif grid is None or dim is None:
            raise ValueError("--prior kl without a run folder needs --grid and --dim")
        else:
            n, d = grid, dim
        decoder = KLDecoder(int(n), int(d), length_scale=kl_length_scale)
        latent_prior, prior_text = "normal", f"Karhunen-Loeve {d} terms ({decoder.energy:.3f} " \
                                             "of the variance)"
    # points, truth, data
    if isinstance(points, str) and points.isdigit():
        points = int(points)
    pts = regular_points(points) if isinstance(points, int) else torch.from_numpy(
        _read_array(points, "points"))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"observation points must be (P, 2) rows of (x, y), got shape "
                         f"{tuple(pts.shape)}")
    bad = ~(torch.isfinite(pts).all(1) & (pts >= 0).all(1) & (pts <= 1).all(1))
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"observation point {row} {pts[row].tolist()} lies outside the domain "
                         f"[0, 1]^2 ({int(bad.sum())} such points); give points in the unit "
                         "square")
    truth_fine = truth = p_true = None
    if data_file is None or truth_file is not None:
        truth_fine, truth = truth_field(n, truth_seed, truth_resolution, truth_file)
    if data_file is not None:
        data = torch.from_numpy(_read_array(data_file, "data")).reshape(-1)
        if data.shape[0] != pts.shape[0]:
            raise ValueError(f"the data file has {data.shape[0]} observations but there are "
                             f"{pts.shape[0]} observation points; give one value per point")
        problem = InverseProblem(decoder, darcy_forward, pts, data, noise, noise_kind,
                                 latent_prior, d, (n, n))
        sigma = problem.sigma
    else:
        data, sigma, p_true = _observe(truth_fine, pts, noise, noise_kind, truth_seed)
        problem = InverseProblem(decoder, darcy_forward, pts, data, sigma, "absolute",
                                 latent_prior, d, (n, n))
    # sampler and folder
    if sampler == "pcn" and latent_prior != "normal":
        raise ValueError(f"the run's latent prior ({prior_text}) is not N(0, I), which pCN "
                         "needs; use --sampler rwm or --sampler nuts (they use the run's "
                         "log p(z)), or --prior kl")
    options = {}
    if step_size is not None:
        options["beta" if sampler == "pcn" else "step_size"] = step_size
    if target_accept is not None:
        options["target_accept"] = target_accept
    kernel = make_kernel(sampler, **options)
    if out is None:
        if run is None:
            raise ValueError("--out is needed without a run folder")
        out = Path(run) / f"invert-{'kl-' if prior == 'kl' else ''}{sampler}-{seed}"
    folder = Path(out)
    settings = {"run": None if run is None else str(run), "prior": prior,
                "prior_description": prior_text, "grid": n, "dim": d,
                "points": pts.tolist(), "data_file": None if data_file is None else
                str(data_file), "noise": noise, "noise_kind": noise_kind,
                "truth_seed": truth_seed, "truth_resolution": None if truth_fine is None else
                int(truth_fine.shape[0]), "truth_file": None if truth_file is None else
                str(truth_file)}
    _check_problem(folder, settings, _decoder_probe(decoder, d))
    target = problem.target()
    result = run_chains(target, kernel, folder, chains, warmup, samples, seed, thin,
                        checkpoint_every)
    out_summary = _summarise(problem, result, truth, truth_fine, p_true, settings)
    _write_outputs(folder, problem, result, out_summary, truth, sigma)
    return InversionResult(folder, problem, result, out_summary, target.evals)


def _decoder_probe(decoder, dim: int) -> list[list[float]]:
    """16 values of the fields decoded at three fixed codes: a chain's draws mean these fields."""
    z = torch.randn(3, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        fields = decoder(z).reshape(3, -1).double()
    return fields[:, :: max(1, fields.shape[1] // 16)][:, :16].tolist()


def _check_problem(folder: Path, settings: dict[str, Any], probe: list) -> None:
    """Create the folder's problem.json, or check that it holds the same problem and that the
    prior still decodes a code to the same field (a retrained run would silently change what
    the stored draws mean)."""
    path = folder / "problem.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old_probe = old.pop("decoder_probe", None)
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(f"{folder} holds an inversion of another problem (differs in "
                             f"{', '.join(diff)}); ask for the same problem or use another --out")
        if old_probe is not None and not np.allclose(old_probe, probe, rtol=1e-6, atol=1e-6):
            raise ValueError(f"{folder} holds a chain whose prior decoded its codes to other "
                             "fields (the run was retrained or changed since): its draws would "
                             "mean other fields; use another --out")
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(path, {**settings, "decoder_probe": probe})


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _summarise(problem: InverseProblem, result: ChainResult, truth, truth_fine, p_true,
               settings: dict[str, Any], metric_draws: int = 400) -> dict[str, Any]:
    out: dict[str, Any] = {"status": result.status, "reason": result.reason}
    draws = result.draws
    if draws.shape[1] == 0:
        return {**out, "draws": 0, "settings": _settings_out(settings, result)}
    out.update(summary(result))
    total = draws.shape[0] * draws.shape[1]
    for key in ("ess_bulk_min", "ess_bulk_median", "ess_tail_min"):
        if out.get(key) is not None:
            out[f"{key}_per_2000"] = out[key] * 2000 / total
    z = torch.from_numpy(draws.reshape(-1, problem.dim))
    mean, std = problem.posterior_fields(z)
    pick = z[np.linspace(0, len(z) - 1, min(metric_draws, len(z))).round().astype(int)]
    with torch.no_grad():
        pred = problem.predict(pick)
        wssr = problem.weighted_ssr(pred)
        out["weighted_ssr_mean"] = _num(wssr.mean())
        out["ssr_obs_mean"] = _num(((problem.data - pred) ** 2).sum(-1).mean())
        out["misfit_draws"] = len(pick)
        if truth is not None:
            ref = problem.weighted_ssr(darcy_forward(truth_fine[None], problem.points))
            out["nsswr"] = _num((wssr / ref).mean())
            out["weighted_ssr_truth"] = _num(ref[0])
            out["rel_l2_mean"] = problem.relative_l2(mean, truth)
            out["rel_l2_prior_mean"] = problem.relative_l2(torch.zeros_like(truth), truth)
            out["rmse_mean"] = _num(((mean - truth) ** 2).mean().sqrt())
            out["ssr_params_mean"] = _num(problem.ssr_params(pick, truth).mean())
            out["coverage_2sd"] = _num(((mean - truth).abs() <= 2 * std).double().mean())
    out["posterior_std_mean"] = _num(std.mean())
    out["solves_per_second"] = _num(result.potential_evals / result.seconds) \
        if result.seconds > 0 else None
    out["settings"] = _settings_out(settings, result)
    return out


def _settings_out(settings: dict[str, Any], result: ChainResult) -> dict[str, Any]:
    s = {k: v for k, v in settings.items() if k != "points"}
    s["observations"] = len(settings["points"])
    s.update(result.config)
    return s


def _write_outputs(folder: Path, problem: InverseProblem, result: ChainResult,
                   out: dict[str, Any], truth, sigma) -> None:
    if result.draws.shape[1] > 0:
        import arviz as az

        idata = result.to_inference_data()
        const = {"points": problem.points.numpy(), "sigma": sigma.numpy()}
        if truth is not None:
            const["truth"] = truth.numpy()
        idata.extend(az.from_dict(
            observed_data={"y": problem.data.numpy()}, constant_data=const,
            dims={"y": ["obs"], "sigma": ["obs"], "points": ["obs", "xy"],
                  "truth": ["row", "column"]}))
        save_netcdf(idata, folder / "posterior.nc")
        _pictures(folder, problem, result, truth)
    _write_json(folder / "summary.json", out)


def _pictures(folder: Path, problem: InverseProblem, result: ChainResult, truth) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z = torch.from_numpy(result.draws.reshape(-1, problem.dim))
    mean, std = problem.posterior_fields(z)
    pts = problem.points.numpy()
    panels = [("posterior mean", mean), ("posterior std", std)]
    if truth is not None:
        panels = [("truth", truth)] + panels + [("|mean - truth|", (mean - truth).abs())]
    fig = Figure(figsize=(3.2 * len(panels), 3.2))
    FigureCanvasAgg(fig)
    lim = max(float(mean.abs().max()), float(truth.abs().max()) if truth is not None else 0)
    for i, (title, f) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        signed = title in ("truth", "posterior mean")
        im = ax.imshow(f.numpy(), origin="lower", extent=(0, 1, 0, 1),
                       cmap="RdBu_r" if signed else "viridis",
                       vmin=-lim if signed else None, vmax=lim if signed else None)
        ax.scatter(pts[:, 0], pts[:, 1], s=4, c="k")
        ax.set_title(f"{title} (log k)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(folder / "fields.png", dpi=80)

    draws = result.draws
    k = min(4, problem.dim)
    fig = Figure(figsize=(8, 1.6 * k))
    FigureCanvasAgg(fig)
    for j in range(k):
        ax = fig.add_subplot(k, 1, j + 1)
        for c in range(draws.shape[0]):
            ax.plot(draws[c, :, j], lw=0.5, label=f"chain {c}")
        ax.set_ylabel(f"z[{j}]")
    fig.axes[0].set_title(f"{result.sampler} traces after warm-up (acceptance "
                          f"{float(np.mean(result.acceptance)):.2f})", fontsize=9)
    fig.axes[-1].set_xlabel("kept draw")
    fig.tight_layout()
    fig.savefig(folder / "traces.png", dpi=80)

    n = problem.grid[0]
    cells = [(i, i) for i in np.linspace(0, n - 1, 8).round().astype(int)]
    fig = Figure(figsize=(7, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(cells))
    ax.errorbar(x, [float(mean[c]) for c in cells], yerr=[2 * float(std[c]) for c in cells],
                fmt="o", capsize=3, label="posterior mean +- 2 sd")
    if truth is not None:
        ax.plot(x, [float(truth[c]) for c in cells], "rx", label="truth")
    ax.set_xticks(x, [f"({i},{j})" for i, j in cells], fontsize=8)
    ax.set_xlabel("cell (row, column) on the diagonal")
    ax.set_ylabel("log k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "error_bars.png", dpi=80)


def format_summary(s: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def f(key, fmt="{:.3g}"):
        v = s.get(key)
        return "n/a" if v is None else fmt.format(v)

    lines = [f"status {s['status']}" + (f": {s['reason']}" if s.get("reason") else "")]
    if s.get("draws"):
        lines += [
            f"acceptance {f('acceptance')}  draws {s['chains']} x {s['draws']}  "
            f"R-hat max {f('rhat_max')}",
            f"ESS bulk min/median {f('ess_bulk_min')}/{f('ess_bulk_median')} "
            f"(per 2000 draws {f('ess_bulk_min_per_2000')}/{f('ess_bulk_median_per_2000')}), "
            f"tail min {f('ess_tail_min')}",
            f"ESS/s {f('ess_per_second')}  ESS per solve {f('ess_per_eval')}  "
            f"time {f('seconds', '{:.1f}')} s",
            f"NSSWR {f('nsswr')}  relative L2 error of the posterior mean {f('rel_l2_mean')}",
        ]
    return "\n".join(lines)
