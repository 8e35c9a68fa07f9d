"""Issue 18: safe for a lifetime archive, through the CLI against the fake iNaturalist.

A download budget stops a first run cleanly and later runs go on without fetching a photo
twice; the download ledger survives SIGKILL; a new sidecar keeps the keywords inside a DNG or
HEIC file; --quiet prints nothing when nothing changed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from support.files import digest
from support.formats import write_dng, write_heic, xmp_packet
from support.world import World, assert_tagged, make_world
from support.xmp import read_photo_id, read_xmp

import inat_photos as ip

DAYS = 6


@pytest.fixture
def spread_world(tmp_path: Path) -> World:
    """DAYS photos, one a day, each the source of one upload of about 100 kB."""
    return make_world(tmp_path, DAYS, size=(1200, 900), spacing=dt.timedelta(days=1, minutes=7))


def _fetches(fake: object) -> Counter[str]:
    return Counter(entry["path"] for entry in fake.photo_requests())  # type: ignore[attr-defined]


def test_a_download_budget_stops_a_run_and_later_runs_go_on(spread_world: World) -> None:
    world = spread_world
    fetched: Counter[str] = Counter()
    with world.fake() as fake:
        first = world.run_cli(fake.api_url, "--max-download-per-hour", "20kB")
        fetched += _fetches(fake)
        assert first.returncode == 0, first.stderr
        budget = [line for line in first.lines if line.startswith("Download budget reached")]
        assert len(budget) == 1, first.stdout
        assert "left for a later run, which can go on after" in budget[0]
        tagged = [twin for twin in world.twins if read_photo_id(twin.path) is not None]
        assert 0 < len(tagged) < DAYS
        for twin in tagged:  # nothing on a guess: what is tagged is right
            assert_tagged(twin)

        fake.reset_log()
        second = world.run_cli(fake.api_url, "--max-download-per-hour", "20kB")
        assert second.returncode == 0, second.stderr
        assert _fetches(fake) == Counter(), "the spent budget of this hour was spent again"
        assert [t for t in world.twins if read_photo_id(t.path) is not None] == tagged

        fake.reset_log()
        third = world.run_cli(fake.api_url, "--max-download-per-hour", "100MB")
        fetched += _fetches(fake)
        assert third.returncode == 0, third.stderr
        assert not [line for line in third.lines if line.startswith("Download budget")]
    for twin in world.twins:
        assert_tagged(twin)
    assert fetched and max(fetched.values()) == 1, fetched  # no photo downloaded twice


def _ledger_rows(ledger: Path) -> int:
    """Downloads the ledger holds so far (0 before the run made it)."""
    if not ledger.exists():
        return 0
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(ledger)) as db:
        return db.execute("SELECT COUNT(*) FROM downloads").fetchone()[0]
    return 0


def test_the_download_ledger_survives_sigkill(spread_world: World) -> None:
    world = spread_world
    ledger = world.cache / "downloads.sqlite"
    with world.fake(bandwidth=30_000) as fake:  # a photo takes about a second
        process = world.start_cli(fake.api_url, stdout=-3, stderr=-3)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _ledger_rows(ledger) < 2:
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        asked = len(fake.photo_requests())
    with sqlite3.connect(ledger) as db:
        count, total = db.execute("SELECT COUNT(*), SUM(bytes) FROM downloads").fetchone()
    assert 2 <= count <= asked and total > 2 * 20_000
    kept = ip.DownloadLedger(ledger, per_hour=total, per_day=10**9)
    try:
        assert not kept.room()  # the next run sees what the killed one downloaded
    finally:
        kept.close()


def test_the_ledger_waits_for_the_oldest_download_to_leave_the_hour(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ledger = ip.DownloadLedger(tmp_path / "d.sqlite", 1000, 10_000, clock=lambda: now[0])
    try:
        for size in (400, 400, 400):
            ledger.record(size)
            now[0] += 60
        assert not ledger.room()
        assert ledger.resumes_at() == pytest.approx(1_000_000 + 3600)
        now[0] = 1_000_000 + 3601
        assert ledger.room()
        assert ledger.used(86400) == (1200, 3)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500_000_000), ("4GB", 4_000_000_000), ("1.5 GB", 1_500_000_000),
     ("800k", 800_000), ("2GiB", 2 * 1024**3), ("12345", 12345)],
)  # fmt: skip
def test_sizes_read_as_people_write_them(text: str, size: int) -> None:
    assert ip.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-4GB", "4 parsecs", "0"])
def test_a_bad_size_is_refused_by_name(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        ip.parse_size(text)


KEYWORDS = [f"user keyword {i}" for i in range(20)]


@pytest.mark.parametrize("kind", ["dng", "heic"])
def test_a_new_sidecar_keeps_the_keywords_inside_the_file(tmp_path: Path, kind: str) -> None:
    world = make_world(tmp_path, 1, size=(640, 480))
    twin = world.twins[0]
    picture = Image.open(twin.source).convert("RGB")
    camera_file = twin.path.with_suffix(f".{kind}")
    packet = xmp_packet(KEYWORDS, title="Beetle on the path", rating=4)
    if kind == "dng":
        write_dng(camera_file, picture, taken=twin.taken, xmp=packet)
    else:
        write_heic(camera_file, picture, taken=twin.taken, xmp=packet)
    twin.path.unlink()
    before = digest(camera_file)
    with world.fake() as fake:
        result = world.run_cli(fake.api_url)
    assert result.returncode == 0, result.stderr
    assert digest(camera_file) == before
    sidecar = read_xmp(camera_file.with_suffix(".xmp"))
    assert sidecar[ip.TAG_SUBJECT] == [*KEYWORDS, twin.caption]
    assert sidecar[ip.TAG_PHOTO] == str(twin.photo)
    assert sidecar.get("Xmp.xmp.Rating") == "4"


def test_quiet_prints_nothing_when_nothing_changed_and_only_the_change_when_one_did(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, 3)
    broken = world.pictures / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a picture")
    with world.fake() as fake:
        first = world.run_cli(fake.api_url, "--quiet")
        assert first.returncode == ip.EXIT_FILE_ERRORS
        assert "broken.jpg" in first.stderr  # a problem is said once
        assert len([line for line in first.lines if " found for photo id " in line]) == 3
        assert first.lines[-1].startswith("Summary: 3 iNaturalist annotations added")

        again = world.run_cli(fake.api_url, "--quiet")
        assert (again.stdout, again.stderr) == ("", "")

        fake.set_taxon(world.twins[0].observation, {"name": "Vulpes vulpes", "rank": "species"})
        changed = world.run_cli(fake.api_url, "--quiet", "--bypass_cache")
        assert changed.stderr == ""
        lines = [line for line in changed.lines if line]
        assert len(lines) == 2, changed.stdout
        assert "Updating subject from" in lines[0] and "'Vulpes vulpes'" in lines[0]
        summary = "Summary: 0 iNaturalist annotations added, 0 modified; 0 identifications added"
        assert lines[1].startswith(f"{summary}, 1 modified")

    listed = world.run_cli("http://127.0.0.1:9", "--list-problems")
    assert listed.returncode == 0
    assert "broken.jpg" in listed.stdout and "first reported" in listed.stdout
