"""The phantom generator's settings (``PhantomConfig``, checked on construction) and what a case costs: the
supersampling of its drawing grid and the memory and disk a spacing needs (``check_resources``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import get_label_set
from spinebench.datamodules.resources import require_disk, require_memory

MAX_SPACING_MM = 16.0  # coarser than a cervical vertebra is tall (about 15 mm): neighbours would share voxels
# Measured upper bounds (2026-12-04; 2026-12-05 for version 3's hips and table): a whole spine with its margins spans
# about 650 x 320 x 300 mm (303 x 157 x 157 voxels at 2 mm); generating a case peaks at about 25 bytes per voxel
# (1.5-4 mm); a written .nii.gz takes 0.4-1.2 bytes per voxel. Margins for curved spines and the metadata files are
# included below.
WHOLE_SPINE_MM3 = 650.0 * 320.0 * 300.0 * 1.3
GENERATION_BYTES_PER_VOXEL = 30.0
FILE_BYTES_PER_VOXEL = 1.5


@dataclass(frozen=True)
class PhantomConfig:
    spacing_mm: float = 2.0  # isotropic grid of the case
    # partial volume: a case coarser than this is drawn on a grid of at most this spacing (``spacing_mm`` / a whole
    # number) and block-averaged to ``spacing_mm``, as a scanner integrates over a voxel. Point samples of a 1.5 mm
    # cortical shell at 8 mm are 6 mm bright rims; real CTs at 8 mm show bone as a dimmer, partial-volume blob.
    fine_spacing_mm: float = 2.0
    label_set: str = "default"  # "transitional" is required when transitional_rate > 0
    limited_fov_rate: float = 0.3  # a random section of the spine instead of all of it
    min_fov_vertebrae: int = 4  # fewest annotated vertebrae in a limited field of view
    fov_vertebrae: tuple[int, int] | None = None  # always a section of [lo, hi] vertebrae (small CPU cases)
    scoliosis_rate: float = 0.15
    scoliosis_amplitude_mm: tuple[float, float] = (12.0, 40.0)
    kyphosis_rate: float = 0.15  # abnormal sagittal curvature: hyperkyphosis, hyperlordosis or flat back
    kyphosis_amplitude_mm: tuple[float, float] = (10.0, 28.0)
    metal_rate: float = 0.15  # pedicle screws + rods with streak artifacts
    metal_levels: tuple[int, int] = (2, 5)
    metal_hu: tuple[float, float] = (4000.0, 7000.0)
    noise_hu: tuple[float, float] = (5.0, 40.0)  # Gaussian noise std, drawn per case
    blur_sigma_mm: tuple[float, float] = (0.3, 1.2)  # point-spread function std, drawn per case
    anisotropic_rate: float = 0.15  # thick axial slices: slice spacing = factor x spacing_mm
    anisotropic_factor: tuple[int, int] = (2, 3)
    transitional_rate: float = 0.0  # opt-in: a T13 or an L6 (needs label_set="transitional")
    # opt-in: a crop around the spine as real spine CTs are (VerSe), not the whole torso: the extent of the
    # vertebrae in the scan (their labels) in the AP and LR directions plus a margin drawn per case and axis. The
    # VerSe crops beside the project end 0-2 mm beyond their vertebra masks, the TPTBox scan 4-8 mm.
    tight_crop_rate: float = 0.0
    tight_crop_margin_mm: tuple[float, float] = (0.0, 10.0)
    size_scale: tuple[float, float] = (0.98, 1.16)  # per-case vertebra size factor
    shape_mode_scale: float = 1.0  # scales the shape model's principal modes
    body_max_width_mm: float = 300.0  # left-right extent of the body cross-section at most
    body_max_depth_mm: float = 250.0  # antero-posterior extent at most
    # the scan's field of view, not the body, limited (None: the whole body cross-section): a window of this width
    # (left-right) and depth (antero-posterior, 45 % in front of the spine's centroids and 55 % behind, for the
    # posterior elements and back muscles) beside the spine's own extent, cutting the body as a reconstruction
    # field of view or a spine crop does. Unlike ``body_max_*``, which squash the torso, anatomy keeps its size.
    scan_max_width_mm: float | None = None
    scan_max_depth_mm: float | None = None
    # the share of cases that get that window (drawn per case from a stream of its own, so that the other draws are
    # as without it, and recorded as the case condition ``scan_window``); the others show the whole body
    # cross-section, as an abdominal or thoracic scan does beside spine crops. 1.0: every case (then not recorded)
    scan_window_rate: float = 1.0
    # which point of a vertebra is annotated: "body", the vertebral body's centre (CSI-2014's convention, the shape
    # model's curve), or "mask", the centre of mass of the whole vertebra as drawn, posterior elements included
    # (VerSe's convention, and what `spinebench centroids` and the folder source compute from a mask): about 12 mm
    # behind the body's centre on lumbar levels
    centroids: str = "body"
    # which vertebrae are annotated: "point", those whose annotated point lies inside the scan; "body", those whose
    # body centre does (about half the body or more in view), whichever point is annotated. With mask centres,
    # "point" also annotates a vertebra that the scan's border cuts to a sliver (the centre of mass of a few slices
    # of endplate or processes lies inside whatever is drawn), and "body" leaves it drawn but unannotated, as the
    # cropped VerSe scans beside this project end: their outermost annotated centroid lies 15-30 mm inside the border,
    # the limited-field-of-view phantoms' 0-8 mm (sim2real's test split at 4 mm, 2026-12-06)
    annotated: str = "point"
    # abdominal organs (kidneys, aorta and vena cava with plaques, liver, spleen, bowel with gas, bladder), the hip
    # joints with the pubic and ischial rami, costal cartilage and sternum, and the patient table when the scan
    # reaches behind the body (``datamodules.phantom_organs``); False draws generator version 2's torso (the same
    # case otherwise: their draws come from a random stream of their own)
    organs: bool = True
    # trabecular texture of cancellous bone and noise correlated over NOISE_CORRELATION_MM (white at coarse
    # spacings); False: uniform cancellous bone and white noise, as generator version 2 (a stream of their own)
    texture: bool = True
    # subchondral bone under each endplate around a darker mid-body marrow, the basivertebral foramen in the body's
    # posterior wall, the canal's fluid and fat (generator version 5, fitted to real lumbar vertebrae at 4 mm;
    # a stream of its own); False: version 4's uniform bodies
    vertebra_detail: bool = False
    with_mask: bool = True

    def __post_init__(self) -> None:
        if self.centroids not in ("body", "mask"):
            raise InputError(f"phantom centroids must be 'body' or 'mask', got {self.centroids!r}")
        if self.annotated not in ("point", "body"):
            raise InputError(f"phantom annotated must be 'point' or 'body', got {self.annotated!r}")
        if not self.fine_spacing_mm > 0:
            raise InputError(f"phantom fine_spacing_mm must be > 0, got {self.fine_spacing_mm}")
        if not 0 < self.spacing_mm <= MAX_SPACING_MM:
            raise InputError(f"phantom spacing_mm must be > 0 and <= {MAX_SPACING_MM:g} (a vertebra spans a few "
                             f"voxels), got {self.spacing_mm}")
        names = get_label_set(self.label_set).names
        if self.transitional_rate > 0 and not {"T13", "L6"} <= set(names):
            raise InputError(f"phantom transitional_rate > 0 needs label_set='transitional', got {self.label_set!r}")
        for key in ("limited_fov_rate", "scoliosis_rate", "kyphosis_rate", "metal_rate", "anisotropic_rate",
                    "transitional_rate", "tight_crop_rate", "scan_window_rate"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise InputError(f"phantom {key} must lie in [0, 1], got {getattr(self, key)}")
        lo_m, hi_m = self.tight_crop_margin_mm
        if not 0.0 <= lo_m <= hi_m:
            raise InputError(f"phantom tight_crop_margin_mm must be [lo, hi] with 0 <= lo <= hi mm, got "
                             f"{list(self.tight_crop_margin_mm)}")
        for key in ("scan_max_width_mm", "scan_max_depth_mm"):
            if getattr(self, key) is not None and not getattr(self, key) >= 40.0:
                raise InputError(f"phantom {key} must be >= 40 mm (a vertebra with its processes) or null, got "
                                 f"{getattr(self, key)}")
        if self.fov_vertebrae is not None:
            lo, hi = self.fov_vertebrae
            if not 1 <= lo <= hi:
                raise InputError(f"phantom fov_vertebrae must be (lo, hi) with 1 <= lo <= hi, got {self.fov_vertebrae}")


def supersampling(config: PhantomConfig) -> int:
    """Fine voxels per case voxel along each axis: ``ceil(spacing_mm / fine_spacing_mm)``."""
    return max(1, int(np.ceil(config.spacing_mm / config.fine_spacing_mm - 1e-9)))


def case_voxels(config: PhantomConfig) -> float:
    """Upper bound of a case's voxel count at ``config.spacing_mm`` (a whole, curved spine)."""
    return WHOLE_SPINE_MM3 / config.spacing_mm**3


def check_resources(config: PhantomConfig, n_cases: int = 1, folder=None) -> None:
    """Refuse a spacing whose cases cannot be generated in this machine's memory, or ``n_cases`` files that
    cannot fit the disk of ``folder`` (when given), before any is generated."""
    voxels = case_voxels(config)
    fine = voxels * supersampling(config) ** 3  # drawn on the fine grid
    require_memory(fine * GENERATION_BYTES_PER_VOXEL, f"a phantom case at {config.spacing_mm:g} mm "
                   f"(drawn on up to {fine / 1e6:,.0f} million voxels)")
    if folder is not None:
        require_disk(n_cases * voxels * FILE_BYTES_PER_VOXEL, folder, f"{n_cases:,} phantom cases at "
                     f"{config.spacing_mm:g} mm")
