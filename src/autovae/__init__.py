"""autovae: generalized variational autoencoders.

Posterior, prior and likelihood beliefs are chosen freely (and per block of latent dimensions),
trained with the ELBO or the Renyi VR bound, and searched automatically. Training from Python::

    from autovae import Config, train, evaluate
    result = train(Config(data="digits", epochs=5), "runs/digits")
    evaluate(result.model, result.data.test)      # {'elbo': ..., 'nll': ..., ...}
"""

from . import control as _control  # noqa: F401 (registers the known-belief controls)
from .beliefs import LatentSpec, family, kl, likelihood
from .bounds import Bound, renyi_bound
from .config import Config, load_config
from .data import load_data
from .evaluation import evaluate
from .inverse import datasets as _inverse_datasets  # noqa: F401 (registers darcy-grf)
from .models import MODELS, VAE, Model, build_model
from .run import Run, load_trained
from .training import train

__version__ = "0.1.0"
__all__ = ["MODELS", "VAE", "Bound", "Config", "LatentSpec", "Model", "Run", "__version__",
           "build_model", "evaluate", "family", "kl", "likelihood", "load_config", "load_data",
           "load_trained", "renyi_bound", "train"]
