"""Pictures show the right thing: pixel content of the PNGs, not just their existence."""

import numpy as np
import pytest
import torch
from PIL import Image

from autovae.pictures import (
    PAD_VALUE,
    interpolate_codes,
    latent_figure,
    latent_map,
    save_grid,
    save_interpolation,
    save_reconstructions,
)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255


def test_grid_tiles_sit_where_documented(tmp_path):
    levels = torch.linspace(0, 1, 6)
    images = levels.view(6, 1, 1, 1).expand(6, 1, 4, 5)  # tile k is the constant levels[k]
    pic = _png(save_grid(images, tmp_path / "g.png", nrow=3, padding=2))
    assert pic.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2)
    for k in range(6):
        row, col = divmod(k, 3)
        top, left = 2 + row * 6, 2 + col * 7
        tile = pic[top:top + 4, left:left + 5]
        assert np.allclose(tile, levels[k].item(), atol=1 / 255), k
    assert np.allclose(pic[0, :], PAD_VALUE, atol=1 / 255)


def test_reconstructions_sit_below_their_originals(tmp_path):
    originals = torch.ones(3, 1, 4, 4)
    recon = torch.zeros(3, 1, 4, 4)
    pic = _png(save_reconstructions(originals, recon, tmp_path / "r.png", n=3, padding=1))
    assert np.allclose(pic[1:5, 1:5], 1.0)          # first original, top row
    assert np.allclose(pic[6:10, 1:5], 0.0)         # its reconstruction right below
    with pytest.raises(ValueError, match="mismatched counts"):
        save_reconstructions(originals, recon[:2], tmp_path / "bad.png")


def test_interpolation_rows_are_pairs_and_columns_steps(tmp_path):
    steps = torch.linspace(0, 1, 4).view(4, 1, 1, 1, 1).expand(4, 2, 1, 3, 3)
    pic = _png(save_interpolation(steps, tmp_path / "i.png", padding=1))
    assert pic.shape == (2 * 4 + 1, 4 * 4 + 1)
    for s in range(4):
        assert np.allclose(pic[1:4, 1 + 4 * s:4 + 4 * s], s / 3, atol=1 / 255)


def test_interpolate_codes_linear_and_slerp():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    lin = interpolate_codes(a, b, 5)
    assert torch.allclose(lin[2], (a + b) / 2) and torch.equal(lin[0], a)
    sl = interpolate_codes(a, b, 5, mode="slerp")
    assert torch.allclose(sl[0], a) and torch.allclose(sl[-1], b)
    assert torch.allclose(sl.norm(dim=-1), torch.ones(5), atol=1e-6)  # stays on the circle
    with pytest.raises(ValueError):
        interpolate_codes(a, b, 1)
    with pytest.raises(ValueError):
        interpolate_codes(a, b, 3, mode="cubic")


def test_latent_map_colours_each_class_and_uses_pca_above_two_dims(tmp_path):
    g = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randn(200, 5, generator=g) - 4, torch.randn(200, 5, generator=g) + 4])
    labels = torch.tensor([0] * 200 + [1] * 200)
    fig = latent_figure(codes, labels, class_names=["a", "b"])
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("PC1 (") and "% var" in ax.get_xlabel()
    path = latent_map(codes, labels, tmp_path / "m.png", class_names=["a", "b"])
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])  # tab10 C0, C1
    for colour in (blue, orange):
        close = (np.abs(rgb - colour).sum(-1) < 60).sum()
        assert close > 50, colour
    with pytest.raises(ValueError, match="labels must be"):
        latent_map(codes, labels[:10], tmp_path / "bad.png")
    two = latent_figure(codes[:, :2], labels)
    assert two.axes[0].get_xlabel() == "z1"
