"""Unwrapping a released secret's key: TPM2_Import of a sealed-data object, then Unseal.

The server wraps a fresh AES key in a keyedhash sealed-data object duplicated to this
TPM's SRK (``shared.tpm.credential.wrap_sealed_data``, the device PSK's path). The
object is imported, loaded for one unseal and flushed; only its 32-byte payload
leaves the TPM. A blob made for another SRK, or altered, fails the import's
integrity check: CREDENTIAL_FAILED.
"""

from __future__ import annotations

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPM2_RC, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMT_SYM_DEF_OBJECT,
)

from client.tpm.common import KeyBlob, unmarshal_strict
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
