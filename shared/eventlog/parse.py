"""Structure of the TCG PC Client binary event log; nothing in it is trusted yet.

Two formats, as Linux exposes them in ``/sys/kernel/security/tpm0/binary_bios_measurements``:

* SHA-1 only (TCG 1.2 / ``TCG_PCClientPCREvent``): every event has one 20-byte SHA-1 digest;
* crypto-agile: a SHA-1-format first event of type EV_NO_ACTION holding the
  ``Spec ID Event03`` structure (which banks, and each digest's size), then
  ``TCG_PCR_EVENT2`` events carrying a ``TPML_DIGEST_VALUES``.

Sizes are checked before use and capped (``types.MAX_*``); any malformation is BAD_REQUEST,
any cap TOO_LARGE. Event types are kept as numbers: the type is not covered by any digest, so
nothing here decides anything from it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import AttestgateError, ErrorCode
from shared.eventlog.reader import LeReader
from shared.eventlog.types import (
    BANKS,
    EV_NO_ACTION,
    MAX_DIGESTS_PER_EVENT,
    MAX_EVENT_DATA,
    MAX_EVENTS,
    MAX_LOG_BYTES,
    MAX_PCR_INDEX,
    event_name,
)

SPEC_ID_03 = b"Spec ID Event03\x00"
STARTUP_LOCALITY = b"StartupLocality\x00"
_SHA1_HEADER = 4 + 4 + 20 + 4
_MAX_UNKNOWN_DIGEST = 64


@dataclass(frozen=True, init=False)
class Event:
    """One measured (or EV_NO_ACTION) event as written in the log.

    ``index`` counts events from 0 in log order (the Spec ID header is not an event).
    ``digests`` maps a bank name ("sha1", "sha256", ...) to the digest extended into it.
    """

    index: int
    pcr: int
    type: int
    digests: Mapping[str, bytes]
    data: bytes

    def __init__(self, index: int, pcr: int, type: int,
                 digests: Mapping[str, bytes], data: bytes) -> None:
        # The generated frozen __init__ sets each field through object.__setattr__; a log
        # holds ~100 events, so each field is stored once in the instance dict instead.
        d = self.__dict__
        d["index"], d["pcr"], d["type"], d["digests"], d["data"] = index, pcr, type, digests, data

    @property
    def type_name(self) -> str:
        return event_name(self.type)


@dataclass(frozen=True)
class EventLog:
    """A parsed log. ``banks`` in Spec ID order (``("sha1",)`` for the SHA-1 format).

    ``startup_locality`` is the locality of TPM2_Startup from a StartupLocality
    EV_NO_ACTION event in PCR 0 (PCR 0 then starts at ``00..00 || locality``), else None.
    """

    crypto_agile: bool
    banks: tuple[str, ...]
    events: tuple[Event, ...]
    startup_locality: int | None


def _bank_name(alg: int) -> str:
    known = BANKS.get(alg)
    return known[0] if known else f"alg_{alg:#06x}"


def _parse_spec_id(data: bytes) -> tuple[tuple[int, str, int], ...]:
    """The (alg id, bank name, digest size) list of a Spec ID Event03 structure."""
    r = LeReader(data, "Spec ID event")
    r.take(16)  # signature, checked by the caller
    r.u32()  # platformClass
    minor, major, _errata, uintn = r.u8(), r.u8(), r.u8(), r.u8()
    if (major, minor) != (2, 0) or uintn not in (1, 2):
        raise r.fail(f"spec version {major}.{minor} uintnSize {uintn}")
    count = r.u32()
    if not 1 <= count <= MAX_DIGESTS_PER_EVENT:
        raise r.fail(f"{count} algorithms")
    algs: list[tuple[int, str, int]] = []
    for _ in range(count):
        alg, size = r.u16(), r.u16()
        known = BANKS.get(alg)
        if known is not None and known[1] != size:
            raise r.fail(f"{known[0]} digest size {size}")
        if not 1 <= size <= _MAX_UNKNOWN_DIGEST or any(a == alg for a, _, _ in algs):
            raise r.fail(f"algorithm {alg:#06x} size {size}")
        algs.append((alg, _bank_name(alg), size))
    vendor = r.u8()
    r.take(vendor)
    r.end()
    return tuple(algs)


def _check_pcr(r: LeReader, pcr: int, event_type: int) -> None:
    if pcr > MAX_PCR_INDEX:
        raise r.fail(f"PCR index {pcr} ({event_name(event_type)})")


def _event_data(r: LeReader) -> bytes:
    size = r.u32()
    if size > MAX_EVENT_DATA:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"event data of {size} B")
    return r.take(size)


def parse_log(log: bytes) -> EventLog:
    """Parse a whole binary log. Raises BAD_REQUEST (malformed) or TOO_LARGE (a cap)."""
    if not isinstance(log, bytes | bytearray | memoryview):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "event log: not bytes")
    if len(log) > MAX_LOG_BYTES:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"event log of {len(log)} B")
    data = bytes(log)
    if not data:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "event log: empty")
    r = LeReader(data, "event log")
    # The first event is always in the SHA-1 format.
    pcr, etype, first_digest = r.u32(), r.u32(), r.take(20)
    first_data = _event_data(r)
    _check_pcr(r, pcr, etype)
    events: list[Event] = []
    algs: tuple[tuple[int, str, int], ...]
    agile = etype == EV_NO_ACTION and first_data[:16] == SPEC_ID_03
    if agile:
        if pcr != 0 or first_digest != bytes(20):
            raise r.fail("Spec ID event not in PCR 0 with a zero digest")
        algs = _parse_spec_id(first_data)
    else:
        algs = ((0x0004, "sha1", 20),)
        events.append(Event(0, pcr, etype, {"sha1": first_digest}, first_data))
    parse_one = _agile_event if agile else _sha1_event
    layout = _AgileLayout(algs, agile)
    unpack, head_size, digests_of = layout.head.unpack_from, layout.head.size, layout.digests
    n_banks, alg_ids = len(layout.names), layout.alg_ids
    append = events.append
    pos, end = r.pos, len(data)
    while pos < end:
        index = len(events)
        if index >= MAX_EVENTS:
            raise AttestgateError(ErrorCode.TOO_LARGE, f"event log: more than {MAX_EVENTS} events")
        # Fast path: one unpack reads the header, every digest and the data size; it takes
        # only an event that is whole and valid. Anything else goes to ``parse_one``, which
        # reads field by field and raises the precise error.
        if end - pos >= head_size:
            f = unpack(data, pos)
            start = pos + head_size
            stop = start + f[-1]
            if (f[0] <= MAX_PCR_INDEX and f[-1] <= MAX_EVENT_DATA and stop <= end
                    and (not agile or (f[2] == n_banks and f[3:-1:2] == alg_ids))):
                append(Event(index, f[0], f[1], digests_of(f), data[start:stop]))
                pos = stop
                continue
        event, pos = parse_one(data, pos, index, layout)
        append(event)
    return EventLog(agile, tuple(name for _, name, _ in algs), tuple(events),
                    _startup_locality(events))


# The two event readers below are the hot loop (a log holds ~100 events), so they read with
# struct.unpack_from after an explicit bounds check instead of a reader object per field.

def _fail(pos: int, reason: str) -> AttestgateError:
    return AttestgateError(ErrorCode.BAD_REQUEST, f"event log: {reason} at offset {pos}")


def _need(data: bytes, pos: int, n: int) -> None:
    if n > len(data) - pos:
        raise _fail(pos, f"truncated (wanted {n} B, {len(data) - pos} left)")


def _body(data: bytes, pos: int) -> tuple[bytes, int]:
    _need(data, pos, 4)
    (size,) = _U32.unpack_from(data, pos)
    if size > MAX_EVENT_DATA:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"event data of {size} B")
    pos += 4
    _need(data, pos, size)
    return data[pos : pos + size], pos + size


def _header(data: bytes, pos: int) -> tuple[int, int]:
    _need(data, pos, 8)
    pcr, etype = _U32X2.unpack_from(data, pos)
    if pcr > MAX_PCR_INDEX:
        raise _fail(pos, f"PCR index {pcr} ({event_name(etype)})")
    return pcr, etype


def _sha1_event(data: bytes, pos: int, index: int, layout: _AgileLayout) -> tuple[Event, int]:
    pcr, etype = _header(data, pos)
    _need(data, pos + 8, 20)
    digest = data[pos + 8 : pos + 28]
    body, pos = _body(data, pos + 28)
    return Event(index, pcr, etype, {"sha1": digest}, body), pos


class _AgileLayout:
    """The banks of a log, and ``head``: an event's fixed part (PCR, type, digests, data size)
    as one struct. In a crypto-agile log that lists every bank once, in Spec ID order (the
    usual case); ``_agile_event`` reads any other order field by field."""

    def __init__(self, algs: tuple[tuple[int, str, int], ...], agile: bool = True) -> None:
        self.by_alg = {alg: (name, size) for alg, name, size in algs}
        self.names = tuple(name for _, name, _ in algs)
        self.alg_ids = tuple(alg for alg, _, _ in algs)
        self.fast = struct.Struct("<I" + "".join(f"H{size}s" for _, _, size in algs))
        self.head = struct.Struct("<II" + (self.fast.format[1:] if agile else "20s") + "I")
        # The digests of a ``head`` tuple as {bank: digest}: a dict display for up to three
        # banks (every real log) costs a third of dict(zip(...)) per event.
        at = range(4, 4 + 2 * len(algs), 2) if agile else range(2, 3)
        self.digests = _digest_reader(self.names, tuple(at))


def _digest_reader(names: tuple[str, ...], at: tuple[int, ...]
                   ) -> Callable[[tuple[Any, ...]], dict[str, bytes]]:
    match names, at:
        case (a,), (i,):
            return lambda f: {a: f[i]}
        case (a, b), (i, j):
            return lambda f: {a: f[i], b: f[j]}
        case (a, b, c), (i, j, k):
            return lambda f: {a: f[i], b: f[j], c: f[k]}
    return lambda f: {name: f[i] for name, i in zip(names, at, strict=True)}


def _agile_event(data: bytes, pos: int, index: int, layout: _AgileLayout) -> tuple[Event, int]:
    pcr, etype = _header(data, pos)
    pos += 8
    digests: dict[str, bytes]
    if len(data) - pos >= layout.fast.size:
        fields = layout.fast.unpack_from(data, pos)
        if fields[0] == len(layout.names) and fields[1::2] == layout.alg_ids:
            digests = dict(zip(layout.names, fields[2::2], strict=True))
            body, pos = _body(data, pos + layout.fast.size)
            return Event(index, pcr, etype, digests, body), pos
    _need(data, pos, 4)
    (count,) = _U32.unpack_from(data, pos)
    if count != len(layout.names):
        raise _fail(pos, f"{count} digests, the header names {len(layout.names)} banks")
    pos += 4
    digests = {}
    for _ in range(count):
        _need(data, pos, 2)
        (alg,) = _U16.unpack_from(data, pos)
        bank = layout.by_alg.get(alg)
        if bank is None or bank[0] in digests:
            raise _fail(pos, f"digest algorithm {alg:#06x} unexpected or repeated")
        name, size = bank
        _need(data, pos + 2, size)
        digests[name] = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
    body, pos = _body(data, pos)
    return Event(index, pcr, etype, digests, body), pos


def _startup_locality(events: list[Event]) -> int | None:
    """The locality of a StartupLocality EV_NO_ACTION in PCR 0; two of them are refused."""
    found: int | None = None
    for ev in events:
        if (ev.type == EV_NO_ACTION and ev.pcr == 0 and len(ev.data) == 17
                and ev.data[:16] == STARTUP_LOCALITY):
            if found is not None:
                raise _fail(0, "a second StartupLocality event")
            found = ev.data[16]
    return found


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
