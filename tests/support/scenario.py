"""Observation records for the fake iNaturalist's scenarios, written in one place: the fake
turns each into the API's JSON (tests/fake_inat.py says what a record may hold)."""

from __future__ import annotations

import datetime as dt
from typing import Any

COYOTE = {"name": "Canis latrans", "rank": "species"}


def photo_record(photo_id: int, source: str, **extra: Any) -> dict[str, Any]:
    """One photo of an observation, drawn from source (a file in the scenario's folder)."""
    return {"id": photo_id, "source": source, **extra}


def observation_record(
    observation_id: int,
    user: str,
    taken: dt.datetime | str,
    photos: list[dict[str, Any]],
    taxon: dict[str, Any] | None = COYOTE,
    utc_offset: str = "+00:00",
    **extra: Any,
) -> dict[str, Any]:
    """One observation at taken (naive local time, given with utc_offset; or an ISO text as
    the API writes it), with its photos and taxon; extra: location, geoprivacy and such."""
    when = taken if isinstance(taken, str) else taken.isoformat() + utc_offset
    return {
        "id": observation_id,
        "user": user,
        "time_observed_at": when,
        "taxon": None if taxon is None else dict(taxon),
        "photos": photos,
        **extra,
    }
