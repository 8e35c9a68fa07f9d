"""A random photo editor for the matching benchmark (issue 25): edits drawn, not listed.

An edit is a list of operations ``[name, params]`` (JSON-ready), drawn by ``pipeline`` as one
operation of a chosen family plus 0-3 operations of other families, each with random
parameters, and applied in an editor's order by ``apply_ops`` (geometry, crop, tones, filters,
export size, overlays). Everything is drawn from a ``random.Random``, so a seed gives the same
edits; drawing uses numpy, OpenCV and Pillow operations of their own, not the tool's.

Families (``FAMILIES``):

``lens``        a lens-profile correction: radial distortion (barrel or pincushion, two
                terms), sometimes with its vignetting correction, cropped to the valid area
``perspective`` an "upright" correction: a homography (vertical or horizontal keystone, or
                both), cropped to the valid area
``warp``        local warps ("liquify"): 1-3 smooth bumps of a small region
``overlay``     a caption band, a logo or sticker, a frame on 1, 2 or 4 sides, a phone
                screenshot with the viewer's bars, text over the picture, the picture
                turned by a free rotation onto an enlarged canvas (plain or textured)
``localtone``   clarity and dehaze at large radii, graduated and radial filters,
                shadows/highlights
``grade``       colour grading (split toning), hue shifts, white balance
``filter``      sharpening, noise reduction, blur, grain
``exportsize``  exports at 640-2048 px and JPEG quality 55-95
``anycrop``     a crop of any aspect ratio (1:3 to 3:1), 30-90 % of the area
``retouch``     spot healing (small patches cloned from nearby) and object removal (a region
                filled in from its surroundings)
``stylize``     a faded film look (lifted blacks, less colour), an artistic vignette, a
                tilt-shift blur outside a band
``annotate``    what a user draws to point at the organism: a circle or ellipse around it,
                an arrow towards it, in a bright colour
``mirror``      the crop tool's flip: left to right, or top to bottom (a flip left to right
                and half a turn)
"""

from __future__ import annotations

import math
import random
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FAMILIES = (
    "lens",
    "perspective",
    "warp",
    "overlay",
    "localtone",
    "grade",
    "filter",
    "exportsize",
    "anycrop",
    "retouch",
    "stylize",
    "annotate",
    "mirror",
)
# Held out while the tool was tuned: the tuned families' uploads never draw their operations.
# warp and grade were chosen before the first run of the baseline (stop 29) and looked at
# after that tuning; retouch and stylize were added in stop 31, before any run on them, and
# first looked at after the tuning of stop 31; annotate was added in stop 32, before any run
# on it. warp was tuned on in stop 34 and annotate in stop 36 (the marks, on its misses of
# seeds 7 and 8): their figures are no longer blind. The list stays as it is, since it also
# decides which operations the other families draw (the sets drawn before stay the same).
HELD_OUT = ("warp", "grade", "retouch", "stylize", "annotate")
Array = np.ndarray
Op = list  # [name, params]

# Operations of each family, and the editor's order they are applied in.
_OPS = {
    "lens": ("lens",),
    "perspective": ("perspective",),
    "warp": ("liquify",),
    "overlay": ("band", "logo", "sides", "screenshot", "caption", "canvas"),
    "localtone": ("clarity", "dehaze", "graduated", "radial", "shadows"),
    "grade": ("splittone", "hue", "balance"),
    "filter": ("sharpen", "denoise", "blur", "grain"),
    "exportsize": ("export",),
    "anycrop": ("crop",),
    "retouch": ("heal", "remove"),
    "stylize": ("fade", "vignette", "tiltshift"),
    "annotate": ("circle", "arrow"),
    "mirror": ("flip",),
}
_ORDER = (
    "lens",
    "perspective",
    "liquify",
    "heal",
    "remove",
    "flip",
    "crop",
    "balance",
    "hue",
    "splittone",
    "clarity",
    "dehaze",
    "graduated",
    "radial",
    "shadows",
    "fade",
    "vignette",
    "denoise",
    "blur",
    "tiltshift",
    "sharpen",
    "grain",
    "export",
    "band",
    "logo",
    "sides",
    "canvas",
    "caption",
    "screenshot",
    "circle",
    "arrow",
)


