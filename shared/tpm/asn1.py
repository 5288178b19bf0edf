"""A strict, bounded ASN.1 DER reader for X.509, keeping the original bytes of every element.

Only what certificates need: definite lengths in their shortest form, low tag numbers,
a hard nesting depth, and typed decoders (OID, INTEGER, BOOLEAN, BIT STRING, times,
strings) that refuse every non-DER encoding except one: the order of a SET OF is not
checked, so Nuvoton's multi-valued RDNs (issuer and subject written in unsorted order)
parse. Every failure is an :class:`AttestgateError` with the caller's code, never an
``IndexError``; the caller checks the total size before calling (``check_size``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Final

from shared.errors import AttestgateError, ErrorCode

# Universal tags (identifier octets, constructed bit included).
BOOLEAN: Final = 0x01
INTEGER: Final = 0x02
BIT_STRING: Final = 0x03
OCTET_STRING: Final = 0x04
NULL: Final = 0x05
OID: Final = 0x06
UTF8_STRING: Final = 0x0C
PRINTABLE_STRING: Final = 0x13
T61_STRING: Final = 0x14
IA5_STRING: Final = 0x16
UTC_TIME: Final = 0x17
GENERALIZED_TIME: Final = 0x18
UNIVERSAL_STRING: Final = 0x1C
BMP_STRING: Final = 0x1E
SEQUENCE: Final = 0x30
SET: Final = 0x31

# Nothing in an X.509 certificate nests deeper than ~10 levels (an extension holding
# a SEQUENCE OF GeneralName with a directoryName); 20 leaves room and bounds work.
MAX_DEPTH: Final = 20
# Lengths take at most 3 octets: no single piece of evidence reaches 16 MiB.
_MAX_LENGTH_OCTETS: Final = 3
# OID arcs are at most 64 bits here; longer ones are not in any certificate we accept.
_MAX_ARC_OCTETS: Final = 9
_MAX_OID_OCTETS: Final = 64


@dataclass(frozen=True, slots=True)
class Tlv:
    """One element: its identifier octet and where its header and contents lie in ``data``."""

    tag: int
    data: bytes
    start: int  # offset of the identifier octet
    body: int  # offset of the contents
    end: int  # offset just past the contents

    @property
    def raw(self) -> bytes:
        """The element's original encoding, header included."""
        return self.data[self.start : self.end]

    @property
    def value(self) -> bytes:
        """The contents octets."""
        return self.data[self.body : self.end]

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


class DerReader:
    """Sequential reader over the contents of one constructed element (or a whole buffer).

    Call :meth:`end` when done, so trailing elements are refused rather than ignored.
    """

    __slots__ = ("_code", "_data", "_depth", "_end", "_pos", "_what")

    def __init__(self, data: bytes, code: ErrorCode, what: str, *,
                 start: int = 0, end: int | None = None, depth: int = 0) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._code = code
        self._what = what
        self._depth = depth

    def fail(self, reason: str) -> AttestgateError:
        return AttestgateError(self._code, f"{self._what}: {reason} at offset {self._pos}")

    def at_end(self) -> bool:
        return self._pos >= self._end

    def peek_tag(self) -> int | None:
        return None if self._pos >= self._end else self._data[self._pos]

    def read(self, tag: int | None = None) -> Tlv:
        """The next element; with ``tag``, it must carry exactly that identifier octet."""
        data, pos, end = self._data, self._pos, self._end
        if end - pos < 2:
            raise self.fail("truncated element")
        ident = data[pos]
        if ident & 0x1F == 0x1F:
            raise self.fail("high tag number")
        if tag is not None and ident != tag:
            raise self.fail(f"tag {ident:#04x}, expected {tag:#04x}")
        first = data[pos + 1]
        body = pos + 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0:
                raise self.fail("indefinite length")
            if n > _MAX_LENGTH_OCTETS or body + n > end:
                raise self.fail("length too long")
            if data[body] == 0:
                raise self.fail("length not minimal")
            length = int.from_bytes(data[body : body + n], "big")
            if length < 0x80:
                raise self.fail("length not minimal")
            body += n
        if length > end - body:
            raise self.fail("element runs past its container")
        self._pos = body + length
        return Tlv(ident, data, pos, body, body + length)

    def read_optional(self, tag: int) -> Tlv | None:
        return self.read(tag) if self.peek_tag() == tag else None

    def enter(self, tlv: Tlv, what: str | None = None) -> DerReader:
        """A reader over the contents of the constructed element ``tlv`` (one level deeper)."""
        if not tlv.constructed:
            raise self.fail(f"primitive {tlv.tag:#04x} where constructed expected")
        if self._depth + 1 > MAX_DEPTH:
            raise self.fail("nested too deep")
        return DerReader(self._data, self._code, what or self._what, start=tlv.body,
                         end=tlv.end, depth=self._depth + 1)

    def sequence(self, what: str | None = None, tag: int = SEQUENCE) -> DerReader:
        """Read a constructed element of ``tag`` and return a reader over its contents."""
        return self.enter(self.read(tag), what)

    def end(self) -> None:
        if self._pos != self._end:
            raise self.fail(f"{self._end - self._pos} trailing bytes")

    # -- typed primitives --------------------------------------------------------------

    def integer(self) -> int:
        return decode_integer(self.read(INTEGER), self)

    def oid(self) -> str:
        return decode_oid(self.read(OID), self)

    def boolean(self) -> bool:
        v = self.read(BOOLEAN).value
        if len(v) != 1 or v[0] not in (0x00, 0xFF):
            raise self.fail("BOOLEAN not DER")
        return v[0] == 0xFF

    def bit_string(self) -> tuple[bytes, int]:
        """(bytes, unused bit count); the unused bits must be zero (DER)."""
        v = self.read(BIT_STRING).value
        if not v or v[0] > 7 or (len(v) == 1 and v[0]):
            raise self.fail("BIT STRING header")
        unused = v[0]
        if unused and v[-1] & ((1 << unused) - 1):
            raise self.fail("BIT STRING unused bits set")
        return v[1:], unused

    def octets(self) -> bytes:
        return self.read(OCTET_STRING).value

    def null(self) -> None:
        if self.read(NULL).value:
            raise self.fail("NULL with contents")

    def time(self) -> datetime.datetime:
        tlv = self.read()
        if tlv.tag not in (UTC_TIME, GENERALIZED_TIME):
            raise self.fail(f"tag {tlv.tag:#04x} is not a time")
        return decode_time(tlv, self)


