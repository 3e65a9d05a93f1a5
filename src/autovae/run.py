"""Run and study folders, and loading a trained run (without importing the trainer).

    RUN/config.yaml      the resolved config (every key, defaults included)
    RUN/checkpoint.pt    model, every optimizer's state, scaler, RNG states and epoch; written
                         atomically each epoch
    RUN/metrics.jsonl    one JSON line per finished epoch
    RUN/metrics.json     the evaluation (``autovae evaluate``)

    STUDY/study.db       the embedded SQLite store (unless another storage is given)
    STUDY/trials/NNNNN/  one run folder per trial
    STUDY/analysis.json  what ``autovae study`` found; STUDY/retrain/ the retrained runs

Checkpoints hold only tensors and plain containers and load with ``weights_only=True``: loading
one never executes pickled code. :func:`load_trained` gives the model of a run folder in
evaluation mode; the CLI, reports and latent-space MCMC use it, never :mod:`autovae.training`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from ._checks import check_folder, check_output_file, load_yaml, syntax_error
from ._files import atomic_write
from .config import Config, unknown
from .data import DataSplits, binarize, dequantized_levels, load_data
from .models import Model, build_model
from .scoring import binarized_test_set, describe_test_data

__all__ = ["Run", "StudyFolder", "load_trained", "prepare", "resolve_device", "test_data_label"]


class Run:
    """The files of one training run."""

    def __init__(self, folder: str | os.PathLike):
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"run folder must be a path (str or pathlib.Path), got "
                            f"{type(folder).__name__} {folder!r:.60}")
        self.folder = Path(folder)
        self.config_path = self.folder / "config.yaml"
        self.checkpoint_path = self.folder / "checkpoint.pt"
        self.history_path = self.folder / "metrics.jsonl"
        self.metrics_path = self.folder / "metrics.json"

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    def check_writable(self) -> None:
        """Refuse, before any work, a run folder that cannot hold the run's files: a file in its
        place or among its parents, a folder that cannot be written or made, a folder where
        config.yaml, checkpoint.pt, metrics.jsonl or metrics.json go, or one of those files
        read-only. Creates nothing."""
        check_folder(self.folder, "run folder")
        for path in (self.config_path, self.checkpoint_path, self.history_path,
                     self.metrics_path):
            check_output_file(path, "run file")

    # -- config ---------------------------------------------------------------------------------
    def has_config(self) -> bool:
        """Whether the folder holds a run's config.yaml (a folder in its place is refused)."""
        if self.config_path.is_dir():
            raise ValueError(f"{self.config_path} is a folder, where a run keeps its settings "
                             "file; this is not a run folder autovae wrote: give the run's "
                             "folder, or move that folder away")
        return self.config_path.is_file()

    def load_config(self) -> Config:
        if not self.has_config():
            raise ValueError(f"{self.folder} is not a run folder (no config.yaml); train into it "
                             "first with 'autovae train --run FOLDER'")
        try:
            data = load_yaml(self.config_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise syntax_error(self.config_path, "YAML", err) from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.config_path} must hold a mapping of settings")
        unknown(data)
        try:
            return Config(**data)
        except ValueError as err:
            raise ValueError(f"{self.config_path}: {err}") from None

    def save_config(self, config: Config) -> None:
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        atomic_write(self.config_path, lambda f: f.write(text.encode()))

    # -- checkpoint -----------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self, map_location="cpu") -> dict[str, Any]:
        if not self.has_checkpoint():
            raise ValueError(f"{self.folder} has no checkpoint to resume from; train without "
                             "--resume to start this run")
        try:
            return torch.load(self.checkpoint_path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated zip, bad pickle, foreign objects
            raise ValueError(f"checkpoint {self.checkpoint_path} is corrupt or truncated "
                             f"({type(err).__name__}); it is left as it is: train into another "
                             "--run folder to start afresh") from None

    # -- metrics --------------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.is_file():
            return []
        text = self.history_path.read_text()
        lines = text.splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines) and not text.endswith("\n"):
                    break  # a line cut by a kill mid-write: its epoch never checkpointed
                err.lineno = number
                raise syntax_error(self.history_path, "JSON", err) from None
        return rows

    def append_history(self, row: dict[str, Any]) -> None:
        with self.history_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_history(self, epochs: int) -> None:
        """Keep the lines of the first ``epochs`` epochs (a resumed run rewrites the rest)."""
        rows = [r for r in self.history() if r["epoch"] <= epochs]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.history_path, lambda f: f.write(text.encode()))

    def metrics(self) -> dict[str, Any]:
        """The evaluation so far (``metrics.json``), empty if there is none."""
        if not self.metrics_path.is_file():
            return {}
        try:
            return json.loads(self.metrics_path.read_text())
        except json.JSONDecodeError as err:
            raise syntax_error(self.metrics_path, "JSON", err) from None

    def save_metrics(self, metrics: dict[str, Any], path: Path | None = None) -> None:
        """Merge ``metrics`` into ``metrics.json`` (or into ``path``, for a partial one)."""
        path = self.metrics_path if path is None else Path(path)
        existing = self.metrics() if path == self.metrics_path else {}
        existing.update(metrics)
        text = json.dumps(existing, indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))

    def partial_metrics_path(self, images: int, nll_samples: int) -> Path:
        """Where an evaluation on ``images`` test images with K = ``nll_samples`` is written
        when it is not the run's full evaluation (``metrics.json`` is never replaced by one)."""
        return self.folder / f"metrics_partial_{images}images_K{nll_samples}.json"

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files that a killed writer left (``.NAME.PID.ID.tmp``); the process
        that trains a run owns its folder, so none of them is in use."""
        stale = [p for p in self.folder.glob(".*.tmp") if p.is_file()] if self.folder.is_dir() \
            else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale


class StudyFolder:
    """The files of one study (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.db_path = self.folder / "study.db"
        self.trials_dir = self.folder / "trials"
        self.analysis_path = self.folder / "analysis.json"
        self.retrain_dir = self.folder / "retrain"
        self.retrain_path = self.folder / "retrain.json"

    def __repr__(self) -> str:
        return f"StudyFolder({str(self.folder)!r})"

    def trial(self, number: int) -> Path:
        """The run folder of trial ``number``."""
        return self.trials_dir / f"{number:05d}"

    def trial_runs(self) -> list[Run]:
        """Every trial run folder that holds a checkpoint, in trial order."""
        if not self.trials_dir.is_dir():
            return []
        return [Run(p) for p in sorted(self.trials_dir.iterdir()) if Run(p).has_checkpoint()]


# -- loading a trained run --------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """A torch device from 'cpu', 'cuda', 'cuda:N' or 'auto', with a clear error if absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; "
                         "use --device cpu")
    return device


