"""Rule policies over verified event logs: what a routine update gets through, what never does."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection

import pytest
from eventlog_helpers import BANKS, boot, image_load, ipl

from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import MachineState, diff_states, parse_log, replay
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event
from shared.eventlog.parse import Event
from shared.eventlog.rules import (
    MAX_POLICY_BYTES,
    Rule,
    RuleDecision,
    RulePolicy,
    evaluate,
    parse_policy,
    template,
)
from shared.eventlog.transport import checked_state

DB = b"\x30" * 40
DB_AUTHORITY = hashlib.sha256(b"\x11" * 16 + DB).hexdigest()  # the authority event's data
FIRMWARE_PCRS = range(8)  # the default selection, sha256:0-7
ALL_BOOT_PCRS = range(10)
CMDLINE = r"/boot/vmlinuz-\S+ root=/dev/sda1 ro quiet"


def _state(events: list[Event], quoted: Collection[int]) -> MachineState:
    """The state as the attestor sees it: the log checked against the quoted PCRs."""
    log = encode_log(events, BANKS)
    values = replay(parse_log(log))["sha256"]
    return checked_state(log, "sha256", {p: values.get(p, bytes(32)) for p in quoted})


def _decide(policy: RulePolicy, new: list[Event], old: list[Event] | None = None,
            quoted: Collection[int] = FIRMWARE_PCRS) -> RuleDecision:
    before, after = _state(old or boot(), quoted), _state(new, quoted)
    return evaluate(policy, before, after, diff_states(before, after), quoted)


SIGNED = RulePolicy(boot_authorities=frozenset({DB_AUTHORITY}))


# -- the kernel and the boot loader: signed by an allowed authority -------------------------


def test_a_kernel_update_signed_by_an_allowed_authority_is_accepted() -> None:
    d = _decide(SIGNED, boot(kernel="6.1.0-31"))
    assert d.accepted and d.rules == (Rule.BOOT_AUTHORITIES,) and not d.reasons


def test_a_boot_loader_update_signed_by_an_allowed_authority_is_accepted() -> None:
    assert _decide(SIGNED, boot(grub=b"grub-2.12", shim=b"shim-15.8")).accepted


def test_a_kernel_update_is_refused_without_an_allowed_authority() -> None:
    d = _decide(RulePolicy(), boot(kernel="6.1.0-31"))
    assert not d.accepted and d.rules == (Rule.BOOT_AUTHORITIES,)
    assert "allows no boot authority" in d.reasons[0]
    other = RulePolicy(boot_authorities=frozenset({"ab" * 32}))
    d = _decide(other, boot(kernel="6.1.0-31"))
    assert not d.accepted and "does not allow" in d.reasons[0]


def test_a_kernel_from_a_new_signer_is_refused() -> None:
    """A kernel signed by another db certificate: PCR 7 measures a new authority."""
    d = _decide(SIGNED, boot(kernel="6.1.0-31", db=b"\x31" * 40))
    assert not d.accepted
    assert Rule.BOOT_AUTHORITIES in d.rules or Rule.APPROVAL in d.rules  # db changed, too


def test_a_boot_application_outside_pcr_4_is_not_the_boot_loader() -> None:
    """An image measured into PCR 2 (an option ROM's) is firmware, whatever signed it."""
    events = boot(kernel="6.1.0-31")
    events.insert(-1, measured_event(2, t.EV_EFI_BOOT_SERVICES_APPLICATION,
                                     image_load("\\EFI\\x.efi"), BANKS, b"option rom app"))
    d = _decide(SIGNED, events)
    assert not d.accepted and d.rules == (Rule.FIRMWARE,)


def test_a_command_line_outside_pcr_8_is_not_judged_by_the_pattern() -> None:
    lenient = RulePolicy(kernel_cmdline=".*", boot_config="accept")
    data, measured = ipl("kernel_cmdline: ", "/boot/vmlinuz-x init=/bin/sh")
    events = [*boot(), measured_event(5, t.EV_IPL, data, BANKS, measured)]
    d = _decide(lenient, events)
    assert not d.accepted and Rule.KERNEL_CMDLINE not in d.rules


def test_with_secure_boot_off_no_signature_vouches_for_anything() -> None:
    d = _decide(SIGNED, boot(kernel="6.1.0-31", secure_boot=False))
    assert not d.accepted
    assert any("Secure Boot is not verifiably enabled" in r for r in d.reasons)
    assert Rule.APPROVAL in d.rules  # turning Secure Boot off is never accepted by rule


def test_authorities_need_pcr_7_in_the_quote() -> None:
    quoted = [0, 1, 2, 3, 4, 5, 6]
    d = _decide(SIGNED, boot(kernel="6.1.0-31"), quoted=quoted)
    assert not d.accepted and "PCR 7 is not quoted" in d.reasons[0]


# -- grub: the command line and the measured files (PCRs 8-9, when quoted) ------------------


def test_with_pcrs_8_and_9_quoted_a_kernel_update_needs_the_cmdline_and_boot_config_rules() -> None:
    new = boot(kernel="6.1.0-31")
    d = _decide(SIGNED, new, quoted=ALL_BOOT_PCRS)
    assert not d.accepted and Rule.KERNEL_CMDLINE in d.rules and Rule.BOOT_CONFIG in d.rules
    full = RulePolicy(boot_authorities=frozenset({DB_AUTHORITY}), kernel_cmdline=CMDLINE,
                      boot_config="accept")
    d = _decide(full, new, quoted=ALL_BOOT_PCRS)
    assert d.accepted and set(d.rules) == {Rule.BOOT_AUTHORITIES, Rule.KERNEL_CMDLINE,
                                           Rule.BOOT_CONFIG}


def test_a_command_line_outside_the_pattern_is_refused() -> None:
    full = RulePolicy(boot_authorities=frozenset({DB_AUTHORITY}), kernel_cmdline=CMDLINE,
                      boot_config="accept")
    d = _decide(full, boot(kernel="6.1.0-31", cmdline="root=/dev/sda1 ro init=/bin/sh"),
                quoted=ALL_BOOT_PCRS)
    assert not d.accepted and d.rules == (Rule.KERNEL_CMDLINE,)
    assert "init=/bin/sh" in d.reasons[0] and "does not match" in d.reasons[0]


def test_a_cmdline_rule_that_cannot_be_verified_refuses() -> None:
    """The kernel command line changed in a PCR that is quoted but the datum does not match
    its digest: the rule cannot be evaluated, so it refuses."""
    events = boot(kernel="6.1.0-31")
    i = next(n for n, e in enumerate(events) if e.pcr == 8 and b"kernel_cmdline" in e.data)
    forged = events[i].data.replace(b"ro quiet", b"ro QUIET")
    events[i] = Event(0, 8, t.EV_IPL, events[i].digests, forged)
    full = RulePolicy(boot_authorities=frozenset({DB_AUTHORITY}), kernel_cmdline=r".*",
                      boot_config="accept")
    assert not _decide(full, events, quoted=ALL_BOOT_PCRS).accepted


# -- Secure Boot's revocation list --------------------------------------------------------


def test_dbx_may_grow_but_never_shrink() -> None:
    grow = RulePolicy(dbx="grow")
    assert _decide(grow, boot(dbx=7)).accepted
    shrunk = _decide(grow, boot(dbx=2))
    assert not shrunk.accepted and shrunk.rules == (Rule.DBX,)
    assert "lost 1 entry" in shrunk.reasons[0]
    assert not _decide(RulePolicy(dbx="approval"), boot(dbx=7)).accepted


# -- what no rule relaxes ------------------------------------------------------------------


def test_firmware_changes_need_an_approval_whatever_the_policy() -> None:
    lenient = RulePolicy(boot_authorities=frozenset({DB_AUTHORITY}), dbx="grow",
                         kernel_cmdline=".*", boot_config="accept")
    d = _decide(lenient, boot(firmware="FW 2.0"))
    assert not d.accepted and d.rules == (Rule.FIRMWARE,)
    assert "firmware changes need an approval" in d.reasons[0]


def test_secure_boot_keys_need_an_approval() -> None:
    lenient = RulePolicy(boot_authorities=frozenset({DB_AUTHORITY}), dbx="grow")
    d = _decide(lenient, boot(db=b"\x32" * 40))
    assert not d.accepted and Rule.APPROVAL in d.rules


def test_an_unknown_event_in_a_boot_pcr_is_refused() -> None:
    events = boot(kernel="6.1.0-31")
    events.insert(-1, measured_event(4, 0x99, b"who knows", BANKS))
    d = _decide(SIGNED, events)
    assert not d.accepted and d.rules == (Rule.UNKNOWN_EVENTS,)
    assert "unknown event type" in " ".join(d.reasons)


def test_an_event_whose_data_does_not_decode_is_refused() -> None:
    events = boot(kernel="6.1.0-31")
    events.insert(-1, measured_event(5, t.EV_EFI_GPT_EVENT, b"\x00" * 8, BANKS))
    d = _decide(SIGNED, events)
    assert not d.accepted and d.rules == (Rule.UNKNOWN_EVENTS,)


def test_an_event_relabelled_under_the_same_digest_is_refused() -> None:
    """The type is covered by no digest: the new kernel's image event relabelled as an action
    keeps its PCR value, but an action whose text does not hash to its digest is an anomaly."""
    events = boot(kernel="6.1.0-31")
    i = max(n for n, e in enumerate(events) if e.type == t.EV_EFI_BOOT_SERVICES_APPLICATION)
    events[i] = Event(0, 4, t.EV_EFI_ACTION, events[i].digests, b"Returning from EFI App")
    d = _decide(SIGNED, events)
    assert not d.accepted and d.rules == (Rule.UNKNOWN_EVENTS,)


def test_no_change_in_a_quoted_pcr_is_not_a_reason_to_accept() -> None:
    before = _state(boot(), FIRMWARE_PCRS)
    d = evaluate(SIGNED, before, before, diff_states(before, before), FIRMWARE_PCRS)
    assert not d.accepted and d.rules == (Rule.UNKNOWN_EVENTS,)


# -- the document ---------------------------------------------------------------------------


def test_a_policy_document_round_trips_canonically() -> None:
    doc = {"boot_authorities": [DB_AUTHORITY.upper()], "dbx": "grow",
           "kernel_cmdline": CMDLINE, "boot_config": "accept", "comment": "fleet A"}
    p = parse_policy(json.dumps(doc).encode())
    assert p.boot_authorities == {DB_AUTHORITY} and p.dbx == "grow"
    again = parse_policy(p.to_bytes())
    assert again == p and again.digest == p.digest
    assert p.as_dict()["firmware"] == "approval" and p.as_dict()["unknown_events"] == "refuse"
    assert parse_policy(b"{}") == RulePolicy()


@pytest.mark.parametrize(("doc", "words"), [
    (b"[]", "JSON object"),
    (b"{not json", "not JSON"),
    (b'{"boot_authority": []}', "unknown key(s) boot_authority"),
    (b'{"version": 2}', "policy version 2"),
    (b'{"firmware": "accept"}', "not relaxable"),
    (b'{"unknown_events": "accept"}', "not relaxable"),
    (b'{"boot_authorities": ["abc"]}', "not a SHA-256"),
    (b'{"boot_authorities": "' + b"a" * 64 + b'"}', "must be a list"),
    (b'{"dbx": "shrink"}', "'dbx' must be one of"),
    (b'{"boot_config": true}', "'boot_config' must be one of"),
    (b'{"kernel_cmdline": "root=(unclosed"}', "not a valid regular expression"),
    (b'{"kernel_cmdline": 5}', "regular expression of at most"),
    (b" " * (MAX_POLICY_BYTES + 1), "larger than"),
])
def test_a_bad_policy_is_rejected_naming_the_problem(doc: bytes, words: str) -> None:
    with pytest.raises(AttestgateError) as err:
        parse_policy(doc)
    assert err.value.code is ErrorCode.BAD_REQUEST and words in err.value.detail


def test_the_template_allows_what_the_baseline_shows_and_frees_the_kernel_version() -> None:
    state = _state(boot(), ALL_BOOT_PCRS)
    p = template(state, ALL_BOOT_PCRS)
    assert p.boot_authorities == {DB_AUTHORITY} and p.dbx == "grow"
    assert p.boot_config == "approval"
    assert re.fullmatch(p.kernel_cmdline, "/boot/vmlinuz-6.1.0-31 root=/dev/sda1 ro quiet")
    assert not re.fullmatch(p.kernel_cmdline, "/boot/vmlinuz-6.1.0-31 root=/dev/sda1 ro init=/x")
    assert parse_policy(p.to_bytes()) == p
    # Without PCR 8 in the quote there is no verified command line to start from.
    assert template(_state(boot(), FIRMWARE_PCRS), FIRMWARE_PCRS).kernel_cmdline == ""
