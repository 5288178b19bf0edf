"""The thin asyncio adapter between a TCP stream and a sans-IO NoiseSession."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, encode_frame
from shared.noise_session import NoiseSession
from shared.wire import FRAME_HEADER_LEN, MAX_MESSAGE1, PREAMBLE_LEN

_READ_CHUNK = 65536


class PeerClosed(Exception):
    """The peer closed the connection or went silent past a deadline."""


class Peer:
    __slots__ = ("_decoder", "_reader", "_writer", "address", "noise")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self.noise: NoiseSession | None = None
        peer = writer.get_extra_info("peername")
        self.address: str = str(peer[0]) if isinstance(peer, tuple) else "unix"

    async def read_preamble(self) -> bytes:
        try:
            return await self._reader.readexactly(PREAMBLE_LEN)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise PeerClosed("preamble") from exc

    async def read_message1(self) -> bytes:
        """Handshake message 1, read exactly: nothing past it is taken from the socket, and
        a frame longer than MAX_MESSAGE1 is TOO_LARGE before any of it is read."""
        try:
            (length,) = struct.unpack(">H", await self._reader.readexactly(FRAME_HEADER_LEN))
            if length > MAX_MESSAGE1:
                raise AttestgateError(ErrorCode.TOO_LARGE, f"message 1 of {length} bytes")
            return await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise PeerClosed("message 1") from exc

    async def send_clear(self, data: bytes, timeout: float) -> None:
        """Best effort: write ``data`` (a cleartext hint) and wait briefly for it to leave."""
        with contextlib.suppress(ConnectionError, TimeoutError, PeerClosed):
            await asyncio.wait_for(self._write(data), timeout)

    def set_receive_buffer(self, size: int) -> None:
        """Bound what the kernel (and so each read) may hold for this connection."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def abort(self) -> None:
        """Drop the connection now (evicted opening); a pending read ends with PeerClosed."""
        self._writer.transport.abort()

    async def read_frame(self) -> bytes:
        """The next frame; raises PeerClosed on EOF, AttestgateError(TOO_LARGE) on abuse."""
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            try:
                data = await self._reader.read(_READ_CHUNK)
            except ConnectionError as exc:
                raise PeerClosed("reset") from exc
            if not data:
                raise PeerClosed("eof")
            self._decoder.feed(data)

    async def write_frame(self, message: bytes) -> None:
        await self._write(encode_frame(message))

    async def _write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size():
                await self._writer.drain()  # only when something is left to wait for
        except ConnectionError as exc:
            raise PeerClosed("write") from exc

    async def send(self, plaintext: bytes) -> None:
        """Encrypt and write one message, then wait while the socket's backlog is high."""
        self.send_nowait(plaintext)
        if not self._writer.transport.get_write_buffer_size():
            return  # all of it went to the kernel: nothing to wait for (no drain coroutine)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise PeerClosed("write") from exc

    def send_nowait(self, plaintext: bytes) -> None:
        """Encrypt and queue one message for the socket. No await between encrypt and
        write: nonce order is wire order, whoever else writes."""
        noise = self._established()
        if self._writer.is_closing():
            raise PeerClosed("closing")
        frame = encode_frame(noise.encrypt(plaintext))
        try:
            self._writer.write(frame)
        except ConnectionError as exc:
            raise PeerClosed("write") from exc

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._writer.transport.get_write_buffer_size()

    async def recv(self) -> bytes:
        """The next transport message, decrypted (read_frame's loop, inlined: one coroutine
        frame less for every idle session)."""
        noise = self._established()
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return noise.decrypt(frame)
            try:
                data = await self._reader.read(_READ_CHUNK)
            except ConnectionError as exc:
                raise PeerClosed("reset") from exc
            if not data:
                raise PeerClosed("eof")
            self._decoder.feed(data)

    def _established(self) -> NoiseSession:
        if self.noise is None or not self.noise.established:
            raise AttestgateError(ErrorCode.PROTOCOL, "channel not established")
        return self.noise

    async def close(self) -> None:
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(1.0):  # a scope, not wait_for: no task per close
                await self._writer.wait_closed()
