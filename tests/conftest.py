"""Shared fixtures: the fake iNaturalist server, copies of example_pictures, a CLI runner."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "example_pictures"
SCENARIO = EXAMPLES / "scenario.json"
SCRIPT = ROOT / "inat_photos.py"

for folder in (ROOT, TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fake_inat import FakeINaturalist  # noqa: E402


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_cli(
    args: list[str], api_url: str, cache: Path, timeout: float = 300, **env_extra: str
) -> CliResult:
    """Run inat_photos.py as a user would, against the given API, with its own cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INAT_")}
    env.update(INAT_API_URL=api_url, INAT_PHOTOS_CACHE=str(cache), PYTHONIOENCODING="utf-8")
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        errors="replace",
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def summary_numbers(stdout: str) -> dict[str, int]:
    line = next(line for line in stdout.splitlines() if line.startswith("Summary:"))
    match = re.match(
        r"Summary: (\d+) iNaturalist annotations added, (\d+) modified"
        r"(?:; (\d+) identifications added, (\d+) modified)? in \d+ seconds\. "
        r"(\d+) local photos and (\d+) iNaturalist photos without known association\.",
        line,
    )
    assert match, line
    keys = ("added", "modified", "ids_added", "ids_modified", "locals_left", "inat_left")
    return {k: int(v) if v is not None else 0 for k, v in zip(keys, match.groups(), strict=True)}


@pytest.fixture
def scenario() -> dict:
    return json.loads(SCENARIO.read_text())


@pytest.fixture
def fake_inat(scenario: dict):
    server = FakeINaturalist(SCENARIO)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    """A private copy of example_pictures (the repository's copy is never written)."""
    target = tmp_path / "pictures"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("*.json", "*.md"))
    return target


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"
