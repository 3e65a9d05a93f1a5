"""Gaussian random fields on the unit square: the log-permeability prior of the Darcy benchmark.

Fields live on the n x n cell-centre grid of [0, 1]^2: row i = y, column j = x, centre of cell
(i, j) at ((j + 0.5) / n, (i + 0.5) / n). Samplers, all exact for the grid covariance, each
field with its own length scale if asked (the GRF "with uncertain length scales" of Xia &
Zabaras 2022):

* ``method="fft"``: for the squared exponential, which is separable (C = C_y kron C_x),
  u = A_y Z A_x^T with n x n factors A A^T = C_1d (batched 1-D eigendecompositions); for
  Matern kernels, circulant embedding (Dietrich & Newsam 1997) on a torus padded until the
  clipped negative spectrum is below 1e-4 of the trace. Measured on one busy core: 38k SE
  16 x 16 fields/s, 2.5k 64 x 64; Matern 5/2 with l in [0.1, 0.5] 3.6k and 150 fields/s
  (a padded 2-D FFT spectrum per field);
* ``method="kle"`` (Karhunen-Loeve): the eigendecomposition of the n^2 x n^2 kernel matrix,
  cached, for a fixed length scale. :class:`KarhunenLoeve` truncates it to ``dim`` terms, the usual
  low-dimensional baseline prior: u = mean + sum_k sqrt(lambda_k) phi_k z_k, z ~ N(0, I).

Covariance kernels, :data:`COVARIANCES` (r = distance / length scale): ``squared_exponential``
exp(-r^2 / 2); ``matern`` with smoothness ``nu`` (closed forms for 1/2, 3/2, 5/2, Bessel K_nu
otherwise; ``exponential`` = Matern 1/2, ``matern12``/``matern32``/``matern52`` are
shorthands).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import scipy.special
import torch

from .priors import Prior

__all__ = [
    "COVARIANCES",
    "KarhunenLoeve",
    "canonical_eigh",
    "cell_centres",
    "correlation",
    "grf_covariance",
    "grf_fields",
    "sample_grf",
]

COVARIANCES = ("squared_exponential", "matern", "exponential", "matern12", "matern32", "matern52")
_ALIASES = {"se": "squared_exponential", "rbf": "squared_exponential", "gaussian":
            "squared_exponential", "squared-exponential": "squared_exponential"}
_SHORT_NU = {"exponential": 0.5, "matern12": 0.5, "matern32": 1.5, "matern52": 2.5}
_TABLE_STEP = 2e-4  # spacing of the Matern table in r for general nu (interpolation error ~1e-8)


def _kernel(kernel: str, nu: float | None) -> tuple[str, float | None]:
    """Normalised (name, nu): name is ``squared_exponential`` or ``matern``."""
    if not isinstance(kernel, str):
        raise ValueError(f"kernel must be a string, one of {COVARIANCES}; got {kernel!r}")
    name = _ALIASES.get(kernel.lower(), kernel.lower())
    if name in _SHORT_NU:
        if nu is not None and float(nu) != _SHORT_NU[name]:
            raise ValueError(f"nu={nu} contradicts kernel={kernel!r} (nu = {_SHORT_NU[name]})")
        return "matern", _SHORT_NU[name]
    if name == "squared_exponential":
        if nu is not None:
            raise ValueError("nu is only for Matern kernels; the squared exponential has none")
        return name, None
    if name == "matern":
        if nu is None:
            raise ValueError("kernel='matern' needs nu (e.g. 0.5, 1.5, 2.5)")
        if not (math.isfinite(float(nu)) and float(nu) > 0):
            raise ValueError(f"nu must be a positive number; got {nu!r}")
        return name, float(nu)
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {COVARIANCES}")


def _rho_numpy(r: np.ndarray, name: str, nu: float | None) -> np.ndarray:
    """Correlation at scaled distance r >= 0 (float64)."""
    if name == "squared_exponential":
        return np.exp(-0.5 * r * r)
    if nu == 0.5:
        return np.exp(-r)
    if nu == 1.5:
        s = math.sqrt(3.0) * r
        return (1.0 + s) * np.exp(-s)
    if nu == 2.5:
        s = math.sqrt(5.0) * r
        return (1.0 + s + s * s / 3.0) * np.exp(-s)
    s = np.sqrt(2.0 * nu) * r
    with np.errstate(invalid="ignore", over="ignore"):
        out = 2.0 ** (1.0 - nu) / scipy.special.gamma(nu) * s**nu * scipy.special.kv(nu, s)
    out = np.where(s == 0, 1.0, out)
    return np.nan_to_num(out, nan=0.0, posinf=0.0)


@functools.lru_cache(maxsize=16)
def _matern_table(nu: float, r_max: float) -> torch.Tensor:
    r = np.arange(0.0, r_max + 2 * _TABLE_STEP, _TABLE_STEP)
    return torch.from_numpy(_rho_numpy(r, "matern", nu))


def _rho_torch(r: torch.Tensor, name: str, nu: float | None) -> torch.Tensor:
    """Correlation at scaled distances r (float64 tensor), batched."""
    if name == "squared_exponential":
        return torch.exp(-0.5 * r * r)
    if nu in (0.5, 1.5, 2.5):
        return torch.from_numpy(_rho_numpy(r.numpy(), name, nu))
    r_max = float(r.max())
    table = _matern_table(nu, math.ceil(r_max))
    pos = r / _TABLE_STEP
    idx = pos.floor().long().clamp_(max=table.numel() - 2)
    w = pos - idx
    return table[idx] * (1 - w) + table[idx + 1] * w


def correlation(r, kernel: str = "squared_exponential", nu: float | None = None) -> np.ndarray:
    """Kernel correlation rho(r) at scaled distances r = |x - x'| / length_scale (array)."""
    name, nu = _kernel(kernel, nu)
    return _rho_numpy(np.abs(np.asarray(r, dtype=np.float64)), name, nu)


