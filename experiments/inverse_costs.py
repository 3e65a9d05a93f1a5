"""Cost-honest tables of the inverse experiment (docs/inverse.md), from the stored JSON alone.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python experiments/inverse.py --stage tables
    python experiments/inverse_costs.py      # the same tables; needs only json and numpy

Reads docs/results/inverse_tierB.json (one row per chain folder's summary.json) and
docs/results/inverse_tierA.json and writes docs/results/inverse_tables.md. No chain is run.

Units. A "draw" is a kept post-warm-up draw, over all chains (chains x kept). A "PDE solve"
is one sparse solve of the 16 x 16 Darcy system: pCN makes one forward solve per potential
evaluation; each NUTS gradient evaluation is one forward solve and one adjoint solve (the
adjoint reuses the forward solve's LU factors), so solves = potential_evals + gradient_evals.
Solves and seconds include warm-up. ESS is ArviZ's rank-normalised bulk and tail ESS over all
chains, min and median over the 16 latent coordinates. A chain set with max R-hat > 1.05 has
not converged: its ESS is what the estimator returns for chains that sit apart (about one
per chain), a floor, not a measurement of the sampler's mixing.

The authors' chain (spec section 3.2, [DERIVED] from zabaras/MH-MDGM's released 16-dim GRF
output): one pCN chain of 7,000 steps, 5,000 of them burn-in, one forward solve per step;
ESS 3-18 per latent coordinate (median about 9, Geyer initial positive sequence) over its
2,000 post-burn-in draws; no timing is reported, so there is no ESS per second to compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = Path("docs/results")
RHAT_OK = 1.05
AUTHORS = {"steps": 7000, "burn_in": 5000, "kept": 2000, "solves": 7000,
           "ess_min": 3.0, "ess_median": 9.0, "ess_max": 18.0}


# -- per-chain quantities -------------------------------------------------------------------
def costs(r: dict) -> dict:
    """Draws, solves, ESS and ESS per draw / 1000 solves / second of one chain-folder row."""
    draws = r["chains"] * r["draws"]
    grads = r.get("gradient_evals") or 0
    solves = r["potential_evals"] + grads
    bmin, bmed = r["ess_bulk_min"], r["ess_bulk_median"]
    return {"draws": draws, "solves": solves, "forward": r["potential_evals"],
            "grads_per_draw": grads / draws if grads else None,
            "solves_per_draw": solves / draws, "seconds": r["seconds"],
            "ess_bulk_min": bmin, "ess_bulk_median": bmed,
            "ess_tail_min": r["ess_tail_min"], "ess_tail_median": r["ess_tail_median"],
            "ess_per_draw": bmin / draws,
            "ess_per_1000_solves": 1000 * bmin / solves,
            "ess_median_per_1000_solves": 1000 * bmed / solves,
            "ess_per_1000_forward": 1000 * bmin / r["potential_evals"],
            "ess_per_second": bmin / r["seconds"],
            "rhat_max": r["rhat_max"]}


def status(r: dict) -> str:
    if r.get("status", "complete") != "complete":
        return f"{r['status']}: {r.get('reason', '')}"
    if r["rhat_max"] > RHAT_OK:
        return f"not converged (R-hat {r['rhat_max']:.2f} > {RHAT_OK}): ESS is a floor"
    return f"R-hat {r['rhat_max']:.3f} <= {RHAT_OK}"


def _f(v, f="{:.3g}") -> str:
    return "-" if v is None else f.format(v)


def _ms(values, f="{:.3g}") -> str:
    """mean ± sd (ddof 1) over seeds; the value alone for one seed."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return "-"
    if len(v) == 1:
        return f.format(v.mean())
    return f"{f.format(v.mean())} ± {f.format(v.std(ddof=1))}"


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status", "complete") == "complete":
            out.setdefault((r["prior"], r["data"], r["sampler"]), []).append(r)
    return dict(sorted(out.items()))


