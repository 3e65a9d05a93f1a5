"""The report of chain folders (``autovae report CHAIN_FOLDER ...``), in the terms of the field.

One block answers "did it converge, how good is the answer, what did it cost": a verdict line
per folder, then one table whose rows are the figures (R-hat, bulk and tail ESS, divergences,
acceptance; error against the truth or a reference posterior, coverage, NSSWR; PDE solves,
time, ESS per 1000 solves and per second), each with its unit and a one-line meaning, and
whose columns are the folders, so that runs side by side align by row. Then an ArviZ-style
table per folder (mean, sd, HDI, MCSE, ESS, R-hat) for the first and the worst parameters, the
pictures one kind per row, and behind a fold everything else that summary.json, problem.json
and the settings hold.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chains import ChainFolder
from .diagnostics import RHAT_CONVERGED

__all__ = ["chain_block", "parameter_table"]

NSSWR_DOC = "docs/inverse.md#nsswr"


@dataclass
class Chain:
    """What the report reads of one chain folder."""

    folder: Path
    summary: dict[str, Any]
    problem: dict[str, Any]
    settings: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> Chain:
        cf = ChainFolder(folder)
        summary = cf.read_json(cf.summary) if cf.summary.is_file() else {}
        problem = cf.read_json(cf.problem) if cf.problem.is_file() else {}
        if not summary and cf.posterior.is_file():  # a run_chains folder: its diagnostics
            from .diagnostics import load_netcdf
            from .diagnostics import summary as diagnose

            summary = diagnose(load_netcdf(cf.posterior))
        elif not summary and cf.meta.is_file():  # still running
            meta = cf.read_json(cf.meta)
            summary = {"status": meta.get("status", "running"), "reason": meta.get("reason", "")}
        settings = summary.pop("settings", {}) or {}
        return cls(Path(folder), summary, problem, settings)

    @property
    def positive(self) -> bool:
        """Parameters > 0 (their errors and coverage are read in their logs)."""
        return self.summary.get("log_rel_l2_mean") is not None or \
            self.summary.get("reference") is not None

    @property
    def scale(self) -> str:
        """The parameters' name in the problem's own scale."""
        table = self.summary.get("parameters")
        if table:
            return table["label"]
        if self.problem.get("forward") == "darcy":
            return "log k"
        return "ln θ" if self.positive else "parameters"

    def get(self, key: str):
        s = self.summary
        if key in ("error", "coverage_2sd", "coverage_90") and self.positive:
            key = {"error": "log_rel_l2_mean"}.get(key, f"log_{key}")
        elif key == "error":
            key = "rel_l2_mean"
        if key.startswith("ref_"):
            return (s.get("reference") or {}).get(key[4:])
        return s.get(key)


# -- the figures -----------------------------------------------------------------------------
@dataclass
class Figure:
    """One row of the summary table: how to read it from a chain, and what it means."""

    label: str
    unit: str
    meaning: str
    value: Callable[[Chain], Any]
    fmt: Callable[[Any], str] = lambda v: f"{v:.3g}"


def _key(name: str) -> Callable[[Chain], Any]:
    return lambda ch: ch.get(name)


def _count(v) -> str:
    return f"{int(v):,}"


def _pct(v) -> str:
    return f"{100 * v:.0f}%"


def _status(ch: Chain) -> str | None:
    s = ch.summary.get("status")
    if s is None:
        return None
    reason = ch.summary.get("reason")
    return f"{s}: {reason}" if reason else s


def _ref_error(ch: Chain) -> str | None:
    e, own = ch.get("ref_rel_l2_mean_log_theta"), ch.get("ref_reference_rel_mcse_log_theta")
    if e is None:
        return None
    return f"{e:.3g} (its own MC error {own:.2g})" if own is not None else f"{e:.3g}"


GROUPS: list[tuple[str, list[Figure]]] = [
    ("Did it converge?", [
        Figure("status", "", "complete, diverged (stopped, with its reason) or running", _status,
               str),
        Figure("R-hat, max", "ratio",
               f"rank-normalised split R-hat, worst parameter: &le; {RHAT_CONVERGED} before any "
               "ESS below is trusted (1.01 is the strict rule)", _key("rhat_max")),
        Figure("ESS bulk, min", "draws",
               "effective independent draws for the mean and sd of the worst-mixed parameter",
               _key("ess_bulk_min"), lambda v: f"{v:,.0f}"),
        Figure("ESS tail, min", "draws",
               "effective draws for its 5% and 95% quantiles (the credible band's ends)",
               _key("ess_tail_min"), lambda v: f"{v:,.0f}"),
        Figure("divergences", "iterations",
               "NUTS trajectories whose energy blew up after warm-up: any means a region the "
               "chains may not reach", _key("divergences"), _count),
        Figure("mean acceptance probability", "fraction",
               "mean over iterations of min(1, ratio) (NUTS: over its trajectory); near the "
               "kernel's target (NUTS 0.8, pCN 0.27, RWM 0.23, MALA 0.57)",
               _key("mean_accept_prob"), lambda v: f"{v:.2f}"),
    ]),
    ("How good is the answer?", [
        Figure("error against the reference", "relative L2, ln θ",
               "|posterior mean - reference posterior mean| / |reference mean|; below the "
               "reference's own Monte-Carlo error it is not resolved", _ref_error, str),
        Figure("error against the truth", "relative L2",
               "|posterior mean - truth| / |truth|, in the problem's scale (ln θ for positive "
               "parameters, log k for Darcy)", _key("error")),
        Figure("... of the prior mean", "relative L2",
               "the same for the prior mean: what the data taught is the gap to the row above",
               _key("rel_l2_prior_mean")),
        Figure("truth within 2 sd", "fraction of parameters",
               "about 0.95 for a calibrated posterior; far below: overconfident",
               _key("coverage_2sd"), _pct),
        Figure("truth in the central 90% band", "fraction of parameters",
               "about 0.90 for a calibrated posterior", _key("coverage_90"), _pct),
        Figure("NSSWR", "ratio",
               "the draws' weighted sum of squared residuals of the data over the truth's "
               f"(defined in <code>{NSSWR_DOC}</code>): about 1 fits the data as the truth "
               "does, &gt;&gt; 1 misfits", _key("nsswr")),
    ]),
    ("What did it cost?", [
        Figure("PDE solves", "solves", "forward and adjoint, warm-up included, all chains",
               _key("solves"), _count),
        Figure("time", "s", "wall-clock, warm-up included, on the machine that ran it",
               _key("seconds"), lambda v: f"{v:,.1f}"),
        Figure("ESS per 1000 solves", "draws / 1000 solves",
               "bulk ESS min per cost: the figure that compares kernels across machines",
               _key("ess_per_1000_solves")),
        Figure("ESS per second", "draws / s", "bulk ESS min per second of wall time",
               _key("ess_per_second")),
    ]),
]

# summary.json keys the table above shows (the fold shows the others)
_SHOWN = {"status", "reason", "rhat_max", "ess_bulk_min", "ess_tail_min", "divergences",
          "mean_accept_prob", "rel_l2_mean", "log_rel_l2_mean", "rel_l2_prior_mean",
          "coverage_2sd", "coverage_90", "log_coverage_2sd", "log_coverage_90", "nsswr",
          "solves", "seconds", "ess_per_1000_solves", "ess_per_second", "reference",
          "acceptance_per_chain", "note", "parameters"}

_NAMES = {  # the fold: the remaining keys in words
    "kernel": "kernel", "chains": "chains", "draws": "kept draws per chain",
    "dim": "sampled dimensions", "converged": f"converged (R-hat <= {RHAT_CONVERGED})",
    "ess_bulk_median": "ESS bulk, median", "ess_tail_median": "ESS tail, median",
    "ess_per_draw": "ESS bulk min per kept draw",
    "ess_bulk_min_per_2000": "ESS bulk min per 2000 draws",
    "ess_bulk_median_per_2000": "ESS bulk median per 2000 draws",
    "ess_tail_min_per_2000": "ESS tail min per 2000 draws",
    "acceptance": "fraction of iterations that moved",
    "warmup_seconds": "warm-up time (s)", "potential_evals": "potential evaluations",
    "gradient_evals": "gradient evaluations", "solves_per_second": "PDE solves per second",
    "weighted_ssr_mean": "weighted SSR of the data, mean over draws",
    "weighted_ssr_truth": "weighted SSR of the data at the truth",
    "ssr_obs_mean": "SSR of the data (unweighted), mean over draws",
    "misfit_draws": "draws the misfits average", "posterior_sd_mean": "posterior sd, mean",
    "rmse_mean": "RMSE of the posterior mean", "ssr_params_mean": "SSR of parameters, mean",
    "coverage_1sd": "truth within 1 sd", "coverage_50": "truth in the central 50% band",
    "coverage_95": "truth in the central 95% band", "problem": "problem",
}


def _cell(fig: Figure, ch: Chain) -> str:
    v = fig.value(ch)
    if v is None:
        return "<td class=na>&ndash;</td>"
    text = fig.fmt(v) if not isinstance(v, float) or math.isfinite(v) else "n/a"
    return f"<td class=num>{html.escape(text)}</td>"


def _verdict(ch: Chain) -> str:
    """One line: converged or not, the answer's error, the cost."""
    s = ch.summary
    if not s.get("draws"):
        return f"<p class='verdict bad'>{html.escape(_status(ch) or 'no draws yet')}</p>"
    parts, ok = [], s.get("converged")
    if s.get("status") == "diverged":
        parts.append(f"stopped: {html.escape(str(s.get('reason', '')))}")
        ok = False
    elif s.get("rhat_max") is None:
        parts.append("convergence not checked (R-hat needs 2 chains)")
    elif ok:
        parts.append(f"converged (R-hat {s['rhat_max']:.3g} &le; {RHAT_CONVERGED})")
    else:
        parts.append(f"not converged (R-hat {s['rhat_max']:.3g} &gt; {RHAT_CONVERGED}): run "
                     "longer, the ESS is a floor")
    if s.get("ess_bulk_min") is not None:
        parts.append(f"{s['ess_bulk_min']:,.0f} effective draws")
    ref, err = _ref_error(ch), ch.get("error")
    if ref is not None:
        parts.append(f"error {ref} in ln θ against the reference")
    elif err is not None:
        cov = ch.get("coverage_2sd")
        parts.append(f"error {err:.3g} in {ch.scale} against the truth"
                     + (f", {_pct(cov)} within 2 sd" if cov is not None else ""))
    if s.get("solves") is not None:
        parts.append(f"{s['solves']:,} solves, {s.get('seconds', 0):,.0f} s")
    return f"<p class='verdict {'ok' if ok else 'bad'}'>" + " &middot; ".join(parts) + "</p>"


