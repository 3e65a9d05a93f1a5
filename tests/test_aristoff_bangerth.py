"""The Aristoff-Bangerth benchmark against its published test vectors (code-gallery MCMC-Laplace),
its adjoint gradient against finite differences, batching, and input checks."""

import math

import numpy as np
import pytest
import torch

from autovae.inverse.aristoff_bangerth import (
    AristoffBangerth,
    published_test_cases,
    reference_posterior,
)

CASES = published_test_cases()


@pytest.fixture(scope="module")
def problem():
    return AristoffBangerth()


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.mark.parametrize("i", range(10))
def test_published_input_output_pairs(problem, i):
    case = CASES[i]
    theta = torch.from_numpy(case["theta"])
    assert _rel(problem.forward(theta).numpy(), case["z"]) < 1e-8
    assert _rel(problem.log_likelihood(theta).item(), case["log_likelihood"]) < 1e-8
    lp = problem.log_prior(theta).item()
    if case["log_prior"] == 0:
        assert lp == 0
    else:
        assert _rel(lp, case["log_prior"]) < 1e-8


def test_known_values(problem):
    ones, tens = torch.ones(64, dtype=torch.float64), torch.full((64,), 10.0, dtype=torch.float64)
    assert problem.log_prior(ones).item() == 0
    assert math.isclose(problem.log_prior(tens).item(), -64 * math.log(10) ** 2 / 8,
                        rel_tol=1e-14)
    # the spec's figure for the Q1 model at the true coefficient
    assert math.isclose(problem.log_likelihood(problem.theta_true).item(), -0.278068441114,
                        rel_tol=1e-10)
    # theta = 10 everywhere: a ten times stiffer membrane, z exactly one tenth
    assert np.allclose(problem.forward(tens).numpy(), problem.forward(ones).numpy() / 10,
                       rtol=1e-13, atol=0)
    assert problem.data.dtype == torch.float64 and problem.data.shape == (169,)
    assert problem.theta_true.shape == (64,) and problem.theta_true[9] == 0.1
    assert problem.theta_true[54] == 10 and problem.theta_true.sum().item() == pytest.approx(96.4)
    assert (problem.sigma, problem.prior_sd, problem.n_params, problem.n_obs) == (0.05, 2.0, 64,
                                                                                 169)


def test_orderings(problem):
    """theta's fast axis is x and z's slow axis is x: stiffening the block column x < 1/8
    lowers u near x = 0 (z[0:13]) far more than near y = 0 (z[0::13])."""
    theta = torch.ones(64, dtype=torch.float64)
    theta[0::8] = 100.0  # blocks bx = 0: the strip x < 1/8
    dz = (problem.forward(torch.ones(64, dtype=torch.float64)) - problem.forward(theta)).numpy()
    assert dz[:13].mean() > 3 * dz[::13].mean()  # 0.164 against 0.036


def test_gradient_matches_finite_differences(problem):
    gen = torch.Generator().manual_seed(0)
    phi = 0.5 * torch.randn(64, generator=gen, dtype=torch.float64)
    theta = phi.exp().requires_grad_(True)
    before = problem.solves
    problem.log_likelihood(theta).backward()
    assert problem.solves - before == 2  # one forward, one adjoint solve
    grad = theta.grad.numpy()
    eps = 1e-5
    for k in (0, 9, 27, 36, 63):
        up, down = theta.detach().clone(), theta.detach().clone()
        up[k] += eps
        down[k] -= eps
        fd = (problem.log_likelihood(up) - problem.log_likelihood(down)).item() / (2 * eps)
        assert fd == pytest.approx(grad[k], rel=1e-5, abs=1e-6 * np.abs(grad).max())


def test_log_density_phi_gradient(problem):
    gen = torch.Generator().manual_seed(1)
    phi = torch.randn(2, 64, generator=gen, dtype=torch.float64).requires_grad_(True)
    # eps 1e-5: the solves' rounding (~1e-11 relative in z) swamps central differences below
    assert torch.autograd.gradcheck(problem.log_density_phi, (phi,), eps=1e-5, atol=1e-4,
                                    rtol=1e-5)
    # the Jacobian: log_density_phi = log_posterior(e^phi) + sum(phi)
    with torch.no_grad():
        diff = problem.log_density_phi(phi) - problem.log_posterior(phi.exp())
    assert torch.allclose(diff, phi.detach().sum(-1), rtol=1e-12, atol=1e-9)


