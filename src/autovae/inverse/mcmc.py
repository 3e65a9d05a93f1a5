"""Latent-space MCMC: targets, kernels and a resumable chain runner.

The split follows Pyro's ``MCMCKernel``: a *kernel* proposes, accepts and adapts its step; the
*runner* (:func:`run_chains`) owns the chains, thinning, timing and checkpoints.

* :class:`Target` -- the posterior exp(-phi(z)) p0(z) on z of shape (chains, d).
* :class:`PCNKernel` -- preconditioned Crank-Nicolson for a N(0, I) prior; accepts on phi alone.
* :class:`RWMKernel` -- random-walk Metropolis on the full potential U = phi - log p0.
* :class:`NUTSKernel` -- Pyro's NUTS on U (gradients by autograd); not re-implemented here.

pCN and RWM run all chains as one (chains, d) batch; each chain adapts its own step (log step,
Robbins-Monro toward a target acceptance, as ``pyro.infer.mcmc.RandomWalkKernel``) during
warm-up only, then the step is frozen. NUTS chains run one after the other in this process.

A chain folder::

    FOLDER/chain.json        settings, status ("running", "complete", "diverged") and reason
    FOLDER/state.pt          sampler state, RNG state, counters, list of blocks (atomic)
    FOLDER/blocks/*.pt       kept draws and per-draw statistics, one file per block (atomic)
    FOLDER/posterior.nc      ArviZ InferenceData (NetCDF), written when the run ends

Resume: calling :func:`run_chains` again with the same settings continues from ``state.pt``.
pCN and RWM resume bit-identically at any block boundary. NUTS resumes bit-identically after
warm-up (step size and mass matrix are frozen then and saved with the RNG state); an interrupted
warm-up restarts that chain's warm-up from its seed, which also reproduces the same draws.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..run import atomic_write

__all__ = [
    "ChainResult",
    "NUTSKernel",
    "PCNKernel",
    "RWMKernel",
    "Target",
    "load_chains",
    "make_kernel",
    "run_chains",
]


# -- target -------------------------------------------------------------------------------------
def _normal_log_prior(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(-1)


class Target:
    """A latent posterior exp(-phi(z)) p0(z).

    ``phi(z)``: misfit, z (C, d) -> (C,). ``prior``: ``"normal"`` (N(0, I), the one pCN needs)
    or a callable log density z (C, d) -> (C,) (constants may be dropped). ``evals`` counts the
    rows (forward solves) phi has been evaluated on.
    """

    def __init__(self, phi: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 prior: str | Callable[[torch.Tensor], torch.Tensor] = "normal",
                 dtype: torch.dtype = torch.float64):
        if not callable(phi):
            raise ValueError(f"phi must be a callable z (C, d) -> (C,), got {type(phi).__name__}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if prior == "normal":
            self._log_prior = _normal_log_prior
        elif callable(prior):
            self._log_prior = prior
        else:
            raise ValueError(f"prior must be 'normal' or a callable log density, got {prior!r}")
        self._phi = phi
        self.dim = int(dim)
        self.normal_prior = prior == "normal"
        self.dtype = dtype
        self.evals = 0

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Misfit, (C, d) -> (C,)."""
        out = self._phi(z)
        self.evals += z.shape[0]
        if out.shape != z.shape[:1]:
            raise ValueError(f"phi returned shape {tuple(out.shape)} for z of shape "
                             f"{tuple(z.shape)}; it must return one value per row, "
                             f"({z.shape[0]},)")
        return out

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """Latent log prior density (up to a constant), (C, d) -> (C,)."""
        return self._log_prior(z)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """U(z) = phi(z) - log p0(z), (C, d) -> (C,)."""
        return self.phi(z) - self.log_prior(z)


