"""Models by name: every model the training loop can train (``Config.model``).

A model is a :class:`Model` (see :mod:`autovae.models.base` for the contract): it declares its
optimizers, yields the losses of one training step, and says what it can do through class
attributes (``has_bound``, ``has_encoder``, ``has_likelihood``, ``can_be_prior``) and which
config keys it reads (``reads``). Add a model by subclassing :class:`Model`, giving it a
``from_config(config, event_shape)`` classmethod and ``reads``, and registering it in
:data:`MODELS` (the registry lives in :mod:`autovae._registry`, so that the config can ask a
model class what it reads without importing this package).

* ``vae``: the VAE with free posterior, prior and likelihood beliefs and any bound;
* ``beta-vae``: the same model, named for users who look for it; it refuses ``beta = 1``;
* ``gan``, ``vae-gan``, ``ava0`` ... ``ava5``: the adversarial models (:mod:`.adversarial`).
"""

from __future__ import annotations

from .._registry import MODELS, model_class
from .adversarial import AVA0, AVA1, AVA2, AVA3, AVA4, AVA5, GAN, VAEGAN
from .base import Model, NonFiniteLossError, StepContext, evaluation_mode
from .vae import VAE


class BetaVAE(VAE):
    """The beta-VAE of Higgins et al. (2017): a :class:`VAE` whose KL weight ``beta`` is not 1
    (beta > 1 for disentangling, beta < 1 as Xia & Zabaras use 0.5 for sharper priors)."""

    name = "beta-vae"

    @classmethod
    def from_config(cls, config, event_shape) -> BetaVAE:
        if config.beta == 1.0:
            raise ValueError("model beta-vae with beta = 1 is the plain VAE; set beta (e.g. "
                             "--beta 4 as Higgins et al., or --beta 0.5 as Xia & Zabaras), or "
                             "use --model vae")
        return super().from_config(config, event_shape)


MODELS.update({cls.name: cls for cls in (VAE, BetaVAE, GAN, VAEGAN, AVA0, AVA1, AVA2, AVA3, AVA4,
                                         AVA5)})


def build_model(config, event_shape) -> Model:
    """The model ``config.model`` names, built from the config and the data's event shape."""
    cls = model_class(config.model)
    return cls.from_config(config, tuple(event_shape))


__all__ = ["MODELS", "VAE", "BetaVAE", "Model", "NonFiniteLossError", "StepContext",
           "build_model", "evaluation_mode", "model_class"]
