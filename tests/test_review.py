"""Issue 13: the HTML log as a review page, and acting on what it shows.

Taking an association back (--dissociate) writes through the one writer: plan_dissociation
removes this tool's ids and caption, keeps the user's keywords and marks the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import inat_photos as ip


def test_plan_dissociation_removes_only_this_tools_keyword() -> None:
    base = ip.LocalPhoto(Path("a.jpg"), dt.datetime(2022, 5, 14), None, 1, (), None)
    tags = ip.InatTags(1, 2, 3)
    written = dataclasses.replace(
        base, keywords=("Elm (Ulmus americana)", "mine"), tags=tags, written_caption="mine"
    )
    update = ip.plan_dissociation(written, ())
    assert update is not None and update.keywords == ("Elm (Ulmus americana)",)
    assert update.dissociate is True and update.old_caption == "mine"
    assert update.applied().tags is None and update.applied().dissociated
    # An older file without the caption note: only a caption the observation once had is ours.
    older = dataclasses.replace(base, keywords=("Elm (Ulmus americana)", "Coyote"), tags=tags)
    assert ip.plan_dissociation(older, {"Coyote"}).keywords == ("Elm (Ulmus americana)",)
    assert ip.plan_dissociation(older, {"Wolf"}).keywords is None
    done = dataclasses.replace(base, keywords=("mine",), dissociated=True)
    assert ip.plan_dissociation(done, ()) is None
    # Associated again: the mark is cleared.
    again = ip.plan_update(done, tags, (), "Coyote")
    assert again is not None and again.dissociate is False and not again.applied().dissociated
