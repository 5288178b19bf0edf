"""The post store contract, on MemoryStore and on a real redis-server: idempotent append,
per-device token bucket (one Lua step shared by every worker), expiring idempotency keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.errors import AttestgateError, ErrorCode
from shared.records import Post
from shared.store.interface import PostQuota, Store
from shared.store.memory import MemoryStore
from shared.store.redis_store import BOARD, RedisStore
from shared.store.serialize import post_fields
from tests.support.redis_server import RedisServer, RedisUnavailable

pytestmark = pytest.mark.integration

NOW = 1_700_000_000.0
QUOTA = PostQuota(5.0, 20, 86_400.0)  # the documented defaults


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
    """Two handles on one store: two board workers sharing it."""
    if request.param == "memory":
        m = MemoryStore()
        yield m, m
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    a, b = RedisStore(server.url), RedisStore(server.url)
    yield a, b
    a.close()
    b.close()


def add(store: Store, i: int, now: float, device: str = "dev-a", quota: PostQuota = QUOTA,
        key: bytes | None = None) -> tuple[str, bool]:
    k = key or f"key-{i:012d}".encode()
    fields = post_fields(Post("", device, f"post {i}", int(now * 1000), k, b"sig", now))
    return store.add_post(k + device.encode(), fields, device_id=device, now=now, quota=quota)


def refused(store: Store, i: int, now: float, device: str = "dev-a") -> bool:
    try:
        add(store, i, now, device)
    except AttestgateError as exc:
        assert exc.code is ErrorCode.RATE_LIMITED
        return True
    return False


def test_burst_shared_by_two_workers_then_refused(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(20):
        assert add(a if i % 2 else b, i, NOW)[1] is True
    assert refused(a, 20, NOW) and refused(b, 21, NOW + 0.1)
    assert a.count_posts() == 20  # nothing stored on refusal
    assert [p.text for p in a.read_posts(None, 100)] == [f"post {i}" for i in range(20)]


def test_refill_at_the_rate(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(20):
        add(a, i, NOW)
    assert not refused(b, 20, NOW + 0.2)  # 5/s: one token after 0.2 s
    assert refused(a, 21, NOW + 0.3)
    for i in range(22, 42):  # after 4 s the bucket is full again: 20 more, not 21
        assert not refused(a, i, NOW + 10)
    assert refused(a, 42, NOW + 10)
    assert a.count_posts() == 41


def test_a_clock_behind_refills_nothing(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(20):
        add(a, i, NOW + 5)
    assert refused(b, 20, NOW)  # another worker, 5 s behind
    assert refused(a, 21, NOW + 5.1)


def test_devices_have_their_own_buckets(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    for i in range(20):
        add(a, i, NOW, "dev-a")
    assert refused(a, 20, NOW, "dev-a")
    assert add(a, 0, NOW, "dev-b")[1] is True


def test_retry_returns_the_first_id_without_a_token(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first, created = add(a, 0, NOW)
    assert created
    for i in range(1, 20):
        add(a, i, NOW)
    assert add(b, 0, NOW) == (first, False)  # the bucket is empty, the retry still answered
    assert a.count_posts() == 20


def test_idempotency_key_is_forgotten_after_its_ttl(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    quota = PostQuota(5.0, 20, 60.0)
    first, _ = add(a, 0, NOW, quota=quota)
    if isinstance(a, RedisStore):
        ttl_ms = a.raw().pttl(BOARD + "dedupe:" + (b"key-000000000000" + b"dev-a").hex())
        assert 0 < ttl_ms <= 60_000
        bucket_ttl = a.raw().pttl(BOARD + "rate:dev-a")
        assert 0 < bucket_ttl <= 20 / 5 * 1000 + 1000  # gone once it would be full anyway
        a.raw().delete(BOARD + "dedupe:" + (b"key-000000000000" + b"dev-a").hex())  # as expiry
        assert add(a, 0, NOW + 61, quota=quota)[1] is True
    else:
        assert add(a, 0, NOW + 59, quota=quota) == (first, False)
        assert add(a, 0, NOW + 61, quota=quota)[1] is True
