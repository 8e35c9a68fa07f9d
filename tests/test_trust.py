"""Issue 8 through the CLI: the user's keywords survive reruns, a whole upload beats a crop of
the same picture, and the crop is reported as part of that file on every run."""

from __future__ import annotations

from pathlib import Path

from support.cli import run_cli, summary_numbers
from support.examples import GRAY_FOX, USER, first_captioned_twin, parts, twins
from support.files import digest
from support.xmp import read_xmp, write_xmp

import inat_photos as ip


def set_keywords(path: Path, keywords: list[str]) -> None:
    write_xmp(path, {ip.TAG_SUBJECT: keywords})


def test_user_keywords_before_and_after_ours_survive_every_rerun(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    name, want = first_captioned_twin(scenario)
    path = pictures / name
    ours = want["caption"]
    set_keywords(path, ["Beetle on elm"])

    first = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert first.returncode == 0, first.stderr
    assert read_xmp(path)[ip.TAG_SUBJECT] == ["Beetle on elm", ours]

    # The user adds keywords after ours, one of them shaped like one of our captions.
    mine = ["Beetle on elm", ours, "Elm (Ulmus americana)", "Saperda on twig"]
    set_keywords(path, mine)
    before = digest(path)

    unchanged = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert unchanged.returncode == 0, unchanged.stderr
    assert read_xmp(path)[ip.TAG_SUBJECT] == mine
    assert digest(path) == before, "an unchanged rerun rewrote the photo"
    assert not [ln for ln in unchanged.lines if "Updating subject" in ln]
    numbers = summary_numbers(unchanged.stdout)
    assert (numbers["ids_added"], numbers["ids_modified"]) == (0, 0)

    fake_inat.set_taxon(want["observation"], GRAY_FOX)
    changed = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert changed.returncode == 0, changed.stderr
    fox = "Gray Fox (Urocyon cinereoargenteus)"
    assert read_xmp(path)[ip.TAG_SUBJECT] == [
        "Beetle on elm",
        fox,
        "Elm (Ulmus americana)",
        "Saperda on twig",
    ]
    assert f"{path}: Updating subject from '{ours}' to '{fox}'." in changed.lines
    assert summary_numbers(changed.stdout)["ids_modified"] == 1

    after = digest(path)
    again = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert again.returncode == 0, again.stderr
    assert digest(path) == after
    assert summary_numbers(again.stdout)["ids_modified"] == 0


def test_a_legacy_keyword_that_was_never_our_caption_is_kept(
    fake_inat, pictures: Path, cache: Path, scenario: dict
) -> None:
    """A file tagged by an older version (ids, no caption marker) with a caption-shaped
    keyword of the user's: the rerun adds the caption and removes nothing."""
    name, want = first_captioned_twin(scenario)
    path = pictures / name
    write_xmp(
        path,
        {
            ip.TAG_OBSERVATION: str(want["observation"]),
            ip.TAG_OBSERVATION_PHOTO: str(want["observation_photo"]),
            ip.TAG_PHOTO: str(want["photo"]),
            ip.TAG_SUBJECT: ["Beetle on elm"],
        },
    )
    result = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert result.returncode == 0, result.stderr
    assert read_xmp(path)[ip.TAG_SUBJECT] == ["Beetle on elm", want["caption"]]


def test_whole_upload_wins_over_a_crop_and_the_crop_is_reported_as_a_part(
    fake_inat, pictures: Path, cache: Path, scenario: dict, tmp_path: Path
) -> None:
    (crop_id,) = parts(scenario)
    source = next(
        photo["source"]
        for obs in scenario["observations"]
        for photo in obs["photos"]
        if photo["id"] == crop_id
    )
    whole = twins(scenario)[source]
    assert whole["photo"] > crop_id, "the crop must be the earlier upload"
    log = tmp_path / "log.html"

    first = run_cli(["-u", USER, "--logfile", str(log), str(pictures)], fake_inat.api_url, cache)
    assert first.returncode == 0, first.stderr
    assert read_xmp(pictures / source)[ip.TAG_PHOTO] == str(whole["photo"])
    (line,) = [ln for ln in first.lines if ln.startswith(f"Photo id {crop_id}, ")]
    assert f"shows part of '{pictures / source}' (" in line
    assert not [ln for ln in first.lines if f"photo id {crop_id}," in ln]
    assert f"photos/{crop_id}" in log.read_text()

    second = run_cli(["-u", USER, str(pictures)], fake_inat.api_url, cache)
    assert second.returncode == 0, second.stderr
    assert [ln for ln in second.lines if ln.startswith(f"Photo id {crop_id}, ")] == [line]
    assert not [ln for ln in second.lines if f"photo id {crop_id}," in ln]
