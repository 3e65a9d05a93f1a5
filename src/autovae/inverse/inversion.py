"""``autovae invert``: sample the posterior of an inverse problem into a chain folder.

:func:`invert` takes an :class:`~autovae.inverse.config.InverseConfig`, builds the problem
named by ``problem`` (each a :class:`~autovae.inverse.problems.ProblemSpec` in
:data:`~autovae.inverse.problems.PROBLEMS`: a prior, a forward model, data, noise and, where
known, the truth), samples it with the chosen kernel
(:func:`~autovae.inverse.chains.run_chains`) and writes into the chain folder
(:class:`~autovae.inverse.chains.ChainFolder`) problem.json, summary.json (diagnostics, costs
per draw / per 1000 solves / per second, errors and calibration against the truth),
posterior.nc and pictures (:mod:`autovae.inverse.outputs`). Re-running the same settings
resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_memory
from .chains import ChainFolder, ChainResult, run_chains
from .config import InverseConfig, check_kernel_options, error_bar_indices
from .kernels import make_kernel
from .limits import chain_bytes, field_bytes
from .outputs import summarise, write_outputs
from .priors import Prior
from .probe import probe_problem
from .problem import InverseProblem
from .problems import PROBLEMS, Built, points_count

__all__ = ["InversionResult", "invert"]


class InversionResult:
    """What :func:`invert` made: the problem, the chains, the summary and the folder."""

    def __init__(self, folder: Path, problem: InverseProblem, chains: ChainResult,
                 summary: dict[str, Any], new_solves: int):
        self.folder, self.problem, self.chains = folder, problem, chains
        self.summary, self.new_solves = summary, new_solves

    def __repr__(self) -> str:
        return f"InversionResult({str(self.folder)!r}, status={self.chains.status!r})"


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
    _workers(built.problem.forward, cfg)
    try:  # no worker process left running after the run, or after a refused setting
        return _invert(cfg, built, progress)
    finally:
        built.problem.forward.close_workers()


def _invert(cfg: InverseConfig, built: Built, progress: bool) -> InversionResult:
    problem = built.problem
    bars = None if cfg.error_bars is None else error_bar_indices(
        cfg.error_bars, int(np.prod(problem.prior.param_shape)))
    kernel_name = cfg.kernel or ("pcn" if problem.prior.normal else "nuts")
    if cfg.subchain and cfg.kernel is None:  # delayed acceptance: a Metropolis kernel inside
        kernel_name = "pcn" if problem.prior.normal else (
            "mala" if problem.forward.gradient else "rwm")
    check_kernel_options(kernel_name, cfg.kernel_options)
    options: dict[str, Any] = dict(cfg.kernel_options)
    if cfg.step_size is not None:
        options["step_size"] = cfg.step_size
    if cfg.target_accept is not None:
        options["target_accept"] = cfg.target_accept
    kernel = make_kernel(kernel_name, **options)
    target = problem.target()
    if cfg.subchain:
        kernel_name = f"da-{kernel_name}"
    elif cfg.coarse_forward is not None or cfg.error_model or cfg.adaptive_error:
        raise ValueError("--coarse-forward, --error-model and --adaptive-error set up delayed "
                         "acceptance: give "
                         "--subchain J (cheap steps per fine proposal) too")
    if cfg.surrogate_draws is not None and cfg.coarse_forward != "surrogate":
        raise ValueError("--surrogate-draws sizes the surrogate cheap model: give it with "
                         "--coarse-forward surrogate --subchain J, or leave it out")
    cf = ChainFolder(_default_out(cfg, kernel_name, problem.prior))
    cf.check_writable()
    delayed = _delayed(cfg, problem, kernel, cf.path) if cfg.subchain else {}
    cheap = delayed.pop("cheap", None)
    try:
        return _run(cfg, built, problem, cf, target, delayed.pop("kernel", kernel),
                    kernel_name, delayed, bars, progress)
    finally:
        if cheap is not None:
            cheap.close_workers()


def _run(cfg, built, problem, cf, target, kernel, kernel_name, delayed, bars, progress):
    kernel.validate(target)
    if cfg.jobs > 1 and hasattr(kernel, "set_jobs"):  # NUTS: its chains in processes
        kernel.set_jobs(cfg.jobs)
    forward = problem.forward
    check_memory(chain_bytes(cfg.chains, cfg.draws, problem.dim, int(np.prod(
        forward.param_shape)), forward.n_obs, dense_metric=kernel.needs_gradient),
        "this inversion")
    probe_problem(problem, cfg.chains, cfg.seed, kernel.needs_gradient)
    setup_solves = delayed.pop("setup_fine_solves", 0)
    report = delayed.pop("report", {})
    record = {"problem": cfg.problem, "run": cfg.run, **problem.prior.describe(),
              **problem.forward.describe(), **built.settings, **delayed,
              "data_sha": _sha(problem.data), "prior_probe": problem.prior.probe()}
    _check_problem(cf, record)
    solves0 = problem.forward.solves
    result = run_chains(target, kernel, cf.path, chains=cfg.chains, warmup=cfg.warmup,
                        draws=cfg.draws, seed=cfg.seed, thin=cfg.thin,
                        checkpoint_every=cfg.checkpoint_every, progress=progress)
    new_solves = problem.forward.solves - solves0 + target.solves_elsewhere
    out = summarise(problem, result, built, cfg)
    if delayed:
        from .delayed import delayed_summary

        d = delayed_summary(result, setup_solves)
        out.update({k: d[k] for k in ("coarse_solves", "cheap_fallbacks", "fine_solves",
                                      "setup_fine_solves",
                                      "ess_per_1000_fine_solves", "fine_acceptance_of_moved")
                    if k in d}, **report)
    write_outputs(cf, problem, result, out, built, error_bars=bars)
    return InversionResult(cf.path, problem, result, out, new_solves)


def _workers(forward, cfg: InverseConfig) -> None:
    """--jobs and --forward-timeout onto a forward model (the fine one, or delayed
    acceptance's cheap one), before any sampling."""
    from .umbridge import UMBridgeForward

    if cfg.forward_timeout is not None and isinstance(forward, UMBridgeForward):
        forward.timeout = cfg.forward_timeout  # (InverseConfig checked that one model is)
    forward.set_jobs(cfg.jobs)


def _field_bytes(cfg: InverseConfig) -> dict[str, int]:
    """What the settings the problem reads make it hold before its chains (:mod:`.limits`)."""
    reads = PROBLEMS[cfg.problem].reads
    darcy = "points" in reads  # a built-in Darcy model: observation points and a GRF truth
    return field_bytes(grid=cfg.grid or (16 if darcy else None), dim=cfg.dim,
                       points=points_count(cfg.points) if darcy else None,
                       truth_resolution=cfg.truth_resolution if darcy else None,
                       residual=cfg.residual if "residual" in reads else 0,
                       kle=cfg.prior in (None, "kle") and cfg.run is None,
                       points_text=cfg.points)


def _delayed(cfg: InverseConfig, problem: InverseProblem, inner, folder) -> dict[str, Any]:
    """Delayed acceptance's kernel (``kernel``), its cheap model (``cheap``, with --jobs and
    --forward-timeout as the fine model has them), the fine solves spent before the chains
    (``setup_fine_solves``: the surrogate's training draws, the error model's prior draws),
    what summary.json adds (``report``) and what identifies it in problem.json."""
    from .delayed import ApproximationError, DelayedAcceptanceKernel, coarse_forward, coarse_target

    if cfg.coarse_forward == "surrogate":
        from .surrogate import surrogate_forward

        cheap = surrogate_forward(problem, 1000 if cfg.surrogate_draws is None
                                  else cfg.surrogate_draws, cfg.seed,
                                  Path(folder) / "surrogate.pt")
        report = cheap.report()
        trained = report["surrogate_training_solves"]
    else:
        cheap, report, trained = coarse_forward(problem.forward, cfg.coarse_forward), {}, 0
    _workers(cheap, cfg)
    solves0 = problem.forward.solves
    aem = ApproximationError(problem, cheap, cfg.error_model, seed=cfg.seed) \
        if cfg.error_model else None
    kernel = DelayedAcceptanceKernel(coarse_target(problem, cheap, aem), inner,
                                     subchain=cfg.subchain, adaptive_error=cfg.adaptive_error)
    cheap_record = {f"cheap_{k}": v for k, v in cheap.describe().items()}
    # the surrogate's training solves (once, also when read back on resume) and the error
    # model's prior draws
    setup = trained + problem.forward.solves - solves0
    return {"kernel": kernel, "cheap": cheap, "setup_fine_solves": setup, "report": report,
            **cheap_record, "error_model_draws": cfg.error_model,
            **({} if aem is None else aem.describe())}


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
