"""Storages of a study: opening them, their drivers, heartbeats, timeouts and outages.

Storages: the embedded SQLite file (default), ``journal:PATH`` (a journal file: one worker at a
time, no server), or a server database, PostgreSQL for many machines
(``postgresql+psycopg2://user@host:5432/db``, the password from ``PGPASSWORD``). With SQL
storages every running trial sends a heartbeat every ``AUTOVAE_HEARTBEAT_SECONDS`` (default 10);
each worker holds at most ``AUTOVAE_DB_POOL`` (default 2) connections and retries a database
that stops answering for ``AUTOVAE_DB_RETRY_SECONDS`` (default 300).

A worker frozen inside a transaction (SIGSTOP, swapped out, a debugger) must not hold the locks
the others need: on PostgreSQL every transaction of :mod:`autovae.search.slots` (the ones that
take the study lock or write a trial's attributes) sets ``idle_in_transaction_session_timeout``
(the server ends a session idle inside the transaction for one heartbeat interval, releasing its
locks) and ``lock_timeout`` (no statement waits for a lock longer than one heartbeat interval),
with ``SET LOCAL``, so that Optuna's own transactions, and PgBouncer's transaction pooling, are
left as they are.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from .._checks import StudyFault, check_folder
from .._env import env_number
from ..run import StudyFolder
from ._optuna_rdb import QuietRDBStorage

__all__ = ["Outage", "database_error", "db_pool", "db_retry_seconds", "heartbeat_seconds",
           "interrupted_in_transaction", "journal_lock", "lock_timed_out", "open_storage",
           "redact"]


# -- settings from the environment (read when used: a bad value is one clear line) -------------
def heartbeat_seconds() -> float:
    """Heartbeat period of a running trial (``AUTOVAE_HEARTBEAT_SECONDS``, default 10); a trial
    silent for 3 periods is failed and retried."""
    return env_number("AUTOVAE_HEARTBEAT_SECONDS", 10.0, 0.1, 86400.0, unit="seconds")


def db_pool() -> int:
    """Database connections a worker keeps at most (``AUTOVAE_DB_POOL``, default 2: the trial
    loop and the heartbeat thread; 0: none kept, one opened per operation, for PgBouncer)."""
    return int(env_number("AUTOVAE_DB_POOL", 2, 0, 1000, integer=True, unit="connections"))


def db_retry_seconds() -> float:
    """How long a worker retries a database that does not answer before it gives up
    (``AUTOVAE_DB_RETRY_SECONDS``, default 300)."""
    return env_number("AUTOVAE_DB_RETRY_SECONDS", 300.0, 0.0, 1e7, unit="seconds")


# -- opening a storage --------------------------------------------------------------------------
# pip package of each SQLAlchemy dialect's default or named driver
_DRIVERS = {
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "'psycopg[binary]'"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient (or PyMySQL, with mysql+pymysql://...)"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
    "mysql+mysqlconnector": ("mysql.connector", "mysql-connector-python"),
    "mariadb+mariadbconnector": ("mariadb", "mariadb"),
}


class Unreachable(ValueError):
    """The storage's database did not answer (refused, unknown host, timed out)."""


def open_storage(url: str | None, folder: Path, heartbeat: bool = True, create: bool = True,
                 pool: int | None = None):
    """An Optuna storage for ``url`` (None: SQLite in ``folder``), with a clear error if bad.

    ``create=False`` (read-only commands) refuses a store that does not exist yet instead of
    making one, and creates no folder. A SQLite file that is empty or cut short is refused.
    A server database gets a bounded connection pool of ``pool`` connections (default
    :func:`db_pool`; 0: no pool, a connection per operation), and each connection names its
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
        return _journal_storage(url, create)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = _postgres_driver(url)
    if not url.startswith(("sqlite:///", "postgresql+", "mysql", "mariadb+")):
        raise ValueError(f"bad storage URL {_named(url)}: use sqlite:///path.db, journal:PATH "
                         "or postgresql+psycopg2://user@host:5432/database")
    _check_driver(url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        _check_sqlite_file(Path(url[len("sqlite:///"):]), create)
    pool = db_pool() if pool is None else pool
    if pool < 0:
        raise ValueError(f"--db-pool {pool}: a pool holds 0 or more connections (default 2)")
    beat = heartbeat_seconds() if heartbeat else None  # (read-only commands need none)
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
            "application_name": f"autovae:{socket.gethostname()[:40]}:{os.getpid()}"}
        if url.startswith(("postgresql+psycopg2:", "postgresql+psycopg:")):  # (libpq)
            # a server that does not answer is named in 10 s; a server or link that dies
            # silently is noticed in about a minute, not hours (pg8000 has neither setting:
            # its one socket timeout would also end long statements)
            engine["connect_args"].update(connect_timeout=10, keepalives=1, keepalives_idle=30,
                                          keepalives_interval=10, keepalives_count=3)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict[str, Any] = {}
            if heartbeat:
                kwargs = dict(heartbeat_interval=beat, grace_period=3 * beat)
            return _Storage(url, engine_kwargs=engine, **kwargs)
    except ImportError as err:
        raise ValueError(f"storage {_named(url)} needs a database driver: {err}") from None
    except Exception as err:  # sqlalchemy's OperationalError, ArgumentError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        kind = Unreachable if database_error(err) is not None else ValueError
        raise kind(f"cannot open storage {_named(url, quoted=False)}: {first}") from None


class _Storage(QuietRDBStorage):
    """Optuna's RDB storage, whose stale trials are failed by :func:`slots.sweep_stale`, and
    whose heartbeat rides out database outages: a beat that meets one is skipped, not fatal to
    Optuna's heartbeat thread (the next beat retries; the trial is failed as stale only after
    three missed periods)."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:
            if database_error(err) is None:
                raise
            if not lock_timed_out(err):  # (a lock wait is no outage)
                Outage.last_error = time.monotonic()


