"""The cleartext hint a gateway may send before it closes an unfinished handshake. Sans-IO.

A hint is advisory and unauthenticated (anyone on the path can forge one): "busy,
retry after N ms", "a service is unavailable, retry after N ms", or "I speak
protocol version N". The client treats it only as a reason to retry (bounded, with
backoff) or to tell the user to upgrade, never as a refusal. Layout in
``shared.wire`` (HINT_*): one frame of exactly HINT_LEN bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from shared.framing import encode_frame
from shared.wire import (
    HINT_BUSY,
    HINT_LEN,
    HINT_MAGIC,
    HINT_MAX_RETRY_MS,
    HINT_UNAVAILABLE,
    HINT_VERSION,
    PROTOCOL_VERSION,
)

_BODY = struct.Struct(">BBI")  # reason, version, retry-after ms


class HintReason(IntEnum):
    BUSY = HINT_BUSY
    UNAVAILABLE = HINT_UNAVAILABLE
    VERSION = HINT_VERSION


@dataclass(frozen=True)
class Hint:
    reason: HintReason
    retry_after_ms: int = 0
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.retry_after_ms <= HINT_MAX_RETRY_MS or not 0 <= self.version <= 255:
            raise ValueError("hint out of range")

    def encode(self) -> bytes:
        """The frame body (HINT_LEN bytes)."""
        return HINT_MAGIC + _BODY.pack(self.reason, self.version, self.retry_after_ms)

    def frame(self) -> bytes:
        """The whole frame, length prefix included, ready to write."""
        return encode_frame(self.encode())


def busy(retry_after_s: float) -> Hint:
    return Hint(HintReason.BUSY, _ms(retry_after_s))


def unavailable(retry_after_s: float) -> Hint:
    return Hint(HintReason.UNAVAILABLE, _ms(retry_after_s))


def version() -> Hint:
    return Hint(HintReason.VERSION)


def _ms(seconds: float) -> int:
    return max(0, min(HINT_MAX_RETRY_MS, int(seconds * 1000)))


def parse_hint(frame: bytes) -> Hint | None:
    """The hint in a received frame body, or None if it is not one (then it is a handshake
    message). Never raises: any bytes give a Hint or None."""
    if len(frame) != HINT_LEN or frame[: len(HINT_MAGIC)] != HINT_MAGIC:
        return None
    reason, ver, retry_ms = _BODY.unpack_from(frame, len(HINT_MAGIC))
    if reason not in HintReason._value2member_map_ or retry_ms > HINT_MAX_RETRY_MS:
        return None
    return Hint(HintReason(reason), retry_ms, ver)
