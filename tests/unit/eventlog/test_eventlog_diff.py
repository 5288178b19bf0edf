"""Machine-state diffs: which component changed, one verdict, one plain sentence."""

from __future__ import annotations

import dataclasses
import json

import pytest
from eventlog_helpers import BANKS, boot, published_pcrs, real_log

from shared.eventlog import MachineState, Verdict, diff_states, parse_log, replay, verify
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event, replace_event
from shared.eventlog.parse import Event


def _state(events: list[Event]) -> MachineState:
    log = encode_log(events, BANKS)
    return verify(log, replay(parse_log(log)))


def _diff(**changes: object) -> tuple[Verdict, str, tuple[Verdict, ...]]:
    d = diff_states(_state(boot()), _state(boot(**changes)))  # type: ignore[arg-type]
    return d.verdict, d.summary, d.verdicts


def test_identical_states_are_unchanged() -> None:
    d = diff_states(_state(boot()), _state(boot()))
    assert d.verdict is Verdict.UNCHANGED and not d.changes and not d.changed_pcrs


def test_kernel_update_names_the_kernel_and_what_did_not_change() -> None:
    base, new = _state(boot()), _state(boot(kernel="6.1.0-31"))
    d = diff_states(base, new)
    assert d.verdict is Verdict.KERNEL_UPDATE and d.verdicts == (Verdict.KERNEL_UPDATE,)
    assert set(d.changed_pcrs) == {4, 8, 9}
    assert d.summary.startswith("the Linux kernel changed (vmlinuz-6.1.0-28 → vmlinuz-6.1.0-31)")
    assert "firmware, Secure Boot and the boot loader are unchanged" in d.summary
    assert "system update" in d.summary
    cmdline = next(c for c in d.changes if c.kind == "kernel_cmdline")
    assert cmdline.verified and cmdline.old and cmdline.new
    assert cmdline.new.value == "/boot/vmlinuz-6.1.0-31 root=/dev/sda1 ro quiet"
    app = next(c for c in d.changes if c.kind == "boot_application")
    assert app.old and app.new and app.new.hint and not app.verified
    assert app.old.digest != app.new.digest


def test_diff_as_plain_values() -> None:
    d = diff_states(_state(boot()), _state(boot(kernel="6.1.0-31"))).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["verdict"] == "kernel_update" and d["changed_pcrs"] == [4, 8, 9]
    cmdline = next(c for c in d["changes"] if c["kind"] == "kernel_cmdline")
    assert cmdline["verified"] and cmdline["old"]["value"].startswith("/boot/vmlinuz-6.1.0-28")
    app = next(c for c in d["changes"] if c["kind"] == "boot_application")
    assert app["new"]["hint"] is True and app["verified"] is False


def test_kernel_update_with_a_new_command_line_reports_both() -> None:
    _, summary, verdicts = _diff(kernel="6.1.0-31", cmdline="root=/dev/sda1 ro init=/bin/sh")
    assert verdicts == (Verdict.KERNEL_UPDATE, Verdict.BOOT_CONFIG_CHANGED)
    assert "the boot configuration changed" in summary


def test_bootloader_update() -> None:
    verdict, summary, _ = _diff(grub=b"grub-2.12")
    assert verdict is Verdict.BOOTLOADER_UPDATE
    assert "\\EFI\\debian\\grubx64.efi, path hint" in summary
    assert "firmware, Secure Boot and the kernel are unchanged" in summary


def test_secure_boot_disabled() -> None:
    verdict, summary, _ = _diff(secure_boot=False)
    assert verdict is Verdict.SECUREBOOT_DISABLED
    assert summary.startswith("Secure Boot was turned off") and "attention" in summary


def test_secure_boot_keys_changed() -> None:
    verdict, summary, _ = _diff(db=b"\x31" * 40)
    assert verdict is Verdict.SECUREBOOT_KEYS_CHANGED and "(db)" in summary


def test_dbx_update() -> None:
    verdict, summary, verdicts = _diff(dbx=5)
    assert verdict is Verdict.DBX_UPDATE and verdicts == (Verdict.DBX_UPDATE,)
    assert "(3 entries → 5 entries)" in summary


def test_firmware_update() -> None:
    verdict, summary, _ = _diff(firmware="FW 1.1")
    assert verdict is Verdict.FIRMWARE_UPDATE
    assert "version 'FW 1.0' → 'FW 1.1'" in summary and "firmware update" in summary


