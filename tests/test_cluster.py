"""The search at cluster scale (issue 19): exact budgets under races, stale trials failed with
their reason, trials taken over after an outage, one worker per journal, bounded connections,
and the recipes' worker command lines. The trials are autovae.search.synthetic's (the real
worker, storage, heartbeat and retry code; sleeps instead of training)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autovae.config import Config
from autovae.search import SearchSpace, StudySpec, create_study, open_storage, slots
from autovae.search import study as study_mod
from autovae.search.synthetic import SyntheticObjective

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
BASE = Config(data="digits", epochs=3, hidden=8, depth=1)
SPACE = SearchSpace(pairs=["normal/normal", "logistic/normal"], alpha=(0.0, 1.0),
                    samples=(1, 2), latent_dim=(2, 2), hidden=(8, 8), depth=(1, 1))


def _states(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    return study, [t.state for t in study.get_trials()]


def _race(url: str | None, folder: Path, studies=10, budget=5, workers=4):
    """``workers`` processes run ``studies`` small studies one after the other (so they race
    for the last slots of each); every study must end with exactly ``budget`` trials. (A 1-s
    heartbeat: SQLite's clock has whole seconds, so shorter graces misjudge live trials.)"""
    names = [f"race{i}" for i in range(studies)]
    for name in names:
        create_study(open_storage(url, folder / name), name,
                     StudySpec(SPACE, BASE.replace(epochs=2), ["nll"], budget, pruner="none"))
    env = {**os.environ, "PYTHONPATH": SRC, "AUTOVAE_HEARTBEAT_SECONDS": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "autovae.search.synthetic", "--dir", str(folder),
           "--studies", ",".join(names), "--epoch-seconds", "0.02"]
    if url:
        cmd += ["--storage", url]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)], env=env, stderr=subprocess.PIPE,
                              text=True) for i in range(workers)]
    return names, procs


def _check_exact(url, folder, names, procs, budget=5):
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    sharing = {}
    for name in names:
        study, states = _states(open_storage(url, folder / name, heartbeat=False), name)
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        assert finished == budget, (name, [s.name for s in states])
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states
        sharing[name] = {t.user_attrs["worker"] for t in study.get_trials()}
    # they did race: most studies were shared (on a loaded machine one worker, started seconds
    # before the others, can finish the first study alone)
    shared = sum(len(workers) >= 2 for workers in sharing.values())
    assert shared >= len(names) // 2, sharing


@pytest.mark.slow
def test_exact_budget_with_four_racing_workers_sqlite(tmp_path):
    db = f"sqlite:///{tmp_path / 'race.db'}"
    names, procs = _race(db, tmp_path)
    _check_exact(db, tmp_path, names, procs)


def test_exact_budget_with_four_racing_workers_and_two_connections_each(request, tmp_path):
    """On PostgreSQL where the tests can run one (else SQLite): exactly the budget in each of
    10 studies, and no worker ever holds more than 2 connections (pg_stat_activity)."""
    import socket

    import psycopg2

    try:
        url, _ = request.getfixturevalue("postgres")
    except pytest.skip.Exception:
        url = f"sqlite:///{tmp_path / 'race.db'}"
    names, procs = _race(url, tmp_path)
    if url.startswith("sqlite"):
        return _check_exact(url, tmp_path, names, procs)
    ours = f"autovae:{socket.gethostname()[:40]}:{os.getpid()}"  # this test's own connections
    peak: dict[str, int] = {}
    db = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    db.autocommit = True
    try:
        while any(p.poll() is None for p in procs):  # connections per worker process
            with db.cursor() as cur:
                cur.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE "
                            "application_name LIKE 'autovae:%%' AND application_name <> %s "
                            "GROUP BY 1", (ours,))
                for app, n in cur.fetchall():
                    peak[app] = max(peak.get(app, 0), n)
            time.sleep(0.1)
    finally:
        db.close()
    _check_exact(url, tmp_path, names, procs)
    assert len(peak) == 4 and max(peak.values()) <= 2, peak
    # the pool is that bound: 2 connections and no overflow; 0 for none kept (PgBouncer)
    import sqlalchemy.pool

    engine = open_storage(url, tmp_path).engine
    assert engine.pool.size() == 2 and engine.pool._max_overflow == 0
    assert isinstance(open_storage(url, tmp_path, pool=0).engine.pool, sqlalchemy.pool.NullPool)
    with pytest.raises(ValueError, match="--db-pool -1"):
        open_storage(url, tmp_path, pool=-1)


