"""Studies, the objective and workers (storages: :mod:`autovae.search.storage`).

A study lives in a folder (``--dir``): its embedded SQLite store ``study.db`` (unless another
``--storage`` is given), one run folder per trial under ``trials/``, and the analysis. The study
is created once, before any worker starts; it records its search space, objectives, base config
and trial budget, so a worker on another machine needs only the storage URL and study name, and
re-running the same command resumes the study.

With SQL storages every worker sends a heartbeat; a trial whose worker died or froze is failed
with the reason and retried (resuming from its last epoch checkpoint when the trial folders are
shared). The budget is kept exactly by :mod:`autovae.search.slots`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from .._checks import StudyFault, check
from ..config import Config
from ..data import DataSplits
from ..models import NonFiniteLossError, model_class
from ..run import Run, StudyFolder
from . import _optuna_rdb as rdb
from . import slots
from .progress import SearchReporter
from .space import SearchSpace
from .storage import (
    Outage,
    Unreachable,
    database_error,
    heartbeat_seconds,
    interrupted_in_transaction,
    journal_lock,
    lock_timed_out,
    open_storage,
    redact,
)

__all__ = ["OBJECTIVES", "SAMPLERS", "PRUNERS", "StudyFault", "StudySpec", "create_study",
           "open_storage", "run_worker", "run_search"]

# objective name -> (direction, what it measures)
OBJECTIVES = {
    "nll": ("minimize", "validation NLL, -log p(x) by IWAE with nll_samples draws (nats)"),
    "elbo": ("minimize", "minus the validation ELBO (nats)"),
    "recon_mse": ("minimize", "validation reconstruction mean squared error"),
    "kl": ("minimize", "validation KL(q || p), the rate (nats)"),
    "params": ("minimize", "number of model parameters"),
    "seconds": ("minimize", "training time (s)"),
    "fid": ("minimize", "FID of generated against validation images on the dataset's domain "
                        "features (autovae.quality)"),
}
# objectives that need a model with a bound, or with an encoder
_NEEDS_BOUND = {"nll", "elbo", "kl"}
_NEEDS_ENCODER = {"recon_mse"}
_RENAMED = {"bound": "elbo"}  # objective names of studies made by earlier versions


def _cmaes(seed: int | None, multi: bool):
    return optuna.samplers.CmaEsSampler(
        seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed),
        warn_independent_sampling=False)


# name -> factory(seed, multi_objective); the CLI offers exactly these names
SAMPLERS = {
    "tpe": lambda seed, multi: optuna.samplers.TPESampler(seed=seed),
    "cmaes": _cmaes,
    "random": lambda seed, multi: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed, multi: optuna.samplers.GPSampler(seed=seed),
    "nsga2": lambda seed, multi: optuna.samplers.NSGAIISampler(
        seed=seed, population_size=10 if multi else 50),
}
# name -> factory(epochs)
PRUNERS = {
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    "halving": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1,
                                                               max_resource=epochs),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}
@dataclass
class StudySpec:
    """Everything that defines a study; stored in the study so every worker agrees."""

    space: SearchSpace
    base: Config
    objectives: list[str]
    trials: int
    sampler: str = "tpe"
    pruner: str = "median"
    validation_nll_samples: int = 50

    def __post_init__(self):
        self.objectives = [_RENAMED.get(o, o) for o in self.objectives]
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or unknown:
            raise ValueError(f"unknown objective(s) {unknown or '(none)'}; choose from "
                             f"{', '.join(OBJECTIVES)}")
        twice = sorted({o for o in self.objectives if self.objectives.count(o) > 1})
        if twice:
            raise ValueError(f"objective(s) {', '.join(twice)} given twice; a study optimises "
                             "each objective once: give each --objective once")
        if self.trials < 1:
            raise ValueError(f"a study needs at least one trial, got trials={self.trials}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        if self.sampler == "cmaes" and len(self.objectives) > 1:
            raise ValueError("CMA-ES is single-objective; use tpe or nsga2 for several objectives")
        self.space.check(self.base)
        model = model_class(self.base.model)
        for needs, has, what in ((_NEEDS_BOUND, model.has_bound, "a bound"),
                                 (_NEEDS_ENCODER, model.has_encoder, "an encoder")):
            if set(self.objectives) & needs and not has:
                raise ValueError(f"objective(s) {sorted(set(self.objectives) & needs)} need "
                                 f"{what}, which model {model.name!r} has not; choose from "
                                 f"{', '.join(sorted(set(OBJECTIVES) - needs))}")
        if not self.space.comparable_likelihoods and set(self.objectives) & {"nll", "elbo"}:
            raise ValueError("the space searches several likelihoods, whose NLLs and bounds are "
                             "not comparable (a pmf vs densities); fix one likelihood or use the "
                             "recon_mse objective")

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    def to_json(self) -> str:
        return json.dumps({"space": self.space.to_dict(), "base": self.base.to_dict(),
                           "objectives": self.objectives, "trials": self.trials,
                           "sampler": self.sampler, "pruner": self.pruner,
                           "validation_nll_samples": self.validation_nll_samples},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudySpec:
        d = json.loads(text)
        return cls(SearchSpace.from_dict(d["space"]), Config(**d["base"]), d["objectives"],
                   d["trials"], d["sampler"], d["pruner"], d["validation_nll_samples"])


def create_study(storage, name: str, spec: StudySpec) -> optuna.Study:
    """Create the study (or load it, if it exists with the same spec); refuses a mismatch."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        saved = existing.user_attrs.get("autovae_spec")
        if saved is None:
            raise ValueError(f"study {name!r} exists but was not made by autovae; pick another "
                             "--study name")
        old = json.loads(StudySpec.from_json(saved).to_json())  # names of earlier versions
        new = json.loads(spec.to_json())
        diffs = [k for k in ("space", "objectives", "sampler", "pruner", "base",
                             "validation_nll_samples") if old[k] != new[k]]
        if diffs:
            raise ValueError(f"study {name!r} exists with a different {', '.join(diffs)} "
                             f"(its objectives: {old['objectives']}); resume it with the same "
                             "settings or choose another --study name")
        if old["trials"] != new["trials"]:  # a larger (or smaller) budget for the same study:
            existing.set_user_attr("autovae_spec", spec.to_json())  # the slots follow it
        return existing
    study = optuna.create_study(study_name=name, storage=storage, directions=spec.directions)
    study.set_user_attr("autovae_spec", spec.to_json())
    return study


