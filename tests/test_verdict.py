"""Issue 17: uploads edited by filters the tool does not model are found on their evidence,
through the CLI, and same-second look-alikes never get a tag.

One small set (1600 x 1200, drawn by make_matching_set's planner with chosen edits) is served
by the fake iNaturalist; inat_photos.py runs over it once, and each test reads the XMP back.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_inat import FakeINaturalist
from make_matching_set import PLACES, USER, Planner, View, write_set
from support.cli import CliResult, run_cli
from support.xmp import read_photo_id

import inat_photos as ip

SHARPENED = {"side": 1024, "screen_sharpen": [1.0, 220]}  # exported, sharpened for screens
BLACK_AND_WHITE = {"mono": [0.6, 0.3, 0.1], "contrast": 1.25}
HDR_LOOK = {"gamma": 0.8, "contrast": 0.9, "saturation": 1.15, "clarity": [0.02, 0.7]}


@dataclass
class Run:
    root: Path
    truth: dict[str, int | None]
    roles: dict[str, str]
    result: CliResult  # compared at large: the size the verdict was calibrated at
    medium_first: CliResult  # a dry run with the default sizes: medium, then large

    def tag(self, role: str) -> int | None:
        return read_photo_id(self.root / self.roles[role])


def _plan() -> tuple[Planner, dict[str, str]]:
    p = Planner(seed=17, small=True)
    place = PLACES[0]
    day = dt.datetime(2024, 3, 9, 9, 0, 0)
    roles: dict[str, str] = {}
    for k, (role, edit) in enumerate((("sharpened", SHARPENED), ("mono", BLACK_AND_WHITE))):
        when = day + dt.timedelta(minutes=20 * k)
        scene = p.scene()
        local = p.local("edited", scene, when, place, None, role)
        p.upload_edited(local, p.edited(local, edit), scene.subject, place, when)
        roles[role] = local.path
    # The same second, twice: a normal and an HDR version; the HDR one was uploaded.
    when = day + dt.timedelta(hours=2)
    scene = p.scene()
    pair = [p.local("hdr", scene, when, place, None, name) for name in ("normal", "HDR")]
    i = p.job_index[pair[1].path]
    p.jobs[i] = replace(p.jobs[i], develop=json.dumps(HDR_LOOK))
    p.upload_edited(pair[1], p.edited(pair[1], SHARPENED), scene.subject, place, when)
    roles["hdr normal"], roles["hdr uploaded"] = pair[0].path, pair[1].path
    # A burst frame whose uploaded neighbour (sharpened) is not in the archive.
    when = day + dt.timedelta(hours=4)
    scene = p.scene()
    kept = p.local("burst", scene, when, place, None, "the frame kept")
    gone = p.local(
        "burst",
        scene,
        when,
        place,
        None,
        "uploaded, then deleted",
        view=View(subject_move=(0.01, 0)),
    )
    p.upload_edited(gone, p.edited(gone, SHARPENED), scene.subject, place, when)
    roles["burst kept"], roles["burst gone"] = kept.path, gone.path
    return p, roles


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("verdict")
    planner, roles = _plan()
    write_set(root, planner, jobs=1)
    (root / roles["burst gone"]).unlink()
    args = ["--user", USER["login"], str(root / "pictures")]
    with FakeINaturalist(root / "scenario.json") as fake:
        medium_first = run_cli(["--dry-run", *args], fake.api_url, root / "cache-default")
        result = run_cli(["--inat_size", "large", *args], fake.api_url, root / "cache")
    return Run(root, planner.truth, roles, result, medium_first)


def _found(result: CliResult, path: str) -> str | None:
    """The console line saying which upload path was found for, if any."""
    return next((x for x in result.lines if f"{Path(path).name}' " in x and " found " in x), None)


def test_a_sharpened_only_export_is_found_on_its_evidence(run: Run) -> None:
    path = run.roles["sharpened"]
    assert run.tag("sharpened") == run.truth[path], run.result.stdout
    line = next(line for line in run.result.lines if Path(path).name in line)
    assert "decided by" in line and "matching points" in line, line


def test_a_black_and_white_export_is_found(run: Run) -> None:
    assert run.tag("mono") == run.truth[run.roles["mono"]], run.result.stdout


def test_a_same_second_hdr_look_alike_gets_no_wrong_tag(run: Run) -> None:
    assert run.tag("hdr normal") is None, run.result.stdout
    assert run.tag("hdr uploaded") in (None, run.truth[run.roles["hdr uploaded"]])
    assert _found(run.medium_first, run.roles["hdr normal"]) is None, run.medium_first.stdout


def test_a_burst_frame_is_not_taken_for_its_deleted_neighbour(run: Run) -> None:
    assert run.tag("burst kept") is None, run.result.stdout
    assert _found(run.medium_first, run.roles["burst kept"]) is None, run.medium_first.stdout


def test_medium_first_finds_the_edited_exports_too(run: Run) -> None:
    for role in ("sharpened", "mono"):
        line = _found(run.medium_first, run.roles[role])
        assert line is not None and f"photo id {run.truth[run.roles[role]]};" in line, line


def test_an_explicit_threshold_is_the_only_bar() -> None:
    """--ssim_threshold given: nothing below it is taken, whatever the evidence."""
    args = ip.build_parser().parse_args(["--user", "u", "--ssim_threshold", "95%", "."])
    options = ip.Options.from_args(args, {})
    assert not options.calibrated and options.ssim_threshold == 0.95
    default = ip.Options.from_args(ip.build_parser().parse_args(["--user", "u", "."]), {})
    assert default.calibrated and default.ssim_threshold == ip.SSIM_THRESHOLD


def _comparison(score: float, coarse: float | None, **more: Any) -> ip.Comparison:
    evidence: dict[str, Any] = {"worst_part": 0.9, "inliers": 400, "matches": 405, **more}
    return ip.Comparison(score, None, coarse=coarse, **evidence)


def test_evidence_takes_a_clear_pair_below_the_threshold_and_says_why() -> None:
    grounds = ip.evidence_grounds({(0, 0): _comparison(0.91, 0.985)}, 0.95)
    assert grounds == {(0, 0): "98.5% at a quarter of the size, 400 matching points, no rival"}


@pytest.mark.parametrize(
    "pairs",
    [
        {(0, 0): _comparison(0.91, 0.90)},  # the coarse score fell too: not a filter
        {(0, 0): _comparison(0.91, 0.99, worst_part=0.8)},  # ... or only where it moved
        {(0, 0): _comparison(0.78, 0.99)},  # below the floor
        {(0, 0): _comparison(0.91, 0.99, misfit=1.2)},  # another shot
        {(0, 0): _comparison(0.91, 0.99, prefiltered=True)},  # never lined up
        {(0, 0): _comparison(0.91, 0.99), (1, 0): _comparison(0.90, 0.96)},  # a look-alike
        {(0, 0): _comparison(0.91, 0.99), (0, 1): _comparison(0.895, 0.9)},  # another upload
        {(0, 0): _comparison(0.91, 0.99, inliers=100, matches=200)},  # a loose fit
    ],
)
def test_evidence_refuses_what_a_look_alike_could_reach(pairs: ip.Pairs) -> None:
    assert ip.evidence_grounds(pairs, 0.95) == {}


def test_evidence_takes_a_grainy_frame_whose_neighbour_differs_in_a_part() -> None:
    """Grain and blur press a burst's frames towards one score: the uploaded frame leads its
    neighbour by under VERDICT_MARGIN, but the neighbour's moved subject sinks one part."""
    frame = _comparison(0.943, 0.983, worst_part=0.972)
    pairs = {(0, 0): frame, (1, 0): _comparison(0.927, 0.971, worst_part=0.935)}
    assert ip.evidence_grounds(pairs, 0.95) == {
        (0, 0): "98.3% at a quarter of the size, 400 matching points, 1.6 points ahead of"
        " the next pair, its worst part 3.7 points ahead"
    }
    alike = {(0, 0): frame, (1, 0): _comparison(0.927, 0.971, worst_part=0.96)}
    unread = {(0, 0): frame, (1, 0): _comparison(0.927, None, worst_part=None)}
    behind = {(0, 0): frame, (0, 1): _comparison(0.95, 0.99, worst_part=0.9)}
    for rivals in (alike, unread, behind):
        assert ip.evidence_grounds(rivals, 0.95) == {}, rivals


