"""The hash chain of the audit log, pure.

Each entry's hash is SHA-256(label || prev || ts || event || device || detail),
fields length-prefixed, so an edited, inserted, reordered or deleted entry breaks
the chain at that point; deleting the newest entries is caught by comparing the
chain's end with the stored head.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.records import AuditEntry
from shared.wire import LABEL_AUDIT


def canonical(detail: Mapping[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(prev: str, ts: float, event: str, device_id: str, detail: str) -> str:
    h = hashlib.sha256(LABEL_AUDIT)
    for part in (prev, repr(ts), event, device_id, detail):
        b = part.encode()
        h.update(struct.pack(">I", len(b)) + b)
    return h.hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    entry_id: str
    problem: str  # "hash" (entry edited), "link" (entry missing or reordered), "head" (tail cut)


def verify_chain(entries: Sequence[AuditEntry], head: str) -> list[ChainProblem]:
    """Check a whole log (oldest first) against the stored head hash."""
    problems: list[ChainProblem] = []
    prev = ""
    for e in entries:
        if e.prev != prev:
            problems.append(ChainProblem(e.entry_id, "link"))
        if entry_hash(e.prev, e.ts, e.event, e.device_id, e.detail) != e.hash:
            problems.append(ChainProblem(e.entry_id, "hash"))
        prev = e.hash
    if prev != head:
        problems.append(ChainProblem(entries[-1].entry_id if entries else "", "head"))
    return problems
