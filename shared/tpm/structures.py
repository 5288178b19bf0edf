"""Parsed TPM 2.0 structures: TPM2B_PUBLIC/TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE.

Parsers take the bytes a peer sent and the error code to report for malformed input,
enforce ``shared.wire.MAX_EVIDENCE_FIELD`` first, and refuse trailing bytes. Records
keep the exact bytes they came from where a digest or signature covers them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import (
    CURVE_BYTES,
    GENERATED_VALUE,
    MAX_DIGEST,
    MAX_ECC_BYTES,
    MAX_NAME,
    MAX_RSA_BYTES,
    Alg,
    Curve,
    St,
    digest_size,
    hash_for,
)
from shared.tpm.marshal import Reader, check_size, tpm2b, u16, u32
from shared.tpm.pcrs import PcrSelection

# ---------------------------------------------------------------------------------------
# TPMT_PUBLIC


@dataclass(frozen=True)
class SymDef:
    """TPMT_SYM_DEF_OBJECT; ``algorithm`` NULL means none (key_bits and mode then 0)."""

    algorithm: int
    key_bits: int = 0
    mode: int = 0


SYM_NULL = SymDef(Alg.NULL)
AES128_CFB = SymDef(Alg.AES, 128, Alg.CFB)
AES256_CFB = SymDef(Alg.AES, 256, Alg.CFB)


@dataclass(frozen=True)
class Scheme:
    """A signing/encryption/KDF scheme: alg id and its hash (NULL if none).

    ``extra`` holds the second detail field of the few schemes that have one: the KDF
    of TPMS_SCHEME_XOR and the count of TPMS_SCHEME_ECDAA; 0 otherwise.
    """

    scheme: int
    hash_alg: int = Alg.NULL
    extra: int = 0


SCHEME_NULL = Scheme(Alg.NULL)


@dataclass(frozen=True)
class RsaParms:
    symmetric: SymDef
    scheme: Scheme
    key_bits: int
    exponent: int  # 0 means the default 65537, as on the wire


@dataclass(frozen=True)
class EccParms:
    symmetric: SymDef
    scheme: Scheme
    curve: int
    kdf: Scheme


@dataclass(frozen=True)
class KeyedHashParms:
    scheme: Scheme


@dataclass(frozen=True)
class SymCipherParms:
    symmetric: SymDef


Parms = RsaParms | EccParms | KeyedHashParms | SymCipherParms


@dataclass(frozen=True)
class EccPoint:
    x: bytes
    y: bytes


@dataclass(frozen=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC.

    ``unique`` is the RSA modulus, the ECC point, or the keyed-hash/symcipher digest.
    ``tpmt`` is the exact TPMT_PUBLIC the record was parsed from (or marshalled to):
    the object's name is computed over these bytes.
    """

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    parameters: Parms
    unique: bytes | EccPoint
    tpmt: bytes = field(repr=False, compare=False, default=b"")

    def has(self, attrs: int) -> bool:
        """True if every bit of ``attrs`` is set in objectAttributes."""
        return self.attributes & attrs == attrs

    @property
    def name(self) -> bytes:
        """TPM2B_NAME body: nameAlg (2 B) || H_nameAlg(TPMT_PUBLIC)."""
        h = hash_for(self.name_alg)
        if h is None:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"nameAlg {self.name_alg:#x}")
        return u16(self.name_alg) + hashlib.new(h.name, self.tpmt).digest()

    def marshal(self) -> bytes:
        """TPM2B_PUBLIC bytes (size-prefixed TPMT_PUBLIC)."""
        return tpm2b(self.tpmt)


def _read_symdef(r: Reader) -> SymDef:
    alg = r.u16()
    if alg == Alg.NULL:
        return SYM_NULL
    return SymDef(alg, r.u16(), r.u16())


def _read_scheme(r: Reader) -> Scheme:
    """Read a TPMT_*_SCHEME whose details are a hash (plus ECDAA count / XOR kdf)."""
    alg = r.u16()
    if alg == Alg.NULL:
        return SCHEME_NULL
    if alg == Alg.RSAES:  # TPMS_ENC_SCHEME_RSAES is empty
        return Scheme(alg)
    hash_alg = r.u16()
    if alg in (Alg.ECDAA, Alg.XOR):
        return Scheme(alg, hash_alg, r.u16())
    return Scheme(alg, hash_alg)


