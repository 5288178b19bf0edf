"""Operations settings (metrics, log format, webhook), read strictly in one place.

    ATTESTGATE_METRICS_LISTEN   HOST:BASEPORT of the per-process metrics and health HTTP
                                endpoints (default 127.0.0.1:9470, loopback only), or ``off``.
                                Each process binds BASEPORT + its offset (METRICS_OFFSETS):
                                gateway +0, attestor +1, registry +2, board +3. The web
                                console serves /metrics on its own listener.
    ATTESTGATE_LOG_FORMAT       ``logfmt`` (default) or ``json``: one line per record.
    ATTESTGATE_WEBHOOK_URL      http(s) URL the gateway POSTs refusal, lock and revocation
                                events to (default: none).
    ATTESTGATE_WEBHOOK_SECRET   key of the ``X-Attestgate-Signature`` HMAC-SHA256 (default:
                                none; then the header is not sent).

Shared by the services and ``attestgate-admin health`` (which reads only the metrics address).
A bad value raises ``shared.config.ConfigError`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from shared.config import choice, parse_host_port, setting

DEFAULT_METRICS_LISTEN: Final = "127.0.0.1:9470"
# Offset of each process's metrics port from ATTESTGATE_METRICS_LISTEN's base port.
METRICS_OFFSETS: Final = {"gateway": 0, "attestor": 1, "registry": 2, "board": 3}
MAX_SECRET: Final = 1024


class LogFormat(StrEnum):
    LOGFMT = "logfmt"
    JSON = "json"


def _metrics_listen(text: str) -> tuple[str, int] | None:
    value = text.strip()
    if value.lower() == "off":
        return None
    try:
        host, port = parse_host_port(value)
    except Exception:
        raise ValueError("expected HOST:BASEPORT (IPv6 as [::1]:PORT) with room for the "
                         "offsets (base port at most 65532), or off") from None
    if port > 65535 - max(METRICS_OFFSETS.values()):
        raise ValueError("the base port leaves no room for the offsets +0..+3")
    return host, port


def _webhook_url(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    u = urlsplit(value)
    if u.scheme not in ("http", "https") or not u.hostname or u.fragment:
        raise ValueError("expected http://HOST[:PORT]/PATH or https://...")
    return value


def _secret(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > MAX_SECRET:
        raise ValueError(f"at most {MAX_SECRET} bytes")
    return raw


@dataclass(frozen=True)
class OpsSettings:
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9470)
    log_format: LogFormat = LogFormat.LOGFMT
    webhook_url: str = ""
    webhook_secret: bytes = field(default=b"", repr=False)

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> OpsSettings:
        e = os.environ if env is None else env
        return OpsSettings(
            metrics_listen=setting(e, "ATTESTGATE_METRICS_LISTEN", DEFAULT_METRICS_LISTEN,
                                   _metrics_listen),
            log_format=choice(e, "ATTESTGATE_LOG_FORMAT", LogFormat, LogFormat.LOGFMT),
            webhook_url=setting(e, "ATTESTGATE_WEBHOOK_URL", " ", _webhook_url),
            webhook_secret=_secret(e.get("ATTESTGATE_WEBHOOK_SECRET", "")),
        )

    def metrics_address(self, process: str) -> tuple[str, int] | None:
        """Where ``process`` (gateway, attestor, registry, board) serves /metrics, or None."""
        if self.metrics_listen is None:
            return None
        host, base = self.metrics_listen
        return host, base + METRICS_OFFSETS[process]
