"""Board post rules: what text is accepted, and the digest the post key signs."""

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

KEY = b"k" * 16


def refused(text: object) -> bool:
    try:
        validate_text(text)
    except AttestgateError as exc:
        assert exc.code is ErrorCode.INVALID_TEXT
        return True
    return False


@pytest.mark.parametrize(
    "text",
    [
        "a" * MAX_POST_BYTES,
        "é" * (MAX_POST_BYTES // 2),  # 2 bytes each
        "€" * 1365 + "a",  # 3 bytes each: 4095 + 1
        "😀" * (MAX_POST_BYTES // 4),  # 4 bytes each
    ],
)
def test_exactly_4096_bytes_is_accepted(text: str) -> None:
    assert len(text.encode()) == MAX_POST_BYTES
    assert validate_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "a" * (MAX_POST_BYTES + 1),
        "é" * (MAX_POST_BYTES // 2) + "a",
        "😀" * (MAX_POST_BYTES // 4) + "a",
        "é" * (MAX_POST_BYTES // 2 + 1),  # 2049 characters: the limit is on bytes
    ],
)
def test_4097_bytes_is_refused(text: str) -> None:
    assert len(text.encode()) > MAX_POST_BYTES
    assert refused(text)


def test_ordinary_text_is_accepted() -> None:
    for text in ["hello", "line 1\nline 2", "col\tcol", "  padded  ", "日本語", "👨‍👩‍👧 family"]:
        assert validate_text(text) == text


@pytest.mark.parametrize("text", ["", " ", "\n", "\t \n", None, 42, b"bytes", ["x"]])
def test_empty_or_not_text_is_refused(text: object) -> None:
    assert refused(text)


@pytest.mark.parametrize("o", [o for o in range(0x20) if chr(o) not in "\n\t"]
                         + list(range(0x7F, 0xA0)))
def test_control_characters_are_refused(o: int) -> None:
    assert refused(f"abc{chr(o)}def")
    assert refused(chr(o) + "x")


@pytest.mark.parametrize("ch", ["\ud800", "\udfff", "\udc80"])
def test_surrogates_are_refused(ch: str) -> None:
    assert refused(f"ok{ch}ok")


@pytest.mark.parametrize(
    "ch",
    [
        "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # LRE RLE PDF LRO RLO
        "\u2066", "\u2067", "\u2068", "\u2069",  # LRI RLI FSI PDI
        "\u200e", "\u200f",  # LRM RLM
        "\u061c",  # ALM, the third implicit directional mark
        "\u2028", "\u2029",  # line / paragraph separator
    ],
)
def test_bidi_and_separator_characters_are_refused(ch: str) -> None:
    # Trojan-source style reordering must not reach other devices' screens.
    assert refused(f"user{ch}admin")


@pytest.mark.parametrize("ch", ["\u200b", "\ufeff", "\u2060", "\ue000", "\u0378"])
def test_other_category_c_characters_are_refused(ch: str) -> None:
    assert refused(f"ab{ch}cd")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_accepted_or_invalid_text(text: str) -> None:
    try:
        out = validate_text(text)
    except AttestgateError as exc:
        assert exc.code is ErrorCode.INVALID_TEXT
    else:
        assert out == text
        assert text.strip()
        assert len(text.encode()) <= MAX_POST_BYTES
        # no C* (controls, format, private use, unassigned) but newline, tab and ZWJ
        assert all(ch in "\n\t\u200d" or unicodedata.category(ch)[0] != "C" for ch in text)


# -- post_digest ----------------------------------------------------------------------------------

TS = 1_700_000_000_123


def test_digest_is_sha256_sized_and_deterministic() -> None:
    d = post_digest("dev", TS, KEY, "text")
    assert len(d) == 32
    assert d == post_digest("dev", TS, KEY, "text")


def test_digest_changes_with_each_input() -> None:
    base = post_digest("dev", TS, KEY, "text")
    variants = [
        post_digest("dev2", TS, KEY, "text"),
        post_digest("dev", TS + 1, KEY, "text"),  # the time shown is signed, to the ms
        post_digest("dev", -TS, KEY, "text"),
        post_digest("dev", TS, b"K" + KEY[1:], "text"),
        post_digest("dev", TS, KEY, "text!"),
        post_digest("dev", TS, KEY, "Text"),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_digest_is_labelled_for_protocol_2() -> None:
    # A protocol 1 signature (label "attestgate/1 post", no time) never verifies as v2.
    assert LABEL_POST == b"attestgate/2 post"
    ts = struct.pack(">q", TS)
    h = hashlib.sha256(LABEL_POST)
    for part in (b"dev", ts, KEY, b"text"):
        h.update(struct.pack(">I", len(part)) + part)
    assert post_digest("dev", TS, KEY, "text") == h.digest()


def test_digest_fields_are_delimited() -> None:
    # Moving bytes from one field to the next must change the digest (length prefixes).
    assert post_digest("ab", 0, b"c", "d") != post_digest("a", 0, b"bc", "d")
    assert post_digest("a", 0, b"bc", "d") != post_digest("a", 0, b"b", "cd")
    assert post_digest("", 0, b"", "x") != post_digest("x", 0, b"", "")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.binary(max_size=20),
       st.text(max_size=20), st.text(max_size=20), st.integers(-2**63, 2**63 - 1),
       st.binary(max_size=20), st.text(max_size=20))
def test_digest_is_injective_on_samples(a: str, t: int, b: bytes, c: str, x: str, u: int,
                                        y: bytes, z: str) -> None:
    if (a, t, b, c) != (x, u, y, z):
        assert post_digest(a, t, b, c) != post_digest(x, u, y, z)
