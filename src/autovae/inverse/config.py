"""InverseConfig: every setting of an inversion, in one place.

The ``autovae invert`` flags and the keys of its config file (``--config``, YAML/TOML/JSON) are
generated from these fields and checked here; the record is saved in the chain folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .boundary import DEFAULT_BC, BoundaryConditions

__all__ = ["InverseConfig", "RENAMED"]


def _f(default, help: str, choices: tuple | None = None, least: float | None = None,
       positional: bool = False):
    return field(default=default, metadata={"help": help, "choices": choices, "least": least,
                                            "positional": positional})


@dataclass(frozen=True)
class InverseConfig:
    """Settings of one inversion (see ``autovae invert --help``)."""

    run: str | None = _f(None, "a trained run whose decoder (or generator) and latent prior "
                         "are the prior (--prior run)", positional=True)
    problem: str = _f("darcy", "the inverse problem: darcy (the latent-MCMC authors' released "
                      "Darcy case, spec 3.2), aristoff-bangerth (the SIAM Review 2023 benchmark), "
                      "or custom (your --forward with your --data)",
                      choices=("darcy", "aristoff-bangerth", "custom"))
    prior: str | None = _f(None, "run (the run's decoder and latent prior), kle (Karhunen-Loeve "
                           "expansion of the GRF) or benchmark (aristoff-bangerth's own prior); "
                           "default: run with a run folder, else kle (darcy) or benchmark",
                           choices=("run", "kle", "benchmark"))
    residual: int = _f(0, "terms of a Gaussian residual field added to a run prior (darcy, "
                       "aristoff-bangerth), its covariance fitted to what the decoder's draws "
                       "miss of the problem's prior covariance (the GRF's; 2^2 I in ln theta): "
                       "calibrated uncertainty from a VAE prior (0: none)", least=0)
    forward: str | None = _f(None, "forward model: darcy, aristoff-bangerth, "
                             "package.module:Class or umbridge:http://host:port/name "
                             "(default: the problem's)")
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
    kernel: str | None = _f(None, "MCMC kernel: pcn, rwm, mala, nuts or chees (ChEES-HMC, all "
                            "chains in one batch; default: pcn for a N(0, I) prior, else nuts)",
                            choices=("pcn", "rwm", "mala", "nuts", "chees"))
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
    jobs: int = _f(1, "workers for the rows of a batch: threads for darcy and "
                   "aristoff-bangerth, requests in flight for a UM-Bridge model, a model's "
                   "own choice for package.module:Class (parallel_rows); the draws do not "
                   "depend on it", least=1)
    forward_timeout: float | None = _f(None, "seconds a UM-Bridge request may take before the "
                                       "run stops (resumable; default 600)", least=0)
    out: str | None = _f(None, "chain folder (default RUN/invert-KERNEL-SEED with a run, else "
                         "runs/invert/PROBLEM-PRIOR-KERNEL-SEED)")
    device: str | None = _f(None, "device to load the run on")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        if self.target_accept is not None and not 0 < self.target_accept < 1:
            raise ValueError(f"--target-accept must lie in (0, 1), got {self.target_accept!r}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"--step-size must be positive, got {self.step_size!r}")
        from .parallel import check_jobs

        check_jobs(self.jobs)
        if self.forward_timeout is not None and self.forward_timeout <= 0:
            raise ValueError(f"--forward-timeout must be a positive number of seconds, got "
                             f"{self.forward_timeout!r}")
        if self.noise is not None and self.noise <= 0:
            raise ValueError(f"--noise must be positive (e.g. 0.05), got {self.noise!r}")
        # one spelling, written out in full: the record reads the same however it was given
        object.__setattr__(self, "bc", str(BoundaryConditions.parse(self.bc)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InverseConfig:
        """A config from keys (hyphens or underscores), refusing unknown or renamed keys."""
        clean = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name in RENAMED:
                raise ValueError(f"invert setting {key!r} is now {RENAMED[name]!r}")
            if name not in FIELDS:
                close = difflib.get_close_matches(name, list(FIELDS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown invert setting {key!r}{hint}")
            clean[name] = value
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> InverseConfig:
        """A config file's keys, with ``overrides`` (the flags given) winning."""
        from ..config import read_config_file

        values = dict(read_config_file(Path(path)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(InverseConfig)}
RENAMED = {"samples": "draws", "sampler": "kernel"}  # old invert spellings, refused by name


def _coerce(f: dataclasses.Field, value):
    name = "--" + f.name.replace("_", "-")
    tp = typing.get_type_hints(InverseConfig)[f.name]
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if not optional:
            raise ValueError(f"{name} cannot be empty")
        return None
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    elif base is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    elif not isinstance(value, str):
        if isinstance(value, Path):
            value = str(value)
        else:
            raise ValueError(f"{name} must be a string, got {value!r}")
    choices, least = f.metadata["choices"], f.metadata["least"]
    if choices and value not in choices:
        old = {"kl": "kle"}.get(value)
        hint = f"; did you mean {old!r}?" if old in choices else ""
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}{hint}")
    if least is not None and value < least:
        raise ValueError(f"{name} must be >= {least:g}, got {value!r}")
    return value
