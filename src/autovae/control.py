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

and any spec as ``control:SPEC``, e.g. ``--data control:logistic/logistic:3``. The spec is a
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

__all__ = ["CONTROLS", "control_arrays", "control_decoder", "generating_spec", "true_nll"]

SIDE = 8  # images are SIDE x SIDE, one channel
COUNT, VAL, TEST = 6000, 1000, 1000
GAIN = 1.0  # logits = GAIN * z W + b, W with unit-variance entries over sqrt(dim): most
# draws leave the pixels unsaturated, so the latents' tails show in the images
SEED = 0

# name -> (generating latent spec, its total dim)
CONTROLS: dict[str, tuple[str, int]] = {
    "control-cauchy": ("cauchy/cauchy:2", 2),
    "control-laplace": ("laplace/laplace:2", 2),
    "control-mixed": ("70% laplace/laplace, 30% cauchy/cauchy", 10),
}


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
                   seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(images (count, 1, 8, 8) float32 in {0, 1}, latents (count, dim)) of the control whose
    generating spec is ``text``; the same for the same arguments (read-only arrays)."""
    spec = generating_spec(text, dim)
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # the priors sample with torch's global generator
    try:
        z = spec.sample_prior(count).double()
        w, b = control_decoder(spec.dim, seed)
        p = torch.sigmoid(GAIN * z @ w + b)
        x = torch.bernoulli(p, generator=torch.Generator().manual_seed(seed + 1))
    finally:
        torch.set_rng_state(state)
    x = x.reshape(count, 1, SIDE, SIDE).numpy().astype(np.float32)
    z = z.numpy()
    x.flags.writeable = z.flags.writeable = False  # shared by every caller through the cache
    return x, z


@torch.no_grad()
def true_nll(name: str, samples: int = 200_000, seed: int = 0, batch: int = 20_000) -> float:
    """The test NLL of the generating model itself (its prior, its decoder), in nats per image:
    the floor a model of the control can reach, estimated by importance sampling with the prior
    as proposal (``samples`` draws per image; fine for a few latent dims)."""
    from .data import load_data

    text, dim = CONTROLS[name] if name in CONTROLS else (name.partition(":")[2], None)
    spec = generating_spec(text, dim)
    x = load_data(name).test.flatten(1).double()
    w, b = control_decoder(spec.dim)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        total = torch.full((x.shape[0],), -torch.inf, dtype=torch.float64)
        for start in range(0, samples, batch):
            logits = GAIN * spec.sample_prior(min(batch, samples - start)).double() @ w + b
            log_lik = x @ logits.T - torch.nn.functional.softplus(logits).sum(-1)
            total = torch.logaddexp(total, torch.logsumexp(log_lik, 1))
    finally:
        torch.set_rng_state(state)
    return -(total - math.log(samples)).mean().item()


def _load(text: str, dim: int | None, root: Path, download: bool) -> _Source:
    return _Source(control_arrays(text, dim)[0], None, None, None, None)


def _info(name: str, text: str, dim: int | None) -> DatasetInfo:
    spec = generating_spec(text, dim)  # refuses an impossible pair before any loading
    return DatasetInfo(name, f"known-belief control: {spec} latents, fixed decoder, 6k 8x8 "
                             "binary", functools.partial(_load, text, dim), val_size=VAL,
                       test_size=TEST)


for _name, (_text, _dim) in CONTROLS.items():
    register_dataset(_info(_name, _text, _dim))
register_dataset_family("control", lambda spec: _info(f"control:{spec}", spec, None))