def _header(ch: Chain) -> str:
    p, s = ch.problem, ch.summary
    prior = p.get("prior_description", p.get("prior", ""))
    what = [p.get("problem", s.get("problem", "")), f"prior {prior}" if prior else "",
            p.get("forward", "") if p.get("forward") != p.get("problem") else "",
            s.get("kernel", ""),
            f"{s['chains']} chains &times; {s['draws']} draws" if s.get("draws") else "",
            f"{ch.settings['warmup']} warm-up" if ch.settings.get("warmup") else ""]
    return (f"<h3 class=folder>{html.escape(ch.folder.name)}</h3><p class=what>"
            + " &middot; ".join(x if "&" in str(x) else html.escape(str(x)) for x in what if x)
            + f"</p>{_verdict(ch)}")


def _summary_table(chains: list[Chain]) -> str:
    many = len(chains) > 1
    head = "".join(f"<th class=num>{html.escape(c.folder.name)}</th>" for c in chains) \
        if many else "<th class=num>value</th>"
    rows = [f"<table class=figures><tr><th>figure</th>{head}<th>unit</th><th>meaning</th></tr>"]
    for title, figures in GROUPS:
        shown = [f for f in figures if any(f.value(c) is not None for c in chains)]
        if not shown:
            continue
        rows.append(f"<tr class=group><th colspan={len(chains) + 3}>{title}</th></tr>")
        for f in shown:
            unit = f.unit
            if f.label == "error against the truth":
                scales = {c.scale for c in chains if f.value(c) is not None}
                unit = f"relative L2, {', '.join(sorted(scales))}"
            rows.append(f"<tr><td>{f.label}</td>{''.join(_cell(f, c) for c in chains)}"
                        f"<td class=unit>{html.escape(unit)}</td><td class=meaning>{f.meaning}"
                        "</td></tr>")
    return "".join(rows) + "</table>"


