"""The AVA experiment: the paper's protocol on the orbit images, and a Fashion-MNIST table.

    python experiments/ava.py all                  # the reduced budget of docs/ava.md
    python experiments/ava.py all --full           # the full budget (see FULL below)
    python experiments/ava.py orbit --lrs 19 --seeds 3 --epochs 3
    python experiments/ava.py fmnist --seeds 3 --limit 10000 --epochs 5

orbit (AVA notes 1.8): the paper's "VAE" (``ava0``), GAN and AVA1-AVA5 trained on the 36 orbit
images at learning rates gamma = 1, 0.9, ..., 0.1, 0.09, ..., 0.01, in ``paper`` mode (plain SGD,
gamma_t = gamma / sqrt(t)) and ``modern`` mode (Adam at gamma / 100: Adam at lr 1 diverges), for
several seeds. Each run's "best" images (the decoded point code of every orbit image; G(0) for
the GAN) give BM, PSNR and SSIM against the 36 images; BM mean / max / min / SD are taken over
the learning rates, per seed, then averaged over seeds (mean and sd). A run whose loss goes
non-finite is counted as diverged and left out of the BM statistics.

fmnist: VAE, beta-VAE (beta = 4), GAN, VAE-GAN and AVA1-AVA5 (modern) on Fashion-MNIST: FID,
KID and IS on the domain classifier's features, BM / PSNR / SSIM of best images, and the test
NLL (IWAE) where a bound exists; mean and sd over seeds.

Results go to OUT/orbit.jsonl and OUT/fmnist.jsonl (one line per finished run: an interrupted
experiment continues where it stopped) and the tables to OUT/tables.md (default docs/ava/).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from autovae import Config, train
from autovae.data import load_data
from autovae.evaluation import best_images, evaluate, evaluate_quality
from autovae.models import NonFiniteLossError, model_class
from autovae.quality import balance_metric_images, reconstruction_metrics
from autovae.run import prepare

LRS = [round(0.1 * k, 2) for k in range(10, 0, -1)] + [round(0.01 * k, 2) for k in range(9, 0, -1)]
ORBIT_MODELS = ["ava0", "gan", "ava1", "ava2", "ava3", "ava4", "ava5"]
FMNIST_MODELS = ["vae", "beta-vae", "gan", "vae-gan", "ava1", "ava2", "ava3", "ava4", "ava5"]
LABEL = {"ava0": "VAE", "gan": "GAN", "vae": "VAE", "beta-vae": "beta-VAE", "vae-gan": "VAE-GAN"}
REDUCED = dict(lrs=3, seeds=3, epochs=1, repeat=10, hidden=32, limit=10000, fm_epochs=5,
               nll_samples=100, test_images=1000, quality_images=2000)
FULL = dict(lrs=19, seeds=3, epochs=10, repeat=30, hidden=64, limit=60000, fm_epochs=30,
            nll_samples=1000, test_images=10000, quality_images=10000)
PAPER_TABLE3 = {  # AVA notes 1.8, Table 3 of the paper: BM over 19 learning rates, one run each
    "VAE": (0.1207, 0.2147, 0.0568, 0.0606), "GAN": (0.2089, 0.2325, 0.1628, 0.0252),
    "AVA1": (0.2093, 0.2322, 0.1664, 0.0249), "AVA2": (0.2092, 0.2329, 0.1617, 0.0251),
    "AVA3": (0.1202, 0.2147, 0.0546, 0.0606), "AVA4": (0.1225, 0.2147, 0.0546, 0.0586),
    "AVA5": (0.2096, 0.2326, 0.1621, 0.0244)}


def _label(model: str) -> str:
    return LABEL.get(model, model.upper())


ORBIT_BUDGET = ("epochs", "repeat", "hidden", "batch_size")
FMNIST_BUDGET = ("limit", "fm_epochs", "nll_samples", "test_images", "quality_images")


def _budget(args, keys) -> dict:
    return {k: getattr(args, k) for k in keys}


def _done(path: Path, budget: dict | None = None) -> dict[str, dict]:
    """The finished runs of a results file by key. Rows written before budgets were recorded
    ran the reduced budget. With ``budget``: refuse a file of runs at another budget (its
    statistics would mix them)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    keys = ORBIT_BUDGET if path.stem == "orbit" else FMNIST_BUDGET
    for r in rows:
        r.setdefault("budget", {k: REDUCED.get(k, 6) for k in keys})  # batch_size default 6
        if budget is not None and r["budget"] != budget:
            sys.exit(f"{path} holds runs at the budget {r['budget']}, not {budget}: use "
                     "another --out for another budget")
    return {r["key"]: r for r in rows}


