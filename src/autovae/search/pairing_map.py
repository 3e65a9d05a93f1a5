"""The pairing map: where a searched pairing beats normal/normal with the same bound, and where not.

A map is a set of cells, each a (dataset, likelihood, latent size). In every cell the pairing is
searched (:func:`~autovae.search.run_search`: the latent blocks' weights; the bound, network and
budget fixed), then :func:`~autovae.search.retrain_best` trains the best pairing and
normal/normal with the same bound, network and budget (the same ``limit`` training images,
``train_images`` in the cell) over ``seeds`` seeds and scores both on
the test set (importance-sampled NLL). A cell's answer is the pairing gain, normal/normal's NLL
minus the pairing's, per seed: a claim needs every seed to agree, so a map refuses fewer than
two seeds (no spread, no claim).

Likelihoods: ``bernoulli`` is trained on dynamic binarisations and scored on a fixed binarised
test set (seed 0; comparable to the binarised-MNIST literature); ``continuous-bernoulli`` and
``gaussian`` (learned shared sigma) are trained and scored on the grey levels, or on their
uniform dequantisation (``dequantized:17:digits``: fresh noise every batch, a fixed test draw;
:func:`autovae.data.dequantize`), where a density is bounded. Binary data (the
known-belief controls of :mod:`autovae.control`) are used as they are, the Gaussian controls'
real values under the Gaussian likelihood only. In a control's cell the generating pairing is
retrained and scored too (``generating_*``), with the generating model's own NLL
(``true_nll``): the control is recovered where the search's pairing is as good as the
generating one and normal/normal loses. Each cell keeps the candidate pairs it searched.

``experiments/pairing_map.py`` runs a map and writes ``pairing_map.json``, the table and the
figure; ``autovae retrain-best`` says where a study lies on it (:func:`where_on_the_map`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..beliefs import LatentSpec
from ..config import Config

__all__ = ["Cell", "combine_maps", "control_table", "map_cells", "map_figure", "map_table",
           "run_cell", "run_map", "where_on_the_map"]

PAIRS = ["normal/normal", "logistic/normal", "laplace/laplace", "cauchy/cauchy",
         "gumbel/gumbel"]  # the quick preset's candidates
LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")
TEST_SEED = 0  # the fixed binarisation of a Bernoulli cell's test set
MAP_ENV = "AUTOVAE_PAIRING_MAP"
MIN_SEEDS = 2


@dataclass(frozen=True)
class Cell:
    """One setting of the map."""

    data: str
    likelihood: str
    latent_dim: int

    @property
    def control(self) -> bool:
        return self.data.startswith("control")

    @property
    def binary_data(self) -> bool:
        from ..control import is_gaussian_control

        return self.control and not is_gaussian_control(self.data)

    @property
    def slug(self) -> str:
        return (f"{self.data.replace(':', '-').replace('/', '-')}_{self.likelihood}_"
                f"d{self.latent_dim}")

    def config(self, base: Config) -> Config:
        """``base`` set to this cell's data, likelihood and the data it is scored on."""
        changes: dict = {"data": self.data, "likelihood": self.likelihood,
                         "latent": f"normal/normal:{self.latent_dim}", "latent_dim": None}
        if self.likelihood == "bernoulli" and not self.binary_data:
            changes.update(binarize="dynamic", test_binarize=TEST_SEED)
        if self.likelihood == "gaussian":
            changes.update(learn_sigma="shared")
        return base.replace(**changes)


