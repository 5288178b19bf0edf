"""Plain words for refusals: what changed, what it usually means, what to do."""

from __future__ import annotations

from typing import Any

from client.advice import Advice
from shared.errors import ErrorCode
from shared.eventlog.render import component_lines

_PCR_MEANING = {
    0: "firmware code (BIOS/UEFI)",
    1: "firmware configuration",
    2: "option ROMs / extension code",
    3: "option ROM configuration",
    4: "boot loader and boot attempts",
    5: "boot loader configuration, partition table",
    6: "platform manufacturer events",
    7: "Secure Boot policy (keys, db/dbx, on/off)",
    8: "kernel command line / boot loader commands",
    9: "kernel, initrd and files the boot loader read",
    10: "IMA measurements",
    11: "unified kernel image / OS-defined",
    14: "shim MOK certificates",
    16: "debug PCR (resettable)",
    23: "application-defined (resettable)",
}


def pcr_meaning(index: int) -> str:
    return _PCR_MEANING.get(index, "OS or application defined")


_SIMPLE = {
    ErrorCode.REVOKED: "this device was revoked by the operator",
    ErrorCode.LOCKED: "this device is locked after repeated failed attestations",
    ErrorCode.REENROLL_REQUIRED: "the server requires this device to enroll again",
    ErrorCode.OUTSIDE_WINDOW: "connections from this device are not allowed at this time",
    ErrorCode.UNKNOWN_DEVICE: "the server does not know this device (not enrolled, revoked "
                              "and removed, or its key is not the enrolled one)",
    ErrorCode.BAD_TOKEN: "the server refused the enrollment token (unknown, used or expired) "
                         "or open enrollment is off",
    ErrorCode.EK_UNTRUSTED: "the server does not trust this TPM's endorsement key certificate",
    ErrorCode.EK_MISMATCH: "this TPM's endorsement key does not match its certificate",
    ErrorCode.NAME_TAKEN: "that device name is already enrolled; pick another --name",
    ErrorCode.ALREADY_ENROLLED: "this TPM is already enrolled",
    ErrorCode.QUOTE_BINDING: "the TPM quote was not bound to this channel",
    ErrorCode.CLOCK_ROLLBACK: "the TPM's clock or reset counter went backwards",
    ErrorCode.LOG_INCONSISTENT: "the measured-boot event log this machine sent does not replay "
                                "to the PCR values its TPM quoted (a wrong or stale log file, "
                                "a log of another machine or TPM, or tampering); check "
                                "--event-log / ATTESTGATE_EVENT_LOG, or run `attestgate "
                                "eventlog --tpm ...` to compare",
    ErrorCode.POLICY_REFUSED: "a custom policy of the server refused this device's state; "
                              "ask the operator (attestgate-admin audit DEVICE names it)",
    ErrorCode.CREDENTIAL_FAILED: "the TPM could not prove that its keys live together",
    ErrorCode.SERVICE_UNAVAILABLE: "the server is temporarily unable to answer (one of its "
                                   "services did not reply in time); try again",
    ErrorCode.STORE_UNAVAILABLE: "the server's database is unreachable; nothing was stored; "
                                 "try again",
    ErrorCode.BUSY: "the server is busy; try again",
    ErrorCode.RATE_LIMITED: "the server limits this device (too many sessions, or posts faster "
                            "than allowed); close other sessions or wait a moment, then try again",
}


def explain_unavailable(code: ErrorCode) -> str:
    """For an authenticated "could not answer now" (not a refusal of this device)."""
    return "the server could not answer now: " + _SIMPLE.get(code, code.value.replace("_", " "))


def rule_lines(rules: object) -> list[str]:
    """Why the server's rule policy did not accept the state (empty without one)."""
    if not isinstance(rules, dict) or rules.get("accepted") is not False:
        return []
    reasons = [str(r) for r in rules.get("reasons") or []][:8]
    head = (f"The {rules.get('policy', '?')} rule policy did not accept it "
            f"(rule: {', '.join(map(str, rules.get('rules') or [])) or '?'}):")
    return [head, *(f"  - {r}" for r in reasons)]


def explain_refusal(code: ErrorCode, body: dict[str, Any], advice: Advice | None = None) -> str:
    """The refusal in plain words and, with ``advice``, the exact commands that lead out."""
    advice = advice or Advice(None)
    way_out = advice.for_code(code, body)
    # After a PCR mismatch the way out depends on what the refusal made of the device.
    follows = {"reenroll": ErrorCode.REENROLL_REQUIRED, "revoked": ErrorCode.REVOKED}
    if code is ErrorCode.PCR_MISMATCH and body.get("status") in follows:
        way_out = advice.for_code(follows[str(body["status"])])
    if code is not ErrorCode.PCR_MISMATCH:
        words = "refused: " + _SIMPLE.get(code, code.value.replace("_", " "))
        return f"{words}; {way_out}" if way_out else words
    changed = body.get("changed") or []
    evlog = body.get("eventlog")
    lines = []
    if isinstance(evlog, dict) and evlog.get("summary"):
        lines.append(f"refused: {evlog['summary']} (verdict: {evlog.get('verdict', '?')}).")
    lines += rule_lines(body.get("rules"))
    lines.append(f"{'refused: t' if not lines else 'T'}his machine's measured state differs "
                 f"from its enrollment in {len(changed)} PCR(s):")
    for c in changed:
        i = int(c.get("pcr", -1))
        lines.append(f"  PCR {i:>2} — {pcr_meaning(i)}\n"
                     f"      enrolled {c.get('enrolled') or '(none)'}\n"
                     f"      now      {c.get('current') or '(none)'}")
    if isinstance(evlog, dict):
        lines += component_lines(evlog)
        lines += [
            "If the change was intended, ask the operator to approve the new state"
            " (attestgate-admin approve <device>); otherwise investigate, or enroll again.",
            f"Failed attempts: {body.get('failures', '?')} of {body.get('max_failures', '?')}"
            f" (device status: {body.get('status', '?')}).",
        ]
        return "\n".join(lines)
    lines += [
        "This usually means a firmware update, a new boot loader or kernel, or a changed Secure"
        " Boot setting — or tampering.",
        (way_out[0].upper() + way_out[1:] + ".") if way_out else
        "If the change was intended, ask the operator to approve the new state"
        " (attestgate-admin approve <device>); otherwise investigate, or enroll again.",
        f"Failed attempts: {body.get('failures', '?')} of {body.get('max_failures', '?')}"
        f" (device status: {body.get('status', '?')}).",
    ]
    return "\n".join(lines)

