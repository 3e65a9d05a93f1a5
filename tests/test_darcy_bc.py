"""Darcy boundary conditions as a setting (``--bc``): the default is the Darcy case's own
(unchanged results), Dirichlet pressures and Neumann fluxes give the exact linear solutions,
second-order convergence with a source, adjoint gradients against finite differences, bad
input refused by name, and ``autovae invert --bc`` end to end.

Convention: a Neumann value is the outward flux Q = -k dp/dn through the side (0 = no flux).
"""

import json
import math

import numpy as np
import pytest
import torch

from autovae.cli import main
from autovae.inverse import (
    BoundaryConditions,
    DarcyForward,
    DarcySolver,
    InverseConfig,
    darcy_pressure,
    regular_points,
)
from autovae.inverse.boundary import DEFAULT_BC

# points inside, on every side and corner, and within half a cell of each side
EDGE_POINTS = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.37],
                            [1.0, 0.62], [0.44, 0.0], [0.58, 1.0], [0.02, 0.51], [0.985, 0.3],
                            [0.5, 0.015], [0.21, 0.99], [0.33, 0.66], [0.5, 0.5]],
                           dtype=torch.float64)


def points():
    return torch.cat([regular_points(16), EDGE_POINTS])


def constant(n, k):
    return torch.full((1, n, n), math.log(k), dtype=torch.float64)


# ---------------------------------------------------------------- the default is today's


