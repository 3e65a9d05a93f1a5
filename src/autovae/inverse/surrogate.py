"""A surrogate cheap model for delayed acceptance (``--coarse-forward surrogate``): learnt from
the fine model's outputs at ``draws`` prior draws.

Inputs are the parameters (their logs for a model of positive parameters) in whitened
coordinates: centred and rotated onto the training draws' principal axes, each scaled to unit
variance (for a Gaussian or log-normal prior these are the prior's own N(0, I) coordinates).
Outputs are standardised per observation. Three models are fitted on 80% of the draws and the
one with the smallest root-mean-square error on the other 20% is kept: linear and quadratic
(ridge least squares; quadratic only where its features are fewer than half the training
draws) and a small torch MLP (two hidden layers of 128 SiLU units, Adam). All three are torch
expressions of the parameters, so gradient subchains (``--kernel mala``) differentiate them.

The training draws' fine solves are fine solves (``surrogate_training_solves`` in
summary.json, added to ``fine_solves``). The fitted model is saved as ``surrogate.pt`` in the
chain folder and read back on resume, so a resumed run does not retrain. The fine posterior
does not depend on the surrogate's accuracy (the two-level ratio corrects it); a poor one
only costs acceptance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .forward import ForwardModel
from .problem import InverseProblem

__all__ = ["MIN_DRAWS", "SurrogateForward", "surrogate_forward"]

MIN_DRAWS = 20  # below this a held-out error (20% of the draws) means nothing
KINDS = ("linear", "quadratic", "mlp")


def _quadratic(x: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu_indices(x.shape[1], x.shape[1])
    return torch.cat([x, x[:, i] * x[:, j]], 1)


class _Ridge(torch.nn.Module):
    def __init__(self, quadratic: bool, n_in: int = 1, n_out: int = 1):
        super().__init__()
        self.quadratic = quadratic
        n_feat = n_in + (n_in * (n_in + 1) // 2 if quadratic else 0)
        self.register_buffer("W", torch.zeros(n_feat + 1, n_out, dtype=torch.float64))

    def features(self, x):
        f = _quadratic(x) if self.quadratic else x
        return torch.cat([f, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    def fit(self, x, y, ridge: float = 1e-6):
        f = self.features(x)
        a = f.T @ f
        a = a + ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype)
        self.W = torch.linalg.solve(a, f.T @ y)
        return self

    def forward(self, x):
        return self.features(x) @ self.W


def _mlp(n_in: int, n_out: int, width: int = 128) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.SiLU(),
                               torch.nn.Linear(width, width), torch.nn.SiLU(),
                               torch.nn.Linear(width, n_out)).double()


def _fit_mlp(x, y, seed: int, steps: int = 1500) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2 ** 31, (1,), generator=gen)))
        net = _mlp(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    batch = min(len(x), 256)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(len(x), (batch,), generator=gen)
            loss = ((net(x[idx]) - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net


class SurrogateForward(ForwardModel):
    """The cheap model: whitened parameters -> a fitted model -> observations. Build it with
    :func:`surrogate_forward`; ``state`` is what ``surrogate.pt`` holds."""

    name = "surrogate"
    adjoint_solves = 0  # an evaluation is one cheap solve; autograd costs no PDE solve

    def __init__(self, fine: ForwardModel, state: dict[str, Any]):
        super().__init__()
        self.param_shape, self.n_obs = tuple(fine.param_shape), int(fine.n_obs)
        self.positive = bool(getattr(fine, "positive", False))
        self.state = state
        n_in, n_out = state["axes"].shape[1], self.n_obs
        kind = state["kind"]
        self.net = _mlp(n_in, n_out) if kind == "mlp" else _Ridge(kind == "quadratic",
                                                                   n_in, n_out)
        self.net.load_state_dict(state["net"])
        self.net.requires_grad_(False)

    def whiten(self, params: torch.Tensor) -> torch.Tensor:
        x = params.reshape(len(params), -1).to(torch.float64)
        if self.positive:
            x = torch.log(x)
        s = self.state
        return (x - s["x_mean"]) @ s["axes"]

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        s = self.state
        return self.net(self.whiten(params)) * s["y_sd"] + s["y_mean"]

    def describe(self) -> dict[str, Any]:
        s = self.state
        return {"forward": self.name, "param_shape": list(self.param_shape),
                "n_obs": self.n_obs, "surrogate_draws": s["draws"],
                "surrogate_seed": s["seed"]}

    def report(self) -> dict[str, Any]:
        """What summary.json says of it: the kind kept, each kind's held-out RMSE, the
        training draws' fine solves."""
        s = self.state
        return {"surrogate_kind": s["kind"], "surrogate_heldout_rmse": s["heldout_rmse"],
                "surrogate_training_solves": s["training_solves"]}


