"""Verification of a TPM2_Quote made by an AK."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import St
from shared.tpm.keycache import VerifyingKey, parse_verifying_key
from shared.tpm.marshal import check_size
from shared.tpm.pcrs import PcrChange, PcrSelection, pcr_diff, pcr_digest
from shared.tpm.signature import verify_signature
from shared.tpm.structures import QuoteAttested, parse_attest, parse_signature

__all__ = ["PcrChange", "QuoteInfo", "pcr_diff", "pcr_digest", "verify_quote"]


@dataclass(frozen=True)
class QuoteInfo:
    """What a verified quote says beyond the checked PCRs.

    Clock values are only meaningful for an AK in the endorsement hierarchy; the TPM
    obfuscates them for other hierarchies.
    """

    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selection: PcrSelection
    pcr_digest: bytes
    qualified_signer: bytes


def verify_quote(ak_public: bytes | VerifyingKey, attest: bytes, signature: bytes, *,
                 qualifying_data: bytes, selection: PcrSelection,
                 pcr_values: Mapping[int, bytes]) -> QuoteInfo:
    """Verify a quote over one PCR bank and return what it attests.

    ``ak_public`` is the AK's TPM2B_PUBLIC (the caller must have checked it with
    ``check_ak`` and bound it to the EK), raw or already parsed
    (:class:`~shared.tpm.keycache.VerifyingKey`, e.g. from a ``KeyCache``);
    ``attest``/``signature`` are the TPMS_ATTEST and TPMT_SIGNATURE from TPM2_Quote;
    ``qualifying_data`` is the nonce the server expects; ``selection`` is the
    single-bank selection the server asked for and ``pcr_values`` the client's PCR
    values of that bank, by index.

    Raises: TOO_LARGE (a blob over MAX_EVIDENCE_FIELD), AK_INVALID (AK public
    malformed), QUOTE_INVALID (signature, magic, type, structure, or a selection other
    than the requested one), QUOTE_BINDING (other qualifying data), BAD_REQUEST
    (``pcr_values`` do not match ``selection``), PCR_DIGEST (values differ from the
    quoted digest).
    """
    ak: VerifyingKey | None
    if isinstance(ak_public, VerifyingKey):
        ak, raw_ak = ak_public, ak_public.raw
    else:
        ak, raw_ak = None, ak_public
    for blob, what in ((raw_ak, "ak public"), (attest, "attest"), (signature, "signature"),
                       (qualifying_data, "qualifying data")):
        check_size(blob, what)
    if len(selection.banks) != 1:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "quote selection must have one bank")
    if ak is None:
        ak = parse_verifying_key(raw_ak, code=ErrorCode.AK_INVALID)
    sig = parse_signature(signature, code=ErrorCode.QUOTE_INVALID)
    # The signature covers the raw bytes; check it before trusting anything parsed from them.
    verify_signature(ak.public, sig, attest, code=ErrorCode.QUOTE_INVALID, public=ak.crypto)
    info = parse_attest(attest, code=ErrorCode.QUOTE_INVALID)
    if info.type != St.ATTEST_QUOTE or not isinstance(info.attested, QuoteAttested):
        raise AttestgateError(ErrorCode.QUOTE_INVALID, f"attest type {info.type:#x}")
    if not hmac.compare_digest(info.extra_data, qualifying_data):
        raise AttestgateError(ErrorCode.QUOTE_BINDING, "extraData is not the expected nonce")
    quoted = info.attested
    if quoted.selection != selection:
        raise AttestgateError(ErrorCode.QUOTE_INVALID,
                              f"quoted {quoted.selection}, asked for {selection}")
    # TPM2_Quote hashes the PCRs with the hash of its signing scheme (Part 3, 18.4).
    expected = pcr_digest(sig.hash_alg, selection, {selection.banks[0].hash_alg: pcr_values})
    if not hmac.compare_digest(expected, quoted.pcr_digest):
        raise AttestgateError(ErrorCode.PCR_DIGEST, "pcr values do not match pcrDigest")
    clock = info.clock_info
    return QuoteInfo(clock.clock, clock.reset_count, clock.restart_count, clock.safe,
                     info.firmware_version, quoted.selection, quoted.pcr_digest,
                     info.qualified_signer)
