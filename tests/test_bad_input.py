"""Every input a user can get wrong, in one table (issue 11).

Each CLI case asserts the exit code, that no traceback is shown, that the message names the
input, that no file or folder appeared or changed anywhere under the test's root, and so that
the earlier results (metrics.json, checkpoint.pt, config.yaml, metrics.jsonl, study.db) are
byte-identical. Each library case asserts a ValueError whose message names the argument.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from autovae.cli import main
from autovae.config import Config, load_config

# a tiny run on scikit-learn's digits: 2 epochs so that '--resume --epochs 1' is a regression
TRAIN = ["--data", "digits", "--hidden", "8", "--depth", "1", "--epochs", "2", "--batch-size",
         "500", "--latent", "normal/normal:2", "--nll-samples", "3", "--quiet"]
GAN_TRAIN = TRAIN[:-3] + ["--quiet", "--model", "gan"]  # a GAN has no NLL to sample


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A root folder with a trained run, a study store, broken copies and bad input files."""
    root = tmp_path_factory.mktemp("bad_input")
    run = root / "run"
    assert main(["train", "--run", str(run), *TRAIN]) == 0
    from autovae.search import SearchSpace, StudySpec, create_study, open_storage

    space = SearchSpace(pairs=["normal/normal"], latent_dim=(2, 2), hidden=(8, 8), depth=(1, 1))
    create_study(open_storage(None, root / "study"), "autovae",
                 StudySpec(space, Config(data="digits", epochs=1), ["nll"], 2))
    for name, edit in (("bad_yaml", lambda p: p.write_text(p.read_text() + "hidden: [1\n")),
                       ("edited", lambda p: p.write_text(p.read_text().replace("hidden: 8",
                                                                               "hidden: 9")))):
        shutil.copytree(run, root / name)
        edit(root / name / "config.yaml")
    shutil.copytree(run, root / "cut_jsonl")
    history = root / "cut_jsonl" / "metrics.jsonl"
    lines = history.read_text().splitlines()
    history.write_text(lines[0][:-5] + "\n" + lines[1] + "\n")  # a damaged middle line
    for name, cut in (("cut_study", lambda b: b[:-1]), ("empty_study", lambda b: b"")):
        (root / name).mkdir()
        (root / name / "study.db").write_bytes(cut((root / "study" / "study.db").read_bytes()))
    files = {
        "bad.yaml": "epochs: 3\nlr: [1\n", "bad.json": '{"epochs": 3,\n "lr": }',
        "bad.toml": "epochs = 3\nlr = \n", "unknown.yaml": "lattent: normal/normal:2\n",
        "space_syntax.yaml": "pairs: [normal/normal\n", "space_hidden.yaml": "hidden: [0, 0]\n",
        "space_beta.yaml": "beta: [-1, 1]\n", "space_alpha.yaml": "alpha: soon\n",
        "space_key.yaml": "alpah: [0, 1]\n", "space_lr.yaml": "lr: [0, 0.1]\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "a_folder").mkdir()
    import numpy as np

    np.save(root / "wide.npy", np.linspace(-1, 3, 40 * 16, dtype=np.float32).reshape(40, 4, 4))
    # issue 20: a GAN run, folders where files go, a cut chain summary, bad config values
    assert main(["train", "--run", str(root / "gan"), *GAN_TRAIN, "--disc-hidden", "8",
                 "--no-evaluate"]) == 0
    shutil.copytree(run, root / "blocked_run")
    (root / "blocked_run" / "metrics.json").unlink()
    (root / "blocked_run" / "metrics.json").mkdir()  # a folder where evaluate writes a file
    (root / "blocked_new" / "checkpoint.pt").mkdir(parents=True)
    (root / "blocked_new" / "codes.png").mkdir()  # embed writes codes.npy and codes.png
    (root / "blocked_study" / "analysis.json").mkdir(parents=True)
    (root / "chain").mkdir()
    (root / "chain" / "summary.json").write_text('{"acceptance": 0.3, "ess_bulk_min": 1')
    for name, text in {"bool_count.yaml": "epochs: yes\n",
                       "dup.yaml": "epochs: 3\nlr: 0.1\nepochs: 4\n",
                       "dup.json": '{"epochs": 3, "epochs": 4}',
                       "space_fisher.yaml": "fisher_weight: [-1, 1]\n",
                       "array_data.yaml": "data: [1, 2, 3]\n", "truth_3.csv": "1,2,3\n"}.items():
        (root / name).write_text(text)
    # issue 25: vector priors on the parameters of a custom model (aristoff-bangerth's 64)
    (root / "ab_data.csv").write_text(",".join(["0.01"] * 169) + "\n")
    (root / "mean3.txt").write_text("1 2 3\n")
    (root / "cov_not_pd.txt").write_text("\n".join(
        " ".join("2" if i != j else "1" for j in range(64)) for i in range(64)) + "\n")
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


R = "{root}"
CUSTOM = ["invert", "--forward", "aristoff-bangerth", "--data", R + "/ab_data.csv", "--noise",
          "0.05", "--out", R + "/new_chain"]
CLI_CASES = [
    # CLI-only counts and indices
    ("sample --n -5", ["sample", R + "/run", "--n", "-5"], "--n"),
    ("sample --n 0", ["sample", R + "/run", "--n", "0"], "--n"),
    ("sample --n text", ["sample", R + "/run", "--n", "many"], "--n"),
    ("reconstruct --n 0", ["reconstruct", R + "/run", "--n", "0"], "--n"),
    ("interpolate --pairs 0", ["interpolate", R + "/run", "--pairs", "0"], "--pairs"),
    ("interpolate --steps 0", ["interpolate", R + "/run", "--steps", "0"], "--steps"),
    ("interpolate --pairs too many", ["interpolate", R + "/run", "--pairs", "100000"], "--pairs"),
    ("evaluate --test-limit 0", ["evaluate", R + "/run", "--test-limit", "0"], "--test-limit"),
    ("evaluate --nll-samples -1", ["evaluate", R + "/run", "--nll-samples", "-1"],
     "--nll-samples"),
    ("evaluate --quality-images 0", ["evaluate", R + "/run", "--quality", "--quality-images",
                                     "0"], "--quality-images"),
    ("evaluate --seed -1", ["evaluate", R + "/run", "--seed", "-1"], "--seed"),
    ("evaluate --device", ["evaluate", R + "/run", "--device", "gpu9"], "device 'gpu9'"),
    ("search --workers 0", ["search", "--dir", R + "/new", "--workers", "0"], "--workers"),
    ("search --trials 0", ["search", "--dir", R + "/new", "--trials", "0"], "--trials"),
    ("search --validation-nll-samples 0", ["search", "--dir", R + "/new",
                                           "--validation-nll-samples", "0"],
     "--validation-nll-samples"),
    ("worker --worker -1", ["worker", "--dir", R + "/study", "--worker", "-1"], "--worker"),
    ("report --top 0", ["report", R + "/run", "--top", "0"], "--top"),
    ("retrain-best --seeds 0", ["retrain-best", "--dir", R + "/study", "--seeds", "0"],
     "--seeds"),
    # config keys (flags and files share one domain each)
    ("--latent-clip 0", ["train", "--run", R + "/new", "--latent-clip", "0"], "latent_clip"),
    ("--clip-grad 0", ["train", "--run", R + "/new", "--clip-grad", "0"], "clip_grad"),
    ("--lr 0", ["train", "--run", R + "/new", "--lr", "0"], "lr"),
    ("--lr nan", ["train", "--run", R + "/new", "--lr", "nan"], "lr"),
    ("--lr inf", ["train", "--run", R + "/new", "--lr", "inf"], "lr"),
    ("--alpha nan", ["train", "--run", R + "/new", "--alpha", "nan"], "alpha"),
    ("--epochs 0", ["train", "--run", R + "/new", "--epochs", "0"], "epochs"),
    ("--batch-size 0", ["train", "--run", R + "/new", "--batch-size", "0"], "batch_size"),
    ("--hidden 0", ["train", "--run", R + "/new", "--hidden", "0"], "hidden"),
    ("--depth 1.5", ["train", "--run", R + "/new", "--depth", "1.5"], "depth"),
    ("--samples 0", ["train", "--run", R + "/new", "--samples", "0"], "samples"),
    ("--beta -1", ["train", "--run", R + "/new", "--beta", "-1"], "beta"),
    ("--sigma 0", ["train", "--run", R + "/new", "--sigma", "0"], "sigma"),
    ("--val-size -1", ["train", "--run", R + "/new", "--val-size", "-1"], "val_size"),
    ("--limit 0", ["train", "--run", R + "/new", "--limit", "0"], "limit"),
    ("--latent-dim 0", ["train", "--run", R + "/new", "--latent-dim", "0"], "latent_dim"),
    ("--warmup-epochs -1", ["train", "--run", R + "/new", "--warmup-epochs", "-1"],
     "warmup_epochs"),
    ("--nll-samples 0", ["train", "--run", R + "/new", "--nll-samples", "0"], "nll_samples"),
    ("--binarize maybe", ["train", "--run", R + "/new", "--binarize", "maybe"], "binarize"),
    ("--likelihood poisson", ["train", "--run", R + "/new", "--likelihood", "poisson"],
     "poisson"),
    ("--latent cauchy/normal", ["train", "--run", R + "/new", *TRAIN, "--latent",
                                "cauchy/normal:2"], "cauchy/normal"),
    ("--data missing.npy", ["train", "--run", R + "/new", "--data", R + "/missing.npy"],
     "missing.npy"),
    # flags argparse does not know: the command's usage and a suggestion
    ("--learning-rate", ["train", "--run", R + "/new", "--learning-rate", "1"], "--lr"),
    ("--ephocs", ["train", "--run", R + "/new", "--ephocs", "3"], "--epochs"),
    ("sample --number", ["sample", R + "/run", "--number", "3"], "--n"),
    # config files: the file and the line
    ("--config bad.yaml", ["train", "--run", R + "/new", "--config", R + "/bad.yaml"],
     "bad.yaml is not valid YAML at line 3"),
    ("--config bad.json", ["train", "--run", R + "/new", "--config", R + "/bad.json"],
     "bad.json is not valid JSON at line 2"),
    ("--config bad.toml", ["train", "--run", R + "/new", "--config", R + "/bad.toml"],
     "bad.toml is not valid TOML at line 2"),
    ("--config unknown key", ["train", "--run", R + "/new", "--config", R + "/unknown.yaml"],
     "did you mean 'latent'"),
    ("--config missing", ["train", "--run", R + "/new", "--config", R + "/nope.yaml"],
     "nope.yaml not found"),
    ("--config folder", ["train", "--run", R + "/new", "--config", R + "/a_folder"],
     "a_folder is a folder"),
    # run folders: files in the way, runs to protect
    ("train --run FILE", ["train", "--run", R + "/bad.yaml", *TRAIN], "bad.yaml is a file"),
    ("train --run FILE/sub", ["train", "--run", R + "/bad.yaml/sub", *TRAIN],
     "bad.yaml is a file"),
    ("train over a run", ["train", "--run", R + "/run", *TRAIN], "already holds a run"),
    ("--resume --epochs 1", ["train", "--run", R + "/run", "--resume", "--epochs", "1"],
     "already trained 2 epochs"),
    ("--resume --lr", ["train", "--run", R + "/run", "--resume", "--lr", "0.5"], "lr: "),
    ("--resume cut metrics.jsonl", ["train", "--run", R + "/cut_jsonl", "--resume", "--epochs",
                                    "3", "--quiet"], "metrics.jsonl is not valid JSON at line 1"),
    ("evaluate config.yaml syntax", ["evaluate", R + "/bad_yaml"],
     "config.yaml is not valid YAML at line"),
    ("evaluate edited config.yaml", ["evaluate", R + "/edited"], "was config.yaml edited"),
    ("evaluate missing run", ["evaluate", R + "/nothing"], "nothing is not a run folder"),
    ("sample missing run", ["sample", R + "/nothing"], "nothing is not a run folder"),
    ("report missing", ["report", R + "/nothing"], "nothing is neither"),
    # studies and storages
    ("study missing", ["study", "--dir", R + "/nothing"], "no study in"),
    ("retrain-best missing", ["retrain-best", "--dir", R + "/nothing"], "no study in"),
    ("study db cut by a byte", ["study", "--dir", R + "/cut_study"], "study.db is cut short"),
    ("study db emptied", ["study", "--dir", R + "/empty_study"], "study.db is empty"),
    ("search db emptied", ["search", "--dir", R + "/empty_study"], "study.db is empty"),
    ("search --dir FILE", ["search", "--dir", R + "/bad.yaml"], "bad.yaml is a file"),
    ("journal folder", ["search", "--dir", R + "/new", "--storage", "journal:" + R],
     "is a folder"),
    ("sqlite missing folder", ["search", "--dir", R + "/new", "--storage",
                               "sqlite:///" + R + "/nowhere/x.db"], "nowhere does not exist"),
    ("sqlite URL a folder", ["search", "--dir", R + "/new", "--storage",
                             "sqlite:///" + R + "/a_folder"], "a_folder is a folder"),
    ("unknown dialect", ["search", "--dir", R + "/new", "--storage", "redis://h/0"],
     "bad storage URL 'redis://h/0'"),
    ("postgres refused", ["search", "--dir", R + "/new", "--storage",
                          "postgresql://u:pw@127.0.0.1:1/db"], "127.0.0.1:1"),
    ("space syntax", ["search", "--dir", R + "/new", "--space", R + "/space_syntax.yaml"],
     "space_syntax.yaml is not valid YAML at line"),
    ("space hidden [0, 0]", ["search", "--dir", R + "/new", "--space",
                             R + "/space_hidden.yaml"], "hidden"),
    ("space beta [-1, 1]", ["search", "--dir", R + "/new", "--space", R + "/space_beta.yaml"],
     "beta"),
    ("space alpha text", ["search", "--dir", R + "/new", "--space", R + "/space_alpha.yaml"],
     "alpha"),
    ("space lr [0, ..]", ["search", "--dir", R + "/new", "--space", R + "/space_lr.yaml"], "lr"),
    ("space unknown key", ["search", "--dir", R + "/new", "--space", R + "/space_key.yaml"],
     "alpah"),
    ("space missing", ["search", "--dir", R + "/new", "--space", R + "/nope.yaml"],
     "nope.yaml not found"),
    ("study, other space", ["search", "--dir", R + "/study", "--preset", "paper"],
     "exists with a different"),
    # -- issue 20 ---------------------------------------------------------------------------
    # 1: a setting the chosen model does not read is refused for every model
    ("1 gan --beta 4", ["train", "--run", R + "/new", *GAN_TRAIN, "--beta", "4"],
     "beta = 4.0 does not apply to model gan"),
    ("1 gan --likelihood gaussian", ["train", "--run", R + "/new", *GAN_TRAIN,
                                     "--likelihood", "gaussian"],
     "likelihood = 'gaussian' does not apply to model gan"),
    ("1 gan --latent-clip 5", ["train", "--run", R + "/new", *GAN_TRAIN,
                               "--latent-clip", "5"], "latent_clip = 5.0 does not apply"),
    ("1 ava1 --fisher-weight", ["train", "--run", R + "/new", *TRAIN, "--model", "ava1",
                                "--fisher-weight", "0.1"], "read by vae, beta-vae"),
    ("1 evaluate gan --nll-samples", ["evaluate", R + "/gan", "--nll-samples", "5"],
     "--nll-samples: model gan has no bound"),
    # a: zero and negative sizes are refused, not read as "unset" or handed to torch
    ("a --code-disc-hidden 0", ["train", "--run", R + "/new", *TRAIN, "--model", "ava3",
                                "--code-disc-hidden", "0"], "code_disc_hidden"),
    ("a --disc-hidden -3", ["train", "--run", R + "/new", *GAN_TRAIN,
                            "--disc-hidden", "-3"], "disc_hidden must be an integer >= 1"),
    ("a --disc-depth 0", ["train", "--run", R + "/new", *GAN_TRAIN,
                          "--disc-depth", "0"], "disc_depth"),
    ("a --disc-lr -1", ["train", "--run", R + "/new", *GAN_TRAIN, "--disc-lr",
                        "-1"], "disc_lr"),
    # b: sizes beyond memory, refused before allocating, naming the setting and the bytes
    ("b --hidden 1e8", ["train", "--run", R + "/new", *TRAIN, "--hidden", "100000000"],
     "hidden = 100000000"),
    ("b --latent 1e8 dims", ["train", "--run", R + "/new", *TRAIN, "--latent",
                             "normal/normal:100000000"], "GiB"),
    ("b --disc-hidden 1e7", ["train", "--run", R + "/new", *GAN_TRAIN,
                             "--disc-hidden", "10000000"], "disc_hidden = 10000000"),
    # c: output paths: a folder where a file goes, a file where a folder goes
    ("c sample --out FOLDER", ["sample", R + "/run", "--out", R + "/a_folder"],
     "a_folder is a folder"),
    ("c sample --out FILE/x.png", ["sample", R + "/run", "--out", R + "/bad.yaml/x.png"],
     "bad.yaml is a file"),
    ("c reconstruct --out FOLDER", ["reconstruct", R + "/run", "--out", R + "/a_folder"],
     "a_folder is a folder"),
    ("c interpolate --out FOLDER", ["interpolate", R + "/run", "--out", R + "/a_folder"],
     "a_folder is a folder"),
    ("c embed map a folder", ["embed", R + "/run", "--out", R + "/blocked_new/codes.npy"],
     "codes.png is a folder"),
    ("c evaluate metrics.json a folder", ["evaluate", R + "/blocked_run"],
     "metrics.json is a folder"),
    ("c train checkpoint.pt a folder", ["train", "--run", R + "/blocked_new", *TRAIN],
     "checkpoint.pt is a folder"),
    ("c report --out FOLDER", ["report", R + "/run", "--out", R + "/a_folder"],
     "a_folder is a folder"),
    ("c study analysis.json a folder", ["study", "--dir", R + "/blocked_study"],
     "analysis.json is a folder"),
    # d: config values
    ("d epochs: yes", ["train", "--run", R + "/new", "--config", R + "/bool_count.yaml"],
     "epochs must be an integer, got True"),
    ("d duplicate YAML key", ["train", "--run", R + "/new", "--config", R + "/dup.yaml"],
     "dup.yaml is not valid YAML at line 3"),
    ("d duplicate JSON key", ["train", "--run", R + "/new", "--config", R + "/dup.json"],
     "dup.json: key 'epochs' is given twice"),
    ("d data: a list", ["train", "--run", R + "/new", "--config", R + "/array_data.yaml"],
     "data must be text"),
    ("d --seed -1", ["train", "--run", R + "/new", *TRAIN, "--seed", "-1"], "seed must be"),
    ("d --seed 2**40", ["train", "--run", R + "/new", *TRAIN, "--seed", str(2**40)],
     "seed must be"),
    ("d evaluate --seed 2**40", ["evaluate", R + "/run", "--seed", str(2**40)], "--seed"),
    # e: --resume without a run
    ("e --resume missing folder", ["train", "--run", R + "/nothing", "--resume"],
     "nothing does not exist"),
    ("e --resume empty folder", ["train", "--run", R + "/a_folder", "--resume"],
     "a_folder holds no run"),
    # g: search spaces under the config's rules; an objective given twice
    ("g space fisher_weight [-1, 1]", ["search", "--dir", R + "/new", "--space",
                                       R + "/space_fisher.yaml"], "fisher_weight"),
    ("g --objective twice", ["search", "--dir", R + "/new", "--objective", "nll",
                             "--objective", "nll"], "nll given twice"),
    # h: the message names the setting and a fix that works
    ("h --spectral-norm maybe", ["train", "--run", R + "/new", *GAN_TRAIN,
                                 "--spectral-norm", "maybe"], "--spectral-norm"),
    ("h --quality-images 5", ["evaluate", R + "/gan", "--quality", "--quality-images", "5"],
     "--quality-images 10 or more"),
    ("h --sigma 1e-30", ["train", "--run", R + "/new", *TRAIN, "--likelihood", "gaussian",
                         "--sigma", "1e-30"], "(e.g. --sigma 0.1)"),
    ("h cut summary.json", ["report", R + "/chain"], "summary.json is not valid JSON"),
    ("invert --bc unknown side", ["invert", "--prior", "kle", "--bc", "middle=dirichlet:1",
                                  "--out", R + "/inv"], "--bc: unknown side 'middle'"),
    ("invert --bc all Neumann", ["invert", "--prior", "kle", "--bc",
                                 "left=neumann:0,right=neumann:0", "--out", R + "/inv"],
     "make at least one side Dirichlet"),
    ("serve-forward --bc of another model", ["serve-forward", "aristoff-bangerth", "--bc",
                                             "left=dirichlet:1"],
     "--bc sets the boundary conditions of darcy, not of aristoff-bangerth"),
    ("serve-forward darcy --bc malformed", ["serve-forward", "darcy", "--bc", "left"],
     "--bc 'left': 'left' is not side=kind:value"),
    # -- issue 28: autovae simulate ---------------------------------------------------------
    *[(f"simulate {name}", ["simulate", "--forward", "darcy", "--truth", "grf:0", "--noise",
                            "0.1", "--out", R + "/y.npy", *change], message)
      for name, change, message in [
          ("--noise 0", ["--noise", "0"], "--noise must be a finite number > 0, got 0.0"),
          ("--noise nan", ["--noise", "nan"], "--noise must be a finite number > 0, got nan"),
          ("--noise-kind", ["--noise-kind", "fraction"],
           "--noise-kind must be one of absolute, relative, got 'fraction'"),
          ("truth missing", ["--truth", R + "/nope.npy"], "/nope.npy: no such file"),
          ("truth not numbers", ["--truth", R + "/bad.yaml"], "is not a numeric .npy"),
          ("truth of another shape", ["--truth", R + "/truth_3.csv"],
           "holds 3 numbers of shape (3,); darcy takes 256 parameters of shape (16, 16)"),
          ("truth grf:x", ["--truth", "grf:x"], "grf:SEED takes a seed >= 0"),
          ("negative theta", ["--forward", "aristoff-bangerth", "--truth", "-1"],
           "parameters must be > 0"),
          ("unknown forward", ["--forward", "heat"], "unknown forward model 'heat'"),
          ("class not importable", ["--forward", "nosuchpackage.models:Heat"],
           "cannot import nosuchpackage.models (No module named 'nosuchpackage'); is it on "
           "PYTHONPATH or installed?"),
          ("--out a folder", ["--out", R + "/a_folder"], "a_folder is a folder; name a file"),
          ("--truth-out is --out", ["--truth-out", R + "/y.npy"], "is --out too"),
          ("--seed -1", ["--seed", "-1"], "--seed"),
      ]],
    ("h --resume --model vae on a GAN", ["train", "--run", R + "/gan", "--resume", "--model",
                                         "vae"], "model: 'gan' -> 'vae'"),
    # -- issue 18: a run prior on the Aristoff-Bangerth benchmark, and --residual -------------
    ("ab a digits run as the prior", ["invert", R + "/run", "--problem", "aristoff-bangerth",
                                      "--out", R + "/new_chain", "--quiet"],
     "trained on digits, not on aristoff-bangerth fields"),
    ("ab --prior run without a run", ["invert", "--problem", "aristoff-bangerth", "--prior",
                                      "run", "--out", R + "/new_chain"],
     "--prior run needs a run folder (autovae invert RUN ...); or use --prior benchmark"),
    ("ab --residual on its own prior", ["invert", "--problem", "aristoff-bangerth",
                                        "--residual", "8", "--out", R + "/new_chain"],
     "--residual adds a residual field to a run prior"),
    ("custom --residual", ["invert", "--problem", "custom", "--forward", "aristoff-bangerth",
                           "--data", R + "/bad.yaml", "--noise", "0.1", "--residual", "8",
                           "--out", R + "/new_chain"],
     "--residual applies to --problem darcy or aristoff-bangerth"),
    # -- issue 26: a setting the problem or the kernel does not read is refused, not ignored ---
    ("inv --grid on aristoff-bangerth", ["invert", "--problem", "aristoff-bangerth", "--grid",
                                         "8", "--out", R + "/new_chain"],
     "--grid applies to --problem darcy or custom, not to aristoff-bangerth"),
    ("inv --points on custom", ["invert", "--problem", "custom", "--forward",
                                "aristoff-bangerth", "--points", "16", "--out", R + "/new_chain"],
     "--points applies to --problem darcy, not to custom"),
    ("inv --truth-seed on aristoff-bangerth", ["invert", "--problem", "aristoff-bangerth",
                                               "--truth-seed", "3", "--out", R + "/new_chain"],
     "--truth-seed applies to --problem darcy, not to aristoff-bangerth"),
    ("inv --forward with darcy", ["invert", "--problem", "darcy", "--forward",
                                  "umbridge:http://127.0.0.1:9/m", "--out", R + "/new_chain"],
     "--forward applies to --problem custom, not to darcy (it has its own forward model"),
    ("inv --forward with aristoff-bangerth", ["invert", "--problem", "aristoff-bangerth",
                                              "--forward", "aristoff-bangerth", "--out",
                                              R + "/new_chain"],
     "--forward applies to --problem custom, not to aristoff-bangerth"),
    ("inv --device without a run", ["invert", "--prior", "kle", "--device", "cpu", "--out",
                                    R + "/new_chain"], "--device cpu is where the run is loaded"),
    ("inv --max-tree-depth on pcn", ["invert", "--kernel", "pcn", "--max-tree-depth", "5",
                                     "--out", R + "/new_chain"],
     "--max-tree-depth applies to --kernel nuts, not to pcn"),
    ("inv --precondition on the default kernel", ["invert", "--prior", "kle", "--grid", "4",
                                                  "--precondition", "none", "--out",
                                                  R + "/new_chain", "--quiet"],
     "--precondition applies to --kernel mala, not to pcn"),
    ("inv --adapt on nuts", ["invert", "--kernel", "nuts", "--adapt", "no", "--out",
                             R + "/new_chain"],
     "--adapt applies to --kernel pcn or rwm or mala, not to nuts"),
    ("inv --precondition unknown", ["invert", "--kernel", "mala", "--precondition", "gaus",
                                    "--out", R + "/new_chain"],
     "--precondition must be one of auto, gauss-newton, covariance, none, got 'gaus'"),
    ("inv --max-tree-depth 0", ["invert", "--kernel", "nuts", "--max-tree-depth", "0",
                                "--out", R + "/new_chain"],
     "--max-tree-depth must be an integer >= 1"),
    # issue 25: vector priors and delayed acceptance
    ("inv --prior-mean file of the wrong length", [*CUSTOM, "--prior", "gaussian",
                                                  "--prior-mean", R + "/mean3.txt"],
     "--prior-mean (file " + R + "/mean3.txt) holds 3 values; the forward model takes 64"),
    ("inv --prior-sd <= 0", [*CUSTOM, "--prior", "lognormal", "--prior-sd", "0"],
     "--prior-sd must be > 0 for every parameter"),
    ("inv --prior uniform reversed", [*CUSTOM, "--prior", "uniform", "--prior-low", "2",
                                      "--prior-high", "1"],
     "uniform prior bounds reversed or empty at parameter 0"),
    ("inv --prior uniform infinite", [*CUSTOM, "--prior", "uniform", "--prior-low", "-inf",
                                      "--prior-high", "1"], "--prior-low must be finite"),
    ("inv --prior uniform without bounds", [*CUSTOM, "--prior", "uniform"],
     "--prior uniform needs its bounds"),
    ("inv --prior-cov not positive definite", [*CUSTOM, "--prior", "gaussian", "--prior-cov",
                                               R + "/cov_not_pd.txt"],
     "--prior-cov is not positive definite"),
    ("inv --prior-mean with kle", [*CUSTOM, "--prior-mean", "1"],
     "--prior-mean sets a vector prior"),
    ("inv --prior-low on darcy", ["invert", "--prior-low", "0", "--out", R + "/new_chain"],
     "--prior-low applies to --problem custom"),
    ("inv cheap model of another size", ["invert", "--problem", "aristoff-bangerth",
                                         "--subchain", "2", "--coarse-forward", "darcy",
                                         "--out", R + "/new_chain"],
     "the cheap model darcy takes parameters of shape (16, 16)"),
    ("inv --coarse-forward without --subchain", ["invert", "--problem", "aristoff-bangerth",
                                                 "--coarse-forward", "aristoff-bangerth",
                                                 "--out", R + "/new_chain"],
     "give --subchain J"),
    ("inv delayed acceptance with nuts", ["invert", "--problem", "aristoff-bangerth",
                                          "--kernel", "nuts", "--subchain", "2",
                                          "--out", R + "/new_chain"],
     "delayed acceptance needs a Metropolis kernel"),
    ("inv --surrogate-draws too few", ["invert", "--problem", "aristoff-bangerth",
                                       "--subchain", "2", "--coarse-forward", "surrogate",
                                       "--surrogate-draws", "5", "--out", R + "/new_chain"],
     "--surrogate-draws must be an integer >= 20"),
    ("inv --surrogate-draws without the surrogate", ["invert", "--problem", "aristoff-bangerth",
                                                     "--subchain", "2", "--surrogate-draws",
                                                     "100", "--out", R + "/new_chain"],
     "--surrogate-draws sizes the surrogate cheap model"),
    # -- issue 28: the parameters of error_bars.png ---------------------------------------------
    ("inv --error-bars words", ["invert", "--prior", "kle", "--error-bars", "first,last",
                                "--out", R + "/new_chain"],
     "--error-bars must be comma-separated parameter indices >= 0 (e.g. 0,9,27), got "
     "'first,last'"),
    ("inv --error-bars beyond the parameters", ["invert", "--problem", "aristoff-bangerth",
                                                "--error-bars", "3,64", "--out",
                                                R + "/new_chain"],
     "--error-bars 3,64: index 64 is beyond this problem's 64 parameters (0..63)"),
    ("inv --kernel unknown", ["invert", "--kernel", "nut", "--out", R + "/new_chain"],
     "--kernel must be one of pcn, rwm, mala, nuts, chees, got 'nut'; did you mean 'nuts'?"),
    # -- issue 24: --jobs, --forward-timeout, serve-forward --workers ---------------------------
    ("jobs 0", ["invert", "--jobs", "0", "--out", R + "/inv"], "--jobs must be >= 1, got 0"),
    ("jobs negative", ["invert", "--jobs", "-3", "--out", R + "/inv"], "--jobs must be >= 1"),
    ("jobs a boolean", ["invert", "--jobs", "yes", "--out", R + "/inv"],
     "--jobs must be an integer, got 'yes'"),
    ("jobs too many", ["invert", "--jobs", "100000", "--out", R + "/inv"],
     "(at most 256 workers); give --jobs <= 256"),
    ("jobs beyond the cores, a built-in model", ["invert", "--problem", "aristoff-bangerth",
                                                  "--jobs", str((os.cpu_count() or 1) + 1),
                                                  "--out", R + "/inv"],
     "cores; give --jobs <="),
    ("forward-timeout 0", ["invert", "--forward-timeout", "0", "--out", R + "/inv"],
     "--forward-timeout must be a positive number of seconds"),
    ("forward-timeout nan", ["invert", "--forward-timeout", "nan", "--out", R + "/inv"],
     "--forward-timeout must be finite"),
    ("forward-timeout without UM-Bridge", ["invert", "--problem", "aristoff-bangerth",
                                           "--forward-timeout", "5", "--out", R + "/inv"],
     "--forward-timeout applies to a UM-Bridge model (--forward umbridge:URL, or "
     "--coarse-forward umbridge:URL with --subchain), not to aristoff-bangerth"),
    ("forward-timeout on a Python model", ["invert", "--problem", "custom", "--forward",
                                           "aristoff-bangerth", "--data", R + "/bad.yaml",
                                           "--noise", "0.1", "--forward-timeout", "5",
                                           "--out", R + "/inv"],
     "--forward-timeout applies to a UM-Bridge model (--forward umbridge:URL, or "
     "--coarse-forward umbridge:URL with --subchain), not to aristoff-bangerth"),
    ("serve-forward --workers 0", ["serve-forward", "darcy", "--workers", "0"],
     "--workers must be >= 1"),
    # -- issue 27: binarised evaluation, the known-belief control -----------------------------
    ("27 --test-binarize on real values", ["train", "--run", R + "/new", *TRAIN, "--data",
                                           R + "/wide.npy", "--test-binarize", "0"],
     "test_binarize: " + R + "/wide.npy's test set has values in"),
    ("27 evaluate --test-binarize -1", ["evaluate", R + "/run", "--test-binarize", "-1"],
     "--test-binarize"),
    ("27 control with an infinite-KL pair", ["train", "--run", R + "/new", *TRAIN, "--data",
                                             "control:cauchy/normal:2"],
     "control data 'cauchy/normal:2': pair cauchy/normal has KL = +inf"),
    ("27 Gaussian control, infinite-KL pair", ["train", "--run", R + "/new", *TRAIN, "--data",
                                               "control-gaussian:cauchy/normal:2"],
     "control data 'cauchy/normal:2': pair cauchy/normal has KL = +inf"),
    ("27 test subset of no count", ["train", "--run", R + "/new", *TRAIN, "--data",
                                    "test-subset:many:fashion-mnist"],
     "test-subset:many:fashion-mnist: give test-subset:N:NAME"),
    ("27 dequantised from the wrong levels", ["train", "--run", R + "/new", *TRAIN, "--data",
                                              "dequantized:256:digits"],
     "dequantized:256:digits: its values are not on the 256 levels 0, 1/255, ..., 1 (they "
     "are on 17 levels)"),
    ("27 binarised dequantised data", ["train", "--run", R + "/new", *TRAIN, "--data",
                                       "dequantized:17:digits", "--binarize", "dynamic"],
     "binarize / test_binarize on dequantized:17:digits"),
]


# -- issue 26: a user's forward model, memory bounds, --out, serve-forward, old probe items ------
M = "{models}"  # a folder on sys.path with the user's forward models below (not under root)
USER_MODELS = {
    "badinput_fwd.py": """
import numpy as np
import torch
from autovae.inverse import ForwardModel


class Toy(ForwardModel):
    name = "toy"
    param_shape, n_obs = (4, 4), 3

    def evaluate(self, p):
        return p.reshape(len(p), -1)[:, :3] ** 2


class RaisesInInit(Toy):
    def __init__(self):
        super().__init__()
        raise RuntimeError("license server unreachable")


class NoSuper(Toy):
    def __init__(self):
        self.mesh = 1


class RaisesInEvaluate(Toy):
    def evaluate(self, p):
        raise KeyError("mesh 7 missing")


class NaNOut(Toy):
    def evaluate(self, p):
        return torch.full((len(p), 3), float("nan"), dtype=p.dtype)


class Numpy(Toy):  # claims gradients, computes outside autograd
    def evaluate(self, p):
        return torch.from_numpy(np.asarray(p.detach()).reshape(len(p), -1)[:, :3] ** 2)


class WrongGradient(Toy):  # the value of x^2 + 3x, the gradient of x^2 + 5x
    def evaluate(self, p):
        x = p.reshape(len(p), -1)[:, :3]
        return x ** 2 + 3 * x.detach() + 5 * (x - x.detach())


class NegativeObservations(Toy):
    n_obs = -3


class BadShape(Toy):
    param_shape = (4, 0)


class Abstract(ForwardModel):
    name = "abstract"
    param_shape, n_obs = (4, 4), 3
""",
    "badinput_syntax.py": "def evaluate(:\n",
    "badinput_raises.py": "raise RuntimeError('this model needs a GPU')\n",
    "badinput_dependency.py": "import not_a_package_anywhere\n",
}
FWD = ["invert", "--problem", "custom", "--data", M + "/y3.npy", "--noise", "0.1", "--grid",
       "4", "--dim", "4", "--chains", "2", "--warmup", "5", "--draws", "5", "--quiet", "--out",
       R + "/new_chain", "--forward"]
CUSTOM = FWD[:-1]


@pytest.fixture(scope="module", autouse=True)
def user_models(tmp_path_factory):
    """The user's forward models (and a run whose config.yaml is a folder), on sys.path."""
    import sys

    import numpy as np

    folder = tmp_path_factory.mktemp("user_models")
    for name, text in USER_MODELS.items():
        (folder / name).write_text(text)
    np.save(folder / "y3.npy", np.ones(3))
    (folder / "cfg_folder" / "config.yaml").mkdir(parents=True)
    sys.path.insert(0, str(folder))
    _PLACES[M] = str(folder)
    yield folder
    sys.path.remove(str(folder))


_PLACES: dict[str, str] = {}
ISSUE_26 = [
    # 1: every failure of a user's Python forward model names it and its own message
    ("26.1 module syntax error", [*FWD, "badinput_syntax:Model"],
     "badinput_syntax has a syntax error at"),
    ("26.1 module raises on import", [*FWD, "badinput_raises:Model"],
     "importing badinput_raises failed: RuntimeError: this model needs a GPU"),
    ("26.1 module's import fails", [*FWD, "badinput_dependency:Model"],
     "cannot import badinput_dependency (No module named 'not_a_package_anywhere')"),
    ("26.1 no class name", [*FWD, "badinput_fwd:"], "give package.module:Class"),
    ("26.1 abstract class", [*FWD, "badinput_fwd:Abstract"], "Abstract does not define evaluate"),
    ("26.1 __init__ raises", [*FWD, "badinput_fwd:RaisesInInit"],
     "building RaisesInInit() failed: RuntimeError: license server unreachable"),
    ("26.1 no super().__init__()", [*FWD, "badinput_fwd:NoSuper"],
     "NoSuper.__init__ does not call super().__init__()"),
    ("26.1 n_obs -3", [*FWD, "badinput_fwd:NegativeObservations"],
     "NegativeObservations must set n_obs to a positive integer"),
    ("26.1 param_shape (4, 0)", [*FWD, "badinput_fwd:BadShape"],
     "BadShape must set param_shape to a tuple of positive integers"),
    ("26.1 evaluate raises", [*FWD, "badinput_fwd:RaisesInEvaluate"],
     "the forward model toy failed in evaluate: KeyError: 'mesh 7 missing'"),
    ("26.1 evaluate gives NaN", [*FWD, "badinput_fwd:NaNOut", "--kernel", "pcn"],
     "the forward model toy returned 3 NaN or infinite observations"),
    ("25.1 surrogate of a model that gives NaN", [*FWD, "badinput_fwd:NaNOut", "--kernel",
                                                  "rwm", "--subchain", "2", "--coarse-forward",
                                                  "surrogate", "--surrogate-draws", "40"],
     "the surrogate cheap model: only 0 of 40 prior draws gave finite fine outputs"),
    ("26.1 gradient outside autograd", [*FWD, "badinput_fwd:Numpy", "--kernel", "nuts"],
     "toy says it has gradients (gradient = True) but its output"),
    ("26.1 wrong gradient", [*FWD, "badinput_fwd:WrongGradient", "--kernel", "mala"],
     "toy's gradient disagrees with a finite difference"),
    # 2: sizes that scale memory, refused before allocating with the bytes; --out
    ("26.2 --chains 1e8", ["invert", "--prior", "kle", "--chains", "100000000", "--out",
                           R + "/new_chain"], "--chains 100000000"),
    ("26.2 --draws 1e9", ["invert", "--prior", "kle", "--draws", "1000000000", "--out",
                          R + "/new_chain"], "--draws 1000000000"),
    ("26.2 --points 1e10", ["invert", "--prior", "kle", "--points", "1e10", "--out",
                            R + "/new_chain"], "--points 1e10 (10,000,000,000 points)"),
    ("26.2 --points -5", ["invert", "--prior", "kle", "--points", "-5", "--out",
                          R + "/new_chain"], "--points -5 is neither"),
    ("26.2 --grid 1000", ["invert", "--prior", "kle", "--grid", "1000", "--out",
                          R + "/new_chain"], "--grid 1000: "),
    ("26.2 --truth-resolution 1e5", ["invert", "--prior", "kle", "--truth-resolution",
                                     "100000", "--out", R + "/new_chain"],
     "--truth-resolution 100000: "),
    ("26.2 --chains x --draws on a custom model", [*CUSTOM, "--chains", "50000", "--draws",
                                                   "10000000", "--forward", "badinput_fwd:Toy"],
     "GiB of memory (--chains 50000 x --draws 10000000"),
    ("26.2 --out a trained run", ["invert", "--prior", "kle", "--out", R + "/run"],
     "holds a trained run or a study (config.yaml)"),
    ("26.2 --out the prior's own run", ["invert", R + "/run", "--out", R + "/run"],
     "holds a trained run or a study"),
    ("26.2 --out a study", ["invert", "--prior", "kle", "--out", R + "/study"],
     "holds a trained run or a study (study.db)"),
    ("26.2 --out inside a chain folder", ["invert", "--prior", "kle", "--out",
                                          R + "/chain/blocks"],
     "lies inside the chain folder"),
    # 3: serve-forward's address, name and model
    ("26.3 --port 0", ["serve-forward", "darcy", "--port", "0"], "--port must be an integer in"),
    ("26.3 --port 70000", ["serve-forward", "darcy", "--port", "70000"], "got 70000"),
    ("26.3 --port -1", ["serve-forward", "darcy", "--port", "-1"], "got -1"),
    ("26.3 --host empty", ["serve-forward", "darcy", "--host", ""], "--host must be an address"),
    ("26.3 --host not this machine", ["serve-forward", "darcy", "--host", "192.0.2.1", "--port",
                                      "45999"], "the host is not an address of this machine"),
    ("26.3 --name with a slash", ["serve-forward", "darcy", "--name", "a/b"],
     "the model name 'a/b' cannot be the last part"),
    ("26.3 --name with a space", ["serve-forward", "darcy", "--name", "my model"],
     "the model name 'my model'"),
    ("26.3 a model with n_obs -3", ["serve-forward", "badinput_fwd:NegativeObservations"],
     "must set n_obs to a positive integer (the observations per parameter set), got -3"),
    ("26.3 a model that fails to build", ["serve-forward", "badinput_fwd:RaisesInInit"],
     "license server unreachable"),
    # 4: the previous probe's open items
    ("26.4 --latent-dim without --latent", ["train", "--run", R + "/new", "--latent-dim", "4"],
     "dim (latent_dim, --latent-dim) sets the total"),
    ("26.4 --fisher-estimator without --fisher-weight",
     ["train", "--run", R + "/new", *TRAIN, "--fisher-estimator", "score"],
     "fisher_estimator = 'score' has no effect"),
    ("26.4 --latent 1e10 dims", ["train", "--run", R + "/new", *TRAIN, "--latent",
                                 "normal/normal:10000000000"], "beyond any network"),
    ("26.4 sample: config.yaml a folder", ["sample", M + "/cfg_folder"],
     "config.yaml is a folder"),
    ("26.4 invert: config.yaml a folder", ["invert", M + "/cfg_folder", "--out",
                                           R + "/new_chain"], "config.yaml is a folder"),
    ("26.4 report: config.yaml a folder", ["report", M + "/cfg_folder"],
     "config.yaml is a folder"),
]
CLI_CASES += ISSUE_26


@pytest.mark.parametrize("argv, names", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input_and_keeps_earlier_results(world, capsys, argv, names):
    before = _snapshot(world)
    argv = [a.replace(R, str(world)).replace(M, _PLACES[M]) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert "Traceback" not in out + err
    assert names.replace(R, str(world)) in err, err
    assert err.strip().splitlines()[-1].startswith("autovae"), err
    assert _snapshot(world) == before  # no file written, changed or created


def test_alpha_minus_inf_as_help_writes_it(world, capsys):
    assert "Renyi order" in build_help("train")
    run = world / "vrmax"
    try:
        assert main(["train", "--run", str(run), *TRAIN, "--epochs", "1", "--alpha", "-inf",
                     "--samples", "2", "--no-evaluate"]) == 0
        assert load_config(run / "config.yaml").alpha == -math.inf
    finally:
        shutil.rmtree(run, ignore_errors=True)


def build_help(command: str) -> str:
    from autovae.cli import build_parser

    return build_parser().commands[command].format_help()


def test_partial_evaluation_is_written_beside_the_full_one(world, capsys):
    run = world / "partial"
    shutil.copytree(world / "run", run)
    try:
        full = (run / "metrics.json").read_bytes()
        assert main(["evaluate", str(run), "--test-limit", "5", "--nll-samples", "2",
                     "--quiet"]) == 0
        assert main(["evaluate", str(run), "--nll-samples", "2", "--quiet"]) == 0
        err = capsys.readouterr().err
        assert (run / "metrics.json").read_bytes() == full
        assert "partial evaluation (5 of" in err and "keeps the full one" in err
        import json

        five = json.loads((run / "metrics_partial_5images_K2.json").read_text())
        assert five["test_images"] == 5 and five["nll_samples"] == 2
        assert (run / "metrics_partial_300images_K2.json").is_file()
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_resume_of_a_run_killed_before_its_first_checkpoint(world, capsys):
    """A run killed after it recorded its settings but before its first checkpoint resumes
    from scratch with those settings; a folder with no run at all is refused (above)."""
    run = world / "never_checkpointed"
    run.mkdir()
    try:
        shutil.copy(world / "run" / "config.yaml", run / "config.yaml")
        assert main(["train", "--run", str(run), "--resume", "--epochs", "1",
                     "--no-evaluate", "--quiet"]) == 0
        assert (run / "checkpoint.pt").is_file()
        assert load_config(run / "config.yaml").hidden == 8
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_a_bool_flag_takes_yes_and_no(world, capsys):
    from autovae.cli import build_parser

    parser = build_parser()
    for words, value in ((["--spectral-norm", "no"], False), (["--spectral-norm=yes"], True),
                         (["--spectral-norm"], True), (["--no-spectral-norm"], False),
                         (["--amp", "false"], False)):
        args = parser.parse_args(["train", *words])
        assert getattr(args, words[0].lstrip("-").split("=")[0].replace("-", "_")
                       .removeprefix("no_")) is value, words


def test_read_only_places_are_refused_before_any_work(world, capsys, monkeypatch):
    """Running as root, os.access says yes to everything: the refusal is checked by denying
    writes under one folder, as a read-only mount would."""
    import os

    import autovae._checks as checks

    locked = world / "a_folder"
    real_access = os.access

    def access(path, mode):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(locked.resolve()):
            return False
        return real_access(path, mode)

    monkeypatch.setattr(checks.os, "access", access)
    before = _snapshot(world)
    for argv, names in ((["sample", str(world / "run"), "--out", str(locked / "s.png")],
                         "a_folder is not writable"),
                        (["train", "--run", str(locked / "run"), *TRAIN],
                         "a_folder is not writable"),
                        (["report", str(world / "run"), "--out", str(locked / "r.html")],
                         "a_folder is not writable")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert names in err and "Traceback" not in err, err
    assert _snapshot(world) == before


# -- the library: the same classes of mistakes, as ValueErrors naming the argument ----------
def _build(config):
    from autovae.models import build_model

    return build_model(config, (1, 28, 28))


def _train(config, folder):
    from autovae import train

    return train(config, folder)


def _tiny_model(name="vae"):
    from autovae.models import build_model

    extra = {"disc_hidden": 4} if name == "gan" else {}
    return build_model(Config(model=name, hidden=4, depth=1, latent="normal/normal:2", **extra),
                       (4,))


def _evaluate(model="vae", **options):
    from autovae import evaluate

    model = _tiny_model(model) if model in ("vae", "gan") else model
    return evaluate(model, torch.rand(3, 4), **options)


def _load_data(name):
    from autovae import load_data

    return load_data(name)


def _load_trained(folder):
    from autovae import load_trained

    return load_trained(folder)


def _poisoned():
    model = _tiny_model()
    with torch.no_grad():
        next(model.encoder.parameters()).fill_(math.nan)
    return model


def _inverse_config(**values):
    from autovae.inverse import InverseConfig

    return InverseConfig(**values)


def _check_jobs(jobs, processes=False):
    from autovae.inverse.parallel import check_jobs

    return check_jobs(jobs, processes)


def _chees(**options):
    from autovae.inverse.chees import ChEESKernel

    return ChEESKernel(**options)


def _check_timeout(value):
    from autovae.inverse.umbridge import check_timeout

    return check_timeout(value)


def _spec(objectives, model="vae"):
    from autovae.search import SearchSpace, StudySpec

    return StudySpec(SearchSpace(), Config(model=model), objectives, 2)


def _quality(images):
    from types import SimpleNamespace

    from autovae.evaluation import evaluate_quality

    data = SimpleNamespace(test=torch.rand(50, 4), name="toy", train_labels=None)
    return evaluate_quality(_tiny_model(), data, images=images)


def _nets(*args):
    from autovae.nets import build_networks

    return build_networks(*args)


def _disc(*args):
    from autovae.discriminators import build_discriminator

    return build_discriminator(*args)


def _code_disc(*args):
    from autovae.discriminators import CodeDiscriminator

    return CodeDiscriminator(*args)


def _lib_cases():
    from autovae.beliefs import LatentSpec, family, kl, likelihood
    from autovae.bounds import Bound, renyi_bound
    from autovae.control import generating_spec
    from autovae.data import dequantize
    from autovae.scoring import binarized_test_set
    from autovae.search import SearchSpace, open_storage
    from autovae.search.pairing_map import map_cells, run_map

    z23 = torch.zeros(2, 3)
    normal3 = family("normal", torch.zeros(3), 1.0)
    normal2 = family("normal", torch.zeros(2), 1.0)
    bern = likelihood("bernoulli", (4,))
    from autovae.inverse import InverseConfig, make_kernel

    return [
        ("InverseConfig unread problem setting", lambda: InverseConfig(
            problem="aristoff-bangerth", source=2.0), "--source applies to --problem darcy"),
        ("InverseConfig kernel option of another kernel", lambda: InverseConfig(
            kernel="rwm", kernel_options={"full_mass": True}), "--full-mass applies to --kernel "
         "nuts, not to rwm"),
        ("InverseConfig unknown kernel option", lambda: InverseConfig(
            kernel_options={"tree_depth": 3}), "did you mean 'max_tree_depth'?"),
        ("InverseConfig kernel_options not a mapping", lambda: InverseConfig(
            kernel_options=[1]), "kernel_options must be a mapping"),
        ("make_kernel option of another kernel", lambda: make_kernel("pcn", max_tree_depth=3),
         "kernel option 'max_tree_depth' does not apply to pcn; it is read by nuts"),
        ("renyi_bound K = 0", lambda: renyi_bound(torch.zeros(0, 3), 0.0), "K = 0"),
        ("renyi_bound 1-D", lambda: renyi_bound(torch.zeros(5), 0.0), "(K, *batch)"),
        ("renyi_bound list", lambda: renyi_bound([[0.0]], 0.0), "log_weights"),
        ("renyi_bound alpha NaN", lambda: renyi_bound(z23, math.nan), "alpha"),
        ("Bound samples 0", lambda: Bound(samples=0), "samples"),
        ("Bound beta -1", lambda: Bound(beta=-1.0), "beta"),
        ("estimate log_lik without K", lambda: Bound(0.0, 2).estimate(torch.zeros(3), z23, z23),
         "log_lik"),
        ("estimate log_p broadcast", lambda: Bound(0.0, 2).estimate(z23, torch.zeros(2, 1), z23),
         "log_p (2, 1)"),
        ("estimate K != samples", lambda: Bound(0.0, 5).estimate(z23, z23, z23), "samples=5"),
        ("estimate kl shape", lambda: Bound(1.0, 2).estimate(z23, z23, z23, kl=torch.zeros(2)),
         "kl"),
        ("kl unsupported torch", lambda: kl(normal3, torch.distributions.Beta(1.0, 1.0)),
         "Beta is not supported"),
        ("kl not a distribution", lambda: kl(3.0, normal3), "q (the posterior)"),
        ("kl shapes", lambda: kl(normal3, normal2), "batch shape (3,)"),
        ("family shapes", lambda: family("normal", torch.zeros(3), torch.ones(2)),
         "loc of shape (3,)"),
        ("family name", lambda: family("student", 0.0, 1.0), "student"),
        ("family scale 0", lambda: family("normal", 0.0, 0.0), "scale"),
        ("family loc inf", lambda: family("normal", math.inf, 1.0), "loc"),
        ("bernoulli x = 2", lambda: bern.log_prob(torch.full((1, 4), 2.0), torch.zeros(1, 4)),
         "[0, 1]"),
        ("continuous bernoulli x = 2", lambda: likelihood("cb", (4,)).log_prob(
            torch.full((1, 4), 2.0), torch.zeros(1, 4)), "[0, 1]"),
        ("likelihood NaN", lambda: likelihood("gaussian", (4,)).log_prob(
            torch.full((1, 4), math.nan), torch.zeros(1, 4)), "NaN"),
        ("likelihood batch shapes", lambda: bern.log_prob(torch.zeros(3, 4), torch.zeros(2, 4)),
         "x (3, 4) and out (2, 4)"),
        ("likelihood event shape", lambda: bern.log_prob(torch.zeros(3, 5), torch.zeros(3, 4)),
         "event_shape (4,)"),
        ("likelihood out shape", lambda: bern.log_prob(torch.zeros(3, 4), torch.zeros(3, 8)),
         "decoder output has shape (3, 8)"),
        ("likelihood event 0", lambda: likelihood("bernoulli", (0,)), "event_shape"),
        ("likelihood name", lambda: likelihood("poisson", 4), "poisson"),
        ("config latent_clip 0", lambda: Config(latent_clip=0), "latent_clip"),
        ("config clip_grad 0", lambda: Config().replace(clip_grad=0.0), "clip_grad"),
        ("config epochs -1", lambda: load_config(epochs=-1), "epochs"),
        ("config alpha NaN", lambda: Config(alpha=math.nan), "alpha"),
        ("config samples 1.5", lambda: Config(samples=1.5), "samples"),
        ("space hidden [0, 0]", lambda: SearchSpace.from_dict({"hidden": [0, 0]}), "hidden"),
        ("space beta [-1, 1]", lambda: SearchSpace.from_dict({"beta": [-1, 1]}), "beta"),
        ("space alpha [0, 1, 2]", lambda: SearchSpace.from_dict({"alpha": [0, 1, 2]}), "alpha"),
        ("space samples 1.5", lambda: SearchSpace.from_dict({"samples": [1.5, 2]}), "samples"),
        ("space pairs", lambda: SearchSpace.from_dict({"pairs": 3}), "pairs"),
        ("storage sqlite folder", lambda: open_storage("sqlite:////nonexistent/x.db", Path(".")),
         "/nonexistent does not exist"),
        # issue 20: the same classes from Python
        ("1 Config gan beta 4", lambda: Config(model="gan", beta=4), "beta = 4.0"),
        ("1 Config gan nll_samples", lambda: Config(model="gan", nll_samples=5), "no bound"),
        ("a Config code_disc_hidden 0", lambda: Config(model="ava3", code_disc_hidden=0),
         "code_disc_hidden"),
        ("a Config disc_depth -1", lambda: Config(model="gan", disc_depth=-1), "disc_depth"),
        ("a build_networks hidden -1", lambda: _nets("mlp", (4,), 4, 2, (4,), -1, 1), "hidden"),
        ("a conv discriminator -1", lambda: _disc("conv", (1, 8, 8), -1, 1), "disc_hidden"),
        ("a code discriminator 0", lambda: _code_disc(2, 0, 1), "disc_hidden"),
        ("a generate -1", lambda: _tiny_model().generate(-1), "n must be"),
        ("a gan generate 0", lambda: _tiny_model("gan").generate(0), "n must be"),
        ("b build_model hidden 1e8", lambda: _build(Config(hidden=10**8)), "hidden = 100000000"),
        ("d Config epochs True", lambda: Config(epochs=True), "epochs"),
        ("d Config seed -1", lambda: Config(seed=-1), "seed"),
        ("d Config seed 2**64", lambda: Config(seed=2**64), "seed"),
        ("f train(str config)", lambda: _train("epochs: 3", "x"), "config must be"),
        ("f train(run_folder=3)", lambda: _train(Config(), 3), "run_folder must be a path"),
        ("f load_data(array)", lambda: _load_data(torch.zeros(3).numpy()), "name must be"),
        ("f load_trained(3)", lambda: _load_trained(3), "run folder must be a path"),
        ("f Config data array", lambda: Config(data=torch.zeros(3)), "data must be text"),
        ("f Config model 3", lambda: Config(model=3), "model"),
        ("f evaluate nll_samples 0", lambda: _evaluate(nll_samples=0), "nll_samples"),
        ("f evaluate model str", lambda: _evaluate(model="runs/vae"), "model must be"),
        ("f evaluate gan nll_samples", lambda: _evaluate(model="gan", nll_samples=5),
         "nll_samples: model gan has no bound"),
        ("f Config changed", lambda: setattr(Config(), "epochs", 3), "config.replace(epochs"),
        ("g space fisher_weight [-1, 1]",
         lambda: SearchSpace.from_dict({"fisher_weight": [-1, 1]}), "fisher_weight"),
        ("g space alpha range on a GAN", lambda: _spec(["fid"], model="gan"),
         "search space against the base config: alpha = 0.0 does not apply to model gan"),
        ("g objective twice", lambda: _spec(["nll", "nll"]), "nll given twice"),
        ("h gaussian sigma 1e-30", lambda: likelihood("gaussian", (4,), sigma=1e-30), "sigma"),
        ("h quality images 5", lambda: _quality(5), "images=10 or more"),
        ("i evaluate, NaN weights", lambda: _evaluate(model=_poisoned()), "encoder output h"),
        ("i embed NaN images", lambda: _tiny_model().embed(torch.full((2, 4), math.nan)),
         "encoder output h holds 8 non-finite"),
        ("27 binarised test set of real values",
         lambda: binarized_test_set(torch.tensor([[-1.0, 2.0]]), 0, "fields"),
         "test_binarize: fields's test set has values in [-1, 2]"),
        ("27 control with an infinite-KL pair", lambda: generating_spec("cauchy/normal:2"),
         "pair cauchy/normal has KL = +inf"),
        ("27 a map with one seed", lambda: run_map(map_cells(["digits"], ["bernoulli"], [2]),
                                                   "unused", Config(), seeds=1),
         "at least 2 seeds per model, got 1: with one seed there is no spread"),
        ("27 a map cell of no likelihood", lambda: map_cells(["digits"], ["poisson"], [2]),
         "likelihoods: poisson not on the map"),
        ("27 dequantize values off the levels",
         lambda: dequantize(torch.tensor([0.3, 1.0]), 17, name="fields"),
         "fields: its values are not on the 17 levels"),
        ("i NaN encoder output", lambda: LatentSpec.parse("normal/normal:2").posterior(
            torch.tensor([[math.nan, 0.0, 0.0, 0.0]])), "encoder output h holds 1 non-finite"),
        # issue 24
        ("jobs True", lambda: _inverse_config(jobs=True), "--jobs must be an integer, got True"),
        ("jobs 0", lambda: _inverse_config(jobs=0), "--jobs must be >= 1"),
        ("jobs 10**6", lambda: _inverse_config(jobs=10**6), "at most 256"),
        ("jobs processes beyond the cores", lambda: _check_jobs(10**3 // 4, processes=True),
         "cores; give --jobs <="),
        ("jobs 2.5", lambda: _check_jobs(2.5), "--jobs must be a whole number"),
        ("chees jitter 2", lambda: _chees(jitter=2), "jitter must lie in [0, 1]"),
        ("chees max_leapfrog 0", lambda: _chees(max_leapfrog=0), "max_leapfrog"),
        ("chees target_accept 1", lambda: _chees(target_accept=1.0), "target_accept"),
        ("chees learning_rate -1", lambda: _chees(learning_rate=-1), "learning_rate"),
        ("forward timeout inf", lambda: _check_timeout(math.inf), "--forward-timeout"),
    ]


LIB_CASES = _lib_cases()


def _issue26_lib_cases():
    from autovae.beliefs import LatentSpec
    from autovae.inverse import Target, run_chains
    from autovae.inverse.forward_models import load_forward
    from autovae.inverse.umbridge import check_serve

    def chains(n):
        return run_chains(Target(lambda z: (z * z).sum(1), 2), "pcn", "never_made", chains=n,
                          draws=10**6)

    return [
        ("26 LatentSpec.parse 1e10 dims", lambda: LatentSpec.parse("normal/normal:10000000000"),
         "latent block 'normal/normal:10000000000': 10,000,000,000 dimensions"),
        ("26 LatentSpec.parse 1e12 percent dim",
         lambda: LatentSpec.parse("50% normal/normal, 50% cauchy/cauchy", 10**12),
         "latent_dim = 1000000000000"),
        ("26 LatentSpec.parse sizes != dim", lambda: LatentSpec.parse("normal/normal:20", 4),
         "give latent 'normal/normal:4'"),
        ("26 Config fisher_estimator, no weight", lambda: Config(fisher_estimator="score"),
         "fisher_estimator = 'score' has no effect"),
        ("26 run_chains 1e8 chains", lambda: chains(10**8), "--chains 100000000 x --draws"),
        ("26 load_forward syntax", lambda: load_forward("badinput_syntax:M"), "syntax error"),
        ("26 load_forward __init__", lambda: load_forward("badinput_fwd:RaisesInInit"),
         "license server unreachable"),
        ("26 load_forward options", lambda: load_forward("badinput_fwd:Toy", grid=3),
         "building Toy(grid=3) failed: TypeError"),
        ("26 evaluate raises", lambda: load_forward("badinput_fwd:RaisesInEvaluate")(
            torch.zeros(1, 4, 4)), "the forward model toy failed in evaluate"),
        ("26 check_serve port", lambda: check_serve("127.0.0.1", 0, "m"), "--port"),
        ("26 check_serve name", lambda: check_serve("127.0.0.1", 4242, "a?b"), "'a?b'"),
        ("26 check_serve host", lambda: check_serve("", 4242, "m"), "--host"),
    ]


LIB_CASES += _issue26_lib_cases()


@pytest.mark.parametrize("call, names", [c[1:] for c in LIB_CASES],
                         ids=[c[0] for c in LIB_CASES])
def test_library_refuses_bad_arguments_naming_them(call, names):
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert names in str(err.value), str(err.value)


def test_counts_and_domains_are_checked_once_by_class():
    from autovae._checks import DOMAINS, check

    assert check("n", 3.0, "count") == 3 and isinstance(check("n", 3.0, "count"), int)
    assert check("alpha", -math.inf, "real") == -math.inf
    for domain, bad in (("count", 0), ("count", True), ("count", 2.5), ("positive", 0.0),
                        ("positive", math.inf), ("nonnegative", -1e-9), ("finite", math.nan),
                        ("real", math.nan), ("index", -1), ("count", "3")):
        with pytest.raises(ValueError, match=re.escape(f"setting must be {DOMAINS[domain][2]}")):
            check("setting", bad, domain)


def test_log_prob_validation_can_be_switched_off_for_speed():
    from autovae.beliefs import likelihood
    from autovae.beliefs.likelihoods import Likelihood

    lik = likelihood("bernoulli", (4,))
    x, out = torch.full((1, 4), 2.0), torch.zeros(1, 4)
    lik.validate_args = False
    assert torch.isfinite(lik.log_prob(x, out)).all()
    Likelihood.set_default_validate_args(False)
    try:
        assert torch.isfinite(likelihood("bernoulli", (4,)).log_prob(x, out)).all()
    finally:
        Likelihood.set_default_validate_args(True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        likelihood("bernoulli", (4,)).log_prob(x, out)


# -- the AUTOVAE_* environment variables and storage URLs (issue 26): checked like flags --------
STUDY = ["worker", "--study", "autovae", "--dir", R + "/study"]
ENV_CASES = [
    # (id, environment, argv, what the one line must name)
    ("env pool not a number", {"AUTOVAE_DB_POOL": "x"}, STUDY, "AUTOVAE_DB_POOL='x'"),
    ("env pool negative", {"AUTOVAE_DB_POOL": "-1"}, STUDY, "AUTOVAE_DB_POOL='-1'"),
    ("env pool fraction", {"AUTOVAE_DB_POOL": "1.5"}, STUDY, "must be an integer in [0, 1000]"),
    ("env heartbeat text", {"AUTOVAE_HEARTBEAT_SECONDS": "abc"}, STUDY,
     "AUTOVAE_HEARTBEAT_SECONDS='abc': must be a number in [0.1, 86400] seconds"),
    ("env heartbeat zero", {"AUTOVAE_HEARTBEAT_SECONDS": "0"}, STUDY,
     "AUTOVAE_HEARTBEAT_SECONDS='0'"),
    ("env heartbeat inf", {"AUTOVAE_HEARTBEAT_SECONDS": "inf"}, STUDY,
     "AUTOVAE_HEARTBEAT_SECONDS='inf'"),
    ("env retry nan", {"AUTOVAE_DB_RETRY_SECONDS": "nan"}, STUDY,
     "AUTOVAE_DB_RETRY_SECONDS='nan'"),
    ("env retry negative", {"AUTOVAE_DB_RETRY_SECONDS": "-5"}, STUDY,
     "AUTOVAE_DB_RETRY_SECONDS='-5'"),
    ("env data a file", {"AUTOVAE_DATA": R + "/bad.yaml"},
     ["train", "--run", R + "/new_run", *TRAIN], "AUTOVAE_DATA="),
    ("env storage bad url", {"AUTOVAE_STORAGE": "bogus://x"}, STUDY,
     "'bogus://x' (from $AUTOVAE_STORAGE)"),
    ("storage mysql without its driver", {},
     [*STUDY, "--storage", "mysql://autovae:pw@dbhost/autovae"],
     "needs the mysql driver, which is not installed: pip install mysqlclient"),
    ("storage pymysql without its driver", {},
     [*STUDY, "--storage", "mysql+pymysql://autovae@dbhost/autovae"], "pip install PyMySQL"),
    ("env storage mysql without its driver", {"AUTOVAE_STORAGE": "mysql://u:secret@h/db"}, STUDY,
     "'mysql://u:***@h/db' (from $AUTOVAE_STORAGE) needs the mysql driver"),
    ("worker wait negative", {}, [*STUDY, "--wait", "-1"], "--wait"),
]


@pytest.mark.parametrize("env, argv, names", [c[1:] for c in ENV_CASES],
                         ids=[c[0] for c in ENV_CASES])
def test_environment_and_storage_are_checked_like_flags(world, capsys, monkeypatch, env, argv,
                                                        names):
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace(R, str(world)))
    test_cli_refuses_bad_input_and_keeps_earlier_results(world, capsys, argv, names)
    assert "secret" not in capsys.readouterr().err  # (a password is never shown)


def test_bad_environment_variables_do_not_break_imports(world):
    """Before: AUTOVAE_DB_POOL=x crashed 'import autovae.search' with a bare ValueError."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AUTOVAE_DB_POOL": "x", "AUTOVAE_HEARTBEAT_SECONDS": "abc",
           "AUTOVAE_DB_RETRY_SECONDS": "nan", "AUTOVAE_DATA": str(world / "bad.yaml"),
           "AUTOVAE_CACHE": str(world / "bad.yaml"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", "import autovae.cli, autovae.search, "
                           "autovae.search.study, autovae.search.synthetic, autovae.data, "
                           "autovae.quality"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and not done.stderr, done.stderr


def test_a_cache_that_is_a_file_is_named(world, monkeypatch):
    from autovae.quality import classifier_cache_dir

    monkeypatch.setenv("AUTOVAE_CACHE", str(world / "bad.yaml"))
    with pytest.raises(ValueError, match=r"AUTOVAE_CACHE=.*is not a folder"):
        classifier_cache_dir()


# -- issue 26: what is rightly accepted, policies, and refusals that need a live socket ---------
def test_serve_forward_refuses_a_port_in_use(capsys):
    import socket

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve-forward", "darcy", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use" in err
    assert "Traceback" not in err


def test_a_user_model_that_keeps_the_contract_samples_with_nuts(tmp_path, capsys):
    """The probe lets a model with true autograd gradients through (rightly accepted)."""
    import numpy as np

    np.save(tmp_path / "y.npy", np.ones(3))
    argv = [a.replace(M + "/y3.npy", str(tmp_path / "y.npy")).replace(R, str(tmp_path))
            for a in FWD]
    assert main([*argv, "badinput_fwd:Toy", "--kernel", "nuts"]) == 0
    assert (tmp_path / "new_chain" / "summary.json").is_file()


def test_the_start_point_message_names_real_options(tmp_path):
    import warnings

    from autovae.inverse import Target, run_chains

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_chains(Target(lambda z: z[:, 0] * math.nan, 2), "pcn", tmp_path / "c",
                       chains=2, warmup=2, draws=2)
    assert r.status == "diverged" and "another --seed" in r.reason
    assert "init=)" not in r.reason


def test_renyi_bound_nan_policy():
    """A NaN log-weight gives its data point a NaN bound and NaN weights, for every alpha; the
    other data points are unchanged (the training loop's non-finite policy then names it)."""
    from autovae.bounds import renyi_bound, renyi_weights

    lw = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    bad = lw.clone()
    bad[2, 1] = math.nan
    for alpha in (0.0, 0.5, 1.0, 2.0, -math.inf, math.inf):
        b, ref = renyi_bound(bad, alpha), renyi_bound(lw, alpha)
        assert math.isnan(b[1]) and torch.equal(b[[0, 2]], ref[[0, 2]]), alpha
        w = renyi_weights(bad, alpha)
        assert w[:, 1].isnan().all() and torch.equal(w[:, [0, 2]],
                                                     renyi_weights(lw, alpha)[:, [0, 2]])


def test_darcy_pressure_accepts_float32_by_solving_in_float64():
    from autovae.inverse.darcy import darcy_pressure

    pts = torch.rand(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lk = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = darcy_pressure(lk, pts)
    single = darcy_pressure(lk.float(), pts.float())
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), exact, rtol=1e-5, atol=1e-6)
