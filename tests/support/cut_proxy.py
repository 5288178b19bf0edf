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
from collections.abc import Sequence
from typing import Self

from tests.support.tcp_proxy import CHUNK, Direction, RelayProxy, pump


class ReplyCuttingProxy(RelayProxy):
    def __init__(self, target: tuple[str, int], keep: int | None) -> None:
        self.keep = keep
        self.cut = threading.Event()  # set when a frame was withheld and the connection cut
        super().__init__(target)

    @classmethod
    def start(cls, host: str, port: int, *, keep: int | None) -> Self:
        return cls((host, port), keep)

    def _directions(self, client: socket.socket, upstream: socket.socket
                    ) -> Sequence[Direction]:
        return ((pump, (client, upstream)), (self._frames, (upstream, client, self.keep)))

    def _frames(self, server: socket.socket, client: socket.socket, keep: int | None) -> None:
        buf = b""
        passed = 0
        try:
            while data := server.recv(CHUNK):
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
