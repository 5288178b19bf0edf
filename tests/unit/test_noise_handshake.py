"""shared.noise_handshake: known answers, the same bytes as stock noiseprotocol, and refusals.

The engine is driven directly here (and through NoiseSession where the session's error
mapping is the point). The peer in the interop tests is stock noiseprotocol with its
default backend: nothing of ours on that side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from noise.connection import NoiseConnection

from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, preamble
from shared.keys import Psk, StaticKey, session_psk
from shared.noise_backend import blake2s, hkdf
from shared.noise_handshake import (
    IKPSK2,
    MAX_MESSAGE,
    PATTERNS,
    XXPSK3,
    CipherState,
    HandshakeState,
    NoiseError,
    pattern,
)
from shared.noise_session import NoiseSession, State, responder_ephemeral
from shared.wire import MAX_NOISE_MESSAGE, PATTERN_CONNECT, PATTERN_ENROLL
from tests.support.noise_stock import stock_connection

VECTORS = json.loads((Path(__file__).parent / "data" / "noise_vectors.json").read_text())
NAMES = [PATTERN_CONNECT, PATTERN_ENROLL]
I_KEY, R_KEY = bytes(range(32)), bytes(range(1, 33))
R_PUBLIC = StaticKey.from_private(R_KEY).public
PSK = b"\x42" * 32
PROLOGUE = b"attestgate prologue"

# X25519 public values whose shared secret with any key is all zero (RFC 7748 §6.1;
# Bernstein's list of points of small order, and their non-canonical forms).
_P = 2**255 - 19
LOW_ORDER = [
    (0).to_bytes(32, "little"),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (_P - 1).to_bytes(32, "little"),
    (_P).to_bytes(32, "little"),
    (_P + 1).to_bytes(32, "little"),
    (2**255).to_bytes(32, "little"),  # zero with the (ignored) top bit set
]


def _fixed(value: bytes) -> Callable[[int], bytes]:
    def rng(n: int) -> bytes:
        assert n == 32
        return value
    return rng


def ours(name: bytes, initiator: bool, *, prologue: bytes = PROLOGUE, psk: bytes | None = PSK,
         static: bytes | None = None, remote: bytes | None = None,
         ephemeral: bytes | None = None) -> HandshakeState:
    static = static if static is not None else (I_KEY if initiator else R_KEY)
    if remote is None and initiator and name == PATTERN_CONNECT:
        remote = R_PUBLIC
    kwargs: dict[str, Any] = {} if ephemeral is None else {"rng": _fixed(ephemeral)}
    return HandshakeState(pattern(name), initiator=initiator, prologue=prologue,
                          static=static, remote_static=remote, psk=psk, **kwargs)


def stock(name: bytes, initiator: bool, *, prologue: bytes = PROLOGUE, psk: bytes = PSK,
          static: bytes | None = None, remote: bytes | None = None,
          ephemeral: bytes | None = None) -> NoiseConnection:
    """Stock noiseprotocol, default backend."""
    if remote is None and initiator and name == PATTERN_CONNECT:
        remote = R_PUBLIC
    return stock_connection(
        name, initiator, prologue=prologue, psk=psk,
        static=static if static is not None else (I_KEY if initiator else R_KEY),
        remote_static=remote, ephemeral=ephemeral)


class _Side:
    """Our engine or a stock connection behind one interface: write, read, transport."""

    def __init__(self, impl: HandshakeState | NoiseConnection) -> None:
        self.impl = impl
        self.tx: CipherState | None = None
        self.rx: CipherState | None = None

    def write(self, payload: bytes) -> bytes:
        if isinstance(self.impl, HandshakeState):
            out = self.impl.write_message(payload)
            self._maybe_split()
            return out
        return bytes(self.impl.write_message(payload))

    def read(self, message: bytes) -> bytes:
        if isinstance(self.impl, HandshakeState):
            out = self.impl.read_message(message)
            self._maybe_split()
            return out
        return bytes(self.impl.read_message(message))

    def _maybe_split(self) -> None:
        assert isinstance(self.impl, HandshakeState)
        if self.impl.finished:
            self.tx, self.rx = self.impl.split()

    @property
    def finished(self) -> bool:
        if isinstance(self.impl, HandshakeState):
            return self.impl.finished
        return bool(self.impl.handshake_finished)

    @property
    def hash(self) -> bytes:
        if isinstance(self.impl, HandshakeState):
            return self.impl.handshake_hash
        return bytes(self.impl.get_handshake_hash())

    def encrypt(self, plaintext: bytes) -> bytes:
        if self.tx is not None:
            return self.tx.encrypt(plaintext)
        return bytes(self.impl.encrypt(plaintext))  # type: ignore[union-attr]

    def decrypt(self, ciphertext: bytes) -> bytes:
        if self.rx is not None:
            return self.rx.decrypt(ciphertext)
        return bytes(self.impl.decrypt(ciphertext))  # type: ignore[union-attr]

    def rekey(self, outbound: bool) -> None:
        if isinstance(self.impl, HandshakeState):
            (self.tx if outbound else self.rx).rekey()  # type: ignore[union-attr]
        elif outbound:
            self.impl.rekey_outbound_cipher()
        else:
            self.impl.rekey_inbound_cipher()


def run(i: _Side, r: _Side, payloads: list[bytes]) -> list[bytes]:
    """The handshake, then transport alternating both ways; every wire message, in order."""
    wire: list[bytes] = []
    sender, receiver = i, r
    n = 0
    while not (i.finished and r.finished):
        message = sender.write(payloads[n])
        assert receiver.read(message) == payloads[n]
        wire.append(message)
        sender, receiver = receiver, sender
        n += 1
    assert i.hash == r.hash
    for payload in payloads[n:]:
        ct = sender.encrypt(payload)
        assert receiver.decrypt(ct) == payload
        wire.append(ct)
        sender, receiver = receiver, sender
    return wire


# -- patterns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_message_patterns_are_noiseprotocols(name: bytes) -> None:
    tokens = NoiseConnection.from_name(name).noise_protocol.pattern.tokens
    assert [list(m) for m in pattern(name).messages] == tokens
    assert PATTERNS[name].name == name


@pytest.mark.parametrize("name", [b"Noise_XX_25519_ChaChaPoly_BLAKE2s",
                                  b"Noise_IKpsk2_25519_AESGCM_BLAKE2s",
                                  b"Noise_IKpsk2_448_ChaChaPoly_BLAKE2s",
                                  b"Noise_IKpsk2_25519_ChaChaPoly_SHA256",
                                  b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s", b""])
def test_other_protocol_names_are_refused(name: bytes) -> None:
    with pytest.raises(NoiseError):
        pattern(name)


def test_psk_handshakes_only() -> None:
    assert IKPSK2.has_psk and XXPSK3.has_psk
    assert IKPSK2.responder_static_known and not XXPSK3.responder_static_known


# -- known answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["protocol_name"])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    """Every handshake and transport message, and the hash, of the cacophony vectors."""
    h = {k: bytes.fromhex(v) for k, v in vector.items()
         if isinstance(v, str) and k != "protocol_name"}
    name = vector["protocol_name"].encode()
    assert name in NAMES
    assert vector["resp_psks"] == vector["init_psks"] and len(vector["init_psks"]) == 1
    psk = bytes.fromhex(vector["init_psks"][0])
    i = ours(name, True, prologue=h["init_prologue"], psk=psk, static=h["init_static"],
             remote=h.get("init_remote_static"), ephemeral=h["init_ephemeral"])
    r = ours(name, False, prologue=h["resp_prologue"], psk=psk, static=h["resp_static"],
             ephemeral=h["resp_ephemeral"])
    messages = vector["messages"]
    wire = run(_Side(i), _Side(r), [bytes.fromhex(m["payload"]) for m in messages])
    assert [w.hex() for w in wire] == [m["ciphertext"] for m in messages]
    assert i.handshake_hash == r.handshake_hash == h["handshake_hash"]


# -- interoperability with stock noiseprotocol -----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_interoperates_with_stock_noiseprotocol(name: bytes, role: str) -> None:
    """Ours in one role, stock in the other: handshake, transport both ways, across rekeys."""
    for _ in range(3):
        i_key, r_key, psk = os.urandom(32), os.urandom(32), os.urandom(32)
        remote = StaticKey.from_private(r_key).public if name == PATTERN_CONNECT else None
        make_i = ours if role == "initiator" else stock
        make_r = stock if role == "initiator" else ours
        i = _Side(make_i(name, True, psk=psk, static=i_key, remote=remote))
        r = _Side(make_r(name, False, psk=psk, static=r_key))
        handshake = [os.urandom(n) for n in (8, 0, 100)][: len(pattern(name).messages)]
        run(i, r, [*handshake, b"x" * 1000, b"", os.urandom(5000), os.urandom(65519)])
        for _round in range(3):  # REKEY(k) in both directions, then transport again
            for a, b in ((i, r), (r, i)):
                a.rekey(outbound=True)
                b.rekey(outbound=False)
                for size in (0, 17, 1000):
                    msg = os.urandom(size)
                    assert b.decrypt(a.encrypt(msg)) == msg


@settings(max_examples=30, deadline=None)
@given(i_eph=st.binary(min_size=32, max_size=32), r_eph=st.binary(min_size=32, max_size=32),
       psk=st.binary(min_size=32, max_size=32), prologue=st.binary(max_size=40),
       payload=st.binary(max_size=300), name=st.sampled_from(NAMES))
def test_same_bytes_as_stock(i_eph: bytes, r_eph: bytes, psk: bytes, prologue: bytes,
                             payload: bytes, name: bytes) -> None:
    """Same keys, same ephemerals: every message byte and the hash equal stock's."""
    wires = []
    for make in (stock, ours):
        i = _Side(make(name, True, prologue=prologue, psk=psk, ephemeral=i_eph))
        r = _Side(make(name, False, prologue=prologue, psk=psk, ephemeral=r_eph))
        wires.append((run(i, r, [payload] * 3 + [payload[::-1]] * 2), i.hash))
    assert wires[0] == wires[1]


