"""Adversarial models: GAN, VAE-GAN (Larsen et al. 2016) and AVA0-AVA5 (Nguyen et al. 2023/24).

Every model here trains through the one loop (:mod:`autovae.training`): it declares one optimizer
per network and yields one loss per optimizer in the order they are stepped.

* ``gan`` (Goodfellow et al. 2014): generator G = the decoder network with a sigmoid output
  (images in [0, 1]), z ~ the latent prior; the discriminator d ascends log d(x) + log(1 - d(G(z)))
  and the generator descends log(1 - d(G(z))) (``gan_loss: minimax``, eq. 2 of the AVA notes) or
  -log d(G(z)) (``non-saturating``). Its "best" image is G(prior median) (z = 0, as the AVA
  author's code). No encoder, no likelihood, no bound.
* ``vae-gan`` (Larsen et al. 2016, ``andersbll/autoencoding_beyond_pixels``): the encoder
  minimises KL + L_llike, where L_llike = 1/2 ||Dis_l(x) - Dis_l(x~)||^2 is the reconstruction
  error in the features of the discriminator's last hidden layer (no GAN gradient reaches the
  encoder); the decoder minimises ``vaegan_gamma`` L_llike + (1 - ``vaegan_gamma``) x
  [gan loss on x~ = G(z ~ q) and on G(z_p ~ p)] (the authors' code weights them 0.01 / 0.99);
  Dis minimises BCE(real) + (BCE(x~) + BCE(G(z_p))) / 2 (real and fake weighted equally). The
  equilibrium heuristic (margin ``equilibrium`` = 0.4 around a BCE of 0.68) skips the Dis step
  when Dis is too good and the decoder step when Dis is too bad.
* ``ava1`` ... ``ava5``: the VAE plus a decoder discriminator d(.|Psi) on images and/or an
  encoder discriminator D(.|Lambda) on point codes mu = ``LatentSpec.median(q(z|x))`` (so any
  latent space works), with the flags of the variant table (AVA notes section 1.7):

  ====== ================== ============ ================== ============
  model  supervise decoder  lean decoder supervise encoder  lean encoder
  ====== ================== ============ ================== ============
  ava0   .                  .            .                  .
  ava1   yes                .            .                  .
  ava2   yes                yes          .                  .
  ava3   .                  .            yes                .
  ava4   .                  .            yes                yes
  ava5   yes                yes          yes                yes
  ====== ================== ============ ================== ============

  ``ava0`` has no discriminator: in ``paper`` mode it is the paper's "VAE" column (encoder
  trained on the KL only, decoder on the reconstruction of sg(z)); in ``modern`` mode a VAE.

AVA settings (Config keys): ``ava_grad_mode`` ``autograd`` differentiates the paper's objectives
(eqs. 3, 4, 9, 11, 12, 15) with autograd: the "leaning" terms 1/2||x - x'||^2 and
1/2||mu(x) - mu(x')||^2 do not depend on Psi or Lambda, so AVA2 trains exactly as AVA1 and AVA4
as AVA3. ``paper`` reproduces the author's update equations through surrogate losses whose
gradients are eqs. 5-7, 10, 13-14 and 16: the scalar adversarial error c = d(x') (or D0 = D(mu(x')))
is broadcast to every decoder output (every mu unit), and the leaning terms enter the
discriminators as the extra output error s a'_d(d0) (see :func:`paper_surrogates`).
``couple_encoder`` lets the reconstruction gradient reach the encoder (the paper's encoder sees
only the KL). ``ava_preset``: ``paper`` = (paper, uncoupled, minimax, plain SGD with
gamma_t = gamma_0 / sqrt(t), floored at gamma_0 / 100, t = optimizer steps) and ``modern`` =
(autograd, coupled, non-saturating, Adam with betas (0.5, 0.999)); ``ava_grad_mode``,
``couple_encoder`` and ``gan_loss`` override the preset one by one.

One AVA step follows the author's order encoder -> decoder -> Psi -> Lambda. All four updates are
evaluated at the same x, z ~ q(z|x), x' = E[p(x|z)] and mu(x), mu(x') (the paper's update set),
each loss on its own graph; the decoder sees sg(z) unless ``couple_encoder``. In ``autograd``
mode the decoder's reconstruction is -log p(x|z) of the run's likelihood (a Gaussian with
sigma = 1 is the paper's 1/2||x - x'||^2); in ``paper`` mode it is 1/2||x - x'||^2 on the
likelihood mean, as printed.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check
from ..beliefs import LatentSpec
from ..discriminators import (
    DISCRIMINATOR_KEYS,
    CodeDiscriminator,
    Discriminator,
    build_discriminator,
)
from ..nets import NETWORK_KEYS, build_networks
from .base import Model, StepContext
from .vae import FISHER_KEYS, VAE

__all__ = ["AVA", "AVA0", "AVA1", "AVA2", "AVA3", "AVA4", "AVA5", "AVA_KEYS", "AVA_PRESETS", "GAN",
           "VAEGAN", "VAEGAN_KEYS", "AdversarialSettings", "gan_generator_loss", "minus_mmd",
           "paper_surrogates"]

# Config keys of the adversarial training settings (the discriminator's own are
# discriminators.DISCRIMINATOR_KEYS); each model class declares those it reads in ``reads``
AVA_KEYS = frozenset({"ava_preset", "ava_grad_mode", "couple_encoder"})
VAEGAN_KEYS = frozenset({"vaegan_gamma", "equilibrium"})

AVA_PRESETS = {  # ava_preset: the adversarial training recipe (not search presets)
    "paper": dict(grad_mode="paper", couple_encoder=False, gan_loss="minimax", optimizer="sgd"),
    "modern": dict(grad_mode="autograd", couple_encoder=True, gan_loss="non-saturating",
                   optimizer="adam"),
}
_LR_FLOOR = 0.01  # gamma_t = max(gamma_0 / sqrt(t), gamma_0 * _LR_FLOOR) under the paper preset
_BETAS = (0.5, 0.999)  # Adam betas of the adversarial models (Radford et al. 2016)
_EQ_TARGET = 0.68  # Larsen et al.'s equilibrium: the BCE around which Dis and Dec are balanced


@dataclasses.dataclass(frozen=True)
class AdversarialSettings:
    """The resolved AVA/GAN training settings (a preset with per-key overrides)."""

    grad_mode: str = "autograd"
    couple_encoder: bool = True
    gan_loss: str = "non-saturating"
    optimizer: str = "adam"  # adam | sgd (gamma_0 / sqrt(t) schedule)
    lr: float = 1e-4
    disc_lr: float = 1e-4

    @classmethod
    def from_config(cls, config) -> AdversarialSettings:
        preset = dict(AVA_PRESETS[config.ava_preset])
        for key, field in (("grad_mode", "ava_grad_mode"), ("couple_encoder", "couple_encoder"),
                           ("gan_loss", "gan_loss")):
            if getattr(config, field) is not None:
                preset[key] = getattr(config, field)
        return cls(**preset, lr=config.lr,
                   disc_lr=config.disc_lr if config.disc_lr is not None else config.lr)


# ----------------------------------------------------------------------------- loss pieces


def gan_generator_loss(logit: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's loss per point from the discriminator's logit on its fakes: minimax
    log(1 - d) = log sigmoid(-logit), or non-saturating -log d = -log sigmoid(logit)."""
    if kind == "minimax":
        return F.logsigmoid(-logit)
    return -F.logsigmoid(logit)


