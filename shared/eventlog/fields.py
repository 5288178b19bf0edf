"""What an event's data says, by its (claimed) type, and which bytes its digest should cover.

:func:`decode` never raises on bad event data: a log can be well-formed while one event's
data is not; such an event gets ``{"undecodable": reason}`` and no measured forms.

``measured`` lists the byte strings whose hash the TCG PC Client PFP (1.05, 10.4.1) says the
event digest is, for the types where it is a hash of the event data (or of part of it). An
event whose digest is of something not in the log (an image's Authenticode hash, a firmware
volume, a file's contents) has none: its data is a hint and can never be verified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from shared.errors import AttestgateError
from shared.eventlog import efi
from shared.eventlog import types as t

# Types whose digest is the hash of the whole event data.
_DATA_DIGEST = frozenset({
    t.EV_SEPARATOR, t.EV_ACTION, t.EV_EFI_ACTION, t.EV_S_CRTM_VERSION, t.EV_EVENT_TAG,
    t.EV_PLATFORM_CONFIG_FLAGS, t.EV_TABLE_OF_DEVICES, t.EV_COMPACT_HASH,
    t.EV_IPL_PARTITION_DATA, t.EV_NONHOST_INFO, t.EV_OMIT_BOOT_DEVICE_EVENTS,
    t.EV_EFI_GPT_EVENT, t.EV_EFI_GPT_EVENT2, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
    t.EV_EFI_VARIABLE_BOOT, t.EV_EFI_VARIABLE_BOOT2, t.EV_EFI_VARIABLE_AUTHORITY,
})
_STRING_TYPES = frozenset({
    t.EV_ACTION, t.EV_EFI_ACTION, t.EV_S_CRTM_VERSION, t.EV_IPL, t.EV_COMPACT_HASH,
    t.EV_OMIT_BOOT_DEVICE_EVENTS, t.EV_EFI_HCRTM_EVENT, t.EV_NONHOST_INFO,
})
_VARIABLE_TYPES = frozenset({
    t.EV_EFI_VARIABLE_DRIVER_CONFIG, t.EV_EFI_VARIABLE_BOOT, t.EV_EFI_VARIABLE_BOOT2,
    t.EV_EFI_VARIABLE_AUTHORITY,
})
_IMAGE_TYPES = frozenset({
    t.EV_EFI_BOOT_SERVICES_APPLICATION, t.EV_EFI_BOOT_SERVICES_DRIVER,
    t.EV_EFI_RUNTIME_SERVICES_DRIVER,
})
# Boot loaders measure strings into EV_IPL events as "<prefix><string>\0" with the digest of
# <string> alone (grub: grub-core/commands/tpm.c, grub_tpm_verify_string), or of <string>\0
# (the older RHEL grub patches: "grub_cmd " without a colon).
IPL_PREFIXES = (
    ("grub_cmd: ", "grub_cmd"), ("grub_cmd ", "grub_cmd"),
    ("kernel_cmdline: ", "kernel_cmdline"), ("grub_kernel_cmdline ", "kernel_cmdline"),
    ("module_cmdline: ", "module_cmdline"),
)
_IPL_PREFIXES_ENCODED = tuple((prefix.encode(), kind) for prefix, kind in IPL_PREFIXES)
_IPL_PREFIX_BYTES = tuple(prefix for prefix, _ in _IPL_PREFIXES_ENCODED)
# RHEL grub measures file contents with these descriptions (a hint: the digest is the file's).
_IPL_FILE_LABELS = {"grub_linuxefi Kernel": "kernel", "grub_linuxefi Initrd": "initrd"}
SIGNATURE_DATABASES = frozenset({"PK", "KEK", "db", "dbx", "dbt", "dbr", "MokList", "MokListX"})
_RAW_SHOWN = 256


@dataclass(frozen=True)
class Decoded:
    fields: dict[str, Any]
    measured: tuple[bytes, ...]


def decode(event_type: int, pcr: int, data: bytes) -> Decoded:
    """The parsed fields of one event's data and the byte strings its digest may cover."""
    return Decoded(*decode_parts(event_type, pcr, data))


def decode_parts(event_type: int, pcr: int, data: bytes
                 ) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    """``decode`` as a (fields, measured) pair: the verifier's loop, without the record."""
    measured: tuple[bytes, ...] = (data,) if event_type in _DATA_DIGEST else ()
    fields: dict[str, Any] = {"data_size": len(data)}
    try:
        extra = _fields(event_type, pcr, data, fields)
    except AttestgateError as exc:
        fields["undecodable"] = exc.detail
        return fields, measured
    return fields, measured + extra if extra else measured


