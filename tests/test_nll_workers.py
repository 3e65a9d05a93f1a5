"""The K-sample NLL on several cores (issue 27): whole chunks of draws run side by side, each on
one core; the draws come from the calling thread in order, so the estimate does not depend on
the number of workers."""

import copy
import threading

import pytest
import torch

from autovae._cpu import ordered_map
from autovae.config import Config
from autovae.evaluation import evaluate
from autovae.models import build_model


def small_model():
    torch.manual_seed(0)
    return build_model(Config(hidden=64, depth=2, latent="logistic/normal:3,cauchy/cauchy:2",
                              latent_clip=50.0), (1, 28, 28)).eval()


def test_the_nll_per_image_is_the_same_for_one_and_for_several_workers():
    model = small_model()
    x = torch.rand(12, 1, 28, 28)

    def estimate(workers):
        torch.manual_seed(7)  # many chunks (budget: 5 draws each), more than the workers
        return model.log_likelihood(x, samples=200, budget=5 * 12 * 784, workers=workers)

    one = estimate(1)
    assert torch.isfinite(one).all()
    for workers in (2, 3):
        many = estimate(workers)
        assert torch.allclose(many, one, rtol=1e-6, atol=1e-4), (many - one).abs().max()
    assert not torch.allclose(estimate(1), model.log_likelihood(x, 200, 5 * 12 * 784, 1))


def test_evaluate_uses_all_threads_and_gives_the_one_thread_numbers():
    model, x = small_model(), torch.rand(30, 1, 28, 28)
    threads = torch.get_num_threads()
    readings = []
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            torch.manual_seed(3)
            readings.append(evaluate(model, x, nll_samples=100, nll_batch_size=10)["nll"])
        finally:
            torch.set_num_threads(threads)
    assert readings[0] == pytest.approx(readings[1], rel=1e-6)
    assert torch.get_num_threads() == threads


def test_ordered_map_keeps_order_grad_mode_and_one_core_per_worker():
    seen = []

    def task(i):
        seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))
        return i * i

    threads = torch.get_num_threads()
    with torch.no_grad():
        assert list(ordered_map(task, iter(range(20)), workers=3)) == [i * i for i in range(20)]
    assert {(n, grad) for _, n, grad in seen} == {(1, False)}
    assert threading.get_ident() not in {t for t, _, _ in seen}
    assert torch.get_num_threads() == threads
    assert list(ordered_map(task, range(3), workers=1)) == [0, 1, 4]  # in the calling thread
    assert seen[-1][0] == threading.get_ident()


def test_ordered_map_raises_the_first_error_and_stops():
    started = []

    def task(i):
        started.append(i)
        if i == 2:
            raise RuntimeError("chunk 2 failed")
        return i

    with pytest.raises(RuntimeError, match="chunk 2 failed"):
        list(ordered_map(task, range(1000), workers=2))
    assert len(started) < 20


def test_workers_must_be_a_count():
    with pytest.raises(ValueError, match="workers"):
        small_model().log_likelihood(torch.rand(2, 1, 28, 28), 10, workers=0)


KEEP = """
import resource, sys, torch
from autovae._cpu import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def chunk():  # the NLL's pattern: a few blocks of some MiB alive at once, then all freed
    blocks = [torch.ones(2000, 1000) for _ in range(4)]
    return sum(b[0, 0].item() for b in blocks)
for _ in range(3):
    chunk()
start = faults()
for _ in range(20):
    chunk()
print(kept, (faults() - start) / 20)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc")
def test_keep_freed_memory_stops_the_page_faults_of_each_chunk():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(__import__("pathlib").Path(__file__).parents[1] / "src")

    def run(mode, **extra):
        out = subprocess.run([sys.executable, "-c", KEEP, mode], env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0] == "True", float(out[1])

    kept, faults = run("keep")
    assert kept and faults < 10, faults  # (4 KiB pages: 2000 per block)
    assert run("keep", MALLOC_TOP_PAD_="0")[0] is False  # the user's own tuning is left alone
    before = run("as-is")[1]
    if before < 10:  # glibc's own dynamic mmap threshold sometimes absorbs this pattern
        pytest.skip(f"as glibc has it, this run page-faulted {before} times a chunk too: "
                    "nothing to compare against")


@pytest.mark.parametrize("onednn", [True, False])
def test_inference_forward_is_the_network_to_float_rounding(onednn, monkeypatch):
    from torch import nn

    from autovae import nets
    from autovae.nets import MLPDecoder, inference_forward

    if not onednn:  # (torch without oneDNN's fused linear: a linear and an in-place ReLU)
        monkeypatch.setattr(nets, "_onednn_linear", lambda: None)
    elif nets._onednn_linear() is None:
        pytest.skip("this torch has no oneDNN linear")
    torch.manual_seed(0)
    decoder = MLPDecoder(5, (1, 6, 6), hidden=32, depth=2)
    other = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.ReLU())
    z = torch.randn(70, 5) * 3
    with torch.no_grad():
        for net in (decoder, other, nn.Linear(5, 3)):
            fast, plain = inference_forward(net, z), net(z)
            assert fast.shape == plain.shape and (plain <= 0).any()  # (ReLUs that cut)
            assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5), (fast - plain).abs().max()
        wide = copy.deepcopy(decoder).double()  # (float64: MKL's path, oneDNN or not)
        assert torch.allclose(inference_forward(wide, z.double()), wide(z.double()), rtol=1e-12)
    with torch.enable_grad():  # with autograd: the network as it is
        assert inference_forward(decoder, z).requires_grad


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc")
def test_only_several_workers_set_the_process_wide_malloc_setting():
    import os
    import subprocess
    import sys

    code = ("import sys, torch; from autovae import _cpu; from autovae.config import Config; "
            "from autovae.models import build_model; torch.manual_seed(0); "
            "m = build_model(Config(hidden=16, depth=1), (1, 28, 28)).eval(); "
            "m.log_likelihood(torch.rand(2, 1, 28, 28), 20, workers=int(sys.argv[1])); "
            "print(_cpu._kept)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(__import__("pathlib").Path(__file__).parents[1] / "src")
    kept = [subprocess.run([sys.executable, "-c", code, str(w)], env=env, capture_output=True,
                           text=True, check=True).stdout.strip() for w in (1, 2)]
    assert kept == ["False", "True"]
