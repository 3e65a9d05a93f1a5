import math

import pytest
import torch
from conftest import load_vectors

from autovae.beliefs import FAMILIES, family

LOGPDF = load_vectors()["logpdf"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logpdf_vectors(dtype):
    worst = 0.0
    for row in LOGPDF:
        d = family(row["family"], torch.tensor(row["loc"], dtype=dtype),
                   torch.tensor(row["scale"], dtype=dtype))
        got = d.log_prob(torch.tensor(row["x"], dtype=dtype)).item()
        want = -math.inf if row["logpdf"] in ("-inf", None) else float(row["logpdf"])
        if math.isinf(want):
            assert got == want, row
            continue
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        err = abs(got - want) / max(1.0, abs(want))
        worst = max(worst, err)
        assert err <= tol, (row, got)
    assert worst < (1e-12 if dtype == torch.float64 else 2e-6)


def test_names_are_case_insensitive_and_unknown_names_list_valid_ones():
    assert type(family("LoGiStIc", 0.0, 1.0)).__name__ == "Logistic"
    with pytest.raises(ValueError, match="valid families are: normal, laplace"):
        family("student", 0.0, 1.0)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_bad_scale_is_a_clear_error(scale):
    with pytest.raises(ValueError, match="scale must be positive and finite"):
        family("normal", 0.0, scale)


def test_bad_loc_is_a_clear_error():
    with pytest.raises(ValueError, match="loc must be finite"):
        family("cauchy", math.nan, 1.0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_icdf_inverts_cdf_and_density_is_cdf_derivative(name):
    d = family(name, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    u = torch.linspace(0.01, 0.99, 41, dtype=torch.float64)
    x = d.icdf(u)
    torch.testing.assert_close(d.cdf(x), u, rtol=0, atol=1e-12)
    x = x.requires_grad_()
    (grad,) = torch.autograd.grad(d.cdf(x).sum(), x)
    torch.testing.assert_close(grad, d.log_prob(x).exp().detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_samples_match_moments_and_entropy(name):
    d = family(name, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    n = 200_000
    x = d.rsample((n,))
    # entropy = E[-log q]: the sample mean is within 5 standard errors
    nll = -d.log_prob(x)
    assert abs(nll.mean() - d.entropy()) <= 5 * nll.std() / math.sqrt(n) + 1e-12
    if name == "cauchy":
        # median and quartiles instead of moments
        q = torch.quantile(x[:100_000], torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype))
        torch.testing.assert_close(q, torch.tensor([-0.4, 0.3, 1.0], dtype=x.dtype), atol=0.02,
                                   rtol=0)
        return
    assert abs(x.mean() - d.mean) < 5 * x.std() / math.sqrt(n)
    assert abs(x.var() / d.variance - 1) < 0.03
    assert torch.isfinite(d.log_prob(x)).all()  # every draw lies in the support


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("scale", [1e-3, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rsample_gradients_finite_at_extreme_scales(name, scale, dtype):
    loc = torch.zeros(1000, dtype=dtype, requires_grad=True)
    log_scale = torch.full((1000,), math.log(scale), dtype=dtype, requires_grad=True)
    d = family(name, loc, log_scale.exp())
    z = d.rsample((4,))
    lp = d.log_prob(z)
    assert torch.isfinite(z).all() and torch.isfinite(lp).all()
    (z.pow(2).mean() + lp.sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


def test_support_and_outside_values():
    u = family("uniform", torch.tensor(1.0), torch.tensor(0.5))
    assert u.log_prob(torch.tensor(1.6)).item() == -math.inf
    assert u.log_prob(torch.tensor(1.4)).item() == pytest.approx(-math.log(1.0))
    assert (u.low.item(), u.high.item()) == (0.5, 1.5)
    e = family("exponential", torch.tensor(2.0), torch.tensor(0.5))
    assert e.log_prob(torch.tensor(1.99)).item() == -math.inf
    assert e.rate.item() == 2.0
    assert e.support.check(torch.tensor(2.0))


def test_agrees_with_torch_families():
    x = torch.linspace(-5, 5, 21, dtype=torch.float64)
    D = torch.distributions
    pairs = [
        (family("normal", 0.5, 2.0), D.Normal(0.5, 2.0)),
        (family("laplace", 0.5, 2.0), D.Laplace(0.5, 2.0)),
        (family("cauchy", 0.5, 2.0), D.Cauchy(0.5, 2.0)),
        (family("gumbel", 0.5, 2.0), D.Gumbel(0.5, 2.0)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.log_prob(x.float()), theirs.log_prob(x.float()))
        torch.testing.assert_close(ours.entropy(), theirs.entropy())


def test_expand_and_batch_shapes():
    d = family("logistic", torch.zeros(3), torch.ones(3)).expand((2, 3))
    assert d.batch_shape == (2, 3)
    assert d.rsample((5,)).shape == (5, 2, 3)
