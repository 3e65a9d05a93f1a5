"""AutoVAE search: space, studies on SQLite and a real PostgreSQL server, killed workers."""

import os
import signal
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
from autovae.run import Run
from autovae.search import SearchSpace, StudySpec, allocate, create_study, open_storage
from autovae.search.study import run_worker

SRC = str(Path(__file__).resolve().parents[1] / "src")
# digits: offline, small; trials last a few seconds so that a worker can be killed mid-trial
BASE = Config(data="digits", epochs=6, batch_size=32, hidden=32, depth=1, lr=3e-3,
              latent_clip=50.0, nll_samples=10)
SPACE = SearchSpace(pairs=["normal/normal", "logistic/normal", "cauchy/cauchy"],
                    alpha=(0.0, 1.0), samples=(1, 2), latent_dim=(4, 4), hidden=(32, 32),
                    depth=(1, 1))
ENV = {**os.environ, "PYTHONPATH": SRC, "AUTOVAE_HEARTBEAT_SECONDS": "1"}


def test_allocate_adds_up_and_follows_weights():
    assert allocate([0.7, 0.3], 20) == [14, 6]
    assert allocate([0.0, 0.0, 0.0], 4) == [2, 1, 1]
    sizes = allocate([0.2, 0.9, 0.05, 0.4], 13)
    assert sum(sizes) == 13 and sizes[1] == max(sizes)


def test_suggest_builds_a_valid_config():
    study = optuna.create_study()
    trial = study.ask()
    config = SPACE.suggest(trial, BASE)
    blocks = config.latent.split(",")
    assert sum(int(b.split(":")[1]) for b in blocks) == 4
    assert 0 <= config.alpha <= 1 and config.samples in (1, 2)
    assert set(trial.params) == {"w:normal/normal", "w:logistic/normal", "w:cauchy/cauchy",
                                 "alpha", "samples"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(pairs=[]), "no candidate pairs"),
    (dict(pairs=["cauchy/normal", "normal/uniform"]), "every candidate pair is refused.*"
                                                       "cauchy/normal has KL = \\+inf"),
    (dict(pairs=["normal/normal", "student/normal"]), "unknown family 'student'"),
    (dict(likelihoods=["poisson"]), "unknown likelihood 'poisson'"),
    (dict(alpha=(1.0, 0.0)), "low 1.0 > high 0.0"),
])
def test_bad_search_spaces(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**kwargs)


def test_bad_study_settings(tmp_path):
    with pytest.raises(ValueError, match="at least one trial"):
        StudySpec(SPACE, BASE, ["nll"], trials=0)
    with pytest.raises(ValueError, match="not comparable"):
        StudySpec(SearchSpace(likelihoods=["bernoulli", "beta"]), BASE, ["nll"], 3)
    with pytest.raises(ValueError, match="CMA-ES is single-objective"):
        StudySpec(SPACE, BASE, ["nll", "kl"], 3, sampler="cmaes")
    with pytest.raises(ValueError, match="bad storage URL 'redis://x'"):
        open_storage("redis://x", tmp_path)
    started = time.time()
    with pytest.raises(ValueError, match="cannot open storage postgresql.*:\\*\\*\\*@127.0.0.1"):
        open_storage("postgresql+psycopg2://u:secret@127.0.0.1:1/db", tmp_path)
    assert time.time() - started < 20  # a clear error, no hang
    storage = open_storage(None, tmp_path)
    create_study(storage, "s", StudySpec(SPACE, BASE, ["nll"], 3))
    create_study(storage, "s", StudySpec(SPACE, BASE, ["nll"], 5))  # a larger budget is fine
    with pytest.raises(ValueError, match="exists with a different objectives"):
        create_study(storage, "s", StudySpec(SPACE, BASE, ["nll", "kl"], 3))
    with pytest.raises(ValueError, match="exists with a different space"):
        create_study(storage, "s", StudySpec(SearchSpace(), BASE, ["nll"], 3))


