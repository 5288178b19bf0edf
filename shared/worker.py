"""The one worker loop every service runs (Majordomo worker, zguide ``mdwrkapi``).

A service's ``__main__`` is a few lines::

    stop = threading.Event()
    install_stop_signals(stop)
    run_worker(Service.BOARD, handle, deps, bus_endpoints=[...], events_endpoints=[...], stop=stop)

The loop connects to every gateway (one link each), sends READY, heartbeats
every ``heartbeat_interval`` (also while idle), and runs each request through
``handler(request, deps, clock())`` — synchronously, one at a time, so a
handler should be short: while it runs no heartbeats go out, and a gateway
expires a worker silent for ``liveness`` intervals (its idempotent request is
then retried elsewhere). After the reply is sent, ``reply.events`` are
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

from shared.bus import codec
from shared.bus.interface import D, Handler, Reply, Request
from shared.bus.memory import call_handler
from shared.bus.zmq_bus import CurveClientKeys, WorkerConnection
from shared.errors import AttestgateError, ErrorCode
from shared.timing import (
    BUS_POLL_MAX,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    RECONNECT_INITIAL,
    RECONNECT_MAX,
)

log = logging.getLogger("attestgate.bus")


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
    stop = stop if stop is not None else threading.Event()
    ready = codec.encode(codec.Ready(service))
    heartbeat = codec.encode(codec.HEARTBEAT)
    silence = heartbeat_interval * liveness
    links = [_Link(endpoint, backoff=reconnect_initial) for endpoint in bus_endpoints]
    conn = WorkerConnection(bus_endpoints, events_endpoints, curve=curve)

    def connect(index: int, now: float) -> None:
        conn.open(index)
        conn.send(index, ready)  # queued by ZeroMQ until the gateway is reachable
        link = links[index]
        link.connected = True
        link.expires = now + silence
        link.next_heartbeat = now + heartbeat_interval

    def lost(index: int, now: float, reason: str) -> None:
        link = links[index]
        conn.close_link(index)
        link.connected = False
        link.reconnect_at = now + link.backoff
        log.warning(
            "gateway %s service=%s gateway=%s reconnect_in=%.2fs",
            reason, service, link.endpoint, link.backoff,
        )
        link.backoff = min(link.backoff * 2, reconnect_max)

    def serve(index: int, request: Request) -> None:
        if request.service != service:
            log.warning("request for another service dropped service=%s id=%s asked=%s",
                        service, request.id, request.service)
            reply: Reply = Reply.failure(request.id, ErrorCode.PROTOCOL)
            frame = codec.encode(reply)
        else:
            reply, frame = call_handler(handler, request, deps, clock())
        if not conn.send(index, frame):
            log.warning("reply not sent service=%s id=%s gateway=%s",
                        service, request.id, links[index].endpoint)
        for event in reply.events:
            try:
                conn.publish(codec.encode(event))
            except AttestgateError as exc:
                log.error("event not encodable service=%s id=%s topic=%s code=%s",
                          service, request.id, event.topic, exc.code.value)

    log.info("worker starting service=%s gateways=%s", service, ",".join(bus_endpoints))
    try:
        start = time.monotonic()
        for index in range(len(links)):
            connect(index, start)
        while not stop.is_set():
            now = time.monotonic()
            wake = now + BUS_POLL_MAX
            for link in links:
                wake = min(wake, link.next_heartbeat if link.connected else link.reconnect_at)
            for index, data in conn.poll(max(0.0, wake - now)):
                link = links[index]
                if not link.connected:
                    continue
                try:
                    message = codec.decode(data)
                except AttestgateError as exc:
                    log.warning("bus frame dropped gateway=%s code=%s detail=%s",
                                link.endpoint, exc.code.value, exc.detail)
                    continue
                arrived = time.monotonic()
                link.expires = arrived + silence
                link.backoff = reconnect_initial  # the gateway is alive
                match message:
                    case Request():
                        serve(index, message)
                    case codec.Heartbeat():
                        pass
                    case codec.Disconnect():
                        log.info("gateway asked to reconnect service=%s gateway=%s",
                                 service, link.endpoint)
                        connect(index, arrived)
                    case _:
                        log.warning("bus frame dropped gateway=%s reason=unexpected %s",
                                    link.endpoint, type(message).__name__)
                if stop.is_set():
                    break
            now = time.monotonic()
            for index, link in enumerate(links):
                if not link.connected:
                    if now >= link.reconnect_at:
                        log.info("reconnecting service=%s gateway=%s", service, link.endpoint)
                        connect(index, now)
                elif now >= link.expires:
                    lost(index, now, "silent")
                elif now >= link.next_heartbeat:
                    conn.send(index, heartbeat)
                    link.next_heartbeat = now + heartbeat_interval
        log.info("worker stopping service=%s", service)
        disconnect = codec.encode(codec.DISCONNECT)
        for index, link in enumerate(links):
            if link.connected:
                conn.send(index, disconnect)
    finally:
        conn.close()
