"""Fuzz the connection's first parsers: preamble, frames, Noise handshake and transport.

Each target runs ``ATTESTGATE_FUZZ_INPUTS`` (default 100,000) generated inputs
through ``tests.support.fuzz.run``: any bytes give a result or an AttestgateError
with a known code. On top of that invariant each target checks what a correct
parser must also do (a round trip, whole == chunked, only genuine bytes accepted).
"""

from __future__ import annotations

import copy
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, Mode, encode_frame, parse_preamble, preamble
from shared.keys import StaticKey, enroll_psk, session_psk
from shared.noise_session import NoiseSession, State, responder_ephemeral
from shared.wire import FRAME_HEADER_LEN, MAGIC, MAX_NOISE_MESSAGE, PROTOCOL_VERSION
from tests.support.fuzz import FUZZ_INPUTS, Mutator, run

# A loaded CI machine may run a target several times slower than its ~10-60 s here; the
# per-input hang check (tests.support.fuzz.HANG_S) is what catches a hang.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

SERVER = StaticKey.from_private(b"\x01" * 32)
CLIENT = StaticKey.from_private(b"\x02" * 32)
TOKEN_ID = bytes.fromhex("0011223344556677")
TOKEN_PSK = enroll_psk(b"token secret")
DEVICE_PSK = b"\x42" * 32
TS = (1234567).to_bytes(8, "big")


def _check_count(result_inputs: int) -> None:
    assert result_inputs >= FUZZ_INPUTS


# -- preamble ----------------------------------------------------------------------------


def test_fuzz_preamble() -> None:
    seeds = [preamble(m).encode() for m in Mode] + [
        MAGIC + bytes([PROTOCOL_VERSION]) + b"C" + b"\x00\x20",  # preamble + a frame header
        MAGIC + bytes([PROTOCOL_VERSION + 1]) + b"E",  # downgrade/upgrade attempt
    ]
    gen = Mutator(random.Random(0), seeds, max_len=64, dictionary=[MAGIC, b"E", b"C"])

    def generate(rng: random.Random) -> bytes:
        gen.rng = rng
        return gen()

    def check(data: bytes) -> None:
        pre = parse_preamble(data)
        # Accepted means exactly one of the two valid preambles, byte for byte.
        assert pre.encode() == data and pre.version == PROTOCOL_VERSION

    _check_count(run("preamble", generate, check).inputs)


# -- frames ------------------------------------------------------------------------------


def _decode(data: bytes, chunks: list[int]) -> tuple[list[bytes], int, str | None]:
    """Feed ``data`` in pieces of the given sizes; frames out, bytes left, error code."""
    dec = FrameDecoder()
    frames: list[bytes] = []
    pos = 0
    try:
        for size in chunks:
            dec.feed(data[pos:pos + size])
            pos += size
            while (frame := dec.next_frame()) is not None:
                frames.append(frame)
    except AttestgateError as exc:
        return frames, dec.buffered, exc.code.value
    return frames, dec.buffered, None


def _frame_seeds() -> list[bytes]:
    rng = random.Random(1)
    seeds = [b"", encode_frame(b""), encode_frame(b"x")]
    for sizes in ((32,), (96, 48), (1, 2, 3), (300,), (16, 0, 16), (1000, 20)):
        seeds.append(b"".join(encode_frame(rng.randbytes(n)) for n in sizes))
    seeds.append(encode_frame(rng.randbytes(MAX_NOISE_MESSAGE)))  # the largest frame
    return seeds


def test_fuzz_frames_whole_chunked_and_bytewise() -> None:
    """Fed whole, in random chunks and byte by byte, with trailing garbage: same frames."""
    gen = Mutator(random.Random(0), _frame_seeds(), max_len=3 * (MAX_NOISE_MESSAGE + 2),
                  dictionary=[b"\xff\xff", b"\x00\x00", b"\x00\x01"])

    def generate(rng: random.Random) -> tuple[bytes, list[int]]:
        gen.rng = rng
        data = gen()
        if rng.random() < 0.25:  # valid frames followed by trailing garbage
            data = rng.choice(gen.seeds) + rng.randbytes(rng.randrange(1, 64))
        if len(data) <= 256 and rng.random() < 0.5:
            chunks = [1] * len(data)  # byte by byte
        else:
            chunks = []
            left = len(data)
            while left > 0:
                chunks.append(min(left, rng.choice((1, 2, 3, 7, 64, 1000, 70000))))
                left -= chunks[-1]
        return data, chunks

    def check(case: tuple[bytes, list[int]]) -> None:
        data, chunks = case
        frames, left, error = _decode(data, chunks)
        if len(data) <= 2 * FrameDecoder.LIMIT:
            whole = _decode(data, [len(data)])
            assert (frames, left, error) == whole, "chunking changed the result"
        consumed = b"".join(encode_frame(f) for f in frames)
        assert data.startswith(consumed)  # frames are exactly what was sent, in order
        if error is None:
            assert left == len(data) - len(consumed) < FRAME_HEADER_LEN + MAX_NOISE_MESSAGE
        else:
            raise AttestgateError(ErrorCode(error))  # counted in the summary by its code

    _check_count(run("frames (whole/chunked/bytewise)", generate, check).inputs)


