"""Location Fisher information, score estimator, entropy power, Stam's bound, Fisher penalty."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from autovae.beliefs.families import FAMILIES, family
from autovae.beliefs.fisher import (
    AUTHORS_SCORE_CLAMP,
    LOCATION_FISHER,
    check_fisher,
    entropy_power,
    fisher_information_available,
    fisher_penalty,
    fisher_shannon,
    location_fisher,
    posterior_fisher,
    posterior_fisher_shannon,
    score_fisher,
    score_squared,
)
from autovae.beliefs.latent import LatentSpec

EULER = 0.57721566490153286061
I_F = {"normal": 1.0, "laplace": 1.0, "cauchy": 0.5, "logistic": 1 / 3, "gumbel": 1.0}
CLOSED = list(I_F)
REFUSED = ["uniform", "exponential"]
SCIPY = {"normal": stats.norm, "laplace": stats.laplace, "cauchy": stats.cauchy,
         "logistic": stats.logistic, "gumbel": stats.gumbel_r}
LOC_SCALE = [(0.0, 1.0), (-1.5, 0.3), (2.0, 4.0)]
# Stam products J * N of each family (closed forms in the module docstring)
STAM = {"normal": 1.0, "logistic": math.e**3 / (6 * math.pi),
        "gumbel": math.exp(1 + 2 * EULER) / (2 * math.pi), "laplace": 2 * math.e / math.pi,
        "cauchy": 4 * math.pi / math.e}


def _q(name, locs, scales):
    return family(name, torch.tensor(locs, dtype=torch.float64),
                  torch.tensor(scales, dtype=torch.float64))


def _scipy_score(d, z, h=1e-5):
    """d/dz log q by central differences of scipy's logpdf (frozen ``d``): independent of
    families.py."""
    return (d.logpdf(z + h) - d.logpdf(z - h)) / (2 * h)


# -- closed forms ---------------------------------------------------------------------------------
def test_table_covers_every_family():
    assert set(LOCATION_FISHER) == set(FAMILIES)
    for name in CLOSED:
        assert fisher_information_available(name) == (True, "")
        assert LOCATION_FISHER[name] == pytest.approx(I_F[name], rel=1e-15)
    with pytest.raises(ValueError, match="valid families"):
        fisher_information_available("student")


@pytest.mark.parametrize("name", CLOSED)
def test_closed_form_matches_quadrature_of_scipy_density(name):
    """J = int q'(z)^2 / q(z) dz by quadrature (scipy's density, numerical derivative)."""
    for loc, scale in LOC_SCALE:
        d = SCIPY[name](loc=loc, scale=scale)

        def integrand(z, d=d):
            return d.pdf(z) * _scipy_score(d, z) ** 2

        lo, hi = (-math.inf, math.inf) if name == "cauchy" else (d.ppf(1e-13), d.isf(1e-13))
        val = sum(integrate.quad(integrand, a, b, limit=200, epsabs=0, epsrel=1e-10)[0]
                  for a, b in ((lo, loc), (loc, hi)))
        J = location_fisher(_q(name, [loc], [scale])).item()
        assert J == pytest.approx(I_F[name] / scale**2, rel=1e-14)
        assert val == pytest.approx(J, rel=1e-5), (name, loc, scale)


@pytest.mark.parametrize("name", CLOSED)
def test_closed_form_matches_monte_carlo_within_4_se(name):
    """Draws from scipy, score by central differences: E[(d/dz log q)^2] within 4 SE."""
    rng = np.random.default_rng(12)
    n = 40_000
    for loc, scale in LOC_SCALE:
        d = SCIPY[name](loc=loc, scale=scale)
        s2 = _scipy_score(d, d.rvs(size=n, random_state=rng)) ** 2
        mean, se = s2.mean(), s2.std(ddof=1) / math.sqrt(n)
        J = location_fisher(_q(name, [loc], [scale])).item()
        # + a finite-difference floor: the Laplace score is -+1/b, so its squares have SE 0
        assert abs(mean - J) < 4 * se + 1e-8 * J, (name, loc, scale, mean, J, se)
        assert se < 0.03 * J  # the check has teeth: SE is a few per cent of J at most


# -- the score estimator --------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLOSED)
def test_score_estimator_mean_equals_closed_form(name):
    locs, scales = [p[0] for p in LOC_SCALE], [p[1] for p in LOC_SCALE]
    q = _q(name, locs, scales)
    K = 20_000
    s2 = score_squared(q, q.rsample((K,)))
    assert s2.shape == (K, 3) and s2.dtype == torch.float64
    J = location_fisher(q)
    se = s2.std(0) / math.sqrt(K)
    tol = 4 * se + 1e-12 * J  # Laplace: psi^2 = 1 exactly, SE 0
    assert ((s2.mean(0) - J).abs() < tol).all(), (s2.mean(0), J, se)
    est = score_fisher(q, samples=K)
    assert est.shape == (3,)
    assert ((est - J).abs() < tol).all()


def test_score_by_autograd_matches_analytic_scores():
    e = torch.linspace(-3, 3, 13, dtype=torch.float64)
    loc, scale = 0.7, 1.9
    psi = {"normal": -e, "laplace": -torch.sign(e), "cauchy": -2 * e / (1 + e * e),
           "logistic": -torch.tanh(e / 2), "gumbel": torch.exp(-e) - 1}
    for name in CLOSED:
        q = _q(name, [loc] * 13, [scale] * 13)
        got = score_squared(q, loc + scale * e)
        want = (psi[name] / scale) ** 2
        if name == "laplace":  # the kink at e = 0 is a null set (autograd gives 0 there)
            got, want = got[e != 0], want[e != 0]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_score_estimator_is_the_authors_for_a_normal():
    q = _q("normal", [0.3, -1.0], [0.5, 2.0])
    z = q.rsample((7,))
    torch.testing.assert_close(score_squared(q, z), ((z - q.loc) / q.scale**2) ** 2)
    torch.testing.assert_close(score_fisher(q, z=z), (((z - q.loc) / q.scale**2) ** 2).mean(0))


def test_authors_clamp_caps_each_squared_score():
    q = _q("normal", [0.0] * 4, [0.05] * 4)  # J = 400, far above the clamp
    est = score_fisher(q, samples=2000, clamp=AUTHORS_SCORE_CLAMP)
    assert (est <= AUTHORS_SCORE_CLAMP).all() and (est < 0.5 * location_fisher(q)).all()


def test_score_estimator_without_grad_and_bad_samples():
    q = _q("logistic", [0.0], [2.0])
    with torch.no_grad():
        est = score_fisher(q, samples=10)
    assert not est.requires_grad and est.shape == (1,)
    with pytest.raises(ValueError, match="positive integer"):
        score_fisher(q, samples=0)


# -- refused families -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", REFUSED)
def test_refused_families_raise_with_the_reason(name):
    ok, reason = fisher_information_available(name)
    assert not ok and "not differentiable in quadratic mean" in reason and "jumps" in reason
    q = _q(name, [0.0, 1.0], [1.0, 2.0])
    for fn in (location_fisher, fisher_shannon, lambda q: score_fisher(q, samples=3)):
        with pytest.raises(ValueError, match=f"{name} posterior has no finite location Fisher"):
            fn(q)
    with pytest.raises(ValueError, match="Hellinger"):
        score_squared(q, q.rsample((2,)))


def test_hellinger_distance_of_refused_families_is_linear_in_the_shift():
    """The reason's numbers: H^2 = 1 - BC grows like |h| (so 8 H^2 / h^2 -> inf)."""
    s = 1.5
    unif, expon = stats.uniform(-s, 2 * s), stats.expon(0, s)
    for h in (0.1, 0.01, 0.001):
        bc_u = integrate.quad(lambda z, h=h: math.sqrt(unif.pdf(z) * unif.pdf(z - h)),
                              -s, s + h, points=[-s + h, s], epsabs=1e-13)[0]
        assert 1 - bc_u == pytest.approx(h / (2 * s), rel=1e-7)
        bc_e = integrate.quad(lambda z, h=h: math.sqrt(expon.pdf(z) * expon.pdf(z - h)),
                              h, math.inf, epsabs=1e-14)[0]
        assert 1 - bc_e == pytest.approx(1 - math.exp(-h / (2 * s)), rel=1e-7)
    # the normal, for contrast, is quadratic: H^2 = 1 - exp(-h^2 / (8 s^2)) ~ J h^2 / 8
    assert 8 * (1 - math.exp(-(0.001**2) / (8 * s * s))) / 0.001**2 == pytest.approx(1 / s**2)


