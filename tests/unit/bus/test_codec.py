"""The bus wire format: round trips, hand-built frames, and "any bytes -> a frame or our error"."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bus import codec
from shared.bus.interface import BusEvent, Reply, Request
from shared.errors import AttestgateError, ErrorCode
from shared.wire import MAX_BUS_MESSAGE

OWN_ERRORS = {ErrorCode.PROTOCOL, ErrorCode.TOO_LARGE, ErrorCode.VERSION}

REQUEST = Request(
    id="r-1",
    service="board",
    op="post",
    body={"text": "hi", "sig": b"\x00\x01", "n": 3, "f": 1.5, "ok": True, "none": None,
          "list": [1, "a", b"b"], "map": {"k": [1]}},
    deadline=1_700_000_000.25,
    idempotent=False,
)


def raw(*items: object) -> bytes:
    return codec.PREFIX + bytes(msgpack.packb(list(items), use_bin_type=True))


def code_of(data: bytes) -> ErrorCode:
    with pytest.raises(AttestgateError) as info:
        codec.decode(data)
    return info.value.code


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        codec.Ready("attestor"),
        codec.HEARTBEAT,
        codec.DISCONNECT,
        REQUEST,
        Reply("r-1", {"post_id": "1-0"}),
        Reply("r-2", {}, ErrorCode.PCR_MISMATCH),
        BusEvent("revoked", {"device": "d1"}),
    ],
)
def test_round_trip(frame: codec.Frame) -> None:
    assert codec.decode(codec.encode(frame)) == frame


def test_frames_start_with_magic_and_version() -> None:
    data = codec.encode(codec.HEARTBEAT)
    assert data[:3] == b"AGB"
    assert data[3] == codec.BUS_VERSION == 1
    assert data == codec.PREFIX + b"\x91\x02"  # fixarray(1) [HEARTBEAT=2]


def test_known_answer_request() -> None:
    frame = raw(3, "id", "board", "read", {"limit": 5}, 12.5, True)
    assert codec.decode(frame) == Request("id", "board", "read", {"limit": 5}, 12.5, True)


def test_integer_deadline_is_accepted() -> None:
    request = codec.decode(raw(3, "id", "board", "read", {}, 12, True))
    assert isinstance(request, Request)
    assert request.deadline == 12.0
    assert isinstance(request.deadline, float)


def test_reply_events_do_not_travel() -> None:
    reply = Reply("r", {}, events=(BusEvent("post", {"id": "1"}),))
    assert codec.decode(codec.encode(reply)) == Reply("r", {})


def test_unknown_error_code_from_a_peer_becomes_protocol() -> None:
    reply = codec.decode(raw(4, "r", {}, "no_such_code"))
    assert reply == Reply("r", {}, ErrorCode.PROTOCOL)


def test_tuple_in_body_comes_back_as_list() -> None:
    frame = codec.decode(codec.encode(Reply("r", {"t": (1, 2)})))
    assert frame == Reply("r", {"t": [1, 2]})


# -- refusals ----------------------------------------------------------------------------


def test_size_is_checked_before_parsing() -> None:
    # Not even valid msgpack: the size check must come first.
    assert code_of(b"\xff" * (MAX_BUS_MESSAGE + 1)) is ErrorCode.TOO_LARGE


def test_largest_frame_is_accepted_and_one_more_byte_refused() -> None:
    overhead = len(codec.encode(BusEvent("post", {"b": b""})))
    # bin 32 header is 5 bytes instead of the 2 of bin 8 for b"".
    fits = BusEvent("post", {"b": b"x" * (MAX_BUS_MESSAGE - overhead - 3)})
    data = codec.encode(fits)
    assert len(data) == MAX_BUS_MESSAGE
    assert codec.decode(data) == fits
    too_big = BusEvent("post", {"b": b"x" * (MAX_BUS_MESSAGE - overhead - 2)})
    with pytest.raises(AttestgateError) as info:
        codec.encode(too_big)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert code_of(data + b"\x00") is ErrorCode.TOO_LARGE


def test_trailing_garbage_is_refused() -> None:
    data = codec.encode(REQUEST)
    assert code_of(data + b"\x00") is ErrorCode.PROTOCOL
    assert code_of(data + codec.encode(codec.HEARTBEAT)) is ErrorCode.PROTOCOL


def test_every_truncation_is_refused() -> None:
    data = codec.encode(REQUEST)
    for cut in range(len(data)):
        assert code_of(data[:cut]) in OWN_ERRORS


def test_other_version_and_magic() -> None:
    assert code_of(b"AGB\x02" + b"\x91\x02") is ErrorCode.VERSION
    assert code_of(b"XGB\x01" + b"\x91\x02") is ErrorCode.PROTOCOL
    assert code_of(b"") is ErrorCode.PROTOCOL
    assert code_of(b"AGB") is ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "items",
    [
        (),  # empty array
        (0,),  # unknown command
        (99,),
        (True,),  # bool is not a command number
        ("1",),
        ([2],),  # unhashable head
        (2, "extra"),  # heartbeat with a field
        (1,),  # ready without a service
        (1, ""),  # empty service
        (1, "s" * 65),  # service too long
        (1, b"board"),  # bytes, not str
        (3, "id", "board", "op", {}, 1.0),  # missing idempotent
        (3, "id", "board", "op", {}, 1.0, 1),  # idempotent not a bool
        (3, "id", "board", "op", {}, True, True),  # deadline is a bool
        (3, "id", "board", "op", {}, "1", True),  # deadline is a str
        (3, "id", "board", "op", {}, math.inf, True),
        (3, "id", "board", "op", {}, math.nan, True),
        (3, "", "board", "op", {}, 1.0, True),  # empty id
        (3, "i" * 129, "board", "op", {}, 1.0, True),  # id too long
        (3, 7, "board", "op", {}, 1.0, True),  # id not a str
        (3, "id", "board", "op", [], 1.0, True),  # body not a map
        (3, "id", "board", "op", {b"k": 1}, 1.0, True),  # bytes key at top level
        (4, "id", {}),  # reply without error slot
        (6, "post"),  # event without body
    ],
)
def test_malformed_frames_are_protocol_errors(items: tuple[object, ...]) -> None:
    assert code_of(raw(*items)) is ErrorCode.PROTOCOL


def test_not_an_array() -> None:
    assert code_of(codec.PREFIX + msgpack.packb({"cmd": 2})) is ErrorCode.PROTOCOL
    assert code_of(codec.PREFIX + msgpack.packb(2)) is ErrorCode.PROTOCOL


def test_msgpack_hazards_are_refused() -> None:
    assert code_of(codec.PREFIX + b"\x91\xc1") is ErrorCode.PROTOCOL  # reserved byte
    assert code_of(codec.PREFIX + b"\x92\x06\xd4\x01\x00") is ErrorCode.PROTOCOL  # ext type
    assert code_of(codec.PREFIX + b"\x92\x06\xd6\xff\x00\x00\x00\x01") is ErrorCode.PROTOCOL  # ts
    assert code_of(codec.PREFIX + b"\x91" * 5000 + b"\xc0") is ErrorCode.PROTOCOL  # too deep
    assert code_of(codec.PREFIX + b"\x92\x01\xa2\xff\xfe") is ErrorCode.PROTOCOL  # bad utf-8
    # map with a nil key / an array key (strict_map_key)
    assert code_of(raw(6, "t", {}).replace(b"\x80", b"\x81\xc0\x01")) is ErrorCode.PROTOCOL
    assert code_of(codec.PREFIX + b"\x93\x06\xa1t\x81\x91\x01\x01") is ErrorCode.PROTOCOL
    # array header claiming more elements than the limit / than the data
    assert code_of(codec.PREFIX + b"\xdd\xff\xff\xff\xff") is ErrorCode.PROTOCOL


def test_encode_refuses_what_decode_would_refuse() -> None:
    for frame in (
        Request("", "board", "op", {}, 1.0),
        Request("id", "board", "op", {1: "x"}, 1.0),  # type: ignore[dict-item]
        Request("id", "board", "op", {"x": object()}, 1.0),
        Request("id", "board", "op", {}, math.nan),
        BusEvent("", {}),
    ):
        with pytest.raises(AttestgateError) as info:
            codec.encode(frame)
        assert info.value.code is ErrorCode.BAD_REQUEST


# -- properties --------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_any_bytes_give_a_frame_or_our_error(data: bytes) -> None:
    try:
        frame = codec.decode(data)
    except AttestgateError as exc:
        assert exc.code in OWN_ERRORS
    else:
        assert isinstance(frame, codec.Frame)


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_any_bytes_after_the_prefix_give_a_frame_or_protocol(data: bytes) -> None:
    try:
        codec.decode(codec.PREFIX + data)
    except AttestgateError as exc:
        assert exc.code is ErrorCode.PROTOCOL


def _msgpack_values() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


bodies = st.dictionaries(st.text(max_size=8), _msgpack_values(), max_size=5)
names = st.text(min_size=1, max_size=64)


@given(
    st.text(min_size=1, max_size=128), names, names, bodies,
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
)
def test_request_round_trip(
    rid: str, service: str, op: str, body: dict[str, object], deadline: float, idem: bool
) -> None:
    request = Request(rid, service, op, body, deadline, idem)
    assert codec.decode(codec.encode(request)) == request


@given(st.text(min_size=1, max_size=128), bodies, st.none() | st.sampled_from(ErrorCode))
def test_reply_round_trip(rid: str, body: dict[str, object], error: ErrorCode | None) -> None:
    reply = Reply(rid, body, error)
    assert codec.decode(codec.encode(reply)) == reply


@given(st.lists(st.sampled_from([codec.HEARTBEAT, REQUEST, BusEvent("post", {})]), min_size=1))
def test_concatenated_frames_are_refused(frames: list[codec.Frame]) -> None:
    data = b"".join(codec.encode(f) for f in frames)
    if len(frames) == 1:
        assert codec.decode(data) == frames[0]
    else:
        assert code_of(data) is ErrorCode.PROTOCOL


@given(body=st.dictionaries(st.text(max_size=8),
                            st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40), max_size=6))
def test_event_prefix_starts_exactly_the_events_of_its_topic(body: dict[str, object]) -> None:
    prefix = codec.event_prefix("post")
    assert codec.encode(BusEvent("post", body)).startswith(prefix)
    for other in ("posts", "pos", "revoked", "locked"):
        assert not codec.encode(BusEvent(other, body)).startswith(prefix)
    assert not codec.encode(Reply("post", body)).startswith(prefix)
    assert not codec.encode(REQUEST).startswith(prefix)
