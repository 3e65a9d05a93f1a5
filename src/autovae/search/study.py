"""Studies, storages, the objective and workers.

A study lives in a folder (``--dir``): its embedded SQLite store ``study.db`` (unless another
``--storage`` is given), one run folder per trial under ``trials/``, and the analysis. The study
is created once, before any worker starts; it records its search space, objectives, base config
and trial budget, so a worker on another machine needs only the storage URL and study name, and
re-running the same command resumes the study.

Storages: the embedded SQLite file (default), ``journal:PATH`` (a journal file: one worker at a
time, no server), or a PostgreSQL URL for many machines
(``postgresql+psycopg2://user@host:5432/db``, the password from ``PGPASSWORD``). With SQL
storages every worker sends a heartbeat; a trial whose worker died is failed with the reason and
retried (resuming from its last epoch checkpoint when the trial folders are shared). The budget
is kept exactly by :mod:`autovae.search.slots`; each worker holds at most ``AUTOVAE_DB_POOL``
(default 2) database connections.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from .._checks import StudyFault, check_folder
from ..config import Config
from ..data import DataSplits
from ..models import NonFiniteLossError, model_class
from ..run import Run, StudyFolder
from . import slots
from .progress import SearchReporter
from .space import SearchSpace

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
# Heartbeat period of a running trial; a trial silent for 3 periods is failed and retried.
HEARTBEAT_SECONDS = float(os.environ.get("AUTOVAE_HEARTBEAT_SECONDS", "10"))
# Database connections a worker process keeps at most (PostgreSQL, MySQL): one for the trial
# loop, one for the heartbeat thread. 0: none kept, one opened per operation (behind PgBouncer).
DB_POOL = int(os.environ.get("AUTOVAE_DB_POOL", "2"))


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


# -- storage ------------------------------------------------------------------------------------
def open_storage(url: str | None, folder: Path, heartbeat: bool = True, create: bool = True,
                 pool: int | None = None):
    """An Optuna storage for ``url`` (None: SQLite in ``folder``), with a clear error if bad.

    ``create=False`` (read-only commands) refuses a store that does not exist yet instead of
    making one, and creates no folder. A SQLite file that is empty or cut short is refused.
    A server database gets a bounded connection pool of ``pool`` connections (default
    :data:`DB_POOL`; 0: no pool, a connection per operation), and each connection names its
    process in ``pg_stat_activity.application_name`` (``autovae:HOST:PID``).
    """
    folder = Path(folder)
    if url is None:
        db = StudyFolder(folder).db_path
        if not create and not db.is_file():
            raise ValueError(f"no study in {folder} (no {db.name}); create one with "
                             f"'autovae search --dir {folder}'")
        check_folder(folder, "study folder")
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{db.resolve()}"
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):]).expanduser()
        if path.is_dir():
            raise ValueError(f"journal storage {path} is a folder; name a file in it, e.g. "
                             f"journal:{path / 'study.log'}")
        if not create and not path.is_file():
            raise ValueError(f"no journal storage {path}; create the study with 'autovae search'")
        check_folder(path.parent, "folder of the journal storage")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = _postgres_driver(url)
    if not url.startswith(("sqlite:///", "postgresql+", "mysql")):
        raise ValueError(f"bad storage URL {_redact(url)!r}: use sqlite:///path.db, journal:PATH "
                         "or postgresql+psycopg2://user@host:5432/database")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        _check_sqlite_file(Path(url[len("sqlite:///"):]), create)
    pool = DB_POOL if pool is None else pool
    if pool < 0:
        raise ValueError(f"--db-pool {pool}: a pool holds 0 or more connections (default 2)")
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 120}
    else:  # a server: a bounded pool, so that workers x pool fits max_connections
        if pool == 0:
            import sqlalchemy.pool

            engine["poolclass"] = sqlalchemy.pool.NullPool
        else:
            engine.update(pool_size=pool, max_overflow=0, pool_timeout=60)
    if url.startswith("postgresql"):
        engine["connect_args"] = {
            "connect_timeout": 10,
            "application_name": f"autovae:{socket.gethostname()[:40]}:{os.getpid()}"}
        if url.startswith(("postgresql+psycopg2:", "postgresql+psycopg:")):
            # a server or link that dies silently is noticed in about a minute, not hours
            engine["connect_args"].update(keepalives=1, keepalives_idle=30,
                                          keepalives_interval=10, keepalives_count=3)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict[str, Any] = {}
            if heartbeat:
                kwargs = dict(heartbeat_interval=HEARTBEAT_SECONDS,
                              grace_period=3 * HEARTBEAT_SECONDS)
            storage = _Storage(url, engine_kwargs=engine, **kwargs)
            if heartbeat:
                _beat_through_outages(storage)
            return storage
    except ImportError as err:
        raise ValueError(f"storage {url!r} needs a database driver: {err}") from None
    except Exception as err:  # sqlalchemy's OperationalError, ArgumentError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot open storage {_redact(url)}: {first}") from None


class _Storage(RDBStorage):
    """Optuna's RDB storage, whose stale trials are failed by :func:`slots.sweep_stale` (one
    transaction: the reason, the state and the retry together) instead of by Optuna's own
    sweep at the start of each trial (which cannot record a reason on a failed trial)."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []


