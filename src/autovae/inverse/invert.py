"""``autovae invert``: sample the posterior of an inverse problem into a chain folder.

:func:`invert` takes an :class:`~autovae.inverse.config.InverseConfig`, builds the problem
named by ``problem`` (each registered in :data:`PROBLEMS`: a prior, a forward model, data,
noise and, where known, the truth), samples it with the chosen kernel
(:func:`~autovae.inverse.chains.run_chains`) and writes into the chain folder
(:class:`~autovae.inverse.chains.ChainFolder`) problem.json, summary.json (diagnostics, costs
per draw / per 1000 solves / per second, errors and calibration against the truth),
posterior.nc and pictures. Re-running the same settings resumes.

Problems:

* ``darcy`` -- the Darcy case of the latent-MCMC authors' released code (spec 3.2; their
  report has no Darcy section): a log-permeability field on an n x n grid, pressures at
  observation points under the boundary conditions ``bc`` (default p = 0 on x = 0, 1, no flux
  on y = 0, 1), 5% relative noise, the truth a GRF draw (seed 100000 + ``truth_seed``) at
  the inference grid or a finer one (then compared through its block means).
* ``aristoff-bangerth`` -- the benchmark of Aristoff & Bangerth (SIAM Review 65(4), 2023):
  64 coefficients theta > 0, its 169 published observations, sigma 0.05, its prior on
  ln theta (sd 2) as a density in theta, sampled in ln theta with the Jacobian; or a run
  trained on ln theta (``aristoff-bangerth-prior``: 8 x 8 images, pixel [by, bx] = block
  bx + 8 by) as the prior, theta = exp(decoder(z) [+ residual]).
* ``custom`` -- a user's ``--forward`` (a Python class or a UM-Bridge model) with ``--data``.

``--residual M`` adds to a run prior a Gaussian field carrying the covariance its decoder's
draws miss of the problem's prior covariance (:class:`ResidualFieldPrior`): darcy's GRF
covariance of log k, aristoff-bangerth's 2^2 I of ln theta (its prior is iid there, so the
"Karhunen-Loeve field" of the residual is the eigenbasis of 4 I minus the decoder's
covariance). A custom problem has no prior covariance to match, so it refuses ``--residual``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_memory
from .._files import atomic_path
from .boundary import DEFAULT_BC
from .chains import ChainFolder, ChainResult, run_chains
from .config import InverseConfig
from .diagnostics import save_netcdf, summary
from .forward_models import DarcyForward, load_forward
from .grf import KarhunenLoeve, sample_grf
from .kernels import make_kernel
from .limits import chain_bytes, field_bytes
from .priors import DecoderPrior, ExpPrior, LogDensityPrior, Prior, ResidualFieldPrior
from .probe import probe_problem
from .problem import InverseProblem

__all__ = ["PROBLEMS", "InversionResult", "format_summary", "invert", "truth_field"]

TRUTH_SEED_OFFSET = 100_000
# a field or a truth grid beyond this many cells is refused before anything is allocated
MAX_CELLS = 4096 * 4096


@dataclass
class Built:
    """What a problem builder makes: the problem, the truth (parameters) and its noise-free
    observations when known, the settings that identify the problem, and a reference
    posterior (:func:`~autovae.inverse.aristoff_bangerth.reference_posterior`) where one is
    known for exactly this problem."""

    problem: InverseProblem
    truth: torch.Tensor | None
    truth_observations: torch.Tensor | None
    settings: dict[str, Any]
    reference: dict[str, Any] | None = None


class InversionResult:
    """What :func:`invert` made: the problem, the chains, the summary and the folder."""

    def __init__(self, folder: Path, problem: InverseProblem, chains: ChainResult,
                 summary: dict[str, Any], new_solves: int):
        self.folder, self.problem, self.chains = folder, problem, chains
        self.summary, self.new_solves = summary, new_solves

    def __repr__(self) -> str:
        return f"InversionResult({str(self.folder)!r}, status={self.chains.status!r})"


def _run_prior(cfg: InverseConfig, kind: str | None = None, other: str = "kle"
               ) -> DecoderPrior:
    """The run's prior; ``kind``: the dataset prefix its training data must have (a digits
    VAE is no permeability prior even when its images have the grid's shape); ``other``: the
    problem's prior without a run."""
    if cfg.run is None:
        raise ValueError("--prior run needs a run folder (autovae invert RUN ...); or use "
                         f"--prior {other}")
    prior = DecoderPrior.from_run(cfg.run, cfg.device)
    data = str(prior.config.data)
    if kind is not None and _is_named_dataset(data) and not data.startswith(kind):
        raise ValueError(f"the run {cfg.run} was trained on {data}, not on {kind} fields: its "
                         f"decoder is no prior for this problem; train one on {kind} (or on "
                         "your own fields from a file)")
    return prior


