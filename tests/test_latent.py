import math

import pytest
import torch
from conftest import load_vectors

from autovae.beliefs import Block, LatentSpec, family, kl

TOY2 = load_vectors()["vr_bound"]["toy_models"][1]


def test_parse_sizes_and_fractions():
    spec = LatentSpec.parse("logistic/normal:14, cauchy/cauchy:6")
    assert [(b.posterior, b.prior, b.size) for b in spec.blocks] == [
        ("logistic", "normal", 14), ("cauchy", "cauchy", 6)]
    assert spec.dim == 20 and spec.encoder_outputs == 40
    frac = LatentSpec.parse("70% logistic/normal, 30% cauchy/cauchy", dim=20)
    assert str(frac) == str(spec) == "logistic/normal:14,cauchy/cauchy:6"
    # largest remainder: 33.3/33.3/33.4 of 10 -> 3/3/4, always adding up to dim
    third = LatentSpec.parse("33.3% normal/normal, 33.3% laplace/laplace, 33.4% gumbel/gumbel",
                             dim=10)
    assert [b.size for b in third.blocks] == [3, 3, 4]
    assert LatentSpec.parse("Normal/Normal", dim=8).dim == 8


@pytest.mark.parametrize("text, dim, message", [
    ("", None, "empty latent spec"),
    ("normal-normal:3", None, "malformed latent block"),
    ("normal/normal:x", None, "positive integer size"),
    ("normal/normal:0", None, "positive integer size"),
    ("normal/normal", None, "has no size"),
    ("normal/normal:3,laplace/laplace:2", 6, "add up to 5 dimensions but dim=6"),
    ("60% normal/normal, 30% laplace/laplace", 10, "add up to 90%"),
    ("70% normal/normal, laplace/laplace:3", 10, "mix of sizes and percentages"),
    ("99% normal/normal, 1% laplace/laplace", 10, "rounds to 0 dimensions"),
    ("50% normal/normal, 50% laplace/laplace", None, "needs the total dim"),
    ("student/normal:3", None, "unknown family 'student'; valid families are"),
    ("cauchy/normal:3", None, "pair cauchy/normal has KL = \\+inf.*divergent moment"),
    ("normal/uniform:3", None, "pair normal/uniform has KL = \\+inf.*support mismatch"),
])
def test_bad_specs_are_clear_errors(text, dim, message):
    with pytest.raises(ValueError, match=message):
        LatentSpec.parse(text, dim=dim)


def test_encoder_output_width_checked():
    spec = LatentSpec.parse("normal/normal:3")
    with pytest.raises(ValueError, match="needs 2 \\* 3 = 6"):
        spec.posterior(torch.zeros(2, 5))


def _spec_and_posterior(text="logistic/normal:3,cauchy/cauchy:2,uniform/laplace:2", batch=5):
    spec = LatentSpec.parse(text).double()
    h = torch.randn(batch, spec.encoder_outputs, dtype=torch.float64)
    return spec, spec.posterior(h), h


def test_log_densities_and_kl_match_a_per_dimension_computation():
    spec, q, h = _spec_and_posterior()
    z = spec.rsample(q, samples=4)
    assert z.shape == (4, 5, 7)
    families = ["logistic"] * 3 + ["cauchy"] * 2 + ["uniform"] * 2
    priors = ["normal"] * 3 + ["cauchy"] * 2 + ["laplace"] * 2
    loc = h[:, :7]
    scale = torch.nn.functional.softplus(h[:, 7:]) + spec.min_scale
    log_q = log_p = kl_sum = 0
    for j in range(7):
        qj = family(families[j], loc[:, j], scale[:, j])
        pj = family(priors[j], torch.tensor(0.0, dtype=torch.float64),
                    torch.tensor(1.0, dtype=torch.float64))
        log_q = log_q + qj.log_prob(z[..., j])
        log_p = log_p + pj.log_prob(z[..., j])
        kl_sum = kl_sum + kl(qj, pj)
    torch.testing.assert_close(spec.log_q(q, z), log_q)
    torch.testing.assert_close(spec.log_p(z), log_p)
    torch.testing.assert_close(spec.kl(q), kl_sum)
    assert len(spec.kl_blocks(q)) == 3


