"""The ``autovae`` command line: thin wrappers that parse, call the library and print.

    autovae train --run runs/fmnist --latent 'logistic/normal:14,cauchy/cauchy:6' --epochs 20
    autovae evaluate runs/fmnist --nll-samples 5000
    autovae sample runs/fmnist          # and reconstruct, embed, interpolate
    autovae pairs                       # the KL matrix of every (posterior, prior) pair
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import json
import os
import sys
from pathlib import Path

import torch

from ._checks import StudyFault, check_folder, flag_type
from .config import Config, load_config
from .models import NonFiniteLossError

_COUNT = flag_type("count", "count")  # integers >= 1
_POOL = flag_type("--db-pool", "index")
_POOL_HELP = ("database connections this worker keeps at most (default $AUTOVAE_DB_POOL, else "
              "2: the trial loop and the heartbeat); 0: none kept, for PgBouncer")


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for info in DATASETS.values():
        print(f"{info.name:16}{info.description}")
    print("or a path: a .npy / .npz file, or a folder of images (see the README)")
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    from .beliefs import pair_table

    print(pair_table(args.loc, args.scale, args.prior_loc, args.prior_scale))
    return 0


# -- train and evaluate --------------------------------------------------------------------------
def _config_overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
            if getattr(args, f.name, None) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    from .run import Run
    from .train import train

    run = Run(check_folder(args.run, "run folder"))
    overrides = _config_overrides(args)
    if args.resume and not run.has_config() and not run.has_checkpoint():
        print(f"{run.folder} holds no started run (killed before it recorded its settings); "
              "starting it from scratch with the given settings", file=sys.stderr)
        config = load_config(args.config, **overrides)
    elif args.resume:
        config = run.load_config().replace(**overrides)
    else:
        config = load_config(args.config, **overrides)
    result = train(config, run.folder, resume=args.resume, progress=not args.quiet)
    print(f"trained {result.epochs_done} epochs into {run.folder}")
    if args.evaluate:
        _evaluate(run, result.model, result.data.test, config.nll_samples, not args.quiet)
    return 0


def _evaluate(run, model, x_test, nll_samples: int, progress: bool,
              full_images: int | None = None) -> dict:
    """Evaluate on ``x_test`` into RUN/metrics.json; a partial evaluation (fewer than
    ``full_images`` test images, or fewer NLL samples than metrics.json holds) is written beside
    it, named for what it is, so that it never replaces the full one."""
    from .evaluate import evaluate, prefixed

    metrics = prefixed(evaluate(model, x_test, nll_samples=nll_samples, progress=progress),
                       "test")
    stored = run.metrics().get("nll_samples")
    images = x_test.shape[0]
    if (full_images is not None and images < full_images) or (
            stored is not None and model.has_bound and nll_samples < stored):
        path = run.partial_metrics_path(images, nll_samples)
        run.save_metrics(metrics, path)
        print(json.dumps(metrics, indent=2))
        print(f"partial evaluation ({images} of {full_images or images} test images, K = "
              f"{nll_samples}) written to {path}; {run.metrics_path} keeps the full one",
              file=sys.stderr)
        return metrics
    run.save_metrics(metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


def _load(args: argparse.Namespace):
    """(run, config, model, data) of an existing run folder."""
    from .run import load_trained

    loaded = load_trained(args.run, args.device)
    torch.manual_seed(args.seed)
    return loaded


def _split(data, name: str):
    return getattr(data, name), getattr(data, f"{name}_labels")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run, config, model, data = _load(args)
    x = data.test if args.test_limit is None else data.test[: args.test_limit]
    _evaluate(run, model, x, args.nll_samples or config.nll_samples, not args.quiet,
              full_images=data.test.shape[0])
    if args.quality:
        from .evaluate import evaluate_quality

        metrics = evaluate_quality(model, data, args.quality_images, args.inception_weights)
        run.save_metrics(metrics)
        print(json.dumps(metrics, indent=2))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .pictures import sample_picture

    run, _, model, _ = _load(args)
    print(sample_picture(model, args.out or run.folder / "samples.png", args.n))
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .pictures import reconstruction_picture

    run, _, model, data = _load(args)
    x, _ = _split(data, args.split)
    print(reconstruction_picture(model, x, args.out or run.folder / "reconstructions.png",
                                 args.n))
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .pictures import latent_picture

    run, _, model, data = _load(args)
    x, labels = _split(data, args.split)
    path = Path(args.out or run.folder / f"codes_{args.split}.npy")
    for written in latent_picture(model, x, labels, path, class_names=data.classes,
                                  title=f"{model.latent} on {data.name} ({args.split})"):
        print(written)
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from .pictures import interpolate_codes, save_interpolation

    run, _, model, data = _load(args)
    if not model.has_encoder:
        raise ValueError(f"model {model.name!r} has no encoder, so it cannot interpolate "
                         "between data points")
    x, _ = _split(data, args.split)
    if x.shape[0] < 2 * args.pairs:
        raise ValueError(f"--pairs {args.pairs} needs {2 * args.pairs} {args.split} images; the "
                         f"run's {args.split} split has {x.shape[0]}")
    codes = model.embed(x[: 2 * args.pairs])
    path_z = interpolate_codes(codes[: args.pairs], codes[args.pairs: 2 * args.pairs],
                               args.steps, args.mode)
    frames = model.likelihood.mean(model.decode(path_z))
    print(save_interpolation(frames, args.out or run.folder / "interpolation.png"))
    return 0


def _cmd_invert(args: argparse.Namespace) -> int:
    from .inverse.invert import format_summary, invert

    points = int(args.points) if args.points.isdigit() else args.points
    result = invert(args.run, prior=args.prior, grid=args.grid, dim=args.dim, points=points,
                    data_file=args.data, noise=args.noise, noise_kind=args.noise_kind,
                    truth_seed=args.truth_seed, truth_resolution=args.truth_resolution,
                    truth_file=args.truth_file, sampler=args.sampler, chains=args.chains,
                    warmup=args.warmup, samples=args.samples, seed=args.seed, thin=args.thin,
                    step_size=args.step_size, target_accept=args.target_accept, out=args.out,
                    device=args.device)
    print(format_summary(result.summary))
    print(f"{result.new_evals} new forward solves; written to {result.folder}")
    if result.chains.status == "diverged":
        print(f"autovae: stopped: {result.chains.reason}", file=sys.stderr)
        return 3
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.paths, args.out, args.top))
    return 0


# -- search --------------------------------------------------------------------------------------
def _study_args(args: argparse.Namespace):
    folder = Path(args.dir)
    return args.storage, args.study, folder


def _cmd_search(args: argparse.Namespace) -> int:
    from .search import PRESETS, SearchSpace, StudySpec, analyze, run_search

    storage, name, folder = _study_args(args)
    space, base_values = PRESETS[args.preset]
    if args.space:
        space = SearchSpace.from_file(args.space)
    base = load_config(args.config, **{**base_values, **_config_overrides(args)})
    spec = StudySpec(space, base, args.objective or ["nll"], args.trials, args.sampler,
                     args.pruner, args.validation_nll_samples)
    if args.create_only:  # the study for workers elsewhere (docs/distributed.md)
        from .search import create_study, open_storage

        create_study(open_storage(storage, folder, heartbeat=False, pool=args.db_pool), name,
                     spec)
        print(f"study {name!r} holds a budget of {spec.trials} trials; start workers with: "
              f"autovae worker --study {name} --dir {folder}"
              + (" --storage URL" if storage else ""))
        return 0
    study = run_search(storage, name, folder, spec, workers=args.workers, pool=args.db_pool)
    print(analyze(study, folder))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from .search import run_worker

    storage, name, folder = _study_args(args)
    return run_worker(storage, name, folder, worker=args.worker, pool=args.db_pool,
                      device=args.device)


def _load_study(args: argparse.Namespace):
    import optuna

    from .search import open_storage

    storage, name, folder = _study_args(args)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(
            storage, folder, heartbeat=False, create=False)), folder
    except KeyError:
        raise ValueError(f"no study {name!r} in {storage or folder}") from None


def _cmd_study(args: argparse.Namespace) -> int:
    from .search import analyze

    study, folder = _load_study(args)
    print(analyze(study, folder))
    return 0


def _cmd_retrain_best(args: argparse.Namespace) -> int:
    from .search import retrain_best

    study, folder = _load_study(args)
    result = retrain_best(study, folder, epochs=args.epochs, seeds=args.seeds,
                          nll_samples=args.nll_samples, limit=args.limit,
                          progress=not args.quiet)
    for key, r in result.items():
        if isinstance(r, dict):
            c = r["config"]
            print(f"{key:26} test NLL {r['test_nll_mean']:.2f} +- {r['test_nll_sd']:.2f} nats "
                  f"over {len(r['runs'])} seeds  ({c['latent']}, alpha {c['alpha']:g}, "
                  f"K {c['samples']})")
    print(f"gain of the best trial over the normal/normal ELBO VAE: {result['gain_nats']:.2f} "
          "nats")
    if "pairing_gain_nats" in result:
        print(f"gain of its pairing alone (normal/normal with the same bound): "
              f"{result['pairing_gain_nats']:.2f} nats")
    print(f"written to {folder / 'retrain.json'}")
    return 0


# -- the parser ----------------------------------------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run settings (also config-file keys; flags win)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = f"{f.metadata['help']} (default: {default})"
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                               help=help_text)


def _add_run_arguments(parser: argparse.ArgumentParser, out_help: str | None = None) -> None:
    parser.add_argument("run", help="the run folder")
    parser.add_argument("--device", default=None, help="override the run's device")
    parser.add_argument("--seed", type=flag_type("--seed", "index"), default=0,
                        help="seed for the draws (default 0)")
    if out_help:
        parser.add_argument("--out", default=None, help=out_help)


def _search_names() -> dict[str, list[str]]:
    """The names the search offers, read from its registries."""
    from .search import OBJECTIVES, PRESETS, PRUNERS, SAMPLERS

    return {"objective": sorted(OBJECTIVES), "preset": list(PRESETS),
            "sampler": list(SAMPLERS), "pruner": list(PRUNERS)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autovae",
        description="Generalized variational autoencoders: free posterior, prior and likelihood "
                    "beliefs, Renyi bounds, automated search.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train a model (a VAE by default) into a run folder, then evaluate it",
        description="Train a model (--model; a VAE by default). Settings come from the "
                    "defaults (the seed paper's: MLP 3x400, 20 latents, Adam 1e-4, batch 1000, "
                    "100 epochs, Fashion-MNIST), then --config FILE, then flags. A checkpoint "
                    "is written every epoch; --resume continues an interrupted run exactly.")
    train.add_argument("--run", default="runs/default", help="run folder (default runs/default)")
    train.add_argument("--config", default=None, help="YAML, TOML or JSON config file")
    train.add_argument("--resume", action="store_true", help="continue the run in --run")
    train.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                       help="skip the test evaluation at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(train)
    train.set_defaults(run_command=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="test ELBO, VR bound, IWAE NLL, reconstruction "
                                               "error; written to RUN/metrics.json")
    _add_run_arguments(evaluate)
    evaluate.add_argument("--nll-samples", type=_COUNT, default=None,
                          help="K for the NLL (default: the run's nll_samples)")
    evaluate.add_argument("--test-limit", type=_COUNT, default=None,
                          help="evaluate the first N test images only")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--quality", action="store_true",
                          help="add FID, KID, IS (domain features unless --inception-weights), "
                               "PSNR, SSIM and the balance metric BM")
    evaluate.add_argument("--quality-images", type=_COUNT, default=10000,
                          help="generated and real images for FID/KID/IS (10000)")
    evaluate.add_argument("--inception-weights", default=None,
                          help="local weights-inception-2015-12-05-6726825d.pth for standard "
                               "Inception features (also $AUTOVAE_INCEPTION_WEIGHTS)")
    evaluate.set_defaults(run_command=_cmd_evaluate)

    sample = sub.add_parser("sample", help="a PNG grid of images generated from the prior")
    _add_run_arguments(sample, "PNG path (default RUN/samples.png)")
    sample.add_argument("--n", type=_COUNT, default=64, help="how many (default 64)")
    sample.set_defaults(run_command=_cmd_sample)

    for name, helptext, default_n in (
            ("reconstruct", "a PNG of test images above their reconstructions", 16),
            ("interpolate", "a PNG of decoded paths between pairs of test images' codes", 4)):
        p = sub.add_parser(name, help=helptext)
        _add_run_arguments(p, f"PNG path (default RUN/{name}.png)")
        p.add_argument("--split", default="test", choices=("train", "val", "test"))
        if name == "reconstruct":
            p.add_argument("--n", type=_COUNT, default=default_n, help="how many (default 16)")
            p.set_defaults(run_command=_cmd_reconstruct)
        else:
            p.add_argument("--pairs", type=_COUNT, default=default_n, help="rows (default 4)")
            p.add_argument("--steps", type=_COUNT, default=10, help="columns (default 10)")
            p.add_argument("--mode", default="linear", choices=("linear", "slerp"))
            p.set_defaults(run_command=_cmd_interpolate)

    embed = sub.add_parser("embed", help="latent codes to .npy and a 2-D map coloured by label "
                                         "(PCA when the latent space has more than 2 dims)")
    _add_run_arguments(embed, "codes path (default RUN/codes_SPLIT.npy; the map is beside it)")
    embed.add_argument("--split", default="test", choices=("train", "val", "test"))
    embed.set_defaults(run_command=_cmd_embed)

    report = sub.add_parser("report", help="one self-contained HTML page of runs (or a study's "
                                           "best trials), side by side")
    report.add_argument("paths", nargs="+", help="run folders and/or study folders")
    report.add_argument("--out", default=None, help="HTML path (default FIRST_RUN/report.html)")
    report.add_argument("--top", type=_COUNT, default=3, help="best trials per study (3)")
    report.set_defaults(run_command=_cmd_report)

    def study_options(p, dir_default="runs/search"):
        p.add_argument("--dir", default=dir_default,
                       help=f"study folder: SQLite store, trial runs, analysis ({dir_default})")
        p.add_argument("--storage", default=os.environ.get("AUTOVAE_STORAGE") or None,
                       help="storage URL: sqlite:///f.db, journal:PATH or postgresql+psycopg2://"
                            "user@host:5432/db, the password in PGPASSWORD (default: "
                            "$AUTOVAE_STORAGE, else SQLite in --dir)")
        p.add_argument("--study", default="autovae", help="study name (default autovae)")

    search = sub.add_parser(
        "search", help="search beliefs, bound and network with Optuna (resumable)",
        description="Create (or resume) a study and run workers on it. The objective trains "
                    "each trial like 'autovae train' and scores it on the validation set.")
    study_options(search)
    names = _search_names()
    search.add_argument("--preset", default="quick", choices=names["preset"],
                        help="search space and base settings (default quick)")
    search.add_argument("--space", default=None, help="YAML search-space file (overrides the "
                                                      "preset's space)")
    search.add_argument("--config", default=None, help="base config file")
    search.add_argument("--trials", type=_COUNT, default=20, help="finished trials wanted (20)")
    search.add_argument("--workers", type=_COUNT, default=1, help="worker processes here (1)")
    search.add_argument("--objective", action="append", choices=names["objective"],
                        help="objective, repeat for multi-objective (default nll)")
    search.add_argument("--sampler", default="tpe", choices=names["sampler"])
    search.add_argument("--pruner", default="median", choices=names["pruner"])
    search.add_argument("--db-pool", type=_POOL, default=None, help=_POOL_HELP)
    search.add_argument("--create-only", action="store_true",
                        help="create (or resume, or re-budget) the study and exit, for workers "
                             "started elsewhere with 'autovae worker'")
    search.add_argument("--validation-nll-samples", type=_COUNT, default=50,
                        help="K for the validation NLL objective (50)")
    _add_config_flags(search)
    search.set_defaults(run_command=_cmd_search)

    worker = sub.add_parser("worker", help="run trials of an existing study (any machine)")
    study_options(worker)
    worker.add_argument("--worker", type=flag_type("--worker", "index"), default=0,
                        help="worker index: seeds differ")
    worker.add_argument("--db-pool", type=_POOL, default=None, help=_POOL_HELP)
    worker.add_argument("--device", default=None,
                        help="device of this worker's trials: cpu, cuda, cuda:N or auto (default: "
                             "the study's); one worker per GPU, see docs/distributed.md")
    worker.set_defaults(run_command=_cmd_worker)

    study = sub.add_parser("study", help="a study's best trials, importances and plots")
    study_options(study)
    study.set_defaults(run_command=_cmd_study)

    retrain = sub.add_parser("retrain-best", help="retrain the best trial and normal/normal "
                                                  "(same network and budget) over seeds")
    study_options(retrain)
    retrain.add_argument("--epochs", type=_COUNT, default=None,
                         help="epochs (default: the trial's)")
    retrain.add_argument("--seeds", type=_COUNT, default=3, help="seeds per model (3)")
    retrain.add_argument("--nll-samples", type=_COUNT, default=None, help="K for the test NLL")
    retrain.add_argument("--limit", type=_COUNT, default=None,
                         help="training images (default: all)")
    retrain.add_argument("--quiet", action="store_true")
    retrain.set_defaults(run_command=_cmd_retrain_best)

    invert = sub.add_parser(
        "invert", help="infer a Darcy log-permeability field by MCMC in a run's latent space",
        description="Bayesian inversion of the Darcy benchmark (spec 3.2): pressures at a "
                    "regular grid of interior points with relative noise, the truth a GRF draw "
                    "(--truth-seed) at the run's grid or a finer one. Writes a resumable chain "
                    "folder with summary.json, posterior.nc (ArviZ) and pictures; re-running "
                    "the same command continues it.")
    invert.add_argument("run", nargs="?", default=None,
                        help="run folder trained on darcy-grf fields (optional with --prior kl)")
    invert.add_argument("--prior", default="run", choices=("run", "kl"),
                        help="the run's decoder and latent prior, or the Karhunen-Loeve "
                             "expansion of the GRF with the same dimension (default run)")
    invert.add_argument("--grid", type=int, default=None, help="grid n for --prior kl alone")
    invert.add_argument("--dim", type=int, default=None, help="latent dim for --prior kl alone")
    invert.add_argument("--points", default="64",
                        help="observation points: a square count (64 = 8x8 interior points) or "
                             "a .npy/CSV file of (x, y) rows (default 64)")
    invert.add_argument("--data", default=None,
                        help="observed pressures (.npy/CSV, one per point) instead of data "
                             "simulated from the truth")
    invert.add_argument("--noise", type=float, default=0.05,
                        help="noise: a fraction of |p| (relative) or a std (default 0.05)")
    invert.add_argument("--noise-kind", default="relative", choices=("relative", "absolute"))
    invert.add_argument("--truth-seed", type=int, default=0,
                        help="the GRF truth and the noise draws (default 0)")
    invert.add_argument("--truth-resolution", type=int, default=None,
                        help="simulate the data on this finer grid (a multiple of the run's)")
    invert.add_argument("--truth-file", default=None,
                        help="a log-permeability field (R, R) .npy/CSV as the truth")
    invert.add_argument("--sampler", default="pcn", choices=("pcn", "rwm", "nuts"))
    invert.add_argument("--chains", type=int, default=4, help="chains (default 4)")
    invert.add_argument("--warmup", type=int, default=1000, help="warm-up steps (default 1000)")
    invert.add_argument("--samples", type=int, default=2000,
                        help="kept draws per chain (default 2000)")
    invert.add_argument("--thin", type=int, default=1, help="keep every n-th step (default 1)")
    invert.add_argument("--step-size", type=float, default=None,
                        help="initial pCN beta or RWM step (adapted during warm-up)")
    invert.add_argument("--target-accept", type=float, default=None,
                        help="target acceptance (pCN 0.27, RWM 0.234, NUTS 0.8)")
    invert.add_argument("--seed", type=int, default=0, help="chain seed (default 0)")
    invert.add_argument("--out", default=None,
                        help="chain folder (default RUN/invert-SAMPLER-SEED, "
                             "RUN/invert-kl-SAMPLER-SEED for --prior kl)")
    invert.add_argument("--device", default=None, help="device to load the run on")
    invert.set_defaults(run_command=_cmd_invert)

    datasets = sub.add_parser("datasets", help="list the datasets --data accepts by name")
    datasets.set_defaults(run_command=_cmd_datasets)

    pairs = sub.add_parser(
        "pairs", help="print the KL matrix of every (posterior, prior) pair of families",
        description="Print KL(q || p) for all 49 ordered pairs of families at one setting of "
                    "the parameters, with how each is computed.")
    # the families check their parameters (one line naming the family and the parameter)
    pairs.add_argument("--loc", type=float, default=0.3, help="posterior loc (default 0.3)")
    pairs.add_argument("--scale", type=float, default=0.7, help="posterior scale (default 0.7)")
    pairs.add_argument("--prior-loc", type=float, default=0.0, help="prior loc (default 0)")
    pairs.add_argument("--prior-scale", type=float, default=1.0, help="prior scale (default 1)")
    pairs.set_defaults(run_command=_cmd_pairs)
    parser.commands = sub.choices  # name -> subcommand parser, for its own usage in errors
    return parser


# names users try for a flag, and the flag autovae calls it
_SYNONYMS = {"learning-rate": "lr", "learning_rate": "lr", "num-epochs": "epochs",
             "n-epochs": "epochs", "k": "samples", "latent-size": "latent-dim",
             "z-dim": "latent-dim", "bs": "batch-size", "dataset": "data", "output": "out",
             "num-trials": "trials", "n-trials": "trials", "jobs": "workers", "n-jobs": "workers"}


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """'unrecognized arguments: ...' with 'did you mean --x' for each unknown flag."""
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for token in extra:
        if not token.startswith("-"):
            continue
        flag = token.split("=", 1)[0]
        name = flag.lstrip("-")
        guess = ("--" + _SYNONYMS[name] if "--" + _SYNONYMS.get(name, "") in known
                 else next(iter(difflib.get_close_matches(flag, known, n=1, cutoff=0.6)), None))
        hints.append(f"{flag} (did you mean {guess}?)" if guess else flag)
    return ("unrecognized arguments: " + " ".join(extra)
            + (f"; unknown flag(s): {', '.join(hints)}" if hints else "")
            + f"; see 'autovae {parser.prog.split()[-1]} --help'")


def _negative_values_joined(argv: list[str]) -> list[str]:
    """``--alpha -inf`` as ``--alpha=-inf``: argparse reads a value that starts with '-' and
    is not a plain negative number (-inf, -1e3) as a flag."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-"):
            try:
                float(token)
            except ValueError:
                out.append(token)
                continue
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _negative_values_joined(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # the command's own usage and a suggestion, not the top-level usage
        command = parser.commands[args.command]
        command.error(_unrecognized(command, extra))
    try:
        return args.run_command(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"autovae: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"autovae: stopped: {err}", file=sys.stderr)
        return 3
    except StudyFault as err:
        print(f"autovae: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the machine's fault, not the program's: disk full, permissions
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
            raise
        print(f"autovae: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autovae: interrupted; the last epoch's checkpoint is intact (use --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
