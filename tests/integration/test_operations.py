"""Operating the stack: health, Prometheus metrics, logs and webhook events, on real processes.

One stack (redis-server, gateway, one worker of each service) with a real swtpm device goes
through token enrollment, a post, a board outage, PCR refusals up to a lock, and a
revocation. ``attestgate-admin health`` must see the outage and name it; the metrics must
count what happened; the webhook receiver (a real HTTP server on 127.0.0.1) must get one
signed event per refusal, lock and revocation; every log line must be logfmt and hold no
secret (device PSK, token secret, server keys).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from client.tpm import Tpm
from shared.store.redis_store import RedisStore
from shared.vault import KEY_FILES, Vault
from shared.webhook import SIGNATURE_HEADER, verify_signature
from tests.support.clis import admin_cli, cli
from tests.support.plugins import register_example
from tests.support.ports import free_port
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration

SELECTION = "sha256:0,7,16"
MAX_FAILURES = 2
SECRET = "webhook-test-secret"
WAIT_S = 15.0  # bound for what normally takes well under a second (worker READY, an event)
EXIT_OK, EXIT_REFUSED, EXIT_UNHEALTHY = 0, 3, 4
LOGFMT_LINE = re.compile(r'^ts=\S+ level=(debug|info|warning|error|critical) logger=\S+ '
                         r'msg=("(?:[^"\\]|\\.)*"|[^ "=]+)( exc=("(?:[^"\\]|\\.)*"|\S+))?$')


# -- a webhook receiver ------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, n: int, timeout: float = WAIT_S) -> list[tuple[dict[str, str], bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.deliveries) >= n, timeout)
            return list(self.deliveries)


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    box = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with box.cond:
                box.deliveries.append(({k: v for k, v in self.headers.items()}, body))
                box.cond.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/attestgate"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()


# -- helpers -----------------------------------------------------------------------------------






def until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def health(stack: Stack) -> tuple[int, dict[str, Any]]:
    return admin_cli(stack, "health")


def scrape(stack: Stack, process: str) -> dict[str, float]:
    """Every sample of ``process``'s /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(stack.metrics_url(process) + "/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def secrets_of(stack: Stack, device_id: str, token: str) -> dict[str, bytes]:
    """Every secret a log must not hold, by name."""
    home = stack.directory / "server"
    found = {name: (home / name).read_bytes() for name in KEY_FILES}
    store = RedisStore(stack.redis.url)
    try:
        device = store.get_device(device_id)
    finally:
        store.close()
    assert device is not None
    found["device psk"] = Vault.open(home).unseal(device.psk_sealed, device_id)
    found["token secret"] = token.partition(".")[2].encode()
    return found


