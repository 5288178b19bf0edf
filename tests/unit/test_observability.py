"""Operations parts on their own: settings, logfmt/JSON lines, the metrics server, the handler
instrument, the webhook document and sender (a real HTTP receiver on 127.0.0.1 and a closed
loopback port), and the health checks' logic."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.gateway.observe import ServiceStats, Snapshot
from services.gateway.webhook import WebhookSender
from services.registry.health import Probes, run_checks, text_report
from shared.bus.interface import Reply, Request
from shared.config import ConfigError
from shared.errors import AttestgateError, ErrorCode
from shared.logfmt import JsonFormatter, LogfmtFormatter, quote
from shared.metrics import MetricsServer, WorkerMetrics, generate_latest, instrument
from shared.ops_settings import LogFormat, OpsSettings
from shared.webhook import (
    SIGNATURE_HEADER,
    Kind,
    WebhookEvent,
    backoff,
    changed_of,
    signature,
    status_event_id,
    verify_signature,
)
from tests.support.ports import free_port

# -- settings ---------------------------------------------------------------------------------


def test_ops_defaults() -> None:
    ops = OpsSettings.from_env({})
    assert ops.metrics_address("gateway") == ("127.0.0.1", 9470)
    assert ops.metrics_address("board") == ("127.0.0.1", 9473)
    assert ops.log_format is LogFormat.LOGFMT
    assert (ops.webhook_url, ops.webhook_secret) == ("", b"")


def test_ops_settings_read() -> None:
    ops = OpsSettings.from_env({"ATTESTGATE_METRICS_LISTEN": "off",
                                "ATTESTGATE_LOG_FORMAT": "json",
                                "ATTESTGATE_WEBHOOK_URL": "https://hooks.example/x",
                                "ATTESTGATE_WEBHOOK_SECRET": "s3cret"})
    assert ops.metrics_address("attestor") is None
    assert ops.log_format is LogFormat.JSON
    assert ops.webhook_secret == b"s3cret" and "s3cret" not in repr(ops)


@pytest.mark.parametrize(("name", "value"), [
    ("ATTESTGATE_METRICS_LISTEN", "9470"), ("ATTESTGATE_METRICS_LISTEN", "127.0.0.1:65535"),
    ("ATTESTGATE_LOG_FORMAT", "text"), ("ATTESTGATE_WEBHOOK_URL", "ftp://x/y"),
    ("ATTESTGATE_WEBHOOK_URL", "hooks.example/x"),
])
def test_bad_ops_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        OpsSettings.from_env({name: value})
    assert exc.value.name == name


# -- log lines ------------------------------------------------------------------------------------


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("attestgate.test", level, __file__, 1, msg, args, None)


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", "plain"), ("", '""'), ("a b", '"a b"'), ('say "hi"', r'"say \"hi\""'),
    ("k=v", '"k=v"'), ("line\nforged=1", r'"line\nforged=1"'), ("back\\slash", r'"back\\slash"'),
    ("\x1b[31m", r'"\u001b[31m"'), ("tab\there", r'"tab\there"'), ("é", '"é"'),
])
def test_logfmt_quoting(value: str, expected: str) -> None:
    assert quote(value) == expected


def _reference_quote(value: str) -> str:
    """The logfmt rule written out per character (what quote() did before its fast path)."""
    plain = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                "-_.:/,+@%[]()<>!?*#~^&;'|$")
    if value and all(c in plain for c in value):
        return value
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[c])
        elif ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def test_logfmt_quoting_matches_the_rule_for_every_character() -> None:
    for code in [*range(0x2100), 0x2028, 0x2029, 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF]:
        c = chr(code)
        for value in (c, "a" + c, c + " b=" + c):
            assert quote(value) == _reference_quote(value), hex(code)


def test_logfmt_time_is_the_records_own_time() -> None:
    base = record("x")
    seen = set()
    for created in (1.0, 1.5, 1.999, 2.0, 86_399.25, 86_400.0, 1.25, 1_798_761_600.123):
        r = logging.makeLogRecord({**base.__dict__, "created": created,
                                   "msecs": (created - int(created)) * 1000})
        line = LogfmtFormatter().format(r)
        ts = datetime.fromtimestamp(created, UTC)
        assert line.startswith(f"ts={ts:%Y-%m-%dT%H:%M:%S}.{int(r.msecs):03d}Z "), line
        seen.add(line.split()[0])
    assert len(seen) == 8


def test_a_log_line_cannot_be_forged() -> None:
    line = LogfmtFormatter().format(record("post text=%s", 'x"\nts=0 level=error msg=forged'))
    assert "\n" not in line
    assert line.startswith("ts=") and " level=warning logger=attestgate.test msg=\"" in line
    assert line.endswith(r'msg="post text=x\"\nts=0 level=error msg=forged"')


def test_json_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("attestgate.x", logging.ERROR, __file__, 1, "failed %d", (3,),
                                sys.exc_info())
    doc = json.loads(JsonFormatter().format(rec))
    assert (doc["level"], doc["logger"], doc["msg"]) == ("error", "attestgate.x", "failed 3")
    assert "ValueError: boom" in doc["exc"] and doc["ts"].endswith("Z")


# -- metrics --------------------------------------------------------------------------------------


def test_instrument_counts_outcomes_and_store_errors() -> None:
    metrics = WorkerMetrics("board")

    def handler(req: Request, deps: None, now: float) -> Reply:
        if req.op == "boom":
            raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, "redis down")
        return Reply.failure(req.id, ErrorCode.NOT_FOUND) if req.op == "read" else Reply(req.id)

    h = instrument(handler, metrics)
    h(Request("1", "board", "post", {}, 10.0), None, 0.0)
    h(Request("2", "board", "read", {}, 10.0), None, 0.0)
    with pytest.raises(AttestgateError):
        h(Request("3", "board", "boom", {}, 10.0), None, 0.0)
    text = generate_latest(metrics.registry).decode()
    assert 'attestgate_worker_requests_total{op="post",outcome="ok",service="board"} 1.0' in text
    assert ('attestgate_worker_requests_total{op="read",outcome="not_found",service="board"} 1.0'
            in text)
    assert 'attestgate_store_errors_total{service="board"} 1.0' in text
    assert 'attestgate_worker_request_seconds_count{op="post",service="board"} 1.0' in text


def test_metrics_server_serves_metrics_and_health() -> None:
    metrics = WorkerMetrics("registry")
    healthy = {"ok": True}
    server = MetricsServer(metrics.registry, "127.0.0.1", 0, health=lambda: healthy)
    port = server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert b"attestgate_store_errors_total" in r.read()
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"ok": True}
        healthy["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert err.value.code == 503
        err.value.close()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/devices", timeout=5)
        assert err.value.code == 404
        err.value.close()
    finally:
        server.close()


def test_gateway_health_document_names_what_is_down() -> None:
    snap = Snapshot(True, 2, {"attestor": ServiceStats(2, 0, 1), "registry": ServiceStats(0, 3, 0),
                              "board": ServiceStats(1, 0, 0)})
    doc = snap.health()
    assert doc["ok"] is False and doc["down"] == ["registry"]
    assert doc["services"]["attestor"] == {"workers": 2, "queued": 0, "inflight": 1}
    assert Snapshot(False, 0, {}).health()["down"] == ["listener"]


# -- health checks (logic; the probes are given) -----------------------------------------------


def probes(*, redis: str | None = None, gateway: dict[str, Any] | OSError | None = None,
           tcp: str | None = None) -> Probes:
    def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
        if isinstance(gateway, OSError):
            raise gateway
        return (200, json.dumps(gateway).encode())

    return Probes(lambda _: redis, http_get, lambda h, p: tcp)


UP = {"ok": True, "process": "gateway", "listening": True,
      "services": {s: {"workers": 1, "queued": 0, "inflight": 0}
                   for s in ("attestor", "registry", "board")}}


def test_all_up() -> None:
    checks = run_checks("redis://x", "redis://x", ("0.0.0.0", 7443), ("127.0.0.1", 9470),
                        probes(gateway=UP))
    assert all(c.ok for c in checks)
    assert [c.name for c in checks] == ["redis", "gateway", "bus", "attestor", "registry",
                                        "board", "listener"]
    assert "DOWN" not in text_report(checks)


def test_gateway_down_makes_bus_and_services_unknown() -> None:
    checks = run_checks("redis://x", "redis://x", ("127.0.0.1", 7443), ("127.0.0.1", 9470),
                        probes(gateway=ConnectionRefusedError(111, "Connection refused"),
                               tcp="Connection refused"))
    assert [c.name for c in checks if not c.ok] == [
        "gateway", "bus", "attestor", "registry", "board", "listener"]
    assert "Connection refused" in {c.name: c.detail for c in checks}["gateway"]


def test_redis_down_and_a_service_without_workers() -> None:
    doc = json.loads(json.dumps(UP))
    doc["services"]["board"]["workers"] = 0
    checks = run_checks("redis://x", "redis://x", ("127.0.0.1", 7443), ("127.0.0.1", 9470),
                        probes(redis="store_unavailable", gateway=doc))
    assert [c.name for c in checks if not c.ok] == ["redis", "board"]


def test_metrics_off_is_reported() -> None:
    checks = run_checks("redis://x", "redis://x", ("127.0.0.1", 7443), None, probes())
    assert {c.name: c.ok for c in checks}["gateway"] is False


# -- webhook --------------------------------------------------------------------------------------


def event(n: int = 1) -> WebhookEvent:
    return WebhookEvent(f"id{n}", Kind.REFUSED, "dev1", "kitchen", "pcr_mismatch", 1.7e9,
                        "active", 1, changed_of([{"pcr": 7, "enrolled": "aa", "current": "bb"}]))


def test_webhook_document_and_signature() -> None:
    body = event().body()
    assert json.loads(body) == {
        "id": "id1", "event": "refused", "device_id": "dev1", "name": "kitchen",
        "code": "pcr_mismatch", "status": "active", "failures": 1, "ts": 1.7e9,
        "time": "2023-11-14T22:13:20Z",
        "changed": [{"pcr": 7, "enrolled": "aa", "current": "bb"}]}
    expected = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature(b"k", body) == expected
    assert verify_signature(b"k", body, expected)
    assert not verify_signature(b"k", body + b" ", expected)
    assert status_event_id(Kind.LOCKED, "d") == status_event_id(Kind.LOCKED, "d")
    assert status_event_id(Kind.LOCKED, "d") != status_event_id(Kind.REVOKED, "d")
    assert changed_of("nope") == () and changed_of([{"pcr": "7"}]) == ()
    assert [backoff(n, 0.5, 4.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


class Receiver:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses  # answered in turn; the last one repeats
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.cond = threading.Condition()
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with box.cond:
                    box.got.append((dict(self.headers.items()), body))
                    status = box.statuses[min(len(box.got), len(box.statuses)) - 1]
                    box.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int) -> list[tuple[dict[str, str], bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, 10.0)
            return list(self.got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("attestgate.webhook")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_sender_retries_then_delivers_signed(logs: io.StringIO) -> None:
    receiver = Receiver([503, 500, 204])
    outcomes: list[str] = []
    done = threading.Event()

    def outcome(o: str) -> None:
        outcomes.append(o)
        if o == "delivered":
            done.set()

    sender = WebhookSender(receiver.url, b"secret", backoff_base=0.01, outcome=outcome)
    sender.start()
    try:
        assert sender.submit(event())
        got = receiver.wait(3)
        assert done.wait(10.0)
    finally:
        sender.close()
        receiver.close()
    assert outcomes == ["retried", "retried", "delivered"]
    assert all(body == event().body() for _, body in got)
    headers = got[-1][0]
    assert verify_signature(b"secret", got[-1][1], headers[SIGNATURE_HEADER])
    assert headers["X-Attestgate-Event"] == "refused" and headers["X-Attestgate-Delivery"] == "id1"
    text = logs.getvalue()
    assert text.count('msg="webhook try failed id=id1') == 2 and "status 503" in text
    assert 'msg="webhook delivered id=id1 event=refused device=dev1 attempt=3"' in text
    assert "secret" not in text and "kitchen" not in text


def test_sender_gives_up_on_a_closed_port_after_bounded_attempts(logs: io.StringIO) -> None:
    outcomes: list[str] = []
    done = threading.Event()

    def outcome(o: str) -> None:
        outcomes.append(o)
        if o == "failed":
            done.set()

    sender = WebhookSender(f"http://127.0.0.1:{free_port()}/x", b"", attempts=3,
                           backoff_base=0.01, outcome=outcome)
    sender.start()
    try:
        assert sender.submit(event())
        assert done.wait(10.0)
    finally:
        sender.close()
    assert outcomes == ["retried", "retried", "failed"]
    text = logs.getvalue()
    assert "level=error" in text and 'msg="webhook delivery failed id=id1' in text
    assert "attempts=3 problem=ConnectionRefusedError" in text


def test_submit_never_blocks_and_drops_beyond_the_queue(logs: io.StringIO) -> None:
    outcomes: list[str] = []
    sender = WebhookSender(f"http://127.0.0.1:{free_port()}/x", b"", queue_size=2,
                           outcome=outcomes.append)  # not started: nothing leaves the queue
    assert sender.submit(event(1)) and sender.submit(event(2))
    assert not sender.submit(event(3))
    assert outcomes == ["dropped"]
    assert 'msg="webhook queue full, event dropped id=id3' in logs.getvalue()
