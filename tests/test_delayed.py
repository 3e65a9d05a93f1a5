"""Delayed acceptance: exact on a linear-Gaussian problem even with a deliberately wrong cheap
model, fine and cheap solves counted apart, and bad cheap models refused with one line."""

import math

import arviz as az
import numpy as np
import pytest
import torch

from autovae.inverse.chains import run_chains
from autovae.inverse.delayed import (
    ApproximationError,
    DelayedAcceptanceKernel,
    coarse_forward,
    coarse_target,
    delayed_summary,
)
from autovae.inverse.forward import ForwardModel
from autovae.inverse.problem import InverseProblem
from autovae.inverse.targets import LinearGaussian, MatrixForward, StandardNormalPrior


def _linear(seed=0, d=6, p=8, sigma=1.0):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((p, d))
    truth = rng.standard_normal(d)
    y = G @ truth + sigma * rng.standard_normal(p)
    exact = LinearGaussian("lin", G, y, sigma)
    problem = InverseProblem(StandardNormalPrior(d), MatrixForward(G, "fine"), y, sigma)
    return exact, problem, G


class _Affine(ForwardModel):
    """y = scale G p + shift: a cheap model that is wrong by a known amount."""

    def __init__(self, G, scale=1.0, shift=0.0, name="affine"):
        super().__init__()
        self.G, self.scale, self.shift, self.name = torch.as_tensor(G), scale, shift, name
        self.n_obs, d = self.G.shape
        self.param_shape = (d,)

    def evaluate(self, params):
        return self.scale * params @ self.G.T + self.shift


def _within_4_mcse(draws, exact):
    ds = az.convert_to_dataset(draws)
    assert np.asarray(az.rhat(ds)["x"]).max() < 1.05
    flat = draws.reshape(-1, exact.dim)
    zm = np.abs(flat.mean(0) - exact.mean) / np.asarray(az.mcse(ds, method="mean")["x"])
    zs = np.abs(flat.std(0) - exact.sd) / np.asarray(az.mcse(ds, method="sd")["x"])
    assert zm.max() < 4 and zs.max() < 4, (zm.max(), zs.max())


@pytest.mark.parametrize("inner", ["rwm", "mala", "pcn", "chees"])
def test_exact_with_a_wrong_cheap_model(inner, tmp_path):
    draws, subchain = {"mala": (600, 3), "chees": (500, 2)}.get(inner, (1500, 4))
    exact, problem, G = _linear()
    wrong = _Affine(G, 0.9, 0.15, "wrong")  # mis-scaled and shifted
    cheap_exact = LinearGaussian("cheap", 0.9 * G, problem.data.numpy() - 0.15, 1.0)
    # really wrong: its posterior mean is half a posterior sd off (about 10 MCSE of this run)
    assert np.abs(cheap_exact.mean - exact.mean).max() > 0.2
    kernel = DelayedAcceptanceKernel(coarse_target(problem, wrong), inner, subchain=subchain)
    r = run_chains(problem.target(), kernel, tmp_path / inner, chains=4, warmup=200,
                   draws=draws, seed=2)
    _within_4_mcse(r.draws, exact)
    s = delayed_summary(r)
    assert s["coarse_solves"] > 2 * s["fine_solves"] > 0  # subchains: cheap solves dominate
    assert s["fine_solves"] == problem.forward.solves


def test_error_model_moves_the_cheap_posterior_toward_the_fine_one(tmp_path):
    exact, problem, G = _linear(1)
    wrong = _Affine(G, 1.0, 0.3, "shifted")  # fine - cheap = -0.3 everywhere
    aem = ApproximationError(problem, wrong, draws=400, seed=3)
    assert aem.draws == 400 and torch.allclose(aem.mu, torch.full((8,), -0.3).double())
    assert float(aem.cov.abs().max()) < 1e-20
    plain = DelayedAcceptanceKernel(coarse_target(problem, wrong), "rwm", subchain=4)
    fixed = DelayedAcceptanceKernel(coarse_target(problem, wrong, aem), "rwm", subchain=4)
    learnt = DelayedAcceptanceKernel(coarse_target(problem, wrong), "rwm", subchain=4,
                                     adaptive_error=True)
    acc = {}
    for name, k in (("plain", plain), ("aem", fixed), ("adaptive", learnt)):
        r = run_chains(problem.target(), k, tmp_path / name, chains=4, warmup=300,
                       draws=1000, seed=4)
        _within_4_mcse(r.draws, exact)
        acc[name] = delayed_summary(r)["fine_acceptance_of_moved"]
    # the corrected cheap posterior is the fine one: every screened proposal is accepted
    assert acc["aem"] > 0.999 and acc["plain"] < 0.9, acc
    # learnt at the screened proposals during warm-up, then frozen: the same correction
    assert acc["adaptive"] > 0.999 and torch.allclose(learnt._shift,
                                                       torch.full((8,), -0.3).double())


