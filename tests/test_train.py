"""End-to-end training: real learning, exact resume after SIGKILL, NLL, bad input, CLI.

The tests that need real images run on scikit-learn's digits everywhere, and also on
Fashion-MNIST where Debian's dataset-fashion-mnist package is installed.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from autovae.cli import main
from autovae.config import Config, load_config
from autovae.data import DataSplits
from autovae.models import NonFiniteLossError, build_model, evaluation_mode
from autovae.run import Run, load_trained
from autovae.training import train

from helpers.resume import HELPERS, check_sigkill_resume, child_env

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not DEBIAN_FMNIST.exists(),
                                  reason="needs Debian's dataset-fashion-mnist package")
LEGACY = Path(__file__).resolve().parent / "data" / "legacy-run"

SMALL = {
    "digits": dict(data="digits", batch_size=100, hidden=64, depth=2, lr=1e-3, nll_samples=20),
    "fashion-mnist": dict(data="fashion-mnist", limit=2000, val_size=500, batch_size=100,
                          hidden=64, depth=2, lr=1e-3, nll_samples=20),
}
REAL_DATA = [pytest.param("digits"), pytest.param("fashion-mnist", marks=needs_fmnist)]


def tiny_data(n=256, seed=0) -> DataSplits:
    """Blurry random 8x8 'images' in [0, 1] with labels; no files needed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3 * n, 1, 8, 8, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    y = torch.randint(0, 3, (3 * n,), generator=g)
    return DataSplits("tiny", x[:n], x[n:2 * n], x[2 * n:], y[:n], y[n:2 * n], y[2 * n:])


@pytest.mark.parametrize("dataset", REAL_DATA)
def test_short_training_raises_the_validation_bound(tmp_path, dataset):
    config = Config(**SMALL[dataset], epochs=4, latent="logistic/normal:6,cauchy/cauchy:2",
                    likelihood="continuous-bernoulli", latent_clip=50.0)
    result = train(config, tmp_path / "run", progress=False)
    history = Run(tmp_path / "run").history()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    torch.manual_seed(0)
    fresh = build_model(config, result.data.event_shape)
    with evaluation_mode(fresh):
        start = fresh.validation_metrics(result.data.val, 100)["bound"]
    first, last = history[0]["val_bound"], history[-1]["val_bound"]
    assert last > first > start
    # nats per image, well above the start (digits: 64 pixels; Fashion-MNIST: 784)
    assert last - start > {"digits": 30, "fashion-mnist": 300}[dataset]


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()
                      if p.is_floating_point()])


@pytest.mark.parametrize("dataset", REAL_DATA)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, dataset):
    size = (["--limit", "6000", "--val-size", "500", "--epochs", "4"]
            if dataset == "fashion-mnist" else ["--epochs", "20"])
    args = ["--data", dataset, *size, "--batch-size", "50", "--hidden", "128", "--depth", "2",
            "--lr", "1e-3", "--latent", "logistic/normal:4,laplace/laplace:4",
            "--binarize", "dynamic", "--no-evaluate", "--quiet"]
    epochs = int(size[size.index("--epochs") + 1])

    def command(folder, resume):
        train = [sys.executable, "-m", "autovae", "train", "--run", str(folder)]
        return [*train, "--resume", "--no-evaluate", "--quiet"] if resume else [*train, *args]

    check_sigkill_resume(command, tmp_path, epochs, child_env(),
                         0.1 if dataset == "fashion-mnist" else 0.3)


_GAME_SCRIPT = """
import sys
from toy_models import register
register()
from autovae import Config, train
config = Config(model="quadratic-game", data="digits", epochs=int(sys.argv[2]), batch_size=10,
                lr=0.01, seed=3)
train(config, sys.argv[1], resume=len(sys.argv) > 3, progress=False)
"""


def test_two_optimizer_game_sigkill_then_resume_is_bit_identical(tmp_path):
    epochs = 25

    def command(folder, resume):
        return [sys.executable, "-c", _GAME_SCRIPT, str(folder), str(epochs),
                *(["resume"] if resume else [])]

    check_sigkill_resume(command, tmp_path, epochs, child_env(HELPERS), 0.3)


