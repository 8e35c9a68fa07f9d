#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "pyinaturalist>=0.20,<0.22",
#     "pyexiv2>=2.15,<3",
#     "Pillow>=10,<14",
#     "numpy>=1.24",
#     "scipy>=1.12",
#     "rawpy>=0.21",
#     "pillow-heif>=0.16",
#     "opencv-python-headless>=4.10,<6",
#     "tqdm>=4.66",
#     "platformdirs>=3",
# ]
# ///
"""inat_photos: find which local photos were uploaded to iNaturalist and tag them.

Point it at a photo archive and an iNaturalist login. It pairs local photos with the user's
uploads by time and structural similarity, then writes the iNaturalist ids and the current
identification into each matched photo's XMP. Only metadata ever changes; pixels never do.

The data flow; each numbered section of this file owns one step and uses only the sections
above it (tests/test_layout.py checks that):

    1-3   settings, parsing, model: Options (frozen, built once) and the values passed on
    4     console and file plumbing: Console, progress, Memo, atomic writes
    5-6   iNaturalist API and the cache directory's stores:
            ObservationStore (synced) -> Observation -> Candidate
            PhotoCache: downloads inside the DownloadLedger's budget; a day whose uploads
              the budget left out waits for a later run
            lineages (kingdom..taxon) for --hierarchical-keywords/--darwin-core, places
              (country, state, county, town) for --location-names
    7     folders -> picture files -> LocalPhoto (metadata, via the LocalIndex)
            -> prepare_local_photos: sidecars read, RAW+JPEG pairs joined
    8-9   decoding; compare_pictures(local, upload) -> Comparison, and the verdict
    10    every thread: PictureSource (downloads ahead, decoding) + PairScorer: the compare
            function (an upload no photo lined up with, again flipped) + ComparingAhead:
            pairs compared ahead
    11    per day: planned_pairs(...) -> PairScorer.expect: those pairs compared ahead
            match_day(photos, candidates, compare, options) -> DayOutcome (pure)
    12    plan_update(photo, ...) -> Update -> write_update (atomic, or dry run)
            geotag_decision: the observation's position, only where the photo has none
            into the photo, or its XMP sidecar; a pair's partners get their own Update
    13-14 DayOutcome + updates -> console lines, log rows, Tally -> summary, HTML log
    15    run: the walk, the days in turn, the summary; the exit code from main (17)
    16    --associate, --dissociate, --list-problems: one file, no matching

Glossary:
  upload       a photo on iNaturalist (InatPhoto), one of an observation's photos
  candidate    an upload taken on the same day as local photos, with its observation
  cluster      local photos and candidates close together in time, compared with each other
  window       in a long cluster (a bioblitz day), the photos within --cluster_threshold of an
               observation's time or of a photo found for it: the only ones compared with it
  association  a local photo paired with the upload it was the source of; written as ids
  caption      the identification as a keyword, 'Coyote (Canis latrans)', in dc:subject
  part         an upload that shows part of a local photo already associated with a bigger one
  tie          an upload that two local photos fit almost equally; refused, never guessed
  sidecar      NAME.xmp or NAME.EXT.xmp beside a picture: where RAW and HEIC files (and, with
               --sidecars, every picture) keep their tags; the picture is never written
  partner      a RAW+JPEG pair's other file: not compared, tagged like the one that is
  lineage      a taxon's (rank, name) from kingdom down, for hierarchy and Darwin Core
  name match   a local file named as an upload's original file (seen only with the user's
               token); it decides among look-alikes of its cluster
  coarse score the score of a lined-up pair shrunk to a quarter: what export filters
               (sharpening, clarity, noise reduction) leave alone
  verdict      a pair below --ssim_threshold is still taken, without an explicit threshold,
               on its evidence: coarse score, matching points, margin (evidence_grounds)
  local levels an upload's local brightness and contrast brought to the photo's, so that
               local tone tools (graduated filters, dehaze) leave the coarse evidence alone
  overlay      what an upload shows that the photo has no counterpart for: a band or frame
               along an edge, a mark (logo, text) inside; left out of the scores, bounded
  local warp   a liquify push: a small region moved smoothly, the rest in place; the photo
               is resampled through it (local_warp), a moved subject never is
  mirrored     an upload the user flipped left to right: looked for flipped only when no
               photo lined up with it as it is (PairScorer._found_mirrored)
  correlated   an upload whose keypoints line up with no photo (a soft strip of
               background): placed by correlation instead, then compared as if lined up
"""

from __future__ import annotations

import sys

__version__ = "1.5.13"

if __name__ == "__main__" and sys.argv[1:] == ["--version"]:
    # Python compiles this whole file before its first line runs; answering here spares
    # --version the imports and the classes below, a third of its time (argparse answers
    # every other spelling of it, and the installed command, in the same words).
    print(f"inat_photos.py {__version__}")
    raise SystemExit(0)

import argparse
import base64
import bisect
import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import shlex
import sqlite3
import stat
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

# The modules of requirements.txt's packages, checked before any of them is imported.
RUNTIME_MODULES = (
    "pyinaturalist",
    "pyexiv2",
    "PIL",
    "numpy",
    "scipy",
    "rawpy",
    "pillow_heif",
    "cv2",
    "tqdm",
    "platformdirs",
)


def run_in_own_environment(script: Path, python: Path) -> None:
    """Re-run the script with the .venv beside it when this Python lacks the tool's packages.

    `./inat_photos.py` from a shell or from cron starts the first python3 on the PATH; the
    quick start installs the packages into .venv beside the script instead."""
    import importlib.util

    missing = [name for name in RUNTIME_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    own = script.resolve().parent / ".venv" / ("Scripts" if os.name == "nt" else "bin")
    own_python = own / ("python.exe" if os.name == "nt" else "python")
    if own_python.exists() and own.parent.resolve() != Path(sys.prefix).resolve():
        os.execv(own_python, [str(own_python), str(script), *sys.argv[1:]])
    print(
        f"Error: {python} lacks the package(s) of module(s) {', '.join(missing)}. Install them "
        f"into .venv beside {script.name} (see the README's Install section) or run "
        f"'pipx install .' in its folder.",
        file=sys.stderr,
    )
    sys.exit(2)  # EXIT_USAGE: the set-up, not a photo, is at fault


if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class _OnFirstUse:
    """A module imported when first used, which then takes this stand-in's global name: numpy
    and Pillow cost a third of a second that --version, --help and an unchanged rerun never use."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __getattr__(self, attribute: str) -> Any:
        import importlib

        module = importlib.import_module(self.module)  # the import lock makes this thread-safe
        globals()[self.name] = module
        return getattr(module, attribute)


if not TYPE_CHECKING:
    np = _OnFirstUse("numpy", "np")
    Image = _OnFirstUse("PIL.Image", "Image")


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
# Without --inat_size or --ssim_threshold, uploads are compared at this smaller size first
# (a quarter of the bytes); only those it does not settle are downloaded at SSIM_INATSIZE.
FIRST_INATSIZE = "medium"

DEFAULT_API_URL = "https://api.inaturalist.org/v1"  # INAT_API_URL overrides it
INAT_WEB_URL = "https://www.inaturalist.org"
USER_AGENT = f"inat_photos/{__version__}"
TOKEN_PAGE = f"{INAT_WEB_URL}/users/api_token"  # where a signed-in user gets an API token

# With a token, observations come from API v2 with only these fields (RISON, as v2 takes them):
# what parse_observation, the store and the re-check read, and nothing else.
V2_FIELDS = (
    "(id:!t,uri:!t,observed_on:!t,time_observed_at:!t,created_at:!t,updated_at:!t,"
    "location:!t,private_location:!t,obscured:!t,geoprivacy:!t,taxon_geoprivacy:!t,"
    "positional_accuracy:!t,place_ids:!t,place_guess:!t,"
    "taxon:(id:!t,name:!t,rank:!t,preferred_common_name:!t,ancestor_ids:!t),"
    "observation_photos:(id:!t,position:!t,"
    "photo:(id:!t,url:!t,original_filename:!t,hidden:!t,flags:(resolved:!t))),"
    "photos:(id:!t,original_filename:!t))"  # where pyinaturalist's Photo model finds the name
)

# A local file with the upload's original file name (only a token shows it) needs only this
# similarity: the name is strong evidence, the score still has to agree.
NAME_THRESHOLD = 0.80


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


TAG_HIERARCHY = "Xmp.lr.hierarchicalSubject"  # Lightroom's, read by digiKam and XnView too


# The lr:hierarchicalSubject entry and the Darwin Core terms this tool wrote, recorded like
# TAG_CAPTION so that only they are ever replaced.
TAG_HIERARCHY_CAPTION = "Xmp.iNaturalist.hierarchicalSubject"


TAG_DARWIN_CORE = "Xmp.iNaturalist.darwinCore"  # 'term=value' for each term written


DWC_NAMESPACE = "http://rs.tdwg.org/dwc/terms/"  # Simple Darwin Core, as naturtag writes it


# --geotag: the position this tool wrote ('lat,lng'), so that a later run moves only its own
# position and --dissociate removes exactly it; a position that differs is the user's.
TAG_POSITION = "Xmp.iNaturalist.position"


# --location-names: 'key=value' for each location field this tool wrote, as TAG_DARWIN_CORE.
TAG_LOCATION_NAMES = "Xmp.iNaturalist.locationNames"


# The IPTC location fields photo managers show and search (Iptc4xmpCore is exiv2's 'iptc').
LOCATION_FIELDS = (
    "Xmp.photoshop.Country",
    "Xmp.iptc.CountryCode",
    "Xmp.photoshop.State",
    "Xmp.photoshop.City",
    "Xmp.iptc.Location",
)


# Two positions closer than this (degrees, about 10 cm) are the same: EXIF's rationals and the
# 7 decimals of TAG_POSITION round differently.
SAME_POSITION = 1e-6


DWC_PREFIX = "dwc"


INAT_SIZES = ("small", "medium", "large", "original")


INAT_PIXELS = {"small": 240, "medium": 500, "large": 1024, "original": 2048}  # longest side


JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe"}
IN_FILE_SUFFIXES = JPEG_SUFFIXES | {".png", ".tif", ".tiff"}  # tags go into the file


RAW_FORMATS = {  # suffix -> the name messages use; decoded with LibRaw, never written
    ".cr2": "Canon CR2",
    ".cr3": "Canon CR3",
    ".nef": "Nikon NEF",
    ".arw": "Sony ARW",
    ".raf": "Fujifilm RAF",
    ".orf": "Olympus ORF",
    ".rw2": "Panasonic RW2",
    ".pef": "Pentax PEF",
    ".dng": "DNG",
}


HEIF_FORMATS = {".heic": "HEIC", ".heif": "HEIF", ".hif": "HEIF", ".avif": "AVIF"}  # never written


PICTURE_SUFFIXES = IN_FILE_SUFFIXES | set(RAW_FORMATS) | set(HEIF_FORMATS)


SIDECAR_SUFFIX = ".xmp"


SIDECAR_NAMINGS = ("lightroom", "darktable")  # NAME.xmp or NAME.EXT.xmp; see name_sidecars


TAXA_PER_REQUEST = 30  # the most ids iNaturalist's taxa endpoint answers in one request


PLACES_PER_REQUEST = 500  # the most ids iNaturalist's places endpoint answers in one request


PER_PAGE = 200  # the API's maximum page size


ID_BATCH = 100  # observations asked for by id per request: the URL stays near 1 KB


DELETED_PER_PAGE = 500  # ids of deleted observations per page, the API's maximum


# Renames and common-name edits do not change an observation's updated_at: observations that
# local photos point at are asked for again, by id, when last asked this many days ago.
RECHECK_DAYS = 7


DOWNLOAD_WORKERS = 4  # parallel photo downloads; iNaturalist's media host allows a few


# iNaturalist may block a client for good that downloads more than 5 GB of photos in an hour
# or 24 GB in a day: the defaults of --max-download-per-hour and --max-download-per-day stay
# well inside. Counted across runs in the cache's download ledger.
MAX_DOWNLOAD_PER_HOUR = 4_000_000_000  # bytes
MAX_DOWNLOAD_PER_DAY = 20_000_000_000


COMPARE_WORKERS = os.cpu_count() or 2  # decoding and scoring release the GIL: use every core


# Local photos whose pairs are compared ahead of the matching, in the background, and the
# group a cluster's photos are compared in; each holds its decoded picture (a few MB) until
# its pairs are done.
PREFETCH_AHEAD = 4


TEMPORARY_SUFFIX = ".inat-tmp"  # the copy being written beside a photo before it replaces it


HTML_THUMBNAIL = 240  # longest side of thumbnails embedded in the HTML log, pixels


MAX_OFFSET = dt.timedelta(hours=26)  # the largest camera-clock error, stated or looked for


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


LOGIN_VARIABLES = ("USERNAME", "PASSWORD", "APP_ID", "APP_SECRET")  # INAT_*, as pyinaturalist


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
    # No --ssim_threshold given: below it, a pair may still be taken on the verdict's evidence.
    calibrated: bool = True
    recompute: bool = False
    bypass_cache: bool = False
    inat_size: str = SSIM_INATSIZE
    first_size: str | None = FIRST_INATSIZE  # None: every upload at inat_size only
    gpu: bool = USE_GPU
    time_offset: dt.timedelta | None = None
    dry_run: bool = False
    api_url: str = DEFAULT_API_URL
    cache: Path = Path(".")
    sidecars: bool = False  # JPEG, PNG and TIFF tags go into sidecars too
    sidecar_names: str = SIDECAR_NAMINGS[0]
    hierarchical_keywords: bool = False
    darwin_core: bool = False
    token: str | None = field(default=None, repr=False)  # INAT_API_TOKEN; a secret
    token_file: Path | None = None
    password_login: bool = False  # INAT_USERNAME, _PASSWORD, _APP_ID and _APP_SECRET are set
    keyring: bool = False
    associate: tuple[Path, int] | None = None  # --associate FILE PHOTO_ID
    max_download_per_hour: int = MAX_DOWNLOAD_PER_HOUR  # bytes of photos, across runs
    quiet: bool = False  # for cron: print only changes, new problems and then the summary
    list_problems: bool = False
    max_download_per_day: int = MAX_DOWNLOAD_PER_DAY
    dissociate: Path | None = None  # --dissociate FILE
    geotag: bool = False  # write the observation's position where a photo has none
    geotag_private: bool = False  # ... its true position too, when obscured (needs a token)
    location_names: bool = False  # write country, state, city and place guess (IPTC)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Options:
        """Options from parsed arguments and the environment (INAT_API_URL, INAT_PHOTOS_CACHE)."""
        return cls(
            user=args.user,
            paths=tuple(args.paths),
            logfile=Path(args.logfile) if args.logfile else None,
            cluster_threshold=args.cluster_threshold,
            ssim_threshold=SSIM_THRESHOLD if args.ssim_threshold is None else args.ssim_threshold,
            calibrated=args.ssim_threshold is None,
            recompute=args.recompute,
            bypass_cache=args.bypass_cache,
            inat_size=args.inat_size or SSIM_INATSIZE,
            first_size=(
                FIRST_INATSIZE if args.inat_size is None and args.ssim_threshold is None else None
            ),
            gpu=args.gpu,
            time_offset=args.time_offset,
            dry_run=args.dry_run,
            api_url=environ.get("INAT_API_URL", DEFAULT_API_URL).rstrip("/"),
            cache=cache_directory(environ),
            sidecars=args.sidecars,
            sidecar_names=args.sidecar_names,
            hierarchical_keywords=args.hierarchical_keywords,
            darwin_core=args.darwin_core,
            token=environ.get("INAT_API_TOKEN", "").strip() or None,
            token_file=Path(args.token_file) if args.token_file else None,
            password_login=all(environ.get(f"INAT_{name}") for name in LOGIN_VARIABLES),
            keyring=args.keyring,
            associate=(Path(args.associate[0]), int(args.associate[1])) if args.associate else None,
            dissociate=Path(args.dissociate) if args.dissociate else None,
            max_download_per_hour=args.max_download_per_hour,
            max_download_per_day=args.max_download_per_day,
            quiet=args.quiet,
            list_problems=args.list_problems,
            geotag=args.geotag or args.geotag_private,
            geotag_private=args.geotag_private,
            location_names=args.location_names,
        )

    @property
    def needs_lineages(self) -> bool:
        """True when the taxonomy above each taxon is written, so it must be fetched."""
        return self.hierarchical_keywords or self.darwin_core

    @property
    def wants_login(self) -> bool:
        """True when the run is to use the user's iNaturalist login (a token)."""
        return bool(self.token or self.token_file or self.password_login or self.keyring)

    @property
    def upload_sizes(self) -> tuple[str, ...]:
        """The iNaturalist sizes compared, smallest first: the first settles clear pairs."""
        if self.first_size in (None, self.inat_size) or not self.calibrated:
            return (self.inat_size,)  # a user's own bar is read at the size they chose
        return (self.first_size, self.inat_size)

    @property
    def matching_settings(self) -> str:
        """The settings a comparison depends on; one made under others is not reused."""
        return (
            f"{__version__} {self.ssim_threshold} {self.calibrated}"
            f" {'+'.join(self.upload_sizes)} {self.cluster_threshold}"
        )


# ---------------------------------------------------------------------------
# 2. Parsing
#    Option values, EXIF dates, GPS positions in EXIF, XMP and API form (read and
#    written), API times, taxon names, ordinals, distances and printable paths. No I/O.
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


_SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """'500MB', '4GB', '1.5 GB', '800k' or a number of bytes -> bytes (decimal units, as
    iNaturalist states its limits; KiB, MiB and GiB are binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size such as 500MB or 4GB")
    number, unit, binary = match.groups()
    scale = 1024 ** "KMGT".index(unit.upper()) * 1024 if binary and unit else 0
    size = float(number) * (scale or _SIZE_UNITS[unit.upper()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is no size to download")
    return int(size)


def describe_size(size: float) -> str:
    """Bytes for people: '4 GB', '512 MB', '37 kB'."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} bytes"


def parse_time_offset(text: str) -> dt.timedelta:
    """'+1h', '-30m', '45min', '-3:00', '+1:30', '90s': how far the camera clock was ahead."""
    if re.fullmatch(r"\s*[+-]?\s*0+(?:\.0*)?\s*", text):  # 0 needs no unit: the clock was right
        return dt.timedelta(0)
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
        hours = MAX_OFFSET // dt.timedelta(hours=1)
        raise argparse.ArgumentTypeError(f"time offset {text!r} is more than {hours} hours")
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


def on_earth(lat: float, lng: float) -> tuple[float, float] | None:
    """(lat, lng) when both are in range, else None: one check for every reader of positions."""
    return (lat, lng) if -90 <= lat <= 90 and -180 <= lng <= 180 else None


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
    return on_earth(lat, lng) if (lat, lng) != (0.0, 0.0) else None


def _xmp_coordinate(text: Any, negative: str) -> float:
    """XMP's 'DD,MM.mmN' or 'DD,MM,SSN' as signed degrees; ValueError when malformed."""
    text = str(text).strip().upper()
    if not text or text[-1] not in "NSEW":
        raise ValueError(text)
    parts = [float(part) for part in text[:-1].split(",")]
    if not 1 <= len(parts) <= 3 or any(part < 0 for part in parts):
        raise ValueError(text)
    degrees = sum(part / 60**i for i, part in enumerate(parts))
    return -degrees if text[-1] == negative else degrees


def parse_xmp_gps(xmp: Mapping[str, Any]) -> tuple[float, float] | None:
    """(lat, lng) from XMP's exif:GPSLatitude and exif:GPSLongitude, or None."""
    try:
        lat = _xmp_coordinate(xmp["Xmp.exif.GPSLatitude"], "S")
        lng = _xmp_coordinate(xmp["Xmp.exif.GPSLongitude"], "W")
    except (KeyError, ValueError):
        return None
    return on_earth(lat, lng)


def exif_coordinate(value: float) -> str:
    """Degrees as EXIF's three rationals, to a ten-thousandth of a second."""
    units = round(abs(value) * 3600 * 10_000)
    degrees, rest = divmod(units, 3600 * 10_000)
    minutes, seconds = divmod(rest, 60 * 10_000)
    return f"{degrees}/1 {minutes}/1 {seconds}/10000"


def xmp_coordinate(value: float, positive: str, negative: str) -> str:
    """Degrees as XMP's 'DD,MM.mmmmmmmmN', to 1e-8 of a minute."""
    units = round(abs(value) * 60 * 10**8)
    degrees, minutes = divmod(units, 60 * 10**8)
    hemisphere = negative if value < 0 else positive
    return f"{degrees},{minutes // 10**8:02d}.{minutes % 10**8:08d}{hemisphere}"


def same_position(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """True when both positions are given and agree within SAME_POSITION."""
    if a is None or b is None:
        return False
    return abs(a[0] - b[0]) < SAME_POSITION and abs(a[1] - b[1]) < SAME_POSITION


def parse_location(text: Any) -> tuple[float, float] | None:
    """The API's 'lat,lng' string (or [lat, lng]) as a tuple, or None."""
    parts = text.split(",") if isinstance(text, str) else text
    if not isinstance(parts, (list, tuple)):
        return None
    try:
        lat, lng = (float(part) for part in parts)
    except (TypeError, ValueError):
        return None
    return on_earth(lat, lng)


def _parse_iso_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


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


def file_stem(name: str) -> str:
    """A file name without folders and extension, case-folded: 'IMG_1234.JPG' -> 'img_1234'."""
    base = re.split(r"[/\\]", name.strip())[-1]
    stem, dot, _ = base.rpartition(".")
    return (stem if dot and stem else base).casefold()


def same_file_name(local_name: str, uploaded_name: str | None) -> bool:
    """True when a local file and an upload's original file name name the same shot: case and
    extension aside, so 'IMG_1234.CR2' and its export 'img_1234.jpeg' agree."""
    if not uploaded_name or not file_stem(uploaded_name):
        return False
    return file_stem(local_name) == file_stem(uploaded_name)


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
    original_filename: str | None = None  # the uploaded file's name; only a token shows it

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
    taxon_id: int | None = None
    taxon_rank: str | None = None
    taxon_scientific: str | None = None  # the name as iNaturalist spells it, no 'ssp.'/'sp.'
    ancestor_ids: tuple[int, ...] = ()  # from the root down, without the taxon itself
    public_location: tuple[float, float] | None = None  # as everyone sees it (maybe a decoy)
    private_location: tuple[float, float] | None = None  # the true place: the owner's token only
    location_hidden: bool = False  # obscured or private, by the user's or the taxon's choice
    accuracy: int | None = None  # positional_accuracy of the true place, metres
    place_ids: tuple[int, ...] = ()  # iNaturalist's standard places it lies in, as shown publicly
    place_guess: str | None = None  # the locality as iNaturalist shows it publicly

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
    legacy = record.get("photos") if isinstance(record.get("photos"), list) else []
    names = {
        _int_or_none(p.get("id")): p.get("original_filename") for p in legacy if isinstance(p, dict)
    }
    entries = record.get("observation_photos") or []
    if not entries:  # older answers list photos without observation_photos
        entries = [{"photo": p} for p in legacy]
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
                original_filename=_text_or_none(
                    photo.get("original_filename") or names.get(photo_id)
                ),
            )
        )
    photos.sort(key=lambda p: (p.position, p.id))
    # Positions may be missing or repeated; number photos as iNaturalist shows them.
    photos = [dataclasses.replace(p, position=i + 1) for i, p in enumerate(photos)]
    uri = record.get("uri")
    taxon = record.get("taxon") if isinstance(record.get("taxon"), dict) else {}
    # The owner's own obscured or private observations carry their true place with a token.
    private = parse_location(record.get("private_location"))
    hidden = bool(record.get("obscured")) or any(
        record.get(key) in ("obscured", "private") for key in ("geoprivacy", "taxon_geoprivacy")
    )
    place_ids = record.get("place_ids") if isinstance(record.get("place_ids"), list) else []
    return Observation(
        id=obs_id,
        url=uri
        if isinstance(uri, str) and uri.startswith("http")
        else (f"{INAT_WEB_URL}/observations/{obs_id}"),
        name=taxon_name(record.get("taxon")),
        observed_at=observed_at.replace(tzinfo=None) if observed_at else None,
        minute_precision=bool(observed_at and observed_at.second == 0),
        observed_on=observed_on,
        location=private or parse_location(record.get("location")),
        obscured=private is None
        and (bool(record.get("obscured")) or record.get("geoprivacy") == "obscured"),
        photos=tuple(photos),
        taxon_id=_int_or_none(taxon.get("id")),
        taxon_rank=taxon["rank"] if isinstance(taxon.get("rank"), str) else None,
        taxon_scientific=" ".join(taxon["name"].split())
        if isinstance(taxon.get("name"), str)
        else None,
        ancestor_ids=taxon_ancestor_ids(taxon),
        public_location=parse_location(record.get("location")),
        private_location=private,
        location_hidden=hidden,
        accuracy=parse_positive_int(record.get("positional_accuracy")),
        place_ids=tuple(i for i in map(parse_positive_int, place_ids) if i is not None),
        place_guess=_text_or_none(record.get("place_guess")),
    )


def taxon_ancestor_ids(taxon: dict[str, Any]) -> tuple[int, ...]:
    """A taxon's ancestors from the root down, from 'ancestor_ids' or the 'ancestry' path."""
    ids: Any = taxon.get("ancestor_ids")
    if not isinstance(ids, list):
        ancestry = taxon.get("ancestry")
        ids = ancestry.split("/") if isinstance(ancestry, str) else []
    own = _int_or_none(taxon.get("id"))
    parsed = (parse_positive_int(i) for i in ids)
    return tuple(i for i in parsed if i is not None and i != own)


Lineage = tuple[tuple[str, str], ...]  # (rank, scientific name), kingdom first, taxon last


@dataclass(frozen=True)
class Place:
    """One of iNaturalist's places: a country (admin level 0), state (10), county (20)..."""

    id: int
    name: str
    admin_level: int | None = None
    display_name: str = ""  # 'California, US': the name, then the codes of the places above
    code: str | None = None  # a country's ISO code, where the answer carries one


def parse_place(record: Any) -> Place | None:
    """A places-endpoint result as a Place; None without an id and a name."""
    if not isinstance(record, dict):
        return None
    place_id, name = _int_or_none(record.get("id")), _text_or_none(record.get("name"))
    if place_id is None or name is None:
        return None
    code = _text_or_none(record.get("code"))
    return Place(
        id=place_id,
        name=" ".join(name.split()),
        admin_level=_int_or_none(record.get("admin_level")),
        display_name=_text_or_none(record.get("display_name")) or name,
        code=code.strip().upper() if code else None,
    )


@dataclass(frozen=True)
class Position:
    """A position to write into a photo, WGS-84 degrees, with its accuracy in metres."""

    lat: float
    lng: float
    accuracy: int | None = None
    private: bool = False  # the true position of an obscured or private observation

    @property
    def point(self) -> tuple[float, float]:
        return (self.lat, self.lng)

    @property
    def text(self) -> str:
        """As messages show it."""
        return f"{self.lat:.7f},{self.lng:.7f}"

    @property
    def record(self) -> str:
        """As TAG_POSITION records it: 'lat,lng', and ' private' for a true hidden position."""
        return self.text + " private" * self.private


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
    hierarchy: tuple[str, ...] = ()  # XMP lr:hierarchicalSubject, in order
    written_hierarchy: str | None = None  # the entry this tool wrote (TAG_HIERARCHY_CAPTION)
    darwin_core: tuple[tuple[str, str], ...] = ()  # (Xmp.dwc.* key, value), sorted
    written_darwin_core: tuple[tuple[str, str], ...] = ()  # the terms this tool wrote, likewise
    taken_at_from_exif: bool = True  # False: taken_at is the file's modification time
    sidecar: Path | None = None  # where its tags live when not in the file itself
    partners: tuple[LocalPhoto, ...] = ()  # RAW+JPEG: the pair's other files, tagged alike
    dissociated: bool = False  # TAG_DISSOCIATED: the user took its association back
    xmp_location: tuple[float, float] | None = None  # exif:GPSLatitude/Longitude in its XMP
    written_position: tuple[float, float] | None = None  # TAG_POSITION: the one this tool wrote
    written_private: bool = False  # ... and it was a true hidden position (--geotag-private)
    location_names: tuple[tuple[str, str], ...] = ()  # (LOCATION_FIELDS key, value), sorted
    written_location_names: tuple[tuple[str, str], ...] = ()  # the names this tool wrote

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
Point = tuple[float, float]  # x, y as fractions of a picture's width and height
WHOLE_AREA = 0.97  # a box covering this much of a picture is the whole picture
STRAIGHT_MIN = 0.1  # degrees: a smaller angle is estimation noise, not a straightened upload
MAX_MISFIT = 0.5  # pixels; parts of an upload moving more than this: another shot of the scene


@dataclass(frozen=True)
class Alignment:
    """Where an iNaturalist photo sits in the upright local picture."""

    box: Box
    turns: int = 0  # quarter turns counter-clockwise that bring the iNaturalist photo upright
    angle: float = 0.0  # degrees the user straightened it by, beyond the quarter turns
    # The corners of the upright upload (top left, top right, bottom right, bottom left) in the
    # local picture; empty when they are those of box.
    corners: tuple[Point, ...] = ()
    mirrored: bool = False  # the user flipped it left to right (before the quarter turns)

    @property
    def outline(self) -> tuple[Point, ...]:
        """The four corners of the matched region, rotated when the upload was straightened."""
        if self.corners:
            return self.corners
        left, top, right, bottom = self.box
        return ((left, top), (right, top), (right, bottom), (left, bottom))

    @property
    def area(self) -> float:
        """The fraction of the local picture the upload shows (shoelace formula)."""
        xs, ys = zip(*self.outline, strict=True)
        return abs(sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))) / 2

    @property
    def whole(self) -> bool:
        """True when the upload is the whole picture as it is (no crop, no turn, no angle)."""
        straight = self.turns == 0 and abs(self.angle) < STRAIGHT_MIN and not self.mirrored
        return self.area >= WHOLE_AREA and straight

    def describe(self) -> str:
        """'mirrored, cropped to 64% of the area, straightened 2.1°, rotated 90°' or '' when
        none."""
        parts = ["mirrored"] if self.mirrored else []
        if self.area < WHOLE_AREA:
            parts.append(f"cropped to {self.area * 100:.0f}% of the area")
        if abs(self.angle) >= STRAIGHT_MIN:
            parts.append(f"straightened {abs(self.angle):.1f}°")
        if self.turns:
            parts.append(f"rotated {self.turns * 90}°")
        return ", ".join(parts)


COARSE_STEP = 4  # the coarse score compares large uploads at a quarter of their size


@dataclass(frozen=True)
class Comparison:
    """The similarity of a local photo and a candidate, and how the two were lined up."""

    score: float
    alignment: Alignment | None = None  # None: whole pictures compared as they are
    prefiltered: bool = False  # True: rejected by the cheap check, score is a thumbnail score
    tones: bool = False  # True: the upload's tones were mapped onto the local picture's first
    inliers: int = 0  # matching keypoints consistent with the alignment (0: not by keypoints)
    # ... of a prefiltered pair: those one similarity fitted, too few to line it up
    misfit: float = 0.0  # how far parts of the pictures move against each other, pixels
    matches: int = 0  # keypoint matches before the geometry was fitted (inliers among them)
    coarse: float | None = None  # the score shrunk coarse_step times: what export filters keep
    coarse_step: int = COARSE_STEP  # for a large upload, less for a smaller one
    worst_part: float | None = None  # ... of the worst of its 4 x 4 parts (coarse_evidence)
    smooth: float = 0.0  # pixels: the most a smooth correction (lens, perspective) moved a part
    covered: float = 0.0  # fraction of the upload an overlay covers, left out of the scores
    warped: float = 0.0  # fraction of the picture a local warp (liquify) moved, allowed for
    # ... both read with local tones set aside, only where the plain reading does not decide
    levelled: tuple[float, float] | None = None
    correlated: bool = False  # placed by correlation: no keypoints of the upload lined up

    @property
    def same_shot(self) -> bool:
        """False when parts of the picture moved against each other: another shot of the
        scene (parallax), not this file edited."""
        return self.misfit <= MAX_MISFIT

    @property
    def eligible(self) -> bool:
        """Whether the pair may be associated: lined up in full, and the same shot (the
        thumbnail score of a pair that did not line up can be high for a look-alike)."""
        return not self.prefiltered and self.same_shot

    @property
    def area(self) -> float:
        """The fraction of the local picture the upload shows (1.0 when not lined up)."""
        return self.alignment.area if self.alignment else 1.0

    def describe(self) -> str:
        """What was compensated ('cropped to 48% of the area, straightened 2.1°, tones
        adjusted') and why the pair cannot be the same shot; '' when nothing."""
        parts = [self.alignment.describe() if self.alignment else "", self.tones * "tones adjusted"]
        if self.correlated:
            parts.append("placed by correlation, no keypoints matched")
        if self.smooth:
            parts.append(f"a smooth correction of up to {self.smooth:.1f} px allowed for")
        if self.covered:
            parts.append(f"{self.covered * 100:.0f}% covered by an overlay")
        if self.warped:
            parts.append(f"a local warp over {self.warped * 100:.0f}% of the picture allowed for")
        if not self.same_shot:
            parts.append(f"parts moved by {self.misfit:.1f} px: another shot")
        return ", ".join(part for part in parts if part)


@dataclass(frozen=True)
class Decision:
    """What the assignment decided for one upload of a cluster (indices into the cluster).

    kind "associate": the upload goes to local_index; rivals, if any, fit it almost as well
    only with more of it left out (COVER_APART). "tie": local_index and rivals fit it
    almost equally, nothing is chosen. "part": the upload shows part of local_index, which
    took another upload that shows more of it.
    """

    upload_index: int
    local_index: int
    score: float
    kind: str = "associate"
    rivals: tuple[int, ...] = ()
    by_name: bool = False  # the upload's original file name named this local photo


@dataclass(frozen=True)
class Association:
    """A local photo and the upload it was the source of."""

    photo: LocalPhoto
    candidate: Candidate
    comparison: Comparison
    by_name: bool = False  # the upload's original file name decided, at NAME_THRESHOLD
    grounds: str = ""  # below the threshold: the evidence that decided (evidence_grounds)


@dataclass(frozen=True)
class Tie:
    """An upload that several local photos fit almost equally well: nothing is chosen."""

    candidate: Candidate
    photos: tuple[LocalPhoto, ...]
    comparisons: tuple[Comparison, ...]
    score: float


class Reason(str, Enum):
    """Why a local photo was left unassociated; its value is what the log and console say
    (and what the local index stores)."""

    COMPARED_BEFORE = "compared in vain with the same uploads before"
    BELOW_THRESHOLD = "below the similarity threshold"
    TAKEN_BY_ANOTHER = "best candidate, associated with another photo"
    NO_CANDIDATE = "no iNaturalist photo within the cluster threshold"
    NAMES_ANOTHER = "best candidate, whose original file name is another photo's"
    TIE = "tie"
    UNSAID = ""  # not below the threshold: the comparison's note says why (another shot)

    __str__ = str.__str__
    __format__ = str.__format__


@dataclass(frozen=True)
class Refusal:
    """A local photo left unassociated, with its best candidate when it had one, and why."""

    photo: LocalPhoto
    candidate: Candidate | None
    comparison: Comparison | None
    reason: Reason


@dataclass(frozen=True)
class RefusalRecord:
    """What the log said of a photo left unassociated, as the local index keeps it (JSON):
    why, its best upload and how that scored, and whether it was a tie."""

    reason: str
    upload: int | None = None
    score: float | None = None
    box: Box | None = None
    turns: int = 0
    prefiltered: bool = False
    tie: bool = False
    mirrored: bool = False

    @classmethod
    def of(
        cls, reason: Reason, candidate: Candidate | None, comparison: Comparison | None
    ) -> RefusalRecord:
        alignment = comparison.alignment if comparison else None
        return cls(
            reason.value,
            candidate.photo.id if candidate else None,
            comparison.score if comparison else None,
            alignment.box if alignment else None,
            alignment.turns if alignment else 0,
            comparison.prefiltered if comparison else False,
            reason is Reason.TIE,
            alignment.mirrored if alignment else False,
        )

    @classmethod
    def from_json(cls, found: Any) -> RefusalRecord | None:
        """The record from what the index stored, or None when it is not one."""
        if not isinstance(found, dict):
            return None
        box = found.get("box")
        score = found.get("score")
        return cls(
            str(found.get("reason") or ""),
            found["upload"] if isinstance(found.get("upload"), int) else None,
            float(score) if isinstance(score, (int, float)) else None,
            tuple(map(float, box)) if isinstance(box, list) and len(box) == 4 else None,  # type: ignore[arg-type]
            int(found.get("turns") or 0),
            bool(found.get("prefiltered")),
            bool(found.get("tie")),
            bool(found.get("mirrored")),
        )

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "box": list(self.box) if self.box else None}


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
# 4. Console and file plumbing
#    What every later section may use: the Console (--quiet: changes and new problems
#    only; the one place that counts file errors), progress bars, Memo (made once, by
#    the first thread that asks; an error its making raised is kept for the asker), the
#    process-wide settings (configure_process), the one atomic writer (a copy beside the
#    target, flushed for photos and the log, then renamed over it; store_file for the
#    cache's files), and CacheDirectory, which names the cache's files and removes the
#    copies a killed run left there.
# ---------------------------------------------------------------------------


def file_key(path: Path) -> tuple[bytes, int, int] | None:
    """What says a file is unchanged: its absolute path, size and modification time (None
    when it cannot be read); the local index and the thumbnail cache key files by it."""
    try:
        info = path.stat()
    except OSError:
        return None
    return os.fsencode(path.absolute()), info.st_size, info.st_mtime_ns


def remove_leftover_copies(leftovers: Iterable[Path]) -> None:
    """Delete temporary copies of a run killed mid-write; each original is intact beside it."""
    for path in leftovers:
        with contextlib.suppress(OSError):
            path.unlink()


_NOT_MADE = object()  # a Memo value still being made


@dataclass(frozen=True)
class _Failed:
    """A Memo value whose making raised: every later asker gets the same error."""

    error: BaseException


class Memo(dict):
    """A dict whose values are made once, by the first thread that asks for them; the others
    wait for it. None (cannot be had) is kept like any value, and so is an error: a value a
    background thread failed to make raises that error for the foreground that asks for it,
    which reports it in its place (background threads report nothing themselves)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._making: dict[Any, threading.Lock] = {}

    def make(self, key: Any, make: Callable[[], Any]) -> Any:
        value = self.get(key, _NOT_MADE)
        if value is _NOT_MADE:
            with self._lock:
                busy = self._making.setdefault(key, threading.Lock())
            with busy:
                # Read with get: another thread may forget the value meanwhile.
                value = self.get(key, _NOT_MADE)
                if value is _NOT_MADE:
                    try:
                        value = self[key] = make()
                    except Exception as error:
                        value = self[key] = _Failed(error)
        if isinstance(value, _Failed):
            raise value.error
        return value

    def forget(self, keys: Iterable[Any] | None = None) -> None:
        """Drop these keys' values, or every value."""
        with self._lock:
            if keys is None:
                self.clear()
                self._making.clear()
            for key in keys or ():
                self.pop(key, None)
                self._making.pop(key, None)


def configure_process() -> None:
    """The settings every entry point needs before a picture is read or written: the
    decompression-bomb limit and the tool's XMP namespaces. main, the benchmarks and the tests
    call it; it may be called again."""
    import pyexiv2

    Image.MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    pyexiv2.set_log_level(4)  # exiv2's own warnings are noise; we report failures ourselves
    for uri, prefix in ((INAT_NAMESPACE, INAT_PREFIX), (DWC_NAMESPACE, DWC_PREFIX)):
        with contextlib.suppress(Exception):  # already registered in this process
            pyexiv2.registerNs(uri, prefix)


def _write_beside(
    path: Path,
    data: bytes | Iterable[bytes],
    mode: int,
    owner: os.stat_result | None,
    durable: bool = True,
) -> str:
    """Write data to a hidden temporary file beside path (flushed to disk when durable), with
    mode and owner's owner and group where allowed; returns its name. Nothing is left on
    failure."""
    fd, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        if owner is not None:
            with contextlib.suppress(OSError):  # only root may give a file away
                os.chown(temporary, owner.st_uid, owner.st_gid)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename) to disk where the system allows it."""
    with contextlib.suppress(OSError):  # directories cannot be fsynced everywhere
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _rename_over(temporary: str, path: Path) -> None:
    """Rename a finished temporary copy over path; if that fails, the copy goes."""
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def replace_file_atomically(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write data beside path, flush it to disk, keep path's permissions, then rename over it."""
    original = path.stat()
    _rename_over(_write_beside(path, data, stat.S_IMODE(original.st_mode), original), path)
    _sync_directory(path.parent)


def create_file_atomically(path: Path, data: bytes, like: Path) -> None:
    """Create path with data, complete or not at all, with like's permissions (less execute,
    plus the owner's write: a read-only RAW keeps an updatable sidecar).

    Never replaces a file that appeared meanwhile: FileExistsError then.
    """
    model = like.stat()
    mode = stat.S_IMODE(model.st_mode) & 0o666 | stat.S_IWUSR
    temporary = _write_beside(path, data, mode, model)
    try:
        try:
            os.link(temporary, path)  # fails if path exists: nothing is ever clobbered
        except FileExistsError:
            raise
        except OSError:  # file systems without hard links (FAT, exFAT on memory cards)
            if path.exists():
                raise FileExistsError(f"{path.name} appeared meanwhile") from None
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    _sync_directory(path.parent)


def store_file(path: Path, data: bytes) -> None:
    """Put a file of the cache directory in place, whole or not at all. It is not flushed to
    disk: a crash costs a download or a thumbnail, made again, and leaves at most a temporary
    copy, which CacheDirectory.remove_leftovers deletes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _rename_over(_write_beside(path, data, 0o600, None, durable=False), path)


@dataclass(frozen=True)
class CacheDirectory:
    """The cache directory's files: the one place their names are written."""

    root: Path
    observations: Path = field(init=False)  # ObservationStore: observations, taxa, places
    local_index: Path = field(init=False)  # LocalIndex: files read and decisions made
    downloads: Path = field(init=False)  # DownloadLedger: the download budget
    photos: Path = field(init=False)  # PhotoCache: downloaded uploads, a folder per size
    thumbnails: Path = field(init=False)  # ThumbnailCache: the HTML log's thumbnails
    run_lock: Path = field(init=False)  # one run at a time

    def __post_init__(self) -> None:
        names = ("observations.sqlite", "local_index.sqlite", "downloads.sqlite")
        names += ("photos", "thumbnails", "run.lock")
        for attribute, name in zip(list(self.__dataclass_fields__)[1:], names, strict=True):
            object.__setattr__(self, attribute, self.root / name)

    def api_files(self) -> dict[str, str]:
        """pyinaturalist's session files, as its ClientSession takes them."""
        return {
            "cache_file": str(self.root / "api_requests.sqlite"),
            "ratelimit_path": str(self.root / "api_ratelimit.sqlite"),
            "lock_path": str(self.root / "api_ratelimit.lock"),
        }

    def made(self) -> CacheDirectory:
        """The directory, created private (0700) if it is not there."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self

    def remove_leftovers(self) -> None:
        """Delete the temporary copies a killed run left in the cache (and the photo cache's
        .part files of versions before 1.4.0)."""
        suffix = TEMPORARY_SUFFIX
        for pattern in (
            f"*{suffix}",
            f"photos/*/*{suffix}",
            f"thumbnails/*/*/*{suffix}",
            "photos/*/*.part",
        ):
            for leftover in self.root.glob(pattern):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def replace_or_create(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write a file we own (the log) atomically whether or not it exists yet."""
    if not path.exists():
        path.write_bytes(b"")
    replace_file_atomically(path, data)


class Console:
    """Prints messages and keeps count of the problems reported; never prints a secret.

    say() is for progress and information, which --quiet silences; report() for changes
    (and errors the run stops on), warn() and file_error() for problems: those are printed
    with --quiet too, except a file's problem or notice that an earlier run reported already
    (reported_before, the LocalIndex's memory; --list-problems lists them).
    """

    def __init__(self, stream: Any = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.file_errors = 0
        self.errors: list[tuple[Path, str]] = []  # for the HTML log's Errors section
        self.secrets: list[str] = []
        self.spoke = False  # printed a change or a problem: --quiet then prints the summary
        self.reported_before: Callable[[Path, str], bool] | None = None

    def hide(self, secret: str) -> None:
        """Blank secret out of every later message, wherever it might turn up."""
        self.secrets.append(secret)

    def _clean(self, message: str) -> str:
        for secret in self.secrets:
            message = message.replace(secret, "[token]")
        return message

    def say(self, message: str) -> None:
        """Progress and information: silent with --quiet."""
        if not self.quiet:
            print(self._clean(message), file=self.stream, flush=True)

    def _repeated(self, path: Path | None, message: str) -> bool:
        """Whether --quiet leaves this out: an earlier run reported it about this file."""
        known = path is not None and self.reported_before is not None
        seen = known and self.reported_before(path, message)  # type: ignore[misc]
        return self.quiet and seen

    def report(self, message: str, path: Path | None = None) -> None:
        """A change (a tag written, a caption updated), or a notice about the file at path."""
        if not self._repeated(path, message):
            self.spoke = True
            print(self._clean(message), file=self.stream, flush=True)

    def warn(self, message: str, path: Path | None = None) -> None:
        if not self._repeated(path, message):
            self.spoke = True
            print(self._clean(f"Warning: {message}"), file=sys.stderr, flush=True)

    def file_error(self, path: Path, reason: str) -> None:
        """Report a file that could not be read or written; the run goes on. One that --quiet
        leaves out (reported before) leaves the exit code alone: a monitor sees what is new."""
        self.errors.append((path, reason))
        if not self._repeated(path, reason):
            self.file_errors += 1
            self.spoke = True
            message = f"Error: {show_path(path)}: {reason}"
            print(self._clean(message), file=sys.stderr, flush=True)


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


def make_private(cache: Path, console: Console) -> None:
    """The cache will hold true locations: readable by its owner only (it is created so)."""
    with contextlib.suppress(OSError):
        if os.name == "posix" and stat.S_IMODE(cache.stat().st_mode) & 0o077:
            cache.chmod(0o700)
            console.say(f"Made {show_path(cache)} readable by you only: it holds private data.")


# ---------------------------------------------------------------------------
# 5. iNaturalist API
#    The pyinaturalist session that asks the API (rate limit, retries, paging, v1 and
#    v2), its errors in words, and the user's token (a file, the keyring, a login).
# ---------------------------------------------------------------------------


class InatUnreachable(Exception):
    """iNaturalist could not be asked, or answered something unusable."""


class TokenRefused(InatUnreachable):
    """iNaturalist refused the API token (401 or 403): expired, revoked or mistyped."""


def refused_token_message(status: int | str) -> str:
    """The one line that says the token was refused and how to get a new one."""
    return (
        f"iNaturalist refused the API token (HTTP {status}); tokens last 24 hours. Get a new"
        f" one at {TOKEN_PAGE} and put it in INAT_API_TOKEN or the --token-file, or set"
        " INAT_USERNAME, INAT_PASSWORD, INAT_APP_ID and INAT_APP_SECRET to have one fetched."
    )


def _v2_url(api_url: str) -> str:
    """The API v2 root beside a v1 root: .../v1 -> .../v2."""
    return re.sub(r"/v1$", "", api_url) + "/v2"


class InatClient:
    """Every conversation with iNaturalist: pyinaturalist for the API, a pool for photos.

    With a token (the user's own login) observations come from API v2 with V2_FIELDS, which
    then include original file names and true locations, and deletions can be listed.
    """

    def __init__(self, api_url: str, cache: Path, token: str | None = None) -> None:
        from pyinaturalist import ClientSession
        from requests.adapters import HTTPAdapter
        from requests_cache import DO_NOT_CACHE
        from urllib3.util import Retry

        self.api_url = api_url
        self._token = token  # sent only as pyinaturalist's Authorization header
        self.session = ClientSession(
            **CacheDirectory(cache).made().api_files(),
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

    def _verify(self, url: str) -> bool | str:
        """The TLS trust requests itself would use for url: REQUESTS_CA_BUNDLE and the like.

        pyinaturalist hands send() verify=True, which skips the step where requests reads
        REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE: behind a TLS-inspecting proxy (whose CA those
        name) every API call failed. Proxies need nothing: send() reads them itself.
        """
        return self.session.merge_environment_settings(url, {}, None, None, None)["verify"]

    def _get(self, url: str, **params: Any) -> Any:
        """GET through pyinaturalist with the TLS trust requests itself would use."""
        from pyinaturalist.session import get

        if self._token:
            params["access_token"] = self._token
        return get(url, session=self.session, verify=self._verify(url), **params)

    @property
    def authenticated(self) -> bool:
        return bool(self._token)

    def authenticate(self, token: str) -> None:
        """Send token with every later API request (never with photo downloads)."""
        self._token = token

    def _refused(self, error: BaseException) -> None:
        """Raise TokenRefused when error is iNaturalist refusing the token."""
        status = getattr(getattr(error, "response", None), "status_code", None)
        if self._token and status in (401, 403):
            raise TokenRefused(refused_token_message(status)) from None

    def _get_json(self, path: str, **params: Any) -> dict[str, Any]:
        """GET an API path (relative to v1, or a full URL) and return its JSON object."""
        url = path if "://" in path else f"{self.api_url}/{path}"
        try:
            response = self._get(url, **params)
            answer = response.json()
        except Exception as error:  # requests, urllib3 and json errors all mean the same here
            self._refused(error)
            raise InatUnreachable(_describe_http_error(error)) from None
        if not isinstance(answer, dict):
            raise InatUnreachable(f"unexpected answer from {path}")
        return answer

    def _paginate(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """All results of a listing, paged by id_above as iNaturalist asks for big sets."""
        from pyinaturalist.paginator import paginate_all

        try:
            answer = paginate_all(self._get_json, path, method="id", per_page=PER_PAGE, **params)
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
            response.raise_for_status()  # a refused token: _refused below
            results = response.json().get("results") or []
            if not isinstance(results, list):
                raise InatUnreachable(f"unexpected answer from users/{login}")
        except (UserError, InatUnreachable):
            raise
        except Exception as error:  # network, HTTP and JSON failures alike
            self._refused(error)
            raise InatUnreachable(_describe_http_error(error)) from None
        for record in results:
            if isinstance(record, dict) and str(record.get("login", "")).lower() == login.lower():
                return record
        raise UserError(f"unknown iNaturalist user {login!r}")

    def _observations_path(self) -> tuple[str, dict[str, str]]:
        """Where observations are asked for, and the fields to ask: v2 with a token."""
        if self._token:
            return f"{_v2_url(self.api_url)}/observations", {"fields": V2_FIELDS}
        return "observations", {}

    def observations(self, login: str, **filters: Any) -> list[dict[str, Any]]:
        """The user's observations with photos matching the filters (d1, d2, updated_since)."""
        path, fields = self._observations_path()
        return self._paginate(path, user_id=login, photos="true", **fields, **filters)

    def _by_id(
        self, ids: Sequence[int], per_request: int, what: str, ask: Callable[[str], Any]
    ) -> list[dict[str, Any]]:
        """Records asked for by id, per_request ids a request (ask gets them comma-joined);
        an answer without results is an error, never read as "none of them exist"."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), per_request):
            results = ask(",".join(map(str, ids[start : start + per_request]))).get("results")
            if not isinstance(results, list):
                raise InatUnreachable(f"unexpected answer from {what}")
            found.extend(r for r in results if isinstance(r, dict))
        return found

    def observations_by_id(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Observations by id, ID_BATCH a request; deleted ones are simply absent."""
        path, fields = self._observations_path()
        return self._by_id(
            ids,
            ID_BATCH,
            "observations",
            lambda batch: self._get_json(path, id=batch, per_page=ID_BATCH, **fields),
        )

    def taxa(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Taxa by id with their ancestors, TAXA_PER_REQUEST a request; unknown ids are absent."""
        return self._by_id(
            ids, TAXA_PER_REQUEST, "taxa", lambda batch: self._get_json(f"taxa/{batch}")
        )

    def places(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Places by id, PLACES_PER_REQUEST a request; unknown ids are absent."""
        return self._by_id(
            ids,
            PLACES_PER_REQUEST,
            "places",
            lambda batch: self._get_json(f"places/{batch}", per_page=batch.count(",") + 1),
        )

    def deleted_since(self, since: str) -> set[int]:
        """Ids of the token owner's observations deleted since an ISO time (needs a token)."""
        deleted: set[int] = set()
        for page in range(1, 101):  # 500 a page; a hundred pages is a lifetime of deletions
            answer = self._get_json(
                "observations/deleted", since=since, per_page=DELETED_PER_PAGE, page=page
            )
            results = answer.get("results")
            if not isinstance(results, list):
                raise InatUnreachable("unexpected answer from observations/deleted")
            deleted.update(i for i in map(parse_positive_int, results) if i is not None)
            total = _int_or_none(answer.get("total_results")) or 0
            if len(results) < DELETED_PER_PAGE or page * DELETED_PER_PAGE >= total:
                break
        return deleted

    def access_token(self) -> str:
        """A fresh token from pyinaturalist's get_access_token: INAT_USERNAME, INAT_PASSWORD,
        INAT_APP_ID and INAT_APP_SECRET, or the credentials pyinaturalist keeps in a keyring."""
        import pyinaturalist.auth
        import pyinaturalist.session

        # get_access_token uses the thread's pyinaturalist session: make it ours (cache off,
        # so the token is stored nowhere) for this one call. A stand-in API answers it too.
        origin = re.match(r"^[a-z]+://[^/]+", self.api_url)
        saved = pyinaturalist.auth.API_V0
        if self.api_url != DEFAULT_API_URL and origin:
            pyinaturalist.auth.API_V0 = origin[0]
        pyinaturalist.session.thread_local.session = self.session
        # Its requests go through session.request, with verify=True unless told otherwise.
        self.session.request = functools.partial(  # type: ignore[method-assign]
            type(self.session).request, self.session, verify=self._verify(self.api_url)
        )
        # A keyring it cannot read, it logs to stderr: the error below says it in our words.
        heard = KeptWarnings()
        logger = logging.getLogger(pyinaturalist.auth.__name__)
        logger.addHandler(heard)
        logger.propagate = False
        try:
            # It reads INAT_USERNAME, ... itself, then the keyring for what they lack.
            return pyinaturalist.auth.get_access_token()
        except Exception as error:  # refused, unreachable, or no credentials at all
            if type(error).__name__ == "AuthenticationError":
                keyring = f" (the keyring: {heard.first_sentence})" if heard.messages else ""
                raise UserError(
                    "no complete iNaturalist login: set INAT_USERNAME, INAT_PASSWORD,"
                    f" INAT_APP_ID and INAT_APP_SECRET, or store them in the keyring{keyring}"
                ) from None
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status in (400, 401, 403):
                raise UserError(
                    f"iNaturalist refused the login (HTTP {status}): check INAT_USERNAME,"
                    " INAT_PASSWORD, INAT_APP_ID and INAT_APP_SECRET (or the keyring)"
                ) from None
            raise InatUnreachable(_describe_http_error(error)) from None
        finally:
            logger.removeHandler(heard)
            logger.propagate = True
            pyinaturalist.auth.API_V0 = saved
            del pyinaturalist.session.thread_local.session
            del self.session.request


class KeptWarnings(logging.Handler):
    """A logging handler that keeps the messages a library logs, to say them in one line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def first_sentence(self) -> str:
        """The first message's first sentence, without its final full stop."""
        return self.messages[0].split(". ")[0].strip().rstrip(".") if self.messages else ""


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


def read_token_file(path: Path, console: Console) -> str:
    """The token in path; warns when others may read the file, UserError when it is unusable."""
    try:
        info = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise UserError(f"cannot read the token file {show_path(path)} ({reason})") from None
    if not token or len(token.split()) != 1:
        raise UserError(f"the token file {show_path(path)} does not hold one token")
    if os.name == "posix" and info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        console.warn(
            f"{show_path(path)} holds your iNaturalist token and other users may read it;"
            f" run: chmod 600 {show_path(path)}"
        )
    return token


def login_token(options: Options, client: InatClient, console: Console) -> str | None:
    """The run's API token: --token-file, INAT_API_TOKEN, or one fetched with the login in the
    environment or the keyring; None without any of them (the public view)."""
    token = None
    if options.token_file is not None:
        token = read_token_file(options.token_file, console)
    elif options.token:
        token = options.token
    elif options.password_login or options.keyring:
        token = client.access_token()
    if token:
        console.hide(token)
    return token


# ---------------------------------------------------------------------------
# 6. The cache directory and its stores
#    What the tool keeps between runs, each in its own file of the cache directory:
#    the user's observations (and the taxa above their identifications, and the places
#    of --location-names), downloaded photos (a download at a time: the threads that
#    fetch ahead are section 10's), the download ledger's hourly and daily budget, the
#    local index of files read and decisions made, the log's thumbnails, and the lock
#    that keeps to one run at a time.
# ---------------------------------------------------------------------------


def _changed_since(record: dict[str, Any], moment: dt.datetime) -> bool:
    """True when the observation was created or updated at or after moment (aware, UTC)."""
    for key in ("updated_at", "created_at"):
        when = _parse_iso_time(record.get(key))
        if when is not None and when.tzinfo is None:  # iNaturalist's times carry an offset
            when = when.replace(tzinfo=dt.timezone.utc)
        if when is not None and when >= moment:
            return True
    return False


class TaxaAndPlaces:
    """The taxa above the observations' identifications and the places they lie in, kept in
    the observation store's database: each asked for once, batched."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _taxon(self, taxon_id: int) -> tuple[str, str | None, list[int] | None] | None:
        """(name, rank, ancestor ids or None when not learnt) of a stored taxon."""
        row = self.db.execute(
            "SELECT name, rank, ancestors FROM taxa WHERE id = ?", (taxon_id,)
        ).fetchone()
        return (row[0], row[1], json.loads(row[2]) if row[2] else None) if row else None

    def _put_taxon(self, record: dict[str, Any], ancestors: Sequence[int] | None) -> None:
        taxon_id, name = _int_or_none(record.get("id")), record.get("name")
        if taxon_id is None or not isinstance(name, str) or not name.strip():
            return
        known = self._taxon(taxon_id)
        if ancestors is None and known is not None:  # keep a lineage learnt before
            ancestors = known[2]
        rank = record.get("rank") if isinstance(record.get("rank"), str) else None
        self.db.execute(
            "INSERT OR REPLACE INTO taxa VALUES (?, ?, ?, ?)",
            (
                taxon_id,
                " ".join(name.split()),
                rank,
                json.dumps(list(ancestors)) if ancestors is not None else None,
            ),
        )

    def lineages(
        self, client: InatClient, observations: Iterable[Observation]
    ) -> dict[int, Lineage]:
        """Each observed taxon's (rank, name) from kingdom down to itself.

        Ancestor names come from the taxa endpoint, asked once per taxon and batched; they
        are kept here, so a rerun asks for nothing new.
        """
        wanted = {o.taxon_id: o for o in observations if o.taxon_id and o.taxon_scientific}

        def ancestors_of(observation: Observation) -> list[int] | None:
            stored = self._taxon(observation.taxon_id)  # type: ignore[arg-type]
            ids = list(observation.ancestor_ids) or (stored[2] if stored else None)
            if ids is None or any(self._taxon(i) is None for i in ids):
                return None
            return ids

        missing = sorted(t for t, o in wanted.items() if ancestors_of(o) is None)
        if missing:
            for record in client.taxa(missing):
                ancestors = record.get("ancestors")
                for ancestor in ancestors if isinstance(ancestors, list) else []:
                    if isinstance(ancestor, dict):
                        self._put_taxon(ancestor, None)
                self._put_taxon(record, taxon_ancestor_ids(record))
            self.db.commit()
        found: dict[int, Lineage] = {}
        for taxon_id, observation in wanted.items():
            ids = ancestors_of(observation)
            if ids is None:  # iNaturalist did not name them all: better no tree than half of one
                continue
            levels = [self._taxon(i) for i in ids]
            above = [
                (level[1] or "", level[0])
                for level in levels
                if level is not None and level[1] not in (None, "stateofmatter")  # not 'Life'
            ]
            own = (observation.taxon_rank or "", observation.taxon_scientific or "")
            found[taxon_id] = (*above, own)
        return found

    def places(self, client: InatClient, observations: Iterable[Observation]) -> dict[int, Place]:
        """The places the observations lie in, by id.

        Asked for once per id, PLACES_PER_REQUEST a request, and kept here; an id iNaturalist
        does not know is kept too (as NULL), so that no rerun asks for it again.
        """
        wanted = sorted({i for o in observations for i in o.place_ids})
        stored: dict[int, str | None] = {}
        for start in range(0, len(wanted), 900):  # SQLite's limit on parameters
            batch = wanted[start : start + 900]
            marks = ",".join("?" * len(batch))
            rows = self.db.execute(f"SELECT id, record FROM places WHERE id IN ({marks})", batch)
            stored.update(rows.fetchall())
        missing = [i for i in wanted if i not in stored]
        if missing:
            answered = {}
            for record in client.places(missing):
                place_id = _int_or_none(record.get("id"))
                if place_id is not None:
                    # Only what names need: the answer also holds the place's outline.
                    kept = ("id", "name", "admin_level", "display_name", "code")
                    answered[place_id] = json.dumps({k: record.get(k) for k in kept})
            for place_id in missing:
                stored[place_id] = answered.get(place_id)
                self.db.execute(
                    "INSERT OR REPLACE INTO places VALUES (?, ?)", (place_id, stored[place_id])
                )
            self.db.commit()
        found = {}
        for place_id, text in stored.items():
            place = parse_place(json.loads(text)) if text else None
            if place is not None:
                found[place_id] = place
        return found


class ObservationStore:
    """The user's observations kept in SQLite between runs, refreshed with updated_since,
    and those that local photos point at asked for again by id every RECHECK_DAYS."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        if fresh:
            self.db.executescript(
                "DROP TABLE IF EXISTS observations; DROP TABLE IF EXISTS synced;"
                " DROP TABLE IF EXISTS checked; DROP TABLE IF EXISTS rechecked;"
                " DROP TABLE IF EXISTS taxa; DROP TABLE IF EXISTS places;"
            )
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        if "checked" in tables and "rechecked" not in tables:  # its name before 1.4.0
            self.db.execute("ALTER TABLE checked RENAME TO rechecked")
        # rechecked: when iNaturalist last answered for an observation id, in a listing or by
        # id; ids it no longer has stay here too, so they are not asked for on every run.
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS observations (
                id INTEGER PRIMARY KEY, user TEXT NOT NULL, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS synced (
                user TEXT PRIMARY KEY, first_day TEXT, last_day TEXT, synced_at TEXT);
            CREATE TABLE IF NOT EXISTS captions (
                observation_id INTEGER, caption TEXT, PRIMARY KEY (observation_id, caption));
            CREATE TABLE IF NOT EXISTS rechecked (
                id INTEGER PRIMARY KEY, checked_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS taxa (
                id INTEGER PRIMARY KEY, name TEXT NOT NULL, rank TEXT, ancestors TEXT);
            CREATE TABLE IF NOT EXISTS places (id INTEGER PRIMARY KEY, record TEXT);
            """
        )
        self.reference = TaxaAndPlaces(self.db)

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
            self.db.execute("INSERT OR REPLACE INTO rechecked VALUES (?, ?)", (record["id"], now))

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
            if client.authenticated:  # deletions leave no trace in updated_since
                self.forget(client.deleted_since(row[2]))
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

    def forget(self, ids: Iterable[int]) -> None:
        """Drop observations deleted on iNaturalist; their ids are not asked for again soon."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        for obs_id in ids:
            self.db.execute("DELETE FROM observations WHERE id = ?", (obs_id,))
            self.db.execute("INSERT OR REPLACE INTO rechecked VALUES (?, ?)", (obs_id, now))

    def _checked_since(self, obs_id: int, moment: dt.datetime) -> bool:
        row = self.db.execute("SELECT checked_at FROM rechecked WHERE id = ?", (obs_id,)).fetchone()
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
        for record, observation in self._stored_between(user, first_day, last_day):
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
        self.forget(set(wanted) - present)  # deleted (or made private) on iNaturalist
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
        return [o for _, o in self._stored_between(user, first_day, last_day)]

    def _stored_between(
        self, user: str, first_day: dt.date, last_day: dt.date
    ) -> list[tuple[dict[str, Any], Observation]]:
        """(record, observation) of the user's stored observations of these days, by id."""
        rows = self.db.execute(
            "SELECT record FROM observations WHERE user = ? ORDER BY id", (user.lower(),)
        ).fetchall()
        found = []
        for (text,) in rows:
            record = json.loads(text)
            observation = parse_observation(record)
            if observation and observation.day and first_day <= observation.day <= last_day:
                found.append((record, observation))
        return found


class DownloadLedger:
    """The photos this tool downloaded from iNaturalist, bytes and requests with their time,
    across runs: kept in the cache and committed with each download, so that a killed run
    loses nothing. It keeps downloads inside an hourly and a daily budget."""

    def __init__(
        self, path: Path, per_hour: int, per_day: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.per_hour, self.per_day, self.clock = per_hour, per_day, clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS downloads (at REAL NOT NULL, bytes INTEGER NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS downloads_at ON downloads (at)")
        self.db.execute("DELETE FROM downloads WHERE at < ?", (self.clock() - 2 * 86400,))
        self.lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def used(self, seconds: float) -> tuple[int, int]:
        """Bytes and requests of the past seconds."""
        with self.lock:
            total, count = self.db.execute(
                "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM downloads WHERE at > ?",
                (self.clock() - seconds,),
            ).fetchone()
        return int(total), int(count)

    def room(self) -> bool:
        """Whether another download stays inside both budgets."""
        return self.used(3600)[0] < self.per_hour and self.used(86400)[0] < self.per_day

    def record(self, size: int) -> None:
        """One download done; written to disk at once (autocommit)."""
        with self.lock:
            self.db.execute("INSERT INTO downloads VALUES (?, ?)", (self.clock(), size))

    def resumes_at(self) -> float:
        """When both budgets have room again (a time.time() value)."""
        now, later = self.clock(), self.clock()
        for seconds, budget in ((3600, self.per_hour), (86400, self.per_day)):
            with self.lock:
                rows = self.db.execute(
                    "SELECT at, bytes FROM downloads WHERE at > ? ORDER BY at",
                    (now - seconds,),
                ).fetchall()
            total = sum(size for _, size in rows)
            for at, size in rows:  # the window slides past its oldest downloads
                if total < budget:
                    break
                total -= size
                later = max(later, at + seconds)
        return later

    def describe(self) -> str:
        """'3.9 GB in the past hour (limit 4 GB), 3.9 GB in the past day (limit 20 GB)'."""
        hour, day = self.used(3600)[0], self.used(86400)[0]
        return (
            f"{describe_size(hour)} in the past hour (limit {describe_size(self.per_hour)}),"
            f" {describe_size(day)} in the past day (limit {describe_size(self.per_day)})"
        )


class OverBudget(Exception):
    """The download budget is spent: the photo is left for a later run."""


class PhotoCache:
    """iNaturalist photos on disk, keyed by photo id and size; never a partial file."""

    def __init__(
        self,
        cache: Path,
        client: InatClient,
        refresh: bool = False,
        console: Console | None = None,
        ledger: DownloadLedger | None = None,
    ) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.client = client
        self.console = console or Console()
        self.ledger = ledger  # None: no budget (a single --associate)
        self.over_budget: set[int] = set()  # photos not downloaded: the budget was spent
        self.skipped: set[int] = set()  # placeholders reported in this run
        self.folder = CacheDirectory(cache).photos
        self.refresh = refresh
        self.refreshed: set[Path] = set()
        self.failed: set[Path] = set()  # asked for once in vain: not again in this run
        self.busy: dict[Path, threading.Lock] = {}  # one lock per photo being downloaded
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(max_retries=client.photo_retries, pool_maxsize=DOWNLOAD_WORKERS)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(DOWNLOAD_WORKERS)  # downloads at once, in all

    def fetch_quietly(self, photo: InatPhoto, size: str) -> None:
        """Download one photo into the cache, from a background thread: fetch() waits for it
        while in flight, and a failure is left for fetch() to retry and report, in its place
        in the output."""
        if photo.unavailable:
            return
        target = self.path(photo, size)
        with self._busy(target), contextlib.suppress(Exception):
            if target not in self.failed and not self._cached(target):
                self._store(target, self._download(photo.url_for_size(size)))

    def _busy(self, target: Path) -> threading.Lock:
        """The lock of one photo's download: a second asker waits for the first."""
        with self.lock:
            return self.busy.setdefault(target, threading.Lock())

    def _cached(self, target: Path) -> bool:
        """Whether target is in the cache and may be used (--bypass_cache: once renewed)."""
        return target.exists() and (not self.refresh or target in self.refreshed)

    def close(self) -> None:
        """Close the connections (the downloads ahead have been stopped: PictureSource)."""
        self.http.close()

    def path(self, photo: InatPhoto, size: str) -> Path:
        return self.folder / size / f"{photo.id}.jpg"

    def _download(self, url: str) -> bytes:
        """A complete, decodable picture from url; raises on anything less, OverBudget when
        the budget is spent. Its bytes count in the ledger, whole or not."""
        # The budget is read with a slot held: at most DOWNLOAD_WORKERS downloads pass it.
        with self.slots:
            if self.ledger is not None and not self.ledger.room():
                raise OverBudget(url)
            response = self.http.get(url, timeout=DOWNLOAD_TIMEOUT)
            data = response.content
            if self.ledger is not None:
                self.ledger.record(len(data))
        response.raise_for_status()
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
        if self._cached(target):
            return target
        with self._busy(target):
            if self._cached(target):
                return target
            if target in self.failed:
                return None
            try:
                data = self._fetch(photo, size, target)
            except OverBudget:
                with self.lock:
                    self.over_budget.add(photo.id)
                return None
            if data is None:
                return None
            self._store(target, data)
            return target

    def _fetch(self, photo: InatPhoto, size: str, target: Path) -> bytes | None:
        """The photo's bytes, asking once more at its current URL after a failure; None
        (said once) when it cannot be had; OverBudget when the budget is spent."""
        try:
            return self._download(photo.url_for_size(size))
        except OverBudget:
            raise
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
                return self._download(fresh.url_for_size(size))
            except OverBudget:
                raise
            except Exception as final:
                self.console.warn(
                    f"could not download photo {photo.id}: {_describe_http_error(final)}"
                )
                with self.lock:
                    self.failed.add(target)
                return None

    def _store(self, target: Path, data: bytes) -> None:
        """Put a downloaded photo in the cache, whole or not at all."""
        store_file(target, data)
        with self.lock:
            self.refreshed.add(target)


class ThumbnailCache:
    """The log's thumbnails on disk: local photos keyed by path, size and modification time,
    uploads by photo id and size. A rerun makes thumbnails only for what is new."""

    def __init__(self, cache: Path) -> None:
        self.folder = CacheDirectory(cache).thumbnails

    def local_file(self, photo: LocalPhoto) -> Path | None:
        key = file_key(photo.path)
        if key is None:
            return None
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:24]
        return self.folder / "local" / digest[:2] / f"{digest}.jpg"

    def upload_file(self, photo_id: int, size: str) -> Path:
        return self.folder / "inat" / size / f"{photo_id}.jpg"

    def carry_over(self, made: Path, photo: LocalPhoto) -> None:
        """Keep the thumbnail made before this tool wrote into the photo (its pixels are the
        same; its modification time and size are not)."""
        target = self.local_file(photo)
        if target is not None and target != made and made.exists():
            with contextlib.suppress(OSError):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(made, target)

    def local(self, photo: LocalPhoto, picture: Callable[[], Image.Image | None]) -> Path | None:
        """The photo's thumbnail file, made from picture() unless there already; None when
        it cannot be had."""
        target = self.local_file(photo)
        if target is None:
            return None
        if not target.exists():
            made = picture()
            if made is None or not self.save(target, made):
                return None
        return target

    def save(self, target: Path, picture: Image.Image) -> bool:
        """Store picture reduced to a thumbnail (a new JPEG; the photo itself is only read)."""
        small = picture.convert("RGB")  # always a copy: the caller's picture stays as it is
        small.thumbnail((HTML_THUMBNAIL, HTML_THUMBNAIL))
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=HTML_THUMBNAIL_QUALITY)
        try:
            store_file(target, buffer.getvalue())
        except OSError:  # a full or read-only cache costs the log a picture, nothing more
            return False
        return True


@contextlib.contextmanager
def run_lock(cache: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the cache directory; yields False if another run has it."""
    handle = open(CacheDirectory(cache).made().run_lock, "a+")  # noqa: SIM115 - held for the run
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


# ---------------------------------------------------------------------------
# 7a. Local files: finding and reading
#    Finding picture files and reading the metadata this tool uses (from XMP sidecars,
#    for RAW and HEIC files always), naming sidecars and joining RAW+JPEG pairs.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundFiles:
    """What a walk over the arguments found. Each picture is (path, absolute path, size,
    modification time in ns), plain strings and numbers: a big archive costs a tuple a file."""

    pictures: tuple[tuple[str, str, int, int], ...]
    leftovers: tuple[Path, ...]  # temporary copies left by a run killed mid-write


def find_picture_files(arguments: Sequence[str], console: Console) -> FoundFiles:
    """Picture files named or found below the arguments: hidden entries skipped, each once.

    One stat a file (os.scandir tells folders and links apart without one).
    """
    found: list[tuple[str, str, int, int]] = []
    leftovers: list[Path] = []
    seen: set[tuple[int, int]] = set()
    skipped: list[Path] = []

    def add(path: Path, info: os.stat_result) -> None:
        """A file named as an argument."""
        if path.suffix.lower() not in PICTURE_SUFFIXES:
            console.warn(f"{show_path(path)}: not a picture format this tool reads; skipped")
        elif (info.st_dev, info.st_ino) not in seen:  # hard links and repeated arguments
            seen.add((info.st_dev, info.st_ino))
            found.append((str(path), str(path.absolute()), info.st_size, info.st_mtime_ns))

    def walk(folder: str, absolute: str) -> None:
        """folder as Path prints it, and its absolute path as the LocalIndex keys it."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            console.file_error(Path(folder), f"cannot list folder ({error.strerror or error})")
            return
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                if name.endswith(TEMPORARY_SUFFIX) and entry.is_file(follow_symlinks=False):
                    leftovers.append(Path(entry.path))
                continue
            if entry.is_symlink():
                console.say(f"Not following symbolic link {show_path(Path(entry.path))}.")
            elif entry.is_dir(follow_symlinks=False):
                walk(entry.path, f"{absolute}{os.sep}{name}")
            elif entry.is_file(follow_symlinks=False):
                dot = name.rfind(".")  # Path.suffix, without a Path a file
                suffix = name[dot:].lower() if dot > 0 else ""
                if suffix not in PICTURE_SUFFIXES:
                    if suffix != SIDECAR_SUFFIX:  # sidecars are read with their photo
                        skipped.append(Path(entry.path))
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as error:
                    console.file_error(Path(entry.path), f"cannot read ({error.strerror or error})")
                    continue
                if (info.st_dev, info.st_ino) not in seen:  # hard links
                    seen.add((info.st_dev, info.st_ino))
                    found.append(
                        (entry.path, f"{absolute}{os.sep}{name}", info.st_size, info.st_mtime_ns)
                    )

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            walk(str(path), str(path.absolute()).rstrip(os.sep))  # "/" walks as ""
        elif path.exists():
            try:
                info = path.stat()
            except OSError as error:
                console.file_error(path, f"cannot read ({error.strerror or error})")
                continue
            add(path, info)
        else:
            console.file_error(path, "no such file or folder")
    if skipped:
        examples = ", ".join(repr(show_path(p)) for p in skipped[:3])
        console.say(
            f"Skipped {len(skipped)} file(s) that are not pictures this tool reads"
            f" (e.g. {examples})."
        )
    return FoundFiles(tuple(found), tuple(leftovers))


def picture_kind(path: Path) -> str:
    """'raw' (LibRaw), 'heif' (HEIC, HEIF, AVIF) or 'plain' (JPEG, PNG, TIFF), by suffix."""
    suffix = path.suffix.lower()
    return "raw" if suffix in RAW_FORMATS else "heif" if suffix in HEIF_FORMATS else "plain"


def format_name(path: Path) -> str:
    """The file's format as messages name it: 'Canon CR3', 'HEIC', 'JPEG'..."""
    suffix = path.suffix.lower()
    return RAW_FORMATS.get(suffix) or HEIF_FORMATS.get(suffix) or suffix.lstrip(".").upper()


def _read_metadata(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """EXIF and XMP of a picture file (or of an XMP sidecar), via exiv2."""
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


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def _decoder_metadata(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """EXIF and XMP as the decoder exposes them, for files whose container exiv2 cannot read.

    HEIF: pillow-heif's EXIF and XMP blocks, read by exiv2 from a stub JPEG that holds only
    them. RAW: LibRaw's capture time. Raises OSError when the decoder cannot open the file.
    """
    import pyexiv2

    if picture_kind(path) == "raw":
        import rawpy

        try:
            with _open_raw(path) as raw:
                taken = raw.other.timestamp
        except rawpy.LibRawError as error:
            raise OSError(f"LibRaw cannot open it ({error})") from None
        when = taken.strftime("%Y:%m:%d %H:%M:%S") if isinstance(taken, dt.datetime) else None
        return ({"Exif.Photo.DateTimeOriginal": when} if when else {}), {}
    import pillow_heif

    try:
        info = pillow_heif.open_heif(path, convert_hdr_to_8bit=False).info
    except (ValueError, RuntimeError) as error:
        raise OSError(f"cannot open it as {format_name(path)} ({error})") from None
    exif, xmp = info.get("exif") or b"", info.get("xmp") or b""
    stub = b"\xff\xd8"
    if exif:
        stub += _jpeg_segment(0xE1, exif if exif.startswith(b"Exif") else b"Exif\0\0" + exif)
    if xmp:
        stub += _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp)
    image = pyexiv2.ImageData(stub + b"\xff\xd9")
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


def _darwin_core_record(value: Any) -> tuple[tuple[str, str], ...]:
    """TAG_DARWIN_CORE's 'term=value' entries as sorted (Xmp.dwc.term, value) pairs."""
    pairs = (entry.partition("=") for entry in _keywords(value))
    return tuple(
        sorted((f"Xmp.{DWC_PREFIX}.{term}", text) for term, _, text in pairs if term.isalpha())
    )


def _location_names_record(value: Any) -> tuple[tuple[str, str], ...]:
    """TAG_LOCATION_NAMES's 'Xmp.photoshop.Country=France' entries as sorted pairs."""
    pairs = (entry.partition("=") for entry in _keywords(value))
    return tuple(sorted((key, text) for key, _, text in pairs if key in LOCATION_FIELDS))


# The LocalPhoto fields that come from XMP, the file's own or its sidecar's.
XMP_FIELDS = (
    "tags",
    "keywords",
    "written_caption",
    "hierarchy",
    "written_hierarchy",
    "darwin_core",
    "written_darwin_core",
    "dissociated",
    "xmp_location",
    "written_position",
    "written_private",
    "location_names",
    "written_location_names",
)


def xmp_facts(xmp: Mapping[str, Any]) -> dict[str, Any]:
    """The XMP_FIELDS of a LocalPhoto as read from an XMP dictionary."""
    observation = parse_positive_int(xmp.get(TAG_OBSERVATION))
    dwc = f"Xmp.{DWC_PREFIX}."
    return {
        "tags": InatTags(
            observation=observation,
            observation_photo=parse_positive_int(xmp.get(TAG_OBSERVATION_PHOTO)),
            photo=parse_positive_int(xmp.get(TAG_PHOTO)),
        )
        if observation is not None
        else None,
        "keywords": tuple(_keywords(xmp.get(TAG_SUBJECT))),
        "written_caption": _text_or_none(xmp.get(TAG_CAPTION)),
        "hierarchy": tuple(_keywords(xmp.get(TAG_HIERARCHY))),
        "written_hierarchy": _text_or_none(xmp.get(TAG_HIERARCHY_CAPTION)),
        "darwin_core": tuple(
            sorted((k, v) for k, v in xmp.items() if k.startswith(dwc) and isinstance(v, str))
        ),
        "written_darwin_core": _darwin_core_record(xmp.get(TAG_DARWIN_CORE)),
        "dissociated": bool(_text_or_none(xmp.get(TAG_DISSOCIATED))),
        "xmp_location": parse_xmp_gps(xmp),
        "written_position": parse_location(str(xmp.get(TAG_POSITION, "")).partition(" ")[0]),
        "written_private": str(xmp.get(TAG_POSITION, "")).endswith(" private"),
        "location_names": tuple(
            sorted((k, v) for k in LOCATION_FIELDS if isinstance(v := xmp.get(k), str))
        ),
        "written_location_names": _location_names_record(xmp.get(TAG_LOCATION_NAMES)),
    }


def read_local_photo(path: Path, console: Console) -> LocalPhoto | None:
    """Read one picture's metadata; report the file and return None when it cannot be read.

    When exiv2 cannot read a RAW or HEIF file, what its decoder gives is used, with a warning.
    """
    kind = picture_kind(path)
    try:
        mtime = path.stat().st_mtime
        exif, xmp = _read_metadata(path)
    except (OSError, RuntimeError, ValueError) as error:
        reason = str(error).strip() or "unreadable"
        try:
            if kind == "plain" or isinstance(error, OSError):
                raise OSError(reason)
            exif, xmp = _decoder_metadata(path)
        except (OSError, RuntimeError, ValueError):
            console.file_error(path, f"cannot read metadata ({reason})")
            return None
        console.warn(
            f"{show_path(path)}: exiv2 cannot read the metadata of this {format_name(path)}"
            f" file ({reason}); using what the decoder gives",
            path,
        )
    taken_at = parse_exif_datetime(
        exif.get("Exif.Photo.DateTimeOriginal") or exif.get("Exif.Image.DateTimeOriginal")
    )
    if taken_at is None:
        console.warn(
            f"{show_path(path)}: no usable EXIF date; using the file's modification time", path
        )
    orientation = parse_positive_int(exif.get("Exif.Image.Orientation"))
    if kind != "plain":  # LibRaw and libheif turn these pictures upright themselves
        orientation = 1
    return LocalPhoto(
        path=path,
        taken_at=taken_at or dt.datetime.fromtimestamp(mtime).replace(microsecond=0),
        location=parse_gps(exif),
        orientation=orientation if orientation in range(1, 9) else 1,
        taken_at_from_exif=taken_at is not None,
        **xmp_facts(xmp),
    )


def sidecar_names(path: Path) -> tuple[Path, Path]:
    """(NAME.xmp, NAME.EXT.xmp): Lightroom's and Capture One's name, darktable's and digiKam's."""
    return path.with_name(path.stem + SIDECAR_SUFFIX), path.with_name(path.name + SIDECAR_SUFFIX)


def needs_sidecar(path: Path, all_in_sidecars: bool) -> bool:
    """RAW and HEIF files are never written: their tags always go into a sidecar."""
    return all_in_sidecars or path.suffix.lower() not in IN_FILE_SUFFIXES


def name_sidecars(
    files: Sequence[Path], naming: str, all_in_sidecars: bool, console: Console
) -> dict[Path, Path]:
    """The sidecar each file's tags live in, for the files that keep them in one.

    An existing sidecar is used whichever its convention (the named one first); a new one gets
    the name of --sidecar-names. NAME.xmp never serves two files: when several files of a
    folder share a name stem (IMG_1.CR2, IMG_1.JPG), it belongs to the RAW file (to the first
    by name if none is RAW) and the others use NAME.EXT.xmp; the run says so in one line.
    """
    listings: dict[Path, dict[str, str]] = {}

    def existing(candidate: Path) -> Path | None:
        """candidate as it exists in its folder, compared without case (IMG_1.XMP)."""
        if candidate.parent not in listings:
            try:
                names = os.listdir(candidate.parent)
            except OSError:
                names = []
            listings[candidate.parent] = {n.lower(): n for n in names}
        found = listings[candidate.parent].get(candidate.name.lower())
        return candidate.with_name(found) if found is not None else None

    claimants: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for path in files:
        if needs_sidecar(path, all_in_sidecars):
            claimants[(path.parent, path.stem.lower())].append(path)
    homes: dict[Path, Path] = {}
    displaced: list[tuple[Path, Path]] = []  # (file, the file that owns its NAME.xmp)
    for group in claimants.values():
        group.sort(key=lambda p: (p.suffix.lower() not in RAW_FORMATS, p.name))
        for index, path in enumerate(group):
            short, long = sidecar_names(path)
            own_short = existing(short) if index == 0 else None
            own_long = existing(long)
            preferred = (own_short, own_long) if naming == "lightroom" else (own_long, own_short)
            home = next((p for p in preferred if p is not None), None)
            if home is None:
                home = short if naming == "lightroom" and index == 0 else long
            if naming == "lightroom" and index > 0 and home == long:
                displaced.append((path, group[0]))
            homes[path] = home
    if displaced:
        path, owner = displaced[0]
        console.say(
            f"{len(displaced)} file(s) share a name stem with a picture that owns NAME.xmp;"
            f" their tags go into NAME.EXT.xmp (e.g. {show_path(path)}:"
            f" {sidecar_names(path)[1].name}, as {sidecar_names(path)[0].name} is"
            f" {owner.name}'s)."
        )
    return homes


def pair_raw_with_exports(photos: Sequence[LocalPhoto]) -> list[LocalPhoto]:
    """RAW+JPEG pairs (same folder, name stem and EXIF capture time) as one photo each.

    The quickest file to decode (JPEG, then HEIF, PNG or TIFF) is compared; the others become
    its partners and receive the same tags. The archive's order is kept.
    """
    groups: dict[tuple[Path, str, dt.datetime], list[LocalPhoto]] = defaultdict(list)
    for photo in photos:
        if photo.taken_at_from_exif:  # file times say nothing about being the same shot
            groups[(photo.path.parent, photo.path.stem.lower(), photo.taken_at)].append(photo)
    cost = {"plain": 0, "heif": 1, "raw": 2}
    compared: dict[Path, LocalPhoto] = {}
    partners: set[Path] = set()
    for group in groups.values():
        kinds = {picture_kind(p.path) for p in group}
        if "raw" not in kinds or kinds == {"raw"}:
            continue
        first, *others = sorted(
            group,
            key=lambda p: (
                cost[picture_kind(p.path)],
                p.path.suffix.lower() not in JPEG_SUFFIXES,
            ),
        )
        compared[first.path] = dataclasses.replace(first, partners=tuple(others))
        partners.update(p.path for p in others)
    return [compared.get(p.path, p) for p in photos if p.path not in partners]


def _open_raw(path: Path) -> Any:
    """rawpy's reader for path (names that are not UTF-8 are read through memory)."""
    import rawpy

    try:
        os.fsencode(path).decode("utf-8")
        return rawpy.imread(str(path))
    except UnicodeDecodeError:
        return rawpy.imread(io.BytesIO(path.read_bytes()))


# ---------------------------------------------------------------------------
# 7b. Local files: the local index and the days read
#    The LocalIndex keeps what was read of each file and what was decided about it, so
#    that reruns parse only what changed, and only the days that need it (load_archive,
#    recall_days); prepare_local_photos joins sidecars and pairs for matching.
# ---------------------------------------------------------------------------


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
            "hierarchy": list(photo.hierarchy),
            "written_hierarchy": photo.written_hierarchy,
            "darwin_core": photo.darwin_core,
            "written_darwin_core": photo.written_darwin_core,
            "from_exif": photo.taken_at_from_exif,
            "dissociated": photo.dissociated,
            "xmp_location": photo.xmp_location,
            "written_position": photo.written_position,
            "written_private": photo.written_private,
            "location_names": photo.location_names,
            "written_location_names": photo.written_location_names,
        }
    )


def _photo_from_record(path: Path, record: str) -> LocalPhoto:
    data = json.loads(record)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        return tuple((str(k), str(v)) for k, v in data.get(key) or ())

    return LocalPhoto(
        path=path,
        taken_at=dt.datetime.fromisoformat(data["taken_at"]),
        location=tuple(data["location"]) if data["location"] else None,  # type: ignore[arg-type]
        orientation=data["orientation"],
        keywords=tuple(data["keywords"]),
        written_caption=data["written_caption"],
        tags=InatTags(**data["tags"]) if data["tags"] else None,
        hierarchy=tuple(data.get("hierarchy") or ()),
        written_hierarchy=data.get("written_hierarchy"),
        darwin_core=pairs("darwin_core"),
        written_darwin_core=pairs("written_darwin_core"),
        taken_at_from_exif=bool(data.get("from_exif", True)),
        dissociated=bool(data.get("dissociated")),
        # Required: a record from before --geotag does not know the XMP's own GPS, so the
        # file is read again (KeyError) rather than taken as having none.
        xmp_location=tuple(data["xmp_location"]) if data["xmp_location"] else None,  # type: ignore[arg-type]
        written_position=tuple(data["written_position"])  # type: ignore[arg-type]
        if data.get("written_position")
        else None,
        written_private=bool(data.get("written_private")),
        location_names=pairs("location_names"),
        written_location_names=pairs("written_location_names"),
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
        self.lock = threading.Lock()  # problems are reported from the comparing threads too
        self.settings = settings  # comparisons made under other settings do not count
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        if "verdicts" in tables and "refusals" not in tables:  # their names before 1.5.0
            self.db.execute("ALTER TABLE verdicts RENAME TO refusals")
            self.db.execute("ALTER TABLE refusals RENAME COLUMN verdict TO record")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS photos (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS checked (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, settings TEXT,
                uploads TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS parts (
                photo_id INTEGER PRIMARY KEY, path BLOB NOT NULL, area REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS sidecars (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS refusals (
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, settings TEXT,
                record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS reported_uploads (photo_id INTEGER PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS problems (
                path BLOB, size INTEGER, mtime_ns INTEGER, message TEXT, first TEXT,
                PRIMARY KEY (path, message));
            """
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(photos)")}
        if "taken_at" not in columns:  # an older index: the columns fill as its files are read
            self.db.execute("ALTER TABLE photos ADD COLUMN taken_at TEXT")
            self.db.execute("ALTER TABLE photos ADD COLUMN marked INTEGER")

    def reported_before(self, path: Path, message: str) -> bool:
        """Whether a problem (or notice) was reported about this file as it is now; the
        first report is remembered, for --quiet and --list-problems."""
        key = file_key(path) or (os.fsencode(path.absolute()), -1, -1)
        with self.lock:
            row = self.db.execute(
                "SELECT size, mtime_ns FROM problems WHERE path = ? AND message = ?",
                (key[0], message),
            ).fetchone()
            if row is not None and tuple(row) == key[1:]:
                return True
            stamp = dt.datetime.now().isoformat(timespec="seconds")
            self.db.execute(
                "INSERT OR REPLACE INTO problems VALUES (?, ?, ?, ?, ?)", (*key, message, stamp)
            )
            self.db.commit()
        return False

    def problems(self) -> list[tuple[str, str, str]]:
        """The problems remembered for files that still exist: (path, message, first seen)."""
        rows = self.db.execute("SELECT path, message, first FROM problems ORDER BY path, first")
        found = [(os.fsdecode(path), message, first) for path, message, first in rows]
        return [row for row in found if os.path.lexists(row[0])]

    def read(self, path: Path, console: Console) -> LocalPhoto | None:
        """The photo's metadata from the index if the file is unchanged, else from the file."""
        key = file_key(path)
        if key is not None:
            row = self.db.execute(
                "SELECT record, taken_at FROM photos WHERE path = ? AND size = ? AND mtime_ns = ?",
                key,
            ).fetchone()
            if row:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    photo = _photo_from_record(path, row[0])
                    if row[1] is None:  # stored before the capture time had its column
                        self.remember(photo)
                    return photo
        photo = read_local_photo(path, console)
        if photo is not None:
            self.remember(photo)
        return photo

    def remember(self, photo: LocalPhoto) -> None:
        """Store what we know of photo under the file's (or its sidecar's) size and time."""
        key = file_key(photo.sidecar or photo.path)
        if key is None:
            return
        if photo.sidecar is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO sidecars VALUES (?, ?, ?, ?)", (*key, _photo_record(photo))
            )
            return
        # The capture time, and whether the file must be read on every run (it holds ids or a
        # dissociation, or keeps its tags in a sidecar), beside the record: a rerun tells the
        # days that need nothing from them, decoding no record.
        marked = photo.tags is not None or photo.dissociated or needs_sidecar(photo.path, False)
        self.db.execute(
            "INSERT OR REPLACE INTO photos (path, size, mtime_ns, record, taken_at, marked)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*key, _photo_record(photo), photo.taken_at.isoformat(), int(marked)),
        )

    def unmarked_photos(self) -> dict[str, tuple[int, int, str]]:
        """Absolute path -> (size, mtime_ns, capture time) of every file read before that held
        no ids and no dissociation and keeps its tags in itself, in one query."""
        query = (
            "SELECT {}, size, mtime_ns, taken_at FROM photos"
            " WHERE taken_at IS NOT NULL AND marked = 0"
        )
        try:  # sqlite decodes UTF-8 names itself, much faster than a call a row
            rows = self.db.execute(query.format("CAST(path AS TEXT)")).fetchall()
            return {path: (size, mtime, taken) for path, size, mtime, taken in rows}
        except sqlite3.OperationalError:  # a name that is not UTF-8: decoded as os.fsdecode does
            rows = self.db.execute(query.format("path")).fetchall()
            return {os.fsdecode(path): (size, mtime, taken) for path, size, mtime, taken in rows}

    def read_sidecar(self, photo: LocalPhoto, console: Console) -> LocalPhoto | None:
        """photo with the XMP_FIELDS of its sidecar (from the index, if it is unchanged).

        Ids found only in the file itself still count. No sidecar yet: the file's own XMP
        (its keywords are the user's, and the new sidecar starts as a copy of it). None when
        the sidecar cannot be read (reported).
        """
        assert photo.sidecar is not None
        key = file_key(photo.sidecar)
        if key is None:
            return photo
        row = self.db.execute(
            "SELECT record FROM sidecars WHERE path = ? AND size = ? AND mtime_ns = ?", key
        ).fetchone()
        cached = None
        if row:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                cached = _photo_from_record(photo.path, row[0])
        if cached is not None:
            facts = {name: getattr(cached, name) for name in XMP_FIELDS}
        else:
            try:
                _, xmp = _read_metadata(photo.sidecar)
            except (OSError, RuntimeError, ValueError) as error:
                reason = str(error).strip() or "unreadable"
                console.file_error(photo.sidecar, f"cannot read this XMP sidecar ({reason})")
                return None
            facts = xmp_facts(xmp)
            self.remember(dataclasses.replace(photo, **facts))
        facts["tags"] = facts["tags"] or photo.tags
        return dataclasses.replace(photo, **facts)

    def _stored(self, table: str, path: Path) -> Any:
        """The JSON value table ("checked", "refusals") holds for the file at path as it is
        now and under these settings; None when there is none."""
        key = file_key(path)
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
        key = file_key(path)
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

    def record_refusal(self, path: Path, record: RefusalRecord) -> None:
        """Remember what the log said of the file at path, as it is now, left unassociated."""
        self._store("refusals", path, record.to_json())

    def refusal_record(self, photo: LocalPhoto) -> RefusalRecord | None:
        """What was recorded for photo, if the file and the settings are unchanged since."""
        return RefusalRecord.from_json(self._stored("refusals", photo.path))

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


@dataclass
class LocalArchive:
    """The run's local photos: those read and prepared for matching, and the unchanged files
    without ids of the other days, waiting by day (as positions in files) until a day needs
    them. An unchanged night reads only the days with something to do."""

    photos: list[LocalPhoto]
    files: tuple[tuple[str, str, int, int], ...]  # FoundFiles.pictures
    waiting: dict[dt.date, list[int]]

    @property
    def count(self) -> int:
        """How many local photos there are (a RAW+JPEG pair once)."""
        return len(self.photos) + sum(len(positions) for positions in self.waiting.values())


def load_archive(
    found: FoundFiles, index: LocalIndex, console: Console, options: Options
) -> LocalArchive:
    """Read what is new or changed, with every file of its days (RAW+JPEG pairs and sidecars
    are joined within a day); the other days' files wait. Files kept with a sidecar, or that
    hold ids or a dissociation, are always read: their days are refreshed on every run."""
    stored = index.unmarked_photos()  # one query; no record is decoded
    offset = options.time_offset
    by_day: dict[str, list[int]] = defaultdict(list)  # day as ISO text: no object a file
    changed: list[int] = []
    for position, (_, absolute, size, mtime_ns) in enumerate(found.pictures):
        known = stored.get(absolute)
        if known is None or known[0] != size or known[1] != mtime_ns or options.sidecars:
            changed.append(position)
        elif offset:
            day = (dt.datetime.fromisoformat(known[2]) - offset).date().isoformat()
            by_day[day].append(position)
        else:
            by_day[known[2][:10]].append(position)
    del stored
    waiting = {dt.date.fromisoformat(day): positions for day, positions in by_day.items()}
    archive = LocalArchive([], found.pictures, waiting)
    photos = load_local_photos(
        [Path(found.pictures[i][0]) for i in changed], index, console, options.time_offset
    )
    busy = sorted(
        i for day in {p.corrected_time.date() for p in photos} for i in waiting.pop(day, ())
    )
    photos += load_local_photos(
        [Path(found.pictures[i][0]) for i in busy], index, console, options.time_offset
    )
    rank = {Path(found.pictures[i][0]): i for i in (*changed, *busy)}
    photos.sort(key=lambda p: rank[p.path])  # the walk's order
    archive.photos = prepare_local_photos(
        photos, index, console, naming=options.sidecar_names, all_in_sidecars=options.sidecars
    )
    return archive


def recall_days(
    archive: LocalArchive,
    days: Iterable[dt.date],
    index: LocalIndex,
    console: Console,
    options: Options,
) -> list[LocalPhoto]:
    """The waiting files of these days, read and prepared: they leave archive.waiting."""
    positions = sorted(i for day in set(days) for i in archive.waiting.pop(day, ()))
    if not positions:
        return []
    paths = [Path(archive.files[i][0]) for i in positions]
    photos = load_local_photos(paths, index, console, options.time_offset)
    return prepare_local_photos(
        photos, index, console, naming=options.sidecar_names, all_in_sidecars=options.sidecars
    )


def sidecar_holding_tags(
    index: LocalIndex, photo: LocalPhoto, console: Console
) -> LocalPhoto | None:
    """photo with the existing sidecar that holds this tool's tags while the picture does not
    (an earlier run with --sidecars put them there); None when there is no such sidecar."""
    if photo.tags is not None or photo.dissociated or photo.written_caption is not None:
        return None
    for name in sidecar_names(photo.path):
        if not name.is_file():
            continue
        found = index.read_sidecar(dataclasses.replace(photo, sidecar=name), console)
        if found is not None and (
            found.tags is not None or found.dissociated or found.written_caption is not None
        ):
            return found
    return None


def prepare_local_photos(
    photos: Sequence[LocalPhoto],
    index: LocalIndex,
    console: Console,
    *,
    naming: str,
    all_in_sidecars: bool,
) -> list[LocalPhoto]:
    """Photos ready for matching: sidecars named and read, RAW+JPEG pairs joined."""
    homes = name_sidecars([p.path for p in photos], naming, all_in_sidecars, console)
    ready = []
    for photo in photos:
        sidecar = homes.get(photo.path)
        if sidecar is None:  # a sidecar an earlier --sidecars run tagged stays its home
            ready.append(sidecar_holding_tags(index, photo, console) or photo)
            continue
        found = index.read_sidecar(dataclasses.replace(photo, sidecar=sidecar), console)
        if found is not None:
            ready.append(found)
    index.db.commit()
    return pair_raw_with_exports(ready)


# ---------------------------------------------------------------------------
# 8. Decoding and pictures
#    Pixels upright at the size a comparison needs: Pillow (JPEG draft mode),
#    pillow-heif for HEIC, LibRaw's preview or demosaic for RAW; an upload decoded
#    without the plain bands (a frame, a border, padding) an export added around it.
# ---------------------------------------------------------------------------


_ORIENTATION_FIX = {  # names of Image.Transpose, looked up when Pillow is loaded
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def decode_upright(path: Path, orientation: int, longest: int) -> Image.Image:
    """Decode a picture upright and in RGB, reduced but with its longest side >= longest.

    RAW and HEIF files are turned upright by their decoders; orientation is for the others.
    """
    kind = picture_kind(path)
    if kind == "raw":
        return _decode_raw(path, longest)
    if kind == "heif":
        _register_heif_decoder()
    with Image.open(path) as image:
        if image.width * image.height > MAX_PICTURE_PIXELS:  # Pillow only warns up to 2x
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} pixels, more than {MAX_PICTURE_PIXELS}"
            )
        if image.format == "JPEG":  # JPEG decodes at 1/2, 1/4, 1/8 of its size cheaply
            scale = longest / max(image.size)
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        picture = image.convert("RGB")
        if kind == "heif":  # libheif has applied the file's turns; Pillow's AVIF may leave one
            orientation = image.getexif().get(0x0112, 1)
    if orientation in _ORIENTATION_FIX:
        picture = picture.transpose(Image.Transpose[_ORIENTATION_FIX[orientation]])
    return picture


def decodes_reduced(path: Path) -> bool:
    """True when a small decode costs much less than a big one: JPEGs, and RAW files (their
    previews are JPEGs). PNG, TIFF and HEIF always decode every pixel."""
    return picture_kind(path) == "raw" or path.suffix.lower() in JPEG_SUFFIXES


@functools.cache
def _register_heif_decoder() -> None:
    """Let Pillow open HEIC/HEIF through pillow-heif (Pillow reads AVIF itself)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


# sRGB's tone curve (LibRaw's default is BT.709's): exports are sRGB, so compare like with like
SRGB_GAMMA = (2.4, 12.92)


_LIBRAW_FLIP = {0: 1, 3: 3, 5: 8, 6: 6}  # LibRaw's flip code -> the EXIF orientation it means


def _decode_raw(path: Path, longest: int) -> Image.Image:
    """A RAW picture upright: the camera's preview JPEG when it is large enough (fast, and
    close to what people export), else a half-size demosaic.

    Large enough: at least longest pixels on its longest side, or as large as the demosaic.
    """
    import rawpy

    try:
        with _open_raw(path) as raw:
            sizes = raw.sizes
            if sizes.raw_width * sizes.raw_height > MAX_PICTURE_PIXELS:
                raise Image.DecompressionBombError(
                    f"{sizes.raw_width}x{sizes.raw_height} pixels, more than {MAX_PICTURE_PIXELS}"
                )
            enough = min(longest, max(sizes.width, sizes.height) // 2)
            preview = _raw_preview(raw, enough, longest)
            if preview is not None:
                orientation = _LIBRAW_FLIP.get(sizes.flip, 1)
                if orientation in _ORIENTATION_FIX:
                    preview = preview.transpose(Image.Transpose[_ORIENTATION_FIX[orientation]])
                return preview
            # LibRaw applies the flip itself when it demosaics.
            pixels = raw.postprocess(
                half_size=True, use_camera_wb=True, output_bps=8, gamma=SRGB_GAMMA
            )
    except rawpy.LibRawError as error:
        raise OSError(
            f"LibRaw cannot decode this {format_name(path)} file ({type(error).__name__})"
        ) from None
    return Image.fromarray(pixels).convert("RGB")


def _raw_preview(raw: Any, enough: int, longest: int) -> Image.Image | None:
    """The embedded preview in RGB, reduced but not below longest, if its longest side has at
    least enough pixels; else None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            with Image.open(io.BytesIO(thumb.data)) as image:
                if max(image.size) < enough:
                    return None
                scale = longest / max(image.size)
                image.draft(
                    "RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale))
                )
                return image.convert("RGB")
        except (OSError, ValueError):  # a damaged preview: demosaic instead
            return None
    picture = Image.fromarray(thumb.data).convert("RGB")
    return picture if max(picture.size) >= enough else None


def _open_rgb(path: Path | io.BytesIO) -> Image.Image | None:
    """A downloaded upload decoded, without a frame or padding added around it (see
    framed_box), or None when the file is not a picture."""
    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, ValueError):
        return None
    box = framed_box(np.asarray(picture.convert("L")))
    return picture if box is None else picture.crop(box)


BAND_TOLERANCE = 8  # levels: a pixel this close to a band's colour belongs to it
BAND_SHARE = 0.75  # a line (row or column) this much of one colour is a band: text may sit on it
BAND_TRIM = 0.01  # of the side, cut beyond the bands: a frame's blurred inner line, ringing


BAND_BUSY = 0.5  # ... and a line half of it, between plain ones, holds a viewer's buttons
BAND_GAP = 12  # ... when there are at most 1/BAND_GAP of the lines searched of them in a row


def _close_gaps(plain: np.ndarray, busy: np.ndarray, gap: int) -> np.ndarray:
    """plain, with runs of at most gap busy lines between plain ones counted as plain (the
    icons and buttons of a screenshot's bars)."""
    closed = plain.copy()
    k = 0
    while k < len(plain):
        if plain[k] or not busy[k]:
            k += 1
            continue
        end = k
        while end < len(plain) and busy[end] and not plain[end]:
            end += 1
        if k > 0 and end < len(plain) and plain[k - 1] and plain[end] and end - k <= gap:
            closed[k:end] = True
        k = end
    return closed


def _band_depth(lines: np.ndarray) -> int:
    """How many of lines (rows from an edge inwards, as a 2-D array) are plain bands, of up
    to three colours (a mat, a line inside it); 0 when too few, or when nothing else follows
    (a plain picture)."""
    depth, gap = 0, len(lines) // BAND_GAP
    for _ in range(3):
        run = _plain_run(lines[depth:], gap)
        # between two bands, resampling may leave a line of neither colour (a phone's bar
        # above the viewer's black)
        if run < 2 and depth and (after := _plain_run(lines[depth + 1 :], gap)) >= 2:
            run = 1 + after
        if run < 2:
            break
        depth += run
    return depth if depth >= 3 else 0


def _plain_run(lines: np.ndarray, gap: int) -> int:
    """How many of lines, from the first, are of the first one's colour (text and buttons on
    them allowed, see _close_gaps); 0 when all are, or when there are fewer than two."""
    if len(lines) < 2:
        return 0
    colour = np.median(lines[0])
    share = (np.abs(lines - colour) <= BAND_TOLERANCE).mean(axis=1)
    plain = _close_gaps(share >= BAND_SHARE, share >= BAND_BUSY, gap)
    return int(np.argmin(plain))  # 0 when the first is not plain, or all are


def framed_box(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The picture inside a frame, border or padding an export added (left, top, right,
    bottom), or None. Only bands on two opposite edges count: one plain edge is sky."""
    height, width = gray.shape
    # a panorama padded to a square (2:1), or shown on a phone's screen (up to 4:1)
    deep_y, deep_x = height * 9 // 20, width * 9 // 20
    signed = gray.astype(np.int16)
    top, bottom = _band_depth(signed[:deep_y]), _band_depth(signed[::-1][:deep_y])
    left, right = _band_depth(signed.T[:deep_x]), _band_depth(signed.T[::-1][:deep_x])
    if not (top and bottom):
        top = bottom = 0
    if not (left and right):
        left = right = 0
    if not (top or left):
        return None
    cut_x, cut_y = (max(2, round(BAND_TRIM * side)) for side in (width, height))
    left, right = (depth + cut_x if depth else 0 for depth in (left, right))
    top, bottom = (depth + cut_y if depth else 0 for depth in (top, bottom))
    return (left, top, width - right, height - bottom)


# ---------------------------------------------------------------------------
# 9a. Similarity: the score
#    SSIM-PIL's structural similarity, the number users know: numpy, or OpenCL with --gpu;
#    and the correlation search (coarse_alignment, refine_alignment) that lines up pictures
#    without keypoints and gives the cheap pre-filter's score. Sections 9a to 9e take
#    decoded pictures and their keypoints in and give a Comparison and a verdict out.
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
    return float(np.mean(ssim_tiles(first, second)))


def ssim_tiles(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Each tile's and channel's SSIM (rows x cols x 3); their mean is ssim_score."""
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
    return luminance * structure


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
        # Comparing threads share the kernel, and setting a kernel's arguments is not
        # thread-safe in OpenCL: one call at a time sets them and runs it.
        self._lock = threading.Lock()

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
        with self._lock:
            self._kernel(
                self._queue,
                tiles.shape[::-1],
                None,
                *inputs,
                first.shape[1] * 3,
                _C1_N2,
                _C2_N2,
                out,
            )
            cl.enqueue_copy(self._queue, tiles, out)
        return float(tiles.sum(dtype=np.float64) / tiles.size)


ScoreFunction = Callable[["np.ndarray", "np.ndarray"], float]


def choose_score_function(use_gpu: bool, console: Console) -> ScoreFunction:
    """The OpenCL score when asked for and available, else numpy's (saying why)."""
    if use_gpu:
        try:
            return OpenCLSimilarity().score
        except OpenCLUnavailable as reason:
            console.warn(f"no OpenCL device ({reason}); computing similarity on the CPU")
    return ssim_score


# -- The correlation search: pictures without keypoints, and the cheap pre-filter --------


ALIGN_SIDE = 160  # longest side of the coarse search (the cheap pre-filter), pixels


SMALLEST_CROP = 0.6  # crops down to 60 % of the width (36 % of the area) are searched


ALIGN_GATE = 0.8  # coarse correlation below this: not the same picture, no full score


_TURN = {1: "ROTATE_90", 2: "ROTATE_180", 3: "ROTATE_270"}  # names of Image.Transpose


def grayscale(picture: Image.Image, side: float) -> np.ndarray:
    """picture in grayscale, scaled so that its longest side is about side pixels."""
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return np.asarray(picture.convert("L").resize(size, Image.Resampling.BILINEAR), np.float64)


def turned(picture: Image.Image, turns: int) -> Image.Image:
    return picture.transpose(Image.Transpose[_TURN[turns]]) if turns else picture


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


# ---------------------------------------------------------------------------
# 9b. Similarity: registration
#    Where an upload lies in a local picture: keypoints and RANSAC for crops (down to
#    MIN_AREA, searched at coarser sizes too), scale, any angle and quarter turns;
#    phase correlation to sharpen the fit and measure the misfit of another shot; a
#    homography for an upload a lens or an upright correction bent, over a similarity
#    leaving most matches out or fitting them bunched in a few cells, at a coarser size
#    too where grain hides the keypoints (the smooth field that explains it is in 9c);
#    the homography of a pair's own matches once a similarity lined it up (register_bent);
#    guided matches where look-alike texture defeats the ratio test (guided_matches); the
#    cheap probe a flipped upload passes before a full comparison (may_line_up). Plain
#    bands an export added around an upload (a frame, padding) are cut off when it is
#    decoded (framed_box, section 8).
# ---------------------------------------------------------------------------


# -- Registration from local features: crops, scale and any angle, whatever the tones -------

FEATURE_SIDE = 1000  # longest side of the picture keypoints are found in, pixels
FEATURE_COUNT = 1000  # the strongest this many keypoints of an upload are kept
LOCAL_FEATURE_COUNT = 2000  # ... of a local picture: a tight crop holds a few of them
FEW_FEATURES = 60  # a picture with fewer keypoints is compared the old way (correlation)
MATCH_RATIO = 0.8  # a match counts when clearly closer than the second best (Lowe's test)
RANSAC_ERROR = 0.004  # inlier distance as a fraction of the local picture's longest side
MIN_INLIERS = 20  # fewer geometrically consistent matches: not the same picture
MIN_SPREAD = 3 / 16  # ... and lie in at least this fraction of a 4 x 4 grid (or be many)
MIN_AREA = 0.05  # an upload showing less of the local picture is not searched for
# An upload is also searched for at these sizes (pixels, longest side): a tight crop (a
# distant bird) appears that small among the local picture's keypoints.
COARSER_SIDES = (400,)
CORNER_CONTRAST = 12  # levels a corner stands out by (ORB's FAST threshold)
FAINT_CORNERS = 5  # ... in an upload where few stand out that far
EDGE_SLACK = 0.004  # an upload may reach this far past the local picture (estimation error)
BENT_ERROR = 0.012  # inlier distance of the homography a bent upload is registered by
BENT_FROM_SHARE = 0.6  # a similarity that fits fewer of the matches: a homography is tried
GUIDE_RADIUS = 0.06  # of the local picture's longer side: how far from where a partial
# registration puts an upload keypoint its guided match is looked for
GUIDE_FROM = MIN_INLIERS // 2  # ... by a partial registration of at least this many inliers
BENT_SLACK = 0.015  # ... and how far a similarity fitted to a bent upload may reach past
_ORB_SCALE = 1.2  # size ratio of neighbouring levels of ORB's pyramid


@dataclass(frozen=True)
class Features:
    """A picture's keypoints, found once per run; points in its own continuous pixels."""

    points: np.ndarray  # N x 2 float32; (0, 0) is the top left corner of the top left pixel
    descriptors: np.ndarray  # N x 32 uint8, ORB's binary descriptors
    size: tuple[int, int]  # width and height of the picture the points refer to
    coarser: tuple[Features, ...] = ()  # an upload's: found in it shrunk to COARSER_SIDES


# Keypoint matches: upload points, the local points they matched, and how many there are.
Matches = tuple["np.ndarray", "np.ndarray", int]


@dataclass(frozen=True)
class Registration:
    """How an upload maps onto a local picture, fitted to its matching keypoints."""

    matrix: np.ndarray  # 2 x 3 similarity: upload pixel (x, y, 1) -> local pixel
    inliers: np.ndarray  # K x 2 x 2: matched (upload, local) points consistent with matrix
    matches: int  # matches that passed the ratio test, the inliers among them
    spread: float  # fraction of a 4 x 4 grid over the upload that holds an inlier
    area: float  # fraction of the local picture the upload covers
    overshoot: float  # how far the upload reaches past the local picture's edges, a fraction
    bent: bool = False  # fitted to the matches of one homography (register's bent)
    homography: np.ndarray | None = None  # ... that homography, upload pixel -> local pixel
    # guided (guided_matches): the ratio-test matches its geometry fits, and how many there are
    fitted_matches: tuple[int, int] | None = None

    @property
    def counts(self) -> tuple[int, int]:
        """Inliers and matches as the verdict counts them: a guided registration's are the
        ratio-test matches its geometry fits, and how many passed that test."""
        return self.fitted_matches or (len(self.inliers), self.matches)

    def put(self, points: np.ndarray) -> np.ndarray:
        """Where these upload points (N x 2) lie in the local picture: through the homography
        of a bent registration, else through the similarity."""
        if self.homography is not None:
            moved = points.reshape(-1, 1, 2).astype(np.float64)
            return _cv2().perspectiveTransform(moved, self.homography)[:, 0]
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    @property
    def lined_up(self) -> bool:
        """Enough consistent matches, spread over the upload, for a region inside the local
        picture: a crop of this very picture. Another shot of the scene, framed a little
        differently, reaches past its edges (a bent one, by no more than its bend)."""
        enough = len(self.inliers) >= MIN_INLIERS
        spread = self.spread >= MIN_SPREAD or len(self.inliers) >= 3 * MIN_INLIERS
        slack = BENT_SLACK if self.bent else EDGE_SLACK
        return enough and spread and MIN_AREA <= self.area <= 1.05 and self.overshoot <= slack


@functools.cache
def _cv2() -> Any:
    """OpenCV, imported on first use (it takes a while), single-threaded: scoring already
    runs one thread per core."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def find_local_features(picture: Image.Image) -> Features:
    """A local picture's keypoints: more than an upload's, so that a tight crop finds some."""
    return find_features(picture, count=LOCAL_FEATURE_COUNT)


def find_upload_features(picture: Image.Image) -> Features:
    """An upload's keypoints at FEATURE_SIDE and, for a crop so tight that the local picture
    shows it smaller, at the COARSER_SIDES too. A tight crop is soft: where few corners
    stand out, fainter ones are taken."""
    levels = []
    for side in (FEATURE_SIDE, *COARSER_SIDES):
        found = find_features(picture, side)
        if len(found.points) < FEATURE_COUNT // 4:
            found = find_features(picture, side, FAINT_CORNERS)
        levels.append(found)
    return dataclasses.replace(levels[0], coarser=tuple(levels[1:]))


def find_features(
    picture: Image.Image,
    side: int = FEATURE_SIDE,
    corners: int = CORNER_CONTRAST,
    count: int = FEATURE_COUNT,
) -> Features:
    """The count strongest ORB keypoints of picture, found at about side pixels."""
    cv2 = _cv2()
    gray = np.asarray(picture.convert("L"))
    scale = side / max(picture.size)
    if scale < 1:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    orb = cv2.ORB_create(nfeatures=count, scaleFactor=_ORB_SCALE, fastThreshold=corners)
    keypoints, descriptors = orb.detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), picture.size)
    # ORB reports a keypoint found in pyramid level L at its pixel index times 1.2^L; the centre
    # of that pixel lies half a level-L pixel further. Otherwise a turned upload, whose
    # pyramid runs the other way, comes out a pixel off.
    points = np.array([(*k.pt, _ORB_SCALE**k.octave) for k in keypoints], np.float32)
    points = points[:, :2] + 0.5 * points[:, 2:]
    points *= np.array([picture.width / gray.shape[1], picture.height / gray.shape[0]], np.float32)
    return Features(points, descriptors, picture.size)


def register_any(local: Features, upload: Features) -> Registration | None:
    """The first of register_tried: the registration to compare through."""
    return register_tried(local, upload)[0]


def register_tried(
    local: Features, upload: Features
) -> tuple[Registration | None, Registration | None]:
    """register at the upload's size, else coarser: the first that lines up (or a homography
    fitting more), else a homography (coarser too) or the first found; and the homography tried."""
    matches = keypoint_matches(local, upload)
    first = register(local, upload, matches)

    def sizes() -> Iterator[tuple[Registration | None, Features, Matches | None]]:
        """The similarity at the upload's size, then at each coarser size, with the features
        and matches it was fitted to (the coarser sizes only where needed)."""
        yield first, upload, matches
        for level in upload.coarser:
            level_matches = keypoint_matches(local, level)
            yield register(local, level, level_matches), level, level_matches

    # Where a homography may be fitted: at the upload's size, and at each coarser size whose
    # similarity fitted some of the matches but left most out, as a bent picture's does (strong
    # grain leaves an upload's own keypoints unmatched; shrunk, the grain is gone). One that
    # fits most but reaches past the photo's edges is another shot, framed a little differently.
    levels: list[tuple[Features, Matches | None]] = []
    for found, level, level_matches in sizes():
        fits = 0 if found is None else len(found.inliers)
        partial = found is not None and MIN_INLIERS <= fits < BENT_FROM_SHARE * found.matches
        if level is upload or partial:
            levels.append((level, level_matches))
        if found is None or not found.lined_up:
            continue
        bunched = found.spread < MIN_SPREAD  # lined up by its count alone, in a few cells
        if len(found.inliers) >= BENT_FROM_SHARE * found.matches and not bunched:
            return found, None
        # Most matches left out, or those fitted bunched in a few cells: a strong upright
        # correction (in both directions) bends the picture past what a similarity fits; one
        # homography may fit them, or more of them over the whole picture.
        # One that fits many more but reaches past the edges is kept for register_framed: an
        # upright correction with a frame added (another shot has no frame there).
        past = None
        for b in _homographies(local, levels):
            if len(b.inliers) > 1.5 * len(found.inliers) or (
                bunched and b.spread >= MIN_SPREAD and len(b.inliers) > len(found.inliers)
            ):
                if b.lined_up:
                    return b, None
                past = past or (b if b.overshoot > EDGE_SLACK else None)
        return found, past
    # A lens or perspective correction bends the picture: a similarity fits the matches near
    # one place only. Matches that one homography fits, within a looser distance, are kept;
    # the smooth correction measured later says whether the bend was an editor's.
    bent = register(local, upload, matches, bent=True)
    if bent is not None and bent.lined_up:
        return bent, None
    lined_up = (b for b in _homographies(local, levels[1:]) if b.lined_up)
    if (coarse := next(lined_up, None)) is not None:
        return coarse, None
    return _guided_registration(local, upload, matches, (first, bent)) or first, bent


def _homographies(
    local: Features, levels: list[tuple[Features, Matches | None]]
) -> Iterator[Registration]:
    """The bent registrations fitted at each of levels (an upload's features at one size and
    their matches), in order."""
    for level, level_matches in levels:
        found = register(local, level, level_matches, bent=True)
        if found is not None:
            yield found


MIRROR_PROBE = 4  # a flipped upload is first matched by every 4th of its keypoints


def may_line_up(local: Features, upload: Features) -> bool:
    """The cheap probe before a full comparison (of a flipped upload): every MIRROR_PROBE-th
    of the upload's keypoints, or all of them at a coarser size (a tight crop), fit one
    similarity with at least half of MIN_INLIERS of their matches."""
    probe = Features(upload.points[::MIRROR_PROBE], upload.descriptors[::MIRROR_PROBE], upload.size)
    for level in (probe, *upload.coarser):
        found = register(local, level, keypoint_matches(local, level))
        if found is not None and len(found.inliers) >= MIN_INLIERS // 2:
            return True
    return False


def _guided_registration(
    local: Features,
    upload: Features,
    matches: Matches | None,
    tried: tuple[Registration | None, ...],
) -> Registration | None:
    """A registration that lines up through guided_matches, led by a partial one tried (at
    least GUIDE_FROM inliers; a similarity first: fitted to matches in one place, it
    reaches the rest more surely than a homography); its evidence is the ratio-test matches
    its geometry fits, as for any registration. None when there is none. A prior that
    shrinks the upload below MIN_AREA leads nowhere (it would put every upload keypoint
    near every local one)."""
    if matches is None:
        return None
    for prior in tried:
        if prior is None or len(prior.inliers) < GUIDE_FROM or prior.area < MIN_AREA:
            continue
        found = guided_matches(local, upload, prior)
        for bent in (False, True):
            guided = register(local, upload, found, bent=bent)
            if guided is None or not guided.lined_up:
                continue
            source, target, count = matches
            error = (BENT_ERROR if guided.bent else RANSAC_ERROR) * max(local.size)
            fits = np.linalg.norm(guided.put(source) - target, axis=1) <= error
            return dataclasses.replace(guided, fitted_matches=(int(fits.sum()), count))
    return None


def guided_matches(local: Features, upload: Features, prior: Registration) -> Matches | None:
    """Each upload keypoint's nearest local descriptor among the local keypoints within
    GUIDE_RADIUS of where prior puts it, when clearly nearer than the next there; None when
    too few. Repetitive texture (leaves, gravel, grass) defeats the ratio test over the
    whole picture, not among neighbours."""
    from scipy.spatial import cKDTree  # imported with the assignment's scipy.optimize anyway

    reach = GUIDE_RADIUS * max(local.size)
    near = cKDTree(prior.put(upload.points)).sparse_distance_matrix(
        cKDTree(local.points), reach, output_type="ndarray"
    )
    rows, cols = near["i"], near["j"]
    if len(rows) < MIN_INLIERS:
        return None
    bits = np.unpackbits(upload.descriptors[rows] ^ local.descriptors[cols], axis=1)
    distances = bits.sum(axis=1, dtype=np.int32)
    order = np.lexsort((distances, rows))  # by upload keypoint, nearest first
    rows, cols, distances = rows[order], cols[order], distances[order]
    starts = np.nonzero(np.r_[True, rows[1:] != rows[:-1]])[0]
    ends = np.r_[starts[1:], len(rows)]
    following = np.where(ends - starts >= 2, distances[np.minimum(starts + 1, len(rows) - 1)], 256)
    good = starts[distances[starts] < MATCH_RATIO * following]
    if len(good) < MIN_INLIERS:
        return None
    return upload.points[rows[good]], local.points[cols[good]], len(good)


def keypoint_matches(local: Features, upload: Features) -> Matches | None:
    """The upload's keypoints whose nearest local descriptor is clearly nearer than the next
    (the ratio test), with those local keypoints and how many there are; None when too few."""
    cv2 = _cv2()
    if min(len(local.points), len(upload.points)) < MIN_INLIERS:
        return None
    # The two nearest local descriptors of each upload descriptor, as arrays (no Python
    # objects per match: the matching runs without holding the interpreter).
    distances, nearest = cv2.batchDistance(
        upload.descriptors, local.descriptors, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2
    )
    good = np.nonzero(distances[:, 0] < MATCH_RATIO * distances[:, 1])[0]
    if len(good) < MIN_INLIERS:
        return None
    return upload.points[good], local.points[nearest[good, 0]], len(good)


def register(
    local: Features,
    upload: Features,
    matches: Matches | None,
    bent: bool = False,
) -> Registration | None:
    """The similarity transform (crop, scale, rotation) from upload to local fitted to their
    keypoint matches, or None; bent: fitted to the matches one homography takes within
    BENT_ERROR (a corrected lens or perspective)."""
    cv2 = _cv2()
    if matches is None:
        return None
    source, target, count = matches
    if bent:
        homography, mask = cv2.findHomography(
            source, target, cv2.RANSAC, BENT_ERROR * max(local.size), maxIters=4000
        )
        if homography is None or mask is None or mask.sum() < MIN_INLIERS:
            return None
        keep = mask.ravel().astype(bool)
        matrix, _ = cv2.estimateAffinePartial2D(source[keep], target[keep], method=cv2.LMEDS)
        if matrix is None:
            return None
    else:
        homography = None
    if not bent:
        matrix, mask = cv2.estimateAffinePartial2D(
            source,
            target,
            method=cv2.RANSAC,
            ransacReprojThreshold=RANSAC_ERROR * max(local.size),
            maxIters=4000,
            confidence=0.999,
            refineIters=20,
        )
        if matrix is None or mask is None:
            return None
        keep = mask.ravel().astype(bool)
    cells = np.floor(source[keep] / np.array(upload.size, np.float32) * 4).clip(0, 3)
    spread = len({(int(x), int(y)) for x, y in cells}) / 16
    (w, h), (local_w, local_h) = upload.size, local.size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) @ matrix.T
    area = abs(np.linalg.det(matrix[:, :2])) * w * h / (local_w * local_h)
    if homography is not None:  # a bent upload's corners lie where the homography puts them
        own = np.array([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]], np.float64)
        corners = cv2.perspectiveTransform(own, homography)[:, 0]
    past = np.maximum(-corners, corners - [local_w, local_h]).max()
    return Registration(
        matrix,
        np.stack([source[keep], target[keep]], axis=1),
        count,
        spread,
        float(area),
        max(0.0, float(past)) / max(local.size),
        bent,
        homography,
    )


def register_bent(local: Features, upload: Features) -> Registration | None:
    """register's bent registration (one homography's matches) of the pair's own keypoint
    matches, asked for once a similarity has lined the pair up."""
    return register(local, upload, keypoint_matches(local, upload), bent=True)


def _upright_to_upload(turns: int, width: int, height: int) -> np.ndarray:
    """3 x 3 map from the pixels of turned(upload, turns) back to those of the upload."""
    return np.array(
        [
            [[1, 0, 0], [0, 1, 0]],
            [[0, -1, width], [1, 0, 0]],  # ROTATE_90 took (x, y) to (y, width - x)
            [[-1, 0, width], [0, -1, height]],
            [[0, 1, 0], [-1, 0, height]],  # ROTATE_270 took (x, y) to (height - y, x)
        ][turns]
        + [[0, 0, 1]],
        np.float64,
    )


@dataclass(frozen=True)
class Placement:
    """Where the upright upload lies in the local picture, in the local picture's pixels."""

    alignment: Alignment
    matrix: np.ndarray  # 2 x 3 upright upload pixel -> local pixel
    box: Box  # local pixels (left, top, right, bottom); around the corners when rotated

    @property
    def scale(self) -> float:
        """Local pixels per upload pixel (below 1: the local picture is the coarser)."""
        return math.sqrt(abs(np.linalg.det(self.matrix[:, :2])))

    def resized(self, fx: float, fy: float) -> Placement:
        """The same placement in the local picture resized by fx and fy."""
        stretch = np.array([[fx, 0.0], [0.0, fy]])
        left, top, right, bottom = self.box
        box = (left * fx, top * fy, right * fx, bottom * fy)
        return Placement(self.alignment, stretch @ self.matrix, box)


def place_upload(
    registration: Registration, upload_size: tuple[int, int], local_size: tuple[int, int]
) -> Placement:
    """The quarter turns, straightening angle and region of the local picture an upload shows.

    Below STRAIGHT_MIN degrees the region is refitted as an axis-parallel box (scale and shift
    per axis), which is what iNaturalist's resizing of an unrotated upload preserves exactly.
    """
    m = np.vstack([registration.matrix, [0, 0, 1]])
    turns = -round(math.degrees(math.atan2(m[1, 0], m[0, 0])) / 90) % 4
    width, height = upload_size
    to_upload = _upright_to_upload(turns, width, height)
    upright = (m @ to_upload)[:2]
    size = (height, width) if turns % 2 else (width, height)
    if abs(math.degrees(math.atan2(upright[1, 0], upright[0, 0]))) < STRAIGHT_MIN:
        # Least squares per axis on the inliers, brought into the upright upload's frame.
        inliers = registration.inliers
        points = np.c_[inliers[:, 0], np.ones(len(inliers))] @ np.linalg.inv(to_upload).T
        upright = np.zeros((2, 3))
        for axis in (0, 1):
            design = np.c_[points[:, axis], np.ones(len(points))]
            (scale, shift), *_ = np.linalg.lstsq(design, inliers[:, 1, axis], rcond=None)
            upright[axis, axis], upright[axis, 2] = scale, shift
    return _placement_from(upright, turns, size, local_size)


def _placement_from(
    matrix: np.ndarray, turns: int, size: tuple[int, int], local_size: tuple[int, int]
) -> Placement:
    """The placement of a 2 x 3 map from the upright upload (size) into the local picture;
    one without rotation terms is an axis-parallel box."""
    (up_w, up_h), (local_w, local_h) = size, local_size
    if matrix[0, 1] != 0 or matrix[1, 0] != 0:
        angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
        corners = np.array([[0, 0, 1], [up_w, 0, 1], [up_w, up_h, 1], [0, up_h, 1]]) @ matrix.T
        fractions = tuple((float(x / local_w), float(y / local_h)) for x, y in corners)
        xs, ys = corners[:, 0], corners[:, 1]
        box_px = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        box = (box_px[0] / local_w, box_px[1] / local_h, box_px[2] / local_w, box_px[3] / local_h)
        box = tuple(float(min(max(v, 0.0), 1.0)) for v in box)  # type: ignore[assignment]
        return Placement(Alignment(box, turns, angle, fractions), matrix, box_px)
    sx, tx, sy, ty = matrix[0, 0], matrix[0, 2], matrix[1, 1], matrix[1, 2]
    box_px = [tx, ty, tx + sx * up_w, ty + sy * up_h]
    # An upload of the whole frame: its size was rounded from exactly the local picture's.
    whole = [0.0, 0.0, float(local_w), float(local_h)]
    if all(abs(a - b) <= 0.5 * max(sx, sy) for a, b in zip(box_px, whole, strict=True)):
        box_px = whole
        matrix = np.array([[local_w / up_w, 0, 0], [0, local_h / up_h, 0]], np.float64)
    left, top, right, bottom = box_px
    fractions_box = (left / local_w, top / local_h, right / local_w, bottom / local_h)
    clipped = tuple(float(min(max(v, 0.0), 1.0)) for v in fractions_box)
    alignment = Alignment(clipped, turns)  # type: ignore[arg-type]
    return Placement(alignment, matrix, tuple(float(v) for v in box_px))  # type: ignore[arg-type]


def region_of(local: Image.Image, placement: Placement, size: tuple[int, int]) -> np.ndarray:
    """The part of local the upright upload shows, resampled to its size (HxWx3 uint8).

    An axis-parallel region inside the picture is resized as the score has always been
    computed; a rotated one (or one reaching past the edges, which then repeat) is first
    shrunk with an antialiasing filter, then turned at about its final scale.
    """
    left, top, right, bottom = placement.box
    inside = left > -0.01 and top > -0.01 and right < local.width + 0.01
    inside = inside and bottom < local.height + 0.01
    if placement.alignment.angle == 0.0 and inside:
        box = (max(left, 0.0), max(top, 0.0), min(right, local.width), min(bottom, local.height))
        return np.asarray(local.resize(size, Image.Resampling.BILINEAR, box=box))
    cv2 = _cv2()
    matrix = np.vstack([placement.matrix, [0, 0, 1]])
    corners = np.array([[0, 0, 1], [size[0], 0, 1], [size[0], size[1], 1], [0, size[1], 1]])
    spots = corners @ matrix[:2].T
    scale = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    source = local
    if scale > 1.05:  # shrink the surrounding box first, so the warp does not alias
        x0 = max(0, math.floor(spots[:, 0].min()) - 4)
        y0 = max(0, math.floor(spots[:, 1].min()) - 4)
        x1 = min(local.width, math.ceil(spots[:, 0].max()) + 4)
        y1 = min(local.height, math.ceil(spots[:, 1].max()) + 4)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            shrunk = (max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale)))
            source = local.resize(shrunk, Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
            fx, fy = shrunk[0] / (x1 - x0), shrunk[1] / (y1 - y0)
            matrix = np.array([[fx, 0, -x0 * fx], [0, fy, -y0 * fy], [0, 0, 1]]) @ matrix
    # OpenCV samples at pixel centres: shift into and out of continuous coordinates.
    centres = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ matrix
    centres = centres @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return cv2.warpAffine(
        np.asarray(source),
        centres[:2],
        size,
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def cv2_perspective(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """N x 1 x 2 points through a homography, as N x 2."""
    return _cv2().perspectiveTransform(points, homography)[:, 0]


def region_through(local: Image.Image, homography: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The part of local the upright upload shows through a homography (upright upload
    pixel -> local pixel), resampled to its size (HxWx3 uint8); local is shrunk first to
    about the upload's scale, so the warp does not alias."""
    cv2 = _cv2()
    scale = math.sqrt(abs(np.linalg.det(homography[:2, :2] / homography[2, 2])))
    source = local
    if scale > 1.05:
        shrunk = (max(1, round(local.width / scale)), max(1, round(local.height / scale)))
        source = local.resize(shrunk, Image.Resampling.BILINEAR)
        fx, fy = shrunk[0] / local.width, shrunk[1] / local.height
        homography = np.diag([fx, fy, 1.0]) @ homography
    # OpenCV samples at pixel centres: shift into and out of continuous coordinates.
    centres = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ homography
    centres = centres @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return cv2.warpPerspective(
        np.asarray(source),
        centres,
        size,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


REFINE_PATCH = 128  # side of the patches whose shifts sharpen a registration, pixels
REFINE_RESPONSE = 0.15  # phase-correlation peaks below this come from flat or mismatched patches


@dataclass(frozen=True)
class Refinement:
    """What the patches of a registered pair say: a sharper placement, and how well they fit."""

    placement: Placement | None  # None: the patches found nothing to correct
    misfit: float  # median distance of the patches from one rigid placement, upload pixels


def refine_placement(
    placement: Placement, region: np.ndarray, upload: np.ndarray, local_size: tuple[int, int]
) -> Refinement:
    """The shifts of 3 x 3 patches of region against upload: a sharper placement, and misfit.

    Keypoints place an upload to about a pixel; SSIM needs a fraction of one. Phase
    correlation measures each patch's residual shift to a twentieth of a pixel, whatever the
    tones; a similarity (or, for an unrotated upload, a scale and shift per axis) fitted to
    the shifts corrects the placement. What the fit leaves over is the misfit: nearly nothing
    for a crop of this very picture, a pixel or more for another shot, where the scene moved
    by parallax between two frames.
    """
    height, width = upload.shape[:2]
    side = min(REFINE_PATCH, min(height, width) // 3) // 2 * 2
    if side < 32:
        return Refinement(None, 0.0)
    centres, shifts = _patch_shifts(region, upload, 3, REFINE_PATCH, 1 / 4)
    if len(centres) < 4:
        return Refinement(None, 0.0)
    points, moved = centres, centres + shifts
    axis_parallel = placement.alignment.angle == 0.0
    fit = _fit_motion(points, moved, axis_parallel)
    misfit = float(np.median(np.linalg.norm(points @ fit[:, :2].T + fit[:, 2] - moved, axis=1)))
    for _ in range(2):  # drop the patches that disagree (a moving subject), fit again
        errors = np.linalg.norm(points @ fit[:, :2].T + fit[:, 2] - moved, axis=1)
        keep = errors <= max(0.3, 3 * float(np.median(errors)))
        if keep.all() or keep.sum() < 4:
            break
        points, moved = points[keep], moved[keep]
        fit = _fit_motion(points, moved, axis_parallel)
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    if np.abs(corners @ fit[:, :2].T + fit[:, 2] - corners).max() < 0.05:
        return Refinement(None, misfit)  # already within a twentieth of a pixel
    matrix = np.vstack([placement.matrix, [0, 0, 1]]) @ np.vstack([fit, [0, 0, 1]])
    turns = placement.alignment.turns
    return Refinement(_placement_from(matrix[:2], turns, (width, height), local_size), misfit)


def _patch_shifts(
    region: np.ndarray, upload: np.ndarray, grid: int, patch: int, reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of a grid x grid grid of patches (about patch pixels) of upload and how far
    each lies shifted in region (upload pixels, N x 2 each), for the patches phase
    correlation is sure of and that moved less than reach of a patch. Either picture may be
    given in grey already."""
    cv2 = _cv2()
    height, width = upload.shape[:2]
    side = min(patch, min(height, width) // 3) // 2 * 2
    window = cv2.createHanningWindow((side, side), cv2.CV_32F)
    gray = [_grey(p).astype(np.float32) for p in (upload, region)]
    centres, shifts = [], []
    for fy in np.linspace(0.5 / grid, 1 - 0.5 / grid, grid):
        for fx in np.linspace(0.5 / grid, 1 - 0.5 / grid, grid):
            x0 = min(max(round(fx * width) - side // 2, 0), width - side)
            y0 = min(max(round(fy * height) - side // 2, 0), height - side)
            patches = [g[y0 : y0 + side, x0 : x0 + side] for g in gray]
            (dx, dy), response = cv2.phaseCorrelate(patches[0], patches[1], window)
            if response >= REFINE_RESPONSE and max(abs(dx), abs(dy)) < side * reach:
                centres.append((x0 + side / 2, y0 + side / 2))
                shifts.append((dx, dy))
    return np.array(centres, np.float64).reshape(-1, 2), np.array(shifts).reshape(-1, 2)


def _grey(picture: np.ndarray) -> np.ndarray:
    """An HxWx3 picture in grey; a grey one as it is."""
    if picture.ndim == 2:
        return picture
    cv2 = _cv2()
    return cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)


def _fit_motion(points: np.ndarray, moved: np.ndarray, axis_parallel: bool) -> np.ndarray:
    """Least-squares 2 x 3 map taking points to moved: a similarity, or scale and shift per
    axis when axis_parallel."""
    n = len(points)
    if axis_parallel:
        fit = np.zeros((2, 3))
        for axis in (0, 1):
            design = np.c_[points[:, axis], np.ones(n)]
            (scale, shift), *_ = np.linalg.lstsq(design, moved[:, axis], rcond=None)
            fit[axis, axis], fit[axis, 2] = scale, shift
        return fit
    # x' = a x - b y + tx, y' = b x + a y + ty
    design = np.zeros((2 * n, 4))
    design[0::2] = np.c_[points[:, 0], -points[:, 1], np.ones(n), np.zeros(n)]
    design[1::2] = np.c_[points[:, 1], points[:, 0], np.zeros(n), np.ones(n)]
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, moved.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


# ---------------------------------------------------------------------------
# 9c. Similarity: corrections and tones
#    What an editor changes in a picture that lined up: a lens or upright correction is
#    explained by a smooth field (smooth_correction) that another shot's parallax does not
#    fit, a liquify push by a local, gentle dense motion (local_warp) that a subject moved
#    over a still background does not; exposure, curves, saturation and colour balance are
#    fitted and undone (match_tones); what no curve undoes (sharpening, clarity, noise
#    reduction, recompression) is measured past: the coarse score compares the lined-up
#    pictures shrunk, where those filters do not reach. Local tone tools (graduated
#    filters, dehaze) are undone by a smooth local gain, before or after the tone curve,
#    and set aside by local levels for the coarse evidence.
# ---------------------------------------------------------------------------


# -- Smooth corrections: a lens profile or an upright (perspective) correction bends the
# whole picture smoothly; another shot moves near and far things apart, and its subject.

SMOOTH_FROM = 0.15  # pixels of rigid misfit from which a smooth correction is looked for
SMOOTH_GRID = 7  # ... measured by SMOOTH_GRID x SMOOTH_GRID patches
SMOOTH_PATCH = 96  # side of those patches, pixels
SMOOTH_PASSES = 2  # ... fitted, measured again and fitted again: a strong lens needs two
SMOOTH_EXPLAINS = 0.3  # the correction must leave at most this share of the rigid misfit
SMOOTH_NOISE = 0.3  # ... or this many pixels: what the patches measure between two exports
SMOOTH_MAX = 0.15  # ... and move no part by more than this fraction of the long side
BENT_MISFIT = 1.0  # pixels: the misfit a bent registration's correction must explain


@dataclass(frozen=True)
class SmoothFit:
    """A region resampled through a smooth correction, and what the correction left over."""

    region: np.ndarray  # the region, each pixel taken where the correction says (HxWx3)
    residual: float  # median distance of the patches from the correction, upload pixels
    reach: float  # the most the correction moves a part, upload pixels


def _smooth_basis(points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The design rows of the smooth field for x and y shifts at points (upload pixels).

    Twelve terms: a shift, scale and shear per axis; the two quadratic terms of a
    perspective correction; radial distortion (r^2 and r^4) about the centre and, for a
    crop after the correction, about a point beside it (to first order).
    """
    half = max(size) / 2
    u = (points[:, 0] - size[0] / 2) / half
    v = (points[:, 1] - size[1] / 2) / half
    r2 = u * u + v * v
    one, zero = np.ones_like(u), np.zeros_like(u)
    rows_x = np.c_[one, u, v, zero, zero, zero, u * u, u * v, u * r2, r2 + 2 * u * u, 2 * u * v,
                   u * r2 * r2]  # fmt: skip
    rows_y = np.c_[zero, zero, zero, one, u, v, u * v, v * v, v * r2, 2 * u * v, r2 + 2 * v * v,
                   v * r2 * r2]  # fmt: skip
    return rows_x, rows_y


def _fit_smooth(points: np.ndarray, shifts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The smooth field's 12 terms fitted to the shifts, dropping the patches that disagree
    (a subject that moved) twice."""
    keep = np.ones(len(points), bool)
    terms = np.zeros(12)
    for _ in range(3):
        rows_x, rows_y = _smooth_basis(points[keep], size)
        design = np.vstack([rows_x, rows_y])
        terms, *_ = np.linalg.lstsq(design, np.r_[shifts[keep, 0], shifts[keep, 1]], rcond=None)
        errors = np.linalg.norm(_smooth_at(terms, points, size) - shifts, axis=1)
        keep = errors <= max(0.3, 3 * float(np.median(errors)))
        if keep.sum() < 16:
            break
    return terms


def _smooth_at(terms: np.ndarray, points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows_x, rows_y = _smooth_basis(points, size)
    return np.c_[rows_x @ terms, rows_y @ terms]


def _resampled(picture: np.ndarray, shift: np.ndarray, interpolation: int) -> np.ndarray:
    """picture with each pixel taken from where shift (HxWx2 float32, pixels) moves it to;
    the edges repeat."""
    cv2 = _cv2()
    height, width = picture.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(
        picture,
        xs + shift[..., 0],
        ys + shift[..., 1],
        interpolation,
        borderMode=cv2.BORDER_REPLICATE,
    )


def smooth_correction(
    region: np.ndarray, upload: np.ndarray, misfit: float, through: bool = False
) -> SmoothFit | None:
    """The region resampled through the smooth correction that best lines it up with upload,
    when that correction explains the misfit a rigid placement left (a lens or perspective
    correction); None when it does not (another shot: parallax and a moving subject follow
    no lens).

    The patches' shifts are fitted by a homography first (an upright correction is one
    exactly), then what is left by the smooth field (_smooth_basis), and measured again;
    where that leaves too much, the field is fitted alone too, and the closer fit kept.
    through: the region is lined up through a homography already; both are always fitted.
    """
    height, width = upload.shape[:2]
    if min(height, width) < 96:
        return None
    cv2 = _cv2()
    size = (width, height)
    upload = _grey(upload)  # measured in grey, as _patch_shifts would each time
    points, shifts = _patch_shifts(region, upload, SMOOTH_GRID, SMOOTH_PATCH, 1 / 3)
    if len(points) < 16:
        return None
    homography, _ = cv2.findHomography(points, points + shifts, cv2.RANSAC, 1.5)
    if homography is None:
        return None
    # A nearly rigid pair is not held to a finer residual than the measurement can give (a
    # small export at low quality).
    allowed = min(MAX_MISFIT, max(SMOOTH_EXPLAINS * misfit, SMOOTH_NOISE))

    def serves(fit: SmoothFit | None) -> bool:
        """Whether a fit explains the misfit and moves no part too far."""
        return fit is not None and fit.residual <= allowed and fit.reach <= SMOOTH_MAX * max(size)

    # A homography fitted to the shifts can fit some patches and tilt the rest past what the
    # field then follows (a lens under an upright, a strong lens under a blur).
    fit = _smooth_passes(region, upload, homography)
    if through or not serves(fit):
        alone = _smooth_passes(region, upload, np.eye(3))
        fit = min((f for f in (fit, alone) if f), key=lambda f: f.residual, default=None)
    return fit if serves(fit) else None


def _smooth_passes(
    region: np.ndarray, upload: np.ndarray, homography: np.ndarray
) -> SmoothFit | None:
    """smooth_correction's field fitted after homography (upload pixel -> region pixel),
    measured again and fitted again; None when too few patches are measured."""
    cv2 = _cv2()
    height, width = upload.shape[:2]
    size = (width, height)
    # the field is smooth: computed every 8th pixel and interpolated (8 x 8 times cheaper)
    coarse = np.stack(
        np.meshgrid(
            np.linspace(0, width - 1, width // 8 + 1), np.linspace(0, height - 1, height // 8 + 1)
        ),
        axis=-1,
    ).reshape(-1, 2)

    def taken_from(points: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Where upload points are taken from in region: the field, then the homography."""
        moved = (points + _smooth_at(terms, points, size)).reshape(-1, 1, 2)
        return cv2.perspectiveTransform(moved, homography).reshape(-1, 2)

    terms = np.zeros(12)
    for measured in range(SMOOTH_PASSES + 1):  # correct, measure what is left, correct again
        shift = (taken_from(coarse, terms) - coarse).astype(np.float32)
        shift = shift.reshape(height // 8 + 1, width // 8 + 1, 2)
        shift = cv2.resize(shift, (width, height), interpolation=cv2.INTER_LINEAR)
        current = _resampled(region, shift, cv2.INTER_CUBIC)
        found, shifts = _patch_shifts(current, upload, SMOOTH_GRID, SMOOTH_PATCH, 1 / 3)
        if len(found) < 16:
            return None
        if measured < SMOOTH_PASSES:
            terms = _fit_smooth(found, _smooth_at(terms, found, size) + shifts, size)
    residual = float(np.median(np.linalg.norm(shifts, axis=1)))
    # how far the correction bends the picture beyond what one similarity does
    spots = np.array(
        [(x, y) for x in (0, width / 2, width) for y in (0, height / 2, height)], np.float64
    )
    taken = taken_from(spots, terms)
    rigid = _fit_motion(spots, taken, axis_parallel=False)
    reach = float(np.linalg.norm(spots @ rigid[:, :2].T + rigid[:, 2] - taken, axis=1).max())
    return SmoothFit(current, residual, reach)


# -- Local warps ("liquify"): an editor pushes a small region smoothly and leaves the rest
# in place. Another frame's subject moves too, but over a still background: its motion
# stops at its outline, while a push fades out over a wide reach.

WARP_SIDE = 512  # pixels: the dense motion of a pair is measured at about this longest side
WARP_MOVED = 0.001  # of the longest side: a pixel that moved further is moved
WARP_SHARE = 0.22  # a local warp moves at most this share of the picture
WARP_RISE = 0.027  # of the longest side: the moved part's peak over its steepest slope
WARP_EDGE = 0.03  # of the longest side: the motion this near an edge is not read


@dataclass(frozen=True)
class LocalWarp:
    """Where each pixel of an upload is taken from in its region, once a local warp is
    allowed for, and the share of the picture that moved."""

    flow: np.ndarray  # HxWx2 float32 at the region's size: upload pixel -> region offset
    share: float

    def applied(self, region: np.ndarray) -> np.ndarray:
        """The region with each pixel taken from where the warp says (HxWx3 uint8)."""
        return _resampled(region, self.flow, _cv2().INTER_LINEAR)


def local_warp(region: np.ndarray, upload: np.ndarray) -> LocalWarp | None:
    """The dense motion from upload to region when it is a local warp: at most WARP_SHARE
    of the picture moved, and the motion builds up over at least WARP_RISE of the side (a
    moved subject's stops within a few pixels at its outline). None otherwise."""
    cv2 = _cv2()
    height, width = region.shape[:2]
    scale = min(1.0, WARP_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    first, second = (
        cv2.resize(_grey(p), size, interpolation=cv2.INTER_AREA) for p in (region, upload)
    )
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(second, first, None)
    longest = max(size)
    shift = np.hypot(flow[..., 0], flow[..., 1])
    # Along the edges the flow follows what a correction left misfit at a corner, and what
    # shows past the photo's edge, as much as any motion.
    edge = round(WARP_EDGE * longest)
    inside = np.zeros(shift.shape, bool)
    inside[edge : shift.shape[0] - edge, edge : shift.shape[1] - edge] = True
    moved = (shift > WARP_MOVED * longest) & inside
    share = float(moved.mean())
    if share == 0.0 or share > WARP_SHARE:
        return None
    slopes = [cv2.Sobel(flow[..., c], cv2.CV_32F, *d, ksize=3) / 8 for c in (0, 1)
              for d in ((1, 0), (0, 1))]  # fmt: skip
    steepest = float(np.percentile(np.sqrt(sum(s * s for s in slopes))[moved], 99))
    if float(np.percentile(shift[moved], 99)) < WARP_RISE * longest * steepest:
        return None
    full = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
    return LocalWarp(full / np.float32(scale), share)


# -- Tones: what an editor changes without moving a pixel, globally or locally.

TONE_MIN = 1.5  # mean change in levels below which an upload's tones count as unedited
TONE_SURE = 6.0  # ... above which the tones certainly were edited (no score without matching)
CLIPPED_MIN = 0.02  # fraction of clipped values above which an edit counts as clipping
_TONE_SAMPLE = 4  # tones are fitted on every fourth pixel in each direction
TONE_JUDGED_FROM = 128  # pixels: pairs this big choose their tone matching at half size


def _tone_curve(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A monotone 256-entry curve taking source levels (uint8) to the mean target level."""
    counts = np.bincount(source, minlength=256).astype(np.float64)
    sums = np.bincount(source, weights=target, minlength=256)
    window = np.ones(5)  # pool neighbouring levels: single levels are noisy
    counts, sums = np.convolve(counts, window, "same"), np.convolve(sums, window, "same")
    levels = np.arange(256, dtype=np.float64)
    known = counts >= 8
    if known.sum() < 2:
        return levels
    from scipy.optimize import isotonic_regression  # imported once, on the first pair

    # Monotone, each level weighed by its pixels: a level found almost only in a caption
    # band, standing there for the sky under it, cannot lift every level below it.
    fitted = isotonic_regression(sums[known] / counts[known], weights=counts[known]).x
    return np.interp(levels, levels[known], fitted)


GREY_SPREAD = 1.5  # mean level difference between channels below which a picture is grey


def is_grey(picture: np.ndarray) -> bool:
    """Whether an HxWx3 picture is black and white (its channels nearly equal)."""
    sample = picture[::_TONE_SAMPLE, ::_TONE_SAMPLE].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])
    return float(spread.mean()) < GREY_SPREAD


def curves_like(picture: np.ndarray, target: np.ndarray) -> np.ndarray:
    """picture (uint8) through a monotone curve per channel fitted towards target (uint8)."""
    sample, wanted = picture[::_TONE_SAMPLE, ::_TONE_SAMPLE], target[::_TONE_SAMPLE, ::_TONE_SAMPLE]
    curves = [
        _tone_curve(sample[..., c].ravel(), wanted[..., c].ravel().astype(np.float64))
        for c in range(3)
    ]
    table = np.clip(np.rint(np.stack(curves, axis=-1)), 0, 255).astype(np.uint8)
    return _cv2().LUT(picture, table.reshape(256, 1, 3))


def match_tones(picture: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """picture with the tones of reference (a registered picture of the same size).

    A curve per channel follows exposure, gamma and curves; a 3 x 3 colour matrix (fitted by
    least squares where neither picture clips) follows saturation and colour balance; a second
    curve per channel takes up what is left.
    """
    curved = curves_like(picture, reference)
    sample = curved[::_TONE_SAMPLE, ::_TONE_SAMPLE].reshape(-1, 3).astype(np.float64)
    wanted = reference[::_TONE_SAMPLE, ::_TONE_SAMPLE].reshape(-1, 3).astype(np.float64)
    usable = ((sample > 2) & (sample < 253)).all(1) & ((wanted > 2) & (wanted < 253)).all(1)
    if usable.sum() < 100:
        return curved
    design = np.c_[sample[usable], np.ones(int(usable.sum()))]
    try:  # normal equations: four unknowns per channel, tens of thousands of pixels
        colour = np.linalg.solve(design.T @ design, design.T @ wanted[usable])
    except np.linalg.LinAlgError:
        return curved
    mixed = _cv2().transform(curved, colour.T.astype(np.float32))  # rounds and saturates
    return curves_like(mixed, reference)


LOCAL_TONE_RADIUS = 0.04  # of the long side: local tone tools change brightness this smoothly
LOCAL_GAIN_MAX = 4.0  # a local gain is at most this (or its inverse): beyond, clipped detail
LOCAL_LEVELS_RADIUS = 0.02  # of the long side: local levels the coarse evidence sets aside


def local_gain(picture: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """picture (uint8 HxWx3) with a smooth gain that brings its local brightness, averaged
    over LOCAL_TONE_RADIUS, to reference's: what a graduated or radial filter, dehaze or a
    shadows slider changed. Fine structure is left as it is, so another shot stays apart."""
    cv2 = _cv2()
    height, width = picture.shape[:2]
    # brightness this smooth is measured on the pictures shrunk 8 times (8 times cheaper)
    small = (max(1, width // 8), max(1, height // 8))
    sigma = LOCAL_TONE_RADIUS * max(small)
    means = [
        cv2.GaussianBlur(
            cv2.resize(
                cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), small, interpolation=cv2.INTER_AREA
            ).astype(np.float32),
            (0, 0),
            sigma,
        )
        + 4.0
        for p in (picture, reference)
    ]
    gain = np.clip(means[1] / means[0], 1 / LOCAL_GAIN_MAX, LOCAL_GAIN_MAX)
    gain = cv2.resize(gain, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(picture * gain[..., None] + 0.5, 0, 255).astype(np.uint8)


def coarse_step(size: str) -> int:
    """How many times a pair at this iNaturalist size is shrunk for the coarse evidence: to
    about the same pixels as a large upload at a quarter, where the verdict was calibrated."""
    return max(1, round(COARSE_STEP * INAT_PIXELS.get(size, 1024) / INAT_PIXELS["large"]))


PARTS = 4  # the worst part of a coarse comparison is one of PARTS x PARTS, less the corners


def coarse_evidence(
    first: np.ndarray, second: np.ndarray, step: int = COARSE_STEP, levelled: bool = False
) -> tuple[float, float] | None:
    """The score of two lined-up pictures shrunk step times, and of their worst part;
    None when too small. Sharpening, clarity, noise reduction and recompression change fine
    detail, which shrinking averages away, and every part alike; another frame of a burst
    differs where its subject moved, at every size. levelled: read with second's local
    levels brought to first's (local_levels), which leaves structure alone."""
    height, width = first.shape[:2]
    size = (width // step, height // step)
    if min(size) < PARTS * SSIM_TILE:
        return None
    cv2 = _cv2()
    small, other = (cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in (first, second))
    if levelled:
        other = local_levels(other, small)
    return _parts(ssim_tiles(small, other).mean(axis=2))


def local_levels(picture: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """picture (uint8 HxWx3) with each channel's local mean and contrast, over
    LOCAL_LEVELS_RADIUS, brought to reference's: what local tone tools (graduated filters,
    clarity, dehaze) change. The structure within is left as it is: a moved subject stays."""
    cv2 = _cv2()
    sigma = LOCAL_LEVELS_RADIUS * max(picture.shape[:2])

    def levels(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = p.astype(np.float32)
        mean = cv2.GaussianBlur(values, (0, 0), sigma)
        spread = cv2.GaussianBlur(values * values, (0, 0), sigma) - mean * mean
        return mean, np.sqrt(np.maximum(spread, 1.0))

    (mean, spread), (ref_mean, ref_spread) = levels(picture), levels(reference)
    scaled = (picture - mean) * np.clip(ref_spread / spread, 1 / LOCAL_GAIN_MAX, LOCAL_GAIN_MAX)
    return np.clip(scaled + ref_mean + 0.5, 0, 255).astype(np.uint8)


def _parts(tiles: np.ndarray) -> tuple[float, float]:
    """The mean of a coarse tile score map, and of its worst part (corners left out)."""
    rows = np.array_split(np.arange(tiles.shape[0]), PARTS)
    cols = np.array_split(np.arange(tiles.shape[1]), PARTS)
    corners = {(0, 0), (0, PARTS - 1), (PARTS - 1, 0), (PARTS - 1, PARTS - 1)}
    worst = min(
        float(tiles[np.ix_(r, c)].mean())
        for y, r in enumerate(rows)
        for x, c in enumerate(cols)
        if (y, x) not in corners  # where watermarks go, and seldom the subject
    )
    return float(tiles.mean()), worst


# ---------------------------------------------------------------------------
# 9d. Similarity: overlays and frames
#    What an upload shows that the photo has no counterpart for, left out of the scores or
#    cut off before the upload is lined up again: overlays along an edge (overlay_box;
#    translucent ones by their shade, structure_tiles; a solid band's empty stretch by its
#    flat tiles, flat_tiles), marks inside the picture by the pixels they add (mark_tiles:
#    a logo, text, a circle drawn round the subject), frames past the photo's edges, square
#    to it or turned by quarter turns (frame_past_edges), or beside an upright correction
#    (frame_past_bent_edges), and the canvas round a picture turned by any angle, which is
#    turned back (turned_on_canvas); picture_in_frame picks which, and register_framed lines
#    the picture inside up again.
# ---------------------------------------------------------------------------


OVERLAY_LINE = 0.5  # a line of SSIM tiles scoring below this along an edge: covered
OVERLAY_SHARE = 0.8  # ... when this share of its tiles score below OVERLAY_TILE
OVERLAY_TILE = 0.6
OVERLAY_MIN = 0.03  # covered fractions below this are the resampled edges, not an overlay
OVERLAY_MAX = 0.3  # more than this covered: not left out (too little of the picture is left)
OVERLAY_SHADE = 20.0  # grey levels a tile of a translucent band stays apart after tone matching
OVERLAY_PLAIN = 1.0  # grey levels: an upload's tile spread less than this is one flat colour


OVERLAY_TILE_SIDE = 2 * SSIM_TILE  # pixels: the tiles structure_tiles compares
# Marks inside the picture (a logo, a sticker, text): regions of tiles with no counterpart.
MARK_TILES = 4  # regions of fewer tiles are noise, not a mark
MARK_DETAIL = 10.0  # grey levels: a region flatter than this in the upload shows no mark
MARK_REACH = 0.08  # of the longer side: how far a subject may move between frames of a burst
MARK_FOUND = 0.5  # correlation: the region found this well nearby moved, and is no mark
MARK_MAX = 0.2  # more of the picture than this covered by marks: not left out
MARK_EDGE = 0.8  # a tile beside a mark scoring below this holds its soft edge
MARK_APART = 24  # grey levels: a mark's pixels differ from the photo's by more than this


def _grey_tiles(picture: np.ndarray, dtype: type) -> np.ndarray:
    """picture (HxWx3 uint8) in grey, cut into the whole tiles of OVERLAY_TILE_SIDE pixels
    the overlay checks read (rows x side x cols x side)."""
    side = OVERLAY_TILE_SIDE
    rows, cols = picture.shape[0] // side, picture.shape[1] // side
    if rows == 0 or cols == 0:  # a strip thinner than a tile: no tile (OpenCV wants pixels)
        return np.zeros((rows, side, cols, side), dtype)
    grey = _grey(picture[: rows * side, : cols * side]).astype(dtype)
    return grey.reshape(rows, side, cols, side)


def structure_tiles(
    first: np.ndarray, second: np.ndarray, toned: np.ndarray | None = None
) -> np.ndarray:
    """How alike the structure of two lined-up pictures (HxWx3 uint8) is in each tile of
    OVERLAY_TILE_SIDE pixels: SSIM's structure term on grey levels, near 0 where one shows
    something the other does not (a band over detail, text), whatever the tones; the tones
    are left out, so a tone curve cannot make a dark band look like the picture under it.

    toned (second with first's tones as a whole, match_tones): its tiles that stay more
    than OVERLAY_SHADE levels from first's count 0 as well. A translucent band keeps the
    structure of what it covers (flat sky, detail at a fraction of its contrast), not its
    shade."""
    side = OVERLAY_TILE_SIDE
    rows, cols = first.shape[0] // side, first.shape[1] // side
    if rows == 0 or cols == 0:
        return np.ones((max(rows, 1), max(cols, 1)))
    grey = [
        _grey_tiles(p, np.float64) for p in (first, second, *([] if toned is None else [toned]))
    ]

    def tile_mean(values: np.ndarray) -> np.ndarray:
        return values.mean(axis=(1, 3))

    mean_a, mean_b = tile_mean(grey[0]), tile_mean(grey[1])
    var_a = tile_mean(grey[0] ** 2) - mean_a**2
    var_b = tile_mean(grey[1] ** 2) - mean_b**2
    cov = tile_mean(grey[0] * grey[1]) - mean_a * mean_b
    c = (0.01 * 255) ** 2  # flat against flat counts as alike
    alike = (2 * cov + c) / (var_a + var_b + c)
    if toned is None:
        return alike
    return np.where(np.abs(tile_mean(grey[2]) - mean_a) > OVERLAY_SHADE, 0.0, alike)


def flat_tiles(picture: np.ndarray) -> np.ndarray:
    """Which tiles of structure_tiles' grid are one flat colour in picture (HxWx3 uint8): the
    empty stretch of a solid band, where flat against flat scores as alike."""
    return _grey_tiles(picture, np.float32).std(axis=(1, 3)) < OVERLAY_PLAIN


def overlay_box(
    tiles: np.ndarray, flat: np.ndarray | None = None
) -> tuple[int, int, int, int] | None:
    """The tiles (top, bottom, left, right; rows and columns of a tile score map) left when
    lines of tiles with no counterpart along the edges are cut: a caption band, a frame on
    one, two or four sides, a viewer's bars. None when nothing, or too much, is covered.

    Only whole lines along an edge count: a subject that moved between two frames of a
    burst changes a region, never a line across the picture. flat (flat_tiles of the
    upload): a line whose tiles are covered or flat is cut too, when a covered line lies
    deeper (a solid band's empty stretch over a plain part of the photo).
    """
    rows, cols = tiles.shape
    low = tiles < OVERLAY_TILE
    flat = np.zeros_like(low) if flat is None else flat[:rows, :cols]

    def depth(lines: np.ndarray, busy: np.ndarray, plain: np.ndarray, most: int) -> int:
        k = found = 0
        while k < most:
            if lines[k].mean() < OVERLAY_LINE and busy[k].mean() >= OVERLAY_SHARE:
                found = k + 1
            elif (busy[k] | plain[k]).mean() < OVERLAY_SHARE:
                break
            k += 1
        return found

    top = depth(tiles, low, flat, rows // 3)
    bottom = rows - depth(tiles[::-1], low[::-1], flat[::-1], rows // 3)
    left = depth(tiles.T, low.T, flat.T, cols // 3)
    right = cols - depth(tiles.T[::-1], low.T[::-1], flat.T[::-1], cols // 3)
    covered = 1 - (bottom - top) * (right - left) / (rows * cols)
    if covered < OVERLAY_MIN or covered > OVERLAY_MAX:
        return None
    return top, bottom, left, right


def mark_tiles(region: np.ndarray, upright: np.ndarray) -> np.ndarray | None:
    """The tiles (a bool map like structure_tiles') of marks added inside the upload: a logo,
    a sticker, a line of text; None when there are none, or too many to leave out.

    A mark is a region of tiles whose pixels that differ from the photo's nothing in the
    photo around it resembles (those pixels, not the region's bounding box: a circle drawn
    round the subject holds the subject). A subject that moved between two frames of a
    burst is found a little further on, so it is never a mark.
    """
    tiles = structure_tiles(region, upright)
    cv2 = _cv2()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (tiles < OVERLAY_TILE).astype(np.uint8), connectivity=8
    )
    side = OVERLAY_TILE_SIDE
    grey = [cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) for p in (region, upright)]
    height, width = grey[0].shape
    reach = max(side, round(MARK_REACH * max(height, width)))
    marks = np.zeros(tiles.shape, bool)
    for k in range(1, count):
        x, y, w, h, tile_count = (int(v) for v in stats[k])
        if tile_count < MARK_TILES:
            continue
        left, top, right, bottom = x * side, y * side, (x + w) * side, (y + h) * side
        patch = grey[1][top:bottom, left:right]
        if float(patch.std()) < MARK_DETAIL:
            continue
        around = grey[0][
            max(0, top - reach) : min(height, bottom + reach),
            max(0, left - reach) : min(width, right + reach),
        ]
        # what the upload shows there that the photo does not: a drawn line, not the tile
        own = np.kron(labels[y : y + h, x : x + w] == k, np.ones((side, side), np.uint8))
        apart = cv2.absdiff(patch, grey[0][top:bottom, left:right]) > MARK_APART
        own &= cv2.dilate(apart.astype(np.uint8), np.ones((3, 3), np.uint8))
        if not own.any():
            continue
        found = cv2.matchTemplate(around, patch, cv2.TM_CCOEFF_NORMED, mask=own)
        if float(np.max(found, initial=-1.0, where=np.isfinite(found))) < MARK_FOUND:
            marks |= labels == k
    # A mark's soft edge (a shadow, the resampling around it) lowers the tiles next to it.
    grown = cv2.dilate(marks.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    marks |= grown & (tiles < MARK_EDGE)
    return marks if 0 < marks.mean() <= MARK_MAX else None


FRAME_LEVELS = 24  # grey levels: a frame's pixels lie this close to its colour, texture and all
FRAME_PLAIN = 0.9  # ... this share of them
FRAME_STEP = 0.5  # ... and this share of the photo's edge beside it differs from that colour
FRAME_TURN = 0.01  # radians: a frame is added square to the picture
BENT_FRAME_GAIN = 1.2  # ... or to an upright correction, whose homography fits this many more


def _near(pixels: np.ndarray, colour: np.ndarray | None = None) -> float:
    """The share of these pixels (int16, ... x 3) within FRAME_LEVELS of colour (by default
    their median colour)."""
    if colour is None:
        colour = np.median(pixels.reshape(-1, 3), axis=0)
    return float((np.abs(pixels - colour).max(axis=-1) <= FRAME_LEVELS).mean())


def _square(matrix: np.ndarray) -> bool:
    """Whether a similarity (2 x 3) turns by quarter turns only, within FRAME_TURN."""
    # a flip top to bottom is compared as a mirror turned half way: square all the same
    angle = math.atan2(matrix[1, 0], matrix[0, 0])
    return abs((angle + math.pi / 4) % (math.pi / 2) - math.pi / 4) <= FRAME_TURN


def frame_past_edges(
    upload: Image.Image, registration: Registration, local_size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """The box of upload (left, top, right, bottom) that shows the local picture, when all
    the upload shows past the picture's edges is a frame added on one to four sides (plain
    or textured, of a colour the picture's edge does not continue, or beside picture that is
    not plain); None otherwise. The upload may be turned by quarter turns, not straightened.

    Another shot framed a little differently reaches past the edges with more of the scene,
    which continues the picture across the line; a frame stops at it.
    """
    inverse = _cv2().invertAffineTransform(registration.matrix)
    right, bottom = local_size
    corners = np.array([[0, 0], [right, 0], [0, bottom], [right, bottom]], np.float64)
    seen = corners @ inverse[:, :2].T + inverse[:, 2]
    return _framed_inside(upload, seen)


CANVAS_KEPT = 0.3  # of a picture turned on a canvas: the box inside its outline keeps this
CANVAS_FILLED = 0.97  # ... whose outline, a turned rectangle, its pixels fill this much
CANVAS_LINES = 0.03  # ... of the short side: lines drawn across the canvas are thinner


def turned_on_canvas(
    upload: Image.Image, registration: Registration, local_size: tuple[int, int]
) -> tuple[Image.Image, float, np.ndarray] | None:
    """The picture upload shows turned on a canvas of one colour (the photo or a crop of it,
    turned as registration says), turned back and cut from it, the degrees it turned, and
    where it takes the upload's pixels (2 x 3, upload pixel -> its pixel)."""
    # A free rotation onto an enlarged canvas, or a tilted print on a plain table; another
    # shot shows more scene instead. Colours are read a little blurred: JPEG and grain
    # scatter a saturated canvas's pixels past FRAME_LEVELS.
    cv2 = _cv2()
    rgb = cv2.blur(np.asarray(upload), (5, 5)).astype(np.int16)
    height, width = rgb.shape[:2]
    # A turned picture leaves canvas in every corner, or in two at least where the upload
    # cuts the picture's corners off (framed_box cut bands of canvas from a download): the
    # canvas's colour is that of the corner most of the upload's edges are near.
    border = np.r_[rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]
    corners = rgb[[0, 0, -1, -1], [0, -1, 0, -1]]
    colour = max(corners, key=lambda corner: _near(border, corner))
    if (np.abs(corners - colour).max(axis=-1) <= FRAME_LEVELS).sum() < 2:
        return None
    canvas, shown = _canvas_of(rgb, colour)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(shown, 4, cv2.CV_32S)
    if count < 2 or canvas.mean() < OVERLAY_MIN:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    # the picture's outline: the box of its pixels turned as its sides run where they meet
    # the canvas, within 3 degrees of the keypoints' turn (a crop's sides are the photo's; an
    # upright correction turns them a little more), clipped by the upload's edges
    inverse = cv2.invertAffineTransform(registration.matrix)
    picture = (parts == biggest).astype(np.uint8)
    contour = max(cv2.findContours(picture, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=len)
    sides = contour.reshape(-1, 2)  # where the picture meets the canvas, not the upload's edge
    sides = sides[(sides.min(axis=1) > 2) & (sides[:, 0] < width - 3) & (sides[:, 1] < height - 3)]
    # the turn, in tenths of a degree, that puts most of the sides (a thousand of them at
    # most) within 1.5 px of the box they span
    turns = math.atan2(inverse[1, 0], inverse[0, 0]) + np.radians(np.linspace(-3, 3, 61))
    turn = float(turns[30])
    if len(sides):
        ends = sides[:: max(1, len(sides) // 1000)].astype(np.float64)
        cos, sin = np.cos(turns)[:, None], np.sin(turns)[:, None]
        across = (ends[:, 0] * cos + ends[:, 1] * sin, ends[:, 1] * cos - ends[:, 0] * sin)
        near = [np.minimum(w - w.min(1, keepdims=True), w.max(1, keepdims=True) - w) <= 1.5
                for w in across]  # fmt: skip
        turn = float(turns[int(np.argmax((near[0] | near[1]).mean(axis=1)))])
    undo = np.array([[math.cos(turn), math.sin(turn)], [-math.sin(turn), math.cos(turn)]])
    points = cv2.convexHull(contour).reshape(-1, 2) @ undo.T
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ undo
    shape = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(shape, np.round(outline * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    if stats[biggest, cv2.CC_STAT_AREA] < CANVAS_FILLED * shape.sum():
        return None  # not a rectangle: the canvas ran into the picture (a sky), or no canvas
    # inside the photo (through the homography of an upright correction), as a crop is
    in_photo = registration.put(outline)
    # the colours read blurred and the resampling each widen the outline by two pixels
    scale = math.sqrt(abs(np.linalg.det(registration.matrix[:, :2])))
    slack = EDGE_SLACK * max(local_size) + 4 * scale
    inside = ((in_photo >= -slack) & (in_photo <= np.array(local_size) + slack)).all()
    if not inside or not _canvas_stops(rgb, canvas, colour):
        return None
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    _, shown = cv2.intersectConvexConvex(outline.astype(np.float32), frame)
    if shown is None:
        return None
    # turned back (the upload is only read, never written), and what it shows cut out
    back = np.c_[undo, -np.array([x0, y0])]
    size = (math.ceil(x1 - x0), math.ceil(y1 - y0))
    straight = cv2.warpAffine(np.asarray(upload), back, size, flags=cv2.INTER_CUBIC)
    box = _box_inside(shown.reshape(-1, 2) @ undo.T - (x0, y0), CANVAS_KEPT)
    if box is None:
        return None
    into = back - np.c_[np.zeros((2, 2)), box[:2]]
    return Image.fromarray(straight).crop(box), -math.degrees(turn), into


def _canvas_of(rgb: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The canvas in rgb (a mask: pixels within FRAME_LEVELS of colour joined to its edges)
    and what it shows besides (uint8, 1 there), less lines drawn across the canvas."""
    cv2 = _cv2()
    near = (np.abs(rgb - colour).max(axis=-1) <= FRAME_LEVELS).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    edges = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    canvas = np.isin(labels, edges[edges > 0])
    # An arrow or a line of text drawn across the canvas onto the picture joins them: lines
    # thinner than CANVAS_LINES of the short side are opened away.
    thin = max(3, round(CANVAS_LINES * min(canvas.shape))) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thin, thin))
    return canvas, cv2.morphologyEx((~canvas).astype(np.uint8), cv2.MORPH_OPEN, kernel)


def _canvas_stops(rgb: np.ndarray, canvas: np.ndarray, colour: np.ndarray) -> bool:
    """Whether the picture's line beside a canvas (a mask of rgb, all of its colour) differs
    from that colour for at least half its pixels: the scene does not run on into it."""
    cv2 = _cv2()
    picture = (~canvas).astype(np.uint8)
    trim = np.ones((5, 5), np.uint8)  # resampling blurs the line between canvas and picture
    line = (cv2.erode(picture, trim) == 1) & (cv2.erode(picture, np.ones((9, 9), np.uint8)) == 0)
    if not line.any():
        return False
    return _near(rgb[line], colour) <= 1 - FRAME_STEP


def _box_inside(polygon: np.ndarray, kept: float) -> tuple[int, int, int, int] | None:
    """The largest upright box inside a convex polygon (its corners in order), of one of a
    few shapes from 1:3 to 3:1 or the polygon's own, about its centre; None when it keeps
    less than kept of the polygon's area."""
    cv2 = _cv2()
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    moments = cv2.moments(contour)
    if moments["m00"] <= 0:
        return None
    centre = np.array([moments["m10"], moments["m01"]]) / moments["m00"]

    def fits(half: np.ndarray) -> bool:
        return all(
            cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= 2
            for x in (centre[0] - half[0], centre[0] + half[0])
            for y in (centre[1] - half[1], centre[1] + half[1])
        )

    best = (0.0, centre, centre)
    width, height = np.ptp(polygon, axis=0)
    for aspect in np.r_[np.geomspace(1 / 3, 3, 17), width / max(height, 1.0)]:
        unit = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
        low, high = 0.0, float(max(width, height))
        for _ in range(16):  # a box of size 0 fits; it grows till a corner leaves
            middle = (low + high) / 2
            low, high = (middle, high) if fits(unit * middle) else (low, middle)
        area = 4 * low * low
        best = max(best, (area, centre - unit * low, centre + unit * low), key=lambda b: b[0])
    area, (left, top), (right, bottom) = best
    if area < kept * moments["m00"]:
        return None
    return math.ceil(left), math.ceil(top), math.floor(right), math.floor(bottom)


def frame_past_bent_edges(
    upload: Image.Image, homography: np.ndarray, local_size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """frame_past_edges for an upright correction, lined up by a homography (upload to
    local): the frame was added square to the corrected picture, which the editor cropped
    inside the photo's bent outline, so each frame is followed inwards to where it ends."""
    right, bottom = local_size
    corners = np.array([[[0, 0]], [[right, 0]], [[0, bottom]], [[right, bottom]]], np.float64)
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = _cv2().perspectiveTransform(
        corners, np.linalg.inv(homography)
    )[:, 0]
    if min(x1, x3) <= max(x0, x2) or min(y2, y3) <= max(y0, y1):
        return None  # turned: the upright correction is looked for unturned only
    # the box the bent outline surely holds, less the outline's own error: past it, the
    # upload shows a frame or nothing (a strip followed inwards to where the frame ends)
    width, height = upload.size
    slack_x, slack_y = BENT_SLACK * width, BENT_SLACK * height
    left, top = max(0.0, max(x0, x2) - slack_x), max(0.0, max(y0, y1) - slack_y)
    right, bottom = min(width, min(x1, x3) + slack_x), min(height, min(y2, y3) + slack_y)
    inner = np.array([[left, top], [right, bottom]])
    return _framed_inside(upload, inner, inwards=True)


def _framed_inside(
    upload: Image.Image, seen: np.ndarray, inwards: bool = False
) -> tuple[int, int, int, int] | None:
    """The box inside the frames of upload past the bounding box of seen (where the local
    picture's corners lie in it), when each strip there is a frame; inwards: each strip is
    also followed inwards, line by line, while the lines keep the frame's colour."""
    rgb = np.asarray(upload).astype(np.int16)
    (x0, y0), (x1, y1) = seen.min(axis=0), seen.max(axis=0)
    height, width = rgb.shape[:2]
    box = [max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1))]
    left, top, right, bottom = box
    if right - left < width / 2 or bottom - top < height / 2:
        return None
    trim = 2  # pixels: resampling blurs the line between frame and picture
    if inwards:  # the lines (rows or columns, from the edge inwards) of each side
        for k, (lines, depth) in enumerate(
            ((rgb.transpose(1, 0, 2), left), (rgb, top),
             (rgb.transpose(1, 0, 2)[::-1], width - right), (rgb[::-1], height - bottom))
        ):  # fmt: skip
            if depth <= 2 * trim:
                continue
            colour = np.median(lines[: depth - trim].reshape(-1, 3), axis=0)
            limit = (width if k % 2 == 0 else height) // 4
            while depth < limit and _near(lines[depth], colour) >= FRAME_PLAIN:
                depth += 1
            box[k] = depth if k < 2 else (width if k == 2 else height) - depth
        left, top, right, bottom = box
    depth = {"top": top, "bottom": height - bottom, "left": left, "right": width - right}
    beyond = {  # the frame beyond each edge, the picture's line beside it, and as deep inside
        "top": (rgb[: top - trim], rgb[top + trim], rgb[top + trim : 2 * top]),
        "bottom": (
            rgb[bottom + trim :],
            rgb[bottom - trim - 1],
            rgb[2 * bottom - height : bottom - trim],
        ),
        "left": (rgb[:, : left - trim], rgb[:, left + trim], rgb[:, left + trim : 2 * left]),
        "right": (
            rgb[:, right + trim :],
            rgb[:, right - trim - 1],
            rgb[:, 2 * right - width : right - trim],
        ),
    }
    framed = [beyond[edge] for edge, pixels in depth.items() if pixels > 2 * trim]
    if not framed:
        return None
    for frame, line, inside in framed:
        colour = np.median(frame.reshape(-1, 3), axis=0)
        if _near(frame, colour) < FRAME_PLAIN:
            return None
        # The scene continues across the line where the photo's edge keeps the strip's colour
        # and the photo is plain there too (a sky); beside varied picture a plain strip stops.
        if _near(line, colour) > 1 - FRAME_STEP and _near(inside) >= FRAME_PLAIN:
            return None
    return (
        left + trim if left else 0,
        top + trim if top else 0,
        right - trim if right < width else width,
        bottom - trim if bottom < height else height,
    )


def register_framed(
    local: Image.Image, local_features: Features, upload: Image.Image, upload_features: Features
) -> tuple[Registration | None, Image.Image, Features, float]:
    """register_any, and where a frame or a canvas holds the picture (picture_in_frame), that
    picture registered again; and the degrees it was turned back by (0 but on a canvas)."""
    registration, bent = register_tried(local_features, upload_features)
    if registration is None:
        return registration, upload, upload_features, 0.0
    found = picture_in_frame(upload, registration, bent, local)
    if found is None:
        return registration, upload, upload_features, 0.0
    inside, turn, into = found
    features = find_upload_features(inside)
    again = register_any(local_features, features)
    if again is None or not again.lined_up:
        if registration.lined_up:
            return registration, upload, upload_features, 0.0  # the placement found stands
        # A small, soft picture found again has fewer keypoints than the whole upload had: the
        # matches that lay inside it are carried over.
        again = _carried(registration, into, inside.size, local_features) or again
    return again, inside, features, turn


def _carried(
    registration: Registration, into: np.ndarray, size: tuple[int, int], local: Features
) -> Registration | None:
    """registration's inliers that lie inside a picture cut from the upload (into: upload pixel
    -> its pixel; size: its size), fitted again as that picture's registration."""
    source = registration.inliers[:, 0] @ into[:, :2].T + into[:, 2]
    keep = ((source >= 0) & (source <= size)).all(axis=1)
    if keep.sum() < MIN_INLIERS:
        return None
    # the matches that did not fit are counted as lying inside in the same share
    count = round(keep.sum() * registration.matches / len(registration.inliers))
    matches = (source[keep].astype(np.float32), registration.inliers[keep, 1], count)
    empty = Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), size)
    return register(local, empty, matches)


def picture_in_frame(
    upload: Image.Image,
    registration: Registration,
    bent: Registration | None,
    local: Image.Image,
) -> tuple[Image.Image, float, np.ndarray] | None:
    """The picture inside a frame past the local picture's edges or on a canvas, the degrees
    it was turned back by and where it takes the upload's pixels (as turned_on_canvas says);
    None where the upload shows no frame or canvas."""
    # Past the edges: a frame square to the picture (frame_past_edges) or, where a
    # homography fits many more matches (an upright correction), square to its outline
    # (frame_past_bent_edges); a canvas round a turned picture (turned_on_canvas).
    local_size = local.size
    if registration.lined_up:
        # a homography that fits many more reaches past the edges (register_tried), or a
        # crop turned onto a canvas lies inside the photo, canvas and all
        if bent is not None:
            box = frame_past_bent_edges(upload, bent.homography, local_size)
            return None if box is None else _cut(upload, box)
        if registration.homography is not None or _square(registration.matrix):
            return None
        if not _corners_unlike(upload, registration, local):
            return None  # the photo shows what the corners do: a straightened crop
        return turned_on_canvas(upload, registration, local_size)
    if registration.overshoot <= EDGE_SLACK:
        return None
    trusted = registration
    if bent is not None and len(bent.inliers) > BENT_FRAME_GAIN * len(registration.inliers):
        trusted = bent
    square = _square(registration.matrix)
    on_canvas = None  # looked for where the keypoints would line the upload up but for it
    if (
        not square
        and len(trusted.inliers) >= MIN_INLIERS
        and _corners_unlike(upload, trusted, local)
    ):
        on_canvas = turned_on_canvas(upload, trusted, local_size)
    if on_canvas is not None:
        return on_canvas
    box = frame_past_edges(upload, registration, local_size) if square else None
    if box is None and trusted is bent:
        box = frame_past_bent_edges(upload, bent.homography, local_size)
    return None if box is None else _cut(upload, box)


def _cut(
    upload: Image.Image, box: tuple[int, int, int, int]
) -> tuple[Image.Image, float, np.ndarray]:
    """upload cropped to box, as picture_in_frame gives it: not turned, shifted by its corner."""
    return upload.crop(box), 0.0, np.array([[1.0, 0.0, -box[0]], [0.0, 1.0, -box[1]]])


def _corners_unlike(upload: Image.Image, registration: Registration, local: Image.Image) -> bool:
    """Whether two of the upload's corners at least lie past the local picture's edges or
    differ in colour (by FRAME_LEVELS, read over 5 x 5 pixels) from what it shows there."""
    width, height = upload.size
    corners = np.array([[2, 2], [width - 3, 2], [2, height - 3], [width - 3, height - 3]])
    put = np.round(registration.put(corners.astype(np.float64))).astype(int)
    past = ((put < 2) | (put > np.array(local.size) - 3)).any(axis=1)
    there = np.clip(put, 2, np.array(local.size) - 3)

    def colours(picture: np.ndarray, points: np.ndarray) -> np.ndarray:
        return np.array([picture[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0)
                         for x, y in points])  # fmt: skip

    shown, seen = colours(np.asarray(upload), corners), colours(np.asarray(local), there)
    return int((past | (np.abs(shown - seen).max(axis=-1) > FRAME_LEVELS)).sum()) >= 2


# ---------------------------------------------------------------------------
# 9e. Similarity: comparing a pair and the verdict
#    compare_pictures: registration, tones and both scores of one pair, through a smooth
#    correction or a local warp where one explains what moved (compare_placed; a pair
#    placed by correlation where asked: correlated, correlated_placement,
#    compare_correlated); the cheap gate
#    (likely_same_pictures); overlays along an edge left out (overlay_box);
#    evidence_grounds, the calibrated verdict on a pair below the threshold, where a crop
#    and its whole frame are never rivals and a small lead holds where the worst part
#    leads too (lead, leads_enough); settled_uploads, which uploads the first,
#    smaller size decides (never a crop while a bigger view of its photo is open, nor a
#    pair lined up on a few points through a smooth correction: held_back, still_held);
#    which uploads some photo lined up with, and how well, or nearly lined up with
#    (lined_up_uploads, best_scores, nearly_lined_up), for what the larger size asks again.
# ---------------------------------------------------------------------------


# The verdict below the threshold, calibrated on tests/make_matching_set.py's labelled sets
# (python tests/bench_verdict.py SET prints the evidence of true and closest wrong pairs).
SCORE_FLOOR = 0.85  # the score a pair below the threshold needs at least
COARSE_SURE = 0.92  # ... and the coarse score, where export filters do not reach
PART_SURE = 0.83  # ... and its worst part: where another frame's subject moved, it is not
PART_SURE_LEVELLED = 0.86  # ... or both read with local tones set aside (issue 25)
MIN_INLIER_SHARE = 0.6  # ... and this share of its keypoint matches fitting one geometry
VERDICT_MARGIN = 0.02  # ... and a score this far above every other photo and upload near it
# ... or above at all, its worst part this far above theirs: grain and blur press every
# frame of a burst towards one score, where the frame that moved still differs in a part
PART_LEAD = 0.03


def coarse_sure(coarse: float | None, worst: float | None, part: float = PART_SURE) -> bool:
    """Whether a coarse score and its worst part reach the verdict's (the worst part, read
    with local tones set aside, must reach part)."""
    return coarse is not None and worst is not None and coarse >= COARSE_SURE and worst >= part


def compare_pictures(
    local: Image.Image,
    local_features: Features,
    upload: Image.Image,
    upload_features: Features,
    score_pair: ScoreFunction = ssim_score,
    sharper: Callable[[], Image.Image | None] | None = None,
    named: bool = False,
    step: int = COARSE_STEP,
    correlated: bool = False,
) -> Comparison:
    """Register upload onto local by keypoints, then score it: SSIM after tone matching, and
    the coarse evidence the verdict reads (coarse_evidence, shrunk step times).

    local is the upright local picture the features were found in; sharper, if given, returns
    it at full resolution for a crop so tight that local has fewer pixels there than the
    upload. A pair whose keypoints do not line up is marked prefiltered, with a cheap score,
    unless named (the upload's original file name is the local file's): that one is always
    scored in full, by correlation. correlated: such a pair is placed by correlation instead
    (an upload no photo's keypoints lined up with) and compared as a lined-up one.
    """
    registration, upload, upload_features, turn = register_framed(
        local, local_features, upload, upload_features
    )
    if registration is not None and registration.lined_up:
        placement = place_upload(registration, upload.size, local.size)
        keypoints = (registration, local_features, upload_features)
        return compare_placed(local, upload, placement, score_pair, sharper, step, keypoints, turn)
    if few_features(local_features, upload_features):
        return compare_by_correlation(local, upload, score_pair, gate=not named)
    if correlated and (placement := correlated_placement(local, upload)) is not None:
        return compare_placed(local, upload, placement, score_pair, sharper, step)
    if named:
        return compare_by_correlation(local, upload, score_pair, gate=False)
    return quick_comparison(local, upload, score_pair, registration)


def compare_placed(
    local: Image.Image,
    upload: Image.Image,
    placement: Placement,
    score_pair: ScoreFunction,
    sharper: Callable[[], Image.Image | None] | None,
    step: int,
    keypoints: tuple[Registration, Features, Features] | None = None,
    turn: float = 0.0,
) -> Comparison:
    """compare_pictures for a pair placed by its keypoints (their registration and both
    pictures' features), or by correlation where keypoints is None; turn: a canvas's."""
    registration, local_features, upload_features = keypoints or (None, None, None)
    local_size = local.size
    if sharper is not None and placement.scale < 1 and (finer := sharper()) is not None:
        placement = placement.resized(finer.width / local.width, finer.height / local.height)
        local = finer
    upright = np.asarray(turned(upload, placement.alignment.turns))
    size = (upright.shape[1], upright.shape[0])
    region = region_of(local, placement, size)
    refined = refine_placement(placement, region, upright, local.size)
    # The whole frame, unturned, is exact as it is: the upload's size was rounded from it.
    whole = placement.box == (0.0, 0.0, float(local.width), float(local.height))
    if refined.placement is not None and not whole:
        placement = refined.placement
        region = region_of(local, placement, size)
    misfit, smooth = refined.misfit, None
    if registration is None:  # placed by correlation: no keypoints to start a homography
        smooth = smooth_correction(region, upright, max(misfit, SMOOTH_FROM))
    elif registration.homography is not None and local.size == local_size:
        # Bent (a strong upright correction): lined up through the keypoints' homography,
        # whatever a similarity left; what is left must be explained as a similarity's
        # misfit would be (at least BENT_MISFIT).
        region, smooth = _smooth_through(local, registration.homography, placement, upright, misfit)
    elif misfit > SMOOTH_FROM or registration.bent:
        smooth = smooth_correction(region, upright, max(misfit, SMOOTH_FROM))
        if smooth is None and misfit > BENT_MISFIT and local.size == local_size:
            restart = _homography_start(local, local_features, upload, upload_features, upright)
            if restart is not None:
                registration, placement, smooth = restart
    if smooth is not None:  # a lens or perspective correction: compared through it
        region, misfit = smooth.region, smooth.residual
        if registration is not None:
            registration = _fitting_the_bend(local_features, upload_features, registration)
    inliers, matched = (0, 0) if registration is None else registration.counts
    evidence: dict[str, Any] = {"inliers": inliers, "misfit": misfit, "matches": matched}
    if registration is None:
        evidence["correlated"] = True
    if smooth is not None and smooth.reach >= 1.0:
        evidence["smooth"] = round(smooth.reach, 1)
    score, toned_best, read, pair = _read_lined_up(region, upright, score_pair, step)
    # a local warp may be what keeps a pair alike as a whole from the verdict: a part that
    # differs or moved, as where an editor pushed a region
    overall = read["coarse"] is not None and read["coarse"] >= COARSE_SURE
    in_parts = coarse_sure(read["coarse"], read["worst_part"]) and misfit <= MAX_MISFIT
    worth = overall and not in_parts and pair[0].shape == region.shape
    if worth and (warp := local_warp(*pair)) is not None:  # a local warp: compared through it
        warped = warp.applied(region)
        again = _read_lined_up(warped, upright, score_pair, step)
        moved = refine_placement(placement, warped, upright, local.size).misfit
        if moved <= MAX_MISFIT and coarse_sure(again[2]["coarse"], again[2]["worst_part"]):
            score, toned_best, read, _ = again
            evidence.update(misfit=moved, warped=round(warp.share, 3))
    # a picture turned back from a canvas is reported as turned (the user straightened it)
    alignment = placement.alignment
    if turn:
        alignment = dataclasses.replace(alignment, angle=alignment.angle + turn)
    return Comparison(score, alignment, tones=toned_best, coarse_step=step, **read, **evidence)


def _smooth_through(
    local: Image.Image,
    homography: np.ndarray,
    placement: Placement,
    upright: np.ndarray,
    misfit: float,
    within: float | None = None,
) -> tuple[np.ndarray, SmoothFit | None]:
    """The region local shows through a keypoints' homography (upload pixel -> local pixel),
    and its smooth correction, whose reach counts the homography's bend beyond the
    placement's similarity (None: the correction does not explain the misfit, or one fit of
    the field to the patches measured through the homography leaves more than within, pixels,
    in the median)."""
    size = (upright.shape[1], upright.shape[0])
    upload_size = size[::-1] if placement.alignment.turns % 2 else size
    bend = homography @ _upright_to_upload(placement.alignment.turns, *upload_size)
    region = region_through(local, bend, size)
    if within is not None:  # one fit without resampling: a strong lens left by the homography
        points, shifts = _patch_shifts(region, upright, SMOOTH_GRID, SMOOTH_PATCH, 1 / 3)
        if len(shifts) < 16:
            return region, None
        left = _smooth_at(_fit_smooth(points, shifts, size), points, size) - shifts
        if float(np.median(np.linalg.norm(left, axis=1))) > within:
            return region, None
    smooth = smooth_correction(region, upright, max(misfit, BENT_MISFIT), through=True)
    if smooth is None:
        return region, None
    spots = np.array([[[x, y]] for x in (0, size[0]) for y in (0, size[1])], np.float64)
    bent = cv2_perspective(spots, bend) - (spots[:, 0] @ placement.matrix[:, :2].T
                                           + placement.matrix[:, 2])  # fmt: skip
    reach = float(np.linalg.norm(bent, axis=1).max()) / placement.scale
    return region, dataclasses.replace(smooth, reach=max(smooth.reach, reach))


START_WITHIN = 2 * SMOOTH_NOISE  # pixels: where an editor's upright correction, seen through
# the keypoints' homography, leaves the parts once the field is fitted to them (the median)


def _homography_start(
    local: Image.Image,
    local_features: Features,
    upload: Image.Image,
    upload_features: Features,
    upright: np.ndarray,
) -> tuple[Registration, Placement, SmoothFit] | None:
    """The keypoints' homography, its placement and the smooth correction through it, for an
    upload a similarity lined up loosely (a sideways upright correction); None otherwise."""
    # The patches measured through the similarity lay too far off to start the field. A
    # second start is a second chance for another shot too: the field must explain the
    # misfit to the patches' own precision (SMOOTH_NOISE, as a misfit of BENT_MISFIT asks),
    # and is fitted only where one fit of it to the parts measured through the homography
    # leaves them within START_WITHIN (another shot's parallax leaves more, a lens left by
    # the homography does not; the field costs a fifth of a second at large).
    bent = register_bent(local_features, upload_features)
    if bent is None or not bent.lined_up or bent.homography is None:
        return None
    placement = place_upload(bent, upload.size, local.size)
    smooth = _smooth_through(local, bent.homography, placement, upright, 0.0, START_WITHIN)[1]
    return None if smooth is None else (bent, placement, smooth)


def _read_lined_up(
    region: np.ndarray, upright: np.ndarray, score_pair: ScoreFunction, step: int
) -> tuple[float, bool, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """A lined-up pair's score, whether its tones were adjusted, what else is read from it
    (the covered share and the coarse evidence, as Comparison names them) and the pair
    the scores were read from."""
    score, pair, toned_best, covered = _score_uncovered(region, upright, score_pair)
    coarse, worst = coarse_evidence(*pair, step=step) or (None, None)
    # read with local tones set aside only where the plain reading does not decide
    plain = coarse is None or coarse_sure(coarse, worst)
    levelled = None if plain else coarse_evidence(*pair, step=step, levelled=True)
    read = {"coarse": coarse, "worst_part": worst, "levelled": levelled, "covered": covered}
    return score, toned_best, read, pair


def _fitting_the_bend(
    local_features: Features, upload_features: Features, registration: Registration
) -> Registration:
    """The registration whose own matches fit best, once a smooth correction was allowed
    for: a bent one (its homography's matches) rather than a similarity that left part out;
    a guided one counts its evidence on the ratio-test matches already."""
    if registration.bent or registration.fitted_matches is not None:
        return registration
    bent = register_bent(local_features, upload_features)
    if (
        bent is None
        or len(bent.inliers) * registration.matches <= len(registration.inliers) * bent.matches
    ):
        return registration
    return bent


def _score_uncovered(
    region: np.ndarray, upright: np.ndarray, score_pair: ScoreFunction
) -> tuple[float, tuple[np.ndarray, np.ndarray], bool, float]:
    """_best_tones of a lined-up pair, and the share of it an overlay covered (0: none). A
    band, a frame or a viewer's bars along an edge are left out of the tones fitted, the score
    and the parts, where that scores higher."""
    toned = match_tones(upright, region)
    score, pair, toned_best = _best_tones(region, upright, score_pair, toned)
    covered = 0.0
    tiles = structure_tiles(region, upright, toned) if score < SSIM_THRESHOLD else None
    if tiles is not None and (cut := overlay_box(tiles, flat_tiles(upright))):
        top, bottom, left, right = (k * OVERLAY_TILE_SIDE for k in cut)
        kept = region[top:bottom, left:right], upright[top:bottom, left:right]
        uncovered = _best_tones(*kept, score_pair)
        if uncovered[0] > score:
            score, pair, toned_best = uncovered
            covered = 1 - kept[0].size / region.size
            region, upright = kept
    # Marks are looked for in the upload as it came: a local tone matching can flatten them.
    if score < SSIM_THRESHOLD and (marks := mark_tiles(region, upright)) is not None:
        # The marks' tiles take the photo's own pixels, so they count as alike; the score is
        # then read back as the mean over the rest.
        side = OVERLAY_TILE_SIDE
        covers = np.zeros(pair[1].shape[:2], bool)
        covers[: marks.shape[0] * side, : marks.shape[1] * side] = marks.repeat(side, 0).repeat(
            side, 1
        )
        shown = np.where(covers[..., None], pair[0], pair[1])
        share = float(covers.mean())
        unmarked = (score_pair(pair[0], shown) - share) / (1 - share)
        if unmarked > score:
            score, pair = unmarked, (pair[0], shown)
            covered += share * (1 - covered)
    return score, pair, toned_best, round(covered, 3)


# A tone matching: (region, upright upload, the upload with the region's tones) -> the pair
# it scores.
ToneMatching = Callable[
    ["np.ndarray", "np.ndarray", "np.ndarray"], tuple["np.ndarray", "np.ndarray"]
]


def _best_tones(
    region: np.ndarray,
    upright: np.ndarray,
    score_pair: ScoreFunction,
    toned: np.ndarray | None = None,
) -> tuple[float, tuple[np.ndarray, np.ndarray], bool]:
    """The best score of a lined-up pair over the tone matchings tried, the pair it was read
    from, and whether the tones were adjusted for it.

    The upload with the local picture's tones recovers exposure, curves and saturation best;
    where the edit clipped shadows or highlights, or made the upload black and white, the
    local picture with the upload's tones (clipped, or grey, alike) does. toned: the upload
    with the region's tones (match_tones), when already made.
    """
    toned = match_tones(upright, region) if toned is None else toned
    change = float(np.abs(toned.astype(np.int16) - upright).mean())
    tried: list[ToneMatching] = [lambda r, u, t: (r, u)] if change < TONE_SURE else []
    if change >= TONE_MIN:
        tried.append(lambda r, u, t: (r, t))
        if np.mean((upright <= 1) | (upright >= 254)) >= CLIPPED_MIN:
            tried.append(lambda r, u, t: (curves_like(r, u), u))
        if is_grey(upright):  # a black-and-white upload: the local picture made grey alike
            tried.append(lambda r, u, t: (match_tones(r, u), u))
        # Local tone tools (graduated and radial filters, dehaze, shadows) change brightness
        # smoothly across the picture: the toned upload brought to the region's local levels.
        tried.append(lambda r, u, t: (r, local_gain(t, r)))
        # ... or brought to them first, then given the region's tones: across a strong
        # graduated filter one level stands for two, which a curve fitted first averages.
        tried.append(lambda r, u, t: (r, match_tones(local_gain(u, r), r)))
    best = _likely_best(tried, (region, upright, toned), score_pair)
    pair = tried[best](region, upright, toned)
    score = score_pair(*pair)
    return score, pair, change >= TONE_MIN and (change >= TONE_SURE or best > 0)


def _likely_best(
    tried: list[ToneMatching],
    pictures: tuple[np.ndarray, np.ndarray, np.ndarray],
    score_pair: ScoreFunction,
) -> int:
    """Which of several tone matchings of one pair scores best, each made and judged at half
    size (a quarter of the work): they differ in tones, which shrinking leaves as they are."""
    if len(tried) == 1:
        return 0
    if min(pictures[0].shape[:2]) >= TONE_JUDGED_FROM:
        cv2 = _cv2()
        size = (pictures[0].shape[1] // 2, pictures[0].shape[0] // 2)
        pictures = tuple(cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in pictures)
    return max(range(len(tried)), key=lambda k: (score_pair(*tried[k](*pictures)), k))


def quick_comparison(
    local: Image.Image,
    upload: Image.Image,
    score_pair: ScoreFunction,
    partial: Registration | None = None,
) -> Comparison:
    """A pair that is not the same picture: a cheap score of both at ALIGN_SIDE, for the log,
    with the inliers of the partial registration that did not line it up."""
    scale = ALIGN_SIDE / max(upload.size)
    size = (max(1, round(upload.width * scale)), max(1, round(upload.height * scale)))
    small = upload.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    quick = local.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    inliers = 0 if partial is None else len(partial.inliers)
    score = score_pair(np.asarray(quick), np.asarray(small))
    return Comparison(score, None, prefiltered=True, inliers=inliers)


def correlated(
    local: Image.Image, upload: Image.Image, side: int = ALIGN_SIDE
) -> tuple[Alignment, float]:
    """coarse_alignment of the pair at thumbnail size (side): the crop and quarter turn, and
    its normalised correlation."""
    scale = side / max(upload.size)
    upload_small = upload.resize(
        (max(1, round(upload.width * scale)), max(1, round(upload.height * scale))),
        Image.Resampling.BILINEAR,
    )
    return coarse_alignment(grayscale(local, side), upload_small)


CORRELATED_FIRST = 80  # pixels: a pair placed by correlation is first correlated this small


def correlated_placement(local: Image.Image, upload: Image.Image) -> Placement | None:
    """Where correlation puts the upright upload in local (a crop, unturned but for quarter
    turns), sharpened at its own size; None where the correlation stays below ALIGN_GATE."""
    rough, correlation = correlated(local, upload)
    if correlation < ALIGN_GATE:
        return None
    alignment = refine_alignment(local, upload, rough)
    upright = turned(upload, alignment.turns)
    left, top, right, bottom = alignment.box
    matrix = np.array([
        [(right - left) * local.width / upright.width, 0.0, left * local.width],
        [0.0, (bottom - top) * local.height / upright.height, top * local.height],
    ])  # fmt: skip
    return _placement_from(matrix, alignment.turns, upright.size, local.size)


def compare_correlated(
    local: Image.Image,
    upload: Image.Image,
    score_pair: ScoreFunction,
    sharper: Callable[[], Image.Image | None] | None = None,
    step: int = COARSE_STEP,
) -> Comparison:
    """compare_pictures for a pair whose keypoints are known not to line up, placed by
    correlation (correlated_placement); prefiltered, with a cheap score, where it is not."""
    placement = correlated_placement(local, upload)
    if placement is None:
        return quick_comparison(local, upload, score_pair)
    return compare_placed(local, upload, placement, score_pair, sharper, step)


def compare_by_correlation(
    local: Image.Image, upload: Image.Image, score_pair: ScoreFunction, gate: bool = True
) -> Comparison:
    """Pictures with too few keypoints (fog, a smooth sky): normalised correlation over crops
    and quarter turns on thumbnails, sharpened to a fraction of a pixel, then SSIM."""
    rough, correlation = correlated(local, upload)
    if gate and correlation < ALIGN_GATE:
        return quick_comparison(local, upload, score_pair)
    best = Comparison(-1.0)
    if rough.whole:
        whole = local.resize(upload.size, Image.Resampling.BILINEAR)
        best = Comparison(score_pair(np.asarray(whole), np.asarray(upload)))
    alignment = refine_alignment(local, upload, rough)
    upright = turned(upload, alignment.turns)
    left, top, right, bottom = alignment.box
    region = local.resize(
        upright.size,
        Image.Resampling.BILINEAR,
        box=(left * local.width, top * local.height, right * local.width, bottom * local.height),
    )
    aligned = Comparison(score_pair(np.asarray(region), np.asarray(upright)), alignment)
    return aligned if aligned.score > best.score else best


def likely_same_pictures(
    local: Image.Image, local_features: Features, upload: Image.Image, upload_features: Features
) -> bool:
    """The cheap test alone: could upload show (part of) local? Keypoints, else correlation."""
    registration = register_framed(local, local_features, upload, upload_features)[0]
    if registration is not None and registration.lined_up:
        return True
    if few_features(local_features, upload_features):
        return correlated(local, upload)[1] >= ALIGN_GATE
    return False


def few_features(local: Features, upload: Features) -> bool:
    """Pictures with too few keypoints to line up by (fog, a smooth sky): correlation then."""
    most = max(len(found.points) for found in (upload, *upload.coarser))
    return min(len(local.points), most) < FEW_FEATURES


Pairs = dict[tuple[int, int], Comparison]  # (photo index, candidate index) -> comparison
PairIndices = set[tuple[int, int]]  # (photo index, candidate index) pairs of one group


def best_scores(comparisons: Pairs) -> dict[int, float]:
    """Each candidate some photo lined up with, and its best score among those pairs."""
    best: dict[int, float] = {}
    for (_, j), found in comparisons.items():
        if not found.prefiltered:
            best[j] = max(best.get(j, 0.0), found.score)
    return best


def lined_up_uploads(comparisons: Pairs) -> set[int]:
    """The candidates some photo lined up with (a comparison not prefiltered)."""
    return set(best_scores(comparisons))


NEAR_INLIERS = MIN_INLIERS // 3  # a prefiltered pair with this many inliers nearly lined up


def nearly_lined_up(comparisons: Pairs) -> set[int]:
    """The candidates some photo nearly lined up with: too few of their keypoints to line up
    (a narrow crop of a soft background), some of them fitting one similarity."""
    return {
        j
        for (_, j), found in comparisons.items()
        if found.prefiltered and found.inliers >= NEAR_INLIERS
    }


def coarse_decided(found: Comparison) -> tuple[float, bool] | None:
    """The coarse score that takes a pair below the threshold, and whether it was read with
    local tones set aside; None when neither reading does. Local tone tools (graduated
    filters, dehaze, clarity at large radii) change levels a global tone curve cannot undo;
    set aside, a moved subject still differs, so the worst part must then reach more."""
    if coarse_sure(found.coarse, found.worst_part):
        return found.coarse, False
    if found.levelled is not None and coarse_sure(*found.levelled, part=PART_SURE_LEVELLED):
        return found.levelled[0], True
    return None


def evidence_convinces(found: Comparison) -> bool:
    """Whether a pair's own evidence would take it below the threshold (all but the margin)."""
    if not found.eligible:
        return False
    enough = found.inliers >= max(MIN_INLIERS, MIN_INLIER_SHARE * found.matches)
    return enough and found.score >= SCORE_FLOOR and coarse_decided(found) is not None


def accepted_alone(found: Comparison, threshold: float, calibrated: bool) -> bool:
    """Whether a pair is taken on its own: lined up and the same shot, and above the
    threshold or (calibrated) taken on its evidence; the margin to rivals aside."""
    return found.eligible and (
        found.score >= threshold or (calibrated and evidence_convinces(found))
    )


SAME_AREA = 0.03  # uploads whose areas of one local photo differ less show the same part


def shows_less(found: Comparison, than: Comparison) -> bool:
    """Whether found's upload shows clearly less of its local photo than than's upload does
    of the same photo: a part of it, which the photo keeps beside a bigger view of it."""
    return found.area < than.area - SAME_AREA


def lead(comparisons: Pairs, pair: tuple[int, int]) -> tuple[float, float] | None:
    """How far pair scores above its rivals, and its worst part above those of the rivals
    within VERDICT_MARGIN (-1 where one is unread); None when it has none."""
    # Rivals share its photo or its upload. An upload showing clearly more or less of the
    # same photo is none: the photo keeps both, one as a part, and a crop (sharper at a small
    # size) never pushes out the frame it was cut from, nor that frame the crop.
    i, j = pair
    found = comparisons[pair]
    rivals = [
        c
        for (a, b), c in comparisons.items()
        if (a == i) != (b == j) and not (a == i and (shows_less(c, found) or shows_less(found, c)))
    ]
    if not rivals:
        return None
    ahead = found.score - max(c.score for c in rivals)
    close = [best_part(c) for c in rivals if found.score - c.score < VERDICT_MARGIN]
    parts, own = [p for p in close if p is not None], best_part(found)
    if own is None or len(parts) < len(close):
        return ahead, -1.0
    return ahead, own - max(parts, default=0.0)


def best_part(found: Comparison) -> float | None:
    """A pair's worst part, read plain or with local tones set aside, whichever is higher;
    None where neither was read."""
    parts = [found.worst_part, found.levelled[1] if found.levelled else None]
    return max((p for p in parts if p is not None), default=None)


def leads_enough(ahead: tuple[float, float] | None) -> bool:
    """Whether a pair's lead over its rivals (lead) lets the verdict take it."""
    return ahead is None or ahead[0] >= VERDICT_MARGIN or (ahead[0] > 0 and ahead[1] >= PART_LEAD)


def _fraction_words(step: int) -> str:
    """'a quarter of the size', 'half the size', '1/8 of the size'."""
    named = {1: "full size", 2: "half the size", 4: "a quarter of the size"}
    return named.get(step, f"1/{step} of the size")


def evidence_grounds(comparisons: Pairs, threshold: float) -> dict[tuple[int, int], str]:
    """The pairs of a cluster below the threshold that the evidence accepts, each with what
    decided ('98.9% at a quarter of the size, 412 matching points, 6.1 points ahead...').

    An export filter (sharpening, clarity, noise reduction, a small recompressed export)
    lowers the score but leaves the coarse score, every part alike, a clean registration and
    the margin to each look-alike; another frame of a burst loses the coarse score where its
    subject moved.
    """
    registered = {pair: c for pair, c in comparisons.items() if not c.prefiltered}
    accepted = {}
    for (i, j), found in registered.items():
        if found.score >= threshold or not evidence_convinces(found):
            continue
        ahead = lead(registered, (i, j))
        if not leads_enough(ahead):
            continue
        margin = (
            "no rival" if ahead is None else f"{ahead[0] * 100:.1f} points ahead of the next pair"
        )
        if ahead is not None and ahead[0] < VERDICT_MARGIN:
            margin += f", its worst part {ahead[1] * 100:.1f} points ahead"
        coarse, levelled = coarse_decided(found)  # type: ignore[misc]
        aside = " with local tones set aside" if levelled else ""
        accepted[(i, j)] = (
            f"{coarse * 100:.1f}% at {_fraction_words(found.coarse_step)}{aside},"
            f" {found.inliers} matching points, {margin}"
        )
    return accepted


# The first, smaller size settles an upload only when one pair is beyond doubt there; the
# rest are compared again at the larger size (small crops, edited exports, near look-alikes).
# Calibrated like the verdict (python tests/bench_matching.py --out SET).
FIRST_MARGIN = 0.05  # how far the pair leads every other pair of its photo and its upload
SMALL_UPLOAD = 0.6  # of the size's side: an upload's picture smaller there goes to the last size
FIRST_INLIERS = 2 * MIN_INLIERS  # points a pair needs there below the threshold, when bent


def held_back(found: Comparison, threshold: float) -> bool:
    """Whether the first size would take a pair alone but does not settle it: below the
    threshold, lined up through a smooth correction on fewer than FIRST_INLIERS points."""
    # Grain can leave the uploaded frame of a burst unmatched at the first size, while a
    # neighbour frame lines up on a few points through a smooth correction, which then
    # stands for the hand's motion as well as for an editor's.
    few_bent = found.score < threshold and found.inliers < FIRST_INLIERS and found.smooth > 0
    return few_bent and accepted_alone(found, threshold, calibrated=True)


def still_held(first: Pairs, last: Pairs, threshold: float) -> Pairs:
    """The first-size readings of the pairs held back there (held_back) that the last size
    could not line up: the grain or the bend that hid their keypoints there says nothing
    against them."""
    return {
        pair: first[pair]
        for pair, found in last.items()
        if found.prefiltered and pair in first and held_back(first[pair], threshold)
    }


def settled_uploads(comparisons: Pairs, threshold: float) -> dict[int, int]:
    """The uploads whose comparisons at the first size already decide, each with its photo
    (candidate index -> photo index): a pair the threshold or the verdict's own evidence
    takes, FIRST_MARGIN ahead of every other pair that shares its photo or its upload, and
    showing at least as much of the photo as every other upload lined up with it (a crop
    never keeps a photo while a bigger view of it is still to be weighed at the last size);
    below the threshold, one lined up through a smooth correction needs FIRST_INLIERS."""
    settled = {}
    for (i, j), found in comparisons.items():
        if not accepted_alone(found, threshold, calibrated=True) or held_back(found, threshold):
            continue
        if any(
            a == i and b != j and not c.prefiltered and shows_less(found, c)
            for (a, b), c in comparisons.items()
        ):
            continue
        ahead = lead(comparisons, (i, j))
        if ahead is None or ahead[0] >= FIRST_MARGIN:
            settled[j] = i
    return settled


# ---------------------------------------------------------------------------
# 10. Comparing in parallel
#    Every thread of a run lives here. PictureSource holds a run's decoded pictures,
#    local and uploaded: it downloads the days' uploads ahead through the photo cache
#    (download_ahead, stopped by close), decodes each picture (an upload also flipped,
#    where asked) and finds its keypoints once while it is needed, saves a local photo's
#    log thumbnail while it is decoded, and is the one place that reports a picture it
#    could not decode. PairScorer is the compare function matching is given: each pair
#    once a day, at the first size and again at the larger for what it did not settle
#    (an upload no photo lined up with only where one nearly did, or where it was too
#    small to line up; and an upload no photo lined up with, or only below the verdict's
#    floor, again mirrored, at the larger size too; one still lined up with none, placed
#    by correlation), a few local photos' pictures held at a time (PairComparer, which
#    compares each pair once a day); ComparingAhead compares the coming clusters' pairs in
#    background threads (interleaved).
#    PairScorer.day owns a day's threads: started with the day, stopped before anything
#    is written (left_out), the day's pictures dropped on exit.
# ---------------------------------------------------------------------------


class PictureSource:
    """Decoded pictures for comparisons: uploads per day, local photos per cluster, each at
    the iNaturalist sizes compared (sizes, smallest first)."""

    def __init__(
        self,
        photos: PhotoCache,
        sizes: Sequence[str],
        console: Console,
        log_thumbnails: ThumbnailCache | None = None,
    ) -> None:
        self.photos = photos
        self.sizes = tuple(sizes)
        self.console = console
        self.log_thumbnails = log_thumbnails  # when given, each decoded local photo's is made
        self.uploads = Memo()  # (photo id, size) -> picture
        self.locals = Memo()  # (path, size) -> picture
        self.thumbnails = Memo()
        self.full = Memo()
        self.upload_keypoints = Memo()  # (photo id, size, mirrored) -> Features
        self.local_features = Memo()  # (path, size) -> Features
        self.unreadable: set[Path] = set()
        self.lock = threading.Lock()
        self.ahead: ThreadPoolExecutor | None = None  # downloads ahead of the days

    def download_ahead(self, photos: Sequence[InatPhoto], size: str) -> None:
        """Download these photos in the background, in this order, while the run compares
        (PhotoCache.fetch_quietly); close() stops what has not started."""
        if not photos:
            return
        self.ahead = ThreadPoolExecutor(DOWNLOAD_WORKERS, thread_name_prefix="download-ahead")
        for photo in photos:
            self.ahead.submit(self.photos.fetch_quietly, photo, size)

    def close(self) -> None:
        """Stop downloading ahead; what is in flight finishes."""
        if self.ahead is not None:
            self.ahead.shutdown(wait=True, cancel_futures=True)
            self.ahead = None

    def fetch(self, candidates: Sequence[Candidate], size: str | None = None) -> None:
        """Download the uploads of these candidates in parallel, ahead of comparing them."""
        photos, size = [c.photo for c in candidates], size or self.sizes[0]
        with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
            done = pool.map(lambda photo: self.photos.fetch(photo, size), photos)
            for _ in progress(done, "Downloading", len(photos)):
                pass

    def upload(self, photo: InatPhoto, size: str | None = None) -> Image.Image | None:
        """The upload at this size (the first by default); None when it cannot be had."""
        size = size or self.sizes[0]

        def decode() -> Image.Image | None:
            path = self.photos.fetch(photo, size)
            return None if path is None else _open_rgb(path)

        return self.uploads.make((photo.id, size), decode)

    def downloaded_upload(self, photo: InatPhoto) -> Image.Image | None:
        """The upload at the smallest size this run decoded or that is already downloaded;
        never a download."""
        for size in self.sizes:
            decoded = self.uploads.get((photo.id, size))
            if decoded is not None:
                return decoded
        for size in self.sizes:
            path = self.photos.path(photo, size)
            if not photo.unavailable and path.exists():
                return _open_rgb(path)
        return None

    def local(self, photo: LocalPhoto, size: str | None = None) -> Image.Image | None:
        """The local picture upright, big enough to cut the smallest searched crop from it
        at an upload of this size (the first by default)."""
        key = self._local_key(photo, size or self.sizes[0])
        side = round(max(INAT_PIXELS.get(key[1], 0), HTML_THUMBNAIL) / SMALLEST_CROP)
        return self._decode(photo, side, self.locals, key, keep_thumbnail=True)

    @staticmethod
    def _local_key(photo: LocalPhoto, size: str) -> tuple[Path, str]:
        """(path, size), or (path, 'whole') for a format that decodes every pixel anyway:
        decoded once, whatever the size."""
        return (photo.path, size if decodes_reduced(photo.path) else "whole")

    def local_thumbnail(self, photo: LocalPhoto) -> Image.Image | None:
        """The local picture upright at about thumbnail size (JPEGs decode at 1/8 cheaply).

        A format that always decodes every pixel (HEIC, PNG, TIFF) is decoded once: its
        thumbnail is the picture local() returns.
        """
        if not decodes_reduced(photo.path):
            return self.local(photo, self.sizes[0])
        return self._decode(photo, HTML_THUMBNAIL, self.thumbnails, photo.path)

    def small_local(self, photo: LocalPhoto) -> Image.Image | None:
        """The local picture upright at about thumbnail size: the log's thumbnail where this
        run made one (a small file to read), else local_thumbnail."""
        made = None if self.log_thumbnails is None else self.log_thumbnails.local_file(photo)
        if made is not None and made.exists():
            try:
                with Image.open(made) as thumbnail:
                    return thumbnail.convert("RGB")
            except OSError:
                pass  # a thumbnail spoilt in the cache: the photo itself is decoded instead
        return self.local_thumbnail(photo)

    def full_picture(self, photo: LocalPhoto) -> Image.Image | None:
        """The local picture upright at full size, for the rare crop tighter than local()'s
        (which is it already for formats that always decode every pixel)."""
        if photo.path in self.unreadable or not decodes_reduced(photo.path):
            return self.local(photo, self.sizes[-1])

        def decode() -> Image.Image | None:
            try:
                return decode_upright(photo.path, photo.orientation, 1 << 16)
            except (OSError, ValueError, Image.DecompressionBombError, MemoryError):
                return None  # local() decoded it: a failure here is memory, not the file

        return self.full.make(photo.path, decode)

    def upload_features(
        self, upload: InatPhoto, size: str | None = None, mirrored: bool = False
    ) -> tuple[Image.Image, Features] | None:
        """The upload at this size (flipped left to right when mirrored) and its keypoints,
        found once while it is held; None when it cannot be had."""
        size = size or self.sizes[0]
        picture = self.upload(upload, size)
        if picture is None:
            return None
        if mirrored:
            plain = picture
            picture = self.uploads.make(
                (upload.id, size, "mirrored"),
                lambda: plain.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            )
        found = self.upload_keypoints.make(
            (upload.id, size, mirrored), lambda: find_upload_features(picture)
        )
        return picture, found

    def features(
        self, photo: LocalPhoto, upload: InatPhoto, size: str | None = None, mirrored: bool = False
    ) -> tuple[Image.Image, Features, Image.Image, Features] | None:
        """Both pictures at this upload size and their keypoints (local, its features, upload,
        its features), each found once while the picture is held; None when either cannot be
        had. mirrored: the upload flipped left to right."""
        size = size or self.sizes[0]
        held = self.upload_features(upload, size, mirrored)
        local = self.local(photo, size) if held is not None else None
        if held is None or local is None:
            return None
        local_found = self.local_features.make(
            self._local_key(photo, size), lambda: find_local_features(local)
        )
        return local, local_found, *held

    def _decode(
        self, photo: LocalPhoto, side: int, cache: Memo, key: Any, keep_thumbnail: bool = False
    ) -> Image.Image | None:
        if photo.path in self.unreadable:
            return None

        def decode() -> Image.Image | None:
            try:
                picture = decode_upright(photo.path, photo.orientation, side)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                with self.lock:
                    if photo.path not in self.unreadable:
                        self.unreadable.add(photo.path)
                        self.console.file_error(photo.path, f"cannot decode picture ({error})")
                return None
            if keep_thumbnail and self.log_thumbnails is not None:
                # The log's thumbnail, while the picture is decoded: the log comes after the
                # cluster's pictures are forgotten, and would decode the file again.
                self.log_thumbnails.local(photo, lambda: picture)
            return picture

        return cache.make(key, decode)

    def forget_locals(self, photos: Iterable[LocalPhoto] | None = None) -> None:
        """Drop these decoded local pictures, or all, once compared (memory stays flat)."""
        if photos is None:
            for cache in (self.locals, self.thumbnails, self.full, self.local_features):
                cache.forget()
            return
        paths = [p.path for p in photos]
        sized = [(path, size) for path in paths for size in (*self.sizes, "whole")]
        for cache, keys in (
            (self.locals, sized),
            (self.local_features, sized),
            (self.thumbnails, paths),
            (self.full, paths),
        ):
            cache.forget(keys)

    def forget_uploads(self) -> None:
        """Drop decoded uploads and their keypoints once their day is done and reported."""
        self.uploads.forget()
        self.upload_keypoints.forget()


def interleaved(
    pairs: Sequence[tuple[LocalPhoto, Candidate]], group: int
) -> list[tuple[LocalPhoto, Candidate]]:
    """The pairs in turns across each group of local photos (the first pair of each photo,
    then the second, ...): threads taking them in turn decode different photos at once,
    instead of waiting for the one photo they share."""
    photos: dict[Path, list[tuple[LocalPhoto, Candidate]]] = {}
    for pair in pairs:
        photos.setdefault(pair[0].path, []).append(pair)
    each = list(photos.values())
    return [
        turn[k]
        for start in range(0, len(each), group)
        for k in range(max(len(turn) for turn in each[start : start + group]))
        for turn in each[start : start + group]
        if k < len(turn)
    ]


class ComparingAhead:
    """Background threads that compare the coming pairs through compare, at most
    PREFETCH_AHEAD local photos ahead of the matching, which says (done_with) which photos
    it is done with."""

    def __init__(self, compare: Callable[[LocalPhoto, Candidate], Any]) -> None:
        self.compare = compare
        self._room = threading.Condition()  # the background waits on it for room
        self._started: set[Path] = set()  # local photos the background has begun on
        self._finished: set[Path] = set()  # local photos whose cluster matching is done with
        self._threads: tuple[list[threading.Thread], threading.Event] | None = None
        self._expected: list[tuple[Path, int]] = []  # the pairs the background was given

    def expect(self, pairs: Sequence[tuple[LocalPhoto, Candidate]]) -> None:
        """Compare these pairs in the background, at most PREFETCH_AHEAD local photos ahead
        of the matching, in turns across photos: clusters are small, so their own pairs
        rarely keep every core busy, and downloading and decoding wait for no one. Pairs
        already coming (the day was expected while the one before was written) go on."""
        wanted = [(photo.path, candidate.photo.id) for photo, candidate in pairs]
        if self._threads is not None and wanted == self._expected:
            return
        self.stop()
        self._expected = wanted
        if len(pairs) < 2:
            return
        stop = threading.Event()
        queue = iter(interleaved(pairs, PREFETCH_AHEAD))
        threads = [
            threading.Thread(
                target=self._run, args=(queue, stop), name="compare-ahead", daemon=True
            )
            for _ in range(COMPARE_WORKERS)
        ]
        self._threads = (threads, stop)
        for thread in threads:
            thread.start()

    def _run(self, queue: Iterator[tuple[LocalPhoto, Candidate]], stop: threading.Event) -> None:
        while not stop.is_set():
            with self._room:  # the threads take the pairs in turn, in order
                pair = next(queue, None)
                if pair is None:
                    return
                photo, candidate = pair
                if photo.path in self._finished:
                    continue
                while not stop.is_set() and self._no_room_for(photo):
                    self._room.wait(0.5)
                self._started.add(photo.path)
            if stop.is_set():
                return
            # An error is kept in the comparisons' Memo: matching meets it when it asks for
            # the pair, and reports it there, once.
            with contextlib.suppress(Exception):
                self.compare(photo, candidate)

    def _no_room_for(self, photo: LocalPhoto) -> bool:
        """Whether the background is PREFETCH_AHEAD photos ahead already (lock held)."""
        if photo.path in self._started:
            return False
        return len(self._started - self._finished) >= PREFETCH_AHEAD

    def stop(self) -> None:
        """Stop comparing ahead; returns once the background threads have ended."""
        if self._threads is not None:
            threads, stop = self._threads
            stop.set()
            with self._room:
                self._room.notify_all()
            for thread in threads:
                thread.join()
            self._threads = None

    def done_with(self, photos: Iterable[Path]) -> None:
        """Let the background go further ahead: the matching is done with these photos."""
        with self._room:
            self._finished.update(photos)
            self._room.notify_all()

    def forget(self) -> None:
        """Stop, and forget the day's photos."""
        self.stop()
        self._started.clear()
        self._finished.clear()


class PairComparer:
    """Pairs compared once per day, at one size each, perhaps ahead in the background:
    pictures from a PictureSource, scored in parallel, a few local photos' at a time."""

    def __init__(self, pictures: PictureSource, score: ScoreFunction) -> None:
        self.pictures = pictures
        self.score = score
        self.comparisons = Memo()  # (path, upload id, size, mirrored, correlated) -> Comparison
        self.ahead = ComparingAhead(lambda photo, candidate: self.compare(photo, candidate))
        self.mirrored: set[int] = set()  # uploads that line up flipped left to right only
        self.correlated: set[int] = set()  # uploads placed by correlation: no keypoints line up
        self._seen: dict[Path, Features] = {}  # local keypoints at the first size, this call

    def compare(
        self,
        photo: LocalPhoto,
        candidate: Candidate,
        size: str | None = None,
        mirrored: bool | None = None,
    ) -> Comparison | None:
        """One pair at one upload size (the first by default), compared once per day; the
        upload mirrored when it was found so (by default) or when asked."""
        size = size or self.pictures.sizes[0]
        if mirrored is None:
            mirrored = candidate.photo.id in self.mirrored
        correlated = candidate.photo.id in self.correlated
        key = (photo.path, candidate.photo.id, size, mirrored, correlated)
        return self.comparisons.make(
            key, lambda: self._compare(photo, candidate, size, mirrored, correlated)
        )

    def _compare(
        self, photo: LocalPhoto, candidate: Candidate, size: str, mirrored: bool, correlated: bool
    ) -> Comparison | None:
        """Registration by keypoints first, the full score only for pairs that line up, and
        always for a pair named by the upload's original file name."""
        if correlated and size == self.pictures.sizes[0]:  # its keypoints lined up nowhere
            return self._placed_by_correlation(photo, candidate, size)
        pictures = self.pictures.features(photo, candidate.photo, size, mirrored)
        if pictures is None:
            return None
        if size == self.pictures.sizes[0]:  # for the mirror's probe, once pictures are gone
            self._seen[photo.path] = pictures[1]
        named = same_file_name(photo.path.name, candidate.photo.original_filename)
        sharper = functools.partial(self.pictures.full_picture, photo)
        step = coarse_step(size)
        found = compare_pictures(
            *pictures, self.score, sharper, named=named, step=step, correlated=correlated
        )
        if mirrored and found.alignment is not None:
            found = dataclasses.replace(
                found, alignment=dataclasses.replace(found.alignment, mirrored=True)
            )
        return found

    def _placed_by_correlation(
        self, photo: LocalPhoto, candidate: Candidate, size: str
    ) -> Comparison | None:
        """compare_correlated of a pair, where the local photo's thumbnail correlates with the
        upload (a cheap decoding: the photo's own size decodes only then)."""
        # At CORRELATED_FIRST a third of the work: a true pair correlates as well there.
        thumbnail = self.pictures.small_local(photo)
        upload = self.pictures.upload(candidate.photo, size)
        if thumbnail is None or upload is None:
            return None
        if correlated(thumbnail, upload, CORRELATED_FIRST)[1] < ALIGN_GATE:
            return quick_comparison(thumbnail, upload, self.score)
        local = self.pictures.local(photo, size)
        if local is None:
            return None
        sharper = functools.partial(self.pictures.full_picture, photo)
        return compare_correlated(local, upload, self.score, sharper, coarse_step(size))

    def _each_pair(
        self,
        photos: Sequence[LocalPhoto],
        candidates: Sequence[Candidate],
        work: Callable,
        within: PairIndices | None = None,
    ) -> dict[tuple[int, int], Any]:
        """work(photo, candidate) for every pair (or those within), PREFETCH_AHEAD photos at a
        time: each group's pictures are dropped once its pairs are done (a burst may put
        hundreds in a cluster)."""

        def results() -> Iterator[tuple[tuple[int, int], Any]]:
            with ThreadPoolExecutor(max_workers=COMPARE_WORKERS) as pool:
                for start in range(0, len(photos), PREFETCH_AHEAD):
                    group = photos[start : start + PREFETCH_AHEAD]
                    pairs = [
                        (start + i, j)
                        for i in range(len(group))
                        for j in range(len(candidates))
                        if within is None or (start + i, j) in within
                    ]
                    try:
                        done = pool.map(
                            lambda pair: work(photos[pair[0]], candidates[pair[1]]), pairs
                        )
                        yield from zip(pairs, done, strict=True)
                    finally:
                        self._done_with(group)

        total = len(photos) * len(candidates) if within is None else len(within)
        found = progress(results(), "Comparing", total)
        return {pair: result for pair, result in found if result is not None}

    def _done_with(self, photos: Sequence[LocalPhoto]) -> None:
        """Let the background go further ahead, and drop these photos' pictures."""
        self.ahead.done_with(p.path for p in photos)
        self.pictures.forget_locals(photos)

    def lined_up(
        self, photos: Sequence[LocalPhoto], candidates: Sequence[Candidate]
    ) -> dict[tuple[int, int], bool]:
        """The cheap gate's answer for every pair whose pictures could be had."""
        size = self.pictures.sizes[0]
        self.pictures.fetch(candidates, size)

        def gate(photo: LocalPhoto, candidate: Candidate) -> bool | None:
            pictures = self.pictures.features(photo, candidate.photo, size)
            return None if pictures is None else likely_same_pictures(*pictures)

        return self._each_pair(photos, candidates, gate)

    def expect(self, pairs: Sequence[tuple[LocalPhoto, Candidate]]) -> None:
        """Compare these pairs ahead, in the background (ComparingAhead.expect)."""
        self.ahead.expect(pairs)

    def stop(self) -> None:
        """Stop comparing ahead; returns once the background threads have ended."""
        self.ahead.stop()

    def left_out(self, candidates: Iterable[Candidate]) -> int:
        """Stop comparing ahead (nothing runs in the background after this, so the day's
        results may be written), and count the candidates the download budget left out."""
        self.stop()
        over = self.pictures.photos.over_budget
        return sum(1 for c in candidates if c.photo.id in over)

    def finish_day(self) -> None:
        """Stop comparing ahead and drop the day's pictures, keypoints and comparisons."""
        self.ahead.forget()
        self._seen.clear()
        self.comparisons.forget()
        self.pictures.forget_locals()
        self.pictures.forget_uploads()


class PairScorer(PairComparer):
    """The compare function matching is given: a Comparison for every pair whose pictures
    could be had, at the first size, and at the last for the uploads that did not settle."""

    # An upload no photo lined up with is tried again mirrored, then placed by correlation.
    # lined_up() gives the cheap gate's answer alone, for the clock-offset search.

    def __init__(
        self, pictures: PictureSource, score: ScoreFunction, threshold: float = SSIM_THRESHOLD
    ) -> None:
        super().__init__(pictures, score)
        self.threshold = threshold  # what a pair settled at the first size must reach

    def __call__(
        self,
        photos: Sequence[LocalPhoto],
        candidates: Sequence[Candidate],
        within: PairIndices | None = None,
    ) -> Pairs:
        """Every pair (or those within) at the first size; the uploads it does not settle
        again at the last."""
        first, *more = self.pictures.sizes
        self.pictures.fetch(candidates, first)
        found = self._each_pair(photos, candidates, self.compare, within)
        found |= self._found_mirrored(photos, candidates, found)
        found |= self._found_by_correlation(photos, candidates, found)
        for photo in photos:
            self._seen.pop(photo.path, None)
        if not more:
            return found
        settled = settled_uploads(found, self.threshold)
        # An upload that no photo lined up with at the first size is not here (a phone's
        # photo, another camera's), unless some photo nearly lined up with it (a narrow crop
        # of a soft background finds more keypoints larger) or its picture was too small
        # there to line up (a screenshot's photo, inside the viewer); one not had at all (a
        # failed download) is not asked again.
        lined_up = lined_up_uploads(found) | nearly_lined_up(found)
        lined_up |= {
            j
            for j, candidate in enumerate(candidates)
            if j not in lined_up and self._too_small(candidate, first)
        }
        unsettled = [j for j in range(len(candidates)) if j in lined_up and j not in settled]
        if not unsettled:
            return found
        # A photo a settled pair took keeps its other pairs too: each is far behind. So does
        # an upload that lined up with no photo: it was weighed, in vain, and a rerun must
        # know it (as when every upload settles at the first size).
        taken = set(settled.values())
        kept = {
            (i, j): c
            for (i, j), c in found.items()
            if j in settled or i in taken or j not in lined_up
        }
        again = [i for i in range(len(photos)) if i not in taken]
        uploads = [candidates[j] for j in unsettled]
        self.pictures.fetch(uploads, more[-1])
        compare = functools.partial(self.compare, size=more[-1])
        finer_within = (
            None
            if within is None
            else {
                (a, b)
                for a, i in enumerate(again)
                for b, j in enumerate(unsettled)
                if (i, j) in within
            }
        )
        later = [photos[i] for i in again]
        finer = self._each_pair(later, uploads, compare, finer_within)
        # a screenshot too small to line up at the first size was not tried mirrored there
        finer |= self._found_mirrored(later, uploads, finer, more[-1])
        # A pair the last size could not compare (its download failed) keeps its first-size
        # comparison: a whole frame missing there must not leave its photo to a crop. So
        # does a pair held back at the first size that the last could not line up.
        fallback = {(i, j): found[(i, j)] for i in again for j in unsettled if (i, j) in found}
        last = {(again[i], unsettled[j]): c for (i, j), c in finer.items()}
        return kept | fallback | last | still_held(found, last, self.threshold)

    def _found_mirrored(
        self,
        photos: Sequence[LocalPhoto],
        candidates: Sequence[Candidate],
        found: Pairs,
        size: str | None = None,
    ) -> Pairs:
        """The pairs of each upload no photo lined up with, or only below SCORE_FLOOR,
        compared again at size with the upload flipped left to right (an editor's mirror), for
        the uploads that then line up and score higher; those are compared mirrored from then
        on. At the first size, a pair the flip cannot line up (may_line_up, on the keypoints
        kept) is not decoded again."""
        # A symmetric subject (a toad seen from above) may line up unflipped, and score low.
        plain = best_scores(found)
        lost = {
            j
            for _, j in found
            if plain.get(j, 0.0) < SCORE_FLOOR and candidates[j].photo.id not in self.mirrored
        }
        if not lost:
            return {}

        def worth(i: int, j: int) -> bool:
            local = self._seen.get(photos[i].path) if size is None else None
            if local is None:
                return True
            flipped = self.pictures.upload_features(candidates[j].photo, mirrored=True)
            return flipped is not None and may_line_up(local, flipped[1])

        within = {(i, j) for i, j in found if j in lost and worth(i, j)}
        flipped = functools.partial(self.compare, size=size, mirrored=True)
        again = self._compared_again(photos, candidates, within, flipped)
        kept = {j for j, score in best_scores(again).items() if score > plain.get(j, 0.0)}
        self.mirrored.update(candidates[j].photo.id for j in kept)
        return {(i, j): c for (i, j), c in again.items() if j in kept}

    def _found_by_correlation(
        self, photos: Sequence[LocalPhoto], candidates: Sequence[Candidate], found: Pairs
    ) -> Pairs:
        """The pairs of each upload whose keypoints line up with no photo, placed by correlation
        instead (a soft strip of background, or a lens-corrected one); those that then line up
        are kept, and such an upload is placed so from then on."""
        # Only an upload that lined up nowhere is tried: correlating every pair would cost
        # what the keypoints save, and a look-alike's frame lines up by its keypoints.
        seen = lined_up_uploads(found)
        lost = {j for _, j in found if j not in seen}
        if not lost:
            return {}
        self.correlated.update(candidates[j].photo.id for j in lost)
        within = {(i, j) for i, j in found if j in lost}
        again = self._compared_again(photos, candidates, within, self.compare)
        placed = {pair: c for pair, c in again.items() if not c.prefiltered}
        kept = {j for _, j in placed}
        self.correlated.difference_update(candidates[j].photo.id for j in lost if j not in kept)
        return placed

    def _compared_again(
        self,
        photos: Sequence[LocalPhoto],
        candidates: Sequence[Candidate],
        within: PairIndices,
        compare: Callable[[LocalPhoto, Candidate], Comparison | None],
    ) -> Pairs:
        """compare for the pairs within (photo index, candidate index), those candidates'
        pictures had again; nothing where within is empty."""
        uploads = sorted({j for _, j in within})
        if not uploads:
            return {}
        position = {j: b for b, j in enumerate(uploads)}
        shown = [candidates[j] for j in uploads]
        again = self._each_pair(photos, shown, compare, {(i, position[j]) for i, j in within})
        return {(i, uploads[b]): c for (i, b), c in again.items()}

    def _too_small(self, candidate: Candidate, size: str) -> bool:
        """Whether an upload's picture at size is too small to line up: a frame or a viewer
        took most of it."""
        picture = self.pictures.upload(candidate.photo, size)
        return picture is not None and max(picture.size) < SMALL_UPLOAD * INAT_PIXELS[size]

    @contextlib.contextmanager
    def day(self, pairs: Sequence[tuple[LocalPhoto, Candidate]]) -> Iterator[PairScorer]:
        """The compare function for one day: these pairs are compared ahead in the background
        while the day is matched. On exit the background is stopped and the day's pictures,
        keypoints and comparisons are dropped, whatever happened."""
        self.expect(pairs)
        try:
            yield self
        finally:
            self.finish_day()


# ---------------------------------------------------------------------------
# 11. Matching
#    Pure decisions: clusters of photos taken close in time (a long one compared through
#    time windows that follow each observation's photos), the one-to-one assignment
#    inside a cluster (each photo paired through the uploads that show most of it first;
#    crops then become parts; a near tie refused, unless all but one of its photos left
#    out more of the upload), camera-clock offsets, and match_day, which puts them
#    together (planned_pairs says which pairs it will compare first). The compare
#    function is passed in; nothing here does I/O.
# ---------------------------------------------------------------------------


class Compare(Protocol):
    """Comparisons of every pair of photos and candidates, or only of the pairs within."""

    def __call__(
        self,
        photos: Sequence[LocalPhoto],
        candidates: Sequence[Candidate],
        within: PairIndices | None = None,
    ) -> Pairs: ...


LinedUp = Callable[[Sequence[LocalPhoto], Sequence[Candidate]], dict[tuple[int, int], bool]]
CheckedBefore = Callable[[LocalPhoto, Sequence[int]], bool]


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


# A group with more pairs than this is compared through time windows. Shooting without a pause
# (a bioblitz day) makes one group of hundreds of photos and dozens of observations, and comparing
# all of their pairs would grow with photos x uploads; smaller groups keep every pair.
WINDOW_FROM = 64


def window_pairs(
    cluster: Cluster,
    window: int,
    found_at: Mapping[int, Collection[dt.datetime]] | None = None,
) -> PairIndices:
    """A long group's pairs worth comparing: a photo within window s of its upload's observation
    time, or of a photo already found for that observation (found_at: observation id -> those
    photos' times), since an observation's other photos may be taken many minutes later.
    An upload without a time is paired with every photo."""
    times = sorted((p.corrected_time, i) for i, p in enumerate(cluster.photos))
    keys = [t for t, _ in times]
    reach = dt.timedelta(seconds=window)
    pairs: PairIndices = set()
    for j, candidate in enumerate(cluster.candidates):
        observation = candidate.observation
        start = observation.observed_at
        if start is None:
            pairs.update((i, j) for i in range(len(cluster.photos)))
            continue
        span = dt.timedelta(seconds=MINUTE_SPAN if observation.minute_precision else 0)
        spans = [(start, start + span)]
        spans += [(t, t) for t in (found_at or {}).get(observation.id, ())]
        for first, last in spans:
            low = bisect.bisect_left(keys, first - reach)
            high = bisect.bisect_right(keys, last + reach)
            pairs.update((i, j) for _, i in times[low:high])
    return pairs


# In a long group an upload is weighed first against the photos within this many seconds of
# its observation's time (a minute's span for a time without seconds comes on top): the photo
# an observation's time was taken from, and its burst siblings. Only an upload not found
# there is weighed against its whole window.
NEAR_WINDOW = 60


def first_pairs(cluster: Cluster, window: int | None) -> PairIndices | None:
    """The pairs a group's comparison starts with: None (every pair) for a small group, the
    photos near each upload's time for a long one."""
    if window is None or len(cluster.photos) * len(cluster.candidates) <= WINDOW_FROM:
        return None
    return window_pairs(cluster, min(window, NEAR_WINDOW))


def compare_cluster(
    cluster: Cluster, compare: Compare, window: int | None, threshold: float, calibrated: bool
) -> tuple[Pairs, PairIndices | None]:
    """Every pair of a small group compared. In a long group, each upload first with the
    photos near its time; an upload not found there with its whole window, which widens
    around each photo found for its observation until no window grows. Returns the
    comparisons and the pairs that were within (None: all)."""
    within = first_pairs(cluster, window)
    if within is None or window is None:
        return compare(cluster.photos, cluster.candidates), None
    while True:
        comparisons = compare(cluster.photos, cluster.candidates, within)
        found_at: dict[int, list[dt.datetime]] = defaultdict(list)
        found: set[int] = set()
        for (i, j), pair in comparisons.items():
            if accepted_alone(pair, threshold, calibrated):
                found.add(j)
                found_at[cluster.candidates[j].observation.id].append(
                    cluster.photos[i].corrected_time
                )
        wider = within | {
            (i, j) for i, j in window_pairs(cluster, window, found_at) if j not in found
        }
        if wider == within:
            return comparisons, within
        within = wider


TIE_MARGIN = 0.005  # two local photos this close for one upload: too close to choose
COVER_APART = 0.02  # ... unless one left out this much more of the upload (as covered)


def _optimal_pairs(valid: Mapping[tuple[int, int], float]) -> dict[int, int]:
    """local -> upload maximising the total score over valid pairs (one-to-one)."""
    locals_ = sorted({local for local, _ in valid})
    uploads = sorted({upload for _, upload in valid})
    if len(locals_) == len(valid) == len(uploads):  # no two pairs share a photo or an upload
        return {local: upload for (local, upload), score in valid.items() if score > 0}
    from scipy.optimize import linear_sum_assignment  # a quarter second to import: when needed

    row = {local: i for i, local in enumerate(locals_)}
    column = {upload: j for j, upload in enumerate(uploads)}
    matrix = np.zeros((len(locals_), len(uploads)))
    for (local, upload), score in valid.items():
        matrix[row[local], column[upload]] = score
    rows, columns = linear_sum_assignment(matrix, maximize=True)
    return {locals_[r]: uploads[c] for r, c in zip(rows, columns, strict=True) if matrix[r, c] > 0}


def _qualifying(
    scores: Mapping[tuple[int, int], float],
    threshold: float,
    accepted: Collection[tuple[int, int]],
    named_locals: Mapping[int, set[int]],
    name_threshold: float,
) -> dict[tuple[int, int], float]:
    """The pairs that may be associated: above threshold or accepted on their evidence; an
    upload with named local photos only with those, which need only name_threshold."""

    def qualifies(pair: tuple[int, int], score: float) -> bool:
        local, upload = pair
        if upload in named_locals:
            return local in named_locals[upload] and (
                score >= min(threshold, name_threshold) or pair in accepted
            )
        return score >= threshold or pair in accepted

    return {pair: score for pair, score in scores.items() if qualifies(pair, score)}


def _ties(
    valid: Mapping[tuple[int, int], float], covered: Mapping[tuple[int, int], float]
) -> tuple[list[Decision], set[tuple[int, int]]]:
    """The uploads whose two best local photos score within TIE_MARGIN: refused; and the
    pairs that lose such a tie because they left out more of the upload (COVER_APART)."""
    ties, losers = [], set()
    for upload in sorted({u for _, u in valid}):
        ranked = sorted(
            ((s, local) for (local, u), s in valid.items() if u == upload), reverse=True
        )
        best, local = ranked[0]
        close = [other for s, other in ranked if best - s <= TIE_MARGIN]
        # A burst neighbour scores as well as the uploaded frame once its moved subject is
        # left out as a mark; the frame that shows what the other left out is the upload's.
        left_out = {other: covered.get((other, upload), 0.0) for other in close}
        shows = [other for other in close if left_out[other] - min(left_out.values()) < COVER_APART]
        if len(close) > 1 and len(shows) == 1:
            losers.update((other, upload) for other in close if other not in shows)
        elif len(close) > 1:
            ties.append(Decision(upload, local, best, "tie", tuple(sorted(close[1:]))))
    return ties, losers


def _one_to_one(
    valid: Mapping[tuple[int, int], float],
    areas: Mapping[tuple[int, int], float],
    order: Callable[[int], Any],
    by_name: Collection[tuple[int, int]],
) -> tuple[dict[int, int], dict[int, int]]:
    """local -> its upload, and upload -> local for the parts: each photo is first paired
    through the uploads that show most of it, then each upload left over goes to its best
    photo if that has none, or takes it from an upload it is preferred to, or is a part."""
    # A crop, which may score higher at a small size, must not hand its whole frame to a
    # look-alike; the crops then go to a photo left without an upload, or become parts.
    widest: dict[int, float] = defaultdict(float)
    for local, upload in valid:
        widest[local] = max(widest[local], areas.get((local, upload), 1.0))
    whole = {p: s for p, s in valid.items() if areas.get(p, 1.0) >= widest[p[0]] - SAME_AREA}
    # A named pair outweighs any score, so that a local photo takes the upload that names it.
    upload_of = _optimal_pairs({p: s + 1.0 if p in by_name else s for p, s in whole.items()})

    def prefer(upload: int, over: int, local: int) -> bool:
        if ((local, upload) in by_name) != ((local, over) in by_name):
            return (local, upload) in by_name
        area, rival_area = areas.get((local, upload), 1.0), areas.get((local, over), 1.0)
        if abs(area - rival_area) > SAME_AREA:
            return area > rival_area
        score, rival_score = valid[(local, upload)], valid[(local, over)]
        if abs(score - rival_score) > TIE_MARGIN:
            return score > rival_score
        return order(upload) < order(over)

    waiting = deque(sorted({u for _, u in valid} - set(upload_of.values()), key=order))
    displaced: set[int] = set()
    parts: dict[int, int] = {}
    # Each upload is taken up at most twice (once more after it was displaced, and a displaced
    # upload displaces no other), so the loop ends even where prefer's tolerances make it
    # intransitive.
    while waiting:
        upload = waiting.popleft()
        _, local = max((s, local) for (local, u), s in valid.items() if u == upload)
        holder = upload_of.get(local)
        if holder is None:
            upload_of[local] = upload
        elif upload not in displaced and prefer(upload, holder, local):
            displaced.add(holder)
            waiting.append(holder)
            upload_of[local] = upload
        else:
            parts[upload] = local
    for upload in upload_of.values():
        parts.pop(upload, None)
    return upload_of, parts


def assign_uploads(
    scores: Mapping[tuple[int, int], float],
    areas: Mapping[tuple[int, int], float],
    threshold: float,
    upload_order: Sequence[Any] = (),
    named: Collection[tuple[int, int]] = (),
    name_threshold: float = NAME_THRESHOLD,
    accepted: Collection[tuple[int, int]] = (),
    covered: Mapping[tuple[int, int], float] | None = None,
) -> list[Decision]:
    """Pair (local, upload) indices one-to-one, maximising the total score above threshold
    (and of the pairs accepted below it, on the verdict's evidence).

    An upload whose two best local photos score within TIE_MARGIN is refused, unless all but
    one left out (covered) COVER_APART more of it than that one, which takes it. When one local
    photo is the source of several uploads it takes the one showing most of it (then the
    higher score, then the first upload); the others are reported as parts of it. named holds
    the pairs whose file names agree: such a pair needs only name_threshold, and an upload
    with a named local photo goes to no other (the name decides among look-alikes).
    """

    def order(upload: int) -> Any:
        return upload_order[upload] if upload < len(upload_order) else upload

    def decide(names: Mapping[int, set[int]]) -> tuple[list[Decision], set, dict, dict, dict, set]:
        valid = _qualifying(scores, threshold, accepted, names, name_threshold)
        ties, losers = _ties(valid, covered or {})
        refused = {d.upload_index for d in ties}
        valid = {p: s for p, s in valid.items() if p[1] not in refused and p not in losers}
        by_name = {pair for pair in valid if pair[1] in names}
        return ties, losers, valid, *_one_to_one(valid, areas, order, by_name), by_name

    named_locals: dict[int, set[int]] = defaultdict(set)
    for local, upload in named:
        named_locals[upload].add(local)
    ties, losers, valid, upload_of, parts, by_name = decide(named_locals)
    # The name decided an association that the scores alone would not have made.
    unnamed = set(decide({})[3].items()) if by_name else set()
    decisions = list(ties)
    for local, upload in upload_of.items():
        decided = (local, upload) in by_name and (local, upload) not in unnamed
        beaten = tuple(sorted(other for other, u in losers if u == upload))
        score = valid[(local, upload)]
        decisions.append(Decision(upload, local, score, rivals=beaten, by_name=decided))
    for upload, local in parts.items():
        decisions.append(Decision(upload, local, valid[(local, upload)], "part"))
    return sorted(decisions, key=lambda d: (d.upload_index, d.kind))


def named_pairs(cluster: Cluster) -> set[tuple[int, int]]:
    """(local, upload) indices of the cluster whose file name and original file name agree."""
    return {
        (i, j)
        for i, photo in enumerate(cluster.photos)
        for j, candidate in enumerate(cluster.candidates)
        if same_file_name(photo.path.name, candidate.photo.original_filename)
    }


def _left_out_words(cluster: Cluster, comparisons: Pairs, decision: Decision) -> str:
    """What the rivals of an association left out to fit its upload almost as well ("what
    'dsc_1204.jpg' left out (7% of the upload) to fit almost as well"); '' when none."""
    left_out = [
        f"'{cluster.photos[r].path.name}' left out"
        f" ({comparisons[(r, decision.upload_index)].covered * 100:.0f}% of the upload)"
        for r in decision.rivals
    ]
    return f"what {' and '.join(left_out)} to fit almost as well" if left_out else ""


def match_cluster(
    cluster: Cluster,
    compare: Compare,
    threshold: float,
    name_threshold: float = NAME_THRESHOLD,
    calibrated: bool = False,
    window: int | None = None,
) -> ClusterOutcome:
    """Compare the cluster's pairs and decide: associations, ties, parts, refusals.
    calibrated: a pair below the threshold may be taken on its evidence (evidence_grounds);
    window: a long cluster's pairs are those within this many seconds (compare_cluster)."""
    comparisons, within = compare_cluster(cluster, compare, window, threshold, calibrated)
    # Another shot of the scene, or a pair that did not line up, may score high: never taken.
    scores = {pair: c.score for pair, c in comparisons.items() if c.eligible}
    grounds = evidence_grounds(comparisons, threshold) if calibrated else {}
    areas = {pair: c.area for pair, c in comparisons.items()}
    order = [c.photo.id for c in cluster.candidates]
    named = named_pairs(cluster)
    associations: list[Association] = []
    ties: list[Tie] = []
    parts: list[Association] = []
    decided: set[int] = set()
    covered = {pair: c.covered for pair, c in comparisons.items()}
    decisions = assign_uploads(
        scores, areas, threshold, order, named, name_threshold, grounds, covered
    )
    for decision in decisions:
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
            why = grounds.get((decision.local_index, decision.upload_index), "")
            why = "; ".join(filter(None, [why, _left_out_words(cluster, comparisons, decision)]))
            associations.append(Association(photo, candidate, comparison, decision.by_name, why))
            decided.add(decision.local_index)
    taken = {a.candidate.photo.id for a in associations}
    associated = {a.photo.path for a in associations}
    refusals = []
    checked = []
    for i, photo in enumerate(cluster.photos):
        tried = [(c.score, j) for (li, j), c in comparisons.items() if li == i]
        # Uploads outside the photo's time windows were weighed too: by time, in vain (a
        # photo outside every window is then not weighed again, nor searched for an offset).
        weighed = {j for _, j in tried} | {
            j for j in range(len(cluster.candidates)) if within and (i, j) not in within
        }
        if photo.path not in associated and weighed:
            uploads = frozenset(cluster.candidates[j].photo.id for j in weighed)
            checked.append((photo.path, uploads))
        if i in decided or not tried:
            continue
        _, j = max(tried)
        candidate = cluster.candidates[j]
        reason = Reason.TAKEN_BY_ANOTHER if candidate.photo.id in taken else Reason.BELOW_THRESHOLD
        refused = comparisons[(i, j)]
        # The log's note says why (another shot, thumbnail only). Another shot is no near
        # miss, however close it scored: its parts moved, and no edit does that.
        unsaid = refused.score >= threshold or not refused.same_shot
        if reason == Reason.BELOW_THRESHOLD and not refused.eligible and unsaid:
            reason = Reason.UNSAID
        if (i, j) not in named and any(upload == j for _, upload in named):
            reason = Reason.NAMES_ANOTHER
        refusals.append(Refusal(photo, candidate, refused, reason))
    return ClusterOutcome(
        tuple(associations), tuple(ties), tuple(parts), tuple(refusals), tuple(checked)
    )


OFFSET_STEP = dt.timedelta(minutes=15)  # clock errors come in hours, half and quarter hours


MIN_OFFSET_MATCHES = 2  # an offset that only one match supports is never applied


def find_clock_offset(
    photos: Sequence[LocalPhoto],
    candidates: Sequence[Candidate],
    lined_up: Mapping[tuple[int, int], bool],
    compare: Compare,
    threshold: float,
    cluster_threshold: int,
    calibrated: bool = False,
) -> dt.timedelta | None:
    """A camera-clock error that lines up at least two strong matches on one day, or None.

    lined_up holds the cheap gate's answer for (photo, candidate) index pairs; those
    pairs vote for the offset (rounded to a quarter hour) their times imply. The offset with
    the most votes must then be confirmed by full scores above the threshold (or, when
    calibrated, pairs whose own evidence the verdict takes).
    """
    if len(photos) < MIN_OFFSET_MATCHES:
        return None
    votes: dict[dt.timedelta, list[tuple[LocalPhoto, Candidate]]] = defaultdict(list)
    for (i, j), same in sorted(lined_up.items()):
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
            if (found := compare([p], [c]).get((0, 0)))
            and accepted_alone(found, threshold, calibrated)
        ]
        if (
            min(len({a for a, _ in confirmed}), len({b for _, b in confirmed}))
            >= MIN_OFFSET_MATCHES
        ):
            return offset
    return None


def fresh_photos(cluster: Cluster, checked_before: CheckedBefore | None) -> tuple[LocalPhoto, ...]:
    """The cluster's photos not compared in vain with the same uploads before."""
    uploads = [c.photo.id for c in cluster.candidates]
    return tuple(
        p for p in cluster.photos if checked_before is None or not checked_before(p, uploads)
    )


def planned_pairs(
    photos: Sequence[LocalPhoto],
    candidates: Sequence[Candidate],
    options: Options,
    checked_before: CheckedBefore,
) -> list[tuple[LocalPhoto, Candidate]]:
    """The pairs match_day compares first, in its order, so that they can be compared ahead."""
    skip = None if options.recompute else checked_before
    planned = []
    for cluster in cluster_by_time(photos, candidates, options.cluster_threshold):
        fresh = Cluster(
            fresh_photos(cluster, skip) if cluster.candidates else (), cluster.candidates
        )
        within = first_pairs(fresh, options.cluster_threshold)
        planned += [
            (photo, candidate)
            for i, photo in enumerate(fresh.photos)
            for j, candidate in enumerate(fresh.candidates)
            if within is None or (i, j) in within
        ]
    return planned


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
        if not cluster.photos or not cluster.candidates:
            return
        fresh = fresh_photos(cluster, checked_before)
        skipped.extend(
            Refusal(p, None, None, Reason.COMPARED_BEFORE) for p in cluster.photos if p not in fresh
        )
        if fresh:
            outcomes.append(
                match_cluster(
                    Cluster(fresh, cluster.candidates),
                    compare,
                    options.ssim_threshold,
                    calibrated=options.calibrated,
                    window=options.cluster_threshold,
                )
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
    refusals += [
        Refusal(p, None, None, Reason.NO_CANDIDATE) for p in photos if p.path not in accounted
    ]
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
    lined_up: LinedUp,
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
        gated = lined_up(photos, timed)
        offset = find_clock_offset(
            photos,
            timed,
            gated,
            compare,
            options.ssim_threshold,
            options.cluster_threshold,
            calibrated=options.calibrated,
        )
        if offset is not None:
            shifted = [dataclasses.replace(p, clock_error=offset) for p in photos]
            result = _match_clusters(shifted, candidates, compare, options, None)
        else:  # every upload of the day was tried with every photo: remember that
            tried: dict[Path, frozenset[int]] = dict(result.checked)
            for i, j in gated:
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
# 12. Writing
#    The one place that changes a photo or its sidecar. plan_update decides, purely,
#    what a photo should hold: ids, the caption keyword and, when asked, a hierarchical
#    keyword and Darwin Core terms, the observation's position (geotag_decision:
#    geoprivacy first, never over the photo's own) and place names, each replacing only
#    what this tool wrote (which it records beside them). write_update writes that
#    through exiv2 into a copy that then replaces the photo, or its XMP sidecar,
#    atomically (section 4).
# ---------------------------------------------------------------------------


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


def updated_entries(
    entries: Sequence[str], ours: str | None, written: str | None, new: str
) -> tuple[str, ...] | None:
    """entries with new in place of ours (the entry this tool wrote, still there), or None
    when nothing must change. One the user removed (written == new) is not put back."""
    removed_by_user = written == new and ours is None
    if ours == new or removed_by_user:
        return None
    return tuple(updated_keywords(entries, ours, new))


def hierarchy_entry(lineage: Lineage) -> str:
    """'Animalia|Chordata|Mammalia|Carnivora|Canidae|Canis|Canis latrans'."""
    return "|".join(name for _, name in lineage if name)


DWC_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


def darwin_core_terms(
    observation: Observation, lineage: Lineage | None, photo_location: tuple[float, float] | None
) -> dict[str, str]:
    """The Simple Darwin Core terms naturtag writes for an occurrence, as XMP keys."""
    terms: dict[str, str | None] = {
        "occurrenceID": observation.url,
        "scientificName": observation.taxon_scientific,
        "taxonRank": observation.taxon_rank,
        "vernacularName": observation.name.common if observation.name else None,
        "eventDate": observation.observed_at.isoformat()
        if observation.observed_at
        else (observation.observed_on.isoformat() if observation.observed_on else None),
    }
    for rank, name in lineage or ():
        if rank in DWC_RANKS:
            terms[rank] = name
    # A photo's own GPS is better than an observation's; an obscured one is a decoy.
    if photo_location is None and observation.location and not observation.obscured:
        terms["decimalLatitude"] = f"{observation.location[0]:.6f}"
        terms["decimalLongitude"] = f"{observation.location[1]:.6f}"
    return {f"Xmp.{DWC_PREFIX}.{k}": v for k, v in terms.items() if v}


def updated_darwin_core(
    current: Mapping[str, str], written: Mapping[str, str], new: Mapping[str, str]
) -> dict[str, str | None]:
    """The Darwin Core terms to change (None: remove): ours are replaced, the user's kept.

    A term is ours while it holds what this tool wrote (written, recorded in the photo). A
    missing term is added, unless the user removed what we wrote and it would be the same.
    """
    changes: dict[str, str | None] = {}
    for key in sorted(set(new) | set(written)):
        value, wanted = current.get(key), new.get(key)
        if value is None:
            if wanted is not None and written.get(key) != wanted:
                changes[key] = wanted
        elif value == written.get(key) and value != wanted:
            changes[key] = wanted
    return changes


def observation_position(observation: Observation, private: bool) -> tuple[Position | None, str]:
    """The observation's position that may go into its photos, or None and why not: an
    obscured position is a decoy, and the true one is written only when private is set."""
    if observation.location_hidden:
        if observation.private_location is None:
            return None, "observation obscured"
        if not private:
            return None, "observation obscured; --geotag-private would write its true position"
        return Position(*observation.private_location, observation.accuracy, private=True), ""
    where = observation.private_location or observation.public_location
    if where is None:
        return None, "observation has no position"
    return Position(*where, observation.accuracy), ""


def photo_position(photo: LocalPhoto) -> tuple[float, float] | None:
    """The position a photo holds where this tool would write one: in its sidecar (or a RAW's
    own EXIF), or in the file's EXIF (or its XMP)."""
    if photo.sidecar is not None:
        return photo.xmp_location or photo.location
    return photo.location or photo.xmp_location


def holds_own_position(photo: LocalPhoto) -> bool:
    """True when the position the photo holds is the one this tool wrote."""
    return same_position(photo_position(photo), photo.written_position)


def geotag_decision(
    photo: LocalPhoto, observation: Observation, private: bool
) -> tuple[Position | None, bool, str]:
    """--geotag for one file: (the position to write, True to remove the one this tool wrote,
    why the photo gets no position). A position the tool did not write is never touched."""
    current = photo_position(photo)
    ours = holds_own_position(photo)
    if current is not None and not ours:
        return None, False, "photo has its own GPS"
    wanted, why = observation_position(observation, private)
    if wanted is None and ours and photo.written_private and observation.private_location is None:
        return None, False, ""  # written with a token that this run lacks: nothing to go by
    if wanted is None:
        return None, ours, why
    if ours:  # moved on iNaturalist: ours follows
        return (None if same_position(current, wanted.point) else wanted), False, ""
    if same_position(photo.written_position, wanted.point):
        return None, False, "you removed the position this tool wrote"
    return wanted, False, ""


def country_code(country: Place | None, below: Sequence[Place]) -> str | None:
    """The country's ISO code: its own, or the last part of a place's display name under it
    ('California, US'), as iNaturalist names places after the codes of those above."""
    if country is None:
        return None
    if country.code:
        return country.code
    for place in below:
        last = place.display_name.rsplit(",", 1)[-1].strip()
        if re.fullmatch(r"[A-Z]{2}", last) and "," in place.display_name:
            return last
    return None


def location_names(observation: Observation, places: Mapping[int, Place]) -> dict[str, str]:
    """The IPTC location fields of an observation: country and its code, state, and town or
    county from iNaturalist's standard places; the place guess as the sublocation."""
    levels: dict[int, Place] = {}
    for place_id in observation.place_ids:
        place = places.get(place_id)
        if place is not None and place.admin_level is not None:
            levels.setdefault(place.admin_level, place)
    country, state, county, town = (levels.get(level) for level in (0, 10, 20, 30))
    below = [p for p in (state, county, town) if p is not None]
    names = {
        "Xmp.photoshop.Country": country.name if country else None,
        "Xmp.iptc.CountryCode": country_code(country, below),
        "Xmp.photoshop.State": state.name if state else None,
        "Xmp.photoshop.City": (town or county).name if town or county else None,
        "Xmp.iptc.Location": observation.place_guess,
    }
    return {key: value for key, value in names.items() if value}


def _merged(
    held: Iterable[tuple[str, str]], changes: Iterable[tuple[str, str | None]]
) -> tuple[tuple[str, str], ...]:
    """(key, value) pairs a photo holds once changes are applied (None removes), sorted."""
    values = {**dict(held), **dict(changes)}
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


# The EXIF GPS properties --geotag writes into JPEG, PNG and TIFF files, and removes.
EXIF_POSITION_KEYS = tuple(
    f"Exif.GPSInfo.GPS{name}"
    for name in (
        "LatitudeRef",
        "Latitude",
        "LongitudeRef",
        "Longitude",
        "MapDatum",
        "HPositioningError",
    )
)


XMP_POSITION_KEYS = ("Xmp.exif.GPSLatitude", "Xmp.exif.GPSLongitude", "Xmp.exif.GPSMapDatum")


@dataclass(frozen=True)
class Update:
    """What to write into one photo (or its sidecar); None leaves a property as it is.
    dissociate=True removes this tool's ids and caption note and marks the file."""

    photo: LocalPhoto
    tags: InatTags | None  # None: the ids stay as they are
    keywords: tuple[str, ...] | None  # None: dc:subject stays as it is
    old_caption: str | None  # the keyword of ours that the caption replaces (or removes)
    caption: str | None
    hierarchy: tuple[str, ...] | None = None  # lr:hierarchicalSubject, with our entry
    hierarchy_entry: str | None = None  # our entry in it, recorded in TAG_HIERARCHY_CAPTION
    darwin_core: tuple[tuple[str, str | None], ...] = ()  # terms to set; None removes one
    written_darwin_core: tuple[tuple[str, str], ...] | None = None  # TAG_DARWIN_CORE anew
    dissociate: bool | None = None  # True: remove our ids, mark; False: clear the mark
    position: Position | None = None  # --geotag: the position to write (ours from then on)
    drop_position: bool = False  # remove the position this tool wrote, and its record
    forget_position: bool = False  # remove only the record (the user changed the position)
    position_reason: str = ""  # why the position this tool wrote is removed
    location_names: tuple[tuple[str, str | None], ...] = ()  # fields to set; None removes one
    written_location_names: tuple[tuple[str, str], ...] | None = None  # TAG_LOCATION_NAMES

    def applied(self) -> LocalPhoto:
        """The photo as it reads once the update is written."""
        photo = self.photo
        where = "xmp_location" if photo.sidecar is not None else "location"
        if self.position is not None:
            point, private = self.position.point, self.position.private
            photo = dataclasses.replace(
                photo, **{where: point}, written_position=point, written_private=private
            )
        elif self.drop_position:
            photo = dataclasses.replace(photo, **{where: None}, written_position=None)
        elif self.forget_position:
            photo = dataclasses.replace(photo, written_position=None)
        if self.location_names:
            held = _merged(photo.location_names, self.location_names)
            photo = dataclasses.replace(photo, location_names=held)
        if self.written_location_names is not None:
            photo = dataclasses.replace(photo, written_location_names=self.written_location_names)
        if self.dissociate is not None:
            photo = dataclasses.replace(photo, dissociated=self.dissociate)
        if self.dissociate:
            photo = dataclasses.replace(photo, tags=None, written_caption=None)
        elif self.tags is not None:
            photo = dataclasses.replace(photo, tags=self.tags)
        if self.keywords is not None:
            photo = dataclasses.replace(photo, keywords=self.keywords, written_caption=self.caption)
        if self.hierarchy is not None:
            photo = dataclasses.replace(
                photo, hierarchy=self.hierarchy, written_hierarchy=self.hierarchy_entry
            )
        if self.darwin_core:
            photo = dataclasses.replace(
                photo, darwin_core=_merged(photo.darwin_core, self.darwin_core)
            )
        if self.written_darwin_core is not None:
            photo = dataclasses.replace(photo, written_darwin_core=self.written_darwin_core)
        return photo

    def xmp_changes(self) -> dict[str, Any]:
        """The update as pyexiv2's modify_xmp takes it (None deletes a property)."""
        changes: dict[str, Any] = {}
        if self.dissociate:
            for tag in (TAG_OBSERVATION, TAG_OBSERVATION_PHOTO, TAG_PHOTO, TAG_CAPTION):
                changes[tag] = None  # pyexiv2 deletes a property set to None
            changes[TAG_DISSOCIATED] = "True"
        elif self.dissociate is not None:
            changes[TAG_DISSOCIATED] = None
        if self.tags is not None:
            changes[TAG_OBSERVATION] = str(self.tags.observation)
            changes[TAG_OBSERVATION_PHOTO] = (
                str(self.tags.observation_photo) if self.tags.observation_photo else None
            )
            changes[TAG_PHOTO] = str(self.tags.photo) if self.tags.photo else None
        if self.keywords is not None:
            changes[TAG_SUBJECT] = list(self.keywords) or None  # none left: no empty bag
            changes[TAG_CAPTION] = self.caption
        if self.hierarchy is not None:
            changes[TAG_HIERARCHY] = list(self.hierarchy)
            changes[TAG_HIERARCHY_CAPTION] = self.hierarchy_entry
        changes.update(self.darwin_core)
        if self.written_darwin_core is not None:
            prefix = f"Xmp.{DWC_PREFIX}."
            record = [f"{k.removeprefix(prefix)}={v}" for k, v in self.written_darwin_core]
            changes[TAG_DARWIN_CORE] = record or None
        if self.position is not None:
            changes[TAG_POSITION] = self.position.record
        elif self.drop_position or self.forget_position:
            changes[TAG_POSITION] = None
        if self.photo.sidecar is not None and self.position is not None:
            changes["Xmp.exif.GPSLatitude"] = xmp_coordinate(self.position.lat, "N", "S")
            changes["Xmp.exif.GPSLongitude"] = xmp_coordinate(self.position.lng, "E", "W")
            changes["Xmp.exif.GPSMapDatum"] = "WGS-84"
        elif self.photo.sidecar is not None and self.drop_position:
            changes.update(dict.fromkeys(XMP_POSITION_KEYS))
        changes.update(self.location_names)
        if self.written_location_names is not None:
            record = [f"{k}={v}" for k, v in self.written_location_names]
            changes[TAG_LOCATION_NAMES] = record or None
        return changes

    def exif_changes(self) -> dict[str, str | None]:
        """The EXIF GPS to write (None deletes): into the file itself, or into the EXIF that
        exiv2 mirrors a sidecar's exif: properties in, and writes back over them."""
        if self.drop_position:
            return dict.fromkeys(EXIF_POSITION_KEYS)
        if self.position is None:
            return {}
        lat, lng, accuracy = self.position.lat, self.position.lng, self.position.accuracy
        changes: dict[str, str | None] = {
            "Exif.GPSInfo.GPSLatitudeRef": "S" if lat < 0 else "N",
            "Exif.GPSInfo.GPSLatitude": exif_coordinate(lat),
            "Exif.GPSInfo.GPSLongitudeRef": "W" if lng < 0 else "E",
            "Exif.GPSInfo.GPSLongitude": exif_coordinate(lng),
            "Exif.GPSInfo.GPSMapDatum": "WGS-84",
            "Exif.GPSInfo.GPSHPositioningError": None,  # a moved position's old accuracy goes
        }
        in_jpeg = self.photo.sidecar is None and self.photo.path.suffix.lower() in JPEG_SUFFIXES
        if accuracy is not None and in_jpeg:
            changes["Exif.GPSInfo.GPSHPositioningError"] = f"{accuracy}/1"
        return changes


def plan_update(
    photo: LocalPhoto,
    tags: InatTags | None,
    history: Collection[str],
    caption: str | None,
    *,
    hierarchy: str | None = None,
    darwin_core: Mapping[str, str] | None = None,
    position: Position | None = None,
    drop_position: bool = False,
    position_reason: str = "",
    names: Mapping[str, str] | None = None,
) -> Update | None:
    """What must change so that photo holds tags, caption and, when given, the hierarchical
    keyword, Darwin Core terms, a position (geotag_decision's) and location names; None when
    nothing must."""
    keywords = None
    old_caption = None
    if caption is not None:
        old_caption = owned_caption(photo, history)
        keywords = updated_entries(photo.keywords, old_caption, photo.written_caption, caption)
    hierarchy_list = None
    if hierarchy is not None:
        ours = photo.written_hierarchy if photo.written_hierarchy in photo.hierarchy else None
        hierarchy_list = updated_entries(photo.hierarchy, ours, photo.written_hierarchy, hierarchy)
    terms: dict[str, str | None] = {}
    record = None
    if darwin_core is not None:
        current, written = dict(photo.darwin_core), dict(photo.written_darwin_core)
        terms = updated_darwin_core(current, written, darwin_core)
        after = {**current, **terms}
        # Ours from now on: what holds our value, and what the user removed (kept out).
        owned = tuple(
            sorted((k, v) for k, v in darwin_core.items() if after.get(k, written.get(k)) == v)
        )
        record = owned if owned != photo.written_darwin_core else None
    name_changes: dict[str, str | None] = {}
    names_record = None
    if names is not None:  # the same rule as Darwin Core: ours replaced, the user's kept
        current, written = dict(photo.location_names), dict(photo.written_location_names)
        name_changes = updated_darwin_core(current, written, names)
        after = {**current, **name_changes}
        owned = tuple(sorted((k, v) for k, v in names.items() if after.get(k, written.get(k)) == v))
        names_record = owned if owned != photo.written_location_names else None
    new_tags = tags if tags is not None and tags != photo.tags else None
    # Associated again (--associate, or matched under --recompute): the user's earlier
    # --dissociate no longer holds.
    undo = False if tags is not None and photo.dissociated else None
    parts = (new_tags, keywords, hierarchy_list, record, undo, position, names_record)
    unchanged = all(part is None for part in parts) and not drop_position
    if not terms and not name_changes and unchanged:
        return None
    return Update(
        photo,
        new_tags,
        keywords,
        old_caption,
        caption,
        hierarchy_list,
        hierarchy if hierarchy_list is not None else None,
        tuple(terms.items()),
        record,
        dissociate=undo,
        position=position,
        drop_position=drop_position,
        position_reason=position_reason if drop_position else "",
        location_names=tuple(name_changes.items()),
        written_location_names=names_record,
    )


def plan_dissociation(photo: LocalPhoto, history: Collection[str]) -> Update | None:
    """What removes this tool's ids, caption, position and location names from photo, keeping
    every keyword, position and name of the user's; None when the photo is already
    dissociated and holds nothing of ours."""
    owned = owned_caption(photo, history)
    keywords = tuple(k for k in photo.keywords if k != owned) if owned is not None else None
    drop = photo.written_position is not None and holds_own_position(photo)
    forget = photo.written_position is not None and not drop
    current = dict(photo.location_names)
    names = tuple((k, None) for k, v in photo.written_location_names if current.get(k) == v)
    names_record = () if photo.written_location_names else None
    ours_left = drop or forget or names or names_record is not None
    if photo.dissociated and photo.tags is None and keywords is None and not ours_left:
        return None
    return Update(
        photo,
        None,
        keywords,
        owned,
        None,
        dissociate=True,
        drop_position=drop,
        forget_position=forget,
        location_names=names,
        written_location_names=names_record,
    )


# Keyword lists are unordered bags in XMP; pyexiv2 writes every new list as an ordered Seq.
_BAG_PROPERTIES = re.compile(
    r"(<(dc:subject|lr:hierarchicalSubject)>\s*)<rdf:Seq>(.*?)</rdf:Seq>", re.DOTALL
)


# What a new sidecar starts from: an XMP packet with nothing in it.
EMPTY_XMP_PACKET = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>'
    b'</x:xmpmeta><?xpacket end="w"?>'
)


def write_update(update: Update) -> None:
    """The one way the tool writes: an update into its photo, or into the photo's XMP sidecar
    (updated in place or created), atomically; raises OSError when it cannot be done."""
    write_photo_metadata(
        update.photo.path, update.xmp_changes(), update.photo.sidecar, update.exif_changes()
    )


def apply_update(
    update: Update,
    index: LocalIndex,
    console: Console,
    thumbnails: ThumbnailCache | None = None,
) -> bool:
    """Write one update and remember what the file holds now; False when the write failed
    (reported). thumbnails: the log's cache, whose thumbnail of the photo moves to its new key
    (its pixels are the same)."""
    made = thumbnails.local_file(update.photo) if thumbnails else None
    try:
        write_update(update)
    except OSError as error:
        console.file_error(update.photo.path, f"cannot write metadata ({error})")
        return False
    index.remember(update.applied())
    if thumbnails is not None and made is not None:
        thumbnails.carry_over(made, update.photo)
    return True


def write_photo_metadata(
    path: Path,
    changes: Mapping[str, Any],
    sidecar: Path | None = None,
    exif: Mapping[str, str | None] | None = None,
) -> None:
    """Apply XMP changes (and EXIF ones, into the file itself) to the picture at path, or to
    its sidecar when it has one; the file is replaced (or the sidecar created) atomically.
    Raises OSError on failure."""
    if sidecar is None:
        if picture_kind(path) != "plain":  # RAW and HEIF files are never written
            raise OSError(f"{format_name(path)} files are not written; their tags go in a sidecar")
        if not os.access(path, os.W_OK):  # the rename below would replace it all the same
            raise OSError("the file is read-only")
        replace_file_atomically(path, _updated_metadata(path.read_bytes(), changes, exif))
    elif sidecar.exists():
        # No write bit counts too: photo managers mark sidecars read-only so, and root would
        # pass os.access.
        if not os.access(sidecar, os.W_OK) or not sidecar.stat().st_mode & 0o222:
            raise OSError(f"the sidecar {sidecar.name} is read-only")
        replace_file_atomically(sidecar, _updated_metadata(sidecar.read_bytes(), changes, exif))
    else:  # a new sidecar starts as a copy of the XMP inside the picture, as exiftool's would
        seed = embedded_xmp(path) or EMPTY_XMP_PACKET
        create_file_atomically(sidecar, _updated_metadata(seed, changes, exif), like=path)


def embedded_xmp(path: Path) -> bytes | None:
    """The XMP packet a picture carries inside it (keywords, title, rating...), or None: what
    a new sidecar starts from, so that a photo manager that reads the sidecar loses nothing."""
    import pyexiv2

    packet = ""
    with contextlib.suppress(OSError, RuntimeError, ValueError, UnicodeDecodeError):
        image = pyexiv2.ImageData(path.read_bytes())
        try:
            packet = image.read_raw_xmp()
        finally:
            image.close()
    if not packet.strip() and picture_kind(path) == "heif":
        import pillow_heif

        with contextlib.suppress(OSError, RuntimeError, ValueError):
            _register_heif_decoder()
            raw = pillow_heif.open_heif(path).info.get("xmp") or b""
            packet = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    packet = packet.strip().strip("\0")
    return packet.encode() if packet.startswith(("<?xpacket", "<x:xmpmeta")) else None


def _updated_metadata(
    original: bytes, changes: Mapping[str, Any], exif: Mapping[str, str | None] | None = None
) -> bytes:
    """original (a picture or an XMP packet) with changes (and EXIF changes) applied and read
    back; OSError if exiv2 fails, or the result would not read back as written or would
    lose the EXIF."""
    import pyexiv2

    try:
        image = pyexiv2.ImageData(original)
        try:
            if exif:
                present = image.read_exif()  # exiv2 fails on deleting what is not there
                image.modify_exif({k: v for k, v in exif.items() if v is not None or k in present})
            image.modify_xmp(dict(changes))
            packet = image.read_raw_xmp()
            as_bags = _BAG_PROPERTIES.sub(r"\1<rdf:Bag>\3</rdf:Bag>", packet)
            if as_bags != packet:
                image.modify_raw_xmp(as_bags)
            updated = image.get_bytes()
        finally:
            image.close()
        check = pyexiv2.ImageData(updated)  # never replace a file with something unreadable
        try:
            written = check.read_xmp()
            position = parse_gps(check.read_exif()) if exif else None
        finally:
            check.close()
    except RuntimeError as error:
        raise OSError(f"exiv2 could not update the metadata ({error})") from None
    observation = changes.get(TAG_OBSERVATION)
    if observation is not None and written.get(TAG_OBSERVATION) != observation:
        raise OSError("the metadata did not read back as written")
    dissociated = changes.get(TAG_DISSOCIATED) == "True"
    if dissociated and (TAG_OBSERVATION in written or TAG_DISSOCIATED not in written):
        raise OSError("the metadata did not read back as written")
    if _jpeg_exif(original) is not None and _jpeg_exif(updated) is None:
        raise OSError("exiv2 cannot read the EXIF block and would drop it")
    wanted = parse_location(str(changes.get(TAG_POSITION)).partition(" ")[0])
    if exif and wanted is not None and not same_position(position, wanted):
        raise OSError("the GPS position did not read back as written")
    return updated


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


# ---------------------------------------------------------------------------
# 13. Console lines
#    What the console says, in words: the Tally of what changed and its summary line,
#    a line for each association, update, tie, part, near miss and unassociated upload,
#    and the --associate command that confirms a near miss.
# ---------------------------------------------------------------------------

BY_NAME = "matched by file name"  # said of an association the original file name decided


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
    deferred: dict[dt.date, int] = field(default_factory=dict)  # day -> uploads not downloaded

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


def seconds_apart(photo: LocalPhoto, observation: Observation) -> int | None:
    """Whole seconds between the photo and the observation's recorded time."""
    if observation.observed_at is None:
        return None
    return round(abs((photo.corrected_time - observation.observed_at).total_seconds()))


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
    # The caption is the keyword this tool wrote; the user's own keywords are no caption.
    caption = photo.written_caption
    described = "without caption" if caption is None else f"with caption '{caption}'"
    how = comparison.describe()
    if association.by_name:
        how = ", ".join(filter(None, [how, BY_NAME]))
    if association.grounds:
        how = "; ".join(filter(None, [how, f"decided by {association.grounds}"]))
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
    old, new = update.old_caption, update.caption
    if old is None and update.photo.keywords and update.keywords is not None:
        # No caption of ours yet, but the user's keywords: the whole subject, before and after.
        old, new = ", ".join(update.photo.keywords), ", ".join(update.keywords)
    return (
        f"{prefix}{show_path(update.photo.path)}: Updating subject from '{old}'"
        f" to '{new}'{_sidecar_note(update)}."
    )


def _sidecar_note(update: Update) -> str:
    sidecar = update.photo.sidecar
    return f" (sidecar {show_path(Path(sidecar.name))})" if sidecar is not None else ""


def update_lines(update: Update, dry_run: bool) -> list[str]:
    """The console lines for an update: its caption, hierarchical keywords, Darwin Core."""
    prefix = f"{'(dry run) ' if dry_run else ''}{show_path(update.photo.path)}:"
    lines = [update_line(update, dry_run)] if update.keywords is not None else []
    if update.hierarchy is not None:
        entries = ", ".join(repr(h) for h in update.hierarchy)
        lines.append(f"{prefix} Hierarchical keywords now {entries}{_sidecar_note(update)}.")
    if update.darwin_core:
        terms = ", ".join(key.split(".")[-1] for key, _ in update.darwin_core)
        lines.append(f"{prefix} Darwin Core terms {terms}{_sidecar_note(update)}.")
    if update.position is not None and not update.dissociate:
        accuracy = update.position.accuracy
        within = f" (within {accuracy} m)" if accuracy is not None else ""
        verb = "moved to" if update.photo.written_position is not None else "set to"
        lines.append(
            f"{prefix} GPS position {verb} {update.position.text.replace(',', ', ')}{within}"
            f" from the observation{_sidecar_note(update)}."
        )
    elif update.drop_position and not update.dissociate:
        why = f" ({update.position_reason})" if update.position_reason else ""
        lines.append(f"{prefix} GPS position this tool wrote removed{why}{_sidecar_note(update)}.")
    if update.location_names and not update.dissociate:
        changed = sorted(update.location_names, key=lambda item: LOCATION_FIELDS.index(item[0]))
        shown = [f"{key.split('.')[-1]} {value!r}" for key, value in changed if value]
        gone = [key.split(".")[-1] for key, value in changed if value is None]
        what = ", ".join(shown + ([f"removed {', '.join(gone)}"] if gone else []))
        lines.append(f"{prefix} Location names {what}{_sidecar_note(update)}.")
    return lines


def not_geotagged_line(photo: LocalPhoto, reason: str) -> str:
    """The console line saying why --geotag left a photo without a position."""
    return f"{show_path(photo.path)}: not geotagged: {reason}."


def pairs_line(photos: Sequence[LocalPhoto]) -> str | None:
    """The console line saying how many RAW+JPEG pairs were joined; None when none."""
    pairs = sum(1 for p in photos if p.partners)
    return f"{pairs} RAW+JPEG pair(s): each compared once, every file tagged." if pairs else None


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


# A refusal this close below the threshold (or a tie) is a near miss: after the run that found
# it, it is listed with the known rows, with its command, run after run, until the user
# confirms it (--associate) or sets the file aside (--dissociate). Farther ones are listed
# once, then counted.
NEAR_MISS = 0.10


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


def near_miss_line(refusal: Refusal, threshold: float, user: str) -> str | None:
    """The console line for a refusal just below the threshold: its score and the command
    that confirms it (the log has them too); None for any other refusal."""
    candidate, comparison = refusal.candidate, refusal.comparison
    if refusal.reason != Reason.BELOW_THRESHOLD or candidate is None or comparison is None:
        return None
    if comparison.score < threshold - NEAR_MISS:
        return None
    return (
        f"Near miss: '{show_path(refusal.photo.path)}' and photo id {candidate.photo.id},"
        f" similarity {comparison.score * 100:.1f}%, below the threshold of"
        f" {threshold * 100:.4g}%; if they are the same picture, run:"
        f" {confirm_command(user, refusal.photo.path, candidate.photo.id)}"
    )


def budget_line(tally: Tally, ledger: DownloadLedger) -> str | None:
    """The one line saying that the download budget stopped the run early; None if not."""
    if not tally.deferred:
        return None
    resume = dt.datetime.fromtimestamp(ledger.resumes_at()).strftime("%Y-%m-%d %H:%M")
    return (
        f"Download budget reached ({ledger.describe()}): {len(tally.deferred)} day(s) with"
        f" {sum(tally.deferred.values())} photo(s) still to download are left for a later run,"
        f" which can go on after {resume}."
    )


def clock_setting_line(offset: dt.timedelta) -> str:
    """What --time_offset does to this run's photos, said once."""
    if not offset:
        return "Camera clock taken as right (--time_offset 0): no clock offset is looked for."
    return (
        f"Camera clock taken as {describe_offset(offset)} (--time_offset): every photo's time"
        f" is moved {'back' if offset > dt.timedelta(0) else 'forward'} by that."
    )


# ---------------------------------------------------------------------------
# 14. The HTML log
#    Rows built from outcomes, thumbnails made (and cached on disk) only when a log is
#    written and only for rows worth a look (a photo simply not uploaded is a line of
#    text), one page in sections with inline filters and every piece of text escaped.
# ---------------------------------------------------------------------------


LOG_SECTIONS = {  # key -> heading, in the order the page shows them
    "new": "New associations",
    "changed": "Changed captions",
    "refused": "Refusals",
    "tie": "Ties",
    "part": "Uploads that show part of an associated photo",
    "lone": "iNaturalist photos without a local photo",
    "error": "Errors",
    "offset": "Clock offsets",
    "known": "Known, unchanged",
}


# Why a photo is counted, not listed, in a rerun's log: an earlier log showed it, unchanged.
UNLISTED_COMPARED = "Compared in vain before with the same uploads"
UNLISTED_NO_CANDIDATE = "Still without an iNaturalist photo near its time"


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail JPEG in the thumbnail cache, and the box (a crop) to outline on it."""

    file: Path
    outline: Sequence[Point] | None = None
    aspect: float = 4 / 3  # the picture's width / height: a rotated box needs it


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
    by_name: bool = False  # associated at NAME_THRESHOLD: the score is not shown as too low
    near_miss: bool = False  # a refusal within NEAR_MISS or a tie: awaits the user's word


@dataclass
class LogBook:
    """What the HTML log will show, collected while the run goes on."""

    rows: list[LogRow] = field(default_factory=list)
    unlisted: Counter[str] = field(default_factory=Counter)  # reason -> photos, not listed


class LogThumbnails:
    """Thumbnails for log rows: from the thumbnail cache, else made from the pictures the run
    decoded or the uploads already downloaded (never a download for the log)."""

    def __init__(self, pictures: PictureSource, store: ThumbnailCache) -> None:
        self.pictures = pictures
        self.store = store

    def local(self, photo: LocalPhoto, outline: Sequence[Point] | None = None) -> Thumbnail | None:
        target = self.store.local(photo, lambda: self.pictures.local_thumbnail(photo))
        if target is None:
            return None
        if outline is None:
            return Thumbnail(target)
        try:
            with Image.open(target) as picture:  # reads the header only
                return Thumbnail(target, outline, picture.width / picture.height)
        except OSError:
            return Thumbnail(target)

    def prepare(self, photos: Sequence[LocalPhoto]) -> None:
        """Make the missing thumbnails of these photos on every core (a day's photos that
        were never compared, whose pictures no comparison decoded)."""
        missing = [p for p in photos if (f := self.store.local_file(p)) and not f.exists()]
        if len(missing) > 1:
            with ThreadPoolExecutor(max_workers=COMPARE_WORKERS) as pool:
                list(pool.map(self.local, missing))

    def upload(self, photo: InatPhoto) -> Thumbnail | None:
        target = self.store.upload_file(photo.id, self.pictures.sizes[0])
        if not target.exists():
            picture = self.pictures.downloaded_upload(photo)
            if picture is None or not self.store.save(target, picture):
                return None
        return Thumbnail(target)


def comparison_row(
    section: str,
    photo: LocalPhoto,
    candidate: Candidate,
    comparison: Comparison,
    thumbnails: LogThumbnails,
    note: str = "",
    command: str = "",
    by_name: bool = False,
    pictured: bool = True,
    near_miss: bool = False,
) -> LogRow:
    """A log row for a compared pair, saying what the alignment found; with pictured False,
    a line of text without thumbnails. A near miss (a tie, a refusal) awaits the user's word."""
    alignment = comparison.alignment
    if by_name:
        note = "; ".join(filter(None, [BY_NAME, note]))
    note = "; ".join(filter(None, [comparison.describe(), note]))
    if comparison.prefiltered:
        note = "; ".join(filter(None, [note, "thumbnail check only"]))
    observation = candidate.observation
    return LogRow(
        section,
        photo,
        thumbnails.local(photo, alignment.outline if alignment else None) if pictured else None,
        candidate,
        thumbnails.upload(candidate.photo) if pictured else None,
        seconds_apart(photo, observation),
        describe_distance(photo, observation),
        comparison.score,
        note,
        photo.corrected_time.date(),
        command,
        by_name,
        near_miss=near_miss,
    )


def worth_a_look(refusal: Refusal, threshold: float) -> bool:
    """Whether a refusal's log row shows the pictures: a near miss, which a person may confirm.
    A photo that was not uploaded (no upload near it, a low score) or that lost to a sibling
    is a line of text: the log grows with what needs a look, not with the photos compared."""
    return (
        refusal.comparison is not None
        and refusal.reason not in (Reason.TAKEN_BY_ANOTHER, Reason.NAMES_ANOTHER)
        and refusal.comparison.score >= threshold - NEAR_MISS
    )


def day_log_rows(
    outcome: DayOutcome,
    thumbnails: LogThumbnails,
    user: str,
    note: str = "",
    threshold: float = SSIM_THRESHOLD,
) -> list[LogRow]:
    """The log rows of a matched day: associations and parts, ties, refusals (ties and
    refusals with the command that confirms them, pictured only when worth_a_look); note is
    added to each tie and refusal."""
    rows = [
        comparison_row(
            "new",
            a.photo,
            a.candidate,
            a.comparison,
            thumbnails,
            f"decided by {a.grounds}" if a.grounds else "",
            by_name=a.by_name,
        )
        for a in outcome.associations
    ]
    for part in outcome.parts:
        area = part.comparison.area
        rows.append(
            comparison_row(
                "part", part.photo, part.candidate, part.comparison, thumbnails, _part_note(area)
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
                    near_miss=True,
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
                    pictured=worth_a_look(refusal, threshold),
                    near_miss=True,
                )
            )
        else:
            rows.append(
                LogRow(
                    "refused",
                    refusal.photo,
                    None,  # nothing was compared: not worth a picture
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
    # Plain CSS over the picture, so no thumbnail is re-encoded and no markup but spans.
    box = outline_style(thumbnail.outline, thumbnail.aspect)
    return f'<span class="thumb">{image}<span class="crop" style="{box}"></span></span>'


def outline_style(outline: Sequence[Point], aspect: float) -> str:
    """CSS that puts a box on outline's corners over a picture aspect (width / height) wide,
    turned by the angle of its top edge when the upload was straightened."""
    (x0, y0), (x1, y1), (x2, y2), _ = outline
    angle = math.degrees(math.atan2(y1 - y0, (x1 - x0) * aspect))  # in square pixels
    if abs(angle) < STRAIGHT_MIN:
        xs, ys = [x for x, _ in outline], [y for _, y in outline]
        left, top, right, bottom = (100 * v for v in (min(xs), min(ys), max(xs), max(ys)))
        return (
            f"left:{left:.1f}%;top:{top:.1f}%;width:{right - left:.1f}%;height:{bottom - top:.1f}%"
        )
    # Percentages of width and height measure the sides; the box is centred, then turned.
    width = math.hypot(x1 - x0, (y1 - y0) / aspect)
    height = math.hypot((x2 - x1) * aspect, y2 - y1)
    centre_x = sum(x for x, _ in outline) / 4
    centre_y = sum(y for _, y in outline) / 4
    return (
        f"left:{100 * centre_x:.1f}%;top:{100 * centre_y:.1f}%;width:{100 * width:.1f}%;"
        f"height:{100 * height:.1f}%;transform:translate(-50%,-50%) rotate({angle:.1f}deg)"
    )


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
        low = ' class="low"' if row.score < threshold and not row.by_name else ""
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


def _known_counts(known: Sequence[LogRow], unlisted: Mapping[str, int]) -> str:
    """The known section's list items: how many of each kind, listed or only counted."""
    open_ = sum(1 for r in known if r.near_miss)
    tagged = sum(1 for r in known if r.local and r.local.tags and not r.near_miss)
    aside = sum(1 for r in known if r.local and not r.local.tags and not r.near_miss)
    counts = [
        (open_, "Near misses and ties of earlier runs, not yet confirmed (with the command)"),
        (tagged, "Already tagged, caption current"),
        (aside, "Set aside with --dissociate"),
        (len(known) - open_ - tagged - aside, "iNaturalist photos an earlier log listed"),
        *((n, f"{reason} (counted, not listed)") for reason, n in sorted(unlisted.items())),
    ]
    return "".join(f"<li>{html.escape(text)}: {n}</li>" for n, text in counts if n)


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
        yield (
            '<section id="known" data-section="known">'
            f"<h2>{html.escape(LOG_SECTIONS['known'])} ({len(known) + sum(unlisted.values())})"
            f"</h2>\n<ul>{_known_counts(known, unlisted)}</ul>\n"
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
# 15. The run
#    The run from the walk to the summary, the I/O edge that wires the phases together:
#    observations loaded, days matched in turn (process_days), updates applied, the log
#    and the summary written.
# ---------------------------------------------------------------------------


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
    lineages: Mapping[int, Lineage] = field(default_factory=dict)  # taxon id -> kingdom..taxon
    places: Mapping[int, Place] = field(default_factory=dict)  # for --location-names
    notes: dict[Path, str] = field(default_factory=dict)  # why a photo was not geotagged
    known: Mapping[int, Observation] = field(default_factory=dict)  # observations of tagged files
    history: Mapping[int, set[str]] = field(default_factory=dict)  # captions each one had

    @property
    def thumbnails(self) -> LogThumbnails:
        """The log's thumbnails: the cache the pictures save them to as they decode."""
        store = self.pictures.log_thumbnails or ThumbnailCache(self.options.cache)
        return LogThumbnails(self.pictures, store)


def perform_update(state: RunState, update: Update, counted: bool = True) -> bool:
    """Say, write (unless dry run) and count one update; False when the write failed.

    counted=False: a RAW+JPEG partner's update, which the summary does not count again.
    """
    options, console = state.options, state.console
    for line in update_lines(update, options.dry_run):
        console.report(line)
    # No log, no thumbnail to keep: log_thumbnails is None then.
    thumbnails = state.pictures.log_thumbnails
    if not options.dry_run and not apply_update(update, state.index, console, thumbnails):
        return False
    if counted:
        state.tally.count(update)
    return True


def update_files(
    state: RunState,
    photo: LocalPhoto,
    tags: InatTags | None,
    observation: Observation,
    history: Collection[str],
) -> tuple[bool, Update | None]:
    """Make photo and each RAW+JPEG partner (the same ids, their own keywords) hold tags and
    the observation's identification: (every write went through, photo's own update if made).
    """
    options = state.options
    lineage = state.lineages.get(observation.taxon_id or 0)
    hierarchy = hierarchy_entry(lineage) if lineage and options.hierarchical_keywords else None
    names = location_names(observation, state.places) if options.location_names else None
    done, own = True, None
    for file in (photo, *photo.partners):
        darwin_core = None
        if options.darwin_core and observation.taxon_id is not None:
            # A position this tool wrote is the observation's, not the photo's own.
            own_gps = None if holds_own_position(file) else file.location
            darwin_core = darwin_core_terms(observation, lineage, own_gps)
        position, drop, why = None, False, ""
        if options.geotag:
            position, drop, why = geotag_decision(file, observation, options.geotag_private)
        update = plan_update(
            file,
            tags if file is photo else tags or photo.tags,
            history,
            observation.caption,
            hierarchy=hierarchy,
            darwin_core=darwin_core,
            position=position,
            drop_position=drop,
            position_reason=why,
            names=names,
        )
        written = update is None or perform_update(state, update, counted=file is photo)
        done = done and written
        if update is not None and written and file is photo:
            own = update
        if why and not drop:
            say_not_geotagged(state, file, why)
    return done, own


def say_not_geotagged(state: RunState, file: LocalPhoto, why: str) -> None:
    """Say why --geotag left the file without a position: in the log every run, on the
    console once for the file as it now is (--quiet or not), after any write to it."""
    state.notes[file.path] = f"not geotagged: {why}"
    line, memory = not_geotagged_line(file, why), state.console.reported_before
    if memory is None or not memory(file.path, line):
        state.console.report(line)


def refresh_known(
    state: RunState, photo: LocalPhoto, observation: Observation | None, history: Collection[str]
) -> None:
    """A photo already tagged: refresh its caption if the identification changed."""
    if observation is None:
        state.console.report(gone_line(photo), path=photo.path)
        if state.log is not None:
            row = known_row(photo, None, state.thumbnails, gone_line(photo))
            state.log.rows.append(dataclasses.replace(row, section="changed"))
        return
    state.tally.associated_locals.add(photo.path)
    if photo.tags is not None and photo.tags.photo is not None:
        state.tally.associated_uploads.add(photo.tags.photo)
    _, update = update_files(state, photo, None, observation, history)
    if state.log is None:
        return
    if update is not None and update.keywords:
        state.log.rows.append(
            changed_identification_row(update.applied(), observation, state.thumbnails)
        )
    else:
        state.log.rows.append(known_row(photo, observation, state.thumbnails))


def refresh_tagged(state: RunState, photo: LocalPhoto) -> None:
    """refresh_known for a photo that holds ids, with its observation as iNaturalist has it."""
    assert photo.tags is not None
    observation = photo.tags.observation
    refresh_known(state, photo, state.known.get(observation), state.history.get(observation, set()))


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


def keep_file_associations(
    state: RunState,
    outcome: DayOutcome,
    photos: Sequence[LocalPhoto],
    candidates: Sequence[Candidate],
) -> DayOutcome:
    """--recompute: a file that carries the ids of an upload the comparison gave to nobody
    keeps that association (one the user confirmed with --associate); outcome without its
    refusal."""
    taken = {a.photo.path for a in outcome.associations}
    given = {a.candidate.photo.id for a in (*outcome.associations, *outcome.parts)}
    left = {c.photo.id for c in candidates} - given - state.tally.associated_uploads
    kept: set[Path] = set()
    for photo in photos:
        tags = photo.tags
        if tags is None or photo.path in taken or tags.photo not in left:
            continue
        left.discard(tags.photo)  # two files carrying one id: the first keeps it
        kept.add(photo.path)
        state.console.say(
            f"{show_path(photo.path)}: keeps its association with photo id {tags.photo}, which"
            " the file carries (not found again by comparing; --dissociate takes it back)."
        )
        refresh_tagged(state, photo)
    refusals = tuple(r for r in outcome.refusals if r.photo.path not in kept)
    return dataclasses.replace(outcome, refusals=refusals)


def apply_day(state: RunState, outcome: DayOutcome, candidates: Sequence[Candidate]) -> None:
    """Report a matched day, write its associations, remember what was compared in vain."""
    options, console, tally = state.options, state.console, state.tally
    if outcome.clock_offset is not None:
        console.say(offset_line(outcome.day, outcome.clock_offset))
    for tie in outcome.ties:
        console.say(tie_line(tie))
    written: dict[Path, LocalPhoto] = {}  # as the log shows them: with the new caption
    for association in outcome.associations:
        console.report(found_line(association))
        photo, candidate = association.photo, association.candidate
        observation = candidate.observation
        tags = InatTags(observation.id, candidate.photo.observation_photo_id, candidate.photo.id)
        done, update = update_files(state, photo, tags, observation, ())
        if done:
            tally.associated_locals.add(photo.path)
            tally.associated_uploads.add(candidate.photo.id)
            if update is not None:
                written[photo.path] = update.applied()
    for part in outcome.parts:
        if part.photo.path not in tally.associated_locals:
            continue  # its photo could not be written: the upload stays unassociated
        area = part.comparison.area
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
    for refusal in outcome.refusals:
        line = near_miss_line(refusal, options.ssim_threshold, options.user or "")
        upload = refusal.candidate.photo.id if refusal.candidate else None
        if line is not None and upload not in taken:
            console.say(line)
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


@dataclass(frozen=True)
class NearMiss:
    """An earlier refusal or tie that still awaits the user, with its upload and comparison."""

    candidate: Candidate
    comparison: Comparison
    tie: bool


def near_miss(
    record: RefusalRecord | None, uploads: Mapping[int, Candidate], threshold: float
) -> NearMiss | None:
    """An earlier record that still awaits the user: a tie or a refusal within NEAR_MISS of
    the threshold, fully compared, with an upload still open. A pair refused as another
    shot (its reason unsaid) awaits nothing."""
    if record is None or record.prefiltered or record.upload not in uploads:
        return None
    if record.reason == Reason.UNSAID:
        return None
    if record.score is None or not (record.tie or record.score >= threshold - NEAR_MISS):
        return None
    alignment = None
    if record.box:
        alignment = Alignment(record.box, record.turns, mirrored=record.mirrored)
    return NearMiss(uploads[record.upload], Comparison(record.score, alignment), record.tie)


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
        record = index.refusal_record(refusal.photo)
        if refusal.reason == Reason.COMPARED_BEFORE:
            found = near_miss(record, uploads, threshold)
            if found is None:
                log.unlisted[UNLISTED_COMPARED] += 1
            elif found.tie:
                tied[found.candidate.photo.id].append((refusal.photo, found.comparison))
            else:
                earlier.append(
                    Refusal(
                        refusal.photo, found.candidate, found.comparison, Reason.BELOW_THRESHOLD
                    )
                )
        elif refusal.reason == Reason.NO_CANDIDATE and record is not None:
            # An earlier log showed it: still nothing near its time, or the uploads it was
            # compared with in vain have gone to other photos since (and left the day's open
            # candidates).
            same = record.reason == Reason.NO_CANDIDATE
            log.unlisted[UNLISTED_NO_CANDIDATE if same else UNLISTED_COMPARED] += 1
        else:
            fresh.append(refusal)
    ties = []
    for upload, pairs in tied.items():
        if len(pairs) == 1:  # the other photo of the tie has changed since: a plain refusal
            photo, comparison = pairs[0]
            earlier.append(Refusal(photo, uploads[upload], comparison, Reason.BELOW_THRESHOLD))
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
    unreadable = state.pictures.unreadable  # listed under Errors, with the true reason
    refusals = tuple(r for r in outcome.refusals if r.photo.path not in unreadable)
    outcome = dataclasses.replace(outcome, refusals=refusals)
    threshold = state.options.ssim_threshold
    thumbnails.prepare([r.photo for r in outcome.refusals if worth_a_look(r, threshold)])
    uploads = {c.photo.id: c for c in lonely}
    fresh, earlier, ties = sort_refusals(index, log, outcome.refusals, uploads, threshold)
    today = dataclasses.replace(outcome, refusals=tuple(fresh))
    log.rows += day_log_rows(today, thumbnails, user, threshold=threshold)
    recalled = DayOutcome(outcome.day, ties=tuple(ties), refusals=tuple(earlier))
    for row in day_log_rows(recalled, thumbnails, user, "found by an earlier run", threshold):
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
    records = [(r.photo, RefusalRecord.of(r.reason, r.candidate, r.comparison)) for r in fresh]
    for tie in outcome.ties:
        for photo, comparison in zip(tie.photos, tie.comparisons, strict=True):
            records.append((photo, RefusalRecord.of(Reason.TIE, tie.candidate, comparison)))
    for photo, record in records:
        if photo.path not in state.pictures.unreadable:  # listed and reported again next run
            index.record_refusal(photo.path, record)


def refresh_known_photos(state: RunState, day_photos: Sequence[LocalPhoto]) -> None:
    """The day's photos with ids: their caption checked; those set aside, listed in the log."""
    for photo in day_photos:
        if photo.tags:
            refresh_tagged(state, photo)
        elif photo.dissociated and state.log is not None:
            note = "set aside with --dissociate; compared again only with --recompute"
            state.log.rows.append(known_row(photo, None, state.thumbnails, note))


@dataclass(frozen=True)
class OpenDay:
    """One day to match: its photos and candidates, those without a known association, and
    the pairs planned to be compared first."""

    day: dt.date
    photos: Sequence[LocalPhoto]
    candidates: Sequence[Candidate]
    open_photos: Sequence[LocalPhoto]
    open_candidates: Sequence[Candidate]
    plan: Sequence[tuple[LocalPhoto, Candidate]]


def open_days(
    state: RunState, photos: Sequence[LocalPhoto], observations: Sequence[Observation]
) -> list[OpenDay]:
    """Every day with local photos, in order, with what is still open on it."""
    options = state.options
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
    days = []
    for day in sorted(photos_by_day):
        day_photos, day_candidates = photos_by_day[day], candidates_by_day.get(day, [])
        open_photos = [p for p in day_photos if options.recompute or not (p.tags or p.dissociated)]
        open_candidates = [c for c in day_candidates if c.photo.id not in tagged]
        plan = (
            planned_pairs(open_photos, open_candidates, options, state.index.checked_before)
            if day_candidates
            else []
        )
        days.append(OpenDay(day, day_photos, day_candidates, open_photos, open_candidates, plan))
    return days


def process_days(
    state: RunState,
    photos: Sequence[LocalPhoto],
    observations: Sequence[Observation],
) -> None:
    """Refresh known photos, then match and apply each day, one day at a time."""
    options, console = state.options, state.console
    days = open_days(state, photos, observations)
    # Every upload the days will compare is downloaded in the background from the start, in
    # the days' order: nothing waits on the network while a day is compared.
    ahead = {c.photo.id: c.photo for d in days for _, c in d.plan}
    state.pictures.download_ahead(list(ahead.values()), state.pictures.sizes[0])
    for number, d in enumerate(days):
        state.tally.uploads_seen.update(c.photo.id for c in d.candidates)
        if d.candidates:
            console.say(
                f"{d.day}: {len(d.candidates)} iNat pictures and {len(d.photos)} local pictures."
            )
        if not options.recompute:
            refresh_known_photos(state, d.photos)
        if len(d.open_photos) < len(d.photos) and d.candidates:
            console.say(
                f"{d.day}: {len(d.open_candidates)} iNat pictures and {len(d.open_photos)} local"
                " pictures left after excluding known associations."
            )
        if d.candidates:
            following = next((later for later in days[number + 1 :] if later.candidates), None)
            match_and_apply_day(state, d, following)


def match_and_apply_day(state: RunState, d: OpenDay, following: OpenDay | None = None) -> None:
    """Match one day's open photos and candidates and write what was found; a day whose
    uploads the download budget left out waits for a later run (nothing is decided on a
    guess). The following day's pairs are compared in the background while this day's files
    are written: they are other files, and writing keeps no core busy."""
    options = state.options
    candidates = d.open_candidates if options.recompute else recall_parts(state, d.open_candidates)
    left = {c.photo.id for c in candidates}  # recall_parts may have dropped some
    with state.scorer.day([(p, c) for p, c in d.plan if c.photo.id in left]) as compare:
        outcome = match_day(
            d.day,
            d.open_photos,
            candidates,
            compare,
            options,
            lined_up=compare.lined_up,
            checked_before=state.index.checked_before,
            known_today=not options.recompute and any(p.tags for p in d.photos),
        )
        missing = compare.left_out(candidates)
    if missing:
        state.tally.deferred[d.day] = missing
        return
    if options.recompute:
        outcome = keep_file_associations(state, outcome, d.open_photos, candidates)
    if following is not None:
        state.scorer.expect(following.plan)
    apply_day(state, outcome, candidates)


def load_observations(
    options: Options,
    client: InatClient,
    store: ObservationStore,
    photos: Sequence[LocalPhoto],
    other_days: Collection[dt.date] = (),
) -> tuple[list[Observation], dict[int, Observation], dict[int, set[str]]]:
    """Sync the store for the days of photos and other_days (days of photos not read yet):
    (the days' observations, known ones, captions).

    The login is checked (a request, at one a second) only when no observation came back:
    observations prove it, and the first run of a big archive waits for no extra answer.
    """
    days = sorted({p.corrected_time.date() for p in photos}.union(other_days))
    try:
        store.sync(client, options.user, days[0], days[-1])
    except InatUnreachable:
        if not store.has_synced(options.user):
            check_login(client, options.user)  # an unknown login says so, not 'unreachable'
        raise
    known_ids = [p.tags.observation for p in photos if p.tags]
    store.recheck(client, options.user, known_ids, days[0], days[-1])
    observations = store.observations_between(options.user, days[0], days[-1])
    if not observations:
        check_login(client, options.user)
    return observations, store.observations_by_id(known_ids), store.caption_history(known_ids)


def check_login(client: InatClient, login: str) -> None:
    """UserError when iNaturalist does not know login, or it has no observations at all."""
    if not client.user(login).get("observations_count"):
        raise UserError(f"iNaturalist user {login!r} has no observations")


def load_lineages(
    options: Options,
    client: InatClient,
    store: ObservationStore,
    observations: Iterable[Observation],
) -> dict[int, Lineage]:
    """The lineage of each taxon of observations, only when the options write lineages."""
    return store.reference.lineages(client, observations) if options.needs_lineages else {}


def make_scorer(options: Options, photos: PhotoCache, console: Console) -> PairScorer:
    """The compare function for these options: the score on the CPU or with OpenCL, and the
    log's thumbnails made as local photos are decoded when a log is written."""
    thumbnails = ThumbnailCache(options.cache) if options.logfile else None
    pictures = PictureSource(photos, options.upload_sizes, console, thumbnails)
    return PairScorer(pictures, choose_score_function(options.gpu, console), options.ssim_threshold)


def _import_ahead(module: str) -> None:
    """Import module now, in a thread, so that it is ready when needed; failures are left to
    the import that needs it."""

    def load() -> None:
        import importlib

        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=load, name=f"import-{module}").start()


def run(options: Options, console: Console) -> Tally:
    """One run from the walk to the summary; raises RunLocked, UserError, InatUnreachable."""
    started = time.monotonic()
    tally = Tally()
    missing = [path for path in options.paths if not os.path.lexists(path)]
    if missing:  # a mistyped folder: a bad command line, not a file that failed
        raise UserError(f"no such file or folder: {', '.join(show_path(Path(p)) for p in missing)}")
    with contextlib.ExitStack() as resources:
        if not resources.enter_context(run_lock(options.cache)):
            raise RunLocked(options.cache)
        files = CacheDirectory(options.cache)
        files.remove_leftovers()
        _import_ahead("pyinaturalist")  # half a second of CPU, while the walk waits on the disk
        console.say("Loading photos ")
        found = find_picture_files(options.paths, console)
        remove_leftover_copies(found.leftovers)
        index = resources.enter_context(
            contextlib.closing(LocalIndex(files.local_index, options.matching_settings))
        )
        console.reported_before = index.reported_before
        archive = load_archive(found, index, console, options)
        del found
        photos = archive.photos
        tally.local_photos = archive.count
        console.say(
            f"Loaded {archive.count} local photos in {time.monotonic() - started:.1f} secs."
        )
        pairs = pairs_line(photos)  # pairs are only on the days read: a RAW file is always read
        if pairs is not None:
            console.say(pairs)
        if not archive.count:
            named = ", ".join(show_path(Path(p)) for p in options.paths)
            console.say(f"No picture found in {named}.")
            return tally
        if options.time_offset is not None:
            console.say(clock_setting_line(options.time_offset))
        client = InatClient(options.api_url, options.cache)
        resources.callback(client.session.close)
        token = login_token(options, client, console) if options.wants_login else None
        if token:
            client.authenticate(token)
            make_private(options.cache, console)
        with contextlib.closing(
            ObservationStore(files.observations, fresh=options.bypass_cache)
        ) as store:
            observations, known, history = load_observations(
                options, client, store, photos, archive.waiting
            )
            lineages = load_lineages(options, client, store, [*observations, *known.values()])
            places = {}
            if options.location_names:
                places = store.reference.places(client, [*observations, *known.values()])
        ledger = DownloadLedger(
            files.downloads,
            options.max_download_per_hour,
            options.max_download_per_day,
        )
        resources.callback(ledger.close)
        photo_cache = PhotoCache(
            options.cache, client, refresh=options.bypass_cache, console=console, ledger=ledger
        )
        resources.callback(photo_cache.close)
        scorer = make_scorer(options, photo_cache, console)
        resources.callback(scorer.pictures.close)  # nor downloading ahead
        resources.callback(scorer.stop)  # an error mid-day leaves no thread comparing ahead
        days = {o.day for o in observations if o.day is not None}
        photos = [*photos, *recall_days(archive, days, index, console, options)]
        log = LogBook() if options.logfile else None
        given = (options, console, index, scorer.pictures, scorer, tally, log, lineages, places)
        state = RunState(*given, known=known, history=history)
        process_days(state, photos, observations)
        finish_run(state, ledger, time.monotonic() - started)
    return tally


def finish_run(state: RunState, ledger: DownloadLedger, seconds: float) -> None:
    """The budget line, the summary (unless --quiet and nothing changed) and the HTML log."""
    options, console = state.options, state.console
    summary = summary_line(state.tally, seconds, options.dry_run)
    budget = budget_line(state.tally, ledger)
    if budget is not None:
        console.report(budget)
    if console.spoke or not options.quiet:  # --quiet: nothing when nothing changed
        console.report(f"\n{summary}")
    if options.logfile is not None and state.log is not None:
        for row in state.log.rows:  # why --geotag left the photo without a position
            note = state.notes.get(row.local.path) if row.local is not None else None
            if note is not None and row.section in ("new", "changed", "known"):
                row.note = "; ".join(filter(None, [row.note, note]))
        write_log(options.logfile, state.log, summary, options.ssim_threshold, console)


def write_log(path: Path, log: LogBook, summary: str, threshold: float, console: Console) -> None:
    """Write the HTML log (the errors reported so far included) piece by piece, atomically."""
    errors = [LogRow("error", note=f"{show_path(p)}: {reason}") for p, reason in console.errors]
    pieces = log_page([*log.rows, *errors], summary, threshold, unlisted=log.unlisted)
    try:
        # backslashreplace: an API text with a lone surrogate must not stop the page.
        replace_or_create(path, (piece.encode("utf-8", "backslashreplace") for piece in pieces))
    except OSError as error:
        console.file_error(path, f"cannot write log ({error})")


# ---------------------------------------------------------------------------
# 16. One-file modes
#    --associate (a near miss or a tie confirmed by hand), --dissociate (the tool's tags
#    removed, the file marked) and --list-problems: one file or the index, no matching.
# ---------------------------------------------------------------------------


def check_named_picture(path: Path) -> None:
    """The file --associate or --dissociate names must be a picture this tool reads."""
    if not path.is_file():
        raise UserError(f"{show_path(path)}: no such file")
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise UserError(f"{show_path(path)}: not a picture format this tool reads")


def open_named_photo(
    resources: contextlib.ExitStack, options: Options, path: Path, console: Console
) -> tuple[LocalIndex, LocalPhoto | None]:
    """For --associate and --dissociate: take the run lock, open the index, read the file
    and its sidecar as a run would (the files sharing its name stem decide which is its)."""
    if not resources.enter_context(run_lock(options.cache)):
        raise RunLocked(options.cache)
    check_named_picture(path)
    index = resources.enter_context(
        contextlib.closing(
            LocalIndex(CacheDirectory(options.cache).local_index, options.matching_settings)
        )
    )
    photo = index.read(path, console)
    if photo is None:
        return index, None
    stem = path.stem.lower()
    neighbours = sorted(
        other
        for other in path.parent.iterdir()
        if other.stem.lower() == stem and other.suffix.lower() in PICTURE_SUFFIXES
    )
    homes = name_sidecars(neighbours, options.sidecar_names, options.sidecars, Console())
    if path not in homes:
        return index, sidecar_holding_tags(index, photo, console) or photo
    return index, index.read_sidecar(dataclasses.replace(photo, sidecar=homes[path]), console)


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
    how = comparison.describe()
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
            contextlib.closing(ObservationStore(CacheDirectory(options.cache).observations))
        )
        candidate = find_upload(options, client, store, photo.corrected_time.date(), photo_id)
        observation = candidate.observation
        ids = [observation.id] + ([photo.tags.observation] if photo.tags else [])
        history = set().union(*store.caption_history(ids).values())
        photo_cache = PhotoCache(options.cache, client, console=console)
        resources.callback(photo_cache.close)
        scorer = make_scorer(options, photo_cache, console)
        comparison = scorer.compare(photo, candidate, options.inat_size)
        console.say(compared_line(photo, candidate, comparison, options.ssim_threshold))
        tags = InatTags(observation.id, candidate.photo.observation_photo_id, photo_id)
        update = plan_update(photo, tags, history, observation.caption)
        state = RunState(options, console, index, scorer.pictures, scorer, tally)
        if update is None:
            console.say(f"{show_path(path)}: already associated with photo id {photo_id}.")
        elif perform_update(state, update):
            console.report(
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
    if update.drop_position:
        removed.append("the GPS position")
    if update.location_names:
        removed.append("the location names")
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
                ObservationStore(CacheDirectory(options.cache).observations)
            ) as store:
                history = store.caption_history([photo.tags.observation]).get(
                    photo.tags.observation, set()
                )
        update = plan_dissociation(photo, history)
        if update is None:
            console.say(f"{show_path(path)}: already set aside with --dissociate; nothing to do.")
            return Tally()
        console.report(dissociation_line(update, options.dry_run))
        if not options.dry_run:
            apply_update(update, index, console)
    return Tally()


def without_file_name(message: str, path: str) -> str:
    """message without the path of its file in front, as a warning's text has it (the path
    as that run was given it: relative or not)."""
    name = f"{show_path(Path(Path(path).name))}: "
    at = message.find(name)
    before = message[:at]
    if at >= 0 and (not before or before.endswith(os.sep)) and ": " not in before:
        return message[at + len(name) :]
    return message


def list_problems(options: Options, console: Console) -> Tally:
    """--list-problems: the files' problems and notices earlier runs reported, one a line."""
    with contextlib.closing(
        LocalIndex(CacheDirectory(options.cache).local_index, options.matching_settings)
    ) as index:
        found = index.problems()
    for path, message, first in found:
        shown = show_path(Path(path))
        console.report(f"{shown}: {without_file_name(message, path)} (first reported {first})")
    if not found:
        console.report("No problem was reported about files that still exist.")
    return Tally()


# ---------------------------------------------------------------------------
# 17. Command line
#    argparse (both spellings of every option), usage problems, and main(argv) -> int,
#    which maps exceptions to exit codes.
# ---------------------------------------------------------------------------


if __name__ == "__main__":
    run_in_own_environment(Path(sys.argv[0]), Path(sys.executable))


HELP_EPILOG = f"""\
exit codes:
  {EXIT_OK}  everything went through (the download budget may have left days for later)
  {EXIT_FILE_ERRORS}  some files could not be read or written; each was named on stderr
  {EXIT_USAGE}  bad command line, unknown user, refused token or login, iNaturalist unreachable
  {EXIT_LOCKED}  another run is still going (it holds the lock in the cache directory)
environment:
  INAT_API_TOKEN      your API token (or --token-file); never printed or stored
  INAT_USERNAME, INAT_PASSWORD, INAT_APP_ID, INAT_APP_SECRET
                      a login to fetch a token with (all four)
  INAT_PHOTOS_CACHE   the cache directory (default: the user's cache folder)
  INAT_API_URL        another iNaturalist API, e.g. the tests' fake server
Every option is accepted with '_' or '-' between its words (--ssim-threshold, --dry_run)."""


def spelling_key(option: str) -> str:
    """An option with '-' and '_' between its words alike: --dry_run and --dry-run are one."""
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with one spelling of each option and the epilog's lines kept."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = {spelling_key(o): o for o in reversed(action.option_strings)}
        kept = [o for o in action.option_strings if shown[spelling_key(o)] == o]
        return super()._format_action_invocation(action_with(action, kept))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text  # indented lines are a table: kept as written
        return "\n".join(
            line if line.startswith(" ") else fill(line, width, indent)
            for line in text.splitlines()
        )


def action_with(action: argparse.Action, option_strings: list[str]) -> argparse.Action:
    """A copy of action showing these option strings."""
    shown = copy.copy(action)
    shown.option_strings = option_strings
    return shown


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that takes every long option with '_' or '-' between its words, and a
    value that starts with '-' after an option that takes one (--time_offset -30m).

    The original tool's options use '_' (--ssim_threshold), newer ones '-' (--dry-run)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        actions = self._option_string_actions
        known = {spelling_key(o): o for o in actions if o.startswith("--")}
        given = list(sys.argv[1:] if args is None else args)
        spelled: list[str] = []
        while given:
            argument = given.pop(0)
            if argument == "--":  # what follows is a file name, whatever it looks like
                spelled += [argument, *given]
                break
            name, equals, value = argument.partition("=")
            if name.startswith("--") and name not in actions:
                name = known.get(spelling_key(name), name)
            taking_one = name in actions and actions[name].nargs is None and not equals
            dashed = given and given[0][:1] == "-" and given[0][:2] != "--"
            if taking_one and dashed and given[0].partition("=")[0] not in actions:
                equals, value = "=", given.pop(0)  # '-30m' is a value, '-u' an option
            spelled.append(name + equals + value)
        return super().parse_known_args(spelled, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="inat_photos.py",
        description="Find local photos that were uploaded to iNaturalist and write the "
        "iNaturalist ids and the current identification into their XMP metadata.",
        epilog=HELP_EPILOG,
        formatter_class=HelpFormatter,
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
        default=None,
        metavar="THRESHOLD",
        help=f"similarity needed to associate, 0..1 or a percentage; given, it is the only bar"
        f" (default {SSIM_THRESHOLD}, and below it the verdict's evidence may decide)",
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
        default=None,
        help=f"iNaturalist photo size to compare (default: {FIRST_INATSIZE} where it settles"
        f" a pair clearly, else {SSIM_INATSIZE})",
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
        help="how far the camera clock was ahead (+1h, -30m, -3:00; 0: it was right); by"
        " default the tool looks for an offset itself, day by day, to a quarter hour",
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="do everything but change no file; print what would change",
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="for cron: print nothing when nothing changed; else only the changes, new"
        " warnings and errors, and the summary",
    )
    parser.add_argument(
        "--list-problems",
        action="store_true",
        help="list the problems earlier runs reported about files (unreadable, no date, ...)",
    )
    for span, default in (("hour", MAX_DOWNLOAD_PER_HOUR), ("day", MAX_DOWNLOAD_PER_DAY)):
        parser.add_argument(
            f"--max-download-per-{span}",
            type=parse_size,
            default=default,
            metavar="SIZE",
            help=f"download at most this much from iNaturalist in any {span}, across runs,"
            f" e.g. 500MB (default {describe_size(default)})",
        )
    parser.add_argument(
        "--sidecars",
        action="store_true",
        help="write the tags of JPEG, PNG and TIFF files into XMP sidecars too and leave every"
        " picture byte-identical (RAW and HEIC files always get sidecars)",
    )
    parser.add_argument(
        "--sidecar-names",
        "--sidecar_names",
        dest="sidecar_names",
        choices=SIDECAR_NAMINGS,
        default=SIDECAR_NAMINGS[0],
        help="name of new sidecars: IMG_1.xmp as Lightroom and Capture One read them (default),"
        " or IMG_1.CR2.xmp as darktable and digiKam read them",
    )
    parser.add_argument(
        "--hierarchical-keywords",
        "--hierarchical_keywords",
        dest="hierarchical_keywords",
        action="store_true",
        help="also write the taxonomy as a hierarchical keyword (lr:hierarchicalSubject),"
        " e.g. Animalia|Chordata|...|Canis latrans",
    )
    parser.add_argument(
        "--darwin-core",
        "--darwin_core",
        dest="darwin_core",
        action="store_true",
        help="also write Simple Darwin Core terms (dwc:scientificName, dwc:occurrenceID...)",
    )
    parser.add_argument(
        "--geotag",
        action="store_true",
        help="write the observation's position into photos that have no GPS position of their"
        " own (EXIF, or XMP in sidecars); never an obscured position",
    )
    parser.add_argument(
        "--geotag-private",
        "--geotag_private",
        dest="geotag_private",
        action="store_true",
        help="with --geotag and your token: write the true position of your obscured or"
        " private observations too (mind this when you share the files)",
    )
    parser.add_argument(
        "--location-names",
        "--location_names",
        dest="location_names",
        action="store_true",
        help="also write the country, its code, state, city or county and the observation's"
        " place guess into the IPTC location fields (photoshop:Country, ...)",
    )
    parser.add_argument(
        "--token-file",
        "--token_file",
        dest="token_file",
        metavar="PATH",
        help="read your iNaturalist API token from PATH (or set INAT_API_TOKEN); it shows "
        "original file names and true locations of your observations, and deletions",
    )
    parser.add_argument(
        "--keyring",
        action="store_true",
        help="fetch a token with the login pyinaturalist keeps in the system keyring",
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
    if args.list_problems:
        return None
    if not args.user and not args.dissociate:
        return "the following arguments are required: --user/-u"
    single = args.associate or args.dissociate
    if single and args.paths:
        return "--associate and --dissociate take one file; give no other file or folder"
    if not single and not args.paths:
        return "the following arguments are required: file/directory"
    return None


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
    configure_process()
    console = Console(quiet=options.quiet)
    flow = associate_file if options.associate else dissociate_file if options.dissociate else run
    if options.list_problems:
        flow = list_problems
    try:
        flow(options, console)
    except RunLocked:
        console.report(
            f"Error: another inat_photos run is using {show_path(options.cache)}; try again later."
        )
        return EXIT_LOCKED
    except (UserError, TokenRefused) as error:
        console.report(f"Error: {error}")
        return EXIT_USAGE
    except InatUnreachable as error:
        console.report(f"Error: iNaturalist is unreachable at {options.api_url}: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.report("Interrupted; files already written are complete, the rest untouched.")
        return 130
    return EXIT_FILE_ERRORS if console.file_errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
