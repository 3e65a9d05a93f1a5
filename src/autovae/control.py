"""Control data where the answer is known: binary images decoded from latents of known beliefs.

A control dataset is drawn from a generative model that is fixed and known: latents ``z`` from
the prior of a latent spec (e.g. ``cauchy/cauchy:2``: two iid Cauchy dims), a fixed decoder
``logits = gain * z W + b`` (``W``, ``b`` drawn once from a seeded generator), and one Bernoulli
draw per pixel. :func:`true_nll` is the generating model's own test NLL, the floor any model
of the data can reach. With the known decoder, the generating prior is worth nats: a VAE whose
decoder is that decoder beats normal/normal with the same bound by more than one nat (tested).
A VAE that learns an MLP decoder can warp a normal prior into the generating one, so there the
pairing need not matter; a pairing search should find the generating pairing or one as good
within the seed spread. Named controls (``autovae datasets`` lists them):

* ``control-cauchy``: ``cauchy/cauchy:2``;
* ``control-laplace``: ``laplace/laplace:2``;
* ``control-mixed``: ``70% laplace/laplace, 30% cauchy/cauchy`` of 10 dims (7 + 3);

and any spec as ``control:SPEC``, e.g. ``--data control:logistic/logistic:3``.

A learned MLP decoder can warp a normal latent into the bounded-logit images above, so there
the pairing need not matter. The **Gaussian controls** remove that freedom: real-valued data
``x = z W + b + SIGMA * eps`` (the same ``W``, ``b``; ``eps`` iid standard normal), scored with
the Gaussian likelihood; their latents are drawn from the prior truncated to
``[-TRUNCATE, TRUNCATE]``. Their Cauchy latents give Cauchy-tailed data, and an MLP (ReLU or
tanh) fed a normal latent grows at most linearly in ``|z|``, while the map from a normal to a
Cauchy latent grows like ``exp(z^2 / 2)``: normal/normal must spend many nats on the tails.

* ``control-gaussian-cauchy``: ``cauchy/cauchy:2`` latents, Gaussian noise ``SIGMA``;
* ``control-gaussian:SPEC`` for any spec.

:func:`true_nll` is exact up to Monte Carlo error in 2 latent dims for them too (the noise is
integrated out analytically along the decoder's plane). The spec is a
latent spec (:class:`~autovae.beliefs.LatentSpec`), so a pair whose KL is infinite for every
parameter (``cauchy/normal``) is refused: no VAE could be trained with the generating pairing.
Each dataset has 6000 images of 8 x 8 (4000 train, 1000 val, 1000 test), the same every call.

>>> x, z = control_arrays("laplace/laplace:2", count=5)
>>> x.shape, z.shape, sorted(set(x.flatten().tolist())) == [0.0, 1.0]
((5, 1, 8, 8), (5, 2), True)
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from .beliefs import LatentSpec
from .data import DatasetInfo, _Source, register_dataset, register_dataset_family

__all__ = ["CONTROLS", "GAUSSIAN_CONTROLS", "control_arrays", "control_decoder",
           "generating_pairing", "generating_spec", "is_gaussian_control", "true_nll"]

SIDE = 8  # images are SIDE x SIDE, one channel
COUNT, VAL, TEST = 6000, 1000, 1000
GAIN = 1.0  # logits = GAIN * z W + b, W with unit-variance entries over sqrt(dim): most
# draws leave the pixels unsaturated, so the latents' tails show in the images
SEED = 0
SIGMA = 0.1  # the Gaussian controls' noise scale, in data units
TRUNCATE = 50.0  # the Gaussian controls' latents are drawn from the prior truncated to
# [-TRUNCATE, TRUNCATE] (the map's latent_clip): every image can be reached by the generating
# pairing, and the data stay within about +-100 (a raw Cauchy draw of 6000 reaches 1e4)

# name -> (generating latent spec, its total dim)
CONTROLS: dict[str, tuple[str, int]] = {
    "control-cauchy": ("cauchy/cauchy:2", 2),
    "control-laplace": ("laplace/laplace:2", 2),
    "control-mixed": ("70% laplace/laplace, 30% cauchy/cauchy", 10),
}
# name -> (generating latent spec, its total dim): real-valued x = z W + b + SIGMA * eps
GAUSSIAN_CONTROLS: dict[str, tuple[str, int]] = {
    "control-gaussian-cauchy": ("cauchy/cauchy:2", 2),
}


def is_gaussian_control(name: str) -> bool:
    """Whether the dataset ``name`` is a Gaussian (real-valued) control."""
    return name in GAUSSIAN_CONTROLS or name.startswith("control-gaussian:")


def generating_spec(text: str, dim: int | None = None) -> LatentSpec:
    """The generating latent spec of a control; a pair with infinite KL is refused, naming it."""
    try:
        return LatentSpec.parse(text, dim)
    except ValueError as err:
        raise ValueError(f"control data {text!r}: {err}") from None


def control_decoder(dim: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The known decoder's (W, b): ``logits = GAIN * z @ W + b``, W (dim, 64), b (64,)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, SIDE * SIDE, generator=g, dtype=torch.float64) / dim ** 0.5
    b = 0.5 * torch.randn(SIDE * SIDE, generator=g, dtype=torch.float64)
    return w, b


@functools.lru_cache(maxsize=8)
def control_arrays(text: str, dim: int | None = None, count: int = COUNT,
                   seed: int = SEED, gaussian: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images (count, 1, 8, 8) float32, latents (count, dim)) of the control whose generating
    spec is ``text``: in {0, 1} (Bernoulli on ``z W + b``), or with ``gaussian`` real values
    ``z W + b + SIGMA * eps``; the same for the same arguments (read-only arrays)."""
    spec = generating_spec(text, dim)
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # the priors sample with torch's global generator
    try:
        z = _truncated_prior(spec, count) if gaussian else spec.sample_prior(count).double()
        w, b = control_decoder(spec.dim, seed)
        g = torch.Generator().manual_seed(seed + 1)
        if gaussian:
            mean = z @ w + b
            x = mean + SIGMA * torch.randn(mean.shape, generator=g, dtype=mean.dtype)
        else:
            x = torch.bernoulli(torch.sigmoid(GAIN * z @ w + b), generator=g)
    finally:
        torch.set_rng_state(state)
    x = x.reshape(count, 1, SIDE, SIDE).numpy().astype(np.float32)
    z = z.numpy()
    x.flags.writeable = z.flags.writeable = False  # shared by every caller through the cache
    return x, z


