"""What a search and a retraining say as they go.

:class:`SearchReporter` is an Optuna callback: after each trial this worker finishes it prints
one line (the budget's count, the trial, its state, objective values or the reason in a word,
the pairing and bound, its time, and the best so far, read from the study, so that with several
workers on one storage it is the best of all of them)::

    [ 4/20]  trial 3   COMPLETE  nll 93.412     logistic/normal:3 alpha 0.50 K 2  41.2 s  best ...
    [ 5/20]  trial 4   PRUNED    at epoch 2     normal/normal:3 alpha 1.00 K 1  12.0 s  best ...
    [ 5/20]  trial 5   FAIL      non-finite loss  cauchy/cauchy:3 alpha 0.13 K 5  3.1 s  best ...

each ending in the best so far, e.g. ``best 91.802 (trial 1)``. :func:`study_notes` says what
a study that is retrained still lacks (unfinished, fewer finished trials than its budget,
trials still RUNNING); :func:`describe_config` and :func:`seconds` spell a model and a duration
in the same short words.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["SearchReporter", "describe_config", "failure_word", "seconds", "study_notes"]


def seconds(s: float) -> str:
    """A duration as '8.2 s', '3 min 05 s' or '1 h 02 min'."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def describe_config(latent: str, alpha: float | None, samples: int | None,
                    likelihood: str | None = None) -> str:
    """The pairing and the bound in short: 'logistic/normal:3 alpha 0.50 K 2 [bernoulli]'."""
    words = [latent.replace(" ", "")]
    if alpha is not None:
        words.append(f"alpha {alpha:.2f} K {samples}")
    if likelihood:
        words.append(likelihood)
    return " ".join(words)


# a failure's recorded reason -> one word or two (the full reason stays in the trial's
# 'failure' attribute)
_FAILURES = (("non-finite", "non-finite loss"), ("heartbeat", "worker lost"),
             ("worker stopped", "worker lost"), ("database", "database outage"),
             ("not run", "not needed"))


def failure_word(reason: str | None) -> str:
    """The reason a trial failed, in a word or two."""
    text = (reason or "").lower()
    for needle, word in _FAILURES:
        if needle in text:
            return word
    return "error" if not text else text.split(":")[0].split(";")[0][:30]


class SearchReporter:
    """An Optuna callback: one line per trial this worker finishes (see the module).
    ``counts(study)``: the study's trials by state (from the storage, so of every worker)."""

    def __init__(self, spec, counts: Callable[[optuna.Study], dict], out: TextIO | None = None):
        from ..models import model_class

        self.spec, self.counts, self.out = spec, counts, out
        self.bounded = model_class(spec.base.model).has_bound
        self.width = len(str(spec.trials))

    def say(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def start(self, study: optuna.Study, worker: int) -> None:
        """The line a worker prints before its first trial."""
        try:
            done = self.finished(study)
        except Exception:  # a database hiccup: the worker's own loop deals with it
            return
        goal = ", ".join(f"{o} ({d})" for o, d in zip(self.spec.objectives,
                                                      self.spec.directions, strict=True))
        rest = (f"runs trials until {self.spec.trials} have finished" if done < self.spec.trials
                else "has nothing left to run")
        self.say(f"study {study.study_name!r}: {done} of {self.spec.trials} trials finished, "
                 f"objective {goal}; worker {worker} {rest}")

    def finished(self, study: optuna.Study) -> int:
        """Finished trials of the budget (COMPLETE and PRUNED), of every worker."""
        counts = self.counts(study)
        return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            line = self.line(study, trial)
        except Exception as err:  # reading the study failed: the trial itself is untouched
            line = (f"trial {trial.number} {trial.state.name} (the count and the best so far "
                    f"could not be read: {type(err).__name__})")
        self.say(line)

    def line(self, study: optuna.Study, trial: FrozenTrial) -> str:
        count = f"[{self.finished(study):>{self.width}}/{self.spec.trials}]"
        state = trial.state.name
        if state == "COMPLETE":
            what = "  ".join(f"{o} {v:.3f}" for o, v in zip(self.spec.objectives, trial.values,
                                                              strict=True))
        elif state == "PRUNED":
            steps = trial.intermediate_values
            what = f"at epoch {max(steps) + 1}" if steps else "before its first epoch"
        else:
            what = failure_word(trial.user_attrs.get("failure"))
        words = [count, f"trial {trial.number:<{self.width}}", f"{state:8}", f"{what:14}",
                 self.pairing(trial)]
        if trial.duration is not None:
            words.append(seconds(trial.duration.total_seconds()))
        retried = trial.system_attrs.get("failed_trial")
        if retried is not None:
            resumed = trial.user_attrs.get("resumed_from_trial")
            words.append(f"retry of trial {retried}"
                         + (f", resumed from trial {resumed}'s checkpoint"
                            if resumed is not None else ""))
        words.append(self.best(study))
        return "  ".join(w for w in words if w)

    def pairing(self, trial: FrozenTrial) -> str:
        space, p = self.spec.space, trial.params
        latent = trial.user_attrs.get("latent")
        if latent is None:
            return ""
        bound = (p.get("alpha", space.alpha[0]), int(p.get("samples", space.samples[0]))) \
            if self.bounded else (None, None)
        return describe_config(latent, *bound, p.get("likelihood"))

    def best(self, study: optuna.Study) -> str:
        if len(self.spec.objectives) > 1:
            front = len(study.best_trials)
            return f"Pareto front {front} trial{'s' * (front != 1)}"
        try:
            best = study.best_trial
        except ValueError:  # no complete trial yet
            return "best -"
        return f"best {best.value:.3f} (trial {best.number})"


def study_notes(study: optuna.Study, budget: int) -> list[str]:
    """What a study about to be retrained lacks: trials still RUNNING (a live worker, or a dead
    one's trial not yet failed), fewer finished trials than its budget."""
    notes = []
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    if finished < budget:
        notes.append(f"the study is unfinished: {finished} of its budget of {budget} trials "
                     "have finished, so the best trial so far is retrained; resume the search "
                     "with the same 'autovae search' command for the rest")
    running = states.count(TrialState.RUNNING)
    if running:
        notes.append(f"{running} trial{'s are' if running > 1 else ' is'} RUNNING: a worker is "
                     "still at work (or died, and its trial is failed after three missed "
                     "heartbeats); a better trial may still come")
    return notes
