"""Benchmark for issue 19: threads against a process pool for decoding local photos and
finding their keypoints, the CPU-bound work of a first run.

    python tests/bench_pool.py [FOLDER] [--photos N] [--size medium|large] [--workers W]

Takes N JPEGs from FOLDER (default: the 300-photo archive of tests/bench_archive.py, drawn
first if missing), then decodes each upright at the size the tool compares an upload of that
iNaturalist size with (JPEG draft mode) and finds its keypoints, as PictureSource does:
one at a time, in W threads, and in a pool of W processes (which must send each picture and
its keypoints back). Prints the wall time per photo of each. The files are read once before
timing, so that the disk cache is warm for all three.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import support  # noqa: F401  (puts the repository's root on sys.path)

import inat_photos as ip


def decode_and_find(path: Path, side: int) -> tuple[object, ip.Features]:
    """What the tool does with a local photo before comparing it: the picture and keypoints."""
    picture = ip.decode_upright(path, 1, side)
    return picture, ip.find_local_features(picture)


def timed(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(tempfile.gettempdir()) / "inat_bench_300_4000x3000" / "pristine"
    parser.add_argument("folder", type=Path, nargs="?", default=default)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--size", choices=("medium", "large"), default="medium")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    ip.configure_process()  # the pixel limit and namespaces, as main sets them
    if not args.folder.exists():
        print(f"{args.folder} is missing: run python tests/bench_archive.py --prepare first.")
        return 1
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[: args.photos]
    for path in files:
        path.read_bytes()
    side = round(max(ip.INAT_PIXELS[args.size], ip.HTML_THUMBNAIL) / ip.SMALLEST_CROP)
    work = [(path, side) for path in files]
    print(f"{len(files)} photos from {args.folder}, decoded for {args.size} uploads (side {side}).")

    def serial() -> None:
        for path, s in work:
            decode_and_find(path, s)

    def pooled(pool: Executor) -> Callable[[], None]:
        return lambda: list(pool.map(decode_and_find, *zip(*work, strict=True)))

    print(f"  one at a time:        {timed(serial, len(files)) * 1000:6.1f} ms per photo")
    with ThreadPoolExecutor(args.workers) as threads:
        print(
            f"  {args.workers} threads:            "
            f"{timed(pooled(threads), len(files)) * 1000:6.1f} ms per photo"
        )
    with ProcessPoolExecutor(args.workers) as processes:
        list(processes.map(abs, range(args.workers)))  # started before timing
        print(
            f"  {args.workers} processes:          "
            f"{timed(pooled(processes), len(files)) * 1000:6.1f} ms per photo"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
