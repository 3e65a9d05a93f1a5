"""Encoders and decoders: the seed paper's MLP, and a small convolutional pair for images.

An encoder maps data ``(B, *event_shape)`` to ``(B, latent.encoder_outputs)``; a decoder maps
latent draws ``(N, dim)`` to ``(N, *likelihood.out_event_shape)``. Any ``nn.Module`` with those
shapes can be used instead in the library API.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check

__all__ = ["NETWORK_KEYS", "NETWORKS", "ConvDecoder", "ConvEncoder", "build_networks",
           "inference_forward", "mlp"]

_ACTIVATION = nn.ReLU


def mlp(in_features: int, out_features: int, hidden: int = 400, depth: int = 3) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden`` units with ReLU, then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), _ACTIVATION()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Sequential):
    """Flatten the data, then an MLP."""

    def __init__(self, event_shape, out_features: int, hidden: int = 400, depth: int = 3):
        super().__init__(nn.Flatten(start_dim=1),
                         *mlp(math.prod(event_shape), out_features, hidden, depth))


class MLPDecoder(nn.Module):
    """An MLP whose output is reshaped to the likelihood's parameter layout."""

    def __init__(self, dim: int, out_event_shape, hidden: int = 400, depth: int = 3):
        super().__init__()
        self.out_event_shape = tuple(out_event_shape)
        self.net = mlp(dim, math.prod(out_event_shape), hidden, depth)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_event_shape)


def inference_forward(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``net(h)`` without autograd, with fewer passes over memory where ``net`` is an MLP (an
    ``nn.Sequential`` of Linear and ReLU, or an :class:`MLPDecoder`): each Linear and the ReLU
    after it become one matmul whose epilogue adds the bias and applies the ReLU, by oneDNN on
    float32 CPU tensors (whose matmuls are also faster than MKL's on AMD CPUs), otherwise a
    linear and an in-place ReLU. Other networks run as they are. Agrees with ``net(h)`` to
    float32 rounding, not bitwise."""
    if torch.is_grad_enabled():
        return net(h)
    if isinstance(net, MLPDecoder):
        return inference_forward(net.net, h).view(h.shape[0], *net.out_event_shape)
    if not isinstance(net, nn.Sequential):
        return net(h)
    layers = list(net)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Linear):
            relu = i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU
            h = _linear(h, layer, relu)
            i += 1 + relu
        else:
            h = layer(h)
            i += 1
    return h


def _linear(h: torch.Tensor, layer: nn.Linear, relu: bool) -> torch.Tensor:
    """``layer(h)``, then ReLU'd if ``relu``, without autograd (see :func:`inference_forward`)."""
    fused = _onednn_linear() if h.device.type == "cpu" else None
    if fused is not None and h.dtype == layer.weight.dtype == torch.float32:
        return fused(h, layer.weight, layer.bias, "relu" if relu else "none", [None], "")
    out = F.linear(h, layer.weight, layer.bias)
    return out.relu_() if relu else out


def _onednn_linear():
    """torch's oneDNN linear with a fused epilogue (the op its compiler emits), or None where
    this build of torch lacks it or oneDNN is switched off (``torch.backends.mkldnn``)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def _check_image(event_shape) -> tuple[int, int]:
    if len(event_shape) != 3 or tuple(event_shape[1:]) not in ((28, 28), (32, 32)):
        raise ValueError(f"the conv network needs (C, 28, 28) or (C, 32, 32) images, got "
                         f"{tuple(event_shape)}; use network: mlp for other shapes")
    return event_shape[0], (32 - event_shape[1]) // 2  # channels, padding to 32x32


class ConvEncoder(nn.Module):
    """Three stride-2 4x4 convolutions (32 -> 16 -> 8 -> 4), then a linear layer.

    28x28 images are zero-padded to 32x32 first.
    """

    def __init__(self, event_shape, out_features: int, channels: int = 32):
        super().__init__()
        c_in, self.pad = _check_image(event_shape)
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c, 4, 2, 1), _ACTIVATION(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), _ACTIVATION(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), _ACTIVATION(),
            nn.Flatten(), nn.Linear(4 * c * 16, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        return self.net(x)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: linear, then three stride-2 transposed convolutions."""

    def __init__(self, dim: int, out_event_shape, channels: int = 32):
        super().__init__()
        c_out, self.pad = _check_image(out_event_shape)
        c = channels
        self.net = nn.Sequential(
            nn.Linear(dim, 4 * c * 16), _ACTIVATION(), nn.Unflatten(1, (4 * c, 4, 4)),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), _ACTIVATION(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), _ACTIVATION(),
            nn.ConvTranspose2d(c, c_out, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        if self.pad:
            out = out[..., self.pad:-self.pad, self.pad:-self.pad]
        return out


def _mlp_pair(event_shape, encoder_outputs, dim, out_event_shape, hidden, depth):
    return (MLPEncoder(event_shape, encoder_outputs, hidden, depth),
            MLPDecoder(dim, out_event_shape, hidden, depth))


def _conv_pair(event_shape, encoder_outputs, dim, out_event_shape, hidden, depth):
    channels = max(16, hidden // 8)
    return (ConvEncoder(event_shape, encoder_outputs, channels),
            ConvDecoder(dim, out_event_shape, channels))


# name -> (event_shape, encoder_outputs, dim, out_event_shape, hidden, depth) -> (enc, dec)
NETWORKS = {"mlp": _mlp_pair, "conv": _conv_pair}


# Config keys that shape the networks and the latent space they meet in (build_networks, LatentSpec)
NETWORK_KEYS = frozenset({"network", "hidden", "depth", "latent", "latent_dim", "learn_prior"})


def build_networks(kind: str, event_shape, encoder_outputs: int, dim: int, out_event_shape,
                   hidden: int = 400, depth: int = 3) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) by name: ``mlp`` (hidden units x depth) or ``conv`` (hidden/8 base
    channels, at least 16)."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network {kind!r}; valid networks are: {', '.join(NETWORKS)}")
    hidden, depth = check("hidden", hidden, "count"), check("depth", depth, "index")
    return NETWORKS[kind](event_shape, encoder_outputs, dim, out_event_shape, hidden, depth)
