"""The gateway: accepts TCP connections, runs the handshakes, keeps the live sessions,
and fans bus events out to them (new posts to followers; revocations close sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import defaultdict

from services.gateway import handshake
from services.gateway.admission import (
    Admission,
    AdmissionLimits,
    DeviceSessions,
    KnownKeys,
    Lane,
    Ticket,
    Verdict,
)
from services.gateway.limits import (
    LISTEN_BACKLOG,
    MAX_COLD_LOOKUPS,
    PREAUTH_RCVBUF,
    READER_LIMIT,
    SESSION_RCVBUF,
    GatewayLimits,
)
from services.gateway.peer import Peer, PeerClosed
from services.gateway.session import Session
from shared import hint
from shared.bus.interface import BusClient, BusEvent
from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, Preamble, parse_preamble
from shared.keys import StaticKey
from shared.messages import encode_push
from shared.timing import BUSY_RETRY_AFTER
from shared.wire import Event, Push

log = logging.getLogger("attestgate.gateway")

_HINT_WRITE_S = 0.5  # a cleartext hint gets this long to leave before the close
ADMISSION_REPORT_INTERVAL = 10.0  # seconds between admission summaries in the log
_ADMISSION_COUNTERS = ("opening_timeout", "opening_evicted", "rate_limited", "queue_full",
                       "slot_wait_timeout", "refused_sessions")


class Gateway:
    def __init__(self, bus: BusClient, static: StaticKey, selection: str,
                 limits: GatewayLimits | None = None,
                 admission: AdmissionLimits | None = None) -> None:
        self.bus = bus
        self.static = static
        self.selection = selection
        self.limits = limits or GatewayLimits()
        self.sessions: dict[str, set[Session]] = defaultdict(set)
        self._session_count = 0  # sum of len(self.sessions[d]): asked on every connection
        self.followers: set[Session] = set()  # sessions that sent FOLLOW (and not UNFOLLOW)
        self.admission = Admission(admission)
        self.known = KnownKeys()
        self.device_sessions = DeviceSessions(self.limits.max_sessions_per_device)
        self._openings: dict[int, Peer] = {}
        self._waiters: dict[Ticket, asyncio.Future[None]] = {}
        self._conn_ids = itertools.count()
        self._cold_lookups = 0
        self._priority: dict[bytes, int] = {}  # static key -> its handshakes in PRIORITY
        self._server: asyncio.Server | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = defaultdict(int)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._on_connection, host, port,
                                                  limit=READER_LIMIT, backlog=LISTEN_BACKLOG)
        self._events_task = asyncio.create_task(self._run_events())
        self._report_task = asyncio.create_task(self._report_admission())
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
        for task in (self._events_task, self._report_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conns:
            await asyncio.wait(self._conns, timeout=2.0)
        for t in self._conns:
            t.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def session_count(self) -> int:
        return self._session_count

    # -- events ------------------------------------------------------------------------
    async def _run_events(self) -> None:
        async for event in self.bus.events():
            try:
                self.deliver(event)
            except (KeyError, TypeError, ValueError):
                log.warning("malformed event topic=%s", event.topic)

    def deliver(self, event: BusEvent) -> None:
        if event.topic == Event.NEW_POST.value:
            if self.followers:
                message = encode_push(Push.POST, **event.body)
                for s in tuple(self.followers):  # a push may close (and so unlist) a session
                    s.push(message)
        elif event.topic in (Event.DEVICE_REVOKED.value, Event.DEVICE_LOCKED.value):
            device_id = str(event.body["device_id"])
            code = ErrorCode.REVOKED if event.topic == Event.DEVICE_REVOKED.value else (
                ErrorCode.LOCKED)
            self.known.forget_device(device_id)
            for s in list(self.sessions.get(device_id, ())):
                s.close(code, f"device {event.topic}")

    async def _report_admission(self) -> None:
        """One log line per interval summing up what admission control turned away."""
        last: dict[str, int] = {}
        while True:
            await asyncio.sleep(ADMISSION_REPORT_INTERVAL)
            now = {k: self.counters[k] for k in _ADMISSION_COUNTERS}
            delta = {k: v - last.get(k, 0) for k, v in now.items() if v != last.get(k, 0)}
            last = now
            if delta:
                used, anonymous = self.admission.in_use
                log.warning("admission last %.0fs: %s; slots in use %d (anonymous %d), "
                            "waiting %d+%d, openings %d", ADMISSION_REPORT_INTERVAL,
                            " ".join(f"{k}={v}" for k, v in sorted(delta.items())), used,
                            anonymous, self.admission.waiting(Lane.PRIORITY),
                            self.admission.waiting(Lane.ANONYMOUS), self.admission.openings)

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
        loop = asyncio.get_running_loop()
        deadline = handshake.Deadline(loop.time() + self.limits.handshake_timeout, loop.time)
        if self.session_count >= self.limits.max_sessions:
            self.counters["refused_sessions"] += 1
            log.info("refused connection from=%s reason=session limit", addr)
            await peer.send_clear(hint.busy(BUSY_RETRY_AFTER).frame(), _HINT_WRITE_S)
            return
        ident: handshake.Identity | None = None
        try:
            ident = await self._handshake(peer, sid, deadline)
        except TimeoutError:
            self.counters["handshake_timeout"] += 1
            log.info("closed sid=%s from=%s reason=handshake timeout", sid, addr)
        except handshake.Closed as exc:
            self.counters["handshake_refused"] += 1
            # A flood must not write a log line per socket: admission refusals are counted
            # and summed up every ADMISSION_REPORT_INTERVAL (_report_admission).
            log.log(logging.DEBUG if exc.admission else logging.INFO,
                    "closed sid=%s from=%s reason=%s", sid, addr, exc.reason)
            # A cleartext hint only while there is no channel to say it in.
            if exc.hint is not None and (peer.noise is None or not peer.noise.established):
                await peer.send_clear(exc.hint.frame(), _HINT_WRITE_S)
        except PeerClosed:
            log.debug("closed sid=%s from=%s reason=peer closed during handshake", sid, addr)
        except AttestgateError as exc:
            self.counters["handshake_failed"] += 1
            log.info("closed sid=%s from=%s reason=%s detail=%s", sid, addr, exc.code, exc.detail)
            if exc.code is ErrorCode.VERSION:
                await peer.send_clear(hint.version().frame(), _HINT_WRITE_S)
        if ident is not None:
            peer.set_receive_buffer(SESSION_RCVBUF)
            try:
                # Run here, not in a coroutine of its own (memory per idle session).
                session = self._open_session(peer, ident, sid)
                reason = "gateway error"
                try:
                    reason = await session.run()
                finally:
                    self._closed_session(session, reason)
            finally:
                self.device_sessions.release(ident.device_id)

    async def _handshake(self, peer: Peer, sid: str,
                         deadline: handshake.Deadline) -> handshake.Identity | None:
        pre, message1 = await self._opening(peer, deadline)
        addr = peer.address
        now = deadline.clock()
        first: handshake.Message1 | None = None
        found: handshake.Found | None = None
        lane = Lane.ANONYMOUS
        if pre.mode is Mode.CONNECT:
            try:
                first = handshake.read_connect_message1(pre, self.static, message1)
            except handshake.Closed:
                self.admission.charge(addr, now)  # failed DH work counts as anonymous work
                raise
            lane = self.known.lane(first.client_key, first.ts)
            if lane is Lane.ANONYMOUS:
                found = await self._cold_lookup(first, addr, sid, deadline)
                lane = Lane.PRIORITY
        held = first.client_key if first is not None and lane is Lane.PRIORITY else None
        if held is not None and self._priority.get(held, 0) >= self.limits.max_priority_per_key:
            # Message 1 proves only the Noise key: whoever stole one (without the TPM) could
            # otherwise fill the PRIORITY lane with handshakes it never finishes. Beyond a
            # few at once, that key's handshakes compete as anonymous ones (per-address
            # token bucket, their share of the slots); other devices keep their lane.
            self.counters["priority_demoted"] += 1
            lane, held = Lane.ANONYMOUS, None
        if held is not None:
            self._priority[held] = self._priority.get(held, 0) + 1
        try:
            ticket = await self._slot(lane, addr, deadline)
            self.counters[f"admitted_{lane.name.lower()}"] += 1
            try:
                # A timeout scope, not wait_for: no extra task per handshake.
                async with asyncio.timeout(deadline.left()):
                    return await self._run_handshake(peer, pre, message1, first, found,
                                                     sid, deadline)
            finally:
                self._release(ticket)
        finally:
            if held is not None:
                left = self._priority.pop(held) - 1
                if left:
                    self._priority[held] = left

    async def _cold_lookup(self, first: handshake.Message1, addr: str, sid: str,
                           deadline: handshake.Deadline) -> handshake.Found:
        """A key the gateway has not seen accepted (say, after a restart): the registry's
        word is the evidence. Bounded in concurrency and charged to the source address, so
        random keys cost little; a key the registry knows then goes to the PRIORITY lane
        and does not compete with enrollments, silent or slow sockets."""
        if not self.admission.charge(addr, deadline.clock()):
            self.counters["rate_limited"] += 1
            raise handshake.Closed("rate limited (cold key)",
                                   hint.busy(1.0 / self.admission.limits.rate), admission=True)
        if self._cold_lookups >= MAX_COLD_LOOKUPS:
            self.counters["queue_full"] += 1
            raise handshake.Closed("too many cold lookups", hint.busy(BUSY_RETRY_AFTER),
                                   admission=True)
        self._cold_lookups += 1
        try:
            return await handshake.lookup(first, self.bus, sid, deadline,
                                          self.limits.handshake_request_timeout)
        finally:
            self._cold_lookups -= 1

    async def _opening(self, peer: Peer, deadline: handshake.Deadline) -> tuple[Preamble, bytes]:
        """Preamble and message 1, within MESSAGE1_TIMEOUT in total, holding no slot."""
        conn = next(self._conn_ids)
        peer.set_receive_buffer(PREAUTH_RCVBUF)
        for victim in self.admission.open(conn, peer.address):
            evicted = self._openings.pop(victim, None)
            if evicted is not None:
                self.counters["opening_evicted"] += 1
                evicted.abort()
        self._openings[conn] = peer
        try:
            async with asyncio.timeout(min(self.limits.message1_timeout, deadline.left())):
                pre = parse_preamble(await peer.read_preamble())
                self.counters[f"mode_{pre.mode.name.lower()}"] += 1
                return pre, await peer.read_message1()
        except TimeoutError:
            self.counters["opening_timeout"] += 1
            raise handshake.Closed("no message 1 in time", admission=True) from None
        finally:
            self.admission.opened(conn, peer.address)
            self._openings.pop(conn, None)

    async def _slot(self, lane: Lane, addr: str, deadline: handshake.Deadline) -> Ticket:
        verdict, ticket = self.admission.admit(lane, addr, deadline.clock())
        if verdict is Verdict.RATE_LIMITED:
            self.counters["rate_limited"] += 1
            raise handshake.Closed("rate limited", hint.busy(1.0 / self.admission.limits.rate),
                                   admission=True)
        if verdict is Verdict.BUSY or ticket is None:
            self.counters["queue_full"] += 1
            raise handshake.Closed(f"no handshake slot lane={lane.name}",
                                   hint.busy(BUSY_RETRY_AFTER), admission=True)
        if verdict is Verdict.ADMIT:
            return ticket
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        try:
            await asyncio.wait_for(waiter, min(self.limits.slot_wait_max, deadline.left()))
        except BaseException as exc:
            self._waiters.pop(ticket, None)
            if not self.admission.cancel(ticket):
                self._release(ticket)  # granted just as we gave up
            if isinstance(exc, TimeoutError):
                self.counters["slot_wait_timeout"] += 1
                raise handshake.Closed(f"no handshake slot in time lane={lane.name}",
                                       hint.busy(BUSY_RETRY_AFTER), admission=True) from None
            raise
        return ticket

    def _release(self, ticket: Ticket) -> None:
        for woken in self.admission.release(ticket):
            waiter = self._waiters.pop(woken, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _run_handshake(self, peer: Peer, pre: Preamble, message1: bytes,
                             first: handshake.Message1 | None, found: handshake.Found | None,
                             sid: str, deadline: handshake.Deadline
                             ) -> handshake.Identity | None:
        timeout = self.limits.handshake_request_timeout
        if first is None:
            key, device_id = await handshake.enroll(peer, pre, message1, self.static, self.bus,
                                                    self.selection, sid, deadline, timeout)
            self.known.learn(key, 0, device_id)
            return None
        if found is None:
            found = await handshake.lookup(first, self.bus, sid, deadline, timeout)
        return await handshake.connect(peer, first, found, self.bus, sid, deadline, timeout,
                                       self.device_sessions, self.known)

    def _open_session(self, peer: Peer, ident: handshake.Identity, sid: str) -> Session:
        session = Session(peer, ident, self.bus, self.limits, sid, self.followers)
        self.sessions[ident.device_id].add(session)
        self._session_count += 1
        self.counters["sessions"] += 1
        log.info("session open sid=%s device=%s name=%s", sid, ident.device_id, ident.name)
        return session

    def _closed_session(self, session: Session, reason: str) -> None:
        device_id = session.ident.device_id
        self.followers.discard(session)
        live = self.sessions[device_id]
        if session in live:
            live.discard(session)
            self._session_count -= 1
        if not live:
            del self.sessions[device_id]
        log.info("session closed sid=%s device=%s reason=%s", session.sid, device_id, reason)
