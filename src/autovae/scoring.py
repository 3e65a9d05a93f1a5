"""What an NLL is measured on: the test data it scores, and the floor a Bernoulli NLL cannot pass.

A Bernoulli likelihood is a pmf on {0, 1}. Scored on grey levels x in (0, 1) (the "BCE" use),
its NLL is bounded below by the data's own Bernoulli entropy, ``sum_pixels H(x)`` with
``H(x) = -x log x - (1 - x) log(1 - x)``: even a model that predicts every grey level exactly
pays it. On Fashion-MNIST's test set that floor is 189.86 nats per image, so only the part of
an NLL above it is reducible, and a gain is best read as a share of that part. Numbers on grey
levels cannot be set beside the binarised-MNIST literature; :func:`binarized_test_set` gives the
comparable test set (one Bernoulli draw per pixel, fixed by a seed, the IWAE paper's protocol).

>>> bernoulli_entropy_floor(torch.tensor([[0.5, 0.0, 1.0]]))   # log 2 for the 0.5 pixel
0.6931471805599453
>>> describe_test_data(torch.tensor([[0.0, 1.0]]), binarized_seed=3)
'binarised (fixed draw, seed 3)'
"""

from __future__ import annotations

import torch

__all__ = ["bernoulli_entropy_floor", "binarized_test_set", "describe_test_data",
           "reducible_share"]


def bernoulli_entropy_floor(x: torch.Tensor, batch_size: int = 1000) -> float:
    """The lowest NLL a Bernoulli likelihood can reach on ``x`` (in [0, 1]): the mean over data
    points of ``sum_pixels H(x)`` in nats (0 for binary data), computed in float64."""
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        p = x[start:start + batch_size].double().flatten(1)
        h = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
        total += h.sum().item()
    return total / x.shape[0]


def _range(x: torch.Tensor) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def binarized_test_set(x: torch.Tensor, seed: int, name: str = "the data") -> torch.Tensor:
    """One Bernoulli draw of every grey level of ``x`` with a generator seeded by ``seed``: the
    same binary test set for every model, whatever its own seed. Refuses data outside [0, 1]."""
    lo, hi = _range(x)
    if not (0.0 <= lo and hi <= 1.0):  # also NaN
        raise ValueError(f"test_binarize: {name}'s test set has values in [{lo:.4g}, {hi:.4g}], "
                         "not grey levels in [0, 1], so it has no binarisation; leave "
                         "test_binarize out for real-valued data (e.g. darcy-grf with "
                         "--likelihood gaussian), or scale the data to [0, 1] first")
    g = torch.Generator(device=x.device).manual_seed(int(seed))
    return torch.bernoulli(x.float(), generator=g)


def describe_test_data(x: torch.Tensor, binarized_seed: int | None = None,
                       static_seed: int | None = None, dequantized: int | None = None) -> str:
    """A short label for what an NLL on ``x`` is measured on: the fixed binarisation and its
    seed, a static binarisation (drawn with the run's own seed), the fixed dequantisation of
    ``dequantized`` levels (:func:`autovae.data.dequantize`), binary data, grey levels in
    [0, 1], or real values."""
    if dequantized is not None:
        return f"dequantised from {dequantized} levels (fixed draw), a density on (0, 1)"
    if binarized_seed is not None:
        return f"binarised (fixed draw, seed {binarized_seed})"
    if static_seed is not None:
        return f"binarised (static, seed {static_seed}, which follows the run's seed)"
    lo, hi = _range(x)
    if bool(((x == 0) | (x == 1)).all()):
        return "binary data"
    if 0.0 <= lo and hi <= 1.0:
        return "grey levels in [0, 1]"
    return "real values"


def reducible_share(gain: float, baseline_nll: float, floor: float) -> float:
    """``gain`` as a share of the baseline's reducible part, ``baseline_nll - floor``.

    >>> reducible_share(1.0, 240.0, 190.0)
    0.02
    """
    reducible = baseline_nll - floor
    return gain / reducible if reducible > 0 else float("nan")
