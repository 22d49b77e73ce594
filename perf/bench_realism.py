"""Realism report: how the phantom compares with the real CTs beside the project (``../shared/data/real``).

Both sides are resampled to the same canonical 2 mm grid (CT linear, masks nearest), then measured the same way:
- HU inside the vertebra masks: cortical (within 2 mm of the mask's surface) and deep (at least 4 mm deep: the
  bodies' cancellous cores and the posterior elements' interiors), mean / 10th / 90th percentile;
- the share of the volume in HU windows: air (< -950), lung-like (-950..-700), fat (-190..-30), soft tissue
  (-29..150), bone (> 200);
- vertebra size per region: the extents of each labelled vertebra along the patient's axes (SI height, AP depth,
  LR width; axis-aligned, so rotated vertebrae read a little larger), averaged over the levels both sides show.
- at the default benchmark's 8 mm (CT preprocessed as a run does it, block-averaged; the phantom as the default
  config generates it): the mean 11 x 11 x 11 voxel neighbourhood of the lumbar vertebrae's centroids, read at a
  few points (body centre, posterior elements, soft tissue in front) - what the networks see of a vertebra, and
  the figure the tissue HU ranges of the phantom (``phantom._draw_scan``) were fitted to.
- at sim2real's 4 mm, the same mean neighbourhood read along three lines through it (superior-inferior through
  the centroid and through the body, anterior-posterior through the centroid): the real bodies' bright endplates
  and dark interiors, the canal, the laminae, voxel by voxel - for the default run's phantom and for the opt-in
  ``vertebra_detail`` (generator version 5's subchondral bone, foramen and canal, fitted to these lines).
- the parts of each whole lumbar vertebra (on the 2 mm grid, relative to the mask's centre of mass): the body
  (mask more than 8 mm in front of it) and the posterior elements (more than 8 mm behind it), their HU by depth
  below the mask's surface (rim: 1-2.3 mm, core: deeper; the body's core is its cancellous bone) and their extents
  (2nd-98th percentile of their voxels), and the mean lumbar vertebra of each side as a picture
  (``docs/realism_mean_lumbar.png``: axial, sagittal and coronal planes through the centre of mass) - the figures
  the phantom's vertebra values and sizes were fitted to (generator version 4).
Phantoms drawn with thick slices (``anisotropic_rate``) are resampled to the 2 mm grid as the real CTs are.
Every figure is printed with its ratio phantom / real. The real set: the four VerSe crops and the TPTBox scan
with their expert VerSe-numbered masks, and the TotalSegmentator example with its model-made labels (SOURCE.md
of each folder: licences, caveats). Discs, muscle and organs have no masks there and are compared by HU window
only. Writes ``docs/realism_phantom.png`` (the first phantom without metal) and ``docs/realism_real.png``
(sagittal and coronal maximum-intensity projections in one window) for the README. Without ``../shared`` it says so and records nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, write_fragment  # noqa: E402

from spinebench.datamodules.ct_io import read_image  # noqa: E402
from spinebench.datamodules.geometry import Geometry  # noqa: E402
from spinebench.datamodules.label_maps import vertebra_names  # noqa: E402
from spinebench.datamodules.labels import VERSE_ID_OF  # noqa: E402
from spinebench.datamodules.orientation import reoriented_geometry  # noqa: E402
from spinebench.datamodules.phantom import PhantomConfig, generate_case  # noqa: E402
from spinebench.datamodules.preprocess import HU_MEAN, HU_STD, PreprocessParams, preprocess_volume  # noqa: E402
from spinebench.datamodules.resample import isotropic_grid, resample_to  # noqa: E402
from spinebench.leaderboard.projections import volume_views_png  # noqa: E402

REAL = REPO_ROOT.parent / "shared" / "data" / "real"
SPACING_MM = 2.0
N_PHANTOMS = 12
WINDOWS = {"air": (-np.inf, -950), "lung-like": (-950, -700), "fat": (-190, -30), "soft tissue": (-29, 150),
           "bone": (200, np.inf)}
REGIONS = {"cervical": "C", "thoracic": "T", "lumbar": "L", "sacral": "S"}
VIEW_WINDOW = (-250.0, 1250.0)
BENCH_SPACING_MM = 8.0  # configs/default.yaml
BENCH_GENERATOR = {"scan_max_width_mm": 160.0, "scan_max_depth_mm": 120.0}  # configs/default.yaml
PATCH_R = 5
PROFILE_SPACING_MM, PROFILE_R = 4.0, 6  # configs/sim2real.yaml's spacing; +-24 mm
# (name, index of the line through a (2R+1)^3 neighbourhood centred at R)
PROFILE_LINES = [("superior-inferior, through the centre of mass", lambda c: (slice(None), c, c)),
                 ("superior-inferior, 12 mm in front (the body)", lambda c: (slice(None), c - 3, c)),
                 ("anterior-posterior, through the centre of mass", lambda c: (c, slice(None), c))]
NAME_OF_VERSE_ID = {v: k for k, v in VERSE_ID_OF.items()}
MEAN_R = 28  # the mean lumbar vertebra's half-width in 2 mm voxels
PART_COLUMNS = ["body rim (HU)", "body core, cancellous (HU)", "posterior elements rim (HU)",
                "posterior elements core (HU)", "body height SI (mm)", "body width LR (mm)",
                "body front, in front of the centre of mass (mm)", "posterior elements SI (mm)",
                "posterior elements LR (mm)", "spinous tip, behind the centre of mass (mm)", "volume (cm³)",
                "posterior elements volume (cm³)"]
# (label, offset in voxels (s, p, l) from the centroid) of the points the neighbourhood table reads
PATCH_POINTS = [("body centre", (0, 0, 0)), ("body, 1 voxel up", (1, 0, 0)), ("body, 1 voxel left", (0, 0, 1)),
                ("pedicles / facets (2 behind, 2 aside)", (0, 2, 2)), ("lamina / spinous (4 behind)", (0, 4, 0)),
                ("in front of the body (4 ahead)", (0, -4, 0)), ("beside the body (4 aside)", (0, 0, 4))]


def real_cases() -> list[tuple[str, Path, Path, str]]:
    """(name, CT, vertebra mask, numbering) of the real CTs with vertebra labels."""
    out = [(p.name.removesuffix("_ct.nii.gz"), p, p.with_name(p.name.replace("_ct.nii.gz", "_seg-vert_msk.nii.gz")),
            "verse") for p in sorted((REAL / "verse_cropped_elkhashabs").glob("*_ct.nii.gz"))]
    tpt = REAL / "tptbox_sample_ct"
    out.append(("tptbox", tpt / "sub-ct_label-22_ct.nii.gz", tpt / "sub-ct_seg-vert_label-22_msk.nii.gz", "verse"))
    ts = REAL / "totalsegmentator_tests"
    out.append(("totalseg", ts / "example_ct.nii.gz", ts / "spine_report" / "example_ct_report" / "totalseg.nii.gz",
                "totalsegmentator"))
    return out


def on_canonical_grid(ct: np.ndarray, mask: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """CT (linear) and mask (nearest) on the canonical isotropic SPACING_MM grid over the same extent."""
    grid = isotropic_grid(reoriented_geometry(geometry), SPACING_MM)
    return (resample_to(ct.astype(np.float32), geometry, grid), resample_to(mask, geometry, grid, "nearest"))


def measure(ct: np.ndarray, labels: np.ndarray) -> dict:
    """Tissue HU, volume shares and per-region vertebra extents of one canonical (S, P, L) volume whose ``labels``
    hold vertebra names' VerSe ids."""
    inside = labels > 0
    depth = ndimage.distance_transform_edt(inside, sampling=SPACING_MM)
    out: dict = {"cortical": ct[inside & (depth <= 2.0)], "cancellous": ct[inside & (depth >= 4.0)]}
    out["shares"] = {k: float(np.mean((ct > lo) & (ct <= hi))) for k, (lo, hi) in WINDOWS.items()}
    extents: dict[str, list[np.ndarray]] = {r: [] for r in REGIONS}
    for label in np.unique(labels[inside]):
        name = NAME_OF_VERSE_ID.get(int(label))
        if name is None:
            continue
        idx = np.argwhere(labels == label)
        size = (idx.max(0) - idx.min(0) + 1) * SPACING_MM  # (SI, AP, LR) mm
        touches = (idx.min(0) == 0) | (idx.max(0) == np.asarray(labels.shape) - 1)
        if not touches.any():  # a vertebra cut by the field of view has no true size
            region = next(r for r, p in REGIONS.items() if name.startswith(p))
            extents[region].append(size)
    out["extents"] = extents
    return out