def map_cells(datasets: list[str], likelihoods: list[str], latent_dims: list[int]) -> list[Cell]:
    """Every (dataset, likelihood, latent size) that makes sense: binary data (the controls)
    only under the Bernoulli likelihood, real-valued fields (darcy-grf) only under the
    Gaussian, dequantised data (``dequantized:L:NAME``) not under the Bernoulli."""
    unknown = sorted(set(likelihoods) - set(LIKELIHOODS))
    if unknown:
        raise ValueError(f"likelihoods: {', '.join(unknown)} not on the map; choose from "
                         f"{', '.join(LIKELIHOODS)}")
    from ..control import is_gaussian_control

    cells = []
    for data in datasets:
        for lik in likelihoods:
            if data.startswith("control") and lik != "bernoulli" \
                    and not is_gaussian_control(data):
                continue  # binary data: only a pmf scores them
            if (data.startswith("darcy") or is_gaussian_control(data)) and lik != "gaussian":
                continue  # real values: only the Gaussian takes them
            if data.startswith("dequantized") and lik == "bernoulli":
                continue  # dequantised values: only a density scores them
            cells += [Cell(data, lik, d) for d in latent_dims]
    if not cells:
        raise ValueError("no map cells: each dataset needs a likelihood that fits it "
                         "(controls: bernoulli; darcy-grf and control-gaussian-*: gaussian)")
    return cells


def _check_seeds(seeds: int) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < MIN_SEEDS:
        raise ValueError(f"seeds: a pairing map needs at least {MIN_SEEDS} seeds per model, got "
                         f"{seeds!r}: with one seed there is no spread, and so no claim; pass "
                         "--seeds 3")
    return seeds


def run_cell(cell: Cell, folder: Path, base: Config, seeds: int, trials: int,
             pairs: list[str] | None = None, progress: bool = False,
             pure_starts: bool = False) -> dict:
    """Search the pairing in ``cell`` (``trials`` trials, the bound of ``base``), retrain the
    best and normal/normal with the same bound over ``seeds`` seeds; the cell's summary.
    ``pure_starts``: the first trials are each candidate pair alone (then TPE): random weights
    almost never leave one pair alone, so a homogeneous pairing is otherwise hard to reach in
    a small latent space (in 2 dims one of 7 uniform weights must exceed the other six's sum)."""
    from .analysis import retrain_best
    from .space import SearchSpace
    from .storage import open_storage
    from .study import StudySpec, create_study, run_search

    _check_seeds(seeds)
    config = cell.config(base)
    fixed = lambda name: (getattr(config, name), getattr(config, name))  # noqa: E731
    space = SearchSpace(pairs=list(pairs or PAIRS), likelihoods=[cell.likelihood],
                        alpha=fixed("alpha"), samples=fixed("samples"), beta=fixed("beta"),
                        latent_dim=(cell.latent_dim, cell.latent_dim), hidden=fixed("hidden"),
                        depth=fixed("depth"), lr=fixed("lr"))
    spec = StudySpec(space, config, ["nll"], trials, sampler="tpe", pruner="none",
                     validation_nll_samples=50)
    if pure_starts:
        if trials < len(space.pairs):
            raise ValueError(f"pure starts: {trials} trials cannot start with each of the "
                             f"{len(space.pairs)} candidate pairs alone; pass --trials "
                             f"{len(space.pairs) + 3} or more")
        folder.mkdir(parents=True, exist_ok=True)
        study = create_study(open_storage(None, folder), "map", spec)
        if not study.trials:
            for pair in space.pairs:
                study.enqueue_trial({f"w:{p}": float(p == pair) for p in space.pairs})
    study = run_search(None, "map", folder, spec)
    also = {}
    if cell.control:
        from ..control import generating_pairing

        also["generating"] = generating_pairing(cell.data, cell.latent_dim)
    # the retrained models get the search's budget, images included (retrain_best's own
    # default, all training images, would train Fashion-MNIST's on 55000 instead of --limit)
    result = retrain_best(study, folder, seeds=seeds, limit=config.limit, progress=progress,
                          also=also)
    same = result.get("normal/normal, same bound", result["normal/normal"])
    gains = result["pairing_gain_per_seed"]
    summary = {**asdict(cell), "best_latent": result["best"]["config"]["latent"],
               "best_nll": result["best"]["test_nll_mean"],
               "best_nll_sd": result["best"]["test_nll_sd"],
               "normal_nll": same["test_nll_mean"], "normal_nll_sd": same["test_nll_sd"],
               "pairing_gain": result["pairing_gain_nats"],
               "pairing_gain_sd": result["pairing_gain_sd"], "pairing_gain_per_seed": gains,
               "every_seed_gains": all(g > 0 for g in gains),
               "every_seed_gains_1_nat": all(g >= 1 for g in gains),
               "test_data": result["test_data"], "nll_samples": result["nll_samples"],
               "train_images": result["train_images"],
               "pairs": list(pairs or PAIRS), "trials": trials, "pure_starts": pure_starts}
    if cell.control:
        from ..control import true_nll

        gen = result["generating"]
        summary.update(generating_latent=gen["config"]["latent"],
                       generating_nll=gen["test_nll_mean"], generating_nll_sd=gen["test_nll_sd"],
                       generating_nll_per_seed=[r["test_nll"] for r in gen["runs"]],
                       best_nll_per_seed=[r["test_nll"] for r in result["best"]["runs"]],
                       true_nll=true_nll(cell.data, samples=20_000))
    for key in ("bernoulli_entropy_floor", "pairing_gain_share_of_reducible"):
        if key in result:
            summary[key] = result[key]
    return summary


