"""Issue 5, part 1: photos are only ever replaced whole, dry runs write nothing, one run at a time.

Also holds the small generated "world" (pictures, their iNaturalist twins, a scenario for
FakeINaturalist) that test_faults.py, test_hostile_input.py and test_kill.py build on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyexiv2
import pytest
from conftest import SCRIPT, CliResult, summary_numbers
from fake_inat import FakeINaturalist
from PIL import Image

import inat_photos as ip

USER = "tester"
START = dt.datetime(2022, 5, 14, 9, 0, 0)
SPACING = dt.timedelta(minutes=7)  # far more than --cluster_threshold: one photo per cluster
EXIF_SECONDS = 20  # photos are taken 20 s after the minute iNaturalist records
TEMP_SUFFIX = ".inat-tmp"

# (taxon as the API gives it, the caption the README promises for it)
TAXA = [
    (
        {"name": "Canis latrans", "rank": "species", "preferred_common_name": "Coyote"},
        "Coyote (Canis latrans)",
    ),
    ({"name": "Amanita", "rank": "genus"}, "Amanita sp."),
    (
        {
            "name": "Danaus plexippus plexippus",
            "rank": "subspecies",
            "preferred_common_name": "Monarch",
        },
        "Monarch (Danaus plexippus ssp. plexippus)",
    ),
    ({"name": "Quercus agrifolia", "rank": "species"}, "Quercus agrifolia"),
]


# -- the generated world --------------------------------------------------------------------


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


def exif_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y:%m:%d %H:%M:%S")


def save_picture(
    path: Path,
    seed: int,
    taken: dt.datetime | None,
    size: tuple[int, int] = (480, 360),
) -> None:
    """A JPEG of texture(seed) with EXIF DateTimeOriginal = taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texture(seed, size).save(path, "JPEG", quality=92)
    if taken is not None:
        with pyexiv2.Image(str(path)) as image:
            image.modify_exif({"Exif.Photo.DateTimeOriginal": exif_time(taken)})


@dataclass
class Twin:
    """A local photo and what the tool must write into it."""

    path: Path
    observation: int
    observation_photo: int
    photo: int
    caption: str
    taken: dt.datetime
    source: Path


@dataclass
class World:
    root: Path
    pictures: Path
    sources: Path
    cache: Path
    scenario: dict
    twins: list[Twin] = field(default_factory=list)

    def fake(self, **options: object) -> FakeINaturalist:
        return FakeINaturalist(self.scenario, base_dir=self.sources, **options)


def child(folder: Path, name: str | bytes) -> Path:
    """folder / name, where name may be bytes that are not UTF-8."""
    if isinstance(name, bytes):
        return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    return folder / name


def make_world(
    root: Path,
    count: int,
    *,
    names: list[str | bytes] | None = None,
    size: tuple[int, int] = (480, 360),
    unmatched: int = 0,
    seed: int = 0,
) -> World:
    """count local photos, each with an iNaturalist twin (same picture, its own observation),
    plus `unmatched` observations whose photos exist only on iNaturalist."""
    sources, pictures = root / "sources", root / "pictures"
    sources.mkdir(parents=True)
    pictures.mkdir(parents=True)
    world = World(root, pictures, sources, root / "cache", {"users": [], "observations": []})
    world.scenario["users"].append({"id": 4242, "login": USER, "name": "Test Naturalist"})
    for i in range(count + unmatched):
        taken = START + i * SPACING + dt.timedelta(seconds=EXIF_SECONDS)
        source = sources / f"src{i:03d}.jpg"
        save_picture(source, seed * 1000 + i, taken, size)
        taxon, caption = TAXA[i % len(TAXA)]
        obs_id, obs_photo_id, photo_id = 5000 + i, 800_000 + i, 700_000 + i
        world.scenario["observations"].append(
            {
                "id": obs_id,
                "user": USER,
                "time_observed_at": (taken.replace(second=0)).isoformat() + "+00:00",
                "taxon": dict(taxon),
                "photos": [
                    {"id": photo_id, "observation_photo_id": obs_photo_id, "source": source.name}
                ],
            }
        )
        if i < count:
            name = names[i] if names else f"p{i:03d}.jpg"
            path = child(pictures, name)
            shutil.copyfile(source, path)
            world.twins.append(Twin(path, obs_id, obs_photo_id, photo_id, caption, taken, source))
    return world


# -- reading photos back ----------------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixel_digest(path: Path) -> str:
    """A digest of the decoded pixels (works for names exiv2 cannot open)."""
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()
        return hashlib.sha256(
            image.mode.encode() + repr(image.size).encode() + image.tobytes()
        ).hexdigest()


