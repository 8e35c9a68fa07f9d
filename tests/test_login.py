"""The optional iNaturalist login (GitHub issue 12): original file names, true locations,
deletions, and the token kept out of everything the run prints or writes.

The CLI tests run against the fake iNaturalist with a generated world of one day:

    09:00  a burst: b1.jpg and b2.jpg, one picture saved twice; b2 was uploaded as
           'B2.JPEG' (another case and extension). Without the name the two tie.
    09:30  a second shot: s1.jpg, then s2.jpg a few percent to the side; s2 was uploaded after
           editing (contrast, gamma and a vignette: since 1.5.3 the tone matching undoes the
           darkened corners too, by bringing the local brightness first); never s1.
    10:00  p.jpg, with GPS, uploaded to an obscured observation 11 m away.
    10:30  d.jpg, uploaded as it is; its observation is deleted between two runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fake_inat import FakeINaturalist
from PIL import Image, ImageEnhance
from support import model
from support.cli import CliResult, run_cli
from support.files import snapshot
from support.geo import gps_exif
from support.images import texture
from support.scenario import observation_record
from support.xmp import read_photo_id, write_exif

import inat_photos as ip

USER = "tester"
TOKEN = "tok-7f3a9c1e5b2d8f4a6c0e9b7d3f1a5c8e"  # made up; searched for in all the run wrote
DAY = dt.datetime(2022, 5, 14)
GPS = (37.5, -122.25)
TAXON = {"name": "Canis latrans", "rank": "species", "preferred_common_name": "Coyote"}
PHOTO_IDS = {"b2.jpg": 700_001, "s2.jpg": 700_002, "p.jpg": 700_003, "d.jpg": 700_004}


gps_tags = gps_exif


@dataclasses.dataclass
class LoginWorld:
    root: Path
    pictures: Path
    cache: Path
    scenario: dict

    def fake(self) -> FakeINaturalist:
        server = FakeINaturalist(self.scenario, base_dir=self.root / "sources")
        server.add_token(TOKEN, USER)
        return server

    def run(self, api_url: str, *options: str, token: str | None = TOKEN, **env: str) -> CliResult:
        extra = {"HOME": str(self.root / "home"), "XDG_CACHE_HOME": str(self.root / "xdg")}
        extra.update(XDG_DATA_HOME=str(self.root / "xdg-data"), **env)
        if token is not None:
            extra["INAT_API_TOKEN"] = token
        args = ["-u", USER, "--logfile", str(self.root / "log.html"), *options, str(self.pictures)]
        return run_cli(args, api_url, self.cache, extra_env=extra)

    def line(self, result: CliResult, name: str) -> str:
        return next(line for line in result.lines if f"/{name}' " in line)


def vignette(picture: Image.Image, strength: float) -> Image.Image:
    """picture with its corners darkened by strength (a local edit no tone curve undoes)."""
    height, width = picture.height, picture.width
    y, x = np.mgrid[0:height, 0:width]
    falloff = 1 - strength * (
        ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    )
    darker = np.asarray(picture.convert("RGB"), np.float64) * falloff[..., None]
    return Image.fromarray(np.clip(darker, 0, 255).astype(np.uint8))


def make_login_world(root: Path) -> LoginWorld:
    sources, pictures = root / "sources", root / "pictures"
    sources.mkdir(parents=True)
    pictures.mkdir()
    world = LoginWorld(root, pictures, root / "cache", {"users": [], "observations": []})
    world.scenario["users"].append({"id": 4242, "login": USER, "name": "Test Naturalist"})

    def local(name: str, picture: Image.Image, minute: int, quality: int = 92, **exif: str):
        path = pictures / name
        picture.save(path, "JPEG", quality=quality)
        taken = DAY.replace(hour=9) + dt.timedelta(minutes=minute, seconds=20)
        write_exif(
            path, {"Exif.Photo.DateTimeOriginal": taken.strftime("%Y:%m:%d %H:%M:%S"), **exif}
        )
        return path

    def observation(name: str, source: Path, minute: int, original: str | None, **extra):
        taken = DAY.replace(hour=9) + dt.timedelta(minutes=minute)
        photo = {"id": PHOTO_IDS[name], "source": source.name}
        if original:
            photo["original_filename"] = original
        obs_id = 5000 + len(world.scenario["observations"])
        world.scenario["observations"].append(
            observation_record(obs_id, USER, taken, [photo], TAXON, **extra)
        )

    burst = texture(21)  # two frames that differ only in how they were compressed
    local("b1.jpg", burst, 0, quality=95)
    local("b2.jpg", burst, 0, quality=92)
    burst.save(sources / "b2.png")
    observation("b2.jpg", sources / "b2.png", 0, "B2.JPEG")

    scene = texture(22, (520, 390))
    local("s1.jpg", scene.crop((0, 0, 480, 360)), 30)
    shot = scene.crop((24, 12, 504, 372))
    local("s2.jpg", shot, 30)
    edited = ImageEnhance.Contrast(shot).enhance(1.5).point(lambda v: int(255 * (v / 255) ** 0.7))
    vignette(edited, 0.3).save(sources / "s2.jpg", "JPEG", quality=92)
    observation("s2.jpg", sources / "s2.jpg", 30, "s2.jpg")

    p = local("p.jpg", texture(23), 60, **gps_tags(*GPS))
    (sources / "p.jpg").write_bytes(p.read_bytes())
    near = f"{GPS[0] + 0.0001!r},{GPS[1]!r}"  # 11.1 m north
    observation("p.jpg", sources / "p.jpg", 60, "p.jpg", location=near, geoprivacy="obscured")

    d = local("d.jpg", texture(24), 90)
    (sources / "d.jpg").write_bytes(d.read_bytes())
    observation("d.jpg", sources / "d.jpg", 90, "d.jpg")
    return world


@pytest.fixture
def login_world(tmp_path: Path) -> LoginWorld:
    return make_login_world(tmp_path)


@pytest.fixture
def login_fake(login_world: LoginWorld):
    with login_world.fake() as server:
        yield server


def tagged(world: LoginWorld) -> dict[str, int | None]:
    return {p.name: read_photo_id(p) for p in sorted(world.pictures.iterdir())}


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file below root whose bytes hold secret."""
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- without a token: as before ---------------------------------------------------------------