def _beat_through_outages(storage: RDBStorage) -> None:
    """A heartbeat that meets a database outage is skipped, not fatal to the heartbeat thread
    (the next beat retries; the trial is failed as stale only after three missed periods)."""
    beat = storage.record_heartbeat

    def record_heartbeat(trial_id: int) -> None:
        try:
            beat(trial_id)
        except Exception as err:
            if _database_error(err) is None:
                raise
            _Outage.last_error = time.monotonic()

    storage.record_heartbeat = record_heartbeat


def _postgres_driver(url: str) -> str:
    """``postgresql://`` names SQLAlchemy's default driver (psycopg 3 in SQLAlchemy 2.1): use it
    when installed, else psycopg2 when that is, else say which to install."""
    rest = url.split("://", 1)[1]
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        try:
            __import__(module)
        except ImportError:
            continue
        return f"{dialect}://{rest}"
    raise ValueError(f"storage {_redact(url)} needs a PostgreSQL driver: pip install "
                     "psycopg2-binary and use postgresql+psycopg2://...")


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path, create: bool) -> None:
    """Refuse a SQLite store that is a folder, in a missing folder, empty or cut short: an
    empty file must not silently become a new store, nor a truncated one lose trials."""
    if path.is_dir():
        raise ValueError(f"SQLite storage {path} is a folder; name a file, e.g. "
                         f"sqlite:///{path / 'study.db'}")
    if not path.exists():
        if not create:
            raise ValueError(f"no SQLite storage {path}")
        if not path.parent.is_dir():
            raise ValueError(f"SQLite storage {path}: its folder {path.parent} does not exist; "
                             "create it first or name another file")
        return
    with open(path, "rb") as f:
        header = f.read(100)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"SQLite storage {path} is empty (0 bytes), not a study store; restore "
                         "it from a backup, or move it away to start a new study")
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        raise ValueError(f"SQLite storage {path} is not a SQLite database (damaged header); "
                         "restore it from a backup")
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]  # the in-header size is current
    if size % page or (valid and pages and size < pages * page):
        raise ValueError(f"SQLite storage {path} is cut short ({size} bytes, expected "
                         f"{pages * page if valid else 'a multiple of ' + str(page)}); restore it "
                         "from a backup")


def _redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


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
    backend = _backend(trial.study)
    if isinstance(backend, RDBStorage):
        slots.set_user_attrs(backend, trial._trial_id, attrs)
    else:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


class Objective:
    """Train one trial with the same code as ``autovae train`` and score it."""

    def __init__(self, spec: StudySpec, folder: Path, data: DataSplits | None):
        self.spec, self.folder, self.data = spec, folder, data
        self.current: int | None = None  # the number of the trial being run

    def __call__(self, trial: optuna.Trial):
        self.current = trial.number
        try:
            return self._run(trial)
        except optuna.exceptions.UpdateFinishedTrialError as err:
            raise _TakenOver(str(err)) from None
        except Exception as err:  # a database error: the trial says why it failed, if it can
            cause = _database_error(err)
            if cause is not None:
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
                if _database_error(err) is None:
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
               device: str | None = None, report: bool = False) -> int:
    """Run trials of an existing study until it holds its budget of finished trials.

    A trial is started only in a free slot of the budget (:func:`slots.claim`: counted and
    started in one transaction), so however many workers race, the study ends with exactly its
    budget of finished trials. Before it returns, a worker waits for the other workers' running
    trials: a dead worker's trial is failed (with the reason) after three missed heartbeats and
    retried, so none stays RUNNING. A database that stops answering is retried with backoff for
    ``AUTOVAE_DB_RETRY_SECONDS`` (default 300); the trial it interrupted is failed with its
    reason and retried, and a trial that another worker failed meanwhile is left to its retry.

    A journal storage has no transactions and no heartbeats: there one worker at a time holds
    the study (a lock beside the journal file; another is refused), and the trials it finds
    running are a dead worker's, failed and retried. ``device`` (cpu, cuda, cuda:N, auto)
    replaces the study's for this worker's trials. ``report``: a line per trial it finishes
    (:class:`~autovae.search.progress.SearchReporter`).
    """
    storage = open_storage(storage_url, folder, pool=pool)
    where = _redact(storage_url or str(StudyFolder(folder).db_path))
    lock = _journal_lock(storage_url) if not isinstance(storage, RDBStorage) else None
    try:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ValueError(f"no study {name!r} in {where}; create it with 'autovae search' "
                             "first") from None
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


