"""CT I/O figures: read + reorient + resample a synthetic 512x512x300 int16 CT to 2 mm; centroids from a mask.

The CT is synthesised here (a noisy body cylinder with a bright spine column, RAS NIfTI like most converted
scans, 0.78 x 0.78 x 1.0 mm) and written to a temporary folder; nothing is downloaded. Preprocessing is
compared side by side with plain SimpleITK (read + one resampling onto the same canonical 2 mm grid: the
floor for this work with ITK's reader, which inflates ``.nii.gz`` with zlib, where spinebench uses ISA-L) and
with MONAI's LoadImage + Orientation + Spacing (``pip install -e .[bench]``; the row is left out without MONAI).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import timed, write_fragment  # noqa: E402

from spinebench.datamodules.centroids import centroids_from_mask  # noqa: E402
from spinebench.datamodules.ct_io import read_image, read_sitk_image, write_image  # noqa: E402
from spinebench.datamodules.orientation import reorient_canonical, reoriented_geometry  # noqa: E402
from spinebench.datamodules.resample import isotropic_grid, resample_isotropic  # noqa: E402
from spinebench.datamodules.preprocess import PreprocessParams, preprocess_volume  # noqa: E402
from spinebench.datamodules.geometry import Geometry  # noqa: E402

SHAPE = (300, 512, 512)  # numpy (z, y, x): 300 slices of 512 x 512
SPACING_MM = (1.0, 0.78125, 0.78125)
RAS_DIRECTION = np.array([[0, 0, -1.0], [0, -1.0, 0], [1.0, 0, 0]])  # numpy axes (z, y, x) -> (S, A, R)


def synthetic_ct(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(CT int16 HU, vertebra mask uint8 with 17 labels T1..L5 stacked along z)."""
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1
    ct = np.broadcast_to(np.where(body, 40, -1000).astype(np.int16), SHAPE).copy()
    ct += rng.integers(-40, 41, size=SHAPE, dtype=np.int16)  # noise, so compression is realistic
    mask = np.zeros(SHAPE, np.uint8)
    disc = ((y - 300) / 30.0) ** 2 + ((x - 256) / 35.0) ** 2 <= 1
    for k, label in enumerate(range(8, 25)):  # T1..L5 (VerSe ids 8..24), 17 mm pitch
        lo, hi = 5 + 17 * k, 5 + 17 * k + 14
        mask[lo:hi][:, disc[0]] = label
    ct[mask > 0] = 400
    return ct, mask


def itk_reader(path: Path) -> tuple[sitk.Image, Geometry]:
    """``read_sitk_image`` as it was before ``datamodules/nifti_gz.py``: ITK's own reader, zlib's inflate."""
    image = sitk.ReadImage(str(path))
    return image, Geometry.from_sitk(image)


def plain_simpleitk(path: Path, grid: Geometry) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    out = sitk.Resample(image, [int(n) for n in grid.shape[::-1]], sitk.Transform(), sitk.sitkLinear,
                        tuple(grid.origin_mm), tuple(float(s) for s in grid.spacing_mm[::-1]),
                        tuple(grid.direction[:, ::-1].reshape(-1)), -1000.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def monai_seconds(path: Path) -> float | None:
    try:
        from monai.transforms import Compose, LoadImage, Orientation, Spacing
    except ImportError:
        return None
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    pipeline = Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="LPS"),
                        Spacing(pixdim=(2.0, 2.0, 2.0), mode="bilinear")])
    seconds, _ = timed(lambda: pipeline(str(path)), repeat=2)
    return seconds


