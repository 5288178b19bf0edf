"""Stock noiseprotocol (its default backend), the reference our Noise engine is pinned to."""

from __future__ import annotations

import warnings

from noise.connection import Keypair, NoiseConnection


def stock_connection(name: bytes, initiator: bool, *, prologue: bytes, psk: bytes,
                     static: bytes, remote_static: bytes | None = None,
                     ephemeral: bytes | None = None) -> NoiseConnection:
    """A noiseprotocol connection, started; ``ephemeral`` fixes its ephemeral key."""
    c = NoiseConnection.from_name(name)
    if initiator:
        c.set_as_initiator()
    else:
        c.set_as_responder()
    c.set_prologue(prologue)
    c.set_psks(psk=psk)
    c.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if remote_static is not None:
        c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    if ephemeral is not None:
        c.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    with warnings.catch_warnings():  # fixed ephemerals: "OK for testing" (noiseprotocol)
        warnings.simplefilter("ignore")
        c.start_handshake()
    return c
