"""The registry of trainable models by name, at the bottom of the house.

:mod:`autovae.models` fills :data:`MODELS` when it is imported (``autovae/__init__`` imports it,
so the registry is full before any :class:`~autovae.config.Config` is made). The config asks a
model class here which settings it reads (``Model.reads``) without importing the models
package: the registry imports nothing from autovae.
"""

from __future__ import annotations

__all__ = ["MODELS", "model_class", "model_key"]

MODELS: dict[str, type] = {}


def model_key(name):
    """The registry key a model name is spelt as (case-insensitive, ``_`` as ``-``); anything
    but a string is returned as it is, for the caller's check to refuse."""
    return name.strip().lower().replace("_", "-") if isinstance(name, str) else name


def model_class(name: str) -> type:
    """The model class registered as ``name`` (case-insensitive, ``_`` as ``-``).

    >>> model_class("Beta_VAE").name, model_class("vae").has_bound
    ('beta-vae', True)
    """
    if not isinstance(name, str):
        raise ValueError(f"model must be a model name (one of {', '.join(MODELS)}), "
                         f"got {name!r}")
    key = model_key(name)
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[key]
