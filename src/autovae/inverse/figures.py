"""The pictures of an inversion, in the problem's own scale, legible at half a page's width.

* ``fields.png`` -- the parameters as images (truth, posterior mean on one colour scale; sd;
  error), with the observation points and the error-bar parameters marked;
* ``traces.png`` -- the first two and the two worst-mixing (highest R-hat) sampled coordinates,
  one colour per chain, with a legend;
* ``error_bars.png`` -- posterior mean +- 2 sd against the truth for the parameters the data
  inform most (largest sensitivity, :func:`informed`) or those a user names;
* ``calibration.png`` -- nominal against empirical coverage of the truth;
* ``reference_error.png`` -- the posterior mean's error against a reference posterior, against
  the PDE solves spent.

A positive-parameter problem (the forward model's ``positive``, Aristoff-Bangerth's theta) is
drawn in ln theta: its sd, error bars and fields are those of ln theta, whose posterior is
nearly Gaussian where theta's spans decades (theta stays in ``posterior.nc`` and in
summary.json's errors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_path

__all__ = ["PictureData", "Scale", "draw_pictures", "informed", "scale_of", "sensitivity"]

WIDTH = 10.0  # inches: 1200 px at DPI, every picture the same width (they align in a report)
DPI = 120
FONT = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "xtick.labelsize": 12,
        "ytick.labelsize": 12, "legend.fontsize": 12}
ERROR_BARS = 12  # parameters on error_bars.png


class Scale:
    """How a problem's parameters are shown: ``log`` (ln of positive parameters) and the
    name (``label``) in that scale."""

    def __init__(self, log: bool, label: str):
        self.log, self.label = log, label

    def __repr__(self) -> str:
        return f"Scale(log={self.log}, label={self.label!r})"


def scale_of(problem) -> Scale:
    """ln of a positive-parameter problem's parameters (ln theta), else as they are."""
    f = problem.forward
    name = getattr(f, "parameter_label", "parameter")
    if getattr(f, "positive", False):
        return Scale(True, f"ln {'θ' if name == 'parameter' else name}")
    return Scale(False, name)


def index_names(shape: Sequence[int], idx) -> list[str]:
    """Names of flattened parameter indices: ``(row,col)`` of a field, ``[i]`` of a vector."""
    if len(shape) == 2:
        return [f"({i // shape[1]},{i % shape[1]})" for i in idx]
    return [f"[{i}]" for i in idx]


def sensitivity(problem, params: torch.Tensor, scale: Scale, probes: int = 256
                ) -> torch.Tensor | None:
    """diag(J^T diag(1/sigma^2) J) per parameter (in ``scale``: d/d ln theta for log), J the
    forward model's Jacobian at ``params`` (*param_shape): how strongly the data pin each
    parameter. Exact with one backward pass per observation up to ``probes`` observations,
    else Hutchinson's estimate from ``probes`` random sign vectors. None where the forward
    model gives no gradient."""
    f = problem.forward
    if not getattr(f, "gradient", True):
        return None
    x = params.detach().to(torch.float64).reshape(1, *f.param_shape)
    x = (x.log() if scale.log else x).clone().requires_grad_(True)
    with torch.enable_grad():
        r = f(x.exp() if scale.log else x)[0] / problem.sigma
        n_obs = r.shape[0]
        if n_obs <= probes:
            vs = torch.eye(n_obs, dtype=r.dtype)
        else:
            g = torch.Generator().manual_seed(0)
            vs = torch.randint(0, 2, (probes, n_obs), generator=g).to(r.dtype) * 2 - 1
        total = torch.zeros(x.numel(), dtype=torch.float64)
        for k, v in enumerate(vs):
            (gk,) = torch.autograd.grad(r, x, v, retain_graph=k < len(vs) - 1)
            total += gk.reshape(-1) ** 2
    return total / (1 if n_obs <= probes else len(vs))


def informed(problem, params: torch.Tensor, scale: Scale, k: int = ERROR_BARS
             ) -> tuple[list[int], str]:
    """The ``k`` parameters the data inform most (largest :func:`sensitivity` at ``params``),
    and how they were chosen; evenly spaced ones where the model gives no gradient."""
    n = int(np.prod(problem.forward.param_shape))
    k = min(k, n)
    why = "the forward model gives no gradient to rank them"
    try:
        s = sensitivity(problem, params, scale)
    except Exception as err:  # noqa: BLE001 (a picture never fails the run that made it)
        s, why = None, f"ranking them failed: {type(err).__name__}"
    if s is not None and not torch.isfinite(s).all():
        s, why = None, "the sensitivity is not finite at the posterior mean"
    if s is None:
        idx = np.linspace(0, n - 1, k).round().astype(int).tolist()
        return idx, f"evenly spaced ({why})"
    idx = torch.argsort(s, descending=True)[:k].tolist()
    return idx, "the data inform most: largest Σ_k (∂F_k/∂p / σ_k)² at the posterior mean"