def test_search_in_process_multi_objective_and_analysis(tmp_path):
    from autovae.search import analyze
    from autovae.search.study import run_search

    spec = StudySpec(SPACE, BASE.replace(epochs=2, limit=300), ["nll", "kl"], trials=3,
                     pruner="none", validation_nll_samples=10)
    study = run_search(None, "multi", tmp_path, spec)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    text = analyze(study, tmp_path)
    assert "Pareto front" in text and (tmp_path / "pareto.png").exists()
    for t in study.get_trials():
        assert t.user_attrs["nll"] > 0 and t.user_attrs["kl"] >= 0
        assert (tmp_path / "trials" / f"{t.number:05d}" / "checkpoint.pt").exists()


def test_non_finite_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    spec = StudySpec(SearchSpace(pairs=["normal/normal"], lr=(1e30, 1e30), latent_dim=(2, 2),
                                 hidden=(8, 8), depth=(1, 1), samples=(1, 1), alpha=(1, 1)),
                     BASE.replace(epochs=1), ["nll"], trials=2, pruner="none")
    storage = open_storage(None, tmp_path)
    create_study(storage, "nan", spec)
    run_worker(None, "nan", tmp_path)
    study = optuna.load_study(study_name="nan", storage=storage)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 5  # stopped once failures exceed twice the budget
    assert "non-finite 'model' loss" in failed[0].user_attrs["failure"]


