"""Generated pictures, and readers of a picture's pixels."""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

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


@functools.cache
def noise_tile(
    seed: int, shape: tuple[int, int, int], mean: float = 0, sd: float = 1
) -> np.ndarray:
    """A fixed tile of colour noise (sensor grain), drawn once per process; read-only."""
    tile = np.random.default_rng(seed).normal(mean, sd, shape)
    tile.flags.writeable = False  # shared by every caller
    return tile


def jpeg(picture: Image.Image, quality: int) -> Image.Image:
    """Round-trip a picture through JPEG, as cameras and iNaturalist do."""
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _natural_texture(rng: np.random.Generator, height: int, width: int) -> Callable[[], np.ndarray]:
    """Draws of 1/f texture (as in natural scenes) of this size: zero mean, unit variance."""
    freq = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    amplitude = 1 / np.maximum(freq, 1 / max(height, width))

    def texture() -> np.ndarray:
        noise = rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)
        field = np.fft.irfft2(amplitude * noise, s=(height, width))
        return (field - field.mean()) / field.std()

    return texture


def synthetic_photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: 1/f texture as in natural scenes, soft-edged objects, JPEG."""
    rng = np.random.default_rng(seed)
    h, w = 2 * height, 2 * width  # rendered larger then downsampled, like a camera pipeline
    texture = _natural_texture(rng, h, w)
    light, red_green, blue_yellow = texture(), texture(), texture()
    chroma = np.stack([red_green, blue_yellow, -red_green - blue_yellow], axis=-1)
    rgb = rng.uniform(60, 170, 3) + 45 * light[..., None] + 12 * chroma
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = rng.uniform(0.05, 0.25) * min(h, w)
        mask = np.clip((radius - np.hypot(yy - cy, xx - cx)) / 3, 0, 1)[..., None]
        rgb = rgb * (1 - mask) + (rng.uniform(0, 255, 3) + 25 * light[..., None]) * mask
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))  # clipping = blown highlights
    return jpeg(picture.resize((width, height), Image.LANCZOS), 92)


def soft_cornered_photo(width: int, height: int, seed: int) -> Image.Image:
    """A detailed photo (1/f texture, sharp-edged discs) whose upper right quarter is an
    out-of-focus background: a crop of that quarter scores higher at a small upload size
    than the whole frame, whose fine detail the downscaling loses. Quick at 2000 px."""
    rng = np.random.default_rng(seed)
    texture = _natural_texture(rng, height, width)
    light, red_green = texture(), texture()
    rgb = np.stack(
        [110 + 45 * light + 15 * red_green, 120 + 45 * light - 10 * red_green, 90 + 40 * light],
        axis=-1,
    )
    for _ in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.04, 0.15) * min(height, width)
        top, left = max(0, int(cy - radius - 4)), max(0, int(cx - radius - 4))
        bottom, right = min(height, int(cy + radius + 4)), min(width, int(cx + radius + 4))
        yy, xx = np.mgrid[top:bottom, left:right]
        mask = np.clip((radius - np.hypot(yy - cy, xx - cx)) / 3, 0, 1)[..., None]
        inside = rng.uniform(0, 255, 3) + 25 * light[top:bottom, left:right, None]
        rgb[top:bottom, left:right] = rgb[top:bottom, left:right] * (1 - mask) + inside * mask
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    corner = (width // 2, 0, width, height // 2)
    picture.paste(picture.crop(corner).filter(ImageFilter.GaussianBlur(4)), corner)
    return picture


def recompressed(picture: Image.Image) -> Image.Image:
    """The picture as a web service would serve it: downscaled, upscaled back, JPEG quality 75."""
    width, height = picture.size
    smaller = picture.resize((width * 4 // 5, height * 4 // 5), Image.LANCZOS)
    return jpeg(smaller.resize((width, height), Image.BICUBIC), 75)


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