def _group_status(group: list[dict]) -> str:
    bad = [r["rhat_max"] for r in group if r["rhat_max"] > RHAT_OK]
    if bad:
        span = f"{min(bad):.2f}" if len(bad) == 1 else f"{min(bad):.2f}-{max(bad):.2f}"
        return (f"not converged in {len(bad)}/{len(group)} (R-hat {span} > {RHAT_OK}): "
                "ESS is a floor")
    top = max(r["rhat_max"] for r in group)
    return f"R-hat <= {RHAT_OK} in {len(group)}/{len(group)} (max {top:.3f})"


# -- tables -------------------------------------------------------------------------------------
COST_HEAD = ("draws (chains x kept) | PDE solves (fwd + adj) | gradients per draw | seconds "
             "| ESS bulk min / median | ESS tail min / median | ESS per draw "
             "| ESS per 1000 solves (bulk min / median) | ESS per second | R-hat max | status")


def cost_table(rows: list[dict]) -> str:
    lines = ["| prior | data | sampler | seed | " + COST_HEAD + " |", "|" + "---|" * 15]
    for r in rows:
        c = costs(r)
        lines.append(
            f"| {r['prior']} | {r['data']} | {r['sampler']} | {r['seed']} "
            f"| {r['chains']} x {r['draws']} = {c['draws']} | {c['solves']} "
            f"| {_f(c['grads_per_draw'], '{:.0f}')} | {c['seconds']:.0f} "
            f"| {c['ess_bulk_min']:.1f} / {c['ess_bulk_median']:.1f} "
            f"| {c['ess_tail_min']:.1f} / {c['ess_tail_median']:.1f} "
            f"| {c['ess_per_draw']:.3g} "
            f"| {c['ess_per_1000_solves']:.3g} / {c['ess_median_per_1000_solves']:.3g} "
            f"| {c['ess_per_second']:.3g} | {c['rhat_max']:.3f} | {status(r)} |")
    return "\n".join(lines) + "\n"


def cost_summary(rows: list[dict]) -> str:
    lines = ["| prior | data | sampler | seeds | " + COST_HEAD + " |", "|" + "---|" * 15]
    for (prior, data, sampler), group in _groups(rows).items():
        cs = [costs(r) for r in group]

        def col(k, f="{:.3g}", cs=cs):
            return _ms([c[k] for c in cs], f)

        lines.append(
            f"| {prior} | {data} | {sampler} | {len(group)} | {col('draws', '{:.0f}')} "
            f"| {col('solves', '{:.0f}')} | {col('grads_per_draw', '{:.0f}')} "
            f"| {col('seconds', '{:.0f}')} "
            f"| {col('ess_bulk_min', '{:.1f}')} / {col('ess_bulk_median', '{:.1f}')} "
            f"| {col('ess_tail_min', '{:.1f}')} / {col('ess_tail_median', '{:.1f}')} "
            f"| {col('ess_per_draw')} "
            f"| {col('ess_per_1000_solves')} / {col('ess_median_per_1000_solves')} "
            f"| {col('ess_per_second')} | {col('rhat_max', '{:.2f}')} | {_group_status(group)} |")
    return "\n".join(lines) + "\n"


