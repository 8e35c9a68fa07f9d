"""The HTML log in a real browser (headless Chromium): the filters by section, date and text,
and the known rows, which the page's script builds from JSON when their section opens.

Skipped when Chromium is not installed; .ci/run installs Debian's chromium package.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image
from support import model
from support.browser import dump_dom, find_chromium, parse_rows

import inat_photos as ip

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)"
)

DAY1, DAY2 = dt.date(2021, 2, 1), dt.date(2021, 2, 14)
HOSTILE = '<img src=x onerror="document.title=1"></td><iframe src="https:evil.example">'


def thumbnail(folder: Path, name: str, colour: tuple[int, int, int]) -> ip.Thumbnail:
    path = folder / f"{name}.jpg"
    Image.new("RGB", (24, 16), colour).save(path, "JPEG")
    return ip.Thumbnail(path)


def local(folder: Path, name: str, day: dt.date, **changes) -> ip.LocalPhoto:
    taken = dt.datetime.combine(day, dt.time(10, 0))
    return ip.LocalPhoto(folder / name, taken, None, 1, (), changes.pop("tags", None), **changes)


def candidate(photo_id: int, caption: str, day: dt.date) -> ip.Candidate:
    when = dt.datetime.combine(day, dt.time(10, 0))
    return model.candidate(photo_id, when, name=ip.TaxonName(caption))


@pytest.fixture
def page(tmp_path: Path) -> Path:
    """A log with rows in every listed section, on two days, and hostile known rows."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    grey = thumbnail(tmp_path, "grey", (128, 128, 128))
    rows = [
        ip.LogRow("new", local(pictures, "poppy.jpg", DAY1), grey, candidate(1, "Poppy", DAY1),
                  grey, 42, "0.01", 0.97, day=DAY1),
        ip.LogRow("new", local(pictures, "cat.jpg", DAY2), grey, candidate(2, "Cat", DAY2),
                  grey, 27, "obscured", 0.986, day=DAY2),
        ip.LogRow("refused", local(pictures, "hills.jpg", DAY1), grey, candidate(3, "Oak", DAY1),
                  grey, 80, "0.03", 0.93, "below the similarity threshold", DAY1,
                  "inat_photos.py --user u --associate hills.jpg 3"),
        ip.LogRow("refused", local(pictures, "meadow.jpg", DAY2), grey, candidate(4, "Oak", DAY2),
                  grey, 80, "0.03", 0.41, "below the similarity threshold", DAY2,
                  "inat_photos.py --user u --associate meadow.jpg 4"),
        ip.LogRow("tie", local(pictures, "burst1.jpg", DAY2), grey, candidate(5, "Fox", DAY2),
                  grey, 3, "n/a", 0.97, "tie", DAY2),
        ip.LogRow("lone", candidate=candidate(6, "Poppy", DAY1), day=DAY1),
        ip.LogRow("error", note="broken.jpg: cannot decode picture"),
        ip.LogRow("offset", note="2021-02-14: camera clock appears 1 h 00 min ahead", day=DAY2),
        ip.LogRow("known", local(pictures, "known.jpg", DAY1, tags=ip.InatTags(70, 71, 7)),
                  thumbnail(tmp_path, "red", (255, 0, 0)), candidate(7, "Elm", DAY1),
                  thumbnail(tmp_path, "blue", (0, 0, 255)), day=DAY1),
        ip.LogRow("known", local(pictures, HOSTILE, DAY2, tags=ip.InatTags(80, 81, 8)),
                  None, candidate(8, HOSTILE, DAY2), None, note=HOSTILE, day=DAY2),
        ip.LogRow("known", local(pictures, "near.jpg", DAY2), None, candidate(9, "Oak", DAY2),
                  None, score=0.931, note="found by an earlier run", day=DAY2,
                  command="inat_photos.py --user u --associate near.jpg 9"),
    ]  # fmt: skip
    path = tmp_path / "log.html"
    summary = "Summary: 2 iNaturalist annotations added, 0 modified in 1 seconds."
    path.write_text(
        ip.render_log(rows, summary, 0.95, unlisted={ip.UNLISTED_COMPARED: 3}), encoding="utf-8"
    )
    return path


