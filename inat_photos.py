#!/usr/bin/env python3
"""inat_photos: find which local photos were uploaded to iNaturalist and tag them.

Point it at a photo archive and an iNaturalist login. It pairs local photos with the user's
uploads by time and structural similarity, then writes the iNaturalist ids and the current
identification into each matched photo's XMP. Only metadata ever changes; pixels never do.

The data flow, one section of this file per step:

    command line -> Options (frozen, built once)
    folders      -> picture files -> LocalPhoto (metadata, via the LocalIndex)
    iNaturalist  -> ObservationStore (synced) -> Observation -> Candidate
    per day:  match_day(photos, candidates, compare, options) -> DayOutcome
                  compare = PairScorer: PictureSource (fetch, decode) + compare_pictures
              plan_update(photo, ...) -> Update -> write_update (atomic, or dry run)
              DayOutcome + updates -> console lines, log rows, Tally
    Tally    -> summary line, HTML log, exit code

Glossary:
  upload       a photo on iNaturalist (InatPhoto), one of an observation's photos
  candidate    an upload taken on the same day as local photos, with its observation
  cluster      local photos and candidates close together in time, compared with each other
  association  a local photo paired with the upload it was the source of; written as ids
  caption      the identification as a keyword, 'Coyote (Canis latrans)', in dc:subject
  part         an upload that shows part of a local photo already associated with a bigger one
  tie          an upload that two local photos fit almost equally; refused, never guessed
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import html
import io
import json
import math
import os
import re
import shlex
import sqlite3
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

__version__ = "1.1.0"

__all__ = [
    "EXIT_FILE_ERRORS",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOG_SECTIONS",
    "PER_PAGE",
    "PICTURE_SUFFIXES",
    "TAG_CAPTION",
    "TAG_DISSOCIATED",
    "TAG_OBSERVATION",
    "TAG_OBSERVATION_PHOTO",
    "TAG_PHOTO",
    "TAG_SUBJECT",
    "UNLISTED_COMPARED",
    "UNLISTED_NO_CANDIDATE",
    "Alignment",
    "Candidate",
    "Comparison",
    "DayOutcome",
    "InatPhoto",
    "InatTags",
    "LocalPhoto",
    "LogBook",
    "LogRow",
    "Observation",
    "OpenCLSimilarity",
    "OpenCLUnavailable",
    "Options",
    "PictureSource",
    "TaxonName",
    "Thumbnail",
    "Update",
    "assign_uploads",
    "build_parser",
    "cluster_by_time",
    "coarse_alignment",
    "compare_pictures",
    "confirm_command",
    "decode_upright",
    "describe_offset",
    "distance_m",
    "find_clock_offset",
    "grayscale",
    "main",
    "match_day",
    "ordinal",
    "owned_caption",
    "parse_cluster_threshold",
    "parse_exif_datetime",
    "parse_gps",
    "parse_observation",
    "parse_positive_int",
    "parse_ssim_threshold",
    "parse_time_offset",
    "plan_dissociation",
    "plan_update",
    "refine_alignment",
    "register_namespace",
    "render_log",
    "run",
    "seconds_apart",
    "show_path",
    "ssim_score",
    "taxon_name",
    "thumbnail_data_url",
    "updated_keywords",
]

# ---------------------------------------------------------------------------
# 1. Settings
#    The defaults users may edit, the fixed names of the metadata we write, and
#    Options: everything a run needs to know, read once from the command line and
#    the environment.
# ---------------------------------------------------------------------------

USE_GPU = False  # change to True if you have a GPU (same as --gpu)

CLUSTER_THRESHOLD = 180  # seconds; default of --cluster_threshold
SSIM_THRESHOLD = 0.95  # 95 %; default of --ssim_threshold
SSIM_INATSIZE = "large"  # iNaturalist photo size compared; default of --inat_size

DEFAULT_API_URL = "https://api.inaturalist.org/v1"  # INAT_API_URL overrides it
INAT_WEB_URL = "https://www.inaturalist.org"
USER_AGENT = f"inat_photos/{__version__}"


INAT_NAMESPACE = "https://inaturalist.org/ns/1.0/"


INAT_PREFIX = "iNaturalist"


TAG_OBSERVATION = "Xmp.iNaturalist.observation"


TAG_OBSERVATION_PHOTO = "Xmp.iNaturalist.observationPhoto"


TAG_PHOTO = "Xmp.iNaturalist.photo"


TAG_CAPTION = "Xmp.iNaturalist.caption"  # the dc:subject keyword this tool wrote


# Set by --dissociate: the user took this file's association back; runs leave it alone until
# --recompute. In the file, not only the cache, so that the choice survives a cache wipe and
# a move of the file.
TAG_DISSOCIATED = "Xmp.iNaturalist.dissociated"


TAG_SUBJECT = "Xmp.dc.subject"


INAT_SIZES = ("small", "medium", "large", "original")


INAT_PIXELS = {"small": 240, "medium": 500, "large": 1024, "original": 2048}  # longest side


PICTURE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff"}


PER_PAGE = 200  # the API's maximum page size


ID_BATCH = 100  # observations asked for by id per request: the URL stays near 1 KB


# Renames and common-name edits do not change an observation's updated_at: observations that
# local photos point at are asked for again, by id, when last asked this many days ago.
RECHECK_DAYS = 7


DOWNLOAD_WORKERS = 4  # parallel photo downloads; iNaturalist's media host allows a few


COMPARE_WORKERS = os.cpu_count() or 2  # decoding and scoring release the GIL: use every core


TEMPORARY_SUFFIX = ".inat-tmp"  # the copy being written beside a photo before it replaces it


HTML_THUMBNAIL = 240  # longest side of thumbnails embedded in the HTML log, pixels


HTML_THUMBNAIL_QUALITY = 70  # JPEG quality of those thumbnails: small pages, still legible


MINUTE_SPAN = 59  # seconds an observation time without seconds stands for, after its start
HTTP_TIMEOUT = 30  # seconds to wait for an API answer
DOWNLOAD_TIMEOUT = 60  # seconds to wait for a photo

# Pillow refuses pictures above this many pixels (a decompression-bomb guard); 200 MP
# covers every camera sold today.
MAX_PICTURE_PIXELS = 200_000_000


EXIT_OK = 0


EXIT_FILE_ERRORS = 1  # some files could not be read or written; each was reported


EXIT_USAGE = 2  # bad command line, unknown user, or iNaturalist unreachable


EXIT_LOCKED = 3  # another run holds the lock on the cache directory


def cache_directory(environ: Mapping[str, str]) -> Path:
    """Where the observation store, downloaded photos and the run lock live."""
    override = environ.get("INAT_PHOTOS_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("inat_photos", appauthor=False))


@dataclass(frozen=True)
class Options:
    """What one run was asked to do; built once, read everywhere, never changed."""

    user: str
    paths: tuple[str, ...]
    logfile: Path | None = None
    cluster_threshold: int = CLUSTER_THRESHOLD
    ssim_threshold: float = SSIM_THRESHOLD
    recompute: bool = False
    bypass_cache: bool = False
    inat_size: str = SSIM_INATSIZE
    gpu: bool = USE_GPU
    time_offset: dt.timedelta | None = None
    dry_run: bool = False
    api_url: str = DEFAULT_API_URL
    cache: Path = Path(".")
    associate: tuple[Path, int] | None = None  # --associate FILE PHOTO_ID
    dissociate: Path | None = None  # --dissociate FILE

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Options:
        """Options from parsed arguments and the environment (INAT_API_URL, INAT_PHOTOS_CACHE)."""
        return cls(
            user=args.user,
            paths=tuple(args.paths),
            logfile=Path(args.logfile) if args.logfile else None,
            cluster_threshold=args.cluster_threshold,
            ssim_threshold=args.ssim_threshold,
            recompute=args.recompute,
            bypass_cache=args.bypass_cache,
            inat_size=args.inat_size,
            gpu=args.gpu,
            time_offset=args.time_offset,
            dry_run=args.dry_run,
            api_url=environ.get("INAT_API_URL", DEFAULT_API_URL).rstrip("/"),
            cache=cache_directory(environ),
            associate=(Path(args.associate[0]), int(args.associate[1])) if args.associate else None,
            dissociate=Path(args.dissociate) if args.dissociate else None,
        )

    @property
    def matching_settings(self) -> str:
        """The settings a comparison depends on; one made under others is not reused."""
        return f"{__version__} {self.ssim_threshold} {self.inat_size} {self.cluster_threshold}"


# ---------------------------------------------------------------------------
# 2. Pure parsing and names
#    Option values, EXIF dates and GPS, API locations and times, taxon names,
#    ordinals, distances and printable paths. No I/O.
# ---------------------------------------------------------------------------


class UserError(Exception):
    """A problem the user can fix; its text is printed as one line."""


def parse_ssim_threshold(text: str) -> float:
    """Parse '0.95' or '95%' into a fraction 0 <= x < 1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or percentage: {text!r}") from None
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is outside 0 <= threshold < 1 (or 0% <= threshold < 100%)"
        )
    return value


def parse_cluster_threshold(text: str) -> int:
    """Parse a whole number of seconds, at least 60."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value < 60:
        raise argparse.ArgumentTypeError(f"{value} s is below the minimum of 60 s")
    return value


def parse_time_offset(text: str) -> dt.timedelta:
    """'+1h', '-30m', '45min', '-3:00', '+1:30', '90s': how far the camera clock was ahead."""
    match = re.fullmatch(
        r"\s*([+-]?)\s*(?:(\d{1,2}):(\d{2})|(\d+(?:\.\d+)?)\s*(h|m|min|s))\s*", text.lower()
    )
    if not match:
        raise argparse.ArgumentTypeError(
            f"not a time offset: {text!r} (examples: +1h, -30m, -3:00, 45min)"
        )
    sign, hours, minutes, amount, unit = match.groups()
    if hours is not None:
        offset = dt.timedelta(hours=int(hours), minutes=int(minutes))
    else:
        offset = dt.timedelta(seconds=float(amount) * {"h": 3600, "m": 60, "min": 60, "s": 1}[unit])
    if offset > MAX_OFFSET:
        raise argparse.ArgumentTypeError(f"time offset {text!r} is more than 26 hours")
    return -offset if sign == "-" else offset


def describe_offset(offset: dt.timedelta) -> str:
    """'1 h 00 min ahead' for a camera clock ahead by offset, 'behind' when negative."""
    minutes = round(abs(offset.total_seconds()) / 60)
    direction = "ahead" if offset > dt.timedelta(0) else "behind"
    return f"{minutes // 60} h {minutes % 60:02d} min {direction}"


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class TaxonName:
    """An identification as people read it: common name and scientific name."""

    scientific: str
    common: str | None = None

    @property
    def caption(self) -> str:
        """'Coyote (Canis latrans)', or the scientific name alone."""
        return f"{self.common} ({self.scientific})" if self.common else self.scientific


_RANK_MARKERS = {"subspecies": "ssp.", "variety": "var.", "form": "f."}


def taxon_name(taxon: dict[str, Any] | None) -> TaxonName | None:
    """Format an API taxon: 'ssp.'/'var.' inside infraspecific names, 'sp.' after genera."""
    if not isinstance(taxon, dict) or not isinstance(taxon.get("name"), str):
        return None
    name = " ".join(taxon["name"].split())
    if not name:
        return None
    rank = str(taxon.get("rank") or "").lower()
    words = name.split(" ")
    if rank in _RANK_MARKERS and len(words) == 3:
        name = f"{words[0]} {words[1]} {_RANK_MARKERS[rank]} {words[2]}"
    elif rank == "genus" and len(words) == 1:
        name = f"{name} sp."
    common = taxon.get("preferred_common_name")
    common = " ".join(common.split()) if isinstance(common, str) and common.strip() else None
    return TaxonName(scientific=name, common=common)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lng) points."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


EARLIEST_PHOTO = dt.datetime(1826, 1, 1)  # the first photograph; anything older is a bad clock


def parse_exif_datetime(text: str | None) -> dt.datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' as a naive local time, or None when absent or absurd."""
    if not text:
        return None
    match = re.match(r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})", text)
    if not match:
        return None
    try:
        when = dt.datetime(*map(int, match.groups()))
    except ValueError:
        return None
    if not EARLIEST_PHOTO <= when <= dt.datetime.now() + dt.timedelta(days=366):
        return None
    return when


def _rational(text: str) -> float:
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator or 1)


def parse_gps(exif: dict[str, str]) -> tuple[float, float] | None:
    """(lat, lng) in degrees from EXIF GPS tags, or None when absent or invalid."""
    try:
        coordinates = []
        for axis, negative in (("Latitude", "S"), ("Longitude", "W")):
            parts = exif[f"Exif.GPSInfo.GPS{axis}"].split()
            degrees = sum(_rational(p) / 60**i for i, p in enumerate(parts[:3]))
            if exif.get(f"Exif.GPSInfo.GPS{axis}Ref", "").strip().upper().startswith(negative):
                degrees = -degrees
            coordinates.append(degrees)
    except (KeyError, ValueError, ZeroDivisionError, IndexError):
        return None
    lat, lng = coordinates
    if not (-90 <= lat <= 90 and -180 <= lng <= 180) or (lat, lng) == (0.0, 0.0):
        return None
    return lat, lng


def parse_location(text: Any) -> tuple[float, float] | None:
    """The API's 'lat,lng' string as a tuple, or None."""
    if not isinstance(text, str):
        return None
    try:
        lat, lng = (float(part) for part in text.split(","))
    except ValueError:
        return None
    return (lat, lng) if -90 <= lat <= 90 and -180 <= lng <= 180 else None


def _parse_iso_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# A photo's own file: /photos/<photo id>/<size>.<ext> on any host (iNaturalist's static and
# open-data hosts, mirrors, the tests' fake server). Placeholders live elsewhere.
_PHOTO_FILE = re.compile(r"(?:^|/)photos/\d+/[^/]+$")


SKIP_REASONS = {
    "processing": "still being processed on iNaturalist; tried again next run",
    "hidden": f"hidden on iNaturalist; asked for again after {RECHECK_DAYS} days",
    "flagged": f"flagged on iNaturalist; asked for again after {RECHECK_DAYS} days",
    "unknown": "its URL {url} is not that of a photo file; asked for again after"
    f" {RECHECK_DAYS} days",
}


def photo_unavailable(photo: dict[str, Any]) -> str | None:
    """Why iNaturalist gives a placeholder instead of this photo (a key of SKIP_REASONS), or
    None when its URL is the photo's own file."""
    url = str(photo.get("url"))
    flags = photo.get("flags")
    if photo.get("hidden") is True or "media-hidden" in url:
        return "hidden"
    unresolved = isinstance(flags, list) and any(
        not (isinstance(flag, dict) and flag.get("resolved") is True) for flag in flags
    )
    if unresolved or "copyright-infringement" in url:
        return "flagged"
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc and _PHOTO_FILE.search(parts.path):
        return None
    # Just uploaded: .../attachment_defaults/local_photos/square.png until resized.
    return "processing" if "/attachment_defaults/" in parts.path else "unknown"


def parse_positive_int(value: Any) -> int | None:
    """A positive whole number written as ASCII digits, small enough for SQLite; else None."""
    text = str(value).strip() if value is not None else ""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def show_path(path: Path) -> str:
    """A path as printed in messages: non-printable bytes and newlines made visible."""
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\r", "\\r")


# ---------------------------------------------------------------------------
# 3. Model
#    The values the phases pass along: uploads and observations, local photos and
#    their tags, candidates and clusters, alignments and comparisons, and the
#    outcome of matching a day. All frozen.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InatPhoto:
    """One photo of an observation."""

    id: int
    observation_photo_id: int | None
    observation_id: int
    position: int  # 1 for the observation's first photo
    url: str  # as the API gives it, usually ending in /square.jpg
    unavailable: str | None = None  # a key of SKIP_REASONS: iNaturalist shows a placeholder

    def url_for_size(self, size: str) -> str:
        # Real URLs end in square.jpg, square.jpeg?123, square.JPG, and even square.?123
        return re.sub(
            r"/square(\.[A-Za-z]*)?(\?.*)?$", lambda m: f"/{size}{m[1] or ''}{m[2] or ''}", self.url
        )

    @property
    def page_url(self) -> str:
        return f"{INAT_WEB_URL}/photos/{self.id}"


@dataclass(frozen=True)
class Observation:
    """An iNaturalist observation reduced to what matching and captions need."""

    id: int
    url: str
    name: TaxonName | None
    observed_at: dt.datetime | None  # wall-clock time where it was observed, naive
    minute_precision: bool  # the time has no seconds, as most iNaturalist times
    observed_on: dt.date | None
    location: tuple[float, float] | None
    obscured: bool
    photos: tuple[InatPhoto, ...]

    @property
    def caption(self) -> str | None:
        return self.name.caption if self.name else None

    @property
    def identification(self) -> str:
        """The caption in quotes for console lines, or 'no identification' without a taxon."""
        return f"'{self.caption}'" if self.caption else "no identification"

    @property
    def day(self) -> dt.date | None:
        return self.observed_at.date() if self.observed_at else self.observed_on


def parse_observation(record: dict[str, Any]) -> Observation | None:
    """Turn one API observation into an Observation; None when it has no usable id."""
    obs_id = _int_or_none(record.get("id")) if isinstance(record, dict) else None
    if obs_id is None:
        return None
    observed_at = _parse_iso_time(record.get("time_observed_at"))
    observed_on = None
    with contextlib.suppress(TypeError, ValueError):
        observed_on = dt.date.fromisoformat(str(record.get("observed_on"))[:10])
    photos = []
    entries = record.get("observation_photos") or []
    if not entries:  # older answers list photos without observation_photos
        legacy = record.get("photos")
        entries = [{"photo": p} for p in legacy] if isinstance(legacy, list) else []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        photo = entry.get("photo") if isinstance(entry, dict) else None
        photo_id = _int_or_none(photo.get("id")) if isinstance(photo, dict) else None
        if photo_id is None or not isinstance(photo.get("url"), str):
            continue
        position = _int_or_none(entry.get("position"))
        photos.append(
            InatPhoto(
                id=photo_id,
                observation_photo_id=_int_or_none(entry.get("id")),
                observation_id=obs_id,
                position=(position if position is not None else index) + 1,
                url=photo["url"],
                unavailable=photo_unavailable(photo),
            )
        )
    photos.sort(key=lambda p: (p.position, p.id))
    # Positions may be missing or repeated; number photos as iNaturalist shows them.
    photos = [dataclasses.replace(p, position=i + 1) for i, p in enumerate(photos)]
    uri = record.get("uri")
    return Observation(
        id=obs_id,
        url=uri
        if isinstance(uri, str) and uri.startswith("http")
        else (f"{INAT_WEB_URL}/observations/{obs_id}"),
        name=taxon_name(record.get("taxon")),
        observed_at=observed_at.replace(tzinfo=None) if observed_at else None,
        minute_precision=bool(observed_at and observed_at.second == 0),
        observed_on=observed_on,
        location=parse_location(record.get("location")),
        obscured=bool(record.get("obscured")) or record.get("geoprivacy") == "obscured",
        photos=tuple(photos),
    )


