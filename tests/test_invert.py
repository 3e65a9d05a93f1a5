"""Inversion with a trained run: from_run's posterior, the KL baseline, ``autovae invert`` end to
end (outputs, resume, report), bad input and a diverging chain.

A tiny VAE (4 latents, MLP 1x32) is trained for two epochs on 300 8x8 ``darcy-grf-8`` fields.
"""

import json
import math

import arviz as az
import numpy as np
import pytest
import torch

from autovae.beliefs.latent import LatentSpec
from autovae.cli import main
from autovae.config import Config
from autovae.inverse import (
    InverseProblem,
    KLDecoder,
    KLExpansion,
    PCNKernel,
    darcy_pressure,
    grf_covariance,
    run_chains,
    run_prior,
    sample_grf,
)
from autovae.inverse.invert import PICTURES, darcy_forward, regular_points, truth_field
from autovae.run import load_trained
from autovae.training import train

SUMMARY_KEYS = {"status", "acceptance", "ess_bulk_min", "ess_bulk_median", "ess_tail_min",
                "ess_tail_median", "rhat_max", "ess_per_second", "ess_per_eval", "nsswr",
                "rel_l2_mean", "ess_bulk_min_per_2000", "potential_evals", "coverage_2sd",
                "settings"}


def _train(folder, data="darcy-grf-8", latent="normal/normal:4", limit=300):
    config = Config(data=data, likelihood="gaussian", latent=latent, hidden=32, depth=1,
                    epochs=2, limit=limit, batch_size=50, val_size=50, seed=0)
    train(config, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("tiny") / "run")


def _problem(run):
    _, n = truth_field(8, truth_seed=3)
    pts = regular_points(16)
    y = darcy_pressure(n[None], pts)[0]
    return InverseProblem.from_run(run, darcy_forward, pts, y, 0.05), pts, y


def test_from_run_potential_and_gradient(run):
    problem, pts, y = _problem(run)
    _, _, model, _ = load_trained(run, "cpu")
    assert problem.dim == 4 and problem.grid == (8, 8) and problem.prior == "normal"
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        want = model.likelihood.mean(model.decode(z.float()))[:, 0].double()
    assert torch.allclose(problem.fields(z), want, atol=1e-5)
    # the potential by hand: darcy pressures of the decoded fields, 5% of |y|, N(0, I) prior
    r = (darcy_pressure(want, pts) - y) / (0.05 * y.abs())
    hand = 0.5 * (r * r).sum(-1) + 0.5 * (z * z).sum(-1)
    assert torch.allclose(problem.potential(z), hand, rtol=1e-4)
    # adjoint + autograd gradient against central finite differences (float64 throughout)
    g = problem.grad_phi(z[:1])[0]
    h = 1e-6
    fd = torch.stack([(problem.phi(z[:1] + h * e) - problem.phi(z[:1] - h * e))[0] / (2 * h)
                      for e in torch.eye(4, dtype=torch.float64)])
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-6 * float(fd.abs().max()))
    zz = z[:1].clone().requires_grad_(True)
    (gp,) = torch.autograd.grad(problem.potential(zz).sum(), zz)
    assert torch.allclose(gp[0], g + z[0], rtol=1e-10)


def test_run_prior_normal_or_log_density():
    assert run_prior(LatentSpec.parse("normal/normal:3")) == "normal"
    latent = LatentSpec.parse("normal/laplace:2,normal/normal:1")
    log_p = run_prior(latent)
    z = torch.tensor([[0.3, -1.2, 0.5]], dtype=torch.float64)
    want = -math.log(2) * 2 - 0.3 - 1.2 - 0.5 * math.log(2 * math.pi) - 0.125
    assert float(log_p(z)[0]) == pytest.approx(want, rel=1e-12)


def test_kl_decoder_covariance():
    fixed = KLDecoder(8, 10, length_scale=0.2)
    assert torch.allclose(fixed.covariance(), KLExpansion(8, length_scale=0.2, dim=10)
                          .covariance(), atol=1e-10)
    # uncertain length scales: the expansion of the dataset's own covariance
    mix = KLDecoder(8, 64)
    assert torch.allclose(mix.covariance(), mix.full_covariance, atol=1e-9)
    x = sample_grf(40000, 8, seed=5).double().reshape(40000, -1)
    emp = torch.cov(x.T)
    assert float(torch.linalg.norm(emp - mix.full_covariance)
                 / torch.linalg.norm(mix.full_covariance)) < 0.03
    assert float(torch.linalg.norm(emp - torch.from_numpy(grf_covariance(8, length_scale=0.3)))
                 / torch.linalg.norm(emp)) > 0.05  # a single length scale is not the prior
    assert 0.9 < KLDecoder(8, 16).energy < 1 and KLDecoder(8, 4).energy < KLDecoder(8, 16).energy