def prepare(config: Config, device: torch.device | str = "cpu") -> DataSplits:
    """Load, binarize (static) and move the data the config names; with ``test_binarize`` the
    test set is the fixed binarisation of its grey levels (:mod:`autovae.scoring`)."""
    val_size = config.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)
    data = load_data(config.data, config.data_root, val_size=val_size, seed=config.seed,
                     limit=config.limit, download=config.download)
    if data.dequantized and (config.binarize != "none" or config.test_binarize is not None):
        raise ValueError(f"binarize / test_binarize on {data.name}: dequantised values are for "
                         "a density likelihood (continuous-bernoulli, gaussian); to binarise, "
                         "use the quantised data (drop the dequantized:L: prefix)")
    fixed_test = (None if config.test_binarize is None
                  else binarized_test_set(data.test, config.test_binarize, data.name))
    if config.binarize == "static":
        g = torch.Generator().manual_seed(config.seed + 7)
        data = dataclasses.replace(data, train=binarize(data.train, g),
                                   val=binarize(data.val, g), test=binarize(data.test, g))
    if fixed_test is not None:
        data = dataclasses.replace(data, test=fixed_test)
    return data.to(device)


def test_data_label(config: Config, x: torch.Tensor) -> str:
    """What the test NLL of a run with ``config`` is measured on (see :mod:`autovae.scoring`):
    the fixed binarisation, the run's static one, or the data as loaded."""
    static = config.seed + 7 if config.binarize == "static" else None
    return describe_test_data(x, config.test_binarize, static, dequantized_levels(config.data))


def load_trained(folder, device: str | None = None) -> tuple[Run, Config, Model, DataSplits]:
    """(run, config, model in eval mode, data) of an existing run folder, from its checkpoint."""
    run = Run(folder)
    config = run.load_config()
    device = resolve_device(device or config.device)
    checkpoint = run.load_checkpoint(map_location=device)
    data = prepare(config, device)
    model = build_model(config, data.event_shape).to(device)
    load_model_state(model, checkpoint, run)
    model.eval()
    return run, config, model, data


def load_model_state(model: Model, checkpoint: dict[str, Any], run: Run) -> None:
    """Load the checkpoint's weights into ``model``, refusing a checkpoint of another model or
    of other settings with a message that says what differs."""
    saved = checkpoint.get("model_name", "vae")  # checkpoints before the models registry: VAEs
    if saved != model.name:
        raise ValueError(f"{run.checkpoint_path} holds a {saved!r} model, but the config asks for "
                         f"{model.name!r}; train the {model.name!r} into another folder")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:  # size mismatch, missing or unexpected keys
        reason = str(err).strip().splitlines()
        detail = reason[1].strip() if len(reason) > 1 else reason[0]
        raise ValueError(f"{run.checkpoint_path} does not fit the network that "
                         f"{run.config_path} describes ({detail}); was config.yaml edited? "
                         "Restore its settings or train a new run") from None
