"""The tool's HTML log, parsed: its markup and its text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser


class LogPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []  # start tags, attributes
        self.markup: list[tuple[str, tuple[str, ...]]] = []  # every tag, attribute names
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, attrs))
        self.markup.append((tag, tuple(name for name, _ in attrs)))

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag) -> None:
        self.markup.append(("/" + tag, ()))

    def handle_comment(self, data) -> None:
        self.markup.append(("!--", ()))

    def handle_data(self, data) -> None:
        self.text.append(data)


def parse_log(page: str) -> LogPage:
    parser = LogPage()
    parser.feed(page)
    parser.close()
    return parser


# The known rows travel as JSON arrays to the page's script (inat_photos._known_json).
KNOWN_FIELDS = (
    "day",
    "file",
    "name",
    "thumb",
    "photo",
    "upload_thumb",
    "observation",
    "common",
    "scientific",
    "note",
    "score",
    "command",
)


def known_data(page: str) -> dict:
    """The JSON the page's script builds the known rows from; {} when there are none."""
    found = re.search(r'<script type="application/json" id="known-data">(.*?)</script>', page)
    return json.loads(found.group(1)) if found else {}


def known_rows(page: str) -> list[dict]:
    """The known rows of a log, each a dict keyed by KNOWN_FIELDS."""
    rows = known_data(page).get("rows", [])
    assert all(len(row) == len(KNOWN_FIELDS) for row in rows)
    return [dict(zip(KNOWN_FIELDS, row, strict=True)) for row in rows]
