"""Gaussian random fields: sample covariances against the kernels, uncertain length scales,
seeding, the truncated Karhunen-Loeve expansion and bad input."""

import math

import numpy as np
import pytest
import scipy.special
import torch

from autovae.inverse import (
    KarhunenLoeve,
    cell_centres,
    correlation,
    grf_covariance,
    grf_fields,
    sample_grf,
)
from autovae.inverse.grf import COVARIANCES, canonical_eigh


def sample_cov(u):
    x = u.reshape(len(u), -1).double()
    x = x - x.mean(0)
    return (x.T @ x / (len(u) - 1)).numpy()


def mc_tolerance(cov, n_samples, sigmas=5.0):
    """Entry-wise bound: sd of a sample covariance is sqrt((C_ii C_jj + C_ij^2) / N)."""
    d = np.diag(cov)
    return sigmas * np.sqrt((d[:, None] * d[None, :] + cov**2) / n_samples)


N = 20000


@pytest.mark.parametrize("kernel,nu,method", [
    ("squared_exponential", None, "fft"),  # separable exact sampler
    ("squared_exponential", None, "kle"),
    ("matern", 1.5, "fft"),  # circulant embedding
    ("exponential", None, "fft"),
    ("matern", 1.0, "fft"),  # general nu: Bessel K_nu table
])
def test_sample_covariance_matches_the_kernel(kernel, nu, method):
    n, ell, var = 8, 0.3, 2.0
    u = sample_grf(N, n, kernel, ell, var, mean=1.0, nu=nu, method=method, seed=1)
    assert u.shape == (N, n, n) and u.dtype == torch.float32
    cov = grf_covariance(n, kernel, ell, var, nu=nu)
    emp = sample_cov(u)
    assert np.all(np.abs(emp - cov) <= mc_tolerance(cov, N)), np.abs(emp - cov).max()
    assert abs(float(u.mean()) - 1.0) < 5 * math.sqrt(var / N) * 4  # mean (correlated cells)
    # the sample covariance is not merely within bounds but centred: mean error ~ 0
    assert abs(float((emp - cov).mean())) < 0.02


def test_uncertain_length_scale_gives_the_mixture_covariance():
    n, lo, hi = 8, 0.1, 0.5
    for kernel in ("squared_exponential", "matern52"):
        u = sample_grf(N, n, kernel, (lo, hi), seed=2)
        # E_l[k_l] by Gauss-Legendre quadrature over l ~ U(lo, hi)
        nodes, weights = np.polynomial.legendre.leggauss(40)
        ells = lo + (hi - lo) * (nodes + 1) / 2
        cov = sum(w / 2 * grf_covariance(n, kernel, ell)
                  for w, ell in zip(weights, ells, strict=True))
        emp = sample_cov(u)
        # the mixture field is not Gaussian, the Gaussian-case sd bound widened by 1.5
        assert np.all(np.abs(emp - cov) <= 1.5 * mc_tolerance(cov, N)), np.abs(emp - cov).max()
        # and it is not one of the extreme kernels
        for ell in (lo, hi):
            assert np.abs(emp - grf_covariance(n, kernel, ell)).max() > 0.1


def test_anisotropic_and_log_uniform_length_scales():
    n = 8
    u = sample_grf(N, n, "squared_exponential", (0.1, 0.2), mean=0.0, anisotropic=True,
                   length_scale_distribution="log-uniform", seed=3)
    nodes, weights = np.polynomial.legendre.leggauss(30)
    t = (nodes + 1) / 2
    ells = np.exp(np.log(0.1) + (np.log(0.2) - np.log(0.1)) * t)
    w = weights / 2
    cov = sum(wx * wy * grf_covariance(n, "se", (lx, ly)) for wx, lx in zip(w, ells, strict=True)
              for wy, ly in zip(w, ells, strict=True))
    emp = sample_cov(u)
    assert np.all(np.abs(emp - cov) <= 1.5 * mc_tolerance(cov, N))
    # a fixed anisotropic pair: correlation along x longer than along y
    v = sample_grf(N, n, "matern32", ((0.4, 0.4), (0.1, 0.1)), anisotropic=True, seed=4)
    cov = grf_covariance(n, "matern32", (0.4, 0.1))
    assert cov[0, 1] > 0.85 and cov[0, n] < 0.4  # 0.897 along x, 0.363 along y
    assert np.all(np.abs(sample_cov(v) - cov) <= mc_tolerance(cov, N))