def _is_named_dataset(data: str) -> bool:
    from ..data import DATASETS

    return data in DATASETS


def _size_check(name: str, cells: int) -> None:
    if cells > MAX_CELLS:
        raise ValueError(f"{name} asks for {cells:,} cells ({8 * cells ** 2 / 2**30:,.0f} GiB "
                         f"for a dense covariance), beyond this tool's {MAX_CELLS:,}; give a "
                         "smaller value")


def _points(spec: str):
    count = _count_of(spec)
    if count is not None:
        return count
    return _read_array(spec, "points")


def _count_of(spec) -> int | None:
    """--points as a count (64, 1e4), or None for a file name."""
    try:
        value = float(spec)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(value) and value.is_integer() and value >= 1):
        raise ValueError(f"--points {spec} is neither a square count of observation points "
                         "(e.g. 64 = 8x8) nor a file of (x, y) rows")
    return int(value)


def _darcy(cfg: InverseConfig) -> Built:
    prior: Prior
    if cfg.prior in (None, "run") and cfg.run is not None:
        prior = _run_prior(cfg, "darcy-grf")
        if len(prior.param_shape) != 2 or prior.param_shape[0] != prior.param_shape[1]:
            raise ValueError(f"the run {cfg.run} generates data of shape {prior.param_shape}, "
                             "not square log-permeability fields (n, n); train it on a field "
                             "dataset such as darcy-grf")
        n = prior.param_shape[0]
        if cfg.grid is not None and cfg.grid != n:
            raise ValueError(f"--grid {cfg.grid} differs from the run's fields ({n}x{n}); leave "
                             "--grid out or use a run trained on that grid")
        if cfg.residual:
            grf = KarhunenLoeve(n, dim=1, length_scale_range=(0.1, 0.5)).full_covariance()
            prior = ResidualFieldPrior(prior, grf, cfg.residual)
    elif cfg.residual:
        raise ValueError("--residual adds a residual field to a run prior: give a run folder")
    elif cfg.prior in (None, "kle"):
        n = cfg.grid or 16
        _size_check("--grid", n * n)
        if cfg.run is not None:
            run = DecoderPrior.from_run(cfg.run, cfg.device)
            n = cfg.grid or run.param_shape[-1]
        dim = cfg.dim or 16
        prior = KarhunenLoeve(n, dim=dim if dim <= n * n else n * n,
                              length_scale_range=(0.1, 0.5))
        if dim > n * n:
            raise ValueError(f"--dim {dim} exceeds the grid's {n * n} cells")
    else:
        raise ValueError(f"--prior {cfg.prior} does not apply to darcy; use run or kle")
    forward = DarcyForward(n, _points(cfg.points), cfg.source, cfg.bc)
    noise = 0.05 if cfg.noise is None else cfg.noise
    kind = cfg.noise_kind or "relative"
    truth_fine = truth = None
    if cfg.data is None or cfg.truth_file is not None:
        if cfg.truth_resolution is not None:
            _size_check("--truth-resolution", cfg.truth_resolution ** 2)
        truth_fine, truth = truth_field(n, cfg.truth_seed, cfg.truth_resolution, cfg.truth_file)
    truth_obs = None
    if truth_fine is not None:
        truth_obs = forward.pressure(truth_fine[None], forward.points)
        if not torch.isfinite(truth_obs).all():
            raise ValueError("the Darcy solve of the truth failed; check the truth field")
    if cfg.data is not None:
        data = torch.from_numpy(_read_array(cfg.data, "data")).reshape(-1)
        problem = InverseProblem(prior, forward, data, noise, kind)
    else:
        p_true = truth_obs[0]
        sigma = noise * p_true.abs() if kind == "relative" else torch.full_like(p_true, noise)
        if (sigma <= 0).any():
            raise ValueError("the truth's pressure is 0 at some observation points (on a side "
                             "with p = 0, such as x = 0 or x = 1 by default), where relative "
                             "noise has sigma = 0; move those points inside or use "
                             "--noise-kind absolute")
        eps = torch.randn(p_true.shape, generator=torch.Generator().manual_seed(cfg.truth_seed),
                          dtype=torch.float64)
        problem = InverseProblem(prior, forward, p_true + sigma * eps, sigma, "absolute")
    settings = {"truth_seed": cfg.truth_seed, "noise": noise, "noise_kind": kind,
                "data_file": cfg.data, "truth_file": cfg.truth_file,
                "truth_resolution": None if truth_fine is None else int(truth_fine.shape[0])}
    return Built(problem, truth, truth_obs, settings)