def test_without_a_token_nothing_changes(login_world: LoginWorld, login_fake) -> None:
    first = login_world.run(login_fake.api_url, token=None)
    assert first.returncode == 0, first.stderr
    found = tagged(login_world)
    assert found["b1.jpg"] is None and found["b2.jpg"] is None  # a tie: too close to choose
    assert any("too close to choose" in line for line in first.lines)
    # The edited shot is found (above 95 % since 1.5.3, on the verdict's evidence before),
    # never the other shot.
    assert found["s2.jpg"] == PHOTO_IDS["s2.jpg"] and found["s1.jpg"] is None
    assert "tones adjusted" in login_world.line(first, "s2.jpg")
    assert "distance from observation obscured" in login_world.line(first, "p.jpg")
    assert "matched by file name" not in first.stdout
    requests = login_fake.api_requests()
    assert [r["path"] for r in requests] == ["/v1/observations"]  # they prove the login
    login_fake.reset_log()
    again = login_world.run(login_fake.api_url, token=None)
    assert again.returncode == 0, again.stderr
    assert [r["path"] for r in login_fake.api_requests()] == ["/v1/observations"]
    assert not any(r["auth"] for r in login_fake.requests)


# -- with a token -------------------------------------------------------------------------


def test_with_a_token_the_file_name_picks_the_exact_frame(
    login_world: LoginWorld, login_fake
) -> None:
    result = login_world.run(login_fake.api_url)
    assert result.returncode == 0, result.stderr
    found = tagged(login_world)
    assert found["b2.jpg"] == PHOTO_IDS["b2.jpg"] and found["b1.jpg"] is None
    assert found["s2.jpg"] == PHOTO_IDS["s2.jpg"] and found["s1.jpg"] is None
    assert found["p.jpg"] == PHOTO_IDS["p.jpg"] and found["d.jpg"] == PHOTO_IDS["d.jpg"]
    assert login_world.line(result, "b2.jpg").endswith("(matched by file name).")
    # The edited shot was found before the name was needed (issue 17).
    assert "matched by file name" not in login_world.line(result, "s2.jpg")
    assert "matched by file name" not in login_world.line(result, "d.jpg")  # no rival there
    assert "too close to choose" not in result.stdout
    assert (login_world.root / "log.html").read_text().count("matched by file name") == 1
    requests = login_fake.api_requests()
    assert all(r["auth"] for r in requests)
    listing = [r for r in requests if r["path"] == "/v2/observations"]
    assert len(listing) == 1 and listing[0]["query"]["fields"] == ip.V2_FIELDS


