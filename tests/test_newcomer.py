"""A newcomer's first hour (issue 24): the rough edges found by running every option against the
fake server, each checked through the command line on small generated worlds."""

from __future__ import annotations

import contextlib
import re
import shlex
import sqlite3
from itertools import accumulate
from pathlib import Path

import pytest
from support import ROOT
from support.cli import run_cli
from support.examples import USER as DEMO_USER
from support.files import digest
from support.world import EXIF_SECONDS, SPACING, START, USER, make_world, save_picture
from support.xmp import read_photo_id, read_xmp

import inat_photos as ip

NOWHERE = "http://127.0.0.1:9/v1"  # no server: these runs must not need one


def test_dissociate_finds_the_tags_an_earlier_sidecars_run_wrote(world, fake) -> None:
    first = world.run_cli(fake.api_url, "--sidecars")
    assert first.returncode == 0, first.stderr
    twin = world.twins[0]
    (sidecar,) = twin.path.parent.glob(twin.path.stem + ".xmp")
    assert read_xmp(sidecar).get(ip.TAG_PHOTO) == str(twin.photo)
    before = digest(twin.path)

    result = run_cli(["--dissociate", str(twin.path)], fake.api_url, world.cache)

    assert result.returncode == 0, result.stderr
    assert "nothing of this tool's to remove" not in result.stdout
    assert f"photo {twin.photo}" in result.stdout
    assert digest(twin.path) == before, "the picture was written; its tags live in the sidecar"
    tags = read_xmp(sidecar)
    assert ip.TAG_PHOTO not in tags and ip.TAG_OBSERVATION not in tags
    assert ip.TAG_DISSOCIATED in tags
    again = world.run_cli(fake.api_url)  # without --sidecars, later runs leave it alone
    assert again.returncode == 0, again.stderr
    assert digest(twin.path) == before
    assert read_photo_id(sidecar) is None


def test_recompute_keeps_an_association_the_user_confirmed(tmp_path: Path) -> None:
    # One upload that no local photo resembles, and a stray photo taken at its time: the user
    # says they belong together.
    world = make_world(tmp_path, 1, unmatched=1)
    stray = world.pictures / "stray.jpg"
    save_picture(stray, 999, START + SPACING + ip.dt.timedelta(seconds=EXIF_SECONDS))
    upload = world.scenario["observations"][1]["photos"][0]["id"]
    with world.fake() as server:
        assert world.run_cli(server.api_url).returncode == 0
        confirmed = run_cli(
            ["-u", USER, "--associate", str(stray), str(upload)], server.api_url, world.cache
        )
        assert confirmed.returncode == 0, confirmed.stderr
        assert read_photo_id(stray) == upload

        result = world.run_cli(server.api_url, "--recompute")

    assert result.returncode == 0, result.stderr
    assert f"Not associated with a local picture: photo id {upload}" not in result.stdout
    assert any(
        "stray.jpg: keeps its association" in line and str(upload) in line for line in result.lines
    ), result.stdout
    assert result.lines[-1].endswith(
        "0 local photos and 0 iNaturalist photos without known association."
    ), result.lines[-1]
    assert read_photo_id(stray) == upload


