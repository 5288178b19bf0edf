"""Bus: raw pyzmq ROUTER<->DEALER echo vs ZmqBus.request to one run_worker process.

Both use the production topology: the asyncio side (gateway) binds a ROUTER,
a separate process connects a DEALER and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from bench._common import ROUNDS, Result, Settings
from shared.bus.interface import Reply, Request
from shared.bus.zmq_bus import ZmqBus
from shared.worker import install_stop_signals, run_worker

SERVICE = "bench"
BODY: dict[str, Any] = {"text": "x" * 64, "key": os.urandom(16)}
READY_TIMEOUT_S = 15.0
JOIN_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
_STOP = b"\x00stop"


# -- child processes (spawned: module-level functions) -------------------------------------

def _echo_handler(request: Request, deps: None, now: float) -> Reply:
    return Reply(request.id, request.body)


def _worker_main(bus_endpoint: str, events_endpoint: str) -> None:
    stop = threading.Event()
    install_stop_signals(stop)
    run_worker(SERVICE, _echo_handler, None, bus_endpoints=[bus_endpoint],
               events_endpoints=[events_endpoint], stop=stop)


def _echo_main(endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(b"ready")
    try:
        while True:
            msg = sock.recv()
            if msg == _STOP:
                return
            sock.send(msg)
    finally:
        sock.close(0)
        ctx.term()


def _stop_process(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()  # SIGTERM: the worker finishes and sends DISCONNECT
    proc.join(JOIN_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join(JOIN_TIMEOUT_S)


# -- load loops ------------------------------------------------------------------------------

async def _drive(call: Callable[[], Awaitable[None]], inflight: int, seconds: float) -> float:
    """Round trips/s with ``inflight`` concurrent callers each looping on ``call``."""
    for _ in range(5):
        await call()
    done = 0
    end = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(inflight)))
    return done / (time.perf_counter() - start)


Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Echo:
    call: Call  # one round trip
    pid: int  # the echo process (its CPU: bench.cpu.cpu_seconds)


@contextlib.asynccontextmanager
async def raw_echo() -> AsyncIterator[Echo]:
    """A raw asyncio ROUTER talking to a DEALER echo process."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
    proc = multiprocessing.get_context("spawn").Process(target=_echo_main, args=(endpoint,))
    proc.start()
    waiters: dict[bytes, asyncio.Future[bytes]] = {}
    task: asyncio.Task[None] | None = None
    ident = b""
    try:
        ident, _ = await asyncio.wait_for(router.recv_multipart(), READY_TIMEOUT_S)

        async def reader() -> None:
            while True:
                _, msg = await router.recv_multipart()
                waiters.pop(msg[:8]).set_result(msg)

        task = asyncio.create_task(reader())
        counter = 0
        payload = b"x" * 96
        loop = asyncio.get_running_loop()

        async def call() -> None:
            nonlocal counter
            counter += 1
            tag = counter.to_bytes(8, "big")
            fut = waiters[tag] = loop.create_future()
            await router.send_multipart([ident, tag + payload])
            await fut

        yield Echo(call, proc.pid or 0)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if ident:
            await router.send_multipart([ident, _STOP])
        await asyncio.to_thread(_stop_process, proc)
        router.close(0)
        ctx.term()


@contextlib.asynccontextmanager
async def _bus_echo() -> AsyncIterator[Call]:
    """ZmqBus with one run_worker process serving a trivial handler; yields one request."""
    bus = ZmqBus("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    await bus.start()
    proc = multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(bus.bus_endpoint, bus.events_endpoint))
    try:
        proc.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while bus.live_workers(SERVICE) < 1:
            if time.monotonic() > deadline or not proc.is_alive():
                raise RuntimeError("bench worker did not register")
            await asyncio.sleep(0.01)
        counter = 0

        async def call() -> None:
            nonlocal counter
            counter += 1
            reply = await bus.request(SERVICE, "echo", BODY, request_id=f"b{counter}",
                                      timeout=REQUEST_TIMEOUT_S)
            if not reply.ok:
                raise RuntimeError(f"bus request failed: {reply.error}")

        yield call
    finally:
        await bus.close()  # tells the worker DISCONNECT
        await asyncio.to_thread(_stop_process, proc)


async def _measure(seconds: float, levels: tuple[int, ...]) -> dict[int, tuple[float, float]]:
    """Per level: (baseline, subject), alternating short rounds, best of each side."""
    out = {}
    async with raw_echo() as raw, _bus_echo() as bus:
        for n in levels:
            base = ours = 0.0
            for _ in range(ROUNDS):
                base = max(base, await _drive(raw.call, n, seconds / ROUNDS))
                ours = max(ours, await _drive(bus, n, seconds / ROUNDS))
            out[n] = (base, ours)
    return out


def run(s: Settings) -> list[Result]:
    levels = (1, 32)
    measured = asyncio.run(_measure(s.seconds, levels))
    return [
        Result("bus_32_in_flight" if n == 32 else f"bus_{n}_in_flight", "bus",
               f"ZmqBus.request -> run_worker, {n} in flight", measured[n][1], "ops/s",
               f"raw pyzmq echo, {n} in flight", measured[n][0], ">= 0.6" if n == 32 else "")
        for n in levels
    ]
