"""Latent-space samplers (pCN, RWM, Pyro NUTS), the resumable chain folder and ArviZ diagnostics.

The Gaussian target is a linear-Gaussian posterior with an exact mean and covariance:
phi(z) = 1/2 |(A z - y) / s|^2, prior N(0, I) -> Sigma = (I + A'A/s^2)^-1, m = Sigma A'y/s^2.
"""

import json
import math

import arviz as az
import numpy as np
import pytest
import torch
from scipy import stats as sps

from autovae.inverse import (
    NUTSKernel,
    PCNKernel,
    RWMKernel,
    Target,
    load_chains,
    make_kernel,
    run_chains,
)
from autovae.inverse.diagnostics import (
    ess,
    load_netcdf,
    rhat,
    save_netcdf,
    summary,
    to_inference_data,
)

D = 3


def _gaussian(scale=1.0):
    """phi = scale/2 |(A z - y)/s|^2 with the exact posterior mean and covariance."""
    g = torch.Generator().manual_seed(7)
    A = torch.randn(5, D, generator=g, dtype=torch.float64)
    y = torch.randn(5, generator=g, dtype=torch.float64)
    s = 0.7 / math.sqrt(scale)
    cov = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + A.T @ A / s**2)
    mean = cov @ A.T @ y / s**2

    def phi(z):
        r = (z @ A.T - y) / s
        return 0.5 * (r * r).sum(-1)

    return phi, mean.numpy(), cov.numpy()


class Interrupt(Exception):
    """Stands for a kill: raised from inside the potential after a number of evaluations."""


def _killing(phi, after_rows):
    seen = {"n": 0}

    def wrapped(z):
        seen["n"] += z.shape[0]
        if seen["n"] > after_rows:
            raise Interrupt
        return phi(z)

    return wrapped


def _check_posterior(result, mean, cov, z_max=4.0, cov_tol=0.2):
    draws = result.draws
    idata = result.to_inference_data()
    mcse = np.asarray(az.mcse(idata, method="mean")["z"])
    z_scores = (draws.reshape(-1, D).mean(0) - mean) / mcse
    assert np.all(np.abs(z_scores) < z_max), z_scores
    emp = np.cov(draws.reshape(-1, D).T)
    assert np.linalg.norm(emp - cov) / np.linalg.norm(cov) < cov_tol
    return z_scores


@pytest.mark.parametrize("kernel", [PCNKernel(step_size=0.2), RWMKernel(step_size=0.3)],
                         ids=["pcn", "rwm"])
def test_metropolis_samples_the_gaussian_posterior(tmp_path, kernel):
    phi, mean, cov = _gaussian()
    r = run_chains(Target(phi, D), kernel, tmp_path / "c", chains=8, warmup=300, draws=1500,
                   seed=3, checkpoint_every=500)
    assert r.complete and r.draws.shape == (8, 1500, D)
    _check_posterior(r, mean, cov)
    s = r.summary()
    assert s["rhat_max"] < 1.02 and s["ess_bulk_min"] > 400
    assert abs(s["acceptance"] - kernel.target_accept) < 0.06
    # one initial evaluation per chain plus one per step and chain
    assert s["potential_evals"] == 8 * (1 + 300 + 1500)


def test_nuts_samples_the_gaussian_posterior(tmp_path):
    phi, mean, cov = _gaussian()
    r = run_chains(Target(phi, D), NUTSKernel(), tmp_path / "c", chains=2, warmup=80,
                   draws=200, seed=1, checkpoint_every=100)
    assert r.complete and r.draws.shape == (2, 200, D)
    _check_posterior(r, mean, cov, cov_tol=0.25)
    s = r.summary()
    assert s["rhat_max"] < 1.03 and s["divergences"] == 0
    assert 0.6 < s["mean_accept_prob"] <= 1.0  # Pyro's, dual averaging toward 0.8
    # every leapfrog step is one gradient; setup's step-size search adds a few
    leapfrog = r.stats["n_steps"].sum() + r.warmup_stats["n_steps"].sum()
    assert leapfrog <= s["gradient_evals"] < leapfrog + 200
    assert set(r.stats) >= {"accepted", "diverging", "n_steps", "tree_depth", "step_size", "lp"}
    assert np.isfinite(r.stats["lp"]).all()  # the potential at each draw, from the memo