# -- the objective ------------------------------------------------------------------------------
def _evaluate_trial(model, data: DataSplits, spec: StudySpec, seconds: float) -> dict[str, float]:
    import torch

    from ..evaluation import evaluate, sample_quality_of

    torch.manual_seed(0)
    metrics = evaluate(model, data.val, nll_samples=spec.validation_nll_samples
                       if model.has_bound else None)
    scores = {"params": float(sum(p.numel() for p in model.parameters())), "seconds": seconds}
    if model.has_bound:
        scores.update(nll=metrics["nll"], elbo=-metrics["elbo"], kl=metrics["kl"])
    if model.has_encoder:
        scores["recon_mse"] = metrics["recon_mse"]
    if "fid" in spec.objectives:
        from ..quality import domain_classifier

        scores["fid"] = sample_quality_of(model, data.val, domain_classifier(data.name))["fid"]
    return scores


class _TakenOver(Exception):
    """Another worker failed this trial as stale (its heartbeats could not reach the database)
    and queued its retry; this worker stops it."""


def _set_user_attrs(trial: optuna.Trial, attrs: dict) -> None:
    """``trial.set_user_attr`` for each item; in one transaction on a SQL storage."""
    backend = rdb.backend(trial.study)
    if isinstance(backend, RDBStorage):
        slots.set_user_attrs(backend, rdb.trial_id(trial), attrs)
    else:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


