"""The batched kernel on a device (issue 24 item 4). No GPU is lent to the tests, so the CUDA
path is driven on the CPU: ``run_chains(device=...)`` given explicitly, float32 and float64,
a torch forward model, every tensor of ChEES's state on the start points' device and dtype,
and no tensor created in its hot loop without the state's device."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from autovae.inverse import ForwardModel, run_chains
from autovae.inverse.chees import ChEESKernel
from autovae.inverse.contract import Target

D = 3


class Linear(ForwardModel):
    """y = A x, in the parameters' dtype and on their device."""

    name = "linear"
    param_shape, n_obs = (D,), 5

    def __init__(self):
        super().__init__()
        self.A = torch.randn(5, D, generator=torch.Generator().manual_seed(7),
                             dtype=torch.float64)

    def evaluate(self, params):
        return params @ self.A.to(params).T


def _target(dtype):
    model = Linear()
    y = torch.randn(5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    s = 0.7

    def phi(z):
        r = (model(z) - y.to(z)) / s
        return 0.5 * (r * r).sum(-1)

    cov = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + model.A.T @ model.A / s**2)
    return Target(phi, D, dtype=dtype, solves=lambda: model.solves), \
        (cov @ model.A.T @ y / s**2).numpy()


class _Factories(TorchFunctionMode):
    """Tensor factories called from chees.py without a device (they would make CPU tensors
    next to a CUDA state), other than the draws from the chains' CPU generator."""

    FACTORIES = {torch.ones, torch.zeros, torch.full, torch.empty, torch.randn, torch.rand,
                 torch.tensor, torch.arange, torch.eye, torch.as_tensor}

    def __init__(self):
        super().__init__()
        self.undeviced = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1).f_code.co_filename
        # a draw from the chains' CPU generator is moved to the device at once (_normal)
        if func in self.FACTORIES and caller.endswith("chees.py") \
                and "device" not in kwargs and "generator" not in kwargs:
            self.undeviced.append(f"{func.__name__} at line {sys._getframe(1).f_lineno}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chees_keeps_its_state_on_the_start_points_device_and_dtype(tmp_path, dtype):
    target, mean = _target(dtype)
    r = run_chains(target, "chees", tmp_path / "c", chains=16, warmup=150, draws=150, seed=3,
                   checkpoint_every=50, device="cpu")
    assert r.complete and r.draws.dtype == (np.float32 if dtype == torch.float32 else np.float64)
    state = torch.load(tmp_path / "c" / "state.pt", weights_only=True)["kernel"]
    floats = {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    assert set(floats) >= {"z", "u", "grad", "inv_mass", "w_mean", "w_m2"}
    for key, v in floats.items():
        assert v.dtype == dtype and v.device == torch.device("cpu"), key
    flat = r.draws.reshape(-1, D).astype(np.float64)
    mcse = flat.std(0) / np.sqrt(r.summary()["ess_bulk_min"])
    assert np.all(np.abs(flat.mean(0) - mean) < 5 * mcse)
    if dtype == torch.float64:  # the device given or not: the same bits
        again = run_chains(_target(dtype)[0], "chees", tmp_path / "d", chains=16, warmup=150,
                           draws=150, seed=3, checkpoint_every=50)
        assert np.array_equal(again.draws, r.draws)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chees_creates_no_tensor_off_the_state_device_in_its_hot_loop(dtype):
    target, _ = _target(dtype)
    kernel = ChEESKernel()
    z0 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=dtype)
    kernel.setup(target, z0, seed=0, warmup=20)
    gen = torch.Generator().manual_seed(1)
    with _Factories() as mode:
        for _ in range(12):  # warm-up: the leapfrog loop, the adaptation, the mass windows
            out = kernel.sample(target, gen, adapting=True)
        q, p, u, g, alpha, diverging = kernel._leapfrog(target, torch.ones_like(z0), 0.1, 3)
    # only the per-iteration statistics, kept on the CPU to be stored, have no device
    assert all(any(f"line {n}" in c for n in _stat_lines()) for c in mode.undeviced), \
        mode.undeviced
    for t in (q, p, u, g, alpha, out["accept_prob"], kernel.state["inv_mass"]):
        assert t.dtype == dtype and t.device == z0.device


def _stat_lines() -> set[int]:
    """The lines of ChEESKernel.sample that build its CPU statistics."""
    import inspect

    lines, start = inspect.getsourcelines(ChEESKernel.sample)
    return {start + i for i, line in enumerate(lines) if "torch.full((c,)" in line
            or "torch.zeros(c, dtype=torch.bool)" in line}
