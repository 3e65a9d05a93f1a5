"""The ``autovae`` command line: thin wrappers that parse, call the library and print.

    autovae train --run runs/fmnist --latent 'logistic/normal:14,cauchy/cauchy:6' --epochs 20
    autovae evaluate runs/fmnist --nll-samples 5000
    autovae sample runs/fmnist          # and reconstruct, embed, interpolate
    autovae pairs                       # the KL matrix of every (posterior, prior) pair
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import os
import sys
from pathlib import Path

import torch

from ._checks import StudyFault, check_folder, check_output_file, flag_type
from .config import SETTINGS as CONFIG_SETTINGS
from .config import load_config
from .models import NonFiniteLossError

_COUNT = flag_type("count", "count")  # integers >= 1
_POOL = flag_type("--db-pool", "index")
_POOL_HELP = ("database connections this worker keeps at most (default $AUTOVAE_DB_POOL, else "
              "2: the trial loop and the heartbeat); 0: none kept, for PgBouncer")


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS

    width = max(16, *(len(name) + 2 for name in DATASETS))
    for info in DATASETS.values():
        print(f"{info.name:{width}}{info.description}")
    print("or control:SPEC, a known-belief control with the latents of a latent spec (e.g. "
          "control:laplace/laplace:3); control-gaussian:SPEC, its real-valued twin (Gaussian "
          "noise, --likelihood gaussian)")
    print("or test-subset:N:NAME, dataset NAME with N of its test images, equal per label (e.g. "
          "test-subset:1000:fashion-mnist)")
    print("or dequantized:L:NAME, dataset NAME's L levels uniformly dequantised into (0, 1), for "
          "a density likelihood (e.g. dequantized:17:digits, dequantized:256:fashion-mnist)")
    print("or a path: a .npy / .npz file, or a folder of images (see the README)")
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    from .beliefs import pair_table

    print(pair_table(args.loc, args.scale, args.prior_loc, args.prior_scale))
    return 0


# -- train and evaluate --------------------------------------------------------------------------
def _config_overrides(args: argparse.Namespace) -> dict:
    return CONFIG_SETTINGS.given(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .run import Run
    from .training import resume_config, train

    run = Run(check_folder(args.run, "run folder"))
    run.check_writable()
    overrides = _config_overrides(args)
    if args.resume:
        if not run.folder.is_dir():
            raise ValueError(f"--resume: run folder {run.folder} does not exist; train without "
                             "--resume to start a run there")
        if not run.has_config() and not run.has_checkpoint():
            raise ValueError(f"--resume: {run.folder} holds no run (no config.yaml, no "
                             "checkpoint.pt); train without --resume to start one there")
        if args.config is not None:
            raise ValueError("--resume continues a run with its own settings (config.yaml); "
                             "drop --config, or train into another folder")
        config = resume_config(run, overrides)
    else:
        config = load_config(args.config, **overrides)
    result = train(config, run.folder, resume=args.resume, progress=not args.quiet)
    print(f"trained {result.epochs_done} epochs into {run.folder}")
    if args.evaluate:
        from .run import test_data_label

        _evaluate(run, result.model, result.data.test, config.nll_samples, not args.quiet,
                  label=test_data_label(config, result.data.test))
    return 0


def _evaluate(run, model, x_test, nll_samples: int, progress: bool,
              full_images: int | None = None, label: str | None = None,
              beside: Path | None = None) -> dict:
    """Evaluate on ``x_test`` (described by ``label``) into RUN/metrics.json; a partial
    evaluation (fewer than ``full_images`` test images, or fewer NLL samples than metrics.json
    holds) is written beside it, named for what it is, so that it never replaces the full one;
    so is one on other test data than the run's own (``beside``)."""
    from .evaluation import evaluate, prefixed

    nll_samples = nll_samples if model.has_bound else None
    metrics = prefixed(evaluate(model, x_test, nll_samples=nll_samples, progress=progress,
                                data_label=label), "test")
    if beside is not None:
        run.save_metrics(metrics, beside)
        print(json.dumps(metrics, indent=2))
        print(f"evaluation on {label} written to {beside}; {run.metrics_path} keeps the run's "
              "own test set", file=sys.stderr)
        return metrics
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


def _load(args: argparse.Namespace, *outputs: str):
    """(run, config, model, data) of an existing run folder; ``outputs`` are the files the
    command will write (checked first, before any work)."""
    from .run import Run, load_trained

    run = Run(args.run)
    run.load_config()  # "not a run folder" before anything else
    for output in outputs:
        check_output_file(output, "output file")
    loaded = load_trained(args.run, args.device)
    torch.manual_seed(args.seed)
    return loaded


