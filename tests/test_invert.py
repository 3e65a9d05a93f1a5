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

from autovae.cli import main
from autovae.config import Config
from autovae.inverse import (
    ChainFolder,
    DarcyForward,
    DecoderPrior,
    InverseProblem,
    KarhunenLoeve,
    PCNKernel,
    darcy_pressure,
    grf_covariance,
    invert,
    load_chains,
    reference_posterior,
    regular_points,
    run_chains,
    sample_grf,
)
from autovae.inverse.problems import truth_field
from autovae.run import load_trained
from autovae.training import train

SUMMARY_KEYS = {"status", "acceptance", "ess_bulk_min", "ess_bulk_median", "ess_tail_min",
                "ess_tail_median", "rhat_max", "ess_per_second", "ess_per_draw",
                "ess_per_1000_solves", "solves", "seconds", "converged", "nsswr",
                "rel_l2_mean", "ess_bulk_min_per_2000", "potential_evals", "coverage_1sd",
                "coverage_2sd", "coverage_50", "coverage_90", "coverage_95", "settings"}


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
    return InverseProblem(DecoderPrior.from_run(run), DarcyForward(8, 16), y, 0.05,
                          "relative"), pts, y


def test_from_run_potential_and_gradient(run):
    problem, pts, y = _problem(run)
    _, _, model, _ = load_trained(run, "cpu")
    assert problem.dim == 4 and problem.prior.param_shape == (8, 8) and problem.prior.normal
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        want = model.likelihood.mean(model.decode(z.float()))[:, 0].double()
    assert torch.allclose(problem.params(z), want, atol=1e-5)
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


def test_decoder_prior_normal_or_log_density(tmp_path):
    lap = _train(tmp_path / "lap", latent="normal/laplace:2,normal/normal:1", limit=100)
    prior = DecoderPrior.from_run(lap)
    assert not prior.normal
    z = torch.tensor([[0.3, -1.2, 0.5]], dtype=torch.float64)
    want = -math.log(2) * 2 - 0.3 - 1.2 - 0.5 * math.log(2 * math.pi) - 0.125
    assert float(prior.log_prior(z)[0]) == pytest.approx(want, rel=1e-12)


def test_karhunen_loeve_covariance():
    fixed = KarhunenLoeve(8, length_scale=0.2, dim=10)
    full = torch.from_numpy(grf_covariance(8, length_scale=0.2))
    assert float(torch.linalg.norm(fixed.covariance() - full) / torch.linalg.norm(full)) < 0.2
    # uncertain length scales: the expansion of the dataset's own covariance
    mix = KarhunenLoeve(8, dim=64, length_scale_range=(0.1, 0.5))
    x = sample_grf(40000, 8, seed=5).double().reshape(40000, -1)
    emp = torch.cov(x.T)
    assert float(torch.linalg.norm(emp - mix.covariance())
                 / torch.linalg.norm(mix.covariance())) < 0.03
    assert float(torch.linalg.norm(emp - torch.from_numpy(grf_covariance(8, length_scale=0.3)))
                 / torch.linalg.norm(emp)) > 0.05  # a single length scale is not the prior
    e16 = KarhunenLoeve(8, dim=16, length_scale_range=(0.1, 0.5)).energy
    assert 0.9 < e16 < 1 and KarhunenLoeve(8, dim=4, length_scale_range=(0.1, 0.5)).energy < e16


