"""Hand-built TPM 2.0 structures for unit tests: real ECC P-256 keys from ``cryptography``,
marshalled with ``struct`` exactly as a TPM would (TPM 2.0 Library, Part 2).

Deliberately independent of ``shared.tpm`` (no ``build_public``), so that the parsers are
checked against bytes written from the specification, not against their own marshaller.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

# -- constants (Part 2), spelled out here on purpose ------------------------------------
TPM_ALG_ECC = 0x0023
TPM_ALG_SHA256 = 0x000B
TPM_ALG_NULL = 0x0010
TPM_ALG_ECDSA = 0x0018
TPM_ECC_NIST_P256 = 0x0003
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

FIXEDTPM = 0x00000002
FIXEDPARENT = 0x00000010
SENSITIVEDATAORIGIN = 0x00000020
USERWITHAUTH = 0x00000040
RESTRICTED = 0x00010000
DECRYPT = 0x00020000
SIGN_ENCRYPT = 0x00040000

POST_KEY_ATTRS = FIXEDTPM | FIXEDPARENT | SENSITIVEDATAORIGIN | USERWITHAUTH | SIGN_ENCRYPT
AK_ATTRS = POST_KEY_ATTRS | RESTRICTED

PCR_SELECT_BYTES = 3  # PCR_SELECT_MIN of a PC-client TPM (24 PCRs)


def tpm2b(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def tpmt_public_ecc(key: ec.EllipticCurvePrivateKey, attributes: int) -> bytes:
    """TPMT_PUBLIC of an ECC P-256 ECDSA/SHA-256 signing key, nameAlg SHA-256."""
    nums = key.public_key().public_numbers()
    return (
        struct.pack(">HHI", TPM_ALG_ECC, TPM_ALG_SHA256, attributes)
        + tpm2b(b"")  # authPolicy
        # TPMS_ECC_PARMS: symmetric NULL, scheme ECDSA/SHA-256, curve, kdf NULL
        + struct.pack(">HHHHH", TPM_ALG_NULL, TPM_ALG_ECDSA, TPM_ALG_SHA256,
                      TPM_ECC_NIST_P256, TPM_ALG_NULL)
        # unique: TPMS_ECC_POINT
        + tpm2b(nums.x.to_bytes(32, "big"))
        + tpm2b(nums.y.to_bytes(32, "big"))
    )


def tpm2b_public_ecc(key: ec.EllipticCurvePrivateKey, attributes: int = POST_KEY_ATTRS) -> bytes:
    """TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC)."""
    return tpm2b(tpmt_public_ecc(key, attributes))


def post_key_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A post key as the board expects it: non-restricted ECDSA P-256 signing key."""
    return tpm2b_public_ecc(key, POST_KEY_ATTRS)


def ak_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An AK: restricted ECDSA P-256 signing key."""
    return tpm2b_public_ecc(key, AK_ATTRS)


def tpm_name(public: bytes) -> bytes:
    """TPM2B_NAME body of a TPM2B_PUBLIC: nameAlg || SHA-256(TPMT_PUBLIC)."""
    return struct.pack(">H", TPM_ALG_SHA256) + hashlib.sha256(public[2:]).digest()


def tpmt_signature_ecdsa(der: bytes) -> bytes:
    """TPMT_SIGNATURE (ECDSA/SHA-256) from a DER signature made by ``cryptography``."""
    r, s = decode_dss_signature(der)
    return (struct.pack(">HH", TPM_ALG_ECDSA, TPM_ALG_SHA256)
            + tpm2b(r.to_bytes(32, "big")) + tpm2b(s.to_bytes(32, "big")))


def sign_digest(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """TPM2_Sign over a 32-byte digest (the post key's job)."""
    return tpmt_signature_ecdsa(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))


def sign_data(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """What TPM2_Quote does with a TPMS_ATTEST: ECDSA over SHA-256 of the bytes."""
    return tpmt_signature_ecdsa(key.sign(data, ec.ECDSA(hashes.SHA256())))


def pcr_selection_sha256(indices: list[int] | tuple[int, ...]) -> bytes:
    """TPML_PCR_SELECTION with one SHA-256 bank."""
    bitmap = bytearray(PCR_SELECT_BYTES)
    for i in indices:
        bitmap[i // 8] |= 1 << (i % 8)
    return struct.pack(">IHB", 1, TPM_ALG_SHA256, PCR_SELECT_BYTES) + bytes(bitmap)


def quote_attest(
    pcr_values: Mapping[int, bytes],
    *,
    extra_data: bytes,
    signer: bytes = b"",
    clock: int = 1_000_000,
    reset_count: int = 5,
    restart_count: int = 0,
    safe: int = 1,
    firmware: int = 0x2019102300163636,
    magic: int = TPM_GENERATED_VALUE,
    st: int = TPM_ST_ATTEST_QUOTE,
) -> bytes:
    """TPMS_ATTEST of a TPM2_Quote over the SHA-256 PCRs in ``pcr_values``."""
    indices = sorted(pcr_values)
    pcr_digest = hashlib.sha256(b"".join(pcr_values[i] for i in indices)).digest()
    return (
        struct.pack(">IH", magic, st)
        + tpm2b(signer or struct.pack(">H", TPM_ALG_SHA256) + b"\x5a" * 32)
        + tpm2b(extra_data)
        + struct.pack(">QIIB", clock, reset_count, restart_count, safe)
        + struct.pack(">Q", firmware)
        + pcr_selection_sha256(indices)
        + tpm2b(pcr_digest)
    )


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)
