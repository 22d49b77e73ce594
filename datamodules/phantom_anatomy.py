"""Drawing the phantom's spine into a canvas: the frame, the canvas and its shapes, vertebrae and discs.

Internal frame: "array-order mm" ``(s, p, l)`` = LPS ``(z, y, x)``, the order of the canonical numpy axes (superior,
posterior, left). Every part is an implicit shape (elliptic cylinders, capsules, slabs) evaluated only inside its
own bounding box, with element-wise +,-,*,/ only (IEEE-exact on every machine), so the output is reproducible
byte for byte. Sizes are adult averages interpolated over the level index (C1 = 0 ... S2 = 25), so T3-T10 differ
only by a gradual change in size. The trunk around the spine (torso, lungs, ribs, iliac wings) is
``phantom_trunk``; the organs, hips, sternum and table ``phantom_organs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinebench.datamodules.labels import DEFAULT_NAMES, VERSE_ID_OF

# Mask labels: VerSe ids (1-7 C, 8-19 T, 20-25 L incl. L6, 26 S1, 28 T13); S2, which VerSe folds into the
# sacrum, gets 29 (unused by VerSe).
PHANTOM_MASK_ID: dict[str, int] = {**VERSE_ID_OF, "S2": 29}


def level_position(name: str) -> float:
    """C1 = 0 ... S2 = 25; the transitional T13 and L6 sit half-way between their neighbours."""
    if name == "T13":
        return 18.5
    if name == "L6":
        return 23.5
    return float(DEFAULT_NAMES.index(name))


# (level position, value) anchors, linearly interpolated.  mm unless stated.
_SIZE_ANCHORS: dict[str, list[tuple[float, float]]] = {
    "body_rl": [(1, 8), (2, 8), (6, 11), (7, 12), (12, 14), (18, 19), (19, 20), (23, 25), (24, 26), (25, 20)],
    "body_rp": [(1, 7.5), (2, 7.5), (6, 8), (7, 8.5), (12, 11.5), (18, 14), (19, 15), (23, 17), (24, 16), (25, 11)],
    "height_ratio": [(1, 0.72), (6, 0.72), (7, 0.8), (18, 0.8), (19, 0.83), (23, 0.81), (24, 0.97), (25, 0.97)],
    "canal_rl": [(0, 14), (1, 11), (6, 11), (7, 9), (12, 7.5), (18, 9), (19, 10), (23, 12), (24, 11), (25, 8)],
    "canal_rp": [(0, 10), (1, 8), (6, 7), (12, 7.5), (18, 8), (23, 9), (24, 6), (25, 4)],
    "arch_t": [(1, 4), (6, 4.5), (7, 5), (18, 6), (23, 8), (25, 6)],
    "spinous_len": [(1, 20), (2, 15), (5, 16), (6, 26), (7, 30), (12, 35), (18, 30), (19, 28), (23, 24), (24, 12), (25, 8)],
    "spinous_deg": [(1, 15), (5, 20), (6, 10), (7, 30), (10, 55), (14, 60), (17, 40), (18, 20), (19, 5), (24, 0)],
    "spinous_r": [(1, 3), (6, 3.5), (7, 3.5), (18, 4.5), (23, 5), (25, 4)],
    # half-height of the lumbar spinous process, a tall plate rather than a bar (0: a bar of radius spinous_r)
    "spinous_h": [(18, 0), (19, 8), (23, 9), (24, 0)],
    "tp_len": [(0, 16), (1, 10), (6, 14), (7, 20), (12, 18), (18, 8), (19, 15), (21, 25), (23, 20), (24, 0)],
    "tp_deg": [(0, 0), (6, 0), (7, 25), (12, 35), (18, 40), (19, 5), (23, 10)],
    "tp_r": [(0, 3.5), (6, 3), (7, 4), (23, 4.5)],
    # articular processes (radius of each side's column of superior + inferior process; C1: its lateral masses)
    "facet_r": [(0, 7), (1, 5), (6, 5), (7, 4.5), (18, 5.5), (19, 6.5), (23, 7.5), (24, 6.5), (25, 0)],
    "rib_a": [(7, 45), (9, 70), (13, 90), (16, 92), (18, 86)],  # AP semi-axis of the rib arc
    "rib_b": [(7, 55), (9, 85), (13, 112), (16, 118), (18, 116)],  # lateral semi-axis
    "rib_r": [(7, 4), (9, 5), (18, 5)],
    "torso_rl": [(0, 55), (6, 62), (7, 105), (10, 132), (18, 138), (23, 138), (25, 145)],
    "torso_back": [(0, 50), (6, 55), (8, 72), (18, 72), (23, 78), (25, 82)],
    "torso_front": [(0, 68), (6, 72), (8, 140), (12, 178), (18, 165), (23, 130), (25, 120)],
}


def size(key: str, pos: float | np.ndarray) -> np.ndarray:
    xs, ys = zip(*_SIZE_ANCHORS[key])
    return np.interp(pos, xs, ys)


@dataclass(frozen=True, eq=False)
class VertebraPose:
    name: str
    center_mm: np.ndarray  # (3,) array-order mm (s, p, l): the body centroid
    frame: np.ndarray  # (3, 3) rows: unit vectors e_s (up the spine), e_p (posterior), e_l (left), array-order
    height_mm: float  # vertebral body height along e_s
    scale: float  # per-case size factor
    pos: float  # level position (C1 = 0)


def vertebra_poses(names, centers_mm: np.ndarray, axial_rot_deg: np.ndarray, scale: float) -> list[VertebraPose]:
    """Frames along the curve: e_s follows the local tangent, e_p/e_l by Gram-Schmidt, then the axial rotation."""
    n = len(names)
    poses = []
    for k in range(n):
        up = centers_mm[max(k - 1, 0)] - centers_mm[min(k + 1, n - 1)]
        e_s = up / np.sqrt(up @ up)
        e_p = np.array([0.0, 1.0, 0.0]) - e_s[1] * e_s
        e_p = e_p / np.sqrt(e_p @ e_p)
        e_l = np.array([0.0, 0.0, 1.0]) - e_s[2] * e_s - e_p[2] * e_p
        e_l = e_l / np.sqrt(e_l @ e_l)
        a = np.deg2rad(axial_rot_deg[k])
        c, s_ = np.round(np.cos(a), 12), np.round(np.sin(a), 12)
        e_p, e_l = c * e_p + s_ * e_l, c * e_l - s_ * e_p
        gaps = []
        if k > 0:
            gaps.append(np.sqrt(np.sum((centers_mm[k - 1] - centers_mm[k]) ** 2)))
        if k < n - 1:
            gaps.append(np.sqrt(np.sum((centers_mm[k + 1] - centers_mm[k]) ** 2)))
        pos = level_position(names[k])
        height = float(size("height_ratio", pos)) * min(gaps)
        frame = np.round(np.stack([e_s, e_p, e_l]), 12)
        poses.append(VertebraPose(names[k], centers_mm[k], frame, height, scale, pos))
    return poses


class Canvas:
    """HU volume and label mask on a grid; ``origin_mm``/``spacing_mm`` in array order (s, p, l)."""

    def __init__(self, shape, origin_mm, spacing_mm, background_hu: float = -1000.0):
        self.shape = tuple(int(n) for n in shape)
        self.origin_mm = np.asarray(origin_mm, dtype=np.float64)
        self.spacing_mm = np.asarray(spacing_mm, dtype=np.float64)
        self.hu = np.full(self.shape, background_hu, dtype=np.float32)
        self.labels = np.zeros(self.shape, dtype=np.uint8)

    def axis_mm(self, axis: int) -> np.ndarray:
        return self.origin_mm[axis] + self.spacing_mm[axis] * np.arange(self.shape[axis])

    def box(self, lo_mm, hi_mm, ref_mm):
        """Slices of the voxels whose centres lie in [lo, hi] and their coordinates relative to ``ref_mm``,
        as broadcastable float32 arrays (n0,1,1), (1,n1,1), (1,1,n2); None when the box misses the grid."""
        lo = np.ceil((np.asarray(lo_mm) - self.origin_mm) / self.spacing_mm).astype(int)
        hi = np.floor((np.asarray(hi_mm) - self.origin_mm) / self.spacing_mm).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        coords = []
        for ax in range(3):
            c = (self.origin_mm[ax] - ref_mm[ax] + self.spacing_mm[ax] * np.arange(lo[ax], hi[ax])).astype(np.float32)
            shape = [1, 1, 1]
            shape[ax] = -1
            coords.append(c.reshape(shape))
        return sl, coords

    def paint(self, sl, mask: np.ndarray, hu: float, label: int | None = None) -> None:
        self.hu[sl][mask] = hu
        if label is not None:
            self.labels[sl][mask] = label


def _local(coords, frame: np.ndarray):
    """Local (u_s, u_p, u_l) coordinates (float32 arrays) of box coordinates relative to the frame origin."""
    s, p, l = coords
    f = frame.astype(np.float32)
    return [f[k, 0] * s + f[k, 1] * p + f[k, 2] * l for k in range(3)]


def _capsule_d2(u, a, b) -> np.ndarray:
    """Squared distance of points ``u`` (list of 3 arrays) to the segment a-b (3-vectors in the same frame)."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    dd = float(d @ d)
    w = [u[k] - np.float32(a[k]) for k in range(3)]
    t = (w[0] * np.float32(d[0]) + w[1] * np.float32(d[1]) + w[2] * np.float32(d[2])) / np.float32(max(dd, 1e-9))
    t = np.clip(t, 0.0, 1.0)
    return sum((w[k] - t * np.float32(d[k])) ** 2 for k in range(3))


