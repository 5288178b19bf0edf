"""shared.noise_backend: the same bytes as stock noiseprotocol, in both roles and patterns.

Known answers (cacophony vectors for the two protocol names attestgate uses), handshakes
and transport against stock noiseprotocol with our backend on either side, and the
primitives (HMAC-BLAKE2s, HKDF) against the standard library's and noiseprotocol's own.
"""

from __future__ import annotations

import hmac
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.backends.default import noise_backend as stock_backend
from noise.backends.default.hashes import BLAKE2sHash
from noise.backends.default.hashes import hmac_hash as stock_hmac
from noise.connection import Keypair, NoiseConnection
from noise.functions.hash import hkdf as stock_hkdf

from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, preamble
from shared.keys import Psk, StaticKey
from shared.noise_backend import BACKEND, hkdf, hmac_blake2s
from shared.noise_session import NoiseSession
from shared.wire import PATTERN_CONNECT, PATTERN_ENROLL

VECTORS = json.loads((Path(__file__).parent / "data" / "noise_vectors.json").read_text())
PATTERNS = [PATTERN_CONNECT, PATTERN_ENROLL]


def _conn(name: bytes, backend: Any, initiator: bool, prologue: bytes, psk: bytes,
          static: bytes, remote_static: bytes | None = None,
          ephemeral: bytes | None = None) -> NoiseConnection:
    c = NoiseConnection.from_name(name, backend=backend)
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


def _run(initiator: NoiseConnection, responder: NoiseConnection, payloads: list[bytes]
         ) -> list[bytes]:
    """Drive the handshake, then transport both ways; every wire message, in order."""
    wire = []
    sender, receiver = initiator, responder
    n = 0
    while not (initiator.handshake_finished and responder.handshake_finished):
        message = bytes(sender.write_message(payloads[n]))
        assert bytes(receiver.read_message(message)) == payloads[n]
        wire.append(message)
        sender, receiver = receiver, sender
        n += 1
    assert initiator.get_handshake_hash() == responder.get_handshake_hash()
    for payload in payloads[n:]:
        ct = sender.encrypt(payload)
        assert receiver.decrypt(ct) == payload
        wire.append(ct)
        sender, receiver = receiver, sender
    return wire


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["protocol_name"])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    h = {k: bytes.fromhex(v) for k, v in vector.items()
         if isinstance(v, str) and k != "protocol_name"}
    name = vector["protocol_name"].encode()
    psk = bytes.fromhex(vector["init_psks"][0])
    assert vector["resp_psks"] == vector["init_psks"]
    i = _conn(name, BACKEND, True, h["init_prologue"], psk, h["init_static"],
              h.get("init_remote_static"), h["init_ephemeral"])
    r = _conn(name, BACKEND, False, h["resp_prologue"], psk, h["resp_static"],
              h.get("resp_remote_static"), h["resp_ephemeral"])
    messages = vector["messages"]
    wire = _run(i, r, [bytes.fromhex(m["payload"]) for m in messages])
    assert [w.hex() for w in wire] == [m["ciphertext"] for m in messages]
    assert i.get_handshake_hash() == h["handshake_hash"]


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("ours", ["initiator", "responder", "both"])
def test_interoperates_with_stock_noiseprotocol(name: bytes, ours: str) -> None:
    i_key, r_key, psk = os.urandom(32), os.urandom(32), os.urandom(32)
    r_public = StaticKey.from_private(r_key).public
    remote = r_public if name == PATTERN_CONNECT else None
    i_backend = BACKEND if ours in ("initiator", "both") else stock_backend
    r_backend = BACKEND if ours in ("responder", "both") else stock_backend
    for _ in range(3):
        i = _conn(name, i_backend, True, b"prologue", psk, i_key, remote)
        r = _conn(name, r_backend, False, b"prologue", psk, r_key)
        handshake = [os.urandom(n) for n in (8, 0, 100)][: 2 if name == PATTERN_CONNECT else 3]
        _run(i, r, [*handshake, b"x" * 1000, b"", os.urandom(5000), os.urandom(65000)])
        i.rekey_outbound_cipher()
        r.rekey_inbound_cipher()
        assert r.decrypt(i.encrypt(b"after rekey")) == b"after rekey"


