"""TCP proxies for integration tests: a relay base and a recording proxy.

``RelayProxy`` listens on a free loopback port and relays each accepted connection
to a target, one thread per direction; a subclass says how each direction is relayed
(``_directions``). ``RecordingProxy.start(host, port)`` keeps every byte the client
sent (one ``bytearray`` per connection, in accept order), for replay and "no
connection made" checks. ``tests/support/mitm_proxy.py`` and ``cut_proxy.py`` are the
other two kinds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Self

_HOST = "127.0.0.1"
CHUNK = 65536
# -- timing (one commented block) -------------------------------------------------------
# Upstream connect on loopback takes microseconds; these only bound a wedged target.
CONNECT_TIMEOUT_S = 5.0
JOIN_TIMEOUT_S = 5.0

Direction = tuple[Callable[..., None], tuple[Any, ...]]


def pump(src: socket.socket, dst: socket.socket, record: bytearray | None = None) -> None:
    """Relay ``src`` to ``dst`` until EOF or an error (keeping the bytes in ``record``),
    then half-close ``dst``."""
    try:
        while data := src.recv(CHUNK):
            if record is not None:
                record += data
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((_HOST, 0))
    listener.listen(16)
    return listener


class RelayProxy:
    """The plumbing every proxy here shares: listener, accept loop, threads, close."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._listener = _listener()
        self._target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def _directions(self, client: socket.socket, upstream: socket.socket
                    ) -> Sequence[Direction]:
        """How to relay one connection: (function, args) per thread. Called under the lock."""
        return ((pump, (client, upstream)), (pump, (upstream, client)))

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
                for target, args in self._directions(client, upstream):
                    t = threading.Thread(target=target, args=args, daemon=True)
                    self._threads.append(t)
                    t.start()

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


class RecordingProxy(RelayProxy):
    def __init__(self, target: tuple[str, int]) -> None:
        self.client_bytes: list[bytearray] = []  # client -> server, per connection
        super().__init__(target)

    @classmethod
    def start(cls, host: str, port: int) -> Self:
        return cls((host, port))

    def _directions(self, client: socket.socket, upstream: socket.socket
                    ) -> Sequence[Direction]:
        record = bytearray()
        self.client_bytes.append(record)
        return ((pump, (client, upstream, record)), (pump, (upstream, client)))
