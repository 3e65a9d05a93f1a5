"""Memory bounds of an inversion, checked before anything is allocated.

Every setting that scales memory (``--chains``, ``--draws``, ``--grid``, ``--dim``, ``--points``,
``--truth-resolution``, ``--residual``) has an estimate of the bytes it makes the inversion
hold; :func:`check_memory` refuses settings whose total exceeds this machine's memory with one
line naming the largest part, its bytes and what to lower -- the check ``build_model`` does for
networks (:func:`autovae.models.check_model_size`). The estimates are upper-end orders of
magnitude (dense float64 arrays and their working copies), not measurements.
"""

from __future__ import annotations

import math

__all__ = ["chain_bytes", "field_bytes"]

F64 = 8
STATS = 16           # per-draw statistics a kernel records beside the draw (upper end)
COPIES = 3           # the draws in memory, in the summary's arrays and in posterior.nc's writer
METRIC_DRAWS = 400   # draws the summary's predictions are evaluated on at once
EIGH_COPIES = 3      # a dense covariance, its eigenvectors and LAPACK's workspace


def dense_covariance_bytes(cells: int) -> int:
    """A dense (cells, cells) float64 covariance with its eigendecomposition."""
    return EIGH_COPIES * F64 * cells * cells


def solve_bytes(cells: int) -> int:
    """A sparse LU factorisation of a 5-point operator on ``cells`` unknowns (fill-in of order
    cells * log2(cells), 10 nonzeros each of 16 bytes: an upper-end estimate)."""
    return 160 * cells * max(1, math.ceil(math.log2(max(cells, 2))))


def field_bytes(grid: int | None = None, dim: int | None = None, points: int | None = None,
                truth_resolution: int | None = None, residual: int = 0, kle: bool = True,
                dense_points: bool = False, points_text: str | None = None) -> dict[str, int]:
    """Bytes by setting of what an inversion builds before its chains: the KLE prior's (or a
    residual field's) dense covariance on ``grid`` x ``grid`` cells, the observation points'
    arrays (predictions of :data:`METRIC_DRAWS` draws, a dense observation matrix with a
    source field), and the truth's GRF draw and solve at ``truth_resolution``."""
    parts: dict[str, int] = {}
    if grid is not None:
        cells = grid * grid
        parts[f"--grid {grid}"] = (dense_covariance_bytes(cells) if kle or residual else 0) \
            + 4 * solve_bytes(cells)
        if dim is not None:
            parts[f"--dim {dim}"] = 4 * F64 * dim * cells
    if points is not None:
        cells = grid * grid if grid else 1
        label = f"--points {points_text or points}" + (
            f" ({points:,} points)" if points_text not in (None, str(points)) else "")
        parts[label] = points * (2 * F64 + F64 * METRIC_DRAWS * 4 + 64) + (
            F64 * points * cells if dense_points else 0)
    if truth_resolution is not None:
        cells = truth_resolution * truth_resolution
        parts[f"--truth-resolution {truth_resolution}"] = 256 * cells + solve_bytes(cells)
    return parts


def chain_bytes(chains: int, draws: int, dim: int, param_size: int = 0, n_obs: int = 0,
                dense_metric: bool = False) -> dict[str, int]:
    """Bytes by setting of the chains: the kept draws with their statistics (``chains`` x
    ``draws`` x (dim + :data:`STATS`) float64, :data:`COPIES` times), and each chain's working
    state (its point, parameters and predictions; a d x d metric for a dense preconditioner)."""
    stored = COPIES * F64 * chains * draws * (dim + STATS)
    state = F64 * chains * (4 * dim + 4 * param_size + 4 * n_obs
                            + (2 * dim * dim if dense_metric else 0))
    return {f"--chains {chains} x --draws {draws} (the kept draws)": stored,
            f"--chains {chains} (each chain's state)": state}
