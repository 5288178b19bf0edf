"""A bounded little-endian reader for event-log structures (UEFI and TCG logs are little-endian).

Same contract as :class:`shared.tpm.marshal.Reader`: every failure is an
:class:`AttestgateError` with BAD_REQUEST, never ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

from shared.errors import AttestgateError, ErrorCode


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

    def take(self, n: int) -> bytes:
        if n < 0 or n > self._end - self._pos:
            raise self.fail(f"truncated (wanted {n} B, {self._end - self._pos} left)")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def end(self) -> None:
        if self._pos != self._end:
            raise self.fail(f"{self._end - self._pos} trailing bytes")
