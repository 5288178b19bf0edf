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
import threading
from collections.abc import Callable
from typing import Self

_HOST = "127.0.0.1"
_CHUNK = 65536
# -- timing (one commented block, STYLE §10) ---------------------------------------
# Upstream connect on loopback takes microseconds; this only bounds a wedged target.
CONNECT_TIMEOUT_S = 5.0
JOIN_TIMEOUT_S = 5.0

Rewrite = Callable[[bytes], bytes]


class RewritingProxy:
    def __init__(self, listener: socket.socket, target: tuple[str, int], rewrite: Rewrite,
                 prefix_len: int) -> None:
        self._listener = listener
        self._target = target
        self._rewrite = rewrite
        self._prefix_len = prefix_len
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.accepted = 0
        self.rewritten: list[tuple[bytes, bytes]] = []  # (as sent, as forwarded) per connection
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @classmethod
    def start(cls, host: str, port: int, rewrite: Rewrite, prefix_len: int) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((_HOST, 0))
        listener.listen(16)
        return cls(listener, (host, port), rewrite, prefix_len)

    @property
    def address(self) -> str:
        return f"{_HOST}:{self._listener.getsockname()[1]}"

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=CONNECT_TIMEOUT_S)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self.accepted += 1
                self._sockets += [client, upstream]
                for target, args in ((self._client_to_server, (client, upstream)),
                                     (self._pump, (upstream, client))):
                    t = threading.Thread(target=target, args=args, daemon=True)
                    self._threads.append(t)
                    t.start()

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
        self._pump(src, dst)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        # shutdown() wakes a thread blocked in accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in [self._acceptor, *self._threads]:
            t.join(JOIN_TIMEOUT_S)
        for s in sockets:
            s.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
