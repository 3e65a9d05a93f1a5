"""The trial budget as slots in the storage, claimed and freed in single transactions.

A study asked for N trials ends with exactly N finished (complete or pruned) trials however
many workers race for the last ones, because a trial is only ever started by :func:`claim`,
which in one transaction, holding the study's row lock (the lock Optuna takes to number new
trials), counts the finished and running trials, and if they fall short of the budget starts
one: the first queued retry, else a new trial. A trial leaves the running state as finished
(it keeps its slot) or failed (it frees it); failing is also one transaction under the same
lock (:func:`fail_trials`), which records the reason and queues the retry only while the
budget still needs it. So ``finished + running <= budget`` holds at every commit, and a failed
trial that is retried counts once.

A claimed trial gets its first heartbeat in the claiming transaction, so a worker killed at
any instant after its claim leaves a trial that :func:`sweep_stale` fails (with the reason) and
retries. These functions work on Optuna's RDB schema through its own models, reached only
through :mod:`autovae.search._optuna_rdb` (which checks the Optuna version).

A worker frozen inside one of these transactions (SIGSTOP) holds its locks until PostgreSQL ends
its session (``idle_in_transaction_session_timeout``, see :mod:`autovae.search.storage`); the
sweep of stale trials does not even wait for it: it skips a study lock or a trial row that
another transaction holds, and tries again at its next period.

Storages without transactions (the journal file) take another road: one worker at a time, see
:func:`autovae.search.study.run_worker`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from . import _optuna_rdb as rdb
from ._optuna_rdb import models
from .storage import database_error, heartbeat_seconds, lock_timed_out

__all__ = ["MAX_RETRIES", "NoSlot", "claim", "fail_trials", "set_user_attrs", "state_counts",
           "sweep_stale"]

# a trial whose runs failed this often (the first run and its retries) is not retried again
MAX_RETRIES = 2
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class NoSlot(Exception):
    """Every slot of the budget is finished or running: there is no trial to start."""


@contextmanager
def _transaction(storage: RDBStorage) -> Iterator[sa.orm.Session]:
    """One transaction. On PostgreSQL it waits for a lock, and may stay idle inside, for one
    heartbeat period at most (:mod:`autovae.search.storage`). A database error that ends a
    transaction open for longer than that is marked with ``paused_seconds``: this process was
    frozen inside it and the server ended its session."""
    session = rdb.session(storage)
    started = time.monotonic()
    try:
        if session.get_bind().dialect.name == "postgresql":
            ms = max(1, round(1000 * heartbeat_seconds()))
            for setting in ("lock_timeout", "idle_in_transaction_session_timeout"):
                # one statement per execute: pg8000 and psycopg 3 prepare what they send
                session.execute(sa.text(f"SET LOCAL {setting} = {ms}"))
        yield session
        session.commit()
    except BaseException as err:
        paused = time.monotonic() - started
        if paused > heartbeat_seconds() and database_error(err) and not lock_timed_out(err):
            err.paused_seconds = paused
        session.rollback()
        raise
    finally:
        session.close()


def _lock_study(session, study_id: int, wait: bool = True) -> bool:
    """Hold the study's row until commit. Every claim and failure takes it, as does Optuna's
    trial creation (SELECT ... FOR UPDATE); SQLite has no row locks, so there a no-op UPDATE
    takes the database's write lock first, before anything is read. ``wait=False``: if another
    transaction holds the row, return False at once (SKIP LOCKED) instead of waiting for it."""
    study = models.StudyModel
    if session.get_bind().dialect.name == "sqlite":
        session.execute(sa.update(study).where(study.study_id == study_id)
                        .values(study_name=study.study_name))
        return True
    return session.execute(sa.select(study.study_id).where(study.study_id == study_id)
                           .with_for_update(skip_locked=not wait)).first() is not None


def _budget(session, study_id: int) -> int:
    attr = models.StudyUserAttributeModel
    text = session.execute(sa.select(attr.value_json).where(
        attr.study_id == study_id, attr.key == "autovae_spec")).scalar_one_or_none()
    if text is None:
        raise ValueError("the study was not made by autovae (no trial budget)")
    return int(json.loads(json.loads(text))["trials"])


def _counts(session, study_id: int) -> dict[TrialState, int]:
    trial = models.TrialModel
    counts = dict.fromkeys(TrialState, 0)
    for state, n in session.execute(sa.select(trial.state, sa.func.count())
                                    .where(trial.study_id == study_id).group_by(trial.state)):
        counts[state] = n
    return counts


def state_counts(storage: RDBStorage, study_id: int) -> dict[TrialState, int]:
    """How many trials are in each state (one small query, not the trials themselves)."""
    with _transaction(storage) as session:
        return _counts(session, study_id)


def claim(storage: RDBStorage, study_id: int) -> int:
    """Start a trial in the budget's next free slot and return its id; :class:`NoSlot` if the
    finished and running trials already fill the budget. One transaction, under the study lock.
    """
    trial = models.TrialModel
    with _transaction(storage) as session:
        _lock_study(session, study_id)
        counts = _counts(session, study_id)
        if sum(counts[s] for s in (*_FINISHED, TrialState.RUNNING)) >= _budget(session,
                                                                                study_id):
            raise NoSlot
        waiting = session.execute(sa.select(trial).where(
            trial.study_id == study_id, trial.state == TrialState.WAITING)
            .order_by(trial.trial_id).limit(1)).scalar_one_or_none()
        if waiting is None:  # a new trial, numbered under the lock as Optuna numbers them
            waiting = rdb.new_trial(storage, study_id, None, session)
        else:
            waiting.state, waiting.datetime_start = TrialState.RUNNING, datetime.now()
        trial_id = waiting.trial_id
        session.add(models.TrialHeartbeatModel(trial_id=trial_id))  # the first beat, now
    return trial_id


def _attr(session, trial_id: int, key: str, value=None, write: bool = False):
    """A trial's user attribute, read, or written (also on a finished trial)."""
    attr = models.TrialUserAttributeModel
    row = session.execute(sa.select(attr).where(attr.trial_id == trial_id, attr.key == key)
                          ).scalar_one_or_none()
    if not write:
        return None if row is None else json.loads(row.value_json)
    if row is None:
        session.add(attr(trial_id=trial_id, key=key, value_json=json.dumps(value)))
    else:
        row.value_json = json.dumps(value)


