"""Sagittal and coronal projections of a test case with its true and predicted centroids (the papers' figures).

The runner stores a few per cell with ``write_projection`` (numpy only, a few tens of kB each): the cell's best,
median and worst test cases by result (``pick_by_result``). The leaderboard finds them under
``<run folder>/projections/**/*.npz``, picks per method again by result among the cases that have a file, and
renders them with ``projection_png``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from spinebench.datamodules.atomic import write_bytes_atomic
from spinebench.datamodules.labels import ALL_NAMES, DEFAULT_NAMES
from spinebench.leaderboard.errors import LeaderboardInputError
from spinebench.leaderboard.plots import figure_png, plot_text

PROJECTIONS_DIRNAME = "projections"
PICKS_PER_METHOD = 3  # the leaderboard shows each method's best, median and worst case


def write_projection(
    path: str | os.PathLike,
    volume: np.ndarray,
    spacing_mm: tuple[float, float, float],
    true_vox: np.ndarray,
    pred_vox: np.ndarray,
    names: list[str] | tuple[str, ...],
    *,
    case: str = "",
    method: str = "",
) -> Path:
    """Store sagittal and coronal maximum intensity projections of ``volume`` and the centroids as ``.npz``.

    ``volume (D, H, W)`` in canonical orientation (axis 0 superior, 1 posterior, 2 patient-left), ``spacing_mm``
    per axis, ``true_vox, pred_vox (K, 3)`` voxel coordinates in the same array (NaN rows = absent / not
    predicted), ``names`` the K labels. Intensities are scaled to uint8 between the 1st and 99.5th percentile.
    """
    volume = np.asarray(volume, np.float32)
    true_vox, pred_vox = np.asarray(true_vox, float), np.asarray(pred_vox, float)
    if volume.ndim != 3 or true_vox.shape != (len(names), 3) or pred_vox.shape != (len(names), 3):
        raise ValueError(f"volume must be (D, H, W) and centroids (K, 3) for K={len(names)} names; got "
                         f"{volume.shape}, {true_vox.shape}, {pred_vox.shape}")
    lo, hi = np.percentile(volume, [1.0, 99.5])
    scale = 255.0 / max(float(hi - lo), 1e-6)

    def to_u8(mip: np.ndarray) -> np.ndarray:
        return np.clip((mip - lo) * scale, 0, 255).astype(np.uint8)

    buf = io.BytesIO()
    np.savez_compressed(
        buf, sagittal=to_u8(volume.max(axis=2)), coronal=to_u8(volume.max(axis=1)),
        spacing_mm=np.asarray(spacing_mm, float), true_vox=true_vox, pred_vox=pred_vox,
        names=np.asarray(list(names), dtype=str), case=np.asarray(case), method=np.asarray(method),
    )
    return write_bytes_atomic(path, buf.getvalue())


def write_case_projection(
    path: str | os.PathLike,
    *,
    image: np.ndarray,
    geometry,
    true_mm: np.ndarray,
    pred_mm: np.ndarray,
    pred_present: np.ndarray | None = None,
    names: list[str] | tuple[str, ...] | None = None,
    case: str = "",
    method: str = "",
) -> Path:
    """``write_projection`` from world coordinates: ``geometry`` is the image's ``datamodules.geometry.Geometry``
    (used through ``world_to_vox`` and ``spacing_mm`` only), ``image`` canonical (D, H, W), ``true_mm, pred_mm
    (K, 3)`` LPS mm with NaN rows for absent, ``pred_present (K,)``; ``names`` default to the label set of size K.
    """
    true_mm, pred_mm = np.asarray(true_mm, float), np.asarray(pred_mm, float).copy()
    if pred_present is not None:
        pred_mm[~np.asarray(pred_present, bool)] = np.nan
    if names is None:
        names = {len(DEFAULT_NAMES): DEFAULT_NAMES, len(ALL_NAMES): ALL_NAMES}.get(len(true_mm))
        if names is None:
            raise ValueError(f"give the {len(true_mm)} label names of the centroid rows")
    to_vox = geometry.world_to_vox
    return write_projection(path, image, tuple(np.asarray(geometry.spacing_mm, float)), to_vox(true_mm),
                            to_vox(pred_mm), names, case=case, method=method)


def find_projections(folders: list[Path]) -> list[Path]:
    """Every projection file (``.npz`` inside a ``projections`` folder, or given directly) under ``folders``,
    sorted by path."""
    found = set()
    for d in folders:
        d = Path(d)
        if d.is_file() and d.suffix == ".npz":
            found.add(d)
        elif d.is_dir():
            found.update(p for p in d.rglob("*.npz") if PROJECTIONS_DIRNAME in p.relative_to(d.parent).parts)
    return sorted(found)


def projection_identity(path: Path) -> tuple[str, str]:
    """``(method, case)`` stored in a projection file (empty strings where absent)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return tuple(str(z[k]) if k in z.files else "" for k in ("method", "case"))  # type: ignore[return-value]
    except (OSError, ValueError) as exc:
        raise LeaderboardInputError(f"{path}: unreadable projection file ({exc})") from None


def rank_cases(results: dict[str, tuple[float, float]]) -> list[str]:
    """Case ids from best to worst: by Id.Rate (higher first), then mean error (lower first), then case id; a case
    without a value ranks after those with one."""
    def key(case: str) -> tuple[float, float, str]:
        rate, error = results[case]
        return (-rate if np.isfinite(rate) else np.inf, error if np.isfinite(error) else np.inf, case)

    return sorted(results, key=key)