def test_the_default_conditions_reproduce_the_darcy_case():
    n = 8
    lk = torch.tensor([[[0.8 * math.sin(i + 2 * j) for j in range(n)] for i in range(n)]],
                      dtype=torch.float64)
    pts = [[0.0, 0.0], [0.03, 0.5], [0.5, 0.5], [0.97, 0.99], [1.0, 0.25], [0.31, 1.0]]
    # the observations and gradients the solver gave before the conditions were a setting
    # (bit for bit on the machine that wrote them; a tolerance for other BLAS/SuperLU builds)
    before = [float.fromhex(h) for h in (
        "0x0.0p+0", "0x1.7bc3f0ed8dadep-5", "0x1.986355ead931dp-2", "0x1.b567438399592p-6",
        "0x0.0p+0", "0x1.579ebfa6dbf4bp-2")]
    grad_before = [float.fromhex(h) for h in (
        "-0x1.857c051e2b9adp-7", "-0x1.b390829f30fc4p-8", "-0x1.f6b6f222603fep-6")]
    spellings = [None, DEFAULT_BC, "left=dirichlet:0", "top=neumann:0,bottom=neumann:-0",
                 {"right": ("dirichlet", 0)}, BoundaryConditions()]
    results = []
    for bc in spellings:
        x = lk.clone().requires_grad_(True)
        fwd = DarcyForward(n, pts, bc=bc)
        y = fwd(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        results.append((y.detach(), g))
        assert "bc" not in fwd.describe()  # the record of the default is as it was
    for y, g in results[1:]:  # every spelling of the default: the same numbers exactly
        assert torch.equal(y, results[0][0]) and torch.equal(g, results[0][1])
    y, g = results[0]
    np.testing.assert_allclose(y[0].numpy(), before, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([g[0, 0, 0], g[0, 3, 4], g[0, 7, 7]], grad_before, rtol=1e-10)
    assert str(BoundaryConditions.parse(None)) == DEFAULT_BC == \
        "left=dirichlet:0,right=dirichlet:0,bottom=neumann:0,top=neumann:0"
    assert InverseConfig().bc == DEFAULT_BC


# ---------------------------------------------------------------- exact solutions


@pytest.mark.parametrize("n,k", [(8, 1.0), (16, 2.5)])
def test_dirichlet_one_and_zero_give_the_linear_pressure(n, k):
    # no source, p = 1 on x = 0, p = 0 on x = 1, no flux on y = 0, 1: p = 1 - x exactly (the
    # scheme and the interpolation are exact for a linear pressure), whatever k(y) is
    pts = points()
    bc = "left=dirichlet:1,right=dirichlet:0,bottom=neumann:0,top=neumann:0"
    p = DarcyForward(n, pts, source=0.0, bc=bc)(constant(n, k))[0]
    np.testing.assert_allclose(p.numpy(), 1 - pts[:, 0].numpy(), rtol=0, atol=1e-10)
    layered = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 1))).expand(n, n)
    p = DarcyForward(n, pts, source=0.0, bc=bc)(layered[None].contiguous())[0]
    np.testing.assert_allclose(p.numpy(), 1 - pts[:, 0].numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("q", [0.7, -1.3])
def test_a_neumann_flux_gives_the_linear_pressure_of_that_flux(q):
    # outward flux Q = -k dp/dn. p = 0 on x = 0 and Q out through x = 1 (n = +x):
    # -k p' = Q, so p = -Q x / k; near x = 1 the observation extends the last centre's value
    # by the gradient -Q / k, exact here too
    n, k, pts = 8, 2.5, points()
    x, y = pts[:, 0].numpy(), pts[:, 1].numpy()
    p = DarcyForward(n, pts, source=0.0, bc=f"left=dirichlet:0,right=neumann:{q}")(
        constant(n, k))[0]
    np.testing.assert_allclose(p.numpy(), -q * x / k, rtol=0, atol=1e-12)
    # Q out through x = 0 (n = -x): k p' = Q there, p = P + Q (x - 1) / k with p(1) = P
    p = darcy_pressure(constant(n, k), pts, 0.0, f"left=neumann:{q},right=dirichlet:0.3")[0]
    np.testing.assert_allclose(p.numpy(), 0.3 + q * (x - 1) / k, rtol=0, atol=1e-12)
    # along y: p = 2 on y = 0, Q out through y = 1, no flux on x = 0, 1: p = 2 - Q y / k
    bc = f"left=neumann:0,right=neumann:0,bottom=dirichlet:2,top=neumann:{q}"
    p = darcy_pressure(constant(n, k), pts, 0.0, bc)[0]
    np.testing.assert_allclose(p.numpy(), 2 - q * y / k, rtol=0, atol=1e-12)


def test_a_source_with_dirichlet_and_neumann_sides_converges_at_second_order():
    # -k p'' = f, p(0) = a, -k p'(1) = Q: p = a + ((f - Q) x - f x^2 / 2) / k
    f, q, a, k = 3.0, 0.5, 0.2, 1.7
    pts = torch.tensor([[x, 0.4] for x in np.linspace(0, 1, 21)], dtype=torch.float64)
    x = pts[:, 0].numpy()
    exact = a + ((f - q) * x - f * x**2 / 2) / k
    errors = [abs(darcy_pressure(constant(n, k), pts, f, f"left=dirichlet:{a},right=neumann:{q}")
                  [0].numpy() - exact).max() for n in (8, 16, 32)]
    assert errors[0] < 3e-3
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5, errors


def test_the_flux_balance_holds_on_every_side():
    # the outward fluxes through the four sides sum to the source's integral
    n, f = 12, 2.0
    bc = "left=dirichlet:1,right=neumann:0.4,bottom=neumann:-0.3,top=dirichlet:-1"
    lk = np.random.default_rng(1).normal(0, 0.7, size=(n, n))
    k = np.exp(lk)
    p = DarcySolver(n, f, bc).solve(torch.from_numpy(lk)[None])[0].numpy()
    h = 1.0 / n
    left = (2 * k[:, 0] * (p[:, 0] - 1.0)).sum()        # p = 1 half a cell away
    top = (2 * k[-1, :] * (p[-1, :] + 1.0)).sum()       # p = -1 half a cell away
    right, bottom = 0.4 * h * n, -0.3 * h * n
    assert left + top + right + bottom == pytest.approx(f, rel=1e-10)


# ---------------------------------------------------------------- adjoint gradients


@pytest.mark.parametrize("bc", [
    "left=dirichlet:1,right=dirichlet:0",
    "left=dirichlet:1.5,right=neumann:0.4,bottom=neumann:-0.3,top=dirichlet:-1",
    "left=neumann:0.5,right=dirichlet:0,bottom=dirichlet:0.2,top=neumann:0.2",
])
@pytest.mark.parametrize("source", ["number", "field"])
def test_adjoint_gradient_matches_central_differences(bc, source):
    n = 8
    rng = np.random.default_rng(5)
    f = 1.3 if source == "number" else rng.normal(size=(n, n))
    fwd = DarcyForward(n, points(), source=f, bc=bc)
    logk = torch.from_numpy(rng.normal(0, 0.8, size=(2, n, n))).requires_grad_(True)
    w = torch.from_numpy(rng.normal(size=(2, fwd.n_obs)))

    def J(lk):
        return (w * fwd(lk)).sum()

    (grad,) = torch.autograd.grad(J(logk), logk)
    eps, worst = 1e-5, 0.0
    for _ in range(4):
        v = torch.from_numpy(rng.normal(size=(2, n, n)))
        with torch.no_grad():
            fd = (J(logk + eps * v) - J(logk - eps * v)) / (2 * eps)
        worst = max(worst, float(abs(fd - (grad * v).sum()) / abs(fd)))
    assert worst < 1e-6, worst  # measured ~1e-9


def test_cell_pressures_pass_gradcheck_with_dirichlet_values():
    n = 5
    logk = torch.from_numpy(np.random.default_rng(2).normal(size=(1, n, n))).requires_grad_(True)
    solver = DarcySolver(n, 0.5, "left=dirichlet:2,right=neumann:1,top=dirichlet:-1")
    assert torch.autograd.gradcheck(lambda a: (solver.solve(a) ** 2).sum(), (logk,),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bc, words", [
    ("middle=dirichlet:1", "unknown side 'middle'"),
    ("left=robin:1", "unknown kind 'robin'"),
    ("left=dirichlet:nan", "left=dirichlet:nan: the value must be finite"),
    ("right=neumann:inf", "right=neumann:inf: the value must be finite"),
    ("left=dirichlet:x", "left=dirichlet:x: 'x' is not a number"),
    ("left=neumann:0,right=neumann:1", "every side is Neumann"),
    ("left=dirichlet", "left=dirichlet: give kind:value"),
    ("left:dirichlet:1", "'left:dirichlet:1' is not side=kind:value"),
    ("left=dirichlet:1,", "is not side=kind:value"),
    ("", "--bc is empty"),
    ("left=dirichlet:1,left=dirichlet:0", "side 'left' is given twice"),
    (3, "--bc must be a string"),
])
def test_bad_conditions_are_refused_naming_them(bc, words):
    for build in (BoundaryConditions.parse, lambda b: DarcyForward(4, 4, bc=b),
                  lambda b: InverseConfig(bc=b) if isinstance(b, str) else
                  BoundaryConditions.parse(b)):
        with pytest.raises(ValueError) as err:
            build(bc)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    if bc == "left=neumann:0,right=neumann:1":
        assert "at least one side Dirichlet" in str(err.value)


