"""--jobs: the rows of a batch on N workers, with draws that do not depend on N.

Built-in models (threads), a user's model (threads or processes, gradients included), and a
UM-Bridge model through real local servers (``autovae serve-forward --workers``), never a mock:
requests in flight, a server that dies mid-batch (one line naming it; the chain folder
resumes to the draws an uninterrupted run gives).
"""

from __future__ import annotations

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
from autovae.inverse import invert, load_chains
from autovae.inverse.parallel import MAX_JOBS, check_jobs, chunks

pytest.importorskip("umbridge")
HERE = Path(__file__).parent


def _same_chains(a: Path, b: Path) -> None:
    """Every draw and per-draw statistic, warm-up included, and the kernel's final state."""
    ra, rb = load_chains(a), load_chains(b)
    assert ra.complete and rb.complete
    assert np.array_equal(ra.draws, rb.draws) and np.array_equal(ra.warmup_draws,
                                                                 rb.warmup_draws)
    for k in ra.stats:
        assert np.array_equal(ra.stats[k], rb.stats[k]), k
    assert np.array_equal(ra.step_size, rb.step_size)
    assert ra.solves == rb.solves
    blocks = sorted(p.name for p in (a / "blocks").iterdir())
    assert blocks == sorted(p.name for p in (b / "blocks").iterdir())
    for name in blocks:  # the block files themselves, byte for byte
        assert (a / "blocks" / name).read_bytes() == (b / "blocks" / name).read_bytes()


