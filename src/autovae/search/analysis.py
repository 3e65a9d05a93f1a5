"""What a study found: best trials, top pairings, parameter importance, plots, retraining.

``analyze(study, folder)`` returns the table as text, computes fANOVA and PED-ANOVA importances
and writes ``history.png``, ``parallel.png`` and ``importance.png`` (``pareto.png`` for several
objectives) into the study folder. ``retrain_best`` trains the best configuration again with a
full budget, next to normal/normal with the same network and budget, over several seeds.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..beliefs import LatentSpec
from ..config import Config
from ..run import Run, StudyFolder
from .progress import describe_config, seconds, study_notes
from .study import OBJECTIVES, load_spec

__all__ = ["analyze", "importances", "retrain_best", "trial_table"]


def trial_table(study: optuna.Study, top: int = 10) -> str:
    """The best finished trials as a text table, with their pairing and bound."""
    spec = load_spec(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    key = (lambda t: t.values[0]) if spec.directions[0] == "minimize" else (lambda t: -t.values[0])
    trials = sorted(trials, key=key)[:top]
    names = spec.objectives
    lines = [f"{'trial':>5}  " + "  ".join(f"{n:>10}" for n in names)
             + "  alpha  K  likelihood           latent"]
    for t in trials:
        p = t.params
        alpha = p.get("alpha", spec.space.alpha[0])
        samples = p.get("samples", spec.space.samples[0])
        lik = p.get("likelihood", spec.space.likelihoods[0])
        lines.append(f"{t.number:>5}  " + "  ".join(f"{v:>10.3f}" for v in t.values)
                     + f"  {alpha:5.2f} {samples:2d}  {lik:20} {t.user_attrs.get('latent', '?')}")
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                        TrialState.RUNNING, TrialState.WAITING)}
    lines.append("trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return "\n".join(lines)


def importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """fANOVA and PED-ANOVA importance of each searched parameter (first objective)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3 or not complete[0].params:
        return {}
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    out = {}
    evaluators = {
        "fanova": optuna.importance.FanovaImportanceEvaluator(seed=0),
        "ped_anova": optuna.importance.PedAnovaImportanceEvaluator(),
    }
    for name, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=target)
        except (ValueError, RuntimeError) as err:  # e.g. too few distinct values
            out[name] = {"error": str(err)}
    return out


def _plots(study: optuna.Study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    name = load_spec(study).objectives[0]
    jobs = {"history.png": lambda: ovm.plot_optimization_history(study, target=target,
                                                                 target_name=name),
            "parallel.png": lambda: ovm.plot_parallel_coordinate(study, target=target,
                                                                 target_name=name),
            "importance.png": lambda: ovm.plot_param_importances(study, target=target,
                                                                 target_name=name)}
    if multi:
        jobs["pareto.png"] = lambda: ovm.plot_pareto_front(study)
    for filename, plot in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 6)
            fig.tight_layout()
            fig.savefig(folder / filename, dpi=100)
            plt.close(fig)
            written.append(folder / filename)
        except (ValueError, RuntimeError, IndexError):
            continue  # e.g. importance with fewer than two complete trials
    return written