def _r(value: float) -> float:
    return round(value, 4)


# Operations whose parameters are each drawn uniformly from a range, in this order.
_UNIFORM = {
    "clarity": {"radius": (0.02, 0.08), "amount": (0.3, 1.0)},
    "dehaze": {"radius": (0.03, 0.1), "amount": (0.2, 0.6)},
    "shadows": {"shadows": (0.0, 0.6), "highlights": (0.0, 0.5), "radius": (0.01, 0.05)},
    "remove": {"x": (0.1, 0.9), "y": (0.1, 0.9), "radius": (0.02, 0.06)},
    "fade": {"lift": (0.04, 0.18), "colour": (0.6, 0.95)},
    "vignette": {"stops": (0.3, 1.2), "start": (0.2, 0.6)},
    "tiltshift": {"at": (0.35, 0.65), "band": (0.15, 0.35), "sigma": (2.0, 8.0)},
}


_INKS = ([230, 30, 30], [255, 220, 0], [255, 255, 255], [20, 200, 255])  # what users draw in


def draw_op(rng: random.Random, name: str) -> Op:
    """One operation with random parameters."""
    sign = rng.choice([-1, 1])
    if name in _UNIFORM:
        return [name, {k: _r(rng.uniform(*span)) for k, span in _UNIFORM[name].items()}]
    if name == "lens":
        k1 = sign * rng.uniform(0.02, 0.09)
        return [
            name,
            {
                "k1": _r(k1),
                "k2": _r(rng.uniform(-0.3, 0.3) * k1),
                "vig": _r(rng.uniform(0.1, 0.35) if rng.random() < 0.5 else 0.0),
            },
        ]
    if name == "flip":
        return [name, {"axis": "vertical" if rng.random() < 0.25 else "horizontal"}]
    if name == "perspective":
        kind = rng.choice(["vertical", "horizontal", "both"])
        amount = {k: 0.0 for k in ("v", "h")}
        if kind in ("vertical", "both"):
            amount["v"] = rng.choice([-1, 1]) * rng.uniform(0.02, 0.08)
        if kind in ("horizontal", "both"):
            amount["h"] = rng.choice([-1, 1]) * rng.uniform(0.02, 0.07)
        return [
            name,
            {
                "v": _r(amount["v"]),
                "h": _r(amount["h"]),
                "turn": _r(rng.uniform(-1.5, 1.5) if rng.random() < 0.4 else 0.0),
            },
        ]
    if name == "liquify":
        bumps = [
            {
                "x": _r(rng.uniform(0.15, 0.85)),
                "y": _r(rng.uniform(0.15, 0.85)),
                "radius": _r(rng.uniform(0.04, 0.1)),
                "dx": _r(rng.uniform(-0.012, 0.012)),
                "dy": _r(rng.uniform(-0.012, 0.012)),
            }
            for _ in range(rng.randint(1, 3))
        ]
        return [name, {"bumps": bumps}]
    if name == "crop":
        area = rng.uniform(0.3, 0.9)
        aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
        return [
            name,
            {"area": _r(area), "aspect": _r(aspect), "x": _r(rng.random()), "y": _r(rng.random())},
        ]
    if name == "balance":
        return [name, {"red": _r(rng.uniform(0.85, 1.15)), "blue": _r(rng.uniform(0.85, 1.15))}]
    if name == "hue":
        return [
            name,
            {"degrees": _r(sign * rng.uniform(4, 25)), "saturation": _r(rng.uniform(0.8, 1.3))},
        ]
    if name == "splittone":
        return [
            name,
            {
                "shadows": rng.randrange(360),
                "highlights": rng.randrange(360),
                "amount": _r(rng.uniform(0.05, 0.2)),
                "balance": _r(rng.uniform(-0.3, 0.3)),
            },
        ]
    if name == "graduated":
        return [
            name,
            {
                "angle": rng.randrange(360),
                "stops": _r(sign * rng.uniform(0.3, 1.0)),
                "at": _r(rng.uniform(0.3, 0.7)),
                "soft": _r(rng.uniform(0.1, 0.4)),
            },
        ]
    if name == "radial":
        return [
            name,
            {
                "x": _r(rng.uniform(0.3, 0.7)),
                "y": _r(rng.uniform(0.3, 0.7)),
                "size": _r(rng.uniform(0.2, 0.5)),
                "stops": _r(sign * rng.uniform(0.3, 0.9)),
            },
        ]
    if name == "sharpen":
        return [name, {"radius": _r(rng.uniform(0.5, 3.0)), "amount": _r(rng.uniform(0.4, 1.5))}]
    if name == "denoise":
        kind = rng.choice(["bilateral", "median", "gauss"])
        return [name, {"kind": kind, "strength": _r(rng.uniform(0, 1))}]
    if name == "blur":
        return [name, {"radius": _r(rng.uniform(0.6, 2.0))}]
    if name == "grain":
        return [
            name,
            {
                "sigma": _r(rng.uniform(2, 9)),
                "size": _r(rng.uniform(0.5, 2.0)),
                "seed": rng.randrange(2**31),
            },
        ]
    if name == "export":
        return [name, {"side": rng.randint(640, 2048), "quality": rng.randint(55, 95)}]
    if name == "heal":
        return [name, {"spots": rng.randint(1, 5), "seed": rng.randrange(2**31)}]
    if name == "band":
        return [
            name,
            {
                "edge": rng.choice(["top", "bottom"]),
                "height": _r(rng.uniform(0.06, 0.15)),
                "opacity": _r(rng.choice([1.0, 1.0, rng.uniform(0.6, 0.9)])),
                "colour": rng.choice([[10, 10, 10], [245, 245, 240], [30, 60, 40]]),
            },
        ]
    if name == "logo":
        return [
            name,
            {
                "x": _r(rng.uniform(0.05, 0.8)),
                "y": _r(rng.uniform(0.05, 0.8)),
                "size": _r(rng.uniform(0.08, 0.18)),
                "seed": rng.randrange(2**31),
            },
        ]
    if name == "canvas":  # turned either way by 2-40 degrees
        return [name, {"angle": _r(sign * rng.uniform(2, 40)), "seed": rng.randrange(2**31)}]
    if name == "sides":
        sides = rng.choice(
            [
                ["left"],
                ["top"],
                ["left", "right"],
                ["top", "bottom"],
                ["left", "right", "top", "bottom"],
            ]
        )
        return [
            name,
            {"sides": sides, "width": _r(rng.uniform(0.03, 0.1)), "seed": rng.randrange(2**31)},
        ]
    if name == "screenshot":
        return [
            name,
            {
                "phone": rng.choice([[1080, 2340], [1170, 2532], [1440, 3200]]),
                "dark": rng.random() < 0.6,
                "seed": rng.randrange(2**31),
            },
        ]
    if name == "caption":
        return [
            name,
            {
                "x": _r(rng.uniform(0.05, 0.5)),
                "y": _r(rng.uniform(0.1, 0.85)),
                "size": _r(rng.uniform(0.04, 0.08)),
                "seed": rng.randrange(2**31),
            },
        ]
    if name in ("circle", "arrow"):
        x, y = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        drawn = {"x": _r(x), "y": _r(y), "width": _r(rng.uniform(0.004, 0.012))}
        if name == "circle":
            drawn |= {"radius": _r(rng.uniform(0.05, 0.2)), "aspect": _r(rng.uniform(0.7, 1.3))}
        else:  # from anywhere in the picture to just short of the point
            drawn |= {"tail_x": _r(rng.uniform(0.05, 0.95)), "tail_y": _r(rng.uniform(0.05, 0.95))}
        return [name, {**drawn, "colour": rng.choice(_INKS)}]
    raise ValueError(name)