def _synthetic(epoch_seconds=0.01):
    SyntheticObjective.epoch_seconds = epoch_seconds
    return SyntheticObjective


def test_a_stale_trial_is_failed_with_its_reason_and_retried_from_its_checkpoint(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "0.2")
    storage = open_storage(None, tmp_path)
    study = create_study(storage, "s", StudySpec(SPACE, BASE, ["nll"], 3, pruner="none"))
    # a worker claimed a trial, ran one epoch of it (checkpoint), and died
    dead = slots.claim(storage, study._study_id)
    number = storage.get_trial(dead).number
    (tmp_path / "trials" / f"{number:05d}").mkdir(parents=True)
    (tmp_path / "trials" / f"{number:05d}" / "checkpoint.pt").write_text(
        '{"epoch": 1, "loss": 200.0}')
    time.sleep(0.7)  # > 3 heartbeat periods
    assert study_mod.run_worker(None, "s", tmp_path, objective=_synthetic()) == 0
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    failed = trials[number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["failure"].startswith("its worker stopped sending heartbeats")
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retry) == 1 and f"retried as trial {retry[0].number}" in \
        failed.user_attrs["failure"]
    assert retry[0].user_attrs["resumed_from_trial"] == number
    assert retry[0].user_attrs["resumed_at_epoch"] == 1


class _CutOff(SyntheticObjective):
    """The first trial's worker loses the database for longer than the heartbeat grace: another
    worker fails its trial as stale (and queues the retry) while it trains on."""

    epoch_seconds, swept = 0.01, False

    def _train(self, config, run_folder, resume, report):
        def report_after_the_sweep(row, model):
            if not _CutOff.swept and row["epoch"] == 2:
                _CutOff.swept = True
                storage = study_mod.open_storage(None, self.folder, heartbeat=False)
                study = optuna.load_study(study_name="s", storage=storage)
                slots.sweep_stale(storage, study._study_id, grace=-1)  # every running trial
            report(row, model)

        return super()._train(config, run_folder, resume, report_after_the_sweep)


def test_finishing_a_trial_that_another_worker_failed_does_not_error(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "0.2")
    storage = open_storage(None, tmp_path)
    create_study(storage, "s", StudySpec(SPACE, BASE, ["nll"], 3, pruner="median"))
    assert study_mod.run_worker(None, "s", tmp_path, objective=_CutOff) == 0
    assert "was failed by another worker" in capsys.readouterr().err
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 3, states
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].user_attrs["resumed_from_trial"] == 0
    assert retry[0].params == trials[0].params and retry[0].user_attrs["resumed_at_epoch"] == 2
    assert trials[0].user_attrs["failure"].startswith("its worker stopped sending heartbeats")