def test_pcn_leaves_the_prior_invariant(tmp_path):
    """phi = 0: every proposal is accepted and the chain (an AR(1) with rho = sqrt(1 - beta^2))
    samples N(0, I)."""
    zero = Target(lambda z: torch.zeros(z.shape[0], dtype=z.dtype), 2)
    r = run_chains(zero, PCNKernel(step_size=0.6, adapt=False), tmp_path / "c", chains=16,
                   warmup=0, draws=400, thin=10, seed=5, checkpoint_every=1000)
    assert np.all(r.acceptance == 1.0)
    x = r.draws.reshape(-1, 2)  # 6400 draws, lag-10 autocorrelation 0.8^10 = 0.11
    se = 1.0 / math.sqrt(x.shape[0] / 1.25)
    assert np.all(np.abs(x.mean(0)) < 4 * se)
    assert np.all(np.abs(x.var(0) - 1.0) < 0.08)
    assert sps.kstest(x[:, 0], "norm").pvalue > 1e-3
    assert sps.kstest(x[:, 1], "norm").pvalue > 1e-3


@pytest.mark.parametrize("kernel,start", [(PCNKernel(step_size=0.95, target_accept=0.3), "high"),
                                          (RWMKernel(step_size=0.01, target_accept=0.3), "low")],
                         ids=["pcn", "rwm"])
def test_step_adaptation_moves_toward_target_then_freezes(tmp_path, kernel, start):
    # a sharp posterior so that beta = 0.95 is far too bold; start at its mode
    phi, mode, _ = _gaussian(scale=25.0)
    r = run_chains(Target(phi, D), kernel, tmp_path / "c", chains=8, warmup=600, draws=400,
                   seed=2, checkpoint_every=250, init=torch.as_tensor(mode).expand(8, D))
    a = r.warmup_stats["accept_prob"]
    first, last = a[:, :3].mean(), a[:, -200:].mean()
    assert (first < 0.15) if start == "high" else (first > 0.8)
    assert abs(last - 0.3) < 0.08
    step = r.stats["step_size"]
    assert np.all(step == step[:, :1])  # frozen after warm-up
    assert np.allclose(step[:, 0], r.step_size)
    assert np.all(r.warmup_stats["step_size"][:, -1] == step[:, 0])
    assert abs(r.acceptance.mean() - 0.3) < 0.08


def test_shared_step_is_one_step_for_all_chains(tmp_path):
    phi, _, _ = _gaussian()
    r = run_chains(Target(phi, D), PCNKernel(shared_step=True), tmp_path / "c", chains=4,
                   warmup=50, draws=10, seed=0)
    assert np.all(r.step_size == r.step_size[0])


@pytest.mark.parametrize("sampler", ["pcn", "rwm"])
def test_resume_after_a_kill_is_bit_identical(tmp_path, sampler):
    phi, _, _ = _gaussian()
    kw = dict(chains=3, warmup=60, draws=80, thin=2, seed=11)
    full = run_chains(Target(phi, D), sampler, tmp_path / "full", checkpoint_every=25, **kw)
    # killed mid-block during the sampling phase (after 130 of 220 steps), then resumed with
    # a different block size
    with pytest.raises(Interrupt):
        run_chains(Target(_killing(phi, 3 * 130), D), sampler, tmp_path / "cut",
                   checkpoint_every=25, **kw)
    part = load_chains(tmp_path / "cut")
    assert part.status == "running" and 0 < part.draws.shape[1] < 80
    again = run_chains(Target(phi, D), sampler, tmp_path / "cut", checkpoint_every=40, **kw)
    for a, b in ((full.draws, again.draws), (full.warmup_draws, again.warmup_draws)):
        assert a.shape == b.shape and np.array_equal(a, b)
    for k in full.stats:
        assert np.array_equal(full.stats[k], again.stats[k]), k
    assert np.array_equal(full.acceptance, again.acceptance)
    assert np.array_equal(full.step_size, again.step_size)
    # evaluations count what the saved chain cost (a lost partial block is not counted)
    assert full.potential_evals == again.potential_evals


