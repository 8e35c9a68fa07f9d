"""Measure inat_photos' matching on a labelled archive (issues 3, 10): found, wrong, missed.

    python tests/bench_matching.py [--small] [--out DIR] [--keep] [--seed N] [--extra=--ARG]
                                   [--token] [--per-category] [--script FILE]
                                   [--no-prerender]

Builds the set of tests/make_matching_set.py (or reuses DIR when it already holds one), serves
its scenario.json with the fake iNaturalist, runs

    inat_photos.py --user bench_naturalist --logfile DIR/log.html DIR/pictures

as a subprocess with a private INAT_PHOTOS_CACHE, reads the XMP back and prints, per category,
how many local photos there are, how many should be associated, and how many were associated
correctly, wrongly (another photo id than the truth, or any where the truth is none) or not at
all (and of those, how many the tool refused as a tie), then the wall time and the CPU time
(user + system, of the tool's process) per local photo. It is a measurement: the exit code is 0
whatever the tool does.

The fake server renders every upload (resizing a 12-megapixel source) before the tool starts,
as a real server has its renditions ready: that work would otherwise share the cores with the
tool and count in its wall time. --no-prerender leaves it in, as measured before issue 10.

With --token the tool runs with an API token (issue 12): the fake server then gives each
upload the original file name of its true local file (the name the camera gave it), as
iNaturalist does for the owner's own photos.

Without --out the set is built in a temporary folder and removed afterwards (unless --keep).
A reused DIR is first cleared of the tags an earlier run wrote. The tool's output is kept in
DIR/stdout.txt and DIR/stderr.txt, its HTML log in DIR/log.html.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyexiv2
from fake_inat import FakeINaturalist
from make_matching_set import CATEGORIES, USER, build
from random_editor import FAMILIES, HELD_OUT
from support import SCRIPT
from support.xmp import read_photo_id, read_xmp


def clear_tags(root: Path, files: list[str]) -> int:
    """Remove what an earlier run wrote (the set is made without any XMP); returns how many."""
    cleared = 0
    for name in files:
        if read_xmp(root / name):
            with pyexiv2.Image(str(root / name)) as image:
                image.clear_xmp()
            cleared += 1
    return cleared


def is_set(folder: Path) -> bool:
    return all((folder / name).exists() for name in ("scenario.json", "truth.json", "pictures"))


@dataclass
class Row:
    locals: int = 0
    expected: int = 0
    correct: int = 0
    wrong: int = 0
    missed: int = 0
    ties: int = 0  # of the missed: the tool reported a tie for the upload
    wall: float | None = None  # seconds, when the category ran on its own
    cpu: float | None = None
    failures: list[str] = field(default_factory=list)


TIE = re.compile(r"^Not associated: photo id (\d+) fits .* too close to choose\.$")


def tied_uploads(stdout: str) -> set[int]:
    """The iNaturalist photo ids the tool refused to associate because of a tie."""
    return {int(m.group(1)) for line in stdout.splitlines() if (m := TIE.match(line))}


def score(
    truth: dict[str, int | None],
    found: dict[str, int | None],
    notes: dict[str, dict],
    ties: set[int] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Row]:
    """Per category: correct, wrong (another id, or any id where none is expected), missed."""
    rows = {category: Row() for category in CATEGORIES}
    for path, expected in truth.items():
        category = notes.get(path, {}).get("category") or Path(path).parent.name
        row = rows.setdefault(category, Row())
        got = found.get(path)
        row.locals += 1
        row.expected += expected is not None
        note = notes.get(path, {}).get("note", "")
        if got is not None and got == expected:
            row.correct += 1
        elif got is not None:
            row.wrong += 1
            row.failures.append(f"WRONG  {path}: got {got}, expected {expected}  [{note}]")
        elif expected is not None:
            row.missed += 1
            tie = expected in ties
            row.ties += tie
            kind = "TIE   " if tie else "MISSED"
            row.failures.append(f"{kind} {path}: expected {expected}  [{note}]")
    return rows


def _line(name: str, row: Row) -> str:
    found = f"{row.correct / row.expected:.0%}" if row.expected else "-"
    times = ""
    if row.wall is not None and row.cpu is not None and row.locals:
        times = f" {row.wall / row.locals:>7.3f} {row.cpu / row.locals:>7.3f}"
    return (
        f"{name:<10} {row.locals:>6} {row.expected:>9} {row.correct:>8} {row.wrong:>6}"
        f" {row.missed:>7} {row.ties:>5} {found:>6}{times}"
    )


def _summed(rows: list[Row], timed: bool) -> Row:
    total = Row(wall=0.0 if timed else None, cpu=0.0 if timed else None)
    for row in rows:
        for name in ("locals", "expected", "correct", "wrong", "missed", "ties", "wall", "cpu"):
            if getattr(row, name) is not None and getattr(total, name) is not None:
                setattr(total, name, getattr(total, name) + getattr(row, name))
    return total


# The random editor's families (issue 25), summed apart: the figure users meet is the held-out
# one. fburst's uploaded frames went through tuned families.
EDITOR_GROUPS = {
    "tuned": (*(f for f in FAMILIES if f not in HELD_OUT), "fburst"),
    "held out": HELD_OUT,
}


def print_table(rows: dict[str, Row]) -> Row:
    timed = any(row.wall is not None for row in rows.values())
    header = (
        f"{'category':<10} {'locals':>6} {'expected':>9} {'correct':>8} {'wrong':>6}"
        f" {'missed':>7} {'ties':>5} {'found':>6}"
    ) + (f" {'wall/ph':>7} {'cpu/ph':>7}" if timed else "")
    print(header)
    print("-" * len(header))
    for category, row in rows.items():
        print(_line(category, row))
    print("-" * len(header))
    total = _summed(list(rows.values()), timed)
    print(_line("total", total))
    for label, names in EDITOR_GROUPS.items():
        group = [rows[name] for name in names if name in rows and rows[name].expected]
        if group:
            print(_line(label, _summed(group, timed)))
    return total


BENCH_TOKEN = "bench-token"


def named_scenario(folder: Path) -> dict:
    """The set's scenario with each upload's original file name: its true local file's."""
    scenario = json.loads((folder / "scenario.json").read_text(encoding="utf-8"))
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    names = {photo_id: Path(path).name for path, photo_id in truth.items() if photo_id}
    for observation in scenario["observations"]:
        for photo in observation.get("photos") or []:
            if photo.get("id") in names:
                photo["original_filename"] = names[photo["id"]]
    return scenario