def _journal_storage(url: str, create: bool):
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
    raise ValueError(f"storage {_named(url)} needs a PostgreSQL driver: pip install "
                     "psycopg2-binary and use postgresql+psycopg2://...")


def _check_driver(url: str) -> None:
    """A URL whose database driver is not installed: one line naming the package to install."""
    import importlib.util

    dialect = url.split("://", 1)[0]
    module, package = _DRIVERS.get(dialect, (None, None))
    if module is None:
        return
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ValueError(f"storage {_named(url)} needs the {dialect} driver, which is not "
                         f"installed: pip install {package}")


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


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


def _named(url: str, quoted: bool = True) -> str:
    """The URL for a message (password hidden), saying where it came from if from the
    environment."""
    shown = repr(redact(url)) if quoted else redact(url)
    return f"{shown} (from $AUTOVAE_STORAGE)" if url == os.environ.get("AUTOVAE_STORAGE") \
        else shown


def journal_lock(url: str | None):
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


# -- outages and timeouts -----------------------------------------------------------------------
class Outage:
    """Backoff for a database that stopped answering: 0.5 s doubling to 10 s, for at most
    :func:`db_retry_seconds`; then one clear line (:class:`StudyFault`)."""

    last_error = -math.inf  # time.monotonic() of this process's last database error

    def __init__(self, where: str):
        self.where, self.since, self.delay, self.cause = where, None, 0.5, ""
        self.allowance = db_retry_seconds()

    def wait(self, cause: str) -> None:
        now = time.monotonic()
        self.cause = cause
        if self.since is None:
            self.since = now
            print(f"autovae: database {self.where} unavailable ({cause}); retrying for up to "
                  f"{self.allowance:.0f} s", file=sys.stderr)
        if now - self.since > self.allowance:
            raise StudyFault(f"database {self.where} did not answer for {now - self.since:.0f} s "
                             f"({cause}); the finished trials are kept: re-run the same command "
                             "when it is back")
        time.sleep(min(self.delay, self.allowance - (now - self.since) + 0.05))
        self.delay = min(2 * self.delay, 10.0)

    def over(self) -> None:
        if self.since is not None:
            print(f"autovae: database {self.where} is back after "
                  f"{time.monotonic() - self.since:.1f} s", file=sys.stderr)
        self.since, self.delay = None, 0.5


def _database_exception(err: BaseException | None):
    """The first database error in ``err``'s chain (Optuna wraps it, or fails on its own way
    out of a trial with it as the context), or None."""
    import sqlalchemy.exc

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)):
            return err
        err = err.__cause__ or err.__context__
    return None


def database_error(err: BaseException) -> str | None:
    """The first line of the database error in ``err``'s chain, or None if there is none."""
    found = _database_exception(err)
    if found is None:
        return None
    text = str(getattr(found, "orig", None) or found).strip()
    return text.splitlines()[0] if text else type(found).__name__


def _sqlstate(err: BaseException) -> str | None:
    found = _database_exception(err)
    orig = getattr(found, "orig", None)
    return getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)


def lock_timed_out(err: BaseException) -> bool:
    """Whether ``err`` is a statement that waited ``lock_timeout`` for a lock (another worker
    held it: frozen, or slow); the transaction was rolled back and can simply be retried."""
    return _sqlstate(err) == "55P03" or "lock timeout" in (database_error(err) or "")


def interrupted_in_transaction(err: BaseException) -> bool:
    """Whether the server ended this process's session because it stayed idle inside a
    transaction longer than ``idle_in_transaction_session_timeout`` (this worker was frozen:
    SIGSTOP, swapped out, a debugger). The server's own message rarely reaches the client (it
    sees a closed connection), so :mod:`autovae.search.slots` marks the errors that end its
    transactions after such a pause (``paused_seconds``)."""
    seen = set()
    chain = err
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if getattr(chain, "paused_seconds", None):
            return True
        chain = chain.__cause__ or chain.__context__
    return _sqlstate(err) == "25P03" or "idle-in-transaction" in (database_error(err) or "")