def shown(page: Path, hash_: str = ""):
    return parse_rows(dump_dom(page.as_uri() + hash_))


def test_without_filters_every_section_shows_and_known_stays_collapsed(page: Path) -> None:
    rows = shown(page)
    sections = [r["section"] for r in rows.visible()]
    assert sections == ["new", "new", "refused", "refused", "tie", "lone", "error", "offset"]
    assert not any(r["section"] == "known" for r in rows.rows), "known rows built before opening"
    texts = [r["text"] for r in rows.visible() if r["section"] == "refused"]
    assert "hills.jpg" in texts[0] and "meadow.jpg" in texts[1], "near misses first"


def test_filter_by_section(page: Path) -> None:
    rows = shown(page, "#section=refused")
    assert [r["section"] for r in rows.visible()] == ["refused", "refused"]
    assert [s for s, hidden in rows.sections.items() if not hidden] == ["refused"]


def test_filter_by_date(page: Path) -> None:
    rows = shown(page, f"#date={DAY2}")
    assert {r["date"] for r in rows.visible()} == {DAY2.isoformat()}
    assert sorted(r["section"] for r in rows.visible()) == ["new", "offset", "refused", "tie"]


def test_filter_by_text_and_section_together(page: Path) -> None:
    rows = shown(page, "#section=new&text=" + quote("CAT"))
    (only,) = rows.visible()
    assert "cat.jpg" in only["text"] and only["section"] == "new"


def test_known_rows_are_built_when_opened_and_show_any_text_as_text(page: Path) -> None:
    rows = shown(page, "#section=known")
    known = [r for r in rows.rows if r["section"] == "known"]
    assert len(known) == 3 and rows.visible() == known
    near = known[0]  # near misses first, with their score and the command that confirms them
    assert "near.jpg" in near["text"] and "93.1%" in near["text"]
    assert "inat_photos.py --user u --associate near.jpg 9" in near["text"]
    assert any(tag == "details" and "open" in a for tag, a in rows.tags)
    hostile = next(r for r in known if "iframe" in r["text"])
    assert HOSTILE in hostile["text"]  # the file name, the caption and the note, as text
    assert not any(tag in ("iframe",) for tag, _ in rows.tags)
    images = [a.get("src", "") for tag, a in rows.tags if tag == "img"]
    assert not any(src == "x" for src in images)
    elm = next(r for r in known if "Elm" in r["text"])
    assert [Path(src).name for src in elm["images"]] == ["red.jpg", "blue.jpg"]
    assert all(src.startswith("file:///") for src in elm["images"])
    rows = shown(page, "#section=known&text=elm")
    assert [r["text"] for r in rows.visible()] == [elm["text"]]


def test_the_tools_own_log_opens_in_chromium(tmp_path: Path, fake_inat, pictures: Path) -> None:
    """End to end: the page a run writes loads, and its known rows show cached thumbnails."""
    from support.cli import run_cli
    from support.examples import USER

    log = tmp_path / "log.html"
    args = ["-u", USER, "--logfile", str(log), str(pictures)]
    assert run_cli(args, fake_inat.api_url, tmp_path / "cache").returncode == 0
    first = shown(log)
    assert [r["section"] for r in first.visible()].count("new") >= 5
    # Associations are pictured; a photo that was simply not uploaded is a line of text.
    assert all(r["images"] for r in first.visible() if r["section"] == "new")
    assert all(src.startswith("data:image/jpeg;base64,") for r in first.rows for src in r["images"])
    assert run_cli(args, fake_inat.api_url, tmp_path / "cache").returncode == 0
    rerun = shown(log, "#section=known")
    known = rerun.visible()
    assert len(known) >= 5 and all(r["section"] == "known" for r in known)
    assert all(row["images"] for row in known)
    for row in known:
        for src in row["images"]:
            assert Path(src.removeprefix("file://")).is_file(), src
