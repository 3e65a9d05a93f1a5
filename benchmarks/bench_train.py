"""Training and NLL throughput of autovae against references measured in the same run.

(a) Training images/s of ``autovae.train`` (the seed MLP 3x400, 20 latents, Bernoulli, batch
    1000, Adam) against a plain hand-written PyTorch loop of the same model, and the achieved
    GFLOP/s against a float32 matmul peak measured here.
(b) The importance-sampled NLL with K = 5000: decoded samples/s and GFLOP/s as a fraction of a
    float32 matmul peak measured in the same round, on one thread and on all threads (one
    single-core worker per thread), and the time it implies for the 10k test images.
(c) Heterogeneous (logistic/normal:14, cauchy/cauchy:6) against homogeneous latent training.
(d) Per-step overhead of the loop with two optimizers: a small GAN-shaped model (generator and
    discriminator MLPs, each with its own Adam) trained by ``autovae.train`` against the same
    networks and losses in a hand-written two-optimizer loop.

    python benchmarks/bench_train.py [--images 20000] [--repeats 3] [--nll-images 100]
    python benchmarks/bench_train.py --only-nll [--all-threads 2]     # (b) alone

Fashion-MNIST is used when Debian's dataset-fashion-mnist is installed, random images otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from autovae.config import Config
from autovae.data import DataSplits, load_data
from autovae.models import MODELS, Model, build_model
from autovae.nets import _onednn_linear
from autovae.run import Run
from autovae.training import train

HIDDEN, DEPTH, LATENT, PIXELS = 400, 3, 20, 784


def mlp_flops(sizes: list[int]) -> int:
    """Multiply-adds x 2 of a stack of linear layers, per example, forward only."""
    return sum(2 * a * b for a, b in zip(sizes, sizes[1:], strict=False))


ENC = [PIXELS] + [HIDDEN] * DEPTH + [2 * LATENT]
DEC = [LATENT] + [HIDDEN] * DEPTH + [PIXELS]
TRAIN_FLOPS = 3 * (mlp_flops(ENC) + mlp_flops(DEC))  # forward + backward (about 2x forward)


def matmul_peak(repeats: int = 5) -> float:
    """GFLOP/s of float32 matmuls shaped like the model's layers (batch 1000)."""
    return matmul_peaks(repeats)[0]


def matmul_peaks(repeats: int = 5, layers=((HIDDEN, HIDDEN), (PIXELS, HIDDEN)), rows: int = 1000,
                 streams: int = 1) -> tuple[float, float]:
    """(GFLOP per second, GFLOP per CPU second of this process) of float32 matmuls of ``rows``
    rows through ``layers`` ((in, out) pairs; default the model's layer shapes), best of
    ``repeats`` and of torch's two CPU matmuls: MKL's (``@``, which autograd uses) and
    oneDNN's (the NLL's, :func:`autovae.nets.inference_forward`), whichever is faster here.
    ``streams`` > 1: also ``streams`` single-core threads at once, each its own matmuls (the
    NLL's workers' way), against each op split over torch's threads; the faster counts."""
    inputs = [torch.randn(rows, a) for a, _ in layers]
    weights = [torch.randn(b, a) for a, b in layers]
    products = [lambda: [h @ w.t() for h, w in zip(inputs, weights, strict=True)]]
    onednn = _onednn_linear()
    if onednn is not None:
        products.append(lambda: [onednn(h, w, None, "none", [None], "")
                                 for h, w in zip(inputs, weights, strict=True)])
    flop = 2 * rows * sum(a * b for a, b in layers)
    passes = max(1, round(47.5e9 / flop))  # (50 for the default shapes, as before)
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(streams, initializer=torch.set_num_threads, initargs=(1,))
    best, best_cpu = 0.0, 0.0
    try:
        for product, n in itertools.product(products, sorted({1, streams})):
            def run(_=None, product=product):
                for _ in range(passes):
                    product()
            for _ in range(repeats + 1):  # (the first: warm-up)
                start, cpu = time.perf_counter(), time.process_time()
                run() if n == 1 else list(pool.map(run, range(n)))
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                best = max(best, n * passes * flop / 1e9 / wall)
                best_cpu = max(best_cpu, n * passes * flop / 1e9 / max(cpu, 1e-9))
    finally:
        pool.shutdown()
        torch.set_num_threads(threads)
    return best, best_cpu


def data(images: int) -> DataSplits:
    try:
        d = load_data("fashion-mnist", val_size=1000, limit=images)
    except ValueError:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(images + 2000, 1, 28, 28, generator=g)
        d = DataSplits("random", x[:images], x[images:images + 1000], x[images + 1000:])
    return d