def run_map(cells: list[Cell], out: str | os.PathLike, base: Config, seeds: int = 3,
            trials: int = 8, pairs: list[str] | None = None, note: str = "",
            progress: bool = False, pure_starts: bool = False) -> dict:
    """Run every cell into ``out/cells/SLUG`` and write ``out/pairing_map.json`` after each
    (a cell already in it is not run again: a killed map resumes; cells it holds that are not
    asked for are kept)."""
    _check_seeds(seeds)
    out = Path(out)
    path = out / "pairing_map.json"
    settings = {"seeds": seeds, "trials": trials, "pairs": list(pairs or PAIRS),
                **({"pure_starts": True} if pure_starts else {}),
                "base": {k: v for k, v in base.to_dict().items()
                         if k in ("epochs", "batch_size", "hidden", "depth", "lr", "alpha",
                                  "samples", "beta", "latent_clip", "nll_samples", "limit")},
                "note": note}
    found = json.loads(path.read_text()) if path.is_file() else {}
    if found and found.get("settings") != settings:
        raise ValueError(f"{path} holds a map with other settings ({found.get('settings')}); "
                         "write this one to another --out folder")
    done = {c["data"] + c["likelihood"] + str(c["latent_dim"]): c for c in found.get("cells", [])}
    result: dict = {"settings": settings}
    import torch

    result["torch"] = torch.__version__
    keys = {c.data + c.likelihood + str(c.latent_dim) for c in cells}
    result["cells"] = [c for k, c in done.items() if k not in keys]  # kept: cells run before
    for cell in cells:
        key = cell.data + cell.likelihood + str(cell.latent_dim)
        if key not in done:
            done[key] = run_cell(cell, out / "cells" / cell.slug, base, seeds, trials, pairs,
                                 progress, pure_starts)
            print(_row(done[key]), flush=True)
        result["cells"].append(done[key])
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def combine_maps(folders: list[str | os.PathLike]) -> dict:
    """One map of the cells of several (run with the same settings, e.g. in parallel; the
    candidate pairs may differ, as each cell keeps the pairs it searched)."""
    maps = [json.loads((Path(f) / "pairing_map.json").read_text()) for f in folders]
    cell_keys = ("pairs", "trials", "pure_starts")  # each cell keeps its own
    same = lambda m: {k: v for k, v in m["settings"].items()  # noqa: E731
                      if k not in cell_keys}
    for folder, other in zip(folders[1:], maps[1:], strict=True):
        if same(other) != same(maps[0]):
            raise ValueError(f"{folder}: its map has other settings than {folders[0]}'s; "
                             "combine maps made with the same settings only (the candidate "
                             "pairs may differ: each cell keeps its own)")
    cells = [{"pairs": m["settings"]["pairs"], "trials": m["settings"]["trials"],
              "pure_starts": m["settings"].get("pure_starts", False), **c}
             for m in maps for c in m["cells"]]
    return {**maps[0], "cells": cells}


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.2f} ± {sd:.2f}"


