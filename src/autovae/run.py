"""A run folder: the resolved config, the latest checkpoint, per-epoch metrics, evaluation.

    RUN/config.yaml      the resolved config (every key, defaults included)
    RUN/checkpoint.pt    model, optimizer, RNG states and epoch; written atomically each epoch
    RUN/metrics.jsonl    one JSON line per finished epoch
    RUN/metrics.json     the evaluation (``autovae evaluate``)

Checkpoints hold only tensors and plain containers and load with ``weights_only=True``: loading
one never executes pickled code.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Config

__all__ = ["Run", "atomic_write"]


def atomic_write(path: Path, write) -> Path:
    """Call ``write(file)`` on a new temp file beside ``path``, fsync it, then rename it over
    ``path``: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never clobbers; the umask sets the permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class Run:
    """The files of one training run."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.config_path = self.folder / "config.yaml"
        self.checkpoint_path = self.folder / "checkpoint.pt"
        self.history_path = self.folder / "metrics.jsonl"
        self.metrics_path = self.folder / "metrics.json"

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    # -- config ---------------------------------------------------------------------------------
    def has_config(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> Config:
        if not self.has_config():
            raise ValueError(f"{self.folder} is not a run folder (no config.yaml); train into it "
                             "first with 'autovae train --run FOLDER'")
        data = yaml.safe_load(self.config_path.read_text()) or {}
        return Config(**data)

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
                             f"({type(err).__name__}); delete it to retrain from scratch") from None

    # -- metrics --------------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.is_file():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line]

    def append_history(self, row: dict[str, Any]) -> None:
        with self.history_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_history(self, epochs: int) -> None:
        """Keep the lines of the first ``epochs`` epochs (a resumed run rewrites the rest)."""
        rows = [r for r in self.history() if r["epoch"] <= epochs]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.history_path, lambda f: f.write(text.encode()))

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        existing = json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}
        existing.update(metrics)
        text = json.dumps(existing, indent=2) + "\n"
        atomic_write(self.metrics_path, lambda f: f.write(text.encode()))
