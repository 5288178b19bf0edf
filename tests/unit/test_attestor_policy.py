"""Attestation policy (pure functions) and the attestor's ``attest`` op with a software AK."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from device_builders import NOW, SELECTION, VAULT_KEY, TestDevice, make_device, pcr_values
from tpm_builders import flip, quote_attest, sign_data, tpm_name

from services.attestor.enroll import EnrollSettings, quote_nonce
from services.attestor.handler import AttestorDeps, handle, reattest_nonce
from services.attestor.policy import (
    AttestPolicy,
    accepted,
    check_clock,
    in_window,
    matching_baseline,
    refused,
)
from shared.bus.interface import BusEvent, Reply, Request
from shared.config import Consequence, EnrollPolicy
from shared.errors import AttestgateError, ErrorCode
from shared.records import Baseline, Device, DeviceStatus
from shared.store.memory import MemoryStore
from shared.tpm.attributes import check_ak
from shared.tpm.pcrs import PcrChange, diff_view
from shared.vault import Vault
from shared.wire import Event

H = hashlib.sha256(b"handshake hash").digest()


def policy(max_failures: int = 3, consequence: Consequence = Consequence.LOCK,
           window: tuple[int, int] | None = None) -> AttestPolicy:
    return AttestPolicy(SELECTION, max_failures, consequence, window)


def record(**over: Any) -> Device:
    return dataclasses.replace(make_device("pol").record, **over)


# -- refused / accepted ------------------------------------------------------------------------

CONSEQUENCES = {
    Consequence.LOCK: (DeviceStatus.LOCKED, Event.DEVICE_LOCKED),
    Consequence.REVOKE: (DeviceStatus.REVOKED, Event.DEVICE_REVOKED),
    Consequence.REENROLL: (DeviceStatus.REENROLL, Event.DEVICE_LOCKED),
    Consequence.ALERT: (DeviceStatus.ACTIVE, None),
}


@pytest.mark.parametrize("consequence", list(Consequence))
def test_refused_counts_up_to_the_consequence(consequence: Consequence) -> None:
    p = policy(3, consequence)
    dev = record()
    for n in (1, 2):
        out = refused(dev, p, (), None)
        dev = out.device
        assert dev.failures == n
        assert dev.status is DeviceStatus.ACTIVE
        assert (out.events, out.consequence) == ((), None)
    out = refused(dev, p, (), None)
    status, event = CONSEQUENCES[consequence]
    assert out.device.failures == 3
    assert out.device.status is status
    assert out.consequence is consequence
    if event is None:
        assert out.events == ()
    else:
        assert out.events == (BusEvent(event.value, {"device_id": dev.device_id,
                                                      "status": status.value}),)


@pytest.mark.parametrize("consequence", [Consequence.LOCK, Consequence.REVOKE,
                                         Consequence.REENROLL])
def test_consequence_applies_once(consequence: Consequence) -> None:
    p = policy(1, consequence)
    first = refused(record(), p, (), None)
    assert first.consequence is consequence
    second = refused(first.device, p, (), None)
    assert second.device.failures == 2
    assert second.device.status is first.device.status
    assert (second.events, second.consequence) == ((), None)


def test_alert_keeps_alerting() -> None:
    p = policy(1, Consequence.ALERT)
    dev = record()
    for _ in range(3):
        out = refused(dev, p, (), None)
        dev = out.device
        assert out.consequence is Consequence.ALERT
        assert dev.status is DeviceStatus.ACTIVE


def test_refused_keeps_diff_and_refused_state() -> None:
    diff = (PcrChange(7, b"a" * 32, b"b" * 32),)
    state = Baseline.of(SELECTION, {7: b"b" * 32})
    dev = refused(record(), policy(), diff, state).device
    assert (dev.last_diff, dev.last_refused) == (diff, state)
    # a later failure without a diff (bad quote) keeps the last known diff and state
    dev = refused(dev, policy(), (), None).device
    assert (dev.last_diff, dev.last_refused) == (diff, state)


def test_refused_does_not_touch_other_fields() -> None:
    dev = record(last_reset_count=4, last_clock=99)
    new = refused(dev, policy(), (), None).device
    assert dataclasses.replace(new, failures=0) == dev


def test_accepted_resets_failures() -> None:
    dev = refused(refused(record(), policy(), (), None).device, policy(), (), None).device
    assert dev.failures == 2
    ok = accepted(dev, NOW, 7, 12345)
    assert (ok.failures, ok.last_attest_at, ok.last_reset_count, ok.last_clock) == (
        0, NOW, 7, 12345)
    assert ok.status is DeviceStatus.ACTIVE


# -- check_clock -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset", "clock"),
    [(5, 1000), (5, 1001), (6, 0), (6, 999), (9, 10)],  # same, forward, or any reboot later
)
def test_clock_ok(reset: int, clock: int) -> None:
    check_clock(record(last_reset_count=5, last_clock=1000), reset, clock)


@pytest.mark.parametrize(("reset", "clock"), [(4, 1000), (4, 5000), (0, 0)])
def test_clock_rollback(reset: int, clock: int) -> None:
    with pytest.raises(AttestgateError) as e:
        check_clock(record(last_reset_count=5, last_clock=1000), reset, clock)
    assert e.value.code is ErrorCode.CLOCK_ROLLBACK


def test_clock_far_behind_within_one_boot_is_rollback() -> None:
    with pytest.raises(AttestgateError) as e:
        check_clock(record(last_reset_count=5, last_clock=100_000), 5, 1000)
    assert e.value.code is ErrorCode.CLOCK_ROLLBACK


def test_concurrent_sessions_may_verify_slightly_out_of_order() -> None:
    check_clock(record(last_reset_count=5, last_clock=100_000), 5, 99_000)


def test_first_attestation_has_no_clock_history() -> None:
    check_clock(record(), 0, 0)  # last_reset_count = last_clock = -1


# -- in_window -----------------------------------------------------------------------------------


def at(hh: int, mm: int) -> float:
    return datetime(2024, 5, 17, hh, mm, 30, tzinfo=UTC).timestamp()


def test_no_window_is_always() -> None:
    assert all(in_window(None, at(h, 0)) for h in range(24))


@pytest.mark.parametrize(
    ("hh", "mm", "inside"),
    [(8, 0, True), (12, 0, True), (16, 59, True), (7, 59, False), (17, 0, False), (0, 0, False)],
)
def test_day_window(hh: int, mm: int, inside: bool) -> None:
    assert in_window((8 * 60, 17 * 60), at(hh, mm)) is inside


@pytest.mark.parametrize(
    ("hh", "mm", "inside"),
    [(22, 0, True), (23, 59, True), (0, 0, True), (5, 59, True), (6, 0, False), (12, 0, False),
     (21, 59, False)],
)
def test_window_over_midnight(hh: int, mm: int, inside: bool) -> None:
    assert in_window((22 * 60, 6 * 60), at(hh, mm)) is inside


def test_parse_window() -> None:
    assert AttestPolicy.parse_window("") is None
    assert AttestPolicy.parse_window("22:00-06:00") == (1320, 360)
    assert AttestPolicy.parse_window(" 08:30 - 17:00 ") == (510, 1020)
    assert AttestPolicy.parse_window("00:00-24:00") == (0, 1440)
    assert in_window((0, 1440), at(23, 59))


@pytest.mark.parametrize("text", ["8-17", "25:00-01:00", "08:00", "08:00-09:00-10:00", "a:b-c:d",
                                  "-1:00-02:00", "08:75-09:00", "08:00-09:-5", "24:30-01:00"])
def test_parse_bad_window(text: str) -> None:
    with pytest.raises(AttestgateError) as e:
        AttestPolicy.parse_window(text)
    assert e.value.code is ErrorCode.BAD_REQUEST


# -- matching_baseline ----------------------------------------------------------------------------


def test_matching_baseline_with_several() -> None:
    a, b, c = pcr_values(b"a"), pcr_values(b"b"), pcr_values(b"c")
    dev = make_device("multi", baselines=(a, b)).record
    assert matching_baseline(dev, a) == dev.baselines[0]
    assert matching_baseline(dev, b) == dev.baselines[1]
    assert matching_baseline(dev, c) is None
    mixed = {**a, 7: b[7]}
    assert matching_baseline(dev, mixed) is None
    fewer = {i: v for i, v in a.items() if i != 7}
    assert matching_baseline(dev, fewer) is None  # a missing PCR is a change
    assert matching_baseline(dev, {**a, 8: a[7]}) is None  # so is an extra one


def test_diff_view() -> None:
    assert diff_view((PcrChange(3, b"\x01", None),)) == [
        {"pcr": 3, "enrolled": "01", "current": ""}]


# -- the attest op ------------------------------------------------------------------------------


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def device(store: MemoryStore) -> TestDevice:
    dev = make_device("alice")
    store.devices[dev.device_id] = dev.record
    return dev


def deps(store: MemoryStore, p: AttestPolicy | None = None) -> AttestorDeps:
    return AttestorDeps(store, Vault(VAULT_KEY),
                        EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), SELECTION),
                        p or policy())


def quote(dev: TestDevice, pcrs: dict[int, bytes], *, nonce: bytes | None = None,
          **attest_kw: Any) -> dict[str, Any]:
    """What a client sends: TPM2_Quote over ``pcrs`` with qualifying data bound to H."""
    attest = quote_attest(pcrs, extra_data=quote_nonce(H) if nonce is None else nonce,
                          signer=tpm_name(dev.record.ak_public), **attest_kw)
    return {"device_id": dev.device_id, "h": H, "attest": attest,
            "signature": sign_data(dev.ak, attest),
            "pcrs": {str(i): v for i, v in pcrs.items()}}  # str keys, as msgpack carries them


def attest(store: MemoryStore, body: dict[str, Any], p: AttestPolicy | None = None,
           now: float = NOW) -> Reply:
    return handle(Request("r1", "attestor", "attest", body, now + 5), deps(store, p), now)


def audit_events(store: MemoryStore) -> list[str]:
    return [e.event for e in store.read_audit()]


def test_builder_ak_passes_check_ak(device: TestDevice) -> None:
    check_ak(device.record.ak_public)


def test_attest_accepted(store: MemoryStore, device: TestDevice) -> None:
    store.devices[device.device_id] = dataclasses.replace(device.record, failures=2)
    reply = attest(store, quote(device, device.pcrs, reset_count=5, clock=777))
    assert reply.ok
    # The server's view for the client: its status and the states it is accepted in.
    assert reply.body == {"device_id": device.device_id, "name": "alice", "status": "active",
                          "baselines": [{str(i): v for i, v in device.pcrs.items()}]}
    dev = store.devices[device.device_id]
    assert (dev.failures, dev.last_attest_at, dev.last_reset_count, dev.last_clock) == (
        0, NOW, 5, 777)
    assert audit_events(store) == ["attest_ok"]


def test_attest_accepts_a_second_approved_baseline(store: MemoryStore) -> None:
    old, new = pcr_values(b"old"), pcr_values(b"new")
    dev = make_device("two", baselines=(old, new))
    store.devices[dev.device_id] = dev.record
    assert attest(store, quote(dev, new)).ok


def test_reattest_uses_the_server_nonce(store: MemoryStore, device: TestDevice) -> None:
    server_nonce = b"\x07" * 16
    body = quote(device, device.pcrs, nonce=reattest_nonce(H, server_nonce))
    assert attest(store, {**body, "nonce": server_nonce}).ok
    # the same quote without the nonce is bound to something else
    assert attest(store, body).error is ErrorCode.QUOTE_BINDING


def test_one_pcr_changed(store: MemoryStore, device: TestDevice) -> None:
    now_pcrs = {**device.pcrs, 4: hashlib.sha256(b"new kernel").digest()}
    reply = attest(store, quote(device, now_pcrs))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert reply.body["changed"] == [
        {"pcr": 4, "enrolled": device.pcrs[4].hex(), "current": now_pcrs[4].hex()}]
    assert reply.body["failures"] == 1
    assert reply.body["max_failures"] == 3
    assert reply.body["status"] == "active"
    assert reply.events == ()
    dev = store.devices[device.device_id]
    assert dev.failures == 1
    assert dev.last_refused == Baseline.of(SELECTION, now_pcrs)  # kept for `approve`
    assert [c.index for c in dev.last_diff] == [4]
    entries = store.read_audit()
    assert [e.event for e in entries] == ["attest_refused"]
    assert '"code":"pcr_mismatch"' in entries[0].detail


def test_lock_after_max_failures(store: MemoryStore, device: TestDevice) -> None:
    bad = {**device.pcrs, 0: b"\xee" * 32}
    for n in (1, 2):
        reply = attest(store, quote(device, bad, clock=n))
        assert (reply.error, reply.body["failures"], reply.events) == (
            ErrorCode.PCR_MISMATCH, n, ())
    reply = attest(store, quote(device, bad, clock=3))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert reply.body["status"] == "locked"
    assert reply.events == (BusEvent(Event.DEVICE_LOCKED.value,
                                     {"device_id": device.device_id, "status": "locked"}),)
    assert store.devices[device.device_id].status is DeviceStatus.LOCKED
    assert audit_events(store) == ["attest_refused"] * 3 + ["consequence_lock"]
    # Locked: even a perfect quote is refused, and not counted again.
    reply = attest(store, quote(device, device.pcrs, clock=4))
    assert reply.error is ErrorCode.LOCKED
    assert reply.body == {}
    assert store.devices[device.device_id].failures == 3
    assert len(store.read_audit()) == 4


@pytest.mark.parametrize(
    ("status", "code"),
    [(DeviceStatus.LOCKED, ErrorCode.LOCKED), (DeviceStatus.REVOKED, ErrorCode.REVOKED),
     (DeviceStatus.REENROLL, ErrorCode.REENROLL_REQUIRED)],
)
def test_refused_status(store: MemoryStore, status: DeviceStatus, code: ErrorCode) -> None:
    dev = make_device("x", status=status)
    store.devices[dev.device_id] = dev.record
    assert attest(store, quote(dev, dev.pcrs)).error is code
    assert store.devices[dev.device_id] == dev.record


def test_quote_over_other_qualifying_data(store: MemoryStore, device: TestDevice) -> None:
    reply = attest(store, quote(device, device.pcrs, nonce=quote_nonce(b"\x00" * 32)))
    assert reply.error is ErrorCode.QUOTE_BINDING
    assert reply.body["failures"] == 1
    assert reply.body["changed"] == []
    assert store.devices[device.device_id].failures == 1
    assert audit_events(store) == ["attest_refused"]


def test_raw_handshake_hash_is_not_the_nonce(store: MemoryStore, device: TestDevice) -> None:
    assert attest(store, quote(device, device.pcrs, nonce=H)).error is ErrorCode.QUOTE_BINDING


def test_clock_rollback_is_counted(store: MemoryStore, device: TestDevice) -> None:
    assert attest(store, quote(device, device.pcrs, reset_count=5, clock=100_000)).ok
    reply = attest(store, quote(device, device.pcrs, reset_count=5, clock=1000))
    assert reply.error is ErrorCode.CLOCK_ROLLBACK
    assert store.devices[device.device_id].failures == 1
    assert attest(store, quote(device, device.pcrs, reset_count=6, clock=10)).ok  # a reboot


def test_quote_signed_by_other_key(store: MemoryStore, device: TestDevice) -> None:
    other = make_device("other")
    body = quote(other, device.pcrs)
    body["device_id"] = device.device_id
    reply = attest(store, body)
    assert reply.error is ErrorCode.QUOTE_INVALID
    assert store.devices[device.device_id].failures == 1


def test_pcr_values_not_matching_the_quote(store: MemoryStore, device: TestDevice) -> None:
    body = quote(device, device.pcrs)
    body["pcrs"] = {**body["pcrs"], "3": b"\x00" * 32}  # lie about PCR 3
    reply = attest(store, body)
    assert reply.error is ErrorCode.PCR_DIGEST
    assert store.devices[device.device_id].failures == 1


def test_flipped_attest_byte(store: MemoryStore, device: TestDevice) -> None:
    body = quote(device, device.pcrs)
    for i in range(0, len(body["attest"]), 7):
        reply = attest(store, {**body, "attest": flip(body["attest"], i)},
                       p=policy(max_failures=1000))
        assert reply.error is ErrorCode.QUOTE_INVALID, i


def test_wrong_selection_is_not_counted(store: MemoryStore, device: TestDevice) -> None:
    body = quote(device, device.pcrs)
    body["pcrs"] = {k: v for k, v in body["pcrs"].items() if k != "7"}
    reply = attest(store, body)
    assert reply.error is ErrorCode.BAD_REQUEST
    assert store.devices[device.device_id].failures == 0


def test_outside_window(store: MemoryStore, device: TestDevice) -> None:
    p = policy(window=(8 * 60, 9 * 60))
    reply = attest(store, quote(device, device.pcrs), p=p, now=at(12, 0))
    assert reply.error is ErrorCode.OUTSIDE_WINDOW
    assert audit_events(store) == ["attest_refused"]
    assert store.devices[device.device_id].failures == 0
    assert attest(store, quote(device, device.pcrs), p=p, now=at(8, 30)).ok


def test_unknown_device(store: MemoryStore) -> None:
    ghost = make_device("ghost")
    assert attest(store, quote(ghost, ghost.pcrs)).error is ErrorCode.UNKNOWN_DEVICE
    assert store.read_audit() == []


@pytest.mark.parametrize(
    "over",
    [{"h": b"\x00" * 31}, {"attest": b""}, {"signature": "sig"}, {"pcrs": {"0": b"\x00"}},
     {"pcrs": {"99": b"\x00" * 32}}, {"device_id": 5}],
)
def test_malformed_attest(store: MemoryStore, device: TestDevice, over: dict[str, Any]) -> None:
    reply = attest(store, {**quote(device, device.pcrs), **over})
    assert reply.error is ErrorCode.BAD_REQUEST
    assert store.devices[device.device_id].failures == 0


# -- parsed AK cache ---------------------------------------------------------------------


def test_ak_parsed_once_per_device_and_again_when_it_changes(store: MemoryStore,
                                                            device: TestDevice) -> None:
    d = deps(store)

    def run(body: dict[str, Any], now: float) -> Reply:
        return handle(Request("r1", "attestor", "attest", body, now + 5), d, now)

    for i in range(5):
        assert run(quote(device, device.pcrs, clock=100 + i), NOW + i).ok
    assert d.keys.parsed == 1
    # The device gets another AK (enrolled again): the old AK's quotes no longer pass.
    other = make_device("alice")
    store.devices[device.device_id] = dataclasses.replace(
        store.devices[device.device_id], ak_public=other.record.ak_public)
    stale = run(quote(device, device.pcrs, clock=200), NOW + 10)
    assert stale.error is ErrorCode.QUOTE_INVALID
    assert d.keys.parsed == 2
    fresh = quote(other, device.pcrs, clock=300)
    assert run({**fresh, "device_id": device.device_id}, NOW + 11).ok
    assert d.keys.parsed == 2
