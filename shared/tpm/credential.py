"""Server-side TPM2_MakeCredential and key wrapping for TPM2_Import, in software.

Both produce blobs that only the client's TPM can open: a credential only a TPM holding
both the EK and a key of the given name can activate, and an HMAC key only the TPM
holding the SRK can import. Neither needs a TPM on the server.
"""

from __future__ import annotations

import hashlib

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import Alg, ObjectAttr, digest_size
from shared.tpm.kdf import RandomBytes, encrypt_seed, protect
from shared.tpm.marshal import check_size, tpm2b, u16
from shared.tpm.structures import (
    KeyedHashParms,
    Scheme,
    TpmPublic,
    build_public,
    parse_public,
)

# Bounds on the HMAC key: at least 128 bits, at most one SHA-256 block (the TPM refuses
# longer HMAC keys with TPM_RC_SIZE, TPM-NOTES §6).
MIN_HMAC_KEY = 16
MAX_HMAC_KEY = 64


def _decrypt_parent(public: bytes, what: str) -> TpmPublic:
    pub = parse_public(public, code=ErrorCode.BAD_REQUEST)
    if not pub.has(ObjectAttr.RESTRICTED | ObjectAttr.DECRYPT) or (
        pub.attributes & ObjectAttr.SIGN_ENCRYPT
    ):
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{what} is not a restricted decrypt key")
    return pub


def make_credential(ek_public: bytes, ak_name: bytes, secret: bytes,
                    rng: RandomBytes) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential: encrypt ``secret`` to the EK, bound to the AK's name.

    ``ek_public`` is the EK's TPM2B_PUBLIC, which the caller must already have matched
    to a trusted certificate or allowlist (``ek_matches_cert``); ``ak_name`` is the
    checked AK's name (``TpmPublic.name``); ``secret`` is 1..digest-size bytes of the
    EK's nameAlg. ``rng`` supplies the seed and ECDH randomness.

    Returns ``(id_object, encrypted_secret)``: marshalled TPM2B_ID_OBJECT and
    TPM2B_ENCRYPTED_SECRET, for TPM2_ActivateCredential. Raises BAD_REQUEST.
    """
    for blob, what in ((ek_public, "ek public"), (ak_name, "ak name"), (secret, "secret")):
        check_size(blob, what)
    ek = _decrypt_parent(ek_public, "ek")
    size = digest_size(ek.name_alg)
    if size is None or not 1 <= len(secret) <= size:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "credential secret size")
    name_size = digest_size(int.from_bytes(ak_name[:2], "big")) if len(ak_name) > 2 else None
    if name_size is None or len(ak_name) != 2 + name_size:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "ak name is not a digest name")
    seed, encrypted_secret = encrypt_seed(ek, b"IDENTITY\x00", rng)
    # The credential is a TPM2B_DIGEST, so its size prefix is encrypted with it.
    id_object = tpm2b(protect(ek, seed, bytes(ak_name), tpm2b(bytes(secret))))
    return id_object, encrypted_secret


def wrap_hmac_key(srk_public: bytes, key: bytes, rng: RandomBytes) -> tuple[bytes, bytes, bytes]:
    """Wrap an HMAC-SHA256 key so that only the TPM holding ``srk_public`` can import it.

    ``srk_public`` is the TPM2B_PUBLIC of the client's storage key, which the caller
    must have checked (``check_srk``) and seen certified by the AK; ``key`` is 16..64
    bytes. The object has userWithAuth and sign set and no fixedTPM/fixedParent
    (imported objects cannot have them); its unique field is SHA-256(seedValue || key)
    with a fresh 32-byte seedValue, so the public part reveals nothing about the key.

    Returns ``(public, duplicate, seed)``: marshalled TPM2B_PUBLIC, TPM2B_PRIVATE and
    TPM2B_ENCRYPTED_SECRET for TPM2_Import with no inner wrapper (symmetricAlg NULL,
    empty encryptionKey). Raises BAD_REQUEST.
    """
    check_size(srk_public, "srk public")
    if not MIN_HMAC_KEY <= len(key) <= MAX_HMAC_KEY:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "hmac key size")
    srk = _decrypt_parent(srk_public, "srk")
    obfuscation = rng(32)
    public = build_public(
        Alg.KEYEDHASH, Alg.SHA256, ObjectAttr.USERWITHAUTH | ObjectAttr.SIGN_ENCRYPT, b"",
        parameters=KeyedHashParms(Scheme(Alg.HMAC, Alg.SHA256)),
        unique=hashlib.sha256(obfuscation + key).digest())
    # TPMT_SENSITIVE: sensitiveType, authValue (empty), seedValue, sensitive (the key).
    sensitive = tpm2b(u16(Alg.KEYEDHASH) + tpm2b(b"") + tpm2b(obfuscation) + tpm2b(bytes(key)))
    seed, encrypted_seed = encrypt_seed(srk, b"DUPLICATE\x00", rng)
    duplicate = tpm2b(protect(srk, seed, public.name, sensitive))
    return public.marshal(), duplicate, encrypted_seed


# A sealed-data object carries at most this much (TPM-NOTES: 128 B on swtpm).
MAX_SEALED_DATA = 128


def wrap_sealed_data(srk_public: bytes, data: bytes, rng: RandomBytes,
                     auth_policy: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """Wrap ``data`` (1..128 B) in a sealed-data keyedhash object for TPM2_Import under
    ``srk_public``, exactly as :func:`wrap_hmac_key` wraps the device PSK.

    The object has no sign/decrypt attribute and a NULL scheme, so the TPM only lets
    TPM2_Unseal read it. Without ``auth_policy`` it has userWithAuth and an empty
    authValue (the holder of this TPM and the blob can unseal it); with one, only
    that policy (userWithAuth clear). Returns ``(public, duplicate, seed)``.
    """
    check_size(srk_public, "srk public")
    if not 1 <= len(data) <= MAX_SEALED_DATA:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "sealed data size")
    if auth_policy and len(auth_policy) != 32:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "auth policy is not a SHA-256 digest")
    srk = _decrypt_parent(srk_public, "srk")
    obfuscation = rng(32)
    attrs = 0 if auth_policy else ObjectAttr.USERWITHAUTH
    public = build_public(
        Alg.KEYEDHASH, Alg.SHA256, attrs, auth_policy,
        parameters=KeyedHashParms(Scheme(Alg.NULL)),
        unique=hashlib.sha256(obfuscation + data).digest())
    sensitive = tpm2b(u16(Alg.KEYEDHASH) + tpm2b(b"") + tpm2b(obfuscation) + tpm2b(bytes(data)))
    seed, encrypted_seed = encrypt_seed(srk, b"DUPLICATE\x00", rng)
    duplicate = tpm2b(protect(srk, seed, public.name, sensitive))
    return public.marshal(), duplicate, encrypted_seed
