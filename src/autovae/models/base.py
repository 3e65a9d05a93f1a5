"""What every trainable model provides, and the context the training loop hands it.

The loop (:func:`autovae.training.train`) owns the mechanics that must exist once: data order and
RNG, AMP and gradient scaling, ``zero_grad`` / ``backward`` / clip / ``step``, the non-finite
policy, checkpoints and exact resume. A model owns its objective:

* :meth:`Model.configure_optimizers` returns ``{name: optimizer}`` (several for adversarial
  models);
* :meth:`Model.training_step` *yields* ``(optimizer_name, loss)`` pairs in the order they are
  to be stepped: the yield order is the alternation (a GAN yields its discriminator loss, then
  its generator loss). Each loss is back-propagated into the parameters of its own optimizer
  only, so the other optimizers' parameters and gradients are untouched. A loss is computed
  after the previous step was taken (the generator resumes after the loop stepped), so each
  loss sees the parameters as they are then; a loss must not reuse a graph that an earlier
  yielded loss already back-propagated through;
* :meth:`Model.validation_metrics` gives the per-epoch ``val_*`` numbers;
* capabilities are class attributes (``has_bound``, ``has_encoder``, ``has_likelihood``,
  ``has_discriminator``, ``can_be_prior``), the way ``torch.distributions`` says
  ``has_rsample``: evaluation, pictures, reports, the search and the inverse problems show what
  a model supports instead of assuming a VAE. Each flag promises the methods of its protocol
  (:data:`CAPABILITIES`: :class:`Bounded`, :class:`Encoding`, :class:`WithLikelihood`,
  :class:`Generating`); a subclass that sets a flag without them is refused when the class is
  defined, naming the flag and the missing methods;
* :meth:`Model.from_config` builds the model from a :class:`~autovae.config.Config` and the
  data's event shape (abstract: every registered model has one);
* ``reads`` is the set of :class:`~autovae.config.Config` keys the model reads, declared next
  to the code that reads them. The keys that data loading and the loop read for every model
  (``epochs``, ``batch_size``, ``seed``, ...) are :data:`autovae.config.LOOP_KEYS`; any other
  key set away from its default on a model that does not read it is refused by the config,
  naming the key and the models that do read it.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..discriminators import DISCRIMINATOR_KEYS

__all__ = ["CAPABILITIES", "Bounded", "Encoding", "Generating", "Model", "NonFiniteLossError",
           "StepContext", "WithLikelihood", "evaluation_mode"]


class NonFiniteLossError(RuntimeError):
    """A loss went non-finite; the message names the term (see :meth:`Model.diagnose`)."""


@dataclass
class StepContext:
    """Where the loop is, and a place for the model to log per-batch numbers.

    ``progress`` is the epoch as a real number (2.5 = half-way through the third epoch).
    ``log(name, values)`` adds per-data-point values (a tensor of shape (B,), or a number
    counted once per data point of the batch) to the epoch's mean ``name``; ``set(name, value)``
    records a number whose last value is reported (e.g. the current beta). What a batch logs
    counts only once the loop commits the batch (a skipped batch logs nothing).
    """

    epoch: int
    batch: int
    batches: int
    batch_size: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    _pending: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _pending_last: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def progress(self) -> float:
        return self.epoch + self.batch / self.batches

    def log(self, name: str, values) -> None:
        if isinstance(values, torch.Tensor):
            total = values.detach().double().sum()
        else:
            total = torch.tensor(float(values) * self.batch_size, dtype=torch.float64)
        previous = self._pending.get(name)
        self._pending[name] = total if previous is None else previous + total

    def set(self, name: str, value: float) -> None:
        self._pending_last[name] = float(value)

    def commit(self) -> None:
        """Count the batch's logged values (the loop calls this after the batch's steps)."""
        for name, total in self._pending.items():
            previous = self.sums.get(name)
            self.sums[name] = total if previous is None else previous + total.to(previous.device)
        self.last.update(self._pending_last)
        self.discard()

    def discard(self) -> None:
        """Forget the batch's logged values (a skipped batch)."""
        self._pending.clear()
        self._pending_last.clear()


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """``model.eval()`` and ``torch.no_grad()`` inside; the previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


# -- what the capability flags promise --------------------------------------------------------
@runtime_checkable
class Bounded(Protocol):
    """``has_bound``: a log p(x) bound and its importance-sampled NLL (``bound`` is the model's
    :class:`~autovae.bounds.Bound`)."""

    def elbo_and_bound(self, x: torch.Tensor) -> tuple: ...

    def log_likelihood(self, x: torch.Tensor, samples: int = 1000) -> torch.Tensor: ...


@runtime_checkable
class Encoding(Protocol):
    """``has_encoder``: x -> a code and back (reconstructions, embeddings, interpolations)."""

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class WithLikelihood(Protocol):
    """``has_likelihood``: p(x | z) (``likelihood``, a
    :class:`~autovae.beliefs.likelihoods.Likelihood`) of the decoder's output."""

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Generating(Protocol):
    """``can_be_prior``: data from codes of a latent prior (``latent``, a
    :class:`~autovae.beliefs.LatentSpec`), in the dtype of the model's weights (a float64 copy
    gives float64), so that the model can be the prior of a latent-space inverse problem."""

    def generate_from(self, z: torch.Tensor) -> torch.Tensor: ...


