"""The registry handler: enrollment PSKs, the reconnect lookup, registration, status."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from device_builders import NOW, VAULT_KEY, TestDevice, make_device

from services.registry.handler import RegistryDeps, handle
from shared.bus.interface import Reply, Request
from shared.errors import ErrorCode
from shared.keys import enroll_psk, session_psk
from shared.records import DeviceStatus, Token, refusal_for
from shared.store.interface import PENDING_ENROLLED
from shared.store.memory import MemoryStore
from shared.store.serialize import device_to_bytes
from shared.vault import Vault

E_I = b"\x0a" * 32
E_R = b"\x0b" * 32
TOKEN_ID = "0011223344556677"
H = "ab" * 32


def deps(store: MemoryStore, *, open_enrollment: bool = False,
         vault: Vault | None = None) -> RegistryDeps:
    return RegistryDeps(store, vault or Vault(VAULT_KEY), open_enrollment)


def call(d: RegistryDeps, op: str, body: dict[str, Any], now: float = NOW) -> Reply:
    return handle(Request("r1", "registry", op, body, now + 5), d, now)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# -- token_psk ------------------------------------------------------------------------------------


def test_open_enrollment(store: MemoryStore) -> None:
    reply = call(deps(store, open_enrollment=True), "token_psk", {"token_id": ""})
    assert reply.ok
    assert reply.body["psk"] == enroll_psk(b"").value
    assert call(deps(store, open_enrollment=True), "token_psk", {}).body["psk"] == (
        enroll_psk(b"").value)


def test_open_enrollment_off(store: MemoryStore) -> None:
    assert call(deps(store), "token_psk", {"token_id": ""}).error is ErrorCode.BAD_TOKEN
    assert call(deps(store), "token_psk", {}).error is ErrorCode.BAD_TOKEN


def test_token(store: MemoryStore) -> None:
    psk = enroll_psk(b"secret").value
    store.put_token(Token(TOKEN_ID, psk, NOW - 10, NOW + 60))
    for d in (deps(store), deps(store, open_enrollment=True)):
        reply = call(d, "token_psk", {"token_id": TOKEN_ID})
        assert reply.ok
        assert reply.body == {"psk": psk}
    assert TOKEN_ID in store.tokens  # looking a token up does not use it


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1])
def test_expired_token(store: MemoryStore, expires_at: float) -> None:
    store.put_token(Token(TOKEN_ID, b"p" * 32, NOW - 100, expires_at))
    reply = call(deps(store, open_enrollment=True), "token_psk", {"token_id": TOKEN_ID})
    assert reply.error is ErrorCode.BAD_TOKEN
    assert reply.body == {}


def test_unknown_token(store: MemoryStore) -> None:
    reply = call(deps(store, open_enrollment=True), "token_psk", {"token_id": "ffffffffffffffff"})
    assert reply.error is ErrorCode.BAD_TOKEN


def test_token_id_too_long(store: MemoryStore) -> None:
    reply = call(deps(store), "token_psk", {"token_id": TOKEN_ID + "00"})
    assert reply.error is ErrorCode.BAD_REQUEST


# -- connect --------------------------------------------------------------------------------------


@pytest.fixture
def device(store: MemoryStore) -> TestDevice:
    dev = make_device("alice")
    store.devices[dev.device_id] = dev.record
    return dev


def connect_body(dev: TestDevice, ts: int, **over: Any) -> dict[str, Any]:
    return {"noise_public": dev.noise.public, "e_i": E_I, "e_r": E_R, "ts": ts, **over}


def test_connect(store: MemoryStore, device: TestDevice) -> None:
    reply = call(deps(store), "connect", connect_body(device, 100))
    assert reply.ok
    assert reply.body["device_id"] == device.device_id
    assert reply.body["name"] == "alice"
    assert reply.body["status"] == "active"
    # The device PSK was sealed by the Vault under the device id; the session PSK covers e_i||e_r.
    assert reply.body["psk"] == session_psk(device.device_psk, E_I, E_R).value
    assert reply.body["psk"] != session_psk(device.device_psk, E_R, E_I).value


def test_connect_psk_depends_on_ephemerals(store: MemoryStore, device: TestDevice) -> None:
    a = call(deps(store), "connect", connect_body(device, 1)).body["psk"]
    b = call(deps(store), "connect", connect_body(device, 2, e_r=b"\x0c" * 32)).body["psk"]
    assert a != b


def test_connect_reports_status(store: MemoryStore) -> None:
    dev = make_device("locked", status=DeviceStatus.LOCKED)
    store.devices[dev.device_id] = dev.record
    reply = call(deps(store), "connect", connect_body(dev, 1))
    assert reply.body["status"] == "locked"
    assert refusal_for(DeviceStatus(reply.body["status"])) is ErrorCode.LOCKED


def test_refusal_for_every_status() -> None:
    assert {s: refusal_for(s) for s in DeviceStatus} == {
        DeviceStatus.ACTIVE: None,
        DeviceStatus.LOCKED: ErrorCode.LOCKED,
        DeviceStatus.REVOKED: ErrorCode.REVOKED,
        DeviceStatus.REENROLL: ErrorCode.REENROLL_REQUIRED,
    }


def test_connect_unknown_key(store: MemoryStore, device: TestDevice) -> None:
    reply = call(deps(store), "connect", connect_body(device, 1, noise_public=b"\x99" * 32))
    assert reply.error is ErrorCode.UNKNOWN_DEVICE
    assert reply.body == {}


def test_connect_with_other_vault_key(store: MemoryStore, device: TestDevice) -> None:
    reply = call(deps(store, vault=Vault(b"\x22" * 32)), "connect", connect_body(device, 1))
    assert reply.error is ErrorCode.INTERNAL
    assert reply.body == {}


def test_sealed_psk_copied_to_other_device_is_useless(store: MemoryStore,
                                                      device: TestDevice) -> None:
    mallory = make_device("mallory")
    # mallory's record carries alice's sealed PSK: it is bound to alice's device id.
    store.devices[mallory.device_id] = dataclasses.replace(
        mallory.record, psk_sealed=device.record.psk_sealed)
    reply = call(deps(store), "connect", connect_body(mallory, 1))
    assert reply.error is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    "over",
    [{"e_i": b"\x01" * 31}, {"e_r": b"\x01" * 33}, {"ts": -1}, {"ts": True}, {"ts": 1.5},
     {"noise_public": "00" * 32}],
)
def test_connect_malformed(store: MemoryStore, device: TestDevice, over: dict[str, Any]) -> None:
    body = {**connect_body(device, 1), **over}
    assert call(deps(store), "connect", body).error is ErrorCode.BAD_REQUEST


# -- register -------------------------------------------------------------------------------------


def pending(store: MemoryStore, dev: TestDevice, h: str = H) -> None:
    store.put_pending(PENDING_ENROLLED + h, device_to_bytes(dev.record), 120)


def test_register(store: MemoryStore) -> None:
    dev = make_device("alice")
    store.put_token(Token(TOKEN_ID, b"p" * 32, NOW, NOW + 60))
    pending(store, dev)
    reply = call(deps(store), "register", {"h": H, "token_id": TOKEN_ID})
    assert reply.ok
    assert reply.body == {"device_id": dev.device_id}
    assert store.get_device(dev.device_id) == dev.record
    assert TOKEN_ID not in store.tokens  # the token is used up
    assert PENDING_ENROLLED + H not in store.pending
    assert [(e.event, e.device_id) for e in store.read_audit()] == [("enrolled", dev.device_id)]


def test_register_open_enrollment(store: MemoryStore) -> None:
    dev = make_device("alice")
    pending(store, dev)
    assert call(deps(store, open_enrollment=True), "register", {"h": H}).ok
    assert store.get_device(dev.device_id) is not None


def test_register_twice(store: MemoryStore) -> None:
    dev = make_device("alice")
    pending(store, dev)
    assert call(deps(store), "register", {"h": H}).ok
    reply = call(deps(store), "register", {"h": H})
    assert reply.error is ErrorCode.PROTOCOL
    assert len(store.devices) == 1
    assert len(store.read_audit()) == 1


def test_register_without_verified_enrollment(store: MemoryStore) -> None:
    dev = make_device("alice")
    pending(store, dev, h="cd" * 32)
    reply = call(deps(store), "register", {"h": H})
    assert reply.error is ErrorCode.PROTOCOL
    assert store.devices == {}


def assert_nothing_stored(store: MemoryStore, before: int) -> None:
    assert len(store.devices) == before
    assert len(store.read_audit()) == 0


def test_register_name_taken(store: MemoryStore, device: TestDevice) -> None:
    twin = make_device("alice")  # other TPM, other keys, same name
    store.put_token(Token(TOKEN_ID, b"p" * 32, NOW, NOW + 60))
    pending(store, twin)
    reply = call(deps(store), "register", {"h": H, "token_id": TOKEN_ID})
    assert reply.error is ErrorCode.NAME_TAKEN
    assert_nothing_stored(store, 1)
    assert store.get_device(twin.device_id) is None
    assert TOKEN_ID in store.tokens  # not used up by a failed registration


@pytest.mark.parametrize("name", ["ALICE", "Alice", "aLiCe"])
def test_register_name_differing_only_in_case_is_taken(store: MemoryStore, device: TestDevice,
                                                       name: str) -> None:
    twin = make_device(name)  # other TPM, other keys; "alice" is enrolled
    pending(store, twin)
    reply = call(deps(store), "register", {"h": H})
    assert reply.error is ErrorCode.NAME_TAKEN
    assert_nothing_stored(store, 1)
    assert store.get_device(twin.device_id) is None
    found = store.device_by_name(name)
    assert found is not None and found.device_id == device.record.device_id


def test_register_same_noise_key_again(store: MemoryStore, device: TestDevice) -> None:
    again = dataclasses.replace(device.record, name="alice2")
    store.put_pending(PENDING_ENROLLED + H, device_to_bytes(again), 120)
    reply = call(deps(store), "register", {"h": H})
    assert reply.error is ErrorCode.ALREADY_ENROLLED
    assert store.get_device(device.device_id) == device.record
    assert_nothing_stored(store, 1)


def test_register_with_used_token(store: MemoryStore) -> None:
    dev = make_device("alice")
    pending(store, dev)
    reply = call(deps(store), "register", {"h": H, "token_id": TOKEN_ID})  # no such token
    assert reply.error is ErrorCode.BAD_TOKEN
    assert_nothing_stored(store, 0)


def test_register_device_id_must_match_key(store: MemoryStore) -> None:
    dev = make_device("alice")
    forged = dataclasses.replace(dev.record, device_id="0" * 32)
    store.put_pending(PENDING_ENROLLED + H, device_to_bytes(forged), 120)
    reply = call(deps(store), "register", {"h": H})
    assert reply.error is ErrorCode.INTERNAL
    assert_nothing_stored(store, 0)


# -- status ---------------------------------------------------------------------------------------


def test_status(store: MemoryStore, device: TestDevice) -> None:
    reply = call(deps(store), "status", {"device_id": device.device_id})
    assert reply.ok
    assert reply.body["device_id"] == device.device_id
    assert reply.body["name"] == "alice"
    assert reply.body["status"] == "active"
    assert reply.body["failures"] == 0
    assert reply.body["selection"] == device.record.baselines[0].selection
    assert reply.body["approved_baselines"] == 1
    assert not any(isinstance(v, bytes) for v in reply.body.values())  # no keys, no PSK


def test_status_unknown(store: MemoryStore) -> None:
    assert call(deps(store), "status", {"device_id": "nope"}).error is ErrorCode.UNKNOWN_DEVICE


def test_unknown_op(store: MemoryStore) -> None:
    assert call(deps(store), "unregister", {}).error is ErrorCode.UNKNOWN_COMMAND


# -- token_failed (enrollment-token brute force) --------------------------------------------------


def test_wrong_secrets_are_counted_audited_then_the_token_is_burned(store: MemoryStore) -> None:
    store.put_token(Token(TOKEN_ID, enroll_psk(b"secret").value, NOW - 10, NOW + 60))
    d = dataclasses.replace(deps(store), token_max_failures=3)
    replies = [call(d, "token_failed", {"token_id": TOKEN_ID}) for _ in range(3)]
    assert [(r.body["failures"], r.body["burned"]) for r in replies] == [
        (1, False), (2, False), (3, True)]
    assert call(d, "token_psk", {"token_id": TOKEN_ID}).error is ErrorCode.BAD_TOKEN
    assert call(d, "token_failed", {"token_id": TOKEN_ID}).error is ErrorCode.BAD_TOKEN
    events = [e.event for e in store.read_audit()]
    assert events == ["token_failed"] * 3 + ["token_burned"]


def test_token_failed_needs_a_token_id(store: MemoryStore) -> None:
    assert call(deps(store), "token_failed", {}).error is ErrorCode.BAD_REQUEST
    assert call(deps(store), "token_failed", {"token_id": "zz" * 20}).error in (
        ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
