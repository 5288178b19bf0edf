"""Memory baseline for idle sessions: a bare asyncio server in its own process that
completes a noiseprotocol IKpsk2 handshake per TCP connection and then holds the
connection (stream reader/writer, the transport-phase NoiseConnection, one task
waiting for the client to close). What a Python Noise gateway cannot do with less.

:func:`rss_slope_kib` opens sessions up to ``low`` and then ``high`` and returns the
server's RSS growth per session between the two, in KiB.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import struct
import time
from typing import Any

from bench.cpu import rss_bytes
from bench.floors import _conn, _frame, _Keys, _recv_frame

CTX = multiprocessing.get_context("spawn")


def _serve(k: _Keys, ports: Any) -> None:
    held: list[Any] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (n,) = struct.unpack(">H", await reader.readexactly(2))
            r = _conn(k, initiator=False)
            r.read_message(await reader.readexactly(n))
            writer.write(_frame(bytes(r.write_message(b""))))
            await writer.drain()
            held.append(r)
            await reader.read(1)  # idle until the client goes
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(session, "127.0.0.1", 0, backlog=1024)
        ports.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def rss_slope_kib(low: int, high: int) -> float:
    k = _Keys()
    ports = CTX.Queue()
    proc = CTX.Process(target=_serve, args=(k, ports), daemon=True)
    proc.start()
    socks: list[socket.socket] = []
    try:
        port = ports.get(timeout=30)

        def open_until(n: int) -> None:
            while len(socks) < n:
                sock = socket.create_connection(("127.0.0.1", port))
                i = _conn(k, initiator=True)
                sock.sendall(_frame(bytes(i.write_message(struct.pack(">Q", time.time_ns())))))
                i.read_message(_recv_frame(sock))
                socks.append(sock)

        assert proc.pid is not None
        open_until(low)
        time.sleep(0.2)
        rss_low = rss_bytes(proc.pid)
        open_until(high)
        time.sleep(0.2)
        rss_high = rss_bytes(proc.pid)
        return (rss_high - rss_low) / (high - low) / 1024
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.join(5)
