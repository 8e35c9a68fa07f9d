"""The tool's model values built by keyword, with the defaults tests share: an upload, an
observation and a candidate, so that no test spells out Observation's fields by position."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import inat_photos as ip

SQUARE_URL = "http://x/photos/1/square.jpg"


def upload(photo_id: int, observation_id: int | None = None, **changes: Any) -> ip.InatPhoto:
    """An InatPhoto: by default the first photo of observation photo_id * 10."""
    fields: dict[str, Any] = {
        "id": photo_id,
        "observation_photo_id": photo_id + 1,
        "observation_id": photo_id * 10 if observation_id is None else observation_id,
        "position": 1,
        "url": SQUARE_URL,
    }
    return ip.InatPhoto(**{**fields, **changes})


def observation(
    observation_id: int,
    when: dt.datetime | None,
    photos: Sequence[ip.InatPhoto] = (),
    **changes: Any,
) -> ip.Observation:
    """An Observation at when (minute precision, its day from when), without a place."""
    fields: dict[str, Any] = {
        "id": observation_id,
        "url": f"https://www.inaturalist.org/observations/{observation_id}",
        "name": None,
        "observed_at": when,
        "minute_precision": True,
        "observed_on": when.date() if when else None,
        "location": None,
        "obscured": False,
        "photos": tuple(photos),
    }
    return ip.Observation(**{**fields, **changes})


def candidate(photo_id: int, when: dt.datetime | None, **changes: Any) -> ip.Candidate:
    """Upload photo_id, the only photo of observation photo_id * 10 at when; changes go to
    the observation."""
    photo = upload(photo_id)
    return ip.Candidate(photo, observation(photo.observation_id, when, (photo,), **changes))
