"""Residual multi-label classification + localization network with integral regression (Qin et al.).

Variants (one class, registered overrides): ``resml_loc`` (localization branch only; a vertebra counts as
present in a crop when its regressed coordinate lies inside the crop — the paper's "localization network"
row), ``resml_cls`` (+ multi-label classification branch, no Bi-LSTM) and ``resml_cls_bilstm`` (+ 3 stacked
bidirectional LSTMs, the paper's full method).

Training batches are crops (``DataRequirements(sample_mode="crop")``): ``centroids_vox`` are crop-local voxel
coordinates (relative to the crop, i.e. volume coordinate minus ``crop_origin_vox``) and ``present`` is
"annotated and inside the crop". Whole volumes are predicted by ``methods.crop_inference`` (tiling + K-means).

Size: ``preset="paper"`` (default: the paper's crop, classifier and LSTM sizes) or ``preset="small"``
(CPU-sized); ``widths``, ``cls_channels``, ``lstm_hidden`` and ``crop_size_vox`` set explicitly win over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spinebench.datamodules.errors import InputError
from spinebench.methods.base import DataRequirements, VertebraMethod, VolumePrediction
from spinebench.methods.blocks import Conv3d, max_pool2, upsample_to
from spinebench.methods.crop_inference import predict_volume_tiled
from spinebench.methods.integral import soft_argmax_3d
from spinebench.methods.registry import register_method
from spinebench.methods.schedules import SCHEDULES, cosine_schedule, total_training_steps


# preset -> network size; any of these fields set explicitly wins over the preset.
RESML_PRESETS: dict[str, dict] = {
    # the paper's crop (104 x 80 x 80 at 2 mm), classifier and LSTM sizes; widths are ours (Fig. 3 not in text)
    "paper": {"widths": (32, 64, 128, 256), "cls_channels": 32, "lstm_hidden": 128, "crop_size_vox": (104, 80, 80)},
    # CPU-sized: a quarter of the channels, a smaller crop (128 x 96 x 96 mm at 2 mm) and LSTM
    "small": {"widths": (8, 16, 16, 32), "cls_channels": 8, "lstm_hidden": 32, "crop_size_vox": (64, 48, 48)},
}


@dataclass(frozen=True)
class ResMLConfig:
    num_vertebrae: int = 26
    preset: str = "paper"  # "paper" | "small" (RESML_PRESETS); the four fields below override it
    crop_size_vox: tuple[int, int, int] | None = None  # (D, H, W); paper: (104, 80, 80) at 2 mm
    widths: tuple[int, int, int, int] | None = None  # channels at 1, 1/2, 1/4, 1/8 resolution
    cls_channels: int | None = None  # the two classification convolutions (5x3x3, 1x1x1); paper: 32
    lstm_hidden: int | None = None  # paper: 128
    lstm_layers: int = 3  # stacked bidirectional LSTMs
    norm_groups: int = 4  # GroupNorm groups, as in the paper
    use_classifier: bool = True
    use_bilstm: bool = True
    localization_weight: float = 0.4  # lambda of the Smooth-L1 coordinate loss
    pos_weight: float = 3.0  # B of the weighted BCE; the paper uses 2 to 4
    learning_rate: float = 0.01  # Adam, the paper's initial rate
    weight_decay: float = 1e-4
    plateau_factor: float = 0.4
    plateau_patience: int = 10  # epochs; not given in the paper
    min_learning_rate: float = 1e-6
    plateau_monitor: str = "train/epoch_loss"  # e.g. "val/id_rate" with plateau_mode="max" when validating
    plateau_mode: str = "min"
    # "plateau" (the paper's reduce-on-plateau, fields above) | "cosine" (linear warm-up over warmup_steps, then
    # cosine decay to 0 at the end of the budget; methods.schedules) | "constant"
    lr_schedule: str = "plateau"
    warmup_steps: int = 0
    # whole-CT inference (methods/crop_inference.py documents the rule)
    tile_overlap: float = 0.5
    # crops per forward pass; None: 2 on a CPU (45 vs 51 ms a crop with 4), 16 on a GPU (an H200, paper preset:
    # 0.09 vs 0.23 s per case with 2; perf/bench_gpu.py)
    inference_batch_size: int | None = None
    presence_threshold: float = 0.5
    border_margin_vox: float = 2.0
    n_clusters: int = 3
    merge_radius_vox: float = 5.0
    min_support: int = 1
    min_agreement: float = 0.25  # share of the crops containing the centroid that must agree

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> InputError:
            return InputError(f"resml option {key}: {getattr(self, key)!r} {why}")

        if self.preset not in RESML_PRESETS:
            raise bad("preset", f"is unknown; valid: {', '.join(RESML_PRESETS)}")
        for key, value in RESML_PRESETS[self.preset].items():
            given = getattr(self, key)
            value = value if given is None else given
            value = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)
            object.__setattr__(self, key, value)
        if self.num_vertebrae < 1:
            raise bad("num_vertebrae", "must be at least 1")
        if len(self.crop_size_vox) != 3 or any(s < 8 or s % 8 for s in self.crop_size_vox):
            raise bad("crop_size_vox", "must be three sizes, each a multiple of 8 (three 2x max-pools)")
        step = 2 * self.norm_groups  # GroupNorm on the out/2 bottleneck of every residual module
        if len(self.widths) != 4 or any(w < step or w % step for w in self.widths):
            raise bad("widths", f"must be four channel counts, each a multiple of 2 * norm_groups = {step}")
        if self.cls_channels < 1 or self.cls_channels % self.norm_groups:
            raise bad("cls_channels", f"must be a multiple of norm_groups = {self.norm_groups}")
        if self.lstm_hidden < 1 or self.lstm_layers < 1:
            raise bad("lstm_hidden", "and lstm_layers must be at least 1")
        if self.use_bilstm and not self.use_classifier:
            raise bad("use_bilstm", "needs use_classifier=True (the Bi-LSTM is part of the classification branch)")
        if self.lr_schedule not in ("plateau", *SCHEDULES):
            raise bad("lr_schedule", f"is unknown; valid: plateau, {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "must be >= 0")
        if self.plateau_mode not in ("min", "max"):
            raise bad("plateau_mode", "must be 'min' or 'max'")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise bad("min_agreement", "must be in [0, 1]")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise bad("tile_overlap", "must be in [0, 1)")
        for key in ("n_clusters", "min_support", "inference_batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(key, "must be at least 1")


class ResidualModule(nn.Module):
    """1x1x1 -> 3x3x3 -> 1x1x1 convolutions (bottleneck of out/2), GroupNorm + ReLU after each; identity or
    1x1x1 projection skip. Keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4) -> None:
        super().__init__()
        mid = out_channels // 2
        layers = []
        for cin, cout, k in ((in_channels, mid, 1), (mid, mid, 3), (mid, out_channels, 1)):
            layers += [_conv(cin, cout, k), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        # in place without autograd (the body ends in an in-place ReLU whose output its backward needs)
        return y.add_(self.skip(x)) if not torch.is_grad_enabled() else y + self.skip(x)


def _conv(cin: int, cout: int, kernel) -> nn.Conv3d:
    """Bias-free 'same' convolution. Spatial kernels always run oneDNN on CPU (``blocks.Conv3d``; batch-1
    crops would otherwise take PyTorch's reference kernel, 3x slower); 1x1x1 stays ``nn.Conv3d``, whose
    reference kernel is faster than oneDNN for these few channels."""
    if kernel == 1:
        return nn.Conv3d(cin, cout, 1, bias=False)
    padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return Conv3d(cin, cout, kernel, padding=padding, bias=False)


def _conv_gn_relu(cin: int, cout: int, kernel, groups: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, kernel), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class ResMLNet(nn.Module):
    """Shared residual encoder, hourglass localization branch and optional multi-label classifier.

    Encoder: 6 residual modules with 3 max-pools (one module at 1, 1/2 and 1/4 resolution, three at 1/8);
    4 skip-out branches (GroupNorm'd 1x1x1 convolutions, one per scale). Localization: starting from the 1/8
    skip-out, 3 x (residual module, x2 trilinear upsampling to the next skip-out's size, element-wise add of
    that skip-out), then a 3x3x3 and a 1x1x1 convolution -> K heatmaps (logits at input resolution) ->
    integral regression. Classification (on the 1/8 encoder features): conv 5x3x3 -> conv 1x1x1 -> adaptive
    max-pool to ``pooled_size`` -> [Bi-LSTM x ``lstm_layers``] -> fully connected -> K logits. The Bi-LSTM
    reads the pooled map as a sequence along axis 0 (the vertical, cranio-caudal axis): time step d is the
    flattened (channels x H' x W') slab d, so the recurrence runs along the spine; the FC layer sees all
    time steps' outputs (D' x 2 x hidden). Any input size works; outputs do not depend on the batch size.
    """

    def __init__(
        self,
        num_outputs: int,
        widths: tuple[int, int, int, int],
        groups: int = 4,
        use_classifier: bool = True,
        use_bilstm: bool = True,
        cls_channels: int = 32,
        lstm_hidden: int = 128,
        lstm_layers: int = 3,
        pooled_size: tuple[int, int, int] = (6, 5, 5),
    ) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.encoder = nn.ModuleList(
            [
                ResidualModule(1, w0, groups),
                ResidualModule(w0, w1, groups),
                ResidualModule(w1, w2, groups),
                nn.Sequential(*(ResidualModule(w2 if i == 0 else w3, w3, groups) for i in range(3))),
            ]
        )
        self.skip_outs = nn.ModuleList([_conv_gn_relu(w, w, 1, groups) for w in widths])
        self.decoder = nn.ModuleList(
            [ResidualModule(w3, w2, groups), ResidualModule(w2, w1, groups), ResidualModule(w1, w0, groups)]
        )
        self.head = nn.Sequential(_conv_gn_relu(w0, w0, 3, groups), nn.Conv3d(w0, num_outputs, 1))
        self.classifier = None
        self.lstm = None
        if use_classifier:
            self.classifier = nn.Sequential(
                _conv_gn_relu(w3, cls_channels, (5, 3, 3), groups),
                _conv_gn_relu(cls_channels, cls_channels, 1, groups),
                nn.AdaptiveMaxPool3d(pooled_size),
            )
            d, h, w = pooled_size
            fc_in = cls_channels * d * h * w
            if use_bilstm:
                self.lstm = nn.LSTM(
                    cls_channels * h * w, lstm_hidden, lstm_layers, batch_first=True, bidirectional=True
                )
                fc_in = d * 2 * lstm_hidden
            self.fc = nn.Linear(fc_in, num_outputs)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """image (B, 1, D, H, W) -> heatmaps (B, K, D, H, W), coords_vox (B, K, 3), logits (B, K) if classifying."""
        skips, x = [], image
        for level, block in enumerate(self.encoder):
            if level:
                x = max_pool2(x)
            x = block(x)
            skips.append(self.skip_outs[level](x))
        y = skips[3]
        for block, skip in zip(self.decoder, reversed(skips[:3]), strict=True):
            y = upsample_to(block(y), skip.shape[-3:]).add_(skip)  # a fresh tensor that no backward needs
        heatmaps = self.head(y)
        out = {"heatmaps": heatmaps, "coords_vox": soft_argmax_3d(heatmaps)}
        if self.classifier is not None:
            f = self.classifier(x)  # (B, C, D', H', W')
            if self.lstm is not None:
                seq = f.permute(0, 2, 1, 3, 4).flatten(2)  # (B, D', C*H'*W'): one time step per vertical slab
                f, _ = self.lstm(seq)  # (B, D', 2*hidden)
            out["logits"] = self.fc(f.flatten(1))
        return out

    def literal_forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward`` computed with PyTorch's plain operators (``F.conv3d``, ``F.max_pool3d``, ``F.interpolate``,
        a softmax and three marginals): the reference the fast path is tested and benchmarked against."""
        def run(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
            if isinstance(module, ResidualModule):
                return run(module.body, t) + run(module.skip, t)
            if isinstance(module, nn.Sequential):
                for m in module:
                    t = run(m, t)
                return t
            if isinstance(module, nn.Conv3d):
                return F.conv3d(t, module.weight, module.bias, padding=module.padding)
            return F.relu(t) if isinstance(module, nn.ReLU) else module(t)

        skips, x = [], image
        for level, block in enumerate(self.encoder):
            x = run(block, F.max_pool3d(x, 2) if level else x)
            skips.append(run(self.skip_outs[level], x))
        y = skips[3]
        for block, skip in zip(self.decoder, reversed(skips[:3]), strict=True):
            y = F.interpolate(run(block, y), size=skip.shape[-3:], mode="trilinear", align_corners=False) + skip
        heatmaps = run(self.head, y)
        p = torch.softmax(heatmaps.flatten(2), -1).view_as(heatmaps)
        axes = ((-2, -1), (-3, -1), (-3, -2))
        coords = [(p.sum(a) * torch.arange(n, dtype=p.dtype)).sum(-1) for a, n in zip(axes, p.shape[-3:])]
        out = {"heatmaps": heatmaps, "coords_vox": torch.stack(coords, -1)}
        if self.classifier is not None:
            f = run(self.classifier, x)
            if self.lstm is not None:
                f, _ = self.lstm(f.permute(0, 2, 1, 3, 4).flatten(2))
            out["logits"] = self.fc(f.flatten(1))
        return out


class ResidualMultiLabel(VertebraMethod):
    """Lightning module of the residual multi-label network (see the module docstring)."""

    family = "resml"
    config_cls = ResMLConfig
    tiny_overrides = {"widths": (8, 8, 8, 16), "cls_channels": 4, "lstm_hidden": 8, "crop_size_vox": (32, 24, 24)}

    def __init__(self, config: ResMLConfig | None = None, **params) -> None:
        super().__init__(config, **params)
        c = self.config
        self.net = ResMLNet(
            c.num_vertebrae,
            c.widths,
            c.norm_groups,
            c.use_classifier,
            c.use_bilstm,
            c.cls_channels,
            c.lstm_hidden,
            c.lstm_layers,
            pooled_size=tuple(max(1, s // 16) for s in c.crop_size_vox),  # the 1/8 map max-pooled by 2
        )

    # whole-CT inference only (methods/crop_inference.py): cells that differ in these share one training
    _INFERENCE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "tile_overlap", "inference_batch_size", "presence_threshold", "border_margin_vox", "n_clusters",
        "merge_radius_vox", "min_support", "min_agreement"})  # fmt: skip

    @classmethod
    def inference_only_fields(cls, config: ResMLConfig) -> frozenset[str]:
        return cls._INFERENCE_FIELDS

    def data_requirements(self) -> DataRequirements:
        return DataRequirements(sample_mode="crop", crop_size_vox=self.config.crop_size_vox)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(image)

    def training_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Paper eqs. (1)-(4): L = L_cls + lambda * sum_present SmoothL1(coords); sums per crop, mean over crops."""
        out = self.net(batch["image"])
        present = batch["present"].to(torch.bool)
        target = torch.nan_to_num(batch["centroids_vox"].to(out["coords_vox"].dtype))  # absent rows: any value
        per_coord = F.smooth_l1_loss(out["coords_vox"], target, reduction="none", beta=1.0).sum(-1)  # (B, K)
        loc = self.config.localization_weight * torch.where(present, per_coord, 0.0).sum(-1).mean()
        terms = {"loss_localization": loc}
        loss = loc
        if "logits" in out:
            pos_weight = torch.full_like(out["logits"][0], self.config.pos_weight)
            bce = F.binary_cross_entropy_with_logits(
                out["logits"], present.to(out["logits"].dtype), pos_weight=pos_weight, reduction="none"
            )
            cls = bce.sum(-1).mean()
            terms["loss_classification"] = cls
            loss = loss + cls
        terms["loss"] = loss
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        # epoch mean for the default reduce-on-plateau monitor ("train/loss" is logged per step); synced across
        # DDP ranks (once per epoch) so every rank's scheduler sees the same value and keeps the same learning rate
        self.log("train/epoch_loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        return loss

    def predict_crops(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """crops (n, 1, d, h, w) -> crop-local coordinates (n, K, 3), presence probabilities (n, K) or None."""
        out = self.net(crops)
        return out["coords_vox"], torch.sigmoid(out["logits"]) if "logits" in out else None

    def crops_per_pass(self) -> int:
        """``inference_batch_size``, or when unset the fastest measured: 2 on a CPU, 16 on a GPU."""
        return self.config.inference_batch_size or (2 if self.device.type == "cpu" else 16)

    def predict_volume(self, image: torch.Tensor) -> VolumePrediction:
        c = self.config
        return predict_volume_tiled(
            image.to(self.device, torch.float32),
            self.predict_crops,
            c.crop_size_vox,
            overlap=c.tile_overlap,
            batch_size=self.crops_per_pass(),
            presence_threshold=c.presence_threshold,
            border_margin_vox=c.border_margin_vox,
            n_clusters=c.n_clusters,
            merge_radius_vox=c.merge_radius_vox,
            min_support=c.min_support,
            min_agreement=c.min_agreement,
        )

    def configure_optimizers(self):
        c = self.config
        optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        if c.lr_schedule == "constant":
            return optimizer
        if c.lr_schedule == "cosine":
            return {"optimizer": optimizer,
                    "lr_scheduler": cosine_schedule(optimizer, total_training_steps(self), c.warmup_steps)}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=c.plateau_mode,
            factor=c.plateau_factor,
            patience=c.plateau_patience,
            min_lr=c.min_learning_rate,
        )
        # strict=False: an epoch whose monitored metric was not logged (e.g. no validation) skips the step
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler, "monitor": c.plateau_monitor, "interval": "epoch", "strict": False
            },
        }


_FAMILY = dict(module_cls=ResidualMultiLabel, config_cls=ResMLConfig, family="resml")
register_method(
    "resml_loc",
    description="residual hourglass + integral regression, localization only (crop votes by coordinate inside crop)",
    use_classifier=False,
    use_bilstm=False,
    **_FAMILY,
)
register_method(
    "resml_cls",
    description="residual multi-label network: localization + multi-label classification, without Bi-LSTM",
    use_classifier=True,
    use_bilstm=False,
    **_FAMILY,
)
register_method(
    "resml_cls_bilstm",
    description="residual multi-label network with 3 stacked Bi-LSTMs in the classifier (Qin et al., full method)",
    use_classifier=True,
    use_bilstm=True,
    **_FAMILY,
)
