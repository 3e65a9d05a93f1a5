"""LatentSpec: the latent space as blocks of dimensions, each with its own (posterior, prior) pair.

A spec such as ``logistic/normal:14,cauchy/cauchy:6`` says: 14 latent dimensions have a logistic
posterior and a normal prior, 6 have a Cauchy posterior and a Cauchy prior. Fractions work too:
``LatentSpec.parse("70% logistic/normal, 30% cauchy/cauchy", dim=20)``.

The spec fixes the encoder's output layout: ``2 * dim`` numbers per data point, the first ``dim``
raw locations and the next ``dim`` raw scales, both in block order. ``posterior(h)`` maps them to
valid parameters (softplus scales; for conditional pairs a map that keeps the KL finite, e.g. a
Laplace posterior's scale stays below its Gumbel prior's). Every operation runs one vectorized
pass per block; there is no per-dimension Python loop.

>>> spec = LatentSpec.parse("logistic/normal:2,cauchy/cauchy:1")
>>> h = torch.zeros(4, spec.encoder_outputs)
>>> q = spec.posterior(h)
>>> z = spec.rsample(q, samples=3)          # (3, 4, 3)
>>> spec.log_q(q, z).shape, spec.kl(q).shape
(torch.Size([3, 4]), torch.Size([4]))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_memory
from .divergence import PAIRS, PairKind, kl
from .families import LocationScale, family_class

__all__ = ["Block", "LatentSpec", "NonFiniteInputError", "Posterior"]


class NonFiniteInputError(ValueError):
    """A NaN or infinity reached the latent math (an encoder output): a ValueError for library
    callers; the training loop applies its non-finite policy to it (stop or skip the batch)."""

MIN_SCALE = 1e-4


@dataclass(frozen=True)
class Block:
    """A run of ``size`` latent dimensions sharing one (posterior, prior) pair of families."""

    posterior: str
    prior: str
    size: int
    prior_loc: float = 0.0
    prior_scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "posterior", family_class(self.posterior).name)
        object.__setattr__(self, "prior", family_class(self.prior).name)
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"block {self.pair}: size must be a positive integer, got {self.size}")
        if not (math.isfinite(self.prior_loc) and math.isfinite(self.prior_scale)
                and self.prior_scale > 0):
            raise ValueError(f"block {self.pair}: prior loc must be finite and prior scale "
                             f"positive, got loc={self.prior_loc}, scale={self.prior_scale}")
        info = PAIRS[(self.posterior, self.prior)]
        if not info.finite:
            raise ValueError(
                f"pair {self.pair} has KL = +inf for every parameter ({info.note}); choose "
                f"another pair (autovae.beliefs.PAIRS lists which are finite)"
            )

    @property
    def pair(self) -> str:
        return f"{self.posterior}/{self.prior}"

    def __str__(self) -> str:
        return f"{self.pair}:{self.size}"


class Posterior(list):
    """The per-block posterior distributions for a batch (a list, in block order)."""


_BLOCK = re.compile(r"^\s*([A-Za-z_]+)\s*/\s*([A-Za-z_]+)\s*(?::\s*(\S+))?\s*$")
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*(.+)$")


# a latent of more dimensions than this fits no network (nor a tensor index of 32 bits)
MAX_DIM = 2**31 - 1


def _bounded(size: int, what: str) -> int:
    """``size`` when a latent of that many dimensions can be held: within :data:`MAX_DIM`, and
    its prior's parameters (8 bytes a dimension) within this machine's memory unless built on
    the meta device (where a model's size is checked without allocating)."""
    if size > MAX_DIM:
        raise ValueError(f"{what}: {size:,} dimensions is beyond any network ({MAX_DIM:,} at "
                         "most); give a smaller size (e.g. 20)")
    if torch.empty(0).device.type != "meta":
        check_memory({f"{what} (the prior's loc and scale)": 8 * size}, what)
    return size


def _parse_blocks(text: str, dim: int | None) -> list[tuple[str, str, int]]:
    """Parse 'a/b:n, ...' or '70% a/b, 30% c/d' (needs dim) into (posterior, prior, size)."""
    parts = [p for p in re.split(r"[,;]", text) if p.strip()]
    if not parts:
        raise ValueError("empty latent spec; write e.g. 'normal/normal:20' or "
                         "'70% logistic/normal, 30% cauchy/cauchy' with dim")
    fractions, pairs = [], []
    for part in parts:
        frac = _FRACTION.match(part)
        body = frac.group(2) if frac else part
        m = _BLOCK.match(body)
        if not m:
            raise ValueError(f"malformed latent block {part.strip()!r}; expected "
                             "'posterior/prior:size' or 'NN% posterior/prior'")
        post, prior, size = m.groups()
        if frac:
            if size is not None:
                raise ValueError(f"latent block {part.strip()!r} gives both a percentage and a "
                                 "size; use one")
            fractions.append(float(frac.group(1)))
        else:
            fractions.append(None)
        pairs.append((post, prior, size))
    if all(f is None for f in fractions):
        if len(pairs) == 1 and pairs[0][2] is None:
            if dim is None:
                raise ValueError(f"latent block {text.strip()!r} has no size; write "
                                 f"'{pairs[0][0]}/{pairs[0][1]}:20' or pass dim")
            return [(pairs[0][0], pairs[0][1], dim)]
        sizes = []
        for (post, prior, size) in pairs:
            if size is None or not size.isdigit() or int(size) < 1:
                raise ValueError(f"latent block '{post}/{prior}' needs a positive integer size, "
                                 f"got {size!r}; write e.g. '{post}/{prior}:10'")
            sizes.append(_bounded(int(size), f"latent block '{post}/{prior}:{size}'"))
        if dim is not None and sum(sizes) != dim:
            single = (f"give latent '{pairs[0][0]}/{pairs[0][1]}:{dim}', or "
                      if len(pairs) == 1 else "")
            raise ValueError(f"latent blocks {text.strip()!r} add up to {sum(sizes)} dimensions "
                             f"but dim={dim}: dim (latent_dim, --latent-dim) sets the total "
                             "of a latent spec written in percentages ('70% logistic/normal, "
                             f"30% cauchy/cauchy'); {single}leave latent_dim out")
        return [(post, prior, n) for (post, prior, _), n in zip(pairs, sizes, strict=True)]
    if any(f is None for f in fractions):
        raise ValueError("mix of sizes and percentages in the latent spec; use one or the other")
    if dim is None or dim < 1:
        raise ValueError("a latent spec with percentages needs the total dim, e.g. dim=20")
    dim = _bounded(dim, f"latent_dim = {dim}")
    total = sum(fractions)
    if abs(total - 100) > 1e-6:
        raise ValueError(f"latent percentages add up to {total:g}%, not 100%")
    # Largest-remainder rounding: sizes add up to dim exactly.
    exact = [f / 100 * dim for f in fractions]
    sizes = [math.floor(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in order[: dim - sum(sizes)]:
        sizes[i] += 1
    for (post, prior, _), f, n in zip(pairs, fractions, sizes, strict=True):
        if n == 0:
            raise ValueError(f"{f:g}% of dim={dim} rounds to 0 dimensions for '{post}/{prior}'; "
                             "raise the percentage or dim")
    return [(post, prior, n) for (post, prior, _), n in zip(pairs, sizes, strict=True)]


class LatentSpec(nn.Module):
    """Latent dimensions in blocks of (posterior, prior) family pairs.

    Args:
        blocks: the blocks, in order.
        learn_prior: make every block's prior loc and scale learnable parameters (one per
            dimension); otherwise they are fixed buffers.
        min_scale: floor added to every softplus-mapped posterior scale.
    """

    def __init__(self, blocks: list[Block], learn_prior: bool = False,
                 min_scale: float = MIN_SCALE):
        super().__init__()
        if not blocks:
            raise ValueError("a LatentSpec needs at least one block")
        self.blocks = list(blocks)
        self.learn_prior = learn_prior
        self.min_scale = min_scale
        self.dim = sum(b.size for b in self.blocks)
        self.slices = []
        start = 0
        for i, b in enumerate(self.blocks):
            self.slices.append(slice(start, start + b.size))
            start += b.size
            loc = torch.full((b.size,), float(b.prior_loc))
            log_scale = torch.full((b.size,), math.log(b.prior_scale))
            if learn_prior:
                self.register_parameter(f"prior_loc_{i}", nn.Parameter(loc))
                self.register_parameter(f"prior_log_scale_{i}", nn.Parameter(log_scale))
            else:
                self.register_buffer(f"prior_loc_{i}", loc)
                self.register_buffer(f"prior_log_scale_{i}", log_scale)
        self._classes = [(family_class(b.posterior), family_class(b.prior)) for b in self.blocks]
        self._kinds = [PAIRS[(b.posterior, b.prior)].kind for b in self.blocks]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, dim: int | None = None, **kwargs) -> LatentSpec:
        """Parse ``'logistic/normal:14,cauchy/cauchy:6'`` or ``'70% a/b, 30% c/d'`` (with dim)."""
        if not isinstance(text, str):
            raise ValueError(f"latent spec must be a string, got {type(text).__name__}")
        return cls([Block(p, q, n) for p, q, n in _parse_blocks(text, dim)], **kwargs)

    def __str__(self) -> str:
        return ",".join(str(b) for b in self.blocks)

    def extra_repr(self) -> str:
        return f"'{self}', learn_prior={self.learn_prior}"

    @property
    def encoder_outputs(self) -> int:
        """How many numbers the encoder emits per data point: raw locs then raw scales."""
        return 2 * self.dim

    @property
    def all_closed_form(self) -> bool:
        """Whether every block's KL has a closed form (so the analytic KL can be used)."""
        return all(k in (PairKind.CLOSED, PairKind.CONDITIONAL) for k in self._kinds)

    # -- priors ---------------------------------------------------------------------------------
    def prior_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Loc and scale of block i's prior, each of shape (size,)."""
        return getattr(self, f"prior_loc_{i}"), getattr(self, f"prior_log_scale_{i}").exp()

    def priors(self) -> list[LocationScale]:
        """The prior of each block, batch shape (size,)."""
        return [p_cls(*self.prior_params(i), validate_args=False)
                for i, (_, p_cls) in enumerate(self._classes)]

    def sample_prior(self, n: int) -> torch.Tensor:
        """n draws from the prior, shape (n, dim); for generation."""
        return torch.cat([p.sample((n,)) for p in self.priors()], dim=-1)

    # -- posteriors -----------------------------------------------------------------------------
    def posterior(self, h: torch.Tensor) -> Posterior:
        """Map encoder outputs (..., 2 * dim) to the per-block posteriors."""
        if h.shape[-1] != self.encoder_outputs:
            raise ValueError(f"encoder output has {h.shape[-1]} features; this latent spec "
                             f"({self}) needs 2 * {self.dim} = {self.encoder_outputs}")
        if not bool(torch.isfinite(h).all()):
            bad = int((~torch.isfinite(h)).sum())
            raise NonFiniteInputError(
                f"the encoder output h holds {bad} non-finite value(s) (NaN or inf) of "
                f"{h.numel()}: the posterior would be NaN; the encoder's weights have diverged "
                "or its input is non-finite")
        raw_loc, raw_scale = h[..., : self.dim], h[..., self.dim:]
        scale = F.softplus(raw_scale) + self.min_scale  # one pass over all dims
        out = Posterior()
        for i, (q_cls, _) in enumerate(self._classes):
            sl = self.slices[i]
            loc_i, scale_i = raw_loc[..., sl], scale[..., sl]
            if self._kinds[i] is PairKind.CONDITIONAL:
                loc_i, scale_i = self._constrain(i, loc_i, raw_scale[..., sl], scale_i)
            out.append(q_cls(loc_i, scale_i, validate_args=False))
        return out

    def _constrain(self, i: int, raw_loc: torch.Tensor, raw_scale: torch.Tensor,
                   scale: torch.Tensor):
        """(loc, scale) of a conditional block, kept inside the region where the KL is finite
        by the pair's own rule (``PAIRS[pair].constrain``)."""
        block = self.blocks[i]
        rule = PAIRS[(block.posterior, block.prior)].constrain
        return rule(raw_loc, raw_scale, scale, *self.prior_params(i), self.min_scale)

    def median(self, q: Posterior) -> torch.Tensor:
        """The posterior median per dim, (*batch, dim): a point code for every family (a Cauchy
        has no mean)."""
        return torch.cat([qi.icdf(torch.full_like(qi.loc, 0.5)) for qi in q], dim=-1)

    def rsample(self, q: Posterior, samples: int = 1) -> torch.Tensor:
        """Reparameterized draws, shape (samples, *batch, dim)."""
        return torch.cat([qi.rsample((samples,)) for qi in q], dim=-1)

    def log_q(self, q: Posterior, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x) summed over latent dims: (..., dim) -> (...)."""
        return sum(qi.log_prob(z[..., sl]).sum(-1) for qi, sl in zip(q, self.slices, strict=True))

    def log_p(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) under the prior, summed over latent dims: (..., dim) -> (...)."""
        return sum(pi.log_prob(z[..., sl]).sum(-1)
                   for pi, sl in zip(self.priors(), self.slices, strict=True))

    def kl_blocks(self, q: Posterior) -> list[torch.Tensor]:
        """KL(q || p) of each block, summed over its dims: a list of (*batch,) tensors."""
        return [kl(qi, pi).sum(-1) for qi, pi in zip(q, self.priors(), strict=True)]

    def kl(self, q: Posterior) -> torch.Tensor:
        """KL(q || p) summed over all latent dims, shape (*batch,)."""
        return sum(self.kl_blocks(q))
