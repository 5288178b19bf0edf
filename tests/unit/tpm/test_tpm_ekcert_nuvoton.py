"""EK certificates in Nuvoton's non-DER encoding (an unsorted multi-valued RDN), verified
over their original TBS bytes through the attestor's own EK check, and the refusals."""

from __future__ import annotations

import datetime
from pathlib import Path

import der_builders as d
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.attestor.enroll import EnrollSettings, Evidence, check_ek
from shared.config import EnrollPolicy
from shared.errors import AttestgateError, ErrorCode
from shared.tpm.ekcert import EkCaStore, ek_fingerprint, load_ek_cert, verify_ek_chain
from shared.tpm.templates import EK_TEMPLATES, ek_public_from_key

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
CA_NAME = d.nuvoton_style_name("Test TPM Root CA 2110")


def _template(name: str):  # type: ignore[no-untyped-def]
    return next(t for t in EK_TEMPLATES if t.name == name)


class Vendor:
    """A test CA in Nuvoton's encoding, and EKs it certifies."""

    def __init__(self, tmp: Path, name: bytes = CA_NAME) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = name
        self.ca_der = d.sign_cert(d.ca_spec(name, self.key), self.key)
        self.dir = tmp / "ca"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "root.der").write_bytes(self.ca_der)

    def ek(self, template: str = "EK-ECC256", **kw: object) -> tuple[bytes, bytes]:
        """(EK TPM2B_PUBLIC, EK certificate) for a fresh key under ``template``."""
        t = _template(template)
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if t.rsa_bits:
            key = rsa.generate_private_key(65537, t.rsa_bits)
        else:
            key = ec.generate_private_key({3: ec.SECP256R1(), 4: ec.SECP384R1()}[t.curve])
        cert = d.sign_cert(d.ek_spec(self.name, key.public_key(), **kw), self.key)
        return ek_public_from_key(key.public_key(), t).marshal(), cert


def _evidence(ek_public: bytes, ek_cert: bytes) -> Evidence:
    return Evidence(name="nuvo", ek_public=ek_public, ek_cert=ek_cert, ak_public=b"",
                    srk_public=b"", srk_attest=b"", srk_signature=b"", post_public=b"",
                    post_attest=b"", post_signature=b"", quote_attest=b"",
                    quote_signature=b"", pcrs={})


def _settings(ca_dir: Path) -> EnrollSettings:
    return EnrollSettings.load(EnrollPolicy.REQUIRE_EK_CERT, ca_dir, None, "sha256:0")


def _refused(ek_public: bytes, cert: bytes, ca_dir: Path,
             code: ErrorCode = ErrorCode.EK_UNTRUSTED) -> None:
    with pytest.raises(AttestgateError) as e:
        check_ek(_evidence(ek_public, cert), _settings(ca_dir), NOW.timestamp())
    assert e.value.code is code


@pytest.fixture
def vendor(tmp_path: Path) -> Vendor:
    return Vendor(tmp_path)


def test_the_test_ca_is_really_not_der(vendor: Vendor) -> None:
    _, cert = vendor.ek()
    for blob in (vendor.ca_der, cert):
        with pytest.raises(ValueError):
            x509.load_der_x509_certificate(blob)
    # The RDN's attributes are written CN, O, C: not in DER's sorted order.
    parsed = load_ek_cert(vendor.ca_der)
    assert [oid for oid, _ in parsed.subject.rdns[0]] == [d.CN, d.ORG, d.C]
    # Sorted by encoding (DER's SET OF order) they would be C, CN, O.
    assert [atv[6] for atv in parsed.subject.canonical[0]] == [6, 3, 10]
    assert parsed.subject.rfc4514() == (
        "CN=Test TPM Root CA 2110+O=Test TPM Vendor Corporation+C=TW")


@pytest.mark.parametrize("template", ["EK-ECC256", "EK-RSA2048", "EK-HIGH-ECC384"])
def test_quirky_ek_certificate_enrolls_under_require_ek_cert(vendor: Vendor,
                                                             template: str) -> None:
    ek_public, cert = vendor.ek(template)
    assert check_ek(_evidence(ek_public, cert), _settings(vendor.dir),
                    NOW.timestamp()) == ek_fingerprint(ek_public)
    info = verify_ek_chain(cert, vendor.dir, NOW)
    assert [c.der for c in info.chain] == [cert, vendor.ca_der]
    assert info.fingerprint == ek_fingerprint(ek_public)


