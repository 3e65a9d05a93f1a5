"""Pictures of what a VAE does: image grids, reconstructions, interpolations and latent maps.

Functions from tensors to PNG files, and at the end the pictures of a trained model
(:func:`run_pictures`, used by the CLI and the HTML report alike). Images are
``(N, C, H, W)`` with C in {1, 3, 4}, or flat ``(N, D)`` with ``image_shape``; values are clamped
to [0, 1] (NaN shows as 0, uint8 is divided by 255). Every writer creates the parent folder,
writes to a temporary file in the same folder, moves it into place with ``os.replace`` and
returns the ``Path``. Matplotlib is used through ``Figure`` + ``FigureCanvasAgg`` only: no pyplot,
no backend switch, no global state.

>>> z = interpolate_codes(torch.zeros(2), torch.ones(2), steps=3)
>>> z[1]
tensor([0.5000, 0.5000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_write
from ._images import as_images

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "as_images",
    "interpolate_codes",
    "latent_figure",
    "latent_map",
    "latent_picture",
    "picture_files",
    "reconstruction_picture",
    "run_pictures",
    "sample_picture",
    "save_grid",
    "save_interpolation",
    "save_reconstructions",
]

PAD_VALUE = 0.5
"""Default colour of the padding between tiles: mid grey, visible on black and on white images."""

SCATTER_ALPHA = 0.7
"""Opacity of one point in the latent map (overlapping points look more saturated)."""

_MAX_CATEGORIES = 20  # more distinct labels than this are drawn with a continuous colour map
_OTHER_FORMATS = {".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pdf", ".svg",
                  ".eps", ".ps"}


# --------------------------------------------------------------------------- files


def _target(path) -> Path:
    path = Path(path)
    if path.suffix.lower() in _OTHER_FORMATS:
        raise ValueError(f"pictures are written as PNG; {str(path)!r} asks for "
                         f"{path.suffix!r}: use a .png name")
    return path


# --------------------------------------------------------------------------- images


def _displayable(x: Tensor, image_shape, what: str = "images") -> Tensor:
    """(N, C, H, W) float32 on the CPU in [0, 1], checked."""
    x = as_images(x, image_shape, what).detach().cpu()
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no images (N = 0)")
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"{what}: {x.shape[1]} channels; PNG needs C = 1 (grey), 3 (RGB) or "
                         f"4 (RGBA); shape {tuple(x.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{what}: empty images, shape {tuple(x.shape)}")
    x = x.float()
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def _make_grid(images: Tensor, nrow: int, padding: int, pad_value: float) -> Tensor:
    """torchvision's make_grid, also padded when there is a single image."""
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    if images.shape[0] == 1 and padding > 0:  # make_grid returns a lone image unpadded
        grid = torch.nn.functional.pad(grid, (padding,) * 4, value=pad_value)
    return grid


def _write_image(grid: Tensor, path: Path) -> Path:
    from torchvision.utils import save_image

    return atomic_write(path, lambda fh: save_image(grid, fh, format="png"))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def save_grid(images: Tensor, path, nrow: int | None = None, padding: int = 2, *,
              image_shape: Sequence[int] | None = None, pad_value: float = PAD_VALUE) -> Path:
    """Save images as one grid PNG, ``nrow`` images per row (default ``ceil(sqrt(N))``).

    Tile ``k`` sits at row ``k // nrow``, column ``k % nrow``, its top-left pixel at
    ``(padding + row * (H + padding), padding + col * (W + padding))``; the PNG is
    ``rows * (H + padding) + padding`` high and ``cols * (W + padding) + padding`` wide.
    """
    x = _displayable(images, image_shape)
    n = x.shape[0]
    nrow = math.ceil(math.sqrt(n)) if nrow is None else _check_int("nrow", nrow, 1)
    padding = _check_int("padding", padding, 0)
    target = _target(path)
    return _write_image(_make_grid(x, nrow, padding, pad_value), target)


