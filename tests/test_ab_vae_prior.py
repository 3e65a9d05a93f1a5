"""A VAE prior on the Aristoff-Bangerth benchmark (issue 18's last item): the dataset of its
prior's draws, a tiny VAE trained on them accepted as the benchmark's prior (theta =
exp(decoder)), ``--residual`` end to end, and runs on other data refused.
"""

import json
import math

import numpy as np
import pytest
import torch

from autovae.cli import main
from autovae.config import Config
from autovae.data import load_data
from autovae.inverse import (
    AristoffBangerth,
    AristoffBangerthForward,
    DecoderPrior,
    ExpPrior,
    InverseProblem,
    LogDensityPrior,
    ResidualFieldPrior,
)
from autovae.inverse.datasets import AB_PRIOR_MEAN, AB_PRIOR_SD, aristoff_bangerth_prior_fields
from autovae.training import train


def test_the_prior_dataset_is_deterministic_and_iid_normal_4_4():
    d = load_data("aristoff-bangerth-prior")
    assert d.train.shape == (20000, 1, 8, 8) and len(d.val) == len(d.test) == 1000
    again = load_data("aristoff-bangerth-prior")
    assert torch.equal(d.train, again.train) and torch.equal(d.test, again.test)
    # the benchmark's density exp(-sum ln(theta)^2 / 8) w.r.t. d theta is, in phi = ln theta,
    # exp(-phi^2 / 8 + phi): N(4, 2^2), its mode where the two terms balance
    assert AB_PRIOR_SD == AristoffBangerth.prior_sd and AB_PRIOR_MEAN == 4.0
    x = d.train.double().reshape(len(d.train), 64)
    n = x.numel()
    assert abs(float(x.mean()) - 4.0) < 5 * 2.0 / math.sqrt(n)
    assert abs(float(x.std()) - 2.0) < 5 * 2.0 / math.sqrt(2 * n)
    per_block = x.mean(0)  # every block the same law: 64 means within sampling error
    assert float((per_block - 4.0).abs().max()) < 5 * 2.0 / math.sqrt(len(x))
    corr = torch.corrcoef(x.T) - torch.eye(64, dtype=torch.float64)
    assert float(corr.abs().max()) < 5 / math.sqrt(len(x))  # independent blocks
    other = aristoff_bangerth_prior_fields(500, seed=1)
    assert not np.allclose(other, aristoff_bangerth_prior_fields(500, seed=0))


@pytest.fixture(scope="module")
def ab_run(tmp_path_factory):
    """A tiny VAE: 1 epoch on 300 draws of the benchmark's prior."""
    folder = tmp_path_factory.mktemp("ab") / "run"
    train(Config(data="aristoff-bangerth-prior", likelihood="gaussian", latent="normal/normal:4",
                 hidden=32, depth=1, epochs=1, limit=300, batch_size=50, val_size=50, seed=0),
          folder, progress=False)
    return folder