# -- Noise ---------------------------------------------------------------------------------
# A session is consumed by one failed message (FAILED is final), so each input needs a
# session in the right state. Building one costs a handshake; a deep copy of a prepared
# session costs much less. cryptography's AEAD and X25519 key objects are
# immutable and cannot be pickled, so copies share them.

for _immutable in (ChaCha20Poly1305, type(ChaCha20Poly1305(b"\x00" * 32)),
                   type(X25519PrivateKey.from_private_bytes(b"\x05" * 32)),
                   type(X25519PrivateKey.from_private_bytes(b"\x05" * 32).public_key())):
    copy._deepcopy_dispatch[_immutable] = lambda x, memo: x  # type: ignore[attr-defined]


def _fork(session: NoiseSession) -> NoiseSession:
    return copy.deepcopy(session)


def _fork_established(session: NoiseSession) -> NoiseSession:
    """A copy of an established session (no handshake state left in it: two cipher
    states, whose AEAD objects the copy shares, being immutable)."""
    assert session.established
    return copy.deepcopy(session)


@dataclass
class Prepared:
    """Sessions waiting for the next handshake message, and that message as sent."""

    ik_responder: NoiseSession  # fresh, awaiting msg1
    ik_msg1: bytes
    xx_responder: NoiseSession
    xx_msg1: bytes
    xx_responder_msg3: NoiseSession  # has read msg1 and written msg2
    xx_msg3: bytes
    ik_initiator: NoiseSession  # has written msg1, PSK not yet set (needs e_r from msg2)
    ik_msg2: bytes
    xx_initiator: NoiseSession  # has written msg1
    xx_msg2: bytes


def _prepare() -> Prepared:
    pc, pe = preamble(Mode.CONNECT), preamble(Mode.ENROLL)
    ik_c = NoiseSession.initiator(pc, CLIENT, server_static=SERVER.public)
    ik_m1 = ik_c.write_handshake(TS)
    ik_c_copy = _fork(ik_c)
    ik_s = NoiseSession.responder(pc, SERVER)
    ik_s_copy = _fork(ik_s)
    ik_s.read_handshake(ik_m1)
    ik_s.set_psk(session_psk(DEVICE_PSK, ik_s.remote_ephemeral, ik_s.local_ephemeral))
    ik_m2 = ik_s.write_handshake()

    xx_c = NoiseSession.initiator(pe, CLIENT, psk=TOKEN_PSK)
    xx_m1 = xx_c.write_handshake(TOKEN_ID)
    xx_c_copy = _fork(xx_c)
    xx_s = NoiseSession.responder(pe, SERVER)
    xx_s_copy = _fork(xx_s)
    xx_s.read_handshake(xx_m1)
    xx_s.set_psk(TOKEN_PSK)
    xx_m2 = xx_s.write_handshake(b"hello")
    xx_s_msg3 = _fork(xx_s)
    xx_c.read_handshake(xx_m2)
    xx_m3 = xx_c.write_handshake()
    return Prepared(ik_s_copy, ik_m1, xx_s_copy, xx_m1, xx_s_msg3, xx_m3, ik_c_copy, ik_m2,
                    xx_c_copy, xx_m2)


def _reads(p: Prepared) -> dict[str, tuple[Callable[[bytes], object], bytes]]:
    """Per handshake message: how the reading side consumes it, and the genuine bytes."""

    def ik_msg1(m: bytes) -> object:
        s = _fork(p.ik_responder)
        payload = s.read_handshake(m)
        # Accepted: the gateway learns the key and goes on exactly as with a real client.
        assert s.state is State.NEED_PSK and s.remote_static is not None
        s.set_psk(session_psk(DEVICE_PSK, s.remote_ephemeral, s.local_ephemeral))
        s.write_handshake()
        return payload

    def xx_msg1(m: bytes) -> object:
        s = _fork(p.xx_responder)
        payload = s.read_handshake(m)
        s.set_psk(TOKEN_PSK)
        s.write_handshake(b"hello")
        return payload

    def xx_msg3(m: bytes) -> object:
        s = _fork(p.xx_responder_msg3)
        payload = s.read_handshake(m)
        assert m == p.xx_msg3 and s.remote_static == CLIENT.public  # only the genuine one
        return payload

    def ik_msg2(m: bytes) -> object:
        c = _fork(p.ik_initiator)
        c.set_psk(session_psk(DEVICE_PSK, c.local_ephemeral, responder_ephemeral(m)))
        payload = c.read_handshake(m)
        assert m == p.ik_msg2 and c.established
        return payload

    def xx_msg2(m: bytes) -> object:
        c = _fork(p.xx_initiator)
        payload = c.read_handshake(m)
        assert m == p.xx_msg2 and c.remote_static == SERVER.public
        c.write_handshake()
        return payload

    return {"ik msg1 (responder)": (ik_msg1, p.ik_msg1),
            "xx msg1 (responder)": (xx_msg1, p.xx_msg1),
            "xx msg3 (responder)": (xx_msg3, p.xx_msg3),
            "ik msg2 (initiator)": (ik_msg2, p.ik_msg2),
            "xx msg2 (initiator)": (xx_msg2, p.xx_msg2)}


