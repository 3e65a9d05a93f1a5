"""Bayesian inverse problems: priors (trained runs, Karhunen-Loeve, explicit), forward models
(Darcy, Aristoff-Bangerth, your own class or a UM-Bridge model), MCMC kernels behind one
contract, a resumable chain runner and ArviZ diagnostics.

Names are imported on first use, so that ``import autovae.inverse.grf`` (the datasets use it)
does not load the samplers and ArviZ; the ``TYPE_CHECKING`` block names them for IDEs and type
checkers. ``autovae.inverse.invert`` is the function (its module is ``inversion``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time names load on first use
    from .aristoff_bangerth import AristoffBangerth, reference_posterior
    from .boundary import BoundaryConditions
    from .calibration import SBCResult, sbc
    from .chains import ChainFolder, ChainResult, load_chains, run_chains
    from .config import InverseConfig
    from .darcy import DarcySolver, darcy_pressure, observation_operator
    from .diagnostics import ess, load_netcdf, rhat, save_netcdf, summary, to_inference_data
    from .forward import ForwardModel, regular_points
    from .forward_models import FORWARDS, AristoffBangerthForward, DarcyForward, load_forward
    from .grf import (
        KarhunenLoeve,
        cell_centres,
        correlation,
        grf_covariance,
        grf_fields,
        sample_grf,
    )
    from .inversion import InversionResult, invert
    from .kernels import (
        KERNELS,
        MALAKernel,
        MCMCKernel,
        NUTSKernel,
        PCNKernel,
        RWMKernel,
        Target,
        kernel_options,
        make_kernel,
    )
    from .priors import DecoderPrior, ExpPrior, LogDensityPrior, Prior, ResidualFieldPrior
    from .problem import InverseProblem
    from .problems import PROBLEMS, ProblemSpec
    from .umbridge import UMBridgeForward

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
    "InversionResult": "inversion", "invert": "inversion",
    "PROBLEMS": "problems", "ProblemSpec": "problems",
    "KERNELS": "kernels", "MALAKernel": "kernels", "MCMCKernel": "kernels",
    "NUTSKernel": "kernels", "PCNKernel": "kernels", "RWMKernel": "kernels",
    "Target": "kernels", "kernel_options": "kernels", "make_kernel": "kernels",
    "DecoderPrior": "priors", "ExpPrior": "priors", "LogDensityPrior": "priors", "Prior": "priors",
    "ResidualFieldPrior": "priors",
    "InverseProblem": "problem",
    "UMBridgeForward": "umbridge",
}

__all__ = ["AristoffBangerth", "AristoffBangerthForward", "BoundaryConditions", "ChainFolder",
           "ChainResult", "DarcyForward", "DarcySolver", "DecoderPrior", "ExpPrior", "FORWARDS",
           "ForwardModel", "InverseConfig", "InverseProblem", "InversionResult", "KERNELS",
           "KarhunenLoeve", "LogDensityPrior", "MALAKernel", "MCMCKernel", "NUTSKernel",
           "PCNKernel", "PROBLEMS", "Prior", "ProblemSpec", "RWMKernel", "ResidualFieldPrior",
           "SBCResult", "Target", "UMBridgeForward", "cell_centres", "correlation",
           "darcy_pressure", "ess", "grf_covariance", "grf_fields", "invert", "kernel_options",
           "load_chains", "load_forward", "load_netcdf", "make_kernel", "observation_operator",
           "reference_posterior", "regular_points", "rhat", "run_chains", "sample_grf",
           "save_netcdf", "sbc", "summary", "to_inference_data"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