def analyze(study: optuna.Study, folder: Path) -> str:
    """The analysis as text; plots and ``analysis.json`` are written into ``folder``."""
    spec = load_spec(study)
    lines = [f"study {study.study_name!r}: objectives "
             + ", ".join(f"{o} ({OBJECTIVES[o][0]}: {OBJECTIVES[o][1]})" for o in spec.objectives),
             trial_table(study)]
    result: dict = {"objectives": spec.objectives}
    if len(spec.objectives) > 1:
        front = study.best_trials
        lines.append(f"Pareto front ({len(front)} trials):")
        for t in front:
            lines.append(f"  trial {t.number}: " + ", ".join(
                f"{o}={v:.3f}" for o, v in zip(spec.objectives, t.values, strict=True))
                + f"  {t.user_attrs.get('latent')}")
        result["pareto"] = [{"trial": t.number, "values": t.values,
                             "latent": t.user_attrs.get("latent")} for t in front]
    elif study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        lines.append(f"best: trial {best.number}, {spec.objectives[0]} = {best.value:.3f}, "
                     f"latent {best.user_attrs.get('latent')}, params {best.params}")
        result["best"] = {"trial": best.number, "value": best.value,
                          "latent": best.user_attrs.get("latent"), "params": best.params}
    imp = importances(study)
    for name, values in imp.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(values.items())[:6]
                        if isinstance(v, float))
        lines.append(f"importance ({name}): {top or values}")
    result["importance"] = imp
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(study, folder)
    lines.append("plots: " + ", ".join(str(p) for p in plots))
    StudyFolder(folder).analysis_path.write_text(json.dumps(result, indent=2, default=str)
                                                 + "\n")
    return "\n".join(lines)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial by the first objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no complete trial yet")
    sign = 1 if load_spec(study).directions[0] == "minimize" else -1
    return min(complete, key=lambda t: sign * t.values[0])


