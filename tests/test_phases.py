"""The pure phases in isolation: plan_update, match_day with a fake compare, PictureSource."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import model
from support.images import synthetic_photo

import inat_photos as ip

DAY = dt.date(2021, 2, 1)
OURS = "Coyote (Canis latrans)"


def photo(name: str, when: dt.datetime, **changes: object) -> ip.LocalPhoto:
    base = ip.LocalPhoto(Path(name), when, None, 1, (), None)
    return dataclasses.replace(base, **changes)


def candidate(photo_id: int, when: dt.datetime | None) -> ip.Candidate:
    coyote = ip.TaxonName("Canis latrans", "Coyote")
    return model.candidate(photo_id, when, name=coyote, observed_on=when.date() if when else DAY)


class FakeCompare:
    """Scores from a table keyed by (file name, photo id); records what it was asked."""

    def __init__(
        self,
        table: dict[tuple[str, int], float],
        areas: dict | None = None,
        others: float | None = None,
    ) -> None:
        """others: the score of every pair not in the table (None: such pairs cannot be had)."""
        self.table = table
        self.areas = areas or {}
        self.others = others
        self.asked: list[tuple[str, int]] = []

    def __call__(self, photos, candidates, within=None):
        found = {}
        for i, p in enumerate(photos):
            for j, c in enumerate(candidates):
                if within is not None and (i, j) not in within:
                    continue
                key = (p.path.name, c.photo.id)
                self.asked.append(key)
                if key in self.table:
                    area = self.areas.get(key)
                    alignment = ip.Alignment((0.0, 0.0, area, 1.0)) if area else None
                    found[(i, j)] = ip.Comparison(self.table[key], alignment)
                elif self.others is not None:
                    found[(i, j)] = ip.Comparison(self.others, None)
        return found

    def lined_up(self, photos, candidates):
        return {
            (i, j): self.table.get((p.path.name, c.photo.id), 0) >= 0.9
            for i, p in enumerate(photos)
            for j, c in enumerate(candidates)
        }


def never_checked(photo: ip.LocalPhoto, uploads) -> bool:
    return False


TAGS = ip.InatTags(1, 2, 3)


def tagged(*keywords: str, written: str | None = OURS) -> ip.LocalPhoto:
    """A photo this tool tagged before, with these keywords, ours recorded as written."""
    return photo(
        "a.jpg", dt.datetime(2021, 2, 1, 10), keywords=keywords, tags=TAGS, written_caption=written
    )


def options(**changes: object) -> ip.Options:
    return dataclasses.replace(ip.Options(user="u", paths=()), **changes)


def match(photos, uploads, compare: FakeCompare, checked_before=never_checked, **changes):
    """match_day on DAY with the fake compare (and its gate) and default options."""
    return ip.match_day(
        DAY,
        photos,
        uploads,
        compare,
        options(**changes),
        lined_up=compare.lined_up,
        checked_before=checked_before,
    )


# -- plan_update -------------------------------------------------------------------------


def test_plan_update_for_a_new_association_appends_the_caption() -> None:
    tags = ip.InatTags(1, 2, 3)
    local = photo("a.jpg", dt.datetime(2021, 2, 1, 10), keywords=("holiday",))
    update = ip.plan_update(local, tags, (), OURS)
    assert update == ip.Update(local, tags, ("holiday", OURS), None, OURS)
    assert update.applied().written_caption == OURS
    assert update.applied().keywords == ("holiday", OURS)


def test_plan_update_leaves_an_unchanged_photo_alone() -> None:
    local = tagged("a", OURS, "b")
    assert ip.plan_update(local, TAGS, (), OURS) is None
    assert ip.plan_update(local, None, {OURS}, OURS) is None


def test_plan_update_replaces_only_our_keyword() -> None:
    local = tagged("Elm (Ulmus americana)", OURS, "x")
    fox = "Gray Fox (Urocyon cinereoargenteus)"
    update = ip.plan_update(local, None, (), fox)
    assert update is not None and update.tags is None and update.old_caption == OURS
    assert update.keywords == ("Elm (Ulmus americana)", fox, "x")


def test_plan_update_respects_a_keyword_the_user_removed() -> None:
    assert ip.plan_update(tagged("mine"), None, (), OURS) is None


# -- match_day -----------------------------------------------------------------------------


def test_match_day_associates_refuses_and_reports_ties() -> None:
    t = dt.datetime(2021, 2, 1, 10, 0)
    photos = [
        photo("a.jpg", t),
        photo("b1.jpg", t + dt.timedelta(minutes=20)),
        photo("b2.jpg", t + dt.timedelta(minutes=20, seconds=1)),
        photo("c.jpg", t + dt.timedelta(minutes=40)),
        photo("lonely.jpg", t + dt.timedelta(hours=3)),
    ]
    uploads = [
        candidate(1, t),
        candidate(2, t + dt.timedelta(minutes=20)),
        candidate(3, t + dt.timedelta(minutes=40)),
    ]
    compare = FakeCompare(
        {("a.jpg", 1): 0.99, ("b1.jpg", 2): 0.981, ("b2.jpg", 2): 0.979, ("c.jpg", 3): 0.80}
    )
    outcome = match(photos, uploads, compare)
    assert [(a.photo.path.name, a.candidate.photo.id) for a in outcome.associations] == [
        ("a.jpg", 1)
    ]
    assert [(t.candidate.photo.id, [p.path.name for p in t.photos]) for t in outcome.ties] == [
        (2, ["b1.jpg", "b2.jpg"])
    ]
    reasons = {r.photo.path.name: r.reason for r in outcome.refusals}
    assert reasons == {"c.jpg": ip.Reason.BELOW_THRESHOLD, "lonely.jpg": ip.Reason.NO_CANDIDATE}
    assert [c.photo.id for c in outcome.unmatched] == [2, 3]
    assert dict(outcome.checked)[Path("c.jpg")] == frozenset({3})
    assert Path("a.jpg") not in dict(outcome.checked)
    assert outcome.clock_offset is None


class CoveredCompare(FakeCompare):
    """FakeCompare's scores, with part of the upload left out (covered) in some pairs."""

    def __init__(self, table: dict[tuple[str, int], float], covered: dict) -> None:
        super().__init__(table)
        self.covered = covered

    def __call__(self, photos, candidates, within=None):
        found = super().__call__(photos, candidates, within)
        return {
            (i, j): dataclasses.replace(
                c, covered=self.covered.get((photos[i].path.name, candidates[j].photo.id), 0.0)
            )
            for (i, j), c in found.items()
        }