def _truncated_prior(spec: LatentSpec, count: int) -> torch.Tensor:
    """count draws (float64) from the prior truncated to [-TRUNCATE, TRUNCATE] in every dim."""
    u = torch.rand(count, spec.dim, dtype=torch.float64)
    parts = []
    for prior, sl in zip(spec.priors(), spec.slices, strict=True):
        lo, hi = (prior.cdf(torch.full((sl.stop - sl.start,), c)).double()
                  for c in (-TRUNCATE, TRUNCATE))
        parts.append(prior.icdf((lo + u[:, sl] * (hi - lo)).float()).double())
    return torch.cat(parts, -1).clamp(-TRUNCATE, TRUNCATE)


def _truncated_log_prior(spec: LatentSpec, z: torch.Tensor) -> torch.Tensor:
    """log density (summed over dims) of the truncated prior at z (..., dim), float64."""
    out = torch.zeros(z.shape[:-1], dtype=torch.float64)
    for prior, sl in zip(spec.priors(), spec.slices, strict=True):
        n = sl.stop - sl.start
        mass = (prior.cdf(torch.full((n,), TRUNCATE)) - prior.cdf(torch.full((n,), -TRUNCATE)))
        part = prior.log_prob(z[..., sl].float()).double() - mass.double().log()
        out = out + part.masked_fill(z[..., sl].abs() > TRUNCATE, -torch.inf).sum(-1)
    return out


def generating_pairing(name: str, dim: int) -> str:
    """The generating pairing of control ``name`` as a latent spec of ``dim`` dims (a model
    larger than the generating one gets more dims of the same pairing): the control's own spec
    for the binary controls; for the Gaussian controls a normal posterior (the exact posterior
    of a linear-Gaussian decoder is close to normal) with the generating prior."""
    spec, gaussian = _spec_of(name)
    if dim == spec.dim:
        blocks = [(b.posterior, b.prior, b.size) for b in spec.blocks]
    else:  # the blocks' shares of dim (at least one dim each)
        sizes = [max(1, round(b.size * dim / spec.dim)) for b in spec.blocks]
        sizes[-1] = max(1, dim - sum(sizes[:-1]))
        blocks = [(b.posterior, b.prior, n) for b, n in zip(spec.blocks, sizes, strict=True)]
    text = ",".join(f"{'normal' if gaussian else q}/{p}:{n}" for q, p, n in blocks)
    return str(LatentSpec.parse(text, dim))


