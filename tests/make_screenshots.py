#!/usr/bin/env python3
"""The README's screenshots of the HTML log, taken with headless Chromium from demo runs.

    python tests/make_screenshots.py [--out images] [--work DIR]

Runs the tool on a copy of example_pictures against the fake iNaturalist (as tests/demo.py
does) and photographs its log:

  log_summary.png   the top of a first run's page: summary, counts, filters, associations
  log_refusal.png   a near miss in Refusals with the command that confirms it (a run with
                    --ssim_threshold 97.5%, which the demo's poppy misses by a hair)
  log_known.png     a rerun's page: nothing new, the known photos collapsed

Needs Chromium (apt-get install chromium). The PNGs are reduced to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from fake_inat import FakeINaturalist
from PIL import Image
from support import ROOT, SCENARIO, SCRIPT
from support.browser import find_chromium, screenshot
from support.cli import cli_env
from support.examples import USER, copy_examples


def run_tool(folder: Path, api_url: str, *options: str) -> Path:
    """One run over folder/pictures with folder/cache; returns its log."""
    log = folder / "log.html"
    command = [sys.executable, str(SCRIPT), "-u", USER, "--logfile", str(log), *options]
    subprocess.run(
        [*command, str(folder / "pictures")],
        env=cli_env(api_url, folder / "cache"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return log


def shoot(url: str, target: Path, width: int, height: int) -> None:
    screenshot(url, target, width, height)
    with Image.open(target) as picture:
        small = picture.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(target, optimize=True)
    print(f"{target}: {width}x{height}, {target.stat().st_size // 1024} KB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "images")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    if find_chromium() is None:
        print("Chromium is not installed (apt-get install chromium).", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="inat-screenshots-"))
    args.out.mkdir(parents=True, exist_ok=True)
    with FakeINaturalist(SCENARIO) as server:
        plain, strict = work / "plain", work / "strict"
        for folder in (plain, strict):
            copy_examples(folder / "pictures")
        first = run_tool(plain, server.api_url)
        shoot(first.as_uri(), args.out / "log_summary.png", 1200, 720)
        near = run_tool(strict, server.api_url, "--ssim_threshold", "97.5%")
        shoot(near.as_uri() + "#section=refused&text=dscf0119", args.out / "log_refusal.png",
              1200, 640)  # fmt: skip
        rerun = run_tool(plain, server.api_url)
        shoot(rerun.as_uri(), args.out / "log_known.png", 1200, 420)
    print(f"The runs are in {work}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
