"""Where a Gaussian control's nats go: per-image NLL gap against the latent that drew the image.

For a map cell of ``control-gaussian-cauchy`` (experiments/pairing_map.py), loads the retrained
normal/normal and generating-pairing runs of each seed, scores every test image (importance-
sampled log-likelihood, K samples), and prints the mean NLL gap (normal/normal minus the
generating pairing) over the test images grouped by max |z| of the latent that drew each image:
if a normal latent fails on the Cauchy tails, the gap grows with |z|.

    python experiments/control_tails.py runs/map_gcontrol/cells/control-gaussian-cauchy_gaussian_d2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from autovae.control import GAUSSIAN_CONTROLS, control_arrays
from autovae.data import _TEST_SEED
from autovae.run import load_trained

EDGES = [0, 1, 3, 10, 30, 51]


def per_image_nll(folder: Path, samples: int) -> tuple[np.ndarray, str]:
    _, config, model, data = load_trained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        ll = torch.cat([model.log_likelihood(data.test[i:i + 100], samples)
                        for i in range(0, len(data.test), 100)])
    return -ll.numpy(), config.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell", type=Path, help="a map cell folder of a Gaussian control")
    parser.add_argument("--nll-samples", type=int, default=1000)
    args = parser.parse_args()
    runs = args.cell / "retrain"
    seeds = sorted(int(p.name.rpartition("seed")[2]) for p in runs.glob("generating-seed*"))
    for seed in seeds:
        gen, name = per_image_nll(runs / f"generating-seed{seed}", args.nll_samples)
        normal, _ = per_image_nll(runs / f"normal-normal-seed{seed}", args.nll_samples)
        text, dim = GAUSSIAN_CONTROLS[name]
        x, z = control_arrays(text, dim, gaussian=True)
        test = np.random.default_rng(_TEST_SEED).permutation(len(x))[:len(gen)]
        big = np.abs(z[test]).max(1)
        gap = normal - gen
        print(f"seed {seed}: mean gap {gap.mean():+.2f} nats/image (normal/normal "
              f"{normal.mean():.2f}, generating {gen.mean():.2f}); median {np.median(gap):+.2f}")
        for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True):
            sel = (big >= lo) & (big < hi)
            if sel.any():
                print(f"  max|z| in [{lo:>2}, {hi:>2}): {sel.sum():4d} images, mean gap "
                      f"{gap[sel].mean():+8.2f}, share of the total gap "
                      f"{gap[sel].sum() / gap.sum():6.1%}")


if __name__ == "__main__":
    main()
