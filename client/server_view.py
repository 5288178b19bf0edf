"""What the client last learned from the server, kept in its home (``server.json``, 0600).

On every successful connect the server tells the device its status and the PCR
baselines it is accepted in now; a refusal tells its status (revoked, locked, must
enroll again). ``attestgate check`` compares the machine with this view, so it agrees
with the server after an operator approved a new state, and fails for a revoked device.
The file holds no secret; it is only as trustworthy as the home it lives in, and the
server decides anyway.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from shared.errors import ErrorCode

VIEW_FILE: Final = "server.json"
MAX_VIEW_BYTES: Final = 1 << 20
MAX_BASELINES: Final = 64
MAX_PCRS: Final = 24

# The status a refusal tells; other codes say nothing about the device's record.
STATUS_OF: Final = {ErrorCode.REVOKED: "revoked", ErrorCode.LOCKED: "locked",
                    ErrorCode.REENROLL_REQUIRED: "reenroll"}


@dataclass(frozen=True)
class ServerView:
    device_id: str
    status: str  # active, locked, revoked, reenroll
    baselines: tuple[dict[str, str], ...]  # accepted PCR states: index text -> hex
    learned_at: float  # when the client learned it, i.e. when it last changed (its clock)


def load(home: Path, device_id: str) -> ServerView | None:
    """The view kept for ``device_id``; None when there is none (or it is damaged, or
    belongs to an earlier enrollment)."""
    try:
        raw = (home / VIEW_FILE).read_bytes()[:MAX_VIEW_BYTES]
        doc = json.loads(raw)
        view = ServerView(str(doc["device_id"]), str(doc["status"]),
                          tuple(_pcrs(b) for b in doc["baselines"][:MAX_BASELINES]),
                          float(doc["learned_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return view if view.device_id == device_id else None


def save(home: Path, view: ServerView) -> None:
    """Write atomically (temp file + rename), 0600. Best effort: a home that cannot be
    written (read-only, full) only leaves the old view, which ``check`` then uses."""
    tmp = home / (VIEW_FILE + ".tmp")
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(view), f, indent=1, sort_keys=True)
        os.replace(tmp, home / VIEW_FILE)
    except OSError:
        pass


def learned(home: Path, device_id: str, reply: Mapping[str, Any]) -> None:
    """Keep what a successful attestation's reply says (status, accepted baselines).

    Written only when it differs from the view kept: every connect says it, and
    rewriting the file each time cost ~0.85 ms of a connect (bench/README.md)."""
    status, baselines = reply.get("status"), reply.get("baselines")
    if not isinstance(status, str) or not isinstance(baselines, list):
        return  # an older server: nothing to learn
    try:
        parsed = tuple(_pcrs(b) for b in baselines[:MAX_BASELINES])
    except (ValueError, TypeError):
        return
    old = load(home, device_id)
    if old is not None and old.status == status[:16] and old.baselines == parsed:
        return
    save(home, ServerView(device_id, status[:16], parsed, time.time()))


def refused(home: Path, device_id: str, code: ErrorCode, body: Mapping[str, Any]) -> None:
    """Keep the status a refusal tells (the baselines known stay)."""
    status = STATUS_OF.get(code)
    if status is None and code is ErrorCode.PCR_MISMATCH and isinstance(body.get("status"), str):
        status = str(body["status"])[:16]
    if status is None:
        return
    old = load(home, device_id)
    save(home, ServerView(device_id, status, old.baselines if old else (), time.time()))


def _pcrs(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_PCRS:
        raise ValueError("baseline")
    out: dict[str, str] = {}
    for k, v in value.items():
        index = int(k)
        if not 0 <= index < MAX_PCRS:
            raise ValueError("pcr index")
        out[str(index)] = v.hex() if isinstance(v, bytes) else bytes.fromhex(str(v)).hex()
    return out
