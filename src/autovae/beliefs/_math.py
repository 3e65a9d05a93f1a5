"""Constants and small exact helpers shared by the beliefs modules."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

EULER_GAMMA = 0.57721566490153286060651209008240243
LOG2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def softplus(x: Tensor) -> Tensor:
    """Exact, overflow-free log(1 + e^x): no linear cut-off like ``F.softplus``'s threshold."""
    return -F.logsigmoid(-x)


def inverse_softplus(y: float) -> float:
    """Inverse of softplus for a positive python float."""
    if y <= 0:
        raise ValueError(f"inverse softplus needs a positive value, got {y}")
    return y + math.log(-math.expm1(-y))


__all__ = ["EULER_GAMMA", "HALF_LOG_2PI", "LOG2", "inverse_softplus", "softplus"]