def test_journal_storage_one_worker_at_a_time_and_a_dead_ones_trial_is_retried(tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    storage = open_storage(url, tmp_path)
    study = create_study(storage, "j", StudySpec(SPACE, BASE, ["nll"], 2, pruner="none"))
    with pytest.raises(ValueError, match="--workers 2 on a journal storage"):
        study_mod.run_search(url, "j", tmp_path, StudySpec(SPACE, BASE, ["nll"], 2), workers=2)
    held = study_mod.journal_lock(url)  # a worker is running
    with pytest.raises(ValueError, match="in use by another worker.*PostgreSQL"):
        study_mod.run_worker(url, "j", tmp_path, objective=_synthetic())
    held.close()  # ... and is SIGKILLed in the middle of a trial
    dead = study.ask()
    assert study_mod.run_worker(url, "j", tmp_path, objective=_synthetic()) == 0
    trials = optuna.load_study(study_name="j", storage=open_storage(url, tmp_path)).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING not in states, states
    assert trials[dead.number].state == TrialState.FAIL
    assert "its worker stopped" in trials[dead.number].user_attrs["failure"]
    assert any(t.system_attrs.get("failed_trial") == dead.number for t in trials)


# -- the recipes of docs/distributed.md -----------------------------------------------------------
def _fake_cluster_bin(tmp_path: Path) -> Path:
    """``srun`` that runs its command here, and ``autovae`` that is this checkout's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "autovae").write_text(f'#!/bin/sh\nexec {sys.executable} -m autovae "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _recipe_study(postgres_password, tmp_path):
    url, host, port, password = postgres_password
    folder = tmp_path / "shared"
    spec = StudySpec(SPACE, BASE.replace(epochs=1, limit=300, val_size=100, batch_size=100,
                                         nll_samples=3), ["nll"], 2, pruner="none",
                     validation_nll_samples=3)
    create_study(open_storage(url, folder), "fmnist", spec)
    return url, host, port, password, folder


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AUTOVAE_"))}
    return {**env, "PATH": f"{_fake_cluster_bin(tmp_path)}:{env['PATH']}", "PYTHONPATH": SRC,
            "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_slurm_recipe_runs_its_worker_command(postgres_password, tmp_path):
    url, host, port, password, folder = _recipe_study(postgres_password, tmp_path)
    secret = tmp_path / "db-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    env = _env(tmp_path, SLURM_ARRAY_TASK_ID="3", AUTOVAE_DB_HOST=host, AUTOVAE_DB_PORT=port,
               AUTOVAE_DB_PASSWORD_FILE=str(secret), AUTOVAE_STUDY="fmnist",
               AUTOVAE_STUDY_DIR=str(folder), AUTOVAE_DEVICE="cpu")
    script = ROOT / "examples" / "slurm" / "autovae-workers.sbatch"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    study, states = _states(open_storage(url, folder, heartbeat=False), "fmnist")
    assert states == [TrialState.COMPLETE] * 2


def _container_command(job: dict, env: dict, host, port, folder, password,
                       part: str = "containers") -> list[str]:
    (container,) = job["spec"]["template"]["spec"][part]
    for var in container["env"]:  # the password comes from the Secret, never the command
        if "valueFrom" in var:
            assert var["valueFrom"]["secretKeyRef"]["name"] == "autovae-db"
            env[var["name"]] = password
        else:
            env[var["name"]] = {"AUTOVAE_DB_HOST": host, "AUTOVAE_DB_PORT": port,
                                "AUTOVAE_STUDY_DIR": str(folder), "AUTOVAE_DEVICE": "cpu",
                                }.get(var["name"], str(var["value"]))
    command = [*container["command"], *container.get("args", [])]
    assert password not in " ".join(command)
    return command


@pytest.mark.slow
def test_kubernetes_recipe_runs_its_commands(postgres_password, tmp_path):
    import yaml

    url, host, port, password, folder = _recipe_study(postgres_password, tmp_path)
    docs = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes" /
                                    "autovae-search.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert {"Service", "StatefulSet", "PersistentVolumeClaim", "Job"} <= set(kinds)
    assert "Secret" not in kinds  # made by 'kubectl create secret', never replaced
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    workers = jobs["autovae-workers"]
    assert workers["spec"]["completionMode"] == "Indexed"
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1  # one worker per GPU

    # the init containers wait for the database (Debian's pg_isready), which answers
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    for job in jobs.values():
        env = _env(tmp_path)
        env["PATH"] = f"{pg_bin}:{env['PATH']}"
        command = _container_command(job, env, host, port, folder, password, "initContainers")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    # the study, created once (here under another name: the recipe's preset trains for real)
    env = _env(tmp_path)
    command = _container_command(jobs["autovae-create-study"], env, host, port, folder, password)
    env["AUTOVAE_STUDY"] = "created-by-the-recipe"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    created = optuna.load_study(study_name="created-by-the-recipe",
                                storage=open_storage(url, folder, heartbeat=False))
    assert created.get_trials() == [] and '"trials": 200' in created.user_attrs["autovae_spec"]

    env = _env(tmp_path, JOB_COMPLETION_INDEX="1")
    command = _container_command(workers, env, host, port, folder, password)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study, states = _states(open_storage(url, folder, heartbeat=False), "fmnist")
    assert states == [TrialState.COMPLETE] * 2


def test_a_worker_started_before_its_study_waits_for_it(tmp_path, monkeypatch, capsys):
    import threading

    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "0.2")
    with pytest.raises(ValueError, match=r"no study 's' in .*create it with 'autovae search' "
                                         r"first \(waited 0.5 s\)"):
        study_mod.run_worker(None, "s", tmp_path, objective=_synthetic(), wait=0.5)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(study_mod.run_worker(
        None, "s", tmp_path, objective=_synthetic(), wait=60)))
    worker.start()
    time.sleep(1.0)  # the worker is waiting; now the study is created
    create_study(open_storage(None, tmp_path), "s", StudySpec(SPACE, BASE, ["nll"], 2,
                                                              pruner="none"))
    worker.join(timeout=120)
    assert codes == [0]
    assert "waiting up to 60 s for the study 's'" in capsys.readouterr().err
    study, states = _states(open_storage(None, tmp_path), "s")
    assert states == [TrialState.COMPLETE] * 2
