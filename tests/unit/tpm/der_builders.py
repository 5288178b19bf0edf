"""Hand-built X.509 certificates, byte by byte, for encodings cryptography will not write.

Nuvoton's EK certificates put CN, O and C into one RDN in that (unsorted) order; DER
sorts a SET OF by encoding, so cryptography can neither build nor load such a
certificate. These helpers write the TBSCertificate by hand, sign it with a test CA key
(cryptography does the signing) and wrap it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + length(len(body)) + body


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    """A SET OF in the order given (not sorted: that is the point)."""
    return tlv(0x31, b"".join(parts))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def integer(n: int) -> bytes:
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return tlv(0x02, raw)


def printable(s: str) -> bytes:
    return tlv(0x13, s.encode())


def utf8(s: str) -> bytes:
    return tlv(0x0C, s.encode())


def time(t: datetime.datetime) -> bytes:
    if 1950 <= t.year < 2050:
        return tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def boolean(v: bool) -> bytes:
    return tlv(0x01, b"\xff" if v else b"\x00")


def octets(b: bytes) -> bytes:
    return tlv(0x04, b)


def bits(b: bytes, unused: int = 0) -> bytes:
    return tlv(0x03, bytes([unused]) + b)


CN, ORG, C = "2.5.4.3", "2.5.4.10", "2.5.4.6"


def atv(kind: str, value: str) -> bytes:
    return seq(oid(kind), printable(value))


def nuvoton_style_name(cn: str, org: str = "Test TPM Vendor Corporation",
                       country: str = "TW") -> bytes:
    """One RDN holding CN, O and C in that order: unsorted, as Nuvoton writes them."""
    return seq(set_of(atv(CN, cn), atv(ORG, org), atv(C, country)))


def plain_name(cn: str) -> bytes:
    return seq(set_of(atv(C, "TW")), set_of(atv(ORG, "Test TPM Vendor Corporation")),
               set_of(atv(CN, cn)))


def extension(ext_oid: str, value: bytes, critical: bool = False) -> bytes:
    return seq(oid(ext_oid), *( [boolean(True)] if critical else []), octets(value))


def basic_constraints(ca: bool, path: int | None = None) -> bytes:
    body = (boolean(True) if ca else b"") + (integer(path) if path is not None else b"")
    return extension("2.5.29.19", seq(body) if body else seq(), critical=True)


def key_usage(bit: int, critical: bool = True) -> bytes:
    """keyUsage with one bit set (5 = keyCertSign, 2 = keyEncipherment, 4 = keyAgreement)."""
    byte = 0x80 >> bit
    unused = (byte & -byte).bit_length() - 1
    return extension("2.5.29.15", bits(bytes([byte]), unused), critical=critical)


def tpm_san() -> bytes:
    """A critical SAN with a directoryName of TPM manufacturer, model and version."""
    dir_name = seq(set_of(*sorted([seq(oid("2.23.133.2.1"), utf8("id:4E544300")),
                                   seq(oid("2.23.133.2.2"), utf8("NPCT75x")),
                                   seq(oid("2.23.133.2.3"), utf8("id:00070002"))])))
    return extension("2.5.29.17", seq(tlv(0xA4, dir_name)), critical=True)


def ek_eku() -> bytes:
    return extension("2.5.29.37", seq(oid("2.23.133.8.1")))


SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"))
RSA_SHA256 = seq(oid("1.2.840.113549.1.1.11"), tlv(0x05, b""))


@dataclass
class CertSpec:
    """Everything that goes into a hand-built certificate; change a field to break one rule."""

    issuer: bytes
    subject: bytes
    spki: bytes
    not_before: datetime.datetime = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    not_after: datetime.datetime = datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC)
    serial: int = 0x3F932F9D993C16BB
    extensions: list[bytes] = field(default_factory=list)
    version: int = 2


def spki_of(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def tbs_of(spec: CertSpec, alg: bytes) -> bytes:
    version = tlv(0xA0, integer(spec.version)) if spec.version else b""
    exts = tlv(0xA3, seq(*spec.extensions)) if spec.extensions else b""
    return seq(version, integer(spec.serial), alg, spec.issuer,
               seq(time(spec.not_before), time(spec.not_after)), spec.subject, spec.spki, exts)


def sign_cert(spec: CertSpec, key: SigningKey) -> bytes:
    """The certificate for ``spec``, signed by ``key`` over the hand-built TBS bytes."""
    alg = ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else RSA_SHA256
    tbs = tbs_of(spec, alg)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    else:
        sig = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return seq(tbs, alg, bits(sig))


def ca_spec(name: bytes, key: SigningKey, **kw: object) -> CertSpec:
    exts = [key_usage(5), basic_constraints(True, 0),
            extension("2.5.29.14", octets(b"\x11" * 20))]
    return CertSpec(issuer=name, subject=name, spki=spki_of(key.public_key()),
                    extensions=exts, **kw)  # type: ignore[arg-type]


def ek_spec(issuer: bytes, ek_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
            **kw: object) -> CertSpec:
    usage = 2 if isinstance(ek_key, rsa.RSAPublicKey) else 4
    exts = [key_usage(usage), tpm_san(), ek_eku(), basic_constraints(False)]
    return CertSpec(issuer=issuer, subject=seq(), spki=spki_of(ek_key), extensions=exts,
                    **kw)  # type: ignore[arg-type]
