"""Benchmark for GitHub issue 26: a lifetime archive, mostly photos that were never uploaded.

Makes (deterministically; kept under /tmp and reused) an archive of N small camera JPEGs,
about 10 a day, with a handful of observations (tests/support/archive.py plans it). The
photos that were uploaded are drawn as real scenes (320x240); every other file is one of a
few small drawn templates (64x48) with its own EXIF capture time, so 200,000 files take a
minute to write, not hours. Then, back to back, for each inat_photos.py given (--script,
repeatable: say the old one too to compare):

1. the walk-and-stat floor: a Python process that walks the tree with os.scandir and stats
   every file (the least an unchanged rerun must do),
2. the first run (empty cache),
3. the unchanged rerun with --quiet (twice; the better one counts, the floor is taken again
   between them),

with wall and CPU time, peak memory (ru_maxrss of the CLI), API requests, what it printed,
and PASS/FAIL for issue 26's targets (rerun <= 2 x floor + 0.8 s at 50,000 files; <= 5 s and
< 500 MB at 200,000).

    python tests/bench_scale.py [--photos N] [--out DIR] [--script PATH ...] [--skip-first]

Not part of the test run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyexiv2
from bench_archive import network_figures, run_measured
from fake_inat import FakeINaturalist
from support import SCRIPT
from support.archive import (
    USER,
    camera_exif,
    draw_scene,
    make_picture,
    plan_archive,
)
from support.xmp import read_tags

GENERATOR_VERSION = 1
TEMPLATES = 24
TEMPLATE_SIZE = (64, 48)
UPLOADED_SIZE = (320, 240)
PLACEHOLDER = "1999:01:01 00:00:00"
LATENCY = 0.25
RATE = 1.0

_FLOOR = """
import os, sys, time
started = time.perf_counter()
count = 0
def walk(folder):
    global count
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path)
            else:
                entry.stat(follow_symlinks=False)
                count += 1