@pytest.fixture
def game(monkeypatch):
    sys.path.insert(0, HELPERS)
    try:
        import toy_models
    finally:
        sys.path.remove(HELPERS)
    monkeypatch.setitem(toy_models.MODELS, toy_models.QuadraticGame.name,
                        toy_models.QuadraticGame)
    return toy_models


def test_two_optimizer_game_reaches_its_fixed_point(tmp_path, game):
    data = tiny_data(200)
    config = Config(model="quadratic-game", data="tiny", epochs=40, batch_size=20, lr=0.05)
    result = train(config, tmp_path / "run", data=data, progress=False)
    model = result.model
    a_star, b_star = model.equilibrium(data.train.flatten(1).mean(0))
    # from 0, about 0.4 away per coordinate, to within the noise floor of constant-step Adam
    assert torch.allclose(model.a, a_star, atol=0.02)
    assert torch.allclose(model.b, b_star, atol=0.05)
    assert not model.leaked
    history = result.run.history()
    assert history[-1]["val_minus_distance"] > history[0]["val_minus_distance"]
    assert {"train_f_a", "train_f_b"} <= set(history[-1])
    checkpoint = result.run.load_checkpoint()
    assert set(checkpoint["optimizers"]) == {"player_a", "player_b"}
    assert checkpoint["model_name"] == "quadratic-game"


def test_each_loss_steps_only_its_own_optimizer(tmp_path, game):
    """A loss back-propagates into its own optimizer's parameters only: each player's loss
    depends on both players, yet never changes the other player's gradient."""
    data = tiny_data(20)
    config = Config(model="quadratic-game", data="tiny", epochs=1, batch_size=20, lr=0.1)
    model = train(config, tmp_path / "run", data=data, progress=False).model
    assert not model.leaked
    m = data.train.flatten(1).mean(0)
    # one step each, from zero: a moves along -grad f_a = m; then b along -grad f_b (Adam: sign)
    assert torch.allclose(model.a.detach(), 0.1 * m, atol=1e-6)
    assert torch.allclose(model.b.detach(), torch.full_like(m, 0.1), atol=1e-6)


def test_two_optimizer_game_non_finite_names_the_player(tmp_path, game):
    config = Config(model="quadratic-game", data="tiny", epochs=1, batch_size=8, lr=1e30)
    with pytest.raises(NonFiniteLossError, match="non-finite 'player_a' loss at epoch 1, batch "
                                                 r"\d+: the parameters of player_a have "
                                                 "diverged.*No epoch had finished, so no "
                                                 "checkpoint was written"):
        train(config, tmp_path / "run", data=tiny_data(64), progress=False)


def test_a_checkpoint_of_another_model_is_refused(tmp_path, game):
    data = tiny_data(64)
    config = Config(data="tiny", epochs=1, batch_size=32, hidden=8, depth=1,
                    latent="normal/normal:2")
    train(config, tmp_path / "run", data=data, progress=False)
    # the game reads none of the VAE's settings (Model.reads), so its config leaves them out
    game_config = Config(data="tiny", epochs=1, batch_size=32, model="quadratic-game")
    with pytest.raises(ValueError, match="holds a different run \\(model: 'vae' -> "
                                         "'quadratic-game', "):
        train(game_config, tmp_path / "run", data=data, resume=True, progress=False)


def test_a_checkpoint_from_before_the_models_registry_still_loads(tmp_path):
    """tests/data/legacy-run was written by the single-optimizer trainer (one 'optimizer' key,
    no model name): it loads, evaluates to the numbers that trainer's code computed, and
    resumes for another epoch."""
    from autovae.evaluation import evaluate

    expected = json.loads((LEGACY / "expected.json").read_text())
    run_folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, run_folder)
    _, config, model, data = load_trained(run_folder)
    torch.manual_seed(0)
    metrics = evaluate(model, data.test, nll_samples=10)
    assert metrics["elbo"] == pytest.approx(expected["test_elbo"], rel=1e-6)
    assert metrics["nll"] == pytest.approx(expected["test_nll"], rel=1e-6)
    assert metrics["recon_mse"] == pytest.approx(expected["recon_mse"], rel=1e-6)
    result = train(config.replace(epochs=3), run_folder, resume=True, progress=False)
    assert [r["epoch"] for r in result.run.history()] == [1, 2, 3]
    assert set(result.run.load_checkpoint()["optimizers"]) == {"model"}


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(tmp_path):
    data = tiny_data(64)
    config = Config(data="tiny", epochs=2, batch_size=32, hidden=8, depth=1,
                    latent="normal/normal:2")
    whole = train(config, tmp_path / "whole", data=data, progress=False).model
    Run(tmp_path / "early").save_config(config)  # what a run killed in epoch 1 leaves
    resumed = train(config, tmp_path / "early", data=data, resume=True, progress=False).model
    assert torch.equal(_params(whole), _params(resumed))


