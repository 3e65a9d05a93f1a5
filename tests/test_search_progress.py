"""What a search and retrain-best print as they go (issue 28): a line per finished trial with
the budget's count and the best so far (checked against the study), nothing with --quiet,
and retrain-best's header, runs, resumptions and notes on an unfinished study."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autovae.cli import main
from autovae.config import Config
from autovae.models import NonFiniteLossError
from autovae.search import SearchSpace, StudySpec, create_study, open_storage
from autovae.search.progress import failure_word, seconds
from autovae.search.study import run_search, run_worker
from autovae.search.synthetic import SyntheticObjective

SRC = str(Path(__file__).resolve().parents[1] / "src")
SPACE = SearchSpace(pairs=["normal/normal", "logistic/normal", "cauchy/cauchy"],
                    alpha=(0.0, 1.0), samples=(1, 3), latent_dim=(4, 4), hidden=(16, 16),
                    depth=(1, 1))
BASE = Config(data="digits", epochs=3, batch_size=64, hidden=16, depth=1, latent_clip=50.0,
              nll_samples=5)
LINE = re.compile(r"^\[\s*(?P<done>\d+)/(?P<budget>\d+)\]\s+trial (?P<trial>\d+)\s+"
                  r"(?P<state>COMPLETE|PRUNED|FAIL)\s+(?P<what>.+?)\s{2,}.*\s{2}"
                  r"best (?:-|(?P<best>[\d.]+) \(trial (?P<best_trial>\d+)\))$")


def _lines(text: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m]


class _FailsTrialOne(SyntheticObjective):
    """The synthetic objective, without its sleeps; trial 1's loss goes non-finite."""

    epoch_seconds = 0.0

    def _train(self, config, run_folder, resume, report):
        if run_folder.name == "00001":
            raise NonFiniteLossError("non-finite 'model' loss in epoch 1 (a test)")
        return super()._train(config, run_folder, resume, report)


def test_a_line_per_trial_with_the_count_and_the_best_so_far(tmp_path, capsys):
    spec = StudySpec(SPACE, BASE, ["nll"], trials=6, pruner="median")
    storage = open_storage(None, tmp_path)
    create_study(storage, "p", spec)
    assert run_worker(None, "p", tmp_path, objective=_FailsTrialOne, report=True) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("study 'p': 0 of 6 trials finished, objective nll "
                                          "(minimize); worker 0 runs trials")
    lines = _lines(out)
    trials = optuna.load_study(study_name="p", storage=storage).get_trials()
    assert [int(m["trial"]) for m in lines] == [t.number for t in trials]  # each one, in order
    assert len(out.splitlines()) == 1 + len(trials)
    best = None
    for m, t in zip(lines, trials, strict=True):
        assert m["state"] == t.state.name and m["budget"] == "6"
        done = [u for u in trials[:t.number + 1]
                if u.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert int(m["done"]) == len(done)
        if t.state == TrialState.COMPLETE:
            assert m["what"] == f"nll {t.value:.3f}"
            if best is None or t.value < best.value:
                best = t
        elif t.state == TrialState.PRUNED:
            assert m["what"] == f"at epoch {max(t.intermediate_values) + 1}"
        else:
            assert m["what"] == "non-finite loss" and t.number == 1
        assert t.user_attrs["latent"] in m.group(0)
        if best is None:
            assert m["best"] is None
        else:
            assert (m["best"], int(m["best_trial"])) == (f"{best.value:.3f}", best.number)
    assert lines[-1]["done"] == "6" and best.number == min(
        (u for u in trials if u.state == TrialState.COMPLETE), key=lambda u: u.value).number

    # the library's default, and the same study when its budget is met: nothing is printed
    spec2 = StudySpec(SPACE, BASE, ["nll"], trials=2, pruner="none")
    create_study(open_storage(None, tmp_path / "silent"), "silent", spec2)
    assert run_worker(None, "silent", tmp_path / "silent", objective=_FailsTrialOne) == 0
    assert capsys.readouterr().out == ""


def test_parallel_workers_each_print_their_trials_and_the_best_of_all(tmp_path):
    spec = StudySpec(SPACE, BASE.replace(epochs=2), ["nll"], trials=8, pruner="none")
    storage = open_storage(None, tmp_path)
    create_study(storage, "par", spec)
    env = {**os.environ, "PYTHONPATH": SRC, "AUTOVAE_HEARTBEAT_SECONDS": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "autovae.search.synthetic", "--study", "par", "--dir",
           str(tmp_path), "--epoch-seconds", "0.1", "--report"]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)], env=env, stdout=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    trials = {t.number: t for t in optuna.load_study(study_name="par",
                                                     storage=storage).get_trials()}
    assert [t.state for t in trials.values()].count(TrialState.COMPLETE) == 8
    by_worker = [_lines(out) for out in outs]
    printed = sorted(int(m["trial"]) for lines in by_worker for m in lines)
    assert printed == sorted(trials)  # each trial by the one worker that ran it
    for lines in by_worker:
        counts = [int(m["done"]) for m in lines]
        assert counts == sorted(counts)
        for m in lines:  # the best shown is a finished trial of either worker, no worse
            best = trials[int(m["best_trial"])]
            assert m["best"] == f"{best.value:.3f}"
            assert best.value <= trials[int(m["trial"])].value
    # the trial that finished last saw all the others finished: the study's best, of all
    last = max(trials.values(), key=lambda t: t.datetime_complete)
    line = next(m for lines in by_worker for m in lines if int(m["trial"]) == last.number)
    overall = min(trials.values(), key=lambda t: t.value)
    assert (line["done"], int(line["best_trial"])) == ("8", overall.number)


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_search_reports_unless_quiet(tmp_path, capsys, quiet):
    args = ["search", "--dir", str(tmp_path), "--trials", "2", "--pruner", "none", "--data",
            "digits", "--epochs", "1", "--batch-size", "64", "--limit", "300", "--val-size",
            "100", "--nll-samples", "5", "--validation-nll-samples", "5"]
    assert main(args + ["--quiet"] * quiet) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out  # the analysis is printed either way
    lines = _lines(out)
    if quiet:
        assert lines == [] and "trials finished" not in out
    else:
        assert [(m["trial"], m["done"], m["state"]) for m in lines] == [
            ("0", "1", "COMPLETE"), ("1", "2", "COMPLETE")]
        assert "study 'autovae': 0 of 2 trials finished" in out


