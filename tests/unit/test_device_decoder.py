"""serialize.DeviceDecoder: a worker's memory of device records gives exactly what
``device_from_bytes`` gives for every byte string (or the same error), and only the
attestation state is decoded again when only it changed."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
import pytest
from device_builders import NOW, make_device

from shared.errors import AttestgateError
from shared.records import Baseline, Device, DeviceStatus
from shared.store.serialize import DeviceDecoder, device_from_bytes, device_to_bytes
from shared.tpm.pcrs import PcrChange


def _record() -> Device:
    return dataclasses.replace(make_device().record, ek_cert=b"\x30" * 900,
                               last_eventlog='{"changed":[]}')


def _same(decoder: DeviceDecoder, key: str, raw: bytes) -> Device | None:
    """decoder.decode(raw) and device_from_bytes(raw) agree: equal records, or the same
    error code."""
    try:
        expected: Device | AttestgateError = device_from_bytes(raw)
    except AttestgateError as exc:
        expected = exc
    try:
        got = decoder.decode(key, raw)
    except AttestgateError as exc:
        assert isinstance(expected, AttestgateError), f"decoder refused: {exc}"
        assert exc.code is expected.code
        return None
    assert got == expected
    return got


STATE_CHANGES = [
    {"failures": 3},
    {"last_attest_at": NOW + 1},
    {"last_reset_count": 7, "last_clock": 123_456},
    {"last_diff": (PcrChange(3, b"\1" * 32, b"\2" * 32),)},
    {"last_refused": Baseline.of("sha256:0,1", {0: b"\3" * 32, 1: b"\4" * 32}, "ab" * 32)},
    {"failures": 0, "last_eventlog": '{"other":1}'},
]


@pytest.mark.parametrize("change", STATE_CHANGES)
def test_a_new_attestation_state_is_decoded_without_parsing_the_record_again(change: dict[str, Any]
                                                                               ) -> None:
    d = _record()
    decoder = DeviceDecoder(8)
    assert decoder.decode("k", device_to_bytes(d)) == d
    parsed = decoder.parsed
    new = dataclasses.replace(d, **change)
    assert _same(decoder, "k", device_to_bytes(new)) == new
    assert decoder.parsed == parsed
    assert _same(decoder, "k", device_to_bytes(d)) == d  # and back


RECORD_CHANGES = [
    {"status": DeviceStatus.REVOKED},
    {"status": DeviceStatus.LOCKED},
    {"status": DeviceStatus.REENROLL},
    {"psk_sealed": b"\x99" * 60},
    {"name": "renamed"},
    {"noise_public": b"\x05" * 32},
    {"ak_public": b"other ak"},
    {"post_public": b"other post key"},
    {"baselines": (Baseline.of("sha256:0", {0: b"\7" * 32}),)},
]


@pytest.mark.parametrize("change", RECORD_CHANGES)
def test_a_change_to_what_a_connect_reads_is_seen_at_once(change: dict[str, Any]) -> None:
    """Revocation, lock, a new PSK, key or name: the very next decode has it."""
    d = _record()
    decoder = DeviceDecoder(8)
    decoder.decode("k", device_to_bytes(d))
    attested = dataclasses.replace(d, last_attest_at=NOW + 5, last_clock=99)
    decoder.decode("k", device_to_bytes(attested))
    new = dataclasses.replace(attested, **change, failures=2)
    got = _same(decoder, "k", device_to_bytes(new))
    assert got == new
    for field, value in change.items():
        assert getattr(got, field) == value


def test_what_this_process_wrote_is_the_base_of_the_next_decode() -> None:
    d = _record()
    decoder = DeviceDecoder(8)
    decoder.store("k", device_to_bytes(d), d)
    assert decoder.last("k") == (device_to_bytes(d), d)
    new = dataclasses.replace(d, failures=1)
    assert _same(decoder, "k", device_to_bytes(new)) == new
    assert decoder.parsed == 0
    decoder.forget("k")
    assert decoder.last("k") is None


def _pairs(d: Device) -> list[tuple[str, object]]:
    return list(msgpack.unpackb(device_to_bytes(d)).items())


def _map(pairs: list[tuple[str, object]]) -> bytes:
    out = bytearray()
    n = len(pairs)
    out += bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    for k, v in pairs:
        out += msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
    return bytes(out)


def test_records_laid_out_otherwise_are_parsed_whole_and_agree() -> None:
    d = _record()
    pairs = _pairs(d)
    decoder = DeviceDecoder(8)
    decoder.decode("k", device_to_bytes(d))
    state_at = [k for k, _ in pairs].index("failures")
    revoked = [(k, "revoked" if k == "status" else v) for k, v in pairs]
    variants = [
        # a state key repeated at the end overrides the first (msgpack maps: last wins)
        _map([*pairs[:-1], ("failures", 9)]),
        # a record key repeated among the state: it must win as in a whole parse
        _map([*pairs[:-1], ("status", "revoked")]),
        _map([*revoked[:-1], ("status", "active")]),
        # the state first, the record after
        _map(pairs[state_at:] + pairs[:state_at]),
        # an unknown key among the state
        _map([*pairs[:-1], ("extra", 1)]),
        device_to_bytes(d) + b"\xc0",  # trailing byte
        device_to_bytes(d)[:-3],  # truncated
        _map([(k, "x" if k == "failures" else v) for k, v in pairs]),  # wrong type
        _map([(k, 1 << 40 if k == "failures" else v) for k, v in pairs]),  # out of range
        _map([k_v for k_v in pairs if k_v[0] != "clock"]),  # missing state field
    ]
    variants.append(device_to_bytes(dataclasses.replace(d, last_eventlog="")))  # one key less
    for raw in variants:
        _same(decoder, "k", raw)
        _same(decoder, "k", device_to_bytes(d))


def test_any_mutation_of_a_record_decodes_as_a_whole_parse_would() -> None:
    rng = random.Random(10)
    d = _record()
    base = device_to_bytes(dataclasses.replace(d, last_refused=Baseline.of(
        "sha256:0", {0: b"\1" * 32}), last_diff=(PcrChange(0, b"\1" * 32, None),)))
    decoder = DeviceDecoder(8)
    for i in range(3000):
        raw = bytearray(base)
        # mostly in the state at the end, where a decode reuses the rest
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw)) if i % 4 == 0 else rng.randrange(len(raw) - 200,
                                                                           len(raw))
            raw[at] = rng.randrange(256)
        if i % 7 == 0:
            raw = raw[: rng.randrange(len(raw))]
        _same(decoder, "k", base)
        _same(decoder, "k", bytes(raw))


def test_the_memory_is_bounded() -> None:
    decoder = DeviceDecoder(2)
    records = [make_device(f"d{i}").record for i in range(3)]
    for i, r in enumerate(records):
        decoder.decode(str(i), device_to_bytes(r))
    assert decoder.last("0") is None
    assert decoder.last("2") is not None