def _verdict(c: dict) -> str:
    if c["best_latent"] == f"normal/normal:{c['latent_dim']}":
        return "search picked normal/normal"
    if c["every_seed_gains_1_nat"]:
        return "**gain >= 1 nat, every seed**"
    if c["every_seed_gains"]:
        return "gain < 1 nat, every seed"
    if all(g < 0 for g in c["pairing_gain_per_seed"]):
        return "normal/normal better, every seed"
    return "seeds disagree: no claim"


def _searched(c: dict) -> str:
    extra = [p for p in c.get("pairs", PAIRS) if p not in PAIRS]
    how = ([f"candidates also {', '.join(extra)}"] if extra else []) + (
        [f"{c['trials']} trials, each pair alone first"] if c.get("pure_starts") else [])
    return c["best_latent"] + (f" ({'; '.join(how)})" if how else "")


def _row(c: dict) -> str:
    share = (f" ({c['pairing_gain_share_of_reducible']:.1%})"
             if "pairing_gain_share_of_reducible" in c else "")
    seeds = ", ".join(f"{g:+.2f}" for g in c["pairing_gain_per_seed"])
    return (f"| {c['data']} | {c['likelihood']} | {c['test_data']} | {c['latent_dim']} | "
            f"{_searched(c)} | {_pm(c['best_nll'], c['best_nll_sd'])} | "
            f"{_pm(c['normal_nll'], c['normal_nll_sd'])} | "
            f"{_pm(c['pairing_gain'], c['pairing_gain_sd'])}{share} | {seeds} | {_verdict(c)} |")


