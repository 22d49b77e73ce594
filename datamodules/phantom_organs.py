"""The anatomy around the phantom's spine (generator version 3): kidneys in their fat, aorta (with or without
contrast, calcified plaques) and inferior vena cava, liver, spleen, bowel loops with gas and fluid, bladder;
acetabula, femoral heads and necks, pubic and ischial rami; costal cartilage and sternum; the patient table; and
the trabecular texture of cancellous bone.

Same frame and rules as ``phantom_anatomy`` (array-order mm ``(s, p, l)``; implicit shapes evaluated in their own
bounding boxes with element-wise float32 arithmetic, so the output is reproducible byte for byte). Organs are
placed relative to the drawn spine and the torso's per-slice profile and painted into soft tissue only (never
into lung, fat or an organ drawn before them); the vertebrae, ribs and pelvic bones drawn afterwards paint over
them. Every random draw comes from the generator handed in, in a fixed order.

Values (HU; adult averages from radiology texts, not fitted to the CTs beside the project): liver 50-70, spleen
40-55, kidney 25-40, blood 35-50, bladder 0-15, bowel fluid 10-40, gas -1000..-900, calcified plaque 300-800.
Half of the cases are contrast-enhanced (portal-venous to arterial: aorta 150-350, inferior vena cava 100-160,
kidneys 120-200, liver +30-60, spleen +50-80), as many spine CTs are staging scans.
"""

from __future__ import annotations

import numpy as np

from spinebench.datamodules.phantom_anatomy import Canvas, VertebraPose, size
from spinebench.datamodules.phantom_artifacts import blur, blurred_noise_std
from spinebench.datamodules.phantom_trunk import draw_rib, rib_polyline


def _level(spine_pos: np.ndarray, spl: np.ndarray, pos: float) -> np.ndarray:
    """Array-order mm point of the spine curve at level position ``pos`` (C1 = 0 ... S2 = 25), extrapolated."""
    p = np.asarray(spine_pos, float)
    if pos > p[-1]:
        return spl[-1] + (pos - p[-1]) * (spl[-1] - spl[-2]) / max(p[-1] - p[-2], 1e-6)
    return np.array([np.interp(pos, p, spl[:, a]) for a in range(3)])


def _at(canvas: Canvas, prof: dict, key: str, s_mm: float) -> float:
    """The torso profile ``key`` at height ``s_mm`` (the nearest drawn slice's value beyond the canvas)."""
    return float(np.interp(s_mm, canvas.axis_mm(0), prof[key]))


def _ellipsoid(canvas: Canvas, center, radii):
    """``(slices, q, coords)``: q <= 1 inside the axis-aligned ellipsoid, coordinates relative to its centre;
    ``(None, None, None)`` when it misses the canvas."""
    center, radii = np.asarray(center, float), np.asarray(radii, float)
    box = canvas.box(center - radii, center + radii, center)
    if box is None:
        return None, None, None
    sl, coords = box
    return sl, sum((c / np.float32(r)) ** 2 for c, r in zip(coords, radii)), coords


def _fill(canvas: Canvas, center, radii, hu: float, into: tuple[float, ...]) -> None:
    """Paint the ellipsoid with ``hu`` where the canvas holds one of the values ``into`` and no bone label."""
    sl, q, _ = _ellipsoid(canvas, center, radii)
    if sl is None:
        return
    region = canvas.hu[sl]
    ok = np.zeros(region.shape, dtype=bool)
    for value in into:
        ok |= region == np.float32(value)
    canvas.paint(sl, (q <= 1) & ok & (canvas.labels[sl] == 0), hu)