def test_boot_config_changed() -> None:
    verdict, summary, _ = _diff(cmdline="root=/dev/sda1 ro quiet init=/bin/sh")
    assert verdict is Verdict.BOOT_CONFIG_CHANGED
    assert summary.startswith("the boot configuration changed")


def test_kernel_and_firmware_together_lists_both_most_serious_first() -> None:
    _, summary, verdicts = _diff(firmware="FW 2", kernel="6.1.0-31")
    assert verdicts == (Verdict.FIRMWARE_UPDATE, Verdict.KERNEL_UPDATE)
    assert summary.index("firmware changed") < summary.index("kernel changed")


def test_forged_data_is_an_unknown_change() -> None:
    """A grub command whose text was edited but whose digest is the new real one is still a
    verified change; one whose text does not match its digest cannot be explained."""
    events = boot(cmdline="ro quiet")
    i = next(i for i, e in enumerate(events) if e.type == t.EV_IPL and e.pcr == 8)
    lie = dataclasses.replace(events[i], data=events[i].data.replace(b"quiet", b"QUIET"))
    lie = dataclasses.replace(lie, digests=measured_event(8, t.EV_IPL, b"x", BANKS).digests)
    d = diff_states(_state(boot(cmdline="ro quiet")), _state(replace_event(events, i, lie)))
    assert d.verdict is Verdict.UNKNOWN_CHANGE
    assert "does not explain" in d.summary and "attention" in d.summary


def test_anomalous_current_log_is_an_unknown_change() -> None:
    events = boot()
    events.append(measured_event(7, 0x77, b"odd", BANKS))
    d = diff_states(_state(boot()), _state(events))
    assert d.verdict is Verdict.UNKNOWN_CHANGE and d.problems


def test_inconsistent_log_is_an_unknown_change() -> None:
    events = boot()
    log = encode_log(events, BANKS)
    quoted = replay(parse_log(log))
    quoted["sha256"][4] = bytes(32)
    d = diff_states(_state(events), verify(log, quoted))
    assert d.verdict is Verdict.UNKNOWN_CHANGE
    assert "does not replay" in d.problems[0]


def test_real_log_with_its_kernel_replaced() -> None:
    """A real RHEL 8 boot, then the same boot with grub loading another kernel."""
    name = "go-tpm-tools/rhel8-uefi.bin"
    published = published_pcrs(name)
    assert published
    old = verify(real_log(name), published)
    log = parse_log(real_log(name))
    new_events = []
    for e in log.events:
        new = e
        if e.pcr == 8 and b"4.18.0-240.22.1" in e.data:
            data = e.data.replace(b"4.18.0-240.22.1", b"4.18.0-305.3.1")
            prefix = b"grub_cmd " if data.startswith(b"grub_cmd ") else b"grub_kernel_cmdline "
            new = measured_event(8, t.EV_IPL, data, log.banks, measured=data[len(prefix):])
        elif e.pcr == 9 and b"Kernel" in e.data:
            new = measured_event(9, t.EV_IPL, e.data, log.banks, measured=b"new kernel image")
        new_events.append(new)
    new_log = encode_log(new_events, log.banks)
    d = diff_states(old, verify(new_log, replay(parse_log(new_log))))
    assert d.verdict is Verdict.KERNEL_UPDATE, d
    assert set(d.changed_pcrs) == {8, 9}
    assert "firmware, Secure Boot and the boot loader are unchanged" in d.summary


@pytest.mark.parametrize(("a", "b"), [
    ("go-tpm-tools/ubuntu-2104-no-secure-boot.bin", "go-tpm-tools/ubuntu-2404-amd-sevsnp.bin"),
])
def test_two_different_real_machines(a: str, b: str) -> None:
    pa, pb = published_pcrs(a), published_pcrs(b)
    assert pa and pb
    d = diff_states(verify(real_log(a), pa), verify(real_log(b), pb))
    assert Verdict.FIRMWARE_UPDATE in d.verdicts  # GCE Virtual Firmware v1 -> v2
    assert "'GCE Virtual Firmware v1' → 'GCE Virtual Firmware v2'" in d.summary
    assert Verdict.KERNEL_UPDATE in d.verdicts
    # the newer log has an EV_EVENT_TAG in PCR 9 that nothing verifies: not explained
    assert d.verdict is Verdict.UNKNOWN_CHANGE
