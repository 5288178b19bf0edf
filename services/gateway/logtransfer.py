"""Receiving a measured-boot event log in LOG chunks (protocol 3), within the handshake.

The client announces the size first (``log_size`` in ENROLL or ATTEST), then sends
``{cmd: log, offset, data}`` messages in order, each at most LOG_CHUNK bytes, the whole at
most MAX_LOG_TRANSFER. Anything else (a gap, an overlap, more than announced, another
command in between) is a PROTOCOL error and the connection closes. The assembled log goes
to the attestor compressed (``transport.compress``), so one bus message carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from services.gateway.peer import Peer
from shared.codec import Fields
from shared.errors import AttestgateError, ErrorCode
from shared.eventlog.transport import compress
from shared.messages import decode_request, encode_error
from shared.wire import LOG_CHUNK, MAX_LOG_TRANSFER, Command


class TransferFailed(Exception):
    """The log transfer broke the rules; the peer was told the code. The caller closes."""


def announced_size(body: Mapping[str, Any]) -> int:
    """The ``log_size`` a request announces (0: no log); PROTOCOL beyond the cap."""
    try:
        return Fields(body).integer("log_size", 0, MAX_LOG_TRANSFER, default=0)
    except AttestgateError:
        raise AttestgateError(ErrorCode.TOO_LARGE, "log_size") from None


async def receive(peer: Peer, total: int, answer_to: int | None = None) -> tuple[bytes, int]:
    """Read LOG chunks until ``total`` bytes arrived; returns (compressed log, id of the last
    chunk). Raises TransferFailed after telling the peer PROTOCOL / TOO_LARGE, as the answer
    to request ``answer_to`` (the one the client waits on), else to the offending chunk."""
    buf = bytearray()
    last_id = 0
    while len(buf) < total:
        msg = decode_request(await peer.recv())
        last_id = msg.id if answer_to is None else answer_to
        try:
            if msg.cmd is not Command.LOG:
                raise AttestgateError(ErrorCode.PROTOCOL, f"expected log, got {msg.cmd}")
            f = Fields(msg.body)
            offset = f.integer("offset", 0, MAX_LOG_TRANSFER)
            data = f.blob("data", LOG_CHUNK, min_len=1)
            if offset != len(buf) or offset + len(data) > total:
                raise AttestgateError(ErrorCode.PROTOCOL, f"log chunk at {offset}")
        except AttestgateError as exc:
            await peer.send(encode_error(last_id, exc.code))
            raise TransferFailed(f"bad event log transfer ({exc.code}: {exc.detail})") from None
        buf += data
    try:
        blob = await asyncio.to_thread(compress, bytes(buf))
    except AttestgateError as exc:
        await peer.send(encode_error(last_id, exc.code))
        raise TransferFailed(f"event log refused ({exc.code})") from None
    return blob, last_id