def _kill_mid_trial(proc, folder: Path, timeout=120):
    """SIGKILL ``proc`` once one of its trials has checkpointed at least one epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for checkpoint in folder.glob("trials/*/checkpoint.pt"):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return checkpoint.parent.name
        time.sleep(0.05)
    raise AssertionError("no trial got going")


def _two_workers_one_killed(storage_url, folder: Path, trials=4):
    spec = StudySpec(SPACE, BASE, ["nll"], trials=trials, pruner="none",
                     validation_nll_samples=10)
    storage = open_storage(storage_url, folder)
    create_study(storage, "shared", spec)  # the study exists before any worker starts
    cmd = [sys.executable, "-m", "autovae", "worker", "--study", "shared", "--dir", str(folder)]
    if storage_url:
        cmd += ["--storage", storage_url]
    victim = subprocess.Popen([*cmd, "--worker", "0"], env=ENV)
    killed_trial = _kill_mid_trial(victim, folder)
    time.sleep(4.5)  # > 3 missed heartbeats: the survivor's first look finds the trial stale
    survivor = subprocess.run([*cmd, "--worker", "1"], env=ENV, timeout=600)
    assert survivor.returncode == 0
    study = optuna.load_study(study_name="shared", storage=open_storage(storage_url, folder))
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 4
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [f"{t.number:05d}" for t in failed] == [killed_trial]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    # the retry continued the dead worker's run from its checkpoint: nothing lost
    assert retried[0].user_attrs.get("resumed_from_trial") == failed[0].number
    assert retried[0].params == failed[0].params


def test_sqlite_workers_one_killed_mid_trial(tmp_path):
    _two_workers_one_killed(None, tmp_path)


def test_postgres_workers_one_killed_mid_trial(postgres, tmp_path):
    _two_workers_one_killed(postgres[0], tmp_path)


def test_cli_search_with_two_local_workers_then_resume(tmp_path, capsys, monkeypatch):
    args = ["search", "--dir", str(tmp_path), "--study", "cli", "--trials", "3", "--workers",
            "2", "--pruner", "none", "--data", "digits", "--epochs", "2", "--batch-size", "64",
            "--limit", "400", "--val-size", "100", "--nll-samples", "5"]
    monkeypatch.setenv("PYTHONPATH", SRC)  # for the worker processes
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out and (tmp_path / "history.png").exists()
    study = optuna.load_study(study_name="cli", storage=f"sqlite:///{tmp_path / 'study.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # exactly the budget, however the two workers raced for the last trial (issue 19; the
    # race itself is tested 10+ times over in test_cluster.py)
    assert len(complete) == 3
    seeds = {Path(tmp_path / "trials" / f"{t.number:05d}" / "config.yaml").read_text()
             for t in complete}
    assert len(seeds) == len(complete)
    # the same command again resumes the study: its budget is met, so nothing new runs
    assert main(args) == 0
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == len(complete)


def test_retrain_best_compares_with_normal_normal(tmp_path, capsys):
    from autovae.search.study import run_search

    space = SearchSpace(pairs=["logistic/normal", "laplace/laplace"], alpha=(0.5, 0.5),
                        samples=(2, 2), latent_dim=(3, 3), hidden=(16, 16), depth=(1, 1))
    spec = StudySpec(space, BASE.replace(epochs=1), ["nll"], trials=2, pruner="none",
                     validation_nll_samples=5)
    run_search(None, "rb", tmp_path, spec)
    assert main(["retrain-best", "--dir", str(tmp_path), "--study", "rb", "--seeds", "2",
                 "--epochs", "1", "--nll-samples", "5", "--quiet"]) == 0
    import json

    result = json.loads((tmp_path / "retrain.json").read_text())
    assert set(result) >= {"best", "normal/normal", "normal/normal, same bound", "gain_nats",
                           "pairing_gain_nats"}
    base = result["normal/normal"]["config"]
    assert base["latent"] == "normal/normal:3" and base["alpha"] == 1.0 and base["samples"] == 1
    same = result["normal/normal, same bound"]["config"]
    assert same["alpha"] == 0.5 and same["samples"] == 2
    nll = [r["test_nll"] for r in result["best"]["runs"]]
    assert len(nll) == 2 and result["best"]["test_nll_mean"] == pytest.approx(sum(nll) / 2)
    assert result["gain_nats"] == pytest.approx(result["normal/normal"]["test_nll_mean"]
                                                - result["best"]["test_nll_mean"])
    assert "gain of its pairing alone" in capsys.readouterr().out


def test_sample_quality_as_a_second_objective(tmp_path, monkeypatch):
    from autovae.search.study import run_search

    monkeypatch.setenv("AUTOVAE_CACHE", str(tmp_path / "cache"))  # the digits classifier
    spec = StudySpec(SPACE, BASE.replace(epochs=1), ["nll", "fid"], trials=2, pruner="none",
                     validation_nll_samples=5)
    study = run_search(None, "fid", tmp_path, spec)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert t.values[1] == t.user_attrs["fid"] > 0
    assert study.best_trials  # the Pareto front


def test_pairing_map_cells_table_figure_and_where_a_study_lies(tmp_path, capsys):
    """A tiny map (one digits cell, 2 seeds): the cell holds the pairing gain per seed on the
    fixed binarised test set, the table and figure are made, and retrain-best places a study
    on it; a killed map resumes without running its finished cells again."""
    import json

    from autovae.search.pairing_map import (
        combine_maps,
        map_cells,
        map_figure,
        map_table,
        run_map,
        where_on_the_map,
    )

    cells = map_cells(["digits", "control-cauchy"], ["bernoulli", "gaussian"], [2])
    assert [(c.data, c.likelihood) for c in cells] == [("digits", "bernoulli"),
                                                       ("digits", "gaussian"),
                                                       ("control-cauchy", "bernoulli")]
    dequantized = map_cells(["dequantized:17:digits"], ["bernoulli", "continuous-bernoulli"], [2])
    assert [c.likelihood for c in dequantized] == ["continuous-bernoulli"]  # a density only
    base = BASE.replace(epochs=1, hidden=8, nll_samples=5, limit=200)  # digits has 1197
    result = run_map(cells[:1], tmp_path / "map", base, seeds=2, trials=2,
                     pairs=["normal/normal", "laplace/laplace"])
    cell = result["cells"][0]
    assert cell["test_data"] == "binarised (fixed draw, seed 0)"
    # the retrained models get the search's images, not retrain-best's default (all of them)
    assert cell["train_images"] == 200
    retrained = tmp_path / "map" / "cells" / cells[0].slug / "retrain"
    assert [Run(f).load_config().limit for f in retrained.iterdir()] == [200] * 4
    assert len(cell["pairing_gain_per_seed"]) == 2
    assert cell["pairing_gain"] == pytest.approx(cell["normal_nll"] - cell["best_nll"])
    assert "| digits | bernoulli | binarised (fixed draw, seed 0) | 2 |" in map_table(result)
    assert map_figure(result, tmp_path / "map.png").stat().st_size > 1000
    stored = json.loads((tmp_path / "map" / "pairing_map.json").read_text())
    assert stored["cells"] == result["cells"] and stored["settings"]["seeds"] == 2
    again = run_map(cells[:1], tmp_path / "map", base, seeds=2, trials=2,
                    pairs=["normal/normal", "laplace/laplace"])
    assert again["cells"] == result["cells"]  # resumed: nothing ran again
    with pytest.raises(ValueError, match="other settings"):
        run_map(cells[:1], tmp_path / "map", base, seeds=3, trials=2)
    assert combine_maps([tmp_path / "map"] * 2)["cells"] == result["cells"] * 2
    retrain = json.loads((tmp_path / "map" / "cells" / cells[0].slug / "retrain.json")
                         .read_text())
    line = where_on_the_map(retrain, tmp_path / "map" / "pairing_map.json")
    assert "is on the map" in line and "digits, bernoulli, latent 2" in line
    assert "none found" in where_on_the_map(retrain, tmp_path / "nothing.json")
    retrain["best"]["config"]["latent"] = "normal/normal:4"
    assert "latent 4 -> 2" in where_on_the_map(retrain, tmp_path / "map" / "pairing_map.json")
    retrain["best"]["config"]["data"] = "test-subset:100:digits"  # the same data, fewer tests
    line = where_on_the_map(retrain, tmp_path / "map" / "pairing_map.json")
    assert "same data" in line and "the map's cell is digits" in line, line
    retrain["best"]["config"]["data"] = "fashion-mnist"
    assert "other data: fashion-mnist is not on it" in where_on_the_map(
        retrain, tmp_path / "map" / "pairing_map.json")


def test_control_cells_are_judged_against_their_generating_pairing():
    from autovae.search.pairing_map import control_table, map_cells, map_table

    cells = map_cells(["control-gaussian-cauchy", "control-laplace"], ["bernoulli", "gaussian"],
                      [2])
    assert [(c.data, c.likelihood, c.binary_data) for c in cells] == [
        ("control-gaussian-cauchy", "gaussian", False), ("control-laplace", "bernoulli", True)]
    cell = {"data": "control-gaussian-cauchy", "likelihood": "gaussian", "latent_dim": 2,
            "test_data": "real values", "best_latent": "normal/cauchy:2", "best_nll": 10.0,
            "best_nll_sd": 0.1, "best_nll_per_seed": [9.9, 10.0, 10.1], "normal_nll": 20.0,
            "normal_nll_sd": 1.0, "pairing_gain": 10.0, "pairing_gain_sd": 1.0,
            "pairing_gain_per_seed": [9.1, 10.0, 10.9], "every_seed_gains": True,
            "every_seed_gains_1_nat": True, "generating_latent": "normal/cauchy:2",
            "generating_nll": 10.0, "generating_nll_sd": 0.1,
            "generating_nll_per_seed": [9.9, 10.0, 10.1], "true_nll": 9.0,
            "pairs": ["normal/normal", "normal/cauchy"]}
    table = control_table({"cells": [cell]})
    assert "+9.10, +10.00, +10.90 | 9.00 | **recovered** |" in table
    assert "(candidates also normal/cauchy)" in map_table({"cells": [cell]})
    missed = {**cell, "best_nll": 11.0}  # 1 nat worse than the generating pairing, sd 0.1
    assert "search did not find one as good" in control_table({"cells": [missed]})
    worse = {**cell, "best_nll_sd": 2.0, "best_nll": 12.0, "every_seed_gains": False}
    assert "search did not find one as good" in control_table({"cells": [worse]})  # in spread
    tie = {**cell, "generating_nll_per_seed": [19.0, 20.0, 21.0], "generating_nll": 20.0}
    assert "normal/normal does not lose" in control_table({"cells": [tie]})
    real_data = {k: v for k, v in cell.items() if k != "true_nll"
                 and not k.startswith("generating")}
    assert control_table({"cells": [real_data]}) == ""  # no control cell: no table


def test_a_map_search_with_pure_starts_tries_each_pair_alone_first(tmp_path):
    from autovae.search.pairing_map import map_cells, map_table, run_map

    cells = map_cells(["digits"], ["gaussian"], [2])
    base = BASE.replace(epochs=1, hidden=8, nll_samples=5)
    pairs = ["normal/normal", "laplace/laplace"]
    result = run_map(cells, tmp_path / "map", base, seeds=2, trials=3, pairs=pairs,
                     pure_starts=True)
    import optuna

    study = optuna.load_study(study_name="map", storage="sqlite:///" + str(
        tmp_path / "map" / "cells" / cells[0].slug / "study.db"))
    latents = [t.user_attrs.get("latent") or t.params for t in study.trials]
    assert len(study.trials) == 3
    assert [t.params for t in study.trials[:2]] == [
        {"w:normal/normal": 1.0, "w:laplace/laplace": 0.0},
        {"w:normal/normal": 0.0, "w:laplace/laplace": 1.0}], latents
    assert result["cells"][0]["pure_starts"] and "3 trials, each pair alone first" in \
        map_table(result)
    with pytest.raises(ValueError, match="cannot start with each of the 2 candidate pairs"):
        run_map(cells, tmp_path / "other", base, seeds=2, trials=1, pairs=pairs,
                pure_starts=True)


def test_maps_with_other_candidate_pairs_combine(tmp_path):
    import json

    from autovae.search.pairing_map import combine_maps

    for name, pairs in (("a", ["normal/normal"]), ("b", ["normal/normal", "normal/cauchy"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pairing_map.json").write_text(json.dumps(
            {"settings": {"seeds": 3, "pairs": pairs, "trials": len(pairs) + 4},
             "cells": [{"data": name}]}))
    cells = combine_maps([tmp_path / "a", tmp_path / "b"])["cells"]
    assert cells == [
        {"pairs": ["normal/normal"], "trials": 5, "pure_starts": False, "data": "a"},
        {"pairs": ["normal/normal", "normal/cauchy"], "trials": 6, "pure_starts": False,
         "data": "b"}]
    # a combined map (e.g. the committed docs/results/map) combines again: its cells keep the
    # pairs and trials they were searched with, not its first map's settings
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "pairing_map.json").write_text(json.dumps(
        combine_maps([tmp_path / "a", tmp_path / "b"])))
    assert combine_maps([tmp_path / "ab", tmp_path / "a"])["cells"] == cells + cells[:1]
    (tmp_path / "b" / "pairing_map.json").write_text(json.dumps(
        {"settings": {"seeds": 2, "pairs": [], "trials": 5}, "cells": []}))
    with pytest.raises(ValueError, match="other settings"):
        combine_maps([tmp_path / "a", tmp_path / "b"])


def test_the_map_command_refuses_one_seed(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from pairing_map import main as map_main

    assert map_main(["--seeds", "1", "--out", "unused"]) == 2
    assert "no spread, and so no claim" in capsys.readouterr().err


def _known_decoder_nll(latent: str, data, steps: int = 300) -> float:
    """Test NLL of a VAE whose decoder is the control's own (frozen), its encoder trained."""
    from torch import nn

    from autovae.control import GAIN, control_decoder
    from autovae.models import build_model

    torch.manual_seed(0)
    model = build_model(Config(latent=latent, hidden=32, depth=1), (1, 8, 8))
    w, b = control_decoder(2)
    model.decoder.net = nn.Linear(2, 64)
    with torch.no_grad():
        model.decoder.net.weight.copy_(GAIN * w.T.float())
        model.decoder.net.bias.copy_(b.float())
    model.decoder.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = -model.estimate(data.train[torch.randint(0, len(data.train), (100,),
                                                        generator=g)]).value.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.manual_seed(1)
    return -model.log_likelihood(data.test[:500], 500).mean().item()


