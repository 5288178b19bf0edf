"""The board's post rules written for speed give exactly what the rules say: the ASCII path
of ``validate_text`` against the per-character rule, ``post_digest`` against its definition."""

from __future__ import annotations

import hashlib
import struct
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import AttestgateError, ErrorCode
from shared.posts import post_digest, validate_text
from shared.wire import LABEL_POST, MAX_POST_BYTES


def rule(text: str) -> str | None:
    """The rule, character by character: None if accepted, else the refusal's detail."""
    if not text.strip():
        return "empty or not text"
    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if n > MAX_POST_BYTES:
        return f"{n} bytes"
    for ch in text:
        if ch not in "\n\t\u200d" and unicodedata.category(ch) in (
                "Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return f"character U+{ord(ch):04X}"
    return None


def outcome(text: str) -> str | None:
    try:
        assert validate_text(text) == text
    except AttestgateError as exc:
        assert exc.code is ErrorCode.INVALID_TEXT
        return exc.detail
    return None


@pytest.mark.parametrize("code", range(128))
def test_every_ascii_character_is_judged_as_the_rule_says(code: int) -> None:
    ch = chr(code)
    for text in (ch, f"a{ch}b", f"{ch}" * 3 + "x", f"hello {ch}"):
        assert outcome(text) == rule(text)


@settings(max_examples=2000)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60)
       | st.text(max_size=60))
def test_any_text_is_judged_as_the_rule_says(text: str) -> None:
    assert outcome(text) == rule(text)


def test_the_size_limit_holds_on_the_ascii_path() -> None:
    assert outcome("a" * MAX_POST_BYTES) is None
    assert outcome("a" * (MAX_POST_BYTES + 1)) == rule("a" * (MAX_POST_BYTES + 1))
    assert outcome("é" * (MAX_POST_BYTES // 2 + 1)) == rule("é" * (MAX_POST_BYTES // 2 + 1))


def digest_by_definition(device_id: str, ts: int, key: bytes, text: str) -> bytes:
    h = hashlib.sha256(LABEL_POST)
    for part in (device_id.encode(), struct.pack(">q", ts), key, text.encode("utf-8")):
        h.update(struct.pack(">I", len(part)) + part)
    return h.digest()


TEXT = st.characters(blacklist_categories=("Cs",))


@given(st.text(alphabet=TEXT, max_size=64), st.integers(-(2**63), 2**63 - 1),
       st.binary(max_size=40), st.text(alphabet=TEXT, max_size=80))
def test_post_digest_is_its_definition(device_id: str, ts: int, key: bytes, text: str) -> None:
    assert post_digest(device_id, ts, key, text) == digest_by_definition(device_id, ts, key, text)


def test_post_digest_known_answer() -> None:
    # Pinned: clients of every version sign exactly this.
    assert post_digest("dev", 1_700_000_000_000, b"k" * 16, "hello").hex() == (
        "2070a6abff39bb46cf0146d21a8be7f0120044bb9e3ebbe57d4d705311cea834")