def ratio_table(rows: list[dict]) -> str:
    """NUTS over pCN, paired by seed (same truth, data and prior), coarse data."""
    by = {(r["prior"], r["data"], r["sampler"], r["seed"]): r for r in rows
          if r.get("status", "complete") == "complete"}
    lines = ["| prior | seeds | ESS per draw | ESS per 1000 solves | ESS per second "
             "| pCN's R-hat | reading |", "|" + "---|" * 7]
    for prior in sorted({r["prior"] for r in rows}):
        pairs = [(costs(by[k]), costs(by[(prior, "coarse", "pcn", k[3])]),
                  by[(prior, "coarse", "pcn", k[3])]["rhat_max"])
                 for k in sorted(by) if k[0] == prior and k[1] == "coarse" and k[2] == "nuts"
                 and (prior, "coarse", "pcn", k[3]) in by]
        if not pairs:
            continue

        def rng(key, f="{:.1f}", pairs=pairs):
            v = [n[key] / p[key] for n, p, _ in pairs]
            return f"{f.format(np.mean(v))} ({f.format(min(v))}-{f.format(max(v))})"

        rh = [h for _, _, h in pairs]
        reading = ("pCN not converged: a ratio to its ESS floor, not a measured efficiency ratio"
                   if max(rh) > RHAT_OK else "both converged")
        lines.append(f"| {prior} | {len(pairs)} | {rng('ess_per_draw', '{:.0f}')} "
                     f"| {rng('ess_per_1000_solves')} | {rng('ess_per_second')} "
                     f"| {min(rh):.2f}-{max(rh):.2f} | {reading} |")
    return "\n".join(lines) + "\n"


def authors_table(rows: list[dict]) -> str:
    """NUTS (coarse data) per solve beside the authors' released pCN chain."""
    a = AUTHORS
    per_k = {k: 1000 * a[k] / a["solves"] for k in ("ess_min", "ess_median", "ess_max")}
    lines = ["| chain | draws | PDE solves | solves per draw | ESS min / median per draw "
             "| ESS per 1000 solves: min / median | per 1000 forward solves: min "
             "| min over authors' worst / best coordinate (per solve) "
             "| median over authors' median (per solve) "
             "| min over authors' worst / best (per forward solve) | R-hat |", "|" + "---|" * 11]
    lines.append(
        f"| authors' pCN (1 chain, {a['steps']} steps, {a['burn_in']} burn-in) | {a['kept']} "
        f"| {a['solves']} (forward only) | {a['solves'] / a['kept']:.1f} "
        f"| {a['ess_min'] / a['kept']:.2g} / {a['ess_median'] / a['kept']:.2g} "
        f"| {per_k['ess_min']:.2f} / {per_k['ess_median']:.2f} (best coordinate "
        f"{per_k['ess_max']:.2f}) | {per_k['ess_min']:.2f} | - | - | - | one chain: none |")
    for (prior, data, sampler), group in _groups(rows).items():
        if sampler != "nuts" or data != "coarse":
            continue
        cs = [costs(r) for r in group]
        mn = [c["ess_per_1000_solves"] for c in cs]
        md = [c["ess_median_per_1000_solves"] for c in cs]
        fw = [c["ess_per_1000_forward"] for c in cs]

        def span(v):
            return f"{min(v):.2f}-{max(v):.2f}"

        lines.append(
            f"| NUTS, {prior} ({len(group)} seeds) | {_ms([c['draws'] for c in cs], '{:.0f}')} "
            f"| {_ms([c['solves'] for c in cs], '{:.0f}')} "
            f"| {_ms([c['solves_per_draw'] for c in cs], '{:.0f}')} "
            f"| {_ms([c['ess_per_draw'] for c in cs], '{:.2f}')} / "
            f"{_ms([c['ess_bulk_median'] / c['draws'] for c in cs], '{:.2f}')} "
            f"| {span(mn)} / {span(md)} | {span(fw)} "
            f"| {span([v / per_k['ess_min'] for v in mn])} / "
            f"{span([v / per_k['ess_max'] for v in mn])} "
            f"| {span([v / per_k['ess_median'] for v in md])} "
            f"| {span([v / per_k['ess_min'] for v in fw])} / "
            f"{span([v / per_k['ess_max'] for v in fw])} "
            f"| {max(r['rhat_max'] for r in group):.3f} (max) |")
    return "\n".join(lines) + "\n"