@pytest.mark.parametrize("full_mass", [False, True])
def test_nuts_resume_is_bit_identical_after_warmup_and_within_warmup(tmp_path, full_mass):
    """A kill in each phase of Pyro's warm-up (step-size buffer, mass-matrix window, end buffer)
    and after it keeps what was done, and the resumed run equals the uninterrupted one bit for
    bit: draws, every statistic, adapted step size and mean acceptance probability."""
    phi, _, _ = _gaussian()
    # 60 warm-up steps: Pyro's schedule is a 9-step buffer, a 45-step mass-matrix window
    # (Welford, diagonal or dense), a 6-step buffer
    kw = dict(chains=1, warmup=60, draws=20, seed=4, checkpoint_every=4)
    counted = Target(phi, D)
    full = run_chains(counted, NUTSKernel(full_mass=full_mass), tmp_path / "full", **kw)
    phases = []
    for frac in (0.05, 0.3, 0.85, 0.97):
        folder = tmp_path / f"cut{frac}"
        with pytest.raises(Interrupt):
            run_chains(Target(_killing(phi, int(frac * counted.evals)), D),
                       NUTSKernel(full_mass=full_mass), folder, **kw)
        part = load_chains(folder)  # the warm-up so far was checkpointed, not thrown away
        assert part.status == "running" and part.warmup_draws.shape[1] > 0
        phases.append((part.warmup_draws.shape[1], part.draws.shape[1]))
        again = run_chains(Target(phi, D), NUTSKernel(full_mass=full_mass), folder, **kw)
        assert np.array_equal(full.draws, again.draws), frac
        assert np.array_equal(full.warmup_draws, again.warmup_draws), frac
        for mine, theirs in ((full.stats, again.stats), (full.warmup_stats, again.warmup_stats)):
            assert mine.keys() == theirs.keys()
            for k in mine:
                assert np.array_equal(mine[k], theirs[k]), (frac, k)
        assert np.array_equal(full.step_size, again.step_size)
        assert np.array_equal(full.mean_accept_prob, again.mean_accept_prob)
    # the kills fell in the first buffer, the mass-matrix window, late warm-up and sampling
    (w0, _), (w1, _), (w2, _), (w3, s3) = phases
    assert w0 < 9 <= w1 < 54 and w2 >= 40 and w3 == 60 and s3 > 0, phases


@pytest.mark.parametrize("kernel", ["pcn", "rwm", "mala"])
def test_metropolis_resume_within_warmup_is_bit_identical(tmp_path, kernel):
    phi, _, _ = _gaussian()
    kw = dict(chains=3, warmup=120, draws=30, seed=2, checkpoint_every=9)
    full = run_chains(Target(phi, D), kernel, tmp_path / "full", **kw)
    with pytest.raises(Interrupt):  # in warm-up, after MALA's first preconditioner update
        run_chains(Target(_killing(phi, 3 * 70), D), kernel, tmp_path / "cut", **kw)
    assert load_chains(tmp_path / "cut").warmup_draws.shape[1] > 0
    again = run_chains(Target(phi, D), kernel, tmp_path / "cut", **kw)
    assert np.array_equal(full.warmup_draws, again.warmup_draws)
    assert np.array_equal(full.draws, again.draws)
    assert np.array_equal(full.step_size, again.step_size)
    assert np.array_equal(full.stats["accept_prob"], again.stats["accept_prob"])


def test_nuts_accept_prob_is_the_iteration_mean_pyro_averages(tmp_path):
    """NUTS reports each iteration's acceptance probability (Pyro's running mean is its
    average): the per-draw statistic, the summary's mean and Pyro's figure agree."""
    phi, _, _ = _gaussian()
    r = run_chains(Target(phi, D), NUTSKernel(), tmp_path / "c", chains=2, warmup=60,
                   draws=50, seed=1)
    ap = r.stats["accept_prob"]
    assert ap.shape == (2, 50) and np.all((ap >= 0) & (ap <= 1))
    assert np.allclose(ap.mean(1), r.mean_accept_prob, atol=1e-9)
    assert summary(r)["mean_accept_prob"] == pytest.approx(float(np.mean(r.mean_accept_prob)))
    assert 0.5 < float(np.mean(r.mean_accept_prob)) < 1.0


