"""Painting a demo face: head, hair, brows, eyes, nose and mouth, each moved by its AUs."""

from __future__ import annotations

import math

import numpy as np

from fesaug.data.demo.aus import AU_IDS
from fesaug.data.demo.canvas import Canvas, quad, stroke, superellipse
from fesaug.data.demo.styles import Subject


def draw_face(cv: Canvas, sub: Subject, au: dict[int, dict[int, float]]) -> None:
    """Paint the face; ``au[s][n]`` is AU ``n`` on the image's left (s=-1) or right (s=+1) half."""
    both = {n: max(au[-1][n], au[1][n]) for n in AU_IDS}
    skin, cx = sub.skin, 0.5
    nose_y = sub.eye_y + sub.nose_len
    mouth_y = nose_y + sub.mouth_gap
    top = sub.eye_y - sub.forehead
    drop = 0.06 * both[26]  # jaw drop lowers the chin
    chin_y = mouth_y + sub.chin
    cy = (top + chin_y) / 2
    half_h = (chin_y - top) / 2
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)

    # Neck and ears, then the face over them, then the hair: the head outline grown by the
    # hair volume, above a hairline that dips toward the temples.
    neck_w = sub.face_w * 0.55
    cv.polygon(
        np.array([[cx - neck_w, cy], [cx + neck_w, cy], [cx + neck_w * 1.2, 1.05], [cx - neck_w * 1.2, 1.05]]),
        skin - 25,
    )
    for s in (-1, 1):
        cv.ellipse(cx + s * (sub.face_w - 0.01), sub.eye_y + 0.04, 0.03, 0.055, skin - 14)
    cv.polygon(superellipse(cx, cy, sub.face_w, half_h, half_h + drop, sub.squareness, sub.jaw, theta), skin)
    vol = sub.hair_volume
    hair_y = top + sub.hairline
    mask = Canvas(cv.px, 0)
    mask.polygon(superellipse(cx, cy, sub.face_w + vol, half_h + vol, half_h, sub.squareness, 0.0, theta), 255)
    fx = np.linspace(-1.5, 1.5, 31)
    fringe = np.stack([cx + fx * sub.face_w, hair_y + sub.temples * fx**2], axis=1)
    mask.polygon(np.concatenate([fringe, [[1.5, 1.5], [-0.5, 1.5]]]), 0)
    cv.paste(sub.hair, "hair", mask.img)

    brow_y = sub.eye_y - sub.brow_gap
    # Forehead wrinkles (AU1 centre, AU2 sides) and the vertical furrows of AU4.
    for k in range(3):
        y = brow_y - 0.045 - 0.022 * k
        if y > hair_y + 0.012:
            for s in (-1, 1):
                depth = 38 * (0.6 * au[s][1] + 0.4 * au[s][2]) - 6 * k
                cv.crease(quad((cx, y), (cx + s * 0.07, y - 0.006), (cx + s * 0.13, y + 0.004)), skin, depth, 0.005)
    for s in (-1, 1):
        cv.crease(
            np.array([[cx + s * 0.012, brow_y - 0.004], [cx + s * 0.016, brow_y + 0.03]]), skin, 50 * au[s][4], 0.007
        )

    for s in (-1, 1):
        a = au[s]
        ex = cx + s * sub.eye_dx
        _draw_eye(cv, sub, ex, s, a)
        # Brow: inner end rises with AU1 and is pulled in (and, unless AU1 holds it up, down) by AU4;
        # the outer end rises with AU2.
        inner = (
            cx + s * max(0.03, sub.eye_dx - sub.eye_w - 0.004 - 0.012 * a[4]),
            brow_y + 0.012 - 0.045 * a[1] + 0.035 * a[4] * (1 - 0.7 * a[1]) + sub.rest_brow,
        )
        mid = (ex + s * 0.006, brow_y - 0.006 - 0.02 * a[1] - 0.042 * a[2] + 0.025 * a[4])
        outer = (ex + s * sub.eye_w * 1.4, brow_y + 0.014 - 0.04 * a[2] + 0.01 * a[4])
        center = quad(inner, mid, outer, 20)
        widths = sub.brow_thick * (1 + 0.25 * a[4]) * np.linspace(1.0, 0.45, 20)
        cv.polygon(stroke(center, widths), sub.brow_tone, "hair")

    _draw_nose_and_mouth(cv, sub, au, both, nose_y, mouth_y, drop)


