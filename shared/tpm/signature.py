"""Signature checks: a TPMT_SIGNATURE against a TPM public key."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import Alg, Curve, hash_for
from shared.tpm.structures import (
    EccParms,
    EcdsaSignature,
    PublicKey,
    RsaParms,
    RsaSignature,
    Signature,
    TpmPublic,
    parse_public,
    parse_signature,
    to_crypto_key,
)


def verify_signature(key: TpmPublic, sig: Signature, data: bytes, *, code: ErrorCode,
                     prehashed: bool = False, public: PublicKey | None = None) -> None:
    """Check ``sig`` by ``key`` over ``data`` (or over the digest ``data`` if prehashed).

    If the key fixes a scheme, the signature must use that scheme and hash, as the TPM
    itself would enforce. Raises ``code`` on any mismatch or a signature that fails.
    ``public`` is ``key`` as a cryptography key when the caller has it already.
    """
    parms = key.parameters
    if not isinstance(parms, RsaParms | EccParms):
        raise AttestgateError(code, f"signing key type {key.type:#x}")
    sig_alg = sig.sig_alg if isinstance(sig, RsaSignature) else Alg.ECDSA
    if parms.scheme.scheme != Alg.NULL and (
        parms.scheme.scheme != sig_alg or parms.scheme.hash_alg != sig.hash_alg
    ):
        raise AttestgateError(code, "signature scheme differs from the key's scheme")
    h = hash_for(sig.hash_alg)
    if h is None:
        raise AttestgateError(code, f"signature hash {sig.hash_alg:#x}")
    if prehashed and len(data) != h.digest_size:
        raise AttestgateError(code, "digest length differs from the signature hash")
    algorithm = Prehashed(h) if prehashed else h
    if public is None:
        public = to_crypto_key(key, code=code)
    try:
        if isinstance(sig, EcdsaSignature):
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise AttestgateError(code, "ECDSA signature from a non-ECC key")
            if not (0 < sig.r < 2**528 and 0 < sig.s < 2**528):
                raise AttestgateError(code, "ECDSA r/s out of range")
            public.verify(encode_dss_signature(sig.r, sig.s), data, ec.ECDSA(algorithm))
        else:
            if not isinstance(public, rsa.RSAPublicKey):
                raise AttestgateError(code, "RSA signature from a non-RSA key")
            pad: padding.AsymmetricPadding
            if sig.sig_alg == Alg.RSASSA:
                pad = padding.PKCS1v15()
            else:
                # TPMs differ in the PSS salt length they use (digest size or maximum),
                # and either is a valid PSS signature; the verifier recovers it.
                pad = padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO)
            public.verify(sig.sig, data, pad, algorithm)
    except InvalidSignature:
        raise AttestgateError(code, "signature does not verify") from None


def verify_ecdsa_signature(public_bytes: bytes, tpmt_signature: bytes, digest: bytes) -> None:
    """Check a board post signature made by the post key with TPM2_Sign.

    ``public_bytes`` is the post key's TPM2B_PUBLIC (ECC P-256); ``digest`` is the
    32-byte SHA-256 value the client passed to TPM2_Sign with scheme ECDSA/SHA-256.
    The caller must compute that digest itself from the post it stores. Raises
    BAD_SIGNATURE for every failure, malformed input included.
    """
    code = ErrorCode.BAD_SIGNATURE
    key = parse_public(public_bytes, code=code)
    if not isinstance(key.parameters, EccParms) or key.parameters.curve != Curve.NIST_P256:
        raise AttestgateError(code, "post key is not ECC P-256")
    sig = parse_signature(tpmt_signature, code=code)
    if not isinstance(sig, EcdsaSignature) or sig.hash_alg != Alg.SHA256:
        raise AttestgateError(code, "post signature is not ECDSA/SHA-256")
    verify_signature(key, sig, digest, code=code, prehashed=True)
