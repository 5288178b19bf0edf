"""Rule policies: accept a routine update by rules over the verified event log.

An exact baseline accepts only the PCR values it holds, so every kernel update needs an
operator. A rule policy lets routine updates through: every change between a reference
state (a live baseline with its stored log) and the current state — both logs replayed to
their quotes (``state.verify``) and compared (``diff.diff_states``) — must be accepted by a
rule; a change no rule covers needs an approval. The rules (closed list, :class:`Rule`):

* ``boot_authorities`` — a changed boot application (the boot loader, the kernel: PCR 4)
  or Secure Boot authority event (PCR 7) is accepted when Secure Boot is on and every
  authority the firmware and shim measured into PCR 7 (``EV_EFI_VARIABLE_AUTHORITY``, each
  named by the SHA-256 of its data, as ``attestgate eventlog --json`` shows it) is in the
  policy's list: with Secure Boot on, whatever was loaded was verified by one of them;
* ``dbx`` (``"grow"``) — the revocation list may gain entries, never lose one;
* ``kernel_cmdline`` — a regular expression every changed kernel command line (grub's
  ``kernel_cmdline`` events and its ``linux`` commands) must match in full;
* ``boot_config`` (``"accept"``) — other changes to grub's commands and measured files
  (PCRs 8-9: grub.cfg, initrd) are accepted;
* fixed, and not relaxable: ``firmware`` changes (PCRs 0-3 code and version) need an
  approval, ``unknown_events`` (an event type the spec does not define in PCRs 0-9, or any
  anomaly or change the log cannot explain) are refused, and everything else
  (Secure Boot state and keys, boot variables, the partition table) needs ``approval``.

Fail closed: a policy that does not parse is rejected when set and refuses when read; a rule
that cannot be evaluated (its PCR is not quoted, its datum is not verified, Secure Boot's
state is unknown) refuses. Only changes in quoted PCRs count: the quote vouches for nothing
else, exactly as an exact baseline ignores PCRs outside the selection. Pure functions.

A ``kernel_cmdline`` pattern is the operator's (trusted); what it is matched against is the
device's, capped at ``MAX_CMDLINE`` characters before matching.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import types as t
from shared.eventlog.diff import Change, StateDiff
from shared.eventlog.state import CheckedEvent, MachineState

POLICY_VERSION: Final = 1
MAX_POLICY_BYTES: Final = 16 * 1024
MAX_AUTHORITIES: Final = 64
MAX_PATTERN: Final = 1024
MAX_CMDLINE: Final = 4096
MAX_REASONS: Final = 8  # reasons one decision carries (all refusals are counted)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KERNEL_COMMANDS = ("linux ", "linuxefi ", "linux16 ")
_FIRMWARE_KINDS = frozenset({"firmware_version", "firmware_blob", "firmware_driver",
                             "firmware_config", "startup_locality"})
_BOOT_CONFIG_KINDS = frozenset({"boot_command", "boot_file"})
_BOOT_CONFIG_PCRS = frozenset({8, 9})


class Rule(StrEnum):
    """What accepted or refused a change (audit entries and refusals carry these)."""

    BOOT_AUTHORITIES = "boot_authorities"
    DBX = "dbx"
    KERNEL_CMDLINE = "kernel_cmdline"
    BOOT_CONFIG = "boot_config"
    FIRMWARE = "firmware"
    UNKNOWN_EVENTS = "unknown_events"
    APPROVAL = "approval"


# Keys a policy document may hold, with the values the fixed rules allow.
_FIXED = {"firmware": "approval", "unknown_events": "refuse"}
_KEYS = frozenset({"version", "boot_authorities", "dbx", "kernel_cmdline", "boot_config",
                   "comment", *_FIXED})


@dataclass(frozen=True)
class RulePolicy:
    boot_authorities: frozenset[str] = frozenset()  # SHA-256 hex of authority event data
    dbx: str = "approval"  # "grow" | "approval"
    kernel_cmdline: str = ""  # "" : a changed command line needs approval
    boot_config: str = "approval"  # "accept" | "approval"
    comment: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The canonical document (what is stored, shown and audited)."""
        doc: dict[str, Any] = {"version": POLICY_VERSION,
                               "boot_authorities": sorted(self.boot_authorities),
                               "dbx": self.dbx, "boot_config": self.boot_config, **_FIXED}
        if self.kernel_cmdline:
            doc["kernel_cmdline"] = self.kernel_cmdline
        if self.comment:
            doc["comment"] = self.comment
        return doc

    def to_bytes(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


def parse_policy(raw: bytes | Mapping[str, Any]) -> RulePolicy:
    """A policy from its JSON document; raises BAD_REQUEST naming the first problem."""
    if isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_POLICY_BYTES:
            raise _bad(f"the policy is larger than {MAX_POLICY_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"the policy is not JSON: {exc}") from None
    else:
        doc = raw
    if not isinstance(doc, Mapping):
        raise _bad("the policy must be a JSON object")
    unknown = sorted(str(k) for k in doc if k not in _KEYS)
    if unknown:
        raise _bad(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    if doc.get("version", POLICY_VERSION) != POLICY_VERSION:
        raise _bad(f"policy version {doc.get('version')!r}: this server reads version "
                   f"{POLICY_VERSION}")
    for key, only in _FIXED.items():
        if doc.get(key, only) != only:
            raise _bad(f"{key!r} can only be {only!r}: this rule is not relaxable")
    return RulePolicy(boot_authorities=_authorities(doc.get("boot_authorities", [])),
                      dbx=_choice(doc, "dbx", ("grow", "approval")),
                      kernel_cmdline=_pattern(doc.get("kernel_cmdline", "")),
                      boot_config=_choice(doc, "boot_config", ("accept", "approval")),
                      comment=_comment(doc.get("comment", "")))


def _bad(message: str) -> AttestgateError:
    return AttestgateError(ErrorCode.BAD_REQUEST, message)


def _authorities(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("'boot_authorities' must be a list of SHA-256 hex strings")
    if len(value) > MAX_AUTHORITIES:
        raise _bad(f"at most {MAX_AUTHORITIES} boot authorities")
    wrong = [v for v in value if not _HEX64.fullmatch(v.lower())]
    if wrong:
        raise _bad(f"boot authority {wrong[0][:80]!r} is not a SHA-256 hex digest (the "
                   "data_sha256 of a PCR 7 EV_EFI_VARIABLE_AUTHORITY event)")
    return frozenset(v.lower() for v in value)


def _choice(doc: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = doc.get(key, "approval")
    if value not in allowed:
        raise _bad(f"{key!r} must be one of {', '.join(map(repr, allowed))}")
    return str(value)


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_PATTERN:
        raise _bad(f"'kernel_cmdline' must be a regular expression of at most {MAX_PATTERN} "
                   "characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise _bad(f"'kernel_cmdline' is not a valid regular expression: {exc}") from None
    return value


def _comment(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise _bad("'comment' must be text of at most 500 characters")
    return value


# -- evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """What one rule said about one change."""

    rule: Rule
    accepted: bool
    reason: str


@dataclass(frozen=True)
class RuleDecision:
    accepted: bool
    rules: tuple[Rule, ...]  # accepted: every rule that accepted a change; refused: refusers
    reasons: tuple[str, ...]  # refused: why, in plain words (at most MAX_REASONS)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rules": [r.value for r in self.rules],
                "reasons": list(self.reasons)}


def refuse(rule: Rule, reason: str) -> RuleDecision:
    return RuleDecision(False, (rule,), (reason,))


def evaluate(policy: RulePolicy, reference: MachineState, current: MachineState,
             diff: StateDiff, quoted: Collection[int]) -> RuleDecision:
    """Accept ``current`` by rule against ``reference`` (``diff`` = their diff) when every
    change in a quoted PCR is accepted by a rule; refuse otherwise (all reasons listed)."""
    if not (current.pcrs_compared and current.consistent and reference.consistent):
        return refuse(Rule.UNKNOWN_EVENTS, "a log does not replay to its quoted PCRs")
    problems = [*diff.problems, *(f"reference log: {a}" for a in reference.anomalies)]
    if problems:
        return RuleDecision(False, (Rule.UNKNOWN_EVENTS,), tuple(problems[:MAX_REASONS]))
    changes = [c for c in diff.changes if c.pcr in quoted]
    if not changes:
        return refuse(Rule.UNKNOWN_EVENTS, "the quoted PCRs changed but no logged component did")
    judged = [_judge(policy, c, reference, current, quoted) for c in changes]
    refused = [j for j in judged if not j.accepted]
    if refused:
        rules = tuple(dict.fromkeys(j.rule for j in refused))
        reasons = tuple(dict.fromkeys(j.reason for j in refused))
        return RuleDecision(False, rules, reasons[:MAX_REASONS])
    return RuleDecision(True, tuple(sorted({j.rule for j in judged})), ())


def _judge(policy: RulePolicy, change: Change, reference: MachineState, current: MachineState,
           quoted: Collection[int]) -> Judgement:
    kind = change.kind
    # Each rule judges its component only in the PCR the spec puts it in: the event type is
    # covered by no digest, so a kind seen elsewhere is not what it claims to be.
    if (kind, change.pcr) in (("boot_application", 4), ("secureboot_authority", 7)):
        why = _authorities_refusal(policy, current, quoted)
        what = "boot application" if kind == "boot_application" else "Secure Boot authority"
        if why is None:
            return Judgement(Rule.BOOT_AUTHORITIES, True, "")
        return Judgement(Rule.BOOT_AUTHORITIES, False,
                         f"a changed {what} in PCR {change.pcr}: {why}")
    if kind == "secureboot_dbx":
        return _dbx(policy, change, reference, current)
    if change.pcr == 8 and (kind == "kernel_cmdline" or (kind == "boot_command"
                                                          and _kernel_command(change))):
        return _cmdline(policy, change)
    if kind in _BOOT_CONFIG_KINDS and change.pcr in _BOOT_CONFIG_PCRS:
        ok = policy.boot_config == "accept"
        return Judgement(Rule.BOOT_CONFIG, ok, "" if ok else
                         f"a boot loader command or file changed (PCR {change.pcr}, "
                         f"{change.name or kind}) and the policy's boot_config is 'approval'")
    if kind in _FIRMWARE_KINDS or kind == "firmware_driver" or (
            kind == "boot_application" and change.pcr < 4):
        return Judgement(Rule.FIRMWARE, False,
                         f"the firmware changed (PCR {change.pcr}, {kind.replace('_', ' ')}): "
                         "firmware changes need an approval")
    if kind == "other":
        return Judgement(Rule.UNKNOWN_EVENTS, False,
                         f"an event the policy cannot judge changed (PCR {change.pcr}, "
                         f"{change.name})")
    return Judgement(Rule.APPROVAL, False,
                     f"{kind.replace('_', ' ')} changed (PCR {change.pcr}, {change.name}): "
                     "no rule accepts this; it needs an approval")


def _authorities_refusal(policy: RulePolicy, current: MachineState,
                         quoted: Collection[int]) -> str | None:
    """None when Secure Boot is on and every PCR 7 authority is allowed; else why not."""
    if not policy.boot_authorities:
        return "the policy allows no boot authority"
    if 7 not in quoted:
        return "PCR 7 is not quoted, so the Secure Boot authorities cannot be verified"
    if current.secure_boot is not True:
        return "Secure Boot is not verifiably enabled"
    authorities = [ce for ce in current.events
                   if ce.event.pcr == 7 and ce.event.type == t.EV_EFI_VARIABLE_AUTHORITY]
    if not authorities:
        return "no Secure Boot authority was measured"
    if not all(ce.verified for ce in authorities):
        return "a Secure Boot authority event is not verified"
    foreign = [str(ce.fields.get("data_sha256", "")) for ce in authorities
               if ce.fields.get("data_sha256") not in policy.boot_authorities]
    if foreign:
        return f"signed by an authority the policy does not allow ({foreign[0][:16]}…)"
    return None


def _dbx(policy: RulePolicy, change: Change, reference: MachineState,
         current: MachineState) -> Judgement:
    if policy.dbx != "grow":
        return Judgement(Rule.DBX, False, "the Secure Boot revocation list (dbx) changed and "
                                          "the policy's dbx is 'approval'")
    if change.new is None:
        return Judgement(Rule.DBX, False, "the dbx measurement is gone")
    new = _entries(current, change.new.event_index)
    old = set() if change.old is None else _entries(reference, change.old.event_index)
    if new is None or old is None:
        return Judgement(Rule.DBX, False, "a dbx measurement is not verified")
    lost = old - new
    if lost:
        return Judgement(Rule.DBX, False, f"the dbx lost {len(lost)} entr"
                                          f"{'y' if len(lost) == 1 else 'ies'}; it may only grow")
    return Judgement(Rule.DBX, True, "")


def _entries(state: MachineState, index: int) -> set[str] | None:
    ce = _event(state, index)
    if ce is None or not ce.verified:
        return None
    return set(ce.fields.get("signature_sha256", ()))


def _event(state: MachineState, index: int) -> CheckedEvent | None:
    return next((ce for ce in state.events if ce.event.index == index), None)


def _kernel_command(change: Change) -> bool:
    side = change.new or change.old
    return side is not None and side.name == "grub_cmd" and side.value.startswith(
        _KERNEL_COMMANDS)


def _cmdline(policy: RulePolicy, change: Change) -> Judgement:
    new = change.new
    if not policy.kernel_cmdline:
        return Judgement(Rule.KERNEL_CMDLINE, False, "the kernel command line changed and the "
                                                     "policy has no kernel_cmdline pattern")
    if new is None or not new.verified:
        return Judgement(Rule.KERNEL_CMDLINE, False,
                         "the kernel command line is not verified (is PCR 8 quoted?)")
    text = new.value
    if new.kind == "boot_command":
        text = text.split(" ", 1)[1] if " " in text else ""
    if len(text) > MAX_CMDLINE:
        return Judgement(Rule.KERNEL_CMDLINE, False, "the kernel command line is too long")
    if re.fullmatch(policy.kernel_cmdline, text) is None:
        return Judgement(Rule.KERNEL_CMDLINE, False,
                         f"the kernel command line {text[:120]!r} does not match the policy's "
                         "pattern")
    return Judgement(Rule.KERNEL_CMDLINE, True, "")


def template(state: MachineState, quoted: Collection[int]) -> RulePolicy:
    """A starting policy for a device in ``state`` (its baseline's verified log): its
    verified PCR 7 authorities allowed, dbx may grow, and — when PCR 8 is quoted — its
    kernel command line with the kernel's version left free. Review before use."""
    authorities = frozenset(
        str(ce.fields["data_sha256"]) for ce in state.events
        if ce.event.pcr == 7 and ce.event.type == t.EV_EFI_VARIABLE_AUTHORITY and ce.verified
        and "data_sha256" in ce.fields)
    cmdline = ""
    if 8 in quoted:
        lines = [c.value for c in state.pcr_components(8)
                 if c.kind == "kernel_cmdline" and c.verified]
        if lines:
            cmdline = _versionless(lines[-1])
    return RulePolicy(boot_authorities=authorities, dbx="grow", kernel_cmdline=cmdline,
                      boot_config="approval",
                      comment="generated by attestgate-admin policy template; review it")


_VERSION = re.compile(r"(?<=vmlinuz-)\S+")


def _versionless(cmdline: str) -> str:
    """``cmdline`` as a pattern where the kernel file's version is free (no whitespace)."""
    parts = _VERSION.split(cmdline)
    return r"\S+".join(_escape(p) for p in parts)


def _escape(text: str) -> str:
    """``re.escape`` without escaping "-" and " " (plain outside a character class; the
    pattern is never compiled VERBOSE): readable when an operator reviews it."""
    return re.escape(text).replace("\\-", "-").replace("\\ ", " ")
