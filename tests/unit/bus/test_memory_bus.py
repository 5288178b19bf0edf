"""MemoryBus: the in-process BusClient, with a fake clock and no sleeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from shared.bus.interface import BusClient, BusEvent, EventPublisher, Reply, Request
from shared.bus.memory import MAX_ATTEMPTS, MemoryBus, call_handler
from shared.errors import ErrorCode

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Deps:
    name: str
    seen: list[tuple[str, float]] = field(default_factory=list)


def handler(request: Request, deps: Deps, now: float) -> Reply:
    deps.seen.append((request.id, now))
    if request.op == "boom":
        raise RuntimeError("secret detail")
    if request.op == "emit":
        return Reply(request.id, {"by": deps.name}, events=(BusEvent("post", {"n": 1}),))
    if request.op == "wrong-id":
        return Reply("someone-else", {})
    if request.op == "unencodable":
        return Reply(request.id, {"x": object()})
    return Reply(request.id, {"by": deps.name, "echo": dict(request.body)})


def test_is_a_bus_client_and_publisher() -> None:
    bus: BusClient = MemoryBus()
    publisher: EventPublisher = MemoryBus().publisher()
    assert bus is not None
    assert publisher is not None


def test_request_reply_with_deps_and_clock() -> None:
    clock = FakeClock(50.0)
    bus = MemoryBus(clock=clock)
    deps = Deps("a")
    bus.register("board", handler, deps)

    reply = run(bus.request("board", "read", {"k": (1, 2)}, request_id="r1", timeout=1.0))

    assert reply == Reply("r1", {"by": "a", "echo": {"k": [1, 2]}})  # through msgpack
    assert deps.seen == [("r1", 50.0)]


def test_no_worker_is_service_unavailable_at_once() -> None:
    bus = MemoryBus()
    reply = run(bus.request("board", "read", {}, request_id="r1", timeout=5.0))
    assert reply == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)


def test_round_robin_over_workers() -> None:
    bus = MemoryBus()
    bus.register("board", handler, Deps("a"))
    bus.register("board", handler, Deps("b"))

    async def go() -> list[str]:
        return [
            (await bus.request("board", "read", {}, request_id=f"r{i}", timeout=1)).body["by"]
            for i in range(4)
        ]

    assert run(go()) == ["a", "b", "a", "b"]


def test_handler_exception_is_internal_and_logged_with_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus()
    bus.register("board", handler, Deps("a"))
    with caplog.at_level(logging.ERROR, logger="attestgate.bus"):
        reply = run(bus.request("board", "boom", {}, request_id="r-boom", timeout=1))
    assert reply == Reply.failure("r-boom", ErrorCode.INTERNAL)
    assert "secret" not in repr(reply)
    record = next(r for r in caplog.records if "r-boom" in r.getMessage())
    assert record.exc_info is not None


@pytest.mark.parametrize("op", ["wrong-id", "unencodable"])
def test_bad_reply_from_handler_is_internal(op: str) -> None:
    bus = MemoryBus()
    bus.register("board", handler, Deps("a"))
    reply = run(bus.request("board", op, {}, request_id="r1", timeout=1))
    assert reply == Reply.failure("r1", ErrorCode.INTERNAL)


def test_unencodable_request_is_refused_without_calling_a_worker() -> None:
    bus = MemoryBus()
    deps = Deps("a")
    bus.register("board", handler, deps)
    reply = run(bus.request("board", "read", {"x": object()}, request_id="r1", timeout=1))
    assert reply.error is ErrorCode.BAD_REQUEST
    assert deps.seen == []


def test_expired_request_is_not_executed() -> None:
    bus = MemoryBus(clock=FakeClock())
    deps = Deps("a")
    bus.register("board", handler, deps)
    reply = run(bus.request("board", "read", {}, request_id="r1", timeout=0.0))
    assert reply == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)
    assert deps.seen == []


def test_reply_after_the_deadline_is_dropped() -> None:
    clock = FakeClock()

    def slow(request: Request, deps: None, now: float) -> Reply:
        clock.now += 10  # the handler took 10 s
        return Reply(request.id, {"late": True})

    bus = MemoryBus(clock=clock)
    bus.register("board", slow, None)
    reply = run(bus.request("board", "read", {}, request_id="r1", timeout=5.0))
    assert reply == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)


def test_crashed_worker_idempotent_request_is_retried_elsewhere() -> None:
    bus = MemoryBus()
    a = bus.register("board", handler, Deps("a"))
    bus.register("board", handler, Deps("b"))
    a.crash()
    reply = run(bus.request("board", "read", {}, request_id="r1", timeout=1))
    assert reply.ok
    assert reply.body["by"] == "b"
    assert bus.live_workers("board") == 1


def test_crashed_worker_non_idempotent_request_is_unavailable() -> None:
    bus = MemoryBus()
    a = bus.register("board", handler, Deps("a"))
    b_deps = Deps("b")
    bus.register("board", handler, b_deps)
    a.crash()
    reply = run(bus.request("board", "post", {}, request_id="r1", timeout=1, idempotent=False))
    assert reply == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)
    assert b_deps.seen == []  # not executed twice
    assert bus.live_workers("board") == 1


def test_retries_are_bounded() -> None:
    bus = MemoryBus()
    workers = [bus.register("board", handler, Deps(str(i))) for i in range(MAX_ATTEMPTS + 1)]
    for worker in workers:
        worker.crash()
    reply = run(bus.request("board", "read", {}, request_id="r1", timeout=1))
    assert reply.error is ErrorCode.SERVICE_UNAVAILABLE
    assert bus.live_workers("board") == 1


def test_hung_worker_answers_unavailable_when_the_clock_passes_the_deadline() -> None:
    clock = FakeClock()
    bus = MemoryBus(clock=clock)
    bus.register("board", handler, Deps("a")).hang()

    async def go() -> Reply:
        task = asyncio.create_task(
            bus.request("board", "read", {}, request_id="r1", timeout=3600.0)
        )
        await asyncio.sleep(0)  # let it reach the hung worker
        bus.check_deadlines()
        assert not task.done()  # deadline not reached yet
        clock.now += 3600.0
        bus.check_deadlines()
        return await task

    assert run(go()) == Reply.failure("r1", ErrorCode.SERVICE_UNAVAILABLE)


def test_hung_worker_healed() -> None:
    bus = MemoryBus()
    worker = bus.register("board", handler, Deps("a"))
    worker.hang()
    worker.heal()
    assert run(bus.request("board", "read", {}, request_id="r1", timeout=1)).ok


def test_close_answers_hung_requests() -> None:
    bus = MemoryBus()
    bus.register("board", handler, Deps("a")).hang()

    async def go() -> Reply:
        task = asyncio.create_task(bus.request("board", "read", {}, request_id="r1", timeout=60))
        await asyncio.sleep(0)
        await bus.close()
        return await task

    assert run(go()).error is ErrorCode.SERVICE_UNAVAILABLE


def test_unregistered_worker_gets_nothing() -> None:
    bus = MemoryBus()
    worker = bus.register("board", handler, Deps("a"))
    worker.unregister()
    reply = run(bus.request("board", "read", {}, request_id="r1", timeout=1))
    assert reply.error is ErrorCode.SERVICE_UNAVAILABLE


def test_reply_events_reach_every_subscriber_after_the_reply() -> None:
    bus = MemoryBus()
    bus.register("board", handler, Deps("a"))

    async def go() -> tuple[Reply, BusEvent, BusEvent]:
        first, second = bus.events(), bus.events()
        reply = await bus.request("board", "emit", {}, request_id="r1", timeout=1)
        got = await anext(first), await anext(second)
        await bus.close()
        assert [e async for e in first] == []  # closed: iteration ends
        return reply, *got

    reply, one, two = run(go())
    assert reply == Reply("r1", {"by": "a"})  # events are not part of the reply on the wire
    assert one == two == BusEvent("post", {"n": 1})


def test_publisher_and_unsubscribe() -> None:
    bus = MemoryBus()

    async def go() -> list[BusEvent]:
        kept, dropped = bus.events(), bus.events()
        await dropped.aclose()  # type: ignore[attr-defined]
        publisher = bus.publisher()
        publisher.publish(BusEvent("revoked", {"device": "d1"}))
        publisher.close()
        await bus.close()
        assert [e async for e in dropped] == []
        return [e async for e in kept]

    assert run(go()) == [BusEvent("revoked", {"device": "d1"})]


def test_call_handler_never_runs_a_late_request() -> None:
    calls: list[str] = []

    def h(request: Request, deps: None, now: float) -> Reply:
        calls.append(request.id)
        return Reply(request.id)

    late = Request("r1", "board", "read", {}, deadline=10.0)
    reply, frame = call_handler(h, late, None, now=10.0)
    assert reply.error is ErrorCode.SERVICE_UNAVAILABLE
    assert frame
    assert calls == []