def pick_by_result(results: dict[str, tuple[float, float]], count: int = PICKS_PER_METHOD) -> list[tuple[str, str]]:
    """``[(label, case), ...]``: ``count`` cases spread evenly over the ranking of ``rank_cases``; with three,
    the best, the median and the worst case."""
    ranked = rank_cases(results)
    if not ranked or count <= 0:
        return []
    n = len(ranked)
    positions = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(count, n))})
    out = []
    for p in positions:
        if p == 0:
            label = "best"
        elif p == n - 1:
            label = "worst"
        elif len(positions) == 3:
            label = "median"
        else:
            label = f"rank {p + 1} of {n}"
        out.append((label, ranked[p]))
    return out


def outside_view(points: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, edge)``: which finite ``(N, 2)`` pixel coordinates lie outside an image of ``shape``, and those
    points moved onto its nearest edge (NaN rows are neither)."""
    points = np.asarray(points, float)
    limits = np.array(shape[:2], float) - 1.0
    finite = np.isfinite(points).all(1)
    outside = finite & ((points < -0.5) | (points > limits + 0.5)).any(1)
    return outside, np.clip(points[outside], 0.0, limits)


def projection_png(path: Path, caption: str | None = None) -> tuple[str, bytes]:
    """``(caption, png)``: sagittal and coronal views, true centroids (green circles) and predictions (red x).

    ``caption`` defaults to the file's method and case."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise LeaderboardInputError(f"{path}: unreadable projection file ({exc})") from None
    needed = ("sagittal", "coronal", "spacing_mm", "true_vox", "pred_vox", "names")
    missing = [k for k in needed if k not in data]
    if missing:
        raise LeaderboardInputError(f"{path}: projection file lacks {missing[0]!r}")
    if caption is None:
        caption = " / ".join(str(data[k]) for k in ("method", "case") if k in data and str(data[k])) or path.stem
    return caption, mip_views_png(data["sagittal"], data["coronal"], data["spacing_mm"], truth=data["true_vox"],
                                  predicted=data["pred_vox"], names=data["names"], caption=caption)


def volume_views_png(volume: np.ndarray, spacing_mm, *, truth: np.ndarray | None = None,
                     predicted: np.ndarray | None = None, names=(), caption: str = "",
                     window: tuple[float, float] = (-250.0, 1250.0)) -> bytes:
    """``mip_views_png`` of a canonical volume ``(D, H, W)`` (axis 0 superior, 1 posterior, 2 patient-left) in HU,
    shown in the bone ``window``: the previews of ``spinebench phantom`` and ``spinebench predict``."""
    volume = np.asarray(volume)
    return mip_views_png(volume.max(axis=2), volume.max(axis=1), spacing_mm, truth=truth, predicted=predicted,
                         names=names, caption=caption, window=window, size=(8.0, 6.0))


def mip_views_png(sagittal: np.ndarray, coronal: np.ndarray, spacing_mm, *, truth: np.ndarray | None = None,
                  predicted: np.ndarray | None = None, names=(), caption: str = "",
                  window: tuple[float, float] | None = None, size: tuple[float, float] = (6.0, 4.5)) -> bytes:
    """The one renderer of projections: sagittal and coronal MIPs side by side at the voxels' true aspect, true
    centroids (green circles) and predictions (red x) in voxel coordinates ``(K, 3)``, ``names`` labelling the
    true centroids (the predictions when there are none); a prediction outside the image is a triangle on the
    nearest edge, counted in the title. ``window``: (low, high) grey levels, default the image's range."""
    sp = np.asarray(spacing_mm, float)
    label_points = truth if truth is not None else predicted
    fig = Figure(figsize=size)
    views = (("sagittal", sagittal, 1), ("coronal", coronal, 2))  # (name, image, horizontal voxel axis)
    for i, (view, img, axis) in enumerate(views):
        ax = fig.add_subplot(1, 2, i + 1)
        low, high = window if window is not None else (None, None)
        ax.imshow(img, cmap="gray", origin="lower", aspect=float(sp[0] / sp[axis]), interpolation="nearest",
                  vmin=low, vmax=high)
        for pts, style, color in ((truth, "o", "lime"), (predicted, "x", "red")):
            if pts is not None:
                ok = np.isfinite(pts).all(1)
                ax.plot(pts[ok, axis], pts[ok, 0], style, color=color, ms=4, mfc="none")
        beyond = ""
        if predicted is not None:  # predictions outside the image would vanish: drawn on the nearest edge
            outside, edge = outside_view(np.asarray(predicted)[:, [0, axis]], img.shape)
            if outside.any():
                ax.plot(edge[:, 1], edge[:, 0], "^", color="red", ms=5, clip_on=False)
                beyond = f" ({int(outside.sum())} predicted outside: ▲ at the edge)"
        ax.set_xlim(-0.5, img.shape[1] - 0.5)  # the image, not the points, sets the view
        ax.set_ylim(-0.5, img.shape[0] - 0.5)
        if label_points is not None:
            for name, p in zip(names, label_points):
                if np.isfinite(p).all():
                    ax.annotate(plot_text(str(name)), (p[axis], p[0]), color="yellow", fontsize=5,
                                xytext=(3, 0), textcoords="offset points")
        ax.set_title(f"{view} MIP{beyond}", fontsize=7 if beyond else 8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(plot_text(caption), fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.05)
    return figure_png(fig)
