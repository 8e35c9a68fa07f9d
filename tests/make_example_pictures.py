"""Make example_pictures/ (pictures, EXIF and scenario.json) and tests/data/inat_only/.

Deterministic: the same numpy/Pillow/pyexiv2 versions give byte-identical files. Most pictures
are drawn here from seeded noise; two use public-domain (CC0) pictures shipped in the
scikit-image wheel (``skimage/data/chelsea.png`` and ``skimage/data/grass.png``), found through
an installed scikit-image or ``--skimage-data DIR`` (a folder holding those two files, e.g. from
``pip download --no-deps scikit-image`` unzipped). See example_pictures/SOURCES.md.

Run from anywhere: python tests/make_example_pictures.py [--skimage-data DIR] [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyexiv2
from PIL import Image, ImageDraw, ImageFilter
from support.geo import exif_degrees, exif_dms

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = "example_pictures"
INAT_ONLY = "tests/data/inat_only"
JPEG_QUALITY = 90

Array = np.ndarray

# The demo's taxonomy, so that --hierarchical-keywords and --darwin-core have lineages to write:
# (id, name, rank, common name, parent id). The observations' own taxon ids are iNaturalist's;
# the ancestors' ids (900001 and up) are made up.
TAXONOMY = [
    (900001, "Plantae", "kingdom", None, None),
    (900002, "Tracheophyta", "phylum", "Vascular Plants", 900001),
    (900003, "Magnoliopsida", "class", "Dicots", 900002),
    (900004, "Ranunculales", "order", None, 900003),
    (900005, "Papaveraceae", "family", "Poppies", 900004),
    (900006, "Eschscholzia", "genus", None, 900005),
    (48225, "Eschscholzia californica", "species", "California Poppy", 900006),
    (900101, "Animalia", "kingdom", "Animals", None),
    (900102, "Arthropoda", "phylum", "Arthropods", 900101),
    (900103, "Insecta", "class", "Insects", 900102),
    (900104, "Coleoptera", "order", "Beetles", 900103),
    (900105, "Coccinellidae", "family", "Lady Beetles", 900104),
    (900106, "Coccinella", "genus", None, 900105),
    (48484, "Coccinella septempunctata", "species", "Seven-spotted Lady Beetle", 900106),
    (900114, "Lepidoptera", "order", "Butterflies and Moths", 900103),
    (900115, "Nymphalidae", "family", "Brush-footed Butterflies", 900114),
    (900116, "Danaus", "genus", None, 900115),
    (900117, "Danaus plexippus", "species", "Monarch", 900116),
    (235968, "Danaus plexippus plexippus", "subspecies", None, 900117),
    (900122, "Chordata", "phylum", "Chordates", 900101),
    (900123, "Mammalia", "class", "Mammals", 900122),
    (900124, "Carnivora", "order", "Carnivorans", 900123),
    (900125, "Felidae", "family", "Felids", 900124),
    (900126, "Felis", "genus", None, 900125),
    (118552, "Felis catus", "species", "Domestic Cat", 900126),
    (900201, "Fungi", "kingdom", "Fungi", None),
    (900202, "Basidiomycota", "phylum", None, 900201),
    (900203, "Agaricomycetes", "class", None, 900202),
    (900204, "Agaricales", "order", "Gilled Mushrooms", 900203),
    (900205, "Amanitaceae", "family", None, 900204),
    (47347, "Amanita", "genus", None, 900205),
]


# -- procedural helpers ---------------------------------------------------------------------
def value_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> Array:
    """Smooth noise in [0, 1] with about ``cells`` bumps along the longest side."""
    gx = max(2, round(cells * w / max(h, w))) + 1
    gy = max(2, round(cells * h / max(h, w))) + 1
    grid = rng.random((gy, gx), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BICUBIC))


def fbm(
    rng: np.random.Generator, h: int, w: int, cells: float = 4, octaves: int = 6, gain: float = 0.5
) -> Array:
    total = np.zeros((h, w), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * value_noise(rng, h, w, cells * 2**octave)
        norm += amplitude
        amplitude *= gain
    total /= norm
    low, high = np.percentile(total, (1, 99))
    return np.clip((total - low) / (high - low + 1e-6), 0, 1)


def lerp(a: Array | tuple, b: Array | tuple, t: Array) -> Array:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def blur(rgb: Array, radius: float) -> Array:
    image = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32)


def blur1(mask: Array, radius: float) -> Array:
    image = Image.fromarray((np.clip(mask, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255


def over(base: Array, color: Array | tuple, alpha: Array) -> Array:
    """Composite ``color`` (H×W×3 or an RGB tuple) over ``base`` with coverage ``alpha``."""
    color = np.asarray(color, np.float32)
    return base + (color - base) * np.clip(alpha, 0, 1)[..., None]


def grid(h: int, w: int) -> tuple[Array, Array]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def bokeh(
    rng: np.random.Generator,
    base: Array,
    count: int,
    colors: list[tuple],
    radius: tuple[float, float],
    alpha: float,
    area: tuple[float, float, float, float],
) -> Array:
    """Soft out-of-focus discs of light."""
    h, w = base.shape[:2]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(count):
        r = rng.uniform(*radius)
        x = rng.uniform(area[0], area[2]) * w
        y = rng.uniform(area[1], area[3]) * h
        color = colors[rng.integers(len(colors))]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*color, int(255 * alpha)))
    layer = layer.filter(ImageFilter.GaussianBlur(radius[0] * 0.35))
    rgba = np.asarray(layer, np.float32)
    return over(base, rgba[..., :3], rgba[..., 3] / 255)


def mottle(rgb: Array, rng: np.random.Generator, amount: float = 0.35) -> Array:
    """Fine blotches of light and shade (out-of-focus foliage), so that the pictures'
    backgrounds differ in structure, not only in colour."""
    h, w = rgb.shape[:2]
    return rgb * (1 + amount * (fbm(rng, h, w, cells=max(h, w) / 24, octaves=3) - 0.5))[..., None]


def finish(
    rgb: Array, rng: np.random.Generator, vignette: float = 0.25, noise: float = 1.6
) -> Image.Image:
    """Lens vignetting and sensor noise; returns an 8-bit RGB picture."""
    h, w = rgb.shape[:2]
    xs, ys = grid(h, w)
    r2 = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
    rgb = rgb * (1 - vignette * np.clip(r2 / 2, 0, 1))[..., None]
    rgb = rgb + rng.normal(0, noise, rgb.shape).astype(np.float32)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


def poppy(
    rgb: Array,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    radius: float,
    tilt: float = 1.0,
    turn: float = 0.3,
    soft: float = 1.5,
) -> Array:
    """An open California poppy seen from above (tilt < 1 squashes it vertically)."""
    h, w = rgb.shape[:2]
    xs, ys = grid(h, w)
    dx, dy = xs - cx, (ys - cy) / tilt
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    wobble = (
        1
        + 0.06 * np.sin(3 * theta + rng.uniform(0, 6))
        + 0.03 * np.sin(7 * theta + rng.uniform(0, 6))
    )
    lobes = np.abs(np.cos(2 * (theta - turn))) ** 0.45
    edge = radius * (0.72 + 0.28 * lobes) * wobble
    t = np.clip(r / edge, 0, 1)
    petal = lerp((255, 205, 45), (244, 118, 8), t**0.8)
    veins = 1 - 0.10 * np.abs(np.sin(70 * theta + 4 * t)) ** 6 - 0.12 * (1 - lobes) ** 3
    texture = fbm(rng, h, w, cells=max(w, h) / max(radius, 1) * 2, octaves=3)
    petal = petal * (veins * (0.92 + 0.12 * texture))[..., None]
    out = over(rgb, petal, np.clip((edge - r) / soft, 0, 1))
    stamens = (r < 0.24 * radius) & (np.sin(40 * theta) * np.sin(r / 3) > 0.2)
    out = over(out, (250, 220, 90), blur1(stamens.astype(np.float32), soft) * 0.9)
    return over(out, (120, 150, 40), np.clip((0.07 * radius - r) / soft, 0, 1))


def grass_texture(grass: Image.Image, w: int, h: int, scale: float) -> Array:
    """The CC0 grass picture, mirror-tiled, scaled and coloured."""
    g = np.asarray(grass.convert("L"), np.float32) / 255
    tile = np.block([[g, g[:, ::-1]], [g[::-1], g[::-1, ::-1]]])
    tiles = np.tile(
        tile, (math.ceil(h / scale / tile.shape[0]) + 1, math.ceil(w / scale / tile.shape[1]) + 1)
    )
    big = Image.fromarray(tiles, "F").resize(
        (round(tiles.shape[1] * scale), round(tiles.shape[0] * scale)), Image.Resampling.BICUBIC
    )
    g = np.asarray(big)[:h, :w]
    return lerp((18, 38, 10), (150, 190, 80), np.clip(g * 1.1, 0, 1))


# -- the scenes -----------------------------------------------------------------------------
def poppy_meadow(grass: Image.Image) -> Image.Image:
    rng = np.random.default_rng(119)
    w, h = 1600, 1200
    _, ys = grid(h, w)
    far = lerp((38, 70, 28), (165, 178, 70), fbm(rng, h, w, cells=5))
    far = bokeh(
        rng,
        far,
        60,
        [(250, 170, 30), (240, 240, 200), (210, 220, 90)],
        (10, 30),
        0.5,
        (0, 0, 1, 0.45),
    )
    far = mottle(blur(far, 18), rng)
    near = grass_texture(grass, w, h, 3.2)
    near_soft = blur(near, 6)
    depth = np.clip((ys / h - 0.3) / 0.4, 0, 1)
    ground = lerp(np.zeros(1), np.ones(1), depth)[..., 0]
    near = near_soft + (near - near_soft) * np.clip((ys / h - 0.55) / 0.3, 0, 1)[..., None]
    rgb = over(far, near, ground)
    for _ in range(5):  # out-of-focus poppies further away
        px, py = rng.uniform(0.05, 0.95) * w, rng.uniform(0.22, 0.42) * h
        rgb = poppy(rgb, rng, px, py, rng.uniform(25, 45), tilt=0.45, soft=6)
    rgb = blur(rgb, 1.0)
    # stem and leaves of the main flower
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    points = [(880 + 60 * math.sin(k / 12) - 3 * k, 620 + 6 * k) for k in range(100)]
    draw.line(points, fill=(88, 128, 70, 255), width=16, joint="curve")
    for k in range(14):
        x0, y0 = 820 + rng.uniform(-200, 200), 1200
        ang = math.radians(rng.uniform(-130, -50))
        length = rng.uniform(150, 320)
        x1, y1 = x0 + length * math.cos(ang), y0 + length * math.sin(ang)
        draw.line((x0, y0, x1, y1), fill=(95, 140, 105, 255), width=5)
        for j in range(1, 6):
            fx, fy = x0 + (x1 - x0) * j / 6, y0 + (y1 - y0) * j / 6
            side = 1 if (j + k) % 2 else -1
            draw.line((fx, fy, fx + side * 40, fy - 30), fill=(105, 150, 115, 255), width=3)
    leaves = np.asarray(layer.filter(ImageFilter.GaussianBlur(1.2)), np.float32)
    rgb = over(rgb, leaves[..., :3], leaves[..., 3] / 255)
    rgb = poppy(rgb, rng, 880, 560, 230, tilt=0.8, turn=0.25)
    return finish(rgb, rng)


def poppy_closeup() -> Image.Image:
    rng = np.random.default_rng(2043)
    w, h = 1200, 900
    rgb = lerp((12, 35, 14), (70, 110, 40), fbm(rng, h, w, cells=3))
    rgb = bokeh(rng, rgb, 25, [(120, 170, 60), (230, 230, 200)], (25, 60), 0.35, (0, 0, 1, 1))
    rgb = mottle(blur(rgb, 20), rng)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.line([(430 - 2 * k, 470 + 5 * k) for k in range(90)], fill=(90, 130, 70, 255), width=22)
    draw.line([(930 + k, 560 + 4 * k) for k in range(90)], fill=(90, 130, 70, 255), width=14)
    draw.ellipse((890, 380, 985, 600), fill=(80, 125, 60, 255))  # a closed bud
    draw.polygon([(905, 400), (937, 300), (970, 400)], fill=(120, 150, 80, 255))
    stems = np.asarray(layer.filter(ImageFilter.GaussianBlur(1.5)), np.float32)
    rgb = over(rgb, stems[..., :3], stems[..., 3] / 255)
    rgb = poppy(rgb, rng, 440, 400, 360, tilt=0.62, turn=0.6, soft=2.0)
    return finish(rgb, rng, vignette=0.35)


def ladybird_leaf() -> Image.Image:
    rng = np.random.default_rng(123)
    w, h = 1600, 1200
    xs, ys = grid(h, w)
    rgb = lerp((25, 45, 20), (120, 140, 70), fbm(rng, h, w, cells=4))
    rgb = bokeh(rng, rgb, 30, [(200, 210, 150), (90, 120, 60)], (30, 70), 0.35, (0, 0, 1, 1))
    rgb = mottle(blur(rgb, 25), rng)
    # the leaf, in its own coordinates (u along the midrib, v across)
    angle = math.radians(-18)
    cx, cy, half_len, half_wid = 800, 640, 720, 330
    u = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) / half_len
    v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
    width = half_wid * np.clip(1 - u**2, 0, 1) ** 0.75 * (1 - 0.25 * u)
    inside = np.clip((width - np.abs(v)) / 2, 0, 1)
    vn = np.abs(v) / np.maximum(width, 1)
    veins = np.abs(((u * 7 + vn * 1.6) % 1) - 0.5) < 0.025 + 0.0 * vn
    leaf = lerp((40, 95, 25), (105, 160, 50), fbm(rng, h, w, cells=10, octaves=4))
    leaf = leaf * (0.78 + 0.22 * (1 - vn**2))[..., None]
    leaf = over(leaf, (150, 190, 90), blur1((veins & (vn < 0.95)).astype(np.float32), 1.2) * 0.6)
    leaf = over(leaf, (170, 200, 110), np.clip((5 - np.abs(v)) / 2, 0, 1) * (np.abs(u) < 1))
    rgb = over(rgb, mottle(leaf, rng, 0.2), inside)
    stalk = (u < -0.95) & (u > -1.25) & (np.abs(v) < 9)
    rgb = over(rgb, (120, 150, 70), blur1(stalk.astype(np.float32), 1.5))
    # the ladybird, facing along the leaf
    bx, by = 905, 600
    bu = (xs - bx) * math.cos(angle) + (ys - by) * math.sin(angle)
    bv = -(xs - bx) * math.sin(angle) + (ys - by) * math.cos(angle)
    shadow = blur1(((bu - 14) / 125) ** 2 + ((bv - 18) / 100) ** 2 < 1, 18)
    rgb = rgb * (1 - 0.45 * shadow)[..., None]
    legs = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(legs)
    for side in (-1, 1):
        for k, du in enumerate((-60, 0, 55)):
            x0, y0 = _leaf_xy(bx, by, angle, du, side * 60)
            x1, y1 = _leaf_xy(bx, by, angle, du + 25 * (k - 1), side * 125)
            draw.line((x0, y0, x1, y1), fill=255, width=6)
    rgb = over(rgb, (15, 12, 10), np.asarray(legs, np.float32) / 255)
    head = ((bu - 118) / 42) ** 2 + (bv / 62) ** 2
    rgb = over(rgb, (18, 16, 14), np.clip((1 - head) * 40, 0, 1))
    for side in (-1, 1):
        eye = ((bu - 120) / 14) ** 2 + ((bv - side * 33) / 16) ** 2
        rgb = over(rgb, (235, 230, 215), np.clip((1 - eye) * 8, 0, 1))
    dome = (bu / 112) ** 2 + (bv / 96) ** 2
    z = np.sqrt(np.clip(1 - dome, 0, 1))
    shell = lerp((120, 8, 6), (225, 35, 20), z**0.6)
    spot_mask = np.zeros((h, w), np.float32)
    for su, sv, sr in (
        (75, 0, 26),
        (20, 48, 22),
        (20, -48, 22),
        (-55, 35, 24),
        (-55, -35, 24),
        (-20, 75, 14),
        (-20, -75, 14),
    ):
        spot_mask = np.maximum(
            spot_mask, np.clip((1 - ((bu - su) ** 2 + (bv - sv) ** 2) / sr**2) * 12, 0, 1)
        )
    shell = over(shell, (20, 14, 12), spot_mask)
    shell = over(shell, (25, 15, 12), np.clip((2.5 - np.abs(bv)) / 1.5, 0, 1) * (bu < 95))
    highlight = np.exp(-(((bu - 30) / 28) ** 2 + ((bv + 30) / 20) ** 2))
    shell = shell + (255 - shell) * (0.75 * highlight)[..., None]
    rgb = over(rgb, shell, np.clip((1 - dome) * 60, 0, 1))
    return finish(rgb, rng)


def _leaf_xy(cx: float, cy: float, angle: float, u: float, v: float) -> tuple[float, float]:
    return (
        cx + u * math.cos(angle) - v * math.sin(angle),
        cy + u * math.sin(angle) + v * math.cos(angle),
    )


def fly_agaric_upright() -> Image.Image:
    rng = np.random.default_rng(127)
    w, h = 1200, 1600
    xs, ys = grid(h, w)
    back = lerp((20, 28, 16), (85, 95, 55), fbm(rng, h, w, cells=4))
    for _ in range(7):  # distant trunks
        x = rng.uniform(0, w)
        trunk = np.clip((rng.uniform(25, 60) - np.abs(xs - x)) / 3, 0, 1) * (ys < 0.5 * h)
        back = over(back, (35, 28, 22), trunk * 0.8)
    back = mottle(blur(back, 22), rng)
    litter = lerp((70, 48, 28), (150, 110, 62), fbm(rng, h, w, cells=8, octaves=5))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    palette = [
        (150, 95, 40),
        (175, 120, 55),
        (110, 70, 35),
        (190, 150, 80),
        (95, 60, 30),
        (130, 120, 60),
    ]
    for _ in range(900):
        x, y = rng.uniform(0, w), rng.uniform(0.3, 1.05) * h
        length = rng.uniform(20, 70) * (0.4 + y / h)
        ang = rng.uniform(0, math.pi)
        pts = [
            (x + length * math.cos(ang + d) * s, y + 0.45 * length * math.sin(ang + d) * s)
            for d, s in ((0, 1), (1.9, 0.35), (math.pi, 1), (math.pi + 1.9, 0.35))
        ]
        draw.polygon(pts, fill=(*palette[rng.integers(len(palette))], 235))
    leaves = np.asarray(layer, np.float32)
    litter = over(litter, leaves[..., :3], leaves[..., 3] / 255)
    moss = fbm(rng, h, w, cells=6) > 0.72
    litter = over(litter, (70, 105, 35), blur1(moss.astype(np.float32), 6) * 0.8)
    ground = np.clip((ys / h - 0.36) / 0.1, 0, 1)
    sharp = np.clip((ys / h - 0.5) / 0.25, 0, 1)
    litter = blur(litter, 5) + (litter - blur(litter, 5)) * sharp[..., None]
    rgb = over(back, mottle(litter, rng, 0.25), ground)
    cx, cap_y, foot_y = 610, 820, 1330
    shadow = blur1(((xs - cx - 40) / 260) ** 2 + ((ys - foot_y - 10) / 45) ** 2 < 1, 25)
    rgb = rgb * (1 - 0.5 * shadow)[..., None]
    # stem, with a ring and a bulbous foot
    half = (
        52 + 10 * (ys - cap_y) / (foot_y - cap_y) + 45 * np.exp(-(((ys - foot_y + 40) / 45) ** 2))
    )
    across = (xs - cx) / half
    stem_shade = 0.62 + 0.38 * np.sqrt(np.clip(1 - across**2, 0, 1))
    stem = (
        lerp((170, 160, 135), (248, 244, 230), stem_shade)
        * (0.95 + 0.05 * fbm(rng, h, w, cells=30, octaves=2))[..., None]
    )
    stem_mask = np.clip((1 - np.abs(across)) * half / 2, 0, 1) * (ys > cap_y) * (ys < foot_y + 5)
    rgb = over(rgb, stem, stem_mask)
    ring = (np.abs(ys - 960 - 6 * np.sin((xs - cx) / 9)) < 16) & (np.abs(xs - cx) < 80)
    rgb = over(rgb, (238, 232, 215), blur1(ring.astype(np.float32), 1.5))
    gills = (ys > cap_y - 20) & (((xs - cx) / 300) ** 2 + ((ys - cap_y + 20) / 34) ** 2 < 1)
    rgb = over(rgb, (225, 215, 190), blur1(gills.astype(np.float32), 2))
    # the cap, a squashed dome
    du, dv = (xs - cx) / 320, (ys - cap_y) / 230
    cap = du**2 + dv**2
    inside = np.clip((1 - cap) * 60, 0, 1) * np.clip((cap_y + 6 - ys) / 3, 0, 1)
    z = np.sqrt(np.clip(1 - cap, 0, 1))
    light = 0.45 + 0.55 * np.clip(z * 0.8 - 0.35 * du - 0.2 * dv, 0, 1)
    cap_rgb = lerp((240, 120, 35), (215, 28, 18), np.clip(z * 1.4, 0, 1)) * light[..., None]
    warts = np.zeros((h, w), np.float32)
    for _ in range(70):
        a = rng.uniform(-math.pi, 0)
        rr = math.sqrt(rng.uniform(0.02, 0.95))
        wx, wy = cx + 320 * rr * math.cos(a), cap_y + 230 * rr * math.sin(a)
        size = rng.uniform(7, 17) * (1.1 - 0.5 * rr)
        warts = np.maximum(
            warts,
            np.clip((1 - ((xs - wx) / size) ** 2 - ((ys - wy) / (size * 0.7)) ** 2) * 4, 0, 1),
        )
    cap_rgb = over(cap_rgb, (245, 238, 215), warts * 0.95)
    rgb = over(rgb, cap_rgb, inside)
    return finish(rgb, rng, vignette=0.3)


def monarch_on_thistle() -> Image.Image:
    rng = np.random.default_rng(131)
    w, h = 1600, 1200
    xs, ys = grid(h, w)
    sky = lerp((105, 160, 225), (205, 222, 238), np.clip(ys / h, 0, 1))
    clouds = np.clip((fbm(rng, h, w, cells=3) - 0.55) * 3, 0, 1)
    rgb = over(sky, (245, 247, 250), clouds * 0.7)
    hills = ys > 0.3 * h + 60 * np.sin(xs / 260) + 30 * np.sin(xs / 97)
    bushes = lerp((45, 80, 30), (130, 150, 70), fbm(rng, h, w, cells=6))
    bushes = bokeh(rng, bushes, 40, [(230, 220, 120), (60, 90, 40)], (20, 50), 0.4, (0, 0.3, 1, 1))
    rgb = over(
        blur(rgb, 14), mottle(blur(bushes, 14), rng, 0.45), blur1(hills.astype(np.float32), 14)
    )
    fx, fy = 760, 840
    plant = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(plant)
    draw.line(
        [(fx + 25 * math.sin(k / 15), fy + 6 * k) for k in range(70)],
        fill=(80, 110, 60, 255),
        width=20,
        joint="curve",
    )
    for _ in range(420):  # purple florets fanning out of the head
        a = rng.uniform(0.2, math.pi - 0.2)
        length = rng.uniform(60, 130)
        x0 = fx + rng.uniform(-60, 60)
        shade = rng.uniform(0.7, 1.1)
        color = (*(int(min(255, c * shade)) for c in (185, 70, 170)), 255)
        draw.line(
            (x0, fy + 10, x0 + length * math.cos(a), fy + 10 - length * math.sin(a)),
            fill=color,
            width=4,
        )
    draw.ellipse((fx - 85, fy, fx + 85, fy + 130), fill=(90, 120, 65, 255))
    for k in range(9):  # spiny bracts on the head
        for j in range(7):
            bx, by = fx - 70 + 18 * j + (k % 2) * 9, fy + 12 + 13 * k
            if ((bx - fx) / 85) ** 2 + ((by - fy - 65) / 65) ** 2 < 0.9:
                draw.line((bx, by, bx + 10, by - 12), fill=(140, 160, 100, 255), width=3)
    plant_arr = np.asarray(plant.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    rgb = over(rgb, plant_arr[..., :3], plant_arr[..., 3] / 255)
    # the butterfly, drawn flat then turned
    bw, bh = 900, 700
    fly = Image.new("RGBA", (bw, bh), (0, 0, 0, 0))
    draw = ImageDraw.Draw(fly)
    mx, my = bw // 2, bh // 2
    for side in (-1, 1):
        fore = [
            (mx, my - 30),
            (mx + side * 150, my - 230),
            (mx + side * 330, my - 290),
            (mx + side * 420, my - 250),
            (mx + side * 370, my - 80),
            (mx + side * 200, my - 5),
            (mx, my + 10),
        ]
        hind = [
            (mx, my),
            (mx + side * 210, my - 10),
            (mx + side * 310, my + 70),
            (mx + side * 290, my + 190),
            (mx + side * 170, my + 250),
            (mx + side * 50, my + 150),
        ]
        for wing in (fore, hind):
            draw.polygon(wing, fill=(22, 18, 15, 255))
            inner = [(mx + (x - mx) * 0.85 + side * 6, my + (y - my) * 0.85) for x, y in wing]
            draw.polygon(inner, fill=(236, 122, 22, 255))
            for x, y in wing[1:-1]:
                draw.line((mx, my, x, y), fill=(22, 18, 15, 255), width=7)
            for a, b in itertools.pairwise(wing[1:-1]):
                for f in (0.25, 0.5, 0.75):
                    px, py = a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
                    px, py = mx + (px - mx) * 0.94, my + (py - my) * 0.94
                    draw.ellipse((px - 5, py - 5, px + 5, py + 5), fill=(245, 240, 230, 255))
        for k in range(3):  # pale spots near the forewing tip
            px, py = mx + side * (330 + 22 * k), my - 240 + 30 * k
            draw.ellipse((px - 9, py - 7, px + 9, py + 7), fill=(250, 215, 140, 255))
    draw.ellipse((mx - 16, my - 90, mx + 16, my + 160), fill=(25, 20, 18, 255))
    draw.ellipse((mx - 22, my - 125, mx + 22, my - 80), fill=(25, 20, 18, 255))
    for side in (-1, 1):
        draw.line((mx, my - 115, mx + side * 90, my - 290), fill=(25, 20, 18, 255), width=4)
        draw.ellipse(
            (mx + side * 90 - 8, my - 298, mx + side * 90 + 8, my - 282), fill=(25, 20, 18, 255)
        )
    fly = fly.resize((bw * 3 // 4, bh * 3 // 4), Image.Resampling.LANCZOS)
    fly = fly.rotate(-12, resample=Image.Resampling.BICUBIC, expand=True)
    fly = fly.filter(ImageFilter.GaussianBlur(0.8))
    canvas = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    canvas.paste(fly, (fx - fly.width // 2 + 190, fy - 330 - fly.height // 2))
    fly_arr = np.asarray(canvas, np.float32)
    rgb = over(rgb, fly_arr[..., :3], fly_arr[..., 3] / 255)
    return finish(rgb, rng)


def hills_landscape() -> Image.Image:
    rng = np.random.default_rng(135)
    w, h = 1600, 1200
    xs, ys = grid(h, w)
    rgb = lerp((80, 135, 205), (190, 210, 228), np.clip(ys / (0.55 * h), 0, 1))
    clouds = np.clip((fbm(rng, h, w, cells=4) - 0.5) * 2.5, 0, 1) * np.clip(
        1 - ys / (0.5 * h), 0, 1
    )
    rgb = over(rgb, (250, 250, 252), clouds)
    layers = [
        (0.42, (120, 140, 160), 90, 2.0),
        (0.52, (85, 115, 95), 110, 3.0),
        (0.66, (70, 120, 45), 140, 4.5),
    ]
    for base, color, amplitude, cells in layers:
        ridge = value_noise(rng, 1, w, cells)[0] * 0.7 + value_noise(rng, 1, w, cells * 4)[0] * 0.3
        top = base * h + amplitude * (ridge - 0.5) * 2
        land = lerp(color, tuple(c * 0.7 for c in color), fbm(rng, h, w, cells=cells * 3))
        land = mottle(land, rng, 0.3)
        rgb = over(rgb, land, np.clip((ys - top[None, :]) / 1.5, 0, 1))
    trees = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(trees)
    for _ in range(26):  # oaks on the near hill
        x, y = rng.uniform(0, w), rng.uniform(0.7, 0.86) * h
        size = rng.uniform(25, 60) * (y / h)
        draw.ellipse(
            (x - size * 1.1, y + size * 0.55, x + size * 1.3, y + size * 0.95),
            fill=(30, 55, 20, 150),
        )
        for _ in range(7):
            ox, oy = rng.normal(0, size * 0.5), rng.normal(0, size * 0.3)
            r = size * rng.uniform(0.45, 0.7)
            draw.ellipse(
                (x + ox - r, y + oy - r, x + ox + r, y + oy + r),
                fill=(38 + int(rng.integers(20)), 62 + int(rng.integers(25)), 28, 255),
            )
        draw.line((x, y, x, y + size * 0.7), fill=(50, 40, 30, 255), width=max(2, int(size / 8)))
    tree_arr = np.asarray(trees.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    rgb = over(rgb, tree_arr[..., :3], tree_arr[..., 3] / 255)
    straw = fbm(rng, h, w, cells=80, octaves=2)
    grass = lerp((120, 135, 60), (200, 190, 120), straw)
    rgb = over(rgb, grass, np.clip((ys - 0.9 * h - 25 * np.sin(xs / 180)) / 4, 0, 1))
    return finish(rgb, rng, vignette=0.2)


# -- EXIF -----------------------------------------------------------------------------------
dms = exif_dms  # the EXIF rational triple, in hundredths of a second, as in support/geo


def with_exif(picture: Image.Image, tags: dict[str, str], orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    data = pyexiv2.ImageData(buffer.getvalue())
    try:
        exif = {
            "Exif.Image.Orientation": str(orientation),
            "Exif.Image.XResolution": "72/1",
            "Exif.Image.YResolution": "72/1",
            "Exif.Image.ResolutionUnit": "2",
            "Exif.Photo.PixelXDimension": str(picture.width),
            "Exif.Photo.PixelYDimension": str(picture.height),
            **tags,
        }
        data.modify_exif(exif)
        return data.get_bytes()
    finally:
        data.close()


def camera_tags(
    make: str, model: str, when: str, gps: tuple[float, float, float] | None, **extra: str
) -> dict[str, str]:
    tags = {
        "Exif.Image.Make": make,
        "Exif.Image.Model": model,
        "Exif.Image.DateTime": when,
        "Exif.Photo.DateTimeOriginal": when,
        "Exif.Photo.DateTimeDigitized": when,
        **extra,
    }
    if gps is not None:
        lat, lng, alt = gps
        tags.update(
            {
                "Exif.GPSInfo.GPSVersionID": "2 3 0 0",
                "Exif.GPSInfo.GPSLatitudeRef": "N" if lat >= 0 else "S",
                "Exif.GPSInfo.GPSLatitude": dms(lat),
                "Exif.GPSInfo.GPSLongitudeRef": "E" if lng >= 0 else "W",
                "Exif.GPSInfo.GPSLongitude": dms(lng),
                "Exif.GPSInfo.GPSAltitudeRef": "0",
                "Exif.GPSInfo.GPSAltitude": f"{round(alt * 10)}/10",
            }
        )
    return tags


def photo_location(tags: dict[str, str]) -> str:
    """The observation location iNaturalist takes from a photo's GPS tags."""
    lat = exif_degrees(tags["Exif.GPSInfo.GPSLatitude"], tags["Exif.GPSInfo.GPSLatitudeRef"])
    lng = exif_degrees(tags["Exif.GPSInfo.GPSLongitude"], tags["Exif.GPSInfo.GPSLongitudeRef"])
    return f"{lat:.6f},{lng:.6f}"


