"""Run reports: one self-contained HTML page (images embedded) per run, or runs side by side.

``write_report([run_folder, ...], out)`` gathers, for every run: its config, training curves
(from ``metrics.jsonl``), samples, reconstructions, the latent map and the metrics table (from
``metrics.json``, with units and sample counts). Pictures that the run folder lacks are made
from its checkpoint. A study folder stands for its best trials.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import torch

from ._checks import check_output_file, syntax_error
from ._files import atomic_write
from .run import Run, StudyFolder

__all__ = ["collect_runs", "write_report"]

_UNITS = {
    "test_elbo": ("test ELBO", "nats / image"),
    "test_bound": ("test bound (the run's)", "nats / image"),
    "test_nll": ("test NLL, IWAE", "nats / image"),
    "test_log_lik": ("test log-likelihood term", "nats / image"),
    "test_kl": ("test KL", "nats / image"),
    "recon_mse": ("reconstruction MSE", "per pixel, data in [0, 1]"),
    "nll_samples": ("K for the NLL", "samples"),
    "test_images": ("test images", "images"),
    "fid": ("FID (see feature extractor)", "lower is better"),
    "kid_mean": ("KID mean", "lower is better"),
    "kid_std": ("KID std over subsets", ""),
    "is_mean": ("Inception score", "higher is better"),
    "is_real_mean": ("Inception score of real images", "reference"),
    "recon_psnr": ("reconstruction PSNR", "dB"),
    "recon_ssim": ("reconstruction SSIM", "1 is identical"),
    "balance_metric": ("balance metric BM (AVA)", "in [0, 0.25]"),
    "active_units": ("active latent units", "Var of the code > 0.01"),
    "test_fisher": ("posterior location Fisher information J", "per latent dim"),
    "test_entropy_power": ("posterior entropy power N", "Stam: J N >= 1"),
}


def _validation_score(history: list[dict]) -> float | None:
    """Minus the last epoch's first validation number (val_elbo for a VAE): lower is better."""
    if not history:
        return None
    keys = [k for k in history[-1] if k.startswith("val_")]
    key = "val_elbo" if "val_elbo" in keys else (keys[0] if keys else None)
    return None if key is None else -history[-1][key]


