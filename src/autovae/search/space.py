"""The search space: which beliefs, bounds and networks a study may try.

Latent dimensions are exchangeable, so the pairing is encoded as one weight in [0, 1] per
candidate (posterior, prior) pair, not as a categorical per dimension: the weights are
normalised and turned into block sizes by largest-remainder rounding (a weight that rounds to
zero dimensions drops its block). Pairs whose KL is infinite for every parameter are refused up
front. Every other setting is a fixed value or a range (floats may be log-scaled), among them
the Fisher-autoencoder penalty's ``fisher_weight`` and ``fisher_target``.

Presets: ``paper`` (the seed's seven posteriors against normal/Laplace/Cauchy/logistic priors,
the seed network, alpha and K searched) and ``quick`` (five pairs, a small network, short runs).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._checks import check, check_readable, load_yaml, syntax_error
from ..beliefs import PAIRS, Block, LatentSpec, fisher_information_available, likelihood_class
from ..config import Config

_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}

__all__ = ["PRESETS", "SearchSpace", "allocate"]

Range = tuple[float, float]


def allocate(weights: list[float], dim: int) -> list[int]:
    """Block sizes that add up to ``dim``, proportional to ``weights`` (largest remainder)."""
    total = sum(weights)
    if total <= 0:
        weights, total = [1.0] * len(weights), float(len(weights))
    exact = [w / total * dim for w in weights]
    sizes = [math.floor(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in order[: dim - sum(sizes)]:
        sizes[i] += 1
    return sizes


@dataclass
class SearchSpace:
    """What a study searches. A 1-element list or an equal (low, high) fixes a setting."""

    pairs: list[str] = field(default_factory=lambda: ["normal/normal", "logistic/normal",
                                                      "laplace/laplace", "cauchy/cauchy"])
    likelihoods: list[str] = field(default_factory=lambda: ["bernoulli"])
    alpha: Range = (0.0, 1.0)
    samples: tuple[int, int] = (1, 5)
    beta: Range = (1.0, 1.0)
    latent_dim: tuple[int, int] = (20, 20)
    hidden: tuple[int, int] = (400, 400)
    depth: tuple[int, int] = (3, 3)
    lr: Range = (1e-4, 1e-4)
    fisher_weight: Range = (0.0, 0.0)
    fisher_target: Range = (5.0, 5.0)

    def __post_init__(self):
        for name in ("pairs", "likelihoods"):  # "a, b" or a list
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"search space {name} must be a list of names, got {value!r}")
            setattr(self, name, list(value))
        if not self.pairs:
            raise ValueError("the search space has no candidate pairs; list some, e.g. "
                             "pairs: [normal/normal, logistic/normal]")
        normalised, refused = [], []
        for text in self.pairs:
            post, _, prior = str(text).partition("/")
            try:
                block = Block(post.strip(), prior.strip(), 1)
            except ValueError as err:
                refused.append(str(err))
                continue
            if block.pair not in normalised:
                normalised.append(block.pair)
        if not normalised:
            raise ValueError("every candidate pair is refused: " + "; ".join(refused))
        if refused:
            raise ValueError("candidate pairs refused: " + "; ".join(refused))
        self.pairs = normalised
        if not self.likelihoods:
            raise ValueError("the search space has no likelihoods")
        try:
            self.likelihoods = [likelihood_class(name).name for name in self.likelihoods]
        except ValueError as err:
            raise ValueError(f"search space: {err}") from None
        for name in ("alpha", "samples", "beta", "latent_dim", "hidden", "depth", "lr",
                     "fisher_weight", "fisher_target"):
            setattr(self, name, _range(name, getattr(self, name)))
        if self.fisher_weight[1] > 0:
            no_fisher = [p for p in self.pairs
                         if not fisher_information_available(p.split("/")[0])[0]]
            if no_fisher:
                raise ValueError(f"search space: fisher_weight can be > 0, but the posteriors of "
                                 f"{', '.join(no_fisher)} have no location Fisher information; "
                                 "drop those pairs or fix fisher_weight: [0, 0]")

    # -- serialisation: a study remembers its space --------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_file(cls, path) -> SearchSpace:
        """A space from a YAML file (keys as :class:`SearchSpace`'s fields)."""
        import yaml

        path = check_readable(path, "search-space file")
        try:
            data = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise syntax_error(f"search-space file {path}", "YAML", err) from None
        if not isinstance(data, dict):
            raise ValueError(f"search-space file {path} must hold a mapping of keys to values")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"search-space file {path}: {err}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown search-space keys {sorted(extra)}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) and k not in ("pairs", "likelihoods")
                      else v for k, v in data.items()})

    # -- sampling ------------------------------------------------------------------------------
    def suggest(self, trial, base: Config) -> Config:
        """A Config for this trial: ``base`` with every searched setting suggested."""
        dim = _int(trial, "latent_dim", self.latent_dim)
        if len(self.pairs) == 1:
            blocks = [(self.pairs[0], dim)]
        else:
            weights = [trial.suggest_float(f"w:{p}", 0.0, 1.0) for p in self.pairs]
            blocks = [(p, n) for p, n in zip(self.pairs, allocate(weights, dim), strict=True)
                      if n > 0]
        latent = ",".join(f"{p}:{n}" for p, n in blocks)
        lik = (self.likelihoods[0] if len(self.likelihoods) == 1
               else trial.suggest_categorical("likelihood", self.likelihoods))
        changes = dict(
            latent=latent, latent_dim=None, likelihood=lik,
            alpha=_float(trial, "alpha", self.alpha),
            samples=_int(trial, "samples", self.samples),
            beta=_float(trial, "beta", self.beta, log=True),
            hidden=_int(trial, "hidden", self.hidden, log=True),
            depth=_int(trial, "depth", self.depth),
            lr=_float(trial, "lr", self.lr, log=True),
            fisher_weight=_float(trial, "fisher_weight", self.fisher_weight, log=True),
            fisher_target=_float(trial, "fisher_target", self.fisher_target, log=True),
        )
        config = base.replace(**changes)
        LatentSpec.parse(config.latent)  # fails loudly if a block were impossible
        return config

    def check(self, base: Config) -> None:
        """Refuse, before any trial, a space that ``base`` turns into a config the config's own
        rules refuse: each end of every range, each pair and each likelihood is put into
        ``base`` as a trial would, so a setting the base model does not read (a searched alpha
        on a GAN) or a combination out of its domain fails here, naming the key, not in a
        trial."""
        def trial_config(changes: dict) -> None:
            try:
                base.replace(**changes)
            except ValueError as err:
                raise ValueError(f"search space against the base config: {err}") from None

        for name in ("alpha", "samples", "beta", "latent_dim", "hidden", "depth", "lr",
                     "fisher_weight", "fisher_target"):
            low, high = getattr(self, name)
            for end in {low, high}:
                value = int(end) if _CONFIG_FIELDS[name].type in (int, "int") else end
                if value != getattr(base, name) or low != high:
                    trial_config({name: value})
        for pair in self.pairs:
            trial_config({"latent": f"{pair}:{int(self.latent_dim[0])}", "latent_dim": None})
        for name in self.likelihoods:
            trial_config({"likelihood": name})

    @property
    def comparable_likelihoods(self) -> bool:
        return len(self.likelihoods) == 1