COLUMNS = ("mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "ess_bulk", "ess_tail", "r_hat")


def parameter_table(values, label: str, truth=None, names: list[str] | None = None,
                    first: int = 3, worst: int = 3) -> dict[str, Any]:
    """ArviZ's summary (mean, sd, 94% HDI, MCSE of the mean, bulk and tail ESS, rank R-hat) of
    the ``first`` parameters and the ``worst`` (highest R-hat, then lowest bulk ESS) of
    draws ``values`` (chains, draws, n): what summary.json keeps as ``parameters`` and the
    report shows. ``truth`` (n,) and ``names`` (n,) in the same scale and order."""
    import arviz as az
    import numpy as np

    values = np.asarray(values, dtype=float)
    values = values.reshape(*values.shape[:2], -1)
    n = values.shape[-1]
    if n <= first + worst:
        picked, bad = list(range(n)), set()
    else:
        rhat = np.asarray(az.rhat(az.convert_to_dataset(values), method="rank")["x"])
        ess = np.asarray(az.ess(az.convert_to_dataset(values), method="bulk")["x"])
        key = np.nan_to_num(rhat, nan=0.0)
        order = sorted(range(first, n), key=lambda i: (-key[i], ess[i]))
        bad = set(order[:worst])
        picked = list(range(first)) + order[:worst]
    table = az.summary({"p": values[..., picked]}, round_to="none")
    rows = []
    for k, i in enumerate(picked):
        r = table.iloc[k]
        row = {"index": int(i), "name": names[i] if names else f"[{i}]", "worst": i in bad,
               **{c: (float(r[c]) if math.isfinite(float(r[c])) else None) for c in COLUMNS}}
        if truth is not None:
            row["truth"] = float(np.asarray(truth).reshape(-1)[i])
        rows.append(row)
    return {"label": label, "parameters": n, "first": first, "worst": worst, "rows": rows}


def _from_posterior(ch: Chain) -> dict[str, Any] | None:
    """The table of the sampled coordinates z, for a folder whose summary has none."""
    cf = ChainFolder(ch.folder)
    if not cf.posterior.is_file():
        return None
    from .diagnostics import load_netcdf

    z = load_netcdf(cf.posterior).posterior["z"].values
    return parameter_table(z, "latent z")


def _parameter_table(ch: Chain) -> str:
    t = ch.summary.get("parameters") or _from_posterior(ch)
    if t is None:
        return "<p class=na>no draws yet</p>"
    truth = any("truth" in r for r in t["rows"])
    head = "".join(f"<th class=num>{c.replace('_', ' ')}</th>" for c in COLUMNS)
    rows = [f"<table class=params><tr><th>{html.escape(t['label'])}</th>"
            f"{'<th class=num>truth</th>' if truth else ''}{head}</tr>"]

    def num(c, v):
        if v is None:
            return "<td class=na>&ndash;</td>"
        return f"<td class=num>{v:,.0f}</td>" if c.startswith("ess") else \
            f"<td class=num>{v:.3g}</td>"

    for r in t["rows"]:
        tag = " <span class=worst>worst</span>" if r["worst"] else ""
        t_cell = num("truth", r.get("truth")) if truth else ""
        rows.append(f"<tr><td>{html.escape(r['name'])}{tag}</td>{t_cell}"
                    + "".join(num(c, r[c]) for c in COLUMNS) + "</tr>")
    n = t["parameters"]
    note = (f"<p class=note>{n} parameters: the first {t['first']} and the {t['worst']} with "
            "the highest R-hat (then lowest bulk ESS); HDI: ArviZ's 94% highest-density "
            "interval; MCSE: Monte-Carlo standard error of the mean.</p>"
            if n > t["first"] + t["worst"] else "")
    return "".join(rows) + "</table>" + note


def _fold(ch: Chain) -> str:
    rest = {k: v for k, v in ch.summary.items() if k not in _SHOWN}
    ref = {k: v for k, v in (ch.summary.get("reference") or {}).items() if k != "curve"}

    def row(k, v):
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, list):
            v = ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v)
        return (f"<tr><td>{html.escape(_NAMES.get(k, k.replace('_', ' ')))}</td>"
                f"<td>{html.escape(str(v))}</td></tr>")

    acc = ch.summary.get("acceptance_per_chain")
    parts = ["<table>", *(row(k, v) for k, v in rest.items() if v not in (None, "")),
             row("fraction moved, per chain", acc) if acc else "",
             *(row(f"reference: {k.replace('_', ' ')}", v) for k, v in ref.items()),
             "</table><h4>settings</h4><table>",
             *(row(k, v) for k, v in ch.settings.items() if v is not None),
             "</table><h4>problem</h4><table>",
             *(row(k, v) for k, v in ch.problem.items()
               if k not in ("prior_probe", "points") and v is not None), "</table>"]
    return "".join(parts)


