import math

import pytest
import torch
from conftest import as_float, load_vectors
from torch import distributions as td

from autovae.beliefs import FAMILIES, PAIRS, PairKind, family, kl, numerical_kl, pair_info

KL_ENTRIES = load_vectors()["kl"]


def _dist(spec, dtype, requires_grad=False):
    loc = torch.tensor(spec["loc"], dtype=dtype, requires_grad=requires_grad)
    scale = torch.tensor(spec["scale"], dtype=dtype, requires_grad=requires_grad)
    return family(spec["family"], loc, scale)


def _cases(kinds):
    for entry in KL_ENTRIES:
        info = pair_info(entry["q_family"], entry["p_family"])
        if info.kind not in kinds:
            continue
        for i, case in enumerate(entry["cases"]):
            yield pytest.param(case, id=f"{entry['q_family']}-{entry['p_family']}-{i}")


EXACT = (PairKind.CLOSED, PairKind.CONDITIONAL, PairKind.INFINITE)


@pytest.mark.parametrize("case", list(_cases(EXACT)))
def test_exact_pairs_float64(case):
    got = kl(_dist(case["q"], torch.float64), _dist(case["p"], torch.float64)).item()
    want = as_float(case["kl"])
    if math.isinf(want):
        assert got == math.inf
        return
    tol = max(1e-9, 1e-9 * abs(want), 10 * case["abs_err"])
    assert abs(got - want) <= tol, (got, want)


@pytest.mark.parametrize("case", list(_cases(EXACT)))
def test_exact_pairs_float32(case):
    got = kl(_dist(case["q"], torch.float32), _dist(case["p"], torch.float32)).item()
    want = as_float(case["kl"])
    if want > 1e38:  # not representable in float32 (Gumbel-prior cases of 1e43 and up)
        assert got == math.inf
        return
    if math.isinf(want):
        assert got == math.inf
        return
    # float32 inputs such as loc=0.7 carry a 1e-8 rounding that a KL of ~1e3 amplifies
    assert abs(got - want) <= 2e-5 * max(1.0, abs(want)), (got, want)


NUMERICAL = list(_cases((PairKind.NUMERICAL,)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", NUMERICAL)
def test_numerical_pairs_within_1e3(case, dtype):
    got = kl(_dist(case["q"], dtype), _dist(case["p"], dtype)).item()
    want = as_float(case["kl"])
    equal_scale = pair_info(case["q"]["family"], case["p"]["family"]).equal_scale
    if equal_scale and case["q"]["scale"] == case["p"]["scale"]:  # its closed form applies
        tol = 1e-9 if dtype == torch.float64 else 2e-5
        assert abs(got - want) <= tol * max(1.0, abs(want))
    else:
        assert abs(got - want) <= 1e-4 * abs(want), (got, want)  # the issue asks for 1e-3


def test_numerical_estimate_matches_closed_forms():
    """The quadrature is checked on pairs whose answer is known exactly too."""
    for (q_name, p_name), info in PAIRS.items():
        if info.kind is not PairKind.CLOSED or p_name == "laplace":
            continue  # a Laplace prior's kink is interior; no numerical pair has that prior
        q = family(q_name, torch.tensor([0.3, -1.0], dtype=torch.float64),
                   torch.tensor([0.7, 2.0], dtype=torch.float64))
        p = family(p_name, torch.tensor(0.0, dtype=torch.float64),
                   torch.tensor(1.3, dtype=torch.float64))
        torch.testing.assert_close(numerical_kl(q, p), kl(q, p), rtol=1e-4, atol=0)


def test_table_counts_and_reasons():
    kinds = [info.kind for info in PAIRS.values()]
    assert len(PAIRS) == 49
    assert kinds.count(PairKind.CLOSED) == 21
    assert kinds.count(PairKind.CONDITIONAL) == 5
    assert kinds.count(PairKind.NUMERICAL) == 8
    assert kinds.count(PairKind.INFINITE) == 15
    assert "support" in pair_info("normal", "uniform").note
    assert "Cauchy" in pair_info("cauchy", "normal").note
    assert pair_info("Cauchy", "CAUCHY").kind is PairKind.CLOSED
    for entry in KL_ENTRIES:
        info = pair_info(entry["q_family"], entry["p_family"])
        assert (entry["status"] == "infinite") == (info.kind is PairKind.INFINITE)


def test_registered_with_torch_kl_divergence():
    q = family("logistic", torch.tensor([0.1, 0.5]), torch.tensor([0.5, 2.0]))
    for p_name in FAMILIES:
        p = family(p_name, torch.tensor(0.0), torch.tensor(1.0))
        torch.testing.assert_close(torch.distributions.kl_divergence(q, p), kl(q, p))


def test_broadcasting_batch_shapes():
    q = family("normal", torch.zeros(4, 1, 3), torch.ones(4, 1, 3))
    p = family("logistic", torch.zeros(5, 3), torch.full((5, 3), 2.0))
    assert kl(q, p).shape == (4, 5, 3)
    p = family("laplace", torch.zeros(5, 3), torch.full((5, 3), 2.0))
    assert kl(q, p).shape == (4, 5, 3)


MC_PAIRS = [("logistic", "normal"), ("normal", "laplace"), ("uniform", "cauchy"),
            ("gumbel", "laplace"), ("laplace", "cauchy"), ("exponential", "gumbel"),
            ("laplace", "gumbel"), ("normal", "cauchy"), ("cauchy", "cauchy")]


@pytest.mark.parametrize("pair", MC_PAIRS)
def test_monte_carlo_kl_agrees_within_standard_error(pair):
    f64 = torch.float64
    q = family(pair[0], torch.tensor(0.4, dtype=f64), torch.tensor(0.6, dtype=f64))
    p = family(pair[1], torch.tensor(-0.2, dtype=f64), torch.tensor(1.1, dtype=f64))
    n = 400_000
    z = q.sample((n,))
    terms = q.log_prob(z) - p.log_prob(z)
    se = terms.std() / math.sqrt(n)
    assert abs(terms.mean() - kl(q, p)) < 5 * se, (terms.mean().item(), kl(q, p).item())


def _finite_pairs(kinds):
    return [pytest.param(k, id="-".join(k)) for k, info in PAIRS.items() if info.kind in kinds]


@pytest.mark.parametrize("pair", _finite_pairs((PairKind.CLOSED, PairKind.CONDITIONAL)))
def test_gradcheck_closed_forms(pair):
    q_name, p_name = pair
    # interior points of every finite region: posterior nested in / to the right of the prior
    m = torch.tensor([0.3, 1.7, 0.9], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.2, 0.5, 0.4], dtype=torch.float64, requires_grad=True)
    mu = torch.tensor([0.0, 1.0, 0.4], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.0, 3.1, 0.95], dtype=torch.float64, requires_grad=True)
    formula = PAIRS[pair].formula
    assert torch.isfinite(formula(m, s, mu, sigma)).all()
    assert torch.autograd.gradcheck(formula, (m, s, mu, sigma))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pair", _finite_pairs((PairKind.CLOSED, PairKind.CONDITIONAL,
                                                PairKind.NUMERICAL)))
