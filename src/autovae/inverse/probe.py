"""A probe of the problem before any chain runs: the forward model at the first start point.

A user's forward model that fails at the prior's first start point, gives NaN there, or says it
has gradients (``gradient = True``) and does not deliver them (an output computed outside torch
autograd; a gradient that is NaN or disagrees with a finite difference) is refused with one line
that names the model and what to change -- before a chain folder is made, instead of a chain
that stops at once or a NUTS run that crawls on a wrong gradient.
"""

from __future__ import annotations

import math

import torch

from .problem import InverseProblem

__all__ = ["probe_problem"]

FD_STEP = 1e-4       # central difference step along a unit direction in z
FD_RTOL = 1e-2       # agreement asked of the gradient and the finite difference


def start_point(dim: int, chains: int, seed: int) -> torch.Tensor:
    """Chain 0's start point as :func:`~autovae.inverse.chains.run_chains` draws it (1, d)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(chains, dim, generator=gen, dtype=torch.float64)[:1]


def probe_problem(problem: InverseProblem, chains: int, seed: int,
                  needs_gradient: bool) -> None:
    """Evaluate ``problem`` at chain 0's start point; a ValueError naming the forward model
    when it gives no finite observations there, or, for a kernel that ``needs_gradient``, when
    its gradient is missing, non-finite, or (for a model not built into autovae) disagrees with
    a central finite difference of the misfit."""
    from .forward_models import FORWARDS

    forward = problem.forward
    who = f"the forward model {forward.name}"
    where = f"at the prior's start point of chain 0 (--seed {seed})"
    z = start_point(problem.dim, chains, seed)
    with torch.no_grad():
        params = problem.params(z)
    if not torch.isfinite(params).all():
        raise ValueError(f"the prior ({problem.prior.describe().get('prior')}) maps the start "
                         f"point of chain 0 (--seed {seed}) to NaN or infinite parameters; "
                         "check the prior (a run's decoder with non-finite weights?)")
    with torch.no_grad():
        pred = problem.predict(z)
    bad = ~torch.isfinite(pred)
    if bad.any():
        raise ValueError(f"{who} returned {int(bad.sum())} NaN or infinite observations (of "
                         f"{pred.shape[1]}) {where}; a chain cannot start there: check the "
                         "model at the prior's parameters (or try another --seed)")
    if not (needs_gradient and forward.gradient):
        return
    zg = z.clone().requires_grad_(True)
    with torch.enable_grad():
        p = problem.params(zg)
        out = forward(p.reshape(len(p), *forward.param_shape))
        if p.requires_grad and not out.requires_grad:
            raise ValueError(
                f"{who} says it has gradients (gradient = True) but its output {where} carries "
                "none: evaluate computes outside torch autograd (numpy, .detach(), "
                "torch.tensor(...)); compute in torch, give an adjoint in a "
                "torch.autograd.Function, or set gradient = False (then --kernel pcn or rwm)")
        phi = problem.phi(zg)
        (g,) = torch.autograd.grad(phi.sum(), zg)
    if not torch.isfinite(g).all():
        raise ValueError(f"{who}'s gradient holds NaN or inf {where}; fix its gradient or set "
                         "gradient = False (then --kernel pcn or rwm)")
    if type(forward) in FORWARDS.values():
        return  # the built-in models' adjoints are tested against finite differences
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v /= v.norm()
    with torch.no_grad():
        up, down = problem.phi(z + FD_STEP * v), problem.phi(z - FD_STEP * v)
    fd = float((up - down) / (2 * FD_STEP))
    ad = float((g * v).sum())
    noise = 100 * 2.2e-16 * abs(float(phi.detach())) / FD_STEP  # the difference's rounding error
    if not math.isfinite(fd) or abs(ad - fd) > FD_RTOL * max(abs(ad), abs(fd)) + noise:
        raise ValueError(f"{who}'s gradient disagrees with a finite difference {where}: the "
                         f"misfit's slope along a random direction is {ad:.6g} by its gradient "
                         f"and {fd:.6g} by a central difference; fix its gradient (its "
                         "backward) or set gradient = False (then --kernel pcn or rwm)")
