"""Incremental runs (GitHub issue 4): what a rerun asks of iNaturalist and writes to disk.

A small generated archive (tests/support/archive.py: 36 pictures of 800x600 over a few days, and
more than 400 observations between the archive's first and last day, so that the listing takes
three pages and a rerun that fetched it all again would need more than three requests) is run
through the CLI once; each test then starts from a copy of that state (pictures and cache at
the same paths, file times kept) with a fresh fake server on the same port, changes one thing
and checks the next run's requests (from the fake's log) and files (sha256, mtime and inode of
every picture). Not timed.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_inat import FakeINaturalist
from PIL import Image
from support import archive
from support.cli import CliResult, run_cli
from support.files import snapshot
from support.xmp import expected_caption, read_tags, write_exif, write_xmp

import inat_photos as ip

SIZE = (800, 600)
PHOTOS = 36
USER = archive.USER["login"]


@dataclass
class Base:
    """The archive after one full run, saved so that every test starts from it."""

    plan: dict
    folder: Path  # the generated archive (sources the fake server renders from)
    pictures: Path  # where the CLI sees the pictures
    cache: Path  # the CLI's cache directory
    saved: Path  # copies of both after the first run
    port: int
    first: CliResult
    first_api: list[dict]
    first_photos: list[dict]


@dataclass
class State:
    base: Base
    fake: FakeINaturalist

    @property
    def pictures(self) -> Path:
        return self.base.pictures

    def run(self, *options: str) -> CliResult:
        self.fake.reset_log()
        result = run_cli(
            ["-u", USER, *options, str(self.pictures)], self.fake.api_url, self.base.cache
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def changed(before: dict, after: dict) -> set[str]:
    """Files created, removed, or rewritten (new content, time or inode)."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def tags(path: Path) -> tuple[int | None, int | None]:
    """The observation and photo ids in the file."""
    return read_tags(path)[:2]


def downloads(fake: FakeINaturalist) -> list[str]:
    return [r["path"] for r in fake.photo_requests() if r["status"] == 200]


def observation_queries(requests: list[dict]) -> list[dict]:
    return [r["query"] for r in requests if r["path"] == "/v1/observations"]


def found_line(result: CliResult, path: Path, photo_id: int) -> bool:
    return any(
        f"'{path}'" in line and f"found for photo id {photo_id};" in line for line in result.lines
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    folder = tmp_path_factory.mktemp("archive")
    plan = archive.plan_archive(
        PHOTOS,
        SIZE,
        seed=7,
        observed_fraction=0.3,
        other_in_range=430,
        other_outside=20,
        phone_side=1024,
    )
    archive.build_archive(folder, plan, jobs=1, quiet=True)
    work = tmp_path_factory.mktemp("work")
    pictures, cache, saved = work / "pictures", work / "cache", work / "saved"
    shutil.copytree(folder / "pristine", pictures)
    fake = FakeINaturalist(plan["scenario"], base_dir=folder)
    fake.start()
    try:
        first = run_cli(["-u", USER, str(pictures)], fake.api_url, cache)
        assert first.returncode == 0, first.stdout + first.stderr
        first_api, first_photos = fake.api_requests(), fake.photo_requests()
        port = fake.port
    finally:
        fake.stop()
    shutil.copytree(pictures, saved / "pictures")  # copy2: file times are kept
    shutil.copytree(cache, saved / "cache")
    return Base(plan, folder, pictures, cache, saved, port, first, first_api, first_photos)


@pytest.fixture
def state(base: Base):
    """The state right after the first run, with a fresh fake server on the same port (the
    stored observations name their photos' URLs with it)."""
    for name in ("pictures", "cache"):
        shutil.rmtree(base.pictures.parent / name)
        shutil.copytree(base.saved / name, base.pictures.parent / name)
    fake = FakeINaturalist(base.plan["scenario"], base_dir=base.folder, port=base.port)
    fake.start()
    yield State(base, fake)
    fake.stop()


def tagged_twins(base: Base) -> dict[str, dict]:
    """Expected local twins (path relative to the pictures folder -> ids and caption)."""
    return {f.removeprefix("pristine/"): want for f, want in base.plan["expected"].items()}


# -- the first run ------------------------------------------------------------------------
def test_first_run_pages_by_id_above_and_downloads_each_photo_once(base: Base) -> None:
    plan = base.plan
    in_range = plan["observations_in_range"]
    assert in_range > 2 * ip.PER_PAGE, "the scenario must need three pages"
    assert len(base.first_api) <= math.ceil(in_range / ip.PER_PAGE) + 3
    listing = [q for q in observation_queries(base.first_api) if q.get("d1")]
    assert len(listing) >= math.ceil(in_range / ip.PER_PAGE), "all pages were asked for"
    assert all(int(q.get("page") or 1) == 1 for q in listing), "paged with page=, not id_above"
    assert sum(1 for q in listing if q.get("id_above")) == len(listing) - 1
    assert all(int(q["per_page"]) == ip.PER_PAGE for q in listing)
    got = Counter(r["path"] for r in base.first_photos if r["status"] == 200)
    assert got, "the first run downloads the uploads it compares"
    assert max(got.values()) == 1, f"downloaded more than once: {got.most_common(3)}"
    # Only uploads of days with local photos are fetched.
    local_days = {item["taken"][:10] for item in plan["local"]}
    wanted = {
        f"/photos/{p['id']}/{size}.jpg"
        for o in plan["scenario"]["observations"]
        if o["observed_on"] in local_days
        for p in o["photos"]
        for size in ("medium", "large")
    }
    assert set(got) <= wanted
    medium = {path for path in got if path.endswith("/medium.jpg")}
    assert len(medium) > 2 * (len(got) - len(medium)), "most uploads are settled at medium"
    # And the run did its job: every twin tagged with its ids and caption, nothing else.
    twins = tagged_twins(base)
    for path in sorted(base.pictures.rglob("*.JPG")):
        rel = str(path.relative_to(base.pictures))
        if rel in twins:
            assert tags(path) == (twins[rel]["observation"], twins[rel]["photo"]), rel
            assert twins[rel]["caption"] in read_tags(path).subject, rel
        else:
            assert tags(path) == (None, None), rel


def _inat_date_range_includes(observation: dict, d1: str | None, d2: str | None) -> bool:
    """Would iNaturalist's API return this observation for d1/d2 as sent? A transcription of
    dateRangeFilter in iNaturalistAPI's lib/util.js: bare dates compare with the observation's
    date, both ends inclusive; values with a time (midnight included, when written out)
    compare with the observation's time, if it has one."""

    def parse(value: str) -> dt.datetime:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)

    low = parse(d1) if d1 else dt.datetime(1800, 1, 1, tzinfo=dt.timezone.utc)
    high = parse(d2) if d2 else dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)
    by_date = any(v and parse(v).time() == dt.time(0) and "00:00:00" not in v for v in (d1, d2))
    timed = observation.get("time_observed_at")
    if by_date or not timed:
        return low.date().isoformat() <= observation["observed_on"] <= high.date().isoformat()
    return low <= parse(timed) <= high