# -- Metropolis kernels -------------------------------------------------------------------------
class _MetropolisKernel(abc.ABC):
    """Shared Metropolis machinery; subclasses define the proposal and the energy."""

    name = "metropolis"

    def __init__(self, step_size: float, target_accept: float, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5):
        if not (0.0 < target_accept < 1.0):
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be positive and finite, got {step_size}")
        if not adapt_rate > 0:
            raise ValueError(f"adapt_rate must be positive, got {adapt_rate}")
        self.step_size = float(step_size)
        self.target_accept = float(target_accept)
        self.adapt = bool(adapt)
        self.shared_step = bool(shared_step)
        self.adapt_rate = float(adapt_rate)
        self.state: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """The settings that define the chain (stored in chain.json, compared on resume)."""
        return {"sampler": self.name, "step_size": self.step_size,
                "target_accept": self.target_accept, "adapt": self.adapt,
                "shared_step": self.shared_step, "adapt_rate": self.adapt_rate}

    # subclasses
    @abc.abstractmethod
    def _propose(self, z, step, gen):
        """A proposal for each chain of z (C, d), with step sizes ``step`` (C,)."""

    @abc.abstractmethod
    def _energy(self, phi, log_prior):
        """The part of the potential that the acceptance ratio compares."""

    def _max_log_step(self) -> float:
        return math.inf

    def setup(self, target: Target, z0: torch.Tensor) -> None:
        """Start from z0 (C, d)."""
        with torch.no_grad():
            phi = target.phi(z0)
            lp0 = target.log_prior(z0)
        log_step = min(math.log(self.step_size), self._max_log_step())
        self.state = {"z": z0.clone(), "phi": phi, "log_prior": lp0,
                      "log_step": torch.full((z0.shape[0],), log_step, dtype=z0.dtype),
                      "t": 0}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    @property
    def steps(self) -> torch.Tensor:
        """Current step per chain, (C,)."""
        return self.state["log_step"].exp()

    def sample(self, target: Target, gen: torch.Generator, adapting: bool) -> dict[str, Any]:
        """One step for every chain; returns per-chain ``accept_prob``, ``accepted``,
        ``nonfinite`` (a proposal's misfit was NaN or -inf: the chain cannot go on)."""
        s = self.state
        z, step = s["z"], s["log_step"].exp()
        z_new = self._propose(z, step.unsqueeze(-1), gen)
        u = torch.rand(z.shape[0], generator=gen, dtype=z.dtype)
        with torch.no_grad():
            phi_new = target.phi(z_new)
            lp0_new = target.log_prior(z_new)
        e_old = self._energy(s["phi"], s["log_prior"])
        e_new = self._energy(phi_new, lp0_new)
        bad = torch.isnan(e_new) | (e_new == -math.inf)
        delta = torch.where(bad, torch.full_like(e_new, math.inf), e_new - e_old)
        accept_prob = torch.exp(torch.clamp(-delta, max=0.0))
        accepted = u < accept_prob
        acc = accepted.unsqueeze(-1)
        s["z"] = torch.where(acc, z_new, z)
        s["phi"] = torch.where(accepted, phi_new, s["phi"])
        s["log_prior"] = torch.where(accepted, lp0_new, s["log_prior"])
        if adapting and self.adapt:
            gain = max(0.001, self.adapt_rate / math.sqrt(1 + s["t"]))
            err = accept_prob - self.target_accept
            if self.shared_step:
                err = err.mean().expand_as(err)
            s["log_step"] = torch.clamp(s["log_step"] + gain * err, max=self._max_log_step())
            s["t"] += 1
        return {"accept_prob": accept_prob, "accepted": accepted, "nonfinite": bad}


class PCNKernel(_MetropolisKernel):
    """Preconditioned Crank-Nicolson for a N(0, I) latent prior.

    z' = sqrt(1 - beta^2) z + beta xi, xi ~ N(0, I), accepted with min(1, exp(phi(z) - phi(z')))
    (the prior cancels). ``beta`` (in (0, 1]) is adapted on log beta toward ``target_accept``
    during warm-up, per chain unless ``shared_step`` (then by the chains' mean acceptance).
    """

    name = "pcn"

    def __init__(self, beta: float = 0.1, target_accept: float = 0.27, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5):
        if not 0 < beta <= 1:
            raise ValueError(f"pCN beta must lie in (0, 1], got {beta}")
        super().__init__(beta, target_accept, adapt, shared_step, adapt_rate)

    def setup(self, target: Target, z0: torch.Tensor) -> None:
        if not target.normal_prior:
            raise ValueError("pCN needs the N(0, I) latent prior (Target(prior='normal')); "
                             "use RWMKernel or NUTSKernel for another prior")
        super().setup(target, z0)

    def _propose(self, z, step, gen):
        xi = torch.randn(z.shape, generator=gen, dtype=z.dtype)
        return torch.sqrt(1 - step * step) * z + step * xi

    def _energy(self, phi, log_prior):
        return phi

    def _max_log_step(self) -> float:
        return 0.0


