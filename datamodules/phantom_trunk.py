"""Drawing the trunk around the phantom's spine: the torso's fat and soft tissue, the lungs, the ribs, the iliac wings.

Same frame and rules as ``phantom_anatomy`` (array-order mm ``(s, p, l)``; implicit shapes evaluated in their own
bounding boxes with element-wise float32 arithmetic, reproducible byte for byte); sizes from
``phantom_anatomy.size``, scaled like the vertebra they start from.
"""

from __future__ import annotations

import numpy as np

from spinebench.datamodules.phantom_anatomy import Canvas, VertebraPose, _capsule_d2, _local, size


def rib_polyline(v: VertebraPose, side: float, end_deg: float, start_deg: float | None = None) -> np.ndarray:
    """(n, 3) array-order mm points of one rib: head at the body, then an arc round the thorax (from 20 degrees
    behind the side to ``end_deg``; 180 is the front midline), descending. With ``start_deg`` only the arc from
    there on, no head: the costal cartilage that continues a rib, the sternum at 180."""
    a, b = v.scale * size("rib_a", v.pos), v.scale * size("rib_b", v.pos)
    rl = v.scale * size("body_rl", v.pos)
    pc = 15.0 - 0.94 * a
    if start_deg is None:
        phis = np.deg2rad(np.linspace(20.0, end_deg, max(3, int(end_deg / 20))))
    else:
        phis = np.deg2rad(np.linspace(start_deg, end_deg, max(2, int((end_deg - start_deg) / 10) + 1)))
    cos_p, sin_p = np.round(np.cos(phis), 9), np.round(np.sin(phis), 9)
    drop = 0.22 * a * (phis - np.deg2rad(20.0))  # ribs descend towards the front
    local = [np.array([0.0, 3.0, side * (rl + 3.0)])] if start_deg is None else []
    local += [np.array([-d, pc + a * c, side * b * s]) for d, c, s in zip(drop, cos_p, sin_p)]
    local = np.stack(local)
    return v.center_mm + local @ v.frame


def draw_rib(canvas: Canvas, points_mm: np.ndarray, radius: float, tissue: dict, shell_mm: float) -> None:
    for a, b in zip(points_mm[:-1], points_mm[1:]):
        lo, hi = np.minimum(a, b) - radius - 1, np.maximum(a, b) + radius + 1
        box = canvas.box(lo, hi, a)
        if box is None:
            continue
        sl, coords = box
        d2 = _capsule_d2(coords, (0.0, 0.0, 0.0), b - a)
        free = canvas.labels[sl] == 0
        canvas.paint(sl, (d2 <= radius**2) & free, tissue["cortical"])
        canvas.paint(sl, (d2 <= max(radius - shell_mm, 0.5) ** 2) & free, tissue["cancellous"])


def draw_ilium(canvas: Canvas, s1: VertebraPose, side: float, tissue: dict, shell_mm: float) -> None:
    """One iliac wing: an elliptic plate from the sacro-iliac joint up to the crest near L4/L5."""
    k = s1.scale
    center = s1.center_mm + np.array([14.0 * k, -8.0 * k, side * 86.0 * k])
    u_h = np.array([0.0, -0.6, side * 0.8])  # horizontal in-plane axis, antero-lateral
    u_v = np.array([1.0, 0.0, 0.0])
    normal = np.array([0.0, 0.8, side * 0.6])
    r_h, r_v, half_t = 60.0 * k, 52.0 * k, 5.5 * k
    half = max(r_h, r_v) + 4
    box = canvas.box(center - half, center + half, center)
    if box is None:
        return
    sl, coords = box
    frame = np.stack([u_v, u_h, normal])
    uv, uh, un = _local(coords, frame)
    # The wing narrows downwards towards the acetabulum: the horizontal radius shrinks below the centre.
    narrow = np.float32(1.0) + np.minimum(uv, np.float32(0.0)) * np.float32(0.55 / r_v)
    q = (uh / (np.float32(r_h) * narrow)) ** 2 + (uv / np.float32(r_v)) ** 2
    plate = (q <= 1) & (np.abs(un) <= np.float32(half_t))
    free = canvas.labels[sl] == 0
    canvas.paint(sl, plate & free, tissue["cortical"])
    inner = (q <= 0.86) & (np.abs(un) <= np.float32(half_t - shell_mm))
    canvas.paint(sl, inner & free, tissue["cancellous"])


def draw_torso(canvas: Canvas, prof: dict, tissue: dict) -> None:
    """Air outside, subcutaneous fat, soft tissue; per-slice ellipses from ``prof`` (arrays over axis 0):
    ``cp, cl, rp, rl`` (torso) and ``fat`` thickness, all mm. Each (slice, row) of an ellipse is one interval
    along axis 2, so only comparisons run over the whole volume."""
    p = canvas.axis_mm(1)[None, :]
    l = canvas.axis_mm(2).astype(np.float32)[None, None, :]
    hu = canvas.hu
    hu[...] = np.float32(tissue["air"])
    for shrink, value in ((0.0, tissue["fat"]), (1.0, tissue["soft"])):
        rp = (prof["rp"] - shrink * prof["fat"])[:, None]
        rl = (prof["rl"] - shrink * prof["fat"])[:, None]
        w = 1.0 - ((p - prof["cp"][:, None]) / rp) ** 2  # (n0, n1)
        half = np.where(w > 0, rl * np.sqrt(np.maximum(w, 0.0)), -1.0)
        lo = (prof["cl"][:, None] - half).astype(np.float32)[:, :, None]
        hi = (prof["cl"][:, None] + half).astype(np.float32)[:, :, None]
        hu[(l >= lo) & (l <= hi)] = np.float32(value)


def draw_lungs(canvas: Canvas, prof: dict, s_top: float, s_bottom: float, tissue: dict) -> None:
    """Two lungs inside the rib cage between ``s_top`` (apex) and ``s_bottom`` (diaphragm); heart carved out."""
    s_axis = canvas.axis_mm(0)
    rows = np.nonzero((s_axis <= s_top) & (s_axis >= s_bottom))[0]
    if len(rows) == 0:
        return
    sl = slice(rows[0], rows[-1] + 1)
    p = canvas.axis_mm(1).astype(np.float32)[None, :, None]
    l = canvas.axis_mm(2).astype(np.float32)[None, None, :]
    col = lambda x: np.asarray(x[sl], np.float32)[:, None, None]  # noqa: E731
    taper = np.sqrt(np.clip((s_top - s_axis[sl]) / 45.0, 0.2, 1.0))
    cp, a, b, cl = col(prof["rib_pc"]), col(prof["rib_a"]), col(prof["rib_b"]), col(prof["spine_l"])
    tp = np.asarray(taper, np.float32)[:, None, None]
    lung = np.zeros((len(rows), canvas.shape[1], canvas.shape[2]), dtype=bool)
    for side in (-1.0, 1.0):
        q = ((p - cp) / (0.82 * a * tp)) ** 2 + ((l - cl - np.float32(side) * 0.52 * b) / (0.36 * b * tp)) ** 2
        lung |= q <= 1
    heart_rows = (s_axis[sl] < s_top - 0.45 * (s_top - s_bottom))[:, None, None]
    q_heart = ((p - cp + 0.3 * a) / (0.5 * a)) ** 2 + ((l - cl - 18.0) / (0.42 * b)) ** 2
    lung &= ~(heart_rows & (q_heart <= 1))
    canvas.hu[sl][lung & (canvas.labels[sl] == 0)] = np.float32(tissue["lung"])
