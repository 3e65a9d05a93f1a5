"""Sample quality: FID/KID/IS on domain and Inception features, the classifier cache, AVA's BM,
reconstruction metrics.

Fashion-MNIST tests read Debian's dataset-fashion-mnist offline (skipped without it) and use a
quick classifier (1 epoch on 10k images, trained once into a temporary cache); the full
classifier (2 epochs, all 55k images, >= 88% accuracy) is a slow test. Nothing is downloaded:
the Inception tests use a randomly initialised state_dict written to a temporary file.
"""

import dataclasses
import math
import socket
import time

import numpy as np
import pytest
import torch

from autovae.data import DataSplits, load_data
from autovae.quality import (
    DomainClassifier,
    balance_metric,
    balance_metric_images,
    domain_classifier,
    inception_features,
    reconstruction_metrics,
    sample_quality,
)
from autovae.quality import features as quality

QUICK_ACCURACY = 0.75  # 1 epoch on 10k training images: about 0.84
FULL_ACCURACY = 0.88  # 2 epochs on all 55k: about 0.91
TINY_EPOCHS = 3  # synthetic 8x8 data: 12 steps
N = 1500  # images per side for the Fashion-MNIST metric tests


# --------------------------------------------------------------------------- fixtures


def _synthetic(n: int = 1024, seed: int = 0) -> DataSplits:
    """8x8 images whose class k lights row k: a task any classifier learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 8, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    x[torch.arange(n), 0, y] = 1.0
    k = n // 4
    return DataSplits("tiny", x[2 * k:], x[k:2 * k], x[:k], y[2 * k:], y[k:2 * k], y[:k],
                      [str(i) for i in range(8)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A classifier of the synthetic data, cached in its own folder."""
    return domain_classifier("tiny", data=_synthetic(), cache_dir=tmp_path_factory.mktemp("c"),
                             epochs=TINY_EPOCHS)


@pytest.fixture(scope="module")
def fmnist():
    try:
        return load_data("fashion-mnist", limit=10000)
    except (ValueError, ImportError) as err:
        pytest.skip(f"Fashion-MNIST is not available offline ({err}); "
                    f"apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fm_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifiers")


@pytest.fixture(scope="module")
def fm_features(fmnist, fm_cache):
    """The quick Fashion-MNIST classifier (1 epoch on 10k images), trained into a tmp cache."""
    return domain_classifier("fashion-mnist", data=fmnist, cache_dir=fm_cache, epochs=1)


@pytest.fixture(scope="module")
def fm_scores(fmnist, fm_features):
    """Scores of test images against train images, noisy train images and uniform noise."""
    g = torch.Generator().manual_seed(1)
    real, train = fmnist.test[:N], fmnist.train[:N]
    fakes = {
        "train": train,
        "noisy": (train + 0.25 * torch.randn(train.shape, generator=g)).clamp(0, 1),
        "noise": torch.rand(train.shape, generator=g),
    }
    return {k: sample_quality(real, v, fm_features, kid_subset_size=500, kid_subsets=50)
            for k, v in fakes.items()}


# --------------------------------------------------------------------------- domain features


def test_quick_classifier_reaches_its_stated_accuracy(fm_features):
    assert not fm_features.from_cache
    assert fm_features.accuracy >= QUICK_ACCURACY, fm_features.metadata
    meta = fm_features.metadata
    assert meta["dataset"] == "fashion-mnist" and meta["test_images"] == 10000
    assert meta["train_images"] == 10000 and meta["epochs"] == 1
    assert fm_features.name == f"autovae-classifier:fashion-mnist:{meta['sha256'][:12]}"