@pytest.mark.parametrize("mode", [Mode.CONNECT, Mode.ENROLL])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_noise_session_against_stock(mode: Mode, role: str) -> None:
    """NoiseSession as the gateway and the client drive it, stock noiseprotocol opposite;
    transport both ways across REKEY(k) every second message of a direction."""
    client, server, psk = StaticKey.generate(), StaticKey.generate(), os.urandom(32)
    pre = preamble(mode)
    name = PATTERN_CONNECT if mode is Mode.CONNECT else PATTERN_ENROLL
    if role == "initiator":
        if mode is Mode.CONNECT:
            ses = NoiseSession.initiator(pre, client, server_static=server.public, rekey_every=2)
        else:
            ses = NoiseSession.initiator(pre, client, psk=Psk(psk), rekey_every=2)
        peer = stock(name, False, prologue=pre.prologue, psk=psk, static=server.private)
        peer_hs = peer.noise_protocol.handshake_state  # stock drops it once finished
        m1 = ses.write_handshake(b"ts")
        assert bytes(peer.read_message(m1)) == b"ts"
        if mode is Mode.CONNECT:
            ses.set_psk(Psk(psk))
            assert ses.read_handshake(bytes(peer.write_message(b""))) == b""
        else:
            assert ses.read_handshake(bytes(peer.write_message(b"hi"))) == b"hi"
            assert ses.remote_static == server.public
            peer.read_message(ses.write_handshake(b""))
        assert bytes(peer_hs.rs.public_bytes) == client.public
    else:
        ses = NoiseSession.responder(pre, server, rekey_every=2)
        remote = server.public if mode is Mode.CONNECT else None
        peer = stock(name, True, prologue=pre.prologue, psk=psk, static=client.private,
                     remote=remote)
        assert ses.read_handshake(bytes(peer.write_message(b"ts"))) == b"ts"
        assert ses.remote_static == (client.public if mode is Mode.CONNECT else None)
        ses.set_psk(Psk(psk))
        assert bytes(peer.read_message(ses.write_handshake(b"hi"))) == b"hi"
        if mode is Mode.ENROLL:
            assert ses.read_handshake(bytes(peer.write_message(b""))) == b""
            assert ses.remote_static == client.public
    assert ses.established and peer.handshake_finished
    assert ses.handshake_hash == peer.get_handshake_hash()
    for n in range(1, 9):
        assert peer.decrypt(ses.encrypt(b"out %d" % n)) == b"out %d" % n
        assert ses.decrypt(peer.encrypt(b"in %d" % n)) == b"in %d" % n
        if n % 2 == 0:
            peer.rekey_inbound_cipher()
            peer.rekey_outbound_cipher()


