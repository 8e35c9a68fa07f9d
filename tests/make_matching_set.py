"""Build a labelled archive for measuring how well inat_photos pairs photos (issue 3).

    python tests/make_matching_set.py OUT_DIR [--small] [--seed N] [--jobs N] [--only C,...]

writes

* ``OUT_DIR/pictures/<category>/*.jpg``: the local archive, camera-like JPEGs with EXIF
  (Make/Model, DateTimeOriginal, GPS, Orientation) and no XMP;
* ``OUT_DIR/inat_only/*.jpg``: pictures that were uploaded but have no local twin;
* ``OUT_DIR/scenario.json``: the fake iNaturalist account (user ``bench_naturalist``) for
  ``tests/fake_inat.py``; photo sources are relative to OUT_DIR;
* ``OUT_DIR/truth.json``: each local file (path relative to OUT_DIR) -> the iNaturalist photo
  id it must be tagged with, or null when it must stay untagged;
* ``OUT_DIR/manifest.json``: for each local file its category and a note on how it was made,
  and the iNaturalist photos that must stay unassociated (for reading benchmark failures).

Categories (folders under pictures/):

``plain``     uploads only resized and recompressed, plus local photos without upload nearby
``crop``      uploads cropped to 50-90 % of the area, off-centre, sometimes another aspect ratio
``burst``     3-6 frames seconds apart, a little shifted and brighter/darker; one uploaded
``rotation``  files stored sideways/mirrored (EXIF Orientation 2-8), and uploads the user turned
``offset``    days on which the camera clock was off by whole hours or 30/45 minutes; and one
              day with a single weak look-alike pair hours apart (must stay unassociated)
``several``   several observations within one minute, and one observation whose photos span
              several minutes
``twice``     one local photo uploaded to two observations: the first-created one counts

Edited uploads (issue 10): the user's editor works on the camera file and the export is what
goes to iNaturalist (written to ``OUT_DIR/edited/``), which then resizes and recompresses it.

``tone``      exposure 0.85-1.2x, contrast 0.85-1.3x, saturation 0.9-1.4x, gamma 0.85-1.15,
              alone or combined, whole frame
``croptone``  an off-centre crop to 55-90 % of the area, plus tone
``straight``  straightened by 0.5-3 degrees either way, corners cropped away; alone, or with a
              crop, tone and sharpening
``export``    sharpened, more saturated, downsized to 2048 px before the upload
``heavy``     a crop to 40-55 % of the area, straightened by about 2 degrees, exposure 1.25x,
              contrast 1.3x, saturation 1.3x
``second``    a second shot of the same subject 15-40 s later (3-6 % shift, 0.5-1.5 degrees,
              the subject moved, the scene warped a little by parallax); one of the two uploaded
``handheld``  a hand-held burst, frames about 1 s apart (+-1 % shift, +-0.3 degrees, subject
              motion, parallax, own sensor noise); one frame uploaded cropped, toned, sharpened

Edits the tool's compensation does not model (issue 17), made with OpenCV and Pillow operations
and parameters of their own, so that the verdict is measured on what it was not written for:

``sharpen``   unsharp mask at 0.5-3 px and 50-150 %; or exported at 1024-2048 px and then
              sharpened for screens; sometimes with more saturation at 2048 px
``clarity``   large-radius local contrast (1-4 % of the frame), with or without tone changes
``denoise``   noise reduction: Gaussian, bilateral or median; sometimes sharpened after
``colour``    white-balance shifts, vignetting added or removed
``mono``      black and white (a channel mix, CIELAB lightness, or hue-dependent), or a colour
              upload of a black-and-white camera file
``framed``    plain borders, a mat with a dark line, padding to a square, a text watermark in
              a corner; sometimes cropped
``smallexport`` exports at 800-1600 px, JPEG quality 60-95, sometimes lightly sharpened
``tinycrop``  a crop to 8-15 % of the frame around the subject (a distant bird)
``combo``     three of the above at once
``hdr``       look-alikes: the camera kept a normal and an HDR version of the same second; one
              was uploaded, as it is or edited

Edits drawn by a random editor (issue 25, ``tests/random_editor.py``): each upload of a family
category went through one operation of that family and 0-3 of others, with random parameters
(a composition, not a listed kind); beside some a local photo that was not uploaded.

``lens`` ``perspective`` ``warp`` ``overlay`` ``localtone`` ``grade`` ``filter``
``exportsize`` ``anycrop`` ``retouch`` ``stylize`` ``annotate`` ``mirror``  the families
              (see random_editor.py); those of random_editor.HELD_OUT were held out while the
              tool was tuned; annotate and mirror, added later, are planned after the bursts
``fburst``    look-alikes: hand-held bursts whose uploaded frame went through the random
              editor (a lens or perspective correction, an overlay, local tones ...)

``--only CATEGORY,...`` builds some categories alone. Tune on one seed and report on another:
the README gives figures for seed 1 (tuned on) and seed 2 (held out).

Everything is drawn procedurally (seeded), so a given --seed, --small and the same
numpy/Pillow/pyexiv2 versions give the same files. Different scenes differ in background kind,
colours, texture and subject; frames of one burst are near-identical on purpose.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyexiv2
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
# drawing helpers shared with the example pictures
from make_example_pictures import (
    blur,
    blur1,
    bokeh,
    camera_tags,
    fbm,
    grid,
    lerp,
    mottle,
    over,
    value_noise,
)
from random_editor import FAMILIES, HELD_OUT, apply_ops, export_quality, pipeline
from random_editor import describe as describe_ops
from support.images import noise_tile
from support.scenario import observation_record

USER = {"id": 7301, "login": "bench_naturalist", "name": "Bench Naturalist"}
# Issue 17: edits made with other operations and parameters than the tool's compensation
# models (it fits tone curves and a colour matrix, and lines pictures up by keypoints).
UNMODELLED = (
    "sharpen",
    "clarity",
    "denoise",
    "colour",
    "mono",
    "framed",
    "smallexport",
    "tinycrop",
    "combo",
)
CATEGORIES = (
    "plain",
    "crop",
    "burst",
    "rotation",
    "offset",
    "several",
    "twice",
    "tone",
    "croptone",
    "straight",
    "export",
    "heavy",
    "second",
    "handheld",
    *UNMODELLED,
    "hdr",
    *FAMILIES,
    "fburst",
)
EDITED = ("tone", "croptone", "straight", "export", "heavy")  # the edited-upload categories
LOOK_ALIKES = ("second", "handheld", "hdr")  # fburst too, but not in the small set's checks
JPEG_QUALITY = 90
FAMILY_COUNT = 8  # uploads per family of the random editor (issue 25)
FAMILY_BURSTS = 6  # hand-held bursts whose uploaded frame went through it
# Added after sets were drawn: planned after the bursts, and never mixed into other uploads'
# edits, so that the sets drawn before keep every picture.
LATER_FAMILIES = ("annotate", "mirror")
DESIGN_SIDE = 1100  # scenes are drawn at this size (longest side), then scaled to the file
LENS_BLUR = 1.0  # design pixels: the lens is not perfectly sharp
MARGIN = 0.08  # the drawn canvas is this much larger than the frame on every side
Array = np.ndarray


# =============================================================================================
# Drawing: a scene is a textured background and one subject; a view frames it.
# =============================================================================================


@dataclass(frozen=True)
class Scene:
    seed: int  # background texture and colours
    background: str
    subject: str
    subject_seed: int  # the subject's shape and colours (shared by photos of one organism)
    subject_xy: tuple[float, float]  # centre, as fractions of the frame
    subject_size: float  # fraction of the frame's short side
    angle: float  # degrees


@dataclass(frozen=True)
class View:
    shift: tuple[float, float] = (0.0, 0.0)  # camera moved: fractions of the frame
    zoom: float = 1.0
    tilt: float = 0.0  # degrees, camera turned about the lens axis
    subject_move: tuple[float, float] = (0.0, 0.0)  # fractions of the frame
    pose: float = 0.0  # small change of the subject's shape (wings, petals), -1..1
    brightness: float = 1.0
    warp: float = 0.0  # parallax: the scene bends by up to this fraction of the frame
    warp_seed: int = 0


def _jitter(rng: np.random.Generator, color: tuple, amount: float = 18) -> tuple:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in color)


def _pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


def detail(rng: np.random.Generator, h: int, w: int, feature: float, amount: float) -> Array:
    """A multiplicative fine texture: features of about ``feature`` pixels, +-amount."""
    return 1 + amount * (fbm(rng, h, w, cells=max(h, w) / feature, octaves=2) - 0.5)


def depth_of_field(rgb: Array, rng: np.random.Generator, radius: float) -> Array:
    """Only a band across the picture is sharp; the rest blurs with distance from it."""
    h, w = rgb.shape[:2]
    xs, ys = grid(h, w)
    a = rng.uniform(0, 2 * math.pi)
    along = ((xs - w / 2) * math.cos(a) + (ys - h / 2) * math.sin(a)) / max(h, w)
    sharp = np.clip(1 - np.abs(along - rng.uniform(-0.2, 0.2)) / 0.35, 0, 1)
    return over(blur(rgb, radius), rgb, sharp)


def aniso_noise(rng: np.random.Generator, h: int, w: int, cells_x: float, cells_y: float) -> Array:
    grid_ = rng.random((max(2, round(cells_y)) + 1, max(2, round(cells_x)) + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid_, "F").resize((w, h), Image.Resampling.BICUBIC))


# -- backgrounds: (rng, h, w) -> float RGB ---------------------------------------------------
FOLIAGE = [
    ((25, 45, 20), (120, 140, 70)),
    ((50, 30, 10), (200, 120, 40)),
    ((15, 35, 30), (70, 120, 90)),
    ((40, 50, 15), (170, 170, 60)),
]


def bg_foliage(rng: np.random.Generator, h: int, w: int) -> Array:
    dark, light = (_jitter(rng, c) for c in _pick(rng, FOLIAGE))
    rgb = lerp(dark, light, fbm(rng, h, w, cells=rng.uniform(3, 6)))
    spots = [_jitter(rng, light, 40), _jitter(rng, (230, 230, 200), 20), _jitter(rng, dark, 20)]
    rgb = bokeh(rng, rgb, int(rng.integers(20, 45)), spots, (0.02 * w, 0.05 * w), 0.4, (0, 0, 1, 1))
    rgb = mottle(blur(rgb, 0.01 * w), rng, 0.45)
    return rgb * detail(rng, h, w, 7, 0.25)[..., None]


def bg_litter(rng: np.random.Generator, h: int, w: int) -> Array:
    base = _jitter(rng, (110, 80, 45), 25)
    rgb = lerp(tuple(c * 0.5 for c in base), base, fbm(rng, h, w, cells=8, octaves=5))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    palette = [
        _jitter(rng, c, 25)
        for c in (
            (150, 95, 40),
            (180, 130, 60),
            (95, 60, 30),
            (190, 160, 90),
            (120, 110, 55),
            (170, 70, 30),
        )
    ]
    scale = w / 1200
    for _ in range(int(550 * rng.uniform(0.7, 1.3))):
        x, y = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
        length = rng.uniform(30, 85) * scale
        ang = rng.uniform(0, math.pi)
        pts = [
            (x + length * math.cos(ang + d) * s, y + 0.45 * length * math.sin(ang + d) * s)
            for d, s in ((0, 1), (1.9, 0.35), (math.pi, 1), (math.pi + 1.9, 0.35))
        ]
        draw.polygon(pts, fill=(*_pick(rng, palette), 240))
    for _ in range(40):  # twigs
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang, length = rng.uniform(0, math.pi), rng.uniform(40, 160) * scale
        draw.line(
            (x, y, x + length * math.cos(ang), y + length * math.sin(ang)),
            fill=(60, 45, 30, 255),
            width=max(2, round(rng.uniform(2, 6) * scale)),
        )
    leaves = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.8)), np.float32)
    rgb = over(rgb, leaves[..., :3], leaves[..., 3] / 255)
    return depth_of_field(rgb * detail(rng, h, w, 8, 0.12)[..., None], rng, 0.005 * w)


def bg_meadow(rng: np.random.Generator, h: int, w: int) -> Array:
    _, ys = grid(h, w)
    far = lerp(_jitter(rng, (40, 75, 30)), _jitter(rng, (160, 175, 80)), fbm(rng, h, w, cells=5))
    flowers = [_jitter(rng, c, 20) for c in ((250, 230, 90), (240, 240, 235), (200, 120, 200))]
    far = bokeh(rng, far, 50, flowers, (0.006 * w, 0.02 * w), 0.6, (0, 0, 1, 0.6))
    far = mottle(blur(far, 0.006 * w), rng, 0.4)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    greens = [
        _jitter(rng, c, 20) for c in ((60, 110, 35), (110, 150, 50), (160, 170, 80), (40, 80, 30))
    ]
    scale = w / 1200
    for _ in range(int(800 * rng.uniform(0.8, 1.2))):
        x, y = rng.uniform(0, w), rng.uniform(0.35, 1.1) * h
        length = rng.uniform(40, 140) * scale * (0.4 + y / h)
        lean = rng.normal(0, 0.35)
        draw.line(
            (x, y, x + length * math.sin(lean), y - length * math.cos(lean)),
            fill=(*_pick(rng, greens), 230),
            width=max(2, round(rng.uniform(3, 7) * scale)),
        )
    blades = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.8)), np.float32)
    rgb = over(far, blades[..., :3], blades[..., 3] / 255 * np.clip((ys / h - 0.25) * 3, 0, 1))
    return depth_of_field(rgb * detail(rng, h, w, 9, 0.1)[..., None], rng, 0.004 * w)


def bg_bark(rng: np.random.Generator, h: int, w: int) -> Array:
    xs, _ = grid(h, w)
    base = _jitter(
        rng, _pick(rng, [(95, 80, 65), (130, 125, 115), (70, 55, 40), (150, 140, 120)]), 15
    )
    ridges = aniso_noise(rng, h, w, rng.uniform(25, 50), rng.uniform(3, 6))
    ridges = 0.6 * ridges + 0.4 * aniso_noise(rng, h, w, 90, 12)
    rgb = lerp(tuple(c * 0.35 for c in base), base, ridges)
    cracks = np.abs(np.sin(xs / w * rng.uniform(20, 40) + 6 * aniso_noise(rng, h, w, 8, 3)))
    rgb = rgb * (0.55 + 0.45 * np.clip(cracks * 3, 0, 1))[..., None]
    lichen = fbm(rng, h, w, cells=6) > rng.uniform(0.62, 0.75)
    rgb = over(rgb, _jitter(rng, (170, 185, 120), 20), blur1(lichen.astype(np.float32), 2) * 0.7)
    return rgb * detail(rng, h, w, 6, 0.15)[..., None]


def bg_water(rng: np.random.Generator, h: int, w: int) -> Array:
    xs, ys = grid(h, w)
    deep, light = _pick(
        rng,
        [
            ((15, 50, 70), (80, 140, 160)),
            ((40, 45, 30), (120, 120, 80)),
            ((10, 30, 60), (90, 120, 180)),
        ],
    )
    deep, light = _jitter(rng, deep), _jitter(rng, light)
    warp = fbm(rng, h, w, cells=4)
    ripples = 0.5 + 0.5 * np.sin(
        ys / h * rng.uniform(60, 110) + 9 * warp + xs / w * rng.uniform(-6, 6)
    )
    rgb = lerp(deep, light, 0.6 * ripples + 0.4 * fbm(rng, h, w, cells=3))
    glints = (ripples > 0.97) & (fbm(rng, h, w, cells=10) > 0.6)
    rgb = over(rgb, (235, 240, 240), blur1(glints.astype(np.float32), 1.2))
    pads = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(pads)
    for _ in range(int(rng.integers(4, 12))):  # floating leaves
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.02, 0.06) * w
        start = rng.uniform(0, 360)
        draw.pieslice(
            (x - r, y - 0.6 * r, x + r, y + 0.6 * r),
            start,
            start + 330,
            fill=(*_jitter(rng, (70, 120, 40), 25), 255),
        )
    pads_a = np.asarray(pads.filter(ImageFilter.GaussianBlur(1)), np.float32)
    rgb = over(rgb, pads_a[..., :3], pads_a[..., 3] / 255)
    return rgb * detail(rng, h, w, 6, 0.12)[..., None]


def bg_rock(rng: np.random.Generator, h: int, w: int) -> Array:
    grey = _jitter(
        rng, _pick(rng, [(140, 135, 130), (110, 100, 95), (170, 160, 140), (90, 95, 100)]), 15
    )
    rgb = lerp(tuple(c * 0.45 for c in grey), grey, fbm(rng, h, w, cells=6, octaves=7, gain=0.6))
    crack = np.abs(fbm(rng, h, w, cells=3) - 0.5) < 0.015
    rgb = over(rgb, (30, 28, 26), blur1(crack.astype(np.float32), 1.5) * 0.8)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    lichens = [
        _jitter(rng, c, 20)
        for c in ((230, 170, 40), (200, 210, 150), (230, 110, 40), (150, 160, 150))
    ]
    for _ in range(int(rng.integers(30, 80))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.008, 0.05) * w
        color = _pick(rng, lichens)
        for _ in range(6):
            ox, oy, rr = rng.normal(0, r * 0.4), rng.normal(0, r * 0.4), r * rng.uniform(0.4, 0.8)
            draw.ellipse((x + ox - rr, y + oy - rr, x + ox + rr, y + oy + rr), fill=(*color, 200))
    lich = np.asarray(layer.filter(ImageFilter.GaussianBlur(1)), np.float32)
    rgb = over(rgb, lich[..., :3] * detail(rng, h, w, 5, 0.3)[..., None], lich[..., 3] / 255)
    return rgb * detail(rng, h, w, 6, 0.12)[..., None]


def bg_gravel(rng: np.random.Generator, h: int, w: int) -> Array:
    sand = _jitter(rng, _pick(rng, [(200, 175, 130), (160, 150, 135), (185, 150, 110)]), 15)
    rgb = lerp(tuple(c * 0.7 for c in sand), sand, fbm(rng, h, w, cells=12, octaves=4))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    scale = w / 1200
    for _ in range(int(450 * rng.uniform(0.7, 1.3))):
        x, y = rng.uniform(-0.02, 1.02) * w, rng.uniform(-0.02, 1.02) * h
        rx, ry = rng.uniform(8, 32) * scale, rng.uniform(6, 24) * scale
        shade = rng.uniform(0.45, 1.15)
        color = tuple(int(min(255, c * shade)) for c in _jitter(rng, sand, 30))
        draw.ellipse((x - rx + 2, y - ry + 3, x + rx + 2, y + ry + 3), fill=(40, 35, 30, 120))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(*color, 255))
    stones = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.7)), np.float32)
    rgb = over(rgb, stones[..., :3], stones[..., 3] / 255)
    return depth_of_field(rgb * detail(rng, h, w, 6, 0.1)[..., None], rng, 0.004 * w)


def bg_hills(rng: np.random.Generator, h: int, w: int) -> Array:
    _, ys = grid(h, w)
    rgb = lerp(
        _jitter(rng, (80, 135, 205)), _jitter(rng, (195, 212, 230)), np.clip(ys / (0.55 * h), 0, 1)
    )
    clouds = np.clip((fbm(rng, h, w, cells=rng.uniform(3, 6)) - 0.5) * 2.5, 0, 1)
    rgb = over(rgb, (250, 250, 252), clouds * np.clip(1 - ys / (0.5 * h), 0, 1))
    base = rng.uniform(0.3, 0.5)
    for k, color in enumerate(((120, 140, 160), (85, 115, 95), (70, 120, 45), (110, 100, 50))):
        cells = 2 + 1.5 * k
        ridge = value_noise(rng, 1, w, cells)[0] * 0.7 + value_noise(rng, 1, w, cells * 4)[0] * 0.3
        top = (base + 0.12 * k) * h + 0.08 * h * (ridge - 0.5) * 2
        land = lerp(
            _jitter(rng, color), tuple(c * 0.6 for c in color), fbm(rng, h, w, cells=cells * 4)
        )
        land = land * detail(rng, h, w, 5 + 3 * k, 0.3)[..., None]
        rgb = over(rgb, land, np.clip((ys - top[None, :]) / 1.5, 0, 1))
    return rgb


def bg_moss(rng: np.random.Generator, h: int, w: int) -> Array:
    green = _jitter(rng, _pick(rng, [(90, 130, 40), (60, 100, 40), (120, 140, 60)]), 15)
    rgb = lerp(tuple(c * 0.4 for c in green), green, fbm(rng, h, w, cells=w / 11, octaves=2))
    rgb = rgb * (0.6 + 0.6 * fbm(rng, h, w, cells=5))[..., None]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    scale = w / 1200
    for _ in range(int(rng.integers(150, 400))):  # sporophytes
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length = rng.uniform(15, 45) * scale
        lean = rng.normal(0, 0.3)
        x2, y2 = x + length * math.sin(lean), y - length * math.cos(lean)
        draw.line((x, y, x2, y2), fill=(150, 90, 40, 230), width=max(1, round(2 * scale)))
        draw.ellipse(
            (x2 - 3 * scale, y2 - 5 * scale, x2 + 3 * scale, y2 + 5 * scale),
            fill=(120, 70, 30, 255),
        )
    spores = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.7)), np.float32)
    return depth_of_field(over(rgb, spores[..., :3], spores[..., 3] / 255), rng, 0.004 * w)


BACKGROUNDS = {
    "foliage": bg_foliage,
    "litter": bg_litter,
    "meadow": bg_meadow,
    "bark": bg_bark,
    "water": bg_water,
    "rock": bg_rock,
    "gravel": bg_gravel,
    "hills": bg_hills,
    "moss": bg_moss,
}


# -- subjects: drawn on an RGBA layer at (cx, cy) with size s (pixels) ------------------------
def _rot(
    cx: float, cy: float, angle: float, points: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 36) -> list:
    return _rot(
        cx,
        cy,
        angle,
        [
            (rx * math.cos(t), ry * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, n, endpoint=False)
        ],
    )


FLOWER_COLORS = [
    (250, 210, 40),
    (225, 35, 55),
    (245, 245, 240),
    (150, 80, 200),
    (80, 110, 230),
    (250, 140, 190),
    (250, 140, 30),
]


def draw_flower(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    petals = int(rng.integers(5, 13))
    color = _jitter(rng, _pick(rng, FLOWER_COLORS), 15)
    centre = _jitter(rng, _pick(rng, [(240, 200, 40), (90, 60, 20), (250, 240, 150)]), 10)
    draw.line(
        [(cx + k * s * 0.02, cy + k * s * 0.08) for k in range(25)],
        fill=(70, 120, 50, 255),
        width=max(3, round(s * 0.06)),
    )
    for _ in range(int(rng.integers(0, 3))):  # buds
        bx, by = cx + rng.uniform(-1.4, 1.4) * s, cy + rng.uniform(0.6, 1.6) * s
        draw.ellipse(
            (bx - 0.15 * s, by - 0.25 * s, bx + 0.15 * s, by + 0.25 * s),
            fill=(*_jitter(rng, (90, 140, 60)), 255),
        )
    length, width = s * rng.uniform(0.7, 1.0), s * rng.uniform(0.2, 0.4)
    for k in range(petals):
        a = angle + 2 * math.pi * k / petals + 0.08 * pose * math.sin(k)
        shade = tuple(int(c * rng.uniform(0.85, 1.05)) for c in color)
        mx, my = cx + 0.55 * length * math.cos(a), cy + 0.55 * length * math.sin(a)
        draw.polygon(_ellipse(mx, my, 0.5 * length, 0.5 * width, a), fill=(*shade, 255))
    draw.ellipse((cx - 0.25 * s, cy - 0.25 * s, cx + 0.25 * s, cy + 0.25 * s), fill=(*centre, 255))
    for _ in range(40):
        r, t = 0.22 * s * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        x, y = cx + r * math.cos(t), cy + r * math.sin(t)
        draw.ellipse(
            (x - 0.02 * s, y - 0.02 * s, x + 0.02 * s, y + 0.02 * s), fill=(60, 40, 10, 255)
        )


def draw_beetle(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    shell = _jitter(
        rng,
        _pick(rng, [(210, 30, 20), (240, 190, 20), (40, 140, 70), (40, 70, 170), (30, 25, 25)]),
        15,
    )
    spot = (20, 15, 12) if sum(shell) > 200 else _jitter(rng, (230, 120, 30))
    for side in (-1, 1):
        for k in (-0.4, 0.0, 0.4):
            pts = _rot(
                cx,
                cy,
                angle,
                [(k * s, side * 0.3 * s), ((k + 0.15 * pose * side) * s, side * 0.75 * s)],
            )
            draw.line(pts, fill=(15, 12, 10, 255), width=max(2, round(0.05 * s)))
    draw.polygon(
        _ellipse(*_rot(cx, cy, angle, [(0.62 * s, 0)])[0], 0.2 * s, 0.26 * s, angle),
        fill=(20, 18, 15, 255),
    )
    draw.polygon(_ellipse(cx, cy, 0.55 * s, 0.45 * s, angle), fill=(*shell, 255))
    draw.line(
        _rot(cx, cy, angle, [(-0.55 * s, 0), (0.45 * s, 0)]),
        fill=(20, 15, 12, 255),
        width=max(1, round(0.02 * s)),
    )
    for _ in range(int(rng.integers(0, 9))):
        u, v = rng.uniform(-0.4, 0.35) * s, rng.uniform(-0.3, 0.3) * s
        r = rng.uniform(0.05, 0.1) * s
        ((x, y),) = _rot(cx, cy, angle, [(u, v)])
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*spot, 255))
    ((x, y),) = _rot(cx, cy, angle, [(0.1 * s, -0.2 * s)])
    draw.ellipse(
        (x - 0.08 * s, y - 0.05 * s, x + 0.08 * s, y + 0.05 * s), fill=(255, 255, 245, 200)
    )


def draw_mushroom(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    cap = _jitter(
        rng,
        _pick(
            rng, [(210, 40, 25), (140, 90, 50), (200, 160, 100), (230, 190, 60), (235, 230, 220)]
        ),
        15,
    )
    stem = _jitter(rng, (230, 222, 200), 10)
    tilt = angle * 0.2
    foot = _rot(
        cx, cy, tilt, [(-0.12 * s, 0.9 * s), (0.12 * s, 0.9 * s), (0.09 * s, 0), (-0.09 * s, 0)]
    )
    draw.polygon(foot, fill=(*stem, 255))
    draw.polygon(
        _ellipse(*_rot(cx, cy, tilt, [(0, 0.02 * s)])[0], 0.62 * s, 0.1 * s, tilt),
        fill=(*_jitter(rng, (220, 205, 175)), 255),
    )
    dome = [(0.62 * s * math.cos(t), -0.45 * s * math.sin(t)) for t in np.linspace(0, math.pi, 30)]
    draw.polygon(_rot(cx, cy, tilt, dome), fill=(*cap, 255))
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(8, 30))):
            t, r = rng.uniform(0.1, math.pi - 0.1), math.sqrt(rng.uniform(0.05, 0.9))
            ((x, y),) = _rot(
                cx, cy, tilt, [(0.6 * s * r * math.cos(t), -0.42 * s * r * math.sin(t))]
            )
            q = rng.uniform(0.02, 0.045) * s
            draw.ellipse((x - q, y - 0.7 * q, x + q, y + 0.7 * q), fill=(245, 238, 215, 255))
    for _ in range(int(rng.integers(0, 4))):  # small siblings
        x, y, q = (
            cx + rng.uniform(-1.6, 1.6) * s,
            cy + rng.uniform(0.5, 0.9) * s,
            rng.uniform(0.15, 0.3) * s,
        )
        draw.pieslice((x - q, y - 0.7 * q, x + q, y + 0.7 * q), 180, 360, fill=(*cap, 255))


def draw_butterfly(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    wing = _jitter(
        rng,
        _pick(
            rng,
            [
                (236, 122, 22),
                (60, 90, 200),
                (245, 240, 230),
                (240, 220, 60),
                (150, 40, 30),
                (120, 80, 40),
            ],
        ),
        15,
    )
    edge = _jitter(rng, _pick(rng, [(22, 18, 15), (90, 60, 30), (40, 40, 60)]), 8)
    spots = _jitter(
        rng, _pick(rng, [(245, 240, 230), (230, 50, 40), (60, 120, 220), (250, 210, 60)]), 10
    )
    spread = 1.0 - 0.15 * pose
    for side in (-1, 1):
        fore = [
            (0, -0.05),
            (side * 0.55 * spread, -0.75),
            (side * 1.0 * spread, -0.7),
            (side * 0.8 * spread, -0.1),
            (0, 0.05),
        ]
        hind = [
            (0, 0.0),
            (side * 0.7 * spread, 0.05),
            (side * 0.75 * spread, 0.5),
            (side * 0.3 * spread, 0.7),
            (0, 0.3),
        ]
        for shape, shrink in ((fore, 0.85), (hind, 0.8)):
            pts = _rot(cx, cy, angle, [(x * s, y * s) for x, y in shape])
            draw.polygon(pts, fill=(*edge, 255))
            inner = _rot(cx, cy, angle, [(x * s * shrink, y * s * shrink) for x, y in shape])
            draw.polygon(inner, fill=(*wing, 255))
        for _ in range(int(rng.integers(2, 7))):
            u, v = side * rng.uniform(0.25, 0.75) * spread * s, rng.uniform(-0.55, 0.45) * s
            ((x, y),) = _rot(cx, cy, angle, [(u, v)])
            r = rng.uniform(0.03, 0.07) * s
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(*spots, 255))
    draw.polygon(_ellipse(cx, cy, 0.06 * s, 0.45 * s, angle), fill=(25, 20, 18, 255))


def draw_snail(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    shell = _jitter(
        rng, _pick(rng, [(230, 200, 80), (200, 140, 110), (160, 110, 60), (235, 225, 200)]), 15
    )
    band = _jitter(rng, (70, 40, 25), 10)
    body = _jitter(rng, _pick(rng, [(150, 140, 120), (90, 80, 70), (200, 180, 140)]), 10)
    foot = _rot(
        cx,
        cy,
        0,
        [
            (-0.9 * s, 0.45 * s),
            (0.95 * s, 0.45 * s),
            (1.1 * s, 0.25 * s),
            (0.7 * s, 0.2 * s),
            (-0.6 * s, 0.3 * s),
        ],
    )
    draw.polygon(foot, fill=(*body, 255))
    for side in (0.0, 0.12):
        x0, y0 = cx + 0.95 * s, cy + 0.25 * s
        x1, y1 = x0 + (0.25 + side) * s, y0 - (0.5 - side + 0.05 * pose) * s
        draw.line((x0, y0, x1, y1), fill=(*body, 255), width=max(2, round(0.05 * s)))
        draw.ellipse(
            (x1 - 0.04 * s, y1 - 0.04 * s, x1 + 0.04 * s, y1 + 0.04 * s), fill=(40, 35, 30, 255)
        )
    draw.ellipse((cx - 0.6 * s, cy - 0.55 * s, cx + 0.6 * s, cy + 0.5 * s), fill=(*shell, 255))
    spiral = [
        (
            cx + 0.55 * s * (1 - t / 14) * math.cos(t + angle),
            cy - 0.03 * s + 0.5 * s * (1 - t / 14) * math.sin(t + angle),
        )
        for t in np.linspace(0, 13, 120)
    ]
    draw.line(spiral, fill=(*band, 255), width=max(2, round(0.05 * s)))


def draw_bird(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    back = _jitter(
        rng,
        _pick(rng, [(110, 90, 70), (60, 70, 110), (50, 50, 50), (120, 130, 60), (150, 60, 40)]),
        15,
    )
    belly = _jitter(
        rng, _pick(rng, [(230, 120, 60), (240, 230, 210), (250, 210, 60), (200, 190, 170)]), 15
    )
    branch_y = cy + 0.55 * s
    draw.line(
        (cx - 2.5 * s, branch_y + 0.2 * s, cx + 2.5 * s, branch_y - 0.1 * s),
        fill=(80, 60, 40, 255),
        width=max(4, round(0.12 * s)),
    )
    draw.polygon(
        [
            (cx - 0.4 * s, cy + 0.1 * s),
            (cx - 1.1 * s, cy + 0.6 * s + 0.1 * pose * s),
            (cx - 0.9 * s, cy + 0.75 * s),
            (cx - 0.2 * s, cy + 0.3 * s),
        ],
        fill=(*back, 255),
    )
    draw.polygon(_ellipse(cx, cy, 0.6 * s, 0.42 * s, -0.3), fill=(*back, 255))
    draw.polygon(
        _ellipse(cx + 0.15 * s, cy + 0.12 * s, 0.38 * s, 0.3 * s, -0.3), fill=(*belly, 255)
    )
    hx, hy = cx + 0.5 * s, cy - 0.35 * s + 0.05 * pose * s
    draw.ellipse((hx - 0.27 * s, hy - 0.25 * s, hx + 0.27 * s, hy + 0.25 * s), fill=(*back, 255))
    draw.polygon(
        [
            (hx + 0.22 * s, hy - 0.06 * s),
            (hx + 0.5 * s, hy + 0.02 * s),
            (hx + 0.22 * s, hy + 0.08 * s),
        ],
        fill=(40, 35, 30, 255),
    )
    draw.ellipse((hx + 0.04 * s, hy - 0.1 * s, hx + 0.14 * s, hy), fill=(10, 10, 10, 255))
    for leg in (-0.1, 0.15):
        draw.line(
            (cx + leg * s, cy + 0.35 * s, cx + leg * s, branch_y),
            fill=(60, 45, 35, 255),
            width=max(2, round(0.03 * s)),
        )


def draw_dragonfly(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    body = _jitter(
        rng, _pick(rng, [(60, 120, 220), (210, 40, 30), (60, 170, 80), (230, 170, 40)]), 15
    )
    for side in (-1, 1):
        for k, (off, length) in enumerate(((-0.15, 1.1), (0.1, 1.0))):
            a = angle + side * (math.pi / 2 + (0.15 - 0.3 * k) * side + 0.05 * pose)
            ((x, y),) = _rot(cx, cy, angle, [(off * s, 0)])
            mx, my = x + 0.55 * length * s * math.cos(a), y + 0.55 * length * s * math.sin(a)
            draw.polygon(
                _ellipse(mx, my, 0.55 * length * s, 0.12 * s, a), fill=(225, 235, 240, 150)
            )
            draw.line((x, y, mx, my), fill=(60, 60, 60, 160), width=max(1, round(0.01 * s)))
    for k in range(10):
        ((x, y),) = _rot(cx, cy, angle, [((0.25 - 0.15 * k) * s, 0)])
        r = 0.055 * s if k else 0.1 * s
        shade = tuple(int(c * (0.75 if k % 2 else 1.0)) for c in body)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*shade, 255))
    ((x, y),) = _rot(cx, cy, angle, [(0.42 * s, 0)])
    draw.ellipse((x - 0.12 * s, y - 0.13 * s, x + 0.12 * s, y + 0.13 * s), fill=(60, 40, 40, 255))


def draw_frog(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    skin = _jitter(
        rng, _pick(rng, [(90, 150, 50), (140, 110, 60), (60, 110, 60), (180, 160, 70)]), 15
    )
    dark = tuple(int(c * 0.45) for c in skin)
    for side in (-1, 1):
        draw.polygon(
            [
                (cx + side * 0.3 * s, cy + 0.2 * s),
                (cx + side * 0.95 * s, cy + 0.45 * s),
                (cx + side * 0.7 * s, cy + 0.6 * s),
                (cx + side * 0.2 * s, cy + 0.45 * s),
            ],
            fill=(*skin, 255),
        )
        draw.line(
            (cx + side * 0.35 * s, cy - 0.1 * s, cx + side * (0.7 + 0.05 * pose) * s, cy + 0.3 * s),
            fill=(*skin, 255),
            width=max(3, round(0.09 * s)),
        )
    draw.polygon(_ellipse(cx, cy, 0.5 * s, 0.42 * s, angle * 0.1), fill=(*skin, 255))
    for _ in range(int(rng.integers(3, 12))):
        x, y, r = (
            cx + rng.uniform(-0.35, 0.35) * s,
            cy + rng.uniform(-0.25, 0.3) * s,
            rng.uniform(0.03, 0.07) * s,
        )
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*dark, 255))
    for side in (-1, 1):
        x, y = cx + side * 0.22 * s, cy - 0.35 * s
        draw.ellipse((x - 0.11 * s, y - 0.11 * s, x + 0.11 * s, y + 0.11 * s), fill=(*skin, 255))
        draw.ellipse(
            (x - 0.06 * s, y - 0.06 * s, x + 0.06 * s, y + 0.06 * s), fill=(20, 15, 10, 255)
        )


def draw_fern(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    s: float,
    angle: float,
    pose: float,
) -> None:
    green = _jitter(rng, _pick(rng, [(70, 140, 50), (110, 160, 60), (150, 130, 50)]), 15)
    for _ in range(int(rng.integers(2, 5))):
        a = angle - math.pi / 2 + rng.uniform(-0.7, 0.7)
        curve = rng.uniform(-0.5, 0.5) + 0.05 * pose
        length = s * rng.uniform(1.2, 1.9)
        points = []
        for t in np.linspace(0, 1, 40):
            heading = a + curve * t
            points.append(
                (cx + length * t * math.cos(heading), cy + 0.6 * s + length * t * math.sin(heading))
            )
        draw.line(points, fill=(*green, 255), width=max(2, round(0.03 * s)))
        for k in range(1, 39, 2):
            (x0, y0), (x1, y1) = points[k], points[k + 1]
            heading = math.atan2(y1 - y0, x1 - x0)
            leaflet = 0.25 * s * (1 - k / 40)
            for side in (-1, 1):
                b = heading + side * 1.1
                mx, my = x0 + 0.5 * leaflet * math.cos(b), y0 + 0.5 * leaflet * math.sin(b)
                draw.polygon(
                    _ellipse(mx, my, 0.5 * leaflet, 0.12 * leaflet + 1, b, 12), fill=(*green, 255)
                )


SUBJECTS = {
    "flower": draw_flower,
    "beetle": draw_beetle,
    "mushroom": draw_mushroom,
    "butterfly": draw_butterfly,
    "snail": draw_snail,
    "bird": draw_bird,
    "dragonfly": draw_dragonfly,
    "frog": draw_frog,
    "fern": draw_fern,
}


def draw_canvas(
    scene: Scene, view: View, frame: tuple[int, int], canvas: tuple[int, int]
) -> Image.Image:
    """The scene at design resolution, the frame's centre at the canvas centre (8-bit RGB)."""
    cw, ch = canvas
    fw, fh = frame
    rng = np.random.default_rng([scene.seed, 1])
    rgb = BACKGROUNDS[scene.background](rng, ch, cw)
    size = scene.subject_size * min(fw, fh)
    cx = cw / 2 + (scene.subject_xy[0] - 0.5 + view.subject_move[0]) * fw
    cy = ch / 2 + (scene.subject_xy[1] - 0.5 + view.subject_move[1]) * fh
    layer = Image.new("RGBA", (cw, ch), (0, 0, 0, 0))
    SUBJECTS[scene.subject](
        ImageDraw.Draw(layer),
        np.random.default_rng([scene.subject_seed, 2]),
        cx,
        cy,
        size,
        math.radians(scene.angle),
        view.pose,
    )
    layer = layer.filter(ImageFilter.GaussianBlur(0.6))
    sub = np.asarray(layer, np.float32)
    alpha = sub[..., 3] / 255
    shadow = (
        np.asarray(layer.getchannel("A").filter(ImageFilter.GaussianBlur(size * 0.08)), np.float32)
        / 255
    )
    shadow = np.roll(shadow, (round(size * 0.06), round(size * 0.04)), axis=(0, 1))
    rgb = rgb * (1 - 0.45 * shadow)[..., None]
    texture = detail(np.random.default_rng([scene.subject_seed, 3]), ch, cw, 5, 0.18)
    rgb = over(rgb, sub[..., :3] * texture[..., None], alpha)
    rgb = rgb * view.brightness
    picture = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    return picture.filter(ImageFilter.GaussianBlur(LENS_BLUR))