@dataclass(frozen=True)
class InatTags:
    """The iNaturalist ids stored in a photo's XMP."""

    observation: int
    observation_photo: int | None
    photo: int | None


@dataclass(frozen=True)
class LocalPhoto:
    """A picture file in the archive and the metadata this tool uses; identified by path."""

    path: Path
    taken_at: dt.datetime
    location: tuple[float, float] | None
    orientation: int
    keywords: tuple[str, ...]  # XMP dc:subject, in order
    tags: InatTags | None
    written_caption: str | None = None  # the keyword this tool wrote (TAG_CAPTION)
    clock_error: dt.timedelta = dt.timedelta(0)  # how far the camera clock was ahead
    dissociated: bool = False  # TAG_DISSOCIATED: the user took its association back

    @property
    def corrected_time(self) -> dt.datetime:
        """When the photo was really taken, as far as the tool knows."""
        return self.taken_at - self.clock_error

    @property
    def caption(self) -> str | None:
        """The keywords as shown in messages; None when there are none."""
        return ", ".join(self.keywords) if self.keywords else None


@dataclass(frozen=True)
class Candidate:
    """An iNaturalist photo that may be the upload of a local photo."""

    photo: InatPhoto
    observation: Observation


@dataclass(frozen=True)
class Cluster:
    """Local photos and iNaturalist photos taken close together in time."""

    photos: tuple[LocalPhoto, ...] = ()
    candidates: tuple[Candidate, ...] = ()


Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of a picture
WHOLE_AREA = 0.97  # a box covering this much of a picture is the whole picture


@dataclass(frozen=True)
class Alignment:
    """Where an iNaturalist photo sits in the upright local picture."""

    box: Box
    turns: int = 0  # quarter turns counter-clockwise that bring the iNaturalist photo upright

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)

    @property
    def whole(self) -> bool:
        """True when the upload is the whole picture as it is (no crop, no turn)."""
        return self.area >= WHOLE_AREA and self.turns == 0

    def describe(self) -> str:
        """'cropped to 64% of the area, rotated 90°' or '' when neither."""
        parts = []
        if self.area < WHOLE_AREA:
            parts.append(f"cropped to {self.area * 100:.0f}% of the area")
        if self.turns:
            parts.append(f"rotated {self.turns * 90}°")
        return ", ".join(parts)


@dataclass(frozen=True)
class Comparison:
    """The similarity of a local photo and a candidate, and how the two were lined up."""

    score: float
    alignment: Alignment | None = None  # None: whole pictures compared as they are
    prefiltered: bool = False  # True: rejected by the thumbnail check, score is that check's


@dataclass(frozen=True)
class Decision:
    """What the assignment decided for one upload of a cluster (indices into the cluster).

    kind "associate": the upload goes to local_index. "tie": local_index and rivals fit it
    almost equally, nothing is chosen. "part": the upload shows part of local_index, which
    took another upload that shows more of it.
    """

    upload_index: int
    local_index: int
    score: float
    kind: str = "associate"
    rivals: tuple[int, ...] = ()


@dataclass(frozen=True)
class Association:
    """A local photo and the upload it was the source of."""

    photo: LocalPhoto
    candidate: Candidate
    comparison: Comparison


@dataclass(frozen=True)
class Tie:
    """An upload that several local photos fit almost equally well: nothing is chosen."""

    candidate: Candidate
    photos: tuple[LocalPhoto, ...]
    comparisons: tuple[Comparison, ...]
    score: float


@dataclass(frozen=True)
class Refusal:
    """A local photo left unassociated, with its best candidate when it had one, and why."""

    photo: LocalPhoto
    candidate: Candidate | None
    comparison: Comparison | None
    reason: str


@dataclass(frozen=True)
class ClusterOutcome:
    """What matching one cluster decided."""

    associations: tuple[Association, ...] = ()
    ties: tuple[Tie, ...] = ()
    parts: tuple[Association, ...] = ()  # uploads showing part of an associated photo
    refusals: tuple[Refusal, ...] = ()
    checked: tuple[tuple[Path, frozenset[int]], ...] = ()  # compared in vain with uploads


