"""The inverse problem: misfit, gradient, cost counting, metrics and calibration, bad input,
and sampling it end to end, on a linear-Gaussian problem whose posterior is exact.

The prior maps z -> W z reshaped to (n, n) and the forward model reads the cell under each
point (a linear map H), so phi(z) = 1/2 |(H W z - y) / sigma|^2 by hand.
"""

import math

import numpy as np
import pytest
import torch

from autovae.inverse import (
    ForwardModel,
    InverseProblem,
    MALAKernel,
    PCNKernel,
    Prior,
    load_forward,
    run_chains,
)

N, DIM = 4, 3
POINTS = torch.tensor([[0.1, 0.1], [0.6, 0.3], [0.9, 0.9], [0.35, 0.8], [0.55, 0.55]],
                      dtype=torch.float64)


class LinearPrior(Prior):
    """z ~ N(0, I) -> W z as an (N, N) field."""

    def __init__(self, seed=0):
        self.W = torch.randn(N * N, DIM, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
        self.dim, self.param_shape = DIM, (N, N)

    def params(self, z):
        return (z.to(torch.float64) @ self.W.T).reshape(-1, N, N)

    def describe(self):
        return {"prior": "linear", "dim": DIM}


class CellReader(ForwardModel):
    """The cell value under each point: a linear forward model, differentiable by autograd."""

    name = "cell-reader"

    def __init__(self, fail_above: float = math.inf):
        super().__init__()
        cols = (POINTS[:, 0] * N).long().clamp(max=N - 1)
        rows = (POINTS[:, 1] * N).long().clamp(max=N - 1)
        self.H = torch.zeros(len(POINTS), N * N, dtype=torch.float64)
        self.H[torch.arange(len(POINTS)), rows * N + cols] = 1.0
        self.param_shape, self.n_obs = (N, N), len(POINTS)
        self.fail_above = fail_above

    def evaluate(self, params):
        out = params.reshape(params.shape[0], -1) @ self.H.T
        bad = params.abs().amax((1, 2)) > self.fail_above  # a solver that fails there
        return torch.where(bad[:, None], torch.full_like(out, math.nan), out)


def _problem(noise=0.05, noise_kind="relative"):
    prior, forward = LinearPrior(), CellReader()
    z_true = torch.tensor([[0.5, -1.0, 0.8]], dtype=torch.float64)
    data = forward(prior.params(z_true))[0] + 0.1
    forward.solves = 0
    return InverseProblem(prior, forward, data, noise, noise_kind), forward.H @ prior.W, data, \
        z_true


def test_phi_gradient_and_solves_match_hand_computation():
    p, G, y, _ = _problem()
    sigma = 0.05 * y.abs()
    assert torch.equal(p.sigma, sigma)
    z = torch.randn(6, DIM, dtype=torch.float64)
    r = (z @ G.T - y) / sigma
    assert torch.allclose(p.phi(z), 0.5 * (r * r).sum(-1), rtol=1e-12, atol=0)
    assert p.forward.solves == 6  # one forward solve per parameter set
    grad = (r / sigma) @ G  # G' Sigma^-1 (G z - y)
    assert torch.allclose(p.grad_phi(z), grad, rtol=1e-10, atol=1e-10)
    assert p.forward.solves == 6 + 6 + 6  # a gradient: one forward and one adjoint each
    assert torch.allclose(p.potential(z), p.phi(z) + 0.5 * (z * z).sum(-1))
    pa, _, _, _ = _problem(noise=0.2, noise_kind="absolute")
    r = (z @ G.T - y) / 0.2
    assert torch.allclose(pa.phi(z), 0.5 * (r * r).sum(-1), rtol=1e-12, atol=0)


def test_metrics_and_calibration():
    p, G, y, z_true = _problem()
    truth = p.params(z_true)[0]
    draws = z_true + torch.tensor([[0.1, 0, 0], [-0.1, 0, 0]], dtype=torch.float64)
    mean, sd, _ = p.posterior_params(draws)
    assert torch.allclose(mean, truth)
    assert torch.allclose(sd, p.params(draws)[0].sub(truth).abs())
    m = p.metrics(draws, truth)
    assert m["rel_l2_mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["coverage_1sd"] == 1.0 and m["coverage_2sd"] == 1.0 and m["nsswr"] > 1
    # a posterior far from the truth covers little of it
    off = p.calibration(draws + 10.0, truth)
    assert off["coverage_2sd"] < 0.5 and off["coverage_95"] < 0.5
    # draws from N(truth, 1) per parameter: coverage near the nominal levels
    gen = torch.Generator().manual_seed(0)
    many = torch.randn(20000, DIM, generator=gen, dtype=torch.float64)
    c = p.calibration(many, p.params(torch.randn(1, DIM, generator=gen,
                                                 dtype=torch.float64))[0])
    assert set(c) == {"coverage_1sd", "coverage_2sd", "coverage_50", "coverage_90",
                      "coverage_95"}


@pytest.mark.parametrize("make,match", [
    (lambda p, y: InverseProblem(p.prior, p.forward, np.ones(4), 0.05),
     "data has 4 values but the forward model cell-reader gives 5"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, 0.0), "noise must be positive"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, -0.1), "noise must be positive"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, math.nan), "noise must be positive"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, math.inf), "noise must be positive"),
    (lambda p, y: InverseProblem(p.prior, p.forward, [1.0, 2.0, math.nan, 1.0, 1.0], 0.1),
     "data holds NaN"),
    (lambda p, y: InverseProblem(p.prior, p.forward, [1.0, 0.0, 1.0, 1.0, 1.0], 0.1,
                                 "relative"), "zero observations"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, 0.1, "percent"),
     "noise_kind must be 'relative' or 'absolute'"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, [0.05] * 5, "relative"),
     "relative noise is one fraction"),
    (lambda p, y: InverseProblem(p.prior, p.forward, y, [0.05] * 3, "absolute"),
     "one per observation"),
    (lambda p, y: InverseProblem("normal", p.forward, y, 0.1), "prior must be"),
    (lambda p, y: InverseProblem(p.prior, lambda x: x, y, 0.1), "forward must be"),
    (lambda p, y: p.forward(torch.zeros(2, 5, 5)), r"must have shape \(B, 4, 4\)"),
    (lambda p, y: p.forward(torch.full((1, N, N), math.nan)), "NaN or inf"),
])
def test_bad_input_is_a_value_error_naming_it(make, match):
    p, _, y, _ = _problem()
    with pytest.raises(ValueError, match=match):
        make(p, y)


