"""Cleartext preamble and 2-byte length framing, sans-IO.

Feed received bytes to :class:`FrameDecoder`; take whole frames out. Nothing here
reads a socket or a clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from shared.errors import AttestgateError, ErrorCode
from shared.wire import (
    FRAME_HEADER_LEN,
    MAGIC,
    MAX_NOISE_MESSAGE,
    MODE_CONNECT,
    MODE_ENROLL,
    PREAMBLE_LEN,
    PROLOGUE_PREFIX,
    PROTOCOL_VERSION,
)


class Mode(Enum):
    ENROLL = MODE_ENROLL
    CONNECT = MODE_CONNECT


@dataclass(frozen=True)
class Preamble:
    version: int
    mode: Mode

    def encode(self) -> bytes:
        return MAGIC + bytes([self.version]) + self.mode.value

    @property
    def prologue(self) -> bytes:
        """The Noise prologue: binds the cleartext preamble into the handshake hash."""
        return PROLOGUE_PREFIX + self.encode()


def preamble(mode: Mode) -> Preamble:
    return Preamble(PROTOCOL_VERSION, mode)


def parse_preamble(data: bytes) -> Preamble:
    """Parse exactly PREAMBLE_LEN bytes; raises PROTOCOL or VERSION."""
    if len(data) != PREAMBLE_LEN or data[:4] != MAGIC:
        raise AttestgateError(ErrorCode.PROTOCOL, "bad preamble")
    if data[4] != PROTOCOL_VERSION:
        raise AttestgateError(ErrorCode.VERSION, f"unsupported version {data[4]}")
    try:
        mode = Mode(data[5:6])
    except ValueError:
        raise AttestgateError(ErrorCode.PROTOCOL, "bad mode") from None
    return Preamble(PROTOCOL_VERSION, mode)


def encode_frame(message: bytes) -> bytes:
    """Prefix a Noise message with its 2-byte big-endian length."""
    if len(message) > MAX_NOISE_MESSAGE:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"frame of {len(message)} bytes")
    return struct.pack(">H", len(message)) + message


class FrameDecoder:
    """Reassembles length-prefixed frames from a byte stream.

    The buffer never holds more than two maximal frames with their headers (one
    being reassembled, one read ahead), so a peer cannot make us buffer without
    bound: ``feed`` more than that without taking frames out and it raises TOO_LARGE.
    """

    LIMIT = FRAME_HEADER_LEN + MAX_NOISE_MESSAGE

    def __init__(self, max_frame: int = MAX_NOISE_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> None:
        if len(self._buf) + len(data) > 2 * self.LIMIT:
            raise AttestgateError(ErrorCode.TOO_LARGE, "receive buffer overflow")
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next whole frame, or None when more bytes are needed."""
        if len(self._buf) < FRAME_HEADER_LEN:
            return None
        (length,) = struct.unpack_from(">H", self._buf)
        if length > self._max:
            raise AttestgateError(ErrorCode.TOO_LARGE, f"frame of {length} bytes")
        end = FRAME_HEADER_LEN + length
        if len(self._buf) < end:
            return None
        frame = bytes(self._buf[FRAME_HEADER_LEN:end])
        del self._buf[:end]
        return frame

    @property
    def buffered(self) -> int:
        return len(self._buf)