def collect_runs(paths: list[str | Path], top: int = 3) -> list[Path]:
    """Run folders from run folders and study folders (a study gives the ``top`` trials with
    the best final validation ELBO)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        study = StudyFolder(p)
        if Run(p).has_config() or _is_chain(p):
            runs.append(p)
        elif study.trials_dir.is_dir():
            ranked = [(score, run.folder) for run in study.trial_runs()
                      if (score := _validation_score(run.history())) is not None]
            if not ranked and not study.analysis_path.exists():
                raise ValueError(f"study folder {p} has no finished trials")
            runs += [t for _, t in sorted(ranked)[:top]]
        else:
            raise ValueError(f"{p} is neither a run folder (config.yaml), a study folder "
                             "(trials/) nor a chain folder of 'autovae invert' (summary.json)")
    if not runs:
        raise ValueError("no runs to report")
    return runs


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _curves(history: list[dict]) -> str | None:
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    for key, label in (("train_bound", "train bound"), ("val_bound", "validation bound"),
                       ("val_elbo", "validation ELBO")):
        if all(key in r for r in history):
            ax.plot(epochs, [r[key] for r in history], marker="o", ms=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _fisher_shannon_plane(runs: list[Path]) -> str | None:
    """Each run with test_fisher and test_entropy_power as a point in the Fisher-Shannon plane,
    with Stam's bound J N = 1 (no posterior lies below it; Gaussians lie on it)."""
    points = [(run.name, m["test_fisher"], m["test_entropy_power"]) for run in runs
              if {"test_fisher", "test_entropy_power"} <= set(m := Run(run).metrics())]
    if not points:
        return None
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ns = [p[2] for p in points]
    grid = np.geomspace(min(ns) / 3, max(ns) * 3, 100)
    ax.plot(grid, 1 / grid, "k--", lw=1, label="Stam's bound J N = 1")
    for name, j, n in points:
        ax.scatter([n], [j], s=30)
        ax.annotate(name, (n, j), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entropy power N (per latent dim)")
    ax.set_ylabel("location Fisher information J (per latent dim)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _pictures(folder: Path) -> dict[str, str]:
    """The run's pictures (:func:`autovae.pictures.run_pictures`) as base64 PNG, made from
    the checkpoint where the run folder lacks them."""
    from .models import model_class
    from .pictures import picture_files, run_pictures
    from .run import load_trained

    files = picture_files(folder, model_class(Run(folder).load_config().model).has_encoder)
    if not all(f.exists() for f in files.values()):
        _, _, model, data = load_trained(folder, "cpu")
        torch.manual_seed(0)
        files = run_pictures(model, data, folder, only_missing=True)
    return {k: _file_png(v) for k, v in files.items()}


def _metrics_table(metrics: dict) -> str:
    rows = []
    for key, value in metrics.items():
        label, unit = _UNITS.get(key, (key.replace("_", " "), ""))
        shown = f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
        rows.append(f"<tr><td>{html.escape(label)}</td><td class=num>{shown}</td>"
                    f"<td>{html.escape(unit)}</td></tr>")
    return "<table><tr><th>metric</th><th>value</th><th>unit</th></tr>" + "".join(rows) + \
        "</table>"


def _read_json(path: Path) -> dict:
    """A JSON file of a run or chain folder; a cut or damaged one is a ValueError naming it."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise syntax_error(path, "JSON", err) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _is_chain(folder: Path) -> bool:
    """A chain folder of ``autovae invert`` (or ``run_chains``)."""
    from .inverse.chains import ChainFolder

    return ChainFolder(folder).is_chain()


def _run_section(folder: Path) -> str:
    run = Run(folder)
    config = run.load_config()
    metrics = _read_json(run.metrics_path) if run.metrics_path.is_file() else {}
    curves = _curves(run.history())
    pictures = _pictures(folder)
    parts = [f"<section><h2>{html.escape(folder.name)}</h2>",
             f"<p class=latent>{html.escape(config.model)} &middot; "
             f"{html.escape(config.latent)} &middot; likelihood "
             f"{html.escape(config.likelihood)} &middot; alpha {config.alpha:g}, K "
             f"{config.samples}, beta {config.beta:g} &middot; {html.escape(config.data)}</p>"]
    parts.append("<h3>metrics</h3>" + (_metrics_table(metrics) if metrics else
                                       "<p>not evaluated yet: run <code>autovae evaluate "
                                       f"{html.escape(str(folder))}</code></p>"))
    if curves:
        parts.append(f"<h3>training</h3><img alt='training curves' "
                     f"src='data:image/png;base64,{curves}'>")
    for name, data in pictures.items():
        parts.append(f"<h3>{name}</h3><img class=pixel alt='{name}' "
                     f"src='data:image/png;base64,{data}'>")
    rows = "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in config.to_dict().items())
    parts.append(f"<details><summary>config</summary><table>{rows}</table></details></section>")
    return "".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.runs { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }
section { flex: 1 1 420px; max-width: 640px; }
img { max-width: 100%; border: 1px solid #ddd; }
img.pixel { image-rendering: pixelated; width: 100%; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.latent { font-family: monospace; }
"""

# Counts the images the browser could decode: a test reads it from the rendered page.
_CHECK = """
window.addEventListener('load', () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + '/' + document.images.length;
});
"""


def write_report(paths: list[str | Path], out: str | Path | None = None, top: int = 3) -> Path:
    """Write the HTML report of one or more runs (or studies) and return its path; chain
    folders of ``autovae invert`` get the inversion report
    (:func:`autovae.inverse.report.chain_block`), side by side."""
    from .inverse.report import CHECK, STYLE, chain_block

    runs = collect_runs(paths, top)
    out = check_output_file(Path(out) if out is not None else runs[0] / "report.html",
                            "report file")
    chains = [r for r in runs if _is_chain(r)]
    models = [r for r in runs if r not in chains]
    title = "autovae report: " + ", ".join(r.name for r in runs)
    body = ""
    if models:
        body += ("<p>NLLs of different likelihood beliefs are not comparable (Bernoulli is a "
                 "pmf, the others densities); bounds are in nats per image, higher is "
                 "better.</p><div class=runs>" + "".join(map(_run_section, models)) + "</div>")
        if plane := _fisher_shannon_plane(models):
            body += (f"<h2>Fisher-Shannon plane</h2><img alt='Fisher-Shannon plane' "
                     f"src='data:image/png;base64,{plane}'>")
    if chains:
        body += chain_block(chains)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}{STYLE}</style><script>{_CHECK}{CHECK}</script></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    atomic_write(out, lambda f: f.write(page.encode()))
    return out
