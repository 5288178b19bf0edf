"""EK certificate chains from the handout test data, and the swtpm EK KAT."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
from pathlib import Path

import pytest
import tpm_kat_data as kat
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from tpm_unit_helpers import require_testdata

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.ekcert import (
    EkCaStore,
    check_ek_allowlist,
    ek_fingerprint,
    ek_matches_cert,
    load_ek_cert,
    trim_der,
    verify_ek_chain,
)
from shared.tpm.x509cert import verify_signed_by

# Inside every leaf's validity (the STM leaves end in 2028).
NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


def _leaf_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data.startswith(b"-----"):
        return x509.load_pem_x509_certificate(data).public_bytes(
            Encoding.DER)
    return data


def _ca_dir_for(leaf: str) -> Path:
    vendor = leaf.split("/")[1]
    return require_testdata() / "ek" / vendor / "ca"


def _leaves() -> list[tuple[str, dict[str, object]]]:
    if not Path("/work/shared/testdata/expected.json").exists():
        return [("absent", {})]
    return list(json.loads(Path("/work/shared/testdata/expected.json").read_text())["ek"].items())


@pytest.mark.parametrize(("leaf", "expected"), _leaves())
def test_every_testdata_leaf_verifies_against_its_ca_dir(leaf: str,
                                                         expected: dict[str, object]) -> None:
    root = require_testdata()
    info = verify_ek_chain(_leaf_bytes(root / leaf), _ca_dir_for(leaf), NOW)
    chain = expected["chain"]
    assert isinstance(chain, list)
    assert len(info.chain) == 1 + len(chain)
    want = [x509.load_pem_x509_certificate((root / c).read_bytes())
            if (root / c).read_bytes().startswith(b"-----")
            else x509.load_der_x509_certificate((root / c).read_bytes()) for c in chain]
    assert [c.der for c in info.chain[1:]] == [w.public_bytes(Encoding.DER) for w in want]
    key = expected["key"]
    assert isinstance(key, str)
    kind, size = key.split("-")
    if kind == "EC":
        assert isinstance(info.public_key, ec.EllipticCurvePublicKey)
        assert info.public_key.curve.name == size
    else:
        assert info.public_key.key_size == int(size)


def test_t490_padded_cert_trims_and_matches_its_ek_public() -> None:
    root = require_testdata()
    raw = (root / "ek/stm/t490/ek.crt").read_bytes()
    assert len(trim_der(raw)) == 1170 and len(raw) == 1600
    info = verify_ek_chain(raw, root / "ek/stm/ca", NOW)
    ek_pub = (root / "ek/stm/t490/ek.pub").read_bytes()
    ek_matches_cert(ek_pub, info.certificate)
    assert ek_fingerprint(ek_pub) == info.fingerprint
    assert check_ek_allowlist(ek_pub, {info.fingerprint.upper()}) == info.fingerprint
    with pytest.raises(AttestgateError) as e:
        check_ek_allowlist(ek_pub, {"00" * 32})
    assert e.value.code is ErrorCode.EK_UNTRUSTED
    # The T490 EK is not the key of the STM ECC leaf.
    other = load_ek_cert((root / "ek/stm/st_ecdsa_sha256_der.der").read_bytes())
    with pytest.raises(AttestgateError) as e:
        ek_matches_cert(ek_pub, other)
    assert e.value.code is ErrorCode.EK_MISMATCH


def _ek_untrusted(cert: bytes, ca: Path | EkCaStore, now: datetime.datetime = NOW) -> None:
    with pytest.raises(AttestgateError) as e:
        verify_ek_chain(cert, ca, now)
    assert e.value.code is ErrorCode.EK_UNTRUSTED


def test_wrong_intermediate_is_refused(tmp_path: Path) -> None:
    root = require_testdata()
    for name in ("stmtpmekint04.pem", "STM_RSA_RT.pem", "GS_TPM_RT.pem"):
        shutil.copy(root / "ek/stm/ca" / name, tmp_path / name)  # tmp only, not the repo
    _ek_untrusted((root / "ek/stm/t490/ek.crt").read_bytes(), tmp_path)


def test_unknown_ca_and_expired_are_refused() -> None:
    root = require_testdata()
    leaf = (root / "ek/stm/t490/ek.crt").read_bytes()
    _ek_untrusted(leaf, root / "ek/infineon/ca")
    _ek_untrusted(leaf, root / "ek/google-vtpm/ca")
    _ek_untrusted(leaf, root / "ek/stm/ca", datetime.datetime(2029, 1, 1, tzinfo=datetime.UTC))
    _ek_untrusted(leaf, root / "ek/stm/ca", datetime.datetime(2017, 1, 1, tzinfo=datetime.UTC))
    _ek_untrusted(leaf, root / "ek/nuvoton/ca")


def test_nuvoton_roots_load_as_trust_anchors_and_their_self_signatures_verify() -> None:
    root = require_testdata()
    store = EkCaStore.from_dir(root / "ek/nuvoton/ca")
    assert len(store.roots) == 2 and store.skipped == () and store.intermediates == ()
    for name in ("NUVO_2110.pem", "NUVO_2111.pem"):
        der = x509_pem_body(root / "ek/nuvoton/ca" / name)
        with pytest.raises(ValueError):  # still not DER: cryptography refuses it
            x509.load_der_x509_certificate(der)
        cert = load_ek_cert(der)
        assert cert.der in {r.der for r in store.roots}
        assert cert.subject == cert.issuer and cert.subject.rfc4514().startswith(
            "CN=Nuvoton TPM Root CA 211")
        verify_signed_by(cert, cert)
        # One bit of the TBS changed: the self-signature no longer verifies.
        flipped = bytearray(der)
        flipped[cert.der.index(cert.tbs) + 60] ^= 1
        with pytest.raises(AttestgateError) as e:
            verify_signed_by(load_ek_cert(bytes(flipped)), cert)
        assert e.value.code is ErrorCode.EK_UNTRUSTED
        _ek_untrusted(der, root / "ek/stm/ca")


def x509_pem_body(path: Path) -> bytes:
    lines = path.read_text().strip().splitlines()
    return base64.b64decode("".join(line for line in lines if not line.startswith("-----")))


@pytest.mark.parametrize("blob", [b"", b"\x30", b"\x30\x82\x01", b"\x31\x00", b"\x30\x03ab",
                                  b"\x30\x00junk", b"\x30\x84\x00\x00\x00\x01\x00",
                                  b"\x30\x00" + b"\xff\x00"])
def test_garbage_certificates_are_ek_untrusted(blob: bytes) -> None:
    _ek_untrusted(blob, require_testdata() / "ek/stm/ca")


def test_swtpm_ek_kat_with_private_ca(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(kat.EK_CA_CERT_PEM)
    when = datetime.datetime(2027, 6, 1, tzinfo=datetime.UTC)
    for pub, cert in ((kat.EK_RSA_PUBLIC, kat.EK_RSA_CERT), (kat.EK_P384_PUBLIC, kat.EK_P384_CERT)):
        info = verify_ek_chain(cert, tmp_path, when)
        ek_matches_cert(pub, info.certificate)
        assert ek_fingerprint(pub) == info.fingerprint
    rsa_cert = load_ek_cert(kat.EK_RSA_CERT)
    for bad in (kat.EK_P384_PUBLIC, kat.EK_RSA_PUBLIC[:-1],
                kat.EK_RSA_PUBLIC[:6] + bytes([kat.EK_RSA_PUBLIC[6] ^ 0x40])
                + kat.EK_RSA_PUBLIC[7:]):  # userWithAuth toggled: not the template
        with pytest.raises(AttestgateError) as e:
            ek_matches_cert(bad, rsa_cert)
        assert e.value.code is ErrorCode.EK_MISMATCH


def test_our_reader_reads_what_cryptography_reads_on_every_der_testdata_cert() -> None:
    """Names (RFC 4514 display), serial and validity equal cryptography's, cert by cert."""
    import re  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    root = require_testdata()
    seen = 0
    for path in sorted((root / "ek").rglob("*")):
        if path.suffix not in {".pem", ".crt", ".cer", ".der"}:
            continue
        data = path.read_bytes()
        blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END", data, re.S)
        for der in [base64.b64decode(b) for b in blocks] if blocks else [trim_der(data)]:
            ours = load_ek_cert(der)
            assert ours.der == der and der.endswith(ours.signature)
            if "nuvoton" in path.parts:
                continue
            theirs = x509.load_der_x509_certificate(der)
            with warnings.catch_warnings():  # over-long Google CA names
                warnings.simplefilter("ignore", UserWarning)
                names = (theirs.subject.rfc4514_string(), theirs.issuer.rfc4514_string())
            assert (ours.subject.rfc4514(), ours.issuer.rfc4514()) == names
            assert ours.serial == theirs.serial_number
            assert (ours.not_before, ours.not_after) == (theirs.not_valid_before_utc,
                                                         theirs.not_valid_after_utc)
            assert ours.tbs == theirs.tbs_certificate_bytes
            assert ours.public_key() == theirs.public_key()
            seen += 1
    assert seen >= 20