def test_on_the_control_the_generating_pairing_beats_normal_normal():
    """Cauchy latents through the known decoder: with that decoder, the generating pairing
    (cauchy/cauchy) beats normal/normal with the same bound (the ELBO) by more than a nat, and
    neither passes the generating model's own NLL."""
    from autovae.control import true_nll
    from autovae.data import load_data

    data = load_data("control-cauchy")
    generating = _known_decoder_nll("cauchy/cauchy:2", data)
    normal = _known_decoder_nll("normal/normal:2", data)
    assert normal - generating > 1.0, (generating, normal)
    assert generating > true_nll("control-cauchy", samples=50_000) - 0.5


@pytest.mark.slow
def test_on_the_gaussian_control_a_learned_decoder_cannot_undo_the_prior(tmp_path):
    """control-gaussian-cauchy with a learned 2 x 64 MLP decoder (the map's budget, one seed):
    the generating pairing normal/cauchy:2 beats normal/normal by more than a nat, and neither
    passes the generating model's own NLL (map: +1.18 to +3.40 nats over 6 runs)."""
    from autovae import evaluate, train
    from autovae.control import true_nll

    nll = {}
    for latent in ("normal/cauchy:2", "normal/normal:2"):
        config = Config(data="control-gaussian-cauchy", likelihood="gaussian",
                        learn_sigma="shared", latent=latent, hidden=64, depth=2, epochs=30,
                        batch_size=100, lr=1e-3, seed=0, latent_clip=50.0, limit=2000)
        result = train(config, tmp_path / latent.replace("/", "-"), progress=False)
        torch.manual_seed(1)
        nll[latent] = evaluate(result.model, result.data.test, nll_samples=1000)["nll"]
    assert nll["normal/normal:2"] - nll["normal/cauchy:2"] > 1.0, nll
    assert min(nll.values()) > true_nll("control-gaussian-cauchy", samples=2000)


