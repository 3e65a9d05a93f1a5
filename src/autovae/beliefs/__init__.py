"""Beliefs: what a latent dimension or a data element is believed to follow.

* :func:`family` builds a posterior or prior family (normal, laplace, cauchy, logistic, uniform,
  gumbel, exponential), each a reparameterizable ``torch.distributions.Distribution``.
* :func:`kl` is KL(q || p) for any pair: closed form, +inf, or quadrature; :data:`PAIRS` says
  which, per ordered pair.
* :class:`LatentSpec` splits the latent space into blocks of (posterior, prior) pairs.
* :func:`likelihood` builds a likelihood belief p(x | decoder output).
"""

from .divergence import (
    PAIRS,
    PairInfo,
    PairKind,
    as_family,
    kl,
    numerical_kl,
    pair_info,
    pair_table,
)
from .families import FAMILIES, LocationScale, family, family_class
from .latent import Block, LatentSpec, Posterior
from .likelihoods import LIKELIHOODS, Likelihood, likelihood, likelihood_class

__all__ = [
    "FAMILIES",
    "LIKELIHOODS",
    "PAIRS",
    "Block",
    "LatentSpec",
    "Likelihood",
    "LocationScale",
    "PairInfo",
    "PairKind",
    "Posterior",
    "as_family",
    "family",
    "family_class",
    "kl",
    "likelihood",
    "likelihood_class",
    "numerical_kl",
    "pair_info",
    "pair_table",
]
