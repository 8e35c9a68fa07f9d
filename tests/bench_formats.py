"""Benchmark for RAW and HEIC archives (issue 11): three days matched end to end, and the time
each file costs.

    python tests/bench_formats.py [--photos N] [--small] [--keep DIR]

builds, with the matching set's scene renderer, camera-size pictures (4000 x 3000, or 1600 x 1200
with --small) whose JPEG exports were uploaded to a fake iNaturalist, and files them as

* ``raw-only``: DNG files with a full-size embedded preview, nothing else;
* ``raw+jpeg``: a DNG and the camera's JPEG of each shot (one photo for matching);
* ``heic``: phone HEIC files, every other one stored sideways (HEIF rotation);

then runs inat_photos.py once per day (fresh cache) and prints, per day, how many photos were
associated correctly, wrongly or not at all and the wall time per photo; and, measured in this
process, the time to read the metadata and to decode each kind of file for comparison and
thumbnail as the tool's PictureSource does it (preview, half-size demosaic, HEIC decoded once).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import support  # noqa: F401 - puts inat_photos.py and tests/ on sys.path
from fake_inat import FakeINaturalist
from make_matching_set import BACKGROUNDS, DESIGN_SIDE, SUBJECTS, Scene, View, render
from PIL import Image
from support import SCRIPT
from support.formats import write_dng, write_heic
from support.scenario import observation_record
from support.xmp import read_photo_id, write_exif

import inat_photos as ip

USER = "format_bench"
DAYS = ("raw-only", "raw+jpeg", "heic")


def picture(index: int, size: tuple[int, int]) -> Image.Image:
    subjects, backgrounds = sorted(SUBJECTS), sorted(BACKGROUNDS)
    scene = Scene(
        seed=7000 + index,
        background=backgrounds[index % len(backgrounds)],
        subject=subjects[index % len(subjects)],
        subject_seed=9000 + index,
        subject_xy=(0.4 + 0.05 * (index % 4), 0.5),
        subject_size=0.25,
        angle=10.0 * index,
    )
    return render(scene, View(), size, DESIGN_SIDE, 4242 + index).convert("RGB")


def build(out: Path, photos: int, size: tuple[int, int]) -> dict:
    """Write the three days; returns the scenario and the truth (path -> photo id)."""
    scenario: dict = {"users": [{"id": 5150, "login": USER}], "observations": []}
    truth: dict[str, int] = {}
    exports = out / "exports"
    exports.mkdir(parents=True)
    for d, day in enumerate(DAYS):
        folder = out / "pictures" / day
        folder.mkdir(parents=True)
        for i in range(photos):
            index = d * 100 + i
            taken = dt.datetime(2024, 5, 10 + d, 9, 0, 20) + dt.timedelta(minutes=7 * i)
            shot = picture(index, size)
            export = exports / f"export{index}.jpg"
            shot.save(export, "JPEG", quality=90)
            stem = folder / f"IMG_{index:04d}"
            if day in ("raw-only", "raw+jpeg"):
                write_dng(stem.with_suffix(".DNG"), shot, taken=taken, gps=(46.5, 6.6))
                key = stem.with_suffix(".DNG")
                if day == "raw+jpeg":
                    jpeg = stem.with_suffix(".JPG")
                    shot.save(jpeg, "JPEG", quality=95)
                    write_exif(
                        jpeg, {"Exif.Photo.DateTimeOriginal": taken.strftime("%Y:%m:%d %H:%M:%S")}
                    )
                    key = jpeg
            else:
                key = stem.with_suffix(".HEIC")
                write_heic(key, shot, taken=taken, orientation=6 if i % 2 else 1, quality=85)
            photo_id = 930_000 + index
            truth[str(key.relative_to(out))] = photo_id
            scenario["observations"].append(
                observation_record(
                    60_000 + index,
                    USER,
                    taken.replace(second=0),
                    [{"id": photo_id, "source": export.name}],
                    {"name": "Vulpes vulpes", "rank": "species"},
                    "+02:00",
                )
            )
    return {"scenario": scenario, "truth": truth}


def tagged_photo(path: Path) -> int | None:
    """The photo id written for path: in the file, else in its sidecar."""
    for candidate in (path, path.with_suffix(".xmp")):
        if candidate.suffix.lower() in (".jpg", ".xmp") and candidate.exists():
            found = read_photo_id(candidate)
            if found is not None:
                return found
    return None


def per_file_times(out: Path) -> list[str]:
    """Metadata read and decode times per kind of file, averaged over the set."""
    kinds = {
        "DNG, preview": sorted((out / "pictures" / "raw-only").glob("*.DNG")),
        "HEIC": sorted((out / "pictures" / "heic").glob("*.HEIC")),
    }
    small = out / "small-preview.DNG"  # one RAW whose preview is too small: demosaiced
    write_dng(small, picture(999, (4000, 3000)), taken=dt.datetime(2024, 1, 1), preview_side=320)
    kinds["DNG, demosaic"] = [small]
    lines = []
    console = ip.Console(open(os.devnull, "w"))  # noqa: SIM115
    pictures = ip.PictureSource(None, ("large",), console)  # type: ignore[arg-type]
    for kind, files in kinds.items():
        started = time.perf_counter()
        photos = [ip.read_local_photo(path, console) for path in files]
        read = (time.perf_counter() - started) / len(files)
        started = time.perf_counter()
        for photo in photos:
            assert photo is not None
            # As a comparison asks: the thumbnail for the gate, then the picture itself.
            pictures.local_thumbnail(photo)
            pictures.local(photo)
            pictures.forget_locals()
        decode = (time.perf_counter() - started) / len(files)
        megabytes = sum(p.stat().st_size for p in files) / len(files) / 1e6
        lines.append(
            f"{kind:<14} {megabytes:6.1f} MB/file  metadata {read * 1000:6.1f} ms"
            f"  decode (comparison + thumbnail) {decode * 1000:7.1f} ms"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=4, help="shots per day (default 4)")
    parser.add_argument("--small", action="store_true", help="1600 x 1200 instead of 4000 x 3000")
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it")
    args = parser.parse_args(argv)
    ip.configure_process()  # the pixel limit and namespaces, as main sets them
    size = (1600, 1200) if args.small else (4000, 3000)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or Path(scratch)
        started = time.monotonic()
        world = build(out, args.photos, size)
        print(
            f"built {len(DAYS)} days x {args.photos} shots at {size[0]}x{size[1]}"
            f" in {time.monotonic() - started:.1f} s"
        )
        header = (
            f"{'day':<10} {'local photos':>12} {'expected':>9} {'correct':>8} {'wrong':>6}"
            f" {'missed':>7} {'s/photo':>8}"
        )
        print(header)
        print("-" * len(header))
        with FakeINaturalist(world["scenario"], base_dir=out / "exports") as fake:
            for day in DAYS:
                env = {"INAT_API_URL": fake.api_url, "INAT_PHOTOS_CACHE": str(out / f"cache-{day}")}
                started = time.monotonic()
                done = subprocess.run(
                    [
                        sys.executable,
                        str(SCRIPT),
                        "-u",
                        USER,
                        str(out / "pictures" / day),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **env},
                )
                seconds = time.monotonic() - started
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:])
                rows = {k: v for k, v in world["truth"].items() if k.startswith(f"pictures/{day}/")}
                found = {k: tagged_photo(out / k) for k in rows}
                if day == "raw+jpeg":  # a pair counts as found only if the RAW has the id too
                    for k in rows:
                        if tagged_photo((out / k).with_suffix(".DNG")) != found[k]:
                            found[k] = None
                correct = sum(found[k] == v for k, v in rows.items())
                wrong = sum(found[k] is not None and found[k] != v for k, v in rows.items())
                missed = sum(found[k] is None for k in rows)
                print(
                    f"{day:<10} {len(rows):>12} {len(rows):>9} {correct:>8} {wrong:>6}"
                    f" {missed:>7} {seconds / len(rows):>8.2f}"
                )
        print()
        for line in per_file_times(out):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
