"""The gateway's per-session structure (one task, timers, pushes written at once) keeps
every promise of a session: each reply to its own request with several in flight, at
most ``max_inflight_per_session`` requests with the services, the idle timeout and the
re-attestation deadline close the session with a CLOSING push, a follower that does
not read is disconnected once its backlog passes the bound (memory stays bounded), a
revocation closes it, and a cancellation from outside is not swallowed.

A real ``Session`` and ``Peer`` over a loopback TCP connection, the Noise handshake done
in-process; the bus is a :class:`GatedBus`, a BusClient whose replies the test releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.gateway.handshake import Identity
from services.gateway.limits import GatewayLimits
from services.gateway.peer import Peer
from services.gateway.server import Gateway
from services.gateway.session import Session
from shared.bus.interface import Body, BusEvent, Reply
from shared.errors import ErrorCode
from shared.framing import FrameDecoder, Mode, encode_frame, preamble
from shared.keys import Psk, StaticKey
from shared.messages import ServerMessage, decode_server_message, encode_push, encode_request
from shared.noise_session import NoiseSession
from shared.wire import Command, Event, Push

WAIT_S = 10.0  # bound on waiting for anything; never reached when things work


@dataclass
class GatedBus:
    """A BusClient that holds every request until the test answers it."""

    waiting: dict[str, asyncio.Future[Reply]] = field(default_factory=dict)
    arrived: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def request(self, service: str, op: str, body: Body, *, request_id: str,
                      timeout: float, idempotent: bool = True) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = fut
        self.arrived.put_nowait(request_id)
        return await fut

    def answer(self, request_id: str) -> None:
        self.waiting.pop(request_id).set_result(Reply(request_id, {"rid": request_id}))

    async def events(self) -> AsyncIterator[BusEvent]:  # pragma: no cover - not used here
        return
        yield

    async def close(self) -> None:
        pass


@dataclass
class Client:
    noise: NoiseSession
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder = field(default_factory=FrameDecoder)

    def send(self, req_id: int, cmd: Command, **fields: Any) -> None:
        self.writer.write(encode_frame(self.noise.encrypt(encode_request(req_id, cmd, **fields))))

    async def next(self) -> ServerMessage | None:
        """The next message from the gateway, or None at EOF."""
        async with asyncio.timeout(WAIT_S):
            while (frame := self.decoder.next_frame()) is None:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.decoder.feed(data)
        return decode_server_message(self.noise.decrypt(frame))


@dataclass
class Pair:
    session: Session
    task: asyncio.Task[str]
    client: Client
    server: asyncio.Server


async def _pair(limits: GatewayLimits, bus: GatedBus, *, client_rcvbuf: int = 0,
                gateway: Gateway | None = None) -> Pair:
    pre = preamble(Mode.CONNECT)
    server_key = StaticKey.generate()
    initiator = NoiseSession.initiator(pre, StaticKey.generate(), server_static=server_key.public)
    responder = NoiseSession.responder(pre, server_key)
    responder.read_handshake(initiator.write_handshake(struct.pack(">Q", 1)))
    psk = Psk(b"p" * 32)
    responder.set_psk(psk)
    message2 = responder.write_handshake()
    initiator.set_psk(psk)
    initiator.read_handshake(message2)

    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Peer] = loop.create_future()

    def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(Peer(reader, writer))

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    if client_rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    peer = await asyncio.wait_for(accepted, WAIT_S)
    peer.noise = responder
    ident = Identity("dev1", "one", b"h" * 32)
    if gateway is None:
        session = Session(peer, ident, bus, limits, "sid")
    else:
        session = gateway._open_session(peer, ident, "sid")
    task = asyncio.create_task(session.run())
    return Pair(session, task, Client(initiator, reader, writer), server)


async def _done(pair: Pair) -> str:
    """The session's end (its reason); then both ends closed, as the gateway does."""
    try:
        async with asyncio.timeout(WAIT_S):
            return await pair.task
    finally:
        await pair.session.peer.close()
        pair.client.writer.close()
        with contextlib.suppress(ConnectionError):
            await pair.client.writer.wait_closed()
        pair.server.close()
        await pair.server.wait_closed()


def test_each_reply_goes_to_its_own_request_and_the_inflight_cap_holds() -> None:
    async def scenario() -> None:
        bus = GatedBus()
        pair = await _pair(GatewayLimits(max_inflight_per_session=2, reattest_interval=0), bus)
        client = pair.client
        for n in (1, 2, 3):
            client.send(n, Command.STATUS)
        first = await asyncio.wait_for(bus.arrived.get(), WAIT_S)
        second = await asyncio.wait_for(bus.arrived.get(), WAIT_S)
        await asyncio.sleep(0.2)  # let the gateway read the third request too
        assert bus.arrived.empty()  # ... which waits: two are with the service
        bus.answer(second)  # answered out of order
        reply = await client.next()
        assert reply is not None and reply.re == 2 and reply.body["rid"] == second
        third = await asyncio.wait_for(bus.arrived.get(), WAIT_S)  # a slot came free
        bus.answer(third)
        bus.answer(first)
        got = {}
        for _ in range(2):
            reply = await client.next()
            assert reply is not None and reply.re is not None
            got[reply.re] = reply.body["rid"]
        assert got == {3: third, 1: first}
        client.writer.close()
        assert await _done(pair) == "peer closed"

    asyncio.run(scenario())


