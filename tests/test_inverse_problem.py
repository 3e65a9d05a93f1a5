"""The latent inverse problem: misfit, gradient, metrics, bad input, and sampling it end to end.

The decoder is a linear map z -> W z reshaped to (n, n) and the forward model reads the cell
under each point (a linear map H), so phi(z) = 1/2 |(H W z - y) / sigma|^2 by hand.
"""

import math

import numpy as np
import pytest
import torch

from autovae.inverse.mcmc import PCNKernel, run_chains
from autovae.inverse.problem import InverseProblem

N, DIM = 4, 3


def _linear_problem(noise=0.05, noise_kind="relative", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N * N, DIM, generator=g, dtype=torch.float64)
    points = torch.tensor([[0.1, 0.1], [0.6, 0.3], [0.9, 0.9], [0.35, 0.8], [0.55, 0.55]],
                          dtype=torch.float64)
    cols = (points[:, 0] * N).long().clamp(max=N - 1)
    rows = (points[:, 1] * N).long().clamp(max=N - 1)
    H = torch.zeros(len(points), N * N, dtype=torch.float64)
    H[torch.arange(len(points)), rows * N + cols] = 1.0

    def decoder(z):
        return (z @ W.T).reshape(-1, N, N)

    def forward(field, pts):
        return field.reshape(field.shape[0], -1) @ H.T

    z_true = torch.tensor([[0.5, -1.0, 0.8]], dtype=torch.float64)
    data = forward(decoder(z_true), points)[0] + 0.1
    p = InverseProblem(decoder, forward, points, data, noise, noise_kind=noise_kind, dim=DIM,
                       **kw)
    return p, H @ W, data, z_true


def test_phi_and_gradient_match_hand_computation():
    p, G, y, _ = _linear_problem()
    sigma = 0.05 * y.abs()
    assert torch.equal(p.sigma, sigma)
    z = torch.randn(6, DIM, dtype=torch.float64)
    r = (z @ G.T - y) / sigma
    assert torch.allclose(p.phi(z), 0.5 * (r * r).sum(-1), rtol=1e-12, atol=0)
    grad = (r / sigma) @ G  # G' Sigma^-1 (G z - y)
    assert torch.allclose(p.grad_phi(z), grad, rtol=1e-10, atol=1e-10)
    assert torch.allclose(p.potential(z), p.phi(z) + 0.5 * (z * z).sum(-1))
    pa, _, _, _ = _linear_problem(noise=0.2, noise_kind="absolute")
    r = (z @ G.T - y) / 0.2
    assert torch.allclose(pa.phi(z), 0.5 * (r * r).sum(-1), rtol=1e-12, atol=0)
    per_point = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    pp, _, _, _ = _linear_problem(noise=per_point, noise_kind="absolute")
    assert torch.equal(pp.sigma, per_point)


