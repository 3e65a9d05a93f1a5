import json
import math
from pathlib import Path

import pytest
import torch

# The verified test vectors. data/gen_vectors.py (a verbatim copy of the spec's generator,
# companion of its gvi-math.md; needs numpy, scipy and mpmath) writes this file beside itself and
# checks every closed form against quadrature, exiting non-zero on a failure:
#     python tests/data/gen_vectors.py    # a few minutes on one core
# With numpy 2.4.6, scipy 1.17.1, mpmath 1.3.0 and Python 3.11.7 (the versions recorded in the
# file's "meta") it reproduces the committed JSON byte for byte. It is a generator, not a test.
VECTORS_PATH = Path(__file__).parent / "data" / "gvi-test-vectors.json"
collect_ignore = ["data/gen_vectors.py"]


def load_vectors() -> dict:
    """The verified test vectors (written by data/gen_vectors.py)."""
    return json.loads(VECTORS_PATH.read_text())


def as_float(v) -> float:
    """JSON value to float; the string "inf" stands for +infinity."""
    return math.inf if v == "inf" else float(v)


@pytest.fixture(scope="session")
def vectors() -> dict:
    return load_vectors()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _postgres_server(password: str | None = None):
    """Yields (url, pg_ctl(action), port) of a private PostgreSQL server on 127.0.0.1 (Debian's
    binaries, run as user postgres), stopped by its PID afterwards; skipped where it cannot run.
    With ``password``, TCP logins need it (scram-sha-256) and the URL is role autovae's."""
    import glob
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb or shutil.which("su") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's postgresql package and root (to run it as user postgres)")
    bin_dir = Path(initdb[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="autovae-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    shutil.chown(root, "postgres")
    shutil.chown(sock, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(cmd):
        subprocess.run(["su", "postgres", "-c", cmd], check=True, capture_output=True)

    def pg_ctl(action: str):
        opts = f"-o '-c listen_addresses=127.0.0.1 -p {port} -k {sock}'"
        as_postgres(f"{bin_dir}/pg_ctl -D {data} -l {root}/log -w -m fast {opts} {action}")

    auth = "--auth=trust" if password is None else \
        "--auth-local=trust --auth-host=scram-sha-256"
    as_postgres(f"{bin_dir}/initdb -D {data} {auth} -U postgres")
    pg_ctl("start")
    try:
        psql = f"psql -X -q -h {sock} -p {port} -U postgres"
        as_postgres(f"{psql} -c 'CREATE DATABASE autovae'")
        if password is None:
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/autovae", pg_ctl, port
        else:
            as_postgres(f"{psql} -c \"CREATE ROLE autovae LOGIN PASSWORD '{password}'\"")
            as_postgres(f"{psql} -c 'ALTER DATABASE autovae OWNER TO autovae'")
            yield (f"postgresql+psycopg2://autovae:{password}@127.0.0.1:{port}/autovae", pg_ctl,
                   port)
    finally:
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # "fast" shutdown: disconnects the remaining clients
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres():
    """(url, pg_ctl(action)) of a private PostgreSQL server on 127.0.0.1 that trusts logins."""
    for url, pg_ctl, _ in _postgres_server():
        yield url, pg_ctl


@pytest.fixture
def postgres_password():
    """(url with the password, host, port, password) of a private PostgreSQL server on
    127.0.0.1 whose role autovae logs in with a password (scram-sha-256)."""
    password = "s3cret-for-tests"
    for url, _, port in _postgres_server(password):
        yield url, "127.0.0.1", str(port), password
