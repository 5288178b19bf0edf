"""A connection flood against a gateway, for integration tests: ``python -m tests.support.flood``.

It runs in a process of its own (so that its event loop does not share a GIL with
the client under test) and keeps ``--connections`` connections open from
``--sources`` loopback source addresses (127.0.0.F, 127.0.0.F+1, ... from
``--first-source`` F), in three kinds:

* ``silent``: connect and send nothing;
* ``slowloris``: send the connect preamble and a message 1, one byte per second;
* ``enroll``: a half-done enrollment: preamble, XXpsk3 message 1, read message 2,
  then nothing (the gateway waits for message 3).

A connection the gateway closes is renewed, but no sooner than ``--renew`` seconds
after it was opened (the issue's flood renewed its sockets every 5 s). The flood
is bounded in time (``--duration``) and in count (``--max-connects``) and stops by
itself; it prints one JSON line of counters on exit. It only connects to
127.0.0.1 and binds only 127.0.0.0/8 source addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import struct
import sys
import time
from collections import Counter

from shared.framing import Mode, encode_frame, preamble
from shared.keys import StaticKey, enroll_psk
from shared.noise_session import NoiseSession
from shared.wire import MAGIC, PROTOCOL_VERSION

KINDS = ("silent", "slowloris", "enroll")
_TARGET = "127.0.0.1"


def _preamble(mode: bytes) -> bytes:
    return MAGIC + bytes([PROTOCOL_VERSION]) + mode


def _slow_bytes() -> bytes:
    # A connect preamble and an IKpsk2-sized message 1 (never completed at 1 B/s).
    return _preamble(b"C") + struct.pack(">H", 96) + os.urandom(96)


def _enroll_msg1() -> bytes:
    # A genuine XXpsk3 message 1 of an open enrollment (the gateway answers message 2).
    pre = preamble(Mode.ENROLL)
    noise = NoiseSession.initiator(pre, StaticKey.generate(), psk=enroll_psk(b""))
    return pre.encode() + encode_frame(noise.write_handshake(b""))


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (_TARGET, port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _one(kind: str, port: int, source: str, stats: Counter[str], stop_at: float) -> None:
    reader, writer = await _open(port, source)
    stats["connected"] += 1
    stats[f"open_{kind}"] += 1
    try:
        if kind == "slowloris":
            for b in _slow_bytes():
                writer.write(bytes([b]))
                await writer.drain()
                # Wait a second, or stop early when the gateway closes us.
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                        break
                if time.monotonic() > stop_at:
                    break
        elif kind == "enroll":
            writer.write(_enroll_msg1())
            await writer.drain()
        remaining = stop_at - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                while await asyncio.wait_for(reader.read(65536), remaining):
                    stats[f"bytes_from_gateway_{kind}"] += 1
                    remaining = stop_at - time.monotonic()
                    if remaining <= 0:
                        break
        stats["closed_by_gateway"] += 1
    except OSError:
        stats["reset"] += 1
    finally:
        stats[f"open_{kind}"] -= 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _lane(i: int, kind: str, port: int, sources: range, renew: float, end: float,
                stats: Counter[str], budget: list[int]) -> None:
    source = f"127.0.0.{sources[i % len(sources)]}"
    while time.monotonic() < end and budget[0] > 0:
        budget[0] -= 1
        opened = time.monotonic()
        try:
            await asyncio.wait_for(_one(kind, port, source, stats, end), end - opened)
        except TimeoutError:
            pass
        except OSError:
            stats["connect_failed"] += 1
        # Renew no sooner than ``renew`` seconds after the last open.
        while budget[0] > 0 and time.monotonic() < min(end, opened + renew):
            await asyncio.sleep(0.2)


async def flood(port: int, connections: int, sources: range, duration: float, renew: float,
                max_connects: int) -> Counter[str]:
    stats: Counter[str] = Counter()
    end = time.monotonic() + duration
    budget = [max_connects]
    stop = asyncio.Event()  # SIGTERM ends the flood early; the counters are still printed
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    lanes = [asyncio.create_task(_lane(i, KINDS[i % len(KINDS)], port, sources, renew, end,
                                       stats, budget)) for i in range(connections)]
    ready_printed = False
    while not stop.is_set() and not all(t.done() for t in lanes):
        await asyncio.sleep(0.2)
        if not ready_printed and stats["connected"] >= connections:
            print("ready", flush=True)
            ready_printed = True
    for t in lanes:
        t.cancel()
    await asyncio.gather(*lanes, return_exceptions=True)
    return stats


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--sources", type=int, default=125)
    p.add_argument("--first-source", type=int, default=2)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--renew", type=float, default=3.0)
    p.add_argument("--max-connects", type=int, default=100_000)
    a = p.parse_args()
    sources = range(a.first_source, a.first_source + a.sources)
    if not (a.first_source >= 1 and sources.stop <= 255) or a.duration > 120:
        print("sources must lie in 127.0.0.1-254 and duration be at most 120 s", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.connections + 1024)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    stats = asyncio.run(flood(a.port, a.connections, sources, a.duration, a.renew,
                              a.max_connects))
    print(json.dumps(dict(stats), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