class _HolesForward(ForwardModel):
    """A cheap model that fails (NaN) where the first parameter exceeds ``edge``."""

    name = "holes"

    def __init__(self, G, edge=0.5):
        super().__init__()
        self.G, self.edge = torch.as_tensor(G), edge
        self.n_obs, d = self.G.shape
        self.param_shape = (d,)

    def evaluate(self, params):
        out = params @ self.G.T
        return torch.where(params[:, :1] > self.edge, torch.full_like(out, math.nan), out)


@pytest.mark.parametrize("inner", ["rwm", "chees"])
def test_cheap_nan_where_the_fine_model_is_finite_falls_back_exactly(inner, tmp_path):
    exact, problem, G = _linear()
    edge = float(exact.mean[0])  # the cheap model fails on half the fine posterior's mass
    kernel = DelayedAcceptanceKernel(coarse_target(problem, _HolesForward(G, edge)), inner,
                                     subchain=3 if inner == "rwm" else 2)
    draws = 1500 if inner == "rwm" else 500
    r = run_chains(problem.target(), kernel, tmp_path / inner, chains=4, warmup=200,
                   draws=draws, seed=1)
    assert r.status == "complete", r.reason
    _within_4_mcse(r.draws, exact)  # the region the cheap model cannot value is sampled
    assert (r.draws.reshape(-1, 6)[:, 0] > edge).mean() > 0.3
    s = delayed_summary(r)
    assert s["cheap_fallbacks"] > 0  # counted, and their fine solves are in the fine count
    assert s["fine_solves"] == problem.forward.solves >= s["cheap_fallbacks"]


def test_cheap_fallback_values_and_gradient_are_the_fine_models():
    exact, problem, G = _linear()
    kernel = DelayedAcceptanceKernel(coarse_target(problem, _HolesForward(G)), "chees")
    fine = problem.target()
    kernel.setup(fine, torch.zeros(2, 6), 0, 10)
    z = torch.tensor([[0.0] * 6, [1.0] + [0.2] * 5, [0.3] * 6])  # row 1: the cheap model fails
    solves, before = problem.forward.solves, kernel.cheap_fallbacks
    u, g = kernel.coarse.potential_and_grad(z)
    u_f, g_f = fine.potential_and_grad(z)
    assert torch.allclose(u, u_f) and torch.allclose(g, g_f)  # the cheap model is G here too
    assert kernel.cheap_fallbacks == before + 1 and problem.forward.solves > solves
    # where the fine model fails too, the cheap level is NaN: rejected, as fine kernels do
    nan_fine = InverseProblem(StandardNormalPrior(6), _HolesForward(G, 0.5), problem.data, 1.0)
    kernel.setup(nan_fine.target(), torch.zeros(2, 6), 0, 10)
    u = kernel.coarse.potential(z)
    assert torch.isnan(u[1]) and torch.isfinite(u[[0, 2]]).all()


def test_bad_cheap_models_are_refused():
    exact, problem, G = _linear()
    with pytest.raises(ValueError, match="cheap model small gives 4 observations"):
        coarse_target(problem, MatrixForward(G[:4], "small"))
    with pytest.raises(ValueError, match="takes parameters of shape \\(5,\\)"):
        coarse_target(problem, MatrixForward(G[:, :5], "narrow"))
    with pytest.raises(ValueError, match="needs a Metropolis kernel"):
        DelayedAcceptanceKernel(coarse_target(problem, MatrixForward(G)), "nuts")
    with pytest.raises(ValueError, match="subchain must be an integer >= 1"):
        DelayedAcceptanceKernel(coarse_target(problem, MatrixForward(G)), "rwm", subchain=0)
    with pytest.raises(ValueError, match="no built-in cheap model"):
        coarse_forward(MatrixForward(G, "mine"))


