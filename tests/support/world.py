"""A small generated world: local photos, each with an iNaturalist twin (the same picture in
its own observation), and the scenario FakeINaturalist serves them from.

Photos are taken SPACING apart (far more than --cluster_threshold: one photo per cluster),
EXIF_SECONDS after the minute iNaturalist records.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fake_inat import FakeINaturalist

import inat_photos as ip
from support.cli import CliResult, run_cli, run_main, start_cli
from support.files import snapshot
from support.images import texture
from support.scenario import observation_record, photo_record
from support.xmp import read_xmp, write_exif

if TYPE_CHECKING:
    import pytest

USER = "tester"
START = dt.datetime(2022, 5, 14, 9, 0, 0)
SPACING = dt.timedelta(minutes=7)
EXIF_SECONDS = 20

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
        write_exif(path, {"Exif.Photo.DateTimeOriginal": exif_time(taken)})


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

    def args(self, *options: str) -> list[str]:
        """The command line for a run over the world's pictures as its user."""
        return ["-u", USER, *options, str(self.pictures)]

    def run_cli(self, api_url: str, *options: str, **kwargs: object) -> CliResult:
        """A run over the world's pictures, as a subprocess (kwargs: run_cli's)."""
        return run_cli(self.args(*options), api_url, self.cache, **kwargs)

    def start_cli(self, api_url: str, *options: str, **popen: object) -> subprocess.Popen:
        """start_cli over the world's pictures (popen: stdout=..., stderr=...)."""
        return start_cli(self.args(*options), api_url, self.cache, **popen)

    def run_main(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture,
        api_url: str,
        *options: str,
    ) -> CliResult:
        """A run over the world's pictures, in this process."""
        return run_main(monkeypatch, capsys, self.args(*options), api_url, self.cache)

    def snapshot(self) -> dict[Path, tuple[str, int, int]]:
        """Bytes, mode and mtime of every local photo."""
        return snapshot([twin.path for twin in self.twins], ("st_mode", "st_mtime_ns"))


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
    spacing: dt.timedelta = SPACING,
) -> World:
    """count local photos, each with an iNaturalist twin (same picture, its own observation),
    plus `unmatched` observations whose photos exist only on iNaturalist; spacing apart."""
    sources, pictures = root / "sources", root / "pictures"
    sources.mkdir(parents=True)
    pictures.mkdir(parents=True)
    world = World(root, pictures, sources, root / "cache", {"users": [], "observations": []})
    world.scenario["users"].append({"id": 4242, "login": USER, "name": "Test Naturalist"})
    for i in range(count + unmatched):
        taken = START + i * spacing + dt.timedelta(seconds=EXIF_SECONDS)
        source = sources / f"src{i:03d}.jpg"
        save_picture(source, seed * 1000 + i, taken, size)
        taxon, caption = TAXA[i % len(TAXA)]
        obs_id, obs_photo_id, photo_id = 5000 + i, 800_000 + i, 700_000 + i
        photo = photo_record(photo_id, source.name, observation_photo_id=obs_photo_id)
        world.scenario["observations"].append(
            observation_record(obs_id, USER, taken.replace(second=0), [photo], taxon)
        )
        if i < count:
            name = names[i] if names else f"p{i:03d}.jpg"
            path = child(pictures, name)
            shutil.copyfile(source, path)
            world.twins.append(Twin(path, obs_id, obs_photo_id, photo_id, caption, taken, source))
    return world


def assert_tagged(twin: Twin) -> None:
    """The twin carries its ids and, as its only keyword, its caption."""
    xmp = read_xmp(twin.path)
    shown = ip.show_path(twin.path)
    assert xmp.get(ip.TAG_OBSERVATION) == str(twin.observation), shown
    assert xmp.get(ip.TAG_OBSERVATION_PHOTO) == str(twin.observation_photo), shown
    assert xmp.get(ip.TAG_PHOTO) == str(twin.photo), shown
    assert xmp.get(ip.TAG_SUBJECT) == [twin.caption], shown