def _read_tpmt_public(r: Reader) -> TpmPublic:
    typ = r.u16()
    name_alg = r.u16()
    attributes = r.u32()
    auth_policy = r.tpm2b(MAX_DIGEST, "authPolicy")
    parameters: Parms
    unique: bytes | EccPoint
    if typ == Alg.RSA:
        parameters = RsaParms(_read_symdef(r), _read_scheme(r), r.u16(), r.u32())
        unique = r.tpm2b(MAX_RSA_BYTES, "rsa unique")
    elif typ == Alg.ECC:
        parameters = EccParms(_read_symdef(r), _read_scheme(r), r.u16(), _read_scheme(r))
        unique = EccPoint(r.tpm2b(MAX_ECC_BYTES, "ecc x"), r.tpm2b(MAX_ECC_BYTES, "ecc y"))
    elif typ == Alg.KEYEDHASH:
        parameters = KeyedHashParms(_read_scheme(r))
        unique = r.tpm2b(MAX_DIGEST, "keyedhash unique")
    elif typ == Alg.SYMCIPHER:
        parameters = SymCipherParms(_read_symdef(r))
        unique = r.tpm2b(MAX_DIGEST, "symcipher unique")
    else:
        raise r.fail(f"object type {typ:#x}")
    return TpmPublic(typ, name_alg, attributes, auth_policy, parameters, unique)