def _disc_objective(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """log d(real) + log(1 - d(fake)) per point (the discriminator ascends it)."""
    return F.logsigmoid(real_logit) + F.logsigmoid(-fake_logit)


def _sum_event(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def minus_mmd(a: torch.Tensor, b: torch.Tensor) -> float:
    """-MMD^2 (biased, Gaussian kernel with the median-distance bandwidth) between two samples
    of flattened points: 0 for identical distributions, more negative the further apart."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    both = torch.cat([a, b])
    d2 = torch.cdist(both, both).pow(2)
    bandwidth = d2[d2 > 0].median() if (d2 > 0).any() else torch.tensor(1.0, dtype=d2.dtype)
    k = torch.exp(-d2 / bandwidth)
    n = len(a)
    mmd = k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
    return -float(mmd)


def _adam_or_sgd(params, lr: float, kind: str) -> torch.optim.Optimizer:
    params = list(params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, betas=_BETAS)


class _Schedule:
    """gamma_t = max(gamma_0 / sqrt(t), gamma_0 / 100) for SGD optimizers (the paper preset);
    t counts batches from the start of training, so a resumed run continues the schedule."""

    def __init__(self):
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.base: dict[str, float] = {}

    def set(self, optimizers: dict, base: dict) -> None:
        self.optimizers, self.base = optimizers, base

    def apply(self, ctx: StepContext) -> None:
        t = ctx.epoch * ctx.batches + ctx.batch + 1
        for name, opt in self.optimizers.items():
            if isinstance(opt, torch.optim.SGD):
                lr = max(self.base[name] / math.sqrt(t), self.base[name] * _LR_FLOOR)
                for group in opt.param_groups:
                    group["lr"] = lr


# ----------------------------------------------------------------------------- GAN


class GAN(Model):
    """Goodfellow et al. (2014): generator = the decoder network (sigmoid output), z ~ prior.

    Args:
        generator: latent draws (N, dim) -> (N, *event_shape) pre-activations.
        discriminator: images -> one logit each.
        latent: gives the prior p(z) (any LatentSpec; only its priors are used).
        settings: gan_loss, grad_mode (``paper``: the broadcast error of eq. 6 without the
            reconstruction), optimizer and learning rates.
    """

    name = "gan"
    has_discriminator = can_be_prior = True
    validation_keys = ("val_minus_mmd", "val_disc_real", "val_disc_fake")
    # no likelihood, bound, encoder or clip: none of the VAE's settings
    reads = (Model.reads | NETWORK_KEYS | DISCRIMINATOR_KEYS | {"ava_preset", "ava_grad_mode"}) \
        - {"code_disc_hidden"}

    @classmethod
    def unread_reason(cls, key: str) -> str:
        if key in ("code_disc_hidden", "couple_encoder"):
            return f"{cls.name} has no encoder, so no encoder discriminator"
        return super().unread_reason(key)

    def __init__(self, generator: nn.Module, discriminator: Discriminator, latent: LatentSpec,
                 settings: AdversarialSettings | None = None):
        super().__init__()
        self.generator, self.discriminator, self.latent = generator, discriminator, latent
        self.settings = settings or AdversarialSettings()
        self._schedule = _Schedule()

    @classmethod
    def from_config(cls, config, event_shape) -> GAN:
        latent = LatentSpec.parse(config.latent, dim=config.latent_dim,
                                  learn_prior=config.learn_prior)
        _, generator = build_networks(config.network, event_shape, latent.encoder_outputs,
                                      latent.dim, tuple(event_shape), config.hidden, config.depth)
        disc = build_discriminator(config.disc_network, event_shape, config.disc_hidden,
                                   config.disc_depth, config.spectral_norm)
        return cls(generator, disc, latent, AdversarialSettings.from_config(config))

    def configure_optimizers(self, config) -> dict[str, torch.optim.Optimizer]:
        s = self.settings
        optimizers = {"discriminator": _adam_or_sgd(self.discriminator.parameters(), s.disc_lr,
                                                    s.optimizer),
                      "generator": _adam_or_sgd([*self.generator.parameters(),
                                                 *self.latent.parameters()], s.lr, s.optimizer)}
        self._schedule.set(optimizers, {"discriminator": s.disc_lr, "generator": s.lr})
        return optimizers

    def generate_from(self, z: torch.Tensor) -> torch.Tensor:
        """Images G(z) in [0, 1]: float32 under AMP, float64 from a float64 copy (a prior)."""
        out = self.generator(z)
        return torch.sigmoid(out if out.dtype == torch.float64 else out.float())

    def training_step(self, x: torch.Tensor, ctx: StepContext):
        self._schedule.apply(ctx)
        fake = self.generate_from(self.latent.sample_prior(x.shape[0]).to(x.device))
        objective = _disc_objective(self.discriminator(x), self.discriminator(fake.detach()))
        ctx.log("train_disc_objective", objective)
        yield "discriminator", -objective.mean()
        # the generator's graph was not back-propagated (the discriminator saw sg(fake))
        logit = self.discriminator(fake)
        if self.settings.grad_mode == "paper":  # eq. 6 without the reconstruction: c = d(x')
            loss = -(torch.sigmoid(logit).detach() * _sum_event(fake))
        else:
            loss = gan_generator_loss(logit, self.settings.gan_loss)
        ctx.log("train_generator_loss", gan_generator_loss(logit.detach(), self.settings.gan_loss))
        yield "generator", loss.mean()

    def validation_metrics(self, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        """-MMD^2 between up to 500 generated and validation points, and the mean d(x) on
        real and generated points."""
        n = min(len(x), 500)
        fake = self.generate(n)
        return {"minus_mmd": minus_mmd(fake, x[:n]),
                "disc_real": torch.sigmoid(self.discriminator(x[:n])).mean().item(),
                "disc_fake": torch.sigmoid(self.discriminator(fake)).mean().item()}

    def diagnose(self, x: torch.Tensor, term: str) -> list[str]:
        with torch.no_grad():
            fake = self.generate_from(self.latent.sample_prior(x.shape[0]).to(x.device))
            return _diagnose_discriminator(self.discriminator, x, fake, "the generator")

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        n = check("n", n, "count")
        return self.generate_from(self.latent.sample_prior(n).to(self.device))

    @torch.no_grad()
    def best_image(self) -> torch.Tensor:
        """G(prior median): the AVA author's "best" GAN image (z = 0 for a N(0, I) prior)."""
        centre = self.latent.median(self.latent.priors()).to(self.device)
        return self.generate_from(centre[None])[0]


def _diagnose_discriminator(disc, x, fake, fake_maker: str) -> list[str]:
    if not torch.isfinite(fake).all():
        return [f"{fake_maker}'s output is non-finite (its weights have diverged; lower lr or "
                "set clip_grad)"]
    problems = []
    for what, inputs in (("real", x), ("generated", fake)):
        logit = disc(inputs)
        if not torch.isfinite(logit).all():
            problems.append(f"the discriminator's logit on {what} images is non-finite (its "
                            "weights have diverged; lower disc_lr or set clip_grad, or try "
                            "spectral_norm)")
    return problems


# ----------------------------------------------------------------------------- VAE-GAN


class VAEGAN(VAE):
    """Larsen et al. (2016): a VAE whose reconstruction error is measured in the features of
    a discriminator layer, trained with reconstructions and prior samples as fakes."""

    name = "vae-gan"
    has_discriminator = True
    validation_keys = ("val_elbo", "val_bound")
    # the VAE's settings but its penalty (the loss is its own), plus the discriminator's
    reads = (VAE.reads - FISHER_KEYS | DISCRIMINATOR_KEYS | VAEGAN_KEYS) - {"code_disc_hidden"}

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: LatentSpec,
                 likelihood, discriminator: Discriminator, bound=None,
                 latent_clip: float | None = None, warmup_epochs: float = 0.0,
                 gamma: float = 0.01, margin: float | None = 0.4,
                 gan_loss: str = "non-saturating", disc_lr: float | None = None):
        super().__init__(encoder, decoder, latent, likelihood, bound, latent_clip, warmup_epochs)
        self.discriminator = discriminator
        self.gamma, self.margin, self.gan_loss, self.disc_lr = gamma, margin, gan_loss, disc_lr

    @classmethod
    def unread_reason(cls, key: str) -> str:
        if key == "code_disc_hidden":
            return f"{cls.name} has no encoder discriminator"
        return super().unread_reason(key)

    @classmethod
    def from_config(cls, config, event_shape) -> VAEGAN:
        parts = cls.vae_parts(config, event_shape)
        del parts["fisher"]  # refused by the config: VAE-GAN trains its own losses
        discriminator = build_discriminator(config.disc_network, event_shape, config.disc_hidden,
                                            config.disc_depth, config.spectral_norm)
        return cls(**parts, discriminator=discriminator, gamma=config.vaegan_gamma,
                   margin=config.equilibrium, gan_loss=config.gan_loss or "non-saturating",
                   disc_lr=config.disc_lr)

    def configure_optimizers(self, config) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": _adam_or_sgd(self.encoder.parameters(), config.lr, "adam"),
                "decoder": _adam_or_sgd([*self.decoder.parameters(),
                                         *self.latent.parameters()], config.lr, "adam"),
                "discriminator": _adam_or_sgd(self.discriminator.parameters(),
                                              self.disc_lr or config.lr, "adam")}

    def training_step(self, x: torch.Tensor, ctx: StepContext):
        beta = self.beta_at(ctx.progress)
        disc = self.discriminator
        with torch.no_grad():
            f_real = disc.features(x)
        q = self.posterior(x)
        z = self.latent.rsample(q, 1)[0]
        kl = self.kl_per_point(q, z)
        f_tilde = disc.features(self.likelihood.mean(self.decode(z)))
        llike = 0.5 * _sum_event((f_real - f_tilde) ** 2)  # -log N(Dis_l(x) | Dis_l(x~), I)
        ctx.log("train_kl", kl)
        ctx.log("train_llike", llike)
        ctx.set("beta", beta)
        yield "encoder", (beta * kl + llike).mean()  # L_prior + L_llike: no GAN term

        x_rec = self.likelihood.mean(self.decode(z.detach()))
        x_prior = self.likelihood.mean(self.decode(self.latent.sample_prior(x.shape[0])
                                                   .to(x.device)))
        f_rec = disc.features(x_rec)
        logit_rec, logit_prior = disc.head(f_rec).squeeze(-1), disc(x_prior)
        with torch.no_grad():
            bce_real = F.softplus(-disc.head(f_real).squeeze(-1)).mean().item()
            bce_fake = 0.5 * (F.softplus(logit_rec).mean() + F.softplus(logit_prior).mean()
                              ).item()
        train_dis = train_dec = True
        if self.margin is not None:  # Larsen et al.'s equilibrium heuristic (aegan.py)
            if bce_real < _EQ_TARGET - self.margin or bce_fake < _EQ_TARGET - self.margin:
                train_dis = False
            if bce_real > _EQ_TARGET + self.margin or bce_fake > _EQ_TARGET + self.margin:
                train_dec = False
            if not (train_dis or train_dec):
                train_dis = train_dec = True
        ctx.log("train_disc_bce_real", bce_real)
        ctx.log("train_disc_bce_fake", bce_fake)
        ctx.log("train_decoder_skipped", float(not train_dec))
        ctx.log("train_disc_skipped", float(not train_dis))
        if train_dec:
            llike_dec = 0.5 * (f_real - f_rec).pow(2).flatten(1).sum(1)
            fool = (gan_generator_loss(logit_rec, self.gan_loss)
                    + gan_generator_loss(logit_prior, self.gan_loss))
            yield "decoder", (self.gamma * llike_dec + (1 - self.gamma) * fool).mean()
        if train_dis:
            bce = (F.softplus(-disc(x)) + 0.5 * (F.softplus(disc(x_rec.detach()))
                                                 + F.softplus(disc(x_prior.detach()))))
            yield "discriminator", bce.mean()

    def diagnose(self, x: torch.Tensor, term: str) -> list[str]:
        if term == "discriminator":
            with torch.no_grad():
                return _diagnose_discriminator(self.discriminator, x, self.generate(len(x)),
                                               "the decoder")
        return super().diagnose(x, term)


