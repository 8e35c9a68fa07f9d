"""Issue 18 (fewer bytes per upload) and issue 19 (downloads ahead of the comparing).

Uploads are compared at iNaturalist's medium size first; only those it does not settle are
downloaded at large. The uploads of every day are downloaded in the background from the start,
each once, and a failure there is reported by the day that needs the photo.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.world import World, assert_tagged, make_world
from test_phases import candidate, photo

import inat_photos as ip

T = dt.datetime(2021, 2, 1, 10, 0)


def _sizes_fetched(fake: Any) -> Counter[str]:
    """Photo downloads by size ('medium', 'large', ...)."""
    paths = [r["path"] for r in fake.photo_requests() if r["status"] == 200]
    return Counter(path.rsplit("/", 1)[-1].split(".")[0] for path in paths)


@pytest.fixture
def three_days(tmp_path: Path) -> World:
    return make_world(tmp_path, 3, size=(1200, 900), spacing=dt.timedelta(days=1))


def test_plain_uploads_are_found_at_medium_size_without_a_large_download(
    three_days: World,
) -> None:
    with three_days.fake() as fake:
        result = three_days.run_cli(fake.api_url)
        assert result.returncode == 0, result.stderr
        assert _sizes_fetched(fake) == Counter(medium=3)
    for twin in three_days.twins:
        assert_tagged(twin)


@pytest.mark.parametrize(
    ("options", "size"),
    [(["--inat_size", "large"], "large"), (["--ssim_threshold", "0.9"], "large")],
)
def test_an_explicit_size_or_threshold_compares_at_that_size_only(
    three_days: World, options: list[str], size: str
) -> None:
    with three_days.fake() as fake:
        result = three_days.run_cli(fake.api_url, *options)
        assert result.returncode == 0, result.stderr
        assert _sizes_fetched(fake) == Counter({size: 3})
    for twin in three_days.twins:
        assert_tagged(twin)


def _pair(score: float, **more: Any) -> ip.Comparison:
    if more.get("prefiltered"):  # the cheap check's score: not lined up, no evidence read
        return ip.Comparison(score, None, **{"inliers": 0, **more})
    evidence = {"coarse": 0.99, "worst_part": 0.95, "inliers": 400, "matches": 405, **more}
    return ip.Comparison(score, None, **evidence)


def test_the_first_size_settles_a_clear_pair_or_one_the_verdict_takes() -> None:
    assert ip.settled_uploads({(0, 0): _pair(0.97), (1, 0): _pair(0.5)}, 0.95) == {0: 0}
    assert ip.settled_uploads({(2, 0): _pair(0.91)}, 0.95) == {0: 2}  # the verdict's evidence
    few = _pair(0.92, inliers=33, matches=42)  # a few points, and nothing bent
    assert ip.settled_uploads({(2, 0): few}, 0.95) == {0: 2}


@pytest.mark.parametrize(
    "pairs",
    [
        {(0, 0): _pair(0.97), (1, 0): _pair(0.93)},  # a look-alike photo close behind
        {(0, 0): _pair(0.97), (0, 1): _pair(0.93)},  # another upload close behind
        {(0, 0): _pair(0.97, prefiltered=True)},  # never lined up
        {(0, 0): _pair(0.97, misfit=1.5)},  # parts moved: another shot
        {(0, 0): _pair(0.91, coarse=0.9)},  # neither the threshold nor the evidence
        {(0, 0): _pair(0.82)},  # below the verdict's floor
        # taken below the threshold on a few points through a smooth correction, beside a
        # frame that lined up with nothing: a hand-held neighbour's motion, or an edit's bend
        {
            (0, 0): _pair(0.92, inliers=21, matches=27, smooth=4.1),
            (1, 0): _pair(0.6, prefiltered=True),
        },
    ],
)
def test_the_first_size_leaves_near_ties_and_doubts_to_the_larger(pairs: ip.Pairs) -> None:
    assert ip.settled_uploads(pairs, 0.95) == {}


class TableScorer(ip.PairScorer):
    """A PairScorer whose comparisons come from a table keyed by (photo, upload id, size)."""

    def __init__(
        self,
        table: dict[tuple[str, int, str], ip.Comparison],
        medium_sides: dict[int, int] | None = None,
    ) -> None:
        pictures = type("Pictures", (), {})()
        pictures.sizes = ("medium", "large")
        pictures.fetch = lambda candidates, size=None: None
        sides = medium_sides or {}  # upload id -> its picture's longer side at medium
        pictures.upload = lambda photo, size=None: (
            Image.new("RGB", (sides[photo.id], sides[photo.id] // 2)) if photo.id in sides else None
        )
        pictures.forget_locals = lambda photos=None: None
        super().__init__(pictures, ip.ssim_score)  # type: ignore[arg-type]
        self.table = table
        self.asked: list[tuple[str, int, str]] = []

    def _compare(
        self,
        photo: ip.LocalPhoto,
        candidate: ip.Candidate,
        size: str,
        mirrored: bool = False,
        correlated: bool = False,
    ) -> Any:
        key = (photo.path.name, candidate.photo.id, size, *(("mirrored",) if mirrored else ()))
        key += ("correlated",) if correlated else ()
        self.asked.append(key)
        return self.table.get(key)  # mirrored, correlated: none unless the table says


def test_only_unsettled_uploads_are_compared_again_at_large_with_the_photos_left() -> None:
    photos = [photo(f"{n}.jpg", T) for n in range(3)]
    uploads = [candidate(1, T), candidate(2, T), candidate(3, T)]
    table = {  # upload 1 is clearly 0.jpg at medium; upload 2 is close to 1.jpg and 2.jpg
        **{(f"{n}.jpg", 3, "medium"): _pair(0.3, prefiltered=True) for n in range(3)},
        ("0.jpg", 1, "medium"): _pair(0.98),
        ("1.jpg", 1, "medium"): _pair(0.4),
        ("2.jpg", 1, "medium"): _pair(0.4),
        ("0.jpg", 2, "medium"): _pair(0.4),
        ("1.jpg", 2, "medium"): _pair(0.96),
        ("2.jpg", 2, "medium"): _pair(0.95),
        ("1.jpg", 2, "large"): _pair(0.97),
        ("2.jpg", 2, "large"): _pair(0.88),
    }
    scorer = TableScorer(table)
    found = scorer(photos, uploads)
    large = sorted(key for key in scorer.asked if key[2] == "large")
    # Not 0.jpg: it is taken; not upload 3: no photo lined up with it (another camera's).
    assert large == [("1.jpg", 2, "large"), ("2.jpg", 2, "large")]
    assert found[(0, 0)].score == 0.98  # settled at medium
    assert (found[(1, 1)].score, found[(2, 1)].score) == (0.97, 0.88)  # decided at large
    assert found[(0, 1)].score == 0.4  # the taken photo keeps its medium pair


def test_a_pair_held_back_at_medium_keeps_that_reading_where_large_lines_nothing_up() -> None:
    """Taken at medium on a few points through a smooth correction, so weighed again at large
    (upload 1); where large does not line that pair up, the medium reading stands, and where
    it does (upload 2), large decides. A pair medium would not take (upload 3, below the
    verdict's floor) is not held back, and large decides too."""
    photos = [photo(f"{n}.jpg", T) for n in range(2)]
    uploads = [candidate(1, T), candidate(2, T), candidate(3, T)]
    few = {"inliers": 30, "matches": 33, "smooth": 76.0}
    table = {
        ("0.jpg", 1, "medium"): _pair(0.93, **few),
        ("1.jpg", 1, "medium"): _pair(0.3, prefiltered=True),
        ("0.jpg", 1, "large"): _pair(0.26, prefiltered=True),
        ("1.jpg", 1, "large"): _pair(0.3, prefiltered=True),
        ("0.jpg", 2, "medium"): _pair(0.3, prefiltered=True),
        ("1.jpg", 2, "medium"): _pair(0.92, **few),
        ("1.jpg", 2, "large"): _pair(0.89, misfit=1.2),
        ("0.jpg", 3, "medium"): _pair(0.84, **few),
        ("1.jpg", 3, "medium"): _pair(0.3, prefiltered=True),
        ("0.jpg", 3, "large"): _pair(0.25, prefiltered=True),
        ("1.jpg", 3, "large"): _pair(0.3, prefiltered=True),
    }
    found = TableScorer(table)(photos, uploads)
    assert found[(0, 0)].score == 0.93 and not found[(0, 0)].prefiltered
    assert found[(1, 0)].score == 0.3
    assert found[(1, 1)].score == 0.89  # lined up at large: decided there
    assert found[(0, 2)].score == 0.25  # never taken at medium: large's reading


def test_an_upload_nearly_lined_up_at_medium_is_compared_at_large() -> None:
    """A narrow crop of a soft background: at medium one similarity fits 7 of its keypoint
    matches, too few to line it up, and it lines up at large. An upload whose best fit is 3
    matches (what chance gives) is not asked again."""
    photos = [photo(f"{n}.jpg", T) for n in range(2)]
    uploads = [candidate(1, T), candidate(2, T)]
    table = {
        ("0.jpg", 1, "medium"): _pair(0.34, prefiltered=True, inliers=7),
        ("1.jpg", 1, "medium"): _pair(0.3, prefiltered=True, inliers=3),
        ("0.jpg", 2, "medium"): _pair(0.3, prefiltered=True, inliers=3),
        ("1.jpg", 2, "medium"): _pair(0.3, prefiltered=True),
        ("0.jpg", 1, "large"): _pair(0.979, inliers=15, matches=29),
    }
    scorer = TableScorer(table)
    found = scorer(photos, uploads)
    large = sorted(key for key in scorer.asked if key[2] == "large" and len(key) == 3)
    assert large == [("0.jpg", 1, "large"), ("1.jpg", 1, "large")]
    assert found[(0, 0)].score == 0.979


def test_an_upload_no_photo_lined_up_with_is_placed_by_correlation_at_both_sizes() -> None:
    """A soft strip of background under a lens correction: its keypoints line up with no
    photo, and correlation places it on one, which it then matches at 97%; it is placed so
    at large too. An upload a photo lined up with is never correlated."""
    photos = [photo(f"{n}.jpg", T) for n in range(2)]
    uploads = [candidate(1, T), candidate(2, T)]
    table = {
        ("0.jpg", 1, "medium"): _pair(0.31, prefiltered=True),
        ("1.jpg", 1, "medium"): _pair(0.28, prefiltered=True),
        ("0.jpg", 1, "medium", "correlated"): _pair(0.93, worst_part=0.6),
        ("1.jpg", 1, "medium", "correlated"): _pair(0.4, prefiltered=True),
        ("0.jpg", 1, "large", "correlated"): _pair(0.97),
        ("1.jpg", 2, "medium"): _pair(0.99),
        ("0.jpg", 2, "medium"): _pair(0.3, prefiltered=True),
    }
    scorer = TableScorer(table)
    found = scorer(photos, uploads)
    assert found[(0, 0)].score == 0.97 and not found[(0, 0)].prefiltered
    assert found[(1, 1)].score == 0.99
    assert not [key for key in scorer.asked if key[1] == 2 and "correlated" in key]
    assert ("0.jpg", 1, "large") not in scorer.asked  # placed by correlation there too


def test_an_upload_lined_up_only_far_below_the_floor_is_tried_mirrored() -> None:
    """A mirrored crop of a symmetric subject lines up unflipped and scores 80%: flipped it
    scores 97%, and is kept so. An upload lined up at 90% is not tried flipped."""
    photos = [photo("0.jpg", T)]
    uploads = [candidate(1, T), candidate(2, T)]
    table = {
        ("0.jpg", 1, "medium"): _pair(0.80, worst_part=0.6),
        ("0.jpg", 1, "medium", "mirrored"): _pair(0.97),
        ("0.jpg", 2, "medium"): _pair(0.90, worst_part=0.6),
        ("0.jpg", 2, "medium", "mirrored"): _pair(0.99),
    }
    scorer = TableScorer(table)
    found = scorer(photos, uploads)
    assert found[(0, 0)].score == 0.97
    assert found[(0, 1)].score != 0.99
    assert ("0.jpg", 2, "medium", "mirrored") not in scorer.asked


def test_an_upload_too_small_at_medium_to_line_up_is_compared_at_large() -> None:
    """A screenshot: the photo is a small part of it, which lines up at large only."""
    photos = [photo(f"{n}.jpg", T) for n in range(2)]
    uploads = [candidate(1, T), candidate(2, T)]
    table = {
        **{
            (f"{n}.jpg", j, "medium"): _pair(0.3, prefiltered=True)
            for n in range(2)
            for j in (1, 2)
        },
        ("0.jpg", 1, "large"): _pair(0.97),
    }
    scorer = TableScorer(table, medium_sides={1: 231, 2: 500})
    found = scorer(photos, uploads)
    large = sorted(key for key in scorer.asked if key[2] == "large")
    assert large == [("0.jpg", 1, "large"), ("1.jpg", 1, "large")]  # not upload 2: full size
    assert found[(0, 0)].score == 0.97


def test_downloads_ahead_fetch_each_photo_once_and_leave_failures_to_their_day(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, 4, spacing=dt.timedelta(days=1))
    failing = world.twins[2].photo
    with world.fake() as fake:
        fake.fail_next(f"/photos/{failing}/", 500, times=20)
        result = world.run_cli(fake.api_url)
        fetched = Counter(r["path"] for r in fake.photo_requests() if r["status"] == 200)
    assert result.returncode == 0, result.stderr
    assert fetched and max(fetched.values()) == 1
    warned = [line for line in result.stderr.splitlines() if f"photo {failing}" in line]
    assert len(warned) == 1, result.stderr
    day = world.twins[2].taken.date().isoformat()
    out = result.stdout
    assert out.index(f"{day}:") < out.index("Summary:")  # the day that needed it ran
    for n, twin in enumerate(world.twins):
        if n != 2:
            assert_tagged(twin)


def test_pairs_ahead_go_in_turns_across_photos_within_each_group() -> None:
    photos = [photo(f"{n}.jpg", T) for n in range(5)]
    uploads = [candidate(1, T), candidate(2, T)]
    pairs = [(p, c) for p in photos for c in uploads]
    order = [(p.path.name, c.photo.id) for p, c in ip.interleaved(pairs, 2)]
    assert order == [
        ("0.jpg", 1), ("1.jpg", 1), ("0.jpg", 2), ("1.jpg", 2),
        ("2.jpg", 1), ("3.jpg", 1), ("2.jpg", 2), ("3.jpg", 2),
        ("4.jpg", 1), ("4.jpg", 2),
    ]  # fmt: skip


def test_downloading_ahead_fills_the_cache_quietly_and_leaves_a_failure_to_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    world = make_world(tmp_path, 3)
    failing = world.twins[1].photo
    with world.fake() as fake:
        fake.fail_next(f"/photos/{failing}/", 500, times=99)
        records = [fake.observation_json(t.observation) for t in world.twins]
        uploads = [p for r in records for p in ip.parse_observation(r).photos]
        client = ip.InatClient(fake.api_url, world.cache)
        cache = ip.PhotoCache(world.cache, client, console=ip.Console())
        source = ip.PictureSource(cache, ("medium",), ip.Console())
        source.download_ahead(uploads, "medium")
        # a run compares while these download: let them all start and end (close() alone
        # cancels those still queued, and the third was sometimes not started yet)
        assert source.ahead is not None
        source.ahead.shutdown(wait=True)
        source.close()
        stored = sorted(p.name for p in (world.cache / "photos" / "medium").iterdir())
        assert stored == sorted(f"{u.id}.jpg" for u in uploads if u.id != failing)
        assert capsys.readouterr() == ("", "") and not cache.failed  # nothing said yet
        assert cache.fetch(uploads[1], "medium") is None  # fetch() tries again, and says so
        cache.close()
    assert capsys.readouterr().err.count(f"could not download photo {failing}") == 1