# ---------------------------------------------------------------- the command line


def test_invert_with_boundary_conditions_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "bc"
    args = ["invert", "--prior", "kle", "--grid", "8", "--dim", "4", "--points", "16",
            "--kernel", "pcn", "--chains", "1", "--warmup", "10", "--draws", "20",
            "--source", "0", "--bc", "left=dirichlet:1, right=dirichlet:0", "--out", str(out),
            "--quiet"]
    assert main(args) == 0
    assert "31 new PDE solves" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    full = "left=dirichlet:1,right=dirichlet:0,bottom=neumann:0,top=neumann:0"
    assert s["settings"]["bc"] == full and s["draws"] == 20 and s["rel_l2_mean"] is not None
    assert json.loads((out / "problem.json").read_text())["bc"] == full
    # the data are the truth's pressures under these conditions: without a source they lie
    # between 0 and 1 (maximum principle; 5% noise) and fall from x = 0 towards x = 1
    import arviz as az

    y = az.from_netcdf(str(out / "posterior.nc"), engine="h5netcdf").observed_data["y"].values
    y = y.reshape(4, 4)  # rows y, columns x
    assert 0 < y.min() and y.max() < 1.2 and (y[:, 0] > y[:, -1]).all(), y
    # the same conditions spelled in full resume (no new solves); others are refused by name
    assert main(args[:-5] + ["--bc", full, "--out", str(out), "--quiet"]) == 0
    assert "0 new PDE solves" in capsys.readouterr().out
    assert main(args[:-5] + ["--bc", "left=dirichlet:2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bc: folder" in err and "Traceback" not in err
    # a config file spells them the same way
    cfg = tmp_path / "invert.yaml"
    cfg.write_text("prior: kle\ngrid: 8\ndim: 4\npoints: '16'\nkernel: pcn\nchains: 1\n"
                   "warmup: 10\ndraws: 20\nsource: 0\nbc: left=dirichlet:1,right=dirichlet:0\n")
    assert main(["invert", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "0 new PDE solves" in capsys.readouterr().out
    cfg.write_text("prior: kle\nbc: left=robin:1\n")
    assert main(["invert", "--config", str(cfg), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "unknown kind 'robin'" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_bc_is_refused_for_the_other_problems(tmp_path, capsys):
    assert main(["invert", "--problem", "aristoff-bangerth", "--bc", "left=dirichlet:1",
                 "--out", str(tmp_path / "ab")]) == 2
    err = capsys.readouterr().err
    assert "--bc applies to --problem darcy" in err and err.count("\n") == 1
    assert not (tmp_path / "ab").exists()