def _picture(folder: Path, name: str) -> str:
    path = folder / name
    if not path.is_file():
        return "<div class=cell></div>"
    title = name[:-4].replace("_", " ")
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<div class=cell><img class=figure data-kind='{name}' alt='{title}' "
            f"src='data:image/png;base64,{data}'></div>")


def chain_block(folders: list[Path]) -> str:
    """The HTML block of one or more chain folders, side by side."""
    chains = [Chain.read(f) for f in folders]
    n = len(chains)
    grid = f"<div class=grid style='grid-template-columns: repeat({n}, minmax(0, 1fr))'>"
    parts = ["<section class=chains><h2>Inversion" + ("s" if n > 1 else "") + "</h2>",
             grid, *(f"<div class=cell>{_header(c)}</div>" for c in chains), "</div>",
             _summary_table(chains),
             "<h3>per parameter</h3>", grid,
             *(f"<div class=cell>{_parameter_table(c)}</div>" for c in chains), "</div>"]
    for name in ChainFolder.PICTURES:
        if any((c.folder / name).is_file() for c in chains):
            parts += [f"<h3>{name[:-4].replace('_', ' ')}</h3>", grid,
                      *(_picture(c.folder, name) for c in chains), "</div>"]
    parts += ["<details><summary>everything else: summary.json, settings, problem</summary>",
              grid, *(f"<div class=cell><h4>{html.escape(c.folder.name)}</h4>{_fold(c)}</div>"
                      for c in chains), "</div></details></section>"]
    return "".join(parts)


