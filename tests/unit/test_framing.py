"""Preamble and 2-byte framing: decoders fed whole, byte by byte, in random chunks, and garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, Mode, Preamble, encode_frame, parse_preamble, preamble
from shared.wire import (
    FRAME_HEADER_LEN,
    MAGIC,
    MAX_NOISE_MESSAGE,
    PREAMBLE_LEN,
    PROLOGUE_PREFIX,
    PROTOCOL_VERSION,
)

HYPOTHESIS = settings(max_examples=100, deadline=None)
frames_st = st.lists(st.binary(max_size=300), max_size=12)


def drain(dec: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := dec.next_frame()) is not None:
        out.append(frame)
    return out


# -- preamble -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_preamble_round_trip(mode: Mode) -> None:
    pre = preamble(mode)
    data = pre.encode()
    assert len(data) == PREAMBLE_LEN
    assert data.startswith(MAGIC)
    assert parse_preamble(data) == pre
    assert pre.prologue == PROLOGUE_PREFIX + data


def test_prologues_differ_per_mode_and_version() -> None:
    prologues = {preamble(Mode.ENROLL).prologue, preamble(Mode.CONNECT).prologue,
                 Preamble(PROTOCOL_VERSION + 1, Mode.ENROLL).prologue}
    assert len(prologues) == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        MAGIC,
        b"XGT\x00\x01E",  # bad magic
        b"AGT\x01\x01E",
        preamble(Mode.ENROLL).encode() + b"x",  # too long
        preamble(Mode.ENROLL).encode()[:-1],  # too short
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_bad_magic_or_length_is_protocol(data: bytes) -> None:
    with pytest.raises(AttestgateError) as e:
        parse_preamble(data)
    assert e.value.code is ErrorCode.PROTOCOL


# 1: the protocol before post signatures covered the time shown.
@pytest.mark.parametrize("version", [0, 1, PROTOCOL_VERSION + 1, 255])
def test_bad_version_is_version(version: int) -> None:
    with pytest.raises(AttestgateError) as e:
        parse_preamble(MAGIC + bytes([version]) + b"E")
    assert e.value.code is ErrorCode.VERSION


@pytest.mark.parametrize("mode", [b"e", b"c", b"X", b"\x00", b"\xff"])
def test_bad_mode_is_protocol(mode: bytes) -> None:
    with pytest.raises(AttestgateError) as e:
        parse_preamble(MAGIC + bytes([PROTOCOL_VERSION]) + mode)
    assert e.value.code is ErrorCode.PROTOCOL


@HYPOTHESIS
@given(st.binary(max_size=10))
def test_any_bytes_as_preamble(data: bytes) -> None:
    try:
        pre = parse_preamble(data)
    except AttestgateError as exc:
        assert exc.code in (ErrorCode.PROTOCOL, ErrorCode.VERSION)
    else:
        assert pre.encode() == data


# -- frames -------------------------------------------------------------------------------------


def test_encode_frame() -> None:
    assert encode_frame(b"") == b"\x00\x00"
    assert encode_frame(b"abc") == b"\x00\x03abc"
    assert encode_frame(b"x" * MAX_NOISE_MESSAGE)[:2] == b"\xff\xff"
    with pytest.raises(AttestgateError) as e:
        encode_frame(b"x" * (MAX_NOISE_MESSAGE + 1))
    assert e.value.code is ErrorCode.TOO_LARGE


FRAMES = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"\x00\x01"]
STREAM = b"".join(encode_frame(f) for f in FRAMES)


def test_decoder_whole() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM)
    assert drain(dec) == FRAMES
    assert dec.buffered == 0


def test_decoder_byte_by_byte() -> None:
    dec = FrameDecoder()
    got = []
    for b in STREAM:
        dec.feed(bytes([b]))
        got += drain(dec)
    assert got == FRAMES
    assert dec.buffered == 0


def test_decoder_empty_feed_and_partial_header() -> None:
    dec = FrameDecoder()
    dec.feed(b"")
    assert dec.next_frame() is None
    dec.feed(b"\x00")
    assert dec.next_frame() is None
    dec.feed(b"\x02a")
    assert dec.next_frame() is None
    dec.feed(b"b")
    assert dec.next_frame() == b"ab"


def test_decoder_trailing_garbage_stays_buffered() -> None:
    dec = FrameDecoder()
    garbage = b"\x7f\xffnot enough"
    dec.feed(STREAM + garbage)
    assert drain(dec) == FRAMES
    assert dec.next_frame() is None
    assert dec.buffered == len(garbage)


def test_decoder_max_frame_boundary() -> None:
    dec = FrameDecoder(max_frame=100)
    dec.feed(encode_frame(b"x" * 100))
    assert dec.next_frame() == b"x" * 100


@pytest.mark.parametrize("length", [101, 1000, 0xFFFF])
def test_oversized_length_header_is_too_large(length: int) -> None:
    dec = FrameDecoder(max_frame=100)
    dec.feed(struct.pack(">H", length))  # refused on the header alone, before the body
    with pytest.raises(AttestgateError) as e:
        dec.next_frame()
    assert e.value.code is ErrorCode.TOO_LARGE


def test_pipelined_maximal_frames_are_accepted() -> None:
    # A peer may legitimately have a whole maximal frame and the next one in flight.
    dec = FrameDecoder()
    big = b"\x55" * MAX_NOISE_MESSAGE
    dec.feed(encode_frame(big) + encode_frame(big))
    assert drain(dec) == [big, big]


def test_buffer_is_bounded_without_draining() -> None:
    dec = FrameDecoder()
    chunk = b"\x00" * 4096
    fed = 0
    with pytest.raises(AttestgateError) as e:
        while True:
            dec.feed(chunk)
            fed += len(chunk)
            assert fed <= 2 * (FRAME_HEADER_LEN + MAX_NOISE_MESSAGE)
    assert e.value.code is ErrorCode.TOO_LARGE
    assert dec.buffered == fed  # the refused chunk was not appended


def test_buffer_bound_exact() -> None:
    limit = 2 * FrameDecoder.LIMIT
    dec = FrameDecoder()
    dec.feed(b"\xff" * limit)
    with pytest.raises(AttestgateError) as e:
        dec.feed(b"\xff")
    assert e.value.code is ErrorCode.TOO_LARGE


@HYPOTHESIS
@given(frames=frames_st, data=st.data())
def test_random_chunks_reassemble(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    dec = FrameDecoder()
    got: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        dec.feed(stream[prev:cut])
        prev = cut
        got += drain(dec)
    assert got == frames
    assert dec.buffered == 0


@HYPOTHESIS
@given(data=st.binary(max_size=2000), max_frame=st.integers(0, 300),
       chunk=st.integers(1, 64))
def test_any_bytes_give_frames_or_our_error(data: bytes, max_frame: int, chunk: int) -> None:
    dec = FrameDecoder(max_frame=max_frame)
    consumed = 0
    try:
        for i in range(0, len(data), chunk):
            dec.feed(data[i:i + chunk])
            for frame in drain(dec):
                assert len(frame) <= max_frame
                consumed += FRAME_HEADER_LEN + len(frame)
    except AttestgateError as exc:
        assert exc.code is ErrorCode.TOO_LARGE
    else:
        assert consumed + dec.buffered == len(data)
        assert data[:consumed] == b"".join(
            encode_frame(f) for f in _reparse(data[:consumed]))


def _reparse(data: bytes) -> list[bytes]:
    dec = FrameDecoder()
    dec.feed(data)
    return drain(dec)
