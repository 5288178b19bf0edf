"""The ZeroMQ bus: Majordomo with the gateway as the broker. The only module importing ``zmq``.

Topology (CHANNEL-NOTES §3, design (c))::

    worker  DEALER ──connect──▶ ROUTER  (bind, bus endpoint)     gateway: ZmqBus
    worker  XPUB   ──connect──▶ SUB     (bind, events endpoint)  gateway: ZmqBus
    CLI     XPUB   ──connect──▶ SUB                              ZmqPublisher

Frames are :mod:`shared.bus.codec` frames, one ZeroMQ part each (the ROUTER adds
the worker's identity in front). A worker sends READY(service), then
HEARTBEAT every ``heartbeat_interval``; the gateway heartbeats every registered
worker at the same rate, and each side declares the other dead after
``liveness`` intervals without any message. Gateway and workers must be
configured with the same interval.

Reliability, on the gateway (:class:`ZmqBus`):

* a worker holds up to ``worker_window`` requests (default
  ``DEFAULT_WORKER_WINDOW``) and handles them one at a time, in order; requests
  wait in a per-service queue while every worker's window is full or none is
  registered, until their deadline;
* ``inflight`` remembers which worker holds which request. When a worker
  expires, disconnects or becomes unroutable (``ROUTER_MANDATORY`` send fails
  with ``EHOSTUNREACH``), its idempotent requests go back to the head of the
  queue (at most ``MAX_ATTEMPTS`` dispatches), the others are answered
  ``service_unavailable`` — their outcome is unknown, the caller must not
  assume either way;
* every request is answered by its deadline; a reply arriving later, or twice,
  is dropped and logged at debug level;
* a HEARTBEAT or REPLY from an unknown worker (the gateway restarted) is
  answered with DISCONNECT, upon which the worker reconnects and sends READY.

Several gateways: a worker connects one DEALER to *each* gateway's bus
endpoint and its PUB to *each* gateway's events endpoint, so every gateway can
use every worker and sees every event (``run_worker(bus_endpoints=[...],
events_endpoints=[...])``, ``ZmqPublisher([...])``). Each gateway dispatches
independently; a worker serves them one request at a time, in arrival order.

Events are PUB/SUB and therefore best effort: an event published while a
gateway is down or reconnecting is lost for that gateway.

CURVE (optional): give the gateway :class:`CurveServerKeys` and every worker
and publisher :class:`CurveClientKeys`; the ROUTER and SUB then only accept
encrypted connections from peers that know the server's public key and, when
``allowed_clients`` is set, whose public key is listed (ZAP). Keys are Z85
text (40 bytes), as made by :func:`curve_keypair`.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, cast

import zmq
from zmq.auth.thread import ThreadAuthenticator

from shared.bus import codec
from shared.bus.interface import Body, BusEvent, Clock, Reply, Request
from shared.bus.memory import MAX_ATTEMPTS, EventFanout
from shared.errors import AttestgateError, ErrorCode
from shared.timing import (
    BUS_CLOSE_LINGER,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    PUBLISH_CONNECT_TIMEOUT,
    PUBLISH_LINGER,
)
from shared.wire import MAX_BUS_MESSAGE

log = logging.getLogger("attestgate.bus")

_HEARTBEAT: Final = codec.encode(codec.HEARTBEAT)
_DISCONNECT: Final = codec.encode(codec.DISCONNECT)
_SUBSCRIBE_PREFIX: Final = b"\x01"  # XPUB: first byte of a subscription message
_DRAIN_MAX: Final = 256  # messages read per socket per poll round / per wake-up
_SUBSCRIPTION_DRAIN: Final = 1.0  # s between drains of a worker's XPUB (see WorkerConnection)
# Plain ints: pyzmq's flag enums cost an enum operation per use on the hot path.
_NOBLOCK: Final = int(zmq.NOBLOCK)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_RCVMORE: Final = int(zmq.RCVMORE)
# Requests one worker may hold. One (plain Majordomo) left the worker idle for a
# whole gateway round trip between requests: 5,770 req/s at 32 in flight, against
# 41,000 for raw pyzmq. A window keeps its socket fed; a worker's death then costs
# up to this many requests, which are retried (idempotent) or failed like one.
DEFAULT_WORKER_WINDOW: Final = 8


# -- CURVE -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveServerKeys:
    """The gateway's CURVE secret key, and the worker/publisher keys it admits (None: any)."""

    secret_key: bytes = field(repr=False)
    allowed_clients: frozenset[bytes] | None = None