def test_gradients_finite_at_extreme_scales(pair, dtype):
    scales = torch.tensor([1e-3, 1e3], dtype=dtype)
    s, sigma = torch.meshgrid(scales, scales, indexing="ij")
    log_s = s.log().flatten().requires_grad_()
    log_sigma = sigma.log().flatten().requires_grad_()
    m = torch.full((4,), 0.5, dtype=dtype, requires_grad=True)
    mu = torch.zeros(4, dtype=dtype, requires_grad=True)
    q = family(pair[0], m, log_s.exp())
    p = family(pair[1], mu, log_sigma.exp())
    value = kl(q, p)
    finite = torch.isfinite(value)
    if not finite.any():  # e.g. a conditional pair outside its region at every point
        return
    value[finite].sum().backward()
    for t in (m, log_s, mu, log_sigma):  # values that overflowed to inf are excluded
        assert t.grad is None or torch.isfinite(t.grad[finite]).all(), (pair, t.grad)
    assert (value[finite] >= -1e-4 * value[finite].abs().max()).all()


# -- torch interoperability ---------------------------------------------------------------------
TORCH_FAMILIES = {
    "normal": lambda loc, scale: td.Normal(loc, scale),
    "laplace": lambda loc, scale: td.Laplace(loc, scale),
    "cauchy": lambda loc, scale: td.Cauchy(loc, scale),
    "gumbel": lambda loc, scale: td.Gumbel(loc, scale),
    "uniform": lambda loc, scale: td.Uniform(loc - scale, loc + scale),
    "exponential": lambda loc, scale: td.Exponential(1 / scale),  # loc 0 only
}


@pytest.mark.parametrize("ours", sorted(FAMILIES))
@pytest.mark.parametrize("theirs", sorted(TORCH_FAMILIES))
def test_kl_divergence_against_torch_families_both_ways(ours, theirs):
    """kl_divergence(autovae family, torch family) and the reverse equal the KL between the two
    autovae families, to 1e-6 relative (or both infinite)."""
    loc = torch.tensor([0.0, 0.3, -0.2], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64)
    p_loc = torch.zeros(3, dtype=torch.float64) if theirs == "exponential" else loc.flip(0)
    p_scale = scale.flip(0) * 1.5
    q = family(ours, loc, scale)
    p_torch = TORCH_FAMILIES[theirs](p_loc, p_scale)
    _same(td.kl_divergence(q, p_torch), kl(q, family(theirs, p_loc, p_scale)))
    _same(td.kl_divergence(p_torch, q), kl(family(theirs, p_loc, p_scale), q))


def _same(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to 1e-6 relative where finite, infinite at the same places."""
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(got[finite], expected[finite], rtol=1e-6)


def test_logistic_posterior_against_torch_normal_prior():
    q = family("logistic", torch.tensor(0.3), torch.tensor(0.7))
    assert td.kl_divergence(q, td.Normal(0.0, 1.0)).item() == pytest.approx(
        kl(q, family("normal", 0.0, 1.0)).item(), rel=1e-6)
    assert kl(td.Normal(0.0, 1.0), td.Laplace(0.0, 1.0)).item() == pytest.approx(
        kl(family("normal", 0.0, 1.0), family("laplace", 0.0, 1.0)).item(), rel=1e-6)


def test_kl_names_unsupported_torch_distributions():
    with pytest.raises(ValueError, match="q \\(the posterior\\): StudentT is not supported.*"
                                         "torch.distributions.Normal"):
        kl(td.StudentT(3.0), family("normal", 0.0, 1.0))


def test_every_conditional_pair_carries_its_own_finiteness_rule():
    """A LatentSpec keeps each conditional pair finite by the rule stored with the pair, for
    extreme raw encoder outputs too."""
    from autovae.beliefs import LatentSpec

    for (q, p), info in PAIRS.items():
        if info.kind is not PairKind.CONDITIONAL:
            assert info.constrain is None
            continue
        assert info.constrain is not None
        spec = LatentSpec.parse(f"{q}/{p}:3")
        h = torch.tensor([[-30.0, 0.0, 30.0, -30.0, 0.0, 30.0],
                          [30.0, -30.0, 0.0, 30.0, 30.0, -30.0]])
        assert torch.isfinite(spec.kl(spec.posterior(h))).all(), (q, p)
