"""Device names are unique case-insensitively on the real store: ``DEV1`` after ``dev1`` is
``name_taken`` and nothing is stored; admin lookups by name ignore case."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.registry.admin import main as admin_main
from services.registry.handler import RegistryDeps, handle
from shared.audit import AuditKey
from shared.bus.interface import Request
from shared.errors import AttestgateError, ErrorCode
from shared.keys import device_id_for
from shared.records import Baseline, Device, DeviceStatus
from shared.store.interface import PENDING_ENROLLED
from shared.store.redis_store import RedisStore
from shared.store.serialize import device_to_bytes
from shared.vault import StoreUsage, Vault, init_server_home
from tests.support.redis_server import RedisServer, RedisUnavailable

pytestmark = pytest.mark.integration

H = "ab" * 32


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStore]:
    redis_server.flushall()
    s = RedisStore(redis_server.url, audit_key=AuditKey(b"\x01" * 32))
    yield s
    s.close()


def device(name: str, seed: str) -> Device:
    noise = hashlib.sha256(seed.encode()).digest()
    return Device(
        device_id=device_id_for(noise), name=name, noise_public=noise,
        status=DeviceStatus.ACTIVE, enrolled_at=1.0, ek_public=b"\x00\x01e", ek_cert=b"",
        ek_fingerprint=hashlib.sha256(b"ek" + noise).hexdigest(), ak_public=b"\x00\x01a",
        srk_public=b"\x00\x01s", post_public=b"\x00\x01p",
        baselines=(Baseline.of("sha256:0", {0: b"\x00" * 32}),), psk_sealed=b"\x5a" * 60,
    )


def test_store_refuses_a_name_differing_only_in_case(store: RedisStore) -> None:
    first = device("dev1", "a")
    store.create_device(first, None)
    keys_before = sorted(store.raw().keys("ag:*"))
    with pytest.raises(AttestgateError) as info:
        store.create_device(device("DEV1", "b"), None)
    assert info.value.code is ErrorCode.NAME_TAKEN
    assert sorted(store.raw().keys("ag:*")) == keys_before
    assert [d.device_id for d in store.list_devices()] == [first.device_id]
    for spelling in ("dev1", "DEV1", "Dev1"):
        found = store.device_by_name(spelling)
        assert found is not None and found.device_id == first.device_id


def test_registry_register_of_DEV1_after_dev1_is_name_taken(store: RedisStore) -> None:
    first = device("dev1", "a")
    store.create_device(first, None)
    twin = device("DEV1", "b")
    store.put_pending(PENDING_ENROLLED + H, device_to_bytes(twin), 60)
    deps = RegistryDeps(store, Vault(b"\x11" * 32), True)
    reply = handle(Request("r1", "registry", "register", {"h": H}, 1e12), deps, 1.0)
    assert reply.error is ErrorCode.NAME_TAKEN
    assert store.get_device(twin.device_id) is None
    assert store.read_audit() == []  # nothing stored, not even an audit entry
    assert [d.device_id for d in store.list_devices()] == [first.device_id]


def test_admin_finds_a_device_by_name_in_any_case(
        store: RedisStore, redis_server: RedisServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    init_server_home(tmp_path / "server", lambda: StoreUsage(0, 0))
    monkeypatch.setenv("ATTESTGATE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("ATTESTGATE_SERVER_HOME", str(tmp_path / "server"))
    first = device("dev1", "a")
    store.create_device(first, None)
    for spelling in ("dev1", "DEV1"):
        assert admin_main(["show", spelling, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["device_id"] == first.device_id


def test_an_index_from_before_casefolding_is_migrated(store: RedisStore) -> None:
    legacy = device("Alpha", "a")
    store.create_device(legacy, None)
    r = store.raw()
    r.hdel("ag:{reg}:idx:name", "alpha")
    r.hset("ag:{reg}:idx:name", "Alpha", legacy.device_id)  # as the old code wrote it
    found = store.device_by_name("Alpha")
    assert found is not None and found.device_id == legacy.device_id  # exact spelling still
    assert store.migrate_name_index() == 1
    assert store.migrate_name_index() == 0
    for spelling in ("alpha", "ALPHA", "Alpha"):
        found = store.device_by_name(spelling)
        assert found is not None and found.device_id == legacy.device_id
    with pytest.raises(AttestgateError) as info:
        store.create_device(device("alpha", "b"), None)
    assert info.value.code is ErrorCode.NAME_TAKEN
