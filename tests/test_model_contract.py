"""The model base class declares what its capability flags promise (review 2026-12b, F11).

``from_config`` is abstract; each flag (``has_bound``, ``has_encoder``, ``has_likelihood``,
``can_be_prior``) names a protocol whose methods a class setting it must define, checked when
the class is defined; every registered model keeps its own promises.
"""

from __future__ import annotations

import pytest
import torch

from autovae.config import Config
from autovae.models import MODELS, Model, build_model
from autovae.models.base import CAPABILITIES, Bounded, Encoding, Generating, WithLikelihood


class _Minimal(Model):
    """The smallest model: the abstract methods and nothing else."""

    name = "minimal"

    @classmethod
    def from_config(cls, config, event_shape):
        return cls()

    def configure_optimizers(self, config):
        return {}

    def training_step(self, x, ctx):
        yield from ()

    def generate(self, n):
        return torch.zeros(n, 1)


def test_from_config_is_abstract():
    class NoFromConfig(Model):
        def configure_optimizers(self, config):
            return {}

        def training_step(self, x, ctx):
            yield from ()

        def generate(self, n):
            return torch.zeros(n, 1)

    with pytest.raises(TypeError, match="from_config"):
        NoFromConfig()
    assert isinstance(_Minimal.from_config(None, (1,)), Model)


@pytest.mark.parametrize("flag, given, missing", [
    ("has_encoder", {"embed"}, "reconstruct, decode_mean"),
    ("has_bound", {"log_likelihood"}, "elbo_and_bound"),
    ("has_likelihood", set(), "decode"),
    ("can_be_prior", set(), "generate_from"),
])
def test_a_flag_without_its_methods_is_refused_at_class_definition(flag, given, missing):
    body = {flag: True, **{name: (lambda self, *a: None) for name in given}}
    with pytest.raises(TypeError, match=f"sets {flag} = True but does not define {missing} "
                                        f"\\(the {CAPABILITIES[flag].__name__} protocol\\)"):
        type("Promising", (_Minimal,), body)
    type("Honest", (_Minimal,), {flag: False})  # the flag off: nothing is promised


def test_an_abstract_method_does_not_keep_a_promise():
    import abc

    with pytest.raises(TypeError, match="generate_from"):
        type("Abstract", (_Minimal,), {"can_be_prior": True,
                                       "generate_from": abc.abstractmethod(lambda self, z: z)})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_keeps_its_promises(name):
    cls = MODELS[name]
    extra = {"beta": 4.0} if name == "beta-vae" else {}
    model = build_model(Config(model=name, hidden=4, depth=1, latent="normal/normal:2",
                               **({"disc_hidden": 4} if cls.has_discriminator else {}),
                               **extra), (4,))
    for flag, protocol in CAPABILITIES.items():
        if getattr(cls, flag):
            assert isinstance(model, protocol), (name, flag)
    if cls.can_be_prior:  # Generating: data from codes, in the weights' dtype
        z = torch.zeros(3, model.latent.dim, dtype=torch.float64)
        out = model.double().generate_from(z)
        assert out.dtype == torch.float64 and out.shape[0] == 3
    if cls.has_encoder:
        codes = model.embed(torch.rand(3, 4, dtype=torch.float64))
        assert codes.shape == (3, model.latent.dim)
    assert {Bounded, Encoding, Generating, WithLikelihood} == set(CAPABILITIES.values())


def test_a_vae_prior_decodes_through_generate_from():
    """The inverse problems' prior calls the one Generating method for every model."""
    from autovae.inverse.priors import DecoderPrior

    for name in ("vae", "gan"):
        model = build_model(Config(model=name, hidden=4, depth=1, latent="normal/normal:2",
                                   **({"disc_hidden": 4} if name == "gan" else {})), (4,))
        prior = DecoderPrior(model)
        z = torch.randn(5, 2, dtype=torch.float64)
        expected = prior.model.generate_from(z).double()
        assert torch.equal(prior.params(z), expected.reshape(5, *prior.param_shape))