def test_fid_kid_near_zero_for_test_vs_train_and_large_for_noise(fm_scores):
    train, noisy, noise = fm_scores["train"], fm_scores["noisy"], fm_scores["noise"]
    assert train["fid"] < 10 and train["fid"] < 0.01 * noise["fid"]
    assert train["fid"] < noisy["fid"] < noise["fid"]
    assert noise["fid"] > 300
    assert abs(train["kid_mean"]) < 0.002 * noise["kid_mean"]
    assert train["kid_mean"] < noisy["kid_mean"] < noise["kid_mean"]
    assert noise["kid_mean"] > 20 * noise["kid_std"]  # far outside the subset spread


def test_kid_is_unbiased_on_two_halves_of_one_set(fmnist, fm_features):
    x = fmnist.test[:2 * N]
    scores = sample_quality(x[:N], x[N:], fm_features, kid_subset_size=500, kid_subsets=50)
    # The biased (V-statistic) MMD^2 of the same features is clearly positive; KID is not.
    f, _ = fm_features.features(x)
    f = f.double()
    a, b = f[:500], f[N:N + 500]
    k = lambda u, v: (u @ v.T / f.shape[1] + 1) ** 3  # noqa: E731 - torchmetrics' kernel
    biased = float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())
    assert biased > 0
    assert abs(scores["kid_mean"]) < 0.1 * biased
    assert abs(scores["kid_mean"]) < scores["kid_std"]


def test_inception_score_of_real_data_exceeds_that_of_noise(fm_scores):
    train, noise = fm_scores["train"], fm_scores["noise"]
    assert train["is_mean"] > 4 and noise["is_mean"] < 2
    assert train["is_mean"] > noise["is_mean"] + 10 * (train["is_std"] + noise["is_std"])
    assert noise["is_real_mean"] == pytest.approx(train["is_real_mean"])  # same real set


def test_every_score_names_its_extractor_and_sample_counts(fm_scores, fm_features):
    s = fm_scores["train"]
    assert s["feature_extractor"] == fm_features.name
    assert s["feature_extractor_sha256"] == fm_features.metadata["sha256"]
    assert fm_features.name.endswith(s["feature_extractor_sha256"][:12])
    assert (s["real_images"], s["fake_images"]) == (N, N)
    assert (s["kid_subset_size"], s["kid_subsets"], s["is_splits"]) == (500, 50, 10)
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "is_real_mean"):
        assert math.isfinite(s[key]), key