def test_seeding_is_reproducible():
    for kw in ({"length_scale": (0.1, 0.5)}, {"length_scale": 0.2, "kernel": "matern12"},
               {"length_scale": 0.2, "method": "kle"}):
        a = sample_grf(50, 16, seed=7, **kw)
        assert torch.equal(a, sample_grf(50, 16, seed=7, **kw))
        assert not torch.equal(a, sample_grf(50, 16, seed=8, **kw))
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        assert torch.equal(sample_grf(50, 16, generator=g1, **kw),
                           sample_grf(50, 16, generator=g2, **kw))


def test_grf_fields_is_an_image_dataset_with_benchmark_defaults():
    x = grf_fields(3000)
    assert x.shape == (3000, 1, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, grf_fields(3000))  # seed 0 by default
    assert abs(float(x.mean())) < 0.1 and abs(float(x.var()) - 1.0) < 0.1
    assert grf_fields(10, n=64, seed=1).shape == (10, 1, 64, 64)


def test_correlation_functions():
    r = np.linspace(0, 3, 31)
    np.testing.assert_allclose(correlation(r, "exponential"), np.exp(-r))
    np.testing.assert_allclose(correlation(r), np.exp(-r**2 / 2))
    s = math.sqrt(3) * r
    np.testing.assert_allclose(correlation(r, "matern", nu=1.5), (1 + s) * np.exp(-s))
    # the Bessel form for a general nu joins the closed forms and tends to the SE kernel
    np.testing.assert_allclose(correlation(r, "matern", nu=2.5 + 1e-9),
                               correlation(r, "matern52"), atol=1e-8)
    np.testing.assert_allclose(correlation(r, "matern", nu=80.0), correlation(r), atol=1e-2)
    nu = 0.8
    z = math.sqrt(2 * nu) * r[1:]
    ref = 2 ** (1 - nu) / scipy.special.gamma(nu) * z**nu * scipy.special.kv(nu, z)
    np.testing.assert_allclose(correlation(r[1:], "matern", nu=nu), ref)
    xy = cell_centres(4)
    assert xy.shape == (16, 2)
    np.testing.assert_allclose(xy[1], [0.375, 0.125])  # index i * n + j: row i = y