def _tube(canvas: Canvas, rows: np.ndarray, cp: np.ndarray, cl: np.ndarray, r: np.ndarray, hu: float,
          soft: float) -> None:  # fmt: skip
    """A vessel: on each slice ``rows`` a disc of radius ``r`` around ``(cp, cl)`` (arrays over the rows)."""
    if rows.size == 0:
        return
    sl0 = slice(int(rows[0]), int(rows[-1]) + 1)
    pad = float(np.max(r)) + 1.0
    box = canvas.box((canvas.axis_mm(0)[rows[0]], np.min(cp) - pad, np.min(cl) - pad),
                     (canvas.axis_mm(0)[rows[-1]], np.max(cp) + pad, np.max(cl) + pad), (0.0, 0.0, 0.0))
    if box is None:
        return
    sl, (_, p, lat) = box
    sl = (sl0, sl[1], sl[2])
    col = lambda x: np.asarray(x, np.float32)[:, None, None]  # noqa: E731
    inside = (p - col(cp)) ** 2 + (lat - col(cl)) ** 2 <= col(r) ** 2
    canvas.paint(sl, inside & (canvas.hu[sl] == np.float32(soft)) & (canvas.labels[sl] == 0), hu)


def organ_tissue(rng: np.random.Generator) -> dict:
    """The case's organ values (HU) and contrast phase: 10 draws."""
    t = rng.random(10)
    contrast = bool(t[0] < 0.5)
    c = t[1]  # how strong the enhancement is, shared by the organs
    return {
        "contrast": contrast,
        "liver": 50.0 + 20.0 * t[2] + (30.0 + 30.0 * c if contrast else 0.0),
        "spleen": 40.0 + 15.0 * t[3] + (50.0 + 30.0 * c if contrast else 0.0),
        "kidney": 25.0 + 15.0 * t[4] + (95.0 + 65.0 * c if contrast else 0.0),
        "aorta": 150.0 + 200.0 * c if contrast else 35.0 + 15.0 * t[5],
        "ivc": 100.0 + 60.0 * c if contrast else 35.0 + 15.0 * t[5],
        "bladder": 15.0 * t[6],
        "bowel_fluid": 10.0 + 30.0 * t[7],
        "plaque": 300.0 + 500.0 * t[8],
        "cartilage": 70.0 + 90.0 * t[9],
    }


