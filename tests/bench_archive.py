"""Benchmark for GitHub issue 4: how inat_photos.py behaves on a big archive, run after run.

Generates (deterministically; kept in DIR and reused when the parameters match) an archive of N
camera-size JPEGs (4000x3000, some 3000x4000 or stored sideways with an EXIF Orientation; JPEG
quality 90; EXIF DateTimeOriginal, GPS, Make and Model) spread over many days, each a distinct
procedural scene, and a scenario for tests/fake_inat.py: about 0.15 N observations of 1 to 3
photos, most of them resized (sometimes cropped or turned) uploads of local photos, some taken
with a phone and not in the archive, plus a few hundred observations on days without local
photos, inside and outside the archive's date range.

The fake server then answers like iNaturalist from far away: LATENCY s per answer, photos at
BANDWIDTH bytes/s, at most RATE API requests per second (429 above). The CLI runs four times
on a copy of the archive, with its own cache:

1. first run (empty cache), writing the HTML log (--logfile),
2. unchanged rerun, without a log,
3. unchanged rerun with --logfile (issue 13: its thumbnails come from the cache),
4. rerun after one observation's identification changed (FakeINaturalist.set_taxon).

For each run it prints the wall time, the CPU time (user + system), API requests, photo
downloads and bytes (from the fake's request log), the CLI's peak memory (its ru_maxrss,
taken by a small launcher process), the files written (sha256 of every picture before and
after), the size of the HTML log, the network floor and wall/floor, then PASS/FAIL for the
targets of issues 4 and 13.

    python tests/bench_archive.py [--photos N] [--size WxH] [--out DIR] [--keep] [--jobs J]

N > 1000 camera-size pictures take long to draw and several GB; above 1000 photos the default
size is 1600x1200 (say --size 4000x3000 to insist). Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fake_inat import FakeINaturalist
from support import SCRIPT
from support.archive import (
    CAMERA_SIZE,
    CHANGED_TAXON,
    USER,
    build_archive,
    plan_archive,
)
from support.cli import cli_env
from support.files import snapshot
from support.xmp import expected_caption, read_tags

SMALL_SIZE = (1600, 1200)  # default above LARGE_ARCHIVE photos
LARGE_ARCHIVE = 1000

LATENCY = 0.25  # seconds per answer
BANDWIDTH = 20e6  # bytes per second, photo bodies
RATE = 1.0  # API requests per second
PER_PAGE = 200

STAGES = [  # (name, with --logfile)
    ("first run", True),
    ("unchanged rerun", False),
    ("unchanged rerun with --logfile", True),
    ("identification changed", False),
]


# -- measuring ------------------------------------------------------------------------------
# Runs the CLI and reports its own wall time and peak RSS. A small go-between: a child forked
# straight from this (big) process would count this process's memory in its ru_maxrss.
_LAUNCHER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[2:], timeout=float(sys.argv[1])).returncode
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
peak_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)  # bytes / KiB
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"returncode": code, "wall": wall, "cpu": cpu, "peak_mb": peak_mb}),
      file=sys.stderr)
"""


