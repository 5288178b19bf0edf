"""The one worker loop every service runs (Majordomo worker, zguide ``mdwrkapi``).

A service's ``__main__`` is a few lines::

    stop = threading.Event()
    install_stop_signals(stop)
    run_worker(Service.BOARD, handle, deps, bus_endpoints=[...], events_endpoints=[...], stop=stop)

The loop connects its event publisher to every gateway, waits (at most
``PUBLISH_CONNECT_TIMEOUT``) until they subscribed so that no early event is
lost, connects to every gateway's bus (one link each), sends READY, heartbeats
every ``heartbeat_interval`` (also while idle), and runs each request through
``handler(request, deps, clock())`` — synchronously, one at a time, so a
handler should be short: while it runs no heartbeats go out, and a gateway
expires a worker silent for ``liveness`` intervals (its idempotent requests are
then retried elsewhere). A gateway keeps up to its window of requests (default
8) queued at each worker; each poll reads every frame waiting on every link
(non-blocking, up to a bound) and serves them in order, every reply also telling
the gateway that the worker is alive. After the reply is sent, ``reply.events`` are
published. A gateway silent for ``liveness`` intervals, or one that sends
DISCONNECT, is reconnected with a fresh socket and READY; successive
reconnects back off exponentially from ``reconnect_initial`` to
``reconnect_max``. When ``stop`` is set the loop finishes the current request,
sends DISCONNECT to every gateway and returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final, Generic

from shared.bus import codec
from shared.bus.interface import D, Handler, Reply, Request
from shared.bus.memory import call_handler
from shared.bus.zmq_bus import CurveClientKeys, WorkerConnection
from shared.errors import AttestgateError, ErrorCode
from shared.timing import (
    BUS_POLL_MAX,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    PUBLISH_CONNECT_TIMEOUT,
    RECONNECT_INITIAL,
    RECONNECT_MAX,
)

log = logging.getLogger("attestgate.bus")

_HEARTBEAT: Final = codec.encode(codec.HEARTBEAT)
_DISCONNECT: Final = codec.encode(codec.DISCONNECT)


@dataclass
class _Link:
    """One gateway as this worker sees it; times are ``time.monotonic()``."""

    endpoint: str
    connected: bool = False
    expires: float = 0.0  # the gateway is presumed dead after this
    next_heartbeat: float = 0.0
    reconnect_at: float = 0.0
    backoff: float = RECONNECT_INITIAL


def install_stop_signals(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT set ``stop`` (call from the main thread)."""

    def _handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after the current request", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def run_worker(
    service: str,
    handler: Handler[D],
    deps: D,
    *,
    bus_endpoints: Sequence[str],
    events_endpoints: Sequence[str],
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    liveness: int = HEARTBEAT_LIVENESS,
    reconnect_initial: float = RECONNECT_INITIAL,
    reconnect_max: float = RECONNECT_MAX,
    curve: CurveClientKeys | None = None,
) -> None:
    """Serve ``service`` until ``stop`` is set; blocking. See the module docstring.

    ``heartbeat_interval`` and ``liveness`` must match the gateways'.
    """
    if not bus_endpoints:
        raise ValueError("run_worker needs at least one bus endpoint")
    loop = _WorkerLoop(
        service,
        handler,
        deps,
        WorkerConnection(bus_endpoints, events_endpoints, curve=curve),
        clock=clock,
        heartbeat_interval=heartbeat_interval,
        liveness=liveness,
        reconnect_initial=reconnect_initial,
        reconnect_max=reconnect_max,
    )
    loop.run(stop if stop is not None else threading.Event())


