"""The inverse problems' prior datasets, registered with :mod:`autovae.data`.

* ``darcy-grf`` (and ``-8``, ``-32``, ``-64``): squared-exponential GRF log-permeabilities,
  unit variance, a length scale per field uniform in [0.1, 0.5] (the latent-MCMC authors'
  released Darcy case, spec 3.2); the grid size is in the name (``darcy-grf`` = 16x16).
* ``aristoff-bangerth-prior``: draws of the Aristoff-Bangerth benchmark's prior as 8 x 8
  one-channel images of phi = ln theta, pixel [by, bx] = block k = bx + 8 * by (so a row-major
  flatten is the benchmark's order). The benchmark's prior is the density exp(-sum(ln theta)^2
  / 8) with respect to d theta (issue 17: literally, no Jacobian dropped), so in phi each
  phi_k is iid N(4, 2^2), *not* N(0, 2^2); these are draws of that, 22,000 (20,000 train,
  1,000 validation, 1,000 test).

All are generated on the fly from seed 0 (the same every call), and are not rescaled: the
values are the log-coefficients themselves, so a decoder trained on them (``--likelihood
gaussian``) outputs log-coefficients directly, and a run prior maps them back with no scaling
to undo (Darcy: log k; Aristoff-Bangerth: theta = exp(decoder)).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..data import DatasetInfo, _Source, register_dataset

SIZES = ((16, 25000), (8, 25000), (32, 25000), (64, 10000))
AB_PRIOR_SD = 2.0  # the benchmark's sd of ln theta in its density w.r.t. d theta
AB_PRIOR_MEAN = AB_PRIOR_SD**2  # the Jacobian's shift: phi ~ N(sd^2, sd^2)
AB_COUNT = 22000


def _load(n: int, count: int, root: Path, download: bool) -> _Source:
    return _Source(fields(n, count), None, None, None, None)


@functools.lru_cache(maxsize=2)
def fields(n: int, count: int) -> np.ndarray:
    """``count`` log-permeability GRF fields (count, 1, n, n), seed 0 (the same every call)."""
    from .grf import grf_fields

    x = grf_fields(count, n, seed=0).numpy()
    x.flags.writeable = False  # shared by every caller through the cache
    return x


for _n, _count in SIZES:
    register_dataset(DatasetInfo(
        f"darcy-grf{'' if _n == 16 else f'-{_n}'}",
        f"log-permeability GRF fields, {_count // 1000}k {_n}x{_n} real-valued (Darcy inverse "
        "problems)", functools.partial(_load, _n, _count), val_size=1000, test_size=1000))


@functools.lru_cache(maxsize=1)
def aristoff_bangerth_prior_fields(count: int = 22000, seed: int = 0) -> np.ndarray:
    """``count`` draws of the Aristoff-Bangerth prior in phi = ln theta, (count, 1, 8, 8)
    float32, pixel [by, bx] = block bx + 8 * by; phi_k iid N(4, 2^2) (the density
    exp(-sum(phi^2) / 8) w.r.t. d theta carries the Jacobian e^phi: -phi^2/8 + phi =
    -(phi - 4)^2/8 + const). Deterministic by ``seed``."""
    x = (AB_PRIOR_MEAN + AB_PRIOR_SD * np.random.default_rng(seed).standard_normal(
        (count, 1, 8, 8))).astype(np.float32)
    x.flags.writeable = False  # shared by every caller through the cache
    return x


def _load_ab(root: Path, download: bool) -> _Source:
    return _Source(aristoff_bangerth_prior_fields(AB_COUNT), None, None, None, None)


register_dataset(DatasetInfo(
    "aristoff-bangerth-prior", "draws of the Aristoff-Bangerth benchmark's prior, 22k 8x8 "
    "real-valued images of ln theta, iid N(4, 2^2) (its density w.r.t. d theta)", _load_ab,
    val_size=1000, test_size=1000))
