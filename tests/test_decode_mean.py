"""VAE.decode_mean: the public way from codes to data points (the CLI's interpolation uses it,
not the model's likelihood and decoder)."""

import torch

from autovae import pictures
from autovae.cli import main
from autovae.config import Config
from autovae.models import build_model
from autovae.run import load_trained


def test_decode_mean_is_the_likelihood_mean_at_any_leading_shape():
    torch.manual_seed(0)
    model = build_model(Config(hidden=8, depth=1, latent="normal/normal:3"), (1, 4, 4))
    z = torch.randn(5, 2, 3)
    out = model.decode_mean(z)
    assert out.shape == (5, 2, 1, 4, 4)
    torch.testing.assert_close(out, torch.sigmoid(model.decoder(z.reshape(10, 3))).reshape(
        5, 2, 1, 4, 4))  # Bernoulli: the mean is sigmoid(logits), row by row
    x = torch.rand(6, 1, 4, 4)
    torch.testing.assert_close(model.reconstruct(x), model.decode_mean(model.embed(x)))
    gaussian = build_model(Config(hidden=8, depth=1, latent="normal/normal:3",
                                  likelihood="gaussian"), (1, 4, 4))
    torch.testing.assert_close(gaussian.decode_mean(z), gaussian.decode(z))  # identity mean


def test_cli_interpolation_starts_and_ends_at_the_reconstructions(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--data", "digits", "--hidden", "8", "--depth", "1",
                 "--epochs", "1", "--batch-size", "500", "--latent", "normal/normal:2",
                 "--no-evaluate", "--quiet"]) == 0
    seen = {}

    def keep(frames, out, **kw):
        seen["frames"] = frames
        return out

    monkeypatch.setattr(pictures, "save_interpolation", keep)
    assert main(["interpolate", str(run), "--pairs", "2", "--steps", "3", "--out",
                 str(tmp_path / "i.png")]) == 0
    frames = seen["frames"]
    assert frames.shape == (3, 2, 1, 8, 8)
    model, data = load_trained(run)[2:]
    with torch.no_grad():
        rec = model.reconstruct(data.test[:4])
    torch.testing.assert_close(frames[0], rec[:2])
    torch.testing.assert_close(frames[-1], rec[2:4])