def ranges(rows: list[dict]) -> str:
    """Min-max over chains of the figures docs/inverse.md quotes, per sampler."""
    lines = ["| sampler (data) | chains | quantity | min-max over chains |", "|---|---|---|---|"]
    for sampler, data in (("nuts", ("coarse",)), ("pcn", ("coarse", "fine"))):
        group = [r for r in rows if r["sampler"] == sampler and r["data"] in data
                 and r.get("status", "complete") == "complete"]
        if not group:
            continue
        cs = [costs(r) for r in group]
        items = [("ESS bulk min (all chains together)", [c["ess_bulk_min"] for c in cs], "{:.1f}"),
                 ("ESS per draw", [c["ess_per_draw"] for c in cs], "{:.3g}"),
                 ("ESS per 1000 PDE solves (fwd + adj)", [c["ess_per_1000_solves"] for c in cs],
                  "{:.3g}"),
                 ("ESS per 1000 forward solves", [c["ess_per_1000_forward"] for c in cs],
                  "{:.3g}"),
                 ("ESS per second", [c["ess_per_second"] for c in cs], "{:.3g}"),
                 ("PDE solves per run", [c["solves"] for c in cs], "{:.0f}"),
                 ("PDE solves per kept draw", [c["solves_per_draw"] for c in cs], "{:.3g}"),
                 ("seconds (warm-up included)", [c["seconds"] for c in cs], "{:.0f}"),
                 ("warm-up share of seconds", [r["warmup_seconds"] / r["seconds"]
                                               for r in group], "{:.2f}"),
                 ("PDE solves per second", [c["solves"] / c["seconds"] for c in cs], "{:.0f}"),
                 ("max R-hat", [c["rhat_max"] for c in cs], "{:.3f}")]
        if sampler == "nuts":
            iters = [r["chains"] * (r["draws"] + r["settings"]["warmup"]) for r in group]
            items[5:5] = [
                ("gradient evaluations per run", [r["gradient_evals"] for r in group], "{:.0f}"),
                ("gradient evaluations per kept draw (warm-up's charged to them)",
                 [c["grads_per_draw"] for c in cs], "{:.0f}"),
                ("gradient evaluations per iteration (warm-up + sampling)",
                 [r["gradient_evals"] / n
                  for r, n in zip(group, iters, strict=True)], "{:.0f}")]
        for name, v, f in items:
            lines.append(f"| {sampler} ({', '.join(data)}) | {len(group)} | {name} "
                         f"| {f.format(min(v))}-{f.format(max(v))} |")
    return "\n".join(lines) + "\n"


def accuracy_tables(rows: list[dict]) -> str:
    keys = [("acceptance", "acceptance", "{:.3f}"), ("nsswr", "NSSWR", "{:.2f}"),
            ("rel_l2_mean", "rel. L2 of mean", "{:.3f}"),
            ("coverage_2sd", "coverage 2sd", "{:.2f}")]
    head = " | ".join(t for _, t, _ in keys)
    lines = [f"| prior | data | sampler | seed | {head} | status |", "|" + "---|" * 9]
    for r in rows:
        cells = " | ".join(_f(r.get(k), f) for k, _, f in keys)
        lines.append(f"| {r['prior']} | {r['data']} | {r['sampler']} | {r['seed']} | {cells} "
                     f"| {status(r)} |")
    lines += ["", f"| prior | data | sampler | seeds | {head} | status |", "|" + "---|" * 9]
    for (prior, data, sampler), group in _groups(rows).items():
        cells = " | ".join(_ms([r.get(k) for r in group], f) for k, _, f in keys)
        lines.append(f"| {prior} | {data} | {sampler} | {len(group)} | {cells} "
                     f"| {_group_status(group)} |")
    return "\n".join(lines) + "\n"


