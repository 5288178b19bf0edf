"""The fuzz driver itself: it counts, replays and catches what it must."""

from __future__ import annotations

import random

import pytest

from shared.errors import AttestgateError, ErrorCode
from tests.support import fuzz
from tests.support.fuzz import FuzzFailure, Mutator, run


def _bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(8))


def _forget(target: str) -> None:
    fuzz.RESULTS[:] = [r for r in fuzz.RESULTS if r.target != target]


def test_counts_results_and_our_errors() -> None:
    def check(data: bytes) -> None:
        if len(data) % 2:
            raise AttestgateError(ErrorCode.BAD_REQUEST)

    result = run("driver self-test", _bytes, check, count=500)
    _forget("driver self-test")
    assert result.inputs == 500
    assert set(result.outcomes) == {"ok", "bad_request"}
    assert sum(result.outcomes.values()) == 500


def test_any_other_exception_fails_with_the_input() -> None:
    def check(data: bytes) -> None:
        if len(data) == 5:
            raise ValueError("boom")

    with pytest.raises(FuzzFailure, match=r"raised ValueError: boom; input = bytes.fromhex"):
        run("driver self-test failing", _bytes, check, count=1000)


def test_same_seed_same_inputs() -> None:
    a = Mutator(fuzz.rng_for("x"), [b"seed one", b"another seed"])
    b = Mutator(fuzz.rng_for("x"), [b"seed one", b"another seed"])
    assert [a() for _ in range(200)] == [b() for _ in range(200)]
    c = Mutator(fuzz.rng_for("y"), [b"seed one", b"another seed"])
    assert [a() for _ in range(50)] != [c() for _ in range(50)]