def test_kl_expansion_eigenvalues_and_truncated_covariance():
    n = 16
    kl = KarhunenLoeve(n, "squared_exponential", length_scale=0.2, variance=1.5, dim=16)
    lam = kl.eigenvalues.numpy()
    # non-increasing: on a square grid the x and y modes have exactly equal eigenvalues, whose
    # computed order and last digits depend on the LAPACK path (thread count)
    assert lam.shape == (16,) and np.all(lam > 0) and np.all(np.diff(lam) <= 1e-12 * lam[0])
    full = np.linalg.eigvalsh(grf_covariance(n, "se", 0.2, 1.5))[::-1]
    np.testing.assert_allclose(lam, full[:16], rtol=1e-10)
    assert kl.energy == pytest.approx(full[:16].sum() / full.sum(), rel=1e-10)
    modes = kl.modes.reshape(16, -1).numpy()
    np.testing.assert_allclose(modes @ modes.T, np.eye(16), atol=1e-10)
    # decode(z), z ~ N(0, I): covariance is the truncated kernel Phi Lambda Phi^T
    z = torch.randn(N, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u = kl.decode(z)
    assert u.shape == (N, n, n) and u.dtype == torch.float64
    trunc = kl.covariance().numpy()
    np.testing.assert_allclose(trunc, (modes.T * lam) @ modes, atol=1e-12)
    assert np.all(np.abs(sample_cov(u) - trunc) <= mc_tolerance(trunc, N))
    np.testing.assert_allclose(kl.encode(u[:5]).numpy(), z[:5].numpy(), atol=1e-8)
    assert kl.decode(torch.zeros(16)).shape == (n, n)
    assert kl.decode(torch.zeros(1, 16, dtype=torch.float32)).dtype == torch.float32
    # all n^2 terms: the covariance is the kernel matrix itself
    whole = KarhunenLoeve(8, "matern32", 0.3, dim=64)
    np.testing.assert_allclose(whole.covariance().numpy(), grf_covariance(8, "matern32", 0.3),
                               atol=1e-10)
    assert whole.energy == pytest.approx(1.0)


def _scrambled_eigh(eigh):
    """torch.linalg.eigh as another LAPACK path may answer: each tied eigenspace in another
    orthonormal basis, every eigenvector with a random sign."""
    def scrambled(a):
        lam, phi = eigh(a)
        gen = torch.Generator().manual_seed(7)
        if a.ndim == 3:  # the batched 1-D factors: distinct eigenvalues, signs only
            signs = torch.randint(0, 2, lam.shape, generator=gen).to(lam.dtype) * 2 - 1
            return lam, phi * signs[:, None, :]
        phi = phi.clone()
        k = 0
        while k < len(lam):
            end = k + 1
            while end < len(lam) and float(lam[end] - lam[end - 1]) <= 1e-11 * float(lam[-1]):
                end += 1
            rot, _ = torch.linalg.qr(torch.randn(end - k, end - k, generator=gen,
                                                 dtype=lam.dtype))
            phi[:, k:end] = phi[:, k:end] @ rot
            k = end
        signs = torch.randint(0, 2, (len(lam),), generator=gen).to(lam.dtype) * 2 - 1
        return lam, phi * signs
    return scrambled


def test_eigenbasis_does_not_depend_on_the_lapack_path(monkeypatch):
    """A square grid's x and y modes tie exactly: whatever basis of the tied eigenspace and
    whatever signs eigh returns, the KL modes (so a latent code's field, a truncated expansion
    and a seeded draw) are the same."""
    cov = grf_covariance(12, "se", 0.2)
    lam, phi = canonical_eigh(cov)
    assert float(lam[1] - lam[2]) < 1e-12 * float(lam[0])  # the tie this is about
    field = _kle_field()
    monkeypatch.setattr(torch.linalg, "eigh", _scrambled_eigh(torch.linalg.eigh))
    lam2, phi2 = canonical_eigh(cov)
    np.testing.assert_allclose(lam2.numpy(), lam.numpy(), atol=1e-12)
    np.testing.assert_allclose(phi2[:, :40].numpy(), phi[:, :40].numpy(), atol=1e-8)
    field2 = _kle_field()
    np.testing.assert_allclose(field2.numpy(), field.numpy(), atol=1e-8)
    # still an orthonormal eigenbasis of the covariance
    c = torch.as_tensor(cov)
    np.testing.assert_allclose((c @ phi2[:, :40]).numpy(), (phi2[:, :40] * lam2[:40]).numpy(),
                               atol=1e-10)
    np.testing.assert_allclose((phi2.T @ phi2).numpy(), np.eye(144), atol=1e-10)
    # the separable sampler's 1-D factor is the symmetric square root: seeded fields unchanged
    u = sample_grf(3, 12, length_scale=0.2, seed=3)
    monkeypatch.undo()
    np.testing.assert_allclose(u.numpy(), sample_grf(3, 12, length_scale=0.2, seed=3).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: sample_grf(10, 8, kernel="cubic"), "unknown kernel"),
    (lambda: sample_grf(10, 8, kernel="matern"), "needs nu"),
    (lambda: sample_grf(10, 8, kernel="matern32", nu=2.5), "contradicts"),
    (lambda: sample_grf(10, 8, length_scale=-0.1), "length_scale must be positive"),
    (lambda: sample_grf(10, 8, length_scale=(0.5, 0.1)), "0 < lo <= hi"),
    (lambda: sample_grf(0, 8), "n_fields must be a positive integer"),
    (lambda: sample_grf(10, 1), "n \\(grid size\\)"),
    (lambda: sample_grf(10, 8, variance=0.0), "variance must be positive"),
    (lambda: sample_grf(10, 8, method="cholesky"), "method must be 'fft' or 'kle'"),
    (lambda: sample_grf(10, 8, length_scale=0.2, method="kl"), "now spelt method='kle'"),
    (lambda: sample_grf(10, 8, length_scale_distribution="normal"), "length_scale_distrib"),
    (lambda: sample_grf(10, 8, seed=1, generator=torch.Generator()), "seed or generator"),
    (lambda: KarhunenLoeve(8, dim=65), "dim must be an integer in \\[1, n\\*n = 64\\]"),
    (lambda: KarhunenLoeve(8, dim=4).decode(torch.zeros(2, 5)), "z must have shape \\(B, 4\\)"),
])
def test_bad_inputs_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _kle_field():
    kle = KarhunenLoeve(12, dim=16, length_scale_range=(0.1, 0.5))
    return kle.params(torch.ones(1, 16, dtype=torch.float64))


def test_every_named_covariance_is_a_correlation():
    for name in COVARIANCES:
        nu = 1.0 if name == "matern" else None
        rho = correlation([0.0, 0.5, 3.0], name, nu)
        assert rho[0] == 1.0 and 1.0 > rho[1] > rho[2] > 0.0, (name, rho)
