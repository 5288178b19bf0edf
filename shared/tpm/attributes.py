"""Checks that a key sent as evidence has the shape attestgate relies on."""

from __future__ import annotations

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import Alg, Curve, ObjectAttr, digest_size
from shared.tpm.structures import EccParms, RsaParms, TpmPublic, parse_public, to_crypto_key

# Generated inside this TPM, never leaves it, and its parent cannot be swapped.
_RESIDENT = ObjectAttr.FIXEDTPM | ObjectAttr.FIXEDPARENT | ObjectAttr.SENSITIVEDATAORIGIN


def _signing_scheme_ok(pub: TpmPublic, *, allow_null: bool) -> bool:
    p = pub.parameters
    if isinstance(p, EccParms):
        ok_key = p.curve == Curve.NIST_P256 and p.kdf.scheme == Alg.NULL
        schemes: tuple[int, ...] = (Alg.ECDSA,)
    elif isinstance(p, RsaParms):
        ok_key = p.key_bits >= 2048
        schemes = (Alg.RSASSA, Alg.RSAPSS)
    else:
        return False
    if p.symmetric.algorithm != Alg.NULL:
        return False  # a signing key has no symmetric algorithm (Part 2, TPMS_*_PARMS)
    if p.scheme.scheme == Alg.NULL:
        return ok_key and allow_null
    return ok_key and p.scheme.scheme in schemes and p.scheme.hash_alg == Alg.SHA256


def _common(public: bytes, code: ErrorCode) -> TpmPublic:
    pub = parse_public(public, code=code)
    if digest_size(pub.name_alg) is None or pub.name_alg == Alg.SHA1:
        raise AttestgateError(code, f"nameAlg {pub.name_alg:#x}")
    to_crypto_key(pub, code=code)  # the key must be usable, not just well-formed
    return pub


def check_ak(public: bytes) -> TpmPublic:
    """Check an AK's TPM2B_PUBLIC and return it parsed.

    An AK must be an ECC P-256 (ECDSA/SHA-256) or RSA ≥ 2048 (RSASSA/RSAPSS, SHA-256)
    key with fixedTPM, fixedParent, sensitiveDataOrigin, restricted and sign set and
    decrypt clear: only then does a signature prove the TPM generated what it signed.
    Raises AK_INVALID (TOO_LARGE over the size limit).
    """
    code = ErrorCode.AK_INVALID
    pub = _common(public, code)
    needed = _RESIDENT | ObjectAttr.RESTRICTED | ObjectAttr.SIGN_ENCRYPT
    if not pub.has(needed) or pub.attributes & ObjectAttr.DECRYPT:
        raise AttestgateError(code, f"ak attributes {pub.attributes:#x}")
    # A restricted signing key must name its scheme, or the TPM could pick any.
    if not _signing_scheme_ok(pub, allow_null=False):
        raise AttestgateError(code, "ak is not an ECDSA P-256 / RSA SHA-256 signing key")
    return pub


def check_post_key(public: bytes) -> TpmPublic:
    """Check the board post key's TPM2B_PUBLIC and return it parsed.

    It must be a non-restricted ECC P-256 signing key (ECDSA/SHA-256 or NULL scheme)
    with fixedTPM, fixedParent and sensitiveDataOrigin set and decrypt clear, so that
    its private part was born in the TPM and cannot leave it. Raises CERTIFY_INVALID,
    since the post key is evidence only through the AK's certification of it.
    """
    code = ErrorCode.CERTIFY_INVALID
    pub = _common(public, code)
    if (not pub.has(_RESIDENT | ObjectAttr.SIGN_ENCRYPT)
            or pub.attributes & (ObjectAttr.DECRYPT | ObjectAttr.RESTRICTED)):
        raise AttestgateError(code, f"post key attributes {pub.attributes:#x}")
    if not isinstance(pub.parameters, EccParms) or not _signing_scheme_ok(pub, allow_null=True):
        raise AttestgateError(code, "post key is not an ECC P-256 signing key")
    return pub


def check_srk(public: bytes) -> TpmPublic:
    """Check a storage key's TPM2B_PUBLIC (the parent of imported keys) and return it.

    It must be an ECC P-256 or RSA ≥ 2048 restricted decrypt key, not a signing key,
    with fixedTPM, fixedParent and sensitiveDataOrigin set and an AES-CFB symmetric
    definition (which wrapping to it uses). Raises CERTIFY_INVALID.
    """
    code = ErrorCode.CERTIFY_INVALID
    pub = _common(public, code)
    needed = _RESIDENT | ObjectAttr.RESTRICTED | ObjectAttr.DECRYPT
    if not pub.has(needed) or pub.attributes & ObjectAttr.SIGN_ENCRYPT:
        raise AttestgateError(code, f"srk attributes {pub.attributes:#x}")
    p = pub.parameters
    if isinstance(p, EccParms):
        ok_key = p.curve == Curve.NIST_P256 and p.kdf.scheme == Alg.NULL
    elif isinstance(p, RsaParms):
        ok_key = p.key_bits >= 2048
    else:
        raise AttestgateError(code, f"srk type {pub.type:#x}")
    sym = p.symmetric
    if (not ok_key or p.scheme.scheme != Alg.NULL or sym.algorithm != Alg.AES
            or sym.mode != Alg.CFB or sym.key_bits not in (128, 256)):
        raise AttestgateError(code, "srk is not an AES-CFB ECC P-256 / RSA storage key")
    return pub
