import math

import pytest
import torch
from conftest import load_vectors

from autovae.bounds import Bound, renyi_bound, renyi_weights

VR = load_vectors()["vr_bound"]


def _alpha(key):
    return float(key)  # "-inf" parses to -inf


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("vector", VR["sets"] + VR["toy_models"], ids=lambda v: v["name"])
def test_vr_bound_vectors(vector, dtype):
    log_w = torch.tensor(vector["log_w"], dtype=dtype).unsqueeze(1)  # (K, batch=1)
    for key, want in vector["bound"].items():
        got = renyi_bound(log_w, _alpha(key)).item()
        if dtype == torch.float64:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), key
        else:
            # float32 log-weights of ~1e3 carry 6e-5 absolute rounding
            assert got == pytest.approx(want, rel=2e-6, abs=1e-5), key
    for key, want in vector.get("normalized_weights", {}).items():
        got = renyi_weights(log_w, _alpha(key)).squeeze(1)
        torch.testing.assert_close(got, torch.tensor(want, dtype=dtype),
                                   rtol=1e-9 if dtype == torch.float64 else 1e-4, atol=1e-12)


def test_toy1_terms_and_analytic_elbo():
    toy = VR["toy_models"][0]
    log_lik = torch.tensor(toy["log_lik"], dtype=torch.float64).unsqueeze(1)
    log_p = torch.tensor(toy["log_prior"], dtype=torch.float64).unsqueeze(1)
    log_q = torch.tensor(toy["log_q"], dtype=torch.float64).unsqueeze(1)
    iwae = Bound(alpha=0, samples=5).estimate(log_lik, log_p, log_q)
    assert iwae.value.item() == pytest.approx(toy["bound"]["0.0"], rel=1e-12)
    kl = torch.tensor([toy["analytic_kl"]], dtype=torch.float64)
    elbo = Bound(alpha=1, samples=5).estimate(log_lik, log_p, log_q, kl=kl)
    assert elbo.value.item() == pytest.approx(log_lik.mean().item() - toy["analytic_kl"])
    sampled = Bound(alpha=1, samples=5, analytic_kl=False).estimate(log_lik, log_p, log_q, kl=kl)
    assert sampled.value.item() == pytest.approx(toy["bound"]["1.0"], rel=1e-12)


def test_identities_on_random_log_weights():
    log_w = torch.randn(7, 50, dtype=torch.float64) * 3 - 20
    alphas = [-math.inf, -50, -1, 0, 0.5, 1 - 1e-7, 1, 1 + 1e-7, 2, 10, math.inf]
    values = torch.stack([renyi_bound(log_w, a) for a in alphas])
    assert (values[1:] <= values[:-1] + 1e-10).all()  # non-increasing in alpha
    # continuity through alpha = 1 (the Taylor branch joins the logsumexp branch)
    for a in (1 - 1e-5, 1 + 1e-5):
        assert torch.allclose(renyi_bound(log_w, a), log_w.mean(0), atol=1e-3)
    near = renyi_bound(log_w, 1 - 2e-6) - renyi_bound(log_w, 1 - 1e-6)
    assert near.abs().max() < 1e-4
    # K = 1: every alpha gives log w
    one = log_w[:1]
    for a in alphas:
        torch.testing.assert_close(renyi_bound(one, a), one[0])
    # equal log-weights: every alpha gives the common value
    same = torch.full((5, 3), -4.2, dtype=torch.float64)
    for a in alphas:
        torch.testing.assert_close(renyi_bound(same, a), same[0])


def test_minus_inf_log_weights():
    log_w = torch.tensor([[-1.0, -math.inf], [-2.0, -math.inf]], dtype=torch.float64)
    assert renyi_bound(log_w, 0.0)[1].item() == -math.inf
    assert renyi_bound(log_w, 1.0)[1].item() == -math.inf
    assert math.isfinite(renyi_bound(log_w, 0.0)[0].item())
    partial = torch.tensor([[-1.0], [-math.inf]], dtype=torch.float64)
    assert renyi_bound(partial, 0.0).item() == pytest.approx(-1 - math.log(2))
    assert renyi_bound(partial, 2.0).item() == -math.inf