def serve(folder: Path, token: bool) -> FakeINaturalist:
    """A fake iNaturalist for the set (not started); with token, uploads carry file names and
    the bench token is accepted."""
    scenario = named_scenario(folder) if token else folder / "scenario.json"
    fake = FakeINaturalist(scenario, base_dir=folder)
    if token:
        fake.add_token(BENCH_TOKEN, USER["login"])
    return fake


def prerender(fake: FakeINaturalist, scenario: Path, size: str) -> float:
    """Let the fake server render every upload at size before the tool runs; seconds taken."""
    started = time.monotonic()
    data = json.loads(scenario.read_text(encoding="utf-8"))
    ids = [photo["id"] for obs in data["observations"] for photo in obs["photos"]]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda photo_id: fake.photo_bytes(photo_id, size), ids))
    return time.monotonic() - started


def run_tool(
    folder: Path,
    extra: list[str],
    timeout: float,
    script: Path = SCRIPT,
    pictures: Path | None = None,
    logfile: Path | None = None,
    fake: FakeINaturalist | None = None,
    token: bool = False,
) -> tuple[int, str, str, float, float]:
    """Run the CLI on folder/pictures against fake (or a fresh one serving the scenario).

    Returns (exit code, stdout, stderr, wall seconds, CPU seconds of the tool's process).
    """
    if fake is None:
        with serve(folder, token) as fresh:
            return run_tool(folder, extra, timeout, script, pictures, logfile, fresh, token)
    cache = folder / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INAT_")}
    args = [
        sys.executable,
        str(script),
        "--user",
        USER["login"],
        "--logfile",
        str(logfile or folder / "log.html"),
        *extra,
        str(pictures or folder / "pictures"),
    ]
    env.update(INAT_API_URL=fake.api_url, INAT_PHOTOS_CACHE=str(cache), PYTHONIOENCODING="utf-8")
    if token:
        env["INAT_API_TOKEN"] = BENCH_TOKEN
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=timeout, errors="replace"
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        code = -1
        stdout = expired.stdout if isinstance(expired.stdout, str) else ""
        stderr = f"timed out after {timeout} s"
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shutil.rmtree(cache, ignore_errors=True)
    return code, stdout, stderr, seconds, cpu


def inat_sizes(extra: list[str]) -> list[str]:
    """The sizes the tool may download: the --inat_size it is given in extra, else both of
    its default (medium first, large where medium does not settle a pair)."""
    for i, arg in enumerate(extra):
        if arg.startswith("--inat_size="):
            return [arg.split("=", 1)[1]]
        if arg == "--inat_size" and i + 1 < len(extra):
            return [extra[i + 1]]
    return ["medium", "large"]


