"""The chain runner (one loop for every kernel), its folder and its result.

A chain folder (:class:`ChainFolder`, the one owner of this layout)::

    FOLDER/chain.json        settings, status ("running", "complete", "diverged") and reason
    FOLDER/state.pt          kernel state, RNG state, counters, list of blocks (atomic)
    FOLDER/blocks/*.pt       kept draws and per-draw statistics, one file per block (atomic)
    FOLDER/posterior.nc      ArviZ InferenceData (NetCDF), written when the run ends
    FOLDER/problem.json      the inverse problem's settings (``autovae invert``)
    FOLDER/summary.json      diagnostics, costs and errors (``autovae invert``)
    FOLDER/*.png             pictures (``autovae invert``): fields, traces, error bars and,
                             against a known truth, nominal against empirical coverage;
                             against a reference posterior, its error against solves spent

Resume: calling :func:`run_chains` again with the same settings continues from ``state.pt``,
bit-identically at any checkpoint, in warm-up as after it (every kernel here checkpoints its
adaptation state; one that declares ``checkpoint_in_warmup = False`` reruns its warm-up from
its seed instead, which reproduces the same draws).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_memory
from .._files import atomic_write
from .config import FIELDS
from .kernels import MCMCKernel, Target, make_kernel
from .limits import chain_bytes

__all__ = ["ChainFolder", "ChainResult", "load_chains", "run_chains"]


# -- folder -------------------------------------------------------------------------------------
class ChainFolder:
    """The files of one chain run (see the module docstring)."""

    PICTURES = ("fields.png", "traces.png", "error_bars.png", "calibration.png",
                "reference_error.png")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = self.path / "chain.json"
        self.state = self.path / "state.pt"
        self.blocks = self.path / "blocks"
        self.posterior = self.path / "posterior.nc"
        self.problem = self.path / "problem.json"
        self.summary = self.path / "summary.json"

    def __repr__(self) -> str:
        return f"ChainFolder({str(self.path)!r})"

    def is_chain(self) -> bool:
        """Whether the folder holds a chain run (finished or not)."""
        return self.meta.is_file() or self.summary.is_file()

    def check_writable(self) -> None:
        """Refuse, before any work, a path where the folder cannot be made or written."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise ValueError(f"the chain folder {p} is a file; give a folder path (--out)")
        held = [name for name in ("config.yaml", "checkpoint.pt", "study.db")
                if (p / name).exists()]
        if held:
            raise ValueError(f"the chain folder {p} holds a trained run or a study ({held[0]}); "
                             "chains go into a folder of their own: give another --out (with "
                             "a run, the default is a subfolder RUN/invert-KERNEL-SEED)")
        for parent in p.absolute().parents:
            if ChainFolder(parent).is_chain():
                raise ValueError(f"the chain folder {p} lies inside the chain folder {parent}; "
                                 "give an --out outside it")
        probe = p
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"cannot make the chain folder {p}: {probe} is a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write the chain folder {p}: {probe} is not writable; "
                             "give another --out")

    def read_json(self, path: Path) -> dict[str, Any]:
        from .._checks import syntax_error

        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise syntax_error(path, "JSON", err) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is unreadable ({err}): the chain in {self.path} cannot "
                             "be resumed; use another --out") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return data

    def write_json(self, path: Path, obj) -> None:
        text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))

    def save(self, path: Path, obj) -> None:
        atomic_write(path, lambda f: torch.save(obj, f))

    def load(self, path: Path):
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} is unreadable or cut ({type(err).__name__}): the chain "
                             f"in {self.path} cannot be resumed; use another --out") from None

    def open(self, settings: dict[str, Any], what: str = "chain") -> dict[str, Any]:
        """Create chain.json, or check that the folder holds the same settings."""
        if self.meta.is_file():
            meta = self.read_json(self.meta)
            same_settings(meta.get("settings", {}), settings, self.path, what)
            return meta
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"settings": settings, "status": "running", "reason": ""}
        self.write_json(self.meta, meta)
        return meta


