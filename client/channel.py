"""The client's end of a channel: a blocking socket around the sans-IO NoiseSession.

``open_enroll`` and ``open_connect`` run the handshakes; ``Channel.request``
sends one command and returns its reply, keeping pushes that arrive meanwhile
for ``Channel.next_push``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.codec import Fields, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, Mode, encode_frame, preamble
from shared.keys import Psk, StaticKey, enroll_psk
from shared.messages import ServerMessage, decode_server_message, encode_request
from shared.noise_session import NoiseSession, responder_ephemeral
from shared.timing import CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT
from shared.wire import TOKEN_ID_LEN, Command, Push


class NetworkError(Exception):
    """The server could not be reached, or the connection broke."""


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
        req_id = self.send(cmd, **fields)
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
            hello_raw = noise.read_handshake(ch._read_frame(CLIENT_CONNECT_TIMEOUT))
        except NetworkError:
            raise Refused(ErrorCode.BAD_TOKEN, {}) from None
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
            msg2 = ch._read_frame(CLIENT_CONNECT_TIMEOUT)
        except NetworkError:
            # The gateway closes without a word for unknown or replayed keys.
            raise Refused(ErrorCode.UNKNOWN_DEVICE, {}) from None
        noise.set_psk(session_psk(noise.local_ephemeral, responder_ephemeral(msg2)))
        noise.read_handshake(msg2)
        return ch
    except BaseException:
        ch.close()
        raise