class RWMKernel(_MetropolisKernel):
    """Random-walk Metropolis z' = z + s xi on the full potential U = phi - log p0; the step s
    is adapted on log s toward ``target_accept`` during warm-up (0.234, Roberts et al.)."""

    name = "rwm"

    def __init__(self, step_size: float = 0.1, target_accept: float = 0.234, adapt: bool = True,
                 shared_step: bool = False, adapt_rate: float = 0.5):
        super().__init__(step_size, target_accept, adapt, shared_step, adapt_rate)

    def _propose(self, z, step, gen):
        return z + step * torch.randn(z.shape, generator=gen, dtype=z.dtype)

    def _energy(self, phi, log_prior):
        return phi - log_prior


class NUTSKernel:
    """Pyro's NUTS (``pyro.infer.mcmc.NUTS(potential_fn=...)``) on U(z), one chain at a time.

    Step size (dual averaging toward ``target_accept``) and a diagonal (or, with ``full_mass``,
    dense) mass matrix are adapted by Pyro during warm-up; give it 50 steps or more (with 20,
    Pyro's windowed schedule can end on a step size several times too large). A run stops as
    diverged after ``max_divergent_run`` post-warm-up iterations in a row diverge.
    """

    name = "nuts"

    def __init__(self, target_accept: float = 0.8, max_tree_depth: int = 10,
                 full_mass: bool = False, step_size: float = 1.0, max_divergent_run: int = 50):
        if not (0.0 < target_accept < 1.0):
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        self.target_accept = float(target_accept)
        self.max_tree_depth = int(max_tree_depth)
        self.full_mass = bool(full_mass)
        self.step_size = float(step_size)
        self.max_divergent_run = int(max_divergent_run)

    def config(self) -> dict[str, Any]:
        return {"sampler": self.name, "target_accept": self.target_accept,
                "max_tree_depth": self.max_tree_depth, "full_mass": self.full_mass,
                "step_size": self.step_size, "max_divergent_run": self.max_divergent_run}

    def pyro_kernel(self, potential_fn, step_size: float | None = None):
        """A fresh Pyro NUTS kernel; with ``step_size`` given, adaptation is off (post warm-up)."""
        from pyro.infer.mcmc import NUTS

        if step_size is None:
            return NUTS(potential_fn=potential_fn, step_size=self.step_size,
                        adapt_step_size=True, adapt_mass_matrix=True, full_mass=self.full_mass,
                        target_accept_prob=self.target_accept,
                        max_tree_depth=self.max_tree_depth)
        return NUTS(potential_fn=potential_fn, step_size=step_size, adapt_step_size=False,
                    adapt_mass_matrix=False, full_mass=self.full_mass,
                    max_tree_depth=self.max_tree_depth)


_KERNELS = {"pcn": PCNKernel, "rwm": RWMKernel, "nuts": NUTSKernel}


def make_kernel(sampler: str | Any, **options):
    """A kernel from its name (``"pcn"``, ``"rwm"``, ``"nuts"``) and options, or the kernel."""
    if isinstance(sampler, str):
        if sampler not in _KERNELS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(_KERNELS)}")
        return _KERNELS[sampler](**options)
    if options:
        raise ValueError("options go with a sampler name, not with a kernel instance")
    if not isinstance(sampler, (_MetropolisKernel, NUTSKernel)):
        raise ValueError(f"sampler must be a name or a kernel, got {type(sampler).__name__}")
    return sampler