def test_a_near_tie_goes_to_the_frame_that_left_nothing_out_and_its_line_says_so() -> None:
    """b2.jpg fits the upload as well as b1.jpg only with 7% of it left out as a mark (its
    subject moved): b1.jpg shows that part, takes the upload, and its line says why."""
    t = dt.datetime(2021, 2, 1, 10, 0)
    photos = [photo("b1.jpg", t), photo("b2.jpg", t + dt.timedelta(seconds=1))]
    compare = CoveredCompare({("b1.jpg", 2): 0.964, ("b2.jpg", 2): 0.966}, {("b2.jpg", 2): 0.074})
    outcome = match(photos, [candidate(2, t)], compare)
    assert not outcome.ties
    (association,) = outcome.associations
    assert association.photo.path.name == "b1.jpg"
    said = "what 'b2.jpg' left out (7% of the upload) to fit almost as well"
    assert said in ip.found_line(association), ip.found_line(association)


class MovedCompare(FakeCompare):
    """One pair, lined up, its parts moved by misfit pixels; the coarse score fell too, so
    the verdict leaves it to the threshold."""

    def __init__(self, score: float, misfit: float) -> None:
        super().__init__({})
        self.score, self.misfit = score, misfit

    def __call__(self, photos, candidates, within=None):
        evidence = {"coarse": 0.9, "worst_part": 0.9, "inliers": 400, "matches": 405}
        return {(0, 0): ip.Comparison(self.score, None, misfit=self.misfit, **evidence)}

    def lined_up(self, photos, candidates):
        return {(0, 0): True}