def test_second_call_loads_the_cache_without_training(fm_features, fm_cache, fmnist,
                                                      monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(quality, "train_domain_classifier", no_training)
    started = time.perf_counter()
    again = domain_classifier("fashion-mnist", cache_dir=fm_cache)
    assert time.perf_counter() - started < 5
    assert again.from_cache and again.name == fm_features.name
    assert again.metadata == fm_features.metadata
    x = fmnist.test[:64]
    for a, b in zip(again.features(x), fm_features.features(x), strict=True):
        torch.testing.assert_close(a, b)


def test_first_use_trains_the_weights_every_thread_count_gives(tmp_path):
    """Issue 20: the classifier trained on first use must be the one later uses load, whatever
    the caller's thread count (parallel reductions used to make 1 and 2 threads differ)."""
    threads = torch.get_num_threads()
    names = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            names.append(domain_classifier("digits", cache_dir=tmp_path / str(n)).name)
            assert torch.get_num_threads() == n  # the caller's setting is given back
    finally:
        torch.set_num_threads(threads)
    assert names[0] == names[1], names


# --------------------------------------------------------------------------- cache integrity


def test_cache_file_records_checksum_and_loads_weights_only(tiny, tmp_path):
    first = domain_classifier("tiny", data=_synthetic(), cache_dir=tmp_path, epochs=TINY_EPOCHS)
    (path,) = tmp_path.glob("*.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["metadata"]["sha256"] == quality._weights_sha256(blob["state_dict"])
    assert set(blob["metadata"]) >= {"dataset", "accuracy", "test_images", "epochs", "sha256"}
    assert first.accuracy > 0.9  # the synthetic task is easy
    assert first.name == tiny.name  # same data and seed: the same weights


def test_tampered_weights_fail_the_checksum_and_are_retrained(tmp_path):
    data = _synthetic()
    first = domain_classifier("tiny", data=data, cache_dir=tmp_path, epochs=TINY_EPOCHS)
    (path,) = tmp_path.glob("*.pt")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["head.bias"][0] += 1.0  # metadata still records the old sha256
    torch.save(blob, path)
    with pytest.warns(UserWarning, match="corrupt classifier cache.*sha256"):
        again = domain_classifier("tiny", data=data, cache_dir=tmp_path, epochs=TINY_EPOCHS)
    assert not again.from_cache and again.name == first.name
    assert domain_classifier("tiny", cache_dir=tmp_path).from_cache  # the cache is whole again


def test_unreadable_cache_is_retrained_with_a_warning(tmp_path):
    data = _synthetic()
    domain_classifier("tiny", data=data, cache_dir=tmp_path, epochs=TINY_EPOCHS)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning, match="corrupt classifier cache.*unreadable"):
        again = domain_classifier("tiny", data=data, cache_dir=tmp_path, epochs=TINY_EPOCHS)
    assert not again.from_cache


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOVAE_CACHE", str(tmp_path))
    assert quality.classifier_cache_dir() == tmp_path / "classifiers"
    monkeypatch.delenv("AUTOVAE_CACHE")
    assert quality.classifier_cache_dir().parts[-3:] == (".cache", "autovae", "classifiers")


def test_classifier_needs_labels_and_images():
    data = _synthetic()
    with pytest.raises(ValueError, match="no labels"):
        quality.train_domain_classifier(dataclasses.replace(data, train_labels=None))
    flat = dataclasses.replace(data, train=data.train.flatten(1))
    with pytest.raises(ValueError, match="flatten"):
        quality.train_domain_classifier(flat)


def test_classifier_shapes():
    net = DomainClassifier((3, 32, 32), num_classes=5)
    x = torch.rand(2, 3, 32, 32)
    assert net.features(x).shape == (2, 128) and net(x).shape == (2, 5)


# --------------------------------------------------------------------------- sample_quality


def test_sample_quality_rejects_bad_input(tiny):
    x = _synthetic().test
    with pytest.raises(ValueError, match="kid_subset_size=1000 .* 256"):
        sample_quality(x, x, tiny)
    with pytest.raises(ValueError, match=r"takes \(1, 8, 8\)"):
        sample_quality(torch.rand(10, 1, 28, 28), torch.rand(10, 1, 28, 28), tiny)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*clamp"):
        sample_quality(x, x + 0.5, tiny, kid_subset_size=10)
    with pytest.raises(ValueError, match="NaN"):
        sample_quality(x, x * float("nan"), tiny, kid_subset_size=10)
    with pytest.raises(ValueError, match="at least 2"):
        sample_quality(x, x[:1], tiny, kid_subset_size=1)
    with pytest.raises(ValueError, match="is_splits"):
        sample_quality(x, x[:5], tiny, kid_subset_size=5)


def test_sample_quality_is_seeded_and_leaves_the_global_rng_alone(tiny):
    x = _synthetic(seed=1).train
    state = torch.get_rng_state()
    a = sample_quality(x[:80], x[80:], tiny, kid_subset_size=40, kid_subsets=10, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert a == sample_quality(x[:80], x[80:], tiny, kid_subset_size=40, kid_subsets=10, seed=3)
    b = sample_quality(x[:80], x[80:], tiny, kid_subset_size=40, kid_subsets=10, seed=4)
    assert a["kid_mean"] != b["kid_mean"] and a["fid"] == b["fid"]


def test_sample_quality_takes_flat_and_uint8_images(tiny):
    x = _synthetic(seed=2).train
    ref = sample_quality(x[:80], x[80:], tiny, kid_subset_size=40)
    flat = sample_quality(x[:80].flatten(1), x[80:].flatten(1), tiny, kid_subset_size=40)
    assert flat == ref
    as_bytes = (x * 255).round().to(torch.uint8)
    scores = sample_quality(as_bytes[:80], as_bytes[80:], tiny, kid_subset_size=40)
    assert scores["fid"] == pytest.approx(ref["fid"], rel=0.05, abs=0.05)


# --------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 state_dict with random weights: structurally the real file."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    mp = pytest.MonkeyPatch()
    mp.setattr(fe.torch, "load", lambda *args, **kwargs: {})  # no weights to read at __init__
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    try:
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                             feature_extractor_weights_path="unused")
    finally:
        mp.undo()
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to download or open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    monkeypatch.setattr(fe, "load_state_dict_from_url", refuse)


def test_inception_without_weights_is_a_clear_error(monkeypatch, offline):
    monkeypatch.delenv("AUTOVAE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="AUTOVAE_INCEPTION_WEIGHTS.*domain_classifier"):
        inception_features()
    monkeypatch.setenv("AUTOVAE_INCEPTION_WEIGHTS", "/nonexistent/weights.pth")
    with pytest.raises(ValueError, match="no such file"):
        inception_features()


def test_inception_refuses_a_file_that_is_not_its_state_dict(tmp_path, offline):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch state_dict"):
        inception_features(bad)
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ValueError, match="not torch-fidelity's InceptionV3 weights"):
        inception_features(bad)


def test_inception_runs_offline_from_a_local_file(random_inception_weights, monkeypatch,
                                                  offline):
    monkeypatch.setenv("AUTOVAE_INCEPTION_WEIGHTS", str(random_inception_weights))
    extractor = inception_features()
    assert extractor.name.startswith("inception-v3-compat:random-inception.pth:")
    x = _synthetic().test[:6]  # greyscale 8x8: repeated to RGB, resized to 299 by torch-fidelity
    features, logits = extractor.features(x[:1])
    assert features.shape == (1, 2048) and logits.shape == (1, 1008)
    scores = sample_quality(x[:3], x[3:], extractor, kid_subset_size=2, kid_subsets=5,
                            is_splits=2)
    assert scores["feature_extractor"] == extractor.name
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std"):
        assert math.isfinite(scores[key]), key


# --------------------------------------------------------------------------- AVA balance metric


def test_balance_metric_matches_a_hand_computation():
    # d(1 - d) per pixel, averaged per image, then over images.
    assert balance_metric([[0.5, 0.0, 1.0, 0.25]]) == pytest.approx(0.4375 / 4)
    assert balance_metric([[0.5], [0.1, 0.9, 0.0]]) == pytest.approx((0.25 + 0.18 / 3) / 2)
    assert balance_metric(np.full((3, 2, 2), 0.5)) == pytest.approx(0.25)  # the maximum


def test_balance_metric_of_images_one_best_image_against_the_dataset():
    best = torch.tensor([[[0.5, 0.0], [1.0, 0.25]]])  # (1, 2, 2)
    images = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.2)])
    # image 0: d = .5 0 1 .25 -> .25 0 0 .1875; image 1: d = .3 .2 .8 .05 -> .21 .16 .16 .0475
    expected = ((0.25 + 0.1875) / 4 + (0.21 + 0.16 + 0.16 + 0.0475) / 4) / 2
    assert balance_metric_images(best, images) == pytest.approx(expected)
    paired = balance_metric_images(best.expand(2, 1, 2, 2), images)  # one per dataset image
    assert paired == pytest.approx(expected)


