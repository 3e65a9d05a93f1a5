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
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._checks import check, check_readable, load_yaml, syntax_error
from ._registry import MODELS, model_class

__all__ = ["LOOP_KEYS", "Config", "load_config"]


def _opt(default, help: str, **kw):
    """A config field: ``help`` for --help; ``choices=`` a set of allowed values; ``domain=`` a
    numeric domain of :data:`autovae._checks.DOMAINS` (positive, nonnegative, finite, real,
    count, index), checked whenever a value enters (file, flag, ``replace``)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    """Everything that defines a training run (the seed paper's setup is the default)."""

    # data
    data: str = _opt("fashion-mnist", "dataset name, or a path to .npy/.npz/an image folder")
    data_root: str | None = _opt(None, "folder with downloaded datasets")
    download: bool = _opt(False, "let torchvision download a missing dataset")
    val_size: float | None = _opt(None, "validation images carved from the training set: a "
                                        "count, or a fraction < 1 (default: the dataset's)",
                                domain="nonnegative")
    limit: int | None = _opt(None, "use at most this many training images (quick runs)",
                             domain="count")
    binarize: str = _opt("none", "binarize pixels: none, static (once) or dynamic (each batch)",
                         choices=("none", "static", "dynamic"))
    # model
    model: str = _opt("vae", "the model to train: vae, beta-vae (the VAE with beta != 1), gan, "
                                "vae-gan, or ava0..ava5")
    latent: str = _opt("normal/normal:20",
                       "latent blocks, e.g. 'logistic/normal:14,cauchy/cauchy:6' or "
                       "'70%% logistic/normal, 30%% cauchy/cauchy' (with latent_dim)")
    latent_dim: int | None = _opt(None, "total latent dims, needed when latent uses percentages",
                                  domain="count")
    learn_prior: bool = _opt(False, "learn the priors' loc and scale")
    likelihood: str = _opt("bernoulli", "bernoulli, continuous-bernoulli, gaussian, laplace, beta")
    sigma: float = _opt(1.0, "fixed (or initial) scale of a gaussian/laplace likelihood",
                        domain="positive")
    learn_sigma: str | None = _opt(None, "learn the likelihood scale: shared or pixel",
                                   choices=(None, "shared", "pixel"))
    network: str = _opt("mlp", "mlp, or conv (for 28x28 and 32x32 images)",
                        choices=("mlp", "conv"))
    hidden: int = _opt(400, "hidden units per layer (mlp); the conv net has hidden/8 base "
                            "channels (at least 16)", domain="count")
    depth: int = _opt(3, "hidden layers of the mlp", domain="count")
    latent_clip: float | None = _opt(None, "clamp latent draws to [-c, c] before the decoder "
                                           "(tames heavy-tailed posteriors)",
                                domain="positive")
    # bound
    alpha: float = _opt(1.0, "Renyi order: 1 = ELBO, 0 = IWAE, -inf = VR-max", domain="real")
    samples: int = _opt(1, "K, importance samples per data point while training",
                       domain="count")
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE)", domain="nonnegative")
    analytic_kl: bool = _opt(True, "use the closed-form KL when the bound is an ELBO")
    # Fisher autoencoder: a penalty on the training surrogate; the logged bound stays the bound
    fisher_weight: float = _opt(0.0, "weight xi of the Fisher penalty xi |J - J_c| (0: off; "
                                     "Zheng et al. use 0.1)", domain="nonnegative")
    fisher_target: float = _opt(5.0, "target J_c of the posterior's location Fisher "
                                     "information, mean per latent dim (1: as wide as N(0, 1))",
                                domain="nonnegative")
    fisher_estimator: str = _opt("closed-form", "J by its closed form, or by the authors' "
                                 "Monte-Carlo score estimator", choices=("closed-form", "score"))
    # adversarial models (gan, vae-gan, ava0..ava5; refused on models that do not read them)
    disc_network: str = _opt("mlp", "image discriminator: mlp, or conv (any image size)",
                             choices=("mlp", "conv"))
    disc_hidden: int = _opt(256, "hidden units per discriminator layer (conv: hidden/8 base "
                                 "channels, at least 16)", domain="count")
    disc_depth: int = _opt(2, "hidden layers of the discriminators (conv: at most depth + 1 "
                              "convolutions)", domain="count")
    disc_lr: float | None = _opt(None, "the discriminators' learning rate (default: lr)",
                                 domain="positive")
    spectral_norm: bool = _opt(False, "spectral normalisation of every discriminator layer")
    code_disc_hidden: int | None = _opt(None, "hidden units of AVA's encoder discriminator on "
                                              "codes (default: disc_hidden)", domain="count")
    gan_loss: str | None = _opt(None, "generator loss: minimax log(1 - d) or non-saturating "
                                      "-log d (default: the preset's)",
                                choices=(None, "minimax", "non-saturating"))
    ava_preset: str = _opt("modern", "modern (autograd, coupled encoder, non-saturating, Adam) "
                                     "or paper (the AVA slides: surrogates of the printed "
                                     "updates, KL-only encoder, minimax, SGD lr/sqrt(t))",
                           choices=("modern", "paper"))
    ava_grad_mode: str | None = _opt(None, "autograd, or paper (the author's update equations "
                                           "5-7, 10, 13-14, 16); default: the preset's",
                                     choices=(None, "autograd", "paper"))
    couple_encoder: bool | None = _opt(None, "AVA: let the reconstruction gradient reach the "
                                             "encoder (default: the preset's)")
    vaegan_gamma: float = _opt(0.01, "VAE-GAN: the decoder's weight of the feature "
                                     "reconstruction, the GAN term gets 1 - gamma (Larsen's "
                                     "code: 0.01)")
    equilibrium: float | None = _opt(0.4, "VAE-GAN equilibrium margin around a BCE of 0.68 "
                                          "(Larsen's code: 0.4); none: always train both",
                                     domain="positive")
    # optimisation
    epochs: int = _opt(100, "training epochs", domain="count")
    batch_size: int = _opt(1000, "mini-batch size", domain="count")
    lr: float = _opt(1e-4, "learning rate (Adam; plain SGD under ava_preset paper)",
                     domain="positive")
    warmup_epochs: float = _opt(0.0, "KL warm-up: beta ramps up from 0 over this many epochs",
                                domain="nonnegative")
    clip_grad: float | None = _opt(None, "clip the gradient norm to this value",
                                    domain="positive")
    seed: int = _opt(0, "random seed", domain="seed")
    device: str = _opt("cpu", "cpu, cuda, cuda:N or auto")
    amp: bool = _opt(False, "mixed precision on CUDA (with a gradient scaler)")
    on_nonfinite: str = _opt("stop", "when a loss goes non-finite: stop, or skip the batch",
                             choices=("stop", "skip"))
    compile: bool = _opt(False, "torch.compile the model's networks")
    # evaluation
    nll_samples: int = _opt(1000, "K for the importance-sampled test NLL", domain="count")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        cls = model_class(self.model)
        object.__setattr__(self, "model", cls.name)
        if not 0 <= self.vaegan_gamma <= 1:
            raise ValueError(f"vaegan_gamma must be in [0, 1], got {self.vaegan_gamma}")
        _check_model_reads(self, cls)
        _check_fisher_off(self)
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name, value):
        if self.__dict__.get("_sealed"):
            raise TypeError(f"a Config cannot be changed after it is made (it was checked "
                            f"then); use config.replace({name}=...) for a checked copy")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        raise TypeError(f"a Config cannot be changed after it is made; {name} stays")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Config:
        unknown(changes)
        return dataclasses.replace(self, **changes)