def test_resume_in_process_is_exact(tmp_path):
    data = tiny_data()
    config = Config(data="tiny", epochs=2, batch_size=32, hidden=32, depth=1,
                    latent="normal/normal:3",
                    lr=1e-2, binarize="dynamic")
    whole = train(config, tmp_path / "whole", data=data, progress=False).model
    train(config.replace(epochs=1), tmp_path / "part", data=data, progress=False)
    resumed = train(config, tmp_path / "part", data=data, resume=True, progress=False).model
    assert torch.equal(_params(whole), _params(resumed))


def test_nll_is_below_minus_elbo_and_improves_with_k(tmp_path):
    data = tiny_data()
    config = Config(data="tiny", epochs=3, batch_size=32, hidden=32, depth=1,
                    latent="logistic/normal:2,normal/normal:2", lr=1e-2)
    model = train(config, tmp_path / "run", data=data, progress=False).model
    from autovae.evaluation import evaluate, prefixed

    torch.manual_seed(1)
    model.train()
    few = evaluate(model, data.test, nll_samples=2)
    assert model.training, "evaluate restores the model's train/eval mode"
    many = evaluate(model, data.test, nll_samples=500)
    assert many["nll"] <= -many["elbo"]
    assert many["nll"] < few["nll"] <= -few["elbo"] + 0.5
    assert {"test_elbo", "test_nll", "nll_samples", "recon_mse", "test_images",
            "active_units"} <= set(prefixed(many, "test"))
    codes = model.embed(data.test)
    assert many["active_units"] == int((codes.var(0) > 0.01).sum()) and many["active_units"] <= 4


def test_a_different_run_in_the_folder_is_refused(tmp_path):
    data = tiny_data(64)
    config = Config(data="tiny", epochs=1, batch_size=32, hidden=8, depth=1,
                    latent="normal/normal:2")
    train(config, tmp_path / "run", data=data, progress=False)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train(config, tmp_path / "run", data=data, progress=False)
    with pytest.raises(ValueError, match="holds a different run \\(lr: 0.0001 -> 0.5\\)"):
        train(config.replace(lr=0.5), tmp_path / "run", data=data, resume=True, progress=False)
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        Run(tmp_path / "run2").load_checkpoint()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    data = tiny_data(64)
    config = Config(data="tiny", epochs=1, batch_size=32, hidden=8, depth=1,
                    latent="normal/normal:2")
    train(config, tmp_path / "run", data=data, progress=False)
    path = Run(tmp_path / "run").checkpoint_path
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        train(config.replace(epochs=2), tmp_path / "run", data=data, resume=True, progress=False)


def test_non_finite_loss_names_the_term(tmp_path):
    data = tiny_data(64)
    config = Config(data="tiny", epochs=1, batch_size=32, hidden=8, depth=1,
                    latent="normal/normal:2", lr=1e30)
    with pytest.raises(NonFiniteLossError, match="non-finite 'model' loss at epoch 1, batch 2: "
                                                 "the encoder output is non-finite"):
        train(config, tmp_path / "run", data=data, progress=False)
    skipped = train(config.replace(on_nonfinite="skip"), tmp_path / "skip", data=data,
                    progress=False)
    assert Run(skipped.run.folder).history()[0]["skipped_batches"] >= 1


