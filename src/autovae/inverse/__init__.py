"""Bayesian inverse problems: GRF priors, the Darcy forward model (these two import nothing
else from autovae), latent-space MCMC, ArviZ diagnostics and the inverse problem."""

from autovae.inverse.darcy import DarcySolver, darcy_pressure, observation_operator
from autovae.inverse.diagnostics import (
    ess,
    load_netcdf,
    rhat,
    save_netcdf,
    summary,
    to_inference_data,
)
from autovae.inverse.grf import (
    KLExpansion,
    cell_centres,
    correlation,
    grf_covariance,
    grf_fields,
    sample_grf,
)
from autovae.inverse.mcmc import (
    ChainResult,
    NUTSKernel,
    PCNKernel,
    RWMKernel,
    Target,
    load_chains,
    make_kernel,
    run_chains,
)
from autovae.inverse.problem import InverseProblem, KLDecoder, RunDecoder, run_prior

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
    "ChainResult",
    "NUTSKernel",
    "PCNKernel",
    "RWMKernel",
    "Target",
    "load_chains",
    "make_kernel",
    "run_chains",
    "ess",
    "load_netcdf",
    "rhat",
    "save_netcdf",
    "summary",
    "to_inference_data",
    "InverseProblem",
    "KLDecoder",
    "RunDecoder",
    "run_prior",
]
