"""The K-sample NLL with glibc's malloc keeping freed memory (autovae._cpu.keep_freed_memory)
and as glibc has it, in alternating fresh processes: the share of a one-thread matmul's GFLOP
per CPU second, and page faults per chunk (the seed network, 20 images, K = 2046, 1 thread).

    python benchmarks/ab_nll_malloc.py [--pairs 3]
"""

import argparse
import os
import subprocess
import sys

ONE = """
import resource, time, torch
from autovae.config import Config
from autovae.models import build_model
torch.set_num_threads(1)
torch.manual_seed(0)
model, x = build_model(Config(), (1, 28, 28)).eval(), torch.rand(20, 1, 28, 28)
model.log_likelihood(x, 500)
best, faults = float("inf"), 0
for _ in range(3):
    f, c = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    model.log_likelihood(x, 2046)  # 31 chunks of 66 draws
    best = min(best, time.process_time() - c)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f
a, w = torch.randn(1000, 400), torch.randn(400, 400)
c, d = torch.randn(1000, 784), torch.randn(784, 400)
peak = float("inf")
for _ in range(5):
    s = time.process_time()
    for _ in range(50):
        a @ w, c @ d
    peak = min(peak, time.process_time() - s)
nll = 20 * 2046 * 2 * (20 * 400 + 2 * 400 * 400 + 400 * 784) / best
print(f"{nll / (50 * 2 * 1000 * 400 * 1184 / peak):.1%} of a one-thread matmul per CPU second, "
      f"{faults / 31:.0f} page faults per chunk")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for _ in range(args.pairs):
        for name, extra in (("kept", {}), ("as glibc has it", {"MALLOC_PERTURB_": "0"})):
            out = subprocess.run([sys.executable, "-c", ONE], env={**env, **extra}, text=True,
                                 capture_output=True, check=True).stdout.strip()
            print(f"  {name:16} {out}")


if __name__ == "__main__":
    main()
