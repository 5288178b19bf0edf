"""Verification of a TPM2_Certify: the AK vouching that another key lives in its TPM."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import St, hash_for
from shared.tpm.marshal import check_size
from shared.tpm.signature import verify_signature
from shared.tpm.structures import (
    CertifyAttested,
    TpmPublic,
    parse_attest,
    parse_public,
    parse_signature,
)


@dataclass(frozen=True)
class CertifyInfo:
    """A verified certification: the certified object and the certifying TPM's clock."""

    certified: TpmPublic
    name: bytes
    qualified_name: bytes
    reset_count: int
    firmware_version: int


def verify_certify(ak_public: bytes, attest: bytes, signature: bytes, *,
                   certified_public: bytes, qualifying_data: bytes) -> CertifyInfo:
    """Verify that the AK certified the object whose TPM2B_PUBLIC is ``certified_public``.

    The caller must have checked the AK (``check_ak``) and must still check the
    certified object's attributes (``check_srk`` / ``check_post_key``): certification
    only proves the object is loaded in the AK's TPM under that name.

    Raises: TOO_LARGE, AK_INVALID (AK public malformed), CERTIFY_INVALID (signature,
    magic, type, structure, certified name, or extraData other than
    ``qualifying_data``).
    """
    code = ErrorCode.CERTIFY_INVALID
    for blob, what in ((ak_public, "ak public"), (attest, "attest"), (signature, "signature"),
                       (certified_public, "certified public"),
                       (qualifying_data, "qualifying data")):
        check_size(blob, what)
    key = parse_public(ak_public, code=ErrorCode.AK_INVALID)
    sig = parse_signature(signature, code=code)
    verify_signature(key, sig, attest, code=code)
    info = parse_attest(attest, code=code)
    if info.type != St.ATTEST_CERTIFY or not isinstance(info.attested, CertifyAttested):
        raise AttestgateError(code, f"attest type {info.type:#x}")
    certified = parse_public(certified_public, code=code)
    if hash_for(certified.name_alg) is None:
        raise AttestgateError(code, f"certified nameAlg {certified.name_alg:#x}")
    if not hmac.compare_digest(info.attested.name, certified.name):
        raise AttestgateError(code, "certified name differs from the public sent")
    if not hmac.compare_digest(info.extra_data, qualifying_data):
        raise AttestgateError(code, "extraData is not the expected nonce")
    return CertifyInfo(certified, info.attested.name, info.attested.qualified_name,
                       info.clock_info.reset_count, info.firmware_version)
