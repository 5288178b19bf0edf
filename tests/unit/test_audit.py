"""The audit HMAC chain and its checkpoints: edits, deletions, a cut tail and a deleted log
are each found, and named, even when the forger recomputes the chain without the key."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import resource
import signal
import struct
from pathlib import Path

import pytest

from shared.audit import (
    AuditKey,
    ChainProblem,
    Checkpoint,
    checkpoint_line,
    entry_hash,
    latest_checkpoint,
    make_checkpoint,
    parse_checkpoint,
    verify_chain,
)
from shared.audit_anchor import CheckpointFile
from shared.records import AuditEntry
from shared.store.memory import MemoryStore
from shared.wire import LABEL_AUDIT

KEY = AuditKey(b"\x11" * 32)


class Sink:
    def __init__(self) -> None:
        self.checkpoints: list[Checkpoint] = []

    def record(self, checkpoint: Checkpoint) -> None:
        self.checkpoints.append(checkpoint)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def store(sink: Sink) -> MemoryStore:
    s = MemoryStore(KEY, sink)
    for i in range(5):
        s.append_audit("attest_ok" if i % 2 else "enrolled", f"dev{i % 2}", {"n": i, "x": "y"},
                       1000.0 + i)
    return s


def entries(store: MemoryStore) -> list[AuditEntry]:
    return list(store.read_audit())


def verify(store: MemoryStore, log: list[AuditEntry], sink: Sink | None = None,
           head: str | None = None) -> list[ChainProblem]:
    return verify_chain(log, store.audit_head() if head is None else head, KEY,
                        sink.checkpoints if sink else ())


def sha256_chain_hash(prev: str, ts: float, event: str, device_id: str, detail: str) -> str:
    """The old, unkeyed chain: what a forger without the audit key can compute."""
    h = hashlib.sha256(LABEL_AUDIT)
    for part in (prev, repr(ts), event, device_id, detail):
        b = part.encode()
        h.update(struct.pack(">I", len(b)) + b)
    return h.hexdigest()


def test_clean_chain(store: MemoryStore, sink: Sink) -> None:
    log = entries(store)
    assert verify(store, log, sink) == []
    assert log[0].prev == ""
    assert all(b.prev == a.hash for a, b in itertools.pairwise(log))
    assert store.audit_head() == log[-1].hash


def test_every_append_records_a_checkpoint_of_count_and_head(store: MemoryStore,
                                                             sink: Sink) -> None:
    log = entries(store)
    assert [(c.count, c.head) for c in sink.checkpoints] == [(i + 1, e.hash)
                                                            for i, e in enumerate(log)]
    assert latest_checkpoint(KEY, sink.checkpoints) == sink.checkpoints[-1]


def test_the_chain_depends_on_the_key() -> None:
    a = entry_hash(KEY, "", 1.0, "e", "d", "{}")
    assert a != entry_hash(AuditKey(b"\x22" * 32), "", 1.0, "e", "d", "{}")
    assert a != sha256_chain_hash("", 1.0, "e", "d", "{}")
    assert "11" * 8 not in repr(KEY)


def test_empty_chain() -> None:
    assert verify_chain([], "", KEY) == []
    assert verify_chain([], "ab" * 32, KEY) == [ChainProblem("", "head")]


@pytest.mark.parametrize(
    "change",
    [{"detail": '{"n":2,"x":"z"}'}, {"event": "attest_refused"}, {"device_id": "dev9"},
     {"ts": 1002.5}],
)
def test_edited_entry(store: MemoryStore, change: dict[str, object]) -> None:
    log = entries(store)
    log[2] = dataclasses.replace(log[2], **change)  # type: ignore[arg-type]
    assert verify(store, log) == [ChainProblem(log[2].entry_id, "hash")]


def test_edited_entry_with_the_whole_chain_recomputed_without_the_key(
        store: MemoryStore, sink: Sink) -> None:
    """The forger rewrites entry 2 and recomputes every hash and the head with SHA-256."""
    log = entries(store)
    log[2] = dataclasses.replace(log[2], detail='{"n":2,"x":"z"}')
    prev, forged = "", []
    for e in log:
        h = sha256_chain_hash(prev, e.ts, e.event, e.device_id, e.detail)
        forged.append(dataclasses.replace(e, prev=prev, hash=h))
        prev = h
    problems = verify(store, forged, sink, head=prev)
    assert problems == [ChainProblem(e.entry_id, "hash") for e in forged]


def test_replaced_entry_with_a_valid_hash_is_caught_by_its_checkpoint(
        store: MemoryStore, sink: Sink) -> None:
    """Even with the key (a restored old copy, say), the checkpointed head must be there."""
    log = entries(store)
    other = MemoryStore(KEY)
    for e in log[:4]:
        other.append_audit(e.event, e.device_id, {"other": True}, e.ts)
    problems = verify(store, list(other.read_audit()), sink, head=other.audit_head())
    assert [p.problem for p in problems] == ["rewritten"] * 4 + ["truncated"]


def test_deleted_middle_entry(store: MemoryStore) -> None:
    log = entries(store)
    del log[2]
    assert verify(store, log) == [ChainProblem(log[2].entry_id, "link")]


def test_deleted_first_entry(store: MemoryStore) -> None:
    log = entries(store)[1:]
    assert verify(store, log) == [ChainProblem(log[0].entry_id, "link")]


def test_reordered_entries(store: MemoryStore) -> None:
    log = entries(store)
    log[1], log[2] = log[2], log[1]
    problems = verify(store, log)
    assert {p.problem for p in problems} == {"link"}
    assert ChainProblem(log[1].entry_id, "link") in problems


def test_deleted_tail(store: MemoryStore) -> None:
    log = entries(store)[:-2]
    assert verify(store, log) == [ChainProblem(log[-1].entry_id, "head")]


def test_tail_cut_with_the_head_rewound_is_caught_by_the_checkpoints(
        store: MemoryStore, sink: Sink) -> None:
    log = entries(store)[:-2]
    assert verify(store, log, head=log[-1].hash) == []  # the chain alone cannot tell
    assert verify(store, log, sink, head=log[-1].hash) == [
        ChainProblem(log[-1].entry_id, "truncated")]


def test_whole_log_deleted_is_caught_by_the_checkpoints(store: MemoryStore, sink: Sink) -> None:
    assert verify_chain([], "", KEY) == []
    assert verify_chain([], "", KEY, sink.checkpoints) == [ChainProblem("", "deleted")]


def test_deleted_log_restarted_by_an_honest_append(store: MemoryStore, sink: Sink) -> None:
    store.audit.clear()
    store.append_audit("attest_ok", "dev1", {}, 2000.0)
    problems = verify(store, entries(store), sink)
    assert ChainProblem(entries(store)[0].entry_id, "rewritten") in problems
    assert ChainProblem(entries(store)[0].entry_id, "truncated") in problems


def test_forged_or_corrupt_checkpoint(store: MemoryStore, sink: Sink) -> None:
    good = sink.checkpoints[-1]
    forged = dataclasses.replace(good, count=99)
    assert verify(store, entries(store), Sink()) == []
    problems = verify_chain(entries(store), store.audit_head(), KEY, [good, forged, None])
    assert problems == [ChainProblem("", "checkpoint"), ChainProblem("", "checkpoint")]
    other_key = make_checkpoint(AuditKey(b"\x22" * 32), 99, good.head, good.ts)
    assert verify_chain(entries(store), store.audit_head(), KEY, [other_key]) == [
        ChainProblem("", "checkpoint")]


def test_appending_continues_the_chain(store: MemoryStore, sink: Sink) -> None:
    store.append_audit("consequence_lock", "dev1", {"failures": 3}, 2000.0)
    assert verify(store, entries(store), sink) == []


def test_detail_is_canonical() -> None:
    a, b = MemoryStore(KEY), MemoryStore(KEY)
    ea = a.append_audit("e", "d", {"a": 1, "b": [1, 2]}, 1.0)
    eb = b.append_audit("e", "d", {"b": [1, 2], "a": 1}, 1.0)
    assert ea.hash == eb.hash


def test_purge_keeping_the_audit_log(store: MemoryStore, sink: Sink) -> None:
    log = entries(store)
    store.purge(keep_audit=True)
    assert entries(store) == log
    store.append_audit("purged", "", {}, 3000.0)
    assert verify(store, entries(store), sink) == []


# -- checkpoint lines and file --------------------------------------------------------------------


def test_checkpoint_line_round_trip() -> None:
    cp = make_checkpoint(KEY, 7, "ab" * 32, 1234.5)
    line = checkpoint_line(cp)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_checkpoint(line.strip()) == cp


@pytest.mark.parametrize("line", [
    b"", b"not json", b"[]", b'{"count":1}', b'{"count":-1,"head":"","ts":1,"mac":""}',
    b'{"count":true,"head":"","ts":1,"mac":""}', b'{"count":1,"head":"zz","ts":1,"mac":""}',
    b'{"count":1,"head":"","ts":NaN,"mac":""}', b"{" + b" " * 600 + b"}",
])
def test_checkpoint_line_garbage(line: bytes) -> None:
    assert parse_checkpoint(line) is None


def test_checkpoint_file_appends_and_reads_back(tmp_path: Path) -> None:
    f = CheckpointFile(tmp_path / "cp.jsonl")
    with pytest.raises(FileNotFoundError):
        f.read()
    cps = [make_checkpoint(KEY, i, f"{i:064x}", float(i)) for i in range(1, 4)]
    for cp in cps:
        f.record(cp)
    assert f.read() == cps
    assert (tmp_path / "cp.jsonl").stat().st_mode & 0o777 == 0o600


def test_checkpoint_file_skips_a_torn_last_line_and_does_not_glue_the_next(
        tmp_path: Path) -> None:
    f = CheckpointFile(tmp_path / "cp.jsonl")
    first = make_checkpoint(KEY, 1, "", 1.0)
    f.record(first)
    with open(f.path, "ab") as raw:
        raw.write(b'{"count":2,"he')  # a crash mid-write
    assert f.read() == [first]
    third = make_checkpoint(KEY, 3, "", 3.0)
    f.record(third)
    assert f.read() == [first, None, third]
    assert json.loads(f.path.read_bytes().splitlines()[-1])["count"] == 3


def test_checkpoint_file_moved_aside_or_deleted_gets_the_next_checkpoint_at_the_path(
        tmp_path: Path) -> None:
    """An operator moving the file aside (new audit key, purge) or deleting it while an
    appender runs must see the next checkpoint in a new file at the path, not in the moved
    one (what an appender keeping the file open would get wrong)."""
    f = CheckpointFile(tmp_path / "cp.jsonl")
    cps = [make_checkpoint(KEY, i, f"{i:064x}", float(i)) for i in range(1, 6)]
    f.record(cps[0])
    moved = tmp_path / "cp.jsonl.archived"
    os.replace(f.path, moved)
    f.record(cps[1])
    assert CheckpointFile(moved).read() == [cps[0]]
    assert f.read() == [cps[1]]
    f.path.unlink()
    f.record(cps[2])
    assert f.read() == [cps[2]]
    other = CheckpointFile(f.path)  # a second appender (another worker) on the same file
    other.record(cps[3])
    f.record(cps[4])
    assert f.read() == [cps[2], cps[3], cps[4]]
    assert CheckpointFile(moved).read() == [cps[0]]


def _record_under_a_file_size_limit(path: str, limit: int, count: int) -> str:
    """In a child process: record one checkpoint with RLIMIT_FSIZE at ``limit`` bytes (the
    kernel writes up to the limit, then refuses: a disk that fills mid-line)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG / a short write, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        CheckpointFile(Path(path)).record(make_checkpoint(KEY, count, "", float(count)))
    except OSError as exc:
        return f"OSError {exc.errno}"
    return "recorded"


def test_checkpoint_file_refuses_a_short_write(tmp_path: Path) -> None:
    """A write cut short (the disk filled mid-line) is no checkpoint: record raises (the
    decision fails closed, store: internal) instead of acknowledging half a line, and the
    next append closes the torn line off."""
    f = CheckpointFile(tmp_path / "cp.jsonl")
    first = make_checkpoint(KEY, 1, "", 1.0)
    f.record(first)
    limit = f.path.stat().st_size + 40  # room for 40 bytes of the next line only
    with multiprocessing.get_context("fork").Pool(1) as pool:
        outcome = pool.apply(_record_under_a_file_size_limit, (str(f.path), limit, 2))
    assert outcome.startswith("OSError")
    assert f.path.stat().st_size == limit  # the kernel did write the first 40 bytes
    assert f.read() == [first]
    third = make_checkpoint(KEY, 3, "", 3.0)
    f.record(third)
    assert f.read() == [first, None, third]