def test_gradient_is_the_normalised_weighting():
    log_w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    for alpha in (0.0, 0.5, -1.0, 2.0):
        (grad,) = torch.autograd.grad(renyi_bound(log_w, alpha).sum(), log_w)
        torch.testing.assert_close(grad, renyi_weights(log_w.detach(), alpha))


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        Bound(samples=0)
    with pytest.raises(ValueError, match="beta"):
        Bound(beta=-1)
    with pytest.raises(ValueError, match="alpha is NaN"):
        Bound(alpha=math.nan)


def _toy1_terms(samples, reps):
    """The conjugate Gaussian toy model of the vectors: x = 1.3, z ~ N(0, 1), x | z ~ N(z, 1),
    q = N(0.5, 0.8); exact log p(x) = log N(1.3; 0, sqrt 2)."""
    normal = torch.distributions.Normal
    z = 0.5 + 0.8 * torch.randn(samples, reps, dtype=torch.float64)
    log_lik = normal(z, 1.0).log_prob(torch.tensor(1.3, dtype=torch.float64))
    log_p = normal(0.0, 1.0).log_prob(z)
    log_q = normal(0.5, 0.8).log_prob(z)
    return log_lik, log_p, log_q


def test_iwae_with_one_sample_is_the_single_sample_elbo():
    log_lik, log_p, log_q = _toy1_terms(1, 1000)
    iwae = Bound(alpha=0, samples=1, analytic_kl=False).estimate(log_lik, log_p, log_q)
    elbo = Bound(alpha=1, samples=1, analytic_kl=False).estimate(log_lik, log_p, log_q)
    torch.testing.assert_close(iwae.value, elbo.value)
    torch.testing.assert_close(renyi_bound(log_lik + log_p - log_q, 0.0), elbo.value)


def test_bound_rises_with_k_in_expectation_towards_log_px():
    toy = VR["toy_models"][0]
    means = []
    for k in (1, 5, 50, 500):
        log_lik, log_p, log_q = _toy1_terms(k, 4000)
        means.append(Bound(alpha=0, samples=k).estimate(log_lik, log_p, log_q).value.mean().item())
    assert means[0] == pytest.approx(toy["analytic_elbo"], abs=0.02)
    assert all(b > a for a, b in zip(means, means[1:], strict=False))
    assert means[-1] == pytest.approx(toy["exact_log_px"], abs=2e-3)
    assert means[-1] <= toy["exact_log_px"] + 1e-3


def test_vr_alpha_to_one_tends_to_the_elbo_in_expectation():
    log_lik, log_p, log_q = _toy1_terms(10, 4000)
    elbo = Bound(alpha=1, samples=10, analytic_kl=False).estimate(log_lik, log_p, log_q).value
    prev = None
    for alpha in (0.0, 0.5, 0.9, 0.99, 0.999):
        vr = Bound(alpha=alpha, samples=10).estimate(log_lik, log_p, log_q).value
        gap = (vr - elbo).mean().item()
        assert gap >= 0
        if prev is not None:
            assert gap < prev
        prev = gap
    assert prev < 1e-3


def test_beta_changes_the_surrogate_not_the_value():
    log_lik, log_p, log_q = _toy1_terms(5, 10)
    kl = torch.full((10,), 0.168, dtype=torch.float64)
    for bound in (Bound(alpha=1, samples=5, beta=4.0), Bound(alpha=0.5, samples=5, beta=4.0)):
        plain = Bound(alpha=bound.alpha, samples=5).estimate(log_lik, log_p, log_q, kl=kl)
        beta = bound.estimate(log_lik, log_p, log_q, kl=kl)
        torch.testing.assert_close(beta.value, plain.value)
    vr = Bound(alpha=0.5, samples=5, beta=4.0).estimate(log_lik, log_p, log_q)
    torch.testing.assert_close(vr.surrogate, renyi_bound(log_lik - 4.0 * (log_q - log_p), 0.5))
    elbo = Bound(alpha=1, samples=5, beta=4.0).estimate(log_lik, log_p, log_q, kl=kl)
    torch.testing.assert_close(elbo.surrogate, log_lik.mean(0) - 4.0 * kl)
