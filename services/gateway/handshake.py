"""The two pre-session phases of a connection: enrollment, and reconnect up to the accepted quote.

Before the Noise handshake completes, every failure just closes the connection
(an unauthenticated peer learns nothing). After it, the peer is told a code.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.gateway import logtransfer
from services.gateway.admission import DeviceSessions, KnownKeys
from services.gateway.limits import SESSION_RCVBUF
from services.gateway.peer import Peer
from shared import hint
from shared.bus.interface import BusClient, Reply
from shared.codec import pack
from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, Preamble
from shared.keys import Psk, StaticKey
from shared.messages import (
    ClientMessage,
    decode_request,
    encode_error,
    encode_push,
    encode_reply,
)
from shared.noise_session import NoiseSession
from shared.timing import BUSY_RETRY_AFTER, REFUSAL_MARGIN, TOKEN_FAILURE_RESERVE
from shared.wire import PROTOCOL_VERSION, TOKEN_ID_LEN, Command, Push, Service

log = logging.getLogger("attestgate.gateway")

# Replies that mean "could not answer now", not "no": before the handshake completes the
# client can only be given a cleartext "unavailable, retry" hint for them.
TRANSIENT = frozenset({ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.STORE_UNAVAILABLE,
                       ErrorCode.BUSY})


class Closed(Exception):
    """The connection ends here; ``reason`` goes to the log, ``hint`` (if any) to the peer
    in clear just before the close."""

    def __init__(self, reason: str, hint: hint.Hint | None = None, *,
                 admission: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.admission = admission  # turned away by admission control: counted, not logged


def _unavailable(reason: str) -> Closed:
    return Closed(reason, hint.unavailable(BUSY_RETRY_AFTER))


@dataclass(frozen=True)
class Deadline:
    """The connection's one handshake deadline (absolute, on ``clock``)."""

    at: float
    clock: Callable[[], float]

    def left(self) -> float:
        return self.at - self.clock()

    def budget(self, cap: float) -> float:
        """Time for one bus request: at most ``cap``, keeping REFUSAL_MARGIN to tell the
        peer the outcome (<= 0: no time left)."""
        return min(cap, self.left() - REFUSAL_MARGIN)


@dataclass(frozen=True)
class Message1:
    """A CONNECT message 1 the gateway has read (one DH): who claims to be calling, when."""

    noise: NoiseSession
    client_key: bytes
    ts: int


def read_connect_message1(pre: Preamble, static: StaticKey, message1: bytes) -> Message1:
    """Decrypt IKpsk2 message 1 (sans-IO); raises Closed for anything malformed."""
    noise = NoiseSession.responder(pre, static)
    try:
        payload = noise.read_handshake(message1)
    except AttestgateError as exc:
        raise Closed(f"bad message 1 ({exc.code})") from None
    if len(payload) != 8:
        raise Closed("bad timestamp")
    (ts,) = struct.unpack(">Q", payload)
    client_key = noise.remote_static
    assert client_key is not None  # IK message 1 always carries it
    return Message1(noise, client_key, ts)


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    name: str
    h: bytes


async def call(bus: BusClient, service: Service, op: str, body: dict[str, Any], *, rid: str,
               timeout: float, idempotent: bool = True) -> Reply:
    return await bus.request(service.value, op, body, request_id=rid, timeout=timeout,
                             idempotent=idempotent)


async def call_by(deadline: Deadline, cap: float, bus: BusClient, service: Service, op: str,
                  body: dict[str, Any], *, rid: str, idempotent: bool = True) -> Reply:
    """A bus request within the handshake deadline; no time left is SERVICE_UNAVAILABLE
    (the same as a service that does not answer in time)."""
    timeout = deadline.budget(cap)
    if timeout <= 0:
        return Reply.failure(rid, ErrorCode.SERVICE_UNAVAILABLE)
    return await call(bus, service, op, body, rid=rid, timeout=timeout, idempotent=idempotent)