@dataclass(frozen=True)
class DayOutcome:
    """What matching one day decided; reporting and writing start from this."""

    day: dt.date
    associations: tuple[Association, ...] = ()
    ties: tuple[Tie, ...] = ()
    parts: tuple[Association, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    unmatched: tuple[Candidate, ...] = ()  # uploads of the day no local photo took
    clock_offset: dt.timedelta | None = None  # found by the offset search and used
    checked: tuple[tuple[Path, frozenset[int]], ...] = ()  # compared in vain, unchanged since


# ---------------------------------------------------------------------------
# 4. iNaturalist I/O
#    The pyinaturalist session that asks the API, the SQLite store that keeps the
#    user's observations between runs, and the cache of downloaded photos.
# ---------------------------------------------------------------------------


class InatUnreachable(Exception):
    """iNaturalist could not be asked, or answered something unusable."""


class InatClient:
    """Every conversation with iNaturalist: pyinaturalist for the API, a pool for photos."""

    def __init__(self, api_url: str, cache: Path) -> None:
        from pyinaturalist import ClientSession
        from requests.adapters import HTTPAdapter
        from requests_cache import DO_NOT_CACHE
        from urllib3.util import Retry

        self.api_url = api_url
        cache.mkdir(parents=True, exist_ok=True)
        self.session = ClientSession(
            cache_file=str(cache / "api_requests.sqlite"),
            ratelimit_path=str(cache / "api_ratelimit.sqlite"),
            lock_path=str(cache / "api_ratelimit.lock"),
            expire_after=DO_NOT_CACHE,  # our own store keeps observations; nothing stale
            user_agent=USER_AGENT,
            timeout=HTTP_TIMEOUT,
            # At most one request every 2 s: well inside iNaturalist's limits (about one a
            # second), and never two in the same second, which draws 429s.
            per_second=0.5,
            burst=2,
        )
        # pyinaturalist caches every answer for 30 minutes (its urls_expire_after "*" outranks
        # expire_after): a cached listing would defeat --bypass_cache. Our store is the cache.
        self.session.settings.disabled = True
        # pyinaturalist retries 5xx on https only; we add 429 (honouring Retry-After) and
        # plain http, so a local stand-in server gets the same treatment as the real one.
        retries = Retry(
            total=4,
            backoff_factor=0.5,
            status_forcelist=(429, 500, 502, 503, 504),
            respect_retry_after_header=True,
            allowed_methods=("GET",),
        )
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retries))
        # A photo host that refuses connections has usually moved: ask for the new URL soon.
        self.photo_retries = retries.new(connect=1)

    def _get(self, url: str, **params: Any) -> Any:
        """GET through pyinaturalist with the TLS trust requests itself would use."""
        from pyinaturalist.session import get

        # pyinaturalist hands send() verify=True, which skips the step where requests reads
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE: behind a TLS-inspecting proxy (whose CA those
        # name) every API call failed. Proxies need nothing: send() reads them from the
        # environment itself.
        settings = self.session.merge_environment_settings(url, {}, None, None, None)
        return get(url, session=self.session, verify=settings["verify"], **params)

    def _get_json(self, path: str, **params: Any) -> dict[str, Any]:
        """GET an API path through pyinaturalist and return its JSON object."""
        try:
            response = self._get(f"{self.api_url}/{path}", **params)
            answer = response.json()
        except Exception as error:  # requests, urllib3 and json errors all mean the same here
            raise InatUnreachable(_describe_http_error(error)) from None
        if not isinstance(answer, dict):
            raise InatUnreachable(f"unexpected answer from {path}")
        return answer

    def _paginate(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """All results of a listing, paged by id_above as iNaturalist asks for big sets."""
        from pyinaturalist.paginator import paginate_all

        def request(url: str, **kwargs: Any) -> dict[str, Any]:
            return self._get_json(url, **kwargs)

        try:
            answer = paginate_all(request, path, method="id", per_page=PER_PAGE, **params)
        except (TypeError, ValueError, KeyError, AttributeError):  # an answer of the wrong shape
            raise InatUnreachable(f"unexpected answer from {path}") from None
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise InatUnreachable(f"unexpected answer from {path}")
        return [r for r in results if isinstance(r, dict)]

    def user(self, login: str) -> dict[str, Any]:
        """The user's record; UserError when the login is unknown."""
        try:
            response = self._get(f"{self.api_url}/users/{login}", raise_for_status=False)
            if response.status_code in (404, 422):
                raise UserError(f"unknown iNaturalist user {login!r}")
            response.raise_for_status()
            results = response.json().get("results") or []
            if not isinstance(results, list):
                raise InatUnreachable(f"unexpected answer from users/{login}")
        except (UserError, InatUnreachable):
            raise
        except Exception as error:  # network, HTTP and JSON failures alike
            raise InatUnreachable(_describe_http_error(error)) from None
        for record in results:
            if isinstance(record, dict) and str(record.get("login", "")).lower() == login.lower():
                return record
        raise UserError(f"unknown iNaturalist user {login!r}")

    def observations(self, login: str, **filters: Any) -> list[dict[str, Any]]:
        """The user's observations with photos matching the filters (d1, d2, updated_since)."""
        return self._paginate("observations", user_id=login, photos="true", **filters)

    def observations_by_id(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Observations by id, ID_BATCH a request; deleted ones are simply absent."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), ID_BATCH):
            batch = ids[start : start + ID_BATCH]
            answer = self._get_json("observations", id=",".join(map(str, batch)), per_page=ID_BATCH)
            results = answer.get("results")
            if not isinstance(results, list):  # never read as "all of them were deleted"
                raise InatUnreachable("unexpected answer from observations")
            found.extend(r for r in results if isinstance(r, dict))
        return found


def _describe_http_error(error: BaseException) -> str:
    """One plain line for any network or decoding failure."""
    import requests

    response = getattr(error, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} from {response.url}"
    kinds: list[tuple[type[BaseException], str]] = [
        (requests.exceptions.RetryError, "the server kept failing after several retries"),
        (requests.exceptions.Timeout, "no answer in time"),
        (
            requests.exceptions.SSLError,
            "its TLS certificate is not trusted (behind a proxy that inspects TLS, set"
            " REQUESTS_CA_BUNDLE to the proxy's CA certificate file)",
        ),
        (requests.exceptions.ChunkedEncodingError, "the answer was cut off"),
        (requests.exceptions.ConnectionError, "cannot connect"),
        (ValueError, "the answer is not valid JSON"),
    ]
    for kind, text in kinds:
        if isinstance(error, kind):
            return text
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return detail[:200]


def _changed_since(record: dict[str, Any], moment: dt.datetime) -> bool:
    """True when the observation was created or updated at or after moment (aware, UTC)."""
    for key in ("updated_at", "created_at"):
        when = _parse_iso_time(record.get(key))
        if when is not None and when.tzinfo is None:  # iNaturalist's times carry an offset
            when = when.replace(tzinfo=dt.timezone.utc)
        if when is not None and when >= moment:
            return True
    return False


class ObservationStore:
    """The user's observations kept in SQLite between runs, refreshed with updated_since,
    and those that local photos point at asked for again by id every RECHECK_DAYS."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        if fresh:
            self.db.executescript(
                "DROP TABLE IF EXISTS observations; DROP TABLE IF EXISTS synced;"
                " DROP TABLE IF EXISTS checked;"
            )
        # checked: when iNaturalist last answered for an observation id, in a listing or by
        # id; ids it no longer has stay here too, so they are not asked for on every run.
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS observations (
                id INTEGER PRIMARY KEY, user TEXT NOT NULL, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS synced (
                user TEXT PRIMARY KEY, first_day TEXT, last_day TEXT, synced_at TEXT);
            CREATE TABLE IF NOT EXISTS captions (
                observation_id INTEGER, caption TEXT, PRIMARY KEY (observation_id, caption));
            CREATE TABLE IF NOT EXISTS checked (id INTEGER PRIMARY KEY, checked_at TEXT NOT NULL);
            """
        )

    def close(self) -> None:
        self.db.close()

    def has_synced(self, user: str) -> bool:
        """True once a listing for this user has been stored (the login exists)."""
        row = self.db.execute("SELECT 1 FROM synced WHERE user = ?", (user.lower(),))
        return row.fetchone() is not None

    def _put(self, user: str, records: Iterable[dict[str, Any]]) -> None:
        """Store records, and each caption among the captions the observation has had."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        for record in records:
            if _int_or_none(record.get("id")) is None:
                continue
            self.db.execute(
                "INSERT OR REPLACE INTO observations (id, user, record) VALUES (?, ?, ?)",
                (record["id"], user, json.dumps(record)),
            )
            observation = parse_observation(record)
            if observation is not None and observation.caption is not None:
                self.db.execute(
                    "INSERT OR IGNORE INTO captions VALUES (?, ?)",
                    (observation.id, observation.caption),
                )
            self.db.execute("INSERT OR REPLACE INTO checked VALUES (?, ?)", (record["id"], now))

    def sync(self, client: InatClient, user: str, first_day: dt.date, last_day: dt.date) -> None:
        """Bring the days first_day..last_day up to date."""
        user = user.lower()
        started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        row = self.db.execute(
            "SELECT first_day, last_day, synced_at FROM synced WHERE user = ?", (user,)
        ).fetchone()
        if row:
            covered_first, covered_last = map(dt.date.fromisoformat, row[:2])
            changed = client.observations(user, updated_since=row[2])
            self._put(user, changed)
            gaps = []
            if first_day < covered_first:
                gaps.append((first_day, covered_first - dt.timedelta(days=1)))
            if last_day > covered_last:
                gaps.append((covered_last + dt.timedelta(days=1), last_day))
            first_day, last_day = min(first_day, covered_first), max(last_day, covered_last)
        else:
            gaps = [(first_day, last_day)]
        for gap_first, gap_last in gaps:
            # pyinaturalist sends d1/d2 with a time, and iNaturalist then compares them with
            # observation times: ask for every moment that is one of these days somewhere on
            # Earth (UTC+14 to UTC-12).
            d1 = dt.datetime.combine(gap_first, dt.time(), dt.timezone.utc)
            d2 = dt.datetime.combine(gap_last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
            self._put(
                user,
                client.observations(
                    user, d1=d1 - dt.timedelta(hours=14), d2=d2 + dt.timedelta(hours=12)
                ),
            )
        self.db.execute(
            "INSERT OR REPLACE INTO synced VALUES (?, ?, ?, ?)",
            (user, first_day.isoformat(), last_day.isoformat(), started.isoformat()),
        )
        self.db.commit()

    def _checked_since(self, obs_id: int, moment: dt.datetime) -> bool:
        row = self.db.execute("SELECT checked_at FROM checked WHERE id = ?", (obs_id,)).fetchone()
        try:
            return bool(row) and dt.datetime.fromisoformat(row[0]) >= moment
        except (TypeError, ValueError):  # a damaged entry: ask again
            return False

    def recheck(
        self,
        client: InatClient,
        user: str,
        ids: Iterable[int],
        first_day: dt.date,
        last_day: dt.date,
    ) -> None:
        """Ask by id for what updated_since cannot tell: the observations in ids (those local
        photos point at) and those of these days with photos iNaturalist did not show, when
        last asked RECHECK_DAYS ago or never; fresh uploads still processing every run.
        Observations iNaturalist no longer has are forgotten."""
        due_before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=RECHECK_DAYS)
        every_run, weekly = set(), set(ids)
        rows = self.db.execute("SELECT record FROM observations WHERE user = ?", (user.lower(),))
        for (text,) in rows.fetchall():
            record = json.loads(text)
            observation = parse_observation(record)
            if (
                not observation
                or not observation.day
                or not first_day <= observation.day <= last_day
            ):
                continue
            reasons = {photo.unavailable for photo in observation.photos} - {None}
            if "processing" in reasons and _changed_since(record, due_before):
                every_run.add(observation.id)  # resized within minutes, usually
            elif reasons:  # hidden, flagged, or an upload stuck in processing: weekly
                weekly.add(observation.id)
        wanted = sorted(every_run | {i for i in weekly if not self._checked_since(i, due_before)})
        if not wanted:
            return
        records = client.observations_by_id(wanted)
        self._put(user.lower(), records)
        present = {record["id"] for record in records if _int_or_none(record.get("id")) is not None}
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        for obs_id in set(wanted) - present:  # deleted (or made private) on iNaturalist
            self.db.execute("DELETE FROM observations WHERE id = ?", (obs_id,))
            self.db.execute("INSERT OR REPLACE INTO checked VALUES (?, ?)", (obs_id, now))
        self.db.commit()

    def observations_by_id(self, ids: Iterable[int]) -> dict[int, Observation]:
        found = {}
        for obs_id in set(ids):
            row = self.db.execute(
                "SELECT record FROM observations WHERE id = ?", (obs_id,)
            ).fetchone()
            observation = parse_observation(json.loads(row[0])) if row else None
            if observation:
                found[obs_id] = observation
        return found

    def caption_history(self, ids: Iterable[int]) -> dict[int, set[str]]:
        """Every caption each observation has had while this store knew it."""
        history: dict[int, set[str]] = defaultdict(set)
        for obs_id in set(ids):
            rows = self.db.execute(
                "SELECT caption FROM captions WHERE observation_id = ?", (obs_id,)
            )
            history[obs_id].update(caption for (caption,) in rows)
        return dict(history)

    def observations_between(
        self, user: str, first_day: dt.date, last_day: dt.date
    ) -> list[Observation]:
        rows = self.db.execute(
            "SELECT record FROM observations WHERE user = ? ORDER BY id", (user.lower(),)
        )
        parsed = (parse_observation(json.loads(r[0])) for r in rows)
        return [o for o in parsed if o and o.day and first_day <= o.day <= last_day]


class PhotoCache:
    """iNaturalist photos on disk, keyed by photo id and size; never a partial file."""

    def __init__(
        self, cache: Path, client: InatClient, refresh: bool = False, console: Console | None = None
    ) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.client = client
        self.console = console or Console()
        self.skipped: set[int] = set()  # placeholders reported in this run
        self.folder = cache / "photos"
        for leftover in self.folder.glob("*/*.part"):  # downloads cut off by a killed run
            with contextlib.suppress(OSError):
                leftover.unlink()
        self.refresh = refresh
        self.refreshed: set[Path] = set()
        self.failed: set[Path] = set()  # asked for once in vain: not again in this run
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(max_retries=client.photo_retries, pool_maxsize=DOWNLOAD_WORKERS)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.lock = threading.Lock()

    def path(self, photo: InatPhoto, size: str) -> Path:
        return self.folder / size / f"{photo.id}.jpg"

    def _download(self, url: str) -> bytes:
        """A complete, decodable picture from url; raises on anything less."""
        response = self.http.get(url, timeout=DOWNLOAD_TIMEOUT)
        response.raise_for_status()
        data = response.content
        expected = response.headers.get("Content-Length")
        if expected is not None and int(expected) != len(data):
            raise OSError(f"cut off after {len(data)} of {expected} bytes")
        with Image.open(io.BytesIO(data)) as check:
            check.load()  # a truncated JPEG fails here, before anything is cached
        return data

    def _current(self, photo: InatPhoto) -> InatPhoto | None:
        """The photo as iNaturalist gives it now, if its URL changed (stored URLs go stale)."""
        try:
            records = self.client.observations_by_id([photo.observation_id])
        except InatUnreachable:
            return None
        for observation in filter(None, map(parse_observation, records)):
            for current in observation.photos:
                if current.id == photo.id and current.url != photo.url:
                    return current
        return None

    def _skip(self, photo: InatPhoto) -> None:
        """Say once per run that a photo is a placeholder on iNaturalist; nothing is cached."""
        with self.lock:
            if photo.id in self.skipped:
                return
            self.skipped.add(photo.id)
        reason = SKIP_REASONS.get(photo.unavailable or "", SKIP_REASONS["unknown"])
        reason = reason.replace("{url}", ascii(photo.url[:200]))  # the API's text, shown safely
        self.console.say(
            f"Skipped photo id {photo.id} of observation"
            f" {INAT_WEB_URL}/observations/{photo.observation_id}: {reason}."
        )

    def fetch(self, photo: InatPhoto, size: str) -> Path | None:
        """The cached file, downloading it first if needed; None when it cannot be had."""
        if photo.unavailable:  # a placeholder must never be cached under the photo's id
            self._skip(photo)
            return None
        target = self.path(photo, size)
        if target.exists() and (not self.refresh or target in self.refreshed):
            return target
        if target in self.failed:
            return None
        try:
            data = self._download(photo.url_for_size(size))
        except Exception as error:
            fresh = self._current(photo)
            if fresh is not None and fresh.unavailable:
                self._skip(fresh)
                with self.lock:
                    self.failed.add(target)
                return None
            try:
                if fresh is None:
                    raise error
                data = self._download(fresh.url_for_size(size))
            except Exception as final:
                print(
                    f"Warning: could not download photo {photo.id}: {_describe_http_error(final)}",
                    file=sys.stderr,
                )
                with self.lock:
                    self.failed.add(target)
                return None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, target)
        with self.lock:
            self.refreshed.add(target)
        return target

    def fetch_all(self, photos: Sequence[InatPhoto], size: str) -> dict[int, Path]:
        """Download several photos in parallel; returns those that could be had."""
        with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
            results = pool.map(lambda p: self.fetch(p, size), photos)
            paths = list(progress(results, "Downloading", len(photos)))
        return {p.id: path for p, path in zip(photos, paths, strict=True) if path is not None}


# ---------------------------------------------------------------------------
# 5. Local files
#    Finding picture files, removing copies a killed run left behind, reading the
#    metadata this tool uses (through the LocalIndex, so reruns parse only what
#    changed), and decoding pixels upright at the size a comparison needs.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundFiles:
    """What a walk over the arguments found."""

    pictures: tuple[Path, ...]
    leftovers: tuple[Path, ...]  # temporary copies left by a run killed mid-write


def find_picture_files(arguments: Sequence[str], console: Console) -> FoundFiles:
    """Picture files named or found below the arguments: hidden entries skipped, each once."""
    found: list[Path] = []
    leftovers: list[Path] = []
    seen: set[tuple[int, int]] = set()
    skipped: list[Path] = []

    def add(path: Path, named: bool) -> None:
        try:
            info = path.stat()
        except OSError as error:
            console.file_error(path, f"cannot read ({error.strerror or error})")
            return
        if path.suffix.lower() not in PICTURE_SUFFIXES:
            if named:
                console.warn(f"{show_path(path)}: not a JPEG, PNG or TIFF picture; skipped")
            else:
                skipped.append(path)
            return
        if (info.st_dev, info.st_ino) not in seen:  # hard links and repeated arguments
            seen.add((info.st_dev, info.st_ino))
            found.append(path)

    def walk(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            console.file_error(folder, f"cannot list folder ({error.strerror or error})")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                if entry.name.endswith(TEMPORARY_SUFFIX) and entry.is_file(follow_symlinks=False):
                    leftovers.append(path)
                continue
            if entry.is_symlink():
                console.say(f"Not following symbolic link {show_path(path)}.")
            elif entry.is_dir(follow_symlinks=False):
                walk(path)
            elif entry.is_file(follow_symlinks=False):
                add(path, named=False)

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            walk(path)
        elif path.exists():
            add(path, named=True)
        else:
            console.file_error(path, "no such file or folder")
    if skipped:
        examples = ", ".join(repr(show_path(p)) for p in skipped[:3])
        console.say(
            f"Skipped {len(skipped)} file(s) that are not JPEG, PNG or TIFF pictures"
            f" (e.g. {examples})."
        )
    return FoundFiles(tuple(found), tuple(leftovers))


def remove_leftover_copies(leftovers: Iterable[Path]) -> None:
    """Delete temporary copies of a run killed mid-write; each original is intact beside it."""
    for path in leftovers:
        with contextlib.suppress(OSError):
            path.unlink()


def _read_metadata(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """EXIF and XMP of a picture file, via exiv2."""
    import pyexiv2

    try:
        os.fsencode(path).decode("utf-8")
        image = pyexiv2.Image(str(path))
    except UnicodeDecodeError:  # exiv2 wants UTF-8 names; read odd names through memory
        image = pyexiv2.ImageData(path.read_bytes())
    try:
        return image.read_exif(), image.read_xmp()
    finally:
        image.close()


def _keywords(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    return []


def _caption_tag(value: Any) -> str | None:
    text = value if isinstance(value, str) else None
    return text if text and text.strip() else None


def read_local_photo(path: Path, console: Console) -> LocalPhoto | None:
    """Read one picture's metadata; report the file and return None when it cannot be read."""
    try:
        exif, xmp = _read_metadata(path)
        mtime = path.stat().st_mtime
    except (OSError, RuntimeError, ValueError) as error:
        console.file_error(path, f"cannot read metadata ({str(error).strip() or 'unreadable'})")
        return None
    taken_at = parse_exif_datetime(
        exif.get("Exif.Photo.DateTimeOriginal") or exif.get("Exif.Image.DateTimeOriginal")
    )
    if taken_at is None:
        console.warn(f"{show_path(path)}: no usable EXIF date; using the file's modification time")
    orientation = parse_positive_int(exif.get("Exif.Image.Orientation"))
    observation = parse_positive_int(xmp.get(TAG_OBSERVATION))
    return LocalPhoto(
        path=path,
        taken_at=taken_at or dt.datetime.fromtimestamp(mtime).replace(microsecond=0),
        location=parse_gps(exif),
        orientation=orientation if orientation in range(1, 9) else 1,
        keywords=tuple(_keywords(xmp.get(TAG_SUBJECT))),
        written_caption=_caption_tag(xmp.get(TAG_CAPTION)),
        dissociated=bool(_caption_tag(xmp.get(TAG_DISSOCIATED))),
        tags=InatTags(
            observation=observation,
            observation_photo=parse_positive_int(xmp.get(TAG_OBSERVATION_PHOTO)),
            photo=parse_positive_int(xmp.get(TAG_PHOTO)),
        )
        if observation is not None
        else None,
    )


def _photo_record(photo: LocalPhoto) -> str:
    tags = dataclasses.asdict(photo.tags) if photo.tags else None
    return json.dumps(
        {
            "taken_at": photo.taken_at.isoformat(),
            "location": photo.location,
            "orientation": photo.orientation,
            "keywords": list(photo.keywords),
            "written_caption": photo.written_caption,
            "tags": tags,
            "dissociated": photo.dissociated,
        }
    )


def _photo_from_record(path: Path, record: str) -> LocalPhoto:
    data = json.loads(record)
    return LocalPhoto(
        path=path,
        taken_at=dt.datetime.fromisoformat(data["taken_at"]),
        location=tuple(data["location"]) if data["location"] else None,  # type: ignore[arg-type]
        orientation=data["orientation"],
        keywords=tuple(data["keywords"]),
        written_caption=data["written_caption"],
        tags=InatTags(**data["tags"]) if data["tags"] else None,
        dissociated=bool(data.get("dissociated")),
    )


class LocalIndex:
    """What was read from each local file, keyed by path, size and modification time.

    A rerun parses only new or changed files. It also remembers which uploads a photo was
    already compared with in vain, so it is compared again only when new uploads appear, and
    what the HTML log last said about it (a verdict), so a rerun's log lists only what changed.
    """

    def __init__(self, path: Path, settings: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.settings = settings  # comparisons made under other settings do not count
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS photos (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS checked (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, settings TEXT,
                uploads TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS parts (
                photo_id INTEGER PRIMARY KEY, path BLOB NOT NULL, area REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS verdicts (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, settings TEXT,
                verdict TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS reported_uploads (photo_id INTEGER PRIMARY KEY);
            """
        )

    @staticmethod
    def _key(path: Path) -> tuple[bytes, int, int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return os.fsencode(path.absolute()), info.st_size, info.st_mtime_ns

    def read(self, path: Path, console: Console) -> LocalPhoto | None:
        """The photo's metadata from the index if the file is unchanged, else from the file."""
        key = self._key(path)
        if key is not None:
            row = self.db.execute(
                "SELECT record FROM photos WHERE path = ? AND size = ? AND mtime_ns = ?", key
            ).fetchone()
            if row:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    return _photo_from_record(path, row[0])
        photo = read_local_photo(path, console)
        if photo is not None:
            self.remember(photo)
        return photo

    def remember(self, photo: LocalPhoto) -> None:
        """Store what we know of photo under the file's current size and time."""
        key = self._key(photo.path)
        if key is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?)", (*key, _photo_record(photo))
            )

    def _stored(self, table: str, path: Path) -> Any:
        """The JSON value table ("checked", "verdicts") holds for the file at path as it is
        now and under these settings; None when there is none."""
        key = self._key(path)
        if key is None:
            return None
        row = self.db.execute(
            f"SELECT * FROM {table} WHERE path = ? AND size = ? AND mtime_ns = ? AND settings = ?",
            (*key, self.settings),
        ).fetchone()
        with contextlib.suppress(ValueError, TypeError):
            return json.loads(row[4]) if row else None
        return None

    def _store(self, table: str, path: Path, value: Any) -> None:
        key = self._key(path)
        if key is not None:
            self.db.execute(
                f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?)",
                (*key, self.settings, json.dumps(value)),
            )

    def checked_before(self, photo: LocalPhoto, uploads: Iterable[int]) -> bool:
        """True when photo was compared in vain with all of these uploads, unchanged since."""
        found = self._stored("checked", photo.path)
        return isinstance(found, list) and set(uploads) <= set(found)

    def record_checked(self, path: Path, uploads: Iterable[int]) -> None:
        """Remember that the file at path was compared in vain with these uploads."""
        self._store("checked", path, sorted(set(uploads)))

    def record_part(self, photo_id: int, photo: LocalPhoto, area: float) -> None:
        """Remember that upload photo_id shows part of photo (reported again on reruns)."""
        self.db.execute(
            "INSERT OR REPLACE INTO parts VALUES (?, ?, ?)",
            (photo_id, os.fsencode(photo.path.absolute()), area),
        )

    def parts_of(self, photo_ids: Iterable[int]) -> dict[int, tuple[Path, float]]:
        """The local photo (as found this run) and area each remembered part upload shows."""
        found = {}
        for photo_id in photo_ids:
            row = self.db.execute(
                "SELECT path, area FROM parts WHERE photo_id = ?", (photo_id,)
            ).fetchone()
            if row:
                found[photo_id] = (Path(os.fsdecode(row[0])), row[1])
        return found

    def record_verdict(self, path: Path, verdict: Mapping[str, Any]) -> None:
        """Remember what the log said of the file at path, as it is now, left unassociated."""
        self._store("verdicts", path, dict(verdict))

    def verdict(self, photo: LocalPhoto) -> dict[str, Any] | None:
        """The verdict recorded for photo, if the file and the settings are unchanged since."""
        found = self._stored("verdicts", photo.path)
        return found if isinstance(found, dict) else None

    def reported_uploads(self, photo_ids: Iterable[int]) -> set[int]:
        """Those of photo_ids an earlier log already listed as without a local photo."""
        return {
            photo_id
            for photo_id in photo_ids
            if self.db.execute(
                "SELECT 1 FROM reported_uploads WHERE photo_id = ?", (photo_id,)
            ).fetchone()
        }

    def record_reported_uploads(self, photo_ids: Iterable[int]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO reported_uploads VALUES (?)", [(i,) for i in photo_ids]
        )

    def paths_with_photo(self, photo_id: int) -> list[Path]:
        """Files whose last reading held photo_id in their iNaturalist ids."""
        found = []
        for path, record in self.db.execute("SELECT path, record FROM photos"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                tags = json.loads(record).get("tags")
                if tags and tags.get("photo") == photo_id:
                    found.append(Path(os.fsdecode(path)))
        return found

    def close(self) -> None:
        self.db.commit()
        self.db.close()


def load_local_photos(
    files: Iterable[Path], index: LocalIndex, console: Console, offset: dt.timedelta | None
) -> list[LocalPhoto]:
    """The metadata of every readable file, with a known camera-clock error applied."""
    photos = [p for p in (index.read(f, console) for f in progress(files, "Loading")) if p]
    index.db.commit()
    if offset:
        photos = [dataclasses.replace(p, clock_error=offset) for p in photos]
    return photos


_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_upright(path: Path, orientation: int, longest: int) -> Image.Image:
    """Decode a picture upright and in RGB, reduced but with its longest side >= longest."""
    with Image.open(path) as image:
        if image.width * image.height > MAX_PICTURE_PIXELS:  # Pillow only warns up to 2x
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} pixels, more than {MAX_PICTURE_PIXELS}"
            )
        if image.format == "JPEG":  # JPEG decodes at 1/2, 1/4, 1/8 of its size cheaply
            scale = longest / max(image.size)
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        picture = image.convert("RGB")
    if orientation in _ORIENTATION_FIX:
        picture = picture.transpose(_ORIENTATION_FIX[orientation])
    return picture


# ---------------------------------------------------------------------------
# 6. Pictures
#    PictureSource holds every decoded picture of a run, local and uploaded: it
#    fetches uploads through the photo cache, decodes each picture once while it is
#    needed, and is the one place that reports a picture it could not decode.
# ---------------------------------------------------------------------------


class PictureSource:
    """Decoded pictures for comparisons: uploads per day, local photos per cluster."""

    def __init__(self, photos: PhotoCache, size: str, console: Console) -> None:
        self.photos = photos
        self.size = size
        self.console = console
        self.uploads: dict[int, Image.Image] = {}
        self.locals: dict[Path, Image.Image] = {}
        self.thumbnails: dict[Path, Image.Image] = {}
        self.unreadable: set[Path] = set()
        self.lock = threading.Lock()

    def fetch(self, candidates: Sequence[Candidate]) -> None:
        """Download the uploads of these candidates in parallel, ahead of comparing them."""
        self.photos.fetch_all([c.photo for c in candidates], self.size)

    def upload(self, photo: InatPhoto) -> Image.Image | None:
        """The upload at the compared size; None when it cannot be had."""
        if photo.id not in self.uploads:
            path = self.photos.fetch(photo, self.size)
            if path is None:
                return None
            try:
                with Image.open(path) as image:
                    picture = image.convert("RGB")
            except (OSError, ValueError):
                return None
            with self.lock:
                self.uploads[photo.id] = picture
        return self.uploads[photo.id]

    def downloaded_upload(self, photo: InatPhoto) -> Image.Image | None:
        """The upload if this run decoded it or it is already downloaded; never a download."""
        if photo.id in self.uploads:
            return self.uploads[photo.id]
        path = self.photos.path(photo, self.size)
        if photo.unavailable or not path.exists():
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError):
            return None

    def local(self, photo: LocalPhoto) -> Image.Image | None:
        """The local picture upright, big enough to cut the smallest searched crop from it."""
        side = round(max(INAT_PIXELS[self.size], HTML_THUMBNAIL) / SMALLEST_CROP)
        return self._decode(photo, side, self.locals)

    def local_thumbnail(self, photo: LocalPhoto) -> Image.Image | None:
        """The local picture upright at about thumbnail size (JPEGs decode at 1/8 cheaply)."""
        return self._decode(photo, HTML_THUMBNAIL, self.thumbnails)

    def _decode(
        self, photo: LocalPhoto, side: int, cache: dict[Path, Image.Image]
    ) -> Image.Image | None:
        if photo.path in self.unreadable:
            return None
        if photo.path not in cache:
            try:
                picture = decode_upright(photo.path, photo.orientation, side)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                with self.lock:
                    if photo.path not in self.unreadable:
                        self.unreadable.add(photo.path)
                        self.console.file_error(photo.path, f"cannot decode picture ({error})")
                return None
            with self.lock:
                cache[photo.path] = picture
        return cache[photo.path]

    def forget_locals(self) -> None:
        """Drop decoded local pictures once their cluster is done (memory stays flat)."""
        self.locals.clear()
        self.thumbnails.clear()

    def forget_uploads(self) -> None:
        """Drop decoded uploads once their day is done and reported."""
        self.uploads.clear()


# ---------------------------------------------------------------------------
# 7. Similarity
#    The score (SSIM-PIL's structural similarity, numpy or OpenCL with --gpu), the
#    search for an upload inside a local picture (crops, quarter turns), the cheap
#    thumbnail gate, and compare_pictures: decoded pictures in, a Comparison out.
#    PairScorer, at the end, is the compare function matching is given.
# ---------------------------------------------------------------------------


SSIM_TILE = 7


_TILE_PIXELS = SSIM_TILE * SSIM_TILE


# SSIM-PIL's c1 and c2 for 8-bit data, pre-multiplied by n^2 to match the scaled moments below.
_C1_N2 = (0.01 * 255) ** 2 * _TILE_PIXELS**2


_C2_N2 = (0.03 * 255) ** 2 * _TILE_PIXELS**2


def _tile_grid(first: np.ndarray, second: np.ndarray) -> tuple[int, int]:
    """Check two HxWx3 pictures match and return the number of whole tiles (rows, cols)."""
    if first.shape != second.shape or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"need equal-size HxWx3 pictures, got {first.shape} and {second.shape}")
    rows, cols = first.shape[0] // SSIM_TILE, first.shape[1] // SSIM_TILE
    if rows == 0 or cols == 0:
        raise ValueError(f"pictures of {first.shape[1]}x{first.shape[0]} are smaller than a tile")
    return rows, cols


def ssim_score(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM-PIL's compare_ssim value for two equal-size HxWx3 uint8 arrays, vectorised."""
    rows, cols = _tile_grid(first, second)
    height, width = rows * SSIM_TILE, cols * SSIM_TILE
    a = first[:height, :width].astype(np.int32)
    b = second[:height, :width].astype(np.int32)

    def tile_sums(pixels: np.ndarray) -> np.ndarray:
        # Summing tile rows first keeps each reduction over contiguous memory.
        rows_summed = pixels.reshape(rows, SSIM_TILE, width, 3).sum(axis=1)
        return rows_summed.reshape(rows, cols, SSIM_TILE, 3).sum(axis=2).astype(np.float64)

    squares = a * a
    squares += b * b
    # Integer moments are exact, so only the final ratios round (SSIM-PIL differs by ~1e-15).
    s0, s1, sq, s01 = tile_sums(a), tile_sums(b), tile_sums(squares), tile_sums(a * b)
    n = _TILE_PIXELS
    luminance = (2 * s0 * s1 + _C1_N2) / (s0 * s0 + s1 * s1 + _C1_N2)
    structure = (2 * (n * s01 - s0 * s1) + _C2_N2) / (n * sq - s0 * s0 - s1 * s1 + _C2_N2)
    return float(np.mean(luminance * structure))


# One work-item per (tile, channel); REAL is double when the device has cl_khr_fp64.
SSIM_KERNEL = """
#ifdef USE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double REAL;
#else
typedef float REAL;
#endif

__kernel void ssim_tiles(__global const uchar *first, __global const uchar *second,
                         const int row_pitch, const REAL c1_n2, const REAL c2_n2,
                         __global REAL *out)
{
    const int column = get_global_id(0);  /* tile column * 3 + channel */
    const int tile_row = get_global_id(1);
    const int n = TILE * TILE;
    int s0 = 0, s1 = 0, sq = 0, s01 = 0;
    for (int y = 0; y < TILE; y++) {
        const int start = (tile_row * TILE + y) * row_pitch + (column / 3) * TILE * 3 + column % 3;
        for (int x = 0; x < TILE; x++) {
            const int a = first[start + 3 * x], b = second[start + 3 * x];
            s0 += a; s1 += b; sq += a * a + b * b; s01 += a * b;
        }
    }
    /* The scaled integer moments stay below 2^31, so only the casts and divisions round. */
    const REAL luminance = ((REAL)(2 * s0 * s1) + c1_n2) / ((REAL)(s0 * s0 + s1 * s1) + c1_n2);
    const REAL structure = ((REAL)(2 * (n * s01 - s0 * s1)) + c2_n2)
                           / ((REAL)(n * sq - s0 * s0 - s1 * s1) + c2_n2);
    out[tile_row * get_global_size(0) + column] = luminance * structure;
}
"""


class OpenCLUnavailable(RuntimeError):
    """No usable OpenCL: pyopencl missing, no platform or device, or the kernel did not build."""


class OpenCLSimilarity:
    """The same score on an OpenCL device (pyopencl); built once, reused for many pairs."""

    def __init__(self, use_fp64: bool = True) -> None:
        """Pick a GPU if there is one, else any device; use_fp64=False forces single precision."""
        try:
            import pyopencl as cl
        except ImportError as error:
            raise OpenCLUnavailable(f"pyopencl is not installed ({error})") from error
        try:
            devices = [device for found in cl.get_platforms() for device in found.get_devices()]
            if not devices:
                raise OpenCLUnavailable("no OpenCL device found")
            # The first GPU, else the first device; pocl reports its CPU as type ALL | CPU.
            device = min(devices, key=lambda d: not d.type & cl.device_type.GPU)
            self.fp64 = use_fp64 and "cl_khr_fp64" in device.extensions
            self.device_name = device.name.strip()
            self._cl = cl
            self._context = cl.Context([device])
            self._queue = cl.CommandQueue(self._context)
        except cl.Error as error:
            raise OpenCLUnavailable(f"no usable OpenCL device: {error}".splitlines()[0]) from error
        options = [f"-DTILE={SSIM_TILE}"] + (["-DUSE_FP64"] if self.fp64 else [])
        try:
            self._kernel = cl.Program(self._context, SSIM_KERNEL).build(options=options).ssim_tiles
        except cl.Error as error:
            reason = f"SSIM kernel did not build on {self.device_name}: {error}".splitlines()[0]
            raise OpenCLUnavailable(reason) from error
        self._real = np.float64 if self.fp64 else np.float32
        self._kernel.set_scalar_arg_dtypes([None, None, np.int32, self._real, self._real, None])

    def score(self, first: np.ndarray, second: np.ndarray) -> float:
        """SSIM-PIL's compare_ssim value for two equal-size HxWx3 uint8 arrays."""
        rows, cols = _tile_grid(first, second)
        cl, flags = self._cl, self._cl.mem_flags.READ_ONLY | self._cl.mem_flags.COPY_HOST_PTR
        inputs = [
            cl.Buffer(self._context, flags, hostbuf=np.ascontiguousarray(image, dtype=np.uint8))
            for image in (first, second)
        ]
        tiles = np.empty((rows, cols * 3), dtype=self._real)
        out = cl.Buffer(self._context, cl.mem_flags.WRITE_ONLY, tiles.nbytes)
        # Pixels past the last whole tile are never read, which matches SSIM-PIL's cropping.
        self._kernel(
            self._queue, tiles.shape[::-1], None, *inputs, first.shape[1] * 3, _C1_N2, _C2_N2, out
        )
        cl.enqueue_copy(self._queue, tiles, out)
        return float(tiles.sum(dtype=np.float64) / tiles.size)


ScoreFunction = Callable[[np.ndarray, np.ndarray], float]


def choose_score_function(use_gpu: bool, console: Console) -> ScoreFunction:
    """The OpenCL score when asked for and available, else numpy's (saying why)."""
    if use_gpu:
        try:
            return OpenCLSimilarity().score
        except OpenCLUnavailable as reason:
            console.warn(f"no OpenCL device ({reason}); computing similarity on the CPU")
    return ssim_score


ALIGN_SIDE = 160  # longest side of the coarse search (the cheap pre-filter), pixels


SMALLEST_CROP = 0.6  # crops down to 60 % of the width (36 % of the area) are searched


ALIGN_GATE = 0.8  # coarse correlation below this: not the same picture, no full score


_TURN = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


def grayscale(picture: Image.Image, side: float) -> np.ndarray:
    """picture in grayscale, scaled so that its longest side is about side pixels."""
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return np.asarray(picture.convert("L").resize(size, Image.Resampling.BILINEAR), np.float64)


def turned(picture: Image.Image, turns: int) -> Image.Image:
    return picture.transpose(_TURN[turns]) if turns else picture


def _fast_length(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (FFTs are fast there)."""
    while True:
        m = n
        for prime in (2, 3, 5):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


class Correlator:
    """Normalised cross-correlation of templates against one image; its FFT is made once."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.shape = tuple(_fast_length(n) for n in image.shape)
        self.spectrum = np.fft.rfft2(image, s=self.shape)
        self.integrals = [
            np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0))) for values in (image, image**2)
        ]

    def ncc(self, template: np.ndarray) -> np.ndarray:
        """The correlation at every position where template lies fully inside the image."""
        th, tw = template.shape
        height, width = self.image.shape
        centred = template - template.mean()
        norm = math.sqrt(float((centred * centred).sum()))
        out_shape = (height - th + 1, width - tw + 1)
        if norm == 0 or min(out_shape) < 1:
            return np.full((max(out_shape[0], 1), max(out_shape[1], 1)), -1.0)
        # Zero-padded FFT correlation is exact for the valid positions: they never wrap.
        product = self.spectrum * np.conj(np.fft.rfft2(centred, s=self.shape))
        correlation = np.fft.irfft2(product, s=self.shape)[: out_shape[0], : out_shape[1]]
        sums = [i[th:, tw:] - i[:-th, tw:] - i[th:, :-tw] + i[:-th, :-tw] for i in self.integrals]
        variance = np.maximum(sums[1] - sums[0] ** 2 / (th * tw), 1e-9)
        return correlation / (np.sqrt(variance) * norm)


