"""The K-sample NLL before and after issue 27's non-matmul cuts, interleaved in one process on
one thread: CPU time per image (load-robust: time-slicing by other processes does not count)
and GFLOP per CPU second against MKL's and oneDNN's float32 matmuls on the decoder's shapes.

"Before" decodes through the ``nn.Sequential`` (bias copies, ReLU passes, MKL) and sums the
Bernoulli log-probability as ``x.eta - relu(eta) + log prod sigmoid|eta|``; "after" is
``VAE.log_likelihood``. Both take the same draws.

    python benchmarks/ab_nll_forms.py [--images 10] [--rounds 12]
"""

import argparse
import math
import statistics
import time

import torch
from bench_train import DEC, ENC, PIXELS, data, matmul_peaks, mlp_flops

from autovae.beliefs.likelihoods import _product_group
from autovae.config import Config
from autovae.models import build_model


def before_sum(x, logits):
    d = logits.shape[-1]
    group = _product_group(d)
    linear = (logits * x).sum(-1) - logits.clamp_min(0).sum(-1)
    sig = logits.abs().sigmoid_()
    return linear + sig.unflatten(-1, (d // group, group)).prod(-1).log_().sum(-1)


@torch.no_grad()
def before_nll(model, x, samples):
    q = model.posterior(x)
    chunk = max(1, min(samples, 2**20 // (x.shape[0] * PIXELS)))
    flat, total = x.flatten(1), torch.full((x.shape[0],), -math.inf)
    for start in range(0, samples, chunk):
        z = model.latent.rsample(q, min(chunk, samples - start))
        logits = model.decoder(z.flatten(0, 1)).view(z.shape[0], x.shape[0], PIXELS)
        log_w = before_sum(flat, logits) + model.latent.log_p(z) - model.latent.log_q(q, z)
        total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
    return total - math.log(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--samples", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(Config(), (1, 28, 28)).eval()
    x = data(1000).test[: args.images]
    flops = x.shape[0] * (args.samples * mlp_flops(DEC) + mlp_flops(ENC))
    forms = {"before": lambda: before_nll(model, x, args.samples),
             "after": lambda: model.log_likelihood(x, args.samples, workers=1)}
    before_nll(model, x, 50), model.log_likelihood(x, 50, workers=1)  # (warm-up)
    cpu = {name: [] for name in forms}
    estimates, peak = {}, 0.0
    for _ in range(args.rounds):
        for name, nll in forms.items():
            torch.manual_seed(1)
            start = time.process_time()
            estimates[name] = nll()
            cpu[name].append(time.process_time() - start)
        chunk = max(1, min(args.samples, 2**20 // (x.shape[0] * PIXELS)))
        peak = max(peak, matmul_peaks(2, list(zip(DEC, DEC[1:], strict=False)),
                                      chunk * x.shape[0])[1])
    print(f"K = {args.samples}, {x.shape[0]} images, {args.rounds} rounds; faster matmul on "
          f"the decoder's shapes: {peak:.1f} GFLOP per CPU second")
    for name, times in cpu.items():
        best = flops / min(times) / 1e9
        print(f"  {name:6}: CPU per image median {statistics.median(times) / x.shape[0] * 1e3:.1f}"
              f" ms (min {min(times) / x.shape[0] * 1e3:.1f}); best {best:.1f} GFLOP per CPU s"
              f" = {best / peak:.1%}")
    ratios = sorted(a / b for a, b in zip(cpu["after"], cpu["before"], strict=True))
    print(f"  after/before per round: median "
          f"{statistics.median(ratios):.3f}, {ratios[0]:.3f} to {ratios[-1]:.3f}; largest "
          f"difference {(estimates['after'] - estimates['before']).abs().max().item():.2g} nats")


if __name__ == "__main__":
    main()