def map_table(result: dict) -> str:
    """The map as a Markdown table (NLLs in nats per data point, mean ± sd over seeds)."""
    head = ("| data | likelihood | test data | latent | searched pairing | its NLL | "
            "normal/normal, same bound | pairing gain | per seed | verdict |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_row(c) for c in result["cells"])])


def _recovered(c: dict) -> str:
    """Whether a control cell recovers the known answer: normal/normal worse than the
    generating pairing and than the searched pairing with every seed, and the searched pairing
    within two seed sds of the generating pairing or better."""
    spread = 2 * max(c["best_nll_sd"], c["generating_nll_sd"])
    found = c["best_nll"] <= c["generating_nll"] + spread
    normal = [b + g for b, g in zip(c["best_nll_per_seed"], c["pairing_gain_per_seed"],
                                    strict=True)]
    loses = all(n > g for n, g in zip(normal, c["generating_nll_per_seed"], strict=True))
    if loses and found and c["every_seed_gains"]:
        return "**recovered**"
    if loses:
        return ("**not recovered: normal/normal loses to the generating pairing, but the "
                "search did not find one as good**")
    return "normal/normal does not lose to the generating pairing: no known answer here"


def control_table(result: dict) -> str:
    """The map's control cells against their known answer (NLLs in nats, mean ± sd over seeds;
    the generating gain is normal/normal's NLL minus the generating pairing's, per seed)."""
    head = ("| control | latent | generating pairing | its NLL | searched pairing's NLL | "
            "normal/normal | generating gain per seed | generating model itself | verdict |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = []
    for c in result["cells"]:
        if "generating_nll" not in c:
            continue
        normal = [b + g for b, g in zip(c["best_nll_per_seed"], c["pairing_gain_per_seed"],
                                        strict=True)]
        gains = ", ".join(f"{n - g:+.2f}" for n, g in zip(normal, c["generating_nll_per_seed"],
                                                           strict=True))
        rows.append(f"| {c['data']} | {c['latent_dim']} | {c['generating_latent']} | "
                    f"{_pm(c['generating_nll'], c['generating_nll_sd'])} | "
                    f"{_pm(c['best_nll'], c['best_nll_sd'])} | "
                    f"{_pm(c['normal_nll'], c['normal_nll_sd'])} | {gains} | "
                    f"{c['true_nll']:.2f} | {_recovered(c)} |")
    return "\n".join([head, *rows]) if rows else ""


def map_figure(result: dict, path: str | os.PathLike) -> Path:
    """The pairing gain (mean ± sd over seeds) against the latent size, one line per
    (dataset, likelihood), with the 0 and +1 nat lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lines: dict[str, list[dict]] = {}
    for c in result["cells"]:  # one line per data, likelihood and search budget
        label = f"{c['data']}, {c['likelihood']}" + (
            f" ({c['trials']} trials, pure starts)" if c.get("pure_starts") else "")
        lines.setdefault(label, []).append(c)
    for i, (label, cells) in enumerate(lines.items()):
        cells.sort(key=lambda c: c["latent_dim"])
        x = [c["latent_dim"] * (1 + 0.03 * (i - len(lines) / 2)) for c in cells]
        ax.errorbar(x, [c["pairing_gain"] for c in cells],
                    yerr=[c["pairing_gain_sd"] for c in cells], marker="o", capsize=3,
                    label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="k", lw=0.8, ls="--", label="+1 nat")
    ax.set_xscale("log")
    ax.minorticks_off()
    dims = sorted({c["latent_dim"] for c in result["cells"]})
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("latent size")
    ax.set_ylabel("pairing gain over normal/normal,\nsame bound (nats, mean ± sd)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _default_map() -> Path | None:
    if os.environ.get(MAP_ENV):
        return Path(os.environ[MAP_ENV])
    checkout = (Path(__file__).resolve().parents[3] / "docs" / "results" / "map"
                / "pairing_map.json")
    return checkout if checkout.is_file() else None


def _base_data(name: str) -> str:
    """The dataset under ``test-subset:N:`` prefixes (the same data, fewer test images)."""
    while name.startswith("test-subset:") and name.count(":") >= 2:
        name = name.split(":", 2)[2]
    return name


def where_on_the_map(result: dict, map_path: str | os.PathLike | None = None) -> str:
    """A line or two placing a ``retrain_best`` result on a pairing map (the nearest cell with
    the same data and likelihood, else the same likelihood), or saying that there is no map."""
    path = Path(map_path) if map_path is not None else _default_map()
    if path is None or not path.is_file():
        return ("pairing map: none found" + (f" at {path}" if path else "")
                + " (experiments/pairing_map.py makes one; pass --map or set " + MAP_ENV + ")")
    try:
        cells = json.loads(path.read_text())["cells"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"pairing map {path}: not a pairing map (no cells); remake it"
    config = result["best"]["config"]
    dim = LatentSpec.parse(config["latent"], config.get("latent_dim")).dim
    same_lik = [c for c in cells if c["likelihood"] == config["likelihood"]]
    same_data = ([c for c in same_lik if c["data"] == config["data"]]
                 or [c for c in same_lik if _base_data(c["data"]) == _base_data(config["data"])])
    near = same_data or same_lik
    if not near:
        return (f"pairing map {path}: no cell with the {config['likelihood']} likelihood; your "
                "study is off the map")
    cell = min(near, key=lambda c: abs(c["latent_dim"] - dim))
    where = ("on the map" if same_data and cell["latent_dim"] == dim else
             "near the map (" + ("same data, " if same_data else f"other data: {config['data']} "
                                 "is not on it; ") + f"latent {dim} -> {cell['latent_dim']})")
    if same_data and cell["data"] != config["data"]:
        where += f" (the map's cell is {cell['data']})"

    gain = _pm(cell["pairing_gain"], cell["pairing_gain_sd"])
    return (f"your study ({config['data']}, {config['likelihood']}, latent {dim}, gain of its "
            f"pairing {result['pairing_gain_nats']:+.2f} nats) is {where}: there the searched "
            f"pairing {cell['best_latent']} gained {gain} nats over normal/normal with the same "
            f"bound on {cell['test_data']} "
            f"({_verdict(cell).strip('*')}); map: {path}")
