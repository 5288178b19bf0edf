"""attestgate's noiseprotocol backend: the same primitives, less Python per handshake.

noiseprotocol (``noise.backends.default``) computes every HMAC of its HKDF through a
``cryptography`` HMAC object (an object, two ABC ``isinstance`` checks, update,
finalize: ~4.7 us each here), and an IKpsk2 handshake takes 25 of them per side; its
hashes, DH and keypairs go through ABC-checked wrappers too. This backend keeps the very
same primitives and the handshake logic of noiseprotocol (``noise.state``), and only
swaps how they are called:

* HMAC-BLAKE2s: RFC 2104 written out over ``hashlib.blake2s`` (C): ~1.6 us, equal to
  ``hmac.digest(key, data, "blake2s")`` (2.1 us through OpenSSL); HASH:
  ``hashlib.blake2s`` (SHA-256 and the other hashes are not used by attestgate and not
  offered);
* HKDF (Noise rev 34 §4.3): the padded temp key XORed with the pads once for its two or
  three HMACs: ~4.8 us for three outputs, against ~19 us for the stock one;
* X25519 and ChaCha20-Poly1305: ``cryptography``'s, as before, without the per-call
  type checks (the keys are always made here); public keys keep the bytes they came
  from (``cryptography`` returns exactly those bytes, so the hash is the same).

Byte-for-byte interoperability with stock noiseprotocol in both roles and both
patterns, and the cacophony test vectors, are pinned by
``tests/unit/test_noise_backend.py``. Measured: see bench/README.md ("Round 4: gateway").
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.backends.default.keypairs import KeyPair25519
from noise.backends.noise_backend import NoiseBackend
from noise.exceptions import NoiseValueError
from noise.functions.cipher import Cipher
from noise.functions.dh import DH
from noise.functions.hash import Hash

_blake2s = hashlib.blake2s


class X25519KeyPair(KeyPair25519):  # type: ignore[misc]  # noiseprotocol is untyped
    """A X25519 keypair whose ``public_bytes`` are the raw bytes it was made from."""

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> X25519KeyPair:
        if len(private_bytes) != 32:
            raise NoiseValueError("Invalid length of private_bytes! Should be 32")
        private = X25519PrivateKey.from_private_bytes(private_bytes)
        public = private.public_key()
        return cls(private=private, public=public, public_bytes=public.public_bytes_raw())

    @classmethod
    def from_public_bytes(cls, public_bytes: bytes) -> X25519KeyPair:
        if len(public_bytes) != 32:
            raise NoiseValueError("Invalid length of public_bytes! Should be 32")
        public_bytes = bytes(public_bytes)
        return cls(public=X25519PublicKey.from_public_bytes(public_bytes),
                   public_bytes=public_bytes)


class X25519(DH):  # type: ignore[misc]  # noiseprotocol is untyped
    @property
    def klass(self) -> type[X25519KeyPair]:
        return X25519KeyPair

    @property
    def dhlen(self) -> int:
        return 32

    def generate_keypair(self) -> X25519KeyPair:
        private = X25519PrivateKey.generate()
        public = private.public_key()
        return X25519KeyPair(private, public, public.public_bytes_raw())

    def dh(self, private_key: Any, public_key: Any) -> bytes:
        # cryptography raises ValueError for an all-zero shared secret (a low-order point).
        return private_key.exchange(public_key)  # type: ignore[no-any-return]


_NONCE_PAD: Final = bytes(4)  # ChaChaPoly's nonce: 32 zero bits, then n little-endian


class ChaChaPoly(Cipher):  # type: ignore[misc]  # noiseprotocol is untyped
    """ChaCha20-Poly1305 whose AEAD object is made at its key's first use: noiseprotocol
    initialises a cipher at every MixKey (9 per IKpsk2 side), most never used."""

    def __init__(self) -> None:
        super().__init__()
        self._key: bytes | None = None
        self._made: ChaCha20Poly1305 | None = None

    @property
    def klass(self) -> type[ChaCha20Poly1305]:
        return ChaCha20Poly1305

    def initialize(self, key: bytes) -> None:
        self._key, self._made = key, None

    def _aead(self) -> ChaCha20Poly1305:
        if self._made is None:
            assert self._key is not None  # noiseprotocol initialises before use
            self._made = ChaCha20Poly1305(self._key)
        return self._made

    def encrypt(self, k: bytes, n: int, ad: bytes | None, plaintext: bytes) -> bytes:
        return self._aead().encrypt(_NONCE_PAD + n.to_bytes(8, "little"), plaintext, ad)

    def decrypt(self, k: bytes, n: int, ad: bytes | None, ciphertext: bytes) -> bytes:
        return self._aead().decrypt(_NONCE_PAD + n.to_bytes(8, "little"), ciphertext, ad)


class Blake2s(Hash):  # type: ignore[misc]  # noiseprotocol is untyped
    @property
    def fn(self) -> Any:
        return _blake2s

    @property
    def hashlen(self) -> int:
        return 32

    @property
    def blocklen(self) -> int:
        return 64

    def hash(self, data: bytes) -> bytes:
        return _blake2s(data).digest()


# HMAC (RFC 2104) with BLAKE2s, block 64 bytes: keys are padded (hashed first when longer)
# and XORed with the pads by bytes.translate over these tables.
_BLOCK: Final = 64
_ZEROS: Final = bytes(_BLOCK)
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def _block_key(key: bytes) -> bytes:
    if len(key) > _BLOCK:
        key = _blake2s(key).digest()
    return key + _ZEROS[len(key):]


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s(key, data) (equal to ``hmac.digest(key, data, "blake2s")``)."""
    k = _block_key(key)
    return _blake2s(k.translate(_OPAD) + _blake2s(k.translate(_IPAD) + data).digest()).digest()


def hmac_hash(key: bytes, data: bytes, algorithm: Any) -> bytes:
    """noiseprotocol's HMAC hook; this backend has one hash, BLAKE2s."""
    return hmac_blake2s(key, data)


def hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int,
         hmac_hash_fn: Any = None) -> tuple[bytes, ...]:
    """Noise's HKDF (rev 34 §4.3) over HMAC-BLAKE2s: two or three outputs. The padded
    ``temp_key`` is XORed with the pads once for its two or three HMACs."""
    temp = _block_key(hmac_blake2s(chaining_key, input_key_material))
    inner, outer = temp.translate(_IPAD), temp.translate(_OPAD)
    output1 = _blake2s(outer + _blake2s(inner + b"\x01").digest()).digest()
    output2 = _blake2s(outer + _blake2s(inner + output1 + b"\x02").digest()).digest()
    if num_outputs == 2:
        return output1, output2
    return output1, output2, _blake2s(outer + _blake2s(inner + output2 + b"\x03").digest()).digest()


class AttestgateBackend(NoiseBackend):  # type: ignore[misc]
    """Only what attestgate's protocol names use: 25519, ChaChaPoly, BLAKE2s."""

    def __init__(self) -> None:
        super().__init__()
        self.diffie_hellmans = {"25519": X25519}
        self.ciphers = {"ChaChaPoly": ChaChaPoly}
        self.hashes = {"BLAKE2s": Blake2s}
        self.keypairs = {"25519": X25519KeyPair}
        self.hmac = hmac_hash
        self.hkdf = hkdf


BACKEND: Final = AttestgateBackend()