def _subpixel_peak(surface: np.ndarray) -> tuple[float, float, float]:
    """(y, x, value) of the maximum, refined by a parabola through its neighbours."""
    y, x = np.unravel_index(int(np.argmax(surface)), surface.shape)
    value = float(surface[y, x])

    def offset(minus: float, plus: float) -> float:
        curvature = minus - 2 * value + plus
        return 0.0 if curvature >= 0 else max(-0.5, min(0.5, 0.5 * (minus - plus) / curvature))

    dy = offset(surface[y - 1, x], surface[y + 1, x]) if 0 < y < surface.shape[0] - 1 else 0.0
    dx = offset(surface[y, x - 1], surface[y, x + 1]) if 0 < x < surface.shape[1] - 1 else 0.0
    return y + dy, x + dx, value


def search_box(
    picture: np.ndarray, upload: Image.Image, widths: Iterable[float], near: Box | None = None
) -> tuple[Box, float]:
    """Best box (fractions of picture) showing upload, among box widths (fractions).

    picture is the local photo in grayscale at the working size; near limits the search
    to a few pixels around an earlier estimate.
    """
    work_h, work_w = picture.shape
    aspect = upload.height / upload.width
    small = upload.convert("L")
    sizes = [(w * work_w, (round(w * work_w), round(w * work_w * aspect))) for w in widths]
    sizes = [(w, size) for w, size in sizes if min(size) >= 8 and size[0] <= work_w]
    sizes = [(w, size) for w, size in sizes if size[1] <= work_h]
    if not sizes:
        return ((0.0, 0.0, 1.0, 1.0), -2.0)
    left, top = 0, 0
    if near is not None:  # one region, big enough for every width, around the estimate
        widest = max(size[0] for _, size in sizes)
        tallest = max(size[1] for _, size in sizes)
        margin = 3 + max(abs(size[0] - (near[2] - near[0]) * work_w) for _, size in sizes)
        left = max(0, int(near[0] * work_w - margin))
        top = max(0, int(near[1] * work_h - margin))
        right = min(work_w, math.ceil(near[0] * work_w + widest + margin) + 1)
        bottom = min(work_h, math.ceil(near[1] * work_h + tallest + margin) + 1)
        picture = picture[top:bottom, left:right]
    correlator = Correlator(picture)
    best: tuple[Box, float] = ((0.0, 0.0, 1.0, 1.0), -2.0)
    for box_w, size in sizes:
        template = np.asarray(small.resize(size, Image.Resampling.BILINEAR), np.float64)
        y, x, value = _subpixel_peak(correlator.ncc(template))
        if value > best[1]:
            x0, y0 = (x + left) / work_w, (y + top) / work_h
            # Sub-pixel peaks can reach a hair past the edge; a box never leaves the picture.
            box = (x0, y0, x0 + box_w / work_w, y0 + size[1] / work_h)
            best = (tuple(min(max(float(v), 0.0), 1.0) for v in box), value)  # type: ignore[assignment]
    return best


def coarse_alignment(local_small: np.ndarray, upload_small: Image.Image) -> tuple[Alignment, float]:
    """The best crop and quarter turn at thumbnail size, with its correlation (the pre-filter)."""
    best: tuple[Alignment, float] = (Alignment((0.0, 0.0, 1.0, 1.0)), -2.0)
    local_aspect = local_small.shape[0] / local_small.shape[1]
    for turns in range(4):
        candidate = turned(upload_small, turns)
        fit = min(1.0, local_aspect / (candidate.height / candidate.width))
        widths = [fit * f for f in np.linspace(1.0, SMALLEST_CROP, 9)]
        box, value = search_box(local_small, candidate, widths)
        if value > best[1]:
            best = (Alignment(box, turns), value)
    return best


def refine_alignment(local: Image.Image, upload: Image.Image, rough: Alignment) -> Alignment:
    """Sharpen a coarse alignment to a fraction of a pixel at the upload's own size."""
    upright = turned(upload, rough.turns)
    box = rough.box
    for side, step in ((480, 0.01), (max(upright.size) / max(box[2] - box[0], 0.05), 0.0025)):
        picture = grayscale(local, min(side, max(local.size)))
        width = box[2] - box[0]
        steps = range(-4, 5) if step > 0.005 else range(-2, 3)
        box, _ = search_box(picture, upright, [width * (1 + step * k) for k in steps], box)
    return Alignment(box, rough.turns)


@dataclass(frozen=True)
class Gate:
    """The cheap thumbnail check of a pair: where the upload may sit and how well it fits."""

    alignment: Alignment
    correlation: float
    upload_small: Image.Image

    @property
    def passed(self) -> bool:
        return self.correlation >= ALIGN_GATE


def gate_pair(local_thumbnail: Image.Image, upload: Image.Image) -> Gate:
    """The best crop and quarter turn at thumbnail size, with its correlation."""
    scale = ALIGN_SIDE / max(upload.size)
    upload_small = upload.resize(
        (max(1, round(upload.width * scale)), max(1, round(upload.height * scale))),
        Image.Resampling.BILINEAR,
    )
    rough, correlation = coarse_alignment(grayscale(local_thumbnail, ALIGN_SIDE), upload_small)
    return Gate(rough, correlation, upload_small)


def gated_out(local_thumbnail: Image.Image, gate: Gate, score: ScoreFunction) -> Comparison:
    """The score shown for a pair the gate rejected: thumbnails compared as they are."""
    quick = local_thumbnail.resize(gate.upload_small.size, Image.Resampling.BILINEAR)
    value = score(np.asarray(quick), np.asarray(gate.upload_small.convert("RGB")))
    return Comparison(value, None, prefiltered=True)


def compare_pictures(
    local: Image.Image,
    upload: Image.Image,
    rough: Alignment,
    threshold: float,
    score: ScoreFunction,
) -> Comparison:
    """Score an upload against the upright local picture, as a whole or where it sits in it."""
    best = Comparison(-1.0)
    if rough.whole:
        whole = local.resize(upload.size, Image.Resampling.BILINEAR)
        best = Comparison(score(np.asarray(whole), np.asarray(upload)))
        if best.score >= threshold:
            return best
    alignment = refine_alignment(local, upload, rough)
    upright = turned(upload, alignment.turns)
    left, top, right, bottom = alignment.box
    region = local.resize(
        upright.size,
        Image.Resampling.BILINEAR,
        box=(left * local.width, top * local.height, right * local.width, bottom * local.height),
    )
    aligned = Comparison(score(np.asarray(region), np.asarray(upright)), alignment)
    return aligned if aligned.score > best.score else best


Pairs = dict[tuple[int, int], Comparison]  # (photo index, candidate index) -> comparison


class PairScorer:
    """The compare function matching is given: pictures from a PictureSource, scored in parallel.

    Calling it with photos and candidates returns a Comparison for every pair whose pictures
    could be had; likely() returns the gate's verdict alone, for the clock-offset search.
    """

    def __init__(self, pictures: PictureSource, threshold: float, score: ScoreFunction) -> None:
        self.pictures = pictures
        self.threshold = threshold
        self.score = score

    def _gate(self, photo: LocalPhoto, candidate: Candidate) -> tuple[Image.Image, Gate] | None:
        upload = self.pictures.upload(candidate.photo)
        thumbnail = self.pictures.local_thumbnail(photo) if upload is not None else None
        if upload is None or thumbnail is None:
            return None
        return thumbnail, gate_pair(thumbnail, upload)

    def compare(self, photo: LocalPhoto, candidate: Candidate) -> Comparison | None:
        """One pair: the gate first, the full comparison only for pairs that pass it."""
        gated = self._gate(photo, candidate)
        if gated is None:
            return None
        thumbnail, gate = gated
        if not gate.passed:
            return gated_out(thumbnail, gate, self.score)
        local = self.pictures.local(photo)
        upload = self.pictures.upload(candidate.photo)
        if local is None or upload is None:
            return None
        return compare_pictures(local, upload, gate.alignment, self.threshold, self.score)

    def _each_pair(
        self, photos: Sequence[LocalPhoto], candidates: Sequence[Candidate], work: Callable
    ) -> dict[tuple[int, int], Any]:
        pairs = [(i, j) for i in range(len(photos)) for j in range(len(candidates))]
        with ThreadPoolExecutor(max_workers=COMPARE_WORKERS) as pool:
            results = pool.map(lambda pair: work(photos[pair[0]], candidates[pair[1]]), pairs)
            done = list(progress(results, "Comparing", len(pairs)))
        return {
            pair: result for pair, result in zip(pairs, done, strict=True) if result is not None
        }

    def __call__(self, photos: Sequence[LocalPhoto], candidates: Sequence[Candidate]) -> Pairs:
        self.pictures.fetch(candidates)
        try:
            return self._each_pair(photos, candidates, self.compare)
        finally:
            self.pictures.forget_locals()

    def likely(
        self, photos: Sequence[LocalPhoto], candidates: Sequence[Candidate]
    ) -> dict[tuple[int, int], bool]:
        """The gate's verdict for every pair whose pictures could be had."""
        self.pictures.fetch(candidates)

        def verdict(photo: LocalPhoto, candidate: Candidate) -> bool | None:
            gated = self._gate(photo, candidate)
            return None if gated is None else gated[1].passed

        return self._each_pair(photos, candidates, verdict)


# ---------------------------------------------------------------------------
# 8. Matching
#    Pure decisions: clusters of photos taken close in time, the one-to-one
#    assignment inside a cluster, camera-clock offsets, and match_day, which puts
#    them together. The compare function is passed in; nothing here does I/O.
# ---------------------------------------------------------------------------

Compare = Callable[[Sequence[LocalPhoto], Sequence[Candidate]], Pairs]
Likely = Callable[[Sequence[LocalPhoto], Sequence[Candidate]], dict[tuple[int, int], bool]]
CheckedBefore = Callable[[LocalPhoto, Sequence[int]], bool]

COMPARED_BEFORE = "compared in vain with the same uploads before"
BELOW_THRESHOLD = "below the similarity threshold"
TAKEN_BY_ANOTHER = "best candidate, associated with another photo"
NO_CANDIDATE = "no iNaturalist photo within the cluster threshold"


def cluster_by_time(
    local_photos: Sequence[LocalPhoto], candidates: Sequence[Candidate], threshold: int
) -> list[Cluster]:
    """Single-linkage clusters: an item joins if it lies within threshold s of a member.

    iNaturalist times without seconds stand for the whole minute, so they span MINUTE_SPAN.
    Candidates without a time are left out; the caller compares them with the whole day.
    """
    items: list[tuple[dt.datetime, dt.datetime, LocalPhoto | Candidate]] = []
    for photo in local_photos:
        items.append((photo.corrected_time, photo.corrected_time, photo))
    for candidate in candidates:
        start = candidate.observation.observed_at
        if start is None:
            continue
        span = MINUTE_SPAN if candidate.observation.minute_precision else 0
        items.append((start, start + dt.timedelta(seconds=span), candidate))
    items.sort(key=lambda item: (item[0], item[1]))
    groups: list[tuple[list[LocalPhoto], list[Candidate]]] = []
    reach: dt.datetime | None = None
    for start, end, item in items:
        if reach is None or (start - reach).total_seconds() > threshold:
            groups.append(([], []))
            reach = end
        reach = max(reach, end)
        if isinstance(item, LocalPhoto):
            groups[-1][0].append(item)
        else:
            groups[-1][1].append(item)
    return [Cluster(tuple(photos), tuple(found)) for photos, found in groups]


