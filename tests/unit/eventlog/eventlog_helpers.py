"""Real logs from the handout test data (read at test time, never copied), and a synthetic boot."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from shared.eventlog import build
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event
from shared.eventlog.parse import Event

TESTDATA = Path("/work/shared/testdata")
EVENTLOGS = TESTDATA / "eventlogs"
BANKS = ("sha1", "sha256")

# Every binary log in the developer set (README "Event logs"; the held-out one is not here).
REAL_LOGS = (
    "go-attestation/coreos_36_shielded_vm_no_secure_boot_eventlog",
    "go-attestation/crypto_agile_eventlog",
    "go-attestation/sb_cert_eventlog",
    "go-tpm-tools/cos-85-amd-sev.bin",
    "go-tpm-tools/debian-10.bin",
    "go-tpm-tools/glinux-alex.bin",
    "go-tpm-tools/rhel8-uefi.bin",
    "go-tpm-tools/ubuntu-2104-no-secure-boot.bin",
    "go-tpm-tools/ubuntu-2404-amd-sevsnp.bin",
    "keylime/binary_bios_measurements",
    "keylime/binary_bios_measurements-secureboot",
    "keylime/mb_log.b64",
    "safeboot-t490/eventlog",
)


def require_eventlogs() -> Path:
    if not EVENTLOGS.is_dir():
        pytest.skip(f"{EVENTLOGS} absent (the handout test data is not on this machine)")
    return EVENTLOGS


def real_log(name: str) -> bytes:
    data = (require_eventlogs() / name).read_bytes()
    return base64.b64decode(data) if name.endswith(".b64") else data


def published_pcrs(name: str) -> dict[str, dict[int, bytes]] | None:
    """The PCR values published for a log (expected.json names the reference file), or None."""
    expected = json.loads((TESTDATA / "expected.json").read_text())["eventlogs"]
    entry = expected.get(f"eventlogs/{name}")
    if entry is None:
        return None
    ref = TESTDATA / entry["reference"]
    if ref.suffix == ".json":
        banks = json.loads(ref.read_text())["banks"]
        return {b: {int(i): bytes.fromhex(v) for i, v in vals.items()} for b, vals in banks.items()}
    out: dict[str, dict[int, bytes]] = {}  # tpm2_pcrread-style YAML ("pcrs:", bank, "i : 0x..")
    bank = ""
    for line in ref.read_text().splitlines():
        if line.strip().endswith(":") and line.strip() != "pcrs:":
            bank = line.strip()[:-1]
        elif "0x" in line and bank:
            index, value = line.split(":")
            out.setdefault(bank, {})[int(index)] = bytes.fromhex(value.strip()[2:])
    return out


# -- a synthetic UEFI boot: firmware, Secure Boot, shim, grub, kernel ------------------------
GLOBAL = build.EFI_GLOBAL_VARIABLE
IMAGE_DB = build.EFI_IMAGE_SECURITY_DATABASE
X509 = build.EFI_CERT_X509
SHA256_SIG = build.EFI_CERT_SHA256
variable_data = build.variable_data
signature_list = build.signature_list
image_load = build.image_load
ipl = build.ipl


def boot(*, firmware: str = "FW 1.0", secure_boot: bool = True, db: bytes = b"\x30" * 40,
         dbx: int = 3, shim: bytes = b"shim-15.7", grub: bytes = b"grub-2.06",
         kernel: str = "6.1.0-28", kernel_image: bytes | None = None,
         cmdline: str = "root=/dev/sda1 ro quiet") -> list[Event]:
    """The events of one boot; each keyword is something an update changes."""
    def ev(pcr: int, etype: int, data: bytes, measured: bytes | None = None) -> Event:
        return measured_event(pcr, etype, data, BANKS, measured)

    vmlinuz = f"/boot/vmlinuz-{kernel}"
    linux_data, linux_measured = ipl("grub_cmd: ", f"linux {vmlinuz} {cmdline}")
    kcl_data, kcl_measured = ipl("kernel_cmdline: ", f"{vmlinuz} {cmdline}")
    dbx_entries = [bytes([i]) * 32 for i in range(dbx)]
    events = [
        ev(0, t.EV_S_CRTM_VERSION, firmware.encode("utf-16-le") + b"\x00\x00"),
        ev(0, t.EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0xFF000000, 0x100000),
           b"firmware volume " + firmware.encode()),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(GLOBAL, "SecureBoot", b"\x01" if secure_boot else b"\x00")),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(GLOBAL, "PK", signature_list(X509, [b"\x30" * 20]))),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(GLOBAL, "KEK", signature_list(X509, [b"\x30" * 30]))),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(IMAGE_DB, "db", signature_list(X509, [db]))),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(IMAGE_DB, "dbx", signature_list(SHA256_SIG, dbx_entries))),
        ev(7, t.EV_SEPARATOR, b"\x00" * 4),
        ev(1, t.EV_EFI_VARIABLE_BOOT, variable_data(GLOBAL, "BootOrder", b"\x01\x00")),
        ev(4, t.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        *[ev(pcr, t.EV_SEPARATOR, b"\x00" * 4) for pcr in (0, 1, 2, 3, 4, 5, 6)],
        ev(7, t.EV_EFI_VARIABLE_AUTHORITY, variable_data(IMAGE_DB, "db", b"\x11" * 16 + db)),
        ev(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, image_load("\\EFI\\debian\\shimx64.efi"),
           shim),
        ev(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, image_load("\\EFI\\debian\\grubx64.efi"),
           grub),
        ev(9, t.EV_IPL, b"(hd0,gpt1)/boot/grub/grub.cfg\x00",  # grub.cfg names the kernel
           f"menuentry Debian {{ linux {vmlinuz} }}".encode()),
        ev(8, t.EV_IPL, linux_data, linux_measured),
        ev(8, t.EV_IPL, kcl_data, kcl_measured),
        ev(9, t.EV_IPL, vmlinuz.encode() + b"\x00", kernel_image or f"kernel {kernel}".encode()),
        ev(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, image_load(""),
           kernel_image or f"kernel {kernel}".encode()),
        ev(5, t.EV_EFI_ACTION, b"Exit Boot Services Invocation"),
    ]
    return events


def boot_log(**kwargs: object) -> bytes:
    return encode_log(boot(**kwargs), BANKS)  # type: ignore[arg-type]