walk(sys.argv[1])
print(count, time.perf_counter() - started)
"""


def template_bytes(k: int) -> bytes:
    """A small drawn JPEG with camera EXIF whose three dates are PLACEHOLDER."""
    picture = draw_scene([26, 5, k], *TEMPLATE_SIZE)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    item = {
        "taken": "1999-01-01T00:00:00",
        "make": "Canon",
        "model": "Canon EOS R6",
        "gps": None,
        "orientation": 1,
        "width": TEMPLATE_SIZE[0],
        "height": TEMPLATE_SIZE[1],
    }
    image = pyexiv2.ImageData(buffer.getvalue())
    try:
        image.modify_exif(camera_exif(item))
        return image.get_bytes()
    finally:
        image.close()


def build(folder: Path, plan: dict) -> float:
    """Write the archive into folder unless an identical one is there; seconds spent."""
    manifest = folder / "manifest.json"
    params = {**plan["params"], "scale_version": GENERATOR_VERSION}
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == params:
        return 0.0
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    drawn = {spec["source"] for o in plan["scenario"]["observations"] for spec in o["photos"]}
    jobs = []
    for item in [*plan["local"], *plan["phone"], *plan["others"]]:
        if item["file"] in drawn or not item["file"].startswith("pristine/"):
            if item["file"].startswith("pristine/"):
                item = {**item, "width": UPLOADED_SIZE[0], "height": UPLOADED_SIZE[1]}
            else:
                item = {
                    **item,
                    "width": min(item["width"], 320),
                    "height": min(item["height"], 240),
                }
            jobs.append((str(folder / item["file"]), {**item, "orientation": 1}))
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(make_picture, jobs, chunksize=4))
        templates = list(pool.map(template_bytes, range(TEMPLATES)))
    placeholder = PLACEHOLDER.encode()
    for n, item in enumerate(plan["local"]):
        target = folder / item["file"]
        if item["file"] not in drawn:
            when = dt.datetime.fromisoformat(item["taken"]).strftime("%Y:%m:%d %H:%M:%S")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(templates[n % TEMPLATES].replace(placeholder, when.encode()))
        moment = dt.datetime.fromisoformat(item["taken"]).timestamp()
        os.utime(target, (moment, moment))
    manifest.write_text(json.dumps({"params": params}))
    return time.perf_counter() - started


def floor(pictures: Path) -> float:
    """Seconds a fresh Python process takes to walk the tree and stat every file."""
    done = subprocess.run(
        [sys.executable, "-c", _FLOOR, str(pictures)], capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[1])


def found_right(archive: Path, plan: dict) -> str:
    """'right/expected, wrong' over the uploaded photos (the others are not read back)."""
    right = wrong = 0
    for file, want in plan["expected"].items():
        tags = read_tags(archive / file)
        if tags.observation is not None:
            right += (tags.observation, tags.photo) == (want["observation"], want["photo"])
            wrong += (tags.observation, tags.photo) != (want["observation"], want["photo"])
    return f"{right}/{len(plan['expected'])} right, {wrong} wrong"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--script", type=Path, action="append", default=None)
    parser.add_argument("--skip-first", action="store_true", help="reuse each script's cache")
    args = parser.parse_args(argv)
    n = args.photos
    folder = (args.out or Path(tempfile.gettempdir()) / f"inat_scale_{n}").resolve()
    scripts = [s.resolve() for s in (args.script or [SCRIPT])]
    plan = plan_archive(
        n,
        TEMPLATE_SIZE,
        seed=26,
        observed_fraction=12 / n,
        other_in_range=20,
        other_outside=10,
        phone_side=320,
        photos_per_day=10.0,
    )
    took = build(folder / "archive", plan)
    print(
        f"inat_photos scale benchmark (issue 26): {n} files over {plan['days']} days,"
        f" {len(plan['expected'])} uploaded; archive in {folder}"
        + (f" (made in {took:.0f} s)" if took else " (reused)")
    )
    pictures = folder / "archive" / "pristine"
    fake = FakeINaturalist(
        plan["scenario"],
        base_dir=folder / "archive",
        latency=LATENCY,
        max_requests_per_second=RATE,
    )
    fake.start()
    rows = []
    ok = True
    try:
        for script in scripts:
            tag = hashlib.sha1(str(script).encode()).hexdigest()[:8]  # a cache per script
            cache, logs = folder / f"cache_{tag}", folder / f"logs_{tag}"
            if not args.skip_first:
                shutil.rmtree(cache, ignore_errors=True)
            args_ = ["-u", USER["login"], "--quiet", str(pictures)]
            stages = [("walk-and-stat floor", None)]
            if not args.skip_first:
                stages.append(("first run", args_))
            stages += [("unchanged rerun", args_), ("walk-and-stat floor", None)]
            stages += [("unchanged rerun", args_)]
            best: dict[str, dict] = {}
            for name, cli in stages:
                if cli is None:
                    seconds = floor(pictures)
                    row = {"name": name, "wall": seconds, "cpu": None, "peak_mb": None}
                else:
                    fake.reset_log()
                    result = run_measured(cli, fake.api_url, cache, logs, "run", script=script)
                    row = {"name": name, **result, **network_figures(fake)}
                    if "rerun" in name and (result["stdout"].strip() or result["returncode"]):
                        print(f"    rerun printed: {result['stdout'][-500:]!r}")
                    if name == "first run":
                        row["found"] = found_right(pictures.parent, plan)
                rows.append((script, row))
                if name not in best or row["wall"] < best[name]["wall"]:
                    best[name] = row
                cpu = f"{row['cpu']:.2f}" if row["cpu"] is not None else "-"
                peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] is not None else "-"
                api = row.get("api", "-")
                print(
                    f"  {script}: {name:<22} wall {row['wall']:7.2f} s  CPU {cpu:>6} s"
                    f"  peak {peak:>5} MB  API {api}  exit {row.get('returncode', 0)}"
                    + (f"  found {row['found']}" if "found" in row else ""),
                    flush=True,
                )
            rerun, low = best["unchanged rerun"], best["walk-and-stat floor"]
            targets = [
                (
                    f"unchanged rerun {rerun['wall']:.2f} s <= 2 x floor {low['wall']:.2f} s"
                    f" + 0.8 s = {2 * low['wall'] + 0.8:.2f} s",
                    rerun["wall"] <= 2 * low["wall"] + 0.8,
                ),
                (f"unchanged rerun: API requests {rerun['api']} == 1", rerun["api"] == 1),
                (
                    f"unchanged rerun: printed nothing, exit {rerun['returncode']}",
                    not rerun["stdout"].strip() and rerun["returncode"] == 0,
                ),
                (f"peak memory {rerun['peak_mb']:.0f} MB < 500 MB", rerun["peak_mb"] < 500),
            ]
            if n >= 200_000:
                targets.append(
                    (f"unchanged rerun {rerun['wall']:.2f} s <= 5 s", rerun["wall"] <= 5)
                )
            print(f"{script}:")
            for text, passed in targets:
                print(f"  {'PASS' if passed else 'FAIL'}  {text}")
                ok = ok and passed
    finally:
        fake.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