def _no_bc(cfg: InverseConfig) -> None:
    if cfg.bc != DEFAULT_BC:
        raise ValueError(f"--bc applies to --problem darcy (the built-in Darcy model's "
                         f"boundary conditions), not to {cfg.problem}")


def _no_residual(cfg: InverseConfig) -> None:
    if cfg.residual:
        raise ValueError(f"--residual applies to --problem darcy or aristoff-bangerth (their "
                         f"prior covariance is what the residual field matches), not to "
                         f"{cfg.problem}, which has no prior covariance to match")


AB_KIND = "aristoff-bangerth"  # the dataset prefix of its run priors (aristoff-bangerth-prior)


def _aristoff_bangerth(cfg: InverseConfig) -> Built:
    from .aristoff_bangerth import AristoffBangerth, reference_posterior

    _no_bc(cfg)
    bench = AristoffBangerth()
    forward = load_forward(cfg.forward or "aristoff-bangerth")
    if cfg.prior == "run" or (cfg.prior is None and cfg.run is not None):
        base: Prior = _run_prior(cfg, AB_KIND, other="benchmark")
        if tuple(base.param_shape) not in ((8, 8), (bench.n_params,)):
            raise ValueError(f"the run {cfg.run} generates data of shape "
                             f"{tuple(base.param_shape)}, not the benchmark's 64 "
                             "log-coefficients (8 x 8 blocks, or 64 values); train it on "
                             "aristoff-bangerth-prior")
        if cfg.residual:  # the benchmark's prior covariance of ln theta: 2^2 I
            cov = bench.prior_sd**2 * torch.eye(bench.n_params, dtype=torch.float64)
            base = ResidualFieldPrior(base, cov, cfg.residual)
        prior: Prior = ExpPrior(base)  # the decoder gives ln theta; the forward model theta
    elif cfg.residual:
        raise ValueError("--residual adds a residual field to a run prior: give a run folder")
    elif cfg.prior in (None, "benchmark"):
        prior = LogDensityPrior(bench.log_prior, (bench.n_params,), "benchmark")
    else:
        raise ValueError(f"--prior {cfg.prior} does not apply to aristoff-bangerth; use "
                         "benchmark or run")
    data = bench.data if cfg.data is None else torch.from_numpy(
        _read_array(cfg.data, "data")).reshape(-1)
    noise = bench.sigma if cfg.noise is None else cfg.noise
    kind = cfg.noise_kind or "absolute"
    problem = InverseProblem(prior, forward, data, noise, kind)
    truth = None if cfg.data is not None and cfg.truth_file is None else (
        bench.theta_true if cfg.truth_file is None else _truth_params(cfg.truth_file))
    settings = {"noise": noise, "noise_kind": kind, "data_file": cfg.data,
                "truth_file": cfg.truth_file}
    as_published = (isinstance(prior, LogDensityPrior) and cfg.data is None and cfg.noise is None
                    and cfg.noise_kind in (None, "absolute")
                    and cfg.forward in (None, "aristoff-bangerth"))
    return Built(problem, truth, None, settings,
                 reference_posterior() if as_published else None)


