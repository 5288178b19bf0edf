"""The audit log's anchor outside Redis: an append-only checkpoint file in the server home.

Every process that appends audit entries on this host (attestor, registry,
``attestgate-admin``) writes one line per append to ``audit-checkpoints.jsonl``:
``{"count", "head", "ts", "mac"}`` (see :mod:`shared.audit`). Concurrent appenders
are serialised by an exclusive ``flock`` on the file around each write, and every
line is written with a single ``write`` and ``fsync``'d before the append is
acknowledged. Appenders may finish out of order (two processes append entries 5 and
6; the one with 6 may write first), so the file is a set of checkpoints, not a
sequence: each one is checked on its own, and the newest is the one with the
highest count.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from shared.audit import Checkpoint, checkpoint_line, parse_checkpoint

CHECKPOINT_FILE = "audit-checkpoints.jsonl"


class CheckpointFile:
    """Appends checkpoints to a file (created 0600 on first write) and reads them back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, checkpoint: Checkpoint) -> None:
        """Append one line durably; raises OSError (disk full, permissions, a line
        written only in part: the next append closes that one off)."""
        line = checkpoint_line(checkpoint)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            # A line torn by a crash mid-write is closed off, never glued to the next one.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            if os.write(fd, line) != len(line):  # the disk filled mid-line: no checkpoint
                raise OSError(errno.ENOSPC, "checkpoint line written only in part")
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self) -> None:
        """Create the file if needed and check it can be appended to; raises OSError."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> list[Checkpoint | None]:
        """Every complete line, parsed (None for a line that is not a checkpoint).

        A last line without its newline is a write torn by a crash and is skipped.
        Raises FileNotFoundError when there is no file.
        """
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        return [parse_checkpoint(raw) for raw in lines[:-1] if raw.strip()]