@dataclass(frozen=True)
class CurveClientKeys:
    """A worker's or publisher's CURVE keypair and the gateway's public key."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes = field(repr=False)


def curve_keypair() -> tuple[bytes, bytes]:
    """A fresh (public, secret) CURVE keypair, Z85-encoded."""
    return zmq.curve_keypair()


def curve_public_key(secret_key: bytes) -> bytes:
    return zmq.curve_public(secret_key)


def _curve_server(sock: zmq.Socket[Any], keys: CurveServerKeys | None) -> None:
    if keys is not None:
        sock.curve_secretkey = keys.secret_key
        sock.curve_server = True


def _curve_client(sock: zmq.Socket[bytes], keys: CurveClientKeys | None) -> None:
    if keys is not None:
        sock.curve_serverkey = keys.server_public_key
        sock.curve_publickey = keys.public_key
        sock.curve_secretkey = keys.secret_key


class _AllowList:
    """ZAP credentials provider: admit only listed CURVE client keys."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self._keys
        if not allowed:
            log.warning("bus peer refused: unknown CURVE key")
        return allowed


def _await_subscribers(sock: zmq.Socket[bytes], expected: int, timeout: float) -> int:
    """Read an XPUB's subscription messages until ``expected`` came or ``timeout`` passed."""
    seen = 0
    end = time.monotonic() + timeout
    while seen < expected:
        remaining = end - time.monotonic()
        if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
            break
        if sock.recv()[:1] == _SUBSCRIBE_PREFIX:
            seen += 1
    return seen


def _xpub(ctx: zmq.Context[zmq.Socket[bytes]], curve: CurveClientKeys | None,
          linger: float) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # one subscription message per subscriber
    sock.setsockopt(zmq.LINGER, int(linger * 1000))
    _curve_client(sock, curve)
    return sock


def _endpoint(sock: zmq.Socket[Any]) -> str:
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


# -- gateway side --------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    identity: bytes
    service: str
    expires: float  # loop time
    inflight: set[str] = field(default_factory=set)  # ids it holds, answered or not

    @property
    def name(self) -> str:
        return self.identity.hex()


@dataclass(eq=False)
class _Service:
    name: str
    workers: OrderedDict[bytes, _Worker] = field(default_factory=OrderedDict)  # LRU first
    queue: deque[str] = field(default_factory=deque)


@dataclass(eq=False)
class _Pending:
    request: Request
    frame: bytes
    future: asyncio.Future[Reply]
    timer: asyncio.TimerHandle
    worker: bytes | None = None
    attempts: int = 0
    tried: set[bytes] = field(default_factory=set)


