"""unpack_map, Fields and the application messages: size, then type, then fields."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec import Fields, pack, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.messages import (
    decode_request,
    decode_server_message,
    encode_error,
    encode_push,
    encode_reply,
    encode_request,
)
from shared.wire import MAX_MESSAGE, MAX_REQUEST_ID, Command, Push

HYPOTHESIS = settings(max_examples=150, deadline=None)


def code_of(fn: object, *args: object, **kwargs: object) -> ErrorCode:
    assert callable(fn)
    with pytest.raises(AttestgateError) as e:
        fn(*args, **kwargs)
    return e.value.code


# -- unpack_map --------------------------------------------------------------------------------


def test_unpack_map_round_trip() -> None:
    value = {"a": 1, "b": b"\x00\xff", "c": "text", "d": [1, 2, {"e": None}], "f": True,
             "g": 1.5}
    assert unpack_map(pack(value)) == value


def test_size_is_checked_first() -> None:
    data = pack({"x": "y" * 100})
    assert code_of(unpack_map, data, max_size=len(data) - 1) is ErrorCode.TOO_LARGE
    assert unpack_map(data, max_size=len(data)) == {"x": "y" * 100}
    assert code_of(unpack_map, b"\xc0" * (MAX_MESSAGE + 1)) is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        pack({"a": 1})[:-1],  # truncated
        pack({"a": 1}) + b"\x00",  # trailing bytes
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb("text"),
        msgpack.packb(None),
        msgpack.packb({b"k": 1}, use_bin_type=True),  # bytes key
        msgpack.packb({1: 1}),  # int key
        msgpack.packb({"a": {2: 3}}),  # int key deeper down
        msgpack.packb({"a": msgpack.ExtType(1, b"x")}),  # ext types are refused
        b"\xc1",  # never-used byte
        b"\x81\xa1a\xc7\x00\x05",  # ext 8 of length 0
        msgpack.packb({"k": [0] * 1025}),  # array limit
        msgpack.packb({str(i): i for i in range(257)}),  # map limit
        b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0",  # deep nesting
        b"\x81\xa1a\xdd\xff\xff\xff\xff",  # array claiming 4G items
        b"\x81\xa1a\xdb\x7f\xff\xff\xff",  # str claiming 2G bytes
        b"\xa2\xff\xfe",  # invalid UTF-8 str (and not a map)
        b"\x81\xa2\xff\xfe\x01",  # invalid UTF-8 key
    ],
)
def test_bad_input_is_bad_request(data: bytes) -> None:
    assert code_of(unpack_map, data) is ErrorCode.BAD_REQUEST


def test_limits_are_inclusive() -> None:
    assert len(unpack_map(msgpack.packb({str(i): i for i in range(256)}))) == 256
    assert unpack_map(msgpack.packb({"k": [0] * 1024}))["k"] == [0] * 1024


@HYPOTHESIS
@given(st.binary(max_size=300))
def test_any_bytes_give_a_dict_or_our_error(data: bytes) -> None:
    try:
        value = unpack_map(data)
    except AttestgateError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
    else:
        assert isinstance(value, dict)
        assert all(isinstance(k, str) for k in value)


_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | (
    st.binary(max_size=20)) | st.floats(allow_nan=False)
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@HYPOTHESIS
@given(st.dictionaries(st.text(max_size=10), _value, max_size=8))
def test_maps_round_trip(value: dict[str, object]) -> None:
    assert unpack_map(pack(value)) == value


@HYPOTHESIS
@given(st.dictionaries(st.text(max_size=10), _value, max_size=8), st.data())
def test_mutated_maps_give_a_dict_or_our_error(value: dict[str, object],
                                               data: st.DataObject) -> None:
    raw = bytearray(pack(value))
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        unpack_map(bytes(raw))
    except AttestgateError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)


# -- Fields -------------------------------------------------------------------------------------


def test_text() -> None:
    f = Fields({"s": "héllo", "n": 3, "b": b"x", "none": None})
    assert f.text("s", 6) == "héllo"  # 6 bytes in UTF-8
    assert code_of(f.text, "s", 5) is ErrorCode.BAD_REQUEST  # limit counts bytes, not chars
    assert code_of(f.text, "n", 10) is ErrorCode.BAD_REQUEST
    assert code_of(f.text, "b", 10) is ErrorCode.BAD_REQUEST
    assert code_of(f.text, "missing", 10) is ErrorCode.BAD_REQUEST
    assert code_of(f.text, "none", 10) is ErrorCode.BAD_REQUEST
    assert f.text("missing", 10, optional=True) == ""
    assert f.text("none", 10, optional=True) == ""


def test_blob() -> None:
    f = Fields({"b": b"1234", "s": "1234"})
    assert f.blob("b", 4, min_len=4) == b"1234"
    assert code_of(f.blob, "b", 3) is ErrorCode.BAD_REQUEST
    assert code_of(f.blob, "b", 10, min_len=5) is ErrorCode.BAD_REQUEST
    assert code_of(f.blob, "s", 10) is ErrorCode.BAD_REQUEST  # str is not bytes
    assert code_of(f.blob, "missing", 10) is ErrorCode.BAD_REQUEST
    assert f.blob("missing", 10, optional=True) == b""


def test_integer() -> None:
    f = Fields({"i": 5, "t": True, "f": False, "x": 5.0, "s": "5", "neg": -1})
    assert f.integer("i", 0, 5) == 5
    assert code_of(f.integer, "i", 0, 4) is ErrorCode.BAD_REQUEST
    assert code_of(f.integer, "i", 6, 9) is ErrorCode.BAD_REQUEST
    assert code_of(f.integer, "t", 0, 5) is ErrorCode.BAD_REQUEST  # bool is not an int
    assert code_of(f.integer, "f", 0, 5) is ErrorCode.BAD_REQUEST
    assert code_of(f.integer, "x", 0, 9) is ErrorCode.BAD_REQUEST
    assert code_of(f.integer, "s", 0, 9) is ErrorCode.BAD_REQUEST
    assert code_of(f.integer, "neg", 0, 9) is ErrorCode.BAD_REQUEST
    assert code_of(f.integer, "missing", 0, 9) is ErrorCode.BAD_REQUEST
    assert f.integer("missing", 0, 9, default=7) == 7
    assert code_of(f.integer, "t", 0, 9, default=7) is ErrorCode.BAD_REQUEST


def test_number_and_flag() -> None:
    f = Fields({"i": 2, "x": 2.5, "t": True, "s": "1", "zero": 0})
    assert f.number("i") == 2.0
    assert f.number("x") == 2.5
    assert code_of(f.number, "t") is ErrorCode.BAD_REQUEST
    assert code_of(f.number, "s") is ErrorCode.BAD_REQUEST
    assert f.flag("t") is True
    assert f.flag("missing") is False
    assert f.flag("missing", default=True) is True
    assert code_of(f.flag, "zero") is ErrorCode.BAD_REQUEST  # 0 is not False
    assert code_of(f.flag, "s") is ErrorCode.BAD_REQUEST


V = b"\x01" * 32


def test_pcr_map_keys() -> None:
    f = Fields({"int": {0: V, 23: V}, "str": {"0": V, "7": V, "23": V}})
    assert f.pcr_map("int", 24, 32) == {0: V, 23: V}
    assert f.pcr_map("str", 24, 32) == {0: V, 7: V, 23: V}  # msgpack maps carry str keys


@pytest.mark.parametrize(
    "value",
    [
        {True: V},  # bool is not an index
        {-1: V},
        {64: V},
        {"-1": V},
        {"100": V},  # more than two digits
        {"x": V},
        {"٣": V},  # a non-ASCII digit
        {" 1": V},
        {1.0: V},
        {0: b"\x01" * 31},  # wrong value length
        {0: "a" * 32},  # value not bytes
        [V],  # not a map
        {i: V for i in range(25)},  # too many entries
    ],
)
def test_pcr_map_refuses(value: object) -> None:
    assert code_of(Fields({"p": value}).pcr_map, "p", 24, 32) is ErrorCode.BAD_REQUEST


def test_mapping() -> None:
    f = Fields({"m": {"a": 1}, "l": [1]})
    assert f.mapping("m") == {"a": 1}
    assert code_of(f.mapping, "l") is ErrorCode.BAD_REQUEST
    assert code_of(f.mapping, "missing") is ErrorCode.BAD_REQUEST
    assert f.mapping("missing", optional=True) == {}


# -- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", list(Command))
def test_request_round_trip(cmd: Command) -> None:
    msg = decode_request(encode_request(42, cmd, text="hi", blob=b"\x00"))
    assert (msg.id, msg.cmd) == (42, cmd)
    assert msg.fields.text("text", 10) == "hi"
    assert msg.fields.blob("blob", 10) == b"\x00"


def test_request_id_bounds() -> None:
    assert decode_request(encode_request(MAX_REQUEST_ID, Command.PING)).id == MAX_REQUEST_ID
    assert code_of(decode_request, pack({"id": MAX_REQUEST_ID + 1, "cmd": "ping"})) is (
        ErrorCode.BAD_REQUEST)
    assert code_of(decode_request, pack({"id": -1, "cmd": "ping"})) is ErrorCode.BAD_REQUEST
    assert code_of(decode_request, pack({"id": True, "cmd": "ping"})) is ErrorCode.BAD_REQUEST
    assert code_of(decode_request, pack({"cmd": "ping"})) is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("cmd", ["nope", "PING", "", "post ", "x" * 32])
def test_unknown_command(cmd: str) -> None:
    assert code_of(decode_request, pack({"id": 1, "cmd": cmd})) is ErrorCode.UNKNOWN_COMMAND


@pytest.mark.parametrize("cmd", [1, None, b"ping", "x" * 33])
def test_command_of_wrong_type_or_size(cmd: object) -> None:
    assert code_of(decode_request, pack({"id": 1, "cmd": cmd})) is ErrorCode.BAD_REQUEST


def test_request_garbage() -> None:
    assert code_of(decode_request, b"\xff\x00") is ErrorCode.BAD_REQUEST


def test_reply_round_trip() -> None:
    m = decode_server_message(encode_reply(7, device_id="abc"))
    assert (m.re, m.push, m.ok, m.code) == (7, None, True, None)
    assert m.fields.text("device_id", 64) == "abc"


def test_error_round_trip() -> None:
    m = decode_server_message(encode_error(8, ErrorCode.PCR_MISMATCH, changed=[]))
    assert (m.re, m.ok, m.code) == (8, False, ErrorCode.PCR_MISMATCH)
    assert m.body["changed"] == []


def test_error_with_unknown_code_is_protocol() -> None:
    m = decode_server_message(pack({"re": 1, "ok": False, "code": "made_up"}))
    assert m.code is ErrorCode.PROTOCOL
    m = decode_server_message(pack({"re": 1, "ok": False}))
    assert m.code is ErrorCode.PROTOCOL


@pytest.mark.parametrize("kind", list(Push))
def test_push_round_trip(kind: Push) -> None:
    m = decode_server_message(encode_push(kind, text="x"))
    assert (m.re, m.push, m.ok, m.code) == (None, kind, True, None)
    m = decode_server_message(encode_push(kind, code=ErrorCode.LOCKED.value))
    assert (m.ok, m.code) == (False, ErrorCode.LOCKED)


def test_unknown_push_is_protocol() -> None:
    assert code_of(decode_server_message, pack({"push": "surprise"})) is ErrorCode.PROTOCOL


def test_reply_fields_are_typed() -> None:
    assert code_of(decode_server_message, pack({"re": "1", "ok": True})) is ErrorCode.BAD_REQUEST
    assert code_of(decode_server_message, pack({"re": 1, "ok": 1})) is ErrorCode.BAD_REQUEST
