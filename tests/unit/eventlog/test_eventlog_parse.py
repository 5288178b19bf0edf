"""The binary format: both layouts, EV_NO_ACTION, StartupLocality, caps, malformed input."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
from eventlog_helpers import BANKS, boot, boot_log

from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import parse_log, replay
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event, startup_locality_event
from shared.eventlog.efi import MAX_TEXT, safe_text
from shared.eventlog.fields import decode
from shared.eventlog.parse import Event


def _code(data: object) -> ErrorCode:
    with pytest.raises(AttestgateError) as e:
        parse_log(data)  # type: ignore[arg-type]
    return e.value.code


def _extend(*digests: bytes, start: bytes = bytes(32)) -> bytes:
    value = start
    for d in digests:
        value = hashlib.sha256(value + d).digest()
    return value


def test_crypto_agile_roundtrip_and_replay_by_hand() -> None:
    events = boot()
    log = parse_log(encode_log(events, BANKS))
    assert log.crypto_agile and log.banks == BANKS and len(log.events) == len(events)
    assert [(e.pcr, e.type, e.data) for e in log.events] == [
        (e.pcr, e.type, e.data) for e in events]
    pcr4 = [e.digests["sha256"] for e in events if e.pcr == 4]
    assert replay(log)["sha256"][4] == _extend(*pcr4)


def test_sha1_format_log() -> None:
    events = [measured_event(0, t.EV_S_CRTM_VERSION, b"v1\x00", ("sha1",)),
              measured_event(0, t.EV_SEPARATOR, bytes(4), ("sha1",))]
    log = parse_log(encode_log(events, ("sha1",), crypto_agile=False))
    assert not log.crypto_agile and log.banks == ("sha1",) and len(log.events) == 2
    want = bytes(20)
    for e in events:
        want = hashlib.sha1(want + e.digests["sha1"]).digest()
    assert replay(log) == {"sha1": {0: want}}


def test_no_action_is_not_extended_and_startup_locality_starts_pcr0() -> None:
    sep = measured_event(0, t.EV_SEPARATOR, bytes(4), BANKS)
    log = parse_log(encode_log([startup_locality_event(3, BANKS), sep], BANKS))
    assert log.startup_locality == 3
    assert replay(log)["sha256"][0] == _extend(sep.digests["sha256"], start=bytes(31) + b"\x03")
    assert parse_log(encode_log([sep], BANKS)).startup_locality is None


def test_two_startup_locality_events_are_refused() -> None:
    loc = startup_locality_event(3, BANKS)
    assert _code(encode_log([loc, loc], BANKS)) is ErrorCode.BAD_REQUEST


def test_unknown_event_type_is_kept_raw_with_its_number() -> None:
    odd = measured_event(12, 0x1234, b"\x01\x02", BANKS)
    (ev,) = parse_log(encode_log([odd], BANKS)).events
    assert ev.type == 0x1234 and ev.type_name == "EV_UNKNOWN_0x00001234"
    fields = decode(ev.type, ev.pcr, ev.data).fields
    assert fields["type_number"] == 0x1234 and fields["raw"] == "0102"


def test_every_truncation_is_bad_request() -> None:
    data = boot_log()
    header_end = 32 + int.from_bytes(data[28:32], "little")
    for cut in range(1, len(data)):
        try:
            log = parse_log(data[:cut])
        except AttestgateError as e:
            assert e.code is ErrorCode.BAD_REQUEST, cut
        else:  # a cut on an event boundary is a shorter, valid log
            assert cut >= header_end and len(log.events) < len(boot())


def test_inputs_of_the_wrong_kind() -> None:
    assert _code(b"") is ErrorCode.BAD_REQUEST
    assert _code("text") is ErrorCode.BAD_REQUEST
    assert _code(bytes(t.MAX_LOG_BYTES + 1)) is ErrorCode.TOO_LARGE
    assert parse_log(bytearray(boot_log())).events == parse_log(memoryview(boot_log())).events


def test_event_count_cap() -> None:
    sep = measured_event(8, t.EV_SEPARATOR, bytes(4), ("sha256",))
    ok = encode_log([sep] * t.MAX_EVENTS, ("sha256",))
    assert len(parse_log(ok).events) == t.MAX_EVENTS
    assert _code(encode_log([sep] * (t.MAX_EVENTS + 1), ("sha256",))) is ErrorCode.TOO_LARGE


def test_event_data_cap_is_checked_before_reading() -> None:
    head = encode_log([], ("sha256",))
    big = struct.pack("<IIIH", 8, t.EV_IPL, 1, 0x000B) + bytes(32) + struct.pack("<I", 2**31)
    assert _code(head + big) is ErrorCode.TOO_LARGE
    fits = struct.pack("<IIIH", 8, t.EV_IPL, 1, 0x000B) + bytes(32) + struct.pack("<I", 100)
    assert _code(head + fits) is ErrorCode.BAD_REQUEST  # claims more than there is


def test_digest_list_must_match_the_header() -> None:
    head = encode_log([], BANKS)
    one = struct.pack("<III", 8, t.EV_IPL, 1) + struct.pack("<H", 0x000B) + bytes(32)
    assert _code(head + one + struct.pack("<I", 0)) is ErrorCode.BAD_REQUEST
    twice = struct.pack("<III", 8, t.EV_IPL, 2) + (struct.pack("<H", 0x000B) + bytes(32)) * 2
    assert _code(head + twice + struct.pack("<I", 0)) is ErrorCode.BAD_REQUEST
    # banks in another order than the header's are fine
    swapped = (struct.pack("<III", 8, t.EV_IPL, 2) + struct.pack("<H", 0x000B) + bytes(32)
               + struct.pack("<H", 0x0004) + bytes(20) + struct.pack("<I", 0))
    (ev,) = parse_log(head + swapped).events
    assert ev.digests == {"sha256": bytes(32), "sha1": bytes(20)}


def test_spec_id_header_is_checked() -> None:
    good = encode_log([], ("sha256",))
    wrong_size = good.replace(struct.pack("<HH", 0x000B, 32), struct.pack("<HH", 0x000B, 20))
    assert _code(wrong_size) is ErrorCode.BAD_REQUEST
    no_algs = good.replace(struct.pack("<I", 1) + struct.pack("<HH", 0x000B, 32),
                           struct.pack("<I", 0) + struct.pack("<HH", 0x000B, 32))
    assert _code(no_algs) is ErrorCode.BAD_REQUEST
    assert _code(good[:-1] + b"\x05") is ErrorCode.BAD_REQUEST  # vendorInfoSize beyond the event


def test_pcr_index_beyond_23_is_refused() -> None:
    ev = Event(0, 24, t.EV_IPL, {"sha256": bytes(32)}, b"")
    assert _code(encode_log([ev], ("sha256",))) is ErrorCode.BAD_REQUEST


def test_unknown_bank_in_header_is_parsed_not_replayed() -> None:
    head = encode_log([], ("sha256",)).replace(struct.pack("<I", 1) + struct.pack("<HH", 11, 32),
                                               struct.pack("<I", 1) + struct.pack("<HH", 0x12, 32))
    ev = struct.pack("<IIIH", 8, t.EV_IPL, 1, 0x12) + bytes(32) + struct.pack("<I", 0)
    log = parse_log(head + ev)
    assert log.banks == ("alg_0x0012",) and replay(log) == {}


def test_safe_text_escapes_exactly_the_non_printable_characters() -> None:
    """Whichever fast path takes a string (plain, newlines, binary read as text, rare
    non-printables beyond U+00FF), the result is the one-character-at-a-time rule."""
    def rule(text: str) -> str:
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT] + "…"
        return "".join(c if c.isprintable() else
                       f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                       for c in text)

    rng = random.Random(7)
    pools = [range(128), range(256), range(0x3000), [0x2028, 0xFEFF, 0xAD, 0xA0, 0xFFFD, 10, 0]]
    for _ in range(20_000):
        pool = rng.choice(pools)
        text = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(0, 40)))
        assert safe_text(text) == rule(text), text
    binary = bytes(rng.randrange(256) for _ in range(5000)).decode("latin-1")
    assert safe_text(binary) == rule(binary)