def test_nv_padding_after_a_quirky_certificate_is_accepted(vendor: Vendor) -> None:
    ek_public, cert = vendor.ek()
    check_ek(_evidence(ek_public, cert + b"\xff" * 300), _settings(vendor.dir),
             NOW.timestamp())


def test_names_match_by_their_canonical_form(vendor: Vendor) -> None:
    """The leaf names its issuer's RDN attributes in another order: the same name."""
    reordered = d.seq(d.set_of(d.atv(d.C, "TW"), d.atv(d.CN, "Test TPM Root CA 2110"),
                               d.atv(d.ORG, "Test TPM Vendor Corporation")))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = d.sign_cert(d.ek_spec(reordered, key.public_key()), vendor.key)
    ek_public = ek_public_from_key(key.public_key(), _template("EK-ECC256")).marshal()
    check_ek(_evidence(ek_public, cert), _settings(vendor.dir), NOW.timestamp())
    # Splitting the RDN into three RDNs is another name.
    split = d.seq(d.set_of(d.atv(d.CN, "Test TPM Root CA 2110")),
                  d.set_of(d.atv(d.ORG, "Test TPM Vendor Corporation")),
                  d.set_of(d.atv(d.C, "TW")))
    cert = d.sign_cert(d.ek_spec(split, key.public_key()), vendor.key)
    _refused(ek_public, cert, vendor.dir)


def test_tampered_tbs_is_refused(vendor: Vendor) -> None:
    ek_public, cert = vendor.ek()
    parsed = load_ek_cert(cert)
    at = cert.index(parsed.tbs) + parsed.tbs.index(d.integer(0x3F932F9D993C16BB)) + 4
    tampered = cert[:at] + bytes([cert[at] ^ 0x01]) + cert[at + 1 :]
    load_ek_cert(tampered)  # still parses: only the signature check catches it
    _refused(ek_public, tampered, vendor.dir)


def test_wrong_issuer_is_refused(tmp_path: Path, vendor: Vendor) -> None:
    # Same name, another key: a look-alike CA in the trust directory does not help.
    (tmp_path / "other").mkdir()
    impostor = Vendor(tmp_path / "other")
    ek_public, cert = impostor.ek()
    _refused(ek_public, cert, vendor.dir)
    # Another name, signed by the trusted key: no issuer by that name.
    key = ec.generate_private_key(ec.SECP256R1())
    other = d.sign_cert(d.ek_spec(d.nuvoton_style_name("Someone Else"), key.public_key()),
                        vendor.key)
    _refused(ek_public_from_key(key.public_key(), _template("EK-ECC256")).marshal(), other,
             vendor.dir)


