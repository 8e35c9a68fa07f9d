"""example_pictures/ and its scenario: what the tool must write into which picture.

Every iNaturalist photo whose source is a file in example_pictures is that file's twin;
nothing else may be associated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import inat_photos as ip
from support import EXAMPLES
from support.xmp import expected_caption

USER = "demo_naturalist"
GRAY_FOX = {  # an identification the tests change an observation's to
    "id": 9999,
    "name": "Urocyon cinereoargenteus",
    "rank": "species",
    "preferred_common_name": "Gray Fox",
}


def copy_examples(target: Path) -> Path:
    """A copy of example_pictures' pictures (the repository's copy is never written)."""
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("*.json", "*.md"))
    return target


def local_pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in ip.PICTURE_SUFFIXES)


def _area(crop: list[float] | None) -> float:
    return (crop[2] - crop[0]) * (crop[3] - crop[1]) if crop else 1.0


def _local_uploads(scenario: dict):
    """(observation, photo) for every upload of a file in example_pictures."""
    for obs in scenario["observations"]:
        for photo in obs.get("photos", []):
            if (EXAMPLES / photo["source"]).is_file() and "/" not in photo["source"]:
                yield obs, photo


def twins(scenario: dict) -> dict[str, dict]:
    """Local file name -> what should be written to it.

    A file uploaded several times takes the upload that shows most of it, then the first.
    """
    result: dict[str, dict] = {}
    for obs, photo in _local_uploads(scenario):
        want = {
            "observation": obs["id"],
            "observation_photo": photo.get("observation_photo_id"),
            "photo": photo["id"],
            "caption": expected_caption(obs.get("taxon")),
            "area": _area(photo.get("crop")),
        }
        rival = result.get(photo["source"])
        if rival is None or (-want["area"], want["photo"]) < (-rival["area"], rival["photo"]):
            result[photo["source"]] = want
    return result


def parts(scenario: dict) -> set[int]:
    """Uploads of a local file that lost to another upload of the same file."""
    chosen = {want["photo"] for want in twins(scenario).values()}
    return {photo["id"] for _, photo in _local_uploads(scenario)} - chosen


def first_captioned_twin(scenario: dict) -> tuple[str, dict]:
    """The first local file (by name) whose twin has a caption, and what it should get."""
    return next((n, w) for n, w in sorted(twins(scenario).items()) if w["caption"])
