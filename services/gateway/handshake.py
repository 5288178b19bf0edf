"""The two pre-session phases of a connection: enrollment, and reconnect up to the accepted quote.

Before the Noise handshake completes, every failure just closes the connection
(an unauthenticated peer learns nothing). After it, the peer is told a code.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any

from services.gateway.peer import Peer
from shared.bus.interface import BusClient, Reply
from shared.codec import pack
from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, Preamble
from shared.keys import Psk, StaticKey
from shared.messages import decode_request, encode_error, encode_push, encode_reply
from shared.noise_session import NoiseSession
from shared.wire import PROTOCOL_VERSION, TOKEN_ID_LEN, Command, Push, Service

log = logging.getLogger("attestgate.gateway")


class Closed(Exception):
    """The connection ends here; ``reason`` goes to the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    device_id: str
    name: str
    h: bytes


async def call(bus: BusClient, service: Service, op: str, body: dict[str, Any], *, rid: str,
               timeout: float, idempotent: bool = True) -> Reply:
    return await bus.request(service.value, op, body, request_id=rid, timeout=timeout,
                             idempotent=idempotent)


async def enroll(peer: Peer, pre: Preamble, static: StaticKey, bus: BusClient, selection: str,
                 rid: str, timeout: float) -> None:
    """Run an enrollment: XXpsk3 with the token's PSK, then evidence, challenge, answer."""
    noise = NoiseSession.responder(pre, static)
    peer.noise = noise
    token_raw = noise.read_handshake(await peer.read_frame())
    if len(token_raw) not in (0, TOKEN_ID_LEN):
        raise Closed("bad token id length")
    token_id = token_raw.hex()
    reply = await call(bus, Service.REGISTRY, "token_psk", {"token_id": token_id},
                       rid=rid + "-t", timeout=timeout)
    if not reply.ok:
        raise Closed(f"token refused code={reply.error}")
    noise.set_psk(Psk(bytes(reply.body["psk"])))
    hello = pack({"version": PROTOCOL_VERSION, "selection": selection})
    await peer.write_frame(noise.write_handshake(hello))
    noise.read_handshake(await peer.read_frame())  # a wrong token PSK fails here
    noise_public = noise.remote_static
    assert noise_public is not None  # XX message 3 always carries it
    h = noise.handshake_hash

    msg = decode_request(await peer.recv())
    if msg.cmd is not Command.ENROLL:
        await peer.send(encode_error(msg.id, ErrorCode.PROTOCOL))
        raise Closed("expected enroll")
    body = {**msg.body, "h": h, "noise_public": noise_public, "token_id": token_id}
    for k in ("id", "cmd"):
        body.pop(k, None)
    reply = await call(bus, Service.ATTESTOR, "enroll_begin", body, rid=rid + "-b",
                       timeout=timeout, idempotent=False)
    if not reply.ok:
        assert reply.error is not None
        await peer.send(encode_error(msg.id, reply.error))
        raise Closed(f"enrollment refused code={reply.error}")
    await peer.send(encode_reply(msg.id, **reply.body))

    msg = decode_request(await peer.recv())
    if msg.cmd is not Command.ACTIVATE:
        await peer.send(encode_error(msg.id, ErrorCode.PROTOCOL))
        raise Closed("expected activate")
    reply = await call(bus, Service.ATTESTOR, "enroll_finish",
                       {"h": h, "challenge": msg.body.get("challenge"), "mac": msg.body.get("mac")},
                       rid=rid + "-f", timeout=timeout, idempotent=False)
    if reply.ok:
        reply = await call(bus, Service.REGISTRY, "register",
                           {"h": h.hex(), "token_id": token_id or None},
                           rid=rid + "-r", timeout=timeout, idempotent=False)
    if not reply.ok:
        assert reply.error is not None
        await peer.send(encode_error(msg.id, reply.error))
        raise Closed(f"activation refused code={reply.error}")
    await peer.send(encode_reply(msg.id, device_id=reply.body["device_id"]))
    log.info("enrolled device=%s from=%s", reply.body["device_id"], peer.address)


async def connect(peer: Peer, pre: Preamble, static: StaticKey, bus: BusClient, rid: str,
                  timeout: float) -> Identity:
    """IKpsk2 with the device's session PSK, then the quote bound to ``h``."""
    noise = NoiseSession.responder(pre, static)
    peer.noise = noise
    payload = noise.read_handshake(await peer.read_frame())
    if len(payload) != 8:
        raise Closed("bad timestamp")
    (ts,) = struct.unpack(">Q", payload)
    client_key = noise.remote_static
    assert client_key is not None  # IK message 1 always carries it
    reply = await call(bus, Service.REGISTRY, "connect",
                       {"noise_public": client_key, "e_i": noise.remote_ephemeral,
                        "e_r": noise.local_ephemeral, "ts": ts},
                       rid=rid + "-c", timeout=timeout)
    if not reply.ok:
        raise Closed(f"connect refused code={reply.error} key={client_key.hex()[:16]}")
    device_id = str(reply.body["device_id"])
    noise.set_psk(Psk(bytes(reply.body["psk"])))
    await peer.write_frame(noise.write_handshake())
    h = noise.handshake_hash

    # Key confirmation: the first transport message decrypts only under the right PSK.
    try:
        msg = decode_request(await peer.recv())
    except AttestgateError as exc:
        raise Closed(f"first message rejected device={device_id} code={exc.code}") from None
    if msg.cmd is not Command.ATTEST:
        await peer.send(encode_push(Push.REFUSED, code=ErrorCode.PROTOCOL.value))
        raise Closed("expected attest")
    reply = await call(bus, Service.ATTESTOR, "attest",
                       {"device_id": device_id, "h": h, "attest": msg.body.get("attest"),
                        "signature": msg.body.get("signature"), "pcrs": msg.body.get("pcrs")},
                       rid=rid + "-a", timeout=timeout, idempotent=False)
    if not reply.ok:
        assert reply.error is not None
        await peer.send(encode_push(Push.REFUSED, code=reply.error.value, **reply.body))
        raise Closed(f"attestation refused device={device_id} code={reply.error}")
    name = str(reply.body.get("name", reply.body.get("device_id", "")))
    await peer.send(encode_reply(msg.id, device_id=device_id, name=name))
    return Identity(device_id, name, h)


__all__ = ["Closed", "Identity", "Mode", "connect", "enroll"]