def _ellipse_q(up, ul, cp, cl, rp, rl) -> np.ndarray:
    return ((up - np.float32(cp)) / np.float32(rp)) ** 2 + ((ul - np.float32(cl)) / np.float32(rl)) ** 2


def _body_q(up, ul, rp, rl) -> np.ndarray:
    """A vertebral body's cross-section: elliptic in front, its posterior wall flattened (a sixth power) as the
    canal's front is, so that a coronal plane near the wall still cuts the body's width."""
    a = up / np.float32(rp)
    return np.where(a > 0, a**6, a * a) + (ul / np.float32(rl)) ** 2


def _part(canvas: Canvas, center: np.ndarray, frame: np.ndarray, lo_local, hi_local):
    """Box slices and local coordinates (u_s, u_p, u_l) covering the oriented local box [lo_local, hi_local]."""
    lo_local, hi_local = np.asarray(lo_local, float), np.asarray(hi_local, float)
    corners = np.array([[(lo_local, hi_local)[(i >> a) & 1][a] for a in range(3)] for i in range(8)])
    world = center + corners @ frame
    box = canvas.box(world.min(axis=0), world.max(axis=0), center)
    if box is None:
        return None, (None, None, None)
    sl, coords = box
    return sl, _local(coords, frame)


# Version 5 (``vertebra_detail``): the share of a body's half-height under each endplate that holds denser,
# subchondral bone, and the canal's antero-posterior depth against version 4's (real lumbar laminae lie about 4 mm
# nearer the body on the midline: ``perf/bench_realism.py``'s 4 mm lines); the spinous tip stays where it was.
SUBCHONDRAL_FRACTION = 0.2
CANAL_DEPTH_FACTOR = 0.75


