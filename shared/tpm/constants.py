"""TPM 2.0 constants (TPM 2.0 Library, Part 2) used by the parsers and builders.

Values are kept as plain ints in parsed records, so an unknown algorithm parses and is
then refused by whoever needs it, instead of failing an enum conversion mid-parse.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final

from cryptography.hazmat.primitives import hashes


class Alg(IntEnum):
    """TPM_ALG_ID values (Part 2, Table 9) that attestgate handles."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    ECMQV = 0x001D
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CFB = 0x0043


class St(IntEnum):
    """TPM_ST structure tags of attestation structures (Part 2, Table 19)."""

    ATTEST_NV = 0x8014
    ATTEST_COMMAND_AUDIT = 0x8015
    ATTEST_SESSION_AUDIT = 0x8016
    ATTEST_CERTIFY = 0x8017
    ATTEST_QUOTE = 0x8018
    ATTEST_TIME = 0x8019
    ATTEST_CREATION = 0x801A


class Curve(IntEnum):
    """TPM_ECC_CURVE values (Part 2, Table 10)."""

    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005


class ObjectAttr(IntFlag):
    """TPMA_OBJECT bits (Part 2, Table 31)."""

    FIXEDTPM = 0x00000002
    STCLEAR = 0x00000004
    FIXEDPARENT = 0x00000010
    SENSITIVEDATAORIGIN = 0x00000020
    USERWITHAUTH = 0x00000040
    ADMINWITHPOLICY = 0x00000080
    NODA = 0x00000400
    ENCRYPTEDDUPLICATION = 0x00000800
    RESTRICTED = 0x00010000
    DECRYPT = 0x00020000
    SIGN_ENCRYPT = 0x00040000
    X509SIGN = 0x00080000


# TPM_GENERATED_VALUE: every TPMS_ATTEST a TPM signs starts with it ("\xffTCG"), which
# is what stops a restricted key from signing attacker-chosen bytes that look like one.
GENERATED_VALUE: Final = 0xFF544347

# Hash algorithms the verifier accepts, with their cryptography counterpart.
HASHES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    Alg.SHA1: hashes.SHA1,
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}

# Longest digest of any supported hash; bounds every TPM2B_DIGEST / TPM2B_DATA.
MAX_DIGEST: Final = 64
# TPMU_NAME: a hash alg id plus a digest, or a 4-byte handle.
MAX_NAME: Final = 2 + MAX_DIGEST
# TPM2B_PUBLIC_KEY_RSA carries at most a 4096-bit modulus.
MAX_RSA_BYTES: Final = 512
# TPM2B_ECC_PARAMETER carries at most a P-521 coordinate.
MAX_ECC_BYTES: Final = 66
# PCR_SELECT_MAX for implementations with up to 32 PCRs.
MAX_PCR_SELECT: Final = 4
# More banks than any TPM implements; bounds the TPML_PCR_SELECTION count.
MAX_PCR_BANKS: Final = 16
# TPM2B_SENSITIVE_DATA / key bits of a keyed-hash object.
MAX_SYM_DATA: Final = 128

CURVE_BYTES: Final[dict[int, int]] = {
    Curve.NIST_P192: 24,
    Curve.NIST_P224: 28,
    Curve.NIST_P256: 32,
    Curve.NIST_P384: 48,
    Curve.NIST_P521: 66,
}


def hash_for(alg: int) -> hashes.HashAlgorithm | None:
    """Return a fresh cryptography hash object for a TPM hash alg id, or None if unsupported."""
    cls = HASHES.get(alg)
    return cls() if cls is not None else None


def digest_size(alg: int) -> int | None:
    """Digest length in bytes of a supported TPM hash alg id, or None."""
    h = hash_for(alg)
    return h.digest_size if h is not None else None