# -- refusals: tampering ---------------------------------------------------------------------


def _genuine(name: bytes) -> list[bytes]:
    i, r = _Side(ours(name, True)), _Side(ours(name, False))
    return run(i, r, [b"payload %d" % n for n in range(len(pattern(name).messages))])


def _same_ephemerals(name: bytes) -> tuple[list[bytes], Callable[[int], HandshakeState]]:
    """Genuine messages with fixed ephemerals, and readers that expect exactly them."""
    i_eph, r_eph = b"\x11" * 32, b"\x22" * 32
    i, r = ours(name, True, ephemeral=i_eph), ours(name, False, ephemeral=r_eph)
    messages = run(_Side(i), _Side(r),
                   [b"payload %d" % n for n in range(len(pattern(name).messages))])

    def reader(index: int) -> HandshakeState:
        sides = (ours(name, True, ephemeral=i_eph), ours(name, False, ephemeral=r_eph))
        for n in range(index):
            assert sides[n % 2].write_message(b"payload %d" % n) == messages[n]
            sides[(n + 1) % 2].read_message(messages[n])
        return sides[(index + 1) % 2]

    return messages, reader


@pytest.mark.parametrize("name", NAMES)
def test_flipped_bit_in_each_message(name: bytes) -> None:
    """Each bit of each handshake message flipped: the reader refuses it and stays failed."""
    messages, reader = _same_ephemerals(name)
    for index, message in enumerate(messages[: len(pattern(name).messages)]):
        for bit in range(len(message) * 8):
            forged = bytearray(message)
            forged[bit // 8] ^= 1 << (bit % 8)
            hs = reader(index)
            # (the top bit of a public key, ignored by X25519, is hashed: it fails too)
            with pytest.raises(NoiseError):
                hs.read_message(bytes(forged))
            assert not hs.finished
            with pytest.raises(NoiseError):  # failed for good, even for the genuine one
                hs.read_message(message)


@pytest.mark.parametrize("name", NAMES)
def test_truncated_messages(name: bytes) -> None:
    messages, reader = _same_ephemerals(name)
    for index, message in enumerate(messages[: len(pattern(name).messages)]):
        for size in range(len(message)):
            hs = reader(index)
            with pytest.raises(NoiseError):
                hs.read_message(message[:size])
        hs = reader(index)
        with pytest.raises(NoiseError):  # a byte more is a different payload: tag fails
            hs.read_message(message + b"\x00")


def test_wrong_psk() -> None:
    # IKpsk2: psk at the end of message 2, so the initiator refuses message 2.
    i, r = ours(PATTERN_CONNECT, True, psk=b"\x01" * 32), ours(PATTERN_CONNECT, False)
    r.read_message(i.write_message(b""))
    with pytest.raises(NoiseError):
        i.read_message(r.write_message(b""))
    # XXpsk3: psk in message 3, so the responder refuses message 3.
    i, r = ours(PATTERN_ENROLL, True, psk=b"\x01" * 32), ours(PATTERN_ENROLL, False)
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    with pytest.raises(NoiseError):
        r.read_message(i.write_message(b""))


def test_wrong_server_static() -> None:
    other = StaticKey.generate().public
    i, r = ours(PATTERN_CONNECT, True, remote=other), ours(PATTERN_CONNECT, False)
    with pytest.raises(NoiseError):
        r.read_message(i.write_message(b""))


def test_different_prologue() -> None:
    for name in NAMES:
        i, r = ours(name, True, prologue=b"v3|connect"), ours(name, False, prologue=b"v3|enroll")
        with pytest.raises(NoiseError):
            r.read_message(i.write_message(b""))


def _xx_message_1(e: bytes) -> bytes:
    """XXpsk3 message 1 with the given public ephemeral, built by hand (rev 34 §5, §9)."""
    h = blake2s(blake2s(XXPSK3.initial_hash + PROLOGUE).digest() + e).digest()
    _ck, k = hkdf(XXPSK3.initial_hash, e, 2)
    return e + ChaCha20Poly1305(k).encrypt(bytes(12), b"", h)


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_is_refused(point: bytes) -> None:
    # IKpsk2 message 1: es = DH(s, re) right away.
    m1 = ours(PATTERN_CONNECT, True).write_message(b"")
    r = ours(PATTERN_CONNECT, False)
    with pytest.raises(NoiseError):
        r.read_message(point + m1[32:])
    assert not r.finished
    # XXpsk3 message 1 has no DH (a well-formed one with that e is accepted): the
    # responder refuses at message 2's ee.
    r = ours(PATTERN_ENROLL, False)
    assert r.read_message(_xx_message_1(point)) == b""
    with pytest.raises(NoiseError):
        r.write_message(b"")
    # XXpsk3 message 2 (the initiator's ee): the responder's e replaced.
    i, r = ours(PATTERN_ENROLL, True), ours(PATTERN_ENROLL, False)
    r.read_message(i.write_message(b""))
    m2 = r.write_message(b"")
    with pytest.raises(NoiseError):
        i.read_message(point + m2[32:])


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_server_static_is_refused(point: bytes) -> None:
    i = ours(PATTERN_CONNECT, True, remote=point)
    with pytest.raises(NoiseError):
        i.write_message(b"")


def test_low_order_through_noise_session() -> None:
    p = preamble(Mode.CONNECT)
    m1 = NoiseSession.initiator(p, StaticKey.generate(), server_static=R_PUBLIC
                                ).write_handshake(b"12345678")
    for point in LOW_ORDER:
        s = NoiseSession.responder(p, StaticKey.from_private(R_KEY))
        with pytest.raises(AttestgateError) as e:
            s.read_handshake(point + m1[32:])
        assert e.value.code is ErrorCode.PROTOCOL and s.state is State.FAILED


# -- refusals: order, sizes, psk ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_messages_out_of_order(name: bytes) -> None:
    r = ours(name, False)
    with pytest.raises(NoiseError):
        r.write_message(b"")  # the responder does not speak first
    with pytest.raises(NoiseError):
        r.read_message(ours(name, True).write_message(b""))  # ... and is failed for good
    i = ours(name, True)
    with pytest.raises(NoiseError):
        i.read_message(b"\x00" * 64)
    i = ours(name, True)
    i.write_message(b"")
    with pytest.raises(NoiseError):
        i.write_message(b"")  # twice in a row
    # after the last message
    messages = _genuine(name)
    i, r = ours(name, True), ours(name, False)
    run(_Side(i), _Side(r), [b""] * len(pattern(name).messages))
    with pytest.raises(NoiseError):
        r.read_message(messages[0])
    with pytest.raises(NoiseError):
        i.write_message(b"")


@pytest.mark.parametrize("name", NAMES)
def test_split_only_once_and_only_at_the_end(name: bytes) -> None:
    i, r = ours(name, True), ours(name, False)
    with pytest.raises(NoiseError):
        i.split()
    side_i, side_r = _Side(i), _Side(r)
    run(side_i, side_r, [b""] * len(pattern(name).messages))  # splits both
    with pytest.raises(NoiseError):
        i.split()
    assert i._ck == b"" and i._e is None and i._k is None and i._psk is None  # dropped


@pytest.mark.parametrize("name", NAMES)
def test_psk_must_be_set_before_its_message(name: bytes) -> None:
    i, r = ours(name, True), ours(name, False, psk=None)
    sides, n = (i, r), 0
    with pytest.raises(NoiseError):
        while True:
            sides[(n + 1) % 2].read_message(sides[n % 2].write_message(b""))
            n += 1
    # IKpsk2: the responder writes message 2 (psk); XXpsk3: it reads message 3 (psk).
    assert n == (1 if name == PATTERN_CONNECT else 2)
    assert not r.finished


def test_bad_lengths_at_construction() -> None:
    with pytest.raises(NoiseError):
        HandshakeState(IKPSK2, initiator=False, prologue=b"", static=b"\x01" * 31)
    with pytest.raises(NoiseError):
        HandshakeState(IKPSK2, initiator=True, prologue=b"", static=I_KEY)  # no server key
    with pytest.raises(NoiseError):
        HandshakeState(IKPSK2, initiator=True, prologue=b"", static=I_KEY,
                       remote_static=b"\x09" * 33)
    with pytest.raises(NoiseError):
        HandshakeState(XXPSK3, initiator=True, prologue=b"", static=I_KEY,
                       remote_static=R_PUBLIC)
    with pytest.raises(NoiseError):
        HandshakeState(XXPSK3, initiator=True, prologue=b"", static=I_KEY, psk=b"\x00" * 16)


@pytest.mark.parametrize("name", NAMES)
def test_oversize_messages(name: bytes) -> None:
    r = ours(name, False)
    with pytest.raises(NoiseError):
        r.read_message(b"\x00" * (MAX_MESSAGE + 1))
    i = ours(name, True)
    with pytest.raises(NoiseError):
        i.write_message(b"\x00" * MAX_MESSAGE)  # e (+ s) + tag on top: too long
    s = NoiseSession.responder(preamble(Mode.ENROLL if name == PATTERN_ENROLL else Mode.CONNECT),
                               StaticKey.from_private(R_KEY))
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(b"\x00" * (MAX_NOISE_MESSAGE + 1))
    assert e.value.code is ErrorCode.TOO_LARGE and s.state is State.FAILED


def test_cipher_state_nonce_limit_and_failed_decrypt() -> None:
    tx, rx = CipherState(b"\x07" * 32), CipherState(b"\x07" * 32)
    ct = tx.encrypt(b"one")
    with pytest.raises(NoiseError):
        rx.decrypt(ct[:-1] + bytes([ct[-1] ^ 1]))
    assert rx.n == 0 and rx.decrypt(ct) == b"one"  # a failure does not advance n (§5.1)
    with pytest.raises(NoiseError):
        rx.decrypt(b"short")
    tx.n = rx.n = 2**64 - 1  # reserved for REKEY
    with pytest.raises(NoiseError):
        tx.encrypt(b"")
    with pytest.raises(NoiseError):
        rx.decrypt(ct)


# -- any bytes -> our error, nothing else ---------------------------------------------------------

_HYPOTHESIS = settings(max_examples=200, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow])
_PREPARED: dict[bytes, tuple[list[bytes], Callable[[int], HandshakeState]]] = {}