def pipeline(rng: random.Random, family: str, others: tuple[str, ...]) -> list[Op]:
    """One operation of family and 0-3 of others (distinct operations), in the editor's order;
    an export's size or quality is at most once in it."""
    ops = [draw_op(rng, rng.choice(_OPS[family]))]
    pool = [name for other in others if other != family for name in _OPS[other]]
    for name in rng.sample(pool, rng.randint(0, 3)):
        if name not in {op[0] for op in ops}:
            ops.append(draw_op(rng, name))
    # one overlay at most: two bands on one edge say nothing more
    overlays = [op for op in ops if op[0] in _OPS["overlay"]]
    ops = [op for op in ops if op[0] not in _OPS["overlay"]] + overlays[:1]
    return sorted(ops, key=lambda op: _ORDER.index(op[0]))


def describe(ops: list[Op]) -> str:
    """A short note of the operations ('lens k1=0.05; band bottom 12 %')."""
    parts = []
    for name, params in ops:
        shown = ", ".join(
            f"{k}={v}" for k, v in params.items() if k != "seed" and not isinstance(v, list | dict)
        )
        parts.append(f"{name} {shown}".strip())
    return "; ".join(parts)


# -- applying ------------------------------------------------------------------------------


def _f(picture: Image.Image) -> Array:
    return np.asarray(picture, np.float32)


