"""The kill-and-resume harness of the training tests: run a training command, SIGKILL it after
its first checkpoint, resume it, and compare with an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from autovae.run import Run

SRC = str(Path(__file__).resolve().parents[2] / "src")
HELPERS = str(Path(__file__).resolve().parent)


def child_env(*paths: str) -> dict:
    """The environment of a child interpreter that imports this checkout's autovae (and
    ``paths``), on one thread."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, *paths]), "OMP_NUM_THREADS": "1"}


def kill_after_first_checkpoint(command: list[str], run: Path, env: dict, margin: float) -> int:
    """Start ``command``, SIGKILL it ``margin`` seconds after its first checkpoint appears;
    return the epoch of the checkpoint it left."""
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    checkpoint = Run(run).checkpoint_path
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not checkpoint.exists():
        time.sleep(0.01)
    time.sleep(margin)  # into a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return torch.load(checkpoint, weights_only=True)["epoch"]


def assert_same_checkpoints(a_path: Path, b_path: Path, epochs: int) -> None:
    """Bit-identical model, every optimizer's state, the scaler and the history (timings
    aside)."""
    a = torch.load(Run(a_path).checkpoint_path, weights_only=True)
    b = torch.load(Run(b_path).checkpoint_path, weights_only=True)
    assert a["epoch"] == b["epoch"] == epochs
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizers"].keys() == b["optimizers"].keys()
    for name, state in b["optimizers"].items():
        for index, values in state["state"].items():
            for key, value in values.items():
                other = a["optimizers"][name]["state"][index][key]
                assert torch.equal(torch.as_tensor(other), torch.as_tensor(value)), (name, key)
    assert a["scaler"] == b["scaler"]
    rows_a, rows_b = Run(a_path).history(), Run(b_path).history()
    assert [r["epoch"] for r in rows_a] == list(range(1, epochs + 1))
    drop = ("seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows_b]


def check_sigkill_resume(command: Callable[[Path, bool], list[str]], tmp_path: Path,
                         epochs: int, env: dict, margin: float) -> Path:
    """``command(folder, resume)`` trains ``epochs`` epochs into ``folder``. Run it into
    tmp_path/killed, SIGKILL it ``margin`` s after its first checkpoint, resume it to the end,
    run it whole into tmp_path/whole, and assert the two runs are bit-identical; returns the
    whole run's folder."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    epoch_at_kill = kill_after_first_checkpoint(command(killed, False), killed, env, margin)
    assert 1 <= epoch_at_kill < epochs
    subprocess.run(command(killed, True), env=env, check=True)
    subprocess.run(command(whole, False), env=env, check=True)
    assert_same_checkpoints(killed, whole, epochs)
    return whole