def real_masks():
    """(name, CT, its geometry, VerSe-numbered mask, the mask's geometry) of each real CT."""
    for name, ct_path, mask_path, numbering in real_cases():
        ct, geometry = read_image(ct_path)
        mask, mask_geometry = read_image(mask_path)
        ids = vertebra_names(numbering)
        verse = np.zeros(mask.shape, np.uint8)
        for value, vertebra in ids.items():
            if vertebra in VERSE_ID_OF:
                verse[mask == value] = VERSE_ID_OF[vertebra]
        yield name, ct, geometry, verse, mask_geometry


def real_volumes():
    for name, ct, geometry, verse, mask_geometry in real_masks():
        yield (name, *on_canonical_grid(ct, verse, mask_geometry if mask_geometry == geometry else geometry))


def phantom_volumes():
    config = PhantomConfig(spacing_mm=SPACING_MM, **BENCH_GENERATOR)  # the default run's field of view, at 2 mm
    for index in range(N_PHANTOMS):
        case = generate_case(0, index, config)
        mask = np.where(case.vertebra_mask == 29, 0, case.vertebra_mask).astype(np.uint8)  # S2 has no VerSe id
        ct = case.ct_hu.astype(np.float32)
        if not np.allclose(case.geometry.spacing_mm, SPACING_MM):  # thick slices (anisotropic_rate): as the real CTs
            ct, mask = on_canonical_grid(ct, mask, case.geometry)
        yield case.case_id, ct, mask, case.metadata["metal"]["applied"]