def test_evidence_takes_a_pair_whose_edit_left_a_third_of_its_matches_out() -> None:
    """A liquify push or a caption over detail leaves some matches off the one geometry; the
    rest of the evidence still decides (a look-alike loses the worst part, not the share)."""
    grounds = ip.evidence_grounds(
        {(0, 0): _comparison(0.91, 0.985, inliers=130, matches=200)}, 0.95
    )
    assert grounds == {(0, 0): "98.5% at a quarter of the size, 130 matching points, no rival"}


def test_evidence_leaves_pairs_above_the_threshold_to_the_score() -> None:
    assert ip.evidence_grounds({(0, 0): _comparison(0.97, 0.99)}, 0.95) == {}


def test_a_frame_or_padding_is_cut_but_a_plain_sky_is_not() -> None:
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 255, (300, 400), dtype=np.uint8)
    framed = np.pad(picture, ((20, 20), (12, 12)), constant_values=240)
    framed[18:20, 10:-10] = 30  # a dark line inside the mat
    left, top, right, bottom = ip.framed_box(framed)
    height, width = framed.shape
    assert 12 <= left <= 12 + 0.02 * width and 20 <= top <= 20 + 0.02 * height
    assert width - 12 - 0.02 * width <= right <= width - 12
    assert height - 20 - 0.02 * height <= bottom <= height - 20
    sky = picture.copy()
    sky[:80] = 200  # one plain edge is sky, not a border
    assert ip.framed_box(sky) is None
    assert ip.framed_box(np.full((300, 400), 90, np.uint8)) is None  # a plain picture
    padded = np.pad(picture, ((50, 50), (0, 0)), constant_values=0)  # letterboxed
    left, top, right, bottom = ip.framed_box(padded)
    assert (left, right) == (0, 400) and 50 < top <= 58 and 342 <= bottom < 350