def draw_vertebra(canvas: Canvas, v: VertebraPose, tissue: dict, shell_mm: float, c1_c2: dict | None = None) -> None:
    """Body (cortical shell + cancellous core), arch around the canal, articular processes (a column each side,
    from above the body's upper endplate to below its lower one, meeting the neighbours' at the facet joints),
    spinous and transverse processes.

    C1 has no body: a ring with an anterior tubercle at its centroid. C2 carries the dens (``c1_c2`` gives the
    dens tip in array-order mm). Each part is evaluated in its own oriented bounding box."""
    k, pos = v.scale, v.pos
    rl, rp = k * size("body_rl", pos), k * size("body_rp", pos)
    crl, crp = k * size("canal_rl", pos), k * size("canal_rp", pos)
    t_arch = k * size("arch_t", pos)
    hh = v.height_mm / 2
    canal_cp = rp + 1.0 + crp if v.name != "C1" else 2.0 + crp
    sp_len, sp_deg, sp_r = k * size("spinous_len", pos), size("spinous_deg", pos), k * size("spinous_r", pos)
    tp_len, tp_deg, tp_r = k * size("tp_len", pos), size("tp_deg", pos), k * size("tp_r", pos)
    canal_detail = "canal" in tissue and v.name != "C1"  # version 5 (``vertebra_detail``)
    if canal_detail:  # a shallower canal, the spinous tip where it was
        sp_len += 2.0 * (1.0 - CANAL_DEPTH_FACTOR) * crp
        crp *= CANAL_DEPTH_FACTOR
        canal_cp = rp + 1.0 + crp
    label = PHANTOM_MASK_ID[v.name]
    cortical, cancellous, posterior = tissue["cortical"], tissue["cancellous"], tissue["posterior"]
    c, f = v.center_mm, v.frame

    def capsule(a, b, r, hu):
        lo = np.minimum(a, b) - r - 0.5
        hi = np.maximum(a, b) + r + 0.5
        sl, u = _part(canvas, c, f, lo, hi)
        if sl is not None:
            canvas.paint(sl, _capsule_d2(u, a, b) <= np.float32(r * r), hu, label)

    # Posterior elements first; the body is painted over them.
    arch_h, arch_c = 0.8 * hh, 0.1 * hh
    if canal_detail:  # the canal's fluid and fat, over a whole level's height
        sl, (us, up, ul) = _part(canvas, c, f, (-hh - 6.0, canal_cp - crp, -crl), (hh + 6.0, canal_cp + crp, crl))
        if sl is not None:
            fill = (np.abs(us) <= np.float32(hh + 6.0)) & (_ellipse_q(up, ul, canal_cp, 0.0, crp, crl) <= 1)
            canvas.paint(sl, fill & (canvas.labels[sl] == 0), tissue["canal"])
    # behind the canal's front third a ring; the body joins it through the pedicles (below), not a bar of bone
    p_min = canal_cp - crp - t_arch if v.name == "C1" else canal_cp - 0.3 * crp
    sl, (us, up, ul) = _part(canvas, c, f, (arch_c - arch_h, p_min, -crl - t_arch),
                             (arch_c + arch_h, canal_cp + crp + t_arch, crl + t_arch))
    if sl is not None:
        arch = (np.abs(us - np.float32(arch_c)) <= np.float32(arch_h)) & (up >= np.float32(p_min))
        arch &= _ellipse_q(up, ul, canal_cp, 0.0, crp + t_arch, crl + t_arch) <= 1
        arch &= _ellipse_q(up, ul, canal_cp, 0.0, crp, crl) > 1
        canvas.paint(sl, arch, posterior, label)
    if v.name != "C1":
        for side in (-1.0, 1.0):
            lateral = side * (crl + 0.5 * t_arch)
            capsule(np.array([arch_c + 0.2 * hh, 0.5 * rp, lateral]), np.array([arch_c + 0.2 * hh, canal_cp, lateral]),
                    0.6 * t_arch, posterior)
    facet_r = k * size("facet_r", pos)
    if facet_r > 0:
        for side in (-1.0, 1.0):
            at = np.array([0.0, canal_cp + 0.2 * crp, side * (crl + 0.3 * t_arch)])
            capsule(at + np.array([0.95 * hh, 0.0, 0.0]), at - np.array([1.25 * hh, -0.15 * crp, 0.0]), facet_r,
                    posterior)
    base_p = canal_cp + crp + t_arch * 0.5
    if sp_len > 0:
        a = np.deg2rad(sp_deg)
        tip = np.array([-sp_len * np.round(np.sin(a), 9), base_p + sp_len * np.round(np.cos(a), 9), 0.0])
        capsule(np.array([0.0, base_p, 0.0]), tip, sp_r, posterior)
        plate_h = k * size("spinous_h", pos)
        if plate_h > sp_r:
            _plate(canvas, c, f, np.array([0.0, base_p, 0.0]), tip, plate_h, 0.8 * sp_r, posterior, label)
    if tp_len > 0:
        a = np.deg2rad(tp_deg)
        for side in (-1.0, 1.0):
            root = np.array([0.0, canal_cp * 0.85, side * (crl + t_arch * 0.5)])
            tip = np.array([0.1 * tp_len, root[1] + tp_len * np.round(np.sin(a), 9),
                            side * (crl + t_arch * 0.5 + tp_len * np.round(np.cos(a), 9))])
            capsule(root, tip, tp_r, posterior)
    if v.name == "C1":
        # Anterior tubercle at the centroid; the ring drawn above as the "arch" is the rest of the atlas.
        r = max(4.0, shell_mm + 2.0)
        capsule(np.zeros(3), np.zeros(3), r, cortical)
        return
    if v.name in ("S1", "S2"):  # sacral alae: a wide plate lateral to the body, towards the iliac bones
        ala_rl = k * (52.0 if v.name == "S1" else 40.0)
        ah = 0.8 * hh
        sl, (us, up, ul) = _part(canvas, c, f, (-ah, -0.3 * rp, -ala_rl), (ah, 1.2 * rp, ala_rl))
        if sl is not None:
            canvas.paint(sl, (np.abs(us) <= np.float32(ah)) & (_ellipse_q(up, ul, 0.45 * rp, 0.0, 0.75 * rp, ala_rl) <= 1),
                         cortical, label)
            core = (np.abs(us) <= np.float32(ah - shell_mm))
            core &= _ellipse_q(up, ul, 0.45 * rp, 0.0, 0.75 * rp - shell_mm, ala_rl - shell_mm) <= 1
            canvas.paint(sl, core, cancellous, label)
    sl, (us, up, ul) = _part(canvas, c, f, (-hh, -rp, -rl), (hh, rp, rl))
    if sl is not None:
        q = _body_q(up, ul, rp, rl)
        abs_s = np.abs(us)
        canvas.paint(sl, (abs_s <= np.float32(hh)) & (q <= 1), cortical, label)
        core = (abs_s <= np.float32(hh - shell_mm)) & (_body_q(up, ul, rp - shell_mm, rl - shell_mm) <= 1)
        canvas.paint(sl, core, cancellous, label)
        if "subchondral" in tissue:  # version 5: denser bone under each endplate, the basivertebral foramen
            deep = np.float32(hh - shell_mm - SUBCHONDRAL_FRACTION * hh)
            canvas.paint(sl, core & (abs_s > deep), tissue["subchondral"], label)
            foramen = (us / np.float32(0.3 * hh)) ** 2 + ((up - np.float32(rp)) / np.float32(0.35 * rp)) ** 2
            canvas.paint(sl, foramen + (ul / np.float32(0.25 * rl)) ** 2 <= 1, tissue["vein"], label)
    if v.name == "C2" and c1_c2 is not None:
        tip_local = f @ (c1_c2["dens_tip_mm"] - c)
        root = np.array([hh * 0.5, 1.0, 0.0])
        r = max(4.5 * k, shell_mm + 1.5)
        capsule(root, tip_local, r, cortical)
        capsule(root, tip_local, r - shell_mm, cancellous)


