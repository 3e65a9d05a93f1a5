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

import torch

from .._checks import check_memory
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
    """The model ``config.model`` names, built from the config and the data's event shape;
    a model too large for this machine is refused before any weight is allocated."""
    cls = model_class(config.model)
    check_model_size(cls, config, tuple(event_shape))
    return cls.from_config(config, tuple(event_shape))


# the Config keys that size each top-level part of a model, to name in a refusal
_SIZE_KEYS = {"encoder": ("hidden", "depth", "latent"), "decoder": ("hidden", "depth", "latent"),
              "generator": ("hidden", "depth", "latent"),
              "discriminator": ("disc_hidden", "disc_depth"),
              "decoder_discriminator": ("disc_hidden", "disc_depth"),
              "encoder_discriminator": ("code_disc_hidden", "disc_hidden", "disc_depth")}
BYTES_PER_PARAMETER = 16  # float32 weights, gradients and Adam's two moments


def check_model_size(cls, config, event_shape, limit: int | None = None) -> int:
    """Build the model on the meta device (no memory), and refuse it (:func:`check_memory`)
    naming its largest part with the settings that size it, when the bytes training it needs
    exceed ``limit`` (default: this machine's memory). Returns the bytes."""
    try:
        with torch.device("meta"):
            meta = cls.from_config(config, event_shape)
    except ValueError:
        raise
    except Exception:  # a model that cannot be built on meta is checked as it is built
        return 0
    counts: dict[str, int] = {}
    for name, tensor in [*meta.named_parameters(), *meta.named_buffers()]:
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + tensor.numel()
    parts, lower = {}, {}
    for top, n in counts.items():
        keys = [k for k in _SIZE_KEYS.get(top, ("hidden", "depth", "latent"))
                if getattr(config, k, None) is not None]
        part = f"its {top}, {n:,} parameters with " + (
            ", ".join(f"{k} = {getattr(config, k)!r}" for k in keys) or "its sizes")
        parts[part] = n * BYTES_PER_PARAMETER
        lower[part] = " or ".join(keys) or "the network size"
    return check_memory(parts, f"training model {cls.name} ({sum(counts.values()):,} "
                               f"parameters at {BYTES_PER_PARAMETER} bytes each: weights, "
                               f"gradients, Adam's moments) on data of shape {event_shape}",
                        limit, lower)


__all__ = ["MODELS", "VAE", "BetaVAE", "Model", "NonFiniteLossError", "StepContext",
           "build_model", "check_model_size", "evaluation_mode", "model_class"]