def test_a_prior_of_another_shape_is_refused():
    p, _, y, _ = _problem()

    class Wide(LinearPrior):
        def __init__(self):
            super().__init__()
            self.param_shape = (8, 8)

    with pytest.raises(ValueError, match=r"prior's parameters have shape \(8, 8\)"):
        InverseProblem(Wide(), p.forward, y, 0.1)


def test_a_python_forward_model_by_import_path():
    model = load_forward("test_inverse_problem:CellReader")
    assert isinstance(model, CellReader) and model.n_obs == 5
    for spec, match in [("no_such_module_xyz:Model", "cannot import no_such_module_xyz"),
                        ("test_inverse_problem:Missing", "has no Missing"),
                        ("test_inverse_problem:LinearPrior", "not a subclass of"),
                        ("laplace", "unknown forward model 'laplace'")]:
        with pytest.raises(ValueError, match=match):
            load_forward(spec)


def _exact(p, G, y, s2):
    prec = torch.eye(DIM, dtype=torch.float64) + G.T @ G / s2
    cov = torch.linalg.inv(prec)
    return (cov @ G.T @ y / s2).numpy(), cov.numpy()


@pytest.mark.parametrize("kernel", [PCNKernel(), MALAKernel(step_size=0.2)], ids=["pcn", "mala"])
def test_kernels_recover_the_linear_gaussian_posterior(tmp_path, kernel):
    p, G, y, _ = _problem(noise=0.5, noise_kind="absolute")
    mean, cov = _exact(p, G, y, 0.25)
    r = run_chains(p.target(), kernel, tmp_path / "c", chains=8, warmup=300, draws=3000,
                   seed=0, checkpoint_every=500)
    s = r.summary()
    assert s["rhat_max"] < 1.03 and s["ess_bulk_min"] > 400 and s["converged"]
    flat = r.draws.reshape(-1, DIM)
    mcse = flat.std(0) / np.sqrt(s["ess_bulk_min"])
    assert np.all(np.abs(flat.mean(0) - mean) < 4 * mcse)
    assert np.allclose(flat.std(0), np.sqrt(np.diag(cov)), rtol=0.1)
    # costs: one solve per pCN step; a forward and an adjoint per MALA step, and for each of
    # MALA's three Gauss-Newton preconditioners a forward and 5 adjoints (one per datum)
    steps = 8 * (300 + 3000 + 1)
    assert s["solves"] == (steps if kernel.name == "pcn" else 2 * steps + 3 * 8 * (1 + 5))
    assert s["ess_per_1000_solves"] == pytest.approx(1000 * s["ess_bulk_min"] / s["solves"])