def _spec_of(name: str) -> tuple[LatentSpec, bool]:
    """(generating spec, gaussian?) of a control by its dataset name."""
    if name in CONTROLS or name in GAUSSIAN_CONTROLS:
        text, dim = {**CONTROLS, **GAUSSIAN_CONTROLS}[name]
    else:
        text, dim = name.partition(":")[2], None
    return generating_spec(text, dim), is_gaussian_control(name)


@torch.no_grad()
def true_nll(name: str, samples: int = 200_000, seed: int = 0, batch: int = 20_000) -> float:
    """The test NLL of the generating model itself (its prior, its decoder), in nats per image:
    the floor a model of the control can reach, by importance sampling (``samples`` draws per
    image; fine for a few latent dims). Binary controls: the prior is the proposal. Gaussian
    controls: the noise off the decoder's plane is integrated exactly, and along it ``p(x) =
    const * E[p(z)]`` under ``z ~ N(z_hat, SIGMA^2 (W W^T)^-1)`` (``z_hat`` the least-squares
    latent), estimated with that Gaussian's draws."""
    from .data import load_data

    spec, gaussian = _spec_of(name)
    x = load_data(name).test.flatten(1).double()
    w, b = control_decoder(spec.dim)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        if gaussian:
            return -_gaussian_log_evidence(spec, x, w, b, samples, batch, seed).mean().item()
        total = torch.full((x.shape[0],), -torch.inf, dtype=torch.float64)
        for start in range(0, samples, batch):
            logits = GAIN * spec.sample_prior(min(batch, samples - start)).double() @ w + b
            log_lik = x @ logits.T - torch.nn.functional.softplus(logits).sum(-1)
            total = torch.logaddexp(total, torch.logsumexp(log_lik, 1))
    finally:
        torch.set_rng_state(state)
    return -(total - math.log(samples)).mean().item()


def _gaussian_log_evidence(spec: LatentSpec, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                           samples: int, batch: int, seed: int) -> torch.Tensor:
    """log p(x) per row of x under z ~ prior, x = z W + b + SIGMA * eps (see true_nll)."""
    d, big_d = w.shape
    a = w @ w.T
    r = x - b
    z_hat = torch.linalg.solve(a, (r @ w.T).T).T  # (N, d)
    residual = ((r - z_hat @ w) ** 2).sum(1)
    cov_chol = torch.linalg.cholesky(SIGMA ** 2 * torch.linalg.inv(a))
    const = (-0.5 * big_d * math.log(2 * math.pi * SIGMA ** 2) - residual / (2 * SIGMA ** 2)
             + 0.5 * d * math.log(2 * math.pi) + torch.log(torch.diagonal(cov_chol)).sum())
    g = torch.Generator().manual_seed(seed)
    total = torch.full((x.shape[0],), -torch.inf, dtype=torch.float64)
    for start in range(0, samples, batch):
        eps = torch.randn(min(batch, samples - start), d, generator=g, dtype=torch.float64)
        z = z_hat[:, None, :] + eps @ cov_chol.T  # (N, S, d)
        log_prior = _truncated_log_prior(spec, z)
        total = torch.logaddexp(total, torch.logsumexp(log_prior, 1))
    return const + total - math.log(samples)


def _load(text: str, dim: int | None, gaussian: bool, root: Path, download: bool) -> _Source:
    return _Source(control_arrays(text, dim, gaussian=gaussian)[0], None, None, None, None)


def _info(name: str, text: str, dim: int | None, gaussian: bool = False) -> DatasetInfo:
    spec = generating_spec(text, dim)  # refuses an impossible pair before any loading
    what = (f"real values z W + b + {SIGMA:g} * noise, z truncated to +-{TRUNCATE:g} "
            "(--likelihood gaussian)" if gaussian else "binary")
    return DatasetInfo(name, f"known-belief control: {spec} latents, fixed decoder, 6k 8x8 "
                             f"{what}", functools.partial(_load, text, dim, gaussian),
                       val_size=VAL, test_size=TEST)


for _name, (_text, _dim) in CONTROLS.items():
    register_dataset(_info(_name, _text, _dim))
for _name, (_text, _dim) in GAUSSIAN_CONTROLS.items():
    register_dataset(_info(_name, _text, _dim, gaussian=True))
register_dataset_family("control", lambda spec: _info(f"control:{spec}", spec, None))
register_dataset_family("control-gaussian",
                        lambda spec: _info(f"control-gaussian:{spec}", spec, None, True))
