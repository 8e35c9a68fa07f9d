"""Matching against ground truth: the --small set of make_matching_set.py, one CLI run.

The set is built once for the module in a temporary folder, served by the fake iNaturalist, and
inat_photos.py runs over it once; each test then checks one promise against truth.json. The
full set and per-category figures: python tests/bench_matching.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_inat import FakeINaturalist
from make_matching_set import CATEGORIES, EDITED, LOOK_ALIKES, USER, build
from support.cli import CliResult, run_cli
from support.xmp import read_exif, read_photo_id


@dataclass
class Outcome:
    root: Path
    truth: dict[str, int | None]
    found: dict[str, int | None]
    notes: dict[str, dict]
    manifest: dict
    result: CliResult

    def in_category(self, category: str) -> list[str]:
        return [path for path in self.truth if self.notes[path]["category"] == category]

    def describe(self, path: str) -> str:
        note = self.notes[path]["note"]
        return f"{path} [{note}]: expected {self.truth[path]}, got {self.found[path]}"


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("matching")
    build(root, small=True, seed=1, quiet=True)
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    with FakeINaturalist(root / "scenario.json") as fake:
        result = run_cli(
            ["--user", USER["login"], "--logfile", str(root / "log.html"), str(root / "pictures")],
            fake.api_url,
            root / "cache",
        )
    found = {path: read_photo_id(root / path) for path in truth}
    return Outcome(root, truth, found, manifest["pictures"], manifest, result)


def test_the_run_succeeds(outcome: Outcome) -> None:
    assert outcome.result.returncode == 0, outcome.result.stderr


def test_the_small_set_has_every_category(outcome: Outcome) -> None:
    for category in CATEGORIES:
        paths = outcome.in_category(category)
        assert paths, category
        assert any(outcome.truth[p] is not None for p in paths), category


@pytest.mark.parametrize("category", CATEGORIES)
def test_no_wrong_association(outcome: Outcome, category: str) -> None:
    """Never another photo's id, never an id on a photo that was not uploaded."""
    wrong = [
        outcome.describe(path)
        for path in outcome.in_category(category)
        if outcome.found[path] is not None and outcome.found[path] != outcome.truth[path]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "category",
    ["plain", "crop", "burst", "rotation", "several", "twice", *EDITED, *LOOK_ALIKES],
)
def test_every_upload_is_found(outcome: Outcome, category: str) -> None:
    """Resized, cropped, turned, stored sideways or mirrored, in a burst, several in a minute,
    spread over minutes, uploaded twice (the first-created observation's photo); edited (tones,
    crop and tones, straightened, exported, heavily), and the uploaded one of two shots or of a
    hand-held burst: all found."""
    missed = [
        outcome.describe(path)
        for path in outcome.in_category(category)
        if outcome.truth[path] is not None and outcome.found[path] != outcome.truth[path]
    ]
    assert not missed, "\n".join(missed)


def test_only_the_uploaded_frame_of_a_burst_is_tagged(outcome: Outcome) -> None:
    frames = outcome.in_category("burst")
    assert len(frames) >= 3
    tagged = [path for path in frames if outcome.found[path] is not None]
    assert tagged == [path for path in frames if outcome.truth[path] is not None]


@pytest.mark.parametrize("category", LOOK_ALIKES)
def test_only_the_uploaded_shot_of_look_alikes_is_tagged(outcome: Outcome, category: str) -> None:
    """A second shot moments later, or another frame of a hand-held burst, never gets the tag."""
    shots = outcome.in_category(category)
    assert len(shots) >= 2
    tagged = [path for path in shots if outcome.found[path] is not None]
    assert tagged == [path for path in shots if outcome.truth[path] is not None]


def test_what_was_compensated_is_said(outcome: Outcome) -> None:
    """The console line of the heavily edited upload names the crop, the angle and the tones."""
    (path,) = [p for p in outcome.in_category("heavy") if outcome.truth[p] is not None]
    line = next(
        line for line in outcome.result.lines if Path(path).name in line and "found" in line
    )
    assert re.search(
        r"similarity \d+\.\d% \(cropped to \d+% of the area, straightened \d\.\d°, tones"
        r" adjusted(; decided by [^)]*)?\)\.$",
        line,
    ), line


def test_a_photo_uploaded_twice_gets_the_first_created_observation(outcome: Outcome) -> None:
    scenario = json.loads((outcome.root / "scenario.json").read_text(encoding="utf-8"))
    for path in outcome.in_category("twice"):
        uploads = [
            (obs["created_at"], photo["id"])
            for obs in scenario["observations"]
            for photo in obs["photos"]
            if photo["source"] == path
        ]
        if len(uploads) == 2:
            assert outcome.found[path] == min(uploads)[1], outcome.describe(path)
            break
    else:
        pytest.fail("no photo uploaded twice in the set")


def test_a_day_with_the_camera_clock_an_hour_ahead_is_matched(outcome: Outcome) -> None:
    """Needs the clock-offset detection of issue 3: fails until that lands."""
    offsets = outcome.manifest["clock_offsets_minutes"]
    day = next(d for d, minutes in offsets.items() if minutes == 60)
    assert f"{day}: camera clock appears 1 h 00 min ahead; matched with that offset" in (
        outcome.result.lines
    ), outcome.result.stdout
    shifted = [
        path
        for path in outcome.in_category("offset")
        if outcome.truth[path] is not None and _exif_day(outcome.root / path) == day
    ]
    assert shifted
    missed = [outcome.describe(p) for p in shifted if outcome.found[p] != outcome.truth[p]]
    assert not missed, "\n".join(missed)


def test_one_weak_look_alike_hours_away_sets_no_clock_offset(outcome: Outcome) -> None:
    day = outcome.manifest["weak_day"]
    assert not [line for line in outcome.result.lines if line.startswith(f"{day}: camera clock")]
    weak = [p for p in outcome.in_category("offset") if _exif_day(outcome.root / p) == day]
    assert weak
    assert all(outcome.found[p] is None for p in weak), [outcome.describe(p) for p in weak]


def _exif_day(path: Path) -> str:
    stamp = read_exif(path)["Exif.Photo.DateTimeOriginal"]
    return dt.datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S").date().isoformat()