def _prepared(name: bytes) -> tuple[list[bytes], Callable[[int], HandshakeState]]:
    if name not in _PREPARED:
        _PREPARED[name] = _same_ephemerals(name)
    return _PREPARED[name]


@_HYPOTHESIS
@given(name=st.sampled_from(NAMES), index=st.integers(0, 2), data=st.binary(max_size=300),
       keep=st.integers(0, 120))
def test_any_bytes_as_any_message_engine(name: bytes, index: int, data: bytes,
                                         keep: int) -> None:
    """Random bytes (alone, or after a genuine prefix) as message 1, 2 or 3: NoiseError."""
    messages, reader = _prepared(name)
    index %= len(pattern(name).messages)
    forged = messages[index][:keep] + data
    if forged == messages[index]:
        return
    hs = reader(index)
    with pytest.raises(NoiseError):
        hs.read_message(forged)


def _session_reader(mode: Mode, index: int) -> NoiseSession:
    """A NoiseSession due to read handshake message ``index`` of ``mode``."""
    client, server = StaticKey.from_private(I_KEY), StaticKey.from_private(R_KEY)
    pre = preamble(mode)
    if mode is Mode.CONNECT:
        c = NoiseSession.initiator(pre, client, server_static=server.public)
        s = NoiseSession.responder(pre, server)
        if index == 0:
            return s
        s.read_handshake(c.write_handshake(b"ts"))
        c.set_psk(session_psk(PSK, c.local_ephemeral, b"\x00" * 32))
        return c
    c = NoiseSession.initiator(pre, client, psk=Psk(PSK))
    s = NoiseSession.responder(pre, server)
    if index == 0:
        return s
    s.read_handshake(c.write_handshake(b""))
    s.set_psk(Psk(PSK))
    m2 = s.write_handshake(b"")
    if index == 1:
        return c
    c.read_handshake(m2)
    c.write_handshake(b"")
    return s