def _budget_line(rows: list[dict]) -> str:
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in rows}
    return f"\nBudget: {', '.join(sorted(budgets)) or '-'}\n"


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _train(config: Config, data, work: Path):
    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        return train(config, folder, data=data, progress=False).model, None
    except NonFiniteLossError as err:
        return None, str(err).split(":")[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- orbit


def orbit_config(model: str, mode: str, lr: float, seed: int, args) -> Config:
    disc = {"disc_hidden": args.hidden, "disc_depth": 1} if model not in ("ava0",) else {}
    return Config(model=model, data="orbit", ava_preset=mode,
                  lr=lr if mode == "paper" else lr / 100, epochs=args.epochs,
                  batch_size=args.batch_size, hidden=args.hidden, depth=1,
                  latent="normal/normal:10", likelihood="bernoulli", seed=seed, val_size=0,
                  **disc)


def run_orbit(args, out: Path, work: Path) -> list[dict]:
    path = out / "orbit.jsonl"
    budget = _budget(args, ORBIT_BUDGET)
    done = _done(path, budget)
    base = load_data("orbit")
    data = replace(base, train=base.train.repeat(args.repeat, 1, 1, 1))
    picks = sorted({round(i * (len(LRS) - 1) / max(1, args.lrs - 1)) for i in range(args.lrs)})
    lrs = [LRS[i] for i in picks]  # evenly spaced in log gamma: 3 gives 1, 0.1, 0.01
    for seed in range(args.seeds):
        for mode in ("paper", "modern"):
            for model in ORBIT_MODELS:
                for lr in lrs:
                    key = f"{mode}/{model}/{lr}/{seed}"
                    if key in done:
                        continue
                    started = time.perf_counter()
                    trained, diverged = _train(orbit_config(model, mode, lr, seed, args), data,
                                               work)
                    row = {"key": key, "mode": mode, "model": model, "lr": lr, "seed": seed,
                           "diverged": diverged, "budget": budget}
                    if trained is not None:
                        best = best_images(trained, base.test)
                        scores = reconstruction_metrics(base.test, best)
                        row.update(bm=balance_metric_images(best, base.test),
                                   psnr=scores["psnr"], ssim=scores["ssim"])
                    row["seconds"] = time.perf_counter() - started
                    _append(path, row)
                    done[key] = row
                    print(json.dumps(row), flush=True)
    return list(done.values())


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def reference_table() -> str:
    """BM of images that need no model: what a value of BM means."""
    x = load_data("orbit").test
    refs = {"the 36 images themselves": x.clone(),
            "their mean image, 36 times": x.mean(0, keepdim=True).expand_as(x).clone(),
            "uniform noise (seed 0)": torch.rand(x.shape, generator=torch.Generator()
                                                 .manual_seed(0)),
            "constant gray 0.5 (an untrained sigmoid decoder)": torch.full_like(x, 0.5),
            "constant black": torch.zeros_like(x), "constant white": torch.ones_like(x)}
    lines = ["\n### orbit: BM of images that need no model\n", "| images | BM |", "|---|---|"]
    lines += [f"| {name} | {balance_metric_images(img, x):.4f} |" for name, img in refs.items()]
    return "\n".join(lines) + "\n"


def orbit_tables(rows: list[dict]) -> str:
    lines = []
    for mode in ("paper", "modern"):
        lines += [f"\n### orbit, `{mode}` mode: BM over learning rates (mean ± sd over seeds)\n",
                  "| model | BM mean | BM max | BM min | BM SD | PSNR mean | diverged runs | "
                  "paper BM mean / max / min / SD |", "|---|---|---|---|---|---|---|---|"]
        for model in ORBIT_MODELS:
            mine = [r for r in rows if r["mode"] == mode and r["model"] == model]
            stats: dict[str, list[float]] = {"mean": [], "max": [], "min": [], "sd": [],
                                             "psnr": []}
            for seed in sorted({r["seed"] for r in mine}):
                bms = [r["bm"] for r in mine if r["seed"] == seed and r.get("bm") is not None]
                if len(bms) >= 2:
                    stats["mean"].append(statistics.mean(bms))
                    stats["max"].append(max(bms))
                    stats["min"].append(min(bms))
                    stats["sd"].append(statistics.stdev(bms))
                    stats["psnr"].append(statistics.mean(
                        r["psnr"] for r in mine if r["seed"] == seed and r.get("bm") is not None))
            paper = PAPER_TABLE3.get(_label(model))
            paper_text = " / ".join(f"{v:.4f}" for v in paper) if paper else "-"
            diverged = sum(r["diverged"] is not None for r in mine)
            lines.append(f"| {_label(model)} | {_mean_sd(stats['mean'])} | "
                         f"{_mean_sd(stats['max'])} | {_mean_sd(stats['min'])} | "
                         f"{_mean_sd(stats['sd'])} | {_mean_sd(stats['psnr'])} | "
                         f"{diverged}/{len(mine)} | {paper_text} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Fashion-MNIST


def fmnist_config(model: str, seed: int, args) -> Config:
    extra = {"beta": 4.0} if model == "beta-vae" else {}
    if model not in ("vae", "beta-vae"):
        extra["disc_hidden"] = 256
    if "nll_samples" in model_class(model).reads:  # a GAN has no bound, so no NLL
        extra["nll_samples"] = args.nll_samples
    return Config(model=model, data="fashion-mnist", limit=args.limit, val_size=1000,
                  epochs=args.fm_epochs, batch_size=100, hidden=256, depth=2,
                  latent="normal/normal:16", lr=1e-3, seed=seed, **extra)


def run_fmnist(args, out: Path, work: Path) -> list[dict]:
    path = out / "fmnist.jsonl"
    budget = _budget(args, FMNIST_BUDGET)
    done = _done(path, budget)
    for seed in range(args.seeds):
        data = None
        for model in FMNIST_MODELS:
            key = f"{model}/{seed}"
            if key in done:
                continue
            config = fmnist_config(model, seed, args)
            data = data if data is not None else prepare(config)
            started = time.perf_counter()
            trained, diverged = _train(config, data, work)
            row = {"key": key, "model": model, "seed": seed, "diverged": diverged,
                   "budget": budget}
            if trained is not None:
                train_seconds = time.perf_counter() - started
                torch.manual_seed(seed)
                metrics = evaluate(trained, data.test[: args.test_images],
                                   args.nll_samples if trained.has_bound else None)
                quality = evaluate_quality(trained, data, args.quality_images)
                row.update({k: metrics[k] for k in ("nll", "elbo") if k in metrics},
                           **{k: quality[k] for k in ("fid", "kid_mean", "is_mean", "best_psnr",
                                                      "best_ssim", "balance_metric",
                                                      "feature_extractor",
                                                      "feature_extractor_sha256")},
                           train_seconds=train_seconds)
            row["seconds"] = time.perf_counter() - started
            _append(path, row)
            done[key] = row
            print(json.dumps(row), flush=True)
    return list(done.values())


def fmnist_table(rows: list[dict]) -> str:
    keys = ["fid", "kid_mean", "is_mean", "balance_metric", "best_psnr", "best_ssim", "nll"]
    lines = ["\n### Fashion-MNIST (modern; mean ± sd over seeds)\n",
             "| model | FID | KID | IS | BM | PSNR (best) | SSIM (best) | NLL (nats) | "
             "train s |", "|---|---|---|---|---|---|---|---|---|"]
    for model in FMNIST_MODELS:
        mine = [r for r in rows if r["model"] == model and r["diverged"] is None]
        cells = []
        for k in keys:
            values = [r[k] for r in mine if k in r]
            fmt = _mean_sd(values)
            cells.append(fmt if k in ("balance_metric", "best_ssim") or fmt == "-" else
                         " ± ".join(f"{float(v):.3g}" if abs(float(v)) < 1 else f"{float(v):.2f}"
                                    for v in fmt.split(" ± ")))
        seconds = _mean_sd([r.get("train_seconds") for r in mine])
        lines.append(f"| {_label(model)} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("orbit", "fmnist", "all", "tables"))
    parser.add_argument("--full", action="store_true", help="the full budget (FULL)")
    parser.add_argument("--out", default="docs/ava", help="results folder")
    parser.add_argument("--lrs", type=int, help="learning rates of the 19 (evenly spaced)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int, help="orbit epochs")
    parser.add_argument("--repeat", type=int, help="orbit: passes over the 36 images per epoch")
    parser.add_argument("--batch-size", type=int, default=6, help="orbit batch size")
    parser.add_argument("--hidden", type=int, help="orbit hidden units")
    parser.add_argument("--limit", type=int, help="Fashion-MNIST training images")
    parser.add_argument("--fm-epochs", type=int, help="Fashion-MNIST epochs")
    parser.add_argument("--nll-samples", type=int)
    parser.add_argument("--test-images", type=int, help="Fashion-MNIST test images for the NLL")
    parser.add_argument("--quality-images", type=int, help="images for FID/KID/IS and BM")
    args = parser.parse_args(argv)
    for key, value in (FULL if args.full else REDUCED).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ava-runs-"))
    torch.set_num_threads(1)
    try:
        if args.part in ("orbit", "all"):
            run_orbit(args, out, work)
        if args.part in ("fmnist", "all"):
            run_fmnist(args, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "# AVA experiment tables (written by experiments/ava.py)\n"
    orbit = list(_done(out / "orbit.jsonl").values())
    fmnist = list(_done(out / "fmnist.jsonl").values())
    if orbit:
        lrs = sorted({r["lr"] for r in orbit}, reverse=True)
        text += _budget_line(orbit) + f"Learning rates ({len(lrs)}): {lrs}\n"
        text += orbit_tables(orbit) + reference_table()
    if fmnist:
        text += _budget_line(fmnist) + fmnist_table(fmnist)
    (out / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
