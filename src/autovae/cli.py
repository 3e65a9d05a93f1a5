"""The ``autovae`` command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import argparse
import math
import sys

import torch

from .beliefs import FAMILIES, PAIRS, PairKind, family, kl

_MARK = {PairKind.CLOSED: "", PairKind.CONDITIONAL: "*", PairKind.NUMERICAL: "~",
         PairKind.INFINITE: ""}


def pair_matrix(loc: float, scale: float, prior_loc: float, prior_scale: float) -> str:
    """The 7x7 table of KL(posterior || prior) at the given parameters, as text."""
    names = list(FAMILIES)
    width = 12
    lines = [
        f"KL(q || p), q = posterior(loc={loc:g}, scale={scale:g}) in rows, "
        f"p = prior(loc={prior_loc:g}, scale={prior_scale:g}) in columns",
        "".ljust(width) + "".join(n.rjust(width) for n in names),
    ]
    for q_name in names:
        q = family(q_name, torch.tensor(loc, dtype=torch.float64),
                   torch.tensor(scale, dtype=torch.float64))
        cells = []
        for p_name in names:
            p = family(p_name, torch.tensor(prior_loc, dtype=torch.float64),
                       torch.tensor(prior_scale, dtype=torch.float64))
            info = PAIRS[(q_name, p_name)]
            value = kl(q, p).item()
            text = "inf" if math.isinf(value) else f"{value:.4f}"
            cells.append((text + _MARK[info.kind]).rjust(width))
        lines.append(q_name.ljust(width) + "".join(cells))
    lines += [
        "",
        "plain: closed form   *: closed form, finite only under a condition   "
        "~: numerical (quadrature)",
        "inf:  infinite here; pairs infinite for every parameter are refused in a LatentSpec:",
    ]
    by_reason: dict[str, list[str]] = {}
    for (q_name, p_name), info in PAIRS.items():
        if info.kind is PairKind.INFINITE:
            by_reason.setdefault(info.note, []).append(f"{q_name}/{p_name}")
    for reason, pairs in by_reason.items():
        lines.append(f"  {reason}:\n    {', '.join(pairs)}")
    for (q_name, p_name), info in PAIRS.items():
        if info.kind is PairKind.CONDITIONAL:
            lines.append(f"  {q_name}/{p_name} (conditional): {info.note}")
    return "\n".join(lines)


def _cmd_pairs(args: argparse.Namespace) -> int:
    print(pair_matrix(args.loc, args.scale, args.prior_loc, args.prior_scale))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autovae",
        description="Generalized variational autoencoders: free posterior, prior and likelihood "
                    "beliefs, Renyi bounds, automated search.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pairs = sub.add_parser(
        "pairs", help="print the KL matrix of every (posterior, prior) pair of families",
        description="Print KL(q || p) for all 49 ordered pairs of families at one setting of "
                    "the parameters, with how each is computed.")
    pairs.add_argument("--loc", type=float, default=0.3, help="posterior loc (default 0.3)")
    pairs.add_argument("--scale", type=float, default=0.7, help="posterior scale (default 0.7)")
    pairs.add_argument("--prior-loc", type=float, default=0.0, help="prior loc (default 0)")
    pairs.add_argument("--prior-scale", type=float, default=1.0, help="prior scale (default 1)")
    pairs.set_defaults(run=_cmd_pairs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"autovae: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