def _img(x: Array) -> Image.Image:
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8), "RGB")


def _luma(x: Array) -> Array:
    return x @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=max(8, size))
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _remap(picture: Image.Image, map_x: Array, map_y: Array) -> Image.Image:
    out = cv2.remap(
        np.asarray(picture),
        map_x.astype(np.float32),
        map_y.astype(np.float32),
        cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )
    return Image.fromarray(out, "RGB")


def lens(picture: Image.Image, k1: float, k2: float, vig: float) -> Image.Image:
    """Undo a lens's radial distortion: each output pixel samples the input at r(1 + k1 r^2 +
    k2 r^4) (r: distance from the centre over the half diagonal), scaled so that the output is
    all valid picture (a profile correction crops to it)."""
    w, h = picture.size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    half = math.hypot(w, h) / 2
    u, v = (xs + 0.5 - w / 2) / half, (ys + 0.5 - h / 2) / half
    r2 = u * u + v * v

    def factor(r2_: Array | float) -> Array | float:
        return 1 + k1 * r2_ + k2 * r2_ * r2_

    # the widest reach of the output's edges into the input: corners and edge midpoints
    reach = max(
        factor(1.0),
        factor((w / 2 / half) ** 2) * 1.0,
        factor((h / 2 / half) ** 2) * 1.0,
    )
    scale = 1 / reach if reach > 1 else 1.0
    f = factor(r2) * scale
    out = _remap(picture, w / 2 + u * f * half - 0.5, h / 2 + v * f * half - 0.5)
    if vig:  # the profile also brightens the corners it knows are dark
        x = _f(out) * (1 + vig * r2)[..., None]
        out = _img(x)
    return out


def perspective(picture: Image.Image, v: float, h: float, turn: float) -> Image.Image:
    """An upright correction: the picture's corners pulled in or out (keystone), turned a
    little, then cropped to the largest centred box of valid pixels."""
    w, hh = picture.size
    src = np.float32([[0, 0], [w, 0], [w, hh], [0, hh]])
    dx, dy = v * w, h * hh
    # v > 0: the top is widened (a building leaning back is made upright)
    dst = np.float32([[-dx, -dy], [w + dx, dy], [w - dx, hh - dy], [dx, hh + dy]])
    if turn:
        c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
        centre = np.float32([w / 2, hh / 2])
        dst = (dst - centre) @ np.float32([[c, -s], [s, c]]).T + centre
    matrix = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    warped = cv2.warpPerspective(
        np.asarray(picture),
        matrix,
        (w, hh),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    valid = cv2.warpPerspective(
        np.full((hh, w), 255, np.uint8), matrix, (w, hh), flags=cv2.INTER_NEAREST, borderValue=0
    )
    # shrink a centred box of the picture's aspect until it holds valid pixels only
    for k in np.linspace(1.0, 0.5, 101):
        bw, bh = round(w * k), round(hh * k)
        x0, y0 = (w - bw) // 2, (hh - bh) // 2
        inner = valid[y0 + 1 : y0 + bh - 1, x0 + 1 : x0 + bw - 1]
        if inner.min() == 255:
            return Image.fromarray(warped[y0 : y0 + bh, x0 : x0 + bw], "RGB")
    return Image.fromarray(warped, "RGB")


def liquify(picture: Image.Image, bumps: list[dict]) -> Image.Image:
    """Smooth local pushes: each bump moves a small round region by (dx, dy) of the short side."""
    w, h = picture.size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    short = min(w, h)
    map_x, map_y = xs.copy(), ys.copy()
    for bump in bumps:
        cx, cy, radius = bump["x"] * w, bump["y"] * h, bump["radius"] * short
        weight = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius * radius))
        map_x -= bump["dx"] * short * weight
        map_y -= bump["dy"] * short * weight
    return _remap(picture, map_x, map_y)


