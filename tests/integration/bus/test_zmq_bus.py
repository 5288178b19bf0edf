"""ZmqBus, run_worker and ZmqPublisher over real ZeroMQ on 127.0.0.1, workers as processes.

Heartbeats run at 0.1 s here with a liveness of 10 (1 s of silence): a killed
worker is noticed at the next heartbeat (its TCP connection is gone, the send
fails with EHOSTUNREACH), a frozen one after 1 s. Test handlers stay well below
1 s, since a worker sends no heartbeat while its handler runs. Waiting is
bounded polling of observable state; sleeps only stand for "time passes and
nothing happens" (a gateway outage, a worker staying registered).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from shared.bus import codec
from shared.bus.interface import BusEvent, Reply, Request
from shared.bus.zmq_bus import (
    DEFAULT_WORKER_WINDOW,
    CurveClientKeys,
    CurveServerKeys,
    ZmqBus,
    ZmqPublisher,
    curve_keypair,
)
from shared.errors import ErrorCode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
INTERVAL = 0.1
LIVENESS = 10
SILENCE = INTERVAL * LIVENESS
ANY = "tcp://127.0.0.1:*"
WORKER = Path(__file__).with_name("bus_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_bus(bus: str = ANY, events: str = ANY, **kwargs: Any) -> ZmqBus:
    return ZmqBus(bus, events, heartbeat_interval=INTERVAL, liveness=LIVENESS, **kwargs)


class Workers:
    """Worker processes started by one test; all killed and reaped at the end."""

    def __init__(self, markers: Path) -> None:
        self.markers = markers
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        service: str,
        bus: Sequence[str],
        events: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), service, ",".join(bus), ",".join(events),
             "--interval", str(INTERVAL), "--liveness", str(LIVENESS),
             "--markers", str(self.markers), *extra],
            env=env,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def marker_pid(markers: Path, request_id: str) -> int:
    path = markers / request_id
    await wait_until(path.exists)
    return int(path.read_text())


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - start


# -- request / reply -------------------------------------------------------------------


def test_request_reply_errors_and_unknown_ops(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            proc = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 1)

            reply = await bus.request("board", "echo", {"b": b"\x00", "l": [1]},
                                      request_id="r1", timeout=5)
            assert reply == Reply("r1", {"pid": proc.pid, "body": {"b": b"\x00", "l": [1]}})

            boom = await bus.request("board", "boom", {}, request_id="r2", timeout=5)
            assert boom == Reply.failure("r2", ErrorCode.INTERNAL)  # no exception text

            other = await bus.request("board", "nope", {}, request_id="r3", timeout=5)
            assert other.error is ErrorCode.UNKNOWN_COMMAND

    run(go())


def test_two_workers_share_the_load(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            a = workers.start("board", [bus.bus_endpoint])
            b = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 2)
            n, delay = 20, 0.05
            replies, elapsed = await timed(asyncio.gather(*(
                bus.request("board", "slow", {"delay": delay}, request_id=f"r{i}", timeout=15)
                for i in range(n)
            )))
            assert all(r.ok for r in replies)
            pids = [r.body["pid"] for r in replies]
            assert set(pids) == {a.pid, b.pid}
            assert min(pids.count(a.pid), pids.count(b.pid)) >= n // 4
            assert elapsed < n * delay  # really in parallel

    run(go())


@pytest.mark.parametrize("window", [1, 3])
def test_sigkill_retries_idempotent_requests_on_another_worker(
    workers: Workers, window: int
) -> None:
    async def go() -> None:
        async with make_bus(worker_window=window) as bus:
            workers.start("board", [bus.bus_endpoint])
            workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 2)
            first = [asyncio.create_task(bus.request(
                "board", "slow", {"delay": 0.6}, request_id=f"long{i}", timeout=5))
                for i in range(2)]
            queued = [asyncio.create_task(bus.request(
                "board", "slow", {"delay": 0.02}, request_id=f"short{i}", timeout=5))
                for i in range(6)]
            victim = await marker_pid(workers.markers, "long0")
            await marker_pid(workers.markers, "long1")  # both workers busy now
            start = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replies = await asyncio.gather(*first, *queued)
            assert all(r.ok for r in replies), replies
            assert all(r.body["pid"] != victim for r in replies)
            assert time.monotonic() - start < 3.0  # none waited for its deadline
            assert bus.live_workers("board") == 1

    run(go())


def test_sigkill_fails_non_idempotent_request_quickly(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            workers.start("board", [bus.bus_endpoint])
            workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 2)
            post = asyncio.create_task(bus.request(
                "board", "slow", {"delay": 0.8}, request_id="post", timeout=5,
                idempotent=False))
            read = asyncio.create_task(bus.request(
                "board", "slow", {"delay": 0.3}, request_id="read", timeout=5))
            victim = await marker_pid(workers.markers, "post")
            reader = await marker_pid(workers.markers, "read")
            assert reader != victim
            os.kill(victim, signal.SIGKILL)
            reply, elapsed = await timed(post)
            assert reply == Reply.failure("post", ErrorCode.SERVICE_UNAVAILABLE)
            assert elapsed < 0.5  # found at the next heartbeat, not by the handler's end
            assert (await read).body == {"pid": reader}

    run(go())


def test_frozen_worker_expires_and_its_request_is_retried(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            a = workers.start("board", [bus.bus_endpoint])
            b = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 2)
            tasks = [asyncio.create_task(bus.request(
                "board", "slow", {"delay": 0.2}, request_id=f"r{i}", timeout=15))
                for i in range(2)]
            victim = await marker_pid(workers.markers, "r0")
            os.kill(victim, signal.SIGSTOP)  # hung: connected but silent
            try:
                replies, elapsed = await timed(asyncio.gather(*tasks))
                assert all(r.ok and r.body["pid"] != victim for r in replies)
                assert SILENCE <= elapsed < SILENCE + 1.0
                assert bus.live_workers("board") == 1
            finally:
                os.kill(victim, signal.SIGCONT)
            # It wakes up, answers r0 late (dropped), is told to reconnect, serves again.
            await wait_until(lambda: bus.live_workers("board") == 2)
            assert victim in {a.pid, b.pid}
            await asyncio.sleep(3 * INTERVAL)
            assert bus.live_workers("board") == 2  # and stays registered

    run(go())


def test_no_worker_is_unavailable_by_the_deadline() -> None:
    async def go() -> None:
        async with make_bus() as bus:
            reply, elapsed = await timed(
                bus.request("board", "echo", {}, request_id="r1", timeout=0.3))
            assert reply == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)
            assert 0.29 <= elapsed < 0.5
            assert bus.queued("board") == 0

    run(go())


def test_request_waits_for_a_worker_started_later(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            pending = asyncio.create_task(
                bus.request("board", "echo", {}, request_id="r1", timeout=10))
            await wait_until(lambda: bus.queued("board") == 1)
            proc = workers.start("board", [bus.bus_endpoint])
            reply = await pending
            assert reply.ok
            assert reply.body["pid"] == proc.pid

    run(go())


def test_slow_reply_after_deadline_is_dropped_and_worker_reused(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            proc = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 1)
            reply, elapsed = await timed(bus.request(
                "board", "slow", {"delay": 0.4}, request_id="r1", timeout=0.2))
            assert reply == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)
            assert elapsed < 0.35
            # The worker finishes r1 (its reply is dropped as late), then serves r2.
            after = await bus.request("board", "echo", {}, request_id="r2", timeout=5)
            assert after.body["pid"] == proc.pid

    run(go())


# -- lifecycle ------------------------------------------------------------------------


def test_gateway_restart_worker_reconnects(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as first:
            endpoints = first.bus_endpoint, first.events_endpoint
            proc = workers.start("board", [first.bus_endpoint])
            assert (await first.request("board", "echo", {}, request_id="r1", timeout=5)).ok
        async with make_bus(*endpoints) as second:  # same ports, new gateway
            reply = await second.request("board", "echo", {}, request_id="r2", timeout=5)
            assert reply.ok
            assert reply.body["pid"] == proc.pid

    run(go())


def test_worker_comes_back_after_a_long_gateway_outage(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as first:
            endpoints = first.bus_endpoint, first.events_endpoint
            proc = workers.start("board", [first.bus_endpoint])
            await wait_until(lambda: first.live_workers("board") == 1)
        await asyncio.sleep(1.5 * SILENCE)  # the outage itself: the worker declares us dead
        async with make_bus(*endpoints) as second:
            reply = await second.request("board", "echo", {}, request_id="r2", timeout=5)
            assert reply.body["pid"] == proc.pid

    run(go())


def test_sigterm_disconnects_cleanly(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            proc = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 1)
            proc.send_signal(signal.SIGTERM)
            # DISCONNECT: gone well before heartbeat expiry would notice.
            _, elapsed = await timed(wait_until(lambda: bus.live_workers("board") == 0))
            assert elapsed < SILENCE / 2
            assert await asyncio.to_thread(proc.wait, 5) == 0

    run(go())


def test_one_worker_serves_two_gateways_and_events_reach_both(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as g1, make_bus() as g2:
            proc = workers.start("board", [g1.bus_endpoint, g2.bus_endpoint],
                                 [g1.events_endpoint, g2.events_endpoint])
            ev1, ev2 = g1.events(), g2.events()
            r1 = await g1.request("board", "echo", {}, request_id="a", timeout=5)
            r2 = await g2.request("board", "emit", {"topic": "post", "event": {"n": 1}},
                                  request_id="b", timeout=5)
            assert r1.body["pid"] == r2.body["pid"] == proc.pid
            expected = BusEvent("post", {"n": 1})
            assert await asyncio.wait_for(anext(ev1), 5) == expected
            assert await asyncio.wait_for(anext(ev2), 5) == expected

    run(go())


# -- events --------------------------------------------------------------------------


def test_worker_events_reach_events(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            workers.start("board", [bus.bus_endpoint], [bus.events_endpoint])
            stream = bus.events()
            for i in range(3):
                reply = await bus.request(
                    "board", "emit", {"topic": "post", "event": {"i": i}},
                    request_id=f"r{i}", timeout=15)
                assert reply.ok
            got = [await asyncio.wait_for(anext(stream), 5) for _ in range(3)]
            assert got == [BusEvent("post", {"i": i}) for i in range(3)]

    run(go())


def test_publisher_first_event_is_not_lost() -> None:
    async def go() -> None:
        async with make_bus() as g1, make_bus() as g2:
            streams = g1.events(), g2.events()
            for i in range(5):  # a fresh publisher each time: always its first event
                def publish_once(n: int = i) -> int:
                    publisher = ZmqPublisher([g1.events_endpoint, g2.events_endpoint])
                    try:
                        publisher.publish(BusEvent("revoked", {"device": f"d{n}"}))
                        return publisher.subscribers
                    finally:
                        publisher.close()

                assert await asyncio.to_thread(publish_once) == 2
                for stream in streams:
                    event = await asyncio.wait_for(anext(stream), 5)
                    assert event == BusEvent("revoked", {"device": f"d{i}"})

    run(go())


def test_publisher_without_subscriber_gives_up_in_time() -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        sock.close()
        start = time.monotonic()
        publisher = ZmqPublisher([f"tcp://127.0.0.1:{port}"], connect_timeout=0.2, linger=0)
        assert publisher.subscribers == 0
        publisher.publish(BusEvent("revoked", {}))
        publisher.close()
        assert time.monotonic() - start < 1.0


# -- hostile peers -------------------------------------------------------------------


def test_rogue_dealer_cannot_crash_the_gateway(workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as rogue:
                rogue.setsockopt(zmq.LINGER, 0)
                rogue.connect(bus.bus_endpoint)
                garbage: list[list[bytes]] = [
                    [b""], [b"junk"], [b"AGB\x01\xc1"], [b"AGB\x09\x91\x02"],
                    [codec.PREFIX + b"\x91" * 5000], [b"a", b"b"],
                    [codec.encode(Request("x", "board", "echo", {}, 0.0))],
                    [codec.encode(BusEvent("post", {}))],
                    [codec.encode(Reply("not-pending", {}))],
                ]
                for frames in garbage:
                    rogue.send_multipart(frames)
                await wait_until(lambda: bus.dropped_frames >= 8)
                # An unknown worker heartbeating is told to reconnect.
                rogue.send(codec.encode(codec.HEARTBEAT))
                await wait_until(lambda: rogue.poll(0) != 0)
                assert codec.decode(rogue.recv()) == codec.DISCONNECT
                # Beyond MAXMSGSIZE libzmq cuts the peer off; the gateway carries on.
                rogue.send(b"\x00" * (2 * 1024 * 1024))
            proc = workers.start("board", [bus.bus_endpoint])
            reply = await bus.request("board", "echo", {}, request_id="r1", timeout=5)
            assert reply.body["pid"] == proc.pid

    run(go())


def test_rogue_publisher_garbage_is_dropped() -> None:
    async def go() -> None:
        async with make_bus() as bus:
            stream = bus.events()
            with zmq.Context() as ctx, ctx.socket(zmq.XPUB) as pub:
                pub.setsockopt(zmq.LINGER, 1000)
                pub.connect(bus.events_endpoint)
                # The gateway's subscription; its SUB needs the loop running to send it.
                assert await asyncio.to_thread(pub.poll, 5000)
                pub.recv()
                for frames in ([b"junk"], [b"a", b"b"], [codec.encode(codec.HEARTBEAT)],
                               [codec.encode(BusEvent("post", {"ok": 1}))]):
                    pub.send_multipart(frames)
                event = await asyncio.wait_for(anext(stream), 5)
            assert event == BusEvent("post", {"ok": 1})
            assert bus.dropped_frames == 3

    run(go())


# -- CURVE ---------------------------------------------------------------------------


def test_curve_admits_listed_workers_only(workers: Workers, tmp_path: Path) -> None:
    server_public, server_secret = curve_keypair()
    good_public, good_secret = curve_keypair()
    bad_public, bad_secret = curve_keypair()

    def keys_args(public: bytes, secret: bytes) -> list[str]:
        return ["--curve", ",".join(k.decode() for k in (server_public, public, secret))]

    async def go() -> None:
        curve = CurveServerKeys(server_secret, frozenset({good_public}))
        async with make_bus(curve=curve) as bus:
            bad = workers.start("board", [bus.bus_endpoint], [bus.events_endpoint],
                                keys_args(bad_public, bad_secret))
            good = workers.start("board", [bus.bus_endpoint], [bus.events_endpoint],
                                 keys_args(good_public, good_secret))
            stream = bus.events()
            for i in range(4):
                reply = await bus.request("board", "emit", {"topic": "post", "event": {}},
                                          request_id=f"r{i}", timeout=15)
                assert reply.body["pid"] == good.pid
            assert bus.live_workers("board") == 1
            assert bad.poll() is None  # still trying, never admitted
            for _ in range(4):
                assert await asyncio.wait_for(anext(stream), 5) == BusEvent("post", {})
            # A publisher with a listed key is heard; the keys stay out of reprs.
            client = CurveClientKeys(server_public, good_public, good_secret)
            assert good_secret.decode() not in repr(client)
            assert server_secret.decode() not in repr(curve)

            def publish() -> int:
                publisher = ZmqPublisher([bus.events_endpoint], curve=client)
                publisher.publish(BusEvent("revoked", {"d": 1}))
                publisher.close()
                return publisher.subscribers

            assert await asyncio.to_thread(publish) == 1
            assert await asyncio.wait_for(anext(stream), 5) == BusEvent("revoked", {"d": 1})

    run(go())


# -- several requests in flight per worker (window) -------------------------------------


def test_default_window_keeps_several_requests_in_flight_and_replies_reach_their_callers(
        workers: Workers) -> None:
    async def go() -> None:
        async with make_bus() as bus:
            workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 1)
            slow = [asyncio.create_task(bus.request(
                "board", "slow", {"delay": 0.05}, request_id=f"s{i}", timeout=15))
                for i in range(DEFAULT_WORKER_WINDOW * 2)]
            await asyncio.sleep(0)  # every request dispatched or queued
            assert bus.in_flight("board") == (DEFAULT_WORKER_WINDOW,)
            assert bus.queued("board") == DEFAULT_WORKER_WINDOW
            echoes = [asyncio.create_task(bus.request(
                "board", "echo", {"n": i, "pad": "x" * (i % 7)}, request_id=f"e{i}", timeout=15))
                for i in range(200)]
            replies = await asyncio.gather(*echoes)
            for i, reply in enumerate(replies):
                assert reply.id == f"e{i}"
                assert reply.body["body"] == {"n": i, "pad": "x" * (i % 7)}
            assert all(r.ok for r in await asyncio.gather(*slow))
            assert bus.in_flight("board") == (0,)

    run(go())


def test_sigkill_with_a_full_window_retries_idempotent_and_fails_the_others(
        workers: Workers) -> None:
    async def go() -> None:
        async with make_bus(worker_window=DEFAULT_WORKER_WINDOW) as bus:
            victim_proc = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 1)
            # The first one blocks the victim; the rest wait in its window.
            head = asyncio.create_task(bus.request(
                "board", "slow", {"delay": 5}, request_id="head", timeout=10,
                idempotent=False))
            held = [asyncio.create_task(bus.request(
                "board", "echo", {"n": i}, request_id=f"h{i}", timeout=10,
                idempotent=i % 2 == 0)) for i in range(DEFAULT_WORKER_WINDOW - 1)]
            await marker_pid(workers.markers, "head")
            assert bus.in_flight("board") == (DEFAULT_WORKER_WINDOW,)
            survivor = workers.start("board", [bus.bus_endpoint])
            await wait_until(lambda: bus.live_workers("board") == 2)
            os.kill(victim_proc.pid, signal.SIGKILL)
            replies = await asyncio.gather(*held)
            for i, reply in enumerate(replies):
                if i % 2 == 0:  # idempotent: retried on the survivor
                    assert reply.ok, reply
                    assert reply.body == {"pid": survivor.pid, "body": {"n": i}}
                else:  # outcome unknown: said so, not left to the deadline
                    assert reply == Reply.failure(f"h{i}", ErrorCode.SERVICE_UNAVAILABLE)
            assert await head == Reply.failure("head", ErrorCode.SERVICE_UNAVAILABLE)
            assert bus.live_workers("board") == 1

    run(go())
