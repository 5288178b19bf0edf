"""What changed between two machine states, per component, with one verdict from a closed list.

:func:`diff_states` is pure: two :class:`MachineState` values in (an enrolled baseline and the
current boot, each already checked against its own quote), a :class:`StateDiff` out. A change
the log cannot explain — an unverified datum where the spec promises one, an anomaly, a PCR
that moved without a component to show for it — is ``unknown_change``: never a guess.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.eventlog.state import Component, MachineState


class Verdict(StrEnum):
    """The one-word reason a state differs, most serious first (the order decides ties)."""

    SECUREBOOT_DISABLED = "secureboot_disabled"
    UNKNOWN_CHANGE = "unknown_change"
    SECUREBOOT_KEYS_CHANGED = "secureboot_keys_changed"
    FIRMWARE_UPDATE = "firmware_update"
    BOOTLOADER_UPDATE = "bootloader_update"
    DBX_UPDATE = "dbx_update"
    KERNEL_UPDATE = "kernel_update"
    BOOT_CONFIG_CHANGED = "boot_config_changed"
    UNCHANGED = "unchanged"


_SEVERITY = {v: i for i, v in enumerate(Verdict)}


@dataclass(frozen=True)
class Change:
    """One component that differs. ``old``/``new`` is None when it was added/removed."""

    pcr: int
    kind: str
    verdict: Verdict
    old: Component | None
    new: Component | None

    @property
    def verified(self) -> bool:
        """Both sides' data is authenticated (a removed/added side counts as its own)."""
        return all(c.verified for c in (self.old, self.new) if c is not None)

    @property
    def name(self) -> str:
        side = self.new or self.old
        return side.name if side else ""

    def as_dict(self) -> dict[str, Any]:
        """Plain values for a refusal body, an audit entry or ``--json``."""
        def side(c: Component | None) -> dict[str, Any] | None:
            return None if c is None else {"name": c.name, "value": c.value, "digest": c.digest,
                                           "verified": c.verified, "hint": c.hint}

        return {"pcr": self.pcr, "kind": self.kind, "verdict": self.verdict.value,
                "verified": self.verified, "old": side(self.old), "new": side(self.new)}


@dataclass(frozen=True)
class StateDiff:
    verdict: Verdict
    verdicts: tuple[Verdict, ...]  # every category present, most serious first
    changed_pcrs: tuple[int, ...]
    changes: tuple[Change, ...]
    problems: tuple[str, ...]  # why something is unknown_change (anomalies, inconsistency)
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "verdicts": [v.value for v in self.verdicts],
                "changed_pcrs": list(self.changed_pcrs), "summary": self.summary,
                "problems": list(self.problems), "changes": [c.as_dict() for c in self.changes]}


_KERNEL_PATH = re.compile(r"(vmlinu[xz]|bzimage|kernel|linux|\.uki|initr)", re.IGNORECASE)
_KERNEL_NAME = re.compile(r"(vmlinu[xz][^\s/\\]*|kernel-[^\s/\\]+)", re.IGNORECASE)
_VERSIONISH = re.compile(
    r"(vmlinu[xz]|initrd\.img|initramfs|kernel)[^\s/\\]*|\d+\.\d+[\w.+~-]*", re.IGNORECASE)
_CONFIG_FILES = re.compile(r"(grub\.cfg|grubenv|\.lst|\.mod|\.conf|loader/entries)", re.IGNORECASE)
_FIRMWARE_KINDS = frozenset({"firmware_version", "firmware_blob", "firmware_driver",
                             "firmware_config", "startup_locality"})


def diff_states(old: MachineState, new: MachineState) -> StateDiff:
    """Compare a baseline state with a current one (both from :func:`state.verify`)."""
    bank = _common_bank(old, new)
    problems = [f"current log: {a}" for a in new.anomalies]
    if not new.consistent:
        problems.append("current log does not replay to its quoted PCRs")
    if not old.consistent:
        problems.append("baseline log does not replay to its quoted PCRs")
    if bank is None:
        problems.append("the two logs share no hash bank")
        return _result([], [], problems)
    pcrs = sorted(set(old.replayed[bank]) | set(new.replayed[bank]))
    changed = [p for p in pcrs if old.replayed[bank].get(p) != new.replayed[bank].get(p)]
    changes: list[Change] = []
    for pcr in changed:
        found = _pcr_changes(pcr, old.pcr_components(pcr), new.pcr_components(pcr),
                             old.primary_bank == new.primary_bank)
        if not found:
            problems.append(f"PCR {pcr} changed but no component did")
        changes += found
    boot_apps_kernel = _kernel_apps(new)
    changes = [_classify(c, boot_apps_kernel) for c in changes]
    return _result(changed, changes, problems)