def save_reconstructions(originals: Tensor, reconstructions: Tensor, path, n: int = 16, *,
                         ncol: int | None = None, padding: int = 2,
                         image_shape: Sequence[int] | None = None,
                         pad_value: float = PAD_VALUE) -> Path:
    """Save the first ``n`` originals with their reconstructions directly below them.

    Images go in groups of ``ncol`` (default ``min(n, 8)``): each group is a row of originals
    above the row of their reconstructions (gap ``padding``); groups are ``2 * padding +
    max(2, padding)`` apart, so pairs read clearly. Group ``g`` starts at pixel row
    ``g * (2 * H + 3 * padding + max(2, padding))``. Reconstructions may be flat when the
    originals are ``(N, C, H, W)`` (their shape is used).
    """
    x = _displayable(originals, image_shape, "originals")
    shape = image_shape if image_shape is not None else tuple(x.shape[1:])
    rec = torch.as_tensor(reconstructions)
    # flat reconstructions take the originals' shape; 4-D ones must match it as they are
    r = _displayable(rec, None if rec.dim() == 4 and image_shape is None else shape,
                     "reconstructions")
    if x.shape[0] != r.shape[0]:
        raise ValueError(f"mismatched counts: {x.shape[0]} originals but {r.shape[0]} "
                         "reconstructions")
    if x.shape[1:] != r.shape[1:]:
        raise ValueError(f"originals are {tuple(x.shape[1:])} but reconstructions are "
                         f"{tuple(r.shape[1:])}")
    n = min(_check_int("n", n, 1), x.shape[0])
    ncol = min(n, 8) if ncol is None else _check_int("ncol", ncol, 1)
    padding = _check_int("padding", padding, 0)
    target = _target(path)

    x, r = x[:n], r[:n]
    blank = torch.full_like(x[:1], pad_value)
    sep = max(2, padding)
    blocks = []
    for start in range(0, n, ncol):
        o, rec = x[start:start + ncol], r[start:start + ncol]
        missing = ncol - o.shape[0]
        if missing:
            o = torch.cat([o, blank.expand(missing, *o.shape[1:])])
            rec = torch.cat([rec, blank.expand(missing, *rec.shape[1:])])
        block = _make_grid(torch.cat([o, rec]), ncol, padding, pad_value)
        if blocks:
            blocks.append(torch.full((block.shape[0], sep, block.shape[2]), pad_value))
        blocks.append(block)
    return _write_image(torch.cat(blocks, dim=1), target)


def save_interpolation(frames: Tensor, path, *, padding: int = 2,
                       image_shape: Sequence[int] | None = None,
                       pad_value: float = PAD_VALUE) -> Path:
    """Save interpolation frames ``(steps, pairs, C, H, W)``: one row per pair, steps as columns.

    Flat frames ``(steps, pairs, D)`` need ``image_shape``; ``decoder(interpolate_codes(...))``
    reshaped to ``(steps, pairs, ...)`` is the intended input.
    """
    frames = torch.as_tensor(frames)
    if image_shape is None and frames.dim() != 5:
        raise ValueError(f"frames must be (steps, pairs, C, H, W), got ndim {frames.dim()} "
                         f"(shape {tuple(frames.shape)}); flat frames need image_shape")
    if frames.dim() < 3:
        raise ValueError(f"frames must be (steps, pairs, ...), got ndim {frames.dim()}")
    steps, pairs = frames.shape[:2]
    if steps == 0 or pairs == 0:
        raise ValueError(f"frames have no images, shape {tuple(frames.shape)}")
    flat = frames.transpose(0, 1).reshape(pairs * steps, *frames.shape[2:])
    x = _displayable(flat, image_shape, "frames")
    padding = _check_int("padding", padding, 0)
    target = _target(path)
    return _write_image(_make_grid(x, steps, padding, pad_value), target)


# --------------------------------------------------------------------------- codes


