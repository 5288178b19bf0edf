"""``attestgate eventlog`` on the real logs and on bad ones (no TPM: --tpm tests are in
tests/integration/test_eventlog_tpm.py)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from eventlog_helpers import REAL_LOGS, boot_log, published_pcrs, require_eventlogs

from client.cli import main
from client.eventlog_view import LINUX_EVENT_LOG, default_log_path
from shared.errors import AttestgateError, ErrorCode


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _no_tpm_no_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTESTGATE_TPM", raising=False)
    monkeypatch.delenv("TPM2TOOLS_TCTI", raising=False)
    monkeypatch.delenv("ATTESTGATE_EVENT_LOG", raising=False)


@pytest.mark.parametrize("name", REAL_LOGS)
def test_json_on_every_real_log(name: str) -> None:
    rc, out, _ = run("eventlog", str(require_eventlogs() / name), "--json")
    assert rc == 0
    doc: dict[str, Any] = json.loads(out)
    assert doc["pcrs_compared"] is False
    for bank, values in doc["pcrs"].items():
        assert bank in ("sha1", "sha256", "sha384")
        assert all(k.isdecimal() and int(k) < 24 for k in values)
        assert all(len(v) == 2 * {"sha1": 20, "sha256": 32, "sha384": 48}[bank]
                   for v in values.values())
    published = published_pcrs(name)
    for bank, values in (published or {}).items():
        for pcr, value in values.items():
            assert doc["pcrs"][bank][str(pcr)] == value.hex()
    assert doc["events"]
    for ev in doc["events"]:
        assert {"pcr", "type", "digests", "verified"} <= set(ev)
        assert ev["type"].startswith("EV_") and isinstance(ev["verified"], bool)
        assert list(ev["digests"]) == doc["banks"]
        if ev["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION":
            assert ev["verified"] is False and "path_hint" in ev


def test_json_fields_of_a_known_event() -> None:
    name = "go-tpm-tools/rhel8-uefi.bin"
    rc, out, _ = run("eventlog", str(require_eventlogs() / name), "--json")
    assert rc == 0
    doc = json.loads(out)
    sb = next(e for e in doc["events"] if e.get("variable") == "SecureBoot")
    assert sb["pcr"] == 7 and sb["type"] == "EV_EFI_VARIABLE_DRIVER_CONFIG"
    assert sb["enabled"] is True and sb["verified"] is True
    assert set(sb["digests"]) == {"sha1", "sha256", "sha384"}
    shim = next(e for e in doc["events"] if e["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION")
    assert shim["path_hint"] == "\\EFI\\redhat\\shimx64.efi"
    linux = next(e for e in doc["events"] if str(e.get("command", "")).startswith("linux "))
    assert linux["ipl"] == "grub_cmd" and linux["verified"] is True
    assert doc["secure_boot"] is True and doc["anomalies"] == []


def test_human_output_lists_components_per_pcr_and_labels_hints() -> None:
    rc, out, _ = run("eventlog", str(require_eventlogs() / "go-tpm-tools/rhel8-uefi.bin"))
    assert rc == 0
    assert "PCR 4 (" in out and "PCR 7 (" in out
    assert "[      hint] boot_application     \\EFI\\redhat\\grubx64.efi" in out
    assert "[   data ok] secureboot_state     SecureBoot: enabled" in out
    assert "replayed PCR values (sha256):" in out
    assert "not compared with a TPM" in out


def test_base64_log_as_keylime_stores_it(tmp_path: Path) -> None:
    path = tmp_path / "log.b64"
    path.write_bytes(base64.encodebytes(boot_log()))
    rc, out, _ = run("eventlog", str(path), "--json")
    assert rc == 0 and json.loads(out)["banks"] == ["sha1", "sha256"]


def test_env_variable_names_the_default_log(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.bin"
    path.write_bytes(boot_log())
    monkeypatch.setenv("ATTESTGATE_EVENT_LOG", str(path))
    rc, out, _ = run("eventlog", "--json")
    assert rc == 0 and json.loads(out)["file"] == str(path)


def test_default_path_order(tmp_path: Path) -> None:
    assert default_log_path({"ATTESTGATE_EVENT_LOG": "/x"}, str(tmp_path / "none")) == "/x"
    readable = tmp_path / "measurements"
    readable.write_bytes(b"")
    assert default_log_path({}, str(readable)) == str(readable)
    with pytest.raises(AttestgateError) as e:
        default_log_path({}, str(tmp_path / "none"))
    assert e.value.code is ErrorCode.BAD_REQUEST


def test_no_log_is_a_usage_error() -> None:
    if os.access(LINUX_EVENT_LOG, os.R_OK):
        pytest.skip(f"{LINUX_EVENT_LOG} is readable here: it is the default")
    rc, out, err = run("eventlog")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "ATTESTGATE_EVENT_LOG" in err and "(bad_request)" in err


@pytest.mark.parametrize("content", [b"\x00" * 10, boot_log()[:-3], b"not a log at all\n",
                                     boot_log()[:40] + b"\xff" * 40])
def test_bad_log_is_one_line_with_our_code(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    rc, out, err = run("eventlog", str(path))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("attestgate: ") and err.rstrip().endswith("(bad_request)")
    rc, out, err = run("eventlog", str(path), "--json")
    assert rc == 2 and err == ""
    doc = json.loads(out)
    assert doc["error"] == "bad_request" and doc["message"]


def test_oversized_log_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(boot_log() + b"\x00" * (2 * 1024 * 1024))
    rc, out, _ = run("eventlog", str(path), "--json")
    assert rc != 0 and json.loads(out)["error"] == "too_large"


def test_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    rc, out, _ = run("eventlog", str(tmp_path / "missing"), "--json")
    assert rc == 2 and json.loads(out)["error"] == "bad_request"
