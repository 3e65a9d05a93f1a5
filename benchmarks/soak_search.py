"""Soak test of the search at cluster scale: many workers, killed workers, a database restart.

Starts its own PostgreSQL on 127.0.0.1 (Debian's binaries, run as user postgres; needs root),
creates one study of ``--trials`` short trials (the quick preset's space, TPE, the median
pruner), runs ``--workers`` worker processes on it, SIGKILLs ``--kill-fraction`` of them at
random moments (starting a replacement for each) and restarts PostgreSQL once (``-m fast``: every
connection is cut) when about 40% of the trials are done. The trials are
:mod:`autovae.search.synthetic`'s: the real worker, storage, heartbeat, retry and resume code,
with each epoch's training replaced by a sleep, so that 32 workers fit on a 2-core machine.

It passes (exit 0) when the study holds exactly ``--trials`` finished trials, none RUNNING or
WAITING, every killed worker's trial was failed with a recorded reason and retried from its
checkpoint (or not retried, with the reason), every COMPLETE that the database acknowledged is
still COMPLETE, and no worker held more than 2 connections at once (pg_stat_activity, sampled
every 0.2 s). It prints trials per hour, the storage's share of a trial's wall time, the
connection peak and the restart's effect::

    python benchmarks/soak_search.py [--workers 32] [--trials 256] [--epoch-seconds 1.5]

``--freeze SECONDS`` adds the frozen-worker scenario: worker 0 stops itself (SIGSTOP) inside
the transaction that writes its first trial's attributes, holding that trial's row lock, and is
continued (SIGCONT) after SECONDS. It passes when no other worker's storage call that overlapped
the freeze lasted longer than one heartbeat interval, and the frozen worker's trial was failed
as stale and retried. The issue-26 goal (16 workers, a 60 s freeze, no kills or restart)::

    python benchmarks/soak_search.py --workers 16 --trials 64 --freeze 60 --kill-fraction 0 \\
        --no-restart
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)


class Postgres:
    """A private PostgreSQL server on 127.0.0.1 in a temporary folder, stopped by its PID."""

    def __init__(self, max_connections: int):
        initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not initdb or os.geteuid() != 0:
            raise SystemExit("needs Debian's postgresql package and root (runs it as postgres)")
        self.bin = Path(initdb[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="autovae-soak-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        shutil.chown(self.root, "postgres")
        shutil.chown(self.sock, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.max_connections = max_connections
        self._su(f"{self.bin}/initdb -D {self.data} --auth=trust -U postgres")
        self.ctl("start")
        self._su(f"psql -X -q -h {self.sock} -p {self.port} -U postgres -c 'CREATE DATABASE soak'")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/soak"
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=soak"

    def _su(self, cmd: str) -> None:
        subprocess.run(["su", "postgres", "-c", cmd], check=True, capture_output=True)

    def ctl(self, action: str) -> None:
        opts = (f"-o '-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} "
                f"-c max_connections={self.max_connections}'")
        self._su(f"{self.bin}/pg_ctl -D {self.data} -l {self.root}/log -w -m fast {opts} "
                 f"{action}")

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


class Monitor(threading.Thread):
    """Samples pg_stat_activity (connections per worker process) and the trial states."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn, self.stop = dsn, threading.Event()
        self.peak: dict[str, int] = {}
        self.total_peak = 0
        self.finished: list[tuple[float, int]] = []  # (time, complete + pruned)
        self.down = 0.0  # seconds the monitor could not reach the database
        # (worker, backend pid, statement start) -> (first seen, seconds waited on a lock,
        # the workers holding the lock it waits for)
        self.lock_waits: dict[tuple, tuple[float, float, frozenset]] = {}

    def run(self) -> None:
        import psycopg2

        db = None
        while not self.stop.is_set():
            try:
                if db is None:
                    db = psycopg2.connect(self.dsn, application_name="soak-monitor")
                    db.autocommit = True
                with db.cursor() as cur:
                    cur.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE "
                                "application_name LIKE 'autovae:%' GROUP BY 1")
                    rows = cur.fetchall()
                    cur.execute("SELECT count(*) FROM trials WHERE state IN "
                                "('COMPLETE', 'PRUNED')")
                    done = cur.fetchone()[0]
                    # statements of the workers waiting for a lock another transaction holds
                    cur.execute("SELECT a.application_name, a.pid, a.query_start, extract(epoch "
                                "FROM now() - a.query_start), array(SELECT b.application_name "
                                "FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids("
                                "a.pid))) FROM pg_stat_activity a WHERE a.application_name LIKE "
                                "'autovae:%' AND a.wait_event_type = 'Lock'")
                    for app, pid, start, seconds, blockers in cur.fetchall():
                        key = (app, pid, start)
                        first, _, seen = self.lock_waits.get(key, (time.time(), 0.0,
                                                                   frozenset()))
                        self.lock_waits[key] = (first, float(seconds), seen | set(blockers))
                for app, n in rows:
                    self.peak[app] = max(self.peak.get(app, 0), n)
                self.total_peak = max(self.total_peak, sum(n for _, n in rows))
                self.finished.append((time.time(), done))
            except Exception:  # the restart: reconnect
                db = None
                self.down += 0.2
            time.sleep(0.2)

    def done(self) -> int:
        return self.finished[-1][1] if self.finished else 0


