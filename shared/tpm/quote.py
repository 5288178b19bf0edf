"""Verification of a TPM2_Quote made by an AK."""

from __future__ import annotations

import functools
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import GENERATED_VALUE, MAX_DIGEST, MAX_NAME, St
from shared.tpm.keycache import VerifyingKey, parse_verifying_key
from shared.tpm.marshal import check_size
from shared.tpm.pcrs import PcrChange, PcrSelection, pcr_diff, pcr_digest
from shared.tpm.signature import verify_signature
from shared.tpm.structures import (
    QuoteAttested,
    parse_attest,
    parse_signature,
    read_ecdsa_sha256,
)

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
    extra_data: bytes = b""  # the qualifying data (checked equal to the expected nonce)


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
    sig = read_ecdsa_sha256(signature) or parse_signature(signature, code=ErrorCode.QUOTE_INVALID)
    # The signature covers the raw bytes; check it before trusting anything parsed from them.
    verify_signature(ak.public, sig, attest, code=ErrorCode.QUOTE_INVALID, public=ak.crypto)
    fields = _quote_fields(attest, _marshalled(selection))
    if fields is not None:
        clock, reset_count, restart_count, safe, firmware, digest, signer, extra = fields
        quote = QuoteInfo(clock, reset_count, restart_count, safe, firmware, selection, digest,
                          signer, extra)
    else:
        quote = _parsed_quote(attest)
        if quote.selection != selection:
            raise AttestgateError(ErrorCode.QUOTE_INVALID,
                                  f"quoted {quote.selection}, asked for {selection}")
    if not hmac.compare_digest(quote.extra_data, qualifying_data):
        raise AttestgateError(ErrorCode.QUOTE_BINDING, "extraData is not the expected nonce")
    # TPM2_Quote hashes the PCRs with the hash of its signing scheme (Part 3, 18.4).
    expected = pcr_digest(sig.hash_alg, selection, {selection.banks[0].hash_alg: pcr_values})
    if not hmac.compare_digest(expected, quote.pcr_digest):
        raise AttestgateError(ErrorCode.PCR_DIGEST, "pcr values do not match pcrDigest")
    return quote


def _parsed_quote(attest: bytes) -> QuoteInfo:
    """The generic TPMS_ATTEST parser's view of a quote; raises QUOTE_INVALID."""
    info = parse_attest(attest, code=ErrorCode.QUOTE_INVALID)
    if info.type != St.ATTEST_QUOTE or not isinstance(info.attested, QuoteAttested):
        raise AttestgateError(ErrorCode.QUOTE_INVALID, f"attest type {info.type:#x}")
    clock, quoted = info.clock_info, info.attested
    return QuoteInfo(clock.clock, clock.reset_count, clock.restart_count, clock.safe,
                     info.firmware_version, quoted.selection, quoted.pcr_digest,
                     info.qualified_signer, info.extra_data)


# -- the common case, read directly (profiled: the generic bounded reader was most of what a
# verification cost beyond the ECDSA verify). Whatever these do not recognise exactly goes
# to the generic parsers, which give the result or the error; tests compare both paths.

_ATTEST_HEAD: Final = struct.Struct(">IHH")  # magic, type, qualifiedSigner.size
_SIZE: Final = struct.Struct(">H")
_CLOCK_AND_FIRMWARE: Final = struct.Struct(">QIIBQ")


@functools.lru_cache(maxsize=64)
def _marshalled(selection: PcrSelection) -> bytes:
    """The TPML_PCR_SELECTION a TPM echoes when asked for ``selection`` (3-byte bitmaps)."""
    return selection.marshal()


def read_quote_fields(attest: bytes, selection: bytes
                      ) -> tuple[int, int, int, bool, int, bytes, bytes, bytes] | None:
    """:func:`_quote_fields` for the client (client/tpm/evidence.py reads what its TPM just
    quoted with it: one reader for both sides); None means "use parse_attest"."""
    return _quote_fields(attest, selection)


def _quote_fields(attest: bytes, selection: bytes
                  ) -> tuple[int, int, int, bool, int, bytes, bytes, bytes] | None:
    """(clock, resetCount, restartCount, safe, firmwareVersion, pcrDigest, qualifiedSigner,
    extraData) of a well-formed TPMS_ATTEST of type QUOTE whose TPML_PCR_SELECTION is the
    bytes ``selection``; None for anything else."""
    end = len(attest)
    if end < _ATTEST_HEAD.size:
        return None
    magic, typ, size = _ATTEST_HEAD.unpack_from(attest)
    pos = _ATTEST_HEAD.size
    if magic != GENERATED_VALUE or typ != St.ATTEST_QUOTE or size > MAX_NAME:
        return None
    signer = attest[pos:pos + size]
    pos += size
    if pos + _SIZE.size > end:
        return None
    (size,) = _SIZE.unpack_from(attest, pos)
    pos += _SIZE.size
    if size > MAX_DIGEST + 2:  # TPM2B_DATA holds up to a TPMT_HA
        return None
    extra = attest[pos:pos + size]
    pos += size
    if pos + _CLOCK_AND_FIRMWARE.size > end:
        return None
    clock, reset_count, restart_count, safe, firmware = _CLOCK_AND_FIRMWARE.unpack_from(
        attest, pos)
    pos += _CLOCK_AND_FIRMWARE.size
    if safe > 1 or attest[pos:pos + len(selection)] != selection:
        return None
    pos += len(selection)
    if pos + _SIZE.size > end:
        return None
    (size,) = _SIZE.unpack_from(attest, pos)
    pos += _SIZE.size
    if size > MAX_DIGEST or pos + size != end:
        return None
    return (clock, reset_count, restart_count, safe == 1, firmware, attest[pos:end], signer,
            extra)