def _draw_eye(cv: Canvas, sub: Subject, ex: float, s: int, a: dict[int, float]) -> None:
    skin, ey, w, h = sub.skin, sub.eye_y, sub.eye_w, sub.eye_h
    up = h * max(0.15, 1 + 1.3 * a[5] - 0.55 * a[7] - 0.4 * a[6] - 0.2 * a[4])
    low = h * max(0.1, 0.8 + 0.2 * a[5] - 0.5 * a[7] - 0.45 * a[6])
    u = np.linspace(-1, 1, 17)
    xs = ex + s * u * w
    tilt = 0.08 * h * u  # outer corner slightly higher
    upper = np.stack([xs, ey - tilt - up * (1 - u**2) ** 0.8], axis=1)
    lower = np.stack([xs, ey - tilt + low * (1 - u**2) ** 0.9], axis=1)
    cv.polygon(np.concatenate([upper, lower[::-1]]), min(240, skin + 55), "sclera")
    r = min(h * 1.1, w * 0.6)
    iy = ey - 0.1 * h
    cv.ellipse(ex, iy, r, r, sub.iris, "iris")
    cv.ellipse(ex, iy, r * 0.45, r * 0.45, 12, "dark")
    cv.ellipse(ex - 0.3 * r, iy - 0.3 * r, r * 0.18, r * 0.18, 230, "white")
    # Lids: skin over whatever of the iris lies outside the opening.
    reach = r * 1.4 + 0.01
    cv.polygon(np.concatenate([upper, [[ex + s * w, ey - reach - up], [ex - s * w, ey - reach - up]]]), skin)
    cv.polygon(np.concatenate([lower, [[ex + s * w, ey + reach + low], [ex - s * w, ey + reach + low]]]), skin)
    cv.crease(upper + [0, -(0.35 * h + 0.006)], skin, 22 * (1 - a[5]), 0.004)  # lid fold, hidden when the lid retracts
    cv.line(upper, min(sub.brow_tone, 45), 0.006, "hair")
    cv.crease(lower, skin, 28, 0.003)
    # AU6 bunches the cheek under the eye and creases the outer corner; AU7 tenses the lower lid.
    cv.crease(
        quad((ex - s * w * 0.8, ey + low + 0.018), (ex, ey + low + 0.026), (ex + s * w * 1.1, ey + low + 0.012)),
        skin,
        45 * a[6] + 20 * a[7],
    )
    corner = np.array([ex + s * w * 1.1, ey])
    for ang in (-0.35, 0.0, 0.35):
        d = np.array([s * math.cos(ang), math.sin(ang)]) * 0.025
        cv.crease(np.array([corner + 0.3 * d, corner + d]), skin, 45 * a[6], 0.006)


def _draw_nose_and_mouth(
    cv: Canvas,
    sub: Subject,
    au: dict[int, dict[int, float]],
    both: dict[int, float],
    nose_y: float,
    mouth_y: float,
    drop: float,
) -> None:
    skin, cx, nw = sub.skin, 0.5, sub.nose_w
    lift = 0.012 * both[9] + 0.006 * both[10]  # nose wrinkling pulls the nostrils up
    ny = nose_y - lift
    for k in range(3):  # AU9 wrinkles across the bridge
        y = sub.eye_y + 0.035 + 0.016 * k
        cv.crease(
            quad((cx - nw * 0.8, y + 0.004), (cx, y - 0.002), (cx + nw * 0.8, y + 0.004)), skin, 48 * both[9], 0.006
        )
    # One side at a time, nose then cheek: the order of the strokes is part of the pixels.
    corner = {s: _draw_nose_side(cv, sub, au[s], s, ny, mouth_y, drop) for s in (-1, 1)}
    _draw_lips(cv, sub, both, corner, mouth_y)