def draw_organs(rng: np.random.Generator, canvas: Canvas, prof: dict, spl: np.ndarray, pos: np.ndarray,
                size_k: float, tissue: dict, meta: dict) -> dict:  # fmt: skip
    """Kidneys in their fat, aorta and vena cava with plaques, liver, spleen, bowel and bladder (in this order:
    an organ does not paint over one drawn before it), each placed by the spine level it lies at. Returns the
    case's organ values (``organ_tissue``)."""
    organs = organ_tissue(rng)
    soft, fat = tissue["soft"], tissue["fat"]
    k = float(size_k)
    s_axis = canvas.axis_mm(0)

    def torso(s_mm: float) -> tuple[float, float, float, float]:
        return tuple(_at(canvas, prof, key, s_mm) for key in ("cp", "rp", "cl", "rl"))

    # Kidneys: beside L1-L2, the right one lower, each in an ellipsoid of perirenal fat.
    for side, drop in ((-1.0, 12.0), (1.0, 0.0)):
        c = _level(pos, spl, 20.5)
        c = c + np.array([-drop, 12.0 * k, side * (size("body_rl", 20.5) * k + 42.0 * k)])
        radii = np.array([52.0, 24.0, 27.0]) * k
        _fill(canvas, c, radii * 1.35, fat, (soft,))
        _fill(canvas, c, radii, organs["kidney"], (fat,))
    # Aorta from T5 to its bifurcation at L4, left of the midline in front of the bodies; the vena cava on the
    # right from T11 down. Plaques (0-9) sit on the aortic wall below T12.
    rows = np.nonzero((s_axis <= _level(pos, spl, 11.0)[0]) & (s_axis >= _level(pos, spl, 22.5)[0]))[0]
    lv = np.interp(s_axis[rows], spl[::-1, 0], pos[::-1]) if rows.size else np.zeros(0)
    body_rp = size("body_rp", lv) * k
    r_aorta = (13.0 - 3.0 * np.clip((lv - 11.0) / 11.5, 0.0, 1.0)) * k
    ap, al = prof["spine_p"][rows] - body_rp - 4.0 - r_aorta, prof["spine_l"][rows] + 14.0 * k
    _tube(canvas, rows, ap, al, r_aorta, organs["aorta"], soft)
    ivc = rows[lv >= 17.0]
    r_ivc = np.full(ivc.size, 11.0 * k)
    _tube(canvas, ivc, prof["spine_p"][ivc] - size("body_rp", lv[lv >= 17.0]) * k - 2.0 - r_ivc,
          prof["spine_l"][ivc] - 20.0 * k, r_ivc, organs["ivc"], soft)
    n_plaques = int(rng.integers(0, 10))
    draws = rng.random((n_plaques, 3))
    for u_lv, u_ang, u_r in draws:
        level = 18.0 + 4.5 * u_lv
        c = _level(pos, spl, level)
        r = (13.0 - 3.0 * (level - 11.0) / 11.5) * k
        centre_p = c[1] - size("body_rp", level) * k - 4.0 - r
        ang = np.pi * (u_ang - 0.5) * 1.6  # round the front and sides of the wall, not its back
        pt = np.array([c[0], centre_p - r * np.cos(ang), c[2] + 14.0 * k + r * np.sin(ang)])
        rad = 1.5 + 1.5 * u_r
        _fill(canvas, pt, (rad, rad, rad), organs["plaque"], (soft, organs["aorta"]))
    # Liver under the right diaphragm (T10-L2), spleen behind the stomach on the left (T10-T12).
    c = _level(pos, spl, 18.0)
    cp, rp, cl, rl = torso(c[0])
    _fill(canvas, (c[0] + 15.0 * k, cp - 0.2 * rp, cl - 0.45 * rl), (75.0 * k, 0.62 * rp, 0.42 * rl),
          organs["liver"], (soft,))
    c = _level(pos, spl, 16.5)
    cp, rp, cl, rl = torso(c[0])
    _fill(canvas, (c[0], c[1] - 15.0 * k, cl + 0.62 * rl), (48.0 * k, 32.0 * k, 22.0 * k), organs["spleen"], (soft,))
    # Bowel: 10-24 loops in front of the lumbar spine and in the pelvis, 45 % of them holding gas.
    top, bottom = _level(pos, spl, 19.0), _level(pos, spl, 28.0)
    n_loops = int(rng.integers(10, 25))
    draws = rng.random((n_loops, 7))
    for u in draws:
        s = bottom[0] + u[0] * (top[0] - bottom[0])
        cp, rp, cl, rl = torso(s)
        spine_front = _at(canvas, prof, "spine_p", s) - 30.0 * k
        front = cp - 0.85 * rp
        centre = (s, front + u[1] * max(spine_front - front, 0.0), cl + (2.0 * u[2] - 1.0) * 0.7 * rl)
        radii = 8.0 + 14.0 * u[3:6]
        hu = -1000.0 + 100.0 * u[6] if u[6] < 0.45 else organs["bowel_fluid"]
        _fill(canvas, centre, radii, hu, (soft,))
    # Bladder behind the pubis, filled to a random volume.
    c = _level(pos, spl, 28.5)
    cp, rp, cl, _ = torso(c[0])
    fill = 0.5 + 0.7 * float(rng.random())
    _fill(canvas, (c[0], cp - 0.45 * rp, cl), np.array([32.0, 30.0, 40.0]) * k * fill, organs["bladder"], (soft,))
    meta["organs"] = {"contrast": organs["contrast"], "plaques": n_plaques, "bowel_loops": n_loops,
                      "bowel_gas_loops": int(np.sum(draws[:, 6] < 0.45)),
                      "tissue_hu": {key: round(float(v), 3) for key, v in organs.items() if key != "contrast"}}
    return organs


