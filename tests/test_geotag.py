"""Issue 28: --geotag, --geotag-private and --location-names through the CLI, against the fake
iNaturalist's coordinates, accuracy, geoprivacy, place_ids and places endpoint; the position
read back with exiv2, Pillow and (where installed) exiftool; and the pure rules behind them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import pytest
from fake_inat import FakeINaturalist
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from support.cli import run_cli
from support.files import digest
from support.formats import write_dng, write_heic
from support.geo import (
    EXIFTOOL,
    GPS_EXIF,
    LOCATION_XMP,
    close,
    exiftool_tags,
    exiv2_position,
    jpeg_picture_bytes,
    pillow_position,
    xmp_position,
)
from support.images import texture
from support.scenario import observation_record, photo_record
from support.world import USER, World, make_world
from support.xmp import read_exif, read_xmp, write_exif, write_xmp

import inat_photos as ip

OPEN = (37.8719123, -122.2585456)  # an open observation's position
TRUE = (46.5201234, 6.6302345)  # an obscured observation's true position
OWN = (45.5, -73.25)  # a position the camera wrote
MOVED = (37.9012345, -122.3012345)
TOKEN = "geo-token-1"
PLACES = [
    {"id": 1, "name": "United States", "admin_level": 0, "code": "US"},
    {"id": 14, "name": "California", "admin_level": 10, "code": "CA", "parent_id": 1},
    {"id": 1500, "name": "Alameda County", "admin_level": 20, "parent_id": 14},
    {"id": 97394, "name": "North America", "admin_level": -10},
]
GUESS = "Tilden Regional Park, Berkeley, CA, USA"


def geo_world(root: Path, kinds: list[str]) -> World:
    """One photo per kind: 'open' (a public position, accuracy, places), 'obscured', 'own' (an
    open observation, the photo with its own GPS) and 'none' (no position at all)."""
    world = make_world(root, len(kinds))
    world.scenario["places"] = PLACES
    for kind, twin, obs in zip(kinds, world.twins, world.scenario["observations"], strict=True):
        if kind in ("open", "own"):
            obs.update(location=list(OPEN), positional_accuracy=12, place_guess=GUESS)
            obs["place_ids"] = [97394, 1, 14, 1500, 999_999]  # 999999: unknown to iNaturalist
        elif kind == "obscured":
            obs.update(location=list(TRUE), geoprivacy="obscured", positional_accuracy=30)
            obs.update(place_guess="Vaud, CH", place_ids=[])
        if kind == "own":
            write_exif(
                twin.path,
                {
                    "Exif.GPSInfo.GPSLatitudeRef": "N",
                    "Exif.GPSInfo.GPSLatitude": "45/1 30/1 0/1",
                    "Exif.GPSInfo.GPSLongitudeRef": "W",
                    "Exif.GPSInfo.GPSLongitude": "73/1 15/1 0/1",
                },
            )
    return world


@pytest.fixture
def served(tmp_path: Path):
    """Start a fake for a world built by the test: served(world) -> FakeINaturalist."""
    started: list[FakeINaturalist] = []

    def serve(world: World) -> FakeINaturalist:
        fake = world.fake()
        fake.start()
        started.append(fake)
        return fake

    yield serve
    for fake in started:
        fake.stop()


def places_asked(fake: FakeINaturalist) -> list[dict]:
    return [r for r in fake.api_requests() if r["path"].startswith("/v1/places/")]


# -- through the CLI ----------------------------------------------------------------------------


def test_geotag_fills_only_missing_positions_never_an_obscured_one(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["open", "obscured", "own", "none"])
    fake = served(world)
    opened, obscured, own, nothing = (twin.path for twin in world.twins)
    pictures = {p: jpeg_picture_bytes(p) for p in (opened, obscured, own, nothing)}
    own_exif = read_exif(own)
    log = tmp_path / "log.html"

    result = world.run_cli(fake.api_url, "--geotag", "--logfile", str(log))

    assert result.returncode == 0, result.stderr
    for reader in (exiv2_position, pillow_position):
        assert close(reader(opened), OPEN), reader
    exif = read_exif(opened)
    assert exif["Exif.GPSInfo.GPSMapDatum"] == "WGS-84"
    assert exif["Exif.GPSInfo.GPSHPositioningError"] == "12/1"
    assert read_xmp(opened)[ip.TAG_POSITION] == "37.8719123,-122.2585456"
    assert exiv2_position(obscured) is None and exiv2_position(nothing) is None
    assert read_exif(own) == own_exif  # the camera's position, to the byte
    assert all(jpeg_picture_bytes(p) == data for p, data in pictures.items())
    out = result.stdout
    assert f"{opened}: GPS position set to 37.8719123, -122.2585456 (within 12 m)" in out
    assert f"{obscured}: not geotagged: observation obscured" in out
    assert f"{own}: not geotagged: photo has its own GPS." in out
    assert f"{nothing}: not geotagged: observation has no position." in out
    page = log.read_text()
    assert "not geotagged: observation obscured" in page
    assert "not geotagged: photo has its own GPS" in page
    if EXIFTOOL:  # a third reader, where it is installed
        seen = exiftool_tags(opened)
        assert close((seen["GPSLatitude"], seen["GPSLongitude"]), OPEN)

    before = world.snapshot()
    again = world.run_cli(fake.api_url, "--geotag")
    assert again.returncode == 0 and world.snapshot() == before  # an unchanged rerun writes nothing
    assert "GPS position" not in again.stdout
    assert "not geotagged" not in again.stdout  # said once; the log says it every run


def test_obscured_true_position_needs_a_token_and_geotag_private(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["obscured"])
    fake = served(world)
    fake.add_token(TOKEN, USER)
    (photo,) = (twin.path for twin in world.twins)
    token = {"INAT_API_TOKEN": TOKEN}

    alone = world.run_cli(fake.api_url, "--geotag", extra_env=token)
    assert alone.returncode == 0, alone.stderr
    assert exiv2_position(photo) is None
    assert "not geotagged: observation obscured; --geotag-private would write" in alone.stdout
    assert TOKEN not in alone.stdout + alone.stderr

    private = world.run_cli(fake.api_url, "--geotag-private", extra_env=token)
    assert private.returncode == 0, private.stderr
    assert close(exiv2_position(photo), TRUE) and close(pillow_position(photo), TRUE)
    assert read_exif(photo)["Exif.GPSInfo.GPSHPositioningError"] == "30/1"

    # Without the token (a day later) only the decoy is known: the true position stays as the
    # user asked, and the decoy is never written.
    before = world.snapshot()
    public = world.run_cli(fake.api_url, "--geotag-private")
    assert public.returncode == 0 and world.snapshot() == before, public.stdout
    # With the token but without --geotag-private, the user no longer asks for it: it goes.
    hidden = world.run_cli(fake.api_url, "--geotag", extra_env=token)
    assert exiv2_position(photo) is None, hidden.stdout


def test_moving_the_observation_moves_only_the_position_the_tool_wrote(
    tmp_path: Path, served
) -> None:
    world = geo_world(tmp_path, ["open", "open", "obscured"])
    fake = served(world)
    ours, changed, hidden = world.twins
    assert world.run_cli(fake.api_url, "--geotag").returncode == 0
    # The user corrects one photo's position in a photo manager: it is theirs from now on.
    write_exif(changed.path, {"Exif.GPSInfo.GPSLatitude": "45/1 30/1 0/1"})
    users = read_exif(changed.path)
    for twin in (ours, changed):
        fake.move_observation(twin.observation, MOVED, positional_accuracy=5)
    fake.move_observation(hidden.observation, TRUE, geoprivacy=None)  # made public

    result = world.run_cli(fake.api_url, "--geotag")

    assert result.returncode == 0, result.stderr
    assert close(exiv2_position(ours.path), MOVED)
    assert read_exif(ours.path)["Exif.GPSInfo.GPSHPositioningError"] == "5/1"
    assert f"{ours.path}: GPS position moved to 37.9012345, -122.3012345" in result.stdout
    assert read_exif(changed.path) == users
    assert close(exiv2_position(hidden.path), TRUE)

    # Obscured again later: the position the tool wrote goes, as it would not write it now.
    fake.move_observation(ours.observation, MOVED, geoprivacy="obscured")
    gone = world.run_cli(fake.api_url, "--geotag")
    assert exiv2_position(ours.path) is None
    assert ip.TAG_POSITION not in read_xmp(ours.path)
    assert "GPS position this tool wrote removed (observation obscured)" in gone.stdout


def test_location_names_come_from_places_fetched_once(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["open", "own", "obscured"])
    fake = served(world)
    opened, own, obscured = (twin.path for twin in world.twins)
    write_xmp(own, {"Xmp.photoshop.City": "Our garden"})  # the user's own name stays

    first = world.run_cli(fake.api_url, "--location-names")
    assert first.returncode == 0, first.stderr
    xmp = read_xmp(opened)
    assert {k: xmp.get(k) for k in LOCATION_XMP} == {
        "Xmp.photoshop.Country": "United States",
        "Xmp.iptc.CountryCode": "US",
        "Xmp.photoshop.State": "California",
        "Xmp.photoshop.City": "Alameda County",
        "Xmp.iptc.Location": GUESS,
    }
    assert read_xmp(own)["Xmp.photoshop.City"] == "Our garden"
    assert read_xmp(own)["Xmp.photoshop.Country"] == "United States"
    hidden = read_xmp(obscured)  # only what iNaturalist shows publicly
    assert hidden.get("Xmp.iptc.Location") == "Vaud, CH" and "Xmp.photoshop.City" not in hidden
    assert exiv2_position(opened) is None  # names do not bring a position
    if EXIFTOOL:
        seen = exiftool_tags(opened)
        assert (seen["Country"], seen["CountryCode"], seen["State"]) == (
            "United States",
            "US",
            "California",
        )

    before = world.snapshot()
    again = world.run_cli(fake.api_url, "--location-names")
    assert again.returncode == 0 and world.snapshot() == before
    assert len(places_asked(fake)) == 1  # one request for every place, across both runs


def test_first_run_asks_one_request_per_500_places_and_a_rerun_none(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["open", "open"])
    world.scenario["observations"][0]["place_ids"] = list(range(1, 401))
    world.scenario["observations"][1]["place_ids"] = list(range(300, 701))  # 700 in all
    fake = served(world)
    plain_cache, copy = tmp_path / "plain-cache", tmp_path / "plain"
    shutil.copytree(world.pictures, copy)

    def run(cache: Path, pictures: Path, *options: str) -> int:
        fake.reset_log()
        done = run_cli(["-u", USER, *options, str(pictures)], fake.api_url, cache)
        assert done.returncode == 0, done.stderr
        return len(fake.api_requests())

    options = ("--geotag", "--location-names")
    plain_first, geo_first = run(plain_cache, copy), run(world.cache, world.pictures, *options)
    assert len(places_asked(fake)) == 2
    assert geo_first - plain_first == 2
    plain_again, geo_again = run(plain_cache, copy), run(world.cache, world.pictures, *options)
    assert geo_again == plain_again and not places_asked(fake)


def test_dissociate_removes_exactly_the_tools_fields(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["open"])
    fake = served(world)
    photo = world.twins[0].path
    write_xmp(photo, {"Xmp.dc.subject": ["my trip"], "Xmp.photoshop.City": "Our garden"})
    exif_before, xmp_before = read_exif(photo), read_xmp(photo)
    assert world.run_cli(fake.api_url, "--geotag", "--location-names").returncode == 0
    assert close(exiv2_position(photo), OPEN) and read_xmp(photo)["Xmp.photoshop.State"]

    dry = run_cli(["--dissociate", str(photo), "--dry-run"], fake.api_url, world.cache)
    assert "removed the iNaturalist ids" in dry.stdout and "the GPS position" in dry.stdout
    assert close(exiv2_position(photo), OPEN)
    result = run_cli(["--dissociate", str(photo)], fake.api_url, world.cache)

    assert result.returncode == 0, result.stderr
    assert "the GPS position and the location names" in result.stdout
    assert read_exif(photo) == exif_before
    after = read_xmp(photo)
    assert after.pop(ip.TAG_DISSOCIATED) == "True"
    assert after == xmp_before  # the user's keyword and city stay; everything of ours is gone
    assert not set(GPS_EXIF) & set(read_exif(photo))


def test_dry_run_shows_the_position_and_names_and_writes_nothing(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["open"])
    fake = served(world)
    photo = world.twins[0].path
    before = world.snapshot()

    result = world.run_cli(fake.api_url, "--geotag", "--location-names", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert world.snapshot() == before
    assert f"(dry run) {photo}: GPS position set to 37.8719123, -122.2585456" in result.stdout
    assert f"(dry run) {photo}: Location names Country 'United States'" in result.stdout


def test_raw_and_heic_get_the_position_in_their_sidecars(tmp_path: Path, served) -> None:
    world = make_world(tmp_path, 0)
    start = dt.datetime(2023, 6, 10, 8, 0, 20)
    files = []
    for i, suffix in enumerate((".DNG", ".HEIC")):
        taken = start + dt.timedelta(minutes=9 * i)
        picture = texture(900 + i, (640, 480))
        export = world.sources / f"export{i}.jpg"
        picture.save(export, "JPEG", quality=90)
        path = world.pictures / f"IMG_{i}{suffix}"
        if suffix == ".DNG":
            write_dng(path, picture, taken=taken)
        else:
            write_heic(path, picture, taken=taken, quality=95)
        files.append(path)
        photos = [photo_record(930_000 + i, export.name)]
        world.scenario["observations"].append(
            observation_record(9300 + i, USER, taken.replace(second=0), photos, location=list(OPEN))
        )
    fake = served(world)
    digests = {path: digest(path) for path in files}

    result = world.run_cli(fake.api_url, "--geotag")

    assert result.returncode == 0, result.stderr
    assert {path: digest(path) for path in files} == digests  # never written
    for path in files:
        sidecar = path.with_suffix(".xmp")
        assert close(xmp_position(sidecar), OPEN), result.stdout
        assert read_xmp(sidecar)["Xmp.exif.GPSMapDatum"] == "WGS-84"
        if EXIFTOOL:
            seen = exiftool_tags(sidecar)
            assert close((seen["GPSLatitude"], seen["GPSLongitude"]), OPEN)
    sidecars = {path: digest(path.with_suffix(".xmp")) for path in files}
    assert world.run_cli(fake.api_url, "--geotag").returncode == 0
    assert {path: digest(path.with_suffix(".xmp")) for path in files} == sidecars
    fake.move_observation(9300, MOVED)  # the DNG's observation
    assert world.run_cli(fake.api_url, "--geotag").returncode == 0
    assert close(xmp_position(files[0].with_suffix(".xmp")), MOVED)

    heic = files[1]
    assert run_cli(["--dissociate", str(heic)], fake.api_url, world.cache).returncode == 0
    left = read_xmp(heic.with_suffix(".xmp"))
    assert xmp_position(heic.with_suffix(".xmp")) is None
    assert not {k for k in left if k.startswith("Xmp.exif.GPS")} and ip.TAG_POSITION not in left
    assert digest(heic) == digests[heic]


def test_sidecars_option_puts_a_jpegs_position_in_its_sidecar(tmp_path: Path, served) -> None:
    world = geo_world(tmp_path, ["open"])
    fake = served(world)
    photo = world.twins[0].path
    before = digest(photo)

    result = world.run_cli(fake.api_url, "--geotag", "--sidecars")

    assert result.returncode == 0, result.stderr
    assert digest(photo) == before
    assert close(xmp_position(photo.with_suffix(".xmp")), OPEN)


# -- the rules, as pure functions ---------------------------------------------------------------


def observation(**record: object) -> ip.Observation:
    found = ip.parse_observation({"id": 7, "photos": [], **record})
    assert found is not None
    return found


def photo(path: Path = Path("a.jpg"), **fields: object) -> ip.LocalPhoto:
    base = ip.LocalPhoto(path, dt.datetime(2024, 5, 1), None, 1, (), None)
    return dataclasses.replace(base, **fields)


@given(
    st.floats(-90, 90, allow_nan=False),
    st.floats(-180, 180, allow_nan=False),
)
def test_coordinates_round_trip_through_exif_and_xmp_text(lat: float, lng: float) -> None:
    exif = {
        "Exif.GPSInfo.GPSLatitudeRef": "S" if lat < 0 else "N",
        "Exif.GPSInfo.GPSLatitude": ip.exif_coordinate(lat),
        "Exif.GPSInfo.GPSLongitudeRef": "W" if lng < 0 else "E",
        "Exif.GPSInfo.GPSLongitude": ip.exif_coordinate(lng),
    }
    xmp = {
        "Xmp.exif.GPSLatitude": ip.xmp_coordinate(lat, "N", "S"),
        "Xmp.exif.GPSLongitude": ip.xmp_coordinate(lng, "E", "W"),
    }
    read = ip.parse_xmp_gps(xmp)
    assert read is not None and close(read, (lat, lng), 1e-7)
    if (round(lat, 6), round(lng, 6)) != (0.0, 0.0):  # parse_gps takes 0,0 for 'no fix'
        assert close(ip.parse_gps(exif), (lat, lng), 1e-7)


def test_observation_position_respects_geoprivacy() -> None:
    public = observation(location="1.5,2.5", positional_accuracy=9)
    assert ip.observation_position(public, False) == (ip.Position(1.5, 2.5, 9), "")
    decoy = observation(location="1.5,2.5", obscured=True, geoprivacy="obscured")
    assert ip.observation_position(decoy, True) == (None, "observation obscured")
    threatened = observation(location="1.5,2.5", obscured=True, taxon_geoprivacy="obscured")
    assert ip.observation_position(threatened, True)[0] is None
    owner = observation(location="1.5,2.5", private_location="3.25,4.75", geoprivacy="private")
    assert ip.observation_position(owner, False)[0] is None
    assert ip.observation_position(owner, True)[0] == ip.Position(3.25, 4.75, None, private=True)
    assert ip.observation_position(observation(), True) == (None, "observation has no position")


def test_geotag_decision_moves_only_its_own_position() -> None:
    seen = observation(location="10.0,20.0")
    assert ip.geotag_decision(photo(), seen, False) == (ip.Position(10.0, 20.0), False, "")
    users = photo(location=(1.0, 2.0))
    assert ip.geotag_decision(users, seen, False) == (None, False, "photo has its own GPS")
    ours = photo(location=(1.0, 2.0), written_position=(1.0, 2.0))
    assert ip.geotag_decision(ours, seen, False)[0] == ip.Position(10.0, 20.0)
    current = photo(location=(10.0, 20.0), written_position=(10.0, 20.0))
    assert ip.geotag_decision(current, seen, False) == (None, False, "")
    removed = photo(written_position=(10.0, 20.0))
    assert ip.geotag_decision(removed, seen, False)[2] == "you removed the position this tool wrote"
    hidden = observation(location="10.0,20.0", obscured=True)
    assert ip.geotag_decision(current, hidden, False) == (None, True, "observation obscured")
    # A sidecar's position is what counts for a file with a sidecar.
    raw = photo(sidecar=Path("a.xmp"), xmp_location=(1.0, 2.0))
    assert ip.geotag_decision(raw, seen, False)[2] == "photo has its own GPS"


def test_location_names_from_places() -> None:
    places = {
        1: ip.Place(1, "France", 0, "France"),
        2: ip.Place(2, "Bretagne", 10, "Bretagne, FR"),
        3: ip.Place(3, "Finistère", 20, "Finistère, FR"),
        4: ip.Place(4, "Brest", 30, "Brest, FR"),
    }
    seen = observation(place_ids=[4, 3, 2, 1, 77], place_guess="Rade de Brest")
    assert ip.location_names(seen, places) == {
        "Xmp.photoshop.Country": "France",
        "Xmp.iptc.CountryCode": "FR",
        "Xmp.photoshop.State": "Bretagne",
        "Xmp.photoshop.City": "Brest",
        "Xmp.iptc.Location": "Rade de Brest",
    }
    coded = {1: dataclasses.replace(places[1], code="FR")}
    assert ip.location_names(observation(place_ids=[1]), coded)["Xmp.iptc.CountryCode"] == "FR"
    assert "Xmp.iptc.CountryCode" not in ip.location_names(observation(place_ids=[1]), places)
    assert ip.location_names(observation(), places) == {}


def test_png_and_tiff_get_exif_gps_too(tmp_path: Path) -> None:
    for name in ("a.png", "a.tif"):
        path = tmp_path / name
        Image.new("RGB", (8, 6), (30, 60, 90)).save(path)
        update = ip.plan_update(photo(), None, (), None, position=ip.Position(*OPEN, 7))
        assert update is not None
        ip.write_update(dataclasses.replace(update, photo=photo(path=path)))
        assert close(exiv2_position(path), OPEN), name
        assert "Exif.GPSInfo.GPSHPositioningError" not in read_exif(path)  # JPEG only
