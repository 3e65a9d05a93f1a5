"""Run configuration: one dataclass, read from YAML or TOML, overridden by command-line flags.

Every field is at once a config key (``batch_size``) and a flag (``--batch-size``): one concept,
one name, declared with :func:`autovae.settings.setting` (help, choices, domain). Unknown keys
are refused with a suggestion, values are checked and coerced to the field's type by the one
settings engine (:mod:`autovae.settings`), and the resolved config is saved in every run
folder.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checks import check_readable, load_yaml, syntax_error
from ._registry import MODELS, model_key
from .settings import Settings, setting

__all__ = ["LOOP_KEYS", "SETTINGS", "Config", "load_config"]


def _model_names() -> tuple[str, ...]:
    return tuple(MODELS)


@dataclass
class Config:
    """Everything that defines a training run (the seed paper's setup is the default)."""

    # data
    data: str = setting("fashion-mnist", "dataset name, or a path to .npy/.npz/an image folder")
    data_root: str | None = setting(None, "folder with downloaded datasets")
    download: bool = setting(False, "let torchvision download a missing dataset")
    val_size: float | None = setting(None, "validation images carved from the training set: a "
                                        "count, or a fraction < 1 (default: the dataset's)",
                                domain="nonnegative")
    limit: int | None = setting(None, "use at most this many training images (quick runs)",
                             domain="count")
    binarize: str = setting("none", "binarize pixels: none, static (once) or dynamic (each batch)",
                         choices=("none", "static", "dynamic"))
    test_binarize: int | None = setting(None, "score the test set as one fixed Bernoulli draw "
                                              "of its grey levels, seeded by this number (the "
                                              "binarised-MNIST protocol; the same for every "
                                              "run); none: the test set as loaded",
                                        domain="seed")
    # model
    model: str = setting("vae", "the model to train (beta-vae: the VAE with beta != 1)",
                         choices=_model_names)
    latent: str = setting("normal/normal:20",
                       "latent blocks, e.g. 'logistic/normal:14,cauchy/cauchy:6' or "
                       "'70%% logistic/normal, 30%% cauchy/cauchy' (with latent_dim)")
    latent_dim: int | None = setting(None, "total latent dims, needed when latent uses percentages",
                                  domain="count")
    learn_prior: bool = setting(False, "learn the priors' loc and scale")
    likelihood: str = setting("bernoulli",
                              "bernoulli, continuous-bernoulli, gaussian, laplace, beta")
    sigma: float = setting(1.0, "fixed (or initial) scale of a gaussian/laplace likelihood",
                        domain="positive")
    learn_sigma: str | None = setting(None, "learn the likelihood scale: shared or pixel",
                                   choices=(None, "shared", "pixel"))
    network: str = setting("mlp", "mlp, or conv (for 28x28 and 32x32 images)",
                        choices=("mlp", "conv"))
    hidden: int = setting(400, "hidden units per layer (mlp); the conv net has hidden/8 base "
                            "channels (at least 16)", domain="count")
    depth: int = setting(3, "hidden layers of the mlp", domain="count")
    latent_clip: float | None = setting(None, "clamp latent draws to [-c, c] before the decoder "
                                           "(tames heavy-tailed posteriors)",
                                domain="positive")
    # bound
    alpha: float = setting(1.0, "Renyi order: 1 = ELBO, 0 = IWAE, -inf = VR-max", domain="real")
    samples: int = setting(1, "K, importance samples per data point while training",
                       domain="count")
    beta: float = setting(1.0, "weight of the KL term (beta-VAE)", domain="nonnegative")
    analytic_kl: bool = setting(True, "use the closed-form KL when the bound is an ELBO")
    # Fisher autoencoder: a penalty on the training surrogate; the logged bound stays the bound
    fisher_weight: float = setting(0.0, "weight xi of the Fisher penalty xi |J - J_c| (0: off; "
                                     "Zheng et al. use 0.1)", domain="nonnegative")
    fisher_target: float = setting(5.0, "target J_c of the posterior's location Fisher "
                                     "information, mean per latent dim (1: as wide as N(0, 1))",
                                domain="nonnegative")
    fisher_estimator: str = setting("closed-form", "J by its closed form, or by the authors' "
                                 "Monte-Carlo score estimator", choices=("closed-form", "score"))
    # adversarial models (gan, vae-gan, ava0..ava5; refused on models that do not read them)
    disc_network: str = setting("mlp", "image discriminator: mlp, or conv (any image size)",
                             choices=("mlp", "conv"))
    disc_hidden: int = setting(256, "hidden units per discriminator layer (conv: hidden/8 base "
                                 "channels, at least 16)", domain="count")
    disc_depth: int = setting(2, "hidden layers of the discriminators (conv: at most depth + 1 "
                              "convolutions)", domain="count")
    disc_lr: float | None = setting(None, "the discriminators' learning rate (default: lr)",
                                 domain="positive")
    spectral_norm: bool = setting(False, "spectral normalisation of every discriminator layer")
    code_disc_hidden: int | None = setting(None, "hidden units of AVA's encoder discriminator on "
                                              "codes (default: disc_hidden)", domain="count")
    gan_loss: str | None = setting(None, "generator loss: minimax log(1 - d) or non-saturating "
                                      "-log d (default: the preset's)",
                                choices=(None, "minimax", "non-saturating"))
    ava_preset: str = setting("modern", "modern (autograd, coupled encoder, non-saturating, Adam) "
                                     "or paper (the AVA slides: surrogates of the printed "
                                     "updates, KL-only encoder, minimax, SGD lr/sqrt(t))",
                           choices=("modern", "paper"))
    ava_grad_mode: str | None = setting(None, "autograd, or paper (the author's update equations "
                                           "5-7, 10, 13-14, 16); default: the preset's",
                                     choices=(None, "autograd", "paper"))
    couple_encoder: bool | None = setting(None, "AVA: let the reconstruction gradient reach the "
                                             "encoder (default: the preset's)")
    vaegan_gamma: float = setting(0.01, "VAE-GAN: the decoder's weight of the feature "
                                     "reconstruction, the GAN term gets 1 - gamma (Larsen's "
                                     "code: 0.01)")
    equilibrium: float | None = setting(0.4, "VAE-GAN equilibrium margin around a BCE of 0.68 "
                                          "(Larsen's code: 0.4); none: always train both",
                                     domain="positive")
    # optimisation
    epochs: int = setting(100, "training epochs", domain="count")
    batch_size: int = setting(1000, "mini-batch size", domain="count")
    lr: float = setting(1e-4, "learning rate (Adam; plain SGD under ava_preset paper)",
                     domain="positive")
    warmup_epochs: float = setting(0.0, "KL warm-up: beta ramps up from 0 over this many epochs",
                                domain="nonnegative")
    clip_grad: float | None = setting(None, "clip the gradient norm to this value",
                                    domain="positive")
    seed: int = setting(0, "random seed", domain="seed")
    device: str = setting("cpu", "cpu, cuda, cuda:N or auto")
    amp: bool = setting(False, "mixed precision on CUDA (with a gradient scaler)")
    on_nonfinite: str = setting("stop", "when a loss goes non-finite: stop, or skip the batch",
                             choices=("stop", "skip"))
    compile: bool = setting(False, "torch.compile the model's networks")
    # evaluation
    nll_samples: int = setting(1000, "K for the importance-sampled test NLL", domain="count")

    def __post_init__(self):
        object.__setattr__(self, "model", model_key(self.model))
        SETTINGS.coerce_fields(self)
        cls = MODELS[self.model]
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
LOOP_KEYS = frozenset({"data", "data_root", "download", "val_size", "limit", "binarize",
                       "test_binarize", "model", "epochs", "batch_size", "clip_grad", "seed",
                       "device", "amp", "on_nonfinite", "compile"})


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


SETTINGS = Settings.of(Config, "config key")


def unknown(keys) -> None:
    """Refuse unknown config keys, suggesting the closest known one."""
    SETTINGS.unknown(keys)


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
