"""Prometheus metrics and a health document over HTTP, one small server per process.

Every process (gateway, attestor, registry, board) serves ``GET /metrics`` (Prometheus
text) and ``GET /healthz`` (JSON; 200 when ``ok``, else 503) on its own loopback port
(:mod:`shared.ops_settings`: ATTESTGATE_METRICS_LISTEN + offset). The server is a
thread of its own (stdlib ``http.server``), so a synchronous worker loop and the
gateway's event loop both keep it without blocking on it. It serves nothing else:
no device facts, no secrets, only counts.

Worker metrics (one set per process, label ``service``)::

    attestgate_worker_requests_total{service,op,outcome}   outcome: ok or an error code
    attestgate_worker_request_seconds{service,op}          handler time (histogram)
    attestgate_store_errors_total{service}                 replies store_unavailable
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest

from shared.bus.interface import D, Handler, Reply, Request
from shared.errors import AttestgateError, ErrorCode

log = logging.getLogger("attestgate.metrics")

# Buckets (seconds) for handler and attestation latencies: a quote check takes ~1-10 ms,
# a bus round trip a few ms more, a store outage up to the request deadline.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0)
Health = Callable[[], Mapping[str, Any]]


def generate_latest(registry: CollectorRegistry) -> bytes:
    return _generate_latest(registry)


class MetricsServer:
    """``/metrics`` of ``registry`` and ``/healthz`` of ``health()`` on ``host:port``.

    ``refresh()`` (optional) runs before each scrape, to copy state that lives in another
    thread (the gateway's event loop) into the registry. ``start()`` raises OSError when
    the port cannot be bound; port 0 picks a free one (read :attr:`port`).
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *,
                 health: Health | None = None, refresh: Callable[[], None] | None = None
                 ) -> None:
        self.registry = registry
        self._health = health or (lambda: {"ok": True})
        self._refresh = refresh
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def start(self) -> int:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    owner._send_metrics(self)
                elif path == "/healthz":
                    owner._send_health(self)
                else:
                    _reply(self, 404, "text/plain", b"not found\n")

            def log_message(self, format: str, *args: Any) -> None:
                return  # a scrape every few seconds is not worth a log line

        server = ThreadingHTTPServer((self._host, self._port), _Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http",
                                        kwargs={"poll_interval": 0.25}, daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _send_metrics(self, h: BaseHTTPRequestHandler) -> None:
        try:
            if self._refresh is not None:
                self._refresh()
            body = generate_latest(self.registry)
        except Exception:
            log.exception("metrics scrape failed")
            _reply(h, 500, "text/plain", b"scrape failed\n")
            return
        _reply(h, 200, CONTENT_TYPE_LATEST, body)

    def _send_health(self, h: BaseHTTPRequestHandler) -> None:
        try:
            doc = dict(self._health())
        except Exception:
            log.exception("health check failed")
            doc = {"ok": False}
        body = json.dumps(doc, sort_keys=True).encode()
        _reply(h, 200 if doc.get("ok") else 503, "application/json", body)


def _reply(h: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Cache-Control", "no-store")
    h.end_headers()
    h.wfile.write(body)


class WorkerMetrics:
    """The metrics of one worker process of ``service``."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("attestgate_worker_requests", "requests handled, by op and "
                                "outcome (ok or an error code)", ["service", "op", "outcome"],
                                registry=self.registry)
        self.seconds = Histogram("attestgate_worker_request_seconds", "time in the handler",
                                 ["service", "op"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.store_errors = Counter("attestgate_store_errors", "requests that failed because "
                                    "the store could not be reached", ["service"],
                                    registry=self.registry)
        self.store_errors.labels(service)  # present (0) from the start
        # Labelled children, looked up once (``labels()`` costs a lock and a dict per call).
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def record(self, op: str, outcome: str, seconds: float) -> None:
        counted = self._counted.get((op, outcome))
        if counted is None:
            counted = self._counted[op, outcome] = self.requests.labels(self.service, op,
                                                                        outcome)
        counted.inc()
        timed = self._timed.get(op)
        if timed is None:
            timed = self._timed[op] = self.seconds.labels(self.service, op)
        timed.observe(seconds)
        if outcome == ErrorCode.STORE_UNAVAILABLE.value:
            self.store_errors.labels(self.service).inc()


def instrument(handler: Handler[D], metrics: WorkerMetrics,
               clock: Callable[[], float] = time.perf_counter) -> Handler[D]:
    """``handler`` that records each request in ``metrics``; what it returns or raises is
    unchanged."""
    def handle(request: Request, deps: D, now: float) -> Reply:
        start = clock()
        outcome = ErrorCode.INTERNAL.value
        try:
            reply = handler(request, deps, now)
            outcome = reply.error.value if reply.error is not None else "ok"
            return reply
        except AttestgateError as exc:
            outcome = exc.code.value
            raise
        finally:
            metrics.record(request.op, outcome, clock() - start)
    return handle
