"""Cost of a heterogeneous latent space: forward + backward of rsample and KL, batch 1000.

Compares, in the same run, a 20-dim LatentSpec of three blocks (all closed forms, and with one
numerical pair) against homogeneous normal/normal, and against a plain hand-written PyTorch
normal/normal (the usual VAE code). Prints the median time per step and the ratios.

    python benchmarks/bench_latent.py [--batch 1000] [--steps 200] [--repeats 7] [--compile]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from autovae.beliefs import LatentSpec

SPECS = {
    "homogeneous normal/normal": "normal/normal:20",
    "heterogeneous, closed forms": "logistic/normal:10,laplace/laplace:6,gumbel/gumbel:4",
    "heterogeneous, one numerical": "logistic/normal:10,laplace/laplace:6,normal/cauchy:4",
}


def _spec_loss(spec: LatentSpec, h: torch.Tensor) -> torch.Tensor:
    q = spec.posterior(h)
    z = spec.rsample(q)
    return spec.kl(q).sum() + z.sum()


def _plain_loss(h: torch.Tensor) -> torch.Tensor:
    loc, raw = h.chunk(2, dim=-1)
    scale = F.softplus(raw) + 1e-4
    z = loc + scale * torch.randn_like(loc)
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()
    return kl.sum() + z.sum()


def _time(loss, h, steps: int, repeats: int) -> float:
    for _ in range(10):  # warm-up (and compilation)
        loss(h).backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss(h).backward()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true",
                        help="wrap every loss (the plain one too) in torch.compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    wrap = torch.compile if args.compile else (lambda f: f)
    h = torch.randn(args.batch, 40, requires_grad=True)
    plain = _time(wrap(_plain_loss), h, args.steps, args.repeats)
    results = {"plain PyTorch normal/normal": plain}
    for name, text in SPECS.items():
        loss = wrap(functools.partial(_spec_loss, LatentSpec.parse(text)))
        results[name] = _time(loss, h, args.steps, args.repeats)
    base = results["homogeneous normal/normal"]
    mode = "torch.compile" if args.compile else "eager"
    print(f"batch {args.batch}, 20 latent dims, torch {torch.__version__}, {mode}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} x {args.steps} steps")
    print(f"{'':34}{'ms/step':>10}{'vs homogeneous':>16}{'vs plain':>10}")
    for name, t in results.items():
        print(f"{name:34}{t * 1e3:10.3f}{t / base:16.2f}{t / plain:10.2f}")


if __name__ == "__main__":
    main()
