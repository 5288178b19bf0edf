"""Store: raw redis-py XADD vs RedisStore.add_post (idempotent Lua), AOF off and AOF always."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import redis

from bench._common import Result, Settings, paired, rate
from shared.records import Post
from shared.store.interface import PostQuota
from shared.store.redis_store import RedisStore
from shared.store.serialize import post_fields
from tests.support.redis_server import RedisServer

AOF_TIMEOUT_S = 30.0


def sample_fields() -> dict[str, bytes | str]:
    """A post as the board stores it (~200 B, 72-byte signature)."""
    post = Post("", "d" * 32, "hello from the benchmark", int(time.time() * 1000),
                os.urandom(16), os.urandom(72), time.time())
    return post_fields(post)


def raw_xadd_rate(url: str, seconds: float) -> float:
    """Single XADDs of a post-sized entry, one sync redis-py connection."""
    r = redis.Redis.from_url(url)
    fields = sample_fields()
    try:
        return rate(lambda: r.xadd("bench:raw", fields), seconds)  # type: ignore[arg-type]
    finally:
        r.close()


def add_post_rate(url: str, seconds: float) -> float:
    store = RedisStore(url)
    fields = sample_fields()
    try:
        # Bucket and idempotency key in the same Lua step; a bucket large enough not to refuse.
        quota = PostQuota(1e6, 10**6, 86_400.0)
        return rate(lambda: store.add_post(os.urandom(16), fields, device_id="d" * 32,
                                           now=time.time(), quota=quota), seconds)
    finally:
        store.close()


def enable_aof_always(url: str) -> None:
    """Switch a running server to ``appendonly yes`` + ``appendfsync always`` (as shipped)."""
    r = redis.Redis.from_url(url)
    try:
        r.config_set("appendfsync", "always")
        r.config_set("appendonly", "yes")
        deadline = time.monotonic() + AOF_TIMEOUT_S
        while True:
            info = r.info("persistence")
            if (info.get("aof_enabled") == 1 and not info.get("aof_rewrite_in_progress")
                    and not info.get("aof_rewrite_scheduled")):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"AOF not enabled after {AOF_TIMEOUT_S}s: {info}")
            time.sleep(0.02)
    finally:
        r.close()


def run(s: Settings) -> list[Result]:
    out = []
    with tempfile.TemporaryDirectory(prefix="attestgate-bench-store-") as tmp:
        server = RedisServer.start(Path(tmp) / "redis")
        try:
            for label in ("AOF off", "AOF always"):
                if label == "AOF always":
                    enable_aof_always(server.url)
                base, ours = paired(lambda t: raw_xadd_rate(server.url, t),
                                    lambda t: add_post_rate(server.url, t), s.seconds)
                key = "store_add_post_aof_" + ("off" if label == "AOF off" else "always")
                out.append(Result(key, "store", f"RedisStore.add_post ({label})", ours, "ops/s",
                                  f"raw XADD ({label})", base))
        finally:
            server.stop()
    return out