def test_toy2_inhomogeneous_vectors():
    """Logistic->Normal on dim 0, Cauchy->Cauchy on dim 1, fixed quantiles u (vectors)."""
    spec = LatentSpec.parse("logistic/normal:1,cauchy/cauchy:1").double()
    q = [family("logistic", torch.tensor([0.2], dtype=torch.float64),
                torch.tensor([0.6], dtype=torch.float64)),
         family("cauchy", torch.tensor([-0.1], dtype=torch.float64),
                torch.tensor([0.3], dtype=torch.float64))]
    u = torch.tensor([s["u"] for s in TOY2["samples"]], dtype=torch.float64)
    z = torch.stack([q[0].icdf(u[:, 0]), q[1].icdf(u[:, 1])], dim=-1)
    want_z = torch.tensor([s["z"] for s in TOY2["samples"]], dtype=torch.float64)
    torch.testing.assert_close(z, want_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        spec.log_q(q, z), torch.tensor([s["log_q"] for s in TOY2["samples"]], dtype=torch.float64))
    torch.testing.assert_close(
        spec.log_p(z), torch.tensor([s["log_prior"] for s in TOY2["samples"]],
                                    dtype=torch.float64))
    assert spec.kl(q).item() == pytest.approx(TOY2["analytic_kl_sum"], rel=1e-12)


@pytest.mark.parametrize("pair", ["laplace/gumbel", "logistic/gumbel", "uniform/uniform",
                                  "uniform/exponential", "exponential/exponential"])
def test_conditional_pairs_stay_finite_for_any_encoder_output(pair):
    spec = LatentSpec.parse(f"{pair}:4", learn_prior=True)
    h = (torch.randn(64, 8) * 30).requires_grad_()  # wildly out-of-range raw outputs
    q = spec.posterior(h)
    value = spec.kl(q)
    assert torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(h.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in spec.parameters())
    z = spec.rsample(q, 3)
    assert torch.isfinite(spec.log_p(z)).all()  # draws stay inside the prior's support


def test_learnable_prior_gets_gradients_and_fixed_prior_is_a_buffer():
    learned = LatentSpec.parse("normal/normal:2,logistic/normal:3", learn_prior=True)
    q = learned.posterior(torch.randn(4, 10))
    learned.kl(q).sum().backward()
    grads = [p.grad for p in learned.parameters()]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)
    fixed = LatentSpec([Block("normal", "normal", 2, prior_loc=1.0, prior_scale=2.0)])
    assert list(fixed.parameters()) == []
    loc, scale = fixed.prior_params(0)
    assert loc.tolist() == [1.0, 1.0] and scale.tolist() == pytest.approx([2.0, 2.0])
    assert set(fixed.state_dict()) == {"prior_loc_0", "prior_log_scale_0"}


def test_prior_samples_follow_each_block():
    spec = LatentSpec.parse("uniform/uniform:2,exponential/exponential:1")
    z = spec.sample_prior(10_000)
    assert z.shape == (10_000, 3)
    assert z[:, :2].abs().max() <= 1 and z[:, 2].min() >= 0
    assert abs(z[:, 2].mean().item() - 1.0) < 0.05


def test_monte_carlo_kl_of_a_heterogeneous_spec_agrees_with_kl():
    spec, q, _ = _spec_and_posterior("logistic/normal:3,cauchy/cauchy:2,normal/logistic:2",
                                     batch=3)
    z = spec.rsample(q, samples=200_000)
    terms = spec.log_q(q, z) - spec.log_p(z)
    se = terms.std(0) / math.sqrt(terms.shape[0])
    assert ((terms.mean(0) - spec.kl(q)).abs() < 5 * se).all()
