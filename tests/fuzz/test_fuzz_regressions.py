"""Inputs the fuzzers found that broke the invariant, kept as regression tests.

Each test names the target that found it and what went wrong before the fix.
"""

from __future__ import annotations

import datetime
import random
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "tpm"))
import tpm_kat_data as kat

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.credential import make_credential, wrap_hmac_key
from shared.tpm.ekcert import EkCaStore, ek_matches_cert, load_ek_cert, verify_ek_chain
from shared.tpm.structures import name_of, parse_public, to_crypto_key
from shared.tpm.x509cert import Certificate, parse_certificate


def _test_ca() -> Certificate:
    """The KAT EK CA as the chain builder takes it (our own reader's certificate)."""
    return parse_certificate(x509.load_pem_x509_certificate(kat.EK_CA_CERT_PEM)
                             .public_bytes(Encoding.DER))


def _ek_with_modulus_tail(last: int) -> bytes:
    """The swtpm RSA EK public with the modulus's last byte replaced (its parity)."""
    data = bytearray(kat.EK_RSA_PUBLIC)
    data[-1] = last
    return bytes(data)


def test_even_rsa_modulus_is_refused_not_a_valueerror() -> None:
    """tpm credential target: an EK public whose modulus is even parsed as a key, and
    RSA-OAEP then raised ValueError ("Encryption failed") out of make_credential."""
    ek = _ek_with_modulus_tail(kat.EK_RSA_PUBLIC[-1] ^ 1)
    assert ek[-1] % 2 == 0
    with pytest.raises(AttestgateError) as e:
        make_credential(ek, name_of(kat.AK_PUBLIC), b"c" * 32, random.Random(0).randbytes)
    assert e.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(AttestgateError) as e:
        to_crypto_key(parse_public(ek))
    assert e.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("exponent", [1, 2, 4, 65536])
def test_invalid_rsa_exponent_is_refused(exponent: int) -> None:
    """An exponent of 1 or an even one is no RSA key: refused like the even modulus."""
    data = bytearray(kat.EK_RSA_PUBLIC)
    at = 2 + 2 + 2 + 4 + 2 + 32 + 6 + 2 + 2  # size type nameAlg attrs policy sym scheme bits
    assert data[at:at + 4] == b"\x00\x00\x00\x00"
    data[at:at + 4] = exponent.to_bytes(4, "big")
    with pytest.raises(AttestgateError) as e:
        wrap_hmac_key(bytes(data), b"k" * 32, random.Random(0).randbytes)
    assert e.value.code is ErrorCode.BAD_REQUEST


def _p384_cert_with_point_off_curve() -> bytes:
    """The swtpm P-384 EK certificate with one byte of its EC point changed (off the curve).

    cryptography parses certificates lazily: the DER still loads, the key only fails
    when asked for."""
    point = bytes.fromhex("04dad8dcf17bc2a5098c")
    at = kat.EK_P384_CERT.index(point) + len(point)
    data = bytearray(kat.EK_P384_CERT)
    data[at] ^= 0x01
    return bytes(data)


def test_ek_certificate_with_invalid_key_is_untrusted_not_a_valueerror() -> None:
    """tpm EK certificate target: load_ek_cert accepted it, then ek_matches_cert's
    cert.public_key() raised ValueError ("Invalid key") out of enrollment's check_ek."""
    data = _p384_cert_with_point_off_curve()
    with pytest.raises(AttestgateError) as e:
        ek_matches_cert(kat.EK_P384_PUBLIC, load_ek_cert(data))
    assert e.value.code is ErrorCode.EK_UNTRUSTED


def test_ek_certificate_with_malformed_subject_is_untrusted_not_a_valueerror() -> None:
    """tpm EK certificate target: a subject whose name is tagged BOOLEAN loads, and the
    chain builder, refusing a leaf outside its validity, then raised ValueError ("error
    parsing asn1 value") out of verify_ek_chain."""
    subject = bytes.fromhex("13 07") + b"unknown"
    assert kat.EK_RSA_CERT.count(subject) == 1
    data = kat.EK_RSA_CERT.replace(subject, bytes.fromhex("01 07") + b"unknown")
    store = EkCaStore((_test_ca(),), ())
    with pytest.raises(AttestgateError) as e:
        verify_ek_chain(data, store, datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC))
    assert e.value.code is ErrorCode.EK_UNTRUSTED


def test_ek_certificate_of_unknown_version_is_untrusted_not_invalidversion() -> None:
    """tpm EK certificate target: version 34 made cryptography raise x509.InvalidVersion
    (not a ValueError) out of load_ek_cert."""
    version = bytes.fromhex("a003020102")  # [0] INTEGER 2 = v3
    assert kat.EK_RSA_CERT.count(version) == 1
    data = kat.EK_RSA_CERT.replace(version, bytes.fromhex("a003020122"))
    with pytest.raises(AttestgateError) as e:
        load_ek_cert(data)
    assert e.value.code is ErrorCode.EK_UNTRUSTED


def test_ek_certificate_with_bitstring_subject_is_untrusted_not_a_typeerror() -> None:
    """tpm EK certificate target (seed 1): a subject attribute tagged BIT STRING loads,
    and the chain builder, refusing a leaf outside its validity, then raised TypeError
    ("oid must be X500_UNIQUE_IDENTIFIER for BitString type") out of verify_ek_chain."""
    subject = bytes.fromhex("13 07") + b"unknown"
    data = kat.EK_RSA_CERT.replace(subject, bytes.fromhex("03 07") + b"unknown")
    store = EkCaStore((_test_ca(),), ())
    with pytest.raises(AttestgateError) as e:
        verify_ek_chain(data, store, datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC))
    assert e.value.code is ErrorCode.EK_UNTRUSTED


def test_ca_directory_skips_a_certificate_of_unknown_version(tmp_path: Path) -> None:
    """The same x509.InvalidVersion escaped EkCaStore.from_dir (service start-up) for a
    DER file in the EK CA directory: such a file is skipped like any unusable one."""
    version = bytes.fromhex("a003020102")
    (tmp_path / "bad.der").write_bytes(kat.EK_RSA_CERT.replace(version,
                                                               bytes.fromhex("a003020122")))
    (tmp_path / "ca.pem").write_bytes(kat.EK_CA_CERT_PEM)
    store = EkCaStore.from_dir(tmp_path)
    assert store.skipped == ("bad.der",)
    assert len(store.roots) == 1
