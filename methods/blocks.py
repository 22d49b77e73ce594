"""Shared 3D convolution building blocks. Networks take typed primitives (channels, depth), never configs."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def _onednn(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
        and torch.backends.mkldnn.enabled and not x.is_mkldnn  # fmt: skip


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state dict) whose CPU float32 convolutions always run oneDNN.

    PyTorch's dispatcher sends a batch-1 volume whose N·C·D·H is below 20480 (e.g. 1×16×40×28) to its
    reference kernel ``slow_conv3d``, 3-6x slower here than oneDNN on the same tensors (1×16×40×28×28 → 32
    channels: 85.6 vs 13.3 ms on one thread); that is every whole-volume inference of these networks. Other
    devices and dtypes take ``nn.Conv3d``'s path.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode == "zeros" and not isinstance(self.padding, str) and _onednn(x):
            return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1×1×1 convolution of ``(B, C, D, H, W)`` with ``weight`` ``(K, C)`` or ``(K, C, 1, 1, 1)``.

    One matrix product over the channels-last view, so a ``channels_last_3d`` input gives a
    ``channels_last_3d`` output without copies (PyTorch's 1×1×1 ``conv3d`` returns a contiguous tensor and
    runs its slow reference kernel on one thread). The transposed weight is made contiguous so that autograd
    forms the weight gradient as ``xᵀ·g``: for a transposed view it forms ``(gᵀ·x)ᵀ``, which MKL runs 15x
    slower for these long, thin matrices (163840 voxels, 8 → 26 channels: 66 vs 4 ms on one thread).
    """
    b, c, d, h, w = x.shape
    weight_t = weight.reshape(weight.shape[0], -1).t().contiguous()
    flat = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
    out = flat @ weight_t
    if bias is not None:
        out = out.add_(bias)  # in place: addmm would first copy the bias into the whole output
    return out.view(b, d, h, w, -1).permute(0, 4, 1, 2, 3)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool3d(x, 2)`` of ``(B, C, D, H, W)`` (odd sizes floored), identical values.

    Without autograd, as three element-wise maxima of strided views: 8x faster on CPU than PyTorch's
    pooling kernel, which also computes the argmax indices that inference never uses (4×8×64×48×48: 2.5 vs
    20 ms on one thread). With autograd, PyTorch's kernel: its backward is 3x faster than the maxima's.
    """
    if torch.is_grad_enabled() and x.requires_grad or x.dim() != 5:
        return F.max_pool3d(x, 2)
    d, h, w = (s - s % 2 for s in x.shape[-3:])
    x = x[..., :d, :h, :w]
    y = torch.maximum(x[..., 0::2, :, :], x[..., 1::2, :, :])
    y = torch.maximum(y[..., 0::2, :], y[..., 1::2, :])
    return torch.maximum(y[..., 0::2], y[..., 1::2])


def conv_relu_stack(in_channels: int, out_channels: int, num_convs: int = 1, kernel_size: int = 3) -> nn.Sequential:
    """``num_convs`` × (k×k×k conv, stride 1, 'same' padding, + ReLU); the first maps in → out channels."""
    if num_convs < 1:
        raise ValueError(f"num_convs must be >= 1, got {num_convs}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            Conv3d(in_channels if i == 0 else out_channels, out_channels, kernel_size, padding=kernel_size // 2),
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


@functools.lru_cache(maxsize=256)
def linear_weights(n_in: int, n_out: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1D linear interpolation, ``align_corners=False`` (PyTorch's sampling rule:
    source = (destination + 0.5) · n_in / n_out − 0.5, clamped at 0; the upper neighbour clamped at the end)."""
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((dst.long(), lo), 1.0 - frac, accumulate=True)
    weights.index_put_((dst.long(), hi), frac, accumulate=True)
    return weights.to(dtype=dtype, device=device)


def upsample_to(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resizing of ``(B, C, d, h, w)`` to a spatial ``size`` (identity when already there).

    Equal, to float rounding, to ``F.interpolate(x, size, mode="trilinear", align_corners=False)``, computed as
    three 1D interpolations, each a matrix product: 3-4x faster forward and backward on CPU than the fused
    kernel for the sizes of these networks (tests/test_blocks.py holds the equality). A ``channels_last_3d``
    tensor is resized by PyTorch's channels-last kernel instead, which keeps the format and is faster still
    (with autograd on a CPU, through ``_ChannelsLastTrilinear``, which keeps its backward on the fast path).
    """
    d, h, w = x.shape[-3:]
    out_d, out_h, out_w = (int(s) for s in size)
    if (d, h, w) == (out_d, out_h, out_w):
        return x
    if x.dim() == 5 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d):
        if x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad:
            return _ChannelsLastTrilinear.apply(x, (out_d, out_h, out_w))
        return F.interpolate(x, size=(out_d, out_h, out_w), mode="trilinear", align_corners=False)
    key = (x.dtype, str(x.device))
    y = x if w == out_w else torch.matmul(x, linear_weights(w, out_w, *key).T)
    y = y if h == out_h else torch.matmul(linear_weights(h, out_h, *key), y)
    if d != out_d:
        lead = y.shape[:-3]
        y = torch.matmul(linear_weights(d, out_d, *key), y.reshape(*lead, d, out_h * out_w))
        y = y.reshape(*lead, out_d, out_h, out_w)
    return y


class _ChannelsLastTrilinear(torch.autograd.Function):
    """``F.interpolate(x, size, "trilinear")`` of a ``channels_last_3d`` CPU tensor whose backward hands PyTorch's
    kernel a ``channels_last_3d`` gradient.

    The gradient reaching a decoder's upsampling is a channel slice of its concatenation's gradient (strided,
    neither layout), and a fused branch's is the sum's: PyTorch's channels-last backward kernel then takes a
    generic path, 4x slower than on a contiguous channels-last gradient (2 x 16 x 40 x 16 x 16 → 80 x 32 x 32:
    20.6 against 5.4 ms forward and backward on one thread). One copy of the gradient first costs ~1 ms; a DI2IN
    training step of the default recipe takes 0.230 instead of 0.258 s (perf/bench_di2in.py). Same values.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        ctx.input_shape, ctx.size, ctx.dtype = tuple(x.shape), size, x.dtype
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        grad_x = torch.ops.aten.upsample_trilinear3d_backward(grad, list(ctx.size), list(ctx.input_shape), False)
        return grad_x.to(ctx.dtype), None


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
    rows = torch.arange(c, device=maps.device)
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
