"""Every use of Optuna's private names, in one place, checked against the Optuna it was written for.

The exact trial budget (:mod:`autovae.search.slots`) works inside Optuna's RDB schema, in the
same transactions and under the same study row lock as Optuna's own trial creation. Optuna has no
public API for that, so this module reaches into its internals, and nothing else in
``autovae.search`` does. Each entry point below names the private thing it uses;
``tests/test_optuna_adapter.py`` calls every one of them and fails on an Optuna whose version is
not in :data:`TESTED`, so that an upgrade is tested before it is trusted.

At import, an Optuna outside :data:`TESTED` that lacks one of the names raises ImportError (one
line naming the versions to install); one that has them all gives a warning and is used.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import RDBStorage

__all__ = ["TESTED", "QuietRDBStorage", "backend", "cached", "frozen_trial", "models", "new_trial",
           "session", "start_trials_with", "study_id", "trial_id", "trial_logger"]

# Optuna releases (major.minor) whose private names below were read and tested
TESTED = ("5.1",)

# (owner, private name) pairs this module relies on
_NEEDED = (
    (RDBStorage, "_get_prepared_new_trial"),
    (RDBStorage, "_build_frozen_trial_from_trial_model"),
    (RDBStorage, "_get_stale_trial_ids"),
    (optuna.Study, "_pop_waiting_trial_id"),
)


def _check_version() -> None:
    version = ".".join(optuna.__version__.split(".")[:2])
    if version in TESTED:
        return
    try:
        from optuna.storages._rdb import models as found
        missing = [f"{owner.__name__}.{name}" for owner, name in _NEEDED
                   if not hasattr(owner, name)]
        missing += [f"models.{name}" for name in _MODELS if not hasattr(found, name)]
    except ImportError:
        missing = ["optuna.storages._rdb.models"]
    wanted = " or ".join(f"optuna=={v}.*" for v in TESTED)
    if missing:
        raise ImportError(f"autovae's search needs Optuna {', '.join(TESTED)}: Optuna "
                          f"{optuna.__version__} lacks {', '.join(missing)}; pip install "
                          f"'{wanted}'")
    warnings.warn(f"autovae's search was tested with Optuna {', '.join(TESTED)}, not "
                  f"{optuna.__version__}; if trials go missing, pip install '{wanted}'",
                  stacklevel=2)


_MODELS = ("StudyModel", "StudyUserAttributeModel", "TrialModel", "TrialUserAttributeModel",
           "TrialHeartbeatModel")
_check_version()

from optuna.storages._rdb import models  # noqa: E402  (after the check says why it may fail)


class QuietRDBStorage(RDBStorage):
    """Optuna's RDB storage with its own stale-trial sweep off (Optuna runs it before each trial
    through the private ``_get_stale_trial_ids``): :func:`autovae.search.slots.sweep_stale` fails
    stale trials instead, recording the reason and queueing the retry in one transaction."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []


def session(storage: RDBStorage):
    """A new session of the storage's own ``scoped_session`` (documented as not for users)."""
    return storage.scoped_session()


def new_trial(storage: RDBStorage, study_id: int, template, sess):
    """A new RUNNING trial row, numbered in ``sess`` under the study lock as Optuna numbers its
    trials (``RDBStorage._get_prepared_new_trial``); ``template``: a FrozenTrial to copy, or None.
    """
    return storage._get_prepared_new_trial(study_id, template, sess)


def frozen_trial(storage: RDBStorage, row) -> optuna.trial.FrozenTrial:
    """The FrozenTrial of a ``models.TrialModel`` row (``_build_frozen_trial_from_trial_model``)."""
    return storage._build_frozen_trial_from_trial_model(row)


def backend(study: optuna.Study):
    """The study's storage under Optuna's cache of finished trials (``Study._storage`` and
    ``_CachedStorage._backend``)."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def cached(study: optuna.Study):
    """The storage the study itself calls (``Study._storage``: the cache over the backend)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (``Study._study_id``)."""
    return study._study_id


def trial_id(trial) -> int:
    """A Trial's or FrozenTrial's id in its storage (``_trial_id``)."""
    return trial._trial_id


def trial_logger() -> logging.Logger:
    """The logger on which ``Study.optimize`` says that a trial failed, with the traceback
    (``optuna.study._optimize``'s; a filter on the ``optuna`` logger does not see its records)."""
    return logging.getLogger("optuna.study._optimize")


def start_trials_with(study: optuna.Study, start: Callable[[], int | None]) -> None:
    """Make ``study.ask()`` start the trial whose id ``start()`` returns (None: a new trial, as
    Optuna would). ``Study.ask`` takes its trial from the private ``_pop_waiting_trial_id`` (else
    it creates one); this replaces that method on this study object only."""
    study._pop_waiting_trial_id = start
