"""Tiny annotated CTs for the examples of file-based sources (``DataSource.example``): a 12 x 20 x 10 grid of air
at 2 mm, oriented as VerSe files are (P-I-R), with bright balls at three lumbar centroids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinebench.datamodules.centroids import Centroids, write_centroids
from spinebench.datamodules.ct_io import write_image
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.labels import VERSE_ID_OF

# numpy axes (z, y, x) grow towards (R, I, P); the three vertebrae are stacked along the vertical axis 1
EXAMPLE_GEOMETRY = Geometry((12, 20, 10), (2.0, 2.0, 2.0), (10.0, -20.0, 30.0),
                            np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))
EXAMPLE_VOXELS = {"L1": (6, 5, 5), "L2": (6, 10, 5), "L3": (6, 15, 5)}


def write_example_case(image: str | Path, annotation: str | Path | None, geometry: Geometry = EXAMPLE_GEOMETRY,
                       voxels: dict[str, tuple[int, int, int]] | None = None) -> tuple[Path, Path | None]:
    """Write a tiny CT (-1024 HU air, 1000 HU balls at ``voxels``, by default three lumbar centroids) to ``image``
    and its annotation to ``annotation``: a centroid file (``.json`` VerSe, ``.csv``, ``.lml``) or, for an image
    name (``.nii.gz``, ``.mha``, ...), a VerSe-numbered vertebra mask; None writes no annotation."""
    voxels = EXAMPLE_VOXELS if voxels is None else voxels
    image = Path(image)
    image.parent.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    ct = np.full(geometry.shape, -1024, np.int16)
    mask = np.zeros(geometry.shape, np.uint8)
    for name, vox in voxels.items():
        ball = np.sum((grid - np.array(vox)) ** 2, -1) <= 4
        ct[ball], mask[ball] = 1000, VERSE_ID_OF[name]
    write_image(image, ct, geometry)
    if annotation is None:
        return image, None
    annotation = Path(annotation)
    annotation.parent.mkdir(parents=True, exist_ok=True)
    if annotation.suffix.lower() in (".json", ".csv", ".lml"):
        centroids = Centroids({n: geometry.vox_to_world(np.array(v, float)) for n, v in voxels.items()})
        write_centroids(annotation, centroids, geometry=geometry)
    else:
        write_image(annotation, mask, geometry)
    return image, annotation