def cell_centres(n: int) -> np.ndarray:
    """(n * n, 2) cell-centre coordinates (x, y), row-major: index i * n + j is cell (i, j)."""
    c = (np.arange(n) + 0.5) / n
    y, x = np.meshgrid(c, c, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], axis=1)


def _scales(length_scale) -> tuple[float, float]:
    """A fixed length scale: a number (isotropic) or (l_x, l_y) (here a pair is not a range)."""
    if isinstance(length_scale, (int, float)):
        lx = ly = float(length_scale)
    else:
        lx, ly = (float(v) for v in length_scale)
    if not (lx > 0 and ly > 0 and math.isfinite(lx) and math.isfinite(ly)):
        raise ValueError(f"length_scale must be positive and finite; got {length_scale!r}")
    return lx, ly


def _check_grid(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n (grid size) must be an integer >= 2; got {n!r}")
    return int(n)


def grf_covariance(n: int, kernel: str = "squared_exponential", length_scale=0.2,
                   variance: float = 1.0, nu: float | None = None) -> np.ndarray:
    """(n^2, n^2) covariance of the cell-centre values, row-major cells (float64).

    ``length_scale`` is a number or (l_x, l_y) for an anisotropic kernel.
    """
    n = _check_grid(n)
    name, nu = _kernel(kernel, nu)
    lx, ly = _scales(length_scale)
    xy = cell_centres(n)
    dx = (xy[:, None, 0] - xy[None, :, 0]) / lx
    dy = (xy[:, None, 1] - xy[None, :, 1]) / ly
    return float(variance) * _rho_numpy(np.sqrt(dx * dx + dy * dy), name, nu)


def canonical_eigh(cov) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric matrix, eigenvalues decreasing (negative round-off set to 0),
    eigenvectors made unique.

    LAPACK returns any orthonormal basis of a repeated eigenvalue's eigenspace, and any signs,
    depending on its code path (the thread count): on a square grid an isotropic kernel's x and
    y modes tie exactly, so a truncated expansion, or a latent code, would mean different fields
    on different machines. Each tied group (eigenvalues within 1e-11 of the largest) is rotated
    to the Gram-Schmidt basis of its projector applied to fixed seeded probe vectors, and every
    mode's sign is the one with a positive overlap with a fixed probe: both depend only on the
    eigenspace. Groups below 1e-10 of the largest eigenvalue (numerically null) are left as
    they come.
    """
    cov = torch.as_tensor(cov, dtype=torch.float64)
    lam, phi = torch.linalg.eigh(cov)
    lam, phi = lam.flip(0).clamp_min(0.0), phi.flip(1).clone()
    dim = len(lam)
    top = float(lam[0])
    probe = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = 0
    while start < dim and float(lam[start]) > 1e-10 * top:
        end = start + 1
        while end < dim and float(lam[end - 1] - lam[end]) <= 1e-11 * top:
            end += 1
        if end - start > 1:
            gen = torch.Generator().manual_seed(start + 1)
            w = torch.randn(dim, end - start, generator=gen, dtype=torch.float64)
            block = phi[:, start:end]
            q, r = torch.linalg.qr(block @ (block.T @ w))
            phi[:, start:end] = q * torch.sign(r.diagonal())
        start = end
    sign = torch.sign(probe @ phi)
    sign[sign == 0] = 1.0
    return lam, phi * sign


@functools.lru_cache(maxsize=8)
def _kl_basis(n: int, name: str, nu, lx: float, ly: float, variance: float):
    """Eigenpairs of the kernel matrix (:func:`canonical_eigh`)."""
    return canonical_eigh(grf_covariance(n, name if nu is None else "matern", (lx, ly),
                                         variance, nu))


@functools.lru_cache(maxsize=8)
def _range_covariance(n: int, name: str, nu, lo: float, hi: float, variance: float):
    """The length-scale average of the kernel matrices, scales uniform in [lo, hi]
    (Gauss-Legendre, 24 nodes)."""
    x, w = np.polynomial.legendre.leggauss(24)
    kernel = name if nu is None else "matern"
    return sum(wi / 2 * grf_covariance(n, kernel, lo + (hi - lo) * (xi + 1) / 2, variance, nu)
               for xi, wi in zip(x, w, strict=True))


@functools.lru_cache(maxsize=8)
def _range_basis(n: int, name: str, nu, lo: float, hi: float, variance: float):
    """Eigenpairs of :func:`_range_covariance`."""
    return canonical_eigh(_range_covariance(n, name, nu, lo, hi, variance))


class KarhunenLoeve(Prior):
    """Truncated Karhunen-Loeve expansion (``kle``) of a GRF on the n x n cell-centre grid.

    ``decode(z)`` (also :meth:`params`, the prior's map): (B, dim) standard normals -> (B, n, n)
    fields mean + sum_k sqrt(lambda_k) phi_k z_k. ``eigenvalues``: (dim,) lambda_k, decreasing;
    ``modes``: (dim, n, n) orthonormal phi_k; ``energy``: sum of the kept lambda_k over the
    total variance. ``length_scale``: one scale, or (lx, ly); ``length_scale_range`` (lo, hi)
    instead: scales uniform in that range (the ``darcy-grf`` datasets), whose covariance is the
    scale average of the kernel matrices (Gauss-Legendre, 24 nodes), the exact covariance of
    the dataset's fields. The eigendecomposition (O(n^6)) is cached per setting; n = 64 takes
    tens of seconds once.
    """

    def __init__(self, n: int, kernel: str = "squared_exponential", length_scale=0.2,
                 variance: float = 1.0, dim: int = 16, mean: float = 0.0,
                 nu: float | None = None, length_scale_range: tuple[float, float] | None = None):
        n = _check_grid(n)
        name, nu = _kernel(kernel, nu)
        lx, ly = _scales(length_scale)
        if not (math.isfinite(variance) and variance > 0):
            raise ValueError(f"variance must be positive and finite; got {variance!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not (
                1 <= dim <= n * n):
            raise ValueError(f"dim must be an integer in [1, n*n = {n * n}]; got {dim!r}")
        if not math.isfinite(mean):
            raise ValueError(f"mean must be finite; got {mean!r}")
        self.n, self.kernel, self.nu, self.dim = n, name, nu, int(dim)
        self.length_scale, self.variance, self.mean = (lx, ly), float(variance), float(mean)
        self.length_scale_range = None
        if length_scale_range is not None:
            lo, hi = (float(v) for v in length_scale_range)
            if not 0 < lo <= hi:
                raise ValueError(f"length_scale_range must satisfy 0 < lo <= hi, got "
                                 f"{length_scale_range!r}")
            self.length_scale_range = (lo, hi)
            lam, phi = _range_basis(n, name, nu, lo, hi, float(variance))
        else:
            lam, phi = _kl_basis(n, name, nu, lx, ly, float(variance))
        self.energy = float(lam[:dim].sum() / lam.sum())
        self._lam = lam[:dim].clone()
        self._phi = phi[:, :dim].clone()  # (n^2, dim) float64
        self._scaled = (self._phi * self._lam.sqrt()).T.contiguous()  # (dim, n^2)
        self.param_shape = (n, n)

    def params(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z.to(torch.float64))

    def describe(self) -> dict:
        return {"prior": "kle", "dim": self.dim, "grid": self.n, "kernel": self.kernel,
                "length_scale": list(self.length_scale),
                "length_scale_range": None if self.length_scale_range is None
                else list(self.length_scale_range), "variance": self.variance,
                "mean": self.mean, "energy": self.energy}

    @property
    def eigenvalues(self) -> torch.Tensor:
        """(dim,) float64 eigenvalues lambda_k of the kernel matrix, decreasing."""
        return self._lam.clone()

    @property
    def modes(self) -> torch.Tensor:
        """(dim, n, n) float64 orthonormal eigenvectors phi_k on the grid."""
        return self._phi.T.reshape(self.dim, self.n, self.n).clone()

    def decode(self, z) -> torch.Tensor:
        """(B, dim) (or (dim,)) -> (B, n, n) (or (n, n)) fields, in z's floating dtype."""
        z = torch.as_tensor(z)
        if z.shape[-1:] != (self.dim,) or z.ndim not in (1, 2):
            raise ValueError(f"z must have shape (B, {self.dim}) or ({self.dim},); "
                             f"got {tuple(z.shape)}")
        dtype = z.dtype if z.is_floating_point() else torch.float32
        basis = self._scaled.to(device=z.device, dtype=dtype)
        u = z.to(dtype) @ basis + self.mean
        return u.reshape(*z.shape[:-1], self.n, self.n)

    def encode(self, u) -> torch.Tensor:
        """(B, n, n) fields -> (B, dim) coefficients z of their projection on the kept modes."""
        u = torch.as_tensor(u)
        if u.shape[-2:] != (self.n, self.n) or u.ndim not in (2, 3):
            raise ValueError(f"u must have shape (B, {self.n}, {self.n}); got {tuple(u.shape)}")
        dtype = u.dtype if u.is_floating_point() else torch.float32
        flat = u.to(dtype).reshape(*u.shape[:-2], self.n * self.n) - self.mean
        return flat @ (self._phi / self._lam.clamp_min(1e-300).sqrt()).to(dtype)

    def covariance(self) -> torch.Tensor:
        """(n^2, n^2) float64 covariance of the truncated expansion."""
        return self._scaled.T @ self._scaled

    def full_covariance(self) -> torch.Tensor:
        """(n^2, n^2) float64 covariance of the GRF itself (all terms)."""
        kernel = self.kernel if self.nu is None else "matern"
        if self.length_scale_range is not None:
            cov = _range_covariance(self.n, self.kernel, self.nu, *self.length_scale_range,
                                    self.variance)
        else:
            cov = grf_covariance(self.n, kernel, self.length_scale, self.variance, self.nu)
        return torch.as_tensor(cov, dtype=torch.float64)

    def __repr__(self) -> str:
        return (f"KarhunenLoeve(n={self.n}, kernel={self.kernel!r}, nu={self.nu}, "
                f"length_scale={self.length_scale}, variance={self.variance}, dim={self.dim}, "
                f"energy={self.energy:.4f})")


def _torus_d2(n: int, m: int) -> torch.Tensor:
    """(m,) squared periodic distances (in units of the domain) on a torus of m cells."""
    j = torch.arange(m, dtype=torch.float64)
    d = torch.minimum(j, m - j) / n
    return d * d


def _spectra(n: int, m: int, name: str, nu, lx: torch.Tensor, ly: torch.Tensor,
             half: bool = False) -> torch.Tensor:
    """(B, m, m) eigenvalues of the circulant embeddings, one per (l_x, l_y); with ``half`` the
    (B, m, m // 2 + 1) rfft2 layout (x last)."""
    d2 = _torus_d2(n, m)
    if name == "squared_exponential":  # separable: product of 1-D spectra
        sx = torch.fft.fft(torch.exp(-0.5 * d2 / lx[:, None] ** 2)).real
        sy = torch.fft.fft(torch.exp(-0.5 * d2 / ly[:, None] ** 2)).real
        if half:
            sx = sx[:, : m // 2 + 1]
        return sy[:, :, None] * sx[:, None, :]
    r = torch.sqrt(d2[None, None, :] / lx[:, None, None] ** 2
                   + d2[None, :, None] / ly[:, None, None] ** 2)
    rho = _rho_torch(r, name, nu)
    return (torch.fft.rfft2(rho) if half else torch.fft.fft2(rho)).real


def _nice(m: int) -> int:
    """Smallest 2^a 3^b >= m (fast FFT sizes)."""
    best = 1 << (m - 1).bit_length()
    p3 = 1
    while p3 < best:
        p2 = p3
        while p2 < m:
            p2 *= 2
        best = min(best, p2)
        p3 *= 3
    return best


def _embedding_size(n: int, name: str, nu, scales: Sequence[tuple[float, float]]) -> int:
    """Smallest torus size (>= 2n) whose embeddings are non-negative up to a clipped negative
    mass of 1e-4 of the trace: covariance entries are then exact within 1e-4 * variance."""
    m = _nice(2 * n)
    lx = torch.tensor([s[0] for s in scales], dtype=torch.float64)
    ly = torch.tensor([s[1] for s in scales], dtype=torch.float64)
    while True:
        lam = _spectra(n, m, name, nu, lx, ly)
        negative = float((lam.clamp_max(0).abs().sum(dim=(1, 2)) / lam.sum(dim=(1, 2))).max())
        if negative <= 1e-4 or m >= 16 * n:
            return m
        m = _nice(m + 1 + m // 4)


def _ranges(length_scale, anisotropic: bool) -> tuple[float, float, float, float]:
    """(lo_x, hi_x, lo_y, hi_y) from a number, a range (lo, hi), or with ``anisotropic`` a pair
    of ranges ((lo_x, hi_x), (lo_y, hi_y))."""
    try:
        if isinstance(length_scale, (int, float)):
            v = float(length_scale)
            out = (v, v, v, v)
        elif anisotropic and not isinstance(length_scale[0], (int, float)):
            (a, b), (c, d) = length_scale
            out = (float(a), float(b), float(c), float(d))
        else:
            lo, hi = (float(v) for v in length_scale)
            out = (lo, hi, lo, hi)
    except (TypeError, ValueError):
        out = (math.nan,) * 4
    ok = all(math.isfinite(v) and v > 0 for v in out) and out[0] <= out[1] and out[2] <= out[3]
    if not ok:
        raise ValueError("length_scale must be positive: a number, a range (lo, hi) with "
                         "0 < lo <= hi, or with anisotropic=True ((lo_x, hi_x), (lo_y, hi_y)); "
                         f"got {length_scale!r}")
    return out


def _draw_scales(ranges, n_fields: int, distribution: str, anisotropic: bool,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Per-field (l_x, l_y) and the extreme pairs that fix the embedding size."""
    if distribution not in ("uniform", "log-uniform"):
        raise ValueError(f"length_scale_distribution must be 'uniform' or 'log-uniform'; "
                         f"got {distribution!r}")

    def draw(lo, hi):
        if lo == hi:
            return torch.full((n_fields,), lo, dtype=torch.float64)
        u = torch.rand(n_fields, generator=gen, dtype=torch.float64)
        if distribution == "uniform":
            return lo + (hi - lo) * u
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)

    lox, hix, loy, hiy = ranges
    lx = draw(lox, hix)
    ly = draw(loy, hiy) if anisotropic else lx
    extremes = sorted({(a, b) for a in (lox, hix) for b in (loy, hiy)
                       if anisotropic or (a, b) in ((lox, loy), (hix, hiy))})
    return lx, ly, extremes


def _generator(seed, generator) -> torch.Generator:
    if generator is not None:
        if seed is not None:
            raise ValueError("give seed or generator, not both")
        return generator
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def sample_grf(n_fields: int, n: int = 16, kernel: str = "squared_exponential",
               length_scale=(0.1, 0.5), variance: float = 1.0, mean: float = 0.0,
               nu: float | None = None, *, length_scale_distribution: str = "uniform",
               anisotropic: bool = False, method: str = "fft", seed: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(n_fields, n, n) float32 GRF draws on the cell-centre grid.

    ``length_scale``: a number (fixed) or a range (lo, hi) from which each field draws its own
    length scale (``length_scale_distribution`` uniform or log-uniform); with ``anisotropic``
    l_x and l_y are drawn independently, from the same range or from ((lo_x, hi_x),
    (lo_y, hi_y)) (equal ends fix them). ``method``: ``fft`` (circulant
    embedding, any length scales) or ``kle`` (Karhunen-Loeve: cached eigendecomposition; fixed
    length scale, n <= 32 is quick). Same seed, same fields.
    """
    if isinstance(n_fields, bool) or not isinstance(n_fields, (int, np.integer)) or n_fields < 1:
        raise ValueError(f"n_fields must be a positive integer; got {n_fields!r}")
    n = _check_grid(n)
    name, nu = _kernel(kernel, nu)
    if not (math.isfinite(variance) and variance > 0):
        raise ValueError(f"variance must be positive and finite; got {variance!r}")
    if not math.isfinite(mean):
        raise ValueError(f"mean must be finite; got {mean!r}")
    gen = _generator(seed, generator)
    ranges = _ranges(length_scale, anisotropic)
    if method == "kl":
        raise ValueError("method='kl' is now spelt method='kle' (Karhunen-Loeve)")
    if method == "kle":
        lx, hx, ly, hy = ranges
        if lx != hx or ly != hy:
            raise ValueError("method='kle' needs a fixed length scale (a number, or with "
                             "anisotropic=True ((l_x, l_x), (l_y, l_y))); use method='fft' for "
                             "a range")
        lam, phi = _kl_basis(n, name, nu, lx, ly, float(variance))
        xi = torch.randn(n_fields, n * n, generator=gen, dtype=torch.float64)
        u = xi @ (phi * lam.sqrt()).T + mean
        return u.reshape(n_fields, n, n).float()
    if method != "fft":
        raise ValueError(f"method must be 'fft' or 'kle'; got {method!r}")
    lx, ly, extremes = _draw_scales(ranges, int(n_fields), length_scale_distribution,
                                    anisotropic, gen)
    if name == "squared_exponential":
        out = _sample_separable(n, lx, ly, len(extremes) == 1, gen)
    else:
        out = _sample_circulant(n, name, nu, lx, ly, extremes, gen)
    return out.mul_(math.sqrt(variance)).add_(mean)


def _factor_1d(n: int, scales: torch.Tensor) -> torch.Tensor:
    """(B, n, n) float32 A = A^T with A A^T = the 1-D squared-exponential covariance at the
    centres."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    d2 = (c[:, None] - c[None, :]) ** 2
    lam, vec = torch.linalg.eigh(torch.exp(-0.5 * d2 / scales[:, None, None] ** 2))
    # the symmetric square root: unique, so a seed gives the same fields on every LAPACK path
    # (an eigenvector's sign, which LAPACK leaves open, would flip a field's pattern)
    return ((vec * lam.clamp_min(0).sqrt()[:, None, :]) @ vec.transpose(-1, -2)).float()


def _sample_separable(n: int, lx: torch.Tensor, ly: torch.Tensor, fixed: bool,
                      gen: torch.Generator) -> torch.Tensor:
    """Squared exponential: C = C_y kron C_x, so u = A_y Z A_x^T with Z an n x n white noise."""
    n_fields = lx.numel()
    out = torch.empty(n_fields, n, n, dtype=torch.float32)
    if fixed:
        ax = _factor_1d(n, lx[:1])[0]
        ay = ax if float(lx[0]) == float(ly[0]) else _factor_1d(n, ly[:1])[0]
    chunk = 4096
    for s in range(0, n_fields, chunk):
        e = min(n_fields, s + chunk)
        if not fixed:
            ax = _factor_1d(n, lx[s:e])
            ay = ax if torch.equal(lx[s:e], ly[s:e]) else _factor_1d(n, ly[s:e])
        z = torch.randn(e - s, n, n, generator=gen)
        out[s:e] = ay @ z @ ax.transpose(-1, -2)
    return out


def _sample_circulant(n: int, name: str, nu, lx: torch.Tensor, ly: torch.Tensor,
                      extremes: list, gen: torch.Generator) -> torch.Tensor:
    """Circulant embedding on an m x m torus: exact grid covariance (up to the clipped mass)."""
    n_fields = lx.numel()
    m = _embedding_size(n, name, nu, extremes)
    out = torch.empty(n_fields, n, n, dtype=torch.float32)
    chunk = max(1, (1 << 21) // (m * m))
    if len(extremes) == 1:
        # one spectrum: the real and imaginary parts of one complex draw are two fields
        amp = (_spectra(n, m, name, nu, lx[:1], ly[:1])[0].clamp_min(0).sqrt() / m).float()
        for s in range(0, n_fields, 2 * chunk):
            e = min(n_fields, s + 2 * chunk)
            w = torch.randn((e - s + 1) // 2, 2, m, m, generator=gen)
            z = torch.fft.fft2(amp * torch.complex(w[:, 0], w[:, 1]))[:, :n, :n]
            out[s:e] = torch.stack([z.real, z.imag], dim=1).reshape(-1, n, n)[: e - s]
        return out
    # a spectrum per field: u = C^(1/2) xi = irfft2(sqrt(lambda) * rfft2(xi))
    for s in range(0, n_fields, chunk):
        e = min(n_fields, s + chunk)
        amp = _spectra(n, m, name, nu, lx[s:e], ly[s:e], half=True).clamp_min_(0).sqrt_()
        xi = torch.randn(e - s, m, m, generator=gen)
        out[s:e] = torch.fft.irfft2(amp.float() * torch.fft.rfft2(xi), s=(m, m))[:, :n, :n]
    return out


def grf_fields(n_fields: int, n: int = 16, kernel: str = "squared_exponential",
               length_scale=(0.1, 0.5), variance: float = 1.0, mean: float = 0.0,
               nu: float | None = None, seed: int | None = 0, **kwargs) -> torch.Tensor:
    """(n_fields, 1, n, n) float32 log-permeability training images (see :func:`sample_grf`).

    Defaults: the coarse Darcy benchmark of spec §3.2 (16 x 16 grid, squared-exponential
    kernel, unit variance, zero mean, a length scale per field uniform in [0.1, 0.5]; the paper's
    exact kernel and range are unverified), seed 0 so the dataset is the same on every call.
    """
    return sample_grf(n_fields, n, kernel, length_scale, variance, mean, nu, seed=seed,
                      **kwargs).unsqueeze(1)