# ----------------------------------------------------------------------------- AVA


def paper_surrogates(x, x_rec, out_grad, mu_x, d_fake, D_fake, flags) -> dict:
    """The paper-mode pieces whose gradients are the author's update equations, per point.

    ``x_rec`` = x' (with graph), ``out_grad`` = a'_g(x') (d x' / d decoder output, detached),
    ``mu_x`` = mu(x) (with graph), ``d_fake`` = d(x') and ``D_fake`` = D(mu(x')) (probabilities,
    detached; None where the variant has no such discriminator). Returns:

    * ``encoder``: -D0 sum_i mu(x)[i], added to the KL: its gradient in mu[i] is -D0 =
      -a'_D(D0) / (1 - D0) for a sigmoid D, so Theta_mu follows eq. 14 and Theta_Sigma keeps the
      KL part of eq. 5;
    * ``decoder``: 1/2||x - x'||^2 - c sum_i x'[i], c = d(x') = a'_d(d0) / (1 - d0): the
      gradient in the decoder's output pre-activation is -((x - x') + c) a'_g(x') (eq. 6);
    * ``lean_decoder``: s_D = sum_i (x - x')[i] a'_g(x'[i]), the extra error of eq. 10 (the
      Psi objective adds s_D d(x'), whose logit-gradient is s_D a'_d(d0));
    * ``lean_encoder``: s_E computed by the caller as sum_i (mu(x) - mu(x'))[i] (a'_mu = 1).
    """
    rec = 0.5 * _sum_event((x - x_rec) ** 2)
    pieces = {"decoder": rec}
    if d_fake is not None:
        pieces["decoder"] = rec - d_fake * _sum_event(x_rec)
    if flags.get("lean_decoder"):
        pieces["lean_decoder"] = _sum_event((x - x_rec.detach()) * out_grad)
    if D_fake is not None:
        pieces["encoder"] = -D_fake * mu_x.sum(-1)
    return pieces


