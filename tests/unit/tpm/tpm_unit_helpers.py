"""Software stand-ins for TPM outputs: an AK key, hand-built TPMS_ATTEST, TPMT_SIGNATURE."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from shared.tpm.constants import Alg, Curve, ObjectAttr
from shared.tpm.structures import (
    SCHEME_NULL,
    SYM_NULL,
    EccParms,
    EccPoint,
    Scheme,
    TpmPublic,
    build_public,
)

TESTDATA = Path("/work/shared/testdata")
AK_ATTRS = (ObjectAttr.FIXEDTPM | ObjectAttr.FIXEDPARENT | ObjectAttr.SENSITIVEDATAORIGIN
            | ObjectAttr.USERWITHAUTH | ObjectAttr.RESTRICTED | ObjectAttr.SIGN_ENCRYPT)
MAGIC = 0xFF544347
AK_SCHEME = Scheme(Alg.ECDSA, Alg.SHA256)


def require_testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip("/work/shared/testdata absent")
    return TESTDATA


def ecc_public(key: ec.EllipticCurvePrivateKey, attrs: int = AK_ATTRS,
               scheme: Scheme = AK_SCHEME) -> TpmPublic:
    nums = key.public_key().public_numbers()
    return build_public(Alg.ECC, Alg.SHA256, attrs, b"",
                        parameters=EccParms(SYM_NULL, scheme, Curve.NIST_P256, SCHEME_NULL),
                        unique=EccPoint(nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")))


def tpm2b(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def ecdsa_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return struct.pack(">HH", Alg.ECDSA, Alg.SHA256) + tpm2b(r.to_bytes(32, "big")) + tpm2b(
        s.to_bytes(32, "big"))


def attest_header(*, magic: int = MAGIC, typ: int = 0x8018, extra: bytes = b"n" * 32) -> bytes:
    signer = b"\x00\x0b" + hashlib.sha256(b"signer").digest()
    return (struct.pack(">IH", magic, typ) + tpm2b(signer) + tpm2b(extra)
            + struct.pack(">QIIB", 1234, 5, 6, 1) + struct.pack(">Q", 0x2019102300163636))


def quote_attest(pcr_values: dict[int, bytes], *, magic: int = MAGIC, typ: int = 0x8018,
                 extra: bytes = b"n" * 32, digest: bytes | None = None,
                 bitmap: bytes | None = None) -> bytes:
    if bitmap is None:
        bits = bytearray(3)
        for i in pcr_values:
            bits[i // 8] |= 1 << (i % 8)
        bitmap = bytes(bits)
    if digest is None:
        digest = hashlib.sha256(b"".join(pcr_values[i] for i in sorted(pcr_values))).digest()
    return (attest_header(magic=magic, typ=typ, extra=extra)
            + struct.pack(">IHB", 1, Alg.SHA256, len(bitmap)) + bitmap + tpm2b(digest))


def certify_attest(name: bytes, *, typ: int = 0x8017, extra: bytes = b"n" * 32) -> bytes:
    return attest_header(typ=typ, extra=extra) + tpm2b(name) + tpm2b(b"\x40\x00\x00\x07" + name)
