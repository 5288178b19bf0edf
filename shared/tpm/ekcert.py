"""EK certificates: chain to a CA directory, match against the EK public, allowlist.

Certificates are read with our own strict DER reader and verified over their original
TBS bytes (``shared/tpm/x509cert.py``; its docstring says why not cryptography's path
builder or an ASN.1 library): Nuvoton's EK certificates and roots are not DER (a
multi-valued RDN in unsorted SET OF order) and python-cryptography refuses to load them.
One path verifies every vendor's certificates.

The chain rules are cryptography's client-verifier rules with the WebPKI CA profile,
relaxed in exactly the two ways real TPM CA certificates need (measured on the Google,
Infineon, STM and Nuvoton certificates in the handout test data):

* CA certificates carry an extendedKeyUsage of tcg-kp-EKCertificate (2.23.133.8.1)
  rather than clientAuth; WebPKI refuses that. We accept a CA EKU that contains
  tcg-kp-EKCertificate or anyExtendedKeyUsage and refuse any other, so a CA restricted
  to, say, code signing still cannot vouch for an EK.
* STM intermediates mark certificatePolicies critical; WebPKI refuses unknown critical
  extensions. The policies are informational for us, so they are permitted.

basicConstraints (critical, CA:true, path length), keyUsage keyCertSign, validity at
``now``, signature algorithms and key sizes keep the WebPKI rules. The EK leaf itself
gets no extension rules: EK certs have no clientAuth EKU, often a critical SAN of TPM
attributes, and sometimes no subject.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.marshal import check_size
from shared.tpm.structures import parse_public, to_crypto_key
from shared.tpm.templates import EK_TEMPLATES, ek_public_from_key
from shared.tpm.x509cert import (
    OID_TCG_KP_EK_CERTIFICATE,
    Certificate,
    build_path,
    is_self_signed,
    parse_certificate,
)

log = logging.getLogger(__name__)

TCG_KP_EK_CERTIFICATE: Final = x509.ObjectIdentifier(OID_TCG_KP_EK_CERTIFICATE)
# A CA file larger than this is not a certificate; it is skipped unread.
_MAX_CA_FILE: Final = 64 * 1024
_PEM_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"
_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----")


@dataclass(frozen=True)
class EkCaStore:
    """Trust anchors (self-signed) and intermediates loaded from a CA directory.

    ``skipped`` names the files that could not be used (not a certificate, or not one
    our reader accepts).
    """

    roots: tuple[Certificate, ...]
    intermediates: tuple[Certificate, ...]
    skipped: tuple[str, ...] = ()

    @classmethod
    def from_dir(cls, ca_dir: Path) -> EkCaStore:
        """Load every PEM or DER certificate in ``ca_dir`` (not recursive)."""
        roots: list[Certificate] = []
        inters: list[Certificate] = []
        skipped: list[str] = []
        for path in sorted(p for p in ca_dir.iterdir() if p.is_file()):
            if path.stat().st_size > _MAX_CA_FILE:
                skipped.append(path.name)
                continue
            certs = _load_ca_file(path.read_bytes())
            if not certs:
                skipped.append(path.name)
            for cert in certs:
                (roots if is_self_signed(cert) else inters).append(cert)
        if skipped:
            log.info("ek ca dir %s: skipped %s", ca_dir, ", ".join(skipped))
        return cls(tuple(roots), tuple(inters), tuple(skipped))


def _load_ca_file(data: bytes) -> list[Certificate]:
    try:
        if _PEM_BEGIN in data:
            blocks = [binascii.a2b_base64(m.group(1)) for m in _PEM_BLOCK.finditer(data)]
            return [parse_certificate(b, what="ca certificate") for b in blocks]
        return [parse_certificate(trim_der(data), what="ca certificate")]
    except (binascii.Error, AttestgateError):
        return []


@dataclass(frozen=True)
class EkCertInfo:
    """A verified EK certificate: the leaf, its chain up to the trust anchor, its key."""

    certificate: Certificate
    chain: tuple[Certificate, ...]  # leaf first, trust anchor last
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


def load_ek_cert(cert_der: bytes) -> Certificate:
    """Parse an EK certificate as read from NV (DER, NV padding allowed; Nuvoton's
    unsorted multi-valued RDNs accepted).

    Raises TOO_LARGE, BAD_REQUEST (not bytes), or EK_UNTRUSTED for anything that is not
    a certificate.
    """
    check_size(cert_der, "ek certificate")
    return parse_certificate(trim_der(bytes(cert_der)), ErrorCode.EK_UNTRUSTED, "ek certificate")


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
    chain = build_path(leaf, store.roots, store.intermediates, now)
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise AttestgateError(code, "ek key is neither RSA nor ECC")
    return EkCertInfo(leaf, chain, key, _spki_fingerprint(key))


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


def ek_matches_cert(ek_public_bytes: bytes, cert: Certificate | x509.Certificate) -> None:
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
