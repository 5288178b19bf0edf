"""Every real log of the handout set parses, replays to its published PCRs and verifies."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from eventlog_helpers import REAL_LOGS, published_pcrs, real_log, require_eventlogs

from shared.eventlog import parse_log, replay, verify
from shared.eventlog import types as t
from shared.eventlog.build import encode_log


@pytest.mark.parametrize("name", REAL_LOGS)
def test_real_log_parses_and_reencodes_exactly(name: str) -> None:
    data = real_log(name)
    log = parse_log(data)
    assert log.events and set(log.banks) <= {"sha1", "sha256", "sha384"}
    encoded = encode_log(log.events, log.banks, log.crypto_agile)
    # The Spec ID header may carry vendor bytes we do not keep; every event is byte-exact.
    header = 32 + int.from_bytes(data[28:32], "little") if log.crypto_agile else 0
    ours = 32 + int.from_bytes(encoded[28:32], "little") if log.crypto_agile else 0
    assert encoded[ours:] == data[header:]


@pytest.mark.parametrize("name", [n for n in REAL_LOGS if not n.startswith(("go-att", "keyl"))])
def test_real_log_replays_to_published_pcrs(name: str) -> None:
    published = published_pcrs(name)
    assert published, f"expected.json names no reference for {name}"
    replayed = replay(parse_log(real_log(name)))
    for bank, values in published.items():
        for pcr, value in values.items():
            assert replayed[bank][pcr] == value, (bank, pcr)
    state = verify(real_log(name), published)
    assert state.consistent and not state.anomalies
    quoted = {pcr for values in published.values() for pcr in values}
    for ce in state.events:
        # Everything whose digest is of its data verifies; device paths never do.
        if ce.event.type == t.EV_EFI_BOOT_SERVICES_APPLICATION:
            assert not ce.verified and ce.fields.get("path_hint") is not None
        if ce.event.pcr in quoted and ce.event.type in (
                t.EV_SEPARATOR, t.EV_EFI_VARIABLE_DRIVER_CONFIG, t.EV_EFI_ACTION):
            assert ce.verified, ce.event.index


def test_a_published_value_that_differs_is_a_mismatch_and_unverifies_that_pcr() -> None:
    name = "go-tpm-tools/rhel8-uefi.bin"
    published = published_pcrs(name)
    assert published
    published["sha256"][7] = bytes(32)
    state = verify(real_log(name), published)
    assert state.mismatched == (("sha256", 7),) and not state.consistent
    assert not any(ce.verified for ce in state.events if ce.event.pcr == 7)
    assert state.secure_boot is None
    assert any(ce.verified for ce in state.events if ce.event.pcr == 4)


@pytest.mark.parametrize(("name", "secure_boot"), [
    ("go-tpm-tools/rhel8-uefi.bin", True), ("go-tpm-tools/debian-10.bin", True),
    ("go-tpm-tools/ubuntu-2104-no-secure-boot.bin", False),
    ("go-tpm-tools/ubuntu-2404-amd-sevsnp.bin", False), ("go-tpm-tools/glinux-alex.bin", False),
])
def test_secure_boot_state_of_real_logs(name: str, secure_boot: bool) -> None:
    published = published_pcrs(name)
    assert published
    assert verify(real_log(name), published).secure_boot is secure_boot


def test_startup_locality_sets_pcr0_initial_value() -> None:
    log = parse_log(real_log("go-tpm-tools/glinux-alex.bin"))
    assert log.startup_locality == 3
    published = published_pcrs("go-tpm-tools/glinux-alex.bin")
    assert published and replay(log)["sha256"][0] == published["sha256"][0]


def test_t490_partial_quote_verifies_only_quoted_pcrs() -> None:
    published = published_pcrs("safeboot-t490/eventlog")
    assert published and set(published["sha256"]) == {0, 1, 2, 4}
    state = verify(real_log("safeboot-t490/eventlog"), published)
    assert state.consistent and state.checked_banks == ("sha256",)
    assert not any(ce.verified for ce in state.events if ce.event.pcr in (5, 7))
    assert any(ce.verified for ce in state.events if ce.event.pcr == 1)


def _tpm2_eventlog_pcrs(path: str) -> dict[str, dict[int, bytes]]:
    out = subprocess.run(["tpm2_eventlog", path], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    pcrs: dict[str, dict[int, bytes]] = {}
    bank = ""
    for line in out[out.index("\npcrs:"):].splitlines()[2:]:
        m = re.fullmatch(r"\s+(\d+)\s*:\s*0x([0-9A-Fa-f]+)", line)
        if m:
            pcrs.setdefault(bank, {})[int(m.group(1))] = bytes.fromhex(m.group(2))
        elif line.strip().endswith(":"):
            bank = line.strip()[:-1]
    return pcrs


@pytest.mark.parametrize("name", [n for n in REAL_LOGS if not n.endswith(".b64")])
def test_tpm2_eventlog_oracle_agrees(name: str) -> None:
    """Debian's tpm2_eventlog 5.4 as an oracle, except PCR 0 of a log with StartupLocality
    (it starts PCR 0 at zero there, which is wrong)."""
    if shutil.which("tpm2_eventlog") is None:
        pytest.skip("tpm2_eventlog (tpm2-tools) not installed")
    path = str(require_eventlogs() / name)
    oracle = _tpm2_eventlog_pcrs(path)
    log = parse_log(real_log(name))
    ours = replay(log)
    assert set(oracle) == set(ours)
    for bank, values in ours.items():
        expected = dict(oracle[bank])
        got = dict(values)
        if log.startup_locality is not None:
            del expected[0], got[0]
        assert got == expected, bank