def test_fuzz_noise_handshake_messages() -> None:
    """Responder reading msg1/msg3, initiator reading msg2, both patterns, one target."""
    prepared = [_prepare() for _ in range(2)]
    reads = _reads(prepared[0])
    other = _reads(prepared[1])  # messages of another session: replays, cross-session splices
    kinds = list(reads)
    seeds = [m for _, m in reads.values()] + [m for _, m in other.values()]
    gen = Mutator(random.Random(0), seeds, max_len=MAX_NOISE_MESSAGE + 8, random_share=0.08,
                  dictionary=[m[:32] for m in seeds] + [b"\x00" * 32])

    def generate(rng: random.Random) -> tuple[str, bytes]:
        gen.rng = rng
        kind = rng.choice(kinds)
        genuine = reads[kind][1]
        roll = rng.random()
        if roll < 0.6:
            return kind, gen.mutate(genuine)  # mostly the message this side expects
        if roll < 0.62:
            return kind, genuine
        if roll < 0.64:
            return kind, rng.randbytes(MAX_NOISE_MESSAGE + 1)  # over the limit
        return kind, gen()

    def check(case: tuple[str, bytes]) -> object:
        kind, message = case
        return reads[kind][0](message)

    _check_count(run("noise handshake msg1/msg2/msg3", generate, check).inputs)


def _established_pairs() -> list[tuple[NoiseSession, NoiseSession]]:
    pairs = []
    for mode in (Mode.CONNECT, Mode.ENROLL):
        pre = preamble(mode)
        if mode is Mode.CONNECT:
            c = NoiseSession.initiator(pre, CLIENT, server_static=SERVER.public, rekey_every=3)
            s = NoiseSession.responder(pre, SERVER, rekey_every=3)
            s.read_handshake(c.write_handshake(TS))
            s.set_psk(session_psk(DEVICE_PSK, s.remote_ephemeral, s.local_ephemeral))
            m2 = s.write_handshake()
            c.set_psk(session_psk(DEVICE_PSK, c.local_ephemeral, responder_ephemeral(m2)))
            c.read_handshake(m2)
        else:
            c = NoiseSession.initiator(pre, CLIENT, psk=TOKEN_PSK, rekey_every=3)
            s = NoiseSession.responder(pre, SERVER, rekey_every=3)
            s.read_handshake(c.write_handshake(TOKEN_ID))
            s.set_psk(TOKEN_PSK)
            c.read_handshake(s.write_handshake())
            s.read_handshake(c.write_handshake())
        pairs += [(c, s), (s, c)]  # both directions
    return pairs


def test_fuzz_noise_transport() -> None:
    """An established session decrypting mutated, replayed, reordered and random frames."""
    rng0 = random.Random(7)
    streams = []
    for sender, receiver in _established_pairs():
        assert sender.established and receiver.established
        plain = [rng0.randbytes(n) for n in (0, 1, 16, 200, 1500, 5)]
        cipher = [sender.encrypt(p) for p in plain]  # rekey every 3: crosses a rekey
        streams.append((receiver, plain, cipher))
    seeds = [c for _, _, cs in streams for c in cs]
    gen = Mutator(random.Random(0), seeds, max_len=MAX_NOISE_MESSAGE + 8, random_share=0.08)

    def generate(rng: random.Random) -> tuple[int, int, bytes]:
        gen.rng = rng
        which = rng.randrange(len(streams))
        cipher = streams[which][2]
        prefix = rng.choice((0, 0, 1, 2, 3, 4))  # genuine messages delivered first
        roll = rng.random()
        if roll < 0.6:
            message = gen.mutate(cipher[prefix])
        elif roll < 0.62:
            message = cipher[prefix]
        elif roll < 0.7:
            message = rng.choice(cipher)  # replay or reorder
        elif roll < 0.72:
            message = rng.randbytes(MAX_NOISE_MESSAGE + 1)
        else:
            message = gen()
        return which, prefix, message

    def check(case: tuple[int, int, bytes]) -> object:
        which, prefix, message = case
        receiver, plain, cipher = streams[which]
        session = _fork_established(receiver)
        for i in range(prefix):
            assert session.decrypt(cipher[i]) == plain[i]
        try:
            out = session.decrypt(message)
        except AttestgateError:
            assert session.state is State.FAILED  # any failure is final
            raise
        assert message == cipher[prefix] and out == plain[prefix]  # only the genuine one
        return out

    _check_count(run("noise transport decrypt", generate, check).inputs)


def test_fuzz_frame_header_values() -> None:
    """Every 2-byte length header value, with and without its body: exhaustive, cheap."""
    for length in range(0, 1 << 16):
        dec = FrameDecoder()
        dec.feed(struct.pack(">H", length))
        assert dec.next_frame() == (b"" if length == 0 else None)
        if length == 0:
            continue
        dec.feed(b"\x00" * length)
        assert dec.next_frame() == b"\x00" * length and dec.buffered == 0
