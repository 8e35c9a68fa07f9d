"""A fake iNaturalist API v1 and photo host, served on loopback for tests.

It answers the few endpoints ``inat_photos`` uses the way https://api.inaturalist.org/v1 does
(JSON shape, pagination, error bodies) and serves photos rendered from local source pictures
the way iNaturalist stores them (upright, cropped/rotated as uploaded, resized, re-encoded,
metadata stripped).

Python use::

    from fake_inat import FakeINaturalist
    with FakeINaturalist("example_pictures/scenario.json") as fake:
        requests.get(fake.api_url + "/observations", params={"user_id": "demo_naturalist"})

Command line::

    python tests/fake_inat.py example_pictures/scenario.json [--port N]

prints the API url (``http://127.0.0.1:PORT/v1``) on one line and serves until SIGTERM/SIGINT.

HTTPS: pass ``tls=`` a server-side ``ssl.SSLContext`` holding a certificate for 127.0.0.1 (tests
issue one with ``trustme``); the API and the photo URLs it hands out are then ``https://``.

Scenario format: see ``example_pictures/scenario.json``; paths of photo sources are relative to
the scenario file's folder (or to ``base_dir`` / the working directory for a dict scenario).
A photo may carry ``"state"``: ``"processing"`` (just uploaded: the API gives the
``/attachment_defaults/local_photos/square.png`` placeholder), ``"hidden"`` (``"hidden": true``
and the ``media-hidden`` placeholder) or ``"flagged"`` (a copyright flag in ``"flags"`` and the
``copyright-infringement`` placeholder). Placeholders are served as small PNGs in every size;
the photo's own ``/photos/ID/`` files answer 404 meanwhile. A photo may carry
``"original_filename"``, the name of the file the user uploaded.

Logins (``add_token``, ``add_password_login``): a request with ``Authorization: Bearer TOKEN``
(or the bare token) is its owner's; an unknown token answers 401. Only the owner's own requests
see ``original_filename`` and, for obscured or private observations, ``private_location``.
``GET /v2/observations`` takes ``fields`` in RISON (``(id:!t,taxon:(name:!t))``) or ``all``
and answers only those (only ``id`` and ``uuid`` without it); ``GET /v1/observations/deleted``
(token only) lists the ids of the owner's observations deleted ``since``; ``POST /oauth/token``
and ``GET /users/api_token`` stand in for pyinaturalist's ``get_access_token()``.

Places (scenario ``"places"``, ``add_place``): ``GET /v1/places/{id,id,...}`` answers up to 500
ids as iNaturalist does, each with ``admin_level`` and a ``display_name`` that ends with the codes
of the places above it; observations list theirs in ``place_ids`` and carry ``place_guess``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from datetime import date, datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from PIL import Image, ImageDraw, ImageOps

__all__ = ["PHOTO_SIZES", "FakeINaturalist", "parse_rison_fields", "render_photo", "select_fields"]

#: Longest side (pixels) of each photo size iNaturalist serves; ``square`` is a centre crop.
PHOTO_SIZES = {"square": 75, "small": 240, "medium": 500, "large": 1024, "original": 2048}
#: Results beyond this many (page * per_page) are refused, as by the real API.
MAX_RESULT_WINDOW = 10000
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 200

RANK_LEVELS = {
    "form": 5,
    "variety": 5,
    "subspecies": 5,
    "hybrid": 10,
    "species": 10,
    "complex": 11,
    "subsection": 12,
    "section": 13,
    "subgenus": 15,
    "genushybrid": 20,
    "genus": 20,
    "subtribe": 24,
    "tribe": 25,
    "supertribe": 26,
    "subfamily": 27,
    "family": 30,
    "epifamily": 32,
    "superfamily": 33,
    "zoosubsection": 33.5,
    "zoosection": 34,
    "parvorder": 34.5,
    "infraorder": 35,
    "suborder": 37,
    "order": 40,
    "superorder": 43,
    "subterclass": 44,
    "infraclass": 45,
    "subclass": 47,
    "class": 50,
    "superclass": 53,
    "subphylum": 57,
    "phylum": 60,
    "kingdom": 70,
    "stateofmatter": 100,
}

_UUID_NAMESPACE = uuid.UUID("5b0e7a0e-3f7c-4d53-9a53-6b7c1f1f0a11")
_PHOTO_PATH = re.compile(r"^/photos/(\d+)/([a-z]+)\.([A-Za-z]+)$")
#: Where iNaturalist points a photo it does not show, per photo state (``{size}`` = square...).
PLACEHOLDERS = {
    "processing": "/attachment_defaults/local_photos/{size}.png",
    "hidden": "/assets/media-hidden-{size}.png",
    "flagged": "/assets/copyright-infringement-{size}.png",
}
PHOTO_STATES = ("normal", *PLACEHOLDERS)
_PLACEHOLDER_PATH = re.compile(
    r"^(?:/attachment_defaults/local_photos/|/assets/(?:media-hidden|copyright-infringement)-)"
    r"([a-z]+)\.png$"
)
_ROTATIONS = {
    90: Image.Transpose.ROTATE_90,  # Pillow's ROTATE_* turn counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


class _HTTPError(Exception):
    """Raised inside request handling to answer an error status with a JSON body."""

    def __init__(self, status: int, message: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message or HTTPStatus(status).phrase


def _json_error(status: int, message: str | None = None) -> bytes:
    if message is None:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = "Error"
    return json.dumps({"error": message, "status": status}).encode()


def _parse_datetime(value: str) -> datetime:
    """Parse an ISO 8601 date or datetime; a naive one is taken as UTC."""
    text = value.strip()
    if "T" in text and " " in text:  # an unencoded "+" in a query string arrives as a space
        text = text.replace(" ", "+")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _now_iso(after: datetime | None = None) -> tuple[str, datetime]:
    """The current UTC time, rounded up to the millisecond, strictly later than ``after``."""
    now = datetime.now(timezone.utc)
    now = now.replace(microsecond=0) + timedelta(milliseconds=math.ceil(now.microsecond / 1000))
    if after is not None and now <= after:
        now = after.replace(microsecond=(after.microsecond // 1000) * 1000)
        now += timedelta(milliseconds=1)
    return now.isoformat(timespec="milliseconds"), now


def _format_offset(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _derived_uuid(kind: str, ident: int) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{kind}-{ident}"))


def _crop_box(width: int, height: int, crop: list[float] | None) -> tuple[int, int, int, int]:
    if not crop:
        return 0, 0, width, height
    left, top, right, bottom = crop
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"crop {crop} leaves nothing of a {width}x{height} picture")
    return box


def _scaled_size(width: int, height: int, limit: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= limit:
        return width, height
    scale = limit / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _upright_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def _uploaded_image(source: Path, crop: list[float] | None, rotate: int) -> Image.Image:
    """The picture as the user uploaded it: upright per EXIF, then cropped, then rotated."""
    with Image.open(source) as opened:
        upright = ImageOps.exif_transpose(opened)
        image = upright.convert("RGB")
    image = image.crop(_crop_box(image.width, image.height, crop))
    if rotate:
        image = image.transpose(_ROTATIONS[rotate])
    return image


def render_photo(
    source: str | Path,
    size: str,
    *,
    crop: list[float] | None = None,
    rotate: int = 0,
    quality: int = 85,
) -> bytes:
    """Render ``source`` the way iNaturalist serves it at ``size``; returns JPEG bytes."""
    image = _uploaded_image(Path(source), crop, rotate)
    if size == "square":
        out = ImageOps.fit(image, (PHOTO_SIZES["square"],) * 2, Image.Resampling.LANCZOS)
    else:
        target = _scaled_size(image.width, image.height, PHOTO_SIZES[size])
        if target == image.size:
            out = image.copy()
        else:
            out = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out.info = {}  # no EXIF, XMP, ICC profile or comment may be carried over
    buffer = io.BytesIO()
    out.save(
        buffer,
        "JPEG",
        quality=quality,
        optimize=False,
        progressive=False,
        icc_profile=None,
        exif=b"",
    )
    return buffer.getvalue()


class _Photo:
    def __init__(self, spec: dict, base_dir: Path, observation_photo_id: int, position: int):
        self.id = int(spec["id"])
        self.observation_photo_id = int(spec.get("observation_photo_id") or observation_photo_id)
        self.position = position
        self.source = (base_dir / spec["source"]).resolve()
        if not self.source.is_file():
            raise FileNotFoundError(f"photo {self.id}: source {self.source} does not exist")
        self.crop = [float(x) for x in spec["crop"]] if spec.get("crop") else None
        if self.crop is not None:
            left, top, right, bottom = self.crop
            if len(self.crop) != 4 or not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
                raise ValueError(f"photo {self.id}: bad crop {spec['crop']}")
        self.rotate = int(spec.get("rotate") or 0) % 360
        if self.rotate not in (0, 90, 180, 270):
            raise ValueError(f"photo {self.id}: rotate must be 0, 90, 180 or 270")
        self.quality = int(spec.get("quality") or 85)
        self.state = spec.get("state") or "normal"
        if self.state not in PHOTO_STATES:
            raise ValueError(f"photo {self.id}: state must be one of {', '.join(PHOTO_STATES)}")
        self.license_code = spec.get("license_code", "cc-by-nc")
        self.original_filename = spec.get("original_filename")
        self.uuid = spec.get("uuid") or _derived_uuid("photo", self.id)
        width, height = _upright_size(self.source)
        box = _crop_box(width, height, self.crop)
        width, height = box[2] - box[0], box[3] - box[1]
        if self.rotate in (90, 270):
            width, height = height, width
        self.original_dimensions = _scaled_size(width, height, PHOTO_SIZES["original"])
        self.lock = threading.Lock()
        self.cache: dict[str, bytes] = {}

    def render(self, size: str) -> bytes:
        with self.lock:
            if size not in self.cache:
                self.cache[size] = render_photo(
                    self.source, size, crop=self.crop, rotate=self.rotate, quality=self.quality
                )
            return self.cache[size]

    def to_json(self, host_url: str, user: dict, owner_view: bool = False) -> dict:
        owner = user.get("name") or user["login"]
        if self.license_code:
            rights = f"some rights reserved ({self.license_code.upper().replace('CC-', 'CC ')})"
            if self.license_code == "cc0":
                rights = "no rights reserved"
        else:
            rights = "all rights reserved"
        record: dict[str, Any] = {
            "id": self.id,
            "license_code": self.license_code,
            "url": f"{host_url}/photos/{self.id}/square.jpg",
            "attribution": f"(c) {owner}, {rights}",
            "original_dimensions": {
                "width": self.original_dimensions[0],
                "height": self.original_dimensions[1],
            },
            "flags": [],
        }
        if owner_view and self.original_filename:
            record["original_filename"] = self.original_filename
        if self.state != "normal":
            record["url"] = host_url + PLACEHOLDERS[self.state].format(size="square")
        if self.state == "processing":  # not yet measured
            record["original_dimensions"] = None
        elif self.state == "hidden":
            record["hidden"] = True
        elif self.state == "flagged":
            record["flags"] = [
                {
                    "id": 7_000_000 + self.id % 1_000_000,
                    "flag": "copyright infringement",
                    "resolved": False,
                    "user_id": 1,
                    "created_at": "2021-01-01T00:00:00+00:00",
                }
            ]
        return record


def _placeholder_png(size: str) -> bytes:
    """A grey picture with a darker disc, standing in for iNaturalist's placeholder images."""
    side = PHOTO_SIZES.get(size, PHOTO_SIZES["medium"])
    side = min(side, PHOTO_SIZES["medium"])
    image = Image.new("RGB", (side, side), (214, 214, 214))
    disc = Image.new("L", (side, side), 0)
    margin = side // 4
    ImageDraw.Draw(disc).ellipse((margin, margin, side - margin, side - margin), fill=255)
    image.paste((150, 150, 150), mask=disc)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class _Observation:
    def __init__(self, spec: dict, user: dict, photos: list[_Photo], *, fresh: bool):
        self.id = int(spec["id"])
        self.uuid = spec.get("uuid") or _derived_uuid("observation", self.id)
        self.user = user
        self.photos = photos
        self.time_observed_at = spec.get("time_observed_at") or None
        moment = _parse_datetime(self.time_observed_at) if self.time_observed_at else None
        self.time_dt = moment
        observed_on = spec.get("observed_on")
        if observed_on is None and moment is not None and "observed_on" not in spec:
            observed_on = moment.date().isoformat()
        self.observed_on = date.fromisoformat(observed_on).isoformat() if observed_on else None
        self.time_zone_offset = spec.get("time_zone_offset") or (
            _format_offset(moment) if moment is not None else "+00:00"
        )
        if spec.get("created_at"):
            self.created_at = spec["created_at"]
        elif fresh:
            self.created_at = _now_iso()[0]
        elif moment is not None:
            self.created_at = (moment + timedelta(days=1)).isoformat()
        elif self.observed_on:
            self.created_at = (
                f"{date.fromisoformat(self.observed_on) + timedelta(days=1)}T12:00:00+00:00"
            )
        else:
            self.created_at = "2021-01-01T00:00:00+00:00"
        self.updated_at = spec.get("updated_at") or self.created_at
        self.created_dt = _parse_datetime(self.created_at)
        self.updated_dt = _parse_datetime(self.updated_at)
        location = spec.get("location")
        if isinstance(location, str) and location.strip():
            lat_text, lng_text = location.split(",")
            self.location: tuple[float, float] | None = (float(lat_text), float(lng_text))
        elif isinstance(location, (list, tuple)) and len(location) == 2:
            self.location = (float(location[0]), float(location[1]))
        else:
            self.location = None
        self.geoprivacy = spec.get("geoprivacy")
        if self.geoprivacy is None and spec.get("obscured"):
            self.geoprivacy = "obscured"
        self.taxon_geoprivacy = spec.get("taxon_geoprivacy")
        self.positional_accuracy = spec.get("positional_accuracy")
        self.quality_grade = spec.get("quality_grade")
        self.place_guess = spec.get("place_guess")
        self.place_ids = [int(i) for i in spec.get("place_ids") or []]
        self.description = spec.get("description")
        self.license_code = spec.get("license_code", "cc-by-nc")
        self.taxon = _normalize_taxon(spec.get("taxon"))

    @property
    def obscured(self) -> bool:
        return self.geoprivacy in ("obscured", "private") or self.taxon_geoprivacy in (
            "obscured",
            "private",
        )

    def public_location(self) -> tuple[float, float] | None:
        if self.location is None or "private" in (self.geoprivacy, self.taxon_geoprivacy):
            return None
        if not self.obscured:
            return self.location
        rng = random.Random(f"obscured-{self.id}")
        distance_km = rng.uniform(3.0, 12.0)
        bearing = rng.uniform(0.0, 2.0 * math.pi)
        lat, lng = self.location
        lat2 = lat + distance_km / 111.32 * math.cos(bearing)
        lng2 = lng + distance_km / (111.32 * max(0.01, math.cos(math.radians(lat)))) * math.sin(
            bearing
        )
        return round(lat2, 10), round(lng2, 10)

    def to_json(self, host_url: str, viewer: int | None = None) -> dict:
        """The API's record; viewer: the id of the user whose token asked (None: public)."""
        owner_view = viewer is not None and viewer == self.user["id"]
        public = self.public_location()
        if public is None:
            location_text, geojson = None, None
        else:
            location_text = f"{public[0]!r},{public[1]!r}"
            geojson = {"type": "Point", "coordinates": [public[1], public[0]]}
        accuracy = self.positional_accuracy
        if self.obscured and public is not None:
            rng = random.Random(f"obscured-{self.id}")
            public_accuracy = int(rng.uniform(3.0, 12.0) * 1000) + int(accuracy or 0)
        else:
            public_accuracy = accuracy
        details = None
        if self.observed_on:
            day = date.fromisoformat(self.observed_on)
            details = {
                "date": self.observed_on,
                "year": day.year,
                "month": day.month,
                "day": day.day,
                "week": day.isocalendar()[1],
            }
        quality_grade = self.quality_grade or (
            "research"
            if self.taxon and (self.taxon.get("rank_level") or 100) <= 10 and self.photos
            else "needs_id"
        )
        species_guess = None
        if self.taxon:
            species_guess = self.taxon.get("preferred_common_name") or self.taxon["name"]
        photos = [photo.to_json(host_url, self.user, owner_view) for photo in self.photos]
        user = {
            "id": self.user["id"],
            "login": self.user["login"],
            "name": self.user.get("name"),
            "icon_url": self.user.get("icon_url"),
        }
        observed_on_string = self.observed_on
        if self.time_dt is not None:
            observed_on_string = self.time_dt.strftime("%Y-%m-%d %H:%M:%S")
        private: dict[str, Any] = {}
        if owner_view and self.location is not None and self.location != public:
            lat, lng = self.location
            private = {
                "private_location": f"{lat!r},{lng!r}",
                "private_geojson": {"type": "Point", "coordinates": [lng, lat]},
            }
        return {
            **private,
            "id": self.id,
            "uuid": self.uuid,
            "uri": f"https://www.inaturalist.org/observations/{self.id}",
            "user": user,
            "observed_on": self.observed_on,
            "observed_on_string": observed_on_string,
            "observed_on_details": details,
            "time_observed_at": self.time_observed_at,
            "time_zone_offset": self.time_zone_offset,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "location": location_text,
            "geojson": geojson,
            "mappable": public is not None,
            "obscured": self.obscured,
            "geoprivacy": self.geoprivacy,
            "taxon_geoprivacy": self.taxon_geoprivacy,
            "positional_accuracy": accuracy,
            "public_positional_accuracy": public_accuracy,
            "place_guess": self.place_guess,
            "place_ids": list(self.place_ids),
            "description": self.description,
            "quality_grade": quality_grade,
            "species_guess": species_guess,
            "license_code": self.license_code,
            "taxon": dict(self.taxon) if self.taxon else None,
            "photos": photos,
            "observation_photos": [
                {
                    "id": photo.observation_photo_id,
                    "position": index,
                    "uuid": _derived_uuid("observation_photo", photo.observation_photo_id),
                    "photo": data,
                }
                for index, (photo, data) in enumerate(zip(self.photos, photos, strict=True))
            ],
            "sounds": [],
            "identifications_count": 1 if self.taxon else 0,
            "comments_count": 0,
            "faves_count": 0,
            "captive": False,
            "spam": False,
        }


