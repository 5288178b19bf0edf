"""A TCP proxy that loses a reply: it relays attestgate frames until the server's Nth.

``ReplyCuttingProxy.start(host, port, keep=N)`` listens on a free loopback port and
relays each connection to ``host:port``. Server-to-client bytes are read frame by
frame (2-byte big-endian length + body, as ``shared.framing`` writes them); the first
``keep`` frames are passed on, and when frame ``keep + 1`` has fully arrived from the
server the proxy closes both sides without passing it on: the server did the work,
the client never hears of it. ``keep=None`` relays everything.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Self

_HOST = "127.0.0.1"
_CHUNK = 65536


class ReplyCuttingProxy:
    def __init__(self, listener: socket.socket, target: tuple[str, int], keep: int | None
                 ) -> None:
        self._listener = listener
        self._target = target
        self.keep = keep
        self.cut = threading.Event()  # set when a frame was withheld and the connection cut
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @classmethod
    def start(cls, host: str, port: int, *, keep: int | None) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((_HOST, 0))
        listener.listen(8)
        return cls(listener, (host, port), keep)

    @property
    def address(self) -> str:
        return f"{_HOST}:{self._listener.getsockname()[1]}"

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
            with self._lock:
                self._sockets += [client, upstream]
                for target, args in ((self._pump, (client, upstream)),
                                     (self._frames, (upstream, client, self.keep))):
                    t = threading.Thread(target=target, args=args, daemon=True)
                    self._threads.append(t)
                    t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _frames(self, server: socket.socket, client: socket.socket, keep: int | None) -> None:
        buf = b""
        passed = 0
        try:
            while data := server.recv(_CHUNK):
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
                    n = 2 + struct.unpack(">H", buf[:2])[0]
                    frame, buf = buf[:n], buf[n:]
                    if keep is not None and passed >= keep:
                        self.cut.set()
                        for s in (client, server):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)
                        return
                    client.sendall(frame)
                    passed += 1
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
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
