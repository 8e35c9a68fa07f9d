"""Generated pictures, and readers of a picture's pixels."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

# -- making pictures ----------------------------------------------------------------------------


def texture(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A picture unlike every other seed's: coarse colour blobs plus finer detail."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    fine = Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8))
    return Image.blend(
        coarse.resize(size, Image.Resampling.BICUBIC),
        fine.resize(size, Image.Resampling.BICUBIC),
        0.4,
    )


# -- reading pixels -----------------------------------------------------------------------------


def pixels(path: Path) -> np.ndarray:
    """The picture's pixels as an RGB array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pixel_digest(path: Path) -> str:
    """A digest of the decoded pixels, mode and size (works for names exiv2 cannot open)."""
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()
        return hashlib.sha256(
            image.mode.encode() + repr(image.size).encode() + image.tobytes()
        ).hexdigest()