def test_finished_folder_is_read_back_and_other_settings_are_refused(tmp_path):
    phi, _, _ = _gaussian()
    r = run_chains(Target(phi, D), "pcn", tmp_path / "c", chains=2, warmup=10, draws=20)
    counted = Target(phi, D)
    r2 = run_chains(counted, "pcn", tmp_path / "c", chains=2, warmup=10, draws=20)
    assert counted.evals == 0 and np.array_equal(r.draws, r2.draws)
    meta = json.loads((tmp_path / "c" / "chain.json").read_text())
    assert meta["status"] == "complete"
    with pytest.raises(ValueError, match="chains: folder 2, asked 3"):
        run_chains(Target(phi, D), "pcn", tmp_path / "c", chains=3, warmup=10, draws=20)
    with pytest.raises(ValueError, match="kernel"):
        run_chains(Target(phi, D), "rwm", tmp_path / "c", chains=2, warmup=10, draws=20)


def test_bad_arguments_are_named(tmp_path):
    phi, _, _ = _gaussian()
    t = Target(phi, D)
    with pytest.raises(ValueError, match="unknown kernel 'hmc'"):
        make_kernel("hmc")
    for bad in (1.5, 0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="step_size"):
            PCNKernel(step_size=bad)
    with pytest.raises(ValueError, match="target_accept"):
        RWMKernel(target_accept=1.0)
    with pytest.raises(ValueError, match="draws"):
        run_chains(t, "pcn", tmp_path / "a", draws=0)
    with pytest.raises(ValueError, match="init must have shape"):
        run_chains(t, "pcn", tmp_path / "b", chains=2, init=torch.zeros(3, D))
    with pytest.raises(ValueError, match="pCN needs a N\\(0, I\\) prior"):
        run_chains(Target(phi, D, prior=lambda z: -z.abs().sum(-1)), "pcn", tmp_path / "c",
                   warmup=1, draws=1)


