"""The in-process bus for unit tests, and the pure pieces both buses share.

:class:`MemoryBus` is a real :class:`~shared.bus.interface.BusClient`: workers
are handlers registered in-process, requests and replies go through the wire
codec (a body that would not survive msgpack fails here too), deadlines and
retries follow the ZeroMQ bus's rules, and a worker can be made to die or hang
so that callers' failure handling can be unit-tested without processes.

Differences from :class:`~shared.bus.zmq_bus.ZmqBus`, on purpose: with no live
worker the answer is ``service_unavailable`` at once (ZeroMQ queues until the
deadline, waiting for a worker to register), and handlers run inline on the
caller's event loop.

Shared with the ZeroMQ side: :func:`call_handler` (what a worker does with one
request) and :class:`EventFanout` (``events()`` iterators).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Generic

from shared.bus import codec
from shared.bus.interface import Body, BusEvent, Clock, D, Handler, Reply, Request
from shared.errors import AttestgateError, ErrorCode

log = logging.getLogger("attestgate.bus")

MAX_ATTEMPTS: Final = 3  # dispatches of one idempotent request before giving up
EVENT_QUEUE_MAX: Final = 10_000  # per events() iterator; the oldest event is dropped beyond


# -- shared by both buses ------------------------------------------------------------


def call_handler(
    handler: Handler[D], request: Request, deps: D, now: float
) -> tuple[Reply, bytes]:
    """Run ``handler`` on one request as a worker must; never raises.

    Returns the reply (with its events) and its REPLY frame. A request already
    past its deadline is not executed. An exception escaping the handler, a
    reply for another id or one that cannot be encoded is logged here with the
    request id and answered with ``INTERNAL``: exception text never reaches the
    peer.
    """
    if now >= request.deadline:
        log.info(
            "request expired before start service=%s op=%s id=%s late=%.3fs",
            request.service, request.op, request.id, now - request.deadline,
        )
        reply = Reply.failure(request.id, ErrorCode.SERVICE_UNAVAILABLE)
        return reply, codec.encode(reply)
    try:
        reply = handler(request, deps, now)
    except Exception:
        log.exception(
            "handler failed service=%s op=%s id=%s", request.service, request.op, request.id
        )
        reply = Reply.failure(request.id, ErrorCode.INTERNAL)
        return reply, codec.encode(reply)
    if not isinstance(reply, Reply) or reply.id != request.id:
        log.error(
            "handler returned a reply for another request service=%s op=%s id=%s",
            request.service, request.op, request.id,
        )
        reply = Reply.failure(request.id, ErrorCode.INTERNAL)
        return reply, codec.encode(reply)
    try:
        return reply, codec.encode(reply)
    except AttestgateError as exc:
        log.error(
            "handler reply not encodable service=%s op=%s id=%s code=%s detail=%s",
            request.service, request.op, request.id, exc.code.value, exc.detail,
        )
        reply = Reply.failure(request.id, ErrorCode.INTERNAL)
        return reply, codec.encode(reply)


class EventStream(AsyncIterator[BusEvent]):
    """One ``events()`` iterator. Subscribed from creation; ``aclose()`` unsubscribes."""

    def __init__(self, fanout: EventFanout, maxsize: int) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[BusEvent | None] = asyncio.Queue(maxsize)
        self._closed = False
        self.dropped = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> BusEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self._fanout.unsubscribe(self)
        self._end()

    def _put(self, event: BusEvent | None) -> None:
        if self._closed:
            return
        if self._queue.full():
            # A slow consumer must not stall the bus: lose its oldest event, say so.
            self._queue.get_nowait()
            self.dropped += 1
            log.warning("events consumer too slow: event dropped dropped=%d", self.dropped)
        self._queue.put_nowait(event)

    def _end(self) -> None:
        self._put(None)
        self._closed = True


class EventFanout:
    """Delivers every published event to every open :class:`EventStream`."""

    def __init__(self, maxsize: int = EVENT_QUEUE_MAX) -> None:
        self._maxsize = maxsize
        self._streams: set[EventStream] = set()
        self._closed = False

    def subscribe(self) -> EventStream:
        stream = EventStream(self, self._maxsize)
        if self._closed:
            stream._end()
        else:
            self._streams.add(stream)
        return stream

    def unsubscribe(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    def publish(self, event: BusEvent) -> None:
        for stream in list(self._streams):
            stream._put(event)

    def close(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream._end()
        self._streams.clear()


# -- the in-memory bus ------------------------------------------------------------------


class Fault(Enum):
    CRASH = "crash"  # the next request it is given dies with it; then it is gone
    HANG = "hang"  # takes requests and never answers


@dataclass(eq=False)
class MemoryWorker(Generic[D]):
    """A registered handler; the test's handle on one "process"."""

    bus: MemoryBus
    service: str
    handler: Handler[D]
    deps: D
    fault: Fault | None = None
    served: int = 0

    def crash(self) -> None:
        """Die while handling the next request (as a killed process would)."""
        self.fault = Fault.CRASH

    def hang(self) -> None:
        """Accept requests and never answer them (as a stuck process would)."""
        self.fault = Fault.HANG

    def heal(self) -> None:
        self.fault = None

    def unregister(self) -> None:
        """Leave cleanly, as a worker sending DISCONNECT does."""
        self.bus._remove(self)


