"""Free loopback ports for integration tests.

A port found here is only *probably* free: another process may take it before
the caller binds it. Callers that start a server must retry on a bind failure.
"""

from __future__ import annotations

import random
import socket

_HOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_pair(attempts: int = 200) -> int:
    """Return P such that P and P+1 on 127.0.0.1 were both free a moment ago.

    swtpm's TCTI derives the control port as P+1, so both must be free. Candidates
    come from below the kernel's ephemeral range (32768+), where outgoing
    connections and their TIME_WAIT entries do not crowd adjacent pairs.
    """
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first, socket.socket(
            socket.AF_INET, socket.SOCK_STREAM
        ) as second:
            try:
                first.bind((_HOST, port))
                second.bind((_HOST, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port pair on {_HOST} after {attempts} attempts")


def free_port_block(count: int, attempts: int = 200) -> int:
    """Return P such that P .. P+count-1 on 127.0.0.1 were all free a moment ago
    (the metrics ports: ATTESTGATE_METRICS_LISTEN's base port plus fixed offsets)."""
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randrange(20000, 32000 - count)
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
        try:
            for i, s in enumerate(socks):
                s.bind((_HOST, port + i))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return port
    raise RuntimeError(f"no {count} free ports in a row on {_HOST} after {attempts} attempts")