def _train(problem: InverseProblem, draws: int, seed: int) -> dict[str, Any]:
    fine = problem.forward
    solves0 = fine.solves
    z = problem.prior.sample(draws, seed)
    outs, params = [], []
    with torch.no_grad():
        for i in range(0, draws, 256):
            p = problem.params(z[i:i + 256])
            params.append(p.reshape(len(p), -1))
            outs.append(problem.predict(z[i:i + 256]))
    x, y = torch.cat(params).to(torch.float64), torch.cat(outs)
    positive = bool(getattr(fine, "positive", False))
    if positive:
        x = torch.log(x.clamp(min=1e-300))
    ok = torch.isfinite(y).all(1) & torch.isfinite(x).all(1)
    n = int(ok.sum())
    if n < MIN_DRAWS:
        raise ValueError(f"the surrogate cheap model: only {n} of {draws} prior draws gave "
                         f"finite fine outputs; it needs >= {MIN_DRAWS}: raise "
                         "--surrogate-draws or give another --coarse-forward")
    x, y = x[ok], y[ok]
    x_mean = x.mean(0)
    _, sv, vt = torch.linalg.svd(x - x_mean, full_matrices=False)
    keep = sv > 1e-8 * sv[0]
    keep[n // 2:] = False  # no more axes than the draws can place
    axes = vt[keep].T / (sv[keep] / math.sqrt(n - 1))
    w = (x - x_mean) @ axes
    y_mean, y_sd = y.mean(0), y.std(0).clamp(min=1e-12)
    ys = (y - y_mean) / y_sd
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_fit = n - max(1, n // 5)
    fit, held = perm[:n_fit], perm[n_fit:]
    models: dict[str, torch.nn.Module] = {
        "linear": _Ridge(False).fit(w[fit], ys[fit])}
    n_quad = w.shape[1] * (w.shape[1] + 3) // 2 + 1
    if n_quad < n_fit // 2:
        models["quadratic"] = _Ridge(True).fit(w[fit], ys[fit])
    models["mlp"] = _fit_mlp(w[fit], ys[fit], seed)
    rmse = {}
    with torch.no_grad():
        for kind, net in models.items():
            err = (net(w[held]) - ys[held]) * y_sd
            rmse[kind] = float(err.pow(2).mean().sqrt())
    finite = {k: v for k, v in rmse.items() if math.isfinite(v)}
    if not finite:
        raise ValueError("the surrogate cheap model gave NaN on its held-out draws with every "
                         "kind (linear, quadratic, mlp); check the fine model's outputs at "
                         "prior draws, or give another --coarse-forward")
    kind = min(finite, key=finite.get)
    return {"kind": kind, "net": models[kind].state_dict(), "x_mean": x_mean, "axes": axes,
            "y_mean": y_mean, "y_sd": y_sd, "draws": draws, "seed": seed,
            "heldout_rmse": rmse, "training_solves": fine.solves - solves0}


def _fingerprint(problem: InverseProblem) -> str:
    """The forward model and prior a surrogate was trained for."""
    return repr({**problem.forward.describe(), **problem.prior.describe()})


def surrogate_forward(problem: InverseProblem, draws: int, seed: int,
                      path: str | Path | None = None) -> SurrogateForward:
    """The surrogate of ``problem``'s forward model from ``draws`` prior draws (seed
    ``seed``), read from ``path`` when it holds one of these draws, else trained (and saved
    there)."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < MIN_DRAWS:
        raise ValueError(f"--surrogate-draws must be an integer >= {MIN_DRAWS} (prior draws "
                         f"whose fine outputs train the surrogate), got {draws!r}")
    path = None if path is None else Path(path)
    state = None
    of = _fingerprint(problem)
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=False)
        if (state.get("draws"), state.get("seed")) != (draws, seed):
            raise ValueError(f"{path} holds a surrogate of {state.get('draws')} draws (seed "
                             f"{state.get('seed')}), not {draws} (seed {seed}): use another "
                             "--out, or the settings it was trained with")
        if state.get("problem") != of:
            raise ValueError(f"{path} holds a surrogate of another forward model or prior "
                             f"({state.get('problem')}); use another --out")
    if state is None:
        state = {**_train(problem, draws, seed), "problem": of}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)
    model = SurrogateForward(problem.forward, state)
    probe = problem.params(problem.prior.sample(4, seed + 1))
    with torch.no_grad():
        out = model(probe.reshape(len(probe), *model.param_shape))
    model.solves = 0
    if not torch.isfinite(out).all():
        raise ValueError("the surrogate cheap model gives NaN or inf at prior draws; give more "
                         "--surrogate-draws or another --coarse-forward")
    return model
