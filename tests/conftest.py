import json
import math
from pathlib import Path

import pytest
import torch

VECTORS_PATH = Path(__file__).parent / "data" / "gvi-test-vectors.json"


def load_vectors() -> dict:
    """The verified test vectors (a copy of shared/spec/gvi-test-vectors.json)."""
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


@pytest.fixture
def postgres():
    """(url, pg_ctl(action)) of a private PostgreSQL server on 127.0.0.1 (Debian's binaries,
    run as user postgres), stopped by its PID afterwards; skipped where it cannot run."""
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

    as_postgres(f"{bin_dir}/initdb -D {data} --auth=trust -U postgres")
    pg_ctl("start")
    try:
        as_postgres(f"psql -X -q -h {sock} -p {port} -U postgres -c 'CREATE DATABASE autovae'")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/autovae", pg_ctl
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