async def enroll(peer: Peer, pre: Preamble, message1: bytes, static: StaticKey, bus: BusClient,
                 selection: str, rid: str, deadline: Deadline, timeout: float
                 ) -> tuple[bytes, str]:
    """Run an enrollment: XXpsk3 with the token's PSK, then evidence, challenge, answer.
    Returns the enrolled device's Noise static key and device id."""
    noise, token_id = await _enroll_handshake(peer, pre, message1, static, bus, selection, rid,
                                              deadline, timeout)
    noise_public = noise.remote_static
    assert noise_public is not None  # XX message 3 always carries it
    h = noise.handshake_hash

    msg = decode_request(await peer.recv())
    if msg.cmd is not Command.ENROLL:
        await peer.send(encode_error(msg.id, ErrorCode.PROTOCOL))
        raise Closed("expected enroll")
    body = {**msg.body, "h": h, "noise_public": noise_public, "token_id": token_id}
    for k in ("id", "cmd", "log_size", "log_z"):
        body.pop(k, None)
    # Protocol 3: the event log follows ENROLL in LOG chunks when ENROLL announced one.
    log_size = await _announced(peer, msg)
    if log_size:
        body["log_z"], _ = await _receive_log(peer, log_size, msg.id)
    reply = await call_by(deadline, timeout, bus, Service.ATTESTOR, "enroll_begin", body,
                          rid=rid + "-b", idempotent=False)
    if not reply.ok:
        assert reply.error is not None
        await peer.send(encode_error(msg.id, reply.error))
        raise Closed(f"enrollment refused code={reply.error}")
    await peer.send(encode_reply(msg.id, **reply.body))

    msg = decode_request(await peer.recv())
    if msg.cmd is not Command.ACTIVATE:
        await peer.send(encode_error(msg.id, ErrorCode.PROTOCOL))
        raise Closed("expected activate")
    reply = await call_by(deadline, timeout, bus, Service.ATTESTOR, "enroll_finish",
                          {"h": h, "challenge": msg.body.get("challenge"),
                           "mac": msg.body.get("mac")}, rid=rid + "-f", idempotent=False)
    if reply.ok:
        reply = await call_by(deadline, timeout, bus, Service.REGISTRY, "register",
                              {"h": h.hex(), "token_id": token_id or None},
                              rid=rid + "-r", idempotent=False)
    if not reply.ok:
        assert reply.error is not None
        await peer.send(encode_error(msg.id, reply.error))
        raise Closed(f"activation refused code={reply.error}")
    await peer.send(encode_reply(msg.id, device_id=reply.body["device_id"]))
    log.info("enrolled device=%s from=%s", reply.body["device_id"], peer.address)
    return noise_public, str(reply.body["device_id"])


async def _enroll_handshake(peer: Peer, pre: Preamble, message1: bytes, static: StaticKey,
                            bus: BusClient, selection: str, rid: str, deadline: Deadline,
                            timeout: float) -> tuple[NoiseSession, str]:
    """XXpsk3 under the token's PSK; a wrong secret is counted against the token."""
    noise = NoiseSession.responder(pre, static)
    peer.noise = noise
    token_raw = noise.read_handshake(message1)
    if len(token_raw) not in (0, TOKEN_ID_LEN):
        raise Closed("bad token id length")
    token_id = token_raw.hex()
    reply = await call_by(deadline, timeout, bus, Service.REGISTRY, "token_psk",
                          {"token_id": token_id}, rid=rid + "-t")
    if not reply.ok:
        if reply.error in TRANSIENT:
            raise _unavailable(f"token lookup failed code={reply.error}")
        raise Closed(f"token refused code={reply.error}")
    noise.set_psk(Psk(bytes(reply.body["psk"])))
    hello = pack({"version": PROTOCOL_VERSION, "selection": selection})
    await peer.write_frame(noise.write_handshake(hello))
    # Message 3 must come early enough to leave time for counting a wrong secret, so that
    # no guess escapes the count by arriving just before the deadline.
    try:
        async with asyncio.timeout(deadline.left() - TOKEN_FAILURE_RESERVE):
            message3 = await peer.read_frame()
    except TimeoutError:
        raise Closed("no message 3 in time") from None
    try:
        noise.read_handshake(message3)  # a wrong token PSK fails here
    except AttestgateError:
        if token_id:
            await _token_failed(bus, token_id, rid, deadline, timeout)
        raise Closed(f"enrollment message 3 rejected token={token_id or 'open'}") from None
    return noise, token_id


async def _token_failed(bus: BusClient, token_id: str, rid: str, deadline: Deadline,
                        timeout: float) -> None:
    """Tell the registry a handshake failed under this token's PSK (a wrong secret); it
    may use the time kept back for it (TOKEN_FAILURE_RESERVE) up to the deadline."""
    reply = await call(bus, Service.REGISTRY, "token_failed", {"token_id": token_id},
                       rid=rid + "-x", timeout=max(0.05, min(timeout, deadline.left() - 0.05)),
                       idempotent=False)
    if not reply.ok:
        log.warning("token failure not counted token=%s code=%s", token_id, reply.error)


@dataclass(frozen=True)
class Found:
    """The registry's answer for a message 1: the device and this session's PSK."""

    device_id: str
    psk: Psk


async def lookup(first: Message1, bus: BusClient, rid: str, deadline: Deadline,
                 timeout: float) -> Found:
    """Ask the registry who is behind message 1's static key (it also refuses replays).
    Closed (with an "unavailable" hint when the registry could not answer) otherwise."""
    noise = first.noise
    reply = await call_by(deadline, timeout, bus, Service.REGISTRY, "connect",
                          {"noise_public": first.client_key, "e_i": noise.remote_ephemeral,
                           "e_r": noise.local_ephemeral, "ts": first.ts}, rid=rid + "-c")
    if not reply.ok:
        if reply.error in TRANSIENT:
            raise _unavailable(f"connect lookup failed code={reply.error}")
        raise Closed(f"connect refused code={reply.error} key={first.client_key.hex()[:16]}")
    return Found(str(reply.body["device_id"]), Psk(bytes(reply.body["psk"])))


