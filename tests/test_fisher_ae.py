"""The Fisher autoencoder as a VAE option: the penalty moves J toward its target, changes the
gradient surrogate only (the logged bound stays the true bound), and J and entropy power are
logged every epoch."""

import sys
from pathlib import Path

import pytest
import torch

from autovae.beliefs import posterior_fisher
from autovae.config import Config
from autovae.data import DataSplits
from autovae.models import StepContext, build_model
from autovae.search import SearchSpace
from autovae.training import train

HELPERS = str(Path(__file__).resolve().parent / "helpers")


def blobs(n=400, seed=0) -> DataSplits:
    """Two blurry 8x8 prototypes plus noise, in [0, 1]: a VAE learns them in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.rand(2, 1, 8, 8, generator=g)
    idx = torch.randint(0, 2, (3 * n,), generator=g)
    x = (proto[idx] + 0.1 * torch.randn(3 * n, 1, 8, 8, generator=g)).clamp(0, 1)
    return DataSplits("blobs", x[:n], x[n:2 * n], x[2 * n:])


BASE = dict(data="blobs", epochs=6, batch_size=50, hidden=64, depth=1, lr=3e-3,
            latent="normal/normal:2,logistic/normal:2", likelihood="continuous-bernoulli")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A plain VAE and Fisher AEs with targets far below and far above its J."""
    data = blobs()
    folder = tmp_path_factory.mktemp("fisher")
    out = {}
    for name, extra in {"plain": {}, "low": dict(fisher_weight=1.0, fisher_target=0.5),
                        "high": dict(fisher_weight=1.0, fisher_target=400.0)}.items():
        config = Config(**BASE, **extra)
        out[name] = train(config, folder / name, data=data, progress=False).run.history()
    return out


def test_the_penalty_moves_fisher_information_toward_its_target_both_ways(runs):
    plain, low, high = (runs[k][-1]["val_fisher"] for k in ("plain", "low", "high"))
    assert low < plain < high
    assert abs(low - 0.5) < abs(plain - 0.5) / 2      # at least halfway to the low target
    assert abs(high - 400.0) < abs(plain - 400.0)     # and toward the high one


def test_fisher_and_entropy_power_are_logged_and_respect_stams_bound(runs):
    for history in runs.values():
        for row in history:
            for split in ("train", "val"):
                j, n = row[f"{split}_fisher"], row[f"{split}_entropy_power"]
                assert j > 0 and n > 0
                assert j * n >= 1 - 1e-6  # Stam: J N >= 1 per dimension (AM-GM over dims)


def test_the_penalty_changes_the_surrogate_only():
    """With the penalty on, the logged bound of a step is the same number, and the loss differs
    by exactly weight * |mean J - target|."""
    config = Config(**BASE, fisher_weight=0.3, fisher_target=2.0)
    x = blobs().train[:32]
    losses, bounds = {}, {}
    for name, cfg in (("on", config), ("off", config.replace(fisher_weight=0.0))):
        torch.manual_seed(5)
        model = build_model(cfg, x.shape[1:])
        torch.manual_seed(6)
        ctx = StepContext(0, 0, 1, batch_size=32)
        (_, losses[name]), = list(model.training_step(x, ctx))
        ctx.commit()
        bounds[name] = ctx.sums["train_bound"].item()
    assert bounds["on"] == bounds["off"]
    torch.manual_seed(5)
    model = build_model(config, x.shape[1:])
    J = posterior_fisher(model.latent, model.posterior(x))
    expected = 0.3 * abs(J.mean().item() - 2.0)
    assert (losses["on"] - losses["off"]).item() == pytest.approx(expected, rel=1e-5)


def test_the_score_estimator_trains_too(tmp_path):
    config = Config(**{**BASE, "epochs": 2}, fisher_weight=1.0, fisher_target=0.5,
                    fisher_estimator="score")
    history = train(config, tmp_path / "run", data=blobs(), progress=False).run.history()
    assert all(torch.isfinite(torch.tensor(r["train_bound"])) for r in history)


@pytest.mark.parametrize("changes, message", [
    (dict(fisher_weight=-0.1), "fisher_weight must be a finite number >= 0"),
    (dict(fisher_target=-1.0), "fisher_target must be a finite number >= 0"),
    (dict(fisher_weight=float("nan")), "fisher_weight must be a finite number >= 0"),
    (dict(fisher_estimator="exact"), "fisher_estimator must be one of closed-form, score"),
])
def test_bad_fisher_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        Config(**BASE, **changes)


def test_a_posterior_without_location_fisher_information_is_refused():
    config = Config(**{**BASE, "latent": "uniform/uniform:2,normal/normal:2"},
                    fisher_weight=0.1)
    with pytest.raises(ValueError, match="block uniform/uniform:2: .*uniform"):
        build_model(config, (1, 8, 8))
    with pytest.raises(ValueError, match="exponential/exponential.*no location Fisher"):
        SearchSpace(pairs=["normal/normal", "exponential/exponential"],
                    fisher_weight=(0.0, 0.5))


def test_a_penalty_on_a_model_without_encoder_is_refused(monkeypatch):
    sys.path.insert(0, HELPERS)
    try:
        import toy_models
    finally:
        sys.path.remove(HELPERS)
    monkeypatch.setitem(toy_models.MODELS, "quadratic-game", toy_models.QuadraticGame)
    with pytest.raises(ValueError, match="fisher_weight = 0.1 does not apply to model "
                                         "quadratic-game \\(quadratic-game has no encoder"):
        build_model(Config(model="quadratic-game", fisher_weight=0.1), (4,))


def test_the_search_can_tune_the_penalty():
    import optuna

    space = SearchSpace(pairs=["normal/normal"], fisher_weight=(0.01, 1.0),
                        fisher_target=(1.0, 10.0), latent_dim=(2, 2))
    trial = optuna.create_study().ask()
    config = space.suggest(trial, Config(**BASE))
    assert 0.01 <= config.fisher_weight <= 1.0 and 1.0 <= config.fisher_target <= 10.0
    assert {"fisher_weight", "fisher_target"} <= set(trial.params)