class _WorkerLoop(Generic[D]):
    def __init__(
        self,
        service: str,
        handler: Handler[D],
        deps: D,
        conn: WorkerConnection,
        *,
        clock: Callable[[], float],
        heartbeat_interval: float,
        liveness: int,
        reconnect_initial: float,
        reconnect_max: float,
    ) -> None:
        self.service = service
        self.handler = handler
        self.deps = deps
        self.conn = conn
        self.clock = clock
        self.interval = heartbeat_interval
        self.silence = heartbeat_interval * liveness
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.links = [_Link(e, backoff=reconnect_initial) for e in conn.bus_endpoints]
        self.ready = codec.encode(codec.Ready(service))

    def run(self, stop: threading.Event) -> None:
        log.info("worker starting service=%s gateways=%s", self.service,
                 ",".join(link.endpoint for link in self.links))
        try:
            # Register only once the gateways listen to our events (bounded wait).
            self.conn.await_subscribers(PUBLISH_CONNECT_TIMEOUT)
            now = time.monotonic()
            for index in range(len(self.links)):
                self.connect(index, now)
            while not stop.is_set():
                self.receive(stop)
                self.timers(time.monotonic())
            log.info("worker stopping service=%s", self.service)
            for index, link in enumerate(self.links):
                if link.connected:
                    self.conn.send(index, _DISCONNECT)
        finally:
            self.conn.close()

    def receive(self, stop: threading.Event) -> None:
        now = time.monotonic()
        wake = now + BUS_POLL_MAX
        for link in self.links:
            wake = min(wake, link.next_heartbeat if link.connected else link.reconnect_at)
        reopened: set[int] = set()
        for index, data in self.conn.poll(max(0.0, wake - now)):
            link = self.links[index]
            if stop.is_set():
                return  # the gateway retries or fails what we leave unread
            if not link.connected or index in reopened:
                continue  # read from a socket that is closed by now
            try:
                message = codec.decode(data)
            except AttestgateError as exc:
                log.warning("bus frame dropped gateway=%s code=%s detail=%s",
                            link.endpoint, exc.code.value, exc.detail)
                continue
            arrived = time.monotonic()
            link.expires = arrived + self.silence
            link.backoff = self.reconnect_initial  # this gateway is alive
            match message:
                case Request():
                    self.serve(index, message)
                    # We could not listen while the handler ran: give every gateway
                    # one interval to be heard before calling it silent.
                    after = time.monotonic() + self.interval
                    for other in self.links:
                        other.expires = max(other.expires, after)
                case codec.Heartbeat():
                    pass
                case codec.Disconnect():
                    log.info("gateway asked to reconnect service=%s gateway=%s",
                             self.service, link.endpoint)
                    self.connect(index, arrived)
                    reopened.add(index)
                case _:
                    log.warning("bus frame dropped gateway=%s reason=unexpected %s",
                                link.endpoint, type(message).__name__)

    def timers(self, now: float) -> None:
        for index, link in enumerate(self.links):
            if not link.connected:
                if now >= link.reconnect_at:
                    log.info("reconnecting service=%s gateway=%s", self.service, link.endpoint)
                    self.connect(index, now)
            elif now >= link.expires:
                self.lost(index, now)
            elif now >= link.next_heartbeat:
                self.conn.send(index, _HEARTBEAT)
                link.next_heartbeat = now + self.interval

    def connect(self, index: int, now: float) -> None:
        self.conn.open(index)
        self.conn.send(index, self.ready)  # queued by ZeroMQ until the gateway is reachable
        link = self.links[index]
        link.connected = True
        link.expires = now + self.silence
        link.next_heartbeat = now + self.interval

    def lost(self, index: int, now: float) -> None:
        link = self.links[index]
        self.conn.close_link(index)
        link.connected = False
        link.reconnect_at = now + link.backoff
        log.warning("gateway silent service=%s gateway=%s reconnect_in=%.2fs",
                    self.service, link.endpoint, link.backoff)
        link.backoff = min(link.backoff * 2, self.reconnect_max)

    def serve(self, index: int, request: Request) -> None:
        reply: Reply
        if request.service != self.service:
            log.warning("request for another service dropped service=%s id=%s asked=%s",
                        self.service, request.id, request.service)
            reply = Reply.failure(request.id, ErrorCode.PROTOCOL)
            frame = codec.encode(reply)
        else:
            reply, frame = call_handler(self.handler, request, self.deps, self.clock())
        if not self.conn.send(index, frame):
            log.warning("reply not sent service=%s id=%s gateway=%s",
                        self.service, request.id, self.links[index].endpoint)
        for event in reply.events:
            try:
                self.conn.publish(codec.encode(event))
            except AttestgateError as exc:
                log.error("event not encodable service=%s id=%s topic=%s code=%s",
                          self.service, request.id, event.topic, exc.code.value)
