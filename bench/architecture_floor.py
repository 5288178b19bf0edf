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

The same parts give the **CPU floors** of the server rows: CPU per connect is at least a
bare IKpsk2 responder, two bus round trips (the CPU of both ends; one request in flight,
as a worker mostly sees them from the bench's devices, and apart the CPU with ``inflight``
at once, when requests queue up), the client side of four Redis calls, one
checkpoint append and one ECDSA verify; CPU per post at least one bus round trip, two
Redis calls (the device, the append) and one ECDSA verify.
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
from bench.cpu import cpu_seconds
from shared.audit import AuditKey, make_checkpoint
from shared.audit_anchor import CheckpointFile

BUS_TRIPS = 2  # registry lookup, attest
REDIS_TRIPS = 4  # lookup; confirm, counters, audit append
POST_REDIS_TRIPS = 2  # the device, the append
_ECHO = "return ARGV[1]"


@dataclass(frozen=True)
class ArchitectureFloor:
    bus_ms: float  # one round trip, wall
    redis_ms: float  # one round trip, wall
    checkpoint_ms: float  # one append with fsync, wall
    bus_cpu_ms: float  # CPU of both ends per round trip, one in flight
    bus_cpu_busy_ms: float  # the same with `inflight` at once
    redis_cpu_ms: float  # the caller's CPU per call
    checkpoint_cpu_ms: float  # the appender's CPU per append (the fsync's kernel time too)
    inflight: int

    @property
    def total_ms(self) -> float:
        return BUS_TRIPS * self.bus_ms + REDIS_TRIPS * self.redis_ms + self.checkpoint_ms

    def describe(self) -> str:
        return (f"{BUS_TRIPS} x bus round trip {self.bus_ms:.2f} + {REDIS_TRIPS} x Redis "
                f"round trip {self.redis_ms:.3f} + audit checkpoint fsync "
                f"{self.checkpoint_ms:.2f} ms")

    def connect_cpu_ms(self, responder_ms: float, verify_ms: float, busy: bool = False
                       ) -> float:
        bus = self.bus_cpu_busy_ms if busy else self.bus_cpu_ms
        return (responder_ms + BUS_TRIPS * bus + REDIS_TRIPS * self.redis_cpu_ms
                + self.checkpoint_cpu_ms + verify_ms)

    def describe_connect_cpu(self, responder_ms: float, verify_ms: float) -> str:
        return (f"bare responder {responder_ms:.3f} + {BUS_TRIPS} x bus round trip "
                f"{self.bus_cpu_ms:.3f} (one in flight, both ends) + "
                f"{REDIS_TRIPS} x Redis call {self.redis_cpu_ms:.3f} + checkpoint "
                f"{self.checkpoint_cpu_ms:.3f} + ECDSA verify {verify_ms:.3f} ms")

    def post_cpu_ms(self, verify_ms: float, busy: bool = False) -> float:
        bus = self.bus_cpu_busy_ms if busy else self.bus_cpu_ms
        return bus + POST_REDIS_TRIPS * self.redis_cpu_ms + verify_ms

    def describe_post_cpu(self, verify_ms: float) -> str:
        return (f"bus round trip {self.bus_cpu_ms:.3f} (one in flight, both ends) + "
                f"{POST_REDIS_TRIPS} x Redis call {self.redis_cpu_ms:.3f} + ECDSA verify "
                f"{verify_ms:.3f} ms")

    def busy_note(self, figure_ms: float, baseline_ms: float) -> str:
        return (f"with {self.inflight} bus requests in flight (bus round trip "
                f"{self.bus_cpu_busy_ms:.3f} ms): {figure_ms:.3f} ms, "
                f"{figure_ms / baseline_ms:.2f}x")


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def _bus(runs: int, inflight: int) -> tuple[float, float, float]:
    """(median wall of one round trip alone, CPU of both ends per round trip alone and at
    ``inflight`` at once), ms."""
    walls = []
    async with bus_bench.raw_echo() as echo:
        for _ in range(20):
            await echo.call()
        mine, theirs = time.process_time(), cpu_seconds(echo.pid)
        for _ in range(runs):
            t0 = time.perf_counter()
            await echo.call()
            walls.append(time.perf_counter() - t0)
        alone = time.process_time() - mine + cpu_seconds(echo.pid) - theirs

        async def loop(n: int) -> None:
            for _ in range(n):
                await echo.call()

        each = max(1, runs * 4 // inflight)
        mine, theirs = time.process_time(), cpu_seconds(echo.pid)
        await asyncio.gather(*(loop(each) for _ in range(inflight)))
        cpu = time.process_time() - mine + cpu_seconds(echo.pid) - theirs
    return _median_ms(walls), alone / runs * 1000, cpu / (each * inflight) * 1000


def _redis(url: str, runs: int) -> tuple[float, float]:
    """(median wall, mean caller CPU) of one EVALSHA round trip, ms."""
    r = redis.Redis.from_url(url)
    try:
        sha = r.script_load(_ECHO)
        for _ in range(20):
            r.evalsha(sha, 0, b"x" * 64)
        walls = []
        c0 = time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter()
            r.evalsha(sha, 0, b"x" * 64)
            walls.append(time.perf_counter() - t0)
        return _median_ms(walls), (time.process_time() - c0) / runs * 1000
    finally:
        r.close()


def _checkpoint(directory: Path, runs: int) -> tuple[float, float]:
    """(median wall, mean CPU) of one checkpoint append, ms."""
    path = directory / "architecture-floor-checkpoints.jsonl"
    sink = CheckpointFile(path)
    key = AuditKey(os.urandom(32))
    points = [make_checkpoint(key, n + 1, os.urandom(32).hex(), time.time())
              for n in range(runs + 5)]
    walls = []
    try:
        for cp in points[:5]:
            sink.record(cp)
        c0 = time.process_time()
        for cp in points[5:]:
            t0 = time.perf_counter()
            sink.record(cp)
            walls.append(time.perf_counter() - t0)
        return _median_ms(walls), (time.process_time() - c0) / runs * 1000
    finally:
        path.unlink(missing_ok=True)


def measure(redis_url: str, home: Path, runs: int, inflight: int) -> ArchitectureFloor:
    bus_ms, bus_cpu, bus_cpu_busy = asyncio.run(_bus(runs * 8, inflight))
    redis_ms, redis_cpu = _redis(redis_url, runs * 8)
    checkpoint_ms, checkpoint_cpu = _checkpoint(home, runs * 2)
    return ArchitectureFloor(bus_ms, redis_ms, checkpoint_ms, bus_cpu, bus_cpu_busy,
                             redis_cpu, checkpoint_cpu, inflight)