# flag -> the protocol whose methods a model setting it True must define
CAPABILITIES: dict[str, type] = {"has_bound": Bounded, "has_encoder": Encoding,
                                 "has_likelihood": WithLikelihood, "can_be_prior": Generating}


def _protocol_methods(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items()
            if callable(value) and not name.startswith("_")]


class Model(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the models the loop trains; see the module docstring for the contract."""

    name: str = "model"
    has_bound: bool = False          # log p(x) bound and importance-sampled NLL
    has_encoder: bool = False        # x -> code: reconstructions, embeddings, interpolations
    has_likelihood: bool = False     # p(x | z): likelihood means, NLL
    has_discriminator: bool = False  # trains a discriminator (disc_* settings)
    # a decoder or generator fed by a latent prior (``latent``, ``decode`` or ``generate_from``):
    # the model can serve as the prior of a latent-space inverse problem
    can_be_prior: bool = False
    # Config keys this model reads besides autovae.config.LOOP_KEYS (lr: configure_optimizers)
    reads: frozenset[str] = frozenset({"lr"})
    # keys of the per-epoch row that the pruner and reports may read, best first
    validation_keys: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        """Refuse a class whose capability flags promise methods it does not define."""
        super().__init_subclass__(**kwargs)
        for flag, protocol in CAPABILITIES.items():
            if not getattr(cls, flag, False):
                continue
            missing = [m for m in _protocol_methods(protocol)
                       if not callable(getattr(cls, m, None))
                       or getattr(getattr(cls, m), "__isabstractmethod__", False)]
            if missing:
                raise TypeError(f"model class {cls.__name__} sets {flag} = True but does not "
                                f"define {', '.join(missing)} (the {protocol.__name__} "
                                f"protocol); define them or leave {flag} False")

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, event_shape) -> Model:
        """The model from a :class:`~autovae.config.Config` and the data's event shape."""

    @classmethod
    def unread_reason(cls, key: str) -> str:
        """Why this model does not read the config key ``key`` (empty: no particular reason);
        the config adds it to its refusal."""
        if key in DISCRIMINATOR_KEYS and not cls.has_discriminator:
            return f"{cls.name} has no discriminator"
        if key == "nll_samples" and not cls.has_bound:
            return f"{cls.name} has no bound, so no importance-sampled NLL"
        if key.startswith("fisher_") and not cls.has_encoder:
            return f"{cls.name} has no encoder, so no posterior to penalise"
        return ""

    @abc.abstractmethod
    def configure_optimizers(self, config) -> dict[str, torch.optim.Optimizer]:
        """``{name: optimizer}``; the names are those :meth:`training_step` yields."""

    @abc.abstractmethod
    def training_step(self, x: torch.Tensor, ctx: StepContext
                      ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(optimizer_name, scalar loss)`` for one batch, in stepping order."""

    def validation_metrics(self, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        """Per-data-point means over ``x`` (called in evaluation mode); empty by default."""
        return {}

    def diagnose(self, x: torch.Tensor, term: str) -> list[str]:
        """Say which part of the loss ``term`` is non-finite on this batch (empty: unknown)."""
        return []

    @abc.abstractmethod
    def generate(self, n: int) -> torch.Tensor:
        """``n`` generated data points (the likelihood mean, or the generator's output)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