@dataclass
class _Hung:
    deadline: float
    future: asyncio.Future[Reply]
    timer: asyncio.TimerHandle | None = field(default=None)


class MemoryBus:
    """In-process :class:`BusClient`; see the module docstring for its rules.

    ``clock`` gives the handlers' ``now`` and the requests' absolute deadlines.
    A request given to a hung worker ends with ``service_unavailable`` after
    ``timeout`` of event-loop time, or earlier when :meth:`check_deadlines` sees
    ``clock()`` past its deadline (for tests that drive a fake clock).
    """

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._workers: dict[str, list[MemoryWorker[Any]]] = {}
        self._turn: dict[str, itertools.count[int]] = {}
        self._hung: dict[str, _Hung] = {}
        self._fanout = EventFanout()
        self._closed = False

    def register(self, service: str, handler: Handler[D], deps: D) -> MemoryWorker[D]:
        """Add one worker of ``service``; call several times for several workers."""
        worker = MemoryWorker(self, service, handler, deps)
        self._workers.setdefault(service, []).append(worker)
        self._turn.setdefault(service, itertools.count())
        return worker

    def live_workers(self, service: str) -> int:
        return len(self._workers.get(service, []))

    async def request(
        self,
        service: str,
        op: str,
        body: Body,
        *,
        request_id: str,
        timeout: float,
        idempotent: bool = True,
    ) -> Reply:
        deadline = self._clock() + timeout
        try:
            # Through the codec exactly as on the wire: tuples become lists, etc.
            request = codec.decode(
                codec.encode(Request(request_id, service, op, body, deadline, idempotent))
            )
        except AttestgateError as exc:
            log.error("request not encodable id=%s code=%s detail=%s", request_id, exc.code.value,
                      exc.detail)
            return Reply.failure(request_id, exc.code)
        assert isinstance(request, Request)
        unavailable = Reply.failure(request_id, ErrorCode.SERVICE_UNAVAILABLE)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if self._closed:
                return unavailable
            worker = self._pick(service)
            if worker is None:
                log.info("no worker service=%s id=%s", service, request_id)
                return unavailable
            if worker.fault is Fault.CRASH:
                self._remove(worker)
                log.warning(
                    "worker died service=%s id=%s idempotent=%s attempt=%d",
                    service, request_id, idempotent, attempt,
                )
                if idempotent:
                    continue
                return unavailable
            if worker.fault is Fault.HANG:
                return await self._wait_for_deadline(request_id, deadline, timeout)
            worker.served += 1
            reply, frame = call_handler(worker.handler, request, worker.deps, self._clock())
            if self._clock() > deadline:
                log.info("reply after deadline dropped service=%s id=%s", service, request_id)
                return unavailable
            for event in reply.events:
                self._publish(event)
            received = codec.decode(frame)
            assert isinstance(received, Reply)
            return received
        return unavailable

    def events(self) -> AsyncIterator[BusEvent]:
        return self._fanout.subscribe()

    def publisher(self) -> MemoryPublisher:
        """An :class:`EventPublisher` into this bus (the operator CLI's view)."""
        return MemoryPublisher(self)

    def check_deadlines(self) -> None:
        """Answer ``service_unavailable`` to hung requests whose deadline ``clock()`` passed."""
        now = self._clock()
        for request_id, hung in list(self._hung.items()):
            if now >= hung.deadline:
                self._expire(request_id)

    async def close(self) -> None:
        self._closed = True
        for request_id in list(self._hung):
            self._expire(request_id)
        self._fanout.close()

    # -- internals ------------------------------------------------------------------

    def _pick(self, service: str) -> MemoryWorker[Any] | None:
        workers = self._workers.get(service)
        if not workers:
            return None
        return workers[next(self._turn[service]) % len(workers)]

    def _remove(self, worker: MemoryWorker[Any]) -> None:
        workers = self._workers.get(worker.service, [])
        if worker in workers:
            workers.remove(worker)

    def _publish(self, event: BusEvent) -> None:
        try:
            received = codec.decode(codec.encode(event))
        except AttestgateError as exc:
            log.error("event not encodable topic=%s code=%s", event.topic, exc.code.value)
            return
        assert isinstance(received, BusEvent)
        self._fanout.publish(received)

    async def _wait_for_deadline(self, request_id: str, deadline: float, timeout: float) -> Reply:
        loop = asyncio.get_running_loop()
        hung = _Hung(deadline, loop.create_future())
        hung.timer = loop.call_later(max(timeout, 0.0), self._expire, request_id)
        self._hung[request_id] = hung
        return await hung.future

    def _expire(self, request_id: str) -> None:
        hung = self._hung.pop(request_id, None)
        if hung is None:
            return
        if hung.timer is not None:
            hung.timer.cancel()
        if not hung.future.done():
            log.info("deadline passed id=%s", request_id)
            hung.future.set_result(Reply.failure(request_id, ErrorCode.SERVICE_UNAVAILABLE))


class MemoryPublisher:
    """:class:`EventPublisher` that publishes into a :class:`MemoryBus`."""

    def __init__(self, bus: MemoryBus) -> None:
        self._bus: MemoryBus | None = bus

    def publish(self, event: BusEvent) -> None:
        if self._bus is None:
            raise AttestgateError(ErrorCode.INTERNAL, "publisher is closed")
        self._bus._publish(event)

    def close(self) -> None:
        self._bus = None
