"""Issue 5, part 3: broken, odd and hostile input is reported or handled, never a traceback,
and the other photos are still processed.

Broken pictures (empty, cut in half, text, garbled EXIF, absurd dates, decompression bombs, a
FIFO), file names no one should use (spaces, quotes, <, &, newlines, bytes that are not UTF-8),
garbage where iNaturalist ids belong, and identifications containing HTML.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import ImageFile
from support.cli import CliResult, run_main
from support.files import digest, temp_files
from support.images import pixel_digest
from support.logpage import LogPage, parse_log
from support.world import SPACING, START, USER, Twin, World, assert_tagged, child, make_world
from support.xmp import inat_tags, read_exif, read_xmp, write_exif, write_xmp

import inat_photos as ip

# -- making broken pictures -------------------------------------------------------------------


def set_mtime(path: Path, moment: dt.datetime) -> None:
    stamp = time.mktime(moment.timetuple())  # a naive local time, like EXIF's
    os.utime(path, (stamp, stamp))


def set_exif_date(path: Path, text: str) -> None:
    write_exif(path, {"Exif.Photo.DateTimeOriginal": text})


def exif_segment(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload of the APP1 Exif segment of a JPEG."""
    at = 2
    while at < len(data):
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xE1 and data[at + 4 : at + 10] == b"Exif\0\0":
            return at + 4, at + 2 + length
        at += 2 + length
    raise AssertionError("no Exif segment")


def garble_exif(path: Path, seed: int) -> None:
    """Keep the segment's markers, length, 'Exif' and TIFF header; garble every IFD byte."""
    data = bytearray(path.read_bytes())
    start, end = exif_segment(bytes(data))
    rng = random.Random(seed)
    for k in range(start + 6 + 8, end):
        data[k] = rng.randrange(256)
    path.write_bytes(bytes(data))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(path: Path, side: int = 60000) -> None:
    """A 100-byte PNG whose header claims side x side pixels (3.6 gigapixels)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def bomb_jpeg(source: Path, path: Path, side: int = 60000) -> None:
    """A real small JPEG whose frame header is edited to claim side x side pixels."""
    data = bytearray(source.read_bytes())
    at = 2
    while True:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            data[at + 5 : at + 9] = struct.pack(">HH", side, side)
            break
        at += 2 + length
    path.write_bytes(bytes(data))


# -- reading the HTML log -----------------------------------------------------------------------


def parse_page(path: Path) -> LogPage:
    return parse_log(path.read_bytes().decode("utf-8"))  # strict: the page must be valid UTF-8


INJECTED_ELEMENTS = {"iframe", "svg", "b", "object", "embed", "frame"}
# The page's own scripts: the filters, and the known rows as JSON data.
TOOL_SCRIPTS = [[], [("type", "application/json"), ("id", "known-data")]]
SECTION_LINKS = {f"#{key}" for key in ip.LOG_SECTIONS}


def assert_only_the_tools_markup(page: LogPage) -> None:
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert sorted(scripts) == sorted(TOOL_SCRIPTS[: len(scripts)]) and len(scripts) <= 2, scripts
    for tag, attrs in page.tags:
        assert tag not in INJECTED_ELEMENTS, (tag, attrs)
        for name, value in attrs:
            assert not name.startswith("on"), (tag, attrs)
            if (tag, name) == ("img", "src"):
                assert value and value.startswith("data:image/"), (tag, attrs)
            if name == "href":
                assert value is not None
                assert value in SECTION_LINKS or value.startswith(
                    ("file:", "https://www.inaturalist.org/")
                ), (tag, attrs)
                assert not value.lower().startswith("javascript:")


def run_beside_a_plain_twin(world: World, odd: Twin, monkeypatch, capsys) -> CliResult:
    """One run over a world of two twins, odd and a plain one: odd may be skipped (reported)
    or tagged, the plain one is tagged, odd's pixels stay as they were."""
    pixels = pixel_digest(odd.path)
    with world.fake() as server:
        result = world.run_main(monkeypatch, capsys, server.api_url)
    assert result.returncode in (ip.EXIT_OK, ip.EXIT_FILE_ERRORS), result.stdout + result.stderr
    assert_tagged(world.twins[1])
    assert pixel_digest(odd.path) == pixels
    return result