def _running_pids(dsn: str) -> set[int]:
    """The process ids of the workers running a trial now (their trials' ``worker`` attr)."""
    import psycopg2

    try:
        with psycopg2.connect(dsn, application_name="soak") as db, db.cursor() as cur:
            cur.execute("SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON "
                        "t.trial_id = a.trial_id WHERE t.state = 'RUNNING' AND a.key = 'worker'")
            return {int(json.loads(v).rsplit(":", 1)[1]) for (v,) in cur.fetchall()}
    except Exception:
        return set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (quick: 4)")
    parser.add_argument("--epoch-seconds", type=float, default=1.5)
    parser.add_argument("--kill-fraction", type=float, default=0.15)
    parser.add_argument("--heartbeat", type=float, default=2.0, help="AUTOVAE_HEARTBEAT_SECONDS")
    parser.add_argument("--freeze", type=float, default=0.0,
                        help="SIGSTOP worker 0 inside a transaction for this many seconds")
    parser.add_argument("--no-restart", action="store_true", help="no PostgreSQL restart")
    parser.add_argument("--quick-trial-seconds", type=float, default=None,
                        help="wall time of one quick-preset trial, for the storage's share of it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    import optuna
    from optuna.trial import TrialState

    from autovae.search import PRESETS, StudySpec, create_study, open_storage

    work = Path(tempfile.mkdtemp(prefix="autovae-soak-"))
    pg = Postgres(max_connections=100)
    procs: dict[int, subprocess.Popen] = {}
    try:
        space, base = PRESETS["quick"]
        from autovae.config import Config

        spec = StudySpec(space, Config(**{**base, "epochs": args.epochs}), ["nll"], args.trials,
                         sampler="tpe", pruner="median")
        storage = open_storage(pg.url, work)
        create_study(storage, "soak", spec)
        storage.engine.dispose()
        events = work / "events.jsonl"
        env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1",
               "AUTOVAE_HEARTBEAT_SECONDS": str(args.heartbeat)}
        cmd = [sys.executable, "-m", "autovae.search.synthetic", "--storage", pg.url,
               "--study", "soak", "--dir", str(work), "--epoch-seconds",
               str(args.epoch_seconds), "--log", str(events)]

        def start(index: int) -> None:
            err = open(work / f"worker-{index}.err", "w")
            frozen = ["--stop-in-transaction"] if args.freeze and index == 0 else []
            p = subprocess.Popen([*cmd, "--worker", str(index), *frozen], env=env, stderr=err,
                                 stdout=subprocess.DEVNULL)
            procs[index] = p

        def logged(kind: str) -> list[dict]:
            text = events.read_text() if events.exists() else ""
            return [e for e in map(json.loads, text.splitlines()) if e["event"] == kind]

        monitor = Monitor(pg.dsn)
        monitor.start()
        started = time.time()
        for i in range(args.workers):
            start(i)
        n_kill = math.ceil(args.kill_fraction * args.workers)
        kill_at = sorted(rng.uniform(0.1, 0.8) * args.trials for _ in range(n_kill))
        restart_at = math.inf if args.no_restart else 0.4 * args.trials
        killed: list[dict] = []
        restart: dict = {}
        freeze: dict = {}  # {"t": when worker 0 stopped, "end": when it was continued}
        next_index = args.workers
        while any(p.poll() is None for p in procs.values()):
            done = monitor.done()
            if args.freeze and "end" not in freeze:
                if "t" not in freeze and logged("stopped"):
                    freeze.update(t=logged("stopped")[0]["t"], done=done,
                                  trial_id=logged("stopped")[0]["trial_id"])
                if "t" in freeze and time.time() >= freeze["t"] + args.freeze:
                    procs[0].send_signal(signal.SIGCONT)
                    freeze["end"] = time.time()
            if kill_at and done >= kill_at[0]:
                kill_at.pop(0)
                time.sleep(rng.uniform(0, args.epoch_seconds * args.epochs))  # a random moment
                alive = [i for i, p in procs.items() if p.poll() is None]
                busy = _running_pids(pg.dsn)  # a worker in the middle of a trial, if any
                alive = [i for i in alive if not (args.freeze and i == 0)]  # (not the frozen)
                victim = rng.choice([i for i in alive if procs[i].pid in busy] or alive)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                killed.append({"index": victim, "pid": procs[victim].pid, "t": time.time(),
                               "done": done})
                start(next_index)  # its replacement
                next_index += 1
            if not restart and done >= restart_at:
                t0 = time.time()
                pg.ctl("restart")
                restart = {"t": t0, "seconds": time.time() - t0, "done": done}
            if time.time() - started > 1200:
                print("soak: over 20 minutes, giving up", file=sys.stderr)
                break
            time.sleep(0.2)
        wall = time.time() - started
        time.sleep(0.5)
        monitor.stop.set()
        monitor.join()
        codes = {i: p.wait() for i, p in procs.items()}

        # -- the verdict -------------------------------------------------------------------------
        study = optuna.load_study(study_name="soak", storage=open_storage(pg.url, work,
                                                                           heartbeat=False))
        trials = study.get_trials()
        states = [t.state for t in trials]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        host = socket.gethostname()
        checks = {}
        checks[f"exactly {args.trials} finished trials (complete or pruned)"] = \
            finished == args.trials
        checks["none left RUNNING or WAITING"] = not {TrialState.RUNNING,
                                                      TrialState.WAITING} & set(states)
        # every killed worker's trial: failed with a reason, retried from its checkpoint
        victims = []
        for k in killed:
            ours = [t for t in trials if t.user_attrs.get("worker") == f"{host}:{k['pid']}"
                    and t.state == TrialState.FAIL]
            for t in ours:
                reason = t.user_attrs.get("failure", "")
                retry = [r for r in trials if t.number in r.system_attrs.get("retry_history", [])
                         and r.system_attrs["retry_history"][-1] == t.number]
                checkpoint = (work / "trials" / f"{t.number:05d}" / "checkpoint.pt").is_file()
                resumed = bool(retry) and (not checkpoint or retry[0].user_attrs.get(
                    "resumed_from_trial") == t.number)
                ok = bool(reason) and (resumed or "not retried" in reason)
                victims.append((k["pid"], t.number, checkpoint, retry[0].number if retry
                                else None, retry[0].state.name if retry else None, ok, reason))
        checks["every killed worker's trial failed with its reason and retried from its "
               "checkpoint (or said why not)"] = all(v[5] for v in victims)
        acknowledged = {e["trial_id"] for e in lines if e["event"] == "complete"}
        by_id = {t._trial_id: t for t in trials}
        lost = [i for i in acknowledged if by_id[i].state != TrialState.COMPLETE]
        checks["no completed trial lost"] = not lost and len(acknowledged) == states.count(
            TrialState.COMPLETE)
        worker_peak = max(monitor.peak.values(), default=0)
        checks["no worker held more than 2 connections"] = worker_peak <= 2
        if freeze:
            t0, t1 = freeze["t"], freeze.get("end", time.time())
            frozen_pid = procs[0].pid
            frozen_app = f":{frozen_pid}"
            others = [(seconds, any(b.endswith(frozen_app) for b in blockers))
                      for (app, _, _), (_, seconds, blockers) in monitor.lock_waits.items()
                      if not app.endswith(frozen_app)]
            freeze["lock_wait"] = max((w for w, by_frozen in others if by_frozen), default=0.0)
            freeze["other_waits"] = sorted(w for w, by_frozen in others if not by_frozen)
            overlapping = [e for e in lines if e["event"] == "slow_call"
                           and e["pid"] != frozen_pid and e["since"] < t1
                           and e["since"] + e["seconds"] > t0]
            longest = max(overlapping, key=lambda e: e["seconds"], default=None)
            freeze["longest"] = longest
            freeze["completed"] = sum(e["event"] == "complete" and e["pid"] != frozen_pid
                                      and t0 < e["t"] < t1 for e in lines)
            frozen_trial = {t._trial_id: t for t in trials}.get(freeze["trial_id"])
            freeze["reason"] = frozen_trial.user_attrs.get("failure", "") if frozen_trial else ""
            checks[f"no other worker waited for the frozen one's locks more than one heartbeat "
                   f"({args.heartbeat:g} s; frozen {args.freeze:g} s)"] = \
                freeze["lock_wait"] <= args.heartbeat
            checks["the frozen worker's trial was failed as stale and retried"] = \
                frozen_trial is not None and frozen_trial.state == TrialState.FAIL and \
                "retried as trial" in freeze["reason"]
        checks["every worker exited 0 (the killed ones aside)"] = all(
            c == 0 for i, c in codes.items() if i not in {k["index"] for k in killed})

        # -- the figures -------------------------------------------------------------------------
        starts = [e for e in lines if e["event"] in ("start", "exit")]
        by_pid: dict[int, list] = {}
        for e in starts:
            by_pid.setdefault(e["pid"], []).append(e)
        shares, storage_per_trial, trial_walls = [], [], []
        for seq in by_pid.values():
            for a, b in zip(seq, seq[1:], strict=False):
                if b["idle_s"] > a["idle_s"] or a["event"] != "start":
                    continue  # a wait for a free slot between them: not a trial's time
                dt, ds = b["t"] - a["t"], b["storage_s"] - a["storage_s"]
                shares.append(ds / dt)
                storage_per_trial.append(ds)
                trial_walls.append(dt)
        completes = sorted(e["t"] for e in lines if e["event"] == "complete")
        first = min(e["t"] for e in lines if e["event"] == "start")
        span = (completes[-1] - first) if completes else wall
        reasons: dict[str, int] = {}
        for t in trials:
            if t.state == TrialState.FAIL:
                r = t.user_attrs.get("failure", "(none)").split(":")[0].split(";")[0]
                reasons[r] = reasons.get(r, 0) + 1
        outage_lines = sum(("unavailable" in (work / f"worker-{i}.err").read_text())
                           for i in procs)
        err_lines = sum(len((work / f"worker-{i}.err").read_text().splitlines()) for i in procs)

        def rate(t0, t1):
            n = sum(t0 <= c < t1 for c in completes)
            return n / (t1 - t0) * 3600

        print(f"soak: {args.workers} workers (+{len(killed)} replacements), {args.trials} "
              f"trials of {args.epochs} x {args.epoch_seconds:g} s, heartbeat "
              f"{args.heartbeat:g} s, {os.cpu_count()} cores; PostgreSQL "
              f"max_connections={pg.max_connections}")
        print(f"  wall {wall:.0f} s; {args.trials / span * 3600:.0f} trials/hour from the first "
              f"trial's start to the last completion ({span:.0f} s)")
        print(f"  states: {', '.join(f'{s.name} {states.count(s)}' for s in TrialState if states.count(s))}; "  # noqa: E501
              f"failures: {reasons}")
        if shares:
            print(f"  storage per trial (main thread): median {statistics.median(storage_per_trial):.3f} s, "  # noqa: E501
                  f"mean {statistics.mean(storage_per_trial):.3f} s, p95 "
                  f"{sorted(storage_per_trial)[int(0.95 * len(storage_per_trial))]:.3f} s over "
                  f"{len(shares)} trials; share of a trial's wall time: median "
                  f"{100 * statistics.median(shares):.1f}%, mean {100 * statistics.mean(shares):.1f}%"  # noqa: E501
                  f" (trial wall median {statistics.median(trial_walls):.2f} s)")
            if args.quick_trial_seconds:
                print(f"  storage's share of a quick-preset trial ({args.quick_trial_seconds:.1f} "
                      f"s): {100 * statistics.mean(storage_per_trial) / args.quick_trial_seconds:.2f}%"  # noqa: E501
                      " (mean storage seconds per trial / its wall time)")
        by_call: dict[str, list] = {}
        for e in lines:
            for name, (calls, seconds) in e.get("by_call", {}).items():
                by_call.setdefault(name, [0, 0.0])
                by_call[name][0] += calls
                by_call[name][1] += seconds
        top = sorted(by_call.items(), key=lambda kv: -kv[1][1])[:8]
        n_exit = sum(e["event"] == "exit" for e in lines)
        if top:
            print(f"  storage seconds by call ({n_exit} workers that exited): " + ", ".join(
                f"{name} {s:.1f} s/{c}" for name, (c, s) in top))
        print(f"  connections: peak {worker_peak} per worker over {len(monitor.peak)} worker "
              f"processes; peak {monitor.total_peak} in all")
        if restart:
            t0 = restart["t"]
            after = [c for c in completes if c > t0]
            print(f"  restart of PostgreSQL at {restart['done']} finished trials took "
                  f"{restart['seconds']:.1f} s; first completion {after[0] - t0:.1f} s after it; "
                  f"{reasons.get('database outage', 0) + reasons.get('database error', 0)} "
                  f"trials failed by it and retried; {outage_lines} workers said "
                  f"'unavailable' ({err_lines} stderr lines in all); trials/hour 30 s before "
                  f"{rate(t0 - 30, t0):.0f}, 30 s after {rate(t0, t0 + 30):.0f}")
        print(f"  killed {len(killed)} workers ({100 * len(killed) / args.workers:.0f}%): "
              f"{len(victims)} of their trials failed -> " + "; ".join(
                  f"#{n} {'(checkpoint) ' if c else ''}-> retry #{r} {s}" for _, n, c, r, s, _, _
                  in victims))
        if freeze:
            longest = freeze["longest"]
            print(f"  freeze: worker 0 stopped inside its attribute transaction at "
                  f"{freeze['done']} finished trials, for {freeze.get('end', 0) - freeze['t']:.1f}"
                  f" s; the others finished {freeze['completed']} trials meanwhile; their "
                  "longest storage call overlapping it: "
                  + (f"{longest['seconds']:.2f} s ({longest['call']})" if longest else
                     "none over 0.2 s")
                  + f" against a heartbeat of {args.heartbeat:g} s; the frozen trial: "
                  f"{freeze['reason'] or '(no failure recorded)'}")
            waits = freeze["other_waits"]
            print(f"  lock waits of the other workers (pg_stat_activity and pg_blocking_pids, "
                  f"sampled every 0.2 s): on the frozen worker, longest "
                  f"{freeze['lock_wait']:.2f} s; on each other (the study lock's queue), "
                  f"{len(waits)} waits seen, median "
                  f"{statistics.median(waits) if waits else 0:.2f} s, longest "
                  f"{max(waits, default=0):.2f} s")
            said = (work / "worker-0.err").read_text().strip().splitlines()
            print(f"  the frozen worker said ({len(said)} lines): " + " | ".join(said[-3:]))
        for i, code in codes.items():
            if code:
                said = (work / f"worker-{i}.err").read_text().strip().splitlines()
                print(f"  worker {i} exited {code}: {said[-1] if said else '(nothing said)'}")
        for name, ok in checks.items():
            print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
        if lost:
            print(f"  lost: {lost}")
        return 0 if all(checks.values()) else 1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        pg.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  work folder: {work}")


if __name__ == "__main__":
    raise SystemExit(main())