def retrain_best(study: optuna.Study, folder: Path, epochs: int | None = None,
                 seeds: int = 3, nll_samples: int | None = None, limit: int | None = None,
                 progress: bool = False, also: dict[str, str] | None = None) -> dict:
    """Retrain the best config and normal/normal (same network, budget, likelihood) per seed;
    evaluate them on the test set. When the best trial's bound is not the ELBO, a third model,
    normal/normal with the best trial's bound, separates the gain of the pairing from the gain
    of the bound. ``pairing_gain_nats`` (with its value per seed) is normal/normal with the best
    trial's bound minus the best trial; ``train_images`` is how many images each model trained
    on (``limit``; None: all training images); ``test_data`` says what the NLLs are measured
    on, and on grey levels under a Bernoulli likelihood the gains are also given as shares of
    the reducible part (above ``bernoulli_entropy_floor``). Returns and writes ``retrain.json`` in
    ``folder`` (with the trial retrained and :func:`~autovae.search.progress.study_notes`, which
    go to stderr too). ``progress``: the trial, each model and seed as it starts (and whether
    it resumes) and training bars. ``also``: more models, name -> latent spec, each the best
    config with that latent (e.g. a control's generating pairing), retrained and scored alike."""
    from ..evaluation import evaluate, prefixed
    from ..run import prepare, test_data_label
    from ..scoring import bernoulli_entropy_floor, reducible_share
    from ..training import train

    spec = load_spec(study)
    trial = best_trial(study)
    best = Run(StudyFolder(folder).trial(trial.number)).load_config()
    notes = study_notes(study, spec.trials)
    for note in notes:
        print(f"autovae: note: {note}", file=sys.stderr, flush=True)
    changes = {"limit": limit}
    if epochs is not None:
        changes["epochs"] = epochs
    if nll_samples is not None:
        changes["nll_samples"] = nll_samples
    best = best.replace(**changes)
    dim = LatentSpec.parse(best.latent, best.latent_dim).dim
    models = {"best": best,
              "normal/normal": best.replace(latent=f"normal/normal:{dim}", latent_dim=None,
                                            alpha=1.0, samples=1)}
    if best.alpha != 1.0 and best.samples > 1:
        models["normal/normal, same bound"] = best.replace(latent=f"normal/normal:{dim}",
                                                           latent_dim=None)
    for key, latent in (also or {}).items():
        models[key] = best.replace(latent=latent, latent_dim=None)
    if progress:
        _announce(study, spec, trial, models, seeds)
    data = prepare(best)
    label = test_data_label(best, data.test)
    results: dict = {key: {"config": config.to_dict(), "runs": []}
                     for key, config in models.items()}
    total, count = seeds * len(models), 0
    for seed in range(seeds):
        for key, config in models.items():
            count += 1
            slug = key.replace("/", "-").replace(", ", "-").replace(" ", "-")
            run_folder = StudyFolder(folder).retrain_dir / f"{slug}-seed{seed}"
            resume = Run(run_folder).has_checkpoint()
            config = config.replace(seed=seed)
            name = f"{count} of {total}: {key}, seed {seed}"
            if progress:
                print(name + _resumption(run_folder, config.epochs), flush=True)
            started = time.perf_counter()
            model = train(config, run_folder, data=data, resume=resume, progress=progress).model
            metrics = prefixed(evaluate(model, data.test, nll_samples=config.nll_samples,
                                        data_label=label), "test")
            Run(run_folder).save_metrics(metrics)
            if progress:
                print(f"{name}: test NLL {metrics['test_nll']:.2f} nats (K = "
                      f"{config.nll_samples}; {seconds(time.perf_counter() - started)})",
                      flush=True)
            results[key]["runs"].append({"seed": seed, "test_nll": metrics["test_nll"],
                                         "test_elbo": metrics["test_elbo"]})
    for key in models:
        nll = [r["test_nll"] for r in results[key]["runs"]]
        results[key]["test_nll_mean"] = statistics.mean(nll)
        results[key]["test_nll_sd"] = statistics.stdev(nll) if len(nll) > 1 else None
    results["gain_nats"] = (results["normal/normal"]["test_nll_mean"]
                            - results["best"]["test_nll_mean"])
    # normal/normal with the best trial's bound: the third model, or the ELBO baseline itself
    # when the best trial's bound is the ELBO (alpha = 1 or K = 1)
    same = "normal/normal, same bound" if "normal/normal, same bound" in results \
        else "normal/normal"
    per_seed = [a["test_nll"] - b["test_nll"] for a, b in
                zip(results[same]["runs"], results["best"]["runs"], strict=True)]
    results.update(pairing_gain_nats=statistics.mean(per_seed), pairing_gain_per_seed=per_seed,
                   pairing_gain_sd=statistics.stdev(per_seed) if len(per_seed) > 1 else None,
                   test_data=label, nll_samples=best.nll_samples,
                   train_images=int(data.train.shape[0]))
    if best.likelihood == "bernoulli" and label.startswith("grey"):
        # (grey levels are in [0, 1]: the part of a grey-level NLL that is reducible)
        floor = bernoulli_entropy_floor(data.test)
        results.update(
            bernoulli_entropy_floor=floor,
            gain_share_of_reducible=reducible_share(
                results["gain_nats"], results["normal/normal"]["test_nll_mean"], floor),
            pairing_gain_share_of_reducible=reducible_share(
                results["pairing_gain_nats"], results[same]["test_nll_mean"], floor))
    results["trial"] = trial.number
    results["study_notes"] = notes
    StudyFolder(folder).retrain_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _announce(study: optuna.Study, spec, trial, models: dict[str, Config], seeds: int) -> None:
    """The trial retrained, its value, the budget and the models, before the first run."""
    config = models["best"]
    images = "all training images" if config.limit is None else f"{config.limit} training images"
    value = f"{spec.objectives[0]} {trial.values[0]:.3f}"
    print(f"retraining trial {trial.number} of study {study.study_name!r} ({value}, the best "
          f"by {spec.objectives[0]}) for {config.epochs} epochs on {images}, test NLL with "
          f"K = {config.nll_samples}: {len(models)} models x {seeds} seed{'s' * (seeds > 1)}",
          flush=True)
    width = max(len(key) for key in models)
    for key, c in models.items():
        print(f"  {key:{width}}  {describe_config(c.latent, c.alpha, c.samples)}", flush=True)


def _resumption(run_folder: Path, epochs: int) -> str:
    """'' for a new run; else what re-running does with the run already there."""
    run = Run(run_folder)
    if not run.has_checkpoint():
        return ""
    done = int(run.load_checkpoint()["epoch"])
    if done >= epochs:
        return f" (already trained, {done} of {epochs} epochs: evaluated again)"
    return f" (resumes its stopped run at epoch {done} of {epochs})"