def crop(picture: Image.Image, area: float, aspect: float, x: float, y: float) -> Image.Image:
    """A crop covering area of the picture with width/height aspect, at (x, y) of the room."""
    w, h = picture.size
    cw = math.sqrt(area * w * h * aspect)
    ch = cw / aspect
    if cw > w:
        cw, ch = w, w / aspect
    if ch > h:
        ch, cw = h, h * aspect
    left, top = (w - cw) * x, (h - ch) * y
    return picture.crop((round(left), round(top), round(left + cw), round(top + ch)))


def _hue_rotate(x: Array, degrees: float, saturation: float) -> Array:
    """Rotate hues about the grey axis in YIQ (a linear colour operation), and scale chroma."""
    to_yiq = np.array(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
    )
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    turn = np.array(
        [[1, 0, 0], [0, c * saturation, -s * saturation], [0, s * saturation, c * saturation]],
        np.float32,
    )
    matrix = np.linalg.inv(to_yiq) @ turn @ to_yiq
    return x @ matrix.T.astype(np.float32)


def _hsv_hue(x: Array, degrees: float) -> Array:
    """A hue shift of the HSV kind (nonlinear): what an editor's hue slider does."""
    u8 = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV_FULL).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)


def _tint(hue: float) -> Array:
    a = math.radians(hue)
    return np.array([math.cos(a), math.cos(a - 2.094), math.cos(a + 2.094)], np.float32)


def _blur(x: Array, sigma: float) -> Array:
    return cv2.GaussianBlur(x, (0, 0), max(0.3, sigma))