def lumbar_patches(ct_hu, geometry: Geometry, mask: np.ndarray, mask_geometry: Geometry,
                   spacing_mm: float = BENCH_SPACING_MM, radius: int = PATCH_R) -> list[np.ndarray]:
    """The neighbourhoods at ``spacing_mm`` (z-scored as a run does) of the lumbar vertebrae whose centroid (centre
    of mass of the VerSe-numbered mask) lies at least ``radius`` voxels inside the volume."""
    image, grid = preprocess_volume(ct_hu, geometry, PreprocessParams(spacing_mm=spacing_mm))
    out = []
    for label in np.unique(mask[mask > 0]):
        if not NAME_OF_VERSE_ID.get(int(label), "").startswith("L"):
            continue
        world = mask_geometry.vox_to_world(np.argwhere(mask == label).mean(0))
        v = np.rint(grid.world_to_vox(world)).astype(int)
        if np.all(v >= radius) and np.all(v < np.asarray(image.shape) - radius):
            out.append(image[tuple(slice(c - radius, c + radius + 1) for c in v)])
    return out


def patch_report(phantom: list[np.ndarray], real: list[np.ndarray]) -> str:
    p, r = np.mean(phantom, 0), np.mean(real, 0)
    hu = lambda z: z * HU_STD + HU_MEAN  # noqa: E731  (the run's z-score, undone)
    lines = [f"\nAt the default run's {BENCH_SPACING_MM:g} mm, as a run preprocesses it: the mean neighbourhood of "
             f"{len(phantom)} phantom and {len(real)} real lumbar vertebrae (centroids from the masks; phantom: "
             f"seed 0, the default config's generator, cases without metal), in HU:\n",
             "| point | phantom | real | phantom - real |", "|---|---|---|---|"]
    for name, (ds, dp, dl) in PATCH_POINTS:
        a, b = hu(p[PATCH_R + ds, PATCH_R + dp, PATCH_R + dl]), hu(r[PATCH_R + ds, PATCH_R + dp, PATCH_R + dl])
        lines.append(f"| {name} | {a:.0f} | {b:.0f} | {a - b:+.0f} |")
    return "\n".join(lines) + "\n"


