"""Shared 3D convolution building blocks. Networks take typed primitives (channels, depth), never configs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_relu_stack(in_channels: int, out_channels: int, num_convs: int = 1, kernel_size: int = 3) -> nn.Sequential:
    """``num_convs`` × (k×k×k conv, stride 1, 'same' padding, + ReLU); the first maps in → out channels."""
    if num_convs < 1:
        raise ValueError(f"num_convs must be >= 1, got {num_convs}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def pad_to_multiple(image: torch.Tensor, multiple: int, value: float | None = None) -> tuple[torch.Tensor, tuple]:
    """Pad the last three axes of ``image`` at their high end up to a multiple of ``multiple``.

    The padding value defaults to the image minimum (background/air in a z-scored CT). Returns the padded
    tensor and the original spatial shape (crop with ``x[..., :D, :H, :W]``).
    """
    shape = tuple(image.shape[-3:])
    extra = [(-s) % multiple for s in shape]
    if not any(extra):
        return image, shape
    fill = float(image.min()) if value is None else value
    return F.pad(image, (0, extra[2], 0, extra[1], 0, extra[0]), value=fill), shape


def upsample_to(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear upsampling of ``(B, C, d, h, w)`` to a spatial ``size`` (identity when already there)."""
    if tuple(x.shape[-3:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def argmax_subvoxel(maps: torch.Tensor, subvoxel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak position ``(C, 3)`` (voxel coords, float) and value ``(C,)`` of each channel of ``(C, D, H, W)``.

    With ``subvoxel`` each axis is refined by the vertex of the parabola through the peak and its two
    neighbours, clipped to ±0.5 voxel (no refinement at the border or on a flat peak).
    """
    c, shape = maps.shape[0], maps.shape[1:]
    flat = maps.reshape(c, -1)
    peak, index = flat.max(dim=1)
    coords = torch.stack(torch.unravel_index(index, shape), dim=1)  # (C, 3) long
    out = coords.to(torch.float64)
    if not subvoxel:
        return out, peak
    rows = torch.arange(c)
    for axis in range(3):
        lo, hi = coords.clone(), coords.clone()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        inside = (lo[:, axis] >= 0) & (hi[:, axis] < shape[axis])
        lo[:, axis].clamp_(0, shape[axis] - 1)
        hi[:, axis].clamp_(0, shape[axis] - 1)
        f_lo = maps[rows, lo[:, 0], lo[:, 1], lo[:, 2]].double()
        f_hi = maps[rows, hi[:, 0], hi[:, 1], hi[:, 2]].double()
        curvature = f_lo - 2.0 * peak.double() + f_hi
        ok = inside & (curvature < 0)
        shift = torch.where(ok, 0.5 * (f_lo - f_hi) / torch.where(ok, curvature, -1.0), 0.0)
        out[:, axis] += shift.clamp(-0.5, 0.5)
    return out, peak