def run_measured(
    args: list[str],
    api_url: str,
    cache: Path,
    logs: Path,
    name: str,
    timeout: float = 3600,
    script: Path = SCRIPT,
) -> dict:
    """Run the CLI as a child: its wall time, exit code, output and peak memory (RSS)."""
    env = cli_env(api_url, cache)
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
    parser.add_argument(
        "--days",
        type=int,
        default=None,
        help="spread the photos over about D days (default: 7 a day)",
    )
    parser.add_argument(
        "--continuous",
        action="store_true",
        help="bioblitz days: shot without a 3-minute pause, each day one group (issue 26)",
    )
    parser.add_argument("--prepare", action="store_true", help="only generate the archive")
    parser.add_argument(
        "--script", type=Path, default=SCRIPT, help="the inat_photos.py to run (to try a change)"
    )
    args = parser.parse_args(argv)
    n = args.photos
    size = args.size or (CAMERA_SIZE if n <= LARGE_ARCHIVE else SMALL_SIZE)
    shape = f"_{args.days}d" if args.days else ""
    shape += "_continuous" if args.continuous else ""
    folder = args.out or Path(tempfile.gettempdir()) / f"inat_bench_{n}_{size[0]}x{size[1]}{shape}"
    folder = folder.resolve()
    print(f"inat_photos benchmark (issue 4): {n} photos of {size[0]}x{size[1]}", end="")
    if size != CAMERA_SIZE:
        print(f" (smaller than camera size {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]})", end="")
    print(f"; archive in {folder}")
    if args.script.resolve() != SCRIPT:
        print(f"Running {args.script.resolve()} instead of {SCRIPT}.")

    per_day = n / args.days if args.days else 7.0
    plan = plan_archive(n, size, seed=args.seed, photos_per_day=per_day, continuous=args.continuous)
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
        for size in ("medium", "large"):  # the tool asks for medium first, large for a few
            list(pool.map(lambda pid, size=size: fake.photo_bytes(pid, size), uploads))
    print(
        f"Pre-rendered {len(uploads)} uploads in the fake server"
        f" ({time.perf_counter() - started:.0f} s, not timed)."
    )

    fake.start()
    stages: list[dict] = []
    try:
        state = snapshot(pictures)
        for name, with_log in STAGES:
            changed_obs = None
            if name == "identification changed":
                changed_obs = choose_observation(pictures, plan)
                fake.set_taxon(changed_obs["observation"], CHANGED_TAXON)
            fake.reset_log()
            html_log = run_dir / f"log_{name.replace(' ', '_')}.html"  # kept with --keep
            cli_args = ["-u", USER["login"], *(["--logfile", str(html_log)] if with_log else [])]
            result = run_measured(
                [*cli_args, str(pictures)],
                fake.api_url,
                cache,
                logs,
                name.replace(" ", "_"),
                script=args.script,
            )
            log_bytes = html_log.stat().st_size if with_log and html_log.exists() else None
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
                    "log_bytes": log_bytes,
                }
            )
            print(
                f"  {name}: exit {result['returncode']}, {result['wall']:.1f} s"
                f" ({result['cpu']:.1f} s CPU)."
                f"{f' Log {log_bytes / 1e6:.2f} MB.' if log_bytes is not None else ''}"
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
            if tags.observation is not None:
                extra.append(rel)
        elif tags.observation is None:
            missing.append(rel)
        elif (tags.observation, tags.photo) != (want["observation"], want["photo"]):
            wrong.append(rel)
        else:
            right.append(rel)
            if want["caption"] not in tags.subject:
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
        if read_tags(pictures / rel).observation == want["observation"]:
            tagged.setdefault(want["observation"], []).append(rel)
    obs_id = min(tagged, key=lambda o: (-len(tagged[o]), o))
    old = next(w["caption"] for w in plan["expected"].values() if w["observation"] == obs_id)
    return {"observation": obs_id, "files": sorted(tagged[obs_id]), "old_caption": old}


def report(stages: list[dict], plan: dict, accuracy: dict, n: int, pictures: Path) -> bool:
    print()
    header = (
        f"{'stage':<32}{'wall s':>8}{'CPU s':>7}{'API req':>9}{'429s':>6}{'photo req':>11}"
        f"{'downl.':>8}{'MB down':>9}{'peak MB':>9}{'written':>9}{'rewritten':>11}"
        f"{'log MB':>8}{'floor s':>9}{'wall/floor':>12}"
    )
    print(header)
    print("-" * len(header))
    for s in stages:
        log_mb = f"{s['log_bytes'] / 1e6:.2f}" if s["log_bytes"] is not None else "-"
        print(
            f"{s['name']:<32}{s['wall']:>8.1f}{s['cpu']:>7.1f}{s['api']:>9}{s['api_429']:>6}"
            f"{s['photo_requests']:>11}{s['downloads']:>8}{s['photo_bytes'] / 1e6:>9.1f}"
            f"{s['peak_mb']:>9.0f}{len(s['written']):>9}{len(s['touched']):>11}{log_mb:>8}"
            f"{s['floor']:>9.1f}{s['wall'] / s['floor'] if s['floor'] else float('inf'):>12.2f}"
        )
    print(
        f"floor = API requests x max(latency {LATENCY} s, 1/rate {1 / RATE:g} s)"
        f" + photo requests x {LATENCY} s + photo bytes / {BANDWIDTH / 1e6:g} MB/s"
        " (one request at a time); 'rewritten': same content, new mtime/inode."
    )
    for s in stages:
        print(f"API requests, {s['name']}: {' '.join(s['calls'])}")
    first, rerun, rerun_log, changed = stages
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
    new_caption = expected_caption(CHANGED_TAXON)
    caption_ok = all(
        new_caption in (tags := read_tags(pictures / f)).subject
        and change["old_caption"] not in tags.subject
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
            f"unchanged rerun with --logfile: wall {rerun_log['wall']:.2f} s <="
            f" {rerun_limit:.1f} s",
            rerun_log["wall"] <= rerun_limit,
        ),
        (
            f"unchanged rerun with --logfile: log {(rerun_log['log_bytes'] or 0) / 1e6:.2f} MB"
            f" < 1 MB (first run's log: {(first['log_bytes'] or 0) / 1e6:.1f} MB)",
            rerun_log["log_bytes"] is not None and rerun_log["log_bytes"] < 1e6,
        ),
        (
            f"unchanged rerun with --logfile: files written {len(rerun_log['written'])},"
            f" rewritten {len(rerun_log['touched'])} == 0",
            not rerun_log["written"] and not rerun_log["touched"],
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
