"""The training loop: one for every model.

``train(config, run_folder)`` builds the model ``config.model`` names and trains it into the run
folder (see :mod:`autovae.run`). The model owns its objective (its optimizers and the losses of a
step, :mod:`autovae.models.base`); the loop owns what must exist once:

* data order and every RNG, AMP with one gradient scaler, and for each yielded
  ``(optimizer, loss)``: the non-finite policy, ``zero_grad``, ``backward`` into that optimizer's
  parameters only, clipping and ``step``;
* validation, one metrics row per epoch, TensorBoard, progress bars and the ``on_epoch`` hook
  (the search's pruner);
* an atomic checkpoint after every epoch with the model, every optimizer's and the scaler's state,
  the RNG states and the epoch. ``resume=True`` continues an interrupted run to the parameters an
  uninterrupted run reaches (on CPU, where the kernels are deterministic). A run killed before
  its first checkpoint starts again from scratch with its recorded settings.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._checks import check_folder
from ._registry import model_key
from .beliefs import NonFiniteInputError
from .config import SETTINGS, Config, unknown
from .data import DataSplits, binarize, dequantize, requantize
from .models import Model, NonFiniteLossError, StepContext, build_model, evaluation_mode
from .run import Run, load_model_state, prepare, resolve_device

__all__ = ["NonFiniteLossError", "TrainResult", "resume_config", "train"]

# Changing these between an interrupted run and its resume does not change the run's result.
RESUMABLE_CHANGES = frozenset({"epochs", "device", "compile", "nll_samples", "data_root",
                               "download", "test_binarize"})


@dataclass
class TrainResult:
    model: Model
    data: DataSplits
    run: Run
    epochs_done: int


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


def resume_config(run: Run, overrides: dict) -> Config:
    """The config of the run in ``run`` with ``overrides`` on top, for ``--resume``: a change of
    a setting that would change the run's result (anything but :data:`RESUMABLE_CHANGES`) is
    refused by name before the changed config is checked as a whole (so ``--model vae`` on a
    GAN run says that the model differs, not that the GAN's discriminator width is foreign)."""
    saved = run.load_config()
    unknown(overrides)
    changed = []
    for key, value in overrides.items():
        if key in RESUMABLE_CHANGES or value is None:
            continue
        value = SETTINGS.coerce(key, model_key(value) if key == "model" else value)
        if value != getattr(saved, key):
            changed.append(f"{key}: {getattr(saved, key)!r} -> {value!r}")
    if changed:
        raise ValueError(f"{run.folder} holds a different run ({', '.join(changed)}); resume it "
                         "with its own settings, or train into another folder")
    return saved.replace(**overrides)


def _optimizer_states(checkpoint: dict, optimizers: dict) -> dict:
    """Each optimizer's saved state; a checkpoint of the single-optimizer trainer kept one
    ``optimizer``, which belongs to a model with one optimizer."""
    if "optimizers" in checkpoint:
        states = checkpoint["optimizers"]
    elif "optimizer" in checkpoint and len(optimizers) == 1:
        states = {next(iter(optimizers)): checkpoint["optimizer"]}
    else:
        states = {}
    missing = set(optimizers) - set(states)
    if missing:
        raise ValueError(f"the checkpoint has no state for optimizer(s) {sorted(missing)}; it was "
                         "written by another model; train into another folder")
    return states


def _load_checkpoint(run: Run, model: Model, optimizers: dict, scaler, data_gen) -> int:
    """Restore a checkpoint into the model, optimizers, scaler and RNGs; return its epoch."""
    checkpoint = run.load_checkpoint()
    load_model_state(model, checkpoint, run)
    for name, state in _optimizer_states(checkpoint, optimizers).items():
        optimizers[name].load_state_dict(state)
    scaler.load_state_dict(checkpoint["scaler"])
    _set_rng_state(checkpoint["rng"], data_gen)
    return int(checkpoint["epoch"])


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, clip: float | None):
    """zero_grad, backward into this optimizer's parameters only, clip, step."""
    params = [p for group in optimizer.param_groups for p in group["params"]
              if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward(inputs=params)
    if clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(optimizer)


def _nonfinite(model: Model, x, name: str, epoch: int, batch: int) -> str:
    problems = model.diagnose(x, name) or [f"the {name!r} loss is non-finite (try a smaller lr "
                                           "or set clip_grad)"]
    return (f"non-finite {name!r} loss at epoch {epoch + 1}, batch {batch + 1}: "
            + "; ".join(problems))


def train(config: Config, run_folder, *, resume: bool = False, data: DataSplits | None = None,
          progress: bool = True, on_epoch=None) -> TrainResult:
    """Train the model the config describes into ``run_folder``; see the module docstring.

    ``on_epoch(row, model)`` is called after each epoch's checkpoint with that epoch's metrics
    (the search reports them to Optuna and may raise to stop the run there).
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be an autovae.Config, got {type(config).__name__} "
                        f"{config!r:.60}; make one with Config(...) or load_config(path)")
    if not isinstance(run_folder, (str, os.PathLike)):
        raise TypeError(f"run_folder must be a path (str or pathlib.Path), got "
                        f"{type(run_folder).__name__} {run_folder!r:.60}")
    if data is not None and not isinstance(data, DataSplits):
        raise TypeError(f"data must be an autovae.data.DataSplits (from load_data) or None, got "
                        f"{type(data).__name__}")
    run = Run(check_folder(run_folder, "run folder"))
    if resume:
        if run.has_config() or run.has_checkpoint():
            _check_resume(run, config)
        resume = run.has_checkpoint()  # killed before its first checkpoint: start afresh
    elif run.has_checkpoint():
        raise ValueError(f"{run.folder} already holds a run; pass --resume to continue it, "
                         "or choose another --run folder")
    run.remove_stale_temp_files()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    data_gen = torch.Generator().manual_seed(config.seed + 1)
    data = (data if data is not None else prepare(config)).to(device)

    model = build_model(config, data.event_shape).to(device)
    if model.has_likelihood:
        model.likelihood.validate(data.train)
    optimizers = model.configure_optimizers(config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    start_epoch = _load_checkpoint(run, model, optimizers, scaler, data_gen) if resume else 0
    if start_epoch > config.epochs:  # config.yaml must keep agreeing with the checkpoint
        raise ValueError(f"{run.checkpoint_path} has already trained {start_epoch} epochs, more "
                         f"than epochs={config.epochs}; resume with --epochs {start_epoch} or "
                         "more (the run is left as it is)")
    if start_epoch == 0:
        run.folder.mkdir(parents=True, exist_ok=True)
    run.truncate_history(start_epoch)
    run.save_config(config)
    if config.compile:  # each network in place; the model's step code stays eager
        for module in model.children():
            module.compile()
    board = _tensorboard(run)

    n = data.train.shape[0]
    batches = math.ceil(n / config.batch_size)
    skipped = 0
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(n, generator=data_gen).to(device)
        ctx = StepContext(epoch, 0, batches)
        bar = tqdm(range(batches), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=None if progress else True, dynamic_ncols=True)
        for i in bar:
            x = data.train[order[i * config.batch_size:(i + 1) * config.batch_size]]
            if config.binarize == "dynamic":
                x = binarize(x, data_gen if device.type == "cpu" else None)
            if data.dequantized:  # fresh noise for every batch
                x = dequantize(requantize(x, data.dequantized), data.dequantized,
                               data_gen if device.type == "cpu" else None)
            ctx.batch, ctx.batch_size = i, x.shape[0]
            steps = model.training_step(x, ctx)
            stepped = False
            name = "model"
            while True:
                try:
                    with torch.autocast(device.type, enabled=use_amp):
                        item = next(steps, None)
                except NonFiniteInputError:  # a NaN or inf reached the latent math
                    item, value = (name, None), math.nan
                else:
                    if item is None:
                        ctx.commit()
                        break
                    name, loss = item
                    value = loss.item()
                if not math.isfinite(value):
                    steps.close()
                    ctx.discard()
                    message = _nonfinite(model, x, name, epoch, i)
                    if config.on_nonfinite == "stop":
                        kept = (f"The checkpoint of epoch {epoch} in {run.folder} is intact"
                                if epoch > 0 else "No epoch had finished, so no checkpoint "
                                "was written")
                        raise NonFiniteLossError(f"{message}. {kept}; or set on_nonfinite: "
                                                 "skip to skip such batches")
                    skipped += 1
                    tqdm.write(f"skipped: {message}")
                    break
                _step(loss, optimizers[name], scaler, config.clip_grad)
                stepped = True
                if progress:
                    bar.set_postfix({name: f"{value:.3f}"}, refresh=False)
            if stepped:
                scaler.update()
        seconds = time.perf_counter() - started
        val = {}
        if data.val.shape[0]:
            with evaluation_mode(model):
                try:
                    val = model.validation_metrics(data.val, config.batch_size)
                except NonFiniteInputError as err:  # the non-finite policy, as for a batch
                    message = f"validation after epoch {epoch + 1}: {err}"
                    if config.on_nonfinite == "stop":
                        kept = (f"The checkpoint of epoch {epoch} in {run.folder} is intact"
                                if epoch > 0 else "No epoch had finished, so no checkpoint "
                                "was written")
                        raise NonFiniteLossError(f"{message}. {kept}; try a smaller lr or set "
                                                 "clip_grad, or on_nonfinite: skip") from None
                    tqdm.write(f"skipped: {message}")
                    val = {k.removeprefix("val_"): math.nan for k in model.validation_keys}
        row = {"epoch": epoch + 1, **{k: v.item() / n for k, v in ctx.sums.items()},
               **{f"val_{k}": v for k, v in val.items()}, **ctx.last,
               "seconds": seconds, "images_per_second": n / seconds, "skipped_batches": skipped}
        run.append_history(row)
        if board is not None:
            for key, value in row.items():
                if key != "epoch":
                    board.add_scalar(key, value, epoch + 1)
            board.flush()
        run.save_checkpoint({"model": model.state_dict(), "model_name": model.name,
                             "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                             "scaler": scaler.state_dict(), "epoch": epoch + 1,
                             "rng": _rng_state(data_gen)})
        if on_epoch is not None:
            on_epoch(row, model)
        if progress:
            # the first training number and the model's own validation keys; the rest is in
            # metrics.jsonl and TensorBoard
            keys = [k for k in row if k.startswith("train_")][:1] + [
                k for k in model.validation_keys if k in row]
            shown = "  ".join(f"{k} {row[k]:.3f}" for k in keys)
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}  {shown}  ({seconds:.1f}s, "
                       f"{row['images_per_second']:.0f} img/s)")
    if board is not None:
        board.close()
    return TrainResult(model, data, run, max(start_epoch, config.epochs))