def test_spec_check_names_the_refused_blocks():
    spec = LatentSpec.parse("normal/normal:3,uniform/uniform:2,exponential/exponential:1")
    with pytest.raises(ValueError, match=r"uniform/uniform:2: the uniform density.*"
                                         r"exponential/exponential:1: the exponential"):
        check_fisher(spec)
    q = spec.posterior(torch.zeros(4, spec.encoder_outputs))
    for est in ("closed_form", "score"):
        with pytest.raises(ValueError, match="uniform/uniform:2"):
            posterior_fisher(spec, q, estimator=est)
    assert check_fisher(LatentSpec.parse("logistic/normal:2,cauchy/cauchy:1")) is None


# -- per block ------------------------------------------------------------------------------------
MIXED = "logistic/normal:2,cauchy/cauchy:2,gumbel/normal:1,laplace/laplace:1,normal/normal:2"


def _mixed(batch=5, seed=0):
    spec = LatentSpec.parse(MIXED).double()
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, spec.encoder_outputs, generator=g, dtype=torch.float64)
    return spec, h.requires_grad_(True)


def test_posterior_fisher_per_block_closed_and_score():
    spec, h = _mixed()
    q = spec.posterior(h)
    J = posterior_fisher(spec, q)
    assert J.shape == (5, spec.dim)
    consts = torch.tensor([1 / 3] * 2 + [0.5] * 2 + [1.0] * 4, dtype=torch.float64)
    scale = torch.cat([qi.scale for qi in q], -1)
    torch.testing.assert_close(J, consts / scale**2, rtol=1e-14, atol=0)
    K = 4000
    z = spec.rsample(q, samples=K)
    est = posterior_fisher(spec, q, estimator="mc_score", z=z)
    s2 = torch.cat([score_squared(qi, z[..., sl]) for qi, sl in zip(q, spec.slices, strict=True)],
                   -1)
    torch.testing.assert_close(est, s2.mean(0))
    assert ((est - J).abs() < 4 * s2.std(0) / math.sqrt(K) + 1e-12 * J).all()
    assert posterior_fisher(spec, q, "score", samples=3).shape == (5, spec.dim)
    with pytest.raises(ValueError, match="valid: closed_form, score"):
        posterior_fisher(spec, q, estimator="hutchinson")
    with pytest.raises(ValueError, match="blocks"):
        posterior_fisher(spec, q[:2])