def seconds_apart(photo: LocalPhoto, observation: Observation) -> int | None:
    """Whole seconds between the photo and the observation's recorded time."""
    if observation.observed_at is None:
        return None
    return round(abs((photo.corrected_time - observation.observed_at).total_seconds()))


TIE_MARGIN = 0.005  # two local photos this close for one upload: too close to choose


SAME_AREA = 0.03  # uploads whose areas of one local photo differ less show the same part


def _optimal_pairs(valid: Mapping[tuple[int, int], float]) -> dict[int, int]:
    """local -> upload maximising the total score over valid pairs (one-to-one)."""
    from scipy.optimize import linear_sum_assignment

    if not valid:
        return {}
    locals_ = sorted({local for local, _ in valid})
    uploads = sorted({upload for _, upload in valid})
    row = {local: i for i, local in enumerate(locals_)}
    column = {upload: j for j, upload in enumerate(uploads)}
    matrix = np.zeros((len(locals_), len(uploads)))
    for (local, upload), score in valid.items():
        matrix[row[local], column[upload]] = score
    rows, columns = linear_sum_assignment(matrix, maximize=True)
    return {locals_[r]: uploads[c] for r, c in zip(rows, columns, strict=True) if matrix[r, c] > 0}


def assign_uploads(
    scores: Mapping[tuple[int, int], float],
    areas: Mapping[tuple[int, int], float],
    threshold: float,
    upload_order: Sequence[Any] = (),
) -> list[Decision]:
    """Pair (local, upload) indices one-to-one, maximising the total score above threshold.

    An upload whose two best local photos score within TIE_MARGIN is refused. When one local
    photo is the source of several uploads it takes the one showing most of it (then the
    higher score, then the first upload); the others are reported as parts of it.
    """

    def order(upload: int) -> Any:
        return upload_order[upload] if upload < len(upload_order) else upload

    valid = {pair: score for pair, score in scores.items() if score >= threshold}
    decisions: list[Decision] = []
    for upload in sorted({u for _, u in valid}):
        ranked = sorted(
            ((s, local) for (local, u), s in valid.items() if u == upload), reverse=True
        )
        best, local = ranked[0]
        rivals = tuple(sorted(other for s, other in ranked[1:] if best - s <= TIE_MARGIN))
        if rivals:
            decisions.append(Decision(upload, local, best, "tie", rivals))
    refused = {d.upload_index for d in decisions}
    valid = {pair: s for pair, s in valid.items() if pair[1] not in refused}
    taken = _optimal_pairs(valid)

    def prefer(upload: int, over: int, local: int) -> bool:
        area, rival_area = areas.get((local, upload), 1.0), areas.get((local, over), 1.0)
        if abs(area - rival_area) > SAME_AREA:
            return area > rival_area
        score, rival_score = valid[(local, upload)], valid[(local, over)]
        if abs(score - rival_score) > TIE_MARGIN:
            return score > rival_score
        return order(upload) < order(over)

    upload_of = dict(taken)
    waiting = sorted({u for _, u in valid} - set(upload_of.values()), key=order)
    parts: dict[int, int] = {}
    budget = len(valid) ** 2  # prefer() tolerates small differences: never loop for ever
    while waiting and budget > 0:
        budget -= 1
        upload = waiting.pop(0)
        _, local = max((s, local) for (local, u), s in valid.items() if u == upload)
        if local not in upload_of:
            upload_of[local] = upload
        elif prefer(upload, upload_of[local], local):
            waiting.append(upload_of[local])
            upload_of[local] = upload
        else:
            parts[upload] = local
    for local, upload in upload_of.items():
        parts.pop(upload, None)
        decisions.append(Decision(upload, local, valid[(local, upload)]))
    for upload, local in parts.items():
        decisions.append(Decision(upload, local, valid[(local, upload)], "part"))
    return sorted(decisions, key=lambda d: (d.upload_index, d.kind))


def match_cluster(cluster: Cluster, compare: Compare, threshold: float) -> ClusterOutcome:
    """Compare every pair of the cluster and decide: associations, ties, parts, refusals."""
    comparisons = compare(cluster.photos, cluster.candidates)
    scores = {pair: c.score for pair, c in comparisons.items()}
    areas = {pair: c.alignment.area if c.alignment else 1.0 for pair, c in comparisons.items()}
    order = [c.photo.id for c in cluster.candidates]
    associations: list[Association] = []
    ties: list[Tie] = []
    parts: list[Association] = []
    decided: set[int] = set()
    for decision in assign_uploads(scores, areas, threshold, order):
        candidate = cluster.candidates[decision.upload_index]
        comparison = comparisons[(decision.local_index, decision.upload_index)]
        photo = cluster.photos[decision.local_index]
        if decision.kind == "tie":
            indices = (decision.local_index, *decision.rivals)
            ties.append(
                Tie(
                    candidate,
                    tuple(cluster.photos[i] for i in indices),
                    tuple(comparisons[(i, decision.upload_index)] for i in indices),
                    decision.score,
                )
            )
            decided.update(indices)
        elif decision.kind == "part":
            parts.append(Association(photo, candidate, comparison))
        else:
            associations.append(Association(photo, candidate, comparison))
            decided.add(decision.local_index)
    taken = {a.candidate.photo.id for a in associations}
    associated = {a.photo.path for a in associations}
    refusals = []
    checked = []
    for i, photo in enumerate(cluster.photos):
        tried = [(c.score, j) for (li, j), c in comparisons.items() if li == i]
        if photo.path not in associated and tried:
            uploads = frozenset(cluster.candidates[j].photo.id for _, j in tried)
            checked.append((photo.path, uploads))
        if i in decided or not tried:
            continue
        _, j = max(tried)
        candidate = cluster.candidates[j]
        reason = TAKEN_BY_ANOTHER if candidate.photo.id in taken else BELOW_THRESHOLD
        refusals.append(Refusal(photo, candidate, comparisons[(i, j)], reason))
    return ClusterOutcome(
        tuple(associations), tuple(ties), tuple(parts), tuple(refusals), tuple(checked)
    )


OFFSET_STEP = dt.timedelta(minutes=15)  # clock errors come in hours, half and quarter hours


MAX_OFFSET = dt.timedelta(hours=26)


MIN_OFFSET_MATCHES = 2  # an offset that only one match supports is never applied


def find_clock_offset(
    photos: Sequence[LocalPhoto],
    candidates: Sequence[Candidate],
    likely: Mapping[tuple[int, int], bool],
    compare: Compare,
    threshold: float,
    cluster_threshold: int,
) -> dt.timedelta | None:
    """A camera-clock error that lines up at least two strong matches on one day, or None.

    likely holds the thumbnail gate's verdict for (photo, candidate) index pairs; those
    pairs vote for the offset (rounded to a quarter hour) their times imply. The offset with
    the most votes must then be confirmed by full scores above the threshold.
    """
    if len(photos) < MIN_OFFSET_MATCHES:
        return None
    votes: dict[dt.timedelta, list[tuple[LocalPhoto, Candidate]]] = defaultdict(list)
    for (i, j), same in sorted(likely.items()):
        photo, candidate = photos[i], candidates[j]
        observed = candidate.observation.observed_at
        if not same or observed is None:
            continue
        if candidate.observation.minute_precision:
            observed += dt.timedelta(seconds=30)
        ahead = photo.corrected_time - observed
        offset = round(ahead / OFFSET_STEP) * OFFSET_STEP
        if (
            offset
            and abs(offset) <= MAX_OFFSET
            and abs(ahead - offset).total_seconds() <= cluster_threshold
        ):
            votes[offset].append((photo, candidate))
    for offset, supporting in sorted(votes.items(), key=lambda kv: -len(kv[1])):
        if len({p.path for p, _ in supporting}) < MIN_OFFSET_MATCHES:
            break
        confirmed = [
            (p.path, c.photo.id)
            for p, c in supporting
            if (found := compare([p], [c]).get((0, 0))) and found.score >= threshold
        ]
        if (
            min(len({a for a, _ in confirmed}), len({b for _, b in confirmed}))
            >= MIN_OFFSET_MATCHES
        ):
            return offset
    return None


def _match_clusters(
    photos: Sequence[LocalPhoto],
    candidates: Sequence[Candidate],
    compare: Compare,
    options: Options,
    checked_before: CheckedBefore | None,
) -> ClusterOutcome:
    """Match each cluster of the day, then the untimed candidates against what is left."""
    outcomes: list[ClusterOutcome] = []
    skipped: list[Refusal] = []

    def match(cluster: Cluster) -> None:
        uploads = [c.photo.id for c in cluster.candidates]
        if not cluster.photos or not uploads:
            return
        fresh = tuple(
            p for p in cluster.photos if checked_before is None or not checked_before(p, uploads)
        )
        skipped.extend(
            Refusal(p, None, None, COMPARED_BEFORE) for p in cluster.photos if p not in fresh
        )
        if fresh:
            outcomes.append(
                match_cluster(Cluster(fresh, cluster.candidates), compare, options.ssim_threshold)
            )

    for cluster in cluster_by_time(photos, candidates, options.cluster_threshold):
        match(cluster)
    untimed = tuple(c for c in candidates if c.observation.observed_at is None)
    if untimed:  # an observation without a time may belong to any photo of its day
        taken = {a.photo.path for o in outcomes for a in o.associations}
        match(Cluster(tuple(p for p in photos if p.path not in taken), untimed))
    associations = tuple(a for o in outcomes for a in o.associations)
    associated = {a.photo.path for a in associations}
    refusals = [
        r
        for r in (*skipped, *(r for o in outcomes for r in o.refusals))
        if r.photo.path not in associated
    ]
    tied = {p.path for o in outcomes for t in o.ties for p in t.photos}
    accounted = associated | tied | {r.photo.path for r in refusals}
    refusals += [Refusal(p, None, None, NO_CANDIDATE) for p in photos if p.path not in accounted]
    checked: dict[Path, frozenset[int]] = defaultdict(frozenset)
    for path, uploads in (c for o in outcomes for c in o.checked):
        if path not in associated:
            checked[path] |= uploads
    return ClusterOutcome(
        associations,
        tuple(t for o in outcomes for t in o.ties),
        tuple(p for o in outcomes for p in o.parts),
        tuple(refusals),
        tuple(checked.items()),
    )


def match_day(
    day: dt.date,
    photos: Sequence[LocalPhoto],
    candidates: Sequence[Candidate],
    compare: Compare,
    options: Options,
    *,
    likely: Likely,
    checked_before: CheckedBefore,
    known_today: bool = False,
) -> DayOutcome:
    """Match one day's open photos with its open candidates.

    Photos compared in vain with the same uploads before are skipped (unless --recompute).
    When nothing matches on a day without known associations, a camera-clock offset is
    looked for and, if found, the day is matched again with it.
    """
    skip = None if options.recompute else checked_before
    result = _match_clusters(photos, candidates, compare, options, skip)
    offset = None
    day_uploads = [c.photo.id for c in candidates]
    now_checked = dict(result.checked)
    unchecked = options.recompute or any(
        not checked_before(p, day_uploads)
        and not set(day_uploads) <= now_checked.get(p.path, set())
        for p in photos
    )
    if (
        photos
        and candidates
        and not result.associations
        and not known_today
        and unchecked
        and options.time_offset is None
    ):
        timed = [c for c in candidates if c.observation.observed_at is not None]
        verdicts = likely(photos, timed)
        offset = find_clock_offset(
            photos, timed, verdicts, compare, options.ssim_threshold, options.cluster_threshold
        )
        if offset is not None:
            shifted = [dataclasses.replace(p, clock_error=offset) for p in photos]
            result = _match_clusters(shifted, candidates, compare, options, None)
        else:  # every upload of the day was tried with every photo: remember that
            tried: dict[Path, frozenset[int]] = dict(result.checked)
            for i, j in verdicts:
                tried[photos[i].path] = tried.get(photos[i].path, frozenset()) | {timed[j].photo.id}
            result = dataclasses.replace(result, checked=tuple(tried.items()))
    taken = {a.candidate.photo.id for a in result.associations + result.parts}
    return DayOutcome(
        day,
        result.associations,
        result.ties,
        result.parts,
        result.refusals,
        tuple(c for c in candidates if c.photo.id not in taken),
        offset,
        result.checked,
    )


# ---------------------------------------------------------------------------
# 9. Writing
#    The one place that changes a photo. plan_update decides, purely, what a photo
#    should hold (ids, and the caption keyword that replaces only the one this tool
#    wrote); write_update writes it through exiv2 into a copy that then replaces
#    the original atomically.
# ---------------------------------------------------------------------------


def register_namespace() -> None:
    import pyexiv2

    pyexiv2.set_log_level(4)  # exiv2's own warnings are noise; we report failures ourselves
    with contextlib.suppress(Exception):  # already registered in this process
        pyexiv2.registerNs(INAT_NAMESPACE, INAT_PREFIX)


def updated_keywords(keywords: Sequence[str], old: str | None, new: str) -> list[str]:
    """Replace the tool's previous caption with new; every other keyword stays in place."""
    result = list(keywords)
    if old is not None and old in result:
        result[result.index(old)] = new
    elif new not in result:
        result.append(new)
    seen: set[str] = set()
    return [k for k in result if not (k in seen or seen.add(k))]  # type: ignore[func-returns-value]


def owned_caption(photo: LocalPhoto, history: Collection[str]) -> str | None:
    """The keyword this tool wrote into photo, which it may replace; None when unknown.

    Files written by this version name it in TAG_CAPTION. For older files a keyword counts
    only if the observation once had it as its caption; anything else is the user's.
    """
    if photo.written_caption is not None:
        return photo.written_caption if photo.written_caption in photo.keywords else None
    if photo.tags is None:
        return None
    return next((k for k in photo.keywords if k in history), None)


@dataclass(frozen=True)
class Update:
    """What to write into one photo: new ids and/or a new keyword list, or (dissociate=True)
    the removal of this tool's ids and caption note, marking the file dissociated."""

    photo: LocalPhoto
    tags: InatTags | None  # None: the ids stay as they are
    keywords: tuple[str, ...] | None  # None: dc:subject stays as it is
    old_caption: str | None  # the keyword of ours that the caption replaces (or removes)
    caption: str | None
    dissociate: bool | None = None  # True: remove our ids, mark; False: clear the mark

    def applied(self) -> LocalPhoto:
        """The photo as it reads once the update is written."""
        photo = self.photo
        if self.dissociate is not None:
            photo = dataclasses.replace(photo, dissociated=self.dissociate)
        if self.dissociate:
            photo = dataclasses.replace(photo, tags=None, written_caption=None)
        elif self.tags is not None:
            photo = dataclasses.replace(photo, tags=self.tags)
        if self.keywords is None:
            return photo
        return dataclasses.replace(photo, keywords=self.keywords, written_caption=self.caption)


def plan_update(
    photo: LocalPhoto, tags: InatTags | None, history: Collection[str], caption: str | None
) -> Update | None:
    """What must change so that photo holds tags and caption; None when nothing must."""
    keywords = None
    old_caption = None
    if caption is not None:
        old_caption = owned_caption(photo, history)
        # The user removed our keyword and the identification is the same: leave it out.
        removed_by_user = photo.written_caption == caption and old_caption is None
        if old_caption != caption and not removed_by_user:
            keywords = tuple(updated_keywords(photo.keywords, old_caption, caption))
    new_tags = tags if tags is not None and tags != photo.tags else None
    # Associated again (--associate, or matched under --recompute): the user's earlier
    # --dissociate no longer holds.
    undo = False if tags is not None and photo.dissociated else None
    if new_tags is None and keywords is None and undo is None:
        return None
    return Update(photo, new_tags, keywords, old_caption, caption, undo)


def plan_dissociation(photo: LocalPhoto, history: Collection[str]) -> Update | None:
    """What removes this tool's ids and caption from photo, keeping every keyword of the user's;
    None when the photo is already dissociated and holds nothing of ours."""
    owned = owned_caption(photo, history)
    keywords = tuple(k for k in photo.keywords if k != owned) if owned is not None else None
    if photo.dissociated and photo.tags is None and keywords is None:
        return None
    return Update(photo, None, keywords, owned, None, dissociate=True)


def write_update(update: Update) -> None:
    """Write an update into its photo atomically; raises OSError when it cannot be done."""
    keywords = list(update.keywords) if update.keywords is not None else None
    write_photo_metadata(
        update.photo.path, update.tags, keywords, update.caption, dissociated=update.dissociate
    )


def write_photo_metadata(
    path: Path,
    tags: InatTags | None,
    keywords: list[str] | None,
    caption: str | None = None,
    *,
    dissociated: bool | None = None,
) -> None:
    """Write iNaturalist ids and/or dc:subject (with the caption it now holds) into path
    atomically; dissociated=True deletes the ids and the caption note and marks the file,
    False clears the mark. Raises OSError on failure."""
    import pyexiv2

    changes: dict[str, Any] = {}
    if dissociated:
        for tag in (TAG_OBSERVATION, TAG_OBSERVATION_PHOTO, TAG_PHOTO, TAG_CAPTION):
            changes[tag] = None  # pyexiv2 deletes a property set to None
        changes[TAG_DISSOCIATED] = "True"
    elif dissociated is not None:
        changes[TAG_DISSOCIATED] = None
    if tags is not None:
        changes[TAG_OBSERVATION] = str(tags.observation)
        changes[TAG_OBSERVATION_PHOTO] = (
            str(tags.observation_photo) if tags.observation_photo else None
        )
        changes[TAG_PHOTO] = str(tags.photo) if tags.photo else None
    if keywords is not None:
        changes[TAG_SUBJECT] = keywords or None  # no keyword left: no empty dc:subject
        changes[TAG_CAPTION] = caption
    if not os.access(path, os.W_OK):  # the rename below would replace it all the same
        raise OSError("the file is read-only")
    original = path.read_bytes()
    try:
        image = pyexiv2.ImageData(original)
        try:
            image.modify_xmp(changes)
            updated = image.get_bytes()
        finally:
            image.close()
        check = pyexiv2.ImageData(updated)  # never replace a photo with something unreadable
        try:
            written = check.read_xmp()
        finally:
            check.close()
    except RuntimeError as error:
        raise OSError(f"exiv2 could not update the metadata ({error})") from None
    if tags is not None and parse_positive_int(written.get(TAG_OBSERVATION)) != tags.observation:
        raise OSError("the metadata did not read back as written")
    if dissociated and (TAG_OBSERVATION in written or TAG_DISSOCIATED not in written):
        raise OSError("the metadata did not read back as written")
    if _jpeg_exif(original) is not None and _jpeg_exif(updated) is None:
        raise OSError("exiv2 cannot read the EXIF block and would drop it")
    replace_file_atomically(path, updated)