def _split(data, name: str):
    return getattr(data, name), getattr(data, f"{name}_labels")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import QUALITY_MIN_IMAGES
    from .run import Run

    if args.quality and args.quality_images < QUALITY_MIN_IMAGES:  # before the NLL's minutes
        raise ValueError(f"--quality-images {args.quality_images}: sample quality needs at least "
                         f"{QUALITY_MIN_IMAGES} images (the Inception score is a mean over "
                         f"{QUALITY_MIN_IMAGES} splits); ask for --quality-images "
                         f"{QUALITY_MIN_IMAGES} or more")
    from .run import prepare, test_data_label

    run = Run(args.run)
    run.check_writable()
    beside = None
    if args.test_binarize is not None:  # checked with the run's data before the model loads
        own = run.load_config()
        other = own.replace(test_binarize=args.test_binarize)
        if other != own:
            beside = run.folder / f"metrics_binarized_seed{args.test_binarize}.json"
            check_output_file(beside, "output file")
            test = prepare(other).test
    run, config, model, data = _load(args)
    if args.nll_samples is not None and not model.has_bound:
        raise ValueError(f"--nll-samples: model {model.name} has no bound, so no "
                         "importance-sampled NLL; drop --nll-samples (--quality scores its "
                         "samples)")
    if beside is not None:
        config = other
        test = test.to(data.test.device)
    else:
        test = data.test
    x = test if args.test_limit is None else test[: args.test_limit]
    _evaluate(run, model, x, args.nll_samples or config.nll_samples, not args.quiet,
              full_images=test.shape[0], label=test_data_label(config, x), beside=beside)
    if args.quality:
        from .evaluation import evaluate_quality

        metrics = evaluate_quality(model, data, args.quality_images, args.inception_weights)
        run.save_metrics(metrics)
        print(json.dumps(metrics, indent=2))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .pictures import sample_picture

    out = args.out or Path(args.run) / "samples.png"
    run, _, model, _ = _load(args, out)
    print(sample_picture(model, out, args.n))
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .pictures import reconstruction_picture

    out = args.out or Path(args.run) / "reconstructions.png"
    run, _, model, data = _load(args, out)
    x, _ = _split(data, args.split)
    print(reconstruction_picture(model, x, out, args.n))
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .pictures import latent_picture

    path = Path(args.out or Path(args.run) / f"codes_{args.split}.npy")
    run, _, model, data = _load(args, path.with_suffix(".npy"), path.with_suffix(".png"))
    x, labels = _split(data, args.split)
    for written in latent_picture(model, x, labels, path, class_names=data.classes,
                                  title=f"{model.latent} on {data.name} ({args.split})"):
        print(written)
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from .pictures import interpolate_codes, save_interpolation

    out = args.out or Path(args.run) / "interpolation.png"
    run, _, model, data = _load(args, out)
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
    frames = model.decode_mean(path_z)
    print(save_interpolation(frames, out))
    return 0


def _cmd_invert(args: argparse.Namespace) -> int:
    from .inverse.config import SETTINGS, InverseConfig, kernel_settings
    from .inverse.inversion import invert
    from .inverse.outputs import format_summary

    given = {**SETTINGS.given(args), **kernel_settings().given(args)}
    config = (InverseConfig.from_file(args.config, **given) if args.config
              else InverseConfig.from_dict(given))
    result = invert(config, progress=not args.quiet)
    print(format_summary(result.summary))
    print(f"{result.new_solves:,} new PDE solves; written to {result.folder}")
    if result.chains.status == "diverged":
        print(f"autovae: stopped: {result.chains.reason}", file=sys.stderr)
        return 3
    return 0