def test_expired_or_not_yet_valid_is_refused(vendor: Vendor) -> None:
    old = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
    ek_public, cert = vendor.ek(not_after=old)
    _refused(ek_public, cert, vendor.dir)
    ek_public, cert = vendor.ek(not_before=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    _refused(ek_public, cert, vendor.dir)
    # An expired root fails the whole chain.
    ek_public, cert = vendor.ek()
    (vendor.dir / "root.der").write_bytes(
        d.sign_cert(d.ca_spec(vendor.name, vendor.key, not_after=old), vendor.key))
    _refused(ek_public, cert, vendor.dir)


def test_issuer_that_is_not_a_ca_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for exts in ([d.key_usage(5), d.basic_constraints(False)],  # cA false
                 [d.key_usage(5)],  # no basicConstraints
                 [d.key_usage(4), d.basic_constraints(True)],  # no keyCertSign
                 [d.basic_constraints(True)],  # no keyUsage
                 [d.key_usage(5), d.basic_constraints(True),
                  d.extension("2.5.29.37", d.seq(d.oid("1.3.6.1.5.5.7.3.3")))],  # codeSigning
                 [d.key_usage(5), d.basic_constraints(True),
                  d.extension("1.2.3.4", d.octets(b""), critical=True)]):  # unknown critical
        spec = d.ca_spec(CA_NAME, key)
        spec.extensions = exts
        ca_dir = tmp_path / f"ca{len(list(tmp_path.iterdir()))}"
        ca_dir.mkdir()
        (ca_dir / "root.der").write_bytes(d.sign_cert(spec, key))
        ek_key = ec.generate_private_key(ec.SECP256R1())
        cert = d.sign_cert(d.ek_spec(CA_NAME, ek_key.public_key()), key)
        _refused(ek_public_from_key(ek_key.public_key(), _template("EK-ECC256")).marshal(),
                 cert, ca_dir)


def test_path_length_zero_root_refuses_an_intermediate(vendor: Vendor) -> None:
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter_name = d.nuvoton_style_name("Test TPM Intermediate CA 01")
    spec = d.ca_spec(inter_name, inter_key)
    spec.issuer = vendor.name
    (vendor.dir / "inter.der").write_bytes(d.sign_cert(spec, vendor.key))
    ek_key = ec.generate_private_key(ec.SECP256R1())
    cert = d.sign_cert(d.ek_spec(inter_name, ek_key.public_key()), inter_key)
    ek_public = ek_public_from_key(ek_key.public_key(), _template("EK-ECC256")).marshal()
    _refused(ek_public, cert, vendor.dir)  # the root says pathLen 0
    root = d.ca_spec(vendor.name, vendor.key)
    root.extensions[1] = d.basic_constraints(True, 1)
    (vendor.dir / "root.der").write_bytes(d.sign_cert(root, vendor.key))
    info = verify_ek_chain(cert, vendor.dir, NOW)
    assert len(info.chain) == 3


def test_ek_public_must_match_the_quirky_certificate(vendor: Vendor) -> None:
    _, cert = vendor.ek()
    other_public, _ = vendor.ek()
    _refused(other_public, cert, vendor.dir, ErrorCode.EK_MISMATCH)


def _encoding_faults(cert: bytes) -> dict[str, bytes]:
    """Broken encodings of ``cert``, each with every other length still consistent."""
    assert cert[0] == 0x30 and cert[1] == 0x82 and cert[4] == 0x30 and cert[5] == 0x82
    tbs_len = int.from_bytes(cert[6:8], "big")
    tbs_body, rest = cert[8 : 8 + tbs_len], cert[8 + tbs_len :]
    assert tbs_body[:2] == b"\xa0\x03"  # version [0] with a short length

    def wrap(tbs: bytes) -> bytes:
        return d.tlv(0x30, tbs + rest)

    return {
        "trailing bytes": cert + b"\x30\x00",
        "trailing junk after padding": cert + b"\xff\xff\x01",
        "indefinite outer length": b"\x30\x80" + cert[4:] + b"\x00\x00",
        "indefinite tbs length": wrap(b"\x30\x80" + tbs_body + b"\x00\x00"),
        "overlong outer length": b"\x30\x83\x00" + cert[2:],
        "overlong tbs length": wrap(b"\x30\x83\x00" + cert[6:8] + tbs_body),
        "long form for a short length": wrap(d.tlv(0x30, b"\xa0\x81\x03" + tbs_body[2:])),
        "five length octets": b"\x30\x85\x00\x00" + cert[2:4] + cert[4:],
        "constructed where primitive": wrap(d.tlv(0x30, b"\xa0\x03\x22" + tbs_body[3:])),
        "high tag number": wrap(d.tlv(0x30, b"\xbf\x03" + tbs_body[2:])),
        "truncated": cert[:-1],
        "truncated header": cert[:3],
        "empty": b"",
        "tbs length past the end": cert[:4] + b"\x30\x82\xff\xff" + cert[8:],
    }


@pytest.mark.parametrize("fault", sorted(_encoding_faults(
    b"\x30\x82\x00\x0b\x30\x82\x00\x05\xa0\x03\x02\x01\x02")))
def test_broken_encodings_are_refused_with_our_code(vendor: Vendor, fault: str) -> None:
    ek_public, cert = vendor.ek()
    bad = _encoding_faults(cert)[fault]
    with pytest.raises(AttestgateError) as e:
        load_ek_cert(bad)
    assert e.value.code is ErrorCode.EK_UNTRUSTED
    _refused(ek_public, bad, vendor.dir)


def test_oversized_certificate_is_too_large(vendor: Vendor) -> None:
    ek_public, cert = vendor.ek()
    _refused(ek_public, cert + b"\xff" * (1 << 17), vendor.dir, ErrorCode.TOO_LARGE)


def test_ca_dir_with_a_broken_file_still_loads_the_rest(vendor: Vendor) -> None:
    (vendor.dir / "junk.der").write_bytes(b"\x30\x80\x00\x00")
    (vendor.dir / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n!!\n"
                                          b"-----END CERTIFICATE-----\n")
    store = EkCaStore.from_dir(vendor.dir)
    assert [r.der for r in store.roots] == [vendor.ca_der]
    assert sorted(store.skipped) == ["junk.der", "junk.pem"]


def _previous_verdict(leaf: bytes, root: bytes, inter: bytes | None) -> bool:
    """The chain rules as they were (cryptography's verifier, WebPKI CA profile with the
    TCG EKU and certificatePolicies relaxations), as an oracle for DER chains."""
    from cryptography.x509.verification import (  # noqa: PLC0415
        Criticality,
        ExtensionPolicy,
        PolicyBuilder,
        Store,
        VerificationError,
    )

    def ca_eku(_p: object, _c: object, eku: x509.ExtendedKeyUsage | None) -> None:
        allowed = {x509.ObjectIdentifier("2.23.133.8.1"),
                   x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
        if eku is not None and not allowed & set(eku):
            raise ValueError("CA EKU")

    ca_policy = (ExtensionPolicy.webpki_defaults_ca()
                 .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, ca_eku)
                 .may_be_present(x509.CertificatePolicies, Criticality.AGNOSTIC, None))
    try:
        certs = [x509.load_der_x509_certificate(c) for c in (leaf, root, inter) if c]
        verifier = (PolicyBuilder().store(Store([certs[1]])).time(NOW)
                    .extension_policies(ca_policy=ca_policy,
                                        ee_policy=ExtensionPolicy.permit_all())
                    .build_client_verifier())
        verifier.verify(certs[0], certs[2:])
    except (ValueError, VerificationError):
        return False
    return True


def test_our_rules_agree_with_the_previous_verifier_on_der_chains(tmp_path: Path) -> None:
    """On DER chains our verdicts equal cryptography's client verifier with the relaxations
    the previous code applied (the rules we mirror): a valid chain, and each rule broken."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    weak = rsa.generate_private_key(65537, 1024)
    rsa_key = rsa.generate_private_key(65537, 2048)
    root_name, inter_name = d.plain_name("Test DER Root"), d.plain_name("Test DER Inter")
    ek_key = ec.generate_private_key(ec.SECP256R1())
    ku, bc = d.key_usage(5), d.basic_constraints(True)
    eku = d.extension  # shorthand below
    when = {"gen_2030": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)}
    cases: dict[str, dict[str, object]] = {
        "valid": {},
        "valid RSA root": {"root_key": rsa_key},
        "valid with intermediate": {"inter": True, "root_exts": [ku, d.basic_constraints(True, 1)]},
        "root pathLen 0 over an intermediate": {"inter": True},
        "no keyUsage": {"root_exts": [bc]},
        "keyUsage without keyCertSign": {"root_exts": [d.key_usage(6), bc]},
        "basicConstraints not critical": {
            "root_exts": [ku, d.extension("2.5.29.19", d.seq(d.boolean(True)))]},
        "basicConstraints cA false": {"root_exts": [ku, d.basic_constraints(False)]},
        "CA EKU tcg-kp-EKCertificate": {
            "root_exts": [ku, bc, eku("2.5.29.37", d.seq(d.oid("2.23.133.8.1")))]},
        "CA EKU codeSigning only": {
            "root_exts": [ku, bc, eku("2.5.29.37", d.seq(d.oid("1.3.6.1.5.5.7.3.3")))]},
        "CA certificatePolicies critical": {
            "root_exts": [ku, bc, eku("2.5.29.32", d.seq(d.seq(d.oid("2.5.29.32.0"))),
                                      critical=True)]},
        "CA unknown critical extension": {
            "root_exts": [ku, bc, eku("1.2.3.4", d.octets(b""), critical=True)]},
        "CA unknown non-critical extension": {
            "root_exts": [ku, bc, eku("1.2.3.4", d.octets(b""))]},
        "CA AKI critical": {
            "root_exts": [ku, bc, eku("2.5.29.35", d.seq(d.tlv(0x80, b"\x11" * 20)),
                                      critical=True)]},
        "CA AKI with issuer and serial": {
            "root_exts": [ku, bc, eku("2.5.29.35", d.seq(d.tlv(0x80, b"\x11" * 20),
                                                         d.tlv(0xA1, d.tlv(0xA4, root_name)),
                                                         d.tlv(0x82, b"\x01")))]},
        "CA AKI without keyIdentifier": {
            "root_exts": [ku, bc, eku("2.5.29.35", d.seq(d.tlv(0x82, b"\x01")))]},
        "RSA-1024 root": {"root_key": weak},
        "leaf expired": {"leaf": {"not_after": datetime.datetime(2022, 1, 1,
                                                                  tzinfo=datetime.UTC)}},
        "leaf not yet valid": {"leaf": {"not_before": when["gen_2030"]}},
        "root expired": {"root": {"not_after": datetime.datetime(2022, 1, 1,
                                                                  tzinfo=datetime.UTC)}},
        "leaf v1": {"leaf": {"version": 0}, "leaf_exts": []},
        "leaf serial 21 octets": {"leaf": {"serial": 1 << 160}},
        "leaf serial 22 octets": {"leaf": {"serial": 1 << 168}},
        "leaf with unknown critical extension": {
            "leaf_exts": [eku("1.2.3.4", d.octets(b""), critical=True)]},
        "leaf with malformed keyUsage": {"leaf_exts": [eku("2.5.29.15", b"\x03\x01\x07")]},
        "CA with malformed keyUsage": {"root_exts": [bc, eku("2.5.29.15", b"\x03\x01\x07")]},
    }
    for label, case in cases.items():
        root_key = case.get("root_key", ec_key)
        assert isinstance(root_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        root_spec = d.ca_spec(root_name, root_key, **case.get("root", {}))  # type: ignore[arg-type]
        if "root_exts" in case:
            root_spec.extensions = list(case["root_exts"])  # type: ignore[call-overload]
        root = d.sign_cert(root_spec, root_key)
        signer, issuer_name, inter = root_key, root_name, None
        if case.get("inter"):
            inter_spec = d.ca_spec(inter_name, ec_key)
            inter_spec.issuer = root_name
            inter = d.sign_cert(inter_spec, root_key)
            signer, issuer_name = ec_key, inter_name
        leaf_spec = d.ek_spec(issuer_name, ek_key.public_key(),
                              **case.get("leaf", {}))  # type: ignore[arg-type]
        if "leaf_exts" in case:
            leaf_spec.extensions = list(case["leaf_exts"])  # type: ignore[call-overload]
        leaf = d.sign_cert(leaf_spec, signer)
        ca_dir = tmp_path / label.replace(" ", "_")
        ca_dir.mkdir()
        (ca_dir / "root.der").write_bytes(root)
        if inter:
            (ca_dir / "inter.der").write_bytes(inter)
        try:
            verify_ek_chain(leaf, ca_dir, NOW)
            ours = True
        except AttestgateError as exc:
            assert exc.code is ErrorCode.EK_UNTRUSTED
            ours = False
        assert (label, ours) == (label, _previous_verdict(leaf, root, inter))
        assert ours is (label.startswith("valid") or label in {
            "CA EKU tcg-kp-EKCertificate", "CA certificatePolicies critical",
            "CA unknown non-critical extension", "leaf serial 21 octets",
            "CA AKI with issuer and serial", "leaf with malformed keyUsage"}), label


def test_admin_view_shows_a_quirky_certificate(vendor: Vendor) -> None:
    from services.registry.admin_output import ek_cert_view  # noqa: PLC0415

    _, cert = vendor.ek()
    view = ek_cert_view(cert + b"\xff" * 16)
    assert view == {"subject": "",
                    "issuer": "CN=Test TPM Root CA 2110+O=Test TPM Vendor Corporation+C=TW",
                    "serial": "3f932f9d993c16bb", "not_after": "2045-01-01T00:00:00+00:00"}