def apply_op(picture: Image.Image, name: str, p: dict) -> Image.Image:
    """picture with one operation applied."""
    if name == "lens":
        return lens(picture, p["k1"], p["k2"], p["vig"])
    if name == "perspective":
        return perspective(picture, p["v"], p["h"], p["turn"])
    if name == "liquify":
        return liquify(picture, p["bumps"])
    if name == "crop":
        return crop(picture, p["area"], p["aspect"], p["x"], p["y"])
    if name == "flip":
        vertical = p["axis"] == "vertical"
        return picture.transpose(
            Image.Transpose.FLIP_TOP_BOTTOM if vertical else Image.Transpose.FLIP_LEFT_RIGHT
        )
    if name == "export":
        scale = p["side"] / max(picture.size)
        if scale < 1:
            size = (round(picture.width * scale), round(picture.height * scale))
            picture = picture.resize(size, Image.Resampling.LANCZOS)
        return picture  # the quality is the file's (apply_ops' caller saves with it)
    if name in _OPS["overlay"]:
        return overlay(picture, name, p)
    if name in ("heal", "remove"):
        return retouch(picture, name, p)
    if name in ("circle", "arrow"):
        return annotate(picture, name, p)
    x = _f(picture)
    side = max(x.shape[:2])
    if name == "balance":
        x = x * np.array([p["red"], 1.0, p["blue"]], np.float32)
    elif name == "hue":
        if p["saturation"] > 1.05:
            x = _hsv_hue(x, p["degrees"])
            x = _hue_rotate(x, 0.0, p["saturation"])
        else:
            x = _hue_rotate(x, p["degrees"], p["saturation"])
    elif name == "splittone":
        luma = _luma(np.clip(x, 0, 255))[..., None] / 255
        shadow = np.clip(1 - luma * 2 + p["balance"], 0, 1)
        light = np.clip(luma * 2 - 1 + p["balance"], 0, 1)
        x = x + 255 * p["amount"] * (shadow * _tint(p["shadows"]) + light * _tint(p["highlights"]))
    elif name == "clarity":
        luma = _luma(np.clip(x, 0, 255))
        base = _blur(luma, p["radius"] * side)
        weight = 1 - (luma / 127.5 - 1) ** 2
        x = x + (p["amount"] * (luma - base) * weight)[..., None]
    elif name == "dehaze":
        dark = cv2.erode(np.clip(x, 0, 255).min(axis=2), np.ones((15, 15), np.uint8))
        haze = _blur(dark, p["radius"] * side)[..., None]
        x = (x - p["amount"] * haze) / (1 - p["amount"] * haze / 255)
    elif name == "graduated":
        h, w = x.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        a = math.radians(p["angle"])
        along = ((xs / w - 0.5) * math.cos(a) + (ys / h - 0.5) * math.sin(a)) + 0.5
        mask = np.clip((along - p["at"]) / p["soft"] + 0.5, 0, 1)
        x = x * (2.0 ** (p["stops"] * mask))[..., None]
    elif name == "radial":
        h, w = x.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.hypot((xs / w - p["x"]) * w / side, (ys / h - p["y"]) * h / side) / p["size"]
        mask = np.clip(1.5 - d, 0, 1) ** 2
        x = x * (2.0 ** (p["stops"] * mask))[..., None]
    elif name == "shadows":
        luma = _luma(np.clip(x, 0, 255))
        base = _blur(luma, p["radius"] * side) / 255
        gain = 1 + p["shadows"] * np.clip(1 - 2 * base, 0, 1) ** 2
        gain = gain - p["highlights"] * 0.5 * np.clip(2 * base - 1, 0, 1) ** 2
        x = x * gain[..., None]
    elif name == "sharpen":
        x = x + (x - _blur(x, p["radius"])) * p["amount"]
    elif name == "denoise":
        u8 = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if p["kind"] == "bilateral":
            u8 = cv2.bilateralFilter(u8, 7, 20 + 50 * p["strength"], 5)
        elif p["kind"] == "median":
            u8 = cv2.medianBlur(u8, 3 if p["strength"] < 0.6 else 5)
        else:
            u8 = cv2.GaussianBlur(u8, (0, 0), 0.6 + p["strength"])
        x = u8.astype(np.float32)
    elif name == "blur":
        x = _blur(x, p["radius"])
    elif name == "fade":
        luma = _luma(np.clip(x, 0, 255))[..., None]
        x = luma + (x - luma) * p["colour"]
        x = 255 * p["lift"] + x * (1 - p["lift"])
    elif name == "vignette":
        h, w = x.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.hypot(xs / w - 0.5, ys / h - 0.5) / math.hypot(0.5, 0.5)
        mask = np.clip((d - p["start"]) / (1 - p["start"]), 0, 1) ** 2
        x = x * (2.0 ** (-p["stops"] * mask))[..., None]
    elif name == "tiltshift":
        h = x.shape[0]
        ys = np.arange(h, dtype=np.float32)[:, None, None] / h
        mask = np.clip((np.abs(ys - p["at"]) - p["band"] / 2) * 8, 0, 1)
        x = x * (1 - mask) + _blur(x, p["sigma"]) * mask
    elif name == "grain":
        rng = np.random.default_rng(p["seed"])
        noise = rng.normal(0, p["sigma"], x.shape[:2]).astype(np.float32)
        noise = _blur(noise, p["size"] * 0.5) * max(1.0, p["size"])
        x = x + noise[..., None]
    else:
        raise ValueError(name)
    return _img(x)


