#!/usr/bin/env python3
"""Offline demo: run inat_photos.py on a copy of example_pictures against the fake iNaturalist.

Usage: python tests/demo.py [--out DIR] [--twice]
Writes DIR/pictures (the tagged copies), DIR/log.html and DIR/cache; example_pictures itself
is never modified.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_inat import FakeINaturalist  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-run", help="output folder (default demo-run)")
    parser.add_argument("--twice", action="store_true", help="run a second time, as cron would")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(
        ROOT / "example_pictures", out / "pictures", ignore=shutil.ignore_patterns("*.json", "*.md")
    )
    with FakeINaturalist(ROOT / "example_pictures" / "scenario.json") as server:
        env = dict(os.environ, INAT_API_URL=server.api_url, INAT_PHOTOS_CACHE=str(out / "cache"))
        command = [
            sys.executable,
            str(ROOT / "inat_photos.py"),
            "--user",
            "demo_naturalist",
            "--logfile",
            str(out / "log.html"),
            str(out / "pictures"),
        ]
        print("$", " ".join(command[1:]), flush=True)
        code = subprocess.call(command, env=env)
        if args.twice and code == 0:
            print("\n$ (second run)", flush=True)
            code = subprocess.call(command, env=env)
    print(f"\nHTML log: {out / 'log.html'}\nTagged pictures: {out / 'pictures'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
