"""Bayesian inverse problems: priors (trained runs, Karhunen-Loeve, explicit), forward models
(Darcy, Aristoff-Bangerth, your own class or a UM-Bridge model), MCMC kernels behind one
contract, a resumable chain runner and ArviZ diagnostics.

Names are imported on first use, so that ``import autovae.inverse.grf`` (the datasets use it)
does not load the samplers and ArviZ.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "AristoffBangerth": "aristoff_bangerth", "reference_posterior": "aristoff_bangerth",
    "BoundaryConditions": "boundary",
    "SBCResult": "calibration", "sbc": "calibration",
    "ChainFolder": "chains", "ChainResult": "chains", "load_chains": "chains",
    "run_chains": "chains",
    "InverseConfig": "config",
    "DarcySolver": "darcy", "darcy_pressure": "darcy", "observation_operator": "darcy",
    "ess": "diagnostics", "load_netcdf": "diagnostics", "rhat": "diagnostics",
    "save_netcdf": "diagnostics", "summary": "diagnostics", "to_inference_data": "diagnostics",
    "ForwardModel": "forward", "regular_points": "forward",
    "AristoffBangerthForward": "forward_models", "DarcyForward": "forward_models",
    "FORWARDS": "forward_models", "load_forward": "forward_models",
    "KarhunenLoeve": "grf", "cell_centres": "grf", "correlation": "grf",
    "grf_covariance": "grf", "grf_fields": "grf", "sample_grf": "grf",
    "InversionResult": "invert", "PROBLEMS": "invert", "invert": "invert",
    "KERNELS": "kernels", "MALAKernel": "kernels", "MCMCKernel": "kernels",
    "NUTSKernel": "kernels", "PCNKernel": "kernels", "RWMKernel": "kernels",
    "Target": "kernels", "make_kernel": "kernels",
    "DecoderPrior": "priors", "ExpPrior": "priors", "LogDensityPrior": "priors", "Prior": "priors",
    "ResidualFieldPrior": "priors",
    "InverseProblem": "problem",
    "UMBridgeForward": "umbridge",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
