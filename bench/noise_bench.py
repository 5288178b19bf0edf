"""Noise: bare noiseprotocol IKpsk2 vs attestgate's NoiseSession (CONNECT), in-process."""

from __future__ import annotations

import os
import struct
import time

from noise.connection import Keypair, NoiseConnection

from bench._common import Result, Settings, median_ms, paired, rate
from shared.framing import Mode, preamble
from shared.keys import Psk, StaticKey, session_psk
from shared.noise_session import NoiseSession, responder_ephemeral
from shared.wire import PATTERN_CONNECT, PATTERN_ENROLL

PAYLOAD_1K = os.urandom(1024)


class _Keys:
    def __init__(self) -> None:
        self.client = StaticKey.generate()
        self.server = StaticKey.generate()
        self.device_psk = os.urandom(32)
        self.psk = Psk(os.urandom(32))
        self.prologue = preamble(Mode.CONNECT).prologue


def _bare_pair(
    k: _Keys, pattern: bytes = PATTERN_CONNECT
) -> tuple[NoiseConnection, NoiseConnection]:
    i = NoiseConnection.from_name(pattern)
    i.set_as_initiator()
    i.set_keypair_from_private_bytes(Keypair.STATIC, k.client.private)
    if pattern == PATTERN_CONNECT:
        i.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, k.server.public)
    r = NoiseConnection.from_name(pattern)
    r.set_as_responder()
    r.set_keypair_from_private_bytes(Keypair.STATIC, k.server.private)
    for c in (i, r):
        c.set_prologue(k.prologue)
        c.set_psks(psk=k.psk.value)
        c.start_handshake()
    return i, r


def bare_ikpsk2(k: _Keys) -> tuple[NoiseConnection, NoiseConnection]:
    """One complete bare IKpsk2 handshake (fixed PSK, 8-byte payload as the client sends)."""
    i, r = _bare_pair(k)
    r.read_message(i.write_message(struct.pack(">Q", 1)))
    i.read_message(r.write_message(b""))
    return i, r


def bare_xxpsk3(k: _Keys) -> None:
    """One complete bare XXpsk3 handshake (the enrollment pattern)."""
    i, r = _bare_pair(k, PATTERN_ENROLL)
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    r.read_message(i.write_message(b""))


def attestgate_connect(k: _Keys) -> tuple[NoiseSession, NoiseSession]:
    """One CONNECT handshake through NoiseSession, session PSK by HMAC on both sides."""
    p = preamble(Mode.CONNECT)
    i = NoiseSession.initiator(p, k.client, server_static=k.server.public)
    r = NoiseSession.responder(p, k.server)
    r.read_handshake(i.write_handshake(struct.pack(">Q", time.time_ns())))
    r.set_psk(session_psk(k.device_psk, r.remote_ephemeral, r.local_ephemeral))
    m2 = r.write_handshake()
    i.set_psk(session_psk(k.device_psk, i.local_ephemeral, responder_ephemeral(m2)))
    i.read_handshake(m2)
    return i, r


def bare_handshake_ms(runs: int = 50) -> float:
    """Median time of one bare in-process IKpsk2 handshake (the stack's connect baseline)."""
    k = _Keys()
    return median_ms(lambda: bare_ikpsk2(k), runs, warmup=5)


def bare_xx_ms(runs: int = 50) -> float:
    k = _Keys()
    return median_ms(lambda: bare_xxpsk3(k), runs, warmup=5)


def run(s: Settings) -> list[Result]:
    k = _Keys()
    out = []
    base, ours = paired(lambda t: rate(lambda: bare_ikpsk2(k), t),
                        lambda t: rate(lambda: attestgate_connect(k), t), s.seconds)
    out.append(Result("noise_connect_handshake", "noise", "NoiseSession CONNECT handshake",
                      ours, "ops/s", "bare IKpsk2 handshake", base))

    bi, br = bare_ikpsk2(k)
    ai, ar = attestgate_connect(k)

    def raw_roundtrip() -> None:
        br.decrypt(bi.encrypt(PAYLOAD_1K))

    def session_roundtrip() -> None:
        ar.decrypt(ai.encrypt(PAYLOAD_1K))

    base, ours = paired(lambda t: rate(raw_roundtrip, t), lambda t: rate(session_roundtrip, t),
                        s.seconds)
    out.append(Result("noise_transport_1k", "noise", "NoiseSession 1 KiB encrypt+decrypt",
                      ours, "ops/s", "raw noiseprotocol 1 KiB", base))
    return out