def _as_image(t: torch.Tensor) -> torch.Tensor | None:
    """Parameters as a 2-D picture: a field as it is, a square count as a square."""
    t = t.reshape(-1) if t.ndim != 2 else t
    if t.ndim == 2:
        return t
    m = math.isqrt(t.numel())
    return t.reshape(m, m) if m * m == t.numel() else None


def _rhat(draws: np.ndarray) -> np.ndarray:
    import arviz as az

    if draws.shape[0] < 2 or draws.shape[1] < 4:
        return np.zeros(draws.shape[-1])
    r = np.asarray(az.rhat(az.convert_to_dataset(draws), method="rank")["x"])
    return np.nan_to_num(r, nan=0.0)


class PictureData:
    """The numbers the pictures show, in the problem's scale (:func:`scale_of`): posterior
    ``mean`` and ``sd`` (*param_shape), ``truth`` (or None), the error-bar parameters
    ``chosen`` (flattened indices) and ``how`` they were chosen."""

    def __init__(self, problem, draws, truth=None, error_bars: Sequence[int] | None = None):
        self.scale = scale = scale_of(problem)
        self.mean, self.sd, _ = problem.posterior_params(draws, log=scale.log)
        self.shape = tuple(self.mean.shape)
        self.truth = None
        if truth is not None:
            t = torch.as_tensor(truth, dtype=torch.float64).reshape(self.shape)
            self.truth = t.log() if scale.log else t
        n = self.mean.numel()
        if error_bars is not None:
            bad = [i for i in error_bars if not 0 <= int(i) < n]
            if bad:
                raise ValueError(f"--error-bars: parameter indices {bad} lie outside 0..{n - 1} "
                                 f"(this problem has {n} parameters)")
            self.chosen, self.how = [int(i) for i in error_bars], "chosen by --error-bars"
        else:
            at = self.mean.exp() if scale.log else self.mean
            self.chosen, self.how = informed(problem, at, scale)


