"""Writing event logs: the inverse of ``parse.py``, for tests, demos and a simulated boot.

``encode_log`` emits exactly what ``parse_log`` reads: a crypto-agile log (Spec ID Event03
header, TCG_PCR_EVENT2 events) or, with ``banks=("sha1",)`` and ``crypto_agile=False``, the
SHA-1 format. ``measured_event`` digests the data the way firmware does for data-digest types.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from shared.errors import AttestgateError, ErrorCode
from shared.eventlog.parse import SPEC_ID_03, STARTUP_LOCALITY, Event
from shared.eventlog.types import BANKS, EV_NO_ACTION, HASH_BY_NAME

_ALG_BY_NAME = {name: (alg, size) for alg, (name, size, _) in BANKS.items()}


def measured_event(pcr: int, event_type: int, data: bytes, banks: Sequence[str],
                   measured: bytes | None = None) -> Event:
    """An event whose digests are the hash of ``measured`` (default: the data itself)."""
    body = data if measured is None else measured
    return Event(0, pcr, event_type, {b: HASH_BY_NAME[b](body) for b in banks}, data)


def startup_locality_event(locality: int, banks: Sequence[str]) -> Event:
    return Event(0, 0, EV_NO_ACTION, {b: bytes(_ALG_BY_NAME[b][1]) for b in banks},
                 STARTUP_LOCALITY + bytes([locality]))


def _spec_id(banks: Sequence[str]) -> bytes:
    algs = b"".join(struct.pack("<HH", *_ALG_BY_NAME[b]) for b in banks)
    return (SPEC_ID_03 + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks)) + algs + b"\x00")


def encode_log(events: Iterable[Event], banks: Sequence[str] = ("sha1", "sha256"),
               crypto_agile: bool = True) -> bytes:
    """The binary log of ``events`` (their ``index`` is ignored)."""
    if not crypto_agile:
        if tuple(banks) != ("sha1",):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "the SHA-1 format has one bank")
        return b"".join(struct.pack("<II", e.pcr, e.type) + e.digests["sha1"]
                        + struct.pack("<I", len(e.data)) + e.data for e in events)
    spec = _spec_id(banks)
    out = [struct.pack("<II", 0, EV_NO_ACTION), bytes(20), struct.pack("<I", len(spec)), spec]
    for e in events:
        out.append(struct.pack("<III", e.pcr, e.type, len(banks)))
        for b in banks:
            out.append(struct.pack("<H", _ALG_BY_NAME[b][0]) + e.digests[b])
        out.append(struct.pack("<I", len(e.data)) + e.data)
    return b"".join(out)


def replace_event(events: Sequence[Event], index: int, event: Event) -> list[Event]:
    """``events`` with the one at position ``index`` replaced."""
    return [event if i == index else e for i, e in enumerate(events)]


def quoted_from_replay(replayed: Mapping[str, Mapping[int, bytes]]
                       ) -> dict[str, dict[int, bytes]]:
    """A ``quoted`` argument for ``verify`` equal to a replay (as an honest TPM would report)."""
    return {b: dict(v) for b, v in replayed.items()}
