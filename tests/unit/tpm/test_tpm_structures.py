"""Parsers, builders and key checks: round trips, attribute rules, and the invariant
"any bytes give a result or an AttestgateError"."""

from __future__ import annotations

import contextlib
import struct

import pytest
import tpm_kat_data as kat
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from tpm_unit_helpers import AK_ATTRS, ecc_public, quote_attest

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.attributes import check_ak, check_post_key, check_srk
from shared.tpm.constants import Alg, ObjectAttr
from shared.tpm.credential import make_credential, wrap_hmac_key
from shared.tpm.ekcert import ek_fingerprint, ek_matches_cert, load_ek_cert, trim_der
from shared.tpm.pcrs import PcrSelection
from shared.tpm.quote import verify_quote
from shared.tpm.signature import verify_ecdsa_signature
from shared.tpm.structures import (
    EccParms,
    Scheme,
    parse_attest,
    parse_public,
    parse_signature,
    parse_tpmt_public,
    to_crypto_key,
)

PUBLICS = [kat.AK_PUBLIC, kat.SRK_PUBLIC, kat.POST_PUBLIC, kat.EK_RSA_PUBLIC, kat.EK_P384_PUBLIC]


@pytest.mark.parametrize("blob", PUBLICS)
def test_real_publics_parse_and_round_trip(blob: bytes) -> None:
    pub = parse_public(blob)
    assert pub.marshal() == blob
    assert parse_tpmt_public(blob[2:]) == pub
    to_crypto_key(pub)


def test_key_checks_on_real_keys() -> None:
    assert check_ak(kat.AK_PUBLIC).has(AK_ATTRS)
    check_srk(kat.SRK_PUBLIC)
    check_post_key(kat.POST_PUBLIC)
    for check, good in ((check_ak, kat.AK_PUBLIC), (check_srk, kat.SRK_PUBLIC),
                        (check_post_key, kat.POST_PUBLIC)):
        for other in PUBLICS:
            # An EK has the shape of a storage key (restricted decrypt, AES-CFB).
            if other != good and not (check is check_srk and other in PUBLICS[3:]):
                with pytest.raises(AttestgateError):
                    check(other)


@pytest.mark.parametrize("drop", [ObjectAttr.FIXEDTPM, ObjectAttr.FIXEDPARENT,
                                  ObjectAttr.SENSITIVEDATAORIGIN, ObjectAttr.RESTRICTED,
                                  ObjectAttr.SIGN_ENCRYPT])
def test_ak_missing_an_attribute_is_ak_invalid(drop: ObjectAttr) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AttestgateError) as e:
        check_ak(ecc_public(key, AK_ATTRS & ~drop).marshal())
    assert e.value.code is ErrorCode.AK_INVALID


def test_ak_with_decrypt_or_null_scheme_or_other_curve_is_ak_invalid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for blob in (ecc_public(key, AK_ATTRS | ObjectAttr.DECRYPT).marshal(),
                 ecc_public(key, scheme=Scheme(Alg.NULL)).marshal(),
                 ecc_public(key, scheme=Scheme(Alg.ECDSA, Alg.SHA1)).marshal()):
        with pytest.raises(AttestgateError) as e:
            check_ak(blob)
        assert e.value.code is ErrorCode.AK_INVALID
    post = parse_public(kat.POST_PUBLIC)
    assert isinstance(post.parameters, EccParms)


def test_p384_point_swapped_into_p256_is_refused() -> None:
    blob = bytearray(kat.AK_PUBLIC)
    blob[-1] ^= 1  # y no longer on the curve
    with pytest.raises(AttestgateError) as e:
        check_ak(bytes(blob))
    assert e.value.code is ErrorCode.AK_INVALID


def test_parsers_refuse_trailing_and_truncated() -> None:
    for blob in PUBLICS:
        for bad in (blob + b"\x00", blob[:-1], blob[:1], b""):
            with pytest.raises(AttestgateError):
                parse_public(bad)
    for bad in (kat.QUOTE_SIGNATURE + b"\x00", kat.QUOTE_SIGNATURE[:-1],
                struct.pack(">HH", Alg.HMAC, Alg.SHA256) + bytes(32),
                struct.pack(">HH", Alg.ECDSA, 0x99) + bytes(4)):
        with pytest.raises(AttestgateError) as e:
            parse_signature(bad)
        assert e.value.code is ErrorCode.QUOTE_INVALID


def test_byte_by_byte_prefixes_of_real_blobs_never_leak() -> None:
    for blob, parse in ((kat.QUOTE_ATTEST, parse_attest), (kat.CERTIFY_SRK_ATTEST, parse_attest),
                        (kat.AK_PUBLIC, parse_public), (kat.EK_RSA_PUBLIC, parse_public),
                        (kat.QUOTE_SIGNATURE, parse_signature)):
        for n in range(len(blob)):
            with pytest.raises(AttestgateError):
                parse(blob[:n])  # type: ignore[operator]
        parse(blob)  # type: ignore[operator]


def _total(fn: object, *args: object) -> None:
    with contextlib.suppress(AttestgateError):
        fn(*args)  # type: ignore[operator]


SEL = PcrSelection.parse("sha256:0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_into_every_parser_give_a_result_or_our_error(data: bytes) -> None:
    for fn in (parse_public, parse_tpmt_public, parse_attest, parse_signature,
               PcrSelection.from_bytes, check_ak, check_srk, check_post_key, ek_fingerprint,
               load_ek_cert, trim_der):
        _total(fn, data)
    _total(lambda: verify_quote(data, kat.QUOTE_ATTEST, kat.QUOTE_SIGNATURE,
                                qualifying_data=kat.NONCE, selection=SEL, pcr_values={}))
    _total(lambda: verify_quote(kat.AK_PUBLIC, data, kat.QUOTE_SIGNATURE,
                                qualifying_data=kat.NONCE, selection=SEL, pcr_values={}))
    _total(lambda: verify_quote(kat.AK_PUBLIC, kat.QUOTE_ATTEST, data,
                                qualifying_data=kat.NONCE, selection=SEL, pcr_values={}))
    _total(verify_ecdsa_signature, kat.POST_PUBLIC, data, kat.POST_DIGEST)
    _total(verify_ecdsa_signature, data, kat.POST_SIGNATURE, kat.POST_DIGEST)
    _total(ek_matches_cert, data, load_ek_cert(kat.EK_RSA_CERT))
    _total(make_credential, data, b"\x00\x0b" + bytes(32), b"s", bytes)
    _total(wrap_hmac_key, data, b"k" * 32, bytes)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=len(kat.QUOTE_ATTEST)), st.integers(0, 200))
def test_mutated_real_quotes_never_leak(patch: bytes, at: int) -> None:
    at %= len(kat.QUOTE_ATTEST)
    mutated = kat.QUOTE_ATTEST[:at] + patch + kat.QUOTE_ATTEST[at + len(patch):]
    _total(parse_attest, mutated)
    _total(parse_attest, quote_attest({0: bytes(32)})[:at] + patch)
