"""Issue 8: how the tool talks to iNaturalist, against the fake server.

Observations without a taxon, the size of by-id requests, TLS behind an intercepting proxy,
photos iNaturalist does not show (still processing, hidden, flagged), and identifications that
change without iNaturalist dating the change (renames) or observations that vanish.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import sqlite3
import ssl
import threading
from pathlib import Path

import pytest
import requests
import trustme
from fake_inat import FakeINaturalist
from support.cli import run_cli, run_main
from support.world import USER, World, assert_tagged, make_world
from support.xmp import read_xmp

import inat_photos as ip


def without_taxa(world: World) -> World:
    for observation in world.scenario["observations"]:
        observation["taxon"] = None
    return world


def age_observation_checks(cache: Path, days: float) -> None:
    """Move every stored 'last asked for by id' time back by days, as if they had passed."""
    db = sqlite3.connect(cache / "observations.sqlite")
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "rechecked" in tables:  # absent before issue 8: the test then fails on what it checks
            for obs_id, when in db.execute("SELECT id, checked_at FROM rechecked").fetchall():
                earlier = dt.datetime.fromisoformat(when) - dt.timedelta(days=days)
                db.execute(
                    "UPDATE rechecked SET checked_at = ? WHERE id = ?",
                    (earlier.isoformat(), obs_id),
                )
        db.commit()
    finally:
        db.close()


class CountingClient:
    """Stands in for InatClient in ObservationStore tests: answers by id from a dict."""

    def __init__(self, records: dict[int, dict]) -> None:
        self.records = records
        self.asked: list[list[int]] = []

    def observations_by_id(self, ids: list[int]) -> list[dict]:
        self.asked.append(list(ids))
        return [self.records[i] for i in ids if i in self.records]


# -- 7. small ones ------------------------------------------------------------------------------


def test_observation_without_taxon_reads_no_identification(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    world = without_taxa(make_world(tmp_path, 1, unmatched=1))
    twin = world.twins[0]
    lonely = world.scenario["observations"][1]
    log = tmp_path / "log.html"
    with world.fake() as fake:
        args = ["-u", USER, "--logfile", str(log), str(world.pictures)]
        result = run_main(monkeypatch, capsys, args, fake.api_url, world.cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'None'" not in result.stdout
    found = [line for line in result.lines if f"found for photo id {twin.photo};" in line]
    assert len(found) == 1 and f"{twin.photo}; no identification, time from" in found[0]
    assert (
        f"Not associated with a local picture: photo id {lonely['photos'][0]['id']}, 1st photo"
        f" of observation https://www.inaturalist.org/observations/{lonely['id']},"
        " no identification." in result.lines
    )
    page = log.read_text(encoding="utf-8")
    assert page.count("<i>no identification</i>") == 2 and "None" not in page


def test_observations_by_id_asks_for_at_most_100_ids_at_a_time(tmp_path: Path) -> None:
    world = make_world(tmp_path, 0, unmatched=3)
    held = [o["id"] for o in world.scenario["observations"]]
    wanted = sorted({*held, *range(1, 248)})  # 250 ids, three of them real
    with world.fake() as fake:
        client = ip.InatClient(fake.api_url, world.cache)
        found = client.observations_by_id(wanted)
        asked = [r["query"]["id"].split(",") for r in fake.api_requests()]
    assert sorted(r["id"] for r in found) == sorted(held)
    assert max(map(len, asked)) <= 100, [len(ids) for ids in asked]
    assert sorted(int(i) for ids in asked for i in ids) == wanted
    assert len(asked) == 3


# -- 4. TLS behind an intercepting proxy --------------------------------------------------------


class ConnectProxy:
    """A bare HTTPS proxy on loopback: tunnels CONNECT as company proxies do, logs each target."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.tunnels: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = client.recv(4096)
                if not piece:
                    return
                head += piece
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
                back.start()
                _pump(client, upstream)
                back.join(timeout=5)


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while piece := source.recv(65536):
            target.sendall(piece)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def private_authority(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 signed by a new private CA, and that CA's
    certificate in folder/company-ca.pem (as a TLS-inspecting proxy re-signs iNaturalist's)."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    bundle = folder / "company-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    return context, bundle


@pytest.mark.parametrize("route", ["direct", "through a proxy"])
def test_https_api_trusts_the_ca_bundle_named_in_the_environment(tmp_path: Path, route) -> None:
    """The fake server speaks HTTPS with a certificate of a private CA, as a TLS-inspecting
    proxy re-signs iNaturalist's; REQUESTS_CA_BUNDLE names that CA: API calls and downloads
    must both trust it (and go through HTTPS_PROXY when one is set)."""
    context, bundle = private_authority(tmp_path)
    world = make_world(tmp_path, 1)
    env = {
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CURL_CA_BUNDLE": "",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    proxy = ConnectProxy() if route != "direct" else None
    if proxy:
        env.update(HTTPS_PROXY=proxy.url, https_proxy=proxy.url)
    try:
        with world.fake(tls=context) as fake:
            assert fake.api_url.startswith("https://127.0.0.1:")
            args = ["-u", USER, str(world.pictures)]
            result = run_cli(args, fake.api_url, world.cache, extra_env=env)
            api, photos = fake.api_requests(), fake.photo_requests()
    finally:
        if proxy:
            proxy.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert_tagged(world.twins[0])
    assert api and photos
    if proxy:
        assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{fake.port}"}


def test_a_password_login_trusts_the_ca_bundle_named_in_the_environment(tmp_path: Path) -> None:
    """The token for a login in the environment is fetched through the same trust as every
    other API call (behind a TLS-inspecting proxy, iNaturalist's certificate is re-signed)."""
    context, bundle = private_authority(tmp_path)
    world = make_world(tmp_path, 1)
    env = {
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CURL_CA_BUNDLE": "",
        "INAT_USERNAME": USER,
        "INAT_PASSWORD": "pass word",
        "INAT_APP_ID": "app-id",
        "INAT_APP_SECRET": "app-secret",
    }
    with world.fake(tls=context) as fake:
        fake.add_password_login(USER, "pass word", "app-id", "app-secret")
        result = run_cli(
            ["-u", USER, str(world.pictures)], fake.api_url, world.cache, extra_env=env
        )
        logins = [entry for entry in fake.requests if entry["path"] == "/oauth/token"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(logins) == 1
    assert_tagged(world.twins[0])


def test_untrusted_certificate_is_named_as_such(tmp_path: Path) -> None:
    context, _ = private_authority(tmp_path)
    world = make_world(tmp_path, 1)
    with world.fake(tls=context) as fake:
        result = run_cli(["-u", USER, str(world.pictures)], fake.api_url, world.cache)
    assert result.returncode == ip.EXIT_USAGE, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.lines if line.startswith("Error:")]
    assert len(errors) == 1 and "REQUESTS_CA_BUNDLE" in errors[0], result.stdout


# -- 5. photos iNaturalist does not show ---------------------------------------------------------


@pytest.mark.parametrize(
    ("photo", "reason"),
    [
        (
            {"url": "https://inaturalist-open-data.s3.amazonaws.com/photos/111827921/square.jpg"},
            None,
        ),
        (
            {"url": "https://static.inaturalist.org/photos/123/square.jpeg?1612345"},
            None,
        ),
        (
            {
                "url": "https://static.inaturalist.org/photos/5/square.?1413275622",
                "flags": [],
            },
            None,
        ),
        ({"url": "http://127.0.0.1:8080/photos/7/square.jpg", "hidden": False}, None),
        ({"url": "https://mirror.example/inat/photos/7/square.jpg"}, None),
        (
            {
                "url": "https://x.org/photos/7/square.jpg",
                "flags": [{"id": 1, "resolved": True}],
            },
            None,
        ),
        (
            {"url": "https://www.inaturalist.org/attachment_defaults/local_photos/square.png"},
            "processing",
        ),
        (
            {
                "url": "https://static.inaturalist.org/photos/7/square.jpg",
                "hidden": True,
            },
            "hidden",
        ),
        (
            {"url": "https://www.inaturalist.org/assets/media-hidden-square.png"},
            "hidden",
        ),
        (
            {"url": "https://www.inaturalist.org/assets/copyright-infringement-square.png"},
            "flagged",
        ),
        ({"url": "https://x.org/photos/7/square.jpg", "flags": [{"id": 1}]}, "flagged"),
        ({"url": "https://x.org/photos/abc/square.jpg"}, "unknown"),
        ({"url": "https://x.org/photos/7/"}, "unknown"),
        ({"url": "ftp://x.org/photos/7/square.jpg"}, "unknown"),
        ({"url": "/photos/7/square.jpg"}, "unknown"),
    ],
)
def test_only_a_numeric_photos_path_is_a_photo_file(photo: dict, reason: str | None) -> None:
    assert ip.photo_unavailable(photo) == reason
    record = {"id": 1, "observation_photos": [{"id": 2, "photo": {"id": 3, **photo}}]}
    parsed = ip.parse_observation(record)
    assert parsed is not None and parsed.photos[0].unavailable == reason


def test_store_asks_again_for_uploads_stuck_in_processing_only_weekly(
    tmp_path: Path,
) -> None:
    day = dt.date(2022, 5, 14)
    now = dt.datetime.now(dt.timezone.utc)

    def record(obs_id: int, updated: dt.datetime) -> dict:
        url = "https://www.inaturalist.org/attachment_defaults/local_photos/square.png"
        return {
            "id": obs_id,
            "observed_on": day.isoformat(),
            "updated_at": updated.isoformat(),
            "observation_photos": [{"id": obs_id, "photo": {"id": obs_id, "url": url}}],
        }

    fresh, stuck = record(1, now), record(2, now - dt.timedelta(days=30))
    store = ip.ObservationStore(tmp_path / "observations.sqlite")
    store._put(USER, [fresh, stuck])
    store.db.commit()
    client = CountingClient({1: fresh, 2: stuck})
    store.recheck(client, USER, [], day, day)  # type: ignore[arg-type]
    store.recheck(client, USER, [], day, day)  # type: ignore[arg-type]
    assert client.asked == [[1], [1]]
    store.close()
    age_observation_checks(tmp_path, 8)
    store = ip.ObservationStore(tmp_path / "observations.sqlite")
    store.recheck(client, USER, [], day, day)  # type: ignore[arg-type]
    store.close()
    assert client.asked[-1] == [1, 2]


def test_fake_server_shapes_photos_it_does_not_show_like_the_api(tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    with world.fake() as fake:
        photo_id, obs_id = world.twins[0].photo, world.twins[0].observation
        shapes = {}
        for state in ("processing", "hidden", "flagged", "normal"):
            fake.set_photo_state(photo_id, state)
            shown = fake.observation_json(obs_id)["photos"][0]
            own = requests.get(f"{fake.host_url}/photos/{photo_id}/large.jpg", timeout=10)
            placeholder = requests.get(shown["url"], timeout=10)
            shapes[state] = (shown, own.status_code, placeholder.headers["Content-Type"])
    assert shapes["processing"][0]["url"].endswith("/attachment_defaults/local_photos/square.png")
    assert shapes["hidden"][0]["hidden"] is True
    assert shapes["hidden"][0]["url"].endswith("/media-hidden-square.png")
    assert shapes["flagged"][0]["flags"] and not shapes["flagged"][0]["flags"][0]["resolved"]
    assert shapes["flagged"][0]["url"].endswith("/copyright-infringement-square.png")
    for state in ("processing", "hidden", "flagged"):
        assert shapes[state][1:] == (404, "image/png"), state
    assert shapes["normal"][0]["url"] == f"{fake.host_url}/photos/{photo_id}/square.jpg"
    assert "hidden" not in shapes["normal"][0] and shapes["normal"][0]["flags"] == []
    assert shapes["normal"][1:] == (200, "image/jpeg")


SKIP_REASONS = {
    "processing": "still being processed on iNaturalist; tried again next run.",
    "hidden": "hidden on iNaturalist; asked for again after 7 days.",
    "flagged": "flagged on iNaturalist; asked for again after 7 days.",
}


def skip_lines(result, photo_id: int) -> list[str]:
    return [line for line in result.lines if line.startswith(f"Skipped photo id {photo_id} ")]


def non_photo_downloads(fake: FakeINaturalist) -> list[str]:
    return [r["path"] for r in fake.requests if not r["path"].startswith(("/v1/", "/photos/"))]


@pytest.mark.parametrize("state", list(SKIP_REASONS))
def test_photo_not_shown_on_inaturalist_is_skipped_then_matched_later(
    tmp_path: Path, state: str
) -> None:
    world = make_world(tmp_path, 2)
    victim, other = world.twins
    world.scenario["observations"][0]["photos"][0]["state"] = state
    if state == "processing":  # a photo is processed within minutes of its upload
        now = dt.datetime.now(dt.timezone.utc)
        world.scenario["observations"][0]["updated_at"] = now.isoformat()
    args = ["-u", USER, str(world.pictures)]
    with world.fake() as fake:
        shown = fake.observation_json(victim.observation)["photos"][0]
        first = run_cli(args, fake.api_url, world.cache)
        placeholders = non_photo_downloads(fake)
        cached = [p.name for p in (world.cache / "photos").rglob("*") if p.is_file()]
        tagged = [ip.TAG_OBSERVATION in read_xmp(victim.path)]
        fake.set_photo_state(victim.photo, "normal")  # processed, unhidden, flag resolved
        runs = [run_cli(args, fake.api_url, world.cache)]
        if state != "processing":  # not asked for again within 7 days: still skipped
            tagged.append(ip.TAG_OBSERVATION in read_xmp(victim.path))
            age_observation_checks(world.cache, 8)  # a week and a day
            runs.append(run_cli(args, fake.api_url, world.cache))
    assert "/photos/" not in shown["url"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert placeholders == [], "a placeholder was downloaded"
    assert not [name for name in cached if name.startswith(str(victim.photo))], cached
    assert skip_lines(first, victim.photo) == [
        f"Skipped photo id {victim.photo} of observation"
        f" https://www.inaturalist.org/observations/{victim.observation}: {SKIP_REASONS[state]}"
    ]
    assert_tagged(other)
    if state != "processing":
        assert runs[0].returncode == 0, runs[0].stdout + runs[0].stderr
        assert len(skip_lines(runs[0], victim.photo)) == 1
    assert not any(tagged), "tagged while iNaturalist did not show the photo"
    last = runs[-1]
    assert last.returncode == 0, last.stdout + last.stderr
    assert skip_lines(last, victim.photo) == []
    assert any(f"found for photo id {victim.photo};" in line for line in last.lines), last.stdout
    assert_tagged(victim)


# -- 6. changes iNaturalist does not date --------------------------------------------------------


def by_id_requests(fake: FakeINaturalist) -> list[list[str]]:
    return [r["query"]["id"].split(",") for r in fake.api_requests() if r["query"].get("id")]


def test_store_forgets_only_what_the_answer_lacks(tmp_path: Path) -> None:
    store = ip.ObservationStore(tmp_path / "observations.sqlite")
    store._put(USER, [{"id": 1}, {"id": 2}])
    store.db.commit()
    store.close()
    age_observation_checks(tmp_path, 8)
    store = ip.ObservationStore(tmp_path / "observations.sqlite")
    client = CountingClient({1: {"id": 1, "taxon": {"name": "Canis latrans", "rank": "species"}}})
    day = dt.date(2022, 5, 14)
    store.recheck(client, USER, [1, 2, 3], day, day)  # type: ignore[arg-type]
    assert client.asked == [[1, 2, 3]]
    assert store.caption_history([1]) == {1: {"Canis latrans"}}  # kept for the caption rule
    assert set(store.observations_by_id([1, 2, 3])) == {1}
    store.recheck(client, USER, [1, 2, 3], day, day)  # type: ignore[arg-type]
    assert len(client.asked) == 1, "asked again within 7 days"
    store.close()


def test_renamed_taxon_is_seen_after_7_days_at_the_cost_of_one_request(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, 2)
    coyote = world.twins[0]
    assert coyote.caption == "Coyote (Canis latrans)"
    args = ["-u", USER, str(world.pictures)]
    with world.fake() as fake:
        assert run_cli(args, fake.api_url, world.cache).returncode == 0
        assert_tagged(coyote)
        taxon = fake.observation_json(coyote.observation)["taxon"]
        fake.rename_taxon(taxon["id"], preferred_common_name="Prairie Wolf")
        updated_at = fake.observation_json(coyote.observation)["updated_at"]
        fake.reset_log()
        soon = run_cli(args, fake.api_url, world.cache)
        soon_api = fake.api_requests()
        age_observation_checks(world.cache, 8)  # a week and a day
        fake.reset_log()
        later = run_cli(args, fake.api_url, world.cache)
        later_by_id = by_id_requests(fake)
        fake.reset_log()
        again = run_cli(args, fake.api_url, world.cache)
        again_api = fake.api_requests()
    assert updated_at == fake.observation_json(coyote.observation)["updated_at"]
    assert soon.returncode == later.returncode == again.returncode == 0, later.stderr
    assert "Updating subject" not in soon.stdout
    assert len(soon_api) == 1 and soon_api[0]["query"].get("updated_since"), soon_api
    assert (
        f"{coyote.path}: Updating subject from 'Coyote (Canis latrans)' to"
        " 'Prairie Wolf (Canis latrans)'." in later.lines
    ), later.stdout
    assert read_xmp(coyote.path)[ip.TAG_SUBJECT] == ["Prairie Wolf (Canis latrans)"]
    assert_tagged(world.twins[1])
    tagged = sorted(str(t.observation) for t in world.twins)
    assert [sorted(ids) for ids in later_by_id] == [tagged], "one request for both"
    assert len(again_api) == 1, again_api  # checked now: not again for 7 days


def test_deleted_observation_is_noticed_within_7_days_without_bypass_cache(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, 2)
    gone = world.twins[0]
    args = ["-u", USER, str(world.pictures)]
    notice = (
        f"{gone.path}: observation {gone.observation} is no longer on iNaturalist;"
        " its tags are left as they are."
    )
    with world.fake() as fake:
        assert run_cli(args, fake.api_url, world.cache).returncode == 0
        fake.delete_observation(gone.observation)
        soon = run_cli(args, fake.api_url, world.cache)
        age_observation_checks(world.cache, 8)  # a week and a day
        later = run_cli(args, fake.api_url, world.cache)
        fake.reset_log()
        again = run_cli(args, fake.api_url, world.cache)
        again_api = fake.api_requests()
    assert soon.returncode == later.returncode == again.returncode == 0, later.stderr
    assert notice not in soon.lines
    assert notice in later.lines, later.stdout
    assert notice in again.lines, again.stdout
    assert len(again_api) == 1, again_api  # the missing id is not asked for on every run
    assert_tagged(gone)
    assert_tagged(world.twins[1])
