"""End to end: the CLI as a subprocess, against the fake iNaturalist, on copies of example_pictures.

Expectations are derived from example_pictures/scenario.json: every iNaturalist photo whose
source is a file in example_pictures is that file's twin; nothing else may be associated.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import numpy as np
import pytest
from fake_inat import FakeINaturalist
from support import SCENARIO
from support.cli import run_cli, summary_numbers
from support.examples import GRAY_FOX, USER, first_captioned_twin, local_pictures, parts, twins
from support.files import digest
from support.images import pixels
from support.xmp import (
    read_exif,
    read_iptc,
    read_raw_xmp,
    read_xmp,
    write_iptc,
    write_raw_xmp,
    write_xmp,
)

import inat_photos as ip


def inat_photos_on_local_days(scenario: dict, folder: Path) -> int:
    days = set()
    for path in local_pictures(folder):
        taken = read_exif(path).get("Exif.Photo.DateTimeOriginal")
        days.add(taken[:10].replace(":", "-"))
    count = 0
    for obs in scenario["observations"]:
        day = (obs.get("time_observed_at") or obs.get("observed_on") or "")[:10]
        if day in days:
            count += len(obs.get("photos", []))
    return count


def test_first_run_associates_every_twin_and_nothing_else(
    fake_inat, pictures: Path, cache: Path, scenario: dict, tmp_path: Path
) -> None:
    expected = twins(scenario)
    assert expected, "the scenario must have local twins"
    before = {p.name: (pixels(p), read_exif(p), digest(p)) for p in local_pictures(pictures)}
    log = tmp_path / "log.html"

    result = run_cli(
        ["--user", USER, "--logfile", str(log), str(pictures)], fake_inat.api_url, cache
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.lines[0].strip() == "Loading photos"
    assert re.match(rf"Loaded {len(before)} local photos in \d+\.\d secs\.", result.lines[1])
    for path in local_pictures(pictures):
        xmp = read_xmp(path)
        old_pixels, old_exif, old_digest = before[path.name]
        assert np.array_equal(pixels(path), old_pixels), f"pixels changed in {path.name}"
        assert read_exif(path) == old_exif, f"EXIF changed in {path.name}"
        if path.name in expected:
            want = expected[path.name]
            assert xmp[ip.TAG_OBSERVATION] == str(want["observation"])
            assert xmp[ip.TAG_OBSERVATION_PHOTO] == str(want["observation_photo"])
            assert xmp[ip.TAG_PHOTO] == str(want["photo"])
            if want["caption"]:
                assert xmp[ip.TAG_SUBJECT] == [want["caption"]]
                assert (
                    f"{path}: Updating subject from 'None' to '{want['caption']}'." in result.lines
                )
            found = [ln for ln in result.lines if ln.startswith(f"'{path}' ")]
            assert len(found) == 1 and f"found for photo id {want['photo']};" in found[0]
            # What was compensated, and what decided a pair below the threshold, if anything.
            said = (
                r"similarity \d+\.\d%"
                r"( \(((cropped|rotated) [^;)]*)?(; )?(decided by [^)]*)?\))?\.$"
            )
            assert re.search(said, found[0]), found[0]
        else:
            assert ip.TAG_OBSERVATION not in xmp, f"{path.name} must not be associated"
            assert digest(path) == old_digest

    numbers = summary_numbers(result.stdout)
    inat_total = inat_photos_on_local_days(scenario, pictures)
    assert numbers["added"] == len(expected) and numbers["modified"] == 0
    assert numbers["ids_added"] == sum(1 for w in expected.values() if w["caption"])
    assert numbers["locals_left"] == len(before) - len(expected)
    part_ids = parts(scenario)
    assert part_ids, "the scenario must have a whole-plus-crop upload"
    assert numbers["inat_left"] == inat_total - len(expected) - len(part_ids)
    not_associated = [ln for ln in result.lines if ln.startswith("Not associated")]
    assert len(not_associated) == inat_total - len(expected) - len(part_ids)
    for photo_id in part_ids:
        (line,) = [ln for ln in result.lines if ln.startswith(f"Photo id {photo_id}, ")]
        assert re.search(r" shows part of '.+' \(\d+% of its area\), which is associated", line)
    for line in not_associated:
        assert re.match(
            r"Not associated with a local picture: photo id \d+, \d+(st|nd|rd|th) photo of "
            r"observation https://www\.inaturalist\.org/observations/\d+, '.+'\.$",
            line,
        ), line
    day_lines = [ln for ln in result.lines if re.match(r"\d{4}-\d\d-\d\d: ", ln)]
    assert day_lines and all(
        re.match(r"\d{4}-\d\d-\d\d: \d+ iNat pictures and \d+ local pictures\.$", ln)
        for ln in day_lines
    )

    page = log.read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 * len(expected)
    for want in expected.values():
        assert f"https://www.inaturalist.org/photos/{want['photo']}" in page
        assert f"observations/{want['observation']}" in page
    assert "<i>" in page and "Summary:" in page


def test_second_run_skips_known_and_refreshes_changed_identification(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    expected = twins(scenario)
    first = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert first.returncode == 0, first.stderr

    _, changed = first_captioned_twin(scenario)
    fake_inat.set_taxon(changed["observation"], GRAY_FOX)
    affected = {n for n, w in expected.items() if w["observation"] == changed["observation"]}
    digests = {p.name: digest(p) for p in local_pictures(pictures)}

    second = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)

    assert second.returncode == 0, second.stderr
    assert not [ln for ln in second.lines if "found for photo id" in ln]
    assert any("left after excluding known associations." in ln for ln in second.lines)
    for path in local_pictures(pictures):
        if path.name in affected:
            assert read_xmp(path)[ip.TAG_SUBJECT] == ["Gray Fox (Urocyon cinereoargenteus)"]
            assert (
                f"{path}: Updating subject from '{changed['caption']}' to "
                "'Gray Fox (Urocyon cinereoargenteus)'." in second.lines
            )
        else:
            assert digest(path) == digests[path.name], f"{path.name} was rewritten"
    numbers = summary_numbers(second.stdout)
    assert (numbers["added"], numbers["modified"]) == (0, 0)
    assert (numbers["ids_added"], numbers["ids_modified"]) == (0, len(affected))

    third = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert "identifications" not in next(ln for ln in third.lines if ln.startswith("Summary:"))
    assert [p for p in local_pictures(pictures) if digest(p) != digests[p.name]] == sorted(
        pictures / n for n in affected
    )


def test_user_keywords_are_kept_and_written_as_a_bag(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    name, want = first_captioned_twin(scenario)
    path = pictures / name
    write_xmp(path, {ip.TAG_SUBJECT: ["holiday", "Point Reyes (California)"]})

    result = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)

    assert result.returncode == 0, result.stderr
    assert read_xmp(path)[ip.TAG_SUBJECT] == [
        "holiday",
        "Point Reyes (California)",
        want["caption"],
    ]
    raw = read_raw_xmp(path)
    assert re.search(r"<dc:subject>\s*<rdf:Bag>", raw)
    # The user's keywords are no caption of the tool's; the subject line shows them kept.
    assert f"'{path}' without caption found" in result.stdout
    assert (
        f"{path}: Updating subject from 'holiday, Point Reyes (California)' to 'holiday,"
        f" Point Reyes (California), {want['caption']}'." in result.lines
    )


def test_tags_from_another_program_count_as_known(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    """digiKam's exporter writes the same namespace, possibly under another prefix."""
    name, want = sorted(twins(scenario).items())[0]
    path = pictures / name
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:inat="https://inaturalist.org/ns/1.0/" '
        f'inat:observation="{want["observation"]}" inat:photo="{want["photo"]}"/>'
        "</rdf:RDF></x:xmpmeta>"
    )
    write_raw_xmp(path, packet)

    result = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)

    assert result.returncode == 0, result.stderr
    assert not [ln for ln in result.lines if ln.startswith(f"'{path}' ")]  # not compared again
    assert summary_numbers(result.stdout)["added"] == len(twins(scenario)) - 1