def test_idle_session_is_closed_with_a_closing_push() -> None:
    async def scenario() -> None:
        pair = await _pair(GatewayLimits(idle_timeout=0.3, reattest_interval=0), GatedBus())
        closing = await pair.client.next()
        assert closing is not None and closing.push is Push.CLOSING
        assert closing.code is ErrorCode.PROTOCOL
        assert await _done(pair) == "idle timeout"

    asyncio.run(scenario())


def test_unanswered_reattestation_closes_the_session() -> None:
    async def scenario() -> None:
        limits = GatewayLimits(reattest_interval=0.2, reattest_grace=0.3)
        pair = await _pair(limits, GatedBus())
        request = await pair.client.next()
        assert request is not None and request.push is Push.REATTEST
        assert len(bytes(request.body["nonce"])) == 32
        closing = await pair.client.next()
        assert closing is not None and closing.push is Push.CLOSING
        assert closing.code is ErrorCode.QUOTE_INVALID
        assert await _done(pair) == "re-attestation not answered"

    asyncio.run(scenario())


def test_follower_that_does_not_read_is_disconnected_with_bounded_backlog() -> None:
    async def scenario() -> None:
        bound = 256 * 1024
        limits = GatewayLimits(max_follow_backlog=bound, reattest_interval=0)
        pair = await _pair(limits, GatedBus(), client_rcvbuf=4096)
        push = encode_push(Push.POST, text="x" * 30_000)
        largest = 0
        for _ in range(10_000):  # 300 MB if nothing stopped it
            pair.session.push(push)
            largest = max(largest, pair.session.peer.backlog)
            if pair.task.done():
                break
            await asyncio.sleep(0)
        assert await _done(pair) == "follow queue full"
        assert largest <= bound + len(push) + 64  # one push past the bound at most

    asyncio.run(scenario())


def test_revocation_closes_the_session_and_tells_the_device() -> None:
    async def scenario() -> None:
        pair = await _pair(GatewayLimits(reattest_interval=0), GatedBus())
        pair.client.send(1, Command.PING)
        pong = await pair.client.next()
        assert pong is not None and pong.re == 1 and pong.ok
        pair.session.close(ErrorCode.REVOKED, "device revoked")
        closing = await pair.client.next()
        assert closing is not None and closing.push is Push.CLOSING
        assert closing.code is ErrorCode.REVOKED
        assert await _done(pair) == "device revoked"

    asyncio.run(scenario())


def test_cancellation_from_outside_propagates() -> None:
    async def scenario() -> None:
        pair = await _pair(GatewayLimits(reattest_interval=0), GatedBus())
        await asyncio.sleep(0.05)
        pair.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await _done(pair)

    asyncio.run(scenario())


def test_a_new_post_goes_to_the_followers_only() -> None:
    """The gateway keeps the following sessions apart: a post goes to them (and only
    them), UNFOLLOW and the end of a session take a session off that list."""
    async def scenario() -> None:
        bus = GatedBus()
        limits = GatewayLimits(reattest_interval=0)
        gateway = Gateway(bus, StaticKey.generate(), "sha256:0", limits)
        follower = await _pair(limits, bus, gateway=gateway)
        other = await _pair(limits, bus, gateway=gateway)
        follower.client.send(1, Command.FOLLOW)
        reply = await follower.client.next()
        assert reply is not None and reply.re == 1 and reply.body["following"] is True
        other.client.send(1, Command.PING)
        assert (await other.client.next()) is not None
        assert gateway.followers == {follower.session}

        gateway.deliver(BusEvent(Event.NEW_POST.value, {"post_id": "p1", "text": "first"}))
        push = await follower.client.next()
        assert push is not None and push.push is Push.POST and push.body["post_id"] == "p1"
        other.client.send(2, Command.PING)  # the next thing the other session sees
        pong = await other.client.next()
        assert pong is not None and pong.re == 2

        follower.client.send(2, Command.UNFOLLOW)
        reply = await follower.client.next()
        assert reply is not None and reply.re == 2 and reply.body["following"] is False
        assert gateway.followers == set()
        gateway.deliver(BusEvent(Event.NEW_POST.value, {"post_id": "p2", "text": "second"}))
        follower.client.send(3, Command.FOLLOW)
        reply = await follower.client.next()  # not p2: the reply to FOLLOW comes first
        assert reply is not None and reply.re == 3 and reply.push is None

        follower.client.writer.close()
        assert await _done(follower) == "peer closed"
        assert gateway.followers == set()  # the session's end took it off
        gateway._closed_session(follower.session, "peer closed")
        other.client.writer.close()
        assert await _done(other) == "peer closed"

    asyncio.run(scenario())
