"""inat_photos' SSIM scores against SSIM-PIL's reference implementation, on photo-like pictures."""

import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from SSIM_PIL import compare_ssim
from support.images import recompressed, synthetic_photo

from inat_photos import OpenCLSimilarity, OpenCLUnavailable, ssim_score

# SSIM-PIL's CPU path calls Image.getdata once per tile and channel.
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")


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


def test_opencl_scores_from_many_threads_at_once(opencl: OpenCLSimilarity, pairs: dict) -> None:
    """The comparing threads share one kernel: each score must still be its own pair's."""
    work = [arrays(pairs[kind]) for kind in ("identical", "recompressed", "unrelated")] * 20
    expected = [ssim_score(*pair) for pair in work]
    with ThreadPoolExecutor(max_workers=8) as pool:
        scores = list(pool.map(lambda pair: opencl.score(*pair), work))
    assert scores == pytest.approx(expected, abs=1e-6)


def test_opencl_unavailable_without_pyopencl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # makes "import pyopencl" fail
    with pytest.raises(OpenCLUnavailable, match="pyopencl"):
        OpenCLSimilarity()


def test_opencl_unavailable_without_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    no_devices = types.SimpleNamespace(get_platforms=list, Error=RuntimeError)
    monkeypatch.setitem(sys.modules, "pyopencl", no_devices)
    with pytest.raises(OpenCLUnavailable, match="no OpenCL device"):
        OpenCLSimilarity()
