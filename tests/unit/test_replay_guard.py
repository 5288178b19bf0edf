"""The reconnect replay guard across the registry (message 1) and the attestor (key confirmed).

Message 1 of IKpsk2 proves only the Noise key, which a thief may hold without the TPM.
So the registry only *checks* message 1's timestamp against the newest confirmed one,
and the attestor *records* it when the gateway forwards the first transport message,
which decrypted only because the device's TPM computed the session PSK.
"""

from __future__ import annotations

from typing import Any

import pytest
from device_builders import NOW, SELECTION, VAULT_KEY, TestDevice, make_device
from tpm_builders import quote_attest, sign_data, tpm_name

from services.attestor.enroll import EnrollSettings, quote_nonce
from services.attestor.handler import AttestorDeps
from services.attestor.handler import handle as attestor
from services.attestor.policy import AttestPolicy
from services.registry.handler import RegistryDeps
from services.registry.handler import handle as registry
from shared.bus.interface import Reply, Request
from shared.config import Consequence, EnrollPolicy
from shared.errors import ErrorCode
from shared.store.memory import MemoryStore
from shared.timing import CONNECT_TS_AHEAD
from shared.vault import Vault

H = b"\xcd" * 32


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def device(store: MemoryStore) -> TestDevice:
    dev = make_device("alice")
    store.devices[dev.device_id] = dev.record
    return dev


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def message1(store: MemoryStore, dev: TestDevice, ts: int, now: float = NOW) -> Reply:
    """The gateway's registry lookup for a message 1 carrying ``ts``."""
    body = {"noise_public": dev.noise.public, "e_i": b"\x0a" * 32, "e_r": b"\x0b" * 32,
            "ts": ts}
    return registry(Request("r1", "registry", "connect", body, now + 5),
                    RegistryDeps(store, Vault(VAULT_KEY), False), now)


def confirmed(store: MemoryStore, dev: TestDevice, ts: int, now: float = NOW) -> Reply:
    """The first transport message decrypted: the gateway forwards the quote and ``ts``."""
    attest = quote_attest(dev.pcrs, extra_data=quote_nonce(H),
                          signer=tpm_name(dev.record.ak_public))
    body: dict[str, Any] = {"device_id": dev.device_id, "h": H, "ts": ts, "attest": attest,
                            "signature": sign_data(dev.ak, attest),
                            "pcrs": {str(i): v for i, v in dev.pcrs.items()}}
    deps = AttestorDeps(store, Vault(VAULT_KEY),
                        EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), SELECTION),
                        AttestPolicy(SELECTION, 3, Consequence.LOCK, None))
    return attestor(Request("r2", "attestor", "attest", body, now + 5), deps, now)


def test_message1_alone_records_nothing(store: MemoryStore, device: TestDevice) -> None:
    """A lookup is read-only, so the bus may retry it on another worker."""
    assert message1(store, device, 100).ok
    assert message1(store, device, 100).ok  # the same message 1 again: not yet confirmed
    assert store.last_connect_ts(device.device_id) == -1


@pytest.mark.parametrize("replayed_ts", [100, 99, 0])
def test_confirmed_timestamp_refuses_replays(store: MemoryStore, device: TestDevice,
                                             replayed_ts: int) -> None:
    assert message1(store, device, 100).ok
    assert confirmed(store, device, 100).ok
    reply = message1(store, device, replayed_ts)
    assert reply.error is ErrorCode.PROTOCOL
    assert "psk" not in reply.body
    assert message1(store, device, 101).ok  # newer still works


def test_stolen_noise_key_cannot_move_the_guard(store: MemoryStore, device: TestDevice) -> None:
    """The thief's message 1 with the largest timestamp gets message 2 (which it cannot
    answer without the TPM), and the owner's next connect is not refused at all."""
    assert message1(store, device, 2**63 - 1).ok
    assert store.last_connect_ts(device.device_id) == -1
    assert message1(store, device, _ns(NOW)).ok


def test_confirmed_far_future_timestamp_is_capped(store: MemoryStore,
                                                  device: TestDevice) -> None:
    """A device whose clock once ran years ahead is not locked out once it is corrected."""
    assert confirmed(store, device, 2**63 - 1).ok
    assert store.last_connect_ts(device.device_id) == _ns(NOW + CONNECT_TS_AHEAD)
    later = NOW + CONNECT_TS_AHEAD + 0.001
    assert message1(store, device, _ns(later), now=later).ok


def test_device_clock_ahead_keeps_connecting(store: MemoryStore, device: TestDevice) -> None:
    """An hour-fast device connects every time. (Its guard sits at the server's clock +
    CONNECT_TS_AHEAD, so a replay of its message 1 is not dropped early: it gets message 2,
    which only the device's TPM can answer, and is closed at key confirmation.)"""
    ahead = 3600.0
    for i in range(3):
        now = NOW + i * 0.001
        assert message1(store, device, _ns(now + ahead), now=now).ok
        assert confirmed(store, device, _ns(now + ahead), now=now).ok
    assert store.last_connect_ts(device.device_id) == _ns(NOW + 0.002 + CONNECT_TS_AHEAD)


def test_sessions_confirmed_out_of_order_both_open(store: MemoryStore,
                                                   device: TestDevice) -> None:
    """Two sessions of one device: the newer one's first message arrives first."""
    assert message1(store, device, 200).ok
    assert message1(store, device, 201).ok
    assert confirmed(store, device, 201).ok
    assert confirmed(store, device, 200).ok  # no error: its message 1 was checked in time
    assert store.last_connect_ts(device.device_id) == 201
