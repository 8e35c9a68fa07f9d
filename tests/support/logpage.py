"""The tool's HTML log, parsed: its markup and its text."""

from __future__ import annotations

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