@pytest.mark.slow
def test_the_search_finds_the_generating_pairing_or_one_as_good(tmp_path):
    """A pairing search on the Cauchy control: the best pairing's test NLL (3 seeds) is within
    the seed spread of the generating pairing's, or better."""
    import statistics

    from autovae.search import retrain_best
    from autovae.search.study import run_search

    base = Config(data="control-cauchy", epochs=15, batch_size=100, hidden=64, depth=2,
                  lr=1e-3, latent_clip=50.0, limit=2000, nll_samples=1000)
    space = SearchSpace(pairs=["normal/normal", "laplace/laplace", "cauchy/cauchy",
                               "laplace/cauchy"], alpha=(1.0, 1.0), samples=(1, 1),
                        latent_dim=(2, 2), hidden=(64, 64), depth=(2, 2), lr=(1e-3, 1e-3))
    study = run_search(None, "control", tmp_path, StudySpec(space, base, ["nll"], trials=6,
                                                            pruner="none"))
    found = retrain_best(study, tmp_path, seeds=3)["best"]
    from autovae.evaluation import evaluate
    from autovae.training import train

    generating = []
    for seed in range(3):
        config = base.replace(latent="cauchy/cauchy:2", seed=seed)
        result = train(config, tmp_path / f"generating{seed}", progress=False)
        generating.append(evaluate(result.model, result.data.test, nll_samples=1000)["nll"])
    spread = max(found["test_nll_sd"], statistics.stdev(generating))
    assert found["test_nll_mean"] <= statistics.mean(generating) + 2 * spread, (found, generating)
