"""``attestgate-admin health``: is every part of the stack up? Reads no secret.

Checks, in order (each one a :class:`Check`):

* ``redis``     — the store answers PING (ATTESTGATE_REDIS_URL / --redis-url);
* ``gateway``   — the gateway's health endpoint answers (ATTESTGATE_METRICS_LISTEN, base
                  port + 0, ``GET /healthz``): the gateway process and its event loop live;
* ``bus``       — the bus broker (the gateway) reports its workers;
* ``attestor``, ``registry``, ``board`` — at least one worker registered with the broker
                  (``workers`` tells how many; ``queued``/``inflight`` their load);
* ``listener``  — the gateway reports its device listener serving, and a TCP connection
                  to ATTESTGATE_LISTEN opens from here.

The probes are parameters so that tests can drive the logic; the real ones talk to
127.0.0.1 or wherever the settings point, with short timeouts.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shared.errors import AttestgateError
from shared.store.redis_store import RedisStore

PROBE_TIMEOUT: Final = 2.0
SERVICES: Final = ("attestor", "registry", "board")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, **self.facts}


@dataclass(frozen=True)
class Probes:
    redis: Callable[[str], str | None]  # url -> None if it answers, else the problem
    http_get: Callable[[str, int, str], tuple[int, bytes]]  # raises OSError
    tcp: Callable[[str, int], str | None]  # None if a connection opens, else the problem


def _redis(url: str) -> str | None:
    store = RedisStore(url, timeout=PROBE_TIMEOUT)
    try:
        store.ping()
        return None
    except AttestgateError as exc:
        return exc.code.value
    finally:
        store.close()


def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(65536)
    except http.client.HTTPException as exc:
        raise OSError(type(exc).__name__) from None
    finally:
        conn.close()


def _tcp(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


REAL_PROBES: Final = Probes(_redis, _http_get, _tcp)


def _reachable(host: str) -> str:
    """A wildcard listen address is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def run_checks(redis_url: str, redis_shown: str, listen: tuple[str, int],
               metrics: tuple[str, int] | None, probes: Probes = REAL_PROBES) -> list[Check]:
    checks: list[Check] = []
    problem = probes.redis(redis_url)
    checks.append(Check("redis", problem is None, f"{redis_shown} answers" if problem is None
                        else f"{redis_shown}: {problem}"))
    doc: Mapping[str, Any] | None = None
    if metrics is None:
        checks.append(Check("gateway", False, "ATTESTGATE_METRICS_LISTEN=off: the gateway's "
                            "health endpoint is not served; set it to check bus and workers"))
    else:
        host, port = _reachable(metrics[0]), metrics[1]
        where = f"http://{host}:{port}/healthz"
        try:
            status, body = probes.http_get(host, port, "/healthz")
            parsed = json.loads(body)
            if not isinstance(parsed, dict) or parsed.get("process") != "gateway":
                checks.append(Check("gateway", False, f"{where}: not a gateway health document"))
            else:
                doc = parsed
                checks.append(Check("gateway", True, f"{where} answers ({status})"))
        except (OSError, ValueError) as exc:
            checks.append(Check("gateway", False, f"{where}: "
                                f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}"))
    services = doc.get("services") if doc is not None else None
    if not isinstance(services, dict):
        checks.append(Check("bus", False, "unknown: the gateway (the bus broker) did not report"))
        for name in SERVICES:
            checks.append(Check(name, False, "unknown: the bus broker did not report"))
    else:
        checks.append(Check("bus", True, "the broker reports its workers"))
        for name in SERVICES:
            s = services.get(name)
            stats = s if isinstance(s, dict) else {}
            workers = int(stats.get("workers", 0))
            facts = {"workers": workers, "queued": int(stats.get("queued", 0)),
                     "inflight": int(stats.get("inflight", 0))}
            checks.append(Check(name, workers > 0, f"{workers} worker(s) alive" if workers
                                else "no worker alive", facts))
    host, port = _reachable(listen[0]), listen[1]
    problem = probes.tcp(host, port)
    serving = doc.get("listening") if doc is not None else None
    if problem is not None:
        checks.append(Check("listener", False, f"{host}:{port}: {problem}"))
    elif serving is False:
        checks.append(Check("listener", False, f"{host}:{port} opens but the gateway reports "
                            "its listener closed"))
    else:
        checks.append(Check("listener", True, f"{host}:{port} accepts connections"))
    return checks


def text_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.ok else 'DOWN'}  {c.name:<{width}}  {c.detail}"
                     for c in checks)