def test_dry_run_changes_nothing(fake_inat, pictures: Path, cache: Path) -> None:
    digests = {p: digest(p) for p in local_pictures(pictures)}
    result = run_cli(["-u", USER, "--dry-run", str(pictures)], fake_inat.api_url, cache)
    assert result.returncode == 0, result.stderr
    assert {p: digest(p) for p in local_pictures(pictures)} == digests
    assert "(dry run)" in result.stdout and "Dry run: no file was changed." in result.stdout


def test_unknown_user_is_a_usage_error(fake_inat, pictures: Path, cache: Path) -> None:
    digests = {p: digest(p) for p in local_pictures(pictures)}
    result = run_cli(["-u", "nobody_here", str(pictures)], fake_inat.api_url, cache)
    assert result.returncode == 2
    assert "unknown iNaturalist user 'nobody_here'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert {p: digest(p) for p in local_pictures(pictures)} == digests


def test_unreachable_api_exits_2_before_touching_anything(pictures: Path, cache: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    digests = {p: digest(p) for p in local_pictures(pictures)}
    result = run_cli(["-u", USER, str(pictures)], f"http://127.0.0.1:{port}/v1", cache)
    assert result.returncode == 2
    assert "iNaturalist is unreachable" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert {p: digest(p) for p in local_pictures(pictures)} == digests


def test_bad_files_are_reported_and_the_run_goes_on(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    (pictures / "notes.txt").write_text("not a picture")
    (pictures / "broken.jpg").write_text("this is text, not a JPEG")
    (pictures / "empty.jpg").write_bytes(b"")
    hidden = pictures / ".hidden"
    hidden.mkdir()
    (hidden / "secret.jpg").write_text("never read")
    (pictures / "link.jpg").symlink_to(local_pictures(pictures)[0])
    first = local_pictures(pictures)[0]

    result = run_cli(["-u", USER, str(pictures), str(first)], fake_inat.api_url, cache)

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{pictures / 'broken.jpg'}: cannot read metadata" in result.stderr
    assert f"{pictures / 'empty.jpg'}: cannot read metadata" in result.stderr
    assert "secret.jpg" not in result.stdout + result.stderr
    assert f"Not following symbolic link {pictures / 'link.jpg'}." in result.stdout
    assert "notes.txt" in result.stdout
    # The good pictures were still processed, each once although one was named twice.
    assert summary_numbers(result.stdout)["added"] == len(twins(scenario))
    assert re.search(r"Loaded (\d+) local photos", result.stdout).group(1) == str(
        len(local_pictures(pictures)) - 3  # broken, empty, link
    )


def test_gpu_option_gives_the_same_associations(fake_inat, pictures: Path, cache: Path) -> None:
    result = run_cli(["-u", USER, "--gpu", "--dry-run", str(pictures)], fake_inat.api_url, cache)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("no OpenCL device") <= 1
    found = sorted(ln.split(";")[0] for ln in result.lines if "found for photo id" in ln)
    cpu = run_cli(["-u", USER, "--dry-run", str(pictures)], fake_inat.api_url, cache)
    assert found == sorted(ln.split(";")[0] for ln in cpu.lines if "found for photo id" in ln)


def test_help_and_version() -> None:
    result = run_cli(["--help"], "http://127.0.0.1:9/v1", Path("/nonexistent"))
    assert result.returncode == 0
    for option in (
        "--user",
        "--logfile",
        "--cluster_threshold",
        "--ssim_threshold",
        "--recompute",
        "--bypass_cache",
        "--inat_size",
        "--gpu",
        "--dry-run",
    ):
        assert option in result.stdout
    version = run_cli(["--version"], "http://127.0.0.1:9/v1", Path("/nonexistent"))
    assert version.returncode == 0 and ip.__version__ in version.stdout


@pytest.mark.parametrize("bad", [["--ssim_threshold", "1.5"], ["--cluster_threshold", "10"], []])
def test_bad_options_exit_2(bad: list[str], tmp_path: Path) -> None:
    args = ["-u", USER, *bad] + ([str(tmp_path)] if bad else [])
    result = run_cli(args, "http://127.0.0.1:9/v1", tmp_path / "cache")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_stale_photo_urls_are_refreshed(pictures: Path, cache: Path, scenario: dict) -> None:
    """The store keeps photo URLs; when their host moves, the tool asks for current ones."""
    with FakeINaturalist(SCENARIO) as first:
        dry = run_cli(
            ["-u", USER, "--dry-run", "--inat_size", "small", str(pictures)], first.api_url, cache
        )
    assert dry.returncode == 0, dry.stderr
    with FakeINaturalist(SCENARIO) as moved:  # another port: every stored URL is dead
        assert moved.api_url != first.api_url
        result = run_cli(["-u", USER, str(pictures)], moved.api_url, cache)
        by_id = [r for r in moved.api_requests() if "id" in r["query"]]
    assert result.returncode == 0, result.stderr
    assert summary_numbers(result.stdout)["added"] == len(twins(scenario))
    assert by_id, "the current URLs were not asked for"


def test_deleted_observation_is_reported_and_its_tags_kept(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    name, want = sorted(twins(scenario).items())[0]
    assert run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache).returncode == 0
    before = digest(pictures / name)
    fake_inat.delete_observation(want["observation"])

    result = run_cli(["-u", USER, "--bypass_cache", str(pictures)], fake_inat.api_url, cache)

    assert result.returncode == 0, result.stderr
    assert (
        f"{pictures / name}: observation {want['observation']} is no longer on iNaturalist;"
        " its tags are left as they are." in result.lines
    )
    assert digest(pictures / name) == before


def test_other_metadata_survives_the_write(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    name = sorted(twins(scenario))[0]
    path = pictures / name
    write_iptc(
        path, {"Iptc.Application2.Keywords": ["field trip"], "Iptc.Application2.City": "Palo Alto"}
    )
    write_xmp(path, {"Xmp.dc.title": {'lang="x-default"': "Poppy at dawn"}, "Xmp.xmp.Rating": "4"})
    iptc_before, xmp_before = read_iptc(path), read_xmp(path)
    assert run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache).returncode == 0
    assert read_iptc(path) == iptc_before
    xmp_after = read_xmp(path)
    ours = {
        ip.TAG_OBSERVATION,
        ip.TAG_OBSERVATION_PHOTO,
        ip.TAG_PHOTO,
        ip.TAG_SUBJECT,
        ip.TAG_CAPTION,
    }
    assert {k: v for k, v in xmp_after.items() if k not in ours} == xmp_before


def test_recompute_corrects_a_wrong_association(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    expected = twins(scenario)
    name, want = sorted(expected.items())[0]
    write_xmp(
        pictures / name, {ip.TAG_OBSERVATION: "1", ip.TAG_OBSERVATION_PHOTO: "2", ip.TAG_PHOTO: "3"}
    )

    plain = run_cli(["-u", USER, "--dry-run", str(pictures)], fake_inat.api_url, cache)
    assert "observation 1 is no longer on iNaturalist" in plain.stdout
    result = run_cli(["-u", USER, "--recompute", str(pictures)], fake_inat.api_url, cache)

    assert result.returncode == 0, result.stderr
    xmp = read_xmp(pictures / name)
    assert (xmp[ip.TAG_OBSERVATION], xmp[ip.TAG_PHOTO]) == (
        str(want["observation"]),
        str(want["photo"]),
    )
    numbers = summary_numbers(result.stdout)
    assert (numbers["added"], numbers["modified"]) == (len(expected) - 1, 1)
