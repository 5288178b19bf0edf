"""The client's end of a channel: a blocking socket around the sans-IO NoiseSession.

``open_enroll`` and ``open_connect`` run the handshakes; ``Channel.request``
sends one command and returns its reply, keeping pushes that arrive meanwhile
for ``Channel.next_push``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.codec import Fields, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, Mode, encode_frame, preamble
from shared.hint import Hint, HintReason, parse_hint
from shared.keys import Psk, StaticKey, enroll_psk
from shared.messages import ServerMessage, decode_server_message, encode_request
from shared.noise_session import NoiseSession, responder_ephemeral
from shared.timing import (
    CLIENT_CONNECT_ATTEMPTS,
    CLIENT_CONNECT_TIMEOUT,
    CLIENT_REQUEST_TIMEOUT,
    CLIENT_RETRY_MAX,
    CLIENT_RETRY_MIN,
)
from shared.wire import PROTOCOL_VERSION, TOKEN_ID_LEN, Command, Push

T = TypeVar("T")

# Said when the server closes a reconnect before it has proven who it is: nothing in such
# a close is authenticated, so it is never reported as a refusal (exit 3).
UNANSWERED_CONNECT = (
    "no answer the client could authenticate before the handshake completed, so this is not "
    "a refusal. Likely causes: this device is not enrolled "
    "on that server, or its key was replaced (enroll again only if the operator confirms the "
    "device is unknown); the server is busy or limiting connections from this address; a "
    "server service (registry, attestor) or its database (Redis) is down; or the server key "
    "pinned in this client's state is not that server's key. Try again later; if it persists, "
    "ask the operator."
)

UNANSWERED_ENROLL = (
    "no answer the client could authenticate, so this is not a refusal. Likely causes: the "
    "enrollment token is unknown, expired, already used, or burned after too many wrong "
    "secrets, or its secret is mistyped (ask the operator for a new one: `attestgate-admin "
    "token create`); the server requires a token and none was given (--token); the server is "
    "busy or limiting enrollments from this address; a server service (registry, attestor) or "
    "its database (Redis) is down. Check the token, then try again; if it persists, ask the "
    "operator."
)


class NetworkError(Exception):
    """The server could not be reached, or the connection broke."""


class ServerBusy(NetworkError):
    """The server hinted (in clear, unauthenticated) "busy / unavailable, retry after N ms".
    Only ever a reason to retry."""

    def __init__(self, hint: Hint) -> None:
        what = "busy" if hint.reason is HintReason.BUSY else "temporarily unavailable"
        super().__init__(f"the server says it is {what} (retry after {hint.retry_after_ms} ms)")
        self.hint = hint


class ServerVersion(NetworkError):
    """The server hinted that it speaks another protocol version (unauthenticated)."""


def _hint_error(hint: Hint) -> NetworkError:
    if hint.reason is HintReason.VERSION:
        if hint.version > PROTOCOL_VERSION:
            return ServerVersion(
                f"the server speaks attestgate protocol version {hint.version}, this client "
                f"version {PROTOCOL_VERSION}: upgrade attestgate on this machine")
        return ServerVersion(
            f"the server speaks attestgate protocol version {hint.version}, older than this "
            f"client's {PROTOCOL_VERSION}: ask the operator to upgrade the server")
    return ServerBusy(hint)


def retrying(attempt: Callable[[], T], progress: Callable[[str], None], *,
             attempts: int = CLIENT_CONNECT_ATTEMPTS,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``attempt`` again (bounded, with backoff) while the server hints it is busy.

    The hint is unauthenticated, so its retry-after is clamped to
    [CLIENT_RETRY_MIN, CLIENT_RETRY_MAX] and a forged hint costs at most a few retries.
    """
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except ServerBusy as exc:
            if n == attempts:
                raise NetworkError(
                    f"{exc}; gave up after {attempts} attempts. The server is overloaded or "
                    "one of its services (or its database) is down; try again later") from None
            backoff = CLIENT_RETRY_MIN * 2 ** (n - 1)
            delay = min(CLIENT_RETRY_MAX, max(exc.hint.retry_after_ms / 1000, backoff))
            delay *= 1 + random.random() / 4  # noqa: S311 - jitter, not a secret
            progress(f"{exc}; retrying in {delay:.1f} s (attempt {n + 1} of {attempts})")
            sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Refused(Exception):
    """The server refused: ``code`` and, for attestation, the body (changed PCRs...)."""

    code: ErrorCode
    body: dict[str, Any]


