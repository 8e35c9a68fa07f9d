"""Cost that grows with what needs doing, not with the archive (GitHub issue 26).

An unchanged rerun decodes no stored record of a day that has nothing to do, a day whose
upload appears later is still read and matched, --version and --help import none of the
heavy modules, and the HTML log shows pictures only for rows a person should look at.
The big archives are in tests/bench_scale.py; these worlds are a few small pictures.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import SCRIPT
from support.cli import summary_numbers
from support.scenario import observation_record, photo_record
from support.world import USER, World, make_world, save_picture
from support.xmp import read_tags

import inat_photos as ip

HEAVY = {
    "numpy",
    "PIL",
    "scipy",
    "cv2",
    "rawpy",
    "pillow_heif",
    "pyinaturalist",
    "requests",
    "requests_cache",
    "pyexiv2",
}


def imported_by(*arguments: str) -> tuple[set[str], str]:
    """The top-level modules the script imports when run with arguments, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert imported, "python -X importtime listed no import"
    return imported, done.stdout


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_version_and_help_import_no_heavy_module(option: str) -> None:
    imported, _ = imported_by(option)
    assert not imported & HEAVY


def test_version_is_answered_before_the_script_imports_its_own_modules() -> None:
    # Python compiles the whole script first; the imports and classes after that were a
    # third of --version's 0.3 s.
    imported, printed = imported_by("--version")
    assert printed == f"inat_photos.py {ip.__version__}\n"
    assert not imported & {"argparse", "dataclasses", "sqlite3", "pathlib"}


def add_quiet_days(
    world: World, days: int, per_day: int, size: tuple[int, int] = (96, 72)
) -> list[Path]:
    """Photos on later days without any upload: never compared, a lifetime archive's bulk."""
    made = []
    for day in range(1, days + 1):
        for k in range(per_day):
            path = world.pictures / f"day{day}" / f"q{k}.jpg"
            moment = dt.datetime(2022, 6, day, 10, 0) + dt.timedelta(minutes=9 * k)
            save_picture(path, 300 + 10 * day + k, moment, size)
            made.append(path)
    return made


