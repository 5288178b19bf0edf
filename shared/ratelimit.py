"""A token bucket, as a pure function of the bucket's state and the time.

``MemoryStore`` uses it directly; ``RedisStore`` runs the same arithmetic in a Lua
script (``_ADD_POST``) so that every board worker and gateway shares one bucket per
device in Redis. Keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    tokens: float
    updated: float  # the time ``tokens`` was computed at


def take(bucket: Bucket | None, now: float, rate: float, burst: int) -> tuple[bool, Bucket]:
    """Refill at ``rate`` per second up to ``burst``, then take one token if there is one.

    Returns (allowed, the bucket's new state). A missing bucket is full. A clock that
    went back (another worker's) refills nothing and never moves ``updated`` back.
    """
    if bucket is None:
        bucket = Bucket(float(burst), now)
    elapsed = max(0.0, now - bucket.updated)
    tokens = min(float(burst), bucket.tokens + elapsed * rate)
    updated = max(now, bucket.updated)
    if tokens < 1.0:
        return False, Bucket(tokens, updated)
    return True, Bucket(tokens - 1.0, updated)
