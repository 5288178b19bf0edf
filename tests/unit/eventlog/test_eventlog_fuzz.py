"""Fuzzing the event-log parser, decoders, verifier, diff and JSON view.

Invariant: for any bytes, a result or our own error (BAD_REQUEST / TOO_LARGE), nothing else.
Inputs: mutated real logs (windows of a few events, and some whole logs), a synthetic boot,
structured random events after a valid header, pure random bytes, and mutated event data fed
to each decoder by type. ATTESTGATE_FUZZ_INPUTS sets the count (default 100 000);
ATTESTGATE_FUZZ_SEED the random seed.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
from eventlog_helpers import BANKS, EVENTLOGS, REAL_LOGS, boot, real_log

from client.eventlog_view import Examined, to_json
from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import MachineState, diff_states, parse_log, replay, verify
from shared.eventlog import types as t
from shared.eventlog.build import encode_log
from shared.eventlog.fields import decode
from shared.eventlog.parse import Event

pytestmark = pytest.mark.fuzz

OUR_CODES = {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE}
BOUNDARY = (0, 1, 2, 4, 16, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def _seeds() -> tuple[list[bytes], list[bytes], list[Event]]:
    """(small logs, whole logs, events) to mutate."""
    synthetic = boot()
    small = [encode_log(synthetic, BANKS), encode_log(synthetic[:4], ("sha256",))]
    whole = [encode_log(synthetic, BANKS)]
    events = list(synthetic)
    if EVENTLOGS.is_dir():
        rng = random.Random(1)
        for name in REAL_LOGS:
            data = real_log(name)
            log = parse_log(data)
            whole.append(data)
            events += log.events
            for _ in range(12):
                start = rng.randrange(len(log.events))
                window = log.events[start : start + rng.randint(1, 6)]
                small.append(encode_log(window, log.banks, log.crypto_agile))
    return small, whole, events


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and len(b) >= 4:  # a boundary length/count/type
            pos = rng.randrange(len(b) - 3)
            b[pos : pos + 4] = struct.pack("<I", rng.choice((*BOUNDARY, len(b))))
        elif op == 2:  # insert random bytes
            b[pos:pos] = rng.randbytes(rng.randint(1, 40))
        elif op == 3:  # delete a range
            del b[pos : pos + rng.randint(1, 64)]
        elif op == 4:  # truncate
            del b[pos:]
        elif op == 5 and b:  # duplicate a range
            end = min(len(b), pos + rng.randint(1, 200))
            b[end:end] = b[pos:end]
        else:  # splice another seed's tail
            other = rng.choice(pool)
            b[pos:] = other[rng.randrange(len(other) + 1):]
    return bytes(b)


def _structured(rng: random.Random) -> bytes:
    """A valid header, then events with plausible but random fields."""
    banks = rng.choice([("sha256",), BANKS, ("sha1", "sha256", "sha384")])
    events = []
    for _ in range(rng.randint(0, 6)):
        etype = rng.choice([*t.EVENT_NAMES, rng.randrange(2**32)])
        digests = {b: rng.randbytes(t.SIZE_BY_NAME[b]) for b in banks}
        data = rng.randbytes(rng.randint(0, 80))
        events.append(Event(0, rng.randrange(24), etype, digests, data))
    return encode_log(events, banks)


def _check_log(data: bytes, quoted: dict[str, dict[int, bytes]] | None,
               base: MachineState, render: bool) -> None:
    try:
        state = verify(data, quoted)
    except AttestgateError as exc:
        assert exc.code in OUR_CODES, exc
        return
    diff_states(base, state)
    if render:
        json.dumps(to_json("fuzz", Examined(state, state.replayed), None), sort_keys=True)


def test_fuzz_event_log(tmp_path: Path) -> None:
    count = int(os.environ.get("ATTESTGATE_FUZZ_INPUTS", "100000"))
    rng = random.Random(int(os.environ.get("ATTESTGATE_FUZZ_SEED", "20261201")))
    small, whole, events = _seeds()
    base_log = encode_log(boot(), BANKS)
    base = verify(base_log, replay(parse_log(base_log)))
    honest = replay(parse_log(base_log))
    types = sorted(t.EVENT_NAMES)
    for i in range(count):
        kind = rng.random()
        data = b""
        try:
            if kind < 0.20:  # a decoder by type, on mutated real event data
                ev = rng.choice(events)
                data = _mutate(rng, ev.data, [e.data for e in events[:50]]) if ev.data else b""
                etype = ev.type if rng.random() < 0.5 else rng.choice(types)
                decode(etype, ev.pcr, data)
            elif kind < 0.27:
                data = _structured(rng)
                _check_log(data, honest if rng.random() < 0.5 else None, base, i % 7 == 0)
            elif kind < 0.32:
                data = rng.randbytes(rng.randint(0, 300))
                _check_log(data, None, base, False)
            elif kind < 0.325:  # a whole real log, mutated
                data = _mutate(rng, rng.choice(whole), small)
                _check_log(data, honest, base, True)
            else:
                data = _mutate(rng, rng.choice(small), small)
                _check_log(data, honest if rng.random() < 0.5 else None, base, i % 11 == 0)
        except Exception:
            (tmp_path / "crash.bin").write_bytes(data)
            pytest.fail(f"input {i} (kind {kind:.3f}, {len(data)} B, saved to "
                        f"{tmp_path / 'crash.bin'}) raised something else than our error:\n"
                        f"{data[:200].hex()}", pytrace=True)
