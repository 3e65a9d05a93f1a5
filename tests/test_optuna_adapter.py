"""The one module that touches Optuna's private names (autovae.search._optuna_rdb): every entry
point called against a real storage, the version check, and no private name anywhere else.

This file fails on an Optuna whose version the adapter was not tested with: read the private
names it uses in the new Optuna's source, run this file, then add the version to TESTED."""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from autovae.search import _optuna_rdb as rdb
from autovae.search.storage import open_storage

SEARCH = Path(rdb.__file__).parent
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def test_the_installed_optuna_is_one_the_adapter_was_tested_with():
    version = ".".join(optuna.__version__.split(".")[:2])
    assert version in rdb.TESTED, (
        f"Optuna {optuna.__version__} is not in autovae.search._optuna_rdb.TESTED "
        f"{rdb.TESTED}: check the private names it uses against this Optuna, then add it")


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "0.1")
    storage = open_storage(None, tmp_path)
    return optuna.create_study(study_name="s", storage=storage)


def test_every_entry_point_against_a_sqlite_storage(study):
    storage = rdb.backend(study)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert rdb.cached(study) is not storage  # Optuna's cache over the backend
    sid = rdb.study_id(study)
    assert sid == storage.get_study_id_from_name("s")

    # new_trial numbers a trial in our session, as Optuna numbers its own; frozen_trial reads it
    session = rdb.session(storage)
    try:
        row = rdb.new_trial(storage, sid, None, session)
        assert isinstance(row, rdb.models.TrialModel) and row.state == TrialState.RUNNING
        session.commit()
        first = row.trial_id
        frozen = rdb.frozen_trial(storage, session.get(rdb.models.TrialModel, first))
        assert frozen.number == 0 and frozen.state == TrialState.RUNNING
        template = optuna.trial.create_trial(
            state=TrialState.WAITING, params={"x": 0.5},
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            system_attrs={"failed_trial": 0})
        retry = rdb.new_trial(storage, sid, template, session)
        session.commit()
        retry_id = retry.trial_id
        assert retry.number == 1 and retry.state == TrialState.WAITING
        for name in rdb._MODELS:
            assert session.execute(sa.select(sa.func.count()).select_from(
                getattr(rdb.models, name))).scalar() >= 0
    finally:
        session.close()
    assert storage.get_trial(retry_id).params == {"x": 0.5}

    # start_trials_with decides which trial study.ask() starts
    storage.set_trial_state_values(retry_id, TrialState.RUNNING)
    rdb.start_trials_with(study, lambda: retry_id)
    asked = study.ask()
    assert rdb.trial_id(asked) == retry_id and asked.number == 1
    rdb.start_trials_with(study, lambda: None)  # None: a new trial, as Optuna would
    assert study.ask().number == 2
    assert rdb.trial_id(study.get_trials()[0]) == first


def test_optunas_own_stale_sweep_is_off(study):
    storage = rdb.backend(study)
    assert isinstance(storage, rdb.QuietRDBStorage)
    trial = study.ask()
    storage.record_heartbeat(rdb.trial_id(trial))
    import time

    time.sleep(0.5)  # stale for Optuna (grace 0.3 s)
    assert storage._get_stale_trial_ids(rdb.study_id(study)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # what Optuna runs before each trial
    assert study.get_trials()[0].state == TrialState.RUNNING  # left to slots.sweep_stale


def test_optimize_says_a_trial_failed_on_trial_logger(study):
    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Catch()
    rdb.trial_logger().addHandler(handler)
    try:
        def broken(trial):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            study.optimize(broken, n_trials=1)
    finally:
        rdb.trial_logger().removeHandler(handler)
    assert any(re.match(r"Trial 0 failed", m) for m in seen), seen


def _load_a_copy():
    """A fresh copy of the adapter module (the imported one stays as it is)."""
    spec = importlib.util.spec_from_file_location("_optuna_rdb_copy", rdb.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_untested_optuna_is_refused_when_it_lacks_a_name_else_warned(monkeypatch):
    monkeypatch.setattr(optuna, "__version__", "9.9.0")
    with pytest.warns(UserWarning, match=r"tested with Optuna .*not 9\.9\.0"):
        _load_a_copy()
    monkeypatch.delattr(optuna.storages.RDBStorage, "_get_prepared_new_trial")
    with pytest.raises(ImportError, match=r"lacks RDBStorage\._get_prepared_new_trial; pip "
                                          r"install 'optuna==5\.1\.\*'"):
        _load_a_copy()


def test_no_other_module_of_the_search_touches_optunas_private_names():
    private = re.compile(r"optuna\.storages\._|\._(storage|study_id|trial_id|backend)\b|"
                         r"_get_prepared_new_trial|_build_frozen_trial|_pop_waiting_trial_id|"
                         r"_get_stale_trial_ids|\.scoped_session\b")
    found = [f"{path.name}:{n}: {line.strip()}" for path in sorted(SEARCH.glob("*.py"))
             if path.name != "_optuna_rdb.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert not found, found