@pytest.mark.parametrize("score", [0.94, 0.88])
def test_a_pair_refused_as_another_shot_is_no_near_miss(score: float) -> None:
    """However close it scored, now or in a later run: its parts moved, no edit does that."""
    t = dt.datetime(2021, 2, 1, 10, 0)
    uploads = [candidate(1, t)]
    still, moved = (
        match([photo("a.jpg", t)], uploads, MovedCompare(score, misfit), ssim_threshold=0.95)
        for misfit in (0.2, 1.5)
    )
    offered = []
    for outcome in (still, moved):
        [refusal] = outcome.refusals
        record = ip.RefusalRecord.of(refusal.reason, refusal.candidate, refusal.comparison)
        line = ip.near_miss_line(refusal, 0.95, "u")
        offered.append((line is not None, ip.near_miss(record, {1: uploads[0]}, 0.95) is not None))
    assert offered == [(True, True), (False, False)]


def test_match_day_skips_photos_compared_in_vain_before() -> None:
    t = dt.datetime(2021, 2, 1, 10, 0)
    photos = [photo("old.jpg", t), photo("new.jpg", t + dt.timedelta(seconds=5))]
    compare = FakeCompare({("new.jpg", 1): 0.99})

    def checked_before(local: ip.LocalPhoto, uploads) -> bool:
        return local.path.name == "old.jpg"

    outcome = match(photos, [candidate(1, t)], compare, checked_before=checked_before)
    assert ("old.jpg", 1) not in compare.asked
    assert [r.reason for r in outcome.refusals] == [ip.Reason.COMPARED_BEFORE]
    assert [a.photo.path.name for a in outcome.associations] == ["new.jpg"]


def test_match_day_finds_a_camera_clock_offset_and_matches_again() -> None:
    t = dt.datetime(2021, 2, 1, 10, 0)
    ahead = dt.timedelta(hours=1)
    photos = [
        photo("a.jpg", t + ahead + dt.timedelta(seconds=20)),
        photo("b.jpg", t + ahead + dt.timedelta(minutes=30)),
    ]
    uploads = [candidate(1, t), candidate(2, t + dt.timedelta(minutes=30))]
    compare = FakeCompare({("a.jpg", 1): 0.99, ("b.jpg", 2): 0.98})
    outcome = match(photos, uploads, compare)
    assert outcome.clock_offset == ahead
    assert [(a.photo.path.name, a.candidate.photo.id) for a in outcome.associations] == [
        ("a.jpg", 1),
        ("b.jpg", 2),
    ]
    assert all(a.photo.clock_error == ahead for a in outcome.associations)
    # A stated offset is never searched for.
    blind = FakeCompare({})  # its gate says yes where the first one did; it scores nothing
    blind.lined_up = compare.lined_up  # type: ignore[method-assign]
    stated = match(photos, uploads, blind, time_offset=dt.timedelta(0))
    assert stated.clock_offset is None and not stated.associations
    assert blind.asked == []  # no pair confirmed: the search never ran


def test_match_day_reports_a_crop_as_part_of_the_photo_that_took_the_whole() -> None:
    t = dt.datetime(2021, 2, 1, 10, 0)
    compare = FakeCompare({("a.jpg", 1): 1.0, ("a.jpg", 2): 0.984}, areas={("a.jpg", 1): 0.29})
    outcome = match([photo("a.jpg", t)], [candidate(1, t), candidate(2, t)], compare)
    assert [a.candidate.photo.id for a in outcome.associations] == [2]
    assert [p.candidate.photo.id for p in outcome.parts] == [1]
    assert outcome.unmatched == ()