def test_chunks_cover_the_batch_in_order():
    assert chunks(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert chunks(2, 8) == [(0, 1), (1, 2)] and chunks(5, 1) == [(0, 5)]
    assert check_jobs(MAX_JOBS) == MAX_JOBS


@pytest.mark.parametrize("problem", ["aristoff-bangerth", "darcy"])
def test_jobs_1_and_2_give_bit_identical_chain_folders(tmp_path, problem, monkeypatch):
    from autovae.inverse import parallel

    monkeypatch.setattr(parallel, "MIN_SPLIT_S", 0.0)  # every batch split, however cheap
    kw = dict(problem=problem, kernel="chees", chains=6, warmup=8, draws=6,
              checkpoint_every=5, seed=2)
    if problem == "darcy":
        kw.update(grid=8, dim=6)
    one = invert(jobs=1, out=str(tmp_path / "one"), **kw)
    two = invert(jobs=2, out=str(tmp_path / "two"), **kw)
    assert one.chains.solves > 6 * 14 * 2  # every iteration a batched gradient at least
    _same_chains(tmp_path / "one", tmp_path / "two")
    assert one.summary["rhat_max"] == two.summary["rhat_max"]


@pytest.mark.parametrize("cls", ["TanhThreads", "TanhProcesses"])
def test_a_user_model_declared_parallel_gives_the_same_values_and_gradients(cls):
    from helpers import parallel_models

    model, serial = getattr(parallel_models, cls)(), parallel_models.Tanh()
    model.set_jobs(2)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn(5, 6, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = model(xa), serial(xb)
    assert torch.equal(ya.detach(), yb.detach())
    (ga,) = torch.autograd.grad((ya * w).sum(), xa)
    (gb,) = torch.autograd.grad((yb * w).sum(), xb)
    assert torch.equal(ga, gb)
    assert model.solves == serial.solves == 10  # five forward, five adjoint
    with torch.no_grad():
        assert torch.equal(model(x), serial(x))


def test_a_worker_error_leaves_no_stale_reply_and_close_workers_stops_them():
    from helpers.parallel_models import PickyTanh, Tanh

    model, serial = PickyTanh(), Tanh()
    model.set_jobs(2)
    procs = list(model._processes._procs)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bad = x + 1.0
    bad[0, 0] = 1e3  # the first worker's chunk fails, the second's succeeds
    with torch.no_grad():
        with pytest.raises(ValueError, match="above 100"):
            model(bad)
        assert torch.equal(model(x), serial(x))  # not the second worker's earlier reply
    model.close_workers()
    assert model.jobs == 1 and not any(p.is_alive() for p in procs)


def test_an_unpicklable_model_declared_parallel_is_refused_before_sampling(tmp_path, capsys):
    from helpers.parallel_models import Tanh, Unpicklable

    with pytest.raises(ValueError, match="cannot be pickled"):
        Unpicklable().set_jobs(2)
    Unpicklable().set_jobs(1)  # one worker: nothing to send
    y = Tanh()(torch.zeros(1, 4, dtype=torch.float64))[0].numpy()
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "chain"
    code = main(["invert", "--problem", "custom", "--forward", "helpers.parallel_models:"
                 "Unpicklable", "--data", str(tmp_path / "y.npy"), "--noise", "0.1",
                 "--prior", "kle", "--grid", "2", "--dim", "4", "--jobs", "2", "--out",
                 str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be pickled" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# -- UM-Bridge through real servers -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, port: int, workers: int = 1, env_extra=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, "-m", "autovae", "serve-forward", model, "--port",
                             str(port), "--workers", str(workers), "--name", "tanh"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the UM-Bridge server did not start") from None
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # a loaded machine: do not wait on its shutdown
        proc.kill()
        proc.wait(10)


def _invert(tmp_path, forward: str, out: str, jobs: int = 1) -> int:
    return main(["invert", "--problem", "custom", "--forward", forward, "--data",
                 str(tmp_path / "y.npy"), "--noise", "0.1", "--prior", "kle", "--grid", "2",
                 "--dim", "4", "--kernel", "chees", "--chains", "8", "--warmup", "10",
                 "--draws", "10", "--checkpoint-every", "4", "--jobs", str(jobs), "--out",
                 str(tmp_path / out), "--quiet"])


@pytest.fixture()
def data(tmp_path):
    from helpers.parallel_models import Tanh

    y = Tanh()(torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=torch.float64))[0].numpy()
    np.save(tmp_path / "y.npy", y)
    return tmp_path


def test_umbridge_requests_in_flight_give_the_draws_of_the_model_in_process(data, capsys):
    port = _free_port()
    server = _start("helpers.parallel_models:Tanh", port, workers=4)
    try:
        url = f"umbridge:http://127.0.0.1:{port}/tanh"
        assert _invert(data, url, "remote4", jobs=4) == 0
        assert _invert(data, url, "remote1", jobs=1) == 0
    finally:
        _stop(server)
    assert _invert(data, "helpers.parallel_models:Tanh", "local") == 0
    capsys.readouterr()
    _same_chains(data / "remote4", data / "remote1")
    a, b = load_chains(data / "remote4"), load_chains(data / "local")
    assert np.allclose(a.draws, b.draws, rtol=1e-9, atol=1e-12) and a.solves == b.solves


def test_a_server_that_dies_mid_batch_is_named_and_the_chain_folder_resumes(data, capsys):
    assert _invert(data, "helpers.parallel_models:Tanh", "local") == 0
    port = _free_port()
    url = f"umbridge:http://127.0.0.1:{port}/tanh"
    # the server exits three quarters into the run's evaluations (counted by the same run in
    # process), inside a batch, whatever the kernel's trajectory lengths (a fixed count broke
    # when ChEES's adaptation changed and the whole run took fewer evaluations than it)
    die_after = 3 * load_chains(data / "local").solves // 4
    server = _start("helpers.parallel_models:DyingTanh", port, workers=4,
                    env_extra={"AUTOVAE_TEST_DIE_AFTER": str(die_after)})
    try:
        capsys.readouterr()
        assert _invert(data, url, "remote", jobs=4) == 2
        err = capsys.readouterr().err
    finally:
        server.kill()
        server.wait(10)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"lost the UM-Bridge server at http://127.0.0.1:{port}" in err
    assert "nothing is lost" in err and "resumes" in err
    meta = json.loads((data / "remote" / "chain.json").read_text())
    assert meta["status"] == "running"
    part = load_chains(data / "remote")
    assert part.draws.shape[1] + part.warmup_draws.shape[1] > 0  # checkpoints were kept
    server = _start("helpers.parallel_models:Tanh", port, workers=4)
    try:
        assert _invert(data, url, "remote", jobs=4) == 0
    finally:
        _stop(server)
    a, b = load_chains(data / "remote"), load_chains(data / "local")
    assert np.allclose(a.draws, b.draws, rtol=1e-9, atol=1e-12)
    assert np.allclose(a.warmup_draws, b.warmup_draws, rtol=1e-9, atol=1e-12)


def test_a_server_that_does_not_answer_in_time_and_a_model_error_are_named(data, capsys):
    from autovae.inverse import UMBridgeForward

    port = _free_port()
    server = _start("helpers.parallel_models:Sleep50", port, workers=2)
    try:
        remote = UMBridgeForward(f"http://127.0.0.1:{port}/tanh", timeout=0.01)
        with pytest.raises(ValueError, match=r"did not answer Evaluate within 0.01 s "
                                             r"\(--forward-timeout\); nothing is lost"):
            remote(torch.zeros(2, 4, dtype=torch.float64))
        remote.timeout = 30.0
        remote.set_jobs(2)
        assert remote(torch.zeros(2, 4, dtype=torch.float64)).shape == (2, 6)
        with pytest.raises(ValueError, match="InvalidInput: Input parameter 0 has invalid "
                                             "length! Expected 4 but got 3"):
            remote._evaluate_rows(np.zeros((1, 3)))
        with pytest.raises(ValueError, match="UnsupportedFeature: Gradient not supported"):
            remote._gradient_rows(np.zeros((1, 4)), np.zeros((1, 6)))
    finally:
        _stop(server)


# -- the recipes of docs/distributed.md ---------------------------------------------------------
ROOT = HERE.parent


def test_the_hyperqueue_job_script_serves_the_model_and_reports_its_url(tmp_path):
    """examples/umbridge/hq-model-job.sh as HyperQueue would run it (its environment, its
    PORT): a real server on this node's address, its URL written where the load balancer
    reads it, and the model answering there as it does in process."""
    from autovae.inverse import DarcyForward, UMBridgeForward

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "autovae"  # this checkout's autovae, whatever is installed
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m autovae \"$@\"\n")
    shim.chmod(0o755)
    port = _free_port()
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               LOAD_BALANCER_DIR=str(tmp_path / "lb"), HQ_JOB_ID="7", PORT=str(port),
               AUTOVAE_MODEL="darcy")
    job = subprocess.Popen(["bash", str(ROOT / "examples" / "umbridge" / "hq-model-job.sh")],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        url_file = tmp_path / "lb" / "urls" / "url-7.txt"
        deadline = time.time() + 90
        while not url_file.is_file() or not url_file.read_text().strip():
            assert time.time() < deadline and job.poll() is None, "the job did not report"
            time.sleep(0.5)
        url = url_file.read_text().strip()
        assert url.endswith(f":{port}")
        remote = UMBridgeForward(f"{url}/darcy")
        x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
        assert torch.equal(remote(x.reshape(2, 256)), DarcyForward()(x))
    finally:
        os.killpg(job.pid, 15)
        job.wait(10)


def test_the_kubernetes_replicas_agree_with_the_cli_and_the_api(tmp_path):
    import yaml

    from autovae.cli import build_parser

    docs = list(yaml.safe_load_all((ROOT / "examples" / "umbridge" /
                                    "kubernetes-replicas.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    deploy, svc, ing = kinds["Deployment"], kinds["Service"], kinds["Ingress"]
    assert deploy["apiVersion"] == "apps/v1" and ing["apiVersion"] == "networking.k8s.io/v1"
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"] \
        == svc["spec"]["selector"]
    container = pod["spec"]["containers"][0]
    cmd = container["command"]
    assert cmd[:2] == ["autovae", "serve-forward"]
    args = build_parser().parse_args(cmd[1:])  # every flag exists
    assert args.host == "0.0.0.0" and args.workers == 1
    port = container["ports"][0]["containerPort"]
    assert args.port == port == svc["spec"]["ports"][0]["targetPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/Info", "port": port}
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"],
                       "port": {"number": svc["spec"]["ports"][0]["port"]}}
    timeout = kinds["ConfigMap"]["data"]["timeout-server"]
    assert timeout.endswith("m") and 60 * int(timeout[:-1]) > 600  # > --forward-timeout


def test_a_band_stack_gives_each_row_the_same_bits_wherever_it_sits_and_isolates_failures():
    from autovae.inverse.aristoff_bangerth import BandedPoissonQ1
    from autovae.inverse.parallel import BandStack

    solver = BandedPoissonQ1()
    rng = np.random.default_rng(4)
    theta = np.exp(rng.normal(0, 1, (7, 64)))
    theta[2, :] = -1.0  # not positive definite
    theta[4, 5] = np.inf  # a factor that is not finite

    def solve(rows):
        stack = BandStack(solver.n_dofs, solver.kd, len(rows))
        stack.factor(lambda blocks, lo, hi: blocks.__setitem__(
            (slice(lo, hi), solver._band_j, solver._band_d), solver.band(theta[rows][lo:hi])))
        rhs = np.tile(np.sin(np.arange(solver.n_dofs)), (len(rows), 1))
        return stack.status, stack.solve(rhs)

    status, u = solve(list(range(7)))
    assert status[2] > 0 and status[4] == -1 and not status[[0, 1, 3, 5, 6]].any()
    assert np.isnan(u[[2, 4]]).all() and np.isfinite(u[[0, 1, 3, 5, 6]]).all()
    for b in (0, 1, 3, 5, 6):  # alone, and at another place among other rows
        assert np.array_equal(solve([b])[1][0], u[b])
        assert np.array_equal(solve([6, 0, b])[1][2], u[b])


def test_run_rows_waits_for_every_chunk_before_raising_the_first_error():
    from autovae.inverse.parallel import run_rows

    done = []

    def work(a, b):
        if a == 0:
            raise ValueError("chunk 0 failed")
        time.sleep(0.2)  # still writing when chunk 0 has failed
        done.append(a)
        return a

    with pytest.raises(ValueError, match="chunk 0 failed"):
        run_rows(work, 4, 4, each=True)
    assert sorted(done) == [1, 2, 3]
    assert run_rows(lambda a, b: (a, b), 5, 2) == [(0, 2), (2, 5)]
    assert run_rows(lambda a, b: a, 3, 2, each=True) == [0, 1, 2]


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_a_batch_too_cheap_to_split_runs_here_and_gives_the_same_values(workers, monkeypatch):
    from autovae.inverse import parallel
    from autovae.inverse.darcy import DarcySolver

    monkeypatch.setattr(parallel, "WORKERS", workers)
    rng = np.random.default_rng(3)
    log_k, g = rng.normal(size=(6, 64)), rng.normal(size=(6, 64))
    one = DarcySolver(8)
    k, factors, p = one._forward(log_k)
    grad = one._adjoint(k, factors, p, g)
    two = DarcySolver(8)

    def run():
        k2, f2, p2 = two._forward(log_k, 2)
        assert np.array_equal(p2, p)
        assert np.array_equal(two._adjoint(k2, f2, p2, g, 2), grad)
        return f2[0]

    try:
        # ~0.1 ms a batch, far below MIN_SPLIT_S (raised here so that a loaded machine's
        # pause cannot lift a call above it): one chunk, here
        monkeypatch.setattr(parallel, "MIN_SPLIT_S", 10.0)
        for _ in range(4):
            assert run() == [(0, 6)]
        pool = two._pools[2]
        assert pool._key == 0 and len(pool._per_row["_forward_chunk", False]) == 4  # no message
        pool._per_row["_forward_chunk", False] = [parallel.MIN_SPLIT_S] * 2  # as if a row cost
        assert run() == [(0, 3), (3, 6)]  # split (processes: one message per worker)
        assert pool._key == (1 if workers == "processes" else 0)
        # split calls measured slower per row than unsplit ones (no free core): one chunk,
        # but every PROBE-th call split, to follow the load
        pool._per_row["_forward_chunk", True] = [2 * parallel.MIN_SPLIT_S]
        ways = [pool.parts("_forward_chunk", 6) for _ in range(2 * parallel.PROBE)]
        assert ways.count([(0, 3), (3, 6)]) == 2 and ways.count([(0, 6)]) == 2 * parallel.PROBE - 2
        pool._per_row["_forward_chunk", True] = [parallel.MIN_SPLIT_S / 2]  # split is faster
        ways = [pool.parts("_forward_chunk", 6) for _ in range(2 * parallel.PROBE)]
        assert ways.count([(0, 6)]) == 2
        monkeypatch.setattr(parallel, "MIN_SPLIT_S", 0.0)
        pool._per_row.clear()
        assert run() == [(0, 3), (3, 6)]  # 0: always split, even before any measurement
    finally:
        for pool in two._pools.values():
            pool.close()


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_chunk_workers_give_the_values_of_one_chunk_and_raise_after_every_reply(workers):
    from autovae.inverse.darcy import DarcySolver
    from autovae.inverse.parallel import ChunkWorkers

    solver = DarcySolver(8)
    rng = np.random.default_rng(2)
    log_k, g = rng.normal(size=(5, 64)), rng.normal(size=(5, 64))
    k, factors, p = solver._forward(log_k)
    grad = solver._adjoint(k, factors, p, g)
    pool = ChunkWorkers(solver, 2, workers)
    try:
        parts = chunks(5, 2)
        outs = pool.call("_forward_chunk", [(k[a:b],) for a, b in parts], keep=True)
        assert np.array_equal(np.concatenate([q for q, _ in outs]), p)
        got = pool.call_kept("_adjoint_chunk", [s for _, s in outs],
                             [(k[a:b], p[a:b], g[a:b]) for a, b in parts])
        assert np.array_equal(np.concatenate(got).reshape(grad.shape), grad)
        bad = k.copy()  # row 0: a field its banded Cholesky cannot factorise (e^600 contrast)
        signs = np.unpackbits(np.array([188, 54, 206, 147, 20, 202, 186, 171], dtype=np.uint8))
        bad[0] = np.exp(np.where(signs, 300.0, -300.0))
        with pytest.raises(ValueError, match="not numerically positive definite"):
            pool.call("_forward_chunk", [(bad[a:b],) for a, b in parts])
        again = pool.call("_forward_chunk", [(k[a:b],) for a, b in parts])  # no stale reply
        assert np.array_equal(np.concatenate([q for q, _ in again]), p)
    finally:
        pool.close()


def test_close_workers_stops_the_built_in_models_pools_and_their_rows_then_run_here(
        monkeypatch):
    from autovae.inverse import parallel
    from autovae.inverse.forward_models import AristoffBangerthForward, DarcyForward

    if parallel.WORKERS != "processes":
        pytest.skip("no fork: the built-in models use threads")
    monkeypatch.setattr(parallel, "MIN_SPLIT_S", 0.0)  # every batch split
    rng = np.random.default_rng(3)
    for model, x in ((AristoffBangerthForward(), np.exp(rng.normal(0, 0.3, (4, 64)))),
                     (DarcyForward(grid=8), rng.normal(0, 1, (4, 8, 8)))):
        x = torch.from_numpy(x)
        with torch.no_grad():
            one = model(x)
            model.set_jobs(2)
            assert torch.equal(model(x), one)
        solver = getattr(getattr(model, "benchmark", None), "_solver", None)
        if solver is not None:
            pools = [solver._workers]
        else:
            from autovae.inverse.darcy import _solver

            pools = list(_solver(8, 3.0, model.bc)._pools.values())
        procs = [proc for pool in pools for proc in pool._procs]
        assert procs and all(proc.is_alive() for proc in procs)
        model.close_workers()
        assert model.jobs == 1 and not any(proc.is_alive() for proc in procs)
        with torch.no_grad():
            assert torch.equal(model(x), one)


class Killed(Exception):
    """Stands for a kill (Pyro turns a RuntimeError in the potential into a divergence)."""


def _nuts_target(kill_after: int | None = None):
    from autovae.inverse.contract import Target

    g = torch.Generator().manual_seed(7)
    A = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, generator=g, dtype=torch.float64)
    rows = [0]  # in each process that evaluates it

    def phi(z):
        rows[0] += len(z)
        if kill_after is not None and rows[0] > kill_after:
            raise Killed("killed")
        r = (z @ A.T - y) / 0.7
        return 0.5 * (r * r).sum(-1)

    return Target(phi, 3)


def test_nuts_chains_in_processes_give_the_draws_of_one_process_and_resume(tmp_path):
    from autovae.inverse import run_chains
    from autovae.inverse.kernels import NUTSKernel

    def nuts(jobs):
        k = NUTSKernel()
        k.set_jobs(jobs)
        return k

    kw = dict(chains=3, warmup=30, draws=20, seed=4, checkpoint_every=7)
    one_target, two_target = _nuts_target(), _nuts_target()
    one = run_chains(one_target, nuts(1), tmp_path / "one", **kw)
    run_chains(two_target, nuts(2), tmp_path / "two", **kw)
    _same_chains(tmp_path / "one", tmp_path / "two")
    # the other process's gradients and solves are counted here
    assert (two_target.evals, two_target.gradients) == (one_target.evals, one_target.gradients)
    assert one.summary()["solves"] == load_chains(tmp_path / "two").summary()["solves"]
    # killed mid-run in one of the processes, resumed in two: the same draws
    cut = tmp_path / "cut"
    with pytest.raises((Killed, ValueError), match="killed"):
        run_chains(_nuts_target(kill_after=250), nuts(2), cut, **kw)
    assert not load_chains(cut).complete
    run_chains(_nuts_target(), nuts(2), cut, **kw)
    _same_chains(tmp_path / "one", cut)


class _Echo:
    def echo(self, x):
        return x


def test_chunk_workers_stop_when_dropped_and_a_dead_worker_is_one_value_error():
    import gc

    from autovae.inverse.parallel import WORKERS, ChunkWorkers

    if WORKERS != "processes":
        pytest.skip("no fork here")
    pool = ChunkWorkers(_Echo(), 3)
    assert pool.call("echo", [(1,), (2,), (3,)]) == [1, 2, 3]
    dead, alive = pool._procs
    dead.kill()
    dead.join()
    for _ in range(2):  # a send to the dead worker is the worker's error, not BrokenPipeError
        with pytest.raises(ValueError, match="worker process died"):
            pool.call("echo", [(1,), (2,), (3,)])
    del pool  # dropped (not closed): its workers stop, nothing keeps it alive until exit
    gc.collect()
    alive.join(timeout=10)
    assert not alive.is_alive()


def test_chunk_workers_carry_arrays_larger_than_a_pipe_buffer_both_ways():
    from autovae.inverse.parallel import WORKERS, ChunkWorkers

    if WORKERS != "processes":
        pytest.skip("no fork here")
    pool = ChunkWorkers(_Echo(), 2)
    try:
        big = np.random.default_rng(0).normal(size=(3, 300_000))  # 2.4 MB a row: many writes
        for _ in range(2):  # and the next message is read from its start
            out = pool.call("echo", [(big[:1],), (big[1:],)])
            assert np.array_equal(np.concatenate(out), big)
        assert pool.call("echo", [("a",), ({"b": None},)]) == ["a", {"b": None}]
    finally:
        pool.close()


class _Interrupted:
    def __init__(self):
        self.parent, self.interrupt = os.getpid(), False

    def echo(self, x):
        if self.interrupt and os.getpid() == self.parent:  # Ctrl-C here, the workers go on
            raise KeyboardInterrupt
        return x


def test_chunk_workers_after_an_interrupted_call_give_this_calls_values_and_survive_ctrl_c():
    import signal
    import time

    from autovae.inverse.parallel import WORKERS, ChunkWorkers

    if WORKERS != "processes":
        pytest.skip("no fork here")
    owner = _Interrupted()
    pool = ChunkWorkers(owner, 3)
    try:
        owner.interrupt = True
        with pytest.raises(KeyboardInterrupt):
            pool.call("echo", [(1,), (2,), (3,)])
        owner.interrupt = False
        assert pool.call("echo", [(4,), (5,), (6,)]) == [4, 5, 6]  # not the replies of 2, 3
        os.kill(pool._procs[0].pid, signal.SIGINT)  # Ctrl-C reaches the workers too
        time.sleep(0.5)
        assert pool._procs[0].is_alive()
        assert pool.call("echo", [(7,), (8,), (9,)]) == [7, 8, 9]
    finally:
        pool.close()
