"""autovae: generalized variational autoencoders.

Posterior, prior and likelihood beliefs are chosen freely (and per block of latent dimensions),
trained with the ELBO or the Renyi VR bound, and searched automatically.
"""

from .beliefs import LatentSpec, family, kl, likelihood
from .bounds import Bound, renyi_bound

__version__ = "0.1.0"
__all__ = ["Bound", "LatentSpec", "__version__", "family", "kl", "likelihood", "renyi_bound"]
