"""Issue 5, part 4: SIGKILL at any moment (cron timeout, OOM killer, power cut) never leaves a
photo half-written.

A few dozen generated photos, each with an iNaturalist twin. The CLI is started again and
again and killed with SIGKILL at a random moment, most often right after it announced a write.
After every kill each photo must decode to exactly its old pixels and carry either none or all
of the iNaturalist properties (with the caption), consistent with the scenario. A last normal
run must then finish the job from whatever cache the killed runs left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.files import TEMP_SUFFIX, temp_files
from support.images import pixel_digest
from support.world import assert_tagged, make_world
from support.xmp import INAT_TAGS, read_xmp

import inat_photos as ip

PHOTOS = 24
ROUNDS = 8
SEED = 5  # the issue number; change it to explore other kill moments
ROUND_TIMEOUT = 60  # seconds; a round that takes longer is a hang

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def check_all_or_nothing(world, pixels: dict[Path, str], context: str) -> int:
    """Every photo: same pixels; no iNaturalist property, or all of them, right. Returns how
    many are tagged."""
    tagged = 0
    for twin in world.twins:
        where = f"{twin.path.name} after {context}"
        assert pixel_digest(twin.path) == pixels[twin.path], f"pixels changed: {where}"
        xmp = read_xmp(twin.path)
        present = [tag for tag in INAT_TAGS if tag in xmp]
        if not present:
            assert ip.TAG_SUBJECT not in xmp, f"caption without ids: {where}"
            continue
        assert len(present) == len(INAT_TAGS), f"only {present}: {where}"
        assert_tagged(twin)
        tagged += 1
    visible = sorted(
        name
        for name in os.listdir(world.pictures)
        if not name.startswith(".") and world.pictures / name not in pixels
    )
    assert visible == [], f"files appeared in the archive after {context}: {visible}"
    return tagged


def test_sigkill_at_random_moments_never_leaves_a_half_written_photo(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    world = make_world(tmp_path, PHOTOS, size=(640, 480), seed=SEED)
    pristine = {twin.path: twin.path.read_bytes() for twin in world.twins}
    pixels = {path: pixel_digest(path) for path in pristine}
    stats = {"killed": 0, "killed while writing": 0, "finished before the kill": 0}
    leftovers_seen = 0

    with world.fake() as server:
        for round_number in range(ROUNDS):
            # Untag a random half, so that every round has photos to write.
            for twin in rng.sample(world.twins, PHOTOS // 2):
                twin.path.write_bytes(pristine[twin.path])
            process = world.start_cli(
                server.api_url,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                errors="replace",
            )
            watchdog = threading.Timer(ROUND_TIMEOUT, process.kill)  # a hang ends too
            watchdog.start()
            started = time.monotonic()
            output = []
            try:
                assert process.stdout is not None
                if round_number % 2 == 0:  # kill during the writes
                    wanted = rng.randint(1, 8)
                    for line in process.stdout:
                        output.append(line)
                        if sum("Updating subject" in ln for ln in output) >= wanted:
                            break
                    time.sleep(rng.uniform(0, 0.03))
                else:  # kill at any moment: loading, asking iNaturalist, downloading, writing
                    time.sleep(rng.uniform(0.2, 2.5))
                process.send_signal(signal.SIGKILL)
            finally:
                if process.poll() is None:
                    process.kill()
                output.append(process.communicate(timeout=ROUND_TIMEOUT)[0])
                watchdog.cancel()
            assert time.monotonic() - started < ROUND_TIMEOUT, f"round {round_number} hung"
            printed = "".join(output)
            if process.returncode == -signal.SIGKILL:
                stats["killed"] += 1
                writing = "Updating subject" in printed and "Summary:" not in printed
                stats["killed while writing"] += writing
            else:
                assert process.returncode == 0, f"round {round_number}: {printed}"
                stats["finished before the kill"] += 1
            check_all_or_nothing(world, pixels, f"kill {round_number}")
            leftovers_seen = max(leftovers_seen, len(temp_files(world.pictures)))

        assert stats["killed while writing"] >= ROUNDS // 4, stats
        # A temporary copy left by an earlier killed run must stay invisible too.
        stale = world.pictures / f".{world.twins[0].path.name}.k1ll3d{TEMP_SUFFIX}"
        stale.write_bytes(pristine[world.twins[0].path][:5000])
        final = world.run_cli(server.api_url)

    everything = final.stdout + final.stderr
    assert final.returncode == 0, everything
    assert "Traceback" not in everything
    assert f"Loaded {PHOTOS} local photos" in final.stdout
    assert TEMP_SUFFIX not in everything
    assert check_all_or_nothing(world, pixels, "the final run") == PHOTOS
    left = temp_files(world.pictures)
    print(
        f"\nkill rounds: {stats}; most hidden temporary files seen after a kill: "
        f"{leftovers_seen}; after the final run: {left}"
    )
