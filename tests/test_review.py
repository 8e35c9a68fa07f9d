"""Issue 13: the HTML log as a review page, and acting on what it shows.

The log opens on what a run changed; a rerun makes no thumbnail for what it made before and
lists what did not change only collapsed or counted. --associate confirms a pairing the tool
refused or could not choose, --dissociate takes one back. All through the CLI, on real files,
with the XMP read back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.cli import CliResult, run_cli, summary_numbers
from support.files import digest
from support.logpage import known_data, known_rows
from support.scenario import observation_record, photo_record
from support.world import USER, World, assert_tagged, make_world, save_picture
from support.xmp import inat_tags, read_xmp, write_xmp

import inat_photos as ip

STRICT = "99.99%"  # no twin reaches it: every pair becomes a refused near miss


def page_of(log: Path) -> str:
    return log.read_text(encoding="utf-8")


def commands(page: str) -> list[str]:
    """The confirm commands the log shows, as a user would copy them: in the Refusals and Ties,
    and (for near misses of earlier runs) among the known rows."""
    listed = [html.unescape(c) for c in re.findall(r'<code class="cmd">(.*?)</code>', page)]
    return listed + [row["command"] for row in known_rows(page) if row["command"]]


def command_for(page: str, path: Path, photo_id: int) -> list[str]:
    """The log's command that associates path with photo_id, split into arguments."""
    wanted = [c for c in commands(page) if f" {photo_id}" in c and path.name in c]
    assert len(wanted) == 1, commands(page)
    words = shlex.split(wanted[0])
    assert Path(words[0]) == Path(ip.__file__).resolve()
    return words[1:]


def rows_of(page: str, section: str) -> list[str]:
    return re.findall(rf'<tr data-section="{section}"[^>]*>.*?</tr>', page)


def run_world(world: World, api_url: str, *options: str) -> CliResult:
    result = world.run_cli(api_url, *options)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# -- the page on a rerun ------------------------------------------------------------------------


def test_unchanged_rerun_makes_no_thumbnail_and_lists_what_is_known_collapsed(
    tmp_path: Path, monkeypatch, capsys, decoded: list[tuple[str, int]]
) -> None:
    world = make_world(tmp_path, 3, unmatched=1)
    stray = world.pictures / "stray.jpg"  # near the lonely upload: compared there in vain
    save_picture(stray, 77, ip.parse_exif_datetime("2022:05:14 09:21:30"))
    # Next to the first twin: compared in vain with its upload, which a rerun no longer
    # offers (it is tagged), so that the photo then has no candidate near its time.
    neighbour = world.pictures / "neighbour.jpg"
    save_picture(neighbour, 78, ip.parse_exif_datetime("2022:05:14 09:00:40"))
    log = tmp_path / "log.html"
    with world.fake() as fake:
        first = world.run_main(monkeypatch, capsys, fake.api_url, "--logfile", str(log))
        assert first.returncode == 0, first.stderr
        first_page = page_of(log)
        decoded.clear()
        again = world.run_main(monkeypatch, capsys, fake.api_url, "--logfile", str(log))
    assert again.returncode == 0, again.stderr
    assert decoded == [], "an unchanged rerun decoded pictures for its log"

    assert len(rows_of(first_page, "new")) == 3
    assert len(rows_of(first_page, "refused")) == 2 and len(rows_of(first_page, "lone")) == 1
    page = page_of(log)
    assert len(page) < len(first_page) / 3
    for section in ("new", "refused", "tie", "lone", "changed"):
        assert rows_of(page, section) == [], section
    # The three tagged photos and the lonely upload are listed, collapsed; the two photos
    # compared in vain before are counted.
    known = known_rows(page)
    assert sorted(r["name"] for r in known if r["name"]) == [t.path.name for t in world.twins]
    assert sum(1 for r in known if not r["file"]) == 1
    assert f"{ip.UNLISTED_COMPARED} (counted, not listed): 2" in page
    assert '<details id="known-details">' in page and '<details id="known-details" open' not in page
    # Their thumbnails are the cached files, shown when the section is opened.
    thumbs = Path(urlsplit(known_data(page)["thumbs"]).path)
    shown = [r["thumb"] for r in known if r["file"]] + [r["upload_thumb"] for r in known]
    assert len(shown) == 7 and all(shown)  # 3 photos; 3 uploads and the lonely one
    for thumb in shown:
        assert (thumbs / thumb).is_file()
    assert "Summary: 0 iNaturalist annotations added" in page


