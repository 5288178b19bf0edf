"""The web console over HTTP, without a browser: access rules, headers, escaping, pages.

The console runs as in production (aiohttp, the same ``Console``) over the in-memory bus
with the real registry, board and attestor handlers on a memory store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from device_builders import NOW, VAULT_KEY, TestDevice, make_device, pcr_values
from tpm_builders import sign_digest

from services.attestor.enroll import EnrollSettings
from services.attestor.handler import AttestorDeps, AuditAnchor
from services.attestor.handler import handle as attestor_handle
from services.attestor.policy import AttestPolicy
from services.board.handler import BoardDeps
from services.board.handler import handle as board_handle
from services.console import pages
from services.console.app import COOKIE, CSP, Console, sse_frame
from services.registry.handler import RegistryDeps
from services.registry.handler import handle as registry_handle
from shared.audit import ChainProblem
from shared.bus.interface import BusEvent, Request
from shared.bus.memory import MemoryBus
from shared.codec import pack
from shared.config import Consequence, EnrollPolicy
from shared.console_token import (
    ConsoleKey,
    TokenKind,
    check_token,
    make_token,
)
from shared.posts import post_digest
from shared.records import Baseline, DeviceStatus
from shared.store.memory import MemoryStore
from shared.tpm.pcrs import pcr_diff
from shared.vault import Vault
from shared.wire import Event, Service

SELECTION = "sha256:0,1,2,3,4,5,6,7"
KEY = ConsoleKey(b"\x07" * 32)
OTHER_KEY = ConsoleKey(b"\x08" * 32)
HOSTILE = "<script>alert('x')</script>\nevent: post\ndata: {\"forged\": true}"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"


class Tags(HTMLParser):
    """What a browser would parse: script tags, any inline handler or style attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.scripts: list[list[tuple[str, str | None]]] = []
        self.bad_attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        if tag == "script":
            self.scripts.append(attrs)
        self.bad_attrs += [k for k, _ in attrs if k.startswith("on") or k == "style"]
        if tag == "style":
            self.bad_attrs.append("<style>")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def rng(n: int) -> bytes:
    return os.urandom(n)


@dataclasses.dataclass
class World:
    bus: MemoryBus
    store: MemoryStore
    alice: TestDevice
    mallory: TestDevice
    clock: Clock
    console: Console


def world() -> World:
    store, vault, clock = MemoryStore(), Vault(VAULT_KEY), Clock()
    alice = make_device("alice", vault=vault)
    mallory = make_device(HOSTILE_NAME, vault=vault)
    changed = pcr_values(b"tampered")
    mallory_record = dataclasses.replace(
        mallory.record, status=DeviceStatus.LOCKED, failures=3,
        last_diff=pcr_diff(pcr_values(), changed),
        last_refused=Baseline.of(SELECTION, changed))
    store.devices[alice.device_id] = alice.record
    store.devices[mallory.device_id] = mallory_record
    store.append_audit("enrolled", alice.device_id, {"name": "alice"}, NOW - 100)
    store.append_audit("attest_refused", mallory.device_id, {"code": "pcr_mismatch"}, NOW - 50)
    bus = MemoryBus(clock=clock)
    bus.register(Service.BOARD.value, board_handle, BoardDeps(store))
    bus.register(Service.REGISTRY.value, registry_handle, RegistryDeps(store, vault, True))
    bus.register(Service.ATTESTOR.value, attestor_handle, AttestorDeps(
        store, vault, EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), SELECTION),
        AttestPolicy(SELECTION, 3, Consequence.LOCK, None),
        audit=AuditAnchor(store.audit_key, lambda: [])))
    console = Console(bus, KEY, workers=bus.live_workers, clock=clock, rng=rng)
    return World(bus, store, alice, mallory, clock, console)