def _draw_nose_side(
    cv: Canvas, sub: Subject, a: dict[int, float], s: int, ny: float, mouth_y: float, drop: float
) -> tuple[float, float]:
    """One side's nostril, the fold from it to the mouth corner, and the dimple (AU14) beyond
    the corner; returns where that mouth corner is."""
    skin, cx, nw = sub.skin, 0.5, sub.nose_w
    flare = nw * (1 + 0.3 * a[9])
    cv.crease(np.array([[cx + s * nw * 0.35, sub.eye_y + 0.01], [cx + s * nw * 0.6, ny - 0.035]]), skin, 12, 0.006)
    cv.crease(
        quad(
            (cx + s * flare * 0.75, ny - 0.03),
            (cx + s * flare * 1.05, ny - 0.004),
            (cx + s * flare * 0.55, ny + 0.012),
        ),
        skin,
        38,
        0.005,
    )
    cv.ellipse(cx + s * nw * 0.42, ny + 0.004, 0.011, 0.0065, skin - 75)
    # Mouth corners: pulled up and out by AU12, out by AU20, in by AU23, down by AU15.
    dx = sub.mouth_w * (1 + 0.25 * a[12] + 0.08 * a[14] + 0.35 * a[20] - 0.22 * a[23] - 0.2 * a[26])
    dy = -0.05 * a[12] - 0.01 * a[14] + 0.036 * a[15] + 0.008 * a[20] + sub.rest_mouth + 0.3 * drop
    corner = (cx + s * dx, mouth_y + dy)
    fold = 10 + 20 * a[6] + 30 * a[9] + 28 * a[10] + 40 * a[12] + 15 * a[14]
    cv.crease(
        quad(
            (cx + s * (flare + 0.008), ny - 0.012),
            (cx + s * (flare + 0.04), ny + 0.035),
            (corner[0] + s * 0.02, corner[1] + 0.01),
        ),
        skin,
        fold,
    )
    cv.crease(
        quad(
            (corner[0] + s * 0.018, corner[1] - 0.018),
            (corner[0] + s * 0.024, corner[1]),
            (corner[0] + s * 0.016, corner[1] + 0.014),
        ),
        skin,
        55 * a[14],
        0.006,
    )
    return corner


def _draw_lips(
    cv: Canvas, sub: Subject, both: dict[int, float], corner: dict[int, tuple[float, float]], mouth_y: float
) -> None:
    """Lips: a centre line through both corners, opened by AU25/AU26 (and AU10, AU20); then the chin."""
    skin, cx = sub.skin, 0.5
    u = np.linspace(-1, 1, 41)
    s_of_u = np.where(u < 0, -1, 1)
    corner_x = np.array([corner[s][0] for s in s_of_u])
    corner_dy = np.array([corner[s][1] - mouth_y for s in s_of_u])
    x = cx + np.abs(u) * (corner_x - cx)
    env = (1 - u**2) ** 0.6
    line = mouth_y + corner_dy * np.abs(u) ** 1.6 - 0.006 * both[17] * env
    gap = 0.1 * both[26] + 0.025 * both[25] + 0.012 * both[20] + 0.006 * both[10]
    inner_up = line - 0.3 * gap * env - 0.014 * both[10] * env**0.3
    inner_low = line + 0.7 * gap * env
    t_up = sub.lip_up * (1 - 0.55 * both[23] - 0.2 * both[20])
    t_low = sub.lip_low * (1 - 0.55 * both[23] + 0.3 * both[17])
    outer_up = inner_up - t_up * (0.35 + 0.65 * env) + t_up * 0.3 * np.exp(-((u / 0.12) ** 2))
    outer_low = inner_low + t_low * (0.35 + 0.65 * env)

    def pts(ys: np.ndarray) -> np.ndarray:
        return np.stack([x, ys], axis=1)

    opening = inner_low - inner_up
    if opening.max() > 0.004:
        cv.polygon(np.concatenate([pts(inner_up), pts(inner_low)[::-1]]), 30, "mouth")
        teeth = inner_up + np.minimum(0.4 * opening, 0.016)
        cv.polygon(np.concatenate([pts(inner_up), pts(teeth)[::-1]]), min(225, skin + 40), "teeth")
    cv.polygon(np.concatenate([pts(outer_up), pts(inner_up)[::-1]]), skin - sub.lip_tone, "lip")
    cv.polygon(np.concatenate([pts(inner_low), pts(outer_low)[::-1]]), skin - 0.75 * sub.lip_tone, "lip")
    cv.line(pts(inner_up), skin - sub.lip_tone - 40, 0.005, "lip")
    # Chin: the groove under the lower lip, deepened and pushed up by AU17.
    under = mouth_y + sub.lip_low + 0.03 + 0.7 * 0.1 * both[26] - 0.008 * both[17]
    cv.crease(
        quad((cx - 0.035, under + 0.004), (cx, under), (cx + 0.035, under + 0.004)), skin, 12 + 40 * both[17], 0.005
    )