def test_with_a_token_the_true_distance_of_an_obscured_observation_is_shown(
    login_world: LoginWorld, login_fake
) -> None:
    result = login_world.run(login_fake.api_url)
    line = login_world.line(result, "p.jpg")
    assert "distance from observation 11.1" in line and " meters" in line, line
    assert "obscured" not in line
    mode = stat.S_IMODE(login_world.cache.stat().st_mode)
    assert mode == 0o700, oct(mode)  # it holds the true place now


def test_a_deletion_is_noticed_on_an_ordinary_rerun(login_world: LoginWorld, login_fake) -> None:
    assert login_world.run(login_fake.api_url).returncode == 0
    assert read_photo_id(login_world.pictures / "d.jpg") == PHOTO_IDS["d.jpg"]
    login_fake.delete_observation(5003)
    login_fake.reset_log()
    before = snapshot(login_world.pictures)
    rerun = login_world.run(login_fake.api_url)
    assert rerun.returncode == 0, rerun.stderr
    gone = [line for line in rerun.lines if "no longer on iNaturalist" in line]
    assert len(gone) == 1 and "d.jpg: observation 5003" in gone[0]
    paths = [r["path"] for r in login_fake.api_requests()]
    assert paths == ["/v2/observations", "/v1/observations/deleted"]  # no re-check by id
    assert snapshot(login_world.pictures) == before  # its tags are left as they are


def test_a_refused_token_exits_2_before_any_photo_is_touched(
    login_world: LoginWorld, login_fake
) -> None:
    before = snapshot(login_world.pictures)
    result = login_world.run(login_fake.api_url, token="not-a-token-of-anyone")
    assert result.returncode == ip.EXIT_USAGE
    errors = [line for line in result.lines if line.startswith("Error:")]
    assert len(errors) == 1 and "HTTP 401" in errors[0] and ip.TOKEN_PAGE in errors[0]
    assert "not-a-token-of-anyone" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(login_world.pictures) == before


def test_a_token_that_expired_since_the_last_run_exits_2(
    login_world: LoginWorld, login_fake
) -> None:
    assert login_world.run(login_fake.api_url).returncode == 0
    login_fake.revoke_token(TOKEN)
    before = snapshot(login_world.pictures)
    result = login_world.run(login_fake.api_url)
    assert result.returncode == ip.EXIT_USAGE
    assert ip.TOKEN_PAGE in result.stdout and TOKEN not in result.stdout + result.stderr
    assert snapshot(login_world.pictures) == before


def test_the_token_appears_nowhere_the_run_printed_or_wrote(
    login_world: LoginWorld, login_fake
) -> None:
    token_file = login_world.root / "secrets" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    outputs = []
    for _ in range(2):  # a first run and a rerun (deletions, store, index)
        result = login_world.run(login_fake.api_url, "--token-file", str(token_file), token=None)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    assert "other users may read it" in outputs[0] and "chmod 600" in outputs[0]
    assert all(TOKEN not in text for text in outputs)
    assert login_fake.api_requests() and all(r["auth"] for r in login_fake.api_requests())
    written = [p for p in files_holding(login_world.root, TOKEN) if p != str(token_file)]
    assert written == []
    assert (login_world.root / "log.html").exists() and (login_world.cache / "photos").exists()


def test_a_private_token_file_draws_no_warning(login_world: LoginWorld, login_fake) -> None:
    token_file = login_world.root / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    result = login_world.run(login_fake.api_url, "--token-file", str(token_file), token=None)
    assert result.returncode == 0 and "Warning" not in result.stderr


def test_an_unreadable_token_file_is_one_clear_line(login_world: LoginWorld, login_fake) -> None:
    result = login_world.run(
        login_fake.api_url, "--token-file", str(login_world.root / "none"), token=None
    )
    assert result.returncode == ip.EXIT_USAGE
    assert result.lines[-1].startswith("Error: cannot read the token file")
    assert "Traceback" not in result.stderr


