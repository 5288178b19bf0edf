"""The gateway passes over new-post events while no session follows (ZmqBus.skip_event),
over real ZeroMQ on 127.0.0.1: the others still arrive, and a follower gets every post."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.gateway.session import unfollowed_posts
from shared.bus.interface import BusEvent
from shared.bus.zmq_bus import ZmqBus, ZmqPublisher
from shared.wire import Event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ANY = "tcp://127.0.0.1:*"


def _post(n: int) -> BusEvent:
    return BusEvent(Event.NEW_POST.value, {"post_id": f"{n}-0", "text": f"post {n}"})


def _revoked(n: int) -> BusEvent:
    return BusEvent(Event.DEVICE_REVOKED.value, {"device_id": f"d{n}"})


def test_new_posts_are_skipped_only_while_nobody_follows() -> None:
    async def go() -> None:
        bus = ZmqBus(ANY, ANY)
        await bus.start()
        followers: set[Any] = set()
        bus.skip_event = unfollowed_posts(followers)
        stream = bus.events()
        publisher = await asyncio.to_thread(ZmqPublisher, [bus.events_endpoint])
        try:
            # Nobody follows: the post is passed over, the revocation behind it arrives.
            publisher.publish(_post(1))
            publisher.publish(_revoked(1))
            assert await asyncio.wait_for(anext(stream), 5) == _revoked(1)
            # A follower joined (as FOLLOW does, before its reply): the next post arrives.
            followers.add(object())
            publisher.publish(_post(2))
            publisher.publish(_revoked(2))
            assert await asyncio.wait_for(anext(stream), 5) == _post(2)
            assert await asyncio.wait_for(anext(stream), 5) == _revoked(2)
            # The last follower left: posts are passed over again.
            followers.clear()
            publisher.publish(_post(3))
            publisher.publish(_revoked(3))
            assert await asyncio.wait_for(anext(stream), 5) == _revoked(3)
            assert bus.dropped_frames == 0  # passed over, not counted as malformed
        finally:
            publisher.close()
            await stream.aclose()  # type: ignore[attr-defined]
            await bus.close()

    asyncio.run(go())