def _jpeg_exif(data: bytes) -> bytes | None:
    """The APP1 Exif segment of a JPEG; None for other formats or when there is none."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] not in (0xD9, 0xDA):
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] == 0xE1 and data[at + 4 : at + 10] == b"Exif\0\0":
            return data[at : at + 2 + length]
        at += 2 + length
    return None


def replace_file_atomically(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write data (bytes, or pieces of them) beside path, flush it to disk, keep path's
    permissions, then rename over it."""
    directory = path.parent
    fd, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        original = path.stat()
        os.chmod(temporary, stat.S_IMODE(original.st_mode))
        with contextlib.suppress(OSError):  # only root may give a file away
            os.chown(temporary, original.st_uid, original.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # directories cannot be fsynced everywhere
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def replace_or_create(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write a file we own (the log) atomically whether or not it exists yet."""
    if not path.exists():
        path.write_bytes(b"")
    replace_file_atomically(path, data)


# ---------------------------------------------------------------------------
# 10. Reporting
#    The console, the lines it prints, the Tally of what changed, and the HTML log:
#    rows built from outcomes (thumbnails only when a log is written), one
#    self-contained page with every piece of text escaped.
# ---------------------------------------------------------------------------


class Console:
    """Prints messages and keeps count of the problems reported."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.file_errors = 0
        self.errors: list[tuple[Path, str]] = []  # for the HTML log's Errors section

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"Warning: {message}", file=sys.stderr, flush=True)

    def file_error(self, path: Path, reason: str) -> None:
        """Report a file that could not be read or written; the run goes on."""
        self.file_errors += 1
        self.errors.append((path, reason))
        print(f"Error: {show_path(path)}: {reason}", file=sys.stderr, flush=True)


def progress(iterable: Iterable[Any], description: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm progress bar on a terminal, the plain iterable otherwise (cron mail stays clean)."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=description,
        total=total,
        leave=False,
        unit="photo",
        disable=total is not None and total < 2,
    )


@dataclass
class Tally:
    """What the run found and changed, for the summary line."""

    annotations_added: int = 0
    annotations_modified: int = 0
    identifications_added: int = 0
    identifications_modified: int = 0
    local_photos: int = 0
    associated_locals: set[Path] = field(default_factory=set)
    associated_uploads: set[int] = field(default_factory=set)
    part_uploads: set[int] = field(default_factory=set)
    uploads_seen: set[int] = field(default_factory=set)  # uploads on the days of local photos

    def count(self, update: Update) -> None:
        """Count a written (or, in a dry run, planned) update."""
        if update.tags is not None:
            if update.photo.tags is None:
                self.annotations_added += 1
            else:
                self.annotations_modified += 1
        if update.keywords is not None:
            if update.old_caption is None:
                self.identifications_added += 1
            else:
                self.identifications_modified += 1


def summary_line(tally: Tally, seconds: float, dry_run: bool) -> str:
    """The closing line, worded as the original tool worded it."""
    identifications = ""
    if tally.identifications_added or tally.identifications_modified:
        identifications = (
            f"; {tally.identifications_added} identifications added,"
            f" {tally.identifications_modified} modified"
        )
    locals_left = tally.local_photos - len(tally.associated_locals)
    uploads_left = len(tally.uploads_seen - tally.associated_uploads - tally.part_uploads)
    summary = (
        f"Summary: {tally.annotations_added} iNaturalist annotations added,"
        f" {tally.annotations_modified} modified{identifications} in"
        f" {round(seconds)} seconds. {locals_left} local photos"
        f" and {uploads_left} iNaturalist photos without known association."
    )
    return summary + (" Dry run: no file was changed." if dry_run else "")


def describe_distance(photo: LocalPhoto, observation: Observation) -> str:
    """'72.38 meters'-style distance text: a number, 'obscured' or 'n/a'."""
    if observation.obscured:
        return "obscured"
    if photo.location is None or observation.location is None:
        return "n/a"
    return f"{distance_m(photo.location, observation.location):.2f}"


def _distance_words(distance: str) -> str:
    return distance if distance in ("obscured", "n/a") else f"{distance} meters"


def found_line(association: Association) -> str:
    """The console line for a new association."""
    photo, candidate, comparison = association.photo, association.candidate, association.comparison
    observation = candidate.observation
    seconds = seconds_apart(photo, observation)
    described = "without caption" if photo.caption is None else f"with caption '{photo.caption}'"
    how = comparison.alignment.describe() if comparison.alignment else ""
    return (
        f"'{show_path(photo.path)}' {described} found for photo id {candidate.photo.id};"
        f" {observation.identification}, time from observation "
        f"{'n/a' if seconds is None else seconds} secs, distance from observation "
        f"{_distance_words(describe_distance(photo, observation))}, similarity"
        f" {comparison.score * 100:.1f}%{f' ({how})' if how else ''}."
    )


def update_line(update: Update, dry_run: bool) -> str:
    """The console line for a caption written (or, in a dry run, to be written)."""
    prefix = "(dry run) " if dry_run else ""
    return (
        f"{prefix}{show_path(update.photo.path)}: Updating subject from '{update.old_caption}'"
        f" to '{update.caption}'."
    )


def tie_line(tie: Tie) -> str:
    names = " and ".join(f"'{show_path(p.path)}'" for p in tie.photos)
    return (
        f"Not associated: photo id {tie.candidate.photo.id} fits {names} almost equally"
        f" well (similarity {tie.score * 100:.1f}%); too close to choose."
    )


def part_message(candidate: Candidate, path: Path, area: float) -> str:
    """The console line for an upload that shows part of an associated local photo."""
    photo, observation = candidate.photo, candidate.observation
    upload = (
        f"Photo id {photo.id}, {ordinal(photo.position)} photo of observation {observation.url},"
    )
    if area >= WHOLE_AREA:
        return (
            f"{upload} shows the same picture as '{show_path(path)}', which is associated with"
            " another upload of it."
        )
    return (
        f"{upload} shows part of '{show_path(path)}' ({area * 100:.0f}% of its area), which is"
        " associated with an upload showing more of it."
    )


def _part_note(area: float) -> str:
    if area >= WHOLE_AREA:
        return "the same picture as another upload associated with this photo"
    return f"shows {area * 100:.0f}% of this photo, which took an upload showing more of it"


def unassociated_line(candidate: Candidate) -> str:
    photo, observation = candidate.photo, candidate.observation
    return (
        f"Not associated with a local picture: photo id {photo.id},"
        f" {ordinal(photo.position)} photo of observation {observation.url},"
        f" {observation.identification}."
    )


def gone_line(photo: LocalPhoto) -> str:
    observation = photo.tags.observation if photo.tags else None
    return (
        f"{show_path(photo.path)}: observation {observation} is no longer"
        " on iNaturalist; its tags are left as they are."
    )


def offset_line(day: dt.date, offset: dt.timedelta) -> str:
    return f"{day}: camera clock appears {describe_offset(offset)}; matched with that offset"


LOG_SECTIONS = {  # key -> heading, in the order the page shows them
    "new": "New associations",
    "changed": "Changed captions",
    "refused": "Refusals",
    "tie": "Ties",
    "lone": "iNaturalist photos without a local photo",
    "error": "Errors",
    "offset": "Clock offsets",
    "known": "Known, unchanged",
}


# Why a photo is counted, not listed, in a rerun's log: an earlier log showed it, unchanged.
UNLISTED_COMPARED = "Compared in vain before with the same uploads"
UNLISTED_NO_CANDIDATE = "Still without an iNaturalist photo near its time"


# A refusal this close below the threshold (or a tie) is a near miss: after the run that found
# it, it is listed with the known rows, with its command, run after run, until the user
# confirms it (--associate) or sets the file aside (--dissociate). Farther ones are listed
# once, then counted.
NEAR_MISS = 0.10


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail JPEG in the thumbnail cache, and the box (a crop) to outline on it."""

    file: Path
    outline: Box | None = None


@dataclass
class LogRow:
    """One line of the HTML log, in one of LOG_SECTIONS."""

    section: str
    local: LocalPhoto | None = None
    local_thumbnail: Thumbnail | None = None
    candidate: Candidate | None = None
    inat_thumbnail: Thumbnail | None = None
    seconds: int | None = None
    distance: str = "n/a"
    score: float | None = None
    note: str = ""
    day: dt.date | None = None
    command: str = ""  # the command line that confirms this pairing (refusals, ties)


@dataclass
class LogBook:
    """What the HTML log will show, collected while the run goes on."""

    rows: list[LogRow] = field(default_factory=list)
    unlisted: Counter[str] = field(default_factory=Counter)  # reason -> photos, not listed


class ThumbnailCache:
    """The log's thumbnails on disk: local photos keyed by path, size and modification time,
    uploads by photo id and size. A rerun makes thumbnails only for what is new."""

    def __init__(self, cache: Path) -> None:
        self.folder = cache / "thumbnails"

    def local_file(self, photo: LocalPhoto) -> Path | None:
        key = LocalIndex._key(photo.path)
        if key is None:
            return None
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:24]
        return self.folder / "local" / digest[:2] / f"{digest}.jpg"

    def upload_file(self, photo_id: int, size: str) -> Path:
        return self.folder / "inat" / size / f"{photo_id}.jpg"

    def save(self, target: Path, picture: Image.Image) -> bool:
        """Store picture reduced to a thumbnail (a new JPEG; the photo itself is only read)."""
        small = picture.convert("RGB")  # always a copy: the caller's picture stays as it is
        small.thumbnail((HTML_THUMBNAIL, HTML_THUMBNAIL))
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=HTML_THUMBNAIL_QUALITY)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
            with os.fdopen(fd, "wb") as handle:
                handle.write(buffer.getvalue())
            os.replace(temporary, target)
        except OSError:  # a full or read-only cache costs the log a picture, nothing more
            return False
        return True


class LogThumbnails:
    """Thumbnails for log rows: from the thumbnail cache, else made from the pictures the run
    decoded or the uploads already downloaded (never a download for the log)."""

    def __init__(self, pictures: PictureSource, store: ThumbnailCache) -> None:
        self.pictures = pictures
        self.store = store

    def local(self, photo: LocalPhoto, outline: Box | None = None) -> Thumbnail | None:
        target = self.store.local_file(photo)
        if target is None:
            return None
        if not target.exists():
            picture = self.pictures.local_thumbnail(photo)
            if picture is None or not self.store.save(target, picture):
                return None
        return Thumbnail(target, outline)

    def upload(self, photo: InatPhoto) -> Thumbnail | None:
        target = self.store.upload_file(photo.id, self.pictures.size)
        if not target.exists():
            picture = self.pictures.downloaded_upload(photo)
            if picture is None or not self.store.save(target, picture):
                return None
        return Thumbnail(target)


def shell_word(text: str) -> str:
    """text quoted for a POSIX shell; names with control characters or bytes that are not
    UTF-8 in bash's $'...' form, so that a copied command names the very file."""
    try:
        text.encode("utf-8")
        plain = text.isprintable()
    except UnicodeEncodeError:
        plain = False
    if plain:
        return shlex.quote(text)
    escaped = "".join(
        chr(byte) if 0x20 <= byte < 0x7F and chr(byte) not in "'\\" else f"\\x{byte:02x}"
        for byte in os.fsencode(text)
    )
    return f"$'{escaped}'"


def confirm_command(user: str, path: Path, photo_id: int) -> str:
    """The command line that associates path with photo_id as the user confirms it."""
    script = Path(__file__).resolve()
    return (
        f"{shell_word(str(script))} --user {shell_word(user)} --associate"
        f" {shell_word(str(path.absolute()))} {photo_id}"
    )


def comparison_row(
    section: str,
    photo: LocalPhoto,
    candidate: Candidate,
    comparison: Comparison,
    thumbnails: LogThumbnails,
    note: str = "",
    command: str = "",
) -> LogRow:
    """A log row for a compared pair, saying what the alignment found."""
    alignment = comparison.alignment
    if alignment is not None and alignment.describe():
        note = "; ".join(filter(None, [alignment.describe(), note]))
    if comparison.prefiltered:
        note = "; ".join(filter(None, [note, "thumbnail check only"]))
    observation = candidate.observation
    return LogRow(
        section,
        photo,
        thumbnails.local(photo, alignment.box if alignment else None),
        candidate,
        thumbnails.upload(candidate.photo),
        seconds_apart(photo, observation),
        describe_distance(photo, observation),
        comparison.score,
        note,
        photo.corrected_time.date(),
        command,
    )


def day_log_rows(
    outcome: DayOutcome, thumbnails: LogThumbnails, user: str, note: str = ""
) -> list[LogRow]:
    """The log rows of a matched day: associations and parts, ties, refusals (ties and
    refusals with the command that confirms them); note is added to each tie and refusal."""
    rows = [
        comparison_row("new", a.photo, a.candidate, a.comparison, thumbnails)
        for a in outcome.associations
    ]
    for part in outcome.parts:
        area = part.comparison.alignment.area if part.comparison.alignment else 1.0
        rows.append(
            comparison_row(
                "new", part.photo, part.candidate, part.comparison, thumbnails, _part_note(area)
            )
        )
    for tie in outcome.ties:
        for photo, comparison in zip(tie.photos, tie.comparisons, strict=True):
            rows.append(
                comparison_row(
                    "tie",
                    photo,
                    tie.candidate,
                    comparison,
                    thumbnails,
                    "; ".join(filter(None, ["tie: another local photo fits as well", note])),
                    confirm_command(user, photo.path, tie.candidate.photo.id),
                )
            )
    for refusal in outcome.refusals:
        reason = "; ".join(filter(None, [refusal.reason, note]))
        if refusal.candidate is not None and refusal.comparison is not None:
            command = confirm_command(user, refusal.photo.path, refusal.candidate.photo.id)
            rows.append(
                comparison_row(
                    "refused",
                    refusal.photo,
                    refusal.candidate,
                    refusal.comparison,
                    thumbnails,
                    reason,
                    command,
                )
            )
        else:
            rows.append(
                LogRow(
                    "refused",
                    refusal.photo,
                    thumbnails.local(refusal.photo),
                    note=reason,
                    day=refusal.photo.corrected_time.date(),
                )
            )
    return rows


def unassociated_row(candidate: Candidate, thumbnails: LogThumbnails, section: str) -> LogRow:
    """A row for an upload no local photo took: section "lone", or "known" when an earlier
    log listed it already."""
    return LogRow(
        section,
        candidate=candidate,
        inat_thumbnail=thumbnails.upload(candidate.photo),
        note="not associated with a local picture",
        day=candidate.observation.day,
    )


def known_row(
    photo: LocalPhoto, observation: Observation | None, thumbnails: LogThumbnails, note: str = ""
) -> LogRow:
    """A row for a photo the run left as it was: tagged and current, or dissociated."""
    candidate = None
    if observation is not None and photo.tags is not None:
        candidate = next(
            (Candidate(p, observation) for p in observation.photos if p.id == photo.tags.photo),
            None,
        )
    return LogRow(
        "known",
        photo,
        thumbnails.local(photo),
        candidate,
        thumbnails.upload(candidate.photo) if candidate else None,
        note=note,
        day=photo.corrected_time.date(),
    )


def changed_identification_row(
    photo: LocalPhoto, observation: Observation, thumbnails: LogThumbnails
) -> LogRow:
    """A row for a tagged photo whose caption was rewritten."""
    row = known_row(photo, observation, thumbnails, "identification changed on iNaturalist")
    row.section = "changed"
    row.seconds = seconds_apart(photo, observation)
    row.distance = describe_distance(photo, observation)
    return row


_HTML_STYLE = """
body { font-family: serif; margin: 1em; }
table { border-collapse: collapse; }
th { padding: 0 0.4em; }
td { text-align: center; padding: 3px; vertical-align: middle; }
td.name { min-width: 8em; max-width: 18em; }
img { max-width: 200px; max-height: 200px; display: block; margin: auto; }
.thumb { position: relative; display: inline-block; }
.crop { position: absolute; border: 2px solid #ff2828; box-sizing: border-box; }
.file { font-size: smaller; word-break: break-all; }
.low { color: red; }
.note { color: #555; font-size: smaller; min-width: 16em; max-width: 26em; }
code.cmd { display: block; margin-top: 0.3em; padding: 0.2em; background: #f1f1f1;
  color: #000; font-size: smaller; user-select: all; word-break: break-all; text-align: left; }
ul.counts { list-style: none; padding: 0; margin: 0.6em 0; }
ul.counts li { display: inline-block; margin: 0 0.8em 0.4em 0; padding: 0.15em 0.5em;
  background: #eef3ee; border-radius: 4px; }
form#filters { margin: 0.6em 0; padding: 0.4em; background: #f6f6f6; }
form#filters label { margin-right: 1em; }
details summary { cursor: pointer; }
"""


# Filters by section, date and text (also read from and written to the page's #hash), and the
# known rows, built from their JSON when their section is first opened: text goes in as text.
_HTML_SCRIPT = """
(function () {
  const form = document.getElementById("filters");
  const field = (name) => form.elements.namedItem(name);
  const known = document.getElementById("known-details");
  function add(parent, ...children) { parent.append(...children); return parent; }
  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return add(node, ...children);
  }
  function picture(src) { return element("img", {src: src, alt: "", loading: "lazy"}); }
  function fill() {
    if (!known || known.dataset.built) return;
    known.dataset.built = "1";
    const data = JSON.parse(document.getElementById("known-data").textContent);
    const body = document.getElementById("known-rows");
    for (const [day, file, name, thumb, photo, upThumb, obs, common, sci, note, score, command]
        of data.rows) {
      const row = element("tr", {"data-section": "known", "data-date": day});
      const local = file ? [element("a", {href: data.files + file},
        thumb ? picture(data.thumbs + thumb) : ""), element("div", {class: "file"}, name)]
        : [element("i", {}, "no local picture")];
      const upload = photo ? [element("a", {href: data.inat + "/photos/" + photo},
        upThumb ? picture(data.thumbs + upThumb) : "photo " + photo)] : [];
      const href = typeof obs === "number" ? data.inat + "/observations/" + obs : obs;
      const taxon = sci ? (common ? [common + " (", element("i", {}, sci), ")"]
        : [element("i", {}, sci)]) : [element("i", {}, "no identification")];
      const shown = score === null ? "" : element("span",
        score < data.threshold ? {class: "low"} : {}, (score * 100).toFixed(1) + "%");
      add(row, element("td", {}, ...local), element("td", {}, ...upload),
        element("td", {class: "name"}, obs ? element("a", {href: href}, ...taxon) : ""),
        element("td", {}, shown), element("td", {class: "note"}, note,
          command ? element("code", {class: "cmd"}, command) : ""));
      body.append(row);
    }
  }
  function apply() {
    const section = field("section").value, day = field("date").value;
    const text = field("text").value.trim().toLowerCase();
    if (section === "known" && known && !known.open) known.open = true;
    for (const row of document.querySelectorAll("tr[data-section]")) {
      row.hidden = Boolean((day && row.dataset.date !== day)
        || (text && !row.textContent.toLowerCase().includes(text)));
    }
    for (const part of document.querySelectorAll("section[data-section]")) {
      part.hidden = Boolean(section && part.dataset.section !== section);
    }
    const state = new URLSearchParams({section: section, date: day, text: text});
    try { history.replaceState(null, "", "#" + state); } catch (error) { /* file: URLs */ }
  }
  const wanted = new URLSearchParams(location.hash.slice(1));
  for (const name of ["section", "date", "text"]) {
    if (wanted.has(name)) field(name).value = wanted.get(name);
  }
  form.addEventListener("input", apply);
  form.addEventListener("submit", (event) => event.preventDefault());
  if (known) known.addEventListener("toggle", () => { if (known.open) { fill(); apply(); } });
  apply();
})();
"""


def _file_url(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return path.resolve().as_uri()
    return ""


def _taxon_html(name: TaxonName | None) -> str:
    if name is None:
        return "<i>no identification</i>"
    scientific = f"<i>{html.escape(name.scientific)}</i>"
    return f"{html.escape(name.common)} ({scientific})" if name.common else scientific


def thumbnail_data_url(file: Path) -> str | None:
    """A cached thumbnail as a data: URL, to embed in the page; None when it is gone."""
    try:
        data = file.read_bytes()
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _picture_html(thumbnail: Thumbnail | None, embed: Callable[[Path], str | None]) -> str:
    source = embed(thumbnail.file) if thumbnail is not None else None
    if thumbnail is None or source is None:
        return ""
    image = f'<img src="{html.escape(source, quote=True)}" alt="">'
    if thumbnail.outline is None:
        return image
    left, top, right, bottom = (100 * v for v in thumbnail.outline)
    box = f"left:{left:.1f}%;top:{top:.1f}%;width:{right - left:.1f}%;height:{bottom - top:.1f}%"
    return f'<span class="thumb">{image}<span class="crop" style="{box}"></span></span>'


def _row_html(row: LogRow, threshold: float, embed: Callable[[Path], str | None]) -> str:
    cells = []
    if row.local is not None:
        link = html.escape(_file_url(row.local.path), quote=True)
        shown = html.escape(show_path(row.local.path))
        image = _picture_html(row.local_thumbnail, embed)
        caption = html.escape(row.local.caption) if row.local.caption else "<i>no caption</i>"
        cells.append(
            f'<a href="{link}" title="{shown}">{image or shown}</a>'
            f'<div class="file">{html.escape(show_path(Path(row.local.path.name)))}</div>{caption}'
        )
    else:
        cells.append("<i>no local picture</i>")
    if row.candidate is not None:
        photo, observation = row.candidate.photo, row.candidate.observation
        page = html.escape(photo.page_url, quote=True)
        obs_url = html.escape(observation.url, quote=True)
        image = _picture_html(row.inat_thumbnail, embed) or f"photo {photo.id}"
        cells.append(
            f'<a href="{page}">{image}</a>{ordinal(photo.position)} photo of'
            f' <a href="{obs_url}">observation</a>'
        )
        cells.append(f'<a href="{obs_url}">{_taxon_html(observation.name)}</a>')
    else:
        cells += ["", ""]
    cells.append("n/a" if row.seconds is None else str(row.seconds))
    cells.append(html.escape(row.distance))
    if row.score is None:
        cells.append("")
    else:
        low = ' class="low"' if row.score < threshold else ""
        cells.append(f"<span{low}>{row.score * 100:.1f}%</span>")
    command = f'<code class="cmd">{html.escape(row.command)}</code>' if row.command else ""
    cells.append(f"{html.escape(row.note)}{command}")
    classes = ["", "", ' class="name"', "", "", "", ' class="note"']
    day = row.day.isoformat() if row.day else ""
    return (
        f'<tr data-section="{row.section}" data-date="{day}">'
        + "".join(f"<td{c}>{cell}</td>" for c, cell in zip(classes, cells, strict=True))
        + "</tr>"
    )


_TABLE_HEAD = (
    "<table><thead><tr><th>Local File</th><th>iNaturalist Photo</th><th>Observation</th>"
    "<th>Time from<br>Observation<br>[seconds]</th><th>Distance to<br>Observation<br>[meters]</th>"
    "<th>Structural<br>Similarity<br>Score</th><th>Note</th></tr></thead><tbody>"
)


def _sort_key(row: LogRow) -> tuple:
    """Refusals and ties best score first (near misses on top); the rest by date and time."""
    when = row.local.corrected_time if row.local else dt.datetime.min
    upload = row.candidate.photo.id if row.candidate else 0
    if row.section in ("refused", "tie"):
        return (row.score is None, -(row.score or 0.0), upload, row.day or dt.date.min, when)
    return (row.day or dt.date.min, when, upload)


def _url_base(urls: Iterable[str]) -> str:
    """The longest common folder of URLs, ending in '/'; '' when they share none."""
    listed = [u for u in urls if u]
    if not listed:
        return ""
    first, last = min(listed), max(listed)  # the common prefix of all is theirs
    size = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
        min(len(first), len(last)),
    )
    return first[: first[:size].rfind("/") + 1]


def _known_json(rows: Sequence[LogRow], threshold: float) -> str:
    """The known rows as compact JSON for the page's script, safe inside <script>."""
    files = {id(r): _file_url(r.local.path) if r.local else "" for r in rows}
    thumbs = {
        id(t): t.file.absolute().as_uri()
        for r in rows
        for t in (r.local_thumbnail, r.inat_thumbnail)
        if t is not None
    }
    files_base, thumbs_base = _url_base(files.values()), _url_base(thumbs.values())

    def thumb(t: Thumbnail | None) -> str:
        return thumbs[id(t)][len(thumbs_base) :] if t is not None else ""

    records = []
    for row in rows:
        photo, observation = (
            (row.candidate.photo, row.candidate.observation) if row.candidate else (None, None)
        )
        name = observation.name if observation else None
        default_url = f"{INAT_WEB_URL}/observations/{observation.id}" if observation else ""
        records.append(
            [
                row.day.isoformat() if row.day else "",
                files[id(row)][len(files_base) :],
                show_path(Path(row.local.path.name)) if row.local else "",
                thumb(row.local_thumbnail),
                photo.id if photo else 0,
                thumb(row.inat_thumbnail),
                (observation.id if observation.url == default_url else observation.url)
                if observation
                else 0,
                (name.common or "") if name else "",
                name.scientific if name else "",
                row.note,
                round(row.score, 4) if row.score is not None else None,
                row.command,
            ]
        )
    data = {
        "files": files_base,
        "thumbs": thumbs_base,
        "inat": INAT_WEB_URL,
        "threshold": threshold,
        "rows": records,
    }
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    # Nothing in the data can close the script element or start markup.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _count_line(section: str, count: int) -> str:
    title = html.escape(LOG_SECTIONS[section])
    if not count:
        return f"<li>{title}: 0</li>"
    return f'<li><a href="#{section}">{title}</a>: {count}</li>'


def log_page(
    rows: Sequence[LogRow],
    summary: str,
    threshold: float,
    *,
    unlisted: Mapping[str, int] | None = None,
    embed: Callable[[Path], str | None] = thumbnail_data_url,
) -> Iterator[str]:
    """The HTML page, piece by piece: summary and counts, filters, then one section per kind
    of row, the known rows last and collapsed (their thumbnails load when it is opened)."""
    by_section: dict[str, list[LogRow]] = {key: [] for key in LOG_SECTIONS}
    for row in rows:
        by_section[row.section].append(row)
    unlisted = unlisted or {}
    # Near misses of earlier runs first, best score first; then by date.
    known = sorted(
        by_section.pop("known"), key=lambda r: (r.score is None, -(r.score or 0.0), *_sort_key(r))
    )
    days = sorted({row.day.isoformat() for row in rows if row.day})
    yield (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>inat_photos {html.escape(__version__)} log</title>\n"
        f"<style>{_HTML_STYLE}</style></head><body>\n"
        f'<h1>inat_photos log</h1>\n<p class="summary">{html.escape(summary)}</p>\n'
        '<ul class="counts">\n'
    )
    for section, section_rows in by_section.items():
        yield _count_line(section, len(section_rows)) + "\n"
    yield _count_line("known", len(known) + sum(unlisted.values())) + "\n</ul>\n"
    options = "".join(
        f'<option value="{key}">{html.escape(title)}</option>'
        for key, title in LOG_SECTIONS.items()
    )
    dates = "".join(f'<option value="{day}">{day}</option>' for day in days)
    yield (
        '<form id="filters"><label>Section <select name="section"><option value="">all</option>'
        f'{options}</select></label><label>Date <select name="date"><option value="">all'
        f'</option>{dates}</select></label><label>Text <input name="text" type="search"'
        ' placeholder="file, name, note"></label></form>\n'
    )
    for section, section_rows in by_section.items():
        if not section_rows:
            continue
        yield (
            f'<section id="{section}" data-section="{section}">'
            f"<h2>{html.escape(LOG_SECTIONS[section])} ({len(section_rows)})</h2>\n{_TABLE_HEAD}\n"
        )
        for row in sorted(section_rows, key=_sort_key):
            yield _row_html(row, threshold, embed) + "\n"
        yield "</tbody></table></section>\n"
    if known or unlisted:
        open_ = sum(1 for r in known if r.command)
        tagged = sum(1 for r in known if r.local and r.local.tags and not r.command)
        aside = sum(1 for r in known if r.local and not r.local.tags and not r.command)
        counts = [
            (open_, "Near misses and ties of earlier runs, not yet confirmed (with the command)"),
            (tagged, "Already tagged, caption current"),
            (aside, "Set aside with --dissociate"),
            (len(known) - open_ - tagged - aside, "iNaturalist photos an earlier log listed"),
            *((n, f"{reason} (counted, not listed)") for reason, n in sorted(unlisted.items())),
        ]
        items = "".join(f"<li>{html.escape(text)}: {n}</li>" for n, text in counts if n)
        yield (
            '<section id="known" data-section="known">'
            f"<h2>{html.escape(LOG_SECTIONS['known'])} ({len(known) + sum(unlisted.values())})"
            f"</h2>\n<ul>{items}</ul>\n"
        )
        if known:
            yield (
                f'<details id="known-details"><summary>Show the {len(known)} listed'
                " (thumbnails load when opened)</summary>\n<table><thead><tr>"
                "<th>Local File</th><th>iNaturalist Photo</th><th>Observation</th><th>Score</th>"
                '<th>Note</th></tr></thead><tbody id="known-rows"></tbody></table></details>\n'
                '<script type="application/json" id="known-data">'
                f"{_known_json(known, threshold)}</script>\n"
            )
        yield "</section>\n"
    yield f'<p class="summary">{html.escape(summary)}</p>\n<script>{_HTML_SCRIPT}</script>\n'
    yield "</body></html>\n"


def render_log(rows: Sequence[LogRow], summary: str, threshold: float, **options: Any) -> str:
    """The HTML page for rows and the summary line, as one string (options: log_page's)."""
    return "".join(log_page(rows, summary, threshold, **options))


# ---------------------------------------------------------------------------
# 11. Command line
#    Options from argv, the run from the walk to the summary (the I/O edge that
#    wires the phases together), and main(argv) -> int, which maps exceptions to
#    exit codes.
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inat_photos.py",
        description="Find local photos that were uploaded to iNaturalist and write the "
        "iNaturalist ids and the current identification into their XMP metadata.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--user", "-u", help="iNaturalist user login (required, except with --dissociate)"
    )
    parser.add_argument("--logfile", metavar="LOGFILE", help="write an HTML log to LOGFILE")
    parser.add_argument(
        "--cluster_threshold",
        type=parse_cluster_threshold,
        default=CLUSTER_THRESHOLD,
        metavar="SECONDS",
        help=f"photos within this many seconds of each other are compared (default "
        f"{CLUSTER_THRESHOLD}, at least 60)",
    )
    parser.add_argument(
        "--ssim_threshold",
        type=parse_ssim_threshold,
        default=SSIM_THRESHOLD,
        metavar="THRESHOLD",
        help=f"similarity needed to associate, 0..1 or a percentage (default {SSIM_THRESHOLD})",
    )
    parser.add_argument(
        "--recompute", "-r", action="store_true", help="recompute already known associations"
    )
    parser.add_argument(
        "--bypass_cache",
        action="store_true",
        help="use no cached observations or photos; fetch afresh and refresh the cache",
    )
    parser.add_argument(
        "--inat_size",
        choices=INAT_SIZES,
        default=SSIM_INATSIZE,
        help=f"iNaturalist photo size to compare (default {SSIM_INATSIZE})",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        default=USE_GPU,
        help="compute similarity on an OpenCL device (falls back to the CPU)",
    )
    parser.add_argument(
        "--time_offset",
        type=parse_time_offset,
        default=None,
        metavar="OFFSET",
        help="how far the camera clock was ahead (+1h, -30m, -3:00); by default the tool "
        "detects whole-day offsets itself",
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="do everything but change no file; print what would change",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--associate",
        nargs=2,
        metavar=("FILE", "PHOTO_ID"),
        help="associate FILE with the iNaturalist photo PHOTO_ID, as you confirm it: compared"
        " and written even below the similarity threshold",
    )
    mode.add_argument(
        "--dissociate",
        metavar="FILE",
        help="remove this tool's ids and caption from FILE and leave it alone on later runs"
        " (until --recompute)",
    )
    parser.add_argument("paths", nargs="*", metavar="file/directory", help="pictures or folders")
    return parser


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a parsed command line beyond what argparse checks; None if nothing."""
    if args.associate and parse_positive_int(args.associate[1]) is None:
        return f"argument --associate: not a photo id: {args.associate[1]!r}"
    if not args.user and not args.dissociate:
        return "the following arguments are required: --user/-u"
    single = args.associate or args.dissociate
    if single and args.paths:
        return "--associate and --dissociate take one file; give no other file or folder"
    if not single and not args.paths:
        return "the following arguments are required: file/directory"
    return None


@contextlib.contextmanager
def run_lock(cache: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the cache directory; yields False if another run has it."""
    cache.mkdir(parents=True, exist_ok=True)
    handle = open(cache / "run.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        handle.close()


class RunLocked(Exception):
    """Another run holds the lock on the cache directory."""


@dataclass
class RunState:
    """The resources and results of one run, passed explicitly to the steps below."""

    options: Options
    console: Console
    index: LocalIndex
    pictures: PictureSource
    scorer: PairScorer
    tally: Tally
    log: LogBook | None = None  # None: no log is written, no thumbnail is made

    @property
    def thumbnails(self) -> LogThumbnails:
        return LogThumbnails(self.pictures, ThumbnailCache(self.options.cache))


def perform_update(state: RunState, update: Update) -> bool:
    """Say, write (unless dry run) and count one update; False when the write failed."""
    options, console = state.options, state.console
    if update.keywords is not None:
        console.say(update_line(update, options.dry_run))
    if not options.dry_run:
        try:
            write_update(update)
        except OSError as error:
            console.file_error(update.photo.path, f"cannot write metadata ({error})")
            return False
        state.index.remember(update.applied())
    state.tally.count(update)
    return True


def refresh_known(
    state: RunState, photo: LocalPhoto, observation: Observation | None, history: Collection[str]
) -> None:
    """A photo already tagged: refresh its caption if the identification changed."""
    if observation is None:
        state.console.say(gone_line(photo))
        if state.log is not None:
            row = known_row(photo, None, state.thumbnails, gone_line(photo))
            state.log.rows.append(dataclasses.replace(row, section="changed"))
        return
    state.tally.associated_locals.add(photo.path)
    if photo.tags is not None and photo.tags.photo is not None:
        state.tally.associated_uploads.add(photo.tags.photo)
    update = plan_update(photo, None, history, observation.caption)
    written = update is not None and perform_update(state, update)
    if state.log is None:
        return
    if written and update is not None and update.keywords:
        state.log.rows.append(
            changed_identification_row(update.applied(), observation, state.thumbnails)
        )
    else:
        state.log.rows.append(known_row(photo, observation, state.thumbnails))


def recall_parts(state: RunState, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Report uploads found earlier to show part of a photo still associated; drop them."""
    remembered = state.index.parts_of([c.photo.id for c in candidates])
    associated = {p.absolute(): p for p in state.tally.associated_locals}
    left = []
    for candidate in candidates:
        stored, area = remembered.get(candidate.photo.id, (None, 0.0))
        path = associated.get(stored) if stored is not None else None
        if path is not None:
            state.tally.part_uploads.add(candidate.photo.id)
            state.console.say(part_message(candidate, path, area))
            if state.log is not None:
                row = unassociated_row(candidate, state.thumbnails, "known")
                row.note = f"shows part of {show_path(Path(path.name))}"
                state.log.rows.append(row)
        else:
            left.append(candidate)
    return left


def apply_day(state: RunState, outcome: DayOutcome, candidates: Sequence[Candidate]) -> None:
    """Report a matched day, write its associations, remember what was compared in vain."""
    options, console, tally = state.options, state.console, state.tally
    if outcome.clock_offset is not None:
        console.say(offset_line(outcome.day, outcome.clock_offset))
    for tie in outcome.ties:
        console.say(tie_line(tie))
    written: dict[Path, LocalPhoto] = {}  # as the log shows them: with the new caption
    for association in outcome.associations:
        console.say(found_line(association))
        photo, candidate = association.photo, association.candidate
        observation = candidate.observation
        tags = InatTags(observation.id, candidate.photo.observation_photo_id, candidate.photo.id)
        update = plan_update(photo, tags, (), observation.caption)
        if update is None or perform_update(state, update):
            tally.associated_locals.add(photo.path)
            tally.associated_uploads.add(candidate.photo.id)
            if update is not None:
                written[photo.path] = update.applied()
    for part in outcome.parts:
        if part.photo.path not in tally.associated_locals:
            continue  # its photo could not be written: the upload stays unassociated
        area = part.comparison.alignment.area if part.comparison.alignment else 1.0
        tally.part_uploads.add(part.candidate.photo.id)
        console.say(part_message(part.candidate, part.photo.path, area))
        if not options.dry_run:
            state.index.record_part(part.candidate.photo.id, part.photo, area)
    if not options.dry_run:
        for path, uploads in outcome.checked:
            if path not in state.pictures.unreadable:
                state.index.record_checked(path, uploads)
    taken = tally.associated_uploads | tally.part_uploads
    lonely = [c for c in candidates if c.photo.id not in taken]
    for candidate in lonely:
        console.say(unassociated_line(candidate))
    if state.log is not None:
        shown = {
            kind: tuple(
                dataclasses.replace(a, photo=written.get(a.photo.path, a.photo))
                for a in getattr(outcome, kind)
            )
            for kind in ("associations", "parts")
        }
        log_day(state, state.log, dataclasses.replace(outcome, **shown), lonely)


def verdict_of(
    reason: str, candidate: Candidate | None, comparison: Comparison | None, tie: bool = False
) -> dict[str, Any]:
    """What the log said about a photo left unassociated, as the LocalIndex stores it."""
    alignment = comparison.alignment if comparison else None
    return {
        "reason": reason,
        "upload": candidate.photo.id if candidate else None,
        "score": comparison.score if comparison else None,
        "box": list(alignment.box) if alignment else None,
        "turns": alignment.turns if alignment else 0,
        "prefiltered": comparison.prefiltered if comparison else False,
        "tie": tie,
    }


def near_miss(
    verdict: Mapping[str, Any] | None, uploads: Mapping[int, Candidate], threshold: float
) -> tuple[Candidate, Comparison, bool] | None:
    """An earlier verdict that still awaits the user: a tie or a refusal within NEAR_MISS of
    the threshold, fully compared, with an upload still open. (candidate, comparison, tie)."""
    if not verdict or verdict.get("prefiltered") or verdict.get("upload") not in uploads:
        return None
    score, box = verdict.get("score"), verdict.get("box")
    if not isinstance(score, (int, float)) or not (
        verdict.get("tie") or score >= threshold - NEAR_MISS
    ):
        return None
    alignment = None
    if isinstance(box, list) and len(box) == 4:
        alignment = Alignment(tuple(map(float, box)), int(verdict.get("turns") or 0))  # type: ignore[arg-type]
    return uploads[verdict["upload"]], Comparison(score, alignment), bool(verdict.get("tie"))


def sort_refusals(
    index: LocalIndex,
    log: LogBook,
    refusals: Sequence[Refusal],
    uploads: Mapping[int, Candidate],
    threshold: float,
) -> tuple[list[Refusal], list[Refusal], list[Tie]]:
    """A day's refusals as the log shows them: (this run's, near misses and ties of earlier
    runs still open); what an earlier log showed and is not open is counted in log.unlisted."""
    fresh: list[Refusal] = []
    earlier: list[Refusal] = []
    tied: dict[int, list[tuple[LocalPhoto, Comparison]]] = defaultdict(list)
    for refusal in refusals:
        verdict = index.verdict(refusal.photo)
        if refusal.reason == COMPARED_BEFORE:
            found = near_miss(verdict, uploads, threshold)
            if found is None:
                log.unlisted[UNLISTED_COMPARED] += 1
            elif found[2]:
                tied[found[0].photo.id].append((refusal.photo, found[1]))
            else:
                earlier.append(Refusal(refusal.photo, found[0], found[1], BELOW_THRESHOLD))
        elif refusal.reason == NO_CANDIDATE and verdict:
            # An earlier log showed it: still nothing near its time, or the uploads it was
            # compared with in vain have gone to other photos since (and left the day's open
            # candidates).
            same = verdict.get("reason") == NO_CANDIDATE
            log.unlisted[UNLISTED_NO_CANDIDATE if same else UNLISTED_COMPARED] += 1
        else:
            fresh.append(refusal)
    ties = []
    for upload, pairs in tied.items():
        if len(pairs) == 1:  # the other photo of the tie has changed since: a plain refusal
            photo, comparison = pairs[0]
            earlier.append(Refusal(photo, uploads[upload], comparison, BELOW_THRESHOLD))
        else:
            photos, comparisons = zip(*pairs, strict=True)
            ties.append(Tie(uploads[upload], photos, comparisons, max(c.score for _, c in pairs)))
    return fresh, earlier, ties


def log_day(
    state: RunState, log: LogBook, outcome: DayOutcome, lonely: Sequence[Candidate]
) -> None:
    """A matched day's log rows. What this run found is listed; what an earlier log showed
    unchanged is listed with the known photos (near misses still with their command) or only
    counted. What the log shows is remembered, except in a dry run."""
    index, thumbnails, user = state.index, state.thumbnails, state.options.user or ""
    if outcome.clock_offset is not None:
        note = offset_line(outcome.day, outcome.clock_offset)
        log.rows.append(LogRow("offset", note=note, day=outcome.day))
    uploads = {c.photo.id: c for c in lonely}
    fresh, earlier, ties = sort_refusals(
        index, log, outcome.refusals, uploads, state.options.ssim_threshold
    )
    log.rows += day_log_rows(dataclasses.replace(outcome, refusals=tuple(fresh)), thumbnails, user)
    recalled = DayOutcome(outcome.day, ties=tuple(ties), refusals=tuple(earlier))
    for row in day_log_rows(recalled, thumbnails, user, "found by an earlier run"):
        row.section = "known"  # still open, no longer news: listed with the known photos
        log.rows.append(row)
    tied = {t.candidate.photo.id for t in (*outcome.ties, *ties)}
    reported = index.reported_uploads(uploads)
    for candidate in lonely:
        if candidate.photo.id not in tied:
            section = "known" if candidate.photo.id in reported else "lone"
            log.rows.append(unassociated_row(candidate, thumbnails, section))
    if state.options.dry_run:
        return
    index.record_reported_uploads(set(uploads) - reported - tied)
    verdicts = [(r.photo, verdict_of(r.reason, r.candidate, r.comparison)) for r in fresh]
    for tie in outcome.ties:
        for photo, comparison in zip(tie.photos, tie.comparisons, strict=True):
            verdicts.append((photo, verdict_of("tie", tie.candidate, comparison, True)))
    for photo, verdict in verdicts:
        if photo.path not in state.pictures.unreadable:  # listed and reported again next run
            index.record_verdict(photo.path, verdict)


def process_days(
    state: RunState,
    photos: Sequence[LocalPhoto],
    observations: Sequence[Observation],
    known: Mapping[int, Observation],
    history: Mapping[int, set[str]],
) -> None:
    """Refresh known photos, then match and apply each day, one day at a time."""
    options, console = state.options, state.console
    photos_by_day: dict[dt.date, list[LocalPhoto]] = defaultdict(list)
    for photo in sorted(photos, key=lambda p: (p.corrected_time, str(p.path))):
        photos_by_day[photo.corrected_time.date()].append(photo)
    candidates_by_day: dict[dt.date, list[Candidate]] = defaultdict(list)
    for observation in observations:
        if observation.day is not None:
            candidates_by_day[observation.day] += [
                Candidate(p, observation) for p in observation.photos
            ]
    tagged = {p.tags.photo for p in photos if p.tags and not options.recompute}
    for day in sorted(photos_by_day):
        day_photos, day_candidates = photos_by_day[day], candidates_by_day.get(day, [])
        state.tally.uploads_seen.update(c.photo.id for c in day_candidates)
        if day_candidates:
            console.say(
                f"{day}: {len(day_candidates)} iNat pictures and {len(day_photos)} local pictures."
            )
        if not options.recompute:
            for photo in day_photos:
                if photo.tags:
                    observation = known.get(photo.tags.observation)
                    refresh_known(
                        state, photo, observation, history.get(photo.tags.observation, set())
                    )
                elif photo.dissociated and state.log is not None:
                    note = "set aside with --dissociate; compared again only with --recompute"
                    state.log.rows.append(known_row(photo, None, state.thumbnails, note))
        open_photos = [p for p in day_photos if options.recompute or not (p.tags or p.dissociated)]
        open_candidates = [c for c in day_candidates if c.photo.id not in tagged]
        if len(open_photos) < len(day_photos) and day_candidates:
            console.say(
                f"{day}: {len(open_candidates)} iNat pictures and {len(open_photos)} local"
                " pictures left after excluding known associations."
            )
        if not day_candidates:
            continue
        if not options.recompute:
            open_candidates = recall_parts(state, open_candidates)
        outcome = match_day(
            day,
            open_photos,
            open_candidates,
            state.scorer,
            options,
            likely=state.scorer.likely,
            checked_before=state.index.checked_before,
            known_today=not options.recompute and any(p.tags for p in day_photos),
        )
        apply_day(state, outcome, open_candidates)
        state.pictures.forget_locals()
        state.pictures.forget_uploads()


def load_observations(
    options: Options, client: InatClient, store: ObservationStore, photos: Sequence[LocalPhoto]
) -> tuple[list[Observation], dict[int, Observation], dict[int, set[str]]]:
    """Sync the store for the photos' days: (the days' observations, known ones, captions)."""
    if not store.has_synced(options.user):  # checked on an earlier run: spare a request
        user = client.user(options.user)
        if not user.get("observations_count"):
            raise UserError(f"iNaturalist user {options.user!r} has no observations")
    days = sorted({p.corrected_time.date() for p in photos})
    store.sync(client, options.user, days[0], days[-1])
    known_ids = [p.tags.observation for p in photos if p.tags]
    store.recheck(client, options.user, known_ids, days[0], days[-1])
    return (
        store.observations_between(options.user, days[0], days[-1]),
        store.observations_by_id(known_ids),
        store.caption_history(known_ids),
    )


def run(options: Options, console: Console) -> Tally:
    """One run from the walk to the summary; raises RunLocked, UserError, InatUnreachable."""
    started = time.monotonic()
    tally = Tally()
    with contextlib.ExitStack() as resources:
        if not resources.enter_context(run_lock(options.cache)):
            raise RunLocked(options.cache)
        console.say("Loading photos ")
        found = find_picture_files(options.paths, console)
        remove_leftover_copies(found.leftovers)
        index = resources.enter_context(
            contextlib.closing(
                LocalIndex(options.cache / "local_index.sqlite", options.matching_settings)
            )
        )
        photos = load_local_photos(found.pictures, index, console, options.time_offset)
        tally.local_photos = len(photos)
        console.say(f"Loaded {len(photos)} local photos in {time.monotonic() - started:.1f} secs.")
        if not photos:
            return tally
        client = InatClient(options.api_url, options.cache)
        resources.callback(client.session.close)
        with contextlib.closing(
            ObservationStore(options.cache / "observations.sqlite", fresh=options.bypass_cache)
        ) as store:
            observations, known, history = load_observations(options, client, store, photos)
        photo_cache = PhotoCache(
            options.cache, client, refresh=options.bypass_cache, console=console
        )
        resources.callback(photo_cache.http.close)
        pictures = PictureSource(photo_cache, options.inat_size, console)
        scorer = PairScorer(
            pictures, options.ssim_threshold, choose_score_function(options.gpu, console)
        )
        state = RunState(
            options, console, index, pictures, scorer, tally, LogBook() if options.logfile else None
        )
        process_days(state, photos, observations, known, history)
        summary = summary_line(tally, time.monotonic() - started, options.dry_run)
        console.say("")
        console.say(summary)
        if options.logfile is not None and state.log is not None:
            write_log(options.logfile, state.log, summary, options.ssim_threshold, console)
    return tally


def write_log(path: Path, log: LogBook, summary: str, threshold: float, console: Console) -> None:
    """Write the HTML log (the errors reported so far included) piece by piece, atomically."""
    errors = [LogRow("error", note=f"{show_path(p)}: {reason}") for p, reason in console.errors]
    pieces = log_page([*log.rows, *errors], summary, threshold, unlisted=log.unlisted)
    try:
        # backslashreplace: an API text with a lone surrogate must not stop the page.
        replace_or_create(path, (piece.encode("utf-8", "backslashreplace") for piece in pieces))
    except OSError as error:
        console.file_error(path, f"cannot write log ({error})")


def check_named_picture(path: Path) -> None:
    """The file --associate or --dissociate names must be a picture this tool may write."""
    if not path.is_file():
        raise UserError(f"{show_path(path)}: no such file")
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise UserError(f"{show_path(path)}: not a JPEG, PNG or TIFF picture")


def open_named_photo(
    resources: contextlib.ExitStack, options: Options, path: Path, console: Console
) -> tuple[LocalIndex, LocalPhoto | None]:
    """For --associate and --dissociate: take the run lock, open the index, read the file."""
    if not resources.enter_context(run_lock(options.cache)):
        raise RunLocked(options.cache)
    check_named_picture(path)
    index = resources.enter_context(
        contextlib.closing(
            LocalIndex(options.cache / "local_index.sqlite", options.matching_settings)
        )
    )
    return index, index.read(path, console)


def other_owner(index: LocalIndex, photo_id: int, path: Path, console: Console) -> Path | None:
    """Another file that holds photo_id in its iNaturalist ids, as far as the index knows."""
    here = os.path.realpath(path)
    for other in index.paths_with_photo(photo_id):
        if os.path.realpath(other) == here or not other.is_file():
            continue
        current = index.read(other, console)
        if current is not None and current.tags is not None and current.tags.photo == photo_id:
            return other
    return None


def find_upload(
    options: Options, client: InatClient, store: ObservationStore, day: dt.date, photo_id: int
) -> Candidate:
    """The user's upload photo_id and its observation, looked for around day and on every day
    synced before; UserError when it is not one of the user's photos."""
    if not store.has_synced(options.user):
        client.user(options.user)  # an unknown login stops here
    one_day = dt.timedelta(days=1)
    store.sync(client, options.user, day - one_day, day + one_day)
    for observation in store.observations_between(options.user, dt.date.min, dt.date.max):
        for upload in observation.photos:
            if upload.id == photo_id:
                return Candidate(upload, observation)
    raise UserError(
        f"photo id {photo_id} is not a photo of one of {options.user}'s observations (looked"
        f" around {day} and on the days of earlier runs)"
    )