def test_cli_invert_end_to_end_and_resume(run, capsys):
    out = run / "chain"
    args = ["invert", str(run), "--chains", "2", "--warmup", "150", "--draws", "150",
            "--out", str(out), "--truth-seed", "1", "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "602 new PDE solves" in first and "status complete" in first
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s), SUMMARY_KEYS - set(s)
    assert s["chains"] == 2 and s["draws"] == 150 and 0 < s["acceptance"] < 1
    assert s["potential_evals"] == s["solves"] == 2 * (1 + 150 + 150)
    assert s["ess_bulk_min_per_2000"] == pytest.approx(s["ess_bulk_min"] * 2000 / 300)
    assert s["nsswr"] > 0 and 0 < s["rel_l2_mean"] < 3 and s["settings"]["kernel"] is None
    idata = az.from_netcdf(str(out / "posterior.nc"), engine="h5netcdf")
    assert idata.posterior["z"].shape == (2, 150, 4)
    assert idata.observed_data["y"].shape == (64,) and idata.constant_data["truth"].shape == (64,)
    for name in ChainFolder.PICTURES:
        if name == "reference_error.png":  # only where a reference posterior is known
            assert not (out / name).exists()
            continue
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = (out / "state.pt").stat().st_mtime_ns
    assert main(args) == 0  # finished: no new solves, same chains
    assert "0 new PDE solves" in capsys.readouterr().out
    assert (out / "state.pt").stat().st_mtime_ns == state
    again = json.loads((out / "summary.json").read_text())
    assert again["ess_bulk_min"] == s["ess_bulk_min"] and again["potential_evals"] == 2 * 301
    # another problem in the same folder is refused
    assert main(args[:-2] + ["2", "--quiet"]) == 2
    assert "truth_seed" in capsys.readouterr().err
    # so is a prior that now decodes the chain's codes to other fields (a retrained run)
    problem = json.loads((out / "problem.json").read_text())
    problem["prior_probe"][0][0] += 0.01
    (out / "problem.json").write_text(json.dumps(problem))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mapped its codes to other parameters" in err and "Traceback" not in err
    # the report shows the chain folder's summary and pictures
    assert main(["report", str(out), "--out", str(run / "r.html")]) == 0
    page = (run / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "ESS bulk, min" in page


def test_kle_baseline_without_a_run_and_renamed_flags(tmp_path, capsys):
    out = tmp_path / "kle"
    assert main(["invert", "--prior", "kle", "--grid", "8", "--dim", "4", "--chains", "2",
                 "--warmup", "100", "--draws", "100", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["prior"] == "kle" and s["settings"]["run"] is None
    assert s["draws"] == 100 and s["rel_l2_mean"] is not None
    problem = json.loads((out / "problem.json").read_text())
    assert problem["prior"] == "kle" and problem["dim"] == 4 and 0.5 < problem["energy"] < 1
    for old, new in (("--samples", "--draws"), ("--sampler", "--kernel")):
        with pytest.raises(SystemExit):
            main(["invert", old, "10"])
        assert f"{old} is now {new}" in capsys.readouterr().err
    assert main(["invert", "--prior", "kl", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'kle'" in capsys.readouterr().err


def _bad(tmp_path, run, name):
    f = tmp_path / name
    if name == "outside.csv":
        pts = regular_points(4).numpy()
        pts[2] = [1.5, 0.2]
        np.savetxt(f, pts, delimiter=",")
        return ["--points", str(f)], "outside the domain"
    if name == "data.npy":
        np.save(f, np.ones(10))
        return ["--data", str(f)], "data has 10 values but the forward model darcy gives 64"
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
    (["--noise", "0"], "--noise must be positive"),
    (["--noise", "-0.1"], "--noise must be >= 0"),
    (["--noise", "nan"], "--noise must be finite"),
    (["--step-size", "0"], "--step-size must be positive"),
    (["--step-size", "nan"], "--step-size must be finite"),
    (["--target-accept", "1.2"], "--target-accept must lie in (0, 1)"),
    (["--kernel", "pcn", "--step-size", "1.5"], "step_size must be in (0, 1]"),
    (["--chains", "0"], "--chains must be >= 1"),
    (["--chains", "true"], "--chains must be an integer"),
    (["--truth-resolution", "100000"], "(--truth-resolution 100000: "),
    (["--problem", "heat"], "--problem must be one of"),
    (["--forward", "umbridge:http://127.0.0.1:9/model", "--problem", "custom", "--data", "x"],
     "cannot reach a UM-Bridge server at http://127.0.0.1:9"),
    (["--points", "60"], "not a square number"),
    (["--truth-resolution", "12"], "multiple of 8"),
    (["--bc", "middle=dirichlet:1"], "--bc: unknown side 'middle'"),
    (["--bc", "left=robin:1"], "--bc left=robin: unknown kind 'robin'"),
    (["--bc", "left=dirichlet:inf"], "--bc left=dirichlet:inf: the value must be finite"),
    (["--bc", "left=neumann:0,right=neumann:0"], "every side is Neumann"),
    (["--bc", "left=dirichlet"], "--bc left=dirichlet: give kind:value"),
    "outside.csv", "data.npy", "nan.npy", "huge.npy",
])
def test_bad_input_exit_2_with_one_line(case, run, tmp_path, capsys):
    args, words = _bad(tmp_path, run, case) if isinstance(case, str) else case
    rc = main(["invert", str(run), "--chains", "1", "--warmup", "5", "--draws", "5",
               "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "state.pt").exists()  # nothing half-written


def test_runs_that_do_not_fit(run, tmp_path, capsys):
    # a run of two-channel data is not a field decoder
    x = np.random.default_rng(0).normal(size=(120, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "two.npy", x)
    two = _train(tmp_path / "two", data=str(tmp_path / "two.npy"), limit=None)
    assert main(["invert", str(two), "--out", str(tmp_path / "o2")]) == 2
    assert "not square log-permeability fields" in capsys.readouterr().err
    # a Laplace latent prior: pCN refuses it, RWM samples it with the run's log p(z)
    lap = _train(tmp_path / "lap", latent="normal/laplace:3", limit=100)
    common = ["--chains", "2", "--warmup", "50", "--draws", "50", "--quiet"]
    assert main(["invert", str(lap), "--kernel", "pcn", *common]) == 2
    assert "pCN needs" in capsys.readouterr().err
    assert main(["invert", str(lap), "--kernel", "rwm", *common]) == 0
    problem = json.loads((lap / "invert-rwm-0" / "problem.json").read_text())
    assert problem["prior_description"].endswith("normal/laplace:3")


class _Blowup(KarhunenLoeve):
    """log k = 400 z_0 everywhere: exp overflows once |z_0| > 1.77, the solve fails there."""

    def __init__(self):
        super().__init__(4, dim=2)

    def params(self, z):
        return (400 * z[:, :1, None]).expand(-1, 4, 4).to(torch.float64)


def test_a_failing_solve_stops_the_chain_and_keeps_its_draws(tmp_path):
    forward = DarcyForward(4, 4)
    y = forward(torch.zeros(1, 4, 4, dtype=torch.float64))[0]
    problem = InverseProblem(_Blowup(), forward, y, 1e6, "absolute")
    phi = problem.phi(torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert torch.isnan(phi[0]) and torch.isfinite(phi[1])
    kernel = PCNKernel(step_size=0.9, adapt=False)  # near-flat misfit: reaches |z_0| > 1.77
    with pytest.warns(RuntimeWarning, match="NaN"):
        res = run_chains(problem.target(), kernel, tmp_path / "c", chains=2, warmup=0,
                         draws=3000, seed=0, init=torch.zeros(2, 2, dtype=torch.float64))
    assert res.status == "diverged" and "forward model failed" in res.reason
    assert 0 < res.draws.shape[1] < 3000 and np.isfinite(res.draws).all()


def test_aristoff_bangerth_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "ab"
    args = ["invert", "--problem", "aristoff-bangerth", "--kernel", "nuts", "--chains", "2",
            "--warmup", "15", "--draws", "10", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "status complete" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    problem = json.loads((out / "problem.json").read_text())
    assert problem["forward"] == "aristoff-bangerth" and problem["prior"] == "benchmark"
    assert problem["n_obs"] == 169 and s["dim"] == 64 and s["kernel"] == "nuts"
    # every gradient is a forward and an adjoint solve: solves = forward rows + gradients
    assert s["solves"] == s["potential_evals"] + s["gradient_evals"] > 2 * 25
    assert {"coverage_2sd", "rel_l2_mean", "ess_per_1000_solves"} <= set(s)
    assert not s["converged"] and "ESS is a floor" in s["note"]  # 10 draws: not converged
    for bad, words in ((["--kernel", "pcn"], "pCN needs a N(0, I) prior"),
                       (["--prior", "kle"], "does not apply to aristoff-bangerth"),
                       (["--residual", "8"], "--residual adds a residual field to a run prior")):
        assert main([*args[:-3], *bad, "--out", str(tmp_path / "x"), "--quiet"]) == 2
        assert words in capsys.readouterr().err


def test_a_gan_is_a_prior_and_a_digits_vae_is_not(tmp_path, capsys):
    gan = tmp_path / "gan"
    config = Config(model="gan", data="darcy-grf-8", latent="normal/normal:4", hidden=32,
                    depth=1, epochs=1, limit=200, batch_size=50, val_size=50, seed=0)
    train(config, gan, progress=False)
    assert main(["invert", str(gan), "--chains", "2", "--warmup", "20", "--draws", "20",
                 "--quiet"]) == 0
    problem = json.loads((gan / "invert-pcn-0" / "problem.json").read_text())
    assert problem["prior"] == "run" and problem["prior_description"].startswith("gan")
    capsys.readouterr()
    digits = _train(tmp_path / "digits", data="digits", limit=200)
    assert main(["invert", str(digits), "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "trained on digits, not on darcy-grf fields" in err and "Traceback" not in err


def test_a_residual_field_restores_the_variance_a_prior_misses():
    from autovae.inverse import ResidualFieldPrior

    full = KarhunenLoeve(8, dim=64, length_scale_range=(0.1, 0.5))
    C = full.full_covariance()
    low = KarhunenLoeve(8, dim=3, length_scale_range=(0.1, 0.5))  # misses part of C
    prior = ResidualFieldPrior(low, C, terms=40, draws=20000)
    assert prior.dim == 43 and prior.normal and prior.base_variance_ratio < 0.8
    assert prior.variance_ratio == pytest.approx(1.0, abs=0.02)
    z = prior.sample(40000, seed=3)
    u = prior.params(z).reshape(len(z), -1)
    err = float(torch.linalg.norm(torch.cov(u.T) - C) / torch.linalg.norm(C))
    base = float(torch.linalg.norm(low.covariance() - C) / torch.linalg.norm(C))
    assert err < 0.05 < base
    # the base's own coordinates map as before; the residual adds a field of its own
    z0 = torch.zeros(1, 43, dtype=torch.float64)
    z0[0, 0] = 1.0
    assert torch.allclose(prior.params(z0), low.params(z0[:, :3]))
    with pytest.raises(ValueError, match="target_cov must be"):
        ResidualFieldPrior(low, torch.eye(10), terms=4)


def test_invert_settings_from_a_config_file(tmp_path, capsys):
    good = tmp_path / "invert.yaml"
    good.write_text("prior: kle\ngrid: 8\ndim: 4\nchains: 2\nwarmup: 20\ndraws: 20\n")
    out = tmp_path / "c"
    assert main(["invert", "--config", str(good), "--seed", "3", "--out", str(out),
                 "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["seed"] == 3 and s["settings"]["draws"] == 20 and s["draws"] == 20
    for text, words in (("draw: 20\n", "unknown invert setting 'draw'; did you mean 'draws'"),
                        ("samples: 20\n", "invert setting 'samples' is now 'draws'"),
                        ("chains: yes\n", "--chains must be an integer")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        assert main(["invert", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def test_aristoff_bangerth_error_against_the_reference_posterior(tmp_path):
    """With the benchmark's own prior, data and noise, the summary measures the posterior mean
    against the packaged reference, after all draws and against the solves spent."""
    res = invert(problem="aristoff-bangerth", kernel="rwm", chains=2, warmup=10, draws=40,
                 out=str(tmp_path / "ab"))
    ref, s = reference_posterior(), res.summary["reference"]
    theta = np.exp(load_chains(tmp_path / "ab").draws)  # the chain runs in ln theta
    for name, mean in (("theta", theta.mean((0, 1))), ("log_theta", np.log(theta).mean((0, 1)))):
        r = np.asarray(ref[name]["mean"])
        assert s[f"rel_l2_mean_{name}"] == pytest.approx(
            np.linalg.norm(mean - r) / np.linalg.norm(r), rel=1e-9)
        assert s[f"reference_rel_mcse_{name}"] == pytest.approx(
            np.linalg.norm(ref[name]["mcse"]) / np.linalg.norm(r), rel=1e-12)
    curve = s["curve"]
    spent = [c["solves_per_chain"] for c in curve]
    assert all(b > a for a, b in zip(spent, spent[1:], strict=False))
    assert spent[-1] * 2 == res.summary["solves"]  # the last draw has spent everything
    assert curve[-1]["rel_l2_mean_theta"] == s["rel_l2_mean_theta"]
    assert "R-hat" in s["source"] and (tmp_path / "ab" / "reference_error.png").is_file()
    # in the problem's own scale: the table of parameters is ArviZ's in ln theta (the chain's
    # z here), beside ln of the truth; the settings are those aristoff-bangerth reads
    from autovae.inverse.aristoff_bangerth import AristoffBangerth

    table = res.summary["parameters"]
    assert table["label"] == "ln θ" and table["parameters"] == 64
    z = load_chains(tmp_path / "ab").draws
    for row in table["rows"]:
        i = row["index"]
        ref_row = az.summary({"p": z[..., i]}, round_to="none").iloc[0]
        assert row["mean"] == pytest.approx(ref_row["mean"], rel=1e-12)
        assert row["sd"] == pytest.approx(ref_row["sd"], rel=1e-12)
        assert row["truth"] == pytest.approx(math.log(AristoffBangerth().theta_true[i]))
    settings = res.summary["settings"]
    assert "residual" in settings and "draws" in settings
    assert not {"grid", "points", "source", "bc", "truth_seed", "truth_resolution", "dim",
                "forward"} & set(settings)
    assert main(["report", str(tmp_path / "ab"), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert f"<td class=num>{s['rel_l2_mean_log_theta']:.3g} (its own MC error " in page
    assert "reference error" in page
    # another noise level is another posterior: no reference
    other = invert(problem="aristoff-bangerth", kernel="rwm", chains=2, warmup=5, draws=5,
                   noise=0.1, out=str(tmp_path / "ab2"))
    assert "reference" not in other.summary
