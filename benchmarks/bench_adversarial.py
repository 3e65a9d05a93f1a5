"""Per-step time of GAN and AVA5 (modern) through autovae's loop against hand-written PyTorch
loops of the same networks, in the same run; ratio = hand time / autovae time (goal >= 0.9).

    OMP_NUM_THREADS=1 python benchmarks/bench_adversarial.py [--steps 200] [--repeats 5]

Each measurement trains one epoch of ``steps`` batches of 64 random 28x28 images (MLP networks,
hidden 256 x 2, latent 16). autovae's per-step time is its epoch's own timing (``seconds`` in
metrics.jsonl: the loop, without building the model, validation and the checkpoint); the time of
the whole ``train()`` call, those included, is printed beside it. The median over ``repeats``
alternating runs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from autovae import Config, Run, train
from autovae.data import DataSplits
from autovae.models import build_model

BATCH = 64


def _config(model: str, steps: int) -> Config:
    return Config(model=model, data="bench", epochs=1, batch_size=BATCH, hidden=256, depth=2,
                  latent="normal/normal:16", disc_hidden=256, disc_depth=2, lr=1e-4,
                  likelihood="bernoulli")


def _opt(params):
    return torch.optim.Adam(list(params), lr=1e-4, betas=(0.5, 0.999))


def hand_gan(model, data: torch.Tensor) -> None:
    """Goodfellow et al.'s alternation with the non-saturating generator loss, by hand."""
    G, D, latent = model.generator, model.discriminator, model.latent
    opt_d, opt_g = _opt(D.parameters()), _opt(G.parameters())
    order = torch.randperm(len(data))
    for i in range(0, len(data), BATCH):
        x = data[order[i:i + BATCH]]
        fake = torch.sigmoid(G(latent.sample_prior(len(x))))
        loss_d = -(F.logsigmoid(D(x)) + F.logsigmoid(-D(fake.detach()))).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = -F.logsigmoid(D(fake)).mean()
        opt_g.zero_grad()
        loss_g.backward(inputs=list(G.parameters()))
        opt_g.step()


def hand_ava5(model, data: torch.Tensor) -> None:
    """AVA5, modern (autograd, coupled encoder, non-saturating), by hand: encoder, decoder,
    decoder discriminator, encoder discriminator."""
    enc, dec, lat, lik = model.encoder, model.decoder, model.latent, model.likelihood
    d, D = model.decoder_discriminator, model.encoder_discriminator
    opts = [_opt(enc.parameters()), _opt(dec.parameters()), _opt(d.parameters()),
            _opt(D.parameters())]
    order = torch.randperm(len(data))
    for i in range(0, len(data), BATCH):
        x = data[order[i:i + BATCH]]
        q = lat.posterior(enc(x))
        z = lat.rsample(q, 1)[0]
        mu = lat.median(q)
        out = dec(z)
        x_fake = lik.mean(out).detach()
        mu_fake = lat.median(lat.posterior(enc(x_fake)))
        loss = (lat.kl(q) - lik.log_prob(x, out) - F.logsigmoid(D(mu_fake))).mean()
        opts[0].zero_grad()
        loss.backward(inputs=list(enc.parameters()))
        opts[0].step()
        out = dec(z.detach())
        loss = (-lik.log_prob(x, out) - F.logsigmoid(d(lik.mean(out)))).mean()
        opts[1].zero_grad()
        loss.backward(inputs=list(dec.parameters()))
        opts[1].step()
        loss = -(F.logsigmoid(d(x)) + F.logsigmoid(-d(x_fake))
                 - 0.5 * (x - x_fake).pow(2).flatten(1).sum(1)).mean()
        opts[2].zero_grad()
        loss.backward()
        opts[2].step()
        mu_fake = mu_fake.detach()
        real = mu.detach()
        loss = -(F.logsigmoid(D(real)) + F.logsigmoid(-D(mu_fake))
                 - 0.5 * (real - mu_fake).pow(2).sum(-1)).mean()
        opts[3].zero_grad()
        loss.backward()
        opts[3].step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.steps * BATCH, 1, 28, 28, generator=g)
    data = DataSplits("bench", x, x[:0], x[:BATCH])
    print(f"{torch.get_num_threads()} threads, {args.steps} steps of {BATCH}, median of "
          f"{args.repeats}")
    for name, hand in (("gan", hand_gan), ("ava5", hand_ava5)):
        config = _config(name, args.steps)
        ours, whole, theirs = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                train(config, folder, data=data, progress=False)
                whole.append((time.perf_counter() - started) / args.steps)
                ours.append(Run(folder).history()[0]["seconds"] / args.steps)
            torch.manual_seed(0)
            model = build_model(config, data.event_shape)
            started = time.perf_counter()
            hand(model, data.train)
            theirs.append((time.perf_counter() - started) / args.steps)
        a, b, w = (statistics.median(v) for v in (ours, theirs, whole))
        print(f"{name:5}  autovae {1000 * a:7.2f} ms/step   hand-written {1000 * b:7.2f} ms/step"
              f"   ratio {b / a:.2f}   (whole train() call {1000 * w:.2f} ms/step, "
              f"ratio {b / w:.2f})")


if __name__ == "__main__":
    main()