def retouch(picture: Image.Image, name: str, p: dict) -> Image.Image:
    """Spot healing (small round patches cloned from a little way off, feathered) or object
    removal (a round region filled in from its surroundings)."""
    x = np.asarray(picture).copy()
    h, w = x.shape[:2]
    side = max(h, w)
    if name == "remove":
        mask = np.zeros((h, w), np.uint8)
        centre = (round(p["x"] * w), round(p["y"] * h))
        cv2.circle(mask, centre, max(2, round(p["radius"] * side)), 255, -1)
        return Image.fromarray(cv2.inpaint(x, mask, 5, cv2.INPAINT_TELEA), "RGB")
    rng = random.Random(p["seed"])
    out = x.astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(p["spots"]):
        r = rng.uniform(0.008, 0.025) * side
        cx, cy = rng.uniform(r * 3, w - r * 3), rng.uniform(r * 3, h - r * 3)
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = 2.5 * r * math.cos(angle), 2.5 * r * math.sin(angle)
        if not (r <= cx + dx <= w - r and r <= cy + dy <= h - r):
            dx, dy = -dx, -dy
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        source = cv2.warpAffine(x, shift, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
        weight = np.clip(1.5 - np.hypot(xs - cx, ys - cy) / r, 0, 1)[..., None]
        out = out * (1 - weight) + source.astype(np.float32) * weight
    return _img(out)


CAPTIONS = ("Vanessa atalanta", "Fly agaric, 12 Oct", "iNat #181004321", "Amanita muscaria (L.)")


def _textured(canvas: Image.Image, seed: int) -> Image.Image:
    """canvas with a soft texture of about 10 levels, as wood or paper has."""
    noise = np.random.default_rng(seed).normal(0, 18, (canvas.height, canvas.width))
    noise = cv2.GaussianBlur(noise.astype(np.float32), (0, 0), 3)[..., None]
    return _img(_f(canvas) + noise * 2)


def overlay(picture: Image.Image, name: str, p: dict) -> Image.Image:
    """What covers part of a picture: a band, a logo, a frame on some sides, a screenshot's
    bars, text."""
    picture = picture.copy()
    w, h = picture.size
    rng = random.Random(p.get("seed", 0))
    if name == "band":
        band_h = round(p["height"] * h)
        top = 0 if p["edge"] == "top" else h - band_h
        region = (0, top, w, top + band_h)
        colour = tuple(p["colour"])
        base = picture.crop(region)
        fill = Image.new("RGB", base.size, colour)
        picture.paste(Image.blend(base, fill, p["opacity"]), region[:2])
        draw = ImageDraw.Draw(picture)
        ink = (250, 250, 250) if sum(colour) < 300 else (20, 20, 20)
        font = _font(round(band_h * 0.55))
        draw.text((round(0.03 * w), top + round(band_h * 0.2)), rng.choice(CAPTIONS), ink, font)
        return picture
    if name == "logo":
        side = round(p["size"] * min(w, h))
        x0, y0 = round(p["x"] * (w - side)), round(p["y"] * (h - side))
        draw = ImageDraw.Draw(picture)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse(
                (x0, y0, x0 + side, y0 + side),
                fill=colour,
                outline=(255, 255, 255),
                width=max(2, side // 15),
            )
        else:
            draw.rounded_rectangle((x0, y0, x0 + side, y0 + side), side // 5, fill=colour)
        draw.text((x0 + side // 5, y0 + side // 3), "iN", (255, 255, 255), _font(side // 3))
        return picture
    if name == "sides":
        band = round(p["width"] * max(w, h))
        colour = tuple(rng.randrange(256) for _ in range(3))
        textured = rng.random() < 0.5
        left = band if "left" in p["sides"] else 0
        right = band if "right" in p["sides"] else 0
        top = band if "top" in p["sides"] else 0
        bottom = band if "bottom" in p["sides"] else 0
        canvas = Image.new("RGB", (w + left + right, h + top + bottom), colour)
        if textured:  # wood, paper: not plain
            canvas = _textured(canvas, p["seed"])
        canvas.paste(picture, (left, top))
        return canvas
    if name == "canvas":
        colour = rng.choice([(255, 255, 255), (0, 0, 0), tuple(rng.randrange(256) for _ in "rgb")])
        turned = picture.rotate(p["angle"], Image.Resampling.BICUBIC, expand=True)
        shown = Image.new("L", picture.size, 255).rotate(p["angle"], expand=True)
        canvas = Image.new("RGB", turned.size, colour)
        if rng.random() < 0.5:  # paper, a table: not plain
            canvas = _textured(canvas, p["seed"])
        canvas.paste(turned, mask=shown)
        return canvas
    if name == "screenshot":
        pw, ph = p["phone"]
        scale = pw / w
        shown = picture.resize((pw, max(1, round(h * scale))), Image.Resampling.BILINEAR)
        bar = (18, 18, 18) if p["dark"] else (246, 246, 246)
        ink = (235, 235, 235) if p["dark"] else (30, 30, 30)
        screen = Image.new("RGB", (pw, ph), (0, 0, 0) if p["dark"] else (255, 255, 255))
        top = (ph - shown.height) // 2
        screen.paste(shown, (0, top))
        draw = ImageDraw.Draw(screen)
        unit = pw // 20
        draw.rectangle((0, 0, pw, 3 * unit), fill=bar)
        draw.text((unit, unit), "9:41", ink, _font(unit))
        for k in range(3):
            draw.rectangle(
                (pw - (k + 2) * unit, unit, pw - (k + 2) * unit + unit // 2, 2 * unit), fill=ink
            )
        draw.rectangle((0, ph - 4 * unit, pw, ph), fill=bar)
        for k in range(5):
            cx = (k + 0.5) * pw / 5
            draw.ellipse(
                (cx - unit, ph - 3 * unit, cx + unit, ph - unit),
                outline=ink,
                width=max(2, unit // 6),
            )
        draw.text((unit, 3 * unit + unit // 2), "< Photos", ink, _font(unit))
        return screen
    if name == "caption":
        draw = ImageDraw.Draw(picture)
        size = round(p["size"] * h)
        xy = (round(p["x"] * w), round(p["y"] * h))
        text = rng.choice(CAPTIONS)
        draw.text((xy[0] + 2, xy[1] + 2), text, (0, 0, 0), _font(size))
        draw.text(xy, text, (255, 255, 240), _font(size))
        return picture
    raise ValueError(name)


WORK_SIDE = 2048  # the editor works at iNaturalist's largest size (it keeps no more)


def annotate(picture: Image.Image, name: str, p: dict) -> Image.Image:
    """A circle (an ellipse) around a point, or an arrow towards it, drawn antialiased."""
    x = np.array(picture)  # a writable copy: OpenCV draws in place
    w, h = picture.size
    side = max(w, h)
    width = max(1, round(p["width"] * side))
    colour = tuple(int(v) for v in p["colour"])
    centre = (round(p["x"] * w), round(p["y"] * h))
    if name == "circle":
        axes = (round(p["radius"] * side), round(p["radius"] * p["aspect"] * side))
        cv2.ellipse(x, centre, axes, 0, 0, 360, colour, width, cv2.LINE_AA)
    else:
        tail = np.array([p["tail_x"] * w, p["tail_y"] * h])
        head = tail + (np.array(centre) - tail) * 0.85  # pointing at it, not covering it
        start, end = tuple(round(v) for v in tail), tuple(round(v) for v in head)
        cv2.arrowedLine(x, start, end, colour, width, cv2.LINE_AA, tipLength=0.15)
    return Image.fromarray(x, "RGB")


def apply_ops(picture: Image.Image, ops: list[Op]) -> Image.Image:
    """picture with each operation applied in turn, at no more than WORK_SIDE pixels (an
    upload is kept at most that large: the same pixels, and a quarter of the drawing time)."""
    scale = WORK_SIDE / max(picture.size)
    if scale < 1:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    for name, params in ops:
        picture = apply_op(picture, name, params)
    return picture


def export_quality(ops: list[Op], default: int) -> int:
    """The JPEG quality an edit's export is saved at."""
    return next((p["quality"] for name, p in ops if name == "export"), default)
