"""The pairing map (issue 27): searched pairing against normal/normal with the same bound.

For every (dataset, likelihood, latent size) the pairing is searched, then the best pairing and
normal/normal with the same bound, network and budget are retrained over --seeds seeds and
scored by the importance-sampled test NLL (see autovae.search.pairing_map). Writes
OUT/pairing_map.json (resumable: a cell already in it is kept), OUT/pairing_map.md (the table)
and OUT/pairing_map.png (the figure), and prints the table.

    python experiments/pairing_map.py --out docs/results/map --datasets digits control-cauchy \
        --latent-dims 2 5 10 --seeds 3 --trials 8 --epochs 30

    python experiments/pairing_map.py --combine runs/map_a runs/map_b --out docs/results/map

Fewer than 2 seeds are refused: no spread, no claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autovae.config import Config
from autovae.search.pairing_map import (
    LIKELIHOODS,
    PAIRS,
    combine_maps,
    control_table,
    map_cells,
    map_figure,
    map_table,
    run_map,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pairing_map", help="output folder")
    parser.add_argument("--datasets", nargs="+", default=["digits", "control-cauchy"])
    parser.add_argument("--likelihoods", nargs="+", default=list(LIKELIHOODS))
    parser.add_argument("--latent-dims", nargs="+", type=int, default=[2, 5, 10])
    parser.add_argument("--pairs", nargs="+", default=PAIRS, help="candidate pairs searched")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model (at least 2)")
    parser.add_argument("--trials", type=int, default=8, help="search trials per cell")
    parser.add_argument("--pure-starts", action="store_true",
                        help="start each search with every candidate pair alone (then TPE)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="training images per cell")
    parser.add_argument("--nll-samples", type=int, default=5000, help="K of the test NLL")
    parser.add_argument("--note", default="", help="what this map is (stored with it)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="DIR",
                        help="no runs: combine the maps in these folders into --out (a "
                             "combined map combines again: docs/results/map can be one of "
                             "them, and --out)")
    args = parser.parse_args(argv)
    try:
        if args.combine:
            result = combine_maps(args.combine)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "pairing_map.json").write_text(json.dumps(result, indent=2)
                                                              + "\n")
            return _write(result, Path(args.out))
        base = Config(epochs=args.epochs, batch_size=args.batch_size, hidden=args.hidden,
                      depth=args.depth, lr=args.lr, latent_clip=50.0, limit=args.limit,
                      nll_samples=args.nll_samples)
        cells = map_cells(args.datasets, args.likelihoods, args.latent_dims)
        result = run_map(cells, args.out, base, seeds=args.seeds, trials=args.trials,
                         pairs=args.pairs, note=args.note, pure_starts=args.pure_starts)
    except ValueError as err:
        print(f"pairing_map: error: {err}", file=sys.stderr)
        return 2
    return _write(result, Path(args.out))


def _write(result: dict, out: Path) -> int:
    table = map_table(result)
    if control_table(result):
        table += "\n\nThe controls against their known answer:\n\n" + control_table(result)
    (out / "pairing_map.md").write_text(table + "\n")
    print(table)
    print(f"figure: {map_figure(result, out / 'pairing_map.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
