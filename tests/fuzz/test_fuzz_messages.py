"""Fuzz every application message parser: requests, replies/pushes, codec fields, bus frames."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from shared.bus import codec as bus
from shared.bus.interface import BusEvent, Reply, Request
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
from shared.wire import MAX_BUS_MESSAGE, MAX_MESSAGE, MAX_REQUEST_ID, Command, Push
from tests.support.fuzz import FUZZ_INPUTS, Mutator, run

# A loaded CI machine may run a target several times slower than its ~10-60 s here; the
# per-input hang check (tests.support.fuzz.HANG_S) is what catches a hang.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

_PCRS = {i: bytes([i]) * 32 for i in range(8)}
_BODIES: dict[Command, dict[str, Any]] = {
    Command.POST: {"text": "hello\nworld", "key": b"k" * 16, "signature": b"s" * 72},
    Command.READ: {"since": "1700000000000-0", "limit": 50},
    Command.FOLLOW: {},
    Command.UNFOLLOW: {},
    Command.STATUS: {},
    Command.PING: {"nonce": 7},
    Command.ENROLL: {"name": "dev1", "ek_public": b"\x01" * 314, "ek_cert": b"\x30" * 700,
                     "ak_public": b"\x00\x58" + b"a" * 88, "pcrs": _PCRS},
    Command.ACTIVATE: {"challenge": b"c" * 32, "mac": b"m" * 32},
    Command.ATTEST: {"attest": b"\xff\x54\x43\x47" + b"q" * 140, "signature": b"s" * 72,
                     "pcrs": _PCRS},
    Command.REATTEST: {"attest": b"q" * 145, "signature": b"s" * 72, "pcrs": {"3": b"x" * 32}},
}

# msgpack type markers and values worth inserting anywhere.
_DICTIONARY = [b"\xc0", b"\xc2", b"\xc3", b"\xc4\xff", b"\xc5\xff\xff", b"\xc6\xff\xff\xff\xff",
               b"\xd9\x20", b"\xdb\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xdd\xff\xff\xff\xff",
               b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc7\x00\x01", b"\xd4\xff\x00",
               b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
               b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00", b"\x91" * 64, b"\x81\xa2id" * 8,
               b"\xa3cmd", b"\xa2re", b"\xa4push", b"\xa4code", b"\xa2ok"]


def _request_seeds() -> list[bytes]:
    seeds = [encode_request(i, cmd, **body) for i, (cmd, body) in enumerate(_BODIES.items())]
    seeds.append(encode_request(MAX_REQUEST_ID, Command.PING))
    seeds.append(pack({"id": 1, "cmd": "nope"}))
    seeds.append(pack({"id": 1, "cmd": "post", "nested": [[[[{"a": [1, 2.5, None]}]]]]}))
    return seeds


def _server_seeds() -> list[bytes]:
    return [
        encode_reply(1, device_id="ab" * 16, name="dev1"),
        encode_reply(2, posts=[{"post_id": "1-0", "text": "t", "verified": True, "ts": 1.5}],
                     cursor="1-0"),
        encode_error(3, ErrorCode.PCR_MISMATCH,
                     diff=[{"pcr": 7, "enrolled": "00", "current": "11"}]),
        encode_error(4, ErrorCode.RATE_LIMITED),
        encode_push(Push.POST, post_id="1-0", text="hi", author="bob", verified=True),
        encode_push(Push.CLOSING, code=ErrorCode.REVOKED.value),
        encode_push(Push.REATTEST, nonce=b"n" * 32),
        encode_push(Push.REFUSED, code=ErrorCode.PCR_MISMATCH.value, diff=[]),
        pack({"re": 1, "ok": False, "code": "not-a-code"}),
    ]


def _mutator(seeds: list[bytes], max_len: int) -> Mutator:
    return Mutator(random.Random(0), seeds, max_len=max_len, dictionary=_DICTIONARY)


def _generator(gen: Mutator, oversize: int) -> Any:
    def generate(rng: random.Random) -> bytes:
        gen.rng = rng
        if rng.random() < 0.005:
            return b"\x81\xa1a\xc4" + b"\x00\x01\x00\x00" + rng.randbytes(16) * 8 + bytes(
                oversize)  # over the size limit
        return gen()
    return generate


def test_fuzz_decode_request() -> None:
    def check(data: bytes) -> None:
        msg = decode_request(data)
        assert isinstance(msg.cmd, Command) and 0 <= msg.id <= MAX_REQUEST_ID
        again = pack(dict(msg.body))  # what was accepted re-encodes to the same message
        assert pack(dict(decode_request(again).body)) == again

    gen = _mutator(_request_seeds(), MAX_MESSAGE + 64)
    assert run("messages.decode_request", _generator(gen, MAX_MESSAGE), check).inputs >= FUZZ_INPUTS


def test_fuzz_decode_server_message() -> None:
    def check(data: bytes) -> None:
        msg = decode_server_message(data)
        assert (msg.re is None) != (msg.push is None)
        assert msg.code is None or isinstance(msg.code, ErrorCode)
        assert msg.ok or msg.code is not None

    gen = _mutator(_server_seeds(), MAX_MESSAGE + 64)
    result = run("messages.decode_server_message", _generator(gen, MAX_MESSAGE), check)
    assert result.inputs >= FUZZ_INPUTS


def _read_every_field(m: dict[str, Any]) -> None:
    """Every typed accessor over every key of a decoded map: each returns or refuses."""
    f = Fields(m)
    for key in [*m, "absent"]:
        for read in (lambda k: f.text(k, 64), lambda k: f.text(k, 64, optional=True),
                     lambda k: f.blob(k, 64, min_len=1), lambda k: f.integer(k, 0, 100),
                     lambda k: f.integer(k, -5, 5, default=0), f.number, f.flag,
                     lambda k: f.pcr_map(k, 24, 32), f.mapping):
            try:
                read(key)
            except AttestgateError as exc:
                assert exc.code is ErrorCode.BAD_REQUEST


def test_fuzz_codec_unpack_map_and_fields() -> None:
    def check(data: bytes) -> None:
        m = unpack_map(data)
        assert isinstance(m, dict) and all(isinstance(k, str) for k in m)
        _read_every_field(m)

    gen = _mutator(_request_seeds() + _server_seeds(), MAX_MESSAGE + 64)
    result = run("codec.unpack_map + Fields", _generator(gen, MAX_MESSAGE), check)
    assert result.inputs >= FUZZ_INPUTS


def _bus_seeds() -> list[bytes]:
    frames: list[bus.Frame] = [
        bus.Ready("attestor"), bus.HEARTBEAT, bus.DISCONNECT,
        Request(id="gw-1-c", service="registry", op="connect",
                body={"noise_public": b"n" * 32, "ts": 5, "nested": {"a": [1, 2]}},
                deadline=1.7e9, idempotent=True),
        Request(id="gw-2-b", service="attestor", op="enroll_begin", body=dict(_BODIES[
            Command.ENROLL]), deadline=1.7e9 + 0.5, idempotent=False),
        Reply(id="gw-1-c", body={"device_id": "ab" * 16, "psk": b"p" * 32}),
        Reply(id="gw-3", body={}, error=ErrorCode.SERVICE_UNAVAILABLE),
        BusEvent(topic="post", body={"post_id": "1-0", "device_id": "d"}),
    ]
    return [bus.encode(f) for f in frames] + [bus.PREFIX + msgpack.packb([3, "x"])]


def test_fuzz_bus_codec_decode() -> None:
    def check(data: bytes) -> None:
        frame = bus.decode(data)
        again = bus.encode(frame)  # accepted frames round-trip (compared as bytes: NaN)
        assert bus.encode(bus.decode(again)) == again

    gen = Mutator(random.Random(0), _bus_seeds(), max_len=MAX_BUS_MESSAGE + 64,
                  dictionary=[*_DICTIONARY, bus.PREFIX, b"AGB\x02"])
    result = run("bus.codec.decode", _generator(gen, MAX_BUS_MESSAGE), check)
    assert result.inputs >= FUZZ_INPUTS