def test_built_in_cheap_models():
    from autovae.inverse.forward_models import AristoffBangerthForward, DarcyForward

    ab = AristoffBangerthForward()
    cheap = coarse_forward(ab)
    theta = torch.ones(2, 64, dtype=torch.float64)
    fine_z, cheap_z = ab(theta), cheap(theta)
    rel = float((fine_z - cheap_z).norm() / fine_z.norm())
    assert 1e-4 < rel < 0.05 and cheap.solves == 2  # a coarser mesh, close but not equal
    finer = coarse_forward(ab, "aristoff-bangerth-24")(theta)
    assert float((fine_z - finer).norm() / fine_z.norm()) < rel / 2  # error ~ h^2
    darcy = DarcyForward(grid=16)
    half = coarse_forward(darcy)
    k = torch.zeros(1, 16, 16, dtype=torch.float64)
    fine_p, cheap_p = darcy(k), half(k)
    rel = float((fine_p - cheap_p).norm() / fine_p.norm())
    assert 1e-3 < rel < 0.1 and half.solves == 1


# -- the surrogate cheap model (--coarse-forward surrogate) --------------------------------------
class _Bent(ForwardModel):
    """A nonlinear fine model, y = G p + 0.5 sin(p) W: the linear fit is not exact."""

    name = "bent"

    def __init__(self, G):
        super().__init__()
        self.G = torch.as_tensor(G)
        self.W = torch.as_tensor(np.random.default_rng(5).standard_normal(self.G.T.shape))
        self.n_obs, d = self.G.shape
        self.param_shape = (d,)

    def evaluate(self, params):
        return params @ self.G.T + 0.5 * torch.sin(params) @ self.W


def test_surrogate_is_fitted_chosen_by_held_out_error_and_cached(tmp_path):
    from autovae.inverse.surrogate import surrogate_forward

    exact, problem, G = _linear()
    s = surrogate_forward(problem, 200, 0, tmp_path / "surrogate.pt")
    rep = s.report()
    # a linear model: the ridge fit is exact, and chosen
    assert rep["surrogate_kind"] in ("linear", "quadratic")
    assert rep["surrogate_heldout_rmse"]["linear"] < 1e-5
    assert rep["surrogate_training_solves"] == 200 == problem.forward.solves
    p = torch.randn(5, 6, dtype=torch.float64)
    assert torch.allclose(s(p), problem.forward(p), atol=1e-5)
    # read back, not retrained: no fine solve
    again = surrogate_forward(problem, 200, 0, tmp_path / "surrogate.pt")
    assert problem.forward.solves == 205 and torch.equal(again(p), s(p))
    with pytest.raises(ValueError, match="holds a surrogate of 200 draws"):
        surrogate_forward(problem, 300, 0, tmp_path / "surrogate.pt")
    # nonlinear: a kind is chosen by its held-out error, and is differentiable
    bent = InverseProblem(StandardNormalPrior(6), _Bent(G), problem.data, 1.0)
    sb = surrogate_forward(bent, 200, 1)
    rmse = sb.report()["surrogate_heldout_rmse"]
    assert sb.report()["surrogate_kind"] == min(rmse, key=rmse.get)
    q = p.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sb(q).sum(), q)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_exact_with_a_surrogate_cheap_model(tmp_path):
    """The fine posterior does not depend on the surrogate: one from 20 prior draws, then
    made wrong on purpose (outputs scaled by 1.1 about their mean and shifted by 0.15),
    still gives the exact posterior."""
    from autovae.inverse.surrogate import surrogate_forward

    exact, problem, G = _linear()
    s = surrogate_forward(problem, 20, 0)
    s.state["y_sd"], s.state["y_mean"] = s.state["y_sd"] * 1.1, s.state["y_mean"] + 0.15
    kernel = DelayedAcceptanceKernel(coarse_target(problem, s), "mala", subchain=3)
    r = run_chains(problem.target(), kernel, tmp_path / "s", chains=4, warmup=200, draws=600,
                   seed=3)
    _within_4_mcse(r.draws, exact)
    assert delayed_summary(r)["fine_acceptance_of_moved"] < 0.9  # it is wrong, and costs


class _MostlyNaN(ForwardModel):
    name = "mostly-nan"

    def __init__(self, G):
        super().__init__()
        self.G = torch.as_tensor(G)
        self.n_obs, d = self.G.shape
        self.param_shape = (d,)

    def evaluate(self, params):
        out = params @ self.G.T
        return torch.where(params[:, :1] > -1.5, torch.full_like(out, math.nan), out)


