"""The verified machine state: a log checked against quoted PCR values, as typed components.

:func:`verify` is the one entry point the protocol needs: log bytes and the PCR values a quote
vouches for, per bank, in; a :class:`MachineState` out. Trust follows two rules, both needed:

1. an event's data is authentic only where hashing it (or the part the spec says is
   measured) gives the event's digest in every checked bank (``fields.decode`` names those
   bytes); an image's device path, a firmware blob's address or a grub file path never
   qualifies — they are hints;
2. the event's PCR must replay to the quoted value in every checked bank.

The event *type* is covered by no digest (go-attestation docs/event-log-disclosure.md), so a
verified state also carries ``anomalies``: shapes a real firmware does not produce (a Secure
Boot variable after PCR 7's separator, an unknown type in PCRs 0-9, a second separator, a
datum that does not match a digest that must cover it). Callers should refuse, not ignore them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.eventlog import types as t
from shared.eventlog.fields import decode_parts
from shared.eventlog.parse import Event, EventLog, parse_log
from shared.eventlog.replay import replay

# Types whose digest always covers their data on real firmware: a mismatch is an anomaly.
_MUST_MATCH = frozenset({
    t.EV_SEPARATOR, t.EV_EFI_VARIABLE_DRIVER_CONFIG, t.EV_EFI_VARIABLE_AUTHORITY,
    t.EV_EFI_VARIABLE_BOOT, t.EV_EFI_VARIABLE_BOOT2, t.EV_EFI_ACTION, t.EV_EFI_GPT_EVENT,
})
_PCR7_TYPES = frozenset({
    t.EV_EFI_VARIABLE_DRIVER_CONFIG, t.EV_SEPARATOR, t.EV_EFI_VARIABLE_AUTHORITY,
    t.EV_EFI_ACTION, t.EV_NO_ACTION,
})
_FIRMWARE_TYPES = frozenset({
    t.EV_POST_CODE, t.EV_S_CRTM_CONTENTS, t.EV_CPU_MICROCODE, t.EV_NONHOST_CODE,
    t.EV_NONHOST_CONFIG, t.EV_NONHOST_INFO, t.EV_EFI_PLATFORM_FIRMWARE_BLOB,
    t.EV_EFI_PLATFORM_FIRMWARE_BLOB2, t.EV_EFI_HCRTM_EVENT, t.EV_EFI_SPDM_FIRMWARE_BLOB,
    t.EV_EFI_SPDM_FIRMWARE_CONFIG,
})
_SECUREBOOT_KEYS = frozenset({"PK", "KEK", "db", "dbt", "dbr"})
BOOT_PCRS = range(10)  # PCRs a firmware / boot loader log describes (0-7 firmware, 8-9 grub)


@dataclass(frozen=True, init=False)
class CheckedEvent:
    """An event with its decoded fields and what could be established about it."""

    event: Event
    fields: Mapping[str, Any]
    data_verified: bool  # the data hashes to the event digest in every checked bank
    verified: bool  # data_verified, and the PCR replays to the quote in every checked bank

    def __init__(self, event: Event, fields: Mapping[str, Any], data_verified: bool,
                 verified: bool) -> None:
        # One per event: each field stored once (see Event.__init__).
        d = self.__dict__
        d["event"], d["fields"], d["data_verified"], d["verified"] = (
            event, fields, data_verified, verified)


@dataclass(frozen=True, init=False)
class Component:
    """One measured thing, for people and for diffs.

    ``kind`` is from a closed list (see ``_component``); ``name`` and ``value`` come from the
    event data, which is trustworthy only when ``verified``; ``hint`` marks names that no
    digest covers (file paths of boot applications, grub file paths).
    """

    pcr: int
    kind: str
    name: str
    value: str
    digest: str  # hex, in the state's primary bank
    verified: bool
    hint: bool
    event_index: int

    def __init__(self, pcr: int, kind: str, name: str, value: str, digest: str,
                 verified: bool, hint: bool, event_index: int) -> None:
        # One per event: each field stored once (see Event.__init__).
        d = self.__dict__
        d["pcr"], d["kind"], d["name"], d["value"] = pcr, kind, name, value
        d["digest"], d["verified"], d["hint"], d["event_index"] = (
            digest, verified, hint, event_index)


@dataclass(frozen=True)
class MachineState:
    banks: tuple[str, ...]  # banks the log holds
    checked_banks: tuple[str, ...]  # banks whose data digests (and quoted PCRs) were checked
    primary_bank: str  # the bank component digests are shown in
    pcrs_compared: bool  # False when no quoted values were given (data checks only)
    replayed: Mapping[str, Mapping[int, bytes]]
    mismatched: tuple[tuple[str, int], ...]  # (bank, PCR) whose replay differs from the quote
    events: tuple[CheckedEvent, ...]
    components: tuple[Component, ...]
    secure_boot: bool | None  # from a verified SecureBoot variable; None if not established
    anomalies: tuple[str, ...]

    @property
    def consistent(self) -> bool:
        """The log replays to every quoted PCR it describes, in every checked bank."""
        return not self.mismatched

    def pcr_components(self, pcr: int) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.pcr == pcr)


def verify(log: bytes | EventLog,
           quoted: Mapping[str, Mapping[int, bytes]] | None = None) -> MachineState:
    """Check a log (bytes, or already parsed) against quoted PCR values ``{bank: {pcr: value}}``.

    With ``quoted=None`` nothing is compared: ``verified`` then only means the data matches
    its digest (for display; never for a decision). Raises BAD_REQUEST/TOO_LARGE for a
    malformed log; a log that does not replay is returned with ``mismatched`` set.
    """
    parsed = log if isinstance(log, EventLog) else parse_log(log)
    replayed = replay(parsed, None if quoted is None else quoted.keys())
    if quoted is None:
        checked = tuple(replayed)
        pcr_ok = {ev.pcr: True for ev in parsed.events}
        mismatched: list[tuple[str, int]] = []
    else:
        checked = tuple(b for b in quoted if b in replayed)
        mismatched = [(b, -1) for b in quoted if b not in replayed]
        described = {ev.pcr for ev in parsed.events if ev.type != t.EV_NO_ACTION}
        pcr_ok = {}
        for pcr in described:
            ok = bool(checked)
            for bank in checked:
                want = quoted[bank].get(pcr)
                if want is None:
                    ok = False
                elif want != replayed[bank][pcr]:
                    ok = False
                    mismatched.append((bank, pcr))
            pcr_ok[pcr] = ok
    primary = "sha256" if "sha256" in parsed.banks else (checked or parsed.banks)[0]
    events, components = _check_events(
        parsed.events, tuple((b, t.NEW_HASH[b]) for b in checked), pcr_ok,
        pcr_ok.get(0, False) and quoted is not None, primary)
    return MachineState(
        banks=parsed.banks, checked_banks=checked, primary_bank=primary,
        pcrs_compared=quoted is not None, replayed=replayed,
        mismatched=tuple(sorted(mismatched)), events=tuple(events),
        components=tuple(components),
        secure_boot=_secure_boot(events), anomalies=tuple(_anomalies(events)),
    )


Hashers = tuple[tuple[str, Callable[[bytes], Any]], ...]  # (bank, hashlib constructor)


def _check_events(parsed: tuple[Event, ...], hashers: Hashers, pcr_ok: Mapping[int, bool],
                  locality_ok: bool, primary: str,
                  ) -> tuple[list[CheckedEvent], list[Component]]:
    """Each event decoded, its data checked against its digests, and described. This loop
    runs once per event of every log the server checks: one pass, locals only."""
    no_action, describe = t.EV_NO_ACTION, _DESCRIBE.get
    events: list[CheckedEvent] = []
    components: list[Component] = []
    for ev in parsed:
        et, digests = ev.type, ev.digests
        fields, measured = decode_parts(et, ev.pcr, ev.data)
        data_ok = bool(measured and hashers) and _data_matches(measured, digests, hashers)
        if et != no_action:
            ok = data_ok and pcr_ok.get(ev.pcr, False)
            kind, name, value, hint = describe(et, _describe_other)(ev, fields)
        elif "locality" in fields:
            ok = locality_ok
            kind, name, value, hint = ("startup_locality", "StartupLocality",
                                       str(fields["locality"]), False)
        else:
            events.append(CheckedEvent(ev, fields, data_ok, False))
            continue
        events.append(CheckedEvent(ev, fields, data_ok, ok))
        components.append(Component(ev.pcr, kind, name, value, digests.get(primary, b"").hex(),
                                    ok, hint and not ok, ev.index))
    return events, components


def _data_matches(measured: tuple[bytes, ...], digests: Mapping[str, bytes],
                  hashers: Hashers) -> bool:
    """Some measured form hashes to the event's digest, in every checked bank. Each form is
    hashed at most once per bank, and only until one matches."""
    for bank, new_hash in hashers:
        want = digests[bank]
        for form in measured:
            if new_hash(form).digest() == want:
                break
        else:
            return False
    return True


def _secure_boot(events: list[CheckedEvent]) -> bool | None:
    """The verified SecureBoot variable measured before PCR 7's separator; None unless exactly
    one (a value extended after the separator is the OS's, not the firmware's)."""
    values: list[bool] = []
    for ce in events:
        if ce.event.pcr != 7:
            continue
        if ce.event.type == t.EV_SEPARATOR:
            break
        if ce.verified and "enabled" in ce.fields:
            values.append(bool(ce.fields["enabled"]))
    return values[0] if len(values) == 1 else None


def _anomalies(events: list[CheckedEvent]) -> list[str]:
    out: list[str] = []
    separated: set[int] = set()
    seen_vars: set[str] = set()
    known, must_match, pcr7_types = t.EVENT_NAMES, _MUST_MATCH, _PCR7_TYPES
    for ce in events:
        ev, f = ce.event, ce.fields
        pcr, et = ev.pcr, ev.type
        found: list[str] = []
        if pcr in BOOT_PCRS and (et not in known or et == t.EV_UNUSED):
            found.append("unknown event type in a boot PCR")
        if pcr == 7 and et not in pcr7_types:
            found.append("unexpected event type in PCR 7")
        if et in must_match:
            if f.get("undecodable"):
                found.append("data does not decode")
            elif not ce.data_verified:
                found.append("data does not match its digest")
        if et == t.EV_SEPARATOR and pcr <= 7:
            if pcr in separated:
                found.append("a second separator")
            if f.get("error"):
                found.append("firmware error separator")
            separated.add(pcr)
        if pcr == 7 and et == t.EV_EFI_VARIABLE_DRIVER_CONFIG:
            name = str(f.get("variable", ""))
            if 7 in separated:
                found.append(f"Secure Boot variable {name!r} after the separator")
            if name in seen_vars:
                found.append(f"Secure Boot variable {name!r} measured twice")
            seen_vars.add(name)
        if found:  # the event's label is built only for the (rare) event that needs one
            where = f"event {ev.index} (PCR {pcr}, {ev.type_name})"
            out += [f"{where}: {what}" for what in found]
    return out


Description = tuple[str, str, str, bool]  # (kind, name, value, hint)


def _describe(ev: Event, f: Mapping[str, Any]) -> Description:
    """(kind, name, value, hint) of a measured event."""
    return _DESCRIBE.get(ev.type, _describe_other)(ev, f)


def _describe_other(ev: Event, f: Mapping[str, Any]) -> Description:
    if ev.type in _FIRMWARE_TYPES:
        return "firmware_blob", ev.type_name, str(f.get("description", f.get("text", ""))), True
    return "other", ev.type_name, str(f.get("text", "")), True


def _variable_kind(ev: Event, f: Mapping[str, Any]) -> Description:
    pcr, var = ev.pcr, str(f.get("variable", ""))
    if pcr == 7 and var == "SecureBoot":
        return "secureboot_state", var, "enabled" if f.get("enabled") else "disabled", False
    if pcr == 7 and var in _SECUREBOOT_KEYS:
        return "secureboot_keys", var, f"{f.get('signatures', 0)} entries", False
    if pcr == 7 and var == "dbx":
        return "secureboot_dbx", var, f"{f.get('signatures', 0)} entries", False
    if pcr == 7:
        return "secureboot_config", var, str(f.get("data_sha256", ""))[:16], False
    if var == "BootOrder":
        return "boot_variable", var, " ".join(f.get("order", [])), False
    if "description" in f:
        return "boot_variable", var, f"{f['description']} {f.get('path_hint', '')}".strip(), False
    return "firmware_config" if pcr <= 3 else "boot_variable", var, "", False


def _ipl_kind(ev: Event, f: Mapping[str, Any]) -> Description:
    ipl = f.get("ipl")
    if ipl == "kernel_cmdline":
        return "kernel_cmdline", "kernel command line", str(f.get("command", "")), False
    if ipl in ("grub_cmd", "module_cmdline"):
        return "boot_command", str(ipl), str(f.get("command", "")), False
    if ipl == "file":
        return "boot_file", str(f.get("path_hint", "")), "", True
    if ev.pcr == 14:
        return "shim_mok", str(f.get("text", "")), "", True
    return "boot_command", "ipl", str(f.get("text", "")), False


def _text(f: Mapping[str, Any], key: str) -> str:
    return str(f.get(key, ""))


# One row per event type (the type sets above are disjoint from these keys).
_DESCRIBE: dict[int, Callable[[Event, Mapping[str, Any]], Description]] = {
    t.EV_SEPARATOR: lambda ev, f: ("separator", "separator", _text(f, "value"), False),
    t.EV_S_CRTM_VERSION: lambda ev, f: ("firmware_version", "S-CRTM version", _text(f, "text"),
                                        False),
    t.EV_EFI_BOOT_SERVICES_DRIVER: lambda ev, f: ("firmware_driver", _text(f, "path_hint"), "",
                                                  True),
    t.EV_EFI_RUNTIME_SERVICES_DRIVER: lambda ev, f: ("firmware_driver", _text(f, "path_hint"),
                                                     "", True),
    t.EV_EFI_BOOT_SERVICES_APPLICATION: lambda ev, f: ("boot_application",
                                                       _text(f, "path_hint"), "", True),
    t.EV_EFI_VARIABLE_DRIVER_CONFIG: _variable_kind,
    t.EV_EFI_VARIABLE_BOOT: _variable_kind,
    t.EV_EFI_VARIABLE_BOOT2: _variable_kind,
    t.EV_EFI_VARIABLE_AUTHORITY: lambda ev, f: ("secureboot_authority", _text(f, "variable"),
                                                _text(f, "data_sha256")[:16], False),
    t.EV_EFI_ACTION: lambda ev, f: ("boot_action", _text(f, "text"), "", False),
    t.EV_ACTION: lambda ev, f: ("boot_action", _text(f, "text"), "", False),
    t.EV_EFI_GPT_EVENT: lambda ev, f: ("partition_table", _text(f, "disk_guid"), "", False),
    t.EV_EFI_GPT_EVENT2: lambda ev, f: ("partition_table", _text(f, "disk_guid"), "", False),
    t.EV_IPL: _ipl_kind,
    **dict.fromkeys((t.EV_EFI_HANDOFF_TABLES, t.EV_EFI_HANDOFF_TABLES2,
                     t.EV_PLATFORM_CONFIG_FLAGS, t.EV_TABLE_OF_DEVICES),
                    lambda ev, f: ("firmware_config", ev.type_name, "", True)),
}