def test_planned_pairs_are_the_pairs_match_day_compares_first_in_its_order() -> None:
    """The pairs compared ahead in the background are those matching then asks for."""
    t = dt.datetime(2021, 2, 1, 10, 0)
    photos = [
        photo("a.jpg", t),
        photo("b.jpg", t + dt.timedelta(seconds=30)),
        photo("old.jpg", t + dt.timedelta(seconds=40)),
        photo("c.jpg", t + dt.timedelta(minutes=20)),
        photo("lonely.jpg", t + dt.timedelta(hours=3)),
    ]
    uploads = [candidate(1, t), candidate(2, t), candidate(3, t + dt.timedelta(minutes=20))]
    compare = FakeCompare({("a.jpg", 1): 0.99, ("b.jpg", 2): 0.99, ("c.jpg", 3): 0.99})

    def checked_before(local: ip.LocalPhoto, uploads) -> bool:
        return local.path.name == "old.jpg"

    match(photos, uploads, compare, checked_before=checked_before)
    planned = ip.planned_pairs(photos, uploads, options(), checked_before)
    assert [(p.path.name, c.photo.id) for p, c in planned] == compare.asked
    assert ("old.jpg", 1) not in compare.asked and len(compare.asked) == 5
    again = ip.planned_pairs(photos, uploads, options(recompute=True), checked_before)
    assert ("old.jpg", 1) in [(p.path.name, c.photo.id) for p, c in again]


# -- long groups (bioblitz days) -------------------------------------------------------------


def shared_observation(observation_id: int, when: dt.datetime, photo_ids: list[int]):
    """Candidates for one observation with several photos, all at its one time."""
    uploads = [model.upload(i, observation_id, position=k + 1) for k, i in enumerate(photo_ids)]
    observation = model.observation(observation_id, when, uploads)
    return [ip.Candidate(upload, observation) for upload in uploads]


def bioblitz(photos: int, every: int = 60) -> tuple[list[ip.LocalPhoto], dt.datetime]:
    """A day shot without a pause: one photo every `every` seconds, all one group."""
    start = dt.datetime(2021, 2, 1, 8, 0)
    return [
        photo(f"p{k:03}.jpg", start + dt.timedelta(seconds=every * k)) for k in range(photos)
    ], start


def test_a_long_group_compares_pairs_that_grow_with_photos_plus_uploads() -> None:
    """Each upload is weighed against the photos near its time, not against the whole day."""
    for size in (60, 240):
        photos, start = bioblitz(size)
        uploaded = range(3, size, 6)
        uploads = [candidate(1000 + k, start + dt.timedelta(seconds=60 * k)) for k in uploaded]
        compare = FakeCompare({(f"p{k:03}.jpg", 1000 + k): 0.99 for k in uploaded})
        outcome = match(photos, uploads, compare)
        assert sorted((a.photo.path.name, a.candidate.photo.id) for a in outcome.associations) == [
            (f"p{k:03}.jpg", 1000 + k) for k in uploaded
        ]
        assert len(ip.cluster_by_time(photos, uploads, ip.CLUSTER_THRESHOLD)) == 1
        # within 180 s of a minute-precision time: at most 8 photos a minute apart per upload
        assert len(compare.asked) <= 8 * len(uploads) < len(photos) * len(uploads) / 4


def test_a_long_groups_window_follows_the_observations_own_photos() -> None:
    """An observation's third photo, taken 6 minutes after its time, is still found: each
    photo found for the observation widens its window."""
    photos, start = bioblitz(30)
    later = [0, 3, 6]  # minutes after the observation's time
    uploads = shared_observation(77, start + dt.timedelta(minutes=10), [501, 502, 503])
    table = {(f"p{10 + m:03}.jpg", 501 + k): 0.99 for k, m in enumerate(later)}
    compare = FakeCompare(table)
    outcome = match(photos, uploads, compare)
    found = sorted((a.photo.path.name, a.candidate.photo.id) for a in outcome.associations)
    assert found == sorted(table)
    # and a photo taken after all of them, beyond every window, was never compared
    assert not any(name == "p029.jpg" for name, _ in compare.asked)


