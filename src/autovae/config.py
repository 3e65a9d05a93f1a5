"""Run configuration: one dataclass, read from YAML or TOML, overridden by command-line flags.

Every field is at once a config key (``batch_size``) and a flag (``--batch-size``): one concept,
one name. Unknown keys are refused with a suggestion, values are checked and coerced to the
field's type, and the resolved config is saved in every run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Config", "load_config"]


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    """Everything that defines a training run (the seed paper's setup is the default)."""

    # data
    data: str = _opt("fashion-mnist", "dataset name, or a path to .npy/.npz/an image folder")
    data_root: str | None = _opt(None, "folder with downloaded datasets")
    download: bool = _opt(False, "let torchvision download a missing dataset")
    val_size: float | None = _opt(None, "validation images carved from the training set: a "
                                        "count, or a fraction < 1 (default: the dataset's)")
    limit: int | None = _opt(None, "use at most this many training images (quick runs)")
    binarize: str = _opt("none", "binarize pixels: none, static (once) or dynamic (each batch)",
                         choices=("none", "static", "dynamic"))
    # model
    model: str = _opt("vae", "the model to train: vae, or beta-vae (the VAE with beta != 1)")
    latent: str = _opt("normal/normal:20",
                       "latent blocks, e.g. 'logistic/normal:14,cauchy/cauchy:6' or "
                       "'70%% logistic/normal, 30%% cauchy/cauchy' (with latent_dim)")
    latent_dim: int | None = _opt(None, "total latent dims, needed when latent uses percentages")
    learn_prior: bool = _opt(False, "learn the priors' loc and scale")
    likelihood: str = _opt("bernoulli", "bernoulli, continuous-bernoulli, gaussian, laplace, beta")
    sigma: float = _opt(1.0, "fixed (or initial) scale of a gaussian/laplace likelihood")
    learn_sigma: str | None = _opt(None, "learn the likelihood scale: shared or pixel",
                                   choices=(None, "shared", "pixel"))
    network: str = _opt("mlp", "mlp, or conv (for 28x28 and 32x32 images)",
                        choices=("mlp", "conv"))
    hidden: int = _opt(400, "hidden units per layer (mlp); the conv net has hidden/8 base "
                            "channels (at least 16)")
    depth: int = _opt(3, "hidden layers of the mlp")
    latent_clip: float | None = _opt(None, "clamp latent draws to [-c, c] before the decoder "
                                           "(tames heavy-tailed posteriors)")
    # bound
    alpha: float = _opt(1.0, "Renyi order: 1 = ELBO, 0 = IWAE, -inf = VR-max")
    samples: int = _opt(1, "K, importance samples per data point while training")
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE)")
    analytic_kl: bool = _opt(True, "use the closed-form KL when the bound is an ELBO")
    # optimisation
    epochs: int = _opt(100, "training epochs")
    batch_size: int = _opt(1000, "mini-batch size")
    lr: float = _opt(1e-4, "Adam learning rate")
    warmup_epochs: float = _opt(0.0, "KL warm-up: beta ramps up from 0 over this many epochs")
    clip_grad: float | None = _opt(None, "clip the gradient norm to this value")
    seed: int = _opt(0, "random seed")
    device: str = _opt("cpu", "cpu, cuda, cuda:N or auto")
    amp: bool = _opt(False, "mixed precision on CUDA (with a gradient scaler)")
    on_nonfinite: str = _opt("stop", "when a loss goes non-finite: stop, or skip the batch",
                             choices=("stop", "skip"))
    compile: bool = _opt(False, "torch.compile the model")
    # evaluation
    nll_samples: int = _opt(1000, "K for the importance-sampled test NLL")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        if self.val_size is not None and self.val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {self.val_size}")
        for name in ("depth", "hidden", "samples", "epochs", "batch_size",
                     "nll_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "sigma"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if self.beta < 0 or self.warmup_epochs < 0:
            raise ValueError("beta and warmup_epochs must be >= 0")
        from .models import model_class

        self.model = model_class(self.model).name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Config:
        unknown(changes)
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def unknown(keys) -> None:
    """Refuse unknown config keys, suggesting the closest known one."""
    for key in keys:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint} (valid keys: "
                             f"{', '.join(_FIELDS)})")


@functools.cache
def _base_type(name: str):
    """(type, optional) of a field: the non-None type of ``X | None``."""
    tp = typing.get_type_hints(Config)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return args[0], optional
    return tp, optional


def _coerce(f: dataclasses.Field, value):
    tp, optional = _base_type(f.name)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if not optional:
            raise ValueError(f"{f.name} cannot be empty")
        value = None
    else:
        try:
            if tp is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = value.lower() in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError
            elif tp is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif tp is float:
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(tp, "text")
            raise ValueError(f"{f.name} must be {kind}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{f.name} must be one of {', '.join(str(c) for c in choices)}, "
                         f"got {value!r}")
    return value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} not found")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path} must be .yaml, .yml, .toml or .json")
    except ValueError:
        raise
    except Exception as err:  # the parsers' own error types
        raise ValueError(f"config file {path} is not valid {suffix[1:]}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    return data


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """A Config from a YAML/TOML/JSON file (or the defaults), with ``overrides`` on top.

    Overrides whose value is None are ignored (a flag that was not given).
    """
    values = _read_file(Path(path)) if path is not None else {}
    unknown(values)
    unknown(overrides)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
