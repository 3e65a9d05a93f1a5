"""Beliefs: what a latent dimension or a data element is believed to follow.

* :func:`family` builds a posterior or prior family (normal, laplace, cauchy, logistic, uniform,
  gumbel, exponential), each a reparameterizable ``torch.distributions.Distribution``.
* :func:`kl` is KL(q || p) for any pair: closed form, +inf, or quadrature; :data:`PAIRS` says
  which, per ordered pair.
* :class:`LatentSpec` splits the latent space into blocks of (posterior, prior) pairs.
* :func:`likelihood` builds a likelihood belief p(x | decoder output).
* :func:`location_fisher` and friends: the Fisher information of a posterior about its location,
  entropy power and Stam's bound (the Fisher autoencoder's measures).
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
from .fisher import (
    LOCATION_FISHER,
    entropy_power,
    fisher_information_available,
    fisher_penalty,
    fisher_shannon,
    location_fisher,
    posterior_fisher,
    posterior_fisher_shannon,
    score_fisher,
)
from .latent import Block, LatentSpec, NonFiniteInputError, Posterior
from .likelihoods import LIKELIHOODS, Likelihood, likelihood, likelihood_class

__all__ = [
    "FAMILIES",
    "NonFiniteInputError",
    "LOCATION_FISHER",
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
    "entropy_power",
    "family",
    "family_class",
    "fisher_information_available",
    "fisher_penalty",
    "fisher_shannon",
    "kl",
    "likelihood",
    "likelihood_class",
    "location_fisher",
    "numerical_kl",
    "pair_info",
    "pair_table",
    "posterior_fisher",
    "posterior_fisher_shannon",
    "score_fisher",
]
