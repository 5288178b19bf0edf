"""A man-in-the-middle TCP proxy for integration tests: rewrites the start of each client stream.

``RewritingProxy.start(host, port, rewrite, prefix_len)`` listens on a free
loopback port and relays each accepted connection to ``host:port`` in both
directions. The first ``prefix_len`` bytes the client sends on a connection are
collected and passed through ``rewrite`` before they go upstream; everything
after them is relayed unchanged. That is exactly what an on-path attacker who
edits the cleartext preamble (version, mode) can do.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Self

from tests.support.tcp_proxy import Direction, RelayProxy, pump

Rewrite = Callable[[bytes], bytes]


class RewritingProxy(RelayProxy):
    def __init__(self, target: tuple[str, int], rewrite: Rewrite, prefix_len: int) -> None:
        self._rewrite = rewrite
        self._prefix_len = prefix_len
        self.rewritten: list[tuple[bytes, bytes]] = []  # (as sent, as forwarded) per connection
        super().__init__(target)

    @classmethod
    def start(cls, host: str, port: int, rewrite: Rewrite, prefix_len: int) -> Self:
        return cls((host, port), rewrite, prefix_len)

    def _directions(self, client: socket.socket, upstream: socket.socket
                    ) -> Sequence[Direction]:
        return ((self._client_to_server, (client, upstream)), (pump, (upstream, client)))

    def _client_to_server(self, src: socket.socket, dst: socket.socket) -> None:
        prefix = b""
        try:
            while len(prefix) < self._prefix_len:
                data = src.recv(self._prefix_len - len(prefix))
                if not data:
                    break
                prefix += data
            forwarded = self._rewrite(prefix)
            with self._lock:
                self.rewritten.append((prefix, forwarded))
            dst.sendall(forwarded)
        except OSError:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            return
        pump(src, dst)
