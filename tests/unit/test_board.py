"""The board handler over MemoryStore, with a real ECC P-256 post key and TPM-shaped signatures."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from device_builders import NOW, TestDevice, make_device
from hypothesis import given, settings
from hypothesis import strategies as st
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
from shared.board_settings import BoardSettings
from shared.bus.codec import encode as bus_encode
from shared.bus.interface import Reply, Request
from shared.config import ConfigError
from shared.errors import AttestgateError, ErrorCode
from shared.messages import encode_reply
from shared.posts import post_digest
from shared.records import Post
from shared.store.interface import PostQuota
from shared.store.memory import MemoryStore
from shared.store.serialize import post_fields
from shared.tpm.attributes import check_post_key
from shared.tpm.structures import parse_public, to_crypto_key
from shared.wire import (
    DEFAULT_READ_LIMIT,
    MAX_BUS_MESSAGE,
    MAX_MESSAGE,
    MAX_NAME_LEN,
    MAX_POST_BYTES,
    MAX_REQUEST_ID,
    Event,
)

KEY = b"idempotency-key!"  # 16 bytes


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def device(store: MemoryStore) -> TestDevice:
    dev = make_device("alice")
    store.devices[dev.device_id] = dev.record
    return dev


def call(store: MemoryStore, op: str, body: dict[str, Any], now: float = NOW,
         settings: BoardSettings | None = None) -> Reply:
    deps = BoardDeps(store, settings or BoardSettings.defaults())
    return handle(Request("r1", "board", op, body, now + 5), deps, now)


def post_body(dev: TestDevice, text: str, *, key: bytes = KEY, signed_text: str | None = None,
              ts: int | None = None, signed_ts: int | None = None) -> dict[str, Any]:
    ts = int(NOW * 1000) if ts is None else ts
    digest = post_digest(dev.device_id, ts if signed_ts is None else signed_ts, key,
                         text if signed_text is None else signed_text)
    return {"device_id": dev.device_id, "ts": ts, "text": text, "key": key,
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
    assert (stored.device_id, stored.text, stored.key) == (device.device_id, "hello board", KEY)
    assert stored.signed_at_ms == int(NOW * 1000)
    assert stored.received_at == NOW
    assert stored.stored_author is None  # the author is the registry's, never stored
    assert [e.topic for e in reply.events] == [Event.NEW_POST.value]
    view = reply.events[0].body
    assert view["post_id"] == post_id
    assert view["device_id"] == device.device_id
    assert view["text"] == "hello board"
    assert view["author"] == "alice"
    assert view["ts"] == NOW
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
    b = call(store, "post", post_body(bob, "from bob"))
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
    body["signature"] = sign_digest(new_key(), post_digest(device.device_id, int(NOW * 1000), KEY,
                                                           "hello"))
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
        {"ts": None},
        {"ts": "1700000000000"},
        {"ts": 1_700_000_000.5},
        {"ts": True},
        {"ts": -1},
        {"ts": 1 << 60},
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


# -- what is signed is what is shown: device, time, key, text; author from the registry ---------

MS = int(NOW * 1000)


def test_signature_over_another_time_is_refused(store: MemoryStore, device: TestDevice) -> None:
    reply = call(store, "post", post_body(device, "hello", ts=MS, signed_ts=MS - 3_600_000))
    assert_refused(store, reply, ErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize("offset_s", [-301, 301, -86_400, 86_400 * 365])
def test_timestamp_outside_the_clock_skew_is_refused(store: MemoryStore, device: TestDevice,
                                                      offset_s: int) -> None:
    # Correctly signed, but back- or forward-dated beyond the default 300 s window.
    body = post_body(device, "dated", ts=MS + offset_s * 1000)
    assert_refused(store, call(store, "post", body), ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize("offset_s", [-299, 0, 299])
def test_timestamp_within_the_clock_skew_is_shown(store: MemoryStore, device: TestDevice,
                                                  offset_s: int) -> None:
    ts = MS + offset_s * 1000
    reply = call(store, "post", post_body(device, "on time", ts=ts))
    assert reply.ok, reply.error
    (post,) = call(store, "read", {}).body["posts"]
    assert post["ts"] == ts / 1000  # the signed client time, not the board's
    assert post["verified"] is True


def test_author_is_the_registry_name_at_read_time(store: MemoryStore, device: TestDevice) -> None:
    call(store, "post", post_body(device, "hello"))
    store.update_device(device.device_id, lambda d: replace(d, name="alice-renamed"))
    (post,) = call(store, "read", {}).body["posts"]
    assert (post["author"], post["verified"]) == ("alice-renamed", True)


def _edit_stored(store: MemoryStore, post_id: str, **fields: bytes) -> None:
    store.posts = [(i, {**f, **{k.encode(): v for k, v in fields.items()}} if i == post_id else f)
                   for i, f in store.posts]


@pytest.mark.parametrize("edit", [{"text": b"pay mallory"}, {"ts": str(MS - 86_400_000).encode()},
                                  {"key": b"another-key-0016"}])
def test_edited_post_reads_as_not_verified(store: MemoryStore, device: TestDevice,
                                           edit: dict[str, bytes]) -> None:
    post_id = call(store, "post", post_body(device, "pay bob")).body["post_id"]
    _edit_stored(store, post_id, **edit)
    (post,) = call(store, "read", {}).body["posts"]
    assert post["verified"] is False


def test_stored_author_field_is_never_shown(store: MemoryStore, device: TestDevice) -> None:
    post_id = call(store, "post", post_body(device, "hello")).body["post_id"]
    _edit_stored(store, post_id, author=b"mallory")
    (post,) = call(store, "read", {}).body["posts"]
    assert post["author"] == "alice"


def test_post_moved_to_another_device_reads_as_not_verified(store: MemoryStore,
                                                            device: TestDevice) -> None:
    bob = make_device("bob")
    store.devices[bob.device_id] = bob.record
    post_id = call(store, "post", post_body(device, "hello")).body["post_id"]
    _edit_stored(store, post_id, device=bob.device_id.encode())
    (post,) = call(store, "read", {}).body["posts"]
    assert (post["author"], post["verified"]) == ("bob", False)


def test_post_of_a_device_gone_reads_as_not_verified(store: MemoryStore,
                                                     device: TestDevice) -> None:
    call(store, "post", post_body(device, "hello"))
    del store.devices[device.device_id]
    (post,) = call(store, "read", {}).body["posts"]
    assert (post["author"], post["verified"]) == ("", False)


# -- per-device post rate limit and expiring idempotency keys --------------------------------


def _key(i: int) -> bytes:
    return f"key-{i:012d}".encode()


def test_burst_then_rate_limited_with_nothing_stored(store: MemoryStore,
                                                     device: TestDevice) -> None:
    quota = BoardSettings.defaults().quota
    assert (quota.rate, quota.burst) == (5.0, 20)  # the documented defaults
    for i in range(20):
        assert call(store, "post", post_body(device, f"p{i}", key=_key(i))).ok
    reply = call(store, "post", post_body(device, "one too many", key=_key(20)))
    assert reply.error is ErrorCode.RATE_LIMITED
    assert reply.events == ()
    assert store.count_posts() == 20
    # 5 posts/s: a token is back after 0.2 s, one post's worth.
    assert call(store, "post", post_body(device, "later", key=_key(21)), now=NOW + 0.2).ok
    again = call(store, "post", post_body(device, "too soon", key=_key(22)), now=NOW + 0.2)
    assert again.error is ErrorCode.RATE_LIMITED
    assert store.count_posts() == 21


def test_a_retry_is_answered_while_rate_limited(store: MemoryStore, device: TestDevice) -> None:
    first = call(store, "post", post_body(device, "p0", key=_key(0)))
    for i in range(1, 20):
        call(store, "post", post_body(device, f"p{i}", key=_key(i)))
    retry = call(store, "post", post_body(device, "p0", key=_key(0)))
    assert retry.body == {"post_id": first.body["post_id"], "created": False}


def test_one_device_limited_does_not_limit_another(store: MemoryStore,
                                                   device: TestDevice) -> None:
    bob = make_device("bob")
    store.devices[bob.device_id] = bob.record
    settings = BoardSettings(PostQuota(1.0, 2, 86_400.0), 300.0)
    for i in range(2):
        assert call(store, "post", post_body(device, f"a{i}", key=_key(i)), settings=settings).ok
    limited = call(store, "post", post_body(device, "a2", key=_key(2)), settings=settings)
    assert limited.error is ErrorCode.RATE_LIMITED
    assert call(store, "post", post_body(bob, "b0", key=_key(0)), settings=settings).ok


def test_idempotency_key_expires_after_its_ttl(store: MemoryStore, device: TestDevice) -> None:
    ttl = BoardSettings.defaults().quota.key_ttl
    assert ttl == 24 * 3600  # the documented default
    first = call(store, "post", post_body(device, "once", key=KEY)).body["post_id"]
    later = NOW + ttl - 1
    body = post_body(device, "once", key=KEY, ts=int(later * 1000))
    assert call(store, "post", body, now=later).body == {"post_id": first, "created": False}
    expired = NOW + ttl + 1
    body = post_body(device, "once", key=KEY, ts=int(expired * 1000))
    assert call(store, "post", body, now=expired).body["created"] is True


@pytest.mark.parametrize("name,value", [
    ("ATTESTGATE_POST_RATE", "0"), ("ATTESTGATE_POST_RATE", "nan"),
    ("ATTESTGATE_POST_RATE", "fast"), ("ATTESTGATE_POST_BURST", "0"),
    ("ATTESTGATE_POST_BURST", "2.5"), ("ATTESTGATE_POST_KEY_TTL", "-1"),
    ("ATTESTGATE_POST_KEY_TTL", "inf"), ("ATTESTGATE_POST_CLOCK_SKEW", "0.5"),
])
def test_bad_board_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        BoardSettings.from_env({name: value})
    assert (e.value.name, e.value.value) == (name, value)


def test_board_settings_from_env() -> None:
    s = BoardSettings.from_env({"ATTESTGATE_POST_RATE": "0.5", "ATTESTGATE_POST_BURST": "3",
                                "ATTESTGATE_POST_KEY_TTL": "3600",
                                "ATTESTGATE_POST_CLOCK_SKEW": "60"})
    assert s == BoardSettings(PostQuota(0.5, 3, 3600.0), 60.0)
    assert BoardSettings.from_env({}) == BoardSettings.defaults()


# -- replies always fit one message --------------------------------------------------------------

# Worst cases for the encodings: 4-byte UTF-8 (msgpack counts bytes), characters JSON
# escapes to 6 or 12 bytes, and a maximal device name; ids as long as Redis makes them.
WORST_TEXTS = ["\U0001f600" * (MAX_POST_BYTES // 4), "\n\t\"\\" * (MAX_POST_BYTES // 4),
               "\u200d" * (MAX_POST_BYTES // 3) + "a", "a" * MAX_POST_BYTES]


def _fill(store: MemoryStore, dev: TestDevice, n: int) -> list[str]:
    """``n`` maximum-size posts with maximal stream ids, stored as the board stores them."""
    ids = []
    for i in range(n):
        text = WORST_TEXTS[i % len(WORST_TEXTS)]
        key = _key(i)
        sig = sign_digest(dev.post_key, post_digest(dev.device_id, MS, key, text))
        post_id = f"{18_000_000_000_000_000_000 + i}-{18_000_000_000_000_000_000 + i}"
        store.posts.append((post_id, {k.encode(): v.encode() if isinstance(v, str) else v
                                      for k, v in post_fields(Post(post_id, dev.device_id, text,
                                                                   MS, key, sig, NOW)).items()}))
        ids.append(post_id)
    return ids


@pytest.fixture
def long_named(store: MemoryStore) -> TestDevice:
    dev = make_device("alice")
    long = replace(dev.record, name="\u00e9" * (MAX_NAME_LEN // 2))  # 64 bytes, 32 characters
    store.devices[dev.device_id] = long
    return dev


def _assert_fits(reply: Reply) -> None:
    assert reply.ok, reply.error
    assert len(encode_reply(MAX_REQUEST_ID, **reply.body)) <= MAX_MESSAGE
    assert len(bus_encode(reply)) <= MAX_BUS_MESSAGE


def test_read_of_500_max_size_posts_pages_in_order(store: MemoryStore,
                                                   long_named: TestDevice) -> None:
    ids = _fill(store, long_named, 500)
    for first in ({"limit": 500}, {"since": "0", "limit": 500}, {}):
        got: list[str] = []
        body: dict[str, Any] = dict(first)
        want = ids[-body.get("limit", DEFAULT_READ_LIMIT):]
        pages = 0
        while True:
            reply = call(store, "read", body)
            _assert_fits(reply)
            page = [p["post_id"] for p in reply.body["posts"]]
            assert page, "a reply with a cursor holds at least one post"
            assert all(p["verified"] for p in reply.body["posts"])
            got += page
            pages += 1
            if "next" not in reply.body:
                break
            assert reply.body["next"] == page[-1]
            body = {"since": reply.body["next"], "limit": len(want) - len(got)}
        assert got == want  # everything, in order, no duplicates
        assert pages > 1


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, MAX_POST_BYTES), min_size=1, max_size=40),
       limit=st.integers(1, 60))
def test_board_never_builds_a_reply_larger_than_a_message(sizes: list[int], limit: int) -> None:
    store = MemoryStore()
    dev = make_device("alice")
    store.devices[dev.device_id] = replace(dev.record, name="x" * MAX_NAME_LEN)
    for i, n in enumerate(sizes):
        text = ("\U0001f600" * (n // 4) + "a" * (n % 4)) if i % 2 else "b" * n
        ts = MS
        sig = sign_digest(dev.post_key, post_digest(dev.device_id, ts, _key(i), text))
        store.add_post(_key(i) + dev.device_id.encode(),
                       post_fields(Post("", dev.device_id, text, ts, _key(i), sig, NOW)),
                       device_id=dev.device_id, now=NOW + i, quota=PostQuota(1e6, 10**6, 60.0))
    for body in ({"limit": limit}, {"since": "0", "limit": limit}):
        reply = call(store, "read", body)
        _assert_fits(reply)
        n = len(reply.body["posts"])
        assert n >= 1
        assert ("next" in reply.body) == (n < min(limit, len(sizes)))


def test_post_key_parsed_once_per_device_and_again_when_it_changes(
        store: MemoryStore, device: TestDevice) -> None:
    deps = BoardDeps(store, BoardSettings.defaults())

    def post(body: dict[str, Any]) -> Reply:
        return handle(Request("r1", "board", "post", body, NOW + 5), deps, NOW)

    for i in range(3):
        assert post(post_body(device, f"post {i}", key=bytes([i]) * 16)).ok
    assert deps.keys.parsed == 1
    # The device's post key is replaced: a post signed with the old key is refused.
    other = make_device("alice")
    store.devices[device.device_id] = replace(
        store.devices[device.device_id], post_public=other.record.post_public)
    stale = post(post_body(device, "old key", key=b"o" * 16))
    assert stale.error is ErrorCode.BAD_SIGNATURE
    renewed = post({**post_body(other, "new key", key=b"n" * 16), "device_id": device.device_id})
    assert renewed.error is ErrorCode.BAD_SIGNATURE  # signed over the other device's id
    digest = post_digest(device.device_id, int(NOW * 1000), b"m" * 16, "new key")
    body = {"device_id": device.device_id, "ts": int(NOW * 1000), "text": "new key",
            "key": b"m" * 16, "signature": sign_digest(other.post_key, digest)}
    assert post(body).ok
    assert deps.keys.parsed == 2
