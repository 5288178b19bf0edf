"""attestgate's Noise hash functions: HASH, HMAC and HKDF over ``hashlib.blake2s``.

The handshake engine (:mod:`shared.noise_handshake`) uses these. They were written in
round 4 as a faster backend for noiseprotocol (whose HMAC went through a ``cryptography``
HMAC object, ~4.7 us each, 25 per IKpsk2 side); noiseprotocol itself is no longer used at
run time, so only the functions are left here:

* HMAC-BLAKE2s: RFC 2104 written out over ``hashlib.blake2s`` (C): ~1.6 us, equal to
  ``hmac.digest(key, data, "blake2s")`` (2.1 us through OpenSSL);
* HKDF (Noise rev 34 §4.3): the padded ``temp_key`` XORed with the pads once for its two
  or three HMACs: ~4.8 us for three outputs.

Both are pinned against the standard library and noiseprotocol's own by
``tests/unit/test_noise_backend.py``.
"""

from __future__ import annotations

import hashlib
from typing import Final

blake2s: Final = hashlib.blake2s

# HMAC (RFC 2104) with BLAKE2s, block 64 bytes: keys are padded (hashed first when longer)
# and XORed with the pads by bytes.translate over these tables.
_BLOCK: Final = 64
_ZEROS: Final = bytes(_BLOCK)
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def _block_key(key: bytes) -> bytes:
    if len(key) > _BLOCK:
        key = blake2s(key).digest()
    return key + _ZEROS[len(key):]


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s(key, data) (equal to ``hmac.digest(key, data, "blake2s")``)."""
    k = _block_key(key)
    return blake2s(k.translate(_OPAD) + blake2s(k.translate(_IPAD) + data).digest()).digest()


def hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> tuple[bytes, ...]:
    """Noise's HKDF (rev 34 §4.3) over HMAC-BLAKE2s: two or three outputs. The padded
    ``temp_key`` is XORed with the pads once for its two or three HMACs."""
    temp = _block_key(hmac_blake2s(chaining_key, input_key_material))
    inner, outer = temp.translate(_IPAD), temp.translate(_OPAD)
    output1 = blake2s(outer + blake2s(inner + b"\x01").digest()).digest()
    output2 = blake2s(outer + blake2s(inner + output1 + b"\x02").digest()).digest()
    if num_outputs == 2:
        return output1, output2
    return output1, output2, blake2s(outer + blake2s(inner + output2 + b"\x03").digest()).digest()