def _prepare(spec: StudySpec) -> DataSplits:
    from ..run import prepare

    return prepare(spec.base)


def _work(study: optuna.Study, spec: StudySpec, objective: Objective, where: str, worker: int,
          seed: int | None, report: bool = False) -> int:
    seed = spec.base.seed * 1000 + worker if seed is None else seed
    study.sampler = SAMPLERS[spec.sampler](seed, len(spec.objectives) > 1)
    study.pruner = PRUNERS[spec.pruner](spec.base.epochs)
    storage = _backend(study)
    rdb = isinstance(storage, RDBStorage)
    grace = 3 * HEARTBEAT_SECONDS
    # Optuna starts a trial in study.ask(), by popping a queued trial or creating one; here
    # it starts the trial claimed in the budget's next free slot, or none (slots.NoSlot).
    if rdb:
        study._pop_waiting_trial_id = lambda: slots.claim(storage, study._study_id)
    else:
        study._pop_waiting_trial_id = lambda: _claim_alone(study, spec.trials)
        _fail_orphans(study, spec.trials)  # we hold the lock: running trials are a dead worker's
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reporter = SearchReporter(spec, _counts) if report else None
    if reporter:
        reporter.start(study, worker)
    outage = _Outage(where)
    interrupted: int | None = None  # a trial of ours that a database error cut short
    swept = -math.inf  # when this worker last looked for stale trials
    while True:
        try:
            if interrupted is not None:
                _fail_ours(study, interrupted, f"database outage: {outage.cause}", spec.trials)
                interrupted = None
            if rdb and time.monotonic() - max(_Outage.last_error, swept) > grace / 3:
                # (once a heartbeat period; after an outage seen here, the other workers'
                # beats get a grace period to come back before their trials can look stale)
                if time.monotonic() - _Outage.last_error > grace:
                    slots.sweep_stale(storage, study._study_id, grace)
                    swept = time.monotonic()
            counts = _counts(study)
            outage.over()
            if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] >= spec.trials:
                if rdb and counts[TrialState.RUNNING]:  # a budget made smaller meanwhile
                    time.sleep(HEARTBEAT_SECONDS / 2)
                    continue
                _drop_unneeded_retries(study)
                return 0
            if counts[TrialState.FAIL] > 2 * spec.trials:
                print(f"autovae: {counts[TrialState.FAIL]} trials failed, more than twice the "
                      "budget: a broken space or settings, not bad luck; see the trials' "
                      "'failure' attributes", file=sys.stderr)
                return 0
            objective.current = None
            study.optimize(objective, n_trials=1, catch=(), gc_after_trial=True,
                           callbacks=[reporter] if reporter else None)
        except slots.NoSlot:  # the rest of the budget is running on other workers
            time.sleep(HEARTBEAT_SECONDS / 2)
        except Exception as err:
            number, objective.current = objective.current, None
            if number is not None and _taken_over(study, number):
                print(f"autovae: trial {number} was failed by another worker while this one "
                      "could not reach the database; its retry continues it from its last "
                      "checkpoint", file=sys.stderr)
                continue
            cause = _database_error(err)
            if cause is None:
                raise
            if number is not None:
                interrupted = number
            _Outage.last_error = time.monotonic()
            outage.wait(cause)


def _backend(study: optuna.Study):
    """The study's storage under Optuna's cache of finished trials."""
    return getattr(study._storage, "_backend", study._storage)


def _taken_over(study: optuna.Study, number: int) -> bool:
    """Whether our trial ``number`` ended because another worker failed it (its heartbeats
    stopped reaching the database), not by its own failure: then reporting to it, or telling
    its result, raised (an UpdateFinishedTrialError, or "Cannot tell a FAIL trial")."""
    try:
        trial = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, number))
    except Exception:
        return False
    return trial.state == TrialState.FAIL and "heartbeat" in str(trial.user_attrs.get("failure"))


