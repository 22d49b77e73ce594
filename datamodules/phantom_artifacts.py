"""Acquisition difficulties applied to a drawn phantom: metal implants with streaks, blur, anisotropic slices, noise.

All per-voxel arithmetic is +,-,*,/ and comparisons on float32 (IEEE-exact, hence identical on every machine);
transcendental functions are evaluated only on a few scalars and rounded.
"""

from __future__ import annotations

import numpy as np

from spinebench.datamodules.phantom_anatomy import Canvas, VertebraPose, _capsule_d2, size


def paint_capsule(canvas: Canvas, a_mm: np.ndarray, b_mm: np.ndarray, radius_mm: float, hu: float) -> None:
    """A solid capsule between two array-order mm points (labels untouched: metal keeps the bone's label)."""
    lo, hi = np.minimum(a_mm, b_mm) - radius_mm - 1, np.maximum(a_mm, b_mm) + radius_mm + 1
    box = canvas.box(lo, hi, a_mm)
    if box is None:
        return
    sl, coords = box
    canvas.hu[sl][_capsule_d2(coords, (0.0, 0.0, 0.0), b_mm - a_mm) <= radius_mm**2] = np.float32(hu)


def pedicle_screw_points(v: VertebraPose, side: float) -> tuple[np.ndarray, np.ndarray]:
    """(head, tip) in array-order mm of a pedicle screw: from behind the lamina through the pedicle into the body,
    converging towards the midline and kept off the body centroid."""
    k, pos = v.scale, v.pos
    rl, rp = k * size("body_rl", pos), k * size("body_rp", pos)
    crl, crp = k * size("canal_rl", pos), k * size("canal_rp", pos)
    t_arch = k * size("arch_t", pos)
    entry = np.array([0.1 * v.height_mm / 2, rp + 1.0 + crp, side * (crl + 0.5 * t_arch)])
    tip = np.array([0.0, -0.45 * rp, side * 0.45 * rl])
    direction = (entry - tip) / np.sqrt(np.sum((entry - tip) ** 2))
    head = entry + 8.0 * direction
    return v.center_mm + head @ v.frame, v.center_mm + tip @ v.frame


def add_metal(canvas: Canvas, levels: list[VertebraPose], hu: float, screw_r_mm: float, rod_r_mm: float) -> list[np.ndarray]:
    """Bilateral pedicle screws in ``levels`` joined by a rod on each side; returns the screw heads (array-order mm)."""
    heads = []
    for side in (-1.0, 1.0):
        side_heads = []
        for v in levels:
            head, tip = pedicle_screw_points(v, side)
            paint_capsule(canvas, head, tip, screw_r_mm, hu)
            side_heads.append(head)
        for a, b in zip(side_heads[:-1], side_heads[1:]):
            paint_capsule(canvas, a, b, rod_r_mm, hu)
        heads += side_heads
    return heads


