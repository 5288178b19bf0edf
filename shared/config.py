"""Server configuration from environment variables, with single-machine defaults.

Every address, port and path is configurable so that two stacks run side by side
on one machine. ``README.md`` and ``.env.example`` document each variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from shared.errors import AttestgateError, ErrorCode
from shared.timing import REATTEST_INTERVAL


class EnrollPolicy(StrEnum):
    REQUIRE_EK_CERT = "require-ek-cert"  # EK certificate must chain to ATTESTGATE_EK_CA_DIR
    ALLOWLIST = "allowlist"  # EK public key fingerprint must be in ATTESTGATE_EK_ALLOWLIST
    TOFU = "tofu"  # any TPM; identity pinned on first enrollment


class Consequence(StrEnum):
    LOCK = "lock"  # refuse connections until an operator unlocks
    REVOKE = "revoke"  # permanent; the device must enroll again under a new identity
    REENROLL = "reenroll"  # refuse until the device enrolls again (same TPM allowed)
    ALERT = "alert"  # only log an alert; keep refusing mismatching states


DEFAULT_PCR_SELECTION = "sha256:0,1,2,3,4,5,6,7"


@dataclass(frozen=True)
class ServerConfig:
    listen_host: str
    listen_port: int
    redis_url: str
    bus_endpoints: tuple[str, ...]  # gateway binds the first; workers connect to all
    events_endpoints: tuple[str, ...]
    server_home: Path
    enroll_policy: EnrollPolicy
    ek_ca_dir: Path | None
    ek_allowlist: Path | None
    open_enrollment: bool
    pcr_selection: str
    max_failures: int
    consequence: Consequence
    reattest_interval: float
    connect_window: str  # "" or "HH:MM-HH:MM" UTC, when devices may connect
    log_level: str
    # -- admission and abuse limits (gateway, registry) --------------------------------
    max_sessions_per_device: int = 8  # ATTESTGATE_MAX_SESSIONS_PER_DEVICE (>= 1)
    handshake_rate: float = 20.0  # ATTESTGATE_HANDSHAKE_RATE: anonymous handshakes/s per address
    handshake_burst: float = 5.0  # ATTESTGATE_HANDSHAKE_BURST (>= 1)
    token_max_failures: int = 10  # ATTESTGATE_TOKEN_MAX_FAILURES: wrong secrets, then burned

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> ServerConfig:
        e = os.environ if env is None else env
        host, port = parse_host_port(e.get("ATTESTGATE_LISTEN", "127.0.0.1:7443"))
        home = Path(e.get("ATTESTGATE_SERVER_HOME", "run/server")).expanduser()
        ca = e.get("ATTESTGATE_EK_CA_DIR", "")
        allow = e.get("ATTESTGATE_EK_ALLOWLIST", "")
        try:
            policy = EnrollPolicy(e.get("ATTESTGATE_ENROLL_POLICY", "require-ek-cert"))
            consequence = Consequence(e.get("ATTESTGATE_ON_FAILURE", "lock"))
            max_failures = int(e.get("ATTESTGATE_MAX_FAILURES", "3"))
            reattest = float(e.get("ATTESTGATE_REATTEST_INTERVAL", str(REATTEST_INTERVAL)))
            limits = _abuse_limits(e)
        except ValueError as exc:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"bad configuration: {exc}") from None
        if policy is EnrollPolicy.REQUIRE_EK_CERT and not ca:
            ca = str(home / "ek-ca")
        return ServerConfig(
            listen_host=host,
            listen_port=port,
            redis_url=e.get("ATTESTGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            bus_endpoints=_split(e.get("ATTESTGATE_BUS", "tcp://127.0.0.1:7450")),
            events_endpoints=_split(e.get("ATTESTGATE_EVENTS", "tcp://127.0.0.1:7451")),
            server_home=home,
            enroll_policy=policy,
            ek_ca_dir=Path(ca) if ca else None,
            ek_allowlist=Path(allow) if allow else None,
            open_enrollment=e.get("ATTESTGATE_OPEN_ENROLLMENT", "1") not in ("0", "no", "false"),
            pcr_selection=e.get("ATTESTGATE_PCR_SELECTION", DEFAULT_PCR_SELECTION),
            max_failures=max(1, max_failures),
            consequence=consequence,
            reattest_interval=reattest,
            connect_window=e.get("ATTESTGATE_CONNECT_WINDOW", ""),
            log_level=e.get("ATTESTGATE_LOG_LEVEL", "INFO"),
            **limits,
        )


def _abuse_limits(e: Mapping[str, str]) -> dict[str, Any]:
    """The admission and abuse settings; ValueError names the variable and what is allowed."""
    def number(name: str, default: str, kind: type[int] | type[float], low: float) -> Any:
        raw = e.get(name, default)
        what = "an integer" if kind is int else "a number"
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}: expected {what} >= {low}") from None
        if not math.isfinite(value) or value < low:
            raise ValueError(f"{name}={raw!r}: expected {what} >= {low}")
        return value

    return {
        "max_sessions_per_device": number("ATTESTGATE_MAX_SESSIONS_PER_DEVICE", "8", int, 1),
        "handshake_rate": number("ATTESTGATE_HANDSHAKE_RATE", "20", float, 0.001),
        "handshake_burst": number("ATTESTGATE_HANDSHAKE_BURST", "5", float, 1),
        "token_max_failures": number("ATTESTGATE_TOKEN_MAX_FAILURES", "10", int, 1),
    }


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); raises BAD_REQUEST."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())