def parse_tpmt_public(data: bytes, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> TpmPublic:
    """Parse a bare TPMT_PUBLIC (no size prefix), e.g. tpm2-tools ``-f tpmt`` output."""
    check_size(data, "TPMT_PUBLIC")
    r = Reader(data, code, "TPMT_PUBLIC")
    pub = _read_tpmt_public(r)
    r.end()
    return _with_tpmt(pub, bytes(data))


def parse_public(data: bytes, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> TpmPublic:
    """Parse a TPM2B_PUBLIC: its size must cover the rest of ``data`` exactly.

    Raises TOO_LARGE over ``MAX_EVIDENCE_FIELD``, else ``code`` for anything malformed.
    """
    check_size(data, "TPM2B_PUBLIC")
    r = Reader(data, code, "TPM2B_PUBLIC")
    size = r.u16()
    if size == 0:
        raise r.fail("empty public area")
    body = r.take(size)
    r.end()
    return parse_tpmt_public(body, code=code)


def _with_tpmt(pub: TpmPublic, tpmt: bytes) -> TpmPublic:
    return TpmPublic(pub.type, pub.name_alg, pub.attributes, pub.auth_policy,
                     pub.parameters, pub.unique, tpmt)


def _marshal_symdef(s: SymDef) -> bytes:
    return u16(s.algorithm) if s.algorithm == Alg.NULL else u16(s.algorithm) + u16(
        s.key_bits) + u16(s.mode)


def _marshal_scheme(s: Scheme) -> bytes:
    if s.scheme == Alg.NULL:
        return u16(Alg.NULL)
    if s.scheme == Alg.RSAES:
        return u16(s.scheme)
    out = u16(s.scheme) + u16(s.hash_alg)
    return out + u16(s.extra) if s.scheme in (Alg.ECDAA, Alg.XOR) else out


def build_public(typ: int, name_alg: int, attributes: int, auth_policy: bytes, *,
                 parameters: Parms, unique: bytes | EccPoint) -> TpmPublic:
    """Marshal a TPMT_PUBLIC from its fields; the result carries its exact bytes.

    The caller must pass a ``parameters``/``unique`` pair matching ``typ``.
    """
    out = [u16(typ), u16(name_alg), u32(attributes), tpm2b(auth_policy)]
    p = parameters
    if isinstance(p, RsaParms) and typ == Alg.RSA and isinstance(unique, bytes):
        out += [_marshal_symdef(p.symmetric), _marshal_scheme(p.scheme), u16(p.key_bits),
                u32(p.exponent), tpm2b(unique)]
    elif isinstance(p, EccParms) and typ == Alg.ECC and isinstance(unique, EccPoint):
        out += [_marshal_symdef(p.symmetric), _marshal_scheme(p.scheme), u16(p.curve),
                _marshal_scheme(p.kdf), tpm2b(unique.x), tpm2b(unique.y)]
    elif isinstance(p, KeyedHashParms) and typ == Alg.KEYEDHASH and isinstance(unique, bytes):
        out += [_marshal_scheme(p.scheme), tpm2b(unique)]
    elif isinstance(p, SymCipherParms) and typ == Alg.SYMCIPHER and isinstance(unique, bytes):
        out += [_marshal_symdef(p.symmetric), tpm2b(unique)]
    else:
        raise AttestgateError(ErrorCode.INTERNAL, f"public type {typ:#x} with {type(p)}")
    return TpmPublic(typ, name_alg, attributes, auth_policy, parameters, unique, b"".join(out))


def name_of(public_bytes: bytes, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> bytes:
    """The TPM name of a TPM2B_PUBLIC: nameAlg (2 B) || H_nameAlg(TPMT_PUBLIC)."""
    pub = parse_public(public_bytes, code=code)
    if hash_for(pub.name_alg) is None:
        raise AttestgateError(code, f"nameAlg {pub.name_alg:#x}")
    return pub.name


_CURVES: dict[int, type[ec.EllipticCurve]] = {
    Curve.NIST_P256: ec.SECP256R1,
    Curve.NIST_P384: ec.SECP384R1,
    Curve.NIST_P521: ec.SECP521R1,
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def to_crypto_key(pub: TpmPublic, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> PublicKey:
    """The cryptography public key of an RSA or ECC object.

    Raises ``code`` for other types, unsupported curves, a modulus that disagrees with
    keyBits, or a point not on the curve.
    """
    if isinstance(pub.parameters, RsaParms) and isinstance(pub.unique, bytes):
        n_bytes = pub.unique
        if pub.parameters.key_bits not in (2048, 3072, 4096) or (
            len(n_bytes) * 8 != pub.parameters.key_bits or n_bytes[0] & 0x80 == 0
        ):
            raise AttestgateError(code, "rsa modulus does not match keyBits")
        if n_bytes[-1] & 1 == 0:  # cryptography loads it, then fails at encrypt (ValueError)
            raise AttestgateError(code, "rsa modulus is even")
        e = pub.parameters.exponent or 65537
        try:
            return rsa.RSAPublicNumbers(e, int.from_bytes(n_bytes, "big")).public_key()
        except ValueError as exc:
            raise AttestgateError(code, f"rsa key: {exc}") from None
    if isinstance(pub.parameters, EccParms) and isinstance(pub.unique, EccPoint):
        curve = _CURVES.get(pub.parameters.curve)
        if curve is None:
            raise AttestgateError(code, f"curve {pub.parameters.curve:#x}")
        size = CURVE_BYTES[pub.parameters.curve]
        if len(pub.unique.x) > size or len(pub.unique.y) > size:
            raise AttestgateError(code, "ecc coordinate too long")
        point = b"\x04" + pub.unique.x.rjust(size, b"\0") + pub.unique.y.rjust(size, b"\0")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
        except ValueError:
            raise AttestgateError(code, "ecc point not on curve") from None
    raise AttestgateError(code, f"object type {pub.type:#x} has no public key")


# ---------------------------------------------------------------------------------------
# TPMS_ATTEST


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO. Obfuscated by the TPM unless the signer is in the endorsement
    or platform hierarchy (TPM-NOTES §3): compare resetCount only for such AKs."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class QuoteAttested:
    """TPMS_QUOTE_INFO."""

    selection: PcrSelection
    pcr_digest: bytes


@dataclass(frozen=True)
class CertifyAttested:
    """TPMS_CERTIFY_INFO."""

    name: bytes
    qualified_name: bytes


@dataclass(frozen=True)
class CreationAttested:
    """TPMS_CREATION_INFO."""

    object_name: bytes
    creation_hash: bytes


Attested = QuoteAttested | CertifyAttested | CreationAttested


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST. ``magic`` is checked by the parser; ``type`` is not."""

    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: Attested


# TPMS_CLOCK_INFO (clock, resetCount, restartCount, safe) then firmwareVersion.
_CLOCK_AND_FIRMWARE = struct.Struct(">QIIBQ")


def parse_attest(data: bytes, *, code: ErrorCode = ErrorCode.QUOTE_INVALID) -> Attest:
    """Parse a TPMS_ATTEST of type QUOTE, CERTIFY or CREATION.

    Raises ``code`` for a wrong magic, another type, or malformed bytes. The caller
    must check ``type`` and verify the signature over ``data`` itself.
    """
    check_size(data, "TPMS_ATTEST")
    r = Reader(data, code, "TPMS_ATTEST")
    magic = r.u32()
    if magic != GENERATED_VALUE:
        raise r.fail(f"magic {magic:#x}")
    typ = r.u16()
    signer = r.tpm2b(MAX_NAME, "qualifiedSigner")
    extra = r.tpm2b(MAX_DIGEST + 2, "extraData")  # TPM2B_DATA holds up to a TPMT_HA
    clock, reset_count, restart_count, safe, firmware = r.unpack(_CLOCK_AND_FIRMWARE)
    if safe > 1:
        raise r.fail(f"clockInfo.safe {safe}")
    clock_info = ClockInfo(clock, reset_count, restart_count, safe == 1)
    attested: Attested
    if typ == St.ATTEST_QUOTE:
        attested = QuoteAttested(PcrSelection.read(r), r.tpm2b(MAX_DIGEST, "pcrDigest"))
    elif typ == St.ATTEST_CERTIFY:
        attested = CertifyAttested(r.tpm2b(MAX_NAME, "name"), r.tpm2b(MAX_NAME, "qualifiedName"))
    elif typ == St.ATTEST_CREATION:
        attested = CreationAttested(r.tpm2b(MAX_NAME, "objectName"),
                                    r.tpm2b(MAX_DIGEST, "creationHash"))
    else:
        raise r.fail(f"attest type {typ:#x}")
    r.end()
    return Attest(typ, signer, extra, clock_info, firmware, attested)


# ---------------------------------------------------------------------------------------
# TPMT_SIGNATURE


@dataclass(frozen=True)
class EcdsaSignature:
    hash_alg: int
    r: int
    s: int


@dataclass(frozen=True)
class RsaSignature:
    sig_alg: int  # RSASSA or RSAPSS
    hash_alg: int
    sig: bytes


Signature = EcdsaSignature | RsaSignature


def parse_signature(data: bytes, *, code: ErrorCode = ErrorCode.QUOTE_INVALID) -> Signature:
    """Parse a TPMT_SIGNATURE of alg ECDSA, RSASSA or RSAPSS; anything else is ``code``."""
    check_size(data, "TPMT_SIGNATURE")
    r = Reader(data, code, "TPMT_SIGNATURE")
    sig_alg = r.u16()
    hash_alg = r.u16() if sig_alg in (Alg.ECDSA, Alg.RSASSA, Alg.RSAPSS) else 0
    sig: Signature
    if sig_alg == Alg.ECDSA:
        sig = EcdsaSignature(hash_alg,
                             int.from_bytes(r.tpm2b(MAX_ECC_BYTES, "signatureR"), "big"),
                             int.from_bytes(r.tpm2b(MAX_ECC_BYTES, "signatureS"), "big"))
    elif sig_alg in (Alg.RSASSA, Alg.RSAPSS):
        sig = RsaSignature(sig_alg, hash_alg, r.tpm2b(MAX_RSA_BYTES, "rsa signature"))
    else:
        raise r.fail(f"signature alg {sig_alg:#x}")
    if digest_size(hash_alg) is None:
        raise r.fail(f"signature hash {hash_alg:#x}")
    r.end()
    return sig


_ECDSA_HEAD = struct.Struct(">HHH")  # sigAlg, hash, signatureR.size
_SIZE = struct.Struct(">H")


def read_ecdsa_sha256(signature: bytes) -> EcdsaSignature | None:
    """The common TPMT_SIGNATURE (ECDSA with SHA-256) read directly: what
    :func:`parse_signature` gives for it, or None for anything else (then call that, which
    gives the result or the error). Profiled: the generic reader cost as much again as
    this on every quote and post."""
    end = len(signature)
    if end < _ECDSA_HEAD.size:
        return None
    alg, hash_alg, size = _ECDSA_HEAD.unpack_from(signature)
    pos = _ECDSA_HEAD.size
    if (alg != Alg.ECDSA or hash_alg != Alg.SHA256 or size > MAX_ECC_BYTES
            or pos + size + _SIZE.size > end):
        return None
    r = signature[pos:pos + size]
    pos += size
    (size,) = _SIZE.unpack_from(signature, pos)
    pos += _SIZE.size
    if size > MAX_ECC_BYTES or pos + size != end:
        return None
    return EcdsaSignature(hash_alg, int.from_bytes(r, "big"),
                          int.from_bytes(signature[pos:end], "big"))
