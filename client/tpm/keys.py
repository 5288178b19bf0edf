"""Key import, HMAC, signing and sealing: the operations on objects under the SRK.

Functions over a :class:`~client.tpm.objects.TpmObjects`; :class:`~client.tpm.Tpm` is
their public face. The HMAC key and the post key stay loaded between calls (they
are used on every connect and every post); sealed objects are loaded for one
unseal and flushed.
"""

from __future__ import annotations

import hashlib
import struct

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPMS_SENSITIVE_CREATE,
    TPMT_SYM_DEF_OBJECT,
)

from client.tpm import rawcmd
from client.tpm.common import (
    DIGEST_LEN,
    MAX_HMAC_BUFFER,
    MAX_SEALED_SECRET,
    KeyBlob,
    check_len,
    parse_pcr_selection,
    pcr_policy_digest,
    post_key_template,
    pytss_selection,
    sealed_template,
    selection_bytes,
    unmarshal_strict,
)
from client.tpm.objects import TpmObjects
from shared.errors import AttestgateError, ErrorCode
from shared.tpm.structures import parse_signature, read_ecdsa_sha256


def import_hmac_key(objs: TpmObjects, public: bytes, duplicate: bytes, seed: bytes) -> KeyBlob:
    pub = unmarshal_strict(TPM2B_PUBLIC, public, "public")
    dup = unmarshal_strict(TPM2B_PRIVATE, duplicate, "duplicate")
    sym_seed = unmarshal_strict(TPM2B_ENCRYPTED_SECRET, seed, "seed")
    if pub.publicArea.type != TPM2_ALG.KEYEDHASH:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "import: not a keyedhash object")
    with objs.operation("import_hmac_key") as ectx:
        srk, _ = objs.primary(ectx, "srk")
        private = objs.with_room(ectx, lambda: ectx.import_(
            srk, TPM2B_DATA(), pub, dup, sym_seed, TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
        ))
        return KeyBlob(bytes(private.marshal()), bytes(pub.marshal()))


def hmac(objs: TpmObjects, key: KeyBlob, data: bytes) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "hmac data must be bytes")
    data = bytes(data)
    with objs.operation("hmac") as ectx:
        handle = objs.blob(ectx, key)
        if len(data) <= MAX_HMAC_BUFFER:
            # As bytes (client/tpm/rawcmd.py): ESAPI's wrapper cost ~0.35 ms of profiled
            # CPU per call around a ~0.1 ms exchange; the key stays ESAPI's.
            return rawcmd.parse_hmac(objs.raw(rawcmd.hmac_sha256(
                objs.tpm_handle(ectx, handle), data)))
        # The sequence is a transient object of its own.
        with objs.transient(ectx, lambda: ectx.hmac_start(handle, b"", TPM2_ALG.SHA256)) as seq:
            completed = False
            try:
                chunks = [
                    data[i : i + MAX_HMAC_BUFFER] for i in range(0, len(data), MAX_HMAC_BUFFER)
                ]
                for chunk in chunks[:-1]:
                    ectx.sequence_update(seq, chunk)
                digest, _ = ectx.sequence_complete(seq, chunks[-1], ESYS_TR.RH_NULL)
                completed = True  # SequenceComplete flushed the sequence object
                return bytes(digest)
            finally:
                if not completed:
                    objs.flush(ectx, seq)


def create_post_key(objs: TpmObjects) -> KeyBlob:
    with objs.operation("create_post_key") as ectx:
        srk, _ = objs.primary(ectx, "srk")
        private, public, *_ = objs.with_room(
            ectx, lambda: ectx.create(srk, None, post_key_template()))
        return KeyBlob(bytes(private.marshal()), bytes(public.marshal()))


def sign(objs: TpmObjects, key: KeyBlob, digest: bytes) -> bytes:
    check_len("digest", digest, DIGEST_LEN, DIGEST_LEN)
    with objs.operation("sign") as ectx:
        handle = objs.blob(ectx, key)
        # As bytes (client/tpm/rawcmd.py), with the NULL-hierarchy HASHCHECK ticket ESAPI
        # sends by default; the key stays ESAPI's. What comes back must read as a
        # TPMT_SIGNATURE (the board reads it the same way), else TPM_ERROR.
        sig = rawcmd.parse_sign(objs.raw(rawcmd.sign(objs.tpm_handle(ectx, handle),
                                                     bytes(digest))))
        if read_ecdsa_sha256(sig) is None:
            parse_signature(sig, code=ErrorCode.TPM_ERROR)
        return sig


def seal(objs: TpmObjects, secret: bytes, pcr_selection: str | None) -> KeyBlob:
    check_len("secret", secret, 1, MAX_SEALED_SECRET)
    indices = parse_pcr_selection(pcr_selection) if pcr_selection is not None else None
    sensitive = TPM2B_SENSITIVE_CREATE(
        TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(bytes(secret)))
    )
    with objs.operation("seal") as ectx:
        policy = None
        if indices is not None:
            policy = pcr_policy_digest(indices, objs.read_pcrs(ectx, indices))
        srk, _ = objs.primary(ectx, "srk")
        private, public, *_ = objs.with_room(
            ectx, lambda: ectx.create(srk, sensitive, sealed_template(policy)))
        return KeyBlob(bytes(private.marshal()), bytes(public.marshal()))


def unseal(objs: TpmObjects, blob: KeyBlob, pcr_selection: str | None) -> bytes:
    indices = parse_pcr_selection(pcr_selection) if pcr_selection is not None else None
    with objs.operation("unseal") as ectx, objs.blob_once(ectx, blob) as handle:
        if indices is None:
            # As bytes, with the password session ESAPI would send (client/tpm/rawcmd.py).
            return rawcmd.parse_password_unseal(objs.raw(rawcmd.unseal_password(
                objs.tpm_handle(ectx, handle))))
        selection = selection_bytes(indices)
        name = _sha256_name(blob.public)
        try:
            if name is not None:
                # The policy session's three commands as bytes: ESAPI's session HMACs cost
                # ~3 ms of CPU here (client/tpm/rawcmd.py); the TPM checks the same things.
                try:
                    return rawcmd.policy_pcr_unseal(
                        objs.transport, objs.tpm_handle(ectx, handle), name, selection)
                except rawcmd.TpmResponseCode as exc:
                    raise TSS2_Exception(exc.rc) from None
            with objs.policy_session(ectx) as sess:
                # An empty pcrDigest makes the TPM use the current values;
                # the mismatch then shows up at unseal as a policy failure.
                ectx.policy_pcr(sess, b"", pytss_selection(indices))
                return bytes(ectx.unseal(handle, session1=sess))
        except TSS2_Exception as exc:
            if int(exc.error) in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED):
                raise AttestgateError(
                    ErrorCode.PCR_MISMATCH, f"unseal: rc=0x{int(exc.rc):x} ({exc})"
                ) from None
            raise


def _sha256_name(public: bytes) -> bytes | None:
    """The name of a marshalled TPM2B_PUBLIC whose nameAlg is SHA-256, else None."""
    if len(public) < 6 or public[4:6] != struct.pack(">H", TPM2_ALG.SHA256):
        return None
    return public[4:6] + hashlib.sha256(public[2:]).digest()
