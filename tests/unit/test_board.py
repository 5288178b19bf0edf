"""The board handler over MemoryStore, with a real ECC P-256 post key and TPM-shaped signatures."""

from __future__ import annotations

from typing import Any

import pytest
from device_builders import NOW, TestDevice, make_device
from tpm_builders import (
    AK_ATTRS,
    DECRYPT,
    flip,
    new_key,
    post_key_public,
    sign_digest,
    tpm2b_public_ecc,
)

from services.board.handler import BoardDeps, handle
from shared.bus.interface import Reply, Request
from shared.errors import AttestgateError, ErrorCode
from shared.posts import post_digest
from shared.store.memory import MemoryStore
from shared.tpm.attributes import check_post_key
from shared.tpm.structures import parse_public, to_crypto_key
from shared.wire import Event

KEY = b"idempotency-key!"  # 16 bytes


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def device(store: MemoryStore) -> TestDevice:
    dev = make_device("alice")
    store.devices[dev.device_id] = dev.record
    return dev


def call(store: MemoryStore, op: str, body: dict[str, Any], now: float = NOW) -> Reply:
    return handle(Request("r1", "board", op, body, now + 5), BoardDeps(store), now)


def post_body(dev: TestDevice, text: str, *, key: bytes = KEY, signed_text: str | None = None,
              author: str = "alice") -> dict[str, Any]:
    digest = post_digest(dev.device_id, key, text if signed_text is None else signed_text)
    return {"device_id": dev.device_id, "author": author, "text": text, "key": key,
            "signature": sign_digest(dev.post_key, digest)}


# -- the builders produce what a TPM would -------------------------------------------------------


def test_builder_post_key_is_accepted_as_a_post_key() -> None:
    key = new_key()
    pub = check_post_key(post_key_public(key))
    assert to_crypto_key(pub).public_numbers() == key.public_key().public_numbers()


def test_builder_ak_is_not_a_post_key() -> None:
    with pytest.raises(AttestgateError) as e:
        check_post_key(tpm2b_public_ecc(new_key(), AK_ATTRS))  # restricted
    assert e.value.code is ErrorCode.CERTIFY_INVALID
    with pytest.raises(AttestgateError):
        check_post_key(tpm2b_public_ecc(new_key(), AK_ATTRS & ~0x10000 | DECRYPT))


def test_builder_public_parses_exactly() -> None:
    data = post_key_public(new_key())
    assert parse_public(data).marshal() == data


# -- post ---------------------------------------------------------------------------------------


def test_post_is_stored_and_announced(store: MemoryStore, device: TestDevice) -> None:
    reply = call(store, "post", post_body(device, "hello board"))
    assert reply.ok
    assert reply.body["created"] is True
    post_id = reply.body["post_id"]
    stored = store.get_post(post_id)
    assert stored is not None
    assert (stored.device_id, stored.author, stored.text, stored.key) == (
        device.device_id, "alice", "hello board", KEY)
    assert stored.created_at == NOW
    assert [e.topic for e in reply.events] == [Event.NEW_POST.value]
    view = reply.events[0].body
    assert view["post_id"] == post_id
    assert view["device_id"] == device.device_id
    assert view["text"] == "hello board"
    assert view["verified"] is True


def test_retry_with_same_key_returns_first_post(store: MemoryStore, device: TestDevice) -> None:
    first = call(store, "post", post_body(device, "once"))
    again = call(store, "post", post_body(device, "once"), now=NOW + 1)
    assert again.ok
    assert again.body == {"post_id": first.body["post_id"], "created": False}
    assert again.events == ()  # followers are not told twice
    assert store.count_posts() == 1


def test_same_key_from_two_devices_is_two_posts(store: MemoryStore, device: TestDevice) -> None:
    bob = make_device("bob")
    store.devices[bob.device_id] = bob.record
    a = call(store, "post", post_body(device, "from alice"))
    b = call(store, "post", post_body(bob, "from bob", author="bob"))
    assert a.body["created"] and b.body["created"]
    assert a.body["post_id"] != b.body["post_id"]
    assert store.count_posts() == 2


def assert_refused(store: MemoryStore, reply: Reply, code: ErrorCode) -> None:
    assert reply.error is code
    assert reply.body == {}  # a code, nothing else
    assert reply.events == ()
    assert store.count_posts() == 0


def test_signature_over_other_text(store: MemoryStore, device: TestDevice) -> None:
    reply = call(store, "post", post_body(device, "pay bob 100", signed_text="pay bob 1"))
    assert_refused(store, reply, ErrorCode.BAD_SIGNATURE)