def profile_report(phantom: list[np.ndarray], detailed: list[np.ndarray], real: list[np.ndarray]) -> str:
    """HU along lines through the mean lumbar neighbourhood at sim2real's spacing, one column per voxel: the default
    run's phantom, the same with the opt-in ``vertebra_detail`` (generator version 5) and the real vertebrae."""
    means = [(side, np.mean(x, 0) * HU_STD + HU_MEAN) for side, x in
             (("phantom", phantom), ("phantom, vertebra_detail", detailed), ("real", real))]
    c = PROFILE_R
    offsets = [f"{(k - c) * PROFILE_SPACING_MM:+g}" for k in range(2 * c + 1)]
    lines = [f"\nAt sim2real's {PROFILE_SPACING_MM:g} mm, as a run preprocesses it: HU along three lines through the "
             f"mean neighbourhood of {len(phantom)} phantom and {len(real)} real lumbar vertebrae (as above; phantom: "
             f"the same window at {PROFILE_SPACING_MM:g} mm; *vertebra_detail*: the same cases with version 5's "
             f"subchondral bone, basivertebral foramen and canal contents, {len(detailed)} vertebrae), one column per "
             "voxel, offsets in mm from the centre of mass (superior, posterior positive):\n",
             "| line | side | " + " | ".join(offsets) + " |", "|---|---|" + "---|" * len(offsets)]
    for name, line in PROFILE_LINES:
        for side, mean in means:
            lines.append(f"| {name} | {side} | " + " | ".join(f"{v:.0f}" for v in mean[line(c)]) + " |")
    return "\n".join(lines) + "\n"