def forms(secret: bytes) -> list[str]:
    text = [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]
    if secret.isascii():
        text.append(secret.decode())
    return [t for t in text if len(t) >= 12]


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_health_metrics_webhooks_and_logs_through_a_devices_life(
        tmp_path: Path, swtpm: SwtpmProcess, swtpm_template: TemplateTpm) -> None:
    with receiver() as hook, Stack.start(
            tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
            settings={"ATTESTGATE_PCR_SELECTION": SELECTION,
                      "ATTESTGATE_MAX_FAILURES": str(MAX_FAILURES),
                      "ATTESTGATE_WEBHOOK_URL": hook.url,
                      "ATTESTGATE_WEBHOOK_SECRET": SECRET}) as stack:
        device = ["--tpm", swtpm.tcti, "--home", str(tmp_path / "home")]

        # Health: every part up once the workers registered.
        until(lambda: health(stack)[0] == EXIT_OK, "health ok")
        rc, doc = health(stack)
        assert [c["name"] for c in doc["checks"]] == [
            "redis", "gateway", "bus", "attestor", "registry", "board", "listener"]
        assert all(c["ok"] for c in doc["checks"]) and doc["down"] == []
        assert {c["name"]: c.get("workers") for c in doc["checks"]}["board"] == 1

        rc, token_doc = admin_cli(stack, "token", "create")
        assert rc == EXIT_OK, token_doc
        token = token_doc["token"]
        rc, enrolled = cli("enroll", "--server", stack.server, "--name", "ops-dev", "--tofu",
                           "--token", token, *device)
        assert rc == EXIT_OK, enrolled
        device_id = enrolled["device_id"]
        rc, posted = cli("post", "a post text may be logged", *device)
        assert rc == EXIT_OK, posted

        # An outage: the board's only worker stops; health names it (exit 4), a post fails.
        stack.kill("board", 0, signal.SIGTERM)
        until(lambda: health(stack)[0] == EXIT_UNHEALTHY, "health sees the board down")
        rc, doc = health(stack)
        assert doc["ok"] is False and doc["down"] == ["board"], doc
        assert {c["name"]: c["detail"] for c in doc["checks"]}["board"] == "no worker alive"
        rc, failed = cli("post", "during the outage", *device)
        assert failed["error"] == "service_unavailable", failed
        stack.spawn("board")
        until(lambda: health(stack)[0] == EXIT_OK, "health ok again")

        # Refusals up to the lock, then a revocation: webhook events for each.
        with Tpm(swtpm.tcti) as tpm:
            tpm.extend_pcr(16, b"operations test")
            current = tpm.pcr_read("sha256:16")[16].hex()
        for _ in range(MAX_FAILURES):
            rc, refused = cli("status", *device)
            assert (rc, refused["error"]) == (EXIT_REFUSED, "pcr_mismatch"), refused
        rc, revoked = admin_cli(stack, "revoke", "ops-dev")
        assert rc == EXIT_OK, revoked

        deliveries = hook.wait_for(MAX_FAILURES + 2)
        events = []
        for headers, body in deliveries:
            assert verify_signature(SECRET.encode(), body, headers[SIGNATURE_HEADER])
            assert headers["Content-Type"] == "application/json"
            events.append(json.loads(body))
        assert sorted(e["event"] for e in events) == ["locked", "refused", "refused", "revoked"]
        for e in events:
            assert (e["device_id"], e["name"]) == (device_id, "ops-dev"), e
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"])
        refusals = [e for e in events if e["event"] == "refused"]
        assert [r["code"] for r in refusals] == ["pcr_mismatch"] * MAX_FAILURES
        assert [r["failures"] for r in refusals] == [1, 2]
        assert refusals[0]["changed"] == [{"pcr": 16, "enrolled": refusals[0]["changed"][0][
            "enrolled"], "current": current}]
        locked = next(e for e in events if e["event"] == "locked")
        assert locked["code"] == "locked" and locked["changed"][0]["pcr"] == 16
        assert next(e for e in events if e["event"] == "revoked")["code"] == "revoked"

        # Metrics: the gateway counted what happened, the workers what they handled.
        gw = scrape(stack, "gateway")
        assert gw['attestgate_refusals_total{code="pcr_mismatch"}'] == MAX_FAILURES
        assert gw["attestgate_posts_total"] == 1
        assert gw['attestgate_gateway_connections_total{mode="enroll"}'] == 1
        assert gw['attestgate_gateway_connections_total{mode="connect"}'] >= 2 + MAX_FAILURES
        assert gw["attestgate_attestation_seconds_count"] >= 1 + MAX_FAILURES
        assert gw['attestgate_bus_workers{service="board"}'] == 1
        assert gw['attestgate_bus_queue_depth{service="attestor"}'] == 0
        assert gw['attestgate_bus_inflight{service="attestor"}'] == 0
        assert gw["attestgate_sessions"] == 0
        assert gw['attestgate_bus_requests_total{op="post",outcome="service_unavailable",'
                  'service="board"}'] >= 1
        assert gw['attestgate_webhook_deliveries_total{outcome="delivered"}'] >= 3
        att = scrape(stack, "attestor")
        assert att['attestgate_worker_requests_total{op="attest",outcome="pcr_mismatch",'
                   'service="attestor"}'] == MAX_FAILURES
        assert att['attestgate_store_errors_total{service="attestor"}'] == 0
        board = scrape(stack, "board")  # the second board worker took over the base + 3 port
        assert board['attestgate_store_errors_total{service="board"}'] == 0
        for process in ("attestor", "registry", "board"):
            with urllib.request.urlopen(stack.metrics_url(process) + "/healthz", timeout=5) as r:
                assert json.loads(r.read()) == {"ok": True, "process": process}

        # Logs: logfmt, refusals at WARNING, the outage at ERROR, no secret anywhere.
        logs = {p.name: p.read_text() for p in (stack.directory / "logs").glob("*.log")}
        gateway_log = logs["gateway-0.log"]
        assert re.search(r'level=warning logger=attestgate.gateway msg="attestation refused '
                         rf'device={device_id} code=pcr_mismatch"', gateway_log), gateway_log
        assert re.search(r'level=error logger=attestgate.gateway msg="outage service=board '
                         r'op=post ', gateway_log), gateway_log
        assert 'msg="webhook delivered id=' in gateway_log
        for name, text in logs.items():
            for line in text.splitlines():
                assert LOGFMT_LINE.match(line), f"{name}: not logfmt: {line!r}"
        for what, secret in secrets_of(stack, device_id, token).items():
            for form in forms(secret):
                for name, text in logs.items():
                    assert form not in text, f"{what} in {name}"
        stack.stop()


