"""``flows.read`` pages through the board's bounded replies with the ``next`` cursor."""

from __future__ import annotations

from typing import Any, cast

import pytest
from device_builders import NOW, make_device
from tpm_builders import sign_digest

from client import flows
from client.channel import Channel, Refused
from services.board.handler import BoardDeps, handle
from shared.bus.interface import Request
from shared.errors import AttestgateError, ErrorCode
from shared.messages import encode_reply
from shared.posts import post_digest
from shared.records import Post
from shared.store.interface import PostQuota
from shared.store.memory import MemoryStore
from shared.store.serialize import post_fields
from shared.wire import MAX_MESSAGE, MAX_POST_BYTES, MAX_READ_LIMIT, Command

MS = int(NOW * 1000)


class BoardChannel:
    """A channel whose requests reach the board handler directly, as the gateway passes them."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.requests: list[dict[str, Any]] = []

    def request(self, cmd: Command, **fields: Any) -> dict[str, Any]:
        assert cmd is Command.READ
        self.requests.append(fields)
        reply = handle(Request("r", "board", "read", fields, NOW + 5),
                       BoardDeps(self.store), NOW)
        if not reply.ok:
            assert reply.error is not None
            raise Refused(reply.error, {})
        assert len(encode_reply(1, **reply.body)) <= MAX_MESSAGE
        return dict(reply.body)


def board(n: int, size: int = MAX_POST_BYTES) -> tuple[MemoryStore, list[str]]:
    store = MemoryStore()
    dev = make_device("alice")
    store.devices[dev.device_id] = dev.record
    ids = []
    for i in range(n):
        text = "\U0001f600" * (size // 4) + f"{i:04d}"[: size % 4 or 0]
        key = f"key-{i:012d}".encode()
        sig = sign_digest(dev.post_key, post_digest(dev.device_id, MS, key, text))
        post_id, _ = store.add_post(key, post_fields(Post("", dev.device_id, text, MS, key, sig)),
                                    device_id=dev.device_id, now=NOW,
                                    quota=PostQuota(1.0, 10**6, 60.0))
        ids.append(post_id)
    return store, ids


def test_read_500_max_size_posts() -> None:
    store, ids = board(MAX_READ_LIMIT)
    ch = BoardChannel(store)
    posts = flows.read(cast(Channel, ch), None, MAX_READ_LIMIT)
    assert [p["post_id"] for p in posts] == ids
    assert len(ch.requests) > 1
    assert ch.requests[0] == {"since": None, "limit": MAX_READ_LIMIT}


def test_default_read_is_the_latest_50_in_order() -> None:
    store, ids = board(120)
    posts = flows.read(cast(Channel, BoardChannel(store)), None, 50)
    assert [p["post_id"] for p in posts] == ids[-50:]


def test_read_since_stops_at_the_end_of_the_board() -> None:
    store, ids = board(40)
    posts = flows.read(cast(Channel, BoardChannel(store)), ids[9], 500)
    assert [p["post_id"] for p in posts] == ids[10:]


def test_small_posts_come_in_one_reply() -> None:
    store, ids = board(200, size=8)
    ch = BoardChannel(store)
    assert [p["post_id"] for p in flows.read(cast(Channel, ch), None, 500)] == ids
    assert len(ch.requests) == 1


class Replaying:
    """A server that answers every page with the same posts and cursor."""

    def __init__(self, store: MemoryStore) -> None:
        self.inner = BoardChannel(store)
        self.first: dict[str, Any] | None = None

    def request(self, cmd: Command, **fields: Any) -> dict[str, Any]:
        if self.first is None:
            self.first = self.inner.request(cmd, **fields)
        return self.first


def test_a_server_repeating_posts_is_a_protocol_error() -> None:
    store, _ = board(60)
    with pytest.raises(AttestgateError) as e:
        flows.read(cast(Channel, Replaying(store)), None, 60)
    assert e.value.code is ErrorCode.PROTOCOL