class ZmqBus:
    """The gateway's :class:`~shared.bus.interface.BusClient` over ZeroMQ.

    ``bus_endpoint`` and ``events_endpoint`` are *bound* (``tcp://127.0.0.1:*``
    picks a free port; read the result from :attr:`bus_endpoint` /
    :attr:`events_endpoint`). Call :meth:`start` (or use ``async with``) inside
    the event loop before the first request, and :meth:`close` at the end.

    ``worker_window`` is how many requests one worker may hold: 1 (Majordomo)
    means a worker's death costs at most one request, and a non-idempotent
    request is never stuck behind another; more (the default is
    ``DEFAULT_WORKER_WINDOW``) buys throughput (requests wait in the worker's
    socket instead of the gateway's queue, and are retried or failed with it
    when it dies). Requests go to the least loaded worker first.

    ``clock`` sets the requests' absolute deadlines (seconds since the epoch,
    the workers compare them with their own clock); timers run on the event
    loop's monotonic clock.
    """

    def __init__(
        self,
        bus_endpoint: str,
        events_endpoint: str,
        *,
        clock: Clock = time.time,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        liveness: int = HEARTBEAT_LIVENESS,
        curve: CurveServerKeys | None = None,
        worker_window: int = DEFAULT_WORKER_WINDOW,
    ) -> None:
        self._clock = clock
        self._window = worker_window
        self._interval = heartbeat_interval
        self._liveness = liveness
        self._curve = curve
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        if curve is not None and curve.allowed_clients is not None:
            # The ZAP handler must run before the first bind, or early peers go unchecked.
            # Its own thread: the check is a set lookup, and no event loop exists yet.
            self._auth = ThreadAuthenticator(zmq.Context.shadow(self._ctx.underlying))
            self._auth.start()
            self._auth.configure_curve_callback("*", _AllowList(curve.allowed_clients))
        # The ROUTER is a plain socket read from the event loop's selector (add_reader on
        # its FD, drained until EAGAIN): zmq.asyncio's future, poller bookkeeping and flag
        # enums per send and per receive were a large part of the gateway's CPU per request.
        self._router: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.ROUTER)
        self._sub: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.SUB)  # read like the ROUTER
        try:
            for sock in (self._router, self._sub):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_BUS_MESSAGE)  # libzmq drops the peer beyond
                _curve_server(sock, curve)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._router.bind(bus_endpoint)
            self._sub.bind(events_endpoint)
        except zmq.ZMQError as exc:
            self._router.close(0)
            self._sub.close(0)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()
            raise AttestgateError(ErrorCode.INTERNAL, f"bus bind failed: {exc}") from None
        self.bus_endpoint = _endpoint(self._router)
        self.events_endpoint = _endpoint(self._sub)
        self._workers: dict[bytes, _Worker] = {}
        self._services: dict[str, _Service] = {}
        self._pending: dict[str, _Pending] = {}
        self._fanout = EventFanout()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # reading the ROUTER's FD
        self._read_scheduled = False
        self._closed = False
        self.dropped_frames = 0
        # An event frame this returns True for is passed over before decoding (the gateway:
        # new posts while no session follows); None: every event is decoded.
        self.skip_event: Callable[[bytes], bool] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start receiving and heartbeating; idempotent."""
        if self._tasks or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._router.FD, self._on_router_readable)
        self._loop.add_reader(self._sub.FD, self._on_events_readable)
        self._schedule_read()  # whatever arrived before
        self._loop.call_soon(self._on_events_readable)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="bus-heartbeat"),
        ]
        log.info("bus bound bus=%s events=%s", self.bus_endpoint, self.events_endpoint)

    async def __aenter__(self) -> ZmqBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Answer what is pending with ``service_unavailable``, tell workers, free sockets."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            self._loop.remove_reader(self._router.FD)
            self._loop.remove_reader(self._sub.FD)
        for pending in list(self._pending.values()):
            self._answer(pending, Reply.failure(pending.request.id, ErrorCode.SERVICE_UNAVAILABLE))
        for worker in list(self._workers.values()):
            # So that workers re-register at once with whatever gateway comes next.
            self._send(worker.identity, _DISCONNECT)
        self._fanout.close()
        if self._auth is not None:
            self._auth.stop()
        self._router.close(linger=int(BUS_CLOSE_LINGER * 1000))
        self._sub.close(linger=0)
        # term() waits for the linger; keep it off the event loop.
        await asyncio.to_thread(self._ctx.term)

    # -- BusClient ----------------------------------------------------------------------

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
        """See :meth:`BusClient.request`: always a Reply by ``timeout``, never raises."""
        if self._closed:
            return Reply.failure(request_id, ErrorCode.SERVICE_UNAVAILABLE)
        if request_id in self._pending:
            log.error("duplicate request id in flight id=%s", request_id)
            return Reply.failure(request_id, ErrorCode.BAD_REQUEST)
        request = Request(request_id, service, op, body, self._clock() + timeout, idempotent)
        try:
            frame = codec.encode(request)
        except AttestgateError as exc:
            log.error(
                "request not encodable service=%s op=%s id=%s code=%s detail=%s",
                service, op, request_id, exc.code.value, exc.detail,
            )
            return Reply.failure(request_id, exc.code)
        loop = asyncio.get_running_loop()
        pending = _Pending(
            request=request,
            frame=frame,
            future=loop.create_future(),
            timer=loop.call_later(max(timeout, 0.0), self._on_deadline, request_id),
        )
        self._pending[request_id] = pending
        svc = self._service(service)
        svc.queue.append(request_id)
        self._dispatch(svc)
        try:
            return await pending.future
        finally:
            # Normal end or the caller was cancelled: forget the request. A worker
            # holding it keeps its slot until it answers (the answer is then late).
            pending.timer.cancel()
            if self._pending.get(request_id) is pending:
                del self._pending[request_id]
                self._unqueue(pending)

    def events(self) -> AsyncIterator[BusEvent]:
        """Events from every publisher, from the moment of this call; ``aclose()`` when done."""
        return self._fanout.subscribe()

    # -- introspection (admin status, tests) ---------------------------------------------

    def live_workers(self, service: str) -> int:
        svc = self._services.get(service)
        return 0 if svc is None else len(svc.workers)

    def queued(self, service: str) -> int:
        svc = self._services.get(service)
        return 0 if svc is None else len(svc.queue)

    def in_flight(self, service: str) -> tuple[int, ...]:
        """How many requests each live worker of ``service`` holds now."""
        svc = self._services.get(service)
        return () if svc is None else tuple(len(w.inflight) for w in svc.workers.values())

    # -- dispatch -------------------------------------------------------------------------

    def _service(self, name: str) -> _Service:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service(name)
        return svc

    def _dispatch(self, svc: _Service) -> None:
        """Give queued requests to workers with a free slot, least loaded first."""
        while svc.queue and svc.workers:
            # Least loaded; among equals the least recently used (OrderedDict order).
            worker = min(svc.workers.values(), key=lambda w: len(w.inflight))
            if len(worker.inflight) >= self._window:
                return
            request_id = svc.queue.popleft()
            pending = self._pending.get(request_id)
            if pending is None or pending.future.done():
                continue  # answered (deadline) or abandoned while queued
            if not self._send(worker.identity, pending.frame):
                svc.queue.appendleft(request_id)
                self._drop_worker(worker, "unreachable")
                continue
            pending.worker = worker.identity
            pending.attempts += 1
            pending.tried.add(worker.identity)
            worker.inflight.add(request_id)
            svc.workers.move_to_end(worker.identity)

    def _send(self, identity: bytes, frame: bytes) -> bool:
        """Non-blocking send to one worker; False when it is gone (EHOSTUNREACH) or stuck."""
        try:
            self._router.send_multipart([identity, frame], flags=_NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("send failed worker=%s errno=%s", identity.hex(), exc.errno)
            return False
        finally:
            # A send may take the FD's edge for messages that arrived meanwhile (ZeroMQ's
            # FD is edge-triggered): look, and read them soon if so.
            if not self._read_scheduled and cast(int, self._router.getsockopt(_EVENTS)) & _POLLIN:
                self._schedule_read()
        return True

    def _answer(self, pending: _Pending, reply: Reply) -> None:
        pending.timer.cancel()
        if not pending.future.done():
            pending.future.set_result(reply)

    def _on_deadline(self, request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is None or pending.future.done():
            return
        log.warning(
            "request deadline passed service=%s op=%s id=%s worker=%s attempts=%d",
            pending.request.service, pending.request.op, request_id,
            pending.worker.hex() if pending.worker else "-", pending.attempts,
        )
        self._unqueue(pending)
        self._answer(pending, Reply.failure(request_id, ErrorCode.SERVICE_UNAVAILABLE))

    def _unqueue(self, pending: _Pending) -> None:
        if pending.worker is None:  # not with a worker: it may sit in the queue
            svc = self._services.get(pending.request.service)
            if svc is not None and pending.request.id in svc.queue:
                svc.queue.remove(pending.request.id)

    def _drop_worker(self, worker: _Worker, reason: str) -> None:
        """Forget a worker; retry its idempotent requests, fail the others. Caller dispatches."""
        self._workers.pop(worker.identity, None)
        svc = self._service(worker.service)
        svc.workers.pop(worker.identity, None)
        retried = failed = 0
        for request_id in sorted(worker.inflight, reverse=True):
            pending = self._pending.get(request_id)
            if pending is None or pending.future.done() or pending.worker != worker.identity:
                continue
            pending.worker = None
            if pending.request.idempotent and pending.attempts < MAX_ATTEMPTS:
                svc.queue.appendleft(request_id)
                retried += 1
            else:
                failed += 1
                self._answer(pending, Reply.failure(request_id, ErrorCode.SERVICE_UNAVAILABLE))
        worker.inflight.clear()
        log.warning(
            "worker %s service=%s worker=%s inflight=%d retried=%d failed=%d live=%d",
            reason, worker.service, worker.name, retried + failed, retried, failed,
            len(svc.workers),
        )

    # -- receiving ------------------------------------------------------------------------

    def _schedule_read(self) -> None:
        if self._loop is not None and not self._read_scheduled and not self._closed:
            self._read_scheduled = True
            self._loop.call_soon(self._on_router_readable)

    def _on_router_readable(self) -> None:
        """Read what the ROUTER holds, up to _DRAIN_MAX messages per turn of the loop
        (then the rest on the next turn, so that sessions are not starved)."""
        self._read_scheduled = False
        if self._closed:
            return
        for _ in range(_DRAIN_MAX):
            try:
                frames = _waiting(self._router)
            except zmq.ZMQError as exc:
                log.error("bus receive failed errno=%s", exc.errno)
                return
            if frames is None:
                return
            try:
                self._on_worker_message(frames)
            except Exception:  # a bug here must not take the gateway's bus down
                log.exception("bus: error handling a worker frame")
        self._schedule_read()

    def _on_worker_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._drop_frame(frames[0] if frames else b"", f"{len(frames)} parts")
            return
        identity, data = frames
        try:
            message = codec.decode(data)
        except AttestgateError as exc:
            self._drop_frame(identity, f"{exc.code.value} {exc.detail}")
            return
        worker = self._workers.get(identity)
        if worker is not None:
            worker.expires = asyncio.get_running_loop().time() + self._interval * self._liveness
        match message:
            case codec.Ready(service=service):
                self._on_ready(identity, worker, service)
            case codec.Heartbeat():
                if worker is None:
                    log.info("unknown worker told to reconnect worker=%s", identity.hex())
                    self._send(identity, _DISCONNECT)
            case Reply():
                self._on_reply(identity, worker, message)
            case codec.Disconnect():
                if worker is not None:
                    self._drop_worker(worker, "disconnected")
                    self._dispatch(self._service(worker.service))
            case _:
                self._drop_frame(identity, f"unexpected {type(message).__name__}")

    def _on_ready(self, identity: bytes, worker: _Worker | None, service: str) -> None:
        if worker is not None:
            if worker.service != service:
                self._drop_frame(identity, "READY for another service")
                self._drop_worker(worker, "confused")
                self._send(identity, _DISCONNECT)
                self._dispatch(self._service(worker.service))
            return
        expires = asyncio.get_running_loop().time() + self._interval * self._liveness
        worker = _Worker(identity, service, expires)
        self._workers[identity] = worker
        svc = self._service(service)
        svc.workers[identity] = worker
        svc.workers.move_to_end(identity, last=False)  # idle and fresh: first in line
        log.info(
            "worker ready service=%s worker=%s live=%d queued=%d",
            service, worker.name, len(svc.workers), len(svc.queue),
        )
        self._dispatch(svc)

    def _on_reply(self, identity: bytes, worker: _Worker | None, reply: Reply) -> None:
        if worker is None:
            log.info("reply from unknown worker, told to reconnect worker=%s", identity.hex())
            self._send(identity, _DISCONNECT)
        else:
            worker.inflight.discard(reply.id)
        pending = self._pending.get(reply.id)
        if pending is None or pending.future.done() or identity not in pending.tried:
            log.debug("late or duplicate reply dropped id=%s worker=%s", reply.id, identity.hex())
        else:
            self._answer(pending, reply)
        if worker is not None:
            self._dispatch(self._service(worker.service))

    def _drop_frame(self, identity: bytes, reason: str) -> None:
        self.dropped_frames += 1
        log.warning("bus frame dropped peer=%s reason=%s", identity.hex(), reason)

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            now = loop.time()
            touched: set[str] = set()
            for worker in list(self._workers.values()):
                if worker.expires <= now:
                    self._drop_worker(worker, "expired")
                    touched.add(worker.service)
                elif not self._send(worker.identity, _HEARTBEAT):
                    self._drop_worker(worker, "unreachable")
                    touched.add(worker.service)
            for name in touched:
                self._dispatch(self._service(name))

    def _on_events_readable(self) -> None:
        """Read the events that arrived, up to _DRAIN_MAX per turn of the loop."""
        if self._closed:
            return
        for _ in range(_DRAIN_MAX):
            try:
                frames = _waiting(self._sub)
            except zmq.ZMQError as exc:
                log.error("events receive failed errno=%s", exc.errno)
                return
            if frames is None:
                return
            self._on_event(frames)
        assert self._loop is not None
        self._loop.call_soon(self._on_events_readable)

    def _on_event(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self._drop_frame(b"", f"event with {len(frames)} parts")
            return
        if self.skip_event is not None and self.skip_event(frames[0]):
            return
        try:
            message = codec.decode(frames[0])
        except AttestgateError as exc:
            self._drop_frame(b"", f"event {exc.code.value} {exc.detail}")
            return
        if not isinstance(message, BusEvent):
            self._drop_frame(b"", f"unexpected {type(message).__name__} on events")
            return
        self._fanout.publish(message)


def _waiting(sock: zmq.Socket[bytes]) -> list[bytes] | None:
    """The next message waiting on ``sock`` (its parts), or None: asking EVENTS first
    spares the zmq.Again exception that ended every drain (a tenth of the gateway's bus
    CPU per request)."""
    if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
        return None
    parts = [sock.recv(_NOBLOCK)]
    while sock.getsockopt(_RCVMORE):
        parts.append(sock.recv(_NOBLOCK))
    return parts


# -- publisher (outside a worker) ---------------------------------------------------------


class ZmqPublisher:
    """Publishes events to every gateway's events endpoint (the operator CLI).

    The constructor connects and waits — at most ``connect_timeout`` — until
    every endpoint's subscriber has joined (an XPUB sees each subscription), so
    the first event is not lost to the slow-joiner problem. :attr:`subscribers`
    tells how many joined in time. Blocking: not for an event loop.
    ``close()`` waits up to ``linger`` for queued events to leave.
    """

    def __init__(
        self,
        events_endpoints: Sequence[str],
        *,
        connect_timeout: float = PUBLISH_CONNECT_TIMEOUT,
        linger: float = PUBLISH_LINGER,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self._linger = linger
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = _xpub(self._ctx, curve, linger)
        for endpoint in events_endpoints:
            self._sock.connect(endpoint)
        self.subscribers = _await_subscribers(self._sock, len(events_endpoints), connect_timeout)
        if self.subscribers < len(events_endpoints):
            log.warning(
                "publisher: %d of %d gateways subscribed within %.1fs",
                self.subscribers, len(events_endpoints), connect_timeout,
            )

    def publish(self, event: BusEvent) -> None:
        """Queue ``event`` for every subscriber; raises AttestgateError if not encodable."""
        if self._sock is None:
            raise AttestgateError(ErrorCode.INTERNAL, "publisher is closed")
        frame = codec.encode(event)
        try:
            self._sock.send(frame, flags=zmq.DONTWAIT)
        except zmq.ZMQError as exc:  # XPUB drops at HWM instead; this is only paranoia
            log.error("event not sent topic=%s errno=%s", event.topic, exc.errno)

    def close(self) -> None:
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        self._ctx.term()  # returns once queued events left, or after linger


# -- worker side --------------------------------------------------------------------------


class WorkerConnection:
    """A worker's sockets, synchronous: one DEALER per gateway ("link"), one PUB.

    Only moves bytes; the Majordomo logic (READY, heartbeats, reconnects) is in
    :func:`shared.worker.run_worker`.
    """

    def __init__(
        self,
        bus_endpoints: Sequence[str],
        events_endpoints: Sequence[str],
        *,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.bus_endpoints = tuple(bus_endpoints)
        self._curve = curve
        self._ctx = zmq.Context()
        # The links' ZMQ_FDs, waited on directly (see poll); zmq.Poller asked EVENTS of
        # every socket, the XPUB's too, before and after each wait (measured with an echo
        # worker: 11.1 -> 7.7 poll(2) per request, the I/O thread's included).
        self._fds = select.poll()
        self._dealers: list[zmq.Socket[bytes] | None] = [None] * len(self.bus_endpoints)
        self._dealer_fds: list[int] = [-1] * len(self.bus_endpoints)
        self._events_endpoints = tuple(events_endpoints)
        # XPUB rather than PUB: it tells when the gateways' subscriptions arrived. Once
        # running, what it receives (a restarted gateway subscribing again) needs no
        # answer: it is drained every _SUBSCRIPTION_DRAIN seconds so it does not pile up.
        self._pub = _xpub(self._ctx, curve, BUS_CLOSE_LINGER)
        for endpoint in self._events_endpoints:
            self._pub.connect(endpoint)
        self._next_sub_drain = 0.0

    def await_subscribers(self, timeout: float) -> int:
        """Wait (bounded) until every events endpoint subscribed; returns how many did.

        Call before the first READY: events from the first requests are then not
        lost to the slow-joiner problem. A gateway that is down is not waited for
        longer than ``timeout``.
        """
        expected = len(self._events_endpoints)
        seen = _await_subscribers(self._pub, expected, timeout)
        if seen < expected:
            log.warning("events: %d of %d gateways subscribed within %.1fs",
                        seen, expected, timeout)
        return seen

    def open(self, link: int) -> None:
        """(Re)connect link ``link`` with a fresh socket, hence a fresh identity."""
        self.close_link(link)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_BUS_MESSAGE)
        _curve_client(sock, self._curve)
        sock.connect(self.bus_endpoints[link])
        self._dealers[link] = sock
        self._dealer_fds[link] = cast(int, sock.getsockopt(zmq.FD))
        self._fds.register(self._dealer_fds[link], select.POLLIN)

    def close_link(self, link: int, linger: float = 0.0) -> None:
        sock = self._dealers[link]
        if sock is not None:
            self._fds.unregister(self._dealer_fds[link])
            self._dealer_fds[link] = -1
            sock.close(linger=int(linger * 1000))
            self._dealers[link] = None

    def send(self, link: int, frame: bytes) -> bool:
        """Non-blocking; False when the link is closed or its queue is full."""
        sock = self._dealers[link]
        if sock is None:
            return False
        try:
            sock.send(frame, flags=_NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("send failed gateway=%s errno=%s", self.bus_endpoints[link], exc.errno)
            return False
        return True

    def poll(self, timeout: float) -> list[tuple[int, bytes]]:
        """Wait up to ``timeout`` s; return single-part messages as (link, frame).

        A ZeroMQ FD is edge-triggered and also fires for the socket's own commands: it
        is waited on only once EVENTS said nothing is waiting (every send or receive in
        between may consume its signal), so what is already queued is returned at once
        and a wake-up with nothing queued is only an early return.
        """
        now = time.monotonic()
        if now >= self._next_sub_drain:
            self._next_sub_drain = now + _SUBSCRIPTION_DRAIN
            self._drain_subscriptions()
        out = self._drain()
        if out or timeout <= 0:
            return out
        # EINTR (a stop signal) is retried by Python (PEP 475): the wait ends at the
        # timeout, which the worker keeps at most BUS_POLL_MAX.
        self._fds.poll(max(1, int(timeout * 1000)))
        return self._drain()

    def _drain(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for link, sock in enumerate(self._dealers):
            if sock is None:
                continue
            for _ in range(_DRAIN_MAX):
                parts = _waiting(sock)
                if parts is None:
                    break
                if len(parts) == 1:
                    out.append((link, parts[0]))
                else:
                    log.warning(
                        "bus frame dropped gateway=%s reason=%d parts",
                        self.bus_endpoints[link], len(parts),
                    )
        return out

    def _drain_subscriptions(self) -> None:
        # (Re)subscriptions of restarted gateways; nothing to do but not let them pile up.
        for _ in range(_DRAIN_MAX):
            if _waiting(self._pub) is None:
                return

    def publish(self, frame: bytes) -> None:
        try:
            self._pub.send(frame, flags=_NOBLOCK)
        except zmq.ZMQError as exc:
            log.error("event not sent errno=%s", exc.errno)

    def close(self, linger: float = BUS_CLOSE_LINGER) -> None:
        """Close every socket, letting queued frames (DISCONNECT, events) leave for ``linger``."""
        for link in range(len(self._dealers)):
            self.close_link(link, linger)
        self._pub.close(linger=int(linger * 1000))
        self._ctx.term()
