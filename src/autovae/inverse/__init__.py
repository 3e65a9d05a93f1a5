"""Bayesian inverse problems: GRF priors and the Darcy forward model (imports nothing else from
autovae)."""

from autovae.inverse.darcy import DarcySolver, darcy_pressure, observation_operator
from autovae.inverse.grf import (
    KLExpansion,
    cell_centres,
    correlation,
    grf_covariance,
    grf_fields,
    sample_grf,
)

__all__ = [
    "DarcySolver",
    "darcy_pressure",
    "observation_operator",
    "KLExpansion",
    "cell_centres",
    "correlation",
    "grf_covariance",
    "grf_fields",
    "sample_grf",
]
