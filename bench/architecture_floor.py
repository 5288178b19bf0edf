"""What the fixed architecture itself adds to one attested connect, measured in the same run.

The issue's connect floor (``bench.floors``: a bare IKpsk2 handshake over TCP, TPM2_HMAC,
TPM2_Quote and TPM2_Unseal with loaded objects, one quote verification) has no server in
it. attestgate's design puts these on every connect, and no implementation of that design
can skip them (DESIGN.md; issue 10 keeps the attestation semantics as they are):

* **two bus round trips** gateway -> worker -> gateway: the registry's lookup of message 1's
  key before message 2 (the session PSK comes from it) and the attestor's verdict on the
  quote after it. Measured as raw pyzmq (an asyncio ROUTER, a DEALER echo in another
  process, one request in flight: ``bench.bus_bench``'s baseline), not as ``ZmqBus``;
* **four Redis round trips**: the registry's lookup, the attestor's confirmation (the
  replay guard advances with the device's read), its counters, its audit append. Measured
  as ``EVALSHA`` of a script that returns its argument, on the stack's own redis-server
  over one redis-py connection;
* **one audit checkpoint appended and fsync'd** before the attestor answers (one per
  decision: the audit design), with the very ``CheckpointFile.record`` the services use,
  on the filesystem of the server home.

Each part is the median of many runs; the sum plus the issue's floor is the
**architecture floor**: what a connect would cost if every line of Python in the gateway,
registry, attestor and client cost nothing.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import bus_bench
from shared.audit import AuditKey, make_checkpoint
from shared.audit_anchor import CheckpointFile

BUS_TRIPS = 2  # registry lookup, attest
REDIS_TRIPS = 4  # lookup; confirm, counters, audit append
_ECHO = "return ARGV[1]"


@dataclass(frozen=True)
class ArchitectureFloor:
    bus_ms: float  # one round trip
    redis_ms: float  # one round trip
    checkpoint_ms: float  # one append with fsync

    @property
    def total_ms(self) -> float:
        return BUS_TRIPS * self.bus_ms + REDIS_TRIPS * self.redis_ms + self.checkpoint_ms

    def describe(self) -> str:
        return (f"{BUS_TRIPS} x bus round trip {self.bus_ms:.2f} + {REDIS_TRIPS} x Redis "
                f"round trip {self.redis_ms:.3f} + audit checkpoint fsync "
                f"{self.checkpoint_ms:.2f} ms")


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def _bus_samples(runs: int) -> list[float]:
    out = []
    async with bus_bench.raw_echo() as call:
        for _ in range(20):
            await call()
        for _ in range(runs):
            t0 = time.perf_counter()
            await call()
            out.append(time.perf_counter() - t0)
    return out


def bus_round_trip_ms(runs: int) -> float:
    return _median_ms(asyncio.run(_bus_samples(runs)))


def redis_round_trip_ms(url: str, runs: int) -> float:
    r = redis.Redis.from_url(url)
    try:
        sha = r.script_load(_ECHO)
        out = []
        for n in range(runs + 20):
            t0 = time.perf_counter()
            r.evalsha(sha, 0, b"x" * 64)
            if n >= 20:
                out.append(time.perf_counter() - t0)
        return _median_ms(out)
    finally:
        r.close()


def checkpoint_ms(directory: Path, runs: int) -> float:
    path = directory / "architecture-floor-checkpoints.jsonl"
    sink = CheckpointFile(path)
    key = AuditKey(os.urandom(32))
    out = []
    try:
        for n in range(runs + 5):
            cp = make_checkpoint(key, n + 1, os.urandom(32).hex(), time.time())
            t0 = time.perf_counter()
            sink.record(cp)
            if n >= 5:
                out.append(time.perf_counter() - t0)
    finally:
        path.unlink(missing_ok=True)
    return _median_ms(out)


def measure(redis_url: str, home: Path, runs: int) -> ArchitectureFloor:
    return ArchitectureFloor(bus_round_trip_ms(runs * 8), redis_round_trip_ms(redis_url, runs * 8),
                             checkpoint_ms(home, runs * 2))
