"""The inverse problems ``autovae invert --problem`` names: each a :class:`ProblemSpec` in
:data:`PROBLEMS` that declares the settings it reads, its default prior and noise, and builds
the problem from an :class:`~autovae.inverse.config.InverseConfig`.

* ``darcy`` -- the Darcy case of the latent-MCMC authors' released code (their report has no
  Darcy section): a log-permeability field on an n x n grid, pressures at observation points
  under the boundary conditions ``bc`` (default p = 0 on x = 0, 1, no flux on y = 0, 1), 5%
  relative noise, the truth a GRF draw (seed 100000 + ``truth_seed``) at the inference grid
  or a finer one (then compared through its block means).
* ``aristoff-bangerth`` -- the benchmark of Aristoff & Bangerth (SIAM Review 65(4), 2023):
  64 coefficients theta > 0, its 169 published observations, sigma 0.05, its prior on
  ln theta (sd 2) as a density in theta, sampled in ln theta with the Jacobian; or a run
  trained on ln theta (``aristoff-bangerth-prior``: 8 x 8 images, pixel [by, bx] = block
  bx + 8 by) as the prior, theta = exp(decoder(z) [+ residual]).
* ``custom`` -- a user's ``--forward`` (a Python class or a UM-Bridge model) with ``--data``.

A setting given away from its default to a problem that does not read it is refused by
:class:`~autovae.inverse.config.InverseConfig`, naming the problems that read it, as the
training side refuses a key that the model does not read (``Model.reads``).

``residual`` adds to a run prior a Gaussian field carrying the covariance its decoder's draws
miss of the problem's prior covariance (:class:`ResidualFieldPrior`): darcy's GRF covariance of
log k, aristoff-bangerth's 2^2 I of ln theta. A custom problem has no prior covariance to
match, so it does not read ``residual``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .forward_models import DarcyForward, load_forward
from .grf import KarhunenLoeve, sample_grf
from .priors import DecoderPrior, ExpPrior, LogDensityPrior, Prior, ResidualFieldPrior
from .problem import InverseProblem

__all__ = ["COMMON", "PROBLEMS", "Built", "ProblemSpec", "problem_readers", "truth_field"]

TRUTH_SEED_OFFSET = 100_000
# a field or a truth grid beyond this many cells is refused before anything is allocated
MAX_CELLS = 4096 * 4096

# settings that every problem reads (the chains, the prior's run, the data and its noise, the
# folder); every other setting is read by the problems that declare it in ``reads``
COMMON = frozenset({"run", "problem", "prior", "data", "noise", "noise_kind", "truth_file",
                    "kernel", "kernel_options", "chains", "warmup", "draws", "thin", "step_size",
                    "target_accept", "seed", "checkpoint_every", "out", "device",
                    "error_bars", "jobs", "subchain", "coarse_forward", "error_model",
                    "adaptive_error", "surrogate_draws", "forward_timeout"})
VECTOR = ("gaussian", "lognormal", "uniform")  # priors on a parameter vector (vector_priors)
PRIOR_VALUES = ("prior_mean", "prior_sd", "prior_cov", "prior_low", "prior_high")


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


@dataclass(frozen=True)
class ProblemSpec:
    """One inverse problem; called with a config, it builds it: ``build(cfg, prior)`` with
    ``prior`` resolved (``run`` with a run folder, else the problem's ``prior``). It reads
    :data:`COMMON` and its own ``reads`` (``unread``: why it does not read a setting, where a
    reason helps), accepts the ``priors`` named, and has a default ``noise`` and
    ``noise_kind``."""

    name: str
    help: str
    build: Callable[[Any, str], Built]
    reads: frozenset[str]
    priors: tuple[str, ...]
    prior: str
    noise: float | None
    noise_kind: str
    unread: dict[str, str] = field(default_factory=dict)

    def __call__(self, cfg) -> Built:
        """The problem that ``cfg`` (an InverseConfig naming this problem) describes."""
        return self.build(cfg, self.resolve_prior(cfg))

    def resolve_prior(self, cfg) -> str:
        """The prior ``cfg`` asks for, or this problem's default; one it cannot take is
        refused naming the ones it can."""
        prior = cfg.prior or ("run" if cfg.run is not None else self.prior)
        if prior not in self.priors:
            raise ValueError(f"--prior {prior} does not apply to {self.name}; use "
                             f"{' or '.join(self.priors)}")
        return prior


def _run_prior(cfg, kind: str | None = None, other: str = "kle") -> DecoderPrior:
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
    count = points_count(spec)
    if count is not None:
        return count
    return read_array(spec, "points")


def points_count(spec) -> int | None:
    """--points as a count (64, 1e4), or None for a file name."""
    try:
        value = float(spec)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(value) and value.is_integer() and value >= 1):
        raise ValueError(f"--points {spec} is neither a square count of observation points "
                         "(e.g. 64 = 8x8) nor a file of (x, y) rows")
    return int(value)


def _vector_prior(cfg, prior_name: str, shape, mean=None, sd=None) -> Prior:
    """``--prior gaussian|lognormal|uniform`` on parameters of ``shape``; ``mean``/``sd``: the
    problem's defaults (aristoff-bangerth's ln theta ~ N(4, 2^2))."""
    from .vector_priors import vector_prior

    return vector_prior(prior_name, shape,
                        mean=cfg.prior_mean if cfg.prior_mean is not None else mean,
                        sd=cfg.prior_sd if cfg.prior_sd is not None or cfg.prior_cov else sd,
                        cov=cfg.prior_cov, low=cfg.prior_low, high=cfg.prior_high)


def _no_prior_values(cfg, prior_name: str) -> None:
    for key in PRIOR_VALUES:
        if getattr(cfg, key) is not None:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} sets a vector prior (--prior gaussian, lognormal or "
                             f"uniform), not --prior {prior_name}; drop {flag} or choose one")


def _no_residual_without_run(cfg) -> None:
    if cfg.residual:
        raise ValueError("--residual adds a residual field to a run prior: give a run folder")


def _darcy(cfg, prior_name: str) -> Built:
    spec = PROBLEMS["darcy"]
    prior: Prior
    if prior_name == "run":
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
    else:  # kle
        _no_residual_without_run(cfg)
        n = cfg.grid or 16
        _size_check("--grid", n * n)
        if cfg.run is not None:
            run = DecoderPrior.from_run(cfg.run, cfg.device)
            n = cfg.grid or run.param_shape[-1]
        dim = cfg.dim or 16
        if dim > n * n:
            raise ValueError(f"--dim {dim} exceeds the grid's {n * n} cells")
        prior = KarhunenLoeve(n, dim=dim, length_scale_range=(0.1, 0.5))
    forward = DarcyForward(n, _points(cfg.points), cfg.source, cfg.bc)
    noise = spec.noise if cfg.noise is None else cfg.noise
    kind = cfg.noise_kind or spec.noise_kind
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
        data = torch.from_numpy(read_array(cfg.data, "data")).reshape(-1)
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


AB_KIND = "aristoff-bangerth"  # the dataset prefix of its run priors (aristoff-bangerth-prior)


def _aristoff_bangerth(cfg, prior_name: str) -> Built:
    from .aristoff_bangerth import AristoffBangerth, reference_posterior

    spec = PROBLEMS["aristoff-bangerth"]
    bench = AristoffBangerth()
    forward = load_forward("aristoff-bangerth")
    if prior_name == "run":
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
    elif prior_name == "lognormal":  # the benchmark's prior as ln theta = 4 + 2 z: pCN applies
        _no_residual_without_run(cfg)
        prior = _vector_prior(cfg, prior_name, (bench.n_params,), mean=4.0, sd=bench.prior_sd)
    else:  # benchmark
        _no_residual_without_run(cfg)
        prior = LogDensityPrior(bench.log_prior, (bench.n_params,), "benchmark")
    if prior_name != "lognormal":
        _no_prior_values(cfg, prior_name)
    data = bench.data if cfg.data is None else torch.from_numpy(
        read_array(cfg.data, "data")).reshape(-1)
    noise = spec.noise if cfg.noise is None else cfg.noise
    kind = cfg.noise_kind or spec.noise_kind
    problem = InverseProblem(prior, forward, data, noise, kind)
    truth = None if cfg.data is not None and cfg.truth_file is None else (
        bench.theta_true if cfg.truth_file is None else _truth_params(cfg.truth_file))
    settings = {"noise": noise, "noise_kind": kind, "data_file": cfg.data,
                "truth_file": cfg.truth_file}
    benchmark_prior = prior_name == "benchmark" or (
        prior_name == "lognormal" and cfg.prior_cov is None
        and cfg.prior_mean in (None, "4", "4.0") and cfg.prior_sd in (None, "2", "2.0"))
    as_published = (benchmark_prior and cfg.data is None and cfg.noise is None
                    and kind == "absolute")
    return Built(problem, truth, None, settings,
                 reference_posterior() if as_published else None)


def _custom(cfg, prior_name: str) -> Built:
    if cfg.forward is None or cfg.data is None:
        raise ValueError("--problem custom needs --forward (package.module:Class or "
                         "umbridge:http://host:port/name) and --data (the observations)")
    forward = load_forward(cfg.forward)
    if prior_name in VECTOR:
        prior: Prior = _vector_prior(cfg, prior_name, tuple(forward.param_shape))
    elif prior_name == "run":
        _no_prior_values(cfg, prior_name)
        prior = _run_prior(cfg)
    else:  # kle
        _no_prior_values(cfg, prior_name)
        shape = tuple(forward.param_shape)
        n = cfg.grid or math.isqrt(int(np.prod(shape)))
        if n * n != int(np.prod(shape)):
            raise ValueError(f"--prior kle makes n x n fields, but {forward.name} takes "
                             f"parameters of shape {shape}; give --prior gaussian, lognormal "
                             "or uniform (with their values), or a run prior")
        prior = KarhunenLoeve(n, dim=cfg.dim or 16, length_scale_range=(0.1, 0.5))
    if cfg.noise is None:
        raise ValueError("--problem custom needs --noise (the observation noise's std with "
                         "--noise-kind absolute, or a fraction with relative)")
    kind = cfg.noise_kind or PROBLEMS["custom"].noise_kind
    data = torch.from_numpy(read_array(cfg.data, "data")).reshape(-1)
    problem = InverseProblem(prior, forward, data, cfg.noise, kind)
    truth = _truth_params(cfg.truth_file) if cfg.truth_file else None
    return Built(problem, truth, None, {"noise": cfg.noise, "noise_kind": kind,
                                        "data_file": cfg.data, "truth_file": cfg.truth_file})


def _truth_params(path) -> torch.Tensor:
    t = torch.from_numpy(read_array(path, "truth"))
    if not torch.isfinite(t).all():
        raise ValueError(f"the truth file {path} holds NaN or infinite values")
    return t


_OWN_FORWARD = "it has its own forward model; --forward without --problem selects custom"
PROBLEMS: dict[str, ProblemSpec] = {spec.name: spec for spec in (
    ProblemSpec("darcy", "the latent-MCMC authors' released Darcy case", _darcy,
                frozenset({"residual", "grid", "dim", "points", "source", "bc", "truth_seed",
                           "truth_resolution"}),
                priors=("run", "kle"), prior="kle", noise=0.05, noise_kind="relative",
                unread={"forward": _OWN_FORWARD}),
    ProblemSpec("aristoff-bangerth", "the SIAM Review 2023 benchmark", _aristoff_bangerth,
                frozenset({"residual", "prior_mean", "prior_sd", "prior_cov"}),
                priors=("run", "benchmark", "lognormal"), prior="benchmark",
                noise=0.05, noise_kind="absolute",  # AristoffBangerth.sigma, as published
                unread={"forward": _OWN_FORWARD}),
    ProblemSpec("custom", "your --forward with your --data", _custom,
                frozenset({"forward", "grid", "dim", *PRIOR_VALUES}),
                priors=("run", "kle", *VECTOR), prior="kle",
                noise=None, noise_kind="absolute",
                unread={"residual": "it has no prior covariance for a residual field to "
                                    "match"}),
)}


def problem_readers(key: str) -> list[str]:
    """The problems that read setting ``key``."""
    return [name for name, spec in PROBLEMS.items() if key in spec.reads]


def read_array(path, what: str) -> np.ndarray:
    """A .npy or comma-separated text file of numbers as float64, or one line naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist; give a .npy or text file")
    try:
        arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=1)
    except (ValueError, OSError) as err:
        raise ValueError(f"{what} file {path} is not a numeric .npy or comma-separated text "
                         f"file ({str(err).splitlines()[0][:80]})") from None
    return np.asarray(arr, dtype=np.float64)


def truth_field(n: int, truth_seed: int = 0, resolution: int | None = None,
                truth_file=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fine truth (R, R), its block means on the inference grid (n, n)), float64 log k."""
    if truth_file is not None:
        fine = torch.from_numpy(read_array(truth_file, "truth"))
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
