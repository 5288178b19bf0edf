"""The device and audit store contract on MemoryStore and a real redis-server, with two
handles (two workers): the replay guard, updates that lose nothing to a concurrent
writer, and an audit chain that stays linked when two appenders interleave. On Redis
each of these is one Lua step (one round trip when nobody interferes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import redis

from shared.audit import AuditKey, Checkpoint, canonical, entry_hash, verify_chain
from shared.errors import AttestgateError, ErrorCode
from shared.keys import StaticKey, device_id_for
from shared.records import Baseline, Device, DeviceStatus
from shared.store.interface import Store
from shared.store.memory import MemoryStore
from shared.store.redis_store import AUDIT_HEAD, AUDIT_LOG, RedisStore
from tests.support.redis_server import RedisServer, RedisUnavailable

pytestmark = pytest.mark.integration

NOW = 1_700_000_000.0
KEY = AuditKey(b"\x07" * 32)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Iterator[tuple[Store, Store]]:
    if request.param == "memory":
        m = MemoryStore(audit_key=KEY)
        yield m, m
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    a, b = RedisStore(server.url, audit_key=KEY), RedisStore(server.url, audit_key=KEY)
    yield a, b
    a.close()
    b.close()


def make_device(name: str = "dev1") -> Device:
    noise = StaticKey.generate().public
    return Device(
        device_id=device_id_for(noise), name=name, noise_public=noise,
        status=DeviceStatus.ACTIVE, enrolled_at=NOW, ek_public=b"ek", ek_cert=b"",
        ek_fingerprint="f" * 64, ak_public=b"ak", srk_public=b"srk", post_public=b"post",
        baselines=(Baseline.of("sha256:0", {0: b"\0" * 32}),), psk_sealed=b"sealed")


def test_replay_guard_compares_nanoseconds_exactly(stores: tuple[Store, Store]) -> None:
    a, b = stores
    ts = 1_700_000_000_123_456_789  # beyond a double's integer precision
    assert a.advance_connect_ts("d", ts)
    assert not b.advance_connect_ts("d", ts)  # the same message 1 again
    assert not b.advance_connect_ts("d", ts - 1)
    assert b.advance_connect_ts("d", ts + 1)  # 1 ns later is newer
    assert not a.advance_connect_ts("d", ts)
    assert not a.advance_connect_ts("d", 999)  # fewer digits is older
    assert a.advance_connect_ts("other", 0)  # devices have their own guard


def test_device_lookup_by_noise_key(stores: tuple[Store, Store]) -> None:
    a, b = stores
    dev = make_device()
    a.create_device(dev, None)
    assert b.device_by_noise(dev.noise_public) == dev
    assert b.device_by_noise(b"\1" * 32) is None


def test_connect_lookup_gives_the_device_and_its_replay_guard(stores: tuple[Store, Store]
                                                              ) -> None:
    a, b = stores
    dev = make_device()
    a.create_device(dev, None)
    assert b.connect_lookup(dev.noise_public) == (dev, -1)  # never confirmed
    ts = 1_700_000_000_123_456_789
    a.advance_connect_ts(dev.device_id, ts)
    assert b.connect_lookup(dev.noise_public) == (dev, ts)  # exact, beyond a double
    assert b.connect_lookup(b"\1" * 32) is None


def test_confirm_connect_reads_the_device_and_advances_only_its_guard(
    stores: tuple[Store, Store]
) -> None:
    a, b = stores
    dev = make_device()
    a.create_device(dev, None)
    ts = 1_700_000_000_123_456_789
    assert b.confirm_connect(dev.device_id, ts) == dev
    assert a.last_connect_ts(dev.device_id) == ts
    assert a.confirm_connect(dev.device_id, ts - 1) == dev  # older: read, guard kept
    assert b.last_connect_ts(dev.device_id) == ts
    assert a.confirm_connect(dev.device_id, -1) == dev  # re-attestation: only the read
    assert b.last_connect_ts(dev.device_id) == ts
    assert b.confirm_connect(dev.device_id, ts + 1) == dev
    assert a.last_connect_ts(dev.device_id) == ts + 1
    # An unknown device: nothing to read, nothing recorded.
    assert a.confirm_connect("no-such-device", ts) is None
    assert b.last_connect_ts("no-such-device") == -1


def test_a_connect_lookup_sees_every_change_another_worker_made_at_once(
    stores: tuple[Store, Store]
) -> None:
    """The registry keeps what it parsed per device (the attestor rewrites the record at
    every attestation); a revocation, a lock, a new PSK, a deletion or a re-enrollment by
    another worker is what its very next lookup returns."""
    registry, other = stores
    dev = make_device()
    other.create_device(dev, None)

    def looked_up() -> Device | None:
        found = registry.connect_lookup(dev.noise_public)
        return None if found is None else found[0]

    assert looked_up() == dev
    for i in range(3):  # attestations: only the state changes
        other.update_device(dev.device_id, lambda d, i=i: dataclasses.replace(
            d, last_attest_at=NOW + i, last_clock=1000 + i, failures=0))
        assert looked_up() == other.get_device(dev.device_id)
    for change in ({"status": DeviceStatus.LOCKED}, {"status": DeviceStatus.ACTIVE},
                   {"psk_sealed": b"new sealed psk"}, {"status": DeviceStatus.REVOKED}):
        other.update_device(dev.device_id, lambda d, change=change: dataclasses.replace(
            d, **change, last_attest_at=NOW + 9))
        found = looked_up()
        assert found is not None and found == other.get_device(dev.device_id)
        for field, value in change.items():
            assert getattr(found, field) == value
    other.delete_device(dev.device_id)
    assert looked_up() is None
    again = dataclasses.replace(dev, enrolled_at=NOW + 50, psk_sealed=b"re-enrolled psk")
    other.create_device(again, None)  # the same Noise key enrolled again
    assert looked_up() == again


def test_updates_from_two_workers_lose_nothing(stores: tuple[Store, Store]) -> None:
    a, b = stores
    dev = make_device()
    a.create_device(dev, None)
    assert a.get_device(dev.device_id) == dev  # a now holds a copy it may update from
    for _ in range(3):
        b.update_device(dev.device_id, lambda d: dataclasses.replace(d, failures=d.failures + 1))
    a.update_device(dev.device_id, lambda d: dataclasses.replace(d, failures=d.failures + 10))
    b.update_device(dev.device_id, lambda d: dataclasses.replace(d, failures=d.failures + 100))
    stored = a.get_device(dev.device_id)
    assert stored is not None and stored.failures == 113


def test_update_of_a_removed_device_is_unknown(stores: tuple[Store, Store]) -> None:
    a, b = stores
    dev = make_device()
    a.create_device(dev, None)
    a.get_device(dev.device_id)
    b.purge()
    with pytest.raises(AttestgateError) as err:
        a.update_device(dev.device_id, lambda d: d)
    assert err.value.code is ErrorCode.UNKNOWN_DEVICE


def test_interleaved_audit_appends_stay_one_chain(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(20):
        (a if i % 3 else b).append_audit("attest_ok", f"d{i}", {"n": i}, NOW + i)
    entries = a.read_audit()
    assert [e.device_id for e in entries] == [f"d{i}" for i in range(20)]
    assert verify_chain(entries, b.audit_head(), KEY) == []


def test_per_request_commands_survive_a_script_flush_and_a_dropped_connection(
    redis_server: RedisServer
) -> None:
    """The commands of every connect and post run on a connection of their own: a Redis
    that forgot its scripts (restart, SCRIPT FLUSH) or dropped that connection still
    answers them (the script is loaded again, the connection reopened)."""
    redis_server.flushall()
    store = RedisStore(redis_server.url, audit_key=KEY)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        dev = make_device()
        store.create_device(dev, None)
        assert store.confirm_connect(dev.device_id, 5) == dev
        admin.script_flush()
        assert store.confirm_connect(dev.device_id, 6) == dev
        assert store.connect_lookup(dev.noise_public) == (dev, 6)
        admin.client_kill_filter(_type="normal", skipme=True)
        assert store.get_device(dev.device_id) == dev
        entry = store.append_audit("attest_ok", dev.device_id, {"n": 1}, NOW)
        assert [e.hash for e in store.read_audit(dev.device_id)] == [entry.hash]
    finally:
        store.close()
        admin.close()


class _Checkpoints:
    """A checkpoint sink that keeps what it is given (the store's CheckpointSink)."""

    def __init__(self) -> None:
        self.got: list[Checkpoint] = []

    def record(self, checkpoint: Checkpoint) -> None:
        self.got.append(checkpoint)


@pytest.mark.parametrize("another_writer_meanwhile", [False, True])
def test_an_audit_append_resent_after_a_lost_reply_is_stored_once(
    redis_server: RedisServer, another_writer_meanwhile: bool
) -> None:
    """The append reached Redis but its reply was lost (a timeout, a dropped connection),
    so the store sends it again. By then the entry is the head, or below it when another
    writer appended meanwhile: it is acknowledged where it stands (its position in the
    checkpoint), never chained a second time (one audit entry per decision)."""
    redis_server.flushall()
    sink = _Checkpoints()
    store = RedisStore(redis_server.url, audit_key=KEY, checkpoints=sink)
    other = RedisStore(redis_server.url, audit_key=KEY)
    try:
        store.append_audit("attest_ok", "d0", {"n": 0}, NOW)
        prev, detail = store.audit_head(), {"n": 1}
        h = entry_hash(KEY, prev, NOW + 1, "attest_ok", "d1", canonical(detail))
        # The first send, whose reply never came back.
        store._append_audit(keys=[AUDIT_LOG, AUDIT_HEAD],
                            args=[prev, repr(NOW + 1), "attest_ok", "d1", canonical(detail), h])
        if another_writer_meanwhile:
            other.append_audit("attest_ok", "d2", {"n": 2}, NOW + 2)
        entry = store.append_audit("attest_ok", "d1", detail, NOW + 1)  # the resend
        entries = store.read_audit()
        assert [e.device_id for e in entries] == (
            ["d0", "d1", "d2"] if another_writer_meanwhile else ["d0", "d1"])
        assert (entry.hash, entry.prev, entry.entry_id) == (h, prev, entries[1].entry_id)
        assert (sink.got[-1].count, sink.got[-1].head) == (2, h)
        assert verify_chain(entries, store.audit_head(), KEY) == []
        # The chain goes on from the real head.
        store.append_audit("attest_ok", "d3", {"n": 3}, NOW + 3)
        assert verify_chain(store.read_audit(), store.audit_head(), KEY) == []
    finally:
        store.close()
        other.close()