# -- entropy power and Stam's inequality ----------------------------------------------------------
def test_family_entropies_match_scipy():
    loc, s = 0.4, 1.7
    ref = {"normal": stats.norm(loc, s), "laplace": stats.laplace(loc, s),
           "cauchy": stats.cauchy(loc, s), "logistic": stats.logistic(loc, s),
           "gumbel": stats.gumbel_r(loc, s), "uniform": stats.uniform(loc - s, 2 * s),
           "exponential": stats.expon(loc, s)}
    for name, d in ref.items():
        h = _q(name, [loc], [s]).entropy().item()
        assert h == pytest.approx(float(d.entropy()), rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("name", CLOSED)
def test_stam_inequality_per_family(name):
    scales = [0.01, 0.3, 1.0, 7.0]
    J, N = fisher_shannon(_q(name, [0.5] * 4, scales))
    torch.testing.assert_close(J * N, torch.full((4,), STAM[name], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert (J * N >= 1 - 1e-12).all()
    if name == "normal":
        torch.testing.assert_close(N, torch.tensor(scales, dtype=torch.float64) ** 2)
    else:
        assert (J * N > 1.05).all()  # strictly above the bound: not Gaussian


def test_entropy_power_of_refused_families_is_still_defined():
    N = entropy_power(_q("uniform", [0.0], [1.5]))  # width 3: N = 9 / (2 pi e)
    assert N.item() == pytest.approx(9 / (2 * math.pi * math.e), rel=1e-14)


def test_stam_for_a_mixed_posterior_and_equality_for_isotropic_normal():
    spec, h = _mixed(batch=64)
    J, N = posterior_fisher_shannon(spec, spec.posterior(h * 3))
    assert J.shape == N.shape == (64,)
    assert (J * N / spec.dim >= 1).all()
    iso = LatentSpec.parse("normal/normal:4").double()
    raw = torch.cat([torch.randn(3, 4, dtype=torch.float64),
                     torch.tensor([[-1.0], [0.0], [2.0]], dtype=torch.float64).expand(3, 4)], -1)
    J, N = posterior_fisher_shannon(iso, iso.posterior(raw))
    torch.testing.assert_close(J * N / 4, torch.ones(3, dtype=torch.float64), rtol=1e-13, atol=0)
    raw[0, 4] = 1.0  # unequal variances: strictly above the bound
    J, N = posterior_fisher_shannon(iso, iso.posterior(raw))
    assert (J * N / 4)[0] > 1.01


# -- the penalty ----------------------------------------------------------------------------------
def test_penalty_value_pooling_and_bad_input():
    J = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert fisher_penalty(J, 5, 0.1).item() == pytest.approx(0.25)
    assert fisher_penalty([J[:, :1], J[:, 1:]], 5.0, 0.1).item() == pytest.approx(0.25)
    assert fisher_penalty(J, 1.0, 2).item() == pytest.approx(3.0)
    assert fisher_penalty(J, 0, 0).item() == 0.0
    for bad in (-0.1, math.nan, math.inf, "1", True, None):
        with pytest.raises(ValueError, match="weight"):
            fisher_penalty(J, 5.0, bad)
        with pytest.raises(ValueError, match="target"):
            fisher_penalty(J, bad, 0.1)
    with pytest.raises(ValueError, match="at least one"):
        fisher_penalty([], 1.0, 1.0)


def test_gradient_flows_to_the_encoder_scale_outputs():
    spec, h = _mixed(batch=3)
    q = spec.posterior(h)
    J = posterior_fisher(spec, q)
    pen = fisher_penalty(J, 0.5, 0.1)
    pen.backward()
    d = spec.dim
    raw = h.detach()[:, d:]
    s = torch.nn.functional.softplus(raw) + spec.min_scale
    consts = torch.tensor([1 / 3] * 2 + [0.5] * 2 + [1.0] * 4, dtype=torch.float64)
    sign = torch.sign(J.detach().mean() - 0.5)
    want = 0.1 * sign / J.numel() * (-2 * consts / s**3) * torch.sigmoid(raw)
    torch.testing.assert_close(h.grad[:, d:], want, rtol=1e-12, atol=0)
    assert (h.grad[:, :d] == 0).all() and (want.abs() > 0).all()


@pytest.mark.parametrize("name", CLOSED)
def test_score_estimator_gradient_is_the_reparameterised_one(name):
    """Per draw the estimate is psi(E)^2 / s^2: d/ds = -2 est / s, d/dmu = 0, exactly."""
    loc = torch.tensor([0.2, -1.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.7, 2.5], dtype=torch.float64, requires_grad=True)
    q = family(name, loc, scale)
    est = score_fisher(q, samples=50)
    assert est.requires_grad
    est.sum().backward()
    torch.testing.assert_close(scale.grad, -2 * est.detach() / scale.detach(), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(loc.grad, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("estimator", ["closed_form", "score"])
def test_penalty_moves_fisher_toward_the_target_both_ways(estimator):
    spec = LatentSpec.parse("logistic/normal:3,normal/normal:2")
    raw = torch.zeros(8, spec.encoder_outputs, requires_grad=True)
    start = posterior_fisher(spec, spec.posterior(raw)).mean().item()
    for target in (0.3 * start, 4.0 * start):
        raw = torch.zeros(8, spec.encoder_outputs, requires_grad=True)
        opt = torch.optim.Adam([raw], lr=0.05)
        for _ in range(150):
            opt.zero_grad()
            J = posterior_fisher(spec, spec.posterior(raw), estimator=estimator, samples=4)
            fisher_penalty(J, target, 1.0).backward()
            opt.step()
        end = posterior_fisher(spec, spec.posterior(raw)).mean().item()
        assert abs(end - target) < 0.15 * abs(start - target), (estimator, start, target, end)