def test_retrain_best_announces_runs_resumptions_and_an_unfinished_study(tmp_path, capsys):
    space = SearchSpace(pairs=["logistic/normal", "laplace/laplace"], alpha=(0.5, 0.5),
                        samples=(2, 2), latent_dim=(3, 3), hidden=(16, 16), depth=(1, 1))
    spec = StudySpec(space, BASE.replace(epochs=1), ["nll"], trials=2, pruner="none",
                     validation_nll_samples=5)
    study = run_search(None, "rb", tmp_path, spec)
    spec.trials = 4  # a larger budget: the study is now unfinished
    create_study(open_storage(None, tmp_path), "rb", spec)
    study.ask()  # and a trial RUNNING, as when a worker is still at it
    capsys.readouterr()
    argv = ["retrain-best", "--dir", str(tmp_path), "--study", "rb", "--seeds", "1",
            "--epochs", "1", "--nll-samples", "5", "--limit", "300"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    best = min(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    assert f"retraining trial {best.number} of study 'rb' (nll {best.value:.3f}" in out
    assert "3 models x 1 seed" in out
    assert "note: the study is unfinished: 2 of its budget of 4 trials have finished" in err
    assert "note: 1 trial is RUNNING" in err
    starts = [line for line in out.splitlines() if re.match(r"\d of 3: .*seed 0$", line)]
    assert starts == ["1 of 3: best, seed 0", "2 of 3: normal/normal, seed 0",
                      "3 of 3: normal/normal, same bound, seed 0"]
    result = json.loads((tmp_path / "retrain.json").read_text())
    assert result["trial"] == best.number and len(result["study_notes"]) == 2
    assert result["best"]["test_nll_sd"] is None
    nll = result["best"]["runs"][0]["test_nll"]
    assert f"1 of 3: best, seed 0: test NLL {nll:.2f} nats" in out
    assert f"best                       test NLL {nll:.2f} nats (1 seed: no spread)" in out
    assert "+-" not in out

    # more epochs: each stopped run resumes from its checkpoint, and says so
    assert main([*argv[:-5], "2", *argv[-4:]]) == 0
    out = capsys.readouterr().out
    assert "2 of 3: normal/normal, seed 0 (resumes its stopped run at epoch 1 of 2)" in out
    assert main([*argv[:-5], "2", *argv[-4:]]) == 0
    out = capsys.readouterr().out
    assert "1 of 3: best, seed 0 (already trained, 2 of 2 epochs: evaluated again)" in out
    assert main([*argv[:-5], "2", *argv[-4:], "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "retraining trial" not in out and "of 3:" not in out
    assert "note: the study is unfinished" in err  # a caveat, not progress: said anyway


def test_words():
    assert [seconds(s) for s in (8.24, 185, 3725)] == ["8.2 s", "3 min 05 s", "1 h 02 min"]
    assert failure_word("trial 3's worker stopped sending heartbeats") == "worker lost"
    assert failure_word("database error: connection refused") == "database outage"
    assert failure_word(None) == "error"


def test_a_study_that_cannot_be_read_leaves_the_trial_alone(tmp_path, capsys, monkeypatch):
    from autovae.search import progress

    spec = StudySpec(SPACE, BASE, ["nll"], trials=2, pruner="none")
    create_study(open_storage(None, tmp_path), "r", spec)

    def unreadable(self, study):
        raise RuntimeError("database gone")

    monkeypatch.setattr(progress.SearchReporter, "finished", unreadable)
    assert run_worker(None, "r", tmp_path, objective=_FailsTrialOne, report=True) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("trial 0 COMPLETE (the count and the best so far could not be read: "
                      "RuntimeError)")
    study = optuna.load_study(study_name="r", storage=open_storage(None, tmp_path))
    assert [t.state for t in study.get_trials()][0] == TrialState.COMPLETE