class AVA(VAE):
    """Adversarial Variational Autoencoder (Nguyen et al.): the VAE plus a decoder
    discriminator d(.|Psi) on images (``supervise_decoder``) and/or an encoder discriminator
    D(.|Lambda) on point codes (``supervise_encoder``), with the optional "leaning" terms.
    See the module docstring for the modes and presets."""

    name = "ava"
    has_discriminator = True
    supervise_decoder = lean_decoder = supervise_encoder = lean_encoder = False
    validation_keys = ("val_elbo", "val_bound")
    reads = VAE.reads - FISHER_KEYS | AVA_KEYS  # each variant adds its discriminators' keys

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: LatentSpec,
                 likelihood, bound=None, latent_clip: float | None = None,
                 warmup_epochs: float = 0.0, settings: AdversarialSettings | None = None,
                 decoder_discriminator: Discriminator | None = None,
                 encoder_discriminator: Discriminator | None = None):
        super().__init__(encoder, decoder, latent, likelihood, bound, latent_clip, warmup_epochs)
        self.settings = settings or AdversarialSettings()
        self._schedule = _Schedule()
        for role, net, wanted in (("decoder_discriminator", decoder_discriminator,
                                   self.supervise_decoder),
                                  ("encoder_discriminator", encoder_discriminator,
                                   self.supervise_encoder)):
            if wanted and net is None:
                raise ValueError(f"model {self.name} supervises the "
                                 f"{role.split('_')[0]}: pass {role}")
            if not wanted and net is not None:
                raise ValueError(f"model {self.name} has no {role.replace('_', ' ')}; "
                                 f"{role} must be None")
            if net is not None:
                setattr(self, role, net)
        if self.settings.grad_mode == "paper" and \
                tuple(likelihood.out_event_shape) != tuple(likelihood.event_shape):
            raise ValueError(f"ava_grad_mode paper needs a decoder output of one value per data "
                             f"value (x' = the likelihood mean, element by element); likelihood "
                             f"{likelihood.name} has output {likelihood.out_event_shape} for "
                             f"data {tuple(likelihood.event_shape)}: drop learn_sigma: pixel, "
                             "or use ava_grad_mode autograd")

    @classmethod
    def unread_reason(cls, key: str) -> str:
        if key == "disc_network" and cls.supervise_encoder and not cls.supervise_decoder:
            return "its only discriminator is on codes, an MLP"
        if key == "code_disc_hidden" and not cls.supervise_encoder:
            return f"{cls.name} has no encoder discriminator"
        return super().unread_reason(key)

    @classmethod
    def from_config(cls, config, event_shape) -> AVA:
        parts = cls.vae_parts(config, event_shape)
        del parts["fisher"]  # refused by the config: AVA trains its own losses
        parts["settings"] = AdversarialSettings.from_config(config)
        if cls.supervise_decoder:
            parts["decoder_discriminator"] = build_discriminator(
                config.disc_network, event_shape, config.disc_hidden, config.disc_depth,
                config.spectral_norm)
        if cls.supervise_encoder:
            width = (config.disc_hidden if config.code_disc_hidden is None
                     else config.code_disc_hidden)
            parts["encoder_discriminator"] = CodeDiscriminator(
                parts["latent"].dim, width, config.disc_depth, config.spectral_norm)
        return cls(**parts)

    def configure_optimizers(self, config) -> dict[str, torch.optim.Optimizer]:
        s = self.settings
        networks = {"encoder": (self.encoder, s.lr), "decoder": (self.decoder, s.lr)}
        if self.supervise_decoder:
            networks["decoder_discriminator"] = (self.decoder_discriminator, s.disc_lr)
        if self.supervise_encoder:
            networks["encoder_discriminator"] = (self.encoder_discriminator, s.disc_lr)
        params = {name: list(net.parameters()) for name, (net, _) in networks.items()}
        params["decoder"] += list(self.latent.parameters())  # learned priors (learn_prior)
        optimizers = {name: _adam_or_sgd(params[name], lr, s.optimizer)
                      for name, (_, lr) in networks.items()}
        self._schedule.set(optimizers, {name: lr for name, (_, lr) in networks.items()})
        return optimizers

    def _out_grad(self, out: torch.Tensor) -> torch.Tensor:
        """a'_g(x'): the element-wise derivative of the likelihood mean at the decoder output."""
        with torch.enable_grad():
            u = out.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.likelihood.mean(u).sum(), u)
        return grad

    def training_step(self, x: torch.Tensor, ctx: StepContext):
        s, paper = self.settings, self.settings.grad_mode == "paper"
        self._schedule.apply(ctx)
        beta = self.beta_at(ctx.progress)
        ctx.set("beta", beta)
        # -- 1. encoder Theta ----------------------------------------------------------------------
        q = self.posterior(x)
        z = self.latent.rsample(q, 1)[0]
        mu_x = self.latent.median(q)
        kl = self.kl_per_point(q, z)
        ctx.log("train_kl", kl)
        loss_e = beta * kl
        out = self.decode(z if s.couple_encoder else z.detach())
        x_rec = self.likelihood.mean(out)
        if s.couple_encoder:
            rec = (0.5 * _sum_event((x - x_rec) ** 2) if paper
                   else -self.likelihood.log_prob(x, out))
            loss_e = loss_e + rec
        x_fake = x_rec.detach()
        mu_fake = D_fake = None
        if self.supervise_encoder:
            if paper:
                with torch.no_grad():
                    mu_fake = self.latent.median(self.posterior(x_fake))
                    D_fake = torch.sigmoid(self.encoder_discriminator(mu_fake))
                loss_e = loss_e + paper_surrogates(x, x_rec, None, mu_x, None, D_fake,
                                                   {})["encoder"]
            else:
                mu_fake_g = self.latent.median(self.posterior(x_fake))
                adv = gan_generator_loss(self.encoder_discriminator(mu_fake_g), s.gan_loss)
                ctx.log("train_encoder_adversarial", adv)
                loss_e = loss_e + adv
                mu_fake = mu_fake_g.detach()
        yield "encoder", loss_e.mean()
        # -- 2. decoder Phi ----------------------------------------------------------------------
        if s.couple_encoder:  # step 1 back-propagated through this decoder graph: a new one
            out = self.decode(z.detach())
            x_rec = self.likelihood.mean(out)
        d_fake = None
        if paper:
            if self.supervise_decoder:
                with torch.no_grad():
                    d_fake = torch.sigmoid(self.decoder_discriminator(x_fake))
            loss_d = paper_surrogates(x, x_rec, None, None, d_fake, None, {})["decoder"]
            ctx.log("train_recon", 0.5 * _sum_event((x - x_fake) ** 2))
        else:
            rec = -self.likelihood.log_prob(x, out)
            ctx.log("train_recon", rec.detach())
            loss_d = rec
            if self.supervise_decoder:
                adv = gan_generator_loss(self.decoder_discriminator(x_rec), s.gan_loss)
                ctx.log("train_decoder_adversarial", adv)
                loss_d = loss_d + adv
        yield "decoder", loss_d.mean()
        # -- 3. decoder discriminator Psi ---------------------------------------------------------
        if self.supervise_decoder:
            fake_logit = self.decoder_discriminator(x_fake)
            objective = _disc_objective(self.decoder_discriminator(x), fake_logit)
            ctx.log("train_decoder_disc_objective", objective)
            if self.lean_decoder:
                if paper:  # eq. 10: the extra error s_D a'_d(d0) at the output neuron
                    s_d = paper_surrogates(x, x_fake, self._out_grad(out), None, None, None,
                                           {"lean_decoder": True})["lean_decoder"]
                    objective = objective + s_d * torch.sigmoid(fake_logit)
                else:  # eq. 9 as written: -1/2||x - x'||^2 does not depend on Psi
                    objective = objective - 0.5 * _sum_event((x - x_fake) ** 2)
            yield "decoder_discriminator", -objective.mean()
        # -- 4. encoder discriminator Lambda ------------------------------------------------------
        if self.supervise_encoder:
            real_codes = mu_x.detach()
            fake_logit = self.encoder_discriminator(mu_fake)
            objective = _disc_objective(self.encoder_discriminator(real_codes), fake_logit)
            ctx.log("train_encoder_disc_objective", objective)
            if self.lean_encoder:
                if paper:  # eq. 16 with a linear mu head (a'_mu = 1)
                    s_e = (real_codes - mu_fake).sum(-1)
                    objective = objective + s_e * torch.sigmoid(fake_logit)
                else:  # eq. 15 as written: -1/2||mu(x) - mu(x')||^2 does not depend on Lambda
                    objective = objective - 0.5 * (real_codes - mu_fake).pow(2).sum(-1)
            yield "encoder_discriminator", -objective.mean()

    def diagnose(self, x: torch.Tensor, term: str) -> list[str]:
        with torch.no_grad():
            if term == "decoder_discriminator":
                return _diagnose_discriminator(self.decoder_discriminator, x,
                                               self.reconstruct(x), "the decoder")
            if term == "encoder_discriminator":
                codes = self.embed(x)
                return _diagnose_discriminator(self.encoder_discriminator, codes,
                                               self.embed(self.reconstruct(x)), "the encoder")
        return super().diagnose(x, term)


