"""The console's security claims that test_console.py did not try to break.

README and docs/security.md §2.19 say: the console is read-only (it serves only GET
and changes nothing), it never reads Redis (it asks the workers over the bus),
``/healthz`` and ``/metrics`` need no login and name no device, and behind TLS
(``ATTESTGATE_CONSOLE_URL=https://...``) its session cookie is ``Secure``.
The console runs as in production (aiohttp, the same ``Console``) over the in-memory
bus with the real handlers on a memory store (``test_console.world``).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from test_console import KEY, PAGES, api, post, rng, run, world

from services.console.app import COOKIE, Console
from shared.console_settings import ConsoleSettings
from shared.console_token import SESSION_TTL, TokenKind, check_token, make_token

REPO = Path(__file__).resolve().parents[2]
WRITING_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _snapshot(w: Any) -> tuple[object, ...]:
    s = w.store
    return (copy.deepcopy(s.devices), copy.deepcopy(s.posts), list(s.audit))


def test_no_page_accepts_a_writing_method_and_nothing_changes() -> None:
    w = world()
    post(w, w.alice, "hello")
    before = _snapshot(w)

    async def scenario(c: TestClient[Any, Any]) -> None:
        for path in (*PAGES, "/login", "/logout", "/healthz", "/metrics"):
            for method in WRITING_METHODS:
                r = await c.request(method, path, headers=api(w), allow_redirects=False)
                assert r.status == 405, (method, path, r.status)
        login = "/login?token=" + make_token(KEY, TokenKind.LOGIN, w.clock.now, 300, rng)
        r = await c.post(login, allow_redirects=False)
        assert r.status == 405 and COOKIE not in r.cookies  # no login by a cross-site form
    run(w, scenario)
    assert _snapshot(w) == before


def test_every_route_is_get() -> None:
    app = world().console.app()
    methods = {r.method for r in app.router.routes()}
    assert methods <= {"GET", "HEAD"}, methods


def test_health_and_metrics_name_no_device() -> None:
    w = world()
    post(w, w.alice, "hello from alice")

    async def scenario(c: TestClient[Any, Any]) -> None:
        for path in ("/board", "/devices", f"/devices/{w.alice.device_id}", "/audit"):
            assert (await c.get(path, headers=api(w))).status == 200
        for path in ("/healthz", "/metrics"):
            r = await c.get(path)
            assert r.status == 200, path
            text = await r.text()
            for dev in (w.alice, w.mallory):
                assert dev.device_id not in text, path
                assert dev.record.name not in text, path
            assert "hello from alice" not in text
    run(w, scenario)


def test_console_code_never_touches_the_store() -> None:
    """Not one module of the console imports the store or a Redis client."""
    imported = set()
    for source in (REPO / "services" / "console").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    assert imported
    assert [m for m in imported if m.startswith(("shared.store", "redis"))] == []


# The operations the console may ask of the workers: each only reads.
READ_ONLY_OPS = frozenset({("board", "read"), ("registry", "list_devices"),
                           ("registry", "show_device"), ("attestor", "read_audit"),
                           ("attestor", "verify_audit")})


def test_console_asks_the_workers_only_to_read() -> None:
    """Every ``call(Service.X, "op", ...)`` in the console names a read-only operation."""
    asked = set()
    for source in (REPO / "services" / "console").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("call", "request")):
                service, op = node.args[0], node.args[1]
                if isinstance(service, ast.Attribute) and isinstance(op, ast.Constant):
                    asked.add((service.attr.lower(), op.value))
                else:  # the one generic forwarder: its callers are checked above
                    assert isinstance(op, ast.Name), ast.dump(node)
    assert asked and asked <= READ_ONLY_OPS, asked


def test_https_url_makes_the_session_cookie_secure() -> None:
    settings = ConsoleSettings.from_env({"ATTESTGATE_CONSOLE_URL": "https://console.example.org"})
    assert settings.secure_cookie
    assert not ConsoleSettings.from_env({}).secure_cookie
    w = world()
    w.console = Console(w.bus, KEY, secure_cookie=settings.secure_cookie,
                        workers=w.bus.live_workers, clock=w.clock, rng=rng)
    link = "/login?token=" + make_token(KEY, TokenKind.LOGIN, w.clock.now, 300, rng)

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get(link, allow_redirects=False)
        assert r.status == 303
        cookie = r.headers["Set-Cookie"]
        assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert f"Max-Age={int(SESSION_TTL)}" in cookie and SESSION_TTL == 8 * 3600
        claims = check_token(KEY, r.cookies[COOKIE].value, TokenKind.SESSION, w.clock.now)
        assert claims is not None and claims.expires == int(w.clock.now + SESSION_TTL)
    run(w, scenario)
