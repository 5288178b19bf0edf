"""The attest op under a rule policy: a kernel update accepted by rule (and audited with the
rule), everything else refused as before with the reason the rules gave; fail closed."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from test_attestor_eventlog import (
    NEW_KERNEL,
    OLD_KERNEL,
    attest,
    enrolled,
    log_of,
    pcrs_of,
    quote,
)

from deploy.boot_log import BANKS, demo_boot
from shared.errors import ErrorCode
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event
from shared.eventlog.rules import RulePolicy
from shared.eventlog.transport import compress, log_digest
from shared.records import DeviceStatus
from shared.store.memory import MemoryStore

DEMO_DB = b"\x30\x82\x05\x00" + b"demo db certificate".ljust(36, b".")
AUTHORITY = hashlib.sha256(b"\x11" * 16 + DEMO_DB).hexdigest()  # deploy.boot_log's db signer
SIGNED = RulePolicy(boot_authorities=frozenset({AUTHORITY}))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def _audit(store: MemoryStore) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, json.loads(e.detail)) for e in store.read_audit()]


def test_a_signed_kernel_update_is_accepted_by_rule_and_audited_with_it(
        store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    store.put_rule_policy("", SIGNED.to_bytes())
    new = log_of(NEW_KERNEL)
    asked = attest(store, quote(dev, pcrs_of(new), log_size=len(new)))
    assert asked.body == {"need_log": True}  # the rules need the log, as a refusal would
    reply = attest(store, quote(dev, pcrs_of(new), log_size=len(new), log_z=compress(new)))
    assert reply.ok and reply.body["status"] == "active", reply
    # `attestgate check` learns that this state is accepted (by rule) besides the baselines.
    assert reply.body["baselines"][0] == {str(i): v for i, v in pcrs_of(new).items()}
    [(event, detail)] = _audit(store)
    assert event == "attest_ok_by_rule"
    rules = detail["rules"]
    assert isinstance(rules, dict)
    assert rules["accepted"] is True and rules["rules"] == ["boot_authorities"]
    assert rules["policy"] == "default" and rules["policy_digest"] == SIGNED.digest
    assert rules["baseline"] == store.devices[dev.device_id].baselines[0].baseline_id
    assert rules["verdict"] == "kernel_update"
    d = store.devices[dev.device_id]
    assert d.failures == 0 and d.last_refused is None and len(d.baselines) == 1
    # Not stored as a baseline: the next connect is judged by the rules again.
    assert store.get_event_log(dev.device_id, log_digest(new)) is None


def test_a_device_policy_replaces_the_default(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    store.put_rule_policy("", SIGNED.to_bytes())
    store.put_rule_policy(dev.device_id, RulePolicy().to_bytes())  # this one: approvals only
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_size=len(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH
    rules = reply.body["rules"]
    assert rules["policy"] == "device" and rules["accepted"] is False
    assert rules["rules"] == ["boot_authorities"]
    assert "allows no boot authority" in rules["reasons"][0]
    [(event, detail)] = _audit(store)
    assert event == "attest_refused" and detail["rules"] == rules
    assert json.loads(store.devices[dev.device_id].last_eventlog)["rules"] == rules
    assert store.devices[dev.device_id].failures == 1


def test_a_firmware_update_is_refused_by_rule_and_counted(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    store.put_rule_policy("", RulePolicy(boot_authorities=frozenset({AUTHORITY}), dbx="grow",
                                         boot_config="accept").to_bytes())
    events = demo_boot(NEW_KERNEL)
    events[0] = measured_event(0, t.EV_S_CRTM_VERSION,
                               "1.16.3-debian".encode("utf-16-le") + b"\x00\x00", BANKS)
    new = encode_log(events, BANKS)
    reply = attest(store, quote(dev, pcrs_of(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert reply.body["rules"]["rules"] == ["firmware"]
    assert reply.body["eventlog"]["verdict"] == "firmware_update"
    assert store.devices[dev.device_id].failures == 1


def test_an_unreadable_policy_refuses(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    store.put_rule_policy(dev.device_id, b'{"firmware": "accept"}')  # written around the CLI
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert "cannot be read" in reply.body["rules"]["reasons"][0]


def test_without_a_policy_nothing_changes(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH and "rules" not in reply.body


def test_without_a_log_no_rule_can_accept(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    store.put_rule_policy("", SIGNED.to_bytes())
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new)))  # a client that has no log
    assert reply.error is ErrorCode.PCR_MISMATCH and "rules" not in reply.body


def test_a_baseline_without_a_log_is_no_reference(store: MemoryStore) -> None:
    dev = enrolled(store, None)
    store.put_rule_policy("", SIGNED.to_bytes())
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert "baseline add" in reply.body["rules"]["reasons"][0]


def test_an_expired_baseline_is_no_reference(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    d = store.devices[dev.device_id]
    store.devices[dev.device_id] = dataclasses.replace(
        d, baselines=(dataclasses.replace(d.baselines[0], expires_at=1.0),))
    store.put_rule_policy("", SIGNED.to_bytes())
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH and not reply.body["rules"]["accepted"]


def test_a_locked_device_is_not_accepted_by_rule(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    store.devices[dev.device_id] = dataclasses.replace(store.devices[dev.device_id],
                                                       status=DeviceStatus.LOCKED)
    store.put_rule_policy("", SIGNED.to_bytes())
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_z=compress(new)))
    assert reply.error is ErrorCode.LOCKED