def _common_bank(old: MachineState, new: MachineState) -> str | None:
    for bank in ("sha256", "sha384", "sha512", "sha1"):
        if bank in old.replayed and bank in new.replayed:
            return bank
    return None


def _pcr_changes(pcr: int, old: Sequence[Component], new: Sequence[Component],
                 same_bank: bool) -> list[Change]:
    def key(c: Component) -> tuple[str, str]:
        return (c.kind, c.digest if same_bank else f"{c.name}\0{c.value}")

    out: list[Change] = []
    matcher = difflib.SequenceMatcher(None, [key(c) for c in old], [key(c) for c in new],
                                      autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        removed, added = list(old[i1:i2]), list(new[j1:j2])
        for a in list(removed):  # pair a removed with an added component of the same kind
            match = next((b for b in added if b.kind == a.kind and b.name == a.name), None)
            match = match or next((b for b in added if b.kind == a.kind), None)
            if match is not None:
                removed.remove(a)
                added.remove(match)
                out.append(Change(pcr, a.kind, Verdict.UNKNOWN_CHANGE, a, match))
        out += [Change(pcr, a.kind, Verdict.UNKNOWN_CHANGE, a, None) for a in removed]
        out += [Change(pcr, b.kind, Verdict.UNKNOWN_CHANGE, None, b) for b in added]
    return out


def _kernel_apps(state: MachineState) -> frozenset[int]:
    """Event indices of PCR 4 boot applications that are kernels: a kernel-like path hint, or
    (without one) the third application or later (firmware → shim → boot loader → kernel)."""
    apps = [c for c in state.pcr_components(4) if c.kind == "boot_application"]
    return frozenset(c.event_index for i, c in enumerate(apps)
                     if _KERNEL_PATH.search(c.name) or (not c.name and i >= 2))


def _classify(change: Change, kernel_apps: frozenset[int]) -> Change:
    kind, side = change.kind, change.new or change.old
    assert side is not None
    verdict = Verdict.UNKNOWN_CHANGE
    if kind == "secureboot_state":
        was = change.old is not None and change.old.value == "enabled"
        now = change.new is not None and change.new.value == "enabled"
        verdict = Verdict.SECUREBOOT_DISABLED if was and not now else Verdict.BOOT_CONFIG_CHANGED
    elif kind in ("secureboot_keys", "secureboot_authority", "shim_mok", "secureboot_config"):
        verdict = Verdict.SECUREBOOT_KEYS_CHANGED
    elif kind == "secureboot_dbx":
        verdict = Verdict.DBX_UPDATE
    elif kind in _FIRMWARE_KINDS:
        verdict = Verdict.FIRMWARE_UPDATE
    elif kind == "boot_application":
        is_kernel = (change.new is not None and change.new.event_index in kernel_apps) or (
            _KERNEL_PATH.search(side.name) is not None)
        verdict = Verdict.KERNEL_UPDATE if is_kernel else Verdict.BOOTLOADER_UPDATE
    elif kind == "boot_file":
        if _KERNEL_PATH.search(side.name) and not _CONFIG_FILES.search(side.name):
            verdict = Verdict.KERNEL_UPDATE
        else:
            verdict = Verdict.BOOT_CONFIG_CHANGED
    elif kind in ("kernel_cmdline", "boot_command"):
        verdict = (Verdict.KERNEL_UPDATE if _only_versions_differ(change)
                   else Verdict.BOOT_CONFIG_CHANGED)
    elif kind in ("boot_variable", "partition_table", "boot_action"):
        verdict = Verdict.BOOT_CONFIG_CHANGED
    if not change.verified and not side.hint and kind not in ("boot_application",):
        # A datum that should be authenticated and is not: nothing can be concluded from it.
        verdict = Verdict.UNKNOWN_CHANGE
    return Change(change.pcr, kind, verdict, change.old, change.new)


def _only_versions_differ(change: Change) -> bool:
    if change.old is None or change.new is None:
        return False
    a, b = change.old.value, change.new.value
    return a != b and _VERSIONISH.sub("#", a) == _VERSIONISH.sub("#", b)


def _result(changed: Sequence[int], changes: Sequence[Change],
            problems: Sequence[str]) -> StateDiff:
    found = {c.verdict for c in changes}
    if problems:
        found.add(Verdict.UNKNOWN_CHANGE)
    # Files a kernel update rewrites (grub.cfg, grubenv, loader entries) are part of that
    # update. A command or command line that changed beyond its version numbers is not.
    if Verdict.KERNEL_UPDATE in found and all(
            c.kind == "boot_file" and _CONFIG_FILES.search(c.name)
            for c in changes if c.verdict is Verdict.BOOT_CONFIG_CHANGED):
        found.discard(Verdict.BOOT_CONFIG_CHANGED)
    verdicts = tuple(sorted(found, key=_SEVERITY.__getitem__)) or (Verdict.UNCHANGED,)
    return StateDiff(verdicts[0], verdicts, tuple(changed), tuple(changes), tuple(problems),
                     summarize(verdicts, changes, problems))


# -- the sentence --------------------------------------------------------------------------
_AREAS = (
    ("firmware", {Verdict.FIRMWARE_UPDATE}),
    ("Secure Boot", {Verdict.SECUREBOOT_DISABLED, Verdict.SECUREBOOT_KEYS_CHANGED,
                     Verdict.DBX_UPDATE}),
    ("the boot loader", {Verdict.BOOTLOADER_UPDATE}),
    ("the kernel", {Verdict.KERNEL_UPDATE}),
)


def summarize(verdicts: Sequence[Verdict], changes: Sequence[Change],
              problems: Sequence[str]) -> str:
    """One plain sentence: what changed, what did not, and what that usually means."""
    if verdicts == (Verdict.UNCHANGED,):
        return "nothing measured at boot changed"
    said = [_phrase(v, [c for c in changes if c.verdict is v], problems) for v in verdicts]
    unchanged = [name for name, group in _AREAS if not group & set(verdicts)]
    if unchanged and Verdict.UNKNOWN_CHANGE not in verdicts:
        said.append(_join(unchanged) + (" is" if len(unchanged) == 1 else " are") + " unchanged")
    said.append(_advice(verdicts))
    return "; ".join(said)


def _phrase(v: Verdict, changes: Sequence[Change], problems: Sequence[str]) -> str:
    if v is Verdict.KERNEL_UPDATE:
        pair = _kernel_names(changes)
        return "the Linux kernel changed" + (f" ({pair[0]} → {pair[1]})" if pair else "")
    if v is Verdict.BOOTLOADER_UPDATE:
        paths = sorted({c.name for c in changes if c.name})
        return "the boot loader changed" + (f" ({', '.join(paths)}, path hint)" if paths else "")
    if v is Verdict.FIRMWARE_UPDATE:
        ver = [c for c in changes if c.kind == "firmware_version" and c.old and c.new]
        if ver and ver[0].old and ver[0].new:
            return f"the firmware changed (version {ver[0].old.value!r} → {ver[0].new.value!r})"
        return "the firmware changed"
    if v is Verdict.SECUREBOOT_DISABLED:
        return "Secure Boot was turned off"
    if v is Verdict.SECUREBOOT_KEYS_CHANGED:
        keys = sorted({c.name for c in changes if c.name})
        return "the Secure Boot keys changed" + (f" ({', '.join(keys)})" if keys else "")
    if v is Verdict.DBX_UPDATE:
        c = changes[0] if changes else None
        if c and c.old and c.new:
            return f"the Secure Boot revocation list (dbx) changed ({c.old.value} → {c.new.value})"
        return "the Secure Boot revocation list (dbx) changed"
    if v is Verdict.BOOT_CONFIG_CHANGED:
        kinds = sorted({c.kind.replace("_", " ") for c in changes})
        return "the boot configuration changed" + (f" ({', '.join(kinds)})" if kinds else "")
    where = sorted({c.pcr for c in changes})
    return ("measurements changed in a way the event log does not explain"
            + (f" (PCR {', '.join(map(str, where))})" if where else "")
            + (f": {problems[0]}" if problems else ""))


def _kernel_names(changes: Sequence[Change]) -> tuple[str, str] | None:
    for c in changes:
        if c.old and c.new:
            a = _KERNEL_NAME.search(f"{c.old.name} {c.old.value}")
            b = _KERNEL_NAME.search(f"{c.new.name} {c.new.value}")
            if a and b and a.group(0) != b.group(0):
                return a.group(0), b.group(0)
    return None


def _advice(verdicts: Sequence[Verdict]) -> str:
    if Verdict.SECUREBOOT_DISABLED in verdicts or Verdict.UNKNOWN_CHANGE in verdicts:
        return "this needs an operator's attention"
    if Verdict.FIRMWARE_UPDATE in verdicts:
        return "this usually follows a firmware update"
    if Verdict.SECUREBOOT_KEYS_CHANGED in verdicts:
        return "this follows a change of the Secure Boot keys"
    return "this usually follows a system update"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
