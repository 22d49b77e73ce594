"""CT and label-mask I/O with SimpleITK: every reader returns ``(array, Geometry)``.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM series
(a folder). Arrays are in numpy axis order (see ``datamodules.geometry``); only 3D scalar images are accepted.
Orientation codes and lossless reorientation: ``datamodules.orientation``; resampling: ``datamodules.resample``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
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
from spinebench.datamodules.nifti_gz import read_nifti_gz

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Formats whose header names a separate data file (written beside it).
_DETACHED_SUFFIXES = (".mhd", ".nhdr")


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
        suffix = image_suffix(path)
        nifti = suffix in (".nii", ".nii.gz")
        try:
            # the voxels inflated by ISA-L (complete by construction), or None: then ITK reads them
            image = read_nifti_gz(path, reader) if suffix == ".nii.gz" else None
            complete = image is not None
            if image is None:
                image = reader.Execute()
        except RuntimeError as exc:
            if nifti:
                _check_nifti_complete(path)  # name truncation when that is the cause
            raise InputError(f"{path}: cannot read image ({_itk_reason(exc)})") from None
        if nifti and not complete:
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