def test_balance_metric_of_rgb_images_takes_the_colour_distance_and_its_absolute_value():
    generated = torch.tensor([[[1.0, 0.3]], [[1.0, 0.0]], [[1.0, 0.4]]])  # (3, 1, 2)
    images = torch.zeros(1, 3, 1, 2)
    # d = sqrt(3) and 0.5: d(1 - d) = sqrt(3) - 3 (negative) and 0.25.
    s3 = math.sqrt(3)
    assert balance_metric_images(generated, images) == pytest.approx((3 - s3 + 0.25) / 2)
    assert balance_metric_images(generated, images, absolute=False) == pytest.approx(
        (s3 - 3 + 0.25) / 2)


def test_balance_metric_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        balance_metric([[0.5, -0.1]])
    with pytest.raises(ValueError, match="pixels"):
        balance_metric(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="one image"):
        balance_metric_images(torch.rand(1, 3, 3), torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        balance_metric_images(torch.full((1, 2, 2), 2.0), torch.rand(2, 1, 2, 2))


# --------------------------------------------------------------------------- reconstructions


def test_reconstruction_metrics_of_identical_images():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert reconstruction_metrics(x, x) == {"mse": 0.0, "psnr": math.inf, "ssim": 1.0}


def test_reconstruction_metrics_of_a_known_perturbation():
    c, delta = 0.4, 0.1
    x = torch.full((2, 1, 12, 12), c)
    m = reconstruction_metrics(x, x + delta)
    assert m["mse"] == pytest.approx(delta**2)
    assert m["psnr"] == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    # Constant images: no variance, so SSIM is its luminance term alone.
    c1 = 0.01**2
    assert m["ssim"] == pytest.approx((2 * c * (c + delta) + c1) / (c**2 + (c + delta) ** 2 + c1))


def test_reconstruction_metrics_fall_with_noise_and_take_flat_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g)
    small = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    large = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    a, b = reconstruction_metrics(x, small), reconstruction_metrics(x, large)
    assert a["psnr"] > b["psnr"] and 1 > a["ssim"] > b["ssim"]
    assert reconstruction_metrics(x.flatten(1), small.flatten(1), image_shape=(1, 28, 28)) == a
    with pytest.raises(ValueError, match="one reconstruction per image"):
        reconstruction_metrics(x, small[:4])
    with pytest.raises(ValueError, match="clamp"):
        reconstruction_metrics(x, small + 1)


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_full_classifier_reaches_88_percent(tmp_path):
    try:
        data = load_data("fashion-mnist")
    except (ValueError, ImportError) as err:
        pytest.skip(f"Fashion-MNIST is not available offline ({err})")
    started = time.perf_counter()
    features = domain_classifier("fashion-mnist", data=data, cache_dir=tmp_path)
    seconds = time.perf_counter() - started
    print(f"full classifier: accuracy {features.accuracy:.4f} in {seconds:.1f} s "
          f"({torch.get_num_threads()} threads)")
    assert features.metadata["epochs"] == 2 and features.metadata["train_images"] == 55000
    assert features.accuracy >= FULL_ACCURACY


def test_evaluate_quality_from_the_command_line(tmp_path, monkeypatch):
    """``autovae evaluate RUN --quality`` adds named sample-quality metrics to metrics.json."""
    import json

    from autovae.cli import main
    from autovae.config import Config
    from autovae.training import train

    monkeypatch.setenv("AUTOVAE_CACHE", str(tmp_path / "cache"))
    config = Config(data="digits", epochs=3, batch_size=64, hidden=64, depth=1, lr=3e-3,
                    latent="normal/normal:4", nll_samples=5)
    train(config, tmp_path / "run", progress=False)
    assert main(["evaluate", str(tmp_path / "run"), "--quality", "--quiet",
                 "--quality-images", "300"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["feature_extractor"].startswith("autovae-classifier:digits:")
    assert metrics["real_images"] == metrics["fake_images"] == 300
    assert metrics["fid"] > 0 and metrics["is_mean"] >= 1
    assert 0 < metrics["balance_metric"] <= 0.25 and 0 < metrics["recon_ssim"] <= 1
    assert "test_nll" in metrics  # the bounds stay beside the quality metrics
