"""The keyed hash chain of the audit log and its checkpoints, pure.

Each entry's hash is HMAC-SHA256(audit key, label || prev || ts || event || device ||
detail), fields length-prefixed, so an edited, inserted, reordered or deleted entry
breaks the chain at that point, and nobody without the audit key (kept in the server
home, never in Redis) can recompute the chain after an edit.

The chain's end is also anchored outside Redis: after every append the appender
writes a :class:`Checkpoint` (entry count, head hash, time, HMAC under a key derived
from the audit key) to a file in the server home. A log cut back to an older head,
or deleted whole, still forms a valid chain by itself; the checkpoints say how long
it was and what its entry number N hashed to, so :func:`verify_chain` finds both.
"""

from __future__ import annotations

import hmac
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import AttestgateError, ErrorCode
from shared.records import AuditEntry
from shared.wire import LABEL_AUDIT

AUDIT_KEY_LEN = 32
_LABEL_CHECKPOINT = LABEL_AUDIT + b" checkpoint"
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class AuditKey:
    """The 32-byte key of the audit chain; never printed."""

    value: bytes = field(repr=False)
    # Derived once, not at every checkpoint (an HMAC per append).
    _checkpoint_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.value) != AUDIT_KEY_LEN:
            raise AttestgateError(ErrorCode.INTERNAL, f"audit key must be {AUDIT_KEY_LEN} bytes")
        object.__setattr__(self, "_checkpoint_key",
                           hmac.digest(self.value, _LABEL_CHECKPOINT, "sha256"))

    def checkpoint_key(self) -> bytes:
        """A separate key for checkpoints, so a checkpoint MAC is never an entry hash."""
        return self._checkpoint_key


def canonical(detail: Mapping[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fields(*parts: str) -> bytes:
    out = b""
    for part in parts:
        b = part.encode()
        out += struct.pack(">I", len(b)) + b
    return out


def entry_hash(key: AuditKey, prev: str, ts: float, event: str, device_id: str,
               detail: str) -> str:
    msg = LABEL_AUDIT + _fields(prev, repr(ts), event, device_id, detail)
    return hmac.digest(key.value, msg, "sha256").hex()


# -- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """"The log had ``count`` entries and entry number ``count`` hashed to ``head``"."""

    count: int
    head: str
    ts: float
    mac: str


class CheckpointSink(Protocol):
    """Where an appender records a checkpoint after each append (a file in the server home)."""

    def record(self, checkpoint: Checkpoint) -> None: ...


def _checkpoint_mac(key: AuditKey, count: int, head: str, ts: float) -> str:
    msg = _fields(str(count), head, repr(ts))
    return hmac.digest(key.checkpoint_key(), msg, "sha256").hex()


def make_checkpoint(key: AuditKey, count: int, head: str, now: float) -> Checkpoint:
    return Checkpoint(count, head, now, _checkpoint_mac(key, count, head, now))


def checkpoint_valid(key: AuditKey, cp: Checkpoint) -> bool:
    return hmac.compare_digest(_checkpoint_mac(key, cp.count, cp.head, cp.ts), cp.mac)


def checkpoint_doc(cp: Checkpoint) -> dict[str, Any]:
    return {"count": cp.count, "head": cp.head, "ts": cp.ts, "mac": cp.mac}


def checkpoint_line(cp: Checkpoint) -> bytes:
    """One line of the checkpoint file (JSON, newline-terminated)."""
    return (json.dumps(checkpoint_doc(cp), separators=(",", ":")) + "\n").encode()


def parse_checkpoint(data: bytes | str | Mapping[str, Any]) -> Checkpoint | None:
    """A checkpoint from one line (or its JSON document); None if it is not one."""
    if isinstance(data, bytes | str):
        if len(data) > 512:
            return None
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if not isinstance(data, Mapping):
        return None
    count, head, ts, mac = (data.get(k) for k in ("count", "head", "ts", "mac"))
    if (not isinstance(count, int) or isinstance(count, bool) or not 0 <= count < 2**63
            or not isinstance(head, str) or not isinstance(mac, str)
            or not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts)
            or not (head == "" or (len(head) == 64 and set(head) <= _HEX64))):
        return None
    return Checkpoint(count, head, float(ts), mac)


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainProblem:
    entry_id: str
    # "hash"       entry edited (or written without the audit key)
    # "link"       entry missing or reordered
    # "head"       the chain does not end at the stored head (tail cut)
    # "truncated"  a checkpoint counted more entries than the log has (tail cut, head rewound)
    # "deleted"    a checkpoint counted entries, the log has none (whole log deleted)
    # "rewritten"  the entry a checkpoint counted to has another hash now
    # "checkpoint" a checkpoint that does not parse or whose MAC is wrong
    problem: str


def verify_chain(entries: Sequence[AuditEntry], head: str, key: AuditKey,
                 checkpoints: Iterable[Checkpoint | None] = ()) -> list[ChainProblem]:
    """Check a whole log (oldest first) against its stored head and its checkpoints.

    ``checkpoints`` are the anchors kept outside the store (None for a line that did
    not parse); each one names the hash its entry number must have.
    """
    problems: list[ChainProblem] = []
    prev = ""
    for e in entries:
        if e.prev != prev:
            problems.append(ChainProblem(e.entry_id, "link"))
        want = entry_hash(key, e.prev, e.ts, e.event, e.device_id, e.detail)
        if not hmac.compare_digest(want, e.hash):
            problems.append(ChainProblem(e.entry_id, "hash"))
        prev = e.hash
    if not hmac.compare_digest(prev, head):
        problems.append(ChainProblem(entries[-1].entry_id if entries else "", "head"))
    # A checkpoint's head must still be in the log at its count. One whose head is gone
    # counted entries that were cut off (count beyond the end) or replaced; one whose
    # head moved is already a broken link above.
    position = {e.hash: i + 1 for i, e in enumerate(entries)}
    flagged = {p.entry_id for p in problems}
    longest = 0
    for cp in checkpoints:
        if cp is None or not checkpoint_valid(key, cp):
            problems.append(ChainProblem("", "checkpoint"))
            continue
        if cp.count == 0 or cp.head in position:
            continue
        if cp.count > len(entries):
            longest = max(longest, cp.count)
            continue
        e = entries[cp.count - 1]
        if e.entry_id not in flagged:
            flagged.add(e.entry_id)
            problems.append(ChainProblem(e.entry_id, "rewritten"))
    if longest:
        problems.append(ChainProblem(entries[-1].entry_id, "truncated") if entries
                        else ChainProblem("", "deleted"))
    return problems


def latest_checkpoint(key: AuditKey, checkpoints: Iterable[Checkpoint | None]
                      ) -> Checkpoint | None:
    """The valid checkpoint with the highest count (appenders may finish out of order)."""
    best: Checkpoint | None = None
    for cp in checkpoints:
        if cp is not None and checkpoint_valid(key, cp) and (best is None or cp.count > best.count):
            best = cp
    return best
