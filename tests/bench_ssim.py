"""Time SSIM-PIL's CPU path against inat_photos' numpy and OpenCL scores on a 1024x768 pair.

Run: python tests/bench_ssim.py
"""

import time
from collections.abc import Callable
from functools import partial

import numpy as np
from SSIM_PIL import compare_ssim
from support.images import recompressed, synthetic_photo

from inat_photos import OpenCLSimilarity, OpenCLUnavailable, ssim_score


def ms_per_call(function: Callable[[], float], runs: int) -> tuple[float, float]:
    """Return the best wall time of runs calls in milliseconds, and the last score."""
    score, best = function(), float("inf")  # the first call warms caches and the device
    for _ in range(runs):
        start = time.perf_counter()
        score = function()
        best = min(best, time.perf_counter() - start)
    return best * 1e3, score


def main() -> None:
    """Build a photo-like pair, time each implementation and print a table."""

    photo = synthetic_photo(1024, 768, seed=11)
    copy = recompressed(photo)
    first, second = np.asarray(photo), np.asarray(copy)
    rows = [
        ("SSIM-PIL (GPU=False)", *ms_per_call(lambda: compare_ssim(photo, copy, GPU=False), 3)),
        ("ssim_score (numpy)", *ms_per_call(lambda: ssim_score(first, second), 50)),
    ]
    try:
        scorers = [OpenCLSimilarity()]
        if scorers[0].fp64:  # also time the single-precision path of devices without fp64
            scorers.append(OpenCLSimilarity(use_fp64=False))
    except OpenCLUnavailable as error:
        print(f"OpenCL skipped: {error}")
        scorers = []
    for opencl in scorers:
        label = f"OpenCL {'fp64' if opencl.fp64 else 'fp32'} ({opencl.device_name})"
        rows.append((label, *ms_per_call(partial(opencl.score, first, second), 50)))
    reference = rows[0][1]
    print("1024x768 pair, best of runs")
    print(f"{'implementation':<44} {'ms/pair':>9} {'speed-up':>9}  score")
    for name, ms, score in rows:
        print(f"{name:<44} {ms:9.2f} {reference / ms:8.0f}x  {score:.12f}")


if __name__ == "__main__":
    main()