def _profile(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth bump (1 - (d/w)^2)^2 for |d| < w, else 0: a Gaussian-like streak profile without exp."""
    x = np.clip(np.float32(1.0) - (d / np.float32(width)) ** 2, 0.0, None)
    return x * x


def add_streaks(canvas: Canvas, metal_threshold_hu: float, amplitude_hu: float, angles_deg: np.ndarray,
                width_mm: float, spine_l_mm: np.ndarray) -> int:
    """Streak artifacts in every axial slice holding metal: bright/dark rays through each metal cluster (left and
    right of the spine) at ``angles_deg`` with alternating sign, decaying with distance, plus a dark band along the
    line joining the two clusters (photon starvation). Returns the number of slices affected."""
    metal = canvas.hu >= np.float32(metal_threshold_hu)
    rows = np.nonzero(metal.any(axis=(1, 2)))[0]
    if len(rows) == 0:
        return 0
    sl = slice(rows[0], rows[-1] + 1)
    m = metal[sl]
    p = canvas.axis_mm(1).astype(np.float32)[None, :, None]
    l = canvas.axis_mm(2).astype(np.float32)[None, None, :]
    left = l >= np.asarray(spine_l_mm[sl], np.float32)[:, None, None]
    j_idx = np.arange(canvas.shape[1], dtype=np.int64)[None, :, None]
    k_idx = np.arange(canvas.shape[2], dtype=np.int64)[None, None, :]
    o, d = canvas.origin_mm, canvas.spacing_mm
    centers = []
    for side_mask in (m & left, m & ~left):
        # Integer index sums: exact, whatever the summation order of the platform's reduction loops.
        cnt = side_mask.sum(axis=(1, 2), dtype=np.int64)
        safe = np.maximum(cnt, 1).astype(np.float64)
        cp = o[1] + d[1] * ((side_mask * j_idx).sum(axis=(1, 2), dtype=np.int64) / safe)
        cl = o[2] + d[2] * ((side_mask * k_idx).sum(axis=(1, 2), dtype=np.int64) / safe)
        cnt = cnt.astype(np.float64)
        weight = np.minimum(cnt / 4.0, 1.0)  # slices just grazing the metal streak less
        centers.append((cp.astype(np.float32), cl.astype(np.float32), weight.astype(np.float32)))
    col = lambda x: x[:, None, None]  # noqa: E731
    streak = np.zeros(m.shape, dtype=np.float32)
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    units = np.round(np.stack([np.cos(rad), np.sin(rad)], axis=1), 9).astype(np.float32)
    for cp, cl, w in centers:
        dp, dl = p - col(cp), l - col(cl)
        r2 = dp * dp + dl * dl
        decay = col(w) * np.float32(amplitude_hu) / (np.float32(1.0) + r2 / np.float32(60.0**2))
        for j, (up, ul) in enumerate(units):
            sign = np.float32(1.0 if j % 2 == 0 else -1.0)
            streak += sign * decay * _profile(dp * ul - dl * up, width_mm)
    (cp0, cl0, w0), (cp1, cl1, w1) = centers
    both = col(np.minimum(w0, w1))
    dp_, dl_ = cp1 - cp0, cl1 - cl0
    norm = np.sqrt(dp_ * dp_ + dl_ * dl_) + np.float32(1e-3)
    up, ul = col(dp_ / norm), col(dl_ / norm)
    d_line = (p - col(cp0)) * ul - (l - col(cl0)) * up
    streak -= both * np.float32(1.5 * amplitude_hu) * _profile(d_line, 1.5 * width_mm)
    streak[m] = 0.0
    canvas.hu[sl] += streak
    return len(rows)


def gaussian_kernel(sigma_vox: float) -> np.ndarray:
    radius = max(1, int(2.5 * sigma_vox + 0.5))  # weights beyond ~2.5 sigma are < 5e-3 of the centre
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.round(np.exp(-0.5 * (x / sigma_vox) ** 2), 9)
    return w / w.sum()


def blur(volume: np.ndarray, sigma_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    """Separable Gaussian point-spread function (sigma in mm, edges replicated); axes where sigma < 0.25 voxel are
    left alone. Written as numpy multiplies and adds of shifted copies (no fused multiply-add, fixed order), so the
    result is the same on every platform."""
    out = volume
    for axis in range(3):
        s = sigma_mm / float(spacing_mm[axis])
        if s < 0.25:
            continue
        w = gaussian_kernel(s).astype(np.float32)
        r = len(w) // 2
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]

        def shifted(offset: int) -> np.ndarray:
            index = [slice(None)] * 3
            index[axis] = slice(r + offset, r + offset + n)
            return padded[tuple(index)]

        acc = shifted(0) * w[r]
        for t in range(1, r + 1):
            acc += (shifted(-t) + shifted(t)) * w[r + t]
        out = acc
    return out


def block_average(volume: np.ndarray, labels: np.ndarray, axis: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``factor`` consecutive samples along ``axis`` into one (thick slices; partial volume of a coarse
    voxel); labels take the middle sample. A remainder shorter than ``factor`` is dropped."""
    if factor == 1:
        return volume, labels
    n = (volume.shape[axis] // factor) * factor

    def take(a, start, step):
        index = [slice(None)] * 3
        index[axis] = slice(start, n, step)
        return a[tuple(index)]

    total = take(volume, 0, factor).copy()
    for t in range(1, factor):
        total += take(volume, t, factor)
    return total / np.float32(factor), take(labels, factor // 2, factor)


def thick_slices(volume: np.ndarray, labels: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``factor`` consecutive axial slices (axis 0) into one thick slice; labels take the middle slice."""
    return block_average(volume, labels, 0, factor)


def add_noise(volume: np.ndarray, rng: np.random.Generator, sigma_hu: float, correlation_mm: float = 0.0,
              spacing_mm: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Add zero-mean noise of standard deviation ``sigma_hu``: the sum of 4 uniform int8 draws (Irwin-Hall, close
    to Gaussian; 4x cheaper to draw than float normals and exact integer arithmetic). ``correlation_mm`` > 0:
    the noise is smoothed by a Gaussian of that sigma (``blur``; axes where it is under a quarter voxel stay
    white), then scaled back to ``sigma_hu``: CT noise is correlated over about a millimetre, reconstruction
    kernels spread each projection's noise over neighbouring voxels."""
    if sigma_hu <= 0:
        return volume
    draws = rng.integers(-128, 128, size=(4, *volume.shape), dtype=np.int8)
    total = draws[0].astype(np.int16)
    for k in (1, 2, 3):
        total += draws[k]
    total += np.int16(2)  # each draw has mean -0.5
    noise = total.astype(np.float32)
    scale = sigma_hu / _IRWIN_HALL_STD
    if correlation_mm > 0 and spacing_mm is not None:
        noise = blur(noise, correlation_mm, spacing_mm)
        scale /= blurred_noise_std(correlation_mm, spacing_mm)
    volume += noise * np.float32(scale)
    return volume


def blurred_noise_std(sigma_mm: float, spacing_mm) -> float:
    """The standard deviation of unit white noise after ``blur`` with ``sigma_mm``: each axis's normalised kernel
    w shrinks it by sqrt(sum w^2); axes that ``blur`` leaves alone (under a quarter voxel) do not."""
    out = 1.0
    for axis in range(3):
        s = sigma_mm / float(spacing_mm[axis])
        if s >= 0.25:
            out *= float(np.sqrt(np.sum(gaussian_kernel(s).astype(np.float32).astype(np.float64) ** 2)))
    return out


_IRWIN_HALL_STD = float(np.sqrt(4 * (256**2 - 1) / 12.0))  # std of the sum of 4 uniform int8 values
