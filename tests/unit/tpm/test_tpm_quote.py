"""verify_quote / verify_certify / verify_ecdsa_signature on hand-built and real blobs."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
import tpm_kat_data as kat
from cryptography.hazmat.primitives.asymmetric import ec
from tpm_unit_helpers import (
    certify_attest,
    ecc_public,
    ecdsa_sig,
    quote_attest,
)

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.certify import verify_certify
from shared.tpm.pcrs import PcrChange, PcrSelection, pcr_diff, pcr_digest
from shared.tpm.quote import _marshalled, _quote_fields, verify_quote
from shared.tpm.signature import verify_ecdsa_signature
from shared.tpm.structures import name_of, parse_attest, parse_signature, read_ecdsa_sha256
from shared.wire import MAX_EVIDENCE_FIELD

KEY = ec.generate_private_key(ec.SECP256R1())
AK = ecc_public(KEY).marshal()
NONCE = b"n" * 32
PCRS = {i: hashlib.sha256(bytes([i])).digest() for i in range(8)}
SEL = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7")


def _verify(attest: bytes, sig: bytes | None = None, **kw: object) -> object:
    args: dict[str, object] = {"qualifying_data": NONCE, "selection": SEL, "pcr_values": PCRS}
    args.update(kw)
    return verify_quote(AK, attest, sig if sig is not None else ecdsa_sig(KEY, attest),
                        **args)  # type: ignore[arg-type]


def _code(attest: bytes, sig: bytes | None = None, **kw: object) -> ErrorCode:
    with pytest.raises(AttestgateError) as e:
        _verify(attest, sig, **kw)
    return e.value.code


def test_hand_built_quote_verifies() -> None:
    info = _verify(quote_attest(PCRS))
    assert info.clock == 1234 and info.reset_count == 5 and info.restart_count == 6  # type: ignore[attr-defined]
    assert info.firmware_version == 0x2019102300163636  # type: ignore[attr-defined]
    assert info.selection == SEL  # type: ignore[attr-defined]


@pytest.mark.parametrize(("attest", "code"), [
    (quote_attest(PCRS, magic=0xFF544346), ErrorCode.QUOTE_INVALID),
    (quote_attest(PCRS, typ=0x8017), ErrorCode.QUOTE_INVALID),
    (quote_attest(PCRS, typ=0x8014), ErrorCode.QUOTE_INVALID),
    (quote_attest(PCRS, extra=b"m" * 32), ErrorCode.QUOTE_BINDING),
    (quote_attest(PCRS, extra=b""), ErrorCode.QUOTE_BINDING),
    (quote_attest(PCRS, digest=bytes(32)), ErrorCode.PCR_DIGEST),
    (quote_attest(PCRS, bitmap=b"\xff\x00\x01"), ErrorCode.QUOTE_INVALID),
    (quote_attest(PCRS)[:-1], ErrorCode.QUOTE_INVALID),
    (quote_attest(PCRS)[:20], ErrorCode.QUOTE_INVALID),
    (quote_attest(PCRS) + b"\x00", ErrorCode.QUOTE_INVALID),
    (b"", ErrorCode.QUOTE_INVALID),
])
def test_bad_attest_is_refused_with_its_code(attest: bytes, code: ErrorCode) -> None:
    assert _code(attest) is code


def test_pcr_value_changed_is_pcr_digest() -> None:
    assert _code(quote_attest(PCRS), pcr_values={**PCRS, 3: bytes(32)}) is ErrorCode.PCR_DIGEST


def test_pcr_values_not_matching_selection_are_bad_request() -> None:
    att = quote_attest(PCRS)
    assert _code(att, pcr_values={k: v for k, v in PCRS.items() if k}) is ErrorCode.BAD_REQUEST
    assert _code(att, pcr_values={**PCRS, 9: bytes(32)}) is ErrorCode.BAD_REQUEST
    assert _code(att, pcr_values={**PCRS, 1: b"short"}) is ErrorCode.BAD_REQUEST


def test_other_selection_requested_is_refused() -> None:
    att = quote_attest(PCRS)
    other = PcrSelection.parse("sha256:0,1,2,3,4,5,6")
    assert _code(att, selection=other, pcr_values={i: PCRS[i] for i in range(7)}) is (
        ErrorCode.QUOTE_INVALID)


@pytest.mark.parametrize("bit", [0, 7, 8 * 20, 8 * 40 + 3, 8 * 71 + 7])
def test_one_bit_flipped_in_signature_is_refused(bit: int) -> None:
    att = quote_attest(PCRS)
    sig = bytearray(ecdsa_sig(KEY, att))
    sig[bit // 8] ^= 1 << (bit % 8)
    assert _code(att, bytes(sig)) in (ErrorCode.QUOTE_INVALID,)


def test_one_bit_flipped_in_attest_breaks_signature() -> None:
    att = quote_attest(PCRS)
    sig = ecdsa_sig(KEY, att)
    flipped = bytearray(att)
    flipped[60] ^= 0x10
    assert _code(bytes(flipped), sig) is ErrorCode.QUOTE_INVALID


def test_signature_by_another_key_is_refused() -> None:
    att = quote_attest(PCRS)
    assert _code(att, ecdsa_sig(ec.generate_private_key(ec.SECP256R1()), att)) is (
        ErrorCode.QUOTE_INVALID)


def test_malformed_ak_is_ak_invalid_and_oversize_is_too_large() -> None:
    att = quote_attest(PCRS)
    with pytest.raises(AttestgateError) as e:
        verify_quote(AK[:-1], att, ecdsa_sig(KEY, att), qualifying_data=NONCE, selection=SEL,
                     pcr_values=PCRS)
    assert e.value.code is ErrorCode.AK_INVALID
    big = att + bytes(MAX_EVIDENCE_FIELD)
    assert _code(big, ecdsa_sig(KEY, att)) is ErrorCode.TOO_LARGE


def test_multi_bank_selection_is_refused_up_front() -> None:
    sel = PcrSelection.parse("sha256:0+sha1:0")
    assert _code(quote_attest(PCRS), selection=sel) is ErrorCode.BAD_REQUEST


# -- certify ---------------------------------------------------------------------------

CERTIFIED = ecc_public(ec.generate_private_key(ec.SECP256R1())).marshal()


def test_certify_verifies_and_refuses() -> None:
    att = certify_attest(name_of(CERTIFIED))
    info = verify_certify(AK, att, ecdsa_sig(KEY, att), certified_public=CERTIFIED,
                          qualifying_data=NONCE)
    assert info.name == name_of(CERTIFIED)
    bad = [
        (att, ecdsa_sig(KEY, att), AK, b"x" * 32),  # other nonce
        (att, ecdsa_sig(KEY, att), AK, NONCE[:-1]),
        (certify_attest(b"\x00\x0b" + bytes(32)), None, AK, NONCE),  # other name
        (certify_attest(name_of(CERTIFIED), typ=0x8018), None, AK, NONCE),
        (att[:-3], None, AK, NONCE),
        (att, ecdsa_sig(ec.generate_private_key(ec.SECP256R1()), att), AK, NONCE),
    ]
    for attest, sig, ak, nonce in bad:
        with pytest.raises(AttestgateError) as e:
            verify_certify(ak, attest, sig or ecdsa_sig(KEY, attest),
                           certified_public=CERTIFIED, qualifying_data=nonce)
        assert e.value.code is ErrorCode.CERTIFY_INVALID


# -- swtpm known answers -------------------------------------------------------------------


def test_swtpm_quote_kat() -> None:
    values = {i: kat.QUOTE_PCRS[32 * i: 32 * i + 32] for i in range(8)}
    info = verify_quote(kat.AK_PUBLIC, kat.QUOTE_ATTEST, kat.QUOTE_SIGNATURE,
                        qualifying_data=kat.NONCE, selection=SEL, pcr_values=values)
    assert info.qualified_signer[:2] == b"\x00\x0b"
    att = parse_attest(kat.QUOTE_ATTEST)
    assert att.extra_data == kat.NONCE
    with pytest.raises(AttestgateError) as e:
        verify_quote(kat.AK_PUBLIC, kat.QUOTE_ATTEST, kat.QUOTE_SIGNATURE,
                     qualifying_data=kat.NONCE[::-1], selection=SEL, pcr_values=values)
    assert e.value.code is ErrorCode.QUOTE_BINDING


def test_swtpm_certify_and_post_signature_kat() -> None:
    info = verify_certify(kat.AK_PUBLIC, kat.CERTIFY_SRK_ATTEST, kat.CERTIFY_SRK_SIGNATURE,
                          certified_public=kat.SRK_PUBLIC, qualifying_data=kat.NONCE)
    assert info.name == name_of(kat.SRK_PUBLIC)
    with pytest.raises(AttestgateError) as e:  # the AK certified the SRK, not the post key
        verify_certify(kat.AK_PUBLIC, kat.CERTIFY_SRK_ATTEST, kat.CERTIFY_SRK_SIGNATURE,
                       certified_public=kat.POST_PUBLIC, qualifying_data=kat.NONCE)
    assert e.value.code is ErrorCode.CERTIFY_INVALID
    verify_ecdsa_signature(kat.POST_PUBLIC, kat.POST_SIGNATURE, kat.POST_DIGEST)
    for pub, sig, digest in [
        (kat.POST_PUBLIC, kat.POST_SIGNATURE, hashlib.sha256(b"other").digest()),
        (kat.AK_PUBLIC, kat.POST_SIGNATURE, kat.POST_DIGEST),
        (kat.POST_PUBLIC, kat.POST_SIGNATURE[:-1], kat.POST_DIGEST),
        (kat.POST_PUBLIC, kat.POST_SIGNATURE, kat.POST_DIGEST[:31]),
        (kat.SRK_PUBLIC, kat.POST_SIGNATURE, kat.POST_DIGEST),
        (kat.POST_PUBLIC, kat.QUOTE_SIGNATURE, kat.POST_DIGEST),
    ]:
        with pytest.raises(AttestgateError) as e:
            verify_ecdsa_signature(pub, sig, digest)
        assert e.value.code is ErrorCode.BAD_SIGNATURE


# -- pcr helpers ---------------------------------------------------------------------------


def test_pcr_digest_and_diff() -> None:
    assert pcr_digest(0x000B, SEL, {0x000B: PCRS}) == hashlib.sha256(
        b"".join(PCRS[i] for i in range(8))).digest()
    changed = {**PCRS, 4: bytes(32)}
    del changed[7]
    changed[9] = bytes(32)
    assert pcr_diff(PCRS, changed) == (
        PcrChange(4, PCRS[4], bytes(32)), PcrChange(7, PCRS[7], None),
        PcrChange(9, None, bytes(32)))
    assert pcr_diff(PCRS, dict(PCRS)) == ()


def test_pcr_selection_text_and_wire_round_trip() -> None:
    sel = PcrSelection.parse("sha256:7,0,23+sha1:16")
    assert str(sel) == "sha256:0,7,23+sha1:16"
    assert PcrSelection.from_bytes(sel.marshal()) == sel
    assert sel.marshal() == struct.pack(">IHB3sHB3s", 2, 0x0B, 3, b"\x81\x00\x80", 4, 3,
                                        b"\x00\x00\x01")
    for text in ["sha256:24", "md5:1", "sha256:1,1", "sha256", "sha256:a", "sha1:0+sha1:1"]:
        with pytest.raises(AttestgateError) as e:
            PcrSelection.parse(text)
        assert e.value.code is ErrorCode.BAD_REQUEST


# -- the direct reading of the common case agrees with the generic parsers --------------


def _generic_quote(attest: bytes) -> tuple[object, ...] | None:
    try:
        a = parse_attest(attest)
    except AttestgateError:
        return None
    if a.type != 0x8018:
        return None
    q = a.attested
    c = a.clock_info
    return (c.clock, c.reset_count, c.restart_count, c.safe, a.firmware_version,
            q.pcr_digest, a.qualified_signer, a.extra_data, q.selection)  # type: ignore[union-attr]


def _mutations(seed: bytes, rounds: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(rounds):
        b = bytearray(seed)
        if i % 5 == 0:
            b = b[: rng.randrange(len(b) + 1)]
        elif i % 5 == 1:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        else:
            for _ in range(rng.randint(1, 2)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    return out


def test_the_direct_quote_reading_agrees_with_parse_attest() -> None:
    """Whatever _quote_fields reads, parse_attest reads the same (with the asked selection);
    whatever it does not recognise goes to parse_attest."""
    seeds = [quote_attest(PCRS), quote_attest(PCRS, extra=b""), kat.QUOTE_ATTEST,
             quote_attest(PCRS, bitmap=b"\xff\x00\x00\x00")]  # a 4-byte bitmap: generic
    for seed in seeds:
        for attest in [seed, *_mutations(seed, 3000)]:
            fields = _quote_fields(attest, _marshalled(SEL))
            if fields is not None:
                assert (*fields, SEL) == _generic_quote(attest)
    assert _quote_fields(quote_attest(PCRS, bitmap=b"\xff\x00\x00\x00"), _marshalled(SEL)) is None


def test_a_quote_with_a_longer_bitmap_still_verifies() -> None:
    """A TPM may echo the selection with a 4-byte bitmap: the generic reader takes it."""
    info = _verify(quote_attest(PCRS, bitmap=b"\xff\x00\x00\x00"))
    assert info.selection == SEL  # type: ignore[attr-defined]


def test_the_direct_signature_reading_agrees_with_parse_signature() -> None:
    seed = ecdsa_sig(KEY, b"data")
    short_r = struct.pack(">HH", 0x18, 0x0B) + struct.pack(">H", 31) + b"\1" * 31 + struct.pack(
        ">H", 32) + b"\2" * 32
    for sig in [seed, short_r, *_mutations(seed, 3000), *_mutations(short_r, 1000)]:
        direct = read_ecdsa_sha256(sig)
        if direct is not None:
            assert direct == parse_signature(sig)