def _journal_lock(url: str | None):
    """The lock that lets one worker at a time use a journal storage (released by the kernel
    when the worker dies, even by SIGKILL), or a ValueError saying why not and what instead."""
    import fcntl  # (POSIX)

    path = Path(url[len("journal:"):]).expanduser()
    lock = open(path.with_name(path.name + ".worker"), "a+")  # (".lock" is Optuna's)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ValueError(f"journal storage {path} is in use by another worker: a journal file has "
                         "no heartbeats, so a dead worker's trial could not be told from a live "
                         "one and would stay RUNNING; run one worker on it, or several on "
                         "PostgreSQL (docs/distributed.md) or SQLite (one machine)") from None
    return lock


def _claim_alone(study: optuna.Study, budget: int) -> int:
    """A free slot's trial for the only worker of a journal storage (no one races it)."""
    counts = _counts(study)
    if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING] \
            >= budget:
        raise slots.NoSlot
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if study._storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
            return t._trial_id
    return study._storage.create_new_trial(study._study_id)


def _fail_orphans(study: optuna.Study, budget: int) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _fail_ours(study, t.number, "its worker stopped (found running by the next worker of "
                                    "this journal storage, which has no heartbeats)", budget)
        print(f"autovae: trial {t.number} was left running by a worker that died; failed and "
              "retried", file=sys.stderr)


def _fail_ours(study: optuna.Study, number: int, reason: str, budget: int) -> None:
    """Fail trial ``number`` (ours, cut short), recording ``reason``, and queue its retry
    (which continues its run from the last checkpoint) while the budget needs it."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if isinstance(_backend(study), RDBStorage):
        storage = _backend(study)
        slots.fail_trials(storage, study._study_id, lambda session: [(trial_id, reason)],
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
    if isinstance(_backend(study), RDBStorage):
        return slots.state_counts(_backend(study), study._study_id)
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


# How long a worker retries a database that does not answer before it gives up.
DB_RETRY_SECONDS = float(os.environ.get("AUTOVAE_DB_RETRY_SECONDS", "300"))


class _Outage:
    """Backoff for a database that stopped answering: 0.5 s doubling to 10 s, for at most
    ``DB_RETRY_SECONDS``; then one clear line (:class:`StudyFault`)."""

    last_error = -math.inf  # time.monotonic() of this process's last database error

    def __init__(self, where: str):
        self.where, self.since, self.delay, self.cause = where, None, 0.5, ""

    def wait(self, cause: str) -> None:
        now = time.monotonic()
        self.cause = cause
        if self.since is None:
            self.since = now
            print(f"autovae: database {self.where} unavailable ({cause}); retrying for up to "
                  f"{DB_RETRY_SECONDS:.0f} s", file=sys.stderr)
        if now - self.since > DB_RETRY_SECONDS:
            raise StudyFault(f"database {self.where} did not answer for {now - self.since:.0f} s "
                             f"({cause}); the finished trials are kept: re-run the same command "
                             "when it is back")
        time.sleep(min(self.delay, DB_RETRY_SECONDS - (now - self.since) + 0.05))
        self.delay = min(2 * self.delay, 10.0)

    def over(self) -> None:
        if self.since is not None:
            print(f"autovae: database {self.where} is back after "
                  f"{time.monotonic() - self.since:.1f} s", file=sys.stderr)
        self.since, self.delay = None, 0.5


def _database_error(err: BaseException) -> str | None:
    """The first line of the database error in ``err``'s chain (Optuna wraps it, or fails on
    its own way out of a trial with it as the context), or None if there is none."""
    import sqlalchemy.exc

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)):
            text = str(getattr(err, "orig", None) or err).strip()
            return text.splitlines()[0] if text else type(err).__name__
        err = err.__cause__ or err.__context__
    return None


def _drop_unneeded_retries(study: optuna.Study) -> None:
    """Fail the queued trials that the met budget no longer needs, saying why."""
    reason = "not run: the budget was met without it"
    storage = study._storage
    if isinstance(_backend(study), RDBStorage):
        import sqlalchemy
        from optuna.storages._rdb import models

        def waiting(session):
            trial = models.TrialModel
            ids = session.execute(sqlalchemy.select(trial.trial_id).where(
                trial.study_id == study._study_id, trial.state == TrialState.WAITING)).scalars()
            return [(i, reason) for i in ids]

        slots.fail_trials(_backend(study), study._study_id, waiting, retry=False)
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        storage.set_trial_user_attr(t._trial_id, "failure", reason)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


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
