"""The post this device sent but has not seen acknowledged, kept in the client home.

A post whose reply was lost (exit 4) may or may not be stored. Its retry must carry
the same idempotency key, so that the board stores it once: ``flows.post`` writes the
key, text and signed timestamp here (0600, atomic) before sending, reuses them when
the same text is posted again, and removes the file once the board has answered.
Posting a different text replaces it. A key older than ``MAX_AGE`` (the board's
default ``ATTESTGATE_POST_KEY_TTL``) is dropped: the board no longer remembers it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PENDING_FILE: Final = "pending-post.json"
MAX_AGE: Final = 24 * 3600.0
KEY_LEN: Final = 16


@dataclass(frozen=True)
class PendingPost:
    text: str
    key: bytes
    signed_at_ms: int  # the timestamp its signature covered

    def matches(self, text: str) -> bool:
        return hmac.compare_digest(self.text.encode(), text.encode())


def load(home: Path, now: float) -> PendingPost | None:
    """The pending post, or None (none, unreadable or older than MAX_AGE)."""
    try:
        raw = json.loads((home / PENDING_FILE).read_text())
        pending = PendingPost(str(raw["text"]), bytes.fromhex(raw["key"]), int(raw["ts"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(pending.key) != KEY_LEN or now - pending.signed_at_ms / 1000 > MAX_AGE:
        return None
    return pending


def save(home: Path, pending: PendingPost) -> None:
    """Write atomically (temp file + fsync + rename), 0600."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = home / (PENDING_FILE + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"text": pending.text, "key": pending.key.hex(), "ts": pending.signed_at_ms},
                  f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, home / PENDING_FILE)


def clear(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / PENDING_FILE).unlink()