@settings(max_examples=25, deadline=None)
@given(i_eph=st.binary(min_size=32, max_size=32), r_eph=st.binary(min_size=32, max_size=32),
       psk=st.binary(min_size=32, max_size=32), prologue=st.binary(max_size=40),
       payload=st.binary(max_size=300), name=st.sampled_from(PATTERNS))
def test_same_bytes_as_stock(i_eph: bytes, r_eph: bytes, psk: bytes, prologue: bytes,
                             payload: bytes, name: bytes) -> None:
    """Same keys, same ephemerals: every message byte and the hash equal stock's."""
    i_key, r_key = bytes(range(32)), bytes(range(1, 33))
    remote = StaticKey.from_private(r_key).public if name == PATTERN_CONNECT else None
    wires = []
    for backend in (stock_backend, BACKEND):
        i = _conn(name, backend, True, prologue, psk, i_key, remote, i_eph)
        r = _conn(name, backend, False, prologue, psk, r_key, None, r_eph)
        wires.append((_run(i, r, [payload] * 3 + [payload[::-1]] * 2), i.get_handshake_hash()))
    assert wires[0] == wires[1]


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=200), data=st.binary(max_size=300))
def test_hmac_blake2s_is_hmac(key: bytes, data: bytes) -> None:
    assert hmac_blake2s(key, data) == hmac.digest(key, data, "blake2s")
    assert hmac_blake2s(key, data) == stock_hmac(key, data, BLAKE2sHash().fn)


@settings(max_examples=200, deadline=None)
@given(ck=st.binary(max_size=100), ikm=st.binary(max_size=100), n=st.sampled_from([2, 3]))
def test_hkdf_is_noiseprotocols(ck: bytes, ikm: bytes, n: int) -> None:
    def stock(key: bytes, data: bytes) -> bytes:
        return stock_hmac(key, data, BLAKE2sHash().fn)  # type: ignore[no-any-return]

    assert hkdf(ck, ikm, n) == stock_hkdf(ck, ikm, n, stock)


def test_low_order_ephemeral_fails_the_session() -> None:
    """An all-zero DH result (a low-order point as e) is a protocol failure, as before."""
    server = StaticKey.generate()
    p = preamble(Mode.CONNECT)
    genuine = NoiseSession.initiator(p, StaticKey.generate(), server_static=server.public)
    message1 = genuine.write_handshake(b"12345678")
    r = NoiseSession.responder(p, server)
    with pytest.raises(AttestgateError) as info:
        r.read_handshake(bytes(32) + message1[32:])
    assert info.value.code is ErrorCode.PROTOCOL


def test_noise_session_transport_against_stock_noiseprotocol() -> None:
    """NoiseSession (our backend, cipher states kept alone once established) and a stock
    noiseprotocol peer: handshake, then transport both ways across REKEY(k)."""
    client, server, psk = StaticKey.generate(), StaticKey.generate(), os.urandom(32)
    pre = preamble(Mode.ENROLL)
    ours = NoiseSession.initiator(pre, client, psk=Psk(psk), rekey_every=2)
    stock = _conn(PATTERN_ENROLL, stock_backend, False, pre.prologue, psk, server.private)
    stock.read_message(ours.write_handshake())
    ours.read_handshake(bytes(stock.write_message(b"")))
    stock.read_message(ours.write_handshake())
    assert ours.established and ours.handshake_hash == stock.get_handshake_hash()
    for n in range(1, 7):
        assert stock.decrypt(ours.encrypt(b"up %d" % n)) == b"up %d" % n
        assert ours.decrypt(stock.encrypt(b"down %d" % n)) == b"down %d" % n
        if n % 2 == 0:  # both sides rekey after every second message of a direction
            stock.rekey_inbound_cipher()
            stock.rekey_outbound_cipher()
