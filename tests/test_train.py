"""End-to-end training: real learning, exact resume after SIGKILL, NLL, bad input, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autovae.cli import main
from autovae.config import Config, load_config
from autovae.data import DataSplits
from autovae.model import NonFiniteLossError
from autovae.run import Run
from autovae.train import train

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not DEBIAN_FMNIST.exists(),
                                  reason="needs Debian's dataset-fashion-mnist package")
SRC = str(Path(__file__).resolve().parents[1] / "src")

SMALL = dict(data="fashion-mnist", limit=2000, val_size=500, batch_size=100, hidden=64,
             depth=2, lr=1e-3, nll_samples=20)


def tiny_data(n=256, seed=0) -> DataSplits:
    """Blurry random 8x8 'images' in [0, 1] with labels; no files needed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3 * n, 1, 8, 8, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    y = torch.randint(0, 3, (3 * n,), generator=g)
    return DataSplits("tiny", x[:n], x[n:2 * n], x[2 * n:], y[:n], y[n:2 * n], y[2 * n:])


@needs_fmnist
def test_short_training_raises_the_validation_bound(tmp_path):
    config = Config(**SMALL, epochs=4, latent="logistic/normal:6,cauchy/cauchy:2",
                    likelihood="continuous-bernoulli", latent_clip=50.0)
    result = train(config, tmp_path / "run", progress=False)
    history = Run(tmp_path / "run").history()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    from autovae.model import build_model
    from autovae.train import validate

    torch.manual_seed(0)
    fresh = validate(build_model(config, result.data.event_shape), result.data.val, 100)
    first, last = history[0]["val_bound"], history[-1]["val_bound"]
    assert last > first > fresh["bound"]
    assert last - fresh["bound"] > 300  # nats per image: well above the start


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()
                      if p.is_floating_point()])


@needs_fmnist
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    args = ["--limit", "6000", "--val-size", "500", "--batch-size", "50", "--hidden", "128",
            "--depth", "2", "--lr", "1e-3", "--epochs", "4", "--latent",
            "logistic/normal:4,laplace/laplace:4", "--binarize", "dynamic", "--no-evaluate",
            "--quiet"]
    env = {**os.environ, "PYTHONPATH": SRC}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "autovae", "train", "--run", str(killed),
                             *args], env=env, stderr=subprocess.PIPE)
    checkpoint = Run(killed).checkpoint_path
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not checkpoint.exists():
        time.sleep(0.01)
    time.sleep(0.1)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    epoch_at_kill = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < 4
    subprocess.run([sys.executable, "-m", "autovae", "train", "--run", str(killed), "--resume",
                    "--no-evaluate", "--quiet"], env=env, check=True)
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "autovae", "train", "--run", str(whole), *args],
                   env=env, check=True)
    a = torch.load(Run(killed).checkpoint_path, weights_only=True)
    b = torch.load(Run(whole).checkpoint_path, weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["epoch"] for r in Run(killed).history()] == [1, 2, 3, 4]
    assert Run(killed).history()[-1]["val_bound"] == Run(whole).history()[-1]["val_bound"]


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
    from autovae.evaluate import evaluate

    torch.manual_seed(1)
    few = evaluate(model, data.test, nll_samples=2)
    many = evaluate(model, data.test, nll_samples=500)
    assert many["test_nll"] <= -many["test_elbo"]
    assert many["test_nll"] < few["test_nll"] <= -few["test_elbo"] + 0.5
    assert {"test_elbo", "test_nll", "nll_samples"} <= set(many)


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
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 1, batch 2: the "
                                                 "encoder output is non-finite"):
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


@needs_fmnist
def test_cli_end_to_end(tmp_path, capsys):
    run = str(tmp_path / "run")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert main(["train", "--run", run, "--epochs", "1", "--quiet", *flags]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_nll"] <= -metrics["test_elbo"] and metrics["nll_samples"] == 20
    assert main(["evaluate", run, "--nll-samples", "5", "--limit", "200", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["nll_samples"] == 5
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
    from autovae.model import VAE

    config = Config(network="conv", hidden=128, latent="normal/normal:4", likelihood="beta")
    from autovae.model import build_model

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
