"""A small deterministic fuzz driver: seeded mutations of valid inputs, one invariant.

Hypothesis shrinks beautifully but runs a few hundred examples a second; a parser
needs 100,000 inputs here, so this driver trades shrinking for speed:

* ``Mutator`` turns valid seeds into inputs with bit flips, interesting bytes,
  byte inserts/deletes, truncation, length-field tweaks (u8/u16/u32 big-endian),
  chunk duplication and splicing with another seed, or gives purely random bytes;
* ``run`` feeds ``count`` inputs to a target and checks the invariant every
  attestgate parser promises: any input gives a result or an ``AttestgateError``
  with a code from ``shared.errors`` — never another exception. It also records
  the slowest input (a hang shows there) and the process's RSS growth.

Everything is seeded from ``ATTESTGATE_FUZZ_SEED`` (default 0) and the target's
name, so a failure names the seed and the input index and replays exactly.
``ATTESTGATE_FUZZ_INPUTS`` (default 100000) sets the count per target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared.bus.interface import Reply
from shared.codec import pack, unpack_map
from shared.errors import ALL_CODES, AttestgateError, ErrorCode

T = TypeVar("T")

DEFAULT_INPUTS = 100_000
FUZZ_INPUTS = int(os.environ.get("ATTESTGATE_FUZZ_INPUTS", str(DEFAULT_INPUTS)))
FUZZ_SEED = int(os.environ.get("ATTESTGATE_FUZZ_SEED", "0"))

# -- resource bounds (the invariant's "never a hang, bounded memory") -------------------
# One input of at most a few KiB must never take seconds: anything this slow is a hang
# (quadratic or worse behaviour), not scheduling noise on a loaded machine.
HANG_S = 5.0
# RSS may grow by allocator caches and interned objects, not by the inputs fed.
MAX_RSS_GROWTH = 64 * 1024 * 1024

INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF)
INTERESTING_16 = (0x0000, 0x0001, 0x0002, 0x0010, 0x0020, 0x0040, 0x007F, 0x0080, 0x00FF,
                  0x0100, 0x0400, 0x1000, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_32 = (0, 1, 2, 16, 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def rng_for(target: str) -> random.Random:
    """The deterministic random source of one target."""
    digest = hashlib.sha256(f"{FUZZ_SEED}/{target}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Mutator:
    """Generates inputs from ``seeds``: mostly stacked mutations, some pure noise.

    ``max_len`` caps what is generated (the parsers' own size limits are tested by
    seeds and by ``grow``, which can push past them). ``dictionary`` holds byte
    strings worth inserting (magic values, tags, valid sub-structures).
    """

    def __init__(self, rng: random.Random, seeds: Sequence[bytes], *, max_len: int = 4096,
                 dictionary: Sequence[bytes] = (), random_share: float = 0.05) -> None:
        if not seeds:
            raise ValueError("a mutator needs at least one seed")
        self.rng = rng
        self.seeds = list(seeds)
        self.max_len = max_len
        self.dictionary = list(dictionary)
        self.random_share = random_share
        self._ops: list[Callable[[bytearray], None]] = [
            self._flip_bit, self._flip_bit, self._set_byte, self._set_byte, self._insert,
            self._delete, self._truncate, self._extend, self._length_u16, self._length_u16,
            self._length_u8, self._length_u32, self._duplicate, self._splice, self._word,
        ]
        if self.dictionary:
            self._ops.append(self._insert_token)

    def random_bytes(self) -> bytes:
        n = self.rng.choice((0, 1, 2, 3, 6, 8, 16, 32, 48, 64, 96, 128, 256, 1024))
        return self.rng.randbytes(self.rng.randrange(n + 1))

    def __call__(self) -> bytes:
        return self.generate()

    def generate(self) -> bytes:
        if self.rng.random() < self.random_share:
            return self.random_bytes()
        return self.mutate(self.rng.choice(self.seeds))

    def mutate(self, seed: bytes, rounds: int | None = None) -> bytes:
        data = bytearray(seed)
        for _ in range(rounds or self.rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
            self.rng.choice(self._ops)(data)
        if len(data) > self.max_len:
            del data[self.max_len:]
        return bytes(data)

    # -- operators -------------------------------------------------------------------
    def _pos(self, data: bytearray, extra: int = 0) -> int:
        return self.rng.randrange(len(data) + extra) if len(data) + extra > 0 else 0

    def _flip_bit(self, data: bytearray) -> None:
        if data:
            data[self._pos(data)] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, data: bytearray) -> None:
        if data:
            data[self._pos(data)] = self.rng.choice((*INTERESTING_8, self.rng.randrange(256)))

    def _insert(self, data: bytearray) -> None:
        at = self._pos(data, 1)
        data[at:at] = self.rng.randbytes(self.rng.choice((1, 1, 2, 4, 16, 64)))

    def _insert_token(self, data: bytearray) -> None:
        at = self._pos(data, 1)
        token = self.rng.choice(self.dictionary)
        if self.rng.random() < 0.5 and len(data) >= at + len(token):
            data[at:at + len(token)] = token  # overwrite
        else:
            data[at:at] = token

    def _delete(self, data: bytearray) -> None:
        if data:
            at = self._pos(data)
            del data[at:at + self.rng.choice((1, 1, 2, 4, 16, 64))]

    def _truncate(self, data: bytearray) -> None:
        del data[self._pos(data, 1):]

    def _extend(self, data: bytearray) -> None:
        data += self.rng.randbytes(self.rng.choice((1, 2, 8, 32, 256)))

    def _write_length(self, data: bytearray, width: int, interesting: Sequence[int]) -> None:
        if len(data) < width:
            return
        at = self.rng.randrange(len(data) - width + 1)
        old = int.from_bytes(data[at:at + width], "big")
        limit = (1 << (8 * width)) - 1
        choice = self.rng.random()
        if choice < 0.4:
            new = old + self.rng.choice((-2, -1, 1, 2, 16, -16))
        elif choice < 0.6:
            new = len(data) - at - width + self.rng.choice((-1, 0, 1))  # "rest of the buffer"
        else:
            new = self.rng.choice(interesting)
        data[at:at + width] = (new & limit).to_bytes(width, "big")

    def _length_u8(self, data: bytearray) -> None:
        self._write_length(data, 1, INTERESTING_8)

    def _length_u16(self, data: bytearray) -> None:
        self._write_length(data, 2, INTERESTING_16)

    def _length_u32(self, data: bytearray) -> None:
        self._write_length(data, 4, INTERESTING_32)

    def _word(self, data: bytearray) -> None:
        if len(data) >= 2:
            at = self.rng.randrange(len(data) - 1)
            data[at:at + 2] = self.rng.randrange(1 << 16).to_bytes(2, "big")

    def _duplicate(self, data: bytearray) -> None:
        if data:
            a = self._pos(data)
            chunk = data[a:a + self.rng.choice((1, 4, 16, 64, 512))]
            at = self._pos(data, 1)
            data[at:at] = chunk

    def _splice(self, data: bytearray) -> None:
        other = self.rng.choice(self.seeds)
        if not other:
            return
        cut_here = self._pos(data, 1)
        cut_there = self.rng.randrange(len(other))
        data[cut_here:] = other[cut_there:]


# -- the driver ------------------------------------------------------------------------


@dataclass
class FuzzResult:
    target: str
    inputs: int
    seconds: float
    outcomes: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    rss_growth: int = 0

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "inputs": self.inputs, "seconds": round(self.seconds, 2),
                "inputs_per_s": round(self.per_second), "slowest_ms": round(
                    self.slowest_s * 1000, 2), "rss_growth_kib": self.rss_growth // 1024,
                "outcomes": dict(self.outcomes.most_common())}


RESULTS: list[FuzzResult] = []


class FuzzFailure(AssertionError):
    pass


def _show(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"bytes.fromhex({bytes(value).hex()!r})"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return repr(value)[:4000]


def run(target: str, generate: Callable[[random.Random], T], check: Callable[[T], object], *,
        count: int = FUZZ_INPUTS) -> FuzzResult:
    """Feed ``count`` generated inputs to ``check``; enforce the invariant; record the run.

    ``generate(rng)`` makes one input from the target's seeded random source;
    ``check(input)`` runs the code under test and may assert further properties
    (a differential check, say). A result or an ``AttestgateError`` carrying a
    known code is fine; anything else fails with the input spelled out for a
    regression test.
    """
    rng = rng_for(target)
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    rss_before = rss_bytes()
    started = time.perf_counter()
    clock = time.perf_counter
    executed = 0  # counted apart from the loop: the caller asserts what really ran
    for index in range(count):
        data = generate(rng)
        t0 = clock()
        try:
            check(data)
        except AttestgateError as exc:
            if not isinstance(exc.code, ErrorCode) or exc.code.value not in ALL_CODES:
                raise FuzzFailure(f"{target}: input #{index} (seed {FUZZ_SEED}) raised an "
                                  f"AttestgateError with an unknown code {exc.code!r}: "
                                  f"{_show(data)}") from exc
            outcomes[exc.code.value] += 1
        except Exception as exc:
            raise FuzzFailure(f"{target}: input #{index} (seed {FUZZ_SEED}) raised "
                              f"{type(exc).__name__}: {exc}; input = {_show(data)}") from exc
        else:
            outcomes["ok"] += 1
        executed += 1
        spent = clock() - t0
        if spent > slowest:
            slowest = spent
            if spent > HANG_S:
                raise FuzzFailure(f"{target}: input #{index} took {spent:.1f} s (a hang); "
                                  f"input = {_show(data)}")
    result = FuzzResult(target, executed, time.perf_counter() - started, outcomes, slowest,
                        rss_bytes() - rss_before)
    assert sum(outcomes.values()) == executed
    RESULTS.append(result)
    if result.rss_growth > MAX_RSS_GROWTH:
        raise FuzzFailure(f"{target}: RSS grew by {result.rss_growth // 2**20} MiB "
                          f"over {count} inputs")
    return result


def summary_table(results: Sequence[FuzzResult]) -> list[str]:
    """Lines of a plain-text table of ``results`` and their total time."""
    lines = [f"{'target':<34} {'inputs':>9} {'seconds':>8} {'inputs/s':>9} {'slowest ms':>10}"
             f" {'rss +KiB':>9}  top outcomes"]
    for r in results:
        top = ", ".join(f"{k}={v}" for k, v in r.outcomes.most_common(3))
        lines.append(f"{r.target:<34} {r.inputs:>9} {r.seconds:>8.1f} {r.per_second:>9.0f} "
                     f"{r.slowest_s * 1000:>10.1f} {r.rss_growth // 1024:>9}  {top}")
    total_inputs = sum(r.inputs for r in results)
    total_s = sum(r.seconds for r in results)
    lines.append(f"{'total':<34} {total_inputs:>9} {total_s:>8.1f}")
    return lines


# -- request bodies ----------------------------------------------------------------------

# Values of the wrong type (or edge values) a peer may put in any field.
OTHER_VALUES: tuple[Any, ...] = (None, True, 0, -1, 2**64 - 1, 1.5, float("nan"), "", "x" * 70,
                                 b"", b"\x00" * 33, [], {}, {"0": b"\x00" * 32}, [b"a"], {1: b"x"})
INTERESTING_INTS = (0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63))


class BodyMutator:
    """Mutates a request body (a str-keyed map) the way a peer could: one field's bytes,
    text, number, type or presence, or the msgpack encoding of the whole body."""

    def __init__(self, bodies: Sequence[dict[str, Any]]) -> None:
        self.bodies = list(bodies)
        blobs = [v for b in bodies for v in b.values() if isinstance(v, bytes) and v]
        self.bytes = Mutator(random.Random(0), blobs or [b"\x00"], max_len=4096 + 16)
        self.packed = Mutator(random.Random(0), [pack(b) for b in bodies], max_len=64 * 1024)

    def __call__(self, rng: random.Random) -> dict[str, Any]:
        self.bytes.rng = self.packed.rng = rng
        body = dict(rng.choice(self.bodies))
        roll = rng.random()
        if roll < 0.05:  # the encoded body, as the bus would carry mutated bytes
            with contextlib.suppress(AttestgateError):  # undecodable: the bus drops it
                return unpack_map(self.packed.generate(), max_size=1 << 20)
            roll = rng.random()
        if not body:
            return {rng.choice(("id", "x", "")): rng.choice(OTHER_VALUES)}
        key = rng.choice(sorted(body))
        value = body[key]
        if roll < 0.2:
            del body[key]
        elif roll < 0.3:
            body[key] = rng.choice(OTHER_VALUES)
        elif isinstance(value, bytes):
            body[key] = self.bytes.mutate(value)
        elif isinstance(value, str):
            body[key] = self.bytes.mutate(value.encode()).decode("utf-8", "replace")
        elif isinstance(value, int) and not isinstance(value, bool):
            body[key] = rng.choice((*INTERESTING_INTS, value + 1, value - 1))
        elif isinstance(value, dict) and value:
            inner = dict(value)
            k = rng.choice(sorted(inner))
            choice = rng.random()
            if choice < 0.4 and isinstance(inner[k], bytes):
                inner[k] = self.bytes.mutate(inner[k])
            elif choice < 0.6:
                del inner[k]
            else:
                inner[rng.choice(("24", "99", "-1", "07", "x", k + "0"))] = inner[k]
            body[key] = inner
        else:
            body[key] = rng.choice(OTHER_VALUES)
        return body


def check_reply(reply: Reply) -> None:
    """A handler's reply is a Reply whose body can go on the bus."""
    assert isinstance(reply, Reply)
    pack(dict(reply.body))
