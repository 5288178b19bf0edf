"""The gateway's live-session count (its session limit and health document read it on
every connection) follows sessions opening and closing, a repeated close included."""

from __future__ import annotations

import asyncio

from test_gateway_session import GatedBus, _done, _pair

from services.gateway.limits import GatewayLimits
from services.gateway.server import Gateway
from shared.keys import StaticKey


def test_the_session_count_follows_opens_and_closes() -> None:
    async def scenario() -> None:
        bus = GatedBus()
        limits = GatewayLimits(reattest_interval=0)
        gateway = Gateway(bus, StaticKey.generate(), "sha256:0", limits)
        assert gateway.session_count == 0
        first = await _pair(limits, bus, gateway=gateway)
        second = await _pair(limits, bus, gateway=gateway)
        assert gateway.session_count == 2
        assert gateway.session_count == sum(len(s) for s in gateway.sessions.values())

        first.client.writer.close()
        assert await _done(first) == "peer closed"
        gateway._closed_session(first.session, "peer closed")
        assert gateway.session_count == 1
        gateway._closed_session(first.session, "peer closed")  # a second close counts once
        assert gateway.session_count == 1

        second.client.writer.close()
        assert await _done(second) == "peer closed"
        gateway._closed_session(second.session, "peer closed")
        assert gateway.session_count == 0 and not gateway.sessions

    asyncio.run(scenario())
