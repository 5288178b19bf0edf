"""An attested device session: board commands, pushes, re-attestation, closing.

Requests run as tasks (at most ``max_inflight_per_session`` at once), so a slow
service does not stall pushes or other requests. Every request gets exactly one
reply: the service's, or an error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from services.gateway.handshake import Closed, Identity, call
from services.gateway.limits import GatewayLimits
from services.gateway.peer import Peer, PeerClosed
from shared.bus.interface import BusClient
from shared.errors import AttestgateError, ErrorCode
from shared.messages import ClientMessage, decode_request, encode_error, encode_push, encode_reply
from shared.wire import Command, Push, Service

log = logging.getLogger("attestgate.gateway")


class Session:
    def __init__(self, peer: Peer, ident: Identity, bus: BusClient, limits: GatewayLimits,
                 sid: str) -> None:
        self.peer = peer
        self.ident = ident
        self.bus = bus
        self.limits = limits
        self.sid = sid
        self.following = False
        self._pushes: asyncio.Queue[bytes] = asyncio.Queue(limits.max_follow_queue)
        self._inflight = asyncio.Semaphore(limits.max_inflight_per_session)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[tuple[ErrorCode, str]] = (
            asyncio.get_running_loop().create_future())
        self._reattest_nonce: bytes | None = None
        self._n = 0

    # -- called by the gateway ------------------------------------------------------
    def push(self, message: bytes) -> None:
        """Queue a push; a follower that cannot keep up is disconnected, not left behind."""
        try:
            self._pushes.put_nowait(message)
        except asyncio.QueueFull:
            self.close(ErrorCode.BUSY, "follow queue full")

    def close(self, code: ErrorCode, reason: str) -> None:
        if not self._closing.done():
            self._closing.set_result((code, reason))

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> str:
        reader = asyncio.create_task(self._read_loop())
        writer = asyncio.create_task(self._push_loop())
        reattest = asyncio.create_task(self._reattest_loop())
        try:
            code, reason = await self._closing
        finally:
            for t in (reader, writer, reattest, *self._tasks):
                t.cancel()
            await asyncio.gather(reader, writer, reattest, *self._tasks,
                                 return_exceptions=True)
        if code is not None and reason != "peer closed":
            with contextlib.suppress(PeerClosed, AttestgateError, OSError):
                await asyncio.wait_for(
                    self.peer.send(encode_push(Push.CLOSING, code=code.value)), 1.0)
        return reason

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await asyncio.wait_for(self.peer.recv(), self.limits.idle_timeout)
                try:
                    msg = decode_request(raw)
                except AttestgateError as exc:
                    # Authenticated peer: tell it the code; request id is unknown.
                    await self.peer.send(encode_error(0, exc.code))
                    continue
                await self._inflight.acquire()
                task = asyncio.create_task(self._serve(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except TimeoutError:
            self.close(ErrorCode.PROTOCOL, "idle timeout")
        except PeerClosed:
            self.close(ErrorCode.PROTOCOL, "peer closed")
        except AttestgateError as exc:
            self.close(exc.code, f"channel error {exc.code}")

    async def _push_loop(self) -> None:
        try:
            while True:
                await self.peer.send(await self._pushes.get())
        except (PeerClosed, AttestgateError):
            self.close(ErrorCode.PROTOCOL, "peer closed")

    async def _reattest_loop(self) -> None:
        interval = self.limits.reattest_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            self._reattest_nonce = os.urandom(32)
            self.push(encode_push(Push.REATTEST, nonce=self._reattest_nonce))
            await asyncio.sleep(self.limits.reattest_grace)
            if self._reattest_nonce is not None:
                self.close(ErrorCode.QUOTE_INVALID, "re-attestation not answered")
                return

    async def _serve(self, msg: ClientMessage) -> None:
        try:
            await self.peer.send(await self._answer(msg))
        except (PeerClosed, AttestgateError):
            self.close(ErrorCode.PROTOCOL, "peer closed")
        except Closed as exc:
            self.close(ErrorCode.QUOTE_INVALID, exc.reason)
        finally:
            self._inflight.release()

    def _rid(self) -> str:
        self._n += 1
        return f"{self.sid}-{self._n}"

    async def _answer(self, msg: ClientMessage) -> bytes:
        ident = self.ident
        timeout = self.limits.request_timeout
        body: dict[str, Any]
        if msg.cmd is Command.POST:
            body = {"device_id": ident.device_id, "ts": msg.body.get("ts"),
                    "text": msg.body.get("text"), "key": msg.body.get("key"),
                    "signature": msg.body.get("signature")}
            # Idempotent: the board dedupes on the client's key, so a retry elsewhere is safe.
            reply = await call(self.bus, Service.BOARD, "post", body, rid=self._rid(),
                               timeout=timeout)
        elif msg.cmd is Command.READ:
            body = {"since": msg.body.get("since"), "limit": msg.body.get("limit")}
            reply = await call(self.bus, Service.BOARD, "read", body, rid=self._rid(),
                               timeout=timeout)
        elif msg.cmd is Command.STATUS:
            reply = await call(self.bus, Service.REGISTRY, "status",
                               {"device_id": ident.device_id}, rid=self._rid(), timeout=timeout)
        elif msg.cmd is Command.SECRET_GET:
            reply = await call(self.bus, Service.REGISTRY, "secret_get",
                               {"device_id": ident.device_id, "name": msg.body.get("name"),
                                "offset": msg.body.get("offset")},
                               rid=self._rid(), timeout=timeout, idempotent=False)
        elif msg.cmd in (Command.FOLLOW, Command.UNFOLLOW):
            self.following = msg.cmd is Command.FOLLOW
            return encode_reply(msg.id, following=self.following)
        elif msg.cmd is Command.PING:
            return encode_reply(msg.id)
        elif msg.cmd is Command.REATTEST:
            nonce, self._reattest_nonce = self._reattest_nonce, None
            if nonce is None:
                return encode_error(msg.id, ErrorCode.PROTOCOL)
            reply = await call(self.bus, Service.ATTESTOR, "attest",
                               {"device_id": ident.device_id, "h": ident.h, "nonce": nonce,
                                "attest": msg.body.get("attest"),
                                "signature": msg.body.get("signature"),
                                "pcrs": msg.body.get("pcrs")},
                               rid=self._rid(), timeout=timeout, idempotent=False)
            if not reply.ok:
                assert reply.error is not None
                await self.peer.send(encode_push(Push.REFUSED, code=reply.error.value,
                                                 **reply.body))
                raise Closed(f"re-attestation refused code={reply.error}")
        else:
            return encode_error(msg.id, ErrorCode.UNKNOWN_COMMAND)
        if not reply.ok:
            assert reply.error is not None
            return encode_error(msg.id, reply.error)
        return encode_reply(msg.id, **reply.body)
