"""Shared network blocks: the separable trilinear resize equals PyTorch's, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spinebench.methods.blocks import max_pool2, upsample_to


@pytest.mark.parametrize("src, dst", [((3, 4, 5), (6, 8, 10)), ((9, 3, 4), (72, 24, 32)), ((5, 6, 7), (5, 13, 7)),
                                      ((4, 4, 4), (7, 9, 11)), ((6, 5, 4), (3, 5, 2))])
def test_separable_resize_equals_trilinear_interpolate(src, dst):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *src, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, size=dst, mode="trilinear", align_corners=False)
    out = upsample_to(x, dst)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    (grad_out,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(grad_out, grad_ref, rtol=0, atol=1e-12)


def test_float32_channels_last_input_and_identity():
    x = torch.randn(1, 8, 5, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    ref = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
    torch.testing.assert_close(upsample_to(x, (10, 12, 14)), ref, rtol=1e-5, atol=1e-6)
    assert upsample_to(x, (5, 6, 7)) is x


@pytest.mark.parametrize("shape, cout", [((1, 1, 9, 8, 7), 4), ((1, 6, 5, 6, 7), 8), ((2, 3, 4, 4, 4), 5)])
def test_conv3d_equals_torch_conv_values_and_gradients(shape, cout):
    from spinebench.methods.blocks import Conv3d

    torch.manual_seed(0)
    conv = Conv3d(shape[1], cout, 3, padding=1)
    x = torch.randn(*shape, requires_grad=True)
    ref = F.conv3d(x, conv.weight, conv.bias, padding=1)
    out = conv(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, [x, conv.weight], g), torch.autograd.grad(ref, [x, conv.weight], g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert isinstance(conv, torch.nn.Conv3d) and set(conv.state_dict()) == {"weight", "bias"}


def test_pointwise_equals_a_1x1x1_conv_and_keeps_channels_last():
    from spinebench.methods.blocks import pointwise

    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, 5, 3).contiguous(memory_format=torch.channels_last_3d)
    weight, bias = torch.randn(7, 6, 1, 1, 1), torch.randn(7)
    out = pointwise(x, weight, bias)
    torch.testing.assert_close(out, F.conv3d(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(pointwise(x.contiguous(), weight), F.conv3d(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6, 10), (1, 4, 9, 7, 5), (3, 1, 2, 2, 2)])
def test_max_pool2_equals_max_pool3d_with_and_without_autograd(shape):
    x = torch.randn(*shape, dtype=torch.float64)  # odd sizes are floored, as by max_pool3d
    with torch.no_grad():
        assert torch.equal(max_pool2(x), F.max_pool3d(x, 2))  # the strided-maxima path
    xg = x.clone().requires_grad_()
    y = max_pool2(xg)
    y.backward(torch.ones_like(y))
    assert torch.equal(y.detach(), F.max_pool3d(x, 2)) and xg.grad is not None and xg.grad.sum() == y.numel()


@pytest.mark.parametrize("channels, src", [(16, (4, 3, 5)), (26, (2, 4, 4))])
def test_channels_last_resize_gradients_equal_interpolates_for_a_strided_gradient(channels, src):
    """A decoder's upsampling gets a channel slice of its concatenation's gradient (neither layout): the
    channels-last path's backward equals ``F.interpolate``'s on it, in float32 and under bfloat16 autocast."""
    torch.manual_seed(0)
    dst = tuple(2 * n for n in src)
    x = torch.randn(2, channels, *src).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    other = torch.randn(2, 5, *dst).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(channels + 5, *dst)
    grads = []
    for resize in (upsample_to, lambda t, size: F.interpolate(t, size=size, mode="trilinear", align_corners=False)):
        out = resize(x, dst)
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        (grad,) = torch.autograd.grad((torch.cat([out, other], 1) * weight).sum(), x)
        grads.append((out.detach(), grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.detach().to(torch.bfloat16).requires_grad_()
        (grad_b,) = torch.autograd.grad(upsample_to(xb, dst).float().sum(), xb)
    assert grad_b.dtype == torch.bfloat16 and grad_b.shape == xb.shape
    # each input voxel feeds 2 x 2 x 2 output voxels with weights summing to 2 per axis
    torch.testing.assert_close(grad_b.float(), torch.full(xb.shape, 8.0), rtol=0, atol=0)