# -- one archive with everything wrong in it ------------------------------------------------------

ODD_NAMES: list[str | bytes] = [
    "with space.jpg",
    "quote'\"s.jpg",
    "<b>bold & co.jpg",
    b"bad-\xff\xfe-byte.jpg",
    "new\nline.jpg",
    "normal.jpg",
    "year0000.jpg",
    "year9999.jpg",
    "half.jpg",
]


def test_broken_and_odd_files_are_reported_and_the_rest_is_tagged(tmp_path: Path) -> None:
    world = make_world(tmp_path, len(ODD_NAMES), names=ODD_NAMES, unmatched=1)
    by_name = {os.fsencode(t.path.name): t for t in world.twins}
    pictures = world.pictures

    year0000, year9999 = by_name[b"year0000.jpg"], by_name[b"year9999.jpg"]
    set_exif_date(year0000.path, "0000:00:00 00:00:00")
    set_exif_date(year9999.path, "9999:12:31 23:59:59")
    half = by_name[b"half.jpg"]
    half.path.write_bytes(half.path.read_bytes()[: half.path.stat().st_size // 2])
    for twin in (year0000, year9999):  # their time must come from the file
        set_mtime(twin.path, twin.taken)

    broken = {
        "zero.jpg": b"",
        "text.jpg": b"this is text, not a JPEG\n" * 20,
    }
    for name, content in broken.items():
        (pictures / name).write_bytes(content)
    bomb_png(pictures / "bomb.png")
    bomb_jpeg(world.twins[0].source, pictures / "bomb.jpg")
    lonely_upload_time = START + len(ODD_NAMES) * SPACING + dt.timedelta(seconds=30)
    for name in ("bomb.png", "bomb.jpg"):  # next to an upload, so that they get decoded
        set_mtime(pictures / name, lonely_upload_time)
    os.mkfifo(pictures / "pipe.jpg")  # reading it would block forever
    bad_files = ["zero.jpg", "text.jpg", "bomb.png", "bomb.jpg", "half.jpg"]
    untouchable = {name: digest(pictures / name) for name in bad_files}
    pixels = {t.path: pixel_digest(t.path) for t in world.twins if t is not half}
    log = tmp_path / "log.html"

    with world.fake() as server:
        result = world.run_cli(server.api_url, "--logfile", str(log), timeout=90)

    out, err = result.stdout, result.stderr
    assert "Traceback" not in out + err, err
    assert result.returncode == ip.EXIT_FILE_ERRORS, out + err
    # Each broken file is named in an error, and left exactly as it was.
    for name in bad_files:
        assert any(name in ln and "rror" in ln for ln in err.splitlines()), f"{name}:\n{err}"
        assert digest(pictures / name) == untouchable[name], name
    assert "pipe.jpg" not in err
    # Absurd dates fall back to the file's time, with a warning naming the file.
    for twin in (year0000, year9999):
        assert any(twin.path.name in ln and "modification time" in ln for ln in err.splitlines()), (
            err
        )
    # Every readable twin, whatever its name, was tagged; pixels never changed.
    for twin in world.twins:
        if twin is not half:
            assert_tagged(twin)
            assert pixel_digest(twin.path) == pixels[twin.path], ip.show_path(twin.path)
    # Names are printed on one line each, odd bytes made visible.
    assert "new\\nline.jpg" in out
    assert not any(ln.startswith("line.jpg") for ln in (out + err).splitlines())
    assert "bad-\\xff\\xfe-byte.jpg" in out
    assert temp_files(pictures) == []
    # The log is valid UTF-8 HTML whose only markup is the tool's own.
    page = parse_page(log)
    assert_only_the_tools_markup(page)  # no <b> element from the file name either
    links = {value for _, attrs in page.tags for name, value in attrs if name == "href"}
    for twin in world.twins:
        if twin is not half:  # each row links to its file, whatever the name
            assert twin.path.resolve().as_uri() in links, ip.show_path(twin.path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_garbled_exif_is_reported_or_kept_byte_for_byte(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """exiv2 cannot parse the EXIF block: the tool may skip the photo (reported) or tag it,
    but it must not drop or rewrite the EXIF block ("EXIF stays exactly as it was")."""
    world = make_world(tmp_path, 2)
    garbled = world.twins[0]
    garble_exif(garbled.path, seed=5)
    set_mtime(garbled.path, garbled.taken)  # the date is garbled too: the file time stands in
    data = garbled.path.read_bytes()
    exif_before = data[slice(*exif_segment(data))]

    result = run_beside_a_plain_twin(world, garbled, monkeypatch, capsys)

    data = garbled.path.read_bytes()
    if inat_tags(garbled.path):
        assert_tagged(garbled)
        assert b"Exif\0\0" in data, "the EXIF block was dropped"
        assert data[slice(*exif_segment(data))] == exif_before, "the EXIF block was rewritten"
    else:
        assert garbled.path.name in result.stderr
        assert result.returncode == ip.EXIT_FILE_ERRORS


def test_pictures_over_200_megapixels_are_never_decoded(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Between Pillow's warning (200 MP, the tool's limit) and its error (twice that) lies a
    bomb too: a PNG of 19000 x 19000 zeros compresses to 1 MB and decodes to 1 GB. The tool
    must refuse it, not decode it (here the decoder is stopped before it allocates)."""
    world = make_world(tmp_path, 1, unmatched=1)
    bomb = world.pictures / "bomb361mp.png"
    bomb_png(bomb, side=19000)
    set_mtime(bomb, START + SPACING + dt.timedelta(seconds=30))  # next to the lonely upload
    real_load = ImageFile.ImageFile.load
    decoded_sizes: list[tuple[int, int]] = []

    def guarded_load(self):
        if self.size[0] * self.size[1] > 200_000_000:
            decoded_sizes.append(self.size)
            raise OSError("the test stopped the decoding of a decompression bomb")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)
    with world.fake() as server:
        result = world.run_main(monkeypatch, capsys, server.api_url)

    assert decoded_sizes == [], f"the tool tried to decode {decoded_sizes} pixels"
    assert result.returncode == ip.EXIT_FILE_ERRORS, result.stdout + result.stderr
    assert "bomb361mp.png" in result.stderr
    assert_tagged(world.twins[0])


# -- garbage where the iNaturalist ids belong ---------------------------------------------------

GARBAGE_IDS = ["²", "٣", "99999999999999999999999", "-5", "12abc", " ", "0"]


@pytest.mark.parametrize("value", GARBAGE_IDS, ids=[repr(v) for v in GARBAGE_IDS])
def test_garbage_inat_ids_in_xmp(tmp_path: Path, monkeypatch, capsys, value: str) -> None:
    """Ids written by another program, or by hand: never a crash."""
    world = make_world(tmp_path, 2)
    victim = world.twins[0]
    write_xmp(victim.path, {ip.TAG_OBSERVATION: value, ip.TAG_PHOTO: value})

    run_beside_a_plain_twin(world, victim, monkeypatch, capsys)

    tags = inat_tags(victim.path)
    assert tags.get(ip.TAG_OBSERVATION) in (value, str(victim.observation)), tags
    if tags.get(ip.TAG_OBSERVATION) == str(victim.observation):
        assert_tagged(victim)


# -- identifications with HTML in them ------------------------------------------------------------

SCRIPT_NAME = "<script>alert(1)</script>"
IMG_COMMON = "<img src=x onerror=alert(2)>"
IFRAME_NAME = "Evil</i><iframe src=javascript:alert(3)></iframe>"
SVG_COMMON = '"><svg onload=alert(4)>'
USER_KEYWORD = "<iframe src=//evil.example/>"


def test_html_in_names_is_escaped_in_the_log(tmp_path: Path, monkeypatch, capsys) -> None:
    world = make_world(tmp_path, 1, unmatched=1)
    twin: Twin = world.twins[0]
    write_xmp(twin.path, {ip.TAG_SUBJECT: [USER_KEYWORD]})
    unmatched_observation = world.scenario["observations"][1]["id"]
    log = tmp_path / "log.html"

    with world.fake() as server:
        server.set_taxon(
            twin.observation,
            {"name": SCRIPT_NAME, "rank": "species", "preferred_common_name": IMG_COMMON},
        )
        server.set_taxon(
            unmatched_observation,
            {"name": IFRAME_NAME, "rank": "species", "preferred_common_name": SVG_COMMON},
        )
        result = world.run_main(monkeypatch, capsys, server.api_url, "--logfile", str(log))

    assert result.returncode == 0, result.stdout + result.stderr
    caption = f"{IMG_COMMON} ({SCRIPT_NAME})"
    assert read_xmp(twin.path)[ip.TAG_SUBJECT] == [USER_KEYWORD, caption]
    page = parse_page(log)
    assert_only_the_tools_markup(page)
    text = "".join(page.text)
    for injected in (SCRIPT_NAME, IMG_COMMON, IFRAME_NAME, SVG_COMMON, USER_KEYWORD):
        assert injected in text, f"{injected!r} is not shown as text"
    raw = log.read_text(encoding="utf-8")
    for injected in (SCRIPT_NAME, "<iframe", "<svg", "<img src=x"):
        assert injected not in raw, injected
    assert raw.count("<script") == len([t for t, _ in page.tags if t == "script"]) <= 2
    assert "&lt;script&gt;" in raw


def test_exif_date_strings_that_are_not_dates(tmp_path: Path, monkeypatch, capsys) -> None:
    """Dates exiv2 hands over as text: each falls back to the file time, with a warning."""
    odd_dates = [
        "",
        "    :  :     :  :  ",
        "2022:02:30 10:00:00",
        "2022:05:14 25:61:00",
        "1825:12:31 23:59:59",
        "garbage",
        "{taken:%Y-%m-%dT%H:%M:%S}\x00junk",
    ]
    world = make_world(tmp_path, len(odd_dates))
    for twin, text in zip(world.twins, odd_dates, strict=True):
        text = text.format(taken=twin.taken)
        set_exif_date(twin.path, text)
        set_mtime(twin.path, twin.taken)
    with world.fake() as server:
        result = world.run_main(monkeypatch, capsys, server.api_url)

    assert result.returncode == 0, result.stdout + result.stderr
    for twin, text in zip(world.twins, odd_dates, strict=True):
        stored = read_exif(twin.path).get("Exif.Photo.DateTimeOriginal")
        if ip.parse_exif_datetime(stored) is None:
            assert any(
                twin.path.name in ln and "modification time" in ln
                for ln in result.stderr.splitlines()
            ), (text, result.stderr)
        assert_tagged(twin)


def test_photo_named_on_the_command_line_twice_and_through_odd_paths(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """'dir/./x.jpg', 'dir//x.jpg' and the folder itself all name one file: tagged once."""
    world = make_world(tmp_path, 1)
    twin = world.twins[0]
    folder = str(world.pictures)
    with world.fake() as server:
        result = run_main(
            monkeypatch,
            capsys,
            [
                "-u",
                USER,
                folder,
                f"{folder}/./{twin.path.name}",
                f"{folder}//{twin.path.name}",
                str(child(world.pictures, twin.path.name)),
            ],
            server.api_url,
            world.cache,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_tagged(twin)
    assert sum("Updating subject" in ln for ln in result.lines) == 1
