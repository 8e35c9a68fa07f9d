"""Files as bytes: their sha256, a snapshot of a set of files, the tool's temporary copies."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".inat-tmp"  # in the name of the copy the tool writes before replacing a photo


def digest(path: Path) -> str:
    """sha256 of the file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(
    where: Path | Iterable[Path], fields: tuple[str, ...] = ("st_mtime_ns", "st_ino")
) -> dict:
    """(sha256, *the named os.stat fields) of files, to compare before and after a run.

    where: a folder (every file below it, keyed by its path relative to the folder, as a
    string) or the files themselves (keyed by their paths).
    """
    if isinstance(where, Path):
        files = {str(p.relative_to(where)): p for p in sorted(where.rglob("*")) if p.is_file()}
    else:
        files = {p: p for p in where}
    result = {}
    for key, path in files.items():
        info = path.stat()
        result[key] = (digest(path), *(getattr(info, name) for name in fields))
    return result


def temp_files(folder: Path) -> list[str]:
    """Names of the tool's temporary copies in folder (names may be bytes that are not UTF-8)."""
    return sorted(
        os.fsdecode(name)
        for name in os.listdir(os.fsencode(folder))
        if TEMP_SUFFIX in os.fsdecode(name)
    )