def decode_integer(tlv: Tlv, r: DerReader) -> int:
    v = tlv.value
    if not v:
        raise r.fail("empty INTEGER")
    if len(v) > 1 and ((v[0] == 0 and v[1] < 0x80) or (v[0] == 0xFF and v[1] >= 0x80)):
        raise r.fail("INTEGER not minimal")
    return int.from_bytes(v, "big", signed=True)


def decode_oid(tlv: Tlv, r: DerReader) -> str:
    v = tlv.value
    if not v or len(v) > _MAX_OID_OCTETS or v[-1] & 0x80:
        raise r.fail("OBJECT IDENTIFIER length")
    arcs: list[int] = []
    acc = 0
    octets = 0
    for b in v:
        if octets == 0 and b == 0x80:
            raise r.fail("OBJECT IDENTIFIER arc not minimal")
        acc = (acc << 7) | (b & 0x7F)
        octets += 1
        if octets > _MAX_ARC_OCTETS:
            raise r.fail("OBJECT IDENTIFIER arc too long")
        if not b & 0x80:
            arcs.append(acc)
            acc = octets = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def decode_time(tlv: Tlv, r: DerReader) -> datetime.datetime:
    """UTCTime ``YYMMDDHHMMSSZ`` or GeneralizedTime ``YYYYMMDDHHMMSSZ`` (DER forms only)."""
    v = tlv.value
    width = 13 if tlv.tag == UTC_TIME else 15
    if len(v) != width or v[-1:] != b"Z" or not v[:-1].isdigit():
        raise r.fail("time not in DER form")
    digits = v[:-1].decode("ascii")
    if tlv.tag == UTC_TIME:
        yy = int(digits[:2])
        year, rest = (2000 + yy if yy < 50 else 1900 + yy), digits[2:]
    else:
        year, rest = int(digits[:4]), digits[4:]
    try:
        return datetime.datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]),
                                 int(rest[6:8]), int(rest[8:10]), tzinfo=datetime.UTC)
    except ValueError:
        raise r.fail("time out of range") from None


_STRING_CODECS: Final = {
    UTF8_STRING: "utf-8", PRINTABLE_STRING: "ascii", IA5_STRING: "ascii",
    T61_STRING: "latin-1", BMP_STRING: "utf-16-be", UNIVERSAL_STRING: "utf-32-be",
}


def decode_string(tlv: Tlv) -> str | None:
    """A directory string's text, or None for another type or an undecodable value."""
    codec = _STRING_CODECS.get(tlv.tag)
    if codec is None:
        return None
    try:
        return tlv.value.decode(codec)
    except UnicodeDecodeError:
        return None
