"""Priors on a parameter vector from the command line: the maps and densities are right, pCN
applies wherever the prior is Gaussian after an affine map (Aristoff-Bangerth's ln theta too),
and a user's 3-parameter model with a data file inverts with one command, matching the
posterior computed by quadrature."""

import json
import math

import numpy as np
import pytest
import torch

from autovae.cli import main
from autovae.inverse.chains import run_chains
from autovae.inverse.config import InverseConfig
from autovae.inverse.kernels import Target, make_kernel
from autovae.inverse.problems import PROBLEMS
from autovae.inverse.vector_priors import (
    GaussianPrior,
    LogNormalPrior,
    UniformPrior,
    read_values,
    vector_prior,
)

MODEL = '''
import torch
from autovae.inverse import ForwardModel


class Decay(ForwardModel):
    """y(t) = a exp(-k t) + c at 20 times: three positive parameters (a, k, c)."""

    name = "decay"
    param_shape, n_obs = (3,), 20
    t = torch.linspace(0, 4, 20, dtype=torch.float64)

    def evaluate(self, p):
        return p[:, :1] * torch.exp(-p[:, 1:2] * self.t) + p[:, 2:3]
'''


def test_gaussian_prior_maps_mean_and_covariance(tmp_path):
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    np.savetxt(tmp_path / "cov.txt", cov)
    p = vector_prior("gaussian", (3,), mean="1,2,3", cov=str(tmp_path / "cov.txt"))
    assert p.normal and p.dim == 3
    x = p.params(p.sample(200_000, seed=1)).numpy()
    assert np.allclose(x.mean(0), [1, 2, 3], atol=0.02)
    assert np.allclose(np.cov(x.T), cov, atol=0.03)
    d = vector_prior("gaussian", (2, 2), mean=0.5, sd=[1, 2, 3, 4])
    assert d.params(torch.ones(1, 4)).shape == (1, 2, 2)
    assert torch.allclose(d.params(torch.ones(1, 4)).reshape(-1),
                          torch.tensor([1.5, 2.5, 3.5, 4.5], dtype=torch.float64))


def test_lognormal_and_uniform_priors():
    ln = LogNormalPrior((2,), mean=4.0, sd=2.0)
    z = ln.sample(100_000, seed=2)
    assert ln.normal and np.allclose(ln.params(z).log().mean(0).numpy(), 4.0, atol=0.03)
    u = UniformPrior((3,), low=[0, -1, 10], high=[1, 1, 20])
    assert not u.normal
    x = u.params(u.sample(100_000, seed=3)).numpy()
    assert np.allclose(x.mean(0), [0.5, 0, 15], atol=0.02)
    assert np.allclose(x.std(0), np.array([1, 2, 10]) / math.sqrt(12), rtol=0.02)


def test_uniform_prior_is_uniform_under_mcmc_through_the_logit_jacobian(tmp_path):
    """No data (phi = 0): a chain on the logit coordinates with the Jacobian as its log
    density must give uniform parameters; without the Jacobian it would not."""
    u = UniformPrior((2,), low=-1, high=3)
    target = Target(lambda z: torch.zeros(z.shape[0], dtype=z.dtype), 2, prior=u.log_prior)
    r = run_chains(target, "rwm", tmp_path / "u", chains=4, warmup=300, draws=3000, seed=0)
    x = u.params(torch.from_numpy(r.draws.reshape(-1, 2))).numpy()
    hist = np.histogram(x[:, 0], bins=4, range=(-1, 3))[0] / len(x)
    assert np.allclose(hist, 0.25, atol=0.04), hist


def test_pcn_applies_to_aristoff_bangerths_lognormal_prior():
    cfg = InverseConfig(problem="aristoff-bangerth", prior="lognormal", kernel="pcn")
    built = PROBLEMS["aristoff-bangerth"](cfg)
    assert built.problem.prior.normal and built.reference is not None  # the benchmark's prior
    make_kernel("pcn").validate(built.problem.target())
    # the same density as the benchmark's own prior: log p(theta) + sum ln theta (Jacobian)
    bench = PROBLEMS["aristoff-bangerth"](InverseConfig(problem="aristoff-bangerth")).problem
    phi = torch.randn(3, 64, dtype=torch.float64) * 2 + 4
    z = (phi - 4) / 2
    own = bench.prior.log_prior(phi)
    ours = built.problem.prior.log_prior(z)
    assert torch.allclose(own - own[0], ours - ours[0])
    with pytest.raises(ValueError, match="pCN needs a N\\(0, I\\) prior"):
        make_kernel("pcn").validate(bench.target())


def test_read_values_refuses_bad_values(tmp_path):
    (tmp_path / "two.txt").write_text("1 2\n")
    with pytest.raises(ValueError, match="holds 2 values; the forward model takes 3"):
        read_values("--prior-mean", str(tmp_path / "two.txt"), 3)
    with pytest.raises(ValueError, match="--prior-sd must be > 0"):
        GaussianPrior((3,), sd="1,0,1")
    with pytest.raises(ValueError, match="bounds reversed or empty at parameter 1"):
        UniformPrior((2,), low=[0, 5], high=[1, 2])
    with pytest.raises(ValueError, match="--prior-low must be finite"):
        vector_prior("uniform", (2,), low="-inf", high=1)
    with pytest.raises(ValueError, match="not positive definite"):
        GaussianPrior((2,), cov=np.array([[1.0, 2.0], [2.0, 1.0]]))


def test_a_three_parameter_model_inverts_with_one_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "decay_model.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    from decay_model import Decay

    truth = torch.tensor([[2.0, 0.8, 0.5]], dtype=torch.float64)
    rng = np.random.default_rng(0)
    y = Decay()(truth)[0].numpy() + 0.05 * rng.standard_normal(20)
    np.savetxt(tmp_path / "data.csv", y[None], delimiter=",")
    out = tmp_path / "chain"
    assert main(["invert", "--forward", "decay_model:Decay", "--data", str(tmp_path / "data.csv"),
                 "--noise", "0.05", "--prior", "lognormal", "--prior-mean", "0",
                 "--prior-sd", "1", "--kernel", "mala", "--chains", "4", "--warmup", "200",
                 "--draws", "600",
                 "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["kernel"] == "mala" and s["rhat_max"] < 1.05
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    z = idata.posterior["z"].values  # (chains, draws, 3): z = ln theta
    theta = np.exp(z)
    # the exact posterior mean by quadrature on z, a 61^3 grid over +-8 sd of the draws
    m, sd = z.reshape(-1, 3).mean(0), z.reshape(-1, 3).std(0)
    axes = [np.linspace(m[i] - 8 * sd[i], m[i] + 8 * sd[i], 61) for i in range(3)]
    Z = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    th = torch.from_numpy(np.exp(Z))
    pred = torch.cat([Decay()(th[i:i + 50000]) for i in range(0, len(th), 50000)]).numpy()
    logp = -0.5 * (((pred - y) / 0.05) ** 2).sum(1) - 0.5 * (Z ** 2).sum(1)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    exact = w @ np.exp(Z)
    ess = np.asarray(az.ess(az.convert_to_dataset(theta))["x"])
    se = theta.reshape(-1, 3).std(0) / np.sqrt(ess)
    assert (np.abs(theta.reshape(-1, 3).mean(0) - exact) < 4 * se).all(), (
        theta.reshape(-1, 3).mean(0), exact, se)