def count_records(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths whose stored record is decoded from now on."""
    decoded: list[Path] = []
    original = ip._photo_from_record

    def counting(path: Path, record: str) -> ip.LocalPhoto:
        decoded.append(path)
        return original(path, record)

    monkeypatch.setattr(ip, "_photo_from_record", counting)
    return decoded


def test_an_unchanged_rerun_decodes_no_record_of_a_quiet_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    world = make_world(tmp_path, 2)
    quiet = add_quiet_days(world, 3, 2)
    with world.fake() as fake:
        first = world.run_main(monkeypatch, capsys, fake.api_url)
        assert first.returncode == 0 and summary_numbers(first.stdout)["added"] == 2
        decoded = count_records(monkeypatch)
        rerun = world.run_main(monkeypatch, capsys, fake.api_url, "--quiet")
        assert rerun.returncode == 0 and rerun.stdout == "" and rerun.stderr == ""
        assert sorted(decoded) == sorted(t.path for t in world.twins)  # their ids are refreshed
        decoded.clear()
        said = world.run_main(monkeypatch, capsys, fake.api_url)
    assert sorted(decoded) == sorted(t.path for t in world.twins)
    assert f"Loaded {2 + len(quiet)} local photos" in said.stdout
    assert summary_numbers(said.stdout)["added"] == 0
    assert f" {len(quiet)} local photos and 0 iNaturalist photos" in said.stdout


def test_a_quiet_day_whose_upload_appears_later_is_matched(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    quiet = add_quiet_days(world, 2, 2, (480, 360))
    later = quiet[-1]  # day 2, uploaded after the first run
    source = world.sources / "later.jpg"
    source.write_bytes(later.read_bytes())
    taken = dt.datetime(2022, 6, 2, 10, 9)
    with world.fake() as fake:
        assert world.run_cli(fake.api_url).returncode == 0
        assert read_tags(later).observation is None
        photos = [photo_record(706001, source.name, observation_photo_id=806001)]
        monarch = {"name": "Danaus plexippus", "rank": "species"}
        fake.add_observation(observation_record(6001, USER, taken, photos, monarch))
        rerun = world.run_cli(fake.api_url, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert (read_tags(later).observation, read_tags(later).photo) == (6001, 706001)
    assert all(read_tags(p).observation is None for p in quiet[:-1])


def test_an_index_from_before_gets_the_capture_time_column(tmp_path: Path) -> None:
    picture = tmp_path / "old.jpg"
    taken = dt.datetime(2021, 4, 3, 8, 7, 6)
    save_picture(picture, 5, taken, (64, 48))
    photo = ip.read_local_photo(picture, ip.Console(quiet=True))
    assert photo is not None
    db = sqlite3.connect(tmp_path / "index.sqlite")  # the table as earlier versions made it
    db.execute(
        "CREATE TABLE photos (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
        " record TEXT NOT NULL)"
    )
    info = picture.stat()
    db.execute(
        "INSERT INTO photos VALUES (?, ?, ?, ?)",
        (bytes(picture.absolute()), info.st_size, info.st_mtime_ns, ip._photo_record(photo)),
    )
    db.commit()
    db.close()
    index = ip.LocalIndex(tmp_path / "index.sqlite", "settings")
    try:
        assert index.unmarked_photos() == {}  # not known yet: read in full once
        assert index.read(picture, ip.Console(quiet=True)) == photo
        assert index.unmarked_photos() == {
            str(picture.absolute()): (info.st_size, info.st_mtime_ns, taken.isoformat())
        }
    finally:
        index.close()


def test_an_index_of_1_4_keeps_its_refusals_under_their_new_name(tmp_path: Path) -> None:
    """1.4's table of refusals was called verdicts; a rerun reads what it holds."""
    picture = tmp_path / "a.jpg"
    save_picture(picture, 1, None, (32, 24))
    info = picture.stat()
    record = ip.RefusalRecord("no iNaturalist photo within the cluster threshold", 7, 0.5)
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute(
        "CREATE TABLE verdicts (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
        " settings TEXT, verdict TEXT NOT NULL)"
    )
    db.execute(
        "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)",
        (
            bytes(picture.absolute()),
            info.st_size,
            info.st_mtime_ns,
            "settings",
            json.dumps(record.to_json()),
        ),
    )
    db.commit()
    db.close()
    index = ip.LocalIndex(tmp_path / "index.sqlite", "settings")
    try:
        photo = ip.read_local_photo(picture, ip.Console(quiet=True))
        assert photo is not None and index.refusal_record(photo) == record
    finally:
        index.close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert "refusals" in tables and "verdicts" not in tables


def test_the_walk_finds_each_picture_once_with_its_size_and_time(tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    save_picture(pictures / "a" / "one.JPG", 1, None, (32, 24))
    save_picture(pictures / "two.jpeg", 2, None, (32, 24))
    (pictures / "two.xmp").write_text("<x/>")  # read with its photo, not reported
    (pictures / "notes.txt").write_text("notes")
    (pictures / "link.jpg").hardlink_to(pictures / "two.jpeg")
    console = ip.Console(quiet=True)
    found = ip.find_picture_files([str(pictures), str(pictures / "two.jpeg")], console)
    expected = []
    for path in (pictures / "a" / "one.JPG", pictures / "link.jpg"):
        info = path.stat()
        expected.append((str(path), str(path.absolute()), info.st_size, info.st_mtime_ns))
    assert found.pictures == tuple(expected)  # two.jpeg is link.jpg's hard link: once


def test_the_log_pictures_only_rows_that_need_a_look(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    twin = world.twins[0]
    alone = world.pictures / "alone.jpg"  # hours from any upload: nothing to compare with
    save_picture(alone, 91, twin.taken + dt.timedelta(hours=3))
    other = world.pictures / "other.jpg"  # seconds from the upload, another picture
    save_picture(other, 92, twin.taken + dt.timedelta(seconds=5))
    log = tmp_path / "log.html"
    with world.fake() as fake:
        result = world.run_cli(fake.api_url, "--logfile", str(log))
    assert result.returncode == 0, result.stderr
    page = log.read_text(encoding="utf-8")
    rows = re.findall(r'<tr data-section="(\w+)"[^>]*>(.*?)</tr>', page)
    new = [row for section, row in rows if section == "new"]
    refused = [row for section, row in rows if section == "refused"]
    assert len(new) == 1 and "data:image" in new[0]
    assert len(refused) == 2 and {"alone.jpg", "other.jpg"} == {
        name for row in refused for name in ("alone.jpg", "other.jpg") if name in row
    }
    assert not [row for row in refused if "data:image" in row]


def test_a_waiting_photo_is_kept_under_its_day_by_the_camera_clock_offset(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    late = world.pictures / "night" / "late.jpg"  # the camera clock an hour ahead: June 1st
    save_picture(late, 77, dt.datetime(2022, 6, 2, 0, 30, 20))
    source = world.sources / "late.jpg"
    source.write_bytes(late.read_bytes())
    offset = ("--time_offset", "+1h")
    with world.fake() as fake:
        assert world.run_cli(fake.api_url, *offset).returncode == 0
        photos = [photo_record(706002, source.name, observation_photo_id=806002)]
        hummingbird = {"name": "Calypte anna", "rank": "species"}
        fake.add_observation(
            observation_record(6002, USER, "2022-06-01T23:30:00+00:00", photos, hummingbird)
        )
        rerun = world.run_cli(fake.api_url, "--quiet", *offset)
    assert rerun.returncode == 0, rerun.stderr
    assert (read_tags(late).observation, read_tags(late).photo) == (6002, 706002)
