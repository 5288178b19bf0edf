"""Big-endian TPM wire primitives: a bounds-checked reader and small packers.

Every read failure becomes an :class:`AttestgateError` with the code the caller chose,
so a parser can never leak ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import struct

from shared.errors import AttestgateError, ErrorCode
from shared.wire import MAX_EVIDENCE_FIELD


def check_size(data: bytes, what: str) -> None:
    """Refuse a blob larger than any single piece of evidence may be, before parsing it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{what}: not bytes")
    if len(data) > MAX_EVIDENCE_FIELD:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"{what}: {len(data)} B")


_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q"))


class Reader:
    """Sequential reader over one marshalled structure.

    The caller must call :meth:`end` once the structure is parsed, so trailing bytes
    are refused rather than ignored.
    """

    __slots__ = ("_code", "_data", "_pos", "_what")

    def __init__(self, data: bytes, code: ErrorCode, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._code = code
        self._what = what

    def fail(self, reason: str) -> AttestgateError:
        """An error for the structure being read, for the caller to raise."""
        return AttestgateError(self._code, f"{self._what}: {reason} at offset {self._pos}")

    @property
    def pos(self) -> int:
        return self._pos

    def take(self, n: int) -> bytes:
        pos = self._pos
        if n < 0 or pos + n > len(self._data):
            raise self.fail(f"truncated (wanted {n} B)")
        self._pos = pos + n
        return self._data[pos : pos + n]

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        """Several fixed-size fields at once (``fmt`` big-endian, integers only)."""
        pos = self._pos
        if pos + fmt.size > len(self._data):
            raise self.fail(f"truncated (wanted {fmt.size} B)")
        self._pos = pos + fmt.size
        return fmt.unpack_from(self._data, pos)

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u16(self) -> int:
        return self.unpack(_U16)[0]

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def tpm2b(self, max_size: int, field: str) -> bytes:
        """A TPM2B: 2-byte size then that many bytes, at most ``max_size``."""
        size = self.u16()
        if size > max_size:
            raise self.fail(f"{field} size {size} > {max_size}")
        return self.take(size)

    def sub(self, data_size: int, what: str) -> Reader:
        """A reader over the next ``data_size`` bytes (the body of a sized structure)."""
        return Reader(self.take(data_size), self._code, what)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} trailing bytes")


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def tpm2b(body: bytes) -> bytes:
    """Marshal a TPM2B: 2-byte big-endian size, then the bytes."""
    if len(body) > 0xFFFF:
        raise AttestgateError(ErrorCode.INTERNAL, f"TPM2B body of {len(body)} B")
    return u16(len(body)) + body
