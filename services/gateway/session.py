"""An attested device session: board commands, pushes, re-attestation, closing.

One task per session (the connection's own): it reads frames and starts a task per
request (at most ``max_inflight_per_session`` at once), so a slow service does not
stall pushes or other requests. Every request gets exactly one reply: the service's,
or an error code. Pushes are encrypted and written at once (encrypt + write without an
await between them keeps nonce order equal to wire order); a follower whose socket
backlog passes ``max_follow_backlog`` bytes is disconnected, not left behind. The
idle timeout and re-attestation are timers, not tasks: an idle session holds its
reader, its Noise state and two timer handles (measured in bench ``session_memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from services.gateway.handshake import Closed, Identity, call
from services.gateway.limits import GatewayLimits
from services.gateway.peer import Peer, PeerClosed
from shared.bus import codec
from shared.bus.interface import BusClient
from shared.errors import AttestgateError, ErrorCode
from shared.messages import ClientMessage, decode_request, encode_error, encode_push, encode_reply
from shared.wire import Command, Event, Push, Service

log = logging.getLogger("attestgate.gateway")

_CLOSING_WRITE_S = 1.0  # the CLOSING push gets this long to leave
_NEW_POST_FRAME = codec.event_prefix(Event.NEW_POST.value)


def unfollowed_posts(followers: set[Session]) -> Callable[[bytes], bool]:
    """For the bus's ``skip_event``: a new post's event frame while no session follows.

    Exact: a session joins ``followers`` before its FOLLOW reply is written, on the same
    loop that reads the events, so every post stored after a follower got that reply is
    published after it joined and decoded and pushed. A post whose event arrives while
    nobody follows reaches no one either way; it is just not decoded and queued first.
    """
    def skip(frame: bytes) -> bool:
        return not followers and frame.startswith(_NEW_POST_FRAME)
    return skip


class Session:
    __slots__ = ("_closed", "_followers", "_inflight", "_n", "_reattest_nonce",
                 "_reattest_timer", "_slot", "_task", "_tasks", "bus", "following", "ident",
                 "limits", "peer", "sid")

    def __init__(self, peer: Peer, ident: Identity, bus: BusClient, limits: GatewayLimits,
                 sid: str, followers: set[Session] | None = None) -> None:
        self.peer = peer
        self.ident = ident
        self.bus = bus
        self.limits = limits
        self.sid = sid
        self.following = False
        # The gateway's set of following sessions (a new post goes to these, not to all).
        self._followers: set[Session] = followers if followers is not None else set()
        self._inflight = 0
        self._slot: asyncio.Future[None] | None = None  # the reader waits here at the cap
        self._tasks: set[asyncio.Task[None]] | None = None  # made at the first request
        self._closed: tuple[ErrorCode, str] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._reattest_nonce: bytes | None = None
        self._reattest_timer: asyncio.TimerHandle | None = None
        self._n = 0

    # -- called by the gateway ------------------------------------------------------
    def push(self, message: bytes) -> None:
        """Send a push now; a follower that cannot keep up is disconnected, not left behind."""
        if self._closed is not None:
            return
        try:
            self.peer.send_nowait(message)
        except (PeerClosed, AttestgateError):
            self.close(ErrorCode.PROTOCOL, "peer closed")
            return
        if self.peer.backlog > self.limits.max_follow_backlog:
            self.close(ErrorCode.BUSY, "follow queue full")

    def close(self, code: ErrorCode, reason: str) -> None:
        """End the session (first call wins): the reading task stops, the peer is told."""
        if self._closed is not None:
            return
        self._closed = (code, reason)
        self._followers.discard(self)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> str:
        """Serve until closed (by the peer, a limit, the gateway); returns the reason."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        loop = asyncio.get_running_loop()
        if self.limits.reattest_interval > 0:
            self._reattest_timer = loop.call_later(self.limits.reattest_interval,
                                                   self._reattest_due)
        idle = self.limits.idle_timeout
        try:
            # The read loop lives here, not in a coroutine of its own: every frame of the
            # chain below the connection's task is memory an idle session holds.
            async with asyncio.timeout(idle) as timer:
                while self._closed is None:
                    raw = await self.peer.recv()
                    timer.reschedule(loop.time() + idle)
                    await self._start(raw, loop)
        except TimeoutError:
            self.close(ErrorCode.PROTOCOL, "idle timeout")
        except PeerClosed:
            self.close(ErrorCode.PROTOCOL, "peer closed")
        except AttestgateError as exc:
            self.close(exc.code, f"channel error {exc.code}")
        except asyncio.CancelledError:
            if self._closed is None:
                raise  # cancelled from outside, not by close()
            task.uncancel()
        finally:
            self._task = None
            if self._reattest_timer is not None:
                self._reattest_timer.cancel()
            if self._tasks:
                for t in self._tasks:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._closed is not None
        code, reason = self._closed
        if reason != "peer closed":
            with contextlib.suppress(PeerClosed, AttestgateError, OSError, TimeoutError):
                async with asyncio.timeout(_CLOSING_WRITE_S):
                    await self.peer.send(encode_push(Push.CLOSING, code=code.value))
        return reason

    async def _start(self, raw: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Decode one request and start its task (waiting while the session is at its cap)."""
        try:
            msg = decode_request(raw)
        except AttestgateError as exc:
            # Authenticated peer: tell it the code; request id is unknown.
            await self.peer.send(encode_error(0, exc.code))
            return
        while self._inflight >= self.limits.max_inflight_per_session:
            self._slot = loop.create_future()
            await self._slot
        self._inflight += 1
        if self._tasks is None:
            self._tasks = set()
        task = loop.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reattest_due(self) -> None:
        self._reattest_nonce = os.urandom(32)
        self.push(encode_push(Push.REATTEST, nonce=self._reattest_nonce))
        self._reattest_timer = asyncio.get_running_loop().call_later(
            self.limits.reattest_grace, self._reattest_check)

    def _reattest_check(self) -> None:
        if self._reattest_nonce is not None:
            self.close(ErrorCode.QUOTE_INVALID, "re-attestation not answered")
            return
        self._reattest_timer = asyncio.get_running_loop().call_later(
            self.limits.reattest_interval, self._reattest_due)

    async def _serve(self, msg: ClientMessage) -> None:
        try:
            await self.peer.send(await self._answer(msg))
        except (PeerClosed, AttestgateError):
            self.close(ErrorCode.PROTOCOL, "peer closed")
        except Closed as exc:
            self.close(ErrorCode.QUOTE_INVALID, exc.reason)
        finally:
            self._inflight -= 1
            slot, self._slot = self._slot, None
            if slot is not None and not slot.done():
                slot.set_result(None)

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
            self.following = msg.cmd is Command.FOLLOW and self._closed is None
            if self.following:
                self._followers.add(self)
            else:
                self._followers.discard(self)
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
