"""The audit hash chain: edits, deletions and a cut tail are each found, and named."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from shared.audit import ChainProblem, entry_hash, verify_chain
from shared.records import AuditEntry
from shared.store.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    for i in range(5):
        s.append_audit("attest_ok" if i % 2 else "enrolled", f"dev{i % 2}", {"n": i, "x": "y"},
                       1000.0 + i)
    return s


def entries(store: MemoryStore) -> list[AuditEntry]:
    return list(store.read_audit())


def test_clean_chain(store: MemoryStore) -> None:
    log = entries(store)
    assert verify_chain(log, store.audit_head()) == []
    assert log[0].prev == ""
    assert all(b.prev == a.hash for a, b in itertools.pairwise(log))
    assert store.audit_head() == log[-1].hash


def test_empty_chain() -> None:
    assert verify_chain([], "") == []
    assert verify_chain([], "ab" * 32) == [ChainProblem("", "head")]  # everything was deleted


@pytest.mark.parametrize(
    "change",
    [{"detail": '{"n":2,"x":"z"}'}, {"event": "attest_refused"}, {"device_id": "dev9"},
     {"ts": 1002.5}],
)
def test_edited_entry(store: MemoryStore, change: dict[str, object]) -> None:
    log = entries(store)
    log[2] = dataclasses.replace(log[2], **change)
    assert verify_chain(log, store.audit_head()) == [ChainProblem(log[2].entry_id, "hash")]


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(store: MemoryStore) -> None:
    log = entries(store)
    e = log[2]
    forged_hash = entry_hash(e.prev, e.ts, e.event, e.device_id, '{"n":2,"x":"z"}')
    log[2] = dataclasses.replace(e, detail='{"n":2,"x":"z"}', hash=forged_hash)
    assert verify_chain(log, store.audit_head()) == [ChainProblem(log[3].entry_id, "link")]


def test_deleted_middle_entry(store: MemoryStore) -> None:
    log = entries(store)
    del log[2]
    assert verify_chain(log, store.audit_head()) == [ChainProblem(log[2].entry_id, "link")]


def test_deleted_first_entry(store: MemoryStore) -> None:
    log = entries(store)[1:]
    assert verify_chain(log, store.audit_head()) == [ChainProblem(log[0].entry_id, "link")]


def test_reordered_entries(store: MemoryStore) -> None:
    log = entries(store)
    log[1], log[2] = log[2], log[1]
    problems = verify_chain(log, store.audit_head())
    assert {p.problem for p in problems} == {"link"}
    assert ChainProblem(log[1].entry_id, "link") in problems


def test_deleted_tail(store: MemoryStore) -> None:
    log = entries(store)[:-2]
    assert verify_chain(log, store.audit_head()) == [ChainProblem(log[-1].entry_id, "head")]


def test_appending_continues_the_chain(store: MemoryStore) -> None:
    store.append_audit("consequence_lock", "dev1", {"failures": 3}, 2000.0)
    assert verify_chain(entries(store), store.audit_head()) == []


def test_detail_is_canonical() -> None:
    a, b = MemoryStore(), MemoryStore()
    ea = a.append_audit("e", "d", {"a": 1, "b": [1, 2]}, 1.0)
    eb = b.append_audit("e", "d", {"b": [1, 2], "a": 1}, 1.0)
    assert ea.hash == eb.hash
