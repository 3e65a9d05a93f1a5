"""The known-belief control (issue 27): does the generating pairing beat normal/normal?

On ``control-cauchy`` (Cauchy latents, 2 dims, a known decoder; autovae.control) this prints the
generating model's own test NLL, then the test NLL (K = 1000, the 1000 test images) of VAEs
with each pairing, trained with the ELBO:

(a) with the known decoder (frozen; encoder: MLP 1 x 32, 300 Adam steps of 100 images), where
    the pairing is the only freedom, so the generating prior must win;
(b) with a learned MLP decoder (2 x 64, 30 epochs on the 4000 training images, Adam 1e-3),
    which can warp any prior into the data.

    python experiments/control_check.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from autovae import Config, evaluate, train
from autovae.control import GAIN, control_decoder, true_nll
from autovae.data import load_data
from autovae.models import build_model

PAIRINGS = ["cauchy/cauchy:2", "laplace/cauchy:2", "normal/cauchy:2", "laplace/laplace:2",
            "normal/normal:2"]


def known_decoder_nll(latent: str, data, seed: int, samples: int) -> float:
    torch.manual_seed(seed)
    model = build_model(Config(latent=latent, hidden=32, depth=1), (1, 8, 8))
    w, b = control_decoder(2)
    model.decoder.net = nn.Linear(2, 64)
    with torch.no_grad():
        model.decoder.net.weight.copy_(GAIN * w.T.float())
        model.decoder.net.bias.copy_(b.float())
    model.decoder.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(300):
        x = data.train[torch.randint(0, len(data.train), (100,), generator=g)]
        loss = -model.estimate(x).value.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.manual_seed(1)
    return evaluate(model, data.test, nll_samples=samples)["nll"]


def learned_decoder_nll(latent: str, seed: int, samples: int) -> float:
    config = Config(data="control-cauchy", latent=latent, hidden=64, depth=2, epochs=30,
                    batch_size=100, lr=1e-3, seed=seed, latent_clip=50.0)
    with tempfile.TemporaryDirectory() as folder:
        result = train(config, folder, progress=False)
        torch.manual_seed(1)
        return evaluate(result.model, result.data.test, nll_samples=samples)["nll"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--nll-samples", type=int, default=1000)
    args = parser.parse_args()
    data = load_data("control-cauchy")
    print(f"control-cauchy: the generating model's own test NLL {true_nll('control-cauchy'):.2f}"
          " nats (importance sampling from the prior, 200k draws)")
    for title, nll in (("(a) known decoder", lambda lat, s: known_decoder_nll(
            lat, data, s, args.nll_samples)), ("(b) learned MLP decoder",
                                               lambda lat, s: learned_decoder_nll(
                                                   lat, s, args.nll_samples))):
        print(title)
        for latent in PAIRINGS:
            values = [nll(latent, s) for s in args.seeds]
            print(f"  {latent:18} test NLL " + ", ".join(f"{v:.2f}" for v in values)
                  + f"  (seeds {args.seeds})", flush=True)


if __name__ == "__main__":
    main()
