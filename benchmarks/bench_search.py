"""Search throughput: complete trials per hour with 1 and 2 workers on one study, and the
overhead of the search machinery per trial against bare training of the same configuration.

All three are measured in the same run on the same small configuration (digits, a fixed
normal/normal pairing, so every trial does the same work):

    python benchmarks/bench_search.py [--trials 8] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autovae.config import Config
from autovae.evaluation import evaluate
from autovae.run import prepare
from autovae.search import SearchSpace, StudySpec, create_study, open_storage
from autovae.training import train

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _config(epochs: int) -> Config:
    return Config(data="fashion-mnist", limit=5000, val_size=1000, epochs=epochs,
                  batch_size=250, hidden=200, depth=2, lr=1e-3, latent="normal/normal:10")


def bare_seconds(config: Config, repeats: int) -> float:
    """Median seconds of train + the validation scoring a trial does, without Optuna."""
    data = prepare(config)
    times = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            model = train(config.replace(seed=i), folder, data=data, progress=False).model
            evaluate(model, data.val, nll_samples=50)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def search_hours(config: Config, trials: int, workers: int) -> float:
    """Wall-clock hours for ``trials`` complete trials with ``workers`` worker processes."""
    space = SearchSpace(pairs=["normal/normal"], alpha=(1, 1), samples=(1, 1),
                        latent_dim=(10, 10), hidden=(200, 200), depth=(2, 2), lr=(1e-3, 1e-3))
    with tempfile.TemporaryDirectory() as folder:
        spec = StudySpec(space, config, ["nll"], trials, pruner="none")
        create_study(open_storage(None, Path(folder)), "bench", spec)
        cmd = [sys.executable, "-m", "autovae", "worker", "--study", "bench", "--dir", folder]
        env = {**os.environ, "PYTHONPATH": SRC,
               # one worker per core: no thread oversubscription between workers
               "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        start = time.perf_counter()
        procs = [subprocess.Popen([*cmd, "--worker", str(i)], env=env) for i in range(workers)]
        if any(p.wait() for p in procs):
            raise RuntimeError("a worker failed")
        return (time.perf_counter() - start) / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    config = _config(args.epochs)
    bare = bare_seconds(config, 3)
    one = search_hours(config, args.trials, 1)
    two = search_hours(config, args.trials, 2)
    per_trial = one * 3600 / args.trials
    print(f"{args.trials} trials of {args.epochs} epochs on 5000 Fashion-MNIST images, "
          f"{os.cpu_count()} cores")
    print(f"  bare train + validation scoring: {bare:6.2f} s per run (median of 3)")
    print(f"  search, 1 worker:  {args.trials / one:7.0f} trials/hour, {per_trial:6.2f} s per "
          f"trial, overhead {per_trial - bare:+.2f} s ({per_trial / bare:.2f}x bare; includes "
          "process start and data loading once)")
    print(f"  search, 2 workers: {args.trials / two:7.0f} trials/hour "
          f"({one / two:.2f}x the 1-worker rate)")


if __name__ == "__main__":
    main()