def _cmd_serve_forward(args: argparse.Namespace) -> int:
    from .inverse.forward_models import load_forward
    from .inverse.umbridge import check_serve, serve

    options = {}
    if args.bc is not None:
        if args.model != "darcy":
            raise ValueError(f"--bc sets the boundary conditions of darcy, not of {args.model}; "
                             "leave it out (or serve a class that sets its own)")
        options["bc"] = args.bc
    check_serve(args.host, args.port, args.name or "model")
    model = load_forward(args.model, **options)
    check_serve(args.host, args.port, args.name or model.name)
    print(f"serving {model.name} ({model.param_shape} -> {model.n_obs}) as UM-Bridge model "
          f"{args.name or model.name} at http://{args.host}:{args.port}", flush=True)
    serve(model, args.port, args.host, args.name, args.workers)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .inverse.forward_models import load_forward
    from .inverse.simulate import SETTINGS, SimulationSettings, read_truth, simulate, write_array

    cfg = SimulationSettings(**SETTINGS.given(args))
    outs = [check_output_file(cfg.out, "--out")]
    if cfg.truth_out:
        outs.append(check_output_file(cfg.truth_out, "--truth-out"))
        if outs[1].resolve() == outs[0].resolve():
            raise ValueError(f"--truth-out {cfg.truth_out} is --out too; name another file")
    forward = load_forward(cfg.forward)
    sim = simulate(forward, read_truth(cfg.truth, forward), cfg.noise, cfg.noise_kind, cfg.seed)
    write_array(outs[0], sim.y)
    if cfg.truth_out:
        write_array(outs[1], sim.truth)
    print(f"{outs[0]}: {forward.n_obs} observations of {forward.name} at the truth {cfg.truth} "
          f"(parameters {tuple(forward.param_shape)}), noise {cfg.noise:g} {cfg.noise_kind} "
          f"(seed {cfg.seed})" + (f"; the truth in {outs[1]}" if cfg.truth_out else ""))
    kind = " --noise-kind relative" if cfg.noise_kind == "relative" else ""
    truth = f" --truth-file {outs[1]}" if cfg.truth_out else ""
    print(f"invert it: autovae invert --problem custom --forward {cfg.forward} --data {outs[0]} "
          f"--noise {cfg.noise:g}{kind}{truth}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.paths, args.out, args.top))
    return 0


# -- search --------------------------------------------------------------------------------------
def _study_args(args: argparse.Namespace):
    """(storage, study name, study folder); the folder and the files every study command may
    write there (analysis.json, retrain.json) are checked before any work."""
    from .run import StudyFolder

    folder = check_folder(args.dir, "study folder")
    study = StudyFolder(folder)
    for path in (study.analysis_path, study.retrain_path):
        check_output_file(path, "study file")
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
    study = run_search(storage, name, folder, spec, workers=args.workers, pool=args.db_pool,
                       report=not args.quiet)
    print(analyze(study, folder))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from .run import resolve_device
    from .search import run_worker

    if args.device is not None:  # before the study is opened (and its store written)
        resolve_device(args.device)
    storage, name, folder = _study_args(args)
    return run_worker(storage, name, folder, worker=args.worker, pool=args.db_pool,
                      device=args.device, report=not args.quiet, wait=args.wait)


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
    from .search.pairing_map import where_on_the_map

    print(f"test NLL (K = {result['nll_samples']}) on the test set as {result['test_data']}:")
    for key, r in result.items():
        if isinstance(r, dict) and "runs" in r:
            c, n = r["config"], len(r["runs"])
            spread = (f"+- {r['test_nll_sd']:.2f} nats (sd over {n} seeds)" if n > 1
                      else "nats (1 seed: no spread)")
            print(f"{key:26} test NLL {r['test_nll_mean']:.2f} {spread}  ({c['latent']}, "
                  f"alpha {c['alpha']:g}, K {c['samples']})")
    floor = result.get("bernoulli_entropy_floor")
    if floor is not None:
        print(f"Bernoulli entropy floor of these grey levels: {floor:.2f} nats (no model scores "
              "below it; only the part above it is reducible)")

    def share(key: str) -> str:
        return (f" ({result[key]:.1%} of the reducible part)" if floor is not None else "")

    print(f"gain of the best trial over the normal/normal ELBO VAE: {result['gain_nats']:.2f} "
          f"nats{share('gain_share_of_reducible')}")
    seeds = ", ".join(f"{g:+.2f}" for g in result["pairing_gain_per_seed"])
    sd = result["pairing_gain_sd"]
    spread = f" +- {sd:.2f}" if sd is not None else ""
    print(f"gain of its pairing alone (normal/normal with the same bound): "
          f"{result['pairing_gain_nats']:.2f}{spread} nats (per seed {seeds})"
          f"{share('pairing_gain_share_of_reducible')}")
    print(where_on_the_map(result, args.map))
    print(f"written to {folder / 'retrain.json'}")
    return 0


# -- the parser ----------------------------------------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run settings (also config-file keys; flags win)")
    CONFIG_SETTINGS.add_flags(group)


def _add_inverse_flags(parser: argparse.ArgumentParser) -> None:
    """The invert flags, generated from InverseConfig and the kernels' declared options; old
    spellings are refused by name."""
    from .inverse.config import RENAMED, SETTINGS, kernel_settings
    from .inverse.kernels import option_readers

    SETTINGS.add_flags(parser)
    group = parser.add_argument_group("kernel options (also config-file keys; refused for "
                                      "kernels that do not read them)")
    kernel_settings().add_flags(
        group, note=lambda spec: f"--kernel {' or '.join(option_readers(spec.name))}; ")
    for old, new in RENAMED.items():
        parser.add_argument(f"--{old}", action=_Renamed, nargs="?", help=argparse.SUPPRESS,
                            new=f"--{new}")


class _Renamed(argparse.Action):
    def __init__(self, *args, new: str, **kwargs):
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.new}; did you mean {self.new}?")


