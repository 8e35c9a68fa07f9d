"""Benchmark for GitHub issue 4: how inat_photos.py behaves on a big archive, run after run.

Generates (deterministically; kept in DIR and reused when the parameters match) an archive of N
camera-size JPEGs (4000x3000, some 3000x4000 or stored sideways with an EXIF Orientation; JPEG
quality 90; EXIF DateTimeOriginal, GPS, Make and Model) spread over many days, each a distinct
procedural scene, and a scenario for tests/fake_inat.py: about 0.15 N observations of 1 to 3
photos, most of them resized (sometimes cropped or turned) uploads of local photos, some taken
with a phone and not in the archive, plus a few hundred observations on days without local
photos, inside and outside the archive's date range.

The fake server then answers like iNaturalist from far away: LATENCY s per answer, photos at
BANDWIDTH bytes/s, at most RATE API requests per second (429 above). The CLI runs three times
on a copy of the archive, with its own cache and no --logfile:

1. first run (empty cache),
2. unchanged rerun,
3. rerun after one observation's identification changed (FakeINaturalist.set_taxon).

For each run it prints the wall time, API requests, photo downloads and bytes (from the fake's
request log), the CLI's peak memory (its ru_maxrss, taken by a small launcher process), the
files written (sha256 of every picture before and after), the network floor and wall/floor,
then PASS/FAIL for the targets of the issue.

    python tests/bench_archive.py [--photos N] [--size WxH] [--out DIR] [--keep] [--jobs J]

N > 1000 camera-size pictures take long to draw and several GB; above 1000 photos the default
size is 1600x1200 (say --size 4000x3000 to insist). Not part of the test run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SCRIPT = ROOT / "inat_photos.py"
for _folder in (ROOT, TESTS):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from fake_inat import FakeINaturalist  # noqa: E402

GENERATOR_VERSION = 4  # bump whenever the pictures or the plan change
USER = {"id": 4242, "login": "bench_naturalist", "name": "Bench Naturalist"}
JPEG_QUALITY = 90
CAMERA_SIZE = (4000, 3000)
SMALL_SIZE = (1600, 1200)  # default above LARGE_ARCHIVE photos
LARGE_ARCHIVE = 1000
PHONE_SIDE = 2048  # longest side of the phone pictures that exist only on iNaturalist
OTHER_SOURCES = 8  # small pictures shared by the observations on other days
TIME_ZONE = "-07:00"
LAST_DAY = dt.date(2025, 12, 31)  # the archive ends in the past: updated_at is never ahead

LATENCY = 0.25  # seconds per answer
BANDWIDTH = 20e6  # bytes per second, photo bodies
RATE = 1.0  # API requests per second
PER_PAGE = 200

CAMERAS = [
    ("FUJIFILM", "X-T4", "DSCF{:04d}.JPG"),
    ("OM Digital Solutions", "OM-1", "P{:07d}.JPG"),
    ("Canon", "Canon EOS R6", "IMG_{:04d}.JPG"),
    ("NIKON CORPORATION", "NIKON Z 6_2", "DSC_{:04d}.JPG"),
]

TAXA = [
    ("Eschscholzia californica", "California Poppy"),
    ("Canis latrans", "Coyote"),
    ("Amanita muscaria", "Fly Agaric"),
    ("Danaus plexippus", "Monarch"),
    ("Coccinella septempunctata", "Seven-spotted Lady Beetle"),
    ("Quercus agrifolia", "Coast Live Oak"),
    ("Lupinus nanus", "Sky Lupine"),
    ("Sceloporus occidentalis", "Western Fence Lizard"),
    ("Aphelocoma californica", "California Scrub-Jay"),
    ("Calypte anna", "Anna's Hummingbird"),
    ("Ariolimax columbianus", "Pacific Banana Slug"),
    ("Taricha torosa", "California Newt"),
    ("Vanessa cardui", "Painted Lady"),
    ("Toxicodendron diversilobum", "Pacific Poison Oak"),
    ("Dichelostemma capitatum", "Blue Dicks"),
    ("Sisyrinchium bellum", "Western Blue-eyed Grass"),
    ("Trametes versicolor", "Turkey Tail"),
    ("Buteo jamaicensis", "Red-tailed Hawk"),
    ("Odocoileus hemionus", "Mule Deer"),
    ("Sciurus griseus", "Western Gray Squirrel"),
    ("Bombus vosnesenskii", "Yellow-faced Bumble Bee"),
    ("Achillea millefolium", "Common Yarrow"),
    ("Castilleja exserta", "Purple Owl's-Clover"),
    ("Calochortus luteus", "Yellow Mariposa Lily"),
    ("Cladonia chlorophaea", None),
    ("Melanelixia subaurifera", None),
]
CHANGED_TAXON = {
    "name": "Lupinus albifrons",
    "rank": "species",
    "preferred_common_name": "Silver Bush Lupine",
    "iconic_taxon_name": "Plantae",
}


def caption_of(taxon: dict) -> str:
    """The caption the README promises for a species."""
    common = taxon.get("preferred_common_name")
    return f"{common} ({taxon['name']})" if common else taxon["name"]


# -- pictures -------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    gx = max(2, round(cells * w / max(h, w))) + 1
    gy = max(2, round(cells * h / max(h, w))) + 1
    grid = rng.random((gy, gx), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BICUBIC))


def _fbm(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int) -> np.ndarray:
    total = np.zeros((h, w), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * _value_noise(rng, h, w, cells * 2**octave)
        norm += amplitude
        amplitude *= 0.5
    low, high = np.percentile(total / norm, (1, 99))
    return np.clip((total / norm - low) / (high - low + 1e-6), 0, 1)


def _color(rng: np.random.Generator, low: float = 0, high: float = 255) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.uniform(low, high, 3))


_GRAIN: np.ndarray | None = None


def _grain() -> np.ndarray:
    """A fixed tile of colour noise (sensor grain), made once per process."""
    global _GRAIN
    if _GRAIN is None:
        _GRAIN = np.random.default_rng(20240404).normal(0, 1, (512, 512, 3)).astype(np.float32)
    return _GRAIN


def _subject(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """One of a few kinds of subject, with random shape, size, place and colours."""
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.75) * h
    r = rng.uniform(0.1, 0.28) * min(w, h)
    color = _color(rng)
    kind = int(rng.integers(5))
    if kind == 0:  # a flower
        petals, phase = int(rng.integers(4, 13)), rng.uniform(0, math.tau)
        for i in range(petals):
            a = phase + math.tau * i / petals
            px, py, q = cx + 0.6 * r * math.cos(a), cy + 0.6 * r * math.sin(a), 0.45 * r
            draw.ellipse(
                (px - q, py - q, px + q, py + q), fill=(*color, 235), outline=(0, 0, 0, 90)
            )
        q = r * rng.uniform(0.15, 0.3)
        draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=(*_color(rng, 120), 255))
    elif kind == 1:  # a leaf with its midrib
        n = 28
        pts = [
            (
                cx + r * 1.6 * math.cos(math.tau * i / n) * rng.uniform(0.85, 1.1),
                cy + r * 0.6 * math.sin(math.tau * i / n) * rng.uniform(0.85, 1.1),
            )
            for i in range(n)
        ]
        draw.polygon(pts, fill=(*color, 255))
        draw.line((cx - 1.6 * r, cy, cx + 1.6 * r, cy), fill=(235, 235, 200, 200), width=3)
    elif kind == 2:  # a mushroom with spots
        draw.rectangle((cx - 0.15 * r, cy, cx + 0.15 * r, cy + 1.2 * r), fill=(235, 225, 200, 255))
        draw.pieslice((cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r), 180, 360, fill=(*color, 255))
        for _ in range(int(rng.integers(6, 20))):
            a, rr = rng.uniform(math.pi, math.tau), rng.uniform(0.2, 0.85) * r
            x, y, q = cx + rr * math.cos(a), cy + 0.8 * rr * math.sin(a), 0.07 * r
            draw.ellipse((x - q, y - q, x + q, y + q), fill=(250, 250, 245, 255))
    elif kind == 3:  # a butterfly
        other = tuple(255 - c for c in color)
        draw.ellipse((cx - r, cy - 0.8 * r, cx - 0.05 * r, cy), fill=(*color, 255))
        draw.ellipse((cx + 0.05 * r, cy - 0.8 * r, cx + r, cy), fill=(*color, 255))
        draw.ellipse((cx - 0.7 * r, cy, cx - 0.05 * r, cy + 0.6 * r), fill=(*other, 255))
        draw.ellipse((cx + 0.05 * r, cy, cx + 0.7 * r, cy + 0.6 * r), fill=(*other, 255))
        draw.rectangle(
            (cx - 0.06 * r, cy - 0.7 * r, cx + 0.06 * r, cy + 0.6 * r), fill=(20, 20, 20)
        )
    else:  # a bird-ish blob on a branch
        draw.line((0, cy + 0.6 * r, w, cy + 0.8 * r), fill=(90, 60, 40, 255), width=int(r / 6) + 1)
        draw.ellipse((cx - r, cy - 0.5 * r, cx + 0.6 * r, cy + 0.6 * r), fill=(*color, 255))
        draw.ellipse((cx + 0.3 * r, cy - 0.9 * r, cx + 0.9 * r, cy - 0.2 * r), fill=(*color, 255))
        draw.polygon(
            [
                (cx + 0.9 * r, cy - 0.6 * r),
                (cx + 1.2 * r, cy - 0.5 * r),
                (cx + 0.88 * r, cy - 0.4 * r),
            ],
            fill=(230, 180, 40, 255),
        )


def draw_scene(seed: list[int], width: int, height: int) -> Image.Image:
    """A distinct outdoor-looking picture: blurred background with out-of-focus discs, a
    subject, sharp grass blades at full resolution, sensor grain (weaker in small pictures,
    as in pictures scaled down from a camera's). About 0.5 s at 12 MP."""
    rng = np.random.default_rng(seed)
    lw, lh = max(64, width // 4), max(48, height // 4)  # background drawn at 1/4 size
    c1, c2 = rng.uniform(10, 120, 3), rng.uniform(60, 230, 3)
    shade = _fbm(rng, lh, lw, cells=rng.uniform(2, 6), octaves=5)
    rgb = c1 + (c2 - c1) * shade[..., None]
    mottle = _fbm(rng, lh, lw, cells=rng.uniform(30, 80), octaves=3)
    ramp = np.clip(np.linspace(-0.2, 1.2, lh), 0.15, 1)[:, None]
    rgb = rgb * (1 + 0.5 * (mottle - 0.5) * ramp)[..., None]
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture, "RGBA")
    scale = lw / 1000
    for _ in range(int(rng.integers(12, 40))):
        r = rng.uniform(10, 60) * scale
        x, y = rng.uniform(0, lw), rng.uniform(0, lh)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*_color(rng), int(rng.uniform(40, 140))))
    picture = picture.filter(ImageFilter.GaussianBlur(2 * scale + 0.5))
    draw = ImageDraw.Draw(picture, "RGBA")
    _subject(draw, rng, lw, lh)
    picture = picture.resize((width, height), Image.Resampling.BICUBIC)
    bw, bh = max(64, width // 2), max(48, height // 2)  # blades drawn at half size
    blades = Image.new("RGBA", (bw, bh), (0, 0, 0, 0))
    draw = ImageDraw.Draw(blades, "RGBA")
    s = max(bw, bh) / 2000
    for _ in range(int(rng.integers(20, 60))):
        x0, length = rng.uniform(0, bw), rng.uniform(0.05, 0.6) * bh
        a = math.radians(rng.uniform(-125, -55))
        green = (int(rng.uniform(20, 110)), int(rng.uniform(70, 190)), int(rng.uniform(10, 80)))
        draw.line(
            (x0, bh, x0 + length * math.cos(a), bh + length * math.sin(a)),
            fill=(*green, int(rng.uniform(120, 255))),
            width=max(1, int(rng.uniform(5, 15) * s)),
        )
    blades = blades.filter(ImageFilter.GaussianBlur(2 * s))  # a lens is never perfectly sharp
    blades = blades.resize((width, height), Image.Resampling.BILINEAR)
    picture = Image.alpha_composite(picture.convert("RGBA"), blades).convert("RGB")
    pixels = np.asarray(picture, np.float32)
    tile = np.roll(_grain(), tuple(rng.integers(0, 512, 2)), (0, 1))
    reps = (height // tile.shape[0] + 1, width // tile.shape[1] + 1, 1)
    chroma = np.tile(tile, reps)[:height, :width]
    luma = np.tile(np.roll(tile[..., :1], 97, 0), reps)[:height, :width]
    grain = min(1.0, max(width, height) / 4000)  # smaller pictures: grain averaged away
    pixels += (chroma * rng.uniform(1.5, 2.5) + luma * rng.uniform(3, 5)) * grain
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def _dms(value: float) -> str:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    hundredths = round(((value - degrees) * 60 - minutes) * 6000)
    if hundredths == 6000:
        minutes, hundredths = minutes + 1, 0
    return f"{degrees}/1 {minutes}/1 {hundredths}/100"


def camera_exif(item: dict) -> dict[str, str]:
    when = dt.datetime.fromisoformat(item["taken"]).strftime("%Y:%m:%d %H:%M:%S")
    tags = {
        "Exif.Image.Make": item["make"],
        "Exif.Image.Model": item["model"],
        "Exif.Image.Orientation": str(item["orientation"]),
        "Exif.Image.XResolution": "300/1",
        "Exif.Image.YResolution": "300/1",
        "Exif.Image.ResolutionUnit": "2",
        "Exif.Image.DateTime": when,
        "Exif.Photo.DateTimeOriginal": when,
        "Exif.Photo.DateTimeDigitized": when,
        "Exif.Photo.PixelXDimension": str(item["width"]),
        "Exif.Photo.PixelYDimension": str(item["height"]),
        "Exif.Photo.ExposureTime": "1/500",
        "Exif.Photo.FNumber": "56/10",
        "Exif.Photo.ISOSpeedRatings": "200",
        "Exif.Photo.FocalLength": "550/10",
    }
    if item.get("gps"):
        lat, lng, alt = item["gps"]
        tags.update(
            {
                "Exif.GPSInfo.GPSVersionID": "2 3 0 0",
                "Exif.GPSInfo.GPSLatitudeRef": "N" if lat >= 0 else "S",
                "Exif.GPSInfo.GPSLatitude": _dms(lat),
                "Exif.GPSInfo.GPSLongitudeRef": "E" if lng >= 0 else "W",
                "Exif.GPSInfo.GPSLongitude": _dms(lng),
                "Exif.GPSInfo.GPSAltitudeRef": "0",
                "Exif.GPSInfo.GPSAltitude": f"{round(alt * 10)}/10",
            }
        )
    return tags


def make_picture(job: tuple[str, dict]) -> int:
    """Draw one planned picture and write it (atomically); returns its size in bytes."""
    import pyexiv2

    target, item = Path(job[0]), job[1]
    width, height, orientation = item["width"], item["height"], item.get("orientation", 1)
    if orientation in (6, 8):  # drawn upright (portrait), stored sideways as cameras do
        picture = draw_scene(item["seed"], height, width)
        turn = Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
        picture = picture.transpose(turn)
    else:
        picture = draw_scene(item["seed"], width, height)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=item.get("quality", JPEG_QUALITY))
    data = buffer.getvalue()
    if "taken" in item:
        image = pyexiv2.ImageData(data)
        try:
            image.modify_exif(camera_exif(item))
            data = image.get_bytes()
        finally:
            image.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".gen-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, target)
    return len(data)


# -- the archive and its scenario -----------------------------------------------------------
def plan_archive(
    photos: int,
    size: tuple[int, int] = CAMERA_SIZE,
    *,
    seed: int = 4,
    observed_fraction: float = 0.15,
    other_in_range: int = 250,
    other_outside: int = 100,
    phone_side: int = PHONE_SIDE,
    photos_per_day: float = 7.0,
) -> dict:
    """Everything about the archive, decided up front: pictures to draw, the scenario for the
    fake server, and which local file should receive which ids and caption.

    Paths are relative to the archive folder; local photos live under ``pristine/``.
    """
    rng = np.random.default_rng([seed, 0])
    width, height = size
    n_days = max(2, min(photos, round(photos / photos_per_day)))
    span = n_days * 3
    offsets = sorted(int(o) for o in rng.choice(span, n_days, replace=False))
    first_day = LAST_DAY - dt.timedelta(days=span)
    days = [first_day + dt.timedelta(days=o) for o in offsets]
    counts = 1 + rng.multinomial(photos - n_days, [1 / n_days] * n_days)
    local: list[dict] = []
    subjects: list[list[int]] = []
    counters = Counter()
    day_base: dict[str, tuple[float, float]] = {}
    for day, count in zip(days, counts, strict=True):
        make, model, pattern = CAMERAS[int(rng.integers(len(CAMERAS)))]
        base = (37.0 + rng.uniform(0, 1.2), -122.6 + rng.uniform(0, 1.2))
        day_base[day.isoformat()] = base
        moment = dt.datetime.combine(day, dt.time(7, 30)) + dt.timedelta(
            seconds=int(rng.integers(0, 7200))
        )
        current: list[int] | None = None
        for k in range(int(count)):
            if k:
                if rng.random() < 0.4:  # same subject: a few seconds later
                    step = int(rng.integers(4, 46))
                else:  # the next subject, minutes later
                    step, current = int(rng.integers(240, 1800)), None
                if (moment + dt.timedelta(seconds=step)).date() == day:
                    moment += dt.timedelta(seconds=step)
                else:
                    moment += dt.timedelta(seconds=2)
            if current is None:
                current = []
                subjects.append(current)
            counters[make] += 1
            shape = rng.random()
            if shape < 0.8:
                w, h, orientation = width, height, 1
            elif shape < 0.9:
                w, h, orientation = height, width, 1
            else:
                w, h, orientation = width, height, 6
            gps = None
            if rng.random() < 0.85:
                gps = (
                    round(base[0] + rng.uniform(-0.003, 0.003), 6),
                    round(base[1] + rng.uniform(-0.003, 0.003), 6),
                    round(float(rng.uniform(5, 600)), 1),
                )
            name = pattern.format(counters[make] % 10 ** int(pattern.split(":0")[1][0]))
            current.append(len(local))
            local.append(
                {
                    "file": f"pristine/{day.year}/{day.isoformat()}/{name}",
                    "seed": [seed, 1, len(local)],
                    "width": w,
                    "height": h,
                    "orientation": orientation,
                    "taken": moment.isoformat(),
                    "gps": gps,
                    "make": make,
                    "model": model,
                }
            )
    # Which subjects were observed, and how.
    n_obs = max(1, min(len(subjects), round(observed_fraction * photos)))
    chosen = sorted(int(i) for i in rng.choice(len(subjects), n_obs, replace=False))
    phone: list[dict] = []
    observations: list[dict] = []  # without ids yet
    for order, index in enumerate(chosen):
        members = subjects[index]
        first = local[members[0]]
        taken = dt.datetime.fromisoformat(first["taken"])
        draw = rng.random()
        if n_obs >= 3 and order < 2:  # at least one of each mixed kind
            kind = ("mixed", "phone")[order]
        else:
            kind = "phone" if draw < 0.07 else ("mixed" if draw < 0.3 else "twins")
        photos_spec: list[dict] = []
        if kind != "phone":
            for member in members[: int(rng.integers(1, 4))]:
                spec: dict[str, Any] = {"source": local[member]["file"], "local": member}
                roll = rng.random()
                if roll < 0.12:  # cropped before upload
                    cw = float(rng.uniform(0.72, 0.9))
                    ch = min(0.95, cw * float(rng.uniform(0.95, 1.05)))
                    left, top = float(rng.uniform(0, 1 - cw)), float(rng.uniform(0, 1 - ch))
                    spec["crop"] = [round(v, 4) for v in (left, top, left + cw, top + ch)]
                elif roll < 0.15:  # turned before upload
                    spec["rotate"] = int(rng.choice([90, 270]))
                photos_spec.append(spec)
        if kind != "twins":
            for _ in range(1 if kind == "mixed" else int(rng.integers(1, 3))):
                shot = taken + dt.timedelta(seconds=int(rng.integers(1, 40)))
                portrait = rng.random() < 0.3
                long_side = min(phone_side, max(width, height))
                short_side = round(long_side * 3 / 4)
                pw, ph = (short_side, long_side) if portrait else (long_side, short_side)
                name = f"inat_only/PXL_{shot:%Y%m%d_%H%M%S}{len(phone):03d}.jpg"
                phone.append(
                    {"file": name, "seed": [seed, 2, len(phone)], "width": pw, "height": ph}
                )
                photos_spec.append({"source": name, "quality": 85})
        located = next((local[m]["gps"] for m in members if local[m]["gps"]), None)
        lat, lng = located[:2] if located else day_base[taken.date().isoformat()]
        observations.append(
            {
                "time": taken.replace(second=0),
                "location": (
                    round(lat + rng.uniform(-0.0002, 0.0002), 6),
                    round(lng + rng.uniform(-0.0002, 0.0002), 6),
                ),
                "taxon": TAXA[int(rng.integers(len(TAXA)))],
                "photos": photos_spec,
            }
        )
    # Observations on days without local photos: inside and outside the archive's range.
    local_days = {day.isoformat() for day in days}
    free_days = [
        days[0] + dt.timedelta(days=k)
        for k in range((days[-1] - days[0]).days + 1)
        if (days[0] + dt.timedelta(days=k)).isoformat() not in local_days
    ]
    other_days: list[dt.date] = []
    if free_days:
        other_days += [free_days[int(rng.integers(len(free_days)))] for _ in range(other_in_range)]
    for k in range(other_outside):
        if k % 2:
            other_days.append(days[0] - dt.timedelta(days=int(rng.integers(1, 400))))
        else:
            other_days.append(days[-1] + dt.timedelta(days=int(rng.integers(1, 200))))
    for day in other_days:
        moment = dt.datetime.combine(day, dt.time(8)) + dt.timedelta(
            seconds=int(rng.integers(0, 36000))
        )
        observations.append(
            {
                "time": moment.replace(second=0),
                "location": (
                    round(37.0 + rng.uniform(0, 1.2), 6),
                    round(-122.6 + rng.uniform(0, 1.2), 6),
                ),
                "taxon": TAXA[int(rng.integers(len(TAXA)))],
                "photos": [
                    {"source": f"others/other_{int(rng.integers(OTHER_SOURCES))}.jpg"}
                    for _ in range(int(rng.integers(1, 3)))
                ],
            }
        )
    # Ids grow with time, as on iNaturalist (uploads come roughly in order).
    observations.sort(key=lambda o: o["time"])
    scenario_obs, expected = [], {}
    photo_id = 300_000_000
    for i, obs in enumerate(observations):
        obs_id = 150_000_000 + 13 * i + int(rng.integers(0, 12))
        name, common = obs["taxon"]
        taxon = {"name": name, "rank": "species"}
        if common:
            taxon["preferred_common_name"] = common
        specs = []
        for spec in obs["photos"]:
            photo_id += int(rng.integers(1, 5))
            entry = {k: v for k, v in spec.items() if k != "local"}
            entry["id"] = photo_id
            specs.append(entry)
            if "local" in spec:
                expected[local[spec["local"]]["file"]] = {
                    "observation": obs_id,
                    "photo": photo_id,
                    "caption": caption_of(taxon),
                }
        when = obs["time"]
        scenario_obs.append(
            {
                "id": obs_id,
                "user": USER["login"],
                "observed_on": when.date().isoformat(),
                "time_observed_at": when.isoformat() + TIME_ZONE,
                "location": f"{obs['location'][0]},{obs['location'][1]}",
                "positional_accuracy": int(rng.integers(4, 30)),
                "taxon": taxon,
                "photos": specs,
            }
        )
    files = [item["file"] for item in local]
    assert len(set(files)) == len(files), "two local photos with one name"
    first, last = days[0].isoformat(), days[-1].isoformat()
    in_range = [o for o in scenario_obs if first <= o["observed_on"] <= last]
    on_local_days = [o for o in scenario_obs if o["observed_on"] in local_days]
    others = [
        {"file": f"others/other_{k}.jpg", "seed": [seed, 3, k], "width": 640, "height": 480}
        for k in range(OTHER_SOURCES)
    ]
    return {
        "params": {
            "version": GENERATOR_VERSION,
            "photos": photos,
            "size": list(size),
            "seed": seed,
            "observed_fraction": observed_fraction,
            "other_in_range": other_in_range,
            "other_outside": other_outside,
            "phone_side": phone_side,
            "photos_per_day": photos_per_day,
        },
        "local": local,
        "phone": phone,
        "others": others,
        "scenario": {"users": [USER], "observations": scenario_obs},
        "expected": expected,
        "first_day": first,
        "last_day": last,
        "days": len(days),
        "observations_in_range": len(in_range),
        "observations_on_local_days": len(on_local_days),
        "uploads_on_local_days": sum(len(o["photos"]) for o in on_local_days),
    }


def build_archive(folder: Path, plan: dict, jobs: int = 2, quiet: bool = False) -> float:
    """Draw every planned picture into folder (reusing a complete earlier build with the same
    parameters); returns the seconds spent drawing (0 when reused)."""
    manifest = folder / "manifest.json"
    pictures = [*plan["local"], *plan["phone"], *plan["others"]]
    if manifest.exists():
        try:
            done = json.loads(manifest.read_text())
        except ValueError:
            done = {}
        if done.get("params") == plan["params"] and all(
            (folder / item["file"]).is_file() for item in pictures
        ):
            return 0.0
    for sub in ("pristine", "inat_only", "others"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    manifest.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = [(str(folder / item["file"]), item) for item in pictures]
    total = 0
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for i, size in enumerate(pool.map(make_picture, work, chunksize=4), 1):
                total += size
                if not quiet and (i % 100 == 0 or i == len(work)):
                    print(f"  drew {i}/{len(work)} pictures", flush=True)
    else:
        total = sum(make_picture(job) for job in work)
    for item in plan["local"]:  # a camera archive: file times are the shooting times
        moment = dt.datetime.fromisoformat(item["taken"]).timestamp()
        os.utime(folder / item["file"], (moment, moment))
    (folder / "scenario.json").write_text(json.dumps(plan["scenario"], indent=1))
    (folder / "expected.json").write_text(json.dumps(plan["expected"], indent=1))
    manifest.write_text(json.dumps({"params": plan["params"], "bytes": total}, indent=1))
    return time.perf_counter() - started


# -- measuring ------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mtime_ns and inode of every file below folder."""
    result = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            info = path.stat()
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            result[str(path.relative_to(folder))] = (digest, info.st_mtime_ns, info.st_ino)
    return result


def read_tags(path: Path) -> dict:
    import pyexiv2

    import inat_photos as ip

    ip.register_namespace()
    with pyexiv2.Image(str(path)) as image:
        xmp = image.read_xmp()
    subject = xmp.get(ip.TAG_SUBJECT) or []
    return {
        "observation": ip._tag_id(xmp.get(ip.TAG_OBSERVATION)),
        "photo": ip._tag_id(xmp.get(ip.TAG_PHOTO)),
        "subject": [subject] if isinstance(subject, str) else list(subject),
    }


# Runs the CLI and reports its own wall time and peak RSS. A small go-between: a child forked
# straight from this (big) process would count this process's memory in its ru_maxrss.
_LAUNCHER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[2:], timeout=float(sys.argv[1])).returncode
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KiB here
print(json.dumps({"returncode": code, "wall": wall, "peak_mb": peak_mb}), file=sys.stderr)
"""


def run_cli(
    args: list[str],
    api_url: str,
    cache: Path,
    logs: Path,
    name: str,
    timeout: float = 3600,
    script: Path = SCRIPT,
) -> dict:
    """Run the CLI as a child: its wall time, exit code, output and peak memory (RSS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INAT_")}
    env.update(INAT_API_URL=api_url, INAT_PHOTOS_CACHE=str(cache), PYTHONIOENCODING="utf-8")
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        launcher = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(timeout), sys.executable, str(script), *args],
            stdout=out,
            stderr=err,
            env=env,
            check=False,
        )
    stderr = err_path.read_text(errors="replace")
    lines = stderr.rstrip("\n").rsplit("\n", 1)
    figures = json.loads(lines[-1]) if launcher.returncode == 0 else None
    if figures is None:
        raise RuntimeError(f"the launcher failed ({launcher.returncode}): {stderr[-2000:]}")
    stdout = out_path.read_text(errors="replace")
    return {
        **figures,
        "stdout": stdout,
        "stderr": lines[0] if len(lines) > 1 else "",
        "summary": next((ln for ln in stdout.splitlines() if ln.startswith("Summary:")), ""),
    }


