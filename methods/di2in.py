"""DI2IN family (Yang et al., IPMI 2017): heatmap regression + message passing + ℓ1 shape refinement.

``di2in``, ``di2in_mp`` and ``di2in_mp_sparsity`` are one class with different flags. Network size comes from
``preset`` ("small": widths 8-16-32-64, one conv per level, fast on a CPU; "paper": widths 32 … 512, two
convs per level, an approximation of the paper's Fig. 3), and any of ``base_width``/``depth``/
``convs_per_level`` set explicitly wins over the preset. Message passing runs on a grid ``mp_stride``
voxels apart (see ``methods.message_passing``); ``mp_mode="post"`` applies it at inference only,
``"unrolled"`` also puts it into the training graph with trainable kernels and its own loss term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from spinebench.datamodules.errors import InputError
from spinebench.methods.base import DataRequirements, VertebraMethod, VolumePrediction
from spinebench.methods.blocks import argmax_subvoxel, pad_to_multiple
from spinebench.methods.di2in_net import DI2INNet
from spinebench.methods.heatmap_loss import branch_sse, dense_sse, dense_target, gaussian_factors
from spinebench.methods.message_passing import ChainMessagePassing
from spinebench.methods.registry import register_method
from spinebench.methods.schedules import SCHEDULES, cosine_schedule, total_training_steps
from spinebench.methods.shape_sparsity import ShapeDictionary
from spinebench.methods.sliding_window import sliding_window_inference

# preset -> (base_width, depth, convs_per_level); widths double per level: base_width · 2^level.
PRESETS: dict[str, tuple[int, int, int]] = {"small": (8, 3, 1), "paper": (32, 4, 2)}


@dataclass(frozen=True)
class DI2INConfig:
    # Options renamed to the name the other family uses for the same idea (spinebench 0.1 -> 0.2): the old names
    # still work in YAML files, search spaces and create_method, with a one-line deprecation message.
    renamed_options: ClassVar[dict[str, str]] = {"lr": "learning_rate", "window_overlap": "tile_overlap"}

    num_vertebrae: int = 26
    preset: str = "small"  # "small" | "paper"; explicit width/depth/convs below override it
    base_width: int | None = None
    depth: int | None = None  # number of 2×2×2 max-pools
    convs_per_level: int | None = None
    sigma_vox: float = 2.0  # Gaussian target σ in voxels of the preprocessed volume (4 mm at 2 mm spacing)
    presence_threshold: float = 0.5  # a vertebra is present when its channel's maximum exceeds this
    subvoxel: bool = True  # parabolic refinement of the argmax
    message_passing: bool = False
    mp_mode: str = "post"  # "post" | "unrolled"
    mp_alpha: float = 0.5
    mp_iterations: int = 3
    mp_stride: int = 4  # message passing grid, in heatmap voxels
    mp_min_sigma_vox: float = 1.0  # added to the fitted offset spread (annotation uncertainty)
    mp_loss_weight: float = 1.0  # unrolled mode: weight of the loss on the message-passing output
    sparsity: bool = False
    sparsity_lambda: float = 1.0  # λ of ½‖v_S − D_S a‖² + λ‖a‖₁ for 2 mm units (rescaled to the spacing)
    sparsity_positive: bool = False
    sparsity_min_trusted: int = 3
    # Outlier rejection after the monotone chain: trusted points whose residual to the sparse fit exceeds this
    # are dropped and refitted; inliers keep the network's coordinates, outliers and absent levels take the fit.
    # In mm, converted to voxels through the dictionary's neighbour distances (ShapeDictionary.unit_scale).
    # 12 mm: best of 8-24 mm on the default run's validation split. None: the paper's Algorithm 1 as written
    # (every level takes the fit).
    sparsity_residual_mm: float | None = 12.0
    # Training samples: None trains on whole (padded) volumes, as the paper does; (D, H, W) trains on random crops
    # of that size in voxels (multiples of 2**depth), as the residual network does, so that finer spacings fit a
    # CPU budget. Inference is whole-volume either way (the network is fully convolutional).
    train_crop_vox: tuple[int, int, int] | None = None
    max_window_voxels: int = 2_500_000  # whole-volume inference beyond this runs on blended tiles
    tile_overlap: float = 0.25  # overlap of the blended tiles (the name resml uses for its crops' overlap)
    # Squared-error weight of target voxels relative to background: w = 1 + (foreground_weight - 1) · target.
    # 1.0 is the paper's plain squared loss; with 26 sparse Gaussians in a mostly empty volume that loss is
    # first minimised by predicting zeros everywhere, which short (CPU) budgets never leave.
    foreground_weight: float = 1.0
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "constant" | "cosine" (linear warm-up, then cosine decay to 0; methods.schedules)
    warmup_steps: int = 0
    channels_last: bool = True  # channels_last_3d memory format: faster 3D convs on CPU (perf/results/di2in.md)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise InputError(f"di2in option preset: unknown {self.preset!r}; valid: {', '.join(PRESETS)}")
        for name, value in zip(("base_width", "depth", "convs_per_level"), PRESETS[self.preset]):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
            elif int(getattr(self, name)) < 1:
                raise InputError(f"di2in option {name}: must be >= 1, got {getattr(self, name)}")
        if self.train_crop_vox is not None:
            crop = tuple(int(n) for n in self.train_crop_vox) if isinstance(self.train_crop_vox, (list, tuple)) else ()
            if len(crop) != 3 or any(n < 2**self.depth or n % 2**self.depth for n in crop):
                raise InputError(f"di2in option train_crop_vox: must be three sizes, each a multiple of 2**depth = "
                                 f"{2**self.depth}, got {self.train_crop_vox!r}")
            object.__setattr__(self, "train_crop_vox", crop)
        if self.lr_schedule not in SCHEDULES:
            raise InputError(f"di2in option lr_schedule: unknown {self.lr_schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.mp_mode not in ("post", "unrolled"):
            raise InputError(f"di2in option mp_mode: must be 'post' or 'unrolled', got {self.mp_mode!r}")
        if not 0.0 < self.mp_alpha < 1.0:
            raise InputError(f"di2in option mp_alpha: must lie in (0, 1), got {self.mp_alpha}")
        checks = {"sigma_vox": self.sigma_vox > 0, "mp_iterations": self.mp_iterations >= 1,
                  "mp_stride": self.mp_stride >= 1, "sparsity_lambda": self.sparsity_lambda > 0,
                  "num_vertebrae": self.num_vertebrae >= 2, "foreground_weight": self.foreground_weight >= 1.0, "max_window_voxels": self.max_window_voxels > 0,
                  "tile_overlap": 0.0 <= self.tile_overlap < 1.0, "warmup_steps": self.warmup_steps >= 0}  # fmt: skip
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"di2in option {name}: invalid value {getattr(self, name)!r}")


class DI2IN(VertebraMethod):
    family: ClassVar[str] = "di2in"
    config_cls: ClassVar[type] = DI2INConfig
    tiny_overrides: ClassVar[dict] = {"base_width": 4, "depth": 2, "mp_stride": 2}

    def __init__(self, config: DI2INConfig | None = None, **params) -> None:
        super().__init__(config, **params)
        cfg = self.config
        self.net = DI2INNet(1, cfg.num_vertebrae, cfg.base_width, cfg.depth, cfg.convs_per_level)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
            for p in self.net.parameters():  # weights whose two layouts coincide (1x1x1, one input channel) keep
                if p.dim() == 5 and p.is_contiguous():  # plain strides, as their gradients have (DDP's buckets)
                    p.data = p.data.clone(memory_format=torch.contiguous_format)
        self.mp = (
            ChainMessagePassing(cfg.num_vertebrae, cfg.mp_alpha, cfg.mp_iterations, cfg.mp_mode == "unrolled")
            if cfg.message_passing
            else None
        )
        self.shape_dictionary = (
            ShapeDictionary(cfg.num_vertebrae, cfg.sparsity_lambda, cfg.sparsity_positive, cfg.sparsity_min_trusted)
            if cfg.sparsity
            else None
        )

    # Fields that act after the network: message passing applied post hoc ("post"), shape refinement, peak
    # reading, tiling. With mp_mode "unrolled" message passing is part of the trained graph and stays out.
    _POST_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "sparsity", "sparsity_lambda", "sparsity_positive", "sparsity_min_trusted", "sparsity_residual_mm",
        "presence_threshold", "subvoxel", "max_window_voxels", "tile_overlap"})  # fmt: skip
    _POST_MP_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "message_passing", "mp_mode", "mp_alpha", "mp_iterations", "mp_stride", "mp_min_sigma_vox",
        "mp_loss_weight"})  # fmt: skip

    @classmethod
    def inference_only_fields(cls, config: DI2INConfig) -> frozenset[str]:
        if config.mp_mode == "post" or not config.message_passing:
            return cls._POST_FIELDS | cls._POST_MP_FIELDS
        return cls._POST_FIELDS

    # --- contract ---------------------------------------------------------------------------
    def data_requirements(self) -> DataRequirements:
        # no precomputed heatmaps: the loss builds its separable targets from the centroids (methods.heatmap_loss)
        if self.config.train_crop_vox is not None:
            return DataRequirements("crop", crop_size_vox=self.config.train_crop_vox)
        return DataRequirements("volume", pad_multiple=2**self.config.depth)

    def fit_shape_prior(self, centroids_vox: np.ndarray) -> None:
        c = np.asarray(centroids_vox, dtype=np.float64)
        if self.mp is not None:
            self.mp.fit(c, self.config.mp_stride, self.config.mp_min_sigma_vox, self.config.sigma_vox)
        if self.shape_dictionary is not None:
            self.shape_dictionary.fit(c)

    def forward(self, image: torch.Tensor, with_branches: bool = False) -> dict[str, torch.Tensor]:
        """Heatmaps for ``(B, 1, D, H, W)`` of any size (padded internally, outputs cropped back)."""
        padded, (d, h, w) = pad_to_multiple(image, 2**self.config.depth)
        if self.config.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last_3d)
        out = self.net(padded, with_branches=with_branches)
        return {
            "final": out["final"][..., :d, :h, :w],
            "branches": [b[..., :d, :h, :w] for b in out["branches"]],
        }

    def _coarse(self, maps: torch.Tensor) -> torch.Tensor:
        s = self.config.mp_stride
        return maps if s == 1 else F.max_pool3d(maps, s, ceil_mode=True)

    def training_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """The paper's loss: squared error of the fused output and of every deep-supervision branch, against
        Gaussian targets built from ``centroids_vox`` over the batch's (padded) volume, plus the unrolled
        message-passing term when it is trained. Coarse branches are compared without being upsampled."""
        cfg = self.config
        image = batch["image"]
        padded, shape = pad_to_multiple(image, 2**cfg.depth)
        if cfg.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last_3d)
        size = tuple(padded.shape[-3:])
        decoded = self.net.decode(padded)
        crop = (..., slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        final = self.net.fused(decoded, size)[crop]
        factors = gaussian_factors(batch["centroids_vox"], batch["present"], shape, cfg.sigma_vox)
        target = dense_target(factors, final)
        a = cfg.foreground_weight - 1.0
        count = final.numel()
        terms = {"final": (dense_sse(final, target, a) / count).float()}
        branches = []
        for z in self.net.branch_logits(decoded.features):
            dense = tuple(z.shape[-3:]) == size
            branches.append(dense_sse(z[crop], target, a) if dense else branch_sse(z, factors, size, a))
        terms["branches"] = (sum(branches) / count).float()
        loss = terms["final"] + terms["branches"]
        if self.mp is not None and cfg.mp_mode == "unrolled" and self.mp.fitted:
            terms["mp"] = F.mse_loss(self.mp(self._coarse(final)), self._coarse(target))
            loss = loss + cfg.mp_loss_weight * terms["mp"]
        terms["loss"] = loss
        return terms

    @torch.no_grad()
    def predict_heatmaps(self, image: torch.Tensor) -> torch.Tensor:
        """Network heatmaps ``(K, D, H, W)`` for one image ``(1, 1, D, H, W)``, memory-bounded."""
        cfg = self.config
        fn = lambda x: self.net(x.contiguous(memory_format=torch.channels_last_3d) if cfg.channels_last else x,
                                with_branches=False)["final"]  # fmt: skip
        return sliding_window_inference(fn, image, 2**cfg.depth, cfg.max_window_voxels, cfg.tile_overlap)[0]

    @torch.no_grad()
    def locate(self, heatmaps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Centroids ``(K, 3)`` and scores ``(K,)`` from ``(K, D, H, W)`` heatmaps, with message passing if on."""
        cfg = self.config
        if self.mp is None:
            coords, peak = argmax_subvoxel(heatmaps, cfg.subvoxel)
            return coords.cpu().numpy(), peak.double().cpu().numpy()
        s = cfg.mp_stride
        enhanced = self.mp(self._coarse(heatmaps)[None])[0]
        coarse, peak = argmax_subvoxel(enhanced, cfg.subvoxel)
        coords = coarse * s + (s - 1) / 2.0  # centre of the coarse cell in full-resolution voxels
        # The enhanced map chooses where each vertebra is; there, the network's own response wins when it is
        # confident: snap to its full-resolution peak, and never score below it (message passing adds
        # evidence for weak channels; it does not erase a confident one, e.g. an isolated vertebra).
        # One (2s+1)³ window per channel around its enhanced maximum, gathered at once (clamped at borders).
        dev = heatmaps.device
        shape = torch.tensor(heatmaps.shape[1:], device=dev)
        centre = coords.round().long().clamp(torch.zeros(3, dtype=torch.long, device=dev), shape - 1)  # (K, 3)
        steps = torch.arange(-s, s + 1, device=dev)
        idx = [(centre[:, a, None] + steps).clamp(0, int(shape[a]) - 1) for a in range(3)]  # 3 × (K, 2s+1)
        rows = torch.arange(heatmaps.shape[0], device=dev)[:, None, None, None]
        windows = heatmaps[rows, idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]]
        local, local_peak = argmax_subvoxel(windows, cfg.subvoxel)
        snap = local_peak.double() > cfg.presence_threshold
        whole = local.round().long().clamp(0, 2 * s)  # window index -> volume index through the (clamped) gather indices
        local_vox = torch.stack([idx[a].gather(1, whole[:, a : a + 1])[:, 0] for a in range(3)], 1).double()
        local_vox = local_vox + (local - whole.double())
        coords = torch.where(snap[:, None], local_vox, coords)
        scores = torch.where(snap, torch.maximum(peak.double(), local_peak.double()), peak.double())
        return coords.cpu().numpy(), scores.cpu().numpy()

    def predict_volume(self, image: torch.Tensor) -> VolumePrediction:
        heatmaps = self.predict_heatmaps(image).float()
        centroids, scores = self.locate(heatmaps)
        present = scores > self.config.presence_threshold
        if self.shape_dictionary is not None:
            residual = self.config.sparsity_residual_mm
            if residual is not None:
                residual = residual / 2.0 * self.shape_dictionary.unit_scale  # mm -> 2 mm units -> voxels
            centroids, _ = self.shape_dictionary.refine(centroids, present, residual)
        return VolumePrediction(centroids, present, np.clip(scores, 0.0, 1.0))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay)
        if self.config.lr_schedule == "constant":
            return optimizer
        schedule = cosine_schedule(optimizer, total_training_steps(self), self.config.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


register_method(
    "di2in", module_cls=DI2IN, config_cls=DI2INConfig, family="di2in",
    description="DI2IN: 3D encoder-decoder with deep supervision regressing one Gaussian heatmap per vertebra",
)  # fmt: skip
register_method(
    "di2in_mp", module_cls=DI2IN, config_cls=DI2INConfig, family="di2in",
    description="DI2IN + message passing along the vertebra chain with kernels learned from training centroids",
    message_passing=True,
)  # fmt: skip
register_method(
    "di2in_mp_sparsity", module_cls=DI2IN, config_cls=DI2INConfig, family="di2in",
    description="DI2IN + message passing + l1 shape-dictionary refinement (Yang et al. 2017, full pipeline)",
    message_passing=True, sparsity=True,
)  # fmt: skip
