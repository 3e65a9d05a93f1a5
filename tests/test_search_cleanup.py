"""Search-side leftovers of the last review: connections released on any failure, one SQL
statement per execute (every PostgreSQL driver takes that)."""

import pytest

from autovae.search import study as study_module


def test_open_study_disposes_the_engine_whatever_load_study_raises(tmp_path, monkeypatch):
    disposed, real_open = [], study_module.open_storage

    def opening(*args, **kwargs):
        storage = real_open(*args, **kwargs)
        monkeypatch.setattr(storage.engine, "dispose", lambda *a, **k: disposed.append(1))
        return storage

    def load_study(**_):
        raise RuntimeError("a schema Optuna does not know")

    monkeypatch.setattr(study_module, "open_storage", opening)
    monkeypatch.setattr(study_module.optuna, "load_study", load_study)
    with pytest.raises(RuntimeError, match="schema Optuna does not know"):
        study_module._open_study(None, "s", tmp_path, None, "here", wait=30)
    assert disposed == [1]  # and no retry: only a missing study or database is waited for


def test_each_transaction_sets_its_timeouts_one_statement_at_a_time(postgres, tmp_path,
                                                                     monkeypatch):
    import sqlalchemy as sa

    from autovae.search import open_storage, slots

    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "1.5")
    storage = open_storage(postgres[0], tmp_path, heartbeat=False)
    sent = []
    sa.event.listen(storage.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: sent.append(statement))
    try:
        with slots._transaction(storage) as session:
            shown = [session.execute(sa.text(f"SHOW {name}")).scalar_one()
                     for name in ("lock_timeout", "idle_in_transaction_session_timeout")]
    finally:
        storage.engine.dispose()
    assert shown == ["1500ms", "1500ms"]
    assert [s for s in sent if s.startswith("SET LOCAL")] == [
        "SET LOCAL lock_timeout = 1500", "SET LOCAL idle_in_transaction_session_timeout = 1500"]
    assert not [s for s in sent if ";" in s]


# pg8000.connect's keyword arguments (1.31); libpq's (connect_timeout, keepalives...) are not
PG8000_CONNECT = {"user", "host", "database", "port", "password", "source_address", "unix_sock",
                  "ssl_context", "timeout", "tcp_keepalive", "application_name", "replication",
                  "startup_params", "sock"}


@pytest.mark.parametrize("driver", ["pg8000", "psycopg2"])
def test_each_postgresql_driver_gets_only_connect_arguments_it_takes(driver, tmp_path,
                                                                     monkeypatch):
    """(pg8000 was refused at connect: 'unexpected keyword argument connect_timeout'.)"""
    from autovae.search import storage

    engines = []
    monkeypatch.setattr(storage, "_check_driver", lambda url: None)
    monkeypatch.setattr(storage, "_Storage", lambda url, engine_kwargs, **_: engines.append(
        engine_kwargs))
    storage.open_storage(f"postgresql+{driver}://u@127.0.0.1:1/db", tmp_path, heartbeat=False)
    args = engines[0]["connect_args"]
    assert args["application_name"].startswith("autovae:")
    if driver == "pg8000":
        assert set(args) <= PG8000_CONNECT, set(args) - PG8000_CONNECT
    else:
        assert args["connect_timeout"] == 10 and args["keepalives"] == 1
