"""The file reads top to bottom: each numbered section uses only what stands above it, and a
constant is defined before any line uses it. Checked with ast on inat_photos.py itself."""

from __future__ import annotations

import ast
import itertools
import re

from support import SCRIPT

BANNER = re.compile(r"^# (\d+[a-z]?)\. \S")
CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def section_starts(lines: list[str]) -> list[int]:
    """Line numbers of the section banners' titles (a title follows a '# ---' rule)."""
    return [
        number
        for number, line in enumerate(lines, 1)
        if BANNER.match(line) and number > 1 and lines[number - 2].startswith("# ---")
    ]


def bound_inside(node: ast.AST) -> set[str]:
    """Names a top-level function or class binds itself: its locals shadow module names."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if sub is not node:
                names.add(sub.name)
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            names.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in sub.names)
    return names


def top_level_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def uses(source: str) -> list[tuple[int, str, int, int, int]]:
    """(line, name, its section, the using section, the defining line) of every use of a
    top-level name that is not the user's own local."""
    lines = source.splitlines()
    starts = section_starts(lines)

    def section(line: int) -> int:
        return sum(1 for start in starts if start <= line)

    tree = ast.parse(source)
    defined: dict[str, int] = {}
    for node in tree.body:
        for name in top_level_names(node):
            defined.setdefault(name, node.lineno)
    found = []
    for node in tree.body:
        own = bound_inside(node) if not isinstance(node, (ast.Assign, ast.AnnAssign)) else set()
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Name)
                and isinstance(sub.ctx, ast.Load)
                and sub.id in defined
                and sub.id not in own
            ):
                line = defined[sub.id]
                found.append((sub.lineno, sub.id, section(line), section(node.lineno), line))
    return found


def upward(source: str) -> list[str]:
    """Uses of a name defined in a section below the one using it."""
    return sorted(
        {
            f"line {at}: {name} (section {theirs} used in {mine})"
            for at, name, theirs, mine, _ in uses(source)
            if theirs > mine
        }
    )


def constants_before_definition(source: str) -> list[str]:
    return sorted(
        {
            f"line {at}: {name} (defined on line {line})"
            for at, name, _, _, line in uses(source)
            if CONSTANT.match(name) and at < line
        }
    )


def test_every_section_uses_only_what_stands_above_it() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    assert len(section_starts(source.splitlines())) >= 17
    assert upward(source) == []


def test_constants_are_defined_before_they_are_used() -> None:
    assert constants_before_definition(SCRIPT.read_text(encoding="utf-8")) == []


RULE = "# " + "-" * 20


def test_the_checks_see_a_use_from_below_and_a_constant_used_early() -> None:
    source = "\n".join(
        [
            RULE,
            "# 1. Top",
            RULE,
            "def early(x):",
            "    lower(x)",
            "    return LIMIT",
            "def shadowed(lower):",
            "    return lower",
            RULE,
            "# 2. Below",
            RULE,
            "LIMIT = 3",
            "def lower(x):",
            "    return early(x)",
        ]
    )
    assert upward(source) == [
        "line 5: lower (section 2 used in 1)",
        "line 6: LIMIT (section 2 used in 1)",
    ]
    assert constants_before_definition(source) == ["line 6: LIMIT (defined on line 12)"]


SECTION_LINES = 730  # "about 700": the longest, corrections and overlays (9c), is at about 685
CLASS_LINES = 250
FUNCTION_LINES = 80
DECLARATIVE = {"build_parser"}  # a table of options, read as one


def test_sections_classes_and_functions_stay_small() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    lines = source.splitlines()
    starts = [*section_starts(lines), len(lines) + 1]
    long_sections = [
        f"{lines[a - 1]} ({b - a} lines)"
        for a, b in itertools.pairwise(starts)
        if b - a > SECTION_LINES
    ]
    long_code = []
    for node in ast.walk(ast.parse(source)):
        size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef) and size > CLASS_LINES:
            long_code.append(f"class {node.name} ({size} lines)")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > FUNCTION_LINES:
            long_code += [f"{node.name} ({size} lines)"] * (node.name not in DECLARATIVE)
    assert long_sections == [] and long_code == []
