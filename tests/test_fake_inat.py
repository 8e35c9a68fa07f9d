"""The fake iNaturalist server answers like the real API v1 and photo host."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from fake_inat import FakeINaturalist
from PIL import Image
from support import SCENARIO, TESTS
from support.examples import USER as LOGIN


def make_picture(path: Path, size: tuple[int, int], orientation: int = 1) -> None:
    """A picture whose left half is red and right half blue, with an EXIF Orientation."""
    picture = Image.new("RGB", size, (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"
    picture.save(path, "JPEG", quality=95, exif=exif.tobytes())


def mini_scenario(folder: Path, count: int = 7) -> dict:
    """``count`` observations, one a day from 2021-03-01, ids 50000001.., one photo each."""
    make_picture(folder / "wide.jpg", (400, 200))
    observations = []
    for k in range(count):
        day = f"2021-03-{k + 1:02d}"
        observations.append(
            {
                "id": 50_000_001 + k * 17,
                "user": "tester",
                "observed_on": day,
                "time_observed_at": f"{day}T09:00:00-08:00",
                "location": "37.4,-122.1",
                "taxon": {"id": 3, "name": "Aves", "rank": "class"} if k % 2 else None,
                "photos": [{"id": 90_000_001 + k, "source": "wide.jpg"}] if k != 3 else [],
            }
        )
    return {
        "users": [{"id": 77, "login": "tester", "name": "Tess Ter"}],
        "observations": observations,
    }


@pytest.fixture(scope="module")
def example():
    with FakeINaturalist(SCENARIO) as fake:
        yield fake


@pytest.fixture
def mini(tmp_path: Path):
    with FakeINaturalist(mini_scenario(tmp_path), base_dir=tmp_path) as fake:
        yield fake


def get(url: str, **params: object) -> requests.Response:
    return requests.get(url, params=params, timeout=10)


def search(fake: FakeINaturalist, **params: object) -> dict:
    response = get(f"{fake.api_url}/observations", **params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def decode(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


# -- API -------------------------------------------------------------------------------------
def test_api_url_and_user(example: FakeINaturalist) -> None:
    assert example.api_url.startswith("http://127.0.0.1:") and example.api_url.endswith("/v1")
    by_login = get(f"{example.api_url}/users/{LOGIN}").json()
    assert by_login["total_results"] == 1 and by_login["page"] == 1
    user = by_login["results"][0]
    assert user == {
        "id": 1001,
        "login": LOGIN,
        "name": "Demo Naturalist",
        "observations_count": len(json.loads(SCENARIO.read_text())["observations"]),
        "icon_url": None,
    }
    assert get(f"{example.api_url}/users/1001").json()["results"][0]["login"] == LOGIN


def test_unknown_things_are_404_json(example: FakeINaturalist) -> None:
    for url in (
        f"{example.api_url}/users/nobody_at_all",
        f"{example.api_url}/nothing",
        f"{example.host_url}/photos/123/large.jpg",
        f"{example.host_url}/photos/111827921/huge.jpg",
    ):
        response = get(url)
        assert response.status_code == 404, url
        assert response.json() == {"error": "Not found", "status": 404}


def test_observation_json_shape(example: FakeINaturalist) -> None:
    scenario = json.loads(SCENARIO.read_text())
    answer = search(example, user_id=LOGIN, per_page=200)
    assert answer["total_results"] == len(scenario["observations"])
    assert answer["per_page"] == 200 and answer["page"] == 1
    by_id = {obs["id"]: obs for obs in answer["results"]}
    for spec in scenario["observations"]:
        obs = by_id[spec["id"]]
        assert obs["uri"] == f"https://www.inaturalist.org/observations/{spec['id']}"
        assert obs["user"]["login"] == LOGIN and obs["user"]["id"] == 1001
        assert obs["observed_on"] == spec["observed_on"]
        year, month, day = (int(x) for x in spec["observed_on"].split("-"))
        assert obs["observed_on_details"]["date"] == spec["observed_on"]
        assert (
            obs["observed_on_details"]["year"],
            obs["observed_on_details"]["month"],
            obs["observed_on_details"]["day"],
        ) == (year, month, day)
        assert obs["time_observed_at"] == spec["time_observed_at"]
        assert obs["time_zone_offset"] == "-08:00"
        assert len(obs["uuid"]) == 36
        lat, lng = (float(x) for x in obs["location"].split(","))
        assert obs["geojson"] == {"type": "Point", "coordinates": [lng, lat]}
        assert obs["obscured"] is spec["obscured"]
        true_lat, true_lng = (float(x) for x in spec["location"].split(","))
        moved_km = 111 * max(abs(lat - true_lat), abs(lng - true_lng))
        if spec["obscured"]:
            assert obs["geoprivacy"] == "obscured" and 1 < moved_km < 30
        else:
            assert obs["geoprivacy"] is None and moved_km < 1e-6
        taxon = obs["taxon"]
        assert {k: taxon[k] for k in ("id", "name", "rank")} == {
            k: spec["taxon"][k] for k in ("id", "name", "rank")
        }
        assert taxon["rank_level"] == {"species": 10, "subspecies": 5, "genus": 20}[taxon["rank"]]
        if "preferred_common_name" in spec["taxon"]:
            assert taxon["preferred_common_name"] == spec["taxon"]["preferred_common_name"]
        else:
            assert "preferred_common_name" not in taxon
        assert [p["id"] for p in obs["photos"]] == [p["id"] for p in spec["photos"]]
        for position, (photo, link) in enumerate(
            zip(obs["photos"], obs["observation_photos"], strict=True)
        ):
            assert photo["url"] == f"{example.host_url}/photos/{photo['id']}/square.jpg"
            assert set(photo) >= {"id", "url", "attribution", "license_code", "original_dimensions"}
            assert link["position"] == position and link["photo"] == photo
            assert link["id"] == spec["photos"][position]["observation_photo_id"]


def test_default_order_is_created_at_desc_and_order_options(mini: FakeINaturalist) -> None:
    created = [o["created_at"] for o in search(mini)["results"]]
    assert created == sorted(created, reverse=True) and len(created) == 7
    ids = [o["id"] for o in search(mini, order_by="id", order="asc")["results"]]
    assert ids == sorted(ids)
    days = [o["observed_on"] for o in search(mini, order_by="observed_on")["results"]]
    assert days == sorted(days, reverse=True)


def test_d1_d2_are_inclusive(mini: FakeINaturalist) -> None:
    answer = search(mini, user_id="tester", d1="2021-03-02", d2="2021-03-04")
    assert answer["total_results"] == 3
    assert sorted(o["observed_on"] for o in answer["results"]) == [
        "2021-03-02",
        "2021-03-03",
        "2021-03-04",
    ]
    assert search(mini, d1="2021-03-07")["total_results"] == 1
    assert search(mini, d2="2021-02-28")["total_results"] == 0
    assert get(f"{mini.api_url}/observations", d1="March").status_code == 422


def test_user_photos_and_id_filters(mini: FakeINaturalist) -> None:
    assert search(mini, user_id=77)["total_results"] == 7
    assert search(mini, user_login="tester")["total_results"] == 7
    assert search(mini, user_id="somebody_else")["total_results"] == 0
    assert search(mini, photos="true")["total_results"] == 6
    answer = search(mini, id="50000001,50000018,42", unknown_param="x")
    assert sorted(o["id"] for o in answer["results"]) == [50000001, 50000018]
    assert search(mini, id_below=50000035)["total_results"] == 2


def test_id_above_pagination_covers_everything_once(mini: FakeINaturalist) -> None:
    seen, last, pages = [], 0, 0
    while True:
        answer = search(
            mini, user_id="tester", order_by="id", order="asc", per_page=2, id_above=last
        )
        if not answer["results"]:
            break
        assert len(answer["results"]) <= 2
        seen += [o["id"] for o in answer["results"]]
        last = seen[-1]
        pages += 1
    assert pages == 4
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 7


def test_page_pagination_total_and_per_page_zero(mini: FakeINaturalist) -> None:
    first = search(mini, per_page=3, page=1, order_by="id", order="asc")
    third = search(mini, per_page=3, page=3, order_by="id", order="asc")
    assert first["total_results"] == third["total_results"] == 7
    assert len(first["results"]) == 3 and len(third["results"]) == 1
    assert third["page"] == 3 and third["per_page"] == 3
    assert search(mini)["per_page"] == 30
    assert search(mini, per_page=1000)["per_page"] == 200
    empty = search(mini, per_page=0)
    assert empty["total_results"] == 7 and empty["results"] == []


def test_page_beyond_10000_results_is_403(mini: FakeINaturalist) -> None:
    assert get(f"{mini.api_url}/observations", per_page=200, page=50).status_code == 200
    response = get(f"{mini.api_url}/observations", per_page=200, page=51)
    assert response.status_code == 403
    assert response.json()["error"].startswith("You reached the maximum number of results")


def test_only_id(mini: FakeINaturalist) -> None:
    answer = search(mini, only_id="true", order_by="id", order="asc", per_page=3)
    assert answer["results"] == [{"id": 50000001}, {"id": 50000018}, {"id": 50000035}]
    assert answer["total_results"] == 7


def test_updated_since_after_set_taxon(mini: FakeINaturalist) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    since = before.isoformat()
    assert search(mini, updated_since=since)["total_results"] == 0
    mini.set_taxon(
        50000018,
        {
            "id": 9083,
            "name": "Corvus corax",
            "rank": "species",
            "preferred_common_name": "Common Raven",
        },
    )
    changed = search(mini, updated_since=since)
    assert [o["id"] for o in changed["results"]] == [50000018]
    obs = changed["results"][0]
    assert obs["taxon"]["name"] == "Corvus corax" and obs["taxon"]["rank_level"] == 10
    assert datetime.fromisoformat(obs["updated_at"]) >= before
    # "Z" and naive datetimes are read as UTC
    zulu = before.replace(tzinfo=None).isoformat() + "Z"
    assert search(mini, updated_since=zulu)["total_results"] == 1
    mini.set_taxon(50000018, None)
    assert search(mini, id=50000018)["results"][0]["taxon"] is None


def test_delete_and_add_observation(mini: FakeINaturalist, tmp_path: Path) -> None:
    photo_url = search(mini, id=50000001)["results"][0]["photos"][0]["url"]
    assert get(photo_url).status_code == 200
    mini.delete_observation(50000001)
    assert search(mini, id=50000001)["total_results"] == 0
    assert search(mini)["total_results"] == 6
    assert get(photo_url.replace("square", "small")).status_code == 404
    mini.add_observation(
        {
            "id": 50000999,
            "user": "tester",
            "observed_on": "2021-04-01",
            "photos": [{"id": 90000999, "source": "wide.jpg"}],
        }
    )
    added = search(mini, id=50000999)["results"][0]
    assert added["time_observed_at"] is None and added["taxon"] is None
    assert added["observed_on_details"]["month"] == 4
    assert datetime.fromisoformat(added["created_at"]) > datetime.now(timezone.utc) - timedelta(
        minutes=1
    )
    assert get(f"{mini.api_url}/users/tester").json()["results"][0]["observations_count"] == 7


# -- photos ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, longest",
    [("square", 75), ("small", 240), ("medium", 500), ("large", 1024), ("original", 1600)],
)
def test_photo_sizes_and_no_metadata(example: FakeINaturalist, size: str, longest: int) -> None:
    response = get(f"{example.host_url}/photos/111827921/{size}.jpg")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert int(response.headers["Content-Length"]) == len(response.content)
    picture = decode(response.content)
    assert picture.format == "JPEG" and picture.mode == "RGB"
    assert max(picture.size) == longest
    if size == "square":
        assert picture.size == (75, 75)
    else:
        assert abs(picture.width / picture.height - 4 / 3) < 0.01
    assert not picture.getexif() and "exif" not in picture.info
    assert "icc_profile" not in picture.info and "xmp" not in picture.info
    assert not picture.info.get("progressive")


def test_photo_is_upright_cropped_and_rotated(tmp_path: Path) -> None:
    make_picture(tmp_path / "sideways.jpg", (300, 200), orientation=6)  # upright: 200 x 300
    make_picture(tmp_path / "plain.jpg", (400, 200))
    scenario = {
        "users": [{"id": 5, "login": "u"}],
        "observations": [
            {"id": 10000001, "photos": [{"id": 20000001, "source": "sideways.jpg"}]},
            {
                "id": 10000002,
                "photos": [
                    {"id": 20000002, "source": "plain.jpg", "crop": [0.5, 0.0, 1.0, 0.5]},
                    {"id": 20000003, "source": "plain.jpg", "rotate": 90, "quality": 60},
                ],
            },
        ],
    }
    with FakeINaturalist(scenario, base_dir=tmp_path) as fake:

        def pixels(photo_id: int) -> Image.Image:
            return decode(get(f"{fake.host_url}/photos/{photo_id}/original.jpg").content)

        upright = pixels(20000001)
        assert upright.size == (200, 300)
        # Orientation 6 stored the top of the scene on the left: red is now on top
        assert upright.getpixel((100, 20))[0] > 200 and upright.getpixel((100, 280))[2] > 200
        cropped = pixels(20000002)
        assert cropped.size == (200, 100)
        assert cropped.getpixel((100, 50))[2] > 200 and cropped.getpixel((100, 50))[0] < 60
        turned = pixels(20000003)  # 90 degrees counter-clockwise: the left (red) goes down
        assert turned.size == (200, 400)
        assert turned.getpixel((100, 380))[0] > 200 and turned.getpixel((100, 20))[2] > 200
        dimensions = [
            p["original_dimensions"]
            for p in get(f"{fake.api_url}/observations", order_by="id", order="asc").json()[
                "results"
            ][1]["photos"]
        ]
        assert dimensions == [{"width": 200, "height": 100}, {"width": 200, "height": 400}]


def test_rendered_photos_are_cached(example: FakeINaturalist) -> None:
    url = f"{example.host_url}/photos/111829388/medium.jpg"
    first = get(url)
    start = time.perf_counter()
    second = get(url)
    assert first.content == second.content
    assert time.perf_counter() - start < 0.5
    assert example.photo_bytes(111829388, "medium") == first.content


def test_handler_failure_answers_500(tmp_path: Path) -> None:
    make_picture(tmp_path / "gone.jpg", (40, 30))
    scenario = {"observations": [{"id": 10000005, "photos": [{"id": 1, "source": "gone.jpg"}]}]}
    with FakeINaturalist(scenario, base_dir=tmp_path) as fake:
        (tmp_path / "gone.jpg").write_bytes(b"not a picture any more")
        response = get(f"{fake.host_url}/photos/1/small.jpg")
        assert response.status_code == 500 and response.json()["status"] == 500
        assert get(f"{fake.api_url}/users/1001").status_code == 200  # still serving


# -- faults, latency, rate, log ----------------------------------------------------------------
def test_fail_next_429_then_recovers(mini: FakeINaturalist) -> None:
    mini.fail_next("/v1/observations", 429, times=2, retry_after=3)
    for _ in range(2):
        response = get(f"{mini.api_url}/observations")
        assert response.status_code == 429 and response.headers["Retry-After"] == "3"
        assert response.json() == {"error": "Too Many Requests", "status": 429}
    assert get(f"{mini.api_url}/users/tester").status_code == 200  # other paths untouched
    assert get(f"{mini.api_url}/observations").status_code == 200


def test_fail_next_500_with_body_and_photo_prefix(mini: FakeINaturalist) -> None:
    mini.fail_next("/photos/", 500, body=b"<html>oops</html>")
    response = get(f"{mini.host_url}/photos/90000001/large.jpg")
    assert response.status_code == 500 and response.content == b"<html>oops</html>"
    assert get(f"{mini.host_url}/photos/90000001/large.jpg").status_code == 200


@pytest.mark.parametrize("path", ["/v1/observations", "/photos/90000001/original.jpg"])
def test_fail_next_truncated_body(mini: FakeINaturalist, path: str) -> None:
    mini.fail_next(path, 0)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(mini.host_url + path, timeout=10)
    entry = mini.requests[-1]
    assert entry["status"] == 200 and entry.get("truncated")
    assert requests.get(mini.host_url + path, timeout=10).status_code == 200


def test_latency(tmp_path: Path) -> None:
    with FakeINaturalist(mini_scenario(tmp_path, 1), base_dir=tmp_path, latency=0.2) as fake:
        start = time.perf_counter()
        assert get(f"{fake.api_url}/users/tester").status_code == 200
        assert time.perf_counter() - start >= 0.2


def test_bandwidth_throttles_photos_only(tmp_path: Path) -> None:
    with FakeINaturalist(mini_scenario(tmp_path, 1), base_dir=tmp_path, bandwidth=20_000) as fake:
        start = time.perf_counter()
        size = len(get(f"{fake.host_url}/photos/90000001/original.jpg").content)
        took = time.perf_counter() - start
        assert size > 2000 and took >= size / 20_000 * 0.9
        start = time.perf_counter()
        get(f"{fake.api_url}/observations")
        assert time.perf_counter() - start < 0.2


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with FakeINaturalist(
        mini_scenario(tmp_path, 1), base_dir=tmp_path, max_requests_per_second=3
    ) as fake:
        codes = [get(f"{fake.api_url}/users/tester").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        response = get(f"{fake.api_url}/observations")
        assert response.headers["Retry-After"] == "1"
        assert response.json() == {"error": "Too Many Requests", "status": 429}
        assert get(f"{fake.host_url}/photos/90000001/small.jpg").status_code == 200  # not API
        time.sleep(1.05)
        assert get(f"{fake.api_url}/users/tester").status_code == 200


def test_quiet_even_when_clients_misbehave(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with FakeINaturalist(mini_scenario(tmp_path, 1), base_dir=tmp_path, bandwidth=5000) as fake:
        with socket.create_connection(("127.0.0.1", fake.port)) as client:  # leaves mid-photo
            client.sendall(b"GET /photos/90000001/original.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", fake.port)) as client:  # not HTTP at all
            client.sendall(b"NONSENSE\r\n\r\n")
            answer = client.recv(4096)
        assert b'"status": 400' in answer  # an HTTP/0.9 answer: the JSON body alone
        fake.fail_next("/v1/", 0)
        with pytest.raises(requests.exceptions.RequestException):
            get(f"{fake.api_url}/users/tester")
        time.sleep(0.3)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_request_log(mini: FakeINaturalist) -> None:
    mini.reset_log()
    get(f"{mini.api_url}/observations", user_id="tester", per_page=2)
    get(f"{mini.host_url}/photos/90000001/small.jpg")
    get(f"{mini.host_url}/photos/404/small.jpg")
    assert len(mini.requests) == 3
    api = mini.api_requests()
    assert len(api) == 1
    assert api[0]["method"] == "GET" and api[0]["path"] == "/v1/observations"
    assert api[0]["query"] == {"user_id": "tester", "per_page": "2"}
    assert api[0]["status"] == 200 and api[0]["bytes"] > 100
    photos = mini.photo_requests()
    assert [p["status"] for p in photos] == [200, 404]
    assert photos[0]["bytes"] == len(mini.photo_bytes(90000001, "small"))
    mini.reset_log()
    assert mini.requests == []


def test_stop_and_restart_on_the_same_port(tmp_path: Path) -> None:
    fake = FakeINaturalist(mini_scenario(tmp_path, 1), base_dir=tmp_path)
    url = fake.start()
    session = requests.Session()
    assert session.get(f"{url}/users/tester", timeout=5).status_code == 200
    fake.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{url}/users/tester", timeout=5)
    assert fake.start() == url
    try:
        assert session.get(f"{url}/users/tester", timeout=5).status_code == 200
    finally:
        fake.stop()


def test_command_line_serves_until_sigterm_quietly() -> None:
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "fake_inat.py"), str(SCENARIO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert get(f"{url}/users/{LOGIN}").json()["results"][0]["id"] == 1001
        assert get(url.replace("/v1", "/photos/999/small.jpg")).status_code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
