"""inat_photos' SSIM scores against SSIM-PIL's reference implementation, on photo-like pictures."""

import io
import sys
import types

import numpy as np
import pytest
from PIL import Image
from SSIM_PIL import compare_ssim

from inat_photos import OpenCLSimilarity, OpenCLUnavailable, ssim_score

# SSIM-PIL's CPU path calls Image.getdata once per tile and channel.
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")


def jpeg(picture: Image.Image, quality: int) -> Image.Image:
    """Round-trip a picture through JPEG, as cameras and iNaturalist do."""
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def synthetic_photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: 1/f texture as in natural scenes, soft-edged objects, JPEG."""
    rng = np.random.default_rng(seed)
    h, w = 2 * height, 2 * width  # rendered larger then downsampled, like a camera pipeline
    freq = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    amplitude = 1 / np.maximum(freq, 1 / max(h, w))

    def texture() -> np.ndarray:
        noise = rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)
        field = np.fft.irfft2(amplitude * noise, s=(h, w))
        return (field - field.mean()) / field.std()

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


def recompressed(picture: Image.Image) -> Image.Image:
    """The picture as a web service would serve it: downscaled, upscaled back, JPEG quality 75."""
    width, height = picture.size
    smaller = picture.resize((width * 4 // 5, height * 4 // 5), Image.LANCZOS)
    return jpeg(smaller.resize((width, height), Image.BICUBIC), 75)


SIZES = [(250, 187), (103, 71)]  # neither side a multiple of 7, so partial tiles get cropped


@pytest.fixture(scope="module", params=SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def pairs(request: pytest.FixtureRequest) -> dict[str, tuple[Image.Image, Image.Image]]:
    """Identical, recompressed and unrelated photo-like pairs of one size."""
    width, height = request.param
    photo = synthetic_photo(width, height, seed=1)
    other = synthetic_photo(width, height, seed=2)
    return {
        "identical": (photo, photo.copy()),
        "recompressed": (photo, recompressed(photo)),
        "unrelated": (photo, other),
    }


def arrays(pair: tuple[Image.Image, Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """The pair as HxWx3 uint8 arrays."""
    return np.asarray(pair[0]), np.asarray(pair[1])


@pytest.fixture(scope="module", params=[True, False], ids=["default", "fp32"])
def opencl(request: pytest.FixtureRequest) -> OpenCLSimilarity:
    """OpenCL scorers built once: the default, and forced single precision as without fp64."""
    try:
        return OpenCLSimilarity(use_fp64=request.param)
    except OpenCLUnavailable as error:
        if "kernel did not build" in str(error):
            raise  # a device is there, so this is a bug in the kernel, not a reason to skip
        pytest.skip(f"OpenCL unavailable: {error}")


@pytest.mark.parametrize("kind", ["identical", "recompressed", "unrelated"])
def test_matches_ssim_pil(pairs: dict, kind: str) -> None:
    expected = compare_ssim(*pairs[kind], tile_size=7, GPU=False)
    assert ssim_score(*arrays(pairs[kind])) == pytest.approx(expected, abs=1e-6)


def test_score_ranks_pairs(pairs: dict) -> None:
    scores = {kind: ssim_score(*arrays(pair)) for kind, pair in pairs.items()}
    assert scores["identical"] == pytest.approx(1.0, abs=1e-12)
    assert 0.8 < scores["recompressed"] < 0.999
    assert scores["unrelated"] < 0.4


def test_symmetric(pairs: dict) -> None:
    first, second = arrays(pairs["recompressed"])
    assert ssim_score(first, second) == pytest.approx(ssim_score(second, first), abs=1e-12)


def test_ignores_partial_tiles() -> None:
    first, second = arrays((synthetic_photo(30, 23, seed=3), synthetic_photo(30, 23, seed=4)))
    changed = second.copy()
    changed[21:, :] = 0  # rows and columns past the last whole tile (28x21) never count
    changed[:, 28:] = 255
    pictures = Image.fromarray(first), Image.fromarray(changed)
    reference = compare_ssim(*pictures, tile_size=7, GPU=False)
    assert ssim_score(first, changed) == pytest.approx(reference, abs=1e-6)
    assert ssim_score(first, changed) == ssim_score(first, second)


def test_rejects_bad_shapes() -> None:
    picture = np.zeros((20, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        ssim_score(picture, picture[:, :19])
    with pytest.raises(ValueError):
        ssim_score(picture[:6], picture[:6])


@pytest.mark.parametrize("kind", ["identical", "recompressed", "unrelated"])
def test_opencl_matches_numpy(opencl: OpenCLSimilarity, pairs: dict, kind: str) -> None:
    first, second = arrays(pairs[kind])
    assert opencl.device_name
    assert opencl.score(first, second) == pytest.approx(ssim_score(first, second), abs=1e-6)


def test_opencl_unavailable_without_pyopencl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # makes "import pyopencl" fail
    with pytest.raises(OpenCLUnavailable, match="pyopencl"):
        OpenCLSimilarity()


def test_opencl_unavailable_without_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    no_devices = types.SimpleNamespace(get_platforms=list, Error=RuntimeError)
    monkeypatch.setitem(sys.modules, "pyopencl", no_devices)
    with pytest.raises(OpenCLUnavailable, match="no OpenCL device"):
        OpenCLSimilarity()
