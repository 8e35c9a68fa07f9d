"""Headless Chromium (Debian's `chromium` package), for the HTML log: the DOM after its script
ran, and screenshots. Nothing here reaches the network: the pages are local files."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """The Chromium executable, or None when none is installed."""
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def _run(arguments: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="inat-chromium-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dump_dom(url: str, timeout: float = 90) -> str:
    """The page's DOM, serialised after its scripts ran (the page's #hash included)."""
    done = _run(["--dump-dom", url], timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(url: str, target: Path, width: int, height: int, timeout: float = 90) -> None:
    """A PNG of the top width x height pixels of the page at url."""
    done = _run([f"--screenshot={target}", f"--window-size={width},{height}", url], timeout)
    if not target.is_file():
        raise RuntimeError(
            f"chromium made no screenshot ({done.returncode}): {done.stderr[-2000:]}"
        )


class Rows(HTMLParser):
    """The rows (tr with data-section) and sections of a dumped log, and whether each is
    hidden; the text of each row; every element's tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict] = []
        self.sections: dict[str, bool] = {}  # section -> hidden
        self.tags: list[tuple[str, dict]] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "tr" and "data-section" in attributes:
            self._open = {
                "section": attributes["data-section"],
                "date": attributes.get("data-date", ""),
                "hidden": "hidden" in attributes,
                "text": "",
                "images": [],
            }
            self.rows.append(self._open)
        elif tag == "section" and "data-section" in attributes:
            self.sections[attributes["data-section"]] = "hidden" in attributes
        elif tag == "img" and self._open is not None:
            self._open["images"].append(attributes.get("src", ""))

    def handle_endtag(self, tag) -> None:
        if tag == "tr":
            self._open = None

    def handle_data(self, data) -> None:
        if self._open is not None:
            self._open["text"] += data

    def visible(self) -> list[dict]:
        """The rows shown: not hidden themselves, nor in a hidden section."""
        return [r for r in self.rows if not r["hidden"] and not self.sections.get(r["section"])]


def parse_rows(dom: str) -> Rows:
    parser = Rows()
    parser.feed(dom)
    parser.close()
    return parser