def test_a_diverging_chain_stops_with_its_reason_and_keeps_its_draws(tmp_path):
    def phi(z):  # the "solver" fails (NaN) far out in the first coordinate
        out = 0.5 * (z * z).sum(-1)
        return torch.where(z[:, 0] > 1.8, torch.full_like(out, math.nan), out)

    with pytest.warns(RuntimeWarning, match="NaN"):
        r = run_chains(Target(phi, 2, prior=lambda z: torch.zeros(z.shape[0])),
                       RWMKernel(step_size=0.5, adapt=False), tmp_path / "c", chains=2,
                       warmup=0, draws=5000, seed=0, checkpoint_every=100,
                       init=torch.zeros(2, 2))
    assert r.status == "diverged" and "NaN" in r.reason and "chains [" in r.reason
    assert 0 < r.draws.shape[1] < 5000 and np.isfinite(r.draws).all()
    assert json.loads((tmp_path / "c" / "chain.json").read_text())["status"] == "diverged"
    assert load_netcdf(tmp_path / "c" / "posterior.nc").posterior.attrs["status"] == "diverged"
    # a start where phi is not finite stops at once
    with pytest.warns(RuntimeWarning, match="start point"):
        r = run_chains(Target(phi, 2), "pcn", tmp_path / "d", chains=2, warmup=5, draws=5,
                       init=torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    assert r.status == "diverged" and "chains [1]" in r.reason


def test_nuts_stops_when_every_iteration_diverges(tmp_path):
    def phi(z):  # finite only on a sliver: every trajectory leaves it and diverges
        out = 0.5 * (z * z).sum(-1)
        return torch.where(z.abs().max(-1).values > 1e-6, out + 1e8 * z.abs().sum(-1), out)

    with pytest.warns(RuntimeWarning, match="diverged"):
        r = run_chains(Target(phi, 2), NUTSKernel(max_divergent_run=20, step_size=1.0),
                       tmp_path / "c", chains=1, warmup=0, draws=200, seed=0,
                       init=torch.zeros(1, 2))
    assert r.status == "diverged" and "20 iterations in a row" in r.reason
    assert r.draws.shape[1] == 20 and r.stats["diverging"].all()


def test_inference_data_netcdf_round_trip(tmp_path):
    phi, _, _ = _gaussian()
    r = run_chains(Target(phi, D), "pcn", tmp_path / "c", chains=2, warmup=20, draws=50)
    back = load_netcdf(tmp_path / "c" / "posterior.nc")
    assert np.array_equal(back.posterior["z"].values, r.draws)
    assert np.array_equal(back.sample_stats["acceptance_rate"].values, r.stats["accept_prob"])
    assert np.array_equal(back.warmup_posterior["z"].values, r.warmup_draws)
    assert back.posterior.attrs["kernel"] == "pcn"
    assert back.posterior.attrs["potential_evals"] == r.potential_evals
    assert summary(back) == summary(r)
    idata = to_inference_data(np.zeros((2, 5, 3)) + np.arange(5)[None, :, None])
    path = save_netcdf(idata, tmp_path / "x" / "p.nc")
    assert np.array_equal(az.from_netcdf(str(path)).posterior["z"].values,
                          idata.posterior["z"].values)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["p.nc"]  # no temp file left


def test_ess_and_rhat_by_arviz():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 1000, 5))
    for method in ("bulk", "tail"):
        e = ess(iid, method)
        assert e.shape == (5,) and np.all(np.abs(e / 4000 - 1) < 0.15), e
    assert np.all(np.abs(rhat(iid) - 1) < 0.01)
    stuck = iid * 0.1 + np.array([0.0, 1.0, 2.0, 3.0])[:, None, None]
    assert np.all(rhat(stuck) > 1.1)
    # an AR(1) chain with rho = 0.9 has ESS about n (1 - rho) / (1 + rho)
    x = np.zeros((4, 4000))
    for t in range(1, 4000):
        x[:, t] = 0.9 * x[:, t - 1] + math.sqrt(1 - 0.81) * rng.normal(size=4)
    e = ess(x[..., None])[0]
    assert 0.6 < e / (16000 * 0.1 / 1.9) < 1.5
    s = summary(iid)
    assert s["chains"] == 4 and s["draws"] == 1000 and s["dim"] == 5
    assert s["ess_bulk_min"] <= s["ess_bulk_median"] and s["rhat_max"] < 1.01


class _Bar:
    """Stands for tqdm: records what each chain's bar would show."""

    shown: list = []

    def __init__(self, **kw):
        self.n = kw.get("initial", 0)

    def set_postfix(self, post, refresh=True):
        _Bar.shown.append((self.n, dict(post)))

    def update(self, k):
        self.n += k

    def close(self):
        pass


@pytest.mark.parametrize("kernel", ["pcn", "nuts"])
def test_progress_shows_the_phase_and_the_running_acceptance_probability(tmp_path, monkeypatch,
                                                                          kernel):
    """During warm-up the bars show the adapting kernel's acceptance (not 0 until sampling),
    as the mean acceptance probability; NUTS adds tree depth, and divergences after warm-up."""
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.shown = []
    phi, _, _ = _gaussian()
    r = run_chains(Target(phi, D), kernel, tmp_path / "c", chains=1, warmup=40, draws=30,
                   seed=3, progress=True)
    warm = [p for n, p in _Bar.shown if n < 40]
    post = [p for n, p in _Bar.shown if n >= 40]
    assert len(warm) == 40 and len(post) == 30
    assert all(p["phase"] == "warm-up" for p in warm) and all(p["phase"] == "sampling"
                                                              for p in post)
    # the running mean over the phase so far, from the per-iteration statistic
    a = r.warmup_stats["accept_prob"][0]
    assert [p["acc. prob"] for p in warm] == [f"{a[:k].mean():.2f}" for k in range(1, 41)]
    assert float(warm[-1]["acc. prob"]) > 0.1
    assert post[-1]["acc. prob"] == f"{r.stats['accept_prob'][0].mean():.2f}"
    if kernel == "nuts":
        assert [p["depth"] for p in post] == r.stats["tree_depth"][0].tolist()
        assert "div" not in warm[-1] and post[-1]["div"] == int(r.stats["diverging"].sum())
    else:
        assert "depth" not in post[-1] and "div" not in post[-1]
