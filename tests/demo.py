#!/usr/bin/env python3
"""Offline demo: run inat_photos.py on a copy of example_pictures against the fake iNaturalist.

Usage: python tests/demo.py [--out DIR] [--twice] [TOOL OPTIONS...]
Options it does not know go to inat_photos.py (e.g. --hierarchical-keywords --darwin-core).
Writes DIR/pictures (the tagged copies), DIR/log.html and DIR/cache; example_pictures itself
is never modified.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from fake_inat import FakeINaturalist
from support import SCENARIO, SCRIPT
from support.cli import cli_env
from support.examples import USER, copy_examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-run", help="output folder (default demo-run)")
    parser.add_argument("--twice", action="store_true", help="run a second time, as cron would")
    args, tool_options = parser.parse_known_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    copy_examples(out / "pictures")
    # Named as the user named --out (demo-run/pictures/...), as the README quotes the output.
    pictures = Path(args.out) / "pictures"
    with FakeINaturalist(SCENARIO) as server:
        env = cli_env(server.api_url, out / "cache")
        command = [
            sys.executable,
            str(SCRIPT),
            "--user",
            USER,
            "--logfile",
            str(out / "log.html"),
            *tool_options,
            str(pictures),
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