def _custom(cfg: InverseConfig) -> Built:
    _no_bc(cfg)
    _no_residual(cfg)
    if cfg.forward is None or cfg.data is None:
        raise ValueError("--problem custom needs --forward (package.module:Class or "
                         "umbridge:http://host:port/name) and --data (the observations)")
    forward = load_forward(cfg.forward)
    if cfg.prior in (None, "run") and cfg.run is not None:
        prior: Prior = _run_prior(cfg)
    elif cfg.prior in (None, "kle"):
        shape = tuple(forward.param_shape)
        n = cfg.grid or math.isqrt(int(np.prod(shape)))
        if n * n != int(np.prod(shape)):
            raise ValueError(f"--prior kle makes n x n fields, but {forward.name} takes "
                             f"parameters of shape {shape}; give a run prior")
        prior = KarhunenLoeve(n, dim=cfg.dim or 16, length_scale_range=(0.1, 0.5))
    else:
        raise ValueError(f"--prior {cfg.prior} does not apply to a custom problem; use run or "
                         "kle")
    if cfg.noise is None:
        raise ValueError("--problem custom needs --noise (the observation noise's std with "
                         "--noise-kind absolute, or a fraction with relative)")
    kind = cfg.noise_kind or "absolute"
    data = torch.from_numpy(_read_array(cfg.data, "data")).reshape(-1)
    problem = InverseProblem(prior, forward, data, cfg.noise, kind)
    truth = _truth_params(cfg.truth_file) if cfg.truth_file else None
    return Built(problem, truth, None, {"noise": cfg.noise, "noise_kind": kind,
                                        "data_file": cfg.data, "truth_file": cfg.truth_file})


def _truth_params(path) -> torch.Tensor:
    t = torch.from_numpy(_read_array(path, "truth"))
    if not torch.isfinite(t).all():
        raise ValueError(f"the truth file {path} holds NaN or infinite values")
    return t


PROBLEMS: dict[str, Callable[[InverseConfig], Built]] = {
    "darcy": _darcy, "aristoff-bangerth": _aristoff_bangerth, "custom": _custom}


def _default_out(cfg: InverseConfig, kernel: str, prior: Prior) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    tag = prior.describe()["prior"]
    if cfg.run is not None:
        return Path(cfg.run) / f"invert-{'' if tag == 'run' else tag + '-'}{kernel}-{cfg.seed}"
    return Path("runs") / "invert" / f"{cfg.problem}-{tag}-{kernel}-{cfg.seed}"


def invert(config: InverseConfig | None = None, progress: bool = False,
           **settings) -> InversionResult:
    """Run (or resume) one inversion and return its :class:`InversionResult`.

    ``config`` (or its fields as keywords: ``invert(problem="aristoff-bangerth",
    kernel="nuts")``); ``progress``: a bar per chain on a terminal.
    """
    if config is None:
        config = InverseConfig.from_dict(settings)
    elif settings:
        raise ValueError("give an InverseConfig or keyword settings, not both")
    elif not isinstance(config, InverseConfig):
        raise ValueError(f"config must be an InverseConfig, got {type(config).__name__}")
    cfg = config
    if cfg.out is not None:
        ChainFolder(cfg.out).check_writable()
    check_memory(_field_bytes(cfg), "this inversion")
    built = PROBLEMS[cfg.problem](cfg)
    problem = built.problem
    kernel_name = cfg.kernel or ("pcn" if problem.prior.normal else "nuts")
    options: dict[str, Any] = {}
    if cfg.step_size is not None:
        options["step_size"] = cfg.step_size
    if cfg.target_accept is not None:
        options["target_accept"] = cfg.target_accept
    kernel = make_kernel(kernel_name, **options)
    target = problem.target()
    kernel.validate(target)
    forward = problem.forward
    check_memory(chain_bytes(cfg.chains, cfg.draws, problem.dim, int(np.prod(
        forward.param_shape)), forward.n_obs, dense_metric=kernel.needs_gradient), "this inversion")
    probe_problem(problem, cfg.chains, cfg.seed, kernel.needs_gradient)
    cf = ChainFolder(_default_out(cfg, kernel_name, problem.prior))
    cf.check_writable()
    record = {"problem": cfg.problem, "run": cfg.run, **problem.prior.describe(),
              **problem.forward.describe(), **built.settings,
              "data_sha": _sha(problem.data), "prior_probe": problem.prior.probe()}
    _check_problem(cf, record)
    solves0 = problem.forward.solves
    result = run_chains(target, kernel, cf.path, cfg.chains, cfg.warmup, cfg.draws, cfg.seed,
                        cfg.thin, cfg.checkpoint_every, progress=progress)
    new_solves = problem.forward.solves - solves0
    out = _summarise(problem, result, built, cfg)
    _write_outputs(cf, problem, result, out, built)
    return InversionResult(cf.path, problem, result, out, new_solves)


