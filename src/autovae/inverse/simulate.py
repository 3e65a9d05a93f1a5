"""Simulated data: a chosen truth through any forward model, plus Gaussian noise.

``autovae simulate`` writes the observations that ``autovae invert --data`` reads, for a
forward model of your own (``package.module:Class``), a UM-Bridge model or a built-in one::

    autovae simulate --forward mypackage.models:Heat --truth grf:0 --noise 0.01 --out y.npy \\
        --truth-out truth.npy

The truth is a file of parameters (.npy, or comma-separated text), one number for every
parameter, or ``grf:SEED``: the Gaussian random field that the Darcy problem draws as its truth
for ``--truth-seed SEED`` (for a model whose parameters form a square field). The noise is
N(0, sigma^2) per observation, sigma = ``noise`` (absolute) or ``noise`` x |y| (relative), the
same convention as ``invert --noise --noise-kind``, drawn from ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .forward import ForwardModel

__all__ = ["Simulation", "read_truth", "simulate"]


@dataclass
class Simulation:
    """Noisy observations ``y``, their noise-free values and sigma, and the truth."""

    y: torch.Tensor
    clean: torch.Tensor
    sigma: torch.Tensor
    truth: torch.Tensor


def read_truth(spec: str, forward: ForwardModel) -> torch.Tensor:
    """The truth ``spec`` names (a file, a number, or ``grf:SEED``) in the forward model's
    parameter shape, float64."""
    shape = tuple(forward.param_shape)
    size = math.prod(shape)
    spec = str(spec).strip()
    if spec.startswith("grf:"):
        seed = spec[len("grf:"):]
        if not seed.isdigit():
            raise ValueError(f"--truth {spec}: grf:SEED takes a seed >= 0, e.g. grf:0")
        n = math.isqrt(size)
        if n * n != size or n < 2:
            raise ValueError(f"--truth {spec}: a random field is square, but {forward.name} "
                             f"takes parameters of shape {shape}; give a file or a number")
        from .grf import sample_grf
        from .invert import TRUTH_SEED_OFFSET

        field = sample_grf(1, n, seed=TRUTH_SEED_OFFSET + int(seed))[0].double()
        return field.reshape(shape)
    try:
        value = float(spec)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):
            raise ValueError(f"--truth {spec}: give a finite number, a file or grf:SEED")
        return torch.full(shape, value, dtype=torch.float64)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"--truth {spec}: no such file; give a .npy or comma-separated file of "
                         "parameters, one number for all, or grf:SEED")
    try:
        array = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",",
                                                                       ndmin=1)
        truth = torch.from_numpy(np.asarray(array, dtype=np.float64))
    except (ValueError, OSError) as err:
        raise ValueError(f"--truth {path} is not a numeric .npy or comma-separated text file "
                         f"({str(err).splitlines()[0][:80]})") from None
    if truth.numel() != size:
        raise ValueError(f"--truth {path} holds {truth.numel()} numbers of shape "
                         f"{tuple(truth.shape)}; {forward.name} takes {size} parameters of shape "
                         f"{shape}")
    return truth.reshape(shape)


def simulate(forward: ForwardModel, truth: torch.Tensor, noise: float,
             noise_kind: str = "absolute", seed: int = 0) -> Simulation:
    """y = forward(truth) + N(0, sigma^2): sigma = noise (absolute) or noise |forward(truth)|
    (relative)."""
    if noise_kind not in ("absolute", "relative"):
        raise ValueError(f"--noise-kind {noise_kind!r}: choose absolute or relative")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (
            math.isfinite(noise) and noise > 0):
        raise ValueError(f"--noise must be a positive number (the std, or a fraction of |y| "
                         f"with --noise-kind relative), got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {seed!r}")
    with torch.no_grad():
        clean = forward(truth[None].to(torch.float64))[0].to(torch.float64)
    if not torch.isfinite(clean).all():
        raise ValueError(f"{forward.name} gave non-finite observations at this truth (a failed "
                         "solve); choose another truth")
    sigma = noise * (clean.abs() if noise_kind == "relative" else torch.ones_like(clean))
    if (sigma == 0).any():
        raise ValueError("relative noise is 0 where an observation is 0 (sigma = 0 there); use "
                         "--noise-kind absolute")
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    return Simulation(clean + sigma * eps, clean, sigma, truth)


def write_array(path: Path, values: torch.Tensor) -> None:
    """``values`` as .npy, or as comma-separated text for any other suffix (what
    ``invert --data`` and ``--truth-file`` read), written atomically."""
    from .._files import atomic_write

    array = values.detach().cpu().numpy().astype(np.float64)
    if path.suffix == ".npy":
        atomic_write(path, lambda f: np.save(f, array))
    else:
        atomic_write(path, lambda f: np.savetxt(f, array.reshape(array.shape[0], -1)
                                                if array.ndim > 1 else array, delimiter=","))
