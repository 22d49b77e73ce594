"""CT and label-mask I/O with SimpleITK: every reader returns ``(array, Geometry)``.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM series
(a folder). Arrays are in numpy axis order (see ``datamodules.geometry``); only 3D scalar images are accepted.

Orientation codes (``"PIR"``, ``"LPS"``, ...) follow nibabel/ITK: letter ``i`` names the patient direction towards
which voxel axis ``i`` grows, axes listed in file order (x, y, z), i.e. numpy axes (2, 1, 0). The canonical
orientation is ``"LPS"`` (ITK identity direction): numpy axes (0, 1, 2) grow towards (superior, posterior, left).
Reorientation only permutes and flips voxel axes, so it is lossless and world coordinates are unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import itertools
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinebench.datamodules.atomic import atomic_path
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Formats whose header names a separate data file (written beside it).
_DETACHED_SUFFIXES = (".mhd", ".nhdr")
CANONICAL_ORIENTATION = "LPS"

# World axis (LPS index) and sign for each orientation letter.
_LETTER_AXIS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_AXIS_LETTER = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


def image_suffix(path: str | os.PathLike) -> str | None:
    """The recognised image suffix of ``path`` (``.nii.gz`` before ``.nii``...), or None."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def silence_itk_warnings() -> None:
    """Stop ITK printing warnings (e.g. "No Series were found", "direction coerced to orthogonal") on stderr.

    Process-wide; the CLI calls it so that bad input ends in exactly one error line.
    """
    sitk.ProcessObject.SetGlobalWarningDisplay(False)


