"""Free loopback ports for integration tests.

A port found here is only *probably* free: another process may take it before
the caller binds it. Callers that start a server must retry on a bind failure.
"""

from __future__ import annotations

import socket

_HOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_pair(attempts: int = 50) -> int:
    """Return P such that P and P+1 on 127.0.0.1 were both free a moment ago.

    swtpm's TCTI derives the control port as P+1, so both must be free.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((_HOST, 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind((_HOST, port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port pair on {_HOST} after {attempts} attempts")
