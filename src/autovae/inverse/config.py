"""InverseConfig: every setting of an inversion, in one place.

The ``autovae invert`` flags and the keys of its config file (``--config``, YAML/TOML/JSON) are
generated from these fields and from the kernels' declared options
(:data:`~autovae.inverse.kernels.KERNELS`, each class's ``options``) by the one settings engine
(:mod:`autovae.settings`), and checked here: types and domains, the choices of ``problem`` and
``kernel`` read from their registries, a setting that the problem does not read
(:class:`~autovae.inverse.problems.ProblemSpec` ``reads``) or a kernel option that the kernel
does not read refused by name. The record is saved in the chain folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import Settings
from ..settings import setting as _f
from .boundary import DEFAULT_BC, BoundaryConditions

__all__ = ["SETTINGS", "InverseConfig", "RENAMED", "check_kernel_options", "error_bar_indices",
           "kernel_settings"]


def _problem_names() -> tuple[str, ...]:
    from .problems import PROBLEMS

    return tuple(PROBLEMS)


def _prior_names() -> tuple[str, ...]:
    from .problems import PROBLEMS

    return tuple(dict.fromkeys(p for spec in PROBLEMS.values() for p in spec.priors))


def _kernel_names() -> tuple[str, ...]:
    from .kernels import KERNELS

    return tuple(KERNELS)


@dataclass(frozen=True)
class InverseConfig:
    """Settings of one inversion (see ``autovae invert --help``); ``kernel_options``: the
    kernel's own options by name (``{"max_tree_depth": 12}``), each also a flag
    (``--max-tree-depth``) and a top-level key of a config file."""

    run: str | None = _f(None, "a trained run whose decoder (or generator) and latent prior "
                         "are the prior (--prior run)", positional=True)
    problem: str | None = _f(None, "the inverse problem: darcy (the latent-MCMC authors' "
                             "released Darcy case), aristoff-bangerth (the SIAM Review 2023 "
                             "benchmark), or custom (your --forward with your --data); "
                             "default: custom with --forward, else darcy",
                             choices=_problem_names)
    prior: str | None = _f(None, "run (the run's decoder and latent prior), kle (Karhunen-Loeve "
                           "expansion of the GRF), benchmark (aristoff-bangerth's own prior), "
                           "or a prior on the parameter vector: gaussian, lognormal (custom, "
                           "aristoff-bangerth: pCN applies) or uniform (custom; sampled "
                           "through a logit map); default: run with a run folder, else kle "
                           "(darcy, custom) or benchmark (aristoff-bangerth)",
                           choices=_prior_names)
    residual: int = _f(0, "terms of a Gaussian residual field added to a run prior (darcy, "
                       "aristoff-bangerth), its covariance fitted to what the decoder's draws "
                       "miss of the problem's prior covariance (the GRF's; 2^2 I in ln theta): "
                       "calibrated uncertainty from a VAE prior (0: none)", least=0)
    forward: str | None = _f(None, "your forward model (--problem custom): "
                             "package.module:Class, umbridge:http://host:port/name, or a "
                             "built-in one (darcy, aristoff-bangerth) with your --data")
    prior_mean: str | None = _f(None, "--prior gaussian or lognormal: the mean (of ln theta "
                                "for lognormal): a number, comma-separated numbers or a file of "
                                "one per parameter (default 0; aristoff-bangerth 4)")
    prior_sd: str | None = _f(None, "--prior gaussian or lognormal: the sd, as --prior-mean "
                              "(default 1; aristoff-bangerth 2)")
    prior_cov: str | None = _f(None, "--prior gaussian or lognormal: a covariance file "
                               "(P x P numbers) instead of --prior-sd")
    prior_low: str | None = _f(None, "--prior uniform: the lower bounds, as --prior-mean")
    prior_high: str | None = _f(None, "--prior uniform: the upper bounds, as --prior-mean")
    subchain: int = _f(0, "delayed acceptance: subchain steps of --kernel (pcn, rwm, mala or "
                       "chees) "
                       "on the cheap model per fine proposal (0: off)", least=0)
    coarse_forward: str | None = _f(None, "delayed acceptance's cheap model: surrogate (fitted "
                                    "to --surrogate-draws prior draws' fine outputs), "
                                    "aristoff-bangerth-N (N x N cells), or the forms of "
                                    "--forward (default: the built-in problem's coarser mesh)")
    error_model: int = _f(0, "delayed acceptance: prior draws for the approximation error "
                          "model (mean and covariance of fine - cheap outputs; 0: none)",
                          least=0)
    surrogate_draws: int | None = _f(None, "--coarse-forward surrogate: prior draws whose "
                                     "fine outputs train it (counted as fine solves; "
                                     "default 1000)", least=1)
    adaptive_error: bool = _f(False, "delayed acceptance: learn the cheap model's offset "
                              "(fine - cheap outputs) at the screened proposals during "
                              "warm-up, then freeze it (Cui, Fox & O'Sullivan)")
    grid: int | None = _f(None, "grid n of the Darcy field / the KLE prior (default: the run's, "
                          "else 16)", least=2)
    dim: int | None = _f(None, "terms of the KLE prior (default: the run's latent dim, else 16)",
                         least=1)
    points: str = _f("64", "Darcy observation points: a square count (64 = 8x8 interior points) "
                     "or a .npy/CSV file of (x, y) rows")
    source: float = _f(3.0, "Darcy source term f")
    bc: str = _f(DEFAULT_BC, "Darcy boundary conditions: comma-separated side=dirichlet:PRESSURE "
                 "or side=neumann:OUTWARD_FLUX (-k dp/dn; 0 = no flux) for the sides left "
                 "(x = 0), right (x = 1), bottom (y = 0), top (y = 1); sides not given keep "
                 "the default; at least one side Dirichlet")
    data: str | None = _f(None, "observations (.npy/CSV, one per observation) instead of data "
                          "simulated from the truth")
    noise: float | None = _f(None, "noise: a fraction of |y| (relative) or a std (absolute); "
                             "default: darcy 0.05 relative, aristoff-bangerth 0.05 absolute",
                             least=0)
    noise_kind: str | None = _f(None, "relative or absolute (default: the problem's)",
                                choices=("relative", "absolute"))
    truth_seed: int = _f(0, "the Darcy GRF truth and the noise draws", least=0)
    truth_resolution: int | None = _f(None, "simulate the Darcy data on this finer grid (a "
                                      "multiple of the inference grid)", least=2)
    truth_file: str | None = _f(None, "the true parameters (.npy/CSV), for the error and "
                                "calibration metrics")
    kernel: str | None = _f(None, "MCMC kernel (default: pcn for a N(0, I) prior, else nuts)",
                            choices=_kernel_names)
    chains: int = _f(4, "chains", least=1)
    warmup: int = _f(1000, "warm-up (adaptation) iterations per chain", least=0)
    draws: int = _f(2000, "kept draws per chain", least=1)
    thin: int = _f(1, "keep every n-th iteration", least=1)
    step_size: float | None = _f(None, "initial step (pCN: in (0, 1]; adapted during warm-up)",
                                 least=0)
    target_accept: float | None = _f(None, "target acceptance in (0, 1) (pcn 0.27, rwm 0.234, "
                                     "mala 0.574, nuts 0.8)")
    seed: int = _f(0, "chain seed", least=0)
    checkpoint_every: int = _f(100, "iterations between checkpoints", least=1)
    jobs: int = _f(1, "workers for the rows of a batch: processes for darcy and "
                   "aristoff-bangerth, requests in flight for a UM-Bridge model, a model's "
                   "own choice for package.module:Class (parallel_rows); NUTS's chains in "
                   "processes; the draws do not depend on it (at most 256)", least=1)
    forward_timeout: float | None = _f(None, "seconds a UM-Bridge request may take before the "
                                       "run stops, resumable (default 600)", least=0)
    out: str | None = _f(None, "chain folder (default RUN/invert-KERNEL-SEED with a run, else "
                         "runs/invert/PROBLEM-PRIOR-KERNEL-SEED)")
    device: str | None = _f(None, "device to load the run on")
    error_bars: str | None = _f(None, "the parameters error_bars.png shows: comma-separated "
                                "indices (a field's cells row-major, i = row * n + column); "
                                "default: the 12 the data inform most (the forward model's "
                                "sensitivity at the posterior mean)")
    kernel_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        SETTINGS.coerce_fields(self)
        object.__setattr__(self, "kernel_options", _kernel_options(self.kernel_options))
        if self.target_accept is not None and not 0 < self.target_accept < 1:
            raise ValueError(f"--target-accept must lie in (0, 1), got {self.target_accept!r}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"--step-size must be positive, got {self.step_size!r}")
        from .parallel import check_jobs

        check_jobs(self.jobs)
        if self.forward_timeout is not None and self.forward_timeout <= 0:
            raise ValueError(f"--forward-timeout must be a positive number of seconds, got "
                             f"{self.forward_timeout!r}")
        umbridge = [m for m in (self.forward, self.coarse_forward if self.subchain else None)
                    if m is not None and m.startswith("umbridge:")]
        if self.forward_timeout is not None and not umbridge:
            raise ValueError(f"--forward-timeout applies to a UM-Bridge model (--forward "
                             f"umbridge:URL, or --coarse-forward umbridge:URL with --subchain), "
                             f"not to {self.forward or self.problem}; leave it out")
        if self.noise is not None and self.noise <= 0:
            raise ValueError(f"--noise must be positive (e.g. 0.05), got {self.noise!r}")
        # one spelling, written out in full: the record reads the same however it was given
        object.__setattr__(self, "bc", str(BoundaryConditions.parse(self.bc)))
        if self.problem is None:  # --forward names your model: the problem is custom
            object.__setattr__(self, "problem", "darcy" if self.forward is None else "custom")
        if self.device is not None and self.run is None:
            raise ValueError(f"--device {self.device} is where the run is loaded, and no run "
                             "folder is given; drop --device or give a run folder")
        _check_problem_reads(self)
        if self.error_bars is not None:
            error_bar_indices(self.error_bars)
        if self.kernel is not None:
            check_kernel_options(self.kernel, self.kernel_options)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InverseConfig:
        """A config from keys (hyphens or underscores; a kernel's options at the top level or
        under ``kernel_options``), refusing unknown or renamed keys."""
        clean: dict[str, Any] = {}
        options: dict[str, Any] = {}
        kernel_keys = kernel_settings().specs
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name in RENAMED:
                raise ValueError(f"invert setting {key!r} is now {RENAMED[name]!r}")
            if name == "kernel_options":
                if not isinstance(value, Mapping):
                    raise ValueError(f"kernel_options must be a mapping of option names to "
                                     f"values, got {value!r}")
                options.update({str(k).replace("-", "_"): v for k, v in value.items()})
                continue
            SETTINGS.unknown([name], also=[*kernel_keys, "kernel_options"])
            if name in VECTOR_VALUES and not isinstance(value, str | Path | type(None)):
                value = _as_text(name, value)  # a number or a list in a config file
            if name in kernel_keys:
                options[name] = value
            else:
                clean[name] = value
        return cls(**clean, kernel_options=options)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> InverseConfig:
        """A config file's keys, with ``overrides`` (the flags given) winning."""
        from ..config import read_config_file

        values = dict(read_config_file(Path(path)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTINGS = Settings.of(InverseConfig, "invert setting", by_flag=True)
FIELDS = SETTINGS.specs  # name -> Spec of every setting but kernel_options
RENAMED = {"samples": "draws", "sampler": "kernel"}  # old invert spellings, refused by name


VECTOR_VALUES = ("prior_mean", "prior_sd", "prior_low", "prior_high")


def _as_text(name: str, value) -> str:
    """A config file's number or list of numbers as the text a flag would give."""
    values = value if isinstance(value, list | tuple) else [value]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool)
                             for v in values):
        raise ValueError(f"{name} must be a number, a list of numbers or a file, got {value!r}")
    return ",".join(repr(float(v)) for v in values)