# --- reading -------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image file or DICOM series folder -> (array in numpy order, Geometry)."""
    image = _read_sitk(Path(path))
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def read_sitk_image(path: str | os.PathLike) -> tuple[sitk.Image, Geometry]:
    """``read_image`` without the numpy copy: (the SimpleITK image, its Geometry), for ``resample_to``."""
    image = _read_sitk(Path(path))
    return image, Geometry.from_sitk(image)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """The Geometry of an image without reading its voxels (DICOM folders are read in full). A NIfTI file is still
    checked to hold every voxel its header promises (from the gzip trailer: cheap), so a truncated file is not
    taken for a good one."""
    path = _existing(path)
    if path.is_dir():
        return Geometry.from_sitk(_read_dicom_series(path))
    reader = _file_reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image header ({_itk_reason(exc)})") from None
    if image_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_complete(path)
    dim = reader.GetDimension()
    if dim != 3:
        raise InputError(f"{path}: is a {dim}D image; expected a 3D volume")
    return Geometry.from_itk(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    return path


def _file_reader(path: Path) -> sitk.ImageFileReader:
    if image_suffix(path) is None:
        valid = ", ".join(IMAGE_SUFFIXES)
        raise InputError(f"{path}: unsupported image format; expected one of {valid} or a DICOM folder")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return reader


def _read_sitk(path: Path) -> sitk.Image:
    path = _existing(path)
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        reader = _file_reader(path)
        nifti = image_suffix(path) in (".nii", ".nii.gz")
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            if nifti:
                _check_nifti_complete(path)  # name truncation when that is the cause
            raise InputError(f"{path}: cannot read image ({_itk_reason(exc)})") from None
        if nifti:
            _check_nifti_complete(path)
    _check_3d_scalar(image, path)
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        listed = ", ".join(series)
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series ({listed}); keep one per folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series ({_itk_reason(exc)})") from None


def _check_3d_scalar(image: sitk.Image, path: Path) -> None:
    if image.GetDimension() != 3:
        raise InputError(f"{path}: is a {image.GetDimension()}D image; expected a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected scalar")


def _itk_reason(exc: RuntimeError) -> str:
    """The informative line of an ITK exception (they span several lines with source locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()
    return lines[-1] if lines else "unknown error"


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header promises.

    ITK's NIfTI reader fills a truncated file's missing voxels silently, so this is checked here: for ``.nii``
    by file size, for ``.nii.gz`` first by the gzip trailer (uncompressed size mod 2**32), then, when that
    disagrees (e.g. a multi-member gzip), by decompressing the stream.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            header = f.read(540)
    except EOFError:
        raise InputError(f"{path}: truncated file (ends inside the header)") from None
    except (OSError, zlib.error) as exc:
        raise InputError(f"{path}: corrupt file ({exc})") from None
    expected = _nifti_expected_bytes(header)
    if expected is None:
        return
    if not gz:
        actual = path.stat().st_size
    else:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        if isize == expected % 2**32:
            return
        actual, complete = _gunzip_length(path)
        if not complete:
            raise InputError(f"{path}: truncated file (gzip stream ends after about {actual} of {expected} bytes)")
    if actual < expected:
        raise InputError(f"{path}: truncated file ({actual} of {expected} bytes)")


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header; None when not a NIfTI header."""
    for e in "<>":
        if len(header) >= 348 and struct.unpack(e + "i", header[:4])[0] == 348:
            dim = struct.unpack(e + "8h", header[40:56])
            bitpix = struct.unpack(e + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(e + "f", header[108:112])[0])
        elif len(header) >= 540 and struct.unpack(e + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(e + "h", header[14:16])[0]
            dim = struct.unpack(e + "8q", header[16:80])
            vox_offset = struct.unpack(e + "q", header[168:176])[0]
        else:
            continue
        ndim = max(0, min(int(dim[0]), 7))
        return vox_offset + int(np.prod([max(int(d), 1) for d in dim[1 : 1 + ndim]])) * bitpix // 8
    return None


def _gunzip_length(path: Path) -> tuple[int, bool]:
    """(decompressed bytes, whether the gzip stream ended properly)."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                total += len(chunk)
    except EOFError:
        return total, False
    except (OSError, zlib.error) as exc:
        raise InputError(f"{path}: corrupt gzip data ({exc})") from None
    return total, True


# --- writing -------------------------------------------------------------------------------------


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool | None = None) -> None:
    """Write ``array`` (numpy order, shape ``geometry.shape``) atomically; the format follows the suffix.

    ``compress`` defaults to True for ``.nii.gz`` and False otherwise (NRRD/MHA compress with gzip when True).
    Detached formats (``.mhd``, ``.nhdr``) write their data file first and the header last, so the header
    only appears once the data is complete.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix is None:
        raise InputError(f"{path}: unsupported image format; expected one of {', '.join(IMAGE_SUFFIXES)}")
    array = np.asarray(array)
    if array.shape != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = geometry.to_sitk(array)
    compress = suffix == ".nii.gz" if compress is None else compress
    if suffix in _DETACHED_SUFFIXES:
        _write_detached(path, image, compress)
        return
    with atomic_path(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            _write_nifti_checked(image, tmp, compress, path)
        else:
            sitk.WriteImage(image, str(tmp), compress)


def _write_nifti_checked(image: sitk.Image, tmp: Path, compress: bool, path: Path) -> None:
    """ITK's NIfTI writer reports a short write (a full disk) on stderr and succeeds: its output is held back,
    the written file checked against its header, and a failure raised once, as an OSError naming ``path``."""
    with _stderr_held() as held:
        sitk.WriteImage(image, str(tmp), compress)
    try:
        _check_nifti_complete(tmp)
    except InputError:
        raise OSError(errno.EIO, "the image could not be written completely (disk full or over a file-size "
                      "limit?)", str(path)) from None
    if held.text:
        sys.stderr.write(held.text)  # a successful write's messages, if any, are not lost


class _Held:
    text = ""


@contextlib.contextmanager
def _stderr_held():
    """Collect what C code writes to file descriptor 2 inside the block (``.text`` afterwards)."""
    held = _Held()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.text = sink.read().decode("utf-8", "replace")


def _write_detached(path: Path, image: sitk.Image, compress: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmpdir / path.name), compress)
        for f in sorted(tmpdir.iterdir()):
            if f.name != path.name:
                os.replace(f, path.parent / f.name)
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --- orientation ---------------------------------------------------------------------------------


def _axis_assignment(direction: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """World axis and sign of each numpy axis: the permutation that best matches the direction cosines."""
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(direction[p[a], a]) for a in range(3)))
    signs = np.array([1 if direction[best[a], a] >= 0 else -1 for a in range(3)])
    return best, signs


def orientation_code(geometry: Geometry) -> str:
    """Three-letter orientation code of ``geometry`` in file axis order (x, y, z), e.g. ``"PIR"``, ``"RAS"``."""
    world_axis, signs = _axis_assignment(geometry.direction)
    return "".join(_AXIS_LETTER[(world_axis[a], int(signs[a]))] for a in (2, 1, 0))


def _parse_code(code: str) -> list[tuple[int, int]]:
    """(world axis, sign) for numpy axes 0, 1, 2 from a code listed in file order (x, y, z)."""
    code = "".join(code).upper()
    pairs = [_LETTER_AXIS.get(c) for c in code]
    if len(code) != 3 or None in pairs or len({p[0] for p in pairs}) != 3:
        raise InputError(f"invalid orientation code {code!r}; expected three of L/R, P/A, S/I, e.g. 'LPS' or 'PIR'")
    return list(reversed(pairs))


def _reorient_plan(geometry: Geometry, code: str):
    target = _parse_code(code)
    world_axis, signs = _axis_assignment(geometry.direction)
    source_of = {w: a for a, w in enumerate(world_axis)}
    order = [source_of[w] for w, _ in target]  # new axis t takes old axis order[t]
    flips = [bool(signs[order[t]] != target[t][1]) for t in range(3)]
    old_shape = np.asarray(geometry.shape)
    corner_vox = np.array([0.0, 0.0, 0.0])  # old voxel that becomes the new (0, 0, 0)
    for t in range(3):
        if flips[t]:
            corner_vox[order[t]] = old_shape[order[t]] - 1
    direction = geometry.direction[:, order] * np.where(flips, -1.0, 1.0)[None, :]
    new_geometry = Geometry(
        shape=tuple(int(old_shape[a]) for a in order),
        spacing_mm=geometry.spacing_mm[order],
        origin_mm=geometry.vox_to_world(corner_vox),
        direction=direction,
    )
    return order, flips, new_geometry


def reoriented_geometry(geometry: Geometry, code: str = CANONICAL_ORIENTATION) -> Geometry:
    """The geometry that ``reorient(array, geometry, code)`` would return (no voxels touched)."""
    return _reorient_plan(geometry, code)[2]


def reorient(array: np.ndarray, geometry: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """Permute/flip voxel axes so that the image has orientation ``code``; world coordinates are unchanged.

    Oblique scans keep their small residual rotation in ``direction`` (a lossless reorientation cannot remove it).
    """
    order, flips, new_geometry = _reorient_plan(geometry, code)
    out = np.transpose(array, order)
    flip_axes = tuple(t for t in range(3) if flips[t])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    return np.ascontiguousarray(out), new_geometry


def reorient_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Reorient to ``"LPS"``: numpy axes (0, 1, 2) grow towards (superior, posterior, left)."""
    return reorient(array, geometry, CANONICAL_ORIENTATION)


# --- resampling ----------------------------------------------------------------------------------

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def isotropic_grid(geometry: Geometry, spacing_mm: float = 2.0) -> Geometry:
    """The isotropic ``spacing_mm`` grid over ``geometry``'s physical extent and direction: ``round(n * spacing /
    spacing_mm)`` voxels per axis around the same centre, so the field of view (voxel edge to voxel edge) is kept
    to within half a new voxel per side."""
    if not spacing_mm > 0:
        raise InputError(f"spacing_mm must be positive, got {spacing_mm}")
    old_shape = np.asarray(geometry.shape, dtype=np.float64)
    new_shape = np.maximum(1, np.round(old_shape * geometry.spacing_mm / spacing_mm)).astype(int)
    new_spacing = np.full(3, float(spacing_mm))
    centre_mm = geometry.vox_to_world((old_shape - 1) / 2)
    new_origin = centre_mm - geometry.direction @ (new_spacing * (new_shape - 1) / 2)
    return Geometry(tuple(int(n) for n in new_shape), new_spacing, new_origin, geometry.direction)


def resample_isotropic(
    array: np.ndarray, geometry: Geometry, spacing_mm: float = 2.0, interpolation: str = "linear"
) -> tuple[np.ndarray, Geometry]:
    """Resample to isotropic ``spacing_mm`` over the same physical extent and direction (``isotropic_grid``).

    ``"linear"`` (CT) returns float32 and fills outside samples with the image minimum; ``"nearest"`` (label
    masks) keeps the dtype and fills with 0. No anti-aliasing: downsampling a thin-slice CT by linear
    interpolation is what the published pipelines do.
    """
    grid = isotropic_grid(geometry, spacing_mm)
    return resample_to(array, geometry, grid, interpolation), grid


def resample_to(
    array: np.ndarray | sitk.Image, geometry: Geometry, grid: Geometry, interpolation: str = "linear"
) -> np.ndarray:
    """``array`` (on ``geometry``; a numpy array or the SimpleITK image a file was read into, which saves the
    full-resolution copies in and out of numpy) sampled at the voxel centres of ``grid``, in one SimpleITK pass.

    ``grid`` may differ in orientation too: resampling an image straight onto the canonical isotropic grid gives
    what reorienting it first and then resampling gives (up to float rounding of the sample positions), without
    the full-resolution copies of the reorientation. ``"linear"`` interpolates an integer CT directly into
    float32 output (no float copy of the input) and fills outside samples with the image minimum; ``"nearest"``
    keeps the dtype and fills with 0.
    """
    if interpolation not in _INTERPOLATORS:
        raise InputError(f"unknown interpolation {interpolation!r}; valid: {', '.join(_INTERPOLATORS)}")
    linear = interpolation == "linear"
    if isinstance(array, sitk.Image):
        image = array
        fill = _image_minimum(image) if linear else 0.0
    else:
        image = geometry.to_sitk(array.astype(np.uint8) if array.dtype == bool else array)
        fill = float(array.min()) if (linear and array.size) else 0.0
    resampler = sitk.ResampleImageFilter()
    size, spacing, origin, direction = grid.itk_parameters()
    resampler.SetSize(size)
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputDirection(direction)
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(fill)
    if linear:
        resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _image_minimum(image: sitk.Image) -> float:
    # numpy on a view of the image's buffer (alive as long as ``image``): 3x faster than ITK's min/max filter
    return float(sitk.GetArrayViewFromImage(image).min())