def _bone_sphere(canvas: Canvas, center, radius: float, tissue: dict, shell_mm: float) -> None:
    sl, q, _ = _ellipsoid(canvas, center, (radius, radius, radius))
    if sl is None:
        return
    free = canvas.labels[sl] == 0
    canvas.paint(sl, (q <= 1) & free, tissue["cortical"])
    canvas.paint(sl, (q <= ((radius - shell_mm) / radius) ** 2) & free, tissue["cancellous"])


def _bone_bar(canvas: Canvas, a, b, radius: float, tissue: dict, shell_mm: float) -> None:
    """A straight bone from ``a`` to ``b``: a one-segment rib (cortical shell, cancellous core)."""
    draw_rib(canvas, np.stack([np.asarray(a, float), np.asarray(b, float)]), radius, tissue, shell_mm)


def draw_hips(canvas: Canvas, s1: VertebraPose, tissue: dict, shell_mm: float) -> None:
    """Both hip joints below and in front of S1: the acetabulum (a cup of cortical bone open laterally and
    downwards), the femoral head in it, the neck towards the greater trochanter, and the pubic and ischial rami
    that close the pelvic ring (the iliac wings are ``phantom_trunk.draw_ilium``)."""
    k = s1.scale
    base = s1.center_mm
    for side in (-1.0, 1.0):
        hip = base + np.array([-78.0 * k, -42.0 * k, side * 92.0 * k])
        r_head = 23.0 * k
        # Acetabular cup: a shell just outside the head, on its medial and upper side.
        r_out = r_head + 6.0 * k
        sl, q, coords = _ellipsoid(canvas, hip, (r_out, r_out, r_out))
        if sl is not None:
            u_s, _, u_l = coords
            facing = u_s * np.float32(0.6) - u_l * np.float32(side * 0.8)  # towards the pelvis' inside and up
            cup = (q <= 1) & (q >= np.float32(((r_head + 1.5 * k) / r_out) ** 2)) & (facing > np.float32(-4.0))
            canvas.paint(sl, cup & (canvas.labels[sl] == 0), tissue["cortical"])
        _bone_sphere(canvas, hip, r_head, tissue, shell_mm)
        trochanter = hip + np.array([-38.0 * k, 4.0 * k, side * 48.0 * k])
        _bone_bar(canvas, hip, trochanter, 14.0 * k, tissue, shell_mm)
        _bone_bar(canvas, trochanter, trochanter + np.array([-60.0 * k, 0.0, side * 4.0 * k]), 15.0 * k, tissue,
                  shell_mm)
        symphysis = base + np.array([-100.0 * k, -120.0 * k, side * 8.0 * k])
        _bone_bar(canvas, hip + np.array([-5.0 * k, -22.0 * k, -side * 12.0 * k]), symphysis, 8.0 * k, tissue,
                  shell_mm)
        tuber = hip + np.array([-48.0 * k, 20.0 * k, -side * 22.0 * k])
        _bone_bar(canvas, hip + np.array([-14.0 * k, 14.0 * k, -side * 14.0 * k]), tuber, 10.0 * k, tissue, shell_mm)
        _bone_bar(canvas, tuber, symphysis + np.array([-12.0 * k, 0.0, 0.0]), 7.0 * k, tissue, shell_mm)


def draw_costal_cartilage(canvas: Canvas, v: VertebraPose, side: float, rib_end_deg: float, radius: float,
                          hu: float) -> None:  # fmt: skip
    """The cartilage that continues a true or false rib (T1-T10) from its bony end to the front (176 degrees): one
    value throughout, drawn as a rib whose shell and core share it."""
    points = rib_polyline(v, side, 176.0, start_deg=rib_end_deg)
    draw_rib(canvas, points, radius, {"cortical": hu, "cancellous": hu}, shell_mm=radius)