def test_every_option_takes_both_spellings(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    spellings = [
        *("--ssim-threshold", "0.9", "--cluster-threshold=240", "--inat-size", "small"),
        *("--dry_run", "--time-offset", "0", "--sidecar_names", "darktable"),
        *("--max_download_per_hour", "1GB", "--bypass-cache"),
    ]
    result = run_cli(["-u", USER, *spellings, str(empty)], NOWHERE, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.lines[-1] == f"No picture found in {empty}."
    listed = run_cli(["--list_problems"], NOWHERE, tmp_path / "cache")
    assert listed.returncode == 0, listed.stderr


def test_help_shows_one_spelling_and_ends_with_exit_codes_and_environment() -> None:
    result = run_cli(["--help"], NOWHERE, Path("/nonexistent"))
    assert result.returncode == 0
    options, epilog = result.stdout.split("exit codes:", 1)
    assert "--dry-run" in options and "--dry_run" not in options
    assert "--ssim_threshold THRESHOLD" in options and "--ssim-threshold" not in options
    for code in (ip.EXIT_OK, ip.EXIT_FILE_ERRORS, ip.EXIT_USAGE, ip.EXIT_LOCKED):
        assert re.search(rf"(?m)^  {code}  \S", epilog), code
    for variable in ("INAT_API_TOKEN", "INAT_PHOTOS_CACHE", "INAT_API_URL", "INAT_USERNAME"):
        assert variable in epilog
    assert "whole-day" not in result.stdout  # the offset search goes to a quarter hour


def test_a_folder_that_does_not_exist_is_a_bad_command_line(tmp_path: Path) -> None:
    missing = tmp_path / "Pictres"
    result = run_cli(["-u", USER, str(missing)], NOWHERE, tmp_path / "cache")
    assert result.returncode == ip.EXIT_USAGE
    assert (result.stdout + result.stderr).strip() == f"Error: no such file or folder: {missing}"
    assert "Loaded" not in result.stdout


def test_an_empty_folder_says_that_nothing_was_found(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["-u", USER, str(empty)], NOWHERE, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.lines[-1] == f"No picture found in {empty}."


def test_time_offset_zero_is_taken_and_every_shift_is_announced(world, fake) -> None:
    zero = world.run_cli(fake.api_url, "--dry-run", "--time_offset", "0")
    assert zero.returncode == 0, zero.stderr
    assert "Camera clock taken as right (--time_offset 0)" in zero.stdout
    assert zero.stdout.count("found for photo id") == len(world.twins)
    shifted = world.run_cli(fake.api_url, "--dry-run", "--time_offset", "-2m")
    assert shifted.returncode == 0, shifted.stderr
    assert (
        "Camera clock taken as 0 h 02 min behind (--time_offset): every photo's time is moved"
        " forward by that." in shifted.lines
    )
    assert ip.parse_time_offset("+0") == ip.dt.timedelta(0)
    with pytest.raises(ip.argparse.ArgumentTypeError):
        ip.parse_time_offset("5")  # a bare number other than 0 says no unit


def test_a_near_miss_prints_its_score_and_the_command_that_confirms_it(
    fake_inat, pictures: Path, cache: Path
) -> None:
    result = run_cli(
        ["-u", DEMO_USER, "--dry-run", "--ssim_threshold", "0.97", str(pictures)],
        fake_inat.api_url,
        cache,
    )
    assert result.returncode == 0, result.stderr
    near = [line for line in result.lines if line.startswith("Near miss: ")]
    assert near, result.stdout
    for line in near:
        found = re.fullmatch(
            r"Near miss: '(.+)' and photo id (\d+), similarity (\d+\.\d)%, below the threshold"
            r" of 97%; if they are the same picture, run: (.+)",
            line,
        )
        assert found, line
        assert 87 <= float(found[3]) < 97
        command = shlex.split(found[4])
        assert command[-3:] == ["--associate", str(Path(found[1]).absolute()), found[2]]
        assert command[1:3] == ["--user", DEMO_USER]


def test_a_truncated_picture_is_an_error_only_and_quiet_nights_exit_0_once_it_was_said(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, 2)
    truncated = world.twins[0].path
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the EXIF date survives, the pixels do not
    nodate = world.pictures / "nodate.jpg"
    save_picture(nodate, 77, None)
    log = tmp_path / "log.html"
    with world.fake() as server:
        first = world.run_cli(server.api_url, "--quiet", "--logfile", str(log))
        assert first.returncode == ip.EXIT_FILE_ERRORS
        assert "p000.jpg: cannot decode picture" in first.stderr
        page = log.read_text()
        rows = re.findall(r'<tr data-section="(\w+)"[^>]*>(.*?)</tr>', page, re.DOTALL)
        about = [section for section, row in rows if "p000.jpg" in row]
        assert about == ["error"], about  # not also refused for 'no photo within the threshold'

        again = world.run_cli(server.api_url, "--quiet")
        assert (again.returncode, again.stdout, again.stderr) == (ip.EXIT_OK, "", "")
        loud = world.run_cli(server.api_url)  # without --quiet every problem is said again
        assert loud.returncode == ip.EXIT_FILE_ERRORS
        assert "p000.jpg: cannot decode picture" in loud.stderr

    listed = world.run_cli(NOWHERE, "--list-problems")
    assert listed.returncode == 0
    lines = [line for line in listed.lines if "nodate.jpg" in line]
    assert len(lines) == 1 and lines[0].count("nodate.jpg") == 1, listed.stdout
    assert lines[0].startswith(f"{nodate}: no usable EXIF date")


@pytest.mark.parametrize("budget", ["10", "60kB"])
def test_the_download_budget_is_passed_by_at_most_the_downloads_in_flight(
    tmp_path: Path, budget: str
) -> None:
    world = make_world(tmp_path, 8, size=(800, 600), spacing=ip.dt.timedelta(days=1, minutes=7))
    with world.fake() as server:
        result = world.run_cli(server.api_url, "--max-download-per-hour", budget)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("Download budget reached") for line in result.lines)
    with contextlib.closing(sqlite3.connect(world.cache / "downloads.sqlite")) as db:
        sizes = [size for (size,) in db.execute("SELECT bytes FROM downloads")]
    limit = ip.parse_size(budget)
    # Downloads start only while the past hour's bytes are below the budget; those already
    # started finish: at most DOWNLOAD_WORKERS of them, as the README says.
    over = sum(sizes) - limit
    assert over < ip.DOWNLOAD_WORKERS * max(sizes), (sizes, limit)
    assert sum(1 for total in accumulate(sizes) if total >= limit) <= ip.DOWNLOAD_WORKERS
    readme = (ROOT / "README.md").read_text()
    assert f"by at most {ip.DOWNLOAD_WORKERS} photos" in readme


def test_the_demo_scenario_has_a_taxonomy_for_the_photo_manager_options(
    fake_inat, pictures: Path, cache: Path
) -> None:
    result = run_cli(
        ["-u", DEMO_USER, "--hierarchical-keywords", "--darwin-core", str(pictures)],
        fake_inat.api_url,
        cache,
    )
    assert result.returncode == 0, result.stderr
    xmp = read_xmp(pictures / "dscf0119.jpg")
    assert xmp[ip.TAG_HIERARCHY] == [
        "Plantae|Tracheophyta|Magnoliopsida|Ranunculales|Papaveraceae|Eschscholzia"
        "|Eschscholzia californica"
    ]
    assert xmp["Xmp.dwc.kingdom"] == "Plantae" and xmp["Xmp.dwc.family"] == "Papaveraceae"
    cat = read_xmp(pictures / "img_2043.jpg")
    assert cat[ip.TAG_HIERARCHY][0].startswith("Animalia|Chordata|Mammalia|")