class Channel:
    def __init__(self, sock: socket.socket, noise: NoiseSession) -> None:
        self._sock = sock
        self._noise = noise
        self._decoder = FrameDecoder()
        self._pushes: deque[ServerMessage] = deque()
        self._next_id = 1

    @property
    def handshake_hash(self) -> bytes:
        return self._noise.handshake_hash

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw frames ---------------------------------------------------------------------
    def _read_frame(self, timeout: float | None) -> bytes:
        self._sock.settimeout(timeout)
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise NetworkError("timed out waiting for the server") from None
            except OSError as exc:
                raise NetworkError(f"connection lost: {exc.strerror or exc}") from None
            if not data:
                raise NetworkError("the server closed the connection")
            self._decoder.feed(data)

    def _read_handshake_frame(self) -> bytes:
        """The server's handshake message 2, or NetworkError/ServerBusy for a hint."""
        frame = self._read_frame(CLIENT_CONNECT_TIMEOUT)
        hint = parse_hint(frame)
        if hint is not None:
            raise _hint_error(hint)
        return frame

    def _write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise NetworkError(f"connection lost: {exc.strerror or exc}") from None

    def send(self, cmd: Command, **fields: Any) -> int:
        req_id = self._next_id
        self._next_id += 1
        self._write(encode_frame(self._noise.encrypt(encode_request(req_id, cmd, **fields))))
        return req_id

    def receive(self, timeout: float | None) -> ServerMessage:
        try:
            return decode_server_message(self._noise.decrypt(self._read_frame(timeout)))
        except AttestgateError as exc:
            raise NetworkError(f"bad message from server ({exc.code})") from None

    def request(self, cmd: Command, *, timeout: float = CLIENT_REQUEST_TIMEOUT,
                **fields: Any) -> dict[str, Any]:
        """Send ``cmd`` and wait for its reply; raises Refused on an error reply or refusal."""
        return self.reply_to(self.send(cmd, **fields), timeout)

    def reply_to(self, req_id: int, timeout: float = CLIENT_REQUEST_TIMEOUT) -> dict[str, Any]:
        """Wait for the reply to a request already sent (see ``request``)."""
        while True:
            msg = self.receive(timeout)
            if msg.push is not None:
                _raise_if_final(msg)
                self._pushes.append(msg)
                continue
            if msg.re != req_id:
                continue
            if not msg.ok:
                assert msg.code is not None
                raise Refused(msg.code, _strip(msg.body))
            return _strip(msg.body)

    def next_push(self, timeout: float | None = None) -> ServerMessage:
        """The next push (buffered first); REFUSED / CLOSING raise Refused."""
        msg = self._pushes.popleft() if self._pushes else self.receive(timeout)
        while msg.push is None:
            msg = self.receive(timeout)
        _raise_if_final(msg)
        return msg


def _strip(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("re", "ok", "code", "push")}


def _raise_if_final(msg: ServerMessage) -> None:
    if msg.push in (Push.REFUSED, Push.CLOSING):
        raise Refused(msg.code or ErrorCode.PROTOCOL, _strip(msg.body))


def _dial(host: str, port: int, mode: Mode) -> tuple[socket.socket, bytes]:
    try:
        sock = socket.create_connection((host, port), timeout=CLIENT_CONNECT_TIMEOUT)
    except OSError as exc:
        raise NetworkError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pre = preamble(mode)
    try:
        sock.sendall(pre.encode())
    except OSError as exc:
        sock.close()
        raise NetworkError(f"connection lost: {exc}") from None
    return sock, pre.prologue


def parse_token(token: str | None) -> tuple[bytes, bytes]:
    """``<16 hex id>.<secret>`` -> (id, secret); None -> open enrollment."""
    if not token:
        return b"", b""
    tid, sep, secret = token.strip().partition(".")
    try:
        raw_id = bytes.fromhex(tid)
    except ValueError:
        raw_id = b""
    if not sep or len(raw_id) != TOKEN_ID_LEN or not secret:
        raise AttestgateError(ErrorCode.BAD_TOKEN, "token must look like <16 hex>.<secret>")
    return raw_id, secret.encode()


@dataclass(frozen=True)
class EnrollHello:
    server_public: bytes
    selection: str


def open_enroll(host: str, port: int, static: StaticKey, token: str | None,
                check_server: Callable[[bytes], None]) -> tuple[Channel, EnrollHello]:
    """XXpsk3 handshake; ``check_server`` sees the server key before we commit (pinning)."""
    token_id, secret = parse_token(token)
    sock, _ = _dial(host, port, Mode.ENROLL)
    noise = NoiseSession.initiator(preamble(Mode.ENROLL), static, psk=enroll_psk(secret))
    ch = Channel(sock, noise)
    try:
        ch._write(encode_frame(noise.write_handshake(token_id)))
        try:
            hello_raw = noise.read_handshake(ch._read_handshake_frame())
        except (ServerBusy, ServerVersion):
            raise
        except NetworkError as exc:
            # The gateway closes silently for an unknown token id (or when a service is
            # down): nothing authenticated says which, so it is not a refusal.
            raise NetworkError(f"{exc}: {UNANSWERED_ENROLL}") from None
        server_public = noise.remote_static
        assert server_public is not None
        check_server(server_public)
        hello = Fields(unpack_map(hello_raw))
        ch._write(encode_frame(noise.write_handshake()))
        return ch, EnrollHello(server_public, hello.text("selection", 256))
    except BaseException:
        ch.close()
        raise


def open_connect(host: str, port: int, static: StaticKey, server_public: bytes, ts_ns: int,
                 session_psk: Callable[[bytes, bytes], Psk]) -> Channel:
    """IKpsk2 handshake; ``session_psk(e_i, e_r)`` is computed by the TPM."""
    sock, _ = _dial(host, port, Mode.CONNECT)
    noise = NoiseSession.initiator(preamble(Mode.CONNECT), static, server_static=server_public)
    ch = Channel(sock, noise)
    try:
        ch._write(encode_frame(noise.write_handshake(struct.pack(">Q", ts_ns))))
        try:
            msg2 = ch._read_handshake_frame()
        except (ServerBusy, ServerVersion):
            raise
        except NetworkError as exc:
            # Unknown or replayed key, wrong pinned server key, a service down, a limit:
            # the gateway cannot tell us which before the handshake, so it is not a refusal.
            raise NetworkError(f"{exc}: {UNANSWERED_CONNECT}") from None
        noise.set_psk(session_psk(noise.local_ephemeral, responder_ephemeral(msg2)))
        noise.read_handshake(msg2)
        return ch
    except BaseException:
        ch.close()
        raise
