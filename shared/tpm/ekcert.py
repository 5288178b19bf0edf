"""EK certificates: chain to a CA directory, match against the EK public, allowlist.

Chain verification uses cryptography's RFC 5280 path builder with the WebPKI CA rules,
relaxed in exactly two ways that real TPM CA certificates need (measured on the
Google, Infineon and STM chains in the handout test data):

* CA certificates carry an extendedKeyUsage of tcg-kp-EKCertificate (2.23.133.8.1)
  rather than clientAuth; WebPKI refuses that. We accept a CA EKU that contains
  tcg-kp-EKCertificate or anyExtendedKeyUsage and refuse any other, so a CA restricted
  to, say, code signing still cannot vouch for an EK.
* STM intermediates mark certificatePolicies critical; WebPKI refuses unknown critical
  extensions. The policies are informational for us, so they are permitted.

basicConstraints (CA:true, path length), keyUsage keyCertSign, validity at ``now``,
signature algorithms and key sizes keep the WebPKI rules. The EK leaf itself is checked
with ``permit_all`` extensions: EK certs have no clientAuth EKU, often a critical SAN
of TPM attributes, and sometimes no subject.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.marshal import check_size
from shared.tpm.structures import parse_public, to_crypto_key
from shared.tpm.templates import EK_TEMPLATES, ek_public_from_key

log = logging.getLogger(__name__)

TCG_KP_EK_CERTIFICATE: Final = x509.ObjectIdentifier("2.23.133.8.1")
# A CA file larger than this is not a certificate; it is skipped unread.
_MAX_CA_FILE: Final = 64 * 1024
_PEM_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class EkCaStore:
    """Trust anchors (self-signed) and intermediates loaded from a CA directory.

    ``skipped`` names the files that could not be used (not a certificate, or a
    certificate cryptography refuses, such as Nuvoton's non-DER roots).
    """

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    skipped: tuple[str, ...] = ()

    @classmethod
    def from_dir(cls, ca_dir: Path) -> EkCaStore:
        """Load every PEM or DER certificate in ``ca_dir`` (not recursive)."""
        roots: list[x509.Certificate] = []
        inters: list[x509.Certificate] = []
        skipped: list[str] = []
        for path in sorted(p for p in ca_dir.iterdir() if p.is_file()):
            if path.stat().st_size > _MAX_CA_FILE:
                skipped.append(path.name)
                continue
            certs = _load_ca_file(path.read_bytes())
            if not certs:
                skipped.append(path.name)
            for cert in certs:
                (roots if _self_signed(cert) else inters).append(cert)
        if skipped:
            log.info("ek ca dir %s: skipped %s", ca_dir, ", ".join(skipped))
        return cls(tuple(roots), tuple(inters), tuple(skipped))


def _load_ca_file(data: bytes) -> list[x509.Certificate]:
    try:
        if _PEM_BEGIN in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(trim_der(data))]
    except (ValueError, AttestgateError, x509.InvalidVersion):
        return []


def _self_signed(cert: x509.Certificate) -> bool:
    # verify_directly_issued_by compares the names in Rust; reading them from Python
    # would trigger cryptography's UserWarning on the over-long Google CA names.
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class EkCertInfo:
    """A verified EK certificate: the leaf, its chain up to the trust anchor, its key."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, trust anchor last
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    fingerprint: str  # ek_fingerprint form: SHA-256 of the SubjectPublicKeyInfo, hex


def trim_der(data: bytes) -> bytes:
    """Cut a DER certificate read from NV down to its outer SEQUENCE.

    NV indices are often larger than the certificate and padded with 0xFF (or 0x00);
    only such padding may follow. Raises EK_UNTRUSTED otherwise.
    """
    code = ErrorCode.EK_UNTRUSTED
    if len(data) < 2 or data[0] != 0x30:
        raise AttestgateError(code, "not a DER SEQUENCE")
    first = data[1]
    if first < 0x80:
        header, length = 2, first
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or len(data) < 2 + n:
            raise AttestgateError(code, "bad DER length")
        header, length = 2 + n, int.from_bytes(data[2 : 2 + n], "big")
    end = header + length
    if end > len(data):
        raise AttestgateError(code, "DER truncated")
    padding = data[end:]
    if padding.strip(b"\xff") and padding.strip(b"\x00"):
        raise AttestgateError(code, "trailing bytes after the certificate")
    return data[:end]


def _ca_eku(_policy: Policy, _cert: x509.Certificate,
            eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and not ({TCG_KP_EK_CERTIFICATE, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                & set(eku)):
        raise ValueError("CA extendedKeyUsage excludes EK certificates")


def _ca_policy() -> ExtensionPolicy:
    return (ExtensionPolicy.webpki_defaults_ca()
            .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ca_eku)
            .may_be_present(x509.CertificatePolicies, Criticality.AGNOSTIC, None))


def load_ek_cert(cert_der: bytes) -> x509.Certificate:
    """Parse an EK certificate as read from NV (DER, NV padding allowed).

    Raises TOO_LARGE, or EK_UNTRUSTED for anything cryptography cannot parse,
    its public key included.
    """
    check_size(cert_der, "ek certificate")
    try:
        cert = x509.load_der_x509_certificate(trim_der(bytes(cert_der)))
        # cryptography parses lazily: load the key now, so that a certificate handed on
        # never raises ValueError later (a point off the curve, a malformed modulus).
        cert.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise AttestgateError(ErrorCode.EK_UNTRUSTED, f"ek certificate: {exc}") from None
    return cert


def verify_ek_chain(cert_der: bytes, ca_dir: Path | EkCaStore, now: datetime) -> EkCertInfo:
    """Verify that the EK certificate chains to a root in ``ca_dir`` and is valid at ``now``.

    ``ca_dir`` is a directory of PEM/DER CA certificates (self-signed ones are trust
    anchors, the others candidate intermediates) or an :class:`EkCaStore` loaded once
    from it. ``now`` must be timezone-aware. Raises TOO_LARGE, or EK_UNTRUSTED for an
    unparsable certificate, an unknown issuer, a broken or expired chain, or an EK key
    that is neither RSA nor ECC.
    """
    code = ErrorCode.EK_UNTRUSTED
    store = ca_dir if isinstance(ca_dir, EkCaStore) else EkCaStore.from_dir(ca_dir)
    leaf = load_ek_cert(cert_der)
    if not store.roots:
        raise AttestgateError(code, "no trust anchor in the EK CA directory")
    verifier = (PolicyBuilder().store(Store(list(store.roots))).time(now)
                .extension_policies(ca_policy=_ca_policy(), ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier())
    try:
        verified = verifier.verify(leaf, list(store.intermediates))
    # cryptography parses the leaf's names and extensions only now: a malformed one
    # raises ValueError or TypeError rather than VerificationError.
    except (VerificationError, ValueError, TypeError) as exc:
        raise AttestgateError(code, f"ek chain: {exc}") from None
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise AttestgateError(code, "ek key is neither RSA nor ECC")
    return EkCertInfo(leaf, tuple(verified.chain), key, _spki_fingerprint(key))


def _spki_fingerprint(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def ek_fingerprint(ek_public_bytes: bytes) -> str:
    """SHA-256 (lowercase hex) of the EK's SubjectPublicKeyInfo DER.

    The same value comes from the EK certificate (``EkCertInfo.fingerprint``) or from
    ``openssl pkey -pubin -outform DER | sha256sum`` on the EK public key, which is how
    an operator fills the allowlist. Raises EK_MISMATCH for a malformed EK public.
    """
    pub = parse_public(ek_public_bytes, code=ErrorCode.EK_MISMATCH)
    return _spki_fingerprint(to_crypto_key(pub, code=ErrorCode.EK_MISMATCH))


def check_ek_allowlist(ek_public_bytes: bytes, allowlist: Collection[str]) -> str:
    """Return the EK fingerprint if it is in ``allowlist`` (hex, any case), else EK_UNTRUSTED."""
    fpr = ek_fingerprint(ek_public_bytes)
    if fpr not in {a.strip().lower() for a in allowlist}:
        raise AttestgateError(ErrorCode.EK_UNTRUSTED, f"ek {fpr} not in the allowlist")
    return fpr


def ek_matches_cert(ek_public_bytes: bytes, cert: x509.Certificate) -> None:
    """Check that the EK public sent by the client is the certified key under a TCG template.

    The bytes must equal the TPM2B_PUBLIC a TPM creates from one of the TCG EK
    templates with the certificate's key, so the nameAlg, symmetric algorithm,
    attributes and policy are those MakeCredential needs. Raises EK_MISMATCH.
    """
    check_size(ek_public_bytes, "ek public")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise AttestgateError(ErrorCode.EK_MISMATCH, "ek certificate key is neither RSA nor ECC")
    for template in EK_TEMPLATES:
        try:
            expected = ek_public_from_key(key, template).marshal()
        except AttestgateError:
            continue  # another key type or size
        if hmac.compare_digest(expected, bytes(ek_public_bytes)):
            return
    raise AttestgateError(ErrorCode.EK_MISMATCH, "ek public is not the certified key")