@_HYPOTHESIS
@given(mode=st.sampled_from([Mode.CONNECT, Mode.ENROLL]), index=st.integers(0, 2),
       data=st.binary(max_size=300))
def test_any_bytes_as_any_message_session(mode: Mode, index: int, data: bytes) -> None:
    """Through NoiseSession: only AttestgateError (PROTOCOL), and the session is FAILED."""
    index %= 2 if mode is Mode.CONNECT else 3
    session = _session_reader(mode, index)
    with pytest.raises(AttestgateError) as e:
        session.read_handshake(data)
    assert e.value.code is ErrorCode.PROTOCOL
    assert session.state is State.FAILED


def test_responder_ephemeral_is_in_message_2() -> None:
    """CONNECT's responder draws e before message 2; message 2 carries exactly that key."""
    pre = preamble(Mode.CONNECT)
    c = NoiseSession.initiator(pre, StaticKey.from_private(I_KEY), server_static=R_PUBLIC)
    s = NoiseSession.responder(pre, StaticKey.from_private(R_KEY))
    s.read_handshake(c.write_handshake(b"ts"))
    drawn = s.local_ephemeral
    s.set_psk(session_psk(PSK, s.remote_ephemeral, drawn))
    m2 = s.write_handshake()
    assert responder_ephemeral(m2) == drawn == s.local_ephemeral
    c.set_psk(session_psk(PSK, c.local_ephemeral, responder_ephemeral(m2)))
    c.read_handshake(m2)
    assert c.established and s.established and s._hs is None and c._hs is None


