"""Memory-bounded whole-volume inference: one padded pass for small volumes, blended tiles beyond a size."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spinebench.methods.blocks import pad_to_multiple


def tile_shape(shape: tuple[int, int, int], multiple: int, max_voxels: int) -> tuple[int, int, int]:
    """Largest tile (multiples of ``multiple``, at most ``shape``) with at most ``max_voxels`` voxels.

    The longest axis is shrunk first, one ``multiple`` at a time, so tiles stay close to cubes.
    """
    tile = [max(multiple, s) for s in shape]
    while math.prod(tile) > max_voxels:
        axis = max(range(3), key=lambda a: tile[a])
        if tile[axis] <= multiple:
            break
        tile[axis] -= multiple
    return tuple(tile)


def _starts(size: int, tile: int, overlap: float) -> list[int]:
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, max(size - tile, 0) + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _blend_weight(tile: tuple[int, int, int], device) -> torch.Tensor:
    """Separable Gaussian importance (σ = tile/8), so tile borders, which see less context, count less."""
    w = None
    for n in tile:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        g = torch.exp(-0.5 * (x / (n / 8.0)) ** 2).clamp_min(1e-3)
        w = g if w is None else w[..., None] * g
    return w


@torch.no_grad()
def sliding_window_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    pad_multiple: int,
    max_voxels: int,
    overlap: float = 0.25,
) -> torch.Tensor:
    """``fn`` maps ``(1, 1, d, h, w)`` (sizes multiples of ``pad_multiple``) to ``(1, C, d, h, w)``.

    Returns ``(1, C, D, H, W)`` for ``image (1, 1, D, H, W)`` of any size: padded to a multiple and run once
    when it has at most ``max_voxels`` voxels, else run on overlapping tiles of at most ``max_voxels``
    voxels and blended.
    """
    if image.ndim != 5 or image.shape[:2] != (1, 1):
        raise ValueError(f"expected image (1, 1, D, H, W), got {tuple(image.shape)}")
    padded, (d, h, w) = pad_to_multiple(image, pad_multiple)
    shape = tuple(padded.shape[-3:])
    if math.prod(shape) <= max_voxels:
        return fn(padded)[..., :d, :h, :w]
    tile = tile_shape(shape, pad_multiple, max_voxels)
    weight = _blend_weight(tile, image.device)
    out = None
    norm = torch.zeros(shape, device=image.device)
    for z in _starts(shape[0], tile[0], overlap):
        for y in _starts(shape[1], tile[1], overlap):
            for x in _starts(shape[2], tile[2], overlap):
                window = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(x, x + tile[2]))
                pred = fn(padded[(..., *window)])
                if out is None:
                    out = torch.zeros((1, pred.shape[1], *shape), dtype=pred.dtype, device=image.device)
                out[(..., *window)] += pred * weight
                norm[window] += weight
    return (out / norm)[..., :d, :h, :w]
