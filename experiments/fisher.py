"""The Fisher-Shannon trade-off on Fashion-MNIST: VAE against Fisher autoencoders.

For a Gaussian (normal/normal) and a non-Gaussian (logistic/normal) pairing, a plain VAE is
trained first; Fisher AEs then aim at targets J_c below and above the plain VAE's location
Fisher information J (per latent dim, on the validation set). Every model is evaluated on the
same test images: NLL (IWAE with K samples), the ELBO split into log-likelihood and KL, PSNR of
reconstructions, active units, and its point (J, entropy power N) in the Fisher-Shannon plane.

    python experiments/fisher.py                      # the budget of docs/fisher.md
    python experiments/fisher.py --limit 60000 --epochs 50 --nll-samples 5000 --test-images 10000

Writes RESULTS/results.json, RESULTS/table.md and RESULTS/plane.png (default docs/fisher/).
Runs are resumable: an interrupted experiment continues from the finished runs' folders;
``--table-only`` tabulates the runs evaluated so far without training anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from autovae import Config, Run, evaluate, load_trained, train
from autovae.quality import reconstruction_metrics
from autovae.run import prepare

PAIRINGS = ["normal/normal:20", "logistic/normal:20"]
TARGET_FACTORS = {"low": 0.25, "high": 4.0}  # J_c = factor x the plain VAE's J


class NotYet(Exception):
    """A run that has not been evaluated yet (with --table-only)."""


def run_one(config: Config, folder: Path, test: torch.Tensor, nll_samples: int,
            table_only: bool = False) -> dict:
    """Train (or resume) and evaluate one model; the metrics are cached in its run folder."""
    run = Run(folder)
    cached = run.metrics()
    if cached.get("experiment_nll_samples") == nll_samples:
        return cached
    if table_only:
        raise NotYet(folder)
    if not (run.has_checkpoint() and run.history()
            and run.history()[-1]["epoch"] == config.epochs):
        train(config, folder, resume=run.has_config(), progress=False)
    _, _, model, _ = load_trained(folder)
    torch.manual_seed(0)
    metrics = evaluate(model, test, nll_samples=nll_samples)
    with torch.no_grad():
        recon = torch.cat([model.reconstruct(test[i:i + 500]) for i in range(0, len(test), 500)])
    metrics["psnr"] = reconstruction_metrics(test, recon.clamp(0, 1))["psnr"]
    metrics["experiment_nll_samples"] = nll_samples
    run.save_metrics(metrics)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/fisher")
    parser.add_argument("--runs", default="runs/fisher-experiment")
    parser.add_argument("--limit", type=int, default=10000, help="training images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nll-samples", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--weight", type=float, default=0.1, help="xi (Zheng et al.: 0.1)")
    parser.add_argument("--table-only", action="store_true",
                        help="tabulate the runs evaluated so far; train nothing")
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    base = Config(data="fashion-mnist", limit=args.limit, val_size=1000, epochs=args.epochs,
                  batch_size=250, hidden=200, depth=2, lr=1e-3, nll_samples=args.nll_samples)
    test = prepare(base).test[: args.test_images]
    rows = []
    for latent in PAIRINGS:
        slug = latent.split(":")[0].replace("/", "-")
        for seed in range(args.seeds):
            plain_config = base.replace(latent=latent, seed=seed)
            try:
                plain = run_one(plain_config, runs / f"{slug}-vae-seed{seed}", test,
                                args.nll_samples, args.table_only)
            except NotYet:
                continue
            rows.append({**plain, "latent": latent, "model": "VAE", "target": None,
                         "seed": seed})
            for name, factor in TARGET_FACTORS.items():
                target = factor * plain["fisher"]
                config = plain_config.replace(fisher_weight=args.weight, fisher_target=target)
                try:
                    metrics = run_one(config, runs / f"{slug}-fae-{name}-seed{seed}", test,
                                      args.nll_samples, args.table_only)
                except NotYet:
                    continue
                rows.append({**metrics, "latent": latent,
                             "model": f"FAE J_c = {factor:g} J_VAE", "target": target,
                             "seed": seed})
            print(f"{latent} seed {seed} done", flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, out / "table.md", args)
    plane(rows, out / "plane.png")


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def write_table(rows: list[dict], path: Path, args) -> None:
    keys = [("nll", "test NLL"), ("elbo", "ELBO"), ("log_lik", "log-lik"), ("kl", "KL"),
            ("psnr", "PSNR dB"), ("active_units", "active units"), ("fisher", "J / dim"),
            ("entropy_power", "N")]
    lines = [f"Fashion-MNIST, {args.limit} training images, {args.epochs} epochs, MLP 2x200, "
             f"20 latent dims, Bernoulli likelihood; test: first {args.test_images} test images, "
             f"NLL with K = {args.nll_samples}; mean ± sd over the seeds (column n); "
             f"Fisher weight {args.weight}.", "",
             "| latent | model | n | " + " | ".join(label for _, label in keys) + " |",
             "|---" * (len(keys) + 3) + "|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["latent"], row["model"]), []).append(row)
    for (latent, model), group in groups.items():
        cells = [_mean_sd([r[k] for r in group]) for k, _ in keys]
        lines.append(f"| {latent} | {model} | {len(group)} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plane(rows: list[dict], path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ns = [r["entropy_power"] for r in rows]
    grid = np.geomspace(min(ns) / 2, max(ns) * 2, 100)
    ax.plot(grid, 1 / grid, "k--", lw=1, label="Stam's bound J N = 1")
    markers = {PAIRINGS[0]: "o", PAIRINGS[1]: "s"}
    for model, colour in (("VAE", "C0"), (f"FAE J_c = {TARGET_FACTORS['low']:g} J_VAE", "C1"),
                          (f"FAE J_c = {TARGET_FACTORS['high']:g} J_VAE", "C2")):
        for latent, marker in markers.items():
            pts = [(r["entropy_power"], r["fisher"]) for r in rows
                   if r["model"] == model and r["latent"] == latent]
            if not pts:
                continue
            ax.scatter(*zip(*pts, strict=True), c=colour, marker=marker, s=28,
                       label=f"{model}, {latent.split(':')[0]}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entropy power N (per latent dim)")
    ax.set_ylabel("location Fisher information J (per latent dim)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