def test_a_changed_file_gets_a_new_thumbnail(tmp_path: Path) -> None:
    world = make_world(tmp_path, 2, unmatched=0)
    log = tmp_path / "log.html"
    thumbnails = world.cache / "thumbnails" / "local"
    with world.fake() as fake:
        assert run_world(world, fake.api_url, "--logfile", str(log)).returncode == 0
        before = {p: p.stat().st_mtime_ns for p in thumbnails.rglob("*.jpg")}
        assert len(before) == 2
        changed = world.twins[1]
        save_picture(changed.path, 999, changed.taken)  # another picture, same name and time
        assert run_world(world, fake.api_url, "--logfile", str(log)).returncode == 0
    after = {p: p.stat().st_mtime_ns for p in thumbnails.rglob("*.jpg")}
    new = set(after) - set(before)
    assert len(new) == 1, "exactly one new thumbnail: the changed file's"
    assert all(after[p] == before[p] for p in before), "an unchanged thumbnail was made again"
    page = page_of(log)
    (row,) = rows_of(page, "refused")  # the new picture no longer matches its upload
    assert changed.path.name in row
    # Far below the threshold: a line of text, neither the new picture nor the stale one.
    assert "data:image" not in row
    assert not any(ip.thumbnail_data_url(p) in page for p in before)