def _add_run_arguments(parser: argparse.ArgumentParser, out_help: str | None = None) -> None:
    parser.add_argument("run", help="the run folder")
    parser.add_argument("--device", default=None, help="override the run's device")
    parser.add_argument("--seed", type=flag_type("--seed", "seed"), default=0,
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
    evaluate.add_argument("--test-binarize", type=flag_type("--test-binarize", "seed"),
                          default=None, metavar="SEED",
                          help="score a fixed binarisation of the test set drawn with SEED "
                               "(comparable to binarised-MNIST numbers); written to "
                               "RUN/metrics_binarized_seedSEED.json unless the run's own")
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
    search.add_argument("--quiet", action="store_true", help="no line per finished trial")
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
    worker.add_argument("--quiet", action="store_true", help="no line per finished trial")
    worker.add_argument("--wait", type=flag_type("--wait", "nonnegative"), default=0.0,
                        metavar="SECONDS", help="wait up to SECONDS for a database that does not "
                        "answer yet and a study not created yet (0: none; e.g. on Kubernetes)")
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
    retrain.add_argument("--map", default=None,
                         help="a pairing map (experiments/pairing_map.py) to place the study on "
                              "(default $AUTOVAE_PAIRING_MAP, else the checkout's "
                              "docs/results/map/pairing_map.json when there is one)")
    retrain.add_argument("--quiet", action="store_true")
    retrain.set_defaults(run_command=_cmd_retrain_best)

    invert = sub.add_parser(
        "invert", help="sample the posterior of an inverse problem by MCMC",
        description="Bayesian inversion: the latent-MCMC Darcy case in a run's latent space or "
                    "a Karhunen-Loeve prior, the Aristoff-Bangerth benchmark, or your own "
                    "forward model (a Python class or a UM-Bridge model). Writes a resumable "
                    "chain folder with summary.json (diagnostics, costs per solve and per "
                    "second, errors and calibration), posterior.nc (ArviZ) and pictures; "
                    "re-running the same command continues it.")
    _add_inverse_flags(invert)
    invert.add_argument("--config", default=None,
                        help="a YAML/TOML/JSON file of these settings (flags win)")
    invert.add_argument("--quiet", action="store_true", help="no progress bars")
    invert.set_defaults(run_command=_cmd_invert)

    serve_fwd = sub.add_parser(
        "serve-forward", help="serve a forward model over HTTP (UM-Bridge protocol)",
        description="Serve darcy, aristoff-bangerth or package.module:Class as a UM-Bridge "
                    "model, for other UQ tools or for autovae invert --forward umbridge:URL.")
    serve_fwd.add_argument("model", help="darcy, aristoff-bangerth or package.module:Class")
    serve_fwd.add_argument("--port", type=int, default=4242)
    serve_fwd.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve_fwd.add_argument("--name", default=None, help="the model's name (default: its own)")
    serve_fwd.add_argument("--workers", type=int, default=1,
                           help="requests evaluated at once (threads; default 1)")
    serve_fwd.add_argument("--bc", default=None, metavar="BC",
                           help="darcy only: its boundary conditions, spelled as autovae invert "
                                "--bc (e.g. left=dirichlet:1,right=dirichlet:0; default: p = 0 "
                                "on x = 0, 1, no flux on y = 0, 1)")
    serve_fwd.set_defaults(run_command=_cmd_serve_forward)

    simulate = sub.add_parser(
        "simulate", help="simulate observations of a chosen truth (data for invert --data)",
        description="Observations y = forward(truth) + Gaussian noise, written for "
                    "'autovae invert --problem custom --data'. A --forward package.module:Class "
                    "must be importable: installed (pip install -e), or its folder on "
                    "PYTHONPATH.")
    from .inverse.simulate import SETTINGS as simulate_settings

    simulate_settings.add_flags(simulate)
    simulate.set_defaults(run_command=_cmd_simulate)

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
