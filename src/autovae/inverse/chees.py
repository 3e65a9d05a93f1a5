"""ChEES-HMC: all chains in lockstep, one batched gradient per leapfrog step.

Hoffman, Radul & Sountsov, "An adaptive-MCMC scheme for setting trajectory lengths in
Hamiltonian Monte Carlo", AISTATS 2021. Every chain runs the same number of leapfrog steps
L = ceil(h_t T / eps), so each step evaluates the potential and its gradient for the whole
(C, d) batch in one call: C forward and C adjoint solves of a PDE model, the batch that
``--jobs`` spreads over workers.

Warm-up adapts, from the population of chains (many chains, 16-128, make the estimates good):

* the step size eps by dual averaging (Hoffman & Gelman 2014: t0 = 10, gamma = 0.05,
  kappa = 0.75) toward a **harmonic-mean** acceptance across chains of ``target_accept``
  (0.651): the harmonic mean is small if any chain rejects, so no chain is left stuck;
* the trajectory length T by Adam (beta1 = 0, beta2 = 0.95, ``learning_rate``, each update
  of log T clipped to +-0.35) ascending the ChEES criterion E[(|q' - E q'|^2 - |q - E q|^2)^2]
  / 4 (the change in the chains' expected squared distance from their mean), whose gradient
  per chain is h T (|q'-q'bar|^2 - |q-qbar|^2) ((q'-q'bar) . M^-1 p'), in the coordinates
  whitened by the mass matrix, weighted by the chains' acceptance probabilities;
* a diagonal inverse mass matrix, the chains' variance pooled over the iterations of three
  windows (10-25%, 25-50%, 50-75% of warm-up), shrunk toward 1e-3 as Stan does; each new
  matrix restarts dual averaging from 10 times the current step and (``restart_length``) T
  from one step: T grown while the chains were still together (the criterion then rewards
  any lengthening) would stay, since the jittered criterion of a Gaussian has a local maximum
  every half period.

h_t in [1 - ``jitter``, 1) is the base-2 Halton (van der Corput) sequence of the iteration
number: jittered lengths without a random draw. After warm-up eps and T are frozen at their
averaged values (eps: the dual-averaging average; T: a moving average of log T with weight
t^-1/2) and the mass matrix is kept, so the chains are a fixed, exact HMC kernel.
A trajectory whose energy error exceeds 1000 or turns non-finite (the forward model failed
there) is divergent: that chain stops at its last finite point (it stays in the batch, so every
call is the whole population), and its proposal is rejected.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..settings import option
from .contract import MCMCKernel, Target, _check_step, _check_target_accept

__all__ = ["ChEESKernel", "halton"]

_DA_T0, _DA_GAMMA, _DA_KAPPA = 10.0, 0.05, 0.75
_ADAM_BETA2, _ADAM_EPS, _LOG_CLIP = 0.95, 1e-8, 0.35
_DIVERGENCE = 1000.0
_WINDOWS = (0.10, 0.25, 0.50, 0.75)  # mass-matrix windows, as fractions of warm-up


def halton(index: int) -> float:
    """The base-2 radical inverse of ``index`` >= 1: 1/2, 1/4, 3/4, 1/8, 5/8, ..."""
    out, f = 0.0, 0.5
    while index > 0:
        out += f * (index & 1)
        index >>= 1
        f *= 0.5
    return out


class ChEESKernel(MCMCKernel):
    """ChEES-HMC over all chains in lockstep (see the module docstring for the adaptation).

    ``step_size``: the initial step (None: found at the start points by doubling or halving
    until the harmonic-mean acceptance of one leapfrog step crosses 1/2);
    ``target_accept``: the harmonic-mean acceptance that dual averaging aims at;
    ``learning_rate``: Adam's rate on log T; ``jitter``: the fraction of T jittered;
    ``max_leapfrog``: the most leapfrog steps per iteration; ``adapt_mass``: a diagonal mass
    matrix from the chains' variance; ``max_divergent_run``: stop when one chain has that many
    divergent post-warm-up iterations in a row; ``restart_length``: restart T from one step
    with each new mass matrix.
    """

    name = "chees"
    needs_gradient = True
    options = {
        "learning_rate": option("ChEES: Adam's rate on the log trajectory length",
                                domain="positive"),
        "jitter": option("ChEES: the fraction of the trajectory length jittered (0 to 1)",
                         domain="nonnegative"),
        "max_leapfrog": option("ChEES: the most leapfrog steps in one iteration",
                               domain="count"),
        "adapt_mass": option("ChEES: adapt a diagonal mass matrix from the chains' variance"),
        "max_divergent_run": option("stop after this many divergent iterations in a row "
                                    "(nuts, chees)", domain="count"),
        "restart_length": option("ChEES: restart the trajectory length from one step at each "
                                 "new mass matrix"),
    }

    def __init__(self, step_size: float | None = None, target_accept: float = 0.651,
                 learning_rate: float = 0.05, jitter: float = 1.0, max_leapfrog: int = 256,
                 adapt_mass: bool = True, max_divergent_run: int = 50,
                 restart_length: bool = True):
        self.step_size = None if step_size is None else _check_step("step_size", step_size)
        self.target_accept = _check_target_accept(target_accept)
        self.learning_rate = _check_step("learning_rate", learning_rate, 1.0)
        if isinstance(jitter, bool) or not (isinstance(jitter, (int, float))
                                            and 0.0 <= jitter <= 1.0):
            raise ValueError(f"jitter must lie in [0, 1], got {jitter!r}")
        self.jitter = float(jitter)
        for name, value in (("max_leapfrog", max_leapfrog),
                            ("max_divergent_run", max_divergent_run)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.max_leapfrog = max_leapfrog
        self.adapt_mass = bool(adapt_mass)
        self.max_divergent_run = max_divergent_run
        self.restart_length = bool(restart_length)
        self.state: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {"kernel": self.name, "step_size": self.step_size,
                "target_accept": self.target_accept, "learning_rate": self.learning_rate,
                "jitter": self.jitter, "max_leapfrog": self.max_leapfrog,
                "adapt_mass": self.adapt_mass, "max_divergent_run": self.max_divergent_run,
                "restart_length": self.restart_length}

    # -- start ----------------------------------------------------------------------------------
    def setup(self, target: Target, z0: torch.Tensor, seed: int, warmup: int) -> torch.Tensor:
        c, d = z0.shape
        u, g = target.potential_and_grad(z0)
        like = {"dtype": z0.dtype, "device": z0.device}  # every tensor where the chains are
        s = self.state = {
            "z": z0.clone(), "u": u, "grad": g, "t": 0, "warmup": int(warmup),
            "inv_mass": torch.ones(d, **like),
            "log_T": 0.0, "log_T_avg": 0.0, "adam_v": 0.0, "adam_t": 0,
            "div_run": torch.zeros(c, dtype=torch.long, device=z0.device), "frozen": False,
            "w_n": 0, "w_mean": torch.zeros(d, **like), "w_m2": torch.zeros(d, **like)}
        if not torch.isfinite(u).all():
            s.update(log_step=0.0, log_step_avg=0.0, da_t=0, da_h=0.0, da_mu=0.0)
            return u
        eps = self.step_size
        if eps is None:
            eps = self._initial_step(target, torch.Generator().manual_seed(int(seed)))
        self._restart_dual_averaging(eps)
        s["log_T"] = s["log_T_avg"] = math.log(eps)
        return u

    def _initial_step(self, target: Target, gen: torch.Generator) -> float:
        """Double or halve eps until the harmonic-mean acceptance of one leapfrog step from the
        start points crosses 1/2 (Hoffman & Gelman's heuristic, over all chains at once)."""
        s, eps, direction = self.state, 1.0, 0
        p = _normal(s["z"], gen)
        for _ in range(30):
            _, _, _, _, alpha, diverging = self._leapfrog(target, p, eps, 1)
            up = _harmonic_mean(alpha, diverging) > 0.5
            if direction == 0:
                direction = 1 if up else -1
            elif (direction == 1) != up:
                return eps / 2.0 if direction == 1 else eps  # the largest that passed
            eps = eps * 2.0 if direction == 1 else eps / 2.0
        return eps

    def _restart_dual_averaging(self, eps: float) -> None:
        self.state.update(log_step=math.log(eps), log_step_avg=math.log(eps), da_t=0,
                          da_h=0.0, da_mu=math.log(10.0 * eps))

    # -- one iteration --------------------------------------------------------------------------
    def sample(self, target: Target, gen: torch.Generator, adapting: bool
               ) -> dict[str, torch.Tensor]:
        s = self.state
        s["t"] += 1
        eps = math.exp(s["log_step"])
        T = math.exp(s["log_T_avg"])
        h = halton(s["t"]) * self.jitter + (1.0 - self.jitter)
        steps = max(1, min(self.max_leapfrog, math.ceil(h * T / eps)))
        z = s["z"]
        p0 = _normal(z, gen) / s["inv_mass"].sqrt()
        uniform = torch.rand(z.shape[0], generator=gen, dtype=z.dtype).to(z.device)
        q, p, u, g, alpha, diverging = self._leapfrog(target, p0, eps, steps)
        accepted = uniform < alpha
        acc = accepted.unsqueeze(-1)
        if adapting:
            self._adapt(z, q, p, alpha, diverging, h, T)
        s["z"] = torch.where(acc, q, z)
        s["u"] = torch.where(accepted, u, s["u"])
        s["grad"] = torch.where(acc, g, s["grad"])
        if adapting:
            self._collect_variance()
        else:
            s["div_run"] = torch.where(diverging, s["div_run"] + 1, 0)
        c = z.shape[0]
        return {"accept_prob": alpha, "accepted": accepted, "diverging": diverging,
                "n_steps": torch.full((c,), steps, dtype=torch.long),
                "step_size": torch.full((c,), eps, dtype=torch.float64),
                "trajectory_length": torch.full((c,), T, dtype=torch.float64),
                "lp": -s["u"].to(torch.float64),
                "nonfinite": torch.zeros(c, dtype=torch.bool)}

    def _leapfrog(self, target, p0, eps, steps):
        s = self.state
        inv_m = s["inv_mass"]
        q, p, u, g = s["z"].clone(), p0.clone(), s["u"].clone(), s["grad"].clone()
        h0 = s["u"] + 0.5 * (p0 * p0 * inv_m).sum(-1)
        alive = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
        for _ in range(steps):
            if not alive.any():
                break
            # every row in every call (sbc's target pairs rows with truths by position); a
            # stopped chain stays at its last finite point
            pa = p - 0.5 * eps * g
            qa = torch.where(alive.unsqueeze(-1), q + eps * inv_m * pa, q)
            ua, ga = target.potential_and_grad(qa)
            pa = pa - 0.5 * eps * ga
            err = ua + 0.5 * (pa * pa * inv_m).sum(-1) - h0
            bad = ~torch.isfinite(err) | ~torch.isfinite(ga).all(-1) | (err > _DIVERGENCE)
            keep = alive & ~bad
            k = keep.unsqueeze(-1)
            q, p = torch.where(k, qa, q), torch.where(k, pa, p)
            u, g = torch.where(keep, ua, u), torch.where(k, ga, g)
            alive = keep
        h1 = u + 0.5 * (p * p * inv_m).sum(-1)
        log_ratio = torch.where(alive, h0 - h1, -math.inf)
        log_ratio = torch.where(torch.isnan(log_ratio), -math.inf, log_ratio)
        alpha = torch.exp(torch.clamp(log_ratio, max=0.0))
        return q, p, u, g, alpha, ~alive

    # -- adaptation -----------------------------------------------------------------------------
    def _adapt(self, z, q, p, alpha, diverging, h, T) -> None:
        s = self.state
        # step size: dual averaging on the harmonic-mean acceptance
        s["da_t"] += 1
        t = s["da_t"]
        eta = 1.0 / (t + _DA_T0)
        s["da_h"] = (1 - eta) * s["da_h"] + eta * (self.target_accept
                                             - _harmonic_mean(alpha, diverging))
        log_step = s["da_mu"] - math.sqrt(t) / _DA_GAMMA * s["da_h"]
        w = t ** -_DA_KAPPA
        s["log_step"] = log_step
        s["log_step_avg"] = w * log_step + (1 - w) * s["log_step_avg"]
        # trajectory length: Adam ascending the ChEES criterion, whitened by the mass matrix
        ok = ~diverging
        if ok.any():
            sd = s["inv_mass"].sqrt()
            weight = torch.where(ok, alpha, 0.0)
            q_ok = torch.where(ok.unsqueeze(-1), q, 0.0)
            q_mean = (weight.unsqueeze(-1) * q_ok).sum(0) / (weight.sum() + 1e-20) \
                if weight.sum() > 0 else q_ok[ok].mean(0)
            x1 = (q_ok - q_mean) / sd
            x0 = (z - z.mean(0)) / sd
            v = torch.where(ok.unsqueeze(-1), p, 0.0) * sd  # whitened velocity M^-1 p / sd
            per = h * T * ((x1 * x1).sum(-1) - (x0 * x0).sum(-1)) * (x1 * v).sum(-1)
            grad = float((weight * per).sum() / (weight.sum() + 1e-20))
            if math.isfinite(grad):
                s["adam_t"] += 1
                s["adam_v"] = _ADAM_BETA2 * s["adam_v"] + (1 - _ADAM_BETA2) * grad * grad
                v_hat = s["adam_v"] / (1 - _ADAM_BETA2 ** s["adam_t"])
                step = self.learning_rate * grad / (math.sqrt(v_hat) + _ADAM_EPS)
                s["log_T"] += max(-_LOG_CLIP, min(_LOG_CLIP, step))
        w_t = s["t"] ** -0.5
        s["log_T_avg"] = w_t * s["log_T"] + (1 - w_t) * s["log_T_avg"]
        # T within one step and max_leapfrog steps of the current step size
        lo, hi = s["log_step"], s["log_step"] + math.log(self.max_leapfrog)
        s["log_T"] = min(hi, max(lo, s["log_T"]))
        s["log_T_avg"] = min(hi, max(lo, s["log_T_avg"]))

    def _collect_variance(self) -> None:
        """Pool the chains' positions over the current window; at its end, set the mass."""
        s = self.state
        if not self.adapt_mass:
            return
        bounds = [round(f * s["warmup"]) for f in _WINDOWS]
        t = s["t"]
        if bounds[0] < t <= bounds[-1]:
            z = s["z"]  # Welford over chains x iterations, per coordinate
            n = s["w_n"] + z.shape[0]
            delta = z - s["w_mean"]
            mean = s["w_mean"] + delta.sum(0) / n
            s["w_m2"] = s["w_m2"] + (delta * (z - mean)).sum(0)
            s["w_mean"], s["w_n"] = mean, n
        if t in bounds[1:] and s["w_n"] > 2:
            n = s["w_n"]
            var = s["w_m2"] / (n - 1)
            s["inv_mass"] = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
            s.update(w_n=0, w_mean=torch.zeros_like(s["w_mean"]),
                     w_m2=torch.zeros_like(s["w_m2"]))
            self._restart_dual_averaging(math.exp(s["log_step"]))
            if self.restart_length:
                s["log_T"] = s["log_T_avg"] = s["log_step"]

    def end_warmup(self, target: Target) -> None:
        s = self.state
        s["log_step"] = s["log_step_avg"]
        lo, hi = s["log_step"], s["log_step"] + math.log(self.max_leapfrog)
        s["log_T_avg"] = min(hi, max(lo, s["log_T_avg"]))
        s["frozen"] = True

    # -- contract -------------------------------------------------------------------------------
    def stop_reason(self) -> str:
        run = self.state["div_run"]
        if len(run) and int(run.max()) >= self.max_divergent_run:
            c = int(run.argmax())
            return (f"ChEES chain {c}: {int(run[c])} iterations in a row diverged (step size "
                    f"{math.exp(self.state['log_step']):.3g}); the potential is too stiff or "
                    "not smooth here: try a higher --target-accept, or pcn")
        return ""

    def step_sizes(self) -> torch.Tensor:
        c = self.state["z"].shape[0]
        return torch.full((c,), math.exp(self.state["log_step"]), dtype=torch.float64)

    @property
    def z(self) -> torch.Tensor:
        return self.state["z"]

    @property
    def trajectory_length(self) -> float:
        """The trajectory length T (frozen after warm-up)."""
        return math.exp(self.state["log_T_avg"])

    @property
    def inverse_mass(self) -> torch.Tensor:
        """The diagonal inverse mass matrix (d,)."""
        return self.state["inv_mass"]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


def _normal(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """N(0, I) of z's shape and dtype on z's device, drawn from the chains' CPU generator (so
    the draws and a resumed run do not depend on the device's own random numbers)."""
    return torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)


def _harmonic_mean(alpha: torch.Tensor, diverging: torch.Tensor) -> float:
    """1 / mean(1 / alpha) over the chains that did not diverge (0 if every chain did, or if
    one's acceptance is 0)."""
    ok = alpha[~diverging]
    if len(ok) == 0 or (ok <= 0).any():
        return 0.0
    return float(1.0 / (1.0 / ok).mean())