def draw_sternum(canvas: Canvas, thoracic: list[VertebraPose], tissue: dict, shell_mm: float) -> None:
    """Manubrium and body of the sternum in the front midline, where the arcs of the first seven ribs meet (a flat
    bar of three capsules side by side, about 36 x 12 mm), and the xiphoid below."""
    true_ribs = [v for v in thoracic if v.name in {f"T{i}" for i in range(1, 8)}]
    if len(true_ribs) < 2:
        return
    front = np.stack([rib_polyline(v, 1.0, 180.0, start_deg=180.0)[0] for v in true_ribs])
    xiphoid = front[-1] + 0.8 * (front[-1] - front[-2])
    points = np.concatenate([front, xiphoid[None]])
    for v_lat in (-12.0, 0.0, 12.0):
        offset = v_lat * true_ribs[-1].scale * true_ribs[-1].frame[2]
        for a, b in zip(points[:-1], points[1:]):
            _bone_bar(canvas, a + offset, b + offset, 6.0 * true_ribs[-1].scale, tissue, shell_mm)


TABLE_EXTENT_MM = 50.0  # how far behind the body a whole-body canvas reaches for the table (gap + table)


def draw_table(rng: np.random.Generator, canvas: Canvas, prof: dict, tissue: dict, meta: dict) -> None:
    """The patient table under the back (3 draws): a 3 mm carbon-fibre shell above and below a 25 mm foam core,
    4-16 mm behind the body's most posterior point, across the whole width; only in air, and only where the
    canvas reaches (a scan cut to a depth around the spine does not)."""
    t = rng.random(3)
    gap, shell_hu, core_hu = 4.0 + 12.0 * t[0], 200.0 + 300.0 * t[1], -850.0 + 150.0 * t[2]
    top = float(np.max(prof["cp"] + prof["rp"])) + gap
    p = canvas.axis_mm(1)
    drawn = bool(p[-1] >= top)
    layers = ((top, top + 3.0, shell_hu), (top + 3.0, top + 28.0, core_hu), (top + 28.0, top + 31.0, shell_hu))
    for lo, hi, hu in layers:
        cols = np.nonzero((p >= lo) & (p < hi))[0]
        if cols.size:
            sub = canvas.hu[:, cols[0] : cols[-1] + 1, :]
            sub[sub == np.float32(tissue["air"])] = np.float32(hu)
    meta["table"] = {"drawn": drawn, "gap_mm": round(float(gap), 3), "shell_hu": round(float(shell_hu), 3),
                     "core_hu": round(float(core_hu), 3)}


def add_bone_texture(rng: np.random.Generator, canvas: Canvas, tissue: dict, meta: dict) -> None:
    """Trabecular texture: cancellous bone's value varies voxel to voxel by a smoothed random field (sigma 0.7 mm)
    of 15-50 HU standard deviation, drawn per case, in the box that holds every cancellous (and version 5's
    subchondral) voxel."""
    std = 15.0 + 35.0 * float(rng.random())
    region = canvas.hu == np.float32(tissue["cancellous"])
    if "subchondral" in tissue:
        region |= canvas.hu == np.float32(tissue["subchondral"])
    extent = [np.nonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    meta["texture"] = {"trabecular_std_hu": round(std, 3)}
    if any(e.size == 0 for e in extent):
        return
    sl = tuple(slice(int(e[0]), int(e[-1]) + 1) for e in extent)
    inside = region[sl]
    draws = rng.integers(-128, 128, size=(2, *inside.shape), dtype=np.int8)
    field = (draws[0].astype(np.int16) + draws[1] + np.int16(1)).astype(np.float32)  # each draw has mean -0.5
    field = blur(field, 0.7, canvas.spacing_mm)
    scale = std / float(np.sqrt(2 * (256**2 - 1) / 12.0)) / blurred_noise_std(0.7, canvas.spacing_mm)
    canvas.hu[sl][inside] += field[inside] * np.float32(scale)