def post(w: World, dev: TestDevice, text: str, key: bytes = b"k" * 16) -> None:
    ts = int(w.clock.now * 1000)
    sig = sign_digest(dev.post_key, post_digest(dev.device_id, ts, key, text))
    reply = board_handle(
        Request("p" + key.hex(), "board", "post",
                {"device_id": dev.device_id, "ts": ts, "text": text, "key": key,
                 "signature": sig}, w.clock.now + 5),
        BoardDeps(w.store), w.clock.now)
    assert reply.ok, reply


def run(w: World, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(w.console.app())) as client:
            await scenario(client)
    asyncio.run(main())


def api(w: World, ttl: float = 60) -> dict[str, str]:
    return {"Authorization": "Bearer " + make_token(KEY, TokenKind.API, w.clock.now, ttl, rng)}


PAGES = ("/board", "/devices", "/devices/alice", "/audit", "/events", "/")


# -- access ---------------------------------------------------------------------------


def test_every_page_needs_a_token() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        for path in PAGES:
            r = await c.get(path, allow_redirects=False)
            text = await r.text()
            assert r.status == 401, path
            assert "login needed" in text and "attestgate-admin console-token" in text
            assert "alice" not in text
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    run(w, scenario)


def test_login_link_sets_a_strict_session_cookie_once() -> None:
    w = world()
    link = "/login?token=" + make_token(KEY, TokenKind.LOGIN, w.clock.now, 300, rng)

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get(link, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/board"
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(COOKIE + "=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        session = r.cookies[COOKIE].value
        assert check_token(KEY, session, TokenKind.SESSION, w.clock.now)
        r = await c.get("/board")
        assert r.status == 200 and "<h1>board</h1>" in await r.text()
        c.session.cookie_jar.clear()
        again = await c.get(link, allow_redirects=False)  # the link works once
        assert again.status == 401 and COOKIE not in again.cookies
    run(w, scenario)


@pytest.mark.parametrize("token", [
    "",
    "garbage",
    make_token(KEY, TokenKind.LOGIN, NOW - 400, 300, rng),  # expired
    make_token(KEY, TokenKind.API, NOW, 300, rng),  # another kind
    make_token(KEY, TokenKind.SESSION, NOW, 300, rng),
    make_token(OTHER_KEY, TokenKind.LOGIN, NOW, 300, rng),  # another key
    make_token(KEY, TokenKind.LOGIN, NOW, 300, lambda n: b"\x05" * n)[:-1] + "-",  # MAC
], ids=["empty", "garbage", "expired", "api", "session", "other-key", "mac-changed"])
def test_bad_login_tokens_are_refused(token: str) -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get("/login", params={"token": token}, allow_redirects=False)
        assert r.status == 401 and COOKIE not in r.cookies
        assert (await c.get("/devices")).status == 401
    run(w, scenario)


def test_session_cookie_expires_and_a_forged_one_is_refused() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        forged = make_token(OTHER_KEY, TokenKind.SESSION, w.clock.now, 600, rng)
        r = await c.get("/devices", cookies={COOKIE: forged})
        assert r.status == 401
        good = make_token(KEY, TokenKind.SESSION, w.clock.now, 600, rng)
        assert (await c.get("/devices", cookies={COOKIE: good})).status == 200
        w.clock.now += 601
        assert (await c.get("/devices", cookies={COOKIE: good})).status == 401
    run(w, scenario)


def test_bearer_works_for_scripts_with_api_tokens_only() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get("/devices", headers=api(w))
        assert r.status == 200 and "alice" in await r.text()
        login = make_token(KEY, TokenKind.LOGIN, w.clock.now, 300, rng)
        for header in ("Bearer " + login, "Basic " + make_token(KEY, TokenKind.API, w.clock.now,
                                                                 60, rng), "Bearer"):
            r = await c.get("/devices", headers={"Authorization": header})
            assert r.status == 401, header
        expired = api(w, ttl=10)
        w.clock.now += 11
        assert (await c.get("/devices", headers=expired)).status == 401
    run(w, scenario)


def test_security_headers_on_every_response() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        for path, headers in (("/board", api(w)), ("/board", {}), ("/nope", {}),
                              ("/static/console.css", {}), ("/healthz", {}),
                              ("/login?token=x", {})):
            r = await c.get(path, headers=headers, allow_redirects=False)
            assert r.headers["Content-Security-Policy"] == CSP, path
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP
    run(w, scenario)


# -- pages ----------------------------------------------------------------------------


def test_hostile_post_text_and_names_are_escaped() -> None:
    w = world()
    post(w, w.alice, HOSTILE)
    post(w, w.mallory, "hi from a locked device", key=b"m" * 16)

    async def scenario(c: TestClient[Any, Any]) -> None:
        for path in ("/board", "/devices", f"/devices/{w.mallory.device_id}", "/audit"):
            text = await (await c.get(path, headers=api(w))).text()
            assert "<script>alert" not in text and "<img src=x" not in text, path
            tags = Tags()
            tags.feed(text)
            assert "img" not in tags.names, path
            assert tags.scripts, path
            assert all((dict(a).get("src") or "").startswith("/static/") for a in tags.scripts)
            assert not tags.bad_attrs, path
        board = await (await c.get("/board", headers=api(w))).text()
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in board
        assert "event: post\ndata: {&quot;forged&quot;: true}" in board
        assert board.count("verified TPM signature") == 2
        assert "&lt;img src=x onerror=alert(1)&gt;" in board  # the registry's name
    run(w, scenario)


def test_devices_page_shows_status_failures_and_refusal_diff() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        text = await (await c.get("/devices", headers=api(w))).text()
        assert "2 device(s): 1 locked" in text and 'class="summary alert"' in text
        row = re.search(r'<tr class="row-locked" data-device-id="(\w+)">.*?</tr>', text)
        assert row is not None and row.group(1) == w.mallory.device_id
        assert "PCR 0:" in row.group(0) and ">3<" in row.group(0)
        only = await (await c.get("/devices?status=active", headers=api(w))).text()
        assert w.alice.device_id in only and w.mallory.device_id not in only
    run(w, scenario)


def test_device_page_shows_what_admin_show_prints_and_audit() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get(f"/devices/{w.mallory.device_id}", headers=api(w))
        text = await r.text()
        assert r.status == 200
        for fact in ("noise key", "EK fingerprint", w.mallory.record.ek_fingerprint,
                     "enrolled baseline", "last refused state", "attest_refused",
                     pcr_values()[0].hex(), pcr_values(b"tampered")[0].hex()):
            assert fact in text, fact
        assert "psk" not in text.lower()
        by_name = await c.get("/devices/alice", headers=api(w))
        assert by_name.status == 200 and w.alice.device_id in await by_name.text()
        missing = await c.get("/devices/nobody", headers=api(w))
        assert missing.status == 404 and "unknown_device" in await missing.text()
    run(w, scenario)


def test_audit_page_filters_and_verifies_the_chain() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        text = await (await c.get("/audit", headers=api(w))).text()
        assert "audit chain verified: 2 entries, head matches" in text
        only = await (await c.get("/audit?event=attest_refused", headers=api(w))).text()
        assert "1 of 1 entries" in only and ">enrolled<" not in only
        dev = await (await c.get("/audit?device=alice", headers=api(w))).text()
        assert ">enrolled<" in dev and "attest_refused<" not in dev
        e = w.store.audit[0]
        w.store.audit[0] = dataclasses.replace(e, detail='{"name":"eve"}')
        broken = await (await c.get("/audit", headers=api(w))).text()
        assert "audit chain BROKEN: 1 problem(s)" in broken and "edited" in broken
    run(w, scenario)


def test_pages_say_when_a_service_does_not_answer() -> None:
    w = world()
    w.bus = MemoryBus(clock=w.clock)  # no workers at all
    w.console = Console(w.bus, KEY, workers=w.bus.live_workers, clock=w.clock, rng=rng)

    async def scenario(c: TestClient[Any, Any]) -> None:
        assert (await c.get("/healthz")).status == 503
    run(w, scenario)


def test_healthz_and_metrics() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get("/healthz")
        assert r.status == 200
        assert await r.json() == {"ok": True, "workers": {"registry": 1, "board": 1,
                                                          "attestor": 1}}
        await c.get("/devices", headers=api(w))
        metrics = await (await c.get("/metrics")).text()
        assert 'attestgate_console_bus_workers{service="board"} 1.0' in metrics
        assert ('attestgate_console_bus_requests_total{op="list_devices",outcome="ok",'
                'service="registry"} 1.0') in metrics
    run(w, scenario)


def test_new_posts_stream_as_server_sent_events() -> None:
    w = world()

    async def scenario(c: TestClient[Any, Any]) -> None:
        r = await c.get("/events", headers=api(w))
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert (await r.content.readuntil(b"\n\n")).startswith(b"retry:")
        ts = int(w.clock.now * 1000)
        key = b"s" * 16
        sig = sign_digest(w.alice.post_key, post_digest(w.alice.device_id, ts, key, HOSTILE))
        reply = await w.bus.request("board", "post", {
            "device_id": w.alice.device_id, "ts": ts, "text": HOSTILE, "key": key,
            "signature": sig}, request_id="sse-1", timeout=5)
        assert reply.ok
        frame = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        lines = frame.decode().split("\n")
        assert lines[0] == "event: post" and lines[1].startswith("data: {")
        assert lines[2:] == ["", ""]  # the hostile text's newlines stay inside the JSON
        r.close()
    run(w, scenario)


# -- pieces ---------------------------------------------------------------------------


def test_sse_frame_drops_malformed_and_unknown_events() -> None:
    assert sse_frame(BusEvent(Event.NEW_POST.value, {"post_id": 1})) is None
    assert sse_frame(BusEvent("other", {})) is None
    assert sse_frame(BusEvent(Event.DEVICE_REVOKED.value, {"device_id": "ab"})) == (
        b'event: device\ndata: {"device_id": "ab", "status": "revoked"}\n\n')


def test_escape_and_markup() -> None:
    assert pages.esc("<a href='x'>&") == "&lt;a href=&#x27;x&#x27;&gt;&amp;"
    assert pages.h("<b>{x}</b>", x="<i>") == "<b>&lt;i&gt;</b>"
    assert pages.h("<b>{x}</b>", x=pages.Markup("<i>")) == "<b><i></b>"
    assert pages.when(0) == "never"
    assert 'data-ts="1700000000.000"' in pages.when(NOW)


def test_verify_audit_reports_unanchored_log() -> None:
    w = world()
    deps = AttestorDeps(
        w.store, Vault(VAULT_KEY), EnrollSettings(EnrollPolicy.TOFU, None, frozenset(),
                                                  SELECTION),
        AttestPolicy(SELECTION, 3, Consequence.LOCK, None),
        audit=AuditAnchor(w.store.audit_key, lambda: None))
    reply = attestor_handle(Request("v", "attestor", "verify_audit", {}, NOW + 5), deps, NOW)
    assert reply.body["problems"] == [{"entry_id": "", "check": "unanchored"}]
    assert ChainProblem("", "unanchored").problem in pages.PROBLEM_WORDS


def test_registry_operator_views_carry_no_secret() -> None:
    w = world()
    deps = RegistryDeps(w.store, Vault(VAULT_KEY), True)
    for op, body in (("list_devices", {}), ("show_device", {"device": "alice"}),
                     ("list_devices", {"status": "locked"})):
        reply = registry_handle(Request("r", "registry", op, body, NOW + 5), deps, NOW)
        assert reply.ok, reply
        packed = pack(reply.body)
        for dev in (w.alice, w.mallory):
            assert dev.device_psk not in packed
            assert w.store.devices[dev.device_id].psk_sealed not in packed
    locked = registry_handle(Request("r", "registry", "list_devices", {"status": "locked"},
                                     NOW + 5), deps, NOW)
    assert [d["device_id"] for d in locked.body["devices"]] == [w.mallory.device_id]
