"""attestgate's Noise handshake engine, sans-IO: exactly two protocols, nothing else.

``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` (reconnect) and
``Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`` (enrollment), as the Noise Protocol Framework,
revision 34 (2018-07-11), defines them: CipherState (§5.1), SymmetricState (§5.2),
HandshakeState (§5.3) with the tokens ``e s ee es se ss psk``, the psk modifier rules
(§9: a ``psk`` token at the end of message N-1 for ``pskN``, and every ``e`` token also
calls ``MixKey(e.public_key)`` in a handshake with a psk), and ``REKEY(k)`` (§4.2: the
first 32 bytes of ``ENCRYPT(k, 2^64-1, zerolen, zeros)``). Message patterns are tuples of
tokens, built once per module.

Why our own and not noiseprotocol's ``NoiseConnection``/``HandshakeState``: the primitives
are the same (``cryptography``'s X25519 and ChaCha20-Poly1305, ``hashlib.blake2s``, the
HMAC/HKDF of :mod:`shared.noise_backend`), but noiseprotocol builds a protocol object, a
pattern object, key-pair wrappers and four cipher wrappers per session and runs a generic
state machine over them: ~130 us of Python per handshake side (bench/README.md, "Round 5:
gateway connect path"), about as much as two X25519 operations, and leaves its objects
in reference cycles for the garbage collector. This engine is a few slotted objects and a
loop over a tuple of tokens: one IKpsk2 side went from ~315-325 us to ~257 us of CPU in
process (X25519 is ~190-220 us of that), the gateway's CPU per connect in the stack by
0.86x (bench/README.md, "Round 6: Noise handshake engine"). The bytes are the same: the
cacophony vectors and byte-for-byte interoperability with stock noiseprotocol in both
roles, both patterns and across a rekey are pinned by ``tests/unit/test_noise_handshake.py``.

Not supported, and refused with :class:`NoiseError`: any other protocol name (pattern,
DH, cipher or hash), fallback and deferred patterns, several PSKs, messages longer than
65535 bytes, a handshake message out of turn or after the last one. An all-zero X25519
result (a low-order public key) is an error, never a key.

Failures: every error is a :class:`NoiseError` with a fixed reason (no key material in
it); a handshake that failed once is unusable for good. Key material is dropped as soon as
it is no longer needed (Python bytes cannot be wiped: references are dropped, that is all).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shared.noise_backend import blake2s, hkdf

DHLEN: Final = 32
TAGLEN: Final = 16
MAX_MESSAGE: Final = 65535  # Noise §3: every message, handshake or transport
MAX_NONCE: Final = (1 << 64) - 1  # reserved for REKEY; a CipherState refuses to use it

_NONCE: Final = struct.Struct("<4xQ")  # ChaChaPoly: 32 zero bits, then n little-endian (§12.3)
_REKEY_NONCE: Final = _NONCE.pack(MAX_NONCE)
_ZEROS: Final = bytes(32)

Random = Callable[[int], bytes]


class NoiseError(Exception):
    """A Noise failure. Its text is a fixed reason, never key material or peer bytes."""


# -- patterns ----------------------------------------------------------------------------

E, S, EE, ES, SE, SS, PSK = "e", "s", "ee", "es", "se", "ss", "psk"


@dataclass(frozen=True)
class Pattern:
    """One supported protocol: its name, the responder's pre-message, the message patterns."""

    name: bytes
    responder_static_known: bool  # pre-message "<- s" (IK)
    messages: tuple[tuple[str, ...], ...]
    initial_hash: bytes  # InitializeSymmetric: HASH(name), every name here is > 32 bytes
    has_psk: bool


def _pattern(name: bytes, responder_static_known: bool,
             messages: tuple[tuple[str, ...], ...]) -> Pattern:
    assert len(name) > DHLEN  # else h would be the name zero-padded (§5.2)
    assert all(t in (E, S, EE, ES, SE, SS, PSK) for m in messages for t in m)
    return Pattern(name, responder_static_known, messages, blake2s(name).digest(),
                   any(PSK in m for m in messages))