def interpolate_codes(z_start: Tensor, z_end: Tensor, steps: int, mode: str = "linear") -> Tensor:
    """Codes from ``z_start`` to ``z_end`` (both included), shape ``(steps, *z.shape)``.

    ``"linear"``: ``(1 - t) z0 + t z1``. ``"slerp"``: spherical interpolation along the last
    dimension (each row of a batch ``(pairs, D)`` separately), ``sin((1-t)W)/sin W z0 +
    sin(tW)/sin W z1`` with W the angle between the rows; it keeps unit vectors on the unit
    sphere. Rows that are (anti)parallel within 1e-6 or zero fall back to linear.
    """
    a, b = torch.as_tensor(z_start), torch.as_tensor(z_end)
    if a.shape != b.shape:
        raise ValueError(f"z_start {tuple(a.shape)} and z_end {tuple(b.shape)} differ in shape")
    steps = _check_int("steps", steps, 2)
    mode_key = str(mode).lower()
    if mode_key not in ("linear", "slerp"):
        raise ValueError(f"unknown mode {mode!r}; use 'linear' or 'slerp'")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    a, b = a.to(dtype), b.to(dtype)
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=a.device)
    t = t.reshape(steps, *([1] * a.dim()))

    if mode_key == "linear":
        wa, wb = 1.0 - t, t
    else:
        if a.dim() == 0:
            raise ValueError("slerp needs vectors (ndim >= 1), got scalars")
        a64, b64 = a.double(), b.double()
        na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
        ua = a64 / na.clamp_min(1e-300)
        ub = b64 / nb.clamp_min(1e-300)
        # the angle, accurate near 0 and pi (unlike acos of the dot product)
        omega = 2.0 * torch.atan2((ua - ub).norm(dim=-1, keepdim=True),
                                  (ua + ub).norm(dim=-1, keepdim=True))
        sin_omega = torch.sin(omega)
        linear = (sin_omega < 1e-6) | (na == 0) | (nb == 0)
        safe = torch.where(linear, torch.ones_like(sin_omega), sin_omega)
        wa = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * omega) / safe)
        wb = torch.where(linear, t, torch.sin(t * omega) / safe)
    out = (wa.to(dtype) * a + wb.to(dtype) * b).to(dtype)
    out[0], out[-1] = a, b  # exact endpoints
    return out


def _pca_2d(x: Tensor) -> tuple[Tensor, Tensor]:
    """Project rows of ``x`` (n, D) on their first two principal components.

    Returns ``(n, 2)`` scores and the explained-variance ratio of every component (length
    min(n, D), sums to 1). Signs are fixed so that each component's largest loading is positive.
    """
    x = x.double()
    xc = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    rows = torch.arange(vh.shape[0])
    signs = torch.sign(vh[rows, vh.abs().argmax(dim=1)])
    vh = vh * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
    var = s.square()
    ratio = var / var.sum() if var.sum() > 0 else torch.zeros_like(var)
    scores = xc @ vh[:2].T
    if scores.shape[1] < 2:  # a single point: one component only
        scores = torch.cat([scores, torch.zeros(scores.shape[0], 2 - scores.shape[1],
                                                dtype=scores.dtype)], dim=1)
    return scores, ratio


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _categories(labels: Tensor, class_names: Sequence[str] | None):
    """Label values -> (category index per point, names, palette slots) or None if continuous."""
    values, inverse = torch.unique(labels, return_inverse=True)
    integral = not values.is_floating_point() or bool(torch.all(values == values.round()))
    if class_names is not None:
        if not integral or values[0] < 0 or values[-1] >= len(class_names):
            raise ValueError(f"with {len(class_names)} class_names, labels must be integers in "
                             f"[0, {len(class_names)}); got values {values[:5].tolist()}"
                             f"{'...' if len(values) > 5 else ''}")
        names = [str(class_names[int(v)]) for v in values]
        slots, nslots = [int(v) for v in values], len(class_names)
    else:
        names = [_fmt(float(v)) for v in values]
        if integral and values[0] >= 0 and values[-1] < _MAX_CATEGORIES:
            slots, nslots = [int(v) for v in values], int(values[-1]) + 1  # colour = value
        else:
            slots, nslots = list(range(len(values))), len(values)
    if len(values) > _MAX_CATEGORIES:
        return None
    if nslots > _MAX_CATEGORIES:
        slots, nslots = list(range(len(values))), len(values)
    return inverse, names, slots, nslots


def _palette(nslots: int) -> list[tuple[float, float, float]]:
    from matplotlib import colormaps

    return list(colormaps["tab10" if nslots <= 10 else "tab20"].colors)