def _plate(canvas: Canvas, c, f, base, tip, half_h: float, half_t: float, hu: float, label: int) -> None:
    """A plate in the sagittal plane: along the segment ``base``-``tip`` (local s, p), ``half_h`` either side of it
    within that plane and ``half_t`` either side of it left-right."""
    length = np.sqrt(np.sum((tip - base) ** 2))
    d = (tip - base) / length
    n = np.array([d[1], -d[0], 0.0])  # the plate's height direction, in the sagittal plane
    corners = np.stack([base + n * half_h, base - n * half_h, tip + n * half_h, tip - n * half_h])
    lo, hi = corners.min(0) - [0.5, 0.5, half_t + 0.5], corners.max(0) + [0.5, 0.5, half_t + 0.5]
    sl, (us, up, ul) = _part(canvas, c, f, lo, hi)
    if sl is None:
        return
    along = (us - np.float32(base[0])) * np.float32(d[0]) + (up - np.float32(base[1])) * np.float32(d[1])
    across = (us - np.float32(base[0])) * np.float32(n[0]) + (up - np.float32(base[1])) * np.float32(n[1])
    inside = (along >= 0) & (along <= np.float32(length)) & (np.abs(across) <= np.float32(half_h))
    canvas.paint(sl, inside & (np.abs(ul) <= np.float32(half_t)), hu, label)


