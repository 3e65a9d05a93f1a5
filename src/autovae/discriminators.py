"""Discriminators for the adversarial models: on images (MLP or conv) and on latent codes.

A discriminator maps its input to one logit per data point, shape (B,); d = sigmoid(logit), and
every log d / log(1 - d) is computed from the logit (``F.logsigmoid``), never by clamping.
``features(x)`` is the last hidden layer (Larsen et al.'s Dis_l, the "learned similarity" of
VAE-GAN) and ``head(features)`` the linear output layer, so ``forward = head(features(x))``.

Hidden layers use LeakyReLU(0.2), the usual choice for GAN discriminators (a ReLU
discriminator passes no gradient to the generator where it saturates). ``spectral_norm=True``
wraps every linear and convolutional layer in :func:`torch.nn.utils.parametrizations.spectral_norm`
(Miyato et al. 2018), which bounds the discriminator's Lipschitz constant.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from ._checks import check

__all__ = ["DISCRIMINATOR_KEYS", "CodeDiscriminator", "ConvDiscriminator", "Discriminator",
           "MLPDiscriminator", "build_discriminator"]

# Config keys that shape or train a discriminator: meaningless on a model without one
DISCRIMINATOR_KEYS = frozenset({"disc_network", "disc_hidden", "disc_depth", "disc_lr",
                                "spectral_norm", "code_disc_hidden", "gan_loss"})

_SLOPE = 0.2


def _maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return _sn(layer) if enabled else layer


class Discriminator(nn.Module):
    """``features`` (B, *in) -> (B, F) and ``head`` (B, F) -> (B, 1); forward gives (B,)."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


class MLPDiscriminator(Discriminator):
    """Flatten, ``depth`` hidden layers of ``hidden`` units (LeakyReLU 0.2), one logit."""

    def __init__(self, in_shape, hidden: int = 256, depth: int = 2,
                 spectral_norm: bool = False):
        super().__init__()
        hidden = check("disc_hidden", hidden, "count")
        if depth < 1:
            raise ValueError(f"disc_depth must be >= 1 (Dis_l is a hidden layer), got {depth}")
        layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        width = math.prod(in_shape)
        for _ in range(depth):
            layers += [_maybe_sn(nn.Linear(width, hidden), spectral_norm),
                       nn.LeakyReLU(_SLOPE)]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.head = _maybe_sn(nn.Linear(width, 1), spectral_norm)


class CodeDiscriminator(MLPDiscriminator):
    """The encoder discriminator D(. | Lambda) of AVA3-AVA5: an MLP on latent point codes
    (``LatentSpec.median`` of q(z|x), the posterior mean for a Gaussian)."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 2,
                 spectral_norm: bool = False):
        super().__init__((dim,), hidden, depth, spectral_norm)


class ConvDiscriminator(Discriminator):
    """Stride-2 4x4 convolutions (LeakyReLU 0.2) until the image is at most 4 pixels on a
    side (at most ``depth`` + 1 of them, at least one), then one logit from the flattened map.

    Takes any (C, H, W) with H, W >= 4; ``channels`` doubles after each convolution, up to
    8 x ``channels``.
    """

    def __init__(self, in_shape, channels: int = 32, depth: int = 3,
                 spectral_norm: bool = False):
        super().__init__()
        channels, depth = check("channels", channels, "count"), check("disc_depth", depth,
                                                                      "count")
        if len(in_shape) != 3 or min(in_shape[1:]) < 4:
            raise ValueError(f"disc_network conv needs images (C, H, W) with H, W >= 4, got "
                             f"{tuple(in_shape)}; use disc_network: mlp")
        c_in, h, w = in_shape
        layers: list[nn.Module] = []
        c = channels
        for _ in range(depth + 1):
            layers += [_maybe_sn(nn.Conv2d(c_in, c, 4, 2, 1), spectral_norm),
                       nn.LeakyReLU(_SLOPE)]
            c_in, h, w = c, h // 2, w // 2
            c = min(2 * c, 8 * channels)
            if max(h, w) <= 4 or min(h, w) < 2:
                break
        layers.append(nn.Flatten(start_dim=1))
        self.features = nn.Sequential(*layers)
        self.head = _maybe_sn(nn.Linear(c_in * h * w, 1), spectral_norm)


def build_discriminator(kind: str, in_shape, hidden: int = 256, depth: int = 2,
                        spectral_norm: bool = False) -> Discriminator:
    """A discriminator on inputs of shape ``in_shape`` by name: ``mlp`` (``hidden`` units x
    ``depth``) or ``conv`` (``hidden``/8 base channels, at least 16; ``depth`` + 1 convolutions
    at most)."""
    hidden = check("disc_hidden", hidden, "count")
    if kind == "mlp":
        return MLPDiscriminator(in_shape, hidden, depth, spectral_norm)
    if kind == "conv":
        return ConvDiscriminator(in_shape, max(16, hidden // 8), depth, spectral_norm)
    raise ValueError(f"unknown disc_network {kind!r}; valid: mlp, conv")