def test_a_file_that_cannot_be_decoded_stays_among_the_errors(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    broken = world.pictures / "half.jpg"  # its EXIF reads, its pixels do not
    data = world.twins[0].path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    world.twins[0].path.unlink()  # the upload's only candidate: it must be decoded
    log = tmp_path / "log.html"
    with world.fake() as fake:
        for _ in range(2):
            result = run_world(world, fake.api_url, "--logfile", str(log))
            assert result.returncode == ip.EXIT_FILE_ERRORS, result.stdout + result.stderr
            assert "half.jpg" in result.stderr
            (row,) = rows_of(page_of(log), "error")
            assert "half.jpg: cannot decode picture" in html.unescape(row)


# -- --associate --------------------------------------------------------------------------------


def test_associate_confirms_a_refused_near_miss_from_the_log(tmp_path: Path) -> None:
    world = make_world(tmp_path, 2)
    log = tmp_path / "log.html"
    first, second = world.twins
    with world.fake() as fake:
        refused = run_world(world, fake.api_url, "--ssim_threshold", STRICT, "--logfile", str(log))
        assert refused.returncode == 0 and summary_numbers(refused.stdout)["added"] == 0
        page = page_of(log)
        assert len(rows_of(page, "refused")) == 2
        scores = [float(s) for s in re.findall(r'class="low">([\d.]+)%', page)]
        assert scores == sorted(scores, reverse=True), "near misses first"

        # A rerun lists the near misses, from memory, with the known rows: still open, with
        # their score and command, first among them.
        again = run_world(world, fake.api_url, "--ssim_threshold", STRICT, "--logfile", str(log))
        assert again.returncode == 0
        page = page_of(log)
        assert rows_of(page, "refused") == []
        open_rows = [r for r in known_rows(page) if r["command"]]
        assert len(open_rows) == 2 and known_rows(page)[:2] == open_rows
        assert all(
            "found by an earlier run" in r["note"] and 0.9 < r["score"] < 0.9999 for r in open_rows
        )

        args = command_for(page, first.path, first.photo)
        assert args[:2] == ["--user", USER] and args[2] == "--associate"
        before = digest(second.path)
        confirmed = run_cli([*args, "--ssim_threshold", STRICT], fake.api_url, world.cache)
        assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
        assert re.search(
            rf"'{re.escape(str(first.path.absolute()))}' compared with photo id {first.photo}:"
            r" similarity \d+\.\d%, below the threshold of 99\.99%; associating them as you"
            r" asked\.",
            confirmed.stdout,
        ), confirmed.stdout
        assert_tagged(first)
        assert digest(second.path) == before

        after = run_world(world, fake.api_url, "--ssim_threshold", STRICT, "--logfile", str(log))
    page = page_of(log)
    assert [r["name"] for r in known_rows(page) if r["command"]] == [second.path.name]
    assert any(r["name"] == first.path.name and not r["command"] for r in known_rows(page))
    assert after.returncode == 0


def test_associate_chooses_within_a_tie(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    twin = world.twins[0]
    burst = world.pictures / "burst.jpg"  # the same frame twice: a tie for the one upload
    shutil.copy2(twin.path, burst)
    log = tmp_path / "log.html"
    with world.fake() as fake:
        tied = run_world(world, fake.api_url, "--logfile", str(log))
        assert tied.returncode == 0
        assert any("too close to choose" in line for line in tied.lines), tied.stdout
        page = page_of(log)
        assert len(rows_of(page, "tie")) == 2 and rows_of(page, "lone") == []
        args = command_for(page, burst, twin.photo)
        chosen = run_cli(args, fake.api_url, world.cache)
        assert chosen.returncode == 0, chosen.stdout + chosen.stderr
        assert f"associated with photo id {twin.photo}," in chosen.stdout
        again = run_world(world, fake.api_url, "--logfile", str(log))
    assert inat_tags(burst)[ip.TAG_PHOTO] == str(twin.photo)
    assert read_xmp(burst)[ip.TAG_SUBJECT] == [twin.caption]
    assert ip.TAG_OBSERVATION not in read_xmp(twin.path)
    assert rows_of(page_of(log), "tie") == [] and again.returncode == 0


def test_associate_refuses_a_photo_that_is_not_one_of_the_users(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    world.scenario["users"].append({"id": 99, "login": "someone_else"})
    photos = [photo_record(990_000, world.twins[0].source.name)]
    world.scenario["observations"].append(
        observation_record(9000, "someone_else", "2022-05-14T09:00:00+00:00", photos)
    )
    twin = world.twins[0]
    before = digest(twin.path)
    with world.fake() as fake:
        for photo_id in ("990000", "123456789"):
            result = run_cli(
                ["-u", USER, "--associate", str(twin.path), photo_id], fake.api_url, world.cache
            )
            assert result.returncode == ip.EXIT_USAGE, result.stdout + result.stderr
            assert f"photo id {photo_id} is not a photo of one of {USER}'s observations" in (
                result.stdout
            )
            assert "Traceback" not in result.stderr
    assert digest(twin.path) == before


def test_associate_never_takes_a_photo_associated_with_another_file(tmp_path: Path) -> None:
    world = make_world(tmp_path, 2)
    first, second = world.twins
    with world.fake() as fake:
        assert run_world(world, fake.api_url).returncode == 0
        before = digest(second.path)
        result = run_cli(
            ["-u", USER, "--associate", str(second.path), str(first.photo)],
            fake.api_url,
            world.cache,
        )
    assert result.returncode == ip.EXIT_USAGE, result.stdout + result.stderr
    assert (
        f"photo id {first.photo} is already associated with '{first.path.absolute()}'"
        in result.stdout
    )
    assert digest(second.path) == before
    assert_tagged(first)
    assert_tagged(second)


# -- --dissociate -------------------------------------------------------------------------------


def test_dissociate_keeps_the_users_keywords_and_later_runs_leave_the_file_alone(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, 2)
    mine, other = world.twins
    write_xmp(mine.path, {ip.TAG_SUBJECT: ["holiday 2022", "meadow"]})
    log = tmp_path / "log.html"
    with world.fake() as fake:
        assert run_world(world, fake.api_url).returncode == 0
        assert read_xmp(mine.path)[ip.TAG_SUBJECT] == ["holiday 2022", "meadow", mine.caption]

        offline = "http://127.0.0.1:9/v1"  # --dissociate needs no network
        result = run_cli(["--dissociate", str(mine.path)], offline, world.cache)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"removed the iNaturalist ids (observation {mine.observation}, photo" in (
            result.stdout
        )
        xmp = read_xmp(mine.path)
        assert xmp[ip.TAG_SUBJECT] == ["holiday 2022", "meadow"]
        assert not {ip.TAG_OBSERVATION, ip.TAG_OBSERVATION_PHOTO, ip.TAG_PHOTO} & set(xmp)
        assert ip.TAG_CAPTION not in xmp and xmp[ip.TAG_DISSOCIATED] == "True"
        left = digest(mine.path)

        rerun = run_world(world, fake.api_url, "--logfile", str(log))
        assert rerun.returncode == 0
        assert digest(mine.path) == left
        assert not any(mine.path.name in line for line in rerun.lines if "found" in line)
        note = next(r["note"] for r in known_rows(page_of(log)) if r["name"] == mine.path.name)
        assert "--dissociate" in note

        shutil.rmtree(world.cache)  # the choice is in the file: it survives a cache wipe
        wiped = run_world(world, fake.api_url)
        assert wiped.returncode == 0 and digest(mine.path) == left
        assert summary_numbers(wiped.stdout)["added"] == 0

        again = run_cli(["--dissociate", str(mine.path)], fake.api_url, world.cache)
        assert "nothing to do" in again.stdout and digest(mine.path) == left

        recomputed = run_world(world, fake.api_url, "--recompute")
    assert recomputed.returncode == 0
    xmp = read_xmp(mine.path)
    assert xmp[ip.TAG_PHOTO] == str(mine.photo) and ip.TAG_DISSOCIATED not in xmp
    assert xmp[ip.TAG_SUBJECT] == ["holiday 2022", "meadow", mine.caption]
    assert_tagged(other)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-u", USER, "--associate", "{file}", "twelve"], "not a photo id: 'twelve'"),
        (["--associate", "{file}", "12"], "required: --user"),
        (["-u", USER, "--associate", "{file}", "12", "{folder}"], "take one file"),
        (["--dissociate", "{file}", "--associate", "{file}", "12"], "not allowed with"),
        (["--dissociate", "{folder}/missing.jpg"], "no such file"),
        (["--dissociate", "{folder}/notes.txt"], "not a picture format this tool reads"),
        (["-u", USER], "required: file/directory"),
    ],
)
def test_bad_associate_and_dissociate_arguments_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    world = make_world(tmp_path, 1)
    (world.pictures / "notes.txt").write_bytes(b"not really raw")
    file, folder = str(world.twins[0].path), str(world.pictures)
    before = digest(world.twins[0].path)
    filled = [a.format(file=file, folder=folder) for a in args]
    result = run_cli(filled, "http://127.0.0.1:9/v1", world.cache)
    assert result.returncode == ip.EXIT_USAGE, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert digest(world.twins[0].path) == before


# -- the pure parts ----------------------------------------------------------------------------


def test_plan_dissociation_removes_only_this_tools_keyword() -> None:
    base = ip.LocalPhoto(Path("a.jpg"), dt.datetime(2022, 5, 14), None, 1, (), None)
    tags = ip.InatTags(1, 2, 3)
    written = dataclasses.replace(
        base, keywords=("Elm (Ulmus americana)", "mine"), tags=tags, written_caption="mine"
    )
    update = ip.plan_dissociation(written, ())
    assert update is not None and update.keywords == ("Elm (Ulmus americana)",)
    assert update.dissociate is True and update.old_caption == "mine"
    assert update.applied().tags is None and update.applied().dissociated
    # An older file without the caption note: only a caption the observation once had is ours.
    older = dataclasses.replace(base, keywords=("Elm (Ulmus americana)", "Coyote"), tags=tags)
    assert ip.plan_dissociation(older, {"Coyote"}).keywords == ("Elm (Ulmus americana)",)
    assert ip.plan_dissociation(older, {"Wolf"}).keywords is None
    done = dataclasses.replace(base, keywords=("mine",), dissociated=True)
    assert ip.plan_dissociation(done, ()) is None
    # Associated again: the mark is cleared.
    again = ip.plan_update(done, tags, (), "Coyote")
    assert again is not None and again.dissociate is False and not again.applied().dissociated


@pytest.mark.parametrize(
    "name",
    ["plain.jpg", "it's here.jpg", "new\nline.jpg", "$(reboot) `x`.jpg", "é.jpg", b"\xff.jpg"],
)
def test_confirm_commands_name_the_very_file_in_a_shell(tmp_path: Path, name) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to run the command in")
    raw = name if isinstance(name, bytes) else name.encode()
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + raw))
    command = ip.confirm_command("o'brien", path, 42)
    # The same words, handed to printf instead of the script: one per argument.
    shown = subprocess.run(
        [bash, "-c", "printf '%s\\0' " + command], capture_output=True, check=True
    ).stdout.split(b"\0")[:-1]
    script = os.fsencode(Path(ip.__file__).resolve())
    assert shown == [script, b"--user", b"o'brien", b"--associate", os.fsencode(path), b"42"]
