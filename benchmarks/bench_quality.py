"""Seconds to compute FID + KID + IS of 10k generated against 10k real images on the CPU, with
autovae's domain features (the Fashion-MNIST classifier), against references in the same run:
extracting the features of the 20k images alone (the floor: every image passes through the
classifier once), and the metrics on features extracted beforehand.

    python benchmarks/bench_quality.py [--images 10000] [--repeats 3] [--cache-dir DIR]

Real images are the Fashion-MNIST test set; "generated" ones are training images with Gaussian
noise (sd 0.1), so the scores are those of a good but imperfect model. The classifier is loaded
from the cache (``domain_classifier``), or trained once (about a minute on 2 idle cores).
Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from autovae.data import load_data
from autovae.quality import PrecomputedFeatures, domain_classifier, sample_quality


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="images per side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="classifier cache (default: autovae's)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*save all extracted features")

    data = load_data("fashion-mnist")
    started = time.perf_counter()
    extractor = domain_classifier("fashion-mnist", data=data, cache_dir=args.cache_dir)
    how = "loaded" if extractor.from_cache else "trained"
    print(f"classifier {how} in {time.perf_counter() - started:.1f} s: {extractor.name}, "
          f"test accuracy {extractor.accuracy:.4f}")

    g = torch.Generator().manual_seed(0)
    real = data.test[:args.images]
    train = data.train[:args.images]
    fake = (train + 0.1 * torch.randn(train.shape, generator=g)).clamp(0, 1)

    def extract_only():
        extractor.features(real)
        extractor.features(fake)

    scores = {}

    def everything():
        scores.update(sample_quality(real, fake, extractor))

    extract_s = _median_seconds(extract_only, args.repeats)
    total_s = _median_seconds(everything, args.repeats)

    # The metric part alone: torchmetrics on features extracted beforehand.
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    f_real, l_real = (t.double() for t in extractor.features(real))
    f_fake, l_fake = (t.double() for t in extractor.features(fake))
    d = f_real.shape[1]

    def metric(make, *updates):
        def run():
            m = make()
            for args_, kwargs in updates:
                m.update(*args_, **kwargs)
            m.compute()
        return _median_seconds(run, args.repeats)

    pair = [((f_real,), {"real": True}), ((f_fake,), {"real": False})]
    parts = {
        "FID": metric(lambda: FrechetInceptionDistance(feature=PrecomputedFeatures(d)), *pair),
        "KID (100 subsets of 1000)": metric(
            lambda: KernelInceptionDistance(feature=PrecomputedFeatures(d)), *pair),
        "IS (fake and real)": 2 * metric(
            lambda: InceptionScore(feature=PrecomputedFeatures(l_fake.shape[1])), ((l_fake,), {})),
    }

    n = len(real)
    print(f"{n} real vs {len(fake)} fake 1x28x28 images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'':40}{'seconds':>10}{'vs extraction':>15}")
    print(f"{'features only (20k images, reference)':40}{extract_s:10.2f}{1:15.2f}")
    for name, t in parts.items():
        print(f"{'  ' + name + ' on features':40}{t:10.2f}{t / extract_s:15.2f}")
    print(f"{'FID + KID + IS (sample_quality)':40}{total_s:10.2f}{total_s / extract_s:15.2f}")
    shown = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "is_real_mean")
    print("scores: " + ", ".join(f"{k} {scores[k]:.4g}" for k in shown)
          + f" ({scores['feature_extractor']})")


if __name__ == "__main__":
    main()
