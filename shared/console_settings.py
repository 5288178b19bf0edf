"""The web console's settings, read strictly from the environment in one place.

    ATTESTGATE_CONSOLE_LISTEN         HOST:PORT of the console's HTTP server
                                      (default 127.0.0.1:8470: loopback only)
    ATTESTGATE_CONSOLE_BUS            the request bus endpoint the console binds; workers
                                      connect to it because it is listed in ATTESTGATE_BUS
                                      (default tcp://127.0.0.1:7452)
    ATTESTGATE_CONSOLE_EVENTS         the events endpoint the console binds; listed in
                                      ATTESTGATE_EVENTS (default tcp://127.0.0.1:7453)
    ATTESTGATE_CONSOLE_URL            the URL operators open, for the login link that
                                      ``attestgate-admin console-token`` prints (default
                                      http://ATTESTGATE_CONSOLE_LISTEN; behind a TLS proxy
                                      its https:// address)
    ATTESTGATE_CONSOLE_SECURE_COOKIE  1: mark the session cookie Secure (behind TLS);
                                      default: on when ATTESTGATE_CONSOLE_URL is https://

Shared by the console and ``attestgate-admin`` (which prints the link), so it lives here.
A bad value raises ``shared.config.ConfigError`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from shared.config import boolean, parse_host_port, setting

DEFAULT_LISTEN: Final = "127.0.0.1:8470"
DEFAULT_BUS: Final = "tcp://127.0.0.1:7452"
DEFAULT_EVENTS: Final = "tcp://127.0.0.1:7453"


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text.strip())
    except Exception:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535 "
                         "(IPv6 as [::1]:PORT)") from None


def _endpoint(text: str) -> str:
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme == "tcp" and sep and host and colon and port.isdigit() and 0 < int(port) < 65536:
        return value
    if scheme == "ipc" and sep and rest:
        return value
    raise ValueError("expected one ZeroMQ endpoint tcp://HOST:PORT or ipc://PATH")


def _url(text: str) -> str:
    value = text.strip().rstrip("/")
    u = urlsplit(value)
    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
        raise ValueError("expected http://HOST[:PORT][/PATH] or https://...")
    return value


@dataclass(frozen=True)
class ConsoleSettings:
    listen_host: str
    listen_port: int
    bus_endpoint: str
    events_endpoint: str
    url: str
    secure_cookie: bool

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> ConsoleSettings:
        e = os.environ if env is None else env
        host, port = setting(e, "ATTESTGATE_CONSOLE_LISTEN", DEFAULT_LISTEN, _listen)
        shown = f"[{host}]" if ":" in host else host
        url = setting(e, "ATTESTGATE_CONSOLE_URL", f"http://{shown}:{port}", _url)
        return ConsoleSettings(
            listen_host=host,
            listen_port=port,
            bus_endpoint=setting(e, "ATTESTGATE_CONSOLE_BUS", DEFAULT_BUS, _endpoint),
            events_endpoint=setting(e, "ATTESTGATE_CONSOLE_EVENTS", DEFAULT_EVENTS, _endpoint),
            url=url,
            secure_cookie=boolean(e, "ATTESTGATE_CONSOLE_SECURE_COOKIE",
                                  url.startswith("https://")),
        )
