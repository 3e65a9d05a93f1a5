"""Training: the loop, validation, checkpoints and exact resume.

``train(config, run_folder)`` trains a VAE and writes the run folder (see :mod:`autovae.run`).
A checkpoint is written atomically after every epoch with everything needed to continue exactly:
model, optimizer, gradient scaler, the global and data RNG states, and the epoch. ``resume=True``
continues an interrupted run to the same parameters an uninterrupted run reaches (on CPU, where
the kernels are deterministic).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import Config
from .data import DataSplits, binarize, load_data
from .evaluate import elbo_and_bound
from .model import VAE, NonFiniteLossError, build_model
from .run import Run

__all__ = ["NonFiniteLossError", "TrainResult", "load_trained", "prepare", "resolve_device",
           "train"]

# Changing these between an interrupted run and its resume does not change the run's result.
RESUMABLE_CHANGES = frozenset({"epochs", "device", "compile", "nll_samples", "data_root",
                               "download"})


@dataclass
class TrainResult:
    model: VAE
    data: DataSplits
    run: Run
    epochs_done: int


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
    """Load, binarize (static) and move the data the config names."""
    val_size = config.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)
    data = load_data(config.data, config.data_root, val_size=val_size, seed=config.seed,
                     limit=config.limit, download=config.download)
    if config.binarize == "static":
        g = torch.Generator().manual_seed(config.seed + 7)
        data = dataclasses.replace(data, train=binarize(data.train, g),
                                   val=binarize(data.val, g), test=binarize(data.test, g))
    return data.to(device)


def load_trained(folder, device: str | None = None) -> tuple[Run, Config, VAE, DataSplits]:
    """(run, config, model in eval mode, data) of an existing run folder, from its checkpoint."""
    run = Run(folder)
    config = run.load_config()
    device = resolve_device(device or config.device)
    checkpoint = run.load_checkpoint(map_location=device)
    data = prepare(config, device)
    model = build_model(config, data.event_shape).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return run, config, model, data


def _tensorboard(run: Run):
    """A TensorBoard writer in RUN/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run.folder / "tensorboard"))


def _rng_state(data_gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state(),
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_resume(run: Run, config: Config) -> None:
    saved = run.load_config()
    changed = [k for k, v in config.to_dict().items()
               if saved.to_dict()[k] != v and k not in RESUMABLE_CHANGES]
    if changed:
        diffs = ", ".join(f"{k}: {saved.to_dict()[k]!r} -> {getattr(config, k)!r}"
                          for k in changed)
        raise ValueError(f"{run.folder} holds a different run ({diffs}); resume it with its own "
                         f"config or train into another folder")


@torch.no_grad()
def validate(model: VAE, x: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean bound (the run's) and ELBO over x."""
    model.eval()
    totals = {"bound": 0.0, "elbo": 0.0}
    for start in range(0, x.shape[0], batch_size):
        elbo, bound = elbo_and_bound(model, x[start:start + batch_size])
        totals["bound"] += bound.sum().item()
        totals["elbo"] += elbo.value.sum().item()
    model.train()
    return {k: v / x.shape[0] for k, v in totals.items()}


def train(config: Config, run_folder, *, resume: bool = False, data: DataSplits | None = None,
          progress: bool = True, on_epoch=None) -> TrainResult:
    """Train the VAE the config describes into ``run_folder``; see the module docstring.

    ``on_epoch(row, model)`` is called after each epoch's checkpoint with that epoch's metrics
    (the search reports them to Optuna and may raise to stop the run there).
    """
    run = Run(run_folder)
    if resume:
        _check_resume(run, config)
        checkpoint = run.load_checkpoint()
    else:
        if run.has_checkpoint():
            raise ValueError(f"{run.folder} already holds a run; pass --resume to continue it, "
                             "or choose another --run folder")
        checkpoint = None
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    data_gen = torch.Generator().manual_seed(config.seed + 1)
    data = (data if data is not None else prepare(config)).to(device)

    model = build_model(config, data.event_shape).to(device)
    model.likelihood.validate(data.train)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"], data_gen)
        start_epoch = int(checkpoint["epoch"])
        run.truncate_history(start_epoch)
    else:
        run.folder.mkdir(parents=True, exist_ok=True)
        run.truncate_history(0)
    run.save_config(config)
    step = torch.compile(model.estimate) if config.compile else model.estimate
    board = _tensorboard(run)

    n = data.train.shape[0]
    batches = math.ceil(n / config.batch_size)
    skipped = 0
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(n, generator=data_gen).to(device)
        sums = {"bound": 0.0, "log_lik": 0.0, "kl": 0.0}
        bar = tqdm(range(batches), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=None if progress else True, dynamic_ncols=True)
        for i in bar:
            x = data.train[order[i * config.batch_size:(i + 1) * config.batch_size]]
            if config.binarize == "dynamic":
                x = binarize(x, data_gen if device.type == "cpu" else None)
            beta = config.beta
            if config.warmup_epochs > 0:
                beta *= min(1.0, (epoch + i / batches) / config.warmup_epochs)
            with torch.autocast(device.type, enabled=use_amp):
                est = step(x, beta=beta)
            loss = -est.surrogate.mean()
            if not torch.isfinite(loss):
                problems = model.diagnose(x) or ["the loss is non-finite"]
                message = (f"non-finite loss at epoch {epoch + 1}, batch {i + 1}: "
                           + "; ".join(problems))
                if config.on_nonfinite == "stop":
                    raise NonFiniteLossError(message + f". The checkpoint of epoch {epoch} in "
                                             f"{run.folder} is intact; or set on_nonfinite: skip")
                skipped += 1
                tqdm.write(f"skipped: {message}")
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            sums["bound"] += est.value.detach().sum().item()
            sums["log_lik"] += est.log_lik.detach().sum().item()
            sums["kl"] += est.kl.detach().sum().item()
            bar.set_postfix(bound=f"{est.value.detach().mean().item():.2f}")
        seconds = time.perf_counter() - started
        val = validate(model, data.val, config.batch_size) if data.val.shape[0] else {}
        row = {"epoch": epoch + 1, "train_bound": sums["bound"] / n,
               "train_log_lik": sums["log_lik"] / n, "train_kl": sums["kl"] / n,
               **{f"val_{k}": v for k, v in val.items()},
               "beta": beta, "seconds": seconds, "images_per_second": n / seconds,
               "skipped_batches": skipped}
        run.append_history(row)
        if board is not None:
            for key, value in row.items():
                if key != "epoch":
                    board.add_scalar(key, value, epoch + 1)
            board.flush()
        run.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict(), "epoch": epoch + 1,
                             "rng": _rng_state(data_gen)})
        if on_epoch is not None:
            on_epoch(row, model)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}  train {model.bound.name} "
                       f"{row['train_bound']:.3f}  val {val.get('bound', float('nan')):.3f}  "
                       f"({seconds:.1f}s, {row['images_per_second']:.0f} img/s)")
    if board is not None:
        board.close()
    return TrainResult(model, data, run, max(start_epoch, config.epochs))