def network_figures(fake: FakeINaturalist) -> dict:
    api = fake.api_requests()
    photos = fake.photo_requests()
    got = [p for p in photos if p["status"] == 200]
    per_url = Counter(p["path"] for p in got)
    photo_bytes = sum(p["bytes"] for p in got)
    floor = (
        len(api) * max(LATENCY, 1 / RATE)
        + len(photos) * LATENCY
        + sum(p["bytes"] for p in photos) / BANDWIDTH
    )
    calls = []
    for entry in api:
        keys = [
            k for k in ("d1", "updated_since", "id_above", "id", "page") if entry["query"].get(k)
        ]
        where = entry["path"].removeprefix("/v1/").split("/")[0]
        calls.append(f"{where}({','.join(keys)})={entry['status']}")
    return {
        "calls": calls,
        "api": len(api),
        "api_429": sum(1 for a in api if a["status"] == 429),
        "paged_by_page": sum(1 for a in api if int(a["query"].get("page") or 1) > 1),
        "paged_by_id": sum(1 for a in api if a["query"].get("id_above")),
        "photo_requests": len(photos),
        "downloads": len(got),
        "duplicate_downloads": sum(n - 1 for n in per_url.values() if n > 1),
        "photo_bytes": photo_bytes,
        "floor": floor,
    }