def test_batch_equals_loop(problem):
    thetas = torch.from_numpy(np.stack([c["theta"] for c in CASES[:6]])).reshape(2, 3, 64)
    batch = problem.log_likelihood(thetas)
    assert batch.shape == (2, 3)
    loop = torch.stack([problem.log_likelihood(t) for t in thetas.reshape(6, 64)])
    assert torch.allclose(batch.reshape(6), loop, rtol=1e-13, atol=0)
    z = problem.forward(thetas)
    assert z.shape == (2, 3, 169)
    # batched gradients equal the one-by-one gradients
    x = thetas.reshape(6, 64).clone().requires_grad_(True)
    problem.log_likelihood(x).sum().backward()
    for i in (0, 4):
        xi = thetas.reshape(6, 64)[i].clone().requires_grad_(True)
        problem.log_likelihood(xi).backward()
        assert torch.allclose(x.grad[i], xi.grad, rtol=1e-12, atol=1e-12)


def test_solves_counted(problem):
    before = problem.solves
    problem.forward(torch.ones(5, 64, dtype=torch.float64))
    assert problem.solves - before == 5
    problem.log_prior(torch.ones(5, 64, dtype=torch.float64))  # no PDE
    assert problem.solves - before == 5


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(64, dtype=torch.float64), "> 0"),
    (-torch.ones(64, dtype=torch.float64), "not their logs"),
    (torch.full((64,), float("nan"), dtype=torch.float64), "finite"),
    (torch.full((64,), float("inf"), dtype=torch.float64), "finite"),
    (torch.ones(63, dtype=torch.float64), r"\(\.\.\., 64\)"),
    (torch.tensor(1.0, dtype=torch.float64), r"\(\.\.\., 64\)"),
    (torch.ones(64, dtype=torch.float32), "float64"),
    (np.ones(64), "torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(problem, bad, match):
    for fn in (problem.forward, problem.log_likelihood, problem.log_prior):
        with pytest.raises(ValueError, match=match):
            fn(bad)


def test_bad_phi(problem):
    with pytest.raises(ValueError, match="phi"):
        problem.log_density_phi(torch.full((64,), 800.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="float64"):
        problem.log_density_phi(torch.zeros(64))


def test_fused_log_likelihood_gradient_equals_forward_vjp(problem):
    """log_likelihood's fused value-and-gradient path against autograd through forward()."""
    thetas = torch.from_numpy(np.stack([c["theta"] for c in CASES[3:7]]))
    a = thetas.clone().requires_grad_(True)
    before = problem.solves
    problem.log_likelihood(a).sum().backward()
    assert problem.solves - before == 8  # 4 forward + 4 adjoint solves
    b = thetas.clone().requires_grad_(True)
    z = problem.forward(b)
    (-((z - problem.data) ** 2).sum(-1) / (2 * problem.sigma**2)).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_reference_posterior_is_the_benchmarks():
    """The packaged reference: 64 means with positive MCSE; the data pin the four low blocks
    (theta = 0.1) and the blocks along the lower edge (theta = 1) to their true values."""
    ref = reference_posterior()
    m = np.asarray(ref["log_theta"]["mean"])
    assert m.shape == (64,) and (np.asarray(ref["log_theta"]["mcse"]) > 0).all()
    assert np.abs(m[[9, 10, 17, 18]] - np.log(0.1)).max() < 0.2
    assert np.abs(m[1:7]).max() < 0.25
    assert "R-hat" in ref["source"]


@pytest.mark.parametrize("cells", [16, 32])
def test_the_adjoint_gradient_matches_differences_on_any_mesh(cells):
    from autovae.inverse.aristoff_bangerth import BandedPoissonQ1

    class Mesh(BandedPoissonQ1):
        n_cells = cells

    solver = Mesh()
    rng = np.random.default_rng(cells)
    theta = np.exp(rng.normal(0, 0.5, (3, 64)))
    g_z = rng.normal(size=(3, 169))
    z, state = solver.solve(theta, keep=True)
    grad = solver.vjp(state, g_z)
    for k in (0, 27, 63):
        e = np.zeros(64)
        e[k] = 1e-6
        fd = ((solver.solve(theta + e) - solver.solve(theta - e)) * g_z).sum(-1) / 2e-6
        np.testing.assert_allclose(grad[:, k], fd, rtol=2e-5, atol=1e-8)
