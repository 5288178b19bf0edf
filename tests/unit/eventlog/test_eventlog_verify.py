"""Trust rules: data is verified only by its own digest and a replay that matches the quote.

The attacks are those of go-attestation docs/event-log-disclosure.md: the event type is covered
by no digest, and a boot application's data is never what its digest is of.
"""

from __future__ import annotations

import dataclasses

from eventlog_helpers import BANKS, GLOBAL, boot, variable_data

from shared.eventlog import MachineState, parse_log, replay, verify
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event, replace_event
from shared.eventlog.parse import Event


def _quote(events: list[Event]) -> dict[str, dict[int, bytes]]:
    return replay(parse_log(encode_log(events, BANKS)))


def _state(events: list[Event], quoted: dict[str, dict[int, bytes]] | None = None
           ) -> MachineState:
    log = encode_log(events, BANKS)
    return verify(log, _quote(events) if quoted is None else quoted)


def test_honest_boot_is_consistent_and_verified() -> None:
    state = _state(boot())
    assert state.consistent and not state.anomalies and state.secure_boot is True
    kinds = {c.kind: c for c in state.components}
    assert kinds["secureboot_state"].verified and kinds["secureboot_dbx"].value == "3 entries"
    assert kinds["kernel_cmdline"].verified
    assert kinds["kernel_cmdline"].value == "/boot/vmlinuz-6.1.0-28 root=/dev/sda1 ro quiet"
    apps = [c for c in state.components if c.kind == "boot_application"]
    assert [a.name for a in apps] == ["\\EFI\\debian\\shimx64.efi", "\\EFI\\debian\\grubx64.efi",
                                      ""]
    assert all(a.hint and not a.verified for a in apps)


def test_without_a_quote_nothing_is_compared() -> None:
    state = verify(encode_log(boot(), BANKS))
    assert not state.pcrs_compared and state.checked_banks == BANKS


def test_tampered_data_with_the_original_digest_is_not_verified() -> None:
    events = boot()
    i = next(i for i, e in enumerate(events) if e.type == t.EV_IPL and e.pcr == 8)
    forged = dataclasses.replace(events[i], data=b"grub_cmd: linux /evil init=/bin/sh\x00")
    state = _state(replace_event(events, i, forged))
    assert state.consistent  # the digests are the real ones, so the replay still matches
    ce = state.events[i]
    assert not ce.data_verified and not ce.verified
    assert ce.fields["command"] == "linux /evil init=/bin/sh"


def test_replay_mismatch_unverifies_that_pcr_only() -> None:
    events = boot()
    quoted = _quote(events)
    quoted["sha256"][8] = bytes(32)
    state = _state(events, quoted)
    assert state.mismatched == (("sha256", 8),)
    assert not any(ce.verified for ce in state.events if ce.event.pcr == 8)
    assert all(ce.verified for ce in state.events
               if ce.event.pcr == 7 and ce.event.type == t.EV_SEPARATOR)


def test_a_pcr_missing_from_the_quote_is_not_verified() -> None:
    events = boot()
    quoted = _quote(events)
    del quoted["sha1"]
    del quoted["sha256"][7]
    state = _state(events, quoted)
    assert state.consistent and state.checked_banks == ("sha256",)
    assert state.secure_boot is None
    assert not any(c.verified for c in state.components if c.pcr == 7)


def test_quoted_bank_absent_from_log_is_a_mismatch() -> None:
    events = boot()
    state = _state(events, {"sha384": {0: bytes(48)}})
    assert not state.consistent and ("sha384", -1) in state.mismatched
    assert not any(ce.verified for ce in state.events)


def test_relabelled_secure_boot_variable_and_a_forged_one_appended() -> None:
    """The disclosure's attack: retype the real SecureBoot=0 event so a parser skips it, then
    extend PCR 7 with a SecureBoot=1 measurement. The replay matches; we still do not believe
    Secure Boot is on, and the log is flagged."""
    events = boot(secure_boot=False)
    i = next(i for i, e in enumerate(events) if b"S\x00e\x00c\x00u\x00r\x00e" in e.data)
    events = replace_event(events, i, dataclasses.replace(events[i], type=t.EV_UNUSED))
    events.append(measured_event(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG,
                                 variable_data(GLOBAL, "SecureBoot", b"\x01"), BANKS))
    state = _state(events)
    assert state.consistent
    assert state.secure_boot is None
    assert any("unexpected event type in PCR 7" in a for a in state.anomalies)
    assert any("after the separator" in a for a in state.anomalies)


def test_boot_application_relabelled_as_firmware_blob_is_still_a_digest_change() -> None:
    events = boot()
    i = next(i for i, e in enumerate(events) if e.type == t.EV_EFI_BOOT_SERVICES_APPLICATION)
    events = replace_event(events, i, dataclasses.replace(
        events[i], type=t.EV_EFI_PLATFORM_FIRMWARE_BLOB))
    state = _state(events)
    # the blob's data is not covered by its digest: shown as a hint, never verified
    assert not state.events[i].verified
    assert state.components[i].hint


def test_second_separator_and_error_separator_are_anomalies() -> None:
    events = boot()
    events.append(measured_event(4, t.EV_SEPARATOR, b"\xff" * 4, BANKS))
    state = _state(events)
    assert any("second separator" in a for a in state.anomalies)
    assert any("error separator" in a for a in state.anomalies)


def test_variable_whose_data_does_not_match_its_digest_is_an_anomaly() -> None:
    events = boot()
    i = next(i for i, e in enumerate(events) if e.type == t.EV_EFI_VARIABLE_DRIVER_CONFIG)
    events = replace_event(events, i, dataclasses.replace(
        events[i], data=variable_data(GLOBAL, "SecureBoot", b"\x00")))
    state = _state(events)
    assert any("does not match its digest" in a for a in state.anomalies)
    assert state.secure_boot is None


def test_shim_authority_digest_excludes_the_trailing_byte() -> None:
    """shim logs authority events one byte long and digests all but the last byte."""
    data = variable_data(GLOBAL, "Shim", b"\x30\x82" + b"c" * 40) + b"\x00"
    ev = measured_event(7, t.EV_EFI_VARIABLE_AUTHORITY, data, BANKS, measured=data[:-1])
    state = _state([ev])
    assert state.events[0].verified and state.components[0].name == "Shim"
