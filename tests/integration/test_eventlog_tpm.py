"""``attestgate eventlog --tpm``: a log compared with a real (software) TPM's sha256 PCRs.

The swtpm "boots" by extending each event's measured bytes into its PCR, as firmware would.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from client.cli import main
from client.tpm import Tpm
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event
from tests.support.swtpm import SwtpmProcess

pytestmark = pytest.mark.integration


def _image_load(path: str) -> bytes:
    node = path.encode("utf-16-le") + b"\x00\x00"
    dp = struct.pack("<BBH", 4, 4, 4 + len(node)) + node + b"\x7f\xff\x04\x00"
    return struct.pack("<QQQQ", 0x1000, 0x2000, 0, len(dp)) + dp


# (PCR, type, event data, the bytes the firmware hashed)
BOOT = [
    (0, t.EV_S_CRTM_VERSION, "FW 1.0\x00".encode("utf-16-le"), "FW 1.0\x00".encode("utf-16-le")),
    (0, t.EV_SEPARATOR, bytes(4), bytes(4)),
    (4, t.EV_EFI_ACTION, b"Calling EFI Application from Boot Option",
     b"Calling EFI Application from Boot Option"),
    (4, t.EV_SEPARATOR, bytes(4), bytes(4)),
    (4, t.EV_EFI_BOOT_SERVICES_APPLICATION, _image_load("\\EFI\\debian\\shimx64.efi"),
     b"the shim image"),
    (8, t.EV_IPL, b"grub_cmd: linux /vmlinuz-6.1.0-28 ro\x00", b"linux /vmlinuz-6.1.0-28 ro"),
]


def _cli(*argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    text = out.getvalue()
    return rc, (json.loads(text) if "--json" in argv else {}), text


def test_eventlog_matches_the_tpm_then_not(swtpm: SwtpmProcess, tmp_path: Path) -> None:
    events = [measured_event(pcr, etype, data, ("sha1", "sha256"), measured)
              for pcr, etype, data, measured in BOOT]
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(encode_log(events, ("sha1", "sha256")))
    with Tpm(swtpm.tcti) as tpm:
        for pcr, _, _, measured in BOOT:
            tpm.extend_pcr(pcr, measured)

    rc, doc, _ = _cli("eventlog", str(log), "--tpm", swtpm.tcti, "--json")
    assert rc == 0
    assert doc["pcrs_compared"] is True and doc["tpm"]["match"] is True
    assert doc["tpm"]["pcrs"]["4"] == doc["pcrs"]["sha256"]["4"]
    assert set(doc["pcrs"]) == {"sha1", "sha256"}  # every bank of the log, compared or not
    verified = {e["type"]: e["verified"] for e in doc["events"]}
    assert verified["EV_SEPARATOR"] and verified["EV_IPL"] and verified["EV_S_CRTM_VERSION"]
    assert verified["EV_EFI_BOOT_SERVICES_APPLICATION"] is False  # a hint, always

    with Tpm(swtpm.tcti) as tpm:  # something the log does not show is measured into PCR 8
        tpm.extend_pcr(8, b"grub_cmd: insmod evil")
    rc, doc, _ = _cli("eventlog", str(log), "--tpm", swtpm.tcti, "--json")
    assert rc == 3
    assert doc["tpm"]["match"] is False and doc["tpm"]["mismatched"] == [8]
    assert not any(e["verified"] for e in doc["events"] if e["pcr"] == 8)
    assert all(e["verified"] for e in doc["events"] if e["type"] == "EV_SEPARATOR")
    rc, _, text = _cli("eventlog", str(log), "--tpm", swtpm.tcti)
    assert rc == 3 and "does NOT match the TPM's sha256 PCRs [8]" in text
    assert "!= TPM" in text