async def connect(peer: Peer, first: Message1, found: Found, bus: BusClient, rid: str,
                  deadline: Deadline, timeout: float, sessions: DeviceSessions,
                  known: KnownKeys) -> Identity:
    """IKpsk2 message 2 with the device's session PSK, then the quote bound to ``h``.

    On success one place in ``sessions`` is reserved for the device; the caller
    releases it when the session ends. Message 1's timestamp counts (priority lane here,
    replay guard in the attestor) only once the first transport message decrypted.
    """
    noise = first.noise
    peer.noise = noise
    device_id = found.device_id
    noise.set_psk(found.psk)
    await peer.write_frame(noise.write_handshake())
    h = noise.handshake_hash

    # Key confirmation: the first transport message decrypts only under the right PSK.
    try:
        msg = decode_request(await peer.recv())
    except AttestgateError as exc:
        raise Closed(f"first message rejected device={device_id} code={exc.code}") from None
    # From here on the device is authenticated: refusals carry a code.
    known.learn(first.client_key, first.ts, device_id)
    if not sessions.reserve(device_id):
        await peer.send(encode_push(Push.REFUSED, code=ErrorCode.RATE_LIMITED.value))
        raise Closed(f"session cap device={device_id} cap={sessions.cap}")
    try:
        return await _attest(peer, msg, bus, rid, deadline, timeout, device_id, h, first.ts)
    except BaseException:
        sessions.release(device_id)
        raise


async def _announced(peer: Peer, msg: ClientMessage) -> int:
    try:
        return logtransfer.announced_size(msg.body)
    except AttestgateError as exc:
        await peer.send(encode_error(msg.id, exc.code))
        raise Closed(f"event log announced too large ({exc.code})") from None


async def _receive_log(peer: Peer, size: int, answer_to: int | None = None
                       ) -> tuple[bytes, int]:
    # The Noise handshake is complete (and the device's key confirmed, on a reconnect): a
    # log of up to MAX_LOG_TRANSFER may come, which the 8 KiB pre-authentication window
    # would slow to seconds (measured: 200 KiB in 2.1 s, 9 ms with this window). Memory
    # stays bounded: one log per handshake slot (admission control bounds the slots).
    peer.set_receive_buffer(SESSION_RCVBUF)
    try:
        return await logtransfer.receive(peer, size, answer_to)
    except logtransfer.TransferFailed as exc:
        raise Closed(str(exc)) from None


async def _attest(peer: Peer, msg: ClientMessage, bus: BusClient, rid: str, deadline: Deadline,
                  timeout: float, device_id: str, h: bytes, ts: int) -> Identity:
    if msg.cmd is not Command.ATTEST:
        await peer.send(encode_push(Push.REFUSED, code=ErrorCode.PROTOCOL.value))
        raise Closed("expected attest")
    body = {"device_id": device_id, "h": h, "ts": ts, "attest": msg.body.get("attest"),
            "signature": msg.body.get("signature"), "pcrs": msg.body.get("pcrs")}
    log_size = await _announced(peer, msg)
    if log_size:
        body["log_size"] = log_size
    reply = await call_by(deadline, timeout, bus, Service.ATTESTOR, "attest", body,
                          rid=rid + "-a", idempotent=False)
    if reply.ok and reply.body.get("need_log") is True and log_size:
        # The quote matches no baseline: the attestor wants the log before it decides.
        # The decision answers the last LOG chunk.
        await peer.send(encode_reply(msg.id, need_log=True))
        body["log_z"], last_id = await _receive_log(peer, log_size)
        msg = ClientMessage(last_id, Command.LOG, {})
        reply = await call_by(deadline, timeout, bus, Service.ATTESTOR, "attest", body,
                              rid=rid + "-l", idempotent=False)
        if reply.ok and "need_log" in reply.body:
            reply = Reply.failure(reply.id, ErrorCode.INTERNAL)
    if not reply.ok:
        assert reply.error is not None
        await peer.send(encode_push(Push.REFUSED, code=reply.error.value, **reply.body))
        raise Closed(f"attestation refused device={device_id} code={reply.error}")
    name = str(reply.body.get("name", reply.body.get("device_id", "")))
    # The server's view (status, accepted baselines) goes to the client, which keeps it.
    view = {k: reply.body[k] for k in ("status", "baselines") if k in reply.body}
    await peer.send(encode_reply(msg.id, device_id=device_id, name=name, **view))
    return Identity(device_id, name, h)


__all__ = ["Closed", "Deadline", "Found", "Identity", "Message1", "Mode", "connect", "enroll",
           "lookup", "read_connect_message1"]
