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
import weakref
from pathlib import Path
from typing import Any

from shared.audit import Checkpoint, checkpoint_line, parse_checkpoint

CHECKPOINT_FILE = "audit-checkpoints.jsonl"


class CheckpointFile:
    """Appends checkpoints to a file (created 0600 on first write) and reads them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # The file stays open between appends (an open and a close less per entry); each
        # append checks, under the lock, that the path still names it (an operator moves
        # it aside when the audit key is replaced or the store purged) and reopens if not.
        self._fd = -1
        self._closer: weakref.finalize[Any, CheckpointFile] | None = None

    def record(self, checkpoint: Checkpoint) -> None:
        """Append one line durably; raises OSError (disk full, permissions)."""
        line = checkpoint_line(checkpoint)
        try:
            fd = self._locked()
            try:
                size = os.fstat(fd).st_size
                # A line torn by a crash mid-write is closed off, never glued to the next one.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            self.close()
            raise

    def _locked(self) -> int:
        """The file's descriptor, locked exclusively, opened again if the path moved."""
        for _ in range(3):
            if self._fd < 0:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                self._fd = fd
                self._closer = weakref.finalize(self, os.close, fd)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            held = os.fstat(self._fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                return self._fd
            self.close()  # moved aside or deleted: append to the file the path names now
        raise OSError(errno.EAGAIN, "checkpoint file keeps moving", str(self.path))

    def close(self) -> None:
        """Close the kept descriptor (the next append opens the file again)."""
        if self._closer is not None:
            self._closer()  # closes the descriptor (releasing any lock) once
            self._closer = None
        self._fd = -1

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
