"""The Darcy prior's datasets, registered with :mod:`autovae.data` (``--data darcy-grf``).

Squared-exponential GRF log-permeabilities, unit variance, a length scale per field uniform in
[0.1, 0.5] (the latent-MCMC authors' released Darcy case, spec 3.2); the grid size is in the
name (``darcy-grf`` = 16x16), generated on the fly from seed 0 (use ``--likelihood gaussian``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..data import DatasetInfo, _Source, register_dataset

SIZES = ((16, 25000), (8, 25000), (32, 25000), (64, 10000))


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
