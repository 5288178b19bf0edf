"""The connect's TPM commands as bytes (client/tpm/rawcmd.py: ReadPublic, HMAC, Quote, Unseal
with the password session) and what replaced tpm2_pytss objects on that path
(client/tpm/common.py: the marshalled PCR selection, the template check on bytes;
client/tpm/evidence.py: the attest read with shared/tpm's readers), no TPM: known answers,
equality with tpm2_pytss, and answers that are truncated, oversized or garbage."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import struct
from typing import Any

import pytest
from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPM2_ST
from tpm2_pytss.types import (
    TPM2B_ATTEST,
    TPM2B_NAME,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_QUOTE_INFO,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMU_ATTEST,
)

from client.tpm import rawcmd
from client.tpm.common import (
    AK_TEMPLATE,
    SRK_TEMPLATE,
    ak_template,
    format_pcr_selection,
    matches_ecc_template,
    pcr_policy_digest,
    pytss_selection,
    selection_bytes,
    srk_template,
)
from client.tpm.evidence import attested
from shared.errors import AttestgateError, ErrorCode

PW = struct.pack(">IIHBH", 9, 0x40000009, 0, 0, 0)  # password session, empty auth
PW_ANSWER = b"\x00\x00\x01\x00\x00"  # empty nonce, continueSession, empty hmac
SEL8 = tuple(range(8))


def _answer(body: bytes, rc: int = 0, tag: int = 0x8002) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), rc) + body


def _with_password(params: bytes) -> bytes:
    return struct.pack(">I", len(params)) + params + PW_ANSWER


# -- the marshalled PCR selection -------------------------------------------------------------


def test_selection_bytes_are_what_tpm2_pytss_parses() -> None:
    rng = random.Random(7)
    subsets = [SEL8, (0,), (23,), tuple(range(24)), (7, 16, 23)]
    subsets += [tuple(sorted(rng.sample(range(24), rng.randint(1, 24)))) for _ in range(300)]
    for indices in subsets:
        text = format_pcr_selection(indices)
        expected = bytes(TPML_PCR_SELECTION.parse(text).marshal())
        assert selection_bytes(indices) == expected, text
        assert bytes(pytss_selection(indices).marshal()) == expected


def test_pytss_selection_is_a_new_object_each_time() -> None:
    first = pytss_selection((0, 1))
    first.pcrSelections[0].pcrSelect[0] = 0xFF  # ESAPI never does; a caller could
    assert bytes(pytss_selection((0, 1)).marshal()) == selection_bytes((0, 1))


def test_policy_digest_is_unchanged() -> None:
    """pcr_policy_digest now hashes selection_bytes; the TPM's PolicyPCR hashes the
    TPML_PCR_SELECTION tpm2_pytss marshals (known answer computed from that)."""
    values = {i: bytes([i]) * 32 for i in (0, 7, 16)}
    sel = bytes(TPML_PCR_SELECTION.parse("sha256:0,7,16").marshal())
    pcr_digest = hashlib.sha256(b"".join(values[i] for i in (0, 7, 16))).digest()
    expected = hashlib.sha256(bytes(32) + struct.pack(">I", 0x17F) + sel + pcr_digest).digest()
    assert pcr_policy_digest((0, 7, 16), values) == expected


# -- the template check on bytes --------------------------------------------------------------


def _reference_matches(public: bytes, template: Any) -> bool:
    """The check this replaced (objects._matches_template on tpm2_pytss objects), plus the
    TPM2B's size matching its content, which libtss2's unmarshal does not check (the bytes
    check refuses such a public; a TPM's ReadPublic never gives one)."""
    if len(public) < 2 or struct.unpack_from(">H", public)[0] != len(public) - 2:
        return False
    try:
        obj, used = TPM2B_PUBLIC.unmarshal(public)
    except Exception:  # tpm2_pytss raises many kinds for garbage
        return False
    if used != len(public):
        return False
    expected, _ = TPMT_PUBLIC.unmarshal(template.publicArea.marshal())
    area = obj.publicArea
    if area.type != TPM2_ALG.ECC or expected.type != TPM2_ALG.ECC:
        return False
    expected.unique.ecc.x = bytes(area.unique.ecc.x)
    expected.unique.ecc.y = bytes(area.unique.ecc.y)
    return bool(bytes(expected.marshal()) == bytes(area.marshal()))


def _object(template: bytes, x: bytes, y: bytes) -> bytes:
    area = template[2:-4] + struct.pack(">H", len(x)) + x + struct.pack(">H", len(y)) + y
    return struct.pack(">H", len(area)) + area


def test_template_check_agrees_with_tpm2_pytss() -> None:
    rng = random.Random(11)
    cases: list[tuple[bytes, bytes, Any]] = []
    for marshalled, template in ((SRK_TEMPLATE, srk_template()), (AK_TEMPLATE, ak_template())):
        good = _object(marshalled, os.urandom(32), os.urandom(32))
        cases.append((good, marshalled, template))
        cases.append((_object(marshalled, b"", b""), marshalled, template))
        for _ in range(400):
            mutated = bytearray(good)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            cases.append((bytes(mutated), marshalled, template))
        cases += [(good[:n], marshalled, template) for n in range(0, len(good), 7)]
        cases.append((good + b"\0", marshalled, template))
    # each template's object checked against the other template
    cases.append((_object(SRK_TEMPLATE, os.urandom(32), os.urandom(32)), AK_TEMPLATE,
                  ak_template()))
    cases.append((_object(AK_TEMPLATE, os.urandom(32), os.urandom(32)), SRK_TEMPLATE,
                  srk_template()))
    accepted = 0
    for public, marshalled, template in cases:
        expected = _reference_matches(public, template)
        assert matches_ecc_template(public, marshalled) == expected, public.hex()
        accepted += expected
    assert accepted >= 4  # the good objects, at least


def test_template_check_refuses_what_is_not_an_ecc_template() -> None:
    with pytest.raises(ValueError, match="ECC template"):
        matches_ecc_template(b"", b"\x00\x04\x00\x08\x00\x0b")


# -- commands ---------------------------------------------------------------------------------


def test_command_codes_are_the_specs() -> None:
    codes = (rawcmd.CC_READ_PUBLIC, rawcmd.CC_HMAC, rawcmd.CC_QUOTE, rawcmd.CC_UNSEAL,
             rawcmd.CC_SIGN)
    assert codes == (TPM2_CC.ReadPublic, TPM2_CC.HMAC, TPM2_CC.Quote, TPM2_CC.Unseal,
                     TPM2_CC.Sign)


def test_read_public_bytes() -> None:
    assert rawcmd.read_public(0x80000001) == struct.pack(">HIII", 0x8001, 14, 0x173,
                                                         0x80000001)


def test_hmac_bytes() -> None:
    data = b"e_i and e_r"
    assert rawcmd.hmac_sha256(0x80000002, data) == (
        struct.pack(">HII", 0x8002, 10 + 4 + 4 + 9 + 2 + len(data) + 2, 0x155)
        + struct.pack(">I", 0x80000002) + struct.pack(">I", 9) + struct.pack(">I", 0x40000009)
        + b"\x00\x00" + b"\x00" + b"\x00\x00" + struct.pack(">H", len(data)) + data + b"\x00\x0b")


def test_quote_bytes() -> None:
    sel = selection_bytes(SEL8)
    nonce = bytes(range(32))
    assert rawcmd.quote(0x80000000, nonce, sel) == (
        struct.pack(">HII", 0x8002, 10 + 4 + 4 + 9 + 34 + 2 + len(sel), 0x158)
        + struct.pack(">I", 0x80000000) + PW + b"\x00\x20" + nonce + b"\x00\x10" + sel)


def test_unseal_password_bytes() -> None:
    assert rawcmd.unseal_password(0x80000001) == (
        struct.pack(">HII", 0x8002, 27, 0x15E) + struct.pack(">I", 0x80000001) + PW)


def test_sign_bytes() -> None:
    digest = bytes(range(32))
    assert rawcmd.sign(0x80000003, digest) == (
        struct.pack(">HII", 0x8002, 10 + 4 + 4 + 9 + 34 + 2 + 2 + 4 + 2, 0x15D)
        + struct.pack(">I", 0x80000003) + PW + b"\x00\x20" + digest + b"\x00\x10"
        + struct.pack(">HI", 0x8024, 0x40000007) + b"\x00\x00")


def test_oversized_arguments_are_refused_before_sending() -> None:
    with pytest.raises(ValueError):
        rawcmd.hmac_sha256(0x80000002, bytes(rawcmd.MAX_HMAC_DATA + 1))
    with pytest.raises(ValueError):
        rawcmd.quote(0x80000000, bytes(65), selection_bytes(SEL8))
    with pytest.raises(ValueError):
        rawcmd.sign(0x80000003, bytes(31))


# -- answers ----------------------------------------------------------------------------------


def _quote_answer_params() -> tuple[bytes, bytes, bytes]:
    """(TPM2B_ATTEST || TPMT_SIGNATURE as tpm2_pytss marshals them, attest, signature)."""
    info = TPMS_ATTEST(
        magic=0xFF544347, type=TPM2_ST.ATTEST_QUOTE,
        qualifiedSigner=TPM2B_NAME(b"\x00\x0b" + bytes(range(32))),
        extraData=b"n" * 32,
        clockInfo=TPMS_CLOCK_INFO(clock=5, resetCount=1, restartCount=0, safe=1),
        firmwareVersion=0x2019, attested=TPMU_ATTEST(quote=TPMS_QUOTE_INFO(
            pcrSelect=pytss_selection(SEL8), pcrDigest=b"d" * 32)))
    attest = bytes(info.marshal())
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    sig.signature.ecdsa.hash = TPM2_ALG.SHA256
    sig.signature.ecdsa.signatureR = b"r" * 32
    sig.signature.ecdsa.signatureS = b"s" * 32
    signature = bytes(sig.marshal())
    return bytes(TPM2B_ATTEST(attest).marshal()) + signature, attest, signature


def test_quote_answer_is_split_as_tpm2_pytss_splits_it() -> None:
    params, attest, signature = _quote_answer_params()
    body = rawcmd.response(_answer(_with_password(params)))
    assert rawcmd.parse_quote(body) == (attest, signature)
    obj, used = TPM2B_ATTEST.unmarshal(params)
    assert bytes(obj) == attest and bytes(TPMT_SIGNATURE.unmarshal(params[used:])[0].marshal()) \
        == signature


def test_known_answers() -> None:
    digest = bytes(range(32))
    assert rawcmd.parse_hmac(_with_password(b"\x00\x20" + digest)) == digest
    assert rawcmd.parse_password_unseal(_with_password(b"\x00\x03abc")) == b"abc"
    public = _object(SRK_TEMPLATE, b"x" * 32, b"y" * 32)
    name, qualified = b"\x00\x0b" + b"n" * 32, b"\x00\x0b" + b"q" * 32
    body = public + struct.pack(">H", 34) + name + struct.pack(">H", 34) + qualified
    assert rawcmd.parse_read_public(body) == (public, name, qualified)


def _truncations(data: bytes) -> list[bytes]:
    return [data[:n] for n in range(len(data))]


@pytest.mark.parametrize("parse", [rawcmd.parse_hmac, rawcmd.parse_password_unseal,
                                   rawcmd.parse_quote, rawcmd.parse_sign])
def test_truncated_or_padded_answers_are_a_tpm_error(parse: Any) -> None:
    params = {
        rawcmd.parse_hmac: b"\x00\x20" + bytes(32),
        rawcmd.parse_password_unseal: b"\x00\x03abc",
        rawcmd.parse_quote: _quote_answer_params()[0],
        rawcmd.parse_sign: _quote_answer_params()[2],
    }[parse]
    good = _with_password(params)
    parse(good)
    bad = [*_truncations(good), good + b"\0",
           struct.pack(">I", len(params) + 1) + params + PW_ANSWER,
           struct.pack(">I", len(params)) + params + b"\x00\x01x\x01\x00\x00"]
    for body in bad:
        with pytest.raises(rawcmd.TpmResponseCode) as err:
            parse(body)
        assert err.value.rc == 0x101


def test_an_empty_sign_answer_is_refused() -> None:
    with pytest.raises(rawcmd.TpmResponseCode):
        rawcmd.parse_sign(_with_password(b""))


def test_hmac_of_another_size_is_refused() -> None:
    with pytest.raises(rawcmd.TpmResponseCode):
        rawcmd.parse_hmac(_with_password(b"\x00\x14" + bytes(20)))


def test_quote_without_signature_or_attest_is_refused() -> None:
    _, attest, _ = _quote_answer_params()
    for p in (bytes(TPM2B_ATTEST(attest).marshal()), b"\x00\x00" + b"\x00\x14"):
        with pytest.raises(rawcmd.TpmResponseCode):
            rawcmd.parse_quote(_with_password(p))


def test_malformed_read_public_answers() -> None:
    public = _object(AK_TEMPLATE, b"x" * 32, b"y" * 32)
    good = public + b"\x00\x02ab" + b"\x00\x02cd"
    rawcmd.parse_read_public(good)
    for body in [*_truncations(good), good + b"\0", b"\x00\x00" + b"\x00\x02ab\x00\x02cd",
                 public + b"\x00\x00\x00\x02cd"]:
        with pytest.raises(rawcmd.TpmResponseCode):
            rawcmd.parse_read_public(body)


def test_garbage_answers_never_crash() -> None:
    rng = random.Random(3)
    parsers = (rawcmd.parse_hmac, rawcmd.parse_password_unseal, rawcmd.parse_quote,
               rawcmd.parse_read_public, rawcmd.parse_sign)
    for n, parse in itertools.product(range(400), parsers):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        if n % 2:  # a plausible parameterSize
            body = struct.pack(">I", max(0, len(body) - 5)) + body
        with contextlib.suppress(rawcmd.TpmResponseCode):
            parse(body)


# -- resubmission, as ESAPI does it -----------------------------------------------------------


class Scripted:
    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []

    def transmit(self, data: bytes) -> None:
        self.sent.append(data)

    def receive(self) -> bytes:
        return self.answers.pop(0)


def test_retry_is_resubmitted_the_same_bytes() -> None:
    ok = _answer(_with_password(b"\x00\x03abc"))
    tpm = Scripted([_answer(b"", 0x922, 0x8001), _answer(b"", 0x908, 0x8001), ok])
    cmd = rawcmd.unseal_password(0x80000001)
    assert rawcmd.parse_password_unseal(rawcmd.call(tpm, cmd)) == b"abc"
    assert tpm.sent == [cmd] * 3


def test_retry_gives_up_after_five_submissions_as_esapi_does() -> None:
    tpm = Scripted([_answer(b"", 0x922, 0x8001)] * 6)
    with pytest.raises(rawcmd.TpmResponseCode) as err:
        rawcmd.call(tpm, rawcmd.unseal_password(0x80000001))
    assert err.value.rc == 0x922 and len(tpm.sent) == rawcmd.MAX_SUBMISSIONS


def test_other_errors_are_not_resubmitted() -> None:
    tpm = Scripted([_answer(b"", 0x98E, 0x8001)])
    with pytest.raises(rawcmd.TpmResponseCode) as err:
        rawcmd.call(tpm, rawcmd.unseal_password(0x80000001))
    assert err.value.rc == 0x98E and len(tpm.sent) == 1


# -- the attest read with shared/tpm's readers ------------------------------------------------


def test_attested_agrees_with_tpm2_pytss() -> None:
    _, attest, _ = _quote_answer_params()
    parsed, _ = TPMS_ATTEST.unmarshal(attest)
    expected = (bytes(parsed.qualifiedSigner), bytes(parsed.attested.quote.pcrDigest))
    assert attested(attest, selection_bytes(SEL8)) == expected
    # a selection encoded otherwise (4-byte bitmap) goes to the generic reader: same answer
    other = bytes(TPML_PCR_SELECTION.parse("sha256:0,1,2,3,4,5,6,7").marshal())
    four = struct.pack(">IHB", 1, 0xB, 4) + b"\xff\x00\x00\x00"
    assert attested(attest.replace(other, four), selection_bytes(SEL8)) == expected
    assert attested(attest, None) == (expected[0], b"")


@pytest.mark.parametrize("cut", [0, 3, 10, 40, -1])
def test_a_malformed_attest_is_a_tpm_error(cut: int) -> None:
    _, attest, _ = _quote_answer_params()
    with pytest.raises(AttestgateError) as err:
        attested(attest[:cut], selection_bytes(SEL8))
    assert err.value.code is ErrorCode.TPM_ERROR


def test_an_attest_that_is_not_a_quote_is_a_tpm_error() -> None:
    _, attest, _ = _quote_answer_params()
    certify = TPMS_ATTEST.unmarshal(attest)[0]
    certify.type = TPM2_ST.ATTEST_CERTIFY
    certify.attested.certify.name = b"\x00\x0b" + bytes(32)
    certify.attested.certify.qualifiedName = b"\x00\x0b" + bytes(32)
    data = bytes(certify.marshal())
    assert attested(data, None)[0] == bytes(certify.qualifiedSigner)
    with pytest.raises(AttestgateError) as err:
        attested(data, selection_bytes(SEL8))
    assert err.value.code is ErrorCode.TPM_ERROR
