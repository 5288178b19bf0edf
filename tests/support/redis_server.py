"""A disposable ``redis-server`` for integration tests.

:meth:`RedisServer.start` runs ``redis-server`` in the foreground as a child
process on a free loopback port, without persistence (``--save ''``,
``--appendonly no``), with its working directory and log under a directory
the caller owns, and returns once it answers PING. :meth:`RedisServer.stop`
ends that process by its PID. Share one server per test module and call
:meth:`RedisServer.flushall` between tests for isolation.

This module imports neither pytest nor redis-py: it speaks the two commands it
needs (PING, FLUSHALL) over a plain socket, so it never leaves a client open.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from tests.support.ports import free_port

HOST = "127.0.0.1"

# -- timing (one commented block, STYLE §10) ---------------------------------------
# redis-server answers PING a few ms after Popen; 10 s only bounds a hung start.
READY_TIMEOUT_S = 10.0
READY_POLL_S = 0.005
# SIGTERM makes redis-server exit at once (nothing to save); then escalate to SIGKILL.
STOP_TIMEOUT_S = 5.0
# One command on loopback; bounds a wedged server.
COMMAND_TIMEOUT_S = 5.0
# A free port can be taken between finding it and redis-server binding it: retry.
START_ATTEMPTS = 5


class RedisUnavailable(RuntimeError):
    """redis-server is not installed; integration tests should skip."""


class RedisServerError(RuntimeError):
    """redis-server did not start; the message carries the tail of its log."""


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        raise RedisUnavailable("not installed: redis-server (apt-get install redis-server)")


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RedisServer:
    """One running ``redis-server`` on 127.0.0.1; see the module docstring."""

    def __init__(self, directory: Path, port: int, config: Path | None = None) -> None:
        self.directory = directory
        self.port = port
        self.config = config
        self.log_path = directory / "redis-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    def start(cls, directory: Path, config: Path | None = None) -> Self:
        """Start redis-server with ``directory`` (created) as its ``--dir``; wait for PING.

        With ``config`` (e.g. deploy/redis.conf) that file's persistence settings apply
        (AOF as in production) instead of none; port, bind address and directory are ours.

        Raises RedisUnavailable if redis-server is not installed, RedisServerError
        if it does not come up after ``START_ATTEMPTS`` ports.
        """
        require_redis_server()
        directory.mkdir(parents=True, exist_ok=True)
        error = ""
        for _ in range(START_ATTEMPTS):
            server = cls(directory, free_port(), config)
            if server._launch():
                return server
            error = server._tail()
            server.stop()
        raise RedisServerError(f"redis-server did not start:\n{error}")

    def _launch(self) -> bool:
        persistence = [] if self.config else ["--save", "", "--appendonly", "no"]
        cmd = [
            "redis-server",
            *([str(self.config)] if self.config else []),
            "--port", str(self.port),
            "--bind", HOST,
            *persistence,
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            try:
                if self.command("PING") == b"+PONG":
                    return True
            except OSError:
                pass
            time.sleep(READY_POLL_S)
        return False

    def stop(self) -> None:
        """Terminate this redis-server (by its PID) and wait for it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, *args: str) -> bytes:
        """Send one command; return the first reply line without CRLF (simple replies only)."""
        with socket.create_connection((HOST, self.port), timeout=COMMAND_TIMEOUT_S) as s:
            s.sendall(_resp(*args))
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                buf += chunk
        return buf[:-2]

    def flushall(self) -> None:
        """Delete every key in every database (per-test isolation)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RedisServerError(f"FLUSHALL answered {reply!r}")

    def _tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""
