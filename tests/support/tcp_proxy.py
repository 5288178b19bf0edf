"""A tiny recording TCP proxy for integration tests (replay and "no connection made" checks).

``RecordingProxy.start(host, port)`` listens on a free loopback port and relays
each accepted connection to ``host:port`` in both directions, keeping every
byte the client sent (one ``bytearray`` per connection, in accept order).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self

_HOST = "127.0.0.1"
_CHUNK = 65536


class RecordingProxy:
    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self._listener = listener
        self._target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.client_bytes: list[bytearray] = []  # client -> server, per connection
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @classmethod
    def start(cls, host: str, port: int) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((_HOST, 0))
        listener.listen(16)
        return cls(listener, (host, port))

    @property
    def address(self) -> str:
        return f"{_HOST}:{self._listener.getsockname()[1]}"

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self.client_bytes)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            record = bytearray()
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self.client_bytes.append(record)
                self._sockets += [client, upstream]
                for src, dst, rec in ((client, upstream, record), (upstream, client, None)):
                    t = threading.Thread(target=self._pump, args=(src, dst, rec), daemon=True)
                    self._threads.append(t)
                    t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(_CHUNK):
                if record is not None:
                    record += data
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
            t.join(5)
        for s in sockets:
            s.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
