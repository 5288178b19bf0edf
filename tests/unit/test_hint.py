"""The cleartext hint: layout, round trip, and "any bytes -> a Hint or None" (never raises)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.hint import Hint, HintReason, busy, parse_hint, unavailable, version
from shared.wire import HINT_LEN, HINT_MAGIC, HINT_MAX_RETRY_MS, PROTOCOL_VERSION


def test_layout_is_pinned() -> None:
    assert busy(0.5).encode() == HINT_MAGIC + bytes([1, PROTOCOL_VERSION]) + struct.pack(">I", 500)
    assert len(busy(0.5).encode()) == HINT_LEN
    assert busy(1).frame() == struct.pack(">H", HINT_LEN) + busy(1).encode()


@pytest.mark.parametrize("h", [busy(0), busy(0.25), unavailable(2.0), version(),
                               Hint(HintReason.BUSY, HINT_MAX_RETRY_MS, 255)])
def test_round_trip(h: Hint) -> None:
    assert parse_hint(h.encode()) == h


def test_retry_after_is_clamped_when_made() -> None:
    assert busy(10**6).retry_after_ms == HINT_MAX_RETRY_MS
    assert busy(-1).retry_after_ms == 0
    with pytest.raises(ValueError):
        Hint(HintReason.BUSY, HINT_MAX_RETRY_MS + 1)


@pytest.mark.parametrize("frame", [
    b"", HINT_MAGIC, busy(1).encode()[:-1], busy(1).encode() + b"\x00",
    b"AGT!" + busy(1).encode()[4:],  # wrong magic
    HINT_MAGIC + bytes([9, 1]) + struct.pack(">I", 5),  # unknown reason
    HINT_MAGIC + bytes([1, 1]) + struct.pack(">I", HINT_MAX_RETRY_MS + 1),  # too long a wait
    bytes(48), bytes(96),  # handshake message 2 sizes
])
def test_not_a_hint(frame: bytes) -> None:
    assert parse_hint(frame) is None


@settings(max_examples=2000)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_hint_or_none(data: bytes) -> None:
    h = parse_hint(data)
    assert h is None or h.encode() == data


@settings(max_examples=500)
@given(st.sampled_from(list(HintReason)), st.integers(0, HINT_MAX_RETRY_MS), st.integers(0, 255))
def test_every_valid_hint_round_trips(reason: HintReason, ms: int, ver: int) -> None:
    h = Hint(reason, ms, ver)
    assert parse_hint(h.encode()) == h
