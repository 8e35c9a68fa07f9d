"""Shared fixtures: the fake iNaturalist server on example_pictures' scenario, copies of
example_pictures, and a small generated world with its own fake server. What they are built
from lives in tests/support/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.register_assert_rewrite("support")

from fake_inat import FakeINaturalist  # noqa: E402
from support import SCENARIO  # noqa: E402
from support.examples import copy_examples  # noqa: E402
from support.world import World, make_world  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """The process-wide settings main makes (pixel limit, XMP namespaces), for in-process tests."""
    import inat_photos as ip

    ip.configure_process()


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every picture the tool decodes from now on, as (file name, longest side asked for)."""
    import inat_photos as ip

    calls: list[tuple[str, int]] = []
    real = ip.decode_upright

    def counting(path: Path, orientation: int, longest: int):
        calls.append((path.name, longest))
        return real(path, orientation, longest)

    monkeypatch.setattr(ip, "decode_upright", counting)
    return calls


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
    return copy_examples(tmp_path / "pictures")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Three generated photos, each with an iNaturalist twin."""
    return make_world(tmp_path, 3)


@pytest.fixture
def fake(world: World):
    """The fake iNaturalist serving the world's scenario."""
    server = world.fake()
    server.start()
    yield server
    server.stop()
