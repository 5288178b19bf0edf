"""Server configuration from environment variables, with single-machine defaults: the contract.

Every setting is parsed here, strictly, by every service at start (and by
``attestgate-admin``): a value that is not valid raises :class:`ConfigError`, whose
message is one line naming the variable, the value and what is allowed, and the
service exits 2 with it. Nothing is clamped or guessed. An empty (or blank) value
means "unset" (the default applies), as ``.env.example`` says.

To add a setting: add a field to :class:`ServerConfig` and read it in ``from_env``
with one of the typed readers below (``boolean``, ``integer``, ``number``,
``choice``, ``text``, or ``setting`` with your own parser that raises ValueError
with what is allowed). ``README.md`` and ``.env.example`` document each variable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from shared.errors import AttestgateError, ErrorCode
from shared.timing import REATTEST_INTERVAL
from shared.tpm.pcrs import PcrSelection


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
# The gateway's endpoints, then the web console's (shared.console_settings).
DEFAULT_BUS = "tcp://127.0.0.1:7450,tcp://127.0.0.1:7452"
DEFAULT_EVENTS = "tcp://127.0.0.1:7451,tcp://127.0.0.1:7453"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_FAILURES_RANGE = (1, 1000)
REATTEST_RANGE = (0.1, 86400.0)  # seconds

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class ConfigError(Exception):
    """A setting that is not valid; ``str()`` is one line for the operator."""

    def __init__(self, name: str, value: str, allowed: str) -> None:
        super().__init__(f"{name}={value!r} is not valid: {allowed}")
        self.name, self.value, self.allowed = name, value, allowed


# -- typed readers: one per kind of setting ---------------------------------------------------


def setting(env: Mapping[str, str], name: str, default: str, parse: Callable[[str], T]) -> T:
    """Read ``name`` (empty or absent = ``default``) with ``parse``, which raises ValueError
    whose text says what is allowed; raises ConfigError naming variable, value and rule."""
    value = env.get(name, "")
    if not value.strip():
        value = default
    try:
        return parse(value)
    except (ValueError, AttestgateError) as exc:
        allowed = exc.detail if isinstance(exc, AttestgateError) else str(exc)
        raise ConfigError(name, value, allowed) from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    return setting(env, name, "1" if default else "0", parse_bool)


def integer(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    def parse(text: str) -> int:
        t = text.strip()
        if re.fullmatch(r"[+-]?\d{1,19}", t) and lo <= int(t) <= hi:
            return int(t)
        raise ValueError(f"expected a whole number from {lo} to {hi}")
    return setting(env, name, str(default), parse)


def number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if math.isfinite(value) and lo <= value <= hi:
            return value
        raise ValueError(f"expected a number from {lo:g} to {hi:g}")
    return setting(env, name, repr(default), parse)


def choice(env: Mapping[str, str], name: str, enum: type[E], default: E) -> E:
    def parse(text: str) -> E:
        try:
            return enum(text.strip())
        except ValueError:
            raise ValueError("expected one of " + ", ".join(m.value for m in enum)) from None
    return setting(env, name, default.value, parse)


def text(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, "").strip() or default


# -- parsers of single values -------------------------------------------------------------------


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); raises BAD_REQUEST."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text.strip())
    except AttestgateError:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535 "
                         "(IPv6 as [::1]:PORT)") from None


def _endpoints(text: str) -> tuple[str, ...]:
    rule = ("expected comma-separated ZeroMQ endpoints tcp://HOST:PORT (or ipc://PATH), "
            "at least one")
    items = tuple(v.strip() for v in text.split(",") if v.strip())
    if not items:
        raise ValueError(rule)
    for item in items:
        scheme, sep, rest = item.partition("://")
        if not sep or not rest:
            raise ValueError(rule)
        if scheme == "tcp":
            host, colon, port = rest.rpartition(":")
            if not colon or not host or not (port == "*" or (port.isdigit()
                                                             and 0 < int(port) < 65536)):
                raise ValueError(rule)
        elif scheme != "ipc":
            raise ValueError(rule)
    return items


def _redis_url(text: str) -> str:
    rule = "expected redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... or unix:///PATH"
    try:
        u = urlsplit(text.strip())
        port = u.port  # raises ValueError on a bad port
    except ValueError:
        raise ValueError(rule) from None
    if u.scheme in ("redis", "rediss"):
        db = u.path.strip("/")
        if not u.hostname or (port is not None and not 0 < port < 65536) or (
                db and not db.isdigit()):
            raise ValueError(rule)
    elif u.scheme != "unix" or not u.path:
        raise ValueError(rule)
    return text.strip()


def _pcr_selection(text: str) -> str:
    rule = ("expected BANK:LIST of PCR indices 0-23, e.g. sha256:0,1,2,7 "
            "(banks sha1, sha256, sha384, sha512, joined by +)")
    try:
        sel = PcrSelection.parse(text.strip())
    except AttestgateError:
        raise ValueError(rule) from None
    if not any(b.indices for b in sel.banks):
        raise ValueError(rule)
    return text.strip()


def parse_window(text: str) -> tuple[int, int] | None:
    """``"HH:MM-HH:MM"`` (UTC, 00:00 to 24:00) or "" for always: minutes since midnight."""
    if not text.strip():
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if m:
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        a, b = h1 * 60 + m1, h2 * 60 + m2
        if m1 < 60 and m2 < 60 and a <= 24 * 60 and b <= 24 * 60 and a != b:
            return a, b
    raise ValueError("expected HH:MM-HH:MM in UTC (e.g. 08:00-18:00), or empty for always")


def _window(text: str) -> str:
    parse_window(text)
    return text.strip()


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(LOG_LEVELS))
    return level


def _path(text: str) -> Path:
    return Path(text.strip()).expanduser()


@dataclass(frozen=True)
class ServerConfig:
    listen_host: str
    listen_port: int
    redis_url: str
    bus_endpoints: tuple[str, ...]  # gateway binds the first; workers connect to all
    # (by default also to the web console's own endpoint: services/console/__init__.py)
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
    # ATTESTGATE_BASELINE_GRACE: seconds a baseline superseded by `approve` (--replace) is
    # still accepted; 0 = it goes at once
    baseline_grace: float = 0.0

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> ServerConfig:
        """Parse every setting strictly; raises ConfigError for the first bad one."""
        e = os.environ if env is None else env
        host, port = setting(e, "ATTESTGATE_LISTEN", "127.0.0.1:7443", _listen)
        home = setting(e, "ATTESTGATE_SERVER_HOME", "run/server", _path)
        policy = choice(e, "ATTESTGATE_ENROLL_POLICY", EnrollPolicy, EnrollPolicy.REQUIRE_EK_CERT)
        ca = text(e, "ATTESTGATE_EK_CA_DIR")
        allow = text(e, "ATTESTGATE_EK_ALLOWLIST")
        if policy is EnrollPolicy.REQUIRE_EK_CERT and not ca:
            ca = str(home / "ek-ca")
        if policy is EnrollPolicy.ALLOWLIST and not allow:
            raise ConfigError("ATTESTGATE_EK_ALLOWLIST", allow,
                              "required (a file of EK fingerprints) when "
                              "ATTESTGATE_ENROLL_POLICY=allowlist")
        return ServerConfig(
            listen_host=host,
            listen_port=port,
            redis_url=setting(e, "ATTESTGATE_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url),
            bus_endpoints=setting(e, "ATTESTGATE_BUS", DEFAULT_BUS, _endpoints),
            events_endpoints=setting(e, "ATTESTGATE_EVENTS", DEFAULT_EVENTS,
                                     _endpoints),
            server_home=home,
            enroll_policy=policy,
            ek_ca_dir=_path(ca) if ca else None,
            ek_allowlist=_path(allow) if allow else None,
            open_enrollment=boolean(e, "ATTESTGATE_OPEN_ENROLLMENT", True),
            pcr_selection=setting(e, "ATTESTGATE_PCR_SELECTION", DEFAULT_PCR_SELECTION,
                                  _pcr_selection),
            max_failures=integer(e, "ATTESTGATE_MAX_FAILURES", 3, *MAX_FAILURES_RANGE),
            consequence=choice(e, "ATTESTGATE_ON_FAILURE", Consequence, Consequence.LOCK),
            reattest_interval=number(e, "ATTESTGATE_REATTEST_INTERVAL", REATTEST_INTERVAL,
                                     *REATTEST_RANGE),
            connect_window=setting(e, "ATTESTGATE_CONNECT_WINDOW", "", _window),
            log_level=setting(e, "ATTESTGATE_LOG_LEVEL", "INFO", _log_level),
            max_sessions_per_device=integer(e, "ATTESTGATE_MAX_SESSIONS_PER_DEVICE", 8, 1,
                                            1_000_000),
            handshake_rate=number(e, "ATTESTGATE_HANDSHAKE_RATE", 20.0, 0.001, 1e6),
            handshake_burst=number(e, "ATTESTGATE_HANDSHAKE_BURST", 5.0, 1, 1e6),
            token_max_failures=integer(e, "ATTESTGATE_TOKEN_MAX_FAILURES", 10, 1, 1_000_000),
            baseline_grace=number(e, "ATTESTGATE_BASELINE_GRACE", 0.0, 0.0, 10 * 365 * 86400.0),
        )

    def check_files(self) -> None:
        """The files the enrollment policy names must exist (services call this at start)."""
        if self.enroll_policy is EnrollPolicy.REQUIRE_EK_CERT:
            ca = self.ek_ca_dir
            name = "ATTESTGATE_EK_CA_DIR"
            if ca is None or not ca.is_dir():
                raise ConfigError(name, str(ca or ""), "no such directory: it must hold the EK CA "
                                  "certificates when ATTESTGATE_ENROLL_POLICY=require-ek-cert "
                                  "(default ATTESTGATE_SERVER_HOME/ek-ca)")
            if not any(p.is_file() for p in ca.iterdir()):
                raise ConfigError(name, str(ca), "the directory holds no certificate file")
        if self.enroll_policy is EnrollPolicy.ALLOWLIST:
            path = self.ek_allowlist
            if path is None or not path.is_file():
                raise ConfigError("ATTESTGATE_EK_ALLOWLIST", str(path or ""),
                                  "no such file: it must list the allowed EK fingerprints when "
                                  "ATTESTGATE_ENROLL_POLICY=allowlist")
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError("ATTESTGATE_EK_ALLOWLIST", str(path),
                                  f"cannot be read ({exc.strerror})") from None