def autovae_images_per_second(d: DataSplits, latent: str) -> float:
    config = Config(data=d.name, epochs=1, latent=latent, batch_size=1000, lr=1e-4)
    with tempfile.TemporaryDirectory() as folder:
        train(config, folder, data=d, progress=False)
        return Run(folder).history()[0]["images_per_second"]


def plain_images_per_second(d: DataSplits) -> float:
    """The same VAE written by hand: MLPs, reparameterization, BCE + analytic KL, Adam."""
    torch.manual_seed(0)

    def net(sizes):
        layers = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    encoder, decoder = net(ENC), net(DEC)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-4)
    x_all = d.train.flatten(1)
    n = x_all.shape[0]
    start = time.perf_counter()
    for idx in torch.randperm(n).split(1000):
        x = x_all[idx]
        loc, raw = encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        logits = decoder(z)
        rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()).sum(-1)
        loss = -(rec - kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start)


class TwoPlayer(Model):
    """Generator 16 -> 256 -> 784 and discriminator 784 -> 256 -> 1, non-saturating GAN losses,
    one Adam each: the shape of a two-optimizer step, for measuring the loop's overhead."""

    name = "bench-two-player"

    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, PIXELS))
        self.discriminator = nn.Sequential(nn.Linear(PIXELS, 256), nn.ReLU(), nn.Linear(256, 1))

    @classmethod
    def from_config(cls, config, event_shape):
        return cls()

    def configure_optimizers(self, config):
        return {"discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=2e-4),
                "generator": torch.optim.Adam(self.generator.parameters(), lr=2e-4)}

    def losses(self, x):
        """(discriminator loss, then a function giving the generator loss)."""
        fake = torch.sigmoid(self.generator(torch.randn(x.shape[0], 16)))
        real_logit, fake_logit = self.discriminator(x), self.discriminator(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))

        def g_loss():
            logit = self.discriminator(fake)
            return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))

        return d_loss, g_loss

    def training_step(self, x, ctx):
        d_loss, g_loss = self.losses(x.flatten(1))
        yield "discriminator", d_loss
        yield "generator", g_loss()

    def generate(self, n):
        return torch.sigmoid(self.generator(torch.randn(n, 16)))


def two_player_autovae_step_ms(d: DataSplits, batch: int) -> float:
    MODELS[TwoPlayer.name] = TwoPlayer
    config = Config(model=TwoPlayer.name, data=d.name, epochs=1, batch_size=batch)
    with tempfile.TemporaryDirectory() as folder:
        train(config, folder, data=d, progress=False)
        return 1000 * batch / Run(folder).history()[0]["images_per_second"]


def two_player_plain_step_ms(d: DataSplits, batch: int) -> float:
    """The same two-optimizer step by hand: D step, then G step, zero_grad/backward/step."""
    torch.manual_seed(0)
    model = TwoPlayer()
    opts = model.configure_optimizers(None)
    x_all = d.train.flatten(1)
    order = torch.randperm(x_all.shape[0]).split(batch)
    start = time.perf_counter()
    for idx in order:
        d_loss, g_loss = model.losses(x_all[idx])
        opts["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["discriminator"].step()
        loss = g_loss()
        opts["generator"].zero_grad(set_to_none=True)
        loss.backward()
        opts["generator"].step()
    return 1000 * (time.perf_counter() - start) / len(order)


def interleaved_medians(repeats: int, *fs) -> list[float]:
    """Median of each of ``fs`` over ``repeats`` rounds, each round calling them in turn, so
    that drift over the run (allocator growth, clock changes) hits every one alike."""
    rounds = [[f() for f in fs] for _ in range(repeats)]
    return [statistics.median(r[i] for r in rounds) for i in range(len(fs))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nll-images", type=int, default=100)
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--all-threads", type=int, default=None,
                        help="threads for the NLL's all-threads reading (default: torch's)")
    parser.add_argument("--only-nll", action="store_true", help="run (b) only")
    args = parser.parse_args()
    d = data(args.images)
    if args.only_nll:
        nll_section(d, args)
        return
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {d.name}, "
          f"{d.train.shape[0]} training images; matmul peak {peak:.1f} GFLOP/s")

    plain, ours, mixed = interleaved_medians(
        args.repeats, lambda: plain_images_per_second(d),
        lambda: autovae_images_per_second(d, "normal/normal:20"),
        lambda: autovae_images_per_second(d, "logistic/normal:14,cauchy/cauchy:6"))
    print("\n(a) training, seed MLP, batch 1000 (median images/s)")
    for name, v in (("plain PyTorch loop", plain), ("autovae train", ours)):
        print(f"  {name:30}{v:9.0f} img/s {v * TRAIN_FLOPS / 1e9:7.1f} GFLOP/s "
              f"({v * TRAIN_FLOPS / 1e9 / peak:5.1%} of peak)")
    print(f"  autovae / plain = {ours / plain:.2f}x (goal >= 0.95x)")

    print("\n(c) heterogeneous vs homogeneous latent training")
    print(f"  logistic/normal:14,cauchy/cauchy:6 {mixed:9.0f} img/s = {mixed / ours:.2f}x of "
          f"normal/normal:20")

    print("\n(d) two optimizers per step (generator + discriminator MLPs, median ms/step)")
    for batch in (64, 256):
        plain2, loop2 = interleaved_medians(
            args.repeats, lambda b=batch: two_player_plain_step_ms(d, b),
            lambda b=batch: two_player_autovae_step_ms(d, b))
        print(f"  batch {batch:4}: hand-written {plain2:6.3f} ms, autovae loop {loop2:6.3f} ms, "
              f"overhead {loop2 - plain2:+.3f} ms/step ({plain2 / loop2:.2f}x of hand-written)")

    nll_section(d, args)


