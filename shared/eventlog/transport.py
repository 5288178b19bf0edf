"""The event log in the protocol: chunking, the compressed form the bus and the store carry,
and the one check every protocol use needs (log + quoted PCRs -> a consistent state).

A log is content-addressed by :func:`log_digest` (SHA-256 of the raw bytes). Between the
gateway and the attestor, and in the store, it is zlib-compressed; :func:`decompress` is
bounded (never more than ``MAX_LOG_TRANSFER`` bytes out), so a small blob cannot expand
into an unbounded allocation.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Mapping

from shared.errors import AttestgateError, ErrorCode
from shared.eventlog.parse import EventLog, parse_log
from shared.eventlog.state import MachineState, verify
from shared.wire import LOG_CHUNK, MAX_LOG_BUS, MAX_LOG_TRANSFER


def log_digest(log: bytes) -> str:
    return hashlib.sha256(log).hexdigest()


def chunks(log: bytes, size: int = LOG_CHUNK) -> Iterator[tuple[int, bytes]]:
    """(offset, data) pieces of at most ``size`` bytes, in order."""
    for off in range(0, len(log), size):
        yield off, log[off:off + size]


def compress(log: bytes) -> bytes:
    """The log as the bus and the store carry it; TOO_LARGE beyond the caps."""
    if len(log) > MAX_LOG_TRANSFER:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"event log {len(log)} B")
    blob = zlib.compress(log, 6)
    if len(blob) > MAX_LOG_BUS:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"compressed event log {len(blob)} B")
    return blob


def decompress(blob: bytes) -> bytes:
    """Inverse of :func:`compress`, bounded; BAD_REQUEST / TOO_LARGE for anything else."""
    if len(blob) > MAX_LOG_BUS:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"compressed event log {len(blob)} B")
    d = zlib.decompressobj()
    try:
        out = d.decompress(blob, MAX_LOG_TRANSFER + 1)
    except zlib.error:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "event log: not zlib data") from None
    if len(out) > MAX_LOG_TRANSFER:
        raise AttestgateError(ErrorCode.TOO_LARGE, "event log expands beyond the cap")
    if not d.eof or d.unused_data:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "event log: truncated or trailing data")
    return out


def checked_state(log: bytes, bank: str, quoted: Mapping[int, bytes]) -> MachineState:
    """The log's state against the quoted PCRs of ``bank``; LOG_INCONSISTENT when the log does
    not parse or does not replay to every quoted PCR it describes.

    The state holds only the events of quoted PCRs: nothing vouches for the others (with
    the default selection, grub's PCRs 8 and 9), so they take no part in a decision or a diff.
    """
    try:
        parsed = parse_log(log)
        kept = EventLog(parsed.crypto_agile, parsed.banks,
                        tuple(e for e in parsed.events if e.pcr in quoted),
                        parsed.startup_locality)
        state = verify(kept, {bank: dict(quoted)})
    except AttestgateError as exc:
        if exc.code is ErrorCode.TOO_LARGE:
            raise
        raise AttestgateError(ErrorCode.LOG_INCONSISTENT, f"log does not parse: {exc.detail}"
                              ) from None
    if not state.consistent:
        where = ", ".join(f"{b}:{p}" for b, p in state.mismatched)
        raise AttestgateError(ErrorCode.LOG_INCONSISTENT, f"log does not replay to {where}")
    return state
