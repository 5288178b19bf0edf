"""docs/security.md and the README's security table cannot name a test that does not exist.

Every security claim names the tests that try to break it (``path::function``, or
``::function`` for another function of the path named last on the same line; a bare
``tests/...py`` names a whole file). These tests read the documents and check that
each named file exists and defines each named test function, and that the README's
table links only to sections that docs/security.md has. A renamed or deleted test
therefore fails here instead of leaving a claim without its evidence.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECURITY = REPO / "docs" / "security.md"
README = REPO / "README.md"

_CODE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"^tests/[\w/]+\.py$")
_REF = re.compile(r"^(?P<path>tests/[\w/]+\.py)?::(?P<name>\w+)(?P<param>\[[^\]]*\])?$")
COLLECT_TIMEOUT_S = 120  # pytest --collect-only of a few test files on a loaded machine
_LINK = re.compile(r"\]\(docs/security\.md#([\w-]+)\)")


def references(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, file, function or None) for every test reference in ``text``."""
    return [(n, path, name) for n, path, name, _ in _references(text)]


def parametrized(text: str) -> list[tuple[int, str, str]]:
    """(line number, file, ``function[id]``) for every reference naming one parameter set."""
    return [(n, path, f"{name}{param}") for n, path, name, param in _references(text)
            if name is not None and param]


def _references(text: str) -> list[tuple[int, str, str | None, str]]:
    found: list[tuple[int, str, str | None, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        last: str | None = None
        for span in _CODE.findall(line):
            for part in re.split(r"[,\s]+", span):
                if _PATH.match(part):
                    last = part
                    found.append((number, part, None, ""))
                    continue
                m = _REF.match(part)
                if m is None:
                    if ".py::" in part or part.startswith("::"):
                        raise AssertionError(f"line {number}: {part!r} is not tests/...py::test_x")
                    continue
                path = m["path"] or last
                if path is None:
                    raise AssertionError(f"line {number}: {part!r} names no file before it")
                last = path
                found.append((number, path, m["name"], m["param"] or ""))
    return found


@cache
def defined_tests(path: str) -> frozenset[str]:
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    return frozenset(node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                     and node.name.startswith("test_"))


def missing(text: str) -> list[str]:
    problems = []
    for number, path, name in references(text):
        if not (REPO / path).is_file():
            problems.append(f"line {number}: no file {path}")
        elif name is not None and name not in defined_tests(path):
            problems.append(f"line {number}: {path} has no test {name}")
    return problems


def collected_ids(paths: set[str]) -> set[str]:
    """``path::function[id]`` of every test pytest collects from ``paths`` (nothing is run)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *sorted(paths)],
        cwd=REPO, capture_output=True, text=True, timeout=COLLECT_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return {line.strip() for line in done.stdout.splitlines() if "::" in line}


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def readme_security_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Security claims and the tests that try to break them")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_test_named_in_security_md_exists() -> None:
    text = SECURITY.read_text(encoding="utf-8")
    refs = references(text)
    assert len({(p, n) for _, p, n in refs if n is not None}) >= 150  # not vacuous
    assert missing(text) == []


def test_every_parameter_set_named_in_security_md_is_collected() -> None:
    refs = parametrized(SECURITY.read_text(encoding="utf-8"))
    assert refs
    ids = collected_ids({path for _, path, _ in refs})
    assert [f"line {n}: {p}::{t}" for n, p, t in refs if f"{p}::{t}" not in ids] == []


def test_security_md_has_no_open_todo() -> None:
    text = SECURITY.read_text(encoding="utf-8")
    assert "TODO" not in text


def test_every_test_named_in_the_readme_security_table_exists() -> None:
    section = readme_security_section()
    assert references(section), "the README's security table names no test"
    assert missing(section) == []


def test_the_readme_security_table_links_to_sections_that_exist() -> None:
    section = readme_security_section()
    links = _LINK.findall(section)
    assert len(links) >= 10
    assert sorted(set(links) - anchors(SECURITY.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize(("line", "expected"), [
    ("`tests/unit/test_a.py::test_x`, `::test_y[p]`",
     [(1, "tests/unit/test_a.py", "test_x"), (1, "tests/unit/test_a.py", "test_y")]),
    ("`tests/unit/test_a.py`", [(1, "tests/unit/test_a.py", None)]),
    ("`tests/unit/test_a.py::test_x, ::test_y`",
     [(1, "tests/unit/test_a.py", "test_x"), (1, "tests/unit/test_a.py", "test_y")]),
    ("`ATTESTGATE_X` and `a::b` and `shared/x.py`", []),
    ("`pytest -q tests/unit/test_a.py::test_x tests/unit/test_b.py`",
     [(1, "tests/unit/test_a.py", "test_x"), (1, "tests/unit/test_b.py", None)]),
])
def test_reference_parsing(line: str, expected: list[tuple[int, str, str | None]]) -> None:
    assert references(line) == expected


def test_a_missing_test_or_file_is_reported() -> None:
    text = ("`tests/unit/test_security_doc.py::test_no_such_test`\n"
            "`tests/unit/no_such_file.py::test_x`\n"
            "`tests/unit/test_security_doc.py::test_reference_parsing`\n")
    assert missing(text) == [
        "line 1: tests/unit/test_security_doc.py has no test test_no_such_test",
        "line 2: no file tests/unit/no_such_file.py"]


def test_a_continuation_without_a_file_is_an_error() -> None:
    with pytest.raises(AssertionError, match="names no file"):
        references("`::test_x`")


def test_a_reference_without_its_directory_is_an_error() -> None:
    with pytest.raises(AssertionError, match="is not tests/"):
        references("`test_attacks.py::test_attack_relayed_quote`")


def test_anchors_follow_github() -> None:
    assert anchors("### 2.13 The gateway withstands floods (attacker N, E)\n") == {
        "213-the-gateway-withstands-floods-attacker-n-e"}