def read_xmp(path: Path) -> dict:
    ip.register_namespace()
    image = pyexiv2.ImageData(path.read_bytes())
    try:
        return image.read_xmp()
    finally:
        image.close()


INAT_TAGS = (ip.TAG_OBSERVATION, ip.TAG_OBSERVATION_PHOTO, ip.TAG_PHOTO)


def inat_tags(path: Path) -> dict[str, str]:
    xmp = read_xmp(path)
    return {tag: xmp[tag] for tag in INAT_TAGS if tag in xmp}


def assert_tagged(twin: Twin) -> None:
    xmp = read_xmp(twin.path)
    shown = ip.show_path(twin.path)
    assert xmp.get(ip.TAG_OBSERVATION) == str(twin.observation), shown
    assert xmp.get(ip.TAG_OBSERVATION_PHOTO) == str(twin.observation_photo), shown
    assert xmp.get(ip.TAG_PHOTO) == str(twin.photo), shown
    assert xmp.get(ip.TAG_SUBJECT) == [twin.caption], shown


def temp_files(folder: Path) -> list[str]:
    return sorted(
        os.fsdecode(name)
        for name in os.listdir(os.fsencode(folder))
        if TEMP_SUFFIX in os.fsdecode(name)
    )


def error_lines(result: CliResult) -> list[str]:
    return [ln for ln in (result.stdout + result.stderr).splitlines() if "error" in ln.lower()]


# -- running the tool -------------------------------------------------------------------------


def cli_env(api_url: str, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INAT_")}
    env.update(INAT_API_URL=api_url, INAT_PHOTOS_CACHE=str(cache), PYTHONIOENCODING="utf-8")
    return env


def run_subprocess(
    args: list[str], api_url: str, cache: Path, timeout: float = 120, **popen: object
) -> CliResult:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=cli_env(api_url, cache),
        timeout=timeout,
        **popen,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_main(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    args: list[str],
    api_url: str,
    cache: Path,
) -> CliResult:
    """The tool in this process (so faults can be injected with monkeypatch)."""
    monkeypatch.setattr(ip, "INAT_API_URL", api_url.rstrip("/"))
    monkeypatch.setenv("INAT_API_URL", api_url)
    monkeypatch.setenv("INAT_PHOTOS_CACHE", str(cache))
    capsys.readouterr()
    code = ip.main(args)
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, 3)


@pytest.fixture
def fake(world: World):
    server = world.fake()
    server.start()
    yield server
    server.stop()