def fail_trials(storage: RDBStorage, study_id: int,
                pick: Callable[[sa.orm.Session], list[tuple[int, str]]],
                retry: bool = True, failed_too: bool = False,
                wait: bool = True) -> list[tuple[int, int | None]]:
    """Fail the trials that ``pick(session)`` names, as ``(trial_id, reason)``, each with its
    reason in the user attribute ``failure``, and queue a retry of each while the budget needs
    it (at most :data:`MAX_RETRIES` retries of one trial). One transaction, under the study lock:
    a trial that another worker finished or failed first is left alone, except that with
    ``failed_too`` a trial that Optuna failed (on its way out of a trial a database error cut)
    gets its retry, keeping the reason it has. ``wait=False``: nothing is done if another
    transaction holds the study lock. Returns ``(number of the failed trial, number of its retry
    or None)``."""
    trial_model = models.TrialModel
    done = []
    with _transaction(storage) as session:
        if not _lock_study(session, study_id, wait):
            return done
        budget = _budget(session, study_id)
        for trial_id, reason in pick(session):
            row = session.get(trial_model, trial_id, populate_existing=True)
            if row is None:
                continue
            if row.state.is_finished():
                said = _attr(session, trial_id, "failure")
                if not (failed_too and row.state == TrialState.FAIL) or (
                        said and ("retried as trial" in said or "not retried" in said)):
                    continue  # finished, or failed and dealt with by another worker
                reason = said or reason
            frozen = rdb.frozen_trial(storage, row)
            counts = _counts(session, study_id)
            needed = (counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
                      + counts[TrialState.RUNNING] + counts[TrialState.WAITING]
                      - (not row.state.is_finished())) < budget
            history = [*frozen.system_attrs.get("retry_history", []), frozen.number]
            retry_number = None
            if retry and needed and len(history) <= MAX_RETRIES:
                template = optuna.trial.create_trial(
                    state=TrialState.WAITING, params=frozen.params,
                    distributions=frozen.distributions,
                    user_attrs={k: v for k, v in frozen.user_attrs.items()
                                if k not in ("failure", "worker")},
                    system_attrs={**frozen.system_attrs,
                                  "failed_trial": frozen.system_attrs.get("failed_trial",
                                                                          frozen.number),
                                  "retry_history": history})
                retry_number = rdb.new_trial(storage, study_id, template, session).number
                reason += f"; retried as trial {retry_number}"
            elif retry and not needed:
                reason += "; not retried: the budget is met without it"
            elif retry:
                reason += f"; not retried: its runs failed {len(history)} times"
            _attr(session, trial_id, "failure", reason, write=True)
            if not row.state.is_finished():
                row.state, row.datetime_complete = TrialState.FAIL, datetime.now()
            session.flush()
            done.append((frozen.number, retry_number))
    return done


def set_user_attrs(storage: RDBStorage, trial_id: int, attrs: dict) -> None:
    """Several user attributes of a running trial in one transaction (Optuna writes one per
    transaction); UpdateFinishedTrialError if the trial is finished."""
    with _transaction(storage) as session:
        row = session.get(models.TrialModel, trial_id, with_for_update=True)
        storage.check_trial_is_updatable(trial_id, row.state)
        for key, value in attrs.items():
            _attr(session, trial_id, key, value, write=True)


def sweep_stale(storage: RDBStorage, study_id: int, grace: float, wait: bool = True,
                spare: int | None = None) -> list[tuple[int, int | None]]:
    """Fail (with the reason) and retry the running trials whose last heartbeat is older than
    ``grace`` seconds by the database's clock; see :func:`fail_trials`. A cheap read first: the
    study lock is taken only when some trial looks stale. The rows of trials that another
    transaction holds are skipped (SKIP LOCKED), and with ``wait=False`` so is a held study lock:
    the next sweep tries again. ``spare``: the id of a trial not to fail (the sweeping worker's
    own, alive, whose heartbeat may be late on a loaded machine)."""
    trial, beat = models.TrialModel, models.TrialHeartbeatModel

    def stale(session, lock: bool = True) -> list[tuple[int, str]]:
        now = session.execute(sa.select(sa.func.now())).scalar().replace(tzinfo=None)
        query = (sa.select(trial.trial_id, beat.heartbeat)
                 .join(beat, beat.trial_id == trial.trial_id)
                 .where(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                        trial.trial_id != (-1 if spare is None else spare)))
        if lock:
            query = query.with_for_update(of=trial, skip_locked=True)
        picked = []
        for trial_id, last in session.execute(query).all():
            age = (now - last.replace(tzinfo=None)).total_seconds()
            if age > grace:
                picked.append((trial_id, f"its worker stopped sending heartbeats: the last came "
                                         f"{age:.0f} s ago, more than {grace:g} s (the worker "
                                         "died, hung or lost the database)"))
        return picked

    with _transaction(storage) as session:
        if not stale(session, lock=False):
            return []
    return fail_trials(storage, study_id, stale, wait=wait)