class Objective:
    """Train one trial with the same code as ``autovae train`` and score it."""

    def __init__(self, spec: StudySpec, folder: Path, data: DataSplits | None):
        self.spec, self.folder, self.data = spec, folder, data
        self.current: int | None = None  # the number of the trial being run
        self.current_id: int | None = None  # ... and its id in the storage
        self.given_up: set[int] = set()  # trials cut short by the database or another worker
        self.cut: BaseException | None = None  # the database error that cut the last one short

    def __call__(self, trial: optuna.Trial):
        self.current, self.current_id = trial.number, rdb.trial_id(trial)
        try:
            return self._run(trial)
        except optuna.exceptions.UpdateFinishedTrialError as err:
            self.given_up.add(trial.number)
            raise _TakenOver(str(err)) from None
        except Exception as err:  # a database error: the trial says why it failed, if it can
            cause = database_error(err)
            if cause is not None:
                self.given_up.add(trial.number)
                self.cut = err
                try:
                    trial.set_user_attr("failure", f"database error: {cause}")
                except Exception:  # the database is still down
                    pass
            raise

    def _run(self, trial: optuna.Trial):
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        origin = frozen.system_attrs.get("failed_trial", trial.number)  # a retry keeps its seed
        config = self.spec.space.suggest(trial, self.spec.base)
        config = config.replace(seed=self.spec.base.seed + origin)
        _set_user_attrs(trial, {"latent": config.latent,
                                "worker": f"{socket.gethostname()}:{os.getpid()}"})
        run_folder = StudyFolder(self.folder).trial(trial.number)
        history = frozen.system_attrs.get("retry_history", [])
        resume = self._adopt_failed_run(trial, history, run_folder)
        single = len(self.spec.objectives) == 1

        keys = model_class(config.model).validation_keys  # higher is better, first is reported

        def report(row, model):
            if not (single and keys and keys[0] in row):
                return
            try:
                trial.report(-row[keys[0]], step=row["epoch"] - 1)
                prune = trial.should_prune()
            except optuna.exceptions.UpdateFinishedTrialError:
                raise
            except Exception as err:  # a database outage: train on, unpruned this epoch
                if database_error(err) is None:
                    raise
                return
            if prune:
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

        started = time.perf_counter()
        try:
            scores = self._train(config, run_folder, resume, report)
        except NonFiniteLossError as err:
            trial.set_user_attr("failure", str(err))
            return float("nan") if single else tuple(float("nan") for _ in self.spec.objectives)
        scores.setdefault("seconds", time.perf_counter() - started)
        _set_user_attrs(trial, scores)
        values = tuple(scores[o] for o in self.spec.objectives)
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("failure", f"non-finite score {values}")
        return values[0] if single else values

    def _train(self, config: Config, run_folder: Path, resume: bool, report) -> dict:
        """Train (or continue) the trial's run, calling ``report(row, model)`` after every
        epoch, and return its scores by objective name."""
        from ..training import train

        started = time.perf_counter()
        result = train(config, run_folder, resume=resume, data=self.data, progress=False,
                       on_epoch=report)
        return _evaluate_trial(result.model, self.data, self.spec, time.perf_counter() - started)

    def _adopt_failed_run(self, trial: optuna.Trial, history: list[int],
                          run_folder: Path) -> bool:
        """A retried trial continues the dead worker's run from its last checkpoint (the latest
        of the failed runs it retries that has one)."""
        if run_folder.exists():
            return Run(run_folder).has_checkpoint()
        for number in reversed(history):
            old = StudyFolder(self.folder).trial(number)
            if number != trial.number and Run(old).has_checkpoint():
                shutil.copytree(old, run_folder)
                trial.set_user_attr("resumed_from_trial", int(number))
                return True
        return False


# -- workers ------------------------------------------------------------------------------------
def load_spec(study: optuna.Study) -> StudySpec:
    saved = study.user_attrs.get("autovae_spec")
    if saved is None:
        raise ValueError(f"study {study.study_name!r} was not made by autovae")
    return StudySpec.from_json(saved)


def run_worker(storage_url: str | None, name: str, folder: Path, worker: int = 0,
               seed: int | None = None, data: DataSplits | None = None,
               pool: int | None = None, objective: type[Objective] = Objective,
               device: str | None = None, report: bool = False, wait: float = 0.0) -> int:
    """Run trials of an existing study until it holds its budget of finished trials.

    A trial is started only in a free slot of the budget (:func:`slots.claim`: counted and
    started in one transaction), so however many workers race, the study ends with exactly its
    budget of finished trials. Every heartbeat period a background thread of each worker fails
    (with the reason) and retries the trials whose worker stopped beating for three periods, so
    a dead worker's trial is swept even while every live worker is training; before it returns,
    a worker waits for the other workers' running trials, so none stays RUNNING. A database that
    stops answering is retried with backoff for ``AUTOVAE_DB_RETRY_SECONDS`` (default 300); the
    trial it interrupted is failed with its reason and retried, and a trial that another worker
    failed meanwhile is left to its retry. ``wait`` seconds: how long to wait for a database
    that does not answer yet or a study not created yet (workers started beside them).

    A journal storage has no transactions and no heartbeats: there one worker at a time holds
    the study (a lock beside the journal file; another is refused), and the trials it finds
    running are a dead worker's, failed and retried. ``device`` (cpu, cuda, cuda:N, auto)
    replaces the study's for this worker's trials. ``report``: a line per trial it finishes
    (:class:`~autovae.search.progress.SearchReporter`).
    """
    check("wait", wait, "nonnegative")
    where = redact(storage_url or str(StudyFolder(folder).db_path))
    storage, study = _open_study(storage_url, name, folder, pool, where, wait)
    lock = journal_lock(storage_url) if not isinstance(storage, RDBStorage) else None
    try:
        spec = load_spec(study)
        if device is not None:
            spec.base = spec.base.replace(device=device)
        data = data if data is not None or objective is not Objective else _prepare(spec)
        return _work(study, spec, objective(spec, folder, data), where, worker, seed, report)
    finally:
        if lock is not None:
            lock.close()
        if isinstance(storage, RDBStorage):
            storage.engine.dispose()  # a finished worker holds no connection


