"""Tests for autovae.beliefs.special: E1, complex E1, -Li2(-e^t) and the seven KL pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from autovae.beliefs import special as sp

VECTORS = Path(__file__).parent / "data" / "gvi-test-vectors.json"

KL_FUNCS = {
    ("laplace", "cauchy"): sp.kl_laplace_cauchy,
    ("exponential", "cauchy"): sp.kl_exponential_cauchy,
    ("gumbel", "laplace"): sp.kl_gumbel_laplace,
    ("uniform", "logistic"): sp.kl_uniform_logistic,
    ("logistic", "logistic"): sp.kl_logistic_logistic_equal_scale,
    ("exponential", "logistic"): sp.kl_exponential_logistic_equal_scale,
    ("gumbel", "logistic"): sp.kl_gumbel_logistic_equal_scale,
}
EQUAL_SCALE = {("logistic", "logistic"), ("exponential", "logistic"), ("gumbel", "logistic")}


def _vector_cases():
    data = json.loads(VECTORS.read_text())
    out = []
    for entry in data["kl"]:
        pair = (entry["q_family"], entry["p_family"])
        if pair not in KL_FUNCS:
            continue
        for i, case in enumerate(entry["cases"]):
            q, p = case["q"], case["p"]
            if pair in EQUAL_SCALE and q["scale"] != p["scale"]:
                continue  # the "P" closed forms hold only for equal scales
            kl = math.inf if case["kl"] == "inf" else float(case["kl"])
            params = (q["loc"], q["scale"], p["loc"], p["scale"])
            out.append(pytest.param(pair, params, kl, float(case["abs_err"]),
                                    id=f"{pair[0]}-{pair[1]}-{i}"))
    return out


CASES = _vector_cases()


def _t(values, dtype=torch.float64, requires_grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def test_all_pairs_have_vectors():
    pairs = {c.values[0] for c in CASES}
    assert pairs == set(KL_FUNCS)
    assert len(CASES) == 47


@pytest.mark.parametrize(("pair", "params", "kl", "abs_err"), CASES)
def test_kl_vectors_float64(pair, params, kl, abs_err):
    value = KL_FUNCS[pair](*(_t(x) for x in params))
    assert value.dtype == torch.float64
    tol = max(1e-9, 1e-9 * abs(kl), 10 * abs_err)
    assert abs(value.item() - kl) <= tol


@pytest.mark.parametrize(("pair", "params", "kl", "abs_err"), CASES)
def test_kl_vectors_float32(pair, params, kl, abs_err):
    value = KL_FUNCS[pair](*(_t(x, torch.float32) for x in params))
    assert value.dtype == torch.float32
    assert abs(value.item() - kl) <= 1e-4 * abs(kl) + 1e-7


# ------------------------------------------------------------------------------------------------
# special functions against mpmath
# ------------------------------------------------------------------------------------------------

# branch switches: real E1 series/CF at x = 1, CF/asymptotic at x = 40
REAL_X = [1e-300, 1e-12, 1e-3, 0.3, 1 - 1e-12, 1.0, 1 + 1e-12, 1.5, 2.0, 5.0, 15.0, 39.999999,
          40.0, 40.000001, 55.0, 200.0, 690.0]


@pytest.fixture(scope="module")
def mp():
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        yield mpmath


def _rel_err(value, ref):
    return abs(value - ref) / abs(ref)


def test_exp1_vs_mpmath(mp):
    got = sp.exp1(_t(REAL_X)).tolist()
    for x, v in zip(REAL_X, got, strict=True):
        assert _rel_err(v, float(mp.e1(x))) < 1e-14, x


def test_scaled_exp1_vs_mpmath(mp):
    xs = [*REAL_X, 1e5, 1e10, 1e300]
    got = sp.scaled_exp1(_t(xs)).tolist()
    for x, v in zip(xs, got, strict=True):
        ref = float(mp.exp(x) * mp.e1(x)) if x < 1e4 else float(mp.e1(x) * mp.exp(x))
        assert _rel_err(v, ref) < 1e-14, x


def _complex_grid():
    pts = []
    # branch switch |z| = 40 (asymptotic series), both sides, all around the upper half plane
    for rho in (1e-8, 0.5, 1.0, 3.0, 10.0, 39.9999999, 40.0000001, 300.0, 1e6):
        for th in (1e-9, 0.4, math.pi / 2, 2.2, 2.9, math.pi - 1e-3, math.pi - 1e-9):
            pts.append(complex(rho * math.cos(th), rho * math.sin(th)))
    # branch switch Re sqrt(z) = 1 (power series / continued fraction): z = (1 + iy)^2 (1 +- eps)
    for y in (0.01, 0.5, 2.0, 6.0):
        for f in (1 - 1e-9, 1 + 1e-9):
            pts.append(complex(1 - y * y, 2 * y) * f)
    return pts


def test_scaled_exp1_complex_vs_mpmath(mp):
    pts = _complex_grid()
    got = sp.scaled_exp1_complex(torch.tensor(pts, dtype=torch.complex128)).tolist()
    for z, v in zip(pts, got, strict=True):
        ref = complex(mp.exp(z) * mp.e1(z))
        assert _rel_err(v, ref) < 2e-14, z


def test_scaled_exp1_complex_lower_half_plane_and_dtype():
    z = torch.tensor([0.3 + 2.0j, -5.0 + 0.1j, 50.0 + 3.0j], dtype=torch.complex128)
    lower = sp.scaled_exp1_complex(z.conj())
    torch.testing.assert_close(lower, sp.scaled_exp1_complex(z).conj(), rtol=0, atol=0)
    z64 = sp.scaled_exp1_complex(z.to(torch.complex64))
    assert z64.dtype == torch.complex64
    torch.testing.assert_close(z64, sp.scaled_exp1_complex(z).to(torch.complex64))


def test_softplus_integral_vs_mpmath(mp):
    # branch switches at |t| = 1 (Taylor series in t / series in e^-|t|)
    ts = [-700.0, -50.0, -5.0, -1 - 1e-12, -1.0, -1 + 1e-12, -0.5, -1e-9, 0.0, 1e-9, 0.5,
          1 - 1e-12, 1.0, 1 + 1e-12, 3.0, 30.0, 1e3, 1e6]
    got = sp.softplus_integral(_t(ts)).tolist()
    for t, v in zip(ts, got, strict=True):
        if t > 0:  # A(t) = pi^2/6 + t^2/2 + Li2(-e^-t)
            ref = mp.pi**2 / 6 + mp.mpf(t) ** 2 / 2 + mp.polylog(2, -mp.exp(-t))
        else:
            ref = -mp.polylog(2, -mp.exp(t))
        assert _rel_err(v, float(ref)) < 1e-14, t


# ------------------------------------------------------------------------------------------------
# KL closed forms against mpmath at extreme parameters (same formulas, 60 digits)
# ------------------------------------------------------------------------------------------------


def _mp_reference(mp, pair, m, s, mu, sg):
    m, s, mu, sg = (mp.mpf(x) for x in (m, s, mu, sg))
    d = m - mu
    delta, r = d / sg, s / sg

    def f(z):
        return mp.exp(z) * mp.e1(z)

    def a(t):  # -Li2(-e^t)
        if t > 0:
            return mp.pi**2 / 6 + t * t / 2 + mp.polylog(2, -mp.exp(-t))
        return -mp.polylog(2, -mp.exp(t))

    if pair == ("laplace", "cauchy"):
        fz = f(mp.mpc(d, sg) / s) + f(mp.mpc(-d, sg) / s)
        return mp.log(mp.pi / (2 * s * sg)) - 1 + mp.log(sg**2 + d**2) + mp.re(fz)
    if pair == ("exponential", "cauchy"):
        fz = f(mp.mpc(d, sg) / s)
        return mp.log(mp.pi / (s * sg)) - 1 + mp.log(sg**2 + d**2) + 2 * mp.re(fz)
    if pair == ("gumbel", "laplace"):
        # E1(e^t) < exp(-e^t): zero to any precision for t > 700 (and slow for mpmath)
        e1 = mp.e1(mp.exp(d / s)) if d / s < 700 else 0
        return (mp.log(sg / s) + mp.log(2) - mp.euler - 1 + delta + mp.euler * r + 2 * r * e1)
    if pair == ("uniform", "logistic"):
        return mp.log(sg / (2 * s)) - delta + (a(delta + r) - a(delta - r)) / r
    if pair == ("logistic", "logistic"):
        return delta * mp.coth(delta / 2) - 2 if delta != 0 else mp.mpf(0)
    if pair == ("exponential", "logistic"):
        return delta + 2 * (1 + mp.exp(delta)) * mp.log1p(mp.exp(-delta)) - 2
    if pair == ("gumbel", "logistic"):
        x = mp.exp(delta)  # e^x E1(x) = 1/x - 1/x^2 + O(x^-3), exact here for x > e^700
        return delta + 2 * (f(x) if delta < 700 else 1 / x - 1 / x**2) - 1
    raise KeyError(pair)


def _extreme_grid(pair):
    scales = (1e-3, 1.0, 1e3)
    diffs = (0.0, 2e-3, -0.7, 1.3, -25.0, 1e3, -1e3)
    out = []
    for s in scales:
        for sg in ((s,) if pair in EQUAL_SCALE else scales):
            for d in diffs:
                out.append((0.25 + d, s, 0.25, sg))
    return out


@pytest.mark.parametrize("pair", list(KL_FUNCS), ids=lambda p: f"{p[0]}-{p[1]}")
def test_kl_extreme_parameters_vs_mpmath(mp, pair):
    grid = _extreme_grid(pair)
    cols = [_t(c) for c in zip(*grid, strict=True)]
    got = KL_FUNCS[pair](*cols).tolist()
    for params, v in zip(grid, got, strict=True):
        # reference at the float64-rounded parameters actually passed in
        ref = float(_mp_reference(mp, pair, *(float(x) for x in params)))
        assert abs(v - ref) <= 1e-13 * abs(ref) + 1e-14, params


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------

# (m, s, mu, sigma) points per pair; several sit next to a branch switch of the implementation
GRAD_POINTS = {
    ("laplace", "cauchy"): [
        (0.0, 1.0, 0.0, 1.0), (0.7, 0.5, -0.3, 1.3),
        (0.9375, 1.0, 0.0, 0.5),  # zeta = (1 + i/4)^2: Re sqrt(zeta) = 1
        (39.887, 1.0, 0.0, 3.0),  # |zeta| ~ 40
        (-3.0, 0.05, 2.0, 0.05), (0.0, 20.0, 0.0, 1.0), (5.0, 1e-3, 0.0, 1e3),
    ],
    ("exponential", "cauchy"): [
        (0.0, 1.0, 0.0, 1.0), (0.9375, 1.0, 0.0, 0.5), (-0.9375, 1.0, 0.0, 0.5),
        (39.887, 1.0, 0.0, 3.0), (-39.887, 1.0, 0.0, 3.0), (-3.0, 0.05, 2.0, 0.05),
        (10.0, 2.0, -10.0, 1.0), (0.0, 1e3, 1.0, 1e-3),
    ],
    ("gumbel", "laplace"): [
        (0.0, 1.0, 0.0, 1.0), (0.7, 0.5, -0.3, 1.3),
        (-3.0000001, 0.1, 0.0, 1.0),  # d/s ~ -30: E1(e^t) switches to its small-u form
        (1e-7, 1.0, 0.0, 2.0),  # e^{d/s} ~ 1: series / continued fraction
        (math.log(40.0) + 1e-7, 1.0, 0.0, 2.0),  # e^{d/s} ~ 40: asymptotic series
        (-1.0, 0.01, 0.0, 1.0), (20.0, 0.5, 0.0, 3.0),
    ],
    ("uniform", "logistic"): [
        (0.0, 1.0, 0.0, 1.0), (0.7, 0.5, -0.3, 1.3),
        (0.0, 0.1, 0.0, 1.0), (0.3, 0.1000001, 0.0, 1.0),  # r ~ 0.1: Taylor in r
        (0.05, 1e-3, 0.0, 1.0),
        (2.5, 0.5, 0.0, 1.0), (-2.5000001, 0.5, 0.0, 1.0),  # r - |delta| ~ -2: far series
        (-3.0, 0.05, 2.0, 0.05), (0.0, 20.0, 0.0, 1.0),
    ],
    ("logistic", "logistic"): [
        (0.0, 1.0, 0.0, 1.0), (1.0, 1.0, 0.0, 1.0), (-1.0000001, 1.0, 0.0, 1.0),  # |delta| ~ 1
        (1e-5, 1.0, 0.0, 1.0), (0.7, 1.3, -0.3, 1.3), (10.0, 1.0, -10.0, 1.0),
        (-40.0, 0.5, 0.0, 0.5),
    ],
    ("exponential", "logistic"): [
        (0.0, 1.0, 0.0, 1.0), (math.log(10.0), 1.0, 0.0, 1.0),  # e^-delta ~ 0.1: series
        (math.log(10.0) + 1e-7, 1.0, 0.0, 1.0), (0.7, 1.3, -0.3, 1.3), (-5.0, 1.0, 0.0, 1.0),
        (30.0, 1.0, 0.0, 1.0), (-40.0, 0.5, 0.0, 0.5),
    ],
    ("gumbel", "logistic"): [
        (0.0, 1.0, 0.0, 1.0), (-30.0000001, 1.0, 0.0, 1.0),  # e^delta small-x form
        (1e-7, 1.0, 0.0, 1.0), (math.log(40.0) - 1e-7, 1.0, 0.0, 1.0),
        (0.7, 1.3, -0.3, 1.3), (-50.0, 1.0, 0.0, 1.0), (10.0, 2.0, -10.0, 2.0),
    ],
}


@pytest.mark.parametrize("pair", list(KL_FUNCS), ids=lambda p: f"{p[0]}-{p[1]}")
def test_kl_gradcheck(pair):
    cols = [_t(c, requires_grad=True) for c in zip(*GRAD_POINTS[pair], strict=True)]
    if pair in EQUAL_SCALE:
        # the P formulas use sigma only; tie s to sigma so the check stays on the valid set
        def fn(m, mu, sigma):
            return KL_FUNCS[pair](m, sigma, mu, sigma)

        cols = [cols[0], cols[2], cols[3]]
    else:
        fn = KL_FUNCS[pair]
    assert torch.autograd.gradcheck(fn, cols)


def test_special_gradcheck():
    x = _t([1e-3, 0.5, 1.0, 1 + 1e-7, 3.0, 40.0 - 1e-6, 40.0 + 1e-6, 120.0], requires_grad=True)
    assert torch.autograd.gradcheck(sp.exp1, (x,))
    assert torch.autograd.gradcheck(sp.scaled_exp1, (x,))
    assert torch.autograd.gradgradcheck(sp.exp1, (x,))
    assert torch.autograd.gradgradcheck(sp.scaled_exp1, (x,))
    t = _t([-60.0, -5.0, -1.0 - 1e-7, -0.3, 0.0, 0.8, 1.0 + 1e-7, 4.0, 300.0], requires_grad=True)
    assert torch.autograd.gradcheck(sp.softplus_integral, (t,))
    assert torch.autograd.gradgradcheck(sp.softplus_integral, (t,))
    # (finite differences need a distance > 1e-6 from the branch cut on the negative real axis)
    z = torch.tensor([1e-3 + 1e-3j, 0.46 + 0.19j, -0.49 + 0.12j, 1.0 + 1e-9j, 3j, -3.0 + 3e-3j,
                      0.9375 + 0.5j, -1.25 + 3.0j,  # Re sqrt(z) = 1 (series / CF switch)
                      9.2 + 3.9j, -9.7 + 2.4j, 39.99 + 0.5j, -38.0 + 12.49j,  # |z| ~ 40
                      -20.0 + 1e-3j, 1.0 - 2.0j, 300.0 + 400.0j], dtype=torch.complex128,
                     requires_grad=True)
    assert torch.autograd.gradcheck(sp.scaled_exp1_complex, (z,))
    assert torch.autograd.gradgradcheck(sp.scaled_exp1_complex, (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("pair", list(KL_FUNCS), ids=lambda p: f"{p[0]}-{p[1]}")
def test_kl_finite_at_extreme_parameters(pair, dtype):
    pts = []
    for s in (1e-3, 1e3):
        for sg in ((s,) if pair in EQUAL_SCALE else (1e-3, 1e3)):
            for d in (0.0, 1e-3, -1e-3, 1.0, -1.0, 1e3, -1e3):
                pts.append((0.5 + d, s, 0.5, sg))
    cols = [_t(c, dtype, requires_grad=True) for c in zip(*pts, strict=True)]
    value = KL_FUNCS[pair](*cols)
    assert value.dtype == dtype
    assert torch.isfinite(value).all()
    assert (value > -1e-4).all()  # a KL divergence
    value.sum().backward()
    for c in cols:
        if c.grad is not None:
            assert torch.isfinite(c.grad).all()
    assert cols[0].grad is not None and cols[3].grad is not None


def test_broadcasting_and_python_scalars():
    m = _t([[0.0], [1.0], [-2.0]])
    s = _t([0.5, 1.0, 2.0, 4.0])
    for fn in KL_FUNCS.values():
        out = fn(m, s, 0.0, 1.5)
        assert out.shape == (3, 4) and out.dtype == torch.float64
        ref = torch.stack([torch.stack([fn(m[i, 0], s[j], _t(0.0), _t(1.5)) for j in range(4)])
                           for i in range(3)])
        torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    assert sp.kl_uniform_logistic(0.0, 1.0, 0.0, 1.0).dtype == torch.get_default_dtype()