STYLE = """
section.chains { max-width: none; }
.grid { display: grid; gap: 1.5em; align-items: start; }
.grid .cell { min-width: 0; overflow-x: auto; }
img.figure { display: block; width: 100%; max-width: 1200px; height: auto; border: 1px solid #ddd; }
.verdict { font-weight: 600; padding: 4px 8px; border-left: 5px solid; }
.verdict.ok { border-color: #2a8a3a; background: #eef8ef; }
.verdict.bad { border-color: #c0392b; background: #fbeeee; }
.what { font-family: monospace; color: #555; margin: 0.2em 0; }
h3.folder { margin: 0.2em 0; }
table.figures { width: 100%; margin: 1em 0; }
table.figures tr.group th { background: #f3f3f3; padding-top: 6px; }
td.meaning { color: #555; font-size: 0.92em; }
td.unit { white-space: nowrap; color: #555; }
td.na { text-align: right; color: #aaa; }
th.num { text-align: right; }
table.params { font-size: 0.85em; }
table.params td, table.params th { white-space: nowrap; padding: 2px 5px; }
span.worst { color: #c0392b; font-size: 0.85em; }
p.note { color: #666; font-size: 0.85em; }
"""

# Checks in the browser that each kind of picture starts at the same height in every column
# (runs align by row), how far the most shrunk figure is scaled (legibility) and whether the
# page is wider than the window: a test reads them.
CHECK = """
window.addEventListener('load', () => {
  const kinds = {};
  document.querySelectorAll('img.figure').forEach(i => {
    (kinds[i.dataset.kind] = kinds[i.dataset.kind] || []).push(i);
  });
  let aligned = true, scale = 1;
  for (const imgs of Object.values(kinds)) {
    const tops = imgs.map(i => Math.round(i.getBoundingClientRect().top));
    if (Math.max(...tops) - Math.min(...tops) > 1) aligned = false;
    for (const i of imgs) scale = Math.min(scale, i.getBoundingClientRect().width / i.naturalWidth);
  }
  const page = document.scrollingElement;
  document.body.dataset.overflow = page.scrollWidth > page.clientWidth + 1 ? 'yes' : 'no';
  document.body.dataset.figuresAligned = aligned ? 'yes' : 'no';
  document.body.dataset.figureScale = scale.toFixed(2);
});
"""
