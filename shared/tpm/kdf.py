"""TPM key derivation and secret sharing (TPM 2.0 Part 1, §11.4.10 and Annexes B/C).

These let the server encrypt a seed to a TPM key (EK or SRK) so that only that TPM can
recover it, exactly as TPM2_MakeCredential and TPM2_Duplicate do.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import Alg, Curve, hash_for
from shared.tpm.marshal import tpm2b, u32
from shared.tpm.structures import EccParms, RsaParms, TpmPublic, to_crypto_key

RandomBytes = Callable[[int], bytes]
"""A source of ``n`` uniformly random bytes, e.g. ``secrets.token_bytes``."""

# Group orders, to turn random bytes into an ephemeral ECDH scalar.
_ORDERS: Final[dict[int, int]] = {
    Curve.NIST_P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    Curve.NIST_P384: int(
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
        "581a0db248b0a77aecec196accc52973", 16),
    Curve.NIST_P521: int(
        "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
        "fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409", 16),
}


def _hash_name(alg: int) -> str:
    h = hash_for(alg)
    if h is None:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"hash alg {alg:#x}")
    return h.name


def kdfa(hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, *,
         bits: int) -> bytes:
    """KDFa: SP 800-108 counter-mode HMAC KDF as the TPM uses it (Part 1, 11.4.10.2).

    Each block is HMAC(key, counter || label || 0x00 || contextU || contextV || bits).
    ``label`` is given without its terminating NUL; ``bits`` must be a multiple of 8.
    """
    if bits <= 0 or bits % 8:
        raise AttestgateError(ErrorCode.INTERNAL, f"kdfa bits {bits}")
    name = _hash_name(hash_alg)
    fixed = label + b"\x00" + context_u + context_v + u32(bits)
    out = b""
    counter = 1
    while len(out) < bits // 8:
        out += hmac.new(key, u32(counter) + fixed, name).digest()
        counter += 1
    return out[: bits // 8]


def kdfe(hash_alg: int, z: bytes, use: bytes, party_u: bytes, party_v: bytes, *,
         bits: int) -> bytes:
    """KDFe: SP 800-56A concatenation KDF (Part 1, 11.4.10.3).

    Each block is H(counter || Z || use || PartyUInfo || PartyVInfo). ``use`` must
    include its terminating NUL (e.g. ``b"IDENTITY\\0"``), as the TPM hashes it.
    """
    if bits <= 0 or bits % 8:
        raise AttestgateError(ErrorCode.INTERNAL, f"kdfe bits {bits}")
    name = _hash_name(hash_alg)
    out = b""
    counter = 1
    while len(out) < bits // 8:
        out += hashlib.new(name, u32(counter) + z + use + party_u + party_v).digest()
        counter += 1
    return out[: bits // 8]


def aes_cfb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-CFB with a zero IV, as the TPM protects credentials and duplicates.

    A zero IV is safe here only because every key is freshly derived from a new seed.
    """
    enc = Cipher(AES(key), CFB(b"\x00" * 16)).encryptor()
    return enc.update(data) + enc.finalize()


def encrypt_seed(target: TpmPublic, label: bytes, rng: RandomBytes) -> tuple[bytes, bytes]:
    """Make a fresh seed only ``target``'s TPM can recover; return ``(seed, TPM2B secret)``.

    RSA: seed of nameAlg size, RSA-OAEP with the nameAlg hash and ``label`` (NUL
    included). ECC: one-pass ECDH with an ephemeral key, seed = KDFe(nameAlg, Z, label,
    ephemeral x, target x); the secret is the ephemeral TPMS_ECC_POINT. The second
    element is the marshalled TPM2B_ENCRYPTED_SECRET. The OAEP padding randomness
    comes from OpenSSL, not ``rng``.
    """
    h = hash_for(target.name_alg)
    if h is None:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"nameAlg {target.name_alg:#x}")
    key = to_crypto_key(target, code=ErrorCode.BAD_REQUEST)
    if isinstance(key, rsa.RSAPublicKey) and isinstance(target.parameters, RsaParms):
        seed = rng(h.digest_size)
        oaep = padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=label)
        return seed, tpm2b(key.encrypt(seed, oaep))
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(target.parameters, EccParms):
        order = _ORDERS[target.parameters.curve]
        size = (key.curve.key_size + 7) // 8
        # 64 extra random bits make the reduction's bias negligible (FIPS 186-5 A.2.1).
        scalar = int.from_bytes(rng(size + 8), "big") % (order - 1) + 1
        ephemeral = ec.derive_private_key(scalar, key.curve)
        z = ephemeral.exchange(ec.ECDH(), key)
        e_nums = ephemeral.public_key().public_numbers()
        ex, ey = e_nums.x.to_bytes(size, "big"), e_nums.y.to_bytes(size, "big")
        tx = key.public_numbers().x.to_bytes(size, "big")
        seed = kdfe(target.name_alg, z, label, ex, tx, bits=h.digest_size * 8)
        return seed, tpm2b(tpm2b(ex) + tpm2b(ey))
    raise AttestgateError(ErrorCode.BAD_REQUEST, f"cannot share a seed with type {target.type:#x}")


def protect(target: TpmPublic, seed: bytes, name: bytes, plaintext: bytes) -> bytes:
    """The outer wrapper of credentials and duplicates (Part 1, 24.4 / 23.3.2.3).

    Returns TPM2B_DIGEST(HMAC) || encrypted, where encrypted = AES-CFB(KDFa(nameAlg,
    seed, "STORAGE", name), plaintext) and the HMAC key is KDFa(nameAlg, seed,
    "INTEGRITY"), over encrypted || name. ``target`` must have an AES-CFB symmetric.
    """
    parms = target.parameters
    if not isinstance(parms, RsaParms | EccParms) or parms.symmetric.algorithm != Alg.AES or (
        parms.symmetric.mode != Alg.CFB or parms.symmetric.key_bits not in (128, 192, 256)
    ):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "target has no AES-CFB symmetric")
    h = hash_for(target.name_alg)
    if h is None:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"nameAlg {target.name_alg:#x}")
    sym_key = kdfa(target.name_alg, seed, b"STORAGE", name, b"", bits=parms.symmetric.key_bits)
    encrypted = aes_cfb_encrypt(sym_key, plaintext)
    hmac_key = kdfa(target.name_alg, seed, b"INTEGRITY", b"", b"", bits=h.digest_size * 8)
    outer = hmac.new(hmac_key, encrypted + name, h.name).digest()
    return tpm2b(outer) + encrypted