# Keys that data loading and the training loop read for every model; every other key is read by
# the models that declare it in ``Model.reads`` (autovae.models), and refused on the others.
LOOP_KEYS = frozenset({"data", "data_root", "download", "val_size", "limit", "binarize", "model",
                       "epochs", "batch_size", "clip_grad", "seed", "device", "amp",
                       "on_nonfinite", "compile"})


def _check_model_reads(config: Config, cls) -> None:
    """Refuse a key set away from its default on a model that does not read it, naming the key,
    why (when the model says) and the models that read it."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in LOOP_KEYS or f.name in cls.reads or value == f.default:
            continue
        readers = [name for name, c in MODELS.items() if f.name in c.reads]
        reason = cls.unread_reason(f.name)
        raise ValueError(f"{f.name} = {value!r} does not apply to model {cls.name}"
                         f"{f' ({reason})' if reason else ''}; it is read by "
                         f"{', '.join(readers) or 'no model'}: remove {f.name} or choose one of "
                         "those models")


def _check_fisher_off(config: Config) -> None:
    """Refuse the Fisher penalty's estimator chosen while the penalty is off."""
    if not config.fisher_weight and config.fisher_estimator != "closed-form":
        raise ValueError(f"fisher_estimator = {config.fisher_estimator!r} has no effect: the "
                         "Fisher penalty is off (fisher_weight = 0); set fisher_weight (e.g. "
                         "--fisher-weight 0.1) or leave fisher_estimator out")


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
            elif isinstance(value, bool):  # YAML's yes/no/true: not a count or a number
                raise ValueError
            elif tp is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif tp is float:
                value = float(value)
            elif isinstance(value, (str, os.PathLike)):
                value = str(value) if not isinstance(value, os.PathLike) else os.fspath(value)
            else:  # an array, a number or a list is not a name
                raise ValueError
        except (TypeError, ValueError):
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(tp, "text")
            raise ValueError(f"{f.name} must be {kind}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{f.name} must be one of {', '.join(str(c) for c in choices)}, "
                         f"got {value!r}")
    if f.metadata.get("domain") and value is not None:
        value = check(f.name, value, f.metadata["domain"])
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a YAML/TOML/JSON config file holds (syntax errors named with their line)."""
    check_readable(path, "config file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not a text file") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = load_yaml(text) or {}
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        else:
            raise ValueError(f"config file {path} must be .yaml, .yml, .toml or .json")
    except json.JSONDecodeError as err:  # a ValueError, but a syntax error too
        raise syntax_error(f"config file {path}", "JSON", err) from None
    except ValueError as err:
        if type(err).__name__ == "TOMLDecodeError":  # tomllib's is a ValueError too
            raise syntax_error(f"config file {path}", "TOML", err) from None
        if "given twice" in str(err):  # _no_duplicates, inside json.loads
            raise ValueError(f"config file {path}: {err}") from None
        raise
    except Exception as err:  # the parsers' own error types
        raise syntax_error(f"config file {path}", suffix[1:].upper(), err) from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    return data


def _no_duplicates(pairs):
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} is given twice (which one was meant?)")
        seen[key] = value
    return seen


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """A Config from a YAML/TOML/JSON file (or the defaults), with ``overrides`` on top.

    Overrides whose value is None are ignored (a flag that was not given).
    """
    values = read_config_file(Path(path)) if path is not None else {}
    unknown(values)
    unknown(overrides)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
