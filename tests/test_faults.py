"""Faults injected on purpose (issue 11): a full disk, leftover temp files, a dead worker's
trial near the end of a study, database errors inside a trial, PostgreSQL restarts and outages.
The PostgreSQL ones are slow (``pytest -m slow``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autovae.cli import main
from autovae.config import Config
from autovae.search import SearchSpace, StudySpec, create_study, open_storage
from autovae.search import study as study_mod

TRAIN = ["--data", "digits", "--hidden", "8", "--depth", "1", "--batch-size", "500",
         "--latent", "normal/normal:2", "--nll-samples", "3", "--quiet", "--no-evaluate"]
SRC = str(Path(__file__).resolve().parents[1] / "src")
BASE = Config(data="digits", epochs=2, batch_size=250, hidden=8, depth=1, lr=3e-3,
              limit=600, val_size=100, nll_samples=5)
SPACE = SearchSpace(pairs=["normal/normal", "logistic/normal"], alpha=(0.0, 1.0),
                    samples=(1, 2), latent_dim=(2, 2), hidden=(8, 8), depth=(1, 1))


def test_disk_full_is_said_plainly_and_the_checkpoint_kept(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run", str(run), *TRAIN, "--epochs", "1"]) == 0
    before = (run / "checkpoint.pt").read_bytes()

    def full(*args, **kwargs):  # what torch.save raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs "
                           "4240: PytorchStreamWriter failed writing file data/3: No space left "
                           "on device")

    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    assert main(["train", "--run", str(run), "--resume", "--epochs", "2", "--quiet",
                 "--no-evaluate"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"no space left on the device of {run}" in err and "checkpoint.pt" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_leftover_temp_files_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run", str(run), *TRAIN, "--epochs", "1"]) == 0
    stale = run / ".checkpoint.pt.4242.0123456789ab.tmp"  # a writer SIGKILLed mid-write
    stale.write_bytes(b"partial")
    assert main(["train", "--run", str(run), "--resume", "--epochs", "2", "--quiet",
                 "--no-evaluate"]) == 0
    assert not stale.exists() and not list(run.glob(".*.tmp"))


def _states(study):
    return [t.state for t in study.get_trials()]


def test_a_dead_workers_trial_near_the_end_is_failed_and_retried(tmp_path, monkeypatch):
    """Before: the survivor reached the budget and returned, leaving the trial RUNNING."""
    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "0.3")
    spec = StudySpec(SPACE, BASE, ["nll"], trials=2, pruner="none", validation_nll_samples=5)
    storage = open_storage(None, tmp_path)
    study = create_study(storage, "s", spec)
    dead = study.ask()  # a worker that took a trial, beat once, and died
    storage.record_heartbeat(dead._trial_id)
    study_mod.run_worker(None, "s", tmp_path)
    study = optuna.load_study(study_name="s", storage=storage)
    states = _states(study)
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert states.count(TrialState.COMPLETE) == 2  # the budget, not one more
    assert study.get_trials()[dead.number].state == TrialState.FAIL


def test_a_trial_cut_by_a_database_error_says_why_and_is_retried(tmp_path, monkeypatch):
    import sqlalchemy.exc

    monkeypatch.setenv("AUTOVAE_HEARTBEAT_SECONDS", "0.3")
    original = study_mod._set_user_attrs
    calls = []

    def flaky(trial, attrs):
        calls.append(attrs)
        if len(calls) == 1:  # the first write of the first trial meets an outage
            raise sqlalchemy.exc.OperationalError(
                "UPDATE trials", {}, Exception("server closed the connection unexpectedly"))
        return original(trial, attrs)

    monkeypatch.setattr(study_mod, "_set_user_attrs", flaky)
    spec = StudySpec(SPACE, BASE, ["nll"], trials=2, pruner="none", validation_nll_samples=5)
    storage = open_storage(None, tmp_path)
    create_study(storage, "s", spec)
    assert study_mod.run_worker(None, "s", tmp_path) == 0
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert failed[0].user_attrs["failure"].startswith(
        "database error: server closed the connection unexpectedly; retried as trial ")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2


def test_search_with_a_worker_dead_after_the_budget_exits_cleanly(tmp_path, monkeypatch,
                                                                  capsys):
    spec = StudySpec(SPACE, BASE.replace(epochs=1), ["nll"], trials=1, pruner="none",
                     validation_nll_samples=5)
    study_mod.run_search(None, "s", tmp_path, spec)

    popen = subprocess.Popen

    def dead_worker(cmd, env=None):  # a worker process that died (the budget is already met)
        return popen([sys.executable, "-c", "import sys; sys.exit(137)"])

    monkeypatch.setattr(study_mod.subprocess, "Popen", dead_worker)
    study_mod.run_search(None, "s", tmp_path, spec, workers=2)
    assert "holds its 1 trials" in capsys.readouterr().err
    with pytest.raises(study_mod.StudyFault, match="0 of 2 trials finished"):
        study_mod.run_search(None, "t", tmp_path, StudySpec(SPACE, BASE, ["nll"], 2), workers=2)


# -- PostgreSQL: restarts and outages ------------------------------------------------------------
def _workers(url: str, folder: Path, n: int, env: dict) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-m", "autovae", "worker", "--study", "pg", "--dir", str(folder),
           "--storage", url]
    return [subprocess.Popen([*cmd, "--worker", str(i)], env=env, stderr=subprocess.PIPE,
                             text=True) for i in range(n)]


def _wait_for_checkpoint(folder: Path, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(folder.glob("trials/*/checkpoint.pt")):
            return
        time.sleep(0.05)
    raise AssertionError("no trial got going")


@pytest.mark.slow
def test_postgres_restart_is_survived_and_the_budget_met_exactly(postgres, tmp_path):
    url, pg_ctl = postgres
    spec = StudySpec(SPACE, BASE.replace(epochs=6), ["nll"], trials=4, pruner="none",
                     validation_nll_samples=5)
    create_study(open_storage(url, tmp_path), "pg", spec)
    env = {**os.environ, "PYTHONPATH": SRC, "AUTOVAE_HEARTBEAT_SECONDS": "1"}
    procs = _workers(url, tmp_path, 2, env)
    _wait_for_checkpoint(tmp_path)
    started = time.time()
    pg_ctl("restart")  # -m fast: every connection is cut
    restart_seconds = time.time() - started
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("Traceback" in e for e in errors), errors
    study = optuna.load_study(study_name="pg", storage=open_storage(url, tmp_path))
    states = _states(study)
    assert states.count(TrialState.COMPLETE) == 4, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    for t in study.get_trials(states=(TrialState.FAIL,)):  # each failure says why, is retried
        assert t.user_attrs.get("failure") or any(
            r.system_attrs.get("failed_trial") == t.number for r in study.get_trials()), t
    reasons = [t.user_attrs.get("failure", "stale heartbeat")
               for t in study.get_trials(states=(TrialState.FAIL,))]
    print(f"restart took {restart_seconds:.2f} s; states {[s.name for s in states]}; {reasons}")


@pytest.mark.slow
def test_a_long_outage_ends_with_one_clear_line(postgres, tmp_path):
    url, pg_ctl = postgres
    spec = StudySpec(SPACE, BASE.replace(epochs=30, limit=1000), ["nll"], trials=2,
                     pruner="none", validation_nll_samples=5)
    create_study(open_storage(url, tmp_path), "pg", spec)
    env = {**os.environ, "PYTHONPATH": SRC, "AUTOVAE_HEARTBEAT_SECONDS": "1",
           "AUTOVAE_DB_RETRY_SECONDS": "8"}
    (proc,) = _workers(url, tmp_path, 1, env)
    _wait_for_checkpoint(tmp_path)
    pg_ctl("stop")
    stopped = time.time()
    err = proc.communicate(timeout=300)[1]
    survived = time.time() - stopped
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("autovae: error: database postgresql+psycopg2://postgres")
    assert "did not answer for" in last
    assert 8 <= survived < 60, survived  # it retried for its allowance, then said so
    print(f"worker retried for {survived:.1f} s; stderr: {err!r}")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["attributes", "claim"])
def test_a_worker_frozen_inside_a_transaction_does_not_stall_the_others(postgres, tmp_path,
                                                                        where):
    """Before: a worker SIGSTOPped inside the transaction that writes its trial's attributes
    held the trial's row; the worker that swept it waited on that row holding the study lock,
    and every other worker waited as long as the freeze lasted. Frozen inside a claim, it holds
    the study lock itself: the server ends its session after one heartbeat."""
    import json
    import signal

    url, _ = postgres
    budget, heartbeat, freeze = 8, 1.0, 10.0
    spec = StudySpec(SPACE, BASE.replace(epochs=3), ["nll"], trials=budget, pruner="none",
                     validation_nll_samples=5)
    create_study(open_storage(url, tmp_path, heartbeat=False), "pg", spec)
    env = {**os.environ, "PYTHONPATH": SRC, "AUTOVAE_HEARTBEAT_SECONDS": str(heartbeat)}
    log = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "autovae.search.synthetic", "--storage", url, "--study", "pg",
           "--dir", str(tmp_path), "--epoch-seconds", "0.3", "--log", str(log)]

    def events(kind):
        lines = log.read_text().splitlines() if log.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == kind]

    stop = "--stop-in-transaction" if where == "attributes" else "--stop-in-claim"
    frozen = subprocess.Popen([*cmd, "--worker", "0", stop],
                              stderr=subprocess.PIPE, text=True, env=env)
    others = [subprocess.Popen([*cmd, "--worker", str(i)], stderr=subprocess.PIPE, text=True,
                               env=env) for i in (1, 2, 3)]
    deadline = time.time() + 180  # the frozen one stopped, and the others run trials
    while time.time() < deadline and not (
            events("stopped") and {e["pid"] for e in events("start")} >= {p.pid for p in others}):
        assert all(p.poll() is None for p in (frozen, *others))
        time.sleep(0.1)
    assert events("stopped"), "the worker never reached its attribute transaction"
    started = time.time()
    time.sleep(freeze)
    os.kill(frozen.pid, signal.SIGCONT)
    errors = [p.communicate(timeout=300)[1] for p in (frozen, *others)]
    wall = time.time() - started
    assert [p.returncode for p in (frozen, *others)] == [0] * 4, errors
    assert not any("Traceback" in e for e in errors), errors

    study = optuna.load_study(study_name="pg", storage=open_storage(url, tmp_path))
    states = _states(study)
    assert states.count(TrialState.COMPLETE) == budget, states  # exactly the budget
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    if where == "attributes":  # the frozen worker's trial: failed as stale, and retried
        (ours,) = [t for t in study.get_trials()
                   if t._trial_id == events("stopped")[0]["trial_id"]]
        assert ours.state == TrialState.FAIL
        assert ours.user_attrs["failure"].startswith("its worker stopped sending heartbeats")
    else:  # its claim was undone: no trial of its own, none failed
        assert TrialState.FAIL not in states
    # the others went on finishing trials while it was frozen
    pid = frozen.pid
    during = [e for e in events("complete") if e["pid"] != pid
              and started < e["t"] < started + freeze]
    assert len(during) >= 2, (len(during), errors)
    # and none of their storage calls waited for the frozen one (a loaded machine's margin:
    # 3 heartbeats, while the freeze lasted 10)
    waits = [e["seconds"] for e in events("slow_call") if e["pid"] != pid]
    assert max(waits, default=0) < 3 * heartbeat, (waits, errors)
    # the frozen worker, continued, says what happened in one line
    said = [line for line in errors[0].splitlines() if line.strip()]
    assert len(said) == 1 and "paused inside a database transaction" in said[0], errors[0]
    print(f"{len(during)} trials finished by the others during the {freeze:g} s freeze; their "
          f"longest storage call {max(waits, default=0):.2f} s; wall {wall:.0f} s")
