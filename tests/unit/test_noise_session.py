"""NoiseSession: two real endpoints joined by bytes (h11 ConnectionPair style), both modes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, Mode, Preamble, encode_frame, preamble
from shared.keys import Psk, StaticKey, enroll_psk, session_psk
from shared.noise_session import NoiseSession, Role, State, responder_ephemeral
from shared.wire import MAX_HANDSHAKE_PAYLOAD, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, PROTOCOL_VERSION

CLIENT = StaticKey.from_private(b"\x01" * 32)
SERVER = StaticKey.from_private(b"\x02" * 32)
OTHER_SERVER = StaticKey.from_private(b"\x03" * 32)
TOKEN_ID = bytes.fromhex("0011223344556677")
TOKEN_PSK = enroll_psk(b"token secret")
DEVICE_PSK = b"\x42" * 32
TS = (1234567).to_bytes(8, "big")

HYPOTHESIS = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Pair:
    """Both ends of one session, and every handshake message that went between them."""

    client: NoiseSession
    server: NoiseSession
    messages: list[bytes]

    def check_established(self) -> None:
        assert self.client.state is State.ESTABLISHED and self.server.state is State.ESTABLISHED
        assert self.client.handshake_hash == self.server.handshake_hash
        assert len(self.client.handshake_hash) == 32
        assert self.client.remote_static == SERVER.public
        assert self.server.remote_static == CLIENT.public


Tamper = Callable[[int, bytes], bytes]  # (message index, message) -> bytes delivered


def _keep(_i: int, m: bytes) -> bytes:
    return m


def enroll_pair(
    *,
    tamper: Tamper = _keep,
    client_psk: Psk = TOKEN_PSK,
    server_psk: Psk = TOKEN_PSK,
    client_pre: Preamble | None = None,
    server_pre: Preamble | None = None,
    rekey: tuple[int, int] = (1 << 20, 1 << 20),
    sessions: list[NoiseSession] | None = None,
) -> Pair:
    """XXpsk3 as gateway and client drive it: msg1 names the token, the server then sets its PSK.

    ``sessions`` receives (client, server) as soon as they exist, for tests that fail midway.
    """
    c = NoiseSession.initiator(client_pre or preamble(Mode.ENROLL), CLIENT, psk=client_psk,
                               rekey_every=rekey[0])
    s = NoiseSession.responder(server_pre or preamble(Mode.ENROLL), SERVER, rekey_every=rekey[1])
    if sessions is not None:
        sessions += [c, s]
    msgs: list[bytes] = []
    m1 = c.write_handshake(TOKEN_ID)
    msgs.append(m1)
    assert c.state is State.AWAIT_READ
    assert s.read_handshake(tamper(0, m1)) == TOKEN_ID
    assert s.state is State.NEED_PSK
    s.set_psk(server_psk)
    m2 = s.write_handshake(b"hello")
    msgs.append(m2)
    assert c.read_handshake(tamper(1, m2)) == b"hello"
    assert c.state is State.READY_WRITE
    assert c.remote_static == SERVER.public  # the client can check the server key here
    m3 = c.write_handshake()
    msgs.append(m3)
    assert c.state is State.ESTABLISHED
    assert s.read_handshake(tamper(2, m3)) == b""
    return Pair(c, s, msgs)


def connect_pair(
    *,
    tamper: Tamper = _keep,
    server_key: StaticKey = SERVER,
    client_device_psk: bytes = DEVICE_PSK,
    server_device_psk: bytes = DEVICE_PSK,
    client_pre: Preamble | None = None,
    server_pre: Preamble | None = None,
    rekey: tuple[int, int] = (1 << 20, 1 << 20),
    sessions: list[NoiseSession] | None = None,
) -> Pair:
    """IKpsk2 with the session PSK bound to both ephemerals."""
    c = NoiseSession.initiator(client_pre or preamble(Mode.CONNECT), CLIENT,
                               server_static=SERVER.public, rekey_every=rekey[0])
    s = NoiseSession.responder(server_pre or preamble(Mode.CONNECT), server_key,
                               rekey_every=rekey[1])
    if sessions is not None:
        sessions += [c, s]
    msgs: list[bytes] = []
    m1 = c.write_handshake(TS)
    msgs.append(m1)
    assert c.state is State.NEED_PSK
    assert s.read_handshake(tamper(0, m1)) == TS
    assert s.state is State.NEED_PSK
    assert s.remote_static == CLIENT.public  # known after message 1: look up the device
    s.set_psk(session_psk(server_device_psk, s.remote_ephemeral, s.local_ephemeral))
    m2 = s.write_handshake()
    msgs.append(m2)
    assert s.state is State.ESTABLISHED
    delivered = tamper(1, m2)
    c.set_psk(session_psk(client_device_psk, c.local_ephemeral, responder_ephemeral(delivered)))
    assert c.read_handshake(delivered) == b""
    return Pair(c, s, msgs)


PAIRS = {"enroll": enroll_pair, "connect": connect_pair}


def assert_final(session: NoiseSession) -> None:
    """FAILED is final: every further call is a PROTOCOL error and the state stays FAILED."""
    assert session.state is State.FAILED
    calls: list[Callable[[], object]] = [
        session.write_handshake,
        lambda: session.read_handshake(b"\x00" * 64),
        lambda: session.set_psk(TOKEN_PSK),
        lambda: session.encrypt(b"x"),
        lambda: session.decrypt(b"\x00" * 32),
    ]
    for call in calls:
        with pytest.raises(AttestgateError) as e:
            call()
        assert e.value.code is ErrorCode.PROTOCOL
        assert session.state is State.FAILED


def transport_both_ways(pair: Pair, n: int = 5) -> None:
    for i in range(n):
        msg = f"c->s {i}".encode()
        assert pair.server.decrypt(pair.client.encrypt(msg)) == msg
        msg = f"s->c {i}".encode()
        assert pair.client.decrypt(pair.server.encrypt(msg)) == msg


# -- success ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(PAIRS))
def test_handshake_and_transport(mode: str) -> None:
    pair = PAIRS[mode]()
    pair.check_established()
    transport_both_ways(pair)
    assert pair.client.encrypt(b"") != pair.client.encrypt(b"")  # fresh nonce per message


def test_enroll_and_connect_hashes_differ_per_session() -> None:
    a, b = enroll_pair(), enroll_pair()
    assert a.client.handshake_hash != b.client.handshake_hash  # fresh ephemerals


def test_session_psk_binds_both_ephemerals() -> None:
    pair = connect_pair()
    c, s = pair.client, pair.server
    assert c.local_ephemeral == s.remote_ephemeral
    assert s.local_ephemeral == c.remote_ephemeral == responder_ephemeral(pair.messages[1])


@pytest.mark.parametrize("mode", list(PAIRS))
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_handshake_through_frame_decoder(mode: str, chunking: str) -> None:
    """Every handshake and transport message framed, fed to a FrameDecoder, reassembled."""
    garbage = b"\x01\x00partial"  # header of a 256-byte frame, then too few bytes

    def through_decoder(_i: int, message: bytes) -> bytes:
        dec = FrameDecoder()
        stream = encode_frame(message) + garbage
        if chunking == "whole":
            dec.feed(stream)
        else:
            frames = []
            for b in stream:
                dec.feed(bytes([b]))
                frame = dec.next_frame()
                if frame is not None:
                    frames.append(frame)
            assert frames == [message]
            return frames[0]
        frame = dec.next_frame()
        assert frame == message
        assert dec.next_frame() is None  # the trailing garbage is not a frame (yet)
        assert dec.buffered == len(garbage)
        return frame

    pair = PAIRS[mode](tamper=through_decoder)
    pair.check_established()
    dec = FrameDecoder()
    sent = [f"message {i}".encode() * i for i in range(10)]
    stream = b"".join(encode_frame(pair.client.encrypt(m)) for m in sent)
    got = []
    for b in stream:
        dec.feed(bytes([b]))
        while (frame := dec.next_frame()) is not None:
            got.append(pair.server.decrypt(frame))
    assert got == sent


# -- wrong keys ---------------------------------------------------------------------------


def test_connect_to_other_server_key_fails_at_message_1() -> None:
    # The client believes it talks to SERVER; OTHER_SERVER cannot read message 1.
    with pytest.raises(AttestgateError) as e:
        connect_pair(server_key=OTHER_SERVER)
    assert e.value.code is ErrorCode.PROTOCOL


def test_connect_to_other_server_key_leaves_responder_failed() -> None:
    c = NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    s = NoiseSession.responder(preamble(Mode.CONNECT), OTHER_SERVER)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(c.write_handshake(TS))
    assert e.value.code is ErrorCode.PROTOCOL
    assert s.remote_static is None
    assert_final(s)


def test_enroll_token_psk_mismatch_fails_at_message_3() -> None:
    c = NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=enroll_psk(b"other secret"))
    s = NoiseSession.responder(preamble(Mode.ENROLL), SERVER)
    assert s.read_handshake(c.write_handshake(TOKEN_ID)) == TOKEN_ID
    s.set_psk(TOKEN_PSK)
    c.read_handshake(s.write_handshake())  # psk3: nothing is wrong yet
    m3 = c.write_handshake()
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(m3)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(s)


def test_connect_device_psk_mismatch_fails_at_message_2() -> None:
    c = NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    s = NoiseSession.responder(preamble(Mode.CONNECT), SERVER)
    s.read_handshake(c.write_handshake(TS))
    s.set_psk(session_psk(DEVICE_PSK, s.remote_ephemeral, s.local_ephemeral))
    m2 = s.write_handshake()
    c.set_psk(session_psk(b"\x43" * 32, c.local_ephemeral, responder_ephemeral(m2)))
    with pytest.raises(AttestgateError) as e:
        c.read_handshake(m2)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(c)


def test_connect_psk_over_wrong_ephemerals_fails() -> None:
    # The PSK must cover e_i || e_r in that order; swapped ephemerals do not match.
    c = NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    s = NoiseSession.responder(preamble(Mode.CONNECT), SERVER)
    s.read_handshake(c.write_handshake(TS))
    s.set_psk(session_psk(DEVICE_PSK, s.local_ephemeral, s.remote_ephemeral))
    m2 = s.write_handshake()
    c.set_psk(session_psk(DEVICE_PSK, c.local_ephemeral, responder_ephemeral(m2)))
    with pytest.raises(AttestgateError):
        c.read_handshake(m2)


# -- tampering ----------------------------------------------------------------------------

_LENGTHS = {name: [len(m) for m in build().messages] for name, build in PAIRS.items()}
_FLIPS = [(mode, i, pos) for mode, lengths in _LENGTHS.items()
          for i, n in enumerate(lengths) for pos in range(n)]


def test_every_handshake_byte_is_covered() -> None:
    # enroll: e+token+tag / e+s+"hello"+tags / s+tags ; connect: e+s+ts+tags / e+tag
    assert _LENGTHS == {"enroll": [56, 101, 64], "connect": [104, 48]}


@pytest.mark.parametrize("mode", list(PAIRS))
def test_flipped_byte_in_each_handshake_message(mode: str) -> None:
    """Any byte of any handshake message flipped: PROTOCOL, and its reader is FAILED for good."""
    for index, length in enumerate(_LENGTHS[mode]):
        for pos in range(length):

            def tamper(i: int, m: bytes, index: int = index, pos: int = pos) -> bytes:
                return flip_bit(m, pos) if i == index else m

            sessions: list[NoiseSession] = []
            with pytest.raises(AttestgateError) as e:
                PAIRS[mode](tamper=tamper, sessions=sessions)
            assert e.value.code is ErrorCode.PROTOCOL, (index, pos)
            client, server = sessions
            reader = server if index % 2 == 0 else client  # both patterns alternate from c->s
            assert reader.state is State.FAILED, (index, pos)
        assert_final(reader)


def flip_bit(m: bytes, pos: int) -> bytes:
    out = bytearray(m)
    out[pos] ^= 0x01  # a single bit is enough
    return bytes(out)


@pytest.mark.parametrize("mode", list(PAIRS))
def test_flipped_byte_in_transport_message(mode: str) -> None:
    for pos in range(len(b"hello world") + 16):
        pair = PAIRS[mode]()
        ct = bytearray(pair.client.encrypt(b"hello world"))
        ct[pos] ^= 0x80
        with pytest.raises(AttestgateError) as e:
            pair.server.decrypt(bytes(ct))
        assert e.value.code is ErrorCode.PROTOCOL
        assert_final(pair.server)


@pytest.mark.parametrize("mode", list(PAIRS))
def test_failed_session_refuses_the_genuine_message_afterwards(mode: str) -> None:
    pair = PAIRS[mode]()
    ct = pair.client.encrypt(b"genuine")
    with pytest.raises(AttestgateError):
        pair.server.decrypt(ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(AttestgateError) as e:
        pair.server.decrypt(ct)  # noiseprotocol itself would accept it now: we do not
    assert e.value.code is ErrorCode.PROTOCOL


@pytest.mark.parametrize("mode", list(PAIRS))
def test_replayed_transport_message(mode: str) -> None:
    pair = PAIRS[mode]()
    ct = pair.client.encrypt(b"pay 10")
    assert pair.server.decrypt(ct) == b"pay 10"
    with pytest.raises(AttestgateError) as e:
        pair.server.decrypt(ct)
    assert e.value.code is ErrorCode.PROTOCOL
    assert pair.server.state is State.FAILED


@pytest.mark.parametrize("mode", list(PAIRS))
def test_reordered_transport_messages(mode: str) -> None:
    pair = PAIRS[mode]()
    pair.client.encrypt(b"1")  # lost or delayed
    with pytest.raises(AttestgateError) as e:
        pair.server.decrypt(pair.client.encrypt(b"2"))
    assert e.value.code is ErrorCode.PROTOCOL


def test_transport_message_reflected_to_its_sender() -> None:
    pair = enroll_pair()
    with pytest.raises(AttestgateError):
        pair.client.decrypt(pair.client.encrypt(b"echo"))


# -- prologue -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(PAIRS))
def test_prologue_of_other_version_fails(mode: str) -> None:
    other = Preamble(PROTOCOL_VERSION + 1, Mode.ENROLL if mode == "enroll" else Mode.CONNECT)
    with pytest.raises(AttestgateError) as e:
        PAIRS[mode](server_pre=other)
    assert e.value.code is ErrorCode.PROTOCOL


def test_prologue_of_other_mode_fails() -> None:
    # Same Noise pattern, preamble of the other mode: the prologue alone must break it.
    c = NoiseSession(Mode.ENROLL, Role.INITIATOR, CLIENT, preamble(Mode.CONNECT).prologue,
                     psk=TOKEN_PSK)
    s = NoiseSession.responder(preamble(Mode.ENROLL), SERVER)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(c.write_handshake(TOKEN_ID))
    assert e.value.code is ErrorCode.PROTOCOL
    assert s.state is State.FAILED


def test_enroll_initiator_against_connect_responder_fails() -> None:
    c = NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=TOKEN_PSK)
    s = NoiseSession.responder(preamble(Mode.CONNECT), SERVER)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(c.write_handshake(TOKEN_ID))
    assert e.value.code is ErrorCode.PROTOCOL


# -- illegal call order ---------------------------------------------------------------------


def _fresh(mode: str, role: str) -> NoiseSession:
    if role == "initiator":
        if mode == "enroll":
            return NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=TOKEN_PSK)
        return NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    return NoiseSession.responder(preamble(Mode.ENROLL if mode == "enroll" else Mode.CONNECT),
                                  SERVER)


@pytest.mark.parametrize("mode", list(PAIRS))
def test_initiator_writes_twice(mode: str) -> None:
    c = _fresh(mode, "initiator")
    c.write_handshake()
    with pytest.raises(AttestgateError) as e:
        c.write_handshake()
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(c)


@pytest.mark.parametrize("mode", list(PAIRS))
def test_responder_writes_first(mode: str) -> None:
    s = _fresh(mode, "responder")
    with pytest.raises(AttestgateError) as e:
        s.write_handshake()
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(s)


@pytest.mark.parametrize("mode", list(PAIRS))
def test_initiator_reads_first(mode: str) -> None:
    c = _fresh(mode, "initiator")
    with pytest.raises(AttestgateError) as e:
        c.read_handshake(b"\x00" * 48)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(c)


@pytest.mark.parametrize("mode", list(PAIRS))
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_set_psk_when_not_needed(mode: str, role: str) -> None:
    session = _fresh(mode, role)
    with pytest.raises(AttestgateError) as e:
        session.set_psk(TOKEN_PSK)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(session)


def test_set_psk_twice() -> None:
    c = NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    s = NoiseSession.responder(preamble(Mode.CONNECT), SERVER)
    s.read_handshake(c.write_handshake(TS))
    s.set_psk(TOKEN_PSK)
    with pytest.raises(AttestgateError) as e:
        s.set_psk(TOKEN_PSK)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(s)


def test_responder_must_set_psk_before_writing() -> None:
    c = NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=TOKEN_PSK)
    s = NoiseSession.responder(preamble(Mode.ENROLL), SERVER)
    s.read_handshake(c.write_handshake(TOKEN_ID))
    with pytest.raises(AttestgateError) as e:
        s.write_handshake()  # the placeholder PSK must never be used
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(s)


def test_connect_initiator_must_set_psk_before_reading() -> None:
    pair_c = NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    s = NoiseSession.responder(preamble(Mode.CONNECT), SERVER)
    s.read_handshake(pair_c.write_handshake(TS))
    s.set_psk(session_psk(DEVICE_PSK, s.remote_ephemeral, s.local_ephemeral))
    m2 = s.write_handshake()
    with pytest.raises(AttestgateError) as e:
        pair_c.read_handshake(m2)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(pair_c)


@pytest.mark.parametrize("mode", list(PAIRS))
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_transport_before_established(mode: str, role: str) -> None:
    session = _fresh(mode, role)
    for call in (lambda: session.encrypt(b"x"), lambda: session.decrypt(b"\x00" * 17),
                 lambda: session.handshake_hash):
        with pytest.raises(AttestgateError) as e:
            call()
        assert e.value.code is ErrorCode.PROTOCOL


@pytest.mark.parametrize("mode", list(PAIRS))
def test_handshake_call_after_established(mode: str) -> None:
    pair = PAIRS[mode]()
    with pytest.raises(AttestgateError) as e:
        pair.server.read_handshake(pair.messages[-1])
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(pair.server)


def test_initiator_needs_its_secret() -> None:
    with pytest.raises(AttestgateError) as e:
        NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT)
    assert e.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(AttestgateError) as e:
        NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT)
    assert e.value.code is ErrorCode.BAD_REQUEST


def test_responder_ephemeral_of_short_message() -> None:
    with pytest.raises(AttestgateError) as e:
        responder_ephemeral(b"\x00" * 31)
    assert e.value.code is ErrorCode.PROTOCOL


# -- sizes --------------------------------------------------------------------------------


def test_handshake_payload_limit() -> None:
    c = NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=TOKEN_PSK)
    with pytest.raises(AttestgateError) as e:
        c.write_handshake(b"x" * (MAX_HANDSHAKE_PAYLOAD + 1))
    assert e.value.code is ErrorCode.TOO_LARGE
    assert c.state is State.FAILED
    ok = NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=TOKEN_PSK)
    ok.write_handshake(b"x" * MAX_HANDSHAKE_PAYLOAD)


def test_handshake_message_limit() -> None:
    s = NoiseSession.responder(preamble(Mode.ENROLL), SERVER)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(b"\x00" * (MAX_NOISE_MESSAGE + 1))
    assert e.value.code is ErrorCode.TOO_LARGE
    assert s.state is State.FAILED


def test_oversized_payload_from_peer_is_refused() -> None:
    # A peer that ignores the payload limit: the reader refuses it after authenticating it.
    c = NoiseSession.initiator(preamble(Mode.ENROLL), CLIENT, psk=TOKEN_PSK)
    m1 = c._hs.write_message(b"x" * (MAX_HANDSHAKE_PAYLOAD + 1))
    s = NoiseSession.responder(preamble(Mode.ENROLL), SERVER)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(m1)
    assert e.value.code is ErrorCode.TOO_LARGE
    assert s.state is State.FAILED


@pytest.mark.parametrize("mode", list(PAIRS))
def test_transport_size_limits(mode: str) -> None:
    pair = PAIRS[mode]()
    biggest = b"\xab" * MAX_PLAINTEXT
    ct = pair.client.encrypt(biggest)
    assert len(ct) == MAX_NOISE_MESSAGE
    assert pair.server.decrypt(ct) == biggest
    with pytest.raises(AttestgateError) as e:
        pair.client.encrypt(biggest + b"!")
    assert e.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(AttestgateError) as e:
        pair.server.decrypt(b"\x00" * (MAX_NOISE_MESSAGE + 1))
    assert e.value.code is ErrorCode.TOO_LARGE
    assert pair.server.state is State.FAILED


def test_message_limit_per_direction() -> None:
    pair = enroll_pair()
    pair.client._max_messages = 2
    pair.server._max_messages = 2
    for _ in range(2):
        pair.server.decrypt(pair.client.encrypt(b"m"))
    with pytest.raises(AttestgateError) as e:
        pair.client.encrypt(b"m")
    assert e.value.code is ErrorCode.PROTOCOL
    assert pair.client.state is State.FAILED


# -- rekey --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(PAIRS))
def test_rekey_every_3_messages(mode: str) -> None:
    pair = PAIRS[mode](rekey=(3, 3))
    transport_both_ways(pair, 20)
    # interleaved in bursts, crossing the rekey points at different times per direction
    for burst in (1, 2, 4, 7):
        cts = [pair.client.encrypt(bytes([i])) for i in range(burst)]
        assert [pair.server.decrypt(ct) for ct in cts] == [bytes([i]) for i in range(burst)]


@pytest.mark.parametrize("mode", list(PAIRS))
def test_peers_with_different_rekey_every_fail(mode: str) -> None:
    pair = PAIRS[mode](rekey=(3, 4))
    with pytest.raises(AttestgateError) as e:
        for i in range(20):
            pair.server.decrypt(pair.client.encrypt(bytes([i])))
    assert e.value.code is ErrorCode.PROTOCOL
    assert i == 3  # the first message after the sender's rekey
    assert pair.server.state is State.FAILED


# -- any bytes -> our error, nothing else ---------------------------------------------------


def _responder_for(mode: str) -> NoiseSession:
    return NoiseSession.responder(preamble(Mode.ENROLL if mode == "enroll" else Mode.CONNECT),
                                  SERVER)


@HYPOTHESIS
@given(mode=st.sampled_from(list(PAIRS)), data=st.binary(max_size=200))
def test_any_bytes_as_message_1(mode: str, data: bytes) -> None:
    s = _responder_for(mode)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(data)
    assert e.value.code is ErrorCode.PROTOCOL
    assert s.state is State.FAILED


@HYPOTHESIS
@given(mode=st.sampled_from(list(PAIRS)), data=st.binary(max_size=200))
def test_any_bytes_as_message_2(mode: str, data: bytes) -> None:
    c = _fresh(mode, "initiator")
    c.write_handshake()
    if mode == "connect":
        c.set_psk(Psk(b"\x00" * 32))
    with pytest.raises(AttestgateError) as e:
        c.read_handshake(data)
    assert e.value.code in (ErrorCode.PROTOCOL, ErrorCode.TOO_LARGE)
    assert c.state is State.FAILED


@HYPOTHESIS
@given(prefix_len=st.integers(0, 120), data=st.binary(max_size=120))
def test_valid_prefix_then_any_bytes_as_message_1(prefix_len: int, data: bytes) -> None:
    # Bytes that start like a genuine message 1 (a valid ephemeral key) then go astray.
    c = NoiseSession.initiator(preamble(Mode.CONNECT), CLIENT, server_static=SERVER.public)
    m1 = c.write_handshake(TS)
    forged = m1[:prefix_len] + data
    s = _responder_for("connect")
    if forged == m1:
        return
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(forged)
    assert e.value.code is ErrorCode.PROTOCOL


@HYPOTHESIS
@given(data=st.binary(max_size=200))
def test_any_bytes_as_transport_message(data: bytes) -> None:
    pair = enroll_pair()
    with pytest.raises(AttestgateError) as e:
        pair.server.decrypt(data)
    assert e.value.code is ErrorCode.PROTOCOL


@pytest.mark.parametrize("mode", list(PAIRS))
@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 10, b"\x00" * 32, b"\x00" * 104, b"\xff" * 104,
     (1).to_bytes(32, "little") + b"\x00" * 72],  # empty, truncated, low-order points
)
def test_malformed_message_1(mode: str, data: bytes) -> None:
    s = _responder_for(mode)
    with pytest.raises(AttestgateError) as e:
        s.read_handshake(data)
    assert e.value.code is ErrorCode.PROTOCOL
    assert_final(s)
