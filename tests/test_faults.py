"""Issue 5, part 2: iNaturalist misbehaving, against the fake server.

Passing faults (429, a few 5xx) are retried and the run succeeds; lasting ones (5xx for good,
broken JSON, cut-off answers, nobody listening, an unknown user) stop the run with exit code 2,
one line of explanation, no traceback and no photo changed. A photo that cannot be downloaded
is skipped for this run only: nothing broken is cached, and the next run picks it up.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import urllib3.util.retry
from fake_inat import FakeINaturalist
from PIL import Image
from support.cli import CliResult, run_main, summary_numbers
from support.files import digest
from support.world import World, assert_tagged
from support.xmp import read_xmp

import inat_photos as ip


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries still happen, but without urllib3's exponential waits (0+2+4+8+16 s)."""
    monkeypatch.setattr(urllib3.util.retry.Retry, "get_backoff_time", lambda self: 0.0)


def digests(world: World) -> dict[Path, str]:
    return {twin.path: digest(twin.path) for twin in world.twins}


def requests_to(fake: FakeINaturalist, prefix: str) -> list[dict]:
    return [entry for entry in list(fake.requests) if entry["path"].startswith(prefix)]


def restart(fake: FakeINaturalist, world: World) -> FakeINaturalist:
    """The same iNaturalist on the same port, without the faults still queued."""
    port = fake.port
    fake.stop()
    again = world.fake(port=port)
    again.start()
    return again


def error_lines(result: CliResult) -> list[str]:
    return [ln for ln in (result.stdout + result.stderr).splitlines() if "error" in ln.lower()]


def assert_stopped_cleanly(result, before: dict[Path, str], world: World) -> None:
    """Exit code 2, one line saying why, no traceback, no photo touched."""
    everything = result.stdout + result.stderr
    assert result.returncode == ip.EXIT_USAGE, everything
    assert "Traceback" not in everything
    errors = error_lines(result)
    assert len(errors) == 1, everything
    assert "iNaturalist" in errors[0]
    assert digests(world) == before
    assert "Summary:" not in result.stdout  # it stopped before matching anything


# -- passing faults are retried -----------------------------------------------------------------


def test_429_with_retry_after_is_waited_out(world, fake, monkeypatch, capsys) -> None:
    fake.fail_next("/v1/observations", 429, retry_after=1)

    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert result.returncode == 0, result.stdout + result.stderr
    for twin in world.twins:
        assert_tagged(twin)
    seen = requests_to(fake, "/v1/observations")
    assert [entry["status"] for entry in seen[:2]] == [429, 200]
    assert seen[1]["time"] - seen[0]["time"] >= 0.9, "Retry-After: 1 was not honoured"


# The login is asked for only when no observation comes back (observations prove it).
NO_OBSERVATIONS = b'{"total_results": 0, "page": 1, "per_page": 200, "results": []}'


@pytest.mark.parametrize(("prefix", "status"), [("/v1/observations", 500), ("/v1/users", 503)])
def test_a_few_server_errors_are_retried(world, fake, monkeypatch, capsys, prefix, status) -> None:
    if prefix == "/v1/users":
        fake.fail_next("/v1/observations", 200, times=99, body=NO_OBSERVATIONS)
    fake.fail_next(prefix, status, times=2)

    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert [entry["status"] for entry in requests_to(fake, prefix)[:3]] == [status, status, 200]
    if prefix == "/v1/observations":
        for twin in world.twins:
            assert_tagged(twin)


# -- lasting faults stop the run ----------------------------------------------------------------

LASTING = {
    "500 for good": ("/v1/observations", 500, None),
    "503 for good on the user": ("/v1/users", 503, None),
    "malformed JSON": ("/v1/observations", 200, b"{not json"),
    "JSON list": ("/v1/observations", 200, b"[1, 2, 3]"),
    "results not a list": ("/v1/observations", 200, b'{"total_results": 3, "results": 7}'),
    "total_results not a number": (
        "/v1/observations",
        200,
        b'{"total_results": "many", "page": 1, "per_page": 200, "results": [{"id": "x"}]}',
    ),
    "user answer of the wrong shape": ("/v1/users", 200, b'{"results": 5}'),
    "observations cut off": ("/v1/observations", 0, None),
    "user cut off": ("/v1/users", 0, None),
}


