"""The gateway: accepts TCP connections, runs the handshakes, keeps the live sessions,
and fans bus events out to them (new posts to followers; revocations close sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict

from services.gateway import handshake
from services.gateway.limits import GatewayLimits
from services.gateway.peer import Peer, PeerClosed
from services.gateway.session import Session
from shared.bus.interface import BusClient, BusEvent
from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, parse_preamble
from shared.keys import StaticKey
from shared.messages import encode_push
from shared.wire import Event, Push

log = logging.getLogger("attestgate.gateway")


class Gateway:
    def __init__(self, bus: BusClient, static: StaticKey, selection: str,
                 limits: GatewayLimits | None = None) -> None:
        self.bus = bus
        self.static = static
        self.selection = selection
        self.limits = limits or GatewayLimits()
        self.sessions: dict[str, set[Session]] = defaultdict(set)
        self._handshakes = asyncio.Semaphore(self.limits.max_concurrent_handshakes)
        self._per_address: dict[str, int] = defaultdict(int)
        self._server: asyncio.Server | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = defaultdict(int)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._on_connection, host, port,
                                                  limit=2 * 65537, backlog=512)
        self._events_task = asyncio.create_task(self._run_events())
        sock = self._server.sockets[0]
        bound = int(sock.getsockname()[1])
        log.info("listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for sessions in list(self.sessions.values()):
            for s in list(sessions):
                s.close(ErrorCode.SERVICE_UNAVAILABLE, "gateway stopping")
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
        if self._conns:
            await asyncio.wait(self._conns, timeout=2.0)
        for t in self._conns:
            t.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    @property
    def session_count(self) -> int:
        return sum(len(v) for v in self.sessions.values())

    # -- events ------------------------------------------------------------------------
    async def _run_events(self) -> None:
        async for event in self.bus.events():
            try:
                self.deliver(event)
            except (KeyError, TypeError, ValueError):
                log.warning("malformed event topic=%s", event.topic)

    def deliver(self, event: BusEvent) -> None:
        if event.topic == Event.NEW_POST.value:
            message = encode_push(Push.POST, **event.body)
            for sessions in self.sessions.values():
                for s in sessions:
                    if s.following:
                        s.push(message)
        elif event.topic in (Event.DEVICE_REVOKED.value, Event.DEVICE_LOCKED.value):
            device_id = str(event.body["device_id"])
            code = ErrorCode.REVOKED if event.topic == Event.DEVICE_REVOKED.value else (
                ErrorCode.LOCKED)
            for s in list(self.sessions.get(device_id, ())):
                s.close(code, f"device {event.topic}")

    # -- connections -----------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peer = Peer(reader, writer)
        sid = os.urandom(6).hex()
        try:
            await self._serve(peer, sid)
        finally:
            await peer.close()
            self._conns.discard(task)

    async def _serve(self, peer: Peer, sid: str) -> None:
        addr = peer.address
        if self._per_address[addr] >= self.limits.max_handshakes_per_address or (
            self.session_count >= self.limits.max_sessions
        ):
            self.counters["refused_limit"] += 1
            log.info("refused connection from=%s reason=limit", addr)
            return
        self._per_address[addr] += 1
        ident: handshake.Identity | None = None
        try:
            async with self._handshakes:
                ident = await asyncio.wait_for(self._handshake(peer, sid),
                                               self.limits.handshake_timeout)
        except TimeoutError:
            self.counters["handshake_timeout"] += 1
            log.info("closed sid=%s from=%s reason=handshake timeout", sid, addr)
        except handshake.Closed as exc:
            self.counters["handshake_refused"] += 1
            log.info("closed sid=%s from=%s reason=%s", sid, addr, exc.reason)
        except PeerClosed:
            log.debug("closed sid=%s from=%s reason=peer closed during handshake", sid, addr)
        except AttestgateError as exc:
            self.counters["handshake_failed"] += 1
            log.info("closed sid=%s from=%s reason=%s detail=%s", sid, addr, exc.code, exc.detail)
        finally:
            self._per_address[addr] -= 1
            if not self._per_address[addr]:
                del self._per_address[addr]
        if ident is not None:
            await self._run_session(peer, ident, sid)

    async def _handshake(self, peer: Peer, sid: str) -> handshake.Identity | None:
        pre = parse_preamble(await peer.read_preamble())
        timeout = self.limits.request_timeout
        if pre.mode is Mode.ENROLL:
            await handshake.enroll(peer, pre, self.static, self.bus, self.selection, sid, timeout)
            return None
        return await handshake.connect(peer, pre, self.static, self.bus, sid, timeout)

    async def _run_session(self, peer: Peer, ident: handshake.Identity, sid: str) -> None:
        session = Session(peer, ident, self.bus, self.limits, sid)
        self.sessions[ident.device_id].add(session)
        self.counters["sessions"] += 1
        log.info("session open sid=%s device=%s name=%s", sid, ident.device_id, ident.name)
        try:
            reason = await session.run()
        finally:
            self.sessions[ident.device_id].discard(session)
            if not self.sessions[ident.device_id]:
                del self.sessions[ident.device_id]
        log.info("session closed sid=%s device=%s reason=%s", sid, ident.device_id, reason)