def test_signature_for_other_key_or_device(store: MemoryStore, device: TestDevice) -> None:
    body = post_body(device, "hello")
    body["key"] = b"another-key-0016"
    assert_refused(store, call(store, "post", body), ErrorCode.BAD_SIGNATURE)
    bob = make_device("bob")
    store.devices[bob.device_id] = bob.record
    body = post_body(device, "hello")
    body["device_id"] = bob.device_id  # alice's signature, presented as bob's post
    assert_refused(store, call(store, "post", body), ErrorCode.BAD_SIGNATURE)


def test_signature_by_other_key(store: MemoryStore, device: TestDevice) -> None:
    body = post_body(device, "hello")
    body["signature"] = sign_digest(new_key(), post_digest(device.device_id, KEY, "hello"))
    assert_refused(store, call(store, "post", body), ErrorCode.BAD_SIGNATURE)


def test_every_flipped_signature_byte(store: MemoryStore, device: TestDevice) -> None:
    body = post_body(device, "hello")
    for i in range(len(body["signature"])):
        reply = call(store, "post", {**body, "signature": flip(body["signature"], i)})
        assert_refused(store, reply, ErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize("sig", [b"\x00", b"\x00\x18\x00\x0b", b"\xff" * 100])
def test_malformed_signature(store: MemoryStore, device: TestDevice, sig: bytes) -> None:
    body = {**post_body(device, "hello"), "signature": sig}
    assert_refused(store, call(store, "post", body), ErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize("text", ["", "   ", "bell\x07", "a" * 4097, "rlo\u202eevil"])
def test_invalid_text(store: MemoryStore, device: TestDevice, text: str) -> None:
    # Correctly signed, but not acceptable text: refused before anything is stored.
    assert_refused(store, call(store, "post", post_body(device, text)), ErrorCode.INVALID_TEXT)


def test_unknown_device(store: MemoryStore) -> None:
    ghost = make_device("ghost")  # never stored
    assert_refused(store, call(store, "post", post_body(ghost, "boo")), ErrorCode.UNKNOWN_DEVICE)


@pytest.mark.parametrize(
    "change",
    [
        {"key": b"short"},
        {"key": "idempotency-key!"},
        {"signature": b""},
        {"author": 7},
        {"author": "x" * 65},
        {"device_id": None},
        {"text": b"bytes"},
    ],
)
def test_malformed_post(store: MemoryStore, device: TestDevice, change: dict[str, Any]) -> None:
    body = {**post_body(device, "hello"), **change}
    assert_refused(store, call(store, "post", body), ErrorCode.BAD_REQUEST)


# -- read ---------------------------------------------------------------------------------------


@pytest.fixture
def three_posts(store: MemoryStore, device: TestDevice) -> list[str]:
    ids = []
    for i in range(3):
        key = f"key-{i:012d}".encode()
        reply = call(store, "post", post_body(device, f"post {i}", key=key), now=NOW + i)
        ids.append(reply.body["post_id"])
    return ids


def texts(reply: Reply) -> list[str]:
    assert reply.ok
    return [p["text"] for p in reply.body["posts"]]


def test_read_latest(store: MemoryStore, three_posts: list[str]) -> None:
    assert texts(call(store, "read", {})) == ["post 0", "post 1", "post 2"]
    assert texts(call(store, "read", {"limit": 2})) == ["post 1", "post 2"]
    reply = call(store, "read", {})
    assert [p["post_id"] for p in reply.body["posts"]] == three_posts
    assert all(p["verified"] for p in reply.body["posts"])


def test_read_since(store: MemoryStore, three_posts: list[str]) -> None:
    assert texts(call(store, "read", {"since": three_posts[0]})) == ["post 1", "post 2"]
    assert texts(call(store, "read", {"since": three_posts[0], "limit": 1})) == ["post 1"]
    assert texts(call(store, "read", {"since": three_posts[2]})) == []
    assert texts(call(store, "read", {"since": "0"})) == ["post 0", "post 1", "post 2"]


def test_read_empty_board(store: MemoryStore) -> None:
    assert texts(call(store, "read", {})) == []


@pytest.mark.parametrize(
    "body",
    [
        {"since": "abc"},
        {"since": "1-x"},
        {"since": "-1"},
        {"since": "1-2-3"},
        {"since": 5},
        {"limit": 0},
        {"limit": 501},
        {"limit": True},
        {"limit": "10"},
    ],
)
def test_bad_read(store: MemoryStore, three_posts: list[str], body: dict[str, Any]) -> None:
    assert call(store, "read", body).error is ErrorCode.BAD_REQUEST


def test_unknown_op(store: MemoryStore) -> None:
    reply = call(store, "delete", {"post_id": "1-0"})
    assert reply.error is ErrorCode.UNKNOWN_COMMAND
