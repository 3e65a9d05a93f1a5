"""UM-Bridge: a real server on 127.0.0.1 (``autovae serve-forward``) serving our Darcy model,
inverted through over HTTP. Not a mock: the chains through the server must equal the chains
with the model in process, and a server model without Gradient refuses NUTS with the reason.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autovae.cli import main
from autovae.inverse import DarcyForward, UMBridgeForward

pytest.importorskip("umbridge")
HERE = Path(__file__).parent
BC = "left=dirichlet:1,right=neumann:0.5,top=dirichlet:0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoGradientDarcy(DarcyForward):
    """The Darcy model on an 8x8 grid that does not offer its gradient."""

    name = "darcy-nograd"
    gradient = False
    gradient_reason = "this model has no gradient"

    def __init__(self):
        super().__init__(8, 16)


class SmallDarcy(DarcyForward):
    name = "darcy8"

    def __init__(self):
        super().__init__(8, 16)


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "autovae", "serve-forward", *spec,
                               "--port", str(p)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
             for spec, p in ((["test_umbridge:SmallDarcy"], port),
                             (["test_umbridge:NoGradientDarcy"], port + 1),
                             (["darcy", "--bc", BC, "--name", "darcy-bc"], port + 2))]
    try:
        deadline = time.time() + 60
        for p in (port, port + 1, port + 2):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", p), timeout=1):
                        break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError("the UM-Bridge server did not start") from None
                    time.sleep(0.3)
        yield port
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_the_served_model_matches_the_model_in_process(server):
    remote = UMBridgeForward(f"http://127.0.0.1:{server}/darcy8")
    local = SmallDarcy()
    assert remote.param_shape == (64,) and remote.n_obs == 16 and remote.gradient
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(remote(x.reshape(3, 64)), local(x))
    # the gradient through the server's Gradient equals the adjoint gradient in process
    w = torch.randn(3, 16, dtype=torch.float64)
    xr = x.reshape(3, 64).clone().requires_grad_(True)
    xl = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad((remote(xr) * w).sum(), xr)
    (gl,) = torch.autograd.grad((local(xl) * w).sum(), xl)
    assert torch.allclose(gr, gl.reshape(3, 64), rtol=1e-12, atol=1e-14)
    assert remote.solves == 3 + 3 + 3  # 2 x three forward solves, three gradients


def test_darcy_served_with_other_boundary_conditions(server):
    # autovae serve-forward darcy --bc ...: the served model is DarcyForward(bc=...)
    remote = UMBridgeForward(f"http://127.0.0.1:{server + 2}/darcy-bc")
    local = DarcyForward(bc=BC)
    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(remote(x.reshape(2, 256)), local(x))
    assert not torch.allclose(local(x), DarcyForward()(x))


def test_inverting_through_the_server_equals_inverting_in_process(server, tmp_path, capsys):
    truth = torch.zeros(1, 8, 8, dtype=torch.float64)
    y = SmallDarcy()(truth)[0].numpy() + 0.001
    np.save(tmp_path / "y.npy", y)
    common = ["--problem", "custom", "--data", str(tmp_path / "y.npy"), "--noise", "0.01",
              "--prior", "kle", "--grid", "8", "--dim", "4", "--kernel", "mala", "--chains", "2",
              "--warmup", "20", "--draws", "20", "--quiet"]
    url = f"umbridge:http://127.0.0.1:{server}/darcy8"
    assert main(["invert", "--forward", url, "--out", str(tmp_path / "remote"), *common]) == 0
    assert main(["invert", "--forward", "test_umbridge:SmallDarcy",
                 "--out", str(tmp_path / "local"), *common]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "remote" / "summary.json").read_text())
    b = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert a["solves"] == b["solves"] > 0
    assert a["ess_bulk_min"] == pytest.approx(b["ess_bulk_min"], rel=1e-9)
    import arviz as az

    za = az.from_netcdf(str(tmp_path / "remote" / "posterior.nc")).posterior["z"].values
    zb = az.from_netcdf(str(tmp_path / "local" / "posterior.nc")).posterior["z"].values
    assert np.allclose(za, zb, rtol=1e-9, atol=1e-12)


def test_a_model_without_gradient_refuses_nuts_and_samples_with_pcn(server, tmp_path, capsys):
    y = NoGradientDarcy()(torch.zeros(1, 8, 8, dtype=torch.float64))[0].numpy()
    np.save(tmp_path / "y.npy", y)
    url = f"umbridge:http://127.0.0.1:{server + 1}/darcy-nograd"
    remote = UMBridgeForward(url[len("umbridge:"):])
    assert not remote.gradient and "does not support Gradient" in remote.gradient_reason
    common = ["--problem", "custom", "--forward", url, "--data", str(tmp_path / "y.npy"),
              "--noise", "0.01", "--prior", "kle", "--grid", "8", "--dim", "4", "--chains", "2",
              "--warmup", "10", "--draws", "10", "--quiet"]
    assert main(["invert", "--kernel", "nuts", "--out", str(tmp_path / "n"), *common]) == 2
    err = capsys.readouterr().err
    assert "--kernel nuts needs gradients" in err and "does not support Gradient" in err
    assert not (tmp_path / "n").exists()
    assert main(["invert", "--kernel", "pcn", "--out", str(tmp_path / "p"), *common]) == 0
    # a wrong model name and a server of another size are clear errors
    assert main(["invert", "--kernel", "pcn", "--out", str(tmp_path / "q"),
                 *[c if c != url else url + "x" for c in common]]) == 2
    assert "has no model 'darcy-noradx'" in capsys.readouterr().err.replace("nograd", "norad")


def test_a_model_of_another_size_is_refused(server, tmp_path, capsys):
    """A prior whose parameter count or data whose length differ from the model's input and
    output sizes: exit 2, one line naming both sizes, no chain folder."""
    url = f"umbridge:http://127.0.0.1:{server}/darcy8"
    y = SmallDarcy()(torch.zeros(1, 8, 8, dtype=torch.float64))[0].numpy()
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "short.npy", y[:-3])
    base = ["invert", "--problem", "custom", "--forward", url, "--noise", "0.01", "--prior",
            "kle", "--dim", "4", "--kernel", "pcn", "--chains", "2", "--warmup", "5",
            "--draws", "5", "--quiet"]
    for extra, words in (
            (["--grid", "4", "--data", str(tmp_path / "y.npy")], "64"),
            (["--grid", "8", "--data", str(tmp_path / "short.npy")], str(len(y))),
    ):
        out = tmp_path / f"bad{len(extra)}{words}"
        assert main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_a_umbridge_cheap_model_gets_forward_timeout_and_jobs(server, tmp_path):
    """Delayed acceptance's cheap model through UM-Bridge: --forward-timeout and --jobs reach
    it as they reach a UM-Bridge fine model (the fine model here is in-process)."""
    from autovae.inverse.config import InverseConfig
    from autovae.inverse.inversion import _delayed
    from autovae.inverse.problems import PROBLEMS

    truth = torch.zeros(1, 8, 8, dtype=torch.float64)
    np.save(tmp_path / "y.npy", SmallDarcy()(truth)[0].numpy() + 0.001)
    cfg = InverseConfig.from_dict(dict(
        problem="custom", forward="test_umbridge:SmallDarcy", data=str(tmp_path / "y.npy"),
        noise=0.01, prior="kle", grid=8, dim=4, subchain=2, jobs=3, forward_timeout=7.5,
        coarse_forward=f"umbridge:http://127.0.0.1:{server}/darcy8"))
    problem = PROBLEMS[cfg.problem](cfg).problem
    d = _delayed(cfg, problem, "rwm", None)
    try:
        assert d["cheap"].timeout == 7.5 and d["cheap"].jobs == 3
    finally:
        d["cheap"].close_workers()
