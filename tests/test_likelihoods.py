"""Tests for autovae.beliefs.likelihoods (spec gvi-math.md section 5 and section 7 item 8)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from autovae.beliefs.likelihoods import (
    LIKELIHOODS,
    BetaLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_mean,
    likelihood,
    likelihood_names,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "gvi-test-vectors.json").read_text())
CB_NORM = VECTORS["continuous_bernoulli_log_norm"]
NLL_ROWS = VECTORS["likelihood_nll"]

DTYPES = [
    pytest.param(torch.float64, dict(rel=1e-10, abs=1e-12), id="f64"),
    pytest.param(torch.float32, dict(rel=1e-5, abs=1e-6), id="f32"),
]


def _logit(lam: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.logit(torch.tensor([lam], dtype=torch.float64)).to(dtype)


def _t(v: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([v], dtype=dtype)


def _row_nll(row: dict, dtype: torch.dtype) -> float:
    kind = row["likelihood"]
    x = _t(row["x"], dtype)
    if kind in ("bernoulli_bce", "continuous_bernoulli"):
        lik = likelihood("bernoulli" if kind == "bernoulli_bce" else "continuous-bernoulli", (1,))
        out = _logit(row["lambda"], dtype)
    elif kind == "normal":
        lik = likelihood("gaussian", (1,), sigma=row["sigma"])
        out = _t(row["mu"], dtype)
    elif kind == "beta":
        lik = likelihood("beta", (1,), eps=0.0)
        out = lik.out_from_concentrations(
            torch.tensor([row["alpha"]], dtype=torch.float64),
            torch.tensor([row["beta"]], dtype=torch.float64),
        ).to(dtype)
    else:  # pragma: no cover
        raise AssertionError(kind)
    val = lik.nll(x, out)
    assert val.shape == () and val.dtype == dtype
    return float(val)


# --------------------------------------------------------------------------- reference vectors
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("row", NLL_ROWS, ids=lambda r: f"{r['likelihood']}-x{r['x']}")
def test_nll_vectors(row, dtype, tol):
    assert _row_nll(row, dtype) == pytest.approx(row["nll"], **tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("row", CB_NORM, ids=lambda r: f"lam{r['lambda']}")
def test_cb_log_norm_vectors(row, dtype, tol):
    for eta in (_logit(row["lambda"], dtype), _t(row["logit"], dtype)):
        log_c = continuous_bernoulli_log_norm(eta)
        assert log_c.dtype == dtype
        assert float(log_c) == pytest.approx(row["log_C"], **tol)
        assert float(log_c.exp()) == pytest.approx(row["C"], **tol)
        assert float(continuous_bernoulli_log_norm(-eta)) == pytest.approx(row["log_C"], **tol)


def test_cb_log_norm_continuous_at_series_cutover():
    # both branches agree with log(eta / tanh(eta / 2)) (accurate in float64 away from 0)
    for eta0 in (1e-2 * (1 - 1e-7), 1e-2 * (1 + 1e-7), 5e-3, 2e-2):
        want = math.log(eta0) - math.log(math.tanh(eta0 / 2))
        got = continuous_bernoulli_log_norm(torch.tensor([eta0, -eta0], dtype=torch.float64))
        torch.testing.assert_close(
            got, torch.tensor([want, want], dtype=torch.float64), rtol=1e-15, atol=0
        )
        got32 = continuous_bernoulli_log_norm(torch.tensor([eta0], dtype=torch.float32))
        assert float(got32) == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------- continuous Bernoulli
CB_LOGITS = [0.0, 1e-3, -1e-3, 1e-2, 0.05, -0.3, 1.0, 5.0, -5.0, 15.0, -15.0]


def _quadrature(n: int = 200):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    x = torch.tensor(0.5 * (nodes + 1.0), dtype=torch.float64)
    w = torch.tensor(0.5 * weights, dtype=torch.float64)
    return x, w


def test_cb_density_integrates_to_one_and_mean_matches():
    lik = likelihood("continuous_bernoulli", (1,))
    x, w = _quadrature()
    eta = torch.tensor(CB_LOGITS, dtype=torch.float64)
    # x: (N, 1) against out: (L, 1, 1) -> (L, N)
    dens = lik.log_prob(x[:, None], eta[:, None, None]).exp()
    assert dens.shape == (len(CB_LOGITS), x.numel())
    total = (dens * w).sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=1e-12, atol=1e-12)
    quad_mean = (dens * w * x).sum(-1)
    mean = lik.mean(eta[:, None]).squeeze(-1)
    torch.testing.assert_close(mean, quad_mean, rtol=1e-11, atol=1e-12)
    # float32 path too (looser)
    dens32 = lik.log_prob(x[:, None].float(), eta[:, None, None].float()).exp().double()
    torch.testing.assert_close((dens32 * w).sum(-1), torch.ones_like(total), rtol=2e-5, atol=2e-5)
    mean32 = lik.mean(eta[:, None].float()).squeeze(-1).double()
    torch.testing.assert_close(mean32, quad_mean, rtol=1e-5, atol=2e-6)


def test_cb_mean_continuous_at_series_cutover():
    # jump across |eta| = 0.1 equals slope * step (slope = m'(0.1) ~ 1/12 - 0.1^2/240)
    step = 2e-10
    eta = torch.tensor([0.1 - step / 2, 0.1 + step / 2], dtype=torch.float64)
    m = continuous_bernoulli_mean(eta)
    slope = 1 / 12 - 0.1**2 / 240 + 0.1**4 / 6048
    assert abs(float(m[1] - m[0]) - slope * step) < 1e-14
    assert float(continuous_bernoulli_mean(torch.zeros(1))) == 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cb_gradient_finite_and_equals_x_minus_mean(dtype):
    # d/d eta log p(x | eta) = x - E[x]  (exponential family with sufficient statistic x)
    lik = likelihood("continuous-bernoulli", (1,))
    eta = torch.tensor([0.0, 1e-8, -1e-3, 1e-2, -1e-2, 0.1, 15.0, -15.0, 40.0, -40.0], dtype=dtype)
    eta = eta[:, None].requires_grad_(True)
    x = torch.full_like(eta, 0.3).detach()
    lik.log_prob(x, eta).sum().backward()
    assert torch.isfinite(eta.grad).all()
    expected = (x - continuous_bernoulli_mean(eta.detach())).double()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(eta.grad.double(), expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- Gaussian / Laplace
@pytest.mark.parametrize("cls", [GaussianLikelihood, LaplaceLikelihood])
@pytest.mark.parametrize("mode", ["shared", "pixel"])
def test_learned_scale_shapes_gradients_floor(cls, mode):
    event = (2, 3)
    lik = cls(event, learn_scale=mode, scale=0.5, min_scale=1e-2)
    expected_shape = () if mode == "shared" else event
    assert lik.raw_scale.shape == expected_shape
    assert [p.shape for p in lik.parameters()] == [torch.Size(expected_shape)]
    torch.testing.assert_close(lik.scale, torch.full(expected_shape, 0.5))
    x, out = torch.randn(4, *event), torch.randn(4, *event, requires_grad=True)
    lik.log_prob(x, out).sum().backward()
    assert lik.raw_scale.grad is not None and torch.isfinite(lik.raw_scale.grad).all()
    assert out.grad is not None
    with torch.no_grad():
        lik.raw_scale.fill_(-1e4)
    assert (lik.scale >= 1e-2).all()
    assert torch.isfinite(lik.log_prob(x, out)).all()


def test_sigma_aliases_and_fixed_scale():
    g = likelihood("normal", (3,), learn_sigma="pixel", sigma=2.0, min_sigma=0.1)
    assert g.learn_scale == "pixel" and g.min_scale == 0.1
    torch.testing.assert_close(g.sigma, torch.full((3,), 2.0))
    lap = likelihood("laplace", (3,), scale=2.0)
    assert list(lap.parameters()) == [] and float(lap.scale) == 2.0
    x, mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    want = sum(math.log(4.0) + abs(v) / 2.0 for v in x.tolist())
    assert float(lap.nll(x, mu)) == pytest.approx(want, rel=1e-14)
    with pytest.raises(ValueError, match="either"):
        likelihood("gaussian", (3,), sigma=1.0, scale=1.0)
    with pytest.raises(ValueError, match="learn_scale"):
        likelihood("gaussian", (3,), learn_sigma="bogus")
    with pytest.raises(ValueError, match="min_scale"):
        likelihood("gaussian", (3,), learn_sigma="shared", sigma=1e-4)


@pytest.mark.parametrize("cls", [GaussianLikelihood, LaplaceLikelihood])
def test_pixel_scale_gradient_step_reduces_nll(cls):
    gen = torch.Generator().manual_seed(0)
    true_scale = torch.tensor([0.05, 0.3, 1.0, 3.0])
    x = torch.randn(256, 4, generator=gen) * true_scale
    loc = torch.zeros(4)
    lik = cls((4,), learn_scale="pixel")
    opt = torch.optim.SGD(lik.parameters(), lr=1e-3)
    before = lik.nll(x, loc).mean()
    before.backward()
    opt.step()
    after = lik.nll(x, loc).mean()
    assert float(after.detach()) < float(before.detach())


# --------------------------------------------------------------------------- Beta
def test_beta_matches_torch_distribution_on_interior():
    gen = torch.Generator().manual_seed(1)
    lik = BetaLikelihood((5,), eps=1e-3)
    alpha = torch.rand(7, 5, generator=gen, dtype=torch.float64) * 5 + 0.1
    beta = torch.rand(7, 5, generator=gen, dtype=torch.float64) * 5 + 0.1
    x = torch.rand(7, 5, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    out = lik.out_from_concentrations(alpha, beta)
    assert out.shape == (7, 10)
    a2, b2 = lik.concentrations(out)
    torch.testing.assert_close(a2, alpha, rtol=1e-12, atol=1e-12)
    ref = torch.distributions.Beta(alpha, beta).log_prob(x).sum(-1)
    torch.testing.assert_close(lik.log_prob(x, out), ref, rtol=1e-12, atol=1e-12)


def test_beta_exact_zero_one_rule():
    x = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    lik = likelihood("beta", (3,), eps=1e-3)
    assert lik.eps == 1e-3
    lik.validate(x)  # legal with eps > 0: clamped to [eps, 1 - eps]
    out = lik.out_from_concentrations(
        torch.full((3,), 0.7, dtype=torch.float64), torch.full((3,), 2.5, dtype=torch.float64)
    )
    clamped = torch.tensor([1e-3, 1 - 1e-3, 0.5], dtype=torch.float64)
    lp = lik.log_prob(x, out)
    assert torch.isfinite(lp)
    torch.testing.assert_close(lp, lik.log_prob(clamped, out), rtol=0, atol=0)
    strict = likelihood("beta", (3,), eps=0.0)
    with pytest.raises(ValueError, match="eps > 0"):
        strict.validate(x)
    strict.validate(clamped)


# --------------------------------------------------------------------------- broadcasting
ALL = [
    ("bernoulli", {}),
    ("continuous_bernoulli", {}),
    ("gaussian", {"sigma": 0.3}),
    ("gaussian", {"learn_sigma": "pixel"}),
    ("laplace", {"learn_scale": "shared"}),
    ("beta", {}),
]


@pytest.mark.parametrize("name,opts", ALL, ids=lambda v: str(v))
def test_broadcast_k_samples_matches_loop(name, opts):
    event = (2, 3, 4)
    lik = likelihood(name, event, **opts)
    K, B = 3, 5
    out = torch.randn(K, B, *lik.out_event_shape, dtype=torch.float64)
    x = torch.rand(B, *event, dtype=torch.float64)
    lik = lik.double()
    lp = lik.log_prob(x, out)
    assert lp.shape == (K, B)
    loop = torch.stack([lik.log_prob(x, out[k]) for k in range(K)])
    torch.testing.assert_close(lp, loop, rtol=1e-13, atol=1e-13)
    assert lik(x, out).shape == (K, B)


# --------------------------------------------------------------------------- validate
def test_validate_errors_have_hints():
    ev = (2, 2)
    ok = torch.full(ev, 0.5)
    for name in LIKELIHOODS:
        lik = likelihood(name, ev)
        lik.validate(ok)
        bad_nan = ok.clone()
        bad_nan[0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            lik.validate(bad_nan)
        bad_inf = ok.clone()
        bad_inf[1, 1] = float("-inf")
        with pytest.raises(ValueError, match="inf"):
            lik.validate(bad_inf)
        with pytest.raises(ValueError, match="event_shape"):
            lik.validate(torch.full((2, 3), 0.5))
        with pytest.raises(ValueError, match="event_shape"):
            lik.log_prob(torch.full((2,), 0.5), torch.zeros(*lik.out_event_shape))
        with pytest.raises(ValueError, match="decoder"):
            lik.log_prob(ok, torch.zeros(3, 2))
    for name in ("bernoulli", "continuous-bernoulli", "beta"):
        lik = likelihood(name, ev)
        for bad in (ok * 255.0, ok - 1.0):
            with pytest.raises(ValueError, match=r"scale the data to \[0, 1\]"):
                lik.validate(bad)
    for name in ("gaussian", "laplace"):
        likelihood(name, ev).validate(ok * 255.0)  # any real value is fine


def test_factory_names():
    assert likelihood_names() == [
        "bernoulli",
        "continuous-bernoulli",
        "gaussian",
        "laplace",
        "beta",
    ]
    for name in ("Continuous-Bernoulli", "CONTINUOUS_BERNOULLI", "cb"):
        assert likelihood(name, 4).name == "continuous-bernoulli"
    assert likelihood("Normal", (4,)).name == "gaussian"
    assert likelihood("beta", (4,)).num_params == 2
    assert likelihood("bernoulli", (4,)).num_params == 1
    with pytest.raises(ValueError, match="valid names: bernoulli, continuous-bernoulli"):
        likelihood("poisson", (4,))
    with pytest.raises(ValueError, match="event_shape"):
        likelihood("bernoulli", ())
    assert "eps=0.001" in repr(likelihood("beta", (4,)))


# --------------------------------------------------------------------------- mean / sample
@pytest.mark.parametrize("name,opts", ALL, ids=lambda v: str(v))
def test_mean_and_sample_support_and_shape(name, opts):
    torch.manual_seed(0)
    event = (1, 4, 4)
    lik = likelihood(name, event, **opts)
    out = torch.randn(6, *lik.out_event_shape) * 4.0
    out[0] = 0.0
    out[1] = 30.0
    out[2] = -30.0
    m, s = lik.mean(out), lik.sample(out)
    assert m.shape == s.shape == (6, *event)
    assert torch.isfinite(m).all() and torch.isfinite(s).all()
    assert not s.requires_grad
    if name in ("bernoulli", "continuous_bernoulli", "beta"):
        for t in (m, s):
            assert ((t >= 0) & (t <= 1)).all()
        lik.validate(s)
    if name == "bernoulli":
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    if name in ("gaussian", "laplace"):
        torch.testing.assert_close(m, out)


def test_cb_sample_mean_matches():
    torch.manual_seed(0)
    lik = likelihood("continuous_bernoulli", (1,))
    eta = torch.tensor([0.0, 5e-4, -0.5, 3.0, -15.0, 100.0], dtype=torch.float64)
    out = eta[:, None].expand(len(eta), 40000).unsqueeze(-1)
    s = lik.sample(out).squeeze(-1)
    assert ((s >= 0) & (s <= 1)).all()
    # standard error of the sample mean is <= 0.29 / 200
    torch.testing.assert_close(s.mean(1), continuous_bernoulli_mean(eta), rtol=0, atol=6e-3)
