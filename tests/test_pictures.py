import math
import os
import re

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from autovae import pictures
from autovae.pictures import (
    PAD_VALUE,
    SCATTER_ALPHA,
    as_images,
    interpolate_codes,
    latent_figure,
    latent_map,
    save_grid,
    save_interpolation,
    save_reconstructions,
)

PAD = round(PAD_VALUE * 255)  # 128: the grey between tiles


def px(v) -> int:
    """The byte save_image writes for value v (floor(255 v + 0.5) in float32)."""
    return int(np.floor(np.float32(v) * np.float32(255) + np.float32(0.5)))


def read(path) -> np.ndarray:
    """PNG -> (H, W, 3) uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def tile(img, top, left, h, w) -> np.ndarray:
    return img[top:top + h, left:left + w]


def constant_images(values, c=1, h=4, w=5) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, c, h, w)


def near_colour(img: np.ndarray, rgb, tol=8.0) -> np.ndarray:
    """Mask of pixels showing colour ``rgb`` drawn at any opacity in [SCATTER_ALPHA, 1] on white."""
    c = np.asarray(rgb, dtype=float) * 255
    lo = SCATTER_ALPHA * c + (1 - SCATTER_ALPHA) * 255  # one point over the white background
    p = img[..., :3].astype(float)
    seg = c - lo
    t = np.clip(((p - lo) @ seg) / max(seg @ seg, 1e-9), 0, 1)
    dist = np.linalg.norm(p - (lo + t[..., None] * seg), axis=-1)
    return dist < tol


# --------------------------------------------------------------------------- grids


def test_grid_tiles_at_expected_positions_and_size(tmp_path):
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    h, w, p, nrow = 4, 5, 3, 4
    out = save_grid(constant_images(values, h=h, w=w), tmp_path / "g.png", nrow=nrow, padding=p)
    assert out == tmp_path / "g.png"
    img = read(out)
    rows, cols = math.ceil(len(values) / nrow), nrow
    assert img.shape == (rows * (h + p) + p, cols * (w + p) + p, 3)
    for k, v in enumerate(values):
        r, c = divmod(k, nrow)
        t = tile(img, p + r * (h + p), p + c * (w + p), h, w)
        assert (t == px(v)).all(), k
    # the padding and the two unused slots of the last row are pad grey
    assert (img[:p] == PAD).all() and (img[:, :p] == PAD).all()
    assert (tile(img, p + 1 * (h + p), p + 2 * (w + p), h, w) == PAD).all()


def test_grid_default_is_square_ish_and_flat_input_needs_shape(tmp_path):
    x = torch.rand(10, 12)  # flat (N, D), images 3 x 4
    img = read(save_grid(x, tmp_path / "g.png", image_shape=(3, 4)))
    # ceil(sqrt(10)) = 4 columns, 3 rows, padding 2
    assert img.shape[:2] == (3 * (3 + 2) + 2, 4 * (4 + 2) + 2)
    first = tile(img, 2, 2, 3, 4)[..., 0]
    np.testing.assert_array_equal(first, np.floor(x[0].reshape(3, 4).numpy() * 255 + 0.5))
    with pytest.raises(ValueError, match="image_shape"):
        save_grid(x, tmp_path / "bad.png")


def test_grid_colour_clamping_uint8_and_single_image(tmp_path):
    rgb = torch.zeros(3, 3, 2, 2)
    rgb[0, 0] = 1.0  # red
    rgb[1] = torch.tensor([2.0, -1.0, float("nan")]).reshape(3, 1, 1)  # clamped: (255, 0, 0)
    rgb[2, 2] = 1.0  # blue
    img = read(save_grid(rgb, tmp_path / "c.png", nrow=3, padding=1))
    assert (tile(img, 1, 1, 2, 2) == [255, 0, 0]).all()
    assert (tile(img, 1, 4, 2, 2) == [255, 0, 0]).all()
    assert (tile(img, 1, 7, 2, 2) == [0, 0, 255]).all()

    u8 = torch.full((1, 1, 3, 3), 51, dtype=torch.uint8)
    img = read(save_grid(u8, tmp_path / "u.png", padding=2))
    assert img.shape[:2] == (7, 7)  # a single image is padded too
    assert (tile(img, 2, 2, 3, 3) == 51).all() and (img[0] == PAD).all()


def test_grid_bad_input(tmp_path):
    with pytest.raises(ValueError, match="ndim"):
        save_grid(torch.rand(5), tmp_path / "a.png")
    with pytest.raises(ValueError, match="channels"):
        save_grid(torch.rand(2, 2, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="N = 0"):
        save_grid(torch.rand(0, 1, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="nrow"):
        save_grid(torch.rand(2, 1, 4, 4), tmp_path / "a.png", nrow=0)
    with pytest.raises(ValueError, match="PNG"):
        save_grid(torch.rand(2, 1, 4, 4), tmp_path / "a.jpg")
    assert list(tmp_path.iterdir()) == []


def test_reconstructions_pair_originals_above(tmp_path):
    n, ncol, h, w, p = 5, 3, 4, 4, 2
    orig = constant_images([0.1 * (k + 1) for k in range(7)], h=h, w=w)  # 7 given, 5 drawn
    rec = constant_images([1.0 - 0.1 * (k + 1) for k in range(7)], h=h, w=w).flatten(1)  # flat
    img = read(save_reconstructions(orig, rec, tmp_path / "r.png", n=n, ncol=ncol, padding=p))
    sep = max(2, p)
    group_h = 2 * h + 3 * p
    assert img.shape[:2] == (2 * group_h + sep, ncol * (w + p) + p)
    for k in range(n):
        g, c = divmod(k, ncol)
        top, left = g * (group_h + sep) + p, p + c * (w + p)
        assert (tile(img, top, left, h, w) == px(orig[k, 0, 0, 0])).all(), k
        assert (tile(img, top + h + p, left, h, w) == px(rec[k, 0])).all(), k
    # slot 3 of group 1 is empty (5 images in groups of 3), above and below
    top, left = group_h + sep + p, p + 2 * (w + p)
    assert (tile(img, top, left, h, w) == PAD).all()
    assert (tile(img, top + h + p, left, h, w) == PAD).all()
    # the gap between groups is wider than the gap inside a pair
    assert (img[group_h - p:group_h + sep + p] == PAD).all()


def test_reconstructions_bad_input(tmp_path):
    x = torch.rand(4, 1, 5, 5)
    with pytest.raises(ValueError, match="mismatched counts"):
        save_reconstructions(x, torch.rand(3, 1, 5, 5), tmp_path / "r.png")
    with pytest.raises(ValueError, match="reconstructions"):
        save_reconstructions(x, torch.rand(4, 1, 6, 6), tmp_path / "r.png")
    with pytest.raises(ValueError, match="n must be"):
        save_reconstructions(x, x, tmp_path / "r.png", n=0)


def test_interpolation_rows_are_pairs_columns_are_steps(tmp_path):
    steps, pairs, h, w, p = 5, 3, 3, 4, 2
    frames = torch.zeros(steps, pairs, 1, h, w)
    for s in range(steps):
        for q in range(pairs):
            frames[s, q] = (s + 10 * q) / 40
    img = read(save_interpolation(frames, tmp_path / "i.png", padding=p))
    assert img.shape[:2] == (pairs * (h + p) + p, steps * (w + p) + p)
    for s in range(steps):
        for q in range(pairs):
            t = tile(img, p + q * (h + p), p + s * (w + p), h, w)
            assert (t == px((s + 10 * q) / 40)).all(), (s, q)
    flat = frames.flatten(2)
    assert (read(save_interpolation(flat, tmp_path / "f.png", padding=p, image_shape=(h, w)))
            == img).all()
    with pytest.raises(ValueError, match="steps, pairs, C, H, W"):
        save_interpolation(frames[:, 0], tmp_path / "bad.png")


# --------------------------------------------------------------------------- codes


def test_linear_interpolation():
    a, b = torch.tensor([[0.0, 2.0], [1.0, -1.0]]), torch.tensor([[4.0, 0.0], [3.0, 1.0]])
    z = interpolate_codes(a, b, steps=5)
    assert z.shape == (5, 2, 2)
    torch.testing.assert_close(z[2], (a + b) / 2)
    assert torch.equal(z[0], a) and torch.equal(z[-1], b)
    torch.testing.assert_close(z[1], 0.75 * a + 0.25 * b)


def test_slerp_unit_vectors_stay_on_sphere():
    a = torch.nn.functional.normalize(torch.randn(6, 16, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 16, dtype=torch.float64), dim=-1)
    z = interpolate_codes(a, b, steps=9, mode="slerp")
    assert torch.equal(z[0], a) and torch.equal(z[-1], b)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(9, 6, dtype=torch.float64))
    # the angle to the start grows in equal steps
    angles = torch.acos((z * a).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(angles.diff(dim=0), angles[-1:].expand(8, 6) / 8)
    assert interpolate_codes(a.float(), b.float(), 9, "slerp").dtype == torch.float32
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = interpolate_codes(e1, e2, steps=3, mode="SLERP")[1]
    torch.testing.assert_close(mid, torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_slerp_falls_back_to_linear_for_parallel_and_zero_vectors():
    a = torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0], [-1.0, 0.0], [3.0, 1.0]])  # parallel, antiparallel, zero start
    torch.testing.assert_close(interpolate_codes(a, b, 4, "slerp"), interpolate_codes(a, b, 4))
    z = interpolate_codes(a, b, 4, "slerp")
    assert torch.isfinite(z).all()


def test_interpolate_bad_input():
    a = torch.zeros(3)
    with pytest.raises(ValueError, match="steps"):
        interpolate_codes(a, a, 1)
    with pytest.raises(ValueError, match="unknown mode"):
        interpolate_codes(a, a, 3, mode="cubic")
    with pytest.raises(ValueError, match="shape"):
        interpolate_codes(a, torch.zeros(4), 3)
    with pytest.raises(ValueError, match="scalars"):
        interpolate_codes(torch.tensor(0.0), torch.tensor(1.0), 3, mode="slerp")


def test_as_images():
    assert as_images(torch.rand(2, 12), (3, 4)).shape == (2, 1, 3, 4)
    assert as_images(torch.rand(2, 48), (3, 4, 4)).shape == (2, 3, 4, 4)
    assert as_images(torch.rand(2, 4, 4)).shape == (2, 1, 4, 4)
    x = torch.rand(2, 3, 4, 4)
    assert as_images(x) is x
    with pytest.raises(ValueError, match="needs 16"):
        as_images(torch.rand(2, 12), (4, 4))
    with pytest.raises(ValueError, match="image_shape must be"):
        as_images(torch.rand(2, 12), (12,))


# --------------------------------------------------------------------------- latent map


def two_clusters(n=400):
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(n, 2, generator=gen) * 0.3 + torch.tensor([-4.0, 0.0])
    right = torch.randn(n, 2, generator=gen) * 0.3 + torch.tensor([4.0, 0.0])
    return torch.cat([left, right]), torch.cat([torch.zeros(n), torch.ones(n)]).long()


def test_latent_map_shows_each_class_in_its_colour_and_place(tmp_path):
    codes, labels = two_clusters()
    out = latent_map(codes, labels, tmp_path / "sub" / "map.png", class_names=["left", "right"])
    assert out.is_file()
    img = read(out)
    tab10 = colormaps["tab10"].colors
    blue, orange = near_colour(img, tab10[0]), near_colour(img, tab10[1])
    assert blue.sum() > 200 and orange.sum() > 200
    # the legend markers are at the right edge: compare the plotted clusters only
    ys_b, xs_b = np.nonzero(blue)
    ys_o, xs_o = np.nonzero(orange)
    assert np.median(xs_b) < img.shape[1] * 0.4 < np.median(xs_o)
    assert not near_colour(img, tab10[2]).any()  # no third class

    fig = latent_figure(codes, labels, class_names=["left", "right"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["left", "right"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1", "z2")


def test_latent_map_uses_pca_for_more_dimensions():
    gen = torch.Generator().manual_seed(2)
    std = torch.tensor([3.0, 1.0, 0.1, 0.1, 0.1])
    codes = torch.randn(3000, 5, generator=gen) * std
    fig = latent_figure(codes, torch.randint(0, 3, (3000,), generator=gen))
    ax = fig.axes[0]
    var = np.linalg.eigvalsh(np.cov(codes.numpy().T))[::-1]
    want = 100 * var / var.sum()
    m1 = re.fullmatch(r"PC1 \((\d+)% var\)", ax.get_xlabel())
    m2 = re.fullmatch(r"PC2 \((\d+)% var\)", ax.get_ylabel())
    assert m1 and m2, (ax.get_xlabel(), ax.get_ylabel())
    assert int(m1[1]) == round(want[0]) and int(m2[1]) == round(want[1])
    assert "PCA of 5-D" in ax.get_title()
    # the plotted x is the first principal component: it carries the large variance
    xy = ax.collections[0].get_offsets()
    assert np.var(xy[:, 0]) == pytest.approx(var[0], rel=0.02)

    scores, ratio = pictures._pca_2d(codes)
    assert ratio.sum().item() == pytest.approx(1.0)
    assert ratio[0].item() == pytest.approx(want[0] / 100, rel=1e-6)


def test_latent_map_subsamples_reproducibly():
    codes, labels = two_clusters(300)

    def offsets(**kw):
        return latent_figure(codes, labels, **kw).axes[0].collections[0].get_offsets()

    a, b, c = offsets(max_points=100), offsets(max_points=100), offsets(max_points=100, seed=3)
    assert a.shape == (100, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert "100 of 600 points" in latent_figure(codes, labels, max_points=100).axes[0].get_title()
    assert offsets().shape == (600, 2)
    assert latent_figure(codes, labels, title="epoch 3").axes[0].get_title() == "epoch 3"


def test_latent_map_one_dimension_and_other_labels(tmp_path):
    codes, labels = two_clusters(200)
    ax = latent_figure(codes[:, :1], labels, class_names=["a", "b"]).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.get_xlabel() == "z"
    xy = ax.collections[0].get_offsets()
    rows = np.round(xy[:, 1])
    assert set(np.unique(rows)) == {0.0, 1.0}
    assert xy[rows == 0, 0].mean() < -3 and xy[rows == 1, 0].mean() > 3  # class b on the right

    fig = latent_figure(codes, torch.randn(400))  # continuous labels: colour bar, no legend
    assert fig.axes[0].get_legend() is None and len(fig.axes) == 2
    fig = latent_figure(codes, None)
    assert fig.axes[0].get_legend() is None
    bad = codes.clone()
    bad[:5] = float("nan")
    assert "5 non-finite dropped" in latent_figure(bad, labels).axes[0].get_title()
    assert latent_map(codes, None, tmp_path / "n.png").is_file()


def test_latent_map_bad_input(tmp_path):
    codes, labels = two_clusters(10)
    with pytest.raises(ValueError, match="ndim"):
        latent_map(codes[:, 0], labels, tmp_path / "m.png")
    with pytest.raises(ValueError, match="labels must be"):
        latent_map(codes, labels[:-1], tmp_path / "m.png")
    with pytest.raises(ValueError, match="class_names"):
        latent_map(codes, labels, tmp_path / "m.png", class_names=["only one"])
    with pytest.raises(ValueError, match="without labels"):
        latent_map(codes, None, tmp_path / "m.png", class_names=["a", "b"])
    with pytest.raises(ValueError, match="max_points"):
        latent_map(codes, labels, tmp_path / "m.png", max_points=0)
    with pytest.raises(ValueError, match="empty"):
        latent_map(torch.zeros(0, 2), None, tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


# --------------------------------------------------------------------------- files


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "er" / "g.png"
    save_grid(torch.zeros(4, 1, 3, 3), path)
    before = path.read_bytes()
    assert os.listdir(path.parent) == ["g.png"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_grid(torch.ones(4, 1, 3, 3), path)
    assert path.read_bytes() == before  # the old picture is intact
    assert os.listdir(path.parent) == ["g.png"]  # and no temp file is left


# -- inversion pictures (autovae.inverse.figures) ---------------------------------------------
def _linear_problem(positive: bool, n_obs: int = 5):
    """F(p) = A p (parameters > 0 for ``positive``, sampled in their logs) with known noise."""
    from autovae.inverse import ForwardModel, InverseProblem
    from autovae.inverse.priors import LogDensityPrior

    g = torch.Generator().manual_seed(3)
    A = torch.rand(n_obs, 6, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 0.1, 1.0, 0.01, 2.0, 0.5], dtype=torch.float64)

    class Linear(ForwardModel):
        name = "linear"
        param_shape, n_obs_ = (6,), n_obs

        def evaluate(self, params):
            return params.to(torch.float64) @ A.T

    Linear.n_obs = n_obs
    Linear.positive = positive
    sigma = torch.linspace(0.5, 1.5, n_obs, dtype=torch.float64)
    prior = LogDensityPrior(lambda z: -0.5 * (z * z).sum(-1), (6,), "test")
    data = torch.ones(n_obs, dtype=torch.float64)
    return InverseProblem(prior, Linear(), data, sigma, "absolute"), A, sigma


@pytest.mark.parametrize("positive", [False, True])
def test_sensitivity_is_the_fisher_diagonal_and_ranks_the_error_bars(positive):
    from autovae.inverse.figures import informed, scale_of, sensitivity

    problem, A, sigma = _linear_problem(positive)
    theta = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.2, 1.5], dtype=torch.float64)
    scale = scale_of(problem)
    assert scale.log == positive and scale.label == ("ln θ" if positive else "parameter")
    # d F_k / d p_i = A_ki; in ln theta, A_ki theta_i
    J = A * theta if positive else A
    want = ((J / sigma[:, None]) ** 2).sum(0)
    got = sensitivity(problem, theta, scale)
    assert torch.allclose(got, want, rtol=1e-12)
    idx, how = informed(problem, theta, scale, k=3)
    assert idx == torch.argsort(want, descending=True)[:3].tolist() and "inform most" in how
    # many observations: Hutchinson's estimate with random signs, unbiased and close
    big, A2, s2 = _linear_problem(positive, n_obs=400)
    J2 = A2 * theta if positive else A2
    est = sensitivity(big, theta, scale, probes=256)
    exact = ((J2 / s2[:, None]) ** 2).sum(0)
    assert torch.allclose(est, exact, rtol=0.35)


def test_inversion_pictures_are_in_ln_theta_with_informed_error_bars_and_a_chain_legend(
        tmp_path):
    from types import SimpleNamespace

    from autovae.inverse.figures import PictureData, draw_pictures

    problem, _, _ = _linear_problem(positive=True)
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(3, 200, 6, generator=g, dtype=torch.float64) * 0.3 + 1.0).numpy()
    truth = torch.full((6,), math.e, dtype=torch.float64)  # ln theta = 1
    result = SimpleNamespace(draws=z, kernel="rwm", mean_accept_prob=np.array([0.3] * 3))
    data = PictureData(problem, z, truth)
    # z is ln theta itself here: the pictures' mean and sd are those of z, the truth is ln
    assert np.allclose(data.mean.numpy(), z.reshape(-1, 6).mean(0), atol=1e-12)
    assert np.allclose(data.sd.numpy(), z.reshape(-1, 6).std(0), atol=1e-12)
    assert torch.allclose(data.truth, torch.ones(6, dtype=torch.float64))
    figs = {}
    names = draw_pictures(tmp_path, problem, result, truth, figures=figs,
                          error_bars=None)
    assert names == ["traces.png", "error_bars.png", "calibration.png"]  # 6 is no square
    legend = figs["traces.png"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["chain 0", "chain 1", "chain 2"]
    ax = figs["error_bars.png"].axes[0]
    assert ax.get_ylabel() == "ln θ"
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"[{i}]" for i in data.chosen]
    # a user's choice of parameters, and a refusal naming the flag
    figs = {}
    draw_pictures(tmp_path, problem, result, truth, error_bars=[4, 0], figures=figs)
    assert [t.get_text() for t in figs["error_bars.png"].axes[0].get_xticklabels()] == \
        ["[4]", "[0]"]
    with pytest.raises(ValueError, match="--error-bars: parameter indices \\[6\\]"):
        draw_pictures(tmp_path, problem, result, truth, error_bars=[6])


def test_error_bars_fall_back_to_evenly_spaced_without_a_gradient():
    from autovae.inverse.figures import informed, scale_of

    problem, _, _ = _linear_problem(positive=False)
    problem.forward.gradient = False
    theta = torch.ones(6, dtype=torch.float64)
    idx, how = informed(problem, theta, scale_of(problem), k=3)
    assert idx == [0, 2, 5] and "evenly spaced" in how and "no gradient" in how
