"""Operator tokens for the web console: HMAC-signed, expiring, checked without any store.

A token is ``v1.KIND.EXPIRES.NONCE.MAC`` (ASCII, URL-safe): ``KIND`` says where it may
be used, ``EXPIRES`` is whole seconds since the epoch, ``NONCE`` 16 random bytes
(base64url) and ``MAC`` HMAC-SHA256 under the console key over everything before it.
The key is ``console.key`` in the server home (32 random bytes, 0600), made by whoever
needs it first (``attestgate-admin console-token`` or the console's start); deleting
it (and restarting the console) invalidates every token and session at once.

Kinds never stand in for each other:

* ``login``   — in the link ``attestgate-admin console-token`` prints; short-lived,
  used once, exchanged by the console for a session cookie;
* ``session`` — the cookie's value, made by the console at login;
* ``api``     — for scripts (``Authorization: Bearer``), printed by
  ``attestgate-admin console-token --bearer``.

The console learns nothing but "valid until T" from a token; nothing secret is in it.
Pure functions: time and randomness are parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from shared.keys import Random

CONSOLE_KEY_FILE: Final = "console.key"
KEY_LEN: Final = 32
NONCE_LEN: Final = 16
MAX_TOKEN_LEN: Final = 160  # size before parsing
_LABEL: Final = b"attestgate-console-token/1"
_SHAPE: Final = re.compile(
    r"v1\.([a-z]{1,16})\.(\d{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")

# -- lifetimes (seconds) -----------------------------------------------------------------
LOGIN_TTL: Final = 300.0  # the printed link: long enough to paste it into a browser
SESSION_TTL: Final = 8 * 3600.0  # the cookie: one working day
API_TTL: Final = 24 * 3600.0  # a bearer token's default
MAX_TTL: Final = 366 * 86400.0


class TokenKind(StrEnum):
    LOGIN = "login"
    SESSION = "session"
    API = "api"


@dataclass(frozen=True)
class ConsoleKey:
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class Claims:
    kind: TokenKind
    expires: int
    nonce: str  # identifies a login token, so that it is used once


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mac(key: ConsoleKey, body: str) -> str:
    return _b64(hmac.new(key.value, _LABEL + b"|" + body.encode(), hashlib.sha256).digest())


def make_token(key: ConsoleKey, kind: TokenKind, now: float, ttl: float, rng: Random) -> str:
    """A token of ``kind`` valid until ``now + ttl``."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be from 1 s to {MAX_TTL:g} s")
    body = f"v1.{kind.value}.{int(now + ttl)}.{_b64(rng(NONCE_LEN))}"
    return f"{body}.{_mac(key, body)}"


def check_token(key: ConsoleKey, token: str, kind: TokenKind, now: float) -> Claims | None:
    """The token's claims if it is well formed, of ``kind``, signed by ``key`` and not
    expired; None otherwise (the caller learns no reason: it is told to no one)."""
    if len(token) > MAX_TOKEN_LEN:
        return None
    m = _SHAPE.fullmatch(token)
    if m is None:
        return None
    body = token[: token.rindex(".")]
    if not hmac.compare_digest(_mac(key, body), m.group(4)):
        return None
    if m.group(1) != kind.value or int(m.group(2)) <= now:
        return None
    return Claims(kind, int(m.group(2)), m.group(3))


def load_key(home: Path) -> ConsoleKey:
    """Read ``console.key``; raises OSError (FileNotFoundError when absent), ValueError
    when it is not a key."""
    data = (home / CONSOLE_KEY_FILE).read_bytes()
    if len(data) != KEY_LEN:
        raise ValueError(f"{home / CONSOLE_KEY_FILE} is not a {KEY_LEN}-byte key")
    return ConsoleKey(data)


def load_or_create_key(home: Path, rng: Random = os.urandom) -> ConsoleKey:
    """The console key, created 0600 if absent (O_EXCL: two creators agree on one key)."""
    path = home / CONSOLE_KEY_FILE
    try:
        return load_key(home)
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole under a temporary name, then linked: a reader never sees half a key,
    # and of two creators the first link wins.
    tmp = home / f".{CONSOLE_KEY_FILE}.{os.getpid()}.{_b64(rng(6))}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, rng(KEY_LEN))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return load_key(home)