def compared_line(
    photo: LocalPhoto, candidate: Candidate, comparison: Comparison | None, threshold: float
) -> str:
    """The console line that gives the score of a pairing the user asked for."""
    start = f"'{show_path(photo.path)}' compared with photo id {candidate.photo.id}:"
    if comparison is None:
        return f"{start} the pictures could not be compared; associating them as you asked."
    how = comparison.alignment.describe() if comparison.alignment else ""
    score = f"similarity {comparison.score * 100:.1f}%{f' ({how})' if how else ''}"
    if comparison.score < threshold:
        return (
            f"{start} {score}, below the threshold of {threshold * 100:.4g}%; associating"
            " them as you asked."
        )
    return f"{start} {score}."


def associate_file(options: Options, console: Console) -> Tally:
    """--associate FILE PHOTO_ID: the user's pairing, compared and written even below the
    threshold; never when another file holds that photo id."""
    assert options.associate is not None
    path, photo_id = options.associate
    tally = Tally()
    with contextlib.ExitStack() as resources:
        index, photo = open_named_photo(resources, options, path, console)
        if photo is None:
            return tally
        owner = other_owner(index, photo_id, path, console)
        if owner is not None:
            raise UserError(
                f"photo id {photo_id} is already associated with '{show_path(owner)}'; to move"
                " it, run --dissociate on that file first"
            )
        client = InatClient(options.api_url, options.cache)
        resources.callback(client.session.close)
        store = resources.enter_context(
            contextlib.closing(ObservationStore(options.cache / "observations.sqlite"))
        )
        candidate = find_upload(options, client, store, photo.corrected_time.date(), photo_id)
        observation = candidate.observation
        ids = [observation.id] + ([photo.tags.observation] if photo.tags else [])
        history = set().union(*store.caption_history(ids).values())
        photo_cache = PhotoCache(options.cache, client, console=console)
        resources.callback(photo_cache.http.close)
        pictures = PictureSource(photo_cache, options.inat_size, console)
        scorer = PairScorer(
            pictures, options.ssim_threshold, choose_score_function(options.gpu, console)
        )
        comparison = scorer.compare(photo, candidate)
        console.say(compared_line(photo, candidate, comparison, options.ssim_threshold))
        tags = InatTags(observation.id, candidate.photo.observation_photo_id, photo_id)
        update = plan_update(photo, tags, history, observation.caption)
        state = RunState(options, console, index, pictures, scorer, tally)
        if update is None:
            console.say(f"{show_path(path)}: already associated with photo id {photo_id}.")
        elif perform_update(state, update):
            console.say(
                f"{'(dry run) ' if options.dry_run else ''}{show_path(path)}: associated with"
                f" photo id {photo_id}, {ordinal(candidate.photo.position)} photo of observation"
                f" {observation.url}, {observation.identification}."
            )
    return tally