def download_line(fake: FakeINaturalist, matched: int) -> str:
    """Photo downloads by size, and the bytes per correctly matched upload."""
    got = [r for r in fake.photo_requests() if r["status"] == 200]
    sizes = Counter(r["path"].rsplit("/", 1)[-1].split(".")[0] for r in got)
    total = sum(r["bytes"] for r in got)
    each = ", ".join(f"{n} {size}" for size, n in sorted(sizes.items()))
    return (
        f"Downloads: {len(got)} photos ({each}), {total / 1e6:.1f} MB;"
        f" {total / max(1, matched) / 1e3:.0f} kB per upload found."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small set the tests use")
    parser.add_argument("--out", type=Path, help="build the set here, or reuse the one here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=None, help="processes drawing the set")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG on to inat_photos.py (repeatable), e.g. --extra=--inat_size=medium",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the tool may take")
    parser.add_argument(
        "--per-category",
        action="store_true",
        help="run the tool once per category folder instead of once over pictures/",
    )
    parser.add_argument(
        "--script",
        type=Path,
        default=SCRIPT,
        help="the inat_photos.py to measure (default: the repository's), e.g. an older copy",
    )
    parser.add_argument(
        "--token", action="store_true", help="run with an API token: uploads carry file names"
    )
    parser.add_argument(
        "--no-prerender",
        action="store_true",
        help="let the fake server render uploads while the tool runs (timed, as before issue 10)",
    )
    args = parser.parse_args(argv)

    temporary = args.out is None
    folder = Path(tempfile.mkdtemp(prefix="inat_matching_")) if temporary else args.out.resolve()
    try:
        if is_set(folder):
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            print(
                f"Reusing the set in {folder} (seed {manifest.get('seed')},"
                f" {'small' if manifest.get('small') else 'full'})."
            )
        else:
            print(f"Building the {'small' if args.small else 'full'} set in {folder} ...")
            built = build(folder, small=args.small, seed=args.seed, jobs=args.jobs)
            print(f"Built in {built['seconds']:.1f} s.\n")
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
        cleared = clear_tags(folder, list(truth))
        if cleared:
            print(f"Cleared the tags of {cleared} picture(s) from an earlier run.")

        fake = serve(folder, args.token)
        if not args.no_prerender:
            took = sum(
                prerender(fake, folder / "scenario.json", size) for size in inat_sizes(args.extra)
            )
            print(f"The fake server rendered the uploads in {took:.1f} s (not timed).")
        print(f"Running {args.script} on {len(truth)} local photos ...", flush=True)
        times: dict[str, tuple[float, float]] = {}
        with fake:
            if not args.per_category:
                code, stdout, stderr, seconds, cpu = run_tool(
                    folder, args.extra, args.timeout, args.script, fake=fake, token=args.token
                )
            else:  # one run per folder: a crash in one category leaves the others measured
                code, stdout, stderr, seconds, cpu = 0, "", "", 0.0, 0.0
                for category in sorted(p.name for p in (folder / "pictures").iterdir()):
                    one = run_tool(
                        folder,
                        args.extra,
                        args.timeout,
                        args.script,
                        pictures=folder / "pictures" / category,
                        logfile=folder / f"log-{category}.html",
                        fake=fake,
                        token=args.token,
                    )
                    print(
                        f"  {category}: exit code {one[0]}, {one[3]:.1f} s, CPU {one[4]:.1f} s",
                        flush=True,
                    )
                    times[category] = (one[3], one[4])
                    code = code or one[0]
                    stdout += f"=== {category}\n{one[1]}"
                    stderr += f"=== {category}\n{one[2]}" if one[2] else ""
                    seconds += one[3]
                    cpu += one[4]
        (folder / "stdout.txt").write_text(stdout, encoding="utf-8")
        (folder / "stderr.txt").write_text(stderr, encoding="utf-8")
        found = {path: read_photo_id(folder / path) for path in truth}
        rows = score(truth, found, manifest.get("pictures", {}), tied_uploads(stdout))
        for category, (wall, cpu_seconds) in times.items():
            if category in rows:
                rows[category].wall, rows[category].cpu = wall, cpu_seconds

        print()
        total = print_table(rows)
        print()
        print(
            f"inat_photos.py exit code {code}; wall time {seconds:.1f} s,"
            f" {seconds / max(1, total.locals):.3f} s per local photo; CPU time {cpu:.1f} s,"
            f" {cpu / max(1, total.locals):.3f} s per local photo ({os.cpu_count()} cores)."
        )
        category = ""
        for line in stdout.splitlines():
            if line.startswith("=== "):
                category = line[4:]
            elif line.startswith("Summary:"):
                print(f"  {category}: {line}" if args.per_category else line)
        print(download_line(fake, sum(row.correct for row in rows.values())))
        clock = [line for line in stdout.splitlines() if "camera clock" in line]
        for line in clock:
            print(f"  tool: {line}")
        if code != 0:
            print("stderr (last lines):")
            for chunk in stderr.split("=== ") if args.per_category else [stderr]:
                lines = chunk.splitlines()
                shown = lines[:1] + lines[-6:] if args.per_category else lines[-10:]
                for line in shown:
                    print(f"  {line}")
        failures = [line for row in rows.values() for line in row.failures]
        if failures:
            print(f"\n{len(failures)} failure(s):")
            for line in failures:
                print(f"  {line}")
        else:
            print("\nNo failures: every expected association found, nothing wrong.")
        if not temporary or args.keep:
            print(
                f"\nThe tool's output is in {folder}/stdout.txt, its HTML log in {folder}/log.html."
            )
    finally:
        if temporary and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif temporary:
            print(f"Kept {folder}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
