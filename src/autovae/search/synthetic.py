"""A cheap stand-in for training, for the tests and the soak benchmark of many workers.

:class:`SyntheticObjective` is the search's :class:`~autovae.search.study.Objective` with only
its training replaced: each "epoch" sleeps, writes the run's checkpoint (atomically) and reports
a loss. Everything else is the real thing: a trial claims its slot of the budget, suggests its
configuration from the study's space, beats, reports and is pruned, is killed, failed with its
reason, retried and resumed from the checkpoint by the same worker, storage, heartbeat and retry
code as a real search, for almost no CPU (so that 32 workers fit on two cores)::

    python -m autovae.search.synthetic --storage URL --study NAME --dir DIR --worker 3 \\
        [--epoch-seconds 0.5] [--log events.jsonl] [--studies a,b,c] [--report]

The study is created as usual (``autovae search`` or :func:`~autovae.search.create_study`);
its base ``epochs`` is the number of sleeps. ``--log`` appends one JSON line per event (trial
started, trial completed as acknowledged by the database, worker exit) with the seconds this
process spent in storage calls on its main thread, which the soak benchmark turns into the
storage's share of a trial's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from pathlib import Path

from ..config import Config
from . import study as study_mod

__all__ = ["SyntheticObjective", "main"]

EPOCH_SECONDS = 0.5


class SyntheticObjective(study_mod.Objective):
    """The real objective, training replaced by ``EPOCH_SECONDS`` of sleep per epoch."""

    epoch_seconds = EPOCH_SECONDS
    log = None  # an _EventLog, or None

    def _train(self, config: Config, run_folder: Path, resume: bool, report) -> dict:
        from ..models import model_class

        run_folder.mkdir(parents=True, exist_ok=True)
        checkpoint = run_folder / "checkpoint.pt"
        saved = json.loads(checkpoint.read_text()) if resume else {"epoch": 0, "loss": math.inf}
        first, loss = saved["epoch"], saved["loss"]
        if self.log:
            self.log.write("start", trial=int(run_folder.name), resumed_at_epoch=first)
        key = (model_class(config.model).validation_keys or ("val_elbo",))[0]
        # a loss that falls with the epochs and depends on the trial's settings
        floor = 90 + 20 * abs(config.alpha - 0.3) + 5 * config.samples + (config.seed % 7)
        for epoch in range(first, config.epochs):
            time.sleep(self.epoch_seconds)
            loss = floor + 100 / (epoch + 1)
            tmp = checkpoint.with_name(f".checkpoint.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"epoch": epoch + 1, "loss": loss}))
            os.replace(tmp, checkpoint)
            report({"epoch": epoch + 1, key: -loss}, None)
        scores = {"nll": loss, "elbo": loss + 3, "kl": 10.0, "recon_mse": loss / 1000,
                  "params": 1000.0}
        if "fid" in self.spec.objectives:
            scores["fid"] = loss
        if first:
            scores["resumed_at_epoch"] = first
        return scores


class _EventLog:
    """JSON lines of this worker's events, with its main thread's seconds in storage calls."""

    def __init__(self, path: str):
        self.path, self.storage_seconds, self.idle_seconds, self.depth = path, 0.0, 0.0, 0
        self.by_call: dict[str, tuple[int, float]] = {}
        self.pid, self.main = os.getpid(), threading.main_thread()

    def write(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "pid": self.pid, "t": time.time(),
                           "storage_s": self.storage_seconds, "idle_s": self.idle_seconds,
                           **fields})
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def timed(self, function, on_result=None):
        """``function``, its main-thread seconds added to ``storage_seconds`` (outermost call
        only: storage calls nest) and to ``by_call[name]``."""
        name = function.__name__

        def call(*args, **kwargs):
            if threading.current_thread() is not self.main or self.depth:
                return function(*args, **kwargs)
            self.depth += 1
            started = time.perf_counter()
            try:
                result = function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.storage_seconds += spent
                calls, seconds = self.by_call.get(name, (0, 0.0))
                self.by_call[name] = (calls + 1, seconds + spent)
                self.depth -= 1
            if on_result is not None:
                on_result(args, kwargs, result)
            return result

        return call

    def instrument(self, storage) -> None:
        """Time the storage's calls and the budget's transactions (main thread only; heartbeats
        run beside the trial) and log each COMPLETE that the database acknowledged."""
        from optuna.storages import BaseStorage
        from optuna.trial import TrialState

        from . import slots

        def completed(args, kwargs, result):
            state = kwargs.get("state", args[1] if len(args) > 1 else None)
            if result and state == TrialState.COMPLETE:
                self.write("complete", trial_id=args[0])

        for name in dir(BaseStorage):
            if not name.startswith("_") and callable(getattr(storage, name, None)):
                setattr(storage, name, self.timed(
                    getattr(storage, name),
                    completed if name == "set_trial_state_values" else None))
        for name in slots.__all__:
            if callable(getattr(slots, name)) and not isinstance(getattr(slots, name), type):
                setattr(slots, name, self.timed(getattr(slots, name)))


class _IdleClock:
    """``time`` for the study module, counting the seconds its worker waits for a free slot."""

    def __init__(self, log: _EventLog):
        self.log = log

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        started = time.perf_counter()
        time.sleep(seconds)
        self.log.idle_seconds += time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study", default="autovae")
    parser.add_argument("--studies", default=None, help="several studies, one after the other")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--epoch-seconds", type=float, default=EPOCH_SECONDS)
    parser.add_argument("--db-pool", type=int, default=None)
    parser.add_argument("--log", default=None)
    parser.add_argument("--report", action="store_true", help="a line per finished trial")
    args = parser.parse_args(argv)
    SyntheticObjective.epoch_seconds = args.epoch_seconds
    if args.log:
        log = SyntheticObjective.log = _EventLog(args.log)
        opened = study_mod.open_storage

        def open_storage(*a, **k):
            storage = opened(*a, **k)
            log.instrument(storage)
            return storage

        study_mod.open_storage = open_storage
        study_mod.time = _IdleClock(log)
    names = args.studies.split(",") if args.studies else [args.study]
    for name in names:
        folder = Path(args.dir) / name if args.studies else Path(args.dir)
        study_mod.run_worker(args.storage, name, folder, worker=args.worker, pool=args.db_pool,
                             objective=SyntheticObjective, report=args.report)
    if args.log:
        log.write("exit", by_call=log.by_call)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
