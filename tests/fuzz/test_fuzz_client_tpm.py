"""Fuzz what the client reads from its own TPM without tpm2_pytss (client/tpm/rawcmd.py's
answers, then client/tpm/evidence.py's reading of a quote and client/tpm/common.py's template
check): every answer gives a result or a TPM error, never a crash.

Seeds are the swtpm known-answer blobs (``tpm_kat_data``) wrapped as the TPM answers them.
"""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
import tpm_kat_data as kat

from client.tpm import rawcmd
from client.tpm.common import AK_TEMPLATE, SRK_TEMPLATE, matches_ecc_template, selection_bytes
from client.tpm.evidence import attested
from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import MAX_DIGEST, MAX_NAME
from shared.tpm.marshal import tpm2b
from shared.tpm.structures import parse_signature, read_ecdsa_sha256
from tests.support.fuzz import FUZZ_INPUTS, Mutator, run

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

SEL8 = selection_bytes(tuple(range(8)))
PW_ANSWER = b"\x00\x00\x01\x00\x00"


def _answer(params: bytes) -> bytes:
    body = struct.pack(">I", len(params)) + params + PW_ANSWER
    return struct.pack(">HII", 0x8002, 10 + len(body), 0) + body


def _seeds() -> list[bytes]:
    name = b"\x00\x0b" + bytes(range(32))
    read_public = kat.SRK_PUBLIC + tpm2b(name) + tpm2b(name)
    return [
        _answer(tpm2b(kat.QUOTE_ATTEST) + kat.QUOTE_SIGNATURE),
        _answer(tpm2b(kat.CERTIFY_SRK_ATTEST) + kat.CERTIFY_SRK_SIGNATURE),
        _answer(kat.POST_SIGNATURE),
        _answer(tpm2b(bytes(32))),
        _answer(tpm2b(b"sealed secret")),
        struct.pack(">HII", 0x8001, 10 + len(read_public), 0) + read_public,
        struct.pack(">HII", 0x8001, 10, 0x922),
    ]


def test_fuzz_client_tpm_answers() -> None:
    def check(data: bytes) -> None:
        body = rawcmd.response(data)
        for parse in (rawcmd.parse_hmac, rawcmd.parse_password_unseal, rawcmd.parse_sign,
                      rawcmd.parse_start_session, rawcmd.parse_unseal):
            with contextlib.suppress(rawcmd.TpmResponseCode):
                parse(body)
        try:
            public, _, _ = rawcmd.parse_read_public(body)
        except rawcmd.TpmResponseCode:
            pass
        else:
            matches_ecc_template(public, SRK_TEMPLATE)
            matches_ecc_template(public, AK_TEMPLATE)
        attest, signature = rawcmd.parse_quote(body)  # TpmResponseCode: see below
        signer, digest = attested(attest, SEL8)
        assert len(signer) <= MAX_NAME and len(digest) <= MAX_DIGEST
        if read_ecdsa_sha256(signature) is None:
            parse_signature(signature, code=ErrorCode.TPM_ERROR)

    mutator = Mutator(random.Random(0), _seeds(), max_len=rawcmd.MAX_RESPONSE + 16,
                      dictionary=[b"\xff\x54\x43\x47", b"\x80\x18", b"\x80\x17", b"\x00\x18",
                                  b"\x00\x0b", b"\x80\x02", b"\x80\x01"])

    def generate(rng: random.Random) -> bytes:
        mutator.rng = rng
        data = mutator()
        if len(data) >= 10 and rng.random() < 0.9:  # mostly a header that fits the answer
            data = data[:2] + struct.pack(">I", len(data)) + data[6:]
        return data

    def checked(data: bytes) -> None:
        try:
            check(data)
        except rawcmd.TpmResponseCode as exc:
            raise AttestgateError(ErrorCode.TPM_ERROR, f"rc=0x{exc.rc:x}") from None

    result = run("client TPM answers (rawcmd, attest, template)", generate, checked)
    assert result.inputs >= FUZZ_INPUTS