def test_a_vae_on_the_prior_draws_is_the_benchmarks_prior_with_a_residual(ab_run, tmp_path,
                                                                          capsys):
    out = tmp_path / "res"
    args = ["invert", str(ab_run), "--problem", "aristoff-bangerth", "--residual", "12",
            "--kernel", "pcn", "--chains", "2", "--warmup", "5", "--draws", "5", "--out",
            str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    problem = json.loads((out / "problem.json").read_text())
    s = json.loads((out / "summary.json").read_text())
    assert problem["prior"] == "run+residual" and problem["transform"] == "exp"
    assert problem["residual_terms"] == 12 and problem["forward"] == "aristoff-bangerth"
    assert s["dim"] == 4 + 12 and s["status"] == "complete" and s["draws"] == 5
    for key in ("rel_l2_mean", "coverage_2sd", "coverage_90"):  # in theta and in ln theta
        assert s[key] is not None and s[f"log_{key}"] is not None
    # the plain VAE: the default prior once a run folder is given
    plain = tmp_path / "plain"
    assert main([*args[:4], *args[6:-2], str(plain), "--quiet"]) == 0
    assert json.loads((plain / "problem.json").read_text())["prior"] == "run"


def test_exp_prior_maps_the_decoder_and_the_residual_to_theta(ab_run):
    base = DecoderPrior.from_run(ab_run)
    assert base.param_shape == (8, 8)
    res = ResidualFieldPrior(base, 4 * torch.eye(64, dtype=torch.float64), 64, draws=4000)
    # the residual restores what the decoder misses of 4 I (all of it, up to sampling error)
    assert res.base_variance_ratio < 0.9 and res.variance_ratio > 0.97
    prior = ExpPrior(res)
    z = prior.sample(3, seed=2)
    assert torch.allclose(prior.params(z), res.params(z).exp())
    assert torch.equal(prior.log_prior(z), res.log_prior(z)) and prior.normal
    # pixel [by, bx] is block bx + 8 by: a row-major flatten is the benchmark's order
    bench = AristoffBangerth()
    p = InverseProblem(prior, AristoffBangerthForward(), bench.data, bench.sigma)
    theta = prior.params(z).reshape(3, 64)
    assert torch.allclose(p.predict(z), bench.forward(theta))


def test_log_scale_metrics_of_positive_parameters():
    bench = AristoffBangerth()
    prior = LogDensityPrior(bench.log_prior, (64,), "benchmark")
    p = InverseProblem(prior, AristoffBangerthForward(), bench.data, bench.sigma)
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(400, 64, generator=gen, dtype=torch.float64)  # phi ~ N(0, 1)
    truth = bench.theta_true
    log_cal = p.calibration(draws, truth, log=True)
    t = truth.log()
    inside = ((draws.mean(0) - t).abs() <= 2 * draws.std(0, correction=0)).double().mean()
    assert log_cal["coverage_2sd"] == pytest.approx(float(inside))
    # the quantile bands do not depend on the scale; the sd-based coverage does
    assert log_cal["coverage_90"] == p.calibration(draws, truth)["coverage_90"]
    m = p.metrics(draws[:50], truth, metric_draws=5)
    assert m["log_rel_l2_mean"] == pytest.approx(
        float(torch.linalg.norm(draws[:50].mean(0) - t) / torch.linalg.norm(t)))


def test_a_proposal_beyond_double_precision_is_a_nan_not_an_abort():
    bench = AristoffBangerth()
    prior = LogDensityPrior(bench.log_prior, (64,), "benchmark")
    p = InverseProblem(prior, AristoffBangerthForward(), bench.data, bench.sigma)
    z = torch.zeros(3, 64, dtype=torch.float64)
    z[0] = 200 * torch.randn(64, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)  # ratios of e^600: no factorisation
    with pytest.raises(ValueError, match="not numerically positive definite"):
        bench.forward(z[:1].exp())  # the benchmark itself refuses
    z[1, 0] = 800.0  # theta overflows to inf
    phi = p.phi(z)
    assert torch.isnan(phi[:2]).all() and torch.isfinite(phi[2])
    g = p.grad_phi(z[2:])
    assert torch.isfinite(g).all()


def test_runs_on_other_data_or_shapes_are_refused(ab_run, tmp_path, capsys):
    digits = tmp_path / "digits"  # 8x8 like the benchmark's blocks, but no prior of it
    train(Config(data="digits", likelihood="gaussian", latent="normal/normal:2", hidden=8,
                 depth=1, epochs=1, limit=100, batch_size=50, val_size=50, seed=0), digits,
          progress=False)
    base = ["--problem", "aristoff-bangerth", "--kernel", "pcn", "--chains", "2", "--warmup",
            "2", "--draws", "2", "--quiet"]
    assert main(["invert", str(digits), *base, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "trained on digits, not on aristoff-bangerth fields" in err and "Traceback" not in err
    fields = tmp_path / "fields.npy"  # a run on the user's own 4x4 fields: the wrong shape
    np.save(fields, np.random.default_rng(0).normal(size=(200, 1, 4, 4)).astype(np.float32))
    small = tmp_path / "small"
    train(Config(data=str(fields), likelihood="gaussian", latent="normal/normal:2", hidden=8,
                 depth=1, epochs=1, batch_size=50, val_size=20, seed=0), small, progress=False)
    assert main(["invert", str(small), *base, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "generates data of shape (4, 4), not the benchmark's 64 log-coefficients" in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "s").exists()