def same_settings(old: dict[str, Any], new: dict[str, Any], folder: Path, what: str) -> None:
    """Refuse to continue a folder that holds a run with other settings, naming them."""
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        said = "; ".join(f"{k}: folder {_short(old.get(k))}, asked {_short(new.get(k))}"
                         for k in diff)
        raise ValueError(f"{folder} holds a {what} with other settings ({said}); ask for the "
                         "same settings to resume, or use another --out")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# -- result -------------------------------------------------------------------------------------
@dataclass
class ChainResult:
    """Draws and statistics of a chain folder.

    ``draws`` (chains, n, d): kept post-warm-up draws, n the count every chain reached;
    ``stats`` name -> (chains, n); ``warmup_draws`` / ``warmup_stats`` likewise for warm-up.
    ``acceptance`` (chains,): fraction of post-warm-up iterations that moved;
    ``mean_accept_prob``: mean min(1, ratio) (Metropolis kernels) or Pyro's running mean
    acceptance probability (NUTS). Costs: ``potential_evals`` (rows of phi evaluated),
    ``gradient_evals`` (of those, with a gradient) and ``solves`` (PDE solves, forward and
    adjoint counted), each over the whole run, warm-up included.
    """

    folder: Path
    kernel: str
    config: dict[str, Any]
    draws: np.ndarray
    stats: dict[str, np.ndarray]
    warmup_draws: np.ndarray
    warmup_stats: dict[str, np.ndarray]
    acceptance: np.ndarray
    mean_accept_prob: np.ndarray
    step_size: np.ndarray
    warmup_seconds: float
    sampling_seconds: float
    potential_evals: int
    gradient_evals: int
    solves: int
    status: str
    reason: str = ""

    @property
    def seconds(self) -> float:
        return self.warmup_seconds + self.sampling_seconds

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_inference_data(self):
        from .diagnostics import to_inference_data

        return to_inference_data(self)

    def summary(self) -> dict[str, Any]:
        from .diagnostics import summary

        return summary(self)


def load_chains(folder: str | Path) -> ChainResult:
    """Read a chain folder (finished, stopped or interrupted) into a :class:`ChainResult`."""
    cf = ChainFolder(folder)
    if not cf.meta.is_file() or not cf.state.is_file():
        raise ValueError(f"{cf.path} is not a chain folder (no chain.json/state.pt); run "
                         "run_chains(..., folder) or autovae invert first")
    meta = cf.read_json(cf.meta)
    settings = meta["settings"]
    state = cf.load(cf.state)
    chains, dim = settings["chains"], settings["dim"]
    per = {ph: [{"z": [], "stats": {}} for _ in range(chains)] for ph in ("warmup", "sample")}
    for name in state["blocks"]:
        block = cf.load(cf.blocks / name)
        rows = range(chains) if block["chain"] < 0 else [block["chain"]]
        for i, c in enumerate(rows):
            slot = per[block["phase"]][c]
            slot["z"].append(block["z"][i].numpy())
            for k, v in block["stats"].items():
                slot["stats"].setdefault(k, []).append(v[i].numpy())

    def assemble(phase):
        zs = [np.concatenate(s["z"]) if s["z"] else np.zeros((0, dim)) for s in per[phase]]
        n = min(len(z) for z in zs)
        draws = np.stack([z[:n] for z in zs])
        keys = sorted({k for s in per[phase] for k in s["stats"]})
        stats = {k: np.stack([np.concatenate(s["stats"][k])[:n] if k in s["stats"]
                              else np.zeros(0) for s in per[phase]]) for k in keys}
        return draws, stats

    draws, stats = assemble("sample")
    warmup_draws, warmup_stats = assemble("warmup")
    c = state["counters"]
    steps = np.maximum(c["post_steps"].numpy(), 1)
    kernel = settings["kernel"]["kernel"]
    mean_accept_prob = c["accept_prob_sum"].numpy() / steps
    if "mean_accept_prob" in c:  # NUTS: Pyro's own running mean
        mean_accept_prob = c["mean_accept_prob"].numpy()
    return ChainResult(
        folder=cf.path, kernel=kernel, config=settings,
        draws=draws, stats=stats, warmup_draws=warmup_draws, warmup_stats=warmup_stats,
        acceptance=c["accepted"].numpy() / steps, mean_accept_prob=mean_accept_prob,
        step_size=c["step_size"].numpy(), warmup_seconds=float(c["warmup_seconds"]),
        sampling_seconds=float(c["sampling_seconds"]), potential_evals=int(c["evals"]),
        gradient_evals=int(c["grad_evals"]), solves=int(c.get("solves", c["evals"])),
        status=meta["status"], reason=meta["reason"])