_GRAIN: dict[tuple[int, int], Array] = {}
_VIGNETTE: dict[tuple[int, int], Image.Image] = {}


def _grain(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Sensor noise around 128 (a periodic tile, shifted per picture: cheap at 12 MP)."""
    w, h = size
    if size not in _GRAIN:
        tile = np.clip(noise_tile(99, (257, 263, 3), 128, 2.2) + 0.5, 0, 255).astype(np.uint8)
        _GRAIN[size] = np.tile(tile, (h // 257 + 2, w // 263 + 2, 1))
    ox, oy = int(rng.integers(263)), int(rng.integers(257))
    return Image.fromarray(np.ascontiguousarray(_GRAIN[size][oy : oy + h, ox : ox + w]), "RGB")


def _vignette(size: tuple[int, int]) -> Image.Image:
    if size not in _VIGNETTE:
        xs, ys = np.mgrid[0:48, 0:64].astype(np.float32)[::-1]
        r2 = ((xs - 31.5) / 32) ** 2 + ((ys - 23.5) / 24) ** 2
        small = Image.fromarray((255 * (1 - 0.22 * np.clip(r2 / 2, 0, 1))).astype(np.uint8), "L")
        _VIGNETTE[size] = small.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    return _VIGNETTE[size]


def render(
    scene: Scene, view: View, size: tuple[int, int], design_side: int, noise_seed: int
) -> Image.Image:
    """The upright picture the camera took, ``size`` pixels."""
    w, h = size
    k = design_side / max(w, h)
    frame = (w * k, h * k)
    canvas = (round(frame[0] * (1 + 2 * MARGIN)), round(frame[1] * (1 + 2 * MARGIN)))
    picture = draw_canvas(scene, view, frame, canvas)
    if view.warp:
        picture = parallax(picture, view.warp * frame[0], view.warp_seed)
    centre_x = canvas[0] / 2 + view.shift[0] * frame[0]
    centre_y = canvas[1] / 2 + view.shift[1] * frame[1]
    half_w, half_h = frame[0] / 2 / view.zoom, frame[1] / 2 / view.zoom
    if view.tilt == 0:
        box = (centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h)
        picture = picture.resize(size, Image.Resampling.BICUBIC, box=box)
    else:
        scale = 2 * half_w / w
        c, s = math.cos(math.radians(view.tilt)), math.sin(math.radians(view.tilt))
        # input = centre + R (output - size/2) * scale
        a, b, d, e = c * scale, -s * scale, s * scale, c * scale
        coeffs = (a, b, centre_x - a * w / 2 - b * h / 2, d, e, centre_y - d * w / 2 - e * h / 2)
        picture = picture.transform(size, Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)
    picture = ImageChops.multiply(picture, _vignette(size))
    return ImageChops.add(picture, _grain(size, np.random.default_rng(noise_seed)), 1.0, -128)


def parallax(picture: Image.Image, amount: float, seed: int) -> Image.Image:
    """The scene seen from a slightly moved camera: a smooth displacement of up to amount px."""
    w, h = picture.size
    rng = np.random.default_rng([seed, 7])
    dx = (value_noise(rng, h, w, 2.5) - 0.5) * 2 * amount
    dy = (value_noise(rng, h, w, 2.5) - 0.5) * 2 * amount
    xs, ys = grid(h, w)
    out = cv2.remap(
        np.asarray(picture), xs + dx, ys + dy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )
    return Image.fromarray(out, "RGB")


# -- edits the user makes before uploading -------------------------------------------------------


def straightened_box(width: int, height: int, degrees: float) -> tuple[float, float]:
    """Width and height of the largest centred same-aspect box inside the turned picture."""
    c, s = math.cos(math.radians(abs(degrees))), math.sin(math.radians(abs(degrees)))
    k = min(width / (width * c + height * s), height / (width * s + height * c))
    return width * k, height * k


def tone(picture: Image.Image, edit: dict) -> Image.Image:
    """Exposure, gamma, contrast (about mid grey) and saturation, as a raw developer does."""
    x = np.asarray(picture, np.float32) / 255
    x = x * edit.get("exposure", 1.0)
    x = np.clip(x, 0, 1) ** edit.get("gamma", 1.0)
    x = 0.5 + (x - 0.5) * edit.get("contrast", 1.0)
    luma = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = luma + (x - luma) * edit.get("saturation", 1.0)
    return Image.fromarray(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")


def edit_picture(picture: Image.Image, edit: dict) -> Image.Image:
    """The export of an edit: tones, straightening (corners cropped), crop, sharpening, size."""
    if any(k in edit for k in ("exposure", "gamma", "contrast", "saturation")):
        picture = tone(picture, edit)
    if edit.get("angle"):
        w, h = picture.size
        turned = picture.rotate(edit["angle"], Image.Resampling.BICUBIC)
        bw, bh = straightened_box(w, h, edit["angle"])
        box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
        picture = turned.crop(tuple(round(v) for v in box))
    if edit.get("crop"):
        left, top, right, bottom = edit["crop"]
        w, h = picture.size
        picture = picture.crop(
            (round(left * w), round(top * h), round(right * w), round(bottom * h))
        )
    picture = unmodelled_edits(picture, edit)
    if edit.get("sharpen"):
        radius, percent = edit["sharpen"]
        picture = picture.filter(ImageFilter.UnsharpMask(radius, percent, 2))
    if edit.get("side") and max(picture.size) > edit["side"]:
        scale = edit["side"] / max(picture.size)
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    picture = finishing_edits(picture, edit)
    return apply_ops(picture, edit["ops"]) if edit.get("ops") else picture


# -- edits the tool does not model (issue 17): OpenCV and Pillow operations with their own
# parameters, so that the compensation is measured on what it was not written for.


def _as_image(x: Array) -> Image.Image:
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8), "RGB")


def _luma(x: Array) -> Array:
    return x @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def unmodelled_edits(picture: Image.Image, edit: dict) -> Image.Image:
    """White balance, vignetting, clarity, black and white, noise reduction, unsharp mask."""
    x = np.asarray(picture, np.float32)
    if edit.get("wb"):  # a white-balance shift: red and blue gains
        red, blue = edit["wb"]
        x = x * np.array([red, 1.0, blue], np.float32)
    if edit.get("vignette"):  # darken (> 0) or lighten (< 0) the corners, radially
        h, w = x.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
        x = x * (1 - edit["vignette"] * np.clip(r2 / 2, 0, 1) ** 1.5)[..., None]
    if edit.get("clarity"):  # local contrast at a large radius, on luminance, midtones most
        radius, amount = edit["clarity"]
        luma = _luma(np.clip(x, 0, 255))
        base = cv2.GaussianBlur(luma, (0, 0), radius * max(x.shape[:2]))
        weight = 1 - (luma / 127.5 - 1) ** 2
        x = x + (amount * (luma - base) * weight)[..., None]
    if edit.get("mono"):  # black and white through a channel mix
        mix = np.array(edit["mono"], np.float32)
        x = np.repeat((np.clip(x, 0, 255) @ (mix / mix.sum()))[..., None], 3, axis=2)
    if edit.get("mono_lab"):  # black and white as the lightness of CIELAB (not a linear mix)
        u8 = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        x = np.repeat(cv2.cvtColor(u8, cv2.COLOR_RGB2LAB)[..., :1].astype(np.float32), 3, axis=2)
    if edit.get("mono_hue"):  # black and white with hues brightened or darkened (a colour filter)
        u8 = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        hue = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV)[..., 0].astype(np.float32)  # degrees / 2
        gain = 1 + edit["mono_hue"][1] * np.cos(np.radians(2 * hue - edit["mono_hue"][0]))
        x = np.repeat((_luma(x) * gain)[..., None], 3, axis=2)
    if edit.get("denoise"):
        kind, strength = edit["denoise"]
        u8 = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if kind == "gauss":
            u8 = cv2.GaussianBlur(u8, (0, 0), strength)
        elif kind == "bilateral":
            u8 = cv2.bilateralFilter(u8, 7, strength, 5)
        else:
            u8 = cv2.medianBlur(u8, int(strength))
        x = u8.astype(np.float32)
    if edit.get("unsharp"):  # unsharp mask: Gaussian radius in px, amount in %, no threshold
        radius, percent = edit["unsharp"]
        blurred = cv2.GaussianBlur(x, (0, 0), radius)
        x = x + (x - blurred) * percent / 100
    return _as_image(x)


def finishing_edits(picture: Image.Image, edit: dict) -> Image.Image:
    """What an export preset adds at the end: a border, a frame or padding, a watermark."""
    if edit.get("screen_sharpen"):  # output sharpening, after the export was resized
        radius, percent = edit["screen_sharpen"]
        x = np.asarray(picture, np.float32)
        x = x + (x - cv2.GaussianBlur(x, (0, 0), radius)) * percent / 100
        picture = _as_image(x)
    w, h = picture.size
    if edit.get("border"):  # a plain border of a fraction of the long side all round
        fraction, colour = edit["border"]
        picture = ImageOps.expand(picture, round(fraction * max(w, h)), tuple(colour))
    if edit.get("frame"):  # a thin dark line inside a wide light mat
        line = max(2, round(0.006 * max(w, h)))
        picture = ImageOps.expand(picture, line, (30, 30, 30))
        picture = ImageOps.expand(picture, round(edit["frame"] * max(w, h)), (236, 232, 224))
    if edit.get("pad"):  # padded to a square, as for a social network
        side = max(picture.size)
        square = Image.new("RGB", (side, side), tuple(edit["pad"]))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        picture = square
    if edit.get("watermark"):
        corner = edit["watermark"]
        draw = ImageDraw.Draw(picture)
        size = max(12, round(0.035 * picture.height))
        try:
            font: Any = ImageFont.load_default(size=size)
        except TypeError:  # Pillow built without FreeType
            font = ImageFont.load_default()
        text = "(c) A. Naturalist 2023"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = size if corner in ("tl", "bl") else picture.width - (right - left) - size
        y = size if corner in ("tl", "tr") else picture.height - (bottom - top) - size
        draw.text((x + 1, y + 1), text, fill=(20, 20, 20), font=font)
        draw.text((x, y), text, fill=(250, 250, 250), font=font)
    return picture


# -- files --------------------------------------------------------------------------------------
# Pillow's transpose that shows stored pixels upright, per EXIF Orientation; stored = inverse.
_SHOW = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STORE = {**_SHOW, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class Job:
    """One picture file to write."""

    path: str  # relative to OUT_DIR
    scene: Scene
    view: View
    size: tuple[int, int]  # upright
    design_side: int
    orientation: int = 1
    tags: dict[str, str] = field(default_factory=dict)  # EXIF; empty for inat_only pictures
    exports: tuple[tuple[str, str], ...] = ()  # (path, edit as JSON): edited copies to write
    develop: str = ""  # edit as JSON the camera applied itself (an HDR mode), or ""
    grey: bool = False  # the camera file is black and white; exports are from the colour one


def write_job(job: Job, out: Path) -> str:
    picture = render(job.scene, job.view, job.size, job.design_side, hash_seed(job.path))
    if job.develop:
        picture = edit_picture(picture, json.loads(job.develop))
    if _STORE[job.orientation] is not None:
        picture = picture.transpose(_STORE[job.orientation])
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
    data = buffer.getvalue()
    for path, spec in job.exports:  # edited from the camera file, as the user did
        edit = json.loads(spec)
        with Image.open(io.BytesIO(data)) as camera_file:
            upright = camera_file.convert("RGB")
        if _SHOW[job.orientation] is not None:
            upright = upright.transpose(_SHOW[job.orientation])
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        edit_picture(upright, edit).save(target, "JPEG", quality=edit.get("quality", 95))
    if job.grey:  # a monochrome camera mode; the colour version went to iNaturalist
        buffer = io.BytesIO()
        picture.convert("L").convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
    if job.tags:
        image = pyexiv2.ImageData(data)
        try:
            image.modify_exif(
                {
                    "Exif.Image.Orientation": str(job.orientation),
                    "Exif.Image.XResolution": "72/1",
                    "Exif.Image.YResolution": "72/1",
                    "Exif.Image.ResolutionUnit": "2",
                    "Exif.Photo.PixelXDimension": str(picture.width),
                    "Exif.Photo.PixelYDimension": str(picture.height),
                    "Exif.Photo.ColorSpace": "1",
                    **job.tags,
                }
            )
            data = image.get_bytes()
        finally:
            image.close()
    target = out / job.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return job.path


def hash_seed(text: str) -> int:
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


# =============================================================================================
# Planning: what each category holds, its times, uploads and ground truth.
# =============================================================================================

CAMERAS = [
    (
        "FUJIFILM",
        "X-T30",
        "dscf",
        {
            "Exif.Photo.ExposureTime": "1/500",
            "Exif.Photo.FNumber": "56/10",
            "Exif.Photo.ISOSpeedRatings": "200",
            "Exif.Photo.FocalLength": "550/10",
        },
    ),
    (
        "Canon",
        "Canon EOS 90D",
        "img_",
        {
            "Exif.Photo.ExposureTime": "1/320",
            "Exif.Photo.FNumber": "80/10",
            "Exif.Photo.ISOSpeedRatings": "400",
            "Exif.Photo.FocalLength": "1000/10",
        },
    ),
    (
        "NIKON CORPORATION",
        "NIKON D7500",
        "dsc_",
        {
            "Exif.Photo.ExposureTime": "1/250",
            "Exif.Photo.FNumber": "63/10",
            "Exif.Photo.ISOSpeedRatings": "320",
            "Exif.Photo.FocalLength": "1050/10",
        },
    ),
    (
        "OLYMPUS CORPORATION",
        "E-M1MarkII",
        "p",
        {
            "Exif.Photo.ExposureTime": "1/640",
            "Exif.Photo.FNumber": "40/10",
            "Exif.Photo.ISOSpeedRatings": "200",
            "Exif.Photo.FocalLength": "600/10",
        },
    ),
]

TAXA = {
    "flower": [
        ("Eschscholzia californica", "California Poppy", "Plantae"),
        ("Papaver rhoeas", "Common Poppy", "Plantae"),
        ("Leucanthemum vulgare", "Oxeye Daisy", "Plantae"),
        ("Cichorium intybus", "Chicory", "Plantae"),
        ("Geranium robertianum", "Herb-Robert", "Plantae"),
    ],
    "beetle": [
        ("Coccinella septempunctata", "Seven-spotted Lady Beetle", "Insecta"),
        ("Psyllobora vigintiduopunctata", "22-spot Ladybird", "Insecta"),
        ("Cetonia aurata", "Green Rose Chafer", "Insecta"),
    ],
    "mushroom": [
        ("Amanita muscaria", "Fly Agaric", "Fungi"),
        ("Boletus edulis", "King Bolete", "Fungi"),
        ("Macrolepiota procera", "Parasol Mushroom", "Fungi"),
    ],
    "butterfly": [
        ("Vanessa atalanta", "Red Admiral", "Insecta"),
        ("Danaus plexippus", "Monarch", "Insecta"),
        ("Polyommatus icarus", "Common Blue", "Insecta"),
        ("Gonepteryx rhamni", "Common Brimstone", "Insecta"),
    ],
    "snail": [
        ("Cepaea nemoralis", "Grove Snail", "Mollusca"),
        ("Helix pomatia", "Roman Snail", "Mollusca"),
    ],
    "bird": [
        ("Erithacus rubecula", "European Robin", "Aves"),
        ("Parus major", "Great Tit", "Aves"),
        ("Turdus merula", "Eurasian Blackbird", "Aves"),
    ],
    "dragonfly": [
        ("Anax imperator", "Emperor Dragonfly", "Insecta"),
        ("Sympetrum striolatum", "Common Darter", "Insecta"),
    ],
    "frog": [
        ("Rana temporaria", "Common Frog", "Amphibia"),
        ("Bufo bufo", "Common Toad", "Amphibia"),
    ],
    "fern": [
        ("Pteridium aquilinum", "Common Bracken", "Plantae"),
        ("Dryopteris filix-mas", "Male Fern", "Plantae"),
    ],
}

PLACES = [
    ("Jasper Ridge, CA, USA", 37.4034, -122.2383, "-07:00"),
    ("Schwäbische Alb, DE", 48.4420, 9.4170, "+02:00"),
    ("Peak District, UK", 53.3490, -1.8120, "+01:00"),
    ("Camargue, FR", 43.5330, 4.4660, "+02:00"),
    ("Point Reyes, CA, USA", 38.0700, -122.8800, "-07:00"),
    ("Kamikochi, JP", 36.2480, 137.6380, "+09:00"),
    ("Białowieża, PL", 52.7050, 23.8500, "+02:00"),
]


@dataclass
class Local:
    path: str
    when: dt.datetime  # what the camera wrote
    gps: tuple[float, float, float]


class Planner:
    def __init__(self, seed: int, small: bool) -> None:
        self.seed = seed
        self.small = small
        self.rng = random.Random(seed)
        self.size = (1600, 1200) if small else (4000, 3000)
        self.design_side = DESIGN_SIDE
        self.jobs: list[Job] = []
        self.job_index: dict[str, int] = {}  # local path -> its job
        self.truth: dict[str, int | None] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.unassociated: dict[int, str] = {}  # iNat photo id -> why it has no local twin
        self.clock_offsets: dict[str, int] = {}  # day -> minutes the camera clock was ahead
        self.weak_day: str | None = None
        self.observations: list[dict] = []
        self.next_obs = 181_000_001
        self.next_photo = 312_000_001
        self.next_obs_photo = 291_000_001
        self.scene_count = 0
        self.counters = {prefix: 1000 + 100 * i for i, (_, _, prefix, _) in enumerate(CAMERAS)}
        self.created = dt.datetime(2023, 11, 1, 20, 0)

    # -- scenes ----------------------------------------------------------------------------
    def scene(
        self,
        *,
        subject: str | None = None,
        subject_seed: int | None = None,
        background: str | None = None,
    ) -> Scene:
        self.scene_count += 1
        rng = self.rng
        subject = subject or rng.choice(sorted(SUBJECTS))
        return Scene(
            seed=self.seed * 100_000 + self.scene_count,
            background=background or rng.choice(sorted(BACKGROUNDS)),
            subject=subject,
            subject_seed=subject_seed
            if subject_seed is not None
            else self.seed * 100_000 + 50_000 + self.scene_count,
            subject_xy=(rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)),
            subject_size=rng.uniform(0.16, 0.3),
            angle=rng.uniform(-40, 40),
        )

    # -- files -----------------------------------------------------------------------------
    def local(
        self,
        category: str,
        scene: Scene,
        when: dt.datetime,
        place: tuple,
        truth: int | None,
        note: str,
        *,
        view: View = View(),
        camera: int = 0,
        orientation: int = 1,
        portrait: bool = False,
        subsec: int | None = None,
    ) -> Local:
        make, model, prefix, extra = CAMERAS[camera]
        self.counters[prefix] += 1
        path = f"pictures/{category}/{prefix}{self.counters[prefix]:04d}.jpg"
        size = self.size
        if portrait or orientation in (5, 6, 7, 8):
            size = (size[1], size[0])
        site = random.Random(f"{place[0]} {when.date()}")  # one walk a day, photos along it
        lat = place[1] + site.uniform(-0.02, 0.02) + self.rng.uniform(-4e-4, 4e-4)
        lng = place[2] + site.uniform(-0.02, 0.02) + self.rng.uniform(-4e-4, 4e-4)
        gps = (round(lat, 6), round(lng, 6), round(self.rng.uniform(50, 900), 1))
        stamp = when.strftime("%Y:%m:%d %H:%M:%S")
        tags = camera_tags(make, model, stamp, gps, **extra)
        tags["Exif.Image.Software"] = f"{model} Ver.1.10"
        if subsec is not None:
            tags["Exif.Photo.SubSecTimeOriginal"] = f"{subsec:02d}"
        self.job_index[path] = len(self.jobs)
        self.jobs.append(Job(path, scene, view, size, self.design_side, orientation, tags))
        self.truth[path] = truth
        self.notes[path] = {"category": category, "note": note}
        return Local(path, when, gps)

    def inat_only(self, scene: Scene, view: View = View(), portrait: bool = False) -> str:
        self.counters.setdefault("pxl_", 0)
        self.counters["pxl_"] += 1
        path = f"inat_only/pxl_{self.counters['pxl_']:04d}.jpg"
        size = (2000, 1500) if not self.small else (1200, 900)
        if portrait:
            size = (size[1], size[0])
        self.jobs.append(Job(path, scene, view, size, self.design_side, 1, {}))
        return path

    def edited(self, local: Local, edit: dict) -> str:
        """An edited export of local (written beside the set in edited/); returns its path."""
        i = self.job_index[local.path]
        job = self.jobs[i]
        path = f"edited/{Path(local.path).stem}_{len(job.exports) + 1}.jpg"
        exports = (*job.exports, (path, json.dumps(edit, sort_keys=True)))
        self.jobs[i] = dataclasses.replace(job, exports=exports)
        return path

    # -- iNaturalist ---------------------------------------------------------------------------
    def photo_ids(self) -> tuple[int, int]:
        ids = (self.next_photo, self.next_obs_photo)
        self.next_photo += self.rng.randint(3, 40)
        self.next_obs_photo += self.rng.randint(3, 40)
        return ids

    def observation(
        self,
        when: dt.datetime,
        place: tuple,
        subject: str,
        photos: list[dict],
        *,
        location: tuple[float, float, float] | None = None,
        created: dt.datetime | None = None,
    ) -> list[int]:
        """Add an observation at the (true) time ``when``, to the minute; returns photo ids."""
        name, common, iconic = self.rng.choice(TAXA[subject])
        lat, lng = (location or (place[1], place[2]))[:2]
        if created is None:
            self.created = max(
                self.created + dt.timedelta(minutes=self.rng.randint(1, 9)),
                dt.datetime.combine(when.date(), dt.time(20, 0)),
            )
            created = self.created
        tz = place[3]
        entries, ids = [], []
        for spec in photos:
            photo_id, obs_photo_id = self.photo_ids()
            entry = {"id": photo_id, "observation_photo_id": obs_photo_id, "source": spec["source"]}
            for key in ("crop", "rotate", "quality"):
                if spec.get(key):
                    entry[key] = spec[key]
            entries.append(entry)
            ids.append(photo_id)
        taxon = {
            "name": name,
            "rank": "species",
            "preferred_common_name": common,
            "iconic_taxon_name": iconic,
        }
        self.observations.append(
            observation_record(
                self.next_obs,
                USER["login"],
                when.replace(second=0, microsecond=0),
                entries,
                taxon,
                tz,
                observed_on=when.date().isoformat(),
                location=f"{lat:.6f},{lng:.6f}",
                obscured=False,
                positional_accuracy=self.rng.choice([5, 8, 10, 12, 20, 30]),
                place_guess=place[0],
                created_at=created.strftime("%Y-%m-%dT%H:%M:%S") + tz,
                updated_at=(created + dt.timedelta(hours=self.rng.randint(0, 48))).strftime(
                    "%Y-%m-%dT%H:%M:%S"
                )
                + tz,
                quality_grade=self.rng.choice(["research", "needs_id"]),
            )
        )
        self.next_obs += self.rng.randint(50, 4000)
        return ids

    def upload(
        self, local: Local, subject: str, place: tuple, true_time: dt.datetime, **photo: Any
    ) -> int:
        """One observation with one photo of ``local``; fills in the truth."""
        (photo_id,) = self.observation(
            true_time, place, subject, [{"source": local.path, **photo}], location=local.gps
        )
        self.truth[local.path] = photo_id
        return photo_id

    def upload_edited(
        self, local: Local, source: str, subject: str, place: tuple, true_time: dt.datetime
    ) -> int:
        """One observation with one photo: an edited export of ``local``."""
        (photo_id,) = self.observation(
            true_time,
            place,
            subject,
            [{"source": source, "quality": self.quality()}],
            location=local.gps,
        )
        self.truth[local.path] = photo_id
        return photo_id

    def upload_shot(self, local: Local, edit: dict, subject: str, place: tuple) -> int:
        """One observation with one photo of ``local`` at its time: as it is, or edited."""
        if edit:
            return self.upload_edited(local, self.edited(local, edit), subject, place, local.when)
        return self.upload(local, subject, place, local.when, quality=self.quality())

    # -- helpers -------------------------------------------------------------------------------
    def times(
        self,
        day: dt.date,
        count: int,
        start: tuple[int, int] = (8, 0),
        gap: tuple[int, int] = (6, 30),
    ) -> list[dt.datetime]:
        """Event times on ``day``, more than the cluster threshold apart."""
        moment = dt.datetime.combine(day, dt.time(*start)) + dt.timedelta(
            seconds=self.rng.randint(0, 1800)
        )
        out = []
        for _ in range(count):
            out.append(moment)
            moment += dt.timedelta(minutes=self.rng.randint(*gap), seconds=self.rng.randint(0, 59))
        return out

    def days(self, first: dt.date, count: int) -> list[dt.date]:
        return [first + dt.timedelta(days=2 * i + (i // 2) * 3) for i in range(count)]

    def quality(self) -> int:
        return self.rng.choice([75, 80, 85, 85, 88, 90])

    def portrait(self) -> bool:
        return self.rng.random() < 0.3


def crop_box(rng: random.Random, area: float, aspect: float, image_aspect: float) -> list[float]:
    """[l, t, r, b] fractions covering ``area`` of the picture with pixel aspect w/h = aspect."""
    wf = math.sqrt(area * aspect / image_aspect)
    hf = math.sqrt(area * image_aspect / aspect)
    if wf > 1:
        wf, hf = 1.0, area
    if hf > 1:
        wf, hf = area, 1.0
    # off-centre: push the box towards one side or corner
    left = (1 - wf) * rng.choice([rng.uniform(0, 0.3), rng.uniform(0.7, 1.0), rng.uniform(0, 1)])
    top = (1 - hf) * rng.choice([rng.uniform(0, 0.3), rng.uniform(0.7, 1.0), rng.uniform(0, 1)])
    return [round(left, 4), round(top, 4), round(left + wf, 4), round(top + hf, 4)]


def _burst_views(rng: random.Random, frames: int) -> list[View]:
    """Frames of a burst: each a few pixels to 1 % apart, brightness +-5-10 %, subject moving."""
    views, shift, move = [], [0.0, 0.0], [0.0, 0.0]
    for k in range(frames):
        if k:
            step = rng.uniform(0.001, 0.01)  # 4-40 px at 4000 px
            a = rng.uniform(0, 2 * math.pi)
            shift = [shift[0] + step * math.cos(a), shift[1] + step * math.sin(a)]
            step = rng.uniform(0.004, 0.015)
            a = rng.uniform(0, 2 * math.pi)
            move = [move[0] + step * math.cos(a), move[1] + step * math.sin(a)]
        brightness = 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.10) if k else 1.0
        views.append(
            View(
                shift=(shift[0], shift[1]),
                subject_move=(move[0], move[1]),
                pose=rng.uniform(-1, 1),
                brightness=brightness,
            )
        )
    return views


def uploaded_burst(
    p: Planner,
    category: str,
    scene: Scene,
    start: dt.datetime,
    place: tuple,
    views: list[View],
    chosen: int,
    edit: dict,
    number: int,
) -> None:
    """The frames of hand-held burst number, 1 s apart from start; frame chosen uploaded
    after edit."""
    frames = len(views)
    locals_ = []
    for k, view in enumerate(views):
        note = f"hand-held burst {number}, frame {k + 1} of {frames}"
        if k == chosen:
            note += f" (uploaded: {describe_edit(edit)})"
        moment = start + dt.timedelta(seconds=k)
        subsec = p.rng.randint(0, 99)
        locals_.append(
            p.local(category, scene, moment, place, None, note, view=view, camera=3, subsec=subsec)
        )
    source = p.edited(locals_[chosen], edit)
    p.upload_edited(locals_[chosen], source, scene.subject, place, locals_[chosen].when)


def handheld_views(rng: random.Random, frames: int) -> list[View]:
    """Frames of a hand-held burst about 1 s apart: +-1 % shift, +-0.3 degrees, the subject
    moving, a little parallax."""
    views, move = [], [0.0, 0.0]
    for k in range(frames):
        if k:
            step, t = rng.uniform(0.003, 0.01), rng.uniform(0, 2 * math.pi)
            move = [move[0] + step * math.cos(t), move[1] + step * math.sin(t)]
        views.append(
            View(
                shift=(rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01)),
                tilt=rng.uniform(-0.3, 0.3),
                subject_move=(move[0], move[1]),
                pose=rng.uniform(-1, 1),
                warp=rng.uniform(0.001, 0.003),
                warp_seed=rng.randint(0, 2**31),
            )
        )
    return views


def plan(seed: int, small: bool) -> Planner:
    p = Planner(seed, small)
    rng = p.rng
    landscape = p.size[0] / p.size[1]

    # -- plain -------------------------------------------------------------------------------
    place = PLACES[0]
    days = p.days(dt.date(2023, 6, 3), 1 if small else 4)
    per_day = 3 if small else 8
    uploaded_per_day = 2 if small else 6
    extra_done = 0
    for day in days:
        for k, when in enumerate(p.times(day, uploaded_per_day, start=(8 + 2 * (day.day % 3), 0))):
            portrait = p.portrait() and not small
            scene = p.scene()
            local = p.local(
                "plain",
                scene,
                when,
                place,
                None,
                "uploaded, resized and recompressed",
                camera=0,
                portrait=portrait,
            )
            photos = [{"source": local.path, "quality": p.quality()}]
            if extra_done < (1 if small else 3) and k == 1:  # a second, phone-only photo of it
                photos.append(
                    {"source": p.inat_only(p.scene(subject=scene.subject), portrait=portrait)}
                )
                extra_done += 1
            ids = p.observation(when, place, scene.subject, photos, location=local.gps)
            p.truth[local.path] = ids[0]
            for other in ids[1:]:
                p.unassociated[other] = "phone photo with no local twin"
            if k < per_day - uploaded_per_day:  # a local photo nearby that was not uploaded
                near = when + dt.timedelta(seconds=rng.randint(40, 150))
                p.local(
                    "plain",
                    p.scene(),
                    near,
                    place,
                    None,
                    "not uploaded",
                    camera=0,
                    portrait=p.portrait() and not small,
                )

    # -- crop --------------------------------------------------------------------------------
    place = PLACES[1]
    shapes = [("same", None), ("square", 1.0), ("4:5", 0.8), ("16:9", 16 / 9), ("5:4", 1.25)]
    count = 2 if small else 24
    days = p.days(dt.date(2023, 6, 17), 1 if small else 3)
    for d, day in enumerate(days):
        todo = len(range(d, count, len(days)))  # the cases spread evenly over the days
        for i, when in enumerate(p.times(day, todo, start=(9, 0))):
            portrait = p.portrait() and not small
            image_aspect = (1 / landscape) if portrait else landscape
            if small:
                name, aspect = shapes[i]
                area = (0.64, 0.55)[i]
            else:
                name, aspect = shapes[0] if rng.random() < 0.5 else rng.choice(shapes[1:])
                area = rng.uniform(0.5, 0.9)
            aspect = image_aspect if aspect is None else aspect
            box = crop_box(rng, area, aspect, image_aspect)
            real_area = (box[2] - box[0]) * (box[3] - box[1])
            scene = p.scene()
            local = p.local(
                "crop",
                scene,
                when,
                place,
                None,
                f"upload cropped to {real_area:.0%} of the area, {name} aspect, box {box}",
                camera=1,
                portrait=portrait,
            )
            p.upload(local, scene.subject, place, when, crop=box, quality=p.quality())

    # -- burst -------------------------------------------------------------------------------
    place = PLACES[2]
    bursts = 1 if small else 8
    days = p.days(dt.date(2023, 7, 1), 1 if small else 3)
    for b in range(bursts):
        day = days[b % len(days)]
        start = p.times(day, 1, start=(7 + 1 * b, 0))[0]
        frames = 4 if small else rng.randint(3, 6)
        views = _burst_views(rng, frames)
        scene = p.scene()
        chosen = rng.randrange(frames)
        crop = None
        if not small and b == bursts - 1:
            crop = crop_box(rng, 0.75, landscape, landscape)
        when = start
        locals_ = []
        for k, view in enumerate(views):
            note = f"burst {b + 1}, frame {k + 1} of {frames}" + (
                " (uploaded" + (f", cropped {crop}" if crop else "") + ")" if k == chosen else ""
            )
            locals_.append(
                p.local(
                    "burst",
                    scene,
                    when,
                    place,
                    None,
                    note,
                    view=view,
                    camera=2,
                    subsec=rng.randint(0, 99),
                )
            )
            when += dt.timedelta(seconds=rng.randint(1, 3))
        true_time = locals_[0].when
        p.upload(locals_[chosen], scene.subject, place, true_time, crop=crop, quality=p.quality())

    # -- rotation ----------------------------------------------------------------------------
    place = PLACES[3]
    if small:
        cases = [(6, 0, None), (5, 0, None), (1, 90, None)]
    else:
        cases = []
        for orientation in (2, 3, 4, 5, 6, 7, 8):
            cases += [(orientation, 0, None), (orientation, 0, "q"), (orientation, 0, "crop")]
        for turn in (90, 180, 270):
            cases += [(1, turn, None), (1, turn, "q"), (1, turn, "crop")]
    days = p.days(dt.date(2023, 7, 15), 1 if small else 3)
    per_day = math.ceil(len(cases) / len(days))
    for d, day in enumerate(days):
        todo = cases[d * per_day : (d + 1) * per_day]
        for (orientation, turn, extra), when in zip(
            todo, p.times(day, len(todo), start=(8, 30)), strict=True
        ):
            scene = p.scene()
            portrait = orientation in (5, 6, 7, 8)
            crop = None
            if extra == "crop":
                aspect = (1 / landscape) if portrait else landscape
                crop = crop_box(rng, rng.uniform(0.6, 0.85), aspect, aspect)
            note = (
                f"stored with EXIF Orientation {orientation}"
                if orientation != 1
                else "stored upright"
            )
            if turn:
                note += f"; upload turned {turn}° counter-clockwise by the user"
            if crop:
                note += f"; upload cropped {crop}"
            local = p.local(
                "rotation", scene, when, place, None, note, camera=3, orientation=orientation
            )
            p.upload(
                local,
                scene.subject,
                place,
                when,
                crop=crop,
                rotate=turn,
                quality=p.quality() if extra == "q" else None,
            )

    # -- offset ------------------------------------------------------------------------------
    place = PLACES[4]
    offsets = [60] if small else [60, -180, 540, 30, -45]
    per_day = 3 if small else 5
    days = p.days(dt.date(2023, 8, 5), len(offsets) + 1)
    for day, minutes in zip(days, offsets, strict=False):
        start = (8, 0) if minutes > 300 else (11, 0)
        offset = dt.timedelta(minutes=minutes)
        p.clock_offsets[day.isoformat()] = minutes
        sign = "+" if minutes > 0 else "-"
        label = f"camera clock {sign}{abs(minutes) // 60}:{abs(minutes) % 60:02d}"
        for k, true in enumerate(p.times(day, per_day, start=start, gap=(9, 35))):
            scene = p.scene()
            crop = crop_box(rng, 0.8, landscape, landscape) if (not small and k == 2) else None
            local = p.local(
                "offset",
                scene,
                true + offset,
                place,
                None,
                f"{label}, true time {true:%H:%M:%S}"
                + (f"; upload cropped {crop}" if crop else ""),
                camera=0,
            )
            p.upload(local, scene.subject, place, true, crop=crop, quality=p.quality())
            if not small and k == 1:
                near = true + offset + dt.timedelta(seconds=rng.randint(30, 120))
                p.local("offset", p.scene(), near, place, None, f"{label}, not uploaded", camera=0)
    # the weak day: one local photo, and hours away one upload that only looks alike
    day = days[len(offsets)]
    p.weak_day = day.isoformat()
    when = p.times(day, 1, start=(13, 0))[0]
    scene = p.scene()
    local = p.local(
        "offset",
        scene,
        when,
        place,
        None,
        "weak day: only a look-alike was uploaded, 2 h later",
        camera=0,
    )
    weak = View(
        shift=(0.06, -0.04),
        zoom=1.12,
        tilt=5.0,
        subject_move=(0.08, 0.05),
        pose=0.8,
        brightness=0.9,
    )
    ids = p.observation(
        when + dt.timedelta(hours=2),
        place,
        scene.subject,
        [{"source": p.inat_only(scene, weak)}],
        location=local.gps,
    )
    p.unassociated[ids[0]] = "look-alike of a photo taken 2 h earlier (weak day)"

    # -- several -----------------------------------------------------------------------------
    place = PLACES[5]
    groups = 1 if small else 4
    days = p.days(dt.date(2023, 9, 2), 1 if small else 2)
    for g in range(groups):
        day = days[g % len(days)]
        minute = p.times(day, 1, start=(8 + 2 * g, 0))[0].replace(second=0)
        count = 2 if small else 3
        seconds = sorted(rng.sample(range(2, 58), count))
        for s in seconds:
            scene = p.scene()
            when = minute + dt.timedelta(seconds=s)
            local = p.local(
                "several",
                scene,
                when,
                place,
                None,
                f"one of {count} observations in the minute {minute:%H:%M}",
                camera=1,
            )
            p.upload(local, scene.subject, place, minute, quality=p.quality())
    for g in range(1 if small else 2):  # one observation, photos spread over several minutes
        day = days[g % len(days)]
        start = p.times(day, 1, start=(15 + g, 0))[0]
        count = 3 if small else 4
        subject = rng.choice(sorted(SUBJECTS))
        subject_seed = seed * 100_000 + 90_000 + g
        background = rng.choice(sorted(BACKGROUNDS))
        locals_, when = [], start
        for k in range(count):
            scene = p.scene(subject=subject, subject_seed=subject_seed, background=background)
            locals_.append(
                p.local(
                    "several",
                    scene,
                    when,
                    place,
                    None,
                    f"photo {k + 1} of {count} of one observation",
                    camera=1,
                )
            )
            when += dt.timedelta(seconds=rng.randint(100, 170))
        ids = p.observation(
            start,
            place,
            subject,
            [{"source": loc.path, "quality": p.quality()} for loc in locals_],
            location=locals_[0].gps,
        )
        for loc, photo_id in zip(locals_, ids, strict=True):
            p.truth[loc.path] = photo_id
            p.notes[loc.path]["note"] += (
                f", spanning {(locals_[-1].when - start).seconds // 60} min"
            )

    # -- twice -------------------------------------------------------------------------------
    place = PLACES[6]
    cases = 1 if small else 8
    days = p.days(dt.date(2023, 9, 16), 1 if small else 3)
    for c in range(cases):
        day = days[c % len(days)]
        when = p.times(day, 1, start=(9 + c, 0))[0]
        scene = p.scene()
        twice = p.local(
            "twice",
            scene,
            when,
            place,
            None,
            "uploaded to two observations; the first-created one counts",
            camera=2,
        )
        first_created = dt.datetime.combine(day, dt.time(19, 0)) + dt.timedelta(minutes=c)
        later_created = first_created + dt.timedelta(days=rng.randint(1, 30))
        quality = p.quality()  # iNaturalist renders both uploads of one file alike
        second = {"source": twice.path, "quality": quality}
        if not small and c % 4 == 3:
            second["crop"] = crop_box(rng, 0.85, landscape, landscape)
        photos_b = [second]
        if not small and c % 3 == 2:  # the second observation has another photo first
            photos_b = [{"source": p.inat_only(p.scene(subject=scene.subject))}, second]
        # the second observation is dated the same minute or the next one
        time_b = when.replace(second=0) + dt.timedelta(minutes=rng.choice([0, 0, 1]))
        ids_a = p.observation(
            when,
            place,
            scene.subject,
            [{"source": twice.path, "quality": quality}],
            location=twice.gps,
            created=first_created,
        )
        ids_b = p.observation(
            time_b, place, scene.subject, photos_b, location=twice.gps, created=later_created
        )
        p.truth[twice.path] = ids_a[0]
        for photo_id in ids_b:
            p.unassociated[photo_id] = (
                "second upload of a photo already in an earlier observation"
                if photo_id == ids_b[-1]
                else "phone photo with no local twin"
            )
        before = when - dt.timedelta(seconds=rng.randint(30, 90))
        p.local(
            "twice",
            p.scene(),
            before,
            place,
            None,
            "not uploaded, next to a photo uploaded twice",
            camera=2,
        )
        if not small:
            later = when + dt.timedelta(minutes=rng.randint(2, 3), seconds=rng.randint(0, 59))
            scene = p.scene()
            local = p.local(
                "twice",
                scene,
                later,
                place,
                None,
                "uploaded once, next to a photo uploaded twice",
                camera=2,
            )
            p.upload(local, scene.subject, place, later, quality=p.quality())
    plan_edited(p)
    plan_unmodelled(p)
    plan_families(p)
    return p


# -- edited uploads and look-alikes (issue 10) --------------------------------------------------
SHAPES = [("same", None), ("square", 1.0), ("4:5", 0.8), ("16:9", 16 / 9), ("5:4", 1.25)]


def tone_edit(rng: random.Random) -> dict:
    """One to four tone changes, as a user pulls the sliders."""
    ranges = {
        "exposure": (0.85, 1.2),
        "contrast": (0.85, 1.3),
        "saturation": (0.9, 1.4),
        "gamma": (0.85, 1.15),
    }
    chosen = rng.sample(sorted(ranges), rng.randint(1, 4))
    return {k: round(rng.uniform(*ranges[k]), 3) for k in sorted(chosen)}


def crop_edit(rng: random.Random, low: float, high: float, image_aspect: float) -> dict:
    """An off-centre crop covering low..high of the area, often with another aspect."""
    name, aspect = SHAPES[0] if rng.random() < 0.5 else rng.choice(SHAPES[1:])
    aspect = image_aspect if aspect is None else aspect
    return {"crop": crop_box(rng, rng.uniform(low, high), aspect, image_aspect), "shape": name}


def sharpen_edit(rng: random.Random) -> dict:
    return {"sharpen": [round(rng.uniform(0.8, 2.0), 2), rng.randint(50, 150)]}


def describe_edit(edit: dict) -> str:
    parts = []
    tones = [f"{k} {edit[k]}" for k in ("exposure", "contrast", "saturation", "gamma") if k in edit]
    if tones:
        parts.append(", ".join(tones))
    if edit.get("angle"):
        parts.append(f"straightened {edit['angle']:+.2f}°")
    if edit.get("crop"):
        left, top, right, bottom = edit["crop"]
        parts.append(f"cropped to {(right - left) * (bottom - top):.0%} ({edit['shape']})")
    if edit.get("sharpen"):
        parts.append(f"sharpened {edit['sharpen']}")
    if edit.get("side"):
        parts.append(f"exported at {edit['side']} px")
    keys = (
        "unsharp",
        "screen_sharpen",
        "clarity",
        "denoise",
        "wb",
        "vignette",
        "mono",
        "mono_lab",
        "mono_hue",
        "quality",
    )
    for key in keys:
        if edit.get(key):
            parts.append(f"{key} {edit[key]}")
    for key in ("border", "frame", "pad", "watermark"):
        if edit.get(key):
            parts.append(f"{key} {edit[key]}")
    if edit.get("ops"):
        parts.append(describe_ops(edit["ops"]))
    return "; ".join(parts)


def edited_days(
    p: Planner,
    categories: tuple[str, ...],
    counts: dict[str, int],
    first: dt.date,
    edits_for: Callable[[str, Scene], dict],
) -> None:
    """Each category's edited uploads over 3 days (1 photo with --small), and beside some of
    them a local photo that was not uploaded."""
    small = p.small
    for c, category in enumerate(categories):
        place = PLACES[c % len(PLACES)]
        count = 1 if small else counts[category]
        days = p.days(first + dt.timedelta(days=20 * c), 1 if small else 3)
        neighbours = 0 if small else 6 if category in ("tone", "croptone") else 2
        for d, day in enumerate(days):
            todo = len(range(d, count, len(days)))
            for k, when in enumerate(p.times(day, todo, start=(8, 0), gap=(6, 20))):
                portrait = p.portrait() and not small
                scene = p.scene()
                edit = edits_for(category, scene)
                if portrait and edit.get("crop") and edit.get("shape") != "subject":
                    # the same crop, drawn for a portrait frame
                    left, top, right, bottom = edit["crop"]
                    edit["crop"] = [top, left, bottom, right]
                grey = edit.pop("grey_local", False)
                local = p.local(
                    category,
                    scene,
                    when,
                    place,
                    None,
                    f"uploaded after editing: {describe_edit(edit)}"
                    + (" (the local file is black and white)" if grey else ""),
                    camera=c % len(CAMERAS),
                    portrait=portrait,
                )
                if grey:
                    i = p.job_index[local.path]
                    p.jobs[i] = dataclasses.replace(p.jobs[i], grey=True)
                source = p.edited(local, edit)
                p.upload_edited(local, source, scene.subject, place, when)
                if d == 0 and k < neighbours:  # a local photo nearby that was not uploaded
                    near = when + dt.timedelta(seconds=p.rng.randint(40, 150))
                    p.local(category, p.scene(), near, place, None, "not uploaded", camera=c % 4)


def plan_edited(p: Planner) -> None:
    """The categories of issue 10: uploads edited before upload, and look-alikes beside them."""
    rng, small = p.rng, p.small
    landscape = p.size[0] / p.size[1]

    def edits_for(category: str, scene: Scene) -> dict:
        aspect = landscape  # crops are drawn for the landscape frame; portrait flips below
        if category == "tone":
            return tone_edit(rng)
        if category == "croptone":
            return {**crop_edit(rng, 0.55, 0.9, aspect), **tone_edit(rng)}
        if category == "straight":
            edit: dict = {"angle": round(rng.choice([-1, 1]) * rng.uniform(0.5, 3.0), 2)}
            roll = rng.random()
            if roll < 0.4:  # with a crop, tones and sharpening
                edit |= crop_edit(rng, 0.55, 0.9, aspect) | tone_edit(rng) | sharpen_edit(rng)
            elif roll < 0.6:
                edit |= crop_edit(rng, 0.55, 0.9, aspect)
            elif roll < 0.8:
                edit |= tone_edit(rng)
            return edit
        if category == "export":
            return {
                **sharpen_edit(rng),
                "saturation": round(rng.uniform(1.1, 1.3), 3),
                "side": 2048,
                "quality": rng.choice([88, 92, 95]),
            }
        assert category == "heavy"
        return {
            **crop_edit(rng, 0.4, 0.55, aspect),
            "angle": round(rng.choice([-1, 1]) * rng.uniform(1.7, 2.3), 2),
            "exposure": 1.25,
            "contrast": 1.3,
            "saturation": 1.3,
        }

    counts = {"tone": 34, "croptone": 34, "straight": 34, "export": 34, "heavy": 20}
    edited_days(p, EDITED, counts, dt.date(2023, 10, 1), edits_for)

    # -- second shots: the same subject again, 15-40 s later, framed a little differently -------
    place = PLACES[5]
    days = p.days(dt.date(2023, 12, 1), 1 if small else 2)
    pairs = 1 if small else 12
    for g in range(pairs):
        day = days[g % len(days)]
        when = p.times(day, 1, start=(8 + g, 0))[0]
        scene = p.scene()
        a = rng.uniform(0, 2 * math.pi)
        m = rng.uniform(0.03, 0.06)
        t = rng.uniform(0, 2 * math.pi)
        second = View(
            shift=(m * math.cos(a), m * math.sin(a)),
            tilt=rng.choice([-1, 1]) * rng.uniform(0.5, 1.5),
            subject_move=(0.01 * math.cos(t), 0.01 * math.sin(t)),
            pose=rng.uniform(-1, 1),
            warp=rng.uniform(0.003, 0.006),
            warp_seed=rng.randint(0, 2**31),
        )
        views = [View(), second]
        uploaded = rng.randrange(2)
        edit = {} if g % 2 == 0 else {**crop_edit(rng, 0.6, 0.9, landscape), **tone_edit(rng)}
        locals_ = []
        for k, view in enumerate(views):
            later = k * rng.randint(15, 40)
            note = "first shot" if k == 0 else f"second shot {later} s later"
            note += " (uploaded" + (f": {describe_edit(edit)}" if edit else "") + ")"
            if k != uploaded:
                note = note.split(" (")[0] + ", not uploaded; the other shot was"
            locals_.append(
                p.local(
                    "second",
                    scene,
                    when + dt.timedelta(seconds=later),
                    place,
                    None,
                    note,
                    view=view,
                    camera=1,
                )
            )
        p.upload_shot(locals_[uploaded], edit, scene.subject, place)

    # -- hand-held bursts: frames 1 s apart; one uploaded cropped, toned and sharpened ----------
    place = PLACES[6]
    days = p.days(dt.date(2023, 12, 12), 1 if small else 2)
    bursts = 1 if small else 10
    for b in range(bursts):
        day = days[b % len(days)]
        start = p.times(day, 1, start=(8 + b, 0))[0]
        frames = 3 if small else rng.randint(3, 6)
        scene = p.scene()
        views = handheld_views(rng, frames)
        chosen = rng.randrange(frames)
        edit = {**crop_edit(rng, 0.55, 0.9, landscape), **tone_edit(rng), **sharpen_edit(rng)}
        uploaded_burst(p, "handheld", scene, start, place, views, chosen, edit, b + 1)


# -- issue 17: edits the compensation does not model, and same-second HDR look-alikes --------


def unsharp_edit(rng: random.Random) -> dict:
    return {"unsharp": [round(rng.uniform(0.5, 3.0), 2), rng.randint(50, 150)]}


def subject_crop(rng: random.Random, scene: Scene, low: float, high: float) -> dict:
    """A crop to low..high of the area around the subject, as of a distant bird: its centre
    near the subject's, kept inside the frame (whichever way the frame is turned)."""
    side = math.sqrt(rng.uniform(low, high))
    box = []
    for centre in scene.subject_xy:
        start = centre + rng.uniform(-0.3, 0.3) * side - side / 2
        start = min(max(start, 0.0), 1.0 - side)
        box.append(start)
    left, top = box
    return {
        "crop": [round(left, 4), round(top, 4), round(left + side, 4), round(top + side, 4)],
        "shape": "subject",
    }


def unmodelled_edit(
    rng: random.Random, category: str, aspect: float, scene: Scene | None = None
) -> dict:
    """One upload's edit in one of the UNMODELLED categories."""
    if category == "sharpen":
        edit = unsharp_edit(rng)
        roll = rng.random()
        if roll < 0.4:  # sharpened, more saturated and exported smaller
            edit |= {"saturation": round(rng.uniform(1.1, 1.3), 3), "side": 2048}
        elif roll < 0.7:  # exported smaller, then sharpened for the screen
            edit = {
                "side": rng.randint(1024, 2048),
                "screen_sharpen": [round(rng.uniform(0.5, 1.5), 2), rng.randint(50, 150)],
            }
        return edit
    if category == "clarity":
        edit = {"clarity": [round(rng.uniform(0.01, 0.04), 3), round(rng.uniform(0.3, 0.9), 2)]}
        return edit | (tone_edit(rng) if rng.random() < 0.5 else {})
    if category == "denoise":
        kind = rng.choice(["gauss", "bilateral", "median"])
        strength = {
            "gauss": round(rng.uniform(0.6, 1.6), 2),
            "bilateral": round(rng.uniform(20, 60)),
            "median": rng.choice([3, 5]),
        }[kind]
        return {"denoise": [kind, strength]} | (unsharp_edit(rng) if rng.random() < 0.4 else {})
    if category == "colour":
        edit: dict = {}
        roll = rng.random()
        if roll < 0.7:
            edit["wb"] = [round(rng.uniform(0.85, 1.15), 3), round(rng.uniform(0.85, 1.15), 3)]
        if roll > 0.4:
            added = rng.random() < 0.6
            edit["vignette"] = round(
                rng.uniform(0.15, 0.4) if added else -rng.uniform(0.1, 0.25), 3
            )
        return edit
    if category == "mono":
        if rng.random() < 0.35:  # the camera file is black and white, the upload in colour
            return {"grey_local": True} | (
                crop_edit(rng, 0.5, 0.9, aspect) if rng.random() < 0.5 else {}
            )
        roll = rng.random()
        if roll < 0.35:
            edit = {"mono": [round(rng.uniform(0.1, 1.0), 2) for _ in range(3)]}
        elif roll < 0.65:
            edit = {"mono_lab": True}
        else:
            edit = {"mono_hue": [rng.randrange(360), round(rng.uniform(0.15, 0.4), 2)]}
        return edit | ({"contrast": round(rng.uniform(1.0, 1.3), 3)} if rng.random() < 0.5 else {})
    if category == "framed":
        roll = rng.random()
        dark = rng.random() < 0.4
        colour = [15, 15, 15] if dark else [250, 250, 250]
        if roll < 0.3:
            edit = {"border": [round(rng.uniform(0.02, 0.08), 3), colour]}
        elif roll < 0.5:
            edit = {"frame": round(rng.uniform(0.03, 0.08), 3)}
        elif roll < 0.7:
            edit = {"pad": colour}
        else:
            edit = {}
        if roll >= 0.5 or rng.random() < 0.4:
            edit["watermark"] = rng.choice(["tl", "tr", "bl", "br"])
        if rng.random() < 0.3:
            edit |= crop_edit(rng, 0.5, 0.9, aspect)
        return edit
    if category == "smallexport":
        edit = {"side": rng.randint(800, 1600), "quality": rng.randint(60, 95)}
        if rng.random() < 0.5:
            edit["unsharp"] = [round(rng.uniform(0.5, 1.0), 2), rng.randint(50, 100)]
        return edit
    if category == "tinycrop":  # a distant bird: a crop to 8-15 % of the frame around it
        edit = subject_crop(rng, scene, 0.08, 0.15) if scene else crop_edit(rng, 0.08, 0.15, aspect)
        if rng.random() < 0.5:
            edit |= unsharp_edit(rng)
        if rng.random() < 0.3:
            edit |= tone_edit(rng)
        return edit
    assert category == "combo"
    parts = rng.sample(
        ["unsharp", "clarity", "denoise", "colour", "mono", "framed", "small", "crop", "tone"], 3
    )
    edit = {}
    for part in parts:
        if part == "small":
            edit |= {"side": rng.randint(1000, 1600), "quality": rng.randint(65, 92)}
        elif part == "crop":
            edit |= crop_edit(rng, 0.2, 0.6, aspect)
        elif part == "tone":
            edit |= tone_edit(rng)
        elif part == "unsharp":
            edit |= unsharp_edit(rng)
        else:
            found = unmodelled_edit(rng, part, aspect)
            found.pop("grey_local", None)
            edit |= found
    return edit


def plan_unmodelled(p: Planner) -> None:
    """Uploads edited in ways the tool does not model, and same-second HDR pairs."""
    rng = p.rng
    landscape = p.size[0] / p.size[1]
    counts = {c: 18 for c in UNMODELLED} | {"tinycrop": 20, "combo": 24}
    edited_days(
        p,
        UNMODELLED,
        counts,
        dt.date(2024, 1, 10),
        lambda category, scene: unmodelled_edit(rng, category, landscape, scene),
    )

    # -- HDR: the camera kept a normal and an HDR version of the same second; one uploaded --
    place = PLACES[3]
    days = p.days(dt.date(2024, 8, 1), 1 if p.small else 2)
    hdr_look = {"gamma": 0.8, "contrast": 0.9, "saturation": 1.15, "clarity": [0.02, 0.7]}
    for g in range(1 if p.small else 10):
        day = days[g % len(days)]
        when = p.times(day, 1, start=(8 + g, 0))[0]
        scene = p.scene()
        uploaded = rng.randrange(2)
        edit = rng.choice(
            [{}, tone_edit(rng), unsharp_edit(rng), crop_edit(rng, 0.5, 0.9, landscape)]
        )
        locals_ = []
        for k, name in enumerate(("normal", "HDR")):
            note = f"same-second pair, {name} version"
            note += f" (uploaded: {describe_edit(edit) or 'as it is'})" if k == uploaded else ""
            local = p.local("hdr", scene, when, place, None, note, camera=2, subsec=10 + 40 * k)
            if k == 1:
                i = p.job_index[local.path]
                p.jobs[i] = dataclasses.replace(p.jobs[i], develop=json.dumps(hdr_look))
            locals_.append(local)
        p.upload_shot(locals_[uploaded], edit, scene.subject, place)


# -- issue 25: edits drawn by a random editor, and bursts whose uploaded frame went through it ---


def random_edit(rng: random.Random, family: str) -> dict:
    """An upload's edit: one operation of family and 0-3 of the families not held out (nor
    added later)."""
    tuned = tuple(f for f in FAMILIES if f not in HELD_OUT and f not in LATER_FAMILIES)
    ops = pipeline(rng, family, tuned)
    return {"ops": ops, "quality": export_quality(ops, 95)}


def plan_families(p: Planner) -> None:
    """Each family's uploads (FAMILY_COUNT, 1 with --small), and hand-held bursts whose
    uploaded frame went through the random editor."""
    rng = p.rng
    counts = dict.fromkeys(FAMILIES, FAMILY_COUNT)
    early = tuple(f for f in FAMILIES if f not in LATER_FAMILIES)
    edited_days(
        p, early, counts, dt.date(2025, 1, 10), lambda family, scene: random_edit(rng, family)
    )
    place = PLACES[2]
    days = p.days(dt.date(2025, 9, 1), 1 if p.small else 2)
    for b in range(1 if p.small else FAMILY_BURSTS):
        day = days[b % len(days)]
        start = p.times(day, 1, start=(8 + b, 0))[0]
        frames = 3 if p.small else rng.randint(3, 5)
        scene = p.scene()
        views = handheld_views(rng, frames)
        chosen = rng.randrange(frames)
        # the corrections that bend a picture first: a burst frame must not pass for them
        family = ("lens", "perspective", "lens", "overlay", "localtone")[b % 5]
        edit = random_edit(rng, family)
        uploaded_burst(p, "fburst", scene, start, place, views, chosen, edit, b + 1)
    # Families added later are drawn last: the sets drawn before keep every picture.
    edited_days(
        p,
        LATER_FAMILIES,
        counts,
        dt.date(2025, 10, 10),
        lambda family, scene: random_edit(rng, family),
    )


# =============================================================================================
# Building
# =============================================================================================


def _work(args: tuple[Job, str]) -> str:
    return write_job(args[0], Path(args[1]))


def keep_only(planner: Planner, categories: set[str]) -> None:
    """Drop every local photo outside categories, and the uploads and files only they need."""
    kept = {path for path, note in planner.notes.items() if note["category"] in categories}
    exported = {
        path: job.path for job in planner.jobs for path, _ in job.exports if job.path in kept
    }
    observations = [
        o
        for o in planner.observations
        if any(ph["source"] in kept or ph["source"] in exported for ph in o["photos"])
        and all(
            ph["source"] in kept or ph["source"] in exported or ph["source"].startswith("inat_")
            for ph in o["photos"]
        )
    ]
    sources = {ph["source"] for o in observations for ph in o["photos"]}
    photo_ids = {ph["id"] for o in observations for ph in o["photos"]}
    planner.observations = observations
    planner.jobs = [job for job in planner.jobs if job.path in kept or job.path in sources]
    planner.truth = {path: v for path, v in planner.truth.items() if path in kept}
    planner.notes = {path: v for path, v in planner.notes.items() if path in kept}
    planner.unassociated = {k: v for k, v in planner.unassociated.items() if k in photo_ids}


def write_set(out: Path, planner: Planner, jobs: int | None = None) -> int:
    """Draw a planner's pictures under out and write its scenario, truth and manifest;
    returns how many processes drew."""
    work = [(job, str(out)) for job in planner.jobs]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if workers == 1:
        for item in work:
            _work(item)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_work, work, chunksize=1):
                pass
    scenario = {"users": [USER], "observations": planner.observations}
    (out / "scenario.json").write_text(
        json.dumps(scenario, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "truth.json").write_text(json.dumps(planner.truth, indent=2) + "\n", encoding="utf-8")
    manifest = {
        "seed": planner.seed,
        "small": planner.small,
        "pictures": planner.notes,
        "unassociated_inat_photos": {str(k): v for k, v in planner.unassociated.items()},
        "clock_offsets_minutes": planner.clock_offsets,
        "weak_day": planner.weak_day,
    }
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return workers


def build(
    out: Path,
    *,
    small: bool = False,
    seed: int = 1,
    jobs: int | None = None,
    quiet: bool = False,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write the whole set under ``out``; returns counts and the time it took."""
    started = time.monotonic()
    out = Path(out)
    for name in ("pictures", "inat_only", "edited"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    planner = plan(seed, small)
    if only:
        keep_only(planner, set(only))
    workers = write_set(out, planner, jobs)
    counts = {c: {"locals": 0, "expected": 0} for c in CATEGORIES}
    for path, photo_id in planner.truth.items():
        category = planner.notes[path]["category"]
        counts[category]["locals"] += 1
        counts[category]["expected"] += photo_id is not None
    seconds = time.monotonic() - started
    if not quiet:
        print(f"{'category':<10} {'local photos':>12} {'uploaded':>9}")
        for c in CATEGORIES:
            print(f"{c:<10} {counts[c]['locals']:>12} {counts[c]['expected']:>9}")
        print(
            f"{sum(len(o['photos']) for o in planner.observations)} iNaturalist photos in"
            f" {len(planner.observations)} observations; {len(planner.jobs)} pictures drawn"
            f" with {workers} process(es) in {seconds:.1f} s -> {out}"
        )
    return {"counts": counts, "seconds": seconds, "files": len(planner.jobs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (its pictures/ is replaced)")
    parser.add_argument(
        "--small",
        action="store_true",
        help="1600x1200 pictures, 1-3 cases per category (for tests)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--jobs", type=int, default=None, help="drawing processes (default: all cores)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated categories to build (default: all)"
    )
    args = parser.parse_args(argv)
    only = tuple(c for c in args.only.split(",") if c)
    unknown = set(only) - set(CATEGORIES)
    if unknown:
        parser.error(f"unknown categories: {', '.join(sorted(unknown))}")
    build(args.out, small=args.small, seed=args.seed, jobs=args.jobs, only=only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
