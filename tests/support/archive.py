"""A big generated camera archive and its iNaturalist scenario (GitHub issue 4), as described
in bench_archive.py: plan_archive decides everything from its parameters (deterministically),
build_archive draws the pictures. test_incremental.py uses a small one.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyexiv2
from make_example_pictures import camera_tags, fbm
from PIL import Image, ImageDraw, ImageFilter

from support.images import noise_tile
from support.scenario import observation_record
from support.xmp import expected_caption

GENERATOR_VERSION = 4  # bump whenever the pictures or the plan change
USER = {"id": 4242, "login": "bench_naturalist", "name": "Bench Naturalist"}
JPEG_QUALITY = 90
CAMERA_SIZE = (4000, 3000)
PHONE_SIDE = 2048  # longest side of the phone pictures that exist only on iNaturalist
OTHER_SOURCES = 8  # small pictures shared by the observations on other days
TIME_ZONE = "-07:00"
LAST_DAY = dt.date(2025, 12, 31)  # the archive ends in the past: updated_at is never ahead

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


# -- pictures -------------------------------------------------------------------------------
def _color(rng: np.random.Generator, low: float = 0, high: float = 255) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.uniform(low, high, 3))


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
    shade = fbm(rng, lh, lw, cells=rng.uniform(2, 6), octaves=5)
    rgb = c1 + (c2 - c1) * shade[..., None]
    mottle = fbm(rng, lh, lw, cells=rng.uniform(30, 80), octaves=3)
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
    noise = noise_tile(20240404, (512, 512, 3)).astype(np.float32)
    tile = np.roll(noise, tuple(rng.integers(0, 512, 2)), (0, 1))
    reps = (height // tile.shape[0] + 1, width // tile.shape[1] + 1, 1)
    chroma = np.tile(tile, reps)[:height, :width]
    luma = np.tile(np.roll(tile[..., :1], 97, 0), reps)[:height, :width]
    grain = min(1.0, max(width, height) / 4000)  # smaller pictures: grain averaged away
    pixels += (chroma * rng.uniform(1.5, 2.5) + luma * rng.uniform(3, 5)) * grain
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def camera_exif(item: dict) -> dict[str, str]:
    when = dt.datetime.fromisoformat(item["taken"]).strftime("%Y:%m:%d %H:%M:%S")
    return camera_tags(
        item["make"],
        item["model"],
        when,
        item.get("gps"),
        **{
            "Exif.Image.Orientation": str(item["orientation"]),
            "Exif.Image.XResolution": "300/1",
            "Exif.Image.YResolution": "300/1",
            "Exif.Image.ResolutionUnit": "2",
            "Exif.Photo.PixelXDimension": str(item["width"]),
            "Exif.Photo.PixelYDimension": str(item["height"]),
            "Exif.Photo.ExposureTime": "1/500",
            "Exif.Photo.FNumber": "56/10",
            "Exif.Photo.ISOSpeedRatings": "200",
            "Exif.Photo.FocalLength": "550/10",
        },
    )


def make_picture(job: tuple[str, dict]) -> int:
    """Draw one planned picture and write it (atomically); returns its size in bytes."""
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
LAST = dt.time(23, 59, 59)  # the last moment of a day


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
    continuous: bool = False,
) -> dict:
    """Everything about the archive, decided up front: pictures to draw, the scenario for the
    fake server, and which local file should receive which ids and caption.

    Paths are relative to the archive folder; local photos live under ``pristine/``.
    continuous: a bioblitz day, shot without a pause: the next subject comes 30 s to under
    3 minutes later (not 4 to 30 minutes), so that each day is one group of the tool.
    """
    rng = np.random.default_rng([seed, 0])
    width, height = size
    # At least two days, but a bioblitz may be one day.
    n_days = max(1 if continuous else 2, min(photos, round(photos / photos_per_day)))
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
        # A bioblitz day of more photos than 14 hours hold at about 70 s each is shot faster
        # (1,000 photos in one day); the days of smaller archives are drawn as before.
        pace = min(1.0, 14 * 3600 / (int(count) * 70)) if continuous else 1.0
        for k in range(int(count)):
            if k:
                if rng.random() < 0.4:  # same subject: a few seconds later
                    step = int(rng.integers(4, 46))
                else:  # the next subject, minutes later (at a bioblitz, soon after)
                    step = int(rng.integers(30, 170) if continuous else rng.integers(240, 1800))
                    current = None
                step = max(1, round(step * pace)) if pace < 1 else step
                if (moment + dt.timedelta(seconds=step)).date() == day:
                    moment += dt.timedelta(seconds=step)
                else:  # a long day squeezed into its last minutes, never past midnight
                    moment = min(moment + dt.timedelta(seconds=2), dt.datetime.combine(day, LAST))
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
                    "caption": expected_caption(taxon),
                }
        when = obs["time"]
        scenario_obs.append(
            observation_record(
                obs_id,
                USER["login"],
                when,
                specs,
                taxon,
                TIME_ZONE,
                observed_on=when.date().isoformat(),
                location=f"{obs['location'][0]},{obs['location'][1]}",
                positional_accuracy=int(rng.integers(4, 30)),
            )
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
            **({"continuous": True} if continuous else {}),  # earlier archives stay valid
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