def test_a_long_group_is_not_compared_again_on_an_unchanged_rerun() -> None:
    photos, start = bioblitz(60)
    uploads = [candidate(1000 + k, start + dt.timedelta(seconds=60 * k)) for k in (5, 30, 55)]
    first = FakeCompare({("p005.jpg", 1005): 0.99}, others=0.4)
    outcome = match(photos, uploads, first)
    checked = dict(outcome.checked)

    def checked_before(local: ip.LocalPhoto, ids) -> bool:
        return set(ids) <= checked.get(local.path, frozenset())

    again = FakeCompare({("p005.jpg", 1005): 0.99}, others=0.4)
    gated: list[int] = []
    gate = again.lined_up
    again.lined_up = lambda ps, cs: gated.append(len(ps) * len(cs)) or gate(ps, cs)  # type: ignore[method-assign]
    rest = [p for p in photos if p.path.name != "p005.jpg"]
    match(rest, uploads[1:], again, checked_before=checked_before)
    assert again.asked == []
    # nor is the whole day searched for a clock offset: every photo was weighed, by time
    assert gated == []
    planned = ip.planned_pairs(photos, uploads, options(), lambda photo, ids: False)
    assert [(p.path.name, c.photo.id) for p, c in planned] == first.asked[: len(planned)]


class Pictures:
    """A PictureSource stand-in for PairScorer: counts the pairs it was asked for."""

    sizes = ("large",)

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []
        self.forgotten: list[str] = []

    def features(
        self,
        local: ip.LocalPhoto,
        upload: ip.InatPhoto,
        size: str | None = None,
        mirrored: bool = False,
    ):
        self.asked.append((local.path.name, upload.id))
        return None  # no pictures: the comparison is None

    def fetch(self, candidates, size: str | None = None) -> None:
        pass

    def upload(self, photo: ip.InatPhoto, size: str | None = None):
        return None  # no pictures

    def forget_locals(self, photos=None) -> None:
        self.forgotten += ["*"] if photos is None else [p.path.name for p in photos]

    def forget_uploads(self) -> None:
        pass


def test_pair_scorer_compares_the_expected_pairs_ahead_once_each() -> None:
    t = dt.datetime(2021, 2, 1, 10, 0)
    locals_ = [photo(f"{n}.jpg", t) for n in range(8)]
    uploads = [candidate(1, t), candidate(2, t)]
    pictures = Pictures()
    scorer = ip.PairScorer(pictures, ip.ssim_score)  # type: ignore[arg-type]
    pairs = [(p, c) for p in locals_ for c in uploads]
    scorer.expect(pairs)
    deadline = time.monotonic() + 5
    while not pictures.asked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pictures.asked, "nothing compared ahead of the matching"
    for p in locals_:  # the matching asks cluster by cluster, as the background compares
        scorer([p], uploads)
    scorer.finish_day()
    assert sorted(pictures.asked) == sorted((p.path.name, c.photo.id) for p, c in pairs)
    assert pictures.forgotten[:8] == [p.path.name for p in locals_]


