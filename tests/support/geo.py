"""Readers of the GPS position and location names in a picture or sidecar, each independent of
the tool: exiv2's raw EXIF rationals, Pillow's GPS IFD, XMP's 'DD,MM.mmN' text and, where it is
installed, exiftool. And the bytes of a JPEG that are not metadata, to show pixels untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

from PIL import Image

from support.xmp import read_exif, read_xmp

EXIFTOOL = shutil.which("exiftool")


def exif_dms(value: float, denominator: int = 100) -> str:
    """Degrees as an EXIF rational triple, seconds in 1/denominator: 37.42 ->
    '37/1 25/1 1200/100' (the sign goes in the Ref tag)."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60 * denominator)
    if seconds == 60 * denominator:
        minutes, seconds = minutes + 1, 0
    if minutes == 60:
        degrees, minutes = degrees + 1, 0
    return f"{degrees}/1 {minutes}/1 {seconds}/{denominator}"


def gps_exif(lat: float, lng: float, denominator: int = 100) -> dict[str, str]:
    """The four EXIF GPS tags of a position."""
    return {
        "Exif.GPSInfo.GPSLatitude": exif_dms(lat, denominator),
        "Exif.GPSInfo.GPSLatitudeRef": "N" if lat >= 0 else "S",
        "Exif.GPSInfo.GPSLongitude": exif_dms(lng, denominator),
        "Exif.GPSInfo.GPSLongitudeRef": "E" if lng >= 0 else "W",
    }


# What the tool may write (and --dissociate must remove), and nothing else.
GPS_EXIF = (
    "Exif.GPSInfo.GPSLatitudeRef",
    "Exif.GPSInfo.GPSLatitude",
    "Exif.GPSInfo.GPSLongitudeRef",
    "Exif.GPSInfo.GPSLongitude",
    "Exif.GPSInfo.GPSMapDatum",
    "Exif.GPSInfo.GPSHPositioningError",
)
LOCATION_XMP = (
    "Xmp.photoshop.Country",
    "Xmp.iptc.CountryCode",
    "Xmp.photoshop.State",
    "Xmp.photoshop.City",
    "Xmp.iptc.Location",
)


def exif_degrees(rationals: str, ref: str) -> float:
    """An EXIF rational triple and its Ref tag ('S', 'W': negative) as signed degrees."""
    parts = [Fraction(part) for part in rationals.split()]
    value = float(sum(part / 60**i for i, part in enumerate(parts)))
    return -value if ref.strip().upper() in ("S", "W") else value


def exiv2_position(path: Path) -> tuple[float, float] | None:
    """(lat, lng) from the file's EXIF GPS as exiv2 reads it; None when there is none."""
    exif = read_exif(path)
    if "Exif.GPSInfo.GPSLatitude" not in exif:
        return None
    return (
        exif_degrees(exif["Exif.GPSInfo.GPSLatitude"], exif["Exif.GPSInfo.GPSLatitudeRef"]),
        exif_degrees(exif["Exif.GPSInfo.GPSLongitude"], exif["Exif.GPSInfo.GPSLongitudeRef"]),
    )


def pillow_position(path: Path) -> tuple[float, float] | None:
    """(lat, lng) from the GPS IFD as Pillow reads it; None when there is none."""
    with Image.open(path) as image:
        gps = image.getexif().get_ifd(0x8825)
    if 2 not in gps:
        return None
    lat = sum(float(v) / 60**i for i, v in enumerate(gps[2]))
    lng = sum(float(v) / 60**i for i, v in enumerate(gps[4]))
    return (-lat if gps[1] == "S" else lat, -lng if gps[3] == "W" else lng)


def _xmp_degrees(text: str) -> float:
    """'48,51.50222N' (or 'DD,MM,SSN') as signed degrees."""
    parts = [float(p) for p in text[:-1].split(",")]
    value = sum(p / 60**i for i, p in enumerate(parts))
    return -value if text[-1] in "SW" else value


def xmp_position(path: Path) -> tuple[float, float] | None:
    """(lat, lng) from exif:GPSLatitude/Longitude in the XMP of path; None when absent."""
    xmp = read_xmp(path)
    if "Xmp.exif.GPSLatitude" not in xmp:
        return None
    return _xmp_degrees(xmp["Xmp.exif.GPSLatitude"]), _xmp_degrees(xmp["Xmp.exif.GPSLongitude"])


def exiftool_tags(path: Path) -> dict:
    """exiftool's view of a file: GPS as signed numbers and the IPTC location fields."""
    assert EXIFTOOL is not None
    fields = ["GPSLatitude", "GPSLongitude", "GPSMapDatum", "Country", "CountryCode", "State"]
    fields += ["City", "Location"]
    done = subprocess.run(
        [EXIFTOOL, "-json", "-n", *(f"-{name}" for name in fields), str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)[0]


def close(a: tuple[float, float] | None, b: tuple[float, float], tolerance: float = 1e-6) -> bool:
    return a is not None and abs(a[0] - b[0]) <= tolerance and abs(a[1] - b[1]) <= tolerance


def jpeg_picture_bytes(path: Path) -> bytes:
    """A JPEG without its APPn and COM segments: the tables, frame and scan, i.e. the pixels."""
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8", path
    kept, at = [], 2
    while at < len(data) and data[at + 1] != 0xDA:  # up to the start of scan
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            kept.append(data[at : at + 2 + length])
        at += 2 + length
    return b"".join(kept) + data[at:]
