"""The gateway's admission policy (pure, the clock a parameter): token buckets, lanes,
bounded queues, openings with eviction, known keys, the per-device session cap."""

from __future__ import annotations

import pytest

from services.gateway.admission import (
    Admission,
    AdmissionLimits,
    DeviceSessions,
    KnownKeys,
    Lane,
    TokenBuckets,
    Verdict,
)

A, B = "198.51.100.1", "198.51.100.2"


def small(**kw: float) -> Admission:
    base: dict[str, float] = dict(max_slots=4, max_anonymous_slots=2, max_anonymous_per_address=2,
                                  max_waiting=2, max_openings=6, max_openings_per_address=3,
                                  rate=20.0, burst=5.0, max_buckets=100)
    base.update(kw)
    return Admission(AdmissionLimits(**base))  # type: ignore[arg-type]


# -- token bucket ---------------------------------------------------------------------------------


def test_bucket_gives_a_burst_then_the_rate() -> None:
    b = TokenBuckets(rate=20.0, burst=5.0, max_buckets=10)
    assert [b.take(A, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.take(A, 0.049) is False  # not yet a whole token
    assert b.take(A, 0.05) is True  # 1/20 s later: one token
    assert b.take(A, 0.05) is False
    assert b.take(B, 0.05) is True  # addresses do not share


def test_bucket_refill_is_capped_at_the_burst() -> None:
    b = TokenBuckets(rate=20.0, burst=5.0, max_buckets=10)
    for _ in range(5):
        b.take(A, 0.0)
    assert sum(b.take(A, 1000.0) for _ in range(10)) == 5


def test_bucket_table_is_bounded() -> None:
    b = TokenBuckets(rate=1.0, burst=1.0, max_buckets=3)
    for i in range(10):
        b.take(f"10.0.0.{i}", 0.0)
    assert len(b) == 3


def test_clock_going_backwards_gives_nothing() -> None:
    b = TokenBuckets(rate=20.0, burst=1.0, max_buckets=10)
    assert b.take(A, 10.0) and not b.take(A, 5.0)


# -- lanes and slots ------------------------------------------------------------------------------


def test_anonymous_is_rate_limited_per_address_priority_is_not() -> None:
    adm = small(burst=1.0, max_slots=100, max_anonymous_slots=100, max_anonymous_per_address=100)
    assert adm.admit(Lane.ANONYMOUS, A, 0.0)[0] is Verdict.ADMIT
    assert adm.admit(Lane.ANONYMOUS, A, 0.0)[0] is Verdict.RATE_LIMITED
    assert adm.admit(Lane.ANONYMOUS, B, 0.0)[0] is Verdict.ADMIT
    assert all(adm.admit(Lane.PRIORITY, A, 0.0)[0] is Verdict.ADMIT for _ in range(10))


def test_anonymous_cannot_take_the_slots_reserved_for_devices() -> None:
    adm = small(max_anonymous_per_address=10)
    assert [adm.admit(Lane.ANONYMOUS, A, 0.0)[0] for _ in range(3)] == [
        Verdict.ADMIT, Verdict.ADMIT, Verdict.WAIT]
    assert adm.in_use == (2, 2)
    assert adm.admit(Lane.PRIORITY, B, 0.0)[0] is Verdict.ADMIT
    assert adm.admit(Lane.PRIORITY, B, 0.0)[0] is Verdict.ADMIT
    assert adm.in_use == (4, 2)


def test_per_address_cap_among_anonymous() -> None:
    adm = small(max_anonymous_slots=4, max_anonymous_per_address=1)
    assert adm.admit(Lane.ANONYMOUS, A, 0.0)[0] is Verdict.ADMIT
    assert adm.admit(Lane.ANONYMOUS, A, 0.0)[0] is Verdict.WAIT
    assert adm.admit(Lane.ANONYMOUS, B, 0.0)[0] is Verdict.ADMIT  # another address still gets in


def test_queue_is_bounded_then_busy() -> None:
    adm = small(max_slots=1)
    assert adm.admit(Lane.PRIORITY, A, 0.0)[0] is Verdict.ADMIT
    assert [adm.admit(Lane.PRIORITY, A, 0.0)[0] for _ in range(3)] == [
        Verdict.WAIT, Verdict.WAIT, Verdict.BUSY]
    assert adm.waiting(Lane.PRIORITY) == 2


def test_release_serves_devices_before_anonymous() -> None:
    adm = small(max_slots=2, max_anonymous_slots=2)
    _, held1 = adm.admit(Lane.ANONYMOUS, A, 0.0)
    _, held2 = adm.admit(Lane.ANONYMOUS, B, 0.0)
    _, anon = adm.admit(Lane.ANONYMOUS, B, 0.0)
    _, dev = adm.admit(Lane.PRIORITY, A, 0.0)
    assert held1 and held2 and anon and dev and not anon.granted and not dev.granted
    assert adm.release(held1) == [dev]  # the device, although it came later
    assert dev.granted and not anon.granted
    assert adm.release(held2) == [anon]


def test_cancel_leaves_the_queue_unless_already_granted() -> None:
    adm = small(max_slots=1)
    _, held = adm.admit(Lane.PRIORITY, A, 0.0)
    _, late = adm.admit(Lane.PRIORITY, A, 0.0)
    _, gone = adm.admit(Lane.PRIORITY, A, 0.0)
    assert held and late and gone
    assert adm.cancel(gone) is True and adm.waiting(Lane.PRIORITY) == 1
    assert adm.release(held) == [late]
    assert adm.cancel(late) is False  # granted meanwhile: the caller must release it
    assert adm.release(late) == []
    assert adm.in_use == (0, 0)


def test_slots_balance_after_any_sequence() -> None:
    adm = small()
    tickets = []
    for i in range(20):
        lane = Lane.PRIORITY if i % 3 == 0 else Lane.ANONYMOUS
        v, t = adm.admit(lane, f"10.0.0.{i % 4}", float(i))
        if v is Verdict.ADMIT:
            tickets.append(t)
        elif v is Verdict.WAIT:
            assert t is not None
            if i % 2:
                adm.cancel(t)
            else:
                tickets.append(t)
    while any(t is not None and t.granted for t in tickets):
        for t in list(tickets):
            if t is not None and t.granted:
                tickets.remove(t)
                adm.release(t)
    assert adm.in_use == (0, 0)


# -- openings -------------------------------------------------------------------------------------


def test_openings_evict_the_oldest_of_the_same_address() -> None:
    adm = small(max_openings=100, max_openings_per_address=3)
    assert [adm.open(i, A) for i in range(3)] == [[], [], []]
    assert adm.open(3, A) == [0]  # the newcomer stays, the oldest goes
    assert adm.open(4, B) == []
    adm.opened(0, A)  # an evicted connection finishing later changes nothing
    assert adm.openings == 4


def test_openings_full_evicts_from_the_heaviest_address() -> None:
    adm = small(max_openings=4, max_openings_per_address=10)
    for i in range(3):
        adm.open(i, A)
    adm.open(10, B)
    assert adm.open(11, B) == [0]  # A holds the most: its oldest goes, not B's newcomer
    assert adm.openings == 4


def test_opened_frees_the_place() -> None:
    adm = small()
    adm.open(1, A)
    adm.opened(1, A)
    assert adm.openings == 0
    adm.opened(1, A)
    assert adm.openings == 0


# -- known keys and per-device sessions -----------------------------------------------------------


def test_known_key_with_a_newer_timestamp_is_priority() -> None:
    known = KnownKeys(capacity=2)
    k1, k2, k3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert known.lane(k1, 5) is Lane.ANONYMOUS  # never seen accepted
    known.learn(k1, 5, "d1")
    assert known.lane(k1, 6) is Lane.PRIORITY
    assert known.lane(k1, 5) is Lane.ANONYMOUS  # a replayed message 1 gets no priority
    known.learn(k1, 3, "d1")
    assert known.lane(k1, 5) is Lane.ANONYMOUS  # never goes back
    known.learn(k2, 1, "d2")
    known.learn(k3, 1, "d3")
    assert len(known) == 2 and known.lane(k1, 9) is Lane.ANONYMOUS  # LRU forgot k1


def test_a_revoked_device_loses_its_priority() -> None:
    known = KnownKeys()
    known.learn(b"\x01" * 32, 1, "d1")
    known.learn(b"\x02" * 32, 1, "d2")
    known.forget_device("d1")
    assert known.lane(b"\x01" * 32, 9) is Lane.ANONYMOUS
    assert known.lane(b"\x02" * 32, 9) is Lane.PRIORITY


@pytest.mark.parametrize("cap", [1, 3])
def test_device_session_cap(cap: int) -> None:
    s = DeviceSessions(cap)
    assert [s.reserve("d1") for _ in range(cap + 1)] == [True] * cap + [False]
    assert s.reserve("d2")
    s.release("d1")
    assert s.reserve("d1") and not s.reserve("d1")
    for _ in range(cap):
        s.release("d1")
    assert s.count("d1") == 0
