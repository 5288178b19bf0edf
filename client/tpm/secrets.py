"""Unwrapping a released secret's key: TPM2_Import of a sealed-data object, then Unseal.

The server wraps a fresh AES key in a keyedhash sealed-data object duplicated to this
TPM's SRK (``shared.tpm.credential.wrap_sealed_data``, the device PSK's path). The
object is imported, loaded for one unseal and flushed; only its 32-byte payload
leaves the TPM. A blob made for another SRK, or altered, fails the import's
integrity check: CREDENTIAL_FAILED.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF_OBJECT,
)

from client.tpm.common import (
    KeyBlob,
    format_pcr_selection,
    parse_pcr_selection,
    unmarshal_strict,
)
from client.tpm.objects import TpmObjects
from shared.errors import AttestgateError, ErrorCode

# What the TPM answers to a duplicate that was not made for its SRK or was altered.
_NOT_OURS = frozenset({TPM2_RC.INTEGRITY, TPM2_RC.ECC_POINT, TPM2_RC.VALUE, TPM2_RC.SIZE,
                       TPM2_RC.KEY, TPM2_RC.BINDING, TPM2_RC.SCHEME, TPM2_RC.HASH})
_FORBIDDEN = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.RESTRICTED


def import_sealed(objs: TpmObjects, public: bytes, duplicate: bytes, seed: bytes) -> KeyBlob:
    pub = unmarshal_strict(TPM2B_PUBLIC, public, "public")
    dup = unmarshal_strict(TPM2B_PRIVATE, duplicate, "duplicate")
    sym_seed = unmarshal_strict(TPM2B_ENCRYPTED_SECRET, seed, "seed")
    area = pub.publicArea
    if area.type != TPM2_ALG.KEYEDHASH or area.objectAttributes & _FORBIDDEN:
        raise AttestgateError(ErrorCode.CREDENTIAL_FAILED, "import: not a sealed-data object")
    with objs.operation("import_sealed") as ectx:
        srk, _ = objs.primary(ectx, "srk")
        try:
            private = objs.with_room(ectx, lambda: ectx.import_(
                srk, TPM2B_DATA(), pub, dup, sym_seed,
                TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)))
        except TSS2_Exception as exc:
            if int(exc.error) in _NOT_OURS:
                raise AttestgateError(
                    ErrorCode.CREDENTIAL_FAILED,
                    f"import: not wrapped for this TPM, or altered: rc=0x{int(exc.rc):x}",
                ) from None
            raise
        return KeyBlob(bytes(private.marshal()), bytes(pub.marshal()))


def unwrap(objs: TpmObjects, public: bytes, duplicate: bytes, seed: bytes) -> bytes:
    """Import and unseal a wrapped sealed-data object (userWithAuth, empty auth)."""
    blob = import_sealed(objs, public, duplicate, seed)
    with objs.operation("unseal_imported") as ectx, objs.blob_once(ectx, blob) as handle:
        return bytes(ectx.unseal(handle))


def unwrap_bound(objs: TpmObjects, public: bytes, duplicate: bytes, seed: bytes,
                 selection: str, policy_public: bytes, policy_ref: bytes,
                 policies: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Import and unseal a PolicyAuthorize-bound object (``shared.secret_policy``).

    PolicyPCR over ``selection`` with the current PCR values; the signed policy whose
    approvedPolicy equals the session's digest is checked by the TPM
    (TPM2_VerifySignature of ``policy_public`` loaded as an external key in the owner
    hierarchy, for a real ticket), then PolicyAuthorize, then Unseal. PCR_MISMATCH
    when no signed policy matches the current PCRs (the operator has not approved
    this state); CREDENTIAL_FAILED when the signature does not verify.
    """
    pcrs = TPML_PCR_SELECTION.parse(format_pcr_selection(parse_pcr_selection(selection)))
    key_public = unmarshal_strict(TPM2B_PUBLIC, policy_public, "policy public")
    blob = import_sealed(objs, public, duplicate, seed)
    with objs.operation("unseal_bound") as ectx, objs.blob_once(ectx, blob) as handle, \
            objs.policy_session(ectx) as sess:
        ectx.policy_pcr(sess, b"", pcrs)
        approved = bytes(ectx.policy_get_digest(sess))
        signed = next((sig for digest, sig in policies
                       if hmac.compare_digest(digest, approved)), None)
        if signed is None:
            raise AttestgateError(ErrorCode.PCR_MISMATCH,
                                  "no approved policy for the current PCR state")
        signature = unmarshal_strict(TPMT_SIGNATURE, signed, "policy signature")
        a_hash = hashlib.sha256(approved + policy_ref).digest()
        with objs.transient(ectx, lambda: ectx.load_external(
                key_public, None, ESYS_TR.OWNER)) as key:
            try:
                ticket = ectx.verify_signature(key, a_hash, signature)
                key_name = ectx.tr_get_name(key)
            except TSS2_Exception as exc:
                raise AttestgateError(
                    ErrorCode.CREDENTIAL_FAILED,
                    f"policy signature does not verify: rc=0x{int(exc.rc):x}") from None
            finally:
                objs.flush(ectx, key)
        ectx.policy_authorize(sess, approved, key_name, ticket, policy_ref)
        try:
            return bytes(ectx.unseal(handle, session1=sess))
        except TSS2_Exception as exc:
            if int(exc.error) in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED):
                raise AttestgateError(ErrorCode.PCR_MISMATCH,
                                      f"unseal: rc=0x{int(exc.rc):x}") from None
            raise
