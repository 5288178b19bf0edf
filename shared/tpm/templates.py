"""The TCG EK templates (EK Credential Profile 2.x, B.3), to rebuild an EK public
from the key in its certificate.

The server makes credentials to the EK public the client sent; rebuilding that public
from the certified key and a standard template, and requiring byte equality, proves
the nameAlg, symmetric algorithm and policy are those of a real EK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import CURVE_BYTES, Alg, Curve, ObjectAttr
from shared.tpm.structures import (
    AES128_CFB,
    AES256_CFB,
    SCHEME_NULL,
    EccParms,
    EccPoint,
    RsaParms,
    SymDef,
    TpmPublic,
    build_public,
)

_LOW_ATTRS: Final = (ObjectAttr.FIXEDTPM | ObjectAttr.FIXEDPARENT
                     | ObjectAttr.SENSITIVEDATAORIGIN | ObjectAttr.ADMINWITHPOLICY
                     | ObjectAttr.RESTRICTED | ObjectAttr.DECRYPT)
# The high-range templates add userWithAuth: an empty-auth EK usable with a password.
_HIGH_ATTRS: Final = _LOW_ATTRS | ObjectAttr.USERWITHAUTH

# PolicySecret(TPM_RH_ENDORSEMENT) (low range) and the PolicyOR digests (high range).
_POLICY_LOW: Final = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
_POLICY_SHA256: Final = bytes.fromhex(
    "ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0")
_POLICY_SHA384: Final = bytes.fromhex(
    "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca"
    "cb47ba09699646150f9fc000f3f80e12")
_POLICY_SHA512: Final = bytes.fromhex(
    "b8221ca69e8550a4914de3faa6a18c072cc01208073a928d5d66d59ef79e49a4"
    "29c41a6b269571d57edb25fbdb1838425608b413cd616a5f6db5b6071af99bea")


@dataclass(frozen=True)
class EkTemplate:
    """One TCG EK template; ``rsa_bits`` for RSA, ``curve`` for ECC (the other is 0)."""

    name: str
    key_type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: SymDef
    rsa_bits: int = 0
    curve: int = 0


EK_TEMPLATES: Final[tuple[EkTemplate, ...]] = (
    EkTemplate("EK-RSA2048", Alg.RSA, Alg.SHA256, _LOW_ATTRS, _POLICY_LOW, AES128_CFB, 2048),
    EkTemplate("EK-ECC256", Alg.ECC, Alg.SHA256, _LOW_ATTRS, _POLICY_LOW, AES128_CFB,
               curve=Curve.NIST_P256),
    EkTemplate("EK-HIGH-RSA2048", Alg.RSA, Alg.SHA256, _HIGH_ATTRS, _POLICY_SHA256, AES128_CFB,
               2048),
    EkTemplate("EK-HIGH-ECC256", Alg.ECC, Alg.SHA256, _HIGH_ATTRS, _POLICY_SHA256, AES128_CFB,
               curve=Curve.NIST_P256),
    EkTemplate("EK-HIGH-ECC384", Alg.ECC, Alg.SHA384, _HIGH_ATTRS, _POLICY_SHA384, AES256_CFB,
               curve=Curve.NIST_P384),
    EkTemplate("EK-HIGH-ECC521", Alg.ECC, Alg.SHA512, _HIGH_ATTRS, _POLICY_SHA512, AES256_CFB,
               curve=Curve.NIST_P521),
    EkTemplate("EK-HIGH-RSA3072", Alg.RSA, Alg.SHA384, _HIGH_ATTRS, _POLICY_SHA384, AES256_CFB,
               3072),
    EkTemplate("EK-HIGH-RSA4096", Alg.RSA, Alg.SHA384, _HIGH_ATTRS, _POLICY_SHA384, AES256_CFB,
               4096),
)

_CURVE_IDS: Final[dict[str, int]] = {
    "secp256r1": Curve.NIST_P256,
    "secp384r1": Curve.NIST_P384,
    "secp521r1": Curve.NIST_P521,
}


def ek_public_from_key(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
                       template: EkTemplate) -> TpmPublic:
    """The EK public a TPM creates from ``template`` when its key is ``key``.

    ``.marshal()`` gives the TPM2B_PUBLIC. Raises EK_MISMATCH if the key does not fit
    the template (type, size or curve).
    """
    code = ErrorCode.EK_MISMATCH
    if isinstance(key, rsa.RSAPublicKey) and template.key_type == Alg.RSA:
        if key.key_size != template.rsa_bits:
            raise AttestgateError(code, "rsa size differs from the template")
        nums = key.public_numbers()
        # The templates leave exponent 0, which means 65537; another e cannot match.
        exponent = 0 if nums.e == 65537 else nums.e
        parms = RsaParms(template.symmetric, SCHEME_NULL, template.rsa_bits, exponent)
        unique: bytes | EccPoint = nums.n.to_bytes(template.rsa_bits // 8, "big")
    elif isinstance(key, ec.EllipticCurvePublicKey) and template.key_type == Alg.ECC:
        if _CURVE_IDS.get(key.curve.name) != template.curve:
            raise AttestgateError(code, "curve differs from the template")
        size = CURVE_BYTES[template.curve]
        nums_ec = key.public_numbers()
        parms_ec = EccParms(template.symmetric, SCHEME_NULL, template.curve, SCHEME_NULL)
        point = EccPoint(nums_ec.x.to_bytes(size, "big"), nums_ec.y.to_bytes(size, "big"))
        return build_public(Alg.ECC, template.name_alg, template.attributes,
                            template.auth_policy, parameters=parms_ec, unique=point)
    else:
        raise AttestgateError(code, "key type differs from the template")
    return build_public(Alg.RSA, template.name_alg, template.attributes, template.auth_policy,
                        parameters=parms, unique=unique)