def test_a_login_in_the_environment_fetches_a_token(login_world: LoginWorld, login_fake) -> None:
    login_fake.add_password_login(USER, "pass word", "app-id", "app-secret")
    login = {
        "INAT_USERNAME": USER,
        "INAT_PASSWORD": "pass word",
        "INAT_APP_ID": "app-id",
        "INAT_APP_SECRET": "app-secret",
    }
    result = login_world.run(login_fake.api_url, token=None, **login)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_photo_id(login_world.pictures / "b2.jpg") == PHOTO_IDS["b2.jpg"]
    issued = [t for t in login_fake._tokens if t != TOKEN]
    assert len(issued) == 1
    assert issued[0] not in result.stdout + result.stderr
    assert files_holding(login_world.root, issued[0]) == []
    assert files_holding(login_world.root, "app-secret") == []


def test_a_refused_login_in_the_environment_exits_2(login_world: LoginWorld, login_fake) -> None:
    login = {
        "INAT_USERNAME": USER,
        "INAT_PASSWORD": "wrong",
        "INAT_APP_ID": "app-id",
        "INAT_APP_SECRET": "app-secret",
    }
    before = snapshot(login_world.pictures)
    result = login_world.run(login_fake.api_url, token=None, **login)
    assert result.returncode == ip.EXIT_USAGE
    assert "iNaturalist refused the login" in result.stdout
    assert snapshot(login_world.pictures) == before


def test_a_keyring_without_a_login_is_one_clear_line(login_world: LoginWorld, login_fake) -> None:
    fail = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    result = login_world.run(login_fake.api_url, "--keyring", token=None, **fail)
    assert result.returncode == ip.EXIT_USAGE
    assert result.lines[-1].startswith("Error: no complete iNaturalist login")
    assert "Traceback" not in result.stderr
    # The keyring library's own warning is said in the tool's line, not printed before it.
    assert result.stderr == "", result.stderr
    assert "(the keyring: " in result.lines[-1]


def test_the_cache_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    cache = tmp_path / "new" / "cache"
    with ip.run_lock(cache):
        pass
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_an_open_cache_is_made_private_once_a_token_is_used(
    login_world: LoginWorld, login_fake
) -> None:
    login_world.cache.mkdir()
    os.chmod(login_world.cache, 0o755)
    result = login_world.run(login_fake.api_url)
    assert result.returncode == 0
    assert stat.S_IMODE(login_world.cache.stat().st_mode) == 0o700
    assert any("readable by you only" in line for line in result.lines)


# -- the pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "uploaded", "same"),
    [
        ("IMG_1234.JPG", "IMG_1234.jpeg", True),
        ("IMG_1234.CR2", "IMG_1234.jpg", True),
        ("img_1234.jpg", "IMG_1234.JPG", True),
        ("IMG_1234.jpg", "C:\\Users\\me\\Pictures\\IMG_1234.JPG", True),
        ("IMG_1234.jpg", "IMG_1235.jpg", False),
        ("IMG_1234.jpg", "IMG_12345.jpg", False),
        ("IMG_1234.jpg", None, False),
        ("IMG_1234.jpg", "", False),
        ("IMG_1234.jpg", "IMG_1234-edited.jpg", False),
    ],
)
def test_same_file_name(local: str, uploaded: str | None, same: bool) -> None:
    assert ip.same_file_name(local, uploaded) is same


def test_parse_observation_reads_original_names_and_the_true_place() -> None:
    record = {
        "id": 7,
        "time_observed_at": "2022-05-14T09:00:00+00:00",
        "location": "37.6,-122.3",
        "private_location": "37.5,-122.25",
        "obscured": True,
        "geoprivacy": "obscured",
        "observation_photos": [
            {"id": 1, "position": 0, "photo": {"id": 2, "url": "https://h/photos/2/square.jpg"}},
            {
                "id": 3,
                "position": 1,
                "photo": {
                    "id": 4,
                    "url": "https://h/photos/4/square.jpg",
                    "original_filename": "IMG_1.JPG",
                },
            },
        ],
    }
    observation = ip.parse_observation(record)
    assert observation is not None
    assert observation.location == (37.5, -122.25) and not observation.obscured
    assert [p.original_filename for p in observation.photos] == [None, "IMG_1.JPG"]
    public = ip.parse_observation({**record, "private_location": None})
    assert public is not None and public.obscured and public.location == (37.6, -122.3)
    # v2 may give the name only in the observation's list of photos
    photos = [{"id": 2, "original_filename": "IMG_0.JPG"}]
    listed = ip.parse_observation({**record, "photos": photos})
    assert listed is not None
    assert [p.original_filename for p in listed.photos] == ["IMG_0.JPG", "IMG_1.JPG"]