def _range(name: str, value) -> tuple:
    """``value`` (a number, or [low, high]) as a (low, high) range whose ends lie in the
    domain of the config key ``name`` (finite where the range is searched)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)  # a single value fixes the setting
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) not in (1, 2):
        raise ValueError(f"search range {name} must be a value or [low, high], got {value!r}")
    low, high = (value[0], value[0]) if len(value) == 1 else value
    domain = _CONFIG_FIELDS[name].metadata.get("domain")
    if domain == "real" and low != high:
        domain = "finite"  # Optuna draws from finite ranges only
    for end, which in ((low, "low"), (high, "high")):
        try:
            check(name, end, domain or "finite")
        except ValueError as err:
            raise ValueError(f"search range {name} ({which} end): {err}") from None
    if not low <= high:
        raise ValueError(f"search range {name}: low {low} > high {high}")
    return (low, high)


def _float(trial, name: str, bounds: Range, log: bool = False) -> float:
    low, high = bounds
    if low == high:
        return float(low)
    return trial.suggest_float(name, low, high, log=log and low > 0)


def _int(trial, name: str, bounds, log: bool = False) -> int:
    low, high = int(bounds[0]), int(bounds[1])
    if low == high:
        return low
    return trial.suggest_int(name, low, high, log=log and low > 0)


_FINITE = [f"{q}/{p}" for (q, p), info in PAIRS.items()
           if info.finite and p in ("normal", "laplace", "cauchy", "logistic")]

PRESETS: dict[str, tuple[SearchSpace, dict[str, Any]]] = {
    # the seed's families and settings: 3x400 MLP, 20 latents, Adam 1e-4, batch 1000
    "paper": (SearchSpace(pairs=_FINITE, likelihoods=["bernoulli"], alpha=(-1.0, 1.0),
                          samples=(1, 5)),
              {"epochs": 20, "batch_size": 1000, "lr": 1e-4, "latent_clip": 50.0}),
    # a few minutes on a laptop: five pairs, a small network, a data subset
    "quick": (SearchSpace(pairs=["normal/normal", "logistic/normal", "laplace/laplace",
                                 "cauchy/cauchy", "gumbel/gumbel"],
                          likelihoods=["bernoulli"], alpha=(0.0, 1.0), samples=(1, 3),
                          latent_dim=(10, 10), hidden=(200, 200), depth=(2, 2),
                          lr=(1e-3, 1e-3)),
              {"epochs": 4, "batch_size": 250, "limit": 10000, "val_size": 1000,
               "latent_clip": 50.0, "nll_samples": 200}),
}