def test_pair_scorer_holds_a_few_pictures_of_a_big_cluster_at_a_time() -> None:
    """A long burst puts hundreds of photos in one cluster: their pictures are dropped group
    by group, not when the cluster is done (1.1 GB for 80 camera-size photos before)."""
    t = dt.datetime(2021, 2, 1, 10, 0)
    burst = [photo(f"{n}.jpg", t) for n in range(5 * ip.PREFETCH_AHEAD + 1)]
    uploads = [candidate(1, t), candidate(2, t)]
    pictures = Pictures()
    held: list[int] = []
    asked = pictures.features

    def features(
        local: ip.LocalPhoto, upload: ip.InatPhoto, size: str | None = None, mirrored=False
    ):
        names = {name for name, _ in pictures.asked} | {local.path.name}
        held.append(len(names - set(pictures.forgotten)))
        return asked(local, upload)

    pictures.features = features  # type: ignore[method-assign]
    scorer = ip.PairScorer(pictures, ip.ssim_score)  # type: ignore[arg-type]
    for check in (scorer, scorer.lined_up):
        held.clear()
        check(burst, uploads)
        assert len(held) == len(burst) * len(uploads)
        assert max(held) <= ip.PREFETCH_AHEAD
        pictures.asked.clear()
        pictures.forgotten.clear()


class DrawnPictures(Pictures):
    """Pictures drawn in memory (name -> picture), each upload the picture of its id."""

    def __init__(self, drawn: dict[str, Image.Image], uploads: dict[int, Image.Image]) -> None:
        super().__init__()
        self.drawn, self.uploads = drawn, uploads
        self.mirrored: list[tuple[str, int]] = []

    def upload_features(self, upload, size=None, mirrored=False):
        picture = self.uploads[upload.id]
        if mirrored:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return picture, ip.find_upload_features(picture)

    def features(self, local, upload, size=None, mirrored=False):  # type: ignore[override]
        (self.mirrored if mirrored else self.asked).append((local.path.name, upload.id))
        drawn = self.drawn[local.path.name]
        return drawn, ip.find_local_features(drawn), *self.upload_features(upload, size, mirrored)

    def upload(self, photo: ip.InatPhoto, size: str | None = None):
        return self.uploads[photo.id]

    def full_picture(self, photo: ip.LocalPhoto):
        return None