# -- result -------------------------------------------------------------------------------------
@dataclass
class ChainResult:
    """Draws and statistics of a chain folder.

    ``draws`` (chains, n, d): kept post-warm-up draws, n the count every chain reached;
    ``stats`` name -> (chains, n); ``warmup_draws`` / ``warmup_stats`` likewise for warm-up;
    ``chain_draws``: each chain's post-warm-up draws in full (they differ in length only when a
    NUTS run stopped part-way). ``acceptance`` (chains,) is over all post-warm-up steps, kept or
    thinned away: the fraction of accepted proposals (pCN, RWM) or the mean acceptance
    probability of the trajectories (NUTS, the figure Pyro and Stan report);
    ``mean_accept_prob`` is the mean min(1, ratio) for every sampler. ``potential_evals`` counts
    forward solves (rows of phi), ``gradient_evals`` those that also took a gradient (NUTS).
    """

    folder: Path
    sampler: str
    config: dict[str, Any]
    draws: np.ndarray
    stats: dict[str, np.ndarray]
    warmup_draws: np.ndarray
    warmup_stats: dict[str, np.ndarray]
    chain_draws: list[np.ndarray]
    acceptance: np.ndarray
    mean_accept_prob: np.ndarray
    step_size: np.ndarray
    warmup_seconds: float
    sampling_seconds: float
    potential_evals: int
    gradient_evals: int
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


# -- folder -------------------------------------------------------------------------------------
def _save_pt(path: Path, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _load_pt(path: Path):
    return torch.load(path, weights_only=True)


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _fingerprint(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().to(torch.float64).numpy().tobytes()).hexdigest()[:16]


def _open_folder(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Create the folder's chain.json or check that it holds the same settings."""
    meta_path = folder / "chain.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        old = meta.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            said = ", ".join(f"{k}: folder {old.get(k)!r}, asked {settings.get(k)!r}"
                             for k in diff)
            raise ValueError(f"{folder} holds a chain run with other settings ({said}); resume "
                             "with the same settings or use a new folder")
        return meta
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"settings": settings, "status": "running", "reason": ""}
    _write_json(meta_path, meta)
    return meta


def _finish(folder: Path, meta: dict[str, Any], status: str, reason: str) -> ChainResult:
    """Write posterior.nc, then mark chain.json finished (a kill in between leaves a run that
    resumes to the same end)."""
    from .diagnostics import save_netcdf

    result = load_chains(folder)
    result.status, result.reason = status, reason
    if result.draws.shape[1] > 0:
        save_netcdf(result.to_inference_data(), folder / "posterior.nc")
    _write_json(folder / "chain.json", dict(meta, status=status, reason=reason))
    if status == "diverged":
        warnings.warn(f"chain run in {folder} stopped: {reason}", RuntimeWarning, stacklevel=3)
    return result


def load_chains(folder: str | Path) -> ChainResult:
    """Read a chain folder (finished, stopped or interrupted) into a :class:`ChainResult`."""
    folder = Path(folder)
    if not (folder / "chain.json").is_file() or not (folder / "state.pt").is_file():
        raise ValueError(f"{folder} is not a chain folder (no chain.json/state.pt); run "
                         "run_chains(..., folder) first")
    meta = json.loads((folder / "chain.json").read_text())
    settings = meta["settings"]
    state = _load_pt(folder / "state.pt")
    chains, dim = settings["chains"], settings["dim"]
    per = {ph: [{"z": [], "stats": {}} for _ in range(chains)] for ph in ("warmup", "sample")}
    for name in state["blocks"]:
        block = _load_pt(folder / "blocks" / name)
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
        return draws, stats, zs

    draws, stats, chain_draws = assemble("sample")
    warmup_draws, warmup_stats, _ = assemble("warmup")
    c = state["counters"]
    steps = np.maximum(c["post_steps"].numpy(), 1)
    mean_accept_prob = c["accept_prob_sum"].numpy() / steps
    accepted = c["accepted"].numpy() / steps
    return ChainResult(
        folder=folder, sampler=settings["sampler"]["sampler"], config=settings,
        draws=draws, stats=stats, warmup_draws=warmup_draws, warmup_stats=warmup_stats,
        chain_draws=chain_draws,
        acceptance=mean_accept_prob if settings["sampler"]["sampler"] == "nuts" else accepted,
        mean_accept_prob=mean_accept_prob,
        step_size=c["step_size"].numpy(), warmup_seconds=float(c["warmup_seconds"]),
        sampling_seconds=float(c["sampling_seconds"]), potential_evals=int(c["evals"]),
        gradient_evals=int(c["grad_evals"]), status=meta["status"], reason=meta["reason"])


