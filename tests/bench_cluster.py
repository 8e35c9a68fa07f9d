"""Peak memory and time of inat_photos on one long burst: many camera-size photos in one cluster.

    python tests/bench_cluster.py [--photos N] [--uploads K] [--offset-hours H] [--out DIR]
                                  [--script FILE]

Draws N local photos of 4000x3000, taken a second apart (so all in one cluster), and K
observations whose uploads are K of them, then runs inat_photos.py once against the fake
iNaturalist and prints the wall time, the tool's peak memory (its maximum resident set) and how
many of the K uploads were found. With --offset-hours the camera clock is that many hours ahead
of the observations: the first pass finds nothing and the clock-offset search looks at every
pair of the day. It is a measurement: the exit code is 0 whatever the tool does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fake_inat import FakeINaturalist
from support import SCRIPT
from support.cli import cli_env
from support.scenario import observation_record
from support.world import USER, save_picture
from support.xmp import read_photo_id

START = dt.datetime(2023, 6, 3, 8, 0, 0)


def build(folder: Path, photos: int, uploads: int, offset: dt.timedelta) -> dict[str, int]:
    """Draw the pictures and write scenario.json; returns file name -> expected photo id."""
    pictures, sources = folder / "pictures", folder / "sources"
    sources.mkdir(parents=True)
    observations, expected = [], {}
    step = max(1, photos // max(1, uploads))
    for i in range(photos):
        taken = START + dt.timedelta(seconds=i)
        name = f"burst{i:04d}.jpg"
        save_picture(pictures / name, 7000 + i, taken + offset, (4000, 3000))
        if i % step or len(expected) >= uploads:
            continue
        shutil.copyfile(pictures / name, sources / name)
        expected[name] = photo_id = 900_000 + i
        photos_ = [{"id": photo_id, "observation_photo_id": 80_000 + i, "source": name}]
        coyote = {"name": "Canis latrans", "rank": "species"}
        observations.append(
            observation_record(60_000 + i, USER, taken.replace(second=0), photos_, coyote)
        )
    scenario = {"users": [{"id": 4242, "login": USER}], "observations": observations}
    (folder / "scenario.json").write_text(json.dumps(scenario), encoding="utf-8")
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=80)
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--offset-hours", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=None, help="keep the burst here")
    parser.add_argument("--script", type=Path, default=SCRIPT, help="the inat_photos.py to run")
    args = parser.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="inat-burst-"))
    if folder.exists():
        shutil.rmtree(folder)
    offset = dt.timedelta(hours=args.offset_hours)
    started = time.monotonic()
    expected = build(folder, args.photos, args.uploads, offset)
    drawn = time.monotonic() - started
    print(f"Drew {args.photos} photos of 4000x3000 in one cluster in {drawn:.0f} s.")
    with FakeINaturalist(folder / "scenario.json", base_dir=folder / "sources") as fake:
        for photo_id in expected.values():  # rendered before the tool starts, as iNaturalist's
            fake.photo_bytes(photo_id, "large")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(args.script), "-u", USER, str(folder / "pictures")],
            env=cli_env(fake.api_url, folder / "cache"),
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    found = sum(read_photo_id(folder / "pictures" / name) == i for name, i in expected.items())
    print(f"exit {done.returncode}; wall {wall:.1f} s; peak memory {peak:.0f} MB; ", end="")
    print(f"found {found} of {len(expected)} uploads", end="")
    print(f" (camera clock {args.offset_hours:g} h ahead)." if args.offset_hours else ".")
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-2000:])
    if args.out is None:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