def draw_disc(canvas: Canvas, upper: VertebraPose, lower: VertebraPose, hu: float) -> None:
    """Intervertebral disc filling the gap between two bodies, in the mean frame of the two."""
    a = upper.center_mm - upper.height_mm / 2 * upper.frame[0]
    b = lower.center_mm + lower.height_mm / 2 * lower.frame[0]
    center = (a + b) / 2
    gap = np.sqrt(np.sum((a - b) ** 2))
    frame = (upper.frame + lower.frame) / 2
    frame = frame / np.sqrt(np.sum(frame**2, axis=1, keepdims=True))
    rl = 0.5 * (upper.scale * size("body_rl", upper.pos) + lower.scale * size("body_rl", lower.pos))
    rp = 0.5 * (upper.scale * size("body_rp", upper.pos) + lower.scale * size("body_rp", lower.pos))
    half = max(rl, rp, gap) + 3
    box = canvas.box(center - half, center + half, center)
    if box is None:
        return
    sl, coords = box
    us, up, ul = _local(coords, frame)
    disc = (np.abs(us) <= np.float32(gap / 2 + 0.6)) & (_body_q(up, ul, rp * 0.97, rl * 0.97) <= 1)
    canvas.paint(sl, disc & (canvas.labels[sl] == 0), hu)
