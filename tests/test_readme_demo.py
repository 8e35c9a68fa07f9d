"""The README quotes the demo's output (tests/demo.py, twice); the demo must print it, timings
aside, so that the quotes cannot drift from the tool. And the README's tables name what the
tool has: every section of the HTML log, the defaults it states."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support import ROOT, TESTS

import inat_photos as ip

README = ROOT / "README.md"
# A quoted block follows its marker comment: <!-- demo output: first run ... -->
MARKER = re.compile(r"<!-- demo output: (first|second) run[^>]*-->\n```\n(.*?)```", re.DOTALL)
TIMINGS = (
    (re.compile(r"\bin \d+(?:\.\d+)? secs\b"), "in N secs"),
    (re.compile(r"\bin \d+ seconds\b"), "in N seconds"),
)


def normalised(text: str) -> str:
    """Lines stripped at their ends, timings replaced by N."""
    for pattern, replacement in TIMINGS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def quoted_runs(readme: str) -> dict[str, str]:
    """The README's quoted demo output, by run ('first', 'second')."""
    return {run: block for run, block in MARKER.findall(readme)}


def block_pattern(block: str) -> re.Pattern[str]:
    """The quoted lines in their order, one after another; a line '...' stands for any lines
    the README leaves out."""
    parts = []
    for line in normalised(block).splitlines():
        parts.append(r"(?:.*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n")
    return re.compile("".join(parts))


def test_block_pattern_allows_only_what_the_readme_leaves_out() -> None:
    printed = normalised("a\nb in 12 seconds\nc\nd\n")
    assert block_pattern("a\nb in 3 seconds\n...\nd\n").search(printed)
    assert not block_pattern("a\nc\nd\n").search(printed)  # b is not left out with '...'
    assert not block_pattern("a\nb in 3 seconds\nd\n").search(printed)
    assert not block_pattern("a\nb in 3 seconds\nc\nd\ne\n").search(printed)


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What `python tests/demo.py --twice` prints, run from a folder like the clone's, by run."""
    folder = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [sys.executable, str(TESTS / "demo.py"), "--twice", "--out", "demo-run"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = done.stdout.split("\n$ (second run)\n")
    return {"first": normalised(first), "second": normalised(second)}


def test_the_readme_quotes_both_demo_runs_as_the_demo_prints_them(
    demo_output: dict[str, str],
) -> None:
    quoted = quoted_runs(README.read_text())
    assert set(quoted) == {"first", "second"}, "the README's demo output markers are missing"
    for run, block in quoted.items():
        printed = demo_output[run]
        assert block_pattern(block).search(printed), (
            f"README's quoted {run} run differs from the demo's; it prints:\n{printed}"
        )


def test_the_readme_lists_every_section_of_the_log() -> None:
    readme = README.read_text()
    table = readme.split("| section | what is listed |", 1)[1].split("\n\n", 1)[0]
    listed = [row.split("|")[1].strip() for row in table.strip().splitlines()[1:]]
    assert listed == list(ip.LOG_SECTIONS.values())


def test_the_readme_states_the_sizes_the_tool_compares_at() -> None:
    readme = README.read_text()
    stated = re.findall(r"default `--inat_size (\w+)`", readme)
    assert all(size == ip.FIRST_INATSIZE for size in stated), stated
    assert f"`{ip.FIRST_INATSIZE}` first" in readme.replace("\n", " ")


def headings(readme: str) -> list[tuple[int, str]]:
    """The README's level-2 and level-3 headings, outside code blocks: (level, title)."""
    found, fenced = [], False
    for line in readme.splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"(#{2,3}) (.+)", line)
        if heading and not fenced and heading[2] != "Contents":
            found.append((len(heading[1]), heading[2].strip()))
    return found


def test_the_table_of_contents_lists_every_heading_in_order() -> None:
    readme = README.read_text()
    contents = readme.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"(?m)^( *)\* \[(.+?)\]\(#([\w-]+)\)$", contents)
    assert [(2 + len(indent) // 2, title) for indent, title, _ in listed] == headings(readme)
    for _, title, anchor in listed:
        assert anchor == re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
    # The user's path comes first; how it works and the developer's material after it.
    titles = [title for _, title in headings(readme)]
    assert titles.index("Safety") < titles.index("How it works") < titles.index("Dependencies")