def test_first_run_listing_covers_every_day_of_the_archive(base: Base) -> None:
    """The first run's listing must bring every observation made on a day of the archive,
    as the real iNaturalist reads d1 and d2 (the fake only compares dates)."""
    local_days = {item["taken"][:10] for item in base.plan["local"]}
    needed = [o for o in base.plan["scenario"]["observations"] if o["observed_on"] in local_days]
    listing = [q for q in observation_queries(base.first_api) if q.get("d1") or q.get("d2")]
    assert listing
    bounds = {(q.get("d1"), q.get("d2")) for q in listing}
    missed = [
        (o["id"], o["time_observed_at"])
        for o in needed
        if not any(_inat_date_range_includes(o, d1, d2) for d1, d2 in bounds)
    ]
    assert not missed, f"iNaturalist would leave out {len(missed)} observations: {missed[:3]}"


# -- reruns -------------------------------------------------------------------------------
def test_unchanged_rerun_asks_little_downloads_nothing_writes_nothing(state: State) -> None:
    before = snapshot(state.pictures)
    result = state.run()
    api = state.fake.api_requests()
    assert len(api) <= 3, [r["path"] for r in api]
    listing = observation_queries(api)
    assert not [q for q in listing if q.get("d1") or q.get("d2")], "asked for everything again"
    assert [q for q in listing if q.get("updated_since")], "asked for nothing that changed"
    assert state.fake.photo_requests() == []
    assert changed(before, snapshot(state.pictures)) == set()
    assert "found for photo id" not in result.stdout
    assert "Updating subject" not in result.stdout


def test_unchanged_rerun_needs_no_upload_even_without_the_photo_cache(state: State) -> None:
    """Nothing is left to compare, so no upload is needed: the rerun must not download any
    even when the downloaded photos were deleted (a user may clear the cache to save room)."""
    shutil.rmtree(state.base.cache / "photos")
    before = snapshot(state.pictures)

    state.run()

    assert downloads(state.fake) == []
    assert changed(before, snapshot(state.pictures)) == set()


