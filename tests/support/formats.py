"""Pictures in camera formats, written from scratch: DNG (a RAW that LibRaw opens) and HEIC.

* ``write_dng(path, picture, ...)``: a DNG 1.4 file whose raw image is a Bayer mosaic of
  ``picture`` (16 bit, uncompressed, in a SubIFD) and whose IFD0 is a baseline JPEG preview,
  with EXIF (DateTimeOriginal, Orientation, GPS) as cameras write it. LibRaw opens it,
  ``extract_thumb()`` returns the preview, and exiv2 reads its EXIF.
* ``write_heic(path, picture, ...)``: a HEIC file through pillow-heif with the same EXIF.

Nothing here is copied from a camera or another project; the TIFF layout follows the TIFF 6.0
and DNG 1.4 specifications.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

# TIFF field types: (code, struct format of one value)
_TYPES = {
    "BYTE": (1, "B"),
    "ASCII": (2, "B"),
    "SHORT": (3, "H"),
    "LONG": (4, "I"),
    "RATIONAL": (5, "II"),
    "SRATIONAL": (10, "ii"),
    "UNDEFINED": (7, "B"),
}

# sRGB (D65) to CIE XYZ: the mosaic holds XYZ so that an identity ColorMatrix1 is correct.
_SRGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
)


def _rational(value: float, denominator: int = 10000) -> tuple[int, int]:
    return round(value * denominator), denominator


class _Ifd:
    """One image file directory: entries as (tag, type, values)."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str, list]] = []

    def add(self, tag: int, kind: str, values: object) -> None:
        if kind == "ASCII":
            values = list(str(values).encode("ascii") + b"\0")
        elif kind in ("BYTE", "UNDEFINED") and isinstance(values, bytes):
            values = list(values)
        elif not isinstance(values, (list, str)):  # a str here is 'offset:NAME'
            values = [values]
        self.entries.append((tag, kind, values))


def _value_bytes(kind: str, values: list) -> bytes:
    fmt = _TYPES[kind][1]
    out = b""
    for value in values:
        out += struct.pack("<" + fmt, *(value if isinstance(value, tuple) else (value,)))
    return out


def _layout(ifds: list[_Ifd], blobs: dict[str, bytes]) -> bytes:
    """Serialise IFDs (each followed by its out-of-line values) and then the blobs.

    An entry whose values are the string 'offset:NAME' points at blob NAME or at IFD 'ifdN'.
    """
    # First pass: sizes, to know where everything lands.
    position = 8
    ifd_at: list[int] = []
    for ifd in ifds:
        ifd_at.append(position)
        position += 2 + 12 * len(ifd.entries) + 4
        for _tag, kind, values in ifd.entries:
            size = len(_value_bytes(kind, [0] if isinstance(values, str) else values))
            if size > 4:
                position += size + (size & 1)
    ifds_end = position
    blob_at = {}
    for name, data in blobs.items():
        blob_at[name] = position
        position += len(data) + (len(data) & 1)
    targets = {**blob_at, **{f"ifd{i}": at for i, at in enumerate(ifd_at)}}

    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at[0]))
    for index, ifd in enumerate(ifds):
        entries = sorted(ifd.entries)
        extra = bytearray()
        extra_at = len(out) + 2 + 12 * len(entries) + 4
        table = bytearray(struct.pack("<H", len(entries)))
        for tag, kind, values in entries:
            if isinstance(values, str):  # a pointer to a blob or another IFD
                values = [targets[values.removeprefix("offset:")]]
            data = _value_bytes(kind, values)
            count = len(values)
            if len(data) <= 4:
                field = data.ljust(4, b"\0")
            else:
                field = struct.pack("<I", extra_at + len(extra))
                extra += data + (b"\0" if len(data) & 1 else b"")
            table += struct.pack("<HHI", tag, _TYPES[kind][0], count) + field
        next_ifd = 0  # every IFD here stands alone (SubIFD, EXIF, GPS hang off IFD0)
        table += struct.pack("<I", next_ifd)
        out += table + extra
        assert len(out) == (ifd_at[index + 1] if index + 1 < len(ifds) else ifds_end)
    for data in blobs.values():
        out += data + (b"\0" if len(data) & 1 else b"")
    return bytes(out)