def test_webhook_to_a_closed_port_never_delays_the_refusal(
        tmp_path: Path, swtpm: SwtpmProcess, swtpm_template: TemplateTpm) -> None:
    """The receiver is down: the device still gets its refusal at once, and the gateway
    logs each failed try (WARNING); JSON logs here (ATTESTGATE_LOG_FORMAT=json)."""
    closed = free_port()
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings={"ATTESTGATE_PCR_SELECTION": SELECTION,
                               "ATTESTGATE_LOG_FORMAT": "json",
                               "ATTESTGATE_WEBHOOK_URL": f"http://127.0.0.1:{closed}/x"}
                     ) as stack:
        device = ["--tpm", swtpm.tcti, "--home", str(tmp_path / "home")]
        rc, enrolled = cli("enroll", "--server", stack.server, "--name", "dev2", "--tofu",
                           *device)
        assert rc == EXIT_OK, enrolled
        with Tpm(swtpm.tcti) as tpm:
            tpm.extend_pcr(16, b"x")
        rc, refused = cli("status", *device)
        assert (rc, refused["error"]) == (EXIT_REFUSED, "pcr_mismatch"), refused

        def failed_try() -> bool:
            lines = [json.loads(x) for x in stack.log("gateway").splitlines() if x.strip()]
            return any(r["level"] == "warning" and r["msg"].startswith("webhook try failed")
                       and "ConnectionRefusedError" in r["msg"] for r in lines)

        until(failed_try, "a failed webhook try in the gateway's JSON log")
        lines = [json.loads(x) for x in stack.log("gateway").splitlines() if x.strip()]
        assert all(set(r) >= {"ts", "level", "logger", "msg"} for r in lines)


def test_example_plugins_run_in_the_real_attestor(
        tmp_path: Path, swtpm_factory: SwtpmFactory, swtpm_template: TemplateTpm,
        swtpm_template_other_ca: TemplateTpm) -> None:
    """examples/plugins registered as an installed distribution (tests/support/plugins.py):
    the attestor worker loads both entry points; the policy refuses a deny-listed device,
    the consequence locks another at its first PCR 7 refusal."""
    site = register_example(tmp_path / "site")
    trust = tmp_path / "trust"
    trust.mkdir()
    for t in (swtpm_template, swtpm_template_other_ca):
        shutil.copyfile(t.ca_cert_path, trust / t.ca_cert_path.name)
    with Stack.start(tmp_path / "stack", ca_dir=trust, settings={
            "ATTESTGATE_PCR_SELECTION": SELECTION, "ATTESTGATE_MAX_FAILURES": "3",
            "ATTESTGATE_EXAMPLE_DENY": "blocked",
            "PYTHONPATH": os.pathsep.join([*map(str, site), str(REPO)])}) as stack:
        blocked = ["--tpm", swtpm_factory().tcti, "--home", str(tmp_path / "home-blocked")]
        fine_tpm = swtpm_factory(swtpm_template_other_ca)
        fine = ["--tpm", fine_tpm.tcti, "--home", str(tmp_path / "home-fine")]
        for name, device in (("blocked", blocked), ("fine", fine)):
            rc, doc = cli("enroll", "--server", stack.server, "--name", name, "--tofu", *device)
            assert rc == EXIT_OK, doc

        rc, doc = cli("status", *blocked)
        assert (rc, doc["error"]) == (EXIT_REFUSED, "policy_refused"), doc
        rc, doc = cli("status", *fine)
        assert rc == EXIT_OK and doc["status"] == "active", doc

        with Tpm(fine_tpm.tcti) as tpm:
            tpm.extend_pcr(7, b"new Secure Boot db")
        rc, doc = cli("status", *fine)
        assert (rc, doc["error"], doc["status"], doc["failures"]) == (
            EXIT_REFUSED, "pcr_mismatch", "locked", 1), doc
        rc, doc = cli("status", *fine)
        assert (rc, doc["error"]) == (EXIT_REFUSED, "locked"), doc

        log = stack.log("attestor")
        assert 'msg="plugin loaded group=attestgate.policies name=deny-listed ' in log
        assert ('msg="plugin loaded group=attestgate.consequences '
                'name=lock-on-secure-boot-change ') in log
        rc, doc = admin_cli(stack, "audit", "fine")
        assert rc == EXIT_OK, doc
        assert "plugin_action" in [e["event"] for e in doc["entries"]], doc
