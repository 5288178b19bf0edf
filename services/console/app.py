"""The console's web application (aiohttp): routes, operator authentication, headers, SSE.

Read-only: every route is a GET, and every fact on a page comes from a bus request
(registry ``list_devices``/``show_device``, board ``read``, attestor ``read_audit``/
``verify_audit``) or a bus event (``post``, ``revoked``, ``locked``). Nothing here
writes anywhere but to the browser.

Access: a session cookie (``ag_console``, HttpOnly, SameSite=Strict, Path=/) made at
``/login?token=LOGIN_TOKEN`` — the link ``attestgate-admin console-token`` prints;
each login token works once — or ``Authorization: Bearer API_TOKEN`` for scripts.
``/healthz``, ``/metrics`` and ``/static/`` need no token (no facts about devices).
Everything else without a valid token gets 401 and a page that says how to log in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from services.console import pages
from services.console.pages import Markup
from shared.bus.interface import BusClient, BusEvent, Reply
from shared.console_token import (
    SESSION_TTL,
    ConsoleKey,
    TokenKind,
    check_token,
    make_token,
)
from shared.keys import Random
from shared.timing import REQUEST_TIMEOUT
from shared.wire import Event, Service

log = logging.getLogger("attestgate.console")

COOKIE: Final = "ag_console"
STATIC: Final = Path(__file__).with_name("static")
BOARD_POSTS: Final = 50  # posts the board page opens with
DEVICE_AUDIT: Final = 20  # audit entries on a device page
AUDIT_ENTRIES: Final = 200  # audit entries on the audit page
MAX_SSE_CLIENTS: Final = 32
SSE_KEEPALIVE: Final = 15.0  # seconds between comment lines on an idle event stream
SSE_RETRY_MS: Final = 2000  # the browser reconnects after this when the stream drops
MAX_QUERY: Final = 128  # a query parameter longer than this is refused before use
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
              "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_PUBLIC: Final = frozenset({"/login", "/logout", "/healthz", "/metrics"})
_STATUS_FOR: Final = {"unknown_device": 404, "not_found": 404, "bad_request": 400}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    def __init__(self, workers: Callable[[str], int] | None) -> None:
        self.registry = CollectorRegistry()
        self.http = Counter("attestgate_console_http_requests", "HTTP requests by route and "
                            "status", ["route", "status"], registry=self.registry)
        self.bus = Counter("attestgate_console_bus_requests", "bus requests by service, op and "
                           "outcome (ok or an error code)", ["service", "op", "outcome"],
                           registry=self.registry)
        self.logins = Counter("attestgate_console_logins", "login attempts by outcome",
                              ["outcome"], registry=self.registry)
        self.events = Counter("attestgate_console_bus_events", "bus events received by topic",
                              ["topic"], registry=self.registry)
        self.sse = Gauge("attestgate_console_sse_clients", "open server-sent event streams",
                         registry=self.registry)
        if workers is not None:
            gauge = Gauge("attestgate_console_bus_workers", "workers registered with the "
                          "console's bus endpoint", ["service"], registry=self.registry)
            for s in (Service.REGISTRY, Service.BOARD, Service.ATTESTOR):
                gauge.labels(s.value).set_function(_count_of(workers, s.value))


def _count_of(workers: Callable[[str], int], service: str) -> Callable[[], float]:
    return lambda: float(workers(service))


class Console:
    """The application around one bus client and the console key.

    ``workers(service)`` (optional) tells how many workers the bus knows, for /healthz
    and /metrics. ``clock`` and ``rng`` make sessions; tests pass their own.
    """

    def __init__(self, bus: BusClient, key: ConsoleKey, *, secure_cookie: bool = False,
                 workers: Callable[[str], int] | None = None, clock: Callable[[], float] =
                 time.time, rng: Random = os.urandom) -> None:
        self.bus = bus
        self.key = key
        self.secure_cookie = secure_cookie
        self.workers = workers
        self.clock = clock
        self.rng = rng
        self.metrics = Metrics(workers)
        self._used_logins: dict[str, int] = {}  # nonce -> expiry: a login link works once
        self._sse = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=4096)
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/", self._root)
        app.router.add_get("/login", self._login)
        app.router.add_get("/logout", self._logout)
        app.router.add_get("/board", self._board)
        app.router.add_get("/devices", self._devices)
        app.router.add_get("/devices/{ref}", self._device)
        app.router.add_get("/audit", self._audit)
        app.router.add_get("/events", self._events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        return app

    # -- access ---------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        now = self.clock()
        cookie = request.cookies.get(COOKIE, "")
        if cookie and check_token(self.key, cookie, TokenKind.SESSION, now):
            return True
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and check_token(
            self.key, token.strip(), TokenKind.API, now) is not None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        public = request.path in _PUBLIC or request.path.startswith("/static/")
        if any(len(v) > MAX_QUERY for v in request.query.values()):
            response: web.StreamResponse = _html(pages.error_box("request", "bad_request"), 400)
        elif not public and not self.authorized(request):
            response = _html(pages.login_needed("This page needs an operator login."), 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="attestgate-console"'
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.metrics.http.labels(name, str(exc.status)).inc()
                raise
        self.metrics.http.labels(name, str(response.status)).inc()
        return response

    async def _login(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        claims = check_token(self.key, request.query.get("token", ""), TokenKind.LOGIN, now)
        self._used_logins = {n: e for n, e in self._used_logins.items() if e > now}
        if claims is None or claims.nonce in self._used_logins:
            self.metrics.logins.labels("refused").inc()
            log.info("login refused from=%s", request.remote)
            return _html(pages.login_needed("This login link is not valid: it is expired, "
                                             "already used, or not a login link."), 401)
        self._used_logins[claims.nonce] = claims.expires
        self.metrics.logins.labels("ok").inc()
        log.info("login from=%s", request.remote)
        session = make_token(self.key, TokenKind.SESSION, now, SESSION_TTL, self.rng)
        response = _see_other("/board")
        response.set_cookie(COOKIE, session, max_age=int(SESSION_TTL), path="/", httponly=True,
                            samesite="Strict", secure=self.secure_cookie)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        response = _html(pages.login_needed("Logged out."), 200)
        response.del_cookie(COOKIE, path="/")
        return response

    # -- pages ----------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return _see_other("/board")

    async def call(self, service: Service, op: str, body: Mapping[str, Any]) -> Reply:
        reply = await self.bus.request(service.value, op, body, request_id=self.rng(12).hex(),
                                       timeout=REQUEST_TIMEOUT)
        outcome = "ok" if reply.error is None else reply.error.value
        self.metrics.bus.labels(service.value, op, outcome).inc()
        if reply.error is not None:
            log.info("bus reply service=%s op=%s code=%s", service.value, op, outcome)
        return reply

    async def _board(self, request: web.Request) -> web.StreamResponse:
        reply = await self.call(Service.BOARD, "read", {"limit": BOARD_POSTS})
        if reply.error is not None:
            return _html(pages.board([], _failed("board", reply)), 503)
        return _html(pages.board(_maps(reply.body.get("posts"))))

    async def _devices(self, request: web.Request) -> web.StreamResponse:
        status = request.query.get("status", "")
        if status and status not in pages.STATUSES:
            status = ""
        reply = await self.call(Service.REGISTRY, "list_devices",
                                {"status": status} if status else {})
        if reply.error is not None:
            return _html(pages.devices([], status, False, _failed("registry", reply)), 503)
        return _html(pages.devices(_maps(reply.body.get("devices")), status,
                                   reply.body.get("more") is True))

    async def _device(self, request: web.Request) -> web.StreamResponse:
        ref = request.match_info["ref"]
        if len(ref) > MAX_QUERY:
            return _html(pages.error_box("device", "bad_request"), 400)
        reply = await self.call(Service.REGISTRY, "show_device", {"device": ref})
        if reply.error is not None:
            status = _STATUS_FOR.get(reply.error.value, 503)
            page = pages.layout("device", "devices", _failed("registry", reply))
            return _html(page, status)
        audit = await self.call(Service.ATTESTOR, "read_audit",
                                {"device_id": str(reply.body.get("device_id", "")),
                                 "limit": DEVICE_AUDIT})
        audit_error = _failed("audit log", audit) if audit.error is not None else None
        return _html(pages.device(reply.body, _maps(audit.body.get("entries")), audit_error))

    async def _audit(self, request: web.Request) -> web.StreamResponse:
        device_ref = request.query.get("device", "").strip()
        event = request.query.get("event", "").strip()
        body: dict[str, Any] = {"limit": AUDIT_ENTRIES}
        error: Markup | None = None
        if device_ref:
            found = await self.call(Service.REGISTRY, "show_device", {"device": device_ref})
            # A device gone from the registry still has its entries: filter by the id given.
            body["device_id"] = str(found.body.get("device_id", device_ref))[:64] \
                if found.error is None else device_ref[:64]
        if event:
            body["event"] = event[:64]
        entries, verified = await asyncio.gather(
            self.call(Service.ATTESTOR, "read_audit", body),
            self.call(Service.ATTESTOR, "verify_audit", {}))
        if entries.error is not None:
            error = _failed("audit log", entries)
        chain = pages.verification(
            verified.body if verified.error is None else None,
            _failed("chain verification", verified) if verified.error is not None else None)
        total = entries.body.get("total", 0)
        return _html(pages.audit(_maps(entries.body.get("entries")),
                                 total if isinstance(total, int) else 0, device_ref, event,
                                 chain, error), 200 if error is None else 503)

    # -- live -----------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``post`` (a new post's view) and ``device`` (revoked/locked)."""
        if self._sse >= MAX_SSE_CLIENTS:
            return web.Response(status=503, text="too many event streams\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        stream = self.bus.events()
        self._sse += 1
        self.metrics.sse.inc()
        try:
            await response.prepare(request)
            await response.write(f"retry: {SSE_RETRY_MS}\n: connected\n\n".encode())
            iterator = aiter(stream)
            while True:
                try:
                    event = await asyncio.wait_for(anext(iterator), SSE_KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                except StopAsyncIteration:
                    break
                self.metrics.events.labels(event.topic[:32]).inc()
                frame = sse_frame(event)
                if frame is not None:
                    await response.write(frame)
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self._sse -= 1
            self.metrics.sse.dec()
            await stream.aclose()  # type: ignore[attr-defined]
        return response

    # -- health ---------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        doc: dict[str, Any] = {"ok": True}
        if self.workers is not None:
            counts = {s.value: self.workers(s.value)
                      for s in (Service.REGISTRY, Service.BOARD, Service.ATTESTOR)}
            doc = {"ok": all(counts.values()), "workers": counts}
        return web.json_response(doc, status=200 if doc["ok"] else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def sse_frame(event: BusEvent) -> bytes | None:
    """One SSE message for a bus event we show, else None. Only known fields, type-checked;
    the JSON holds no raw newline, so post text cannot forge an SSE field."""
    b = event.body
    if event.topic == Event.NEW_POST.value:
        view = {"post_id": b.get("post_id"), "device_id": b.get("device_id"),
                "author": b.get("author"), "text": b.get("text"), "ts": b.get("ts"),
                "verified": b.get("verified") is True}
        if not all(isinstance(view[k], str) for k in ("post_id", "device_id", "author", "text")):
            return None
        if not isinstance(view["ts"], int | float):
            return None
        return b"event: post\ndata: " + json.dumps(view).encode() + b"\n\n"
    if event.topic in (Event.DEVICE_REVOKED.value, Event.DEVICE_LOCKED.value):
        device_id = b.get("device_id")
        if not isinstance(device_id, str):
            return None
        doc = {"device_id": device_id, "status": event.topic}
        return b"event: device\ndata: " + json.dumps(doc).encode() + b"\n\n"
    return None


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(body: Markup, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def _failed(what: str, reply: Reply) -> Markup:
    code = reply.error.value if reply.error is not None else "?"
    return pages.error_box(f"{what} did not answer", code) if code == "service_unavailable" \
        else pages.error_box(what, code)


def _maps(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
