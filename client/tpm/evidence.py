"""Evidence operations: what the TPM says about itself, PCRs, quotes, certifications,
credential activation. Functions over a :class:`~client.tpm.objects.TpmObjects`;
:class:`~client.tpm.Tpm` is their public face.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_RC
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPML_DIGEST_VALUES,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMU_HA,
)

from client.tpm import rawcmd
from client.tpm.common import (
    BANK_NAMES,
    MAX_QUALIFYING_DATA,
    PT_FIRMWARE_VERSION_1,
    PT_FIRMWARE_VERSION_2,
    PT_MANUFACTURER,
    PT_VENDOR_STRING_1,
    QUOTE_ATTEMPTS,
    Certification,
    Endorsement,
    KeyBlob,
    Quote,
    TpmInfo,
    check_len,
    check_pcr_index,
    format_pcr_selection,
    parse_pcr_selection,
    printable,
    selection_bytes,
    unmarshal_strict,
)
from client.tpm.objects import TpmObjects
from shared.errors import AttestgateError, ErrorCode
from shared.tpm.quote import read_quote_fields
from shared.tpm.structures import QuoteAttested, parse_attest, parse_signature, read_ecdsa_sha256
from shared.wire import MAX_EVIDENCE_FIELD


def info(objs: TpmObjects) -> TpmInfo:
    with objs.operation("info") as ectx:
        _, cap = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, PT_MANUFACTURER, 8)
        tagged = cap.data.tpmProperties
        props = {int(tagged[i].property): int(tagged[i].value) for i in range(tagged.count)}
        _, pcr_cap = ectx.get_capability(TPM2_CAP.PCRS, 0, 1)
        assigned = pcr_cap.data.assignedPCR
        banks = []
        for i in range(int(assigned.count)):
            entry = assigned[i]
            if any(bytes(entry.pcrSelect)[: int(entry.sizeofSelect)]):
                alg = entry.hash
                banks.append(BANK_NAMES.get(alg, f"0x{int(alg):04x}"))

    def word(pt: int) -> bytes:
        return struct.pack(">I", props.get(pt, 0))

    return TpmInfo(
        manufacturer=printable(word(PT_MANUFACTURER)),
        firmware_version=props.get(PT_FIRMWARE_VERSION_1, 0) << 32
        | props.get(PT_FIRMWARE_VERSION_2, 0),
        vendor_string=printable(b"".join(word(PT_VENDOR_STRING_1 + k) for k in range(4))),
        pcr_banks=tuple(banks),
    )


def endorsement(objs: TpmObjects) -> Endorsement:
    with objs.operation("endorsement") as ectx, objs.ek(ectx) as (_, public):
        choice = objs.select_ek(ectx)
        return Endorsement(
            kind=choice.kind, public=bytes(public.marshal()), certificate=choice.certificate
        )


def primary_public(objs: TpmObjects, which: str) -> bytes:
    with objs.operation(f"{which}_public") as ectx:
        return bytes(objs.primary_public(ectx, which).marshal())


def pcr_read(objs: TpmObjects, selection: str) -> dict[int, bytes]:
    indices = parse_pcr_selection(selection)
    with objs.operation("pcr_read") as ectx:
        return objs.read_pcrs(ectx, indices)


def extend_pcr(objs: TpmObjects, index: int, data: bytes) -> None:
    check_pcr_index(index)
    check_len("data", data, 0, MAX_EVIDENCE_FIELD)
    digest = hashlib.sha256(data).digest()
    values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))])
    with objs.operation("extend_pcr") as ectx:
        ectx.pcr_extend(ESYS_TR.PCR0 + index, values)


def reset_pcr(objs: TpmObjects, index: int) -> None:
    check_pcr_index(index)
    with objs.operation("reset_pcr") as ectx:
        ectx.pcr_reset(ESYS_TR.PCR0 + index)


def quote(objs: TpmObjects, qualifying_data: bytes, selection: str) -> Quote:
    check_len("qualifying data", qualifying_data, 0, MAX_QUALIFYING_DATA)
    indices = parse_pcr_selection(selection)
    canonical = format_pcr_selection(indices)
    marshalled = selection_bytes(indices)
    qualifying = bytes(qualifying_data)
    with objs.operation("quote") as ectx:
        # The PCR values last read (in this process, or saved in the home) are sent
        # without a PCR_Read when they hash to the pcrDigest the TPM just signed: then
        # they are the quoted values. Otherwise they are read after the quote; a PCR that
        # changed in between shows as a mismatch, and the quote is made again.
        values = objs.kept_pcrs(indices)
        for _ in range(QUOTE_ATTEMPTS):
            # TPM2_Quote as bytes (client/tpm/rawcmd.py): ESAPI's wrapper and the tpm2_pytss
            # objects around it cost ~1 ms of profiled CPU per quote; the AK stays ESAPI's.
            attest, sig, quoted = _signed_by_ak(objs, ectx, lambda ak: rawcmd.parse_quote(
                objs.raw(rawcmd.quote(objs.tpm_handle(ectx, ak), qualifying, marshalled))),
                marshalled)
            if values is None or _pcr_digest(indices, values) != quoted:
                values = objs.read_pcrs(ectx, indices)
                if _pcr_digest(indices, values) != quoted:
                    continue
            return Quote(
                attest=attest,
                signature=sig,
                selection=canonical,
                pcr_values=tuple((i, values[i]) for i in indices),
            )
    raise AttestgateError(
        ErrorCode.TPM_ERROR, f"quote: PCRs kept changing ({QUOTE_ATTEMPTS} attempts)"
    )


def _pcr_digest(indices: tuple[int, ...], values: dict[int, bytes]) -> bytes:
    return hashlib.sha256(b"".join(values[i] for i in indices)).digest()


def _signed_by_ak(objs: TpmObjects, ectx: Any, sign: Callable[[Any], tuple[bytes, bytes]],
                  quote_selection: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """(marshalled TPMS_ATTEST, marshalled TPMT_SIGNATURE, pcrDigest) of ``sign(ak)``, the
    signer confirmed to be our AK: an AK restored from a saved context that fails, or
    turns out to be another object (TpmObjects.confirm_signer), is replaced by a created
    one and the signing done again. With ``quote_selection`` (the marshalled selection
    quoted) the attest must be a quote (pcrDigest returned), otherwise pcrDigest is b""."""
    for _ in range(2):
        ak, _ = objs.primary(ectx, "ak")
        try:
            attest, sig = sign(ak)
        except TSS2_Exception:
            if not objs.distrust_ak(ectx):
                raise
        else:
            signer, quoted = attested(attest, quote_selection)
            if objs.confirm_signer(ectx, signer):
                if read_ecdsa_sha256(sig) is None:  # the AK's; else the generic reader's error
                    parse_signature(sig, code=ErrorCode.TPM_ERROR)
                return attest, sig, quoted
    raise AttestgateError(ErrorCode.TPM_ERROR, "the AK signed as another object")


def attested(attest: bytes, quote_selection: bytes | None) -> tuple[bytes, bytes]:
    """(qualifiedSigner, pcrDigest or b"") of what the AK just signed, read with the
    verifier's readers (shared/tpm: the quote read directly, anything else by the generic
    parser); TPM_ERROR if the TPM's answer is not a well-formed TPMS_ATTEST (a quote when
    ``quote_selection`` is given)."""
    if quote_selection is not None:
        fields = read_quote_fields(attest, quote_selection)
        if fields is not None:
            return fields[6], fields[5]
    info = parse_attest(attest, code=ErrorCode.TPM_ERROR)
    if quote_selection is None:
        return info.qualified_signer, b""
    if not isinstance(info.attested, QuoteAttested):
        raise AttestgateError(ErrorCode.TPM_ERROR, f"quote: attest type {info.type:#x}")
    return info.qualified_signer, info.attested.pcr_digest


_NULL_SCHEME = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)  # read by ESAPI, never changed


def _certify(objs: TpmObjects, ectx: Any, subject: Any, qualifying_data: bytes
             ) -> Certification:
    def sign(ak: Any) -> tuple[bytes, bytes]:
        attest, sig = ectx.certify(subject, ak, bytes(qualifying_data), _NULL_SCHEME)
        return bytes(attest), bytes(sig.marshal())

    attest, sig, _ = _signed_by_ak(objs, ectx, sign)
    return Certification(attest=attest, signature=sig)


def certify_srk(objs: TpmObjects, qualifying_data: bytes) -> Certification:
    check_len("qualifying data", qualifying_data, 0, MAX_QUALIFYING_DATA)
    with objs.operation("certify_srk") as ectx:
        srk, _ = objs.primary(ectx, "srk")
        return _certify(objs, ectx, srk, qualifying_data)


def certify_key(objs: TpmObjects, key: KeyBlob, qualifying_data: bytes) -> Certification:
    check_len("qualifying data", qualifying_data, 0, MAX_QUALIFYING_DATA)
    with objs.operation("certify_key") as ectx:
        handle = objs.blob(ectx, key)
        return _certify(objs, ectx, handle, qualifying_data)


def activate_credential(objs: TpmObjects, id_object: bytes, encrypted_secret: bytes) -> bytes:
    blob = unmarshal_strict(TPM2B_ID_OBJECT, id_object, "id object")
    secret = unmarshal_strict(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret")
    with objs.operation("activate_credential") as ectx, objs.ek(ectx) as (ek, _):
        objs.primary_public(ectx, "ak")  # an AK from a saved context is confirmed first
        ak, _ = objs.primary(ectx, "ak")
        with objs.ek_session(ectx) as ek_auth:
            try:
                # session1 authorizes the AK (ADMIN role, password), session2 the EK.
                cred = ectx.activate_credential(
                    ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=ek_auth
                )
            except TSS2_Exception as exc:
                if _credential_rejected(ectx, exc):
                    raise AttestgateError(
                        ErrorCode.CREDENTIAL_FAILED,
                        f"activate_credential: rc=0x{int(exc.rc):x} ({exc})",
                    ) from None
                raise
            return bytes(cred)


def _credential_rejected(ectx: Any, exc: Any) -> bool:
    """Whether an ActivateCredential error means "not for this EK/AK" rather than a TPM fault.

    A parameter error on the blob or the secret (integrity, value, size,
    point) is the spec's answer. libtpms 0.9 (swtpm) instead answers
    TPM_RC_FAILURE when RSA-OAEP decryption of the secret fails, i.e. for
    a credential made to another RSA EK, without entering failure mode;
    a TPM that really failed reports it in GetTestResult.
    """
    if int(exc.parameter) in (1, 2):
        return True
    if int(exc.rc) != TPM2_RC.FAILURE:
        return False
    try:
        _, result = ectx.get_test_result()
    except TSS2_Exception:
        return False
    return bool(int(result) == TPM2_RC.SUCCESS)
