"""What the gateway tells operators: Prometheus metrics, its health document, webhook events.

:class:`MeteredBus` wraps the gateway's bus client: every request is timed and counted,
the attestor's ``attest`` replies feed the attestation latency histogram, refusals of the
handshake ops are counted by code (and, for an authenticated device, become webhook
events), stored posts are counted. Nothing in the gateway's handlers changes for it.

Metrics (process ``gateway``)::

    attestgate_gateway_connections_total{mode}       preambles read: enroll | connect
    attestgate_gateway_admission_total{reason}       turned away by admission control
    attestgate_refusals_total{code}                  handshake and attestation refusals
    attestgate_attestation_seconds                   attest request round trip (histogram)
    attestgate_sessions                              live attested sessions
    attestgate_bus_workers{service}                  workers registered with this gateway
    attestgate_bus_queue_depth{service}              requests waiting for a worker
    attestgate_bus_inflight{service}                 requests held by workers
    attestgate_bus_requests_total{service,op,outcome}
    attestgate_bus_request_seconds{service,op}       (histogram)
    attestgate_posts_total                           posts stored (board replied ok)
    attestgate_webhook_deliveries_total{outcome}     delivered | retried | failed | dropped

The state these read lives in the event loop; :meth:`Observer.snapshot` runs there
(``call_soon_threadsafe``) when the metrics thread asks, so no dict is read mid-change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.bus.interface import Body, BusClient, BusEvent, Reply
from shared.errors import ErrorCode
from shared.metrics import LATENCY_BUCKETS
from shared.webhook import Kind, WebhookEvent, changed_of, status_event_id
from shared.wire import Event, Service

log = logging.getLogger("attestgate.gateway")

SERVICES: Final = tuple(s.value for s in Service)
SNAPSHOT_TIMEOUT: Final = 2.0  # a loop that cannot answer within this is reported down
NAME_LOOKUP_TIMEOUT: Final = 2.0  # webhook enrichment: the device's name from the registry
# (service, op) whose failed replies refuse a handshake, an enrollment or an attestation
REFUSAL_OPS: Final = frozenset({
    ("attestor", "attest"), ("attestor", "enroll_begin"), ("attestor", "enroll_finish"),
    ("registry", "register"), ("registry", "connect"), ("registry", "token_psk"),
})
_OUTAGES: Final = frozenset({ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.STORE_UNAVAILABLE})
_ADMISSION: Final = ("opening_timeout", "opening_evicted", "rate_limited", "queue_full",
                     "slot_wait_timeout", "refused_sessions", "handshake_timeout")


class BusStats(Protocol):
    def live_workers(self, service: str) -> int: ...
    def queued(self, service: str) -> int: ...
    def in_flight(self, service: str) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class ServiceStats:
    workers: int
    queued: int
    inflight: int


@dataclass(frozen=True)
class Snapshot:
    listening: bool
    sessions: int
    services: Mapping[str, ServiceStats]
    counters: Mapping[str, int] = field(default_factory=dict)

    def health(self) -> dict[str, Any]:
        """The /healthz document: ok when listening and every service has a worker."""
        down = [s for s, v in self.services.items() if v.workers == 0]
        return {
            "ok": self.listening and not down,
            "process": "gateway",
            "listening": self.listening,
            "sessions": self.sessions,
            "services": {s: {"workers": v.workers, "queued": v.queued, "inflight": v.inflight}
                         for s, v in self.services.items()},
            "down": (["listener"] if not self.listening else []) + down,
        }


def take_snapshot(stats: BusStats, listening: bool, sessions: int,
                  counters: Mapping[str, int]) -> Snapshot:
    return Snapshot(listening, sessions,
                    {s: ServiceStats(stats.live_workers(s), stats.queued(s),
                                     sum(stats.in_flight(s)))
                     for s in SERVICES}, dict(counters))


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.refusals = Counter("attestgate_refusals", "handshake, enrollment and attestation "
                                "refusals by error code", ["code"], registry=self.registry)
        self.attestation = Histogram("attestgate_attestation_seconds", "round trip of an "
                                     "attest request (quote verification), seconds",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bus_requests = Counter("attestgate_bus_requests", "bus requests by service, op and "
                                    "outcome (ok or an error code)", ["service", "op", "outcome"],
                                    registry=self.registry)
        self.bus_seconds = Histogram("attestgate_bus_request_seconds", "bus request round trip",
                                     ["service", "op"], buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
        self.posts = Counter("attestgate_posts", "posts stored", registry=self.registry)
        self.webhook = Counter("attestgate_webhook_deliveries", "webhook events by outcome",
                               ["outcome"], registry=self.registry)
        self.latest: Snapshot | None = None
        self.registry.register(_SnapshotCollector(self))


class _SnapshotCollector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        snap = self._metrics.latest
        if snap is None:
            return
        sessions = GaugeMetricFamily("attestgate_sessions", "live attested sessions")
        sessions.add_metric([], snap.sessions)
        yield sessions
        for name, helptext, attr in (
                ("attestgate_bus_workers", "workers registered with this gateway", "workers"),
                ("attestgate_bus_queue_depth", "requests waiting for a worker", "queued"),
                ("attestgate_bus_inflight", "requests held by workers", "inflight")):
            g = GaugeMetricFamily(name, helptext, labels=["service"])
            for s, v in snap.services.items():
                g.add_metric([s], getattr(v, attr))
            yield g
        modes = CounterMetricFamily("attestgate_gateway_connections", "connections by mode",
                                    labels=["mode"])
        for mode in ("enroll", "connect"):
            modes.add_metric([mode], snap.counters.get(f"mode_{mode}", 0))
        yield modes
        admission = CounterMetricFamily("attestgate_gateway_admission", "connections turned "
                                        "away by admission control", labels=["reason"])
        for reason in _ADMISSION:
            admission.add_metric([reason], snap.counters.get(reason, 0))
        yield admission


class Observer:
    """Takes snapshots in the event loop for the metrics thread."""

    def __init__(self, metrics: GatewayMetrics, loop: asyncio.AbstractEventLoop,
                 take: Callable[[], Snapshot]) -> None:
        self.metrics = metrics
        self._loop = loop
        self._take = take

    def snapshot(self) -> Snapshot:
        """From any thread; raises TimeoutError when the loop does not answer in time."""
        done: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(self._take())
            except Exception as exc:  # reported as unhealthy by the caller
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        snap = done.result(SNAPSHOT_TIMEOUT)
        self.metrics.latest = snap
        return snap

    def refresh(self) -> None:
        self.snapshot()

    def health(self) -> dict[str, Any]:
        try:
            return self.snapshot().health()
        except concurrent.futures.TimeoutError:
            return {"ok": False, "process": "gateway", "down": ["event_loop"]}


# -- the bus wrapper ---------------------------------------------------------------------------


class Notify(Protocol):
    def refused(self, device_id: str, code: str, body: Mapping[str, Any]) -> None: ...


class MeteredBus:
    """A :class:`BusClient` that measures ``inner`` and reports refusals to ``notify``."""

    def __init__(self, inner: BusClient, metrics: GatewayMetrics,
                 notify: Notify | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self.metrics = metrics
        self.notify = notify
        self._clock = clock
        # Labelled children, looked up once (``labels()`` costs a lock and a dict per call).
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def request(self, service: str, op: str, body: Body, *, request_id: str,
                      timeout: float, idempotent: bool = True) -> Reply:
        start = self._clock()
        reply = await self.inner.request(service, op, body, request_id=request_id,
                                          timeout=timeout, idempotent=idempotent)
        seconds = self._clock() - start
        outcome = reply.error.value if reply.error is not None else "ok"
        m = self.metrics
        counted = self._counted.get((service, op, outcome))
        if counted is None:
            counted = self._counted[service, op, outcome] = m.bus_requests.labels(
                service, op, outcome)
        counted.inc()
        timed = self._timed.get((service, op))
        if timed is None:
            timed = self._timed[service, op] = m.bus_seconds.labels(service, op)
        timed.observe(seconds)
        if (service, op) == ("attestor", "attest"):
            m.attestation.observe(seconds)
        if reply.error in _OUTAGES:
            log.error("outage service=%s op=%s req=%s code=%s", service, op, request_id,
                      outcome)
        if reply.error is not None and (service, op) in REFUSAL_OPS:
            m.refusals.labels(outcome).inc()
            if (service, op) == ("attestor", "attest"):
                # Authenticated: the device proved its key. Refusals are the operator's news.
                log.warning("attestation refused device=%s code=%s",
                            body.get("device_id"), outcome)
                if self.notify is not None:
                    self.notify.refused(str(body.get("device_id", "")), outcome, reply.body)
        if (service, op) == ("board", "post") and reply.error is None:
            m.posts.inc()
        return reply

    def events(self) -> AsyncIterator[BusEvent]:
        return self.inner.events()

    async def close(self) -> None:
        await self.inner.close()


# -- webhook feed -----------------------------------------------------------------------------


class Submit(Protocol):
    def submit(self, event: WebhookEvent) -> bool: ...


class Notifier:
    """Turns refusals (from :class:`MeteredBus`) and lock/revoke bus events into webhook
    events, with the device's name from the registry, in tasks of their own: the
    attestation that caused one has already been answered."""

    def __init__(self, bus: BusClient, sender: Submit, clock: Callable[[], float] = time.time
                 ) -> None:
        self._bus = bus
        self._sender = sender
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._events = asyncio.create_task(self._watch(), name="webhook-events")

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._events] if self._events else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._events] if self._events else []),
                             return_exceptions=True)

    def refused(self, device_id: str, code: str, body: Mapping[str, Any]) -> None:
        failures = body.get("failures")
        self._spawn(Kind.REFUSED, uuid.uuid4().hex, device_id, code,
                    str(body.get("status", "")), failures if isinstance(failures, int) else None,
                    changed_of(body.get("changed")))

    async def _watch(self) -> None:
        async for event in self._bus.events():
            if event.topic not in (Event.DEVICE_LOCKED.value, Event.DEVICE_REVOKED.value):
                continue
            device_id = event.body.get("device_id")
            if not isinstance(device_id, str):
                continue
            status = str(event.body.get("status", event.topic))
            kind = Kind.REVOKED if event.topic == Event.DEVICE_REVOKED.value else (
                Kind.REENROLL if status == "reenroll" else Kind.LOCKED)
            code = {Kind.REVOKED: "revoked", Kind.LOCKED: "locked"}.get(kind, "reenroll_required")
            self._spawn(kind, status_event_id(kind, device_id), device_id, code, status, None,
                        None)

    def _spawn(self, kind: Kind, event_id: str, device_id: str, code: str, status: str,
               failures: int | None, changed: tuple[Mapping[str, Any], ...] | None) -> None:
        ts = self._clock()
        task = asyncio.create_task(self._send(kind, event_id, device_id, code, status, failures,
                                              changed, ts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, kind: Kind, event_id: str, device_id: str, code: str, status: str,
                    failures: int | None, changed: tuple[Mapping[str, Any], ...] | None,
                    ts: float) -> None:
        name = ""
        reply = await self._bus.request("registry", "show_device", {"device": device_id},
                                        request_id=f"wh-{event_id[:16]}-{uuid.uuid4().hex[:8]}",
                                        timeout=NAME_LOOKUP_TIMEOUT)
        if reply.ok:
            name = str(reply.body.get("name", ""))
            if changed is None:
                changed = changed_of(reply.body.get("last_diff"))
            if failures is None and isinstance(reply.body.get("failures"), int):
                failures = int(reply.body["failures"])
        else:
            log.warning("webhook: device name not found device=%s code=%s", device_id,
                        reply.error)
        self._sender.submit(WebhookEvent(event_id, kind, device_id, name, code, ts, status,
                                         failures, changed or ()))
