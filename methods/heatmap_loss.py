"""DI2IN's training loss: weighted squared error of Gaussian heatmaps, formed without full-size branch maps.

The target of vertebra k is a separable Gaussian, T = g_D ⊗ g_H ⊗ g_W (``datamodules.targets``), and the
weight of a voxel is w = 1 + a·T (``a = foreground_weight − 1``; a = 0 is the paper's plain squared loss). A
deep-supervision branch predicts z at a coarse level and is compared with T after trilinear upsampling U, which
is separable too: U = A_D ⊗ A_H ⊗ A_W. Expanding Σ w (Uz − T)² gives terms that all live at the coarse size:

    Σ (1 + aT)(Uz)²  = <z, ⊗(AᵀA) z> + a <z, ⊗(Aᵀ diag(g) A) z>
    Σ (1 + aT) T Uz  = <z, ⊗(Aᵀg)>   + a <z, ⊗(Aᵀg²)>
    Σ (1 + aT) T²    = Π Σg²          + a Π Σg³

so a branch's loss costs a few small matrix products instead of a K-channel full-resolution map, its gradient
and the elementwise passes over both (``branch_sse`` equals the dense loss of the upsampled map to float
rounding; tests/test_heatmap_loss.py). The paper's loss is unchanged; only the order of the arithmetic is.
"""

from __future__ import annotations

import torch

from spinebench.methods.blocks import linear_weights


def gaussian_factors(centroids_vox: torch.Tensor, present: torch.Tensor, shape: tuple[int, int, int],
                     sigma_vox: float) -> list[torch.Tensor]:  # fmt: skip
    """The three 1D factors ``(B, K, n_axis)`` of ``gaussian_heatmaps`` (float64; absent vertebrae all zero)."""
    c = centroids_vox.to(torch.float64)
    factors = []
    for axis, n in enumerate(shape):
        grid = torch.arange(n, dtype=torch.float64, device=c.device)
        factors.append(torch.exp(-((grid - c[..., axis, None]) ** 2) / (2.0 * sigma_vox**2)))
    factors[0] = factors[0] * present.to(torch.float64)[..., None]
    return factors


def dense_target(factors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``T = g_D ⊗ g_H ⊗ g_W`` as ``(B, K, D, H, W)`` float32, in ``like``'s memory format."""
    g = [f.to(torch.float32) for f in factors]
    if like.is_contiguous(memory_format=torch.channels_last_3d) and not like.is_contiguous():
        gd, gh, gw = (f.transpose(1, 2).contiguous() for f in g)  # (B, n, K): channels last
        t = gd[:, :, None, None, :] * gh[:, None, :, None, :]
        out = torch.empty((*t.shape[:3], gw.shape[1], t.shape[-1]), dtype=torch.float32, device=t.device)
        return torch.mul(t, gw[:, None, None, :, :], out=out).permute(0, 4, 1, 2, 3)
    return g[0][..., :, None, None] * g[1][..., None, :, None] * g[2][..., None, None, :]


def dense_sse(pred: torch.Tensor, target: torch.Tensor, a: float = 0.0) -> torch.Tensor:
    """``Σ (1 + a·target) · (pred − target)²`` over full-size maps (float64 scalar; a = 0: the plain squared error).

    One autograd node that keeps a single full-size tensor, ``(1 + a·target) · (pred − target)``, for its
    gradient (elementwise autograd keeps several), formed with one fused multiply-add instead of a weight map,
    and summed with a dot product over the memory-order view: no temporaries beyond that tensor, no mixing of
    memory formats in the backward pass, whose gradient is that tensor scaled in place. These full-size passes
    are memory-bound: each one saved is 5-10 ms of a default training step here.
    """
    return _WeightedSSE.apply(pred, target, float(a)).double()


def _flat(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.permute(0, 2, 3, 4, 1).reshape(-1)
    return t.reshape(-1)


class _WeightedSSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, a):
        residual = pred - target
        weighted = residual if a == 0.0 else torch.addcmul(residual, residual, target, value=a)
        ctx.save_for_backward(weighted)
        if residual.stride() != weighted.stride():  # different memory orders: flat views would not pair up
            return (residual * weighted).sum()
        return torch.dot(_flat(residual), _flat(weighted))

    @staticmethod
    def backward(ctx, grad):
        if getattr(ctx, "used", False):
            raise RuntimeError("dense_sse: a second backward through one forward (its saved tensor was consumed)")
        ctx.used = True
        (weighted,) = ctx.saved_tensors  # needed by nothing else: scaled in place
        return weighted.mul_(2.0 * grad), None, None


def _apply(mats: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """``(M_D ⊗ M_H ⊗ M_W) z`` for ``z`` ``(B, K, d, h, w)``; each M ``(n, n)`` or per channel ``(B, K, n, n)``."""
    mh, mw = (m if m.dim() == 2 else m[:, :, None] for m in mats[1:])
    y = torch.matmul(mh, torch.matmul(z, mw.transpose(-1, -2)))
    b, k, d, h, w = y.shape
    md = mats[0]
    return torch.matmul(md, y.reshape(b, k, d, h * w)).reshape(b, k, d, h, w)


def branch_sse(z: torch.Tensor, factors: list[torch.Tensor], size: tuple[int, int, int], a: float) -> torch.Tensor:
    """``Σ (1 + a·T) (upsample_to(z, size)[..., :D, :H, :W] − T)²`` for coarse logits ``z`` ``(B, K, d, h, w)``.

    The upsampling is trilinear (``align_corners=False``) to ``size`` (the padded input); the comparison covers
    the factors' ``(D, H, W)`` (the image before padding, each ≤ ``size``). Computed in z's dtype, at least
    float32 and outside autocast (the three terms cancel: in bf16 their difference would be rounding noise),
    returned as float64.
    """
    with torch.autocast(z.device.type, enabled=False):
        return _branch_sse(z.to(torch.promote_types(z.dtype, torch.float32)), factors, size, a)


def _branch_sse(z: torch.Tensor, factors: list[torch.Tensor], size: tuple[int, int, int], a: float) -> torch.Tensor:
    factors = [g.to(z.dtype) for g in factors]
    mats = [linear_weights(n, int(m), z.dtype, str(z.device))[: g.shape[-1]]
            for n, m, g in zip(z.shape[-3:], size, factors)]  # fmt: skip
    gram = [m.T @ m for m in mats]
    quad = (z * _apply(gram, z)).sum()
    lin = z * _outer([g @ m for g, m in zip(factors, mats)])
    const = torch.prod(torch.stack([(g * g).sum(-1) for g in factors]), 0).sum()
    if a != 0.0:
        weighted = [torch.einsum("ni,bkn,nj->bkij", m, g, m) for m, g in zip(mats, factors)]
        quad = quad + a * (z * _apply(weighted, z)).sum()
        lin = lin + a * z * _outer([(g * g) @ m for g, m in zip(factors, mats)])
        const = const + a * torch.prod(torch.stack([(g**3).sum(-1) for g in factors]), 0).sum()
    return (quad - 2.0 * lin.sum() + const).double()


def _outer(v: list[torch.Tensor]) -> torch.Tensor:
    return v[0][..., :, None, None] * v[1][..., None, :, None] * v[2][..., None, None, :]
