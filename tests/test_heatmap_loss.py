"""DI2IN's loss formed at the branches' own resolution equals the loss of the upsampled full-size maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spinebench.datamodules.targets import gaussian_heatmaps
from spinebench.methods.heatmap_loss import branch_sse, dense_sse, dense_target, gaussian_factors


def _case(shape=(12, 10, 14), k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centroids = torch.rand(2, k, 3, generator=g) * torch.tensor(shape)
    present = torch.tensor([[True, False, True, True], [False, True, True, False]])[:, :k]
    return centroids, present


@pytest.mark.parametrize("a", [0.0, 49.0])
@pytest.mark.parametrize("factor, crop", [(2, (12, 10, 14)), (4, (12, 8, 16)), (4, (11, 7, 13))])
def test_branch_sse_equals_dense_sse_of_the_upsampled_branch(a, factor, crop):
    size = (12, 8, 16) if factor == 4 else (12, 10, 14)
    coarse = tuple(n // factor for n in size)
    centroids, present = _case(crop)
    factors = gaussian_factors(centroids, present, crop, 1.5)
    target = gaussian_heatmaps(centroids, present, crop, 1.5).double()
    z = torch.randn(2, 4, *coarse, dtype=torch.float64, requires_grad=True)
    up = F.interpolate(z, size=size, mode="trilinear", align_corners=False)[..., : crop[0], : crop[1], : crop[2]]
    expected = ((1 + a * target) * (up - target) ** 2).sum()
    got = branch_sse(z, factors, size, a)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)  # the reference target is float32
    (g_expected,) = torch.autograd.grad(expected, z)
    (g_got,) = torch.autograd.grad(got, z)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-5, atol=1e-5 * float(g_expected.abs().max()))


def test_factors_rebuild_the_dense_targets_in_either_memory_format():
    centroids, present = _case()
    shape = (12, 10, 14)
    factors = gaussian_factors(centroids, present, shape, 2.0)
    reference = gaussian_heatmaps(centroids, present, shape, 2.0)
    plain = dense_target(factors, torch.empty(2, 4, *shape))
    last = dense_target(factors, torch.empty(2, 4, *shape).contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(plain, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(last, reference, rtol=1e-6, atol=1e-7)
    assert last.is_contiguous(memory_format=torch.channels_last_3d) and not last.is_contiguous()
    assert float(plain[0, 1].abs().max()) == 0.0  # an absent vertebra has no target


def test_dense_sse_weights_the_foreground():
    target = torch.zeros(1, 1, 2, 2, 2)
    target[0, 0, 0, 0, 0] = 1.0
    pred = torch.full_like(target, 0.5)
    # 7 background voxels at 0.25 each, the target voxel 0.25 weighted by 1 + a
    assert float(dense_sse(pred, target)) == pytest.approx(2.0)
    assert float(dense_sse(pred, target, 3.0)) == pytest.approx(7 * 0.25 + 4 * 0.25)
    # the gradient of the one autograd node: 2 w (pred - target), in either memory format
    for p in (pred, pred.contiguous(memory_format=torch.channels_last_3d)):
        p = p.clone().requires_grad_(True)
        loss = dense_sse(p, target, 3.0)
        (grad,) = torch.autograd.grad(loss, p, retain_graph=True)
        torch.testing.assert_close(grad, 2.0 * (1.0 + 3.0 * target) * (p.detach() - target))
        with pytest.raises(RuntimeError, match="second backward"):  # its saved tensor became the gradient
            torch.autograd.grad(loss, p)


def test_branch_sse_under_mixed_precision_keeps_float32_accuracy():
    """bf16 branch logits under autocast (AMP): the expanded terms cancel, so they are formed in float32."""
    size, crop = (12, 8, 16), (11, 7, 13)
    centroids, present = _case(crop)
    factors = gaussian_factors(centroids, present, crop, 1.5)
    z = torch.randn(2, 4, 3, 2, 4, dtype=torch.float64)
    z16 = z.to(torch.bfloat16)
    expected = branch_sse(z16.double(), factors, size, 49.0)  # the same bf16 values, in float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = branch_sse(z16.requires_grad_(True), factors, size, 49.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    got.backward()
    assert z16.grad.dtype == torch.bfloat16 and torch.isfinite(z16.grad.float()).all()
