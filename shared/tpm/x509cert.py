"""X.509 certificates read with our own DER reader, verified over their original TBS bytes.

Why our own reader and path validation rather than cryptography's or a library's:

* python-cryptography (and OpenSSL's strict mode) refuse Nuvoton's EK certificates and
  roots: their issuer and subject are one multi-valued RDN whose SET OF is written in
  unsorted order, which is not DER. cryptography cannot load them at all, so its path
  builder cannot use them either.
* asn1crypto keeps original bytes and parses BER, but has had no release since 2022 and
  is not in the project's environment; pyasn1 + pyasn1-modules is maintained but is not
  installed either, is slow (a certificate takes milliseconds), and accepts BER forms we
  do not want (indefinite lengths, non-minimal encodings), which we would have to re-check
  ourselves. Both would only replace the ~200-line reader in ``shared/tpm/asn1.py``, not
  the chain rules below, and would add a dependency the attestor must ship.
* Our reader is strict DER except for the order of a SET OF, bounded (size checked by the
  caller, depth capped, lengths at most 3 octets), raises only our own error codes, and
  keeps the exact bytes of the TBSCertificate, Names, SubjectPublicKeyInfo and
  extensions. Signatures are verified over those bytes, keys are loaded from the SPKI
  bytes with ``load_der_public_key`` (strict DER; the SPKI is DER even in Nuvoton's
  certificates), and the cryptography itself stays in python-cryptography.

The chain rules are cryptography's client-verifier rules (its ``policy/mod.rs``, WebPKI
profile) with the two relaxations TPM CAs need (see ``shared/tpm/ekcert.py``):

* every certificate: X.509 v3, outer signatureAlgorithm equal to the TBS one, serial of
  1..21 octets and not negative, non-empty issuer, validity dates in the right time type
  (UTCTime before 2050) and ``now`` inside the validity, no duplicate extension;
* every issuer (intermediates and the trust anchor): basicConstraints present, critical,
  cA true, path length not exceeded (depth counted as cryptography does: every chain
  member counts); keyUsage present with keyCertSign; AKI, SKI and AIA non-critical and
  an AKI holding a keyIdentifier (cryptography 50 checks no more of it);
  extendedKeyUsage, if any, containing tcg-kp-EKCertificate or anyExtendedKeyUsage;
  certificatePolicies and subjectAltName in any criticality; no other critical
  extension; no malformed basicConstraints, keyUsage, extendedKeyUsage or AKI.
  nameConstraints are refused (we do not apply them; failing closed), where
  cryptography would apply them;
* issuer keys: RSA (at least 2048 bits) or EC P-256/P-384/P-521, by the exact SPKI
  AlgorithmIdentifier encodings; signature algorithms: RSA PKCS#1 v1.5 or PSS (salt =
  digest length, MGF1 with the same hash) and ECDSA, each with SHA-256/384/512, by their
  exact AlgorithmIdentifier encodings;
* the leaf (the EK certificate) gets cryptography's ``permit_all`` extension policy: the
  known extensions in any criticality and undecoded, but no unknown critical one. EK
  certificates carry a critical SAN of TPM attributes and often no subject.

Issuer and subject Names match when their canonical forms are equal: the RDN sequence in
order, each RDN's attribute encodings sorted (RFC 5280 7.1 treats an RDN as a set). The
attribute values are compared as encoded, with no case folding: stricter than 5280's
caseIgnoreMatch, never looser.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key

from shared.errors import AttestgateError, ErrorCode
from shared.tpm import asn1
from shared.tpm.asn1 import DerReader, Tlv

# -- OIDs ------------------------------------------------------------------------------
OID_BASIC_CONSTRAINTS: Final = "2.5.29.19"
OID_KEY_USAGE: Final = "2.5.29.15"
OID_EXT_KEY_USAGE: Final = "2.5.29.37"
OID_SUBJECT_KEY_ID: Final = "2.5.29.14"
OID_AUTHORITY_KEY_ID: Final = "2.5.29.35"
OID_SUBJECT_ALT_NAME: Final = "2.5.29.17"
OID_NAME_CONSTRAINTS: Final = "2.5.29.30"
OID_CERT_POLICIES: Final = "2.5.29.32"
OID_AUTHORITY_INFO_ACCESS: Final = "1.3.6.1.5.5.7.1.1"
OID_ANY_EKU: Final = "2.5.29.37.0"
OID_TCG_KP_EK_CERTIFICATE: Final = "2.23.133.8.1"

_KEY_CERT_SIGN: Final = 5  # keyUsage bit number
# cryptography's DEFAULT_MAX_CHAIN_DEPTH; depth 0 is the leaf's issuer.
MAX_CHAIN_DEPTH: Final = 8
# Candidate issuers tried for one leaf; a CA directory with many same-named CAs cannot
# make one verification cost more than this many signature checks.
MAX_SIGNATURE_CHECKS: Final = 64

# -- permitted algorithms (exact DER AlgorithmIdentifier encodings, CA/B 7.1.3) ----------
_H: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


def _pss(hash_oid_last: int, salt: int) -> bytes:
    h = bytes.fromhex(f"300d0609608648016503040{hash_oid_last}0500")
    params = (b"\xa0\x0f" + h + b"\xa1\x1c\x30\x1a\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x08"
              + h + b"\xa2\x03\x02\x01" + bytes([salt]))
    body = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a\x30" + bytes([len(params)]) + params
    return b"\x30" + bytes([len(body)]) + body


SIGNATURE_ALGORITHMS: Final[dict[bytes, tuple[str, str]]] = {
    bytes.fromhex("300d06092a864886f70d01010b0500"): ("pkcs1", "sha256"),
    bytes.fromhex("300d06092a864886f70d01010c0500"): ("pkcs1", "sha384"),
    bytes.fromhex("300d06092a864886f70d01010d0500"): ("pkcs1", "sha512"),
    _pss(1, 32): ("pss", "sha256"),
    _pss(2, 48): ("pss", "sha384"),
    _pss(3, 64): ("pss", "sha512"),
    bytes.fromhex("300a06082a8648ce3d040302"): ("ecdsa", "sha256"),
    bytes.fromhex("300a06082a8648ce3d040303"): ("ecdsa", "sha384"),
    bytes.fromhex("300a06082a8648ce3d040304"): ("ecdsa", "sha512"),
}
ISSUER_KEY_ALGORITHMS: Final = frozenset({
    bytes.fromhex("300d06092a864886f70d0101010500"),  # rsaEncryption, NULL
    bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107"),  # EC P-256
    bytes.fromhex("301006072a8648ce3d020106052b81040022"),  # EC P-384
    bytes.fromhex("301006072a8648ce3d020106052b81040023"),  # EC P-521
})
MIN_RSA_BITS: Final = 2048

_CA_NONCRITICAL: Final = frozenset({OID_AUTHORITY_KEY_ID, OID_SUBJECT_KEY_ID,
                                    OID_AUTHORITY_INFO_ACCESS})
_CA_AGNOSTIC: Final = frozenset({OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_EXT_KEY_USAGE,
                                 OID_SUBJECT_ALT_NAME, OID_CERT_POLICIES})
# The extensions cryptography's permit_all() policy knows; any other marked critical
# makes it refuse the leaf, and so do we.
_LEAF_KNOWN: Final = frozenset({OID_AUTHORITY_INFO_ACCESS, OID_AUTHORITY_KEY_ID,
                                OID_SUBJECT_KEY_ID, OID_KEY_USAGE, OID_SUBJECT_ALT_NAME,
                                OID_BASIC_CONSTRAINTS, OID_NAME_CONSTRAINTS,
                                OID_EXT_KEY_USAGE})

# RFC 4514 short names, for display only.
_SHORT_NAMES: Final = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.9": "STREET",
    "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.5": "serialNumber",
    "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
}


@dataclass(frozen=True)
class Name:
    """A distinguished name: its original bytes and its canonical form for matching."""

    raw: bytes
    # Per RDN, in order: the attribute (type OID, value element) pairs as written.
    rdns: tuple[tuple[tuple[str, Tlv], ...], ...] = field(compare=False, repr=False)
    # Per RDN, in order: the attributes' original encodings, sorted.
    canonical: tuple[tuple[bytes, ...], ...] = field(repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Name) and self.canonical == other.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)

    @property
    def empty(self) -> bool:
        return not self.rdns

    def rfc4514(self) -> str:
        """A display form (most specific RDN first, as RFC 4514 writes it)."""
        parts = []
        for rdn in reversed(self.rdns):
            parts.append("+".join(f"{_SHORT_NAMES.get(oid, oid)}={_escape(value)}"
                                  for oid, value in rdn))
        return ",".join(parts)


def _escape(value: Tlv) -> str:
    text = asn1.decode_string(value)
    if text is None:
        return "#" + value.raw.hex()
    out = "".join("\\" + c if c in ',+"\\<>;=' else c if c.isprintable() else f"\\{ord(c):02x}"
                  for c in text)
    if out.startswith((" ", "#")):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") else out


@dataclass(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes  # the extnValue OCTET STRING's contents, as encoded


@dataclass(frozen=True)
class BasicConstraints:
    ca: bool
    path_length: int | None


@dataclass(frozen=True)
class ExtensionFacts:
    """What the chain rules read from the extensions. A malformed one is only noted:
    issuers are refused for it (``check_ca``), the EK leaf is not (cryptography never
    decodes a leaf's extensions under ``permit_all`` either)."""

    basic_constraints: BasicConstraints | None = None
    key_usage: frozenset[int] | None = None
    extended_key_usage: frozenset[str] | None = None
    aki_has_key_id: bool | None = None
    malformed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Certificate:
    """A parsed certificate. ``der`` is its encoding as given (not re-encoded)."""

    der: bytes
    tbs: bytes
    version: int  # 2 for X.509 v3
    serial: int
    serial_octets: int
    signature_algorithm: bytes  # outer AlgorithmIdentifier, as encoded
    tbs_signature_algorithm: bytes  # the TBS copy, as encoded
    signature: bytes
    issuer: Name
    subject: Name
    not_before: datetime.datetime
    not_after: datetime.datetime
    not_before_generalized: bool
    not_after_generalized: bool
    spki: bytes
    spki_algorithm: bytes
    extensions: tuple[Extension, ...]
    known: ExtensionFacts  # what the chain rules read from the extensions
    key: PublicKeyTypes = field(repr=False, compare=False)

    def public_key(self) -> PublicKeyTypes:
        return self.key

    def extension(self, oid: str) -> Extension | None:
        return next((e for e in self.extensions if e.oid == oid), None)


def parse_certificate(data: bytes, code: ErrorCode = ErrorCode.EK_UNTRUSTED,
                      what: str = "certificate") -> Certificate:
    """Parse one certificate that must fill ``data`` exactly.

    The caller checks the size first. Raises ``code`` for anything that is not a
    certificate in DER (SET OF order aside), or whose public key does not load.
    """
    data = bytes(data)
    top = DerReader(data, code, what)
    cert_tlv = top.read(asn1.SEQUENCE)
    top.end()
    c = top.enter(cert_tlv)
    tbs_tlv = c.read(asn1.SEQUENCE)
    sig_alg = _algorithm(c)
    sig_bytes, unused = c.bit_string()
    if unused:
        raise c.fail("signature has unused bits")
    c.end()

    t = c.enter(tbs_tlv, f"{what} tbs")
    version = 0
    if t.peek_tag() == 0xA0:
        v = t.sequence(tag=0xA0)
        version = v.integer()
        if version not in (1, 2):  # v2, v3; DER omits the default v1
            raise v.fail(f"unknown X.509 version {version}")
        v.end()
    serial_tlv = t.read(asn1.INTEGER)
    serial = asn1.decode_integer(serial_tlv, t)
    tbs_sig_alg = _algorithm(t)
    issuer = _name(t)
    validity = t.sequence()
    nb_tag, not_before = validity.peek_tag(), validity.time()
    na_tag, not_after = validity.peek_tag(), validity.time()
    validity.end()
    subject = _name(t)
    spki_tlv = t.read(asn1.SEQUENCE)
    s = t.enter(spki_tlv)
    spki_alg = _algorithm(s)
    s.bit_string()
    s.end()
    for unique_id in (0x81, 0x82):  # issuerUniqueID, subjectUniqueID (v2+)
        t.read_optional(unique_id)
    extensions: tuple[Extension, ...] = ()
    if t.peek_tag() == 0xA3:
        wrapper = t.sequence(tag=0xA3)
        extensions = _extensions(wrapper.sequence())
        wrapper.end()
    t.end()
    try:
        key = load_der_public_key(spki_tlv.raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestgateError(code, f"{what}: public key: {exc}") from None

    decoded = _decode_known(extensions, code, what)
    return Certificate(
        der=data, tbs=tbs_tlv.raw, version=version, serial=serial,
        serial_octets=serial_tlv.end - serial_tlv.body, signature_algorithm=sig_alg,
        tbs_signature_algorithm=tbs_sig_alg, signature=sig_bytes, issuer=issuer,
        subject=subject, not_before=not_before, not_after=not_after,
        not_before_generalized=nb_tag == asn1.GENERALIZED_TIME,
        not_after_generalized=na_tag == asn1.GENERALIZED_TIME,
        spki=spki_tlv.raw, spki_algorithm=spki_alg, extensions=extensions,
        known=decoded, key=key)


def _algorithm(r: DerReader) -> bytes:
    """An AlgorithmIdentifier: OID, then optional parameters; returns its original bytes."""
    tlv = r.read(asn1.SEQUENCE)
    a = r.enter(tlv)
    a.oid()
    if not a.at_end():
        a.read()
    a.end()
    return tlv.raw


def _name(r: DerReader) -> Name:
    tlv = r.read(asn1.SEQUENCE)
    n = r.enter(tlv, "name")
    rdns: list[tuple[tuple[str, Tlv], ...]] = []
    canonical: list[tuple[bytes, ...]] = []
    while not n.at_end():
        rdn = n.sequence(tag=asn1.SET)
        attrs: list[tuple[str, Tlv]] = []
        raws: list[bytes] = []
        while not rdn.at_end():
            atv_tlv = rdn.read(asn1.SEQUENCE)
            atv = rdn.enter(atv_tlv)
            oid = atv.oid()
            value = atv.read()
            atv.end()
            attrs.append((oid, value))
            raws.append(atv_tlv.raw)
        if not attrs:
            raise n.fail("empty RDN")
        rdns.append(tuple(attrs))
        canonical.append(tuple(sorted(raws)))
    return Name(tlv.raw, tuple(rdns), tuple(canonical))


def _extensions(r: DerReader) -> tuple[Extension, ...]:
    out: list[Extension] = []
    seen: set[str] = set()
    while not r.at_end():
        e = r.sequence()
        oid = e.oid()
        critical = False
        if e.peek_tag() == asn1.BOOLEAN:
            critical = e.boolean()
            if not critical:
                raise e.fail("critical FALSE encoded (DER omits a DEFAULT)")
        value = e.octets()
        e.end()
        if oid in seen:
            raise r.fail(f"duplicate extension {oid}")
        seen.add(oid)
        out.append(Extension(oid, critical, value))
    if not out:
        raise r.fail("empty extensions")
    return tuple(out)


def _decode_known(extensions: tuple[Extension, ...], code: ErrorCode, what: str) -> ExtensionFacts:
    found: dict[str, object] = {}
    malformed: set[str] = set()
    for ext in extensions:
        if ext.oid not in _DECODERS:
            continue
        r = DerReader(ext.value, code, f"{what} extension {ext.oid}")
        try:
            field_name, value = _DECODERS[ext.oid](r)
            r.end()
        except AttestgateError:
            malformed.add(ext.oid)
            continue
        found[field_name] = value
    return ExtensionFacts(**found, malformed=frozenset(malformed))  # type: ignore[arg-type]


def _basic_constraints(r: DerReader) -> tuple[str, object]:
    b = r.sequence()
    ca = False
    if b.peek_tag() == asn1.BOOLEAN and not (ca := b.boolean()):
        raise b.fail("cA FALSE encoded (DER omits a DEFAULT)")
    path = b.integer() if not b.at_end() else None
    b.end()
    if path is not None and path < 0:
        raise b.fail("negative path length")
    return "basic_constraints", BasicConstraints(ca, path)


def _key_usage(r: DerReader) -> tuple[str, object]:
    bits, _unused = r.bit_string()
    return "key_usage", frozenset(i for i in range(len(bits) * 8)
                                  if bits[i // 8] & (0x80 >> (i % 8)))


def _extended_key_usage(r: DerReader) -> tuple[str, object]:
    s = r.sequence()
    oids = []
    while not s.at_end():
        oids.append(s.oid())
    if not oids:
        raise s.fail("empty extendedKeyUsage")
    return "extended_key_usage", frozenset(oids)


def _authority_key_id(r: DerReader) -> tuple[str, object]:
    s = r.sequence()
    has_key_id = s.read_optional(0x80) is not None  # keyIdentifier
    s.read_optional(0xA1)  # authorityCertIssuer
    s.read_optional(0x82)  # authorityCertSerialNumber
    s.end()
    return "aki_has_key_id", has_key_id


_DECODERS: Final = {
    OID_BASIC_CONSTRAINTS: _basic_constraints,
    OID_KEY_USAGE: _key_usage,
    OID_EXT_KEY_USAGE: _extended_key_usage,
    OID_AUTHORITY_KEY_ID: _authority_key_id,
}


# -- path validation -----------------------------------------------------------------


def verify_signed_by(child: Certificate, issuer: Certificate) -> None:
    """Check ``child``'s signature algorithm is permitted and its signature over the
    original TBS bytes verifies with ``issuer``'s key. Raises EK_UNTRUSTED."""
    code = ErrorCode.EK_UNTRUSTED
    alg = SIGNATURE_ALGORITHMS.get(child.signature_algorithm)
    if alg is None:
        raise AttestgateError(code, "signature algorithm not permitted")
    kind, hash_name = alg
    h = _H[hash_name]
    key = issuer.key
    try:
        if kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs, ec.ECDSA(h))
        elif kind == "pkcs1" and isinstance(key, rsa.RSAPublicKey):
            key.verify(child.signature, child.tbs, padding.PKCS1v15(), h)
        elif kind == "pss" and isinstance(key, rsa.RSAPublicKey):
            key.verify(child.signature, child.tbs,
                       padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        else:
            raise AttestgateError(code, "signature algorithm does not fit the issuer key")
    except (InvalidSignature, ValueError):
        raise AttestgateError(code, "signature does not verify") from None


def is_self_signed(cert: Certificate) -> bool:
    """Issuer equals subject and the certificate's signature verifies with its own key."""
    if cert.issuer != cert.subject:
        return False
    try:
        verify_signed_by(cert, cert)
    except AttestgateError:
        return False
    return True


def check_basic(cert: Certificate, now: datetime.datetime) -> None:
    """The rules every chain member must meet. Raises EK_UNTRUSTED."""
    code = ErrorCode.EK_UNTRUSTED
    if cert.version != 2:
        raise AttestgateError(code, "not an X.509 v3 certificate")
    if cert.signature_algorithm != cert.tbs_signature_algorithm:
        raise AttestgateError(code, "signatureAlgorithm differs from the TBS signature")
    if not 1 <= cert.serial_octets <= 21 or cert.serial < 0:
        raise AttestgateError(code, "serial number size or sign")
    if cert.issuer.empty:
        raise AttestgateError(code, "empty issuer")
    for when, generalized in ((cert.not_before, cert.not_before_generalized),
                              (cert.not_after, cert.not_after_generalized)):
        if generalized and 1950 <= when.year < 2050:
            raise AttestgateError(code, "validity date before 2050 as GeneralizedTime")
    if not cert.not_before <= now <= cert.not_after:
        raise AttestgateError(code, "not valid at the verification time")


def check_ca(cert: Certificate, depth: int, now: datetime.datetime) -> None:
    """The rules an issuer at ``depth`` (0 = the leaf's issuer) must meet. Raises EK_UNTRUSTED."""
    code = ErrorCode.EK_UNTRUSTED
    check_basic(cert, now)
    known = cert.known
    if known.malformed:
        raise AttestgateError(code, f"malformed CA extension {sorted(known.malformed)[0]}")
    bc = known.basic_constraints
    bc_ext = cert.extension(OID_BASIC_CONSTRAINTS)
    if bc is None or bc_ext is None or not bc_ext.critical or not bc.ca:
        raise AttestgateError(code, "issuer is not a CA (basicConstraints)")
    if bc.path_length is not None and depth > bc.path_length:
        raise AttestgateError(code, "path length constraint violated")
    if known.key_usage is None or _KEY_CERT_SIGN not in known.key_usage:
        raise AttestgateError(code, "issuer keyUsage lacks keyCertSign")
    eku = known.extended_key_usage
    if eku is not None and not {OID_TCG_KP_EK_CERTIFICATE, OID_ANY_EKU} & eku:
        raise AttestgateError(code, "CA extendedKeyUsage excludes EK certificates")
    if known.aki_has_key_id is False:
        raise AttestgateError(code, "authorityKeyIdentifier without keyIdentifier")
    for ext in cert.extensions:
        if ext.oid in _CA_NONCRITICAL:
            if ext.critical:
                raise AttestgateError(code, f"CA extension {ext.oid} marked critical")
        elif ext.oid not in _CA_AGNOSTIC and (ext.critical or ext.oid == OID_NAME_CONSTRAINTS):
            raise AttestgateError(code, f"CA extension {ext.oid} not supported")


def _check_issuer(issuer: Certificate, child: Certificate, depth: int,
                  now: datetime.datetime) -> None:
    code = ErrorCode.EK_UNTRUSTED
    check_ca(issuer, depth, now)
    if issuer.spki_algorithm not in ISSUER_KEY_ALGORITHMS:
        raise AttestgateError(code, "issuer key algorithm not permitted")
    if isinstance(issuer.key, rsa.RSAPublicKey) and issuer.key.key_size < MIN_RSA_BITS:
        raise AttestgateError(code, "issuer RSA key too small")
    verify_signed_by(child, issuer)


def build_path(leaf: Certificate, anchors: tuple[Certificate, ...],
               intermediates: tuple[Certificate, ...],
               now: datetime.datetime) -> tuple[Certificate, ...]:
    """The chain from ``leaf`` to one of ``anchors`` (leaf first), under the rules above.

    ``now`` must be timezone-aware. Tries every candidate issuer whose subject matches
    (anchors first), depth-first, at most MAX_CHAIN_DEPTH deep and MAX_SIGNATURE_CHECKS
    candidates in all. Raises EK_UNTRUSTED with the last reason.
    """
    code = ErrorCode.EK_UNTRUSTED
    check_basic(leaf, now)
    for ext in leaf.extensions:
        if ext.critical and ext.oid not in _LEAF_KNOWN:
            raise AttestgateError(code, f"unknown critical extension {ext.oid} in the EK cert")
    budget = [MAX_SIGNATURE_CHECKS]
    last = ["no issuer with a matching name"]

    def walk(cert: Certificate, depth: int, path: tuple[Certificate, ...],
             ) -> tuple[Certificate, ...] | None:
        if depth > MAX_CHAIN_DEPTH:
            last[0] = "chain too deep"
            return None
        candidates = [(a, True) for a in anchors if a.subject == cert.issuer]
        candidates += [(i, False) for i in intermediates
                       if i.subject == cert.issuer and all(i.der != p.der for p in path)]
        for issuer, is_anchor in candidates:
            if budget[0] <= 0:
                raise AttestgateError(code, "too many candidate issuers")
            budget[0] -= 1
            try:
                _check_issuer(issuer, cert, depth, now)
            except AttestgateError as exc:
                last[0] = exc.detail
                continue
            if is_anchor:
                return (*path, issuer)
            found = walk(issuer, depth + 1, (*path, issuer))
            if found is not None:
                return found
        return None

    chain = walk(leaf, 0, (leaf,))
    if chain is None:
        raise AttestgateError(code, f"no valid chain: {last[0]}")
    return chain
