"""Writing event logs: the inverse of ``parse.py``, for tests, demos and a simulated boot.

``encode_log`` emits exactly what ``parse_log`` reads: a crypto-agile log (Spec ID Event03
header, TCG_PCR_EVENT2 events) or, with ``banks=("sha1",)`` and ``crypto_agile=False``, the
SHA-1 format. ``measured_event`` digests the data the way firmware does for data-digest types.
"""

from __future__ import annotations

import struct
import uuid
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


# -- event data as UEFI firmware, shim and grub write it ------------------------------------
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")


def variable_data(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: vendor GUID, name (UTF-16), the variable's data."""
    return (vendor.bytes_le + struct.pack("<QQ", len(name), len(data))
            + name.encode("utf-16-le") + data)


def signature_list(kind: uuid.UUID, entries: Sequence[bytes]) -> bytes:
    """One EFI_SIGNATURE_LIST of equally sized entries (an owner GUID of 0x11 bytes each)."""
    size = 16 + len(entries[0])
    return (kind.bytes_le + struct.pack("<III", 28 + size * len(entries), 0, size)
            + b"".join(b"\x11" * 16 + e for e in entries))


def image_load(path: str, base: int = 0x1000, length: int = 0x2000) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT with a file-path device path (the path is a hint: unmeasured)."""
    node = path.encode("utf-16-le") + b"\x00\x00"
    dp = struct.pack("<BBH", 4, 4, 4 + len(node)) + node + b"\x7f\xff\x04\x00"
    return struct.pack("<QQQQ", base, length, 0, len(dp)) + dp


def ipl(prefix: str, text: str) -> tuple[bytes, bytes]:
    """(event data, measured bytes) as grub writes a string: the digest covers ``text``."""
    return (prefix + text).encode() + b"\x00", text.encode()