def test_changed_identification_rewrites_exactly_that_observations_photos(
    state: State,
) -> None:
    twins = tagged_twins(state.base)
    per_obs = Counter(want["observation"] for want in twins.values())
    obs_id = min(per_obs, key=lambda o: (-per_obs[o], o))
    files = {rel for rel, want in twins.items() if want["observation"] == obs_id}
    old_caption = twins[next(iter(files))]["caption"]
    new_caption = expected_caption(archive.CHANGED_TAXON)
    assert old_caption != new_caption
    before = snapshot(state.pictures)
    state.fake.set_taxon(obs_id, archive.CHANGED_TAXON)

    result = state.run()

    assert changed(before, snapshot(state.pictures)) == files
    for rel in files:
        keywords = read_tags(state.pictures / rel).subject
        assert new_caption in keywords and old_caption not in keywords, rel
        assert tags(state.pictures / rel) == (obs_id, twins[rel]["photo"])
    assert result.stdout.count(f"to '{new_caption}'") == len(files)
    api = state.fake.api_requests()
    assert len(api) <= 3
    assert any(q.get("updated_since") for q in observation_queries(api))
    assert state.fake.photo_requests() == []


def _strip_tags(path: Path) -> None:
    write_xmp(path, {ip.TAG_OBSERVATION: None, ip.TAG_OBSERVATION_PHOTO: None, ip.TAG_PHOTO: None})


def _plain_twin(base: Base) -> tuple[str, dict]:
    """A tagged twin uploaded uncropped and unturned."""
    specs = {p["id"]: p for o in base.plan["scenario"]["observations"] for p in o["photos"]}
    twins = tagged_twins(base)
    rel = min(r for r, w in twins.items() if not {"crop", "rotate"} & specs[w["photo"]].keys())
    return rel, twins[rel]


def test_index_notices_a_file_whose_tags_were_removed(state: State) -> None:
    rel, want = _plain_twin(state.base)
    path = state.pictures / rel
    info = path.stat()
    _strip_tags(path)
    assert tags(path) == (None, None)
    assert (path.stat().st_size, path.stat().st_mtime_ns) != (info.st_size, info.st_mtime_ns)
    before = snapshot(state.pictures)

    result = state.run()

    assert found_line(result, path, want["photo"]), result.stdout
    assert tags(path) == (want["observation"], want["photo"])
    assert changed(before, snapshot(state.pictures)) == {rel}
    assert state.fake.photo_requests() == []  # the upload is still in the photo cache


def test_index_rereads_a_file_replaced_by_another_picture(state: State) -> None:
    """A picture that was compared in vain is replaced, under the same name, by another one
    (taken at another time): its new date must be read, and it must be compared again."""
    plan = state.base.plan
    local_days = {item["taken"][:10] for item in plan["local"]}
    phone_obs, phone_photo = next(
        (o, p)
        for o in plan["scenario"]["observations"]
        if o["observed_on"] in local_days
        for p in o["photos"]
        if p["source"].startswith("inat_only/")
    )
    twins = tagged_twins(state.base)
    taken = phone_obs["time_observed_at"][:19]
    victim = next(  # an untagged photo of another day
        item
        for item in plan["local"]
        if item["file"] not in plan["expected"] and item["taken"][:10] != taken[:10]
    )
    rel = victim["file"].removeprefix("pristine/")
    path = state.pictures / rel
    assert rel not in twins and tags(path) == (None, None)
    when = f"{taken[:10].replace('-', ':')} {taken[11:13]}:{taken[14:16]}:20"
    with Image.open(state.base.folder / phone_photo["source"]) as source:
        source.save(path, "JPEG", quality=92)
    write_exif(path, {"Exif.Photo.DateTimeOriginal": when, "Exif.Image.Make": "Google"})
    before = snapshot(state.pictures)

    result = state.run()

    assert found_line(result, path, phone_photo["id"]), result.stdout
    assert tags(path) == (phone_obs["id"], phone_photo["id"])
    assert changed(before, snapshot(state.pictures)) == {rel}


def test_bypass_cache_fetches_observations_and_photos_again(state: State) -> None:
    base = state.base
    rel, want = _plain_twin(base)
    path = state.pictures / rel
    _strip_tags(path)  # so that this run needs an upload, which is in the photo cache

    result = state.run("--bypass_cache")

    api = state.fake.api_requests()
    first_listing = [q for q in observation_queries(base.first_api) if q.get("d1")]
    listing = [q for q in observation_queries(api) if q.get("d1")]
    assert len(listing) == len(first_listing), "the observations were not fetched again"
    assert len(api) <= math.ceil(base.plan["observations_in_range"] / ip.PER_PAGE) + 3
    got = Counter(downloads(state.fake))
    assert f"/photos/{want['photo']}/medium.jpg" in got, "the cached upload was used"
    assert max(got.values()) == 1
    assert found_line(result, path, want["photo"]), result.stdout
    assert tags(path) == (want["observation"], want["photo"])
