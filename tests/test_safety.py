"""Issue 5, part 1: photos are only ever replaced whole, dry runs write nothing, one run at a time.

The generated world (support/world.py) and its fixtures `world` and `fake` (conftest.py) are
shared with test_faults.py, test_hostile_input.py and test_kill.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pyexiv2
import pytest
from fake_inat import FakeINaturalist
from PIL import Image
from support.cli import CliResult, summary_numbers
from support.files import digest, temp_files
from support.world import Twin, World, assert_tagged, exif_time, make_world
from support.xmp import read_xmp, write_exif

import inat_photos as ip


def assert_failed_write(result: CliResult, world: World, victim: Twin, before: dict) -> None:
    """The common promise for a write that failed: reported, nothing half-done, rest done."""
    assert result.returncode == ip.EXIT_FILE_ERRORS, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    reported = [ln for ln in result.stderr.splitlines() if str(victim.path) in ln]
    assert reported, f"{victim.path.name} not named on stderr:\n{result.stderr}"
    assert digest(victim.path) == before[victim.path][0], "the original was changed"
    assert victim.path.stat().st_mode == before[victim.path][1]
    assert ip.TAG_OBSERVATION not in read_xmp(victim.path)
    assert temp_files(world.pictures) == []
    for twin in world.twins:
        if twin is not victim:
            assert_tagged(twin)
    numbers = summary_numbers(result.stdout)
    assert numbers["added"] == len(world.twins) - 1
    assert numbers["locals_left"] == 1


def assert_written_next_time(monkeypatch, capsys, world: World, api_url: str, victim: Twin) -> None:
    """With the fault gone, the next run writes the photo (a failed write is not a photo
    'compared in vain')."""
    monkeypatch.undo()
    again = world.run_main(monkeypatch, capsys, api_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_tagged(victim)


# -- 1. atomic writes -------------------------------------------------------------------------


def test_failed_rename_leaves_the_original_and_the_run_goes_on(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    victim = world.twins[1]
    before = world.snapshot()
    real_replace = os.replace
    refused = []

    def replace(src, dst, *args, **kwargs):
        if os.path.abspath(dst) == os.path.abspath(victim.path):
            refused.append(src)
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert refused, "the tool never tried to replace the photo"
    assert_failed_write(result, world, victim, before)
    assert_written_next_time(monkeypatch, capsys, world, fake.api_url, victim)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_disk_full_when_flushing_leaves_the_original(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    """ENOSPC surfaces at fsync on many file systems (NFS, quotas, delayed allocation)."""
    victim = world.twins[0]
    before = world.snapshot()
    real_fsync = os.fsync
    hit = []

    def fsync(fd: int) -> None:
        name = ""
        with contextlib.suppress(OSError):
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{victim.path.name}."):
            hit.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert hit, "the temporary copy was never flushed to disk (no fsync before the rename)"
    assert "No space left on device" in result.stderr
    assert_failed_write(result, world, victim, before)
    assert_written_next_time(monkeypatch, capsys, world, fake.api_url, victim)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE behaviour checked on Linux")
def test_write_cut_off_mid_file_leaves_the_original(tmp_path: Path) -> None:
    """A real kernel error half-way through writing the copy (file size limit, EFBIG),
    the same failure a full disk gives: the copy is dropped, the photo stays as it was."""
    import resource

    world = make_world(tmp_path, 3)
    victim = world.twins[2]
    # Make the victim big (an sRGB profile padded to 1.5 MB) so that only its copy exceeds
    # the limit; everything else the run writes (cache, store) stays far below it.
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    profile += bytes(1_500_000)
    profile = len(profile).to_bytes(4, "big") + profile[4:]  # the header's size field
    with Image.open(victim.source) as picture:
        picture.save(victim.path, "JPEG", quality=92, icc_profile=profile)
    write_exif(victim.path, {"Exif.Photo.DateTimeOriginal": exif_time(victim.taken)})
    limit = 700_000
    assert victim.path.stat().st_size > limit
    before = world.snapshot()

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with world.fake() as server:
        result = world.run_cli(
            server.api_url,
            preexec_fn=limit_file_size,
        )
        assert_failed_write(result, world, victim, before)
        again = world.run_cli(server.api_url)

    assert again.returncode == 0, again.stdout + again.stderr
    assert_tagged(victim)  # a failed write is tried again next time


def test_unreadable_photo_is_reported_when_rewriting(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    """In-process stand-in for a file that cannot be opened (root ignores chmod)."""
    victim = world.twins[1]
    before = world.snapshot()
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if os.path.abspath(self) == os.path.abspath(victim.path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = world.run_main(monkeypatch, capsys, fake.api_url)
    monkeypatch.undo()  # read the victim back with the real read_bytes

    assert_failed_write(result, world, victim, before)


def test_exiv2_failure_is_reported_for_every_photo(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    before = world.snapshot()

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated exiv2 failure")

    monkeypatch.setattr(pyexiv2.ImageData, "modify_xmp", broken)
    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert result.returncode == ip.EXIT_FILE_ERRORS
    for twin in world.twins:
        assert any(str(twin.path) in ln for ln in result.stderr.splitlines()), twin.path.name
    assert world.snapshot() == before
    assert temp_files(world.pictures) == []
    assert summary_numbers(result.stdout)["added"] == 0


def permissions_enforced(folder: Path) -> bool:
    """False where chmod does not stop this process (root, or CAP_DAC_OVERRIDE)."""
    probe = folder / ".permission-probe"
    probe.write_bytes(b"")
    probe.chmod(0o444)
    try:
        with open(probe, "ab"):
            return False
    except PermissionError:
        return True
    finally:
        probe.unlink()


def _skip_as_root(folder: Path) -> None:
    if not permissions_enforced(folder):
        pytest.skip("root may write read-only files and folders; covered in-process instead")


def test_read_only_photo_is_not_rewritten(world: World, fake: FakeINaturalist) -> None:
    _skip_as_root(world.root)
    victim = world.twins[0]
    victim.path.chmod(0o444)
    before = world.snapshot()

    result = world.run_cli(fake.api_url)

    assert_failed_write(result, world, victim, before)


def test_read_only_folder_is_reported(world: World, fake: FakeINaturalist) -> None:
    _skip_as_root(world.root)
    before = world.snapshot()
    world.pictures.chmod(0o555)
    try:
        result = world.run_cli(fake.api_url)
    finally:
        world.pictures.chmod(0o755)

    assert result.returncode == ip.EXIT_FILE_ERRORS
    assert "Traceback" not in result.stdout + result.stderr
    for twin in world.twins:
        assert any(str(twin.path) in ln for ln in result.stderr.splitlines()), twin.path.name
    assert world.snapshot() == before
    assert temp_files(world.pictures) == []


def test_copies_a_killed_run_left_in_the_cache_are_removed_by_the_next(
    world: World, fake: FakeINaturalist
) -> None:
    """Downloads, thumbnails and the log go through one writer; whatever it left half-written
    anywhere in the cache is deleted by the next run, and the finished files stay."""
    assert world.run_cli(fake.api_url, "--logfile", str(world.root / "log.html")).returncode == 0
    cache = world.cache
    kept = sorted(p for p in cache.rglob("*") if p.is_file() and p.suffix == ".jpg")
    assert any("photos" in p.parts for p in kept) and any("thumbnails" in p.parts for p in kept)
    left = [
        cache / f".observations.sqlite.x{ip.TEMPORARY_SUFFIX}",
        kept[0].parent / f".{kept[0].name}.y{ip.TEMPORARY_SUFFIX}",
        kept[-1].parent / f".{kept[-1].name}.z{ip.TEMPORARY_SUFFIX}",
        next(p for p in kept if "photos" in p.parts).parent / "tmpabc.part",  # before 1.4.0
    ]
    for path in left:
        path.write_bytes(b"half a download")

    assert world.run_cli(fake.api_url).returncode == 0

    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_rewritten_photos_keep_their_permissions_and_owner(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    modes = [0o640, 0o600, 0o604]
    privileged = os.geteuid() == 0 and not permissions_enforced(world.root)
    owner = (4321, 8765) if privileged else (os.getuid(), os.getgid())
    for twin, mode in zip(world.twins, modes, strict=True):
        twin.path.chmod(mode)
        os.chown(twin.path, *owner)
    before = world.snapshot()

    result = world.run_main(monkeypatch, capsys, fake.api_url)

    assert result.returncode == 0, result.stderr
    for twin, mode in zip(world.twins, modes, strict=True):
        assert_tagged(twin)
        assert digest(twin.path) != before[twin.path][0]
        info = twin.path.stat()
        assert oct(info.st_mode & 0o7777) == oct(mode), twin.path.name
        assert (info.st_uid, info.st_gid) == owner, twin.path.name
    assert temp_files(world.pictures) == []


# -- 2. dry run ---------------------------------------------------------------------------------


def test_dry_run_writes_no_photo_but_says_what_and_writes_the_log(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    before = world.snapshot()
    log = world.root / "log.html"

    result = world.run_main(monkeypatch, capsys, fake.api_url, "--dry-run", "--logfile", str(log))

    assert result.returncode == 0, result.stderr
    assert world.snapshot() == before  # bytes, mode and modification time
    assert temp_files(world.pictures) == []
    for twin in world.twins:
        assert (
            f"(dry run) {twin.path}: Updating subject from 'None' to '{twin.caption}'."
            in result.lines
        )
        assert any(
            ln.startswith(f"'{twin.path}' ") and f"found for photo id {twin.photo};" in ln
            for ln in result.lines
        )
    assert "Dry run: no file was changed." in result.stdout
    page = log.read_text(encoding="utf-8")
    for twin in world.twins:
        assert f"https://www.inaturalist.org/photos/{twin.photo}" in page
    assert "Dry run" in page

    # The dry run taught the cache, not the photos: a real run still tags all of them.
    real = world.run_main(monkeypatch, capsys, fake.api_url)
    assert real.returncode == 0, real.stderr
    for twin in world.twins:
        assert_tagged(twin)


# -- 3. one run at a time -----------------------------------------------------------------------

try:
    import fcntl
except ImportError:  # Windows: the tool locks with msvcrt there
    fcntl = None


@pytest.mark.skipif(fcntl is None, reason="the test takes the lock with fcntl.flock")
def test_second_run_is_refused_while_the_lock_is_held(world: World, fake: FakeINaturalist) -> None:
    world.cache.mkdir(parents=True)
    before = world.snapshot()
    with open(world.cache / "run.lock", "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        refused = world.run_cli(fake.api_url, timeout=30)
        elapsed = time.monotonic() - started
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)

    assert refused.returncode == ip.EXIT_LOCKED, refused.stdout + refused.stderr
    output = (refused.stdout + refused.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert "another" in output[0] and "run" in output[0]
    assert elapsed < 10
    assert fake.requests == [], "a refused run must not talk to iNaturalist"
    assert world.snapshot() == before

    after = world.run_cli(fake.api_url)
    assert after.returncode == 0, after.stderr
    for twin in world.twins:
        assert_tagged(twin)


def test_two_cli_runs_at_once(world: World) -> None:
    """A slow run (iNaturalist answering in 1 s) holds the lock; a second one backs off."""
    with world.fake(latency=1.0) as server:
        first = world.start_cli(server.api_url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert first.stdout is not None
            assert first.stdout.readline().startswith("Loading photos")  # the lock is held
            second = world.run_cli(server.api_url, timeout=30)
            still_running = first.poll() is None
            rest, errors = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()

    assert still_running, "the first run ended before the second started: latency too low"
    assert second.returncode == ip.EXIT_LOCKED, second.stdout + second.stderr
    assert len((second.stdout + second.stderr).strip().splitlines()) == 1
    assert first.returncode == 0, rest + errors
    for twin in world.twins:
        assert_tagged(twin)
