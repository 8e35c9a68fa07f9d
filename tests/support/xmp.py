"""The one reader (and writer) of the metadata the tool writes, and the caption it promises.

Reading goes through pyexiv2.ImageData on the file's bytes, so that any file name works (exiv2
cannot open names that are not UTF-8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pyexiv2

import inat_photos as ip

INAT_TAGS = (ip.TAG_OBSERVATION, ip.TAG_OBSERVATION_PHOTO, ip.TAG_PHOTO)


def _read(path: Path, reader: str) -> Any:
    """One of pyexiv2's readers ('read_xmp', 'read_exif', ...) on the file's bytes."""
    ip.configure_process()
    image = pyexiv2.ImageData(path.read_bytes())
    try:
        return getattr(image, reader)()
    finally:
        image.close()


def read_xmp(path: Path) -> dict:
    return _read(path, "read_xmp")


def read_exif(path: Path) -> dict:
    return _read(path, "read_exif")


def read_iptc(path: Path) -> dict:
    return _read(path, "read_iptc")


def read_raw_xmp(path: Path) -> str:
    """The XMP packet as it is stored, for checks of its form (a Bag, a prefix)."""
    return _read(path, "read_raw_xmp")


def write_raw_xmp(path: Path, packet: str) -> None:
    """Replace the whole XMP packet in place, as another program would."""
    with pyexiv2.Image(str(path)) as image:
        image.modify_raw_xmp(packet)


def write_iptc(path: Path, values: dict[str, Any]) -> None:
    with pyexiv2.Image(str(path)) as image:
        image.modify_iptc(values)


def write_xmp(path: Path, values: dict[str, Any]) -> None:
    """Set (None: remove) XMP properties in place, as another program would."""
    ip.configure_process()
    with pyexiv2.Image(str(path)) as image:
        image.modify_xmp(values)


def write_exif(path: Path, values: dict[str, str]) -> None:
    with pyexiv2.Image(str(path)) as image:
        image.modify_exif(values)


def inat_tags(path: Path) -> dict[str, str]:
    """The iNaturalist id properties present in the file, as written."""
    xmp = read_xmp(path)
    return {tag: xmp[tag] for tag in INAT_TAGS if tag in xmp}


def tag_id(value: Any) -> int | None:
    """An id property's value as a number: ASCII digits that fit SQLite, else None."""
    text = str(value).strip() if value is not None else ""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


class Tags(NamedTuple):
    observation: int | None
    photo: int | None
    subject: list[str]  # the dc:subject keywords, ours and the user's


def read_tags(path: Path) -> Tags:
    xmp = read_xmp(path)
    subject = xmp.get(ip.TAG_SUBJECT) or []
    return Tags(
        tag_id(xmp.get(ip.TAG_OBSERVATION)),
        tag_id(xmp.get(ip.TAG_PHOTO)),
        [subject] if isinstance(subject, str) else list(subject),
    )


def read_photo_id(path: Path) -> int | None:
    """The iNaturalist photo id written into a picture, or None."""
    return read_tags(path).photo


def expected_caption(taxon: dict | None) -> str | None:
    """The caption the README promises, computed independently of the tool."""
    if not taxon:
        return None
    words = taxon["name"].split()
    marker = {"subspecies": "ssp.", "variety": "var."}.get(taxon.get("rank", ""))
    if marker and len(words) == 3:
        words.insert(2, marker)
    if taxon.get("rank") == "genus":
        words.append("sp.")
    scientific = " ".join(words)
    common = taxon.get("preferred_common_name")
    return f"{common} ({scientific})" if common else scientific