def test_metrics_of_the_spec():
    p, G, y, z_true = _linear_problem()
    truth = p.fields(z_true)[0]
    # at the truth's own latent every metric is exact
    assert p.nsswr(z_true, truth).item() == 1.0
    assert p.ssr_params(z_true, truth).item() == 0.0
    assert p.ssr_obs(z_true).item() == pytest.approx(5 * 0.1**2, rel=1e-12)
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    sigma = 0.05 * y.abs()
    ref = (((y - G @ z_true[0]) / sigma) ** 2).sum()
    want = (((y - z @ G.T) / sigma) ** 2).sum(-1) / ref
    assert torch.allclose(p.nsswr(z, truth), want, rtol=1e-12)
    assert torch.allclose(p.ssr_params(z, truth), ((p.fields(z) - truth) ** 2).sum((1, 2)))
    draws = z_true + torch.tensor([[0.1, 0, 0], [-0.1, 0, 0]], dtype=torch.float64)
    mean, std = p.posterior_fields(draws)
    assert torch.allclose(mean, truth) and torch.allclose(std, p.fields(draws)[0].sub(truth).abs())
    assert InverseProblem.relative_l2(truth * 1.1, truth) == pytest.approx(0.1, rel=1e-12)
    m = p.metrics(draws, truth)
    assert m["rel_l2_mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["draws"] == 2 and m["nsswr"] > 1 and m["ssr_params"] > 0
    assert set(p.metrics(draws)) == {"draws", "ssr_obs"}
    with pytest.raises(ValueError, match="truth has shape"):
        p.ssr_params(z, torch.zeros(8, 8))


def _bad(**override):
    p, _, data, _ = _linear_problem()
    kw = dict(decoder=p.decoder, forward=p.forward, points=p.points, data=data, noise=0.05,
              dim=DIM)
    kw.update(override)
    return InverseProblem(**kw)


@pytest.mark.parametrize("override,match", [
    (dict(data=np.ones(4)), "data has 4 values but points has 5 rows"),
    (dict(noise=0.0), "noise must be positive"),
    (dict(noise=-0.1), "noise must be positive"),
    (dict(noise=math.nan), "noise must be positive"),
    (dict(noise=math.inf), "noise must be positive"),
    (dict(points=[[0.1, 0.1], [0.6, 0.3], [1.2, 0.9], [0.35, 0.8], [0.5, -0.1]]),
     r"points outside the domain \[0, 1\]\^2 \(rows \[2, 4\]"),
    (dict(points=[[0.1, 0.1], [0.6, 0.3], [math.nan, 0.9], [0.35, 0.8], [0.5, 0.5]]),
     "points outside the domain"),
    (dict(points=np.ones((5, 3)) * 0.5), r"points must have shape \(P, 2\)"),
    (dict(data=[1.0, 2.0, math.nan, 1.0, 1.0]), "data holds NaN"),
    (dict(data=[1.0, 0.0, 1.0, 1.0, 1.0]), "zero observations"),
    (dict(noise_kind="percent"), "noise_kind must be 'relative' or 'absolute'"),
    (dict(dim=None), "dim .* must be a positive integer"),
    (dict(grid=(8, 8)), r"the decoder returns fields of shape \(4, 4\) but the forward model "
                        r"expects \(8, 8\)"),
    (dict(decoder=lambda z: torch.zeros(z.shape[0], 1, N, N, dtype=z.dtype)),
     r"the decoder must return fields \(B, n, n\)"),
    (dict(decoder=lambda z: torch.zeros(z.shape[0], 5, 5, dtype=z.dtype)),
     r"the forward model rejects the decoder's fields of shape \(1, 5, 5\)"),
    (dict(forward=lambda f, pts: f.reshape(f.shape[0], -1)[:, :3]),
     r"the forward model must return \(B, P\) = \(1, 5\)"),
    (dict(prior="laplace"), "prior must be 'normal' or a callable"),
])
def test_bad_input_is_a_value_error_naming_it(override, match):
    with pytest.raises(ValueError, match=match):
        _bad(**override)


def test_relative_noise_is_one_fraction():
    with pytest.raises(ValueError, match="relative noise is one fraction"):
        _bad(noise=[0.05] * 5)
    with pytest.raises(ValueError, match="one per point"):
        _bad(noise=[0.05] * 3, noise_kind="absolute")


def test_pcn_on_the_problem_recovers_the_linear_gaussian_posterior(tmp_path):
    p, G, y, _ = _linear_problem(noise=0.5, noise_kind="absolute")
    prec = torch.eye(DIM, dtype=torch.float64) + G.T @ G / 0.25
    cov = torch.linalg.inv(prec)
    mean = (cov @ G.T @ y / 0.25).numpy()
    r = run_chains(p.target(), PCNKernel(), tmp_path / "c", chains=8, warmup=300, samples=3000,
                   seed=0, checkpoint_every=500)
    s = r.summary()
    assert s["rhat_max"] < 1.03 and s["ess_bulk_min"] > 400
    mcse = r.draws.reshape(-1, DIM).std(0) / np.sqrt(s["ess_bulk_min"])
    assert np.all(np.abs(r.draws.reshape(-1, DIM).mean(0) - mean) < 4 * mcse)
    fields_mean, _ = p.posterior_fields(r.draws)
    exact = p.fields(torch.as_tensor(mean)[None])[0]
    assert InverseProblem.relative_l2(fields_mean, exact) < 0.05


def test_a_diverging_problem_stops_with_the_reason_and_keeps_its_draws(tmp_path):
    p, _, _, _ = _linear_problem(noise=0.5, noise_kind="absolute")
    broken = InverseProblem(p.decoder, lambda f, pts: _nan_when_large(p.forward, f, pts),
                            p.points, p.data, 0.5, noise_kind="absolute", dim=DIM)
    with pytest.warns(RuntimeWarning, match="NaN"):
        r = run_chains(broken.target(), PCNKernel(beta=0.9, adapt=False), tmp_path / "c",
                       chains=4, warmup=0, samples=3000, seed=0, checkpoint_every=50,
                       init=torch.zeros(4, DIM))
    assert r.status == "diverged" and "forward model failed" in r.reason
    assert 0 < r.draws.shape[1] < 3000 and np.isfinite(r.draws).all()


def _nan_when_large(forward, field, pts):
    """A forward model that 'fails' (NaN) on fields with a large value, like a solver would."""
    out = forward(field, pts)
    bad = field.abs().amax((1, 2)) > 6
    return torch.where(bad[:, None], torch.full_like(out, math.nan), out)
