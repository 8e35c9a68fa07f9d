"""Running inat_photos: as a subprocess (as a user or cron would) or in this process (so that
faults can be injected with monkeypatch), and reading its summary line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import inat_photos as ip
from support import SCRIPT

if TYPE_CHECKING:
    import pytest


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def cli_env(api_url: str, cache: Path) -> dict[str, str]:
    """This environment without any INAT_* setting, then the given API and cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INAT_")}
    env.update(INAT_API_URL=api_url, INAT_PHOTOS_CACHE=str(cache), PYTHONIOENCODING="utf-8")
    return env


def run_cli(
    args: list[str],
    api_url: str,
    cache: Path,
    timeout: float = 300,
    extra_env: dict[str, str] | None = None,
    **popen: object,
) -> CliResult:
    """Run inat_photos.py as a user would, against the given API, with its own cache.
    extra_env: more environment variables; popen: more arguments for subprocess.run."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        errors="replace",
        env={**cli_env(api_url, cache), **(extra_env or {})},
        timeout=timeout,
        **popen,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def start_cli(args: list[str], api_url: str, cache: Path, **popen: object) -> subprocess.Popen:
    """Start inat_photos.py like run_cli does, without waiting for it (text mode)."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], text=True, env=cli_env(api_url, cache), **popen
    )


def run_main(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    args: list[str],
    api_url: str,
    cache: Path,
) -> CliResult:
    """The tool in this process (so faults can be injected with monkeypatch)."""
    monkeypatch.setenv("INAT_API_URL", api_url)
    monkeypatch.setenv("INAT_PHOTOS_CACHE", str(cache))
    capsys.readouterr()
    code = ip.main(args)
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def summary_numbers(stdout: str) -> dict[str, int]:
    """The figures of the run's 'Summary:' line."""
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
