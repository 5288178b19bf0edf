"""Board, registry and attestor on one MemoryBus: requests reach the handlers, events come out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from device_builders import NOW, SELECTION, VAULT_KEY, TestDevice, make_device
from tpm_builders import quote_attest, sign_data, sign_digest, tpm_name

from services.attestor.enroll import EnrollSettings, quote_nonce
from services.attestor.handler import AttestorDeps
from services.attestor.handler import handle as attestor_handle
from services.attestor.policy import AttestPolicy
from services.board.handler import BoardDeps
from services.board.handler import handle as board_handle
from services.registry.handler import RegistryDeps
from services.registry.handler import handle as registry_handle
from shared.bus.interface import BusEvent
from shared.bus.memory import MemoryBus
from shared.config import Consequence, EnrollPolicy
from shared.errors import ErrorCode
from shared.keys import session_psk
from shared.posts import post_digest
from shared.records import DeviceStatus
from shared.store.memory import MemoryStore
from shared.vault import Vault
from shared.wire import Event, Service

H = b"\x33" * 32
TIMEOUT = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def stack(max_failures: int = 2) -> tuple[MemoryBus, MemoryStore, TestDevice]:
    store, vault = MemoryStore(), Vault(VAULT_KEY)
    dev = make_device("alice", vault=vault)
    store.devices[dev.device_id] = dev.record
    bus = MemoryBus(clock=Clock())
    bus.register(Service.BOARD.value, board_handle, BoardDeps(store))
    bus.register(Service.REGISTRY.value, registry_handle, RegistryDeps(store, vault, False))
    bus.register(Service.ATTESTOR.value, attestor_handle, AttestorDeps(
        store, vault, EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), SELECTION),
        AttestPolicy(SELECTION, max_failures, Consequence.LOCK, None)))
    return bus, store, dev


async def next_event(events: AsyncIterator[BusEvent]) -> BusEvent:
    return await asyncio.wait_for(anext(events), 1.0)


def attest_body(dev: TestDevice, pcrs: dict[int, bytes]) -> dict[str, Any]:
    attest = quote_attest(pcrs, extra_data=quote_nonce(H), signer=tpm_name(dev.record.ak_public))
    return {"device_id": dev.device_id, "h": H, "attest": attest,
            "signature": sign_data(dev.ak, attest), "pcrs": {str(i): v for i, v in pcrs.items()}}


def test_post_through_the_bus_is_published() -> None:
    async def scenario() -> None:
        bus, store, dev = stack()
        events = bus.events()  # subscribed from here on
        key = b"k" * 16
        ts = int(NOW * 1000)
        body = {"device_id": dev.device_id, "ts": ts, "text": "over the bus",
                "key": key, "signature": sign_digest(dev.post_key,
                                                     post_digest(dev.device_id, ts, key,
                                                                 "over the bus"))}
        reply = await bus.request("board", "post", body, request_id="p1", timeout=TIMEOUT)
        assert reply.ok and reply.body["created"] is True
        event = await next_event(events)
        assert event.topic == Event.NEW_POST.value
        assert event.body["post_id"] == reply.body["post_id"]
        assert event.body["text"] == "over the bus"
        assert store.count_posts() == 1
        read = await bus.request("board", "read", {}, request_id="r1", timeout=TIMEOUT)
        assert [p["text"] for p in read.body["posts"]] == ["over the bus"]
        await bus.close()

    asyncio.run(scenario())


def test_registry_connect_through_the_bus() -> None:
    async def scenario() -> None:
        bus, store, dev = stack()
        e_i, e_r = b"\x01" * 32, b"\x02" * 32
        reply = await bus.request("registry", "connect",
                                  {"noise_public": dev.noise.public, "e_i": e_i, "e_r": e_r,
                                   "ts": 1}, request_id="c1", timeout=TIMEOUT)
        assert reply.ok
        assert reply.body["psk"] == session_psk(dev.device_psk, e_i, e_r).value
        store.advance_connect_ts(dev.device_id, 1)  # what the attestor records once confirmed
        again = await bus.request("registry", "connect",
                                  {"noise_public": dev.noise.public, "e_i": e_i, "e_r": e_r,
                                   "ts": 1}, request_id="c2", timeout=TIMEOUT)
        assert again.error is ErrorCode.PROTOCOL
        assert again.body == {}
        await bus.close()

    asyncio.run(scenario())


def test_attestation_failures_lock_and_publish() -> None:
    async def scenario() -> None:
        bus, store, dev = stack(max_failures=2)
        events = bus.events()
        ok = await bus.request("attestor", "attest", attest_body(dev, dev.pcrs),
                               request_id="a0", timeout=TIMEOUT)
        assert ok.ok and ok.body["name"] == "alice"
        bad = {**dev.pcrs, 5: b"\x55" * 32}
        first = await bus.request("attestor", "attest", attest_body(dev, bad),
                                  request_id="a1", timeout=TIMEOUT)
        assert first.error is ErrorCode.PCR_MISMATCH
        assert [c["pcr"] for c in first.body["changed"]] == [5]
        second = await bus.request("attestor", "attest", attest_body(dev, bad),
                                   request_id="a2", timeout=TIMEOUT)
        assert second.error is ErrorCode.PCR_MISMATCH
        assert second.body["status"] == "locked"
        event = await next_event(events)
        assert (event.topic, event.body) == (
            Event.DEVICE_LOCKED.value, {"device_id": dev.device_id, "status": "locked"})
        assert store.devices[dev.device_id].status is DeviceStatus.LOCKED
        status = await bus.request("registry", "status", {"device_id": dev.device_id},
                                   request_id="s1", timeout=TIMEOUT)
        assert (status.body["status"], status.body["failures"]) == ("locked", 2)
        locked = await bus.request("attestor", "attest", attest_body(dev, dev.pcrs),
                                   request_id="a3", timeout=TIMEOUT)
        assert locked.error is ErrorCode.LOCKED
        await bus.close()

    asyncio.run(scenario())


def test_unknown_service_and_op() -> None:
    async def scenario() -> None:
        bus, _store, _dev = stack()
        nobody = await bus.request("mailer", "send", {}, request_id="m1", timeout=TIMEOUT)
        assert nobody.error is ErrorCode.SERVICE_UNAVAILABLE
        unknown = await bus.request("board", "delete", {}, request_id="d1", timeout=TIMEOUT)
        assert unknown.error is ErrorCode.UNKNOWN_COMMAND
        await bus.close()

    asyncio.run(scenario())