def snapshot(world: World) -> dict[Path, tuple[str, int, int]]:
    """Bytes, mode and mtime of every local photo."""
    out = {}
    for twin in world.twins:
        info = twin.path.stat()
        out[twin.path] = (digest(twin.path), info.st_mode, info.st_mtime_ns)
    return out


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
    again = run_main(monkeypatch, capsys, ["-u", USER, str(world.pictures)], api_url, world.cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_tagged(victim)


# -- 1. atomic writes -------------------------------------------------------------------------


def test_failed_rename_leaves_the_original_and_the_run_goes_on(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    victim = world.twins[1]
    before = snapshot(world)
    real_replace = os.replace
    refused = []

    def replace(src, dst, *args, **kwargs):
        if os.path.abspath(dst) == os.path.abspath(victim.path):
            refused.append(src)
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = run_main(
        monkeypatch, capsys, ["-u", USER, str(world.pictures)], fake.api_url, world.cache
    )

    assert refused, "the tool never tried to replace the photo"
    assert_failed_write(result, world, victim, before)
    assert_written_next_time(monkeypatch, capsys, world, fake.api_url, victim)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_disk_full_when_flushing_leaves_the_original(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    """ENOSPC surfaces at fsync on many file systems (NFS, quotas, delayed allocation)."""
    victim = world.twins[0]
    before = snapshot(world)
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
    result = run_main(
        monkeypatch, capsys, ["-u", USER, str(world.pictures)], fake.api_url, world.cache
    )

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
    with pyexiv2.Image(str(victim.path)) as image:
        image.modify_exif({"Exif.Photo.DateTimeOriginal": exif_time(victim.taken)})
    limit = 700_000
    assert victim.path.stat().st_size > limit
    before = snapshot(world)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with world.fake() as server:
        result = run_subprocess(
            ["-u", USER, str(world.pictures)],
            server.api_url,
            world.cache,
            preexec_fn=limit_file_size,
        )
        assert_failed_write(result, world, victim, before)
        again = run_subprocess(["-u", USER, str(world.pictures)], server.api_url, world.cache)

    assert again.returncode == 0, again.stdout + again.stderr
    assert_tagged(victim)  # a failed write is tried again next time


def test_unreadable_photo_is_reported_when_rewriting(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    """In-process stand-in for a file that cannot be opened (root ignores chmod)."""
    victim = world.twins[1]
    before = snapshot(world)
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if os.path.abspath(self) == os.path.abspath(victim.path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = run_main(
        monkeypatch, capsys, ["-u", USER, str(world.pictures)], fake.api_url, world.cache
    )
    monkeypatch.undo()  # read the victim back with the real read_bytes

    assert_failed_write(result, world, victim, before)


def test_exiv2_failure_is_reported_for_every_photo(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    before = snapshot(world)

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated exiv2 failure")

    monkeypatch.setattr(pyexiv2.ImageData, "modify_xmp", broken)
    result = run_main(
        monkeypatch, capsys, ["-u", USER, str(world.pictures)], fake.api_url, world.cache
    )

    assert result.returncode == ip.EXIT_FILE_ERRORS
    for twin in world.twins:
        assert any(str(twin.path) in ln for ln in result.stderr.splitlines()), twin.path.name
    assert snapshot(world) == before
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
    before = snapshot(world)

    result = run_subprocess(["-u", USER, str(world.pictures)], fake.api_url, world.cache)

    assert_failed_write(result, world, victim, before)


def test_read_only_folder_is_reported(world: World, fake: FakeINaturalist) -> None:
    _skip_as_root(world.root)
    before = snapshot(world)
    world.pictures.chmod(0o555)
    try:
        result = run_subprocess(["-u", USER, str(world.pictures)], fake.api_url, world.cache)
    finally:
        world.pictures.chmod(0o755)

    assert result.returncode == ip.EXIT_FILE_ERRORS
    assert "Traceback" not in result.stdout + result.stderr
    for twin in world.twins:
        assert any(str(twin.path) in ln for ln in result.stderr.splitlines()), twin.path.name
    assert snapshot(world) == before
    assert temp_files(world.pictures) == []


def test_rewritten_photos_keep_their_permissions_and_owner(
    world: World, fake: FakeINaturalist, monkeypatch, capsys
) -> None:
    modes = [0o640, 0o600, 0o604]
    privileged = os.geteuid() == 0 and not permissions_enforced(world.root)
    owner = (4321, 8765) if privileged else (os.getuid(), os.getgid())
    for twin, mode in zip(world.twins, modes, strict=True):
        twin.path.chmod(mode)
        os.chown(twin.path, *owner)
    before = snapshot(world)

    result = run_main(
        monkeypatch, capsys, ["-u", USER, str(world.pictures)], fake.api_url, world.cache
    )

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
    before = snapshot(world)
    log = world.root / "log.html"

    result = run_main(
        monkeypatch,
        capsys,
        ["-u", USER, "--dry-run", "--logfile", str(log), str(world.pictures)],
        fake.api_url,
        world.cache,
    )

    assert result.returncode == 0, result.stderr
    assert snapshot(world) == before  # bytes, mode and modification time
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
    real = run_main(
        monkeypatch, capsys, ["-u", USER, str(world.pictures)], fake.api_url, world.cache
    )
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
    before = snapshot(world)
    with open(world.cache / "run.lock", "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        refused = run_subprocess(
            ["-u", USER, str(world.pictures)], fake.api_url, world.cache, timeout=30
        )
        elapsed = time.monotonic() - started
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)

    assert refused.returncode == ip.EXIT_LOCKED, refused.stdout + refused.stderr
    output = (refused.stdout + refused.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert "another" in output[0] and "run" in output[0]
    assert elapsed < 10
    assert fake.requests == [], "a refused run must not talk to iNaturalist"
    assert snapshot(world) == before

    after = run_subprocess(["-u", USER, str(world.pictures)], fake.api_url, world.cache)
    assert after.returncode == 0, after.stderr
    for twin in world.twins:
        assert_tagged(twin)


def test_two_cli_runs_at_once(world: World) -> None:
    """A slow run (iNaturalist answering in 1 s) holds the lock; a second one backs off."""
    with world.fake(latency=1.0) as server:
        first = subprocess.Popen(
            [sys.executable, str(SCRIPT), "-u", USER, str(world.pictures)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(server.api_url, world.cache),
        )
        try:
            assert first.stdout is not None
            assert first.stdout.readline().startswith("Loading photos")  # the lock is held
            second = run_subprocess(
                ["-u", USER, str(world.pictures)], server.api_url, world.cache, timeout=30
            )
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