# -- runner -------------------------------------------------------------------------------------
def run_chains(target: Target, sampler, folder: str | Path, chains: int = 4, warmup: int = 500,
               samples: int = 1000, seed: int = 0, thin: int = 1, checkpoint_every: int = 100,
               init: torch.Tensor | None = None) -> ChainResult:
    """Run (or resume) ``chains`` chains of ``sampler`` on ``target`` into ``folder``.

    ``warmup`` adaptation steps, then ``samples * thin`` steps of which every ``thin``-th is
    kept (``samples`` kept draws per chain). Every ``checkpoint_every`` steps the kept draws and
    the full sampler state are written atomically; calling again with the same arguments resumes
    (``checkpoint_every`` may differ: it does not change the draws). ``init`` (chains, d): start
    points, else z0 ~ N(0, I) from ``seed``. A chain whose misfit turns NaN (pCN/RWM) or that
    diverges many iterations in a row after warm-up (NUTS) stops the run: status
    ``"diverged"`` with the reason; what was sampled is kept.
    """
    kernel = make_kernel(sampler)
    for name, value, least in (("chains", chains, 1), ("warmup", warmup, 0),
                               ("samples", samples, 1), ("thin", thin, 1),
                               ("checkpoint_every", checkpoint_every, 1)):
        if int(value) != value or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if init is not None:
        init = torch.as_tensor(init, dtype=target.dtype)
        if init.shape != (chains, target.dim):
            raise ValueError(f"init must have shape (chains, dim) = ({chains}, {target.dim}), "
                             f"got {tuple(init.shape)}")
    folder = Path(folder)
    settings = {"sampler": kernel.config(), "chains": chains, "warmup": warmup,
                "samples": samples, "thin": thin, "seed": seed, "dim": target.dim,
                "init": _fingerprint(init)}
    meta = _open_folder(folder, settings)
    if meta["status"] != "running":
        return load_chains(folder)
    gen = torch.Generator().manual_seed(int(seed))
    z0 = init if init is not None else torch.randn(chains, target.dim, generator=gen,
                                                   dtype=target.dtype)
    (folder / "blocks").mkdir(exist_ok=True)
    run = _run_nuts if isinstance(kernel, NUTSKernel) else _run_metropolis
    status, reason = run(target, kernel, folder, chains, warmup, samples, thin,
                         checkpoint_every, gen, z0, seed)
    return _finish(folder, meta, status, reason)


def _counters(chains: int) -> dict[str, Any]:
    return {"accepted": torch.zeros(chains, dtype=torch.long),
            "post_steps": torch.zeros(chains, dtype=torch.long),
            "accept_prob_sum": torch.zeros(chains, dtype=torch.float64),
            "step_size": torch.zeros(chains, dtype=torch.float64),
            "evals": 0, "grad_evals": 0, "warmup_seconds": 0.0, "sampling_seconds": 0.0}