def _normalize_taxon(taxon: dict | None) -> dict | None:
    if not taxon:
        return None
    name = taxon["name"]
    rank = taxon.get("rank") or {1: "genus", 2: "species", 3: "subspecies"}.get(
        len(name.split()), "species"
    )
    out = dict(taxon)
    out["id"] = int(taxon.get("id") or 40000 + sum(map(ord, name)) * 7)
    out["name"] = name
    out["rank"] = rank
    out["rank_level"] = taxon.get("rank_level", RANK_LEVELS.get(rank))
    out["iconic_taxon_name"] = taxon.get("iconic_taxon_name")
    out["is_active"] = taxon.get("is_active", True)
    if not taxon.get("preferred_common_name"):
        out.pop("preferred_common_name", None)
    return out


class _Fault:
    def __init__(
        self, prefix: str, status: int, times: int, retry_after: float | None, body: bytes | None
    ):
        self.prefix = prefix
        self.status = status
        self.times = times
        self.retry_after = retry_after
        self.body = body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeINaturalist):
        self.fake = fake
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a (possibly slow) reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:  # quiet: no tracebacks on stderr
        pass

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self.fake.tls is not None:
            # The handshake happens in the handler's thread (see _Handler.setup), so a client
            # that never speaks TLS cannot hold up the accept loop.
            connection = self.fake.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeINaturalist/1.0"
    sys_version = ""
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_connection(self.connection, True)

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()  # bounded by the connection's timeout
            except OSError:  # ssl.SSLError too: a client that distrusts us, or no TLS at all
                return
        super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track_connection(self.connection, False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_POST(self) -> None:
        self._answer(send_body=True)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _answer(self, send_body: bool) -> None:
        fake = self.server.fake
        length = self.headers.get("Content-Length")
        request_body = b""
        if length and length.isdigit():
            request_body = self.rfile.read(int(length))
        authorization = self.headers.get("Authorization")
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers: list[tuple[str, str]] = []
        is_photo = False
        truncate = False
        try:
            if fake.latency:
                time.sleep(fake.latency)
            fault = fake._take_fault(path)
            if fault is not None and fault.status != 0:
                status = fault.status
                body = fault.body if fault.body is not None else _json_error(status)
                content_type = "application/json; charset=utf-8"
                if fault.retry_after is not None:
                    headers.append(("Retry-After", f"{fault.retry_after:g}"))
            else:
                truncate = fault is not None
                login = self.command == "POST" and path == "/oauth/token"
                if self.command not in ("GET", "HEAD") and not login:
                    headers.append(("Allow", "GET, HEAD"))
                    raise _HTTPError(405)
                status, content_type, body = fake._dispatch(
                    path, query, authorization, request_body
                )
                is_photo = content_type.startswith("image/")
        except _HTTPError as error:
            status, content_type = error.status, "application/json; charset=utf-8"
            body = _json_error(error.status, error.message)
            if error.status == 429:
                headers.append(("Retry-After", "1"))
        except Exception as error:  # any failure answers 500, never hangs
            status, content_type = 500, "application/json; charset=utf-8"
            body = _json_error(500, f"Internal Server Error: {type(error).__name__}: {error}")
        declared = len(body)
        if truncate:
            status = 200
            declared = max(len(body), 1)
            body = body[: len(body) // 2]
        entry = {
            "method": self.command,
            "path": path,
            "query": query,
            "status": status,
            "bytes": len(body) if send_body else 0,
            "time": time.time(),
            "auth": authorization is not None,  # whether a token came, never the token
        }
        if truncate:
            entry["truncated"] = True
        fake._log(entry)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(declared))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                if is_photo and fake.bandwidth:
                    self._send_throttled(body, fake.bandwidth)
                else:
                    self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        if truncate:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, headers too long...) get a JSON error too."""
        body = _json_error(code, message)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    def _send_throttled(self, body: bytes, bandwidth: float) -> None:
        chunk = max(512, int(bandwidth / 20))
        for start in range(0, len(body), chunk):  # a piece arrives len/bandwidth s later
            piece = body[start : start + chunk]
            time.sleep(len(piece) / bandwidth)
            self.wfile.write(piece)
            self.wfile.flush()


class FakeINaturalist:
    """A fake iNaturalist API v1 + photo host; see the module docstring."""

    def __init__(
        self,
        scenario: str | Path | dict,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        max_requests_per_second: float | None = None,
        port: int = 0,
        base_dir: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        if isinstance(scenario, dict):
            data = scenario
            self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        else:
            scenario_path = Path(scenario)
            data = json.loads(scenario_path.read_text(encoding="utf-8"))
            self.base_dir = Path(base_dir) if base_dir is not None else scenario_path.parent
        self.latency = float(latency or 0.0)
        self.bandwidth = float(bandwidth) if bandwidth else None
        self.max_requests_per_second = max_requests_per_second
        self.tls = tls
        self.requests: list[dict] = []
        self._port = int(port)
        self._state_lock = threading.RLock()
        self._log_lock = threading.Lock()
        self._fault_lock = threading.Lock()
        self._rate_lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._api_times: deque[float] = deque()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._users: dict[int, dict] = {}
        self._tokens: dict[str, int] = {}  # API token -> user id
        self._oauth: dict[str, int] = {}  # OAuth access token -> user id
        self._passwords: dict[tuple[str, str, str, str], int] = {}
        self._deleted: list[tuple[int, int, datetime]] = []  # (observation, user id, when)
        self._observations: dict[int, _Observation] = {}
        self._photos: dict[int, _Photo] = {}
        self._next_observation_photo_id = 90_000_001
        self._taxa: dict[int, dict] = {}  # the taxonomy behind GET /v1/taxa/{ids}
        for taxon in data.get("taxa", []):
            self.add_taxon(taxon)
        self._places: dict[int, dict] = {}  # the places behind GET /v1/places/{ids}
        for place in data.get("places", []):
            self.add_place(place)
        for user in data.get("users", []):
            self._add_user(user)
        for obs in data.get("observations", []):
            self._add(obs, fresh=False)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on 127.0.0.1 (port 0 = any free one) in a daemon thread; returns ``api_url``."""
        if self._server is not None:
            return self.api_url
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-inat-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self.api_url

    def stop(self) -> None:
        """Stop serving and drop open connections; ``start()`` serves again on the same port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._state_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeINaturalist:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeINaturalist is not started")
        return self._port

    @property
    def host_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with ``tls``; photos live under ``/photos/``)."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (or ``https://``)."""
        return f"{self.host_url}/v1"

    # -- test controls ------------------------------------------------------------------------
    def fail_next(
        self,
        path_prefix: str,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``times`` requests whose path starts with ``path_prefix`` with
        ``status``; status 0 sends a truncated 200 (Content-Length larger than the body sent)
        and closes the connection."""
        with self._fault_lock:
            self._faults.append(_Fault(path_prefix, int(status), int(times), retry_after, body))

    def set_taxon(self, observation_id: int, taxon: dict | None) -> None:
        """Change an observation's identification and bump its ``updated_at`` to now."""
        with self._state_lock:
            obs = self._observations[int(observation_id)]
            obs.taxon = _normalize_taxon(taxon)
            self._touch(obs)

    def move_observation(
        self, observation_id: int, location: tuple[float, float] | None, **fields: Any
    ) -> None:
        """Move an observation (and set geoprivacy, positional_accuracy... given as fields),
        bumping its ``updated_at`` to now, as an edit on iNaturalist does."""
        with self._state_lock:
            obs = self._observations[int(observation_id)]
            obs.location = (float(location[0]), float(location[1])) if location else None
            for name, value in fields.items():
                if not hasattr(obs, name):
                    raise AttributeError(f"observations have no field {name}")
                setattr(obs, name, value)
            self._touch(obs)

    def set_photo_state(self, photo_id: int, state: str, *, touch: bool = False) -> None:
        """Put a photo in one of PHOTO_STATES. Processing ending, a moderator hiding a photo or
        a flag do not date the observation, so ``updated_at`` is bumped only with ``touch``."""
        if state not in PHOTO_STATES:
            raise ValueError(f"state must be one of {', '.join(PHOTO_STATES)}")
        with self._state_lock:
            photo = self._photos[int(photo_id)]
            photo.state = state
            if touch:
                owner = next(o for o in self._observations.values() if photo in o.photos)
                self._touch(owner)

    def rename_taxon(self, taxon_id: int, **fields: Any) -> None:
        """Change a taxon's fields (``name``, ``preferred_common_name``: None removes it) in
        every observation identified as it. iNaturalist does not bump ``updated_at`` for
        taxon changes, and neither does this."""
        with self._state_lock:
            for obs in self._observations.values():
                if obs.taxon and obs.taxon["id"] == int(taxon_id):
                    changed = {**obs.taxon, **fields}
                    obs.taxon = _normalize_taxon(
                        {k: v for k, v in changed.items() if v is not None}
                    )

    def touch(self, observation_id: int) -> None:
        """Bump an observation's ``updated_at`` to now."""
        with self._state_lock:
            self._touch(self._observations[int(observation_id)])

    def delete_observation(self, observation_id: int) -> None:
        """Delete an observation; it and its photos vanish from every answer, and its id is
        listed by ``/v1/observations/deleted`` to its owner."""
        with self._state_lock:
            obs = self._observations.pop(int(observation_id))
            for photo in obs.photos:
                self._photos.pop(photo.id, None)
            self._deleted.append((obs.id, obs.user["id"], datetime.now(timezone.utc)))

    def add_token(self, token: str, login: str) -> None:
        """Accept ``token`` as the API token of the user ``login``."""
        with self._state_lock:
            self._tokens[token] = self._resolve_user(login)["id"]

    def revoke_token(self, token: str) -> None:
        """Answer 401 to ``token`` from now on (an expired or revoked token)."""
        with self._state_lock:
            self._tokens.pop(token, None)

    def add_password_login(self, login: str, password: str, app_id: str, app_secret: str) -> None:
        """Accept this login at ``POST /oauth/token`` (the password grant)."""
        with self._state_lock:
            user = self._resolve_user(login)
            self._passwords[(login, password, app_id, app_secret)] = user["id"]

    def add_observation(self, obs: dict) -> None:
        """Add a scenario-format observation (created_at/updated_at default to now)."""
        self._add(obs, fresh=True)

    def add_taxon(self, taxon: dict) -> None:
        """Add a scenario-format taxon: id, name, rank, optional preferred_common_name and
        parent_id. Observations whose taxon has this id then list its ancestor_ids."""
        record = _normalize_taxon(taxon)
        assert record is not None
        record["parent_id"] = taxon.get("parent_id")
        with self._state_lock:
            self._taxa[record["id"]] = record

    def add_place(self, place: dict) -> None:
        """Add a scenario-format place: id, name, admin_level (0 country, 10 state, 20 county,
        30 town, None for others), optional place_type, parent_id, and code (a country's ISO
        code, a state's abbreviation), which names the places below it as iNaturalist does."""
        record = {
            "id": int(place["id"]),
            "name": place["name"],
            "admin_level": place.get("admin_level"),
            "place_type": place.get("place_type"),
            "parent_id": place.get("parent_id"),
            "code": place.get("code"),
        }
        with self._state_lock:
            self._places[record["id"]] = record

    def observation_json(self, observation_id: int) -> dict:
        """The observation as the API would answer it."""
        with self._state_lock:
            return self._observations[int(observation_id)].to_json(self.host_url)

    def photo_bytes(self, photo_id: int, size: str = "original") -> bytes:
        """The bytes ``GET /photos/{photo_id}/{size}.jpg`` answers."""
        with self._state_lock:
            photo = self._photos[int(photo_id)]
        return photo.render(size)

    def api_requests(self) -> list[dict]:
        with self._log_lock:
            return [entry for entry in self.requests if entry["path"].startswith(("/v1/", "/v2/"))]

    def photo_requests(self) -> list[dict]:
        with self._log_lock:
            return [entry for entry in self.requests if entry["path"].startswith("/photos/")]

    def reset_log(self) -> None:
        with self._log_lock:
            self.requests.clear()

    # -- internals ----------------------------------------------------------------------------
    def _add_user(self, user: dict) -> dict:
        record = {
            "id": int(user["id"]),
            "login": user["login"],
            "name": user.get("name"),
            "icon_url": user.get("icon_url"),
        }
        self._users[record["id"]] = record
        return record

    def _resolve_user(self, ref: Any) -> dict:
        if isinstance(ref, dict):
            return self._users.get(int(ref["id"])) or self._add_user(ref)
        if ref is None:
            if self._users:
                return next(iter(self._users.values()))
            return self._add_user(
                {"id": 1001, "login": "demo_naturalist", "name": "Demo Naturalist"}
            )
        for user in self._users.values():
            if str(user["id"]) == str(ref) or user["login"] == str(ref):
                return user
        if str(ref).isdigit():
            return self._add_user({"id": int(ref), "login": f"user{ref}"})
        return self._add_user({"id": 2000 + sum(map(ord, str(ref))), "login": str(ref)})

    def _add(self, spec: dict, *, fresh: bool) -> None:
        with self._state_lock:
            obs_id = int(spec["id"])
            if obs_id in self._observations:
                raise ValueError(f"observation {obs_id} already exists")
            photos = []
            for position, photo_spec in enumerate(spec.get("photos") or []):
                photo_spec = dict(photo_spec)
                if "id" not in photo_spec:
                    photo_spec["id"] = 100_000_000 + obs_id % 10_000_000 * 10 + position
                photo = _Photo(photo_spec, self.base_dir, self._next_observation_photo_id, position)
                self._next_observation_photo_id += 1
                if photo.id in self._photos or any(p.id == photo.id for p in photos):
                    raise ValueError(f"photo {photo.id} is used twice")
                photos.append(photo)
            user = self._resolve_user(spec.get("user"))
            obs = _Observation(spec, user, photos, fresh=fresh)
            self._observations[obs.id] = obs
            for photo in photos:
                self._photos[photo.id] = photo

    def _touch(self, obs: _Observation) -> None:
        obs.updated_at, obs.updated_dt = _now_iso(after=obs.updated_dt)

    def _track_connection(self, connection: socket.socket, add: bool) -> None:
        with self._state_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _log(self, entry: dict) -> None:
        with self._log_lock:
            self.requests.append(entry)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._fault_lock:
            for fault in self._faults:
                if fault.times > 0 and path.startswith(fault.prefix):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _admit_api_request(self) -> bool:
        limit = self.max_requests_per_second
        if limit is None:
            return True
        now = time.monotonic()
        with self._rate_lock:
            while self._api_times and now - self._api_times[0] >= 1.0:
                self._api_times.popleft()
            if len(self._api_times) + 1 > limit:
                return False
            self._api_times.append(now)
            return True

    def _viewer(self, authorization: str | None) -> int | None:
        """The user whose token came with a request; None without one; 401 for a bad one."""
        if authorization is None:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        with self._state_lock:
            if token not in self._tokens:
                raise _HTTPError(401, "Unauthorized")
            return self._tokens[token]

    def _login(self, path: str, authorization: str | None, body: bytes) -> dict:
        """The password grant and the JWT behind it, as www.inaturalist.org answers them."""
        with self._state_lock:
            if path == "/oauth/token":
                try:
                    given = json.loads(body or b"{}")
                    key = tuple(
                        str(given[k])
                        for k in ("username", "password", "client_id", "client_secret")
                    )
                except (ValueError, KeyError):
                    raise _HTTPError(400, "invalid_request") from None
                if key not in self._passwords:
                    raise _HTTPError(401, "invalid_grant")
                access = f"oauth-{uuid.uuid4().hex}"
                self._oauth[access] = self._passwords[key]  # type: ignore[index]
                return {"access_token": access, "token_type": "Bearer", "scope": "write login"}
            access = (authorization or "").removeprefix("Bearer ").strip()
            if access not in self._oauth:
                raise _HTTPError(401, "Unauthorized")
            token = f"jwt-{uuid.uuid4().hex}"
            self._tokens[token] = self._oauth[access]
            return {"api_token": token}

    def _dispatch(
        self,
        path: str,
        query: dict[str, str],
        authorization: str | None = None,
        body: bytes = b"",
    ) -> tuple[int, str, bytes]:
        if len(path) > 1:
            path = path.rstrip("/")
        if path in ("/oauth/token", "/users/api_token"):
            payload = self._login(path, authorization, body)
            return 200, "application/json; charset=utf-8", json.dumps(payload).encode()
        version = path[1:3]
        if version in ("v1", "v2") and (path == f"/{version}" or path[3:4] == "/"):
            if not self._admit_api_request():
                raise _HTTPError(429, "Too Many Requests")
            viewer = self._viewer(authorization)
            if version == "v2":
                payload = self._api_v2(path[len("/v2") :], query, viewer)
            else:
                payload = self._api(path[len("/v1") :], query, viewer)
            return 200, "application/json; charset=utf-8", json.dumps(payload).encode()
        match = _PHOTO_PATH.match(path)
        if match and match.group(2) in PHOTO_SIZES:
            with self._state_lock:
                photo = self._photos.get(int(match.group(1)))
            if photo is not None and photo.state == "normal":
                return 200, "image/jpeg", photo.render(match.group(2))
        placeholder = _PLACEHOLDER_PATH.match(path)
        if placeholder and placeholder.group(1) in PHOTO_SIZES:
            return 200, "image/png", _placeholder_png(placeholder.group(1))
        raise _HTTPError(404, "Not found")

    def _api(self, route: str, query: dict[str, str], viewer: int | None = None) -> dict:
        parts = [part for part in route.split("/") if part]
        if len(parts) == 2 and parts[0] == "users":
            return self._user_answer(parts[1], viewer)
        if len(parts) == 2 and parts[0] == "taxa":
            return self._taxa_answer(parts[1])
        if len(parts) == 2 and parts[0] == "places":
            return self._places_answer(parts[1])
        if parts == ["observations", "deleted"]:
            return self._deleted_answer(query, viewer)
        if parts and parts[0] == "observations" and len(parts) <= 2:
            if len(parts) == 2:
                query = dict(query)
                query["id"] = parts[1]
                query.setdefault("per_page", str(len(parts[1].split(","))))
            return self._search(query, viewer)
        raise _HTTPError(404, "Not found")

    def _api_v2(self, route: str, query: dict[str, str], viewer: int | None) -> dict:
        if route.strip("/") != "observations":
            raise _HTTPError(404, "Not found")
        try:
            fields = parse_rison_fields(query.get("fields") or "(id:!t,uuid:!t)")
        except ValueError:
            raise _HTTPError(422, "fields must be RISON, e.g. (id:!t,taxon:(name:!t))") from None
        answer = self._search(query, viewer)
        answer["results"] = [select_fields(r, fields) for r in answer["results"]]
        return answer

    def _deleted_answer(self, query: dict[str, str], viewer: int | None) -> dict:
        if viewer is None:
            raise _HTTPError(401, "Unauthorized")
        if not query.get("since"):
            raise _HTTPError(422, "since is required")
        try:
            since = _parse_datetime(query["since"])
        except ValueError:
            raise _HTTPError(422, "since must be an ISO 8601 datetime") from None
        per_page = max(1, min(_int_param(query, "per_page", 500), 500))
        page = max(1, _int_param(query, "page", 1))
        with self._state_lock:
            ids = [o for o, user, when in self._deleted if user == viewer and when >= since]
        chosen = ids[(page - 1) * per_page : page * per_page]
        return {"total_results": len(ids), "page": page, "per_page": per_page, "results": chosen}

    def _user_answer(self, ref: str, viewer: int | None = None) -> dict:
        if ref == "me":
            if viewer is None:
                raise _HTTPError(401, "Unauthorized")
            ref = str(viewer)
        with self._state_lock:
            for user in self._users.values():
                if str(user["id"]) == ref or user["login"] == ref:
                    count = sum(
                        1 for obs in self._observations.values() if obs.user["id"] == user["id"]
                    )
                    result = {
                        "id": user["id"],
                        "login": user["login"],
                        "name": user["name"],
                        "observations_count": count,
                        "icon_url": user.get("icon_url"),
                    }
                    return {"total_results": 1, "page": 1, "per_page": 1, "results": [result]}
        raise _HTTPError(404, "Not found")

    def _search(self, query: dict[str, str], viewer: int | None = None) -> dict:
        per_page = _int_param(query, "per_page", DEFAULT_PER_PAGE)
        per_page = max(0, min(per_page, MAX_PER_PAGE))
        page = max(1, _int_param(query, "page", 1))
        if per_page and page * per_page > MAX_RESULT_WINDOW:
            raise _HTTPError(
                403,
                "You reached the maximum number of results. Please use "
                "id_above or id_below to page through more results.",
            )
        tests = []
        users = [
            value
            for key in ("user_id", "user_login")
            if query.get(key)
            for value in query[key].split(",")
        ]
        if users:
            wanted = set(users)
            tests.append(lambda o: str(o.user["id"]) in wanted or o.user["login"] in wanted)
        if query.get("d1"):
            d1 = _date_param(query, "d1")
            tests.append(lambda o: o.observed_on is not None and o.observed_on >= d1)
        if query.get("d2"):
            d2 = _date_param(query, "d2")
            tests.append(lambda o: o.observed_on is not None and o.observed_on <= d2)
        if query.get("photos") in ("true", "false"):
            want = query["photos"] == "true"
            tests.append(lambda o: bool(o.photos) == want)
        if query.get("id"):
            try:
                ids = {int(value) for value in query["id"].split(",") if value}
            except ValueError:
                raise _HTTPError(422, "id must be a list of integers") from None
            tests.append(lambda o: o.id in ids)
        if query.get("id_above"):
            above = _int_param(query, "id_above", 0)
            tests.append(lambda o: o.id > above)
        if query.get("id_below"):
            below = _int_param(query, "id_below", 0)
            tests.append(lambda o: o.id < below)
        if query.get("updated_since"):
            try:
                since = _parse_datetime(query["updated_since"])
            except ValueError:
                raise _HTTPError(422, "updated_since must be an ISO 8601 datetime") from None
            tests.append(lambda o: o.updated_dt >= since)
        order_by = query.get("order_by") or "created_at"
        descending = (query.get("order") or "desc").lower() != "asc"
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        if order_by == "id":

            def key(o: _Observation) -> tuple:
                return (o.id,)
        elif order_by == "observed_on":

            def key(o: _Observation) -> tuple:
                return (o.observed_on or "", o.time_dt or epoch, o.id)
        elif order_by == "updated_at":

            def key(o: _Observation) -> tuple:
                return (o.updated_dt, o.id)
        else:

            def key(o: _Observation) -> tuple:
                return (o.created_dt, o.id)

        with self._state_lock:
            matches = [o for o in self._observations.values() if all(t(o) for t in tests)]
            matches.sort(key=key, reverse=descending)
            chosen = matches[(page - 1) * per_page : page * per_page]
            if query.get("only_id") == "true":
                results = [{"id": o.id} for o in chosen]
            else:
                results = [o.to_json(self.host_url, viewer) for o in chosen]
        for result in results:
            self._add_ancestor_ids(result.get("taxon"))
        return {
            "total_results": len(matches),
            "page": page,
            "per_page": per_page,
            "results": results,
        }

    # -- taxa ---------------------------------------------------------------------------------
    def _lineage(self, taxon_id: int) -> list[int]:
        """Ids from the root down to taxon_id itself, following parent_id."""
        return _parent_chain(self._taxa, taxon_id)

    def _add_ancestor_ids(self, taxon: dict | None) -> None:
        """Observations' taxa carry ancestor_ids (root first, the taxon last), as the real API."""
        if isinstance(taxon, dict) and taxon.get("id") in self._taxa:
            with self._state_lock:
                taxon["ancestor_ids"] = self._lineage(taxon["id"])

    def _taxon_json(self, taxon_id: int) -> dict:
        out = {k: v for k, v in self._taxa[taxon_id].items() if k != "parent_id"}
        lineage = self._lineage(taxon_id)
        out["ancestor_ids"] = lineage
        out["ancestry"] = "/".join(map(str, lineage[:-1])) or None
        out["parent_id"] = self._taxa[taxon_id].get("parent_id")
        return out

    def _taxa_answer(self, ids_text: str) -> dict:
        """GET /v1/taxa/{id,id,...}: each known taxon with its ancestors (at most 30 ids)."""
        ids = _ids_in_path(ids_text, 30)
        with self._state_lock:
            results = []
            for taxon_id in ids:
                if taxon_id not in self._taxa:
                    continue
                record = self._taxon_json(taxon_id)
                record["ancestors"] = [
                    {k: v for k, v in self._taxon_json(a).items() if k != "ancestor_ids"}
                    for a in self._lineage(taxon_id)[:-1]
                ]
                results.append(record)
        return {"total_results": len(results), "page": 1, "per_page": 30, "results": results}

    # -- places -------------------------------------------------------------------------------
    def _place_json(self, place_id: int) -> dict:
        """A place as GET /v1/places/{id} gives it: no code, but a display name that adds the
        codes of the places above, nearest first ('Marin County, CA, US')."""
        place = self._places[place_id]
        chain = _parent_chain(self._places, place_id)
        codes = [self._places[i]["code"] for i in reversed(chain[:-1]) if self._places[i]["code"]]
        return {
            "id": place_id,
            "uuid": _derived_uuid("place", place_id),
            "slug": re.sub(r"[^a-z0-9]+", "-", place["name"].lower()).strip("-"),
            "name": place["name"],
            "display_name": ", ".join([place["name"], *codes]),
            "admin_level": place["admin_level"],
            "place_type": place["place_type"],
            "ancestor_place_ids": chain,
            "bbox_area": 1.0,
            "location": None,
            "geometry_geojson": None,
            "bounding_box_geojson": None,
        }

    def _places_answer(self, ids_text: str) -> dict:
        """GET /v1/places/{id,id,...}: each known place (at most 500 ids)."""
        ids = _ids_in_path(ids_text, 500)
        with self._state_lock:
            results = [self._place_json(i) for i in ids if i in self._places]
        return {"total_results": len(results), "page": 1, "per_page": 500, "results": results}


def _ids_in_path(text: str, most: int) -> list[int]:
    """The ids of a path like /v1/taxa/1,2,3; 422 when they are not numbers or too many."""
    try:
        ids = [int(value) for value in text.split(",") if value]
    except ValueError:
        raise _HTTPError(422, "id must be a list of integers") from None
    if len(ids) > most:
        raise _HTTPError(422, f"too many ids (at most {most})")
    return ids


def _parent_chain(records: dict[int, dict], start: int) -> list[int]:
    """Ids from the root down to start itself, following the records' parent_id."""
    chain: list[int] = []
    current: int | None = start
    while current is not None and current in records and current not in chain:
        chain.insert(0, current)
        parent = records[current].get("parent_id")
        current = int(parent) if parent is not None else None
    return chain


def parse_rison_fields(text: str) -> dict | str:
    """API v2's field selection: ``all``, or RISON such as ``(id:!t,taxon:(name:!t))``."""
    if text.strip() == "all":
        return "all"
    at = 0

    def value() -> Any:
        nonlocal at
        if text.startswith("!t", at):
            at += 2
            return True
        if text.startswith("(", at):
            at += 1
            out: dict[str, Any] = {}
            while not text.startswith(")", at):
                match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:").match(text, at)
                if not match:
                    raise ValueError(f"bad field at {at}")
                at = match.end()
                out[match.group()[:-1]] = value()
                if text.startswith(",", at):
                    at += 1
            at += 1
            return out
        raise ValueError(f"bad value at {at}")

    selection = value()
    if at != len(text) or not isinstance(selection, dict):
        raise ValueError("trailing text")
    return selection


def select_fields(record: Any, fields: dict | str | bool) -> Any:
    """Only the selected fields of a record (lists are selected item by item)."""
    if fields == "all" or fields is True:
        return record
    if isinstance(record, list):
        return [select_fields(item, fields) for item in record]
    if not isinstance(record, dict):
        return record
    return {k: select_fields(record[k], sub) for k, sub in fields.items() if k in record}


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    value = query.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise _HTTPError(422, f"{name} must be an integer") from None


def _date_param(query: dict[str, str], name: str) -> str:
    value = query[name].strip()
    try:
        if len(value) > 10:
            return _parse_datetime(value).date().isoformat()
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise _HTTPError(422, f"{name} must be a date (YYYY-MM-DD)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake iNaturalist API on 127.0.0.1.")
    parser.add_argument("scenario", type=Path, help="scenario JSON file")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s for photos")
    parser.add_argument(
        "--max-requests-per-second",
        type=float,
        default=None,
        help="answer 429 above this API request rate",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = FakeINaturalist(
        args.scenario,
        latency=args.latency,
        bandwidth=args.bandwidth,
        max_requests_per_second=args.max_requests_per_second,
        port=args.port,
    )
    with fake:
        print(fake.api_url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