def latent_figure(codes: Tensor, labels: Tensor | None = None,
                  class_names: Sequence[str] | None = None, title: str | None = None,
                  max_points: int = 20000, seed: int = 0) -> Figure:
    """The latent map as a matplotlib ``Figure`` (Agg canvas, no pyplot); see ``latent_map``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    codes = torch.as_tensor(codes).detach().cpu()
    if codes.dim() != 2:
        raise ValueError(f"codes must be (N, D), got ndim {codes.dim()} (shape "
                         f"{tuple(codes.shape)}); use codes[:, None] for 1-D codes")
    n_all, dim = codes.shape
    if n_all == 0 or dim == 0:
        raise ValueError(f"codes are empty, shape {tuple(codes.shape)}")
    if labels is not None:
        labels = torch.as_tensor(labels).detach().cpu()
        if labels.dim() != 1 or labels.shape[0] != n_all:
            raise ValueError(f"labels must be (N,) = ({n_all},) like the codes, got shape "
                             f"{tuple(labels.shape)}")
        if labels.dtype == torch.bool:
            labels = labels.to(torch.int64)
        if labels.is_complex():
            raise ValueError("labels must be real numbers, got complex")
        if labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN or inf")
    elif class_names is not None:
        raise ValueError("class_names given without labels")
    max_points = _check_int("max_points", max_points, 1)
    codes = codes.double()

    finite = torch.isfinite(codes).all(dim=1)
    dropped = int((~finite).sum())
    if dropped == n_all:
        raise ValueError("all codes are NaN or inf")
    gen = torch.Generator().manual_seed(int(seed))
    keep = finite.nonzero().squeeze(1)
    keep = keep[torch.randperm(len(keep), generator=gen)[:max_points]]  # random draw order
    n = len(keep)
    pts = codes[keep]
    labs = labels[keep] if labels is not None else None

    ratio = None
    if dim > 2:
        pts, ratio = _pca_2d(pts)
    cats = _categories(labs, class_names) if labs is not None else None

    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = float(np.clip(24000.0 / n, 2.0, 16.0))
    style = {"s": size, "alpha": SCATTER_ALPHA, "linewidths": 0, "rasterized": n > 5000}

    if dim == 1:
        x = pts[:, 0].numpy()
        jitter = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5).numpy() * 0.7
        if cats is not None:
            inverse, names, _, _ = cats
            y = inverse.numpy() + jitter
            ax.set_yticks(range(len(names)), names)
            ax.set_ylabel("class")
        elif labs is not None:
            y = labs.double().numpy()
            ax.set_ylabel("label")
        else:
            y = jitter
            ax.set_yticks([])
        ax.set_xlabel("z")
        xy = np.stack([x, y], axis=1)
    else:
        xy = pts[:, :2].numpy()
        if ratio is not None:
            ax.set_xlabel(f"PC1 ({100 * float(ratio[0]):.0f}% var)")
            ax.set_ylabel(f"PC2 ({100 * float(ratio[1]) if len(ratio) > 1 else 0.0:.0f}% var)")
        else:
            ax.set_xlabel("z1")
            ax.set_ylabel("z2")
        ax.set_aspect("equal", adjustable="datalim")

    if cats is not None:
        inverse, names, slots, nslots = cats
        palette = _palette(nslots)
        colours = np.array([palette[s] for s in slots])
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[inverse.numpy()], **style)
        handles = [Line2D([], [], marker="o", linestyle="", color=palette[s], label=name)
                   for s, name in zip(slots, names, strict=True)]
        ax.legend(handles=handles, title="class" if class_names is not None else "label",
                  loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False)
    elif labs is not None:
        mappable = ax.scatter(xy[:, 0], xy[:, 1], c=labs.double().numpy(), cmap="viridis",
                              **style)
        fig.colorbar(mappable, ax=ax, label="label")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], color=_palette(1)[0], **style)

    if title is None:
        title = ("latent codes" if dim <= 2 else f"latent codes: PCA of {dim}-D codes")
        notes = []
        if n < n_all - dropped:
            notes.append(f"{n:,} of {n_all - dropped:,} points")
        if dropped:
            notes.append(f"{dropped:,} non-finite dropped")
        if notes:
            title += f" ({', '.join(notes)})"
    ax.set_title(title)
    return fig


def latent_map(codes: Tensor, labels: Tensor | None, path, class_names: Sequence[str] | None = None,
               title: str | None = None, max_points: int = 20000, seed: int = 0) -> Path:
    """Save a scatter of latent codes ``(N, D)`` coloured by label, with a legend.

    D == 2 is drawn as is (axes z1, z2, equal scale); D > 2 is projected on its first two
    principal components (exact SVD of the plotted points; axes "PC1 (43% var)"); D == 1 is a
    strip per label (x = z). Labels are categories (``class_names[label]`` in the legend when
    given; tab10/tab20 colours, colour = label value for integer labels < 20) or, with more
    than 20 distinct values, a continuous colour map with a colour bar. At most ``max_points``
    points are drawn, a random subset fixed by ``seed``; rows with NaN/inf are dropped.
    """
    target = _target(path)
    fig = latent_figure(codes, labels, class_names, title, max_points, seed)
    return atomic_write(target, lambda fh: fig.savefig(fh, format="png", dpi=100))


# --------------------------------------------------------------------------- of a model


def _needs_encoder(model, what: str) -> None:
    if not model.has_encoder:
        raise ValueError(f"model {model.name!r} has no encoder, so it cannot {what}; use "
                         "'autovae sample' for its generated images")


def sample_picture(model, path, n: int = 64) -> Path:
    """A grid of ``n`` images generated by ``model`` (the global RNG draws them)."""
    n = _check_int("n", n, 1)
    return save_grid(model.generate(n), path)


def reconstruction_picture(model, x: Tensor, path, n: int = 16) -> Path:
    """The first ``n`` images of ``x`` above their reconstructions by ``model``."""
    _needs_encoder(model, "reconstruct")
    n = _check_int("n", n, 1)
    return save_reconstructions(x[:n], model.reconstruct(x[:n]), path)


def latent_picture(model, x: Tensor, labels: Tensor | None, path, *,
                   class_names: Sequence[str] | None = None, title: str | None = None
                   ) -> tuple[Path, Path]:
    """The codes of all of ``x`` saved as ``path`` with suffix ``.npy``, and their 2-D map
    (PCA when the latent space has more than 2 dims) as ``path`` with suffix ``.png``."""
    _needs_encoder(model, "embed")
    codes = model.embed(x).cpu()
    path = Path(path)
    codes_path = path.with_suffix(".npy")
    atomic_write(codes_path, lambda fh: np.save(fh, codes.numpy()))
    map_path = latent_map(codes, None if labels is None else labels.cpu(),
                          path.with_suffix(".png"), class_names=class_names, title=title)
    return codes_path, map_path


def picture_files(folder, has_encoder: bool, split: str = "test") -> dict[str, Path]:
    """The files :func:`run_pictures` writes for a model with or without an encoder."""
    folder = Path(folder)
    files = {"samples": folder / "samples.png"}
    if has_encoder:
        files.update({"reconstructions": folder / "reconstructions.png",
                      "latent map": folder / f"codes_{split}.png"})
    return files


def run_pictures(model, data, folder, split: str = "test", *, only_missing: bool = False
                 ) -> dict[str, Path]:
    """The pictures of a trained model that its capabilities allow, in ``folder``: generated
    ``samples.png``; with an encoder also ``reconstructions.png`` and the latent map
    ``codes_SPLIT.png`` (with ``codes_SPLIT.npy``). ``only_missing`` keeps existing files.
    The same files as ``autovae sample``, ``reconstruct`` and ``embed`` write."""
    x, labels = getattr(data, split), getattr(data, f"{split}_labels")
    title = f"{getattr(model, 'latent', model.name)} on {data.name} ({split})"
    makers = {
        "samples": lambda p: sample_picture(model, p),
        "reconstructions": lambda p: reconstruction_picture(model, x, p),
        "latent map": lambda p: latent_picture(model, x, labels, p, class_names=data.classes,
                                               title=title),
    }
    files = picture_files(folder, model.has_encoder, split)
    for name, path in files.items():
        if not (only_missing and path.exists()):
            makers[name](path)
    return files