def dissociation_line(update: Update, dry_run: bool) -> str:
    """The console line for --dissociate: what was removed, what happens next."""
    photo = update.photo
    removed = []
    if photo.tags is not None:
        removed.append(
            f"the iNaturalist ids (observation {photo.tags.observation}, photo {photo.tags.photo})"
        )
    if update.old_caption is not None:
        removed.append(f"the keyword '{update.old_caption}'")
    what = f"removed {' and '.join(removed)}" if removed else "nothing of this tool's to remove"
    prefix = "(dry run) " if dry_run else ""
    return (
        f"{prefix}{show_path(photo.path)}: {what}; your keywords stay. Later runs leave this"
        " file alone until --recompute or --associate."
    )


def dissociate_file(options: Options, console: Console) -> Tally:
    """--dissociate FILE: remove this tool's ids and caption, keep the user's keywords, and mark
    the file so that later runs leave it alone (until --recompute)."""
    assert options.dissociate is not None
    path = options.dissociate
    with contextlib.ExitStack() as resources:
        index, photo = open_named_photo(resources, options, path, console)
        if photo is None:
            return Tally()
        history: set[str] = set()
        if photo.tags is not None:
            with contextlib.closing(
                ObservationStore(options.cache / "observations.sqlite")
            ) as store:
                history = store.caption_history([photo.tags.observation]).get(
                    photo.tags.observation, set()
                )
        update = plan_dissociation(photo, history)
        if update is None:
            console.say(f"{show_path(path)}: already set aside with --dissociate; nothing to do.")
            return Tally()
        console.say(dissociation_line(update, options.dry_run))
        if not options.dry_run:
            try:
                write_update(update)
            except OSError as error:
                console.file_error(path, f"cannot write metadata ({error})")
                return Tally()
            index.remember(update.applied())
    return Tally()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        problem = usage_problem(args)
        if problem:
            parser.error(problem)
    except SystemExit as exit_request:  # argparse has printed its message
        return EXIT_USAGE if exit_request.code else EXIT_OK
    options = Options.from_args(args, os.environ)
    Image.MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    register_namespace()
    console = Console()
    flow = associate_file if options.associate else dissociate_file if options.dissociate else run
    try:
        flow(options, console)
    except RunLocked:
        console.say(
            f"Error: another inat_photos run is using {show_path(options.cache)}; try again later."
        )
        return EXIT_LOCKED
    except UserError as error:
        console.say(f"Error: {error}")
        return EXIT_USAGE
    except InatUnreachable as error:
        console.say(f"Error: iNaturalist is unreachable at {options.api_url}: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.say("Interrupted; files already written are complete, the rest untouched.")
        return 130
    return EXIT_FILE_ERRORS if console.file_errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
