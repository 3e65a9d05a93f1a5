"""Simulation-based calibration: ranks of truths drawn from the prior are uniform when the
prior and the sampler are right, and the check fails on a deliberately overconfident prior."""

import numpy as np
import pytest
import torch

from autovae.inverse import ForwardModel, KarhunenLoeve, sbc


class ReadOut(ForwardModel):
    """The field's values at 9 fixed cells (a linear-Gaussian problem)."""

    name = "read-out"

    def __init__(self, n=6):
        super().__init__()
        self.cells = torch.tensor([0, 4, 8, 13, 17, 22, 27, 31, 35])
        self.param_shape, self.n_obs = (n, n), len(self.cells)

    def evaluate(self, params):
        return params.reshape(params.shape[0], -1)[:, self.cells]


def _run(tmp_path, variance, name):
    truth_prior = KarhunenLoeve(6, dim=6, length_scale=0.3)
    truths = truth_prior.params(truth_prior.sample(100, seed=11))
    prior = KarhunenLoeve(6, dim=6, length_scale=0.3, variance=variance)
    return sbc(prior, ReadOut(), truths, sigma=0.3, folder=tmp_path / name,
               quantities=[0, 7, 14, 21, 28, 35, 3, 20], chains=2, warmup=300, draws=400,
               thin=5, seed=0)


@pytest.mark.slow
def test_sbc_passes_the_right_prior_and_fails_an_overconfident_one(tmp_path):
    good = _run(tmp_path, 1.0, "good")
    assert good.rhat_max < 1.2  # the worst of 100 truths x 36 parameters, 2 chains each
    assert good.p_value > 0.01, (good.p_values, good.histogram())
    assert 0.85 < good.coverage_90 < 0.95 and 0.9 < good.coverage_2sd
    bad = _run(tmp_path, 0.25, "overconfident")  # prior sd half the truths'
    assert bad.p_value < 1e-6, bad.p_values
    h = bad.histogram()
    assert h[0] + h[-1] > 2 * h[len(h) // 2 - 1: len(h) // 2 + 1].sum()  # a U
    assert bad.coverage_90 < 0.8


@pytest.mark.slow
def test_sbc_passes_chees_on_the_right_prior(tmp_path):
    """ChEES adapts one step, trajectory and mass matrix from all 200 chains (100 truths, each
    its own posterior) and is then a fixed HMC kernel for every one of them: ranks uniform."""
    truth_prior = KarhunenLoeve(6, dim=6, length_scale=0.3)
    truths = truth_prior.params(truth_prior.sample(100, seed=11))
    good = sbc(truth_prior, ReadOut(), truths, sigma=0.3, folder=tmp_path / "chees",
               quantities=[0, 7, 14, 21, 28, 35, 3, 20], kernel="chees", chains=2, warmup=200,
               draws=400, thin=2, seed=0)
    assert good.rhat_max < 1.2
    assert good.p_value > 0.01, (good.p_values, good.histogram())
    assert 0.85 < good.coverage_90 < 0.95 and 0.9 < good.coverage_2sd


def test_sbc_refuses_nuts_and_bad_truths(tmp_path):
    prior = KarhunenLoeve(6, dim=6, length_scale=0.3)
    with pytest.raises(ValueError, match="truths must be"):
        sbc(prior, ReadOut(), torch.zeros(1, 6, 6), 0.3, tmp_path / "a")
    with pytest.raises(ValueError, match="one batch"):
        sbc(prior, ReadOut(), prior.params(prior.sample(3)), 0.3, tmp_path / "b",
            kernel="nuts", warmup=5, draws=5)
    assert np.isfinite(_quick(tmp_path).p_value)


def _quick(tmp_path):
    prior = KarhunenLoeve(6, dim=6, length_scale=0.3)
    return sbc(prior, ReadOut(), prior.params(prior.sample(10)), 0.3, tmp_path / "q",
               warmup=20, draws=20, thin=1)