def _fields(event_type: int, pcr: int, data: bytes, f: dict[str, Any]) -> tuple[bytes, ...]:
    """Fill ``f``; return extra measured forms beyond the whole data."""
    if event_type == t.EV_IPL:  # first: most events of a real log are grub's
        return _ipl(data, f)
    if event_type == t.EV_SEPARATOR:
        f["value"] = data.hex()
        f["error"] = data == b"\xff\xff\xff\xff"
        return ()
    if event_type in _VARIABLE_TYPES:
        return _variable(event_type, data, f)
    if event_type in _IMAGE_TYPES:
        image = efi.image_load(data)
        f["path_hint"] = efi.file_path_hint(image.path_nodes)
        f["device_path_hint"] = image.path_nodes
        f["image_length"] = image.length
        return ()
    if event_type in _STRING_TYPES:
        f["text"] = efi.text_of(data)
        return (data.rstrip(b"\x00"),) if data.endswith(b"\x00") else ()
    if event_type in (t.EV_EFI_GPT_EVENT, t.EV_EFI_GPT_EVENT2):
        disk, parts = efi.gpt(data)
        f["disk_guid"], f["partitions"] = disk, parts
        return ()
    if event_type == t.EV_NO_ACTION:
        f["signature"] = efi.text_of(data[:16])
        if data[:16] == b"StartupLocality\x00" and len(data) == 17:
            f["locality"] = data[16]
        return ()
    if event_type in (t.EV_EFI_PLATFORM_FIRMWARE_BLOB, t.EV_POST_CODE) and len(data) == 16:
        f["base"] = int.from_bytes(data[:8], "little")
        f["length"] = int.from_bytes(data[8:], "little")
        return ()
    if event_type == t.EV_EFI_PLATFORM_FIRMWARE_BLOB2 and data:
        end = 1 + data[0]
        f["description"] = efi.text_of(data[1:end])
        if len(data) == end + 16:
            f["base"] = int.from_bytes(data[end : end + 8], "little")
            f["length"] = int.from_bytes(data[end + 8 :], "little")
        return ()
    if event_type in (t.EV_EFI_HANDOFF_TABLES, t.EV_EFI_HANDOFF_TABLES2):
        return _handoff(event_type, data, f)
    if event_type == t.EV_EVENT_TAG and len(data) >= 8:
        f["tag_id"] = int.from_bytes(data[:4], "little")
        f["tag_data_size"] = int.from_bytes(data[4:8], "little")
        return ()
    if event_type == t.EV_POST_CODE:
        f["text"] = efi.text_of(data)
        return ()
    if event_type not in t.EVENT_NAMES:
        f["type_number"] = event_type
    f["raw"] = data[:_RAW_SHOWN].hex()
    return ()


def _variable(event_type: int, data: bytes, f: dict[str, Any]) -> tuple[bytes, ...]:
    authority = event_type == t.EV_EFI_VARIABLE_AUTHORITY
    var = efi.variable(data, strict=not authority)
    f["variable"], f["vendor"] = var.name, var.vendor
    f["data_sha256"] = hashlib.sha256(var.data).hexdigest()
    if authority:
        # shim logs its own authority events one byte long and digests all but that byte
        # (go-attestation attest/secureboot.go, ErrSigMissingGUID).
        return (data[:-1],) if data else ()
    if var.name == "SecureBoot" and var.vendor == efi.EFI_GLOBAL_VARIABLE:
        f["enabled"] = var.data == b"\x01"
    elif var.name in SIGNATURE_DATABASES and var.data:
        lists = efi.signature_lists(var.data)
        f["signatures"] = sum(len(ids) for _, ids in lists)
        f["signature_sha256"] = sorted(set().union(*(ids for _, ids in lists)))
    elif var.name == "BootOrder":
        f["order"] = [f"Boot{int.from_bytes(var.data[i : i + 2], 'little'):04X}"
                      for i in range(0, len(var.data) - 1, 2)]
    elif var.name.startswith("Boot") and len(var.name) == 8:
        description, nodes = efi.load_option(var.data)
        f["description"] = description
        f["path_hint"] = efi.file_path_hint(nodes)
    # EDK2 measures only VariableData for EV_EFI_VARIABLE_BOOT (PFP 1.05 asks for the whole
    # UEFI_VARIABLE_DATA); both forms are accepted for that type only.
    return (var.data,) if event_type == t.EV_EFI_VARIABLE_BOOT else ()


def _ipl(data: bytes, f: dict[str, Any]) -> tuple[bytes, ...]:
    text = efi.text_of(data)
    f["text"] = text
    raw = data.rstrip(b"\x00")
    stripped = len(raw) != len(data)
    if raw.startswith(_IPL_PREFIX_BYTES):
        for prefix, kind in _IPL_PREFIXES_ENCODED:
            if raw.startswith(prefix):
                n = len(prefix)
                f["ipl"] = kind
                f["command"] = text[n:]
                return (raw[n:], data[n:], data, raw) if stripped else (raw[n:], data[n:], data)
    forms = (data, raw) if stripped else (data,)
    label = _IPL_FILE_LABELS.get(text)
    if label is not None or text.startswith(("/", "(", "\\")):
        # grub measures a file's contents with its path as the event data: a hint.
        f["ipl"] = "file"
        f["path_hint"] = label or text
    return forms


def _handoff(event_type: int, data: bytes, f: dict[str, Any]) -> tuple[bytes, ...]:
    pos = 0
    if event_type == t.EV_EFI_HANDOFF_TABLES2:
        if not data:
            return ()
        f["description"] = efi.text_of(data[1 : 1 + data[0]])
        pos = 1 + data[0]
    if len(data) < pos + 8:
        return ()
    count = int.from_bytes(data[pos : pos + 8], "little")
    if len(data) != pos + 8 + 24 * count:
        f["undecodable"] = "handoff table count does not match the data size"
        return ()
    f["tables"] = [efi.guid(data[pos + 8 + 24 * i : pos + 24 + 24 * i]) for i in range(count)]
    return ()