@pytest.mark.parametrize("fault", list(LASTING), ids=list(LASTING))
def test_lasting_fault_exits_2_with_one_line(
    world, fake, monkeypatch, capsys, no_backoff, fault
) -> None:
    prefix, status, body = LASTING[fault]
    if prefix == "/v1/users":
        fake.fail_next("/v1/observations", 200, times=99, body=NO_OBSERVATIONS)
    fake.fail_next(prefix, status, times=99, body=body)
    before = digests(world)

    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert_stopped_cleanly(result, before, world)
    assert requests_to(fake, prefix), "the fault was never reached"
    if status >= 500:
        assert len(requests_to(fake, prefix)) > 1, "a server error was not retried"


def test_cut_off_answer_from_the_command_line(world, fake) -> None:
    """The same, as cron would see it: a real process, its output and exit status.
    (A cut-off answer is not retried, so this takes no backoff time.)"""
    fake.fail_next("/v1/observations", 0, times=99)
    before = digests(world)

    result = world.run_cli(fake.api_url)

    assert_stopped_cleanly(result, before, world)


def test_connection_refused_exits_2(world, monkeypatch, capsys, no_backoff) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = digests(world)

    result = world.run_main(monkeypatch, capsys, f"http://127.0.0.1:{port}/v1")

    assert_stopped_cleanly(result, before, world)
    assert "unreachable" in error_lines(result)[0]


def test_unknown_user_exits_2(world, fake, monkeypatch, capsys) -> None:
    before = digests(world)

    result = run_main(
        monkeypatch, capsys, ["-u", "nobody_at_all", str(world.pictures)], fake.api_url, world.cache
    )

    assert_stopped_cleanly(result, before, world)
    assert "nobody_at_all" in error_lines(result)[0]
    assert requests_to(fake, "/v1/users")  # asked for once no observation came back


def test_failed_refresh_is_caught_up_by_the_next_run(world, fake, monkeypatch, capsys) -> None:
    """A run that dies while asking for changes must not mark them as seen."""
    first = world.run_main(monkeypatch, capsys, fake.api_url)
    assert first.returncode == 0, first.stderr
    changed = world.twins[0]
    new_taxon = {"name": "Vulpes vulpes", "rank": "species", "preferred_common_name": "Red Fox"}
    fake.set_taxon(changed.observation, new_taxon)
    fake.fail_next("/v1/observations", 0, times=99)  # the answer with the change is cut off
    before = digests(world)

    failed = world.run_main(monkeypatch, capsys, fake.api_url)
    assert_stopped_cleanly(failed, before, world)

    fake = restart(fake, world)  # the fault is gone; the identification is changed again
    try:
        fake.set_taxon(changed.observation, new_taxon)
        fixed = world.run_main(monkeypatch, capsys, fake.api_url)
    finally:
        fake.stop()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert read_xmp(changed.path)[ip.TAG_SUBJECT] == ["Red Fox (Vulpes vulpes)"]


# -- photos that cannot be downloaded -------------------------------------------------------------

PHOTO_FAULTS = {"404": 404, "cut off": 0, "500 for good": 500}


@pytest.mark.parametrize("fault", list(PHOTO_FAULTS), ids=list(PHOTO_FAULTS))
def test_photo_that_cannot_be_downloaded_is_skipped_and_fetched_next_time(
    world, fake, monkeypatch, capsys, no_backoff, fault
) -> None:
    victim = world.twins[1]
    fake.fail_next(f"/photos/{victim.photo}/", PHOTO_FAULTS[fault], times=99)
    before = digest(victim.path)

    first = world.run_main(monkeypatch, capsys, fake.api_url)

    everything = first.stdout + first.stderr
    assert first.returncode in (ip.EXIT_OK, ip.EXIT_FILE_ERRORS), everything
    assert "Traceback" not in everything
    assert str(victim.photo) in first.stderr, "the failed download was not reported"
    assert requests_to(fake, f"/photos/{victim.photo}/")
    assert digest(victim.path) == before
    for twin in world.twins:
        if twin is not victim:
            assert_tagged(twin)
    assert summary_numbers(first.stdout)["added"] == len(world.twins) - 1
    cached = [p for p in (world.cache / "photos").rglob("*") if p.is_file()]
    assert not [p for p in cached if p.stem == str(victim.photo)], "a broken photo was cached"
    for path in cached:  # whatever is cached is a whole picture
        with Image.open(path) as image:
            image.load()

    fake = restart(fake, world)
    try:
        second = world.run_main(monkeypatch, capsys, fake.api_url)
    finally:
        fake.stop()
    assert second.returncode == 0, second.stdout + second.stderr
    assert_tagged(victim)
    assert summary_numbers(second.stdout)["added"] == 1