def _run_metropolis(target, kernel, folder, chains, warmup, samples, thin, every, gen, z0,
                    seed):
    state_path = folder / "state.pt"
    if state_path.is_file():
        state = _load_pt(state_path)
        kernel.load_state_dict(state["kernel"])
        gen.set_state(state["rng"])
    else:
        evals0 = target.evals
        kernel.setup(target, z0)
        state = {"step": 0, "blocks": [], "counters": _counters(chains)}
        state["counters"]["evals"] += target.evals - evals0
        bad = ~torch.isfinite(kernel.state["phi"])
        if bad.any():
            state["counters"]["step_size"] = kernel.steps
            state.update(kernel=kernel.state_dict(), rng=gen.get_state())
            _save_pt(state_path, state)
            return "diverged", (f"the misfit phi is not finite at the start point of chains "
                                f"{bad.nonzero().flatten().tolist()}; start elsewhere (init=)")
    total = warmup + samples * thin
    c = state["counters"]
    while state["step"] < total:
        start = state["step"]
        phase = "warmup" if start < warmup else "sample"
        end = min(start + every, warmup if phase == "warmup" else total)
        zs, recs = [], {"accept_prob": [], "accepted": [], "step_size": [], "phi": [], "lp": []}
        evals0, t0, reason = target.evals, time.perf_counter(), ""
        for s in range(start, end):
            out = kernel.sample(target, gen, adapting=phase == "warmup")
            if phase == "sample":
                c["accepted"] += out["accepted"].long()
                c["accept_prob_sum"] += out["accept_prob"].to(torch.float64)
                c["post_steps"] += 1
            done = s + 1 - (0 if phase == "warmup" else warmup)
            st = kernel.state
            if done % thin == 0 or out["nonfinite"].any():
                zs.append(st["z"].clone())
                recs["accept_prob"].append(out["accept_prob"])
                recs["accepted"].append(out["accepted"])
                recs["step_size"].append(st["log_step"].exp())
                recs["phi"].append(st["phi"])
                recs["lp"].append(st["log_prior"] - st["phi"])
            if out["nonfinite"].any():
                bad = out["nonfinite"].nonzero().flatten().tolist()
                reason = (f"the misfit phi was NaN (or -inf) at a proposal of chains {bad} at "
                          f"step {s + 1} ({phase}); the forward model failed there. The draws "
                          "up to that step are kept")
                end = s + 1
                break
        seconds = time.perf_counter() - t0
        c[f"{'warmup' if phase == 'warmup' else 'sampling'}_seconds"] += seconds
        c["evals"] += target.evals - evals0
        c["step_size"] = kernel.steps
        if zs:
            name = f"{len(state['blocks']):06d}.pt"
            _save_pt(folder / "blocks" / name, {
                "chain": -1, "phase": phase,
                "z": torch.stack(zs, 1), "stats": {k: torch.stack(v, 1) for k, v in recs.items()}})
            state["blocks"].append(name)
        state.update(step=end, kernel=kernel.state_dict(), rng=gen.get_state())
        _save_pt(folder / "state.pt", state)
        if reason:
            return "diverged", reason
    return "complete", ""


def _chain_seed(seed: int, chain: int) -> int:
    return int(np.random.SeedSequence([int(seed), chain]).generate_state(1)[0])


def _run_nuts(target, kernel, folder, chains, warmup, samples, thin, every, gen, z0, seed):
    """Chains one after the other; within a chain, warm-up in one piece, then blocks."""
    state_path = folder / "state.pt"
    if state_path.is_file():
        state = _load_pt(state_path)
    else:
        state = {"blocks": [], "counters": _counters(chains),
                 "nuts": [{"phase": "pending"} for _ in range(chains)]}
        _save_pt(state_path, state)
    c = state["counters"]
    calls = {"n": 0}

    def potential_fn(params):
        calls["n"] += 1
        return target.potential(params["z"].unsqueeze(0)).squeeze(0)

    def account(evals0, grads0, t0, phase):
        c["evals"] += target.evals - evals0
        c["grad_evals"] += calls["n"] - grads0
        c[f"{phase}_seconds"] += time.perf_counter() - t0

    total = samples * thin
    for ch in range(chains):
        cs = state["nuts"][ch]
        if cs["phase"] == "done":
            continue
        with torch.random.fork_rng(devices=[]):
            evals0, grads0, t0 = target.evals, calls["n"], time.perf_counter()
            if cs["phase"] == "pending":
                torch.manual_seed(_chain_seed(seed, ch))
                z = z0[ch].clone()
                with torch.no_grad():
                    u0 = target.potential(z.unsqueeze(0))[0]
                if not torch.isfinite(u0):
                    account(evals0, grads0, t0, "warmup")
                    _save_pt(state_path, state)
                    return "diverged", (f"the potential is not finite at the start point of "
                                        f"chain {ch}; start elsewhere (init=)")
                pk = kernel.pyro_kernel(potential_fn)
                params = {"z": z}
                pk.initial_params = params
                pk.setup(warmup)
                zs, recs = [], _nuts_recs()
                for i in range(warmup):
                    params, _, _ = _nuts_step(pk, params, calls, i + 1, thin, zs, recs)
                account(evals0, grads0, t0, "warmup")
                if zs:
                    _nuts_block(folder, state, ch, "warmup", zs, recs)
                cs = state["nuts"][ch] = {"phase": "sampling", "done": 0,
                                          **_nuts_freeze(pk, params)}
                _save_pt(state_path, state)
            else:  # resume after warm-up: frozen step size and mass matrix, saved RNG state
                pk = kernel.pyro_kernel(potential_fn, step_size=cs["step_size"])
                params = {"z": cs["z"].clone()}
                pk.initial_params = params
                pk.setup(0)
                pk.mass_matrix_adapter.inverse_mass_matrix = {("z",): cs["imm"]}
                torch.set_rng_state(cs["rng"])
                account(evals0, grads0, t0, "sampling")
            while cs["done"] < total:
                start, end = cs["done"], min(cs["done"] + every, total)
                zs, recs = [], _nuts_recs()
                evals0, grads0, t0 = target.evals, calls["n"], time.perf_counter()
                acc0, reason = pk._accept_cnt, ""
                for i in range(start, end):
                    params, diverging, a = _nuts_step(pk, params, calls, i + 1, thin, zs,
                                                      recs)
                    c["accept_prob_sum"][ch] += a
                    cs["div_run"] = cs.get("div_run", 0) + 1 if diverging else 0
                    if cs["div_run"] >= kernel.max_divergent_run:
                        end = i + 1
                        reason = (f"NUTS chain {ch}: {cs['div_run']} iterations in a row "
                                  f"diverged ({end} steps after warm-up, step size "
                                  f"{pk.step_size:.3g}); the potential is too stiff or not "
                                  "smooth here: try pCN, or a smaller target step")
                        break
                account(evals0, grads0, t0, "sampling")
                c["post_steps"][ch] += end - start
                c["accepted"][ch] += pk._accept_cnt - acc0
                c["step_size"][ch] = float(pk.step_size)
                if zs:
                    _nuts_block(folder, state, ch, "sample", zs, recs)
                cs.update(_nuts_freeze(pk, params), done=end,
                          phase="done" if end == total else "sampling")
                _save_pt(state_path, state)
                if reason:
                    return "diverged", reason
    return "complete", ""