def test_a_failing_forward_model_stops_the_chain_and_keeps_its_draws(tmp_path):
    p, _, y, _ = _problem(noise=0.5, noise_kind="absolute")
    broken = InverseProblem(p.prior, CellReader(fail_above=6), y, 0.5)
    with pytest.warns(RuntimeWarning, match="NaN"):
        r = run_chains(broken.target(), PCNKernel(step_size=0.9, adapt=False), tmp_path / "c",
                       chains=4, warmup=0, draws=3000, seed=0, checkpoint_every=50,
                       init=torch.zeros(4, DIM))
    assert r.status == "diverged" and "forward model failed" in r.reason
    assert 0 < r.draws.shape[1] < 3000 and np.isfinite(r.draws).all()


class FusedCellReader(CellReader):
    """CellReader with a fused misfit and gradient, as a solver with an adjoint would give."""

    def misfit_and_grad(self, params, data, sigma):
        self.fused_calls = getattr(self, "fused_calls", 0) + 1
        r = (params.reshape(len(params), -1) @ self.H.T - data) / sigma
        self.solves += 2 * len(params)
        return 0.5 * (r * r).sum(-1), ((r / sigma) @ self.H).reshape(params.shape)


def test_a_fused_misfit_and_gradient_is_used_where_a_gradient_is_taken():
    p, _, y, _ = _problem()
    fused = InverseProblem(p.prior, FusedCellReader(), y, 0.05, "relative")
    z = torch.randn(6, DIM, dtype=torch.float64)
    z[2] = math.nan  # a NaN row: NaN potential there, the others unaffected
    target, plain = fused.target(), p.target()
    u, g = target.potential_and_grad(z)
    assert fused.forward.fused_calls == 1 and fused.forward.solves == 2 * 5  # 5 valid rows
    u0, g0 = plain.potential_and_grad(z)
    ok = torch.arange(6) != 2
    assert torch.isnan(u[2]) and torch.isnan(u0[2])
    assert torch.allclose(u[ok], u0[ok], rtol=1e-12, atol=0)
    assert torch.allclose(g[ok], g0[ok], rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # values only: the plain forward solve
        assert torch.allclose(fused.phi(z[ok]), p.phi(z[ok]), rtol=1e-12, atol=0)
    assert fused.forward.fused_calls == 1


def test_aristoff_bangerth_fused_gradient_equals_autograd_through_the_model():
    from autovae.inverse.config import InverseConfig
    from autovae.inverse.problems import PROBLEMS

    for prior in ("benchmark", "lognormal"):
        problem = PROBLEMS["aristoff-bangerth"](InverseConfig.from_dict(
            {"problem": "aristoff-bangerth", "prior": prior})).problem
        z = 0.3 * torch.randn(5, 64, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)
        z[1, :32], z[1, 32:] = 300.0, -300.0  # a factorisation that fails (below)
        z[3, 0] = 800.0  # exp overflows
        target, forward = problem.target(), problem.forward
        solver = forward.benchmark._solver

        def refuse_huge(theta, factor=solver._factor):  # as dpbtrf does past double precision
            if np.abs(theta).max() > 1e100:
                raise ValueError("not numerically positive definite")
            return factor(theta)

        solver._factor = refuse_huge
        u, g = target.potential_and_grad(z)
        fused_solves = forward.solves
        forward.misfit_and_grad = lambda *a: None  # autograd through the model
        u0, g0 = target.potential_and_grad(z)
        assert forward.solves - fused_solves == fused_solves == 2 * 4  # row 3 never solved
        ok = torch.tensor([True, False, True, False, True])
        assert torch.isnan(u[~ok]).all() and torch.isnan(u0[~ok]).all()
        assert torch.allclose(u[ok], u0[ok], rtol=1e-13, atol=0)
        assert torch.allclose(g[ok], g0[ok], rtol=1e-11, atol=1e-9)
