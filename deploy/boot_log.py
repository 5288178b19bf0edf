"""A simulated measured boot for a software TPM: a small realistic event log, and "booting" a
TPM from a log (each event's SHA-256 digest extended into its PCR, in log order).

    python -m deploy.boot_log write DIR           # writes DIR/boot-1.log ... boot-3.log
    python -m deploy.boot_log boot TCTI LOGFILE   # extends the TPM's sha256 PCRs from LOGFILE

``boot-2.log`` is ``boot-1.log`` after a kernel update (``boot-3.log`` after the next one): one
boot application (the kernel, the third image the firmware loads: shim, grub, vmlinuz)
measured with a new digest, and the kernel's name in grub's events changed to match (PCRs 8/9,
outside the default selection).
Only ``shared.eventlog.build`` writes the logs; nothing here needs the handout data.

The TPM must be fresh (PCRs as after a reset): a swtpm at locality 0 can extend PCRs 0-15,
16 and 23 only, and a log whose StartupLocality is not 0 cannot be replayed on it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.eventlog import parse_log
from shared.eventlog import types as t
from shared.eventlog.build import EFI_CERT_SHA256 as SHA256_SIG
from shared.eventlog.build import EFI_CERT_X509 as X509
from shared.eventlog.build import EFI_GLOBAL_VARIABLE as GLOBAL
from shared.eventlog.build import EFI_IMAGE_SECURITY_DATABASE as IMAGE_DB
from shared.eventlog.build import (
    encode_log,
    image_load,
    ipl,
    measured_event,
    signature_list,
    variable_data,
)
from shared.eventlog.parse import Event

BANKS = ("sha1", "sha256")
EXTENDABLE = frozenset((*range(16), 16, 23))  # at locality 0 (TPM-NOTES.md)
_BATCH = 64  # digests per tpm2_pcrextend run


def _image(path: str) -> bytes:
    return image_load(path, 0x7E000000, 0x1A0000)


def demo_boot(kernel: str = "6.1.0-28-amd64") -> list[Event]:
    """The events of one UEFI boot with Secure Boot: firmware, keys, shim, grub, the kernel."""
    def ev(pcr: int, etype: int, data: bytes, measured: bytes | None = None) -> Event:
        return measured_event(pcr, etype, data, BANKS, measured)

    vmlinuz = f"/boot/vmlinuz-{kernel}"
    cmdline = "root=UUID=6d1c0b4e-3f8a-4c1e-9a57-2b0f1e5d7c90 ro quiet"
    linux_data, linux_measured = ipl("grub_cmd: ", f"linux {vmlinuz} {cmdline}")
    kcl_data, kcl_measured = ipl("kernel_cmdline: ", f"{vmlinuz} {cmdline}")
    db = b"\x30\x82\x05\x00" + b"demo db certificate".ljust(36, b".")
    return [
        ev(0, t.EV_S_CRTM_VERSION, "1.16.2-debian".encode("utf-16-le") + b"\x00\x00"),
        ev(0, t.EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0xFFC00000, 0x84000),
           b"OVMF PEI firmware volume 1.16.2"),
        ev(0, t.EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0xFFC84000, 0x34C000),
           b"OVMF DXE firmware volume 1.16.2"),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG, variable_data(GLOBAL, "SecureBoot", b"\x01")),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(GLOBAL, "PK", signature_list(X509, [b"\x30\x82" + b"P" * 38]))),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(GLOBAL, "KEK", signature_list(X509, [b"\x30\x82" + b"K" * 38]))),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(IMAGE_DB, "db", signature_list(X509, [db]))),
        ev(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
           variable_data(IMAGE_DB, "dbx",
                         signature_list(SHA256_SIG, [bytes([i]) * 32 for i in range(5)]))),
        ev(7, t.EV_SEPARATOR, b"\x00" * 4),
        ev(1, t.EV_EFI_VARIABLE_BOOT, variable_data(GLOBAL, "BootOrder", b"\x01\x00\x00\x00")),
        ev(4, t.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        *[ev(pcr, t.EV_SEPARATOR, b"\x00" * 4) for pcr in (0, 1, 2, 3, 4, 5, 6)],
        ev(7, t.EV_EFI_VARIABLE_AUTHORITY, variable_data(IMAGE_DB, "db", b"\x11" * 16 + db)),
        ev(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, _image("\\EFI\\debian\\shimx64.efi"),
           b"shim 15.7-1 signed image"),
        ev(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, _image("\\EFI\\debian\\grubx64.efi"),
           b"grub 2.06-13 signed image"),
        ev(9, t.EV_IPL, b"(hd0,gpt1)/boot/grub/grub.cfg\x00",
           f"menuentry 'Debian GNU/Linux' {{ linux {vmlinuz} }}".encode()),
        ev(8, t.EV_IPL, linux_data, linux_measured),
        ev(8, t.EV_IPL, kcl_data, kcl_measured),
        ev(9, t.EV_IPL, vmlinuz.encode() + b"\x00", f"kernel image {kernel}".encode()),
        ev(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, _image(""),
           f"kernel image {kernel}".encode()),
        ev(5, t.EV_EFI_ACTION, b"Exit Boot Services Invocation"),
    ]


DEMO_KERNELS = ("6.1.0-28-amd64", "6.1.0-31-amd64", "6.1.0-34-amd64")


def write_demo_logs(directory: Path) -> tuple[Path, ...]:
    """boot-1.log (kernel 6.1.0-28), boot-2.log and boot-3.log (the same machine after
    updating to -31, then -34)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = tuple(directory / f"boot-{n}.log" for n in range(1, len(DEMO_KERNELS) + 1))
    for path, kernel in zip(paths, DEMO_KERNELS, strict=True):
        path.write_bytes(encode_log(demo_boot(kernel), BANKS))
    return paths


def extend_args(log: bytes, bank: str = "sha256") -> list[str]:
    """``tpm2_pcrextend`` arguments (``PCR:bank=HEX``) that replay ``log`` into a fresh TPM."""
    out = []
    for e in parse_log(log).events:
        if e.type == t.EV_NO_ACTION:
            if e.pcr == 0 and e.data.startswith(b"StartupLocality") and e.data[-1:] != b"\x00":
                raise ValueError("the log starts at a locality a swtpm cannot reproduce")
            continue
        if e.pcr not in EXTENDABLE:
            raise ValueError(f"PCR {e.pcr} cannot be extended at locality 0")
        out.append(f"{e.pcr}:{bank}={e.digests[bank].hex()}")
    return out


def boot_tpm(tcti: str, log: bytes) -> int:
    """Extend the TPM's sha256 PCRs from ``log``, in order; returns the events extended."""
    tool = shutil.which("tpm2_pcrextend")
    if tool is None:
        raise RuntimeError("tpm2_pcrextend (tpm2-tools) is not installed")
    args = extend_args(log)
    for i in range(0, len(args), _BATCH):
        subprocess.run([tool, *args[i:i + _BATCH]], check=True, capture_output=True,
                       env={"TPM2TOOLS_TCTI": tcti, "TSS2_LOG": "all+none",
                            "PATH": "/usr/bin:/bin"})
    return len(args)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "write":
        for p in write_demo_logs(Path(argv[1])):
            print(p)
        return 0
    if len(argv) == 3 and argv[0] == "boot":
        n = boot_tpm(argv[1], Path(argv[2]).read_bytes())
        print(f"extended {n} measurements from {argv[2]} into the TPM's sha256 PCRs")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