def _nuts_recs() -> dict[str, list]:
    return {"accept_prob": [], "diverging": [], "n_steps": [], "tree_depth": [],
            "step_size": [], "lp": []}


def _nuts_step(pk, params, calls, done, thin, zs, recs):
    """One Pyro NUTS iteration and its statistics. The acceptance probability is recovered from
    Pyro's running mean ``_mean_accept_prob`` (n-th mean m_n: a_n = m_{n-1} + n (m_n - m_{n-1}))."""
    m_prev, div0, n0 = pk._mean_accept_prob, len(pk._divergences), calls["n"]
    params = pk.sample(params)
    diverging = len(pk._divergences) > div0
    n = pk._t - (pk._warmup_steps if pk._t > pk._warmup_steps else 0)
    accept_prob = min(max(m_prev + n * (pk._mean_accept_prob - m_prev), 0.0), 1.0)
    if done % thin == 0:
        n_steps = calls["n"] - n0
        zs.append(params["z"].detach().clone())
        recs["accept_prob"].append(accept_prob)
        recs["diverging"].append(diverging)
        recs["n_steps"].append(n_steps)
        recs["tree_depth"].append(math.ceil(math.log2(n_steps + 1)))
        recs["step_size"].append(float(pk.step_size))
        recs["lp"].append(-float(pk._potential_energy_last))
    return params, diverging, accept_prob


def _nuts_block(folder, state, ch, phase, zs, recs):
    name = f"c{ch:03d}-{len(state['blocks']):06d}.pt"
    dtypes = {"diverging": torch.bool, "n_steps": torch.long, "tree_depth": torch.long}
    _save_pt(folder / "blocks" / name, {
        "chain": ch, "phase": phase, "z": torch.stack(zs).unsqueeze(0),
        "stats": {k: torch.tensor(v, dtype=dtypes.get(k, torch.float64)).unsqueeze(0)
                  for k, v in recs.items()}})
    state["blocks"].append(name)


def _nuts_freeze(pk, params) -> dict[str, Any]:
    """What a post-warm-up NUTS chain needs to continue exactly."""
    return {"z": params["z"].detach().clone(), "step_size": float(pk.step_size),
            "imm": pk.inverse_mass_matrix[("z",)].detach().clone(),
            "rng": torch.get_rng_state()}