def _exif_ifds(
    taken: dt.datetime | None, gps: tuple[float, float] | None
) -> tuple[_Ifd, _Ifd | None]:
    exif = _Ifd()
    exif.add(0x9000, "UNDEFINED", b"0231")  # ExifVersion
    if taken is not None:
        exif.add(0x9003, "ASCII", taken.strftime("%Y:%m:%d %H:%M:%S"))  # DateTimeOriginal
    if gps is None:
        return exif, None
    gps_ifd = _Ifd()
    gps_ifd.add(0x0000, "BYTE", [2, 3, 0, 0])  # GPSVersionID
    for (ref_tag, value_tag), value, signs in (
        ((1, 2), gps[0], "NS"),
        ((3, 4), gps[1], "EW"),
    ):
        degrees = abs(value)
        whole = int(degrees)
        minutes = (degrees - whole) * 60
        gps_ifd.add(ref_tag, "ASCII", signs[0] if value >= 0 else signs[1])
        gps_ifd.add(value_tag, "RATIONAL", [(whole, 1), _rational(minutes, 1_000_000), (0, 1)])
    return exif, gps_ifd


def _jpeg(picture: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def bayer_mosaic(picture: Image.Image) -> np.ndarray:
    """An RGGB mosaic of picture in linear XYZ, 16 bit: what a sensor would have recorded."""
    srgb = np.asarray(picture.convert("RGB"), dtype=np.float64) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = np.clip(linear @ _SRGB_TO_XYZ.T, 0, 1)
    height, width = xyz.shape[:2]
    mosaic = np.empty((height, width), dtype=np.float64)
    mosaic[0::2, 0::2] = xyz[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = xyz[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = xyz[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = xyz[1::2, 1::2, 2]
    return np.round(mosaic * 60000).astype("<u2")


def write_dng(
    path: Path,
    picture: Image.Image,
    *,
    taken: dt.datetime | None,
    preview_side: int | None = None,
    orientation: int = 1,
    gps: tuple[float, float] | None = None,
    model: str = "Test Camera",
    xmp: bytes | None = None,
) -> None:
    """Write picture as a DNG: raw mosaic in a SubIFD, a JPEG preview in IFD0.

    picture is given as the sensor saw it (before orientation); preview_side limits the
    preview's longest side (None: as large as the raw image); xmp is an XMP packet to embed
    (tag 700, as cameras and raw converters write it).
    """
    width, height = picture.size
    width, height = width - width % 2, height - height % 2
    picture = picture.crop((0, 0, width, height))
    preview = picture.copy()
    if preview_side is not None:
        preview.thumbnail((preview_side, preview_side))
    preview_data = _jpeg(preview)
    raw_data = bayer_mosaic(picture).tobytes()

    ifd0 = _Ifd()
    ifd0.add(254, "LONG", 1)  # NewSubfileType: reduced-resolution (the preview)
    ifd0.add(256, "LONG", preview.width)
    ifd0.add(257, "LONG", preview.height)
    ifd0.add(258, "SHORT", [8, 8, 8])
    ifd0.add(259, "SHORT", 7)  # JPEG
    ifd0.add(262, "SHORT", 6)  # YCbCr
    ifd0.add(271, "ASCII", "Testmaker")
    ifd0.add(272, "ASCII", model)
    ifd0.add(273, "LONG", "offset:preview")
    ifd0.add(274, "SHORT", orientation)
    ifd0.add(277, "SHORT", 3)
    ifd0.add(278, "LONG", preview.height)
    ifd0.add(279, "LONG", len(preview_data))
    ifd0.add(284, "SHORT", 1)
    ifd0.add(305, "ASCII", "raw_heic_files.py")
    ifd0.add(330, "LONG", "offset:ifd1")  # SubIFDs: the raw image
    ifd0.add(34665, "LONG", "offset:ifd2")  # ExifIFD
    ifd0.add(50706, "BYTE", [1, 4, 0, 0])  # DNGVersion
    ifd0.add(50707, "BYTE", [1, 1, 0, 0])  # DNGBackwardVersion
    ifd0.add(50708, "ASCII", f"Testmaker {model}")  # UniqueCameraModel
    identity = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    ifd0.add(50721, "SRATIONAL", identity)  # ColorMatrix1: the camera records XYZ
    ifd0.add(50728, "RATIONAL", [_rational(0.9505), (1, 1), _rational(1.089)])  # AsShotNeutral
    ifd0.add(50778, "SHORT", 21)  # CalibrationIlluminant1: D65
    if xmp is not None:
        ifd0.add(700, "BYTE", list(xmp))  # XMP

    raw = _Ifd()
    raw.add(254, "LONG", 0)  # the main image
    raw.add(256, "LONG", width)
    raw.add(257, "LONG", height)
    raw.add(258, "SHORT", 16)
    raw.add(259, "SHORT", 1)  # uncompressed
    raw.add(262, "SHORT", 32803)  # CFA
    raw.add(273, "LONG", "offset:raw")
    raw.add(277, "SHORT", 1)
    raw.add(278, "LONG", height)
    raw.add(279, "LONG", len(raw_data))
    raw.add(284, "SHORT", 1)
    raw.add(33421, "SHORT", [2, 2])  # CFARepeatPatternDim
    raw.add(33422, "BYTE", [0, 1, 1, 2])  # CFAPattern: RGGB
    raw.add(50710, "BYTE", [0, 1, 2])  # CFAPlaneColor
    raw.add(50711, "SHORT", 1)  # CFALayout: rectangular
    raw.add(50714, "LONG", 0)  # BlackLevel
    raw.add(50717, "LONG", 60000)  # WhiteLevel

    exif, gps_ifd = _exif_ifds(taken, gps)
    ifds = [ifd0, raw, exif]
    if gps_ifd is not None:
        ifd0.add(34853, "LONG", "offset:ifd3")  # GPS IFD
        ifds.append(gps_ifd)
    path.write_bytes(_layout(ifds, {"preview": preview_data, "raw": raw_data}))


def exif_bytes(
    taken: dt.datetime | None, orientation: int = 1, gps: tuple[float, float] | None = None
) -> bytes:
    """An EXIF block (as Pillow writes it) with DateTimeOriginal, Orientation and GPS."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Testmaker"
    exif[0x0110] = "Test Phone"
    if taken is not None:
        exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
    if gps is not None:
        info = exif.get_ifd(0x8825)
        info[1] = "N" if gps[0] >= 0 else "S"
        info[2] = (abs(gps[0]), 0.0, 0.0)
        info[3] = "E" if gps[1] >= 0 else "W"
        info[4] = (abs(gps[1]), 0.0, 0.0)
    return exif.tobytes()


def write_heic(
    path: Path,
    picture: Image.Image,
    *,
    taken: dt.datetime | None,
    orientation: int = 1,
    gps: tuple[float, float] | None = None,
    quality: int = 90,
    xmp: bytes | None = None,
) -> None:
    """Write picture as HEIC with EXIF (and xmp, an XMP packet, when given); picture is
    given upright, as a phone shows it.

    With an orientation other than 1 the stored pixels are turned the other way and the
    file says how to turn them back (pillow-heif writes that as HEIF transforms, as phones do).
    """
    import pillow_heif

    stored = picture.convert("RGB")
    undo = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }
    if orientation in undo:
        stored = stored.transpose(undo[orientation])
    pillow_heif.register_heif_opener()
    extra = {"xmp": xmp} if xmp is not None else {}
    stored.save(
        path, format="HEIF", quality=quality, exif=exif_bytes(taken, orientation, gps), **extra
    )


def xmp_packet(keywords: Sequence[str], title: str = "", rating: int | None = None) -> bytes:
    """An XMP packet with dc:subject keywords (a bag), a title and a rating, as a photo
    manager writes into a file."""
    bag = "".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in keywords)
    extra = f' xmp:Rating="{rating}"' if rating is not None else ""
    title_xml = (
        f'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{escape(title)}</rdf:li></rdf:Alt>'
        "</dc:title>"
        if title
        else ""
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
        ' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        f' xmlns:xmp="http://ns.adobe.com/xap/1.0/"{extra}>'
        f"<dc:subject><rdf:Bag>{bag}</rdf:Bag></dc:subject>{title_xml}"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()