def main() -> None:
    rng = np.random.default_rng(0)
    ct, mask = synthetic_ct(rng)
    geometry = Geometry(SHAPE, SPACING_MM, (-200.0, 150.0, -800.0), RAS_DIRECTION)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".nii.gz", ".nii"):
            # one folder each: given "ct.nii.gz", ITK's NIfTI reader opens a "ct.nii" beside it
            path = Path(tmp) / suffix.strip(".") / f"ct{suffix}"
            path.parent.mkdir()
            t_write, _ = timed(lambda: write_image(path, ct, geometry), repeat=1)
            t_read, (array, geo) = timed(lambda: read_image(path), repeat=2)
            rows.append((f"write `{suffix}` ({path.stat().st_size / 2**20:.0f} MiB on disk)", t_write))
            rows.append((f"read `{suffix}` (incl. truncation check)", t_read))
        t_reorient, (canon, canon_geo) = timed(lambda: reorient_canonical(array, geo), repeat=3)
        t_resample, (small, small_geo) = timed(lambda: resample_isotropic(canon, canon_geo, 2.0, "linear"), repeat=2)
        rows.append(("reorient RAS -> canonical (exact flips)", t_reorient))
        rows.append((f"resample to 2 mm, linear -> {small.shape} float32", t_resample))
        path = Path(tmp) / "nii.gz" / "ct.nii.gz"
        params = PreprocessParams(spacing_mm=2.0)
        t_ours, (ours, _) = timed(lambda: preprocess_volume(*read_sitk_image(path), params), repeat=3)
        grid = isotropic_grid(reoriented_geometry(geo), 2.0)
        t_plain, plain = timed(lambda: plain_simpleitk(path, grid), repeat=3)
        assert plain.shape == ours.shape
        compare = [("plain SimpleITK: read + one resampling onto the same grid", t_plain)]
        t_monai = monai_seconds(path)
        if t_monai is not None:
            compare.append(("MONAI: LoadImage + Orientation(LPS) + Spacing(2 mm)", t_monai))
        t_numpy, _ = timed(lambda: preprocess_volume(*read_image(path), params), repeat=3)
        t_zlib, _ = timed(lambda: preprocess_volume(*itk_reader(path), params), repeat=3)
        rows.append(("**spinebench: read `.nii.gz` + preprocess (canonical, 2 mm, clip, z-score)**", t_ours))
        rows.append(("the same with the voxels inflated by ITK's NIfTI reader (zlib) instead of ISA-L "
                     f"(`datamodules/nifti_gz.py`; spinebench takes {t_ours / t_zlib:.2f}x this time)", t_zlib))
        rows.append(("the same through a numpy array (`read_image`, as for generated phantoms)", t_numpy))
        plain_params = PreprocessParams(spacing_mm=2.0, antialias=False)  # no block averaging of the 0.78 mm axes
        t_point, _ = timed(lambda: preprocess_volume(*read_sitk_image(path), plain_params), repeat=3)
        rows.append(("the same with `data.antialias: false` (point samples; 2 x 2 blocks of the 0.78 mm axes are "
                     f"averaged otherwise: spinebench takes {t_ours / t_point:.2f}x this time)", t_point))
        rows += [(f"{what} (spinebench takes {t_ours / t:.2f}x its time)", t) for what, t in compare]
        mask_canon, _ = reorient_canonical(mask, geometry)
        t_mask, _ = timed(lambda: resample_isotropic(mask_canon, canon_geo, 2.0, "nearest"), repeat=2)
        t_com, centroids = timed(lambda: centroids_from_mask(mask, geometry), repeat=3)
        assert len(centroids) == 17
        rows.append(("resample mask to 2 mm, nearest", t_mask))
        rows.append((f"centroids from mask ({len(centroids)} vertebrae, full resolution)", t_com))
    table = "\n".join(f"| {what} | {seconds:.2f} s |" for what, seconds in rows)
    write_fragment(
        "io",
        "## CT I/O: read, reorient, resample, centroids\n\n"
        f"Synthetic int16 CT of {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} voxels ({np.prod(SHAPE) * 2 / 2**20:.0f} MiB), "
        f"{SPACING_MM[1]} x {SPACING_MM[2]} x {SPACING_MM[0]} mm, RAS; best of 1-3 runs, wall time. "
        "SimpleITK and torch use their default thread counts; on a 2-core machine shared with other jobs, "
        "repeated runs differed by up to 2x.\n\n"
        "| step | time |\n|---|---|\n" + table,
    )
    print(table)


if __name__ == "__main__":
    main()