def test_surrogate_bad_inputs():
    from autovae.inverse.surrogate import surrogate_forward

    exact, problem, G = _linear()
    with pytest.raises(ValueError, match="--surrogate-draws must be an integer >= 20"):
        surrogate_forward(problem, 5, 0)
    nan = InverseProblem(StandardNormalPrior(6), _MostlyNaN(G), problem.data, 1.0)
    with pytest.raises(ValueError, match="prior draws gave finite fine outputs; it needs >= 20"):
        surrogate_forward(nan, 100, 0)


def test_adaptive_error_model_spends_one_fine_solve_per_screened_proposal(tmp_path):
    """The adaptive error model learns from the fine solve the two-level ratio makes: fine
    solves = the start points + the proposals whose subchain moved, warm-up included."""
    exact, problem, G = _linear(1)
    kernel = DelayedAcceptanceKernel(coarse_target(problem, _Affine(G, 1.0, 0.3)), "rwm",
                                     subchain=2, adaptive_error=True)
    moved = []
    sample = kernel.sample

    def counted(*args, **kwargs):
        out = sample(*args, **kwargs)
        moved.append(int(out["subchain_moved"].sum()))
        return out

    kernel.sample = counted
    run_chains(problem.target(), kernel, tmp_path / "a", chains=3, warmup=60, draws=40, seed=0)
    assert problem.forward.solves == 3 + sum(moved) and sum(moved) > 100


def test_invert_with_a_surrogate_counts_its_training_and_resumes_without_retraining(tmp_path):
    from autovae.inverse import invert

    settings = dict(problem="aristoff-bangerth", prior="lognormal", kernel="rwm", subchain=2,
                    coarse_forward="surrogate", surrogate_draws=40, chains=2, warmup=10,
                    draws=10, seed=0, out=str(tmp_path / "c"))
    first = invert(**settings).summary
    assert first["surrogate_training_solves"] == 40 == first["setup_fine_solves"]
    assert first["fine_solves"] == first["solves"] + 40
    assert first["surrogate_kind"] in ("linear", "mlp")
    saved = (tmp_path / "c" / "surrogate.pt").stat().st_mtime_ns
    again = invert(**settings)  # the same command again: the folder resumes
    assert (tmp_path / "c" / "surrogate.pt").stat().st_mtime_ns == saved  # not retrained
    assert again.summary["surrogate_training_solves"] == 40


def test_the_cheap_model_gets_jobs():
    from autovae.inverse.config import InverseConfig
    from autovae.inverse.inversion import _delayed
    from autovae.inverse.problems import PROBLEMS

    cfg = InverseConfig.from_dict(dict(problem="aristoff-bangerth", subchain=2, jobs=2))
    problem = PROBLEMS[cfg.problem](cfg).problem
    d = _delayed(cfg, problem, "rwm", None)
    try:
        assert d["cheap"].jobs == 2 and d["setup_fine_solves"] == 0
    finally:
        d["cheap"].close_workers()


_HOLEY = '''
import torch

from autovae.inverse.forward_models import AristoffBangerthForward


class Holey(AristoffBangerthForward):
    """Aristoff-Bangerth failing (NaN) on a deterministic 30% of the parameter space."""

    def __init__(self):
        super().__init__()
        self.name = "holey"

    def evaluate(self, params):
        out = super().evaluate(params)
        hole = torch.frac(1e3 * params.detach().reshape(len(params), -1).sum(1)) < 0.3
        return torch.where(hole[:, None], torch.full_like(out, float("nan")), out)
'''


def test_invert_reports_the_cheap_fallbacks(tmp_path, monkeypatch):
    from autovae.inverse import invert
    from autovae.inverse.outputs import format_summary

    (tmp_path / "holey_cheap.py").write_text(_HOLEY)
    monkeypatch.syspath_prepend(str(tmp_path))
    s = invert(problem="aristoff-bangerth", prior="lognormal", kernel="rwm", subchain=2,
               coarse_forward="holey_cheap:Holey", chains=2, warmup=10, draws=10, seed=0,
               out=str(tmp_path / "c")).summary
    assert s["status"] == "complete" and s["cheap_fallbacks"] > 0
    assert s["fine_solves"] == s["solves"] >= s["cheap_fallbacks"]
    assert f"{s['cheap_fallbacks']:,} cheap fallbacks" in format_summary(s)
