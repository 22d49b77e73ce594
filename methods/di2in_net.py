"""DI2IN's network (Yang et al., IPMI 2017, Fig. 3): a 3D encoder-decoder with deep supervision and a fused output.

``DI2INNet.forward`` is the fast form used for training and inference; ``DI2INNet.literal_forward`` computes the
same maps as drawn and is the reference the fast form is tested (tests/test_di2in.py) and benchmarked
(perf/bench_di2in.py) against. The method around it (targets, loss, decoding, message passing, shape
refinement) is ``methods.di2in``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spinebench.methods.blocks import conv_relu_stack, pointwise, upsample_to


class Decoded(NamedTuple):
    """``DI2INNet.decode``'s output: each decoder level's features (index = level, 0: full resolution) and level
    1's features upsampled to full resolution (None when depth is 1)."""

    features: list[torch.Tensor]
    lifted: torch.Tensor | None


class DI2INNet(nn.Module):
    """Encoder (conv+ReLU, max-pool) / decoder (×2 trilinear upsampling, skip concatenation, conv+ReLU).

    Every decoder level feeds a deep-supervision branch (1×1×1 conv to K maps, upsampled to full size); the
    final output is ReLU(1×1×1 conv over the concatenated branches), initialised as their mean. Input sizes
    must be multiples of ``2**depth``.

    The arithmetic is ordered for speed, not literally as described (tests/test_di2in.py checks it against the
    literal form): 1×1×1 mixing commutes with trilinear upsampling, so the fusion conv is folded into each
    head and applied at the branch's own resolution, and only the K-channel sum is ever full size; the
    training loss compares coarse branches without upsampling them (``methods.heatmap_loss``).
    """

    def __init__(self, in_channels: int, out_channels: int, base_width: int, depth: int, convs_per_level: int):
        super().__init__()
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList(
            conv_relu_stack(in_channels if lvl == 0 else widths[lvl - 1], widths[lvl], convs_per_level)
            for lvl in range(depth + 1)
        )
        self.decoder = nn.ModuleList(
            conv_relu_stack(widths[lvl + 1] + widths[lvl], widths[lvl], convs_per_level) for lvl in range(depth)
        )
        self.heads = nn.ModuleList(nn.Conv3d(widths[lvl], out_channels, 1) for lvl in range(depth))
        self.fuse = nn.Conv3d(depth * out_channels, out_channels, 1)
        with torch.no_grad():
            eye = torch.eye(out_channels).repeat(1, depth) / depth
            self.fuse.weight.copy_(eye[..., None, None, None])
            self.fuse.bias.zero_()

    def decode(self, image: torch.Tensor) -> Decoded:
        """Decoder features of every level, index = level (0: full resolution), and level 1's features upsampled
        to full resolution (the last decoder level's input, kept for ``fused``). Keeps the input's memory format."""
        size = tuple(image.shape[-3:])
        if any(s % 2**self.depth for s in size):
            raise ValueError(f"input size {size} is not a multiple of 2**depth = {2**self.depth}")
        fmt = torch.channels_last_3d if image.is_contiguous(memory_format=torch.channels_last_3d) else None
        keep = (lambda t: t.contiguous(memory_format=fmt)) if fmt is not None else (lambda t: t)  # noqa: E731
        skips, x = [], image
        for lvl, block in enumerate(self.encoder):
            x = keep(block(x))  # a 1-channel input leaves oneDNN's output contiguous
            if lvl < self.depth:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        features, lifted = [None] * self.depth, None
        for lvl in reversed(range(self.depth)):
            x = upsample_to(x, tuple(2 * n for n in x.shape[-3:]))
            if lvl == 0 and self.depth > 1:  # upsampled features of decoder level 1 (not the encoder's bottom)
                lifted = x
            x = keep(self.decoder[lvl](torch.cat([x, skips[lvl]], dim=1)))
            features[lvl] = x
        return Decoded(features, lifted)

    def branch_logits(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each level's K deep-supervision maps at that level's resolution."""
        return [pointwise(x, head.weight, head.bias) for x, head in zip(features, self.heads)]

    def fused(self, decoded: Decoded, size: tuple[int, int, int]) -> torch.Tensor:
        """ReLU(fuse(concat(upsampled branches))) without the branches: Σ_l upsample(fuse_l · head_l(x_l)) + b,
        with every bias folded into the one b (upsampling preserves constants). Level 1's term is formed from
        its features as the decoder already upsampled them, fuse_1 · head_1(upsample(x_1)), which saves
        upsampling its K maps to full size (small inference at 160×112×112 on one thread: 0.79 → 0.72 s)."""
        features = list(decoded.features)
        if decoded.lifted is not None:
            features[1] = decoded.lifted
        k = self.fuse.out_channels
        total, bias = None, self.fuse.bias
        for lvl in reversed(range(self.depth)):  # coarsest first: the sum is built in place at full size
            mix = self.fuse.weight[:, lvl * k : (lvl + 1) * k, 0, 0, 0]
            head = self.heads[lvl]
            weight = mix @ head.weight.reshape(k, -1)
            bias = bias + mix @ head.bias
            x = features[lvl]
            channels_last = total is not None and total.is_contiguous(memory_format=torch.channels_last_3d)
            if channels_last and tuple(x.shape[-3:]) == size:
                # full resolution: accumulate the product straight into the sum (no K-channel temporary)
                # (in the sum's dtype: under autocast the convolutions and the matmuls may differ)
                flat = total.permute(0, 2, 3, 4, 1).view(-1, k)
                flat.addmm_(x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1]).to(flat.dtype),
                            weight.t().to(flat.dtype).contiguous())
                continue
            part = upsample_to(pointwise(x, weight), size)
            total = part if total is None else total.add_(part)
        return F.relu_(total.add_(bias[None, :, None, None, None]))

    def literal_forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final, branches deepest first) computed as drawn: ``F.conv3d``, every branch upsampled to full size,
        the fusion conv over their concatenation. The reference the fast path is tested and benchmarked against."""
        def stack(block: nn.Sequential, t: torch.Tensor) -> torch.Tensor:
            for m in block:
                t = F.conv3d(t, m.weight, m.bias, padding=m.padding) if isinstance(m, nn.Conv3d) else F.relu(t)
            return t

        skips, x = [], image
        for lvl, block in enumerate(self.encoder):
            x = stack(block, x)
            if lvl < self.depth:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        size, branches = tuple(image.shape[-3:]), []
        for lvl in reversed(range(self.depth)):
            x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
            x = stack(self.decoder[lvl], torch.cat([x, skips[lvl]], 1))
            branches.append(F.interpolate(self.heads[lvl](x), size=size, mode="trilinear", align_corners=False))
        return F.relu(self.fuse(torch.cat(branches[::-1], 1))), branches

    def forward(self, image: torch.Tensor, with_branches: bool = True) -> dict[str, torch.Tensor]:
        size = tuple(image.shape[-3:])
        decoded = self.decode(image)
        final = self.fused(decoded, size)
        branches = ([upsample_to(z, size) for z in reversed(self.branch_logits(decoded.features))]
                    if with_branches else [])
        return {"final": final, "branches": branches}