def test_no_psk_after_the_end_or_a_failure() -> None:
    i, r = ours(PATTERN_CONNECT, True), ours(PATTERN_CONNECT, False)
    run(_Side(i), _Side(r), [b"", b""])
    with pytest.raises(NoiseError):
        i.set_psk(PSK)  # nothing keeps a secret once split
    r = ours(PATTERN_CONNECT, False)
    with pytest.raises(NoiseError):
        r.read_message(b"")
    with pytest.raises(NoiseError):
        r.set_psk(PSK)
    assert r._psk is None


def test_ephemeral_from_a_bad_rng_is_refused() -> None:
    hs = HandshakeState(XXPSK3, initiator=True, prologue=b"", static=I_KEY, psk=PSK,
                        rng=lambda n: b"\x01" * (n - 1))
    with pytest.raises(NoiseError):
        hs.write_message(b"")
    ok = HandshakeState(IKPSK2, initiator=False, prologue=PROLOGUE, static=R_KEY)
    ok.draw_ephemeral()
    ok.read_message(ours(PATTERN_CONNECT, True).write_message(b""))  # what a good rng gets
    hs = HandshakeState(IKPSK2, initiator=False, prologue=PROLOGUE, static=R_KEY,
                        rng=lambda n: b"\x01" * (n + 1))
    with pytest.raises(NoiseError):
        hs.draw_ephemeral()
    with pytest.raises(NoiseError):  # failed for good: even a genuine message 1
        hs.read_message(ours(PATTERN_CONNECT, True).write_message(b""))