def test_assign_uploads_the_name_breaks_a_tie() -> None:
    scores = {(0, 0): 0.981, (1, 0): 0.978}
    assert [d.kind for d in ip.assign_uploads(scores, {}, 0.95)] == ["tie"]
    (decision,) = ip.assign_uploads(scores, {}, 0.95, named={(1, 0)})
    assert (decision.kind, decision.local_index, decision.by_name) == ("associate", 1, True)


def test_assign_uploads_a_name_needs_only_the_name_bar() -> None:
    assert ip.assign_uploads({(0, 0): 0.85}, {}, 0.95) == []
    (decision,) = ip.assign_uploads({(0, 0): 0.85}, {}, 0.95, named={(0, 0)})
    assert decision.by_name and decision.local_index == 0
    assert ip.assign_uploads({(0, 0): ip.NAME_THRESHOLD - 0.01}, {}, 0.95, named={(0, 0)}) == []


def test_assign_uploads_an_upload_that_names_a_photo_goes_to_no_other() -> None:
    # The named photo is far below the bar: the look-alike at 97 % does not get it either.
    scores = {(0, 0): 0.5, (1, 0): 0.97}
    assert ip.assign_uploads(scores, {}, 0.95, named={(0, 0)}) == []


def test_assign_uploads_a_photo_takes_the_upload_that_names_it_over_a_better_look_alike() -> None:
    # Local 0 scores higher with upload 1 (its neighbour's), but upload 0 carries its name.
    scores = {(0, 0): 0.96, (0, 1): 0.985, (1, 1): 0.97}
    decisions = ip.assign_uploads(scores, {}, 0.95, named={(0, 0), (1, 1)})
    assert {(d.upload_index, d.local_index, d.kind) for d in decisions} == {
        (0, 0, "associate"),
        (1, 1, "associate"),
    }


def test_assign_uploads_says_by_name_only_when_the_name_decided() -> None:
    (decision,) = ip.assign_uploads({(0, 0): 0.98}, {}, 0.95, named={(0, 0)})
    assert decision.kind == "associate" and not decision.by_name


def test_a_name_never_reaches_past_its_cluster() -> None:
    when = dt.datetime(2022, 5, 14, 9, 0)
    far = ip.LocalPhoto(Path("IMG_1.jpg"), when + dt.timedelta(hours=2), None, 1, (), None)
    upload = model.upload(9, original_filename="IMG_1.JPG")
    observation = model.observation(90, when, (upload,))

    def compare(photos, candidates):
        return {
            (i, j): ip.Comparison(0.85) for i in range(len(photos)) for j in range(len(candidates))
        }

    outcome = ip.match_day(
        when.date(),
        [far],
        [ip.Candidate(upload, observation)],
        compare,
        dataclasses.replace(ip.Options(user="u", paths=()), time_offset=dt.timedelta(0)),
        lined_up=lambda photos, candidates: {},
        checked_before=lambda photo, uploads: False,
    )
    assert outcome.associations == ()


def test_the_v2_fields_keep_what_hierarchy_and_darwin_core_need() -> None:
    """With a token observations come through V2_FIELDS: the taxon's id and ancestors must
    survive it, or --hierarchical-keywords and --darwin-core would write nothing."""
    from fake_inat import parse_rison_fields, select_fields

    record = {
        "id": 7,
        "time_observed_at": "2021-02-01T10:15:00-08:00",
        "observed_on": "2021-02-01",
        "taxon": {
            "id": 42069,
            "name": "Canis latrans",
            "rank": "species",
            "preferred_common_name": "Coyote",
            "ancestor_ids": [48460, 1, 2, 355675, 40151, 848317, 41573, 42048, 42069],
            "iconic_taxon_name": "Mammalia",
        },
        "observation_photos": [],
    }
    lean = select_fields(record, parse_rison_fields(ip.V2_FIELDS))
    assert "iconic_taxon_name" not in lean["taxon"]
    full, kept = ip.parse_observation(record), ip.parse_observation(lean)
    assert kept is not None and full is not None
    assert (kept.taxon_id, kept.ancestor_ids) == (full.taxon_id, full.ancestor_ids)
    assert kept.ancestor_ids and kept.taxon_id == 42069