def kernel_settings() -> Settings:
    """The kernels' declared options as settings (flags and config keys)."""
    from .kernels import kernel_options

    return Settings(kernel_options(), "invert setting", by_flag=True)


def _kernel_options(options) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ValueError(f"kernel_options must be a mapping of option names to values, got "
                         f"{options!r}")
    engine = kernel_settings()
    engine.unknown(options)
    return {key: engine.coerce(key, value) for key, value in options.items()}


def check_kernel_options(kernel: str, options: Mapping[str, Any]) -> None:
    """Refuse an option that ``kernel`` does not read, naming the kernels that read it."""
    from .kernels import KERNELS, option_readers

    for key in options:
        if key not in KERNELS[kernel].options:
            flag = "--" + key.replace("_", "-")
            readers = option_readers(key)
            raise ValueError(f"{flag} applies to --kernel {' or '.join(readers)}, not to "
                             f"{kernel}; drop {flag} or choose "
                             f"{'that kernel' if len(readers) == 1 else 'one of those kernels'}")


def error_bar_indices(text: str, count: int | None = None) -> list[int]:
    """``--error-bars`` as parameter indices, checked against ``count`` parameters if given."""
    try:
        idx = [int(x) for x in str(text).replace(" ", "").split(",") if x != ""]
    except ValueError:
        idx = []
    if not idx or any(i < 0 for i in idx):
        raise ValueError(f"--error-bars must be comma-separated parameter indices >= 0 (e.g. "
                         f"0,9,27), got {text!r}")
    if count is not None and max(idx) >= count:
        raise ValueError(f"--error-bars {text}: index {max(idx)} is beyond this problem's "
                         f"{count} parameters (0..{count - 1})")
    return idx


def _check_problem_reads(cfg: InverseConfig) -> None:
    """Refuse a setting away from its default on a problem that does not read it, naming the
    setting, why (where the problem says) and the problems that read it."""
    from .problems import COMMON, PROBLEMS, problem_readers

    spec = PROBLEMS[cfg.problem]
    for name, setting in SETTINGS.specs.items():
        if name in COMMON or name in spec.reads or getattr(cfg, name) == setting.default:
            continue
        readers = problem_readers(name)
        reason = spec.unread.get(name)
        raise ValueError(f"{setting.flag} applies to --problem {' or '.join(readers)}, not to "
                         f"{cfg.problem}{f' ({reason})' if reason else ''}; drop "
                         f"{setting.flag} or choose "
                         f"{'that problem' if len(readers) == 1 else 'one of those problems'}")
