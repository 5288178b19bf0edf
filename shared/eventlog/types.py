"""Event-log constants: event types (TCG PC Client PFP 1.05, section 10.4.1), hash banks, limits."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, Final

# -- hard limits on untrusted input (checked before anything is parsed) --------------------
MAX_LOG_BYTES: Final = 1024 * 1024  # real logs are 15-100 KiB
MAX_EVENTS: Final = 5000  # real logs hold 25-150 events
MAX_EVENT_DATA: Final = 256 * 1024  # one event's data (db/dbx variables reach ~20 KiB)
MAX_DIGESTS_PER_EVENT: Final = 8  # one per bank; a TPM has at most a handful of banks
MAX_PCR_INDEX: Final = 23  # PC Client TPMs have PCRs 0-23
MAX_VENDOR_INFO: Final = 255  # the Spec ID event's vendorInfoSize is one byte

# -- event types: number -> TCG name ----------------------------------------------------------
EV_PREBOOT_CERT: Final = 0x0
EV_POST_CODE: Final = 0x1
EV_UNUSED: Final = 0x2
EV_NO_ACTION: Final = 0x3
EV_SEPARATOR: Final = 0x4
EV_ACTION: Final = 0x5
EV_EVENT_TAG: Final = 0x6
EV_S_CRTM_CONTENTS: Final = 0x7
EV_S_CRTM_VERSION: Final = 0x8
EV_CPU_MICROCODE: Final = 0x9
EV_PLATFORM_CONFIG_FLAGS: Final = 0xA
EV_TABLE_OF_DEVICES: Final = 0xB
EV_COMPACT_HASH: Final = 0xC
EV_IPL: Final = 0xD
EV_IPL_PARTITION_DATA: Final = 0xE
EV_NONHOST_CODE: Final = 0xF
EV_NONHOST_CONFIG: Final = 0x10
EV_NONHOST_INFO: Final = 0x11
EV_OMIT_BOOT_DEVICE_EVENTS: Final = 0x12
EV_EFI_VARIABLE_DRIVER_CONFIG: Final = 0x80000001
EV_EFI_VARIABLE_BOOT: Final = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION: Final = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER: Final = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER: Final = 0x80000005
EV_EFI_GPT_EVENT: Final = 0x80000006
EV_EFI_ACTION: Final = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB: Final = 0x80000008
EV_EFI_HANDOFF_TABLES: Final = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2: Final = 0x8000000A
EV_EFI_HANDOFF_TABLES2: Final = 0x8000000B
EV_EFI_VARIABLE_BOOT2: Final = 0x8000000C
EV_EFI_GPT_EVENT2: Final = 0x8000000D
EV_EFI_HCRTM_EVENT: Final = 0x80000010
EV_EFI_VARIABLE_AUTHORITY: Final = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB: Final = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG: Final = 0x800000E2

EVENT_NAMES: Final[dict[int, str]] = {
    value: name for name, value in list(globals().items())
    if name.startswith("EV_") and isinstance(value, int)
}


def event_name(event_type: int) -> str:
    """The TCG name of an event type; unknown types are ``EV_UNKNOWN_0x........``."""
    return EVENT_NAMES.get(event_type, f"EV_UNKNOWN_{event_type:#010x}")


# -- hash banks: TPM_ALG_ID -> (name, digest size, hash function) ----------------------------
Hasher = Callable[[bytes], bytes]


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def _sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


BANKS: Final[dict[int, tuple[str, int, Hasher]]] = {
    0x0004: ("sha1", 20, _sha1),
    0x000B: ("sha256", 32, _sha256),
    0x000C: ("sha384", 48, _sha384),
    0x000D: ("sha512", 64, _sha512),
}
# Banks a Spec ID header may name whose hash we do not compute (e.g. SM3): their digests are
# parsed and shown under ``alg_0x....`` names, never replayed.
HASH_BY_NAME: Final[dict[str, Hasher]] = {name: fn for name, _, fn in BANKS.values()}
# The same hashes as hashlib constructors (``NEW_HASH[bank](data).digest()``), for the loops that
# hash once per event and bank: no Python frame per call.
NEW_HASH: Final[dict[str, Callable[[bytes], Any]]] = {
    "sha1": functools.partial(hashlib.sha1, usedforsecurity=False),
    "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512,
}
SIZE_BY_NAME: Final[dict[str, int]] = {name: size for name, size, _ in BANKS.values()}
