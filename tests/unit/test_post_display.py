"""How posts are shown to a human: only headers start at column 0, whatever the text holds."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.post_display import CONTINUATION, format_post, post_lines

HEADER = re.compile(r"\[(?P<id>[0-9]+-[0-9]+)\] \S+ \S+ (?P<author>.+) "
                    r"\((?P<mark>verified|UNVERIFIED) TPM signature\)")


def view(text: str, *, post_id: str = "1700000000000-0", author: str = "alice",
         verified: bool = True) -> dict[str, Any]:
    return {"post_id": post_id, "device_id": "d" * 32, "author": author, "text": text,
            "ts": 1_700_000_000.0, "verified": verified}


def test_multi_line_text_is_indented_under_its_header() -> None:
    assert post_lines(view("line 1\nline 2\n\tindented")) == [
        post_lines(view("x"))[0], "    | line 1", "    | line 2", "    | \tindented"]


def test_a_forged_header_in_the_text_is_not_a_header() -> None:
    other = format_post(view("pay mallory", post_id="1700000000001-0", author="bob"))
    forged = format_post(view("hello\n" + other + "\n"))
    lines = forged.splitlines()
    headers = [line for line in lines if not line.startswith(CONTINUATION)]
    assert len(headers) == 1
    match = HEADER.fullmatch(headers[0])
    assert match is not None and match["id"] == "1700000000000-0"
    assert match["author"] == "alice"
    assert len(lines) == 1 + 4  # hello, forged header, forged text, empty last line


def test_stored_control_characters_are_escaped() -> None:
    # The board refuses these, but an edited store may hold anything.
    lines = post_lines(view("a\rb\x1b[2J\u2028c\x85d", author="ev\nil"))
    assert lines[1:] == ["    | a\\u{000D}b\\u{001B}[2J\\u{2028}c\\u{0085}d"]
    assert "\n" not in lines[0] and "ev\\u{000A}il" in lines[0]


def test_unknown_author_and_bad_time() -> None:
    header = post_lines({**view("x", author=""), "ts": float("nan")})[0]
    assert "(unknown device)" in header and "(bad time)" in header


def test_unverified_is_marked() -> None:
    match = HEADER.fullmatch(post_lines(view("x", verified=False))[0])
    assert match is not None and match["mark"] == "UNVERIFIED"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=20))
def test_only_the_header_starts_at_column_0(text: str, author: str) -> None:
    out = format_post(view(text, author=author))
    lines = out.split("\n")
    # Splitting at every character a terminal or splitlines() may break a line at
    # must give the same lines: none is left in the output unescaped.
    assert out.splitlines() == lines
    assert all(line.startswith(CONTINUATION) for line in lines[1:])
    assert len(lines) == 1 + text.count("\n") + 1  # the header, then each line of the text