# -- runner -------------------------------------------------------------------------------------
def _fingerprint(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().to(torch.float64).numpy().tobytes()).hexdigest()[:16]


def _count(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


# the library's defaults are the command line's: one place, InverseConfig
_DEFAULTS = {name: FIELDS[name].default for name in ("chains", "warmup", "draws",
                                                     "checkpoint_every")}


def run_chains(target: Target, kernel, folder: str | Path, *, chains: int | None = None,
               warmup: int | None = None, draws: int | None = None, seed: int = 0,
               thin: int = 1, checkpoint_every: int | None = None,
               init: torch.Tensor | None = None, progress: bool = False,
               device: str | torch.device | None = None) -> ChainResult:
    """Run (or resume) ``chains`` chains of ``kernel`` on ``target`` into ``folder``.

    ``chains``, ``warmup``, ``draws`` and ``checkpoint_every`` default to ``autovae invert``'s
    (:class:`~autovae.inverse.config.InverseConfig`: 4, 1000, 2000 and 100).

    ``warmup`` adaptation iterations, then ``draws * thin`` iterations of which every
    ``thin``-th is kept. Every ``checkpoint_every`` iterations the kept draws and the full
    kernel state are written atomically; calling again with the same arguments resumes
    (``checkpoint_every`` may differ: it does not change the draws). ``init`` (chains, d): start
    points, else z0 ~ N(0, I) from ``seed``. A chain whose potential turns NaN, or a NUTS chain
    that diverges many iterations in a row, stops the run: status ``"diverged"`` with the
    reason; what was sampled is kept. ``progress``: a bar per chain on a terminal.
    ``device``: where the chains' tensors live (default the CPU): the start points, drawn on
    the CPU from ``seed`` (the same bits everywhere), are moved there, the kernel keeps its
    state there, and each iteration's draws and statistics come back to the CPU to be stored.
    """
    chains = _DEFAULTS["chains"] if chains is None else chains
    warmup = _DEFAULTS["warmup"] if warmup is None else warmup
    draws = _DEFAULTS["draws"] if draws is None else draws
    checkpoint_every = _DEFAULTS["checkpoint_every"] if checkpoint_every is None \
        else checkpoint_every
    kernel = make_kernel(kernel)
    chains, warmup = _count("chains", chains, 1), _count("warmup", warmup, 0)
    draws, thin = _count("draws", draws, 1), _count("thin", thin, 1)
    every = _count("checkpoint_every", checkpoint_every, 1)
    check_memory(chain_bytes(chains, draws, target.dim), "these chains")
    kernel.validate(target)
    if init is not None:
        init = torch.as_tensor(init, dtype=target.dtype)
        if init.shape != (chains, target.dim):
            raise ValueError(f"init must have shape (chains, dim) = ({chains}, {target.dim}), "
                             f"got {tuple(init.shape)}")
    cf = ChainFolder(folder)
    settings = {"kernel": kernel.config(), "chains": chains, "warmup": warmup, "draws": draws,
                "thin": thin, "seed": seed, "dim": target.dim, "init": _fingerprint(init)}
    meta = cf.open(settings)
    if meta["status"] != "running":
        return load_chains(cf.path)
    gen = torch.Generator().manual_seed(int(seed))
    z0 = init if init is not None else torch.randn(chains, target.dim, generator=gen,
                                                   dtype=target.dtype)
    if device is not None:
        z0 = z0.to(device)
    cf.blocks.mkdir(exist_ok=True)
    status, reason = _Runner(target, kernel, cf, chains, warmup, draws * thin, thin, every,
                             progress).run(gen, z0, seed)
    return _finish(cf, meta, status, reason)


def _counters(chains: int) -> dict[str, Any]:
    return {"accepted": torch.zeros(chains, dtype=torch.long),
            "post_steps": torch.zeros(chains, dtype=torch.long),
            "accept_prob_sum": torch.zeros(chains, dtype=torch.float64),
            "step_size": torch.zeros(chains, dtype=torch.float64),
            "divergences": torch.zeros(chains, dtype=torch.long),
            **_warmup_counters(chains),
            "evals": 0, "grad_evals": 0, "solves": 0,
            "warmup_seconds": 0.0, "sampling_seconds": 0.0}


def _warmup_counters(chains: int) -> dict[str, torch.Tensor]:
    """Warm-up acceptance, for the progress bars (absent from states saved before them)."""
    return {"warmup_accepted": torch.zeros(chains, dtype=torch.long),
            "warmup_accept_prob_sum": torch.zeros(chains, dtype=torch.float64)}


class _Runner:
    """The one loop: warm-up, sampling, thinning, blocks, checkpoints, costs, progress."""

    def __init__(self, target, kernel: MCMCKernel, cf: ChainFolder, chains, warmup, total,
                 thin, every, progress):
        self.target, self.kernel, self.cf = target, kernel, cf
        self.chains, self.warmup, self.total, self.thin, self.every = (chains, warmup, total,
                                                                       thin, every)
        self.progress = progress

    def _costs(self):
        t = self.target
        return t.evals, t.gradients, t.solves, time.perf_counter()

    def _account(self, c, start, phase):
        evals, grads, solves, t = self._costs()
        c["evals"] += evals - start[0]
        c["grad_evals"] += grads - start[1]
        c["solves"] += solves - start[2]
        c["warmup_seconds" if phase == "warmup" else "sampling_seconds"] += t - start[3]

    def run(self, gen, z0, seed) -> tuple[str, str]:
        k, cf = self.kernel, self.cf
        if cf.state.is_file():
            state = cf.load(cf.state)
            k.load_state_dict(state["kernel"])
            gen.set_state(state["rng"])
        else:
            start = self._costs()
            state = {"step": 0, "blocks": [], "counters": _counters(self.chains)}
            u0 = k.setup(self.target, z0, seed, self.warmup)
            if self.warmup == 0 and torch.isfinite(u0).all():
                k.end_warmup(self.target)
                state["warmup_ended"] = True
            self._account(state["counters"], start, "warmup")
            bad = ~torch.isfinite(u0)
            if bad.any():
                state.update(kernel=k.state_dict(), rng=gen.get_state())
                cf.save(cf.state, state)
                return "diverged", (f"the potential is not finite at the start point of chains "
                                    f"{bad.nonzero().flatten().tolist()} (the forward model or "
                                    "the prior fails there); draw other start points with "
                                    "another --seed, or give run_chains start points (init)")
        end_total = self.warmup + self.total
        c = state["counters"]
        for key, zero in _warmup_counters(self.chains).items():
            c.setdefault(key, zero)
        bars = self._bars(state["step"], end_total)
        pending: list[tuple[str, list, dict]] = []  # warm-up blocks of a kernel that cannot
        try:                                        # checkpoint there, written at its end
            while state["step"] < end_total:
                reason = self._block(state, gen, bars, pending)
                if state["step"] == self.warmup and self.warmup > 0 \
                        and state.get("warmup_ended") is None:
                    k.end_warmup(self.target)
                    state["warmup_ended"] = True
                    for phase, zs, recs in pending:
                        self._write_block(state, phase, zs, recs)
                    pending.clear()
                in_warmup = state["step"] < self.warmup
                if not in_warmup or k.checkpoint_in_warmup:
                    c["step_size"] = k.step_sizes()
                    if k.mean_accept_prob() is not None:
                        c["mean_accept_prob"] = k.mean_accept_prob()
                    state.update(kernel=k.state_dict(), rng=gen.get_state())
                    cf.save(cf.state, state)
                if reason:
                    return "diverged", reason
        finally:
            for bar in bars:
                bar.close()
        return "complete", ""

    def _block(self, state, gen, bars, pending) -> str:
        """Iterations up to the next checkpoint (or the end of warm-up); the stop reason."""
        k, c = self.kernel, state["counters"]
        first = state["step"]
        phase = "warmup" if first < self.warmup else "sample"
        last = min(first + self.every, self.warmup if phase == "warmup"
                   else self.warmup + self.total)
        zs, recs, reason = [], {}, ""
        start = self._costs()
        for s in range(first, last):
            # stored on the CPU, whatever device the chains run on
            out = {key: v.cpu() for key, v in k.sample(self.target, gen,
                                                       adapting=phase == "warmup").items()}
            done = s + 1 - (0 if phase == "warmup" else self.warmup)
            if phase == "warmup":
                c["warmup_accepted"] += out["accepted"].long()
                if "accept_prob" in out:
                    c["warmup_accept_prob_sum"] += out["accept_prob"].to(torch.float64)
            else:
                c["accepted"] += out["accepted"].long()
                if "accept_prob" in out:
                    c["accept_prob_sum"] += out["accept_prob"].to(torch.float64)
                c["post_steps"] += 1
                if "diverging" in out:
                    c["divergences"] += out["diverging"].long()
            stop = bool(out["nonfinite"].any())
            if done % self.thin == 0 or stop:
                zs.append(k.z.to("cpu", copy=True))
                for key, v in out.items():
                    if key != "nonfinite":
                        recs.setdefault(key, []).append(v.clone())
                # solves spent so far (all chains, warm-up included): error against cost
                spent = c["solves"] + self.target.solves - start[2]
                recs.setdefault("solves", []).append(
                    torch.full((self.chains,), float(spent), dtype=torch.float64))
            self._tick(bars, out, c, s + 1)
            if stop:
                bad = out["nonfinite"].nonzero().flatten().tolist()
                reason = (f"the potential was NaN (or -inf) at a proposal of chains {bad} at "
                          f"iteration {s + 1} ({phase}); the forward model failed there. The "
                          "draws up to that iteration are kept")
                last = s + 1
                break
            if phase == "sample" and k.stop_reason():
                reason = k.stop_reason()
                last = s + 1
                break
        self._account(c, start, phase)
        if zs:
            if phase == "warmup" and not k.checkpoint_in_warmup:
                pending.append((phase, zs, recs))
            else:
                self._write_block(state, phase, zs, recs)
        state["step"] = last
        return reason

    def _write_block(self, state, phase, zs, recs) -> None:
        name = f"{len(state['blocks']):06d}.pt"
        self.cf.save(self.cf.blocks / name, {
            "chain": -1, "phase": phase, "z": torch.stack(zs, 1),
            "stats": {key: torch.stack(v, 1) for key, v in recs.items()}})
        state["blocks"].append(name)

    def _bars(self, step, total):
        if not self.progress:
            return []
        from tqdm.auto import tqdm

        return [tqdm(total=total, initial=step, desc=f"chain {c} {self.kernel.name}",
                     position=c, leave=True, disable=None, unit="it", dynamic_ncols=True)
                for c in range(self.chains)]

    def _tick(self, bars, out, c, step) -> None:
        """The bars' figures, over the phase so far: the phase, the mean acceptance probability
        (the fraction of moves where a kernel gives none), the step size and, where the kernel
        reports them, the tree depth of this iteration and the divergences after warm-up."""
        if not bars:
            return
        warm = step <= self.warmup
        n = step if warm else step - self.warmup
        if "accept_prob" in out:
            name = "acc. prob"
            acc = c["warmup_accept_prob_sum" if warm else "accept_prob_sum"] / n
        else:
            name = "moved"
            acc = c["warmup_accepted" if warm else "accepted"].double() / n
        for i, bar in enumerate(bars):
            post = {"phase": "warm-up" if warm else "sampling", name: f"{float(acc[i]):.2f}",
                    "step": f"{float(out['step_size'][i]):.3g}"}
            if "tree_depth" in out:
                post["depth"] = int(out["tree_depth"][i])
            if "diverging" in out and not warm:
                post["div"] = int(c["divergences"][i])
            bar.set_postfix(post, refresh=False)
            bar.update(1)


def _finish(cf: ChainFolder, meta: dict[str, Any], status: str, reason: str) -> ChainResult:
    """Write posterior.nc, then mark chain.json finished (a kill in between leaves a run that
    resumes to the same end)."""
    from .diagnostics import save_netcdf

    result = load_chains(cf.path)
    result.status, result.reason = status, reason
    if result.draws.shape[1] > 0:
        save_netcdf(result.to_inference_data(), cf.posterior)
    cf.write_json(cf.meta, dict(meta, status=status, reason=reason))
    if status == "diverged":
        warnings.warn(f"chain run in {cf.path} stopped: {reason}", RuntimeWarning, stacklevel=3)
    return result