def _variant(name: str, sd: bool, ld: bool, se: bool, le: bool, doc: str) -> type[AVA]:
    keys = set(AVA.reads)
    if sd or se:
        keys |= {"gan_loss", "disc_lr", "spectral_norm", "disc_hidden", "disc_depth"}
    if sd:
        keys.add("disc_network")
    if se:
        keys.add("code_disc_hidden")
    return type(name.upper(), (AVA,), {
        "name": name, "__doc__": doc, "__module__": __name__,
        "has_discriminator": sd or se, "supervise_decoder": sd, "lean_decoder": ld,
        "supervise_encoder": se, "lean_encoder": le, "reads": frozenset(keys)})


AVA0 = _variant("ava0", False, False, False, False,
                "AVA with no discriminator: the paper's VAE baseline in paper mode.")
AVA1 = _variant("ava1", True, False, False, False,
                "AVA1: decoder discriminator (eqs. 5, 6, 7).")
AVA2 = _variant("ava2", True, True, False, False,
                "AVA2: decoder discriminator, leaning decoder (eqs. 5, 6, 10).")
AVA3 = _variant("ava3", False, False, True, False,
                "AVA3: encoder discriminator (eqs. 14, 13; decoder: reconstruction only).")
AVA4 = _variant("ava4", False, False, True, True,
                "AVA4: encoder discriminator, leaning encoder (eqs. 14, 16).")
AVA5 = _variant("ava5", True, True, True, True,
                "AVA5: both discriminators, both leaning (eqs. 6, 10, 14, 16).")