def _open_study(storage_url: str | None, name: str, folder: Path, pool: int | None, where: str,
                wait: float):
    """The storage and the study, waiting up to ``wait`` seconds for a database that does not
    answer yet (refused, unknown host) or a study that does not exist yet."""
    deadline, said = time.monotonic() + wait, False
    while True:
        storage = None
        try:
            storage = open_storage(storage_url, folder, pool=pool)
            return storage, optuna.load_study(study_name=name, storage=storage)
        except BaseException as err:
            if isinstance(storage, RDBStorage):
                storage.engine.dispose()  # (whatever failed: no pooled connection is left open)
            if not isinstance(err, KeyError | Unreachable):
                raise
            if time.monotonic() >= deadline:
                if isinstance(err, Unreachable):
                    raise
                raise ValueError(f"no study {name!r} in {where}; create it with 'autovae "
                                 "search' first" + (f" (waited {wait:g} s)" if wait else "")
                                 ) from None
            if not said:
                print(f"autovae: waiting up to {wait:g} s for the study {name!r} in {where}",
                      file=sys.stderr)
                said = True
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def _prepare(spec: StudySpec) -> DataSplits:
    from ..run import prepare

    return prepare(spec.base)


class _Sweeper(threading.Thread):
    """Every heartbeat period, fails (with the reason) and retries the study's stale trials, in
    the background: a dead or frozen worker's trial is swept even while every live worker is
    inside a trial. It never queues for the study lock (another worker holding it may be frozen,
    and will sweep in its turn); after a database error seen by this process, the other workers'
    beats get a grace period to come back before their trials can look stale."""

    def __init__(self, storage: RDBStorage, study_id: int, ours: Callable[[], int | None]):
        super().__init__(name="autovae-sweeper", daemon=True)
        self.storage, self.study_id, self.stop = storage, study_id, threading.Event()
        self.ours = ours  # the id of the trial this worker runs (alive: not stale, if late)
        self.period = heartbeat_seconds()
        self.grace = 3 * self.period

    def run(self) -> None:
        while True:
            if time.monotonic() - Outage.last_error > self.grace:
                self.sweep()
            if self.stop.wait(self.period):
                return

    def sweep(self) -> None:
        try:
            swept = slots.sweep_stale(self.storage, self.study_id, self.grace, wait=False,
                                      spare=self.ours())
        except Exception as err:
            if database_error(err) is None:
                print(f"autovae: the sweep of stale trials failed: {type(err).__name__}: {err}",
                      file=sys.stderr)
            elif not lock_timed_out(err):
                Outage.last_error = time.monotonic()
            return
        for number, retry in swept:
            print(f"autovae: trial {number}'s worker stopped sending heartbeats; failed it and "
                  + ("did not retry it" if retry is None else f"retried it as trial {retry}"),
                  file=sys.stderr)


class _QuietRecovery(logging.Filter):
    """Drops Optuna's warnings (with its traceback) about the trials this worker gave up
    because of the database or another worker's sweep; the worker says one line instead."""

    def __init__(self, numbers: set[int]):
        super().__init__()
        self.numbers = numbers

    def filter(self, record: logging.LogRecord) -> bool:
        match = re.match(r"Trial (\d+) failed", str(record.msg))
        return not (match and int(match.group(1)) in self.numbers)