def test_an_upload_no_photo_lines_up_with_is_compared_mirrored() -> None:
    """An editor's flip: the upload lines up with its photo only mirrored, and is compared
    mirrored from then on; an upload that lines up as it is never is."""
    t = dt.datetime(2021, 2, 1, 10, 0)
    drawn = {"a.jpg": synthetic_photo(480, 360, 4), "b.jpg": synthetic_photo(480, 360, 5)}
    flipped = drawn["a.jpg"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pictures = DrawnPictures(drawn, {1: flipped, 2: drawn["b.jpg"]})
    scorer = ip.PairScorer(pictures, ip.ssim_score)  # type: ignore[arg-type]
    locals_ = [photo("a.jpg", t), photo("b.jpg", t)]
    found = scorer(locals_, [candidate(1, t), candidate(2, t)])
    mirrored = found[(0, 0)]
    assert not mirrored.prefiltered and mirrored.score > 0.95
    assert mirrored.alignment is not None and mirrored.alignment.mirrored
    assert "mirrored" in mirrored.describe()
    assert not found[(1, 1)].prefiltered and not found[(1, 1)].alignment.mirrored
    # the other photo's pair was probed on the keypoints kept, and not decoded again
    assert pictures.mirrored == [("a.jpg", 1)]
    assert found[(1, 0)].prefiltered and not found[(1, 0)].alignment
    assert scorer.mirrored == {1}


def test_pair_scorer_compares_at_most_a_few_photos_ahead() -> None:
    t = dt.datetime(2021, 2, 1, 10, 0)
    locals_ = [photo(f"{n}.jpg", t) for n in range(ip.PREFETCH_AHEAD + 5)]
    pictures = Pictures()
    scorer = ip.PairScorer(pictures, ip.ssim_score)  # type: ignore[arg-type]
    scorer.expect([(p, candidate(1, t)) for p in locals_])
    deadline = time.monotonic() + 5
    while len(pictures.asked) < ip.PREFETCH_AHEAD and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a thread that would run further ahead
    assert len({name for name, _ in pictures.asked}) == ip.PREFETCH_AHEAD
    scorer.stop()


# -- PictureSource -------------------------------------------------------------------------


class Console:
    def __init__(self) -> None:
        self.errors: list[tuple[Path, str]] = []

    def file_error(self, path: Path, reason: str) -> None:
        self.errors.append((path, reason))


class PhotoCache:
    """Serves one upload from disk; counts fetches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fetches = 0

    def fetch(self, photo: ip.InatPhoto, size: str) -> Path | None:
        self.fetches += 1
        return self.path if photo.id == 1 else None


def test_picture_source_decodes_once_and_reports_an_unreadable_file_once(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(buffer, "JPEG")
    good.write_bytes(buffer.getvalue())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    console = Console()
    cache = PhotoCache(good)
    pictures = ip.PictureSource(cache, ("large",), console)  # type: ignore[arg-type]

    first = pictures.local(photo("good.jpg", dt.datetime(2021, 2, 1), path=good))
    assert first is not None and max(first.size) < 4000  # decoded reduced (draft mode)
    assert pictures.local(photo("good.jpg", dt.datetime(2021, 2, 1), path=good)) is first
    broken = photo("bad.jpg", dt.datetime(2021, 2, 1), path=bad)
    assert pictures.local(broken) is None and pictures.local_thumbnail(broken) is None
    assert [p for p, _ in console.errors] == [bad]

    upload = candidate(1, None).photo
    assert pictures.upload(upload) is pictures.upload(upload)
    assert cache.fetches == 1
    assert pictures.upload(candidate(5, None).photo) is None
    pictures.forget_locals()
    assert pictures.locals == {} and pictures.thumbnails == {}


def test_picture_source_finds_keypoints_once_per_picture_while_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: each picture's keypoints are found once, whichever pair asks; local ones are
    dropped with the cluster's pictures, an upload's with the day's."""
    path = tmp_path / "good.jpg"
    Image.new("RGB", (800, 600), (10, 200, 30)).save(path, "JPEG")
    pictures = ip.PictureSource(PhotoCache(path), ("large",), Console())  # type: ignore[arg-type]
    found: list[str] = []
    for kind in ("local", "upload"):
        real = getattr(ip, f"find_{kind}_features")

        def counting(picture: Image.Image, kind: str = kind, real: Any = real) -> ip.Features:
            found.append(kind)
            return real(picture)

        monkeypatch.setattr(ip, f"find_{kind}_features", counting)
    local = photo("good.jpg", dt.datetime(2021, 2, 1), path=path)
    upload = candidate(1, None).photo
    first = pictures.features(local, upload)
    assert first is not None and pictures.features(local, upload) is not None
    assert sorted(found) == ["local", "upload"]
    assert pictures.features(local, candidate(5, None).photo) is None  # no upload to be had
    pictures.forget_locals()
    pictures.features(local, upload)
    assert sorted(found) == ["local", "local", "upload"]  # the local picture again only
    pictures.forget_uploads()
    assert pictures.upload_keypoints == {} and pictures.uploads == {}


def test_a_local_photo_decoded_for_comparing_gives_the_log_its_thumbnail(
    tmp_path: Path, decoded: list[tuple[str, int]]
) -> None:
    """The log's thumbnail is made from the picture decoded for comparing, not decoded again
    after the cluster forgot it; a photo never compared gets one decoded for the log."""
    compared, other = tmp_path / "compared.jpg", tmp_path / "other.jpg"
    for path in (compared, other):
        Image.new("RGB", (1600, 1200), (10, 200, 30)).save(path, "JPEG")
    store = ip.ThumbnailCache(tmp_path / "cache")
    pictures = ip.PictureSource(None, ("large",), Console(), store)  # type: ignore[arg-type]
    seen = photo("compared.jpg", dt.datetime(2021, 2, 1), path=compared)
    assert pictures.local(seen) is not None
    pictures.forget_locals()
    thumbnails = ip.LogThumbnails(pictures, store)
    made = thumbnails.local(seen)
    assert made is not None and made.file.exists()
    assert [name for name, _ in decoded] == ["compared.jpg"]
    with Image.open(made.file) as thumbnail:
        assert max(thumbnail.size) == ip.HTML_THUMBNAIL
    unseen = thumbnails.local(photo("other.jpg", dt.datetime(2021, 2, 1), path=other))
    assert unseen is not None and decoded[-1] == ("other.jpg", ip.HTML_THUMBNAIL)


def test_an_error_made_in_the_background_is_kept_for_the_foreground() -> None:
    """A comparison that failed ahead is not made again: the day that asks meets the error."""
    memo = ip.Memo()
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise ValueError("broken picture")

    with pytest.raises(ValueError, match="broken picture"):
        memo.make("pair", failing)  # in the background, this error was suppressed
    with pytest.raises(ValueError, match="broken picture"):
        memo.make("pair", failing)
    assert calls == [1]
    memo.forget(["pair"])  # the next day starts afresh
    with pytest.raises(ValueError):
        memo.make("pair", failing)
    assert calls == [1, 1]


def test_an_upload_that_lined_up_with_no_photo_is_kept_as_weighed() -> None:
    """Its pairs come back even while another upload waits for the larger size, so that the
    photos are remembered as compared with it (a rerun compared them all again before)."""
    t = dt.datetime(2021, 2, 1, 10, 0)
    photos = [photo("a.jpg", t), photo("b.jpg", t)]
    uploads = [candidate(1, t), candidate(2, t)]
    pictures = Pictures()
    pictures.sizes = ("medium", "large")  # type: ignore[misc]
    scorer = ip.PairScorer(pictures, ip.ssim_score)  # type: ignore[arg-type]
    lined = ip.Comparison(0.90, ip.Alignment((0.0, 0.0, 1.0, 1.0)))  # unsettled at medium
    phone = ip.Comparison(0.30, prefiltered=True)  # an upload of no local photo
    table = {("a.jpg", 1): lined, ("b.jpg", 1): ip.Comparison(0.5, prefiltered=True)}

    def compare(local: ip.LocalPhoto, upload: ip.Candidate, size=None, mirrored=None):
        return table.get((local.path.name, upload.photo.id), phone)

    scorer.compare = compare  # type: ignore[method-assign]
    found = scorer(photos, uploads)
    assert {(0, 1), (1, 1)} <= set(found)


class NoThumbnails:
    """LogThumbnails without pictures."""

    def local(self, photo, outline=None):
        return None

    def upload(self, photo):
        return None


def test_the_log_marks_ties_and_refusals_as_near_misses_and_nothing_else() -> None:
    """A near miss awaits the user's word: the known section counts it as still open."""
    when = dt.datetime(2021, 2, 1, 10)
    taken, one, other, low, alone = (photo(f"{n}.jpg", when) for n in "abcde")
    upload, tied = candidate(1, when), candidate(2, when)
    good, fair = ip.Comparison(0.97, None), ip.Comparison(0.9, None)
    outcome = ip.DayOutcome(
        DAY,
        associations=(ip.Association(taken, upload, good),),
        ties=(ip.Tie(tied, (one, other), (fair, fair), 0.9),),
        refusals=(
            ip.Refusal(low, upload, fair, ip.Reason.BELOW_THRESHOLD),
            ip.Refusal(alone, None, None, ip.Reason.NO_CANDIDATE),
        ),
    )
    rows = ip.day_log_rows(outcome, NoThumbnails(), "user")  # type: ignore[arg-type]
    flags = {(row.section, row.local.path.name): row.near_miss for row in rows if row.local}
    assert flags == {
        ("new", "a.jpg"): False,
        ("tie", "b.jpg"): True,
        ("tie", "c.jpg"): True,
        ("refused", "d.jpg"): True,
        ("refused", "e.jpg"): False,
    }