def draw_pictures(folder: Path, problem, result, truth=None,
                  reference: dict[str, Any] | None = None,
                  error_bars: Sequence[int] | None = None,
                  figures: dict[str, Any] | None = None) -> list[str]:
    """Write the pictures of a chain run into ``folder``; returns their file names.
    ``error_bars``: the parameter indices (flattened) for error_bars.png, else
    :func:`informed`; ``figures``: a dict that receives each matplotlib figure by file name."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written: list[str] = []

    def new(height: float, **kw):
        fig = Figure(figsize=(WIDTH, height), **kw)
        FigureCanvasAgg(fig)
        return fig

    def save(fig, name):
        with atomic_path(Path(folder) / name) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        written.append(name)
        if figures is not None:
            figures[name] = fig

    data = PictureData(problem, result.draws, truth, error_bars)
    scale, mean, sd, t, shape = data.scale, data.mean, data.sd, data.truth, data.shape
    chosen, how = data.chosen, data.how
    points = getattr(problem.forward, "points", None)
    signed = bool(getattr(problem.forward, "signed", False))

    with matplotlib.rc_context(FONT):
        # -- fields: 2 x 2, truth and mean on one colour scale ------------------------------
        panels = [("posterior mean", mean), ("posterior sd", sd)]
        if t is not None:
            panels = [("truth", t), panels[0], panels[1], ("|mean - truth|", (mean - t).abs())]
        images = [(title, _as_image(v)) for title, v in panels]
        if all(img is not None for _, img in images):
            rows = math.ceil(len(images) / 2)
            fig = new(0.86 * WIDTH / 2 * rows + 0.4)
            shared = torch.stack([img for title, img in images
                                  if title in ("truth", "posterior mean")])
            lo, hi = float(shared.min()), float(shared.max())
            if signed:
                lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
            side = images[0][1].shape[0]
            for i, (title, img) in enumerate(images):
                ax = fig.add_subplot(rows, 2, i + 1)
                on_scale = title in ("truth", "posterior mean")
                im = ax.imshow(img.numpy(), origin="lower", extent=(0, 1, 0, 1),
                               cmap="RdBu_r" if signed and on_scale else "viridis",
                               vmin=lo if on_scale else None, vmax=hi if on_scale else None)
                if points is not None:
                    pts = np.asarray(points)
                    ax.scatter(pts[:, 0], pts[:, 1], s=6, c="k", label="observation points")
                if title == "posterior sd":  # where the error bars are
                    for rank, j in enumerate(chosen[:ERROR_BARS]):
                        cols = img.shape[1]
                        ax.text((j % cols + 0.5) / cols, (j // cols + 0.5) / side,
                                str(rank + 1), ha="center", va="center", fontsize=11,
                                color="w", fontweight="bold")
                ax.set_title(f"{title} ({scale.label})")
                ax.set_xticks([0, 0.5, 1])
                ax.set_yticks([0, 0.5, 1])
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            fig.suptitle(f"{scale.label}: truth and mean share a colour scale; numbers on the "
                         "sd mark the error-bar parameters", fontsize=12)
            fig.tight_layout()
            save(fig, "fields.png")

        # -- traces: first two and two worst sampled coordinates, a legend of chains -------
        draws = result.draws
        d = draws.shape[-1]
        rh = _rhat(draws)
        worst = [int(j) for j in np.argsort(-rh) if j >= 2][:2]
        coords = sorted(set(range(min(2, d))) | set(worst)) if d > 4 else list(range(d))
        from .priors import LogDensityPrior

        in_log = isinstance(problem.prior, LogDensityPrior)  # z is ln theta itself
        fig = new(1.6 * len(coords) + 0.9)
        for row, j in enumerate(coords):
            ax = fig.add_subplot(len(coords), 1, row + 1)
            for c in range(draws.shape[0]):
                ax.plot(draws[c, :, j], lw=0.7, label=f"chain {c}", color=f"C{c % 10}")
            name = f"{scale.label}[{j}]" if in_log else f"z[{j}]"
            ax.set_ylabel(name + (f"\nR-hat {rh[j]:.2f}" if rh[j] else ""))
            if row == 0:
                ax.legend(ncol=min(draws.shape[0], 8), loc="lower left",
                          bbox_to_anchor=(0, 1.02), frameon=False, fontsize=11)
        acc = np.mean(result.mean_accept_prob)
        fig.suptitle(f"{result.kernel} after warm-up: the first and the worst-mixing sampled "
                     f"coordinates (mean acceptance probability {acc:.2f})", fontsize=12)
        fig.axes[-1].set_xlabel("kept draw")
        fig.tight_layout()
        save(fig, "traces.png")

        # -- error bars: the informed parameters, most informed first -----------------------
        fig = new(4.6)
        ax = fig.add_subplot()
        x = np.arange(len(chosen))
        flat_mean, flat_sd = mean.reshape(-1).numpy(), sd.reshape(-1).numpy()
        ax.errorbar(x, flat_mean[chosen], yerr=2 * flat_sd[chosen], fmt="o", capsize=4,
                    label="posterior mean ± 2 sd")
        if t is not None:
            ax.plot(x, t.reshape(-1).numpy()[chosen], "rx", ms=9, mew=2, label="truth")
        ax.set_xticks(x, index_names(shape, chosen), rotation=45 if len(shape) == 2 else 0)
        ax.set_xlabel(("cell (row, column)" if len(shape) == 2 else "parameter")
                      + ", the order of the numbers on fields.png")
        ax.set_ylabel(scale.label)
        ax.set_title(how, fontsize=12)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save(fig, "error_bars.png")

        if t is not None:
            levels, cover = problem.coverage_curve(result.draws, truth)
            fig = new(4.6)
            ax = fig.add_subplot()
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
            ax.plot(levels, cover, "o-", ms=4, label="this posterior")
            ax.set_xlabel("nominal level of the central interval")
            ax.set_ylabel("fraction of parameters covered")
            ax.set_title("calibration against the truth: below the diagonal is overconfident",
                         fontsize=12)
            ax.set_aspect("equal")
            ax.legend(loc="upper left")
            fig.tight_layout()
            save(fig, "calibration.png")

        if reference is not None and "curve" in reference:
            from matplotlib.ticker import NullLocator

            fig = new(4.6)
            ax = fig.add_subplot()
            spent = [c["solves_per_chain"] for c in reference["curve"]]
            for key, name, colour in (("log_theta", "ln θ", "C0"), ("theta", "θ", "C1")):
                ax.loglog(spent, [c[f"rel_l2_mean_{key}"] for c in reference["curve"]], "o-",
                          ms=4, color=colour, label=f"{name}: this run")
                ax.axhline(reference[f"reference_rel_mcse_{key}"], color=colour, ls=":", lw=1.5,
                           label=f"{name}: the reference's own MC error")
            ticks = np.geomspace(min(spent), max(spent), 4)  # readable within one decade
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ticks, [f"{v:,.0f}" for v in ticks])
            ax.set_xlabel("PDE solves per chain (warm-up included)")
            ax.set_ylabel("relative L2 error\nof the posterior mean")
            ax.set_title("against the reference posterior", fontsize=12)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.01, 1))
            fig.tight_layout()
            save(fig, "reference_error.png")
    return written