def _work(study: optuna.Study, spec: StudySpec, objective: Objective, where: str, worker: int,
          seed: int | None, report: bool = False) -> int:
    seed = spec.base.seed * 1000 + worker if seed is None else seed
    study.sampler = SAMPLERS[spec.sampler](seed, len(spec.objectives) > 1)
    study.pruner = PRUNERS[spec.pruner](spec.base.epochs)
    storage = rdb.backend(study)
    on_rdb = isinstance(storage, RDBStorage)
    pause = heartbeat_seconds() / 2
    # Optuna starts a trial in study.ask(), by popping a queued trial or creating one; here
    # it starts the trial claimed in the budget's next free slot, or none (slots.NoSlot).
    if on_rdb:
        rdb.start_trials_with(study, lambda: slots.claim(storage, rdb.study_id(study)))
    else:
        rdb.start_trials_with(study, lambda: _claim_alone(study, spec.trials))
        _fail_orphans(study, spec.trials)  # we hold the lock: running trials are a dead worker's
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reporter = SearchReporter(spec, _counts) if report else None
    if reporter:
        reporter.start(study, worker)
    outage = Outage(where)  # (reads $AUTOVAE_DB_RETRY_SECONDS: refused before a thread starts)
    interrupted: tuple[int, str] | None = None  # a trial of ours cut short, and why
    quiet = _QuietRecovery(objective.given_up)
    rdb.trial_logger().addFilter(quiet)
    sweeper = _Sweeper(storage, rdb.study_id(study), lambda: objective.current_id) \
        if on_rdb else None
    if sweeper is not None:
        sweeper.start()
    try:
        while True:
            try:
                if interrupted is not None:
                    _fail_ours(study, *interrupted, spec.trials)
                    interrupted = None
                counts = _counts(study)
                outage.over()
                if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] >= spec.trials:
                    if on_rdb and counts[TrialState.RUNNING]:  # others' trials, still running
                        time.sleep(pause)
                        continue
                    _drop_unneeded_retries(study)
                    return 0
                if counts[TrialState.FAIL] > 2 * spec.trials:
                    print(f"autovae: {counts[TrialState.FAIL]} trials failed, more than twice "
                          "the budget: a broken space or settings, not bad luck; see the "
                          "trials' 'failure' attributes", file=sys.stderr)
                    return 0
                objective.current = objective.current_id = None
                study.optimize(objective, n_trials=1, catch=(), gc_after_trial=True,
                               callbacks=[reporter] if reporter else None)
            except slots.NoSlot:  # the rest of the budget is running on other workers
                time.sleep(pause)
            except Exception as err:
                number, objective.current = objective.current, None
                objective.current_id = None
                error, objective.cut = objective.cut or err, None  # (Optuna's own came after)
                # this worker was frozen (SIGSTOP, swapped out) inside a transaction, and the
                # database ended its session after one heartbeat period: the others went on
                paused = interrupted_in_transaction(error)
                if number is not None and _taken_over(study, number):
                    print(f"autovae: trial {number} was failed by another worker while this one "
                          + ("was paused inside a database transaction" if paused else
                             "could not reach the database")
                          + "; its retry continues it from its last checkpoint", file=sys.stderr)
                    continue
                cause = database_error(error)
                if cause is None:
                    raise
                if lock_timed_out(error) and number is None:
                    continue  # another worker held a lock too long (and is cut off): again
                if paused:
                    print(f"autovae: this worker was paused inside a database transaction for "
                          f"more than {2 * pause:g} s (stopped, swapped out?) and the database "
                          "ended its session" + (f"; trial {number} is failed and retried"
                                                 if number is not None else ""),
                          file=sys.stderr)
                    if number is not None:
                        interrupted = (number, "its worker was paused inside a database "
                                               "transaction and the database ended its session")
                    continue
                if number is not None:
                    interrupted = (number, f"database outage: {cause}")
                Outage.last_error = time.monotonic()
                outage.wait(cause)
    finally:
        rdb.trial_logger().removeFilter(quiet)
        if sweeper is not None:
            sweeper.stop.set()
            sweeper.join()


def _taken_over(study: optuna.Study, number: int) -> bool:
    """Whether our trial ``number`` ended because another worker failed it (its heartbeats
    stopped reaching the database), not by its own failure: then reporting to it, or telling
    its result, raised (an UpdateFinishedTrialError, or "Cannot tell a FAIL trial")."""
    try:
        storage = rdb.cached(study)
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
            rdb.study_id(study), number))
    except Exception:
        return False
    return trial.state == TrialState.FAIL and "heartbeat" in str(trial.user_attrs.get("failure"))


