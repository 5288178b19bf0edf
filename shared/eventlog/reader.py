"""A bounded little-endian reader for event-log structures (UEFI and TCG logs are little-endian).

Same contract as :class:`shared.tpm.marshal.Reader`: every failure is an
:class:`AttestgateError` with BAD_REQUEST, never ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import struct

from shared.errors import AttestgateError, ErrorCode

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class LeReader:
    __slots__ = ("_data", "_end", "_pos", "_what")

    def __init__(self, data: bytes, what: str, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._what = what

    def fail(self, reason: str) -> AttestgateError:
        return AttestgateError(ErrorCode.BAD_REQUEST,
                               f"{self._what}: {reason} at offset {self._pos}")

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _truncated(self, n: int) -> AttestgateError:
        return self.fail(f"truncated (wanted {n} B, {self._end - self._pos} left)")

    def take(self, n: int) -> bytes:
        pos = self._pos
        if n < 0 or n > self._end - pos:
            raise self._truncated(n)
        self._pos = pos + n
        return self._data[pos : pos + n]

    # The fixed-size reads check the bounds themselves and unpack in place (no slice): the
    # UEFI decoders call them for every field of every event.
    def u8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise self._truncated(1)
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        pos = self._pos
        if self._end - pos < 2:
            raise self._truncated(2)
        self._pos = pos + 2
        return int(_U16.unpack_from(self._data, pos)[0])

    def u32(self) -> int:
        pos = self._pos
        if self._end - pos < 4:
            raise self._truncated(4)
        self._pos = pos + 4
        return int(_U32.unpack_from(self._data, pos)[0])

    def u64(self) -> int:
        pos = self._pos
        if self._end - pos < 8:
            raise self._truncated(8)
        self._pos = pos + 8
        return int(_U64.unpack_from(self._data, pos)[0])

    def skip(self, n: int) -> None:
        """``take(n)`` without copying the bytes."""
        pos = self._pos
        if n < 0 or n > self._end - pos:
            raise self._truncated(n)
        self._pos = pos + n

    def end(self) -> None:
        if self._pos != self._end:
            raise self.fail(f"{self._end - self._pos} trailing bytes")