def tier_a_table(a: dict) -> str:
    """Tier A chains (linear forward model: no PDE solves; R-hat was not stored)."""
    lines = ["| prior | sampler | draws (chains x kept) | seconds | ESS bulk min | ESS per draw "
             "| ESS per second | R-hat |", "|" + "---|" * 8]
    for key, prior, sampler in (("kl16_pcn", "KL-16", "pcn"), ("kl16_nuts", "KL-16", "nuts")):
        r = a.get(key)
        if r:
            n = r["chains"] * r["samples"]
            lines.append(f"| {prior} | {sampler} | {r['chains']} x {r['samples']} = {n} "
                         f"| {r['seconds']:.1f} | {r['ess_bulk_min']:.1f} "
                         f"| {r['ess_bulk_min'] / n:.3g} | {r['ess_bulk_min'] / r['seconds']:.3g} "
                         "| not stored |")
    for prior in ("vae", "beta-vae 0.5", "beta-vae 2", "fisher-ae"):
        r = a.get(prior)
        if r:
            lines.append(f"| {prior} | pcn | 4 x 2000 = 8000 | not stored "
                         f"| {r['ess_bulk_min']:.1f} | {r['ess_bulk_min'] / 8000:.3g} | - "
                         "| not stored (ESS near 1 per chain, as in the non-converged Tier B "
                         "pCN chains) |")
    return "\n".join(lines) + "\n"


# the five priors of the Tier B experiment; later rows (issue 18's calibrated priors and their
# re-run baseline, experiments/calibration.py) appear in the per-chain and accuracy tables only
TIER_B_PRIORS = {"vae", "beta-vae0.5", "beta-vae2", "fisher-ae", "kl"}


def write(rows: list[dict], tier_a: dict | None = None) -> str:
    all_rows, rows = rows, [r for r in rows if r["prior"] in TIER_B_PRIORS]
    parts = [
        "# Inverse experiment: tables",
        "Generated by `python experiments/inverse.py --stage tables` (experiments/inverse_costs.py)"
        " from docs/results/inverse_tierB.json and inverse_tierA.json; do not edit by hand. "
        "Draws = chains x kept post-warm-up draws; PDE solves = forward solves + adjoint solves "
        "(NUTS: one of each per gradient evaluation; pCN: one forward per step), warm-up "
        "included; seconds = the whole run, warm-up included; ESS = ArviZ rank-normalised bulk "
        "and tail ESS over all chains, min / median over the 16 latent coordinates; ESS per draw,"
        " per 1000 solves and per second use the min bulk ESS. Max R-hat > 1.05: not converged, "
        "and the ESS is a floor, not a measurement.",
        "## Tier B: ranges over chains quoted in docs/inverse.md", ranges(rows),
        "## Tier B: cost and mixing, every chain", cost_table(all_rows),
        "## Tier B: cost and mixing, mean ± sd over seeds", cost_summary(all_rows),
        "## NUTS over pCN, paired by seed (coarse data): mean (min-max) of the per-seed ratios",
        ratio_table(rows),
        "## NUTS beside the authors' released pCN chain, per PDE solve",
        "Authors' chain: spec section 3.2 [DERIVED] (zabaras/MH-MDGM, 16-dim GRF case): ESS 3-18"
        " per coordinate (median about 9) over 2000 kept draws of a 7000-step chain, one forward "
        "solve per step, burn-in solves counted as ours are. Different data (truth and pressures "
        "on the fine grid, model error), VAE and ESS estimator (single-chain Geyer); no timing. "
        "NUTS columns: range over seeds.",
        authors_table(rows),
        "## Tier B: acceptance and accuracy", accuracy_tables(all_rows)]
    if tier_a:
        parts += ["## Tier A (linear-Gaussian, exact posterior): chains", tier_a_table(tier_a)]
    text = "\n\n".join(p.rstrip("\n") for p in parts) + "\n"
    (RESULTS / "inverse_tables.md").write_text(text)
    return text


def main() -> None:
    rows = json.loads((RESULTS / "inverse_tierB.json").read_text())
    a_path = RESULTS / "inverse_tierA.json"
    tier_a = json.loads(a_path.read_text()) if a_path.is_file() else None
    print(write(rows, tier_a))


if __name__ == "__main__":
    main()