def _field_bytes(cfg: InverseConfig) -> dict[str, int]:
    """What the settings make the problem hold before its chains (:mod:`.limits`)."""
    darcy = cfg.problem == "darcy"
    count = _count_of(cfg.points) if darcy else None
    return field_bytes(grid=cfg.grid or (16 if darcy else None), dim=cfg.dim, points=count,
                       truth_resolution=cfg.truth_resolution if darcy else None,
                       residual=cfg.residual, kle=cfg.prior in (None, "kle") and cfg.run is None,
                       points_text=cfg.points)


def _sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def _check_problem(cf: ChainFolder, record: dict[str, Any]) -> None:
    """Create problem.json, or check that the folder holds the same problem and that the
    prior still maps a code to the same parameters (a retrained run would silently change
    what the stored draws mean)."""
    from .chains import same_settings

    if cf.problem.is_file():
        old = cf.read_json(cf.problem)
        old_probe, new = old.pop("prior_probe", None), dict(record)
        probe = new.pop("prior_probe")
        same_settings(old, new, cf.path, "chain of another problem")
        if old_probe is not None and not np.allclose(old_probe, probe, rtol=1e-6, atol=1e-6):
            raise ValueError(f"{cf.path} holds a chain whose prior mapped its codes to other "
                             "parameters (the run was retrained or changed since): its draws "
                             "would mean other parameters; use another --out")
        return
    cf.path.mkdir(parents=True, exist_ok=True)
    cf.write_json(cf.problem, record)


def _summarise(problem: InverseProblem, result: ChainResult, built: Built,
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


def _write_outputs(cf: ChainFolder, problem: InverseProblem, result: ChainResult,
                   out: dict[str, Any], built: Built) -> None:
    if result.draws.shape[1] > 0:
        import arviz as az

        idata = result.to_inference_data()
        const = {"sigma": problem.sigma.numpy()}
        dims = {"y": ["obs"], "sigma": ["obs"]}
        if built.truth is not None:
            const["truth"] = torch.as_tensor(built.truth).reshape(-1).numpy()
            dims["truth"] = ["param"]
        if isinstance(problem.forward, DarcyForward):
            const["points"] = problem.forward.points.numpy()
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
    label = "log k" if isinstance(problem.forward, DarcyForward) else "parameter"
    t = None if truth is None else torch.as_tensor(truth, dtype=torch.float64).reshape(mean.shape)
    images = [("posterior mean", mean), ("posterior sd", std)]
    if t is not None:
        images = [("truth", t)] + images + [("|mean - truth|", (mean - t).abs())]
    images = [(title, _as_image(v)) for title, v in images]
    if all(img is not None for _, img in images):
        pts = problem.forward.points.numpy() if isinstance(problem.forward, DarcyForward) \
            else None
        fig = Figure(figsize=(3.2 * len(images), 3.2))
        FigureCanvasAgg(fig)
        lim = max(float(img.abs().max()) for title, img in images
                  if title in ("truth", "posterior mean"))
        for i, (title, img) in enumerate(images):
            ax = fig.add_subplot(1, len(images), i + 1)
            signed = title in ("truth", "posterior mean") and label == "log k"
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