def nll_section(d: DataSplits, args) -> None:
    """(b) the K-sample NLL's GFLOP/s as a fraction of the float32 matmul peak, on one thread
    and on all, each peak measured beside it (rounds alternate peak and NLL; best of each):
    the decoder's layer shapes at the NLL's rows per chunk, the faster of MKL and oneDNN, on n
    threads the faster of each op split over them and n single-core streams at once.
    On n threads the NLL runs n single-core workers (``VAE.log_likelihood``); the form it
    replaced, each op split over n threads, is timed in the same rounds. Every NLL is drawn at
    the same seed, so all readings must give the same numbers."""
    torch.manual_seed(0)
    model = build_model(Config(), (1, 28, 28)).eval()
    x = d.test[: args.nll_images]
    draws = x.shape[0] * args.nll_samples
    flops = draws * mlp_flops(DEC) + x.shape[0] * mlp_flops(ENC)
    threads = torch.get_num_threads()
    chunk = max(1, min(args.nll_samples, 2**20 // (x.shape[0] * PIXELS)))  # (log_likelihood's)
    shapes = dict(layers=list(zip(DEC, DEC[1:], strict=False)), rows=chunk * x.shape[0])
    print(f"\n(b) NLL with K = {args.nll_samples} on {x.shape[0]} images, best of "
          f"{args.repeats} rounds (each: matmul peak, then the NLL); load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    estimates = []

    def nll_seconds(workers: int) -> tuple[float, float]:
        """(seconds, CPU seconds of this process) of one NLL at seed 1."""
        torch.manual_seed(1)
        start, cpu = time.perf_counter(), time.process_time()
        estimates.append(model.log_likelihood(x, args.nll_samples, workers=workers))
        return time.perf_counter() - start, time.process_time() - cpu

    core_cpu = 0.0  # a single-thread matmul's GFLOP per CPU second (load-robust reference)
    for n in sorted({1, args.all_threads or threads}):
        torch.set_num_threads(n)
        model.log_likelihood(x[:10], 50)  # warm-up
        peak, peak_cpu, ours, before = 0.0, 0.0, (float("inf"),) * 2, (float("inf"),) * 2
        for _ in range(args.repeats):
            reading = matmul_peaks(**shapes, streams=n)
            peak, peak_cpu = (max(v) for v in zip((peak, peak_cpu), reading, strict=True))
            ours = min(ours, nll_seconds(n))
            if n > 1:
                before = min(before, nll_seconds(1))
        (seconds, cpu), rate = ours, flops / ours[0] / 1e9
        core_cpu = core_cpu or peak_cpu
        line = (f"  {n} thread(s): {seconds:.2f} s, {draws / seconds:.0f} samples/s, "
                f"{rate:.1f} GFLOP/s of a {peak:.1f} GFLOP/s matmul peak = {rate / peak:.1%} "
                f"(goal >= 80%); 10k test images: {seconds * 10000 / x.shape[0] / 60:.1f} min; "
                f"per CPU second {flops / cpu / 1e9:.1f} GFLOP, {flops / cpu / 1e9 / core_cpu:.1%} "
                f"of a one-thread matmul's {core_cpu:.1f}, "
                f"{cpu / seconds / n:.0%} of {n} core(s) busy")
        if n > 1:
            line += (f"; each op on {n} threads (before): {flops / before[0] / 1e9 / peak:.1%} "
                     f"of peak, {before[0] / seconds:.2f}x the time")
        print(line)
    torch.set_num_threads(threads)
    gap = max((e - estimates[0]).abs().max().item() for e in estimates)
    print(f"  mean NLL {-estimates[0].mean().item():.4f} nats; largest difference between the "
          f"{len(estimates)} estimates (same seed, per image): {gap:.2g} nats")
    print(f"  load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
