"""Preprocessing pipeline and its cache: hit/miss, keys, atomicity (killed and failing writes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import spinebench.datamodules.preprocess as pp
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.preprocess import (
    AIR_VALUE, HU_MEAN, HU_STD, PreprocessParams, ensure_entry, preprocess_volume, read_entry, remove_stale_parts,
)
from spinebench.datamodules.sources.folder import FolderOptions, FolderSource

REPO = Path(__file__).resolve().parents[1]
PIR = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])


def _case(tmp_path, name="a"):
    from spinebench.datamodules.centroids import Centroids, write_centroids
    from spinebench.datamodules.ct_io import write_image

    g = Geometry((10, 24, 12), (3.0, 1.0, 2.0), (5.0, -7.0, 11.0), PIR)
    ct = np.full(g.shape, -3024, np.int16)  # scanner padding below air
    ct[4:7, 10:14, 5:8] = 1000
    write_image(tmp_path / f"{name}.nii.gz", ct, g)
    write_centroids(tmp_path / f"{name}.lml", Centroids({"L1": g.vox_to_world(np.array([5.0, 11.5, 6.0]))}))
    (rec,) = [r for r in FolderSource(FolderOptions(str(tmp_path), test_fraction=0.0)).listing().records if r.case_id == name]
    return rec, g


def test_preprocess_volume_canonical_isotropic_clipped_zscored():
    g = Geometry((10, 24, 12), (3.0, 1.0, 2.0), (5.0, -7.0, 11.0), PIR)
    ct = np.full(g.shape, -3024, np.int16)
    ct[4:7, 10:14, 5:8] = 1000
    out, og = preprocess_volume(ct, g, PreprocessParams(spacing_mm=2.0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(og.spacing_mm, 2.0)
    np.testing.assert_allclose(np.abs(og.direction), np.abs(og.direction).round(), atol=1e-9)  # axis aligned
    # canonical: array axis 0 grows superior (+z LPS), axis 1 posterior (+y), axis 2 left (+x)
    np.testing.assert_allclose(og.direction[:, 0], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(og.direction[:, 1], [0, 1, 0], atol=1e-9)
    assert out.min() == pytest.approx(AIR_VALUE) and AIR_VALUE == pytest.approx((-1000 - HU_MEAN) / HU_STD)
    # the bright block stays at its world position
    centre_mm = g.vox_to_world(np.array([5.0, 11.5, 6.0]))
    v = np.round(og.world_to_vox(centre_mm)).astype(int)
    assert out[tuple(v)] == pytest.approx((1000 - HU_MEAN) / HU_STD, rel=1e-5)


def test_cache_miss_then_hit_without_reading_the_original(tmp_path):
    rec, g = _case(tmp_path / "data")
    params, cache = PreprocessParams(), tmp_path / "cache"
    assert read_entry(cache, rec, params) is None
    entry, hit = ensure_entry(cache, rec, params)
    assert not hit and entry.load_array().shape == entry.geometry.shape
    array = np.array(entry.load_array())
    # Overwrite the original with garbage of the same size and mtime: a hit must not notice (no read).
    path = Path(rec.image_path)
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again, hit = ensure_entry(cache, rec, params)
    assert hit
    np.testing.assert_array_equal(np.array(again.load_array()), array)
    np.testing.assert_allclose(again.centroids_mm["L1"], entry.centroids_mm["L1"])
    assert again.original_geometry == g
    # another spacing is another entry, and so is switching the anti-aliasing off (``data.antialias``);
    # a touched source file is a miss
    assert read_entry(cache, rec, PreprocessParams(spacing_mm=3.0)) is None
    assert read_entry(cache, rec, PreprocessParams(antialias=False)) is None
    from spinebench.datamodules.datamodule import DataConfig

    assert DataConfig(antialias=False).preprocess_params == PreprocessParams(antialias=False)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_entry(cache, rec, params) is None


def test_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    rec, _ = _case(tmp_path / "data")
    cache = tmp_path / "cache"

    def boom(path, text):
        raise OSError("disk full")

    monkeypatch.setattr(pp, "write_text_atomic", boom)  # fails after the .npy is in place
    with pytest.raises(OSError, match="disk full"):
        ensure_entry(cache, rec, PreprocessParams())
    monkeypatch.undo()
    assert read_entry(cache, rec, PreprocessParams()) is None  # no json = no entry
    assert not [p for p in cache.rglob("*") if ".part" in p.name]
    entry, hit = ensure_entry(cache, rec, PreprocessParams())  # rebuilt cleanly
    assert not hit and np.isfinite(np.array(entry.load_array())).all()


@pytest.mark.slow
def test_write_killed_midway_leaves_no_entry_that_is_read(tmp_path):
    rec, _ = _case(tmp_path / "data")
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        import spinebench.datamodules.preprocess as pp
        from spinebench.datamodules.sources.folder import FolderOptions, FolderSource
        real_save = np.save
        def slow_save(path, array):  # write half the bytes, then hang until killed
            real_save(path, array)
            data = open(path, 'rb').read()
            with open(path, 'wb') as fh:
                fh.write(data[: len(data) // 2]); fh.flush()
            print('writing', flush=True)
            time.sleep(60)
        pp.np.save = slow_save
        (rec,) = [r for r in FolderSource(FolderOptions({str(tmp_path / 'data')!r}, test_fraction=0.0)).listing().records]
        pp.ensure_entry({str(cache)!r}, rec, pp.PreprocessParams())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in cache.rglob("*")]
    assert any(".part" in n for n in leftovers) and not any(n.endswith(".json") for n in leftovers)
    assert read_entry(cache, rec, PreprocessParams()) is None
    entry, hit = ensure_entry(cache, rec, PreprocessParams())
    assert not hit and entry.load_array().shape == entry.geometry.shape
    # the orphan is reclaimed once old enough that no live writer can own it
    (part,) = [p for p in cache.rglob("*") if ".part" in p.name]
    assert remove_stale_parts(cache) == 0 and part.exists()
    os.utime(part, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_parts(cache) == 1 and not part.exists() and read_entry(cache, rec, PreprocessParams())


def test_truncated_array_behind_a_json_is_not_read(tmp_path):
    rec, _ = _case(tmp_path / "data")
    cache = tmp_path / "cache"
    entry, _ = ensure_entry(cache, rec, PreprocessParams())
    data = Path(entry.array_path).read_bytes()
    Path(entry.array_path).write_bytes(data[:-8])
    assert read_entry(cache, rec, PreprocessParams()) is None
    entry, hit = ensure_entry(cache, rec, PreprocessParams())
    assert not hit and Path(entry.array_path).stat().st_size == len(data)