def changed_files(before: dict, after: dict) -> tuple[set[str], set[str]]:
    """(files whose content changed, files rewritten with the same content)."""
    written = {p for p in after if p not in before or before[p][0] != after[p][0]}
    touched = {
        p for p in after if p in before and p not in written and before[p][1:] != after[p][1:]
    }
    return written, touched


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size must look like 4000x3000") from None
    if w < 64 or h < 48:
        raise argparse.ArgumentTypeError("size must be at least 64x48")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=300, help="local photos (default 300)")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="picture size WxH (default 4000x3000, "
        f"{SMALL_SIZE[0]}x{SMALL_SIZE[1]} above {LARGE_ARCHIVE} photos)",
    )
    parser.add_argument("--out", type=Path, default=None, help="archive folder (kept, reused)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's pictures, cache and CLI output"
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--prepare", action="store_true", help="only generate the archive")
    parser.add_argument(
        "--script", type=Path, default=SCRIPT, help="the inat_photos.py to run (to try a change)"
    )
    args = parser.parse_args(argv)
    n = args.photos
    size = args.size or (CAMERA_SIZE if n <= LARGE_ARCHIVE else SMALL_SIZE)
    folder = args.out or Path(tempfile.gettempdir()) / f"inat_bench_{n}_{size[0]}x{size[1]}"
    folder = folder.resolve()
    print(f"inat_photos benchmark (issue 4): {n} photos of {size[0]}x{size[1]}", end="")
    if size != CAMERA_SIZE:
        print(f" (smaller than camera size {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]})", end="")
    print(f"; archive in {folder}")
    if args.script.resolve() != SCRIPT:
        print(f"Running {args.script.resolve()} instead of {SCRIPT}.")

    plan = plan_archive(n, size, seed=args.seed)
    took = build_archive(folder, plan, jobs=args.jobs)
    archive_bytes = sum((folder / item["file"]).stat().st_size for item in plan["local"])
    if took:
        print(f"Generated the archive in {took:.0f} s ({args.jobs} processes).")
    else:
        print("Reused the archive generated earlier (same parameters).")
    expected = plan["expected"]
    if args.prepare:
        return 0
    print(
        f"Archive: {n} local photos, {archive_bytes / 1e6:.0f} MB, {plan['days']} days from"
        f" {plan['first_day']} to {plan['last_day']}; {len(expected)} of them uploaded."
        f"\nScenario: {len(plan['scenario']['observations'])} observations,"
        f" {plan['observations_in_range']} within those dates,"
        f" {plan['observations_on_local_days']} on days with local photos, with"
        f" {plan['uploads_on_local_days']} photos ({len(plan['phone'])} not in the archive)."
        f"\nFake server: latency {LATENCY} s per answer, photos at {BANDWIDTH / 1e6:g} MB/s,"
        f" at most {RATE:g} API request/s."
    )

    run_dir = folder / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    pictures, cache, logs = run_dir / "pictures", run_dir / "cache", run_dir / "logs"
    shutil.copytree(folder / "pristine", pictures)  # copy2 keeps the file times
    fake = FakeINaturalist(
        plan["scenario"],
        base_dir=folder,
        latency=LATENCY,
        bandwidth=BANDWIDTH,
        max_requests_per_second=RATE,
    )
    local_days = {item["taken"][:10] for item in plan["local"]}
    uploads = [
        p["id"]
        for o in plan["scenario"]["observations"]
        if o["observed_on"] in local_days
        for p in o["photos"]
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # the server's work, not timed
        list(pool.map(lambda pid: fake.photo_bytes(pid, "large"), uploads))
    print(
        f"Pre-rendered {len(uploads)} uploads in the fake server"
        f" ({time.perf_counter() - started:.0f} s, not timed)."
    )

    fake.start()
    cli_args = ["-u", USER["login"], str(pictures)]
    stages: list[dict] = []
    try:
        state = snapshot(pictures)
        for name in ("first run", "unchanged rerun", "identification changed"):
            changed_obs = None
            if name == "identification changed":
                changed_obs = choose_observation(pictures, plan)
                fake.set_taxon(changed_obs["observation"], CHANGED_TAXON)
            fake.reset_log()
            result = run_cli(
                cli_args, fake.api_url, cache, logs, name.replace(" ", "_"), script=args.script
            )
            net = network_figures(fake)
            after = snapshot(pictures)
            written, touched = changed_files(state, after)
            state = after
            stages.append(
                {
                    "name": name,
                    **result,
                    **net,
                    "written": written,
                    "touched": touched,
                    "changed_obs": changed_obs,
                }
            )
            print(
                f"  {name}: exit {result['returncode']}, {result['wall']:.1f} s."
                f" {result['summary']}",
                flush=True,
            )
            if result["returncode"] != 0:
                print(result["stderr"][-2000:])
            if name == "first run":
                accuracy = check_tags(pictures, plan)
    finally:
        fake.stop()
    ok = report(stages, plan, accuracy, n, pictures)
    if args.keep:
        print(f"Kept the run's pictures, cache and CLI output in {run_dir}.")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if ok else 1


def check_tags(pictures: Path, plan: dict) -> dict:
    """How the first run's tags compare with the scenario's truth."""
    expected = plan["expected"]
    right, wrong, missing, extra, caption_wrong = [], [], [], [], []
    for item in plan["local"]:
        rel = item["file"].removeprefix("pristine/")
        tags = read_tags(pictures / rel)
        want = expected.get(item["file"])
        if want is None:
            if tags["observation"] is not None:
                extra.append(rel)
        elif tags["observation"] is None:
            missing.append(rel)
        elif (tags["observation"], tags["photo"]) != (want["observation"], want["photo"]):
            wrong.append(rel)
        else:
            right.append(rel)
            if want["caption"] not in tags["subject"]:
                caption_wrong.append(rel)
    return {
        "right": right,
        "wrong": wrong,
        "missing": missing,
        "extra": extra,
        "caption_wrong": caption_wrong,
    }


def choose_observation(pictures: Path, plan: dict) -> dict:
    """The observation with the most local photos tagged for it (ties: smallest id)."""
    tagged: dict[int, list[str]] = {}
    for file, want in plan["expected"].items():
        rel = file.removeprefix("pristine/")
        if read_tags(pictures / rel)["observation"] == want["observation"]:
            tagged.setdefault(want["observation"], []).append(rel)
    obs_id = min(tagged, key=lambda o: (-len(tagged[o]), o))
    old = next(w["caption"] for w in plan["expected"].values() if w["observation"] == obs_id)
    return {"observation": obs_id, "files": sorted(tagged[obs_id]), "old_caption": old}


def report(stages: list[dict], plan: dict, accuracy: dict, n: int, pictures: Path) -> bool:
    print()
    header = (
        f"{'stage':<24}{'wall s':>8}{'API req':>9}{'429s':>6}{'photo req':>11}{'downl.':>8}"
        f"{'MB down':>9}{'peak MB':>9}{'written':>9}{'rewritten':>11}{'floor s':>9}"
        f"{'wall/floor':>12}"
    )
    print(header)
    print("-" * len(header))
    for s in stages:
        print(
            f"{s['name']:<24}{s['wall']:>8.1f}{s['api']:>9}{s['api_429']:>6}"
            f"{s['photo_requests']:>11}{s['downloads']:>8}{s['photo_bytes'] / 1e6:>9.1f}"
            f"{s['peak_mb']:>9.0f}{len(s['written']):>9}{len(s['touched']):>11}"
            f"{s['floor']:>9.1f}{s['wall'] / s['floor'] if s['floor'] else float('inf'):>12.2f}"
        )
    print(
        f"floor = API requests x max(latency {LATENCY} s, 1/rate {1 / RATE:g} s)"
        f" + photo requests x {LATENCY} s + photo bytes / {BANDWIDTH / 1e6:g} MB/s"
        " (one request at a time); 'rewritten': same content, new mtime/inode."
    )
    for s in stages:
        print(f"API requests, {s['name']}: {' '.join(s['calls'])}")
    first, rerun, changed = stages
    print(
        f"First run tags: {len(accuracy['right'])} of {len(plan['expected'])} uploaded photos"
        f" tagged right, {len(accuracy['missing'])} missed, {len(accuracy['wrong'])} wrong,"
        f" {len(accuracy['extra'])} photos tagged that were never uploaded,"
        f" {len(accuracy['caption_wrong'])} with a wrong caption."
    )
    for label in ("missing", "wrong", "extra", "caption_wrong"):
        if accuracy[label]:
            more = " ..." if len(accuracy[label]) > 8 else ""
            print(f"  {label}: {', '.join(accuracy[label][:8])}{more}")
    print(
        f"First run: pages asked with id_above: {first['paged_by_id']}, with page > 1:"
        f" {first['paged_by_page']}."
    )

    obs = plan["observations_in_range"]
    api_limit = math.ceil(obs / PER_PAGE) + 3
    rerun_limit = 2.0 if n <= 300 else 2.0 + 18.0 * (n - 300) / 9700
    change = changed["changed_obs"]
    new_caption = caption_of(CHANGED_TAXON)
    caption_ok = all(
        new_caption in (tags := read_tags(pictures / f))["subject"]
        and change["old_caption"] not in tags["subject"]
        for f in change["files"]
    )
    targets = [
        (
            f"first run: API requests {first['api']} <= ceil({obs} observations / {PER_PAGE}) + 3"
            f" = {api_limit}",
            first["api"] <= api_limit,
        ),
        (
            f"first run: every iNaturalist photo downloaded at most once"
            f" ({first['downloads']} downloads, {first['duplicate_downloads']} repeated)",
            first["duplicate_downloads"] == 0,
        ),
        (
            f"first run: wall {first['wall']:.1f} s <= 2 x floor {first['floor']:.1f} s"
            f" + 0.1 s x {n} = {2 * first['floor'] + 0.1 * n:.1f} s",
            first["wall"] <= 2 * first["floor"] + 0.1 * n,
        ),
        (f"unchanged rerun: API requests {rerun['api']} <= 3", rerun["api"] <= 3),
        (f"unchanged rerun: {rerun['downloads']} downloads == 0", rerun["downloads"] == 0),
        (
            f"unchanged rerun: wall {rerun['wall']:.2f} s <= {rerun_limit:.1f} s",
            rerun["wall"] <= rerun_limit,
        ),
        (
            f"unchanged rerun: files written {len(rerun['written'])}, rewritten"
            f" {len(rerun['touched'])} == 0",
            not rerun["written"] and not rerun["touched"],
        ),
        (
            f"identification changed (observation {change['observation']}, its"
            f" {len(change['files'])} local photos): exactly those written"
            f" ({len(changed['written'])} written, {len(changed['touched'])} rewritten) and"
            f" captioned '{new_caption}'",
            changed["written"] == set(change["files"]) and not changed["touched"] and caption_ok,
        ),
        (
            f"peak memory {max(s['peak_mb'] for s in stages):.0f} MB < 1024 MB",
            max(s["peak_mb"] for s in stages) < 1024,
        ),
        (
            "every run exited 0",
            all(s["returncode"] == 0 for s in stages),
        ),
    ]
    print()
    for text, passed in targets:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    return all(passed for _, passed in targets)


if __name__ == "__main__":
    sys.exit(main())
