"""shared.noise_backend: HMAC-BLAKE2s and HKDF against the standard library's and
noiseprotocol's own, and NoiseSession over them against stock noiseprotocol.

The engine's known answers (cacophony vectors) and its byte-for-byte interoperability
with stock noiseprotocol in both roles and patterns are in test_noise_handshake.py.
"""

from __future__ import annotations

import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.backends.default.hashes import BLAKE2sHash
from noise.backends.default.hashes import hmac_hash as stock_hmac
from noise.functions.hash import hkdf as stock_hkdf

from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, preamble
from shared.keys import Psk, StaticKey
from shared.noise_backend import hkdf, hmac_blake2s
from shared.noise_session import NoiseSession
from shared.wire import PATTERN_ENROLL
from tests.support.noise_stock import stock_connection


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
    """NoiseSession (our engine, cipher states kept alone once established) and a stock
    noiseprotocol peer: handshake, then transport both ways across REKEY(k)."""
    client, server, psk = StaticKey.generate(), StaticKey.generate(), os.urandom(32)
    pre = preamble(Mode.ENROLL)
    ours = NoiseSession.initiator(pre, client, psk=Psk(psk), rekey_every=2)
    stock = stock_connection(PATTERN_ENROLL, False, prologue=pre.prologue, psk=psk,
                             static=server.private)
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
