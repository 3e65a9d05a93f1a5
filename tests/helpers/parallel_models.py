"""Small forward models for the --jobs tests: rows on threads or processes, one that cannot
be pickled, and a served model that kills its own server after a number of evaluations."""

from __future__ import annotations

import os
import threading
import time

import torch

from autovae.inverse import ForwardModel

_A = torch.tensor([[1.0, 0.5, 0.0, -0.3], [0.2, -1.0, 0.4, 0.0], [0.0, 0.3, 0.8, 0.5],
                   [0.6, 0.0, -0.2, 1.1], [0.3, 0.3, 0.3, 0.3], [-0.5, 0.2, 0.0, 0.7]],
                  dtype=torch.float64)


class Tanh(ForwardModel):
    """y = tanh(A x) (6 observations of 4 parameters, a 2 x 2 field), by autograd."""

    name = "tanh"
    param_shape, n_obs = (4,), 6

    def evaluate(self, params):
        return torch.tanh(params.reshape(len(params), 4) @ _A.T)


class TanhThreads(Tanh):
    name = "tanh-threads"
    parallel_rows = "threads"


class TanhProcesses(Tanh):
    """Rows in worker processes; records the process that evaluated each row."""

    name = "tanh-processes"
    parallel_rows = "processes"

    def evaluate(self, params):
        y = super().evaluate(params)
        return y + 0.0 * float(os.getpid())  # the same values in any process


class PickyTanh(TanhProcesses):
    """Rows in worker processes; a batch with a parameter above 100 fails in its worker."""

    name = "picky-tanh"

    def evaluate(self, params):
        if (params > 100).any():
            raise ValueError("a parameter above 100")
        return super().evaluate(params)


class Unpicklable(Tanh):
    """Declares process-parallel rows but holds a lock, which pickle refuses."""

    name = "unpicklable"
    parallel_rows = "processes"

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


class DyingTanh(Tanh):
    """Served by ``autovae serve-forward``: the server process exits (as a crash would) at the
    evaluation number given by AUTOVAE_TEST_DIE_AFTER."""

    name = "tanh"

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.die_after = int(os.environ.get("AUTOVAE_TEST_DIE_AFTER", "0"))

    def evaluate(self, params):
        self.calls += 1
        if self.die_after and self.calls >= self.die_after:
            os._exit(1)
        return super().evaluate(params)


class Sleep50(ForwardModel):
    """A model that takes a fixed 50 ms per evaluation (a stand-in for an expensive solver,
    for UM-Bridge throughput against requests in flight)."""

    name = "sleep50"
    param_shape, n_obs = (4,), 6
    gradient = False
    gradient_reason = "this model has no gradient"

    def evaluate(self, params):
        time.sleep(0.05 * len(params))
        return torch.tanh(params.reshape(len(params), 4) @ _A.T)