def test_config_files_and_bad_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("latent: logistic/normal:4\nepochs: 3\nlr: 0.01\n")
    assert load_config(tmp_path / "c.yaml", epochs="5").epochs == 5
    (tmp_path / "c.toml").write_text('latent = "normal/normal:2"\nlearn_prior = true\n')
    assert load_config(tmp_path / "c.toml").learn_prior is True
    (tmp_path / "typo.yaml").write_text("lattent: normal/normal:3\n")
    with pytest.raises(ValueError, match="unknown config key 'lattent'; did you mean 'latent'"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ValueError, match="epochs must be an integer, got 'many'"):
        load_config(epochs="many")
    with pytest.raises(ValueError, match="binarize must be one of none, static, dynamic"):
        load_config(binarize="sometimes")


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["train", "--run", str(tmp_path / "r"), "--data", "nosuchset"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autovae: error: unknown dataset 'nosuchset'") and "\n" not in err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", REAL_DATA)
def test_cli_end_to_end(tmp_path, capsys, dataset):
    run = str(tmp_path / "run")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL[dataset].items()]
    assert main(["train", "--run", run, "--epochs", "1", "--quiet", *flags]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_nll"] <= -metrics["test_elbo"] and metrics["nll_samples"] == 20
    assert main(["evaluate", run, "--nll-samples", "5", "--test-limit", "200", "--quiet"]) == 0
    # a partial evaluation is written beside the full one, never over it (issue 11)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    partial = tmp_path / "run" / "metrics_partial_200images_K5.json"
    assert json.loads(partial.read_text())["nll_samples"] == 5
    for command in (["sample", run, "--n", "16"], ["reconstruct", run, "--n", "8"],
                    ["embed", run], ["interpolate", run, "--pairs", "2", "--steps", "5"]):
        assert main(command) == 0, command
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"samples.png", "reconstructions.png", "codes_test.npy", "codes_test.png",
            "interpolation.png", "config.yaml", "checkpoint.pt", "metrics.jsonl"} <= names


def test_tensorboard_scalars_when_installed(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is optional; metrics.jsonl is always written")
    config = Config(data="tiny", epochs=2, batch_size=32, hidden=8, depth=1,
                    latent="normal/normal:2")
    train(config, tmp_path / "run", data=tiny_data(64), progress=False)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("val_bound")]
    assert steps == [1, 2]
    assert acc.Scalars("val_bound")[-1].value == pytest.approx(
        Run(tmp_path / "run").history()[-1]["val_bound"], rel=1e-6)


def test_conv_network_and_user_modules():
    from autovae.beliefs import LatentSpec, likelihood
    from autovae.models import VAE

    config = Config(network="conv", hidden=128, latent="normal/normal:4", likelihood="beta")
    model = build_model(config, (3, 32, 32))
    x = torch.rand(5, 3, 32, 32)
    value = model.estimate(x).value
    assert value.shape == (5,) and torch.isfinite(value).all()
    assert model.reconstruct(x).shape == (5, 3, 32, 32)
    grey = build_model(config.replace(likelihood="bernoulli"), (1, 28, 28))
    assert grey.generate(3).shape == (3, 1, 28, 28)
    # any nn.Module with the right shapes works in the library API
    latent = LatentSpec.parse("laplace/laplace:3")
    lik = likelihood("gaussian", (6,), learn_sigma="shared")
    custom = VAE(torch.nn.Linear(6, latent.encoder_outputs), torch.nn.Linear(3, 6), latent, lik)
    before = custom.estimate(torch.rand(64, 6)).value.mean()
    opt = torch.optim.Adam(custom.parameters(), lr=0.05)
    x = torch.rand(64, 6)
    for _ in range(100):
        opt.zero_grad()
        (-custom.estimate(x).surrogate.mean()).backward()
        opt.step()
    assert custom.estimate(x).value.mean() > before + 1


def test_active_units_count_the_dims_whose_code_varies():
    """An encoder whose first two code dims follow the data and last two are constant has
    exactly two active units."""
    from autovae.beliefs import LatentSpec, likelihood
    from autovae.evaluation import active_units
    from autovae.models import VAE

    class HalfEncoder(torch.nn.Module):
        def forward(self, x):
            flat = x.flatten(1)
            loc = torch.stack([flat[:, 0], flat[:, 1], 0 * flat[:, 0], 0 * flat[:, 0] + 3], 1)
            return torch.cat([4 * loc, torch.zeros_like(loc)], 1)

    latent = LatentSpec.parse("normal/normal:2,logistic/normal:2")
    model = VAE(HalfEncoder(), torch.nn.Linear(4, 6), latent, likelihood("gaussian", (6,)))
    assert active_units(model, torch.rand(200, 6)) == 2