FUJI = {
    "Exif.Photo.ExposureTime": "1/500",
    "Exif.Photo.FNumber": "56/10",
    "Exif.Photo.ISOSpeedRatings": "200",
    "Exif.Photo.FocalLength": "550/10",
    "Exif.Photo.LensModel": "XF18-55mmF2.8-4 R LM OIS",
}


# -- everything -----------------------------------------------------------------------------
def find_skimage_data(given: Path | None) -> Path:
    if given is not None:
        return given
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "scikit-image not found: install it into this Python, or pass "
            "--skimage-data DIR holding chelsea.png and grass.png from its wheel"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def build(out: Path, skimage_data: Path) -> list[Path]:
    """Write every file under ``out`` (a repository root); returns the paths written."""
    grass = Image.open(skimage_data / "grass.png")
    chelsea = Image.open(skimage_data / "chelsea.png").convert("RGB")
    chelsea.info = {}
    day1 = "2021:02:01"
    pictures: dict[str, tuple[Image.Image, dict[str, str], int]] = {}
    gps = {
        "dscf0119.jpg": (37.403412, -122.238275, 121.0),
        "dscf0123.jpg": (37.403891, -122.237534, 118.5),
        "dscf0127.jpg": (37.405027, -122.236011, 109.0),
        "dscf0131.jpg": (37.406718, -122.233492, 131.5),
        "dscf0135.jpg": (37.407264, -122.232118, 140.0),
    }
    pictures["dscf0119.jpg"] = (
        poppy_meadow(grass),
        camera_tags("FUJIFILM", "X-T30", f"{day1} 10:15:42", gps["dscf0119.jpg"], **FUJI),
        1,
    )
    pictures["dscf0123.jpg"] = (
        ladybird_leaf(),
        camera_tags("FUJIFILM", "X-T30", f"{day1} 10:21:37", gps["dscf0123.jpg"], **FUJI),
        1,
    )
    # stored sideways: the camera was held upright and wrote Orientation 6
    upright = fly_agaric_upright()
    pictures["dscf0127.jpg"] = (
        upright.transpose(Image.Transpose.ROTATE_90),
        camera_tags("FUJIFILM", "X-T30", f"{day1} 10:34:11", gps["dscf0127.jpg"], **FUJI),
        6,
    )
    pictures["dscf0131.jpg"] = (
        monarch_on_thistle(),
        camera_tags("FUJIFILM", "X-T30", f"{day1} 10:52:06", gps["dscf0131.jpg"], **FUJI),
        1,
    )
    pictures["dscf0135.jpg"] = (
        hills_landscape(),
        camera_tags("FUJIFILM", "X-T30", f"{day1} 10:58:20", gps["dscf0135.jpg"], **FUJI),
        1,
    )
    pictures["img_2043.jpg"] = (
        chelsea,
        camera_tags(
            "Canon",
            "Canon EOS 80D",
            "2021:02:14 16:40:27",
            None,
            **{
                "Exif.Photo.ExposureTime": "1/60",
                "Exif.Photo.FNumber": "40/10",
                "Exif.Photo.ISOSpeedRatings": "800",
                "Exif.Photo.FocalLength": "500/10",
            },
        ),
        1,
    )
    phone = camera_tags(
        "Google",
        "Pixel 4a",
        f"{day1} 10:17:02",
        (37.403398, -122.238301, 119.0),
        **{
            "Exif.Photo.ExposureTime": "1/1200",
            "Exif.Photo.FNumber": "173/100",
            "Exif.Photo.ISOSpeedRatings": "55",
            "Exif.Photo.FocalLength": "438/100",
        },
    )

    written = []
    for folder, name, (picture, tags, orientation) in [
        *((EXAMPLES, name, value) for name, value in pictures.items()),
        (INAT_ONLY, "PXL_20210201_181702345.jpg", (poppy_closeup(), phone, 1)),
    ]:
        target = out / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(with_exif(picture, tags, orientation))
        written.append(target)

    def where(name: str) -> str:
        return photo_location(pictures[name][1])

    inat_only = f"../{INAT_ONLY}/PXL_20210201_181702345.jpg"
    scenario = {
        "users": [{"id": 1001, "login": "demo_naturalist", "name": "Demo Naturalist"}],
        "observations": [
            {
                "id": 68980359,
                "user": "demo_naturalist",
                "observed_on": "2021-02-01",
                "time_observed_at": "2021-02-01T10:15:00-08:00",
                "location": where("dscf0119.jpg"),
                "obscured": False,
                "positional_accuracy": 8,
                "place_guess": "Jasper Ridge, CA, USA",
                "created_at": "2021-02-01T19:02:11-08:00",
                "updated_at": "2021-02-03T07:45:30-08:00",
                "quality_grade": "research",
                "taxon": {
                    "id": 48225,
                    "name": "Eschscholzia californica",
                    "rank": "species",
                    "preferred_common_name": "California Poppy",
                    "iconic_taxon_name": "Plantae",
                },
                "photos": [
                    {"id": 111827921, "observation_photo_id": 104339082, "source": "dscf0119.jpg"},
                    {"id": 111827934, "observation_photo_id": 104339095, "source": inat_only},
                    # The same picture again, cropped, with a lower id: the whole upload wins.
                    {
                        "id": 111827905,
                        "observation_photo_id": 104339071,
                        "source": "dscf0119.jpg",
                        "crop": [0.24, 0.2, 0.9, 0.86],
                    },
                ],
            },
            {
                "id": 68981027,
                "user": "demo_naturalist",
                "observed_on": "2021-02-01",
                "time_observed_at": "2021-02-01T10:21:00-08:00",
                "location": where("dscf0123.jpg"),
                "obscured": False,
                "positional_accuracy": 8,
                "place_guess": "Jasper Ridge, CA, USA",
                "created_at": "2021-02-01T19:04:48-08:00",
                "updated_at": "2021-02-01T19:04:48-08:00",
                "quality_grade": "needs_id",
                "taxon": {
                    "id": 48484,
                    "name": "Coccinella septempunctata",
                    "rank": "species",
                    "preferred_common_name": "Seven-spotted Lady Beetle",
                    "iconic_taxon_name": "Insecta",
                },
                "photos": [
                    {
                        "id": 111829388,
                        "observation_photo_id": 104340501,
                        "source": "dscf0123.jpg",
                        "crop": [0.08, 0.12, 0.88, 0.92],
                    },
                ],
            },
            {
                "id": 68981570,
                "user": "demo_naturalist",
                "observed_on": "2021-02-01",
                "time_observed_at": "2021-02-01T10:34:00-08:00",
                "location": where("dscf0127.jpg"),
                "obscured": False,
                "positional_accuracy": 12,
                "place_guess": "Jasper Ridge, CA, USA",
                "created_at": "2021-02-01T19:07:02-08:00",
                "updated_at": "2021-02-01T19:07:02-08:00",
                "quality_grade": "needs_id",
                "taxon": {
                    "id": 47347,
                    "name": "Amanita",
                    "rank": "genus",
                    "iconic_taxon_name": "Fungi",
                },
                "photos": [
                    {"id": 111830642, "observation_photo_id": 104341716, "source": "dscf0127.jpg"},
                ],
            },
            {
                "id": 68982204,
                "user": "demo_naturalist",
                "observed_on": "2021-02-01",
                "time_observed_at": "2021-02-01T10:52:00-08:00",
                "location": where("dscf0131.jpg"),
                "obscured": False,
                "positional_accuracy": 10,
                "place_guess": "Jasper Ridge, CA, USA",
                "created_at": "2021-02-01T19:10:37-08:00",
                "updated_at": "2021-02-02T11:20:05-08:00",
                "quality_grade": "research",
                "taxon": {
                    "id": 235968,
                    "name": "Danaus plexippus plexippus",
                    "rank": "subspecies",
                    "iconic_taxon_name": "Insecta",
                },
                "photos": [
                    {
                        "id": 111832117,
                        "observation_photo_id": 104343122,
                        "source": "dscf0131.jpg",
                        "quality": 80,
                    },
                ],
            },
            {
                # A later poppy seen near the hills picture: it has no local twin, so the hills
                # picture is compared with it and refused (a red score in the HTML log).
                "id": 68982877,
                "user": "demo_naturalist",
                "observed_on": "2021-02-01",
                "time_observed_at": "2021-02-01T10:57:00-08:00",
                "location": where("dscf0135.jpg"),
                "obscured": False,
                "positional_accuracy": 12,
                "place_guess": "Jasper Ridge, CA, USA",
                "created_at": "2021-02-01T19:12:40-08:00",
                "updated_at": "2021-02-01T19:12:40-08:00",
                "quality_grade": "needs_id",
                "taxon": {
                    "id": 48225,
                    "name": "Eschscholzia californica",
                    "rank": "species",
                    "preferred_common_name": "California Poppy",
                    "iconic_taxon_name": "Plantae",
                },
                "photos": [
                    {
                        "id": 111833504,
                        "observation_photo_id": 104344390,
                        "source": "../tests/data/inat_only/PXL_20210201_181702345.jpg",
                        "crop": [0.15, 0.1, 0.85, 0.8],
                    },
                ],
            },
            {
                "id": 69974211,
                "user": "demo_naturalist",
                "observed_on": "2021-02-14",
                "time_observed_at": "2021-02-14T16:40:00-08:00",
                "location": "37.441883,-122.143021",
                "obscured": True,
                "positional_accuracy": 30,
                "place_guess": "Palo Alto, CA, USA",
                "created_at": "2021-02-14T20:31:55-08:00",
                "updated_at": "2021-02-14T20:31:55-08:00",
                "quality_grade": "casual",
                "taxon": {
                    "id": 118552,
                    "name": "Felis catus",
                    "rank": "species",
                    "preferred_common_name": "Domestic Cat",
                    "iconic_taxon_name": "Mammalia",
                },
                "photos": [
                    {"id": 113940562, "observation_photo_id": 106359877, "source": "img_2043.jpg"},
                ],
            },
        ],
    }
    scenario["taxa"] = [
        {
            "id": i,
            "name": n,
            "rank": r,
            **({"preferred_common_name": c} if c else {}),
            "parent_id": p,
        }
        for i, n, r, c, p in TAXONOMY
    ]
    target = out / EXAMPLES / "scenario.json"
    target.write_text(json.dumps(scenario, indent=2) + "\n", encoding="utf-8")
    written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skimage-data",
        type=Path,
        default=None,
        help="folder holding scikit-image's chelsea.png and grass.png",
    )
    parser.add_argument("--out", type=Path, default=ROOT, help="repository root to write into")
    parser.add_argument(
        "--check",
        action="store_true",
        help="build into a temporary folder and compare with --out's files",
    )
    args = parser.parse_args()
    data = find_skimage_data(args.skimage_data)
    if not args.check:
        for path in build(args.out, data):
            print(f"{path.relative_to(args.out)}  {path.stat().st_size:>8} bytes")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        differ = []
        for path in build(Path(scratch), data):
            committed = args.out / path.relative_to(scratch)
            if not committed.is_file() or committed.read_bytes() != path.read_bytes():
                differ.append(path.relative_to(scratch))
    for path in differ:
        print(f"differs: {path}")
    print("identical" if not differ else f"{len(differ)} file(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
