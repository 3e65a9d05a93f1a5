"""autovae simulate: data for invert --data from a chosen truth through any forward model."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autovae.cli import main
from autovae.inverse.forward_models import AristoffBangerthForward, DarcyForward
from autovae.inverse.problems import truth_field
from autovae.inverse.simulate import read_truth, simulate

ROOT = Path(__file__).resolve().parents[1]


def test_darcy_data_is_the_problems_truth_through_the_model_plus_noise(tmp_path, capsys):
    y, t = tmp_path / "y.npy", tmp_path / "truth.csv"
    assert main(["simulate", "--forward", "darcy", "--truth", "grf:3", "--noise", "0.05",
                 "--noise-kind", "relative", "--seed", "7", "--out", str(y), "--truth-out",
                 str(t)]) == 0
    out = capsys.readouterr().out
    assert (f"invert it: autovae invert --problem custom --forward darcy --data {y} --noise 0.05 "
            f"--noise-kind relative --truth-file {t}") in out
    truth = torch.from_numpy(np.loadtxt(t, delimiter=","))
    # grf:3 is the field the Darcy problem draws for --truth-seed 3
    assert torch.equal(truth, truth_field(16, 3)[1])
    clean = DarcyForward()(truth[None])[0]
    data = torch.from_numpy(np.load(y))
    assert data.shape == (64,) and data.dtype == torch.float64
    eps = torch.randn(64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(data, clean + 0.05 * clean.abs() * eps, rtol=1e-12, atol=0)


def test_absolute_noise_has_the_asked_spread(tmp_path):
    forward = AristoffBangerthForward()
    sims = [simulate(forward, read_truth("1.5", forward), 0.05, seed=s) for s in range(6)]
    assert all(torch.equal(s.clean, sims[0].clean) for s in sims)
    z = torch.cat([(s.y - s.clean) / 0.05 for s in sims])  # 6 x 169 standard normals
    assert abs(float(z.mean())) < 4 / len(z) ** 0.5 and abs(float(z.std()) - 1) < 0.08
    assert not torch.equal(sims[0].y, sims[1].y)  # the seed draws the noise
    again = simulate(forward, read_truth("1.5", forward), 0.05, seed=0)
    assert torch.equal(again.y, sims[0].y)


def test_readme_custom_forward_simulated_then_inverted(tmp_path, monkeypatch, capsys):
    """The README's Heat class in a package: simulate needs it importable (else one line
    saying so), and the data it writes inverts."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class Heat" in b)
    package = tmp_path / "lib" / "mypackage"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(block)
    command = next(line for line in text.splitlines()
                   if line.startswith("autovae simulate --forward mypackage.models:Heat"))
    argv = command.split()[1:]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "autovae: error: --forward mypackage.models:Heat: cannot import mypackage.models (No "
        "module named 'mypackage'); is it on PYTHONPATH or installed?"]
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))  # as PYTHONPATH=lib does
    try:
        assert main(argv) == 0
        assert "--data y.npy --noise 0.01 --truth-file truth.npy" in capsys.readouterr().out
        y = np.load(tmp_path / "y.npy")
        truth = torch.from_numpy(np.load(tmp_path / "truth.npy"))
        assert y.shape == (8,) and truth.shape == (16, 16)
        assert np.abs(y - truth.reshape(-1)[:8].exp().numpy()).max() < 5 * 0.01
        assert main(["invert", "--problem", "custom", "--forward", "mypackage.models:Heat",
                     "--data", "y.npy", "--noise", "0.01", "--truth-file", "truth.npy",
                     "--prior", "kle", "--grid", "16", "--kernel", "pcn", "--chains", "2",
                     "--warmup", "20", "--draws", "20", "--out", "chain", "--quiet"]) == 0
        assert (tmp_path / "chain" / "summary.json").is_file()
    finally:
        for name in ("mypackage.models", "mypackage"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("spec, message", [
    ("grf:-1", "grf:SEED takes a seed >= 0"),
    ("inf", "give a finite number"),
    ("nofile.npy", "no such file"),
])
def test_bad_truths(spec, message):
    with pytest.raises(ValueError, match=message):
        read_truth(spec, DarcyForward())


def test_bad_noise():
    forward = DarcyForward()
    truth = read_truth("0", forward)
    for noise in (0.0, -1.0, float("nan"), True, "a lot"):
        with pytest.raises(ValueError, match="--noise must be a"):
            simulate(forward, truth, noise)
    with pytest.raises(ValueError, match="--noise-kind must be one of absolute, relative, got "
                                         "'fraction'"):
        simulate(forward, truth, 0.1, "fraction")
    with pytest.raises(ValueError, match=r"--seed must be an integer in \[0, "):
        simulate(forward, truth, 0.1, seed=-1)


def test_the_required_settings_are_named(capsys):
    assert main(["simulate", "--forward", "darcy", "--truth", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "autovae: error: autovae simulate needs --noise, --out (e.g. --forward darcy --truth "
        "grf:0 --noise 0.01 --out y.npy)")