def lumbar_parts(ct: np.ndarray, labels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per whole lumbar vertebra of a canonical 2 mm volume: its part figures (``PART_COLUMNS``) and its
    neighbourhood (``MEAN_R`` voxels each way from its centre of mass, NaN outside the volume)."""
    padded = np.pad(ct.astype(np.float32), MEAN_R, constant_values=np.nan)
    rows, patches = [], []
    for label in np.unique(labels[labels > 0]):
        if not NAME_OF_VERSE_ID.get(int(label), "").startswith("L"):
            continue
        idx = np.argwhere(labels == label)
        lo, hi = idx.min(0), idx.max(0)
        if (lo == 0).any() or (hi == np.asarray(labels.shape) - 1).any():
            continue  # cut by the field of view
        box = tuple(slice(a - 1, b + 2) for a, b in zip(lo, hi))  # its bounding box and one voxel of background
        inside, hu = labels[box] == label, ct[box]
        com = idx.mean(0)
        rel = (idx - com) * SPACING_MM
        ap = ((np.arange(box[1].start, box[1].stop) - com[1]) * SPACING_MM)[None, :, None]
        depth = ndimage.distance_transform_edt(inside, sampling=SPACING_MM)  # the box's border is background
        row = []
        for select in (ap < -8.0, ap > 8.0):  # the body, the posterior elements
            voxels = inside & select
            rim, core = voxels & (depth > 1.01) & (depth <= 2.3), voxels & (depth > 2.3)
            row += [hu[rim].mean(), hu[core].mean()]
        extent = lambda a, axis: np.percentile(a[:, axis], 98) - np.percentile(a[:, axis], 2)  # noqa: E731
        body, arch = rel[rel[:, 1] < -8.0], rel[rel[:, 1] > 8.0]
        row += [extent(body, 0), extent(body, 2), -np.percentile(rel[:, 1], 1),
                extent(arch, 0), extent(arch, 2), np.percentile(rel[:, 1], 99), inside.sum() * SPACING_MM**3 / 1000,
                len(arch) * SPACING_MM**3 / 1000]
        rows.append(np.array(row))
        c = np.rint(com).astype(int) + MEAN_R
        patches.append(padded[tuple(slice(x - MEAN_R, x + MEAN_R + 1) for x in c)])
    return rows, patches


def parts_report(phantom: list[np.ndarray], real: list[np.ndarray]) -> str:
    p, r = np.mean(phantom, 0), np.mean(real, 0)
    lines = [f"\nLumbar vertebra parts on the {SPACING_MM:g} mm grid, {len(phantom)} phantom and {len(real)} real "
             "whole lumbar vertebrae (relative to the mask's centre of mass: body = more than 8 mm in front, posterior "
             "elements = more than 8 mm behind; rim 1-2.3 mm below the mask's surface, core deeper; extents "
             "2nd-98th percentile). Mean [standard deviation over vertebrae]:\n",
             "| figure | phantom | real | ratio |", "|---|---|---|---|"]
    sp, sr = np.std(phantom, 0), np.std(real, 0)
    for k, name in enumerate(PART_COLUMNS):
        lines.append(f"| {name} | {p[k]:.0f} [{sp[k]:.0f}] | {r[k]:.0f} [{sr[k]:.0f}] | {ratio(p[k], r[k])} |")
    return "\n".join(lines) + "\n"


def mean_lumbar_png(phantom: list[np.ndarray], real: list[np.ndarray]) -> bytes:
    """The mean lumbar vertebra of each side (rows), three planes through the centre of mass (columns)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = MEAN_R * SPACING_MM
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    for row, (name, patches) in enumerate((("phantom", phantom), ("real CT", real))):
        mean = np.nanmean(patches, 0)
        planes = (("axial (anterior up)", mean[MEAN_R], (-r, r, r, -r)),
                  ("sagittal (superior up, anterior left)", mean[::-1, :, MEAN_R], (-r, r, -r, r)),
                  ("coronal (superior up)", mean[::-1, MEAN_R, :], (-r, r, -r, r)))
        for col, (plane, image, extent) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=-200, vmax=600, extent=extent)
            ax.set_title(f"{name}, {len(patches)} vertebrae: {plane}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle("mean lumbar vertebra around its centre of mass, 2 mm grid, -200..600 HU (mm)", fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=70)
    plt.close(fig)
    return out.getvalue()


def pooled(measures: list[dict]) -> dict:
    hu = {k: np.concatenate([m[k] for m in measures]) for k in ("cortical", "cancellous")}
    shares = {k: float(np.mean([m["shares"][k] for m in measures])) for k in WINDOWS}
    extents = {r: [e for m in measures for e in m["extents"][r]] for r in REGIONS}
    return {"hu": hu, "shares": shares, "extents": {r: np.mean(v, 0) if v else None for r, v in extents.items()},
            "n_vertebrae": {r: len(v) for r, v in extents.items()}}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and np.isfinite(a / b) else "–"


def report(phantom: dict, real: dict, n_real: int) -> str:
    lines = [f"## Realism: phantom vs real CT\n\n{N_PHANTOMS} phantom cases (seed 0, the default generator with the default run's 160 x 120 mm field of view) "
             f"against {n_real} real CTs with vertebra labels, both on a canonical {SPACING_MM:g} mm grid "
             "(`perf/bench_realism.py` says how each figure is taken).\n",
             "| tissue (vertebra masks) | phantom mean HU [p10, p90] | real mean HU [p10, p90] | ratio of means |",
             "|---|---|---|---|"]
    # "cancellous" is every voxel at least 4 mm deep: the bodies' cancellous cores and the posterior elements'
    # interiors alike (the lumbar parts table below tells them apart)
    shown = {"cortical": "cortical (<= 2 mm deep)", "cancellous": ">= 4 mm deep (body cores, posterior interiors)"}
    for k in ("cortical", "cancellous"):
        p, r = phantom["hu"][k], real["hu"][k]
        lines.append(f"| {shown[k]} | {p.mean():.0f} [{np.percentile(p, 10):.0f}, {np.percentile(p, 90):.0f}] | "
                     f"{r.mean():.0f} [{np.percentile(r, 10):.0f}, {np.percentile(r, 90):.0f}] | "
                     f"{ratio(p.mean(), r.mean())} |")
    lines += ["", "| share of the volume | phantom | real | ratio |", "|---|---|---|---|"]
    for k, (lo, hi) in WINDOWS.items():
        lines.append(f"| {k} ({lo:g}..{hi:g} HU) | {100 * phantom['shares'][k]:.1f} % | {100 * real['shares'][k]:.1f} % | "
                     f"{ratio(phantom['shares'][k], real['shares'][k])} |")
    lines += ["", "| vertebra size (mm, SI x AP x LR) | phantom | real | ratio |", "|---|---|---|---|"]
    for region in REGIONS:
        p, r = phantom["extents"][region], real["extents"][region]
        if p is None or r is None:
            continue
        lines.append(f"| {region} ({phantom['n_vertebrae'][region]} / {real['n_vertebrae'][region]} vertebrae) | "
                     f"{p[0]:.0f} x {p[1]:.0f} x {p[2]:.0f} | {r[0]:.0f} x {r[1]:.0f} x {r[2]:.0f} | "
                     + " x ".join(ratio(a, b) for a, b in zip(p, r)) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if not REAL.is_dir():
        print(f"[bench] {REAL} not found: the realism report needs the real CTs beside the project; nothing recorded")
        return 0
    docs = REPO_ROOT / "docs"
    real, phantom = [], []
    parts: dict[str, list] = {"phantom": [], "real": []}
    means: dict[str, list] = {"phantom": [], "real": []}
    for name, ct, labels in real_volumes():
        real.append(measure(ct, labels))
        rows, patches = lumbar_parts(ct, labels)
        parts["real"] += rows
        means["real"] += patches
        if name == "sub-verse005":
            (docs / "realism_real.png").write_bytes(volume_views_png(
                ct, [SPACING_MM] * 3, caption="real: VerSe sub-verse005 (CC BY-SA 4.0, VerSe challenge)",
                window=VIEW_WINDOW))
    drawn = False
    for name, ct, labels, metal in phantom_volumes():
        phantom.append(measure(ct, labels))
        if not metal:  # pedicle screws are not bone
            rows, patches = lumbar_parts(ct, labels)
            parts["phantom"] += rows
            means["phantom"] += patches
        if not (drawn or metal):  # the first case without metal: its anatomy, not its streaks
            drawn = True
            (docs / "realism_phantom.png").write_bytes(volume_views_png(
                ct, [SPACING_MM] * 3, caption=f"phantom: {name}", window=VIEW_WINDOW))
    real_patches, phantom_patches = [], []
    real_lines, phantom_lines, detailed_lines = [], [], []
    for _, ct, geometry, verse, mask_geometry in real_masks():
        real_patches += lumbar_patches(ct, geometry, verse, mask_geometry)
        real_lines += lumbar_patches(ct, geometry, verse, mask_geometry, PROFILE_SPACING_MM, PROFILE_R)
    for spacing, radius, patches, detail in ((BENCH_SPACING_MM, PATCH_R, phantom_patches, False),
                                             (PROFILE_SPACING_MM, PROFILE_R, phantom_lines, False),
                                             (PROFILE_SPACING_MM, PROFILE_R, detailed_lines, True)):
        config = PhantomConfig(spacing_mm=spacing, vertebra_detail=detail, **BENCH_GENERATOR)
        for index in range(40):
            case = generate_case(0, index, config)
            if not case.metadata["metal"]["applied"]:  # pedicle screws are not bone
                patches += lumbar_patches(case.ct_hu, case.geometry, case.vertebra_mask, case.geometry, spacing, radius)
    (docs / "realism_mean_lumbar.png").write_bytes(mean_lumbar_png(means["phantom"], means["real"]))
    text = (report(pooled(phantom), pooled(real), len(real)) + parts_report(parts["phantom"], parts["real"])
            + patch_report(phantom_patches, real_patches) + profile_report(phantom_lines, detailed_lines, real_lines))
    print(text)
    write_fragment("realism", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