# Noise rev 34 §7.5 (IK: <- s ... ; XX) with the psk modifier of §9 applied.
IKPSK2: Final = _pattern(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s", True,
                         ((E, ES, S, SS), (E, EE, SE, PSK)))
XXPSK3: Final = _pattern(b"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s", False,
                         ((E,), (E, EE, S, ES), (S, SE, PSK)))
PATTERNS: Final = {p.name: p for p in (IKPSK2, XXPSK3)}


def pattern(name: bytes) -> Pattern:
    """The pattern of a full protocol name; anything but the two above raises."""
    found = PATTERNS.get(name)
    if found is None:
        raise NoiseError("unsupported protocol name")
    return found


# -- CipherState (transport) ---------------------------------------------------------------


class CipherState:
    """One direction of an established session: ChaCha20-Poly1305 with an implicit nonce.

    A failed decryption does not advance the nonce (§5.1); the caller decides whether the
    session goes on (attestgate's does not). Only the AEAD object holds the key.
    """

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.n = 0

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        out = self._aead.encrypt(_NONCE.pack(n), plaintext, ad)
        self.n = n + 1
        return out

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        try:
            out = self._aead.decrypt(_NONCE.pack(n), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("authentication failed") from None
        self.n = n + 1
        return out

    def rekey(self) -> None:
        """``k = REKEY(k)``; the nonce is not reset (§5.1, §11.3), as noiseprotocol does."""
        self._aead = ChaCha20Poly1305(self._aead.encrypt(_REKEY_NONCE, _ZEROS, b"")[:32])


# -- HandshakeState ------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _static_key(private: bytes) -> tuple[X25519PrivateKey, bytes]:
    # The same static key for every session of a process: parsed, and its public key
    # derived (a scalar multiplication), once.
    key = X25519PrivateKey.from_private_bytes(private)
    return key, key.public_key().public_bytes_raw()


def _dh(private: X25519PrivateKey | None, public: X25519PublicKey | None) -> bytes:
    if private is None or public is None:
        raise NoiseError("key missing for DH")
    # cryptography refuses an all-zero shared secret (a low-order point) with ValueError;
    # the explicit check keeps that property whatever the library version does.
    shared = private.exchange(public)
    if hmac.compare_digest(shared, _ZEROS):
        raise NoiseError("low-order public key")
    return shared


class HandshakeState:
    """One side of one handshake (§5.3). Drive it with :meth:`write_message` and
    :meth:`read_message` in turn (the initiator writes first); when :attr:`finished`,
    :meth:`split` gives the (send, receive) cipher states once.

    ``static`` is the local static private key; ``remote_static`` is the responder's key
    for IK's initiator (its pre-message). ``psk`` may be left out and given later with
    :meth:`set_psk`, before the message that holds the ``psk`` token. ``rng`` draws the
    ephemeral private key (32 bytes): at the first ``e`` token, or earlier with
    :meth:`draw_ephemeral`.
    """

    __slots__ = ("_aead", "_ck", "_e", "_failed", "_h", "_index", "_initiator", "_k",
                 "_n", "_pattern", "_psk", "_re_key", "_rng", "_rs_key", "_s", "_split_done",
                 "e_public", "re", "rs", "s_public")

    def __init__(self, pattern: Pattern, *, initiator: bool, prologue: bytes, static: bytes,
                 remote_static: bytes | None = None, psk: bytes | None = None,
                 rng: Random = os.urandom) -> None:
        if len(static) != DHLEN:
            raise NoiseError("static key length")
        if (remote_static is not None) != (initiator and pattern.responder_static_known):
            raise NoiseError("remote static key: expected exactly for IK's initiator")
        if remote_static is not None and len(remote_static) != DHLEN:
            raise NoiseError("remote static key length")
        self._pattern = pattern
        self._initiator = initiator
        self._failed = False
        self._split_done = False
        self._s, self.s_public = _static_key(bytes(static))
        self.rs: bytes | None = None if remote_static is None else bytes(remote_static)
        self._e: X25519PrivateKey | None = None
        self.e_public: bytes | None = None
        self.re: bytes | None = None
        # The remote public keys as cryptography objects, made at their first DH (each
        # serves two DHs per side).
        self._re_key: X25519PublicKey | None = None
        self._rs_key: X25519PublicKey | None = None
        self._psk: bytes | None = None
        if psk is not None:
            self.set_psk(psk)
        self._rng = rng
        # InitializeSymmetric(name), MixHash(prologue), then the pre-message (IK: "<- s").
        h = blake2s(pattern.initial_hash + prologue).digest()
        if pattern.responder_static_known:
            h = blake2s(h + (remote_static if remote_static is not None else self.s_public)
                        ).digest()
        self._h = h
        self._ck: bytes = pattern.initial_hash
        self._k: bytes | None = None
        self._n = 0
        self._aead: ChaCha20Poly1305 | None = None  # made at the current key's first use
        self._index = 0

    # -- what the caller may learn ---------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._index == len(self._pattern.messages) and not self._failed

    @property
    def handshake_hash(self) -> bytes:
        """``h``: the channel binding once finished (before that, the running hash)."""
        return self._h

    # -- inputs ------------------------------------------------------------------------------
    def set_psk(self, psk: bytes) -> None:
        if self._failed or self._split_done:
            raise NoiseError("handshake over")
        if len(psk) != 32:
            raise NoiseError("psk length")
        self._psk = bytes(psk)

    def draw_ephemeral(self) -> bytes:
        """Draw our ephemeral key now (it is sent at our next ``e``); returns its public key."""
        if self._e is not None or self._failed:
            raise NoiseError("ephemeral already drawn")
        try:
            return self._new_ephemeral()
        except NoiseError:
            self._fail()
            raise

    def _new_ephemeral(self) -> bytes:
        private = self._rng(DHLEN)
        if len(private) != DHLEN:
            raise NoiseError("ephemeral key length")
        self._e = X25519PrivateKey.from_private_bytes(private)
        self.e_public = self._e.public_key().public_bytes_raw()
        return self.e_public

    # -- messages --------------------------------------------------------------------------
    def write_message(self, payload: bytes) -> bytes:
        """Our next handshake message carrying ``payload``."""
        self._turn(writing=True)
        try:
            return self._write(payload)
        except NoiseError:
            self._fail()
            raise
        except ValueError:  # from cryptography: a low-order point, a bad length
            self._fail()
            raise NoiseError("handshake failed") from None

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message; returns its payload."""
        self._turn(writing=False)
        try:
            return self._read(message)
        except NoiseError:
            self._fail()
            raise
        except (InvalidTag, ValueError):
            self._fail()
            raise NoiseError("handshake failed") from None

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) for this side, once finished; the handshake's secrets are dropped."""
        if not self.finished or self._split_done:
            raise NoiseError("split before the end of the handshake")
        k1, k2 = hkdf(self._ck, b"", 2)
        self._split_done = True
        self._drop_secrets()
        c1, c2 = CipherState(k1), CipherState(k2)
        return (c1, c2) if self._initiator else (c2, c1)

    # -- internals ---------------------------------------------------------------------------
    def _turn(self, *, writing: bool) -> None:
        if self._failed:
            raise NoiseError("handshake failed before")
        index = self._index
        if index >= len(self._pattern.messages) or (index % 2 == 0) != (
                writing == self._initiator):
            self._fail()
            raise NoiseError("handshake message out of turn")

    def _fail(self) -> None:
        self._failed = True
        self._drop_secrets()

    def _drop_secrets(self) -> None:
        self._ck = b""
        self._k = self._psk = None
        self._e = self._aead = None
        self._re_key = self._rs_key = None

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, self._k = hkdf(self._ck, ikm, 2)
        self._n, self._aead = 0, None

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._k is None:
            ciphertext = plaintext
        else:
            if self._aead is None:
                self._aead = ChaCha20Poly1305(self._k)
            ciphertext = self._aead.encrypt(_NONCE.pack(self._n), plaintext, self._h)
            self._n += 1
        self._h = blake2s(self._h + ciphertext).digest()
        return ciphertext

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._k is None:
            plaintext = ciphertext
        else:
            if self._aead is None:
                self._aead = ChaCha20Poly1305(self._k)
            plaintext = self._aead.decrypt(_NONCE.pack(self._n), ciphertext, self._h)
            self._n += 1
        self._h = blake2s(self._h + ciphertext).digest()
        return plaintext

    def _remote_ephemeral(self) -> X25519PublicKey | None:
        if self._re_key is None and self.re is not None:
            self._re_key = X25519PublicKey.from_public_bytes(self.re)
        return self._re_key

    def _remote_static(self) -> X25519PublicKey | None:
        if self._rs_key is None and self.rs is not None:
            self._rs_key = X25519PublicKey.from_public_bytes(self.rs)
        return self._rs_key

    def _dh_token(self, token: str) -> None:
        initiator = self._initiator
        if token == EE:
            shared = _dh(self._e, self._remote_ephemeral())
        elif token == ES:
            shared = (_dh(self._e, self._remote_static()) if initiator
                      else _dh(self._s, self._remote_ephemeral()))
        elif token == SE:
            shared = (_dh(self._s, self._remote_ephemeral()) if initiator
                      else _dh(self._e, self._remote_static()))
        else:  # SS
            shared = _dh(self._s, self._remote_static())
        self._mix_key(shared)

    def _mix_psk(self) -> None:
        psk = self._psk
        if psk is None:
            raise NoiseError("psk not set")
        self._psk = None  # used once
        # MixKeyAndHash(psk): ck, temp_h, temp_k = HKDF(ck, psk, 3); MixHash(temp_h).
        self._ck, temp_h, self._k = hkdf(self._ck, psk, 3)
        self._h = blake2s(self._h + temp_h).digest()
        self._n, self._aead = 0, None

    def _write(self, payload: bytes) -> bytes:
        parts = []
        for token in self._pattern.messages[self._index]:
            if token == E:
                e_public = self.e_public if self._e is not None else self._new_ephemeral()
                assert e_public is not None
                parts.append(e_public)
                self._h = blake2s(self._h + e_public).digest()
                if self._pattern.has_psk:
                    self._mix_key(e_public)
            elif token == S:
                parts.append(self._encrypt_and_hash(self.s_public))
            elif token == PSK:
                self._mix_psk()
            else:
                self._dh_token(token)
        parts.append(self._encrypt_and_hash(bytes(payload)))
        message = b"".join(parts)
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message too long")
        self._index += 1
        return message

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message too long")
        message = bytes(message)
        pos = 0
        for token in self._pattern.messages[self._index]:
            if token == E:
                re = message[pos:pos + DHLEN]
                if len(re) != DHLEN:
                    raise NoiseError("message too short")
                pos += DHLEN
                self.re, self._re_key = re, None
                self._h = blake2s(self._h + re).digest()
                if self._pattern.has_psk:
                    self._mix_key(re)
            elif token == S:
                size = DHLEN + TAGLEN if self._k is not None else DHLEN
                temp = message[pos:pos + size]
                if len(temp) != size:
                    raise NoiseError("message too short")
                pos += size
                self.rs, self._rs_key = self._decrypt_and_hash(temp), None
            elif token == PSK:
                self._mix_psk()
            else:
                self._dh_token(token)
        rest = message[pos:]
        if self._k is not None and len(rest) < TAGLEN:
            raise NoiseError("message too short")
        payload = self._decrypt_and_hash(rest)
        self._index += 1
        return payload