def _claim_alone(study: optuna.Study, budget: int) -> int:
    """A free slot's trial for the only worker of a journal storage (no one races it)."""
    counts = _counts(study)
    if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING] \
            >= budget:
        raise slots.NoSlot
    storage = rdb.cached(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if storage.set_trial_state_values(rdb.trial_id(t), TrialState.RUNNING):
            return rdb.trial_id(t)
    return storage.create_new_trial(rdb.study_id(study))


def _fail_orphans(study: optuna.Study, budget: int) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _fail_ours(study, t.number, "its worker stopped (found running by the next worker of "
                                    "this journal storage, which has no heartbeats)", budget)
        print(f"autovae: trial {t.number} was left running by a worker that died; failed and "
              "retried", file=sys.stderr)


def _fail_ours(study: optuna.Study, number: int, reason: str, budget: int) -> None:
    """Fail trial ``number`` (ours, cut short), recording ``reason``, and queue its retry
    (which continues its run from the last checkpoint) while the budget needs it."""
    storage = rdb.cached(study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(rdb.study_id(study), number)
    if isinstance(rdb.backend(study), RDBStorage):
        storage = rdb.backend(study)
        slots.fail_trials(storage, rdb.study_id(study), lambda session: [(trial_id, reason)],
                          failed_too=True)
        return
    frozen = storage.get_trial(trial_id)  # a journal: we are its only worker
    if frozen.state != TrialState.RUNNING and (frozen.state != TrialState.FAIL or any(
            t.system_attrs.get("retry_history", [None])[-1] == number
            for t in study.get_trials(deepcopy=False))):
        return
    reason = frozen.user_attrs.get("failure", reason)
    counts = _counts(study)
    history = [*frozen.system_attrs.get("retry_history", []), number]
    needed = sum(counts[s] for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                     TrialState.RUNNING, TrialState.WAITING)) - 1 < budget
    if needed and len(history) <= slots.MAX_RETRIES:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs={k: v for k, v in frozen.user_attrs.items()
                        if k not in ("failure", "worker")},
            system_attrs={**frozen.system_attrs,
                          "failed_trial": frozen.system_attrs.get("failed_trial", number),
                          "retry_history": history}))
        reason += f"; retried as trial {len(study.get_trials(deepcopy=False)) - 1}"
    if frozen.state == TrialState.RUNNING:
        storage.set_trial_user_attr(trial_id, "failure", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _counts(study: optuna.Study) -> dict:
    if isinstance(rdb.backend(study), RDBStorage):
        return slots.state_counts(rdb.backend(study), rdb.study_id(study))
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def _drop_unneeded_retries(study: optuna.Study) -> None:
    """Fail the queued trials that the met budget no longer needs, saying why."""
    reason = "not run: the budget was met without it"
    storage = rdb.cached(study)
    if isinstance(rdb.backend(study), RDBStorage):
        import sqlalchemy

        def waiting(session):
            trial = rdb.models.TrialModel
            ids = session.execute(sqlalchemy.select(trial.trial_id).where(
                trial.study_id == rdb.study_id(study), trial.state == TrialState.WAITING)
            ).scalars()
            return [(i, reason) for i in ids]

        slots.fail_trials(rdb.backend(study), rdb.study_id(study), waiting, retry=False)
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        storage.set_trial_user_attr(rdb.trial_id(t), "failure", reason)
        storage.set_trial_state_values(rdb.trial_id(t), TrialState.FAIL)


def run_search(storage_url: str | None, name: str, folder: Path, spec: StudySpec,
               workers: int = 1, pool: int | None = None, report: bool = False) -> optuna.Study:
    """Create the study, then run ``workers`` worker processes (1: in this process), each
    printing a line per trial it finishes when ``report``."""
    if workers > 1 and storage_url and storage_url.startswith("journal:"):
        raise ValueError(f"--workers {workers} on a journal storage: a journal file has no "
                         "heartbeats, so one worker at a time uses it; for several workers use "
                         "the SQLite default (one machine) or PostgreSQL (docs/distributed.md)")
    storage = open_storage(storage_url, folder, pool=pool)
    study = create_study(storage, name, spec)
    if workers <= 1:
        run_worker(storage_url, name, folder, pool=pool, report=report)
        return study
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()  # hold no connection while the workers run
    cmd = [sys.executable, "-m", "autovae", "worker", "--study", name, "--dir", str(folder)]
    if storage_url:
        cmd += ["--storage", storage_url]
    if pool is not None:
        cmd += ["--db-pool", str(pool)]
    if not report:
        cmd += ["--quiet"]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)], env=os.environ.copy())
             for i in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(done) < spec.trials:
            raise StudyFault(f"worker exit codes {codes} with {len(done)} of {spec.trials} "
                             "trials finished; re-run the same command to resume")
        print(f"autovae: worker exit codes {codes}, but the study holds its {spec.trials} "
              "trials", file=sys.stderr)
    return study