def test_cli_invert_end_to_end_and_resume(run, capsys):
    out = run / "chain"
    args = ["invert", str(run), "--chains", "2", "--warmup", "150", "--samples", "150",
            "--out", str(out), "--truth-seed", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "602 new forward solves" in first and "status complete" in first
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s), SUMMARY_KEYS - set(s)
    assert s["chains"] == 2 and s["draws"] == 150 and 0 < s["acceptance"] < 1
    assert s["potential_evals"] == 2 * (1 + 150 + 150)
    assert s["ess_bulk_min_per_2000"] == pytest.approx(s["ess_bulk_min"] * 2000 / 300)
    assert s["nsswr"] > 0 and 0 < s["rel_l2_mean"] < 3 and s["settings"]["observations"] == 64
    idata = az.from_netcdf(str(out / "posterior.nc"), engine="h5netcdf")
    assert idata.posterior["z"].shape == (2, 150, 4)
    assert idata.observed_data["y"].shape == (64,) and idata.constant_data["truth"].shape == (8, 8)
    for name in PICTURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = (out / "state.pt").stat().st_mtime_ns
    assert main(args) == 0  # finished: no new solves, same chains
    assert "0 new forward solves" in capsys.readouterr().out
    assert (out / "state.pt").stat().st_mtime_ns == state
    again = json.loads((out / "summary.json").read_text())
    assert again["ess_bulk_min"] == s["ess_bulk_min"] and again["potential_evals"] == 2 * 301
    # another problem in the same folder is refused
    assert main(args[:-1] + ["2"]) == 2
    assert "truth_seed" in capsys.readouterr().err
    # so is a prior that now decodes the chain's codes to other fields (a retrained run)
    problem = json.loads((out / "problem.json").read_text())
    problem["decoder_probe"][0][0] += 0.01
    (out / "problem.json").write_text(json.dumps(problem))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "decoded its codes to other fields" in err and "Traceback" not in err
    # the report shows the chain folder's summary and pictures
    assert main(["report", str(out), "--out", str(run / "r.html")]) == 0
    page = (run / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "ess bulk min" in page


def test_kl_baseline_without_a_run(tmp_path, capsys):
    out = tmp_path / "kl"
    assert main(["invert", "--prior", "kl", "--grid", "8", "--dim", "4", "--chains", "2",
                 "--warmup", "100", "--samples", "100", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["prior"] == "kl" and s["settings"]["run"] is None
    assert s["draws"] == 100 and s["rel_l2_mean"] is not None
    assert "Karhunen-Loeve 4 terms" in s["settings"]["prior_description"]


def _bad(tmp_path, run, name):
    f = tmp_path / name
    if name == "outside.csv":
        pts = regular_points(4).numpy()
        pts[2] = [1.5, 0.2]
        np.savetxt(f, pts, delimiter=",")
        return ["--points", str(f)], "outside the domain"
    if name == "data.npy":
        np.save(f, np.ones(10))
        return ["--data", str(f)], "10 observations but there are 64"
    if name == "nan.npy":
        x = np.zeros((8, 8))
        x[3, 3] = np.nan
        np.save(f, x)
        return ["--truth-file", str(f)], "NaN"
    if name == "huge.npy":
        np.save(f, np.full((8, 8), 1000.0))
        return ["--truth-file", str(f)], "Darcy solve of the truth failed"
    raise AssertionError(name)


@pytest.mark.parametrize("case", [
    (["--noise", "0"], "--noise must be a positive"),
    (["--noise", "-0.1"], "--noise must be a positive"),
    (["--points", "60"], "not a square number"),
    (["--truth-resolution", "12"], "multiple of 8"),
    "outside.csv", "data.npy", "nan.npy", "huge.npy",
])
def test_bad_input_exit_2_with_one_line(case, run, tmp_path, capsys):
    args, words = _bad(tmp_path, run, case) if isinstance(case, str) else case
    rc = main(["invert", str(run), "--chains", "1", "--warmup", "5", "--samples", "5",
               "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1, err


def test_runs_that_do_not_fit(run, tmp_path, capsys):
    # no run and no grid
    assert main(["invert", "--prior", "kl", "--out", str(tmp_path / "o")]) == 2
    assert "--grid and --dim" in capsys.readouterr().err
    # a run of two-channel data is not a field decoder
    x = np.random.default_rng(0).normal(size=(120, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "two.npy", x)
    two = _train(tmp_path / "two", data=str(tmp_path / "two.npy"), limit=None)
    assert main(["invert", str(two), "--out", str(tmp_path / "o2")]) == 2
    assert "not one-channel square fields (1, n, n)" in capsys.readouterr().err
    # a Laplace latent prior: pCN refuses it, RWM samples it with the run's log p(z)
    lap = _train(tmp_path / "lap", latent="normal/laplace:3", limit=100)
    common = ["--chains", "2", "--warmup", "50", "--samples", "50"]
    assert main(["invert", str(lap), *common]) == 2
    assert "pCN needs" in capsys.readouterr().err
    assert main(["invert", str(lap), "--sampler", "rwm", *common]) == 0
    s = json.loads((lap / "invert-rwm-0" / "summary.json").read_text())
    assert s["settings"]["prior_description"] == "normal/laplace:3" and s["draws"] == 50


def test_a_failing_solve_stops_the_chain_and_keeps_its_draws(tmp_path):
    # log k = 400 z_0 everywhere: exp overflows once |z_0| > 1.77, the solve fails there
    pts = regular_points(4)

    def decoder(z):
        return (400 * z[:, :1, None]).expand(-1, 4, 4)

    y = darcy_pressure(torch.zeros(1, 4, 4, dtype=torch.float64), pts)[0]
    problem = InverseProblem(decoder, darcy_forward, pts, y, 1e6, "absolute", dim=2)
    phi = problem.phi(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    assert torch.isnan(phi[0]) and torch.isfinite(phi[1])
    kernel = PCNKernel(beta=0.9, adapt=False)  # near-flat misfit: proposals reach |z_0| > 1.77
    with pytest.warns(RuntimeWarning, match="NaN"):
        res = run_chains(problem.target(), kernel, tmp_path / "c", chains=2, warmup=0,
                         samples=3000, seed=0, init=torch.zeros(2, 2, dtype=torch.float64))
    assert res.status == "diverged" and "forward model failed" in res.reason
    assert 0 < res.draws.shape[1] < 3000 and np.isfinite(res.draws).all()
